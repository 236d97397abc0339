//! Cursor arithmetic, and the connector over real HTTP against a tiny in-test server.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;

use super::*;
use crate::config::PlatformConfig;

// ---- cursor arithmetic -------------------------------------------------------------

fn seen(seqs: &[u64]) -> BTreeSet<u64> {
    seqs.iter().copied().collect()
}

#[test]
fn window_bounds_follow_the_cursor() {
    let w = SeqWindow::after(0, 100);
    assert_eq!((w.start, w.end, w.width), (1, 101, 100));
    let w = SeqWindow::after(250, 100);
    assert_eq!((w.start, w.end, w.width), (251, 351, 100));
}

#[test]
fn full_window_below_the_target_covers_its_width() {
    let all: Vec<u64> = (1..=100).collect();
    let out = SeqWindow::after(0, 100).outcome(1000, &seen(&all));
    assert_eq!(
        out,
        SeqWindowOutcome {
            next: 100,
            gaps: vec![]
        }
    );
}

#[test]
fn short_page_mid_history_is_covered_with_merged_gaps() {
    // seqs 101..=200 requested; 101-110 cleared, 150 and 151 filtered, 199-200 deleted
    let mut returned: Vec<u64> = (111..=149).collect();
    returned.extend(152..=198);
    let out = SeqWindow::after(100, 100).outcome(5000, &seen(&returned));
    assert_eq!(out.next, 200, "a short page is not the end");
    assert_eq!(out.gaps, vec![(101, 110), (150, 151), (199, 200)]);
}

#[test]
fn empty_window_is_one_gap() {
    let out = SeqWindow::after(100, 100).outcome(5000, &BTreeSet::new());
    assert_eq!(
        out,
        SeqWindowOutcome {
            next: 200,
            gaps: vec![(101, 200)]
        }
    );
}

#[test]
fn the_cursor_stops_at_the_target() {
    let out = SeqWindow::after(90, 100).outcome(95, &seen(&[91, 92, 95]));
    assert_eq!(
        out,
        SeqWindowOutcome {
            next: 95,
            gaps: vec![(93, 94)]
        }
    );
}

#[test]
fn new_arrivals_above_the_target_move_the_cursor_further() {
    let out = SeqWindow::after(90, 100).outcome(95, &seen(&[91, 92, 93, 94, 95, 96, 98]));
    assert_eq!(
        out,
        SeqWindowOutcome {
            next: 98,
            gaps: vec![(97, 97)]
        }
    );
}

#[test]
fn seqs_outside_the_window_do_not_move_the_cursor() {
    let out = SeqWindow::after(10, 5).outcome(100, &seen(&[3, 11, 12, 13, 14, 15, 40]));
    assert_eq!(
        out,
        SeqWindowOutcome {
            next: 15,
            gaps: vec![]
        }
    );
}

#[test]
fn cursors_carry_a_version() {
    assert_eq!(seq_cursor(7).0, json!({"v": 1, "seq": 7}));
    let source = SourceName::new("acme");
    assert_eq!(
        parse_seq_cursor(Some(&seq_cursor(7)), FEED_MESSAGES, &source).unwrap(),
        7
    );
    assert_eq!(parse_seq_cursor(None, FEED_MESSAGES, &source).unwrap(), 0);
    let e = parse_seq_cursor(
        Some(&Cursor(json!({"v": 2, "seq": 7}))),
        FEED_MESSAGES,
        &source,
    )
    .unwrap_err();
    assert!(matches!(e, ConnectorError::Permanent(_)));
}

#[test]
fn last_msg_seqs_lists_known_person_and_group_channels_with_their_cursor() {
    let known = vec![
        known("g_8f3a", ConversationType::Group, 2, Some(1542)),
        known("5ffd", ConversationType::Direct, 1, Some(1687)),
        known("cs1", ConversationType::Other, 3, Some(4)),
        known("new", ConversationType::Direct, 1, None),
        known("odd:id", ConversationType::Direct, 1, Some(3)),
    ];
    assert_eq!(last_msg_seqs(&known), "g_8f3a:2:1542|5ffd:1:1687");
}

#[test]
fn extras_sources_are_fresh_and_never_empty() {
    let a = extras_source("acme tsdd");
    let b = extras_source("acme tsdd");
    assert!(a.starts_with("chatvault-acme-tsdd-"), "{a}");
    assert_ne!(a, b);
    assert_eq!(device_id("acme", "u"), device_id("acme", "u"));
    assert!(device_id("acme", "u").starts_with("chatvault-"));
}

// ---- over HTTP -----------------------------------------------------------------

const PASSWORD: &str = "hunter2-very-secret";
const TOKEN: &str = "tok-0f9e8d7c6b5a";

#[derive(Clone, Debug)]
struct Recorded {
    path: String,
    token: Option<String>,
    body: Value,
}

