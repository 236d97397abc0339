//! The HTTP client shared by all connectors of a source: timeouts, gzip, a user agent,
//! a bounded response size, a per-source request rate limit and request counters.
//!
//! It classifies transport failures into [`ConnectorError`]s but never retries: the sync
//! engine owns retries. Error texts name the path, never a header or a body with secrets.
//! It also owns what every connector does the same way with a response: the one table
//! of HTTP statuses ([`status_error`]) and how an undecodable body is kept for quarantine
//! ([`raw_body`]). What a platform says beyond the status (a message in a 400 body, a
//! business code in a 200 envelope, a JSON error on a protobuf endpoint) is read by that
//! platform's `api.rs`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use futures::StreamExt;
use reqwest::{RequestBuilder, StatusCode};
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::ConnectorError;

/// Responses larger than this are refused rather than buffered.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024 * 1024;

/// How much of an undecodable body is kept for quarantine.
pub const MAX_RAW_BODY: usize = 64 * 1024;

#[derive(Clone)]
pub struct HttpClient {
    inner: reqwest::Client,
    limiter: Arc<RateLimiter>,
    stats: Arc<HttpStats>,
    max_body: usize,
}

/// Counters the engine reads into `sync_runs` and metrics, and the upstream's clock.
#[derive(Debug, Default)]
pub struct HttpStats {
    pub requests: AtomicU64,
    pub failures: AtomicU64,
    /// How far this machine's clock was ahead of the upstream's `Date` header at the last
    /// response that had one, in seconds (negative: behind).
    clock_skew: std::sync::Mutex<Option<i64>>,
}

impl HttpStats {
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// This machine's clock minus the upstream's, as of the last response with a `Date`
    /// header (seconds; the header has whole seconds, so ±1 is no skew).
    pub fn clock_skew(&self) -> Option<i64> {
        *self.clock_skew.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note_date(&self, headers: &reqwest::header::HeaderMap) {
        let date = headers
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok());
        if let Some(date) = date {
            let skew = chrono::Utc::now().timestamp() - date.timestamp();
            *self.clock_skew.lock().unwrap_or_else(|e| e.into_inner()) = Some(skew);
        }
    }
}

/// A response whose body has been read in full (within the size bound).
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    /// The `Retry-After` header as a duration (seconds form only).
    pub fn retry_after(&self) -> Option<Duration> {
        retry_after(&self.headers)
    }
}

pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(3600.0)))
}

