//! TangSengDaoDao (TSDD) connector: conversation discovery, message history by
//! `message_seq`, edits/recalls/deletes by `extra_version`, and reactions by reaction `seq`
//! (spec `specs/tangsengdaodao.md`, §13 for the loop).
//!
//! It only fetches and maps (STYLE rule 3): no database, no retries, no backoff. Pure
//! mapping lives in [`map`], HTTP and error classification in [`api`].
//!
//! Feeds and their cursors (all versioned, invariant "durable formats carry a version"):
//! - `messages`: `{"v":1,"seq":N}`: every seq ≤ N has been covered, by a message or by a
//!   reported [`SeqGap`]. Paged in fixed windows `[N+1, N+1+W)` with `pull_mode: 1`, so
//!   progress never depends on upstream filtering, and the never-filled `more` is ignored.
//! - `extras`: `{"v":1,"version":V,"source":S}`: rows with `extra_version ≤ V` have been
//!   seen under the server-side checkpoint name `S`, which is this archive's own and is
//!   renewed on a first or `--full` pass (the server's cursor for a source never moves back).
//! - `reactions`: `{"v":1,"seq":N}`: reaction rows with `seq ≤ N` have been seen.
//!
//! Per-run memory (cleared by [`Connector::discover`]): the paging target of each channel
//! (its `last_msg_seq`) and which feeds a `--full` pass has already restarted. User names
//! learned from discovery and login are kept for `sender_name`.

mod api;
mod map;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, RwLock};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use self::api::Api;
use super::http::HttpClient;
use super::{
    Connector, ConnectorError, DiscoverRequest, Discovery, FetchRequest, Fetched, KnownConversation,
};
use crate::config::{Secret, SourceConfig, TsddAuth, TsddConfig};
use crate::model::{
    ConversationObservation, ConversationType, Cursor, Platform, QuarantineRecord, SeqGap,
    SourceName,
};

pub const FEED_MESSAGES: &str = "messages";
pub const FEED_EXTRAS: &str = "extras";
pub const FEED_REACTIONS: &str = "reactions";

/// Rows per page of extra and reaction sync (the reaction endpoint's cap).
const CHANGE_PAGE_LIMIT: usize = 1000;
/// WuKongIM caps channel-sync `limit` at 10000; a wider window would be truncated silently.
const MAX_WINDOW: u64 = 10_000;
const CURSOR_VERSION: u32 = 1;
const GAP_REASON: &str = "not returned by upstream (cleared history, device filter or deleted)";
const NOT_MEMBER_REASON: &str =
    "not returned by upstream: the account is not a current member of the group";

/// A channel as TSDD addresses it: peer uid or group number, and the channel type.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Channel {
    id: String,
    channel_type: u8,
}

#[derive(Debug, Serialize, Deserialize)]
struct SeqCursor {
    v: u32,
    seq: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct ExtrasCursor {
    v: u32,
    version: i64,
    source: String,
}

#[derive(Default)]
struct RunState {
    /// `last_msg_seq` per channel, from discovery or a probe.
    targets: HashMap<Channel, u64>,
    /// `(feed, channel)` pairs a `--full` pass has already restarted in this run.
    restarted: HashSet<(&'static str, Channel)>,
    /// `uid -> name`, for `sender_name`.
    names: HashMap<String, String>,
}

pub struct TsddConnector {
    api: Api,
    source: SourceName,
    auth: TsddAuth,
    device_flag: u8,
    device_id: String,
    window: u64,
    token: RwLock<Option<Secret>>,
    state: Mutex<RunState>,
}

impl fmt::Debug for TsddConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.auth {
            TsddAuth::Password { username, .. } => format!("password (user {username})"),
            TsddAuth::Token(_) => "token".to_string(),
        };
        let logged_in = self.token.read().map(|t| t.is_some()).unwrap_or(false);
        f.debug_struct("TsddConnector")
            .field("source", &self.source)
            .field("base_url", &self.api.base_url())
            .field("auth", &auth)
            .field("logged_in", &logged_in)
            .field("device_flag", &self.device_flag)
            .field("device_id", &self.device_id)
            .field("window", &self.window)
            .finish()
    }
}

