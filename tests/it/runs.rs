//! What keeps runs of a source safe whatever happens around them: the source lock (one
//! key per source, held on a checked connection) and a panic inside a run.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use chatvault::config::{PlatformConfig, Secret, SourceConfig, TsddAuth, TsddConfig};
use chatvault::metrics::Metrics;
use chatvault::model::SourceName;
use chatvault::scheduler::{Scheduler, SchedulerOptions};
use chatvault::sim::tangsengdaodao::{SimServer, World, WorldSpec};
use chatvault::store::{RunStatus, Store};
use chatvault::sync::{sync_source, PageHook, SyncOptions};
use tokio::sync::watch;

fn spec() -> WorldSpec {
    WorldSpec {
        seed: 11,
        users: 6,
        groups: 2,
        direct_chats: 2,
        messages: 300,
        ..WorldSpec::default()
    }
}

fn source(server: &SimServer, name: &str) -> SourceConfig {
    let spec = spec();
    SourceConfig {
        name: SourceName::new(name),
        schedule: "* * * * * *".into(),
        requests_per_second: 0.0,
        request_timeout: Duration::from_secs(5),
        enabled: true,
        push: true,
        platform: PlatformConfig::Tangsengdaodao(TsddConfig {
            base_url: server.base_url(),
            auth: TsddAuth::Password {
                username: spec.me_username,
                password: Secret::new(&spec.me_password),
            },
            device_flag: 1,
            page_size: 50,
        }),
    }
}

/// A hook that, at the first page it sees, says so on `paused` and waits for `resume`.
fn pause_at_first_page() -> (PageHook, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let (paused_tx, paused) = mpsc::channel();
    let (resume, resume_rx) = mpsc::channel::<()>();
    let once = Mutex::new(Some((paused_tx, resume_rx)));
    let hook = PageHook(Arc::new(move |_: &SourceName, _: &str| {
        let taken = once.lock().unwrap().take();
        if let Some((paused_tx, resume_rx)) = taken {
            let _ = paused_tx.send(());
            // The hook is called on a runtime worker: say that it blocks, so the tasks
            // queued on this worker (a pool connection's return among them) move to
            // another one instead of waiting for the pause to end.
            tokio::task::block_in_place(|| {
                let _ = resume_rx.recv_timeout(Duration::from_secs(30));
            });
        }
    }));
    (hook, paused, resume)
}

/// Two names PostgreSQL's `hashtext` maps to the same 32-bit value.
async fn colliding_names(store: &Store) -> (String, String) {
    sqlx::query_as(
        "SELECT min(name), max(name) FROM (
             SELECT 'src-' || i AS name, hashtext('src-' || i) AS h
             FROM generate_series(1, 300000) AS i) AS n
         GROUP BY h HAVING count(*) > 1 LIMIT 1",
    )
    .fetch_one(store.pool())
    .await
    .expect("a hashtext collision among 300,000 names")
}

