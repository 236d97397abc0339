//! `chatvault config check`: validate the configuration without touching the network, one
//! line per problem.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;

use crate::config;

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration without touching the network; one line per problem.
    #[command(after_help = "Examples:\n  chatvault --config chatvault.toml config check")]
    Check,
}

pub fn run(command: ConfigCommand, config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    match command {
        ConfigCommand::Check => check(config_path),
    }
}

/// Warnings and the summary on stdout; each problem on stdout, the count on stderr, exit 1.
fn check(path: Option<&Path>) -> anyhow::Result<ExitCode> {
    match config::load(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                println!("warning: {w}");
            }
            let file = loaded
                .config
                .path
                .as_ref()
                .map_or("no configuration file, defaults".to_string(), |p| {
                    p.display().to_string()
                });
            println!(
                "config ok: {file}: {} source(s)",
                loaded.config.sources.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            for p in &errors.0 {
                println!("{p}");
            }
            eprintln!("error: {} problem(s) in the configuration", errors.0.len());
            Ok(ExitCode::FAILURE)
        }
    }
}
