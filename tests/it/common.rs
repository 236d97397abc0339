//! Shared helpers for integration tests: a migrated store on a fresh database, and
//! builders for observations.
#![allow(dead_code)]

use chrono::{DateTime, Utc};
use serde_json::json;

use chatvault::model::{
    Content, ConversationObservation, ConversationType, Cursor, MessageHeader, MessageKind,
    MessageObservation, Page, Platform, SourceName,
};
use chatvault::store::Store;

/// A store on a brand-new database of the test cluster, migrated, with source `s` registered.
pub async fn store() -> (Store, SourceName) {
    let pool = chatvault::pg::testing::fresh_pool().await;
    let store = Store::from_pool(pool);
    store.migrate().await.expect("migrations apply");
    let source = SourceName::new("s");
    store
        .register_source(&source, Platform::Tangsengdaodao)
        .await
        .expect("register");
    (store, source)
}

pub fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_750_000_000 + secs, 0).unwrap()
}

pub fn conversation(id: &str) -> ConversationObservation {
    ConversationObservation {
        conversation_id: id.into(),
        conversation_type: ConversationType::Group,
        name: Some(format!("group {id}")),
        metadata: json!({"channel_type": 2}),
    }
}

pub fn message(conv: &str, id: &str, seq: i64, text: &str) -> MessageObservation {
    MessageObservation {
        conversation_id: conv.into(),
        message_id: id.into(),
        header: Some(MessageHeader {
            seq: Some(seq),
            sender_id: Some("u1".into()),
            sender_name: Some("Ann".into()),
            sent_at: t(seq),
            reply_to: None,
        }),
        content: Some(Content {
            kind: MessageKind::Text,
            text: text.into(),
            content: json!({"text": text}),
        }),
        edited_at: None,
        earlier_versions: vec![],
        recalled: None,
        deleted: None,
        reactions: None,
        raw: json!({"message_idstr": id, "payload": {"type": 1, "content": text}}),
    }
}

pub fn cursor(n: i64) -> Cursor {
    Cursor(json!({"v": 1, "seq": n}))
}

/// A page of `messages` on key `key`, moving its cursor from `from` to `to`.
pub fn page(key: &str, from: Option<i64>, to: i64, messages: Vec<MessageObservation>) -> Page {
    let mut p = Page::new(key, from.map(cursor), cursor(to));
    p.messages = messages;
    p
}

pub async fn count(store: &Store, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// What the archive holds, as sorted lines, leaving out what legitimately differs between
/// two runs over the same upstream (observation times, run ids, the order of events): two
/// archives of the same upstream state must give equal snapshots, so a test can compare a
/// run that met failures with a clean one line by line.
pub async fn archive_snapshot(store: &Store) -> Vec<String> {
    const QUERIES: [&str; 6] = [
        "SELECT format('conversation %s %s %s %s %s', source, conversation_id, conversation_type,
                name, metadata) FROM vault.conversations",
        "SELECT format('message %s %s %s seq=%s sender=%s/%s sent=%s reply=%s version=%s
                edited=%s recalled=%s by=%s deleted=%s', source, conversation_id, message_id, seq,
                sender_id, sender_name, sent_at, reply_to, current_version, edited_at,
                recalled_at IS NOT NULL, recalled_by, deleted_at IS NOT NULL)
         FROM vault.messages",
        "SELECT format('version %s %s %s v%s %s %s %s edited=%s', source, conversation_id,
                message_id, version, kind, text, content, edited_at)
         FROM vault.message_versions",
        "SELECT format('reaction %s %s %s %s %s %s removed=%s', source, conversation_id,
                message_id, user_id, user_name, emoji, removed_at IS NOT NULL)
         FROM vault.reactions",
        "SELECT format('gap %s %s %s-%s %s', source, conversation_id, from_seq, to_seq, reason)
         FROM vault.seq_gaps",
        "SELECT format('quarantine %s %s', source, reason) FROM vault.quarantine",
    ];
    let mut lines = Vec::new();
    for sql in QUERIES {
        let rows: Vec<String> = sqlx::query_scalar(sql)
            .fetch_all(store.pool())
            .await
            .unwrap_or_else(|e| panic!("snapshot query failed: {e}\n{sql}"));
        lines.extend(rows);
    }
    lines.sort();
    lines
}

/// The lines in which two snapshots differ, `-` only in `want`, `+` only in `got`.
pub fn snapshot_diff(want: &[String], got: &[String]) -> Vec<String> {
    use std::collections::BTreeSet;
    let want_set: BTreeSet<&String> = want.iter().collect();
    let got_set: BTreeSet<&String> = got.iter().collect();
    let mut diff: Vec<String> = want_set
        .difference(&got_set)
        .map(|l| format!("- {l}"))
        .collect();
    diff.extend(got_set.difference(&want_set).map(|l| format!("+ {l}")));
    diff
}

/// Run `sql` as someone with write access to the database could: the append-only triggers
/// off on this connection (an owner can do that; `verify` is what must catch it).
pub async fn tamper(store: &Store, sql: &str) {
    let mut conn = store.pool().acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(sql).execute(&mut *conn).await.unwrap();
    sqlx::query("SET session_replication_role = origin")
        .execute(&mut *conn)
        .await
        .unwrap();
}
