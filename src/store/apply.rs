//! Applying one page in one transaction: load what is held for the page's keys (a few
//! set-based queries), diff in memory ([`super::diff`]), then write rows, versions,
//! reactions, events (chained) and the cursor with one statement each.
//!
//! A page is cleaned first ([`super::clean`]). If PostgreSQL still refuses it for its data
//! (a time it cannot represent, a key too long for an index row, ...), the page is applied
//! again in parts, each under a savepoint, halving the parts that fail until the refused
//! records are found: those are quarantined with PostgreSQL's reason, the rest lands with
//! the cursor. One record can never hold a source back (invariant 6).

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Postgres, Transaction};
use tracing::warn;

use super::canonical::{self, chain_hash, EventFields, Hash};
use super::clean;
use super::diff::{self, EventDraft, MessageState, ReactionBook};
use super::{Result, Store, StoreError};
use crate::model::{
    Content, ConversationObservation, ConversationType, Cursor, Mark, MessageHeader, MessageKind,
    Page, QuarantineRecord, SourceName,
};

/// What a page did to the archive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageOutcome {
    pub messages_new: u64,
    pub messages_changed: u64,
    pub events: u64,
    pub quarantined: u64,
    pub gaps: u64,
    /// The chain head after the page: `(event_seq, hash)`.
    pub chain_seq: i64,
    pub chain_head: Hash,
}

impl PageOutcome {
    fn add(&mut self, part: PageOutcome) {
        self.messages_new += part.messages_new;
        self.messages_changed += part.messages_changed;
        self.events += part.events;
        self.quarantined += part.quarantined;
        self.gaps += part.gaps;
    }
}

type MsgKey = (String, String);

/// A held or new message row, with what must be written back.
struct Row {
    state: Option<MessageState>,
    in_db: bool,
    loaded_raw_hash: Option<Hash>,
    dirty: bool,
}

/// The source's chain head while a page is applied: `(event_seq, hash)`.
#[derive(Clone, Copy)]
struct Chain {
    seq: i64,
    head: Hash,
}

impl Store {
    /// Apply a page in one transaction (invariant 2). Fails with
    /// [`StoreError::CursorConflict`] and changes nothing if the stored cursor is not
    /// `page.expected_cursor`. Records PostgreSQL refuses are quarantined and the rest of
    /// the page lands (see the module doc).
    pub async fn apply_page(&self, source: &SourceName, page: &Page) -> Result<PageOutcome> {
        let observed_at = crate::model::to_micros(Utc::now());
        let page = clean::clean_page(page);
        let mut tx = self.pool.begin().await?;
        let refused = match apply_in(&mut tx, source, &page, observed_at).await {
            Ok(outcome) => {
                tx.commit().await?;
                return Ok(outcome);
            }
            Err(StoreError::Database(e)) if is_refused_data(&e) => e,
            Err(e) => return Err(e),
        };
        tx.rollback().await?;
        warn!(
            source = %source,
            cursor = %page.cursor_key,
            error = %refused,
            "PostgreSQL refused part of a page; applying it in parts to quarantine what it refuses"
        );
        let mut tx = self.pool.begin().await?;
        let outcome = apply_in_parts(&mut tx, source, &page, observed_at).await?;
        tx.commit().await?;
        Ok(outcome)
    }
}

impl Store {
    /// Apply several pages, in order, in one transaction: the records of the batch are
    /// written with one set of statements, and each cursor key's last cursor is written with
    /// them (invariant 2: every cursor committed describes only data committed with it or
    /// before). The pages of one key must follow each other (each starts where the one
    /// before ends) and the first must start from the stored cursor, otherwise
    /// [`StoreError::CursorConflict`] and nothing is written. When PostgreSQL refuses the
    /// batch for its data, its pages are applied one by one with [`Store::apply_page`], so
    /// that only the refused records are quarantined.
    pub async fn apply_pages(&self, source: &SourceName, pages: &[Page]) -> Result<PageOutcome> {
        match pages {
            [] => return Ok(PageOutcome::default()),
            [page] => return self.apply_page(source, page).await,
            _ => {}
        }
        let observed_at = crate::model::to_micros(Utc::now());
        let cleaned: Vec<Page> = pages.iter().map(clean::clean_page).collect();
        let refused = {
            let mut tx = self.pool.begin().await?;
            match apply_batch(&mut tx, source, cleaned, observed_at).await {
                Ok(outcome) => {
                    tx.commit().await?;
                    return Ok(outcome);
                }
                Err(StoreError::Database(e)) if is_refused_data(&e) => {
                    tx.rollback().await?;
                    e
                }
                Err(e) => return Err(e),
            }
        };
        warn!(
            source = %source,
            pages = pages.len(),
            error = %refused,
            "PostgreSQL refused part of a batch of pages; applying them one by one"
        );
        let mut outcome = PageOutcome::default();
        for page in pages {
            let part = self.apply_page(source, page).await?;
            outcome.add(part.clone());
            outcome.chain_seq = part.chain_seq;
            outcome.chain_head = part.chain_head;
        }
        Ok(outcome)
    }
}

/// The cursor keys of a batch: each key's first expected cursor and its last next cursor,
/// after checking that the pages of each key follow each other.
fn batch_cursors(src: &str, pages: &[Page]) -> Result<Vec<(String, Option<Cursor>, Cursor)>> {
    let mut keys: Vec<(String, Option<Cursor>, Cursor)> = Vec::new();
    for page in pages {
        match keys.iter_mut().find(|(k, _, _)| *k == page.cursor_key) {
            None => keys.push((
                page.cursor_key.clone(),
                page.expected_cursor.clone(),
                page.next_cursor.clone(),
            )),
            Some((key, _, last)) => {
                if page.expected_cursor.as_ref() != Some(&*last) {
                    return Err(StoreError::CursorConflict {
                        source_name: src.to_string(),
                        key: key.clone(),
                        expected: page
                            .expected_cursor
                            .as_ref()
                            .map_or("none".into(), |c| c.0.to_string()),
                        found: last.0.to_string(),
                    });
                }
                *last = page.next_cursor.clone();
            }
        }
    }
    Ok(keys)
}

