//! The charts: the store's series against a real PostgreSQL (days without messages included,
//! older days and other conversations left out, the last runs in order), and the status and
//! conversation pages over real HTTP, whose inline SVG must parse as XML and draw one bar per
//! day and one point per run.

use crate::common;

use std::time::Duration;

use chatvault::http::{self as api, ApiState};
use chatvault::metrics::Metrics;
use chatvault::model::SourceName;
use chatvault::store::{RunCounts, RunStatus, Store};
use chrono::{DateTime, NaiveDate, Utc};
use common::*;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Messages sent `offset` days before `today` at noon: `offset % 4` of them in `g1`, and one
/// in `g2` every day; 41 days, so 11 fall outside a 30-day chart.
fn world(today: NaiveDate) -> Vec<(String, DateTime<Utc>)> {
    let mut sent = Vec::new();
    for offset in 0..=40i64 {
        let noon = (today - chrono::Duration::days(offset))
            .and_hms_opt(12, 0, 0)
            .unwrap()
            .and_utc();
        for k in 0..offset % 4 {
            sent.push(("g1".to_string(), noon + chrono::Duration::minutes(k)));
        }
        sent.push(("g2".to_string(), noon));
    }
    sent
}

/// `g1` messages of the `days` days up to `last_day`, as the world made them.
fn expected(today: NaiveDate, last_day: NaiveDate, days: i64) -> i64 {
    world(today)
        .iter()
        .filter(|(c, at)| {
            let day = at.date_naive();
            c == "g1" && day <= last_day && day > last_day - chrono::Duration::days(days)
        })
        .count() as i64
}

async fn seeded(today: NaiveDate, runs: i64) -> (Store, SourceName) {
    let (store, src) = store().await;
    let mut messages = Vec::new();
    for (i, (conversation_id, at)) in world(today).into_iter().enumerate() {
        let mut m = message(
            &conversation_id,
            &format!("m{i}"),
            i as i64 + 1,
            "hello 你好",
        );
        m.header.as_mut().unwrap().sent_at = at;
        messages.push(m);
    }
    let n = messages.len() as i64;
    let mut first = page("m/all", None, n, messages);
    first.conversations.push(conversation("g1"));
    first.conversations.push(conversation("g2"));
    store.apply_page(&src, &first).await.unwrap();
    for _ in 0..runs {
        let run = store.start_run(&src).await.unwrap();
        store
            .finish_run(&src, run, RunStatus::Ok, &RunCounts::default(), None)
            .await
            .unwrap();
    }
    // run k took k % 7 seconds; every tenth failed
    sqlx::query(
        "UPDATE vault.sync_runs SET started_at = finished_at - make_interval(secs => run_id % 7),
                status = CASE WHEN run_id % 10 = 0 THEN 'failed' ELSE status END",
    )
    .execute(store.pool())
    .await
    .unwrap();
    (store, src)
}

#[tokio::test]
async fn messages_per_day_counts_every_day_of_the_window_and_nothing_else() {
    let today = Utc::now().date_naive();
    let (store, src) = seeded(today, 0).await;
    let days = store
        .messages_per_day(src.as_str(), today, 30)
        .await
        .unwrap();
    assert_eq!(days.len(), 30);
    assert_eq!(
        days.first().unwrap().day,
        today - chrono::Duration::days(29)
    );
    assert_eq!(days.last().unwrap().day, today);
    for d in &days {
        let offset = (today - d.day).num_days();
        assert_eq!(d.messages, offset % 4 + 1, "{d:?}");
    }

    let last_day = today - chrono::Duration::days(20);
    let g1 = store
        .conversation_messages_per_day(src.as_str(), "g1", last_day, 30)
        .await
        .unwrap();
    assert_eq!(g1.len(), 30);
    assert_eq!(g1.last().unwrap().day, last_day);
    assert_eq!(
        g1.iter().map(|d| d.messages).sum::<i64>(),
        expected(today, last_day, 30)
    );
    assert!(
        g1.iter().any(|d| d.messages == 0),
        "days without messages are there"
    );

    // bounded, and another source has nothing
    let long = store
        .messages_per_day(src.as_str(), today, 100_000)
        .await
        .unwrap();
    assert_eq!(long.len(), 366);
    let other = store.messages_per_day("nope", today, 3).await.unwrap();
    assert_eq!(
        other.iter().map(|d| d.messages).collect::<Vec<_>>(),
        [0, 0, 0]
    );
}

