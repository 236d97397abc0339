//! A message as it stood at a moment: `archive.messages_as_of`, `export --as-of` (the
//! binary, JSONL and CSV) and the conversation page's `as_of`, on one message edited twice
//! and then recalled.

use crate::common;

use std::process::Command;
use std::time::Duration;

use chatvault::http::{self as api, ApiState};
use chatvault::metrics::Metrics;
use chatvault::model::{Mark, Platform, SourceName};
use chatvault::store::Store;
use common::{conversation, message, page, t};
use tokio::sync::watch;

/// A fresh database with conversation `g1`: message `m` sent at t(10) as "v1 原文", edited
/// at t(100) to "v2 第二版" and at t(200) to "v3 终稿", recalled at t(300) by `boss`, and
/// message `later` sent at t(400). Returns the store and its database URL.
async fn seeded() -> (Store, String) {
    let (options, name) = chatvault::pg::testing::fresh_database().await;
    let socket = options.get_socket().expect("a socket").to_path_buf();
    let url = format!(
        "postgres://{}@localhost/{name}?host={}",
        options.get_username(),
        socket.display()
    );
    let store = Store::connect(options, 4).await.unwrap();
    store.migrate().await.unwrap();
    let src = SourceName::new("s");
    store
        .register_source(&src, Platform::Tangsengdaodao)
        .await
        .unwrap();
    let mut first = page("m/g1", None, 10, vec![message("g1", "m", 10, "v1 原文")]);
    first.conversations.push(conversation("g1"));
    store.apply_page(&src, &first).await.unwrap();
    for (at, text) in [(100, "v2 第二版"), (200, "v3 终稿")] {
        let mut edited = message("g1", "m", 10, text);
        edited.edited_at = Some(t(at));
        store
            .apply_page(&src, &page("m/g1", Some(10), 10, vec![edited]))
            .await
            .unwrap();
    }
    let mut recalled = message("g1", "m", 10, "v3 终稿");
    recalled.recalled = Some(Mark {
        at: Some(t(300)),
        by: Some("boss".into()),
        reason: None,
    });
    store
        .apply_page(&src, &page("m/g1", Some(10), 10, vec![recalled]))
        .await
        .unwrap();
    store
        .apply_page(
            &src,
            &page(
                "m/g1",
                Some(10),
                400,
                vec![message("g1", "later", 400, "after all that")],
            ),
        )
        .await
        .unwrap();
    (store, url)
}

/// What the message shows at an instant: (text, edit_count, recalled); `None`: not yet sent.
type State = Option<(&'static str, i32, bool)>;

/// The state at each of the four instants, and before the message existed.
fn expected() -> Vec<(i64, State)> {
    vec![
        (5, None),
        (50, Some(("v1 原文", 0, false))),
        (150, Some(("v2 第二版", 1, false))),
        (250, Some(("v3 终稿", 2, false))),
        (350, Some(("v3 终稿", 2, true))),
    ]
}

#[tokio::test]
async fn the_sql_function_gives_each_state_at_its_instant() {
    let (store, _) = seeded().await;
    for (at, want) in expected() {
        type Row = (
            String,
            i32,
            Option<chrono::DateTime<chrono::Utc>>,
            Option<String>,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT text, edit_count, recalled_at, recalled_by
                 FROM archive.messages_as_of($1) WHERE message_id = 'm'",
        )
        .bind(t(at))
        .fetch_optional(store.pool())
        .await
        .unwrap();
        let got = row
            .as_ref()
            .map(|(text, n, recalled, _)| (text.as_str(), *n, recalled.is_some()));
        assert_eq!(got, want, "as of t({at})");
        if let Some((_, _, Some(recalled_at), by)) = &row {
            assert_eq!((*recalled_at, by.as_deref()), (t(300), Some("boss")));
        }
    }
    // the columns are archive.messages', in order, and now equals the current state
    let columns = |relation: &str| {
        format!(
            "SELECT array_agg(attname::text ORDER BY attnum) FROM pg_attribute
             WHERE attrelid = '{relation}'::regclass AND attnum > 0"
        )
    };
    let view: Vec<String> = sqlx::query_scalar(&columns("archive.messages"))
        .fetch_one(store.pool())
        .await
        .unwrap();
    let function: Vec<String> = sqlx::query_scalar(
        "SELECT array_agg(n ORDER BY i) FROM unnest(
             (SELECT proargnames[2:] FROM pg_proc WHERE proname = 'messages_as_of')) WITH ORDINALITY AS a(n, i)",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(function, view);
    let differing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (
             (SELECT * FROM archive.messages EXCEPT SELECT * FROM archive.messages_as_of(now()))
             UNION ALL
             (SELECT * FROM archive.messages_as_of(now()) EXCEPT SELECT * FROM archive.messages)) d",
    )
    .fetch_one(store.pool())
    .await
    .unwrap_or_else(|e| panic!("json columns compare as text: {e}"));
    assert_eq!(differing, 0);
}

