//! The content-addressed blob store: each file once, under its sha256. The default is a
//! directory (`data_dir/attachments/blobs`, files 0600 in 0700 directories, written by
//! rename so a file appears only when complete); the fetcher stages a download in
//! `staging/` beside it, hashing as it goes, and hands the staged file over with its digest.
//!
//! The other backend is an S3-compatible bucket (`store = "s3://bucket/prefix"`, through the
//! `object_store` crate): blobs are the objects `prefix/ab/<sha256>`, staging stays local
//! (`data_dir/attachments/staging`). A staged file is uploaded in parts of
//! [`S3_PART_BYTES`] (a single PUT when smaller), at most [`S3_PARTS_IN_FLIGHT`] at once, so
//! memory stays bounded whatever the file's size; an object is complete only when its
//! upload completes. The credentials never appear in `Debug`, a log line or an error text:
//! error texts from the server are scrubbed of them before they are shown.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, RetryConfig, WriteMultipart};

use crate::config::{AttachmentsConfig, BlobStoreConfig, S3Config, Secret};
use crate::files;

/// Size of one part of a multipart upload (S3 wants at least 5 MiB but for the last part).
pub const S3_PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts of one upload in flight at once; with the part being filled, an upload holds at most
/// `(S3_PARTS_IN_FLIGHT + 1) * S3_PART_BYTES` in memory.
pub const S3_PARTS_IN_FLIGHT: usize = 2;
/// Requests to the bucket are retried (on 5xx, 429 and connection errors) this often, and
/// for at most [`S3_RETRY_TIMEOUT`] after the first try.
const S3_MAX_RETRIES: usize = 3;
const S3_RETRY_TIMEOUT: Duration = Duration::from_secs(60);
const S3_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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

/// One range of bytes a client asked for (`Range: bytes=…`), before it is resolved against
/// the blob's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `first-last`, both included.
    Bounded(u64, u64),
    /// `first-`: to the end.
    From(u64),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// The one range of a `Range` header value (RFC 9110 §14.2). `None` for anything else
    /// (another unit, several ranges, malformed): the whole file is served then, as the RFC
    /// allows a server to ignore the header.
    pub fn parse(value: &str) -> Option<ByteRange> {
        let spec = value.trim().strip_prefix("bytes=")?.trim();
        if spec.contains(',') {
            return None;
        }
        let (first, last) = spec.split_once('-')?;
        let number = |s: &str| -> Option<u64> {
            let s = s.trim();
            if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        };
        match (first.trim().is_empty(), last.trim().is_empty()) {
            (true, false) => Some(ByteRange::Suffix(number(last)?)),
            (false, true) => Some(ByteRange::From(number(first)?)),
            (false, false) => {
                let (a, b) = (number(first)?, number(last)?);
                (a <= b).then_some(ByteRange::Bounded(a, b))
            }
            (true, true) => None,
        }
    }

    /// The bytes `start..end` of a blob of `size` bytes this range names, or `None` when it
    /// names none of them (416).
    pub fn resolve(self, size: u64) -> Option<std::ops::Range<u64>> {
        let range = match self {
            ByteRange::Bounded(a, b) => a..b.saturating_add(1).min(size),
            ByteRange::From(a) => a..size,
            ByteRange::Suffix(0) => return None,
            ByteRange::Suffix(n) => size.saturating_sub(n)..size,
        };
        (range.start < range.end).then_some(range)
    }
}

/// Part of a blob: `range` of its `size` bytes.
pub struct BlobPart {
    pub size: u64,
    pub range: std::ops::Range<u64>,
    pub bytes: BoxStream<'static, std::io::Result<Bytes>>,
}

enum Backend {
    Directory { root: PathBuf },
    S3(S3Blobs),
}

/// Where attachment files are kept.
pub struct BlobStore {
    backend: Backend,
    staging: PathBuf,
}

