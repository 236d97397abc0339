//! The axum router: authentication, request parsing, the endpoint semantics of the spec
//! (§1–§9), request counting and transport-level fault injection.
//!
//! Handlers lock the world only while computing an answer, never across an `.await`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::faults::{FaultKind, Faults, Malformed, Stage};
use super::render::{self, Context};
use super::world::{ChannelKey, LoginError, Message, World, GROUP, PERSON};

pub(super) const CHANNEL_SYNC_PATH: &str = "/v1/message/channel/sync";
/// WuKongIM's cap on channel-sync `limit`.
const CHANNEL_SYNC_MAX_LIMIT: i64 = 10_000;
/// WuKongIM's `conversation.userMaxCount`.
const MAX_CONVERSATIONS: usize = 1000;

/// Requests seen, in total and per path.
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub(super) total: AtomicU64,
    pub(super) per_path: Mutex<BTreeMap<String, u64>>,
}

#[derive(Clone)]
pub(super) struct AppState {
    pub(super) world: Arc<Mutex<World>>,
    pub(super) faults: Faults,
    pub(super) counts: Arc<Counts>,
}

impl AppState {
    fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(super) fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/user/login", post(login))
        .route("/v1/conversation/sync", post(conversation_sync))
        .route(CHANNEL_SYNC_PATH, post(channel_sync))
        .route("/v1/message/extra/sync", post(extra_sync))
        .route("/v1/reaction/sync", post(reaction_sync))
        .route("/v1/users/{uid}", get(user_get))
        .route("/v1/groups/{group_no}", get(group_get))
        .route("/v1/group/my", get(my_groups))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_and_fault,
        ))
        .with_state(state)
}

/// gin's default for unknown routes (and for wrong methods: gin does not answer 405).
async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain")],
        "404 page not found",
    )
        .into_response()
}

// ---- errors, auth, parsing ----------------------------------------------------------

/// Why a request was refused, in the shapes of §1.3.
enum Refusal {
    /// The auth middleware's answer: 401 `{"msg":..}` without `status`.
    Unauthorized(&'static str),
    /// A handler failure: 400 `{"msg":..,"status":400}` (`ResponseError`).
    BadRequest(&'static str),
    /// A handler panic caught by gin's recovery: 500 with an empty body.
    Panic,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Unauthorized(msg) => {
                (StatusCode::UNAUTHORIZED, Json(json!({"msg": msg}))).into_response()
            }
            Refusal::BadRequest(msg) => (
                StatusCode::BAD_REQUEST,
                Json(json!({"msg": msg, "status": 400})),
            )
                .into_response(),
            Refusal::Panic => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }
}

type Answer = Result<Response, Refusal>;

/// The uid behind the `token` header.
fn authenticate(world: &World, headers: &HeaderMap) -> Result<String, Refusal> {
    let token = headers
        .get("token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if token.is_empty() {
        return Err(Refusal::Unauthorized("token不能为空，请先登录！"));
    }
    match world.token_uid(token) {
        Some(uid) => Ok(uid.to_string()),
        None => Err(Refusal::Unauthorized("请先登录！")),
    }
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|_| Refusal::BadRequest("数据格式有误！"))
}

// ---- middleware ---------------------------------------------------------------------

async fn count_and_fault(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    state.counts.total.fetch_add(1, Ordering::SeqCst);
    *state
        .counts
        .per_path
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(path.clone())
        .or_default() += 1;
    let Some(fault) = state.faults.take(Stage::Transport, &path) else {
        return next.run(request).await;
    };
    match fault {
        FaultKind::RateLimited { retry_after_secs } => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, retry_after_secs.to_string())],
            "Too Many Requests",
        )
            .into_response(),
        FaultKind::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if status == StatusCode::INTERNAL_SERVER_ERROR {
                return Refusal::Panic.into_response();
            }
            let reason = status.canonical_reason().unwrap_or("error");
            let page = format!(
                "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n<center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
            );
            (status, [(header::CONTENT_TYPE, "text/html")], page).into_response()
        }
        FaultKind::Slow(delay) => {
            tokio::time::sleep(delay).await;
            next.run(request).await
        }
        FaultKind::DropMidBody => cut_body(next.run(request).await).await,
        FaultKind::Malformed(_) | FaultKind::ChannelFailure { .. } => next.run(request).await,
    }
}

