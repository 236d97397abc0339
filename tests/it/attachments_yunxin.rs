//! NetEase Yunxin attachments, the connector's part, against the fake over real HTTP: after
//! a sync, every stored version lists exactly the NOS file the fake's truth says (with its
//! declared md5), and each `media_request` sent with a plain client gets the bytes the
//! truth's sha256 names, or the 404 / 403 of a deleted object and an expired signed URL.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chatvault::attachments::AttachmentKind;
use chatvault::config::{PlatformConfig, Secret, SourceConfig, YunxinConfig};
use chatvault::connector::{self, http::HttpClient, Connector};
use chatvault::model::{Content, MessageKind, SourceName};
use chatvault::sim::serve::RequestFailure;
use chatvault::sim::yunxin::{
    now_ms, AttachmentTruth, MediaOutcome, SimServer, World, WorldSpec, NOS_PATH,
};
use chatvault::store::Store;
use chatvault::sync::{sync_source, SyncOptions};
use md5::Md5;
use sha2::{Digest, Sha256};

fn spec(media_quirks: bool, end_ms: i64) -> WorldSpec {
    WorldSpec {
        seed: 41,
        accounts: 2,
        users: 8,
        teams: 2,
        super_teams: 1,
        direct_chats: 2,
        messages: 700,
        end_ms,
        days: 20,
        media_quirks,
        ..WorldSpec::default()
    }
}

fn source(server: &SimServer) -> SourceConfig {
    let w = server.world();
    SourceConfig {
        name: SourceName::new("yx"),
        schedule: "0 */5 * * * *".into(),
        requests_per_second: 0.0,
        request_timeout: Duration::from_secs(5),
        enabled: true,
        push: true,
        platform: PlatformConfig::Yunxin(YunxinConfig {
            base_url: server.base_url(),
            app_key: w.app_key.clone(),
            app_secret: Secret::new(w.app_secret.clone()),
            accounts: w.accounts.clone(),
            history_start: None,
            rescan_days: 7,
        }),
    }
}

/// A fake world served, synced into a fresh archive; its connector.
async fn synced() -> (SimServer, Store, Box<dyn Connector>) {
    let mut world = World::generate(&spec(true, now_ms() - 2 * 3_600_000));
    world.behaviour.rate_limit = None;
    world.behaviour.clock_lag_ms = 20_000;
    let server = SimServer::start(world).await;
    let (store, _) = common::store().await;
    let src = source(&server);
    let options = SyncOptions {
        backoff_base: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        ..SyncOptions::default()
    };
    let result = sync_source(&store, &src, &options, None).await;
    assert!(!result.skipped);
    let http = HttpClient::new(0.0, Duration::from_secs(5)).unwrap();
    let connector = connector::build(&src, http, None).unwrap();
    (server, store, connector)
}

