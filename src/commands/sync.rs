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
use std::sync::Arc;

use crate::attachments::fetcher::{AttachmentsRun, ProgressFn};
use crate::config::{Config, SourceConfig};
use crate::index::{self, Indexer, SearchIndex};
use crate::store::Store;
use crate::sync::{self, SyncOptions};

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  chatvault sync\n  chatvault sync --source acme-tsdd --full\n  chatvault sync --no-attachments"
)]
pub struct SyncArgs {
    /// Sync only this source (repeatable).
    #[arg(long = "source", value_name = "NAME")]
    pub sources: Vec<String>,
    /// Re-read everything from the beginning (idempotent: nothing is duplicated).
    #[arg(long)]
    pub full: bool,
    /// Archive messages only: leave attachment downloads for the next sync or the daemon
    /// (their references are recorded either way).
    #[arg(long)]
    pub no_attachments: bool,
}

pub async fn run(args: SyncArgs, config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path, false)?;
    let selected = select_sources(&config, &args.sources, "sync")?;
    let settings = config.clone();
    let attachments = !args.no_attachments;
    with_store(&config, true, move |store| {
        sync(store, settings, selected, args.full, attachments)
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
    attachments: bool,
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
    let fetch_from = selected.clone();
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
    if attachments {
        fetch_attachments(&store, &config, &fetch_from, &stop_rx).await?;
    }
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

/// After the messages: each selected source's attachments, one source after the other, a
/// line per source. A download that fails never fails the sync: it is recorded and retried
/// by the next sync or the daemon.
async fn fetch_attachments(
    store: &Store,
    config: &Config,
    selected: &[SourceConfig],
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let run = match AttachmentsRun::from_config(config, None) {
        Ok(Some(run)) => run,
        Ok(None) => return Ok(()),
        Err(e) => {
            eprintln!("warning: attachments were not fetched: {e:#}");
            return Ok(());
        }
    };
    for source in selected {
        if *stop.borrow() {
            break;
        }
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {prefix}: {msg} ({elapsed})")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.set_prefix(format!("{} attachments", source.name));
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        });
        let progress: Option<Arc<ProgressFn>> = bar.clone().map(|bar| {
            Arc::new(move |files: u64, bytes: u64| {
                bar.set_message(format!("{files} files, {}", indicatif::HumanBytes(bytes)));
            }) as Arc<ProgressFn>
        });
        let result = run.fetch(store, source, progress, Some(stop.clone())).await;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        let mut out = std::io::stdout().lock();
        match result {
            Ok(r) if r.skipped => writeln!(
                out,
                "{}: attachments skipped, another chatvault process is fetching them",
                source.name
            )?,
            // nothing was due: nothing to say
            Ok(r) if r.stored + r.failed + r.gone + r.too_large + r.deferred == 0 => {}
            Ok(r) => writeln!(
                out,
                "{}: attachments: {} stored ({}), {} failed, {} gone, {} too large{}",
                source.name,
                r.stored,
                indicatif::HumanBytes(r.bytes),
                r.failed,
                r.gone,
                r.too_large,
                if r.deferred > 0 {
                    format!(
                        ", {} left for the next run (attachments.max_run_mb)",
                        r.deferred
                    )
                } else {
                    String::new()
                }
            )?,
            Err(e) => writeln!(out, "{}: attachments not fetched: {e:#}", source.name)?,
        }
    }
    Ok(())
}