impl TsddConnector {
    pub fn new(source: &SourceConfig, cfg: &TsddConfig, http: HttpClient) -> anyhow::Result<Self> {
        if !matches!(cfg.device_flag, 1 | 2) {
            anyhow::bail!(
                "source {}: device_flag must be 1 (web) or 2 (pc); 0 would log the user's phone out",
                source.name
            );
        }
        let token = match &cfg.auth {
            TsddAuth::Token(token) => Some(token.clone()),
            TsddAuth::Password { .. } => None,
        };
        let username = match &cfg.auth {
            TsddAuth::Password { username, .. } => username.as_str(),
            TsddAuth::Token(_) => "",
        };
        Ok(TsddConnector {
            api: Api::new(http, &cfg.base_url, source.name.clone()),
            source: source.name.clone(),
            auth: cfg.auth.clone(),
            device_flag: cfg.device_flag,
            device_id: device_id(source.name.as_str(), username),
            window: u64::from(cfg.page_size).clamp(1, MAX_WINDOW),
            token: RwLock::new(token),
            state: Mutex::new(RunState::default()),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RunState> {
        // a panic while holding the lock leaves plain maps behind: still usable
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn token(&self) -> Result<Secret, ConnectorError> {
        let token = self.token.read().unwrap_or_else(|e| e.into_inner()).clone();
        token.ok_or_else(|| {
            ConnectorError::Unauthorized(format!("tsdd source {}: not logged in", self.source))
        })
    }

    /// Whether this fetch starts a `--full` pass over the feed (once per run and channel).
    fn restarts(&self, feed: &'static str, channel: &Channel, full: bool) -> bool {
        full && !self.state().restarted.contains(&(feed, channel.clone()))
    }

    fn mark_restarted(&self, feed: &'static str, channel: &Channel, full: bool) {
        if full {
            self.state().restarted.insert((feed, channel.clone()));
        }
    }

    async fn fetch_messages(
        &self,
        request: &FetchRequest<'_>,
        channel: &Channel,
        restart: bool,
    ) -> Result<Fetched, ConnectorError> {
        let token = self.token()?;
        let after = if restart {
            0
        } else {
            parse_seq_cursor(request.cursor, &self.source)?
        };
        let remembered = self.state().targets.get(channel).copied();
        let target = match remembered {
            Some(target) => target,
            None => {
                let target = self.probe_newest(channel, &token).await?;
                self.state().targets.insert(channel.clone(), target);
                target
            }
        };
        if after >= target {
            // nothing to read: the stored cursor stays as it is, even on a --full pass
            let unchanged = request.cursor.cloned().unwrap_or_else(|| seq_cursor(after));
            return Ok(Fetched::empty(unchanged, true));
        }

        let window = Window::after(after, self.window);
        let body = json!({
            "channel_id": channel.id,
            "channel_type": channel.channel_type,
            "start_message_seq": window.start,
            "end_message_seq": window.end,
            "pull_mode": 1,
            "limit": window.width,
        });
        let response = self
            .api
            .post(api::CHANNEL_SYNC, Some(&channel.id), &token, &body)
            .await?;
        let records = page_array(&response, "messages").ok_or_else(|| ConnectorError::Decode {
            message: format!(
                "{}: messages is not an array",
                self.api.what(api::CHANNEL_SYNC, Some(&channel.id))
            ),
            raw: Some(response.clone()),
        })?;

        let names = self.state().names.clone();
        let mut fetched = Fetched::empty(seq_cursor(after), false);
        let mut seen = BTreeSet::new();
        for record in records {
            match map::map_message(&channel.id, record, &names) {
                Ok(mapped) => {
                    seen.insert(mapped.seq);
                    fetched.messages.push(mapped.observation);
                    fetched.quarantine.extend(mapped.quarantine);
                }
                Err(reason) => {
                    // kept in quarantine, so its seq is not also reported missing
                    if let Some(seq) = map::lenient_seq(record) {
                        seen.insert(seq);
                    }
                    fetched.quarantine.push(QuarantineRecord {
                        reason: format!("tsdd channel {}: {reason}", channel.id),
                        raw: record.clone(),
                    });
                }
            }
        }

        let outcome = window.outcome(target, &seen);
        let reason = if records.is_empty() && not_member_echo(&response, window.end) {
            NOT_MEMBER_REASON
        } else {
            GAP_REASON
        };
        fetched.gaps = outcome
            .gaps
            .into_iter()
            .map(|(from, to)| SeqGap {
                conversation_id: request.conversation.conversation_id.clone(),
                from_seq: from as i64,
                to_seq: to as i64,
                reason: reason.to_string(),
            })
            .collect();
        fetched.next_cursor = seq_cursor(outcome.next);
        fetched.done = outcome.next >= target;
        Ok(fetched)
    }

    /// The newest visible seq of a channel (0 when none): `{start:0, end:0, limit:1}`.
    async fn probe_newest(&self, channel: &Channel, token: &Secret) -> Result<u64, ConnectorError> {
        let body = json!({
            "channel_id": channel.id,
            "channel_type": channel.channel_type,
            "start_message_seq": 0,
            "end_message_seq": 0,
            "limit": 1,
            "pull_mode": 0,
        });
        let response = self
            .api
            .post(api::CHANNEL_SYNC, Some(&channel.id), token, &body)
            .await?;
        let records = page_array(&response, "messages").ok_or_else(|| ConnectorError::Decode {
            message: format!(
                "{}: messages is not an array",
                self.api.what(api::CHANNEL_SYNC, Some(&channel.id))
            ),
            raw: Some(response.clone()),
        })?;
        Ok(records
            .iter()
            .filter_map(map::lenient_seq)
            .max()
            .unwrap_or(0))
    }

    async fn fetch_extras(
        &self,
        request: &FetchRequest<'_>,
        channel: &Channel,
        restart: bool,
    ) -> Result<Fetched, ConnectorError> {
        let token = self.token()?;
        let (version, source) = match request.cursor {
            Some(cursor) if !restart => {
                let c: ExtrasCursor = parse_cursor(cursor, FEED_EXTRAS, &self.source)?;
                (c.version, c.source)
            }
            _ => (0, extras_source(self.source.as_str())),
        };
        // 0 would mean "the newest rows"; versions are far above 1 (§6.1)
        let body = json!({
            "channel_id": channel.id,
            "channel_type": channel.channel_type,
            "extra_version": version.max(1),
            "source": source,
            "limit": CHANGE_PAGE_LIMIT,
        });
        let response = self
            .api
            .post(api::EXTRA_SYNC, Some(&channel.id), &token, &body)
            .await?;
        let rows = self.rows(&response, api::EXTRA_SYNC, &channel.id)?;
        let mut fetched = Fetched::empty(Cursor(Value::Null), false);
        let mut next = version;
        for row in rows {
            match map::map_extra(&request.conversation.conversation_id, row) {
                Ok((observation, row_version)) => {
                    next = next.max(row_version);
                    fetched.messages.push(observation);
                }
                Err(reason) => fetched.quarantine.push(QuarantineRecord {
                    reason: format!("tsdd channel {}: {reason}", channel.id),
                    raw: row.clone(),
                }),
            }
        }
        fetched.done = rows.len() < CHANGE_PAGE_LIMIT || next <= version;
        fetched.next_cursor = Cursor(json!(ExtrasCursor {
            v: CURSOR_VERSION,
            version: next,
            source,
        }));
        Ok(fetched)
    }

    async fn fetch_reactions(
        &self,
        request: &FetchRequest<'_>,
        channel: &Channel,
        restart: bool,
    ) -> Result<Fetched, ConnectorError> {
        let token = self.token()?;
        let after = if restart {
            0
        } else {
            parse_seq_cursor(request.cursor, &self.source)?
        };
        // seq ≤ 0 would return the newest rows in descending order (§7.1)
        let body = json!({
            "channel_id": channel.id,
            "channel_type": channel.channel_type,
            "seq": after.max(1),
            "limit": CHANGE_PAGE_LIMIT,
        });
        let response = self
            .api
            .post(api::REACTION_SYNC, Some(&channel.id), &token, &body)
            .await?;
        let rows = self.rows(&response, api::REACTION_SYNC, &channel.id)?;
        let mut fetched = Fetched::empty(Cursor(Value::Null), false);
        let mut next = after;
        for row in rows {
            match map::map_reaction(&request.conversation.conversation_id, row) {
                Ok((observation, seq)) => {
                    next = next.max(u64::try_from(seq).unwrap_or(0));
                    fetched.reactions.push(observation);
                }
                Err(reason) => fetched.quarantine.push(QuarantineRecord {
                    reason: format!("tsdd channel {}: {reason}", channel.id),
                    raw: row.clone(),
                }),
            }
        }
        fetched.done = rows.len() < CHANGE_PAGE_LIMIT || next <= after;
        fetched.next_cursor = seq_cursor(next);
        Ok(fetched)
    }

    /// A response that must be a JSON array (`null` reads as empty).
    fn rows<'a>(
        &self,
        response: &'a Value,
        path: &str,
        channel: &str,
    ) -> Result<&'a [Value], ConnectorError> {
        match response {
            Value::Array(rows) => Ok(rows),
            Value::Null => Ok(&[]),
            other => Err(ConnectorError::Decode {
                message: format!(
                    "{}: response is not an array",
                    self.api.what(path, Some(channel))
                ),
                raw: Some(other.clone()),
            }),
        }
    }
}

#[async_trait]
impl Connector for TsddConnector {
    fn platform(&self) -> Platform {
        Platform::Tangsengdaodao
    }

    async fn login(&self) -> Result<(), ConnectorError> {
        let (username, password) = match &self.auth {
            TsddAuth::Token(token) => {
                *self.token.write().unwrap_or_else(|e| e.into_inner()) = Some(token.clone());
                return Ok(());
            }
            TsddAuth::Password { username, password } => (username, password),
        };
        let body = json!({
            "username": username,
            "password": password.expose(),
            "flag": self.device_flag,
            "device": {
                "device_id": self.device_id,
                "device_name": "chatvault",
                "device_model": "chatvault",
            },
        });
        let response = self.api.login(&body).await?;
        let Some(token) = response
            .get("token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        else {
            return Err(ConnectorError::Decode {
                message: format!(
                    "{}: the login response has no token",
                    self.api.what(api::LOGIN, None)
                ),
                raw: None,
            });
        };
        if let (Some(uid), Some(name)) = (
            response.get("uid").and_then(Value::as_str),
            response.get("name").and_then(Value::as_str),
        ) {
            if !uid.is_empty() && !name.is_empty() {
                self.state().names.insert(uid.to_string(), name.to_string());
            }
        }
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = Some(Secret::new(token));
        Ok(())
    }

    async fn discover(&self, request: DiscoverRequest<'_>) -> Result<Discovery, ConnectorError> {
        let known = request.known;
        {
            let mut state = self.state();
            state.targets.clear();
            state.restarted.clear();
        }
        let token = self.token()?;
        let body = json!({
            "version": 0,
            "msg_count": 1,
            "last_msg_seqs": last_msg_seqs(known),
            "device_uuid": "",
        });
        let response = self
            .api
            .post(api::CONVERSATION_SYNC, None, &token, &body)
            .await?;
        let known_by_id: HashMap<String, &ConversationObservation> = known
            .iter()
            .map(|k| (k.conversation.conversation_id.clone(), &k.conversation))
            .collect();
        let page = map::map_conversations(&response, &known_by_id).map_err(|reason| {
            ConnectorError::Decode {
                message: format!("{}: {reason}", self.api.what(api::CONVERSATION_SYNC, None)),
                raw: Some(response.clone()),
            }
        })?;

        let mut discovery = Discovery {
            quarantine: page.quarantine,
            ..Discovery::default()
        };
        let mut state = self.state();
        state.names.extend(page.user_names);
        for channel in page.channels {
            if let Some(seq) = channel.last_msg_seq {
                let key = Channel {
                    id: channel.observation.conversation_id.clone(),
                    channel_type: channel.channel_type,
                };
                state.targets.insert(key, seq);
            }
            discovery.conversations.push(channel.observation);
        }
        Ok(discovery)
    }

    fn feeds(&self, _conversation: &ConversationObservation) -> Vec<&'static str> {
        vec![FEED_MESSAGES, FEED_EXTRAS, FEED_REACTIONS]
    }

    async fn fetch(&self, request: FetchRequest<'_>) -> Result<Fetched, ConnectorError> {
        let channel = channel_of(request.conversation, &self.source)?;
        let feed = match request.feed {
            FEED_MESSAGES => FEED_MESSAGES,
            FEED_EXTRAS => FEED_EXTRAS,
            FEED_REACTIONS => FEED_REACTIONS,
            other => {
                return Err(ConnectorError::Permanent(format!(
                    "tsdd source {}: unknown feed {other}",
                    self.source
                )))
            }
        };
        let restart = self.restarts(feed, &channel, request.full);
        let fetched = match feed {
            FEED_MESSAGES => self.fetch_messages(&request, &channel, restart).await?,
            FEED_EXTRAS => self.fetch_extras(&request, &channel, restart).await?,
            _ => self.fetch_reactions(&request, &channel, restart).await?,
        };
        self.mark_restarted(feed, &channel, request.full);
        Ok(fetched)
    }
}

/// The TSDD channel of an archived conversation: its id, and the channel type recorded in
/// its metadata at discovery (falling back on the conversation type).
fn channel_of(
    conversation: &ConversationObservation,
    source: &SourceName,
) -> Result<Channel, ConnectorError> {
    let recorded = conversation
        .metadata
        .get("channel_type")
        .and_then(Value::as_u64)
        .and_then(|t| u8::try_from(t).ok());
    let channel_type = match (recorded, conversation.conversation_type) {
        (Some(t), _) => t,
        (None, ConversationType::Direct) => 1,
        (None, ConversationType::Group) => 2,
        (None, _) => {
            return Err(ConnectorError::Permanent(format!(
                "tsdd source {source}: conversation {} has no channel_type in its metadata",
                conversation.conversation_id
            )))
        }
    };
    if conversation.conversation_id.is_empty() {
        return Err(ConnectorError::Permanent(format!(
            "tsdd source {source}: a conversation has an empty id"
        )));
    }
    Ok(Channel {
        id: conversation.conversation_id.clone(),
        channel_type,
    })
}

/// `channelID:channelType:lastMsgSeq` joined by `|` (§3.1), for known person and group
/// channels that have a messages cursor. Ids that cannot be expressed are left out.
fn last_msg_seqs(known: &[KnownConversation]) -> String {
    let mut entries = Vec::new();
    for k in known {
        let Ok(channel) = channel_of(&k.conversation, &SourceName::new("")) else {
            continue;
        };
        if !matches!(channel.channel_type, 1 | 2) || channel.id.contains([':', '|']) {
            continue;
        }
        let Some(seq) = k
            .cursors
            .get(FEED_MESSAGES)
            .and_then(|c| serde_json::from_value::<SeqCursor>(c.0.clone()).ok())
            .filter(|c| c.v == CURSOR_VERSION)
            .map(|c| c.seq)
        else {
            continue;
        };
        entries.push(format!("{}:{}:{seq}", channel.id, channel.channel_type));
    }
    entries.join("|")
}

fn seq_cursor(seq: u64) -> Cursor {
    Cursor(json!(SeqCursor {
        v: CURSOR_VERSION,
        seq
    }))
}

fn parse_cursor<T: for<'de> Deserialize<'de>>(
    cursor: &Cursor,
    feed: &str,
    source: &SourceName,
) -> Result<T, ConnectorError> {
    let unrecognised = || {
        ConnectorError::Permanent(format!(
            "tsdd source {source}: unrecognised {feed} cursor {}; run with --full to start over",
            cursor.0
        ))
    };
    if cursor.0.get("v").and_then(Value::as_u64) != Some(u64::from(CURSOR_VERSION)) {
        return Err(unrecognised());
    }
    serde_json::from_value(cursor.0.clone()).map_err(|_| unrecognised())
}

/// A seq cursor's position; `None` is 0 (the start).
fn parse_seq_cursor(cursor: Option<&Cursor>, source: &SourceName) -> Result<u64, ConnectorError> {
    match cursor {
        None => Ok(0),
        Some(cursor) => Ok(parse_cursor::<SeqCursor>(cursor, "seq", source)?.seq),
    }
}

/// `messages` of a channel-sync response (`null` or absent reads as empty).
fn page_array<'a>(response: &'a Value, key: &str) -> Option<&'a [Value]> {
    match response.get(key) {
        None | Some(Value::Null) => response.is_object().then_some(&[][..]),
        Some(Value::Array(rows)) => Some(rows),
        Some(_) => None,
    }
}

