//! Yunhu (云湖) connector: the community-documented user API over HTTP + protobuf. What it
//! relies on about the upstream, and how sure the community is of each fact, is written down
//! in `docs/upstreams/yunhu.md`.
//!
//! It only fetches and maps: no database, no retries. HTTP and error classification live in
//! [`api`], mapping in [`map`], the protobuf types in [`pb`].
//!
//! Discovery: `conversation/list` with the md5 of the last list (an unchanged list is one
//! small request and nothing to sync), plus the address book on the first run, on `--full`
//! and then once a day, so chats removed from the conversation list are still archived
//! (and every archived chat is swept once a day). A chat is synced when its list entry
//! (`send_timestamp`, `timestamp_ms`, `chat_content`, hashed into a fingerprint kept in the
//! discovery state) differs from the one its last pass began at (kept in its cursor), when
//! it is new, or when its history is not complete yet; so a chat whose sync failed is read
//! again on the next run even when the list did not change.
//!
//! One feed, `messages`, with the cursor [`HistoryCursor`]. A fetch is a function of the
//! request, its cursor and what this run's discovery saw ([`RunContext`]): the connector
//! keeps no memory that a fetch changes, so a retried, repeated or prefetched request does
//! exactly what the first one did. The cursor says which run wrote it; a cursor from an
//! earlier run starts this run's work on the chat.
//!
//! Each run of a chat starts a *pass*: `list-message` pages from the newest message down
//! until it has reached the newest archived seq (catch-up) and, when the window is due
//! (every `rescan_every_minutes`), covered the trailing rescan window (the newest
//! `rescan_messages` messages, and those of the last `rescan_days` days), so later edits
//! and recalls there are observed; Yunhu has no change feed. A targeted run after a push
//! that named edited or recalled messages ([`FetchRequest::changed`]) reads the window now
//! and goes down at least to the lowest of them. When the window is not due,
//! catch-up first tries one `list-message-by-seq` call and keeps it only when it is
//! contiguous and reaches the newest message the conversation list announced (past ~30
//! behind, that endpoint answers with the newest messages only, or, as one client reads
//! it, with older ones). Then, until the history is complete, a pass pages down from the
//! oldest archived message. An empty page below an anchor is confirmed by asking again
//! below the next-oldest archived messages before the history counts as complete: the
//! anchor may have disappeared for this account (deleted for me, a group's auto-delete).
//! Seqs that upstream never returns are recorded as gaps, not errors.
//!
//! Edits: a message whose `edit_time` is larger than the one seen in the previous pass (or
//! that is seen for the first time with an `edit_time`) has its `list-message-edit-record`
//! read, 20 rows a page until `total` or an empty page, within bounds (pages, rows, bytes;
//! what lies beyond is quarantined with the reason), and every earlier version is
//! reported, oldest first, as the current content with the parts the record carries put
//! back. Recalls are marks; the store never lets a recalled copy replace archived content
//! or sender. Yunhu has no reactions.
//!
//! Attachments ([`attachments`]): the files a version's content references (images, files,
//! stickers, video with its cover, voice), and their download: a plain GET with Yunhu's
//! `Referer`, never the account's token.
//!
//! Bounds: one fetch chains at most [`PAGES_PER_FETCH`] list pages; every step of a chat's
//! reading moves an anchor down, moves on to the next confirmation anchor, or ends; and a
//! chat reads at most [`MAX_REQUESTS_PER_RUN`] requests a run, then fails for this run with
//! that reason (what it read is kept; the next run goes on from there).

mod api;
pub mod attachments;
mod history;
mod map;
pub mod pb;
pub mod push;
mod recheck;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::Utc;
use prost::Message;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use self::api::Api;
use super::cursor;
use super::http::{raw_body, HttpClient};
use super::{
    Connector, ConnectorError, DiscoverRequest, Discovery, FetchRequest, Fetched,
    KnownConversation, Probe, Recheck, RecheckRequest,
};
use crate::config::{Secret, SourceConfig, YunhuConfig};
use crate::model::{
    ConversationObservation, ConversationType, Cursor, EarlierVersion, GapKind, Platform,
    QuarantineRecord, SeqGap, SourceName,
};

pub use api::{
    ADDRESS_BOOK_LIST, CONVERSATION_LIST, EDIT_RECORD, LIST_MESSAGE, LIST_MESSAGE_BY_SEQ,
};

