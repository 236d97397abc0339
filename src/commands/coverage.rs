//! `chatvault coverage`: per conversation, what the archive holds (seqs, times, messages),
//! every known gap with its reason, when its history was last read completely; per source,
//! the rescan window in force and what the archive cannot know on its platform. As text, or
//! one JSON object per source.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use chrono::{DateTime, Utc};
use clap::Args;

use super::common::{list_or, load_config, with_store};
use crate::config::Config;
use crate::connector::limits;
use crate::store::access_log::os_user;
use crate::store::coverage::coverage_rows;
use crate::store::coverage::SourceCoverage;
use crate::store::{AccessRecord, Store, Via};
use crate::terminal::escape_line;

#[derive(Debug, Args)]
#[command(
    after_help = "Gap kinds: not_returned (upstream did not return these seqs: cleared history, \
device filters, deleted for this account), unreadable (upstream fails on them), before_history \
(before the oldest message the account can see, e.g. before it joined), not_member (a group the \
account has left).\n\nExamples:\n  chatvault coverage\n  chatvault coverage --source acme-tsdd\n  \
chatvault coverage --json | jq '.conversations[] | select(.gaps > 0)'"
)]
pub struct CoverageArgs {
    /// Only this source.
    #[arg(long)]
    pub source: Option<String>,
    /// One JSON object per source, one per line, its conversations and gaps inside.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: CoverageArgs, config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path, true)?;
    let settings = config.clone();
    with_store(&config, true, |store| coverage(store, settings, args)).await
}

async fn coverage(store: Store, config: Config, args: CoverageArgs) -> anyhow::Result<ExitCode> {
    if let Some(source) = &args.source {
        let archived: Vec<String> = store
            .sources()
            .await?
            .into_iter()
            .map(|(s, _)| s.to_string())
            .collect();
        if !archived.contains(source) {
            bail!(
                "no source named {source:?} in the archive (archived sources: {})",
                list_or(&archived, "none yet")
            );
        }
    }
    let mut report = store.coverage_report(args.source.as_deref()).await?;
    limits::describe(&mut report, &config.sources);
    // Fail closed: without its record in the access log, nothing is shown.
    store
        .record_access(
            AccessRecord::new(os_user(), Via::Cli, "coverage")
                .filter("source", &args.source)
                .results(coverage_rows(&report)),
        )
        .await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for s in &report {
            writeln!(out, "{}", serde_json::to_string(s)?)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if report.is_empty() {
        writeln!(out, "no sources archived yet")?;
    }
    for s in &report {
        write_source(&mut out, s)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn when(t: &Option<DateTime<Utc>>) -> String {
    t.map_or_else(
        || "never".to_string(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

fn write_source(out: &mut impl Write, s: &SourceCoverage) -> std::io::Result<()> {
    writeln!(out, "{} ({})", s.source, s.platform)?;
    writeln!(out, "  last ok run: {}", when(&s.last_ok_run_at))?;
    writeln!(
        out,
        "  rescan window: {}",
        s.rescan_window
            .as_deref()
            .unwrap_or("unknown (the source is not in this configuration)")
    )?;
    if s.quarantined > 0 {
        writeln!(
            out,
            "  quarantined: {} records could not be archived (kept raw in archive.quarantine)",
            s.quarantined
        )?;
    }
    writeln!(out, "  cannot know on this platform:")?;
    for fact in &s.cannot_know {
        writeln!(out, "    - {fact}")?;
    }
    for c in &s.conversations {
        let cov = &c.coverage;
        let name = cov.name.as_deref().map(escape_line).unwrap_or_default();
        writeln!(
            out,
            "  {} ({} {name})",
            escape_line(&cov.conversation_id),
            cov.conversation_type
        )?;
        let seqs = match (cov.first_seq, cov.last_seq) {
            (Some(a), Some(b)) => format!(", seq {a}-{b}"),
            _ => String::new(),
        };
        writeln!(
            out,
            "    archived: {} messages{seqs}, sent {} to {}",
            cov.message_count,
            when(&cov.first_message_at),
            when(&cov.last_message_at)
        )?;
        writeln!(
            out,
            "    last read completely: {}",
            when(&cov.read_complete_at)
        )?;
        if c.gap_list.is_empty() {
            writeln!(out, "    gaps: none known")?;
        } else {
            writeln!(out, "    gaps: {} ({} seqs)", cov.gaps, cov.missing_seqs)?;
        }
        for g in &c.gap_list {
            let since = if g.archived_since > 0 {
                format!(" [{} archived since]", g.archived_since)
            } else {
                String::new()
            };
            writeln!(
                out,
                "      seq {}-{} {}: {} (found {}){since}",
                g.from_seq,
                g.to_seq,
                g.kind,
                escape_line(&g.reason),
                g.observed_at.format("%Y-%m-%d %H:%M:%S UTC")
            )?;
        }
    }
    Ok(())
}
