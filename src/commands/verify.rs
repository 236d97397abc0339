//! `chatvault verify`: recompute every hash chain, check every stored version against the
//! digest its event recorded, compare chain heads saved elsewhere (`--head`), and check the
//! search index against PostgreSQL, and with `--attachments` every stored attachment against
//! its event (`attachments::check`). Every failure is a line on stderr, and the exit code is 1.
//! Each source's outcome is kept in `archive.verify_results`, which the daemon exports as
//! `chatvault_verify_ok`.

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
`verify --head SOURCE=SEQ:HASH` later proves the chain was not rewritten since. The access \
log's chain is named access-log (`--head access-log=SEQ:HASH`). `--print-heads` prints the heads in that form (one per line) \
without checking anything.\n\nExamples:\n  \
chatvault verify\n  chatvault verify --head acme-tsdd=1042:9f86d08…\n  \
chatvault verify --print-heads | ssh heads@vault.example 'cat >> chatvault-heads.log'\n  \
chatvault verify $(chatvault verify --print-heads | sed 's/^/--head=/')\n  \
chatvault verify --upstream --source acme-tsdd --sample 500 --json"
)]
pub struct VerifyArgs {
    /// A chain head saved earlier, as SOURCE=SEQ:HASH (repeatable); `access-log=SEQ:HASH`
    /// for the access log's chain.
    #[arg(long = "head", value_name = "SOURCE=SEQ:HASH")]
    pub heads: Vec<String>,
    /// Print each source's stored chain head as SOURCE=SEQ:HASH (what --head takes) and
    /// exit, without verifying.
    #[arg(long, conflicts_with_all = ["heads", "upstream"])]
    pub print_heads: bool,
    /// With --print-heads: one JSON object per source (source, event_seq, hash, head); with
    /// --upstream: the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also check every stored attachment: its blob is in the attachment store and its
    /// bytes still hash to the sha256 its `attachment_stored` event recorded.
    #[arg(long, conflicts_with_all = ["print_heads", "upstream"])]
    pub attachments: bool,

    #[command(flatten)]
    pub upstream: UpstreamFlags,
}

/// `verify --upstream` (the proof against the source, `verify_upstream.rs`).
#[derive(Debug, Args)]
pub struct UpstreamFlags {
    /// Prove the archive against its source instead: re-read, read-only, a random sample
    /// of archived messages and the newest page of each conversation, report every
    /// difference, and record the proof in the chain. Exit 0: no drift; 3: drift; 1: error.
    #[arg(long, conflicts_with = "heads")]
    pub upstream: bool,
    /// With --upstream: only this source (repeatable; default: every enabled source).
    #[arg(long = "source", value_name = "NAME", requires = "upstream")]
    pub sources: Vec<String>,
    /// With --upstream: archived messages sampled per source.
    #[arg(long, value_name = "N", default_value_t = crate::upstream_proof::DEFAULT_SAMPLE, requires = "upstream")]
    pub sample: i64,
    /// With --upstream: the sample's seed (the same seed samples the same messages);
    /// default: a random one, printed and recorded.
    #[arg(long, value_name = "X", requires = "upstream")]
    pub seed: Option<String>,
}

pub async fn run(args: VerifyArgs, config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    if args.json && !args.print_heads && !args.upstream.upstream {
        anyhow::bail!(
            "--json goes with --print-heads or --upstream (verify prints its report as text)"
        );
    }
    if args.upstream.upstream {
        let u = args.upstream;
        let upstream = super::verify_upstream::UpstreamArgs {
            sources: u.sources,
            sample: u.sample,
            seed: u.seed,
            json: args.json,
        };
        return super::verify_upstream::run(upstream, config_path).await;
    }
    let mut heads = Vec::new();
    for h in &args.heads {
        heads.push(ExpectedHead::parse(h).map_err(anyhow::Error::msg)?);
    }
    let config = load_config(config_path, true)?;
    if args.print_heads {
        let json = args.json;
        return with_store(&config, true, move |store| print_heads(store, json)).await;
    }
    let index_dir = index::index_dir(&config.storage.data_dir);
    if args.attachments {
        let blobs = crate::attachments::fetcher::open_blob_store(&config)?;
        return with_store(&config, true, |store| async move {
            let chains = verify(store.clone(), heads, index_dir).await?;
            let blobs_ok = verify_attachments(&store, &blobs).await?;
            Ok(if chains == ExitCode::SUCCESS && blobs_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        })
        .await;
    }
    with_store(&config, true, |store| verify(store, heads, index_dir)).await
}

/// `verify --attachments`: each stored attachment's blob against its event; a line of
/// counts on stdout, each problem on stderr; `false` when there is any.
async fn verify_attachments(
    store: &Store,
    blobs: &crate::attachments::blob::BlobStore,
) -> anyhow::Result<bool> {
    let check = crate::attachments::check::check_blobs(store, blobs, None).await?;
    println!(
        "attachments: {} stored files checked ({} bytes){}",
        check.checked,
        check.bytes,
        if check.purged > 0 {
            format!(", {} of purged messages not checked", check.purged)
        } else {
            String::new()
        }
    );
    for p in &check.problems {
        eprintln!("verify failed: {p}");
    }
    if check.ok() {
        println!("ok: every stored attachment is the file that was fetched");
    }
    Ok(check.ok())
}

/// The chains and versions (the store), then the index; the report on stdout, failures on
/// stderr.
async fn verify(
    store: Store,
    heads: Vec<ExpectedHead>,
    index_dir: PathBuf,
) -> anyhow::Result<ExitCode> {
    let report = store.verify(&heads).await?;
    // kept for the daemon's `chatvault_verify_ok`; the check stands even if it cannot be kept
    if let Err(e) = store.record_verify(&report).await {
        tracing::warn!(error = %e, "could not record the outcome of this verification");
    }
    let index_ok = verify_index(&store, &index_dir).await?;
    let mut out = std::io::stdout().lock();
    for (source, events, head) in &report.sources {
        writeln!(out, "{source}: {events} events, head {head}")?;
    }
    writeln!(out, "{} message versions checked", report.versions_checked)?;
    let (entries, head) = &report.access_log;
    writeln!(
        out,
        "{}: {entries} entries, head {head}",
        crate::store::ACCESS_LOG_CHAIN
    )?;
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

/// `verify --print-heads`: each source's stored head, as `--head` takes it.
async fn print_heads(store: Store, json: bool) -> anyhow::Result<ExitCode> {
    let heads = store.stored_heads().await?;
    let mut out = std::io::stdout().lock();
    for head in &heads {
        if json {
            let line = serde_json::json!({
                "source": head.source,
                "event_seq": head.event_seq,
                "hash": head.hash,
                "head": head.to_string(),
            });
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{head}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
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
