//! TangSengDaoDao's push channel: `TsddConnector::listen` against the fake server's WuKongIM
//! gateway over a real TCP connection (key exchange, encrypted RECVs, RECVACK, PING/PONG),
//! read through a `PushSink` whose receiver the tests hold.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatvault::config::{PlatformConfig, Secret, SourceConfig, TsddAuth, TsddConfig};
use chatvault::connector::http::HttpClient;
use chatvault::connector::tangsengdaodao::push::Timing;
use chatvault::connector::tangsengdaodao::TsddConnector;
use chatvault::connector::{Connector, ConnectorError, DiscoverRequest};
use chatvault::model::SourceName;
use chatvault::push::{PushKind, PushSignal, PushSink};
use chatvault::sim::tangsengdaodao::{
    ChannelKey, SimServer, World, WorldSpec, GROUP, PERSON, TSDD_SYSTEM_UID,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

fn spec() -> WorldSpec {
    WorldSpec {
        seed: 11,
        users: 6,
        groups: 2,
        direct_chats: 3,
        messages: 60,
        ..WorldSpec::default()
    }
}

fn source(server: &SimServer, auth: TsddAuth) -> (SourceConfig, TsddConfig) {
    let cfg = TsddConfig {
        base_url: server.base_url(),
        auth,
        device_flag: 1,
        page_size: 100,
    };
    let src = SourceConfig {
        name: SourceName::new("push"),
        schedule: "0 */5 * * * *".into(),
        requests_per_second: 0.0,
        request_timeout: Duration::from_secs(5),
        enabled: true,
        push: true,
        platform: PlatformConfig::Tangsengdaodao(cfg.clone()),
    };
    (src, cfg)
}

fn password() -> TsddAuth {
    TsddAuth::Password {
        username: spec().me_username,
        password: Secret::new(spec().me_password),
    }
}

fn connector(server: &SimServer, auth: TsddAuth, timing: Timing) -> Arc<TsddConnector> {
    let (src, cfg) = source(server, auth);
    let http = HttpClient::new(0.0, Duration::from_secs(5)).unwrap();
    Arc::new(
        TsddConnector::new(&src, &cfg, http)
            .unwrap()
            .with_push_timing(timing),
    )
}

fn quick() -> Timing {
    Timing {
        ping_every: Duration::from_millis(100),
        pong_within: Duration::from_millis(300),
        connect_within: Duration::from_secs(5),
    }
}

struct Listening {
    sink: PushSink,
    signals: mpsc::Receiver<PushSignal>,
    task: JoinHandle<Result<(), ConnectorError>>,
}

fn listen(connector: &Arc<TsddConnector>) -> Listening {
    let (tx, signals) = mpsc::channel(64);
    let sink = PushSink::new(tx, Arc::default());
    let task = {
        let connector = connector.clone();
        let sink = sink.clone();
        tokio::spawn(async move { connector.listen(sink).await })
    };
    Listening {
        sink,
        signals,
        task,
    }
}

async fn until_connected(listening: &Listening) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !listening.sink.state().connected {
        assert!(
            !listening.task.is_finished(),
            "listen returned before connecting"
        );
        assert!(Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The next signal of `kind` for `conversation`, within 2 s (others are skipped).
async fn next_signal(
    listening: &mut Listening,
    kind: PushKind,
    conversation: &str,
) -> (PushSignal, Duration) {
    let started = Instant::now();
    loop {
        let left = Duration::from_secs(2).saturating_sub(started.elapsed());
        let signal = tokio::time::timeout(left, listening.signals.recv())
            .await
            .unwrap_or_else(|_| panic!("no {kind:?} signal for {conversation} within 2 s"))
            .expect("the sink is open");
        if signal.kind == kind && signal.conversation_id == conversation {
            return (signal, started.elapsed());
        }
    }
}

/// A person channel with someone other than the system account, and a group, of `me`.
fn channels(server: &SimServer) -> (ChannelKey, String, ChannelKey) {
    let world = server.world();
    let me = world.me().uid.clone();
    let person = world
        .channels()
        .iter()
        .map(|c| c.key().clone())
        .find(|k| {
            let peer = k.id_for(&me);
            k.channel_type == PERSON
                && world.is_member(k, &me)
                && peer != TSDD_SYSTEM_UID
                && world.user(&peer).is_some()
        })
        .expect("a person channel");
    let peer = person.id_for(&me);
    let group = world
        .channels()
        .iter()
        .map(|c| c.key().clone())
        .find(|k| k.channel_type == GROUP && world.is_member(k, &me))
        .expect("a group the account is in");
    (person, peer, group)
}

/// The conversation ids the connector itself lists.
async fn discovered(connector: &TsddConnector) -> Vec<String> {
    let discovery = connector
        .discover(DiscoverRequest {
            known: &[],
            state: None,
            full: true,
        })
        .await
        .expect("discovery");
    discovery
        .conversations
        .into_iter()
        .map(|c| c.conversation_id)
        .collect()
}

#[tokio::test]
async fn new_messages_edits_recalls_and_reactions_arrive_as_signals_for_the_connectors_conversation(
) {
    let server = SimServer::start(World::generate(&spec())).await;
    let connector = connector(&server, password(), Timing::default());
    let mut listening = listen(&connector);
    until_connected(&listening).await;
    let ids = discovered(&connector).await;
    let (person, peer, group) = channels(&server);
    let me = server.world().me().uid.clone();
    let person_id = person.id_for(&me);
    let group_id = group.id_for(&me);
    assert!(ids.contains(&person_id), "{person_id} not in {ids:?}");
    assert!(ids.contains(&group_id), "{group_id} not in {ids:?}");

    // a new message from the peer, and one the account sends itself from another device
    let from_peer =
        server
            .world()
            .post_message(&person, &peer, json!({"type": 1, "content": "推送 1"}));
    let (signal, lag) = next_signal(&mut listening, PushKind::NewMessage, &person_id).await;
    assert_eq!(signal.message_id, Some(from_peer.message_id.to_string()));
    assert!(signal.upstream_at.is_some());
    assert!(lag < Duration::from_secs(2));
    let own = server
        .world()
        .post_message(&person, &me, json!({"type": 1, "content": "推送 2"}));
    let (signal, _) = next_signal(&mut listening, PushKind::NewMessage, &person_id).await;
    assert_eq!(signal.message_id, Some(own.message_id.to_string()));

    // a group message from a member
    let member = {
        let world = server.world();
        world
            .group(&group.fake_id)
            .and_then(|g| g.members.iter().find(|m| **m != me).cloned())
            .expect("another member")
    };
    let in_group =
        server
            .world()
            .post_message(&group, &member, json!({"type": 1, "content": "群里"}));
    let (signal, _) = next_signal(&mut listening, PushKind::NewMessage, &group_id).await;
    assert_eq!(signal.message_id, Some(in_group.message_id.to_string()));

    // an edit and a recall: the extra-sync command; a reaction: the reaction command
    assert!(server.world().edit(
        in_group.message_id,
        &json!({"type": 1, "content": "群里（改）"})
    ));
    let (signal, _) = next_signal(&mut listening, PushKind::Edit, &group_id).await;
    assert_eq!(signal.message_id, None);
    server.world().revoke(from_peer.message_id, &peer);
    next_signal(&mut listening, PushKind::Edit, &person_id).await;
    server.world().toggle_reaction(own.message_id, &peer, "👍");
    next_signal(&mut listening, PushKind::Reaction, &person_id).await;

    // every RECV was acknowledged on this connection
    let im = server.faults();
    let deadline = Instant::now() + Duration::from_secs(2);
    while im.im().recvacks() < im.im().pushes() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(im.im().pushes() >= 6, "pushes: {}", im.im().pushes());
    assert_eq!(im.im().recvacks(), im.im().pushes());
    assert!(listening.sink.state().pushes >= 6);
    listening.task.abort();
}

#[tokio::test]
async fn a_connection_dropped_mid_stream_returns_with_a_reason_and_the_next_one_pushes_again() {
    let server = SimServer::start(World::generate(&spec())).await;
    let connector = connector(&server, password(), quick());
    let listening = listen(&connector);
    until_connected(&listening).await;
    server.faults().im().drop_connections();
    let result = tokio::time::timeout(Duration::from_secs(5), listening.task)
        .await
        .expect("listen returns when the connection drops")
        .unwrap();
    match result {
        Err(ConnectorError::Transient(why)) => assert!(why.contains("closed"), "{why}"),
        other => panic!("{other:?}"),
    }
    let state = listening.sink.state();
    assert!(!state.connected);
    assert!(state.last_error.unwrap().contains("closed"));

    // the engine listens again: a new connection, and pushes flow
    let mut again = listen(&connector);
    until_connected(&again).await;
    assert_eq!(server.faults().im().connections(), 2);
    let (person, peer, _) = channels(&server);
    let me = server.world().me().uid.clone();
    server.world().post_message(
        &person,
        &peer,
        json!({"type": 1, "content": "after the drop"}),
    );
    next_signal(&mut again, PushKind::NewMessage, &person.id_for(&me)).await;
    again.task.abort();
}

#[tokio::test]
async fn a_server_that_stops_answering_pings_is_a_dropped_connection() {
    let server = SimServer::start(World::generate(&spec())).await;
    let connector = connector(&server, password(), quick());
    let listening = listen(&connector);
    until_connected(&listening).await;
    // a few heartbeats are answered: the connection stays up
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!listening.task.is_finished());
    // every 100 ms for 400 ms: the gateway counted them (the benchmark's keepalive count)
    let pings = server.faults().im().pings();
    assert!((2..=6).contains(&pings), "{pings} PINGs");
    server.faults().im().mute_pongs(true);
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(5), listening.task)
        .await
        .expect("listen returns")
        .unwrap();
    match result {
        Err(ConnectorError::Transient(why)) => assert!(why.contains("PONG"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_refused_token_is_unauthorized_and_never_shown() {
    let server = SimServer::start(World::generate(&spec())).await;
    server.faults().im().refuse_tokens(true);
    let connector = connector(&server, password(), quick());
    let listening = listen(&connector);
    let result = tokio::time::timeout(Duration::from_secs(5), listening.task)
        .await
        .expect("listen returns")
        .unwrap();
    let Err(ConnectorError::Unauthorized(why)) = result else {
        panic!("{result:?}")
    };
    assert!(why.contains("reason 2"), "{why}");
    assert!(!why.contains(&spec().me_password));
    assert_eq!(server.faults().im().refused(), 1);
    assert!(!listening.sink.state().connected);

    // a made-up token (no uid known with token-only auth) is refused before any connection
    let token_only = connector_with_token(&server, "not-a-token");
    let listening = listen(&token_only);
    let result = listening.task.await.unwrap();
    match result {
        Err(ConnectorError::Permanent(why)) => {
            assert!(why.contains("uid"), "{why}");
            assert!(!why.contains("not-a-token"));
        }
        other => panic!("{other:?}"),
    }
}

fn connector_with_token(server: &SimServer, token: &str) -> Arc<TsddConnector> {
    connector(server, TsddAuth::Token(Secret::new(token)), quick())
}

#[tokio::test]
async fn a_push_that_cannot_be_read_is_acknowledged_skipped_and_the_next_one_arrives() {
    let server = SimServer::start(World::generate(&spec())).await;
    let connector = connector(&server, password(), quick());
    let mut listening = listen(&connector);
    until_connected(&listening).await;
    let (person, peer, _) = channels(&server);
    let me = server.world().me().uid.clone();
    let person_id = person.id_for(&me);
    server.faults().im().tamper_next(1);
    let spoiled =
        server
            .world()
            .post_message(&person, &peer, json!({"type": 1, "content": "spoiled"}));
    let good = server
        .world()
        .post_message(&person, &peer, json!({"type": 1, "content": "good"}));
    let (signal, _) = next_signal(&mut listening, PushKind::NewMessage, &person_id).await;
    assert_eq!(signal.message_id, Some(good.message_id.to_string()));
    assert_ne!(signal.message_id, Some(spoiled.message_id.to_string()));
    assert!(listening.signals.try_recv().is_err());
    let im = server.faults();
    let deadline = Instant::now() + Duration::from_secs(2);
    while im.im().recvacks() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(im.im().pushes(), 2);
    assert_eq!(
        im.im().recvacks(),
        2,
        "the spoiled RECV is acknowledged too"
    );
    assert!(
        !listening.task.is_finished(),
        "one bad push never ends the channel"
    );
    assert!(listening.sink.state().connected);
    listening.task.abort();
}