fn export(url: &str, args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chatvault"))
        .current_dir(dir.path())
        .arg("export")
        .args(args)
        .env_remove("CHATVAULT_CONFIG")
        .env("CHATVAULT_DATABASE_URL", url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn export_as_of_gives_each_state_in_jsonl_and_csv() {
    let (_store, url) = seeded().await;
    for (at, want) in expected() {
        let at_text = t(at).to_rfc3339();
        let url2 = url.clone();
        let jsonl = tokio::task::spawn_blocking({
            let at_text = at_text.clone();
            move || export(&url2, &["--as-of", &at_text])
        })
        .await
        .unwrap();
        let lines: Vec<serde_json::Value> = jsonl
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let m = lines.iter().find(|l| l["message_id"] == "m");
        let got = m.map(|m| {
            (
                m["text"].as_str().unwrap().to_string(),
                m["edit_count"].as_i64().unwrap() as i32,
                !m["recalled_at"].is_null(),
            )
        });
        assert_eq!(
            got,
            want.map(|(t, n, r)| (t.to_string(), n, r)),
            "jsonl as of t({at})"
        );
        if let Some(m) = m {
            // the versions it carries are those written by then
            assert_eq!(
                m["versions"].as_array().unwrap().len() as i32,
                want.unwrap().1 + 1
            );
        }
        assert!(
            lines.iter().all(|l| l["message_id"] != "later"),
            "a message sent later did not exist at t({at})"
        );

        let url2 = url.clone();
        let csv = tokio::task::spawn_blocking(move || {
            export(&url2, &["--as-of", &at_text, "--format", "csv"])
        })
        .await
        .unwrap();
        let mut records = csv_records(&csv).into_iter();
        let headers = records.next().unwrap();
        let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
        let row = records.find(|r| r[col("message_id")] == "m");
        let got = row.map(|r| {
            (
                r[col("text")].to_string(),
                r[col("edit_count")].parse::<i32>().unwrap(),
                !r[col("recalled_at")].is_empty(),
            )
        });
        assert_eq!(
            got,
            want.map(|(t, n, r)| (t.to_string(), n, r)),
            "csv as of t({at})"
        );
    }
    // a bad time is a clear error
    let out = Command::new(env!("CARGO_BIN_EXE_chatvault"))
        .args(["export", "--as-of", "yesterday-ish"])
        .env("CHATVAULT_DATABASE_URL", &url)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RFC 3339"));
}

#[tokio::test]
async fn the_conversation_page_shows_each_state_as_of_its_instant() {
    let (store, _) = seeded().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (_stop, shutdown) = watch::channel(false);
    tokio::spawn(api::serve_on(
        listener,
        ApiState::new(&store, Metrics::new()),
        shutdown,
        Duration::from_secs(5),
    ));
    let http = reqwest::Client::new();
    let get = |query: String| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let r = http
                .get(format!("{base}/c/s/g1{query}"))
                .header("accept", "text/html")
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let texts = ["v1 原文", "v2 第二版", "v3 终稿"];
    for (at, want) in expected() {
        let as_of = t(at).to_rfc3339();
        let (status, html) = get(format!("?as_of={}", urlencode(&as_of))).await;
        assert_eq!(status, 200, "{html}");
        assert!(
            html.contains("name=\"as_of\""),
            "the page has the as-of form"
        );
        // the message's own text comes before its version history
        let main = html.split("<details").next().unwrap();
        let shown: Vec<&str> = texts
            .iter()
            .copied()
            .filter(|x| main.contains(&format!("<p class=\"text\">{x}</p>")))
            .collect();
        let recalled = html.contains("class=\"msg recalled\"");
        match want {
            None => assert!(
                shown.is_empty() && !html.contains("id=\"m-m\""),
                "t({at}): {html}"
            ),
            Some((text, edits, was_recalled)) => {
                assert_eq!(shown, [text], "t({at}): the text current then");
                assert_eq!(recalled, was_recalled, "t({at})");
                // the version history holds only the versions written by then
                for (i, later) in texts.iter().enumerate() {
                    if i as i32 > edits {
                        assert!(!html.contains(later), "t({at}) shows the later {later}");
                    }
                }
            }
        }
        assert!(
            !html.contains("after all that"),
            "t({at}) shows a later message"
        );
    }
    // without as_of: the current state, the later message too
    let (_, html) = get(String::new()).await;
    assert!(html.contains("after all that") && html.contains("class=\"msg recalled\""));
    // a bad time is a 400 page saying why
    let (status, html) = get("?as_of=soon".into()).await;
    assert_eq!(status, 400);
    assert!(html.contains("RFC 3339"), "{html}");
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// RFC 4180 records (quoted fields with doubled quotes, CRLF line ends).
fn csv_records(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let (mut record, mut field) = (Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    records
}
