//! TangSengDaoDao end to end: the sync engine and the connector against the fake server
//! over real HTTP, into a real PostgreSQL. The archive is compared with the whole world.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chatvault::config::{PlatformConfig, Secret, SourceConfig, TsddAuth, TsddConfig};
use chatvault::model::SourceName;
use chatvault::sim::tangsengdaodao::{
    ChannelKey, ChannelTruth, Malformed, SimServer, World, WorldSpec,
};
use chatvault::store::{RunStatus, Store};
use chatvault::sync::{sync_source, SourceResult, SyncOptions};
use serde_json::{json, Value};

fn spec() -> WorldSpec {
    WorldSpec {
        seed: 7,
        users: 12,
        groups: 4,
        direct_chats: 6,
        messages: 1500,
        left_groups: 1,
        cleared_channels: 1,
        ..WorldSpec::default()
    }
}

fn source(server: &SimServer, password: &str) -> SourceConfig {
    let spec = spec();
    SourceConfig {
        name: SourceName::new("s"),
        schedule: "0 */5 * * * *".into(),
        requests_per_second: 0.0,
        request_timeout: Duration::from_secs(5),
        enabled: true,
        push: true,
        platform: PlatformConfig::Tangsengdaodao(TsddConfig {
            base_url: server.base_url(),
            auth: TsddAuth::Password {
                username: spec.me_username,
                password: Secret::new(password),
            },
            device_flag: 1,
            page_size: 100,
        }),
    }
}

/// The options the daemon gives a run, with quick backoff: the session token is kept in a
/// directory of this test's own (every login posts a welcome message into the archive).
fn options(src: &SourceConfig) -> SyncOptions {
    SyncOptions {
        backoff_base: Duration::from_millis(5),
        max_backoff: Duration::from_millis(100),
        session_dir: Some(session_dir(src)),
        ..SyncOptions::default()
    }
}

/// A session directory per test process and fake server.
fn session_dir(src: &SourceConfig) -> std::path::PathBuf {
    let PlatformConfig::Tangsengdaodao(cfg) = &src.platform else {
        unreachable!("a tangsengdaodao source")
    };
    let port = cfg.base_url.rsplit(':').next().unwrap_or("0").to_string();
    std::env::temp_dir()
        .join("chatvault-tsdd-sync-tests")
        .join(format!("{}-{port}", std::process::id()))
}

async fn start() -> (SimServer, Store, SourceConfig) {
    let server = SimServer::start(World::generate(&spec())).await;
    let (store, _) = common::store().await;
    let src = source(&server, &spec().me_password);
    (server, store, src)
}

async fn sync(store: &Store, src: &SourceConfig) -> SourceResult {
    sync_source(store, src, &options(src), None).await
}

/// Regression: the source lock was released only when the server noticed its connection
/// had closed, so a sync started right after the previous one could find it held and skip.
#[tokio::test]
async fn a_sync_right_after_another_is_never_skipped() {
    let (_server, store, src) = start().await;
    for i in 0..15 {
        let result = sync(&store, &src).await;
        assert!(!result.skipped, "sync {i} was skipped");
        assert!(result.ok(), "{:?}", result.error);
    }
}

/// The kind the spec's payload type maps to, where it is unambiguous.
fn expected_kind(payload: &Value) -> Option<&'static str> {
    let ty = payload.get("type")?.as_i64()?;
    Some(match ty {
        1 => "text",
        2 => "image",
        3 | 12 | 13 => "sticker",
        4 => "voice",
        5 => "video",
        6 => "location",
        7 => "card",
        8 => "file",
        11 => "forward",
        9989 => "call",
        99 | 1000..=2000 => "system",
        14 => return None,
        _ => "other",
    })
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    conversation_id: String,
    message_id: String,
    seq: Option<i64>,
    sender_id: Option<String>,
    sent_at: chrono::DateTime<chrono::Utc>,
    kind: String,
    text: String,
    edit_count: i32,
    recalled: bool,
    recalled_by: Option<String>,
    deleted: bool,
}

async fn archived(store: &Store) -> BTreeMap<(String, String), Row> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT conversation_id, message_id, seq, sender_id, sent_at, kind, text, edit_count,
                recalled_at IS NOT NULL AS recalled, recalled_by, deleted_at IS NOT NULL AS deleted
         FROM archive.messages",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    rows.into_iter()
        .map(|r| ((r.conversation_id.clone(), r.message_id.clone()), r))
        .collect()
}

