//! `chatvault status`: per source, what the archive holds, its chain head, the last run and
//! the next scheduled one; as text or one JSON object per source.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Args;

use super::common::{load_config, with_store};
use crate::config::Config;
use crate::store::push_state::ReportedPush;
use crate::store::Store;
use chrono::{DateTime, Utc};

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
    let pushes = store.reported_push_states().await?;
    let push_off: Vec<&str> = config
        .sources
        .iter()
        .filter(|s| !s.push)
        .map(|s| s.name.as_str())
        .collect();
    let mut out = std::io::stdout().lock();
    if args.json {
        for s in &statuses {
            let mut line = serde_json::to_value(s)?;
            line["push"] = match pushes.get(s.source.as_str()) {
                Some(p) => push_json(p, now),
                None => serde_json::Value::Null,
            };
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
        let off = push_off.contains(&s.source.as_str());
        writeln!(
            out,
            "  push {}",
            push_line(pushes.get(s.source.as_str()), off, now)
        )?;
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

/// A reported push state as `status --json` shows it: a stale report (no daemon reporting)
/// never says connected or healthy.
fn push_json(p: &ReportedPush, now: DateTime<Utc>) -> serde_json::Value {
    let stale = p.stale(now);
    let mut v = serde_json::to_value(p).unwrap_or_default();
    v["stale"] = stale.into();
    if stale {
        v["connected"] = false.into();
        v["healthy"] = false.into();
    }
    v
}

/// The `push` line of a source.
fn push_line(p: Option<&ReportedPush>, off: bool, now: DateTime<Utc>) -> String {
    let time = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    if off {
        return "off (push = false): every scheduled tick polls".into();
    }
    let Some(p) = p else {
        return "no report: only a running daemon (`chatvault run`) keeps push channels, and a \
                channel shows once it connected or received a push"
            .into();
    };
    let mut line = if p.stale(now) {
        format!(
            "unknown: no daemon has reported since {} (then {})",
            time(p.reported_at),
            if p.connected { "connected" } else { "down" }
        )
    } else if p.connected {
        format!(
            "connected since {}{}",
            p.since.map_or("?".into(), time),
            if p.healthy {
                ", healthy (polling reduced)"
            } else {
                ", not trusted yet (polling on every tick)"
            }
        )
    } else {
        format!(
            "down since {}: {}",
            p.since.map_or("?".into(), time),
            crate::terminal::escape_line(p.last_error.as_deref().unwrap_or("not connected yet"))
        )
    };
    line += &format!("; {} pushes", p.pushes);
    if let Some(t) = p.last_push_at {
        line += &format!(", last {}", time(t));
    }
    if let Some(lag) = p.lag_seconds {
        line += &format!(", lag {lag:.1}s");
    }
    line += &format!(", {} reconnects", p.reconnects);
    line
}
