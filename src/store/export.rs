//! Streaming export of archived messages (`chatvault export`).
//!
//! Rows come from the public `archive.*` views, so an export says exactly what an analyst
//! would see with SQL. PostgreSQL renders each JSON line itself (`json_build_object` keeps
//! the key order), and rows are streamed: memory stays flat whatever the archive's size.

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use sqlx::Row;

use super::{Result, Store, StoreError};

/// Which messages to export. Every filter is optional.
#[derive(Clone, Debug, Default)]
pub struct ExportFilter {
    pub source: Option<String>,
    pub conversation: Option<String>,
    /// Inclusive lower bound on `sent_at`.
    pub since: Option<DateTime<Utc>>,
    /// Exclusive upper bound on `sent_at`.
    pub until: Option<DateTime<Utc>>,
    /// Every message as it stood at this moment (`archive.messages_as_of`): only messages
    /// sent by then, the version current then (and the versions before it), recalls,
    /// deletions and reactions only as far as they had happened.
    pub as_of: Option<DateTime<Utc>>,
}

/// The columns of a CSV export, in order: `archive.messages` without `content` and `raw`
/// (JSON in a spreadsheet helps nobody), plus the conversation's name.
pub const CSV_COLUMNS: &[&str] = &[
    "source",
    "platform",
    "conversation_id",
    "conversation_type",
    "conversation_name",
    "message_id",
    "seq",
    "sender_id",
    "sender_name",
    "sent_at",
    "kind",
    "text",
    "reply_to",
    "edited_at",
    "edit_count",
    "recalled_at",
    "recalled_by",
    "deleted_at",
    "archived_at",
];

/// `SELECT ... FROM archive.messages m JOIN archive.conversations c` plus the filter (the
/// binds are source, conversation, since, until, as of) and the export order. With an
/// as-of time, `m` is `archive.messages_as_of` instead (one branch of the `UNION ALL` is
/// dropped at run time by its one-time filter).
macro_rules! filtered {
    ($($select:expr),+ $(,)?) => {
        concat!(
            $($select,)+
            " FROM (SELECT * FROM archive.messages WHERE $5::timestamptz IS NULL
                    UNION ALL
                    SELECT * FROM archive.messages_as_of($5) WHERE $5::timestamptz IS NOT NULL) m
              JOIN archive.conversations c
                ON c.source = m.source AND c.conversation_id = m.conversation_id
              WHERE ($1::text IS NULL OR m.source = $1)
                AND ($2::text IS NULL OR m.conversation_id = $2)
                AND ($3::timestamptz IS NULL OR m.sent_at >= $3)
                AND ($4::timestamptz IS NULL OR m.sent_at < $4)
              ORDER BY m.source, m.conversation_id, m.sent_at, m.seq NULLS LAST, m.message_id"
        )
    };
}

/// A timestamp column as RFC 3339 UTC with milliseconds, for CSV.
macro_rules! utc {
    ($column:literal) => {
        concat!(
            "to_char(",
            $column,
            " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
        )
    };
}

/// One export's view of the archive: a read-only, repeatable-read transaction, so the
/// count, the chain heads and the rows it reads are one snapshot (a sync committing
/// meanwhile changes none of them).
pub struct ExportSnapshot {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
}

/// One attachment of an exported message (`archive.attachments`).
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct ExportAttachment {
    pub source: String,
    pub conversation_id: String,
    pub message_id: String,
    pub ordinal: i32,
    pub kind: String,
    pub name: Option<String>,
    pub mime: Option<String>,
    /// Bytes stored, or the size upstream declares while not stored.
    pub size: Option<i64>,
    pub status: String,
    pub sha256: Option<String>,
}

/// How many messages match, and their first and last send times.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExportCounts {
    pub messages: i64,
    pub first_sent_at: Option<DateTime<Utc>>,
    pub last_sent_at: Option<DateTime<Utc>>,
}

impl Store {
    /// Begin an export's snapshot (see [`ExportSnapshot`]).
    pub async fn export_snapshot(&self) -> Result<ExportSnapshot> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        Ok(ExportSnapshot { tx })
    }
}

impl ExportSnapshot {
    /// The matching messages' count and time range.
    pub async fn counts(&mut self, filter: &ExportFilter) -> Result<ExportCounts> {
        let (messages, first_sent_at, last_sent_at) = sqlx::query_as(
            "SELECT count(*), min(m.sent_at), max(m.sent_at)
             FROM (SELECT * FROM archive.messages WHERE $5::timestamptz IS NULL
                   UNION ALL
                   SELECT * FROM archive.messages_as_of($5) WHERE $5::timestamptz IS NOT NULL) m
             WHERE ($1::text IS NULL OR m.source = $1)
               AND ($2::text IS NULL OR m.conversation_id = $2)
               AND ($3::timestamptz IS NULL OR m.sent_at >= $3)
               AND ($4::timestamptz IS NULL OR m.sent_at < $4)",
        )
        .bind(filter.source.as_deref())
        .bind(filter.conversation.as_deref())
        .bind(filter.since)
        .bind(filter.until)
        .bind(filter.as_of)
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(ExportCounts {
            messages,
            first_sent_at,
            last_sent_at,
        })
    }

