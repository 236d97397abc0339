//! Attachments on the web page and the file route, over real HTTP against a real
//! PostgreSQL and a real directory blob store: stored images inline, other stored files as
//! download links, the rest as their status; files served with a type a browser cannot
//! run, `nosniff` and a no-script policy; unknown attachments 404, bad paths 400; every
//! file served in the access log.

use crate::common::*;

use std::io::Write as _;
use std::time::Duration;

use chatvault::attachments::blob::{BlobStore, Sha256Hex};
use chatvault::http::{self as api, ApiState};
use chatvault::metrics::Metrics;
use chatvault::model::{MessageKind, SourceName};
use chatvault::store::Store;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A 3×2 red PNG.
pub(crate) const PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x02, 0x08, 0x02, 0x00, 0x00, 0x00, 0x12, 0x16, 0xf1,
    0x4d, 0x00, 0x00, 0x00, 0x10, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0x00,
    0x41, 0x0c, 0x70, 0x16, 0x00, 0x41, 0xd2, 0x05, 0xfb, 0x87, 0xf0, 0xb9, 0x48, 0x00, 0x00, 0x00,
    0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];
pub(crate) const PDF: &[u8] = b"%PDF-1.4\n% a report\n%%EOF\n";
pub(crate) const HTML: &[u8] = b"<html><script>alert(document.cookie)</script></html>";
pub(crate) const SVG: &[u8] =
    b"<svg xmlns=\"http://www.w3.org/2000/svg\" onload=\"alert(1)\"><rect width=\"1\" height=\"1\"/></svg>";
/// Bytes of a file recorded as stored whose blob is not in the store.
pub(crate) const LOST: &[u8] = b"never put in the blob store";

pub(crate) fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Stage `bytes` and keep them in `blobs`, as the fetcher does.
pub(crate) async fn put_blob(blobs: &BlobStore, bytes: &[u8]) -> String {
    let mut file = chatvault::files::private_temp_file_in(blobs.staging_dir(), "t").unwrap();
    file.write_all(bytes).unwrap();
    let (_, path) = file.keep().unwrap();
    let sha256 = Sha256Hex::of_digest(&Sha256::digest(bytes));
    blobs.put(&path, &sha256).await.unwrap();
    sha256.to_string()
}

/// One row of `vault.attachments`, as the fetcher leaves it.
pub(crate) struct Row {
    pub conversation: &'static str,
    pub message: &'static str,
    pub ordinal: i32,
    pub kind: &'static str,
    pub name: Option<&'static str>,
    pub mime: Option<&'static str>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    pub url: &'static str,
    pub status: &'static str,
    /// For a stored file: its bytes.
    pub bytes: Option<&'static [u8]>,
    pub declared_size: Option<i64>,
    pub error: Option<&'static str>,
}

impl Row {
    fn new(conversation: &'static str, message: &'static str, ordinal: i32) -> Row {
        Row {
            conversation,
            message,
            ordinal,
            kind: "file",
            name: None,
            mime: None,
            width: None,
            height: None,
            url: "https://cdn.example/x",
            status: "pending",
            bytes: None,
            declared_size: None,
            error: None,
        }
    }
}

pub(crate) async fn insert(store: &Store, source: &SourceName, r: &Row) {
    sqlx::query(
        "INSERT INTO vault.attachments (source, conversation_id, message_id, ordinal, kind,
             name, mime, declared_size, width, height, upstream_url, shown_url, status, sha256,
             size, attempts, fetched_at, error)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 1,
                 CASE WHEN $13 = 'stored' THEN now() END, $16)",
    )
    .bind(source.as_str())
    .bind(r.conversation)
    .bind(r.message)
    .bind(r.ordinal)
    .bind(r.kind)
    .bind(r.name)
    .bind(r.mime)
    .bind(r.declared_size)
    .bind(r.width)
    .bind(r.height)
    .bind(r.url)
    .bind(chatvault::attachments::shown_url(r.url))
    .bind(r.status)
    .bind(r.bytes.map(sha))
    .bind(r.bytes.map(|b| b.len() as i64))
    .bind(r.error)
    .execute(store.pool())
    .await
    .unwrap();
}

