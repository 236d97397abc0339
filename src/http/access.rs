//! Who may use the server, checked once for every request ([`guard`]), and how a browser
//! signs in and out.
//!
//! 1. **Host.** The `Host` header must be a loopback name or address, the listen address,
//!    an IP literal when listening on every address, a name in `server.allowed_hosts` or
//!    the host of `server.public_url`. A web page elsewhere that rebinds its own name to
//!    127.0.0.1 (DNS rebinding) sends its own name and is refused. With a token and no
//!    `allowed_hosts`, any host is accepted: the token is then what protects.
//! 2. **Other sites.** A request another site's page makes (`Origin` of another host, or
//!    `Sec-Fetch-Site: cross-site`/`same-site`) is refused, except following a plain link
//!    to a page (a top-level `GET` navigation), which can read nothing.
//! 3. **Token.** With `server.token`, everything but `/healthz`, `/readyz`, `/login` and
//!    `/logout` needs `Authorization: Bearer <token>` or a signed-in browser's session
//!    cookie. Tokens are compared through their SHA-256 digests in constant time
//!    ([`subtle`]). A session is a random id the server remembers for
//!    [`SESSION_LIFETIME`] (a restart signs everyone out); the cookie is `HttpOnly`,
//!    `SameSite=Strict`, and `Secure` when `server.public_url` is https. Failed sign-ins
//!    are limited to [`LOGIN_FAILURES`] per [`LOGIN_WINDOW`], for all clients together.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::warn;

use super::{api::ApiError, web, ApiState};
use crate::config::Secret;

/// The name of the cookie a signed-in browser carries.
const COOKIE: &str = "chatvault_session";

/// How long a browser stays signed in.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions remembered at most (the oldest go first).
const MAX_SESSIONS: usize = 1000;

/// Failed sign-ins allowed per [`LOGIN_WINDOW`] before `/login` answers 429.
pub const LOGIN_FAILURES: usize = 10;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(300);

/// Paths open without the token.
const OPEN_PATHS: [&str; 4] = ["/healthz", "/readyz", "/login", "/logout"];

/// The name `server.token` is recorded under in the access log.
pub const DEFAULT_TOKEN_NAME: &str = "default";
/// Who the access log names when no token is configured (loopback only).
pub const ANONYMOUS: &str = "anonymous";

/// Who is asking, as the access log records it: the name of the token presented (or the
/// one the browser signed in with), and the client's address. [`guard`] puts it in the
/// extensions of every request it lets through to a handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub who: String,
    pub client: Option<String>,
}

/// The access rules of one server.
pub struct Access {
    /// The accepted tokens with their names (`server.token` is [`DEFAULT_TOKEN_NAME`]).
    tokens: Vec<(String, Secret)>,
    allowed_hosts: Vec<String>,
    public_url: Option<String>,
    listen: OnceLock<SocketAddr>,
    /// Live sessions: expiry and the name of the token they signed in with.
    sessions: Mutex<HashMap<[u8; 32], (Instant, String)>>,
    failures: Mutex<VecDeque<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Access {
    /// `token`: `None` or empty for no token.
    pub fn new(
        token: Option<Secret>,
        allowed_hosts: Vec<String>,
        public_url: Option<String>,
    ) -> Access {
        Access {
            tokens: token
                .filter(|t| !t.expose().is_empty())
                .map(|t| (DEFAULT_TOKEN_NAME.to_string(), t))
                .into_iter()
                .collect(),
            allowed_hosts: allowed_hosts
                .into_iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            public_url,
            listen: OnceLock::new(),
            sessions: Mutex::default(),
            failures: Mutex::default(),
        }
    }

    /// Also accept these named tokens (`[[server.tokens]]`); empty ones are ignored.
    pub fn with_named_tokens(mut self, named: Vec<(String, Secret)>) -> Access {
        self.tokens
            .extend(named.into_iter().filter(|(_, t)| !t.expose().is_empty()));
        self
    }

    /// The accepted tokens with their names.
    pub fn tokens(&self) -> &[(String, Secret)] {
        &self.tokens
    }

    /// Whether requests need a token (one is configured).
    pub fn requires_token(&self) -> bool {
        !self.tokens.is_empty()
    }

    pub fn allowed_hosts(&self) -> &[String] {
        &self.allowed_hosts
    }

    pub fn public_url(&self) -> Option<&str> {
        self.public_url.as_deref()
    }

    /// The address the server listens on (set once it is bound).
    pub fn set_listen(&self, address: SocketAddr) {
        let _ = self.listen.set(address);
    }

    /// The name of the token `given` is, comparing with every token in constant time
    /// (digests of equal length compared).
    pub fn token_name(&self, given: &[u8]) -> Option<&str> {
        let given = Sha256::digest(given);
        let mut found = None;
        for (name, token) in &self.tokens {
            let expected = Sha256::digest(token.expose().as_bytes());
            if bool::from(given.ct_eq(&expected)) && found.is_none() {
                found = Some(name.as_str());
            }
        }
        found
    }

    /// Whether `given` is one of the tokens.
    pub fn token_matches(&self, given: &[u8]) -> bool {
        self.token_name(given).is_some()
    }

    /// Who the request is, when the token rule lets it in: [`ANONYMOUS`] without a token
    /// configured, else the name of its bearer token or of its live session's token.
    fn caller(&self, headers: &HeaderMap) -> Option<String> {
        if self.tokens.is_empty() {
            return Some(ANONYMOUS.to_string());
        }
        if let Some(name) = bearer(headers).and_then(|given| self.token_name(given)) {
            return Some(name.to_string());
        }
        session_ids(headers).find_map(|id| self.session_name(id))
    }

    /// Whether the request is allowed by the token rule: no token configured, or a right
    /// bearer token, or a live session.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        self.caller(headers).is_some()
    }

