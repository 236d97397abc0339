//! Yunhu's push channel: `YunhuConnector::listen` against the fake's WebSocket over a real
//! connection (JSON login and heartbeats out, protobuf frames in), read through a
//! `PushSink` whose receiver the test holds.

use std::sync::Arc;
use std::time::Duration;

use chatvault::config::{PlatformConfig, Secret, SourceConfig, YunhuConfig};
use chatvault::connector::http::HttpClient;
use chatvault::connector::yunhu::push::{device_id, PushTiming, PLATFORM};
use chatvault::connector::yunhu::YunhuConnector;
use chatvault::connector::{Connector, ConnectorError, DiscoverRequest};
use chatvault::model::SourceName;
use chatvault::push::{PushKind, PushSignal, PushSink};
use chatvault::sim::yunhu::{SimServer, World, WorldSpec, GROUP, USER};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

fn spec() -> WorldSpec {
    WorldSpec {
        seed: 23,
        users: 6,
        groups: 2,
        bots: 1,
        direct_chats: 3,
        messages: 120,
        unlisted_chats: 0,
        late_joined_groups: 0,
        ..WorldSpec::default()
    }
}

fn timing() -> PushTiming {
    PushTiming {
        heartbeat_every: Duration::from_millis(200),
        ack_timeout: Duration::from_millis(1_000),
        login_timeout: Duration::from_secs(5),
    }
}

fn connector(server: &SimServer, token: &str) -> Arc<YunhuConnector> {
    connector_at(server, token, &server.ws_url())
}

fn connector_at(server: &SimServer, token: &str, ws_url: &str) -> Arc<YunhuConnector> {
    let cfg = YunhuConfig {
        base_url: server.base_url(),
        token: Secret::new(token),
        rescan_messages: 0,
        rescan_days: 0,
        rescan_every_minutes: 0,
        ws_url: ws_url.to_string(),
    };
    let source = SourceConfig {
        name: SourceName::new("y"),
        schedule: "0 */5 * * * *".into(),
        requests_per_second: 0.0,
        request_timeout: Duration::from_secs(5),
        enabled: true,
        push: true,
        platform: PlatformConfig::Yunhu(cfg.clone()),
    };
    let http = HttpClient::new(0.0, Duration::from_secs(5)).unwrap();
    Arc::new(
        YunhuConnector::new(&source, &cfg, http)
            .unwrap()
            .with_push_timing(timing()),
    )
}

struct Listening {
    sink: PushSink,
    signals: mpsc::Receiver<PushSignal>,
    task: JoinHandle<Result<(), ConnectorError>>,
}

