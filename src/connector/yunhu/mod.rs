//! Yunhu (云湖) connector: the community-documented user API over HTTP + protobuf (spec
//! `specs/yunhu.md`, §8 for the loop).
//!
//! It only fetches and maps (STYLE rule 3): no database, no retries. HTTP and error
//! classification live in [`api`], mapping in [`map`], the protobuf types in [`pb`].
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
//! One feed, `messages`, with the cursor [`HistoryCursor`]. Each run of a chat starts a
//! *pass*: `list-message` pages from the newest message down until it has reached the
//! newest archived seq (catch-up) and, when the window is due (every
//! `rescan_every_minutes`), covered the trailing rescan window (the newest
//! `rescan_messages` messages, and those of the last `rescan_days` days), so later edits
//! and recalls there are observed; Yunhu has no change feed. When the window is not due,
//! catch-up first tries one `list-message-by-seq` call and keeps it only when it is
//! contiguous (spec §4.6: past ~30 behind it returns only the newest). Then, until the
//! history is complete, back-fill pages down from the oldest archived message. Seqs that
//! upstream never returns are recorded as gaps, not errors.
//!
//! Edits: a message whose `edit_time` is larger than the one seen in the previous pass (or
//! that is seen for the first time with an `edit_time`) has its `list-message-edit-record`
//! read, and every earlier version is reported, oldest first. Recalls are marks; the store
//! never lets a recalled copy replace archived content or sender. Yunhu has no reactions.

mod api;
mod history;
mod map;
pub mod pb;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::Utc;
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use self::api::Api;
use super::http::HttpClient;
use super::{
    Connector, ConnectorError, DiscoverRequest, Discovery, FetchRequest, Fetched, KnownConversation,
};
use crate::config::{Secret, SourceConfig, YunhuConfig};
use crate::model::{
    ConversationObservation, ConversationType, Cursor, EarlierVersion, Platform, QuarantineRecord,
    SeqGap, SourceName,
};

pub use api::{
    ADDRESS_BOOK_LIST, CONVERSATION_LIST, EDIT_RECORD, LIST_MESSAGE, LIST_MESSAGE_BY_SEQ,
};

/// The plain text the archive keeps for a content (what search indexes).
pub fn content_text(content_type: i64, content: &pb::MsgContent) -> String {
    map::content_of(content_type, content, "").text
}

pub const FEED_MESSAGES: &str = "messages";

/// `list-message` page size: the most clients use, and the fake's cap (spec §4.5).
pub const PAGE_SIZE: i64 = 30;
/// Upstream pages chained into one fetch, and the messages after which it stops early.
const PAGES_PER_FETCH: usize = 10;
const MESSAGES_PER_FETCH: usize = 300;
/// Edit records read at the same time.
const EDIT_RECORD_CONCURRENCY: usize = 8;
/// Edit-record rows per page.
const EDIT_PAGE_SIZE: usize = 50;
/// How often the address book is read (and every archived chat swept).
const ADDRESS_BOOK_EVERY_SECS: i64 = 24 * 3600;
const CURSOR_VERSION: u32 = 1;
const GAP_REASON: &str = "not returned by upstream (deleted for this account, or not visible)";
const BEFORE_HISTORY_REASON: &str =
    "before the oldest message upstream returns (history not visible to this account)";

/// Where a chat's history stands.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryCursor {
    pub v: u32,
    /// The newest archived message; everything from `oldest` up to it has been covered.
    pub newest_seq: i64,
    pub newest_id: String,
    /// The oldest archived message: the back-fill anchor.
    pub oldest_seq: i64,
    pub oldest_id: String,
    /// Back-fill reached the oldest message upstream returns.
    pub complete: bool,
    /// `edit_time` of the edited messages seen in the last pass.
    #[serde(default)]
    pub edits: BTreeMap<String, u64>,
    /// A pass from the top in progress.
    #[serde(default)]
    pub pass: Option<Pass>,
    /// The conversation-list fingerprint of the chat when its last pass or catch-up began.
    #[serde(default)]
    pub list_fp: String,
    /// Unix seconds when a pass last covered the trailing window.
    #[serde(default)]
    pub rescanned_at: i64,
}

/// A pass from the newest message down (see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pass {
    /// Page before this message next.
    pub anchor_id: String,
    /// The lowest seq seen so far in this pass.
    pub anchor_seq: i64,
    /// The newest archived seq when the pass began (0: nothing archived).
    pub stop_seq: i64,
    /// Messages seen so far.
    pub covered: u32,
    pub top_seq: i64,
    pub top_id: String,
    /// This pass re-reads the trailing window (else it stops once caught up).
    #[serde(default)]
    pub window: bool,
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
}

