//! Legal holds and purges: the one way anything archived is ever deleted (README,
//! "Retention and legal hold").
//!
//! Invariants kept here (and by the triggers of migration `…000200`):
//! - A purge removes a message (its versions and reactions with it) only when its `sent_at`
//!   is before the rule's cut-off and no active hold covers it (`vault.held`, the one
//!   definition, checked again by a trigger on `vault.purged_messages`).
//! - Each batch is one transaction that locks the holds table, then the source's chain head,
//!   writes one `messages_purged` event (rule, cut-off, counts, the digest of the listing of
//!   what it removes), lists every removed message in `vault.purged_messages`, and only then
//!   deletes: the delete triggers admit a row only for a message that listing names, in the
//!   transaction that wrote that event. A purge interrupted between batches leaves an
//!   archive that verifies.
//! - Placing or releasing a hold takes the holds lock first too, so a purge batch either
//!   committed before the hold or sees it: a hold protects from the moment it is placed.
//! - Events are never deleted; hold changes are events in the chain of every source they
//!   cover (a hold on every source: in every registered source's chain).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{Postgres, Transaction};

use super::canonical::{self, canonical_time, Hash};
use super::chain::{append_event, lock_head, NewEvent};
use super::{Result, Store, StoreError};
use crate::retention::PurgeRule;

/// The kind of a purge's event.
pub const PURGE_EVENT: &str = "messages_purged";

/// A legal hold as placed (and perhaps released).
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct Hold {
    pub name: String,
    pub source: Option<String>,
    pub conversation_id: Option<String>,
    pub sender_id: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub reason: String,
    pub placed_at: DateTime<Utc>,
    pub placed_by: Option<String>,
    pub released_at: Option<DateTime<Utc>>,
    pub released_by: Option<String>,
    pub release_reason: Option<String>,
}

/// What `hold add` asks for.
#[derive(Clone, Debug, Default)]
pub struct NewHold {
    pub name: String,
    pub source: Option<String>,
    pub conversation_id: Option<String>,
    pub sender_id: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub reason: String,
    /// The operating-system user placing it.
    pub by: Option<String>,
}

/// Why a hold could not be placed or released (a caller's mistake, said plainly).
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("a hold named {0:?} already exists (a name is used once, also after release): choose another name")]
    NameTaken(String),
    #[error("there is no hold named {0:?} (`chatvault hold list` shows them)")]
    Unknown(String),
    #[error("hold {0:?} was already released at {1}")]
    AlreadyReleased(String, String),
    #[error("source {0:?} is not in the archive (archived sources: {1})")]
    UnknownSource(String, String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for HoldError {
    fn from(e: sqlx::Error) -> Self {
        HoldError::Store(StoreError::Database(e))
    }
}

/// What a purge removes (or would remove) in one conversation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct PurgeCount {
    pub source: String,
    pub conversation_id: String,
    pub messages: i64,
    pub versions: i64,
    pub reactions: i64,
}

/// Where a purge of one rule has got to: the last message removed, in the order batches
/// take them (conversation, send time, id).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PurgePosition(Option<(String, DateTime<Utc>, String)>);

/// One committed batch of a purge.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PurgeBatch {
    pub source: String,
    /// `event_seq` of its `messages_purged` event.
    pub event_seq: i64,
    pub messages: i64,
    pub versions: i64,
    pub reactions: i64,
    /// sha256 of the canonical listing of what it removed (see [`listing_digest`]).
    pub listing_sha256: String,
    /// What it removed per conversation.
    pub per_conversation: Vec<PurgeCount>,
    /// The sha256 of the stored attachments of the messages it removed (their rows went
    /// with them): blobs no other attachment names may be removed once it committed.
    #[serde(skip)]
    pub attachment_blobs: Vec<String>,
}

/// One message of a purge's listing.
#[derive(Clone, Debug, sqlx::FromRow)]
struct Listed {
    conversation_id: String,
    message_id: String,
    sent_at: DateTime<Utc>,
    versions: i32,
    version_hashes: Vec<u8>,
    reactions: i32,
}