    /// Whether the `Host` header names this server (see the module doc).
    fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host);
        if name == "localhost" {
            return true;
        }
        if let Ok(ip) = name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            let ip = ip.to_canonical();
            if ip.is_loopback() {
                return true;
            }
            if let Some(listen) = self.listen.get() {
                let listen_ip = listen.ip().to_canonical();
                if listen_ip == ip || listen_ip.is_unspecified() {
                    return true;
                }
            }
        }
        if self.allowed_hosts.iter().any(|h| host_name(h) == name) {
            return true;
        }
        if let Some(public) = self.public_url.as_deref().and_then(url_host) {
            if host_name(public) == name {
                return true;
            }
        }
        self.requires_token() && self.allowed_hosts.is_empty()
    }

    /// A new session for the token named `token_name`; its id goes in the cookie, its
    /// digest stays here.
    fn start_session(&self, token_name: &str) -> String {
        let id = hex::encode(rand::random::<[u8; 32]>());
        let now = Instant::now();
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, (expiry, _)| *expiry > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, (e, _))| *e)
                .map(|(k, _)| *k)
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            Sha256::digest(id.as_bytes()).into(),
            (now + SESSION_LIFETIME, token_name.to_string()),
        );
        id
    }

    /// The token name of a live session.
    fn session_name(&self, id: &str) -> Option<String> {
        let digest: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        lock(&self.sessions)
            .get(&digest)
            .filter(|(expiry, _)| *expiry > Instant::now())
            .map(|(_, name)| name.clone())
    }

    fn end_session(&self, id: &str) {
        let digest: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        lock(&self.sessions).remove(&digest);
    }

    /// `Some(wait)` while failed sign-ins are over the limit.
    fn login_blocked(&self) -> Option<Duration> {
        let now = Instant::now();
        let mut failures = lock(&self.failures);
        while failures
            .front()
            .is_some_and(|t| now.duration_since(*t) >= LOGIN_WINDOW)
        {
            failures.pop_front();
        }
        if failures.len() < LOGIN_FAILURES {
            return None;
        }
        failures
            .front()
            .map(|first| LOGIN_WINDOW.saturating_sub(now.duration_since(*first)))
    }

    fn login_failed(&self) {
        lock(&self.failures).push_back(Instant::now());
    }

    fn cookie(&self, value: &str, max_age: Duration) -> String {
        let secure = self
            .public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"));
        format!(
            "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
            max_age.as_secs(),
            if secure { "; Secure" } else { "" }
        )
    }
}

/// The host of a URL (`https://host:port/path` → `host:port`).
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    rest.split(['/', '?', '#']).next()
}

/// A `Host` value without its port, lowercase, without a trailing dot.
fn host_name(host: &str) -> String {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((inner, _)) => format!("[{inner}]"),
            None => host.to_string(),
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name.to_string(),
            _ => host.to_string(),
        }
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let (scheme, given) = value.split_first_chunk::<7>()?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| given.trim_ascii())
}

