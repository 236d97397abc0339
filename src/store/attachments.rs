//! The attachments record (`vault.attachments`): which files the archived versions point to
//! and whether each is stored, and the `attachment_stored` event that proves a stored one.
//!
//! - The scan walks a source's events after `vault.attachment_scan.event_seq` in order, in
//!   bounded batches; for each `message_created` / `message_edited` event it asks the
//!   caller (the connector) for the references of the version the event recorded, and
//!   records new ones as rows, advancing the watermark in the same transaction. A reference
//!   a message already has (same upstream URL) keeps its row and ordinal; a new one takes
//!   the next ordinal.
//! - Storing a file writes its status, sha256 and size in the transaction that appends its
//!   `attachment_stored` event to the source's hash chain (invariant 5), so the row never
//!   says "stored" without the chain saying which bytes.
//! - Rows of kinds not downloaded are `skipped`; they are due again as soon as their kind is
//!   among the kinds downloaded.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::{Postgres, Transaction};

use super::canonical::Hash;
use super::chain::{append_event, lock_head, NewEvent};
use super::{Result, Store};
use crate::attachments::{shown_url, AttachmentKind, AttachmentRef};
use crate::model::{Content, MessageKind, SourceName};

/// The kind of the event that records a stored attachment.
pub const ATTACHMENT_STORED: &str = "attachment_stored";

/// One attachment: `(conversation_id, message_id, ordinal)` within a source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttachmentKey {
    pub conversation_id: String,
    pub message_id: String,
    pub ordinal: i32,
}

/// What one scan batch did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanBatch {
    /// Events read (of any kind).
    pub events: usize,
    /// Versions whose references were read.
    pub versions: usize,
    /// Attachment rows added.
    pub added: usize,
    /// The watermark after the batch.
    pub scanned_to: i64,
    /// No events are left after the watermark.
    pub done: bool,
}

/// An attachment due for download, with what the connector needs to ask for it.
#[derive(Clone, Debug, PartialEq)]
pub struct DueAttachment {
    pub key: AttachmentKey,
    pub reference: AttachmentRef,
    pub shown_url: String,
    pub status: String,
    /// Attempts made so far.
    pub attempts: i32,
}

/// How a download that did not store a file ends for now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotStored {
    /// Retried at `retry_in` (or, without it, given up as `failed`).
    Failed,
    /// Upstream no longer has it (404, 410, an expired signed URL), after the retries.
    Gone,
    /// Larger than `attachments.max_file_mb`.
    TooLarge,
}

impl NotStored {
    fn status(self) -> &'static str {
        match self {
            NotStored::Failed => "failed",
            NotStored::Gone => "gone",
            NotStored::TooLarge => "too_large",
        }
    }
}

/// One `attachment_stored` event, as `verify --attachments` checks it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct StoredEvent {
    pub source: String,
    pub event_seq: i64,
    pub conversation_id: Option<String>,
    pub message_id: Option<String>,
    pub ordinal: Option<i64>,
    pub sha256: Option<String>,
    pub size: Option<i64>,
    /// A later purge removed the message (and may have removed the blob with it).
    pub purged: bool,
}

#[derive(sqlx::FromRow)]
struct ScanRow {
    event_seq: i64,
    conversation_id: Option<String>,
    message_id: Option<String>,
    kind: Option<String>,
    text: Option<String>,
    content: Option<Value>,
}

#[derive(sqlx::FromRow)]
struct DueRow {
    conversation_id: String,
    message_id: String,
    ordinal: i32,
    kind: String,
    name: Option<String>,
    mime: Option<String>,
    declared_size: Option<i64>,
    width: Option<i32>,
    height: Option<i32>,
    duration_ms: Option<i64>,
    upstream_url: String,
    shown_url: String,
    upstream_md5: Option<String>,
    status: String,
    attempts: i32,
}

/// A platform's md5 as lowercase hex, or nothing when it is not one.
fn clean_md5(md5: &Option<String>) -> Option<String> {
    let md5 = md5.as_deref()?.trim().to_ascii_lowercase();
    (md5.len() == 32 && md5.bytes().all(|b| b.is_ascii_hexdigit())).then_some(md5)
}

