//! The axum router of the fake Yunxin server: the CheckSum check, the `{code,msg,data}`
//! envelope with HTTP 200 for business errors, per-API rate limits answering 416, queued
//! faults, and the read calls chatvault uses plus the conversation update call (what each
//! follows is in `docs/upstreams/yunxin.md`).
//!
//! Handlers lock the world only while computing an answer, never across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use super::media::{self, MediaOutcome, BUCKET, NOS_PATH};
use super::world::{Descending, Message, Stream, TokenLoop, World};
use super::{FaultKind, Faults};
use crate::sim::serve::{self, RequestCounts};

pub const LIST_PATH: &str = "/im/v2.1/conversations";
pub const BATCH_PATH: &str = "/im/v2.1/conversations/actions/conversation_ids";
pub const BATCH_V2_PATH: &str = "/im/v2/conversations/actions/conversation_ids";
pub const HISTORY_PATH: &str = "/im/v2.1/conversations/{conversation_id}/messages";
pub const UPDATE_PATH: &str = "/im/v2/conversations/{conversation_id}";
pub const QUICK_COMMENT_PATH: &str = "/im/v2/messages/actions/quick_comment";

/// One API's current one-second window: its start, requests in it, blocked until.
type Window = (Instant, u32, Option<Instant>);

/// Per-API request window and block.
#[derive(Debug, Default)]
pub(super) struct Limits {
    per_api: Mutex<HashMap<String, Window>>,
}

#[derive(Clone)]
pub(super) struct AppState {
    pub(super) world: Arc<Mutex<World>>,
    pub(super) faults: Faults,
    /// Routed requests, by API (route template), before any fault or check.
    pub(super) counts: Arc<RequestCounts>,
    pub(super) limits: Arc<Limits>,
}

impl AppState {
    fn world(&self) -> MutexGuard<'_, World> {
        serve::lock(&self.world)
    }
}

pub(super) fn router(state: AppState) -> Router {
    let nos = Router::new()
        .route(NOS_PATH, get(nos_object))
        .route_layer(middleware::from_fn_with_state(state.clone(), nos_gate));
    Router::new()
        .route(LIST_PATH, get(list_conversations))
        .route(BATCH_PATH, get(batch_conversations))
        .route(BATCH_V2_PATH, get(batch_conversations))
        .route(HISTORY_PATH, get(history))
        .route(UPDATE_PATH, axum::routing::patch(update_conversation))
        .route(QUICK_COMMENT_PATH, post(query_quick_comments))
        .route_layer(middleware::from_fn_with_state(state.clone(), gate))
        .merge(nos)
        .fallback(|| async { (StatusCode::NOT_FOUND, "404 Not Found") })
        .with_state(state)
}

fn envelope(code: i64, msg: &str, data: Value) -> Response {
    Json(json!({"code": code, "msg": msg, "data": data})).into_response()
}

fn ok(data: Value) -> Response {
    envelope(200, "success", data)
}

fn fail(code: i64, msg: &str) -> Response {
    envelope(code, msg, json!({}))
}

/// The lowercase hex SHA-1 of `secret ‖ nonce ‖ cur_time` (`docs/upstreams/yunxin.md`,
/// "Signing").
pub fn checksum(secret: &str, nonce: &str, cur_time: &str) -> String {
    let mut h = Sha1::new();
    h.update(secret.as_bytes());
    h.update(nonce.as_bytes());
    h.update(cur_time.as_bytes());
    hex::encode(h.finalize())
}

