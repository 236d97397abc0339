//! What the search indexer reads from the archive: the chain heads, the message events
//! after a watermark, and messages as the index holds them (current text, earlier
//! versions' text, flags, conversation type). The indexer is platform-neutral: it knows
//! these rows, never a connector.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{Result, Store};

/// One message as the index holds it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct MessageDoc {
    pub source: String,
    pub conversation_id: String,
    pub message_id: String,
    pub sender_id: Option<String>,
    pub sender_name: Option<String>,
    pub sent_at: DateTime<Utc>,
    pub kind: String,
    pub text: String,
    pub conversation_type: String,
    pub edited: bool,
    pub recalled: bool,
    pub deleted: bool,
    /// Earlier versions' text, oldest first, one per line.
    pub history: String,
}

/// An event of the log, as far as the indexer cares: which message it names.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct EventRef {
    pub event_seq: i64,
    pub kind: String,
    pub conversation_id: Option<String>,
    pub message_id: Option<String>,
}

const SELECT_DOCS: &str = "
SELECT m.source, m.conversation_id, m.message_id, m.sender_id, m.sender_name, m.sent_at,
       v.kind, v.text, c.conversation_type,
       m.current_version > 1 AS edited,
       m.recalled_at IS NOT NULL AS recalled,
       m.deleted_at IS NOT NULL AS deleted,
       COALESCE((SELECT string_agg(h.text, E'\\n' ORDER BY h.version)
                 FROM vault.message_versions h
                 WHERE h.source = m.source AND h.conversation_id = m.conversation_id
                   AND h.message_id = m.message_id AND h.version < m.current_version), '') AS history
FROM vault.messages m
JOIN vault.message_versions v
  ON v.source = m.source AND v.conversation_id = m.conversation_id
 AND v.message_id = m.message_id AND v.version = m.current_version
JOIN vault.conversations c
  ON c.source = m.source AND c.conversation_id = m.conversation_id";

impl Store {
    /// Every source's chain head (`event_seq` of its last event).
    pub async fn chain_heads(&self) -> Result<BTreeMap<String, i64>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT source, event_seq FROM vault.chain_heads ORDER BY source")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    /// At most `limit` events of `source` with `after < event_seq <= upto`, in order.
    pub async fn events_between(
        &self,
        source: &str,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<EventRef>> {
        Ok(sqlx::query_as(
            "SELECT event_seq, kind, conversation_id, message_id FROM vault.events
             WHERE source = $1 AND event_seq > $2 AND event_seq <= $3
             ORDER BY event_seq LIMIT $4",
        )
        .bind(source)
        .bind(after)
        .bind(upto)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The current state of the given messages of one source, as the index holds them.
    pub async fn message_docs(
        &self,
        source: &str,
        keys: &[(String, String)],
    ) -> Result<Vec<MessageDoc>> {
        let (conversations, messages): (Vec<&str>, Vec<&str>) =
            keys.iter().map(|(c, m)| (c.as_str(), m.as_str())).unzip();
        let sql = format!(
            "{SELECT_DOCS}
JOIN unnest($2::text[], $3::text[]) AS k(conversation_id, message_id)
  ON k.conversation_id = m.conversation_id AND k.message_id = m.message_id
WHERE m.source = $1"
        );
        Ok(sqlx::query_as::<_, MessageDoc>(&sql)
            .bind(source)
            .bind(&conversations)
            .bind(&messages)
            .fetch_all(&self.pool)
            .await?)
    }

    /// The next `limit` messages of one source after `after` in key order, as the index
    /// holds them (a rebuild's scan).
    pub async fn scan_message_docs(
        &self,
        source: &str,
        after: Option<&(String, String)>,
        limit: i64,
    ) -> Result<Vec<MessageDoc>> {
        let (c, m) = after.cloned().unwrap_or_default();
        let sql = format!(
            "{SELECT_DOCS}
WHERE m.source = $1 AND ($4 OR (m.conversation_id, m.message_id) > ($2, $3))
ORDER BY m.conversation_id, m.message_id
LIMIT $5"
        );
        Ok(sqlx::query_as::<_, MessageDoc>(&sql)
            .bind(source)
            .bind(&c)
            .bind(&m)
            .bind(after.is_none())
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Messages archived, in all and per source.
    pub async fn message_counts(&self) -> Result<BTreeMap<String, i64>> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT source, count(*) FROM vault.messages GROUP BY source")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    /// At most `n` messages of `source` picked at random: `(conversation_id, message_id)`.
    pub async fn sample_messages(&self, source: &str, n: i64) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT conversation_id, message_id FROM vault.messages
             WHERE source = $1 ORDER BY random() LIMIT $2",
        )
        .bind(source)
        .bind(n)
        .fetch_all(&self.pool)
        .await?)
    }
}
