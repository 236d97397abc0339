//! The command line: one enum of subcommands (README, "Commands").
//!
//! Stdout carries only a command's output; logs and errors go to stderr.

use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "chatvault",
    version,
    about = "A complete, append-only, searchable archive of chat accounts in PostgreSQL",
    long_about = "chatvault pulls conversations and messages incrementally from TangSengDaoDao, \
NetEase Yunxin and Yunhu into PostgreSQL, and records every later change to a message: edits \
with all their versions, recalls, deletions and reactions. Every change is an event in a \
per-source hash chain that `chatvault verify` checks.",
    after_help = "Examples:\n  chatvault status\n  chatvault --config chatvault.toml sync --source acme-tsdd\n  chatvault config check"
)]
pub struct Cli {
    /// Configuration file (default: $CHATVAULT_CONFIG, else ./chatvault.toml if present).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Log format on stderr (default: pretty on a terminal, json otherwise).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: every source on its schedule, the indexer and the HTTP API.
    #[command(
        after_help = "It serves the HTTP API and the web page on server.listen (default 127.0.0.1:8080). \
SIGTERM or Ctrl-C stops it after the pages in flight are committed; a second signal exits at once.\n\n\
Examples:\n  chatvault --config /etc/chatvault/chatvault.toml run\n  \
CHATVAULT_LISTEN=127.0.0.1:9000 chatvault run"
    )]
    Run,
    /// Sync every enabled source once (or the named ones); exit 1 if any failed.
    #[command(
        after_help = "Examples:\n  chatvault sync\n  chatvault sync --source acme-tsdd --full"
    )]
    Sync(SyncArgs),
    /// Search the archive.
    Search(SearchArgs),
    /// Per source: conversations, messages, versions, events, chain head, quarantine, last run.
    #[command(
        after_help = "Examples:\n  chatvault status\n  chatvault status --json | jq .chain_head"
    )]
    Status(StatusArgs),
    /// Recompute every hash chain and check the stored versions against it.
    #[command(
        after_help = "Save the chain heads `status` prints somewhere outside the database; \
`verify --head SOURCE=SEQ:HASH` later proves the chain was not rewritten since.\n\nExamples:\n  \
chatvault verify\n  chatvault verify --head acme-tsdd=1042:9f86d08…"
    )]
    Verify(VerifyArgs),
    /// Export messages with their whole history as JSONL, or as CSV.
    #[command(
        after_help = "JSONL: one message per line with every archive.messages column, the conversation's \
name, `versions` (version 1 = the original) and `reactions` (every episode). CSV: one row per message, \
current text only.\n\nExamples:\n  chatvault export --source acme-tsdd > acme.jsonl\n  \
chatvault export --conversation g_ops --since 2026-11-01 --until 2026-11-07 --format csv -o ops-week.csv"
    )]
    Export(ExportArgs),
    /// Rebuild the search index from PostgreSQL (search keeps working meanwhile).
    #[command(
        after_help = "The new index is built beside the old one and swapped in when complete. Deleting \
data_dir/index is always safe: this rebuilds it.\n\nExamples:\n  chatvault reindex\n  \
chatvault --config /etc/chatvault/chatvault.toml reindex"
    )]
    Reindex,
    /// Apply the database migrations (also done automatically at start).
    #[command(
        after_help = "Examples:\n  chatvault migrate\n  CHATVAULT_DATABASE_URL=postgres://chatvault@db/chatvault chatvault migrate"
    )]
    Migrate,
    /// Configuration commands.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Everything embedded: fake upstreams, a database, the web page, in one command.
    #[command(
        after_help = "Nothing to configure: it starts a fake upstream server per platform with a seeded \
world (Chinese and English, groups and direct chats), an embedded PostgreSQL, syncs them every 15 s while \
the fakes keep posting, editing, recalling and reacting, and serves the web page. It prints the URL, a \
psql command line and commands to try. Ctrl-C stops everything.\n\nExamples:\n  cargo run --release -- demo\n  \
chatvault demo --data-dir ./demo-archive --listen 127.0.0.1:9000"
    )]
    Demo(DemoArgs),
    /// Run a fake upstream server with a generated world, to point a configuration at.
    #[command(
        after_help = "Example:\n  chatvault sim tangsengdaodao --listen 127.0.0.1:5800 --messages 20000\n  \
chatvault sim yunxin --listen 127.0.0.1:5801 --seed 3\n  chatvault sim yunhu --listen 127.0.0.1:5802 --seed 2\n\n\
It prints the base_url and the credentials of the account to archive, and serves until Ctrl-C."
    )]
    Sim(SimArgs),
}

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Which platform to imitate.
    #[arg(value_enum)]
    pub platform: SimPlatform,
    /// Address to listen on (loopback only unless you mean it).
    #[arg(long, default_value = "127.0.0.1:5800")]
    pub listen: std::net::SocketAddr,
    /// Seed of the generated world (the same seed gives the same world).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Messages in the generated world.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..=5_000_000))]
    pub messages: u64,
    /// Conversations in the generated world (groups and direct chats).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(2..=100_000))]
    pub conversations: u64,
    /// New activity (messages, edits, recalls, and reactions where the platform has them)
    /// every this many seconds; 0 for none.
    #[arg(long, default_value_t = 0)]
    pub activity_every: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SimPlatform {
    Tangsengdaodao,
    Yunxin,
    Yunhu,
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Sync only this source (repeatable).
    #[arg(long = "source", value_name = "NAME")]
    pub sources: Vec<String>,
    /// Re-read everything from the beginning (idempotent: nothing is duplicated).
    #[arg(long)]
    pub full: bool,
}