impl std::fmt::Debug for BlobStore {
    /// The place, never the credentials.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("store", &self.describe())
            .field("staging", &self.staging)
            .finish()
    }
}

impl BlobStore {
    /// The store `config.store` names: its directory, or its bucket with staging in
    /// `data_dir/attachments/staging` (created private if missing).
    pub fn from_config(config: &AttachmentsConfig, data_dir: &Path) -> anyhow::Result<Self> {
        match &config.store {
            BlobStoreConfig::Directory(dir) => Self::in_directory(dir),
            BlobStoreConfig::S3(s3) => Self::in_s3(
                s3,
                &data_dir.join("attachments/staging"),
                config.request_timeout,
            ),
        }
    }

    /// The bucket `config` names, staging in `staging` (created private if missing).
    /// `request_timeout` bounds each request (an upload part, a download).
    pub fn in_s3(
        config: &S3Config,
        staging: &Path,
        request_timeout: Duration,
    ) -> anyhow::Result<Self> {
        files::create_private_dir_all(staging)
            .with_context(|| format!("cannot create {}", staging.display()))?;
        Ok(BlobStore {
            backend: Backend::S3(S3Blobs::new(config, request_timeout, S3_MAX_RETRIES)?),
            staging: staging.to_path_buf(),
        })
    }

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
            Backend::S3(s3) => s3.url(),
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
            Backend::S3(s3) => s3.put(staged, sha256).await,
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
            Backend::S3(s3) => s3.remove(sha256).await,
        }
    }

    /// Whether the blob `sha256` is stored.
    pub async fn contains(&self, sha256: &Sha256Hex) -> anyhow::Result<bool> {
        match &self.backend {
            Backend::Directory { root } => Ok(tokio::fs::try_exists(blob_path(root, sha256))
                .await
                .context("cannot look into the blob store")?),
            Backend::S3(s3) => Ok(s3.head(sha256).await?.is_some()),
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
            Backend::S3(s3) => s3.get(sha256).await,
        }
    }

    /// The bytes of blob `sha256` that `range` names: `None` if the blob is not stored,
    /// `Some(Err(size))` if the range names none of its bytes.
    pub async fn open_range(
        &self,
        sha256: &Sha256Hex,
        range: ByteRange,
    ) -> anyhow::Result<Option<Result<BlobPart, u64>>> {
        match &self.backend {
            Backend::Directory { root } => {
                use tokio::io::{AsyncReadExt, AsyncSeekExt};
                let path = blob_path(root, sha256);
                let mut file = match tokio::fs::File::open(&path).await {
                    Ok(file) => file,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot open {}", path.display()))
                    }
                };
                let size = file.metadata().await?.len();
                let Some(part) = range.resolve(size) else {
                    return Ok(Some(Err(size)));
                };
                file.seek(std::io::SeekFrom::Start(part.start))
                    .await
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let bytes =
                    tokio_util::io::ReaderStream::new(file.take(part.end - part.start)).boxed();
                Ok(Some(Ok(BlobPart {
                    size,
                    range: part,
                    bytes,
                })))
            }
            Backend::S3(s3) => s3.get_range(sha256, range).await,
        }
    }
}

/// An S3-compatible bucket holding each blob as the object `prefix/ab/<sha256>`.
struct S3Blobs {
    store: Arc<AmazonS3>,
    bucket: String,
    prefix: String,
    /// The configured credentials, kept only to scrub them from error texts.
    secrets: Vec<Secret>,
}

/// What went wrong talking to the bucket, for the advice that goes with it.
enum S3Trouble {
    Refused,
    Missing,
    Other,
}