fn listen(conn: &Arc<YunhuConnector>) -> Listening {
    let (tx, signals) = mpsc::channel(64);
    let sink = PushSink::new(tx, Arc::default());
    let task = tokio::spawn({
        let conn = conn.clone();
        let sink = sink.clone();
        async move { conn.listen(sink).await }
    });
    Listening {
        sink,
        signals,
        task,
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn next_signal(l: &mut Listening) -> PushSignal {
    tokio::time::timeout(WAIT, l.signals.recv())
        .await
        .expect("a push within the wait")
        .expect("the sink is open")
}

/// The conversation ids the connector's discovery gives.
async fn discovered(conn: &YunhuConnector) -> Vec<String> {
    let found = conn
        .discover(DiscoverRequest {
            known: &[],
            state: None,
            full: true,
        })
        .await
        .unwrap();
    found
        .conversations
        .into_iter()
        .map(|c| c.conversation_id)
        .collect()
}

/// A group and a private chat, each with a member other than the account.
fn chats(server: &SimServer) -> ((String, String), (String, String)) {
    let world = server.world();
    let pick = |chat_type: i64| {
        let chat = world
            .chats
            .iter()
            .find(|c| c.chat_type == chat_type)
            .unwrap();
        let other = chat.members.iter().find(|p| p.id != world.me.id).unwrap();
        (chat.chat_id.clone(), other.id.clone())
    };
    (pick(GROUP), pick(USER))
}

#[tokio::test]
async fn login_heartbeats_and_each_change_as_a_signal_for_the_connectors_conversation() {
    let spec = spec();
    let server = SimServer::start(World::generate(&spec)).await;
    let conn = connector(&server, &spec.token);
    let ids = discovered(&conn).await;
    let mut l = listen(&conn);
    until("connected", || l.sink.state().connected).await;

    let push = server.faults().push;
    let me = server.world().me.id.clone();
    let logins = push.logins();
    assert_eq!(logins.len(), 1, "{logins:?}");
    assert!(logins[0].accepted, "{logins:?}");
    assert_eq!(logins[0].user_id, me);
    assert_eq!(logins[0].platform, PLATFORM);
    assert_eq!(logins[0].device_id, device_id("y", &me));
    until("heartbeats go on", || push.heartbeats() >= 3).await;

    let ((group, member), (direct, peer)) = chats(&server);
    assert!(ids.contains(&group) && ids.contains(&direct), "{ids:?}");

    // a new group message
    let id = server.world().post_text(&group, &member, "新消息").unwrap();
    let s = next_signal(&mut l).await;
    assert_eq!(
        (s.conversation_id.as_str(), s.kind, s.message_id.as_deref()),
        (group.as_str(), PushKind::NewMessage, Some(id.as_str()))
    );
    assert!(s.upstream_at.is_some());

    // a private message is pushed with the account's own id as chat_id: keyed by the peer
    let dm = server.world().post_text(&direct, &peer, "私聊").unwrap();
    let s = next_signal(&mut l).await;
    assert_eq!(
        (s.conversation_id.as_str(), s.kind, s.message_id.as_deref()),
        (direct.as_str(), PushKind::NewMessage, Some(dm.as_str()))
    );

    // an edit push names no sender: placed by the message seen on this connection
    assert!(server.world().edit_text(&dm, "私聊（改）"));
    let s = next_signal(&mut l).await;
    assert_eq!(
        (s.conversation_id.as_str(), s.kind, s.message_id.as_deref()),
        (direct.as_str(), PushKind::Edit, Some(dm.as_str()))
    );

    // an edit of an older group message
    let old = {
        let world = server.world();
        let chat = world.chat(&group).unwrap();
        chat.messages
            .iter()
            .find(|m| m.content_type == 1 && m.recall_time == 0 && m.msg_id != id)
            .unwrap()
            .msg_id
            .clone()
    };
    assert!(server.world().edit_text(&old, "改过"));
    let s = next_signal(&mut l).await;
    assert_eq!(
        (s.conversation_id.as_str(), s.kind, s.message_id.as_deref()),
        (group.as_str(), PushKind::Edit, Some(old.as_str()))
    );

    // recalls, in the group and in the private chat
    assert!(server.world().recall(&id));
    let s = next_signal(&mut l).await;
    assert_eq!(
        (s.conversation_id.as_str(), s.kind, s.message_id.as_deref()),
        (group.as_str(), PushKind::Recall, Some(id.as_str()))
    );
    assert!(server.world().recall(&dm));
    let s = next_signal(&mut l).await;
    assert_eq!(
        (s.conversation_id.as_str(), s.kind, s.message_id.as_deref()),
        (direct.as_str(), PushKind::Recall, Some(dm.as_str()))
    );

    for s in [&group, &direct] {
        assert!(ids.contains(s));
    }
    let state = l.sink.state();
    assert_eq!(state.pushes, 6);
    assert!(state.connected);
    assert!(!l.task.is_finished());
    l.task.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn a_connection_dropped_mid_stream_returns_with_a_reason_and_reconnects() {
    let spec = spec();
    let server = SimServer::start(World::generate(&spec)).await;
    let conn = connector(&server, &spec.token);
    let mut l = listen(&conn);
    until("connected", || l.sink.state().connected).await;
    let ((group, member), _) = chats(&server);
    server.world().post_text(&group, &member, "before").unwrap();
    assert_eq!(next_signal(&mut l).await.kind, PushKind::NewMessage);

    server.faults().push.drop_connections();
    let ended = tokio::time::timeout(WAIT, &mut l.task)
        .await
        .expect("listen returns when the connection drops")
        .unwrap();
    let err = ended.expect_err("a dropped connection is an error with a reason");
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
    assert!(err.to_string().contains("push channel"), "{err}");
    let state = l.sink.state();
    assert!(!state.connected);
    assert_eq!(state.last_error.as_deref(), Some(err.to_string().as_str()));

    // the engine's reconnect: the same sink, a new listen
    let sink = l.sink.clone();
    let again = tokio::spawn({
        let conn = conn.clone();
        async move { conn.listen(sink).await }
    });
    until("connected again", || l.sink.state().connected).await;
    assert_eq!(l.sink.state().reconnects, 1);
    let logins = server.faults().push.logins();
    assert_eq!(logins.len(), 2);
    assert_eq!(
        logins[0].device_id, logins[1].device_id,
        "the same device each time"
    );
    server.world().post_text(&group, &member, "after").unwrap();
    assert_eq!(next_signal(&mut l).await.kind, PushKind::NewMessage);
    again.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn heartbeats_left_unanswered_end_the_connection() {
    let spec = spec();
    let server = SimServer::start(World::generate(&spec)).await;
    let conn = connector(&server, &spec.token);
    let mut l = listen(&conn);
    until("connected", || l.sink.state().connected).await;
    server.faults().push.answer_heartbeats(false);
    let started = tokio::time::Instant::now();
    let ended = tokio::time::timeout(WAIT, &mut l.task)
        .await
        .expect("listen gives up on a silent server")
        .unwrap();
    let err = ended.unwrap_err();
    assert!(err.to_string().contains("heartbeat not answered"), "{err}");
    // within the acknowledgement timeout and a heartbeat or two
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(!l.sink.state().connected);
    // the fake still had the connection open: the client ended it
    until("the client closed", || {
        server.faults().push.open_connections() == 0
    })
    .await;
    server.shutdown().await;
}

#[tokio::test]
async fn a_garbage_frame_is_skipped_and_the_channel_goes_on() {
    let spec = spec();
    let server = SimServer::start(World::generate(&spec)).await;
    let conn = connector(&server, &spec.token);
    let mut l = listen(&conn);
    until("connected", || l.sink.state().connected).await;
    server.faults().push.send_garbage();
    server.faults().push.send_garbage();
    let ((group, member), _) = chats(&server);
    let id = server
        .world()
        .post_text(&group, &member, "still here")
        .unwrap();
    let s = next_signal(&mut l).await;
    assert_eq!(s.message_id.as_deref(), Some(id.as_str()));
    assert_eq!(l.sink.state().pushes, 1, "garbage is no signal");
    assert!(l.sink.state().connected);
    assert!(!l.task.is_finished());
    l.task.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn a_frame_past_the_bound_ends_the_connection_not_the_process() {
    let spec = spec();
    let server = SimServer::start(World::generate(&spec)).await;
    let conn = connector(&server, &spec.token);
    let mut l = listen(&conn);
    until("connected", || l.sink.state().connected).await;
    server.faults().push.send_oversized();
    let ended = tokio::time::timeout(WAIT, &mut l.task)
        .await
        .expect("listen ends on a frame past its bound")
        .unwrap();
    let err = ended.unwrap_err();
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
    assert!(err.to_string().contains("too long"), "{err}");
    assert!(!l.sink.state().connected);
    assert_eq!(l.sink.state().pushes, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_wrong_token_fails_as_unauthorized_without_showing_it() {
    let spec = spec();
    let server = SimServer::start(World::generate(&spec)).await;
    let token = "wrong-token-4f1c9a";
    let conn = connector(&server, token);
    let l = listen(&conn);
    let ended = tokio::time::timeout(WAIT, l.task).await.unwrap().unwrap();
    let err = ended.unwrap_err();
    assert!(matches!(err, ConnectorError::Unauthorized(_)), "{err:?}");
    assert!(!err.to_string().contains(token), "{err}");
    assert!(!format!("{conn:?}").contains(token));
    let state = l.sink.state();
    assert!(!state.connected);
    assert!(!state.last_error.unwrap().contains(token));
    assert!(
        server.faults().push.logins().is_empty(),
        "no login attempted"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_login_the_server_refuses_fails_as_unauthorized() {
    // the token is good for HTTP, but the fake's WebSocket no longer takes it (a token
    // revoked between the two requests)
    let spec = spec();
    let server = SimServer::start(World::generate(&spec)).await;
    let conn = connector(&server, &spec.token);
    server.faults().push.refuse_logins(true);
    let l = listen(&conn);
    let ended = tokio::time::timeout(WAIT, l.task).await.unwrap().unwrap();
    let err = ended.unwrap_err();
    assert!(matches!(err, ConnectorError::Unauthorized(_)), "{err:?}");
    assert!(err.to_string().contains("login refused"), "{err}");
    assert!(!err.to_string().contains(&spec.token));
    let logins = server.faults().push.logins();
    assert_eq!(logins.len(), 1);
    assert!(!logins[0].accepted);
    server.shutdown().await;
}

#[tokio::test]
async fn a_heartbeat_that_overtook_the_login_is_not_a_refusal() {
    let spec = spec();
    let server = SimServer::start(World::generate(&spec)).await;
    server.faults().push.refuse_heartbeats(1);
    let conn = connector(&server, &spec.token);
    let l = listen(&conn);
    until("connected", || l.sink.state().connected).await;
    assert!(server.faults().push.heartbeats() >= 2);
    assert!(!l.task.is_finished());
    l.task.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn a_tls_handshake_that_fails_is_a_transient_error() {
    // a wss:// endpoint that accepts TCP and closes it: the TLS client is set up (no
    // missing crypto provider) and its failure is an error to retry, not a panic
    let spec = spec();
    let server = SimServer::start(World::generate(&spec)).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let closer = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    let conn = connector_at(&server, &spec.token, &format!("wss://127.0.0.1:{port}/ws"));
    let l = listen(&conn);
    let ended = tokio::time::timeout(WAIT, l.task).await.unwrap().unwrap();
    let err = ended.unwrap_err();
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
    assert!(err.to_string().contains("cannot connect"), "{err}");
    assert!(!l.sink.state().connected);
    closer.abort();
    server.shutdown().await;
}

#[tokio::test]
async fn a_change_reaches_the_sink_well_within_two_seconds() {
    let spec = spec();
    let server = SimServer::start(World::generate(&spec)).await;
    let conn = connector(&server, &spec.token);
    let mut l = listen(&conn);
    until("connected", || l.sink.state().connected).await;
    let ((group, member), _) = chats(&server);
    let mut lags = Vec::new();
    for i in 0..100 {
        let posted = tokio::time::Instant::now();
        let id = server
            .world()
            .post_text(&group, &member, &format!("m{i}"))
            .unwrap();
        let s = next_signal(&mut l).await;
        lags.push(posted.elapsed());
        assert_eq!(s.message_id.as_deref(), Some(id.as_str()));
    }
    lags.sort();
    let (p50, p99) = (lags[49], lags[98]);
    eprintln!("yunhu push, change to signal: p50 {p50:?}, p99 {p99:?}");
    assert!(p99 < Duration::from_secs(2), "p99 {p99:?}");
    l.task.abort();
    server.shutdown().await;
}

/// `push = false`: the daemon's push side opens no channel for the source (the fake sees no
/// login and no connection), and reports no channel; with `push = true` the same start logs in.
#[tokio::test]
async fn a_source_with_push_off_opens_no_channel() {
    let server = SimServer::start(World::generate(&spec())).await;
    let store = chatvault::store::Store::from_pool(chatvault::pg::testing::fresh_pool().await);
    store.migrate().await.unwrap();
    for push in [false, true] {
        let source = SourceConfig {
            name: SourceName::new("y"),
            schedule: "0 */5 * * * *".into(),
            requests_per_second: 0.0,
            request_timeout: Duration::from_secs(5),
            enabled: true,
            push,
            platform: PlatformConfig::Yunhu(YunhuConfig {
                base_url: server.base_url(),
                token: Secret::new(&spec().token),
                rescan_messages: 0,
                rescan_days: 0,
                rescan_every_minutes: 0,
                ws_url: server.ws_url(),
            }),
        };
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let (hub, mut tasks) = chatvault::realtime::start(
            &store,
            std::slice::from_ref(&source),
            &chatvault::sync::SyncOptions::default(),
            None,
            chatvault::realtime::connector_factory(None),
            stop,
        );
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(3) && server.faults().push.logins().is_empty()
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let logins = server.faults().push.logins().len();
        if push {
            assert_eq!(logins, 1, "push on logs in");
        } else {
            assert_eq!(logins, 0, "push off must not log in");
            assert_eq!(server.faults().push.open_connections(), 0);
            assert!(hub.sink("y").is_none());
            assert!(hub.statuses().is_empty());
        }
        stop_tx.send(true).unwrap();
        while tasks.join_next().await.is_some() {}
    }
}