type Responder = dyn Fn(&str, &Value) -> (u16, Vec<(&'static str, String)>, String) + Send + Sync;

#[derive(Clone)]
struct Fake {
    log: Arc<std::sync::Mutex<Vec<Recorded>>>,
    respond: Arc<Responder>,
}

impl Fake {
    fn requests(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }

    fn bodies(&self, path: &str) -> Vec<Value> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .map(|r| r.body)
            .collect()
    }
}

async fn handle(State(fake): State<Fake>, uri: Uri, headers: HeaderMap, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let path = uri.path().to_string();
    fake.log.lock().unwrap().push(Recorded {
        path: path.clone(),
        token: headers
            .get("token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: body.clone(),
    });
    let (status, extra_headers, text) = (fake.respond)(&path, &body);
    let mut response = (StatusCode::from_u16(status).unwrap(), text).into_response();
    for (name, value) in extra_headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

async fn serve(
    respond: impl Fn(&str, &Value) -> (u16, Vec<(&'static str, String)>, String) + Send + Sync + 'static,
) -> (String, Fake) {
    let fake = Fake {
        log: Arc::default(),
        respond: Arc::new(respond),
    };
    let app = Router::new().fallback(handle).with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/api/"), fake)
}

fn ok(body: Value) -> (u16, Vec<(&'static str, String)>, String) {
    (200, vec![], body.to_string())
}

fn connector(base_url: &str, auth: TsddAuth, page_size: u32) -> TsddConnector {
    let cfg = TsddConfig {
        base_url: base_url.to_string(),
        auth,
        device_flag: 1,
        page_size,
    };
    let source = SourceConfig {
        name: SourceName::new("acme-tsdd"),
        schedule: "0 */5 * * * *".into(),
        requests_per_second: 0.0,
        request_timeout: Duration::from_secs(5),
        enabled: true,
        push: true,
        platform: PlatformConfig::Tangsengdaodao(cfg.clone()),
    };
    let http = HttpClient::new(0.0, Duration::from_secs(5)).unwrap();
    TsddConnector::new(&source, &cfg, http).unwrap()
}

fn token_auth() -> TsddAuth {
    TsddAuth::Token(Secret::new(TOKEN))
}

fn conversation(id: &str, kind: ConversationType, channel_type: u8) -> ConversationObservation {
    ConversationObservation {
        conversation_id: id.into(),
        conversation_type: kind,
        name: None,
        metadata: json!({"channel_type": channel_type}),
    }
}

fn discover_request(known: &[KnownConversation]) -> DiscoverRequest<'_> {
    DiscoverRequest {
        known,
        state: None,
        full: false,
    }
}

fn known(
    id: &str,
    kind: ConversationType,
    channel_type: u8,
    seq: Option<u64>,
) -> KnownConversation {
    let mut cursors = BTreeMap::new();
    if let Some(seq) = seq {
        cursors.insert(FEED_MESSAGES.to_string(), seq_cursor(seq));
    }
    KnownConversation {
        conversation: conversation(id, kind, channel_type),
        cursors,
    }
}

fn request<'a>(
    conversation: &'a ConversationObservation,
    feed: &'a str,
    cursor: Option<&'a Cursor>,
    full: bool,
) -> FetchRequest<'a> {
    FetchRequest {
        conversation,
        feed,
        cursor,
        full,
        attempt: 0,
        changed: &[],
    }
}

fn msg(seq: u64) -> Value {
    json!({
        "message_id": 1824334157854015000u64 + seq,
        "message_idstr": (1824334157854015000u64 + seq).to_string(),
        "message_seq": seq, "client_msg_no": format!("c{seq}"),
        "from_uid": "u2", "channel_id": "g_9", "channel_type": 2,
        "timestamp": 1723790000 + seq, "payload": {"type": 1, "content": format!("m{seq}")},
        "signal_payload": "", "is_deleted": 0
    })
}

/// A group channel holding `seqs`, answering windows the way WuKongIM does
/// (docs/upstreams/tangsengdaodao.md, "Channel sync").
fn channel_sync(seqs: Vec<u64>) -> impl Fn(&Value) -> Value {
    move |body: &Value| {
        let start = body["start_message_seq"].as_u64().unwrap();
        let end = body["end_message_seq"].as_u64().unwrap();
        let limit = body["limit"].as_u64().unwrap() as usize;
        let messages: Vec<Value> = if start == 0 && end == 0 {
            seqs.iter()
                .rev()
                .take(limit)
                .rev()
                .map(|s| msg(*s))
                .collect()
        } else {
            seqs.iter()
                .filter(|s| **s >= start && **s < end)
                .take(limit)
                .map(|s| msg(*s))
                .collect()
        };
        json!({"start_message_seq": start, "end_message_seq": end, "pull_mode": 0, "more": 0,
               "messages": messages})
    }
}

#[tokio::test]
async fn password_login_sends_a_web_device_and_uses_the_token_afterwards() {
    let (base, fake) = serve(|path, _| match path {
        "/api/v1/user/login" => ok(json!({"uid": "me", "name": "Me", "token": TOKEN})),
        _ => ok(json!({"messages": []})),
    })
    .await;
    let auth = TsddAuth::Password {
        username: "008613800000000".into(),
        password: Secret::new(PASSWORD),
    };
    let c = connector(&base, auth, 100);
    let g = conversation("g_9", ConversationType::Group, 2);
    let e = c
        .fetch(request(&g, FEED_MESSAGES, None, false))
        .await
        .unwrap_err();
    assert!(
        matches!(e, ConnectorError::Unauthorized(_)),
        "not logged in yet: {e:?}"
    );

    c.login().await.unwrap();
    let login = &fake.bodies("/api/v1/user/login")[0];
    assert_eq!(login["username"], "008613800000000");
    assert_eq!(login["password"], PASSWORD);
    assert_eq!(login["flag"], 1);
    assert!(login["device"]["device_id"]
        .as_str()
        .unwrap()
        .starts_with("chatvault-"));
    assert_eq!(login["device"]["device_name"], "chatvault");

    c.fetch(request(&g, FEED_MESSAGES, None, false))
        .await
        .unwrap();
    let last = fake.requests().pop().unwrap();
    assert_eq!(last.token.as_deref(), Some(TOKEN));

    let debug = format!("{c:?}");
    assert!(
        !debug.contains(PASSWORD) && !debug.contains(TOKEN),
        "{debug}"
    );
}

#[tokio::test]
async fn bad_credentials_are_unauthorized_without_the_secret() {
    let (base, _fake) = serve(|_, _| {
        (
            400,
            vec![],
            json!({"msg": "密码不正确！", "status": 400}).to_string(),
        )
    })
    .await;
    let auth = TsddAuth::Password {
        username: "alice".into(),
        password: Secret::new(PASSWORD),
    };
    let c = connector(&base, auth, 100);
    let e = c.login().await.unwrap_err();
    assert!(matches!(e, ConnectorError::Unauthorized(_)), "{e:?}");
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("acme-tsdd"), "{shown}");
    assert!(!shown.contains(PASSWORD), "{shown}");
}

#[tokio::test]
async fn http_errors_are_classified_and_never_show_the_token() {
    let (base, _fake) = serve(|_, body| match body["channel_id"].as_str().unwrap() {
        "c401" => (401, vec![], json!({"msg": "请先登录"}).to_string()),
        "c429" => (429, vec![("retry-after", "12".into())], String::new()),
        "c503" => (503, vec![], String::new()),
        "c400" => (
            400,
            vec![],
            json!({"msg": "频道不存在", "status": 400}).to_string(),
        ),
        _ => (200, vec![], "{not json".into()),
    })
    .await;
    let c = connector(&base, token_auth(), 100);
    c.login().await.unwrap();
    let mut errors = Vec::new();
    for id in ["c401", "c429", "c503", "c400", "cbad"] {
        let g = conversation(id, ConversationType::Group, 2);
        errors.push(
            c.fetch(request(&g, FEED_REACTIONS, None, false))
                .await
                .unwrap_err(),
        );
    }
    assert!(matches!(errors[0], ConnectorError::Unauthorized(_)));
    assert!(matches!(
        errors[1],
        ConnectorError::RateLimited { retry_after: Some(d) } if d == Duration::from_secs(12)
    ));
    assert!(matches!(errors[2], ConnectorError::Transient(_)));
    assert!(matches!(&errors[3], ConnectorError::Permanent(m) if m.contains("频道不存在")));
    assert!(matches!(
        errors[4],
        ConnectorError::Decode { raw: Some(_), .. }
    ));
    for e in &errors {
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(TOKEN), "{shown}");
    }
    assert!(errors[3].to_string().contains("/v1/reaction/sync"));
}

#[tokio::test]
async fn unreachable_upstream_is_transient() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let c = connector(&format!("http://{addr}"), token_auth(), 100);
    let g = conversation("g_9", ConversationType::Group, 2);
    let e = c
        .fetch(request(&g, FEED_MESSAGES, None, false))
        .await
        .unwrap_err();
    assert!(matches!(e, ConnectorError::Transient(_)), "{e:?}");
}