impl S3Blobs {
    fn new(config: &S3Config, request_timeout: Duration, retries: usize) -> anyhow::Result<Self> {
        let builder = match (&config.access_key_id, &config.secret_access_key) {
            (Some(id), Some(secret)) => AmazonS3Builder::new()
                .with_access_key_id(id.expose())
                .with_secret_access_key(secret.expose()),
            // Without keys in the configuration, AWS's usual ones: AWS_ACCESS_KEY_ID and
            // AWS_SECRET_ACCESS_KEY, a web identity, a container's or the instance's role.
            _ => AmazonS3Builder::from_env(),
        };
        // client options first: they replace what `with_allow_http` sets
        let mut builder = builder
            .with_client_options(
                ClientOptions::new()
                    .with_timeout(request_timeout)
                    .with_connect_timeout(S3_CONNECT_TIMEOUT),
            )
            .with_allow_http(config.allow_http)
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_retry(RetryConfig {
                max_retries: retries,
                retry_timeout: S3_RETRY_TIMEOUT,
                ..RetryConfig::default()
            });
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let secrets: Vec<Secret> = [&config.access_key_id, &config.secret_access_key]
            .into_iter()
            .flatten()
            .filter(|s| !s.expose().is_empty())
            .cloned()
            .collect();
        let url = s3_url(&config.bucket, &config.prefix);
        let store = builder.build().map_err(|e| {
            anyhow!(
                "cannot use {url}: {}; check [attachments.s3] in the configuration",
                scrub(&e.to_string(), &secrets)
            )
        })?;
        Ok(S3Blobs {
            store: Arc::new(store),
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
            secrets,
        })
    }

    fn url(&self) -> String {
        s3_url(&self.bucket, &self.prefix)
    }

    fn key(&self, sha256: &Sha256Hex) -> ObjectPath {
        let name = format!("{}/{}", &sha256.as_str()[..2], sha256.as_str());
        if self.prefix.is_empty() {
            ObjectPath::from(name)
        } else {
            ObjectPath::from(format!("{}/{name}", self.prefix))
        }
    }

    /// The error of `action` on `key`: which object, what the server said (without the
    /// credentials) and what to do.
    fn error(&self, action: &str, key: &ObjectPath, error: object_store::Error) -> anyhow::Error {
        let (problem, fix) = self.problem(action, key, error);
        anyhow!("{problem}; {fix}")
    }

    /// [`Self::error`] as the problem and its fix.
    fn problem(
        &self,
        action: &str,
        key: &ObjectPath,
        error: object_store::Error,
    ) -> (String, String) {
        let text = error.to_string();
        // some requests (a list, a completed upload) report every status as a generic
        // error: the server's code in the text says what it was
        let refused = [
            "403 Forbidden",
            "401 Unauthorized",
            "SignatureDoesNotMatch",
            "InvalidAccessKeyId",
            "AccessDenied",
        ];
        let trouble = match &error {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => S3Trouble::Refused,
            _ if text.contains("NoSuchBucket") => S3Trouble::Missing,
            object_store::Error::NotFound { .. } => S3Trouble::Missing,
            _ if refused.iter().any(|code| text.contains(code)) => S3Trouble::Refused,
            _ => S3Trouble::Other,
        };
        let fix = match trouble {
            S3Trouble::Refused => format!(
                "the server refused the credentials: check access_key_id and \
                 secret_access_key in [attachments.s3], and that they may read and write \
                 bucket {}",
                self.bucket
            ),
            S3Trouble::Missing => format!(
                "check that bucket {} exists (chatvault does not create it) and \
                 [attachments.s3] endpoint and region",
                self.bucket
            ),
            S3Trouble::Other => "check [attachments.s3] endpoint and that this machine \
                                 reaches it"
                .to_string(),
        };
        let problem = format!(
            "cannot {action} s3://{}/{key}: {}",
            self.bucket,
            scrub(&text, &self.secrets)
        );
        (problem, fix)
    }

