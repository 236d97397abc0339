//! The HTTP server of `run` and `demo`: one router for the JSON API ([`api`]) and the web
//! pages ([`web`]), behind one access check ([`access`]).
//!
//! | path | answers | access |
//! |---|---|---|
//! | `GET /healthz` | 200 `ok` while the process is up | open |
//! | `GET /readyz` | 200 when the database answers and migrations are current, else 503 | open (the reason only to those who may read the archive) |
//! | `GET /metrics` | Prometheus text (see [`crate::metrics`]) | token |
//! | `GET /api/status` | the objects of `chatvault status --json`, as a JSON array | token |
//! | `GET /api/search?q=…` | `{"hits", "next_cursor", "total"}` | token |
//! | `GET /`, `/conversations`, `/c/{source}/{conversation}`, `/status` | the web pages | token |
//! | `GET /attachment/{source}/{conversation}/{message}/{ordinal}` | a stored attachment's file, from the blob store | token |
//! | `GET/POST /login`, `POST /logout` | signing a browser in and out | open |
//! | `POST /hooks/yunxin/{source}` | Yunxin's message copies ([`hooks`]) | open, checked by signature ([`access::verify_yunxin_copy`]) |
//!
//! What protects the archive, in order ([`access::guard`]): the `Host` header must name
//! this server (loopback names, the listen address, `server.allowed_hosts`), which defeats
//! DNS rebinding; requests from other sites are refused, except a plain link followed to a
//! page; then, when `server.token` is set, a bearer token or a signed-in browser's session.
//! Without a token the server only listens on loopback ([`serve`] refuses otherwise).
//!
//! The server never competes with the syncs for the database: its queries run on a small
//! pool of their own with a statement timeout, the per-source counts come from a snapshot
//! refreshed in the background ([`status`]), and at most [`MAX_IN_FLIGHT`] requests are
//! served at once (the others wait briefly, then get 503).

pub mod access;
pub mod api;
pub mod hooks;
mod status;
pub mod web;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::{info, warn};

pub use api::ApiError;

use crate::config::{Secret, ServerConfig, SourceConfig};
use crate::metrics::Metrics;
use crate::store::Store;

/// How long a database query of the server may take before it is cancelled, and how long
/// `/readyz` waits for the database.
pub const DATABASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Requests served at the same time; more wait up to [`QUEUE_WAIT`], then get 503.
pub const MAX_IN_FLIGHT: usize = 32;
const QUEUE_WAIT: Duration = Duration::from_secs(5);

/// Connections of the server's own database pool.
const POOL_CONNECTIONS: u32 = 4;

/// What the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct ApiState {
    /// The archive, through the server's own pool (statement timeout, few connections).
    pub(crate) store: Store,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) access: Arc<access::Access>,
    /// The configured sources, for the schedule facts of the status.
    pub(crate) sources: Arc<Vec<SourceConfig>>,
    /// The search index the daemon keeps current (`None`: search answers 503).
    pub(crate) search: Option<crate::index::SearchIndex>,
    pub(crate) status: status::StatusCache,
    /// The running scheduler's state, for when each source runs next (backoff included).
    pub(crate) scheduler: Option<crate::scheduler::SharedState>,
    /// Where attachment files are kept (`None`: the pages show them, the file route
    /// answers 503).
    pub(crate) blobs: Option<Arc<crate::attachments::blob::BlobStore>>,
    /// The daemon's push channels: where message copies go, and their state for the
    /// status (`None`: no pushes are applied here).
    pub(crate) push: Option<crate::realtime::PushHub>,
    in_flight: Arc<Semaphore>,
}