/// The plain text the archive keeps for a content (what search indexes).
pub fn content_text(content_type: i64, content: &pb::MsgContent) -> String {
    map::content_of(content_type, content, "").text
}

pub const FEED_MESSAGES: &str = "messages";

/// `list-message` page size: what the community's clients ask for (20 to 40).
pub const PAGE_SIZE: i64 = 30;
/// Upstream list pages chained into one fetch, and the messages after which it stops early.
pub const PAGES_PER_FETCH: usize = 10;
const MESSAGES_PER_FETCH: usize = 300;
/// Requests one chat may make in one run (list pages and edit records); past it the chat
/// fails for this run, keeping what it read.
pub const MAX_REQUESTS_PER_RUN: u32 = 20_000;
/// Edit records read at the same time.
const EDIT_RECORD_CONCURRENCY: usize = 8;
/// Edit-record rows asked for per page: public clients ask for 10 to 20.
pub const EDIT_PAGE_SIZE: usize = 20;
/// Bounds on one message's edit record: pages read, rows kept, bytes of rows kept.
pub const MAX_EDIT_PAGES: u32 = 30;
pub const MAX_EDIT_ROWS: usize = 500;
pub const MAX_EDIT_BYTES: usize = 4 * 1024 * 1024;
/// Archived messages kept in the cursor just above an anchor, to confirm an empty page with.
const CONFIRM_ANCHORS: usize = 3;
/// How often the address book is read (and every archived chat swept).
const ADDRESS_BOOK_EVERY_SECS: i64 = 24 * 3600;
const CURSOR_VERSION: u32 = 1;
const GAP_REASON: &str = "not returned by upstream (deleted for this account, or not visible)";
const BEFORE_HISTORY_REASON: &str =
    "before the oldest message upstream returns (history not visible to this account)";

/// An archived message a read can be anchored on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    pub seq: i64,
    pub id: String,
}

/// Where a chat's history stands.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryCursor {
    pub v: u32,
    /// The newest archived message; everything from `oldest` up to it has been covered.
    pub newest_seq: i64,
    pub newest_id: String,
    /// Its `send_time` (ms; 0: not known).
    #[serde(default)]
    pub newest_ms: i64,
    /// The oldest archived message: the back-fill anchor.
    pub oldest_seq: i64,
    pub oldest_id: String,
    /// The archived messages just above `oldest`, oldest first (a few): where to ask again
    /// when the page below `oldest` comes back empty.
    #[serde(default)]
    pub oldest_next: Vec<Anchor>,
    /// Back-fill reached the oldest message upstream returns.
    pub complete: bool,
    /// `edit_time` of the edited messages seen in the last pass.
    #[serde(default)]
    pub edits: BTreeMap<String, u64>,
    /// A pass in progress.
    #[serde(default)]
    pub pass: Option<Pass>,
    /// The conversation-list fingerprint of the chat when its last pass or catch-up began.
    #[serde(default)]
    pub list_fp: String,
    /// Unix seconds when a pass last covered the trailing window.
    #[serde(default)]
    pub rescanned_at: i64,
    /// The run that wrote this cursor (see [`RunContext::run`]).
    #[serde(default)]
    pub run: String,
    /// Requests this chat made in that run.
    #[serde(default)]
    pub run_requests: u32,
}

/// A pass from a message down (see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pass {
    /// Page before this message next ("": from the newest).
    pub anchor_id: String,
    /// The lowest seq seen so far in this pass (`i64::MAX`: none yet).
    pub anchor_seq: i64,
    /// The messages seen just above the anchor, oldest first (a few).
    #[serde(default)]
    pub anchor_next: Vec<Anchor>,
    /// The page below the anchor came back empty: asking below `anchor_next[i]` to confirm.
    #[serde(default)]
    pub confirm: Option<usize>,
    /// Every confirmation anchor disappeared once already and the pass began again from
    /// the newest message; the second time, the empty page is taken for the bottom.
    #[serde(default)]
    pub restarted: bool,
    /// A back-fill: from the oldest archived message down (it leaves the cursor's `edits`,
    /// which describe the newest messages, as they are).
    #[serde(default)]
    pub backfill: bool,
    /// The newest archived seq when the pass began (0: nothing archived, or a pass that
    /// must reach the oldest message).
    pub stop_seq: i64,
    /// Messages seen so far.
    pub covered: u32,
    pub top_seq: i64,
    pub top_id: String,
    #[serde(default)]
    pub top_ms: i64,
    /// This pass re-reads the trailing window (else it stops once caught up).
    #[serde(default)]
    pub window: bool,
    /// The pass goes down at least to this seq (0: no such floor): the lowest archived
    /// message a push named as changed.
    #[serde(default)]
    pub down_to: i64,
    /// `edit_time` of the edited messages seen in this pass.
    pub edits: BTreeMap<String, u64>,
}