    /// `(source, event_seq, hash hex)` of every source's chain head, or only `source`'s.
    pub async fn chain_heads(
        &mut self,
        source: Option<&str>,
    ) -> Result<Vec<(String, i64, String)>> {
        Ok(sqlx::query_as(
            "SELECT source, event_seq, encode(hash, 'hex') FROM vault.chain_heads
             WHERE $1::text IS NULL OR source = $1 ORDER BY source",
        )
        .bind(source)
        .fetch_all(&mut *self.tx)
        .await?)
    }

    /// Every attachment of the matching messages (all that any of their versions point
    /// to, whatever their status), in export order then by ordinal, from
    /// `archive.attachments`.
    pub async fn attachments(&mut self, filter: &ExportFilter) -> Result<Vec<ExportAttachment>> {
        Ok(sqlx::query_as(
            "SELECT a.source, a.conversation_id, a.message_id, a.ordinal, a.kind, a.name,
                    a.mime, a.size, a.status, a.sha256
             FROM (SELECT source, conversation_id, message_id, sent_at, seq
                     FROM archive.messages WHERE $5::timestamptz IS NULL
                   UNION ALL
                   SELECT source, conversation_id, message_id, sent_at, seq
                     FROM archive.messages_as_of($5) WHERE $5::timestamptz IS NOT NULL) m
             JOIN archive.attachments a
               ON a.source = m.source AND a.conversation_id = m.conversation_id
              AND a.message_id = m.message_id
             WHERE ($1::text IS NULL OR m.source = $1)
               AND ($2::text IS NULL OR m.conversation_id = $2)
               AND ($3::timestamptz IS NULL OR m.sent_at >= $3)
               AND ($4::timestamptz IS NULL OR m.sent_at < $4)
             ORDER BY m.source, m.conversation_id, m.sent_at, m.seq NULLS LAST, m.message_id,
                      a.ordinal",
        )
        .bind(filter.source.as_deref())
        .bind(filter.conversation.as_deref())
        .bind(filter.since)
        .bind(filter.until)
        .bind(filter.as_of)
        .fetch_all(&mut *self.tx)
        .await?)
    }

    /// [`Store::export_jsonl`] in this snapshot.
    pub fn jsonl<'a>(
        &'a mut self,
        filter: &'a ExportFilter,
    ) -> impl Stream<Item = Result<String>> + Send + 'a {
        rows(&mut self.tx, JSONL_SQL, filter, |row| {
            Ok(row.try_get::<String, _>(0)?)
        })
    }

    /// [`Store::export_csv`] in this snapshot.
    pub fn csv<'a>(
        &'a mut self,
        filter: &'a ExportFilter,
    ) -> impl Stream<Item = Result<Vec<Option<String>>>> + Send + 'a {
        rows(&mut self.tx, CSV_SQL, filter, csv_fields)
    }
}

fn csv_fields(row: sqlx::postgres::PgRow) -> Result<Vec<Option<String>>> {
    (0..CSV_COLUMNS.len())
        .map(|i| {
            row.try_get::<Option<String>, _>(i)
                .map_err(StoreError::from)
        })
        .collect()
}

fn rows<'a, T, F>(
    executor: &'a mut sqlx::PgConnection,
    sql: &'static str,
    filter: &'a ExportFilter,
    map: F,
) -> impl Stream<Item = Result<T>> + Send + 'a
where
    T: Send + 'a,
    F: Fn(sqlx::postgres::PgRow) -> Result<T> + Send + 'a,
{
    sqlx::query(sql)
        .bind(filter.source.as_deref())
        .bind(filter.conversation.as_deref())
        .bind(filter.since)
        .bind(filter.until)
        .bind(filter.as_of)
        .fetch(executor)
        .map(move |row| row.map_err(StoreError::from).and_then(&map))
}

/// The JSONL export's query (binds as in [`filtered!`]).
const JSONL_SQL: &str = filtered!(
    "SELECT json_build_object(
        'source', m.source, 'platform', m.platform,
        'conversation_id', m.conversation_id, 'conversation_type', m.conversation_type,
        'conversation_name', c.name,
        'message_id', m.message_id, 'seq', m.seq,
        'sender_id', m.sender_id, 'sender_name', m.sender_name, 'sent_at', m.sent_at,
        'kind', m.kind, 'text', m.text, 'content', m.content, 'reply_to', m.reply_to,
        'edited_at', m.edited_at, 'edit_count', m.edit_count,
        'recalled_at', m.recalled_at, 'recalled_by', m.recalled_by,
        'deleted_at', m.deleted_at, 'archived_at', m.archived_at,
        'versions', COALESCE((
            SELECT json_agg(json_build_object(
                'version', v.version, 'text', v.text, 'content', v.content,
                'edited_at', v.edited_at, 'observed_at', v.observed_at) ORDER BY v.version)
            FROM archive.message_versions v
            WHERE v.source = m.source AND v.conversation_id = m.conversation_id
              AND v.message_id = m.message_id
              AND v.version <= m.edit_count + 1), '[]'::json),
        'reactions', COALESCE((
            SELECT json_agg(json_build_object(
                'user_id', r.user_id, 'user_name', r.user_name, 'emoji', r.emoji,
                'reacted_at', r.reacted_at,
                'removed_at', CASE WHEN $5::timestamptz IS NULL OR r.removed_at <= $5
                                   THEN r.removed_at END)
                ORDER BY r.reacted_at, r.user_id, r.emoji)
            FROM archive.reactions r
            WHERE r.source = m.source AND r.conversation_id = m.conversation_id
              AND r.message_id = m.message_id
              AND ($5::timestamptz IS NULL OR r.reacted_at <= $5)), '[]'::json),
        'raw', m.raw)::text"
);

