//! NetEase Yunxin end to end: the sync engine and the connector against the fake server
//! over real HTTP, into a real PostgreSQL; plus the store's window (absence) observations.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chatvault::config::{PlatformConfig, Secret, SourceConfig, YunxinConfig};
use chatvault::model::{SourceName, WindowObservation};
use chatvault::sim::yunxin::{
    now_ms, Descending, SimServer, World, WorldSpec, FIRST_SERVER_ID, HISTORY_PATH,
};
use chatvault::store::Store;
use chatvault::sync::{sync_source, SourceResult, SyncOptions};

fn spec() -> WorldSpec {
    WorldSpec {
        seed: 11,
        accounts: 2,
        users: 10,
        teams: 2,
        super_teams: 1,
        direct_chats: 3,
        messages: 1200,
        end_ms: now_ms() - 2 * 3_600_000,
        days: 20,
        same_ms_run: 230,
        ..WorldSpec::default()
    }
}

fn world(descending: Descending) -> World {
    let mut w = World::generate(&spec());
    w.behaviour.rate_limit = None;
    w.behaviour.descending = descending;
    w.behaviour.clock_lag_ms = 20_000;
    w
}

fn source(server: &SimServer, secret: &str, accounts: Vec<String>) -> SourceConfig {
    SourceConfig {
        name: SourceName::new("yx"),
        schedule: "0 */5 * * * *".into(),
        requests_per_second: 0.0,
        request_timeout: Duration::from_secs(5),
        enabled: true,
        push: true,
        platform: PlatformConfig::Yunxin(YunxinConfig {
            base_url: server.base_url(),
            app_key: server.world().app_key.clone(),
            app_secret: Secret::new(secret),
            accounts,
            history_start: None,
            rescan_days: 7,
        }),
    }
}

fn options() -> SyncOptions {
    SyncOptions {
        backoff_base: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        ..SyncOptions::default()
    }
}

async fn start(descending: Descending) -> (SimServer, Store, SourceConfig) {
    let server = SimServer::start(world(descending)).await;
    let (store, _) = common::store().await;
    let (secret, accounts) = {
        let w = server.world();
        (w.app_secret.clone(), w.accounts.clone())
    };
    let src = source(&server, &secret, accounts);
    (server, store, src)
}

async fn sync(store: &Store, src: &SourceConfig) -> SourceResult {
    let r = sync_source(store, src, &options(), None).await;
    assert!(!r.skipped);
    r
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct Row {
    conversation_id: String,
    message_id: String,
    sender_id: Option<String>,
    sent_at: chrono::DateTime<chrono::Utc>,
    kind: String,
    text: String,
    edit_count: i32,
    recalled_at: Option<chrono::DateTime<chrono::Utc>>,
    deleted_at: Option<chrono::DateTime<chrono::Utc>>,
}

async fn archive(store: &Store) -> BTreeMap<(String, String), Row> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT conversation_id, message_id, sender_id, sent_at, kind, text, edit_count,
                recalled_at, deleted_at
         FROM archive.messages WHERE source = 'yx'",
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
        "SELECT conversation_id, message_id, user_id, emoji FROM archive.reactions
         WHERE source = 'yx' AND removed_at IS NULL",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    rows.into_iter().collect()
}

async fn events(store: &Store) -> BTreeMap<String, i64> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, count(*) FROM archive.events WHERE source = 'yx' GROUP BY kind",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    rows.into_iter().collect()
}

async fn events_in(store: &Store, conv: &str) -> BTreeMap<String, i64> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT kind, count(*) FROM archive.events
         WHERE source = 'yx' AND conversation_id = $1 GROUP BY kind",
    )
    .bind(conv)
    .fetch_all(store.pool())
    .await
    .unwrap();
    rows.into_iter().collect()
}