fn session_ids(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .filter(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v)
}

/// Why a request comes from another site's page, if it does (see the module doc).
fn foreign_origin(access: &Access, request: &Request) -> Option<&'static str> {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("null");
        let same_host = url_host(origin).is_some_and(|o| {
            host.is_some_and(|h| o.eq_ignore_ascii_case(h))
                || access
                    .public_url()
                    .and_then(url_host)
                    .is_some_and(|p| o.eq_ignore_ascii_case(p))
        });
        if !same_host {
            return Some("it comes from another site's page (Origin)");
        }
    }
    let site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if matches!(site, "cross-site" | "same-site") {
        let navigation = request.method() == Method::GET
            && headers
                .get("sec-fetch-mode")
                .is_some_and(|v| v.as_bytes() == b"navigate")
            && headers
                .get("sec-fetch-dest")
                .is_none_or(|v| v.as_bytes() == b"document");
        if !(navigation && web::is_page(request.uri().path())) {
            return Some("it comes from another site's page (Sec-Fetch-Site)");
        }
    }
    None
}

/// The access check of every request (see the module doc).
pub async fn guard(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    let access = &state.access;
    let path = request.uri().path();
    if path == "/healthz" {
        return next.run(request).await;
    }
    if let Some(host) = request
        .headers()
        .get(header::HOST)
        .map(|h| h.to_str().unwrap_or(""))
    {
        if !access.host_allowed(host) {
            warn!(
                host = %crate::terminal::escape(host),
                "refused a request for a host name this server does not answer to"
            );
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "this server does not answer to that host name; add it to server.allowed_hosts",
            )
            .into_response_for(request.headers());
        }
    }
    if let Some(why) = foreign_origin(access, &request) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            format!("request refused: {why}; open the archive's pages directly"),
        )
        .into_response_for(request.headers());
    }
    if OPEN_PATHS.contains(&path) {
        return next.run(request).await;
    }
    if request.method() == Method::POST && path.starts_with(YUNXIN_HOOK_PREFIX) {
        // upstream cannot send the token: the handler checks the request's signature
        // ([`verify_yunxin_copy`]) before anything is applied
        return next.run(request).await;
    }
    if let Some(who) = access.caller(request.headers()) {
        let client = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(address)| address.to_string());
        let mut request = request;
        request.extensions_mut().insert(Caller { who, client });
        return next.run(request).await;
    }
    if web::wants_html(request.headers()) {
        let back = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".to_string());
        return web::sign_in_required(&back);
    }
    let mut response = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token: send Authorization: Bearer <server.token>",
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"chatvault\""),
    );
    response
}

/// Where Yunxin posts its message copies (`POST /hooks/yunxin/{source}`): open without the
/// token, checked by signature instead.
pub const YUNXIN_HOOK_PREFIX: &str = "/hooks/yunxin/";

/// How far a message copy's `CurTime` may be from this server's clock, either way.
pub const YUNXIN_COPY_WINDOW: Duration = Duration::from_secs(300);

/// Why a message copy was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum CopyRefused {
    /// A header is missing or not text.
    Missing(&'static str),
    /// `AppKey` is not the source's (403).
    WrongAppKey,
    /// `MD5` is not the body's digest (401).
    WrongDigest,
    /// `CurTime` is not a time within [`YUNXIN_COPY_WINDOW`] of now (401).
    Stale,
    /// `CheckSum` is not sha1(AppSecret + MD5 + CurTime) (401).
    WrongChecksum,
}