/// Count, fault, authenticate and rate-limit every routed request.
async fn gate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let api = api_of(request.method(), request.uri().path()).to_string();
    if let Some(how) = state.counts.record(&api) {
        return serve::fail_request(how, request, next).await;
    }
    if let Some(kind) = state.faults.take(&api, None) {
        match kind {
            FaultKind::Code(code) => return fail(code, "injected failure"),
            FaultKind::Http(status) => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                return (status, "<html><body>bad gateway</body></html>").into_response();
            }
            FaultKind::MalformedMessage | FaultKind::NoSuccessList => {}
        }
    }
    let (secret, key, window, limit, block) = {
        let w = state.world();
        (
            w.app_secret.clone(),
            w.app_key.clone(),
            w.behaviour.checksum_window_secs,
            w.behaviour.rate_limit,
            w.behaviour.rate_limit_block,
        )
    };
    if let Err(why) = check_signature(request.headers(), &key, &secret, window) {
        return fail(414, why);
    }
    if let Some(limit) = limit {
        let now = Instant::now();
        let mut limits = serve::lock(&state.limits.per_api);
        let entry = limits.entry(api).or_insert((now, 0, None));
        if let Some(until) = entry.2 {
            if now < until {
                return fail(416, "api frequency control: blocked");
            }
            entry.2 = None;
        }
        if now.duration_since(entry.0).as_secs_f64() >= 1.0 {
            *entry = (now, 0, None);
        }
        entry.1 += 1;
        if entry.1 > limit {
            entry.2 = Some(now + block);
            return fail(416, "api frequency control");
        }
    }
    next.run(request).await
}

/// Count and fault NOS requests like the API's (under [`NOS_PATH`]); NOS asks for no
/// CheckSum and has no API rate limit.
async fn nos_gate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(how) = state.counts.record(NOS_PATH) {
        return serve::fail_request(how, request, next).await;
    }
    if let Some(kind) = state.faults.take(NOS_PATH, None) {
        let status = match kind {
            FaultKind::Http(status) => status,
            FaultKind::Code(code) => u16::try_from(code).unwrap_or(500),
            FaultKind::MalformedMessage | FaultKind::NoSuccessList => 500,
        };
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
        return (status, "<html><body>bad gateway</body></html>").into_response();
    }
    next.run(request).await
}

/// `GET /nos/<bucket>/<key>`: the object's bytes, a 404 `NoSuchKey` for one deleted (or
/// never there), a 403 `AccessDenied` for a signed URL past its `Expires`.
async fn nos_object(
    State(state): State<AppState>,
    Path((bucket, key)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let resource = format!("/{bucket}/{key}");
    let xml = |status: StatusCode, code: &str, message: &str| {
        (
            status,
            [(axum::http::header::CONTENT_TYPE, "application/xml")],
            media::error_xml(code, message, &resource),
        )
            .into_response()
    };
    let file = match state.world().media.get(&key) {
        Some(f) if bucket == BUCKET => f.clone(),
        _ => {
            return xml(
                StatusCode::NOT_FOUND,
                "NoSuchKey",
                "The specified key does not exist.",
            )
        }
    };
    let now = chrono::Utc::now().timestamp();
    let asked_expiry = query.get("Expires").map(|e| e.parse::<i64>().unwrap_or(0));
    if asked_expiry.is_some_and(|at| at < now) {
        return xml(StatusCode::FORBIDDEN, "AccessDenied", "Request has expired");
    }
    match file.outcome(now) {
        MediaOutcome::Gone => xml(
            StatusCode::NOT_FOUND,
            "NoSuchKey",
            "The specified key does not exist.",
        ),
        MediaOutcome::Expired => xml(StatusCode::FORBIDDEN, "AccessDenied", "Request has expired"),
        MediaOutcome::Served => (
            [
                (axum::http::header::CONTENT_TYPE, file.mime().to_string()),
                (axum::http::header::ETAG, format!("\"{}\"", file.md5)),
            ],
            file.bytes(),
        )
            .into_response(),
    }
}

/// The route template a request path belongs to.
fn api_of<'a>(method: &axum::http::Method, path: &'a str) -> &'a str {
    match path {
        LIST_PATH => LIST_PATH,
        BATCH_PATH => BATCH_PATH,
        BATCH_V2_PATH => BATCH_V2_PATH,
        QUICK_COMMENT_PATH => QUICK_COMMENT_PATH,
        p if p.starts_with("/im/v2.1/conversations/") && p.ends_with("/messages") => HISTORY_PATH,
        p if p.starts_with("/im/v2/conversations/") && method == axum::http::Method::PATCH => {
            UPDATE_PATH
        }
        p => p,
    }
}