#[tokio::test]
async fn discovery_maps_channels_and_remembers_their_targets() {
    let sync = channel_sync((1..=30).collect());
    let (base, fake) = serve(move |path, body| match path {
        "/api/v1/conversation/sync" => ok(json!({
            "uid": "me",
            "conversations": [
                {"channel_id": "g_9", "channel_type": 2, "unread": 2, "last_msg_seq": 30,
                 "timestamp": 1723790030, "version": 1723790030000000000u64, "recents": [msg(30)]},
                {"channel_id": "u2", "channel_type": 1, "last_msg_seq": 4, "timestamp": 1}
            ],
            "users": [{"uid": "u2", "name": "Ann", "category": "", "robot": 0}],
            "groups": [{"group_no": "g_9", "name": "team", "group_type": 0, "category": "",
                        "member_count": 3}],
            "channel_status": []
        })),
        _ => ok(sync(body)),
    })
    .await;
    let c = connector(&base, token_auth(), 50);
    c.login().await.unwrap();
    let known = vec![known("g_9", ConversationType::Group, 2, Some(20))];
    let d = c.discover(discover_request(&known)).await.unwrap();
    let sent = &fake.bodies("/api/v1/conversation/sync")[0];
    assert_eq!(
        sent,
        &json!({"version": 0, "msg_count": 1, "last_msg_seqs": "g_9:2:20", "device_uuid": ""})
    );
    assert!(d.unchanged.is_empty());
    assert_eq!(d.conversations.len(), 2);
    assert_eq!(d.conversations[0].name.as_deref(), Some("team"));
    assert_eq!(
        d.conversations[1].conversation_type,
        ConversationType::Direct
    );

    // the target comes from discovery: no probe, one window, done
    let cursor = seq_cursor(20);
    let f = c
        .fetch(request(
            &d.conversations[0],
            FEED_MESSAGES,
            Some(&cursor),
            false,
        ))
        .await
        .unwrap();
    let windows = fake.bodies("/api/v1/message/channel/sync");
    assert_eq!(windows.len(), 1);
    assert_eq!(windows[0]["start_message_seq"], 21);
    assert_eq!(windows[0]["end_message_seq"], 71);
    assert_eq!(windows[0]["pull_mode"], 1);
    assert_eq!(windows[0]["limit"], 50);
    assert_eq!(f.next_cursor, seq_cursor(30));
    assert!(f.done);
    assert_eq!(f.messages.len(), 10);
    let sender = f.messages[0]
        .header
        .as_ref()
        .unwrap()
        .sender_name
        .as_deref();
    assert_eq!(sender, Some("Ann"), "names learned in discovery");
}

