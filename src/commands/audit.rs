//! `chatvault audit`: the access log (who searched, viewed or exported what, when, through
//! which door, and how many results they got), oldest first, as lines for a terminal (every
//! value escaped by [`crate::terminal`]: queries are typed by people) or as JSON lines.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use chrono::{DateTime, Utc};
use clap::Args;
use futures::TryStreamExt;

use super::common::{load_config, with_store};
use crate::index::search::{parse_time, SearchError};
use crate::store::{AccessEntry, Store};
use crate::terminal::escape_line;

#[derive(Debug, Args)]
#[command(
    after_help = "Every search, conversation view and export, through the command line, the HTTP \
API or the web page, is recorded before anything is shown: who (the operating-system user, or \
the API token's name), through what (cli, api, web) and from where, the action, query, filters \
and ids, and how many results. `chatvault verify` checks the log's hash chain.\n\nExamples:\n  \
chatvault audit --since 2026-11-01\n  chatvault audit --since 2026-11-01T08:00:00Z --until 2026-11-02 --json | jq ."
)]
pub struct AuditArgs {
    /// Accesses at or after this time: RFC 3339 or a UTC date.
    #[arg(long, value_parser = parse_since)]
    pub since: Option<DateTime<Utc>>,
    /// Accesses before this time; a date includes that whole day.
    #[arg(long, value_parser = parse_until)]
    pub until: Option<DateTime<Utc>>,
    /// One JSON object per line (every column of `archive.access_log`).
    #[arg(long)]
    pub json: bool,
}

fn parse_since(s: &str) -> Result<DateTime<Utc>, SearchError> {
    parse_time(s, false)
}

fn parse_until(s: &str) -> Result<DateTime<Utc>, SearchError> {
    parse_time(s, true)
}

pub async fn run(args: AuditArgs, config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    if let (Some(since), Some(until)) = (args.since, args.until) {
        if since >= until {
            bail!("--since {since} is not before --until {until}: nothing could match");
        }
    }
    let config = load_config(config_path, true)?;
    with_store(&config, true, |store| audit(store, args)).await
}

async fn audit(store: Store, args: AuditArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let mut rows = std::pin::pin!(store.access_log(args.since, args.until));
    let mut n = 0u64;
    while let Some(entry) = rows.try_next().await? {
        n += 1;
        let written = if args.json {
            writeln!(out, "{}", serde_json::to_string(&entry)?)
        } else {
            writeln!(out, "{}", line(&entry))
        };
        match written {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
            Err(e) => return Err(e.into()),
        }
    }
    if !args.json {
        writeln!(out, "{n} access{}", if n == 1 { "" } else { "es" })?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One access on one line, every value from outside escaped.
fn line(e: &AccessEntry) -> String {
    let mut s = format!(
        "{:>6}  {}  {} via {}",
        e.seq,
        e.at.format("%Y-%m-%d %H:%M:%S%.3fZ"),
        escape_line(&e.who),
        e.via
    );
    if let Some(client) = &e.client {
        s.push_str(&format!(" from {}", escape_line(client)));
    }
    s.push_str(&format!("  {}", escape_line(&e.action)));
    if let Some(q) = &e.query {
        s.push_str(&format!(" {}", escape_line(&format!("{q:?}"))));
    }
    if e.filters.as_object().is_some_and(|f| !f.is_empty()) {
        s.push_str(&format!(" {}", escape_line(&e.filters.to_string())));
    }
    if let Some(n) = e.results {
        s.push_str(&format!("  → {n} result{}", if n == 1 { "" } else { "s" }));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_line_shows_control_characters_instead_of_obeying_them() {
        let e = AccessEntry {
            seq: 7,
            at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            who: "legal".into(),
            via: "api".into(),
            client: Some("127.0.0.1:5000".into()),
            action: "search".into(),
            query: Some("会议\u{1b}]52;c;ZXZpbA==\u{7}".into()),
            filters: json!({"source": "acme"}),
            ids: json!([]),
            results: Some(3),
            prev_hash: vec![0; 32],
            hash: vec![1; 32],
        };
        let l = line(&e);
        assert!(!l.contains('\u{1b}') && !l.contains('\u{7}'), "{l:?}");
        assert!(
            l.contains("legal via api from 127.0.0.1:5000  search"),
            "{l}"
        );
        assert!(
            l.contains("{\"source\":\"acme\"}") && l.ends_with("→ 3 results"),
            "{l}"
        );
    }
}
