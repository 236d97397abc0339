//! What `chatvault verify --upstream` reads from the archive and the one event it writes:
//! a seeded random sample of archived messages with their neighbours, archived messages by
//! id, seq or time span, each with its current version and standing reactions, and the
//! `upstream_verified` event appended to the source's hash chain (invariant 5). Nothing
//! else is written: no cursor, no message, no version.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::canonical::Hash;
use super::{Result, Store};
use crate::model::{MessageKind, SourceName};

/// The kind of the event a proof against the source appends.
pub const UPSTREAM_VERIFIED: &str = "upstream_verified";

/// An archived message as `verify --upstream` compares it.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchivedMessage {
    pub conversation_id: String,
    pub message_id: String,
    pub seq: Option<i64>,
    pub sent_at: DateTime<Utc>,
    pub kind: MessageKind,
    pub text: String,
    pub content: Value,
    /// The digest of every version, in version order (the last is the current one).
    pub version_hashes: Vec<Hash>,
    pub raw_hash: Hash,
    pub recalled: bool,
    pub deleted: bool,
    /// Standing reactions as `(user_id, emoji)`, sorted.
    pub reactions: Vec<(String, String)>,
}

/// A sampled message with the archived message just after it (see
/// [`crate::connector::RecheckTarget`]).
#[derive(Clone, Debug, PartialEq)]
pub struct SampledMessage {
    pub conversation_id: String,
    pub message_id: String,
    pub seq: Option<i64>,
    pub sent_at: DateTime<Utc>,
    pub next: Option<(String, Option<i64>)>,
}

/// The last proof against the source of a source: when, and the event's detail.
#[derive(Clone, Debug, PartialEq)]
pub struct LastProof {
    pub event_seq: i64,
    pub observed_at: DateTime<Utc>,
    pub detail: Value,
}

/// `(conversation_id, message_id, seq, sent_at, next message_id, next seq)`.
type SampleRow = (
    String,
    String,
    Option<i64>,
    DateTime<Utc>,
    Option<String>,
    Option<i64>,
);

#[derive(sqlx::FromRow)]
struct Row {
    conversation_id: String,
    message_id: String,
    seq: Option<i64>,
    sent_at: DateTime<Utc>,
    kind: String,
    text: String,
    content: Value,
    version_hashes: Vec<u8>,
    raw_hash: Vec<u8>,
    recalled: bool,
    deleted: bool,
    reactions: Vec<String>,
}

fn to_hash(bytes: &[u8]) -> Hash {
    bytes.try_into().unwrap_or([0u8; 32])
}

/// Archived messages with their current version and standing reactions (`r` joined last as
/// `user_id \x1f emoji` pairs). `{where}` filters `vault.messages m`.
const SELECT_ARCHIVED: &str = "
SELECT m.conversation_id, m.message_id, m.seq, m.sent_at, v.kind, v.text, v.content,
       m.version_hashes, m.raw_hash,
       m.recalled_at IS NOT NULL AS recalled, m.deleted_at IS NOT NULL AS deleted,
       ARRAY(SELECT r.user_id || chr(31) || r.emoji FROM vault.reactions r
             WHERE r.source = m.source AND r.conversation_id = m.conversation_id
               AND r.message_id = m.message_id AND r.removed_at IS NULL
             ORDER BY 1) AS reactions
FROM vault.messages m
JOIN vault.message_versions v
  ON v.source = m.source AND v.conversation_id = m.conversation_id
 AND v.message_id = m.message_id AND v.version = m.current_version";

