//! `chatvault run`: the daemon. Every enabled source on its schedule, the indexer following
//! the event log, and the HTTP API and web pages, until SIGTERM or Ctrl-C. `chatvault demo`
//! runs the same daemon over its fake upstreams.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tokio::sync::watch;
use tracing::{info, warn};

use super::common::{load_config, prepare_data_dir, with_store_and_metrics};
use crate::config::Config;
use crate::http::{self, ApiState};
use crate::index::{self, Indexer, SearchIndex};
use crate::metrics::Metrics;
use crate::scheduler::{self, Scheduler, SchedulerOptions};
use crate::store::Store;

/// How often the daemon's indexer looks for new events (the index lags a committed page by
/// about this plus the time to index it).
pub const INDEX_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Args)]
#[command(
    after_help = "It serves the HTTP API and the web page on server.listen (default 127.0.0.1:8080). \
SIGTERM or Ctrl-C stops it after the pages in flight are committed; a second signal exits at once.\n\n\
Examples:\n  chatvault --config /etc/chatvault/chatvault.toml run\n  \
CHATVAULT_LISTEN=127.0.0.1:9000 chatvault run"
)]
pub struct RunArgs {}

pub async fn run(_args: RunArgs, config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path, false)?;
    preflight(&config)?;
    let settings = config.clone();
    let metrics = Metrics::new();
    let extras = DaemonExtras {
        metrics: Some(metrics.clone()),
        ..DaemonExtras::default()
    };
    with_store_and_metrics(&config, true, Some(metrics), move |store| {
        daemon(store, settings, extras)
    })
    .await
}

/// What `run` checks before it opens the store: something to schedule, valid schedules.
fn preflight(config: &Config) -> anyhow::Result<()> {
    if !config.sources.iter().any(|s| s.enabled) {
        bail!("no enabled sources to schedule: add a [[source]] to the configuration (see deploy/chatvault.example.toml) or set `enabled = true` on one");
    }
    for source in config.sources.iter().filter(|s| s.enabled) {
        scheduler::parse_schedule(source.name.as_str(), &source.schedule)?;
    }
    Ok(())
}

/// What `run` and `demo` add to a daemon.
#[derive(Default)]
pub(super) struct DaemonExtras {
    /// The registry to serve (created by the caller so that the embedded PostgreSQL's
    /// supervisor counts into it); a new one if `None`.
    pub metrics: Option<Arc<Metrics>>,
    /// Stop by itself after this long.
    pub lifetime: Option<Duration>,
    /// Told once the HTTP API listens.
    pub ready: Option<tokio::sync::oneshot::Sender<()>>,
}

