//! The attachment fetcher: for one source, find the files archived versions reference
//! (`Store::scan_attachments`), then download the due ones into the blob store.
//!
//! It runs beside the sync, never inside it: a download never fails or holds up message
//! sync. It has its own HTTP client, rate limit (`attachments.requests_per_second`, every
//! request of every hop counted), `attachments.concurrency` downloads in flight and
//! `attachments.request_timeout` per download. It follows redirects itself, at most
//! [`MAX_HOPS`]: a hop to the origin of the connector's URL carries the connector's
//! credentials, a hop to any other origin never does.
//!
//! Each download is streamed to a private file in the blob store's staging directory,
//! hashed (sha256, and md5 when the platform gives one: a mismatch is a failure, retried)
//! and stopped past `attachments.max_file_mb` (`too_large`, also when `Content-Length` says
//! so up front). Then the blob is put and the row and its `attachment_stored` event are
//! written in one transaction. A run downloads at most `attachments.max_run_mb`; the rest
//! waits for the next. 404, 410 and 403 on a signed URL are retried with backoff and after
//! `attachments.max_attempts` end `gone`; other failures end `failed`; 429 waits for its
//! `Retry-After`. Partial files a killed run left in staging are removed when the next run
//! of the source starts. Errors are counted and logged once, with the URL shown without its
//! query string, never with headers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use md5::Md5;
use reqwest::header::{HeaderMap, CONTENT_LENGTH, LOCATION, RETRY_AFTER};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tracing::{info, warn};

use super::blob::{BlobStore, Sha256Hex};
use super::{shown_url, AttachmentKind, MediaRequest};
use crate::config::{AttachmentsConfig, SourceConfig};
use crate::connector::{self, http::HttpClient, Connector, ConnectorError};
use crate::metrics::Metrics;
use crate::model::SourceName;
use crate::store::attachments::{AttachmentKey, DueAttachment, NotStored};
use crate::store::Store;

/// Redirects followed for one download.
pub const MAX_HOPS: usize = 5;

/// How the fetcher works (from `[attachments]`, plus what tests shorten).
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// `attachments.enabled`: false records references and downloads nothing.
    pub download: bool,
    pub kinds: Vec<AttachmentKind>,
    pub max_file_bytes: u64,
    pub max_run_bytes: u64,
    pub requests_per_second: f64,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub request_timeout: Duration,
    /// The first retry delay; it doubles per attempt up to `retry_cap`.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// Events scanned per transaction.
    pub scan_batch: i64,
    /// Due attachments read at a time.
    pub claim_batch: i64,
}

impl FetchOptions {
    pub fn from_config(config: &AttachmentsConfig) -> Self {
        FetchOptions {
            download: config.enabled,
            kinds: config.kinds.clone(),
            max_file_bytes: config.max_file_bytes,
            max_run_bytes: config.max_run_bytes,
            requests_per_second: config.requests_per_second,
            concurrency: config.concurrency.max(1) as usize,
            max_attempts: config.max_attempts.max(1),
            request_timeout: config.request_timeout,
            retry_base: Duration::from_secs(60),
            retry_cap: Duration::from_secs(24 * 3600),
            scan_batch: 1000,
            claim_batch: 500,
        }
    }
}

/// What one run of the fetcher did for a source.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// Versions whose references were read, and attachments newly recorded.
    pub versions_scanned: u64,
    pub found: u64,
    /// Files stored (each with its event), and the bytes downloaded for them.
    pub stored: u64,
    pub bytes: u64,
    /// Downloads that failed and will be retried, or failed for good.
    pub failed: u64,
    pub gone: u64,
    pub too_large: u64,
    /// Due attachments left for the next run (the run's byte budget was spent).
    pub deferred: u64,
    /// Another process was downloading this source's attachments; nothing was done.
    pub skipped: bool,
}

/// Called after each file stored with the run's totals so far: files, bytes.
pub type ProgressFn = dyn Fn(u64, u64) + Send + Sync;

/// Downloads one source's attachments into a blob store.
pub struct Fetcher {
    store: Store,
    blobs: Arc<BlobStore>,
    options: FetchOptions,
    client: reqwest::Client,
    limit: RateLimit,
    metrics: Option<Arc<Metrics>>,
    progress: Option<Arc<ProgressFn>>,
}

/// Downloaded files recorded per transaction: each transaction locks the source's chain
/// head, so recording file by file would serialise the downloads on it.
const RECORD_BATCH: usize = 64;

