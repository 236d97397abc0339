//! Attachments against a real PostgreSQL and a media server on 127.0.0.1: the scan records
//! what versions reference (ordinals stable across edits, skipped kinds due again when
//! chosen), the fetcher stores each file once under its sha256 with its event in the chain,
//! never sends credentials to another origin, ends 404s `gone` after their retries, refuses
//! files past the size cap, checks upstream md5s, leaves no partial blob when killed, and
//! `verify --attachments` catches a blob altered on disk while plain `verify` still passes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use md5::Md5;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use chatvault::attachments::blob::{BlobStore, Sha256Hex};
use chatvault::attachments::check::check_blobs;
use chatvault::attachments::fetcher::{FetchOptions, Fetcher};
use chatvault::attachments::{AttachmentKind, AttachmentRef, MediaRequest};
use chatvault::connector::{
    Connector, ConnectorError, DiscoverRequest, Discovery, FetchRequest, Fetched, Probe,
};
use chatvault::model::{
    Content, ConversationObservation, MessageKind, MessageObservation, Platform, SourceName,
};
use chatvault::store::attachments::ATTACHMENT_STORED;
use chatvault::store::Store;

use crate::common::{conversation, count, message, page, store};

const TOKEN: &str = "Bearer media-secret-token";

// ---------------------------------------------------------------------------------------
// A connector whose messages list their files in `content.files`, and a media server.

/// `attachments` reads `content.files` (`[{"kind", "url", "md5"?}]`); `media_request` asks
/// for the URL with a test header and the credentials `TOKEN`.
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
        let Some(files) = content.content["files"].as_array() else {
            return Vec::new();
        };
        files
            .iter()
            .filter_map(|f| {
                let kind = AttachmentKind::parse(f["kind"].as_str()?)?;
                let mut r = AttachmentRef::new(kind, f["url"].as_str()?);
                r.md5 = f["md5"].as_str().map(str::to_string);
                r.name = f["name"].as_str().map(str::to_string);
                Some(r)
            })
            .collect()
    }
    async fn media_request(&self, r: &AttachmentRef) -> Result<MediaRequest, ConnectorError> {
        let mut request =
            MediaRequest::get(&r.url).map_err(|e| ConnectorError::Permanent(e.to_string()))?;
        request
            .headers
            .push((header::REFERER, "https://chat.example/".parse().unwrap()));
        request
            .credentials
            .push((header::AUTHORIZATION, TOKEN.parse().unwrap()));
        Ok(request)
    }
}

#[derive(Default)]
struct Media {
    files: HashMap<String, Vec<u8>>,
    /// `/stall/{name}`: the first request sends half and then nothing.
    stall_once: AtomicBool,
    stalled: AtomicBool,
    /// Requests per path.
    requests: Mutex<BTreeMap<String, u64>>,
    /// Requests that carried `Authorization` (on the second origin: must stay 0).
    with_credentials: AtomicU64,
    /// The second origin (for cross-origin redirects).
    other: Mutex<Option<String>>,
}

type Shared = Arc<Media>;

fn count_request(m: &Media, path: String, headers: &HeaderMap) {
    *m.requests.lock().unwrap().entry(path).or_default() += 1;
    if headers.contains_key(header::AUTHORIZATION) {
        m.with_credentials.fetch_add(1, Ordering::SeqCst);
    }
}

