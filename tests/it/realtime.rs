//! Push channels, the engine side: targeted runs, the daemon's listener (reconnects after a
//! drop mid-stream) and applier, reduced polling, and Yunxin's message copies posted to
//! `/hooks/yunxin/<source>` — against a real PostgreSQL and the Yunxin fake over HTTP.

use crate::common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chatvault::config::{PlatformConfig, Secret, SourceConfig, YunxinConfig};
use chatvault::connector::{
    Connector, ConnectorError, DiscoverRequest, Discovery, FetchRequest, Fetched, Probe,
};
use chatvault::http::{self as api, ApiState};
use chatvault::metrics::Metrics;
use chatvault::model::{ConversationObservation, Platform, SourceName};
use chatvault::push::{PushKind, PushSignal, PushSink};
use chatvault::realtime::{self, Applied, ListenerFactory, PushHub};
use chatvault::sim::yunxin::{
    now_ms, send_copies, CopySigning, SimServer, World, WorldSpec, LIST_PATH,
};
use chatvault::store::Store;
use chatvault::sync::{sync_source, SyncOptions};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

const TOKEN: &str = "tok-realtime-5e1f0a";

fn world() -> World {
    let mut w = World::generate(&WorldSpec {
        seed: 7,
        accounts: 2,
        users: 6,
        teams: 1,
        super_teams: 0,
        direct_chats: 2,
        messages: 120,
        end_ms: now_ms() - 3_600_000,
        days: 3,
        ..WorldSpec::default()
    });
    w.behaviour.rate_limit = None;
    w
}