impl HttpClient {
    pub fn new(
        requests_per_second: f64,
        request_timeout: Duration,
    ) -> Result<Self, ConnectorError> {
        let inner = reqwest::Client::builder()
            .user_agent(concat!("chatvault/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(request_timeout)
            .gzip(true)
            .redirect(same_origin_redirects())
            .build()
            .map_err(|e| ConnectorError::Permanent(format!("cannot build http client: {e}")))?;
        Ok(HttpClient {
            inner,
            limiter: Arc::new(RateLimiter::new(requests_per_second)),
            stats: Arc::new(HttpStats::default()),
            max_body: DEFAULT_MAX_BODY,
        })
    }

    /// A smaller bound than [`DEFAULT_MAX_BODY`] (tests of the bound).
    #[cfg(test)]
    pub fn with_max_body(mut self, max_body: usize) -> Self {
        self.max_body = max_body;
        self
    }

    pub fn stats(&self) -> Arc<HttpStats> {
        self.stats.clone()
    }

    pub fn request(&self, method: reqwest::Method, url: &str) -> RequestBuilder {
        self.inner.request(method, url)
    }

    /// Send a request, waiting for the rate limiter first, and read the whole body.
    /// `what` names the request in errors (a path, never a query with secrets).
    pub async fn send(
        &self,
        request: RequestBuilder,
        what: &str,
    ) -> Result<Response, ConnectorError> {
        self.limiter.acquire().await;
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let result = self.send_inner(request, what).await;
        if result.is_err() {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn send_inner(
        &self,
        request: RequestBuilder,
        what: &str,
    ) -> Result<Response, ConnectorError> {
        let response = request
            .send()
            .await
            .map_err(|e| transport_error(what, &e))?;
        let status = response.status();
        let headers = response.headers().clone();
        self.stats.note_date(&headers);
        if let Some(len) = response.content_length() {
            if len as usize > self.max_body {
                return Err(ConnectorError::Permanent(format!(
                    "{what}: response of {len} bytes exceeds the limit of {} bytes",
                    self.max_body
                )));
            }
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| transport_error(what, &e))?;
            if body.len() + chunk.len() > self.max_body {
                return Err(ConnectorError::Permanent(format!(
                    "{what}: response exceeds the limit of {} bytes",
                    self.max_body
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// Redirects are followed only within the origin (scheme, host and port) they start
/// from, at most [`MAX_REDIRECTS`] times. Requests carry credentials (a `token` header, a
/// signature, a password in a login body that a 307 or 308 sends again), and another
/// origin must never see them.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let origin = |u: &reqwest::Url| {
            (
                u.scheme().to_string(),
                u.host_str().map(str::to_string),
                u.port_or_known_default(),
            )
        };
        let from = attempt.previous().first().map(origin);
        let to = origin(attempt.url());
        if from.as_ref() != Some(&to) {
            let target = format!(
                "{}://{}{}",
                to.0,
                to.1.as_deref().unwrap_or(""),
                to.2.map(|p| format!(":{p}")).unwrap_or_default()
            );
            return attempt.error(CrossOriginRedirect(target));
        }
        if attempt.previous().len() > MAX_REDIRECTS {
            return attempt.error(CrossOriginRedirect(String::new()));
        }
        attempt.follow()
    })
}

/// Redirects followed within one origin before giving up.
const MAX_REDIRECTS: usize = 5;

/// A redirect chatvault refused to follow: to another origin (named), or one too many.
#[derive(Debug)]
struct CrossOriginRedirect(String);

impl std::fmt::Display for CrossOriginRedirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            write!(f, "more than {MAX_REDIRECTS} redirects")
        } else {
            write!(f, "a redirect to another origin ({})", self.0)
        }
    }
}

impl std::error::Error for CrossOriginRedirect {}

fn transport_error(what: &str, e: &reqwest::Error) -> ConnectorError {
    if e.is_redirect() {
        let why = std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<CrossOriginRedirect>())
            .map_or_else(|| "a redirect".to_string(), ToString::to_string);
        return ConnectorError::Permanent(format!(
            "{what}: upstream answered with {why}; chatvault does not follow redirects off \
             the configured server, so that no credential leaves it: check base_url"
        ));
    }
    // reqwest's Display includes the URL; ours carry no secrets in URLs, but strip it anyway
    // so that a query string can never leak.
    let e = e.without_url_ref();
    ConnectorError::Transient(format!("{what}: {e}"))
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let kind = if self.is_timeout() {
            "timed out"
        } else if self.is_connect() {
            "connection failed"
        } else if self.is_body() || self.is_decode() {
            "connection dropped while reading the body"
        } else if self.is_request() {
            "request failed"
        } else {
            "transport error"
        };
        let mut detail = String::new();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            detail = s.to_string();
            source = s.source();
        }
        if detail.is_empty() {
            kind.to_string()
        } else {
            format!("{kind} ({detail})")
        }
    }
}

/// The longest wait between two requests the rate limiter imposes.
const MAX_INTERVAL: Duration = Duration::from_secs(3600);