async fn open_reactions(store: &Store) -> BTreeSet<(String, String, String, String)> {
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT conversation_id, message_id, user_id, emoji FROM archive.reactions WHERE removed_at IS NULL",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    rows.into_iter().collect()
}

/// Every message the archiving user can see is archived exactly once, as the world has it;
/// nothing else is archived unless it was seen earlier.
async fn assert_matches_world(store: &Store, truth: &[ChannelTruth], allow_extra: bool) {
    let rows = archived(store).await;
    let mut expected_keys = BTreeSet::new();
    let mut expected_reactions = BTreeSet::new();
    for ch in truth {
        for m in ch.messages.iter().filter(|m| m.visible) {
            let key = (ch.channel_id.clone(), m.message_id.clone());
            expected_keys.insert(key.clone());
            let row = rows.get(&key).unwrap_or_else(|| {
                panic!("message {key:?} (seq {}) is not archived", m.message_seq)
            });
            assert_eq!(row.seq, Some(i64::from(m.message_seq)), "{key:?}");
            let sender = (!m.from_uid.is_empty()).then(|| m.from_uid.clone());
            assert_eq!(row.sender_id, sender, "{key:?}");
            assert_eq!(row.sent_at.timestamp(), m.timestamp, "{key:?}");
            let current = m.content_edit.as_ref().unwrap_or(&m.payload);
            if let Some(kind) = expected_kind(current) {
                assert_eq!(row.kind, kind, "{key:?}: {current}");
            }
            if current["type"] == 1 {
                assert_eq!(
                    Some(row.text.as_str()),
                    current["content"].as_str(),
                    "{key:?}"
                );
            }
            let edited = m.content_edit.as_ref().is_some_and(|e| *e != m.payload);
            assert_eq!(row.edit_count > 0, edited, "{key:?}");
            assert_eq!(row.recalled, m.revoked, "{key:?}");
            if m.revoked {
                assert_eq!(row.recalled_by, m.revoker, "{key:?}");
            }
            // deleted for everyone, or is_deleted for this account (deleted for it, expired,
            // hidden from it, cleared history)
            assert_eq!(row.deleted, m.is_deleted, "{key:?}");
            for r in m.reactions.iter().filter(|r| !r.is_deleted) {
                expected_reactions.insert((
                    key.0.clone(),
                    key.1.clone(),
                    r.uid.clone(),
                    r.emoji.clone(),
                ));
            }
        }
    }
    let archived_keys: BTreeSet<_> = rows.keys().cloned().collect();
    let missing: Vec<_> = expected_keys.difference(&archived_keys).collect();
    assert!(missing.is_empty(), "missing: {missing:?}");
    if !allow_extra {
        let extra: Vec<_> = archived_keys.difference(&expected_keys).collect();
        assert!(
            extra.is_empty(),
            "archived but not visible upstream: {extra:?}"
        );
    }
    let open = open_reactions(store).await;
    let open_on_visible: BTreeSet<_> = open
        .into_iter()
        .filter(|(c, m, _, _)| expected_keys.contains(&(c.clone(), m.clone())))
        .collect();
    assert_eq!(open_on_visible, expected_reactions, "standing reactions");
}

#[tokio::test]
async fn a_backfill_archives_the_whole_world_exactly_once() {
    let (server, store, src) = start().await;
    {
        // the user cleared part of a group's history: those seqs can no longer be fetched
        let mut w = server.world();
        let group = w
            .truth()
            .into_iter()
            .find(|c| c.channel_type == 2 && c.is_member)
            .unwrap();
        w.clear_history_for_me(&ChannelKey::group(&group.channel_id), 25);
    }
    let result = sync(&store, &src).await;
    assert_eq!(result.status, RunStatus::Ok, "{:?}", result.error);
    let truth = server.world().truth();
    assert_matches_world(&store, &truth, false).await;

    let visible: usize = truth
        .iter()
        .map(|c| c.messages.iter().filter(|m| m.visible).count())
        .sum();
    assert_eq!(result.counts.messages_new as usize, visible);
    // history hidden by a cleared offset is recorded as gaps, not skipped
    let hidden: usize = truth
        .iter()
        .filter(|c| c.is_member)
        .map(|c| c.messages.iter().filter(|m| !m.visible).count())
        .sum();
    assert!(hidden > 0, "the world has hidden history");
    let gap_seqs: i64 = common::count(
        &store,
        "SELECT COALESCE(sum(to_seq - from_seq + 1), 0)::bigint FROM vault.seq_gaps",
    )
    .await;
    assert!(
        gap_seqs as usize >= hidden,
        "gaps cover {gap_seqs} seqs, {hidden} hidden"
    );

    // every version of an edited message is there, the original first
    let edited = truth
        .iter()
        .flat_map(|c| c.messages.iter().map(move |m| (c, m)))
        .find(|(_, m)| {
            m.visible
                && m.content_edit
                    .as_ref()
                    .is_some_and(|e| e["type"] == 1 && m.payload["type"] == 1 && *e != m.payload)
        })
        .expect("the world has an edited text message");
    let texts: Vec<String> = sqlx::query_scalar(
        "SELECT text FROM archive.message_versions WHERE conversation_id = $1 AND message_id = $2 ORDER BY version",
    )
    .bind(&edited.0.channel_id)
    .bind(&edited.1.message_id)
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        texts,
        [
            edited.1.payload["content"].as_str().unwrap(),
            edited.1.content_edit.as_ref().unwrap()["content"]
                .as_str()
                .unwrap()
        ]
    );

    // ids above 2^53 are exact
    let big: i64 = common::count(
        &store,
        "SELECT count(*) FROM archive.messages WHERE message_id::numeric > 9007199254740992",
    )
    .await;
    assert!(big > 0);
    assert!(store.verify(&[]).await.unwrap().ok());
}