    /// The object's size, or `None` if there is none.
    async fn head(&self, sha256: &Sha256Hex) -> anyhow::Result<Option<u64>> {
        let key = self.key(sha256);
        match self.store.head(&key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("look up", &key, e)),
        }
    }

    async fn put(&self, staged: &Path, sha256: &Sha256Hex) -> anyhow::Result<()> {
        let size = tokio::fs::metadata(staged)
            .await
            .with_context(|| format!("cannot read {}", staged.display()))?
            .len();
        let key = self.key(sha256);
        match self.head(sha256).await? {
            Some(stored) if stored == size => {
                remove_staged(staged).await;
                return Ok(());
            }
            // Only a failed or foreign write leaves another size under a digest: the object
            // is not this blob, so it is replaced.
            Some(stored) => tracing::warn!(
                object = %format!("s3://{}/{key}", self.bucket),
                stored,
                staged = size,
                "an object of another size holds this digest; it is replaced"
            ),
            None => {}
        }
        let file = tokio::fs::File::open(staged)
            .await
            .with_context(|| format!("cannot open {}", staged.display()))?;
        if size < S3_PART_BYTES as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            tokio::io::AsyncReadExt::read_to_end(
                &mut tokio::io::AsyncReadExt::take(file, size),
                &mut bytes,
            )
            .await
            .with_context(|| format!("cannot read {}", staged.display()))?;
            self.store
                .put(&key, Bytes::from(bytes).into())
                .await
                .map_err(|e| self.error("upload", &key, e))?;
        } else {
            let upload = self
                .store
                .put_multipart(&key)
                .await
                .map_err(|e| self.error("start uploading", &key, e))?;
            let mut parts = WriteMultipart::new_with_chunk_size(upload, S3_PART_BYTES);
            let mut chunks = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20);
            while let Some(chunk) = chunks.next().await {
                let chunk = match chunk {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        parts.abort().await.ok();
                        return Err(e).with_context(|| format!("cannot read {}", staged.display()));
                    }
                };
                if let Err(e) = parts.wait_for_capacity(S3_PARTS_IN_FLIGHT).await {
                    parts.abort().await.ok();
                    return Err(self.error("upload", &key, e));
                }
                parts.put(chunk);
            }
            parts
                .finish()
                .await
                .map_err(|e| self.error("finish uploading", &key, e))?;
        }
        remove_staged(staged).await;
        Ok(())
    }

    /// Delete the object; `false` when there was none.
    async fn remove(&self, sha256: &Sha256Hex) -> anyhow::Result<bool> {
        if self.head(sha256).await?.is_none() {
            return Ok(false);
        }
        let key = self.key(sha256);
        match self.store.delete(&key).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.error("delete", &key, e)),
        }
    }

    async fn get(&self, sha256: &Sha256Hex) -> anyhow::Result<Option<BlobReader>> {
        let Some(result) = self.read(sha256, Default::default()).await? else {
            return Ok(None);
        };
        let size = result.meta.size;
        let bytes = self.scrubbed(result);
        Ok(Some(BlobReader { size, bytes }))
    }

    /// The object's read as `options` say; `None` when there is none.
    async fn read(
        &self,
        sha256: &Sha256Hex,
        options: object_store::GetOptions,
    ) -> anyhow::Result<Option<object_store::GetResult>> {
        let key = self.key(sha256);
        match self.store.get_opts(&key, options).await {
            Ok(result) => Ok(Some(result)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("read", &key, e)),
        }
    }

    /// The body of a read, its errors scrubbed of the credentials.
    fn scrubbed(
        &self,
        result: object_store::GetResult,
    ) -> BoxStream<'static, std::io::Result<Bytes>> {
        let secrets = self.secrets.clone();
        result
            .into_stream()
            .map(move |chunk| {
                chunk.map_err(|e| std::io::Error::other(scrub(&e.to_string(), &secrets)))
            })
            .boxed()
    }

    async fn get_range(
        &self,
        sha256: &Sha256Hex,
        range: ByteRange,
    ) -> anyhow::Result<Option<Result<BlobPart, u64>>> {
        let Some(size) = self.head(sha256).await? else {
            return Ok(None);
        };
        let Some(part) = range.resolve(size) else {
            return Ok(Some(Err(size)));
        };
        let options = object_store::GetOptions {
            range: Some(object_store::GetRange::Bounded(part.clone())),
            ..Default::default()
        };
        let Some(result) = self.read(sha256, options).await? else {
            return Ok(None);
        };
        let bytes = self.scrubbed(result);
        Ok(Some(Ok(BlobPart {
            size,
            range: part,
            bytes,
        })))
    }

    /// `doctor`'s one read-only request: a GET of a blob that is never stored (the digest of
    /// zeros). Its 404 says the bucket is there and the credentials may read it (S3 answers
    /// 403 for a missing object to those who may not list the bucket, which the store's
    /// lookups need); its body tells a missing bucket from a missing object.
    async fn probe(&self) -> Result<(), (String, String)> {
        let never = Sha256Hex("0".repeat(64));
        let key = self.key(&never);
        match self.store.get(&key).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotFound { source, .. })
                if !source.to_string().contains("NoSuchBucket") =>
            {
                Ok(())
            }
            Err(e) => Err(self.problem("read", &key, e)),
        }
    }
}

