//! What every fake upstream needs to run, whatever its platform: [`SimServer`] is the handle
//! on a running fake (its world, its fault queue, its request counts); `Serving` binds a
//! local port, serves an axum [`Router`] until shut down, and holds the `RequestCounts` the
//! fake's middleware records into; `too_many_requests` and `cut_body` play back a
//! proxy's rate limit and a connection dropped mid-body.
//!
//! Which requests count, and under which key (the raw path, or a route template), stays
//! the fake's choice: it calls `RequestCounts::record` from its own middleware.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Lock a mutex shared with request handlers, going on after a panicked holder (a fake
/// keeps serving what it has).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// How one armed request fails (see [`SimServer::fail_request`]): the ways a request
/// fails in transport, whatever the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestFailure {
    /// A proxy's `502 Bad Gateway` (HTML body); the handler does not run.
    BadGateway,
    /// The handler runs, then the connection drops halfway through the body.
    Dropped,
    /// The answer is held back this long before it is sent (longer than the client's
    /// request timeout, it is a timeout); the handler runs after the wait.
    Stalled(Duration),
}

/// Requests seen, in total and per key (a path or a route template), and the one request
/// armed to fail.
#[derive(Debug, Default)]
pub(crate) struct RequestCounts {
    total: AtomicU64,
    per_key: Mutex<BTreeMap<String, u64>>,
    /// `(n, how)`: the request that makes the total `n` fails `how`, once.
    armed: Mutex<Option<(u64, RequestFailure)>>,
}

impl RequestCounts {
    /// Count one request under `key`; `Some` when this is the request armed to fail.
    pub(crate) fn record(&self, key: &str) -> Option<RequestFailure> {
        let n = self.total.fetch_add(1, Ordering::SeqCst) + 1;
        *lock(&self.per_key).entry(key.to_string()).or_default() += 1;
        let mut armed = lock(&self.armed);
        match *armed {
            Some((at, how)) if at == n => {
                *armed = None;
                Some(how)
            }
            _ => None,
        }
    }

    /// Arm the `k`-th request from now (1 = the next one) to fail `how`.
    fn arm(&self, k: u64, how: RequestFailure) {
        let n = self.total.load(Ordering::SeqCst) + k.max(1);
        *lock(&self.armed) = Some((n, how));
    }

    /// Whether an armed failure has not fired yet.
    fn armed(&self) -> bool {
        lock(&self.armed).is_some()
    }
}

/// Play back an armed failure around the handler `next` would run.
pub(crate) async fn fail_request(
    how: RequestFailure,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match how {
        RequestFailure::BadGateway => (
            StatusCode::BAD_GATEWAY,
            [(header::CONTENT_TYPE, "text/html")],
            "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>",
        )
            .into_response(),
        RequestFailure::Dropped => cut_body(next.run(request).await).await,
        RequestFailure::Stalled(delay) => {
            tokio::time::sleep(delay).await;
            next.run(request).await
        }
    }
}

/// A running fake server: the world `W` it serves (mutable while serving), its fault
/// queue `F`, and the requests it has seen. Each platform names it `SimServer` and adds
/// `start`/`start_on`, which say what counts as a request and under which key.
pub struct SimServer<W, F> {
    serving: Serving,
    world: Arc<Mutex<W>>,
    faults: F,
}

impl<W, F: Clone> SimServer<W, F> {
    /// Serve `app` on `addr`; `world`, `faults` and `counts` are the ones `app` shares.
    pub(crate) async fn serve(
        addr: SocketAddr,
        app: Router,
        world: Arc<Mutex<W>>,
        faults: F,
        counts: Arc<RequestCounts>,
    ) -> std::io::Result<Self> {
        Ok(SimServer {
            serving: Serving::start(addr, app, counts).await?,
            world,
            faults,
        })
    }

    /// The API root, e.g. `http://127.0.0.1:40123`; clients append the platform's paths.
    pub fn base_url(&self) -> String {
        self.serving.base_url()
    }

