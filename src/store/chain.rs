//! Appending events outside a page: the one way the store's own records (purges, holds,
//! proofs against the source, stored attachments) join a source's hash chain. A page's
//! events go through `apply.rs`, which writes them in bulk; everything else locks the
//! chain head for its transaction ([`lock_head`]) and appends one event at a time
//! ([`append_event`]), so every event's `prev_hash` is its predecessor's hash.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Postgres, Transaction};

use super::canonical::{self, chain_hash, EventFields, Hash};
use super::{Result, StoreError};

/// A source's chain head as a transaction holds it locked: the last `event_seq` and hash.
pub(super) type Head = (i64, Hash);

/// Lock `source`'s chain head for this transaction.
pub(super) async fn lock_head(tx: &mut Transaction<'_, Postgres>, source: &str) -> Result<Head> {
    let head: Option<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT event_seq, hash FROM vault.chain_heads WHERE source = $1 FOR UPDATE",
    )
    .bind(source)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((seq, hash)) = head else {
        return Err(StoreError::UnknownSource(source.to_string()));
    };
    Ok((seq, hash.try_into().unwrap_or(canonical::GENESIS)))
}

/// What an event says; its place in the chain comes from the head.
pub(super) struct NewEvent<'a> {
    pub kind: &'a str,
    pub conversation_id: Option<&'a str>,
    pub message_id: Option<&'a str>,
    pub observed_at: DateTime<Utc>,
    pub detail: &'a Value,
}

/// Append `event` to `source`'s chain, whose head this transaction has locked, and move
/// the head to it. Returns the event's `event_seq`.
pub(super) async fn append_event(
    tx: &mut Transaction<'_, Postgres>,
    source: &str,
    head: &mut Head,
    event: NewEvent<'_>,
) -> Result<i64> {
    let seq = head.0 + 1;
    let hash = chain_hash(
        &head.1,
        &EventFields {
            source,
            event_seq: seq,
            kind: event.kind,
            conversation_id: event.conversation_id,
            message_id: event.message_id,
            occurred_at: None,
            observed_at: event.observed_at,
            detail: event.detail,
        },
    );
    sqlx::query(
        "INSERT INTO vault.events
             (source, event_seq, kind, conversation_id, message_id, occurred_at, observed_at,
              detail, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, NULL, $6, $7::jsonb, $8, $9)",
    )
    .bind(source)
    .bind(seq)
    .bind(event.kind)
    .bind(event.conversation_id)
    .bind(event.message_id)
    .bind(event.observed_at)
    .bind(event.detail.to_string())
    .bind(&head.1[..])
    .bind(&hash[..])
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE vault.chain_heads SET event_seq = $2, hash = $3 WHERE source = $1")
        .bind(source)
        .bind(seq)
        .bind(&hash[..])
        .execute(&mut **tx)
        .await?;
    *head = (seq, hash);
    Ok(seq)
}
