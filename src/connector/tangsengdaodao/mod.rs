//! TangSengDaoDao (TSDD) connector: conversation discovery, message history by
//! `message_seq`, edits/recalls/deletes by `extra_version`, and reactions by reaction `seq`.
//! What it relies on about the server is written down, with links to the server's code, in
//! docs/upstreams/tangsengdaodao.md.
//!
//! It only fetches and maps: no database, no retries, no backoff. Pure mapping lives in
//! [`map`], HTTP and error classification in [`api`], the kept session token in
//! [`session`].
//!
//! Feeds and their cursors (all versioned, so a cursor format can change safely):
//! - `messages`: `{"v":1,"seq":N}`: every seq ≤ N has been covered, by a message or by a
//!   reported [`SeqGap`]. Paged in fixed windows `[N+1, N+1+W)` with `pull_mode: 1`, so
//!   progress never depends on upstream filtering, and the never-filled `more` is ignored.
//!   A window the server keeps failing on with a panic (HTTP 500) is narrowed to the seqs
//!   it cannot serve, which become gaps (see [`TsddConnector::narrow`]).
//! - `extras`: `{"v":1,"version":V,"source":S}`: rows with `extra_version ≤ V` have been
//!   seen. `S` is the server-side checkpoint name the next request is sent under; it
//!   alternates between two names of this archive's own (see [`next_extras_source`]).
//! - `reactions`: `{"v":1,"seq":N}`: reaction rows with `seq ≤ N` have been seen.
//!
//! A fetch depends on the request and its cursor only, however often the engine repeats
//! it: the per-run memory holds nothing a retry or a prefetched page could see differently
//! (each channel's paging target, from discovery or a probe, and user names for
//! `sender_name`).

mod api;
pub mod attachments;
mod map;
pub mod push;
mod recheck;
mod session;
pub mod wkproto;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::{Mutex, RwLock};

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use self::api::{Api, SeqWindowError};
use self::session::{Session, SessionFile};
use super::cursor;
use super::http::HttpClient;
use super::{
    Connector, ConnectorError, DiscoverRequest, Discovery, FetchRequest, Fetched,
    KnownConversation, Probe, Recheck, RecheckRequest,
};
use crate::config::{Secret, SourceConfig, TsddAuth, TsddConfig};
use crate::model::{
    ConversationObservation, ConversationType, Cursor, GapKind, Platform, QuarantineRecord, SeqGap,
    SourceName,
};

pub const FEED_MESSAGES: &str = "messages";
pub const FEED_EXTRAS: &str = "extras";
pub const FEED_REACTIONS: &str = "reactions";

/// WuKongIM's `conversation.userMaxCount`: conversation sync lists at most this many.
const CONVERSATION_CAP: usize = 1000;
/// Rows per page of extra and reaction sync (the reaction endpoint's cap).
const CHANGE_PAGE_LIMIT: usize = 1000;
/// WuKongIM caps channel-sync `limit` at 10000; a wider window would be truncated silently.
const MAX_WINDOW: u64 = 10_000;
const CURSOR_VERSION: u32 = 1;
const GAP_REASON: &str = "not returned by upstream (cleared history, device filter or deleted)";
const NOT_MEMBER_REASON: &str =
    "not returned by upstream: the account is not a current member of the group";
const PANIC_REASON: &str = "upstream cannot serve this seq: channel sync answers HTTP 500 with \
     an empty body (a panic in the server's handler, e.g. a reply whose message_id is not a \
     string); sync --full tries it again";
/// From this retry of the same window on (the engine's `attempt`), a window the server keeps
/// failing on with a panic is narrowed. Earlier failures are retried whole: a 500 can be a
/// passing fault, and a first failure never skips anything.
const NARROW_FROM_ATTEMPT: u32 = 2;
/// Requests one narrowing may make; what it has not resolved by then is read next time.
const MAX_NARROWING_REQUESTS: u32 = 64;
/// A window no channel has: answered empty by a server that works at all.
const CONTROL_SEQ: u64 = u32::MAX as u64 - 1;
/// The second name of an extra-sync checkpoint pair.
const EXTRAS_ALT_SUFFIX: &str = "-b";

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

/// Where message paging of a channel stops in this run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Target {
    seq: u64,
    /// Checked against the newest message the server returns (a probe) in this run; an
    /// unchecked target (conversation sync's `last_msg_seq`) is checked at the first window
    /// that comes back empty, so an absurd one cannot page empty windows for ever.
    checked: bool,
}

