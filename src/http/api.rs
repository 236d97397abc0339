//! The HTTP API (axum): health, readiness, metrics, status.
//!
//! | path | answers |
//! |---|---|
//! | `GET /healthz` | 200 `ok` while the process is up |
//! | `GET /readyz` | 200 when the database answers and migrations are current, else 503 with why |
//! | `GET /metrics` | Prometheus text (see [`crate::metrics`]) |
//! | `GET /api/status` | the objects of `chatvault status --json`, as a JSON array |
//! | `GET /api/search?q=…` | `{"hits": [...], "next_cursor": ..., "total": n}`: the filters of `chatvault search` as parameters, hits as in `search --json`; `cursor=` pages on |
//!
//! Errors are JSON `{"error": "..."}`. Access (DESIGN.md): the API listens on loopback only
//! unless `server.token` is set ([`serve`] refuses otherwise); with a token, every path but
//! `/healthz` and `/readyz` needs `Authorization: Bearer <token>`, compared in constant time.
//! The token never reaches logs, errors or responses. Handlers only await: database calls are
//! async and rendering runs on a blocking thread, so no handler stalls the runtime.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{Secret, ServerConfig};
use crate::metrics::{self, Metrics};
use crate::store::Store;

/// How long `/readyz` and `/metrics` wait for the database before answering without it.
pub const DATABASE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub token: Option<Secret>,
    /// The configured sources, for the schedule facts of `/api/status`.
    pub sources: Arc<Vec<crate::config::SourceConfig>>,
    /// The search index the daemon keeps current (`None`: `/api/search` answers 503).
    pub search: Option<crate::index::SearchIndex>,
}

impl ApiState {
    /// The token requests must carry, if any (an empty token counts as none).
    fn required_token(&self) -> Option<&Secret> {
        self.token.as_ref().filter(|t| !t.expose().is_empty())
    }
}

/// The API's routes. With a token in `state`, every route but `/healthz` and `/readyz`
/// (and every unknown path) needs it.
pub fn router(state: ApiState) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/api/status", get(status_handler))
        .route("/api/search", get(search_handler))
        .merge(crate::web::routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(crate::web::login_routes())
        .merge(guarded)
        .with_state(state)
}

/// Bind `config.listen` and serve until `shutdown` turns true.
///
/// Refuses a non-loopback address without a token. The token is `state.token`, or
/// `config.token` when the state has none.
pub async fn serve(
    config: &ServerConfig,
    mut state: ApiState,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    if state.required_token().is_none() {
        state.token = config.token.clone();
    }
    check_exposure(config.listen, state.required_token().is_some())?;
    let listener = bind(config.listen).await?;
    serve_on(listener, state, shutdown, config.shutdown_timeout).await
}

/// Serve on a listener already bound (tests bind `127.0.0.1:0`) until `shutdown` turns true
/// (or its sender is dropped). In-flight requests get `shutdown_timeout` to finish.
///
/// Refuses a listener on a non-loopback address when `state` has no token.
pub async fn serve_on(
    listener: TcpListener,
    state: ApiState,
    shutdown: watch::Receiver<bool>,
    shutdown_timeout: Duration,
) -> anyhow::Result<()> {
    let address = listener
        .local_addr()
        .context("cannot read the HTTP API's listening address")?;
    check_exposure(address, state.required_token().is_some())?;
    info!(
        %address,
        token_required = state.required_token().is_some(),
        "http api listening"
    );

    let app = router(state);
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_requested(shutdown.clone()))
        .into_future();
    let deadline = async {
        shutdown_requested(shutdown).await;
        tokio::time::sleep(shutdown_timeout).await;
    };
    tokio::select! {
        served = server => {
            served.with_context(|| format!("the HTTP API on {address} stopped"))?;
        }
        () = deadline => {
            warn!(
                %address,
                timeout_seconds = shutdown_timeout.as_secs_f64(),
                "http requests still running at the shutdown timeout; dropping them"
            );
        }
    }
    info!(%address, "http api stopped");
    Ok(())
}

