//! Yunhu end to end: the sync engine and the connector against the fake server over real
//! HTTP (real protobuf), into a real PostgreSQL. The archive is compared with the world.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chatvault::config::{PlatformConfig, Secret, SourceConfig, YunhuConfig};
use chatvault::model::SourceName;
use chatvault::sim::yunhu::{ChatTruth, Malformed, SimServer, World, WorldSpec, BOT, GROUP, USER};
use chatvault::store::{RunStatus, Store};
use chatvault::sync::{sync_source, SourceResult, SyncOptions};

fn spec() -> WorldSpec {
    WorldSpec {
        seed: 11,
        users: 10,
        groups: 3,
        bots: 1,
        direct_chats: 4,
        messages: 900,
        unlisted_chats: 1,
        late_joined_groups: 1,
        ..WorldSpec::default()
    }
}

fn source(server: &SimServer, token: &str, rescan_messages: u32) -> SourceConfig {
    SourceConfig {
        name: SourceName::new("y"),
        schedule: "0 */5 * * * *".into(),
        requests_per_second: 0.0,
        request_timeout: Duration::from_secs(5),
        enabled: true,
        push: true,
        platform: PlatformConfig::Yunhu(YunhuConfig {
            base_url: server.base_url(),
            token: Secret::new(token),
            rescan_messages,
            rescan_days: 0,
            rescan_every_minutes: 0,
            ws_url: chatvault::connector::yunhu::push::DEFAULT_WS_URL.into(),
        }),
    }
}

fn options(full: bool) -> SyncOptions {
    SyncOptions {
        full,
        backoff_base: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        ..SyncOptions::default()
    }
}

async fn store() -> Store {
    let store = Store::from_pool(chatvault::pg::testing::fresh_pool().await);
    store.migrate().await.expect("migrations apply");
    store
}

async fn start(spec: &WorldSpec, rescan: u32) -> (SimServer, Store, SourceConfig) {
    let server = SimServer::start(World::generate(spec)).await;
    let src = source(&server, &spec.token, rescan);
    (server, store().await, src)
}

async fn sync(store: &Store, src: &SourceConfig, full: bool) -> SourceResult {
    // a killed run's lock goes with its connection, which the server notices shortly
    for _ in 0..50 {
        let result = sync_source(store, src, &options(full), None).await;
        if !result.skipped {
            return result;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the source lock was never released");
}

async fn cursor_times(store: &Store) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
    sqlx::query_as("SELECT key, updated_at FROM vault.cursors ORDER BY key")
        .fetch_all(store.pool())
        .await
        .unwrap()
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct Row {
    conversation_id: String,
    message_id: String,
    seq: Option<i64>,
    sender_id: Option<String>,
    sender_name: Option<String>,
    kind: String,
    text: String,
    edit_count: i32,
    recalled: bool,
    reply_to: Option<String>,
}

async fn archived(store: &Store) -> BTreeMap<String, Row> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT conversation_id, message_id, seq, sender_id, sender_name, kind, text, edit_count,
                recalled_at IS NOT NULL AS recalled, reply_to
         FROM archive.messages",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    rows.into_iter()
        .map(|r| (r.message_id.clone(), r))
        .collect()
}

async fn versions(store: &Store, msg_id: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT text FROM archive.message_versions WHERE message_id = $1 ORDER BY version",
    )
    .bind(msg_id)
    .fetch_all(store.pool())
    .await
    .unwrap()
}

/// The first chat the conversation list shows, and the account's own id.
fn listed_chat_and_me(w: &World) -> (String, String) {
    let chat = w
        .truth()
        .iter()
        .find(|c| c.in_list)
        .unwrap()
        .chat_id
        .clone();
    (chat, w.me.id.clone())
}

async fn count(store: &Store, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

fn kind_of(content_type: i64) -> &'static str {
    match content_type {
        1 => "text",
        2 => "image",
        3 => "markdown",
        4 => "file",
        5 => "form",
        6 => "post",
        7 => "sticker",
        8 => "html",
        9 => "system",
        10 => "video",
        11 => "voice",
        13 => "call",
        14 => "card",
        _ => "other",
    }
}

/// Every visible message is archived once, as the world has it, with every version.
async fn assert_matches_world(store: &Store, truth: &[ChatTruth]) {
    let rows = archived(store).await;
    let mut expected = BTreeSet::new();
    for chat in truth {
        for m in chat.messages.iter().filter(|m| m.visible) {
            expected.insert(m.msg_id.clone());
            let row = rows.get(&m.msg_id).unwrap_or_else(|| {
                panic!(
                    "message {} (seq {}) of chat {} is not archived",
                    m.msg_id, m.seq, chat.chat_id
                )
            });
            assert_eq!(row.conversation_id, chat.chat_id);
            assert_eq!(row.seq, Some(m.seq));
            assert_eq!(row.sender_id.as_deref(), Some(m.sender_id.as_str()));
            assert_eq!(row.sender_name.as_deref(), Some(m.sender_name.as_str()));
            assert_eq!(row.kind, kind_of(m.content_type), "{}", m.msg_id);
            assert_eq!(row.recalled, m.recall_time > 0, "{}", m.msg_id);
            assert_eq!(
                row.reply_to,
                (!m.quote_msg_id.is_empty()).then(|| m.quote_msg_id.clone())
            );
            assert_eq!(&row.text, m.versions.last().unwrap(), "{}", m.msg_id);
            if m.versions.len() > 1 {
                assert_eq!(versions(store, &m.msg_id).await, m.versions, "{}", m.msg_id);
            } else {
                assert_eq!(row.edit_count, 0, "{}", m.msg_id);
            }
        }
    }
    let held: BTreeSet<String> = rows.keys().cloned().collect();
    let extra: Vec<_> = held.difference(&expected).collect();
    assert!(extra.is_empty(), "archived but not visible: {extra:?}");
    assert_eq!(held.len(), expected.len());
}