impl Store {
    /// At most `n` archived messages of `source`, a random sample fixed by `seed` (the same
    /// seed samples the same messages of the same archive), each with the archived message
    /// just after it in its conversation.
    pub async fn sample_for_upstream(
        &self,
        source: &SourceName,
        n: i64,
        seed: &str,
    ) -> Result<Vec<SampledMessage>> {
        let rows: Vec<SampleRow> = sqlx::query_as(
            "SELECT m.conversation_id, m.message_id, m.seq, m.sent_at, nx.message_id, nx.seq
                 FROM (SELECT * FROM vault.messages WHERE source = $1
                       ORDER BY md5($3 || chr(31) || conversation_id || chr(31) || message_id)
                       LIMIT $2) m
                 LEFT JOIN LATERAL (
                     SELECT n.message_id, n.seq FROM vault.messages n
                     WHERE n.source = m.source AND n.conversation_id = m.conversation_id
                       AND (COALESCE(n.seq, 0), n.sent_at, n.message_id)
                         > (COALESCE(m.seq, 0), m.sent_at, m.message_id)
                     ORDER BY COALESCE(n.seq, 0), n.sent_at, n.message_id
                     LIMIT 1) nx ON true
                 ORDER BY m.conversation_id, COALESCE(m.seq, 0), m.sent_at, m.message_id",
        )
        .bind(source.as_str())
        .bind(n.max(0))
        .bind(seed)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(conversation_id, message_id, seq, sent_at, next_id, next_seq)| SampledMessage {
                    conversation_id,
                    message_id,
                    seq,
                    sent_at,
                    next: next_id.map(|id| (id, next_seq)),
                },
            )
            .collect())
    }

    /// The newest archived message of each conversation of `source` (by seq, then time).
    pub async fn newest_messages(&self, source: &SourceName) -> Result<Vec<SampledMessage>> {
        let rows: Vec<(String, String, Option<i64>, DateTime<Utc>)> = sqlx::query_as(
            "SELECT c.conversation_id, n.message_id, n.seq, n.sent_at
             FROM vault.conversations c
             JOIN LATERAL (
                 SELECT m.message_id, m.seq, m.sent_at FROM vault.messages m
                 WHERE m.source = c.source AND m.conversation_id = c.conversation_id
                 ORDER BY COALESCE(m.seq, 0) DESC, m.sent_at DESC, m.message_id DESC
                 LIMIT 1) n ON true
             WHERE c.source = $1
             ORDER BY c.conversation_id",
        )
        .bind(source.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(conversation_id, message_id, seq, sent_at)| SampledMessage {
                    conversation_id,
                    message_id,
                    seq,
                    sent_at,
                    next: None,
                },
            )
            .collect())
    }

    /// The archived messages of one conversation that are named in `ids`, or whose seq lies
    /// in one of `seq_spans`, or whose send time lies in one of `time_spans` (all inclusive).
    pub async fn archived_messages(
        &self,
        source: &SourceName,
        conversation_id: &str,
        ids: &[String],
        seq_spans: &[(i64, i64)],
        time_spans: &[(DateTime<Utc>, DateTime<Utc>)],
    ) -> Result<Vec<ArchivedMessage>> {
        let (seq_from, seq_to): (Vec<i64>, Vec<i64>) = seq_spans.iter().copied().unzip();
        let (time_from, time_to): (Vec<DateTime<Utc>>, Vec<DateTime<Utc>>) =
            time_spans.iter().copied().unzip();
        let sql = format!(
            "{SELECT_ARCHIVED}
             WHERE m.source = $1 AND m.conversation_id = $2
               AND (m.message_id = ANY($3)
                    OR EXISTS (SELECT 1 FROM unnest($4::int8[], $5::int8[]) s(f, t)
                               WHERE m.seq BETWEEN s.f AND s.t)
                    OR EXISTS (SELECT 1 FROM unnest($6::timestamptz[], $7::timestamptz[]) s(f, t)
                               WHERE m.sent_at BETWEEN s.f AND s.t))
             ORDER BY COALESCE(m.seq, 0), m.sent_at, m.message_id"
        );
        let rows: Vec<Row> = sqlx::query_as(&sql)
            .bind(source.as_str())
            .bind(conversation_id)
            .bind(ids)
            .bind(&seq_from)
            .bind(&seq_to)
            .bind(&time_from)
            .bind(&time_to)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| ArchivedMessage {
                conversation_id: r.conversation_id,
                message_id: r.message_id,
                seq: r.seq,
                sent_at: r.sent_at,
                kind: MessageKind::parse(&r.kind),
                text: r.text,
                content: r.content,
                version_hashes: r.version_hashes.chunks_exact(32).map(to_hash).collect(),
                raw_hash: to_hash(&r.raw_hash),
                recalled: r.recalled,
                deleted: r.deleted,
                reactions: r
                    .reactions
                    .iter()
                    .map(|pair| match pair.split_once('\u{1f}') {
                        Some((user, emoji)) => (user.to_string(), emoji.to_string()),
                        None => (pair.clone(), String::new()),
                    })
                    .collect(),
            })
            .collect())
    }

    /// Append an `upstream_verified` event with `detail` to `source`'s hash chain (a
    /// source-level event: no conversation, no message). Returns its `event_seq`.
    pub async fn record_upstream_verified(
        &self,
        source: &SourceName,
        detail: &Value,
    ) -> Result<i64> {
        let observed_at = crate::model::to_micros(Utc::now());
        let mut tx = self.pool.begin().await?;
        let mut head = super::chain::lock_head(&mut tx, source.as_str()).await?;
        let event_seq = super::chain::append_event(
            &mut tx,
            source.as_str(),
            &mut head,
            super::chain::NewEvent {
                kind: UPSTREAM_VERIFIED,
                conversation_id: None,
                message_id: None,
                observed_at,
                detail,
            },
        )
        .await?;
        tx.commit().await?;
        Ok(event_seq)
    }

    /// The last `upstream_verified` event of each source that has one.
    pub async fn last_upstream_proofs(&self) -> Result<BTreeMap<String, LastProof>> {
        let rows: Vec<(String, i64, DateTime<Utc>, Value)> = sqlx::query_as(
            "SELECT DISTINCT ON (source) source, event_seq, observed_at, detail
             FROM vault.events WHERE kind = $1
             ORDER BY source, event_seq DESC",
        )
        .bind(UPSTREAM_VERIFIED)
        .fetch_all(&self.pool)
        .await?;
        let mut out = BTreeMap::new();
        for (source, event_seq, observed_at, detail) in rows {
            out.insert(
                source,
                LastProof {
                    event_seq,
                    observed_at,
                    detail,
                },
            );
        }
        Ok(out)
    }
}

/// An upstream observation as the store would hold it (NUL replaced, times in
/// microseconds), so it compares with archived rows byte for byte.
pub fn as_stored(
    observation: &crate::model::MessageObservation,
) -> crate::model::MessageObservation {
    super::clean::message_as_stored(observation)
}

/// Archived messages by id.
pub fn by_id(messages: Vec<ArchivedMessage>) -> HashMap<String, ArchivedMessage> {
    messages
        .into_iter()
        .map(|m| (m.message_id.clone(), m))
        .collect()
}
