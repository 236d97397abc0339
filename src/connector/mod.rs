//! Connectors: one module per platform, wired in the single [`build`] match.
//!
//! A connector only fetches and maps. It never touches PostgreSQL, the index or the
//! schedule, and it never retries by itself: it classifies each failure as a
//! [`ConnectorError`] and the sync engine decides what to do (ARCHITECTURE.md, "Data
//! flow").

mod cursor;
pub mod http;
pub mod limits;
pub mod tangsengdaodao;
pub mod yunhu;
pub mod yunxin;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::attachments::{AttachmentRef, MediaRequest};
use crate::config::{PlatformConfig, SourceConfig};
use crate::model::{
    Content, ConversationObservation, Cursor, MessageObservation, Platform, QuarantineRecord,
    ReactionObservation, SeqGap, WindowObservation,
};

/// How a connector failed, so that the engine can choose: log in again, wait, retry,
/// quarantine, or give up on one conversation.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// Credentials missing, wrong or expired. The engine logs in again once, then fails.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Upstream asked us to slow down. The engine waits and repeats the same request.
    #[error("rate limited by upstream")]
    RateLimited { retry_after: Option<Duration> },
    /// A timeout, a dropped connection, a 5xx: worth retrying with backoff.
    #[error("transient: {0}")]
    Transient(String),
    /// Upstream refused the request for good (bad parameters, gone, forbidden).
    #[error("{0}")]
    Permanent(String),
    /// The response could not be decoded. `raw` keeps what was received for quarantine.
    #[error("could not decode response: {message}")]
    Decode { message: String, raw: Option<Value> },
}

#[cfg(test)]
impl ConnectorError {
    /// Whether repeating the same request may succeed (for tests of a classification; the
    /// engine matches the variants itself).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ConnectorError::RateLimited { .. } | ConnectorError::Transient(_)
        )
    }
}

/// A conversation the archive already knows, with the cursors of its feeds.
#[derive(Clone, Debug)]
pub struct KnownConversation {
    pub conversation: ConversationObservation,
    /// Cursor per feed name (the same names [`Connector::feeds`] returns).
    pub cursors: BTreeMap<String, Cursor>,
}

/// What a connector found when asked for the conversation list.
#[derive(Clone, Debug, Default)]
pub struct Discovery {
    /// Conversations to archive: new ones and the current state of known ones. A known
    /// conversation missing here is still synced (upstream lists are not trusted to be
    /// complete).
    pub conversations: Vec<ConversationObservation>,
    /// Conversations whose feeds have nothing new since their cursors, by id. The engine
    /// skips fetching them unless the run is `--full`. Empty: fetch all.
    pub unchanged: Vec<String>,
    pub quarantine: Vec<QuarantineRecord>,
    /// Source-level state to keep for the next discovery (e.g. a hash of the conversation
    /// list, or when the address book was last read). `None` keeps nothing.
    pub state: Option<Cursor>,
}

/// A request for the account's conversation list.
#[derive(Clone, Copy, Debug)]
pub struct DiscoverRequest<'a> {
    /// Every conversation the archive holds for this source, with its feed cursors.
    pub known: &'a [KnownConversation],
    /// What the previous discovery returned as [`Discovery::state`].
    pub state: Option<&'a Cursor>,
    /// A `--full` pass: list everything, ignoring upstream shortcuts.
    pub full: bool,
}

/// One page of one feed of one conversation.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// Where the feed stands after this page.
    pub next_cursor: Cursor,
    pub conversations: Vec<ConversationObservation>,
    pub messages: Vec<MessageObservation>,
    pub reactions: Vec<ReactionObservation>,
    pub gaps: Vec<SeqGap>,
    pub quarantine: Vec<QuarantineRecord>,
    /// Complete window reads: held messages in a window but absent upstream are deleted.
    pub windows: Vec<WindowObservation>,
    /// `true` when the feed has nothing more right now.
    pub done: bool,
}

