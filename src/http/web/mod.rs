//! The web pages (`GET /`): server-rendered HTML (maud, which escapes every interpolated
//! value), no JavaScript, no external assets, usable on a phone.
//!
//! | path | page |
//! |---|---|
//! | `GET /` | search: query box, filters, results with highlights, pagination |
//! | `GET /conversations` | conversations, most recently active first |
//! | `GET /c/{source}/{conversation}` | a conversation's messages in order, with versions, marks, reactions |
//! | `GET /status` | sources, runs, lag, errors, quarantine |
//! | `GET /coverage` | per conversation: what is archived, known gaps with reasons, last complete read |
//! | `GET /attachment/{source}/{conversation}/{message}/{ordinal}` | a stored attachment's file ([`attachments`]) |
//!
//! Access is the server's ([`super::access`]); the sign-in page is there too.

pub mod attachments;
mod charts;
mod coverage;
mod pages;

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use maud::Markup;

use super::access::Caller;
use super::api::{record_access, run_search, source_status};
use super::ApiState;
use crate::store::browse::{Position, Slice};
use crate::store::coverage::coverage_rows;
use crate::store::{AccessRecord, AccessedId, Via};

/// Messages per conversation page.
pub const PAGE_SIZE: i64 = 100;

/// The pages.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(search_page))
        .route("/conversations", get(conversations_page))
        .route("/c/{source}/{conversation}", get(conversation_page))
        .route("/status", get(status_page))
        .route("/coverage", get(coverage_page))
        .route(
            "/attachment/{source}/{conversation}/{message}/{ordinal}",
            get(attachments::attachment_file),
        )
}

/// Whether `path` is one of the pages (which a link from elsewhere may open).
pub fn is_page(path: &str) -> bool {
    matches!(
        path,
        "/" | "/conversations" | "/status" | "/coverage" | "/login"
    ) || path.starts_with("/c/")
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
    state.access.requires_token()
}

fn html(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // The pages run no script and load nothing but this server's own images (attachments).
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'",
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
    Extension(caller): Extension<Caller>,
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
        let params = search::params(&form);
        let result = run_search(&state, &params).await;
        if let Ok(page) = &result {
            let record = params
                .access_record(&caller.who, Via::Web, page)
                .client(caller.client.clone());
            if let Err(e) = record_access(&state, record).await {
                return page_error(e.status, "Access log unavailable", &e.message);
            }
        }
        Some(result.map_err(|e| e.message))
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
    /// Show the conversation as it stood at this time (RFC 3339 or a date).
    as_of: Option<String>,
}

async fn conversation_page(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
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
    let as_of = match q.as_of.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match crate::index::search::parse_as_of(s) {
            Ok(t) => Some(t),
            Err(e) => {
                return page_error(StatusCode::BAD_REQUEST, "Bad “as of” time", &e.to_string())
            }
        },
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
        .message_window_as_of(&source, &conversation, &window, PAGE_SIZE, as_of)
        .await
    {
        Ok(w) => {
            let mut ids = vec![AccessedId {
                source: source.clone(),
                conversation_id: conversation.clone(),
                message_id: None,
            }];
            ids.extend(w.messages.iter().map(|m| AccessedId {
                source: source.clone(),
                conversation_id: conversation.clone(),
                message_id: Some(m.message_id.clone()),
            }));
            let record = AccessRecord::new(&caller.who, Via::Web, "conversation")
                .client(caller.client.clone())
                .filter("source", &source)
                .filter("conversation", &conversation)
                .filter("before", &q.before)
                .filter("after", &q.after)
                .filter("around", &q.around)
                .filter("as_of", &q.as_of)
                .ids(ids)
                .results(w.messages.len() as i64);
            if let Err(e) = record_access(&state, record).await {
                return page_error(e.status, "Access log unavailable", &e.message);
            }
            let activity = conversation_activity(&state, &summary).await;
            html(
                StatusCode::OK,
                pages::conversation(
                    &summary,
                    &w,
                    highlight.as_deref(),
                    activity,
                    as_of,
                    signs_in(&state),
                ),
            )
        }
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
    let mut charts = std::collections::BTreeMap::new();
    let today = chrono::Utc::now().date_naive();
    for s in statuses.iter() {
        let days = store.messages_per_day(&s.source, today, CHART_DAYS).await;
        let durations = store.run_durations(&s.source, CHART_RUNS).await;
        let (days, durations) = match (days, durations) {
            (Ok(d), Ok(r)) => (d, r),
            (Err(e), _) | (_, Err(e)) => return database_error(e),
        };
        charts.insert(
            s.source.clone(),
            maud::html! {
                (charts::messages_per_day(&format!("Messages per day, last {CHART_DAYS} days"), &days))
                (charts::run_durations(&format!("Run durations, last {CHART_RUNS} runs"), &durations))
            },
        );
    }
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
            &charts,
            &proofs,
            chrono::Utc::now(),
            signs_in(&state),
        ),
    )
}

/// Days in the messages-per-day charts.
const CHART_DAYS: i64 = 30;
/// Runs in the run-duration charts.
const CHART_RUNS: i64 = 100;

/// A conversation's messages per day over the [`CHART_DAYS`] days up to its newest message;
/// `None` (no chart) when it has none or the query fails (the messages still show).
async fn conversation_activity(
    state: &ApiState,
    summary: &crate::store::browse::ConversationSummary,
) -> Option<maud::Markup> {
    let last_day = summary.last_message_at?.date_naive();
    let days = state
        .store
        .conversation_messages_per_day(
            &summary.source,
            &summary.conversation_id,
            last_day,
            CHART_DAYS,
        )
        .await;
    match days {
        Ok(days) => Some(charts::messages_per_day(
            &format!("Messages per day, the {CHART_DAYS} days to the newest message"),
            &days,
        )),
        Err(e) => {
            tracing::warn!(error = %e, "conversation page: no activity chart");
            None
        }
    }
}

async fn coverage_page(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ConversationsQuery>,
) -> Response {
    let source = q.source.filter(|s| !s.is_empty());
    match state.store.coverage_report(source.as_deref()).await {
        Ok(mut report) => {
            let record = AccessRecord::new(&caller.who, Via::Web, "coverage")
                .client(caller.client.clone())
                .filter("source", &source)
                .results(coverage_rows(&report));
            if let Err(e) = record_access(&state, record).await {
                return page_error(e.status, "Access log unavailable", &e.message);
            }
            crate::connector::limits::describe(&mut report, &state.sources);
            html(
                StatusCode::OK,
                coverage::coverage(&report, source.as_deref(), signs_in(&state)),
            )
        }
        Err(e) => database_error(e),
    }
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
