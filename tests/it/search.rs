//! Search end to end: pages applied by the store (the same path every connector's pages
//! take), the indexer following the event log, and searches over the result, against a
//! real PostgreSQL. Expected hits are exact id sets.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use chatvault::index::indexer::check;
use chatvault::index::search::{search, Recalled};
use chatvault::index::{Indexer, SearchError, SearchIndex, SearchRequest, Sort};
use chatvault::model::{
    Content, EarlierVersion, Mark, MessageKind, MessageObservation, Platform, SourceName,
};
use chatvault::store::Store;
use common::{conversation, message, page, t};
use serde_json::json;

fn with_sender(mut m: MessageObservation, id: &str, name: &str) -> MessageObservation {
    let h = m.header.as_mut().expect("header");
    h.sender_id = Some(id.into());
    h.sender_name = Some(name.into());
    m
}

/// Conversation `c1`: Chinese, English, mixed, emoji, full-width text; `c2`: one message.
fn world() -> Vec<MessageObservation> {
    vec![
        message("c1", "1", 1, "明天下午三点开会讨论预算"),
        message("c1", "2", 2, "会议室在三楼"),
        with_sender(
            message("c1", "3", 3, "The quarterly report is ready"),
            "u2",
            "Bob",
        ),
        message("c1", "4", 4, "Meetings moved to Friday 🎉"),
        message("c1", "5", 5, "用iPhone拍的照片"),
        message("c1", "6", 6, "你好，世界！ＡＢＣ"),
        message("c2", "7", 7, "预算已经批下来了"),
    ]
}

async fn seeded() -> (Store, SourceName, tempfile::TempDir, SearchIndex) {
    let (store, src) = common::store().await;
    let mut p = page("m/c1", None, 7, world());
    p.conversations = vec![conversation("c1"), conversation("c2")];
    store.apply_page(&src, &p).await.expect("apply");
    let dir = tempfile::tempdir().unwrap();
    let index = SearchIndex::open_or_create(dir.path()).unwrap();
    let report = Indexer::new(index.clone()).catch_up(&store).await.unwrap();
    assert_eq!(report.documents, 7);
    (store, src, dir, index)
}

fn request(q: &str) -> SearchRequest {
    SearchRequest {
        query: q.into(),
        limit: 100,
        ..Default::default()
    }
}

