//! `chatvault export --attachments DIR`: the stored files of the exported messages copied
//! out of the blob store into `DIR`, content-addressed (`DIR/ab/abcdef…`, each file once
//! however many messages point to it), and listed for the manifest
//! ([`crate::manifest::AttachmentsManifest`]).
//!
//! Each copy is checked against its sha256 while it is written and appears under its name
//! only when complete (written to a private temporary file, then renamed); a file already
//! in `DIR` (an earlier export into the same directory) is kept when its digest matches.
//! A file that cannot be copied (missing from the blob store, or not what its sha256 says)
//! does not stop the export: its entry says why, and the command ends with an error.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use futures::StreamExt as _;

use crate::attachments::blob::{BlobStore, Sha256Hex};
use crate::manifest::{self, AttachmentEntry, AttachmentsManifest, Digesting, FileDigest};
use crate::store::export::ExportAttachment;

/// What `--attachments` produced: the manifest's part and how many files could not be
/// copied.
pub struct Copied {
    pub manifest: AttachmentsManifest,
    pub problems: usize,
    pub bytes: u64,
}

/// What is wrong with `--attachments DIR`, before anything is opened.
pub fn check_args(dir: &Path, output: Option<&Path>, eml: bool) -> anyhow::Result<()> {
    let Some(output) = output else {
        bail!(
            "--attachments needs --output: the manifest written beside the export lists the \
             copied files"
        );
    };
    if dir.as_os_str().is_empty() {
        bail!("--attachments needs a directory");
    }
    if dir.exists() && !dir.is_dir() {
        bail!("--attachments {}: not a directory", dir.display());
    }
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let (dir, output) = (absolute(dir), absolute(output));
    if dir == output || (eml && dir.starts_with(&output)) {
        bail!(
            "--attachments {} must be outside the export's own output {}",
            dir.display(),
            output.display()
        );
    }
    Ok(())
}

/// `DIR/ab/abcdef…` relative to `DIR`.
fn relative_path(sha256: &Sha256Hex) -> String {
    format!("{}/{}", &sha256.as_str()[..2], sha256.as_str())
}

