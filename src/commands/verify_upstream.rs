//! `chatvault verify --upstream`: the proof against the source ([`crate::upstream_proof`]).
//! A drift report on stdout (a table, or JSON with `--json`), a line per source on stderr
//! when a proof could not be completed. Exit codes: 0 no drift, 3 drift found, 1 an error
//! (nothing recorded for a source whose proof failed).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::bail;
use rand::Rng;
use serde_json::json;

use super::common::{load_config, select_sources, with_store};
use crate::config::SourceConfig;
use crate::store::Store;
use crate::sync;
use crate::terminal;
use crate::upstream_proof::{self, drifted_messages, ProofOptions, SourceProof};

/// The exit code of a proof that found drift.
pub const EXIT_DRIFT: u8 = 3;

/// What `verify --upstream` takes from the command line.
#[derive(Clone, Debug)]
pub struct UpstreamArgs {
    pub sources: Vec<String>,
    pub sample: i64,
    pub seed: Option<String>,
    pub json: bool,
}

pub async fn run(args: UpstreamArgs, config_path: Option<&Path>) -> anyhow::Result<ExitCode> {
    if !(1..=upstream_proof::MAX_SAMPLE).contains(&args.sample) {
        bail!(
            "--sample must be between 1 and {}, not {}",
            upstream_proof::MAX_SAMPLE,
            args.sample
        );
    }
    if let Some(seed) = &args.seed {
        if seed.is_empty() || seed.len() > 128 {
            bail!("--seed must be 1 to 128 characters");
        }
    }
    let config = load_config(config_path, false)?;
    let selected = select_sources(&config, &args.sources, "verify against upstream")?;
    let seed = args
        .seed
        .clone()
        .unwrap_or_else(|| format!("{:016x}", rand::thread_rng().gen::<u64>()));
    let options = ProofOptions {
        sample: args.sample,
        seed,
        session_dir: Some(sync::session_dir(&config.storage.data_dir)),
    };
    with_store(&config, true, move |store| {
        prove(store, selected, options, args.json)
    })
    .await
}

/// One source after the other (each within its own rate limit).
async fn prove(
    store: Store,
    selected: Vec<SourceConfig>,
    options: ProofOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut proofs = Vec::new();
    for source in &selected {
        proofs.push(upstream_proof::prove_source(&store, source, &options).await);
    }
    for p in &proofs {
        if let Some(e) = &p.error {
            eprintln!(
                "verify --upstream failed: source {}: {e}; nothing was recorded for it",
                p.source
            );
        }
    }
    let mut out = std::io::stdout().lock();
    if json {
        let drift: Vec<_> = proofs.iter().flat_map(|p| p.drift.iter()).collect();
        let report = json!({"sources": proofs, "drift": drift});
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write_table(&mut out, &proofs)?;
    }
    if proofs.iter().any(|p| p.error.is_some()) {
        return Ok(ExitCode::FAILURE);
    }
    if proofs.iter().any(|p| !p.drift.is_empty()) {
        return Ok(ExitCode::from(EXIT_DRIFT));
    }
    Ok(ExitCode::SUCCESS)
}

fn cell(text: &str, width: usize) -> String {
    let text = terminal::escape_line(text);
    let mut cut: String = text.chars().take(width).collect();
    if text.chars().count() > width {
        cut.pop();
        cut.push('…');
    }
    cut
}

fn write_table(out: &mut impl Write, proofs: &[SourceProof]) -> std::io::Result<()> {
    for p in proofs {
        if p.error.is_some() {
            writeln!(out, "{}: not proven (see the error above)", p.source)?;
            continue;
        }
        writeln!(
            out,
            "{}: {} sampled (seed {}), {} conversations, {} messages checked, {} not checked, {} requests, {} drifted; recorded as event {}",
            p.source,
            p.sampled,
            p.seed,
            p.conversations,
            p.checked,
            p.not_checked,
            p.requests,
            drifted_messages(&p.drift),
            p.event_seq.map_or("-".to_string(), |s| s.to_string()),
        )?;
    }
    let rows: Vec<_> = proofs.iter().flat_map(|p| p.drift.iter()).collect();
    if rows.is_empty() {
        return writeln!(out, "no drift: the archive holds what upstream holds");
    }
    writeln!(
        out,
        "{:<16} {:<20} {:<20} {:<18} {:<24} {:<24} note",
        "source", "conversation", "message", "what", "archived", "upstream"
    )?;
    for r in rows {
        writeln!(
            out,
            "{:<16} {:<20} {:<20} {:<18} {:<24} {:<24} {}",
            cell(&r.source, 16),
            cell(&r.conversation_id, 20),
            cell(&r.message_id, 20),
            r.what,
            cell(&r.archived, 24),
            cell(&r.upstream, 24),
            terminal::escape_line(&r.note)
        )?;
    }
    Ok(())
}