#[tokio::test]
async fn message_paging_probes_walks_windows_and_reports_gaps() {
    // 1..=25 exist; 6..=8 filtered out upstream
    let seqs: Vec<u64> = (1..=25).filter(|s| !(6..=8).contains(s)).collect();
    let sync = channel_sync(seqs);
    let (base, fake) = serve(move |_, body| ok(sync(body))).await;
    let c = connector(&base, token_auth(), 10);
    c.login().await.unwrap();
    let g = conversation("g_9", ConversationType::Group, 2);

    let first = c
        .fetch(request(&g, FEED_MESSAGES, None, false))
        .await
        .unwrap();
    let bodies = fake.bodies("/api/v1/message/channel/sync");
    assert_eq!(
        bodies[0],
        json!({"channel_id": "g_9", "channel_type": 2, "start_message_seq": 0,
               "end_message_seq": 0, "limit": 1, "pull_mode": 0}),
        "the probe asks for the newest message"
    );
    assert_eq!(bodies[1]["start_message_seq"], 1);
    assert_eq!(bodies[1]["end_message_seq"], 11);
    assert_eq!(first.next_cursor, seq_cursor(10));
    assert!(!first.done);
    assert_eq!(first.messages.len(), 7);
    assert_eq!(first.gaps.len(), 1);
    assert_eq!((first.gaps[0].from_seq, first.gaps[0].to_seq), (6, 8));
    assert_eq!(first.gaps[0].conversation_id, "g_9");

    let second = c
        .fetch(request(&g, FEED_MESSAGES, Some(&first.next_cursor), false))
        .await
        .unwrap();
    assert_eq!(second.next_cursor, seq_cursor(20));
    assert!(!second.done && second.gaps.is_empty());
    let third = c
        .fetch(request(&g, FEED_MESSAGES, Some(&second.next_cursor), false))
        .await
        .unwrap();
    assert_eq!(third.next_cursor, seq_cursor(25));
    assert!(third.done);
    assert_eq!(
        fake.bodies("/api/v1/message/channel/sync").len(),
        4,
        "one probe only"
    );

    // caught up: only the probe of the new run, cursor unchanged
    c.discover(discover_request(&[])).await.ok();
    let before = fake.requests().len();
    let caught_up = c
        .fetch(request(&g, FEED_MESSAGES, Some(&third.next_cursor), false))
        .await
        .unwrap();
    assert!(caught_up.done);
    assert_eq!(caught_up.next_cursor, third.next_cursor);
    assert!(caught_up.messages.is_empty() && caught_up.gaps.is_empty());
    assert_eq!(fake.requests().len(), before + 1);
}

/// A `--full` pass gets no cursor from the engine and starts at seq 1; a cursor, once given,
/// is always followed (the fetch depends on the request and its cursor only, so a retried
/// or prefetched page is the same page).
#[tokio::test]
async fn a_full_pass_starts_from_no_cursor_and_a_given_cursor_is_always_followed() {
    let sync = channel_sync((1..=15).collect());
    let (base, fake) = serve(move |_, body| ok(sync(body))).await;
    let c = connector(&base, token_auth(), 10);
    c.login().await.unwrap();
    let g = conversation("g_9", ConversationType::Group, 2);
    let first = c
        .fetch(request(&g, FEED_MESSAGES, None, true))
        .await
        .unwrap();
    assert_eq!(
        fake.bodies("/api/v1/message/channel/sync")[1]["start_message_seq"],
        1
    );
    assert_eq!(first.next_cursor, seq_cursor(10));
    for _ in 0..2 {
        let second = c
            .fetch(request(&g, FEED_MESSAGES, Some(&first.next_cursor), true))
            .await
            .unwrap();
        assert_eq!(
            fake.bodies("/api/v1/message/channel/sync").last().unwrap()["start_message_seq"],
            11
        );
        assert!(second.done);
        assert_eq!(second.next_cursor, seq_cursor(15));
    }
    // the same first request again is the same first page
    let again = c
        .fetch(request(&g, FEED_MESSAGES, None, true))
        .await
        .unwrap();
    assert_eq!(again.next_cursor, first.next_cursor);
    assert_eq!(again.messages, first.messages);
}