fn text(s: &str) -> Value {
    json!({"type": 1, "content": s})
}

#[tokio::test]
async fn later_changes_are_recorded_and_a_quiet_sync_changes_nothing() {
    let (server, store, src) = start().await;
    assert!(sync(&store, &src).await.ok());

    let (me, group, peer, target, other, third) = {
        let w = server.world();
        let truth = w.truth();
        let me = w.me().uid.clone();
        let group = truth
            .iter()
            .find(|c| c.channel_type == 2 && c.is_member && c.my_offset == 0)
            .unwrap();
        let peer = truth
            .iter()
            .find(|c| c.channel_type == 1 && c.my_offset == 0)
            .unwrap();
        let fresh = |c: &ChannelTruth, skip: usize| {
            c.messages
                .iter()
                .filter(|m| {
                    m.visible
                        && !m.revoked
                        && !m.mutually_deleted
                        && m.content_edit.is_none()
                        && m.payload["type"] == 1
                })
                .nth(skip)
                .unwrap()
                .message_id
                .parse::<u64>()
                .unwrap()
        };
        (
            me,
            group.channel_id.clone(),
            peer.channel_id.clone(),
            fresh(group, 0),
            fresh(group, 1),
            fresh(peer, 0),
        )
    };
    let new_id;
    {
        let mut w = server.world();
        new_id = w
            .post_message(
                &ChannelKey::group(&group),
                &me,
                text("新消息 after the backfill"),
            )
            .message_id;
        w.post_message(
            &ChannelKey::person(&me, &peer),
            &peer,
            text("a new direct message"),
        );
        assert!(w.edit(target, &text("first edit")));
        w.revoke(other, &me);
        w.mutual_delete(third);
        w.toggle_reaction(target, &me, "👍");
        w.toggle_reaction(other, &me, "🎉");
        w.toggle_reaction(other, &me, "🎉"); // removed again
        w.toggle_reaction(new_id, &peer, "❤️");
    }
    let result = sync(&store, &src).await;
    assert!(result.ok(), "{:?}", result.error);
    assert_eq!(result.counts.messages_new, 2);
    // TangSengDaoDao keeps only the latest edit, so each edit is seen by its own sync
    assert!(server.world().edit(target, &text("second edit")));
    assert!(sync(&store, &src).await.ok());
    let truth = server.world().truth();
    assert_matches_world(&store, &truth, false).await;

    // the edited message has its original and both edits, in order
    let texts: Vec<(i32, String)> = sqlx::query_as(
        "SELECT version, text FROM archive.message_versions WHERE message_id = $1 ORDER BY version",
    )
    .bind(target.to_string())
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(texts.len(), 3, "{texts:?}");
    assert_eq!(texts[1].1, "first edit");
    assert_eq!(texts[2].1, "second edit");
    // the recalled one keeps its text; the 🎉 episode was opened and closed
    let episodes: Vec<(String, Option<chrono::DateTime<chrono::Utc>>)> = sqlx::query_as(
        "SELECT emoji, removed_at FROM archive.reactions WHERE message_id = $1 AND user_id = $2",
    )
    .bind(other.to_string())
    .bind(&me)
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert!(
        episodes.iter().all(|(_, removed)| removed.is_some()),
        "{episodes:?}"
    );

    // a third sync with no change adds no event and rewrites no row
    let events_before = common::count(&store, "SELECT count(*) FROM vault.events").await;
    let xmin_before = common::count(
        &store,
        "SELECT sum(xmin::text::bigint)::bigint FROM vault.messages",
    )
    .await;
    let quiet = sync(&store, &src).await;
    assert!(quiet.ok());
    assert_eq!(quiet.counts.messages_new + quiet.counts.messages_changed, 0);
    assert_eq!(
        common::count(&store, "SELECT count(*) FROM vault.events").await,
        events_before
    );
    assert_eq!(
        common::count(
            &store,
            "SELECT sum(xmin::text::bigint)::bigint FROM vault.messages"
        )
        .await,
        xmin_before
    );
    assert!(store.verify(&[]).await.unwrap().ok());
}

