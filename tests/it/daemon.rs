//! The daemon: the scheduler in-process, and `chatvault run` as real processes, against a
//! fake TangSengDaoDao over real HTTP and a real PostgreSQL. Every wait is bounded.

use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use chatvault::config::{PlatformConfig, Secret, SourceConfig, TsddAuth, TsddConfig};
use chatvault::metrics::Metrics;
use chatvault::model::SourceName;
use chatvault::scheduler::{Scheduler, SchedulerOptions};
use chatvault::sim::tangsengdaodao::{Fault, FaultKind, SimServer, World, WorldSpec};
use chatvault::store::Store;
use chatvault::sync::SyncOptions;
use tokio::sync::watch;

const CHANNEL_SYNC: &str = "/v1/message/channel/sync";

fn spec(messages: usize) -> WorldSpec {
    WorldSpec {
        seed: 11,
        messages,
        ..WorldSpec::default()
    }
}

/// Every request to `path` answers after `delay`, until the faults are cleared.
fn slow_down(server: &SimServer, path: &str, delay: Duration) {
    server
        .faults()
        .add(Fault::new(FaultKind::Slow(delay)).on(path).forever());
}

/// A fresh database: its URL for the binary (tagged with `application_name`s by the
/// caller) and a store for the test's own queries.
async fn database() -> (String, Store) {
    let (options, name) = chatvault::pg::testing::fresh_database().await;
    let socket = options
        .get_socket()
        .expect("the test cluster listens on a socket");
    let url = format!(
        "postgres://{}@localhost/{name}?host={}",
        options.get_username(),
        socket.display()
    );
    let store = Store::connect(options, 4).await.expect("connect");
    (url, store)
}

fn source_toml(name: &str, server: &SimServer, schedule: &str) -> String {
    format!(
        "[[source]]\nname = \"{name}\"\nplatform = \"tangsengdaodao\"\nbase_url = \"{}\"\nusername = \"{}\"\npassword_env = \"TSDD_PASSWORD\"\nrequests_per_second = 2000\nschedule = \"{schedule}\"\npage_size = 50\n",
        server.base_url(),
        WorldSpec::default().me_username
    )
}

fn daemon_toml(shutdown_timeout: u64, sources: &[String]) -> String {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_timeout = {shutdown_timeout}\n[sync]\nschedule_jitter = 0\nmax_concurrent_sources = 4\nmax_retries = 2\n"
    );
    for s in sources {
        text.push_str(s);
    }
    text
}

fn command(dir: &Path, args: &[&str], database_url: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatvault"));
    cmd.current_dir(dir)
        .args(args)
        .env_remove("CHATVAULT_CONFIG")
        .env_remove("CHATVAULT_DATA_DIR")
        .env_remove("CHATVAULT_LISTEN")
        .env_remove("CHATVAULT_SERVER_TOKEN")
        .env_remove("CHATVAULT_DATABASE_URL")
        .env("TSDD_PASSWORD", WorldSpec::default().me_password);
    if let Some(url) = database_url {
        cmd.env("CHATVAULT_DATABASE_URL", url);
    }
    cmd
}

/// Run a one-shot command to its end (bounded).
fn run_to_end(dir: &Path, args: &[&str], database_url: Option<&str>) -> Output {
    let mut child = Daemon::spawn_with(command(dir, args, database_url), dir, args.join("-"));
    let status = child
        .wait(Duration::from_secs(120))
        .unwrap_or_else(|| panic!("chatvault {args:?} did not finish in 120 s"));
    Output {
        status,
        stdout: std::fs::read(&child.stdout).unwrap_or_default(),
        stderr: std::fs::read(&child.stderr).unwrap_or_default(),
    }
}