/// Resolves once `shutdown` is true or its sender is gone.
async fn shutdown_requested(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Loopback only unless a token is set (DESIGN.md, HTTP API).
fn check_exposure(address: SocketAddr, has_token: bool) -> anyhow::Result<()> {
    if has_token || address.ip().to_canonical().is_loopback() {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to listen on {address} without server.token: set server.token \
         (or CHATVAULT_SERVER_TOKEN) or listen on 127.0.0.1"
    )
}

pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    match TcpListener::bind(address).await {
        Ok(listener) => Ok(listener),
        Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => anyhow::bail!(
            "cannot listen on {address}: the address is already in use; stop the other \
             process or set server.listen (or CHATVAULT_LISTEN) to a free address"
        ),
        Err(err) => Err(anyhow::Error::new(err).context(format!("cannot listen on {address}"))),
    }
}

/// A JSON error response `{"error": message}`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() });
    (status, Json(body)).into_response()
}

async fn require_token(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let Some(token) = state.required_token() else {
        return next.run(request).await;
    };
    if bearer_matches(request.headers(), token)
        || crate::web::cookie_matches(request.headers(), token)
    {
        return next.run(request).await;
    }
    if crate::web::wants_html(request.headers()) {
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".to_string());
        return crate::web::sign_in_required(&path);
    }
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token: send Authorization: Bearer <server.token>",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"chatvault\""),
    );
    response
}

/// Whether the request carries `Authorization: Bearer <token>`. Both sides are hashed
/// before comparing, so the comparison takes the same time whatever they hold, length included.
fn bearer_matches(headers: &HeaderMap, token: &Secret) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let Some((scheme, given)) = value.as_bytes().split_first_chunk::<7>() else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    let given = Sha256::digest(given.trim_ascii());
    let expected = Sha256::digest(token.expose().as_bytes());
    given
        .iter()
        .zip(expected.iter())
        .fold(0u8, |diff, (a, b)| diff | (a ^ b))
        == 0
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<ApiState>) -> Response {
    match tokio::time::timeout(DATABASE_TIMEOUT, readiness(&state.store)).await {
        Ok(Ok(())) => (StatusCode::OK, "ready").into_response(),
        Ok(Err(reason)) => {
            let reason = one_line(&reason);
            warn!(%reason, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, reason).into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "the database did not answer within {} s",
                DATABASE_TIMEOUT.as_secs()
            ),
        )
            .into_response(),
    }
}

/// Why the daemon is not ready, if it is not.
async fn readiness(store: &Store) -> Result<(), String> {
    sqlx::query("SELECT 1")
        .execute(store.pool())
        .await
        .map_err(|err| format!("the database is unreachable: {err}"))?;
    match store.migrations_current().await {
        Ok(true) => Ok(()),
        Ok(false) => Err("the database schema is not current: run `chatvault migrate`".to_owned()),
        Err(err) => Err(format!("cannot read the applied migrations: {err}")),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

async fn metrics_handler(State(state): State<ApiState>) -> Response {
    let refreshed = tokio::time::timeout(
        DATABASE_TIMEOUT,
        state.metrics.refresh_from_store(&state.store),
    )
    .await;
    match refreshed {
        Ok(Ok(())) => {}
        Ok(Err(err)) => warn!(error = %err, "metrics: cannot read the archive status"),
        Err(_) => {
            state.metrics.set_database_down();
            warn!("metrics: the database did not answer in time");
        }
    }
    let registry = Arc::clone(&state.metrics);
    let text = match tokio::task::spawn_blocking(move || registry.render()).await {
        Ok(text) => text,
        Err(err) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("rendering metrics failed: {err}"),
            )
        }
    };
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        )],
        text,
    )
        .into_response()
}

async fn status_handler(State(state): State<ApiState>) -> Response {
    match state.store.status().await {
        Ok(mut status) => {
            crate::scheduler::fill_next_runs(&mut status, &state.sources, chrono::Utc::now());
            Json(status).into_response()
        }
        Err(err) => {
            warn!(error = %err, "api status: cannot read the archive");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("cannot read the archive status: {err}"),
            )
        }
    }
}