    /// Lock the world to read or mutate it. Do not hold the guard across an `.await`
    /// that waits for the server: requests would block on it.
    pub fn world(&self) -> MutexGuard<'_, W> {
        lock(&self.world)
    }

    /// A shared handle on the world, e.g. for a background activity task.
    pub fn world_handle(&self) -> Arc<Mutex<W>> {
        self.world.clone()
    }

    /// The fault queue (a cheap clone sharing the server's queue).
    pub fn faults(&self) -> F {
        self.faults.clone()
    }

    /// Requests received so far, all counted ones (see the platform's `start_on`).
    pub fn request_count(&self) -> u64 {
        self.serving.request_count()
    }

    /// Requests received so far under one key: a path (e.g. `/v1/msg/list-message`) or,
    /// for Yunxin, a route template (e.g. `HISTORY_PATH`).
    pub fn request_count_for(&self, path: &str) -> u64 {
        self.serving.request_count_for(path)
    }

    /// Requests received so far, per key.
    pub fn request_counts(&self) -> BTreeMap<String, u64> {
        self.serving.request_counts()
    }

    /// Make the `k`-th counted request from now (1 = the next one) fail once, `how`; it
    /// replaces a failure armed earlier that has not fired. Counted requests are the ones
    /// [`SimServer::request_count`] counts, so a test can fail each request of a clean
    /// sync in turn: the k-th of `request_count()` requests.
    pub fn fail_request(&self, k: u64, how: RequestFailure) {
        self.serving.counts.arm(k, how);
    }

    /// Whether the failure armed by [`SimServer::fail_request`] has not fired yet.
    pub fn failure_pending(&self) -> bool {
        self.serving.counts.armed()
    }

    /// Stop serving: graceful for up to a second, then the server task is aborted.
    pub async fn shutdown(self) {
        self.serving.shutdown().await;
    }
}

/// A router being served on a local port, until [`Serving::shutdown`] or drop.
pub(crate) struct Serving {
    addr: SocketAddr,
    counts: Arc<RequestCounts>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Serving {
    /// Bind `addr` (port 0 for a free one) and serve `app` there; `counts` is what `app`'s
    /// middleware records into.
    pub(crate) async fn start(
        addr: SocketAddr,
        app: Router,
        counts: Arc<RequestCounts>,
    ) -> std::io::Result<Serving> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Serving {
            addr,
            counts,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `http://<bound address>`.
    pub(crate) fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(crate) fn request_count(&self) -> u64 {
        self.counts.total.load(Ordering::SeqCst)
    }

    pub(crate) fn request_count_for(&self, key: &str) -> u64 {
        lock(&self.counts.per_key).get(key).copied().unwrap_or(0)
    }

    pub(crate) fn request_counts(&self) -> BTreeMap<String, u64> {
        lock(&self.counts.per_key).clone()
    }

    /// Stop serving: graceful for up to a second, then the server task is aborted.
    pub(crate) async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A proxy's rate limit: HTTP 429 with `Retry-After: <secs>`.
pub(crate) fn too_many_requests(retry_after_secs: u64) -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [(header::RETRY_AFTER, retry_after_secs.to_string())],
        "Too Many Requests",
    )
        .into_response()
}

/// Send the status, the headers (with the full `Content-Length`) and the first half of
/// the body, then fail the body stream so the connection is aborted.
pub(crate) async fn cut_body(response: Response) -> Response {
    let (mut parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let head = bytes.slice(..bytes.len() / 2);
    if let Ok(length) = HeaderValue::from_str(&bytes.len().to_string()) {
        parts.headers.insert(header::CONTENT_LENGTH, length);
    }
    let first = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(head) });
    let abort = futures::stream::once(async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection dropped by fault injection",
        ))
    });
    Response::from_parts(parts, Body::from_stream(first.chain(abort)))
}
