//! The content-addressed blob store: each file once, under its sha256. The default is a
//! directory (`data_dir/attachments/blobs`, files 0600 in 0700 directories, written by
//! rename so a file appears only when complete); the fetcher stages a download in
//! `staging/` beside it, hashing as it goes, and hands the staged file over with its digest.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::files;

/// A sha256 as 64 lowercase hex digits, checked on construction.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hex(String);

impl Sha256Hex {
    pub fn parse(s: &str) -> anyhow::Result<Self> {
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Sha256Hex(s.to_string()))
        } else {
            bail!("not a sha256 (64 lowercase hex digits): {s:?}")
        }
    }

    pub fn of_digest(digest: &[u8]) -> Self {
        Sha256Hex(hex::encode(digest))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stored blob being read: its size and its bytes as a stream.
pub struct BlobReader {
    pub size: u64,
    pub bytes: BoxStream<'static, std::io::Result<Bytes>>,
}

enum Backend {
    Directory { root: PathBuf },
}

/// Where attachment files are kept.
pub struct BlobStore {
    backend: Backend,
    staging: PathBuf,
}

impl BlobStore {
    /// The directory store under `dir` (`dir/blobs`, staging in `dir/staging`), created
    /// private if missing.
    pub fn in_directory(dir: &Path) -> anyhow::Result<Self> {
        let root = dir.join("blobs");
        let staging = dir.join("staging");
        for d in [dir, &root, &staging] {
            files::create_private_dir_all(d)
                .with_context(|| format!("cannot create {}", d.display()))?;
        }
        Ok(BlobStore {
            backend: Backend::Directory { root },
            staging,
        })
    }

    /// Where the fetcher stages downloads (always a local directory).
    pub fn staging_dir(&self) -> &Path {
        &self.staging
    }

    /// Where blobs go, for people: a directory or an `s3://` URL (never credentials).
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Directory { root } => root.display().to_string(),
        }
    }

    /// Keeps the staged file `staged` (in [`Self::staging_dir`]) as the blob `sha256`.
    /// The caller computed `sha256` while writing it. Storing a blob that is already there
    /// keeps the one there and removes the staged file.
    pub async fn put(&self, staged: &Path, sha256: &Sha256Hex) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Directory { root } => {
                let target = blob_path(root, sha256);
                let staged = staged.to_path_buf();
                tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                    let dir = files::parent_dir(&target);
                    files::create_private_dir_all(&dir)
                        .with_context(|| format!("cannot create {}", dir.display()))?;
                    if target.exists() {
                        let _ = std::fs::remove_file(&staged);
                        return Ok(());
                    }
                    std::fs::File::open(&staged)
                        .and_then(|f| f.sync_all())
                        .with_context(|| format!("cannot sync {}", staged.display()))?;
                    std::fs::rename(&staged, &target).with_context(|| {
                        format!("cannot move {} to {}", staged.display(), target.display())
                    })?;
                    std::fs::File::open(&dir).and_then(|d| d.sync_all()).ok();
                    Ok(())
                })
                .await
                .context("blob store task failed")?
            }
        }
    }

    /// Remove the blob `sha256` (after the last attachment naming it was purged); `false`
    /// when it was not there.
    pub async fn remove(&self, sha256: &Sha256Hex) -> anyhow::Result<bool> {
        match &self.backend {
            Backend::Directory { root } => {
                let path = blob_path(root, sha256);
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
                }
            }
        }
    }

    /// Whether the blob `sha256` is stored.
    pub async fn contains(&self, sha256: &Sha256Hex) -> anyhow::Result<bool> {
        match &self.backend {
            Backend::Directory { root } => Ok(tokio::fs::try_exists(blob_path(root, sha256))
                .await
                .context("cannot look into the blob store")?),
        }
    }

    /// The blob `sha256`, or `None` if it is not stored.
    pub async fn open(&self, sha256: &Sha256Hex) -> anyhow::Result<Option<BlobReader>> {
        match &self.backend {
            Backend::Directory { root } => {
                let path = blob_path(root, sha256);
                let file = match tokio::fs::File::open(&path).await {
                    Ok(file) => file,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot open {}", path.display()))
                    }
                };
                let size = file.metadata().await?.len();
                let bytes = tokio_util::io::ReaderStream::new(file).boxed();
                Ok(Some(BlobReader { size, bytes }))
            }
        }
    }
}

/// `root/ab/abcdef…`: 256 directories, so no directory grows past what file systems
/// list quickly.
fn blob_path(root: &Path, sha256: &Sha256Hex) -> PathBuf {
    root.join(&sha256.as_str()[..2]).join(sha256.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;

    async fn stage(store: &BlobStore, bytes: &[u8]) -> (PathBuf, Sha256Hex) {
        let mut file = files::private_temp_file_in(store.staging_dir(), "dl").unwrap();
        std::io::Write::write_all(&mut file, bytes).unwrap();
        let (_, path) = file.keep().unwrap();
        (path, Sha256Hex::of_digest(&Sha256::digest(bytes)))
    }

    async fn read_all(store: &BlobStore, sha: &Sha256Hex) -> Option<Vec<u8>> {
        let reader = store.open(sha).await.unwrap()?;
        let mut out = Vec::new();
        let mut bytes = reader.bytes;
        while let Some(chunk) = bytes.next().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(out.len() as u64, reader.size);
        Some(out)
    }

    #[tokio::test]
    async fn a_directory_store_keeps_each_blob_once_and_privately() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::in_directory(&dir.path().join("attachments")).unwrap();
        let (staged, sha) = stage(&store, b"picture").await;
        assert!(!store.contains(&sha).await.unwrap());
        store.put(&staged, &sha).await.unwrap();
        assert!(store.contains(&sha).await.unwrap());
        assert!(!staged.exists());
        assert_eq!(read_all(&store, &sha).await.unwrap(), b"picture");

        // The same bytes again: the staged copy goes, the blob stays.
        let (again, sha2) = stage(&store, b"picture").await;
        assert_eq!(sha, sha2);
        store.put(&again, &sha2).await.unwrap();
        assert!(!again.exists());

        let path = blob_path(&dir.path().join("attachments/blobs"), &sha);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);

        let missing = Sha256Hex::parse(&"0".repeat(64)).unwrap();
        assert!(read_all(&store, &missing).await.is_none());
    }

    #[test]
    fn digests_are_checked() {
        assert!(Sha256Hex::parse(&"a".repeat(64)).is_ok());
        assert!(Sha256Hex::parse(&"A".repeat(64)).is_err());
        assert!(Sha256Hex::parse("../../etc/passwd").is_err());
    }
}
