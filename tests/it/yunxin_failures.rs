//! NetEase Yunxin when the upstream fails or misbehaves: a failed request at any moment of
//! a sync, quick-comment queries that fail, messages sent with no-sense flags, page tokens
//! that go round in circles. The fake server over real HTTP, a real PostgreSQL.

use crate::common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::Connection;

use chatvault::config::{PlatformConfig, Secret, SourceConfig, YunxinConfig};
use chatvault::model::SourceName;
use chatvault::sim::serve::RequestFailure;
use chatvault::sim::yunxin::{
    now_ms, Activity, SimServer, TokenLoop, World, WorldSpec, HISTORY_PATH, QUICK_COMMENT_PATH,
};
use chatvault::store::Store;
use chatvault::sync::{sync_source, SourceResult, SyncOptions};

const TIMEOUT: Duration = Duration::from_millis(300);
const STALL: Duration = Duration::from_millis(700);

fn small_spec(seed: u64) -> WorldSpec {
    WorldSpec {
        seed,
        accounts: 2,
        users: 4,
        teams: 1,
        super_teams: 1,
        direct_chats: 1,
        messages: 260,
        end_ms: now_ms() - 3_600_000,
        days: 3,
        same_ms_run: 120,
        ..WorldSpec::default()
    }
}

fn world(spec: &WorldSpec) -> World {
    let mut w = World::generate(spec);
    w.behaviour.rate_limit = None;
    w.behaviour.clock_lag_ms = 20_000;
    w
}

fn source(server: &SimServer, rescan_days: u32) -> SourceConfig {
    let w = server.world();
    SourceConfig {
        name: SourceName::new("yx"),
        schedule: "0 */5 * * * *".into(),
        requests_per_second: 0.0,
        request_timeout: TIMEOUT,
        enabled: true,
        push: true,
        platform: PlatformConfig::Yunxin(YunxinConfig {
            base_url: server.base_url(),
            app_key: w.app_key.clone(),
            app_secret: Secret::new(w.app_secret.clone()),
            accounts: w.accounts.clone(),
            history_start: None,
            rescan_days,
        }),
    }
}

fn options() -> SyncOptions {
    SyncOptions {
        backoff_base: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        ..SyncOptions::default()
    }
}

async fn sync(store: &Store, src: &SourceConfig) -> SourceResult {
    let r = sync_source(store, src, &options(), None).await;
    assert!(!r.skipped);
    r
}

/// A database that can be copied: each copy starts from what it holds.
struct Template {
    options: PgConnectOptions,
    name: String,
}

static COPIES: AtomicU64 = AtomicU64::new(0);

impl Template {
    /// A migrated, empty database.
    async fn empty() -> Template {
        let (options, name) = chatvault::pg::testing::fresh_database().await;
        let t = Template { options, name };
        let store = t.open(&t.name).await;
        store.migrate().await.expect("migrations apply");
        store.pool().close().await;
        t
    }

    async fn open(&self, name: &str) -> Store {
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .connect_with(self.options.clone().database(name))
            .await
            .expect("connect to the test database");
        Store::from_pool(pool)
    }