/// A `chatvault` process, killed when dropped (a failing test leaves nothing behind).
struct Daemon {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, tag: &str, database_url: &str) -> Daemon {
        let cmd = command(
            dir,
            &["--config", "chatvault.toml", "run"],
            Some(database_url),
        );
        Daemon::spawn_with(cmd, dir, tag.to_string())
    }

    fn spawn_with(mut cmd: Command, dir: &Path, tag: String) -> Daemon {
        let stdout = dir.join(format!("{tag}.out"));
        let stderr = dir.join(format!("{tag}.err"));
        cmd.stdout(Stdio::from(File::create(&stdout).unwrap()))
            .stderr(Stdio::from(File::create(&stderr).unwrap()));
        let child = cmd.spawn().expect("start chatvault");
        Daemon {
            child,
            stdout,
            stderr,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child.
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for chatvault") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Poll `check` every 100 ms until it returns `Some`, for at most `limit`.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn scalar(store: &Store, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// Pairs of runs of one source whose `started_at..finished_at` intervals overlap (a run
/// still going counts as open-ended).
async fn overlapping_runs(store: &Store) -> Vec<(String, i64, i64)> {
    sqlx::query_as(
        "SELECT a.source, a.run_id, b.run_id FROM archive.sync_runs a
         JOIN archive.sync_runs b ON a.source = b.source AND a.run_id < b.run_id
         WHERE a.started_at < coalesce(b.finished_at, 'infinity')
           AND b.started_at < coalesce(a.finished_at, 'infinity')",
    )
    .fetch_all(store.pool())
    .await
    .unwrap()
}

fn visible_messages(server: &SimServer) -> usize {
    server
        .world()
        .truth()
        .iter()
        .map(|c| c.messages.iter().filter(|m| m.visible).count())
        .sum()
}

/// Every message the archiving user can see is archived exactly once for `source`, and
/// nothing else.
async fn assert_archive_equals_world(store: &Store, server: &SimServer, source: &str) {
    let expected: BTreeSet<(String, String)> = server
        .world()
        .truth()
        .iter()
        .flat_map(|c| {
            c.messages
                .iter()
                .filter(|m| m.visible)
                .map(|m| (c.channel_id.clone(), m.message_id.clone()))
        })
        .collect();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT conversation_id, message_id FROM archive.messages WHERE source = $1",
    )
    .bind(source)
    .fetch_all(store.pool())
    .await
    .unwrap();
    let got: BTreeSet<(String, String)> = rows.iter().cloned().collect();
    assert_eq!(got.len(), rows.len(), "{source}: a message archived twice");
    let missing: Vec<_> = expected.difference(&got).take(3).collect();
    let extra: Vec<_> = got.difference(&expected).take(3).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{source}: {} archived, {} visible; missing e.g. {missing:?}, extra e.g. {extra:?}",
        got.len(),
        expected.len()
    );
}

fn in_process_source(server: &SimServer, schedule: &str) -> SourceConfig {
    SourceConfig {
        name: SourceName::new("s"),
        schedule: schedule.into(),
        requests_per_second: 0.0,
        request_timeout: Duration::from_secs(10),
        enabled: true,
        push: true,
        platform: PlatformConfig::Tangsengdaodao(TsddConfig {
            base_url: server.base_url(),
            auth: TsddAuth::Password {
                username: WorldSpec::default().me_username,
                password: Secret::new(WorldSpec::default().me_password),
            },
            device_flag: 1,
            page_size: 50,
        }),
    }
}

fn fast_options() -> SchedulerOptions {
    SchedulerOptions {
        max_concurrent_sources: 2,
        jitter: Duration::ZERO,
        backoff_base: Duration::from_secs(30),
        backoff_cap: Duration::from_secs(1800),
        sync: SyncOptions {
            max_retries: 1,
            backoff_base: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            ..SyncOptions::default()
        },
        attachments: None,
    }
}

