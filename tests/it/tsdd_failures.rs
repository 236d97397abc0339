//! TangSengDaoDao when things go wrong: a request failing at any moment of a sync, a
//! message the server panics on, 400s that are the server's own failure, messages deleted
//! for this account, and logins (each one posts a message to the user's phone). The fake
//! behaves as the real server does (docs/upstreams/tangsengdaodao.md); everything runs over
//! real HTTP into a real PostgreSQL.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use chatvault::config::{PlatformConfig, Secret, SourceConfig, TsddAuth, TsddConfig};
use chatvault::metrics::Metrics;
use chatvault::model::SourceName;
use chatvault::scheduler::{Scheduler, SchedulerOptions};
use chatvault::sim::serve::RequestFailure;
use chatvault::sim::tangsengdaodao::{ChannelKey, SimServer, World, WorldSpec, TSDD_SYSTEM_UID};
use chatvault::store::{RunStatus, Store};
use chatvault::sync::{sync_source, SourceResult, SyncOptions};
use serde_json::{json, Value};
use tokio::sync::watch;

const CHANNEL_SYNC: &str = "/v1/message/channel/sync";
const CONVERSATION_SYNC: &str = "/v1/conversation/sync";
const LOGIN: &str = "/v1/user/login";
const WELCOME: &str = "欢迎使用";

fn spec(messages: usize) -> WorldSpec {
    WorldSpec {
        seed: 23,
        users: 6,
        groups: 2,
        direct_chats: 2,
        messages,
        cleared_channels: 1,
        ..WorldSpec::default()
    }
}

/// A session directory of this test's own (the daemon uses `<data_dir>/sessions`).
fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "chatvault-tsdd-failures-{what}-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn source(server: &SimServer, timeout: Duration, page_size: u32) -> SourceConfig {
    let spec = spec(0);
    SourceConfig {
        name: SourceName::new("s"),
        schedule: "0 */5 * * * *".into(),
        requests_per_second: 0.0,
        request_timeout: timeout,
        enabled: true,
        push: true,
        platform: PlatformConfig::Tangsengdaodao(TsddConfig {
            base_url: server.base_url(),
            auth: TsddAuth::Password {
                username: spec.me_username,
                password: Secret::new(spec.me_password),
            },
            device_flag: 1,
            page_size,
        }),
    }
}

fn options(session_dir: &std::path::Path) -> SyncOptions {
    SyncOptions {
        backoff_base: Duration::from_millis(2),
        max_backoff: Duration::from_millis(20),
        session_dir: Some(session_dir.to_path_buf()),
        ..SyncOptions::default()
    }
}

struct Setup {
    server: SimServer,
    src: SourceConfig,
    options: SyncOptions,
    _dir: TempDir,
}

/// Removes the session directory at the end of a test.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn setup(world: World, timeout: Duration, page_size: u32) -> Setup {
    let server = SimServer::start(world).await;
    let dir = temp_dir("session");
    let src = source(&server, timeout, page_size);
    let options = options(&dir);
    Setup {
        server,
        src,
        options,
        _dir: TempDir(dir),
    }
}

impl Setup {
    async fn sync(&self, store: &Store) -> SourceResult {
        sync_source(store, &self.src, &self.options, None).await
    }

    async fn sync_full(&self, store: &Store) -> SourceResult {
        let options = SyncOptions {
            full: true,
            ..self.options.clone()
        };
        sync_source(store, &self.src, &options, None).await
    }

    /// Log in once into a throwaway archive, so that later runs reuse the kept session and
    /// the login's welcome message is already part of the world.
    async fn prime(&self) {
        let (store, _) = common::store().await;
        let r = self.sync(&store).await;
        assert!(r.ok(), "{:?}", r.error);
    }
}

fn failure(k: u64) -> RequestFailure {
    match k % 3 {
        0 => RequestFailure::BadGateway,
        1 => RequestFailure::Dropped,
        _ => RequestFailure::Stalled(Duration::from_millis(450)),
    }
}

/// Sync with the `k`-th request failing once; if that run did not end ok, sync once more.
async fn sync_failing_at(s: &Setup, store: &Store, k: u64) -> (SourceResult, Option<SourceResult>) {
    s.server.fail_request(k, failure(k));
    let first = s.sync(store).await;
    assert!(
        !s.server.failure_pending(),
        "request {k} was never made (the run made fewer requests than the clean one)"
    );
    if first.ok() {
        return (first, None);
    }
    let second = s.sync(store).await;
    (first, Some(second))
}

