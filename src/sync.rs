//! The sync engine, platform-neutral: for one source, load its cursors, ask the connector
//! for conversations, then page every feed of every conversation from its cursor, handing
//! each page to the store in one transaction together with the new cursor (invariant 2).
//!
//! It owns retries: transient failures back off exponentially with jitter, rate limits wait
//! (honouring `Retry-After`) and repeat the same request, an expired login is renewed once.
//! A conversation that fails for good is reported and the others go on; the run ends with a
//! per-source result recorded in `archive.sync_runs`. One writer per source is ensured by a
//! PostgreSQL advisory lock held for the run on a dedicated connection.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use rand::Rng;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tracing::{info, info_span, warn, Instrument};

use crate::config::SourceConfig;
use crate::connector::http::HttpClient;
use crate::connector::{
    self, ChangedMessage, Connector, ConnectorError, DiscoverRequest, FetchRequest,
    KnownConversation,
};
use crate::model::{ConversationObservation, Cursor, Page, QuarantineRecord, SourceName};
use crate::store::{RunCounts, RunStatus, Store, StoreError};

/// How the engine retries and reports.
#[derive(Clone, Debug)]
pub struct SyncOptions {
    /// Re-read everything from the beginning (still idempotent).
    pub full: bool,
    /// Attempts of one request that failed transiently, before the conversation fails.
    pub max_retries: u32,
    /// The first backoff delay; it doubles per attempt up to `max_backoff`.
    pub backoff_base: Duration,
    pub max_backoff: Duration,
    /// Rate-limit waits for one request before giving up on the conversation.
    pub max_rate_limit_waits: u32,
    /// Show an interactive progress bar (a terminal); otherwise log progress periodically.
    pub progress_bar: bool,
    /// Pages one feed of one conversation may take in one run before the engine stops it
    /// with an error (the next run goes on from where it stopped): a bound on a connector
    /// that keeps moving without ever reaching the end.
    pub max_pages_per_feed: u64,
    /// Where connectors keep login sessions between runs (the daemon and the CLI use
    /// `<data_dir>/sessions`); `None` keeps them in memory for one run.
    pub session_dir: Option<PathBuf>,
    /// How often the connection holding the source's lock is checked.
    pub lock_check_every: Duration,
    /// Called before each page of a feed is written, with the source and the page's cursor
    /// key. Tests use it to fail a run at a chosen moment.
    pub page_hook: Option<PageHook>,
    /// Where the chain heads go after each run (`[integrity]`); `None`: nowhere.
    pub heads: Option<std::sync::Arc<crate::config::IntegrityConfig>>,
    /// A targeted run (a push said these conversations changed): read only these
    /// conversations' feeds, without asking upstream for the conversation list, unless one
    /// of them is not archived yet (then one discovery first, and only these are read).
    /// Recorded in `archive.sync_runs` with `trigger = 'push'`. `None`: every conversation.
    pub only: Option<Vec<String>>,
    /// With `only`: per conversation, the messages pushes named as edited, recalled,
    /// deleted or reacted to, handed to the connector ([`FetchRequest::changed`]).
    pub changed: BTreeMap<String, Vec<String>>,
}

/// See [`SyncOptions::page_hook`]: called with the source and the page's cursor key.
pub type PageHookFn = dyn Fn(&SourceName, &str) + Send + Sync;

/// See [`SyncOptions::page_hook`].
#[derive(Clone)]
pub struct PageHook(pub std::sync::Arc<PageHookFn>);

impl std::fmt::Debug for PageHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageHook")
    }
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            full: false,
            max_retries: 5,
            backoff_base: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
            max_rate_limit_waits: 30,
            progress_bar: false,
            max_pages_per_feed: 1_000_000,
            session_dir: None,
            lock_check_every: Duration::from_secs(5),
            page_hook: None,
            heads: None,
            only: None,
            changed: BTreeMap::new(),
        }
    }
}

/// Where the daemon and the CLI keep connectors' login sessions: `<data_dir>/sessions`.
pub fn session_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("sessions")
}

