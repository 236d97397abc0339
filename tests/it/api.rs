//! The HTTP API over real HTTP against a real PostgreSQL: health, readiness, metrics,
//! status, the bearer token and the loopback rule.

use crate::common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use chatvault::config::{Secret, ServerConfig};
use chatvault::http::{self as api, ApiState};
use chatvault::metrics::Metrics;
use chatvault::model::{QuarantineRecord, SourceName};
use chatvault::store::{RunCounts, RunStatus, Store};
use chatvault::sync::SourceResult;
use common::*;
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const TOKEN: &str = "tok-3f9a1c27e5d84b60";

/// A running API on `127.0.0.1:<ephemeral port>`.
struct Server {
    base: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<anyhow::Result<()>>,
    http: reqwest::Client,
}

impl Server {
    async fn start(store: Store, token: Option<&str>) -> Server {
        Server::start_with(state(store, token)).await
    }

    async fn start_with(state: ApiState) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(api::serve_on(
            listener,
            state,
            shutdown,
            Duration::from_secs(5),
        ));
        Server {
            base: format!("http://{address}"),
            stop,
            task,
            http: reqwest::Client::new(),
        }
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
    }

    async fn get_with_token(&self, path: &str, token: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    /// Ask for shutdown and check the server stops cleanly and promptly.
    async fn stop(self) {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server stops after shutdown")
            .unwrap()
            .expect("the server ends without error");
    }
}

fn state(store: Store, token: Option<&str>) -> ApiState {
    ApiState::new(&store, Metrics::new()).with_token(token.map(Secret::new))
}

/// A store whose database does not exist: a socket directory nobody listens in.
fn unreachable_store() -> Store {
    let options = PgConnectOptions::new()
        .socket("/nonexistent/chatvault-test-socket-dir")
        .username("nobody")
        .database("nothing");
    let pool = PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy_with(options);
    Store::from_pool(pool)
}

/// A store with source `s` holding two messages, one conversation and one quarantined record.
async fn store_with_data() -> (Store, SourceName) {
    let (store, source) = store().await;
    let mut p = page(
        "messages/c",
        None,
        2,
        vec![message("c", "1", 1, "你好"), message("c", "2", 2, "hello")],
    );
    p.conversations.push(conversation("c"));
    p.quarantine.push(QuarantineRecord {
        reason: "cannot decode payload".into(),
        raw: json!({"message_idstr": "3", "payload": "garbage"}),
    });
    store.apply_page(&source, &p).await.unwrap();
    (store, source)
}

fn made_up_result(source: &str) -> SourceResult {
    SourceResult {
        source: SourceName::new(source),
        run_id: Some(7),
        status: RunStatus::Ok,
        counts: RunCounts {
            messages_new: 12,
            messages_changed: 3,
            requests: 9,
            retries: 2,
        },
        conversations: 1,
        failed_conversations: Vec::new(),
        error: None,
        skipped: false,
        rate_limit_waits: 1,
        failed_requests: 2,
        duration: Duration::from_millis(1500),
        heads_published: None,
    }
}

/// Parses the Prometheus text format, checking that every sample line is
/// `name{labels} value` of a family announced before by `# HELP` and `# TYPE`.
/// Returns `(name, labels, value)` per sample.
fn parse_prometheus(text: &str) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = Vec::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.push(rest.split_once(' ').unwrap().0.to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(helped.iter().any(|h| h == name), "TYPE before HELP: {line}");
            typed.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                let mut labels = BTreeMap::new();
                // our test label values hold no quotes, commas or escapes
                for pair in body.split(',') {
                    let (k, v) = pair.split_once('=').expect("label is k=v");
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .expect("label value quoted");
                    labels.insert(k.to_owned(), v.to_owned());
                }
                (name.to_owned(), labels)
            }
        };
        assert!(name.starts_with("chatvault_"), "named chatvault_*: {line}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                let base = name.strip_suffix(s)?;
                (typed.get(base).map(String::as_str) == Some("histogram")).then_some(base)
            })
            .unwrap_or(&name)
            .to_owned();
        assert!(typed.contains_key(&family), "sample before TYPE: {line}");
        samples.push((name, labels, value));
    }
    samples
}