fn assert_same(want: &[String], got: &[String], what: &str) {
    let diff = common::snapshot_diff(want, got);
    assert!(
        diff.is_empty(),
        "{what}: the archive differs from the clean run's:\n{}",
        diff.join("\n")
    );
}

/// The first sync of a small world, with the k-th of its requests failing once (502,
/// dropped mid-body, stalled past the timeout), for every k: the run, or the next one, ends
/// with the archive a clean run makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_failing_at_any_moment_of_a_first_sync_changes_nothing() {
    let s = setup(World::generate(&spec(260)), Duration::from_millis(300), 40).await;
    s.prime().await;
    let (clean, _) = common::store().await;
    let before = s.server.request_count();
    let r = s.sync(&clean).await;
    assert!(r.ok(), "{:?}", r.error);
    let n = s.server.request_count() - before;
    let want = common::archive_snapshot(&clean).await;
    assert!(n >= 20, "a first sync of this world makes {n} requests");
    eprintln!("first sync: {n} requests, {} archive lines", want.len());
    assert!(
        want.iter().any(|l| l.starts_with("gap ")),
        "the world has hidden history"
    );

    for k in 1..=n {
        let (store, _) = common::store().await;
        let (first, second) = sync_failing_at(&s, &store, k).await;
        let last = second.as_ref().unwrap_or(&first);
        assert!(last.ok(), "k={k} ({:?}): {:?}", failure(k), last.error);
        let got = common::archive_snapshot(&store).await;
        assert_same(
            &want,
            &got,
            &format!("first sync, request {k} failing ({:?})", failure(k)),
        );
    }
    assert_eq!(s.server.world().login_count(), 1, "one login for all of it");
}

/// The same for an incremental sync after the world changed: new messages, edits, a recall,
/// a deletion for everyone and one for this account only, reactions added and taken back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_failing_at_any_moment_of_an_incremental_sync_changes_nothing() {
    let s = setup(World::generate(&spec(200)), Duration::from_millis(300), 40).await;
    s.prime().await;
    let before_activity = s.server.world().clone();
    {
        let mut w = s.server.world();
        let me = w.me().uid.clone();
        let truth = w.truth();
        let live: Vec<(String, u8, u64, String)> = truth
            .iter()
            .filter(|c| c.is_member && c.channel_id != TSDD_SYSTEM_UID)
            .flat_map(|c| {
                c.messages
                    .iter()
                    .filter(|m| m.visible && !m.revoked && !m.is_deleted && m.payload["type"] == 1)
                    .map(move |m| {
                        (
                            c.channel_id.clone(),
                            c.channel_type,
                            m.message_id.parse::<u64>().unwrap(),
                            m.from_uid.clone(),
                        )
                    })
            })
            .collect();
        assert!(live.len() >= 8);
        for (i, (channel, channel_type, _, _)) in live.iter().take(6).enumerate() {
            let key = if *channel_type == 2 {
                ChannelKey::group(channel)
            } else {
                ChannelKey::person(&me, channel)
            };
            let posted =
                w.post_message(&key, &me, json!({"type": 1, "content": format!("new {i}")}));
            if i == 0 {
                w.toggle_reaction(posted.message_id, &me, "👍");
            }
        }
        w.edit(live[0].2, &json!({"type": 1, "content": "edited once"}));
        w.revoke(live[1].2, &live[1].3);
        w.mutual_delete(live[2].2);
        w.toggle_reaction(live[3].2, &me, "🎉");
        w.toggle_reaction(live[4].2, &me, "❤️");
        w.toggle_reaction(live[4].2, &me, "❤️");
        w.delete_for(live[5].2, &me);
        w.edit(live[6].2, &json!({"type": 1, "content": "edited as well"}));
    }
    let after_activity = s.server.world().clone();

    let (clean, _) = common::store().await;
    *s.server.world() = before_activity.clone();
    assert!(s.sync(&clean).await.ok());
    *s.server.world() = after_activity.clone();
    let before = s.server.request_count();
    let r = s.sync(&clean).await;
    assert!(r.ok(), "{:?}", r.error);
    assert!(r.counts.messages_new >= 6, "{:?}", r.counts);
    let n = s.server.request_count() - before;
    let want = common::archive_snapshot(&clean).await;
    eprintln!(
        "incremental sync: {n} requests, {} archive lines",
        want.len()
    );

    for k in 1..=n {
        let (store, _) = common::store().await;
        *s.server.world() = before_activity.clone();
        assert!(s.sync(&store).await.ok());
        *s.server.world() = after_activity.clone();
        let (first, second) = sync_failing_at(&s, &store, k).await;
        let last = second.as_ref().unwrap_or(&first);
        assert!(last.ok(), "k={k} ({:?}): {:?}", failure(k), last.error);
        let got = common::archive_snapshot(&store).await;
        assert_same(
            &want,
            &got,
            &format!("incremental sync, request {k} failing ({:?})", failure(k)),
        );
    }
    assert_eq!(s.server.world().login_count(), 1);
}

