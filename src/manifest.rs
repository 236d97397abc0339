//! The manifest every `chatvault export` to a file or directory writes beside its output
//! (`FILE.manifest.json`, or `DIR/manifest.json`): what was exported (format, filters,
//! counts, time range), from which state of the archive (each source's chain head and the
//! access-log entry that recorded the export), by which chatvault, and the size and sha256
//! of every file, so that a recipient can check the files with [`check`]
//! (`chatvault export --check-manifest FILE`) or with `sha256sum`.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The version of the manifest's format.
pub const MANIFEST_VERSION: u32 = 1;

/// The file name of a directory export's manifest.
pub const DIR_MANIFEST: &str = "manifest.json";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub manifest_version: u32,
    pub chatvault_version: String,
    pub created_at: String,
    /// `jsonl`, `csv`, `eml` or `mbox`.
    pub format: String,
    /// For `eml` and `mbox`: `message` or `conversation-day`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eml_per: Option<String>,
    /// The filters as given (source, conversation, since, until).
    pub filters: serde_json::Value,
    /// Messages exported.
    pub messages: u64,
    /// The send times of the first and last message exported.
    pub first_sent_at: Option<String>,
    pub last_sent_at: Option<String>,
    /// Each covered source's chain head when the export read the archive, as `verify
    /// --head SOURCE=SEQ:HASH` takes it.
    pub chain_heads: Vec<ChainHead>,
    /// The access-log entry that recorded this export.
    pub access_log_entry: Option<ChainHead>,
    pub files: Vec<FileDigest>,
    /// With `export --attachments DIR`: the attachments of the exported messages and the
    /// files copied for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attachments: Option<AttachmentsManifest>,
}

/// The attachments part of a manifest.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AttachmentsManifest {
    /// Where the files were copied: relative to the manifest's directory when beneath it,
    /// else absolute.
    pub dir: String,
    /// Every file copied, once each, relative to `dir` (`ab/abcdef…`, named by sha256).
    pub files: Vec<FileDigest>,
    /// Every attachment of the exported messages, stored or not.
    pub attachments: Vec<AttachmentEntry>,
}