/// The CSV export's query.
const CSV_SQL: &str = filtered!(
    "SELECT m.source, m.platform, m.conversation_id, m.conversation_type, c.name,
            m.message_id, m.seq::text, m.sender_id, m.sender_name, ",
    utc!("m.sent_at"),
    ", m.kind, m.text, m.reply_to, ",
    utc!("m.edited_at"),
    ", m.edit_count::text, ",
    utc!("m.recalled_at"),
    ", m.recalled_by, ",
    utc!("m.deleted_at"),
    ", ",
    utc!("m.archived_at"),
);

impl Store {
    /// Every matching message as one JSON object per item: the `archive.messages` columns,
    /// the conversation's name, and its whole history: `versions` (version 1 first) and
    /// `reactions` (every episode).
    pub fn export_jsonl<'a>(
        &'a self,
        filter: &'a ExportFilter,
    ) -> impl Stream<Item = Result<String>> + Send + 'a {
        self.export_rows(JSONL_SQL, filter, |row| Ok(row.try_get::<String, _>(0)?))
    }

    /// Every matching message as CSV fields, in [`CSV_COLUMNS`] order (`None` = SQL null).
    pub fn export_csv<'a>(
        &'a self,
        filter: &'a ExportFilter,
    ) -> impl Stream<Item = Result<Vec<Option<String>>>> + Send + 'a {
        self.export_rows(CSV_SQL, filter, csv_fields)
    }

    fn export_rows<'a, T, F>(
        &'a self,
        sql: &'static str,
        filter: &'a ExportFilter,
        map: F,
    ) -> impl Stream<Item = Result<T>> + Send + 'a
    where
        T: Send + 'a,
        F: Fn(sqlx::postgres::PgRow) -> Result<T> + Send + 'a,
    {
        sqlx::query(sql)
            .bind(filter.source.as_deref())
            .bind(filter.conversation.as_deref())
            .bind(filter.since)
            .bind(filter.until)
            .bind(filter.as_of)
            .fetch(&self.pool)
            .map(move |row| row.map_err(StoreError::from).and_then(&map))
    }
}

/// One CSV record (RFC 4180): fields quoted when they hold a comma, a quote or a line
/// break; a null is an empty field. With `guard_formulas`, a field a spreadsheet would run
/// as a formula (beginning with `=`, `+`, `-`, `@`, a tab or a carriage return: anyone in
/// a chat can post one) gets a leading `'`, so the spreadsheet shows it as text.
pub fn csv_record(fields: &[Option<String>], guard_formulas: bool) -> String {
    let mut out = String::new();
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let f = field.as_deref().unwrap_or("");
        let guarded;
        let f = if guard_formulas && f.starts_with(['=', '+', '-', '@', '\t', '\r']) {
            guarded = format!("'{f}");
            guarded.as_str()
        } else {
            f
        };
        if f.contains([',', '"', '\n', '\r']) {
            out.push('"');
            out.push_str(&f.replace('"', "\"\""));
            out.push('"');
        } else {
            out.push_str(f);
        }
    }
    out.push_str("\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_a_spreadsheet_would_run_are_text_unless_asked() {
        let cells = [
            Some("=HYPERLINK(\"http://evil.example\",\"x\")".to_string()),
            Some("+1".to_string()),
            Some("-2".to_string()),
            Some("@SUM(A1)".to_string()),
            Some("\tx".to_string()),
            Some("a=b".to_string()),
        ];
        assert_eq!(
            csv_record(&cells, true),
            "\"'=HYPERLINK(\"\"http://evil.example\"\",\"\"x\"\")\",'+1,'-2,'@SUM(A1),'\tx,a=b\r\n"
        );
        assert_eq!(
            csv_record(&cells, false),
            "\"=HYPERLINK(\"\"http://evil.example\"\",\"\"x\"\")\",+1,-2,@SUM(A1),\tx,a=b\r\n"
        );
    }

    #[test]
    fn csv_quotes_only_what_needs_it() {
        let rec = csv_record(
            &[
                Some("plain".into()),
                None,
                Some("a,b".into()),
                Some("say \"hi\"".into()),
                Some("two\nlines".into()),
                Some("中文".into()),
            ],
            true,
        );
        assert_eq!(
            rec,
            "plain,,\"a,b\",\"say \"\"hi\"\"\",\"two\nlines\",中文\r\n"
        );
    }
}
