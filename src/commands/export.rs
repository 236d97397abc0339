//! `chatvault export`: messages with their whole history as JSONL, the current text as CSV,
//! or mail for e-discovery tools (EML files in a directory, or one mbox file; see
//! [`crate::mail`]), streamed from the `archive.*` views to stdout or to a file (or
//! directory) that appears complete or not at all, with a manifest beside it
//! ([`crate::manifest`]). The export reads one snapshot of the archive, and is recorded in
//! the access log before anything is written: no record, no export.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use futures::StreamExt as _;

use super::common::{list_or, load_config, with_store};
use crate::index::search::{parse_time, SearchError};
use crate::mail::{self, Threads};
use crate::manifest::{self, ChainHead, Digesting, FileDigest, Manifest};
use crate::store::access_log::os_user;
use crate::store::export::{csv_record, ExportFilter, ExportSnapshot, CSV_COLUMNS};
use crate::store::{AccessRecord, Store, Via};

#[derive(Debug, Args)]
#[command(
    after_help = "JSONL: one message per line with every archive.messages column, the conversation's \
name, `versions` (version 1 = the original) and `reactions` (every episode). CSV: one row per message, \
current text only. EML (--output DIR): one RFC 5322 message per chat message, or per \
conversation and UTC day with --eml-per conversation-day, threaded by reply. mbox: the same \
messages in one mboxrd file.\n\nA file or directory export gets a manifest (FILE.manifest.json, \
DIR/manifest.json): counts, time range, filters, chain heads, and the sha256 of each file; \
`--check-manifest` checks one.\n\nWith --attachments DIR the stored files of the exported messages (images, \
files, voice, video of every version) are copied into DIR, named by sha256 (DIR/ab/abcdef…, each file \
once), and the manifest lists every attachment of every exported message with its status, size, sha256 \
and copy, so --check-manifest checks the copies too.\n\nExamples:\n  chatvault export --source acme-tsdd > acme.jsonl\n  \
chatvault export --conversation g_ops --since 2026-11-01 --until 2026-11-07 --format csv -o ops-week.csv\n  \
chatvault export --source acme-tsdd --since 2026-01-01 --format eml --output acme-2026/\n  \
chatvault export --conversation g_ops --format mbox --eml-per conversation-day -o ops.mbox\n  \
chatvault export --as-of 2026-10-31T18:00:00Z --conversation g_ops > ops-as-of.jsonl\n  \
chatvault export --conversation g_ops -o ops.jsonl --attachments ops-files/\n  \
chatvault export --check-manifest acme-2026/manifest.json"
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
    /// EML and mbox: one mail per chat message, or one per conversation and UTC day.
    #[arg(long, value_enum, default_value_t = EmlPer::Message)]
    pub eml_per: EmlPer,
    /// Write here instead of stdout (for EML: a directory, which must not exist yet). It
    /// appears complete or not at all, with its manifest.
    #[arg(long, short, value_name = "FILE|DIR")]
    pub output: Option<PathBuf>,
    /// Check the files of an earlier export against its manifest (FILE.manifest.json or
    /// DIR/manifest.json), and do nothing else. Needs no database.
    #[arg(long, value_name = "MANIFEST")]
    pub check_manifest: Option<PathBuf>,
    /// Also copy the stored attachment files of the exported messages into this directory
    /// (created if missing; files already there are kept when their sha256 matches), listed
    /// in the manifest. Needs --output.
    #[arg(long, value_name = "DIR")]
    pub attachments: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
    /// RFC 5322 messages, one .eml file each, into the directory --output names.
    Eml,
    /// One mboxrd file of the same messages.
    Mbox,
}