async fn welcome_messages(store: &Store) -> i64 {
    common::count(
        store,
        &format!(
            "SELECT count(*) FROM archive.messages WHERE sender_id = '{TSDD_SYSTEM_UID}' \
             AND text LIKE '{WELCOME}%'"
        ),
    )
    .await
}

/// Ten scheduled runs of the daemon, with the configuration's data directory: one login,
/// one welcome message on the user's phone, archived once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_scheduled_runs_log_in_once() {
    let server = SimServer::start(World::generate(&spec(60))).await;
    let data_dir = TempDir(temp_dir("data"));
    let spec = spec(0);
    let text = format!(
        "version = 1\n[storage]\ndata_dir = \"{}\"\n[sync]\nschedule_jitter = 0\n\n\
         [[source]]\nname = \"s\"\nplatform = \"tangsengdaodao\"\nschedule = \"* * * * * *\"\n\
         base_url = \"{}\"\nusername = \"{}\"\npassword = \"{}\"\npage_size = 50\n",
        data_dir.0.display(),
        server.base_url(),
        spec.me_username,
        spec.me_password
    );
    let config = chatvault::config::load_str(&text, &|_| None)
        .expect("a valid configuration")
        .config;
    let mut options = SchedulerOptions::from_config(&config);
    options.sync.backoff_base = Duration::from_millis(5);
    let (store, _) = common::store().await;
    let scheduler =
        Scheduler::new(store.clone(), Metrics::new(), &config.sources, options).unwrap();
    let state = scheduler.state();
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(scheduler.run(stop_rx));
    let started = std::time::Instant::now();
    loop {
        let runs = state.read().unwrap()["s"].runs;
        if runs >= 10 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{runs} runs so far"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the scheduler stops")
        .unwrap();

    let ok_runs = common::count(
        &store,
        "SELECT count(*) FROM archive.sync_runs WHERE status = 'ok'",
    )
    .await;
    assert!(ok_runs >= 10, "{ok_runs} ok runs");
    assert_eq!(
        server.world().login_count(),
        1,
        "one login for {ok_runs} runs"
    );
    assert_eq!(welcome_messages(&store).await, 1, "one welcome message");
    assert_eq!(server.request_count_for(LOGIN), 1);

    // the token is in <data_dir>/sessions, private, and nowhere in the database
    let file = data_dir.0.join("sessions").join("s.token");
    let kept: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let token = kept["token"].as_str().unwrap().to_string();
    assert!(!token.is_empty());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&data_dir.0.join("sessions")), 0o700);
    }
    for sql in [
        "SELECT count(*) FROM vault.events WHERE detail::text LIKE '%' || $1 || '%'",
        "SELECT count(*) FROM vault.messages WHERE raw::text LIKE '%' || $1 || '%'",
        "SELECT count(*) FROM vault.cursors WHERE value::text LIKE '%' || $1 || '%'",
        "SELECT count(*) FROM vault.sync_runs WHERE coalesce(error, '') LIKE '%' || $1 || '%'",
    ] {
        let found: i64 = sqlx::query_scalar(sql)
            .bind(&token)
            .fetch_one(store.pool())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(found, 0, "the token is in the database: {sql}");
    }
}

/// Without a kept session every run logs in, and every login is a message on the phone:
/// the reason the session is kept.
#[tokio::test]
async fn without_a_kept_session_every_run_logs_in() {
    let s = setup(World::generate(&spec(40)), Duration::from_secs(5), 50).await;
    let (store, _) = common::store().await;
    let options = SyncOptions {
        session_dir: None,
        ..s.options.clone()
    };
    for _ in 0..3 {
        assert!(sync_source(&store, &s.src, &options, None).await.ok());
    }
    assert_eq!(s.server.world().login_count(), 3);
    assert_eq!(welcome_messages(&store).await, 3);
}