#[tokio::test]
async fn non_member_group_window_is_a_covered_gap() {
    let (base, _fake) = serve(|_, body| {
        let start = body["start_message_seq"].as_u64().unwrap();
        if start == 0 {
            return ok(json!({"messages": [msg(40)]}));
        }
        let end = body["end_message_seq"].clone();
        ok(json!({"start_message_seq": end, "end_message_seq": end, "more": 0, "messages": []}))
    })
    .await;
    let c = connector(&base, token_auth(), 100);
    c.login().await.unwrap();
    let g = conversation("g_left", ConversationType::Group, 2);
    let f = c
        .fetch(request(&g, FEED_MESSAGES, None, false))
        .await
        .unwrap();
    assert!(f.done);
    assert_eq!(f.next_cursor, seq_cursor(40));
    assert_eq!((f.gaps[0].from_seq, f.gaps[0].to_seq), (1, 40));
    assert!(f.gaps[0].reason.contains("not a current member"));
}

#[tokio::test]
async fn a_malformed_record_is_quarantined_and_the_rest_of_the_page_maps() {
    let (base, _fake) = serve(|_, body| {
        if body["start_message_seq"] == 0 {
            return ok(json!({"messages": [msg(3)]}));
        }
        let mut bad = msg(2);
        bad["payload"] = json!("eyJ0eXBlIjoxfQ==");
        ok(json!({"messages": [msg(1), bad, msg(3)]}))
    })
    .await;
    let c = connector(&base, token_auth(), 100);
    c.login().await.unwrap();
    let g = conversation("g_9", ConversationType::Group, 2);
    let f = c
        .fetch(request(&g, FEED_MESSAGES, None, false))
        .await
        .unwrap();
    assert_eq!(f.messages.len(), 2);
    assert_eq!(f.quarantine.len(), 1);
    assert!(
        f.quarantine[0].reason.contains("payload"),
        "{}",
        f.quarantine[0].reason
    );
    assert_eq!(f.quarantine[0].raw["message_seq"], 2);
    assert!(f.gaps.is_empty(), "a quarantined message is not missing");
    assert_eq!(f.next_cursor, seq_cursor(3));
}

#[tokio::test]
async fn extras_start_at_version_one_under_a_fresh_source_and_page_on() {
    let (base, fake) = serve(|_, body| {
        let from = body["extra_version"].as_i64().unwrap();
        let limit = body["limit"].as_u64().unwrap();
        // a full page the first time, then a short one
        let count = if from == 1 { limit } else { 1 };
        let rows: Vec<Value> = (0..count)
            .map(|i| {
                json!({"message_id": 1824334157854015488u64 + i,
                       "message_id_str": (1824334157854015488u64 + i).to_string(),
                       "readed_count": 1, "extra_version": from + 1 + i as i64})
            })
            .collect();
        ok(Value::Array(rows))
    })
    .await;
    let c = connector(&base, token_auth(), 100);
    c.login().await.unwrap();
    let g = conversation("g_9", ConversationType::Group, 2);

    let first = c
        .fetch(request(&g, FEED_EXTRAS, None, false))
        .await
        .unwrap();
    let sent = fake.bodies("/api/v1/message/extra/sync");
    assert_eq!(sent[0]["extra_version"], 1, "0 would mean the newest rows");
    assert_eq!(sent[0]["limit"], 1000);
    let source = sent[0]["source"].as_str().unwrap().to_string();
    assert!(source.starts_with("chatvault-acme-tsdd-"), "{source}");
    assert!(!first.done);
    assert_eq!(first.messages.len(), 1000);
    assert_eq!(
        first.next_cursor.0,
        json!({"v": 1, "version": 1001, "source": format!("{source}-b")})
    );

    let second = c
        .fetch(request(&g, FEED_EXTRAS, Some(&first.next_cursor), false))
        .await
        .unwrap();
    let sent = fake.bodies("/api/v1/message/extra/sync");
    assert_eq!(sent[1]["extra_version"], 1001);
    assert_eq!(
        sent[1]["source"],
        format!("{source}-b"),
        "each page goes out under the other name of the pair"
    );
    assert!(second.done);
    assert_eq!(second.next_cursor.0["source"], source.as_str());

    // --full (no cursor): a new checkpoint name, from version 1 again
    c.discover(discover_request(&[])).await.ok();
    c.fetch(request(&g, FEED_EXTRAS, None, true)).await.unwrap();
    let sent = fake.bodies("/api/v1/message/extra/sync");
    assert_eq!(sent[2]["extra_version"], 1);
    assert_ne!(sent[2]["source"], source.as_str());
}

