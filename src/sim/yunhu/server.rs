//! The axum router of the fake Yunhu server: protobuf in and out on the protobuf endpoints,
//! JSON on the edit record, the JSON `-101` body for a bad token (even on protobuf
//! endpoints), request counting and fault injection. What each answer follows is written
//! down in `docs/upstreams/yunhu.md`.
//!
//! Handlers lock the world only while computing an answer, never across an `.await`.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prost::Message;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::faults::{FaultKind, Faults, Malformed};
use super::media;
use super::world::{BySeq, World};
use crate::connector::yunhu::pb;
use crate::sim::faults::Stage;
use crate::sim::serve::{self, RequestCounts};

/// The most `list-message` returns, whatever was asked (no client asks for more than 40).
pub const MAX_PAGE: usize = 30;
/// How far behind `list-message-by-seq` still answers the range asked for.
pub const BY_SEQ_WINDOW: i64 = 30;
/// The most edit-record rows one page returns by default, whatever `size` asked for (no
/// public client asks for more than 20).
pub const EDIT_RECORD_PAGE_CAP: usize = 30;

#[derive(Clone)]
pub(super) struct AppState {
    pub(super) world: Arc<Mutex<World>>,
    pub(super) faults: Faults,
    /// Every request, by path, before any fault.
    pub(super) counts: Arc<RequestCounts>,
    /// Where media is served (`http://127.0.0.1:PORT/media`), known once the server
    /// listens; it belongs to the server, not the world, so a world swapped in serves the
    /// same URLs.
    pub(super) media_base: Arc<OnceLock<String>>,
}

impl AppState {
    pub(super) fn world(&self) -> MutexGuard<'_, World> {
        serve::lock(&self.world)
    }

    pub(super) fn media_base(&self) -> &str {
        self.media_base.get().map_or("", String::as_str)
    }
}

pub(super) fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/conversation/list", post(conversation_list))
        .route("/v1/friend/address-book-list", post(address_book))
        .route("/v1/msg/list-message", post(list_message))
        .route("/v1/msg/list-message-by-seq", post(list_message_by_seq))
        .route("/v1/msg/list-message-edit-record", post(edit_record))
        .route("/media/{host}/{*path}", get(media_file))
        .route("/v1/user/info", get(user_info))
        .route("/ws", get(super::push::upgrade))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            count_and_fault,
        ))
        .with_state(state)
}

/// `GET /v1/user/info`: the account's own profile.
async fn user_info(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let world = state.world();
    if !authorized(&world, &headers) {
        return unauthorized();
    }
    proto(
        pb::UserInfoResponse {
            status: Some(ok_status()),
            data: Some(pb::UserInfoData {
                id: world.me.id.clone(),
                name: world.me.name.clone(),
            }),
        }
        .encode_to_vec(),
    )
}

/// The wrong method or path: HTTP 404.
async fn not_found() -> Response {
    missing()
}

fn missing() -> Response {
    (StatusCode::NOT_FOUND, "404 page not found").into_response()
}

fn proto(bytes: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/x-protobuf")], bytes).into_response()
}

fn ok_status() -> pb::Status {
    pb::Status {
        request_id: 0,
        code: 1,
        msg: "success".into(),
    }
}

fn refused(msg: &str) -> Response {
    let status = pb::Status {
        request_id: 0,
        code: -1,
        msg: msg.into(),
    };
    proto(
        pb::StatusResponse {
            status: Some(status),
        }
        .encode_to_vec(),
    )
}

/// A missing or wrong token: HTTP 200 with a JSON body, whatever the endpoint's encoding.
fn unauthorized() -> Response {
    Json(json!({"code": -101, "msg": "未登录"})).into_response()
}

