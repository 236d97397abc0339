//! The web pages over real HTTP against a real PostgreSQL: a conversation with an edited,
//! a recalled and a hostile message, pagination, the status page, escaping, sign-in.

use crate::common;

use std::time::Duration;

use chatvault::config::Secret;
use chatvault::http::{self as api, ApiState};
use chatvault::index::{Indexer, SearchIndex};
use chatvault::metrics::Metrics;
use chatvault::model::{Mark, MessageKind, Page, QuarantineRecord, ReactionObservation};
use chatvault::store::Store;
use common::*;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

const TOKEN: &str = "web-tok-5d0c2e7a91";

struct Server {
    base: String,
    stop: watch::Sender<bool>,
    http: reqwest::Client,
    _index: tempfile::TempDir,
}

impl Server {
    /// A server over `store` with a search index caught up with it.
    async fn start(store: Store, token: Option<&str>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open_or_create(dir.path()).unwrap();
        Indexer::new(index.clone()).catch_up(&store).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let state = ApiState::new(&store, Metrics::new())
            .with_token(token.map(Secret::new))
            .with_search(index);
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
            _index: dir,
        }
    }

    async fn page(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("accept", "text/html")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.text().await.unwrap())
    }
}

/// Conversation `g1` ("产品讨论组") with 150 messages; 5 is hostile markup, 10 was edited
/// twice, 20 recalled, 30 replies to 10 and carries reactions and a `javascript:` url.
async fn seeded() -> Store {
    let (store, src) = store().await;
    let mut messages = Vec::new();
    for seq in 1..=150 {
        let text = match seq {
            5 => "<script>alert('x')</script> 你好".to_string(),
            10 => "原始版本 first draft".to_string(),
            20 => "秘密计划 secret plan".to_string(),
            _ => format!("message number {seq} 第{seq}条"),
        };
        let mut m = message("g1", &seq.to_string(), seq, &text);
        if seq == 30 {
            m.header.as_mut().unwrap().reply_to = Some("10".into());
            let content = m.content.as_mut().unwrap();
            content.kind = MessageKind::File;
            content.content = json!({"name": "报告.pdf", "size": 4096, "url": "javascript:alert(1)",
                                     "preview_url": "https://files.example/p.png"});
        }
        messages.push(m);
    }
    let mut first = page("m/g1", None, 150, messages);
    let mut conv = conversation("g1");
    conv.name = Some("产品讨论组".into());
    first.conversations.push(conv);
    store.apply_page(&src, &first).await.unwrap();

    for (i, text) in ["second draft 第二版", "final 终稿"].iter().enumerate() {
        let mut edited = message("g1", "10", 10, text);
        edited.edited_at = Some(t(1000 + i as i64 * 100));
        store
            .apply_page(&src, &page("m/g1", Some(150), 150, vec![edited]))
            .await
            .unwrap();
    }
    let mut recalled = message("g1", "20", 20, "");
    recalled.recalled = Some(Mark {
        at: Some(t(2000)),
        by: Some("u1".into()),
        reason: None,
    });
    store
        .apply_page(&src, &page("m/g1", Some(150), 150, vec![recalled]))
        .await
        .unwrap();
    let mut p = Page::new("r/g1", None, cursor(1));
    for (user, emoji, present) in [("u2", "👍", true), ("u3", "👍", true), ("u4", "🎉", true)]
    {
        p.reactions.push(ReactionObservation {
            conversation_id: "g1".into(),
            message_id: "30".into(),
            user_id: user.into(),
            user_name: None,
            emoji: emoji.into(),
            present,
            one_per_user: false,
            at: Some(t(3000)),
        });
    }
    store.apply_page(&src, &p).await.unwrap();
    let mut p = Page::new("r/g1", Some(cursor(1)), cursor(2));
    p.reactions.push(ReactionObservation {
        conversation_id: "g1".into(),
        message_id: "30".into(),
        user_id: "u4".into(),
        user_name: None,
        emoji: "🎉".into(),
        present: false,
        one_per_user: false,
        at: Some(t(3100)),
    });
    store.apply_page(&src, &p).await.unwrap();
    store
}

/// The `id="m-…"` anchors of a page, in order.
fn message_ids(html: &str) -> Vec<String> {
    html.split("id=\"m-")
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap().to_string())
        .collect()
}

fn link_after(html: &str, rel: &str) -> String {
    let marker = format!("rel=\"{rel}\" href=\"");
    let start = html.find(&marker).expect(rel) + marker.len();
    html[start..]
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&")
}

