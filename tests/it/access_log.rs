//! The access log against a real PostgreSQL: every access path writes its row (CLI search
//! and export, API search, web search and conversation pages) with who, what and how many;
//! the log is append-only, its chain is checked by `verify` (a row altered with the
//! triggers off is caught, by the library and by the binary); and an access whose row
//! cannot be written is refused.

use crate::common::*;
use crate::ediscovery::{archive, run, text};

use std::time::Duration;

use chatvault::config::Secret;
use chatvault::http::{self as api, ApiState};
use chatvault::index::{Indexer, SearchIndex};
use chatvault::metrics::Metrics;
use chatvault::store::{AccessRecord, AccessedId, ExpectedHead, Store, Via};
use futures::TryStreamExt;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

const TOKEN: &str = "audit-tok-0123456789";
const LEGAL: &str = "legal-tok-0123456789";

async fn entries(store: &Store) -> Vec<chatvault::store::AccessEntry> {
    store.access_log(None, None).try_collect().await.unwrap()
}

#[tokio::test]
async fn the_log_is_append_only_chained_and_verify_catches_a_changed_row() {
    let (store, _src) = store().await;
    for (i, who) in ["alice", "bob", "carol"].iter().enumerate() {
        let e = store
            .record_access(
                AccessRecord::new(*who, Via::Cli, "search")
                    .query("会议 \u{0}🎉")
                    .filter("source", "s")
                    .ids(vec![AccessedId {
                        source: "s".into(),
                        conversation_id: "g1".into(),
                        message_id: Some(i.to_string()),
                    }])
                    .results(i as i64),
            )
            .await
            .unwrap();
        assert_eq!(e.seq, i as i64 + 1);
    }
    let log = entries(&store).await;
    assert_eq!(log.len(), 3);
    assert_eq!(log[1].who, "bob");
    assert_eq!(
        log[1].query.as_deref(),
        Some("会议 \u{FFFD}🎉"),
        "NUL replaced"
    );
    assert_eq!(log[1].filters, json!({"source": "s"}));
    assert_eq!(log[1].prev_hash, log[0].hash);
    let report = store.verify(&[]).await.unwrap();
    assert!(report.ok(), "{:?}", report.failures);
    assert_eq!(report.access_log.0, 3);
    let head = format!("3:{}", hex::encode(&log[2].hash));
    assert_eq!(report.access_log.1, head);
    let view: i64 = count(&store, "SELECT count(*) FROM archive.access_log").await;
    assert_eq!(view, 3);

    // the triggers refuse rewriting
    for sql in [
        "UPDATE vault.access_log SET results = 99 WHERE seq = 2",
        "DELETE FROM vault.access_log WHERE seq = 3",
        "TRUNCATE vault.access_log",
    ] {
        let err = sqlx::query(sql).execute(store.pool()).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }

    // a head saved earlier checks, a wrong one fails
    let saved = ExpectedHead::parse(&format!("access-log={head}")).unwrap();
    assert!(store
        .verify(std::slice::from_ref(&saved))
        .await
        .unwrap()
        .ok());
    let wrong = ExpectedHead::parse(&format!("access-log=2:{}", "ab".repeat(32))).unwrap();
    let report = store.verify(&[wrong]).await.unwrap();
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    assert_eq!(report.failures[0].source, "access-log");

    // someone with write access changes a count: verify names the row
    tamper(
        &store,
        "UPDATE vault.access_log SET results = 99 WHERE seq = 2",
    )
    .await;
    let report = store.verify(&[saved]).await.unwrap();
    assert!(!report.ok());
    assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    let f = &report.failures[0];
    assert_eq!((f.source.as_str(), f.event_seq), ("access-log", Some(2)));
    assert!(
        f.problem.contains("search entry was altered"),
        "{}",
        f.problem
    );

    // and a deleted row is a gap
    tamper(&store, "DELETE FROM vault.access_log WHERE seq = 1").await;
    let problems: Vec<String> = store
        .verify(&[])
        .await
        .unwrap()
        .failures
        .into_iter()
        .map(|f| f.problem)
        .collect();
    assert!(
        problems.iter().any(|p| p == "entry 1 is missing"),
        "{problems:?}"
    );
}