impl CopyRefused {
    pub fn status(&self) -> StatusCode {
        match self {
            CopyRefused::WrongAppKey => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    pub fn message(&self) -> String {
        match self {
            CopyRefused::Missing(h) => format!("message copy refused: header {h} is missing"),
            CopyRefused::WrongAppKey => {
                "message copy refused: AppKey is not this source's app".to_string()
            }
            CopyRefused::WrongDigest => {
                "message copy refused: MD5 is not the digest of the body".to_string()
            }
            CopyRefused::Stale => format!(
                "message copy refused: CurTime is not within {} s of this server's clock",
                YUNXIN_COPY_WINDOW.as_secs()
            ),
            CopyRefused::WrongChecksum => "message copy refused: wrong CheckSum".to_string(),
        }
    }
}

/// Check a Yunxin message copy (消息抄送) the way NetEase signs it: `AppKey` is the app's,
/// `MD5` is the lowercase hex MD5 of the body, `CurTime` is within
/// [`YUNXIN_COPY_WINDOW`] of `now` (milliseconds or seconds since 1970: both are
/// accepted), and `CheckSum` = hex(sha1(AppSecret + MD5 + CurTime)). Digests and keys are
/// compared in constant time.
pub fn verify_yunxin_copy(
    app_key: &str,
    app_secret: &Secret,
    headers: &HeaderMap,
    body: &[u8],
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), CopyRefused> {
    use md5::Md5;
    use sha1::Sha1;
    let text = |name: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .ok_or(CopyRefused::Missing(name))
    };
    let given_key = text("AppKey")?;
    let cur_time = text("CurTime")?;
    let given_md5 = text("MD5")?;
    let given_sum = text("CheckSum")?;
    let same = |a: &str, b: &str| {
        bool::from(Sha256::digest(a.as_bytes()).ct_eq(&Sha256::digest(b.as_bytes())))
    };
    if !same(given_key, app_key) {
        return Err(CopyRefused::WrongAppKey);
    }
    let md5 = hex::encode(Md5::digest(body));
    if !same(&given_md5.to_ascii_lowercase(), &md5) {
        return Err(CopyRefused::WrongDigest);
    }
    let at: i64 = cur_time.parse().map_err(|_| CopyRefused::Stale)?;
    let at_ms = if at.abs() >= 100_000_000_000 {
        at
    } else {
        at.saturating_mul(1000)
    };
    let skew_ms = now.timestamp_millis().saturating_sub(at_ms).unsigned_abs();
    if u128::from(skew_ms) > YUNXIN_COPY_WINDOW.as_millis() {
        return Err(CopyRefused::Stale);
    }
    let mut h = Sha1::new();
    h.update(app_secret.expose().as_bytes());
    h.update(given_md5.as_bytes());
    h.update(cur_time.as_bytes());
    let expected = hex::encode(h.finalize());
    if !same(&given_sum.to_ascii_lowercase(), &expected) {
        return Err(CopyRefused::WrongChecksum);
    }
    Ok(())
}

/// Whether the request may see details the archive's readers may see (the reason
/// `/readyz` gives): no token configured, or the request carries it.
pub fn may_read(state: &ApiState, headers: &HeaderMap) -> bool {
    state.access.authorized(headers)
}

/// `/login` and `/logout`.
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
}

#[derive(Debug, serde::Deserialize)]
struct LoginQuery {
    next: Option<String>,
}

async fn login_form(Query(q): Query<LoginQuery>) -> Response {
    web::login_page(StatusCode::OK, &safe_next(q.next.as_deref()), None)
}

#[derive(Debug, serde::Deserialize)]
struct LoginForm {
    token: String,
    next: Option<String>,
}