/// The pages of a batch (cleaned) in the open transaction: the cursors checked, the records
/// applied (pages without windows merged into one), the last cursor of each key written.
async fn apply_batch(
    tx: &mut Transaction<'_, Postgres>,
    source: &SourceName,
    pages: Vec<Page>,
    observed_at: DateTime<Utc>,
) -> Result<PageOutcome> {
    let src = source.as_str();
    let keys = batch_cursors(src, &pages)?;
    let mut chain: Option<Chain> = None;
    for (key, expected, next) in &keys {
        let check = Page::new(key.clone(), expected.clone(), next.clone());
        let head = begin_page(tx, src, &check).await?;
        chain.get_or_insert(head);
    }
    let mut chain = chain.expect("a batch has pages");
    let mut outcome = PageOutcome::default();
    // Windows are applied page by page (what counts as present in a window is what its own
    // page observes); the pages between them are merged and applied at once.
    let mut merged: Option<Page> = None;
    for page in pages {
        if page.windows.is_empty() {
            match &mut merged {
                None => merged = Some(page),
                Some(m) => {
                    m.conversations.extend(page.conversations);
                    m.messages.extend(page.messages);
                    m.reactions.extend(page.reactions);
                    m.gaps.extend(page.gaps);
                    m.quarantine.extend(page.quarantine);
                }
            }
            continue;
        }
        if let Some(m) = merged.take() {
            outcome.add(apply_records(tx, src, &m, &[], observed_at, &mut chain).await?);
        }
        let present = full_keys(&page);
        outcome.add(apply_records(tx, src, &page, &present, observed_at, &mut chain).await?);
    }
    if let Some(m) = merged.take() {
        outcome.add(apply_records(tx, src, &m, &[], observed_at, &mut chain).await?);
    }
    for (key, expected, next) in keys {
        write_cursor(tx, src, &Page::new(key, expected, next), observed_at).await?;
    }
    outcome.chain_seq = chain.seq;
    outcome.chain_head = chain.head;
    Ok(outcome)
}

/// Whether PostgreSQL refused a statement because of the data it carried (SQLSTATE classes
/// 22 "data exception", 23 "integrity constraint violation" and 54 "program limit
/// exceeded"), rather than because the database is unreachable or broken.
fn is_refused_data(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    db.code().is_some_and(|code| {
        ["22", "23", "54"]
            .iter()
            .any(|class| code.starts_with(class))
    })
}

/// Lock the source's chain head (one writer per source from here to commit) and check that
/// the stored cursor is the one the page started from.
async fn begin_page(tx: &mut Transaction<'_, Postgres>, src: &str, page: &Page) -> Result<Chain> {
    let head: Option<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT event_seq, hash FROM vault.chain_heads WHERE source = $1 FOR UPDATE",
    )
    .bind(src)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((seq, head_hash)) = head else {
        return Err(StoreError::UnknownSource(src.to_string()));
    };
    let stored: Option<Value> = sqlx::query_scalar(
        "SELECT value FROM vault.cursors WHERE source = $1 AND key = $2 FOR UPDATE",
    )
    .bind(src)
    .bind(&page.cursor_key)
    .fetch_optional(&mut **tx)
    .await?;
    let expected = page.expected_cursor.as_ref().map(|c| &c.0);
    if stored.as_ref() != expected {
        let show = |v: Option<&Value>| v.map_or("none".to_string(), |v| v.to_string());
        return Err(StoreError::CursorConflict {
            source_name: src.to_string(),
            key: page.cursor_key.clone(),
            expected: show(expected),
            found: show(stored.as_ref()),
        });
    }
    Ok(Chain {
        seq,
        head: head_hash.try_into().unwrap_or(canonical::GENESIS),
    })
}

async fn write_cursor(
    tx: &mut Transaction<'_, Postgres>,
    src: &str,
    page: &Page,
    observed_at: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO vault.cursors (source, key, value, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (source, key) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at",
    )
    .bind(src)
    .bind(&page.cursor_key)
    .bind(&page.next_cursor.0)
    .bind(observed_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The messages a page observes in full (with a header): present upstream by definition, so
/// a window of the same page never marks them deleted.
fn full_keys(page: &Page) -> Vec<MsgKey> {
    page.messages
        .iter()
        .filter(|m| m.header.is_some())
        .map(|m| (m.conversation_id.clone(), m.message_id.clone()))
        .collect()
}

/// The whole (cleaned) page in the open transaction.
async fn apply_in(
    tx: &mut Transaction<'_, Postgres>,
    source: &SourceName,
    page: &Page,
    observed_at: DateTime<Utc>,
) -> Result<PageOutcome> {
    let src = source.as_str();
    let mut chain = begin_page(tx, src, page).await?;
    let mut outcome =
        apply_records(tx, src, page, &full_keys(page), observed_at, &mut chain).await?;
    write_cursor(tx, src, page, observed_at).await?;
    outcome.chain_seq = chain.seq;
    outcome.chain_head = chain.head;
    Ok(outcome)
}

/// One record of a page, by position.
#[derive(Clone, Copy, Debug)]
enum Part {
    Conversation(usize),
    Message(usize),
    Reaction(usize),
    Gap(usize),
    Quarantine(usize),
    Window(usize),
}

impl Part {
    /// Every record of `page`, in the order a whole page applies them (windows last).
    fn all(page: &Page) -> Vec<Part> {
        let mut parts = Vec::new();
        parts.extend((0..page.conversations.len()).map(Part::Conversation));
        parts.extend((0..page.messages.len()).map(Part::Message));
        parts.extend((0..page.reactions.len()).map(Part::Reaction));
        parts.extend((0..page.gaps.len()).map(Part::Gap));
        parts.extend((0..page.quarantine.len()).map(Part::Quarantine));
        parts.extend((0..page.windows.len()).map(Part::Window));
        parts
    }

    /// The page of just these records (same cursor key; the cursor is written once, by
    /// the caller).
    fn page(page: &Page, parts: &[Part]) -> Page {
        let mut sub = Page::new(
            page.cursor_key.clone(),
            page.expected_cursor.clone(),
            page.next_cursor.clone(),
        );
        for part in parts {
            match *part {
                Part::Conversation(i) => sub.conversations.push(page.conversations[i].clone()),
                Part::Message(i) => sub.messages.push(page.messages[i].clone()),
                Part::Reaction(i) => sub.reactions.push(page.reactions[i].clone()),
                Part::Gap(i) => sub.gaps.push(page.gaps[i].clone()),
                Part::Quarantine(i) => sub.quarantine.push(page.quarantine[i].clone()),
                Part::Window(i) => sub.windows.push(page.windows[i].clone()),
            }
        }
        sub
    }

    /// The quarantine record of a refused record: what it was and PostgreSQL's reason.
    fn refused(self, page: &Page, error: &str) -> QuarantineRecord {
        let (what, raw) = match self {
            Part::Conversation(i) => {
                let c = &page.conversations[i];
                (
                    format!("conversation {}", c.conversation_id),
                    serde_json::to_value(c).unwrap_or(Value::Null),
                )
            }
            Part::Message(i) => {
                let m = &page.messages[i];
                (
                    format!(
                        "message {} of conversation {}",
                        m.message_id, m.conversation_id
                    ),
                    serde_json::json!({"observation": m}),
                )
            }
            Part::Reaction(i) => {
                let r = &page.reactions[i];
                (
                    format!(
                        "reaction of {} on message {} of conversation {}",
                        r.user_id, r.message_id, r.conversation_id
                    ),
                    serde_json::to_value(r).unwrap_or(Value::Null),
                )
            }
            Part::Gap(i) => {
                let g = &page.gaps[i];
                (
                    format!(
                        "gap {}-{} of conversation {}",
                        g.from_seq, g.to_seq, g.conversation_id
                    ),
                    serde_json::to_value(g).unwrap_or(Value::Null),
                )
            }
            Part::Quarantine(i) => {
                let q = &page.quarantine[i];
                (format!("quarantine record ({})", q.reason), q.raw.clone())
            }
            Part::Window(i) => {
                let w = &page.windows[i];
                (
                    format!("window read of conversation {}", w.conversation_id),
                    serde_json::to_value(w).unwrap_or(Value::Null),
                )
            }
        };
        QuarantineRecord {
            reason: clean::text(&format!(
                "PostgreSQL cannot store {}: {error}",
                shorten(&what, 120)
            )),
            raw,
        }
    }
}

/// At most `max` characters of `s`, with an ellipsis where it was cut.
fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &s[..end]),
        None => s.to_string(),
    }
}

