//! `chatvault export`: messages with their whole history as JSONL (or the current text as
//! CSV), streamed from the `archive.*` views to stdout or to a file that appears complete or
//! not at all.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use futures::StreamExt as _;

use super::common::{list_or, load_config, with_store};
use crate::index::search::{parse_time, SearchError};
use crate::store::export::{csv_record, ExportFilter, CSV_COLUMNS};
use crate::store::Store;

#[derive(Debug, Args)]
#[command(
    after_help = "JSONL: one message per line with every archive.messages column, the conversation's \
name, `versions` (version 1 = the original) and `reactions` (every episode). CSV: one row per message, \
current text only.\n\nExamples:\n  chatvault export --source acme-tsdd > acme.jsonl\n  \
chatvault export --conversation g_ops --since 2026-11-01 --until 2026-11-07 --format csv -o ops-week.csv\n  \
chatvault export --as-of 2026-10-31T18:00:00Z --conversation g_ops > ops-as-of.jsonl"
)]
pub struct ExportArgs {
    /// Only this source.
    #[arg(long)]
    pub source: Option<String>,
    /// Only this conversation (its id, as in `archive.conversations`).
    #[arg(long)]
    pub conversation: Option<String>,
    /// Messages sent at or after this time: RFC 3339 (`2026-11-01T08:00:00Z`) or a UTC
    /// date (`2026-11-01`).
    #[arg(long, value_parser = parse_since)]
    pub since: Option<DateTime<Utc>>,
    /// Messages sent before this time; a date includes that whole day.
    #[arg(long, value_parser = parse_until)]
    pub until: Option<DateTime<Utc>>,
    /// Every message as it stood at this time (RFC 3339, or a UTC date meaning the end of
    /// that day): only messages sent by then, the version current then, recalls, deletions
    /// and reactions only as far as they had happened (`archive.messages_as_of`).
    #[arg(long, value_name = "TIME", value_parser = parse_as_of)]
    pub as_of: Option<DateTime<Utc>>,
    #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
    pub format: ExportFormat,
    /// CSV: write cells that begin with = + - @, a tab or a carriage return as they are.
    /// By default they get a leading ' so that a spreadsheet shows them as text instead of
    /// running them as formulas (anyone in a chat can post one).
    #[arg(long)]
    pub keep_formulas: bool,
    /// Write here instead of stdout. The file appears complete or not at all.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

/// `--since`, read as `chatvault search` and `GET /api/search` read it.
fn parse_since(s: &str) -> Result<DateTime<Utc>, SearchError> {
    parse_time(s, false)
}

/// `--as-of`: a time, or a date meaning the last moment of that day.
pub fn parse_as_of(s: &str) -> Result<DateTime<Utc>, SearchError> {
    crate::index::search::parse_as_of(s)
}

/// `--until`: a date means the end of that day.
fn parse_until(s: &str) -> Result<DateTime<Utc>, SearchError> {
    parse_time(s, true)
}

pub async fn run(args: ExportArgs, config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path, true)?;
    with_store(&config, true, |store| export(store, args)).await
}

/// `chatvault export`: stream matching messages to stdout or, through a private temporary
/// file beside it (mode 0600, a fresh random name) renamed at the end, to `--output`.
async fn export(store: Store, args: ExportArgs) -> anyhow::Result<ExitCode> {
    if let (Some(since), Some(until)) = (args.since, args.until) {
        if since >= until {
            bail!("--since {since} is not before --until {until}: nothing could match");
        }
    }
    let filter = ExportFilter {
        source: args.source.clone(),
        conversation: args.conversation.clone(),
        since: args.since,
        until: args.until,
        as_of: args.as_of,
    };
    if let Some(source) = &filter.source {
        // A typo is an error, not an empty export.
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

    // The export is created private (0600) under a name nobody can predict or plant a
    // symlink at, and appears under `--output` only when complete.
    let partial = match &args.output {
        Some(path) => {
            let dir = crate::files::parent_dir(path);
            let name = path.file_name().map_or_else(
                || "export".to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let temp = crate::files::private_temp_file_in(&dir, &format!(".{name}."))
                .with_context(|| format!("cannot create a file in {}", dir.display()))?;
            Some(temp)
        }
        None => None,
    };
    let sink: Box<dyn Write + Send> = match &partial {
        Some(temp) => Box::new(
            temp.as_file()
                .try_clone()
                .with_context(|| format!("cannot open {}", temp.path().display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let mut sink = std::io::BufWriter::with_capacity(1 << 16, sink);

    let written: anyhow::Result<u64> = async {
        let mut n = 0u64;
        match args.format {
            ExportFormat::Jsonl => {
                let mut rows = std::pin::pin!(store.export_jsonl(&filter));
                while let Some(line) = rows.next().await {
                    sink.write_all(line?.as_bytes())?;
                    sink.write_all(b"\n")?;
                    n += 1;
                }
            }
            ExportFormat::Csv => {
                let header: Vec<Option<String>> =
                    CSV_COLUMNS.iter().map(|c| Some(c.to_string())).collect();
                let guard = !args.keep_formulas;
                sink.write_all(csv_record(&header, guard).as_bytes())?;
                let mut rows = std::pin::pin!(store.export_csv(&filter));
                while let Some(fields) = rows.next().await {
                    sink.write_all(csv_record(&fields?, guard).as_bytes())?;
                    n += 1;
                }
            }
        }
        sink.flush()?;
        Ok(n)
    }
    .await;

    let n = match written {
        Ok(n) => n,
        Err(e) => {
            // A closed pipe (`export | head`) is the reader's choice, not a failure. (Dropping
            // the temporary file removes it.)
            if partial.is_none()
                && e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e.context("export stopped"));
        }
    };
    drop(sink);
    if let (Some(temp), Some(out)) = (partial, &args.output) {
        let from = temp.path().to_path_buf();
        temp.as_file()
            .sync_all()
            .with_context(|| format!("cannot write {}", from.display()))?;
        temp.persist(out).map_err(|e| {
            anyhow::Error::new(e.error).context(format!(
                "cannot move {} to {}",
                from.display(),
                out.display()
            ))
        })?;
        eprintln!("exported {n} messages to {}", out.display());
    } else {
        eprintln!("exported {n} messages");
    }
    Ok(ExitCode::SUCCESS)
}
