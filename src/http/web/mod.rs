//! The web pages, served with the API (DESIGN.md, `GET /`): server-rendered HTML (maud,
//! which escapes every interpolated value), no JavaScript, no external assets, usable on a
//! phone.
//!
//! | path | page |
//! |---|---|
//! | `GET /` | search: query box, filters, results with highlights, pagination |
//! | `GET /conversations` | conversations, most recently active first |
//! | `GET /c/{source}/{conversation}` | a conversation's messages in order, with versions, marks, reactions |
//! | `GET /status` | sources, runs, lag, errors, quarantine |
//! | `GET/POST /login` | where a browser gives the server token (kept in an HttpOnly cookie) |
//!
//! Access is the API's rule: loopback only unless `server.token` is set; then a browser
//! signs in once at `/login`.

mod pages;

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Form, Router};
use maud::Markup;
use sha2::{Digest, Sha256};

use crate::api::ApiState;
use crate::config::Secret;
use crate::store::browse::{Position, Window};

/// Messages per conversation page.
pub const PAGE_SIZE: i64 = 100;

/// The name of the cookie a signed-in browser carries.
const COOKIE: &str = "chatvault_session";

/// The pages that need the token when one is configured.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(search_page))
        .route("/conversations", get(conversations_page))
        .route("/c/{source}/{conversation}", get(conversation_page))
        .route("/status", get(status_page))
}

/// The sign-in page, reachable without the token.
pub fn login_routes() -> Router<ApiState> {
    Router::new().route("/login", get(login_form).post(login))
}

/// The cookie value that proves a browser gave the token: a digest of it, so the token
/// itself is not stored in the browser.
fn session_value(token: &Secret) -> String {
    let mut h = Sha256::new();
    h.update(b"chatvault web session\0");
    h.update(token.expose().as_bytes());
    hex::encode(h.finalize())
}

/// Whether the request carries a valid session cookie. Compared through digests, in
/// constant time.
pub fn cookie_matches(headers: &HeaderMap, token: &Secret) -> bool {
    let expected = Sha256::digest(session_value(token).as_bytes());
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(|(k, _)| *k == COOKIE)
        .any(|(_, v)| {
            Sha256::digest(v.as_bytes())
                .iter()
                .zip(expected.iter())
                .fold(0u8, |d, (a, b)| d | (a ^ b))
                == 0
        })
}

/// Whether a request wants a page rather than JSON (for the 401 answer).
pub fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// The answer to a browser without a valid session.
pub fn sign_in_required(path: &str) -> Response {
    html(StatusCode::UNAUTHORIZED, pages::login(Some(path), None))
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
    html(status, pages::error(title, message))
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
        Some(search::run(&state, &form).await)
    };
    html(
        StatusCode::OK,
        pages::search(&form, &sources, results.as_ref()),
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
            pages::conversations(&list, source.as_deref()),
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
        (Some(p), None, None) => Position::parse(p).map(Window::Before),
        (None, Some(p), None) => Position::parse(p).map(Window::After),
        (None, None, Some(id)) if !id.is_empty() => Some(Window::Around(id.clone())),
        (None, None, _) => Some(Window::Latest),
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
        Window::Around(id) => Some(id.clone()),
        _ => None,
    };
    match state
        .store
        .message_window(&source, &conversation, &window, PAGE_SIZE)
        .await
    {
        Ok(w) => html(
            StatusCode::OK,
            pages::conversation(&summary, &w, highlight.as_deref()),
        ),
        Err(e) => database_error(e),
    }
}

async fn status_page(State(state): State<ApiState>) -> Response {
    let store = &state.store;
    let statuses = match store.status().await {
        Ok(mut s) => {
            crate::scheduler::fill_next_runs(&mut s, &state.sources, chrono::Utc::now());
            s
        }
        Err(e) => return database_error(e),
    };
    let runs = match store.recent_runs(30).await {
        Ok(r) => r,
        Err(e) => return database_error(e),
    };
    let quarantine = match store.recent_quarantine(20).await {
        Ok(q) => q,
        Err(e) => return database_error(e),
    };
    html(
        StatusCode::OK,
        pages::status(&statuses, &runs, &quarantine, chrono::Utc::now()),
    )
}

#[derive(Debug, serde::Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_form(Query(q): Query<LoginQuery>) -> Response {
    html(StatusCode::OK, pages::login(q.next.as_deref(), None))
}

