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
