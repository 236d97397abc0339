//! The indexer: follows each source's event log and keeps the index current.
//!
//! Invariants:
//! - The watermark of a source (the last `event_seq` applied) is written in the payload of
//!   the tantivy commit that applied those events, never anywhere else: after a crash the
//!   index and its watermark agree, and the events after it are applied again.
//! - Applying an event re-reads the message's *current* state from PostgreSQL and replaces
//!   its document (delete by key, then add), so applying twice changes nothing: no
//!   duplicates, whatever the crash point. A `messages_purged` event deletes the documents
//!   of the messages its listing names (`vault.purged_messages`); deleting twice is a no-op.
//! - Events are read per source in `event_seq` order. A source's events are appended under
//!   its chain-head lock, each transaction after the previous one committed, so the visible
//!   events of a source are always a gapless prefix: reading `event_seq > watermark` never
//!   skips one, however many sources write at once. (A serial shared by all sources could
//!   commit out of order; no such number is used.)
//! - tantivy work runs on blocking threads, with a bounded writer heap
//!   ([`super::WRITER_HEAP_BYTES`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;

use tantivy::collector::Count;
use tantivy::query::TermQuery;
use tantivy::schema::IndexRecordOption;
use tantivy::{IndexWriter, TantivyDocument, Term};
use tokio::sync::watch;

use crate::store::retention::PURGE_EVENT;
use crate::store::Store;

use super::{
    doc_key, key_hash, tokenizer, Fields, Generation, Payload, SearchIndex, SCHEMA_VERSION,
};

/// Events read from the log per query.
const EVENT_BATCH: i64 = 5_000;
/// Documents indexed between two commits while catching up or rebuilding.
const COMMIT_EVERY: usize = 100_000;
/// Messages read per query during a rebuild.
const SCAN_BATCH: i64 = 5_000;

/// How often indexing beside a sync ([`Indexer::index_while`]) looks for new events.
pub const FOLLOW_INTERVAL: Duration = Duration::from_millis(500);

/// The error when another process holds the index's writer lock.
const WRITER_BUSY: &str =
    "the search index is being written by another chatvault process (only one indexes at a time)";

pub use crate::store::index_feed::MessageDoc;

fn to_document(f: &Fields, d: &MessageDoc) -> TantivyDocument {
    let key = doc_key(&d.source, &d.conversation_id, &d.message_id);
    let mut doc = TantivyDocument::new();
    doc.add_u64(f.key_hash, key_hash(&key));
    doc.add_text(f.key, &key);
    doc.add_text(f.source, &d.source);
    doc.add_text(f.conversation_id, &d.conversation_id);
    doc.add_text(f.message_id, &d.message_id);
    if let Some(s) = &d.sender_id {
        doc.add_text(f.sender, s.to_lowercase());
        doc.add_text(f.sender_id, s);
    }
    if let Some(s) = &d.sender_name {
        doc.add_text(f.sender, s.to_lowercase());
        doc.add_text(f.sender_name, s);
    }
    doc.add_text(f.conversation_type, &d.conversation_type);
    doc.add_text(f.kind, &d.kind);
    doc.add_i64(f.sent_at, d.sent_at.timestamp_micros());
    doc.add_u64(f.edited, u64::from(d.edited));
    doc.add_u64(f.recalled, u64::from(d.recalled));
    doc.add_u64(f.deleted, u64::from(d.deleted));
    doc.add_u64(f.recalled_or_deleted, u64::from(d.recalled || d.deleted));
    doc.add_text(f.text, &d.text);
    doc.add_text(f.text_grams, &d.text);
    doc.add_text(f.text_words, tokenizer::fold_text(&d.text));
    if !d.history.is_empty() {
        doc.add_text(f.history_grams, &d.history);
        doc.add_text(f.history_words, tokenizer::fold_text(&d.history));
    }
    doc
}