fn s3_url(bucket: &str, prefix: &str) -> String {
    if prefix.is_empty() {
        format!("s3://{bucket}")
    } else {
        format!("s3://{bucket}/{prefix}")
    }
}

/// `text` with every secret replaced by `***`.
fn scrub(text: &str, secrets: &[Secret]) -> String {
    let mut text = text.to_string();
    for secret in secrets {
        text = text.replace(secret.expose(), "***");
    }
    text
}

/// The staged copy of a stored blob goes; one left behind is only wasted space, which the
/// fetcher's staging clean-up takes back.
async fn remove_staged(staged: &Path) {
    if let Err(e) = tokio::fs::remove_file(staged).await {
        tracing::warn!(file = %staged.display(), error = %e, "cannot remove a staged download");
    }
}

/// What `chatvault doctor` finds of the blob store, writing nothing: a directory exists (or
/// can be created) and is private; a bucket answers one read-only request with the
/// credentials. A line saying it is fine, or the problem and its fix.
pub async fn probe(config: &BlobStoreConfig) -> Result<String, (String, String)> {
    match config {
        BlobStoreConfig::Directory(dir) => probe_directory(dir),
        BlobStoreConfig::S3(s3) => {
            // one try: a doctor says what is wrong now, without waiting out retries
            let blobs = S3Blobs::new(s3, S3_CONNECT_TIMEOUT * 3, 0)
                .map_err(|e| (format!("{e:#}"), "correct [attachments.s3]".to_string()))?;
            blobs.probe().await?;
            Ok(format!(
                "{} answers with the configured credentials (the bucket is there and may be \
                 read)",
                blobs.url()
            ))
        }
    }
}