/// How one source's run ended.
#[derive(Clone, Debug)]
pub struct SourceResult {
    pub source: SourceName,
    pub run_id: Option<i64>,
    pub status: RunStatus,
    pub counts: RunCounts,
    pub conversations: usize,
    /// Conversations that failed, with why.
    pub failed_conversations: Vec<(String, String)>,
    /// Why the whole source failed, or a summary of the failed conversations.
    pub error: Option<String>,
    /// Another process holds this source's lock; nothing was done.
    pub skipped: bool,
    /// Times the engine waited because upstream rate-limited it.
    pub rate_limit_waits: u64,
    /// Upstream requests that failed in transport (timeouts, dropped connections).
    pub failed_requests: u64,
    /// How long the run took.
    pub duration: Duration,
    /// Whether the chain heads were handed to `[integrity]`'s targets after the run
    /// (`None`: none configured, or the run was skipped).
    pub heads_published: Option<bool>,
}

impl SourceResult {
    pub fn ok(&self) -> bool {
        self.status == RunStatus::Ok
    }
}

/// Why a source could not be synced at all.
#[derive(Debug, thiserror::Error)]
enum SourceError {
    #[error("{0}")]
    Connector(#[from] ConnectorError),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Other(String),
    #[error("lost the source's lock (the database connection holding it broke); stopped so that no other process syncs this source at the same time, the next run goes on from the last page committed")]
    LockLost,
}

/// A stop signal: `true` once shutdown was asked for.
pub type Shutdown = watch::Receiver<bool>;

/// Sync one source: take its lock, run, record the run. Never panics: every failure, a
/// panic of a bug included, ends up in the returned result and in `archive.sync_runs`.
pub async fn sync_source(
    store: &Store,
    source: &SourceConfig,
    options: &SyncOptions,
    shutdown: Option<Shutdown>,
) -> SourceResult {
    let span = info_span!("sync", source = %source.name, platform = %source.platform_key());
    async move {
        let mut result = SourceResult {
            source: source.name.clone(),
            run_id: None,
            status: RunStatus::Failed,
            counts: RunCounts::default(),
            conversations: 0,
            failed_conversations: Vec::new(),
            error: None,
            skipped: false,
            rate_limit_waits: 0,
            failed_requests: 0,
            duration: Duration::ZERO,
            heads_published: None,
        };
        let started = Instant::now();
        if let Err(e) = store
            .register_source(&source.name, source.platform_key())
            .await
        {
            result.error = Some(e.to_string());
            return result;
        }
        let lock = match store
            .try_lock_source(&source.name, options.lock_check_every)
            .await
        {
            Ok(Some(lock)) => lock,
            Ok(None) => {
                // not a failure and not an error: the other process is doing the work
                result.skipped = true;
                result.status = RunStatus::Ok;
                info!("skipped: another process holds the source lock");
                return result;
            }
            Err(e) => {
                result.error = Some(format!("cannot take the source lock: {e}"));
                return result;
            }
        };
        let run = run_locked(store, source, options, shutdown, lock.lost(), &mut result);
        if let Err(panic) = std::panic::AssertUnwindSafe(run).catch_unwind().await {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_string());
            warn!(panic = %what, "the run stopped on an internal error");
            result.status = RunStatus::Failed;
            result.error = Some(format!(
                "internal error, please report it: {what}; the run stopped, and the next one \
                 goes on from the last page committed"
            ));
            if let Some(run_id) = result.run_id {
                finish(store, source, run_id, &result).await;
            }
        }
        lock.release().await;
        if let Some(heads) = &options.heads {
            // Whatever the run wrote (a failed run may have committed pages), the heads it
            // left are kept elsewhere; a failure is logged and counted, never the run's.
            result.heads_published = Some(crate::integrity::publish_heads(store, heads).await);
        }
        result.duration = started.elapsed();
        result
    }
    .instrument(span)
    .await
}