/// Apply a page PostgreSQL refused as a whole: its records in parts, each under a
/// savepoint; a part refused for its data is halved until single records are left, which
/// are quarantined. Then the cursor moves as the whole page would have moved it.
async fn apply_in_parts(
    tx: &mut Transaction<'_, Postgres>,
    source: &SourceName,
    page: &Page,
    observed_at: DateTime<Utc>,
) -> Result<PageOutcome> {
    let src = source.as_str();
    let mut chain = begin_page(tx, src, page).await?;
    let keys = full_keys(page);
    let mut outcome = PageOutcome::default();
    let mut refused: Vec<QuarantineRecord> = Vec::new();
    // depth first, in page order: the first half is applied before the second
    let mut todo: Vec<Vec<Part>> = vec![Part::all(page)];
    while let Some(parts) = todo.pop() {
        if parts.is_empty() {
            continue;
        }
        let sub = Part::page(page, &parts);
        sqlx::query("SAVEPOINT page_part")
            .execute(&mut **tx)
            .await?;
        let before = chain;
        match apply_records(tx, src, &sub, &keys, observed_at, &mut chain).await {
            Ok(part) => {
                sqlx::query("RELEASE SAVEPOINT page_part")
                    .execute(&mut **tx)
                    .await?;
                outcome.add(part);
            }
            Err(StoreError::Database(e)) if is_refused_data(&e) => {
                sqlx::query("ROLLBACK TO SAVEPOINT page_part")
                    .execute(&mut **tx)
                    .await?;
                sqlx::query("RELEASE SAVEPOINT page_part")
                    .execute(&mut **tx)
                    .await?;
                chain = before;
                if let [part] = parts[..] {
                    refused.push(part.refused(page, &database_reason(&e)));
                } else {
                    let (first, second) = parts.split_at(parts.len() / 2);
                    todo.push(second.to_vec());
                    todo.push(first.to_vec());
                }
            }
            Err(e) => return Err(e),
        }
    }
    for record in refused {
        outcome.quarantined += quarantine_refused(tx, src, record, observed_at).await?;
    }
    write_cursor(tx, src, page, observed_at).await?;
    outcome.chain_seq = chain.seq;
    outcome.chain_head = chain.head;
    Ok(outcome)
}

/// PostgreSQL's message for a refused statement (no values: they may be large).
fn database_reason(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{} (SQLSTATE {code})", db.message()),
            None => db.message().to_string(),
        },
        other => other.to_string(),
    }
}

/// Quarantine a refused record; if even its raw form is refused, keep its digest and a
/// bounded excerpt of it as text instead, so the record is never lost silently.
async fn quarantine_refused(
    tx: &mut Transaction<'_, Postgres>,
    src: &str,
    record: QuarantineRecord,
    observed_at: DateTime<Utc>,
) -> Result<u64> {
    sqlx::query("SAVEPOINT quarantine_part")
        .execute(&mut **tx)
        .await?;
    match write_quarantine(tx, src, std::slice::from_ref(&record), observed_at).await {
        Ok(n) => {
            sqlx::query("RELEASE SAVEPOINT quarantine_part")
                .execute(&mut **tx)
                .await?;
            return Ok(n);
        }
        Err(StoreError::Database(e)) if is_refused_data(&e) => {
            sqlx::query("ROLLBACK TO SAVEPOINT quarantine_part")
                .execute(&mut **tx)
                .await?;
            sqlx::query("RELEASE SAVEPOINT quarantine_part")
                .execute(&mut **tx)
                .await?;
        }
        Err(e) => return Err(e),
    }
    let text = record.raw.to_string();
    let fallback = QuarantineRecord {
        reason: record.reason,
        raw: serde_json::json!({
            "unstorable": true,
            "sha256": hex::encode(canonical::value_hash(&record.raw)),
            "bytes": text.len(),
            "excerpt": clean::text(&shorten(&text, 16 * 1024)),
        }),
    };
    write_quarantine(tx, src, std::slice::from_ref(&fallback), observed_at).await
}

/// What applying a page's records derives, before it is written.
#[derive(Default)]
struct Derived {
    events: Vec<EventDraft>,
    quarantine: Vec<QuarantineRecord>,
    versions: Vec<(MsgKey, diff::NewVersion)>,
    new_msgs: BTreeSet<MsgKey>,
    changed_msgs: BTreeSet<MsgKey>,
}

impl Derived {
    /// Count `key` as changed (unless it is new) when events were added since `before`.
    fn changed_since(&mut self, before: usize, key: &MsgKey) {
        if self.events.len() > before && !self.new_msgs.contains(key) {
            self.changed_msgs.insert(key.clone());
        }
    }
}

/// Conversations as held, with whether each must be written.
type HeldConversations = HashMap<String, (Option<ConversationObservation>, bool)>;