/// Conversation `g1` ("图片组"): message 1 has a stored image (截图.png, 3×2) and a pending
/// one; 2 a stored PDF, a stored file claiming to be HTML and a stored SVG; 3 one
/// attachment of each other status; 4 the same image as 1 again and 5 none (only a url in
/// its content). Conversation `g2`: message 9 has an image recorded as stored whose file
/// is missing from the blob store. Every stored file but that one is put in `blobs`.
pub(crate) async fn seed(store: &Store, source: &SourceName, blobs: &BlobStore) {
    let mut messages = Vec::new();
    for seq in 1..=5 {
        let mut m = message("g1", &seq.to_string(), seq, &format!("附件 message {seq}"));
        if seq == 5 {
            let content = m.content.as_mut().unwrap();
            content.kind = MessageKind::File;
            content.content = json!({"name": "old.doc", "url": "https://files.example/old.doc"});
        }
        messages.push(m);
    }
    let mut p = page("m/g1", None, 5, messages);
    let mut conv = conversation("g1");
    conv.name = Some("图片组".into());
    p.conversations.push(conv);
    store.apply_page(source, &p).await.unwrap();
    let mut p = page("m/g2", None, 9, vec![message("g2", "9", 9, "lost")]);
    p.conversations.push(conversation("g2"));
    store.apply_page(source, &p).await.unwrap();

    let rows = [
        Row {
            kind: "image",
            name: Some("截图.png"),
            mime: Some("image/png"),
            width: Some(3),
            height: Some(2),
            url: "https://cdn.example/p/1.png?token=secret-1",
            status: "stored",
            bytes: Some(PNG),
            ..Row::new("g1", "1", 0)
        },
        Row {
            kind: "image",
            name: Some("second.png"),
            mime: Some("image/png"),
            url: "https://cdn.example/p/2.png?token=secret-2",
            declared_size: Some(2048),
            ..Row::new("g1", "1", 1)
        },
        Row {
            name: Some("报告 final.pdf"),
            mime: Some("application/pdf"),
            url: "https://cdn.example/f/report.pdf",
            status: "stored",
            bytes: Some(PDF),
            ..Row::new("g1", "2", 0)
        },
        Row {
            name: Some("page.html"),
            mime: Some("text/html"),
            url: "https://cdn.example/f/page.html",
            status: "stored",
            bytes: Some(HTML),
            ..Row::new("g1", "2", 1)
        },
        Row {
            kind: "image",
            name: Some("logo.svg"),
            mime: Some("image/svg+xml"),
            url: "https://cdn.example/f/logo.svg",
            status: "stored",
            bytes: Some(SVG),
            ..Row::new("g1", "2", 2)
        },
        Row {
            name: Some("a.zip"),
            url: "https://cdn.example/f/a.zip",
            status: "failed",
            error: Some("HTTP 500 from upstream"),
            ..Row::new("g1", "3", 0)
        },
        Row {
            kind: "video",
            name: Some("clip.mp4"),
            mime: Some("video/mp4"),
            url: "https://cdn.example/v/clip.mp4",
            status: "gone",
            ..Row::new("g1", "3", 1)
        },
        Row {
            name: Some("huge.iso"),
            url: "https://cdn.example/f/huge.iso",
            status: "too_large",
            declared_size: Some(5_000_000_000),
            ..Row::new("g1", "3", 2)
        },
        Row {
            kind: "voice",
            mime: Some("audio/amr"),
            url: "https://cdn.example/a/voice.amr",
            status: "skipped",
            ..Row::new("g1", "3", 3)
        },
        Row {
            kind: "image",
            name: Some("again.png"),
            mime: Some("image/png"),
            url: "https://cdn.example/p/1-again.png",
            status: "stored",
            bytes: Some(PNG),
            ..Row::new("g1", "4", 0)
        },
        Row {
            kind: "image",
            name: Some("lost.png"),
            mime: Some("image/png"),
            url: "https://cdn.example/p/lost.png",
            status: "stored",
            bytes: Some(LOST),
            ..Row::new("g2", "9", 0)
        },
    ];
    for r in &rows {
        insert(store, source, r).await;
        if let Some(bytes) = r.bytes.filter(|b| *b != LOST) {
            put_blob(blobs, bytes).await;
        }
    }
}

struct Server {
    base: String,
    stop: watch::Sender<bool>,
    http: reqwest::Client,
    store: Store,
    _blobs: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let (store, source) = store().await;
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::in_directory(&dir.path().join("attachments")).unwrap();
        seed(&store, &source, &blobs).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let state = ApiState::new(&store, Metrics::new()).with_blobs(std::sync::Arc::new(blobs));
        tokio::spawn(api::serve_on(
            listener,
            state,
            shutdown,
            Duration::from_secs(5),
        ));
        Server {
            base: format!("http://{address}"),
            stop,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            store,
            _blobs: dir,
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    async fn attachment_accesses(&self) -> i64 {
        count(
            &self.store,
            "SELECT count(*) FROM archive.access_log WHERE action = 'attachment'",
        )
        .await
    }
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// The `<li>` of message `id` on a conversation page.
fn message_html<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("id=\"m-{id}\""))
        .unwrap_or_else(|| panic!("no message {id}"));
    let end = html[start..].find("</li>").unwrap();
    &html[start..start + end]
}