struct Server {
    base: String,
    _stop: watch::Sender<bool>,
    http: reqwest::Client,
    _index: tempfile::TempDir,
}

/// The daemon's server over `store` with its index caught up, `server.token` = [`TOKEN`]
/// and a token named `legal`.
async fn serve(store: &Store) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let index = SearchIndex::open_or_create(dir.path()).unwrap();
    Indexer::new(index.clone()).catch_up(store).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, shutdown) = watch::channel(false);
    let state = ApiState::new(store, Metrics::new())
        .with_token(Some(Secret::new(TOKEN)))
        .with_named_tokens(vec![("legal".into(), Secret::new(LEGAL))])
        .with_search(index);
    tokio::spawn(api::serve_on(
        listener,
        state,
        shutdown,
        Duration::from_secs(5),
    ));
    Server {
        base: format!("http://{address}"),
        _stop: stop,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        _index: dir,
    }
}

#[tokio::test]
async fn api_search_web_search_and_conversation_view_are_recorded_with_who_and_how_many() {
    let (store, _src) = store().await;
    crate::ediscovery::seed(&store).await;
    let server = serve(&store).await;

    // the API, with the named token
    let r = server
        .http
        .get(format!("{}/api/search?q=会议&source=s", server.base))
        .bearer_auth(LEGAL)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["hits"].as_array().unwrap().len(), 1);
    let log = entries(&store).await;
    assert_eq!(log.len(), 1);
    let e = &log[0];
    assert_eq!((e.who.as_str(), e.via.as_str()), ("legal", "api"));
    assert_eq!(e.action, "search");
    assert_eq!(e.query.as_deref(), Some("会议"));
    assert_eq!(e.filters["source"], "s");
    assert_eq!(e.results, Some(1));
    assert_eq!(
        e.ids,
        json!([{"source": "s", "conversation_id": "g1", "message_id": "1"}])
    );
    assert!(
        e.client
            .as_deref()
            .is_some_and(|c| c.starts_with("127.0.0.1:")),
        "{:?}",
        e.client
    );

    // a browser signed in with server.token: recorded as "default", via the web
    let login = server
        .http
        .post(format!("{}/login", server.base))
        .form(&[("token", TOKEN), ("next", "/")])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status().as_u16(), 303);
    let session = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let get = |path: String| {
        server
            .http
            .get(format!("{}{path}", server.base))
            .header("cookie", &session)
            .header("accept", "text/html")
            .send()
    };
    let r = get("/?q=draft&history=on".into()).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = get("/c/s/g1".into()).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("明天上午十点开会议"));
    // a page with no query searches nothing and records nothing
    let r = get("/".into()).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);

    let log = entries(&store).await;
    assert_eq!(log.len(), 3, "{log:?}");
    let search = &log[1];
    assert_eq!(
        (search.who.as_str(), search.via.as_str()),
        ("default", "web")
    );
    assert_eq!(search.query.as_deref(), Some("draft"));
    assert_eq!(search.filters["history"], true);
    assert_eq!(
        search.results,
        Some(1),
        "the edited message, by its history"
    );
    let view = &log[2];
    assert_eq!(view.action, "conversation");
    assert_eq!((view.who.as_str(), view.via.as_str()), ("default", "web"));
    assert_eq!(view.filters, json!({"source": "s", "conversation": "g1"}));
    assert_eq!(view.results, Some(7), "the messages on the page");
    let ids = view.ids.as_array().unwrap();
    assert_eq!(ids.len(), 8, "the conversation and its 7 messages");
    assert_eq!(
        ids[0],
        json!({"source": "s", "conversation_id": "g1", "message_id": null})
    );
    assert!(store.verify(&[]).await.unwrap().ok());
}