fn check_signature(
    headers: &HeaderMap,
    app_key: &str,
    secret: &str,
    window_secs: i64,
) -> Result<(), &'static str> {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(key), Some(nonce), Some(cur), Some(sum)) =
        (h("AppKey"), h("Nonce"), h("CurTime"), h("CheckSum"))
    else {
        return Err("missing AppKey, Nonce, CurTime or CheckSum header");
    };
    if key != app_key {
        return Err("illegal AppKey");
    }
    if nonce.is_empty() || nonce.len() > 128 {
        return Err("Nonce must be 1 to 128 characters");
    }
    let Ok(t) = cur.parse::<i64>() else {
        return Err("CurTime is not a number of seconds");
    };
    if (chrono::Utc::now().timestamp() - t).abs() > window_secs {
        return Err("CurTime expired");
    }
    if sum != checksum(secret, nonce, cur) {
        return Err("checksum verification failed");
    }
    Ok(())
}

// ---- conversations ----------------------------------------------------------------------

fn render_conversation(w: &World, id: &str, nested: bool) -> Option<Value> {
    let c = w.conversations.get(id)?;
    let mut v = json!({
        "conversation_id": id,
        "sender_id": c.owner,
        "receiver_id": c.target,
        "type": c.conversation_type,
        "stick_top": c.stick_top,
        "group_ids": c.group_ids,
        "server_extension": c.server_extension,
        "message_state": c.message_state,
        "unread_count": 0,
        "sort_order": c.update_time,
        "create_time": c.create_time,
        "update_time": c.update_time,
        "last_read_time": 0,
    });
    if c.message_state == 1 {
        v["revoke_notification"] = c.revoke_notification.clone().unwrap_or(Value::Null);
    } else if let Some(m) = w.last_message(id) {
        v["last_message"] = if nested {
            json!({
                "sender_no_sense": "false",
                "receiver_no_sense": "false",
                "extension": m.extension,
                "message": {"message_type": m.message_type, "sub_type": m.sub_type, "text": m.text, "attachment": m.attachment.clone().unwrap_or(json!({}))},
            })
        } else {
            let mut flat = json!({
                "message_server_id": m.server_id,
                "message_client_id": m.client_id,
                "sender_id": m.sender,
                "conversation_type": c.conversation_type,
                "sender_client_type": m.sender_client_type,
                "message_type": m.message_type,
                "sub_type": m.sub_type,
                "create_time": m.create_time,
                "text": m.text,
                "attachment": m.attachment.clone().unwrap_or(json!({})),
                "extension": m.extension,
            });
            match &m.stream {
                Stream::P2p(..) => flat["receiver_id"] = json!(m.receiver()),
                Stream::Team(t) => flat["team_id"] = json!(t),
            }
            flat
        };
    }
    Some(v)
}

async fn list_conversations(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let w = state.world();
    let Some(account) = q.get("account_id").filter(|a| !a.is_empty()) else {
        return fail(414, "account_id is required");
    };
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(l)) if (1..=100).contains(&l) => l,
        _ => return fail(414, "limit must be 1 to 100"),
    };
    if w.no_cloud.contains(account) {
        return fail(403, "cloud conversation is not enabled for this app");
    }
    let ids: Vec<&String> = w
        .conversations
        .iter()
        .filter(|(_, c)| c.owner == *account)
        .map(|(id, _)| id)
        .collect();
    let offset = match q.get("page_token").filter(|t| !t.is_empty()) {
        None => 0,
        Some(t) => match decode_token(t, fingerprint(&[account])) {
            Some((o, _)) => o,
            None => return fail(414, "invalid page_token"),
        },
    };
    let end = (offset + limit).min(ids.len());
    let items: Vec<Value> = ids[offset.min(end)..end]
        .iter()
        .filter_map(|id| render_conversation(&w, id, w.behaviour.nested_last_message))
        .collect();
    if w.behaviour.list_token_cycle {
        // A (the end of page one), B (the start again), A, B…
        let next = if offset == 0 { end } else { 0 };
        return ok(json!({
            "has_more": true,
            "next_token": encode_token(next, 0, fingerprint(&[account])),
            "items": items,
        }));
    }
    let has_more = end < ids.len();
    ok(json!({
        "has_more": has_more,
        "next_token": if has_more { encode_token(end, 0, fingerprint(&[account])) } else { String::new() },
        "items": items,
    }))
}

