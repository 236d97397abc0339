//! `chatvault purge`: remove the messages past retention that no hold covers (README,
//! "Retention and legal hold"), in batches of one transaction each, every batch an event in
//! its source's chain; then catch the search index up so the removed messages are no longer
//! found. `--dry-run` only counts. [`purge`] is also what the daemon runs once a day with
//! `retention.auto_purge = true`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;

use super::common::{list_or, load_config, prepare_data_dir, with_store};
use crate::config::Config;
use crate::index::{self, Indexer, SearchIndex};
use crate::retention::PurgeRule;
use crate::store::retention::{PurgeCount, PurgePosition};
use crate::store::Store;
use crate::terminal::escape_line;

/// Messages per batch (one transaction and one event each) unless `--batch` says otherwise.
pub const DEFAULT_BATCH: i64 = 5_000;

#[derive(Debug, Args)]
#[command(
    after_help = "A message is past retention when its sent_at is before now minus the \
period configured for it ([retention] and a source's retention; none configured = kept \
forever). Nothing under an active hold is removed. Each batch is recorded in the source's \
hash chain as a messages_purged event; `chatvault verify` checks it.\n\nExamples:\n  \
chatvault purge --dry-run\n  chatvault purge --source acme-tsdd"
)]
pub struct PurgeArgs {
    /// Count what would be removed, per source and conversation; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Only this source (default: every archived source).
    #[arg(long)]
    pub source: Option<String>,
    /// Messages removed per transaction (and per event).
    #[arg(long, default_value_t = DEFAULT_BATCH, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub batch: i64,
}