#[tokio::test]
async fn a_conversation_pages_through_its_history_in_order() {
    let server = Server::start(seeded().await, None).await;
    let (status, html) = server.page("/c/s/g1").await;
    assert_eq!(status, 200);
    assert!(html.contains("产品讨论组"), "{html}");
    let newest: Vec<String> = (51..=150).map(|i| i.to_string()).collect();
    assert_eq!(message_ids(&html), newest);
    assert!(!html.contains("rel=\"next\""));

    let (status, html) = server.page(&link_after(&html, "prev")).await;
    assert_eq!(status, 200);
    let oldest: Vec<String> = (1..=50).map(|i| i.to_string()).collect();
    assert_eq!(message_ids(&html), oldest);
    assert!(!html.contains("rel=\"prev\""));

    let (_, html) = server.page(&link_after(&html, "next")).await;
    let middle: Vec<String> = (51..=150).map(|i| i.to_string()).collect();
    assert_eq!(message_ids(&html), middle);

    // around a message: it is in the page and marked
    let (_, html) = server.page("/c/s/g1?around=120").await;
    let ids = message_ids(&html);
    assert!(ids.contains(&"120".to_string()));
    assert_eq!(ids.len(), 81, "50 before it, it and 30 after (the end)");
    assert!(html.contains("class=\"msg hl\" id=\"m-120\""), "{html}");
}

#[tokio::test]
async fn edits_recalls_replies_and_reactions_are_shown_with_their_history() {
    let server = Server::start(seeded().await, None).await;
    let (status, html) = server.page("/c/s/g1?around=20").await;
    assert_eq!(status, 200);

    // the edited message: current text, mark, and every version with its time
    let edited = section(&html, "10");
    assert!(edited.contains("final 终稿"), "{edited}");
    assert!(edited.contains("edited 2×"), "{edited}");
    assert!(edited.contains("Version history (3 versions)"), "{edited}");
    let v1 = edited.find("原始版本 first draft").expect("version 1");
    let v2 = edited.find("second draft 第二版").expect("version 2");
    assert!(v1 < v2);
    assert!(edited.contains("original"), "{edited}");

    // the recalled message keeps its original text and says when and by whom
    let recalled = section(&html, "20");
    assert!(recalled.contains("秘密计划 secret plan"), "{recalled}");
    assert!(recalled.contains("recalled 2025-06-15"), "{recalled}");
    assert!(recalled.contains("by u1"), "{recalled}");
    assert!(recalled.contains("class=\"msg hl recalled\""), "{recalled}");

    // the reply shows what it answers; reactions are counted, the removed one listed
    let reply = section(&html, "30");
    assert!(reply.contains("↪ reply to"), "{reply}");
    assert!(reply.contains("final 终稿"), "{reply}");
    assert!(reply.contains("👍 2"), "{reply}");
    assert!(reply.contains("1 removed"), "{reply}");
    assert!(reply.contains("报告.pdf"), "{reply}");
    assert!(reply.contains("4.0 KiB"), "{reply}");
    assert!(
        reply.contains("href=\"https://files.example/p.png\""),
        "{reply}"
    );
    assert!(!reply.contains("href=\"javascript:"), "{reply}");
}

/// The HTML of one message's `<li>`.
fn section<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("id=\"m-{id}\""))
        .unwrap_or_else(|| panic!("message {id} on the page"));
    let start = html[..start].rfind("<li").unwrap();
    let end = html[start..]
        .find("</li>\n")
        .or_else(|| html[start + 1..].find("<li class=\"msg").map(|i| i + 1))
        .unwrap_or(html.len() - start);
    &html[start..start + end]
}

#[tokio::test]
async fn message_text_is_escaped_and_pages_load_nothing_external() {
    let server = Server::start(seeded().await, None).await;
    let r = server
        .http
        .get(format!("{}/c/s/g1?around=5", server.base))
        .send()
        .await
        .unwrap();
    let csp = r
        .headers()
        .get("content-security-policy")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    let html = r.text().await.unwrap();
    assert!(
        html.contains("&lt;script&gt;alert('x')&lt;/script&gt; 你好"),
        "{html}"
    );
    assert!(!html.contains("<script"), "no script element at all");
    assert!(!html.contains(" src="), "no external asset: {html}");
    assert!(!html.contains("<link"), "no external stylesheet: {html}");
}

#[tokio::test]
async fn conversations_status_and_errors_render() {
    let store = seeded().await;
    let mut p = Page::new("q", None, cursor(1));
    p.quarantine.push(QuarantineRecord {
        reason: "payload type 77 <unknown>".into(),
        raw: json!({"type": 77}),
    });
    store
        .apply_page(&chatvault::model::SourceName::new("s"), &p)
        .await
        .unwrap();
    let server = Server::start(store, None).await;

    let (status, html) = server.page("/conversations").await;
    assert_eq!(status, 200);
    assert!(html.contains("href=\"/c/s/g1\""), "{html}");
    assert!(html.contains("产品讨论组"));
    assert!(html.contains(">150<"), "message count: {html}");

    let (status, html) = server.page("/status").await;
    assert_eq!(status, 200);
    assert!(html.contains("never run"), "{html}");
    assert!(html.contains("150 in 1 conversations"), "{html}");
    assert!(html.contains("payload type 77 &lt;unknown&gt;"), "{html}");
    assert!(html.contains("Proven against upstream"), "{html}");
    assert!(html.contains("<code>verify --upstream</code>"), "{html}");

    let (status, html) = server.page("/c/s/nope").await;
    assert_eq!(status, 404);
    assert!(html.contains("No such conversation"));
    let (status, _) = server.page("/c/s/g1?before=garbage").await;
    assert_eq!(status, 400);
    let (status, _) = server.page("/c/s/g1?before=1.2.3&after=1.2.3").await;
    assert_eq!(status, 400);

    let (status, html) = server.page("/").await;
    assert_eq!(status, 200);
    assert!(html.contains("name=\"q\""));
    assert!(html.contains("<option value=\"s\">s</option>"), "{html}");
    server.stop.send(true).unwrap();
}