/// Every stored version: `(conversation, message, version)` → its content.
async fn versions(store: &Store) -> BTreeMap<(String, String, i32), Content> {
    let rows: Vec<(String, String, i32, String, serde_json::Value, String)> = sqlx::query_as(
        "SELECT v.conversation_id, v.message_id, v.version, v.text, v.content, m.kind
         FROM archive.message_versions v
         JOIN archive.messages m USING (source, conversation_id, message_id)
         WHERE v.source = 'yx'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    rows.into_iter()
        .map(|(c, m, v, text, content, kind)| {
            let content = Content {
                kind: MessageKind::parse(&kind),
                text,
                content,
            };
            ((c, m, v), content)
        })
        .collect()
}

/// The truth's files by message id.
fn truth(server: &SimServer) -> BTreeMap<String, Vec<AttachmentTruth>> {
    server
        .truth()
        .into_iter()
        .flat_map(|c| c.messages)
        .map(|m| (m.message_id, m.attachments))
        .collect()
}

fn kind_of(message_type: i64) -> AttachmentKind {
    match message_type {
        1 => AttachmentKind::Image,
        2 => AttachmentKind::Voice,
        3 => AttachmentKind::Video,
        _ => AttachmentKind::File,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stored_version_lists_the_files_the_truth_says_and_each_download_is_them() {
    let (server, store, connector) = synced().await;
    let truth = truth(&server);
    let versions = versions(&store).await;
    assert!(versions.len() > 300, "{} versions", versions.len());

    // 1. what each stored version references is exactly what the truth says
    let mut files: BTreeMap<String, AttachmentTruth> = BTreeMap::new();
    for ((conv, id, version), content) in &versions {
        let refs = connector.attachments(content);
        let want = &truth[id];
        assert_eq!(refs.len(), want.len(), "{conv} {id} v{version}: {refs:?}");
        for (r, t) in refs.iter().zip(want) {
            assert_eq!(r.url, t.url, "{id}");
            assert_eq!(r.kind, kind_of(t.message_type), "{id}");
            assert_eq!(r.md5.as_deref(), Some(t.declared_md5.as_str()), "{id}");
            assert_eq!(r.size, Some(t.size as i64), "{id}");
            assert!(r.mime.is_some(), "{id}: {r:?}");
            if r.kind == AttachmentKind::Image {
                assert!(r.width.is_some() && r.height.is_some(), "{r:?}");
            }
            if matches!(r.kind, AttachmentKind::Voice | AttachmentKind::Video) {
                assert!(r.duration_ms.is_some(), "{r:?}");
            }
            files.insert(r.url.clone(), t.clone());
        }
    }
    let kinds: BTreeSet<i64> = files.values().map(|t| t.message_type).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([1, 2, 3, 6]),
        "every media type archived"
    );
    let outcomes: BTreeSet<_> = files.values().map(|t| format!("{:?}", t.outcome)).collect();
    assert_eq!(
        outcomes.len(),
        3,
        "served, gone and expired all archived: {outcomes:?}"
    );
    assert_eq!(
        files.values().filter(|t| t.md5 != t.declared_md5).count(),
        1,
        "one file declares a wrong md5"
    );
    assert!(
        files.values().any(|t| t.json_string),
        "an attachment sent as a JSON string is read"
    );

    // 2. each media request, sent with a plain client, gets what the truth says
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let before = server.request_count_for(NOS_PATH);
    let mut served = 0;
    for (url, t) in &files {
        let reference = versions
            .values()
            .flat_map(|c| connector.attachments(c))
            .find(|r| &r.url == url)
            .unwrap();
        let request = connector.media_request(&reference).await.unwrap();
        assert!(request.headers.is_empty() && request.credentials.is_empty());
        let response = client.get(request.url.clone()).send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap();
        match t.outcome {
            MediaOutcome::Served => {
                assert_eq!(status, 200, "{url}");
                assert_eq!(body.len(), t.size, "{url}");
                assert_eq!(hex::encode(Sha256::digest(&body)), t.sha256, "{url}");
                let md5 = hex::encode(Md5::digest(&body));
                assert_eq!(md5, t.md5, "{url}");
                assert_eq!(
                    md5 == reference.md5.clone().unwrap(),
                    t.md5 == t.declared_md5
                );
                if t.message_type == 1 {
                    assert_eq!(&body[..8], b"\x89PNG\r\n\x1a\n", "images are PNGs");
                }
                served += 1;
            }
            MediaOutcome::Gone => {
                assert_eq!(status, 404, "{url}");
                assert!(String::from_utf8_lossy(&body).contains("NoSuchKey"));
            }
            MediaOutcome::Expired => {
                assert_eq!(status, 403, "{url}");
                assert!(url.contains("Expires="), "{url}");
                assert!(String::from_utf8_lossy(&body).contains("AccessDenied"));
            }
        }
    }
    assert_eq!(served, files.len() - 2);
    assert_eq!(
        server.request_count_for(NOS_PATH) - before,
        files.len() as u64,
        "NOS requests are counted"
    );

    // 3. a NOS request can be failed once like any other, and is answered again after
    let (url, _) = files
        .iter()
        .find(|(_, t)| t.outcome == MediaOutcome::Served)
        .unwrap();
    server.fail_request(1, RequestFailure::BadGateway);
    let first = client.get(url.as_str()).send().await.unwrap();
    assert_eq!(first.status().as_u16(), 502);
    assert!(!server.failure_pending());
    let again = client.get(url.as_str()).send().await.unwrap();
    assert_eq!(again.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_that_is_not_http_is_refused_with_a_clear_error() {
    let server = SimServer::start(World::generate(&WorldSpec {
        messages: 10,
        ..WorldSpec::default()
    }))
    .await;
    let src = source(&server);
    let http = HttpClient::new(0.0, Duration::from_secs(5)).unwrap();
    let connector = connector::build(&src, http, None).unwrap();
    let content = Content {
        kind: MessageKind::File,
        text: String::new(),
        content: serde_json::json!({"message_type": 6, "attachment":
            {"name": "x.pdf", "url": "file:///etc/passwd", "md5": "79d62a35fa3d34c367b20c66afc2a500"}}),
    };
    let refs = connector.attachments(&content);
    assert_eq!(
        refs.len(),
        1,
        "the reference is kept, so the archive knows of it"
    );
    let err = connector.media_request(&refs[0]).await.unwrap_err();
    assert!(
        matches!(err, chatvault::connector::ConnectorError::Permanent(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("http(s)"), "{err}");
}

#[test]
fn the_nos_quirks_can_be_switched_off() {
    let end = now_ms() - 2 * 3_600_000;
    let world = World::generate(&spec(false, end));
    let files: Vec<AttachmentTruth> = world
        .truth()
        .into_iter()
        .flat_map(|c| c.messages)
        .flat_map(|m| m.attachments)
        .collect();
    assert!(files.len() > 50, "{}", files.len());
    assert!(files.iter().all(|t| t.outcome == MediaOutcome::Served
        && t.md5 == t.declared_md5
        && !t.json_string
        && !t.url.contains("Expires=")));
    // and with them on, the same world but for the quirks
    let quirky = World::generate(&spec(true, end));
    assert_eq!(quirky.messages.len(), world.messages.len());
    assert_eq!(quirky.media.len(), world.media.len());
    let differ = quirky
        .messages
        .iter()
        .zip(&world.messages)
        .filter(|(a, b)| a.attachment != b.attachment)
        .count();
    assert_eq!(differ, 3, "the expired URL, the wrong md5, the JSON string");
}

/// The fake's images are PNGs a browser decodes: headless Chromium loads a few of them from
/// the fake and reports each one's natural size, which is the size the message declares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_renders_the_fakes_images_at_their_declared_size() {
    const CHROMIUM: &str = "/usr/bin/chromium";
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: apt-get install chromium (.ci/run installs it)"
    );
    let server = SimServer::start(World::generate(&spec(false, now_ms() - 3_600_000))).await;
    let images: Vec<(String, u32, u32)> = {
        let w = server.world();
        w.messages
            .iter()
            .filter(|m| m.message_type == 1)
            .filter_map(|m| {
                let a = m.attachment.as_ref()?;
                let (dw, dh) = w.media_of(m)?.dimensions()?;
                assert_eq!(
                    (a["w"].as_u64(), a["h"].as_u64()),
                    (Some(dw.into()), Some(dh.into()))
                );
                Some((a["url"].as_str()?.to_string(), dw, dh))
            })
            .take(5)
            .collect()
    };
    assert_eq!(images.len(), 5);
    let dir = tempfile::tempdir().unwrap();
    let imgs: String = images
        .iter()
        .enumerate()
        .map(|(i, (url, _, _))| {
            format!(
                "<img id=\"i{i}\" src=\"{url}\" onload=\"document.body.setAttribute('data-i{i}', \
                 this.naturalWidth + 'x' + this.naturalHeight)\" \
                 onerror=\"document.body.setAttribute('data-i{i}', 'error')\">"
            )
        })
        .collect();
    let page = dir.path().join("images.html");
    std::fs::write(&page, format!("<html><body>{imgs}</body></html>")).unwrap();
    let profile = dir.path().join("profile");
    let dom = tokio::task::spawn_blocking(move || {
        std::process::Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-dev-shm-usage",
                "--virtual-time-budget=5000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("--dump-dom")
            .arg(format!("file://{}", page.display()))
            .stderr(std::process::Stdio::null())
            .output()
            .expect("run chromium")
    })
    .await
    .unwrap();
    let dom = String::from_utf8_lossy(&dom.stdout);
    for (i, (url, w, h)) in images.iter().enumerate() {
        assert!(
            dom.contains(&format!("data-i{i}=\"{w}x{h}\"")),
            "{url} not rendered at {w}x{h}: {dom}"
        );
    }
}