fn kind_names(kinds: &[AttachmentKind]) -> Vec<String> {
    kinds.iter().map(|k| k.as_str().to_string()).collect()
}

/// Strings PostgreSQL can store (no NUL), as everywhere else in the store.
fn storable(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

impl Store {
    /// Scan at most `limit` events of `source` after its watermark for attachment
    /// references (`refs` gives a version's, in order), record the new ones (`pending`, or
    /// `skipped` for a kind not in `kinds`) and advance the watermark, in one transaction.
    pub async fn scan_attachments<F>(
        &self,
        source: &SourceName,
        kinds: &[AttachmentKind],
        limit: i64,
        refs: F,
    ) -> Result<ScanBatch>
    where
        F: Fn(&Content) -> Vec<AttachmentRef>,
    {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO vault.attachment_scan (source, event_seq) VALUES ($1, 0)
             ON CONFLICT (source) DO NOTHING",
        )
        .bind(source.as_str())
        .execute(&mut *tx)
        .await?;
        let after: i64 = sqlx::query_scalar(
            "SELECT event_seq FROM vault.attachment_scan WHERE source = $1 FOR UPDATE",
        )
        .bind(source.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let rows: Vec<ScanRow> = sqlx::query_as(
            "SELECT e.event_seq, e.conversation_id, e.message_id, v.kind, v.text, v.content
             FROM (SELECT event_seq, kind, conversation_id, message_id, detail
                   FROM vault.events WHERE source = $1 AND event_seq > $2
                   ORDER BY event_seq LIMIT $3) e
             LEFT JOIN vault.message_versions v
               ON e.kind IN ('message_created', 'message_edited')
              AND v.source = $1 AND v.conversation_id = e.conversation_id
              AND v.message_id = e.message_id
              AND v.version = (e.detail->>'version')::int
             ORDER BY e.event_seq",
        )
        .bind(source.as_str())
        .bind(after)
        .bind(limit.max(1))
        .fetch_all(&mut *tx)
        .await?;
        let mut batch = ScanBatch {
            events: rows.len(),
            scanned_to: rows.last().map_or(after, |r| r.event_seq),
            done: (rows.len() as i64) < limit.max(1),
            ..ScanBatch::default()
        };

        // Each message's references in the order its versions were recorded.
        let mut found: BTreeMap<(String, String), Vec<AttachmentRef>> = BTreeMap::new();
        for row in rows {
            let (Some(conversation_id), Some(message_id), Some(kind), Some(text), Some(content)) = (
                row.conversation_id,
                row.message_id,
                row.kind,
                row.text,
                row.content,
            ) else {
                continue;
            };
            batch.versions += 1;
            let content = Content {
                kind: MessageKind::parse(&kind),
                text,
                content,
            };
            found
                .entry((conversation_id, message_id))
                .or_default()
                .extend(refs(&content).into_iter().filter(|r| !r.url.is_empty()));
        }
        if !found.is_empty() {
            batch.added = insert_new_refs(&mut tx, source, kinds, found).await?;
        }
        sqlx::query("UPDATE vault.attachment_scan SET event_seq = $2 WHERE source = $1")
            .bind(source.as_str())
            .bind(batch.scanned_to)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(batch)
    }

    /// How far `source`'s events have been scanned for attachments (0: not at all).
    pub async fn attachment_scan_position(&self, source: &SourceName) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COALESCE(
                 (SELECT event_seq FROM vault.attachment_scan WHERE source = $1), 0)",
        )
        .bind(source.as_str())
        .fetch_one(&self.pool)
        .await?)
    }

    /// Mark `source`'s pending and failed attachments of kinds not in `kinds` as `skipped`
    /// (they are due again once their kind is downloaded). Returns how many.
    pub async fn skip_attachment_kinds(
        &self,
        source: &SourceName,
        kinds: &[AttachmentKind],
    ) -> Result<u64> {
        Ok(sqlx::query(
            "UPDATE vault.attachments SET status = 'skipped', next_attempt_at = NULL
             WHERE source = $1 AND status IN ('pending', 'failed') AND NOT kind = ANY($2)",
        )
        .bind(source.as_str())
        .bind(kind_names(kinds))
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// At most `limit` attachments of `source` due for download, in key order after
    /// `after`: pending ones, failed ones whose retry time has come, and skipped ones whose
    /// kind is now among `kinds`; only kinds in `kinds`.
    pub async fn due_attachments(
        &self,
        source: &SourceName,
        kinds: &[AttachmentKind],
        after: Option<&AttachmentKey>,
        limit: i64,
    ) -> Result<Vec<DueAttachment>> {
        let (c, m, o) = after.map_or((String::new(), String::new(), -1), |k| {
            (k.conversation_id.clone(), k.message_id.clone(), k.ordinal)
        });
        let rows: Vec<DueRow> = sqlx::query_as(
            "SELECT conversation_id, message_id, ordinal, kind, name, mime, declared_size, width,
                    height, duration_ms, upstream_url, shown_url, upstream_md5, status, attempts
             FROM vault.attachments
             WHERE source = $1 AND kind = ANY($2)
               AND (status IN ('pending', 'skipped')
                    OR (status = 'failed' AND next_attempt_at <= now()))
               AND ($6 OR (conversation_id, message_id, ordinal) > ($3, $4, $5))
             ORDER BY conversation_id, message_id, ordinal
             LIMIT $7",
        )
        .bind(source.as_str())
        .bind(kind_names(kinds))
        .bind(&c)
        .bind(&m)
        .bind(o)
        .bind(after.is_none())
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| {
                Some(DueAttachment {
                    key: AttachmentKey {
                        conversation_id: r.conversation_id,
                        message_id: r.message_id,
                        ordinal: r.ordinal,
                    },
                    reference: AttachmentRef {
                        kind: AttachmentKind::parse(&r.kind)?,
                        url: r.upstream_url,
                        name: r.name,
                        mime: r.mime,
                        size: r.declared_size,
                        width: r.width,
                        height: r.height,
                        duration_ms: r.duration_ms,
                        md5: r.upstream_md5,
                    },
                    shown_url: r.shown_url,
                    status: r.status,
                    attempts: r.attempts,
                })
            })
            .collect())
    }

    /// Attachments due now (the download queue): `(source, count)` for every source with any.
    pub async fn attachment_queue(
        &self,
        kinds: &[AttachmentKind],
    ) -> Result<BTreeMap<String, i64>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT source, count(*) FROM vault.attachments
             WHERE kind = ANY($1)
               AND (status IN ('pending', 'skipped')
                    OR (status = 'failed' AND next_attempt_at <= now()))
             GROUP BY source",
        )
        .bind(kind_names(kinds))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// Attachments by source and status.
    pub async fn attachment_counts(&self) -> Result<BTreeMap<(String, String), i64>> {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT source, status, count(*) FROM vault.attachments GROUP BY source, status",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(s, st, n)| ((s, st), n)).collect())
    }

    /// Record stored files, each with its `attachment_stored` event, all in one
    /// transaction (one lock of the chain head for the lot): the event's sequence number
    /// for each, or `None` for one that was already stored or is no longer recorded (a
    /// purge took it).
    pub async fn record_attachments_stored(
        &self,
        source: &SourceName,
        stored: &[(AttachmentKey, crate::attachments::blob::Sha256Hex, u64)],
    ) -> Result<Vec<Option<i64>>> {
        let mut tx = self.pool.begin().await?;
        let mut head = lock_head(&mut tx, source.as_str()).await?;
        let mut seqs = Vec::with_capacity(stored.len());
        for (key, sha256, size) in stored {
            seqs.push(record_stored(&mut tx, source, &mut head, key, sha256, *size).await?);
        }
        tx.commit().await?;
        Ok(seqs)
    }

    /// Record a download of attachment `key` that stored nothing: one more attempt, the
    /// outcome's status, `error` (which must hold no secret: no query string, no header)
    /// and, for a retry, when it is due again (`None`: not retried).
    pub async fn record_attachment_not_stored(
        &self,
        source: &SourceName,
        key: &AttachmentKey,
        outcome: NotStored,
        error: &str,
        retry_in: Option<Duration>,
    ) -> Result<()> {
        let retry_at: Option<DateTime<Utc>> = retry_in.map(|d| {
            Utc::now() + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(365))
        });
        sqlx::query(
            "UPDATE vault.attachments
             SET status = $5, error = $6, next_attempt_at = $7, attempts = attempts + 1
             WHERE source = $1 AND conversation_id = $2 AND message_id = $3 AND ordinal = $4
               AND status <> 'stored'",
        )
        .bind(source.as_str())
        .bind(&key.conversation_id)
        .bind(&key.message_id)
        .bind(key.ordinal)
        .bind(outcome.status())
        .bind(storable(error))
        .bind(retry_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// At most `limit` `attachment_stored` events after `(source, event_seq)` in that order
    /// (all sources, or only `only`), for `verify --attachments`.
    pub async fn stored_attachment_events(
        &self,
        only: Option<&SourceName>,
        after: Option<(&str, i64)>,
        limit: i64,
    ) -> Result<Vec<StoredEvent>> {
        let (s, q) = after.unwrap_or(("", 0));
        Ok(sqlx::query_as(
            "SELECT source, event_seq, conversation_id, message_id,
                    (detail->>'ordinal')::int8 AS ordinal, detail->>'sha256' AS sha256,
                    (detail->>'size')::int8 AS size,
                    EXISTS (SELECT 1 FROM vault.purged_messages p
                            WHERE p.source = e.source AND p.conversation_id = e.conversation_id
                              AND p.message_id = e.message_id
                              AND p.purge_seq > e.event_seq) AS purged
             FROM vault.events e
             WHERE kind = $1 AND ($2::text IS NULL OR source = $2)
               AND (source, event_seq) > ($3, $4)
             ORDER BY source, event_seq
             LIMIT $5",
        )
        .bind(ATTACHMENT_STORED)
        .bind(only.map(|s| s.as_str()))
        .bind(s)
        .bind(q)
        .bind(limit.max(0))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every sha256 an attachment row names (the blobs still referenced).
    pub async fn attachment_blobs_referenced(&self, sha256: &[String]) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT sha256 FROM vault.attachments WHERE sha256 = ANY($1)",
        )
        .bind(sha256)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Insert the references in `found` that their messages do not have yet (by upstream URL),
/// each new one with the next ordinal of its message. Returns how many rows were added.
async fn insert_new_refs(
    tx: &mut Transaction<'_, Postgres>,
    source: &SourceName,
    kinds: &[AttachmentKind],
    found: BTreeMap<(String, String), Vec<AttachmentRef>>,
) -> Result<usize> {
    let (convs, msgs): (Vec<&str>, Vec<&str>) =
        found.keys().map(|(c, m)| (c.as_str(), m.as_str())).unzip();
    let held: Vec<(String, String, i32, String)> = sqlx::query_as(
        "SELECT a.conversation_id, a.message_id, a.ordinal, a.upstream_url
         FROM vault.attachments a
         JOIN unnest($2::text[], $3::text[]) AS k(conversation_id, message_id)
           ON k.conversation_id = a.conversation_id AND k.message_id = a.message_id
         WHERE a.source = $1",
    )
    .bind(source.as_str())
    .bind(&convs)
    .bind(&msgs)
    .fetch_all(&mut **tx)
    .await?;
    let mut known: HashMap<(String, String), (HashMap<String, i32>, i32)> = HashMap::new();
    for (c, m, ordinal, url) in held {
        let entry = known.entry((c, m)).or_default();
        entry.0.insert(url, ordinal);
        entry.1 = entry.1.max(ordinal + 1);
    }

    #[derive(Default)]
    struct Columns {
        conv: Vec<String>,
        msg: Vec<String>,
        ordinal: Vec<i32>,
        kind: Vec<String>,
        name: Vec<Option<String>>,
        mime: Vec<Option<String>>,
        size: Vec<Option<i64>>,
        width: Vec<Option<i32>>,
        height: Vec<Option<i32>>,
        duration: Vec<Option<i64>>,
        url: Vec<String>,
        shown: Vec<String>,
        md5: Vec<Option<String>>,
        status: Vec<String>,
    }
    let mut col = Columns::default();
    for ((c, m), refs) in found {
        let entry = known.entry((c.clone(), m.clone())).or_default();
        for r in refs {
            let url = storable(&r.url);
            if entry.0.contains_key(&url) {
                continue;
            }
            let ordinal = entry.1;
            entry.1 += 1;
            entry.0.insert(url.clone(), ordinal);
            col.conv.push(c.clone());
            col.msg.push(m.clone());
            col.ordinal.push(ordinal);
            col.kind.push(r.kind.as_str().to_string());
            col.name.push(r.name.as_deref().map(storable));
            col.mime.push(r.mime.as_deref().map(storable));
            col.size.push(r.size.filter(|s| *s >= 0));
            col.width.push(r.width);
            col.height.push(r.height);
            col.duration.push(r.duration_ms);
            col.shown.push(shown_url(&url));
            col.url.push(url);
            col.md5.push(clean_md5(&r.md5));
            col.status.push(
                if kinds.contains(&r.kind) {
                    "pending"
                } else {
                    "skipped"
                }
                .to_string(),
            );
        }
    }
    if col.conv.is_empty() {
        return Ok(0);
    }
    let added = sqlx::query(
        "INSERT INTO vault.attachments
             (source, conversation_id, message_id, ordinal, kind, name, mime, declared_size,
              width, height, duration_ms, upstream_url, shown_url, upstream_md5, status)
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::int4[], $5::text[], $6::text[],
                                  $7::text[], $8::int8[], $9::int4[], $10::int4[], $11::int8[],
                                  $12::text[], $13::text[], $14::text[], $15::text[])
         ON CONFLICT DO NOTHING",
    )
    .bind(source.as_str())
    .bind(&col.conv)
    .bind(&col.msg)
    .bind(&col.ordinal)
    .bind(&col.kind)
    .bind(&col.name)
    .bind(&col.mime)
    .bind(&col.size)
    .bind(&col.width)
    .bind(&col.height)
    .bind(&col.duration)
    .bind(&col.url)
    .bind(&col.shown)
    .bind(&col.md5)
    .bind(&col.status)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(added as usize)
}

/// One stored file of [`Store::record_attachments_stored`], inside its transaction.
async fn record_stored(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    source: &SourceName,
    head: &mut (i64, Hash),
    key: &AttachmentKey,
    sha256: &crate::attachments::blob::Sha256Hex,
    size: u64,
) -> Result<Option<i64>> {
    let row: Option<(String, String, String)> = sqlx::query_as(
        "SELECT kind, shown_url, status FROM vault.attachments
         WHERE source = $1 AND conversation_id = $2 AND message_id = $3 AND ordinal = $4
         FOR UPDATE",
    )
    .bind(source.as_str())
    .bind(&key.conversation_id)
    .bind(&key.message_id)
    .bind(key.ordinal)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((kind, url, status)) = row else {
        return Ok(None);
    };
    if status == "stored" {
        return Ok(None);
    }
    let size = i64::try_from(size).unwrap_or(i64::MAX);
    let detail = json!({
        "ordinal": key.ordinal,
        "kind": kind,
        "sha256": sha256.as_str(),
        "size": size,
        "url": url,
    });
    let observed_at = crate::model::to_micros(Utc::now());
    let event = NewEvent {
        kind: ATTACHMENT_STORED,
        conversation_id: Some(&key.conversation_id),
        message_id: Some(&key.message_id),
        observed_at,
        detail: &detail,
    };
    let seq = append_event(tx, source.as_str(), head, event).await?;
    sqlx::query(
        "UPDATE vault.attachments
         SET status = 'stored', sha256 = $5, size = $6, fetched_at = $7, error = NULL,
             next_attempt_at = NULL, attempts = attempts + 1
         WHERE source = $1 AND conversation_id = $2 AND message_id = $3 AND ordinal = $4",
    )
    .bind(source.as_str())
    .bind(&key.conversation_id)
    .bind(&key.message_id)
    .bind(key.ordinal)
    .bind(sha256.as_str())
    .bind(size)
    .bind(observed_at)
    .execute(&mut **tx)
    .await?;
    Ok(Some(seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5s_are_kept_only_when_they_are_md5s() {
        assert_eq!(
            clean_md5(&Some("D41D8CD98F00B204E9800998ECF8427E".into())).as_deref(),
            Some("d41d8cd98f00b204e9800998ecf8427e")
        );
        assert_eq!(clean_md5(&Some("xyz".into())), None);
        assert_eq!(clean_md5(&None), None);
    }
}