/// `chatvault run`: the scheduler and the HTTP API until SIGTERM or Ctrl-C (or, given a
/// `lifetime`, until it has passed). The first signal stops scheduling and lets running runs
/// stop between pages, for at most `server.shutdown_timeout`; a second signal exits at once.
pub(super) async fn daemon(
    store: Store,
    config: Config,
    extras: DaemonExtras,
) -> anyhow::Result<ExitCode> {
    let DaemonExtras {
        metrics,
        lifetime,
        ready,
    } = extras;
    use tokio::signal::unix::{signal, SignalKind};

    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let metrics = metrics.unwrap_or_else(Metrics::new);
    prepare_data_dir(&config)?;
    let (push_stop_tx, push_stop_rx) = watch::channel(false);
    let scheduler = Scheduler::new(
        store.clone(),
        metrics.clone(),
        &config.sources,
        SchedulerOptions {
            attachments: crate::attachments::fetcher::AttachmentsRun::from_config(
                &config,
                Some(metrics.clone()),
            )?,
            ..SchedulerOptions::from_config(&config)
        },
    )?;
    for source in config.sources.iter().filter(|s| s.enabled) {
        let period = crate::scheduler::parse_schedule(source.name.as_str(), &source.schedule)
            .ok()
            .and_then(|s| crate::scheduler::schedule_period(&s, chrono::Utc::now()));
        metrics.source_scheduled(source.name.as_str(), period);
    }
    // Push channels: a listener per source whose connector has one, targeted runs for
    // what they signal (and for Yunxin's message copies posted to the HTTP API).
    let scheduler_options = SchedulerOptions::from_config(&config);
    let (push_hub, mut push_tasks) = crate::realtime::start(
        &store,
        &config.sources,
        &scheduler_options.sync,
        Some(metrics.clone()),
        crate::realtime::connector_factory(Some(crate::sync::session_dir(
            &config.storage.data_dir,
        ))),
        push_stop_rx.clone(),
    );
    let scheduler = scheduler.with_push(push_hub.clone(), config.sync.push_poll_factor);
    let schedules: Vec<String> = config
        .sources
        .iter()
        .filter(|s| s.enabled)
        .map(|s| format!("{} ({})", s.name, s.schedule))
        .collect();
    info!(
        sources = %schedules.join(", "),
        listen = %config.server.listen,
        max_concurrent_sources = config.sync.max_concurrent_sources,
        "chatvault daemon started"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let search_index = SearchIndex::open_or_create(&index::index_dir(&config.storage.data_dir))?;
    let indexer = tokio::spawn(Indexer::new(search_index.clone()).follow(
        store.clone(),
        INDEX_INTERVAL,
        stop_rx.clone(),
    ));
    // The API's address is checked and bound before anything runs: an address in use or a
    // public address without a token is a startup error, not a daemon without its API.
    let state = ApiState::new(&store, metrics.clone())
        .with_server(&config.server)
        .with_sources(config.sources.clone())
        .with_search(search_index)
        .with_scheduler(scheduler.state())
        .with_push(push_hub);
    // Without its blob store the pages still show every attachment's status; only the
    // files are not served.
    let state = match crate::attachments::fetcher::open_blob_store(&config) {
        Ok(blobs) => state.with_blobs(blobs),
        Err(e) => {
            warn!(error = %format!("{e:#}"), "attachment files are not served");
            state
        }
    };
    let listener = http::bind(config.server.listen).await?;
    if let Some(ready) = ready {
        let _ = ready.send(());
    }
    let api = {
        let stop = stop_rx.clone();
        let shutdown_timeout = config.server.shutdown_timeout;
        tokio::spawn(async move {
            if let Err(e) = http::serve_on(listener, state, stop, shutdown_timeout).await {
                warn!(error = %format!("{e:#}"), "the HTTP API stopped serving");
            }
        })
    };
    let purger = config.retention.auto_purge.then(|| {
        tokio::spawn(super::purge::daily(
            store.clone(),
            config.clone(),
            stop_rx.clone(),
        ))
    });
    let mut runs = tokio::spawn(scheduler.run(stop_rx));

    let signal_name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
        () = async {
            match lifetime {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        } => "end of lifetime",
    };
    let deadline = config.server.shutdown_timeout;
    info!(
        signal = signal_name,
        deadline_seconds = deadline.as_secs(),
        "stopping: no new runs, running ones stop after their current page (a second signal exits at once)"
    );
    let _ = stop_tx.send(true);
    let _ = push_stop_tx.send(true);
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
        eprintln!("error: second signal, exiting at once");
        std::process::exit(130);
    });
    if tokio::time::timeout(deadline, &mut runs).await.is_err() {
        warn!(
            deadline_seconds = deadline.as_secs(),
            "runs still going at the shutdown deadline: stopping them (the archive stays consistent; the next run resumes)"
        );
        runs.abort();
        let _ = runs.await;
    }
    if tokio::time::timeout(Duration::from_secs(5), async {
        while push_tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        warn!("push channels did not stop in time");
        push_tasks.abort_all();
    }
    // A purge batch cut off here rolls back whole; the next purge goes on.
    if let Some(purger) = purger {
        purger.abort();
    }
    if tokio::time::timeout(Duration::from_secs(2), api)
        .await
        .is_err()
    {
        warn!("the HTTP API did not stop in time");
    }
    if tokio::time::timeout(Duration::from_secs(5), indexer)
        .await
        .is_err()
    {
        warn!("the indexer did not stop in time");
    }
    info!("chatvault daemon stopped");
    Ok(ExitCode::SUCCESS)
}