/// Send the status, the headers (with the full `Content-Length`) and the first half of
/// the body, then fail the body stream so the connection is aborted.
async fn cut_body(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let head = bytes.slice(..bytes.len() / 2);
    if let Ok(length) = HeaderValue::from_str(&bytes.len().to_string()) {
        parts.headers.insert(header::CONTENT_LENGTH, length);
    }
    let first = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(head) });
    let abort = futures::stream::once(async {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection dropped by fault injection",
        ))
    });
    use futures::StreamExt;
    Response::from_parts(parts, Body::from_stream(first.chain(abort)))
}

// ---- login --------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(default)]
#[derive(Default)]
struct LoginReq {
    username: String,
    password: String,
    flag: u8,
    #[allow(dead_code)]
    device: Option<Value>,
}

async fn login(State(state): State<AppState>, body: Bytes) -> Answer {
    let req: LoginReq = parse(&body)?;
    let mut world = state.world();
    let token = match world.login(&req.username, &req.password, req.flag) {
        Ok(token) => token,
        Err(LoginError::MissingUsername) => return Err(Refusal::BadRequest("用户名不能为空！")),
        Err(LoginError::MissingPassword) => return Err(Refusal::BadRequest("密码不能为空！")),
        Err(LoginError::UnknownUser) => return Err(Refusal::BadRequest("用户不存在！")),
        Err(LoginError::WrongPassword) => return Err(Refusal::BadRequest("密码不正确！")),
    };
    let uid = world.token_uid(&token).unwrap_or_default().to_string();
    let user = world.user(&uid).cloned().expect("logged-in user exists");
    Ok(Json(json!({
        "uid": user.uid,
        "app_id": "wukongchat",
        "name": user.name,
        "username": user.username,
        "sex": user.sex,
        "category": user.category,
        "short_no": user.short_no,
        "zone": user.zone,
        "phone": user.phone,
        "token": token,
        "chat_pwd": "",
        "lock_screen_pwd": "",
        "lock_after_minute": 0,
        "setting": {
            "search_by_phone": 1, "search_by_short": 1, "new_msg_notice": 1, "msg_show_detail": 1,
            "voice_on": 1, "shock_on": 1, "offline_protection": 0, "device_lock": 0, "mute_of_app": 0,
        },
        "rsa_public_key": "LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0K",
        "short_status": 0,
        "msg_expire_second": 0,
    })).into_response())
}

// ---- conversation sync --------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default)]
struct ConversationSyncReq {
    version: i64,
    last_msg_seqs: String,
    msg_count: i64,
    #[allow(dead_code)]
    device_uuid: String,
}

/// WK `getChannelLastMsgSeqMap`: `id:type:seq` entries joined by `|`; entries that do not
/// split into exactly three parts are skipped; unparsable numbers count as 0.
fn parse_last_msg_seqs(raw: &str) -> HashMap<(String, u8), u64> {
    let mut out = HashMap::new();
    for entry in raw.split('|') {
        let parts: Vec<&str> = entry.split(':').collect();
        if parts.len() != 3 {
            continue;
        }
        let channel_type = parts[1].parse::<u8>().unwrap_or(0);
        let seq = parts[2].parse::<u64>().unwrap_or(0);
        out.insert((parts[0].to_string(), channel_type), seq);
    }
    out
}