/// Source-level state kept between discoveries.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct DiscoveryState {
    v: u32,
    md5: String,
    /// Unix seconds of the last address-book read.
    address_book_at: i64,
    /// A short hash of each listed chat's last-message facts.
    chats: BTreeMap<String, String>,
    /// When each listed chat's newest message was sent, as far as its entry says
    /// ([`announced_ms`]).
    #[serde(default)]
    times: BTreeMap<String, u64>,
}

/// What this run's discovery saw, fixed for the run: fetches read it, never change it.
#[derive(Clone, Debug, Default)]
pub struct RunContext {
    /// A fresh id per discovery; a cursor written by another run starts this run's work.
    pub run: String,
    /// Unix seconds when the run's discovery began: the run's "now".
    pub now: i64,
    /// The conversation-list fingerprint of each listed chat.
    pub fingerprints: BTreeMap<String, String>,
    /// When each listed chat's newest message was sent (ms), per the conversation list.
    pub list_ms: BTreeMap<String, u64>,
}

impl RunContext {
    fn new(now: i64) -> RunContext {
        RunContext {
            run: format!("{:016x}", rand::thread_rng().gen::<u64>()),
            now,
            ..RunContext::default()
        }
    }
}

pub struct YunhuConnector {
    api: Api,
    source: SourceName,
    token: Secret,
    rescan_messages: u32,
    rescan_days: u32,
    rescan_every_minutes: u32,
    /// The push channel's WebSocket and clock ([`push`]).
    ws_url: String,
    push_timing: push::PushTiming,
    /// Set by each discovery; read by fetches.
    context: Mutex<Arc<RunContext>>,
}

impl fmt::Debug for YunhuConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("YunhuConnector")
            .field("source", &self.source)
            .field("base_url", &self.api.base_url())
            .field("token", &"***")
            .field("rescan_messages", &self.rescan_messages)
            .field("rescan_days", &self.rescan_days)
            .field("rescan_every_minutes", &self.rescan_every_minutes)
            .field("ws_url", &self.ws_url)
            .finish()
    }
}

/// A chat as Yunhu addresses it.
struct Chat {
    id: String,
    chat_type: i64,
}

impl YunhuConnector {
    pub fn new(source: &SourceConfig, cfg: &YunhuConfig, http: HttpClient) -> anyhow::Result<Self> {
        Ok(YunhuConnector {
            api: Api::new(http, &cfg.base_url, source.name.clone()),
            source: source.name.clone(),
            token: cfg.token.clone(),
            rescan_messages: cfg.rescan_messages,
            rescan_days: cfg.rescan_days,
            rescan_every_minutes: cfg.rescan_every_minutes,
            ws_url: cfg.ws_url.clone(),
            push_timing: push::PushTiming::default(),
            context: Mutex::new(Arc::new(RunContext::new(Utc::now().timestamp()))),
        })
    }

    /// The push channel's heartbeat and timeouts (tests and benchmarks shorten them).
    pub fn with_push_timing(mut self, timing: push::PushTiming) -> Self {
        self.push_timing = timing;
        self
    }