impl ApiState {
    /// A server over `store` (whose pool the syncs use: the server makes its own, smaller
    /// one to the same database) with no token, no sources and no search.
    pub fn new(store: &Store, metrics: Arc<Metrics>) -> ApiState {
        let store = store.with_own_pool(POOL_CONNECTIONS, DATABASE_TIMEOUT);
        ApiState {
            status: status::StatusCache::new(store.clone()),
            store,
            metrics,
            access: Arc::new(access::Access::new(None, Vec::new(), None)),
            sources: Arc::default(),
            search: None,
            scheduler: None,
            blobs: None,
            push: None,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// Require `token` (an empty one counts as none).
    pub fn with_token(mut self, token: Option<Secret>) -> ApiState {
        let access = access::Access::new(
            token,
            self.access.allowed_hosts().to_vec(),
            self.access.public_url().map(str::to_string),
        );
        self.access = Arc::new(access);
        self
    }

    /// Also accept these named tokens (`[[server.tokens]]`), recorded under their names in
    /// the access log.
    pub fn with_named_tokens(mut self, named: Vec<(String, Secret)>) -> ApiState {
        let access = access::Access::new(
            None,
            self.access.allowed_hosts().to_vec(),
            self.access.public_url().map(str::to_string),
        )
        .with_named_tokens(self.access.tokens().to_vec())
        .with_named_tokens(named);
        self.access = Arc::new(access);
        self
    }

    /// The tokens, allowed host names and public URL of `config` (its tokens only when
    /// none were given).
    pub fn with_server(mut self, config: &ServerConfig) -> ApiState {
        let tokens = if self.access.requires_token() {
            self.access.tokens().to_vec()
        } else {
            let default = config
                .token
                .clone()
                .map(|t| (access::DEFAULT_TOKEN_NAME.to_string(), t));
            default
                .into_iter()
                .chain(
                    config
                        .tokens
                        .iter()
                        .map(|t| (t.name.clone(), t.token.clone())),
                )
                .collect()
        };
        self.access = Arc::new(
            access::Access::new(
                None,
                config.allowed_hosts.clone(),
                config.public_url.clone(),
            )
            .with_named_tokens(tokens),
        );
        self
    }

    pub fn with_sources(mut self, sources: Vec<SourceConfig>) -> ApiState {
        self.sources = Arc::new(sources);
        self
    }

    pub fn with_search(mut self, index: crate::index::SearchIndex) -> ApiState {
        self.search = Some(index);
        self
    }

    /// Read when each source runs next from this running scheduler.
    pub fn with_scheduler(mut self, state: crate::scheduler::SharedState) -> ApiState {
        self.scheduler = Some(state);
        self
    }

    /// Serve attachment files from this blob store.
    pub fn with_blobs(mut self, blobs: Arc<crate::attachments::blob::BlobStore>) -> ApiState {
        self.blobs = Some(blobs);
        self
    }

    /// Hand message copies to these push channels and show their state.
    pub fn with_push(mut self, hub: crate::realtime::PushHub) -> ApiState {
        self.push = Some(hub);
        self
    }

    /// The metrics registry the server renders.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

/// The routes, behind the access guard and the request limit.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/metrics", get(api::metrics))
        .route("/api/status", get(api::status))
        .route("/api/search", get(api::search))
        .route("/hooks/yunxin/{source}", axum::routing::post(hooks::yunxin))
        .merge(web::routes())
        .merge(access::routes())
        .fallback(api::not_found)
        .layer(middleware::from_fn_with_state(state.clone(), access::guard))
        .layer(middleware::from_fn_with_state(state.clone(), limit))
        .with_state(state)
}

/// At most [`MAX_IN_FLIGHT`] requests at once; the rest wait up to [`QUEUE_WAIT`].
async fn limit(
    axum::extract::State(state): axum::extract::State<ApiState>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(QUEUE_WAIT, state.in_flight.clone().acquire_owned()).await {
        Ok(Ok(_permit)) => next.run(request).await,
        _ => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is busy with other requests; try again in a moment",
        )
        .into_response_for(request.headers()),
    }
}

/// Bind `config.listen` and serve until `shutdown` turns true.
///
/// Refuses a non-loopback address without a token.
pub async fn serve(
    config: &ServerConfig,
    state: ApiState,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let state = state.with_server(config);
    check_exposure(config.listen, state.access.requires_token())?;
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
    check_exposure(address, state.access.requires_token())?;
    state.access.set_listen(address);
    info!(
        %address,
        token_required = state.access.requires_token(),
        "http api listening"
    );
    let refresher = tokio::spawn(state.status.clone().refresh_forever(shutdown.clone()));

    let app = router(state);
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
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
    refresher.abort();
    info!(%address, "http api stopped");
    Ok(())
}

/// Resolves once `shutdown` is true or its sender is gone.
async fn shutdown_requested(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Loopback only unless a token is set.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