#[tokio::test]
async fn with_a_token_a_browser_signs_in_once() {
    let server = Server::start(seeded().await, Some(TOKEN)).await;
    let (status, html) = server.page("/c/s/g1").await;
    assert_eq!(status, 401);
    assert!(html.contains("action=\"/login\""), "{html}");
    assert!(
        html.contains("value=\"/c/s/g1\""),
        "returns where it was: {html}"
    );
    assert!(!html.contains(TOKEN));

    // JSON clients still get the API's answer
    let r = server
        .http
        .get(format!("{}/status", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(r.text().await.unwrap().contains("bearer token"));

    let post = |token: &'static str| {
        server
            .http
            .post(format!("{}/login", server.base))
            .form(&[("token", token), ("next", "/c/s/g1")])
            .send()
    };
    let wrong = post("not-it").await.unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());

    let right = post(TOKEN).await.unwrap();
    assert_eq!(right.status().as_u16(), 303);
    assert_eq!(right.headers()["location"], "/c/s/g1");
    let cookie = right.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(!cookie.contains(TOKEN), "the cookie is not the token");
    let session = cookie.split(';').next().unwrap().to_string();

    let r = server
        .http
        .get(format!("{}/c/s/g1", server.base))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // the session opens the pages, and the API too (same rule)
    let r = server
        .http
        .get(format!("{}/api/status", server.base))
        .header("cookie", session.replace('a', "b"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

/// The `id`s of the conversation links of a results page, as `around=` values.
fn hit_ids(html: &str) -> Vec<String> {
    html.split("?around=")
        .skip(1)
        .map(|rest| rest.split('#').next().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_search_page_finds_chinese_highlights_and_pages_on() {
    let server = Server::start(seeded().await, None).await;

    // one Chinese word: exactly the message that holds it, highlighted, linking into its
    // conversation around it
    let (status, html) = server.page("/?q=%E7%A7%98%E5%AF%86").await; // 秘密
    assert_eq!(status, 200);
    assert!(
        html.contains("No message matches."),
        "recalled ones are left out: {html}"
    );
    let (_, html) = server
        .page("/?q=%E7%A7%98%E5%AF%86&include_recalled=1")
        .await;
    assert_eq!(hit_ids(&html), vec!["20"], "{html}");
    assert!(html.contains("<mark>秘密</mark>计划 secret plan"), "{html}");
    assert!(html.contains("href=\"/c/s/g1?around=20#m-20\""), "{html}");
    assert!(html.contains("recalled</span>"), "{html}");

    // the current text of an edited message, and its first version only with history
    let (_, html) = server.page("/?q=%E7%BB%88%E7%A8%BF").await; // 终稿
    assert_eq!(hit_ids(&html), vec!["10"], "{html}");
    let (_, html) = server
        .page("/?q=%E5%8E%9F%E5%A7%8B%E7%89%88%E6%9C%AC")
        .await; // 原始版本
    assert!(hit_ids(&html).is_empty(), "{html}");
    let (_, html) = server
        .page("/?q=%E5%8E%9F%E5%A7%8B%E7%89%88%E6%9C%AC&history=1")
        .await;
    assert_eq!(hit_ids(&html), vec!["10"], "{html}");

    // 147 messages say "message number": 20 a page, newest first, then the next page
    let (_, html) = server.page("/?q=%22message+number%22").await;
    assert!(html.contains("147 matching messages"), "{html}");
    let first: Vec<String> = hit_ids(&html);
    assert_eq!(first.len(), 20);
    assert_eq!(first[0], "150");
    let (_, next) = server.page(&link_after(&html, "next")).await;
    let second = hit_ids(&next);
    assert_eq!(second.len(), 20);
    assert_eq!(second[0], "130");

    // a malformed query is a message on the page, not an error page
    let (status, html) = server.page("/?q=%22unclosed").await;
    assert_eq!(status, 200);
    assert!(html.contains("class=\"problem\""), "{html}");
    assert!(html.contains("invalid query"), "{html}");
}