/// What one catch-up or rebuild did.
#[derive(Clone, Debug, Default)]
pub struct IndexReport {
    /// Events applied.
    pub events: u64,
    /// Documents written (added or replaced).
    pub documents: u64,
    /// Per source, the watermark after the run.
    pub watermarks: BTreeMap<String, i64>,
}

/// An open writer on one generation.
struct Writer {
    generation: Arc<Generation>,
    writer: Arc<Mutex<IndexWriter>>,
    payload: Payload,
}

fn open_writer(generation: &Generation) -> anyhow::Result<IndexWriter> {
    generation
        .index
        .writer_with_num_threads(1, super::WRITER_HEAP_BYTES)
        .map_err(|e| match e {
            tantivy::TantivyError::LockFailure(..) => anyhow::anyhow!("{WRITER_BUSY}"),
            e => anyhow::Error::new(e).context("cannot open the search index for writing"),
        })
}

/// Replace the documents of `docs` (and delete those of `gone`) in the writer.
async fn write_docs(
    writer: &Arc<Mutex<IndexWriter>>,
    fields: Fields,
    docs: Vec<MessageDoc>,
) -> anyhow::Result<()> {
    let writer = writer.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let w = writer.lock().expect("index writer lock poisoned");
        for d in &docs {
            let key = doc_key(&d.source, &d.conversation_id, &d.message_id);
            w.delete_term(Term::from_field_text(fields.key, &key));
            w.add_document(to_document(&fields, d))
                .context("cannot add a document to the search index")?;
        }
        Ok(())
    })
    .await
    .context("the indexing thread panicked")?
}

/// Delete the documents of messages a purge removed.
async fn delete_docs(
    writer: &Arc<Mutex<IndexWriter>>,
    fields: Fields,
    source: &str,
    keys: Vec<(String, String)>,
) -> anyhow::Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let writer = writer.clone();
    let source = source.to_string();
    tokio::task::spawn_blocking(move || {
        let w = writer.lock().expect("index writer lock poisoned");
        for (conversation, message) in &keys {
            let key = doc_key(&source, conversation, message);
            w.delete_term(Term::from_field_text(fields.key, &key));
        }
    })
    .await
    .context("the indexing thread panicked")
}

async fn commit(writer: &Arc<Mutex<IndexWriter>>, payload: &Payload) -> anyhow::Result<()> {
    let writer = writer.clone();
    let payload = serde_json::to_string(payload).context("cannot encode the index payload")?;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut w = writer.lock().expect("index writer lock poisoned");
        let mut prepared = w
            .prepare_commit()
            .context("cannot commit the search index")?;
        prepared.set_payload(&payload);
        prepared
            .commit()
            .context("cannot commit the search index")?;
        Ok(())
    })
    .await
    .context("the indexing thread panicked")?
}

async fn rollback(writer: &Arc<Mutex<IndexWriter>>) {
    let writer = writer.clone();
    let _ = tokio::task::spawn_blocking(move || {
        let mut w = writer.lock().expect("index writer lock poisoned");
        if let Err(e) = w.rollback() {
            tracing::warn!(error = %e, "cannot roll back the search index writer");
        }
    })
    .await;
}

/// Keeps one index current with the store. Holds the index's writer lock while it lives.
pub struct Indexer {
    index: SearchIndex,
    writer: Option<Writer>,
    event_batch: i64,
    commit_every: usize,
}

impl Indexer {
    pub fn new(index: SearchIndex) -> Indexer {
        Indexer {
            index,
            writer: None,
            event_batch: EVENT_BATCH,
            commit_every: COMMIT_EVERY,
        }
    }

    /// Read `event_batch` events per query and commit every `commit_every` documents
    /// (smaller numbers make more, smaller commits: tests use them to stop in between).
    pub fn with_batches(mut self, event_batch: i64, commit_every: usize) -> Indexer {
        self.event_batch = event_batch.max(1);
        self.commit_every = commit_every.max(1);
        self
    }

    pub fn index(&self) -> &SearchIndex {
        &self.index
    }