/// The HTTP status table, the same for every platform, for an answer that is not a
/// success: 401 is unauthorized (the engine logs in again once), 429 rate limited (waiting
/// `retry_after` when upstream gave one), 408 and every 5xx transient (upstream or a proxy
/// in front of it failing for now: retried with backoff), anything else permanent (the
/// same request would fail again). `said` is what the body said, when the platform could
/// read it. A platform's own rules for a status come before this table, in its `api.rs`.
pub fn status_error(
    what: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    said: Option<&str>,
) -> ConnectorError {
    let code = status.as_u16();
    let detail = match said {
        Some(said) => format!("HTTP {code}: {said}"),
        None => format!("HTTP {code}"),
    };
    match code {
        401 => ConnectorError::Unauthorized(format!(
            "{what}: upstream refused the credentials ({detail})"
        )),
        429 => ConnectorError::RateLimited { retry_after },
        408 | 500..=599 => ConnectorError::Transient(format!("{what}: {detail}")),
        _ => ConnectorError::Permanent(format!("{what}: upstream refused the request ({detail})")),
    }
}

/// A response body that could not be decoded, as quarantine keeps it: a body that is UTF-8
/// text without NUL, up to [`MAX_RAW_BODY`] bytes, as a JSON string (an HTML error page
/// reads as itself); any other body (protobuf, other bytes, longer text) as
/// `{"base64": ...}` of its first [`MAX_RAW_BODY`] bytes, with `"truncated_from"`: its
/// length, when it was cut. Either way the bytes kept are exactly the bytes received
/// (PostgreSQL cannot store NUL in text, so text with NUL goes as base64).
pub fn raw_body(body: &[u8]) -> Value {
    if body.len() <= MAX_RAW_BODY && !body.contains(&0) {
        if let Ok(text) = std::str::from_utf8(body) {
            return Value::String(text.to_string());
        }
    }
    let kept = &body[..body.len().min(MAX_RAW_BODY)];
    let mut raw = json!({"base64": base64::engine::general_purpose::STANDARD.encode(kept)});
    if kept.len() < body.len() {
        raw["truncated_from"] = json!(body.len());
    }
    raw
}

/// A token bucket of one: requests are spaced at least `1 / rate` apart.
struct RateLimiter {
    interval: Option<Duration>,
    next: Mutex<Instant>,
}

impl RateLimiter {
    fn new(requests_per_second: f64) -> Self {
        // At most one request an hour: a rate so small that its interval overflows a
        // duration (1e-300 per second) must not panic here or at `slot + interval`.
        let interval = (requests_per_second.is_finite() && requests_per_second > 0.0).then(|| {
            Duration::try_from_secs_f64(1.0 / requests_per_second)
                .map_or(MAX_INTERVAL, |interval| interval.min(MAX_INTERVAL))
        });
        RateLimiter {
            interval,
            next: Mutex::new(Instant::now()),
        }
    }

