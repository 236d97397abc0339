//! The axum router: authentication, request parsing, login, users and groups
//! (docs/upstreams/tangsengdaodao.md, "Login and the session token", "Errors"),
//! request counting and transport-level fault injection. The sync endpoints live in
//! `sync_api`.
//!
//! Handlers lock the world only while computing an answer, never across an `.await`.

use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::faults::{FaultKind, Faults};
use super::media;
use super::render;
use super::sessions::LoginError;
use super::sync_api;
use super::world::World;
use crate::sim::faults::Stage;
use crate::sim::serve::{self, RequestCounts};

pub(super) const CHANNEL_SYNC_PATH: &str = "/v1/message/channel/sync";

#[derive(Clone)]
pub(super) struct AppState {
    pub(super) world: Arc<Mutex<World>>,
    pub(super) faults: Faults,
    /// Every request, by path, before any fault.
    pub(super) counts: Arc<RequestCounts>,
    /// The file storage the preview route redirects to (running while this state lives).
    pub(super) storage: Arc<super::media::Storage>,
    /// The WuKongIM gateway `GET /v1/users/:uid/im` names (running while this state lives).
    pub(super) im: Arc<super::im::Gateway>,
}

impl AppState {
    pub(super) fn world(&self) -> MutexGuard<'_, World> {
        serve::lock(&self.world)
    }
}

pub(super) fn router(state: AppState) -> Router {
    let storage_url = state.storage.base_url();
    Router::new()
        .route(
            "/v1/file/preview/{*path}",
            get(
                move |path: Path<String>, query: axum::extract::Query<media::PreviewQuery>| {
                    media::preview(storage_url.clone(), path, query)
                },
            ),
        )
        .route("/v1/user/login", post(login))
        .route("/v1/conversation/sync", post(sync_api::conversation_sync))
        .route(CHANNEL_SYNC_PATH, post(sync_api::channel_sync))
        .route("/v1/message/extra/sync", post(sync_api::extra_sync))
        .route("/v1/reaction/sync", post(sync_api::reaction_sync))
        .route("/v1/users/{uid}", get(user_get))
        .route("/v1/users/{uid}/im", get(user_im))
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

/// Why a request was refused, in the shapes the server answers ("Errors").
pub(super) enum Refusal {
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

pub(super) type Answer = Result<Response, Refusal>;

/// The uid behind the `token` header.
pub(super) fn authenticate(world: &World, headers: &HeaderMap) -> Result<String, Refusal> {
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

pub(super) fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|_| Refusal::BadRequest("数据格式有误！"))
}

// ---- middleware ---------------------------------------------------------------------

async fn count_and_fault(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
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
        FaultKind::DropMidBody => serve::cut_body(next.run(request).await).await,
        FaultKind::ServerFailure(msg) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"msg": msg, "status": 400})),
        )
            .into_response(),
        FaultKind::Malformed(_) | FaultKind::ChannelFailure { .. } => next.run(request).await,
    }
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
    let req: LoginReq =
        serde_json::from_slice(&body).map_err(|_| Refusal::BadRequest("请求数据格式有误！"))?;
    let mut world = state.world();
    let token = match world.login(&req.username, &req.password, req.flag) {
        Ok(token) => token,
        Err(LoginError::MissingUsername) => return Err(Refusal::BadRequest("用户名不能为空！")),
        Err(LoginError::MissingPassword) => return Err(Refusal::BadRequest("密码不能为空！")),
        Err(LoginError::UnknownUser) => return Err(Refusal::BadRequest("用户不存在")),
        Err(LoginError::WrongPassword) => return Err(Refusal::BadRequest("密码不正确！")),
    };
    let uid = world.token_uid(&token).unwrap_or_default().to_string();
    world.after_login(&uid, "127.0.0.1");
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

// ---- users and groups ---------------------------------------------------------------

/// TangSengDaoDao proxies WuKongIM's `/route?uid=`: where the user's IM connection goes.
/// The fake gateway speaks the binary protocol on TCP only, so `ws_addr` is empty.
async fn user_im(State(state): State<AppState>, headers: HeaderMap) -> Answer {
    let world = state.world();
    authenticate(&world, &headers)?;
    Ok(Json(json!({
        "tcp_addr": state.im.tcp_addr(),
        "ws_addr": "",
        "wss_addr": "",
    }))
    .into_response())
}

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
