//! `chatvault status`: per source, what the archive holds, its chain head, the last run and
//! the next scheduled one; as text or one JSON object per source.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Args;

use super::common::{load_config, with_store};
use crate::config::Config;
use crate::store::Store;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  chatvault status\n  chatvault status --json | jq .chain_head")]
pub struct StatusArgs {
    /// One JSON object per source, one per line.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: StatusArgs, config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path, true)?;
    let settings = config.clone();
    with_store(&config, true, |store| status(store, settings, args)).await
}

async fn status(store: Store, config: Config, args: StatusArgs) -> anyhow::Result<ExitCode> {
    let mut statuses = store.status().await?;
    let now = chrono::Utc::now();
    crate::scheduler::fill_next_runs(&mut statuses, &config.sources, now);
    let proofs = store.last_upstream_proofs().await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for s in &statuses {
            let mut line = serde_json::to_value(s)?;
            if let Some(p) = proofs.get(s.source.as_str()) {
                line["upstream_proof"] = serde_json::json!({
                    "event_seq": p.event_seq,
                    "at": p.observed_at,
                    "detail": p.detail,
                });
            }
            writeln!(out, "{line}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if statuses.is_empty() {
        writeln!(
            out,
            "no sources yet: add a [[source]] to the configuration (see deploy/chatvault.example.toml), then run `chatvault sync`"
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    for s in &statuses {
        writeln!(out, "{} ({})", s.source, s.platform)?;
        writeln!(
            out,
            "  conversations {}  messages {}  versions {}  reactions {}  events {}",
            s.conversations, s.messages, s.versions, s.reactions, s.events
        )?;
        writeln!(
            out,
            "  quarantine {}  seq gaps {}  cursors {}",
            s.quarantine, s.gaps, s.cursors
        )?;
        writeln!(out, "  chain head {}", s.chain_head)?;
        match &s.last_run {
            Some(r) => {
                let lag = s.lag_seconds.map_or("never succeeded".to_string(), |l| {
                    format!("{l}s since the last success")
                });
                writeln!(
                    out,
                    "  last run #{} {} at {} ({} new, {} changed, {} requests, {} retries; {lag})",
                    r.run_id,
                    r.status,
                    r.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    r.messages_new,
                    r.messages_changed,
                    r.requests,
                    r.retries
                )?;
                if let Some(secs) = r.duration_seconds {
                    writeln!(
                        out,
                        "  took {secs:.1}s; failed runs in a row: {}",
                        s.failures_in_a_row
                    )?;
                }
                if let Some(e) = &r.error {
                    writeln!(out, "  error: {}", crate::terminal::escape_line(e))?;
                }
            }
            None => writeln!(out, "  never synced")?,
        }
        if let Some(t) = s.newest_message_at {
            let behind = (now - t).num_seconds().max(0);
            writeln!(
                out,
                "  newest message {} ({behind}s ago)",
                t.format("%Y-%m-%d %H:%M:%S UTC")
            )?;
        }
        match proofs.get(s.source.as_str()) {
            Some(p) => writeln!(
                out,
                "  proven against upstream {} (event {}: {} checked, {} drifted)",
                p.observed_at.format("%Y-%m-%d %H:%M:%S UTC"),
                p.event_seq,
                p.detail["checked"],
                p.detail["drifted"]
            )?,
            None => writeln!(out, "  never proven against upstream (`verify --upstream`)")?,
        }
        if let Some(t) = s.next_run_at {
            writeln!(
                out,
                "  next scheduled run {}",
                t.format("%Y-%m-%d %H:%M:%S UTC")
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