async fn migrated(store: &Store) {
    store.migrate().await.expect("migrations apply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_slower_than_its_schedule_never_overlaps_and_late_ticks_are_skipped() {
    let server = SimServer::start(World::generate(&spec(600))).await;
    slow_down(&server, CHANNEL_SYNC, Duration::from_millis(150));
    let (_, store) = database().await;
    migrated(&store).await;
    let source = in_process_source(&server, "* * * * * *");
    let scheduler = Scheduler::new(
        store.clone(),
        Metrics::new(),
        std::slice::from_ref(&source),
        fast_options(),
    )
    .unwrap();
    assert_eq!(scheduler.sources(), ["s"]);
    let state = scheduler.state();
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(scheduler.run(stop_rx));
    let state_for_wait = state.clone();
    wait_for("two finished runs", Duration::from_secs(60), || {
        let state = state_for_wait.clone();
        async move {
            let s = state.read().unwrap()["s"].clone();
            (s.runs >= 2).then_some(())
        }
    })
    .await;
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the scheduler stops within 30 s")
        .unwrap();

    let snapshot = state.read().unwrap()["s"].clone();
    assert!(!snapshot.running, "{snapshot:?}");
    assert_eq!(snapshot.next_run, None, "nothing is planned after shutdown");
    assert!(
        snapshot.skipped_ticks >= 1,
        "a run longer than a second skips ticks: {snapshot:?}"
    );
    assert_eq!(snapshot.consecutive_failures, 0, "{snapshot:?}");
    let runs = scalar(&store, "SELECT count(*) FROM archive.sync_runs").await;
    assert!(runs >= 2, "{runs} runs");
    assert_eq!(runs as u64, snapshot.runs, "every run is accounted for");
    assert_eq!(overlapping_runs(&store).await, []);
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM archive.sync_runs WHERE status = 'running' OR finished_at IS NULL"
        )
        .await,
        0,
        "no run is left running after shutdown"
    );
    assert_archive_equals_world(&store, &server, "s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_backs_off_and_recovers_by_itself() {
    let server = SimServer::start(World::generate(&spec(200))).await;
    server
        .faults()
        .add(Fault::new(FaultKind::Status(503)).forever());
    let (_, store) = database().await;
    migrated(&store).await;
    let source = in_process_source(&server, "* * * * * *");
    let options = SchedulerOptions {
        backoff_base: Duration::from_secs(2),
        backoff_cap: Duration::from_secs(4),
        ..fast_options()
    };
    let scheduler = Scheduler::new(
        store.clone(),
        Metrics::new(),
        std::slice::from_ref(&source),
        options,
    )
    .unwrap();
    let state = scheduler.state();
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(scheduler.run(stop_rx));
    let started = Instant::now();
    let read = |state: &chatvault::scheduler::SharedState| state.read().unwrap()["s"].clone();
    {
        let state = state.clone();
        wait_for("three failed runs", Duration::from_secs(30), move || {
            let s = read(&state);
            async move { (s.consecutive_failures >= 3).then_some(()) }
        })
        .await;
    }
    // every second without backoff: 3 failures would take ~3 s; with it, >= 2 + 4 s
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(5),
        "three failures after {elapsed:?}: no backoff"
    );
    let s = read(&state);
    let last = s.last_run.clone().unwrap();
    assert_eq!(last.status, "failed", "{s:?}");
    let gap = s.next_run.expect("a next run is planned") - last.finished_at;
    assert!(
        gap >= chrono::Duration::seconds(4),
        "the next run is {gap:?} after the third failure, not after the 4 s cap"
    );
    // upstream comes back: the source recovers without help
    server.faults().clear();
    {
        let state = state.clone();
        wait_for("a successful run", Duration::from_secs(30), move || {
            let s = read(&state);
            async move { (s.last_run.as_ref().is_some_and(|r| r.status == "ok")).then_some(()) }
        })
        .await;
    }
    assert_eq!(read(&state).consecutive_failures, 0);
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the scheduler stops within 30 s")
        .unwrap();
    assert_archive_equals_world(&store, &server, "s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_a_database_and_one_takes_over_when_the_other_dies() {
    let server = SimServer::start(World::generate(&spec(1500))).await;
    slow_down(&server, CHANNEL_SYNC, Duration::from_millis(100));
    let visible = visible_messages(&server);
    let (url, store) = database().await;
    let dir = tempfile::tempdir().unwrap();
    let sources = [
        source_toml("a", &server, "* * * * * *"),
        source_toml("b", &server, "*/2 * * * * *"),
    ];
    std::fs::write(dir.path().join("chatvault.toml"), daemon_toml(10, &sources)).unwrap();
    let mut first = Daemon::start(
        dir.path(),
        "first",
        &format!("{url}&application_name=first"),
    );
    let mut second = Daemon::start(
        dir.path(),
        "second",
        &format!("{url}&application_name=second"),
    );

    // kill whichever daemon is syncing `a`, in the middle of its backfill
    let holder: String = wait_for(
        "a daemon holding source a's lock mid-backfill",
        Duration::from_secs(60),
        || async {
            sqlx::query_scalar::<_, String>(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                   AND l.classid::bigint = 25462
                   AND l.objid::bigint = (SELECT lock_id FROM vault.sources WHERE source = 'a')
                   AND EXISTS (SELECT 1 FROM archive.sync_runs
                               WHERE source = 'a' AND status = 'running')
                   AND (SELECT count(*) FROM archive.messages WHERE source = 'a') BETWEEN 1 AND $1",
            )
            .bind(visible as i64 - 200)
            .fetch_optional(store.pool())
            .await
            .ok()
            .flatten()
        },
    )
    .await;
    assert_eq!(first.wait(Duration::ZERO), None, "{}", first.log());
    assert_eq!(second.wait(Duration::ZERO), None, "{}", second.log());
    let (killed, survivor) = match holder.as_str() {
        "first" => (&mut first, &mut second),
        "second" => (&mut second, &mut first),
        other => panic!("unexpected lock holder {other:?}"),
    };
    killed.signal(libc::SIGKILL);
    assert!(killed.wait(Duration::from_secs(10)).is_some());
    let killed_at = chrono::Utc::now();

    // the survivor takes over both sources
    server.faults().clear();
    wait_for(
        "the survivor's ok runs of both sources",
        Duration::from_secs(60),
        || async {
            let n = sqlx::query_scalar::<_, i64>(
                "SELECT count(DISTINCT source) FROM archive.sync_runs WHERE status = 'ok' AND started_at > $1",
            )
            .bind(killed_at)
            .fetch_one(store.pool())
            .await
            .unwrap();
            (n == 2).then_some(())
        },
    )
    .await;
    survivor.signal(libc::SIGTERM);
    let status = survivor
        .wait(Duration::from_secs(20))
        .expect("the survivor stops within 20 s");
    assert!(status.success(), "{status:?}: {}", survivor.log());

    assert_eq!(overlapping_runs(&store).await, []);
    let taken_over: i64 = scalar(
        &store,
        "SELECT count(*) FROM archive.sync_runs WHERE source = 'a' AND status = 'interrupted'
         AND error = 'the process running it stopped before it finished'",
    )
    .await;
    assert_eq!(
        taken_over, 1,
        "the killed run is found and marked interrupted"
    );
    for source in ["a", "b"] {
        assert_archive_equals_world(&store, &server, source).await;
    }
    let verify = run_to_end(dir.path(), &["verify"], Some(&url));
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
    // both daemons went for the same ticks; the source lock turned one of them away
    let log = first.log() + &second.log();
    assert_eq!(log.matches("chatvault daemon started").count(), 2, "{log}");
    assert!(log.contains(r#""status":"skipped""#), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_exits_cleanly_and_the_next_sync_resumes() {
    let server = SimServer::start(World::generate(&spec(1500))).await;
    slow_down(&server, CHANNEL_SYNC, Duration::from_millis(150));
    let (url, store) = database().await;
    let dir = tempfile::tempdir().unwrap();
    let sources = [source_toml("a", &server, "* * * * * *")];
    std::fs::write(dir.path().join("chatvault.toml"), daemon_toml(15, &sources)).unwrap();
    let mut daemon = Daemon::start(dir.path(), "daemon", &url);

    wait_for(
        "a run that archived some messages",
        Duration::from_secs(60),
        || async {
            let n = sqlx::query_scalar::<_, i64>("SELECT count(*) FROM archive.messages")
                .fetch_one(store.pool())
                .await
                .unwrap_or(0);
            (n >= 100).then_some(())
        },
    )
    .await;
    assert_eq!(
        scalar(
            &store,
            "SELECT count(*) FROM archive.sync_runs WHERE status = 'running'"
        )
        .await,
        1
    );
    let asked = Instant::now();
    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("no exit 20 s after SIGTERM: {}", daemon.log()));
    let took = asked.elapsed();
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert!(took < Duration::from_secs(15), "exit took {took:?}");
    let statuses: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT status, error FROM archive.sync_runs ORDER BY run_id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(
        statuses,
        [(
            "interrupted".to_string(),
            Some("stopped by shutdown".to_string())
        )],
        "the one run ended interrupted"
    );
    let log = daemon.log();
    assert!(log.contains("chatvault daemon stopped"), "{log}");

    server.faults().clear();
    let sync = run_to_end(dir.path(), &["sync"], Some(&url));
    assert!(
        sync.status.success(),
        "{}",
        String::from_utf8_lossy(&sync.stderr)
    );
    assert_archive_equals_world(&store, &server, "a").await;
    let verify = run_to_end(dir.path(), &["verify"], Some(&url));
    assert!(verify.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stuck_past_the_deadline_does_not_hold_up_the_exit() {
    let server = SimServer::start(World::generate(&spec(200))).await;
    let (url, store) = database().await;
    let dir = tempfile::tempdir().unwrap();
    let sources = [source_toml("a", &server, "* * * * * *")];
    std::fs::write(dir.path().join("chatvault.toml"), daemon_toml(1, &sources)).unwrap();
    // the first request hangs far longer than the deadline
    slow_down(&server, "/v1/user/login", Duration::from_secs(60));
    let mut daemon = Daemon::start(dir.path(), "daemon", &url);
    wait_for("a run in progress", Duration::from_secs(30), || async {
        let n = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM archive.sync_runs WHERE status = 'running'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap_or(0);
        (n > 0 && server.request_count() > 0).then_some(())
    })
    .await;
    let asked = Instant::now();
    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait(Duration::from_secs(15))
        .unwrap_or_else(|| panic!("no exit 15 s after SIGTERM: {}", daemon.log()));
    assert_eq!(status.code(), Some(0), "{}", daemon.log());
    assert!(
        asked.elapsed() < Duration::from_secs(8),
        "{:?}",
        asked.elapsed()
    );
    assert!(
        daemon.log().contains("shutdown deadline"),
        "{}",
        daemon.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let server = SimServer::start(World::generate(&spec(200))).await;
    let (url, store) = database().await;
    let dir = tempfile::tempdir().unwrap();
    let sources = [source_toml("a", &server, "* * * * * *")];
    std::fs::write(dir.path().join("chatvault.toml"), daemon_toml(60, &sources)).unwrap();
    slow_down(&server, "/v1/user/login", Duration::from_secs(60));
    let mut daemon = Daemon::start(dir.path(), "daemon", &url);
    wait_for("a run in progress", Duration::from_secs(30), || async {
        let n = sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM archive.sync_runs WHERE status = 'running'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap_or(0);
        (n > 0 && server.request_count() > 0).then_some(())
    })
    .await;
    daemon.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(daemon.wait(Duration::ZERO), None, "the deadline is 60 s");
    daemon.signal(libc::SIGINT);
    let status = daemon
        .wait(Duration::from_secs(5))
        .expect("a second signal exits at once");
    assert_eq!(status.code(), Some(130), "{}", daemon.log());
}

#[test]
fn startup_without_enabled_sources_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_to_end(dir.path(), &["run"], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("error: no enabled sources"),
        "{stderr}"
    );

    // a configured but disabled source is not enough either
    let text = "[[source]]\nname = \"a\"\nplatform = \"tangsengdaodao\"\nbase_url = \"http://127.0.0.1:9\"\nusername = \"u\"\npassword_env = \"TSDD_PASSWORD\"\nenabled = false\n";
    std::fs::write(dir.path().join("chatvault.toml"), text).unwrap();
    let out = run_to_end(dir.path(), &["run"], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no enabled sources"), "{stderr}");
    assert!(
        !dir.path().join("chatvault-data").exists(),
        "nothing is started before the check"
    );
}

/// The API's address, from the daemon's JSON log.
fn api_address(log: &str) -> Option<String> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|entry| entry["fields"]["message"] == "http api listening")
        .and_then(|entry| entry["fields"]["address"].as_str().map(str::to_string))
}

/// The pid in `postmaster.pid` once it says the server is ready.
fn ready_postmaster(cluster: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(cluster.join("postmaster.pid")).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    (lines.get(7)?.trim() == "ready").then(|| lines[0].trim().parse().ok())?
}

async fn get_text(http: &reqwest::Client, url: &str) -> Option<String> {
    let response = http.get(url).send().await.ok()?;
    response
        .status()
        .is_success()
        .then_some(response.text().await.ok()?)
}

/// Regression: an embedded PostgreSQL that died while the daemon ran stayed down; every run
/// failed until someone restarted the daemon, and nothing said why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_embedded_postmaster_is_started_again_by_the_daemon() {
    let server = SimServer::start(World::generate(&spec(200))).await;
    let dir = tempfile::tempdir().unwrap();
    let sources = [source_toml("a", &server, "* * * * * *")];
    std::fs::write(dir.path().join("chatvault.toml"), daemon_toml(10, &sources)).unwrap();
    let mut daemon = Daemon::spawn_with(
        command(dir.path(), &["--config", "chatvault.toml", "run"], None),
        dir.path(),
        "embedded".to_string(),
    );
    let address = wait_for("the API's address", Duration::from_secs(120), || async {
        api_address(&daemon.log())
    })
    .await;
    let base = format!("http://{address}");
    let http = reqwest::Client::new();
    let status_of_a = |http: reqwest::Client, base: String| async move {
        let text = get_text(&http, &format!("{base}/api/status")).await?;
        let status: serde_json::Value = serde_json::from_str(&text).ok()?;
        let last = status.as_array()?.first()?["last_run"].clone();
        Some((
            last["run_id"].as_i64()?,
            last["status"].as_str()?.to_string(),
        ))
    };
    let (ok_run, _) = wait_for("an ok run", Duration::from_secs(180), || {
        let (http, base) = (http.clone(), base.clone());
        async move { status_of_a(http, base).await.filter(|(_, s)| s == "ok") }
    })
    .await;

    let cluster = dir.path().join("chatvault-data/postgres");
    let killed = ready_postmaster(&cluster).expect("the embedded server runs");
    // SAFETY: kill has no memory-safety preconditions; the pid is the embedded postmaster.
    assert_eq!(unsafe { libc::kill(killed, libc::SIGKILL) }, 0);

    let restarted = wait_for("a new postmaster", Duration::from_secs(60), || async {
        ready_postmaster(&cluster).filter(|pid| *pid != killed)
    })
    .await;
    wait_for(
        "the restart in the metrics",
        Duration::from_secs(30),
        || {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let metrics = get_text(&http, &format!("{base}/metrics")).await?;
                metrics
                    .lines()
                    .any(|l| l == "chatvault_embedded_postgres_restarts_total 1")
                    .then_some(())
            }
        },
    )
    .await;
    let (after, _) = wait_for(
        "an ok run after the restart",
        Duration::from_secs(120),
        || {
            let (http, base) = (http.clone(), base.clone());
            async move {
                status_of_a(http, base)
                    .await
                    .filter(|(id, s)| *id > ok_run + 1 && s == "ok")
            }
        },
    )
    .await;
    assert!(after > ok_run);
    let log = daemon.log();
    assert!(
        log.contains("the embedded postgres server died"),
        "the death is in the log: {log}"
    );
    assert_eq!(daemon.wait(Duration::ZERO), None, "{log}");

    daemon.signal(libc::SIGTERM);
    let status = daemon
        .wait(Duration::from_secs(60))
        .expect("the daemon exits");
    assert!(status.success(), "{}", daemon.log());
    let pid_file_gone = !cluster.join("postmaster.pid").exists();
    assert!(
        pid_file_gone,
        "the restarted server {restarted} was stopped"
    );
    server.shutdown().await;
}