fn probe_directory(dir: &Path) -> Result<String, (String, String)> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // the nearest existing ancestor must let us create what is missing
            let mut ancestor = dir.parent();
            while let Some(a) = ancestor {
                if a.as_os_str().is_empty() {
                    ancestor = Some(Path::new("."));
                    break;
                }
                if a.exists() {
                    break;
                }
                ancestor = a.parent();
            }
            let Some(ancestor) = ancestor else {
                return Err((
                    format!("{} cannot be created", dir.display()),
                    "set attachments.store to an absolute directory".to_string(),
                ));
            };
            let c_path =
                std::ffi::CString::new(ancestor.as_os_str().as_encoded_bytes()).map_err(|_| {
                    (
                        format!("{} has a NUL byte", ancestor.display()),
                        "rename it".to_string(),
                    )
                })?;
            // SAFETY: access reads a NUL-terminated path and changes nothing.
            let writable = unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) } == 0;
            return if writable {
                Ok(format!(
                    "{} does not exist yet; it is created (mode 0700) at the first download",
                    dir.display()
                ))
            } else {
                Err((
                    format!(
                        "{} does not exist and {} is not writable, so it cannot be created",
                        dir.display(),
                        ancestor.display()
                    ),
                    format!(
                        "create {} (mode 0700) for the user running chatvault, or choose \
                         another attachments.store",
                        dir.display()
                    ),
                ))
            };
        }
        Err(e) => {
            return Err((
                format!("cannot read {}: {e}", dir.display()),
                "make it readable by the user running chatvault, or choose another \
                 attachments.store"
                    .to_string(),
            ))
        }
    };
    if !meta.is_dir() {
        return Err((
            format!("{} is not a directory", dir.display()),
            "set attachments.store to a directory".to_string(),
        ));
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid && euid != 0 {
        return Err((
            format!(
                "{} belongs to uid {}, but chatvault runs as uid {euid}",
                dir.display(),
                meta.uid()
            ),
            format!(
                "chown -R {euid} {} (or run chatvault as its owner)",
                dir.display()
            ),
        ));
    }
    for d in [dir.to_path_buf(), dir.join("blobs"), dir.join("staging")] {
        let Ok(meta) = std::fs::symlink_metadata(&d) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err((
                format!(
                    "{} is open to other users (mode {mode:04o}): they can read the attachments",
                    d.display()
                ),
                format!("chmod -R go-rwx {}", d.display()),
            ));
        }
    }
    Ok(format!(
        "{}: private, owned by uid {}",
        dir.display(),
        meta.uid()
    ))
}

