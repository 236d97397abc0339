//! Read-only queries for browsing the archive (the web pages): conversations, a window of a
//! conversation's messages with their versions, reactions and reply targets, recent runs and
//! quarantine. Everything reads the public `archive.*` views, except the attachments'
//! dimensions and the blob behind one, which only `vault.attachments` holds.

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{Result, Store};

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ConversationSummary {
    pub source: String,
    pub platform: String,
    pub conversation_id: String,
    pub conversation_type: String,
    pub name: Option<String>,
    pub message_count: i64,
    pub first_message_at: Option<DateTime<Utc>>,
    pub last_message_at: Option<DateTime<Utc>>,
}

impl ConversationSummary {
    /// The name, or the id where upstream gave none.
    pub fn title(&self) -> &str {
        self.name
            .as_deref()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or(&self.conversation_id)
    }
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct MessageView {
    pub message_id: String,
    pub seq: Option<i64>,
    pub sender_id: Option<String>,
    pub sender_name: Option<String>,
    pub sent_at: DateTime<Utc>,
    pub kind: String,
    pub text: Option<String>,
    pub content: Value,
    pub reply_to: Option<String>,
    pub edited_at: Option<DateTime<Utc>>,
    pub edit_count: i64,
    pub recalled_at: Option<DateTime<Utc>>,
    pub recalled_by: Option<String>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub archived_at: DateTime<Utc>,
    /// Where this message sits in the conversation's order (see [`Position`]).
    #[sqlx(skip)]
    pub position: Position,
    /// Every version, 1 first; filled only for edited messages.
    #[sqlx(skip)]
    pub versions: Vec<VersionView>,
    /// Every reaction episode, oldest first.
    #[sqlx(skip)]
    pub reactions: Vec<ReactionView>,
    /// The message replied to, where the archive has it: (sender, text).
    #[sqlx(skip)]
    pub reply: Option<(Option<String>, Option<String>)>,
    /// The files any version of the message points to, by ordinal.
    #[sqlx(skip)]
    pub attachments: Vec<AttachmentView>,
}

/// One attachment of a message as the pages show it and the file route serves it.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct AttachmentView {
    pub message_id: String,
    pub ordinal: i32,
    /// image, file, voice, video, sticker or thumbnail.
    pub kind: String,
    pub name: Option<String>,
    /// As recorded (from upstream or the download); the route decides what it serves as.
    pub mime: Option<String>,
    /// Bytes stored, or the size upstream declares while not stored.
    pub size: Option<i64>,
    pub width: Option<i32>,
    pub height: Option<i32>,
    /// pending, stored, failed, too_large, gone or skipped.
    pub status: String,
    /// The stored file's sha256 (lowercase hex), when stored.
    pub sha256: Option<String>,
    /// Where upstream keeps it, without credentials or query string (text, never a link).
    pub upstream_url: String,
    pub error: Option<String>,
}

impl AttachmentView {
    /// Whether its file is in the blob store.
    pub fn is_stored(&self) -> bool {
        self.status == "stored" && self.sha256.is_some()
    }
}

const ATTACHMENT_COLUMNS: &str = "message_id, ordinal, kind, name, mime,
     COALESCE(size, declared_size) AS size, width, height, status, sha256,
     shown_url AS upstream_url, error";

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct VersionView {
    pub message_id: String,
    pub version: i32,
    pub text: Option<String>,
    pub edited_at: Option<DateTime<Utc>>,
    pub observed_at: DateTime<Utc>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ReactionView {
    pub message_id: String,
    pub user_id: String,
    pub user_name: Option<String>,
    pub emoji: String,
    pub reacted_at: DateTime<Utc>,
    pub removed_at: Option<DateTime<Utc>>,
}

/// A message's place in its conversation's order: send time, then seq (messages without
/// one last), then id. Printed as `MICROS.SEQ.ID` for links.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Position {
    pub micros: i64,
    pub seq: i64,
    pub message_id: String,
}

impl Position {
    pub fn encode(&self) -> String {
        format!("{}.{}.{}", self.micros, self.seq, self.message_id)
    }

    pub fn parse(s: &str) -> Option<Position> {
        let mut parts = s.splitn(3, '.');
        let micros: i64 = parts.next()?.parse().ok()?;
        DateTime::<Utc>::from_timestamp_micros(micros)?;
        let seq = parts.next()?.parse().ok()?;
        let message_id = parts.next()?.to_string();
        (!message_id.is_empty()).then_some(Position {
            micros,
            seq,
            message_id,
        })
    }
}