    fn context(&self) -> Arc<RunContext> {
        self.context
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn conversation_list(
        &self,
        md5: &str,
    ) -> Result<pb::ConversationListResponse, ConnectorError> {
        let request = pb::ConversationListRequest {
            md5: md5.to_string(),
        };
        let body = self
            .api
            .post_proto(CONVERSATION_LIST, None, &self.token, &request)
            .await?;
        let response = pb::ConversationListResponse::decode(body.as_slice()).map_err(|e| {
            self.decode_error(
                CONVERSATION_LIST,
                None,
                format!("not a conversation list: {e}"),
                &body,
            )
        })?;
        api::check_status(
            &self.api.what(CONVERSATION_LIST, None),
            response.status.as_ref(),
        )?;
        Ok(response)
    }

    async fn address_book(&self) -> Result<pb::AddressBookListResponse, ConnectorError> {
        let request = pb::AddressBookListRequest { md5: String::new() };
        let body = self
            .api
            .post_proto(ADDRESS_BOOK_LIST, None, &self.token, &request)
            .await?;
        let response = pb::AddressBookListResponse::decode(body.as_slice()).map_err(|e| {
            self.decode_error(
                ADDRESS_BOOK_LIST,
                None,
                format!("not an address book: {e}"),
                &body,
            )
        })?;
        api::check_status(
            &self.api.what(ADDRESS_BOOK_LIST, None),
            response.status.as_ref(),
        )?;
        Ok(response)
    }
}

fn parse_cursor(stored: &Cursor, source: &SourceName) -> Result<HistoryCursor, ConnectorError> {
    cursor::decode(
        stored,
        &[CURSOR_VERSION],
        &format!("yunhu source {source}: messages cursor"),
    )
}

fn chat_of(
    conversation: &ConversationObservation,
    source: &SourceName,
) -> Result<Chat, ConnectorError> {
    let chat_type = match (
        conversation
            .metadata
            .get("chat_type")
            .and_then(Value::as_i64),
        conversation.conversation_type,
    ) {
        (Some(t), _) => t,
        (None, ConversationType::Direct) => 1,
        (None, ConversationType::Group) => 2,
        (None, ConversationType::Bot) => 3,
        (None, ConversationType::Other) => {
            return Err(ConnectorError::Permanent(format!(
                "yunhu source {source}: conversation {} has no chat_type",
                conversation.conversation_id
            )))
        }
    };
    if conversation.conversation_id.is_empty() {
        return Err(ConnectorError::Permanent(format!(
            "yunhu source {source}: a conversation has an empty id"
        )));
    }
    Ok(Chat {
        id: conversation.conversation_id.clone(),
        chat_type,
    })
}

/// A changed conversation list: every listed chat is discovered (an entry without a
/// `chat_id` is quarantined), and `state` takes the list's md5 and each chat's fingerprint
/// and announced time.
fn take_list(
    list: &pb::ConversationListResponse,
    state: &mut DiscoveryState,
    discovery: &mut Discovery,
    listed: &mut HashSet<String>,
) {
    let mut fingerprints = BTreeMap::new();
    let mut times = BTreeMap::new();
    for d in &list.data {
        if d.chat_id.is_empty() {
            discovery.quarantine.push(QuarantineRecord {
                reason: "yunhu conversation list: an entry has no chat_id".into(),
                raw: raw_body(&d.encode_to_vec()),
            });
            continue;
        }
        fingerprints.insert(d.chat_id.clone(), fingerprint(d));
        times.insert(d.chat_id.clone(), announced_ms(d));
        listed.insert(d.chat_id.clone());
        discovery.conversations.push(map::conversation(
            &d.chat_id,
            d.chat_type,
            &d.name,
            &d.remark,
            &d.avatar_url,
            d.certification_level,
        ));
    }
    state.md5 = list.md5.clone();
    state.chats = fingerprints;
    state.times = times;
}

/// The address book's chats that the conversation list did not show.
fn take_address_book(
    book: &pb::AddressBookListResponse,
    discovery: &mut Discovery,
    listed: &mut HashSet<String>,
) {
    for section in &book.data {
        for entry in &section.data {
            if entry.chat_id.is_empty() || listed.contains(&entry.chat_id) {
                continue;
            }
            listed.insert(entry.chat_id.clone());
            discovery.conversations.push(map::conversation(
                &entry.chat_id,
                section.chat_type,
                &entry.name,
                &entry.remark,
                &entry.avatar_url,
                0,
            ));
        }
    }
}

/// A short hash of the list facts that change with a chat's latest message.
fn fingerprint(d: &pb::ConversationData) -> String {
    let digest = Sha256::digest(format!(
        "{}\0{}\0{}",
        d.send_timestamp, d.timestamp_ms, d.chat_content
    ));
    hex::encode(&digest[..8])
}

/// When a list entry says the chat's newest message was sent, in ms: `send_timestamp` (the
/// message's send time, in seconds) or `timestamp_ms` (documented as the time the chat
/// joined the list, equal to the message time in the one capture), whichever is later. A
/// later value only makes the by-seq catch-up fall back to paging, never skip anything.
fn announced_ms(d: &pb::ConversationData) -> u64 {
    d.send_timestamp.saturating_mul(1000).max(d.timestamp_ms)
}

/// Whether a known chat must be read: its history is not complete, a pass is under way, or
/// its list entry (`fingerprint`) is not the one its last pass was read at.
fn needs_sync(k: &KnownConversation, fingerprint: Option<&String>) -> bool {
    match k.cursors.get(FEED_MESSAGES) {
        None => true,
        Some(c) => cursor::peek::<HistoryCursor>(c, &[CURSOR_VERSION]).is_none_or(|c| {
            !c.complete || c.pass.is_some() || fingerprint.is_some_and(|fp| *fp != c.list_fp)
        }),
    }
}

#[async_trait]
impl Connector for YunhuConnector {
    fn platform(&self) -> Platform {
        Platform::Yunhu
    }