fn bytes_of(m: &Media, name: &str) -> Response {
    match m.files.get(name) {
        Some(b) => (StatusCode::OK, b.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The origin that wants credentials: `/f/{name}` answers 401 without them.
async fn file(State(m): State<Shared>, UrlPath(name): UrlPath<String>, h: HeaderMap) -> Response {
    count_request(&m, format!("/f/{name}"), &h);
    if h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(TOKEN) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    bytes_of(&m, &name)
}

/// A 302 to the same file on the other origin.
async fn away(State(m): State<Shared>, UrlPath(name): UrlPath<String>, h: HeaderMap) -> Response {
    count_request(&m, format!("/away/{name}"), &h);
    let other = m.other.lock().unwrap().clone().unwrap();
    (
        StatusCode::FOUND,
        [(
            header::LOCATION,
            format!("{other}/o/{name}?X-Signature=abc"),
        )],
    )
        .into_response()
}

/// A 302 to `/f/{name}` on this origin (which needs the credentials).
async fn here(State(m): State<Shared>, UrlPath(name): UrlPath<String>, h: HeaderMap) -> Response {
    count_request(&m, format!("/here/{name}"), &h);
    (
        StatusCode::FOUND,
        [(header::LOCATION, format!("/f/{name}"))],
    )
        .into_response()
}

/// A redirect to itself, forever.
async fn circle(State(m): State<Shared>, h: HeaderMap) -> Response {
    count_request(&m, "/circle".into(), &h);
    (StatusCode::FOUND, [(header::LOCATION, "/circle")]).into_response()
}

/// The first request sends half of the file and stalls; later ones send it all.
async fn stall(State(m): State<Shared>, UrlPath(name): UrlPath<String>, h: HeaderMap) -> Response {
    count_request(&m, format!("/stall/{name}"), &h);
    let bytes = m.files.get(&name).cloned().unwrap_or_default();
    if m.stall_once.swap(false, Ordering::SeqCst) {
        let half = bytes::Bytes::from(bytes[..bytes.len() / 2].to_vec());
        m.stalled.store(true, Ordering::SeqCst);
        let stream = futures::stream::once(async move { Ok::<_, std::io::Error>(half) })
            .chain(futures::stream::pending());
        return Response::new(Body::from_stream(stream));
    }
    (StatusCode::OK, bytes).into_response()
}

/// The file streamed without a Content-Length.
async fn chunked(
    State(m): State<Shared>,
    UrlPath(name): UrlPath<String>,
    h: HeaderMap,
) -> Response {
    count_request(&m, format!("/chunked/{name}"), &h);
    let bytes = m.files.get(&name).cloned().unwrap_or_default();
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = bytes
        .chunks(1000)
        .map(|c| Ok(bytes::Bytes::from(c.to_vec())))
        .collect();
    Response::new(Body::from_stream(futures::stream::iter(chunks)))
}

/// The other origin: serves `/o/{name}` to anyone (and counts credentials it should never see).
async fn other_file(
    State(m): State<Shared>,
    UrlPath(name): UrlPath<String>,
    h: HeaderMap,
) -> Response {
    count_request(&m, format!("/o/{name}"), &h);
    bytes_of(&m, &name)
}

use futures::StreamExt;

/// The media server (two origins) with `files`; returns it and the base URL of the first.
async fn media_server(files: &[(&str, Vec<u8>)]) -> (Shared, String) {
    let media = Arc::new(Media {
        files: files
            .iter()
            .map(|(n, b)| (n.to_string(), b.clone()))
            .collect(),
        ..Media::default()
    });
    let main = Router::new()
        .route("/f/{name}", get(file))
        .route("/away/{name}", get(away))
        .route("/here/{name}", get(here))
        .route("/circle", get(circle))
        .route("/stall/{name}", get(stall))
        .route("/chunked/{name}", get(chunked))
        .with_state(media.clone());
    let other = Router::new()
        .route("/o/{name}", get(other_file))
        .with_state(media.clone());
    let base = serve(main).await;
    *media.other.lock().unwrap() = Some(serve(other).await);
    (media, base)
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------------------
// Helpers

fn with_files(conv: &str, id: &str, seq: i64, files: Value) -> MessageObservation {
    let mut m = message(conv, id, seq, &format!("message {id}"));
    m.content = Some(Content {
        kind: MessageKind::File,
        text: format!("message {id}"),
        content: json!({"text": format!("message {id}"), "files": files.clone()}),
    });
    m.raw = json!({"message_idstr": id, "files": files});
    m
}

/// Messages `m1`, `m2`, ... in `g1` (seq 1, 2, ...), each naming one file `(kind, url)`.
fn one_file_each(files: &[(&str, String)]) -> Vec<MessageObservation> {
    files
        .iter()
        .enumerate()
        .map(|(i, (kind, url))| {
            let n = i as i64 + 1;
            with_files(
                "g1",
                &format!("m{n}"),
                n,
                json!([{"kind": kind, "url": url}]),
            )
        })
        .collect()
}

/// Archive `messages` in conversation `g1` as one page from cursor `from` to `to`.
async fn archive(
    store: &Store,
    src: &SourceName,
    from: Option<i64>,
    to: i64,
    messages: Vec<MessageObservation>,
) {
    let mut p = page("m/g1", from, to, messages);
    p.conversations.push(conversation("g1"));
    store.apply_page(src, &p).await.unwrap();
}

fn options() -> FetchOptions {
    FetchOptions {
        download: true,
        kinds: AttachmentKind::ALL.to_vec(),
        max_file_bytes: 1 << 20,
        max_run_bytes: 1 << 30,
        requests_per_second: 1000.0,
        concurrency: 4,
        max_attempts: 3,
        request_timeout: Duration::from_secs(10),
        retry_base: Duration::ZERO,
        retry_cap: Duration::ZERO,
        scan_batch: 2,
        claim_batch: 2,
    }
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn blob_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(shards) = std::fs::read_dir(dir.join("blobs")) else {
        return out;
    };
    for shard in shards.flatten() {
        for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
            out.push(f.path());
        }
    }
    out.sort();
    out
}

/// `(conversation/message/ordinal, status)` of every row.
async fn statuses(store: &Store) -> BTreeMap<String, String> {
    let rows: Vec<(String, String, i32, String)> = sqlx::query_as(
        "SELECT conversation_id, message_id, ordinal, status FROM archive.attachments",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    rows.into_iter()
        .map(|(c, m, o, s)| (format!("{c}/{m}/{o}"), s))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The scan

#[tokio::test]
async fn the_scan_records_references_with_ordinals_kept_across_edits() {
    let (store, src) = store().await;
    let conn = FilesConnector;
    archive(
        &store,
        &src,
        None,
        2,
        vec![
            with_files(
                "g1",
                "m1",
                1,
                json!([{"kind": "image", "url": "https://cdn.example/a.png?sig=SECRET"},
                       {"kind": "voice", "url": "https://cdn.example/v.amr"}]),
            ),
            with_files("g1", "m2", 2, json!([])),
        ],
    )
    .await;
    let image_only = [AttachmentKind::Image];
    let mut batches = 0;
    loop {
        let b = store
            .scan_attachments(&src, &image_only, 2, |c| conn.attachments(c))
            .await
            .unwrap();
        batches += 1;
        if b.done {
            break;
        }
        assert!(batches < 50, "the scan does not end");
    }
    let head = store.chain_heads().await.unwrap()["s"];
    assert_eq!(store.attachment_scan_position(&src).await.unwrap(), head);
    let got = statuses(&store).await;
    assert_eq!(got["g1/m1/0"], "pending");
    assert_eq!(got["g1/m1/1"], "skipped", "voice is not among the kinds");
    assert_eq!(got.len(), 2);
    let shown: String =
        sqlx::query_scalar("SELECT upstream_url FROM archive.attachments WHERE ordinal = 0")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(
        shown, "https://cdn.example/a.png",
        "no query string in the view"
    );

    // An edit that drops the voice, keeps the image and adds a file: the image keeps 0, the
    // voice keeps its row, the file takes 2.
    archive(
        &store,
        &src,
        Some(2),
        3,
        vec![with_files(
            "g1",
            "m1",
            1,
            json!([{"kind": "file", "url": "https://cdn.example/doc.pdf"},
                   {"kind": "image", "url": "https://cdn.example/a.png?sig=SECRET"}]),
        )],
    )
    .await;
    // (scanned while every kind is fetched: the new file is pending)
    let b = store
        .scan_attachments(&src, &AttachmentKind::ALL, 100, |c| conn.attachments(c))
        .await
        .unwrap();
    assert!(b.done);
    assert_eq!((b.versions, b.added), (1, 1), "{b:?}");
    let ordinal_of = |url: &'static str| {
        let pool = store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i32>(
                "SELECT ordinal FROM vault.attachments WHERE upstream_url = $1",
            )
            .bind(url)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(ordinal_of("https://cdn.example/a.png?sig=SECRET").await, 0);
    assert_eq!(ordinal_of("https://cdn.example/v.amr").await, 1);
    assert_eq!(ordinal_of("https://cdn.example/doc.pdf").await, 2);

    // Scanning again finds nothing new.
    let b = store
        .scan_attachments(&src, &image_only, 100, |c| conn.attachments(c))
        .await
        .unwrap();
    assert_eq!((b.events, b.added), (0, 0));

    // While only images are fetched, only the image is due, and the pending file becomes
    // skipped; once every kind is chosen, the skipped voice and file are due again.
    let due = store
        .due_attachments(&src, &image_only, None, 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].reference.url, "https://cdn.example/a.png?sig=SECRET");
    assert_eq!(
        store
            .skip_attachment_kinds(&src, &image_only)
            .await
            .unwrap(),
        1,
        "the pending file becomes skipped"
    );
    let all = store
        .due_attachments(&src, &AttachmentKind::ALL, None, 10)
        .await
        .unwrap();
    assert_eq!(all.len(), 3, "skipped kinds are due again once chosen");
    // Keyset paging: after the first, the next two.
    let rest = store
        .due_attachments(&src, &AttachmentKind::ALL, Some(&all[0].key), 10)
        .await
        .unwrap();
    assert_eq!(rest.len(), 2);
}

// ---------------------------------------------------------------------------------------
// The fetcher

#[tokio::test]
async fn every_attachment_is_stored_once_with_its_sha256_and_its_event() {
    let (store, src) = store().await;
    let a = b"the picture a".repeat(500);
    let b = b"binary b".to_vec();
    let c = b"on the object store".to_vec();
    let d = b"behind a same-origin redirect".to_vec();
    let (media, base) = media_server(&[
        ("a.png", a.clone()),
        ("b.bin", b.clone()),
        ("c.jpg", c.clone()),
        ("d.txt", d.clone()),
    ])
    .await;
    archive(
        &store,
        &src,
        None,
        3,
        vec![
            with_files(
                "g1",
                "m1",
                1,
                json!([{"kind": "image", "url": format!("{base}/f/a.png")},
                       {"kind": "file", "url": format!("{base}/f/b.bin"),
                        "md5": hex::encode(Md5::digest(&b))}]),
            ),
            // the same file in another message: a row of its own, one blob
            with_files(
                "g1",
                "m2",
                2,
                json!([{"kind": "image", "url": format!("{base}/f/a.png")}]),
            ),
            with_files(
                "g1",
                "m3",
                3,
                json!([{"kind": "image", "url": format!("{base}/away/c.jpg")},
                       {"kind": "file", "url": format!("{base}/here/d.txt")}]),
            ),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let blobs = Arc::new(BlobStore::in_directory(dir.path()).unwrap());
    let metrics = chatvault::metrics::Metrics::new();
    let fetcher = Fetcher::new(store.clone(), blobs.clone(), options())
        .unwrap()
        .with_metrics(Some(metrics.clone()));
    let report = fetcher.run(&src, &FilesConnector, None).await.unwrap();
    assert_eq!(report.stored, 5, "{report:?}");
    assert_eq!((report.failed, report.gone, report.too_large), (0, 0, 0));
    assert!(statuses(&store).await.values().all(|s| s == "stored"));

    let rows: Vec<(String, i32, String, i64)> = sqlx::query_as(
        "SELECT message_id, ordinal, sha256, size FROM archive.attachments ORDER BY 1, 2",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let want = [
        ("m1", 0, sha(&a), a.len()),
        ("m1", 1, sha(&b), b.len()),
        ("m2", 0, sha(&a), a.len()),
        ("m3", 0, sha(&c), c.len()),
        ("m3", 1, sha(&d), d.len()),
    ];
    assert_eq!(rows.len(), want.len());
    for (row, want) in rows.iter().zip(want) {
        assert_eq!(
            (row.0.as_str(), row.1, row.2.as_str(), row.3),
            (want.0, want.1, want.2.as_str(), want.3 as i64)
        );
    }
    // Four distinct files on disk, each once, each with the bytes its name says.
    let on_disk = blob_files(dir.path());
    assert_eq!(on_disk.len(), 4, "{on_disk:?}");
    for path in &on_disk {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(path.file_name().unwrap().to_str().unwrap(), sha(&bytes));
    }

    // Each stored file is an event with the agreed detail; the chain still verifies.
    let events: Vec<(String, Value)> = sqlx::query_as(
        "SELECT message_id, detail FROM archive.events WHERE kind = $1 ORDER BY event_seq",
    )
    .bind(ATTACHMENT_STORED)
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(events.len(), 5);
    let c_event = events
        .iter()
        .find(|(m, d)| m == "m3" && d["ordinal"] == 0)
        .unwrap();
    assert_eq!(
        c_event.1,
        json!({"ordinal": 0, "kind": "image", "sha256": sha(&c), "size": c.len(),
               "url": format!("{base}/away/c.jpg")})
    );
    let report = store.verify(&[]).await.unwrap();
    assert!(report.ok(), "{:?}", report.failures);
    let check = check_blobs(&store, &blobs, None).await.unwrap();
    assert!(check.ok(), "{:?}", check.problems);
    assert_eq!(check.checked, 5);

    // Credentials went to the first origin (the same-origin redirect needed them) and never
    // to the other one; the Referer went everywhere.
    let requests = media.requests.lock().unwrap().clone();
    assert_eq!(requests.get("/o/c.jpg"), Some(&1));
    assert_eq!(requests.get("/f/d.txt"), Some(&1), "{requests:?}");
    let with_credentials = media.with_credentials.load(Ordering::SeqCst);
    // /f/a.png twice, /f/b.bin, /away/c.jpg, /here/d.txt, /f/d.txt: 6 on the first origin
    assert_eq!(with_credentials, 6, "{requests:?}");

    // Nothing is due any more; a second run downloads nothing.
    let again = fetcher.run(&src, &FilesConnector, None).await.unwrap();
    assert_eq!(again.stored + again.failed, 0, "{again:?}");

    let text = metrics.render();
    assert!(
        text.contains("chatvault_attachment_downloads_total{outcome=\"stored\",source=\"s\"} 5"),
        "{text}"
    );
    assert!(text.contains("chatvault_attachment_bytes_total{source=\"s\"}"));
}

#[tokio::test]
async fn a_missing_file_ends_gone_after_its_retries_while_the_others_are_stored() {
    let (store, src) = store().await;
    let (media, base) = media_server(&[("ok.png", b"fine".to_vec())]).await;
    archive(
        &store,
        &src,
        None,
        2,
        vec![
            with_files(
                "g1",
                "m1",
                1,
                json!([{"kind": "image", "url": format!("{base}/f/missing.png?token=SECRET")}]),
            ),
            with_files(
                "g1",
                "m2",
                2,
                json!([{"kind": "image", "url": format!("{base}/f/ok.png")},
                       {"kind": "file", "url": format!("{base}/circle")},
                       {"kind": "file", "url": "ftp://elsewhere.example/x"}]),
            ),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let blobs = Arc::new(BlobStore::in_directory(dir.path()).unwrap());
    let fetcher = Fetcher::new(store.clone(), blobs, options()).unwrap();

    let first = fetcher.run(&src, &FilesConnector, None).await.unwrap();
    assert_eq!(first.stored, 1);
    let got = statuses(&store).await;
    assert_eq!(got["g1/m1/0"], "failed", "retried before it is given up");
    assert_eq!(got["g1/m2/0"], "stored");
    assert_eq!(
        got["g1/m2/1"], "failed",
        "a redirect loop is given up at once"
    );
    assert_eq!(got["g1/m2/2"], "failed", "not an http URL");
    let (next, error): (Option<chrono::DateTime<chrono::Utc>>, String) = sqlx::query_as(
        "SELECT next_attempt_at, error FROM vault.attachments WHERE message_id = 'm2' AND ordinal = 1",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert!(next.is_none(), "not retried");
    assert!(error.contains("redirects"), "{error}");

    fetcher.run(&src, &FilesConnector, None).await.unwrap();
    assert_eq!(statuses(&store).await["g1/m1/0"], "failed");
    let third = fetcher.run(&src, &FilesConnector, None).await.unwrap();
    assert_eq!(third.gone, 1);
    assert_eq!(statuses(&store).await["g1/m1/0"], "gone");
    let (attempts, error): (i32, String) =
        sqlx::query_as("SELECT attempts, error FROM vault.attachments WHERE message_id = 'm1'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(attempts, 3);
    assert!(error.contains("404"), "{error}");
    assert!(
        !error.contains("SECRET"),
        "no query string in errors: {error}"
    );
    let leaked = count(
        &store,
        "SELECT count(*) FROM vault.attachments WHERE error LIKE '%SECRET%'",
    )
    .await;
    assert_eq!(leaked, 0);
    // Three attempts at the missing file, then no more.
    fetcher.run(&src, &FilesConnector, None).await.unwrap();
    let requests = media.requests.lock().unwrap().clone();
    assert_eq!(requests.get("/f/missing.png"), Some(&3), "{requests:?}");
    assert!(
        requests.get("/circle").copied().unwrap_or(0) <= 6,
        "at most 5 redirects followed: {requests:?}"
    );
}

#[tokio::test]
async fn files_past_the_size_cap_are_too_large_and_md5s_are_checked() {
    let (store, src) = store().await;
    let big = vec![7u8; 5000];
    let small = b"small".to_vec();
    let (_media, base) =
        media_server(&[("big.bin", big.clone()), ("small.bin", small.clone())]).await;
    archive(
        &store,
        &src,
        None,
        1,
        vec![with_files(
            "g1",
            "m1",
            1,
            json!([
                // Content-Length says so up front
                {"kind": "file", "url": format!("{base}/f/big.bin")},
                // found while streaming
                {"kind": "file", "url": format!("{base}/chunked/big.bin")},
                {"kind": "file", "url": format!("{base}/chunked/small.bin"),
                 "md5": hex::encode(Md5::digest(b"something else"))},
                {"kind": "file", "url": format!("{base}/f/small.bin"),
                 "md5": hex::encode(Md5::digest(&small)).to_uppercase()},
            ]),
        )],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let blobs = Arc::new(BlobStore::in_directory(dir.path()).unwrap());
    let fetcher = Fetcher::new(
        store.clone(),
        blobs,
        FetchOptions {
            max_file_bytes: 1000,
            max_attempts: 2,
            ..options()
        },
    )
    .unwrap();
    let report = fetcher.run(&src, &FilesConnector, None).await.unwrap();
    assert_eq!((report.too_large, report.stored), (2, 1), "{report:?}");
    fetcher.run(&src, &FilesConnector, None).await.unwrap();
    let got = statuses(&store).await;
    assert_eq!(got["g1/m1/0"], "too_large");
    assert_eq!(got["g1/m1/1"], "too_large");
    assert_eq!(got["g1/m1/2"], "failed");
    assert_eq!(got["g1/m1/3"], "stored");
    let (error, next): (String, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT error, next_attempt_at FROM vault.attachments WHERE ordinal = 2")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert!(error.contains("md5 mismatch"), "{error}");
    assert!(next.is_none(), "given up after max_attempts");
    // Nothing of the refused files is left anywhere.
    assert_eq!(blob_files(dir.path()).len(), 1);
    assert_eq!(
        std::fs::read_dir(dir.path().join("staging/s"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn a_fetch_killed_mid_download_leaves_no_partial_blob_and_the_next_run_stores_all() {
    let (store, src) = store().await;
    let slow = vec![42u8; 200_000];
    let quick = b"quick".to_vec();
    let (media, base) =
        media_server(&[("slow.bin", slow.clone()), ("quick.bin", quick.clone())]).await;
    media.stall_once.store(true, Ordering::SeqCst);
    archive(
        &store,
        &src,
        None,
        2,
        one_file_each(&[
            ("file", format!("{base}/stall/slow.bin")),
            ("file", format!("{base}/f/quick.bin")),
        ]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let blobs = Arc::new(BlobStore::in_directory(dir.path()).unwrap());
    let fetcher = Arc::new(Fetcher::new(store.clone(), blobs.clone(), options()).unwrap());
    let task = {
        let fetcher = fetcher.clone();
        let src = src.clone();
        tokio::spawn(async move { fetcher.run(&src, &FilesConnector, None).await })
    };
    // Wait until the slow download is under way, then kill the run.
    for _ in 0..500 {
        if media.stalled.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(media.stalled.load(Ordering::SeqCst));
    tokio::time::sleep(Duration::from_millis(100)).await;
    task.abort();
    let _ = task.await;
    assert_ne!(statuses(&store).await["g1/m1/0"], "stored");
    assert!(
        !blobs
            .contains(&Sha256Hex::parse(&sha(&slow)).unwrap())
            .await
            .unwrap(),
        "no partial or complete blob of the killed download"
    );
    // What a process killed with SIGKILL would leave behind.
    let staging = dir.path().join("staging/s");
    std::fs::write(staging.join("dl-left.partial"), b"half a file").unwrap();

    let report = fetcher.run(&src, &FilesConnector, None).await.unwrap();
    assert!(report.stored >= 1, "{report:?}");
    let got = statuses(&store).await;
    assert!(got.values().all(|s| s == "stored"), "{got:?}");
    assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
    let check = check_blobs(&store, &blobs, None).await.unwrap();
    assert!(check.ok(), "{:?}", check.problems);
    assert_eq!(check.checked, 2);
    assert_eq!(blob_files(dir.path()).len(), 2);
}

#[tokio::test]
async fn the_run_budget_leaves_the_rest_for_the_next_run() {
    let (store, src) = store().await;
    let files: Vec<(String, Vec<u8>)> = (0..6)
        .map(|i| (format!("{i}.bin"), vec![i as u8; 1000]))
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let (_media, base) = media_server(&refs).await;
    let list: Vec<Value> = files
        .iter()
        .map(|(n, _)| json!({"kind": "file", "url": format!("{base}/f/{n}")}))
        .collect();
    archive(
        &store,
        &src,
        None,
        1,
        vec![with_files("g1", "m1", 1, Value::Array(list))],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let blobs = Arc::new(BlobStore::in_directory(dir.path()).unwrap());
    let fetcher = Fetcher::new(
        store.clone(),
        blobs,
        FetchOptions {
            max_run_bytes: 2500,
            concurrency: 1,
            ..options()
        },
    )
    .unwrap();
    let first = fetcher.run(&src, &FilesConnector, None).await.unwrap();
    assert_eq!(first.stored, 3, "{first:?}");
    assert!(first.deferred >= 1, "{first:?}");
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM archive.attachments WHERE status = 'pending'"
        )
        .await,
        3
    );
    let second = fetcher.run(&src, &FilesConnector, None).await.unwrap();
    assert_eq!(second.stored, 3, "{second:?}");
}

// ---------------------------------------------------------------------------------------
// verify --attachments, as a user runs it

fn chatvault(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatvault"));
    cmd.current_dir(dir)
        .args(args)
        .env_remove("CHATVAULT_CONFIG");
    for var in [
        "CHATVAULT_DATABASE_URL",
        "CHATVAULT_DATA_DIR",
        "CHATVAULT_LISTEN",
        "CHATVAULT_SERVER_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    cmd.output().expect("run chatvault")
}

async fn run(dir: &Path, args: &[&str]) -> Output {
    let dir = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        chatvault(&dir, &args)
    })
    .await
    .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn verify_attachments_catches_a_blob_altered_on_disk_and_plain_verify_still_passes() {
    let (options_pg, name) = chatvault::pg::testing::fresh_database().await;
    let socket = options_pg.get_socket().expect("a socket");
    let url = format!(
        "postgres://{}@localhost/{name}?host={}",
        options_pg.get_username(),
        socket.display()
    );
    let store = Store::connect(options_pg, 2).await.unwrap();
    store.migrate().await.unwrap();
    let src = SourceName::new("s");
    store
        .register_source(&src, Platform::Tangsengdaodao)
        .await
        .unwrap();
    let (_media, base) =
        media_server(&[("a.png", b"aaaa".to_vec()), ("b.png", b"bbbb".to_vec())]).await;
    archive(
        &store,
        &src,
        None,
        2,
        one_file_each(&[
            ("image", format!("{base}/f/a.png")),
            ("image", format!("{base}/f/b.png")),
        ]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("chatvault.toml"),
        format!("[database]\nurl = \"{url}\"\n[storage]\ndata_dir = \"data\"\n"),
    )
    .unwrap();
    let out = run(dir.path(), &["verify"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let attachments_dir = dir.path().join("data/attachments");
    let blobs = Arc::new(BlobStore::in_directory(&attachments_dir).unwrap());
    let report = Fetcher::new(store.clone(), blobs, options())
        .unwrap()
        .run(&src, &FilesConnector, None)
        .await
        .unwrap();
    assert_eq!(report.stored, 2);

    let out = run(dir.path(), &["verify", "--attachments"]).await;
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("attachments: 2 stored files checked"),
        "{}",
        text(&out.stdout)
    );

    // Alter one blob and remove the other.
    let a = attachments_dir
        .join("blobs")
        .join(&sha(b"aaaa")[..2])
        .join(sha(b"aaaa"));
    std::fs::write(&a, b"AAAA").unwrap();
    let b = attachments_dir
        .join("blobs")
        .join(&sha(b"bbbb")[..2])
        .join(sha(b"bbbb"));
    std::fs::remove_file(&b).unwrap();

    let out = run(dir.path(), &["verify", "--attachments"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("attachment 0 of message m1 in conversation g1")
            && err.contains("was altered")
            && err.contains(&sha(b"AAAA")),
        "{err}"
    );
    assert!(
        err.contains("attachment 0 of message m2 in conversation g1") && err.contains("missing"),
        "{err}"
    );
    // The chain itself is intact: plain verify passes with the new events in it.
    let out = run(dir.path(), &["verify"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok: every chain is intact"));
}

#[tokio::test]
async fn a_purge_takes_the_attachment_records_and_the_files_only_purged_messages_named() {
    let (options_pg, name) = chatvault::pg::testing::fresh_database().await;
    let socket = options_pg.get_socket().expect("a socket");
    let url = format!(
        "postgres://{}@localhost/{name}?host={}",
        options_pg.get_username(),
        socket.display()
    );
    let store = Store::connect(options_pg, 2).await.unwrap();
    store.migrate().await.unwrap();
    let src = SourceName::new("s");
    store
        .register_source(&src, Platform::Tangsengdaodao)
        .await
        .unwrap();
    let (_media, base) = media_server(&[
        (
            "shared.png",
            b"kept: a recent message names it too".to_vec(),
        ),
        ("old.png", b"only an old message names it".to_vec()),
    ])
    .await;
    let mut recent = with_files(
        "g1",
        "m9",
        9,
        json!([{"kind": "image", "url": format!("{base}/f/shared.png")}]),
    );
    recent.header.as_mut().unwrap().sent_at =
        chatvault::model::to_micros(chrono::Utc::now() - chrono::Duration::hours(1));
    archive(
        &store,
        &src,
        None,
        9,
        vec![
            with_files(
                "g1",
                "m1",
                1,
                json!([{"kind": "image", "url": format!("{base}/f/shared.png")},
                       {"kind": "image", "url": format!("{base}/f/old.png")}]),
            ),
            recent,
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("chatvault.toml"),
        format!(
            "[database]\nurl = \"{url}\"\n[storage]\ndata_dir = \"data\"\n[retention]\ndefault = \"7y\"\n[retention.conversation_type]\ngroup = \"30d\"\n"
        ),
    )
    .unwrap();
    let attachments_dir = dir.path().join("data/attachments");
    let blobs = Arc::new(BlobStore::in_directory(&attachments_dir).unwrap());
    let report = Fetcher::new(store.clone(), blobs.clone(), options())
        .unwrap()
        .run(&src, &FilesConnector, None)
        .await
        .unwrap();
    assert_eq!(report.stored, 3);
    assert_eq!(blob_files(&attachments_dir).len(), 2);

    let out = run(dir.path(), &["purge"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got = statuses(&store).await;
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        ["g1/m9/0"],
        "the purged message's records went with it"
    );
    let shared = Sha256Hex::parse(&sha(b"kept: a recent message names it too")).unwrap();
    let old = Sha256Hex::parse(&sha(b"only an old message names it")).unwrap();
    assert!(blobs.contains(&shared).await.unwrap());
    assert!(
        !blobs.contains(&old).await.unwrap(),
        "no attachment names it any more"
    );

    // The events of the purged message's files stay in the chain; verify accounts for them.
    let out = run(dir.path(), &["verify", "--attachments"]).await;
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("attachments: 1 stored files checked")
            && text(&out.stdout).contains("2 of purged messages not checked"),
        "{}",
        text(&out.stdout)
    );
}

// ---------------------------------------------------------------------------------------
// Wiring: `chatvault sync` and the daemon look for attachments after the messages.

#[tokio::test]
async fn sync_looks_for_attachments_after_the_messages_unless_told_not_to() {
    use chatvault::sim::tangsengdaodao::{SimServer, World, WorldSpec};
    let server = SimServer::start(World::generate(&WorldSpec {
        messages: 60,
        ..WorldSpec::default()
    }))
    .await;
    let (options_pg, name) = chatvault::pg::testing::fresh_database().await;
    let socket = options_pg.get_socket().expect("a socket");
    let url = format!(
        "postgres://{}@localhost/{name}?host={}",
        options_pg.get_username(),
        socket.display()
    );
    let store = Store::connect(options_pg, 2).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("chatvault.toml"),
        format!(
            "[database]\nurl = \"{url}\"\n[storage]\ndata_dir = \"data\"\n[[source]]\nname = \"acme\"\nplatform = \"tangsengdaodao\"\nbase_url = \"{}\"\nusername = \"{}\"\npassword = \"{}\"\nrequests_per_second = 500\n",
            server.base_url(),
            WorldSpec::default().me_username,
            WorldSpec::default().me_password,
        ),
    )
    .unwrap();
    let out = run(dir.path(), &["sync", "--no-attachments"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        count(&store, "SELECT count(*) FROM vault.attachment_scan").await,
        0,
        "--no-attachments: not even a scan"
    );
    let out = run(dir.path(), &["sync"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let acme = SourceName::new("acme");
    let head = store.chain_heads().await.unwrap()["acme"];
    assert!(head > 60);
    // The scan reached every message event; the files it found were stored after it, each
    // an attachment_stored event past the scan's position.
    let last_message_event = count(
        &store,
        "SELECT max(event_seq) FROM vault.events WHERE source = 'acme' AND kind LIKE 'message_%'",
    )
    .await;
    let scanned = store.attachment_scan_position(&acme).await.unwrap();
    assert!(
        scanned >= last_message_event,
        "{scanned} < {last_message_event}"
    );
    let stored = count(
        &store,
        "SELECT count(*) FROM vault.events WHERE source = 'acme' AND kind = 'attachment_stored'",
    )
    .await;
    assert!(stored > 0, "the fake's messages have files");
    assert_eq!(head, scanned.max(last_message_event) + stored, "{head}");
    assert!(dir.path().join("data/attachments/blobs").is_dir());
}

#[tokio::test]
async fn the_daemon_looks_for_attachments_after_each_run() {
    use chatvault::attachments::fetcher::AttachmentsRun;
    use chatvault::config::{
        AttachmentsConfig, BlobStoreConfig, PlatformConfig, Secret, SourceConfig, TsddAuth,
        TsddConfig,
    };
    use chatvault::scheduler::{Scheduler, SchedulerOptions};
    use chatvault::sim::tangsengdaodao::{SimServer, World, WorldSpec};
    use chatvault::sync::SyncOptions;

    let server = SimServer::start(World::generate(&WorldSpec {
        messages: 60,
        ..WorldSpec::default()
    }))
    .await;
    let (store, _) = store().await;
    let source = SourceConfig {
        name: SourceName::new("d"),
        schedule: "* * * * * *".into(),
        requests_per_second: 0.0,
        request_timeout: Duration::from_secs(10),
        enabled: true,
        push: true,
        platform: PlatformConfig::Tangsengdaodao(TsddConfig {
            base_url: server.base_url(),
            auth: TsddAuth::Password {
                username: WorldSpec::default().me_username,
                password: Secret::new(WorldSpec::default().me_password),
            },
            device_flag: 1,
            page_size: 50,
        }),
    };
    let dir = tempfile::tempdir().unwrap();
    let config = AttachmentsConfig {
        enabled: true,
        kinds: AttachmentKind::ALL.to_vec(),
        store: BlobStoreConfig::Directory(dir.path().to_path_buf()),
        max_file_bytes: 1 << 20,
        max_run_bytes: 1 << 30,
        requests_per_second: 100.0,
        concurrency: 2,
        max_attempts: 3,
        request_timeout: Duration::from_secs(10),
    };
    let options = SchedulerOptions {
        max_concurrent_sources: 1,
        jitter: Duration::ZERO,
        backoff_base: Duration::from_secs(30),
        backoff_cap: Duration::from_secs(30),
        sync: SyncOptions::default(),
        attachments: Some(AttachmentsRun {
            blobs: std::sync::Arc::new(
                chatvault::attachments::blob::BlobStore::from_config(&config, dir.path()).unwrap(),
            ),
            config,
            session_dir: None,
            metrics: None,
        }),
    };
    let scheduler = Scheduler::new(
        store.clone(),
        chatvault::metrics::Metrics::new(),
        std::slice::from_ref(&source),
        options,
    )
    .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(scheduler.run(stop_rx));
    let d = SourceName::new("d");
    let mut scanned = false;
    for _ in 0..300 {
        let head = store
            .chain_heads()
            .await
            .unwrap()
            .get("d")
            .copied()
            .unwrap_or(0);
        if head > 60 && store.attachment_scan_position(&d).await.unwrap() == head {
            scanned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop_tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the scheduler stops")
        .unwrap();
    assert!(
        scanned,
        "the archive was scanned for attachments after a run"
    );
}

#[tokio::test]
async fn a_stalled_download_times_out_as_a_failure_and_is_retried() {
    let (store, src) = store().await;
    let (media, base) = media_server(&[("slow.bin", vec![1u8; 10_000])]).await;
    media.stall_once.store(true, Ordering::SeqCst);
    archive(
        &store,
        &src,
        None,
        1,
        vec![with_files(
            "g1",
            "m1",
            1,
            json!([{"kind": "file", "url": format!("{base}/stall/slow.bin?sig=SECRET")}]),
        )],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let blobs = Arc::new(BlobStore::in_directory(dir.path()).unwrap());
    let fetcher = Fetcher::new(
        store.clone(),
        blobs,
        FetchOptions {
            request_timeout: Duration::from_secs(1),
            ..options()
        },
    )
    .unwrap();
    let started = std::time::Instant::now();
    let first = fetcher.run(&src, &FilesConnector, None).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "bounded by the timeout"
    );
    assert_eq!(first.failed, 1, "{first:?}");
    let (status, error): (String, String) =
        sqlx::query_as("SELECT status, error FROM vault.attachments")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(status, "failed");
    assert!(error.contains("interrupted"), "{error}");
    assert!(!error.contains("SECRET"), "{error}");
    let second = fetcher.run(&src, &FilesConnector, None).await.unwrap();
    assert_eq!(second.stored, 1, "{second:?}");
}

#[tokio::test]
async fn with_downloads_disabled_references_are_recorded_and_nothing_is_fetched() {
    let (store, src) = store().await;
    let (media, base) = media_server(&[("a.png", b"a".to_vec())]).await;
    archive(
        &store,
        &src,
        None,
        1,
        vec![with_files(
            "g1",
            "m1",
            1,
            json!([{"kind": "image", "url": format!("{base}/f/a.png")}]),
        )],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let blobs = Arc::new(BlobStore::in_directory(dir.path()).unwrap());
    let report = Fetcher::new(
        store.clone(),
        blobs,
        FetchOptions {
            download: false,
            ..options()
        },
    )
    .unwrap()
    .run(&src, &FilesConnector, None)
    .await
    .unwrap();
    assert_eq!((report.found, report.stored), (1, 0), "{report:?}");
    assert_eq!(statuses(&store).await["g1/m1/0"], "pending");
    assert!(media.requests.lock().unwrap().is_empty());
}
