//! The web pages (`GET /`): server-rendered HTML (maud, which escapes every interpolated
//! value), no JavaScript, no external assets, usable on a phone.
//!
//! | path | page |
//! |---|---|
//! | `GET /` | search: query box, filters, results with highlights, pagination |
//! | `GET /conversations` | conversations, most recently active first |
//! | `GET /c/{source}/{conversation}` | a conversation's messages in order, with versions, marks, reactions |
//! | `GET /status` | sources, runs, lag, errors, quarantine |
//!
//! Access is the server's ([`super::access`]); the sign-in page is there too.

mod pages;

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use maud::Markup;

use super::api::{run_search, source_status};
use super::ApiState;
use crate::store::browse::{Position, Slice};

/// Messages per conversation page.
pub const PAGE_SIZE: i64 = 100;

/// The pages.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(search_page))
        .route("/conversations", get(conversations_page))
        .route("/c/{source}/{conversation}", get(conversation_page))
        .route("/status", get(status_page))
}

/// Whether `path` is one of the pages (which a link from elsewhere may open).
pub fn is_page(path: &str) -> bool {
    matches!(path, "/" | "/conversations" | "/status" | "/login") || path.starts_with("/c/")
}

/// Whether a request wants a page rather than JSON (for error answers).
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// The answer to a browser without a valid session.
pub fn sign_in_required(path: &str) -> Response {
    login_page(
        StatusCode::UNAUTHORIZED,
        &super::access::safe_next(Some(path)),
        None,
    )
}

/// The sign-in page; `next` is where to go after.
pub fn login_page(status: StatusCode, next: &str, problem: Option<&str>) -> Response {
    html(status, pages::login(next, problem))
}

/// An error page.
pub fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    html(status, pages::error(title, message))
}

/// Whether browsers sign in here (a token is configured), so pages offer to sign out.
fn signs_in(state: &ApiState) -> bool {
    state.access.token().is_some()
}

fn html(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The pages load nothing from anywhere and run no script.
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
        ),
    );
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn page_error(status: StatusCode, title: &str, message: &str) -> Response {
    error_page(status, title, message)
}

fn database_error(e: impl std::fmt::Display) -> Response {
    tracing::warn!(error = %e, "web page: database query failed");
    page_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "Database unavailable",
        "The archive database did not answer; try again in a moment.",
    )
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct SearchForm {
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub conversation: String,
    #[serde(default)]
    pub sender: String,
    #[serde(default)]
    pub since: String,
    #[serde(default)]
    pub until: String,
    #[serde(default)]
    pub include_recalled: Option<String>,
    #[serde(default)]
    pub history: Option<String>,
    #[serde(default)]
    pub sort: String,
    #[serde(default)]
    pub cursor: String,
}

async fn search_page(
    State(state): State<ApiState>,
    Query(form): Query<HashMap<String, String>>,
) -> Response {
    let form = SearchForm {
        q: form.get("q").cloned().unwrap_or_default(),
        source: form.get("source").cloned().unwrap_or_default(),
        conversation: form.get("conversation").cloned().unwrap_or_default(),
        sender: form.get("sender").cloned().unwrap_or_default(),
        since: form.get("since").cloned().unwrap_or_default(),
        until: form.get("until").cloned().unwrap_or_default(),
        include_recalled: form.get("include_recalled").cloned(),
        history: form.get("history").cloned(),
        sort: form.get("sort").cloned().unwrap_or_default(),
        cursor: form.get("cursor").cloned().unwrap_or_default(),
    };
    let sources = match state.store.sources().await {
        Ok(s) => s
            .into_iter()
            .map(|(s, _)| s.to_string())
            .collect::<Vec<_>>(),
        Err(e) => return database_error(e),
    };
    let results = if form.q.trim().is_empty() {
        None
    } else {
        Some(
            run_search(&state, &search::params(&form))
                .await
                .map_err(|e| e.message),
        )
    };
    html(
        StatusCode::OK,
        pages::search(&form, &sources, results.as_ref(), signs_in(&state)),
    )
}