impl ExportFormat {
    fn name(self) -> &'static str {
        match self {
            ExportFormat::Jsonl => "jsonl",
            ExportFormat::Csv => "csv",
            ExportFormat::Eml => "eml",
            ExportFormat::Mbox => "mbox",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EmlPer {
    Message,
    ConversationDay,
}

impl EmlPer {
    fn name(self) -> &'static str {
        match self {
            EmlPer::Message => "message",
            EmlPer::ConversationDay => "conversation-day",
        }
    }
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
    if let Some(manifest_file) = &args.check_manifest {
        return check_manifest(manifest_file);
    }
    check_args(&args)?;
    let config = load_config(config_path, true)?;
    let blobs = match &args.attachments {
        Some(_) => Some(crate::attachments::fetcher::open_blob_store(&config)?),
        None => None,
    };
    with_store(&config, true, |store| export(store, args, blobs)).await
}

/// `--check-manifest`: every listed file's size and sha256; the report on stdout, each
/// problem on stderr.
fn check_manifest(manifest_file: &Path) -> anyhow::Result<ExitCode> {
    let (m, report) = manifest::check(manifest_file)?;
    println!(
        "{}: {} export of {} messages by chatvault {}, {} files",
        manifest_file.display(),
        m.format,
        m.messages,
        m.chatvault_version,
        m.files.len()
    );
    for h in &m.chain_heads {
        println!("  chain head {}={}:{}", h.chain, h.seq, h.hash);
    }
    for p in &report.problems {
        eprintln!("check failed: {}", crate::terminal::escape_line(p));
    }
    if report.problems.is_empty() {
        println!("ok: {} files match the manifest", report.files_ok);
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}

/// What is wrong with the arguments, before anything is opened.
fn check_args(args: &ExportArgs) -> anyhow::Result<()> {
    if let (Some(since), Some(until)) = (args.since, args.until) {
        if since >= until {
            bail!("--since {since} is not before --until {until}: nothing could match");
        }
    }
    let mail = matches!(args.format, ExportFormat::Eml | ExportFormat::Mbox);
    if args.eml_per != EmlPer::Message && !mail {
        bail!("--eml-per applies to --format eml and mbox only");
    }
    if let Some(files) = &args.attachments {
        super::export_attachments::check_args(
            files,
            args.output.as_deref(),
            args.format == ExportFormat::Eml,
        )?;
    }
    if args.format == ExportFormat::Eml {
        let Some(dir) = &args.output else {
            bail!("--format eml writes one file per message: give --output DIR (a directory that does not exist yet)");
        };
        if dir.symlink_metadata().is_ok() {
            bail!(
                "{} already exists: an EML export goes into a new directory",
                dir.display()
            );
        }
    }
    Ok(())
}

/// Where the export goes while it is written: nothing, a private temporary file beside
/// `--output`, or a private temporary directory beside it.
enum Target {
    Stdout,
    File(tempfile::NamedTempFile),
    Dir(tempfile::TempDir),
}

/// `chatvault export`: record the access, then stream matching messages from one snapshot
/// to stdout or, through a private temporary file or directory renamed at the end, to
/// `--output`, with its manifest.
async fn export(
    store: Store,
    args: ExportArgs,
    blobs: Option<std::sync::Arc<crate::attachments::blob::BlobStore>>,
) -> anyhow::Result<ExitCode> {
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

    // The export is created private (0600 files, a 0700 directory) under a name nobody can
    // predict or plant a symlink at, and appears under `--output` only when complete.
    let target = match &args.output {
        None => Target::Stdout,
        Some(path) => {
            let dir = crate::files::parent_dir(path);
            let name = path.file_name().map_or_else(
                || "export".to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            if args.format == ExportFormat::Eml {
                let temp = tempfile::Builder::new()
                    .prefix(&format!(".{name}."))
                    .suffix(".partial")
                    .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
                    .tempdir_in(&dir)
                    .with_context(|| format!("cannot create a directory in {}", dir.display()))?;
                Target::Dir(temp)
            } else {
                let temp = crate::files::private_temp_file_in(&dir, &format!(".{name}."))
                    .with_context(|| format!("cannot create a file in {}", dir.display()))?;
                Target::File(temp)
            }
        }
    };

    let mut snapshot = store.export_snapshot().await?;
    let counts = snapshot.counts(&filter).await?;
    let heads = snapshot.chain_heads(filter.source.as_deref()).await?;
    let filters = serde_json::json!({
        "source": filter.source,
        "conversation": filter.conversation,
        "since": filter.since.map(|t| t.to_rfc3339()),
        "until": filter.until.map(|t| t.to_rfc3339()),
        "as_of": filter.as_of.map(|t| t.to_rfc3339()),
    });
    let eml_per =
        matches!(args.format, ExportFormat::Eml | ExportFormat::Mbox).then(|| args.eml_per.name());
    // Fail closed: without its record in the access log, nothing is exported.
    let entry = store
        .record_access(
            AccessRecord::new(os_user(), Via::Cli, "export")
                .filter("source", &filter.source)
                .filter("conversation", &filter.conversation)
                .filter("since", filter.since.map(|t| t.to_rfc3339()))
                .filter("until", filter.until.map(|t| t.to_rfc3339()))
                .filter("as_of", filter.as_of.map(|t| t.to_rfc3339()))
                .filter("format", args.format.name())
                .filter("eml_per", eml_per)
                .filter(
                    "output",
                    args.output.as_ref().map(|p| p.display().to_string()),
                )
                .filter(
                    "attachments",
                    args.attachments.as_ref().map(|p| p.display().to_string()),
                )
                .results(counts.messages),
        )
        .await?;

    let progress = progress_bar(counts.messages.max(0) as u64);
    let written = write_export(&mut snapshot, &filter, &args, &target, &progress).await;
    progress.finish_and_clear();
    // The attachments of the same snapshot's messages.
    let attachment_rows = match (&written, &args.attachments) {
        (Ok(_), Some(_)) => Some(snapshot.attachments(&filter).await?),
        _ => None,
    };
    drop(snapshot);
    let (n, files) = match written {
        Ok(done) => done,
        Err(e) => {
            // A closed pipe (`export | head`) is the reader's choice, not a failure. (Dropping
            // the temporary file or directory removes it.)
            if matches!(target, Target::Stdout)
                && e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return Ok(ExitCode::SUCCESS);
            }
            return Err(e.context("export stopped"));
        }
    };
    if n as i64 != counts.messages {
        tracing::warn!(
            counted = counts.messages,
            written = n,
            "the export wrote another number of messages than its snapshot counted"
        );
    }
    let Some(out) = &args.output else {
        eprintln!("exported {n} messages");
        return Ok(ExitCode::SUCCESS);
    };
    let copied = match (attachment_rows, &args.attachments, &blobs) {
        (Some(rows), Some(dir), Some(blobs)) => {
            let manifest_dir = if matches!(target, Target::Dir(_)) {
                out.clone()
            } else {
                crate::files::parent_dir(out)
            };
            Some(super::export_attachments::copy(blobs, rows, dir, &manifest_dir).await?)
        }
        _ => None,
    };
    let (attachments, attachment_problems) = match copied {
        Some(c) => {
            eprintln!(
                "copied {} attachment files ({} bytes) to {}",
                c.manifest.files.len(),
                c.bytes,
                args.attachments
                    .as_deref()
                    .unwrap_or(Path::new(""))
                    .display()
            );
            (Some(c.manifest), c.problems)
        }
        None => (None, 0),
    };
    let manifest = Manifest {
        manifest_version: manifest::MANIFEST_VERSION,
        chatvault_version: env!("CARGO_PKG_VERSION").to_string(),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        format: args.format.name().to_string(),
        eml_per: eml_per.map(str::to_string),
        filters,
        messages: n,
        first_sent_at: counts.first_sent_at.map(|t| t.to_rfc3339()),
        last_sent_at: counts.last_sent_at.map(|t| t.to_rfc3339()),
        chain_heads: heads
            .into_iter()
            .map(|(chain, seq, hash)| ChainHead { chain, seq, hash })
            .collect(),
        access_log_entry: Some(ChainHead {
            chain: crate::store::ACCESS_LOG_CHAIN.to_string(),
            seq: entry.seq,
            hash: hex::encode(&entry.hash),
        }),
        files,
        attachments,
    };
    let manifest_json = serde_json::to_vec_pretty(&manifest)?;
    let manifest_path = match target {
        Target::Stdout => unreachable!("an output was given"),
        Target::File(temp) => {
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
            let path = manifest::manifest_path(out, false);
            crate::files::write_private(&path, &manifest_json)
                .with_context(|| format!("cannot write {}", path.display()))?;
            path
        }
        Target::Dir(temp) => {
            let inside = temp.path().join(manifest::DIR_MANIFEST);
            crate::files::create_new_private(&inside)
                .and_then(|mut f| f.write_all(&manifest_json).and_then(|()| f.sync_all()))
                .with_context(|| format!("cannot write {}", inside.display()))?;
            let from = temp.keep();
            std::fs::rename(&from, out)
                .with_context(|| format!("cannot move {} to {}", from.display(), out.display()))?;
            manifest::manifest_path(out, true)
        }
    };
    eprintln!(
        "exported {n} messages to {} (manifest {})",
        out.display(),
        manifest_path.display()
    );
    if attachment_problems > 0 {
        eprintln!(
            "error: {attachment_problems} attachments could not be copied (the warnings above; \
             the manifest lists each with the reason)"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on a terminal; nothing on a pipe.
fn progress_bar(total: u64) -> indicatif::ProgressBar {
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} exporting {pos}/{len} messages [{bar:30}] {percent}% ({eta} left)",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Write the messages in the format asked for; returns how many, and the files written
/// (for the manifest).
async fn write_export(
    snapshot: &mut ExportSnapshot,
    filter: &ExportFilter,
    args: &ExportArgs,
    target: &Target,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<(u64, Vec<FileDigest>)> {
    if let Target::Dir(dir) = target {
        return write_eml_dir(snapshot, filter, args.eml_per, dir.path(), progress).await;
    }
    let sink: Box<dyn Write + Send> = match target {
        Target::File(temp) => Box::new(
            temp.as_file()
                .try_clone()
                .with_context(|| format!("cannot open {}", temp.path().display()))?,
        ),
        _ => Box::new(std::io::stdout()),
    };
    let mut sink = Digesting::new(std::io::BufWriter::with_capacity(1 << 16, sink));
    let mut n = 0u64;
    match args.format {
        ExportFormat::Jsonl => {
            let mut rows = std::pin::pin!(snapshot.jsonl(filter));
            while let Some(line) = rows.next().await {
                sink.write_all(line?.as_bytes())?;
                sink.write_all(b"\n")?;
                n += 1;
                progress.inc(1);
            }
        }
        ExportFormat::Csv => {
            let header: Vec<Option<String>> =
                CSV_COLUMNS.iter().map(|c| Some(c.to_string())).collect();
            let guard = !args.keep_formulas;
            sink.write_all(csv_record(&header, guard).as_bytes())?;
            let mut rows = std::pin::pin!(snapshot.csv(filter));
            while let Some(fields) = rows.next().await {
                sink.write_all(csv_record(&fields?, guard).as_bytes())?;
                n += 1;
                progress.inc(1);
            }
        }
        ExportFormat::Mbox | ExportFormat::Eml => {
            let mut mails = Mails::new(args.eml_per);
            let mut rows = std::pin::pin!(snapshot.jsonl(filter));
            while let Some(line) = rows.next().await {
                let row: serde_json::Value = serde_json::from_str(&line?)?;
                n += 1;
                progress.inc(1);
                for m in mails.push(row) {
                    sink.write_all(&mail::mbox_entry(&m.eml, &m.sender, m.at))?;
                }
            }
            for m in mails.finish() {
                sink.write_all(&mail::mbox_entry(&m.eml, &m.sender, m.at))?;
            }
        }
    }
    sink.flush()?;
    let (_, bytes, sha256) = sink.finish();
    let files = match (&args.output, target) {
        (Some(out), Target::File(_)) => vec![FileDigest {
            path: out
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            bytes,
            sha256,
        }],
        _ => Vec::new(),
    };
    Ok((n, files))
}

/// EML: one file per mail in `dir`, named by its place in the export and its ids.
async fn write_eml_dir(
    snapshot: &mut ExportSnapshot,
    filter: &ExportFilter,
    per: EmlPer,
    dir: &Path,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<(u64, Vec<FileDigest>)> {
    let mut files = Vec::new();
    let mut write = |m: Mail| -> anyhow::Result<()> {
        let name = format!("{:06}-{}.eml", files.len() + 1, m.name);
        let path = dir.join(&name);
        let file = crate::files::create_new_private(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let mut sink = Digesting::new(file);
        sink.write_all(&m.eml)?;
        let (_, bytes, sha256) = sink.finish();
        files.push(FileDigest {
            path: name,
            bytes,
            sha256,
        });
        Ok(())
    };
    let mut n = 0u64;
    let mut mails = Mails::new(per);
    let mut rows = std::pin::pin!(snapshot.jsonl(filter));
    while let Some(line) = rows.next().await {
        let row: serde_json::Value = serde_json::from_str(&line?)?;
        n += 1;
        progress.inc(1);
        for m in mails.push(row) {
            write(m)?;
        }
    }
    for m in mails.finish() {
        write(m)?;
    }
    Ok((n, files))
}

/// One mail made from the export's rows.
struct Mail {
    eml: Vec<u8>,
    /// For a file name: the ids it covers, made safe.
    name: String,
    /// For the mbox `From ` line.
    sender: String,
    at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Rows in, mails out: one per row, or one per conversation and UTC day (rows come in
/// conversation and time order, so a day is complete when the next one starts).
struct Mails {
    per: EmlPer,
    threads: Threads,
    day: Vec<serde_json::Value>,
    day_key: Option<(String, String, chrono::NaiveDate)>,
}

impl Mails {
    fn new(per: EmlPer) -> Mails {
        Mails {
            per,
            threads: Threads::default(),
            day: Vec::new(),
            day_key: None,
        }
    }

    fn push(&mut self, row: serde_json::Value) -> Vec<Mail> {
        let text = |k: &str| {
            row.get(k)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        };
        match self.per {
            EmlPer::Message => {
                let refs = self.threads.references(&row);
                let name = format!(
                    "{}-{}-{}",
                    safe(&text("source")),
                    safe(&text("conversation_id")),
                    safe(&text("message_id"))
                );
                vec![Mail {
                    eml: mail::message_eml(&row, &refs),
                    name,
                    sender: mail::envelope_sender(&row),
                    at: mail::sent_at(&row),
                }]
            }
            EmlPer::ConversationDay => {
                let day = mail::sent_at(&row)
                    .map(|t| t.date_naive())
                    .unwrap_or_default();
                let key = (text("source"), text("conversation_id"), day);
                let done = if self.day_key.as_ref() != Some(&key) {
                    self.finish()
                } else {
                    Vec::new()
                };
                self.day_key = Some(key);
                self.day.push(row);
                done
            }
        }
    }

    fn finish(&mut self) -> Vec<Mail> {
        let Some((source, conversation, day)) = self.day_key.take() else {
            return Vec::new();
        };
        let rows = std::mem::take(&mut self.day);
        if rows.is_empty() {
            return Vec::new();
        }
        vec![Mail {
            eml: mail::day_eml(&rows, day),
            name: format!("{}-{}-{day}", safe(&source), safe(&conversation)),
            sender: "chatvault@chatvault.invalid".to_string(),
            at: rows.first().and_then(mail::sent_at),
        }]
    }
}

/// Part of a file name: letters, digits, `.`, `_` and `-` kept, the rest `_`, at most 40
/// characters (the file's number keeps names unique).
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect::<String>()
        .trim_start_matches('.')
        .to_string()
}
