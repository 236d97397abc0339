//! Attachment fetcher benchmark: N files of a few KB (default 10,000), referenced ten to a
//! message, served by a media server on 127.0.0.1, through the fetcher (scan, download,
//! sha256, staging, the directory blob store, the row and its `attachment_stored` event per
//! file) with the default concurrency and no rate limit.
//!
//! Run: `cargo bench --bench attachments` (`CHATVAULT_BENCH_FILES=500` for a quick run,
//! `CHATVAULT_BENCH_CONCURRENCY` to change the downloads in flight, default 4).
//! Prints files/s, MB/s and this process's peak RSS, and beside them a baseline from the same
//! run: the same files fetched with a plain HTTP client, as many in flight, each written to
//! its own file and synced (no hashing, no database), and the fetcher's rate as a share of it.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use chrono::DateTime;
use serde_json::json;

use chatvault::attachments::blob::BlobStore;
use chatvault::attachments::fetcher::{FetchOptions, Fetcher};
use chatvault::attachments::{AttachmentKind, AttachmentRef};
use chatvault::connector::{
    Connector, ConnectorError, DiscoverRequest, Discovery, FetchRequest, Fetched, Probe,
};
use chatvault::model::{
    Content, ConversationObservation, ConversationType, Cursor, MessageHeader, MessageKind,
    MessageObservation, Page, Platform, SourceName,
};
use chatvault::store::Store;
use support::{env_usize, peak_rss_mb};

const PER_MESSAGE: usize = 10;

/// References are `content.files`, a list of URLs; downloads are plain GETs.
struct FilesConnector;

#[async_trait]
impl Connector for FilesConnector {
    fn platform(&self) -> Platform {
        Platform::Tangsengdaodao
    }
    async fn login(&self) -> Result<(), ConnectorError> {
        Ok(())
    }
    async fn discover(&self, _: DiscoverRequest<'_>) -> Result<Discovery, ConnectorError> {
        Err(ConnectorError::Permanent("not used".into()))
    }
    fn feeds(&self, _: &ConversationObservation) -> Vec<&'static str> {
        Vec::new()
    }
    async fn fetch(&self, _: FetchRequest<'_>) -> Result<Fetched, ConnectorError> {
        Err(ConnectorError::Permanent("not used".into()))
    }
    async fn probe(&self, _: bool) -> Result<Probe, ConnectorError> {
        Err(ConnectorError::Permanent("not used".into()))
    }
    fn attachments(&self, content: &Content) -> Vec<AttachmentRef> {
        content.content["files"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| Some(AttachmentRef::new(AttachmentKind::Image, u.as_str()?)))
            .collect()
    }
}