/// Everything an archive holds that must not depend on how often a sync was interrupted.
async fn fingerprint(store: &Store) -> Vec<String> {
    let mut out = Vec::new();
    for sql in [
        "SELECT conversation_id || '/' || message_id || '/' || coalesce(seq::text, '') || '/' || text || '/' || edit_count || '/' || (recalled_at IS NULL) || (deleted_at IS NULL) FROM archive.messages",
        "SELECT conversation_id || '/' || message_id || '/' || version || '/' || text FROM archive.message_versions",
        "SELECT conversation_id || '/' || message_id || '/' || user_id || '/' || emoji || '/' || (removed_at IS NULL) FROM archive.reactions",
        "SELECT conversation_id || '/' || from_seq || '-' || to_seq FROM vault.seq_gaps",
        "SELECT kind || '/' || conversation_id || '/' || coalesce(message_id, '') FROM archive.events",
        "SELECT conversation_id || '/' || message_count FROM archive.conversations",
    ] {
        let mut rows: Vec<String> = sqlx::query_scalar(sql).fetch_all(store.pool()).await.unwrap();
        rows.sort();
        out.extend(rows);
    }
    out
}

#[tokio::test]
async fn a_sync_killed_at_any_point_then_rerun_equals_a_clean_run() {
    let (server, clean, src) = start().await;
    assert!(sync(&clean, &src).await.ok());
    let want = fingerprint(&clean).await;
    let total_requests = server.request_count();
    assert!(total_requests > 40);

    for kill_after in [
        3,
        total_requests / 4,
        total_requests / 2,
        total_requests - 5,
    ] {
        let (store, _) = common::store().await;
        let before = server.request_count();
        let task = {
            let store = store.clone();
            let src = src.clone();
            tokio::spawn(async move { sync(&store, &src).await })
        };
        while server.request_count() < before + kill_after && !task.is_finished() {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        task.abort();
        let _ = task.await;
        // the killed run's lock goes when PostgreSQL notices its connection is gone
        let mut rerun = sync(&store, &src).await;
        for _ in 0..100 {
            if !rerun.skipped {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            rerun = sync(&store, &src).await;
        }
        assert!(
            !rerun.skipped,
            "the killed run's source lock was never released"
        );
        assert!(
            rerun.ok(),
            "rerun after a kill at request {kill_after}: {:?}",
            rerun.error
        );
        let got = fingerprint(&store).await;
        let missing: Vec<_> = want.iter().filter(|w| !got.contains(w)).collect();
        let extra: Vec<_> = got.iter().filter(|g| !want.contains(g)).collect();
        assert_eq!(
            got,
            want,
            "killed after {kill_after} requests; missing {} {:?}; extra {} {:?}",
            missing.len(),
            missing.iter().take(3).collect::<Vec<_>>(),
            extra.len(),
            extra.iter().take(3).collect::<Vec<_>>()
        );
        assert!(store.verify(&[]).await.unwrap().ok());
        let interrupted = common::count(
            &store,
            "SELECT count(*) FROM archive.sync_runs WHERE status = 'interrupted'",
        )
        .await;
        assert_eq!(interrupted, 1, "the killed run is recorded as interrupted");
    }
}

#[tokio::test]
async fn bursts_of_faults_lose_nothing() {
    let (server, store, src) = start().await;
    let faults = server.faults();
    faults.rate_limit(Some("/v1/message/channel/sync"), 3, 0);
    faults.status(Some("/v1/message/channel/sync"), 2, 502);
    faults.status(None, 2, 503);
    faults.status(Some("/v1/message/extra/sync"), 1, 500);
    faults.drop_mid_body(Some("/v1/message/channel/sync"), 2);
    faults.slow(Some("/v1/reaction/sync"), 2, Duration::from_millis(300));
    let result = sync(&store, &src).await;
    assert!(result.ok(), "{:?}", result.error);
    assert!(
        result.counts.retries >= 10,
        "retries: {}",
        result.counts.retries
    );
    assert_eq!(faults.pending(), 0, "every fault fired");
    let truth = server.world().truth();
    assert_matches_world(&store, &truth, false).await;
}

#[tokio::test]
async fn a_permanent_failure_in_one_conversation_leaves_the_others_complete() {
    let (server, store, src) = start().await;
    let broken = {
        let truth = server.world().truth();
        truth
            .iter()
            .find(|c| c.channel_type == 2 && c.is_member)
            .unwrap()
            .channel_id
            .clone()
    };
    server.faults().fail_channel(&broken);
    let result = sync(&store, &src).await;
    assert_eq!(result.status, RunStatus::Failed);
    assert_eq!(result.failed_conversations.len(), 1);
    assert_eq!(result.failed_conversations[0].0, broken);
    assert!(result.error.as_deref().unwrap().contains(&broken));
    // every other conversation is complete
    let mut truth = server.world().truth();
    truth.retain(|c| c.channel_id != broken);
    assert_matches_world(&store, &truth, true).await;
    let in_broken = common::count(
        &store,
        &format!("SELECT count(*) FROM archive.messages WHERE conversation_id = '{broken}'"),
    )
    .await;
    assert_eq!(in_broken, 0);
    let (status, error): (String, Option<String>) =
        sqlx::query_as("SELECT status, error FROM archive.sync_runs")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(status, "failed");
    assert!(error.unwrap().contains(&broken));
}

#[tokio::test]
async fn an_expired_token_is_renewed_once() {
    let (server, store, src) = start().await;
    assert!(sync(&store, &src).await.ok());
    {
        let mut w = server.world();
        w.expire_tokens();
        let group = w
            .truth()
            .into_iter()
            .find(|c| c.channel_type == 2 && c.is_member)
            .unwrap();
        let me = w.me().uid.clone();
        w.post_message(
            &ChannelKey::group(&group.channel_id),
            &me,
            text("after expiry"),
        );
    }
    let result = sync(&store, &src).await;
    assert!(result.ok(), "{:?}", result.error);
    // the new message, and the welcome message the renewing login made the server post
    assert_eq!(result.counts.messages_new, 2);
    assert_eq!(server.world().login_count(), 2);
    // the renewed token is kept: the next run logs in no more
    assert!(sync(&store, &src).await.ok());
    assert_eq!(server.world().login_count(), 2);
}

#[tokio::test]
async fn a_wrong_password_fails_clearly_without_the_secret() {
    let (server, store, _) = start().await;
    let src = source(&server, "hunter2-wrong");
    let result = sync(&store, &src).await;
    assert_eq!(result.status, RunStatus::Failed);
    let error = result.error.unwrap();
    assert!(!error.contains("hunter2-wrong"), "{error}");
    assert!(
        error.to_lowercase().contains("login") || error.contains("unauthorized"),
        "{error}"
    );
    assert_eq!(
        common::count(&store, "SELECT count(*) FROM archive.messages").await,
        0
    );
    let recorded: String = sqlx::query_scalar("SELECT error FROM archive.sync_runs")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert!(!recorded.contains("hunter2-wrong"));
}

#[tokio::test]
async fn a_malformed_record_is_quarantined_and_the_rest_archived() {
    let (server, store, src) = start().await;
    server.faults().malformed(1, Malformed::SeqAsString);
    server.faults().malformed(1, Malformed::PayloadNotObject);
    let result = sync(&store, &src).await;
    assert!(result.ok(), "{:?}", result.error);
    let quarantined: Vec<Value> = sqlx::query_scalar("SELECT raw FROM archive.quarantine")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(quarantined.len(), 2, "{quarantined:?}");
    let bad: BTreeSet<String> = quarantined
        .iter()
        .map(|r| r["message_idstr"].as_str().unwrap().to_string())
        .collect();
    // every other visible message is archived
    let rows = archived(&store).await;
    let truth = server.world().truth();
    for ch in &truth {
        for m in ch
            .messages
            .iter()
            .filter(|m| m.visible && !bad.contains(&m.message_id))
        {
            assert!(rows.contains_key(&(ch.channel_id.clone(), m.message_id.clone())));
        }
    }
    // and a --full pass repairs the quarantined ones
    let full = sync_source(
        &store,
        &src,
        &SyncOptions {
            full: true,
            ..options(&src)
        },
        None,
    )
    .await;
    assert!(full.ok(), "{:?}", full.error);
    assert_eq!(full.counts.messages_new, 2);
    assert_matches_world(&store, &truth, false).await;
}

#[tokio::test]
async fn a_full_pass_is_idempotent() {
    let (_server, store, src) = start().await;
    assert!(sync(&store, &src).await.ok());
    let before = fingerprint(&store).await;
    let full = sync_source(
        &store,
        &src,
        &SyncOptions {
            full: true,
            ..options(&src)
        },
        None,
    )
    .await;
    assert!(full.ok(), "{:?}", full.error);
    assert_eq!(full.counts.messages_new + full.counts.messages_changed, 0);
    assert_eq!(fingerprint(&store).await, before);
}

/// A NUL in a reaction's emoji, in a user's name or in a message made PostgreSQL refuse
/// the whole page, and the same page came back every run: the source never advanced.
#[tokio::test]
async fn nul_characters_from_upstream_never_stop_the_source() {
    let (server, store, src) = start().await;
    let (message_id, channel, reactor) = {
        let world = server.world();
        let truth = world.truth();
        let channel = truth
            .iter()
            .find(|c| c.is_member && c.messages.iter().any(|m| m.visible))
            .unwrap();
        let message = channel.messages.iter().find(|m| m.visible).unwrap();
        let reactor = world
            .users()
            .find(|u| u.uid != world.me().uid)
            .unwrap()
            .uid
            .clone();
        (
            message.message_id.clone(),
            ChannelKey::group(&channel.fake_id),
            reactor,
        )
    };
    {
        let mut world = server.world();
        world.toggle_reaction(message_id.parse().unwrap(), &reactor, "👍\u{0}");
        let me = world.me().uid.clone();
        if world.channel(&channel).is_some() {
            world.post_message(
                &channel,
                &me,
                json!({"type": 1, "content": "null \u{0} inside"}),
            );
        }
    }
    let first = sync(&store, &src).await;
    assert!(first.ok(), "{:?}", first.error);
    let emoji: String = sqlx::query_scalar(
        "SELECT emoji FROM archive.reactions WHERE message_id = $1 AND user_id = $2",
    )
    .bind(&message_id)
    .bind(&reactor)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(emoji, "👍\u{FFFD}");
    let second = sync(&store, &src).await;
    assert!(second.ok(), "{:?}", second.error);
    assert_eq!(second.counts.messages_new, 0, "nothing comes back");
}

/// An unchanged conversation costs two requests (extra and reaction sync), not three: when
/// conversation sync does not list a channel back whose archived seq it was told, there is
/// nothing newer and no channel sync is asked for it. A conversation with a new message is
/// still read.
#[tokio::test]
async fn an_unchanged_conversation_costs_two_requests() {
    const CHANNEL_SYNC: &str = "/v1/message/channel/sync";
    let (server, store, src) = start().await;
    assert!(sync(&store, &src).await.ok());
    let (before, channel_before) = (
        server.request_count(),
        server.request_count_for(CHANNEL_SYNC),
    );
    let quiet = sync(&store, &src).await;
    assert!(quiet.ok(), "{:?}", quiet.error);
    assert!(quiet.conversations >= 10, "{}", quiet.conversations);
    assert_eq!(server.request_count_for(CHANNEL_SYNC) - channel_before, 0);
    assert_eq!(
        server.request_count() - before,
        1 + 2 * quiet.conversations as u64,
        "conversation sync, then extra and reaction sync per conversation"
    );

    // a new message in one channel: that channel alone is read
    {
        let mut w = server.world();
        let me = w.me().uid.clone();
        let key = w
            .channels()
            .iter()
            .find(|c| {
                c.key().channel_type == chatvault::sim::tangsengdaodao::GROUP
                    && w.is_member(c.key(), &me)
            })
            .map(|c| c.key().clone())
            .expect("a group the account is in");
        w.post_message(&key, &me, json!({"type": 1, "content": "one more"}));
    }
    let channel_before = server.request_count_for(CHANNEL_SYNC);
    let next = sync(&store, &src).await;
    assert!(next.ok(), "{:?}", next.error);
    assert_eq!(next.counts.messages_new, 1);
    assert!(server.request_count_for(CHANNEL_SYNC) - channel_before >= 1);
}
