//! `chatvault sync`: sync every enabled source once (or the named ones), a line per source,
//! then catch the search index up; exit 1 if any source failed. Ctrl-C stops after the pages
//! in flight are committed.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use tokio::sync::watch;

use super::common::{load_config, prepare_data_dir, select_sources, with_store};
use crate::config::{Config, SourceConfig};
use crate::index::{self, Indexer, SearchIndex};
use crate::store::Store;
use crate::sync::{self, SyncOptions};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  chatvault sync\n  chatvault sync --source acme-tsdd --full")]
pub struct SyncArgs {
    /// Sync only this source (repeatable).
    #[arg(long = "source", value_name = "NAME")]
    pub sources: Vec<String>,
    /// Re-read everything from the beginning (idempotent: nothing is duplicated).
    #[arg(long)]
    pub full: bool,
}

pub async fn run(args: SyncArgs, config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path, false)?;
    let selected = select_sources(&config, &args.sources, "sync")?;
    let settings = config.clone();
    with_store(&config, true, move |store| {
        sync(store, settings, selected, args.full)
    })
    .await
}

/// Every selected source at once (up to `sync.max_concurrent_sources`), then a line per
/// source in the order selected, then the index.
async fn sync(
    store: Store,
    config: Config,
    selected: Vec<SourceConfig>,
    full: bool,
) -> anyhow::Result<ExitCode> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("stopping after the current pages (Ctrl-C again to exit at once)");
            let _ = stop_tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let options = SyncOptions {
        full,
        max_retries: config.sync.max_retries,
        progress_bar: std::io::stderr().is_terminal(),
        session_dir: Some(sync::session_dir(&config.storage.data_dir)),
        heads: config
            .integrity
            .is_configured()
            .then(|| std::sync::Arc::new(config.integrity.clone())),
        ..SyncOptions::default()
    };
    let limit = config.sync.max_concurrent_sources.max(1);
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(limit));
    let mut tasks = Vec::new();
    for source in selected {
        let store = store.clone();
        let options = options.clone();
        let stop = stop_rx.clone();
        let semaphore = semaphore.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            sync::sync_source(&store, &source, &options, Some(stop)).await
        }));
    }
    // The index follows the syncs as they write and catches up once they are done.
    let (results, indexed) = index_beside(&store, &config, async {
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.context("a sync task panicked"));
        }
        results
    })
    .await;
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    for r in results {
        let r = r?;
        let c = &r.counts;
        if r.skipped {
            writeln!(
                out,
                "{}: skipped, another chatvault process is syncing it",
                r.source
            )?;
            continue;
        }
        let line = format!(
            "{}: {}, {} conversations, {} new, {} changed, {} requests, {} retries",
            r.source,
            r.status.as_str(),
            r.conversations,
            c.messages_new,
            c.messages_changed,
            c.requests,
            c.retries
        );
        writeln!(out, "{line}")?;
        if let Some(e) = &r.error {
            writeln!(out, "{}: {e}", r.source)?;
        }
        failed |= !r.ok();
    }
    drop(out);
    match indexed {
        Ok(report) => println!(
            "index: {} events applied, {} messages indexed",
            report.events, report.documents
        ),
        Err(e) => eprintln!("warning: the search index was not updated: {e:#}"),
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Run `work` (the syncs) while the search index follows what they write, then bring it up
/// to date. An indexing failure is reported, not fatal: the archive is complete, and the next
/// sync, `run` or `reindex` catches the index up.
async fn index_beside<T>(
    store: &Store,
    config: &Config,
    work: impl std::future::Future<Output = T>,
) -> (T, anyhow::Result<index::IndexReport>) {
    let dir = index::index_dir(&config.storage.data_dir);
    let opened = prepare_data_dir(config).and_then(|()| SearchIndex::open_or_create(&dir));
    match opened {
        Ok(index) => {
            Indexer::new(index)
                .index_while(store, index::indexer::FOLLOW_INTERVAL, work)
                .await
        }
        Err(e) => (work.await, Err(e)),
    }
}