    /// The WebSocket push channel ([`push`]): one connection, until it drops; the error
    /// says why (the engine reconnects with backoff).
    async fn listen(&self, sink: crate::push::PushSink) -> Result<(), ConnectorError> {
        let why = self.listen_once(&sink).await;
        sink.disconnected(&why.to_string());
        Err(why)
    }

    /// The conversation list, as every run reads it first.
    async fn probe(&self, _login: bool) -> Result<Probe, ConnectorError> {
        let list = self.conversation_list("").await?;
        Ok(Probe::Ok(format!(
            "conversation list read ({} chats)",
            list.data.len()
        )))
    }

    /// The token comes from the configuration; a rejected one is reported by the first call.
    async fn login(&self) -> Result<(), ConnectorError> {
        Ok(())
    }

    async fn discover(&self, request: DiscoverRequest<'_>) -> Result<Discovery, ConnectorError> {
        let previous: Option<DiscoveryState> = request
            .state
            .and_then(|c| cursor::peek(c, &[CURSOR_VERSION]));
        let now = Utc::now().timestamp();
        let full = request.full || previous.is_none();
        let mut state = previous.unwrap_or(DiscoveryState {
            v: CURSOR_VERSION,
            ..DiscoveryState::default()
        });
        let sweep = full || now - state.address_book_at >= ADDRESS_BOOK_EVERY_SECS;
        let sent_md5 = if full {
            String::new()
        } else {
            state.md5.clone()
        };
        let list = self.conversation_list(&sent_md5).await?;
        let list_unchanged = list.data.is_empty() && !sent_md5.is_empty();

        let mut discovery = Discovery::default();
        let mut listed = HashSet::new();
        if !list_unchanged {
            take_list(&list, &mut state, &mut discovery, &mut listed);
        }
        if sweep {
            let book = self.address_book().await?;
            take_address_book(&book, &mut discovery, &mut listed);
            state.address_book_at = now;
        } else {
            // A chat waits while its history is complete and was read at the list entry
            // seen now; a chat whose sync failed is read again even if the list is the same.
            discovery.unchanged = request
                .known
                .iter()
                .filter(|k| {
                    let id = &k.conversation.conversation_id;
                    !needs_sync(k, state.chats.get(id))
                })
                .map(|k| k.conversation.conversation_id.clone())
                .collect();
        }
        let context = RunContext {
            fingerprints: state.chats.clone(),
            list_ms: state.times.clone(),
            ..RunContext::new(now)
        };
        *self.context.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(context);
        discovery.state = Some(cursor::encode(&state));
        Ok(discovery)
    }

    fn feeds(&self, _conversation: &ConversationObservation) -> Vec<&'static str> {
        vec![FEED_MESSAGES]
    }

    async fn fetch(&self, request: FetchRequest<'_>) -> Result<Fetched, ConnectorError> {
        if request.feed != FEED_MESSAGES {
            return Err(ConnectorError::Permanent(format!(
                "yunhu source {}: unknown feed {}",
                self.source, request.feed
            )));
        }
        let chat = chat_of(request.conversation, &self.source)?;
        let cursor = match request.cursor {
            None => None,
            Some(c) => Some(parse_cursor(c, &self.source)?),
        };
        self.fetch_history(&self.context(), &chat, cursor, request.changed)
            .await
    }

    fn attachments(
        &self,
        content: &crate::model::Content,
    ) -> Vec<crate::attachments::AttachmentRef> {
        attachments::attachments(content)
    }

    async fn media_request(
        &self,
        reference: &crate::attachments::AttachmentRef,
    ) -> Result<crate::attachments::MediaRequest, ConnectorError> {
        attachments::media_request(&reference.url).map_err(|why| {
            ConnectorError::Permanent(format!(
                "{}: attachment {}: {why}",
                self.source,
                crate::attachments::shown_url(&reference.url)
            ))
        })
    }

    async fn recheck(&self, request: RecheckRequest<'_>) -> Result<Recheck, ConnectorError> {
        self.recheck_chat(request).await
    }
}