#[derive(Default)]
struct RunState {
    /// The paging target per channel, from discovery or a probe.
    targets: HashMap<Channel, Target>,
    /// `uid -> name`, for `sender_name`.
    names: HashMap<String, String>,
}

pub struct TsddConnector {
    api: Api,
    source: SourceName,
    auth: TsddAuth,
    device_flag: u8,
    device_id: String,
    /// Seqs per channel-sync window (`page_size`).
    window_width: u64,
    token: RwLock<Option<Secret>>,
    /// The account's own uid, once a login or the kept session told it (the push channel
    /// logs in to WuKongIM with it).
    own_uid: RwLock<Option<String>>,
    /// Heartbeat timing of the push channel.
    push_timing: push::Timing,
    /// Where a password login's token is kept between runs; `None`: this process only.
    session: Option<SessionFile>,
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
            .field("session_file", &self.session.as_ref().map(|s| s.path()))
            .field("device_flag", &self.device_flag)
            .field("device_id", &self.device_id)
            .field("window_width", &self.window_width)
            .finish()
    }
}

/// One page of a change feed, mapped.
struct ChangePage<T> {
    observations: Vec<T>,
    quarantine: Vec<QuarantineRecord>,
    /// The highest feed position (`extra_version`, reaction `seq`) among the mapped rows.
    newest: Option<i64>,
    /// Fewer rows than asked for: the feed has nothing more now.
    last: bool,
}

/// What one channel-sync window yielded.
#[derive(Debug, Default)]
struct SeqWindowRead {
    records: Vec<Value>,
    /// Seqs the server cannot serve (it panics on them).
    unreadable: BTreeSet<u64>,
    /// The window was read up to here (exclusive): less than asked when narrowing ran out of
    /// requests.
    end: u64,
    /// The answer of a group the account is no longer a member of.
    not_member: bool,
}

