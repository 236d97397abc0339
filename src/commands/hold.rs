//! `chatvault hold add|list|release`: legal holds (README, "Retention and legal hold"). A
//! hold keeps what it covers from every purge from the moment it is placed until it is
//! released; placing and releasing are events in the chain of every source the hold covers.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::common::{load_config, with_store};
use crate::index::search::parse_time;
use crate::store::access_log::os_user;
use crate::store::retention::{Hold, NewHold};
use crate::store::{AccessRecord, Via};
use crate::terminal::escape_line;

#[derive(Debug, Subcommand)]
pub enum HoldCommand {
    /// Place a legal hold: what it covers is never purged until it is released.
    #[command(
        after_help = "A hold without --source covers every source, also ones added later; \
each filter narrows it (a message is held when it matches all of them). --since includes, \
--until excludes (a date as --until includes that day).\n\nExamples:\n  \
chatvault hold add --name case-4711 --sender u_1024 --since 2025-01-01 --reason \"litigation 4711\"\n  \
chatvault hold add --name audit-2026 --source acme-tsdd --conversation g_finance --reason \"tax audit\""
    )]
    Add(AddArgs),
    /// List holds, active first.
    #[command(
        after_help = "Examples:\n  chatvault hold list\n  chatvault hold list --json | jq .name"
    )]
    List(ListArgs),
    /// Release a hold: what only it covered can be purged from then on.
    #[command(
        after_help = "Examples:\n  chatvault hold release case-4711 --reason \"case closed\""
    )]
    Release(ReleaseArgs),
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The hold's name (unique, also after release).
    #[arg(long)]
    pub name: String,
    /// Only this source (default: every source).
    #[arg(long)]
    pub source: Option<String>,
    /// Only this conversation id.
    #[arg(long)]
    pub conversation: Option<String>,
    /// Only messages from this sender id.
    #[arg(long)]
    pub sender: Option<String>,
    /// Only messages sent at or after this time (RFC 3339 or a date, UTC).
    #[arg(long)]
    pub since: Option<String>,
    /// Only messages sent before this time (a date includes that day).
    #[arg(long)]
    pub until: Option<String>,
    /// Why the hold is placed (recorded in the chain).
    #[arg(long)]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// One JSON object per hold, one per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The hold's name.
    pub name: String,
    /// Why it is released (recorded in the chain).
    #[arg(long)]
    pub reason: Option<String>,
}

fn non_empty(value: Option<String>, flag: &str) -> anyhow::Result<Option<String>> {
    match value {
        Some(v) if v.trim().is_empty() => anyhow::bail!("{flag} must not be empty"),
        other => Ok(other),
    }
}

pub async fn run(command: HoldCommand, config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    // Arguments are checked before anything is opened.
    let new = match &command {
        HoldCommand::Add(a) => {
            let time = |value: &Option<String>, flag: &str, until: bool| {
                value
                    .as_deref()
                    .map(|s| parse_time(s, until).map_err(|e| anyhow::anyhow!("{flag}: {e}")))
                    .transpose()
            };
            Some(NewHold {
                name: a.name.trim().to_string(),
                source: non_empty(a.source.clone(), "--source")?,
                conversation_id: non_empty(a.conversation.clone(), "--conversation")?,
                sender_id: non_empty(a.sender.clone(), "--sender")?,
                since: time(&a.since, "--since", false)?,
                until: time(&a.until, "--until", true)?,
                reason: a.reason.trim().to_string(),
                by: Some(os_user()),
            })
        }
        _ => None,
    };
    let config = load_config(config_path, true)?;
    with_store(&config, true, |store| async move {
        let now = chrono::Utc::now();
        // Fail closed: a hold change or listing without its record in the access log is refused.
        let record = match &command {
            HoldCommand::Add(a) => AccessRecord::new(os_user(), Via::Cli, "hold_add")
                .filter("name", a.name.trim())
                .filter("source", &a.source)
                .filter("conversation", &a.conversation)
                .filter("sender", &a.sender)
                .filter("since", &a.since)
                .filter("until", &a.until)
                .filter("reason", a.reason.trim()),
            HoldCommand::Release(r) => AccessRecord::new(os_user(), Via::Cli, "hold_release")
                .filter("name", &r.name)
                .filter("reason", &r.reason),
            HoldCommand::List(_) => AccessRecord::new(os_user(), Via::Cli, "hold_list"),
        };
        store.record_access(record).await?;
        let mut out = std::io::stdout().lock();
        match command {
            HoldCommand::Add(_) => {
                let new = new.expect("parsed above");
                let hold = store.place_hold(&new, now).await?;
                writeln!(out, "hold {} placed: {}", hold.name, scope(&hold))?;
            }
            HoldCommand::Release(r) => {
                let hold = store
                    .release_hold(&r.name, r.reason.as_deref(), Some(&os_user()), now)
                    .await?;
                writeln!(
                    out,
                    "hold {} released; what it alone covered can be purged from now on",
                    hold.name
                )?;
            }
            HoldCommand::List(l) => {
                let holds = store.holds().await?;
                if l.json {
                    for h in &holds {
                        writeln!(out, "{}", serde_json::to_string(h)?)?;
                    }
                } else if holds.is_empty() {
                    writeln!(out, "no holds")?;
                }
                for h in holds.iter().filter(|_| !l.json) {
                    let state = match h.released_at {
                        None => "active".to_string(),
                        Some(at) => format!("released {}", at.format("%Y-%m-%d %H:%M UTC")),
                    };
                    writeln!(
                        out,
                        "{}  {state}  placed {}{}",
                        escape_line(&h.name),
                        h.placed_at.format("%Y-%m-%d %H:%M UTC"),
                        h.placed_by
                            .as_deref()
                            .map_or(String::new(), |b| format!(" by {}", escape_line(b)))
                    )?;
                    writeln!(out, "  covers: {}", scope(h))?;
                    writeln!(out, "  reason: {}", escape_line(&h.reason))?;
                    if let Some(r) = &h.release_reason {
                        writeln!(out, "  released because: {}", escape_line(r))?;
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
    .await
}

/// What a hold covers, in words.
fn scope(h: &Hold) -> String {
    let mut parts = vec![match &h.source {
        Some(s) => format!("source {}", escape_line(s)),
        None => "every source".to_string(),
    }];
    if let Some(c) = &h.conversation_id {
        parts.push(format!("conversation {}", escape_line(c)));
    }
    if let Some(s) = &h.sender_id {
        parts.push(format!("messages from {}", escape_line(s)));
    }
    if let Some(t) = h.since {
        parts.push(format!("sent from {}", t.to_rfc3339()));
    }
    if let Some(t) = h.until {
        parts.push(format!("sent before {}", t.to_rfc3339()));
    }
    parts.join(", ")
}
