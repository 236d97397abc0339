//! `chatvault reindex`: rebuild the search index from PostgreSQL in a new generation, swap
//! it in when complete and catch up (ARCHITECTURE.md, "Generations"); search keeps working
//! meanwhile. A progress bar on a terminal.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::common::{load_config, prepare_data_dir, with_store};
use crate::index::{self, Indexer, SearchIndex};
use crate::store::Store;

#[derive(Debug, Args)]
#[command(
    after_help = "The new index is built beside the old one and swapped in when complete. Deleting \
data_dir/index is always safe: this rebuilds it.\n\nExamples:\n  chatvault reindex\n  \
chatvault --config /etc/chatvault/chatvault.toml reindex"
)]
pub struct ReindexArgs {}

pub async fn run(_args: ReindexArgs, config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path, true)?;
    prepare_data_dir(&config)?;
    let index_dir = index::index_dir(&config.storage.data_dir);
    with_store(&config, true, move |store| reindex(store, index_dir)).await
}

/// `chatvault reindex`: rebuild in a new generation, swap it in, catch up.
async fn reindex(store: Store, index_dir: PathBuf) -> anyhow::Result<ExitCode> {
    let search_index = SearchIndex::open_or_create(&index_dir)?;
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "indexing {bar:40} {pos}/{len} messages ({per_sec}, {eta} left)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let progress = {
        let bar = bar.clone();
        move |done: u64, total: u64| {
            if let Some(bar) = &bar {
                bar.set_length(total);
                bar.set_position(done);
            }
        }
    };
    let started = std::time::Instant::now();
    let report = Indexer::new(search_index)
        .rebuild(&store, &progress)
        .await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    println!(
        "index rebuilt: {} messages in {:.1}s",
        report.documents,
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