/// How the manifest at `manifest_dir` names `dir`: relative when beneath it, else
/// absolute.
pub fn manifest_dir_name(manifest_dir: &Path, dir: &Path) -> anyhow::Result<String> {
    let absolute = |p: &Path| -> anyhow::Result<PathBuf> {
        std::path::absolute(p).with_context(|| format!("cannot resolve {}", p.display()))
    };
    let base = absolute(manifest_dir)?;
    let dir = absolute(dir)?;
    let base = base.canonicalize().unwrap_or(base);
    let dir = dir.canonicalize().unwrap_or(dir);
    Ok(match dir.strip_prefix(&base) {
        Ok(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
        _ => dir.display().to_string(),
    })
}

/// Copy the stored files of `rows` into `dir` (created private if missing) and list
/// every row for the manifest in `manifest_dir`.
pub async fn copy(
    blobs: &BlobStore,
    rows: Vec<ExportAttachment>,
    dir: &Path,
    manifest_dir: &Path,
) -> anyhow::Result<Copied> {
    crate::files::create_private_dir_all(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let dir_name = manifest_dir_name(manifest_dir, dir)?;
    let mut files: Vec<FileDigest> = Vec::new();
    // sha256 → the copy's size, or why there is none
    let mut done: std::collections::HashMap<String, Result<u64, String>> = Default::default();
    let mut entries = Vec::with_capacity(rows.len());
    let mut problems = 0;
    let mut bytes = 0;
    for row in rows {
        let mut entry = AttachmentEntry {
            source: row.source,
            conversation_id: row.conversation_id,
            message_id: row.message_id,
            ordinal: row.ordinal,
            kind: row.kind,
            name: row.name,
            mime: row.mime,
            status: row.status,
            size: row.size,
            sha256: row.sha256,
            file: None,
            problem: None,
        };
        if let (Some(sha), "stored") = (&entry.sha256, entry.status.as_str()) {
            let outcome = match done.get(sha) {
                Some(outcome) => outcome.clone(),
                None => {
                    let outcome = match Sha256Hex::parse(sha) {
                        Ok(sha256) => copy_one(blobs, &sha256, dir)
                            .await
                            .map_err(|e| format!("{e:#}")),
                        Err(e) => Err(format!("{e:#}")),
                    };
                    if let Ok(size) = &outcome {
                        files.push(FileDigest {
                            path: format!("{}/{sha}", &sha[..2]),
                            bytes: *size,
                            sha256: sha.clone(),
                        });
                        bytes += size;
                    }
                    done.insert(sha.clone(), outcome.clone());
                    outcome
                }
            };
            match outcome {
                Ok(_) => entry.file = Some(format!("{}/{sha}", &sha[..2])),
                Err(problem) => {
                    eprintln!(
                        "warning: attachment {} of message {} not copied: {}",
                        entry.ordinal,
                        crate::terminal::escape_line(&entry.message_id),
                        crate::terminal::escape_line(&problem)
                    );
                    entry.problem = Some(problem);
                    problems += 1;
                }
            }
        }
        entries.push(entry);
    }
    Ok(Copied {
        manifest: AttachmentsManifest {
            dir: dir_name,
            files,
            attachments: entries,
        },
        problems,
        bytes,
    })
}

/// Copy one blob to `dir/ab/sha256`, checking its digest; its size.
async fn copy_one(blobs: &BlobStore, sha256: &Sha256Hex, dir: &Path) -> anyhow::Result<u64> {
    let target = dir.join(relative_path(sha256));
    let sub = crate::files::parent_dir(&target);
    if target.symlink_metadata().is_ok() {
        let (size, digest) = manifest::digest_file(&target)
            .with_context(|| format!("cannot read {}", target.display()))?;
        if digest != sha256.as_str() {
            bail!(
                "{} is already there with other content (sha256 {digest}); remove it and export again",
                target.display()
            );
        }
        return Ok(size);
    }
    crate::files::create_private_dir_all(&sub)
        .with_context(|| format!("cannot create {}", sub.display()))?;
    let Some(reader) = blobs.open(sha256).await? else {
        bail!(
            "the blob store ({}) has no file {sha256}; `chatvault verify --attachments` checks every stored file",
            blobs.describe()
        );
    };
    let temp = crate::files::private_temp_file_in(&sub, ".copy.")
        .with_context(|| format!("cannot create a file in {}", sub.display()))?;
    let mut sink = Digesting::new(std::io::BufWriter::with_capacity(
        1 << 16,
        temp.as_file()
            .try_clone()
            .with_context(|| format!("cannot open {}", temp.path().display()))?,
    ));
    let mut stream = reader.bytes;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(|| format!("cannot read blob {sha256}"))?;
        sink.write_all(&chunk)
            .with_context(|| format!("cannot write {}", temp.path().display()))?;
    }
    sink.flush()?;
    let (_, size, digest) = sink.finish();
    if digest != sha256.as_str() {
        bail!(
            "the blob store's file {sha256} is not what its name says (sha256 {digest}); \
             `chatvault verify --attachments` checks every stored file"
        );
    }
    temp.as_file()
        .sync_all()
        .with_context(|| format!("cannot write {}", temp.path().display()))?;
    temp.persist(&target).map_err(|e| {
        anyhow::Error::new(e.error).context(format!("cannot create {}", target.display()))
    })?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_names_a_directory_beneath_it_relatively() {
        let root = tempfile::tempdir().unwrap();
        let inside = root.path().join("files");
        std::fs::create_dir(&inside).unwrap();
        assert_eq!(manifest_dir_name(root.path(), &inside).unwrap(), "files");
        let elsewhere = tempfile::tempdir().unwrap();
        let named = manifest_dir_name(root.path(), elsewhere.path()).unwrap();
        assert!(Path::new(&named).is_absolute(), "{named}");
    }
}