impl Fetched {
    pub fn empty(next_cursor: Cursor, done: bool) -> Self {
        Fetched {
            next_cursor,
            conversations: Vec::new(),
            messages: Vec::new(),
            reactions: Vec::new(),
            gaps: Vec::new(),
            quarantine: Vec::new(),
            windows: Vec::new(),
            done,
        }
    }
}

/// A request for the next page of one feed.
#[derive(Clone, Debug)]
pub struct FetchRequest<'a> {
    pub conversation: &'a ConversationObservation,
    pub feed: &'a str,
    /// The stored cursor, or `None` to start from the beginning (first run or `--full`).
    pub cursor: Option<&'a Cursor>,
    /// A `--full` pass: re-read everything, ignoring upstream shortcuts.
    pub full: bool,
    /// How many times the engine has already sent this same request (same feed, same
    /// cursor) in this run and had it fail transiently: 0 on the first try. A fetch is a
    /// function of the request and the cursor; a connector may use `attempt` only to read
    /// the same data in a different way when a request keeps failing (e.g. narrower
    /// windows around a record upstream cannot serve), never to skip anything on a first
    /// failure.
    pub attempt: u32,
    /// Messages of this conversation a push said were edited, recalled, deleted or reacted
    /// to, with their archived seqs where known (empty outside targeted runs). A connector
    /// whose feeds would not see such a change now (no change feed) reads them again.
    pub changed: &'a [ChangedMessage],
}

/// A message a push named as changed (see [`FetchRequest::changed`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChangedMessage {
    pub message_id: String,
    pub seq: Option<i64>,
}

/// What a [`Connector::probe`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// The credentials work; what was read, in words.
    Ok(String),
    /// Checking would need a login the caller did not allow; why, in words.
    LoginNeeded(String),
}

/// An archived message `verify --upstream` asks a connector to re-read.
#[derive(Clone, Debug, PartialEq)]
pub struct RecheckTarget {
    pub message_id: String,
    pub seq: Option<i64>,
    pub sent_at: DateTime<Utc>,
    /// The archived message just after it in the conversation (by seq, else by time), as
    /// `(message_id, seq)`: the anchor for platforms that page backwards from a message id.
    /// `None` for the newest archived message.
    pub next: Option<(String, Option<i64>)>,
}

/// A read-only re-read of one conversation for `verify --upstream`.
#[derive(Clone, Debug)]
pub struct RecheckRequest<'a> {
    pub conversation: &'a ConversationObservation,
    /// The sampled archived messages of this conversation, oldest first.
    pub targets: &'a [RecheckTarget],
    /// Also read the conversation's newest page.
    pub newest: bool,
    /// The newest archived message of the conversation, if any.
    pub newest_archived: Option<&'a RecheckTarget>,
}

/// Where a re-read saw everything upstream holds for this account: an archived message
/// inside a span that the re-read did not return is absent upstream.
#[derive(Clone, Debug, PartialEq)]
pub enum RecheckSpan {
    /// Every seq in `[from, to]`.
    Seqs { from: i64, to: i64 },
    /// Every message sent in `[from, to]`.
    Times {
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    },
}

/// What a re-read found: full observations (header and content) of the messages upstream
/// returned, and the spans it read completely.
#[derive(Clone, Debug, Default)]
pub struct Recheck {
    pub messages: Vec<MessageObservation>,
    pub spans: Vec<RecheckSpan>,
    /// Whether the observations show recall and deletion marks as upstream holds them (so
    /// an archived mark upstream does not show is a difference). `false` where a recalled or
    /// deleted message is simply left out, or served unmarked.
    pub marks_shown: bool,
    /// Records the re-read could not map (the sync quarantines them; they are not compared).
    pub unmapped: usize,
}

#[async_trait]
pub trait Connector: Send + Sync {
    fn platform(&self) -> Platform;

    /// Obtain credentials (or new ones after [`ConnectorError::Unauthorized`]).
    async fn login(&self) -> Result<(), ConnectorError>;