/// `root/ab/abcdef…`: 256 directories, so no directory grows past what file systems
/// list quickly.
fn blob_path(root: &Path, sha256: &Sha256Hex) -> PathBuf {
    root.join(&sha256.as_str()[..2]).join(sha256.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_byte_range_is_read_and_anything_else_is_ignored() {
        use ByteRange::*;
        for (value, want) in [
            ("bytes=0-99", Some(Bounded(0, 99))),
            ("bytes=100-", Some(From(100))),
            ("bytes=-500", Some(Suffix(500))),
            (" bytes= 5 - 9 ", Some(Bounded(5, 9))),
            ("bytes=9-5", None),
            ("bytes=0-1,5-6", None),
            ("bytes=-", None),
            ("bytes=a-b", None),
            ("bytes=+1-2", None),
            ("bytes=99999999999999999999-", None),
            ("items=0-1", None),
            ("", None),
        ] {
            assert_eq!(ByteRange::parse(value), want, "{value:?}");
        }
    }

    #[test]
    fn ranges_resolve_inside_the_blob_or_not_at_all() {
        use ByteRange::*;
        assert_eq!(Bounded(0, 99).resolve(50), Some(0..50));
        assert_eq!(Bounded(10, 19).resolve(50), Some(10..20));
        assert_eq!(From(49).resolve(50), Some(49..50));
        assert_eq!(From(50).resolve(50), None);
        assert_eq!(Suffix(500).resolve(50), Some(0..50));
        assert_eq!(Suffix(5).resolve(50), Some(45..50));
        assert_eq!(Suffix(0).resolve(50), None);
        assert_eq!(Bounded(0, 0).resolve(0), None);
        assert_eq!(Bounded(u64::MAX - 1, u64::MAX).resolve(10), None);
    }
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

    fn s3_config(prefix: &str) -> S3Config {
        S3Config {
            bucket: "chat-media".to_string(),
            prefix: prefix.to_string(),
            endpoint: Some("http://127.0.0.1:9".to_string()),
            region: "us-east-1".to_string(),
            access_key_id: Some(Secret::new("AKIAEXAMPLEKEYID1234")),
            secret_access_key: Some(Secret::new("s3cr3t/EXAMPLE+key")),
            allow_http: true,
        }
    }

    #[test]
    fn an_s3_store_shows_its_bucket_and_never_its_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::in_s3(
            &s3_config("chat/2026"),
            &dir.path().join("staging"),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(store.describe(), "s3://chat-media/chat/2026");
        let debug = format!("{store:?}");
        assert!(debug.contains("s3://chat-media/chat/2026"), "{debug}");
        assert!(!debug.contains("AKIAEXAMPLEKEYID1234"), "{debug}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        let staging_mode = std::fs::metadata(store.staging_dir())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(staging_mode, 0o700);

        let Backend::S3(s3) = &store.backend else {
            panic!("not an S3 store")
        };
        let sha = Sha256Hex::parse(&format!("ab{}", "1".repeat(62))).unwrap();
        assert_eq!(
            s3.key(&sha).as_ref(),
            format!("chat/2026/ab/ab{}", "1".repeat(62))
        );
        let top = S3Blobs::new(&s3_config(""), Duration::from_secs(5), 0).unwrap();
        assert_eq!(top.key(&sha).as_ref(), format!("ab/ab{}", "1".repeat(62)));
        assert_eq!(top.url(), "s3://chat-media");

        let said = scrub(
            "Authorization: Credential=AKIAEXAMPLEKEYID1234/…; key s3cr3t/EXAMPLE+key",
            &s3.secrets,
        );
        assert_eq!(said, "Authorization: Credential=***/…; key ***");
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_a_clear_error_and_the_staged_file_stays() {
        // a port nothing listens on
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config = s3_config("chat");
        config.endpoint = Some(format!("http://127.0.0.1:{port}"));
        let dir = tempfile::tempdir().unwrap();
        let store =
            BlobStore::in_s3(&config, &dir.path().join("staging"), Duration::from_secs(5)).unwrap();
        let (staged, sha) = stage(&store, b"video").await;
        let error = format!("{:#}", store.put(&staged, &sha).await.unwrap_err());
        assert!(
            error.contains(&format!(
                "s3://chat-media/chat/{}/{sha}",
                &sha.as_str()[..2]
            )),
            "{error}"
        );
        assert!(
            error.contains("check [attachments.s3] endpoint and that this machine reaches it"),
            "{error}"
        );
        assert!(
            !error.contains("s3cr3t") && !error.contains("AKIAEXAMPLE"),
            "{error}"
        );
        assert!(staged.exists(), "a failed upload lost the staged file");

        let (problem, fix) = probe(&BlobStoreConfig::S3(config)).await.unwrap_err();
        assert!(
            problem.contains("cannot read s3://chat-media/chat/00/"),
            "{problem}"
        );
        assert!(fix.contains("endpoint"), "{fix}");
    }

    #[test]
    fn the_directory_probe_finds_an_open_store_and_one_it_cannot_create() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("attachments");
        // missing, under a writable directory: created at the first download
        let found = probe_directory(&store).unwrap();
        assert!(found.contains("does not exist yet"), "{found}");
        assert!(!store.exists(), "the probe created the directory");
        // a relative path whose parent is the working directory
        assert!(probe_directory(Path::new("attachments-not-here")).is_ok());

        BlobStore::in_directory(&store).unwrap();
        let found = probe_directory(&store).unwrap();
        assert!(found.contains("private"), "{found}");

        std::fs::set_permissions(store.join("blobs"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let (problem, fix) = probe_directory(&store).unwrap_err();
        assert!(
            problem.contains("open to other users (mode 0755)"),
            "{problem}"
        );
        assert!(fix.starts_with("chmod -R go-rwx"), "{fix}");

        let file = dir.path().join("a-file");
        std::fs::write(&file, b"x").unwrap();
        let (problem, _) = probe_directory(&file).unwrap_err();
        assert!(problem.contains("not a directory"), "{problem}");
    }

    #[test]
    fn digests_are_checked() {
        assert!(Sha256Hex::parse(&"a".repeat(64)).is_ok());
        assert!(Sha256Hex::parse(&"A".repeat(64)).is_err());
        assert!(Sha256Hex::parse("../../etc/passwd").is_err());
    }
}