/// The parameters of `GET /api/search` (the CLI's flags).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchParams {
    pub q: Option<String>,
    pub source: Option<String>,
    pub conversation: Option<String>,
    pub sender: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub kind: Option<String>,
    /// `exclude` (default), `include` or `only`.
    pub recalled: Option<String>,
    pub history: Option<bool>,
    pub sort: Option<String>,
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

impl SearchParams {
    pub fn to_request(&self) -> Result<crate::index::SearchRequest, crate::index::SearchError> {
        use crate::index::search::{parse_time, Withdrawn};
        use crate::index::SearchError;
        let query = self.q.clone().unwrap_or_default();
        let withdrawn = match self.recalled.as_deref() {
            None | Some("exclude") => Withdrawn::Exclude,
            Some("include") => Withdrawn::Include,
            Some("only") => Withdrawn::Only,
            Some(other) => {
                return Err(SearchError::BadRequest(format!(
                    "recalled must be exclude, include or only, not {other:?}"
                )))
            }
        };
        Ok(crate::index::SearchRequest {
            query,
            source: self.source.clone(),
            conversation: self.conversation.clone(),
            sender: self.sender.clone(),
            since: self
                .since
                .as_deref()
                .map(|s| parse_time(s, false))
                .transpose()?,
            until: self
                .until
                .as_deref()
                .map(|s| parse_time(s, true))
                .transpose()?,
            kind: self.kind.clone(),
            withdrawn,
            history: self.history.unwrap_or(false),
            sort: self.sort.as_deref().unwrap_or("newest").parse()?,
            limit: self.limit.unwrap_or(20),
            cursor: self.cursor.clone(),
        })
    }
}

async fn search_handler(
    State(state): State<ApiState>,
    params: Result<axum::extract::Query<SearchParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let params = match params {
        Ok(axum::extract::Query(p)) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, one_line(&e.body_text())),
    };
    let Some(index) = &state.search else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "search is not available in this process",
        );
    };
    let request = match params.to_request() {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    match crate::index::search::search(index, state.store.pool(), request).await {
        Ok(page) => Json(page).into_response(),
        Err(e) if e.is_bad_request() => error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => {
            warn!(error = %e, "search failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, one_line(&e.to_string()))
        }
    }
}

async fn not_found(request: Request) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {} {}; see /healthz, /readyz, /metrics, /api/status",
            request.method(),
            request.uri().path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(authorization).unwrap(),
        );
        headers
    }

    #[test]
    fn only_the_right_bearer_token_matches() {
        let token = Secret::new("s3cret-token");
        assert!(bearer_matches(&headers("Bearer s3cret-token"), &token));
        assert!(bearer_matches(&headers("bearer s3cret-token"), &token));
        assert!(!bearer_matches(&headers("Bearer s3cret-tokeN"), &token));
        assert!(!bearer_matches(&headers("Bearer s3cret"), &token));
        assert!(!bearer_matches(&headers("Bearer "), &token));
        assert!(!bearer_matches(&headers("Basic s3cret-token"), &token));
        assert!(!bearer_matches(&headers("s3cret-token"), &token));
        assert!(!bearer_matches(&HeaderMap::new(), &token));
    }

    #[test]
    fn non_loopback_addresses_need_a_token() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let err = check_exposure(any, false).unwrap_err().to_string();
        assert_eq!(
            err,
            "refusing to listen on 0.0.0.0:8080 without server.token: set server.token \
             (or CHATVAULT_SERVER_TOKEN) or listen on 127.0.0.1"
        );
        assert!(check_exposure(any, true).is_ok());
        for loopback in [
            "127.0.0.1:8080",
            "127.0.0.2:1",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert!(
                check_exposure(loopback.parse().unwrap(), false).is_ok(),
                "{loopback}"
            );
        }
        assert!(check_exposure("[::]:8080".parse().unwrap(), false).is_err());
        assert!(check_exposure("192.168.1.2:8080".parse().unwrap(), false).is_err());
    }

    #[test]
    fn reasons_are_one_line() {
        assert_eq!(one_line("a\nb  c\r\n"), "a b c");
    }
}