/// The lock was keyed by a 32-bit hash of the name: two sources whose names collide kept
/// each other from syncing ("another process is syncing"). Each source has a key of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_whose_names_hash_alike_sync_at_the_same_time() {
    let server = SimServer::start(World::generate(&spec())).await;
    let (store, _) = common::store().await;
    let (a, b) = colliding_names(&store).await;
    let (hook, paused, resume) = pause_at_first_page();
    let held = SyncOptions {
        page_hook: Some(hook),
        ..SyncOptions::default()
    };
    let first = {
        let store = store.clone();
        let source = source(&server, &a);
        tokio::spawn(async move { sync_source(&store, &source, &held, None).await })
    };
    tokio::task::spawn_blocking(move || paused.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .expect("the first source reaches its first page");
    // `a` holds its lock now; `b` must still get its own
    let second = sync_source(&store, &source(&server, &b), &SyncOptions::default(), None).await;
    resume.send(()).unwrap();
    let first = first.await.unwrap();
    assert!(
        !second.skipped,
        "{b} was skipped while {a} ran: {:?}",
        second.error
    );
    assert!(second.ok(), "{:?}", second.error);
    assert!(first.ok(), "{:?}", first.error);
    // and the same source twice is still one at a time
    let (hook, paused, resume) = pause_at_first_page();
    let held = SyncOptions {
        page_hook: Some(hook),
        ..SyncOptions::default()
    };
    let running = {
        let store = store.clone();
        let source = source(&server, &a);
        tokio::spawn(async move { sync_source(&store, &source, &held, None).await })
    };
    let full = SyncOptions {
        full: true,
        ..SyncOptions::default()
    };
    tokio::task::spawn_blocking(move || paused.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap();
    let again = sync_source(&store, &source(&server, &a), &full, None).await;
    resume.send(()).unwrap();
    assert!(again.skipped, "{:?}", again.status);
    assert!(running.await.unwrap().ok());
}

/// When the connection holding the lock breaks, another daemon may take the source: the
/// run stops before it writes another page, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_loses_its_lock_stops_before_writing_again() {
    let server = SimServer::start(World::generate(&spec())).await;
    let (store, _) = common::store().await;
    let (hook, paused, resume) = pause_at_first_page();
    let options = SyncOptions {
        page_hook: Some(hook),
        lock_check_every: Duration::from_millis(50),
        ..SyncOptions::default()
    };
    let run = {
        let store = store.clone();
        let source = source(&server, "s");
        tokio::spawn(async move { sync_source(&store, &source, &options, None).await })
    };
    tokio::task::spawn_blocking(move || paused.recv_timeout(Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap();
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_locks
         WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(terminated, vec![true], "one connection holds the lock");
    tokio::time::sleep(Duration::from_millis(500)).await;
    resume.send(()).unwrap();
    let result = run.await.unwrap();
    assert_eq!(result.status, RunStatus::Failed);
    let error = result.error.unwrap();
    assert!(error.contains("lost the source's lock"), "{error}");
    assert_eq!(
        common::count(&store, "SELECT count(*) FROM archive.messages").await,
        0,
        "no page was written without the lock"
    );
    let recorded: String = sqlx::query_scalar("SELECT status FROM archive.sync_runs")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(recorded, "failed");
}

/// A panic inside a run (a bug) used to kill the source's schedule loop for good: it is
/// a failed run now, recorded with the panic's message, and the next run goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_inside_a_run_is_a_failed_run_and_the_schedule_goes_on() {
    let server = SimServer::start(World::generate(&spec())).await;
    let (store, _) = common::store().await;
    let pages = Arc::new(AtomicUsize::new(0));
    let seen = pages.clone();
    let hook = PageHook(Arc::new(move |_: &SourceName, _: &str| {
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("injected failure at the first page");
        }
    }));
    let mut options = SchedulerOptions {
        max_concurrent_sources: 1,
        jitter: Duration::ZERO,
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(10),
        sync: SyncOptions::default(),
        attachments: None,
    };
    options.sync.page_hook = Some(hook);
    let scheduler = Scheduler::new(
        store.clone(),
        Metrics::new(),
        &[source(&server, "s")],
        options,
    )
    .unwrap();
    let state = scheduler.state();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(scheduler.run(stopped));
    let started = std::time::Instant::now();
    loop {
        let ok = common::count(
            &store,
            "SELECT count(*) FROM archive.sync_runs WHERE status = 'ok'",
        )
        .await;
        if ok >= 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no run after the panic succeeded: {:?}",
            state.read().unwrap()["s"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap();
    let (status, error): (String, Option<String>) =
        sqlx::query_as("SELECT status, error FROM archive.sync_runs ORDER BY run_id LIMIT 1")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(status, "failed");
    let error = error.unwrap();
    assert!(error.contains("internal error"), "{error}");
    assert!(
        error.contains("injected failure at the first page"),
        "{error}"
    );
    assert_eq!(
        common::count(
            &store,
            "SELECT count(*) FROM archive.sync_runs WHERE status = 'running'"
        )
        .await,
        0,
        "no run is left looking like it is still going"
    );
}

/// `/api/status` said a failing source runs at its next cron tick; the scheduler backs it
/// off. The server now reads the next run from the running scheduler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_run_a_server_shows_includes_the_backoff() {
    use chatvault::http::{self, ApiState};
    let server = SimServer::start(World::generate(&spec())).await;
    let (store, _) = common::store().await;
    let mut failing = source(&server, "s");
    if let PlatformConfig::Tangsengdaodao(cfg) = &mut failing.platform {
        cfg.auth = TsddAuth::Password {
            username: spec().me_username,
            password: Secret::new("not-the-password"),
        };
    }
    let options = SchedulerOptions {
        max_concurrent_sources: 1,
        jitter: Duration::ZERO,
        backoff_base: Duration::from_secs(3600),
        backoff_cap: Duration::from_secs(3600),
        sync: SyncOptions::default(),
        attachments: None,
    };
    let scheduler = Scheduler::new(
        store.clone(),
        Metrics::new(),
        std::slice::from_ref(&failing),
        options,
    )
    .unwrap();
    let state = scheduler.state();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(scheduler.run(stopped.clone()));
    let started = std::time::Instant::now();
    while state.read().unwrap()["s"].consecutive_failures == 0 {
        assert!(started.elapsed() < Duration::from_secs(30), "no failed run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let api = ApiState::new(&store, Metrics::new())
        .with_sources(vec![failing])
        .with_scheduler(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve_on(
        listener,
        api,
        stopped,
        Duration::from_secs(5),
    ));
    let status: serde_json::Value = reqwest::get(format!("{base}/api/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let next: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(status[0]["next_run_at"].clone()).unwrap();
    let wait = next - chrono::Utc::now();
    assert!(
        wait > chrono::Duration::minutes(55),
        "the next run is after the hour of backoff, not the next second: {next}"
    );
    stop.send(true).unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}