#[tokio::test]
async fn a_full_backfill_archives_the_whole_world() {
    let (server, store, src) = start(&spec(), 200).await;
    let truth = server.world().truth();
    let result = sync(&store, &src, false).await;
    assert!(result.ok(), "{:?}", result.error);
    assert_matches_world(&store, &truth).await;

    // conversations: every chat, with its type, the unlisted one (address book) included
    let types: BTreeMap<String, String> = sqlx::query_as::<_, (String, String)>(
        "SELECT conversation_id, conversation_type FROM archive.conversations",
    )
    .fetch_all(store.pool())
    .await
    .unwrap()
    .into_iter()
    .collect();
    assert_eq!(types.len(), truth.len());
    assert!(
        truth.iter().any(|c| !c.in_list),
        "the world has an unlisted chat"
    );
    for chat in &truth {
        let want = match chat.chat_type {
            USER => "direct",
            GROUP => "group",
            BOT => "bot",
            _ => unreachable!(),
        };
        assert_eq!(
            types.get(&chat.chat_id).map(String::as_str),
            Some(want),
            "{}",
            chat.chat_id
        );
    }
    // the world really has the cases the archive must handle
    let all: Vec<_> = truth.iter().flat_map(|c| &c.messages).collect();
    assert!(all.iter().any(|m| m.versions.len() >= 3));
    assert!(all.iter().any(|m| m.recall_time > 0));
    assert!(all.iter().any(|m| !m.visible));
    let kinds = count(&store, "SELECT count(DISTINCT kind) FROM archive.messages").await;
    assert!(kinds >= 10, "only {kinds} kinds");
    let other_raw = count(
        &store,
        "SELECT count(*) FROM archive.messages WHERE kind = 'other' AND raw ? 'pb' AND raw->>'content_type' = '99'",
    )
    .await;
    assert!(other_raw > 0, "unknown types keep their raw payload");

    // invisible seqs are gaps, not errors: hidden messages and the late-joined group's start
    for chat in &truth {
        for m in chat.messages.iter().filter(|m| !m.visible) {
            let covered = count(
                &store,
                &format!(
                    "SELECT count(*) FROM vault.seq_gaps WHERE conversation_id = '{}' AND {} BETWEEN from_seq AND to_seq",
                    chat.chat_id, m.seq
                ),
            )
            .await;
            assert!(
                covered > 0,
                "seq {} of {} is not recorded as a gap",
                m.seq,
                chat.chat_id
            );
        }
    }
    // no reactions on Yunhu
    assert_eq!(
        count(&store, "SELECT count(*) FROM archive.reactions").await,
        0
    );
    assert_eq!(
        count(&store, "SELECT count(*) FROM archive.quarantine").await,
        0
    );
    server.shutdown().await;
}