async fn batch_conversations(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let w = state.world();
    let Some(ids) = q.get("conversation_ids").filter(|s| !s.is_empty()) else {
        return fail(414, "conversation_ids is required");
    };
    let nested = uri.path() == BATCH_V2_PATH || w.behaviour.nested_last_message;
    let mut success = Vec::new();
    let mut failed = Vec::new();
    for id in ids.split(',') {
        match render_conversation(&w, id, nested) {
            Some(v) => success.push(v),
            None => failed.push(json!({"conversation_id": id, "error_code": 414, "error_msg": "conversation not found"})),
        }
    }
    ok(json!({"success_list": success, "failed_list": failed}))
}

async fn update_conversation(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Option<Json<Value>>,
) -> Response {
    let Some(Json(body)) = body else {
        return fail(414, "body must be JSON");
    };
    let mut w = state.world();
    if let Some(ext) = body.get("server_extension").and_then(Value::as_str) {
        if !w.set_server_extension(&id, ext) {
            return fail(414, "conversation not found");
        }
    }
    match render_conversation(&w, &id, true) {
        Some(v) => ok(v),
        None => fail(414, "conversation not found"),
    }
}

// ---- history --------------------------------------------------------------------------

fn fingerprint(parts: &[&str]) -> u64 {
    // FNV-1a over the parts, separated
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

const TOKEN_MASK: u64 = 0x5bd1_e995_a5a5_3c3c;

fn encode_token(offset: usize, page: u64, fp: u64) -> String {
    format!(
        "{:016x}{:04x}{:016x}",
        offset as u64 ^ TOKEN_MASK,
        page & 0xffff,
        fp
    )
}

fn decode_token(t: &str, fp: u64) -> Option<(usize, u64)> {
    if t.len() != 36 || !t.is_ascii() {
        return None;
    }
    let offset = u64::from_str_radix(&t[..16], 16).ok()? ^ TOKEN_MASK;
    let page = u64::from_str_radix(&t[16..20], 16).ok()?;
    let got = u64::from_str_radix(&t[20..], 16).ok()?;
    (got == fp).then_some((offset as usize, page))
}

/// A boolean query parameter; `Err(())` for anything but `true`/`false`.
fn parse_bool(q: &HashMap<String, String>, key: &str) -> Result<Option<bool>, ()> {
    match q.get(key).map(String::as_str) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(()),
    }
}

fn render_message(w: &World, m: &Message) -> Value {
    let mut v = json!({
        "message_server_id": m.server_id,
        "conversation_type": m.conversation_type(w),
        "sender_id": m.sender,
        "sender_client_type": m.sender_client_type,
        "message_type": m.message_type,
        "sub_type": m.sub_type,
        "create_time": m.create_time,
        "text": m.text,
        "extension": m.extension,
    });
    if !m.client_id.is_empty() {
        v["message_client_id"] = json!(m.client_id);
    }
    match &m.stream {
        Stream::P2p(..) => v["receiver_id"] = json!(m.receiver()),
        Stream::Team(t) => v["team_id"] = json!(t),
    }
    if let Some(a) = &m.attachment {
        v["attachment"] = a.clone();
    }
    if let (Some(by), Some(t)) = (&m.modify_account_id, m.modify_time) {
        v["modify_account_id"] = json!(by);
        v["modify_time"] = json!(t);
    }
    if m.malformed {
        v["message_server_id"] = json!("x-broken");
    }
    v
}

