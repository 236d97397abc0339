//! The web pages in a real browser: headless Chromium driven over WebDriver (chromedriver),
//! against a server on 127.0.0.1 with a real PostgreSQL behind it.
//!
//! `.ci/run` installs Debian's `chromium` and `chromium-driver`; where they cannot be
//! installed these tests say so on stderr and pass without a browser.

use crate::common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chatvault::http::{self as api, ApiState};
use chatvault::index::{Indexer, SearchIndex};
use chatvault::metrics::Metrics;
use chatvault::store::Store;
use common::*;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session in it.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Fails the test, saying what to install, where Chromium is not installed: a browser
    /// test that cannot run has not passed.
    async fn start() -> Browser {
        assert!(
            std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists(),
            "{CHROMIUM} or {CHROMEDRIVER} is missing: apt-get install chromium chromium-driver \
             (.ci/run installs them)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("{base}/status")).send().await {
                let v: Value = r.json().await.unwrap_or_default();
                if v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ]
        .into_iter()
        .map(String::from)
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": CHROMIUM, "args": args}
            }}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .to_string();
        Browser {
            driver,
            base,
            session,
            http,
            _profile: profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if let Some(b) = body {
            request = request.json(&b);
        }
        let v: Value = request.send().await.unwrap().json().await.unwrap();
        assert!(
            v["value"].get("error").is_none(),
            "webdriver {path}: {}",
            v["value"]
        );
        v["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})))
            .await;
    }

    async fn find_all(&self, css: &str) -> Vec<String> {
        let v = self
            .call(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e[ELEMENT].as_str().unwrap().to_string())
            .collect()
    }

    /// The first element matching `css`, waiting up to 10 s for one to appear.
    async fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(first) = self.find_all(css).await.into_iter().next() {
                return first;
            }
            assert!(Instant::now() < deadline, "nothing matches {css}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn text(&self, element: &str) -> String {
        self.call(
            reqwest::Method::GET,
            &format!("/element/{element}/text"),
            None,
        )
        .await
        .as_str()
        .unwrap()
        .to_string()
    }

    async fn click(&self, element: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await;
    }

    async fn type_into(&self, element: &str, text: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    /// Wait until the page's URL contains `part` (a click that navigates may return
    /// before the new page is there). Panics after 10 s.
    async fn wait_for_url(&self, part: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let url = self.current_url().await;
            if url.contains(part) {
                return url;
            }
            assert!(Instant::now() < deadline, "still at {url}, expected {part}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn current_url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

async fn serve(store: Store, index_dir: &std::path::Path) -> (String, watch::Sender<bool>) {
    let index = SearchIndex::open_or_create(index_dir).unwrap();
    Indexer::new(index.clone()).catch_up(&store).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, shutdown) = watch::channel(false);
    let state = ApiState::new(&store, Metrics::new())
        .with_token(None)
        .with_search(index);
    tokio::spawn(api::serve_on(
        listener,
        state,
        shutdown,
        Duration::from_secs(5),
    ));
    (format!("http://{address}"), stop)
}

/// Conversation `g1` with 30 messages; message 7 was edited once.
async fn seeded() -> Store {
    let (store, src) = store().await;
    let messages = (1..=30)
        .map(|seq| {
            let text = if seq == 7 {
                "周五开会 meeting on Friday".to_string()
            } else {
                format!("第{seq}条 message {seq}")
            };
            message("g1", &seq.to_string(), seq, &text)
        })
        .collect();
    let mut first = page("m/g1", None, 30, messages);
    let mut conv = conversation("g1");
    conv.name = Some("项目组".into());
    first.conversations.push(conv);
    store.apply_page(&src, &first).await.unwrap();
    let mut edited = message("g1", "7", 7, "周六开会 meeting moved to Saturday");
    edited.edited_at = Some(t(500));
    store
        .apply_page(&src, &page("m/g1", Some(30), 30, vec![edited]))
        .await
        .unwrap();
    store
}

#[tokio::test]
async fn a_browser_opens_a_conversation_and_expands_an_edit_history() {
    let browser = Browser::start().await;
    let index = tempfile::tempdir().unwrap();
    let (base, stop) = serve(seeded().await, index.path()).await;

    browser.go(&format!("{base}/conversations")).await;
    let link = browser.find("table.list a[href^='/c/']").await;
    assert_eq!(browser.text(&link).await, "项目组");
    browser.click(&link).await;
    assert!(browser.wait_for_url("/c/s/g1").await.ends_with("/c/s/g1"));
    browser.find("ol.messages > li").await;
    let messages = browser.find_all("ol.messages > li").await;
    assert_eq!(messages.len(), 30);

    // the edit history is folded until opened
    let details = browser.find("#m-7 details.versions").await;
    let folded = browser.text(&details).await;
    assert!(folded.contains("Version history (2 versions)"), "{folded}");
    assert!(!folded.contains("周五开会"), "{folded}");
    let summary = browser.find("#m-7 details.versions summary").await;
    browser.click(&summary).await;
    let open = browser.text(&details).await;
    assert!(open.contains("周五开会 meeting on Friday"), "{open}");
    assert!(
        open.contains("周六开会 meeting moved to Saturday"),
        "{open}"
    );

    let _ = browser.call(reqwest::Method::DELETE, "", None).await;
    stop.send(true).unwrap();
}

#[tokio::test]
async fn a_browser_searches_in_chinese_and_follows_a_hit() {
    let browser = Browser::start().await;
    let index = tempfile::tempdir().unwrap();
    let (base, stop) = serve(seeded().await, index.path()).await;

    browser.go(&format!("{base}/")).await;
    let q = browser.find("input[name=q]").await;
    browser.type_into(&q, "开会").await;
    let submit = browser.find("form.search button[type=submit]").await;
    browser.click(&submit).await;
    browser.wait_for_url("q=%E5%BC%80%E4%BC%9A").await;
    browser.find("ol.hits > li").await;
    let hits = browser.find_all("ol.hits > li").await;
    assert_eq!(hits.len(), 1, "only message 7 mentions 开会");
    let text = browser.text(&hits[0]).await;
    assert!(
        text.contains("周六开会 meeting moved to Saturday"),
        "{text}"
    );
    assert!(text.contains("edited"), "{text}");
    let marked = browser.find("ol.hits mark").await;
    assert_eq!(browser.text(&marked).await, "开会");

    let link = browser.find("ol.hits a.conv").await;
    browser.click(&link).await;
    browser.wait_for_url("around=7").await;
    let highlighted = browser.find("li.msg.hl").await;
    assert!(browser.text(&highlighted).await.contains("周六开会"));

    let _ = browser.call(reqwest::Method::DELETE, "", None).await;
    stop.send(true).unwrap();
}

#[tokio::test]
async fn a_browser_shows_an_archived_image_on_the_conversation_page() {
    use chatvault::attachments::blob::BlobStore;

    let browser = Browser::start().await;
    let (store, source) = store().await;
    let blobs_dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::in_directory(blobs_dir.path()).unwrap();
    crate::attachments_web::seed(&store, &source, &blobs).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, shutdown) = watch::channel(false);
    let state = ApiState::new(&store, Metrics::new()).with_blobs(std::sync::Arc::new(blobs));
    tokio::spawn(api::serve_on(
        listener,
        state,
        shutdown,
        Duration::from_secs(5),
    ));

    browser.go(&format!("{base}/c/s/g1")).await;
    let img = browser.find("#m-1 figure.att img").await;
    // the page's policy lets the browser load it from this server, and it decodes
    let deadline = Instant::now() + Duration::from_secs(10);
    let natural = loop {
        let v = browser
            .call(
                reqwest::Method::POST,
                "/execute/sync",
                Some(json!({
                    "script": "const i = arguments[0]; return i.complete ? [i.naturalWidth, i.naturalHeight] : null;",
                    "args": [{ELEMENT: img}]
                })),
            )
            .await;
        if !v.is_null() {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the image never finished loading"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(natural, json!([3, 2]), "the 3×2 PNG is shown");
    // the SVG stays a link, never an image
    assert!(browser.find_all("#m-2 img").await.is_empty());

    let _ = browser.call(reqwest::Method::DELETE, "", None).await;
    stop.send(true).unwrap();
}
