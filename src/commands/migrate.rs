//! `chatvault migrate`: apply the database migrations (every command that opens the store
//! applies them too).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::common::{load_config, with_store};

#[derive(Debug, Args)]
#[command(
    after_help = "Examples:\n  chatvault migrate\n  CHATVAULT_DATABASE_URL=postgres://chatvault@db/chatvault chatvault migrate"
)]
pub struct MigrateArgs {}

pub async fn run(_args: MigrateArgs, config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path, true)?;
    with_store(&config, false, |store| async move {
        store.migrate().await.context("applying migrations")?;
        let n = crate::store::MIGRATOR.iter().count();
        println!("migrations current ({n} applied)");
        Ok(ExitCode::SUCCESS)
    })
    .await
}