async fn history(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let malformed = state
        .faults
        .take(HISTORY_PATH, Some(FaultKind::MalformedMessage))
        .is_some();
    let mut w = state.world();
    let num = |k: &str| q.get(k).map(|v| v.parse::<i64>());
    let (Some(Ok(begin)), Some(Ok(end))) = (num("begin_time"), num("end_time")) else {
        return fail(414, "begin_time and end_time are required");
    };
    if begin >= end {
        return fail(414, "bad time");
    }
    let limit = match num("limit") {
        Some(Ok(l)) if (1..=100).contains(&l) => l as usize,
        _ => return fail(414, "limit must be 1 to 100"),
    };
    let (descending, no_sense, check_team) = match (
        parse_bool(&q, "descending"),
        parse_bool(&q, "include_no_sense_msg"),
        parse_bool(&q, "check_team_valid"),
    ) {
        (Ok(d), Ok(n), Ok(c)) => (d, n.unwrap_or(false), c.unwrap_or(true)),
        _ => return fail(414, "boolean parameter must be true or false"),
    };
    let types: Option<Vec<i64>> = match q.get("message_type").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match s.split(',').map(|t| t.trim().parse()).collect() {
            Ok(v) => Some(v),
            Err(_) => return fail(414, "message_type must be a comma-separated list"),
        },
    };
    let parts: Vec<&str> = id.splitn(3, '|').collect();
    let [owner, ty, target] = parts[..] else {
        return fail(414, "conversation_id must be owner|type|target");
    };
    let stream = match ty {
        "1" => {
            if owner <= target {
                Stream::P2p(owner.into(), target.into())
            } else {
                Stream::P2p(target.into(), owner.into())
            }
        }
        "2" | "3" => match target.parse::<i64>() {
            Ok(t) => {
                let Some(team) = w.teams.get(&t) else {
                    return fail(108404, "team not found");
                };
                if (ty == "3") != team.super_team {
                    return fail(414, "conversation type does not match the team");
                }
                if ty == "2" && check_team && !team.members.iter().any(|m| m == owner) {
                    return fail(108403, "account is not a member of the team");
                }
                Stream::Team(t)
            }
            Err(_) => return fail(414, "team id must be a number"),
        },
        _ => return fail(414, "conversation type must be 1, 2 or 3"),
    };
    let Some(list) = w.streams.get(&stream) else {
        return fail(414, "conversation not found");
    };
    let mut hits: Vec<usize> = list
        .iter()
        .copied()
        .filter(|&i| {
            let m = &w.messages[i];
            m.create_time >= begin
                && m.create_time <= end
                && m.removed.is_none()
                && (no_sense || !m.no_sense_for.contains(owner))
                && types.as_ref().is_none_or(|t| t.contains(&m.message_type))
        })
        .collect();
    let ascending = match (w.behaviour.descending, descending) {
        (_, None) => false,
        (Descending::DocLiteral, Some(d)) => d,
        (Descending::NameLiteral, Some(d)) => !d,
    };
    if !ascending {
        hits.reverse();
    }
    let fp = fingerprint(&[
        &id,
        &begin.to_string(),
        &end.to_string(),
        &limit.to_string(),
        q.get("descending").map_or("", String::as_str),
        &no_sense.to_string(),
        q.get("message_type").map_or("", String::as_str),
    ]);
    let (offset, page) = match q.get("page_token").filter(|t| !t.is_empty()) {
        None => (0, 0),
        Some(t) => match decode_token(t, fp) {
            Some(p) => p,
            None => return fail(414, "page_token does not belong to this query"),
        },
    };
    let take = if w.behaviour.short_pages && page % 3 == 1 {
        (limit / 2).max(1)
    } else {
        limit
    };
    let start = offset.min(hits.len());
    let stop = (start + take).min(hits.len());
    if malformed && start < stop {
        let idx = hits[start];
        w.messages[idx].malformed = true;
    }
    let looping = w
        .behaviour
        .history_token_loop
        .as_ref()
        .filter(|(c, _)| *c == id)
        .map(|(_, l)| l.clone());
    match looping {
        Some(TokenLoop::Cycle) => {
            let items: Vec<Value> = hits[start..stop]
                .iter()
                .map(|&i| render_message(&w, &w.messages[i]))
                .collect();
            // page 0 → token of page 1 (A), page 1 → page 2 (B), then A, B, A…
            let first_stop = limit.min(hits.len());
            let next = match page {
                0 => encode_token(first_stop, 1, fp),
                1 => encode_token(stop, 2, fp),
                2 => encode_token(first_stop, 1, fp),
                _ => encode_token(stop, 2, fp),
            };
            return ok(json!({"has_more": true, "next_token": next, "items": items}));
        }
        Some(TokenLoop::FreshEmpty) => {
            return ok(json!({
                "has_more": true,
                "next_token": encode_token(offset, page + 1, fp),
                "items": [],
            }));
        }
        None => {}
    }
    let items: Vec<Value> = hits[start..stop]
        .iter()
        .map(|&i| render_message(&w, &w.messages[i]))
        .collect();
    let has_more = stop < hits.len();
    ok(json!({
        "has_more": has_more,
        "next_token": if has_more { encode_token(stop, page + 1, fp) } else { String::new() },
        "items": items,
    }))
}