#[tokio::test]
async fn reactions_start_at_seq_one_and_follow_the_max_seq() {
    let (base, fake) = serve(|_, body| {
        let from = body["seq"].as_i64().unwrap();
        if from > 1 {
            return ok(json!([]));
        }
        ok(json!([
            {"message_id": "1824334157854015488", "channel_id": "g_9", "channel_type": 2,
             "seq": 1000001, "uid": "u3", "name": "Ann", "emoji": "👍", "is_deleted": 0,
             "created_at": "2024-08-16 14:35:33"},
            {"message_id": "1824334157854015488", "channel_id": "g_9", "channel_type": 2,
             "seq": 1000007, "uid": "u3", "name": "Ann", "emoji": "👍", "is_deleted": 1,
             "created_at": "2024-08-16 14:35:33"}
        ]))
    })
    .await;
    let c = connector(&base, token_auth(), 100);
    c.login().await.unwrap();
    let g = conversation("g_9", ConversationType::Group, 2);
    let f = c
        .fetch(request(&g, FEED_REACTIONS, None, false))
        .await
        .unwrap();
    let sent = fake.bodies("/api/v1/reaction/sync");
    assert_eq!(
        sent[0],
        json!({"channel_id": "g_9", "channel_type": 2, "seq": 1, "limit": 1000})
    );
    assert!(f.done);
    assert_eq!(f.next_cursor, seq_cursor(1000007));
    assert_eq!(f.reactions.len(), 2);
    assert!(f.reactions[0].present);
    assert!(!f.reactions[1].present, "a removal row");

    let again = c
        .fetch(request(&g, FEED_REACTIONS, Some(&f.next_cursor), false))
        .await
        .unwrap();
    assert_eq!(fake.bodies("/api/v1/reaction/sync")[1]["seq"], 1000007);
    assert_eq!(again.next_cursor, f.next_cursor);
    assert!(again.done && again.reactions.is_empty());
}

#[test]
fn feeds_are_messages_then_changes() {
    let c = connector("http://127.0.0.1:9", token_auth(), 100);
    let g = conversation("g_9", ConversationType::Group, 2);
    assert_eq!(c.feeds(&g), vec!["messages", "extras", "reactions"]);
    let debug = format!("{c:?}");
    assert!(!debug.contains(TOKEN), "{debug}");
}

#[test]
fn device_flag_zero_is_refused() {
    let cfg = TsddConfig {
        base_url: "http://127.0.0.1:9".into(),
        auth: token_auth(),
        device_flag: 0,
        page_size: 100,
    };
    let source = SourceConfig {
        name: SourceName::new("acme-tsdd"),
        schedule: "0 */5 * * * *".into(),
        requests_per_second: 0.0,
        request_timeout: Duration::from_secs(5),
        enabled: true,
        push: true,
        platform: PlatformConfig::Tangsengdaodao(cfg.clone()),
    };
    let http = HttpClient::new(0.0, Duration::from_secs(5)).unwrap();
    assert!(TsddConnector::new(&source, &cfg, http).is_err());
}

// ---- against the fake server -------------------------------------------------------

mod against_the_fake {
    use super::*;
    use crate::sim::tangsengdaodao::{ChannelKey, Group, SimServer, User, World};

    const ME: &str = "u_me";
    const PEER: &str = "u_peer";
    const GROUP: &str = "g_team";

    fn user(uid: &str, username: &str, password: &str) -> User {
        User {
            uid: uid.into(),
            name: format!("name of {uid}"),
            username: username.into(),
            password: password.into(),
            sex: 0,
            short_no: String::new(),
            zone: String::new(),
            phone: String::new(),
            category: String::new(),
        }
    }

    /// The archiving user and a peer in one group holding `n` text messages.
    fn world(n: usize) -> World {
        world_with(n, &[])
    }

    /// [`world`] where the messages at `poisoned` seqs quote with a numeric `message_id`, on
    /// which the real handler panics.
    fn world_with(n: usize, poisoned: &[usize]) -> World {
        let mut w = World::new(user(ME, "me", "pw-me"), 3);
        w.add_user(user(PEER, "peer", "pw-peer"));
        w.add_group(Group {
            group_no: GROUP.into(),
            name: "team".into(),
            owner: PEER.into(),
            members: [ME.to_string(), PEER.to_string()].into_iter().collect(),
            saved: false,
            notice: String::new(),
            created_at: 1_700_000_000,
        });
        for i in 1..=n {
            let payload = if poisoned.contains(&i) {
                json!({"type": 1, "content": "quoting", "reply": {"message_id": 42, "from_uid": PEER}})
            } else {
                json!({"type": 1, "content": format!("m{i}")})
            };
            w.post_message(&ChannelKey::group(GROUP), PEER, payload);
        }
        w
    }

    fn password() -> TsddAuth {
        TsddAuth::Password {
            username: "me".into(),
            password: Secret::new("pw-me"),
        }
    }

    fn group() -> ConversationObservation {
        conversation(GROUP, ConversationType::Group, 2)
    }