/// The whole world is in the archive: every message still in history, exactly once, with
/// its current text, kind and sender; every standing quick comment as a reaction.
fn assert_complete(server: &SimServer, rows: &BTreeMap<(String, String), Row>) {
    let truth = server.truth();
    let mut expected = 0;
    let mut comments = 0;
    for c in &truth {
        for m in c.messages.iter().filter(|m| m.removed.is_none()) {
            expected += 1;
            comments += m.comments.len();
            let row = rows
                .get(&(c.conversation_id.clone(), m.message_id.clone()))
                .unwrap_or_else(|| panic!("missing {} in {}", m.message_id, c.conversation_id));
            assert_eq!(row.sent_at.timestamp_millis(), m.create_time);
            assert_eq!(row.sender_id.as_deref(), Some(m.sender.as_str()));
            if m.message_type == 0 {
                assert_eq!(row.kind, "text");
                assert_eq!(row.text, m.text);
            }
            let id: i64 = row.message_id.parse().unwrap();
            assert!(id >= FIRST_SERVER_ID, "id {id} lost precision");
        }
    }
    assert_eq!(
        rows.len(),
        expected,
        "archive holds exactly the visible messages"
    );
    assert!(comments > 0);
}

fn expected_reactions(server: &SimServer) -> BTreeSet<(String, String, String, String)> {
    let mut out = BTreeSet::new();
    for c in server.truth() {
        for m in c.messages.iter().filter(|m| m.removed.is_none()) {
            for (op, index) in &m.comments {
                out.insert((
                    c.conversation_id.clone(),
                    m.message_id.clone(),
                    op.clone(),
                    index.to_string(),
                ));
            }
        }
    }
    out
}

#[tokio::test]
async fn backfill_is_complete_under_both_readings_of_descending() {
    for descending in [Descending::DocLiteral, Descending::NameLiteral] {
        let (server, store, src) = start(descending).await;
        let r = sync(&store, &src).await;
        assert!(r.ok(), "{descending:?}: {:?}", r.error);
        let rows = archive(&store).await;
        assert_complete(&server, &rows);
        assert_eq!(open_reactions(&store).await, expected_reactions(&server));
        // the run of 230 messages at one millisecond crossed page boundaries
        let truth = server.truth();
        let busiest = truth
            .iter()
            .max_by_key(|c| c.messages.len())
            .expect("a conversation");
        let mut per_ms: BTreeMap<i64, usize> = BTreeMap::new();
        for m in busiest.messages.iter().filter(|m| m.removed.is_none()) {
            *per_ms.entry(m.create_time).or_default() += 1;
        }
        let (ms, n) = per_ms.into_iter().max_by_key(|(_, n)| *n).unwrap();
        assert!(n >= 200, "{n}");
        let archived = rows
            .values()
            .filter(|r| {
                r.conversation_id == busiest.conversation_id && r.sent_at.timestamp_millis() == ms
            })
            .count();
        assert_eq!(archived, n);
        // nothing deleted on a first read, and nothing recalled: a message returned only
        // with include_no_sense_msg=true that the archive never saw without the flag may
        // have been sent with a no-sense flag; it is archived, unmarked
        assert!(rows.values().all(|r| r.deleted_at.is_none()));
        let recalled: BTreeSet<String> = rows
            .values()
            .filter(|r| r.recalled_at.is_some())
            .map(|r| format!("{}/{}", r.conversation_id, r.message_id))
            .collect();
        let no_sense: BTreeSet<String> = truth
            .iter()
            .flat_map(|c| {
                c.messages
                    .iter()
                    .filter(|m| {
                        m.no_sense
                            && m.removed.is_none()
                            && m.create_time > now_ms() - 7 * 86_400_000 + 60_000
                    })
                    .map(move |m| format!("{}/{}", c.conversation_id, m.message_id))
            })
            .collect();
        assert!(!no_sense.is_empty());
        assert!(recalled.is_empty(), "{recalled:?}");
        for key in &no_sense {
            let (c, m) = key.split_once('/').unwrap();
            assert!(rows.contains_key(&(c.to_string(), m.to_string())), "{key}");
        }
        let created = events(&store).await["message_created"];
        assert_eq!(created as usize, rows.len(), "each message created once");
        server.shutdown().await;
    }
}