fn sample(
    samples: &[(String, BTreeMap<String, String>, f64)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

#[tokio::test]
async fn healthz_answers_ok() {
    let server = Server::start(unreachable_store(), None).await;
    let response = server.get("/healthz").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");
    server.stop().await;
}

#[tokio::test]
async fn readyz_is_200_once_migrated_and_503_before() {
    let pool = chatvault::pg::testing::fresh_pool().await;
    let store = Store::from_pool(pool);
    let server = Server::start(store.clone(), None).await;

    let response = server.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let reason = response.text().await.unwrap();
    assert!(reason.contains("chatvault migrate"), "{reason}");
    assert!(!reason.contains('\n'), "one line: {reason:?}");

    store.migrate().await.unwrap();
    let response = server.get("/readyz").await;
    assert_eq!(response.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn readyz_is_503_when_the_database_is_unreachable() {
    let store = unreachable_store();
    let server = Server::start(store, None).await;
    let response = server.get("/readyz").await;
    assert_eq!(response.status(), 503);
    let reason = response.text().await.unwrap();
    assert!(reason.contains("database"), "{reason}");
    assert!(!reason.contains('\n'), "one line: {reason:?}");

    // the process is still healthy, metrics still answer and say the database is down
    assert_eq!(server.get("/healthz").await.status(), 200);
    let response = server.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let samples = parse_prometheus(&response.text().await.unwrap());
    assert_eq!(sample(&samples, "chatvault_database_up", &[]), Some(0.0));

    let response = server.get("/api/status").await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("status"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn metrics_parse_and_counters_move_after_a_run() {
    let (store, _) = store_with_data().await;
    let state = state(store, None);
    let metrics = state.metrics().clone();
    let server = Server::start_with(state).await;

    // before any run: archive gauges come from the store
    let response = server.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let samples = parse_prometheus(&response.text().await.unwrap());
    let s = [("source", "s")];
    assert_eq!(sample(&samples, "chatvault_messages", &s), Some(2.0));
    assert_eq!(
        sample(&samples, "chatvault_quarantine_records", &s),
        Some(1.0)
    );
    let events = sample(&samples, "chatvault_events", &s).unwrap();
    assert!(events >= 2.0, "events {events}");
    assert_eq!(sample(&samples, "chatvault_database_up", &[]), Some(1.0));
    assert_eq!(
        sample(&samples, "chatvault_messages_new_total", &s),
        None,
        "no run yet"
    );
    assert!(sample(&samples, "chatvault_process_resident_memory_bytes", &[]).unwrap() > 0.0);

    metrics.record_run(&made_up_result("s"));
    metrics.run_skipped("s");
    let samples = parse_prometheus(&server.get("/metrics").await.text().await.unwrap());
    assert_eq!(
        sample(
            &samples,
            "chatvault_sync_runs_total",
            &[("source", "s"), ("outcome", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&samples, "chatvault_messages_new_total", &s),
        Some(12.0)
    );
    assert_eq!(
        sample(&samples, "chatvault_messages_changed_total", &s),
        Some(3.0)
    );
    assert_eq!(
        sample(&samples, "chatvault_upstream_requests_total", &s),
        Some(9.0)
    );
    assert_eq!(
        sample(&samples, "chatvault_upstream_request_failures_total", &s),
        Some(2.0)
    );
    assert_eq!(
        sample(&samples, "chatvault_upstream_retries_total", &s),
        Some(2.0)
    );
    assert_eq!(
        sample(&samples, "chatvault_rate_limit_waits_total", &s),
        Some(1.0)
    );
    assert_eq!(
        sample(&samples, "chatvault_runs_skipped_total", &s),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &samples,
            "chatvault_sync_run_duration_seconds_bucket",
            &[("source", "s"), ("le", "+Inf")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&samples, "chatvault_sync_run_duration_seconds_sum", &s),
        Some(1.5)
    );
    assert!(sample(&samples, "chatvault_last_success_timestamp_seconds", &s).is_some());
    server.stop().await;
}

#[tokio::test]
async fn api_status_is_the_status_json_array() {
    let (store, _) = store_with_data().await;
    let server = Server::start(store.clone(), None).await;
    let response = server.get("/api/status").await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: Value = response.json().await.unwrap();
    let expected = serde_json::to_value(store.status().await.unwrap()).unwrap();
    assert_eq!(body, expected);
    let sources = body.as_array().expect("a JSON array");
    assert_eq!(sources.len(), 1);
    assert_eq!(sources[0]["source"], "s");
    assert_eq!(sources[0]["messages"], 2);
    assert_eq!(sources[0]["quarantine"], 1);
    server.stop().await;
}

#[tokio::test]
async fn unknown_paths_are_404_json() {
    let (store, _) = store().await;
    let server = Server::start(store, None).await;
    let response = server.get("/nope?x=1").await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("/nope"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn with_a_token_only_the_right_bearer_gets_in() {
    let (store, _) = store().await;
    let server = Server::start(store, Some(TOKEN)).await;

    for path in ["/metrics", "/api/status", "/nope"] {
        let response = server.get(path).await;
        assert_eq!(response.status(), 401, "{path} without a token");
        let challenge = response.headers()["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer"), "{challenge}");
        let body = response.text().await.unwrap();
        let body: Value = serde_json::from_str(&body).unwrap();
        assert!(body["error"].is_string());
        assert!(!body.to_string().contains(TOKEN));

        let wrong = server.get_with_token(path, "tok-3f9a1c27e5d84b61").await;
        assert_eq!(wrong.status(), 401, "{path} with a wrong token");
        let prefix = server.get_with_token(path, &TOKEN[..8]).await;
        assert_eq!(prefix.status(), 401, "{path} with a prefix of the token");
    }
    let basic = server
        .http
        .get(format!("{}/metrics", server.base))
        .header("authorization", format!("Basic {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);

    assert_eq!(server.get_with_token("/metrics", TOKEN).await.status(), 200);
    assert_eq!(
        server.get_with_token("/api/status", TOKEN).await.status(),
        200
    );
    assert_eq!(server.get_with_token("/nope", TOKEN).await.status(), 404);

    // probes stay open
    assert_eq!(server.get("/healthz").await.status(), 200);
    assert_eq!(server.get("/readyz").await.status(), 200);
    server.stop().await;
}

fn server_config(listen: &str, token: Option<&str>) -> ServerConfig {
    ServerConfig {
        listen: listen.parse().unwrap(),
        token: token.map(Secret::new),
        shutdown_timeout: Duration::from_secs(5),
        allowed_hosts: Vec::new(),
        public_url: None,
        tokens: Vec::new(),
    }
}

#[tokio::test]
async fn serve_refuses_a_public_address_without_a_token() {
    let (store, _) = store().await;
    let (_stop, shutdown) = watch::channel(false);
    let err = api::serve(
        &server_config("0.0.0.0:0", None),
        state(store, None),
        shutdown,
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "refusing to listen on 0.0.0.0:0 without server.token: set server.token \
         (or CHATVAULT_SERVER_TOKEN) or listen on 127.0.0.1"
    );
}

#[tokio::test]
async fn serve_listens_on_a_public_address_with_a_token_and_stops_on_shutdown() {
    let (store, _) = store().await;
    for (config_token, state_token) in [(Some(TOKEN), Some(TOKEN)), (Some(TOKEN), None)] {
        let (stop, shutdown) = watch::channel(false);
        let config = server_config("0.0.0.0:0", config_token);
        let state = state(store.clone(), state_token);
        let task = tokio::spawn(async move { api::serve(&config, state, shutdown).await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!task.is_finished(), "serve is still serving");
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("serve stops after shutdown")
            .unwrap()
            .expect("serve ends without error");
    }
}

#[tokio::test]
async fn serve_says_when_the_address_is_in_use() {
    let (store, _) = store().await;
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address: SocketAddr = taken.local_addr().unwrap();
    let (_stop, shutdown) = watch::channel(false);
    let err = api::serve(
        &server_config(&address.to_string(), Some(TOKEN)),
        state(store, Some(TOKEN)),
        shutdown,
    )
    .await
    .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains(&address.to_string()), "{message}");
    assert!(message.contains("already in use"), "{message}");
    assert!(!message.contains(TOKEN), "{message}");
}

#[tokio::test]
async fn serve_stops_when_the_shutdown_sender_is_dropped() {
    let (store, _) = store().await;
    let server = Server::start(store, None).await;
    assert_eq!(server.get("/healthz").await.status(), 200);
    let Server { stop, task, .. } = server;
    drop(stop);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
}