    /// A new database holding what this one holds (no connection may be open to it).
    async fn copy(&self) -> (Store, Template) {
        let name = format!("{}_c{}", self.name, COPIES.fetch_add(1, Ordering::Relaxed));
        let mut admin =
            sqlx::PgConnection::connect_with(&self.options.clone().database("postgres"))
                .await
                .expect("connect to the test cluster");
        // a connection closed by the client can linger a moment on the server, and a
        // database being used cannot be a template (SQLSTATE 55006): try again shortly
        // A template must have no connection open to it. Every pool on it was closed, but
        // a closed connection can linger on the server: end any that is left.
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .execute(&mut admin)
        .await
        .expect("end the connections left on the template");
        let sql = format!("CREATE DATABASE {name} TEMPLATE {}", self.name);
        let mut tries = 0;
        while let Err(e) = sqlx::query(&sql).execute(&mut admin).await {
            let busy = e
                .as_database_error()
                .is_some_and(|d| d.code().as_deref() == Some("55006"));
            tries += 1;
            assert!(busy && tries < 100, "copy the test database: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = admin.close().await;
        let t = Template {
            options: self.options.clone(),
            name: name.clone(),
        };
        (t.open(&name).await, t)
    }
}

fn mode(k: u64) -> RequestFailure {
    match k % 3 {
        0 => RequestFailure::BadGateway,
        1 => RequestFailure::Dropped,
        _ => RequestFailure::Stalled(STALL),
    }
}

/// For every k up to the requests of the clean sync from `base`: a copy of `base`, the k-th
/// request failed once, a sync (and one more if it did not end ok); the archive must equal
/// the clean one.
async fn every_failure_ends_in(server: &SimServer, src: &SourceConfig, base: &Template) {
    let (clean, _) = base.copy().await;
    let before = server.request_count();
    let r = sync(&clean, src).await;
    assert!(r.ok(), "{:?}", r.error);
    let n = server.request_count() - before;
    let want = common::archive_snapshot(&clean).await;
    clean.pool().close().await;
    assert!(n >= 20, "a sync of several requests: {n}");
    assert!(want.iter().any(|l| l.starts_with("reaction ")));
    let started = Instant::now();
    let mut second_runs = 0;
    for k in 1..=n {
        let (store, _) = base.copy().await;
        server.fail_request(k, mode(k));
        let r = sync(&store, src).await;
        assert!(!server.failure_pending(), "request {k} of {n} was made");
        if !r.ok() {
            second_runs += 1;
            let again = sync(&store, src).await;
            assert!(again.ok(), "k={k}: {:?} then {:?}", r.error, again.error);
        }
        let got = common::archive_snapshot(&store).await;
        let diff = common::snapshot_diff(&want, &got);
        assert!(
            diff.is_empty(),
            "k={k} ({:?}) of {n}: the archive differs from the clean one:\n{}",
            mode(k),
            diff.join("\n")
        );
        store.pool().close().await;
    }
    eprintln!(
        "{n} requests, each failed once: equal archives ({second_runs} needed a second run) in {:.1?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn any_single_failed_request_of_a_first_sync_leaves_the_clean_archive() {
    let server = SimServer::start(world(&small_spec(21))).await;
    let src = source(&server, 7);
    let base = Template::empty().await;
    every_failure_ends_in(&server, &src, &base).await;
    server.shutdown().await;
}

#[tokio::test]
async fn any_single_failed_request_of_an_incremental_sync_leaves_the_clean_archive() {
    let server = SimServer::start(world(&small_spec(22))).await;
    let src = source(&server, 7);
    // the archive after a first sync is the base of every try
    let empty = Template::empty().await;
    let (first, base) = empty.copy().await;
    assert!(sync(&first, &src).await.ok());
    first.pool().close().await;
    // the world changes: new messages, edits, recalls both ways, deletions, quick comments
    // added and removed, messages sent with no-sense flags, a conversation update
    let kinds: BTreeSet<&str> = {
        let mut w = server.world();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut done = w.random_activity(&mut rng, 80);
        // and a comment the first sync archived is taken back
        let (id, op, index) = w
            .messages
            .iter()
            .filter(|m| m.removed.is_none())
            .find_map(|m| {
                m.comments
                    .first()
                    .map(|c| (m.server_id, c.operator_id.clone(), c.index))
            })
            .expect("a commented message");
        assert!(w.remove_comment(id, &op, index));
        done.push(Activity::CommentRemoved {
            server_id: id,
            operator: op,
            index,
        });
        done.iter()
            .map(|a| match a {
                Activity::Message { .. } => "message",
                Activity::NoSenseMessage { .. } => "no-sense message",
                Activity::Edit { .. } => "edit",
                Activity::OneWayRecall { .. } => "one-way recall",
                Activity::TwoWayRecall { .. } => "two-way recall",
                Activity::Delete { .. } => "delete",
                Activity::CommentAdded { .. } => "comment added",
                Activity::CommentRemoved { .. } => "comment removed",
                Activity::ConversationChanged { .. } => "conversation changed",
            })
            .collect()
    };
    for kind in [
        "message",
        "no-sense message",
        "edit",
        "one-way recall",
        "two-way recall",
        "comment added",
        "comment removed",
    ] {
        assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
    }
    every_failure_ends_in(&server, &src, &base).await;
    server.shutdown().await;
}

// ---- quick comments -------------------------------------------------------------------

/// Standing quick comments upstream, as `(conversation, message, operator, index)`.
fn expected_comments(server: &SimServer) -> BTreeSet<(String, String, String, String)> {
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

async fn archived_ids(store: &Store) -> BTreeSet<(String, String)> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT conversation_id, message_id FROM archive.messages WHERE source = 'yx'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    rows.into_iter().collect()
}

fn visible_ids(server: &SimServer) -> BTreeSet<(String, String)> {
    server
        .truth()
        .iter()
        .flat_map(|c| {
            c.messages
                .iter()
                .filter(|m| m.removed.is_none())
                .map(move |m| (c.conversation_id.clone(), m.message_id.clone()))
        })
        .collect()
}

/// Conversations whose cursor still holds quick-comment windows to read.
async fn pending_windows(store: &Store) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM vault.cursors
         WHERE source = 'yx' AND key LIKE 'messages/%'
           AND jsonb_array_length(coalesce(value->'pending', '[]')) > 0",
    )
    .fetch_one(store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn a_failing_quick_comment_query_never_holds_back_messages() {
    // an error code, an HTTP error, an answer without success_list
    type Arm = fn(&SimServer);
    let cases: [(&str, Arm); 3] = [
        ("code 414", |s| {
            s.faults().code(Some(QUICK_COMMENT_PATH), 10_000, 414)
        }),
        ("HTTP 503", |s| {
            s.faults().http(Some(QUICK_COMMENT_PATH), 10_000, 503)
        }),
        ("no success_list", |s| s.faults().no_success_list(10_000)),
    ];
    for (what, arm) in cases {
        // 20 days of history: most comments are older than the rescan window, so only the
        // pending windows can bring them
        let spec = WorldSpec {
            days: 20,
            ..small_spec(23)
        };
        let server = SimServer::start(world(&spec)).await;
        let src = source(&server, 7);
        let (store, _) = common::store().await;
        arm(&server);
        let r = sync(&store, &src).await;
        assert!(r.ok(), "{what}: {:?}", r.error);
        assert_eq!(archived_ids(&store).await, visible_ids(&server), "{what}");
        assert!(open_reactions(&store).await.is_empty(), "{what}");
        assert!(pending_windows(&store).await > 0, "{what}");
        // still failing: the messages stay, nothing is lost, the windows stay pending
        let r = sync(&store, &src).await;
        assert!(r.ok(), "{what}: {:?}", r.error);
        assert!(pending_windows(&store).await > 0, "{what}");
        // upstream answers again: the next run reads the comments
        server.faults().clear();
        let r = sync(&store, &src).await;
        assert!(r.ok(), "{what}: {:?}", r.error);
        let want = expected_comments(&server);
        assert!(want.len() > 10, "{}", want.len());
        assert_eq!(open_reactions(&store).await, want, "{what}");
        assert_eq!(pending_windows(&store).await, 0, "{what}");
        assert_eq!(archived_ids(&store).await, visible_ids(&server), "{what}");
        server.shutdown().await;
    }
}

#[tokio::test]
async fn a_quick_comment_query_failing_once_is_asked_again_in_the_same_run() {
    let server = SimServer::start(world(&small_spec(24))).await;
    let src = source(&server, 7);
    let (store, _) = common::store().await;
    // each of the first queries fails once in transport: the page is read again
    server.faults().http(Some(QUICK_COMMENT_PATH), 1, 502);
    server.faults().code(Some(QUICK_COMMENT_PATH), 1, 503);
    let r = sync(&store, &src).await;
    assert!(r.ok(), "{:?}", r.error);
    assert_eq!(server.faults().pending(), 0);
    assert_eq!(open_reactions(&store).await, expected_comments(&server));
    assert_eq!(pending_windows(&store).await, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn messages_without_a_client_id_cannot_fail_the_query_for_the_others() {
    let server = SimServer::start(world(&small_spec(25))).await;
    let src = source(&server, 7);
    let (store, _) = common::store().await;
    let conv = server.truth()[0].conversation_id.clone();
    let (bare, plain) = {
        let mut w = server.world();
        let bare: Vec<i64> = (0..3)
            .map(|i| {
                w.post_without_client_id(&conv, "acc00", &format!("server notice {i}"))
                    .unwrap()
            })
            .collect();
        let plain = w.post_text(&conv, "acc00", "an ordinary message").unwrap();
        for id in bare.iter().chain([&plain]) {
            assert!(w.add_comment(*id, "acc00", 3));
        }
        (bare, plain)
    };
    let r = sync(&store, &src).await;
    assert!(r.ok(), "{:?}", r.error);
    let reactions = open_reactions(&store).await;
    let has = |id: i64| {
        reactions
            .iter()
            .any(|(c, m, _, _)| *c == conv && *m == id.to_string())
    };
    // the strict server refuses the query holding them; the others' comments all arrive
    assert!(has(plain));
    assert!(bare.iter().all(|id| !has(*id)));
    let mut want = expected_comments(&server);
    // (in every conversation showing them)
    want.retain(|(_, m, _, _)| !bare.iter().any(|b| b.to_string() == *m));
    assert_eq!(reactions, want);
    assert_eq!(archived_ids(&store).await, visible_ids(&server));
    // they are archived, with why their comments are unknown, and not asked for forever
    let raw: serde_json::Value = sqlx::query_scalar(
        "SELECT raw FROM vault.messages WHERE source = 'yx' AND conversation_id = $1 AND message_id = $2",
    )
    .bind(&conv)
    .bind(bare[0].to_string())
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert!(
        raw["quick_comments_refused"]
            .as_str()
            .is_some_and(|s| s.contains("message_client_id")),
        "{raw}"
    );
    assert_eq!(pending_windows(&store).await, 0);
    // a server that answers for them (the reference leaves it open) gives their comments
    server.world().behaviour.quick_comment_needs_client_id = false;
    assert!(sync(&store, &src).await.ok());
    assert_eq!(open_reactions(&store).await, expected_comments(&server));
    server.shutdown().await;
}

// ---- no-sense messages ----------------------------------------------------------------

async fn recalled(store: &Store, conv: &str, id: i64) -> bool {
    sqlx::query_scalar(
        "SELECT recalled_at IS NOT NULL FROM archive.messages
         WHERE source = 'yx' AND conversation_id = $1 AND message_id = $2",
    )
    .bind(conv)
    .bind(id.to_string())
    .fetch_one(store.pool())
    .await
    .unwrap_or_else(|e| panic!("message {id} of {conv} is archived: {e}"))
}

#[tokio::test]
async fn messages_sent_no_sense_are_not_recalls_but_one_way_recalls_are() {
    let server = SimServer::start(world(&small_spec(26))).await;
    let src = source(&server, 7);
    let (store, _) = common::store().await;
    let truth = server.truth();
    let team = truth
        .iter()
        .find(|c| c.conversation_id.starts_with("acc00|2|"))
        .unwrap()
        .conversation_id
        .clone();
    let direct = truth
        .iter()
        .find(|c| c.conversation_id.starts_with("acc00|1|"))
        .unwrap()
        .conversation_id
        .clone();
    let peer = direct.rsplit('|').next().unwrap().to_string();
    // sent with no-sense flags before the archive ever saw them
    let (to_nobody, unseen_by_sender) = {
        let mut w = server.world();
        (
            w.post_no_sense(&team, "acc01", "for the record only", false, true)
                .unwrap(),
            w.post_no_sense(&direct, "acc00", "not in my own history", true, false)
                .unwrap(),
        )
    };
    assert!(sync(&store, &src).await.ok());
    // later: more no-sense sends, and a one-way recall of a message seen before
    let (later, seen, seen_by_peer) = {
        let mut w = server.world();
        let later = w
            .post_no_sense(&team, "acc01", "another silent one", false, true)
            .unwrap();
        let seen = w
            .post_text(&team, "acc01", "said, then taken back")
            .unwrap();
        let seen_by_peer = w.post_text(&direct, &peer, "hello").unwrap();
        (later, seen, seen_by_peer)
    };
    assert!(sync(&store, &src).await.ok());
    {
        let mut w = server.world();
        assert!(w.recall_one_way(seen));
        assert!(w.recall_one_way(seen_by_peer));
    }
    for run in 0..3 {
        let r = sync(&store, &src).await;
        assert!(r.ok(), "{:?}", r.error);
        // acc00's side: the receiver of the team messages, the sender of the direct one
        assert!(!recalled(&store, &team, to_nobody).await, "run {run}");
        assert!(!recalled(&store, &team, later).await, "run {run}");
        assert!(
            !recalled(&store, &direct, unseen_by_sender).await,
            "run {run}"
        );
        assert!(recalled(&store, &team, seen).await, "run {run}");
        assert!(recalled(&store, &direct, seen_by_peer).await, "run {run}");
    }
    // acc01 sent the team messages: they stay visible to it, nothing to mark
    let team01 = team.replacen("acc00|", "acc01|", 1);
    assert!(!recalled(&store, &team01, to_nobody).await);
    let recalls: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM archive.events WHERE source = 'yx' AND kind = 'message_recalled'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    // `seen` in acc00's team conversation and `seen_by_peer` in acc00's direct one; the
    // other members' conversations of `seen` too (the recall hides it from all but acc01)
    let others = server
        .truth()
        .iter()
        .filter(|c| {
            c.conversation_id
                .ends_with(team.rsplit('|').next().unwrap())
        })
        .filter(|c| !c.conversation_id.starts_with("acc01|"))
        .count() as i64;
    assert_eq!(recalls, others + 1, "each recall marked once");
    server.shutdown().await;
}

// ---- reads that go round in circles ---------------------------------------------------

#[tokio::test]
async fn page_tokens_that_cycle_or_never_end_stop_with_a_clear_error() {
    for (how, expect) in [
        (TokenLoop::Cycle, "already used in this read"),
        (TokenLoop::FreshEmpty, "brought no new message"),
    ] {
        let server = SimServer::start(world(&small_spec(27))).await;
        let src = source(&server, 7);
        let (store, _) = common::store().await;
        let looping = server.truth()[1].conversation_id.clone();
        server.world().behaviour.history_token_loop = Some((looping.clone(), how.clone()));
        let started = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(60), sync(&store, &src))
            .await
            .expect("the run ends");
        assert!(!r.ok());
        assert_eq!(
            r.failed_conversations.len(),
            1,
            "{how:?}: {:?}",
            r.failed_conversations
        );
        let (conv, error) = &r.failed_conversations[0];
        assert_eq!(*conv, looping);
        assert!(error.contains(expect), "{how:?}: {error}");
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(server.request_count_for(HISTORY_PATH) < 200);
        // the others are complete
        let archived = archived_ids(&store).await;
        for id in visible_ids(&server) {
            assert!(id.0 == looping || archived.contains(&id), "{id:?}");
        }
        // and the next run says the same, without hanging either
        let r = tokio::time::timeout(Duration::from_secs(60), sync(&store, &src))
            .await
            .expect("the run ends");
        assert_eq!(r.failed_conversations.len(), 1);
        assert!(r.failed_conversations[0].1.contains(expect));
        server.shutdown().await;
    }
    // a conversation list that cycles stops the run with a clear error
    let server = SimServer::start(world(&small_spec(27))).await;
    let src = source(&server, 7);
    let (store, _) = common::store().await;
    server.world().behaviour.list_token_cycle = true;
    let r = tokio::time::timeout(Duration::from_secs(60), sync(&store, &src))
        .await
        .expect("the run ends");
    assert!(!r.ok());
    let error = r.error.unwrap_or_default();
    assert!(error.contains("already used"), "{error}");
    server.shutdown().await;
}
