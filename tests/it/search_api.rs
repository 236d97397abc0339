//! `GET /api/search` over real HTTP: filters, cursor pagination, errors, the token rule.

use crate::common;

use std::time::Duration;

use chatvault::config::Secret;
use chatvault::http::{self as api, ApiState};
use chatvault::index::{Indexer, SearchIndex};
use chatvault::metrics::Metrics;
use chatvault::model::MessageObservation;
use chatvault::store::Store;
use common::{conversation, message, page};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

const TOKEN: &str = "tok-8d2e61f0a9b34c57";

struct Server {
    base: String,
    _stop: watch::Sender<bool>,
    http: reqwest::Client,
}

impl Server {
    async fn get(&self, path_and_query: &str, token: Option<&str>) -> (u16, Value) {
        let mut r = self.http.get(format!("{}{path_and_query}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

async fn start(token: Option<&str>) -> (Server, Store, tempfile::TempDir) {
    let (store, src) = common::store().await;
    let mut messages: Vec<MessageObservation> = (1..=5)
        .map(|i| message("c1", &i.to_string(), i, &format!("第{i}次会议纪要")))
        .collect();
    messages.push(message("c2", "6", 6, "会议改期"));
    messages.push(message("c2", "7", 7, "budget meeting notes"));
    let mut p = page("m/c1", None, 7, messages);
    p.conversations = vec![conversation("c1"), conversation("c2")];
    store.apply_page(&src, &p).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let index = SearchIndex::open_or_create(dir.path()).unwrap();
    Indexer::new(index.clone()).catch_up(&store).await.unwrap();
    let state = ApiState::new(&store, Metrics::new())
        .with_token(token.map(Secret::new))
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
        _stop: stop,
        http: reqwest::Client::new(),
    };
    (server, store, dir)
}

fn ids(body: &Value) -> Vec<String> {
    body["hits"]
        .as_array()
        .expect("hits")
        .iter()
        .map(|h| h["message_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn search_pages_with_a_cursor_and_filters() {
    let (server, _store, _dir) = start(None).await;
    let mut all = Vec::new();
    let mut path = "/api/search?q=%E4%BC%9A%E8%AE%AE&limit=2".to_string(); // 会议
    let mut pages = 0;
    loop {
        let (status, body) = server.get(&path, None).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["total"], 6);
        all.extend(ids(&body));
        pages += 1;
        match body["next_cursor"].as_str() {
            Some(c) => path = format!("/api/search?q=%E4%BC%9A%E8%AE%AE&limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(all, ["6", "5", "4", "3", "2", "1"]);

    let (status, body) = server
        .get("/api/search?q=%E4%BC%9A%E8%AE%AE&conversation=c2", None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(ids(&body), ["6"]);
    let hit = &body["hits"][0];
    assert_eq!(hit["conversation_name"], "group c2");
    assert_eq!(hit["highlights"], serde_json::json!([[0, 2]]));
    assert_eq!(hit["flags"]["recalled"], false);
    assert_eq!(hit["sender_name"], "Ann");

    let (_, body) = server
        .get(
            "/api/search?q=meetings&sort=relevance&since=2020-01-01",
            None,
        )
        .await;
    assert_eq!(ids(&body), ["7"]);
    let (_, body) = server
        .get("/api/search?q=meeting&until=2020-01-01", None)
        .await;
    assert!(ids(&body).is_empty());
}

#[tokio::test]
async fn bad_requests_are_400_with_a_reason() {
    let (server, _store, _dir) = start(None).await;
    for (path, needle) in [
        ("/api/search", "empty"),
        ("/api/search?q=%22open", "unclosed quote"),
        ("/api/search?q=a+OR", "OR"),
        ("/api/search?q=x&sort=oldest", "sort"),
        ("/api/search?q=x&since=yesterday", "not a time"),
        ("/api/search?q=x&limit=0", "limit"),
        ("/api/search?q=x&limit=ten", "limit"),
        ("/api/search?q=x&cursor=zz", "cursor"),
        ("/api/search?q=x&recalled=maybe", "recalled"),
        ("/api/search?q=x&colour=red", "colour"),
    ] {
        let (status, body) = server.get(path, None).await;
        assert_eq!(status, 400, "{path}: {body}");
        let reason = body["error"].as_str().unwrap_or_default();
        assert!(reason.contains(needle), "{path}: {reason}");
    }
}

#[tokio::test]
async fn search_needs_the_token_when_one_is_set() {
    let (server, _store, _dir) = start(Some(TOKEN)).await;
    let (status, _) = server.get("/api/search?q=meeting", None).await;
    assert_eq!(status, 401);
    let (status, _) = server.get("/api/search?q=meeting", Some("wrong")).await;
    assert_eq!(status, 401);
    let (status, body) = server.get("/api/search?q=meeting", Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(ids(&body), ["7"]);
}
