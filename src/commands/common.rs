//! What the subcommands share: loading the configuration (its problems reported as one
//! line, or listed), making the data directory private, opening the store (starting the
//! embedded PostgreSQL when no URL is configured and stopping it again at the end), and
//! listing names in an error line.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{bail, Context};
use sqlx::postgres::PgConnectOptions;

use crate::config::{self, Config, SourceConfig};
use crate::metrics::Metrics;
use crate::pg::EmbeddedPostgres;
use crate::store::Store;

/// Load the configuration; `offline` for commands that never contact upstream (a source's
/// missing secret is then only a warning).
pub fn load_config(path: Option<&Path>, offline: bool) -> anyhow::Result<Config> {
    let loaded = if offline {
        config::load_offline(path)
    } else {
        config::load(path)
    };
    match loaded {
        Ok(loaded) => {
            for w in &loaded.warnings {
                tracing::warn!("{w}");
            }
            Ok(loaded.config)
        }
        Err(errors) if errors.0.len() == 1 => bail!("{}", errors.0[0]),
        Err(errors) => {
            for p in &errors.0 {
                eprintln!("{p}");
            }
            bail!(
                "the configuration has {} problems (listed above; `chatvault config check` lists them too)",
                errors.0.len()
            )
        }
    }
}

/// `names` as a list for an error line (`a, b`), or `none` when there are none.
pub fn list_or(names: &[impl AsRef<str>], none: &str) -> String {
    if names.is_empty() {
        return none.to_string();
    }
    names
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<&str>>()
        .join(", ")
}

/// Makes the data directory private (see [`crate::files::prepare_data_dir`]) before anything
/// is written into it.
pub fn prepare_data_dir(config: &Config) -> anyhow::Result<()> {
    let dir = &config.storage.data_dir;
    crate::files::prepare_data_dir(dir)
        .with_context(|| format!("cannot use {} as the data directory", dir.display()))?;
    Ok(())
}

/// Open the store (starting the embedded cluster when no URL is configured), run `f`, and
/// stop the embedded cluster again if this process started it. With `migrate`, the
/// migrations are applied and the configured sources registered first.
pub async fn with_store<T, F, Fut>(config: &Config, migrate: bool, f: F) -> anyhow::Result<T>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    with_store_and_metrics(config, migrate, None, f).await
}

/// [`with_store`], counting restarts of the embedded cluster (which is watched and started
/// again should it die while `f` runs) into `metrics`.
pub async fn with_store_and_metrics<T, F, Fut>(
    config: &Config,
    migrate: bool,
    metrics: Option<Arc<Metrics>>,
    f: F,
) -> anyhow::Result<T>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let (options, embedded) = match &config.database.url {
        Some(url) => {
            let options = PgConnectOptions::from_str(url.expose()).map_err(|_| {
                anyhow::anyhow!(
                    "database.url is not a valid PostgreSQL URL (postgres://user@host/db)"
                )
            })?;
            (options, None)
        }
        None => {
            // Creates the data directory, or makes it private.
            let pg = EmbeddedPostgres::start(&config.storage.data_dir).await?;
            let options = pg.connect_options();
            let on_restart: Box<dyn Fn() + Send + Sync> = match metrics {
                Some(metrics) => {
                    metrics.embedded_postgres_watched();
                    Box::new(move || metrics.embedded_postgres_restarted())
                }
                None => Box::new(|| {}),
            };
            (options, Some(pg.supervise(on_restart)))
        }
    };
    let result = async {
        let store = Store::connect(options, config.database.max_connections)
            .await
            .context("cannot connect to PostgreSQL")?;
        if migrate {
            store.migrate().await.context("applying migrations")?;
            for source in &config.sources {
                store
                    .register_source(&source.name, source.platform_key())
                    .await?;
            }
        }
        let outcome = f(store.clone()).await;
        store.pool().close().await;
        outcome
    }
    .await;
    if let Some(pg) = embedded {
        if let Err(e) = pg.stop().await {
            tracing::warn!(error = %e, "could not stop the embedded PostgreSQL");
        }
    }
    result
}

/// The sources a command works on: the named ones (each must be configured), or every
/// enabled one. `what` names the work in the error when there is none.
pub fn select_sources(
    config: &Config,
    names: &[String],
    what: &str,
) -> anyhow::Result<Vec<SourceConfig>> {
    for name in names {
        if !config.sources.iter().any(|s| s.name.as_str() == name) {
            let known: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
            bail!(
                "no source named {name:?} in the configuration (configured: {})",
                list_or(&known, "none")
            );
        }
    }
    let selected: Vec<SourceConfig> = config
        .sources
        .iter()
        .filter(|s| {
            if names.is_empty() {
                s.enabled
            } else {
                names.iter().any(|n| n == s.name.as_str())
            }
        })
        .cloned()
        .collect();
    if selected.is_empty() {
        bail!("no sources to {what}: add a [[source]] to the configuration (see deploy/chatvault.example.toml)");
    }
    Ok(selected)
}
