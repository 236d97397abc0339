//! The JSON API's handlers: health, readiness, metrics, status, search; and the one error
//! type every handler answers with ([`ApiError`]: JSON `{"error": "..."}`, or an error
//! page for a browser). Access is checked before a handler runs ([`super::access`]).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use tracing::warn;

use super::access::Caller;
use super::{access, web, ApiState, DATABASE_TIMEOUT};
use crate::index::search::SearchParams;
use crate::index::SearchError;
use crate::metrics;
use crate::store::Store;
use crate::store::{AccessRecord, Via};

/// An error answer: a status and one line saying what is wrong and what to do.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: one_line(&message.into()),
        }
    }

    /// JSON for API clients, an error page for a browser asking for HTML.
    pub fn into_response_for(self, headers: &HeaderMap) -> Response {
        if web::wants_html(headers) {
            let title = self.status.canonical_reason().unwrap_or("Error");
            web::error_page(self.status, title, &self.message)
        } else {
            self.into_response()
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message });
        (self.status, Json(body)).into_response()
    }
}

impl From<SearchError> for ApiError {
    fn from(e: SearchError) -> ApiError {
        if e.is_bad_request() {
            return ApiError::new(StatusCode::BAD_REQUEST, e.to_string());
        }
        if matches!(e, SearchError::NoIndex) {
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
        }
        warn!(error = %e, "search failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
    }
}

pub(super) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub(super) async fn healthz() -> &'static str {
    "ok"
}

/// 200 when the database answers and the schema is current; else 503, with the reason
/// only for a caller that may read the archive (the reason can name hosts and users).
pub(super) async fn readyz(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    let reason = match tokio::time::timeout(DATABASE_TIMEOUT, readiness(&state.store)).await {
        Ok(Ok(())) => return (StatusCode::OK, "ready").into_response(),
        Ok(Err(reason)) => one_line(&reason),
        Err(_) => format!(
            "the database did not answer within {} s",
            DATABASE_TIMEOUT.as_secs()
        ),
    };
    warn!(%reason, "not ready");
    let shown = if access::may_read(&state, &headers) {
        reason
    } else {
        "database unavailable".to_string()
    };
    (StatusCode::SERVICE_UNAVAILABLE, shown).into_response()
}

/// Why the daemon is not ready, if it is not.
async fn readiness(store: &Store) -> Result<(), String> {
    store
        .ping()
        .await
        .map_err(|err| format!("the database is unreachable: {err}"))?;
    match store.migrations_current().await {
        Ok(true) => Ok(()),
        Ok(false) => Err("the database schema is not current: run `chatvault migrate`".to_owned()),
        Err(err) => Err(format!("cannot read the applied migrations: {err}")),
    }
}

pub(super) async fn metrics(State(state): State<ApiState>) -> Response {
    let heads = match state.status.get().await {
        Ok(status) => {
            state.metrics.set_archive_status(&status);
            Some(status)
        }
        Err(reason) => {
            state.metrics.set_database_down();
            warn!(%reason, "metrics: no archive status");
            None
        }
    };
    state
        .metrics
        .set_verify_results(&state.status.verify_results());
    if let Some(hub) = &state.push {
        hub.refresh_metrics(&state.metrics);
    }
    let registry = Arc::clone(&state.metrics);
    let search = state.search.clone();
    let text = match tokio::task::spawn_blocking(move || {
        // the index's lag: each chain's head against the watermark of the index's last commit
        if let (Some(status), Some(search)) = (heads, search) {
            match search.generation().and_then(|g| g.payload()) {
                Ok(payload) => registry.set_index_lag(status.iter().map(|s| {
                    let watermark = payload.watermarks.get(&s.source).copied().unwrap_or(0);
                    (s.source.as_str(), s.events, watermark)
                })),
                Err(err) => warn!(error = %err, "metrics: cannot read the index watermarks"),
            }
        }
        registry.render()
    })
    .await
    {
        Ok(text) => text,
        Err(err) => {
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("rendering metrics failed: {err}"),
            )
            .into_response()
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

/// The status of every source, with the next scheduled run filled in.
pub(super) async fn source_status(
    state: &ApiState,
) -> Result<Vec<crate::store::SourceStatus>, ApiError> {
    let snapshot = state
        .status
        .get()
        .await
        .map_err(|reason| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, reason))?;
    let mut status = (*snapshot).clone();
    match &state.scheduler {
        Some(scheduler) => crate::scheduler::fill_next_runs_from(&mut status, scheduler),
        None => crate::scheduler::fill_next_runs(&mut status, &state.sources, chrono::Utc::now()),
    }
    if let Some(hub) = &state.push {
        for s in &mut status {
            s.push = hub.status(&s.source);
        }
    }
    Ok(status)
}

pub(super) async fn status(State(state): State<ApiState>) -> Response {
    match source_status(&state).await {
        Ok(status) => Json(status).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Run a search for the API or the web page.
pub(super) async fn run_search(
    state: &ApiState,
    params: &SearchParams,
) -> Result<crate::index::SearchPage, ApiError> {
    let request = params.to_request()?;
    let Some(index) = &state.search else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "search is not available in this process: it has no search index yet \
             (`chatvault sync` or `chatvault reindex` builds it)",
        ));
    };
    Ok(crate::index::search::search(index, &state.store, request).await?)
}

pub(super) async fn search(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    params: Result<axum::extract::Query<SearchParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let params = match params {
        Ok(axum::extract::Query(p)) => p,
        Err(e) => return ApiError::new(StatusCode::BAD_REQUEST, e.body_text()).into_response(),
    };
    let page = match run_search(&state, &params).await {
        Ok(page) => page,
        Err(e) => return e.into_response(),
    };
    let record = params
        .access_record(&caller.who, Via::Api, &page)
        .client(caller.client);
    match record_access(&state, record).await {
        Ok(()) => Json(page).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Record an access in the access log before anything is shown; when that fails the
/// access is refused with a 503 that says why (fail closed).
pub(super) async fn record_access(state: &ApiState, record: AccessRecord) -> Result<(), ApiError> {
    match state.store.record_access(record).await {
        Ok(_) => Ok(()),
        Err(e) => {
            warn!(error = %e, "access refused: the access log cannot be written");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the access log cannot be written, so nothing is shown; try again when the \
                 database accepts writes",
            ))
        }
    }
}

pub(super) async fn not_found(request: Request) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {} {}; see /healthz, /readyz, /metrics, /api/status, /api/search",
            request.method(),
            request.uri().path()
        ),
    )
    .into_response_for(request.headers())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_one_line() {
        assert_eq!(one_line("a\nb  c\r\n"), "a b c");
        assert_eq!(
            ApiError::new(StatusCode::BAD_REQUEST, "x\ny").message,
            "x y"
        );
    }
}