/// Everything but the cursor of a page, in the open transaction, appending its events to
/// `chain`: load what is held for the page's keys, diff in memory, write. `present` are
/// messages known to be upstream (see [`full_keys`]).
async fn apply_records(
    tx: &mut Transaction<'_, Postgres>,
    src: &str,
    page: &Page,
    present: &[MsgKey],
    observed_at: DateTime<Utc>,
    chain: &mut Chain,
) -> Result<PageOutcome> {
    let mut derived = Derived {
        quarantine: page.quarantine.clone(),
        ..Derived::default()
    };
    let (convs, new_convs) = diff_conversations(tx, src, page, &mut derived).await?;
    let (mut rows, mut books) = load_held(tx, src, page).await?;
    diff_messages(page, &mut rows, &mut books, observed_at, &mut derived);

    write_conversations(tx, src, &convs, &new_convs, observed_at).await?;
    write_messages(tx, src, &rows, observed_at).await?;
    write_versions(tx, src, &derived.versions, observed_at).await?;
    write_reactions(tx, src, &books).await?;
    apply_windows(tx, src, page, present, observed_at, &mut derived).await?;
    update_conversation_counts(tx, src, &rows, &derived.new_msgs).await?;
    write_events(
        tx,
        src,
        &derived.events,
        observed_at,
        &mut chain.seq,
        &mut chain.head,
    )
    .await?;
    let gaps = write_gaps(tx, src, page, observed_at).await?;
    let quarantined = write_quarantine(tx, src, &derived.quarantine, observed_at).await?;
    Ok(PageOutcome {
        messages_new: derived.new_msgs.len() as u64,
        messages_changed: derived.changed_msgs.len() as u64,
        events: derived.events.len() as u64,
        quarantined,
        gaps,
        chain_seq: chain.seq,
        chain_head: chain.head,
    })
}

/// The observed conversations against the held ones, and placeholders for any the page
/// only refers to: the conversations to write, and which of them are new.
async fn diff_conversations(
    tx: &mut Transaction<'_, Postgres>,
    src: &str,
    page: &Page,
    derived: &mut Derived,
) -> Result<(HeldConversations, BTreeSet<String>)> {
    let mut conv_ids: BTreeSet<&str> = BTreeSet::new();
    conv_ids.extend(
        page.conversations
            .iter()
            .map(|c| c.conversation_id.as_str()),
    );
    conv_ids.extend(page.messages.iter().map(|m| m.conversation_id.as_str()));
    conv_ids.extend(page.reactions.iter().map(|r| r.conversation_id.as_str()));
    let conv_ids: Vec<String> = conv_ids.into_iter().map(str::to_string).collect();
    let held: Vec<(String, String, Option<String>, Value)> = sqlx::query_as(
        "SELECT conversation_id, conversation_type, name, metadata FROM vault.conversations
         WHERE source = $1 AND conversation_id = ANY($2)",
    )
    .bind(src)
    .bind(&conv_ids)
    .fetch_all(&mut **tx)
    .await?;
    let mut convs: HeldConversations = held
        .into_iter()
        .map(|(id, ty, name, metadata)| {
            let obs = ConversationObservation {
                conversation_id: id.clone(),
                conversation_type: ConversationType::parse(&ty),
                name,
                metadata,
            };
            (id, (Some(obs), false))
        })
        .collect();
    let mut new_convs: BTreeSet<String> = BTreeSet::new();
    for obs in &page.conversations {
        let entry = convs
            .entry(obs.conversation_id.clone())
            .or_insert((None, false));
        if entry.0.is_none() {
            new_convs.insert(obs.conversation_id.clone());
        }
        if let Some(event) = diff::apply_conversation(&mut entry.0, obs) {
            entry.1 = true;
            derived.events.push(event);
        }
    }
    for id in &conv_ids {
        let entry = convs.entry(id.clone()).or_insert((None, false));
        if entry.0.is_none() {
            let placeholder = ConversationObservation {
                conversation_id: id.clone(),
                conversation_type: ConversationType::Other,
                name: None,
                metadata: Value::Object(Default::default()),
            };
            new_convs.insert(id.clone());
            derived
                .events
                .extend(diff::apply_conversation(&mut entry.0, &placeholder));
            entry.1 = true;
        }
    }
    Ok((convs, new_convs))
}

/// The held rows of the page's messages (a new row for each not held yet), and the open
/// reaction episodes of every message the page touches.
async fn load_held(
    tx: &mut Transaction<'_, Postgres>,
    src: &str,
    page: &Page,
) -> Result<(HashMap<MsgKey, Row>, HashMap<MsgKey, ReactionBook>)> {
    let mut keys: Vec<MsgKey> = page
        .messages
        .iter()
        .map(|m| (m.conversation_id.clone(), m.message_id.clone()))
        .collect();
    keys.sort();
    keys.dedup();
    let mut rows: HashMap<MsgKey, Row> = load_messages(tx, src, &keys).await?;
    // Earlier versions known only in part are compared with the held versions' content.
    let mut partial: Vec<MsgKey> = page
        .messages
        .iter()
        .filter(|m| m.earlier_versions.iter().any(|e| e.known_fields.is_some()))
        .map(|m| (m.conversation_id.clone(), m.message_id.clone()))
        .filter(|k| rows.contains_key(k))
        .collect();
    partial.sort();
    partial.dedup();
    load_versions(tx, src, &partial, &mut rows).await?;
    for key in &keys {
        rows.entry(key.clone()).or_insert(Row {
            state: None,
            in_db: false,
            loaded_raw_hash: None,
            dirty: false,
        });
    }
    let mut reaction_keys: Vec<MsgKey> = keys;
    reaction_keys.extend(
        page.reactions
            .iter()
            .map(|r| (r.conversation_id.clone(), r.message_id.clone())),
    );
    reaction_keys.sort();
    reaction_keys.dedup();
    let books = load_reactions(tx, src, &reaction_keys).await?;
    Ok((rows, books))
}

/// Diff the page's messages and reaction changes against the held state, in page order.
fn diff_messages(
    page: &Page,
    rows: &mut HashMap<MsgKey, Row>,
    books: &mut HashMap<MsgKey, ReactionBook>,
    observed_at: DateTime<Utc>,
    derived: &mut Derived,
) {
    for obs in &page.messages {
        let key = (obs.conversation_id.clone(), obs.message_id.clone());
        let row = rows.get_mut(&key).expect("every page key has a row");
        let out = match diff::apply_message(&mut row.state, obs, observed_at) {
            Ok(out) => out,
            Err(e) => {
                derived.quarantine.push(QuarantineRecord {
                    reason: e.to_string(),
                    raw: obs.raw.clone(),
                });
                continue;
            }
        };
        if out.created {
            derived.new_msgs.insert(key.clone());
        }
        if out.changed && !derived.new_msgs.contains(&key) {
            derived.changed_msgs.insert(key.clone());
        }
        row.dirty |= out.dirty;
        derived.events.extend(out.events);
        derived
            .versions
            .extend(out.versions.into_iter().map(|v| (key.clone(), v)));
        if let Some(set) = &obs.reactions {
            let book = books.entry(key.clone()).or_default();
            let before = derived.events.len();
            book.apply_set(&key.0, &key.1, set, observed_at, &mut derived.events);
            derived.changed_since(before, &key);
        }
    }
    for obs in &page.reactions {
        let key = (obs.conversation_id.clone(), obs.message_id.clone());
        let book = books.entry(key.clone()).or_default();
        let before = derived.events.len();
        book.apply_change(obs, observed_at, &mut derived.events);
        derived.changed_since(before, &key);
    }
}