/// How one download ended.
enum Outcome {
    /// In the blob store; recorded with its event in the next batch.
    Downloaded {
        key: AttachmentKey,
        sha256: Sha256Hex,
        size: u64,
    },
    NotStored(NotStored),
    /// The run's byte budget is spent: not attempted.
    Deferred,
}

/// Why a download stored nothing, before retries are counted.
enum Failure {
    /// Upstream says it does not have it (404, 410, 403 on a signed URL).
    Gone(String),
    /// Worth retrying (5xx, timeouts, a digest mismatch), after at least `retry_after`.
    Retry(String, Option<Duration>),
    /// Never worth retrying (a bad URL, a redirect loop).
    Permanent(String),
    TooLarge(String),
}

impl Fetcher {
    pub fn new(store: Store, blobs: Arc<BlobStore>, options: FetchOptions) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(options.request_timeout)
            .connect_timeout(options.request_timeout.min(Duration::from_secs(30)))
            .user_agent(concat!("chatvault/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the attachments HTTP client")?;
        Ok(Fetcher {
            store,
            blobs,
            limit: RateLimit::new(options.requests_per_second),
            options,
            client,
            metrics: None,
            progress: None,
        })
    }

    pub fn with_metrics(mut self, metrics: Option<Arc<Metrics>>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn with_progress(mut self, progress: Option<Arc<ProgressFn>>) -> Self {
        self.progress = progress;
        self
    }

    /// Scan `source`'s new versions for references, then download what is due, until done,
    /// the byte budget is spent or `shutdown` turns true. The caller makes sure no other
    /// run for this source is going on (see [`fetch_source`]).
    pub async fn run(
        &self,
        source: &SourceName,
        connector: &dyn Connector,
        shutdown: Option<watch::Receiver<bool>>,
    ) -> anyhow::Result<FetchReport> {
        let stopped = || shutdown.as_ref().is_some_and(|s| *s.borrow());
        let staging = self.staging_for(source)?;
        let mut report = FetchReport::default();

        // Every batch moves the watermark forward, so this ends with the event log.
        loop {
            let batch = self
                .store
                .scan_attachments(source, &self.options.kinds, self.options.scan_batch, |c| {
                    connector.attachments(c)
                })
                .await
                .context("cannot scan the archive for attachments")?;
            report.versions_scanned += batch.versions as u64;
            report.found += batch.added as u64;
            if batch.done || stopped() {
                break;
            }
        }
        self.store
            .skip_attachment_kinds(source, &self.options.kinds)
            .await
            .context("cannot mark attachments of kinds not downloaded")?;
        if !self.options.download {
            return Ok(report);
        }

        let spent = AtomicU64::new(0);
        let stored = AtomicU64::new(0);
        let mut after: Option<AttachmentKey> = None;
        // Keys strictly increase from batch to batch, so this ends.
        'batches: loop {
            if stopped() {
                break;
            }
            let due = self
                .store
                .due_attachments(
                    source,
                    &self.options.kinds,
                    after.as_ref(),
                    self.options.claim_batch,
                )
                .await
                .context("cannot read the attachments due")?;
            let Some(last) = due.last() else { break };
            after = Some(last.key.clone());
            let mut results = futures::stream::iter(due)
                .map(|item| {
                    let staging = &staging;
                    let spent = &spent;
                    let stored = &stored;
                    async move {
                        let outcome = self
                            .download(source, connector, &item, staging, spent)
                            .await;
                        if let Outcome::Downloaded { .. } = outcome {
                            let files = stored.fetch_add(1, Ordering::Relaxed) + 1;
                            if let Some(progress) = &self.progress {
                                progress(files, spent.load(Ordering::Relaxed));
                            }
                        }
                        outcome
                    }
                })
                .buffer_unordered(self.options.concurrency.max(1));
            let mut budget_spent = false;
            let mut downloaded = Vec::new();
            while let Some(outcome) = results.next().await {
                let label = match outcome {
                    Outcome::Downloaded { key, sha256, size } => {
                        downloaded.push((key, sha256, size));
                        if downloaded.len() >= RECORD_BATCH {
                            self.record_stored(source, &mut downloaded, &mut report)
                                .await;
                        }
                        continue;
                    }
                    Outcome::NotStored(NotStored::Failed) => {
                        report.failed += 1;
                        "failed"
                    }
                    Outcome::NotStored(NotStored::Gone) => {
                        report.gone += 1;
                        "gone"
                    }
                    Outcome::NotStored(NotStored::TooLarge) => {
                        report.too_large += 1;
                        "too_large"
                    }
                    Outcome::Deferred => {
                        report.deferred += 1;
                        budget_spent = true;
                        continue;
                    }
                };
                if let Some(m) = &self.metrics {
                    m.attachment_downloaded(source.as_str(), label);
                }
            }
            drop(results);
            self.record_stored(source, &mut downloaded, &mut report)
                .await;
            if budget_spent {
                break 'batches;
            }
        }
        if let Some(m) = &self.metrics {
            m.attachment_bytes(source.as_str(), spent.load(Ordering::Relaxed));
        }
        Ok(report)
    }