/// File `i`: 2 to 6 KB, different for every `i`.
fn file_bytes(i: usize) -> Vec<u8> {
    let len = 2048 + (i * 7919) % 4096;
    let seed = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..len)
        .map(|j| (seed.rotate_left((j % 64) as u32) as u8) ^ (j as u8))
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let total = env_usize("CHATVAULT_BENCH_FILES", 10_000);
    let concurrency = env_usize("CHATVAULT_BENCH_CONCURRENCY", 4);
    let (options, _db) = chatvault::pg::testing::fresh_database().await;
    let store = Store::connect(options, 8).await?;
    store.migrate().await?;
    let source = SourceName::new("bench");
    store
        .register_source(&source, Platform::Tangsengdaodao)
        .await?;

    let router = Router::new().route(
        "/f/{i}",
        get(|Path(i): Path<usize>| async move { file_bytes(i) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });

    // The archive: one conversation, PER_MESSAGE files per message, pages of 500 messages.
    let messages = total.div_ceil(PER_MESSAGE);
    let mut cursor: Option<i64> = None;
    for chunk in (0..messages).collect::<Vec<_>>().chunks(500) {
        let to = *chunk.last().unwrap() as i64 + 1;
        let mut p = Page::new(
            "bench/g1",
            cursor.map(|c| Cursor(json!({"v": 1, "n": c}))),
            Cursor(json!({"v": 1, "n": to})),
        );
        if cursor.is_none() {
            p.conversations.push(ConversationObservation {
                conversation_id: "g1".into(),
                conversation_type: ConversationType::Group,
                name: Some("bench".into()),
                metadata: json!({}),
            });
        }
        for &m in chunk {
            let files: Vec<String> = (m * PER_MESSAGE..((m + 1) * PER_MESSAGE).min(total))
                .map(|i| format!("{base}/f/{i}"))
                .collect();
            p.messages.push(MessageObservation {
                conversation_id: "g1".into(),
                message_id: format!("m{m}"),
                header: Some(MessageHeader {
                    seq: Some(m as i64 + 1),
                    sender_id: Some("u1".into()),
                    sender_name: None,
                    sent_at: DateTime::from_timestamp(1_750_000_000 + m as i64, 0).unwrap(),
                    reply_to: None,
                }),
                content: Some(Content {
                    kind: MessageKind::Image,
                    text: String::new(),
                    content: json!({"files": files}),
                }),
                edited_at: None,
                earlier_versions: vec![],
                recalled: None,
                deleted: None,
                reactions: None,
                raw: json!({"m": m}),
            });
        }
        store.apply_page(&source, &p).await?;
        cursor = Some(to);
    }
    println!(
        "attachments benchmark: {total} files of 2-6 KB in {messages} messages, {concurrency} in flight"
    );

    let dir = tempfile::tempdir()?;
    let blobs = Arc::new(BlobStore::in_directory(dir.path())?);
    let fetcher = Fetcher::new(
        store.clone(),
        blobs,
        FetchOptions {
            download: true,
            kinds: AttachmentKind::ALL.to_vec(),
            max_file_bytes: 1 << 20,
            max_run_bytes: u64::MAX,
            requests_per_second: 0.0,
            concurrency,
            max_attempts: 5,
            request_timeout: Duration::from_secs(30),
            retry_base: Duration::from_secs(60),
            retry_cap: Duration::from_secs(3600),
            scan_batch: 1000,
            claim_batch: 500,
        },
    )?;
    let baseline = baseline(&base, total, concurrency).await?;
    let t = Instant::now();
    let report = fetcher.run(&source, &FilesConnector, None).await?;
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(report.stored as usize, total, "{report:?}");
    println!(
        "fetched {} files, {:.1} MB in {secs:.2} s: {:.0} files/s, {:.2} MB/s; peak RSS {:.0} MB",
        report.stored,
        report.bytes as f64 / 1e6,
        report.stored as f64 / secs,
        report.bytes as f64 / 1e6 / secs,
        peak_rss_mb()
    );
    let rate = report.stored as f64 / secs;
    println!(
        "baseline (plain GET + write + fsync, {concurrency} in flight): {baseline:.0} files/s; \
         fetcher / baseline = {:.2}",
        rate / baseline
    );
    Ok(())
}

/// Files per second for the same downloads without the fetcher: a plain client,
/// `concurrency` in flight, each body written to its own file and synced.
async fn baseline(base: &str, total: usize, concurrency: usize) -> anyhow::Result<f64> {
    use futures::StreamExt;
    let dir = tempfile::tempdir()?;
    let client = reqwest::Client::new();
    let t = Instant::now();
    let mut downloads = futures::stream::iter(0..total)
        .map(|i| {
            let client = client.clone();
            let url = format!("{base}/f/{i}");
            let path = dir.path().join(i.to_string());
            async move {
                let body = client.get(url).send().await?.bytes().await?;
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    let mut file = std::fs::File::create(path)?;
                    std::io::Write::write_all(&mut file, &body)?;
                    file.sync_all()
                })
                .await??;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some(done) = downloads.next().await {
        done?;
    }
    Ok(total as f64 / t.elapsed().as_secs_f64())
}