/// Recent visible messages of an archived account's conversation (inside the edit window).
fn recent(
    truth: &[chatvault::sim::yunxin::ConversationTruth],
    conversation_id: &str,
) -> Vec<(String, String)> {
    let c = truth
        .iter()
        .find(|c| c.conversation_id == conversation_id)
        .unwrap();
    c.messages
        .iter()
        .filter(|m| {
            m.removed.is_none()
                && !m.no_sense
                && m.message_type == 0
                && m.create_time > now_ms() - 5 * 86_400_000
        })
        .map(|m| (m.message_id.clone(), m.sender.clone()))
        .collect()
}

#[tokio::test]
async fn incremental_runs_keep_what_upstream_changes_and_removes() {
    let (server, store, src) = start(Descending::DocLiteral).await;
    assert!(sync(&store, &src).await.ok());
    // a team conversation with enough recent messages, seen by acc00
    let truth = server.truth();
    let conv = truth
        .iter()
        .map(|c| c.conversation_id.clone())
        .filter(|id| id.starts_with("acc00|"))
        .max_by_key(|id| recent(&truth, id).len())
        .unwrap();
    let msgs = recent(&truth, &conv);
    assert!(msgs.len() >= 5, "{}", msgs.len());
    // a one-way recall hides the message from everyone but its sender
    let owner = conv.split('|').next().unwrap().to_string();
    let one_way = msgs.iter().find(|m| m.1 != owner).unwrap().clone();
    let rest: Vec<_> = msgs.iter().filter(|m| **m != one_way).cloned().collect();
    let edited = rest[0].clone();
    let two_way = rest[1].clone();
    let deleted = rest[2].clone();
    let commented = rest[3].clone();
    let id = |m: &(String, String)| m.0.parse::<i64>().unwrap();
    let new_ids = {
        let mut w = server.world();
        assert!(w.edit(id(&edited), &edited.1, "first edit 第一次编辑"));
        let new = vec![
            w.post_text(&conv, "acc01", "new message 新消息").unwrap(),
            w.post_text(&conv, "acc00", "another one").unwrap(),
        ];
        assert!(w.recall_one_way(id(&one_way)));
        assert!(w.recall_two_way(id(&two_way), &two_way.1));
        assert!(w.delete(id(&deleted)));
        assert!(w.add_comment(id(&commented), "acc01", 5));
        assert!(w.set_server_extension(&conv, r#"{"topic":"q4"}"#));
        new
    };
    let before = events_in(&store, &conv).await;
    let r = sync(&store, &src).await;
    assert!(r.ok(), "{:?}", r.error);
    let rows = archive(&store).await;
    let get = |m: &str| rows[&(conv.clone(), m.to_string())].clone();
    for n in &new_ids {
        assert!(rows.contains_key(&(conv.clone(), n.to_string())));
    }
    assert_eq!(get(&edited.0).text, "first edit 第一次编辑");
    assert_eq!(get(&edited.0).edit_count, 1);
    // one-way recall: content kept, recall mark, no deletion
    let ow = get(&one_way.0);
    assert!(ow.recalled_at.is_some() && ow.deleted_at.is_none());
    assert!(!ow.text.is_empty() || ow.kind != "text");
    // two-way recall and delete: gone upstream, kept here with a deletion mark
    for m in [&two_way, &deleted] {
        let row = get(&m.0);
        assert!(row.deleted_at.is_some(), "{m:?}");
    }
    let detail: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT detail FROM archive.events
         WHERE source = 'yx' AND kind = 'message_deleted' AND conversation_id = $1",
    )
    .bind(&conv)
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(detail.len(), 2);
    assert!(detail
        .iter()
        .all(|d| d["detail"].as_str().unwrap().contains("absent upstream")));
    let versions: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM archive.message_versions
         WHERE source = 'yx' AND conversation_id = $1 AND message_id = $2",
    )
    .bind(&conv)
    .bind(&two_way.0)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(versions, 1, "content kept");
    assert!(open_reactions(&store).await.contains(&(
        conv.clone(),
        commented.0.clone(),
        "acc01".into(),
        "5".into()
    )));
    let after = events_in(&store, &conv).await;
    let grew = |k: &str| after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0);
    assert_eq!(grew("message_created"), 2);
    assert_eq!(grew("message_edited"), 1);
    assert_eq!(grew("message_recalled"), 1);
    assert_eq!(grew("message_deleted"), 2);
    assert_eq!(grew("reaction_added"), 1);
    assert_eq!(grew("conversation_changed"), 1);

    // a second edit, a comment removed, the last message recalled two ways
    let last = *new_ids.last().unwrap();
    {
        let mut w = server.world();
        assert!(w.edit(id(&edited), &edited.1, "second edit"));
        assert!(w.remove_comment(id(&commented), "acc01", 5));
        assert!(w.recall_two_way(last, "acc00"));
    }
    let r = sync(&store, &src).await;
    assert!(r.ok(), "{:?}", r.error);
    let rows = archive(&store).await;
    let e = &rows[&(conv.clone(), edited.0.clone())];
    assert_eq!((e.text.as_str(), e.edit_count), ("second edit", 2));
    let l = &rows[&(conv.clone(), last.to_string())];
    assert!(
        l.recalled_at.is_some(),
        "revoke_notification marks the last message"
    );
    assert!(l.deleted_at.is_some());
    assert_eq!(l.text, "another one");
    assert!(!open_reactions(&store).await.contains(&(
        conv.clone(),
        commented.0.clone(),
        "acc01".into(),
        "5".into()
    )));

    // and a run without changes adds no event
    let before = events(&store).await;
    let r = sync(&store, &src).await;
    assert!(r.ok(), "{:?}", r.error);
    assert_eq!(events(&store).await, before);
    server.shutdown().await;
}