    /// The source's staging directory, emptied of what a killed run left.
    fn staging_for(&self, source: &SourceName) -> anyhow::Result<PathBuf> {
        let dir = self.blobs.staging_dir().join(source.as_str());
        crate::files::create_private_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let entries =
            std::fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_file() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
            }
        }
        Ok(dir)
    }

    /// Download one attachment and record the outcome.
    async fn download(
        &self,
        source: &SourceName,
        connector: &dyn Connector,
        item: &DueAttachment,
        staging: &Path,
        spent: &AtomicU64,
    ) -> Outcome {
        if spent.load(Ordering::Relaxed) >= self.options.max_run_bytes {
            return Outcome::Deferred;
        }
        let result = match connector.media_request(&item.reference).await {
            Ok(request) => self.fetch_to_blob(&request, item, staging, spent).await,
            Err(ConnectorError::Permanent(why)) => Err(Failure::Permanent(why)),
            Err(ConnectorError::RateLimited { retry_after }) => Err(Failure::Retry(
                "upstream rate-limited the request for the file".into(),
                retry_after,
            )),
            Err(e) => Err(Failure::Retry(e.to_string(), None)),
        };
        match result {
            Ok((sha256, size)) => Outcome::Downloaded {
                key: item.key.clone(),
                sha256,
                size,
            },
            Err(failure) => self.record_failure(source, item, failure).await,
        }
    }

    /// Record downloaded files with their events, one transaction for the lot; a batch the
    /// store refuses leaves its rows due, and the next run finds the blobs already there.
    async fn record_stored(
        &self,
        source: &SourceName,
        batch: &mut Vec<(AttachmentKey, Sha256Hex, u64)>,
        report: &mut FetchReport,
    ) {
        if batch.is_empty() {
            return;
        }
        let outcome = match self.store.record_attachments_stored(source, batch).await {
            Ok(events) => {
                for ((_, _, size), event) in batch.iter().zip(events) {
                    if event.is_some() {
                        report.stored += 1;
                    }
                    report.bytes += size;
                }
                "stored"
            }
            Err(e) => {
                warn!(source = %source, files = batch.len(), error = %e,
                      "could not record stored attachments; they are retried next run");
                report.failed += batch.len() as u64;
                "failed"
            }
        };
        if let Some(m) = &self.metrics {
            for _ in batch.iter() {
                m.attachment_downloaded(source.as_str(), outcome);
            }
        }
        batch.clear();
    }

    /// Record a download that stored nothing: a retry later, or the end (`gone`,
    /// `too_large`, `failed`) once its attempts are spent.
    async fn record_failure(
        &self,
        source: &SourceName,
        item: &DueAttachment,
        failure: Failure,
    ) -> Outcome {
        let attempts = u32::try_from(item.attempts.max(0)).unwrap_or(0) + 1;
        let last = attempts >= self.options.max_attempts;
        let backoff = || {
            let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
            self.options
                .retry_base
                .saturating_mul(factor)
                .min(self.options.retry_cap)
        };
        let (outcome, error, retry_in) = match failure {
            Failure::TooLarge(why) => (NotStored::TooLarge, why, None),
            Failure::Permanent(why) => (NotStored::Failed, why, None),
            Failure::Gone(why) if last => (NotStored::Gone, why, None),
            Failure::Gone(why) => (NotStored::Failed, why, Some(backoff())),
            Failure::Retry(why, _) if last => (NotStored::Failed, why, None),
            Failure::Retry(why, after) => (
                NotStored::Failed,
                why,
                Some(after.map_or_else(backoff, |a| a.max(backoff()))),
            ),
        };
        // Connectors' texts too: no URL in it keeps its query string (signed URLs' secrets).
        let error = format!("{} (attempt {attempts})", without_queries(&error));
        if retry_in.is_none() {
            warn!(source = %source, conversation = %item.key.conversation_id,
                  message = %item.key.message_id, ordinal = item.key.ordinal,
                  url = %item.shown_url, status = ?outcome, error = %error,
                  "attachment not stored");
        }
        if let Err(e) = self
            .store
            .record_attachment_not_stored(source, &item.key, outcome, &error, retry_in)
            .await
        {
            warn!(source = %source, error = %e, "could not record a failed download");
        }
        Outcome::NotStored(outcome)
    }

    /// Send `request`, following redirects, and stream the body into a staged file,
    /// hashing it; then put the blob.
    async fn fetch_to_blob(
        &self,
        request: &MediaRequest,
        item: &DueAttachment,
        staging: &Path,
        spent: &AtomicU64,
    ) -> Result<(Sha256Hex, u64), Failure> {
        let response = self.follow(request).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(status_failure(status, response.url(), response.headers()));
        }
        let max = self.options.max_file_bytes;
        if let Some(length) = content_length(response.headers()) {
            if length > max {
                return Err(Failure::TooLarge(format!(
                    "{length} bytes, more than attachments.max_file_mb allows ({max} bytes)"
                )));
            }
        }

        let temp = crate::files::private_temp_file_in(staging, "dl-")
            .map_err(|e| Failure::Retry(format!("cannot create a staging file: {e}"), None))?;
        let std_file = temp
            .as_file()
            .try_clone()
            .map_err(|e| Failure::Retry(format!("cannot open the staging file: {e}"), None))?;
        let mut file = tokio::fs::File::from_std(std_file);
        let mut sha = Sha256::new();
        let mut md5 = item.reference.md5.as_ref().map(|_| Md5::new());
        let mut size: u64 = 0;
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                Failure::Retry(format!("download interrupted: {}", e.without_url()), None)
            })?;
            size += chunk.len() as u64;
            spent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if size > max {
                return Err(Failure::TooLarge(format!(
                    "more than attachments.max_file_mb allows ({max} bytes)"
                )));
            }
            sha.update(&chunk);
            if let Some(md5) = md5.as_mut() {
                md5.update(&chunk);
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| Failure::Retry(format!("cannot write the staging file: {e}"), None))?;
        }
        file.flush()
            .await
            .map_err(|e| Failure::Retry(format!("cannot write the staging file: {e}"), None))?;
        drop(file);
        if let (Some(want), Some(md5)) = (item.reference.md5.as_deref(), md5) {
            let got = hex::encode(md5.finalize());
            if !got.eq_ignore_ascii_case(want) {
                return Err(Failure::Retry(
                    format!("md5 mismatch: upstream declares {want}, the download has {got}"),
                    None,
                ));
            }
        }
        let sha256 = Sha256Hex::of_digest(&sha.finalize());
        let (_, path) = temp
            .keep()
            .map_err(|e| Failure::Retry(format!("cannot keep the staging file: {e}"), None))?;
        if let Err(e) = self.blobs.put(&path, &sha256).await {
            let _ = std::fs::remove_file(&path);
            return Err(Failure::Retry(
                format!("cannot store the file: {e:#}"),
                None,
            ));
        }
        Ok((sha256, size))
    }

    /// Send `request` and follow redirects (at most [`MAX_HOPS`]); credentials go only to
    /// the origin of `request.url`.
    async fn follow(&self, request: &MediaRequest) -> Result<reqwest::Response, Failure> {
        let origin = request.url.origin();
        let mut url = request.url.clone();
        for _ in 0..=MAX_HOPS {
            self.limit.wait().await;
            let mut builder = self.client.get(url.clone());
            for (name, value) in &request.headers {
                builder = builder.header(name, value);
            }
            if url.origin() == origin {
                for (name, value) in &request.credentials {
                    builder = builder.header(name, value);
                }
            }
            let response = builder.send().await.map_err(|e| {
                Failure::Retry(
                    format!(
                        "request to {} failed: {}",
                        shown_url(url.as_str()),
                        e.without_url()
                    ),
                    None,
                )
            })?;
            if !response.status().is_redirection() {
                return Ok(response);
            }
            let Some(location) = response
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
            else {
                return Ok(response);
            };
            let next = url.join(location).map_err(|_| {
                Failure::Permanent(format!(
                    "{} redirects to an invalid location",
                    shown_url(url.as_str())
                ))
            })?;
            if !matches!(next.scheme(), "http" | "https") {
                return Err(Failure::Permanent(format!(
                    "{} redirects to a {} URL",
                    shown_url(url.as_str()),
                    next.scheme()
                )));
            }
            url = next;
        }
        Err(Failure::Permanent(format!(
            "more than {MAX_HOPS} redirects from {}",
            shown_url(request.url.as_str())
        )))
    }
}