async fn conversation_sync(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let world = state.world();
    let me = authenticate(&world, &headers)?;
    let req: ConversationSyncReq = parse(&body)?;
    let mut conversations = Vec::new();
    let mut users = Vec::new();
    let mut groups = Vec::new();
    if req.msg_count > 0 {
        let listed = parse_last_msg_seqs(&req.last_msg_seqs);
        let mut candidates: Vec<_> = world
            .channels()
            .iter()
            .filter(|c| c.last_seq() > 0 && world.is_member(c.key(), &me))
            .collect();
        candidates
            .sort_by_key(|c| std::cmp::Reverse(c.messages().last().map_or(0, |m| m.timestamp)));
        candidates.truncate(MAX_CONVERSATIONS);
        for channel in candidates {
            let key = channel.key();
            let channel_id = key.id_for(&me);
            let lower = match listed.get(&(channel_id.clone(), key.channel_type)) {
                Some(&seq) => seq,
                None if req.version > 0 => u64::from(channel.my_read_seq()),
                None => 0,
            };
            let last = channel.last_seq();
            if u64::from(last) <= lower {
                continue;
            }
            let lower = lower as u32;
            let count = (req.msg_count as u64).min(u64::from(last - lower)) as u32;
            let window = &channel.messages()[(last - count) as usize..last as usize];
            let newest = window.last().expect("window is not empty");
            let recents: Vec<&Message> = window
                .iter()
                .rev()
                .filter(|m| m.message_seq > channel.my_offset())
                .collect();
            if recents.is_empty() {
                continue;
            }
            let last_client_msg_no = recents
                .iter()
                .find(|m| !m.is_deleted_for(&me, channel.clear_offset()))
                .map_or(newest.client_msg_no.as_str(), |m| m.client_msg_no.as_str());
            let unread = channel.messages()[channel.my_read_seq() as usize..]
                .iter()
                .filter(|m| m.from_uid != me)
                .count();
            let mut conversation = json!({
                "channel_id": channel_id,
                "channel_type": key.channel_type,
                "timestamp": recents[0].timestamp,
                "last_msg_seq": newest.message_seq,
                "last_client_msg_no": last_client_msg_no,
                "offset_msg_seq": 0,
                "version": newest.timestamp * 1_000_000_000,
                "recents": recents
                    .iter()
                    .filter_map(|m| render::message_json(&world, channel, m, &me, Context::Recents).ok())
                    .collect::<Vec<_>>(),
            });
            if unread > 0 {
                conversation["unread"] = json!(unread);
            }
            conversations.push(conversation);
            if key.channel_type == PERSON {
                if let Some(user) = world.user(&channel_id) {
                    users.push(render::user_json(&world, user, &me));
                }
            } else if let Some(group) = world.group(&channel_id) {
                groups.push(render::group_json(&world, group, &me));
            }
        }
    }
    Ok(Json(json!({
        "uid": me,
        "conversations": conversations,
        "users": users,
        "groups": groups,
        "channel_status": [],
    }))
    .into_response())
}

// ---- channel sync -------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default)]
struct ChannelSyncReq {
    channel_id: String,
    channel_type: u8,
    start_message_seq: u32,
    end_message_seq: u32,
    limit: i64,
    pull_mode: i64,
    #[allow(dead_code)]
    device_uuid: String,
    #[allow(dead_code)]
    login_uid: String,
}

/// WK's window selection over a gap-free seq range (§4.2); returns the index range.
fn channel_window(
    last: u32,
    start: u32,
    end: u32,
    limit: i64,
    pull_mode: i64,
) -> std::ops::Range<usize> {
    let limit = limit.clamp(0, CHANNEL_SYNC_MAX_LIMIT) as u64;
    let last = u64::from(last);
    let (start, end) = (u64::from(start), u64::from(end));
    let empty = 0..0;
    // Seqs `lo..=hi` map to indexes `lo-1..hi`.
    let newest = |lo: u64, hi: u64| -> std::ops::Range<usize> {
        if limit == 0 || lo > hi {
            return 0..0;
        }
        let lo = lo.max(hi.saturating_sub(limit) + 1);
        (lo - 1) as usize..hi as usize
    };
    if start == 0 && end == 0 {
        return newest(1, last);
    }
    if pull_mode == 1 {
        let lo = start.max(1);
        let hi = if end == 0 { last } else { (end - 1).min(last) };
        if lo > hi {
            return empty;
        }
        let hi = if limit == 0 {
            hi
        } else {
            hi.min(lo + limit - 1)
        };
        return (lo - 1) as usize..hi as usize;
    }
    if end != 0 && end > start {
        return empty;
    }
    newest(end + 1, start.min(last))
}