/// A message whose `reply.message_id` is not a string makes the real server panic on every
/// window that holds it. The window is retried whole first, then narrowed; the seq becomes a
/// gap that says why, everything around it is archived, and later runs go on past it.
#[tokio::test]
async fn a_message_the_server_panics_on_costs_one_gap_not_the_channel() {
    let mut world = World::generate(&spec(120));
    let me = world.me().uid.clone();
    let group = world
        .truth()
        .into_iter()
        .find(|c| c.channel_type == 2 && c.is_member && c.my_offset == 0)
        .unwrap()
        .channel_id;
    let key = ChannelKey::group(&group);
    world.post_message(&key, &me, json!({"type": 1, "content": "before"}));
    let bad = world.post_message(
        &key,
        &me,
        json!({"type": 1, "content": "quoting", "reply": {"message_id": 1824334157854015488u64}}),
    );
    world.post_message(&key, &me, json!({"type": 1, "content": "after"}));
    let s = setup(world, Duration::from_secs(5), 40).await;
    let (store, _) = common::store().await;

    let r = s.sync(&store).await;
    assert!(r.ok(), "{:?}", r.error);
    assert!(r.counts.retries >= 2, "the window was retried whole first");
    let gaps: Vec<(i64, i64, String)> = sqlx::query_as(
        "SELECT from_seq, to_seq, reason FROM vault.seq_gaps WHERE conversation_id = $1 AND reason LIKE '%HTTP 500%'",
    )
    .bind(&group)
    .fetch_all(store.pool())
    .await
    .unwrap();
    let seq = i64::from(bad.message_seq);
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!((gaps[0].0, gaps[0].1), (seq, seq));
    assert!(gaps[0].2.contains("panic"), "{}", gaps[0].2);
    let texts: Vec<String> = sqlx::query_scalar(
        "SELECT text FROM archive.messages WHERE conversation_id = $1 AND seq >= $2 - 1 ORDER BY seq",
    )
    .bind(&group)
    .bind(seq)
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(texts, ["before", "after"]);

    // the next run is not held up by it
    s.server
        .world()
        .post_message(&key, &me, json!({"type": 1, "content": "later"}));
    let r = s.sync(&store).await;
    assert!(r.ok(), "{:?}", r.error);
    assert_eq!(r.counts.messages_new, 1);

    // once the record is repaired upstream, sync --full reads it
    s.server.world().replace_payload(
        bad.message_id,
        json!({"type": 1, "content": "quoting", "reply": {"message_id": "1824334157854015488"}}),
    );
    let r = s.sync_full(&store).await;
    assert!(r.ok(), "{:?}", r.error);
    assert_eq!(r.counts.messages_new, 1);
    let archived = common::count(
        &store,
        &format!(
            "SELECT count(*) FROM archive.messages WHERE message_id = '{}'",
            bad.message_id
        ),
    )
    .await;
    assert_eq!(archived, 1);
}

/// A server that answers every channel sync with a panic is down, not poisoned: nothing is
/// skipped, the conversations fail for this run, and the next run reads everything.
#[tokio::test]
async fn a_server_failing_every_channel_sync_skips_nothing() {
    let s = setup(World::generate(&spec(80)), Duration::from_secs(5), 40).await;
    let (store, _) = common::store().await;
    s.server.faults().status(Some(CHANNEL_SYNC), 100_000, 500);
    let r = s.sync(&store).await;
    assert_eq!(r.status, RunStatus::Failed);
    assert_eq!(
        common::count(&store, "SELECT count(*) FROM vault.seq_gaps").await,
        0
    );
    s.server.faults().clear();
    let r = s.sync(&store).await;
    assert!(r.ok(), "{:?}", r.error);
    let visible: usize = s
        .server
        .world()
        .truth()
        .iter()
        .map(|c| c.messages.iter().filter(|m| m.visible).count())
        .sum();
    let archived = common::count(&store, "SELECT count(*) FROM archive.messages").await;
    assert_eq!(archived as usize, visible);
}

/// A 400 reporting the server's own failure is retried, and when it persists the run says
/// what the server said.
#[tokio::test]
async fn a_400_for_the_servers_own_failure_is_retried_and_reported_with_its_message() {
    let s = setup(World::generate(&spec(60)), Duration::from_secs(5), 50).await;
    let (store, _) = common::store().await;
    let faults = s.server.faults();
    faults.server_failure(Some(LOGIN), 1, "设置token缓存失败！");
    faults.server_failure(Some(CONVERSATION_SYNC), 2, "同步离线后的最近会话失败！");
    faults.server_failure(Some(CHANNEL_SYNC), 2, "同步频道内的消息失败！");
    let r = s.sync(&store).await;
    assert!(r.ok(), "{:?}", r.error);
    assert!(r.counts.retries >= 5, "{:?}", r.counts);
    assert_eq!(faults.pending(), 0);
    assert_eq!(s.server.world().login_count(), 1);

    faults.server_failure(Some(CONVERSATION_SYNC), 1000, "同步离线后的最近会话失败！");
    let r = s.sync(&store).await;
    assert_eq!(r.status, RunStatus::Failed);
    let error = r.error.unwrap();
    assert!(error.contains("同步离线后的最近会话失败！"), "{error}");
    assert!(!error.contains("password"), "{error}");
}