fn authorized(world: &World, headers: &HeaderMap) -> bool {
    let token = headers
        .get("token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    !token.is_empty() && token == world.token
}

// ---- conversations ------------------------------------------------------------------

fn list_md5(data: &[pb::ConversationData]) -> String {
    let mut hasher = Sha256::new();
    for d in data {
        hasher.update(d.encode_to_vec());
    }
    hex::encode(&hasher.finalize()[..16])
}

async fn conversation_list(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let world = state.world();
    if !authorized(&world, &headers) {
        return unauthorized();
    }
    let Ok(request) = pb::ConversationListRequest::decode(body) else {
        return refused("参数错误");
    };
    let mut data: Vec<pb::ConversationData> = world
        .chats
        .iter()
        .filter(|c| c.in_list)
        .map(|c| world.list_entry(c))
        .collect();
    data.sort_by(|a, b| {
        b.timestamp_ms
            .cmp(&a.timestamp_ms)
            .then(a.chat_id.cmp(&b.chat_id))
    });
    let md5 = list_md5(&data);
    let total = data.len() as i64;
    if !request.md5.is_empty() && request.md5 == md5 {
        data.clear();
    }
    proto(
        pb::ConversationListResponse {
            status: Some(ok_status()),
            data,
            total,
            md5,
        }
        .encode_to_vec(),
    )
}

async fn address_book(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let world = state.world();
    if !authorized(&world, &headers) {
        return unauthorized();
    }
    if pb::AddressBookListRequest::decode(body).is_err() {
        return refused("参数错误");
    }
    let sections = [(1, "好友"), (2, "群聊"), (3, "机器人")];
    let data: Vec<pb::AddressBookSection> = sections
        .iter()
        .map(|(ty, name)| pb::AddressBookSection {
            list_name: name.to_string(),
            chat_type: *ty,
            data: world
                .chats
                .iter()
                .filter(|c| c.chat_type == *ty)
                .map(|c| pb::AddressBookEntry {
                    chat_id: c.chat_id.clone(),
                    remark: c.remark.clone(),
                    avatar_url: format!("https://chat-img.jwznb.com/avatar/{}.jpg", c.chat_id),
                    name: c.name.clone(),
                    ..Default::default()
                })
                .collect(),
        })
        .collect();
    let md5 = hex::encode(&Sha256::digest(format!("{data:?}"))[..16]);
    proto(
        pb::AddressBookListResponse {
            status: Some(ok_status()),
            data,
            md5,
        }
        .encode_to_vec(),
    )
}

// ---- messages -----------------------------------------------------------------------

/// A list response, encoded record by record so that one record can be broken on purpose.
fn list_response(records: Vec<pb::MsgData>, broken: Option<Malformed>) -> Response {
    let mut out = Vec::new();
    pb::ListMsgResponse {
        status: Some(ok_status()),
        data: Vec::new(),
        total: records.len() as i64,
    }
    .encode(&mut out)
    .expect("a Vec grows");
    let middle = records.len() / 2;
    for (i, record) in records.into_iter().enumerate() {
        let bytes = match broken {
            Some(how) if i == middle => break_record(record, how),
            _ => record.encode_to_vec(),
        };
        prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(bytes.len() as u64, &mut out);
        out.extend_from_slice(&bytes);
    }
    proto(out)
}

fn break_record(mut record: pb::MsgData, how: Malformed) -> Vec<u8> {
    match how {
        Malformed::WrongWireType => {
            let mut out = Vec::new();
            prost::encoding::encode_key(1, prost::encoding::WireType::Varint, &mut out);
            prost::encoding::encode_varint(12345, &mut out);
            record.msg_id.clear();
            out.extend_from_slice(&record.encode_to_vec());
            out
        }
        Malformed::MissingSeq => {
            record.msg_seq = 0;
            record.encode_to_vec()
        }
    }
}

fn maybe_broken(state: &AppState, path: &str, n: usize) -> Option<Malformed> {
    if n < 3 {
        return None;
    }
    match state.faults.take(Stage::Malformed, path) {
        Some(FaultKind::Malformed(how)) => Some(how),
        _ => None,
    }
}

async fn list_message(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let records = {
        let world = state.world();
        if !authorized(&world, &headers) {
            return unauthorized();
        }
        let Ok(request) = pb::ListMsgRequest::decode(body) else {
            return refused("参数错误");
        };
        if state.faults.chat_fails(&request.chat_id) {
            return refused("没有权限");
        }
        let Some(chat) = world
            .chat(&request.chat_id)
            .filter(|c| c.chat_type == request.chat_type)
        else {
            return refused("会话不存在");
        };
        let count = usize::try_from(request.msg_count)
            .unwrap_or(0)
            .min(MAX_PAGE);
        // An anchor this account cannot see (deleted for it, auto-deleted, never there) is
        // unknown: nothing comes back.
        let below = if request.msg_id.is_empty() {
            i64::MAX
        } else {
            match chat
                .messages
                .iter()
                .find(|m| m.msg_id == request.msg_id && chat.visible(m))
            {
                Some(anchor) => anchor.seq,
                None => 0,
            }
        };
        // newest first
        chat.messages
            .iter()
            .rev()
            .filter(|m| m.seq < below && chat.visible(m))
            .take(count)
            .map(|m| world.served(m, state.media_base()))
            .collect::<Vec<_>>()
    };
    let broken = maybe_broken(&state, "/v1/msg/list-message", records.len());
    list_response(records, broken)
}

async fn list_message_by_seq(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let records = {
        let world = state.world();
        if !authorized(&world, &headers) {
            return unauthorized();
        }
        let Ok(request) = pb::ListMsgBySeqRequest::decode(body) else {
            return refused("参数错误");
        };
        if state.faults.chat_fails(&request.chat_id) {
            return refused("没有权限");
        }
        let Some(chat) = world
            .chat(&request.chat_id)
            .filter(|c| c.chat_type == request.chat_type)
        else {
            return refused("会话不存在");
        };
        let newest = chat.last_seq();
        let far_behind = newest - request.msg_start > BY_SEQ_WINDOW;
        // which seqs come back, by the reading the world follows
        let (from, to) = match world.by_seq {
            BySeq::Newer if far_behind => (newest - BY_SEQ_WINDOW + 1, newest),
            BySeq::NewerOrNothing if far_behind => (1, 0),
            BySeq::Newer | BySeq::NewerOrNothing => (request.msg_start + 1, newest),
            BySeq::Older if request.msg_start <= 0 => (newest - BY_SEQ_WINDOW + 1, newest),
            BySeq::Older => (request.msg_start - BY_SEQ_WINDOW, request.msg_start - 1),
        };
        // ascending: the order is unspecified, clients sort
        chat.messages
            .iter()
            .filter(|m| m.seq >= from && m.seq <= to && chat.visible(m))
            .map(|m| world.served(m, state.media_base()))
            .collect::<Vec<_>>()
    };
    let broken = maybe_broken(&state, "/v1/msg/list-message-by-seq", records.len());
    list_response(records, broken)
}

async fn edit_record(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let world = state.world();
    if !authorized(&world, &headers) {
        return unauthorized();
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return Json(json!({"code": -1, "msg": "参数错误"})).into_response();
    };
    let msg_id = request.get("msgId").and_then(Value::as_str).unwrap_or("");
    let size = request
        .get("size")
        .and_then(Value::as_u64)
        .unwrap_or(10)
        .clamp(1, world.edit_record_page_cap.max(1) as u64) as usize;
    let page = if world.edit_record_ignores_page {
        1
    } else {
        request
            .get("page")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .max(1) as usize
    };
    let Some((_, msg)) = world.message(msg_id) else {
        return Json(json!({"code": 1, "data": {"list": [], "total": 0}, "msg": "success"}))
            .into_response();
    };
    // newest first; clients sort
    let list: Vec<Value> = msg
        .edits
        .iter()
        .rev()
        .skip((page - 1).saturating_mul(size))
        .take(size)
        .map(|e| {
            json!({
                "id": e.id,
                "msgId": msg.msg_id,
                "contentType": e.content_type,
                "contentOld": e.content_old,
                "createTime": e.create_time,
                "msgTime": e.msg_time,
            })
        })
        .collect();
    Json(json!({"code": 1, "data": {"list": list, "total": msg.edits.len()}, "msg": "success"}))
        .into_response()
}

// ---- media --------------------------------------------------------------------------

/// A media host's refusal: HTTP 403 with the object store's kind of body.
fn forbidden(why: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": why}).to_string(),
    )
        .into_response()
}