    /// List the account's conversations.
    async fn discover(&self, request: DiscoverRequest<'_>) -> Result<Discovery, ConnectorError>;

    /// The feeds of a conversation, in the order they are synced (e.g. messages before
    /// the edits and reactions that refer to them).
    fn feeds(&self, conversation: &ConversationObservation) -> Vec<&'static str>;

    /// Fetch the page of `request.feed` that follows `request.cursor`.
    async fn fetch(&self, request: FetchRequest<'_>) -> Result<Fetched, ConnectorError>;

    /// One harmless read-only request showing whether the credentials work (for `chatvault
    /// doctor`): nothing is archived and nothing changes upstream. Unless `login` allows it,
    /// a connector that would have to log in first does not, and answers
    /// [`Probe::LoginNeeded`] (a TangSengDaoDao login posts a message to the user's phone).
    async fn probe(&self, login: bool) -> Result<Probe, ConnectorError>;
    /// Re-read, read-only, the messages `request` names and (with `request.newest`) the
    /// conversation's newest page, for `chatvault verify --upstream`. Reuses the fetch's
    /// requests and mapping but moves no cursor, no server-side checkpoint and no state a
    /// later [`Connector::fetch`] depends on; like a fetch it never retries by itself.
    /// Requests per call are bounded by each connector (documented in
    /// `docs/upstreams/<platform>.md`). The default: the platform cannot be re-read.
    async fn recheck(&self, request: RecheckRequest<'_>) -> Result<Recheck, ConnectorError> {
        let _ = request;
        Err(ConnectorError::Permanent(format!(
            "{}: re-reading archived messages from upstream is not supported",
            self.platform()
        )))
    }

    /// Listen on the platform's push channel until the connection ends, sending a signal
    /// per change to `sink` and reporting the connection's health there. Returns when the
    /// connection drops (the engine reconnects with backoff) or fails to open. The default:
    /// the platform has no push channel this connector opens itself.
    async fn listen(&self, sink: crate::push::PushSink) -> Result<(), ConnectorError> {
        let _ = sink;
        Err(ConnectorError::Permanent(format!(
            "{}: no push channel",
            self.platform()
        )))
    }

    /// The files a stored version's content references, in the order they appear (an
    /// attachment's ordinal is its place here). Pure: it reads only `content`, so versions
    /// archived before attachments were fetched yield theirs too.
    fn attachments(&self, content: &Content) -> Vec<AttachmentRef> {
        let _ = content;
        Vec::new()
    }

    /// How to download `reference` (its URL made absolute, the headers upstream wants,
    /// the credentials that may go only to its origin). The fetcher sends it with its own
    /// client, rate limit and size cap. The default is a plain GET of an absolute URL.
    async fn media_request(
        &self,
        reference: &AttachmentRef,
    ) -> Result<MediaRequest, ConnectorError> {
        MediaRequest::get(&reference.url).map_err(|why| {
            ConnectorError::Permanent(format!(
                "attachment {}: {why}",
                crate::attachments::shown_url(&reference.url)
            ))
        })
    }
}

/// The one place where platforms are wired. `session_dir` is where a connector may keep a
/// login session between runs (TangSengDaoDao: each login posts a message to the user's
/// phone); `None` keeps it in memory for this run only.
pub fn build(
    source: &SourceConfig,
    http: http::HttpClient,
    session_dir: Option<&Path>,
) -> anyhow::Result<Box<dyn Connector>> {
    match &source.platform {
        PlatformConfig::Tangsengdaodao(cfg) => {
            let connector = tangsengdaodao::TsddConnector::new(source, cfg, http)?;
            Ok(Box::new(match session_dir {
                Some(dir) => connector.with_session_dir(dir),
                None => connector,
            }))
        }
        PlatformConfig::Yunxin(cfg) => {
            Ok(Box::new(yunxin::YunxinConnector::new(source, cfg, http)?))
        }
        PlatformConfig::Yunhu(cfg) => Ok(Box::new(yunhu::YunhuConnector::new(source, cfg, http)?)),
    }
}