#[tokio::test]
async fn an_access_that_cannot_be_recorded_is_refused() {
    let (store, _src) = store().await;
    crate::ediscovery::seed(&store).await;
    let server = serve(&store).await;
    // the log cannot take a row (as when the disk is full or the role may not write)
    sqlx::query(
        "CREATE FUNCTION refuse_access_log_insert() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on device'; END $$",
    )
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse BEFORE INSERT ON vault.access_log
         FOR EACH ROW EXECUTE FUNCTION refuse_access_log_insert()",
    )
    .execute(store.pool())
    .await
    .unwrap();

    let r = server
        .http
        .get(format!("{}/api/search?q=会议", server.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let body = r.text().await.unwrap();
    assert!(body.contains("access log cannot be written"), "{body}");
    assert!(!body.contains("明天"), "no hit leaks: {body}");

    let r = server
        .http
        .get(format!("{}/c/s/g1", server.base))
        .bearer_auth(TOKEN)
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let html = r.text().await.unwrap();
    assert!(html.contains("access log cannot be written"), "{html}");
    assert!(!html.contains("明天上午十点开会议"), "no message leaks");
    assert!(entries(&store).await.is_empty());
}

#[tokio::test]
async fn cli_search_and_export_are_recorded_and_verify_catches_a_changed_row() {
    let (store, env, dir) = archive().await;
    let me = chatvault::store::access_log::os_user();

    let out = run(dir.path(), &["reindex"], &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(
        dir.path(),
        &["search", "会议", "--conversation", "g1", "--json"],
        &env,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 1);
    let out = run(
        dir.path(),
        &["export", "--source", "s", "--format", "csv", "-o", "s.csv"],
        &env,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    let log = entries(&store).await;
    assert_eq!(log.len(), 2, "{log:?}");
    let search = &log[0];
    assert_eq!(
        (search.who.as_str(), search.via.as_str()),
        (me.as_str(), "cli")
    );
    assert_eq!(search.client, None);
    assert_eq!(search.action, "search");
    assert_eq!(search.query.as_deref(), Some("会议"));
    assert_eq!(search.filters["conversation"], "g1");
    assert_eq!(search.results, Some(1));
    assert_eq!(search.ids[0]["message_id"], "1");
    let export = &log[1];
    assert_eq!(
        (export.who.as_str(), export.action.as_str()),
        (me.as_str(), "export")
    );
    assert_eq!(
        export.filters,
        json!({"source": "s", "format": "csv", "output": "s.csv"})
    );
    assert_eq!(export.results, Some(8));

    // `audit` lists both, escaped for the terminal
    let out = run(dir.path(), &["audit", "--since", "2020-01-01"], &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert!(
        listing.contains(&format!("{me} via cli  search \"会议\"")),
        "{listing}"
    );
    assert!(listing.contains("→ 8 results"), "{listing}");
    assert!(listing.ends_with("2 accesses\n"), "{listing}");
    let out = run(dir.path(), &["audit", "--until", "2020-01-01"], &env).await;
    assert_eq!(text(&out.stdout), "0 accesses\n");

    // verify: intact, then a row changed by someone with write access
    let out = run(dir.path(), &["verify"], &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let head = format!("2:{}", hex::encode(&log[1].hash));
    assert!(
        stdout.contains(&format!("access-log: 2 entries, head {head}")),
        "{stdout}"
    );
    let out = run(
        dir.path(),
        &["verify", "--head", &format!("access-log={head}")],
        &env,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    tamper(
        &store,
        "UPDATE vault.access_log SET who = 'nobody' WHERE seq = 1",
    )
    .await;
    let out = run(dir.path(), &["verify"], &env).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("verify failed: source access-log, event 1: search entry was altered"),
        "{stderr}"
    );
}