fn ids(index: &SearchIndex, r: &SearchRequest) -> BTreeSet<String> {
    index
        .search(r)
        .unwrap_or_else(|e| panic!("{:?}: {e}", r.query))
        .hits
        .into_iter()
        .map(|h| h.message_id)
        .collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn chinese_english_mixed_and_emoji_queries_find_exactly_their_messages() {
    let (_store, _src, _dir, index) = seeded().await;
    let cases: &[(&str, &[&str])] = &[
        ("会", &["1", "2"]),
        ("会议", &["2"]),
        ("开会 预算", &["1"]),
        ("预算", &["1", "7"]),
        ("三", &["1", "2"]),
        ("三楼", &["2"]),
        ("meeting", &["4"]),
        ("MEETINGS", &["4"]),
        ("\"quarterly report\"", &["3"]),
        ("\"report quarterly\"", &[]),
        ("report -quarterly", &[]),
        ("预算 -开会", &["7"]),
        ("预算 OR 照片", &["1", "5", "7"]),
        ("iphone", &["5"]),
        ("iPhone拍", &["5"]),
        ("🎉", &["4"]),
        ("abc", &["6"]),
        ("ＡＢＣ", &["6"]),
        ("世界", &["6"]),
        ("\"你好，世界\"", &["6"]),
        ("下午开会", &[]),
    ];
    for (q, expected) in cases {
        assert_eq!(ids(&index, &request(q)), set(expected), "query {q:?}");
    }
}

#[tokio::test]
async fn filters_sort_and_highlights() {
    let (store, _src, _dir, index) = seeded().await;
    let r = SearchRequest {
        conversation: Some("c2".into()),
        ..request("预算")
    };
    assert_eq!(ids(&index, &r), set(&["7"]));
    for sender in ["Bob", "bob", "u2"] {
        let r = SearchRequest {
            sender: Some(sender.into()),
            ..request("report")
        };
        assert_eq!(ids(&index, &r), set(&["3"]), "{sender}");
    }
    let r = SearchRequest {
        sender: Some("u1".into()),
        ..request("report")
    };
    assert!(ids(&index, &r).is_empty());
    let r = SearchRequest {
        since: Some(t(2)),
        until: Some(t(7)),
        ..request("会 OR 预算")
    };
    assert_eq!(ids(&index, &r), set(&["2"]));
    let r = SearchRequest {
        kind: Some("image".into()),
        ..request("预算")
    };
    assert!(ids(&index, &r).is_empty());
    let r = SearchRequest {
        source: Some("other".into()),
        ..request("预算")
    };
    assert!(ids(&index, &r).is_empty());

    // Newest first, and the page carries names and highlights.
    let page = search(&index, &store, request("预算")).await.unwrap();
    let order: Vec<&str> = page.hits.iter().map(|h| h.message_id.as_str()).collect();
    assert_eq!(order, ["7", "1"]);
    assert_eq!(page.total, 2);
    assert_eq!(page.hits[0].conversation_name.as_deref(), Some("group c2"));
    assert_eq!(page.hits[0].highlights, vec![[0, 2]]);
    assert_eq!(page.hits[1].highlights, vec![[10, 12]]);
    assert_eq!(page.hits[0].sender_name.as_deref(), Some("Ann"));

    // Relevance: the message where 会议 is a whole word ranks above 开会.
    let r = SearchRequest {
        sort: Sort::Relevance,
        ..request("会")
    };
    let page = index.search(&r).unwrap();
    assert_eq!(page.hits.len(), 2);
    assert!(page.hits.iter().all(|h| h.score.is_some()));
}

#[tokio::test]
async fn an_edit_is_found_by_its_new_text_and_by_its_old_text_only_with_history() {
    let (store, src, _dir, index) = seeded().await;
    let mut edited = message("c1", "2", 2, "会议室改到五楼");
    edited.edited_at = Some(t(100));
    edited.earlier_versions = vec![EarlierVersion {
        content: Content {
            kind: MessageKind::Text,
            text: "会议室在三楼".into(),
            content: json!({"text": "会议室在三楼"}),
        },
        replaced_at: Some(t(100)),
        known_fields: None,
    }];
    store
        .apply_page(&src, &page("m/c1", Some(7), 8, vec![edited]))
        .await
        .unwrap();
    let report = Indexer::new(index.clone()).catch_up(&store).await.unwrap();
    assert_eq!(report.documents, 1);
    assert_eq!(ids(&index, &request("五楼")), set(&["2"]));
    assert!(ids(&index, &request("三楼")).is_empty());
    let with_history = SearchRequest {
        history: true,
        ..request("三楼")
    };
    assert_eq!(ids(&index, &with_history), set(&["2"]));
    let hit = &index.search(&request("五楼")).unwrap().hits[0];
    assert!(hit.flags.edited);
    assert_eq!(hit.text, "会议室改到五楼");
    // Still one document for the message.
    assert_eq!(ids(&index, &request("会议室")), set(&["2"]));
}

#[tokio::test]
async fn a_recalled_message_is_found_only_when_recalled_ones_are_asked_for() {
    let (store, src, _dir, index) = seeded().await;
    let mut recalled = message("c1", "3", 3, "");
    recalled.content = None;
    recalled.recalled = Some(Mark {
        at: Some(t(50)),
        by: Some("u2".into()),
        reason: None,
    });
    store
        .apply_page(&src, &page("m/c1", Some(7), 8, vec![recalled]))
        .await
        .unwrap();
    Indexer::new(index.clone()).catch_up(&store).await.unwrap();
    assert!(ids(&index, &request("quarterly")).is_empty());
    let include = SearchRequest {
        recalled: Recalled::Include,
        ..request("quarterly OR meeting")
    };
    assert_eq!(ids(&index, &include), set(&["3", "4"]));
    let only = SearchRequest {
        recalled: Recalled::Only,
        ..request("quarterly OR meeting")
    };
    let page = index.search(&only).unwrap();
    assert_eq!(page.hits.len(), 1);
    assert!(page.hits[0].flags.recalled);
    assert_eq!(page.hits[0].text, "The quarterly report is ready");
}

#[tokio::test]
async fn malformed_queries_and_requests_are_clear_errors() {
    let (_store, _src, _dir, index) = seeded().await;
    for q in [
        "",
        "\"会议",
        "OR",
        "会议 OR",
        "-会议",
        "- 会议",
        "，。",
        "a OR -b",
    ] {
        match index.search(&request(q)) {
            Err(e @ SearchError::Query(_)) => {
                assert!(e.is_bad_request());
                assert!(e.to_string().starts_with("invalid query: "), "{e}");
            }
            other => panic!("{q:?}: {:?}", other.map(|p| p.hits.len())),
        }
    }
    let zero = SearchRequest {
        limit: 0,
        ..request("会")
    };
    assert!(matches!(
        index.search(&zero),
        Err(SearchError::BadRequest(_))
    ));
    let cursor = SearchRequest {
        cursor: Some("not-a-cursor".into()),
        ..request("会")
    };
    assert!(matches!(
        index.search(&cursor),
        Err(SearchError::BadCursor(_))
    ));
    let backwards = SearchRequest {
        since: Some(t(5)),
        until: Some(t(1)),
        ..request("会")
    };
    assert!(matches!(
        index.search(&backwards),
        Err(SearchError::BadRequest(_))
    ));
}

#[tokio::test]
async fn pages_follow_each_other_without_repeats_or_gaps() {
    let (store, src) = common::store().await;
    // 30 messages, several sent at the same second: the cursor must still be exact.
    let mut messages = Vec::new();
    for i in 0..30 {
        let mut m = message("c1", &format!("m{i}"), i, &format!("第{i}条周报"));
        m.header.as_mut().unwrap().sent_at = t(i / 4);
        messages.push(m);
    }
    let mut p = page("m/c1", None, 30, messages);
    p.conversations = vec![conversation("c1")];
    store.apply_page(&src, &p).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let index = SearchIndex::open_or_create(dir.path()).unwrap();
    Indexer::new(index.clone()).catch_up(&store).await.unwrap();
    for sort in [Sort::Newest, Sort::Relevance] {
        let mut seen = Vec::new();
        let mut r = SearchRequest {
            limit: 7,
            sort,
            ..request("周报")
        };
        let mut last_time = None;
        loop {
            let page = index.search(&r).unwrap();
            assert_eq!(page.total, 30);
            for h in &page.hits {
                if sort == Sort::Newest {
                    assert!(last_time.is_none_or(|l| h.sent_at <= l), "not newest first");
                    last_time = Some(h.sent_at);
                }
                seen.push(h.message_id.clone());
            }
            match page.next_cursor {
                Some(c) => r.cursor = Some(c),
                None => break,
            }
        }
        let distinct: BTreeSet<_> = seen.iter().cloned().collect();
        assert_eq!(seen.len(), 30, "{sort:?}");
        assert_eq!(distinct.len(), 30, "{sort:?}");
    }
    // A cursor belongs to its query.
    let first = index
        .search(&SearchRequest {
            limit: 7,
            ..request("周报")
        })
        .unwrap();
    let other = SearchRequest {
        limit: 7,
        cursor: first.next_cursor,
        ..request("第")
    };
    assert!(matches!(
        index.search(&other),
        Err(SearchError::BadCursor(_))
    ));
}

async fn many_messages(store: &Store, src: &SourceName, conv: &str, n: i64, per_page: i64) {
    let mut from = None;
    let mut seq = 0;
    while seq < n {
        let mut messages = Vec::new();
        for _ in 0..per_page.min(n - seq) {
            seq += 1;
            messages.push(message(
                conv,
                &format!("{conv}-{seq}"),
                seq,
                &format!("消息{seq} 项目排期 update"),
            ));
        }
        let mut p = page(&format!("m/{conv}"), from, seq, messages);
        p.conversations = vec![conversation(conv)];
        store.apply_page(src, &p).await.expect("apply");
        from = Some(seq);
    }
}

/// Each key in the index exactly once, and as many documents as messages.
async fn assert_exact(store: &Store, index: &SearchIndex) {
    let report = check(store, index, 100_000).await.unwrap();
    assert!(report.ok(), "{:?}", report.drift);
    let messages: i64 = common::count(store, "SELECT count(*) FROM vault.messages").await;
    assert_eq!(report.sampled as i64, messages);
    let documents: u64 = report.sources.iter().map(|s| s.documents).sum();
    assert_eq!(documents as i64, messages);
}

#[tokio::test]
async fn an_indexer_killed_midway_resumes_without_missing_or_duplicate_documents() {
    let (store, src) = common::store().await;
    many_messages(&store, &src, "c1", 600, 50).await;
    let dir = tempfile::tempdir().unwrap();
    let index = SearchIndex::open_or_create(dir.path()).unwrap();

    // Small batches and commits, then abort the task once some (not all) are committed.
    let task = {
        let index = index.clone();
        let store = store.clone();
        tokio::spawn(async move {
            Indexer::new(index)
                .with_batches(20, 20)
                .catch_up(&store)
                .await
        })
    };
    let head: i64 = common::count(&store, "SELECT event_seq FROM vault.chain_heads").await;
    let mut seen_partial = false;
    for _ in 0..2000 {
        let wm = index
            .generation()
            .unwrap()
            .payload()
            .unwrap()
            .watermarks
            .get("s")
            .copied()
            .unwrap_or(0);
        if wm > 0 && wm < head {
            seen_partial = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    task.abort();
    let _ = task.await;
    assert!(seen_partial, "the indexer was never seen part-way");

    // Restart: the writer lock is free once the aborted task's last blocking step ends.
    let mut report = None;
    for _ in 0..100 {
        match Indexer::new(index.clone()).catch_up(&store).await {
            Ok(r) => {
                report = Some(r);
                break;
            }
            Err(e) if format!("{e:#}").contains("another chatvault process") => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e:#}"),
        }
    }
    let report = report.expect("the indexer restarted");
    assert_eq!(report.watermarks.get("s"), Some(&head));
    assert_exact(&store, &index).await;
    // Applying everything again changes nothing.
    let again = Indexer::new(index.clone()).catch_up(&store).await.unwrap();
    assert_eq!(again.events, 0);
    assert_exact(&store, &index).await;
}

#[tokio::test]
async fn two_sources_written_concurrently_are_fully_indexed_while_the_indexer_follows() {
    let (store, _) = common::store().await;
    let a = SourceName::new("a");
    let b = SourceName::new("b");
    store
        .register_source(&a, Platform::Tangsengdaodao)
        .await
        .unwrap();
    store
        .register_source(&b, Platform::Tangsengdaodao)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let index = SearchIndex::open_or_create(dir.path()).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let follower = tokio::spawn(Indexer::new(index.clone()).with_batches(7, 30).follow(
        store.clone(),
        Duration::from_millis(5),
        stop_rx,
    ));
    tokio::join!(
        many_messages(&store, &a, "ca", 300, 10),
        many_messages(&store, &b, "cb", 300, 10),
    );
    let _ = stop_tx.send(true);
    follower.await.unwrap();
    // The follower stopped somewhere; one more catch-up (a restart) finishes the job.
    Indexer::new(index.clone()).catch_up(&store).await.unwrap();
    assert_exact(&store, &index).await;
    for (source, conv) in [("a", "ca"), ("b", "cb")] {
        let r = SearchRequest {
            source: Some(source.into()),
            limit: 1000,
            ..request("项目排期")
        };
        let page = index.search(&r).unwrap();
        assert_eq!(page.total, 300, "{source}");
        assert!(page.hits.iter().all(|h| h.conversation_id == conv));
    }
}

#[tokio::test]
async fn reindex_gives_the_same_index_as_incremental_indexing() {
    let (store, src, _dir, index) = seeded().await;
    // Some history first: an edit and a recall.
    let mut edited = message("c1", "1", 1, "明天上午开会讨论预算");
    edited.edited_at = Some(t(90));
    let mut recalled = message("c1", "5", 5, "");
    recalled.content = None;
    recalled.recalled = Some(Mark::default());
    store
        .apply_page(&src, &page("m/c1", Some(7), 8, vec![edited, recalled]))
        .await
        .unwrap();
    Indexer::new(index.clone()).catch_up(&store).await.unwrap();
    let queries = ["会", "预算", "下午", "上午", "照片", "meeting", "🎉", "abc"];
    let snapshot = |index: &SearchIndex| -> Vec<(BTreeSet<String>, BTreeSet<String>)> {
        queries
            .iter()
            .map(|q| {
                let all = SearchRequest {
                    recalled: Recalled::Include,
                    history: true,
                    ..request(q)
                };
                (ids(index, &request(q)), ids(index, &all))
            })
            .collect()
    };
    let incremental = snapshot(&index);
    let before = index.generation().unwrap().name.clone();
    let report = Indexer::new(index.clone())
        .rebuild(&store, &|_, _| {})
        .await
        .unwrap();
    assert_eq!(report.documents, 7);
    assert_ne!(index.generation().unwrap().name, before, "a new generation");
    assert_eq!(snapshot(&index), incremental);
    // Another handle on the same directory follows the swap.
    let reopened = SearchIndex::open(index.root()).unwrap().unwrap();
    assert_eq!(snapshot(&reopened), incremental);
    assert_exact(&store, &index).await;
}

/// "Recalled" in search means recalled or deleted: a deleted message is left out unless
/// asked for, like a recalled one.
#[tokio::test]
async fn a_deleted_message_is_left_out_like_a_recalled_one() {
    let (store, src, _dir, index) = seeded().await;
    let mut deleted = message("c1", "3", 3, "");
    deleted.header = None;
    deleted.content = None;
    deleted.deleted = Some(Mark {
        at: Some(t(60)),
        by: None,
        reason: Some("deleted for everyone".into()),
    });
    store
        .apply_page(&src, &page("m/c1", Some(7), 8, vec![deleted]))
        .await
        .unwrap();
    Indexer::new(index.clone()).catch_up(&store).await.unwrap();
    assert!(ids(&index, &request("quarterly")).is_empty());
    let only = SearchRequest {
        recalled: Recalled::Only,
        ..request("quarterly")
    };
    let page = index.search(&only).unwrap();
    assert_eq!(page.hits.len(), 1);
    assert!(page.hits[0].flags.deleted);
    let include = SearchRequest {
        recalled: Recalled::Include,
        ..request("quarterly")
    };
    assert_eq!(ids(&index, &include), set(&["3"]));
}