async fn channel_sync(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Answer {
    let world = state.world();
    let me = authenticate(&world, &headers)?;
    let req: ChannelSyncReq = parse(&body)?;
    if req.channel_id.is_empty() {
        return Err(Refusal::BadRequest("频道ID不能为空！"));
    }
    if state.faults.channel_fails(&req.channel_id) {
        return Err(Refusal::BadRequest("同步频道消息失败！"));
    }
    let echo = |start: u32, end: u32, messages: Vec<Value>| {
        Ok(Json(json!({
            "start_message_seq": start,
            "end_message_seq": end,
            "pull_mode": 0,
            "more": 0,
            "messages": messages,
        }))
        .into_response())
    };
    let key = match req.channel_type {
        PERSON => ChannelKey::person(&me, &req.channel_id),
        GROUP => {
            let key = ChannelKey::group(&req.channel_id);
            if !world.is_member(&key, &me) {
                return echo(req.end_message_seq, req.end_message_seq, Vec::new());
            }
            key
        }
        other => ChannelKey {
            channel_type: other,
            fake_id: req.channel_id.clone(),
        },
    };
    let Some(channel) = world.channel(&key) else {
        return echo(req.start_message_seq, req.end_message_seq, Vec::new());
    };
    let range = channel_window(
        channel.last_seq(),
        req.start_message_seq,
        req.end_message_seq,
        req.limit,
        req.pull_mode,
    );
    let mut messages = Vec::with_capacity(range.len());
    for message in &channel.messages()[range] {
        if message.message_seq <= channel.my_offset() {
            continue;
        }
        match render::message_json(&world, channel, message, &me, Context::ChannelSync) {
            Ok(value) => messages.push(value),
            Err(render::ReplyPanic) => return Err(Refusal::Panic),
        }
    }
    if !messages.is_empty() {
        if let Some(FaultKind::Malformed(how)) =
            state.faults.take(Stage::Malformed, CHANNEL_SYNC_PATH)
        {
            let middle = messages.len() / 2;
            let victim = &mut messages[middle];
            match how {
                Malformed::SeqAsString => {
                    victim["message_seq"] = json!(victim["message_seq"].to_string());
                }
                Malformed::PayloadNotObject => {
                    victim["payload"] = json!(victim["payload"].to_string());
                }
            }
        }
    }
    echo(req.start_message_seq, req.end_message_seq, messages)
}

// ---- extra sync ---------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default)]
struct ExtraSyncReq {
    channel_id: String,
    channel_type: u8,
    extra_version: i64,
    source: String,
    limit: i64,
}

fn request_key(me: &str, channel_id: &str, channel_type: u8) -> ChannelKey {
    match channel_type {
        PERSON => ChannelKey::person(me, channel_id),
        _ => ChannelKey {
            channel_type,
            fake_id: channel_id.to_string(),
        },
    }
}

async fn extra_sync(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Answer {
    let mut world = state.world();
    let me = authenticate(&world, &headers)?;
    let req: ExtraSyncReq = parse(&body)?;
    if req.channel_id.trim().is_empty() {
        return Err(Refusal::BadRequest("频道ID不能为空！"));
    }
    let limit = if req.limit <= 0 {
        100
    } else {
        req.limit.min(10_000)
    } as usize;
    let key = request_key(&me, &req.channel_id, req.channel_type);
    let version = world.extra_cursor(&me, &req.source, &key, req.extra_version);
    let Some(channel) = world.channel(&key) else {
        return Ok(Json(json!([])).into_response());
    };
    let rows: Vec<&Message> = if version == 0 {
        let mut newest: Vec<&Message> = channel.extras_newest().take(limit).collect();
        newest.reverse();
        newest
    } else {
        channel.extras_after(version).take(limit).collect()
    };
    let rows: Vec<Value> = rows
        .into_iter()
        .filter_map(|m| m.extra.as_ref().map(|e| render::extra_json(m, e, false)))
        .collect();
    Ok(Json(Value::Array(rows)).into_response())
}

// ---- reaction sync ------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default)]
struct ReactionSyncReq {
    channel_id: String,
    channel_type: u8,
    seq: i64,
    limit: u64,
}

async fn reaction_sync(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Answer {
    let world = state.world();
    let me = authenticate(&world, &headers)?;
    let req: ReactionSyncReq = parse(&body)?;
    let limit = match req.limit {
        0 => 100,
        n => n.min(1000),
    } as usize;
    let key = if req.channel_id.contains('@') {
        ChannelKey {
            channel_type: req.channel_type,
            fake_id: req.channel_id.clone(),
        }
    } else {
        request_key(&me, &req.channel_id, req.channel_type)
    };
    let Some(channel) = world.channel(&key) else {
        return Ok(Json(json!([])).into_response());
    };
    let rows: Vec<Value> = if req.seq > 0 {
        channel
            .reactions_after(req.seq)
            .take(limit)
            .map(|(m, r)| render::reaction_row_json(&world, channel, m, r, &me))
            .collect()
    } else {
        channel
            .reactions_newest()
            .take(limit)
            .map(|(m, r)| render::reaction_row_json(&world, channel, m, r, &me))
            .collect()
    };
    Ok(Json(Value::Array(rows)).into_response())
}

// ---- users and groups ---------------------------------------------------------------

async fn user_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(uid): Path<String>,
) -> Answer {
    let world = state.world();
    let me = authenticate(&world, &headers)?;
    match world.user(&uid) {
        Some(user) => Ok(Json(render::user_json(&world, user, &me)).into_response()),
        None => Err(Refusal::BadRequest("用户不存在！")),
    }
}

async fn group_get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(group_no): Path<String>,
) -> Answer {
    let world = state.world();
    let me = authenticate(&world, &headers)?;
    match world.group(&group_no) {
        Some(group) => Ok(Json(render::group_json(&world, group, &me)).into_response()),
        None => Ok(Json(Value::Null).into_response()),
    }
}

async fn my_groups(State(state): State<AppState>, headers: HeaderMap) -> Answer {
    let world = state.world();
    let me = authenticate(&world, &headers)?;
    let saved: Vec<Value> = world
        .groups()
        .filter(|g| g.saved)
        .map(|g| render::group_json(&world, g, &me))
        .collect();
    Ok(Json(Value::Array(saved)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_latest_takes_newest_limit() {
        assert_eq!(channel_window(100, 0, 0, 10, 0), 90..100);
        assert_eq!(channel_window(100, 0, 0, 10, 1), 90..100);
        assert_eq!(channel_window(5, 0, 0, 10, 0), 0..5);
        assert_eq!(channel_window(100, 0, 0, 0, 1), 0..0);
    }

    #[test]
    fn window_up_is_start_inclusive_end_exclusive() {
        assert_eq!(channel_window(100, 11, 21, 50, 1), 10..20);
        assert_eq!(channel_window(100, 11, 21, 5, 1), 10..15);
        assert_eq!(channel_window(100, 95, 0, 50, 1), 94..100);
        assert_eq!(channel_window(100, 101, 0, 50, 1), 0..0);
        // limit 0 in up mode returns everything to the end
        assert_eq!(channel_window(100, 10, 0, 0, 1), 9..100);
        assert_eq!(channel_window(100, 0, 20, 50, 1), 0..19);
    }

    #[test]
    fn window_down_takes_newest_below_start() {
        assert_eq!(channel_window(100, 50, 40, 100, 0), 40..50);
        assert_eq!(channel_window(100, 50, 0, 5, 0), 45..50);
        assert_eq!(channel_window(100, 50, 60, 5, 0), 0..0);
        assert_eq!(channel_window(100, 0, 60, 5, 0), 0..0);
        assert_eq!(channel_window(100, 50, 0, 0, 0), 0..0);
        assert_eq!(channel_window(100, 500, 0, 5, 0), 95..100);
    }

    #[test]
    fn last_msg_seqs_parsing() {
        let parsed = parse_last_msg_seqs("g_1:2:15|u2:1:7|bad|a:b|x:1:zz|:2:3");
        assert_eq!(parsed.get(&("g_1".to_string(), 2)), Some(&15));
        assert_eq!(parsed.get(&("u2".to_string(), 1)), Some(&7));
        assert_eq!(parsed.get(&("x".to_string(), 1)), Some(&0));
        assert_eq!(parsed.len(), 4);
    }
}