#[tokio::test]
async fn the_page_shows_stored_images_inline_files_as_links_and_the_rest_as_their_status() {
    let server = Server::start().await;
    let r = server.get("/c/s/g1").await;
    assert_eq!(r.status(), 200);
    let csp = header(&r, "content-security-policy");
    assert_eq!(
        csp,
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; form-action 'self'; \
         frame-ancestors 'none'"
    );
    let html = r.text().await.unwrap();

    let first = message_html(&html, "1");
    let img = &first[first.find("<img").expect("an inline image")..];
    let img = &img[..img.find('>').unwrap()];
    for part in [
        "src=\"/attachment/s/g1/1/0\"",
        "alt=\"截图.png\"",
        "width=\"3\"",
        "height=\"2\"",
    ] {
        assert!(img.contains(part), "{part} in {img}");
    }
    // the pending image is its status, with where upstream keeps it as text only
    assert!(first.contains("att-status pending"), "{first}");
    assert!(first.contains("https://cdn.example/p/2.png"), "{first}");
    assert!(first.contains("2.0 KiB"), "{first}");
    assert_eq!(first.matches("<img").count(), 1, "{first}");

    let second = message_html(&html, "2");
    assert!(
        second.contains(
            "href=\"/attachment/s/g1/2/0\" download=\"报告 final.pdf\">📎 报告 final.pdf</a>"
        ),
        "{second}"
    );
    assert!(second.contains(&format!("{} B", PDF.len())), "{second}");
    // an SVG is a file to download, never an image on the page
    assert!(second.contains("href=\"/attachment/s/g1/2/2\""), "{second}");
    assert!(!second.contains("<img"), "{second}");

    let third = message_html(&html, "3");
    for status in ["failed", "gone", "too_large", "skipped"] {
        assert!(
            third.contains(&format!("class=\"att-status {status}\"")),
            "{status}: {third}"
        );
    }
    assert!(third.contains("HTTP 500 from upstream"), "{third}");
    assert!(third.contains("https://cdn.example/v/clip.mp4"), "{third}");
    assert!(!third.contains("/attachment/"), "{third}");

    // no link to upstream for any archived attachment, and no credential anywhere
    assert!(!html.contains("href=\"https://cdn.example"), "{html}");
    assert!(!html.contains("secret-1") && !html.contains("secret-2"));
    // a message whose attachments are not recorded keeps the links of its content
    assert!(message_html(&html, "5").contains("href=\"https://files.example/old.doc\""));
    stop(server);
}

fn stop(server: Server) {
    server.stop.send(true).unwrap();
}