impl SeqWindowRead {
    /// Whether the newest seq read (a record or an unreadable seq) falls short of the end of
    /// the window that starts at `start`.
    fn ends_short(&self, start: u64) -> bool {
        let newest = self
            .records
            .iter()
            .filter_map(map::lenient_seq)
            .chain(self.unreadable.iter().copied())
            .filter(|seq| (start..self.end).contains(seq))
            .max();
        newest.is_none_or(|seq| seq + 1 < self.end)
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
            window_width: u64::from(cfg.page_size).clamp(1, MAX_WINDOW),
            token: RwLock::new(token),
            own_uid: RwLock::new(None),
            push_timing: push::Timing::default(),
            session: None,
            state: Mutex::new(RunState::default()),
        })
    }

    /// Keep a password login's token in `dir` (`<dir>/<source>.token`, mode 0600) and reuse
    /// it in later runs until the server refuses it.
    pub fn with_session_dir(mut self, dir: &Path) -> Self {
        if let TsddAuth::Password { username, .. } = &self.auth {
            self.session = Some(SessionFile::new(
                dir,
                self.source.as_str(),
                self.api.base_url(),
                username,
            ));
        }
        self
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

    fn set_token(&self, token: Secret) {
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = Some(token);
    }

    fn set_own_uid(&self, uid: &str) {
        if !uid.is_empty() {
            *self.own_uid.write().unwrap_or_else(|e| e.into_inner()) = Some(uid.to_string());
        }
    }

    fn learn_name(&self, uid: &str, name: &str) {
        if !uid.is_empty() && !name.is_empty() {
            self.state().names.insert(uid.to_string(), name.to_string());
        }
    }

    async fn fetch_messages(
        &self,
        request: &FetchRequest<'_>,
        channel: &Channel,
    ) -> Result<Fetched, ConnectorError> {
        let token = self.token()?;
        let after = parse_seq_cursor(request.cursor, request.feed, &self.source)?;
        let Some((window, read, target)) = self
            .read_after(channel, &token, after, request.attempt)
            .await?
        else {
            // nothing to read: the stored cursor stays as it is
            let cursor = request.cursor.cloned().unwrap_or_else(|| seq_cursor(after));
            return Ok(Fetched::empty(cursor, true));
        };
        let names = self.state().names.clone();
        let mut fetched = Fetched::empty(seq_cursor(after), false);
        let seen = map_records(&channel.id, &read, &names, &mut fetched);
        let outcome = window.outcome(target.seq, &seen);
        fetched.gaps = window_gaps(
            &request.conversation.conversation_id,
            &window,
            &read,
            &outcome,
        );
        fetched.next_cursor = seq_cursor(outcome.next);
        fetched.done = outcome.next >= target.seq;
        Ok(fetched)
    }

    /// Read the window after `after`: the window as far as it was read, what it yielded,
    /// and the target paging goes to. `None` when the channel has nothing after `after`.
    async fn read_after(
        &self,
        channel: &Channel,
        token: &Secret,
        after: u64,
        attempt: u32,
    ) -> Result<Option<(SeqWindow, SeqWindowRead, Target)>, ConnectorError> {
        let mut target = self.target(channel, token, after, attempt).await?;
        if after >= target.seq {
            return Ok(None);
        }
        let window = SeqWindow::after(after, self.window_width);
        let read = self.read_window(channel, token, window, attempt).await?;
        if read.ends_short(window.start) && !target.checked && target.seq >= read.end {
            // The window ends early although the unchecked target lies beyond it: the newest
            // message decides whether this is hidden history (gaps) or the end of the
            // channel, so an absurd target cannot page empty windows for ever.
            target = self
                .check_target(channel, token, target, after, attempt)
                .await?;
            if after >= target.seq {
                return Ok(None);
            }
        }
        let window = SeqWindow {
            end: read.end,
            width: read.end - window.start,
            ..window
        };
        Ok(Some((window, read, target)))
    }

    /// Where paging of `channel` stops in this run: remembered from discovery or an earlier
    /// page, else the newest message the server returns.
    async fn target(
        &self,
        channel: &Channel,
        token: &Secret,
        after: u64,
        attempt: u32,
    ) -> Result<Target, ConnectorError> {
        if let Some(target) = self.state().targets.get(channel).copied() {
            return Ok(target);
        }
        let target = match self.probe_newest(channel, token).await {
            Ok(newest) => Target {
                seq: newest,
                checked: true,
            },
            Err(SeqWindowError::Panic) if attempt >= NARROW_FROM_ATTEMPT => {
                // The newest message itself cannot be served. Read one window past the
                // cursor in this run (narrowing records what cannot be read), no further.
                warn!(channel = %channel.id, "the newest message of this channel cannot be read (HTTP 500); reading one window");
                Target {
                    seq: after + self.window_width,
                    checked: true,
                }
            }
            Err(SeqWindowError::Panic) => return Err(self.newest_unreadable(channel)),
            Err(SeqWindowError::Other(e)) => return Err(e),
        };
        self.state().targets.insert(channel.clone(), target);
        Ok(target)
    }

    /// Check an unchecked target against the newest message: a target above it is cut down
    /// to it (never below `after`), so empty windows past the end are not paged through.
    async fn check_target(
        &self,
        channel: &Channel,
        token: &Secret,
        target: Target,
        after: u64,
        attempt: u32,
    ) -> Result<Target, ConnectorError> {
        let checked = match self.probe_newest(channel, token).await {
            Ok(newest) => {
                let seq = if newest <= after {
                    after
                } else {
                    target.seq.min(newest)
                };
                if seq < target.seq {
                    info!(channel = %channel.id, claimed = target.seq, newest, "the conversation list claims a newer message than the channel returns; paging to the newest one");
                }
                Target { seq, checked: true }
            }
            Err(SeqWindowError::Panic) if attempt >= NARROW_FROM_ATTEMPT => {
                return Err(ConnectorError::Permanent(format!(
                    "{}: the window after seq {after} is empty and the newest message cannot be \
                     read (HTTP 500), so where the channel ends is unknown; nothing was skipped",
                    self.api.what(api::CHANNEL_SYNC, Some(&channel.id))
                )))
            }
            Err(SeqWindowError::Panic) => return Err(self.newest_unreadable(channel)),
            Err(SeqWindowError::Other(e)) => return Err(e),
        };
        self.state().targets.insert(channel.clone(), checked);
        Ok(checked)
    }

    /// The error of a first failure to read the newest message: the handler panicked.
    fn newest_unreadable(&self, channel: &Channel) -> ConnectorError {
        ConnectorError::Transient(format!(
            "{}: HTTP 500 with an empty body for the newest message (a panic in the server's handler)",
            self.api.what(api::CHANNEL_SYNC, Some(&channel.id))
        ))
    }

    /// The newest visible seq of a channel (0 when none): `{start:0, end:0, limit:1}`.
    async fn probe_newest(&self, channel: &Channel, token: &Secret) -> Result<u64, SeqWindowError> {
        let body = json!({
            "channel_id": channel.id,
            "channel_type": channel.channel_type,
            "start_message_seq": 0,
            "end_message_seq": 0,
            "limit": 1,
            "pull_mode": 0,
        });
        let response = self.api.post_window(&channel.id, token, &body).await?;
        let records = self.messages_of(&response, channel)?;
        Ok(records
            .iter()
            .filter_map(map::lenient_seq)
            .max()
            .unwrap_or(0))
    }

    /// `messages` of a channel-sync answer.
    fn messages_of<'a>(
        &self,
        response: &'a Value,
        channel: &Channel,
    ) -> Result<&'a [Value], ConnectorError> {
        page_array(response, "messages").ok_or_else(|| ConnectorError::Decode {
            message: format!(
                "{}: messages is not an array",
                self.api.what(api::CHANNEL_SYNC, Some(&channel.id))
            ),
            raw: Some(response.clone()),
        })
    }

    /// One forward window `[start, end)`: the request of every window and of narrowing.
    async fn request_window(
        &self,
        channel: &Channel,
        token: &Secret,
        start: u64,
        end: u64,
    ) -> Result<Value, SeqWindowError> {
        let body = json!({
            "channel_id": channel.id,
            "channel_type": channel.channel_type,
            "start_message_seq": start,
            "end_message_seq": end,
            "pull_mode": 1,
            "limit": end - start,
        });
        self.api.post_window(&channel.id, token, &body).await
    }

    /// Read a window. A panic answer is a transient error on the first tries of the same
    /// window; from [`NARROW_FROM_ATTEMPT`] on, the window is narrowed.
    async fn read_window(
        &self,
        channel: &Channel,
        token: &Secret,
        window: SeqWindow,
        attempt: u32,
    ) -> Result<SeqWindowRead, ConnectorError> {
        match self
            .request_window(channel, token, window.start, window.end)
            .await
        {
            Ok(response) => {
                let records = self.messages_of(&response, channel)?.to_vec();
                let not_member = records.is_empty() && not_member_echo(&response, window.end);
                Ok(SeqWindowRead {
                    records,
                    unreadable: BTreeSet::new(),
                    end: window.end,
                    not_member,
                })
            }
            Err(SeqWindowError::Panic) if attempt >= NARROW_FROM_ATTEMPT => {
                self.narrow(channel, token, window).await
            }
            Err(SeqWindowError::Panic) => Err(ConnectorError::Transient(format!(
                "{}: HTTP 500 with an empty body for seqs {}-{} (a panic in the server's handler); \
                 a window that keeps failing is narrowed to the seqs it cannot serve",
                self.api.what(api::CHANNEL_SYNC, Some(&channel.id)),
                window.start,
                window.end - 1
            ))),
            Err(SeqWindowError::Other(e)) => Err(e),
        }
    }

    /// Read a window the server keeps answering with a panic, in halves, lowest seqs first,
    /// down to the single seqs it cannot serve. A single seq counts as unreadable only when
    /// it fails twice and the server answers other requests of this channel (or, failing
    /// that, a control request for a window no channel has): a server that fails on
    /// everything makes this a transient error, never a gap. At most
    /// [`MAX_NARROWING_REQUESTS`] requests; the read then ends where it got to, and the next
    /// page goes on from there.
    async fn narrow(
        &self,
        channel: &Channel,
        token: &Secret,
        window: SeqWindow,
    ) -> Result<SeqWindowRead, ConnectorError> {
        let mut read = SeqWindowRead {
            end: window.end,
            ..SeqWindowRead::default()
        };
        // unresolved ranges, the lowest on top
        let mut stack = vec![(window.start, window.end)];
        let mut requests = 0u32;
        let mut answered = false;
        while let Some((lo, hi)) = stack.pop() {
            if requests >= MAX_NARROWING_REQUESTS {
                stack.push((lo, hi));
                break;
            }
            requests += 1;
            let mut answer = self.request_window(channel, token, lo, hi).await;
            if hi - lo == 1 && matches!(answer, Err(SeqWindowError::Panic)) {
                requests += 1;
                answer = self.request_window(channel, token, lo, hi).await;
            }
            match answer {
                Ok(response) => {
                    answered = true;
                    read.records
                        .extend(self.messages_of(&response, channel)?.iter().cloned());
                }
                Err(SeqWindowError::Panic) if hi - lo == 1 => {
                    read.unreadable.insert(lo);
                }
                Err(SeqWindowError::Panic) => {
                    let mid = lo + (hi - lo) / 2;
                    stack.push((mid, hi));
                    stack.push((lo, mid));
                }
                Err(SeqWindowError::Other(e)) => return Err(e),
            }
        }
        read.end = stack.last().map_or(window.end, |&(lo, _)| lo);
        if read.end == window.start {
            return Err(ConnectorError::Transient(format!(
                "{}: could not narrow the failing window {}-{} in {MAX_NARROWING_REQUESTS} requests",
                self.api.what(api::CHANNEL_SYNC, Some(&channel.id)),
                window.start,
                window.end - 1
            )));
        }
        if !read.unreadable.is_empty() && !answered {
            let control = self
                .request_window(channel, token, CONTROL_SEQ, CONTROL_SEQ + 1)
                .await;
            if control.is_err() {
                return Err(ConnectorError::Transient(format!(
                    "{}: every request for this channel fails (HTTP 500); nothing was skipped",
                    self.api.what(api::CHANNEL_SYNC, Some(&channel.id))
                )));
            }
        }
        if !read.unreadable.is_empty() {
            warn!(channel = %channel.id, seqs = ?read.unreadable, "the server cannot serve these seqs (HTTP 500); recorded as gaps");
        }
        Ok(read)
    }

    async fn fetch_extras(
        &self,
        request: &FetchRequest<'_>,
        channel: &Channel,
    ) -> Result<Fetched, ConnectorError> {
        let token = self.token()?;
        let (version, source) = match request.cursor {
            Some(cursor) => {
                let c: ExtrasCursor = parse_cursor(cursor, FEED_EXTRAS, &self.source)?;
                (c.version, c.source)
            }
            None => (0, extras_source(self.source.as_str())),
        };
        // 0 would mean "the newest rows"; versions are far above 1 (microsecond clock)
        let from = json!({"extra_version": version.max(1), "source": source});
        let conversation = &request.conversation.conversation_id;
        let page = self
            .change_page(channel, &token, api::EXTRA_SYNC, from, |row| {
                map::map_extra(conversation, row)
            })
            .await?;
        let next = page.newest.map_or(version, |n| n.max(version));
        let mut fetched = Fetched::empty(Cursor(Value::Null), page.last || next <= version);
        fetched.messages = page.observations;
        fetched.quarantine = page.quarantine;
        let source = if next > version {
            next_extras_source(&source)
        } else {
            source
        };
        fetched.next_cursor = cursor::encode(&ExtrasCursor {
            v: CURSOR_VERSION,
            version: next,
            source,
        });
        Ok(fetched)
    }

    async fn fetch_reactions(
        &self,
        request: &FetchRequest<'_>,
        channel: &Channel,
    ) -> Result<Fetched, ConnectorError> {
        let token = self.token()?;
        let after = parse_seq_cursor(request.cursor, request.feed, &self.source)?;
        // seq ≤ 0 would return the newest rows in descending order
        let from = json!({"seq": after.max(1)});
        let conversation = &request.conversation.conversation_id;
        let page = self
            .change_page(channel, &token, api::REACTION_SYNC, from, |row| {
                map::map_reaction(conversation, row)
            })
            .await?;
        let newest = page.newest.map_or(0, |n| u64::try_from(n).unwrap_or(0));
        let next = after.max(newest);
        let mut fetched = Fetched::empty(seq_cursor(next), page.last || next <= after);
        fetched.reactions = page.observations;
        fetched.quarantine = page.quarantine;
        Ok(fetched)
    }

    /// One page of a change feed (extra or reaction sync) of `channel` from the position
    /// `from` (an object of the feed's own fields): posted to `path`, its answer must be a
    /// JSON array (`null` reads as empty), and each row is mapped by `map` to an
    /// observation and its position in the feed, or quarantined with the reason.
    async fn change_page<T>(
        &self,
        channel: &Channel,
        token: &Secret,
        path: &str,
        from: Value,
        map: impl Fn(&Value) -> Result<(T, i64), String>,
    ) -> Result<ChangePage<T>, ConnectorError> {
        let mut body = from;
        body["channel_id"] = json!(channel.id);
        body["channel_type"] = json!(channel.channel_type);
        body["limit"] = json!(CHANGE_PAGE_LIMIT);
        let response = self.api.post(path, Some(&channel.id), token, &body).await?;
        let rows: &[Value] = match &response {
            Value::Array(rows) => rows,
            Value::Null => &[],
            other => {
                return Err(ConnectorError::Decode {
                    message: format!(
                        "{}: response is not an array",
                        self.api.what(path, Some(&channel.id))
                    ),
                    raw: Some(other.clone()),
                })
            }
        };
        let mut page = ChangePage {
            observations: Vec::new(),
            quarantine: Vec::new(),
            newest: None,
            last: rows.len() < CHANGE_PAGE_LIMIT,
        };
        for row in rows {
            match map(row) {
                Ok((observation, position)) => {
                    page.newest = Some(page.newest.map_or(position, |n| n.max(position)));
                    page.observations.push(observation);
                }
                Err(reason) => page.quarantine.push(QuarantineRecord {
                    reason: format!("tsdd channel {}: {reason}", channel.id),
                    raw: row.clone(),
                }),
            }
        }
        Ok(page)
    }

    /// `POST /v1/user/login` with the configured password; keeps the token.
    async fn password_login(
        &self,
        username: &str,
        password: &Secret,
    ) -> Result<(), ConnectorError> {
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
        let text = |key| {
            response
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let session = Session {
            token: Secret::new(token),
            uid: text("uid"),
            name: text("name"),
        };
        self.set_own_uid(&session.uid);
        self.learn_name(&session.uid, &session.name);
        self.set_token(session.token.clone());
        if let Some(file) = &self.session {
            match file.store(&session) {
                Ok(()) => {
                    info!(path = %file.path().display(), "logged in; session token kept for later runs")
                }
                Err(e) => {
                    warn!(path = %file.path().display(), error = %e, "logged in, but the session token could not be kept; the next run logs in again")
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Connector for TsddConnector {
    fn platform(&self) -> Platform {
        Platform::Tangsengdaodao
    }

    /// The conversation list (what every run reads first) with the configured token or the
    /// kept session; without either, a password login only when `login` allows it.
    async fn probe(&self, login: bool) -> Result<Probe, ConnectorError> {
        let how = match &self.auth {
            TsddAuth::Token(token) => {
                self.set_token(token.clone());
                "the configured token"
            }
            TsddAuth::Password { .. } => match self.session.as_ref().and_then(SessionFile::load) {
                Some(session) => {
                    self.set_own_uid(&session.uid);
                    self.set_token(session.token);
                    "the kept session"
                }
                None if login => {
                    self.login().await?;
                    "a new login (its session is kept)"
                }
                None => {
                    let place = self.session.as_ref().map_or_else(
                        || "no session is kept".to_string(),
                        |f| format!("no session kept in {}", f.path().display()),
                    );
                    return Ok(Probe::LoginNeeded(place));
                }
            },
        };
        let token = self.token()?;
        let body = json!({"version": 0, "msg_count": 1, "last_msg_seqs": "", "device_uuid": ""});
        self.api
            .post(api::CONVERSATION_SYNC, None, &token, &body)
            .await?;
        Ok(Probe::Ok(format!("conversation list read with {how}")))
    }

    /// Log in, or take up the kept session. Asked again after the server answered 401, it
    /// forgets the refused token and logs in with the password (once per run: the engine
    /// asks only once).
    async fn login(&self) -> Result<(), ConnectorError> {
        let (username, password) = match &self.auth {
            TsddAuth::Token(token) => {
                self.set_token(token.clone());
                return Ok(());
            }
            TsddAuth::Password { username, password } => (username, password),
        };
        let refused = self
            .token
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if let Some(file) = &self.session {
            if refused {
                if let Err(e) = file.remove() {
                    warn!(path = %file.path().display(), error = %e, "could not remove the refused session token");
                }
            } else if let Some(session) = file.load() {
                self.set_own_uid(&session.uid);
                self.learn_name(&session.uid, &session.name);
                self.set_token(session.token);
                return Ok(());
            }
        }
        self.password_login(username, password).await
    }

    async fn discover(&self, request: DiscoverRequest<'_>) -> Result<Discovery, ConnectorError> {
        let known = request.known;
        self.state().targets.clear();
        let token = self.token()?;
        let listed = listed_seqs(known);
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
        // A channel listed with the seq the archive holds and not listed back has nothing
        // newer: its paging target is that seq, so no channel sync is asked for it. Only
        // while the archive lists fewer channels than the server's conversation cap (WuKongIM
        // keeps at most that many per user): past it, a channel may be missing because it
        // was cut, and its newest message decides (a probe) as for any unlisted channel.
        if listed.len() < CONVERSATION_CAP {
            for (channel, seq) in listed {
                state.targets.insert(
                    channel,
                    Target {
                        seq,
                        checked: false,
                    },
                );
            }
        }
        for channel in page.channels {
            if let Some(seq) = channel.last_msg_seq {
                let key = Channel {
                    id: channel.observation.conversation_id.clone(),
                    channel_type: channel.channel_type,
                };
                state.targets.insert(
                    key,
                    Target {
                        seq,
                        checked: false,
                    },
                );
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
        match request.feed {
            FEED_MESSAGES => self.fetch_messages(&request, &channel).await,
            FEED_EXTRAS => self.fetch_extras(&request, &channel).await,
            FEED_REACTIONS => self.fetch_reactions(&request, &channel).await,
            other => Err(ConnectorError::Permanent(format!(
                "tsdd source {}: unknown feed {other}",
                self.source
            ))),
        }
    }

    async fn recheck(&self, request: RecheckRequest<'_>) -> Result<Recheck, ConnectorError> {
        let channel = channel_of(request.conversation, &self.source)?;
        self.recheck_channel(request, &channel).await
    }

    fn attachments(
        &self,
        content: &crate::model::Content,
    ) -> Vec<crate::attachments::AttachmentRef> {
        attachments::attachments(content)
    }

    /// WuKongIM's push channel ([`push`]): a signal per new message, edit/recall/delete
    /// command and reaction command, until the connection drops.
    async fn listen(&self, sink: crate::push::PushSink) -> Result<(), ConnectorError> {
        self.listen_push(sink).await
    }

    /// A payload path resolved under `{base_url}/v1/` (or an absolute URL as it is), asked
    /// for without the session token: the preview route is public ([`attachments`]).
    async fn media_request(
        &self,
        reference: &crate::attachments::AttachmentRef,
    ) -> Result<crate::attachments::MediaRequest, ConnectorError> {
        attachments::media_request(self.api.base_url(), reference).map_err(|why| {
            ConnectorError::Permanent(format!(
                "tsdd source {}: attachment {}: {why}",
                self.source,
                crate::attachments::shown_url(&reference.url)
            ))
        })
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

/// `last_msg_seqs` of conversation sync: see [`listed_seqs`].
fn last_msg_seqs(known: &[KnownConversation]) -> String {
    listed_seqs(known)
        .iter()
        .map(|(c, seq)| format!("{}:{}:{seq}", c.id, c.channel_type))
        .collect::<Vec<_>>()
        .join("|")
}

/// The channels conversation sync is told the archived seq of, in `last_msg_seqs`:
/// `channelID:channelType:lastMsgSeq` joined by `|` (docs/upstreams/tangsengdaodao.md,
/// "Conversation sync"), for known person and group channels that have a messages cursor.
/// Ids that cannot be expressed are left out.
fn listed_seqs(known: &[KnownConversation]) -> Vec<(Channel, u64)> {
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
            .and_then(|c| cursor::peek::<SeqCursor>(c, &[CURSOR_VERSION]))
            .map(|c| c.seq)
        else {
            continue;
        };
        entries.push((channel, seq));
    }
    entries
}

fn seq_cursor(seq: u64) -> Cursor {
    cursor::encode(&SeqCursor {
        v: CURSOR_VERSION,
        seq,
    })
}

/// A seq cursor's position; `None` is 0 (the start).
fn parse_seq_cursor(
    cursor: Option<&Cursor>,
    feed: &str,
    source: &SourceName,
) -> Result<u64, ConnectorError> {
    match cursor {
        None => Ok(0),
        Some(cursor) => Ok(parse_cursor::<SeqCursor>(cursor, feed, source)?.seq),
    }
}

fn parse_cursor<T: DeserializeOwned>(
    stored: &Cursor,
    feed: &str,
    source: &SourceName,
) -> Result<T, ConnectorError> {
    cursor::decode(
        stored,
        &[CURSOR_VERSION],
        &format!("tsdd source {source}: {feed} cursor"),
    )
}

/// `messages` of a channel-sync response (`null` or absent reads as empty).
fn page_array<'a>(response: &'a Value, key: &str) -> Option<&'a [Value]> {
    match response.get(key) {
        None | Some(Value::Null) => response.is_object().then_some(&[][..]),
        Some(Value::Array(rows)) => Some(rows),
        Some(_) => None,
    }
}

/// A non-member's answer: no messages, both bounds echoing the requested end
/// (docs/upstreams/tangsengdaodao.md, "Channel sync").
fn not_member_echo(response: &Value, end: u64) -> bool {
    let bound = |key| response.get(key).and_then(Value::as_u64);
    bound("start_message_seq") == Some(end) && bound("end_message_seq") == Some(end)
}

/// A stable device id for this archive's logins: `chatvault-<hash of source and user>`.
fn device_id(source: &str, username: &str) -> String {
    let digest = Sha256::digest(format!("chatvault-device\0{source}\0{username}"));
    format!("chatvault-{}", &hex::encode(digest)[..16])
}

/// A new, never-shared extra-sync checkpoint name for this archive, for a first or `--full`
/// pass (docs/upstreams/tangsengdaodao.md, "Extra sync").
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

/// The checkpoint name the request after a page is sent under: the other name of the pair.
///
/// The server remembers, per checkpoint name and channel, the highest `extra_version` it
/// was asked for, and answers from there even when a lower one is asked. The engine asks for
/// the next page while the current one is being written, so that value can run ahead of
/// the cursor the archive holds when the write then fails. Sending each page under the
/// other name than the one before keeps every name's remembered value at or below the
/// cursors written with it: the request from a held cursor is answered from that cursor.
fn next_extras_source(source: &str) -> String {
    match source.strip_suffix(EXTRAS_ALT_SUFFIX) {
        Some(base) => base.to_string(),
        None => format!("{source}{EXTRAS_ALT_SUFFIX}"),
    }
}

/// Map a window's records into `fetched` (a record that cannot be mapped is quarantined).
/// Returns the seqs accounted for: mapped, quarantined or unreadable, so that none of them
/// is also reported missing.
fn map_records(
    channel_id: &str,
    read: &SeqWindowRead,
    names: &HashMap<String, String>,
    fetched: &mut Fetched,
) -> BTreeSet<u64> {
    let mut seen: BTreeSet<u64> = read.unreadable.clone();
    for record in &read.records {
        match map::map_message(channel_id, record, names) {
            Ok(mapped) => {
                seen.insert(mapped.seq);
                fetched.messages.push(mapped.observation);
                fetched.quarantine.extend(mapped.quarantine);
            }
            Err(reason) => {
                if let Some(seq) = map::lenient_seq(record) {
                    seen.insert(seq);
                }
                fetched.quarantine.push(QuarantineRecord {
                    reason: format!("tsdd channel {channel_id}: {reason}"),
                    raw: record.clone(),
                });
            }
        }
    }
    seen
}

/// The gaps a window read leaves at or below the new cursor: the seqs upstream did not
/// return (hidden history, or a group the account is no longer in) and the seqs it cannot
/// serve.
fn window_gaps(
    conversation_id: &str,
    window: &SeqWindow,
    read: &SeqWindowRead,
    outcome: &SeqWindowOutcome,
) -> Vec<SeqGap> {
    let gap = |(from, to): (u64, u64), (reason, kind): (&str, GapKind)| SeqGap {
        conversation_id: conversation_id.to_string(),
        from_seq: from as i64,
        to_seq: to as i64,
        reason: reason.to_string(),
        kind,
    };
    let missing = if read.not_member {
        (NOT_MEMBER_REASON, GapKind::NotMember)
    } else {
        (GAP_REASON, GapKind::NotReturned)
    };
    let unreadable: Vec<u64> = read
        .unreadable
        .range(window.start..=outcome.next)
        .copied()
        .collect();
    outcome
        .gaps
        .iter()
        .map(|&g| gap(g, missing))
        .chain(
            merge_runs(&unreadable)
                .into_iter()
                .map(|g| gap(g, (PANIC_REASON, GapKind::Unreadable))),
        )
        .collect()
}

/// Ascending seqs as inclusive runs of consecutive values.
fn merge_runs(seqs: &[u64]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &seq in seqs {
        match runs.last_mut() {
            Some((_, to)) if *to + 1 == seq => *to = seq,
            _ => runs.push((seq, seq)),
        }
    }
    runs
}

/// One forward channel-sync window `[start, end)` of `width` seqs after a cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SeqWindow {
    after: u64,
    start: u64,
    end: u64,
    width: u64,
}

#[derive(Debug, PartialEq, Eq)]
struct SeqWindowOutcome {
    /// The new cursor: every seq ≤ `next` is covered.
    next: u64,
    /// Missing seq ranges, inclusive, merged.
    gaps: Vec<(u64, u64)>,
}

impl SeqWindow {
    fn after(after: u64, width: u64) -> SeqWindow {
        SeqWindow {
            after,
            start: after + 1,
            end: after + 1 + width,
            width,
        }
    }

    /// Where the cursor goes once the window's messages (`seen` seqs) are in hand: up to the
    /// target, or further when new messages above it arrived; every seq below that which
    /// upstream did not return is a gap. Short or empty pages are normal (hidden history).
    fn outcome(&self, target: u64, seen: &BTreeSet<u64>) -> SeqWindowOutcome {
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
        SeqWindowOutcome { next, gaps }
    }
}

#[cfg(test)]
mod tests;
