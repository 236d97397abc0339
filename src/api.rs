//! The HTTP API (axum): health, readiness, metrics, status.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{Secret, ServerConfig};
use crate::metrics::Metrics;
use crate::store::Store;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub token: Option<Secret>,
}

/// Bind `config.listen` and serve until `shutdown` turns true.
pub async fn serve(
    _config: &ServerConfig,
    _state: ApiState,
    _shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    anyhow::bail!("the HTTP API is not available in this build yet")
}
