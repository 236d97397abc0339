//! The command line (README, "Commands"): the global options, the one enum of subcommands,
//! and the one `match` that runs them.
//!
//! Each subcommand is a module here that owns its arguments (a clap `Args` struct with its
//! help and examples) and what it does. A new subcommand is a new module, one variant of
//! [`Command`] (its one-line help is the variant's doc comment) and one arm in [`dispatch`].
//! What several subcommands share (loading the configuration, opening the store, the data
//! directory) is in [`common`].
//!
//! Stdout carries only a command's output; logs and errors go to stderr. Every command
//! returns an exit code: 0 when it did what was asked, 1 when it failed; clap answers a
//! malformed command line with 2, and a second Ctrl-C exits at once with 130. `verify
//! --upstream` exits 3 when it finds drift.

pub mod audit;
pub mod common;
pub mod completions;
pub mod config;
pub mod coverage;
pub mod demo;
pub mod doctor;
pub mod export;
pub mod export_attachments;
pub mod hold;
pub mod migrate;
pub mod purge;
pub mod reindex;
pub mod run;
pub mod search;
pub mod sim;
pub mod status;
pub mod sync;
pub mod verify;
pub mod verify_upstream;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

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
    Run(run::RunArgs),
    /// Sync every enabled source once (or the named ones); exit 1 if any failed.
    Sync(sync::SyncArgs),
    /// Search the archive.
    Search(search::SearchArgs),
    /// Per source: conversations, messages, versions, events, chain head, quarantine, last run, push channel.
    Status(status::StatusArgs),
    /// Recompute every hash chain and check the stored versions against it (with
    /// --upstream: prove the archive against its source).
    Verify(verify::VerifyArgs),
    /// Export messages with their whole history as JSONL, or as CSV.
    Export(export::ExportArgs),
    /// The access log: who searched, viewed or exported what, and when.
    Audit(audit::AuditArgs),
    /// Per conversation: what is archived, every known gap with its reason, the last complete read.
    Coverage(coverage::CoverageArgs),
    /// Rebuild the search index from PostgreSQL (search keeps working meanwhile).
    Reindex(reindex::ReindexArgs),
    /// Apply the database migrations (also done automatically at start).
    Migrate(migrate::MigrateArgs),
    /// Check the configuration, database, data directory, credentials, clock and index.
    Doctor(doctor::DoctorArgs),
    /// Print a shell completion script (bash, zsh or fish).
    Completions(completions::CompletionsArgs),
    /// Print the manual page (roff).
    Man(completions::ManArgs),
    /// Configuration commands.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Everything embedded: fake upstreams, a database, the web page, in one command.
    Demo(demo::DemoArgs),
    /// Run a fake upstream server with a generated world, to point a configuration at.
    Sim(sim::SimArgs),
    /// Legal holds: place, list and release them; what a hold covers is never purged.
    #[command(subcommand)]
    Hold(hold::HoldCommand),
    /// Remove the messages past retention that no hold covers (each batch an event).
    Purge(purge::PurgeArgs),
}

impl Command {
    /// The level of chatvault's own log lines unless `CHATVAULT_LOG` says otherwise: `info`
    /// for the commands that run for a while and report progress, `warn` for the others.
    pub fn log_level(&self) -> &'static str {
        match self {
            Command::Run(_) | Command::Sync(_) | Command::Demo(_) | Command::Sim(_) => "info",
            _ => "warn",
        }
    }
}

/// Run the command the command line names.
pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = cli.config.as_deref();
    match cli.command {
        Command::Run(args) => run::run(args, config).await,
        Command::Sync(args) => sync::run(args, config).await,
        Command::Search(args) => search::run(args, config).await,
        Command::Status(args) => status::run(args, config).await,
        Command::Verify(args) => verify::run(args, config).await,
        Command::Export(args) => export::run(args, config).await,
        Command::Audit(args) => audit::run(args, config).await,
        Command::Coverage(args) => coverage::run(args, config).await,
        Command::Reindex(args) => reindex::run(args, config).await,
        Command::Migrate(args) => migrate::run(args, config).await,
        Command::Doctor(args) => doctor::run(args, config).await,
        Command::Completions(args) => completions::completions(args),
        Command::Man(args) => completions::man(args),
        Command::Config(command) => config::run(command, config),
        Command::Demo(args) => demo::run(args).await,
        Command::Sim(args) => sim::run(args).await,
        Command::Hold(command) => hold::run(command, config).await,
        Command::Purge(args) => purge::run(args, config).await,
    }
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