    /// The writer on the current generation (reopened after a rebuild swapped one in).
    async fn writer(&mut self) -> anyhow::Result<&mut Writer> {
        let generation = self.index.generation()?;
        let stale = self
            .writer
            .as_ref()
            .is_none_or(|w| w.generation.name != generation.name);
        if stale {
            self.writer = None;
            let g = generation.clone();
            let writer = tokio::task::spawn_blocking(move || open_writer(&g))
                .await
                .context("the indexing thread panicked")??;
            let payload = generation.payload()?;
            self.writer = Some(Writer {
                generation,
                writer: Arc::new(Mutex::new(writer)),
                payload,
            });
        }
        Ok(self.writer.as_mut().expect("writer just opened"))
    }

    /// Apply every event not yet applied, for every source, and commit. Returns when the
    /// index has caught up with the chain heads read at the start.
    pub async fn catch_up(&mut self, store: &Store) -> anyhow::Result<IndexReport> {
        let heads = store
            .chain_heads()
            .await
            .context("cannot read the chain heads")?;
        let result = self.catch_up_to(store, &heads).await;
        if result.is_err() {
            if let Some(w) = self.writer.take() {
                rollback(&w.writer).await;
            }
        }
        result
    }

    async fn catch_up_to(
        &mut self,
        store: &Store,
        heads: &BTreeMap<String, i64>,
    ) -> anyhow::Result<IndexReport> {
        let (event_batch, commit_every) = (self.event_batch, self.commit_every);
        let w = self.writer().await?;
        let fields = w.generation.fields;
        let mut report = IndexReport::default();
        let mut uncommitted = 0usize;
        for (source, head) in heads {
            loop {
                let from = w.payload.watermarks.get(source).copied().unwrap_or(0);
                if from >= *head {
                    break;
                }
                let events = store
                    .events_between(source, from, *head, event_batch)
                    .await
                    .with_context(|| format!("cannot read the events of source {source}"))?;
                let Some(last) = events.last().map(|e| e.event_seq) else {
                    break;
                };
                let mut keys = Vec::new();
                let mut seen = std::collections::HashSet::new();
                let mut purged = Vec::new();
                for e in &events {
                    if e.kind == PURGE_EVENT {
                        purged.extend(store.purged_keys(source, e.event_seq).await.with_context(
                            || {
                                format!(
                                    "cannot read what purge event {} of source {source} removed",
                                    e.event_seq
                                )
                            },
                        )?);
                        continue;
                    }
                    if !e.kind.starts_with("message_") {
                        continue;
                    }
                    if let (Some(c), Some(m)) = (&e.conversation_id, &e.message_id) {
                        if seen.insert((c.clone(), m.clone())) {
                            keys.push((c.clone(), m.clone()));
                        }
                    }
                }
                let docs = if keys.is_empty() {
                    Vec::new()
                } else {
                    store.message_docs(source, &keys).await.with_context(|| {
                        format!("cannot read messages of source {source} to index")
                    })?
                };
                report.events += events.len() as u64;
                report.documents += docs.len() as u64;
                uncommitted += docs.len() + purged.len();
                // Deletes first: a message purged and archived again later in this batch
                // is added back by its own event.
                delete_docs(&w.writer, fields, source, purged).await?;
                write_docs(&w.writer, fields, docs).await?;
                w.payload.watermarks.insert(source.clone(), last);
                if uncommitted >= commit_every {
                    w.payload.schema = SCHEMA_VERSION;
                    commit(&w.writer, &w.payload).await?;
                    uncommitted = 0;
                }
            }
        }
        if report.events > 0 {
            w.payload.schema = SCHEMA_VERSION;
            commit(&w.writer, &w.payload).await?;
            w.generation
                .reader
                .reload()
                .context("cannot reload the index reader")?;
        }
        report.watermarks = w.payload.watermarks.clone();
        Ok(report)
    }

