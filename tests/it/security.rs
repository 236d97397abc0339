//! The server's defences over real HTTP: forged search cursors, DNS rebinding (the `Host`
//! check), requests from other sites, the sign-in redirect, sessions, sign-in limits,
//! readiness details, and the database kept free for the syncs under a flood of requests.

use crate::common;

use std::time::{Duration, Instant};

use chatvault::config::{PlatformConfig, Secret, ServerConfig, SourceConfig, TsddAuth, TsddConfig};
use chatvault::http::{self as api, ApiState};
use chatvault::index::{Indexer, SearchIndex};
use chatvault::metrics::Metrics;
use chatvault::model::{MessageObservation, SourceName};
use chatvault::store::Store;
use common::{conversation, message, page};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

const TOKEN: &str = "tok-8d2e61f0a9b34c57";

struct Server {
    base: String,
    port: u16,
    _stop: watch::Sender<bool>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        let mut r = self.http.get(self.url(path));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }
}

/// 60 messages that all say 会议, indexed, behind a server with `config`'s access rules.
async fn start(config: ServerConfig) -> (Server, Store) {
    let (store, src) = common::store().await;
    let messages: Vec<MessageObservation> = (1..=60)
        .map(|i| message("c1", &i.to_string(), i, &format!("第{i}次会议纪要")))
        .collect();
    let mut p = page("m/c1", None, 60, messages);
    p.conversations = vec![conversation("c1")];
    store.apply_page(&src, &p).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let index = SearchIndex::open_or_create(dir.path()).unwrap();
    Indexer::new(index.clone()).catch_up(&store).await.unwrap();
    let state = ApiState::new(&store, Metrics::new())
        .with_server(&config)
        .with_search(index);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, shutdown) = watch::channel(false);
    tokio::spawn(api::serve_on(
        listener,
        state,
        shutdown,
        Duration::from_secs(5),
    ));
    let server = Server {
        base: format!("http://{address}"),
        port: address.port(),
        _stop: stop,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        _dir: dir,
    };
    (server, store)
}

fn config(token: Option<&str>, allowed_hosts: &[&str], public_url: Option<&str>) -> ServerConfig {
    ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: token.map(Secret::new),
        shutdown_timeout: Duration::from_secs(5),
        allowed_hosts: allowed_hosts.iter().map(|h| h.to_string()).collect(),
        public_url: public_url.map(str::to_string),
        tokens: Vec::new(),
    }
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// A relevance cursor with an offset of 2^50 made tantivy try to allocate petabytes and
/// abort the process: cursors are signed now, and relevance paging is bounded.
#[tokio::test]
async fn a_forged_cursor_is_400_and_the_server_keeps_answering() {
    use base64::engine::{general_purpose::URL_SAFE_NO_PAD, Engine};
    let (server, _store) = start(config(None, &[], None)).await;
    let q = "/api/search?q=%E4%BC%9A%E8%AE%AE&sort=relevance&limit=10";
    let (status, body) = server.get(q, &[]).await;
    assert_eq!(status, 200, "{body}");
    let cursor = json(&body)["next_cursor"].as_str().unwrap().to_string();
    let (status, _) = server.get(&format!("{q}&cursor={cursor}"), &[]).await;
    assert_eq!(status, 200, "a genuine cursor pages on");

    // the same cursor's payload with a huge offset, with and without its signature
    let (payload, tag) = cursor.split_once('.').unwrap();
    let mut decoded: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    decoded["o"] = Value::from(1u64 << 50);
    let forged = URL_SAFE_NO_PAD.encode(decoded.to_string());
    let old_hex = hex::encode(decoded.to_string());
    for bad in [format!("{forged}.{tag}"), forged.clone(), old_hex] {
        let (status, body) = server.get(&format!("{q}&cursor={bad}"), &[]).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            json(&body)["error"]
                .as_str()
                .unwrap()
                .contains("not a cursor this server gave"),
            "{body}"
        );
    }
    // the web page refuses it the same way
    let (status, page) = server
        .get(
            &format!("/?q=%E4%BC%9A%E8%AE%AE&sort=relevance&cursor={forged}.{tag}"),
            &[],
        )
        .await;
    assert_eq!(status, 200);
    assert!(page.contains("not a cursor this server gave"), "{page}");
    // and the server is alive
    let (status, body) = server.get("/healthz", &[]).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
}