/// A file on one of the media hosts (see [`media`]): 404 unknown or deleted; on the
/// signed host 403 for a wrong or expired signature; elsewhere 403 without Yunhu's
/// `Referer`.
async fn media_file(
    State(state): State<AppState>,
    Path((host, path)): Path<(String, String)>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if !media::HOSTS.contains(&host.as_str()) {
        return missing();
    }
    let located = {
        let world = state.world();
        let Some(located) = world.media_file(&host, &path) else {
            return missing();
        };
        if world.media_is_deleted(&located.key()) {
            return missing();
        }
        if host == media::SIGNED_HOST {
            let t = query.get("t").and_then(|t| t.parse::<u64>().ok());
            let sign = query.get("sign").map(String::as_str);
            match t {
                Some(t) if sign == Some(media::sign(&path, t).as_str()) => {
                    if t < world.now_ms() / 1000 {
                        return forbidden("the signature has expired");
                    }
                }
                _ => return forbidden("bad signature"),
            }
        } else if media::checks_referer(&host) {
            let referer = headers.get(header::REFERER).and_then(|v| v.to_str().ok());
            if !media::referer_ok(referer) {
                return forbidden("referer not allowed");
            }
        }
        located
    };
    let body = media::bytes(&located);
    (
        [(header::CONTENT_TYPE, media::content_type(&located))],
        body,
    )
        .into_response()
}

// ---- middleware ---------------------------------------------------------------------

/// What a request counts under, and what faults are scoped by: its path, or
/// `/media/<host>` for a file (so counts do not grow with every file).
fn count_key(path: &str) -> String {
    match path.strip_prefix("/media/") {
        Some(rest) => format!("/media/{}", rest.split('/').next().unwrap_or("")),
        None => path.to_string(),
    }
}

async fn count_and_fault(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = count_key(request.uri().path());
    if let Some(how) = state.counts.record(&path) {
        return serve::fail_request(how, request, next).await;
    }
    let Some(fault) = state.faults.take(Stage::Transport, &path) else {
        return next.run(request).await;
    };
    match fault {
        FaultKind::RateLimited { retry_after_secs } => serve::too_many_requests(retry_after_secs),
        FaultKind::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let reason = status.canonical_reason().unwrap_or("error");
            let page = format!("<html><head><title>{code} {reason}</title></head><body><center><h1>{code} {reason}</h1></center><hr><center>nginx</center></body></html>");
            (status, [(header::CONTENT_TYPE, "text/html")], page).into_response()
        }
        FaultKind::Slow(delay) => {
            tokio::time::sleep(delay).await;
            next.run(request).await
        }
        FaultKind::DropMidBody => serve::cut_body(next.run(request).await).await,
        FaultKind::Malformed(_) | FaultKind::ChatFailure { .. } => next.run(request).await,
    }
}