// ---- quick comments -------------------------------------------------------------------

async fn query_quick_comments(
    State(state): State<AppState>,
    body: Option<Json<Value>>,
) -> Response {
    let Some(Json(body)) = body else {
        return fail(414, "body must be JSON");
    };
    let Some(list) = body.get("messages").and_then(Value::as_array) else {
        return fail(414, "messages is required");
    };
    if list.is_empty() || list.len() > 100 {
        return fail(414, "messages must hold 1 to 100 entries");
    }
    let no_success_list = state
        .faults
        .take(QUICK_COMMENT_PATH, Some(FaultKind::NoSuccessList))
        .is_some();
    let w = state.world();
    if w.behaviour.quick_comment_needs_client_id
        && list.iter().any(|k| {
            k.get("message_client_id")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        })
    {
        return fail(414, "message_client_id is required");
    }
    if no_success_list {
        return ok(json!({"failed_list": []}));
    }
    let mut success = Vec::new();
    let mut failed = Vec::new();
    for key in list {
        let id = key.get("message_server_id").and_then(Value::as_i64);
        let found = id
            .and_then(|id| w.by_id.get(&id))
            .map(|&i| &w.messages[i])
            .filter(|m| {
                m.removed.is_none()
                    && key.get("create_time").and_then(Value::as_i64) == Some(m.create_time)
                    && key.get("sender_id").and_then(Value::as_str) == Some(m.sender.as_str())
                    && key.get("conversation_type").and_then(Value::as_i64)
                        == Some(m.conversation_type(&w))
            });
        let mut out = json!({
            "conversation_type": key.get("conversation_type"),
            "sender_id": key.get("sender_id"),
            "receiver_id": key.get("receiver_id"),
            "message_server_id": key.get("message_server_id"),
            "message_client_id": key.get("message_client_id"),
            "create_time": key.get("create_time"),
        });
        match found {
            Some(m) => {
                out["comments"] = json!(m
                    .comments
                    .iter()
                    .map(|c| json!({"operator_id": c.operator_id, "index": c.index, "extension": c.extension, "time": c.time}))
                    .collect::<Vec<_>>());
                success.push(out);
            }
            None => {
                out["error_code"] = json!(107404);
                out["error_msg"] = json!("message not found");
                failed.push(out);
            }
        }
    }
    ok(json!({"success_list": success, "failed_list": failed}))
}