/// One attachment of an exported message.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AttachmentEntry {
    pub source: String,
    pub conversation_id: String,
    pub message_id: String,
    pub ordinal: i32,
    pub kind: String,
    pub name: Option<String>,
    pub mime: Option<String>,
    /// pending, stored, failed, too_large, gone or skipped.
    pub status: String,
    /// Bytes stored, or the size upstream declares while not stored.
    pub size: Option<i64>,
    pub sha256: Option<String>,
    /// Its copy, relative to the attachments `dir`; `None` when it is not stored (or could
    /// not be copied: then `problem` says why).
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ChainHead {
    pub chain: String,
    pub seq: i64,
    pub hash: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FileDigest {
    /// Relative to the manifest's directory.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

/// A writer that counts and hashes what goes through it.
pub struct Digesting<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Digesting<W> {
    pub fn new(inner: W) -> Self {
        Digesting {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// Bytes written and their sha256 (hex), and the inner writer.
    pub fn finish(self) -> (W, u64, String) {
        (self.inner, self.bytes, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for Digesting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Size and sha256 (hex) of a file.
pub fn digest_file(path: &Path) -> io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok((bytes, hex::encode(hasher.finalize())))
}

/// Where the manifest of an export to `output` goes: `DIR/manifest.json` for a directory
/// export, `FILE.manifest.json` beside a file.
pub fn manifest_path(output: &Path, directory: bool) -> PathBuf {
    if directory {
        output.join(DIR_MANIFEST)
    } else {
        let mut name = output.file_name().unwrap_or_default().to_os_string();
        name.push(".manifest.json");
        output.with_file_name(name)
    }
}

/// What [`check`] found.
#[derive(Debug, Default)]
pub struct CheckReport {
    pub files_ok: usize,
    pub problems: Vec<String>,
}

/// Check the files a manifest lists against their sizes and digests (the copied
/// attachment files too); for a directory export also that the directory holds no file
/// the manifest does not list.
pub fn check(manifest_file: &Path) -> anyhow::Result<(Manifest, CheckReport)> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(manifest_file)
        .with_context(|| format!("cannot read {}", manifest_file.display()))?;
    let manifest: Manifest = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a chatvault export manifest",
            manifest_file.display()
        )
    })?;
    if manifest.manifest_version != MANIFEST_VERSION {
        anyhow::bail!(
            "{} is a manifest of version {}; this chatvault reads version {MANIFEST_VERSION}",
            manifest_file.display(),
            manifest.manifest_version
        );
    }
    let dir = crate::files::parent_dir(manifest_file);
    let mut report = CheckReport::default();
    for f in &manifest.files {
        if !plain_relative(Path::new(&f.path)) {
            report
                .problems
                .push(format!("{:?}: not a plain relative path", f.path));
            continue;
        }
        match digest_file(&dir.join(&f.path)) {
            Ok((bytes, sha256)) if bytes == f.bytes && sha256 == f.sha256 => report.files_ok += 1,
            Ok((bytes, sha256)) => report.problems.push(format!(
                "{}: differs from the manifest ({bytes} bytes, sha256 {sha256}; the manifest says {} bytes, sha256 {})",
                f.path, f.bytes, f.sha256
            )),
            Err(e) => report.problems.push(format!("{}: {e}", f.path)),
        }
    }
    if let Some(attachments) = &manifest.attachments {
        check_attachments(&dir, attachments, &mut report);
    }
    let directory_export = manifest_file.file_name().and_then(|n| n.to_str()) == Some(DIR_MANIFEST);
    if directory_export {
        let listed: std::collections::HashSet<&str> =
            manifest.files.iter().map(|f| f.path.as_str()).collect();
        let mut extra: Vec<String> = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot list {}", dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != DIR_MANIFEST && !listed.contains(n.as_str()))
            .collect();
        extra.sort();
        for name in extra {
            report
                .problems
                .push(format!("{name}: in the directory but not in the manifest"));
        }
    }
    Ok((manifest, report))
}

/// A relative path of plain names only (no `..`, no root).
fn plain_relative(path: &Path) -> bool {
    !path.as_os_str().is_empty()
        && !path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
}

/// The copied attachment files against their sizes and digests (each named by its
/// sha256), and every attachment that should have a copy against the files listed.
fn check_attachments(dir: &Path, m: &AttachmentsManifest, report: &mut CheckReport) {
    let base = Path::new(&m.dir);
    let base = if base.is_absolute() {
        base.to_path_buf()
    } else if plain_relative(base) {
        dir.join(base)
    } else {
        report.problems.push(format!(
            "attachments directory {:?}: neither absolute nor a plain relative path",
            m.dir
        ));
        return;
    };
    let mut listed = std::collections::HashMap::new();
    for f in &m.files {
        let shown = Path::new(&m.dir).join(&f.path).display().to_string();
        if !plain_relative(Path::new(&f.path)) {
            report
                .problems
                .push(format!("{:?}: not a plain relative path", f.path));
            continue;
        }
        listed.insert(f.path.as_str(), f.sha256.as_str());
        match digest_file(&base.join(&f.path)) {
            Ok((bytes, sha256)) if bytes == f.bytes && sha256 == f.sha256 => report.files_ok += 1,
            Ok((bytes, sha256)) => report.problems.push(format!(
                "{shown}: differs from the manifest ({bytes} bytes, sha256 {sha256}; the manifest says {} bytes, sha256 {})",
                f.bytes, f.sha256
            )),
            Err(e) => report.problems.push(format!("{shown}: {e}")),
        }
    }
    for a in &m.attachments {
        let what = format!(
            "attachment {} of message {:?} in {}/{}",
            a.ordinal, a.message_id, a.source, a.conversation_id
        );
        if let Some(problem) = &a.problem {
            report
                .problems
                .push(format!("{what}: not copied: {problem}"));
        }
        match (&a.file, &a.sha256) {
            (Some(file), Some(sha)) => match listed.get(file.as_str()) {
                Some(listed_sha) if listed_sha == sha => {}
                Some(listed_sha) => report.problems.push(format!(
                    "{what}: its sha256 {sha} is not that of its file {file} ({listed_sha})"
                )),
                None => report.problems.push(format!(
                    "{what}: its file {file} is not among the files listed"
                )),
            },
            (Some(file), None) => report
                .problems
                .push(format!("{what}: has a file {file} but no sha256")),
            (None, _) => {}
        }
    }
}