#[tokio::test]
async fn files_are_served_with_types_a_browser_cannot_run_and_are_in_the_access_log() {
    let server = Server::start().await;
    // (path, body, content type, disposition)
    let cases: [(&str, &[u8], &str, &str); 4] = [
        (
            "/attachment/s/g1/1/0",
            PNG,
            "image/png",
            "inline; filename*=UTF-8''%E6%88%AA%E5%9B%BE.png",
        ),
        (
            "/attachment/s/g1/2/0",
            PDF,
            "application/pdf",
            "inline; filename*=UTF-8''%E6%8A%A5%E5%91%8A%20final.pdf",
        ),
        (
            "/attachment/s/g1/2/1",
            HTML,
            "application/octet-stream",
            "attachment; filename*=UTF-8''page.html",
        ),
        (
            "/attachment/s/g1/2/2",
            SVG,
            "application/octet-stream",
            "attachment; filename*=UTF-8''logo.svg",
        ),
    ];
    for (path, body, content_type, disposition) in cases {
        let r = server.get(path).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(header(&r, "content-type"), content_type, "{path}");
        assert_eq!(header(&r, "content-disposition"), disposition, "{path}");
        assert_eq!(header(&r, "x-content-type-options"), "nosniff", "{path}");
        assert_eq!(
            header(&r, "content-length"),
            body.len().to_string(),
            "{path}"
        );
        let csp = header(&r, "content-security-policy");
        assert!(csp.starts_with("default-src 'none'"), "{path}: {csp}");
        assert!(!csp.contains("script"), "{path}: {csp}");
        assert_eq!(header(&r, "cross-origin-resource-policy"), "same-origin");
        assert_eq!(r.bytes().await.unwrap().as_ref(), body, "{path}");
    }
    assert_eq!(server.attachment_accesses().await, 4);
    // a browser that has the file is told so (its ETag is the sha256), and that is recorded too
    let r = server
        .http
        .get(format!("{}/attachment/s/g1/1/0", server.base))
        .header("if-none-match", format!("\"{}\"", sha(PNG)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(header(&r, "etag"), format!("\"{}\"", sha(PNG)));
    assert!(r.bytes().await.unwrap().is_empty());
    let r = server
        .http
        .get(format!("{}/attachment/s/g1/1/0", server.base))
        .header("if-none-match", "\"0000\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(server.attachment_accesses().await, 6);
    let logged: serde_json::Value = sqlx::query_scalar(
        "SELECT json_build_object('ids', ids, 'filters', filters, 'via', via)
         FROM archive.access_log WHERE action = 'attachment' ORDER BY seq LIMIT 1",
    )
    .fetch_one(server.store.pool())
    .await
    .unwrap();
    assert_eq!(logged["via"], "web", "{logged}");
    assert_eq!(logged["filters"]["ordinal"], 0, "{logged}");
    assert_eq!(logged["filters"]["sha256"], sha(PNG), "{logged}");
    assert_eq!(logged["ids"][0]["message_id"], "1", "{logged}");
    stop(server);
}

#[tokio::test]
async fn one_byte_range_is_served_as_partial_content_and_recorded() {
    let server = Server::start().await;
    let get = |range: &'static str, if_range: Option<String>| {
        let mut r = server
            .http
            .get(format!("{}/attachment/s/g1/2/0", server.base))
            .header("range", range);
        if let Some(v) = if_range {
            r = r.header("if-range", v);
        }
        r.send()
    };
    let size = PDF.len();
    // (Range, status, Content-Range, body)
    let cases: [(&str, u16, String, &[u8]); 5] = [
        ("bytes=0-3", 206, format!("bytes 0-3/{size}"), &PDF[..4]),
        (
            "bytes=5-",
            206,
            format!("bytes 5-{}/{size}", size - 1),
            &PDF[5..],
        ),
        (
            "bytes=-6",
            206,
            format!("bytes {}-{}/{size}", size - 6, size - 1),
            &PDF[size - 6..],
        ),
        (
            "bytes=4-100000",
            206,
            format!("bytes 4-{}/{size}", size - 1),
            &PDF[4..],
        ),
        ("bytes=100000-", 416, format!("bytes */{size}"), b""),
    ];
    for (range, status, content_range, body) in cases {
        let r = get(range, None).await.unwrap();
        assert_eq!(r.status(), status, "{range}");
        assert_eq!(header(&r, "content-range"), content_range, "{range}");
        assert_eq!(header(&r, "accept-ranges"), "bytes", "{range}");
        assert_eq!(header(&r, "x-content-type-options"), "nosniff", "{range}");
        assert_eq!(r.bytes().await.unwrap().as_ref(), body, "{range}");
    }
    // several ranges, or an If-Range naming another file: the whole file
    for (range, if_range) in [
        ("bytes=0-1,4-5", None),
        ("bytes=0-3", Some("\"0000\"".to_string())),
    ] {
        let r = get(range, if_range).await.unwrap();
        assert_eq!(r.status(), 200, "{range}");
        assert_eq!(r.bytes().await.unwrap().as_ref(), PDF, "{range}");
    }
    let r = get("bytes=0-3", Some(format!("\"{}\"", sha(PDF))))
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &PDF[..4]);
    // every answer, part or not, is in the access log, with the part it was
    assert_eq!(server.attachment_accesses().await, 8);
    let ranges: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT filters->>'range' FROM archive.access_log WHERE action = 'attachment' ORDER BY seq",
    )
    .fetch_all(server.store.pool())
    .await
    .unwrap();
    assert_eq!(ranges[0].as_deref(), Some("0-3"));
    assert_eq!(ranges[4].as_deref(), Some("unsatisfiable"));
    assert_eq!(ranges[5], None);
    stop(server);
}