/// The digest over the canonical listing of what a purge removed: one line per message,
/// ordered by conversation id then message id (UTF-8 bytes), each the canonical JSON
/// `{"conversation_id", "message_id", "reactions", "sent_at", "version_sha256": [hex, ...],
/// "versions"}` followed by `\n`; the sha256 of all the lines. `verify` recomputes it from
/// `vault.purged_messages`.
fn listing_digest(rows: &mut [Listed]) -> Hash {
    rows.sort_by(|a, b| {
        (a.conversation_id.as_bytes(), a.message_id.as_bytes())
            .cmp(&(b.conversation_id.as_bytes(), b.message_id.as_bytes()))
    });
    let mut bytes = Vec::with_capacity(rows.len() * 200);
    for r in rows.iter() {
        let hashes: Vec<String> = r.version_hashes.chunks(32).map(hex::encode).collect();
        let line = json!({
            "conversation_id": r.conversation_id,
            "message_id": r.message_id,
            "reactions": r.reactions,
            "sent_at": canonical_time(&r.sent_at),
            "version_sha256": hashes,
            "versions": r.versions,
        });
        canonical::write_canonical(&line, &mut bytes);
        bytes.push(b'\n');
    }
    canonical::sha256(&bytes)
}

fn hold_detail(h: &Hold) -> Value {
    json!({
        "name": h.name,
        "reason": h.reason,
        "source": h.source,
        "conversation_id": h.conversation_id,
        "sender_id": h.sender_id,
        "since": h.since.as_ref().map(canonical_time),
        "until": h.until.as_ref().map(canonical_time),
        "by": h.placed_by,
    })
}

/// The message filter of a purge rule, on `vault.messages m` joined to
/// `vault.conversations c`: `$1` source, `$2` conversation types, `$3` cut-off.
const EXPIRED: &str = "m.source = $1 AND c.conversation_type = ANY($2) AND m.sent_at < $3
    AND NOT vault.held(m.source, m.conversation_id, m.sender_id, m.sent_at)";

const HOLD_COLUMNS: &str = "name, source, conversation_id, sender_id, since, until, reason,
    placed_at, placed_by, released_at, released_by, release_reason";