fn source(server: &SimServer) -> SourceConfig {
    let w = server.world();
    SourceConfig {
        name: SourceName::new("yx"),
        schedule: "0 */5 * * * *".into(),
        requests_per_second: 0.0,
        request_timeout: Duration::from_secs(5),
        enabled: true,
        push: true,
        platform: PlatformConfig::Yunxin(YunxinConfig {
            base_url: server.base_url(),
            app_key: w.app_key.clone(),
            app_secret: Secret::new(&w.app_secret),
            accounts: w.accounts.clone(),
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

/// A scheduler for one source, without jitter.
fn one_source_at_a_time() -> chatvault::scheduler::SchedulerOptions {
    chatvault::scheduler::SchedulerOptions {
        max_concurrent_sources: 1,
        jitter: Duration::ZERO,
        backoff_base: Duration::from_secs(30),
        backoff_cap: Duration::from_secs(30),
        sync: options(),
        attachments: None,
    }
}

/// Two conversations of the first account, with their sender's peers.
fn two_conversations(server: &SimServer) -> Vec<(String, String)> {
    let w = server.world();
    let owner = &w.accounts[0];
    w.conversations
        .iter()
        .filter(|(id, c)| c.owner == *owner && id.contains("|1|"))
        .take(2)
        .map(|(id, c)| (id.clone(), c.owner.clone()))
        .collect()
}

/// The Yunxin connector reads up to a second before now (messages still being written).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1200)).await;
}

async fn archived(store: &Store, text: &str) -> i64 {
    common::count(
        store,
        &format!(
            "SELECT count(*) FROM archive.messages WHERE text = '{}'",
            text.replace('\'', "''")
        ),
    )
    .await
}

async fn wait_archived(store: &Store, text: &str, within: Duration) -> Duration {
    let started = Instant::now();
    while archived(store, text).await == 0 {
        assert!(
            started.elapsed() < within,
            "{text:?} not archived within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn a_targeted_run_reads_only_the_pushed_conversation_without_listing_conversations() {
    let server = SimServer::start(world()).await;
    let (store, _) = common::store().await;
    let src = source(&server);
    assert!(sync_source(&store, &src, &options(), None).await.ok());
    let convs = two_conversations(&server);
    let (a, b) = (&convs[0], &convs[1]);
    server.world().post_text(&a.0, &a.1, "pushed one").unwrap();
    server.world().post_text(&b.0, &b.1, "not pushed").unwrap();
    settle().await;
    let lists = server.request_count_for(LIST_PATH);
    let before = server.request_count();
    let only = SyncOptions {
        only: Some(vec![a.0.clone()]),
        ..options()
    };
    let r = sync_source(&store, &src, &only, None).await;
    assert!(r.ok(), "{:?}", r.error);
    assert_eq!(r.conversations, 1);
    assert_eq!(archived(&store, "pushed one").await, 1);
    assert_eq!(archived(&store, "not pushed").await, 0);
    assert_eq!(server.request_count_for(LIST_PATH), lists, "no discovery");
    let requests = server.request_count() - before;
    assert!(requests <= 4, "a targeted run made {requests} requests");
    let triggers: Vec<(String,)> =
        sqlx::query_as("SELECT trigger FROM archive.sync_runs WHERE source = 'yx' ORDER BY run_id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(
        triggers,
        vec![("poll".to_string(),), ("push".to_string(),)],
        "runs are told apart by trigger"
    );
    // the next poll still finds the other one: a lost push loses nothing
    assert!(sync_source(&store, &src, &options(), None).await.ok());
    assert_eq!(archived(&store, "not pushed").await, 1);
}

#[tokio::test]
async fn a_push_for_a_conversation_not_yet_archived_discovers_it_first() {
    let server = SimServer::start(world()).await;
    let (store, _) = common::store().await;
    let src = source(&server);
    let convs = two_conversations(&server);
    let (a, b) = (&convs[0], &convs[1]);
    server.world().post_text(&a.0, &a.1, "first ever").unwrap();
    server.world().post_text(&b.0, &b.1, "elsewhere").unwrap();
    settle().await;
    let only = SyncOptions {
        only: Some(vec![a.0.clone(), "nobody|1|nobody".into()]),
        ..options()
    };
    let r = sync_source(&store, &src, &only, None).await;
    assert!(r.ok(), "{:?}", r.error);
    assert!(server.request_count_for(LIST_PATH) > 0, "discovered");
    assert_eq!(archived(&store, "first ever").await, 1);
    assert_eq!(
        archived(&store, "elsewhere").await,
        0,
        "only what was pushed"
    );
    let known = store
        .known_conversations(&src.name, &[a.0.clone(), b.0.clone(), "x|1|y".into()])
        .await
        .unwrap();
    assert!(known.contains(&a.0));
    assert!(!known.contains(&"x|1|y".to_string()));
}

/// A push channel the test scripts: each connection plays its script, then drops (or, for
/// the last one, stays up).
struct Scripted {
    connections: Arc<Mutex<VecDeque<Vec<PushSignal>>>>,
    opened: Arc<Mutex<u32>>,
}

#[async_trait]
impl Connector for Scripted {
    fn platform(&self) -> Platform {
        Platform::Yunxin
    }
    async fn login(&self) -> Result<(), ConnectorError> {
        Ok(())
    }
    async fn discover(&self, _: DiscoverRequest<'_>) -> Result<Discovery, ConnectorError> {
        Err(ConnectorError::Permanent("listen only".into()))
    }
    fn feeds(&self, _: &ConversationObservation) -> Vec<&'static str> {
        Vec::new()
    }
    async fn fetch(&self, _: FetchRequest<'_>) -> Result<Fetched, ConnectorError> {
        Err(ConnectorError::Permanent("listen only".into()))
    }
    async fn probe(&self, _: bool) -> Result<Probe, ConnectorError> {
        Err(ConnectorError::Permanent("listen only".into()))
    }
    async fn listen(&self, sink: PushSink) -> Result<(), ConnectorError> {
        *self.opened.lock().unwrap() += 1;
        let script = self.connections.lock().unwrap().pop_front();
        let Some(script) = script else {
            sink.connected();
            std::future::pending::<()>().await;
            return Ok(());
        };
        sink.connected();
        for signal in script {
            sink.signal(signal);
        }
        Err(ConnectorError::Transient(
            "connection reset mid-stream".into(),
        ))
    }
}

#[tokio::test]
async fn pushes_reach_the_archive_through_a_channel_that_drops_and_reconnects() {
    let server = SimServer::start(world()).await;
    let (store, _) = common::store().await;
    let src = source(&server);
    assert!(sync_source(&store, &src, &options(), None).await.ok());
    let convs = two_conversations(&server);
    let (a, b) = (&convs[0], &convs[1]);
    let id_a = server
        .world()
        .post_text(&a.0, &a.1, "before the drop")
        .unwrap();
    let id_b = server
        .world()
        .post_text(&b.0, &b.1, "after the drop")
        .unwrap();
    let signal = |conv: &str, id: i64| PushSignal {
        conversation_id: conv.to_string(),
        kind: PushKind::NewMessage,
        message_id: Some(id.to_string()),
        upstream_at: Some(chrono::Utc::now()),
    };
    let connections = Arc::new(Mutex::new(VecDeque::from(vec![
        vec![signal(&a.0, id_a), signal(&a.0, id_a)],
        vec![signal(&b.0, id_b)],
    ])));
    let opened = Arc::new(Mutex::new(0));
    let factory: ListenerFactory = {
        let (connections, opened) = (connections.clone(), opened.clone());
        Arc::new(move |_: &SourceConfig| {
            Ok(Box::new(Scripted {
                connections: connections.clone(),
                opened: opened.clone(),
            }) as Box<dyn Connector>)
        })
    };
    let (hub, realtime::Receivers(mut rx)) = PushHub::new(std::slice::from_ref(&src));
    let (stop_tx, stop) = watch::channel(false);
    let (applied_tx, mut applied) = mpsc::unbounded_channel();
    let metrics = Metrics::new();
    let listener = tokio::spawn(realtime::listen(
        src.clone(),
        factory,
        hub.sink("yx").unwrap(),
        Duration::from_millis(50),
        Duration::from_millis(200),
        stop.clone(),
    ));
    let applier = tokio::spawn(realtime::apply(
        store.clone(),
        src.clone(),
        options(),
        hub.clone(),
        Some(metrics.clone()),
        rx.remove("yx").unwrap(),
        stop.clone(),
        Some(applied_tx),
    ));
    wait_archived(&store, "before the drop", Duration::from_secs(10)).await;
    wait_archived(&store, "after the drop", Duration::from_secs(10)).await;
    let mut runs: Vec<Applied> = Vec::new();
    while let Ok(Some(a)) = tokio::time::timeout(Duration::from_millis(500), applied.recv()).await {
        runs.push(a);
    }
    assert!(runs
        .iter()
        .all(|r| !r.skipped && r.conversations.len() <= 2));
    let read: std::collections::BTreeSet<&String> =
        runs.iter().flat_map(|r| &r.conversations).collect();
    assert_eq!(read, [&a.0, &b.0].into_iter().collect());
    // duplicates are merged, and both conversations share runs; a run is repeated only
    // while a pushed message is not served yet
    assert!(runs.len() < realtime::RUN_ATTEMPTS as usize, "{runs:?}");
    assert!(runs.last().unwrap().lag.is_some());
    assert!(runs
        .iter()
        .all(|r| r.lag.is_none_or(|l| l < Duration::from_secs(10))));
    assert_eq!(*opened.lock().unwrap(), 3, "reconnected after each drop");
    let state = hub.status("yx").unwrap();
    assert!(state.state.connected && state.healthy);
    assert_eq!(state.state.reconnects, 2);
    assert_eq!(state.state.pushes, 3);
    assert!(state.lag_seconds.is_some());
    hub.refresh_metrics(&metrics);
    let text = metrics.render();
    assert!(
        text.contains("chatvault_push_connected{source=\"yx\"} 1"),
        "{text}"
    );
    assert!(text.contains("chatvault_push_reconnects_total{source=\"yx\"} 2"));
    assert!(text.contains("chatvault_push_signals_total{source=\"yx\"} 3"));
    assert!(text.contains("chatvault_push_lag_seconds_count{source=\"yx\"}"));
    let pushes = common::count(
        &store,
        "SELECT count(*) FROM archive.sync_runs WHERE trigger = 'push' AND status = 'ok'",
    )
    .await;
    assert_eq!(pushes as usize, runs.len());
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), listener)
        .await
        .expect("the listener stops")
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), applier)
        .await
        .expect("the applier stops")
        .unwrap();
    assert!(!hub.status("yx").unwrap().state.connected);
}