#[tokio::test]
async fn an_unchanged_conversation_list_costs_one_request_and_writes_nothing() {
    let (server, store, src) = start(&spec(), 200).await;
    assert!(sync(&store, &src, false).await.ok());
    let events = count(&store, "SELECT count(*) FROM archive.events").await;
    let cursors_at = cursor_times(&store).await;
    let before = server.request_count();
    let result = sync(&store, &src, false).await;
    assert!(result.ok(), "{:?}", result.error);
    assert_eq!(
        server.request_count() - before,
        1,
        "{:?}",
        server.request_counts()
    );
    assert_eq!(result.counts.requests, 1);
    assert_eq!(
        count(&store, "SELECT count(*) FROM archive.events").await,
        events
    );
    assert_eq!(
        cursor_times(&store).await,
        cursors_at,
        "no cursor was written"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn incremental_catch_up_fetches_only_changed_chats() {
    let (server, store, src) = start(&spec(), 0).await;
    assert!(sync(&store, &src, false).await.ok());
    let (busy, quiet, me) = {
        let w = server.world();
        let t = w.truth();
        let listed: Vec<_> = t.iter().filter(|c| c.in_list).collect();
        (
            listed[0].chat_id.clone(),
            listed[1].chat_id.clone(),
            w.me.id.clone(),
        )
    };
    // 5 new messages in one chat (inside the by-seq window), 45 in another (beyond it)
    let before = server.request_counts();
    {
        let mut w = server.world();
        for i in 0..5 {
            w.post_text(&quiet, &me, &format!("quiet {i}")).unwrap();
        }
        for i in 0..45 {
            w.post_text(&busy, &me, &format!("busy {i}")).unwrap();
        }
    }
    let result = sync(&store, &src, false).await;
    assert!(result.ok(), "{:?}", result.error);
    assert_eq!(result.counts.messages_new, 50);
    let truth = server.world().truth();
    assert_matches_world(&store, &truth).await;
    let after = server.request_counts();
    let delta = |p: &str| after.get(p).copied().unwrap_or(0) - before.get(p).copied().unwrap_or(0);
    // one by-seq try each; the busy chat's is not contiguous and falls back to paging
    assert_eq!(delta("/v1/msg/list-message-by-seq"), 2, "{after:?}");
    assert_eq!(
        delta("/v1/msg/list-message"),
        2,
        "45 new messages are two pages: {after:?}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn three_edits_yield_four_versions_whether_seen_before_or_after() {
    let (server, store, src) = start(&spec(), 200).await;
    let (chat, me, seen_before, seen_after) = {
        let mut w = server.world();
        let (chat, me) = listed_chat_and_me(&w);
        let a = w.post_text(&chat, &me, "v1 after").unwrap();
        let b = w.post_text(&chat, &me, "v1 before").unwrap();
        for i in 2..=4 {
            assert!(w.edit_text(&a, &format!("v{i} after")));
        }
        (chat, me, b, a)
    };
    assert!(sync(&store, &src, false).await.ok());
    assert_eq!(
        versions(&store, &seen_after).await,
        ["v1 after", "v2 after", "v3 after", "v4 after"],
        "first seen after three edits"
    );
    {
        let mut w = server.world();
        for i in 2..=4 {
            assert!(w.edit_text(&seen_before, &format!("v{i} before")));
        }
        w.post_text(&chat, &me, "makes the chat active").unwrap();
    }
    assert!(sync(&store, &src, false).await.ok());
    assert_eq!(
        versions(&store, &seen_before).await,
        ["v1 before", "v2 before", "v3 before", "v4 before"],
        "archived, then edited three times"
    );
    let edited_at: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT edited_at FROM archive.messages WHERE message_id = $1")
            .bind(&seen_before)
            .fetch_one(store.pool())
            .await
            .unwrap();
    let edit_time = server.world().message(&seen_before).unwrap().1.edit_time;
    assert_eq!(
        edited_at.map(|t| t.timestamp_millis() as u64),
        Some(edit_time)
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_recall_keeps_the_archived_text_and_sender_even_when_upstream_blanks_it() {
    let spec = WorldSpec {
        recall_blanks_content: true,
        ..spec()
    };
    let (server, store, src) = start(&spec, 200).await;
    let (chat, me, target) = {
        let mut w = server.world();
        let chat = w
            .truth()
            .iter()
            .find(|c| c.chat_type == GROUP && c.in_list)
            .unwrap()
            .chat_id
            .clone();
        let other = w
            .chat(&chat)
            .unwrap()
            .members
            .iter()
            .find(|p| p.id != w.me.id)
            .unwrap()
            .id
            .clone();
        let me = w.me.id.clone();
        let target = w.post_text(&chat, &other, "别撤回这条").unwrap();
        (chat, me, target)
    };
    assert!(sync(&store, &src, false).await.ok());
    let before = archived(&store).await[&target].clone();
    {
        let mut w = server.world();
        assert!(w.recall(&target));
        w.post_text(&chat, &me, "after the recall").unwrap();
    }
    assert!(sync(&store, &src, false).await.ok());
    let after = archived(&store).await[&target].clone();
    assert!(after.recalled);
    assert_eq!(after.text, "别撤回这条");
    assert_eq!(after.sender_id, before.sender_id);
    assert_eq!(after.sender_name, before.sender_name);
    assert_eq!(after.edit_count, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn the_rescan_window_finds_old_edits_and_recalls_but_not_beyond_it() {
    let (server, store, src) = start(&spec(), 40).await;
    assert!(sync(&store, &src, false).await.ok());
    let (chat, me, inside_edit, inside_recall, outside) = {
        let w = server.world();
        let t = w.truth();
        let c = t
            .iter()
            .filter(|c| c.in_list)
            .find(|c| c.messages.iter().filter(|m| m.visible).count() > 120)
            .expect("a busy chat");
        let text_like = |m: &&chatvault::sim::yunhu::MsgTruth| {
            m.visible && m.recall_time == 0 && m.content_type == 1 && m.versions.len() == 1
        };
        let newest: Vec<_> = c.messages.iter().rev().filter(text_like).collect();
        (
            c.chat_id.clone(),
            w.me.id.clone(),
            newest[5].msg_id.clone(),
            newest[12].msg_id.clone(),
            newest[100].msg_id.clone(),
        )
    };
    {
        let mut w = server.world();
        assert!(w.edit_text(&inside_edit, "edited inside the window"));
        assert!(w.recall(&inside_recall));
        assert!(w.edit_text(&outside, "edited long after"));
        w.post_text(&chat, &me, "activity").unwrap();
    }
    let before = server.request_count_for("/v1/msg/list-message");
    assert!(sync(&store, &src, false).await.ok());
    let pages = server.request_count_for("/v1/msg/list-message") - before;
    assert_eq!(pages, 2, "41 messages of the window are two pages");
    let rows = archived(&store).await;
    assert_eq!(rows[&inside_edit].text, "edited inside the window");
    assert_eq!(rows[&inside_edit].edit_count, 1);
    assert!(rows[&inside_recall].recalled);
    assert_eq!(
        rows[&outside].edit_count, 0,
        "outside the window: not re-read"
    );
    assert_ne!(rows[&outside].text, "edited long after");

    // only a --full pass finds it
    let result = sync(&store, &src, true).await;
    assert!(result.ok(), "{:?}", result.error);
    let rows = archived(&store).await;
    assert_eq!(rows[&outside].text, "edited long after");
    assert_eq!(rows[&outside].edit_count, 1);
    let truth = server.world().truth();
    assert_matches_world(&store, &truth).await;
    server.shutdown().await;
}

async fn snapshot(
    store: &Store,
) -> (
    BTreeMap<String, Row>,
    Vec<(String, String, i32, String)>,
    Vec<(String, i64, i64)>,
) {
    let versions: Vec<(String, String, i32, String)> = sqlx::query_as(
        "SELECT conversation_id, message_id, version, text FROM archive.message_versions ORDER BY 1, 2, 3",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let gaps: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT conversation_id, from_seq, to_seq FROM vault.seq_gaps ORDER BY 1, 2, 3",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    (archived(store).await, versions, gaps)
}

#[tokio::test]
async fn a_backfill_killed_midway_and_rerun_equals_a_clean_run() {
    let spec = spec();
    let (server, store, src) = start(&spec, 200).await;
    // kill the first run once it is well into the history
    let run = {
        let store = store.clone();
        let src = src.clone();
        tokio::spawn(async move { sync_source(&store, &src, &options(false), None).await })
    };
    while server.request_count_for("/v1/msg/list-message") < 12 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    run.abort();
    let _ = run.await;
    let partial = count(&store, "SELECT count(*) FROM archive.messages").await;
    let result = sync(&store, &src, false).await;
    assert!(result.ok(), "{:?}", result.error);
    let resumed = snapshot(&store).await;

    let clean_store = self::store().await;
    let result = sync(&clean_store, &src, false).await;
    assert!(result.ok(), "{:?}", result.error);
    let clean = snapshot(&clean_store).await;
    assert!(
        partial < clean.0.len() as i64,
        "the first run was killed before the end ({partial})"
    );
    assert_eq!(resumed.0, clean.0);
    assert_eq!(resumed.1, clean.1);
    assert_eq!(resumed.2, clean.2);
    server.shutdown().await;
}

#[tokio::test]
async fn a_bad_token_is_a_clear_error_without_the_token() {
    let (server, store, _) = start(&spec(), 200).await;
    let src = source(&server, "wrong-token-value-123", 200);
    let result = sync(&store, &src, false).await;
    assert_eq!(result.status, RunStatus::Failed);
    let error = result.error.unwrap();
    assert!(error.contains("yunhu source y"), "{error}");
    assert!(error.contains("token rejected"), "{error}");
    assert!(error.contains("-101"), "{error}");
    assert!(!error.contains("wrong-token-value-123"), "{error}");
    assert_eq!(
        count(&store, "SELECT count(*) FROM archive.messages").await,
        0
    );
    server.shutdown().await;
}

#[tokio::test]
async fn malformed_records_are_quarantined_and_the_rest_archived() {
    let (server, store, src) = start(&spec(), 200).await;
    server.faults().malformed(1, Malformed::WrongWireType);
    server.faults().malformed(1, Malformed::MissingSeq);
    // and transport faults on the way (not on the pages with broken records), retried
    server
        .faults()
        .status(Some("/v1/conversation/list"), 2, 502);
    server
        .faults()
        .rate_limit(Some("/v1/friend/address-book-list"), 1, 0);
    server
        .faults()
        .drop_mid_body(Some("/v1/conversation/list"), 1);
    let result = sync(&store, &src, false).await;
    assert!(result.ok(), "{:?}", result.error);
    assert_eq!(server.faults().pending(), 0);
    assert_eq!(
        count(&store, "SELECT count(*) FROM archive.quarantine").await,
        2
    );
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM archive.quarantine ORDER BY reason")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert!(
        reasons.iter().any(|r| r.contains("does not decode")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("no msg_seq")),
        "{reasons:?}"
    );
    let visible: usize = server
        .world()
        .truth()
        .iter()
        .map(|c| c.messages.iter().filter(|m| m.visible).count())
        .sum();
    let held = count(&store, "SELECT count(*) FROM archive.messages").await as usize;
    assert_eq!(held, visible - 2, "everything but the two broken records");
    // a --full pass reads them again, now intact
    assert!(sync(&store, &src, true).await.ok());
    let truth = server.world().truth();
    assert_matches_world(&store, &truth).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_chat_that_failed_is_read_again_though_the_list_is_unchanged() {
    let (server, store, src) = start(&spec(), 200).await;
    assert!(sync(&store, &src, false).await.ok());
    let (chat, me) = listed_chat_and_me(&server.world());
    let posted = server
        .world()
        .post_text(&chat, &me, "arrives while the chat fails")
        .unwrap();
    server.faults().fail_chat(&chat);
    let failed = sync(&store, &src, false).await;
    assert_eq!(failed.status, RunStatus::Failed);
    assert_eq!(failed.failed_conversations.len(), 1, "{:?}", failed.error);
    let why = &failed.failed_conversations[0].1;
    assert!(
        why.contains("code -1") && why.contains("没有权限"),
        "Status.code != 1 with its message: {why}"
    );
    assert!(!archived(&store).await.contains_key(&posted));

    server.faults().clear();
    let before = server.request_counts();
    let result = sync(&store, &src, false).await;
    assert!(result.ok(), "{:?}", result.error);
    assert_eq!(result.conversations, 1, "only the chat that failed");
    assert!(archived(&store).await.contains_key(&posted));
    let after = server.request_counts();
    assert_eq!(
        after["/v1/conversation/list"] - before["/v1/conversation/list"],
        1
    );
    server.shutdown().await;
}

#[tokio::test]
async fn between_window_rereads_a_changed_chat_costs_one_contiguous_by_seq_request() {
    let (server, store, mut src) = start(&spec(), 200).await;
    if let PlatformConfig::Yunhu(cfg) = &mut src.platform {
        cfg.rescan_every_minutes = 60;
    }
    assert!(sync(&store, &src, false).await.ok());
    let (chat, me) = listed_chat_and_me(&server.world());
    let posted: Vec<String> = (0..3)
        .map(|i| {
            server
                .world()
                .post_text(&chat, &me, &format!("new {i}"))
                .unwrap()
        })
        .collect();
    let before = server.request_counts();
    let result = sync(&store, &src, false).await;
    assert!(result.ok(), "{:?}", result.error);
    assert_eq!(result.counts.messages_new, 3);
    let rows = archived(&store).await;
    assert!(posted.iter().all(|id| rows.contains_key(id)));
    let after = server.request_counts();
    let delta = |p: &str| after.get(p).copied().unwrap_or(0) - before.get(p).copied().unwrap_or(0);
    assert_eq!(delta("/v1/msg/list-message-by-seq"), 1, "{after:?}");
    assert_eq!(
        delta("/v1/msg/list-message"),
        0,
        "the window is not due: {after:?}"
    );
    assert_eq!(server.request_count() - before.values().sum::<u64>(), 2);
    server.shutdown().await;
}

// ---- what the real server does where the fake used to differ -----------------------------

async fn version_contents(store: &Store, msg_id: &str) -> Vec<serde_json::Value> {
    sqlx::query_scalar(
        "SELECT content FROM archive.message_versions WHERE message_id = $1 ORDER BY version",
    )
    .bind(msg_id)
    .fetch_all(store.pool())
    .await
    .unwrap()
}

/// A group, a member who is not the archiving user, and the archiving user.
fn group_and_people(w: &World) -> (String, String, String) {
    let chat = w
        .chats
        .iter()
        .find(|c| c.chat_type == GROUP && c.in_list && c.visible_from == 1)
        .unwrap();
    let other = chat.members.iter().find(|p| p.id != w.me.id).unwrap();
    (chat.chat_id.clone(), other.id.clone(), w.me.id.clone())
}

/// A text message that mentions someone, quotes a message and carries a row of buttons.
fn rich(text: &str, mentioned: &str) -> chatvault::connector::yunhu::pb::MsgContent {
    chatvault::connector::yunhu::pb::MsgContent {
        text: text.into(),
        buttons: r#"[[{"text":"打开","actionType":1,"url":"https://www.yhchat.com"}]]"#.into(),
        mentioned_id: vec![mentioned.into()],
        quote_msg_text: "王伟: 明天开会".into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_edit_of_a_message_with_a_mention_a_quote_and_buttons_is_one_new_version() {
    let (server, store, src) = start(&spec(), 200).await;
    let (chat, other, me) = group_and_people(&server.world());
    let (seen_before, seen_after) = {
        let mut w = server.world();
        let quoted = w.post_text(&chat, &other, "明天开会").unwrap();
        let before = w
            .post_content(&chat, &me, 1, rich("@林霞 三楼会议室", &other), &quoted)
            .unwrap();
        let after = w
            .post_content(&chat, &me, 1, rich("@林霞 五楼会议室", &other), &quoted)
            .unwrap();
        assert!(w.edit_text(&after, "@林霞 六楼会议室"));
        (before, after)
    };
    assert!(sync(&store, &src, false).await.ok());
    {
        let mut w = server.world();
        assert!(w.edit_text(&seen_before, "@林霞 四楼会议室"));
        w.post_text(&chat, &me, "makes the chat active").unwrap();
    }
    assert!(sync(&store, &src, false).await.ok());

    for (msg, texts) in [
        (&seen_before, ["@林霞 三楼会议室", "@林霞 四楼会议室"]),
        (&seen_after, ["@林霞 五楼会议室", "@林霞 六楼会议室"]),
    ] {
        assert_eq!(
            versions(&store, msg).await,
            texts,
            "no version that never existed"
        );
        let contents = version_contents(&store, msg).await;
        for c in &contents {
            // nothing of the earlier version is lost: mention, quote, array-shaped buttons
            assert_eq!(c["mentions"], serde_json::json!([other.clone()]), "{c}");
            assert_eq!(c["quote"]["text"], "王伟: 明天开会", "{c}");
            assert_eq!(c["buttons"][0][0]["text"], "打开", "{c}");
        }
        assert_eq!(contents[0]["quote"], contents[1]["quote"]);
    }
    // and the archive matches the world in every other respect
    let truth = server.world().truth();
    assert_matches_world(&store, &truth).await;
    server.shutdown().await;
}

/// An edit that also changed what its record leaves out (it added buttons: the record
/// carries only the old text, since the old message had none): the version the record
/// describes is still the archived one, not a version that never existed.
#[tokio::test]
async fn an_edit_record_is_the_archived_version_it_equals_on_what_it_carries() {
    let (server, store, src) = start(&spec(), 200).await;
    let (chat, other, me) = group_and_people(&server.world());
    let msg = server
        .world()
        .post_text(&chat, &other, "投票：周五团建去哪")
        .unwrap();
    assert!(sync(&store, &src, false).await.ok());
    {
        let mut w = server.world();
        let mut new = w.message(&msg).unwrap().1.content.clone();
        new.text = "投票：周六团建去哪".into();
        new.buttons =
            r#"[[{"text":"爬山","actionType":3},{"text":"看电影","actionType":3}]]"#.into();
        assert!(w.edit(&msg, new));
        w.post_text(&chat, &me, "makes the chat active").unwrap();
    }
    assert!(sync(&store, &src, false).await.ok());
    assert_eq!(
        versions(&store, &msg).await,
        ["投票：周五团建去哪", "投票：周六团建去哪"]
    );
    let contents = version_contents(&store, &msg).await;
    assert!(contents[0].get("buttons").is_none(), "{}", contents[0]);
    assert_eq!(contents[1]["buttons"][0][1]["text"], "看电影");
    server.shutdown().await;
}

#[tokio::test]
async fn edit_records_are_read_twenty_a_page_until_their_total() {
    let (server, store, src) = start(&spec(), 200).await;
    let (chat, _, me) = group_and_people(&server.world());
    let msg = {
        let mut w = server.world();
        let msg = w.post_text(&chat, &me, "v0").unwrap();
        for i in 1..=45 {
            assert!(w.edit_text(&msg, &format!("v{i}")));
        }
        msg
    };
    let want: Vec<String> = (0..=45).map(|i| format!("v{i}")).collect();
    let before = server.request_count_for("/v1/msg/list-message-edit-record");
    assert!(sync(&store, &src, false).await.ok());
    assert_eq!(versions(&store, &msg).await, want);
    // 20 + 20 + 5 rows; the total ends it without asking for an empty page
    let reads = server.request_count_for("/v1/msg/list-message-edit-record") - before;
    let other_edited = server
        .world()
        .truth()
        .iter()
        .flat_map(|c| c.messages.iter())
        .filter(|m| m.visible && m.edit_time > 0 && m.msg_id != msg)
        .count() as u64;
    assert_eq!(reads, other_edited + 3);

    // a server whose pages are shorter than asked: short pages do not end the record
    let (server, store, src) = start(&spec(), 200).await;
    server.world().edit_record_page_cap = 7;
    let msg = {
        let mut w = server.world();
        let msg = w.post_text(&chat, &me, "v0").unwrap();
        for i in 1..=45 {
            assert!(w.edit_text(&msg, &format!("v{i}")));
        }
        msg
    };
    assert!(sync(&store, &src, false).await.ok());
    assert_eq!(versions(&store, &msg).await, want);
    server.shutdown().await;
}

#[tokio::test]
async fn an_edit_record_past_its_bounds_is_quarantined_and_the_rest_archived() {
    use chatvault::connector::yunhu::MAX_EDIT_ROWS;
    let (server, store, src) = start(&spec(), 200).await;
    let (chat, _, me) = group_and_people(&server.world());
    let edits = MAX_EDIT_ROWS + 20;
    let msg = {
        let mut w = server.world();
        let msg = w.post_text(&chat, &me, "v0").unwrap();
        for i in 1..=edits {
            assert!(w.edit_text(&msg, &format!("v{i}")));
        }
        msg
    };
    let result = sync(&store, &src, false).await;
    assert!(result.ok(), "{:?}", result.error);
    let held = versions(&store, &msg).await;
    assert_eq!(
        held.len(),
        MAX_EDIT_ROWS + 1,
        "the rows read, and the current text"
    );
    assert_eq!(held.last().unwrap(), &format!("v{edits}"));
    let reasons: Vec<String> = sqlx::query_scalar("SELECT reason FROM archive.quarantine")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].contains(&msg)
            && reasons[0].contains(&format!("more than {MAX_EDIT_ROWS} rows")),
        "{reasons:?}"
    );
    // everything else is archived as the world has it
    let visible: usize = server
        .world()
        .truth()
        .iter()
        .map(|c| c.messages.iter().filter(|m| m.visible).count())
        .sum();
    assert_eq!(
        count(&store, "SELECT count(*) FROM archive.messages").await as usize,
        visible
    );

    // a server that ignores `page` (every page repeats the first): the reading stops on
    // the first page that adds nothing
    let (server, store, src) = start(&spec(), 200).await;
    server.world().edit_record_ignores_page = true;
    let msg = {
        let mut w = server.world();
        let msg = w.post_text(&chat, &me, "v0").unwrap();
        for i in 1..=25 {
            assert!(w.edit_text(&msg, &format!("v{i}")));
        }
        msg
    };
    let before = server.request_count_for("/v1/msg/list-message-edit-record");
    assert!(sync(&store, &src, false).await.ok());
    assert_eq!(versions(&store, &msg).await.len(), 21);
    let reasons: Vec<String> = sqlx::query_scalar("SELECT reason FROM archive.quarantine")
        .fetch_all(store.pool())
        .await
        .unwrap();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains(&msg) && r.contains("repeats rows")),
        "{reasons:?}"
    );
    let reads = server.request_count_for("/v1/msg/list-message-edit-record") - before;
    assert!(reads < 60, "{reads} edit-record requests");
    server.shutdown().await;
}

/// `list-message-by-seq` read every way the community's sources read it: the documentation
/// (the messages after the seq; far behind, only the newest), far behind answering nothing,
/// and one client's reading (the messages before the seq). Whatever it answers, a chat the
/// conversation list says has newer messages is read until it has them.
#[tokio::test]
async fn an_empty_or_older_by_seq_answer_is_not_taken_for_caught_up() {
    use chatvault::sim::yunhu::BySeq;
    for reading in [BySeq::Newer, BySeq::NewerOrNothing, BySeq::Older] {
        let (server, store, mut src) = start(&spec(), 200).await;
        server.world().by_seq = reading;
        if let PlatformConfig::Yunhu(cfg) = &mut src.platform {
            cfg.rescan_every_minutes = 60;
        }
        assert!(sync(&store, &src, false).await.ok());
        let (near, far, me) = {
            let w = server.world();
            let t = w.truth();
            let listed: Vec<_> = t.iter().filter(|c| c.in_list).collect();
            (
                listed[0].chat_id.clone(),
                listed[1].chat_id.clone(),
                w.me.id.clone(),
            )
        };
        {
            let mut w = server.world();
            for i in 0..5 {
                w.post_text(&near, &me, &format!("near {i}")).unwrap();
            }
            for i in 0..45 {
                w.post_text(&far, &me, &format!("far {i}")).unwrap();
            }
        }
        let before = server.request_counts();
        let result = sync(&store, &src, false).await;
        assert!(result.ok(), "{reading:?}: {:?}", result.error);
        assert_eq!(result.counts.messages_new, 50, "{reading:?}");
        let truth = server.world().truth();
        assert_matches_world(&store, &truth).await;
        let after = server.request_counts();
        let delta =
            |p: &str| after.get(p).copied().unwrap_or(0) - before.get(p).copied().unwrap_or(0);
        assert_eq!(delta("/v1/msg/list-message-by-seq"), 2, "{reading:?}");
        // where by-seq answered contiguously up to the newest, nothing else was read
        let paged = match reading {
            BySeq::Newer | BySeq::NewerOrNothing => 2,
            BySeq::Older => 1 + 2,
        };
        assert_eq!(
            delta("/v1/msg/list-message"),
            paged,
            "{reading:?}: {after:?}"
        );
        server.shutdown().await;
    }
}

/// One chat of `messages` text messages, nothing edited, hidden or late: its requests are
/// the conversation list, the address book, then `list-message` pages in order.
fn one_chat(messages: usize) -> WorldSpec {
    WorldSpec {
        seed: 5,
        users: 3,
        groups: 1,
        bots: 0,
        direct_chats: 0,
        messages,
        unlisted_chats: 0,
        late_joined_groups: 0,
        hidden_per_mille: 0,
        edited_per_mille: 0,
        recalled_per_mille: 0,
        ..WorldSpec::default()
    }
}

/// A first sync that reads one fetch (ten pages of 30) of the only chat and then fails:
/// its cursor holds a pass anchored 300 messages below the newest.
async fn first_fetch_only(
    server: &SimServer,
    store: &Store,
    src: &SourceConfig,
) -> (String, Vec<String>) {
    server.fail_request(
        3 + 10 + 1,
        chatvault::sim::serve::RequestFailure::BadGateway,
    );
    let options = SyncOptions {
        max_retries: 0,
        ..options(false)
    };
    let result = sync_source(store, src, &options, None).await;
    assert_eq!(result.status, RunStatus::Failed, "{:?}", result.error);
    let cursor: serde_json::Value =
        sqlx::query_scalar("SELECT value FROM vault.cursors WHERE key LIKE 'messages/%'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    let pass = &cursor["pass"];
    let anchor = pass["anchor_id"].as_str().unwrap().to_string();
    let next = pass["anchor_next"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    (anchor, next)
}

/// Every message the world shows is archived, and the ones that disappeared after being
/// archived are kept.
async fn assert_visible_archived(store: &Store, server: &SimServer, gone: &[String]) {
    let rows = archived(store).await;
    let truth = server.world().truth();
    let mut want = 0;
    for m in truth.iter().flat_map(|c| c.messages.iter()) {
        if m.visible {
            want += 1;
            assert!(
                rows.contains_key(&m.msg_id),
                "seq {} is not archived",
                m.seq
            );
        }
    }
    for id in gone {
        assert!(
            rows.contains_key(id),
            "{id} was archived before it disappeared"
        );
    }
    assert_eq!(rows.len(), want + gone.len());
}

#[tokio::test]
async fn a_pass_whose_anchor_disappeared_re_anchors_and_reads_on() {
    // deleted for this account: the next-oldest archived message confirms there is more
    let (server, store, src) = start(&one_chat(700), 200).await;
    let (anchor, _) = first_fetch_only(&server, &store, &src).await;
    assert!(server.world().hide(&anchor));
    let result = sync(&store, &src, false).await;
    assert!(result.ok(), "{:?}", result.error);
    assert_visible_archived(&store, &server, std::slice::from_ref(&anchor)).await;
    let before_history = count(
        &store,
        "SELECT count(*) FROM vault.seq_gaps WHERE reason LIKE 'before the oldest%'",
    )
    .await;
    assert_eq!(before_history, 0, "the history starts at seq 1");

    // auto-deleted with the messages above it: every confirmation anchor is gone, and the
    // chat is read again from the newest message down
    let (server, store, src) = start(&one_chat(700), 200).await;
    let (anchor, next) = first_fetch_only(&server, &store, &src).await;
    assert_eq!(next.len(), 3);
    let mut gone = vec![anchor];
    gone.extend(next);
    for id in &gone {
        assert!(server.world().hide(id));
    }
    let result = sync(&store, &src, false).await;
    assert!(result.ok(), "{:?}", result.error);
    assert_visible_archived(&store, &server, &gone).await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_history_that_really_ends_below_a_vanished_anchor_is_complete_with_its_gap() {
    // a group's auto-delete took the anchor and everything older
    let (server, store, src) = start(&one_chat(700), 200).await;
    let (anchor, _) = first_fetch_only(&server, &store, &src).await;
    let (chat, anchor_seq) = {
        let w = server.world();
        let (chat, msg) = w.message(&anchor).unwrap();
        (chat.chat_id.clone(), msg.seq)
    };
    let deleted = server.world().auto_delete_up_to(&chat, anchor_seq);
    assert_eq!(deleted as i64, anchor_seq);
    let result = sync(&store, &src, false).await;
    assert!(result.ok(), "{:?}", result.error);
    assert_visible_archived(&store, &server, std::slice::from_ref(&anchor)).await;
    let gaps: Vec<(i64, i64, String)> =
        sqlx::query_as("SELECT from_seq, to_seq, reason FROM vault.seq_gaps")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!((gaps[0].0, gaps[0].1), (1, anchor_seq - 1));
    assert!(gaps[0].2.starts_with("before the oldest"), "{gaps:?}");
    // recorded as complete: the next run with nothing new reads nothing
    let before = server.request_count();
    assert!(sync(&store, &src, false).await.ok());
    assert_eq!(server.request_count() - before, 1);
    server.shutdown().await;
}

/// A push names a chat whose older message was edited and another recalled; the targeted
/// run that answers it reads the edit records and the recall although the rescan window
/// (hourly by default) is not due.
#[tokio::test]
async fn a_targeted_run_after_an_edit_or_recall_push_archives_them_with_the_window_not_due() {
    let server = SimServer::start(World::generate(&spec())).await;
    let mut src = source(&server, &spec().token, 200);
    if let PlatformConfig::Yunhu(y) = &mut src.platform {
        y.rescan_every_minutes = 60;
        y.rescan_days = 7;
    }
    let store = store().await;
    let (chat, me, edited, recalled) = {
        let mut w = server.world();
        let (chat, me) = listed_chat_and_me(&w);
        let edited = w.post_text(&chat, &me, "v1").unwrap();
        let recalled = w.post_text(&chat, &me, "to be recalled").unwrap();
        // far below the newest page
        for i in 0..120 {
            w.post_text(&chat, &me, &format!("later {i}")).unwrap();
        }
        (chat, me, edited, recalled)
    };
    assert!(sync(&store, &src, false).await.ok());
    assert!(
        sync(&store, &src, false).await.ok(),
        "the window was read now"
    );
    {
        let mut w = server.world();
        assert!(w.edit_text(&edited, "v2"));
        assert!(w.recall(&recalled));
    }
    // what the push named reaches a run that only catches up when the run is told
    let only = SyncOptions {
        only: Some(vec![chat.clone()]),
        ..options(false)
    };
    assert!(sync_source(&store, &src, &only, None).await.ok());
    assert_eq!(
        versions(&store, &edited).await,
        ["v1"],
        "the window is not due"
    );
    let targeted = SyncOptions {
        changed: [(chat.clone(), vec![edited.clone(), recalled.clone()])].into(),
        ..only.clone()
    };
    let result = sync_source(&store, &src, &targeted, None).await;
    assert!(result.ok(), "{:?}", result.error);
    assert_eq!(versions(&store, &edited).await, ["v1", "v2"]);
    assert!(archived(&store).await[&recalled].recalled);
    // the next run is a plain catch-up again: one by-seq request
    let before = server.request_count();
    assert!(sync_source(&store, &src, &only, None).await.ok());
    assert!(
        server.request_count() - before <= 2,
        "{}",
        server.request_count() - before
    );
    let _ = me;
    server.shutdown().await;
}
