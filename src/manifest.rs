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

/// Check the files a manifest lists against their sizes and digests; for a directory
/// export also that the directory holds no file the manifest does not list.
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
        let relative = Path::new(&f.path);
        if relative.is_absolute()
            || relative
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            report
                .problems
                .push(format!("{:?}: not a plain relative path", f.path));
            continue;
        }
        match digest_file(&dir.join(relative)) {
            Ok((bytes, sha256)) if bytes == f.bytes && sha256 == f.sha256 => report.files_ok += 1,
            Ok((bytes, sha256)) => report.problems.push(format!(
                "{}: differs from the manifest ({bytes} bytes, sha256 {sha256}; the manifest says {} bytes, sha256 {})",
                f.path, f.bytes, f.sha256
            )),
            Err(e) => report.problems.push(format!("{}: {e}", f.path)),
        }
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