    fn attempt(mut r: FetchRequest<'_>, attempt: u32) -> FetchRequest<'_> {
        r.attempt = attempt;
        r
    }

    fn gap_ranges(f: &Fetched) -> Vec<(i64, i64, bool)> {
        f.gaps
            .iter()
            .map(|g| (g.from_seq, g.to_seq, g.reason == PANIC_REASON))
            .collect()
    }

    #[tokio::test]
    async fn a_window_that_keeps_panicking_is_narrowed_to_the_seqs_it_cannot_serve() {
        let server = SimServer::start(world_with(60, &[23, 41, 42])).await;
        let c = connector(&server.base_url(), password(), 100);
        c.login().await.unwrap();
        let g = group();

        // the first failures of a window skip nothing: they are transient
        for n in 0..NARROW_FROM_ATTEMPT {
            let e = c
                .fetch(attempt(request(&g, FEED_MESSAGES, None, false), n))
                .await
                .unwrap_err();
            assert!(matches!(e, ConnectorError::Transient(_)), "{e:?}");
            assert!(e.to_string().contains("HTTP 500"), "{e}");
        }
        let before = server.request_count();
        let f = c
            .fetch(attempt(
                request(&g, FEED_MESSAGES, None, false),
                NARROW_FROM_ATTEMPT,
            ))
            .await
            .unwrap();
        let used = server.request_count() - before;
        assert_eq!(f.next_cursor, seq_cursor(60));
        assert!(f.done);
        assert_eq!(f.messages.len(), 57);
        assert_eq!(gap_ranges(&f), vec![(23, 23, true), (41, 42, true)]);
        assert!(used <= 40, "{used} requests");
        // the same request again gives the same page
        let again = c
            .fetch(attempt(
                request(&g, FEED_MESSAGES, None, false),
                NARROW_FROM_ATTEMPT,
            ))
            .await
            .unwrap();
        assert_eq!(again.messages, f.messages);
        assert_eq!(again.gaps, f.gaps);
    }

    #[tokio::test]
    async fn a_poisoned_message_the_user_can_no_longer_see_still_fails_its_window() {
        let mut w = world_with(30, &[5]);
        w.clear_history_for_me(&ChannelKey::group(GROUP), 10);
        let server = SimServer::start(w).await;
        let c = connector(&server.base_url(), password(), 100);
        c.login().await.unwrap();
        let g = group();
        let e = c
            .fetch(request(&g, FEED_MESSAGES, None, false))
            .await
            .unwrap_err();
        assert!(matches!(e, ConnectorError::Transient(_)), "{e:?}");
        let f = c
            .fetch(attempt(request(&g, FEED_MESSAGES, None, false), 2))
            .await
            .unwrap();
        assert_eq!(f.messages.len(), 20);
        assert_eq!(
            gap_ranges(&f),
            vec![(1, 4, false), (6, 10, false), (5, 5, true)]
        );
    }

    #[tokio::test]
    async fn a_server_that_fails_on_everything_skips_nothing() {
        let (base, fake) = serve(|path, _| match path {
            "/api/v1/user/login" => ok(json!({"uid": "me", "name": "Me", "token": TOKEN})),
            _ => (500, vec![], String::new()),
        })
        .await;
        let c = connector(&base, password(), 100);
        c.login().await.unwrap();
        let g = group();
        c.state().targets.insert(
            Channel {
                id: GROUP.into(),
                channel_type: 2,
            },
            Target {
                seq: 80,
                checked: true,
            },
        );
        for n in 0..5 {
            let e = c
                .fetch(attempt(request(&g, FEED_MESSAGES, None, false), n))
                .await
                .unwrap_err();
            assert!(matches!(e, ConnectorError::Transient(_)), "{n}: {e:?}");
        }
        // narrowing stopped at its budget and asked the control window: no gap anywhere
        let windows = fake.bodies("/api/v1/message/channel/sync");
        assert!(windows.len() < 5 * (MAX_NARROWING_REQUESTS as usize + 3));
        assert!(windows
            .iter()
            .any(|b| b["start_message_seq"] == CONTROL_SEQ));
    }

    #[tokio::test]
    async fn an_absurd_last_msg_seq_is_cut_to_the_newest_message() {
        let server = SimServer::start(world(30)).await;
        let c = connector(&server.base_url(), password(), 100);
        c.login().await.unwrap();
        let g = group();
        // as if conversation sync had claimed 2^62
        c.state().targets.insert(
            Channel {
                id: GROUP.into(),
                channel_type: 2,
            },
            Target {
                seq: 1 << 62,
                checked: false,
            },
        );
        let f = c
            .fetch(request(&g, FEED_MESSAGES, None, false))
            .await
            .unwrap();
        assert!(f.done, "one window, then the end");
        assert_eq!(f.next_cursor, seq_cursor(30));
        assert!(f.gaps.is_empty(), "{:?}", f.gaps);
        assert_eq!(f.messages.len(), 30);
        // from a cursor past the newest message: done at once, cursor kept
        c.state().targets.insert(
            Channel {
                id: GROUP.into(),
                channel_type: 2,
            },
            Target {
                seq: 1 << 62,
                checked: false,
            },
        );
        let past = seq_cursor(500);
        let f = c
            .fetch(request(&g, FEED_MESSAGES, Some(&past), false))
            .await
            .unwrap();
        assert!(f.done && f.gaps.is_empty() && f.messages.is_empty());
        assert_eq!(f.next_cursor, past);
    }

    #[tokio::test]
    async fn hidden_history_under_an_unchecked_target_is_still_a_gap() {
        let mut w = world(350);
        w.clear_history_for_me(&ChannelKey::group(GROUP), 250);
        let server = SimServer::start(w).await;
        let c = connector(&server.base_url(), password(), 100);
        c.login().await.unwrap();
        let d = c.discover(discover_request(&[])).await.unwrap();
        assert_eq!(d.conversations.len(), 2, "the group and the welcome chat");
        let g = group();
        let mut cursor = None;
        let mut gaps = Vec::new();
        let mut messages = 0;
        for _ in 0..10 {
            let f = c
                .fetch(request(&g, FEED_MESSAGES, cursor.as_ref(), false))
                .await
                .unwrap();
            gaps.extend(gap_ranges(&f));
            messages += f.messages.len();
            cursor = Some(f.next_cursor.clone());
            if f.done {
                break;
            }
        }
        assert_eq!(cursor, Some(seq_cursor(350)));
        assert_eq!(messages, 100);
        assert_eq!(
            gaps,
            vec![(1, 100, false), (101, 200, false), (201, 250, false)]
        );
    }

    /// The server keeps, per checkpoint name, the highest `extra_version` it was asked for.
    /// A page asked for in advance whose predecessor was never written must not make the
    /// held cursor skip that predecessor's rows.
    #[tokio::test]
    async fn an_extras_page_asked_in_advance_never_hides_rows_from_the_held_cursor() {
        let mut w = world(2600);
        let ids: Vec<u64> = w
            .channel(&ChannelKey::group(GROUP))
            .unwrap()
            .messages()
            .iter()
            .map(|m| m.message_id)
            .collect();
        for id in &ids {
            w.set_readed_count(*id, 1);
        }
        let server = SimServer::start(w).await;
        let c = connector(&server.base_url(), password(), 100);
        c.login().await.unwrap();
        let g = group();
        let page = |cursor: Option<Cursor>| {
            let c = &c;
            let g = &g;
            async move {
                c.fetch(request(g, FEED_EXTRAS, cursor.as_ref(), false))
                    .await
                    .unwrap()
            }
        };
        let first = page(None).await; // written
        let second = page(Some(first.next_cursor.clone())).await; // its write fails...
        let _third = page(Some(second.next_cursor.clone())).await; // ...while this was asked
                                                                   // the next run starts again from the held cursor: the second page's rows come again
        let again = page(Some(first.next_cursor.clone())).await;
        assert_eq!(again.messages.len(), 1000);
        assert_eq!(again.messages, second.messages);
        assert_eq!(again.next_cursor, second.next_cursor);
    }

    #[tokio::test]
    async fn a_kept_session_is_reused_and_replaced_after_a_401() {
        let dir = std::env::temp_dir().join(format!(
            "chatvault-tsdd-session-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let server = SimServer::start(world(3)).await;
        let fresh = || connector(&server.base_url(), password(), 100).with_session_dir(&dir);

        let first = fresh();
        first.login().await.unwrap();
        assert_eq!(server.world().login_count(), 1);
        let file = dir.join("acme-tsdd.token");
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains("pw-me"), "no password in the session file");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }

        // a new connector (a new run, or another process) takes the kept token up
        let second = fresh();
        second.login().await.unwrap();
        second.discover(discover_request(&[])).await.unwrap();
        assert_eq!(server.world().login_count(), 1);
        let f = second
            .fetch(request(&group(), FEED_MESSAGES, None, false))
            .await
            .unwrap();
        let me = f.messages.iter().find_map(|m| m.header.as_ref());
        assert!(me.is_some());

        // the server forgets it: 401, one new login, and the file holds the new token
        server.world().expire_tokens();
        let third = fresh();
        third.login().await.unwrap();
        let e = third.discover(discover_request(&[])).await.unwrap_err();
        assert!(matches!(e, ConnectorError::Unauthorized(_)), "{e:?}");
        third.login().await.unwrap();
        assert_eq!(server.world().login_count(), 2);
        third.discover(discover_request(&[])).await.unwrap();
        assert_ne!(std::fs::read_to_string(&file).unwrap(), text);
        let fourth = fresh();
        fourth.login().await.unwrap();
        fourth.discover(discover_request(&[])).await.unwrap();
        assert_eq!(server.world().login_count(), 2);

        // a token kept for another account is never sent
        let other = connector(
            &server.base_url(),
            TsddAuth::Password {
                username: "peer".into(),
                password: Secret::new("pw-peer"),
            },
            100,
        )
        .with_session_dir(&dir);
        other.login().await.unwrap();
        assert_eq!(server.world().login_count(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