/// Which part of a conversation to show.
#[derive(Clone, Debug)]
pub enum Slice {
    /// The newest messages.
    Latest,
    /// The messages just before this position.
    Before(Position),
    /// The messages just after this position.
    After(Position),
    /// The messages around one message (a search hit).
    Around(String),
}

/// A slice of a conversation, oldest first.
#[derive(Clone, Debug, Default)]
pub struct MessageSlice {
    pub messages: Vec<MessageView>,
    pub has_older: bool,
    pub has_newer: bool,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct RunView {
    pub source: String,
    pub run_id: i64,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub status: String,
    pub messages_new: i64,
    pub messages_changed: i64,
    pub requests: i64,
    pub error: Option<String>,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct QuarantineView {
    pub source: String,
    pub observed_at: DateTime<Utc>,
    pub reason: String,
    pub raw: Option<Value>,
}

#[derive(Clone, Copy)]
enum Direction {
    /// Strictly before, newest first.
    Before,
    /// Strictly after, oldest first.
    After,
    /// The position itself and after, oldest first.
    From,
}

/// The conversation order; it starts with `sent_at` so that `messages_by_time` serves it.
const ORDER_KEY: &str = "(sent_at, COALESCE(seq, 9223372036854775807), message_id)";

const MESSAGE_COLUMNS: &str = "message_id, seq, sender_id, sender_name, sent_at, kind, text,
     content, reply_to, edited_at, edit_count::bigint AS edit_count, recalled_at, recalled_by,
     deleted_at, archived_at, COALESCE(seq, 9223372036854775807) AS k_seq";

impl Store {
    /// Conversations, most recently active first (optionally of one source).
    pub async fn conversation_list(
        &self,
        source: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ConversationSummary>> {
        Ok(sqlx::query_as(
            "SELECT source, platform, conversation_id, conversation_type, name,
                    message_count::bigint AS message_count, first_message_at, last_message_at
             FROM archive.conversations
             WHERE ($1::text IS NULL OR source = $1)
             ORDER BY last_message_at DESC NULLS LAST, source, conversation_id
             LIMIT $2",
        )
        .bind(source)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn conversation_summary(
        &self,
        source: &str,
        conversation_id: &str,
    ) -> Result<Option<ConversationSummary>> {
        Ok(sqlx::query_as(
            "SELECT source, platform, conversation_id, conversation_type, name,
                    message_count::bigint AS message_count, first_message_at, last_message_at
             FROM archive.conversations WHERE source = $1 AND conversation_id = $2",
        )
        .bind(source)
        .bind(conversation_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Up to `limit` messages of a conversation, oldest first, with their versions (for
    /// edited ones), reactions and reply targets.
    pub async fn message_window(
        &self,
        source: &str,
        conversation_id: &str,
        window: &Slice,
        limit: i64,
    ) -> Result<MessageSlice> {
        self.message_window_as_of(source, conversation_id, window, limit, None)
            .await
    }

    /// [`Store::message_window`] as the conversation stood at `as_of`
    /// (`archive.messages_as_of`): versions, reactions and reply targets as of then too.
    /// `None`: as it stands now.
    pub async fn message_window_as_of(
        &self,
        source: &str,
        conversation_id: &str,
        window: &Slice,
        limit: i64,
        as_of: Option<DateTime<Utc>>,
    ) -> Result<MessageSlice> {
        let limit = limit.clamp(1, 1000);
        let (mut messages, has_older, has_newer) = match window {
            Slice::Latest => {
                let (mut rows, more) = self
                    .messages_from(
                        source,
                        conversation_id,
                        None,
                        Direction::Before,
                        limit,
                        as_of,
                    )
                    .await?;
                rows.reverse();
                (rows, more, false)
            }
            Slice::Before(p) => {
                let (mut rows, more) = self
                    .messages_from(
                        source,
                        conversation_id,
                        Some(p),
                        Direction::Before,
                        limit,
                        as_of,
                    )
                    .await?;
                rows.reverse();
                (rows, more, true)
            }
            Slice::After(p) => {
                let (rows, more) = self
                    .messages_from(
                        source,
                        conversation_id,
                        Some(p),
                        Direction::After,
                        limit,
                        as_of,
                    )
                    .await?;
                (rows, true, more)
            }
            Slice::Around(message_id) => {
                let anchor: Option<(DateTime<Utc>, i64)> = sqlx::query_as(
                    "SELECT sent_at, COALESCE(seq, 9223372036854775807)
                     FROM archive.messages
                     WHERE source = $1 AND conversation_id = $2 AND message_id = $3",
                )
                .bind(source)
                .bind(conversation_id)
                .bind(message_id)
                .fetch_optional(&self.pool)
                .await?;
                let Some((sent_at, seq)) = anchor else {
                    return Box::pin(self.message_window_as_of(
                        source,
                        conversation_id,
                        &Slice::Latest,
                        limit,
                        as_of,
                    ))
                    .await;
                };
                let p = Position {
                    micros: sent_at.timestamp_micros(),
                    seq,
                    message_id: message_id.clone(),
                };
                let half = (limit / 2).max(1);
                // Before the anchor, then the anchor and after it.
                let (mut older, has_older) = self
                    .messages_from(
                        source,
                        conversation_id,
                        Some(&p),
                        Direction::Before,
                        half,
                        as_of,
                    )
                    .await?;
                older.reverse();
                let (newer, has_newer) = self
                    .messages_from(
                        source,
                        conversation_id,
                        Some(&p),
                        Direction::From,
                        limit - half,
                        as_of,
                    )
                    .await?;
                older.extend(newer);
                (older, has_older, has_newer)
            }
        };
        self.fill_history(source, conversation_id, &mut messages, as_of)
            .await?;
        Ok(MessageSlice {
            messages,
            has_older,
            has_newer,
        })
    }

    /// `limit` messages on one side of `from`, nearest first, and whether more lie beyond.
    async fn messages_from(
        &self,
        source: &str,
        conversation_id: &str,
        from: Option<&Position>,
        direction: Direction,
        limit: i64,
        as_of: Option<DateTime<Utc>>,
    ) -> Result<(Vec<MessageView>, bool)> {
        let messages = if as_of.is_some() {
            "archive.messages_as_of($7)"
        } else {
            "archive.messages"
        };
        let (cmp, bound, dir) = match direction {
            Direction::Before => ("<", "<=", "DESC"),
            Direction::After => (">", ">=", "ASC"),
            Direction::From => (">=", ">=", "ASC"),
        };
        // The plain `sent_at` bound lets the index narrow the scan; the row comparison
        // then orders ties exactly.
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM {messages}
             WHERE source = $1 AND conversation_id = $2 AND ($7::timestamptz IS NULL OR true)
               AND ($3::timestamptz IS NULL OR sent_at {bound} $3)
               AND ($3::timestamptz IS NULL OR {ORDER_KEY} {cmp} ($3, $4, $5))
             ORDER BY sent_at {dir}, COALESCE(seq, 9223372036854775807) {dir}, message_id {dir}
             LIMIT $6"
        );
        let from_time = match from {
            Some(p) => Some(
                DateTime::<Utc>::from_timestamp_micros(p.micros).ok_or_else(|| {
                    super::StoreError::Database(sqlx::Error::Protocol(format!(
                        "position {} is out of range",
                        p.micros
                    )))
                })?,
            ),
            None => None,
        };
        let rows = sqlx::query(&sql)
            .bind(source)
            .bind(conversation_id)
            .bind(from_time)
            .bind(from.map(|p| p.seq))
            .bind(from.map(|p| p.message_id.as_str()))
            .bind(limit + 1)
            .bind(as_of)
            .fetch_all(&self.pool)
            .await?;
        let more = rows.len() as i64 > limit;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows.into_iter().take(limit as usize) {
            use sqlx::{FromRow, Row};
            let mut m = MessageView::from_row(&row)?;
            m.position = Position {
                micros: m.sent_at.timestamp_micros(),
                seq: row.try_get("k_seq")?,
                message_id: m.message_id.clone(),
            };
            out.push(m);
        }
        Ok((out, more))
    }

    async fn fill_history(
        &self,
        source: &str,
        conversation_id: &str,
        messages: &mut [MessageView],
        as_of: Option<DateTime<Utc>>,
    ) -> Result<()> {
        if messages.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = messages.iter().map(|m| m.message_id.as_str()).collect();
        let edited: Vec<&str> = messages
            .iter()
            .filter(|m| m.edit_count > 0)
            .map(|m| m.message_id.as_str())
            .collect();
        let versions: Vec<VersionView> = if edited.is_empty() {
            Vec::new()
        } else {
            sqlx::query_as(
                "SELECT message_id, version, text, edited_at, observed_at
                 FROM archive.message_versions
                 WHERE source = $1 AND conversation_id = $2 AND message_id = ANY($3)
                   AND ($4::timestamptz IS NULL OR version = 1
                        OR COALESCE(edited_at, observed_at) <= $4)
                 ORDER BY message_id, version",
            )
            .bind(source)
            .bind(conversation_id)
            .bind(&edited)
            .bind(as_of)
            .fetch_all(&self.pool)
            .await?
        };
        let reactions: Vec<ReactionView> = sqlx::query_as(
            "SELECT message_id, user_id, user_name, emoji, reacted_at,
                    CASE WHEN $4::timestamptz IS NULL OR removed_at <= $4 THEN removed_at END
                        AS removed_at
             FROM archive.reactions
             WHERE source = $1 AND conversation_id = $2 AND message_id = ANY($3)
               AND ($4::timestamptz IS NULL OR reacted_at <= $4)
             ORDER BY reacted_at, user_id, emoji",
        )
        .bind(source)
        .bind(conversation_id)
        .bind(&ids)
        .bind(as_of)
        .fetch_all(&self.pool)
        .await?;
        let replied: Vec<&str> = messages
            .iter()
            .filter_map(|m| m.reply_to.as_deref())
            .collect();
        // (message_id, sender_name, sender_id, text)
        type Reply = (String, Option<String>, Option<String>, Option<String>);
        let replies: Vec<Reply> = if replied.is_empty() {
            Vec::new()
        } else {
            let replies = if as_of.is_some() {
                "archive.messages_as_of($4)"
            } else {
                "archive.messages"
            };
            sqlx::query_as(&format!(
                "SELECT message_id, sender_name, sender_id, text FROM {replies}
                     WHERE source = $1 AND conversation_id = $2 AND message_id = ANY($3)
                       AND ($4::timestamptz IS NULL OR true)"
            ))
            .bind(source)
            .bind(conversation_id)
            .bind(&replied)
            .bind(as_of)
            .fetch_all(&self.pool)
            .await?
        };
        let attachments = self
            .message_attachments(source, conversation_id, &ids)
            .await?;
        for m in messages.iter_mut() {
            m.attachments = attachments
                .iter()
                .filter(|a| a.message_id == m.message_id)
                .cloned()
                .collect();
            m.versions = versions
                .iter()
                .filter(|v| v.message_id == m.message_id)
                .cloned()
                .collect();
            m.reactions = reactions
                .iter()
                .filter(|r| r.message_id == m.message_id)
                .cloned()
                .collect();
            if let Some(target) = &m.reply_to {
                m.reply = replies
                    .iter()
                    .find(|(id, ..)| id == target)
                    .map(|(_, name, id, text)| (name.clone().or(id.clone()), text.clone()));
            }
        }
        Ok(())
    }

    /// The attachments of these messages of one conversation, by message and ordinal.
    pub async fn message_attachments(
        &self,
        source: &str,
        conversation_id: &str,
        message_ids: &[&str],
    ) -> Result<Vec<AttachmentView>> {
        if message_ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_as(&format!(
            "SELECT {ATTACHMENT_COLUMNS} FROM vault.attachments
             WHERE source = $1 AND conversation_id = $2 AND message_id = ANY($3)
             ORDER BY message_id, ordinal"
        ))
        .bind(source)
        .bind(conversation_id)
        .bind(message_ids)
        .fetch_all(&self.pool)
        .await?)
    }

    /// One attachment, by its key; `None` when the archive has no such attachment.
    pub async fn attachment(
        &self,
        source: &str,
        conversation_id: &str,
        message_id: &str,
        ordinal: i32,
    ) -> Result<Option<AttachmentView>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {ATTACHMENT_COLUMNS} FROM vault.attachments
             WHERE source = $1 AND conversation_id = $2 AND message_id = $3 AND ordinal = $4"
        ))
        .bind(source)
        .bind(conversation_id)
        .bind(message_id)
        .bind(ordinal)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The newest runs of every source.
    pub async fn recent_runs(&self, limit: i64) -> Result<Vec<RunView>> {
        Ok(sqlx::query_as(
            "SELECT source, run_id, started_at, finished_at, status,
                    messages_new::bigint AS messages_new,
                    messages_changed::bigint AS messages_changed,
                    requests::bigint AS requests, error
             FROM archive.sync_runs ORDER BY started_at DESC, run_id DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The newest quarantined records of every source.
    pub async fn recent_quarantine(&self, limit: i64) -> Result<Vec<QuarantineView>> {
        Ok(sqlx::query_as(
            "SELECT source, observed_at, reason, raw
             FROM archive.quarantine ORDER BY observed_at DESC LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_and_reject_garbage() {
        let p = Position {
            micros: 1_700_000_000_123_456,
            seq: 42,
            message_id: "1824334157854015400.x".into(),
        };
        assert_eq!(Position::parse(&p.encode()), Some(p));
        for bad in [
            "",
            "1.2",
            "a.b.c",
            "1.2.",
            "1..x",
            "9223372036854775807.1.x",
        ] {
            assert_eq!(Position::parse(bad), None, "{bad}");
        }
    }
}
