//! The store against a real PostgreSQL: versions, marks, reactions, cursors, quarantine,
//! the hash chain and `verify`.

use crate::common;
use crate::common::tamper;

use chatvault::model::{Mark, Page, ReactionObservation, ReactionState, SourceName};
use chatvault::store::canonical::{chain_hash, EventFields, GENESIS};
use chatvault::store::{ExpectedHead, Store, StoreError};
use common::*;
use serde_json::{json, Value};

async fn snapshot(store: &Store) -> Vec<i64> {
    let mut out = Vec::new();
    for table in [
        "vault.conversations",
        "vault.messages",
        "vault.message_versions",
        "vault.reactions",
        "vault.events",
        "vault.quarantine",
        "vault.seq_gaps",
    ] {
        out.push(count(store, &format!("SELECT count(*) FROM {table}")).await);
    }
    // xmin changes when a row is rewritten, even with identical values
    out.push(
        count(
            store,
            "SELECT sum(xmin::text::bigint)::bigint FROM vault.messages",
        )
        .await,
    );
    out.push(
        count(
            store,
            "SELECT sum(xmin::text::bigint)::bigint FROM vault.conversations",
        )
        .await,
    );
    out
}

async fn versions(
    store: &Store,
    msg: &str,
) -> Vec<(i32, String, Option<chrono::DateTime<chrono::Utc>>)> {
    sqlx::query_as(
        "SELECT version, text, edited_at FROM archive.message_versions WHERE message_id = $1 ORDER BY version",
    )
    .bind(msg)
    .fetch_all(store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn replaying_a_page_is_a_no_op() {
    let (store, src) = store().await;
    let mut p = page(
        "messages/c",
        None,
        3,
        vec![
            message("c", "1", 1, "你好，世界"),
            message("c", "2", 2, "hello"),
            message("c", "3", 3, "third"),
        ],
    );
    p.conversations.push(conversation("c"));
    let first = store.apply_page(&src, &p).await.unwrap();
    assert_eq!(first.messages_new, 3);
    let before = snapshot(&store).await;
    let head_before = first.chain_head;

    // the same observations again, from the cursor the first page left
    let mut again = p.clone();
    again.expected_cursor = Some(cursor(3));
    let second = store.apply_page(&src, &again).await.unwrap();
    assert_eq!(second.messages_new, 0);
    assert_eq!(second.messages_changed, 0);
    assert_eq!(second.events, 0);
    assert_eq!(second.chain_head, head_before);
    assert_eq!(snapshot(&store).await, before);
}

#[tokio::test]
async fn an_edit_adds_version_two_and_keeps_version_one() {
    let (store, src) = store().await;
    store
        .apply_page(
            &src,
            &page("m/c", None, 1, vec![message("c", "1", 1, "original")]),
        )
        .await
        .unwrap();
    let mut edited = message("c", "1", 1, "edited once");
    edited.edited_at = Some(t(100));
    let out = store
        .apply_page(&src, &page("m/c", Some(1), 1, vec![edited]))
        .await
        .unwrap();
    assert_eq!(out.messages_changed, 1);
    let v = versions(&store, "1").await;
    assert_eq!(v.len(), 2);
    assert_eq!(v[0], (1, "original".to_string(), None));
    assert_eq!(v[1], (2, "edited once".to_string(), Some(t(100))));
    let (text, count, edited_at): (String, i32, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as(
            "SELECT text, edit_count, edited_at FROM archive.messages WHERE message_id = '1'",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(
        (text.as_str(), count, edited_at),
        ("edited once", 1, Some(t(100)))
    );
}

#[tokio::test]
async fn two_edits_give_three_versions_in_order() {
    let (store, src) = store().await;
    store
        .apply_page(&src, &page("m/c", None, 1, vec![message("c", "1", 1, "a")]))
        .await
        .unwrap();
    store
        .apply_page(
            &src,
            &page("m/c", Some(1), 1, vec![message("c", "1", 1, "b")]),
        )
        .await
        .unwrap();
    store
        .apply_page(
            &src,
            &page("m/c", Some(1), 1, vec![message("c", "1", 1, "c")]),
        )
        .await
        .unwrap();
    let texts: Vec<(i32, String)> = versions(&store, "1")
        .await
        .into_iter()
        .map(|(v, t, _)| (v, t))
        .collect();
    assert_eq!(texts, [(1, "a".into()), (2, "b".into()), (3, "c".into())]);
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT kind FROM archive.events WHERE message_id = '1' ORDER BY event_seq",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        kinds,
        ["message_created", "message_edited", "message_edited"]
    );
}

#[tokio::test]
async fn a_recall_with_blanked_content_keeps_the_original_text() {
    let (store, src) = store().await;
    store
        .apply_page(
            &src,
            &page(
                "m/c",
                None,
                1,
                vec![message("c", "1", 1, "the original words")],
            ),
        )
        .await
        .unwrap();
    let mut recalled = message("c", "1", 1, "");
    recalled.recalled = Some(Mark {
        at: Some(t(50)),
        by: Some("u1".into()),
        reason: None,
    });
    recalled.raw = json!({"revoke": 1, "payload": {}});
    store
        .apply_page(&src, &page("m/c", Some(1), 1, vec![recalled]))
        .await
        .unwrap();
    let (text, recalled_at, by, raw): (
        String,
        Option<chrono::DateTime<chrono::Utc>>,
        Option<String>,
        Value,
    ) = sqlx::query_as(
        "SELECT text, recalled_at, recalled_by, raw FROM archive.messages WHERE message_id = '1'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(text, "the original words");
    assert_eq!(recalled_at, Some(t(50)));
    assert_eq!(by.as_deref(), Some("u1"));
    assert_eq!(raw["revoke"], 1, "raw is the last upstream payload");
    assert_eq!(versions(&store, "1").await.len(), 1);
}

#[tokio::test]
async fn a_deletion_keeps_the_content() {
    let (store, src) = store().await;
    store
        .apply_page(
            &src,
            &page("m/c", None, 1, vec![message("c", "1", 1, "keep me")]),
        )
        .await
        .unwrap();
    let mut deleted = message("c", "1", 1, "keep me");
    deleted.header = None;
    deleted.content = None;
    deleted.deleted = Some(Mark::default());
    let out = store
        .apply_page(&src, &page("m/c", Some(1), 2, vec![deleted]))
        .await
        .unwrap();
    assert_eq!(out.messages_changed, 1);
    let (text, deleted_at): (String, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT text, deleted_at FROM archive.messages WHERE message_id = '1'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(text, "keep me");
    assert!(deleted_at.is_some());
}

#[tokio::test]
async fn reaction_add_remove_readd_gives_two_episodes() {
    let (store, src) = store().await;
    store
        .apply_page(&src, &page("m/c", None, 1, vec![message("c", "1", 1, "x")]))
        .await
        .unwrap();
    let reaction = |present: bool, at: i64| ReactionObservation {
        conversation_id: "c".into(),
        message_id: "1".into(),
        user_id: "u2".into(),
        user_name: Some("Bo".into()),
        emoji: "👍".into(),
        present,
        one_per_user: true,
        at: Some(t(at)),
    };
    for (i, (present, at)) in [(true, 10), (false, 20), (true, 30)]
        .into_iter()
        .enumerate()
    {
        let mut p = Page::new(
            "r/c",
            (i > 0).then(|| cursor(i as i64)),
            cursor(i as i64 + 1),
        );
        p.reactions.push(reaction(present, at));
        store.apply_page(&src, &p).await.unwrap();
    }
    let rows: Vec<(
        String,
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
    )> = sqlx::query_as(
        "SELECT emoji, reacted_at, removed_at FROM archive.reactions ORDER BY reacted_at",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            ("👍".into(), t(10), Some(t(20))),
            ("👍".into(), t(30), None)
        ]
    );

    // a full reaction set without that reaction closes the open episode
    let mut m = message("c", "1", 1, "x");
    m.reactions = Some(vec![ReactionState {
        user_id: "u3".into(),
        user_name: None,
        emoji: "❤".into(),
    }]);
    store
        .apply_page(&src, &page("m/c", Some(1), 1, vec![m]))
        .await
        .unwrap();
    let open: i64 = count(
        &store,
        "SELECT count(*) FROM archive.reactions WHERE removed_at IS NULL",
    )
    .await;
    assert_eq!(open, 1);
    assert_eq!(
        count(&store, "SELECT count(*) FROM archive.reactions").await,
        3
    );
}

#[tokio::test]
async fn a_page_from_the_wrong_cursor_is_rejected_and_changes_nothing() {
    let (store, src) = store().await;
    store
        .apply_page(&src, &page("m/c", None, 5, vec![message("c", "1", 1, "x")]))
        .await
        .unwrap();
    let before = snapshot(&store).await;
    for wrong in [None, Some(4)] {
        let p = page("m/c", wrong, 9, vec![message("c", "2", 6, "y")]);
        let err = store.apply_page(&src, &p).await.unwrap_err();
        assert!(matches!(err, StoreError::CursorConflict { .. }), "{err}");
        assert!(err.to_string().contains("cursor m/c moved"), "{err}");
    }
    assert_eq!(snapshot(&store).await, before);
    let cursors = store.cursors(&src).await.unwrap();
    assert_eq!(cursors["m/c"], cursor(5));
}

#[tokio::test]
async fn quarantine_keeps_a_malformed_record_and_the_rest_lands() {
    let (store, src) = store().await;
    let mut p = page("m/c", None, 2, vec![message("c", "1", 1, "good")]);
    p.quarantine.push(chatvault::model::QuarantineRecord {
        reason: "message_seq is a string".into(),
        raw: json!({"message_seq": "two", "payload": "not an object"}),
    });
    // a change for a message the archive does not hold is kept too
    let mut orphan = message("c", "999", 0, "");
    orphan.header = None;
    orphan.recalled = Some(Mark::default());
    p.messages.push(orphan);
    let out = store.apply_page(&src, &p).await.unwrap();
    assert_eq!(out.messages_new, 1);
    assert_eq!(out.quarantined, 2);
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM archive.quarantine ORDER BY reason")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert!(reasons[0].contains("999"), "{reasons:?}");
    assert_eq!(reasons[1], "message_seq is a string");
    let raw: Value = sqlx::query_scalar(
        "SELECT raw FROM archive.quarantine WHERE reason = 'message_seq is a string'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(raw["message_seq"], "two");
}

#[tokio::test]
async fn ids_above_2_pow_53_and_nul_bytes_survive() {
    let (store, src) = store().await;
    let id = "18446744073709551557";
    let mut m = message("c", id, 1, "a\u{0}b");
    m.raw = serde_json::from_str(r#"{"message_id": 18446744073709551557}"#).unwrap();
    store
        .apply_page(&src, &page("m/c", None, 1, vec![m]))
        .await
        .unwrap();
    let (got, text, raw): (String, String, String) =
        sqlx::query_as("SELECT message_id, text, raw::text FROM archive.messages")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(got, id);
    assert_eq!(text, "a\u{FFFD}b");
    assert!(raw.contains("18446744073709551557"), "{raw}");
}

#[tokio::test]
async fn views_match_the_sql_contract() {
    let (store, _) = store().await;
    let contract: &[(&str, &[&str])] = &[
        (
            "conversations",
            &[
                "source",
                "platform",
                "conversation_id",
                "conversation_type",
                "name",
                "message_count",
                "first_message_at",
                "last_message_at",
                "metadata",
            ],
        ),
        (
            "messages",
            &[
                "source",
                "platform",
                "conversation_id",
                "conversation_type",
                "message_id",
                "seq",
                "sender_id",
                "sender_name",
                "sent_at",
                "kind",
                "text",
                "content",
                "reply_to",
                "edited_at",
                "edit_count",
                "recalled_at",
                "recalled_by",
                "deleted_at",
                "archived_at",
                "raw",
            ],
        ),
        (
            "message_versions",
            &[
                "source",
                "conversation_id",
                "message_id",
                "version",
                "text",
                "content",
                "edited_at",
                "observed_at",
            ],
        ),
        (
            "reactions",
            &[
                "source",
                "conversation_id",
                "message_id",
                "user_id",
                "user_name",
                "emoji",
                "reacted_at",
                "removed_at",
            ],
        ),
        (
            "events",
            &[
                "source",
                "event_seq",
                "kind",
                "conversation_id",
                "message_id",
                "occurred_at",
                "observed_at",
                "detail",
                "prev_hash",
                "hash",
            ],
        ),
        (
            "sync_runs",
            &[
                "source",
                "run_id",
                "started_at",
                "finished_at",
                "status",
                "messages_new",
                "messages_changed",
                "requests",
                "error",
                "trigger",
            ],
        ),
        ("quarantine", &["source", "observed_at", "reason", "raw"]),
    ];
    for (view, columns) in contract {
        let got: Vec<(String, String)> = sqlx::query_as(
            "SELECT column_name::text, data_type::text FROM information_schema.columns
             WHERE table_schema = 'archive' AND table_name = $1 ORDER BY ordinal_position",
        )
        .bind(view)
        .fetch_all(store.pool())
        .await
        .unwrap();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(&names, columns, "archive.{view}");
        for (name, ty) in &got {
            if name.ends_with("_at") {
                assert_eq!(ty, "timestamp with time zone", "archive.{view}.{name}");
            }
        }
        let undocumented: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.columns c
             WHERE c.table_schema = 'archive' AND c.table_name = $1
               AND col_description(('archive.' || c.table_name)::regclass, c.ordinal_position) IS NULL",
        )
        .bind(view)
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(
            undocumented, 0,
            "archive.{view} has columns without a comment"
        );
    }
}

/// Build a small history with every kind of event.
async fn history(store: &Store, src: &SourceName) {
    let mut p = page(
        "m/c",
        None,
        3,
        vec![
            message("c", "1", 1, "one"),
            message("c", "2", 2, "two"),
            message("c", "3", 3, "three"),
        ],
    );
    p.conversations.push(conversation("c"));
    store.apply_page(src, &p).await.unwrap();
    let mut edit = message("c", "2", 2, "two, edited");
    edit.recalled = None;
    let mut recall = message("c", "3", 3, "three");
    recall.recalled = Some(Mark::default());
    store
        .apply_page(src, &page("m/c", Some(3), 3, vec![edit, recall]))
        .await
        .unwrap();
}

#[tokio::test]
async fn chatvault_refuses_to_rewrite_events_or_versions() {
    let (store, src) = store().await;
    history(&store, &src).await;
    for sql in [
        "UPDATE vault.events SET detail = '{}' WHERE event_seq = 2",
        "DELETE FROM vault.events WHERE event_seq = 2",
        "UPDATE vault.message_versions SET text = 'x'",
    ] {
        let err = sqlx::query(sql).execute(store.pool()).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{err}");
    }
}

#[tokio::test]
async fn verify_passes_on_an_intact_chain() {
    let (store, src) = store().await;
    history(&store, &src).await;
    let report = store.verify(&[]).await.unwrap();
    assert!(report.ok(), "{:?}", report.failures);
    assert_eq!(
        report.sources[0].1, 6,
        "conversation, three messages, an edit and a recall"
    );
    assert_eq!(report.versions_checked, 4);
}

#[tokio::test]
async fn verify_names_the_event_after_an_update() {
    let (store, src) = store().await;
    history(&store, &src).await;
    tamper(
        &store,
        "UPDATE vault.events SET detail = jsonb_set(detail, '{seq}', '7') WHERE event_seq = 3",
    )
    .await;
    let report = store.verify(&[]).await.unwrap();
    assert!(!report.ok());
    assert_eq!(report.failures[0].event_seq, Some(3));
    assert!(
        report.failures[0].problem.contains("altered"),
        "{:?}",
        report.failures
    );
}

#[tokio::test]
async fn verify_names_the_event_after_a_delete() {
    let (store, src) = store().await;
    history(&store, &src).await;
    tamper(&store, "DELETE FROM vault.events WHERE event_seq = 4").await;
    let report = store.verify(&[]).await.unwrap();
    assert!(!report.ok());
    assert_eq!(report.failures[0].event_seq, Some(4));
    assert!(
        report.failures[0].problem.contains("missing"),
        "{:?}",
        report.failures
    );
}

#[tokio::test]
async fn verify_names_the_event_after_a_reordering() {
    let (store, src) = store().await;
    history(&store, &src).await;
    // swap events 2 and 3 (through negative numbers: the key is checked row by row)
    tamper(
        &store,
        "UPDATE vault.events SET event_seq = -event_seq WHERE event_seq IN (2, 3)",
    )
    .await;
    tamper(
        &store,
        "UPDATE vault.events SET event_seq = CASE event_seq WHEN -2 THEN 3 ELSE 2 END WHERE event_seq < 0",
    )
    .await;
    let report = store.verify(&[]).await.unwrap();
    assert!(!report.ok());
    assert_eq!(report.failures[0].event_seq, Some(2));
}

#[tokio::test]
async fn verify_notices_an_altered_version() {
    let (store, src) = store().await;
    history(&store, &src).await;
    tamper(
        &store,
        "UPDATE vault.message_versions SET text = 'forged' WHERE message_id = '1'",
    )
    .await;
    let report = store.verify(&[]).await.unwrap();
    assert!(!report.ok());
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.problem.contains("version 1 of message 1")),
        "{:?}",
        report.failures
    );
}

#[tokio::test]
async fn verify_head_catches_a_consistently_rewritten_chain() {
    let (store, src) = store().await;
    history(&store, &src).await;
    let status = store.status().await.unwrap();
    let saved = format!("s={}", status[0].chain_head);
    let head = ExpectedHead::parse(&saved).unwrap();
    assert!(store
        .verify(std::slice::from_ref(&head))
        .await
        .unwrap()
        .ok());

    // rewrite event 2 and recompute every later hash, as an insider could
    tamper(&store, "UPDATE vault.events SET detail = jsonb_set(detail, '{sender_id}', '\"mallory\"') WHERE event_seq = 2").await;
    #[allow(clippy::type_complexity)]
    let rows: Vec<(i64, String, Option<String>, Option<String>, Option<chrono::DateTime<chrono::Utc>>, chrono::DateTime<chrono::Utc>, Value)> =
        sqlx::query_as("SELECT event_seq, kind, conversation_id, message_id, occurred_at, observed_at, detail FROM vault.events ORDER BY event_seq")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let mut prev = GENESIS;
    for (seq, kind, conv, msg, occ, obs, detail) in &rows {
        let hash = chain_hash(
            &prev,
            &EventFields {
                source: "s",
                event_seq: *seq,
                kind,
                conversation_id: conv.as_deref(),
                message_id: msg.as_deref(),
                occurred_at: *occ,
                observed_at: *obs,
                detail,
            },
        );
        tamper(
            &store,
            &format!(
            "UPDATE vault.events SET prev_hash = '\\x{}', hash = '\\x{}' WHERE event_seq = {seq}",
            hex::encode(prev),
            hex::encode(hash)
        ),
        )
        .await;
        prev = hash;
    }
    tamper(
        &store,
        &format!(
            "UPDATE vault.chain_heads SET hash = '\\x{}'",
            hex::encode(prev)
        ),
    )
    .await;

    let without_head = store.verify(&[]).await.unwrap();
    assert!(
        without_head.ok(),
        "a consistent rewrite passes the internal check: {:?}",
        without_head.failures
    );
    let with_head = store.verify(&[head]).await.unwrap();
    assert!(!with_head.ok());
    assert!(
        with_head.failures[0].problem.contains("rewritten"),
        "{:?}",
        with_head.failures
    );
}

#[tokio::test]
async fn runs_are_recorded_with_the_chain_head() {
    let (store, src) = store().await;
    let run = store.start_run(&src).await.unwrap();
    history(&store, &src).await;
    let counts = chatvault::store::RunCounts {
        messages_new: 3,
        messages_changed: 2,
        requests: 7,
        retries: 1,
    };
    store
        .finish_run(&src, run, chatvault::store::RunStatus::Ok, &counts, None)
        .await
        .unwrap();
    // a second run finds the first finished; a run left running is marked interrupted
    let stale = store.start_run(&src).await.unwrap();
    let _next = store.start_run(&src).await.unwrap();
    let statuses: Vec<(i64, String)> =
        sqlx::query_as("SELECT run_id, status FROM archive.sync_runs ORDER BY run_id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(statuses[0], (run, "ok".into()));
    assert_eq!(statuses[1], (stale, "interrupted".into()));
    let status = store.status().await.unwrap();
    assert_eq!(status[0].messages, 3);
    assert_eq!(status[0].versions, 4);
    assert_eq!(status[0].events, 6);
    assert!(status[0].chain_head.starts_with("6:"));
}

/// A NUL anywhere PostgreSQL stores a string (ids, names, emoji, cursor keys and values)
/// used to make it reject the page, every run: cleaned in one place, the page lands.
#[tokio::test]
async fn nul_characters_anywhere_in_a_page_never_stop_it() {
    let (store, src) = store().await;
    let conv = "c\0x";
    let mut m = message(conv, "m\0", 1, "hi");
    m.reactions = Some(vec![ReactionState {
        user_id: "u\0".into(),
        user_name: Some("Ann\0".into()),
        emoji: "👍\0".into(),
    }]);
    let mut p = Page::new(
        "messages/c\0x",
        None,
        chatvault::model::Cursor(json!({"v": 1, "anchor": "a\0"})),
    );
    p.conversations.push(conversation(conv));
    p.messages.push(m);
    // a reaction feed's change on another message
    p.messages.push(message(conv, "n\0", 2, "there"));
    p.reactions.push(ReactionObservation {
        conversation_id: conv.into(),
        message_id: "n\0".into(),
        user_id: "v\0".into(),
        user_name: Some("Bo\0".into()),
        emoji: "❤\0".into(),
        present: true,
        one_per_user: false,
        at: Some(t(5)),
    });
    p.gaps.push(chatvault::model::SeqGap {
        conversation_id: conv.into(),
        from_seq: 3,
        to_seq: 4,
        reason: "gone\0".into(),
        kind: Default::default(),
    });
    let out = store.apply_page(&src, &p).await.unwrap();
    assert_eq!((out.messages_new, out.quarantined, out.gaps), (2, 0, 1));

    let emoji: Vec<String> = sqlx::query_scalar(
        "SELECT emoji FROM archive.reactions WHERE conversation_id = 'c\u{FFFD}x' ORDER BY emoji",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(emoji, vec!["❤\u{FFFD}", "👍\u{FFFD}"]);
    let cursors = store.cursors(&src).await.unwrap();
    assert_eq!(
        cursors["messages/c\u{FFFD}x"].0["anchor"], "a\u{FFFD}",
        "{cursors:?}"
    );

    // The engine moves on from the cursor it sent, NULs and all: the next page applies.
    let next = Page::new(
        "messages/c\0x",
        Some(p.next_cursor.clone()),
        chatvault::model::Cursor(json!({"v": 1, "anchor": "b"})),
    );
    store.apply_page(&src, &next).await.unwrap();
    // and replaying the first page's content changes nothing
    let mut again = p.clone();
    again.expected_cursor = Some(next.next_cursor.clone());
    again.next_cursor = next.next_cursor.clone();
    let replay = store.apply_page(&src, &again).await.unwrap();
    assert_eq!((replay.messages_new, replay.events), (0, 0));
    assert!(store.verify(&[]).await.unwrap().ok());
}

/// `n` CJK characters in no pattern a compressor could shorten.
fn incompressible(n: usize) -> String {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from_u32(0x4E00 + (x % 20_000) as u32).unwrap()
        })
        .collect()
}

/// Records PostgreSQL cannot store (a time before 4713 BC, an id too long for an index
/// row, an emoji too long for the reactions index) are quarantined with PostgreSQL's
/// reason; the rest of the page lands with the cursor, and the chain verifies.
#[tokio::test]
async fn records_postgres_refuses_are_quarantined_and_the_rest_lands() {
    let (store, src) = store().await;
    let mut messages: Vec<_> = (1..=8)
        .map(|i| message("c", &format!("m{i}"), i, &format!("text {i}")))
        .collect();
    // before 4713 BC
    let ancient = chrono::NaiveDate::from_ymd_opt(-5000, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    messages[2].header.as_mut().unwrap().sent_at = ancient;
    // too long for the primary key's index row (and not compressible below it)
    messages[5].message_id = incompressible(2000);
    let mut p = page("messages/c", None, 8, messages);
    p.conversations.push(conversation("c"));
    p.reactions.push(ReactionObservation {
        conversation_id: "c".into(),
        message_id: "m1".into(),
        user_id: "u2".into(),
        user_name: None,
        emoji: incompressible(1500),
        present: true,
        one_per_user: false,
        at: Some(t(9)),
    });
    p.reactions.push(ReactionObservation {
        conversation_id: "c".into(),
        message_id: "m2".into(),
        user_id: "u2".into(),
        user_name: None,
        emoji: "👍".into(),
        present: true,
        one_per_user: false,
        at: Some(t(9)),
    });

    let out = store.apply_page(&src, &p).await.unwrap();
    assert_eq!(out.messages_new, 6, "{out:?}");
    assert_eq!(out.quarantined, 3, "{out:?}");
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT message_id FROM archive.messages ORDER BY message_id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(ids, vec!["m1", "m2", "m4", "m5", "m7", "m8"]);
    assert_eq!(
        count(
            &store,
            "SELECT count(*) FROM archive.reactions WHERE emoji = '👍'"
        )
        .await,
        1
    );
    let reasons: Vec<String> =
        sqlx::query_scalar("SELECT reason FROM archive.quarantine ORDER BY reason")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(reasons.len(), 3);
    for reason in &reasons {
        assert!(reason.starts_with("PostgreSQL cannot store"), "{reason}");
        assert!(reason.contains("SQLSTATE"), "{reason}");
        assert!(reason.len() < 1000, "reasons stay short: {reason}");
    }
    assert!(reasons
        .iter()
        .any(|r| r.contains("message m3 of conversation c")));
    assert!(reasons
        .iter()
        .any(|r| r.contains("reaction of u2 on message m1")));
    // the quarantined message keeps its observation, raw upstream payload included
    let raw: Value =
        sqlx::query_scalar("SELECT raw FROM archive.quarantine WHERE reason LIKE '%message m3 %'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(raw["observation"]["raw"]["message_idstr"], "m3");
    assert_eq!(store.cursors(&src).await.unwrap()["messages/c"], cursor(8));
    assert!(store.verify(&[]).await.unwrap().ok());

    // The same records again: nothing new, nothing duplicated, the source moves on.
    let mut again = p.clone();
    again.expected_cursor = Some(cursor(8));
    again.next_cursor = cursor(9);
    let replay = store.apply_page(&src, &again).await.unwrap();
    assert_eq!(
        (replay.messages_new, replay.events, replay.quarantined),
        (0, 0, 0)
    );
    assert_eq!(store.cursors(&src).await.unwrap()["messages/c"], cursor(9));
}

/// A message whose content and payload hold numbers `jsonb` normalises, as upstream JSON
/// (any chat member can post them).
fn message_with_numbers(id: &str, seq: i64) -> chatvault::model::MessageObservation {
    let numbers: Value = serde_json::from_str(
        "[-0.0, -0, 1.0, 1e2, 100.0, 1.250e1, 1e16, 1.5e-7, -2.5e-10, 1e300, 5e-324, 12345678901234567890123]",
    )
    .unwrap();
    let mut m = message("c", id, seq, "numbers");
    m.content.as_mut().unwrap().content = json!({"text": "numbers", "card": {"values": numbers}});
    m.raw = json!({"message_idstr": id, "payload": {"values": numbers}});
    m
}

/// Regression: jsonb stores `-0.0` as `0.0` and `1e16` as `10000000000000000`, so `verify`
/// recomputed other bytes than were hashed and reported tampering.
#[tokio::test]
async fn numbers_jsonb_normalises_verify_and_are_not_edits() {
    let (store, src) = store().await;
    let mut p = page("m/c", None, 1, vec![message_with_numbers("1", 1)]);
    p.conversations.push(conversation("c"));
    store.apply_page(&src, &p).await.unwrap();
    let stored: String = sqlx::query_scalar(
        "SELECT content::text FROM vault.message_versions WHERE message_id = '1'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert!(
        stored.contains("[0.0, 0.0, 1.0, 100.0, 100.0, 12.5, 10000000000000000, 0.00000015"),
        "jsonb normalised: {stored}"
    );
    let report = store.verify(&[]).await.unwrap();
    assert!(report.ok(), "{:?}", report.failures);
    assert_eq!(report.versions_checked, 1);

    // seen again (a rescan): the same content, no new version, still intact
    let before = snapshot(&store).await;
    store
        .apply_page(
            &src,
            &page("m/c", Some(1), 1, vec![message_with_numbers("1", 1)]),
        )
        .await
        .unwrap();
    assert_eq!(snapshot(&store).await, before);
    assert!(store.verify(&[]).await.unwrap().ok());
}

/// Every double, written into `jsonb` and read back, has the canonical bytes it had before.
#[tokio::test]
async fn every_double_hashes_the_same_after_a_round_trip_through_jsonb() {
    use rand::{Rng, SeedableRng};
    let (store, _) = store().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(15);
    let mut values: Vec<Value> = [0.0, -0.0, 1.0, 0.1, 1e15, 1e16, 1e21, 1e-5, 1e-7, f64::MAX]
        .iter()
        .map(|x| json!(x))
        .collect();
    while values.len() < 4000 {
        let x = f64::from_bits(rng.gen());
        if x.is_finite() {
            values.push(json!(x));
        }
        let y: f64 = rng.gen_range(-1e6..1e6);
        values.push(json!((y * 100.0).round() / 100.0));
    }
    let written = Value::Array(values);
    let read: Value = sqlx::query_scalar("SELECT $1::jsonb")
        .bind(sqlx::types::Json(&written))
        .fetch_one(store.pool())
        .await
        .unwrap();
    let (Value::Array(written), Value::Array(read)) = (&written, &read) else {
        panic!("arrays");
    };
    assert_eq!(written.len(), read.len());
    for (w, r) in written.iter().zip(read) {
        assert_eq!(
            chatvault::store::canonical::canonical_bytes(w),
            chatvault::store::canonical::canonical_bytes(r),
            "{w} came back as {r}"
        );
    }
}

/// Regression: `verify` stopped at the first break, so later tampering went unreported.
#[tokio::test]
async fn verify_reports_every_break_and_keeps_going() {
    let (store, src) = store().await;
    history(&store, &src).await;
    tamper(
        &store,
        "UPDATE vault.events SET detail = jsonb_set(detail, '{seq}', '7') WHERE event_seq = 2",
    )
    .await;
    tamper(&store, "DELETE FROM vault.events WHERE event_seq = 4").await;
    tamper(
        &store,
        "UPDATE vault.events SET observed_at = observed_at + interval '1 day' WHERE event_seq = 6",
    )
    .await;
    tamper(
        &store,
        "UPDATE vault.message_versions SET text = 'forged' WHERE message_id IN ('1', '3')",
    )
    .await;
    let report = store.verify(&[]).await.unwrap();
    let events: Vec<(Option<i64>, &str)> = report
        .failures
        .iter()
        .filter(|f| !f.problem.starts_with("version"))
        .map(|f| (f.event_seq, f.problem.as_str()))
        .collect();
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events[0].0, Some(2));
    assert!(events[0].1.contains("altered"), "{events:?}");
    assert_eq!(events[1].0, Some(4));
    assert!(events[1].1.contains("missing"), "{events:?}");
    assert_eq!(events[2].0, Some(6));
    assert!(events[2].1.contains("altered"), "{events:?}");
    for message in ["1", "3"] {
        assert!(
            report.failures.iter().any(|f| f
                .problem
                .starts_with(&format!("version 1 of message {message} "))),
            "{:?}",
            report.failures
        );
    }
    assert_eq!(report.failures.len(), 5, "{:?}", report.failures);
}

#[tokio::test]
async fn truncate_of_the_append_only_tables_is_refused() {
    let (store, src) = store().await;
    history(&store, &src).await;
    let before = snapshot(&store).await;
    for sql in [
        "TRUNCATE vault.events",
        "TRUNCATE vault.message_versions",
        "TRUNCATE vault.messages, vault.message_versions",
    ] {
        let err = sqlx::query(sql).execute(store.pool()).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
        assert!(err.to_string().contains("TRUNCATE"), "{sql}: {err}");
    }
    assert_eq!(snapshot(&store).await, before);
    assert!(store.verify(&[]).await.unwrap().ok());
}

/// Events hashed before numbers followed PostgreSQL (serde_json's spelling, `1.5e-7`) still
/// verify.
#[tokio::test]
async fn events_hashed_with_the_earlier_number_spelling_still_verify() {
    use chatvault::store::canonical::{chain_hash_as, Numbers};
    let (store, _) = store().await;
    let detail: Value =
        serde_json::from_str(r#"{"ratio": 1.5e-7, "big": 1e300, "n": 2.5}"#).unwrap();
    let observed_at = t(1);
    let fields = EventFields {
        source: "s",
        event_seq: 1,
        kind: "conversation_changed",
        conversation_id: Some("c"),
        message_id: None,
        occurred_at: None,
        observed_at,
        detail: &detail,
    };
    let legacy = chain_hash_as(&GENESIS, &fields, Numbers::Legacy);
    assert_ne!(
        legacy,
        chain_hash(&GENESIS, &fields),
        "the spellings differ here"
    );
    sqlx::query(
        "INSERT INTO vault.events (source, event_seq, kind, conversation_id, observed_at, detail, prev_hash, hash)
         VALUES ('s', 1, 'conversation_changed', 'c', $1, $2, $3, $4)",
    )
    .bind(observed_at)
    .bind(sqlx::types::Json(&detail))
    .bind(&GENESIS[..])
    .bind(&legacy[..])
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::query("UPDATE vault.chain_heads SET event_seq = 1, hash = $1 WHERE source = 's'")
        .bind(&legacy[..])
        .execute(store.pool())
        .await
        .unwrap();
    let report = store.verify(&[]).await.unwrap();
    assert!(report.ok(), "{:?}", report.failures);
}

/// A batch of pages lands in one transaction with each key's last cursor, and archives what
/// the same pages applied one by one archive; a batch that does not start at the stored
/// cursor, or whose pages of one key do not follow each other, writes nothing.
#[tokio::test]
async fn a_batch_of_pages_commits_with_each_keys_last_cursor() {
    let pages = || {
        let mut a1 = page(
            "messages/a",
            None,
            2,
            vec![message("a", "1", 1, "one"), message("a", "2", 2, "two")],
        );
        a1.conversations.push(conversation("a"));
        let a2 = page(
            "messages/a",
            Some(2),
            3,
            vec![message("a", "3", 3, "three")],
        );
        let mut b1 = page("messages/b", None, 1, vec![message("b", "9", 1, "nine")]);
        b1.conversations.push(conversation("b"));
        vec![a1, b1, a2]
    };
    let (one_by_one, src) = store().await;
    for p in pages() {
        one_by_one.apply_page(&src, &p).await.unwrap();
    }
    let (batched, src) = store().await;

    // the second page of `a` does not follow the first: refused, nothing written
    let mut broken = pages();
    broken[2].expected_cursor = Some(cursor(1));
    let e = batched.apply_pages(&src, &broken).await.unwrap_err();
    assert!(matches!(e, StoreError::CursorConflict { .. }), "{e}");
    // not from the stored cursor: refused, nothing written
    let mut stale = pages();
    stale[1].expected_cursor = Some(cursor(7));
    let e = batched.apply_pages(&src, &stale).await.unwrap_err();
    assert!(matches!(e, StoreError::CursorConflict { .. }), "{e}");
    assert_eq!(
        count(&batched, "SELECT count(*) FROM vault.messages").await,
        0
    );
    assert_eq!(
        count(&batched, "SELECT count(*) FROM vault.cursors").await,
        0
    );

    let out = batched.apply_pages(&src, &pages()).await.unwrap();
    assert_eq!(out.messages_new, 4);
    let cursors = batched.cursors(&src).await.unwrap();
    assert_eq!(cursors.get("messages/a"), Some(&cursor(3)));
    assert_eq!(cursors.get("messages/b"), Some(&cursor(1)));
    assert_same_archive(&one_by_one, &batched).await;
    assert!(batched.verify(&[]).await.unwrap().ok());
}

async fn assert_same_archive(a: &Store, b: &Store) {
    let (a, b) = (archive_snapshot(a).await, archive_snapshot(b).await);
    let diff = snapshot_diff(&a, &b);
    assert!(diff.is_empty(), "{}", diff.join("\n"));
}