pub async fn run(args: PurgeArgs, config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path, true)?;
    let settings = config.clone();
    with_store(&config, true, |store| async move {
        let report = purge(&store, &settings, args.source.as_deref(), args.dry_run, args.batch, Utc::now(), &|line| {
            eprintln!("{line}")
        })
        .await?;
        let mut out = std::io::stdout().lock();
        if report.rules == 0 {
            writeln!(
                out,
                "no retention period applies{}: nothing is purged (configure [retention] or a source's retention)",
                args.source.as_deref().map_or(String::new(), |s| format!(" to source {}", escape_line(s)))
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        let verb = if args.dry_run { "would purge" } else { "purged" };
        for c in &report.counts {
            writeln!(
                out,
                "{verb} {} › {}: {} messages, {} versions, {} reactions",
                escape_line(&c.source),
                escape_line(&c.conversation_id),
                c.messages,
                c.versions,
                c.reactions
            )?;
        }
        let total = report.total();
        writeln!(
            out,
            "{verb} {} messages, {} versions, {} reactions in {} conversations{}",
            total.messages,
            total.versions,
            total.reactions,
            report.counts.len(),
            if args.dry_run {
                String::new()
            } else {
                format!(" ({} purge events)", report.events)
            }
        )?;
        if !args.dry_run && report.events > 0 {
            index_after_purge(&store, &settings).await;
        }
        Ok(ExitCode::SUCCESS)
    })
    .await
}

/// What a purge removed (or, dry, would remove).
#[derive(Clone, Debug, Default)]
pub struct PurgeReport {
    /// Rules that applied (0: no retention configured for the sources asked for).
    pub rules: usize,
    /// Per source and conversation, in that order.
    pub counts: Vec<PurgeCount>,
    /// `messages_purged` events written.
    pub events: usize,
}

impl PurgeReport {
    pub fn total(&self) -> PurgeCount {
        let mut t = PurgeCount::default();
        for c in &self.counts {
            t.messages += c.messages;
            t.versions += c.versions;
            t.reactions += c.reactions;
        }
        t
    }
}

/// Purge (or with `dry_run` count) every archived source, or `only` that one, at `now`,
/// `batch` messages per transaction. `progress` is told a line per batch.
pub async fn purge(
    store: &Store,
    config: &Config,
    only: Option<&str>,
    dry_run: bool,
    batch: i64,
    now: DateTime<Utc>,
    progress: &(dyn Fn(String) + Sync),
) -> anyhow::Result<PurgeReport> {
    let archived: Vec<String> = store
        .sources()
        .await
        .context("cannot list the archived sources")?
        .into_iter()
        .map(|(s, _)| s.to_string())
        .collect();
    let sources: Vec<String> = match only {
        Some(s) if archived.iter().any(|a| a == s) => vec![s.to_string()],
        Some(s) => anyhow::bail!(
            "source {s:?} is not in the archive (archived sources: {})",
            list_or(&archived, "none")
        ),
        None => archived,
    };
    let rules: Vec<PurgeRule> = sources
        .iter()
        .flat_map(|s| config.retention.rules(s, now))
        .collect();
    let mut report = PurgeReport {
        rules: rules.len(),
        ..PurgeReport::default()
    };
    let mut counts: BTreeMap<(String, String), PurgeCount> = BTreeMap::new();
    for rule in &rules {
        if dry_run {
            for c in store.purge_preview(rule).await.with_context(|| {
                format!(
                    "cannot count what a purge of source {} would remove",
                    rule.source
                )
            })? {
                add(&mut counts, c);
            }
            continue;
        }
        let mut position = PurgePosition::default();
        let mut done = 0i64;
        // Every batch removes at least one message and moves the position past it: the loop
        // ends when nothing past the position is expired.
        while let Some(b) = store
            .purge_batch(rule, &mut position, batch, now)
            .await
            .with_context(|| {
                format!(
                    "purging source {} stopped after {done} messages (everything before is purged and recorded; run `chatvault purge` again to go on)",
                    rule.source
                )
            })?
        {
            done += b.messages;
            report.events += 1;
            remove_purged_blobs(store, config, &b.attachment_blobs).await;
            progress(format!(
                "source {}: purge event {}: {} messages, {} versions, {} reactions ({done} so far; {}, cut-off {})",
                rule.source,
                b.event_seq,
                b.messages,
                b.versions,
                b.reactions,
                rule.rule,
                crate::store::canonical::canonical_time(&rule.cutoff)
            ));
            for c in b.per_conversation {
                add(&mut counts, c);
            }
        }
    }
    report.counts = counts.into_values().collect();
    Ok(report)
}

fn add(counts: &mut BTreeMap<(String, String), PurgeCount>, c: PurgeCount) {
    let e = counts
        .entry((c.source.clone(), c.conversation_id.clone()))
        .or_insert_with(|| PurgeCount {
            source: c.source.clone(),
            conversation_id: c.conversation_id.clone(),
            ..PurgeCount::default()
        });
    e.messages += c.messages;
    e.versions += c.versions;
    e.reactions += c.reactions;
}

/// Bring the search index up to date after a purge, so purged messages are no longer
/// found. A failure is reported, not fatal: the next sync, `run` or `reindex` applies it.
async fn index_after_purge(store: &Store, config: &Config) {
    let dir = index::index_dir(&config.storage.data_dir);
    let result = async {
        prepare_data_dir(config)?;
        let index = SearchIndex::open_or_create(&dir)?;
        Indexer::new(index).catch_up(store).await
    }
    .await;
    match result {
        Ok(report) => println!("index: {} events applied", report.events),
        Err(e) => eprintln!(
            "warning: the search index was not updated yet ({e:#}); the daemon's indexer, the next sync or `chatvault reindex` removes the purged messages from it"
        ),
    }
}

/// How long after its start the daemon purges first with `retention.auto_purge`, and how
/// often after that.
pub const AUTO_PURGE_FIRST: std::time::Duration = std::time::Duration::from_secs(300);
pub const AUTO_PURGE_EVERY: std::time::Duration = std::time::Duration::from_secs(86_400);

/// The daemon's automatic purge (`retention.auto_purge = true`): every source, once a day,
/// the first five minutes after start, until `stop` turns true. Its events reach the index
/// through the daemon's indexer.
pub async fn daily(store: Store, config: Config, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut wait = AUTO_PURGE_FIRST;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            changed = stop.changed() => if changed.is_err() || *stop.borrow() { return },
        }
        wait = AUTO_PURGE_EVERY;
        let progress = |line: String| tracing::info!("{line}");
        match purge(
            &store,
            &config,
            None,
            false,
            DEFAULT_BATCH,
            Utc::now(),
            &progress,
        )
        .await
        {
            Ok(report) => {
                let t = report.total();
                tracing::info!(
                    messages = t.messages,
                    versions = t.versions,
                    reactions = t.reactions,
                    events = report.events,
                    "automatic purge done; the next in a day"
                );
            }
            Err(e) => tracing::warn!(
                error = %format!("{e:#}"),
                "automatic purge failed; it is tried again in a day"
            ),
        }
    }
}

/// After a purge batch committed: the attachment files only its messages named. A failure
/// is a warning (the purge stands; the files stay until removed by hand).
async fn remove_purged_blobs(store: &Store, config: &Config, sha256: &[String]) {
    if sha256.is_empty() {
        return;
    }
    let removed = async {
        let blobs = crate::attachments::fetcher::open_blob_store(config)?;
        crate::attachments::fetcher::remove_unreferenced_blobs(store, &blobs, sha256).await
    }
    .await;
    match removed {
        Ok(n) => tracing::info!(removed = n, "attachment files of purged messages removed"),
        Err(e) => tracing::warn!(
            error = %format!("{e:#}"),
            "attachment files of purged messages were not removed"
        ),
    }
}