/// `text` with every http(s) URL in it shown without credentials or query string.
fn without_queries(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest
        .find("http://")
        .into_iter()
        .chain(rest.find("https://"))
        .min()
    {
        out.push_str(&rest[..at]);
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | '>' | ','))
            .map_or(rest.len(), |e| at + e);
        out.push_str(&shown_url(&rest[at..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// What an HTTP status other than success means for a download.
fn status_failure(status: StatusCode, url: &reqwest::Url, headers: &HeaderMap) -> Failure {
    let shown = shown_url(url.as_str());
    let signed = url.query().is_some_and(|q| !q.is_empty());
    match status {
        StatusCode::NOT_FOUND | StatusCode::GONE => {
            Failure::Gone(format!("{shown} answered {status}"))
        }
        StatusCode::FORBIDDEN if signed => Failure::Gone(format!(
            "{shown} answered {status} (a signed URL that expired)"
        )),
        StatusCode::TOO_MANY_REQUESTS => {
            let after = headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(24 * 3600)));
            Failure::Retry(format!("{shown} answered {status}"), after)
        }
        s if s.is_redirection() => {
            Failure::Permanent(format!("{shown} answered {status} without a location"))
        }
        s => Failure::Retry(format!("{shown} answered {s}"), None),
    }
}

/// Requests spaced evenly: at most `per_second` a second, whoever asks.
struct RateLimit {
    interval: Duration,
    next: tokio::sync::Mutex<tokio::time::Instant>,
}

impl RateLimit {
    fn new(per_second: f64) -> Self {
        let interval = if per_second.is_finite() && per_second > 0.0 {
            Duration::from_secs_f64(1.0 / per_second)
        } else {
            Duration::ZERO
        };
        RateLimit {
            interval,
            next: tokio::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    async fn wait(&self) {
        if self.interval.is_zero() {
            return;
        }
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(tokio::time::Instant::now());
            *next = at + self.interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// Open the blob store `[attachments]` configures (its directory, or its bucket with
/// staging under the data directory).
pub fn open_blob_store(config: &crate::config::Config) -> anyhow::Result<Arc<BlobStore>> {
    BlobStore::from_config(&config.attachments, &config.storage.data_dir).map(Arc::new)
}

/// What the daemon and `chatvault sync` need to fetch attachments after a sync: the
/// `[attachments]` settings and the opened blob store.
#[derive(Clone)]
pub struct AttachmentsRun {
    pub config: AttachmentsConfig,
    pub blobs: Arc<BlobStore>,
    /// Where connectors keep login sessions (as for the sync).
    pub session_dir: Option<PathBuf>,
    pub metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for AttachmentsRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachmentsRun")
            .field("store", &self.blobs.describe())
            .finish_non_exhaustive()
    }
}

impl AttachmentsRun {
    /// From the configuration. With `attachments.enabled = false` its runs record what
    /// messages reference and download nothing.
    pub fn from_config(
        config: &crate::config::Config,
        metrics: Option<Arc<Metrics>>,
    ) -> anyhow::Result<Option<Self>> {
        Ok(Some(AttachmentsRun {
            config: config.attachments.clone(),
            blobs: open_blob_store(config)?,
            session_dir: Some(crate::sync::session_dir(&config.storage.data_dir)),
            metrics,
        }))
    }

    /// One fetcher run for `source` (see [`fetch_source`]).
    pub async fn fetch(
        &self,
        store: &Store,
        source: &SourceConfig,
        progress: Option<Arc<ProgressFn>>,
        shutdown: Option<watch::Receiver<bool>>,
    ) -> anyhow::Result<FetchReport> {
        fetch_source(
            store,
            source,
            &self.config,
            self.blobs.clone(),
            self.session_dir.as_deref(),
            self.metrics.clone(),
            progress,
            shutdown,
        )
        .await
    }
}

/// After a purge committed: remove the blobs among `sha256` that no attachment names any
/// more. Returns how many were removed.
pub async fn remove_unreferenced_blobs(
    store: &Store,
    blobs: &BlobStore,
    sha256: &[String],
) -> anyhow::Result<u64> {
    if sha256.is_empty() {
        return Ok(0);
    }
    let still: std::collections::HashSet<String> = store
        .attachment_blobs_referenced(sha256)
        .await?
        .into_iter()
        .collect();
    let mut removed = 0;
    let mut seen = std::collections::HashSet::new();
    for sha in sha256 {
        if still.contains(sha) || !seen.insert(sha) {
            continue;
        }
        let Ok(sha) = Sha256Hex::parse(sha) else {
            continue;
        };
        if blobs.remove(&sha).await? {
            removed += 1;
        }
    }
    Ok(removed)
}

/// One run of the fetcher for a configured source: its own lock (so two runs never overlap
/// for a source, and the sync is never held up), a connector built as the sync builds it,
/// then [`Fetcher::run`]. Failures are logged once here and returned.
#[allow(clippy::too_many_arguments)]
pub async fn fetch_source(
    store: &Store,
    source: &SourceConfig,
    config: &AttachmentsConfig,
    blobs: Arc<BlobStore>,
    session_dir: Option<&Path>,
    metrics: Option<Arc<Metrics>>,
    progress: Option<Arc<ProgressFn>>,
    shutdown: Option<watch::Receiver<bool>>,
) -> anyhow::Result<FetchReport> {
    let result = async {
        let Some(lock) = store
            .try_lock_attachments(&source.name, Duration::from_secs(5))
            .await?
        else {
            return Ok(FetchReport {
                skipped: true,
                ..FetchReport::default()
            });
        };
        let run = async {
            let http = HttpClient::new(source.requests_per_second, source.request_timeout)?;
            let connector = connector::build(source, http, session_dir)?;
            let fetcher = Fetcher::new(store.clone(), blobs, FetchOptions::from_config(config))?
                .with_metrics(metrics.clone())
                .with_progress(progress);
            fetcher
                .run(&source.name, connector.as_ref(), shutdown)
                .await
        }
        .await;
        if let Some(m) = &metrics {
            if let (Ok(counts), Ok(queue)) = (
                store.attachment_counts().await,
                store.attachment_queue(&config.kinds).await,
            ) {
                m.set_attachment_status(&counts, &queue);
            }
        }
        lock.release().await;
        run
    }
    .await;
    match &result {
        Ok(r) if !r.skipped => info!(
            source = %source.name, stored = r.stored, bytes = r.bytes, failed = r.failed,
            gone = r.gone, too_large = r.too_large, deferred = r.deferred,
            "attachments fetched"
        ),
        Ok(_) => {
            info!(source = %source.name, "attachments skipped: another process is fetching them")
        }
        Err(e) => {
            warn!(source = %source.name, error = %format!("{e:#}"), "attachments not fetched")
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified() {
        let url = reqwest::Url::parse("https://cdn.example/a.png?sig=SECRET").unwrap();
        let h = HeaderMap::new();
        assert!(matches!(
            status_failure(StatusCode::NOT_FOUND, &url, &h),
            Failure::Gone(_)
        ));
        assert!(matches!(
            status_failure(StatusCode::FORBIDDEN, &url, &h),
            Failure::Gone(_)
        ));
        let plain = reqwest::Url::parse("https://cdn.example/a.png").unwrap();
        assert!(matches!(
            status_failure(StatusCode::FORBIDDEN, &plain, &h),
            Failure::Retry(..)
        ));
        let mut h429 = HeaderMap::new();
        h429.insert(RETRY_AFTER, "7".parse().unwrap());
        match status_failure(StatusCode::TOO_MANY_REQUESTS, &url, &h429) {
            Failure::Retry(why, after) => {
                assert_eq!(after, Some(Duration::from_secs(7)));
                assert!(!why.contains("SECRET"), "{why}");
            }
            _ => panic!("429 is retried"),
        }
    }

    #[test]
    fn error_texts_lose_query_strings() {
        assert_eq!(
            without_queries(
                "GET https://u:p@cdn.example/a.png?sig=SECRET failed (see http://x/y?t=SECRET2), ok"
            ),
            "GET https://cdn.example/a.png failed (see http://x/y), ok"
        );
        assert_eq!(without_queries("no url here"), "no url here");
    }

    #[tokio::test]
    async fn the_rate_limit_spaces_requests() {
        let limit = RateLimit::new(20.0);
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            limit.wait().await;
        }
        // 5 requests at 20/s: the 5th goes 200 ms after the 1st.
        assert!(
            start.elapsed() >= Duration::from_millis(190),
            "{:?}",
            start.elapsed()
        );
    }
}