async fn run_locked(
    store: &Store,
    source: &SourceConfig,
    options: &SyncOptions,
    shutdown: Option<Shutdown>,
    lock_lost: watch::Receiver<bool>,
    result: &mut SourceResult,
) {
    let trigger = if options.only.is_some() {
        crate::store::RunTrigger::Push
    } else {
        crate::store::RunTrigger::Poll
    };
    let run_id = match store.start_run_with_trigger(&source.name, trigger).await {
        Ok(id) => id,
        Err(e) => {
            result.error = Some(e.to_string());
            return;
        }
    };
    result.run_id = Some(run_id);
    let started = Instant::now();
    let http = match HttpClient::new(source.requests_per_second, source.request_timeout) {
        Ok(h) => h,
        Err(e) => {
            result.error = Some(e.to_string());
            finish(store, source, run_id, result).await;
            return;
        }
    };
    let stats = http.stats();
    let outcome = match connector::build(source, http, options.session_dir.as_deref()) {
        Ok(conn) => {
            let mut run = Run {
                store,
                source,
                options,
                connector: conn.as_ref(),
                shutdown,
                lock_lost,
                counts: RunCounts::default(),
                retries: AtomicU64::new(0),
                rate_limit_waits: AtomicU64::new(0),
                relogged: AtomicBool::new(false),
                progress: Progress::new(source.name.as_str(), options.progress_bar),
            };
            let r = run.run(result).await;
            run.progress.finish();
            result.counts = std::mem::take(&mut run.counts);
            result.counts.retries = run.retries.load(Ordering::Relaxed);
            result.rate_limit_waits = run.rate_limit_waits.load(Ordering::Relaxed);
            r
        }
        Err(e) => Err(SourceError::Other(format!("{e:#}"))),
    };
    result.counts.requests = stats.requests();
    result.failed_requests = stats.failures.load(std::sync::atomic::Ordering::Relaxed);
    match outcome {
        Ok(interrupted) => {
            if interrupted {
                result.status = RunStatus::Interrupted;
                result.error = Some("stopped by shutdown".into());
            } else if result.failed_conversations.is_empty() {
                result.status = RunStatus::Ok;
            } else {
                result.status = RunStatus::Failed;
                let n = result.failed_conversations.len();
                let first = &result.failed_conversations[0];
                result.error = Some(format!(
                    "{n} of {} conversations failed; first: conversation {}: {}",
                    result.conversations, first.0, first.1
                ));
            }
        }
        Err(e) => {
            result.status = RunStatus::Failed;
            result.error = Some(e.to_string());
        }
    }
    info!(
        status = result.status.as_str(),
        new = result.counts.messages_new,
        changed = result.counts.messages_changed,
        requests = result.counts.requests,
        retries = result.counts.retries,
        seconds = started.elapsed().as_secs_f64(),
        "sync run finished"
    );
    finish(store, source, run_id, result).await;
}

async fn finish(store: &Store, source: &SourceConfig, run_id: i64, result: &SourceResult) {
    if let Err(e) = store
        .finish_run(
            &source.name,
            run_id,
            result.status,
            &result.counts,
            result.error.as_deref(),
        )
        .await
    {
        warn!(error = %e, "could not record the end of the run");
    }
}

struct Run<'a> {
    store: &'a Store,
    source: &'a SourceConfig,
    options: &'a SyncOptions,
    connector: &'a dyn Connector,
    shutdown: Option<Shutdown>,
    /// Turns true when the source's lock is gone (see [`crate::store::SourceLock`]).
    lock_lost: watch::Receiver<bool>,
    counts: RunCounts,
    retries: AtomicU64,
    rate_limit_waits: AtomicU64,
    relogged: AtomicBool,
    progress: Progress,
}

/// Pages (or conversation outcomes) waiting between the fetching and the writing half.
const PIPELINE_DEPTH: usize = 2;
/// A batch is written once it holds this many records (messages and reactions).
const BATCH_MESSAGES: usize = 5_000;

/// What the fetching half of a run hands to the writing half, in order.
enum Item {
    Page(Page),
    /// Every page of this conversation was handed over (`Ok`), or why it failed.
    Done {
        conversation: String,
        outcome: Result<(), SourceError>,
    },
}

/// Why fetching a conversation stopped early.
enum Stop {
    /// The conversation failed; the writing half decides whether the run goes on.
    Failed(SourceError),
    /// The writing half ended (an error, or shutdown): stop fetching.
    Closed,
}

fn cursor_key(feed: &str, conversation_id: &str) -> String {
    format!("{feed}/{conversation_id}")
}