/// Relevance ranking pages at most `MAX_RELEVANCE_DEPTH` deep, with a 400 that says what
/// to do; newest first pages through everything.
#[tokio::test]
async fn relevance_paging_is_bounded_with_a_clear_400() {
    let (server, _store) = start(config(None, &[], None)).await;
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    // 60 hits, 1000 a page would be within; go deep with a page size near the bound
    loop {
        let mut q = "/api/search?q=%E4%BC%9A&sort=relevance&limit=7".to_string();
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = server.get(&q, &[]).await;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        match json(&body)["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 9, "60 hits in pages of 7");
    let limit = chatvault::index::search::MAX_RELEVANCE_DEPTH + 1;
    let limit = limit.min(chatvault::index::search::MAX_LIMIT);
    let (status, body) = server
        .get(
            &format!("/api/search?q=%E4%BC%9A&sort=relevance&limit={limit}"),
            &[],
        )
        .await;
    // a first page of at most MAX_LIMIT is always within the depth
    assert_eq!(status, 200, "{body}");
}

/// DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 sends
/// `Host: evil.example`; the server answers only to its own names.
#[tokio::test]
async fn a_host_name_this_server_does_not_answer_to_is_403() {
    let (server, _store) = start(config(None, &["archive.example.com"], None)).await;
    let port = server.port;
    for path in ["/api/status", "/", "/metrics", "/api/search?q=a", "/readyz"] {
        let (status, body) = server
            .get(path, &[("host", &format!("evil.example:{port}"))])
            .await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("allowed_hosts"), "{body}");
    }
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "archive.example.com".to_string(),
    ] {
        let (status, body) = server.get("/api/status", &[("host", &host)]).await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    // health checks answer whatever the name
    let (status, _) = server.get("/healthz", &[("host", "evil.example")]).await;
    assert_eq!(status, 200);
}

/// Another site's page can link to the archive, but not read from it or post to it.
#[tokio::test]
async fn requests_from_other_sites_are_refused_but_links_open_pages() {
    let (server, _store) = start(config(None, &[], None)).await;
    let own = server.base.clone();
    let (status, _) = server
        .get("/api/status", &[("origin", "http://evil.example")])
        .await;
    assert_eq!(status, 403);
    let (status, _) = server.get("/api/status", &[("origin", "null")]).await;
    assert_eq!(status, 403);
    let (status, _) = server.get("/api/status", &[("origin", &own)]).await;
    assert_eq!(status, 200, "the page's own origin");
    let fetch = [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-mode", "cors"),
        ("sec-fetch-dest", "empty"),
    ];
    let (status, _) = server.get("/api/search?q=a", &fetch).await;
    assert_eq!(status, 403, "a cross-site fetch");
    let image = [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-mode", "no-cors"),
        ("sec-fetch-dest", "image"),
    ];
    let (status, _) = server.get("/?q=%E4%BC%9A", &image).await;
    assert_eq!(status, 403, "a page embedded elsewhere");
    let link = [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-dest", "document"),
        ("accept", "text/html"),
    ];
    let (status, _) = server.get("/c/s/c1", &link).await;
    assert_eq!(status, 200, "following a link to a page");
    let (status, _) = server.get("/api/status", &link).await;
    assert_eq!(status, 403, "a link to the API is not a page");
    // a sign-in posted from elsewhere
    let r = server
        .http
        .post(server.url("/login"))
        .header("origin", "http://evil.example")
        .form(&[("token", TOKEN), ("next", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
}

/// `next=/%09/evil.example` passed the old local-path check; browsers drop the TAB and
/// land on `//evil.example`.
#[tokio::test]
async fn sign_in_never_redirects_off_the_server() {
    let (server, _store) = start(config(Some(TOKEN), &[], None)).await;
    for next in [
        "/%09/evil.example",
        "/%0d%0a/evil.example",
        "//evil.example",
        "/\\evil.example",
        "https://evil.example/",
    ] {
        let r = server
            .http
            .post(server.url("/login"))
            .form(&[("token", TOKEN), ("next", next)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 303, "{next}");
        assert_eq!(r.headers()["location"], "/", "{next}");
    }
    let r = server
        .http
        .post(server.url("/login"))
        .form(&[("token", TOKEN), ("next", "/c/s/c1?around=3")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/c/s/c1?around=3");
}

/// A session lasts a limited time, ends at sign-out (also on the server: the old cookie
/// stops working), and is `Secure` behind an https public URL.
#[tokio::test]
async fn sessions_expire_end_at_sign_out_and_are_secure_behind_https() {
    let (server, _store) = start(config(
        Some(TOKEN),
        &["archive.example.com"],
        Some("https://archive.example.com"),
    ))
    .await;
    let r = server
        .http
        .post(server.url("/login"))
        .form(&[("token", TOKEN), ("next", "/status")])
        .send()
        .await
        .unwrap();
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("Max-Age=43200"), "{cookie}");
    assert!(cookie.contains("Secure"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(!cookie.contains(TOKEN));
    let session = cookie.split(';').next().unwrap().to_string();
    let (status, page) = server
        .get("/status", &[("cookie", &session), ("accept", "text/html")])
        .await;
    assert_eq!(status, 200);
    assert!(page.contains("action=\"/logout\""), "a sign-out button");

    let r = server
        .http
        .post(server.url("/logout"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let cleared = r.headers()["set-cookie"].to_str().unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let (status, _) = server.get("/api/status", &[("cookie", &session)]).await;
    assert_eq!(status, 401, "the old cookie no longer opens anything");
}

/// Guessing the token through the sign-in form is slowed to a crawl.
#[tokio::test]
async fn wrong_sign_ins_are_rate_limited() {
    let (server, _store) = start(config(Some(TOKEN), &[], None)).await;
    let post = |token: &'static str| {
        server
            .http
            .post(server.url("/login"))
            .form(&[("token", token)])
            .send()
    };
    for _ in 0..chatvault::http::access::LOGIN_FAILURES {
        assert_eq!(
            post("guess-0123456789abcdef")
                .await
                .unwrap()
                .status()
                .as_u16(),
            401
        );
    }
    let r = post("guess-0123456789abcdef").await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.headers().contains_key("retry-after"));
    // even the right token waits: the limit is on attempts, not on guesses
    assert_eq!(post(TOKEN).await.unwrap().status().as_u16(), 429);
}

/// `/readyz` says why it is not ready only to those who may read the archive.
#[tokio::test]
async fn readyz_keeps_its_reason_for_those_with_the_token() {
    let (store, _) = common::store().await;
    // an archive whose migrations table says a migration is missing
    sqlx::query("DELETE FROM _sqlx_migrations")
        .execute(store.pool())
        .await
        .unwrap();
    let state = ApiState::new(&store, Metrics::new()).with_token(Some(Secret::new(TOKEN)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (_stop, shutdown) = watch::channel(false);
    tokio::spawn(api::serve_on(
        listener,
        state,
        shutdown,
        Duration::from_secs(5),
    ));
    let http = reqwest::Client::new();
    let r = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.text().await.unwrap(), "database unavailable");
    let r = http
        .get(format!("{base}/readyz"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.text().await.unwrap().contains("chatvault migrate"));
}

fn tsdd_source(
    server: &chatvault::sim::tangsengdaodao::SimServer,
    spec: &chatvault::sim::tangsengdaodao::WorldSpec,
) -> SourceConfig {
    SourceConfig {
        name: SourceName::new("s"),
        schedule: "0 */5 * * * *".into(),
        requests_per_second: 0.0,
        request_timeout: Duration::from_secs(10),
        enabled: true,
        push: true,
        platform: PlatformConfig::Tangsengdaodao(TsddConfig {
            base_url: server.base_url(),
            auth: TsddAuth::Password {
                username: spec.me_username.clone(),
                password: Secret::new(&spec.me_password),
            },
            device_flag: 1,
            page_size: 100,
        }),
    }
}

/// The server's counts come from a snapshot and its queries from a pool of its own: bursts
/// of 200 requests at once to `/metrics`, `/api/status` and `/status`, every 100 ms during
/// a sync, leave the sync's duration within twice that of a quiet one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_requests_does_not_starve_the_syncs() {
    use chatvault::sim::tangsengdaodao::{SimServer, World, WorldSpec};
    use chatvault::sync::{sync_source, SyncOptions};
    let spec = WorldSpec {
        seed: 3,
        users: 10,
        groups: 4,
        direct_chats: 4,
        messages: 3000,
        ..WorldSpec::default()
    };
    let upstream = SimServer::start(World::generate(&spec)).await;
    let source = tsdd_source(&upstream, &spec);
    let options = SyncOptions::default();

    // a quiet sync (the second of two, so both measured runs start warm)
    let mut quiet = Duration::MAX;
    for _ in 0..2 {
        let (store, _) = common::store().await;
        let started = Instant::now();
        assert!(sync_source(&store, &source, &options, None).await.ok());
        quiet = quiet.min(started.elapsed());
    }

    let (store, _) = common::store().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (_stop, shutdown) = watch::channel(false);
    let state = ApiState::new(&store, Metrics::new());
    tokio::spawn(api::serve_on(
        listener,
        state,
        shutdown,
        Duration::from_secs(5),
    ));
    let flood = {
        let http = reqwest::Client::new();
        tokio::spawn(async move {
            loop {
                let requests = (0..200).map(|i| {
                    let path = ["/metrics", "/api/status", "/status"][i % 3];
                    http.get(format!("{base}{path}")).send()
                });
                futures::future::join_all(requests).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let result = sync_source(&store, &source, &options, None).await;
    let loaded = started.elapsed();
    assert!(result.ok(), "{:?}", result.error);
    flood.abort();
    eprintln!("sync: {quiet:?} quiet, {loaded:?} under the requests");
    assert!(
        loaded <= quiet * 2 + Duration::from_millis(500),
        "the sync took {loaded:?} under load against {quiet:?} quiet"
    );
}

/// A server that answers everything with `status` and a `Location` on `target`, counting
/// what it was sent.
async fn redirecting(status: u16, target: String) -> String {
    use axum::response::IntoResponse;
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let target = target.clone();
        async move {
            (
                axum::http::StatusCode::from_u16(status).unwrap(),
                [("location", format!("{target}{}", uri.path()))],
            )
                .into_response()
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// Everything a server was sent: `(method path, headers, body)`.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>;

async fn recording() -> (String, Seen) {
    let seen: Seen = Default::default();
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let log = log.clone();
        async move {
            let line = format!("{} {}", request.method(), request.uri());
            let headers = format!("{:?}", request.headers());
            let body = axum::body::to_bytes(request.into_body(), 1 << 20)
                .await
                .unwrap_or_default();
            log.lock()
                .unwrap()
                .push((line, headers, String::from_utf8_lossy(&body).into_owned()));
            "{}"
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, seen)
}

/// The HTTP client followed redirects to other hosts with the `token` header, and a 307 or
/// 308 sent the login body, password and all, again. Another origin now sees nothing, and
/// the run fails naming the source and what happened.
#[tokio::test]
async fn credentials_never_follow_a_redirect_to_another_origin() {
    use chatvault::config::YunhuConfig;
    use chatvault::sync::{sync_source, SyncOptions};
    let (elsewhere, seen) = recording().await;
    let options = SyncOptions {
        max_retries: 0,
        ..SyncOptions::default()
    };
    for status in [302, 307, 308] {
        let upstream = redirecting(status, elsewhere.clone()).await;
        let tsdd = SourceConfig {
            name: SourceName::new("acme-tsdd"),
            schedule: "0 */5 * * * *".into(),
            requests_per_second: 0.0,
            request_timeout: Duration::from_secs(5),
            enabled: true,
            push: true,
            platform: PlatformConfig::Tangsengdaodao(TsddConfig {
                base_url: upstream.clone(),
                auth: TsddAuth::Password {
                    username: "008613800000000".into(),
                    password: Secret::new("pw-do-not-leak"),
                },
                device_flag: 1,
                page_size: 100,
            }),
        };
        let yunhu = SourceConfig {
            name: SourceName::new("acme-yunhu"),
            platform: PlatformConfig::Yunhu(YunhuConfig {
                base_url: upstream,
                token: Secret::new("yh-token-do-not-leak"),
                rescan_messages: 10,
                rescan_days: 1,
                rescan_every_minutes: 0,
                ws_url: chatvault::connector::yunhu::push::DEFAULT_WS_URL.into(),
            }),
            ..tsdd.clone()
        };
        for source in [tsdd, yunhu] {
            let (store, _) = common::store().await;
            let result = sync_source(&store, &source, &options, None).await;
            assert!(!result.ok(), "{status}: the run cannot succeed");
            let error = result.error.unwrap_or_default();
            assert!(error.contains(source.name.as_str()), "{status}: {error}");
            assert!(error.contains("another origin"), "{status}: {error}");
            assert!(error.contains(&elsewhere), "names where it led: {error}");
            assert!(!error.contains("do-not-leak"), "{error}");
        }
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "the other origin saw requests: {:?}",
        seen.lock().unwrap()
    );
}