#[derive(Debug, serde::Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(State(state): State<ApiState>, Form(form): Form<LoginForm>) -> Response {
    let next = safe_next(form.next.as_deref());
    let Some(token) = state.token.as_ref().filter(|t| !t.expose().is_empty()) else {
        // No token configured: nothing to sign in to.
        return Redirect::to(&next).into_response();
    };
    let given = Sha256::digest(form.token.trim().as_bytes());
    let expected = Sha256::digest(token.expose().as_bytes());
    let ok = given
        .iter()
        .zip(expected.iter())
        .fold(0u8, |d, (a, b)| d | (a ^ b))
        == 0;
    if !ok {
        return html(
            StatusCode::UNAUTHORIZED,
            pages::login(Some(&next), Some("That is not the server token.")),
        );
    }
    let mut response = Redirect::to(&next).into_response();
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
        session_value(token)
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// Only local paths are followed after sign-in (no open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => "/".to_string(),
    }
}

/// The search behind the search page: the API's parameters and the shared search call.
pub mod search {
    use super::{ApiState, SearchForm};
    use crate::api::SearchParams;
    use crate::index::SearchPage;

    /// Hits shown per page.
    pub const PAGE: usize = 20;

    /// A page of results, or why there is none (one line for the reader).
    pub type Results = Result<SearchPage, String>;

    fn non_empty(s: &str) -> Option<String> {
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_string())
    }

    pub async fn run(state: &ApiState, form: &SearchForm) -> Results {
        let params = SearchParams {
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
        };
        let request = params.to_request().map_err(|e| e.to_string())?;
        let Some(index) = &state.search else {
            return Err(
                "Search is not available: this server has no search index yet \
                        (`chatvault sync` or `chatvault reindex` builds it)."
                    .to_string(),
            );
        };
        crate::index::search::search(index, state.store.pool(), request)
            .await
            .map_err(|e| {
                if !e.is_bad_request() {
                    tracing::warn!(error = %e, "web search failed");
                }
                e.to_string()
            })
    }

    /// `text` cut to about `width` characters around the first highlight, as fragments
    /// (`true` = matched).
    pub fn fragments(text: &str, highlights: &[[usize; 2]], width: usize) -> Vec<(String, bool)> {
        let chars: Vec<char> = text.chars().collect();
        let first = highlights.first().map_or(0, |h| h[0]);
        let start = if chars.len() <= width {
            0
        } else {
            first.saturating_sub(width / 4).min(chars.len() - width)
        };
        let end = (start + width).min(chars.len());
        let mut out: Vec<(String, bool)> = Vec::new();
        if start > 0 {
            out.push(("…".to_string(), false));
        }
        let mut i = start;
        for h in highlights.iter().filter(|h| h[1] > start && h[0] < end) {
            let (from, to) = (h[0].max(start), h[1].min(end));
            if from > i {
                out.push((chars[i..from].iter().collect(), false));
            }
            if to > from.max(i) {
                out.push((chars[from.max(i)..to].iter().collect(), true));
            }
            i = i.max(to);
        }
        if i < end {
            out.push((chars[i..end].iter().collect(), false));
        }
        if end < chars.len() {
            out.push(("…".to_string(), false));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_mark_matches_and_cut_long_text_around_the_first() {
        let f = search::fragments("明天开会讨论 budget", &[[2, 4], [7, 13]], 200);
        assert_eq!(
            f,
            vec![
                ("明天".to_string(), false),
                ("开会".to_string(), true),
                ("讨论 ".to_string(), false),
                ("budget".to_string(), true),
            ]
        );
        let long = format!("{}会议{}", "前".repeat(300), "后".repeat(300));
        let f = search::fragments(&long, &[[300, 302]], 40);
        assert_eq!(f.first().unwrap().0, "…");
        assert_eq!(f.last().unwrap().0, "…");
        assert!(f.contains(&("会议".to_string(), true)));
        let shown: usize = f.iter().map(|(s, _)| s.chars().count()).sum();
        assert_eq!(shown, 42);
    }

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(safe_next(Some("/status")), "/status");
        assert_eq!(safe_next(Some("/c/a/b?around=1")), "/c/a/b?around=1");
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil.example",
            "status",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn the_session_cookie_is_checked_exactly() {
        let token = Secret::new("tok-1234567890".to_string());
        let mut headers = HeaderMap::new();
        assert!(!cookie_matches(&headers, &token));
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={}", session_value(&token))).unwrap(),
        );
        assert!(cookie_matches(&headers, &token));
        let other = Secret::new("tok-other".to_string());
        assert!(!cookie_matches(&headers, &other));
        assert!(!session_value(&token).contains("tok-1234567890"));
    }
}