/// Mark what each complete window read no longer finds upstream as deleted. Only a full
/// observation (a history item) shows a message is there; a mark is not.
async fn apply_windows(
    tx: &mut Transaction<'_, Postgres>,
    src: &str,
    page: &Page,
    present: &[MsgKey],
    observed_at: DateTime<Utc>,
    derived: &mut Derived,
) -> Result<()> {
    for window in &page.windows {
        let deleted = apply_window(tx, src, window, present, observed_at).await?;
        for id in deleted {
            derived
                .changed_msgs
                .insert((window.conversation_id.clone(), id.clone()));
            derived.events.push(EventDraft {
                kind: "message_deleted",
                conversation_id: window.conversation_id.clone(),
                message_id: Some(id),
                occurred_at: None,
                detail: serde_json::json!({
                    "by": null,
                    "detail": window.detail,
                    "window": [
                        canonical::canonical_time(&window.from),
                        canonical::canonical_time(&window.to),
                    ],
                }),
            });
        }
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct HeldMessage {
    conversation_id: String,
    message_id: String,
    seq: Option<i64>,
    sender_id: Option<String>,
    sender_name: Option<String>,
    sent_at: DateTime<Utc>,
    reply_to: Option<String>,
    current_version: i32,
    version_hashes: Vec<u8>,
    edited_at: Option<DateTime<Utc>>,
    recalled_at: Option<DateTime<Utc>>,
    recalled_by: Option<String>,
    deleted_at: Option<DateTime<Utc>>,
    deleted_by: Option<String>,
    raw_hash: Vec<u8>,
}

fn to_hash(bytes: &[u8]) -> Hash {
    bytes.try_into().unwrap_or([0u8; 32])
}

async fn load_messages(
    tx: &mut Transaction<'_, Postgres>,
    src: &str,
    keys: &[MsgKey],
) -> Result<HashMap<MsgKey, Row>> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let (convs, ids) = distinct_parts(keys);
    let held: Vec<HeldMessage> = sqlx::query_as(
        "SELECT m.conversation_id, m.message_id, m.seq, m.sender_id, m.sender_name, m.sent_at,
                m.reply_to, m.current_version, m.version_hashes, m.edited_at, m.recalled_at,
                m.recalled_by, m.deleted_at, m.deleted_by, m.raw_hash
         FROM vault.messages m
         WHERE m.source = $1 AND m.conversation_id = ANY($2) AND m.message_id = ANY($3)",
    )
    .bind(src)
    .bind(&convs)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    // The query matches the cross product of the page's conversations and ids (so that it is
    // a plain index scan); keep the exact pairs.
    let wanted: HashSet<(&str, &str)> =
        keys.iter().map(|(c, m)| (c.as_str(), m.as_str())).collect();
    Ok(held
        .into_iter()
        .filter(|h| wanted.contains(&(h.conversation_id.as_str(), h.message_id.as_str())))
        .map(|h| {
            let raw_hash = to_hash(&h.raw_hash);
            let mark = |at: Option<DateTime<Utc>>, by: Option<String>| {
                at.map(|at| Mark {
                    at: Some(at),
                    by,
                    reason: None,
                })
            };
            let state = MessageState {
                header: MessageHeader {
                    seq: h.seq,
                    sender_id: h.sender_id,
                    sender_name: h.sender_name,
                    sent_at: h.sent_at,
                    reply_to: h.reply_to,
                },
                current_version: h.current_version,
                version_hashes: h.version_hashes.chunks_exact(32).map(to_hash).collect(),
                edited_at: h.edited_at,
                raw: Value::Null,
                raw_hash,
                recalled: mark(h.recalled_at, h.recalled_by),
                deleted: mark(h.deleted_at, h.deleted_by),
                versions: None,
            };
            (
                (h.conversation_id, h.message_id),
                Row {
                    state: Some(state),
                    in_db: true,
                    loaded_raw_hash: Some(raw_hash),
                    dirty: false,
                },
            )
        })
        .collect())
}

/// Fill in the content of every held version of `keys` (rows loaded before).
async fn load_versions(
    tx: &mut Transaction<'_, Postgres>,
    src: &str,
    keys: &[MsgKey],
    rows: &mut HashMap<MsgKey, Row>,
) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let (convs, ids) = distinct_parts(keys);
    let held: Vec<(String, String, String, String, Value)> = sqlx::query_as(
        "SELECT conversation_id, message_id, kind, text, content FROM vault.message_versions
         WHERE source = $1 AND conversation_id = ANY($2) AND message_id = ANY($3)
         ORDER BY conversation_id, message_id, version",
    )
    .bind(src)
    .bind(&convs)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    for key in keys {
        if let Some(st) = rows.get_mut(key).and_then(|r| r.state.as_mut()) {
            st.versions = Some(Vec::new());
        }
    }
    for (conversation_id, message_id, kind, text, content) in held {
        let key = (conversation_id, message_id);
        if let Some(held) = rows
            .get_mut(&key)
            .and_then(|r| r.state.as_mut())
            .and_then(|st| st.versions.as_mut())
        {
            held.push(Content {
                kind: MessageKind::parse(&kind),
                text,
                content,
            });
        }
    }
    Ok(())
}