#[tokio::test]
async fn quiet_runs_cost_few_requests_and_add_nothing() {
    let (server, store, src) = start(Descending::DocLiteral).await;
    assert!(sync(&store, &src).await.ok());
    let after_backfill = server.request_count();
    let recalls: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM archive.messages WHERE source = 'yx' AND recalled_at IS NOT NULL",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    let no_sense_recent = server
        .truth()
        .iter()
        .flat_map(|c| c.messages.iter())
        .filter(|m| m.no_sense && m.removed.is_none() && m.create_time > now_ms() - 7 * 86_400_000)
        .count();
    assert!(no_sense_recent > 0);
    assert_eq!(
        recalls, 0,
        "no-sense messages never seen without the flag are not recalls"
    );
    let before = events(&store).await;
    let r = sync(&store, &src).await;
    assert!(r.ok(), "{:?}", r.error);
    assert_eq!(events(&store).await, before, "no change, no event");
    let quiet = server.request_count() - after_backfill;
    // every conversation has messages of the last 7 days: each is rescanned
    let conversations = server.truth().len() as u64;
    assert_eq!(r.conversations as u64, conversations);
    assert!(quiet >= conversations * 2, "{quiet}");

    // without a rescan, a quiet run only lists the conversations (one page per account)
    let mut src0 = src.clone();
    if let PlatformConfig::Yunxin(c) = &mut src0.platform {
        c.rescan_days = 0;
    }
    let n = server.request_count();
    let r = sync(&store, &src0).await;
    assert!(r.ok(), "{:?}", r.error);
    assert_eq!(r.conversations, 0);
    assert_eq!(server.request_count() - n, 2);
    // and a change costs the conversations it touched
    let conv = server.truth()[0].conversation_id.clone();
    let id = server.world().post_text(&conv, "acc00", "ping").unwrap();
    let n = server.request_count();
    let r = sync(&store, &src0).await;
    assert!(r.ok(), "{:?}", r.error);
    assert!((1..=2).contains(&r.conversations), "{}", r.conversations);
    assert!(
        server.request_count() - n <= 2 + 2 * 2,
        "{}",
        server.request_count() - n
    );
    assert!(archive(&store).await.contains_key(&(conv, id.to_string())));
    assert_eq!(
        events(&store).await["message_created"],
        before["message_created"] + r.conversations as i64,
        "the new message, once per conversation showing it"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_backfill_broken_off_mid_read_resumes_to_the_same_archive() {
    let (server, store, src) = start(Descending::DocLiteral).await;
    // fail the 4th history request for good: a conversation stops in the middle of a read
    server.faults().code_after(Some(HISTORY_PATH), 3, 1, 414);
    let r = sync(&store, &src).await;
    assert!(!r.ok());
    assert_eq!(r.failed_conversations.len(), 1);
    let r = sync(&store, &src).await;
    assert!(r.ok(), "{:?}", r.error);
    // the resumed read could not decide one-way recalls; the next run does
    assert!(sync(&store, &src).await.ok());

    assert_same_as_clean(&store, &src).await;
    server.shutdown().await;
}

/// The archive equals a clean backfill plus one incremental run into a fresh database.
async fn assert_same_as_clean(store: &Store, src: &SourceConfig) {
    let clean = {
        let pool = chatvault::pg::testing::fresh_pool().await;
        let s = Store::from_pool(pool);
        s.migrate().await.unwrap();
        s
    };
    assert!(sync(&clean, src).await.ok());
    assert!(sync(&clean, src).await.ok());
    assert_eq!(archive(store).await.len(), archive(&clean).await.len());
    let strip = |m: BTreeMap<(String, String), Row>| -> BTreeMap<(String, String), (String, i32, bool, bool)> {
        m.into_iter()
            .map(|(k, r)| (k, (r.text, r.edit_count, r.recalled_at.is_some(), r.deleted_at.is_some())))
            .collect()
    };
    let (a, b) = (strip(archive(store).await), strip(archive(&clean).await));
    let differ: Vec<_> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(*v))
        .take(3)
        .collect();
    assert!(differ.is_empty(), "{differ:?}");
    assert_eq!(events(store).await, events(&clean).await);
    assert_eq!(open_reactions(store).await, open_reactions(&clean).await);
}

#[tokio::test]
async fn a_backfill_stopped_by_shutdown_resumes_to_the_same_archive() {
    let (server, store, src) = start(Descending::DocLiteral).await;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let trip = async {
        let started = std::time::Instant::now();
        while server.request_count_for(HISTORY_PATH) < 6
            && started.elapsed() < Duration::from_secs(20)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let _ = stop.send(true);
    };
    let opts = options();
    let (r, ()) = tokio::join!(sync_source(&store, &src, &opts, Some(stopped)), trip);
    assert_eq!(
        r.status,
        chatvault::store::RunStatus::Interrupted,
        "{:?}",
        r.error
    );
    assert!(archive(&store).await.len() < 1000, "stopped early");
    assert!(sync(&store, &src).await.ok());
    assert!(sync(&store, &src).await.ok());
    assert_same_as_clean(&store, &src).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_wrong_app_secret_is_a_clear_error_and_stays_secret() {
    let (server, store, src) = start(Descending::DocLiteral).await;
    let secret = "wrong-secret-f00d";
    let accounts = server.world().accounts.clone();
    let bad = source(&server, secret, accounts);
    let r = sync(&store, &bad).await;
    assert!(!r.ok());
    let error = r.error.unwrap();
    assert!(
        error.contains("414") && error.contains("app_secret"),
        "{error}"
    );
    assert!(!error.contains(secret));
    let stored: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM archive.sync_runs WHERE error LIKE '%' || $1 || '%')
              + (SELECT count(*) FROM archive.quarantine WHERE raw::text LIKE '%' || $1 || '%')",
    )
    .bind(secret)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(stored, 0);
    // and an account without cloud conversations is named as such
    let mut no_cloud = src.clone();
    if let PlatformConfig::Yunxin(c) = &mut no_cloud.platform {
        c.accounts = vec!["nobody".into()];
    }
    server.world().no_cloud.insert("nobody".into());
    let r = sync(&store, &no_cloud).await;
    let error = r.error.unwrap();
    assert!(error.contains("cloud conversations"), "{error}");
    server.shutdown().await;
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_waited_out() {
    let (server, store, src) = start(Descending::DocLiteral).await;
    {
        let mut w = server.world();
        // the fake's own limiter: 40 requests/s per API, blocked for 150 ms after
        w.behaviour.rate_limit = Some(40);
        w.behaviour.rate_limit_block = Duration::from_millis(150);
    }
    let faults = server.faults();
    faults.code(Some(HISTORY_PATH), 4, 416);
    faults.code(None, 2, 503);
    faults.http(None, 1, 502);
    let r = sync(&store, &src).await;
    assert!(r.ok(), "{:?}", r.error);
    assert!(r.rate_limit_waits >= 4, "{}", r.rate_limit_waits);
    assert_complete(&server, &archive(&store).await);
    server.shutdown().await;
}

#[tokio::test]
async fn a_malformed_message_is_quarantined_and_never_deletes_anything() {
    let (server, store, src) = start(Descending::DocLiteral).await;
    server.faults().malformed(1);
    let r = sync(&store, &src).await;
    assert!(r.ok(), "{:?}", r.error);
    let raw: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT raw FROM archive.quarantine WHERE source = 'yx'")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0]["message_server_id"], "x-broken");
    // the broken item keeps coming back: later rescans must not read it as a deletion
    for _ in 0..2 {
        assert!(sync(&store, &src).await.ok());
    }
    let rows = archive(&store).await;
    assert!(rows.values().all(|r| r.deleted_at.is_none()));
    let visible: usize = server
        .truth()
        .iter()
        .map(|c| c.messages.iter().filter(|m| m.removed.is_none()).count())
        .sum();
    assert!(
        rows.len() == visible - 1 || rows.len() == visible - 2,
        "{} of {visible}",
        rows.len()
    );
    server.shutdown().await;
}

// ---- the store's window observations --------------------------------------------------

#[tokio::test]
async fn a_window_observation_deletes_only_absent_held_messages_in_its_window() {
    let (store, source) = common::store().await;
    let msgs: Vec<_> = (1..=5)
        .map(|i| common::message("c", &format!("m{i}"), i, &format!("text {i}")))
        .collect();
    store
        .apply_page(&source, &common::page("k", None, 5, msgs))
        .await
        .unwrap();
    // upstream holds m2 in [t2, t4]; the page itself carries m4 again
    let mut page = common::page(
        "k",
        Some(5),
        6,
        vec![common::message("c", "m4", 4, "text 4")],
    );
    page.windows.push(WindowObservation {
        conversation_id: "c".into(),
        from: common::t(2),
        to: common::t(4),
        present: vec!["m2".into()],
        detail: "absent upstream".into(),
    });
    let out = store.apply_page(&source, &page).await.unwrap();
    assert_eq!(out.messages_changed, 1);
    let rows: Vec<(String, bool, String)> = sqlx::query_as(
        "SELECT message_id, deleted_at IS NOT NULL, text FROM archive.messages ORDER BY message_id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("m1".into(), false, "text 1".into()),
            ("m2".into(), false, "text 2".into()),
            ("m3".into(), true, "text 3".into()),
            ("m4".into(), false, "text 4".into()),
            ("m5".into(), false, "text 5".into()),
        ]
    );
    let detail: serde_json::Value = sqlx::query_scalar(
        "SELECT detail FROM archive.events WHERE kind = 'message_deleted' AND message_id = 'm3'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(detail["detail"], "absent upstream");
    // the same observation again: the mark is set once, no new event
    let mut again = common::page("k", Some(6), 7, vec![]);
    again.windows = page.windows.clone();
    again.windows[0].present.push("m4".into());
    let out = store.apply_page(&source, &again).await.unwrap();
    assert_eq!(out.events, 0);
    // a mark in the same page is no sign of presence: m5 recalled and gone
    let mut mark = common::message("c", "m5", 5, "text 5");
    mark.header = None;
    mark.content = None;
    mark.recalled = Some(chatvault::model::Mark::default());
    let mut marked = common::page("k", Some(7), 8, vec![mark]);
    marked.windows.push(WindowObservation {
        conversation_id: "c".into(),
        from: common::t(5),
        to: common::t(5),
        present: vec![],
        detail: "absent upstream".into(),
    });
    assert_eq!(store.apply_page(&source, &marked).await.unwrap().events, 2);
    // an inverted window deletes nothing
    let mut inverted = common::page("k", Some(8), 9, vec![]);
    inverted.windows.push(WindowObservation {
        conversation_id: "c".into(),
        from: common::t(5),
        to: common::t(1),
        present: vec![],
        detail: "absent upstream".into(),
    });
    assert_eq!(
        store.apply_page(&source, &inverted).await.unwrap().events,
        0
    );
    let report = store.verify(&[]).await.unwrap();
    assert!(report.ok(), "{report:?}");
}