impl Run<'_> {
    /// Fails once the source's lock is gone: no page is written without it.
    fn check_lock(&self) -> Result<(), SourceError> {
        if *self.lock_lost.borrow() {
            return Err(SourceError::LockLost);
        }
        Ok(())
    }

    fn stopping(&self) -> bool {
        self.shutdown.as_ref().is_some_and(|s| *s.borrow())
    }

    /// Returns `Ok(true)` when interrupted by shutdown.
    async fn run(&mut self, result: &mut SourceResult) -> Result<bool, SourceError> {
        let name = &self.source.name;
        let connector = self.connector;
        self.call(|_| connector.login()).await?;
        let mut cursors = self.store.cursors(name).await?;
        let held = self.store.conversations(name).await?;
        let known: Vec<KnownConversation> = held
            .iter()
            .map(|c| KnownConversation {
                conversation: c.clone(),
                cursors: self
                    .connector
                    .feeds(c)
                    .into_iter()
                    .filter_map(|f| {
                        cursors
                            .get(&cursor_key(f, &c.conversation_id))
                            .map(|v| (f.to_string(), v.clone()))
                    })
                    .collect(),
            })
            .collect();
        let state = cursors.get("conversations").cloned();
        let full = self.options.full;
        let only: Option<HashSet<&str>> = self
            .options
            .only
            .as_ref()
            .map(|ids| ids.iter().map(String::as_str).collect());
        // A targeted run asks for the conversation list only for a conversation it does not
        // hold yet.
        let discover = only.as_ref().is_none_or(|ids| {
            ids.iter()
                .any(|id| !held.iter().any(|c| c.conversation_id == *id))
        });
        let discovery = if discover {
            self.call(|_| {
                connector.discover(DiscoverRequest {
                    known: &known,
                    state: state.as_ref(),
                    full,
                })
            })
            .await?
        } else {
            connector::Discovery::default()
        };

        // Record what discovery saw, in its own page; the connector's source-level state
        // rides on this page's cursor.
        let mut page = Page::new(
            "conversations",
            state.clone(),
            discovery
                .state
                .clone()
                .unwrap_or_else(|| Cursor(json!({"v": 1}))),
        );
        page.conversations = discovery.conversations.clone();
        page.quarantine = discovery.quarantine.clone();
        if !(page.conversations.is_empty()
            && page.quarantine.is_empty()
            && page.expected_cursor.as_ref() == Some(&page.next_cursor))
        {
            let out = self.store.apply_page(name, &page).await?;
            cursors.insert("conversations".into(), page.next_cursor.clone());
            self.counts.messages_changed += out.messages_changed;
        }

        // Everything discovered, plus everything held that discovery did not list.
        let mut todo: BTreeMap<String, ConversationObservation> = held
            .into_iter()
            .map(|c| (c.conversation_id.clone(), c))
            .collect();
        for c in discovery.conversations {
            todo.insert(c.conversation_id.clone(), c);
        }
        if let Some(only) = &only {
            // a push said these changed: read them whatever discovery thinks
            todo.retain(|id, _| only.contains(id.as_str()));
        } else if !self.options.full {
            for id in &discovery.unchanged {
                todo.remove(id);
            }
        }
        result.conversations = todo.len();
        self.progress.set_total(todo.len() as u64);
        // Fetching and writing overlap: one half fetches the pages of every conversation in
        // turn, the other writes them in transactions of several pages.
        let (tx, rx) = mpsc::channel(PIPELINE_DEPTH);
        let mut counts = std::mem::take(&mut self.counts);
        let mut progress = std::mem::replace(
            &mut self.progress,
            Progress::new(self.source.name.as_str(), false),
        );
        let this: &Run = self;
        let fetching = async move {
            let mut cursors = cursors;
            for conversation in todo.values() {
                if this.stopping() {
                    return;
                }
                let span = info_span!("conversation", conversation = %conversation.conversation_id);
                let outcome = this
                    .fetch_conversation(conversation, &mut cursors, &tx)
                    .instrument(span)
                    .await;
                let outcome = match outcome {
                    Ok(()) => Ok(()),
                    Err(Stop::Failed(e)) => Err(e),
                    Err(Stop::Closed) => return,
                };
                let item = Item::Done {
                    conversation: conversation.conversation_id.clone(),
                    outcome,
                };
                if tx.send(item).await.is_err() {
                    return;
                }
            }
        };
        let writing = this.write_pages(rx, &mut counts, &mut progress, result);
        let ((), written) = tokio::join!(fetching, writing);
        self.counts = counts;
        self.progress = progress;
        written
    }

    /// The writing half of a run: pages in order, in transactions of up to
    /// [`BATCH_MESSAGES`] messages (a batch is written as soon as no further page is ready,
    /// so a slow upstream never holds written pages back); the conversations' outcomes.
    /// `Ok(true)`: interrupted.
    async fn write_pages(
        &self,
        mut rx: mpsc::Receiver<Item>,
        counts: &mut RunCounts,
        progress: &mut Progress,
        result: &mut SourceResult,
    ) -> Result<bool, SourceError> {
        let mut batch: Vec<Page> = Vec::new();
        let mut size = 0usize;
        // Conversations read to their end whose last pages are still in `batch`: their
        // complete read is recorded once those pages are committed.
        let mut complete: Vec<String> = Vec::new();
        loop {
            let item = if batch.is_empty() {
                rx.recv().await
            } else {
                match rx.try_recv() {
                    Ok(item) => Some(item),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        if self.stopping() {
                            return Ok(true);
                        }
                        self.write_batch(&mut batch, counts, progress).await?;
                        self.record_complete_reads(&mut complete, result.run_id)
                            .await;
                        size = 0;
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                }
            };
            let Some(item) = item else { break };
            match item {
                Item::Page(page) => {
                    size += page.messages.len() + page.reactions.len() + 1;
                    batch.push(page);
                    if size >= BATCH_MESSAGES {
                        if self.stopping() {
                            return Ok(true);
                        }
                        self.write_batch(&mut batch, counts, progress).await?;
                        self.record_complete_reads(&mut complete, result.run_id)
                            .await;
                        size = 0;
                    }
                }
                Item::Done {
                    conversation,
                    outcome,
                } => {
                    match outcome {
                        Ok(()) => {
                            complete.push(conversation.clone());
                            if batch.is_empty() {
                                self.record_complete_reads(&mut complete, result.run_id)
                                    .await;
                            }
                        }
                        Err(e @ SourceError::Connector(ConnectorError::Unauthorized(_)))
                        | Err(e @ SourceError::Store(_))
                        | Err(e @ SourceError::LockLost) => {
                            // what was fetched before is written first, as it was before
                            self.write_batch(&mut batch, counts, progress).await?;
                            self.record_complete_reads(&mut complete, result.run_id)
                                .await;
                            return Err(e);
                        }
                        Err(e) => {
                            warn!(conversation = %conversation, error = %e, "conversation failed; continuing with the others");
                            result
                                .failed_conversations
                                .push((conversation, e.to_string()));
                        }
                    }
                    progress.conversation_done(counts);
                }
            }
        }
        if self.stopping() && !batch.is_empty() {
            return Ok(true);
        }
        self.write_batch(&mut batch, counts, progress).await?;
        self.record_complete_reads(&mut complete, result.run_id)
            .await;
        Ok(self.stopping())
    }

    /// Record that every conversation of `complete` had each of its feeds read to its end
    /// in this run (`chatvault coverage`), once its pages are committed (emptying it). A
    /// failure to record is logged, never the run's: the archive itself is complete.
    async fn record_complete_reads(&self, complete: &mut Vec<String>, run_id: Option<i64>) {
        let Some(run_id) = run_id else {
            complete.clear();
            return;
        };
        for conversation in complete.drain(..) {
            if let Err(e) = self
                .store
                .record_complete_read(&self.source.name, &conversation, run_id)
                .await
            {
                warn!(conversation = %conversation, error = %e, "could not record the complete read of the conversation");
            }
        }
    }

    /// Write the pages of `batch` in one transaction (emptying it).
    async fn write_batch(
        &self,
        batch: &mut Vec<Page>,
        counts: &mut RunCounts,
        progress: &mut Progress,
    ) -> Result<(), SourceError> {
        if batch.is_empty() {
            return Ok(());
        }
        if let Some(hook) = &self.options.page_hook {
            for page in batch.iter() {
                (hook.0)(&self.source.name, &page.cursor_key);
            }
        }
        self.check_lock()?;
        let out = self.store.apply_pages(&self.source.name, batch).await?;
        counts.messages_new += out.messages_new;
        counts.messages_changed += out.messages_changed;
        progress.page_applied(out.messages_new);
        batch.clear();
        Ok(())
    }

    /// Fetch every feed of one conversation to its end, handing each page to the writing
    /// half; `cursors` follows the pages handed over (each is written, or the run stops).
    async fn fetch_conversation(
        &self,
        conversation: &ConversationObservation,
        cursors: &mut BTreeMap<String, Cursor>,
        tx: &mpsc::Sender<Item>,
    ) -> Result<(), Stop> {
        let send = |item: Item| async move { tx.send(item).await.map_err(|_| Stop::Closed) };
        let changed = self.changed_messages(&conversation.conversation_id).await;
        for feed in self.connector.feeds(conversation) {
            let key = cursor_key(feed, &conversation.conversation_id);
            let first_cursor = if self.options.full {
                None
            } else {
                cursors.get(&key).cloned()
            };
            let mut cursor = first_cursor.clone();
            let mut guard =
                FeedGuard::new(feed, first_cursor.as_ref(), self.options.max_pages_per_feed);
            loop {
                if self.stopping() {
                    return Err(Stop::Closed);
                }
                let fetched = tokio::select! {
                    f = self.fetch(conversation, feed, cursor.clone(), &changed) => f,
                    () = tx.closed() => return Err(Stop::Closed),
                };
                let page_data = match fetched {
                    Ok(f) => f,
                    Err(ConnectorError::Decode { message, raw }) => {
                        // Keep what could not be decoded, then give up on this conversation.
                        if let Some(raw) = raw {
                            let reason = format!(
                                "{feed} page of conversation {}: {message}",
                                conversation.conversation_id
                            );
                            let next = Cursor(json!({"v": 1}));
                            let mut page = Page::new(
                                "quarantine",
                                cursors.get("quarantine").cloned(),
                                next.clone(),
                            );
                            page.quarantine.push(QuarantineRecord { reason, raw });
                            send(Item::Page(page)).await?;
                            cursors.insert("quarantine".into(), next);
                        }
                        return Err(Stop::Failed(SourceError::Connector(
                            ConnectorError::Decode { message, raw: None },
                        )));
                    }
                    Err(e) => return Err(Stop::Failed(e.into())),
                };
                let stored = cursors.get(&key).cloned();
                let progressed = stored.as_ref() != Some(&page_data.next_cursor);
                let done = page_data.done;
                let mut page = Page::new(key.clone(), stored, page_data.next_cursor);
                page.conversations = page_data.conversations;
                page.messages = page_data.messages;
                page.reactions = page_data.reactions;
                page.gaps = page_data.gaps;
                page.quarantine = page_data.quarantine;
                page.windows = page_data.windows;
                let empty = page.conversations.is_empty()
                    && page.windows.is_empty()
                    && page.messages.is_empty()
                    && page.reactions.is_empty()
                    && page.gaps.is_empty()
                    && page.quarantine.is_empty();
                let next = page.next_cursor.clone();
                if !empty || progressed {
                    if let Err(e) = self.check_lock() {
                        return Err(Stop::Failed(e));
                    }
                    cursors.insert(key.clone(), next.clone());
                    send(Item::Page(page)).await?;
                }
                if done {
                    break;
                }
                guard
                    .check(&next, progressed || !empty)
                    .map_err(Stop::Failed)?;
                cursor = Some(next);
            }
        }
        Ok(())
    }

    /// Fetch one page of a feed, with the retry policy.
    async fn fetch(
        &self,
        conversation: &ConversationObservation,
        feed: &str,
        cursor: Option<Cursor>,
        changed: &[ChangedMessage],
    ) -> Result<crate::connector::Fetched, ConnectorError> {
        let connector = self.connector;
        let full = self.options.full;
        self.call(|attempt| {
            connector.fetch(FetchRequest {
                conversation,
                feed,
                cursor: cursor.as_ref(),
                full,
                attempt,
                changed,
            })
        })
        .await
    }

    /// The messages of `conversation_id` pushes named as changed, with their archived seqs
    /// (a message the archive cannot look up is still named, without a seq).
    async fn changed_messages(&self, conversation_id: &str) -> Vec<ChangedMessage> {
        let Some(ids) = self.options.changed.get(conversation_id) else {
            return Vec::new();
        };
        let seqs: HashMap<String, i64> = match self
            .store
            .message_seqs(&self.source.name, conversation_id, ids)
            .await
        {
            Ok(rows) => rows.into_iter().collect(),
            Err(e) => {
                warn!(error = %e, "cannot look up the seqs of pushed changes");
                HashMap::new()
            }
        };
        ids.iter()
            .map(|id| ChangedMessage {
                message_id: id.clone(),
                seq: seqs.get(id).copied(),
            })
            .collect()
    }

    /// Call the connector with the engine's retry policy; `f` is given how many times the
    /// call has failed transiently so far.
    async fn call<T, Fut, F>(&self, f: F) -> Result<T, ConnectorError>
    where
        F: Fn(u32) -> Fut,
        Fut: Future<Output = Result<T, ConnectorError>>,
    {
        let mut transient = 0u32;
        let mut limited = 0u32;
        loop {
            match f(transient).await {
                Ok(v) => return Ok(v),
                Err(ConnectorError::Unauthorized(msg)) => {
                    if self.relogged.swap(true, Ordering::Relaxed) {
                        return Err(ConnectorError::Unauthorized(msg));
                    }
                    info!("upstream refused the login; logging in again");
                    self.connector.login().await?;
                    self.retries.fetch_add(1, Ordering::Relaxed);
                }
                Err(ConnectorError::RateLimited { retry_after }) => {
                    limited += 1;
                    if limited > self.options.max_rate_limit_waits {
                        return Err(ConnectorError::Transient(format!(
                            "still rate limited after {} waits",
                            self.options.max_rate_limit_waits
                        )));
                    }
                    let wait = retry_after.unwrap_or_else(|| self.backoff(limited));
                    info!(
                        wait_ms = wait.as_millis() as u64,
                        "rate limited by upstream; waiting"
                    );
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    self.rate_limit_waits.fetch_add(1, Ordering::Relaxed);
                    self.sleep(wait).await;
                }
                Err(ConnectorError::Transient(msg)) => {
                    transient += 1;
                    if transient > self.options.max_retries {
                        return Err(ConnectorError::Transient(format!(
                            "{msg} (gave up after {} retries)",
                            self.options.max_retries
                        )));
                    }
                    let wait = self.backoff(transient);
                    warn!(error = %msg, attempt = transient, wait_ms = wait.as_millis() as u64, "transient upstream failure; retrying");
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    self.sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .options
            .backoff_base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
        let capped = exp.min(self.options.max_backoff);
        // full jitter in [50%, 100%]
        let factor = rand::thread_rng().gen_range(0.5..=1.0);
        capped.mul_f64(factor)
    }

    async fn sleep(&self, d: Duration) {
        match &self.shutdown {
            Some(s) => {
                let mut s = s.clone();
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = s.wait_for(|v| *v) => {}
                }
            }
            None => tokio::time::sleep(d).await,
        }
    }
}

/// What ends a feed that never reports its end: three pages in a row that neither move
/// the cursor nor carry anything, a return to a cursor the feed already left in this run
/// (a fetch is a function of its cursor, so that would repeat forever), or the page budget.
struct FeedGuard {
    feed: String,
    stalled: u32,
    pages: u64,
    max_pages: u64,
    /// Digests of the cursors this feed has been at in this run.
    seen: HashSet<[u8; 32]>,
}

impl FeedGuard {
    fn new(feed: &str, first: Option<&Cursor>, max_pages: u64) -> FeedGuard {
        let mut seen = HashSet::new();
        if let Some(first) = first {
            seen.insert(crate::store::canonical::value_hash(&first.0));
        }
        FeedGuard {
            feed: feed.to_string(),
            stalled: 0,
            pages: 0,
            max_pages,
            seen,
        }
    }

    /// After a page that left the feed at `cursor`; `progressed`: it moved the cursor or
    /// carried something.
    fn check(&mut self, cursor: &Cursor, progressed: bool) -> Result<(), SourceError> {
        let feed = &self.feed;
        self.pages += 1;
        if self.pages >= self.max_pages {
            return Err(SourceError::Other(format!(
                "the {feed} feed read {} pages in this run without reaching its end; stopping it (the next run goes on from here)",
                self.pages
            )));
        }
        if !progressed {
            self.stalled += 1;
            if self.stalled >= 3 {
                return Err(SourceError::Other(format!(
                    "the {feed} feed made no progress in three pages; stopping it"
                )));
            }
            return Ok(());
        }
        self.stalled = 0;
        if !self
            .seen
            .insert(crate::store::canonical::value_hash(&cursor.0))
        {
            return Err(SourceError::Other(format!(
                "the {feed} feed came back to a position it had already left in this run (upstream paging goes round in a circle); stopping it"
            )));
        }
        Ok(())
    }
}

/// Progress on a terminal (a bar) or in the log (a line every ten seconds).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    source: String,
    started: Instant,
    last_log: Instant,
    total: u64,
    done: u64,
    messages: u64,
}