#[tokio::test]
async fn a_connector_without_a_push_channel_is_left_to_polling() {
    let server = SimServer::start(world()).await;
    let src = source(&server);
    let (hub, _rx) = PushHub::new(std::slice::from_ref(&src));
    let (_stop_tx, stop) = watch::channel(false);
    // the Yunxin connector opens no channel itself: the listener ends at once
    tokio::time::timeout(
        Duration::from_secs(5),
        realtime::listen(
            src.clone(),
            realtime::connector_factory(None),
            hub.sink("yx").unwrap(),
            Duration::from_millis(10),
            Duration::from_millis(10),
            stop,
        ),
    )
    .await
    .expect("returns at once");
    assert!(hub.status("yx").is_none());
    assert!(!hub.healthy("yx"));
}

struct Daemon {
    base: String,
    hub: PushHub,
    stop: watch::Sender<bool>,
    http: reqwest::Client,
}

/// The HTTP API with a token and the push applier of `src`, as `chatvault run` wires them.
async fn daemon(store: &Store, src: &SourceConfig) -> Daemon {
    let (stop, shutdown) = watch::channel(false);
    let (hub, realtime::Receivers(mut rx)) = PushHub::new(std::slice::from_ref(src));
    tokio::spawn(realtime::apply(
        store.clone(),
        src.clone(),
        options(),
        hub.clone(),
        None,
        rx.remove(src.name.as_str()).unwrap(),
        shutdown.clone(),
        None,
    ));
    let state = ApiState::new(store, Metrics::new())
        .with_token(Some(Secret::new(TOKEN)))
        .with_sources(vec![src.clone()])
        .with_push(hub.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(api::serve_on(
        listener,
        state,
        shutdown,
        Duration::from_secs(5),
    ));
    Daemon {
        base: format!("http://{address}"),
        hub,
        stop,
        http: reqwest::Client::new(),
    }
}

#[tokio::test]
async fn a_message_copy_brings_a_new_message_into_the_archive_within_seconds() {
    let server = SimServer::start(world()).await;
    let (store, _) = common::store().await;
    let src = source(&server);
    assert!(sync_source(&store, &src, &options(), None).await.ok());
    let d = daemon(&store, &src).await;
    server.world().enable_copies();
    let answers = Arc::new(Mutex::new(Vec::new()));
    let copier = send_copies(
        server.world_handle(),
        format!("{}/hooks/yunxin/yx", d.base),
        Arc::new(Mutex::new(CopySigning::Right)),
        Duration::from_millis(20),
        answers.clone(),
    );
    let convs = two_conversations(&server);
    let (a, _) = (&convs[0], &convs[1]);
    let lists = server.request_count_for(LIST_PATH);
    let requests = server.request_count();
    let id = server
        .world()
        .post_text(&a.0, &a.1, "copied to us")
        .unwrap();
    let took = wait_archived(&store, "copied to us", Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // the targeted run waits until Yunxin's reads can return the message: one read of the
    // conversation (6 requests here), not reads too early and then again (18 before)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let spent = server.request_count() - requests;
    eprintln!("a copied message: archived in {took:?}, {spent} upstream requests");
    assert!(spent <= 8, "{spent} requests for one copied message");
    assert_eq!(
        server.request_count_for(LIST_PATH),
        lists,
        "the copy named a known conversation: no discovery"
    );
    // a recall copy: the recall is archived too
    assert!(server.world().recall_two_way(id, &a.1));
    let started = Instant::now();
    while common::count(
        &store,
        "SELECT count(*) FROM archive.messages WHERE text = 'copied to us' AND (recalled_at IS NOT NULL OR deleted_at IS NOT NULL)",
    )
    .await
        == 0
    {
        assert!(started.elapsed() < Duration::from_secs(5), "recall not archived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answers.lock().unwrap().iter().all(|s| *s == 200));
    let status = d.hub.status("yx").unwrap();
    assert!(status.state.connected && status.healthy);
    assert!(status.state.pushes >= 2);
    copier.abort();
    d.stop.send(true).unwrap();
}

#[tokio::test]
async fn forged_stale_or_oversized_copies_are_refused_and_nothing_is_applied() {
    let server = SimServer::start(world()).await;
    let (store, _) = common::store().await;
    let src = source(&server);
    assert!(sync_source(&store, &src, &options(), None).await.ok());
    let d = daemon(&store, &src).await;
    let convs = two_conversations(&server);
    let a = &convs[0];
    let owner = a.0.split('|').next().unwrap().to_string();
    let peer = a.0.split('|').nth(2).unwrap().to_string();
    let (key, secret) = {
        let w = server.world();
        (w.app_key.clone(), w.app_secret.clone())
    };
    server
        .world()
        .post_text(&a.0, &a.1, "never announced")
        .unwrap();
    let body = serde_json::json!({"eventType": "1", "convType": "PERSON",
        "fromAccount": peer, "to": owner, "msgidServer": "1",
        "msgTimestamp": now_ms().to_string()})
    .to_string();
    let post = |headers: Vec<(&'static str, String)>, body: String| {
        let mut r = d.http.post(format!("{}/hooks/yunxin/yx", d.base));
        for (k, v) in headers {
            r = r.header(k, v);
        }
        r.body(body).send()
    };
    for (how, status) in [
        (CopySigning::WrongChecksum, 401),
        (CopySigning::WrongMd5, 401),
        (CopySigning::Stale, 401),
        (CopySigning::WrongAppKey, 403),
    ] {
        let headers =
            chatvault::sim::yunxin::copy_headers(&key, &secret, body.as_bytes(), now_ms(), how);
        let r = post(headers, body.clone()).await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{how:?}");
        let text = r.text().await.unwrap();
        assert!(text.contains("message copy refused"), "{text}");
        assert!(!text.contains(&secret), "no secret in the answer");
    }
    // no headers at all
    let r = post(Vec::new(), body.clone()).await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // a body over the limit, rightly signed
    let huge = "x".repeat(chatvault::http::hooks::MAX_COPY_BYTES + 1);
    let headers = chatvault::sim::yunxin::copy_headers(
        &key,
        &secret,
        huge.as_bytes(),
        now_ms(),
        CopySigning::Right,
    );
    let r = post(headers, huge).await.unwrap();
    assert_eq!(r.status().as_u16(), 413);
    // an unknown source
    let r = d
        .http
        .post(format!("{}/hooks/yunxin/nope", d.base))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(d.hub.status("yx").is_none(), "nothing was signalled");
    assert_eq!(archived(&store, "never announced").await, 0);
    let push_runs = common::count(
        &store,
        "SELECT count(*) FROM archive.sync_runs WHERE trigger = 'push'",
    )
    .await;
    assert_eq!(push_runs, 0, "nothing applied");
    // the server keeps answering, and the right copy gets through
    let headers = chatvault::sim::yunxin::copy_headers(
        &key,
        &secret,
        body.as_bytes(),
        now_ms(),
        CopySigning::Right,
    );
    let r = post(headers, body.clone()).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    wait_archived(&store, "never announced", Duration::from_secs(5)).await;
    // the hook needs no token; everything else still does
    let r = d
        .http
        .get(format!("{}/api/status", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = d
        .http
        .get(format!("{}/hooks/yunxin/yx", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "only POST is open");
    let r = d
        .http
        .get(format!("{}/api/status", d.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let status: serde_json::Value = r.json().await.unwrap();
    let yx = status
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["source"] == "yx")
        .unwrap();
    let push = &yx["push"];
    assert_eq!(push["connected"], true, "{yx}");
    assert!(push["pushes"].as_u64().unwrap() >= 1);
    d.stop.send(true).unwrap();
}

#[tokio::test]
async fn polling_slows_down_while_the_push_channel_is_healthy() {
    use chatvault::scheduler::Scheduler;
    let server = SimServer::start(world()).await;
    let (store, _) = common::store().await;
    let mut src = source(&server);
    src.schedule = "* * * * * *".into(); // every second
    let (hub, _receivers) = PushHub::new(std::slice::from_ref(&src));
    let sink = hub.sink("yx").unwrap();
    sink.connected();
    sink.signal(PushSignal {
        conversation_id: "c".into(),
        kind: PushKind::Other,
        message_id: None,
        upstream_at: None,
    });
    assert!(hub.healthy("yx"));
    let scheduler = Scheduler::new(
        store.clone(),
        Metrics::new(),
        std::slice::from_ref(&src),
        one_source_at_a_time(),
    )
    .unwrap()
    .with_push(hub.clone(), 4);
    let state = scheduler.state();
    let (stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(scheduler.run(stop));
    tokio::time::sleep(Duration::from_millis(8_500)).await;
    stop_tx.send(true).unwrap();
    task.await.unwrap();
    let s = state.read().unwrap()["yx"].clone();
    // 8 ticks: every 4th polls
    assert!(s.ticks_left_to_push >= 5, "{s:?}");
    assert!((1..=3).contains(&s.runs), "{s:?}");
    let polls = common::count(
        &store,
        "SELECT count(*) FROM archive.sync_runs WHERE trigger = 'poll'",
    )
    .await;
    assert_eq!(polls as u64, s.runs);
}

/// Polls of a quiet Yunxin app over `seconds` with a tick every second (`push_poll_factor`
/// 4), the copy channel started as the daemon starts it: `(ticks left to push, polls)`.
async fn quiet_copy_channel_polls(store: &Store, src: &SourceConfig, seconds: u64) -> (u64, u64) {
    use chatvault::scheduler::Scheduler;
    let (hub, realtime::Receivers(mut receivers)) = PushHub::new(std::slice::from_ref(src));
    let (stop_tx, stop) = watch::channel(false);
    let applier = tokio::spawn(realtime::apply(
        store.clone(),
        src.clone(),
        options(),
        hub.clone(),
        None,
        receivers.remove("yx").unwrap(),
        stop.clone(),
        None,
    ));
    let scheduler = Scheduler::new(
        store.clone(),
        Metrics::new(),
        std::slice::from_ref(src),
        one_source_at_a_time(),
    )
    .unwrap()
    .with_push(hub.clone(), 4);
    let state = scheduler.state();
    let task = tokio::spawn(scheduler.run(stop));
    tokio::time::sleep(Duration::from_millis(seconds * 1000 + 500)).await;
    stop_tx.send(true).unwrap();
    task.await.unwrap();
    applier.await.unwrap();
    let s = state.read().unwrap()["yx"].clone();
    (s.ticks_left_to_push, s.runs)
}

#[tokio::test]
async fn a_quiet_app_whose_copies_came_before_a_restart_is_polled_less_once_a_poll_finds_nothing() {
    let server = SimServer::start(world()).await;
    let (store, _) = common::store().await;
    let mut src = source(&server);
    src.schedule = "* * * * * *".into();
    // never a copy: no sign the copy URL is set up, so every tick polls
    let (quiet, polls) = quiet_copy_channel_polls(&store, &src, 6).await;
    assert_eq!(quiet, 0, "{polls} polls");
    assert!(polls >= 5, "{polls}");
    // a copy was applied by an earlier process
    store
        .start_run_with_trigger(&src.name, chatvault::store::RunTrigger::Push)
        .await
        .unwrap();
    let (quiet, polls) = quiet_copy_channel_polls(&store, &src, 8).await;
    // the first poll finds nothing new (the app is quiet): then every 4th tick polls
    assert!(quiet >= 5, "{quiet} quiet ticks, {polls} polls");
    assert!((1..=3).contains(&polls), "{polls}");
}

#[tokio::test]
async fn the_daemon_reports_its_channels_while_it_runs_and_as_down_when_it_stops() {
    let server = SimServer::start(world()).await;
    let (store, _) = common::store().await;
    let src = source(&server);
    store
        .register_source(&src.name, Platform::Yunxin)
        .await
        .unwrap();
    let (hub, _receivers) = PushHub::new(std::slice::from_ref(&src));
    let sink = hub.sink("yx").unwrap();
    sink.connected();
    sink.signal(PushSignal {
        conversation_id: "c".into(),
        kind: PushKind::NewMessage,
        message_id: None,
        upstream_at: None,
    });
    let (stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(realtime::report(
        store.clone(),
        hub.clone(),
        Duration::from_millis(50),
        stop,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reported = store.reported_push_states().await.unwrap()["yx"].clone();
    assert!(reported.connected && reported.healthy, "{reported:?}");
    assert_eq!(reported.pushes, 1);
    assert!(!reported.stale(chrono::Utc::now()));
    stop_tx.send(true).unwrap();
    task.await.unwrap();
    let reported = store.reported_push_states().await.unwrap()["yx"].clone();
    assert!(!reported.connected && !reported.healthy, "{reported:?}");
    assert_eq!(reported.last_error.as_deref(), Some("the daemon stopped"));
    assert_eq!(reported.pushes, 1);
}

#[tokio::test]
async fn a_copy_for_a_source_with_push_off_is_answered_503_and_applies_nothing() {
    let server = SimServer::start(world()).await;
    let (store, _) = common::store().await;
    let mut src = source(&server);
    src.push = false;
    let (hub, realtime::Receivers(receivers)) = PushHub::new(std::slice::from_ref(&src));
    assert!(receivers.is_empty() && hub.sink("yx").is_none());
    let (_stop, shutdown) = watch::channel(false);
    let state = ApiState::new(&store, Metrics::new())
        .with_token(Some(Secret::new(TOKEN)))
        .with_sources(vec![src.clone()])
        .with_push(hub);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(api::serve_on(
        listener,
        state,
        shutdown,
        Duration::from_secs(5),
    ));
    let (key, secret, owner, peer) = {
        let convs = two_conversations(&server);
        let a = &convs[0];
        let w = server.world();
        (
            w.app_key.clone(),
            w.app_secret.clone(),
            a.0.split('|').next().unwrap().to_string(),
            a.0.split('|').nth(2).unwrap().to_string(),
        )
    };
    let body = serde_json::json!({"eventType": "1", "convType": "PERSON",
        "fromAccount": peer, "to": owner, "msgidServer": "1",
        "msgTimestamp": now_ms().to_string()})
    .to_string();
    let headers = chatvault::sim::yunxin::copy_headers(
        &key,
        &secret,
        body.as_bytes(),
        now_ms(),
        CopySigning::Right,
    );
    let mut request = reqwest::Client::new().post(format!("{base}/hooks/yunxin/yx"));
    for (k, v) in headers {
        request = request.header(k, v);
    }
    let r = request.body(body).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.text().await.unwrap().contains("push = false"));
    let runs = common::count(&store, "SELECT count(*) FROM archive.sync_runs").await;
    assert_eq!(runs, 0, "nothing applied");
}