async fn login(State(state): State<ApiState>, Form(form): Form<LoginForm>) -> Response {
    let access = &state.access;
    let next = safe_next(form.next.as_deref());
    if !access.requires_token() {
        // no token configured: nothing to sign in to
        return Redirect::to(&next).into_response();
    }
    if let Some(wait) = access.login_blocked() {
        let mut response = web::login_page(
            StatusCode::TOO_MANY_REQUESTS,
            &next,
            Some("Too many wrong tokens; wait a few minutes before trying again."),
        );
        if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return response;
    }
    let Some(token_name) = access.token_name(form.token.trim().as_bytes()) else {
        access.login_failed();
        warn!("web sign-in with a wrong token");
        return web::login_page(
            StatusCode::UNAUTHORIZED,
            &next,
            Some("That is not the server token."),
        );
    };
    let session = access.start_session(token_name);
    let mut response = Redirect::to(&next).into_response();
    if let Ok(v) = HeaderValue::from_str(&access.cookie(&session, SESSION_LIFETIME)) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

async fn logout(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    for id in session_ids(&headers) {
        state.access.end_session(id);
    }
    let mut response = Redirect::to("/login").into_response();
    if let Ok(v) = HeaderValue::from_str(&state.access.cookie("", Duration::ZERO)) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// Where to go after signing in: only a path on this server. The value is read the way a
/// browser would follow it (percent-escapes decoded, tabs and newlines dropped), and
/// anything that could leave the server (`//host`, `/\host`, a scheme) gives `/`.
pub fn safe_next(next: Option<&str>) -> String {
    let Some(next) = next else {
        return "/".to_string();
    };
    let decoded = percent_encoding::percent_decode_str(next).decode_utf8_lossy();
    let local = next.starts_with('/')
        && next.len() <= 2048
        && !decoded.chars().any(|c| c.is_control() || c == '\\')
        && !decoded.starts_with("//")
        && next
            .parse::<axum::http::Uri>()
            .is_ok_and(|u| u.scheme().is_none() && u.authority().is_none());
    if local {
        next.to_string()
    } else {
        "/".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy_headers(key: &str, md5: &str, cur_time: &str, sum: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("AppKey", key),
            ("MD5", md5),
            ("CurTime", cur_time),
            ("CheckSum", sum),
        ] {
            h.insert(name, HeaderValue::from_str(value).unwrap());
        }
        h
    }

    #[test]
    fn message_copies_are_checked_as_yunxin_signs_them() {
        use sha1::{Digest as _, Sha1};
        let secret = Secret::new("s3cret");
        let body = br#"{"eventType":"1"}"#;
        let md5 = hex::encode(md5::Md5::digest(body));
        let now = chrono::DateTime::from_timestamp(1_754_000_000, 0).unwrap();
        let sign = |t: &str| {
            let mut h = Sha1::new();
            h.update(format!("s3cret{md5}{t}").as_bytes());
            hex::encode(h.finalize())
        };
        // milliseconds, as the copies send it, and seconds
        for t in ["1754000000000", "1754000120"] {
            let h = copy_headers("key", &md5, t, &sign(t));
            assert_eq!(
                verify_yunxin_copy("key", &secret, &h, body, now),
                Ok(()),
                "{t}"
            );
        }
        let t = "1754000000000";
        let h = copy_headers("key", &md5, t, &sign(t));
        assert_eq!(
            verify_yunxin_copy("other", &secret, &h, body, now),
            Err(CopyRefused::WrongAppKey)
        );
        assert_eq!(
            verify_yunxin_copy("key", &secret, &h, b"{}", now),
            Err(CopyRefused::WrongDigest)
        );
        assert_eq!(
            verify_yunxin_copy("key", &Secret::new("x"), &h, body, now),
            Err(CopyRefused::WrongChecksum)
        );
        let late = now + chrono::Duration::seconds(301);
        assert_eq!(
            verify_yunxin_copy("key", &secret, &h, body, late),
            Err(CopyRefused::Stale)
        );
        let t = "not a time";
        let h = copy_headers("key", &md5, t, &sign(t));
        assert_eq!(
            verify_yunxin_copy("key", &secret, &h, body, now),
            Err(CopyRefused::Stale)
        );
        assert_eq!(
            verify_yunxin_copy("key", &secret, &HeaderMap::new(), body, now),
            Err(CopyRefused::Missing("AppKey"))
        );
        assert_eq!(CopyRefused::WrongAppKey.status(), StatusCode::FORBIDDEN);
        assert_eq!(CopyRefused::Stale.status(), StatusCode::UNAUTHORIZED);
    }

    fn headers(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn access(token: Option<&str>, hosts: &[&str]) -> Access {
        let a = Access::new(
            token.map(Secret::new),
            hosts.iter().map(|h| h.to_string()).collect(),
            None,
        );
        a.set_listen("127.0.0.1:8080".parse().unwrap());
        a
    }

    #[test]
    fn only_the_right_bearer_token_matches() {
        let a = access(Some("s3cret-token-0123456789"), &[]);
        let ok = |v: &str| a.authorized(&headers(header::AUTHORIZATION, v));
        assert!(ok("Bearer s3cret-token-0123456789"));
        assert!(ok("bearer s3cret-token-0123456789"));
        assert!(!ok("Bearer s3cret-token-012345678"));
        assert!(!ok("Bearer s3cret-token-0123456789x"));
        assert!(!ok("Bearer "));
        assert!(!ok("Basic s3cret-token-0123456789"));
        assert!(!ok("s3cret-token-0123456789"));
        assert!(!a.authorized(&HeaderMap::new()));
        assert!(access(None, &[]).authorized(&HeaderMap::new()));
    }

    #[test]
    fn host_names_other_than_this_server_are_refused() {
        let a = access(None, &["archive.example.com"]);
        for ok in [
            "127.0.0.1:8080",
            "localhost:8080",
            "LOCALHOST",
            "[::1]:8080",
            "127.0.0.5",
            "archive.example.com",
            "Archive.Example.Com.:443",
        ] {
            assert!(a.host_allowed(ok), "{ok}");
        }
        for bad in ["evil.example", "evil.example:8080", "10.0.0.5:8080", ""] {
            assert!(!a.host_allowed(bad), "{bad}");
        }
        // listening everywhere: addresses are fine (they cannot be rebound), names are not
        let everywhere = Access::new(None, Vec::new(), None);
        everywhere.set_listen("0.0.0.0:8080".parse().unwrap());
        assert!(everywhere.host_allowed("10.0.0.5:8080"));
        assert!(!everywhere.host_allowed("evil.example"));
        // with a token and no list, the token protects
        assert!(access(Some("t0ken-0123456789abcdef"), &[]).host_allowed("chatvault:8080"));
        assert!(!access(Some("t0ken-0123456789abcdef"), &["a.example"]).host_allowed("b.example"));
    }

    #[test]
    fn sessions_live_until_they_end() {
        let a = access(Some("t0ken-0123456789abcdef"), &[]);
        let id = a.start_session(DEFAULT_TOKEN_NAME);
        let cookie = |id: &str| headers(header::COOKIE, &format!("x=y; {COOKIE}={id}"));
        assert!(a.authorized(&cookie(&id)));
        assert_eq!(a.caller(&cookie(&id)).as_deref(), Some(DEFAULT_TOKEN_NAME));
        assert!(!a.authorized(&cookie(&id.replace('a', "b"))) || !id.contains('a'));
        assert!(
            !a.authorized(&cookie("t0ken-0123456789abcdef")),
            "the token is not a session"
        );
        a.end_session(&id);
        assert!(!a.authorized(&cookie(&id)));
    }

    #[test]
    fn callers_are_named_after_their_token() {
        let a = access(Some("t0ken-0123456789abcdef"), &[]).with_named_tokens(vec![
            ("legal".to_string(), Secret::new("legal-0123456789abcdef")),
            ("ops".to_string(), Secret::new("ops-0123456789abcdefgh")),
        ]);
        let bearer = |v: &str| headers(header::AUTHORIZATION, &format!("Bearer {v}"));
        assert_eq!(
            a.caller(&bearer("t0ken-0123456789abcdef")).as_deref(),
            Some("default")
        );
        assert_eq!(
            a.caller(&bearer("legal-0123456789abcdef")).as_deref(),
            Some("legal")
        );
        assert_eq!(
            a.caller(&bearer("ops-0123456789abcdefgh")).as_deref(),
            Some("ops")
        );
        assert_eq!(a.caller(&bearer("nope-0123456789abcdef")), None);
        let id = a.start_session("legal");
        let cookie = headers(header::COOKIE, &format!("{COOKIE}={id}"));
        assert_eq!(a.caller(&cookie).as_deref(), Some("legal"));
        assert_eq!(
            access(None, &[]).caller(&HeaderMap::new()).as_deref(),
            Some(ANONYMOUS)
        );
    }

    #[test]
    fn failed_sign_ins_are_limited() {
        let a = access(Some("t0ken-0123456789abcdef"), &[]);
        for _ in 0..LOGIN_FAILURES {
            assert!(a.login_blocked().is_none());
            a.login_failed();
        }
        let wait = a.login_blocked().expect("blocked after the limit");
        assert!(wait <= LOGIN_WINDOW && wait > Duration::ZERO);
    }

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(safe_next(Some("/status")), "/status");
        assert_eq!(safe_next(Some("/c/a/b?around=1")), "/c/a/b?around=1");
        assert_eq!(safe_next(Some("/?q=%E4%BC%9A")), "/?q=%E4%BC%9A");
        for bad in [
            "//evil.example/",
            "https://evil.example/",
            "/\\evil.example",
            "/%09/evil.example",
            "/%0a/evil.example",
            "/\t/evil.example",
            "/%2F/evil.example",
            "/%5Cevil.example",
            "status",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/");
    }
}