/// A non-member's answer: no messages, both bounds echoing the requested end (§4.3).
fn not_member_echo(response: &Value, end: u64) -> bool {
    let bound = |key| response.get(key).and_then(Value::as_u64);
    bound("start_message_seq") == Some(end) && bound("end_message_seq") == Some(end)
}

/// A stable device id for this archive's logins: `chatvault-<hash of source and user>`.
fn device_id(source: &str, username: &str) -> String {
    let digest = Sha256::digest(format!("chatvault-device\0{source}\0{username}"));
    format!("chatvault-{}", &hex::encode(digest)[..16])
}

/// A new, never-shared extra-sync checkpoint name for this archive (§6.1).
fn extras_source(source: &str) -> String {
    let slug: String = source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!("chatvault-{slug}-{:016x}", rand::random::<u64>())
}

/// One forward channel-sync window `[start, end)` of `width` seqs after a cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Window {
    after: u64,
    start: u64,
    end: u64,
    width: u64,
}

#[derive(Debug, PartialEq, Eq)]
struct WindowOutcome {
    /// The new cursor: every seq ≤ `next` is covered.
    next: u64,
    /// Missing seq ranges, inclusive, merged.
    gaps: Vec<(u64, u64)>,
}

impl Window {
    fn after(after: u64, width: u64) -> Window {
        Window {
            after,
            start: after + 1,
            end: after + 1 + width,
            width,
        }
    }

    /// Where the cursor goes once the window's messages (`seen` seqs) are in hand: up to the
    /// target, or further when new messages above it arrived; every seq below that which
    /// upstream did not return is a gap. Short or empty pages are normal (§4.4).
    fn outcome(&self, target: u64, seen: &BTreeSet<u64>) -> WindowOutcome {
        let last = self.end - 1;
        let newest_seen = seen.range(self.start..=last).next_back().copied();
        let next = last
            .min(target)
            .max(newest_seen.unwrap_or(0))
            .max(self.after);
        let mut gaps = Vec::new();
        let mut expected = self.start;
        for &seq in seen.range(self.start..=next) {
            if seq > expected {
                gaps.push((expected, seq - 1));
            }
            expected = seq + 1;
        }
        if expected <= next {
            gaps.push((expected, next));
        }
        WindowOutcome { next, gaps }
    }
}

#[cfg(test)]
mod tests;