    async fn acquire(&self) {
        let Some(interval) = self.interval else {
            return;
        };
        let wait_until = {
            let mut next = self.next.lock().await;
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + interval;
            slot
        };
        tokio::time::sleep_until(wait_until).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_absurdly_small_rate_does_not_panic() {
        let limiter = RateLimiter::new(1e-300);
        assert_eq!(limiter.interval, Some(MAX_INTERVAL));
        limiter.acquire().await;
        assert!(HttpClient::new(1e-300, Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn the_clock_skew_is_read_from_the_date_header() {
        let stats = HttpStats::default();
        assert_eq!(stats.clock_skew(), None);
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::DATE, "yesterday".parse().unwrap());
        stats.note_date(&h);
        assert_eq!(stats.clock_skew(), None, "garbage is no date");
        let behind = chrono::Utc::now() - chrono::Duration::seconds(300);
        let http_date = behind.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        h.insert(reqwest::header::DATE, http_date.parse().unwrap());
        stats.note_date(&h);
        let skew = stats.clock_skew().unwrap();
        assert!((299..=302).contains(&skew), "{skew}");
    }

    #[test]
    fn retry_after_reads_seconds_and_rejects_garbage() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(reqwest::header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, "-1".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn one_status_table_for_every_platform() {
        let class = |code: u16| {
            let status = StatusCode::from_u16(code).unwrap();
            match status_error("w", status, Some(Duration::from_secs(2)), None) {
                ConnectorError::Unauthorized(_) => "unauthorized",
                ConnectorError::RateLimited {
                    retry_after: Some(_),
                } => "rate limited",
                e if e.is_retryable() => "transient",
                ConnectorError::Permanent(_) => "permanent",
                other => panic!("{code}: {other:?}"),
            }
        };
        for (code, want) in [
            (401, "unauthorized"),
            (429, "rate limited"),
            (408, "transient"),
            (500, "transient"),
            (502, "transient"),
            (503, "transient"),
            (504, "transient"),
            (520, "transient"),
            (400, "permanent"),
            (403, "permanent"),
            (404, "permanent"),
            (302, "permanent"),
        ] {
            assert_eq!(class(code), want, "HTTP {code}");
        }
        let e = status_error(
            "yunxin source a: GET /x",
            StatusCode::NOT_FOUND,
            None,
            Some("no"),
        );
        assert_eq!(
            e.to_string(),
            "yunxin source a: GET /x: upstream refused the request (HTTP 404: no)"
        );
    }

    #[test]
    fn raw_bodies_keep_the_bytes_received() {
        assert_eq!(
            raw_body(b"<html>gateway</html>"),
            json!("<html>gateway</html>")
        );
        assert_eq!(raw_body("服务繁忙".as_bytes()), json!("服务繁忙"));
        // protobuf, invalid UTF-8 and NUL go as base64
        assert_eq!(raw_body(b"\x0a\x02ok\x00"), json!({"base64": "CgJvawA="}));
        assert_eq!(raw_body(&[0xff, 0xfe]), json!({"base64": "//4="}));
        let long = "a".repeat(MAX_RAW_BODY + 10);
        let raw = raw_body(long.as_bytes());
        assert_eq!(raw["truncated_from"], json!(MAX_RAW_BODY + 10));
        let kept = base64::engine::general_purpose::STANDARD
            .decode(raw["base64"].as_str().unwrap())
            .unwrap();
        assert_eq!(kept, long.as_bytes()[..MAX_RAW_BODY]);
    }

    /// A body over the bound is refused, whether its length is announced or it is streamed.
    #[tokio::test]
    async fn a_body_over_the_bound_is_refused() {
        use axum::body::{Body, Bytes};
        use axum::routing::get;
        let app = axum::Router::new()
            .route("/small", get(|| async { "x".repeat(1000) }))
            .route("/big", get(|| async { "x".repeat(1025) }))
            .route(
                "/streamed",
                get(|| async {
                    let chunks =
                        (0..5).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 300])));
                    Body::from_stream(futures::stream::iter(chunks))
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let client = HttpClient::new(0.0, Duration::from_secs(5))
            .unwrap()
            .with_max_body(1024);
        let get = |path: &'static str| {
            let request = client.request(reqwest::Method::GET, &format!("http://{addr}{path}"));
            client.send(request, path)
        };
        assert_eq!(get("/small").await.unwrap().body.len(), 1000);
        for path in ["/big", "/streamed"] {
            match get(path).await {
                Err(ConnectorError::Permanent(text)) => {
                    assert!(text.contains("exceeds the limit of 1024 bytes"), "{text}")
                }
                other => panic!("{path}: {other:?}"),
            }
        }
        assert_eq!(client.stats().requests(), 3);
        assert_eq!(client.stats().failures.load(Ordering::Relaxed), 2);
        server.abort();
    }

    #[tokio::test]
    async fn rate_limiter_spaces_requests() {
        let limiter = RateLimiter::new(50.0);
        let start = Instant::now();
        for _ in 0..6 {
            limiter.acquire().await;
        }
        // five intervals of 20 ms after the first, immediate one
        assert!(start.elapsed() >= Duration::from_millis(95));
    }
}