async fn load_reactions(
    tx: &mut Transaction<'_, Postgres>,
    src: &str,
    keys: &[MsgKey],
) -> Result<HashMap<MsgKey, ReactionBook>> {
    let mut books: HashMap<MsgKey, ReactionBook> = HashMap::new();
    if keys.is_empty() {
        return Ok(books);
    }
    let (convs, ids) = distinct_parts(keys);
    #[allow(clippy::type_complexity)]
    let open: Vec<(
        i64,
        String,
        String,
        String,
        Option<String>,
        String,
        DateTime<Utc>,
    )> = sqlx::query_as(
        "SELECT r.reaction_id, r.conversation_id, r.message_id, r.user_id, r.user_name,
                    r.emoji, r.reacted_at
             FROM vault.reactions r
             WHERE r.source = $1 AND r.conversation_id = ANY($2) AND r.message_id = ANY($3)
               AND r.removed_at IS NULL
             ORDER BY r.reaction_id",
    )
    .bind(src)
    .bind(&convs)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    let wanted: HashSet<(&str, &str)> =
        keys.iter().map(|(c, m)| (c.as_str(), m.as_str())).collect();
    for (id, conv, msg, user_id, user_name, emoji, reacted_at) in open {
        if !wanted.contains(&(conv.as_str(), msg.as_str())) {
            continue;
        }
        books
            .entry((conv.clone(), msg.clone()))
            .or_default()
            .episodes
            .push(diff::Episode {
                reaction_id: Some(id),
                conversation_id: conv,
                message_id: msg,
                user_id,
                user_name,
                emoji,
                reacted_at,
                removed_at: None,
                newly_removed: false,
            });
    }
    Ok(books)
}

async fn write_conversations(
    tx: &mut Transaction<'_, Postgres>,
    src: &str,
    convs: &HashMap<String, (Option<ConversationObservation>, bool)>,
    new_convs: &BTreeSet<String>,
    observed_at: DateTime<Utc>,
) -> Result<()> {
    let mut ids = Vec::new();
    let mut types = Vec::new();
    let mut names: Vec<Option<String>> = Vec::new();
    let mut metadata = Vec::new();
    let mut is_new = Vec::new();
    for (id, (obs, changed)) in convs {
        let Some(obs) = obs else { continue };
        if !changed {
            continue;
        }
        ids.push(id.clone());
        types.push(obs.conversation_type.as_str());
        names.push(obs.name.clone());
        metadata.push(obs.metadata.to_string());
        is_new.push(new_convs.contains(id));
    }
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO vault.conversations AS c
             (source, conversation_id, conversation_type, name, metadata, first_seen_at, updated_at)
         SELECT $1, id, ty, name, md::jsonb, $6, $6
         FROM unnest($2::text[], $3::text[], $4::text[], $5::text[]) AS u(id, ty, name, md)
         ON CONFLICT (source, conversation_id) DO UPDATE
         SET conversation_type = EXCLUDED.conversation_type, name = EXCLUDED.name,
             metadata = EXCLUDED.metadata, updated_at = EXCLUDED.updated_at",
    )
    .bind(src)
    .bind(&ids)
    .bind(&types)
    .bind(&names)
    .bind(&metadata)
    .bind(observed_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Message rows as column arrays, for `unnest`.
#[derive(Default)]
struct MessageColumns {
    conv: Vec<String>,
    id: Vec<String>,
    seq: Vec<Option<i64>>,
    sender_id: Vec<Option<String>>,
    sender_name: Vec<Option<String>>,
    sent_at: Vec<DateTime<Utc>>,
    reply_to: Vec<Option<String>>,
    version: Vec<i32>,
    hashes: Vec<Vec<u8>>,
    edited_at: Vec<Option<DateTime<Utc>>>,
    recalled_at: Vec<Option<DateTime<Utc>>>,
    recalled_by: Vec<Option<String>>,
    deleted_at: Vec<Option<DateTime<Utc>>>,
    deleted_by: Vec<Option<String>>,
    raw: Vec<Option<String>>,
    raw_hash: Vec<Vec<u8>>,
}

async fn write_messages(
    tx: &mut Transaction<'_, Postgres>,
    src: &str,
    rows: &HashMap<MsgKey, Row>,
    observed_at: DateTime<Utc>,
) -> Result<()> {
    let mut inserts = MessageColumns::default();
    let mut updates = MessageColumns::default();
    for ((conv, id), row) in rows {
        if !row.dirty {
            continue;
        }
        let Some(st) = &row.state else { continue };
        let cols = if row.in_db {
            &mut updates
        } else {
            &mut inserts
        };
        cols.conv.push(conv.clone());
        cols.id.push(id.clone());
        cols.seq.push(st.header.seq);
        cols.sender_id.push(st.header.sender_id.clone());
        cols.sender_name.push(st.header.sender_name.clone());
        cols.sent_at.push(st.header.sent_at);
        cols.reply_to.push(st.header.reply_to.clone());
        cols.version.push(st.current_version);
        cols.hashes.push(st.version_hashes.concat());
        cols.edited_at.push(st.edited_at);
        cols.recalled_at
            .push(st.recalled.as_ref().and_then(|m| m.at));
        cols.recalled_by
            .push(st.recalled.as_ref().and_then(|m| m.by.clone()));
        cols.deleted_at.push(st.deleted.as_ref().and_then(|m| m.at));
        cols.deleted_by
            .push(st.deleted.as_ref().and_then(|m| m.by.clone()));
        let raw_changed = row.loaded_raw_hash != Some(st.raw_hash);
        cols.raw.push(raw_changed.then(|| st.raw.to_string()));
        cols.raw_hash.push(st.raw_hash.to_vec());
    }
    if !inserts.conv.is_empty() {
        let sql = format!(
            "INSERT INTO vault.messages
                 (source, conversation_id, message_id, seq, sender_id, sender_name, sent_at,
                  reply_to, current_version, version_hashes, edited_at, recalled_at,
                  recalled_by, deleted_at, deleted_by, raw, raw_hash, archived_at)
             SELECT $1, conv, id, seq, sender_id, sender_name, sent_at, reply_to, version,
                    hashes, edited_at, recalled_at, recalled_by, deleted_at, deleted_by,
                    raw::jsonb, raw_hash, $18
             FROM {MESSAGE_ROWS}"
        );
        bind_message_rows(sqlx::query(&sql), src, &inserts)
            .bind(observed_at)
            .execute(&mut **tx)
            .await?;
    }
    if !updates.conv.is_empty() {
        // the fixed facts (seq, sender, time) are never rewritten
        let sql = format!(
            "UPDATE vault.messages m
             SET current_version = u.version, version_hashes = u.hashes, edited_at = u.edited_at,
                 recalled_at = u.recalled_at, recalled_by = u.recalled_by,
                 deleted_at = u.deleted_at, deleted_by = u.deleted_by,
                 raw = COALESCE(u.raw::jsonb, m.raw), raw_hash = u.raw_hash
             FROM {MESSAGE_ROWS}
             WHERE m.source = $1 AND m.conversation_id = u.conv AND m.message_id = u.id"
        );
        bind_message_rows(sqlx::query(&sql), src, &updates)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// The message rows of a page as parameters `$2`..`$17` (`$1` is the source).
const MESSAGE_ROWS: &str = "unnest($2::text[], $3::text[], $4::int8[], $5::text[], $6::text[],
                 $7::timestamptz[], $8::text[], $9::int4[], $10::bytea[], $11::timestamptz[],
                 $12::timestamptz[], $13::text[], $14::timestamptz[], $15::text[], $16::text[],
                 $17::bytea[])
       AS u(conv, id, seq, sender_id, sender_name, sent_at, reply_to, version, hashes,
            edited_at, recalled_at, recalled_by, deleted_at, deleted_by, raw, raw_hash)";

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

fn bind_message_rows<'q>(query: PgQuery<'q>, src: &'q str, c: &'q MessageColumns) -> PgQuery<'q> {
    query
        .bind(src)
        .bind(&c.conv)
        .bind(&c.id)
        .bind(&c.seq)
        .bind(&c.sender_id)
        .bind(&c.sender_name)
        .bind(&c.sent_at)
        .bind(&c.reply_to)
        .bind(&c.version)
        .bind(&c.hashes)
        .bind(&c.edited_at)
        .bind(&c.recalled_at)
        .bind(&c.recalled_by)
        .bind(&c.deleted_at)
        .bind(&c.deleted_by)
        .bind(&c.raw)
        .bind(&c.raw_hash)
}