#[tokio::test]
async fn unknown_unstored_missing_and_malformed_attachments_are_refused() {
    let server = Server::start().await;
    for (path, status) in [
        ("/attachment/s/g1/1/9", 404),    // no such ordinal
        ("/attachment/s/g1/77/0", 404),   // no such message
        ("/attachment/nope/g1/1/0", 404), // no such source
        ("/attachment/s/g1/1/1", 404),    // pending: not stored
        ("/attachment/s/g1/3/0", 404),    // failed
        ("/attachment/s/g1/1/x", 400),    // not a number
        ("/attachment/s/g1/1/-1", 400),   // negative
        ("/attachment/s/g1/1/99999999999", 400),
        ("/attachment/s/g1/a%00b/0", 400), // a NUL PostgreSQL could not take
        ("/attachment/s/g1/%FF/0", 400),   // not UTF-8
        ("/attachment/s/g2/9/0", 500),     // recorded as stored, but the file is missing
    ] {
        let r = server.get(path).await;
        assert_eq!(r.status().as_u16(), status, "{path}");
        assert_eq!(header(&r, "x-content-type-options"), "nosniff", "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}: {body}"
        );
    }
    let missing: serde_json::Value = server
        .get("/attachment/s/g2/9/0")
        .await
        .json()
        .await
        .unwrap();
    assert!(
        missing["error"].as_str().unwrap().contains(&sha(LOST)),
        "{missing}"
    );
    // a browser gets an error page
    let r = server
        .http
        .get(format!("{}/attachment/s/g1/1/9", server.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(header(&r, "content-type").starts_with("text/html"));
    // nothing was served, so nothing was recorded as served
    assert_eq!(server.attachment_accesses().await, 0);
    stop(server);
}

#[tokio::test]
async fn without_a_blob_store_the_page_still_shows_attachments_and_files_answer_503() {
    let (store, source) = store().await;
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::in_directory(dir.path()).unwrap();
    seed(&store, &source, &blobs).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(api::serve_on(
        listener,
        ApiState::new(&store, Metrics::new()),
        shutdown,
        Duration::from_secs(5),
    ));
    let html = reqwest::get(format!("{base}/c/s/g1"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("src=\"/attachment/s/g1/1/0\""), "{html}");
    let r = reqwest::get(format!("{base}/attachment/s/g1/1/0"))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    stop.send(true).unwrap();
}

#[tokio::test]
async fn the_store_reads_attachments_by_message_by_key_and_for_an_export() {
    let (store, source) = store().await;
    let dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::in_directory(dir.path()).unwrap();
    seed(&store, &source, &blobs).await;

    let some = store
        .message_attachments("s", "g1", &["3", "1", "77"])
        .await
        .unwrap();
    let keys: Vec<(&str, i32, &str)> = some
        .iter()
        .map(|a| (a.message_id.as_str(), a.ordinal, a.status.as_str()))
        .collect();
    assert_eq!(
        keys,
        [
            ("1", 0, "stored"),
            ("1", 1, "pending"),
            ("3", 0, "failed"),
            ("3", 1, "gone"),
            ("3", 2, "too_large"),
            ("3", 3, "skipped"),
        ]
    );
    // the size is the stored one, or what upstream declares while not stored
    assert_eq!(some[0].size, Some(PNG.len() as i64));
    assert_eq!(some[1].size, Some(2048));

    let image = store.attachment("s", "g1", "1", 0).await.unwrap().unwrap();
    assert_eq!((image.width, image.height), (Some(3), Some(2)));
    assert_eq!(image.sha256.as_deref(), Some(sha(PNG).as_str()));
    assert_eq!(
        image.upstream_url, "https://cdn.example/p/1.png",
        "no credentials"
    );
    assert!(image.is_stored());
    assert!(!some[1].is_stored());
    assert!(store.attachment("s", "g1", "1", 5).await.unwrap().is_none());
    assert!(store.attachment("s", "g2", "1", 0).await.unwrap().is_none());
    assert!(store.attachment("t", "g1", "1", 0).await.unwrap().is_none());

    let mut snapshot = store.export_snapshot().await.unwrap();
    let filter = chatvault::store::export::ExportFilter {
        conversation: Some("g1".into()),
        as_of: Some(t(2)),
        ..Default::default()
    };
    let rows = snapshot.attachments(&filter).await.unwrap();
    let keys: Vec<(&str, i32)> = rows
        .iter()
        .map(|a| (a.message_id.as_str(), a.ordinal))
        .collect();
    assert_eq!(keys, [("1", 0), ("1", 1), ("2", 0), ("2", 1), ("2", 2)]);
    let all = snapshot
        .attachments(&chatvault::store::export::ExportFilter::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 11);
    assert_eq!(all.last().unwrap().message_id, "9");
}
