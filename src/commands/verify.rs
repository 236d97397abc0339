//! `chatvault verify`: recompute every hash chain, check every stored version against the
//! digest its event recorded, compare chain heads saved elsewhere (`--head`), and check the
//! search index against PostgreSQL. Every failure is a line on stderr, and the exit code is 1.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;

use super::common::{load_config, with_store};
use crate::index::{self, SearchIndex};
use crate::store::{ExpectedHead, Store};

#[derive(Debug, Args)]
#[command(
    after_help = "Save the chain heads `status` prints somewhere outside the database; \
`verify --head SOURCE=SEQ:HASH` later proves the chain was not rewritten since.\n\nExamples:\n  \
chatvault verify\n  chatvault verify --head acme-tsdd=1042:9f86d08…"
)]
pub struct VerifyArgs {
    /// A chain head saved earlier, as SOURCE=SEQ:HASH (repeatable).
    #[arg(long = "head", value_name = "SOURCE=SEQ:HASH")]
    pub heads: Vec<String>,
}

pub async fn run(args: VerifyArgs, config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    let mut heads = Vec::new();
    for h in &args.heads {
        heads.push(ExpectedHead::parse(h).map_err(anyhow::Error::msg)?);
    }
    let config = load_config(config_path, true)?;
    let index_dir = index::index_dir(&config.storage.data_dir);
    with_store(&config, true, |store| verify(store, heads, index_dir)).await
}

/// The chains and versions (the store), then the index; the report on stdout, failures on
/// stderr.
async fn verify(
    store: Store,
    heads: Vec<ExpectedHead>,
    index_dir: PathBuf,
) -> anyhow::Result<ExitCode> {
    let report = store.verify(&heads).await?;
    let index_ok = verify_index(&store, &index_dir).await?;
    let mut out = std::io::stdout().lock();
    for (source, events, head) in &report.sources {
        writeln!(out, "{source}: {events} events, head {head}")?;
    }
    writeln!(out, "{} message versions checked", report.versions_checked)?;
    for p in &report.purges {
        writeln!(
            out,
            "{}: event {} purged {} messages, {} versions, {} reactions sent before {} ({}; {})",
            p.source,
            p.event_seq,
            p.messages,
            p.versions,
            p.reactions,
            p.cutoff,
            p.rule,
            p.observed_at.format("%Y-%m-%d %H:%M:%S UTC")
        )?;
    }
    if report.ok() {
        writeln!(out, "ok: every chain is intact")?;
        return Ok(if index_ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    for f in &report.failures {
        match f.event_seq {
            Some(seq) => eprintln!(
                "verify failed: source {}, event {seq}: {}",
                f.source, f.problem
            ),
            None => eprintln!("verify failed: source {}: {}", f.source, f.problem),
        }
    }
    Ok(ExitCode::FAILURE)
}

/// The index half of `verify`: prints per-source counts and any drift; `false` on drift.
async fn verify_index(store: &Store, index_dir: &Path) -> anyhow::Result<bool> {
    let Some(search_index) = SearchIndex::open(index_dir)? else {
        println!("index: none yet (`chatvault sync` or `chatvault reindex` builds it)");
        return Ok(true);
    };
    let check = index::indexer::check(store, &search_index, 200).await?;
    for s in &check.sources {
        let lag = if s.watermark < s.head {
            format!(
                " (behind: {} events not applied yet, not compared)",
                s.head - s.watermark
            )
        } else {
            String::new()
        };
        println!(
            "index {}: {} documents, {} messages, events applied {}/{}{lag}",
            s.source, s.documents, s.messages, s.watermark, s.head
        );
    }
    println!("index: {} sampled messages checked", check.sampled);
    for d in &check.drift {
        eprintln!("verify failed: index drift: {d}");
    }
    if !check.ok() {
        eprintln!("the index disagrees with PostgreSQL: run `chatvault reindex` to rebuild it");
    }
    Ok(check.ok())
}