impl Store {
    /// Every hold, active first, then by name.
    pub async fn holds(&self) -> Result<Vec<Hold>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {HOLD_COLUMNS} FROM vault.holds ORDER BY released_at IS NOT NULL, name"
        ))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Place a hold and record it as a `hold_placed` event in the chain of every source it
    /// covers (all registered sources when it names none). From its commit on, no purge
    /// removes what it covers.
    pub async fn place_hold(&self, new: &NewHold, now: DateTime<Utc>) -> Result<Hold, HoldError> {
        if new.name.trim().is_empty() {
            return Err(HoldError::Invalid(
                "the hold's name must not be empty".into(),
            ));
        }
        if new.reason.trim().is_empty() {
            return Err(HoldError::Invalid(
                "give the hold's reason (--reason)".into(),
            ));
        }
        if let (Some(since), Some(until)) = (new.since, new.until) {
            if until <= since {
                return Err(HoldError::Invalid(format!(
                    "--until ({}) must be after --since ({})",
                    canonical_time(&until),
                    canonical_time(&since)
                )));
            }
        }
        let now = crate::model::to_micros(now);
        let mut tx = self.pool.begin().await?;
        sqlx::query("LOCK TABLE vault.holds IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let sources = self.covered_sources(&mut tx, new.source.as_deref()).await?;
        let taken: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM vault.holds WHERE name = $1)")
                .bind(&new.name)
                .fetch_one(&mut *tx)
                .await?;
        if taken {
            return Err(HoldError::NameTaken(new.name.clone()));
        }
        let hold: Hold = sqlx::query_as(&format!(
            "INSERT INTO vault.holds (name, source, conversation_id, sender_id, since, until, reason,
                                      placed_at, placed_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             RETURNING {HOLD_COLUMNS}"
        ))
        .bind(&new.name)
        .bind(&new.source)
        .bind(&new.conversation_id)
        .bind(&new.sender_id)
        .bind(new.since.map(crate::model::to_micros))
        .bind(new.until.map(crate::model::to_micros))
        .bind(&new.reason)
        .bind(now)
        .bind(&new.by)
        .fetch_one(&mut *tx)
        .await?;
        let detail = hold_detail(&hold);
        for source in &sources {
            let mut head = lock_head(&mut tx, source).await?;
            append_event(
                &mut tx,
                source,
                &mut head,
                NewEvent {
                    kind: "hold_placed",
                    conversation_id: hold.conversation_id.as_deref(),
                    message_id: None,
                    observed_at: now,
                    detail: &detail,
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(hold)
    }

    /// Release an active hold, recorded as a `hold_released` event wherever it was placed.
    /// What it covered can be purged from then on (if no other hold covers it).
    pub async fn release_hold(
        &self,
        name: &str,
        reason: Option<&str>,
        by: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Hold, HoldError> {
        let now = crate::model::to_micros(now);
        let mut tx = self.pool.begin().await?;
        sqlx::query("LOCK TABLE vault.holds IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let held: Option<Hold> = sqlx::query_as(&format!(
            "SELECT {HOLD_COLUMNS} FROM vault.holds WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(held) = held else {
            return Err(HoldError::Unknown(name.to_string()));
        };
        if let Some(at) = held.released_at {
            return Err(HoldError::AlreadyReleased(
                name.to_string(),
                canonical_time(&at),
            ));
        }
        let hold: Hold = sqlx::query_as(&format!(
            "UPDATE vault.holds SET released_at = $2, released_by = $3, release_reason = $4
             WHERE name = $1 RETURNING {HOLD_COLUMNS}"
        ))
        .bind(name)
        .bind(now)
        .bind(by)
        .bind(reason)
        .fetch_one(&mut *tx)
        .await?;
        let sources = self
            .covered_sources(&mut tx, hold.source.as_deref())
            .await?;
        let detail = json!({"name": hold.name, "reason": reason, "by": by});
        for source in &sources {
            let mut head = lock_head(&mut tx, source).await?;
            append_event(
                &mut tx,
                source,
                &mut head,
                NewEvent {
                    kind: "hold_released",
                    conversation_id: hold.conversation_id.as_deref(),
                    message_id: None,
                    observed_at: now,
                    detail: &detail,
                },
            )
            .await?;
        }
        tx.commit().await?;
        Ok(hold)
    }

    /// `source`, checked to be in the archive, or every registered source (in name order,
    /// the order chain heads are locked in).
    async fn covered_sources(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        source: Option<&str>,
    ) -> Result<Vec<String>, HoldError> {
        let all: Vec<String> =
            sqlx::query_scalar("SELECT source FROM vault.sources ORDER BY source")
                .fetch_all(&mut **tx)
                .await?;
        match source {
            None => Ok(all),
            Some(s) if all.iter().any(|a| a == s) => Ok(vec![s.to_string()]),
            Some(s) => Err(HoldError::UnknownSource(
                s.to_string(),
                if all.is_empty() {
                    "none".into()
                } else {
                    all.join(", ")
                },
            )),
        }
    }

    /// What a purge under `rule` would remove now, per conversation (a dry run: reads only).
    pub async fn purge_preview(&self, rule: &PurgeRule) -> Result<Vec<PurgeCount>> {
        Ok(sqlx::query_as(&format!(
            "SELECT m.source, m.conversation_id, count(*) AS messages,
                    COALESCE(sum((SELECT count(*) FROM vault.message_versions v
                         WHERE v.source = m.source AND v.conversation_id = m.conversation_id
                           AND v.message_id = m.message_id)), 0)::int8 AS versions,
                    COALESCE(sum((SELECT count(*) FROM vault.reactions r
                         WHERE r.source = m.source AND r.conversation_id = m.conversation_id
                           AND r.message_id = m.message_id)), 0)::int8 AS reactions
             FROM vault.messages m
             JOIN vault.conversations c
               ON c.source = m.source AND c.conversation_id = m.conversation_id
             WHERE {EXPIRED}
             GROUP BY m.source, m.conversation_id
             ORDER BY m.conversation_id"
        ))
        .bind(&rule.source)
        .bind(&rule.conversation_types)
        .bind(rule.cutoff)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Remove the next at most `limit` messages past `rule`'s cut-off and under no hold,
    /// after `position`, in one transaction with their `messages_purged` event. `None` when
    /// nothing is left to remove.
    pub async fn purge_batch(
        &self,
        rule: &PurgeRule,
        position: &mut PurgePosition,
        limit: i64,
        now: DateTime<Utc>,
    ) -> Result<Option<PurgeBatch>> {
        let now = crate::model::to_micros(now);
        let source = rule.source.as_str();
        let mut tx = self.pool.begin().await?;
        // Holds first (as placing one does), then the chain head (as a page does).
        sqlx::query("LOCK TABLE vault.holds IN SHARE MODE")
            .execute(&mut *tx)
            .await?;
        let mut head = lock_head(&mut tx, source).await?;
        let (after_c, after_t, after_m) = match position.0.clone() {
            Some((c, t, m)) => (Some(c), Some(t), Some(m)),
            None => (None, None, None),
        };
        let mut rows: Vec<Listed> = sqlx::query_as(&format!(
            "SELECT m.conversation_id, m.message_id, m.sent_at, m.version_hashes,
                    (SELECT count(*) FROM vault.message_versions v
                     WHERE v.source = m.source AND v.conversation_id = m.conversation_id
                       AND v.message_id = m.message_id)::int4 AS versions,
                    (SELECT count(*) FROM vault.reactions r
                     WHERE r.source = m.source AND r.conversation_id = m.conversation_id
                       AND r.message_id = m.message_id)::int4 AS reactions
             FROM vault.messages m
             JOIN vault.conversations c
               ON c.source = m.source AND c.conversation_id = m.conversation_id
             WHERE {EXPIRED}
               AND ($4 OR (m.conversation_id, m.sent_at, m.message_id) > ($5, $6, $7))
             ORDER BY m.conversation_id, m.sent_at, m.message_id
             LIMIT $8
             FOR UPDATE OF m"
        ))
        .bind(source)
        .bind(&rule.conversation_types)
        .bind(rule.cutoff)
        .bind(position.0.is_none())
        .bind(&after_c)
        .bind(after_t)
        .bind(&after_m)
        .bind(limit.max(1))
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(None);
        };
        let next = (
            last.conversation_id.clone(),
            last.sent_at,
            last.message_id.clone(),
        );
        let holds: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM vault.holds
             WHERE released_at IS NULL AND (source IS NULL OR source = $1) ORDER BY name",
        )
        .bind(source)
        .fetch_all(&mut *tx)
        .await?;
        let digest = hex::encode(listing_digest(&mut rows));
        let mut per_conversation: BTreeMap<String, PurgeCount> = BTreeMap::new();
        let (mut versions, mut reactions) = (0i64, 0i64);
        for r in &rows {
            let c = per_conversation
                .entry(r.conversation_id.clone())
                .or_insert_with(|| PurgeCount {
                    source: source.to_string(),
                    conversation_id: r.conversation_id.clone(),
                    ..PurgeCount::default()
                });
            c.messages += 1;
            c.versions += i64::from(r.versions);
            c.reactions += i64::from(r.reactions);
            versions += i64::from(r.versions);
            reactions += i64::from(r.reactions);
        }
        let conversations: BTreeMap<&str, i64> = per_conversation
            .iter()
            .map(|(c, n)| (c.as_str(), n.messages))
            .collect();
        let messages = rows.len() as i64;
        let detail = json!({
            "reason": "past retention",
            "rule": rule.rule,
            "period": rule.period.to_string(),
            "conversation_types": rule.conversation_types,
            "cutoff": canonical_time(&crate::model::to_micros(rule.cutoff)),
            "time": "sent_at",
            "messages": messages,
            "versions": versions,
            "reactions": reactions,
            "listing_sha256": digest,
            "holds": holds,
            "conversations": conversations,
        });
        let purge = NewEvent {
            kind: PURGE_EVENT,
            conversation_id: None,
            message_id: None,
            observed_at: now,
            detail: &detail,
        };
        let seq = append_event(&mut tx, source, &mut head, purge).await?;
        let convs: Vec<&str> = rows.iter().map(|r| r.conversation_id.as_str()).collect();
        let ids: Vec<&str> = rows.iter().map(|r| r.message_id.as_str()).collect();
        let sent: Vec<DateTime<Utc>> = rows.iter().map(|r| r.sent_at).collect();
        let nversions: Vec<i32> = rows.iter().map(|r| r.versions).collect();
        let hashes: Vec<&[u8]> = rows.iter().map(|r| r.version_hashes.as_slice()).collect();
        let nreactions: Vec<i32> = rows.iter().map(|r| r.reactions).collect();
        sqlx::query(
            "INSERT INTO vault.purged_messages
                 (source, conversation_id, message_id, purge_seq, sent_at, versions,
                  version_hashes, reactions)
             SELECT $1, c, m, $2, t, v, h, r
             FROM unnest($3::text[], $4::text[], $5::timestamptz[], $6::int4[], $7::bytea[],
                         $8::int4[]) AS u(c, m, t, v, h, r)",
        )
        .bind(source)
        .bind(seq)
        .bind(&convs)
        .bind(&ids)
        .bind(&sent)
        .bind(&nversions)
        .bind(&hashes)
        .bind(&nreactions)
        .execute(&mut *tx)
        .await?;
        // The messages' attachment records go with them (the blobs, if no other attachment
        // names them, once this commits).
        let attachment_blobs: Vec<String> = sqlx::query_scalar::<_, Option<String>>(
            "DELETE FROM vault.attachments t
             USING unnest($2::text[], $3::text[]) AS k(c, m)
             WHERE t.source = $1 AND t.conversation_id = k.c AND t.message_id = k.m
             RETURNING t.sha256",
        )
        .bind(source)
        .bind(&convs)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .flatten()
        .collect();
        sqlx::query("SELECT set_config('chatvault.purge_seq', $1, true)")
            .bind(seq.to_string())
            .execute(&mut *tx)
            .await?;
        for table in [
            "vault.reactions",
            "vault.message_versions",
            "vault.messages",
        ] {
            sqlx::query(&format!(
                "DELETE FROM {table} t
                 USING unnest($2::text[], $3::text[]) AS k(c, m)
                 WHERE t.source = $1 AND t.conversation_id = k.c AND t.message_id = k.m"
            ))
            .bind(source)
            .bind(&convs)
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("SELECT set_config('chatvault.purge_seq', '', true)")
            .execute(&mut *tx)
            .await?;
        let (count_ids, count_n): (Vec<&str>, Vec<i64>) = per_conversation
            .iter()
            .map(|(c, n)| (c.as_str(), n.messages))
            .unzip();
        sqlx::query(
            "UPDATE vault.conversations c
             SET message_count = c.message_count - u.n,
                 first_message_at = (SELECT min(m.sent_at) FROM vault.messages m
                                     WHERE m.source = c.source AND m.conversation_id = c.conversation_id),
                 last_message_at = (SELECT max(m.sent_at) FROM vault.messages m
                                    WHERE m.source = c.source AND m.conversation_id = c.conversation_id)
             FROM unnest($2::text[], $3::int8[]) AS u(id, n)
             WHERE c.source = $1 AND c.conversation_id = u.id",
        )
        .bind(source)
        .bind(&count_ids)
        .bind(&count_n)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        position.0 = Some(next);
        Ok(Some(PurgeBatch {
            source: source.to_string(),
            event_seq: seq,
            messages,
            versions,
            reactions,
            listing_sha256: digest,
            per_conversation: per_conversation.into_values().collect(),
            attachment_blobs,
        }))
    }

    /// The messages a purge event removed, `(conversation_id, message_id)` (the indexer
    /// deletes their documents).
    pub async fn purged_keys(&self, source: &str, purge_seq: i64) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as(
            "SELECT conversation_id, message_id FROM vault.purged_messages
             WHERE source = $1 AND purge_seq = $2",
        )
        .bind(source)
        .bind(purge_seq)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// A purge as `verify` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PurgeSummary {
    pub source: String,
    pub event_seq: i64,
    pub observed_at: DateTime<Utc>,
    pub rule: String,
    pub cutoff: String,
    pub messages: i64,
    pub versions: i64,
    pub reactions: i64,
}

impl Store {
    /// The purge half of `verify`: every `messages_purged` event must match the listing
    /// kept for it (digest, counts, every send time before its cut-off), every listing must
    /// belong to such an event, and every version an event recorded must still be stored
    /// unless a later purge of that message lists it with the digest the chain recorded.
    /// Returns the purges found; adds a failure for every break.
    pub(super) async fn verify_purges(
        &self,
        failures: &mut Vec<super::VerifyFailure>,
    ) -> Result<Vec<PurgeSummary>> {
        use futures::TryStreamExt;
        let fail = |failures: &mut Vec<super::VerifyFailure>,
                    source: &str,
                    seq: Option<i64>,
                    problem: String| {
            failures.push(super::VerifyFailure {
                source: source.to_string(),
                event_seq: seq,
                problem,
            })
        };
        let events: Vec<(String, i64, DateTime<Utc>, Value)> = sqlx::query_as(
            "SELECT source, event_seq, observed_at, detail FROM vault.events
             WHERE kind = 'messages_purged' ORDER BY source, event_seq",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut summaries = Vec::with_capacity(events.len());
        for (source, seq, observed_at, detail) in events {
            let mut rows: Vec<Listed> = sqlx::query_as(
                "SELECT conversation_id, message_id, sent_at, versions, version_hashes, reactions
                 FROM vault.purged_messages WHERE source = $1 AND purge_seq = $2",
            )
            .bind(&source)
            .bind(seq)
            .fetch_all(&self.pool)
            .await?;
            let number = |key: &str| detail.get(key).and_then(Value::as_i64).unwrap_or(-1);
            let text = |key: &str| {
                detail
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            let recorded = text("listing_sha256");
            let actual = hex::encode(listing_digest(&mut rows));
            if recorded != actual {
                fail(failures, &source, Some(seq), format!(
                    "the listing of purged messages does not match the purge event (recorded sha256 {recorded}, listing hashes to {actual}, {} messages listed)",
                    rows.len()
                ));
            }
            let versions: i64 = rows.iter().map(|r| i64::from(r.versions)).sum();
            let reactions: i64 = rows.iter().map(|r| i64::from(r.reactions)).sum();
            if (number("messages"), number("versions"), number("reactions"))
                != (rows.len() as i64, versions, reactions)
            {
                fail(failures, &source, Some(seq), format!(
                    "the purge event counts {} messages, {} versions, {} reactions; its listing has {}, {}, {}",
                    number("messages"), number("versions"), number("reactions"),
                    rows.len(), versions, reactions
                ));
            }
            let cutoff = text("cutoff");
            match DateTime::parse_from_rfc3339(&cutoff) {
                Ok(c) => {
                    for r in rows.iter().filter(|r| r.sent_at >= c) {
                        fail(failures, &source, Some(seq), format!(
                            "message {} of conversation {} was purged but was sent at {}, not before the cut-off {cutoff}",
                            r.message_id, r.conversation_id, canonical_time(&r.sent_at)
                        ));
                    }
                }
                Err(_) => fail(
                    failures,
                    &source,
                    Some(seq),
                    format!("the purge event's cut-off {cutoff:?} is not a time"),
                ),
            }
            summaries.push(PurgeSummary {
                source,
                event_seq: seq,
                observed_at,
                rule: text("rule"),
                cutoff,
                messages: number("messages"),
                versions: number("versions"),
                reactions: number("reactions"),
            });
        }
        let orphans: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT p.source, p.purge_seq, count(*) FROM vault.purged_messages p
             WHERE NOT EXISTS (SELECT 1 FROM vault.events e
                               WHERE e.source = p.source AND e.event_seq = p.purge_seq
                                 AND e.kind = 'messages_purged')
             GROUP BY p.source, p.purge_seq ORDER BY p.source, p.purge_seq",
        )
        .fetch_all(&self.pool)
        .await?;
        for (source, seq, n) in orphans {
            fail(
                failures,
                &source,
                Some(seq),
                format!(
                    "{n} messages are listed as purged by event {seq}, which is not a purge event"
                ),
            );
        }
        let mut missing = sqlx::query_as::<_, (String, i64, Option<String>, Option<String>, Option<i32>)>(
            "SELECT e.source, e.event_seq, e.conversation_id, e.message_id, (e.detail->>'version')::int
             FROM vault.events e
             WHERE e.kind IN ('message_created', 'message_edited')
               AND NOT EXISTS (
                   SELECT 1 FROM vault.message_versions v
                   WHERE v.source = e.source AND v.conversation_id = e.conversation_id
                     AND v.message_id = e.message_id AND v.version = (e.detail->>'version')::int)
               AND NOT EXISTS (
                   SELECT 1 FROM vault.purged_messages p
                   WHERE p.source = e.source AND p.conversation_id = e.conversation_id
                     AND p.message_id = e.message_id AND p.purge_seq > e.event_seq
                     AND substring(p.version_hashes FROM ((e.detail->>'version')::int - 1) * 32 + 1 FOR 32)
                         = CASE WHEN e.detail->>'sha256' ~ '^[0-9a-f]{64}$'
                                THEN decode(e.detail->>'sha256', 'hex') END)
             ORDER BY e.source, e.event_seq",
        )
        .fetch(&self.pool);
        while let Some((source, seq, conversation, message, version)) = missing.try_next().await? {
            fail(
                failures,
                &source,
                Some(seq),
                format!(
                    "version {} of message {} in conversation {} is missing (no purge removed it)",
                    version.unwrap_or(0),
                    message.unwrap_or_default(),
                    conversation.unwrap_or_default()
                ),
            );
        }
        Ok(summaries)
    }
}