impl Progress {
    fn new(source: &str, bar: bool) -> Progress {
        let bar = bar.then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {pos}/{len} conversations, {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b.set_prefix(source.to_string());
            b
        });
        Progress {
            bar,
            source: source.to_string(),
            started: Instant::now(),
            last_log: Instant::now(),
            total: 0,
            done: 0,
            messages: 0,
        }
    }

    fn set_total(&mut self, total: u64) {
        self.total = total;
        if let Some(b) = &self.bar {
            b.set_length(total);
        }
    }

    fn rate(&self) -> f64 {
        self.messages as f64 / self.started.elapsed().as_secs_f64().max(0.001)
    }

    fn page_applied(&mut self, new_messages: u64) {
        self.messages += new_messages;
        if let Some(b) = &self.bar {
            b.set_message(format!("{} messages, {:.0}/s", self.messages, self.rate()));
        } else if self.last_log.elapsed() >= Duration::from_secs(10) {
            self.last_log = Instant::now();
            info!(source = %self.source, conversations_done = self.done, conversations = self.total, messages = self.messages, rate = format!("{:.0}/s", self.rate()), "sync progress");
        }
    }

    fn conversation_done(&mut self, _counts: &RunCounts) {
        self.done += 1;
        if let Some(b) = &self.bar {
            b.set_position(self.done);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(n: u64) -> Cursor {
        Cursor(json!({"v": 1, "token": n}))
    }

    #[test]
    fn a_feed_going_round_in_a_circle_is_stopped() {
        let mut guard = FeedGuard::new("messages", Some(&at(0)), 100);
        guard.check(&at(1), true).unwrap();
        guard.check(&at(2), true).unwrap();
        let e = guard.check(&at(1), true).unwrap_err().to_string();
        assert!(e.contains("came back to a position"), "{e}");

        // back to the cursor the run started from
        let mut guard = FeedGuard::new("messages", Some(&at(0)), 100);
        guard.check(&at(1), true).unwrap();
        assert!(guard.check(&at(0), true).is_err());
    }

    #[test]
    fn a_page_with_data_that_does_not_move_the_cursor_is_stopped() {
        let mut guard = FeedGuard::new("messages", Some(&at(0)), 100);
        assert!(guard.check(&at(0), true).is_err());
    }

    #[test]
    fn three_empty_pages_in_place_are_stopped_and_progress_resets_the_count() {
        let mut guard = FeedGuard::new("extras", None, 100);
        guard.check(&at(1), false).unwrap();
        guard.check(&at(1), false).unwrap();
        guard.check(&at(2), true).unwrap();
        guard.check(&at(2), false).unwrap();
        guard.check(&at(2), false).unwrap();
        let e = guard.check(&at(2), false).unwrap_err().to_string();
        assert!(e.contains("no progress in three pages"), "{e}");
    }

    #[test]
    fn the_page_budget_ends_a_feed_that_never_ends() {
        let mut guard = FeedGuard::new("messages", None, 50);
        for n in 1..50 {
            guard.check(&at(n), true).unwrap();
        }
        let e = guard.check(&at(50), true).unwrap_err().to_string();
        assert!(e.contains("without reaching its end"), "{e}");
    }
}