    /// Index beside other work (a sync): while `work` runs, catch up again as soon as the
    /// previous catch-up ended (at most every `interval`), then catch up to the end once it
    /// is done. A failed catch-up stops following (the work goes on) and is returned.
    pub async fn index_while<T>(
        &mut self,
        store: &Store,
        interval: Duration,
        work: impl std::future::Future<Output = T>,
    ) -> (T, anyhow::Result<IndexReport>) {
        let (done_tx, mut done_rx) = watch::channel(false);
        let work = async move {
            let out = work.await;
            let _ = done_tx.send(true);
            out
        };
        let follow = async {
            let mut total = IndexReport::default();
            loop {
                if *done_rx.borrow() {
                    return Ok(total);
                }
                let report = self.catch_up(store).await?;
                total.events += report.events;
                total.documents += report.documents;
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = done_rx.changed() => {}
                }
            }
        };
        let (out, followed) = tokio::join!(work, follow);
        let result = match followed {
            Ok(mut total) => self.catch_up(store).await.map(|last| {
                total.events += last.events;
                total.documents += last.documents;
                total.watermarks = last.watermarks;
                total
            }),
            Err(e) => Err(e),
        };
        (out, result)
    }

    /// Rebuild the index from PostgreSQL in a new generation, swap it in, then apply the
    /// events that arrived meanwhile. Search keeps answering from the old generation until
    /// the swap. `progress` is told the messages done so far and the total. A rebuild already
    /// running on the same index (another `reindex`) is waited for first.
    pub async fn rebuild(
        &mut self,
        store: &Store,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> anyhow::Result<IndexReport> {
        let index = self.index.clone();
        let rebuild_lock = tokio::task::spawn_blocking(move || index.lock_for_rebuild())
            .await
            .context("the index lock task panicked")??;
        // The heads are read before the scan: every message the scan reads is at least as
        // new as them, and the events after them are applied again on top (idempotent).
        let heads = store
            .chain_heads()
            .await
            .context("cannot read the chain heads")?;
        let total: i64 = store
            .message_counts()
            .await
            .context("cannot count the messages")?
            .values()
            .sum();
        let total = total.max(0) as u64;
        let generation = self.index.create_generation(&rebuild_lock)?;
        let fields = generation.fields;
        let writer = Arc::new(Mutex::new(open_writer(&generation)?));
        let mut payload = Payload {
            schema: SCHEMA_VERSION,
            watermarks: BTreeMap::new(),
        };
        let mut report = IndexReport::default();
        let mut uncommitted = 0usize;
        progress(0, total);
        for source in heads.keys() {
            let mut after: Option<(String, String)> = None;
            loop {
                let docs = store
                    .scan_message_docs(source, after.as_ref(), SCAN_BATCH)
                    .await
                    .with_context(|| format!("cannot read messages of source {source} to index"))?;
                let Some(last) = docs.last() else { break };
                after = Some((last.conversation_id.clone(), last.message_id.clone()));
                report.documents += docs.len() as u64;
                uncommitted += docs.len();
                write_docs(&writer, fields, docs).await?;
                progress(report.documents, total.max(report.documents));
                if uncommitted >= self.commit_every {
                    commit(&writer, &payload).await?;
                    uncommitted = 0;
                }
            }
        }
        payload.watermarks = heads.clone();
        commit(&writer, &payload).await?;
        drop(writer);
        generation
            .reader
            .reload()
            .context("cannot reload the index reader")?;
        // The old writer (if this indexer had one) belongs to the old generation.
        self.writer = None;
        self.index.swap_in(generation, &rebuild_lock)?;
        drop(rebuild_lock);
        let after = self.catch_up(store).await?;
        report.events = after.events;
        report.documents += after.documents;
        report.watermarks = after.watermarks;
        Ok(report)
    }

    /// Follow the event log until `stop` turns true: catch up, then look again every
    /// `interval` (the index lags a committed page by at most about one interval plus
    /// the time to index it). Failures are logged and retried with backoff.
    pub async fn follow(
        mut self,
        store: Store,
        interval: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut failures = 0u32;
        loop {
            if *stop.borrow() {
                return;
            }
            let wait = match self.catch_up(&store).await {
                Ok(report) => {
                    if report.events > 0 {
                        tracing::debug!(
                            events = report.events,
                            documents = report.documents,
                            "index caught up"
                        );
                    }
                    failures = 0;
                    interval
                }
                Err(e) if format!("{e:#}").contains(WRITER_BUSY) => {
                    // Another daemon on the same data directory keeps this index current.
                    if failures == 0 {
                        tracing::info!(
                            "the search index is kept by another chatvault process; waiting"
                        );
                    }
                    failures = 1;
                    interval * 10
                }
                Err(e) => {
                    failures += 1;
                    let backoff = interval * 2u32.saturating_pow(failures.min(6));
                    tracing::warn!(error = %format!("{e:#}"), retry_in_seconds = backoff.as_secs_f64(), "indexing failed");
                    backoff.min(Duration::from_secs(60))
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// One source's index check.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SourceCheck {
    pub source: String,
    pub messages: i64,
    pub documents: u64,
    pub watermark: i64,
    pub head: i64,
}

/// The index compared with PostgreSQL.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct IndexCheck {
    pub sources: Vec<SourceCheck>,
    /// Sampled messages checked by key.
    pub sampled: u64,
    /// Problems found (empty when the index agrees with PostgreSQL).
    pub drift: Vec<String>,
}

impl IndexCheck {
    pub fn ok(&self) -> bool {
        self.drift.is_empty()
    }
}

/// Compare the index with PostgreSQL: per source, the document count against the message
/// count (for sources the index has caught up with), and a random sample of messages,
/// each of which must be in the index exactly once.
pub async fn check(store: &Store, index: &SearchIndex, sample: i64) -> anyhow::Result<IndexCheck> {
    let generation = index.generation()?;
    generation
        .reader
        .reload()
        .context("cannot reload the index reader")?;
    let payload = generation.payload()?;
    let heads = store
        .chain_heads()
        .await
        .context("cannot read the chain heads")?;
    let counts = store
        .message_counts()
        .await
        .context("cannot count the messages")?;
    let mut samples: Vec<(String, String, String)> = Vec::new();
    for source in heads.keys() {
        let rows = store
            .sample_messages(source, sample)
            .await
            .context("cannot sample the messages")?;
        samples.extend(rows.into_iter().map(|(c, m)| (source.clone(), c, m)));
    }
    let fields = generation.fields;
    tokio::task::spawn_blocking(move || -> anyhow::Result<IndexCheck> {
        let searcher = generation.reader.searcher();
        let mut report = IndexCheck::default();
        let count_term = |term: Term| -> anyhow::Result<u64> {
            let q = TermQuery::new(term, IndexRecordOption::Basic);
            Ok(searcher.search(&q, &Count).context("cannot search the index")? as u64)
        };
        for (source, head) in &heads {
            let watermark = payload.watermarks.get(source).copied().unwrap_or(0);
            let messages = counts.get(source).copied().unwrap_or(0);
            let documents = count_term(Term::from_field_text(fields.source, source))?;
            if watermark > *head {
                report.drift.push(format!(
                    "source {source}: the index has applied event {watermark} but the chain ends at {head}"
                ));
            } else if watermark == *head && documents != messages as u64 {
                report.drift.push(format!(
                    "source {source}: {messages} messages in PostgreSQL, {documents} in the index"
                ));
            }
            report.sources.push(SourceCheck {
                source: source.clone(),
                messages,
                documents,
                watermark,
                head: *head,
            });
        }
        for (source, conversation, message) in &samples {
            let watermark = payload.watermarks.get(source).copied().unwrap_or(0);
            if heads.get(source).copied().unwrap_or(0) != watermark {
                continue;
            }
            report.sampled += 1;
            let key = doc_key(source, conversation, message);
            let n = count_term(Term::from_field_text(fields.key, &key))?;
            if n != 1 {
                report.drift.push(format!(
                    "source {source}: message {message} of conversation {conversation} is in the index {n} times, not once"
                ));
            }
        }
        Ok(report)
    })
    .await
    .context("the index check panicked")?
}