async fn write_versions(
    tx: &mut Transaction<'_, Postgres>,
    src: &str,
    versions: &[(MsgKey, diff::NewVersion)],
    observed_at: DateTime<Utc>,
) -> Result<()> {
    if versions.is_empty() {
        return Ok(());
    }
    let mut conv = Vec::with_capacity(versions.len());
    let mut id = Vec::with_capacity(versions.len());
    let mut version = Vec::with_capacity(versions.len());
    let mut kind = Vec::with_capacity(versions.len());
    let mut text = Vec::with_capacity(versions.len());
    let mut content = Vec::with_capacity(versions.len());
    let mut edited_at = Vec::with_capacity(versions.len());
    for ((c, m), v) in versions {
        conv.push(c.as_str());
        id.push(m.as_str());
        version.push(v.version);
        kind.push(v.content.kind.as_str());
        text.push(v.content.text.as_str());
        content.push(v.content.content.to_string());
        edited_at.push(v.edited_at);
    }
    sqlx::query(
        "INSERT INTO vault.message_versions
             (source, conversation_id, message_id, version, kind, text, content, edited_at, observed_at)
         SELECT $1, conv, id, version, kind, text, content::jsonb, edited_at, $9
         FROM unnest($2::text[], $3::text[], $4::int4[], $5::text[], $6::text[], $7::text[],
                     $8::timestamptz[])
           AS u(conv, id, version, kind, text, content, edited_at)",
    )
    .bind(src)
    .bind(&conv)
    .bind(&id)
    .bind(&version)
    .bind(&kind)
    .bind(&text)
    .bind(&content)
    .bind(&edited_at)
    .bind(observed_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn write_reactions(
    tx: &mut Transaction<'_, Postgres>,
    src: &str,
    books: &HashMap<MsgKey, ReactionBook>,
) -> Result<()> {
    let mut conv = Vec::new();
    let mut msg = Vec::new();
    let mut user = Vec::new();
    let mut user_name: Vec<Option<String>> = Vec::new();
    let mut emoji = Vec::new();
    let mut reacted = Vec::new();
    let mut removed: Vec<Option<DateTime<Utc>>> = Vec::new();
    let mut closed_ids = Vec::new();
    let mut closed_at = Vec::new();
    for book in books.values() {
        for e in &book.episodes {
            match e.reaction_id {
                None => {
                    conv.push(e.conversation_id.as_str());
                    msg.push(e.message_id.as_str());
                    user.push(e.user_id.as_str());
                    user_name.push(e.user_name.clone());
                    emoji.push(e.emoji.as_str());
                    reacted.push(e.reacted_at);
                    removed.push(e.removed_at);
                }
                Some(id) if e.newly_removed => {
                    closed_ids.push(id);
                    closed_at.push(e.removed_at.expect("removed episodes have a time"));
                }
                Some(_) => {}
            }
        }
    }
    if !closed_ids.is_empty() {
        sqlx::query(
            "UPDATE vault.reactions r SET removed_at = u.at
             FROM unnest($2::int8[], $3::timestamptz[]) AS u(id, at)
             WHERE r.source = $1 AND r.reaction_id = u.id",
        )
        .bind(src)
        .bind(&closed_ids)
        .bind(&closed_at)
        .execute(&mut **tx)
        .await?;
    }
    if !conv.is_empty() {
        sqlx::query(
            "INSERT INTO vault.reactions
                 (source, conversation_id, message_id, user_id, user_name, emoji, reacted_at, removed_at)
             SELECT $1, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                                      $7::timestamptz[], $8::timestamptz[])",
        )
        .bind(src)
        .bind(&conv)
        .bind(&msg)
        .bind(&user)
        .bind(&user_name)
        .bind(&emoji)
        .bind(&reacted)
        .bind(&removed)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn update_conversation_counts(
    tx: &mut Transaction<'_, Postgres>,
    src: &str,
    rows: &HashMap<MsgKey, Row>,
    new_msgs: &BTreeSet<MsgKey>,
) -> Result<()> {
    let mut per_conv: HashMap<&str, (i64, DateTime<Utc>, DateTime<Utc>)> = HashMap::new();
    for key in new_msgs {
        let Some(st) = rows.get(key).and_then(|r| r.state.as_ref()) else {
            continue;
        };
        let t = st.header.sent_at;
        let e = per_conv.entry(key.0.as_str()).or_insert((0, t, t));
        e.0 += 1;
        e.1 = e.1.min(t);
        e.2 = e.2.max(t);
    }
    if per_conv.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::new();
    let mut counts = Vec::new();
    let mut firsts = Vec::new();
    let mut lasts = Vec::new();
    for (id, (n, first, last)) in per_conv {
        ids.push(id);
        counts.push(n);
        firsts.push(first);
        lasts.push(last);
    }
    sqlx::query(
        "UPDATE vault.conversations c
         SET message_count = c.message_count + u.n,
             first_message_at = LEAST(c.first_message_at, u.first),
             last_message_at = GREATEST(c.last_message_at, u.last)
         FROM unnest($2::text[], $3::int8[], $4::timestamptz[], $5::timestamptz[])
           AS u(id, n, first, last)
         WHERE c.source = $1 AND c.conversation_id = u.id",
    )
    .bind(src)
    .bind(&ids)
    .bind(&counts)
    .bind(&firsts)
    .bind(&lasts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn write_events(
    tx: &mut Transaction<'_, Postgres>,
    src: &str,
    events: &[EventDraft],
    observed_at: DateTime<Utc>,
    chain_seq: &mut i64,
    chain_head: &mut Hash,
) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let n = events.len();
    let mut seqs = Vec::with_capacity(n);
    let mut kinds = Vec::with_capacity(n);
    let mut convs = Vec::with_capacity(n);
    let mut msgs: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut occurred = Vec::with_capacity(n);
    let mut details = Vec::with_capacity(n);
    let mut prevs = Vec::with_capacity(n);
    let mut hashes = Vec::with_capacity(n);
    for e in events {
        *chain_seq += 1;
        let occurred_at = e.occurred_at.map(crate::model::to_micros);
        let fields = EventFields {
            source: src,
            event_seq: *chain_seq,
            kind: e.kind,
            conversation_id: Some(&e.conversation_id),
            message_id: e.message_id.as_deref(),
            occurred_at,
            observed_at,
            detail: &e.detail,
        };
        let hash = chain_hash(chain_head, &fields);
        seqs.push(*chain_seq);
        kinds.push(e.kind);
        convs.push(e.conversation_id.as_str());
        msgs.push(e.message_id.as_deref());
        occurred.push(occurred_at);
        details.push(e.detail.to_string());
        prevs.push(chain_head.to_vec());
        hashes.push(hash.to_vec());
        *chain_head = hash;
    }
    sqlx::query(
        "INSERT INTO vault.events
             (source, event_seq, kind, conversation_id, message_id, occurred_at, observed_at,
              detail, prev_hash, hash)
         SELECT $1, seq, kind, conv, msg, occ, $10, detail::jsonb, prev, hash
         FROM unnest($2::int8[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
                     $7::text[], $8::bytea[], $9::bytea[])
           AS u(seq, kind, conv, msg, occ, detail, prev, hash)",
    )
    .bind(src)
    .bind(&seqs)
    .bind(&kinds)
    .bind(&convs)
    .bind(&msgs)
    .bind(&occurred)
    .bind(&details)
    .bind(&prevs)
    .bind(&hashes)
    .bind(observed_at)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE vault.chain_heads SET event_seq = $2, hash = $3 WHERE source = $1")
        .bind(src)
        .bind(*chain_seq)
        .bind(&chain_head[..])
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn write_gaps(
    tx: &mut Transaction<'_, Postgres>,
    src: &str,
    page: &Page,
    observed_at: DateTime<Utc>,
) -> Result<u64> {
    if page.gaps.is_empty() {
        return Ok(0);
    }
    let convs: Vec<&str> = page
        .gaps
        .iter()
        .map(|g| g.conversation_id.as_str())
        .collect();
    let from: Vec<i64> = page.gaps.iter().map(|g| g.from_seq).collect();
    let to: Vec<i64> = page.gaps.iter().map(|g| g.to_seq).collect();
    let reasons: Vec<&str> = page.gaps.iter().map(|g| g.reason.as_str()).collect();
    let kinds: Vec<&str> = page.gaps.iter().map(|g| g.kind.as_str()).collect();
    let done = sqlx::query(
        "INSERT INTO vault.seq_gaps (source, conversation_id, from_seq, to_seq, reason, observed_at, kind)
         SELECT $1, c, f, t, r, $6, k
         FROM unnest($2::text[], $3::int8[], $4::int8[], $5::text[], $7::text[]) AS u(c, f, t, r, k)
         ON CONFLICT DO NOTHING",
    )
    .bind(src)
    .bind(&convs)
    .bind(&from)
    .bind(&to)
    .bind(&reasons)
    .bind(observed_at)
    .bind(&kinds)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

async fn write_quarantine(
    tx: &mut Transaction<'_, Postgres>,
    src: &str,
    records: &[QuarantineRecord],
    observed_at: DateTime<Utc>,
) -> Result<u64> {
    if records.is_empty() {
        return Ok(0);
    }
    let hashes: Vec<Vec<u8>> = records
        .iter()
        .map(|r| canonical::value_hash(&r.raw).to_vec())
        .collect();
    let raw_text: Vec<String> = records.iter().map(|r| r.raw.to_string()).collect();
    let reasons: Vec<&str> = records.iter().map(|r| r.reason.as_str()).collect();
    let done = sqlx::query(
        "INSERT INTO vault.quarantine (source, raw_hash, observed_at, reason, raw)
         SELECT $1, h, $5, r, raw::jsonb FROM unnest($2::bytea[], $3::text[], $4::text[]) AS u(h, r, raw)
         ON CONFLICT DO NOTHING",
    )
    .bind(src)
    .bind(&hashes)
    .bind(&reasons)
    .bind(&raw_text)
    .bind(observed_at)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected())
}

/// Mark the held messages of a complete window read that upstream no longer has as deleted
/// (content kept), returning their ids in id order. Messages the page itself observes in
/// full are present by definition; already deleted ones keep their first mark.
async fn apply_window(
    tx: &mut Transaction<'_, Postgres>,
    src: &str,
    window: &crate::model::WindowObservation,
    page_keys: &[MsgKey],
    observed_at: DateTime<Utc>,
) -> Result<Vec<String>> {
    let conv = &window.conversation_id;
    let (from, to) = (window.from, window.to);
    if from > to {
        return Ok(Vec::new());
    }
    let mut present: Vec<String> = window.present.clone();
    present.extend(
        page_keys
            .iter()
            .filter(|(c, _)| c == conv)
            .map(|(_, m)| m.clone()),
    );
    present.sort();
    present.dedup();
    let mut ids: Vec<String> = sqlx::query_scalar(
        "UPDATE vault.messages SET deleted_at = $5
         WHERE source = $1 AND conversation_id = $2 AND sent_at BETWEEN $3 AND $4
           AND deleted_at IS NULL AND NOT (message_id = ANY($6))
         RETURNING message_id",
    )
    .bind(src)
    .bind(conv)
    .bind(from)
    .bind(to)
    .bind(observed_at)
    .bind(&present)
    .fetch_all(&mut **tx)
    .await?;
    ids.sort();
    Ok(ids)
}

/// The distinct conversation ids and message ids of a set of keys.
fn distinct_parts(keys: &[MsgKey]) -> (Vec<&str>, Vec<&str>) {
    let convs: BTreeSet<&str> = keys.iter().map(|(c, _)| c.as_str()).collect();
    let ids: BTreeSet<&str> = keys.iter().map(|(_, m)| m.as_str()).collect();
    (convs.into_iter().collect(), ids.into_iter().collect())
}
