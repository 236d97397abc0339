//! `chatvault demo` as a newcomer runs it: it starts, archives from every fake upstream,
//! serves the page while the fakes keep changing, and stops cleanly, removing its
//! temporary data directory, which is private while it exists.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test]
async fn the_demo_archives_every_fake_serves_the_page_and_stops_cleanly() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chatvault"));
    // SAFETY: umask is async-signal-safe and touches no memory. With umask 0 nothing is
    // private by accident.
    unsafe {
        command.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let mut child = command
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--messages",
            "800",
            "--exit-after",
            "25",
        ])
        .env_remove("CHATVAULT_CONFIG")
        .env_remove("CHATVAULT_DATABASE_URL")
        .env_remove("CHATVAULT_DATA_DIR")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chatvault demo");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });

    // the banner names the page and the configuration it wrote
    let started = Instant::now();
    let mut url = None;
    let mut config = None;
    while url.is_none() || config.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(90).saturating_sub(started.elapsed()))
            .expect("the demo prints its banner within 90 s");
        if let Some(u) = line.trim().strip_prefix("web page") {
            url = Some(u.trim().trim_end_matches('/').to_string());
        }
        if let Some(rest) = line.trim().strip_prefix("try") {
            let c = rest.trim().strip_prefix("chatvault --config ").unwrap();
            config = Some(c.split(' ').next().unwrap().to_string());
        }
    }
    let url = url.unwrap();
    let config = std::path::PathBuf::from(config.unwrap());
    let data_dir = config.parent().unwrap().to_path_buf();
    assert!(config.exists());
    assert_demo_files_are_private(&data_dir, child.id());

    let http = reqwest::Client::new();
    let status: serde_json::Value = get_json(&http, &format!("{url}/api/status")).await;
    let sources = status.as_array().unwrap();
    let platforms: Vec<&str> = sources
        .iter()
        .map(|s| s["platform"].as_str().unwrap())
        .collect();
    for platform in ["tangsengdaodao", "yunxin", "yunhu"] {
        assert!(
            platforms.contains(&platform),
            "{platform} missing: {status}"
        );
    }
    for s in sources {
        assert!(s["messages"].as_i64().unwrap() >= 700, "{s}");
        assert_eq!(s["last_run"]["status"], "ok", "{s}");
    }
    let page = get_text(&http, &format!("{url}/conversations")).await;
    assert!(page.contains("href=\"/c/demo-tangsengdaodao/"), "{page}");
    // each platform's conversation pages show its images, fetched before the banner
    for source in ["demo-tangsengdaodao", "demo-yunxin", "demo-yunhu"] {
        let image = image_on_a_conversation_page(&http, &url, &page, source).await;
        let response = http.get(format!("{url}{image}")).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{image}");
        // an image type (the TangSengDaoDao fake names its PNGs .jpg too, and the type
        // recorded comes from the name); the bytes are the fakes' PNGs
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            content_type.starts_with("image/"),
            "{image}: {content_type}"
        );
        let body = response.bytes().await.unwrap();
        assert!(body.starts_with(b"\x89PNG\r\n\x1a\n"), "{image}");
    }
    // every source is searchable in Chinese, through the API and on the page
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // 会议
        let found = get_json(
            &http,
            &format!("{url}/api/search?q=%E4%BC%9A%E8%AE%AE&limit=1000"),
        )
        .await;
        let sources: std::collections::BTreeSet<&str> = found["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["source"].as_str().unwrap())
            .collect();
        if sources.len() == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every source indexed: {sources:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let page = get_text(&http, &format!("{url}/?q=%E4%BC%9A%E8%AE%AE")).await;
    assert!(page.contains("<mark>会议</mark>"), "{page}");

    // the scheduler keeps syncing the activity of the fakes
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let status: serde_json::Value = get_json(&http, &format!("{url}/api/status")).await;
        if status[0]["last_run"]["run_id"].as_i64().unwrap_or(0) >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "no scheduled run: {status}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    let out = reader.join().unwrap();
    let err = errors.join().unwrap();
    assert!(exit.success(), "exit {exit:?}\n{out}\n{err}");
    assert!(err.contains("demo stopped"), "{err}");
    assert!(
        !data_dir.exists(),
        "the temporary data directory is removed"
    );
    for secret in [
        "archive-me-123",
        "sim-app-secret-0123",
        "0f3c2a4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b",
    ] {
        assert!(
            !err.contains(secret) && !out.contains(secret),
            "no secret printed"
        );
    }
}

/// The `src` of the first `<img src="/attachment/SOURCE/…">` on `source`'s conversation
/// pages listed on `conversations`.
async fn image_on_a_conversation_page(
    http: &reqwest::Client,
    url: &str,
    conversations: &str,
    source: &str,
) -> String {
    let link = format!("href=\"/c/{source}/");
    let mut seen = 0;
    for part in conversations.split(&link).skip(1) {
        let rest = part.split('"').next().unwrap();
        let page = get_text(http, &format!("{url}/c/{source}/{rest}")).await;
        seen += 1;
        let img = format!("<img src=\"/attachment/{source}/");
        if let Some(at) = page.find(&img) {
            let src = &page[at + "<img src=\"".len()..];
            return src[..src.find('"').unwrap()].replace("&amp;", "&");
        }
    }
    panic!("no image on any of {seen} conversation pages of {source}");
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// Regression: the demo reused a predictable `/tmp/chatvault-demo-<pid>` if it existed and
/// wrote its secret files readable by all before restricting them.
fn assert_demo_files_are_private(data_dir: &Path, pid: u32) {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let name = data_dir.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("chatvault-demo-"), "{name}");
    assert_ne!(name, format!("chatvault-demo-{pid}"), "a predictable name");
    // the cluster's user passes through a root-owned data directory, nothing more
    assert_eq!(mode(data_dir), if root { 0o711 } else { 0o700 });
    assert_eq!(mode(&data_dir.join("secrets")), 0o700);
    let mut secrets = 0;
    for entry in std::fs::read_dir(data_dir.join("secrets")).unwrap() {
        assert_eq!(mode(&entry.unwrap().path()), 0o600);
        secrets += 1;
    }
    assert_eq!(secrets, 3);
    assert_eq!(mode(&data_dir.join("chatvault.toml")), 0o600);
    let mut pending: Vec<PathBuf> = vec![data_dir.join("index")];
    let mut index_files = 0;
    while let Some(path) = pending.pop() {
        let m = mode(&path);
        if std::fs::symlink_metadata(&path).unwrap().is_dir() {
            assert_eq!(m, 0o700, "{}", path.display());
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(m, 0o600, "{}", path.display());
            index_files += 1;
        }
    }
    assert!(index_files > 3, "the index has files");
}

async fn get_json(http: &reqwest::Client, url: &str) -> serde_json::Value {
    http.get(url).send().await.unwrap().json().await.unwrap()
}

async fn get_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url).send().await.unwrap().text().await.unwrap()
}