#[derive(Debug, serde::Deserialize)]
struct ConversationsQuery {
    source: Option<String>,
}

async fn conversations_page(
    State(state): State<ApiState>,
    Query(q): Query<ConversationsQuery>,
) -> Response {
    let source = q.source.filter(|s| !s.is_empty());
    match state.store.conversation_list(source.as_deref(), 1000).await {
        Ok(list) => html(
            StatusCode::OK,
            pages::conversations(&list, source.as_deref(), signs_in(&state)),
        ),
        Err(e) => database_error(e),
    }
}

#[derive(Debug, serde::Deserialize)]
struct WindowQuery {
    before: Option<String>,
    after: Option<String>,
    around: Option<String>,
}

async fn conversation_page(
    State(state): State<ApiState>,
    Path((source, conversation)): Path<(String, String)>,
    Query(q): Query<WindowQuery>,
) -> Response {
    let window = match (&q.before, &q.after, &q.around) {
        (Some(p), None, None) => Position::parse(p).map(Slice::Before),
        (None, Some(p), None) => Position::parse(p).map(Slice::After),
        (None, None, Some(id)) if !id.is_empty() => Some(Slice::Around(id.clone())),
        (None, None, _) => Some(Slice::Latest),
        _ => None,
    };
    let Some(window) = window else {
        return page_error(
            StatusCode::BAD_REQUEST,
            "Bad link",
            "Use at most one of before=, after= or around=, with a position from a link on these pages.",
        );
    };
    let summary = match state
        .store
        .conversation_summary(&source, &conversation)
        .await
    {
        Ok(Some(s)) => s,
        Ok(None) => {
            return page_error(
                StatusCode::NOT_FOUND,
                "No such conversation",
                &format!("The archive has no conversation {conversation:?} in source {source:?}."),
            )
        }
        Err(e) => return database_error(e),
    };
    let highlight = match &window {
        Slice::Around(id) => Some(id.clone()),
        _ => None,
    };
    match state
        .store
        .message_window(&source, &conversation, &window, PAGE_SIZE)
        .await
    {
        Ok(w) => html(
            StatusCode::OK,
            pages::conversation(&summary, &w, highlight.as_deref(), signs_in(&state)),
        ),
        Err(e) => database_error(e),
    }
}

async fn status_page(State(state): State<ApiState>) -> Response {
    let store = &state.store;
    let statuses = match source_status(&state).await {
        Ok(s) => s,
        Err(e) => return database_error(e.message),
    };
    let runs = match store.recent_runs(30).await {
        Ok(r) => r,
        Err(e) => return database_error(e),
    };
    let quarantine = match store.recent_quarantine(20).await {
        Ok(q) => q,
        Err(e) => return database_error(e),
    };
    let proofs = match store.last_upstream_proofs().await {
        Ok(p) => p,
        Err(e) => return database_error(e),
    };
    html(
        StatusCode::OK,
        pages::status(
            &statuses,
            &runs,
            &quarantine,
            &proofs,
            chrono::Utc::now(),
            signs_in(&state),
        ),
    )
}

/// The search behind the search page: its form as the API's parameters.
pub mod search {
    use super::SearchForm;
    use crate::index::search::SearchParams;
    use crate::index::SearchPage;

    /// Hits shown per page.
    pub const PAGE: usize = 20;

    /// A page of results, or why there is none (one line for the reader).
    pub type Results = Result<SearchPage, String>;

    fn non_empty(s: &str) -> Option<String> {
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_string())
    }

    /// The form's fields as the search API's parameters.
    pub fn params(form: &SearchForm) -> SearchParams {
        SearchParams {
            q: Some(form.q.clone()),
            source: non_empty(&form.source),
            conversation: non_empty(&form.conversation),
            sender: non_empty(&form.sender),
            since: non_empty(&form.since),
            until: non_empty(&form.until),
            kind: None,
            recalled: form
                .include_recalled
                .as_ref()
                .map(|_| "include".to_string()),
            history: form.history.as_ref().map(|_| true),
            sort: non_empty(&form.sort),
            limit: Some(PAGE),
            cursor: non_empty(&form.cursor),
        }
    }
}