#[tokio::test]
async fn run_durations_are_the_last_finished_runs_oldest_first() {
    let today = Utc::now().date_naive();
    let (store, src) = seeded(today, 12).await;
    let running = store.start_run(&src).await.unwrap();
    let runs = store.run_durations(src.as_str(), 5).await.unwrap();
    let ids: Vec<i64> = runs.iter().map(|r| r.run_id).collect();
    assert_eq!(
        ids,
        [8, 9, 10, 11, 12],
        "the running run {running} is left out"
    );
    for r in &runs {
        assert!((r.seconds - (r.run_id % 7) as f64).abs() < 1e-6, "{r:?}");
    }
    assert_eq!(runs[2].status, "failed");
}

struct Server {
    base: String,
    _stop: watch::Sender<bool>,
}

async fn serve(store: &Store) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, shutdown) = watch::channel(false);
    let state = ApiState::new(store, Metrics::new());
    tokio::spawn(api::serve_on(
        listener,
        state,
        shutdown,
        Duration::from_secs(5),
    ));
    Server {
        base: format!("http://{address}"),
        _stop: stop,
    }
}

async fn page_text(server: &Server, path: &str) -> (String, String) {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", server.base))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{path}");
    let csp = response
        .headers()
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    (response.text().await.unwrap(), csp)
}

/// Every `<svg ...>...</svg>` of a page, each parsed as an XML document.
fn svgs(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find("<svg") {
        let end = rest[start..].find("</svg>").expect("an svg is closed") + start + 6;
        out.push(rest[start..end].to_string());
        rest = &rest[end..];
    }
    out
}

/// Elements of `svg` named `name` with class `class`; panics if it is not well-formed XML.
fn count(svg: &str, name: &str, class: &str) -> usize {
    let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("not XML ({e}): {svg}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(root.attribute("role"), Some("img"));
    assert_eq!(root.attribute("width"), Some("100%"));
    assert!(root.attribute("viewBox").is_some());
    assert!(root.attribute("style").is_none());
    assert!(
        root.children().any(|c| c.tag_name().name() == "title"),
        "an svg has a title"
    );
    assert!(
        doc.descendants().all(|n| n.attribute("style").is_none()
            && n.tag_name().name() != "script"
            && n.tag_name().name() != "foreignObject"),
        "no style attribute, no script: {svg}"
    );
    doc.descendants()
        .filter(|n| n.tag_name().name() == name && n.attribute("class") == Some(class))
        .count()
}

#[tokio::test]
async fn the_status_and_conversation_pages_draw_valid_svg_charts() {
    let today = Utc::now().date_naive();
    let (store, _src) = seeded(today, 120).await;
    let server = serve(&store).await;

    let (html, csp) = page_text(&server, "/status").await;
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(!csp.contains("script-src"), "{csp}");
    let charts = svgs(&html);
    assert_eq!(charts.len(), 2, "two charts for the one source");
    assert_eq!(count(&charts[0], "rect", "bar"), 30, "one bar per day");
    let in_window: i64 = (0..30).map(|offset| offset % 4 + 1).sum();
    let label = roxmltree::Document::parse(&charts[0])
        .unwrap()
        .root_element()
        .attribute("aria-label")
        .unwrap()
        .to_string();
    assert!(
        label.starts_with(&format!(
            "Messages per day, last 30 days: {in_window} messages over 30 days"
        )),
        "{label}"
    );
    assert_eq!(
        count(&charts[1], "circle", "point"),
        100,
        "one point per run, last 100"
    );
    let label = roxmltree::Document::parse(&charts[1])
        .unwrap()
        .root_element()
        .attribute("aria-label")
        .unwrap()
        .to_string();
    // runs 21..=120: durations run_id % 7, every tenth failed
    assert!(
        label.contains("last 100 runs, median 3 s, longest 6 s, 10 failed"),
        "{label}"
    );

    // the conversation page: g1 over the 30 days up to its newest message (yesterday: it has
    // none on day offsets divisible by 4)
    let yesterday = today - chrono::Duration::days(1);
    let (html, _) = page_text(&server, "/c/s/g1").await;
    let charts = svgs(&html);
    assert_eq!(charts.len(), 1);
    assert_eq!(count(&charts[0], "rect", "bar"), 30);
    let label = roxmltree::Document::parse(&charts[0])
        .unwrap()
        .root_element()
        .attribute("aria-label")
        .unwrap()
        .to_string();
    assert!(
        label.contains(&format!(
            "{} messages over 30 days",
            expected(today, yesterday, 30)
        )),
        "{label}"
    );
}