/// A login refused for the account's state says what the server said, not "check the
/// password".
#[tokio::test]
async fn a_refused_login_reports_what_the_server_said() {
    let s = setup(World::generate(&spec(20)), Duration::from_secs(5), 50).await;
    let (store, _) = common::store().await;
    s.server
        .faults()
        .server_failure(Some(LOGIN), 1000, "该用户已被禁用");
    let r = s.sync(&store).await;
    assert_eq!(r.status, RunStatus::Failed);
    let error = r.error.unwrap();
    assert!(error.contains("该用户已被禁用"), "{error}");
    assert!(!error.contains("password"), "{error}");
    assert_eq!(s.server.world().login_count(), 0);
}

#[derive(Debug, sqlx::FromRow)]
struct Deleted {
    deleted: bool,
    text: String,
    edit_count: i32,
}

async fn deleted_row(store: &Store, message_id: u64) -> Deleted {
    sqlx::query_as(
        "SELECT deleted_at IS NOT NULL AS deleted, text, edit_count FROM archive.messages WHERE message_id = $1",
    )
    .bind(message_id.to_string())
    .fetch_one(store.pool())
    .await
    .unwrap()
}

async fn deletion_reason(store: &Store, message_id: u64) -> Option<String> {
    sqlx::query_scalar(
        "SELECT detail->>'reason' FROM archive.events WHERE kind = 'message_deleted' AND message_id = $1",
    )
    .bind(message_id.to_string())
    .fetch_optional(store.pool())
    .await
    .unwrap()
    .flatten()
}

/// Messages the server returns with `is_deleted` = 1 for this account (deleted for it,
/// expired, in cleared history) are archived as deleted, with the reason, content kept, in
/// either order: deleted before the first sync, or live first and deleted later.
#[tokio::test]
async fn messages_deleted_for_this_account_are_archived_as_deleted_with_the_reason() {
    let mut world = World::generate(&spec(80));
    let me = world.me().uid.clone();
    let group = world
        .truth()
        .into_iter()
        .find(|c| c.channel_type == 2 && c.is_member && c.my_offset == 0)
        .unwrap()
        .channel_id;
    let key = ChannelKey::group(&group);
    let gone = world.post_message(&key, &me, json!({"type": 1, "content": "deleted for me"}));
    world.delete_for(gone.message_id, &me);
    let expired = world.post_message(&key, &me, json!({"type": 1, "content": "self-destructs"}));
    world.set_expire(expired.message_id, 1);
    let later = world.post_message(&key, &me, json!({"type": 1, "content": "live at first"}));
    let s = setup(world, Duration::from_secs(5), 50).await;
    let (store, _) = common::store().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(s.sync(&store).await.ok());

    for (id, text) in [
        (gone.message_id, "deleted for me"),
        (expired.message_id, "self-destructs"),
    ] {
        let row = deleted_row(&store, id).await;
        assert!(row.deleted, "{text}: {row:?}");
        assert_eq!(row.text, text, "the content is kept");
        let reason = deletion_reason(&store, id)
            .await
            .expect("a reason is recorded");
        assert!(reason.contains("for this account"), "{reason}");
    }
    let expiring = deletion_reason(&store, expired.message_id).await.unwrap();
    assert!(expiring.contains("expires 1 s"), "{expiring}");
    assert!(!deleted_row(&store, later.message_id).await.deleted);

    // live first, deleted for this account afterwards: a re-read marks it, content kept
    s.server.world().delete_for(later.message_id, &me);
    assert!(s.sync_full(&store).await.ok());
    let row = deleted_row(&store, later.message_id).await;
    assert!(
        row.deleted && row.text == "live at first" && row.edit_count == 0,
        "{row:?}"
    );
    // and a mark is never taken back
    assert!(s.sync_full(&store).await.ok());
    assert!(deleted_row(&store, later.message_id).await.deleted);

    // someone clears the group for everyone: its messages are served is_deleted, and a
    // re-read marks every one of them, content kept
    s.server.world().clear_channel_for_everyone(&key);
    assert!(s.sync_full(&store).await.ok());
    let live_in_group = common::count(
        &store,
        &format!("SELECT count(*) FROM archive.messages WHERE conversation_id = '{group}' AND deleted_at IS NULL"),
    )
    .await;
    assert_eq!(live_in_group, 0);
    assert!(store.verify(&[]).await.unwrap().ok());
}