pub struct YunhuConnector {
    api: Api,
    source: SourceName,
    token: Secret,
    rescan_messages: u32,
    rescan_days: u32,
    rescan_every_minutes: u32,
    /// Chats whose pass this run has begun (cleared by discovery).
    begun: Mutex<HashSet<String>>,
    /// The conversation-list fingerprint of each listed chat, from this run's discovery.
    fingerprints: Mutex<BTreeMap<String, String>>,
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
            begun: Mutex::new(HashSet::new()),
            fingerprints: Mutex::new(BTreeMap::new()),
        })
    }

    fn begun(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.begun.lock().unwrap_or_else(|e| e.into_inner())
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

fn parse_cursor(cursor: &Cursor, source: &SourceName) -> Result<HistoryCursor, ConnectorError> {
    let unrecognised = || {
        ConnectorError::Permanent(format!(
            "yunhu source {source}: unrecognised messages cursor; run with --full to start over"
        ))
    };
    if cursor.0.get("v").and_then(Value::as_u64) != Some(u64::from(CURSOR_VERSION)) {
        return Err(unrecognised());
    }
    serde_json::from_value(cursor.0.clone()).map_err(|_| unrecognised())
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

/// A short hash of the list facts that change with a chat's latest message.
fn fingerprint(d: &pb::ConversationData) -> String {
    let digest = Sha256::digest(format!(
        "{}\0{}\0{}",
        d.send_timestamp, d.timestamp_ms, d.chat_content
    ));
    hex::encode(&digest[..8])
}

/// Whether a known chat must be read: its history is not complete, a pass is under way, or
/// its list entry (`fingerprint`) is not the one its last pass was read at.
fn needs_sync(k: &KnownConversation, fingerprint: Option<&String>) -> bool {
    match k.cursors.get(FEED_MESSAGES) {
        None => true,
        Some(c) => serde_json::from_value::<HistoryCursor>(c.0.clone())
            .map(|c| {
                !c.complete || c.pass.is_some() || fingerprint.is_some_and(|fp| *fp != c.list_fp)
            })
            .unwrap_or(true),
    }
}

#[async_trait]
impl Connector for YunhuConnector {
    fn platform(&self) -> Platform {
        Platform::Yunhu
    }

    /// The token comes from the configuration; a rejected one is reported by the first call.
    async fn login(&self) -> Result<(), ConnectorError> {
        Ok(())
    }

    async fn discover(&self, request: DiscoverRequest<'_>) -> Result<Discovery, ConnectorError> {
        self.begun().clear();
        let previous: Option<DiscoveryState> = request
            .state
            .and_then(|c| serde_json::from_value(c.0.clone()).ok())
            .filter(|s: &DiscoveryState| s.v == CURSOR_VERSION);
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
            let mut fingerprints = BTreeMap::new();
            for d in &list.data {
                if d.chat_id.is_empty() {
                    discovery.quarantine.push(QuarantineRecord {
                        reason: "yunhu conversation list: an entry has no chat_id".into(),
                        raw: api::raw_body(&d.encode_to_vec()),
                    });
                    continue;
                }
                fingerprints.insert(d.chat_id.clone(), fingerprint(d));
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
        }
        if sweep {
            let book = self.address_book().await?;
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
        *self.fingerprints.lock().unwrap_or_else(|e| e.into_inner()) = state.chats.clone();
        discovery.state = Some(Cursor(json!(state)));
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
        // Several upstream pages of 30 make one page for the store, so that a transaction
        // carries a few hundred messages rather than 30.
        let mut wanted = Vec::new();
        let mut merged = self.fetch_messages(&request, &chat, &mut wanted).await?;
        for _ in 1..PAGES_PER_FETCH {
            if merged.done || merged.messages.len() >= MESSAGES_PER_FETCH {
                break;
            }
            let next = FetchRequest {
                cursor: Some(&merged.next_cursor),
                ..request.clone()
            };
            let more = self.fetch_messages(&next, &chat, &mut wanted).await?;
            merged.messages.extend(more.messages);
            merged.gaps.extend(more.gaps);
            merged.quarantine.extend(more.quarantine);
            merged.next_cursor = more.next_cursor;
            merged.done = more.done;
        }
        self.attach_versions(&chat, &mut merged, wanted).await?;
        Ok(merged)
    }
}