#[derive(Debug, Args)]
#[command(
    after_help = "Query syntax: words must all match; \"a phrase\" matches as written; \
-word excludes; a OR b matches either. Chinese matches wherever the characters appear \
(one character is enough); an English word also finds its other forms (meeting, meetings).\n\n\
Examples:\n  chatvault search 会议\n  chatvault search '预算 OR budget' --since 2026-01-01 --sort relevance\n  \
chatvault search '\"quarterly report\" -draft' --conversation g-42 --json\n  \
chatvault search 撤回 --only-recalled --history"
)]
pub struct SearchArgs {
    /// Words, "phrases", -exclude, OR.
    pub query: String,
    /// Only this source.
    #[arg(long)]
    pub source: Option<String>,
    /// Only this conversation (its id).
    #[arg(long)]
    pub conversation: Option<String>,
    /// Only messages from this sender (id or display name).
    #[arg(long)]
    pub sender: Option<String>,
    /// Sent at or after: RFC 3339 time or date (UTC).
    #[arg(long)]
    pub since: Option<String>,
    /// Sent before: RFC 3339 time, or a date (up to the end of that day, UTC).
    #[arg(long)]
    pub until: Option<String>,
    /// Only this kind of message (text, image, file, ...).
    #[arg(long)]
    pub kind: Option<String>,
    /// Also return recalled and deleted messages.
    #[arg(long, conflicts_with = "only_recalled")]
    pub include_recalled: bool,
    /// Only recalled and deleted messages.
    #[arg(long)]
    pub only_recalled: bool,
    /// Also match what edited messages said before.
    #[arg(long)]
    pub history: bool,
    /// Order of the hits.
    #[arg(long, value_enum, default_value_t = SearchSort::Newest)]
    pub sort: SearchSort,
    /// Hits to print.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub limit: u64,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SearchSort {
    Newest,
    Relevance,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One JSON object per source, one per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// A chain head saved earlier, as SOURCE=SEQ:HASH (repeatable).
    #[arg(long = "head", value_name = "SOURCE=SEQ:HASH")]
    pub heads: Vec<String>,
}

#[derive(Debug, Args)]
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

/// A lower time bound: RFC 3339, or a date meaning its first instant (UTC).
pub fn parse_since(s: &str) -> Result<DateTime<Utc>, String> {
    parse_time(s, false)
}

/// An upper (exclusive) time bound: RFC 3339, or a date meaning the end of that day (UTC).
pub fn parse_until(s: &str) -> Result<DateTime<Utc>, String> {
    parse_time(s, true)
}

fn parse_time(s: &str, end_of_day: bool) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        let d = if end_of_day {
            d.succ_opt().unwrap_or(d)
        } else {
            d
        };
        return Ok(d.and_time(NaiveTime::MIN).and_utc());
    }
    Err(format!(
        "`{s}` is not a time: use RFC 3339 (2026-11-01T08:00:00Z or 2026-11-01T16:00:00+08:00) or a date (2026-11-01)"
    ))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration without touching the network; one line per problem.
    #[command(after_help = "Examples:\n  chatvault --config chatvault.toml config check")]
    Check,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's archive here (default: a temporary directory, removed at the end).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where to serve the web page and API (default: 127.0.0.1:8080, or a free port).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<std::net::SocketAddr>,
    /// Messages in each fake upstream's world.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    pub messages: u64,
    /// Stop by itself after this many seconds (for scripts and tests).
    #[arg(long, value_name = "SECONDS", hide = true)]
    pub exit_after: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sync_takes_repeated_sources() {
        let cli = Cli::parse_from([
            "chatvault",
            "sync",
            "--source",
            "a",
            "--source",
            "b",
            "--full",
        ]);
        let Command::Sync(args) = cli.command else {
            panic!("not sync")
        };
        assert_eq!(args.sources, ["a", "b"]);
        assert!(args.full);
    }
}
