//! Platform-neutral types: what a connector observes and what the store archives.
//!
//! A connector turns upstream payloads into *observations* of the current upstream state
//! (conversations, messages, reactions) and hands them to the sync engine in a [`Page`]
//! together with the cursor the page started from and the cursor it ends at. The store
//! compares observations with what it holds and derives the events; connectors never decide
//! what changed (invariant 3, "observations, not trust").

use std::fmt;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The configured name of a source: one account on one platform.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SourceName(String);

impl SourceName {
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The platforms chatvault has connectors for. The key is what `platform = "..."` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Tangsengdaodao,
    Yunxin,
    Yunhu,
}

impl Platform {
    pub const ALL: [Platform; 3] = [Platform::Tangsengdaodao, Platform::Yunxin, Platform::Yunhu];

    pub fn key(self) -> &'static str {
        match self {
            Platform::Tangsengdaodao => "tangsengdaodao",
            Platform::Yunxin => "yunxin",
            Platform::Yunhu => "yunhu",
        }
    }

    pub fn from_key(key: &str) -> Option<Platform> {
        Platform::ALL.into_iter().find(|p| p.key() == key)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// `archive.conversations.conversation_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConversationType {
    Direct,
    Group,
    Bot,
    Other,
}

impl ConversationType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationType::Direct => "direct",
            ConversationType::Group => "group",
            ConversationType::Bot => "bot",
            ConversationType::Other => "other",
        }
    }

    pub fn parse(s: &str) -> ConversationType {
        match s {
            "direct" => ConversationType::Direct,
            "group" => ConversationType::Group,
            "bot" => ConversationType::Bot,
            _ => ConversationType::Other,
        }
    }
}

/// `archive.messages.kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    Text,
    Markdown,
    Html,
    Image,
    File,
    Voice,
    Video,
    Location,
    Card,
    Sticker,
    Forward,
    Form,
    Post,
    Call,
    System,
    Other,
}

impl MessageKind {
    pub const ALL: [MessageKind; 16] = [
        MessageKind::Text,
        MessageKind::Markdown,
        MessageKind::Html,
        MessageKind::Image,
        MessageKind::File,
        MessageKind::Voice,
        MessageKind::Video,
        MessageKind::Location,
        MessageKind::Card,
        MessageKind::Sticker,
        MessageKind::Forward,
        MessageKind::Form,
        MessageKind::Post,
        MessageKind::Call,
        MessageKind::System,
        MessageKind::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Text => "text",
            MessageKind::Markdown => "markdown",
            MessageKind::Html => "html",
            MessageKind::Image => "image",
            MessageKind::File => "file",
            MessageKind::Voice => "voice",
            MessageKind::Video => "video",
            MessageKind::Location => "location",
            MessageKind::Card => "card",
            MessageKind::Sticker => "sticker",
            MessageKind::Forward => "forward",
            MessageKind::Form => "form",
            MessageKind::Post => "post",
            MessageKind::Call => "call",
            MessageKind::System => "system",
            MessageKind::Other => "other",
        }
    }

    pub fn parse(s: &str) -> MessageKind {
        MessageKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .unwrap_or(MessageKind::Other)
    }
}

/// Postgres keeps microseconds; every time the store hashes is truncated to them first, so
/// a value read back hashes the same as the value written.
pub fn to_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

/// A conversation as upstream describes it now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConversationObservation {
    pub conversation_id: String,
    pub conversation_type: ConversationType,
    pub name: Option<String>,
    /// Platform-specific facts (member counts, flags, avatar urls). A change here is a
    /// `conversation_changed` event.
    pub metadata: Value,
}

/// One version of a message's content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Content {
    pub kind: MessageKind,
    /// Plain text: what search indexes.
    pub text: String,
    /// Normalised content: urls, names, sizes, mentions, reply.
    pub content: Value,
}

/// An earlier version reported by upstream (an edit record), oldest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EarlierVersion {
    pub content: Content,
    /// When this version was replaced, where upstream says.
    pub replaced_at: Option<DateTime<Utc>>,
    /// `None`: upstream reported the whole content. `Some(parts)`: upstream reported only
    /// these parts of `content.content` (JSON pointers such as `/text`), and the connector
    /// filled in the rest from the current version. Such a version *is* an archived version
    /// that equals it on those parts; only when none does is it stored as a new one.
    #[serde(default)]
    pub known_fields: Option<Vec<String>>,
}

/// A recall or deletion mark.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Mark {
    /// Upstream time of the recall or deletion, where known.
    pub at: Option<DateTime<Utc>>,
    /// Who recalled or deleted, where known.
    pub by: Option<String>,
    /// Why upstream shows the message as recalled or deleted, where it is not plain (e.g.
    /// deleted for this account only, expired, history cleared). Recorded in the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The fixed facts of a message, known when the message itself is fetched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageHeader {
    /// The platform's per-conversation sequence number, where it has one.
    pub seq: Option<i64>,
    pub sender_id: Option<String>,
    pub sender_name: Option<String>,
    pub sent_at: DateTime<Utc>,
    pub reply_to: Option<String>,
}

/// A reaction that stands now (part of a message's full reaction set).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ReactionState {
    pub user_id: String,
    pub user_name: Option<String>,
    pub emoji: String,
}

/// One observation of a message's current upstream state.
///
/// A full observation (from a history page) has a `header` and `content`. A change-feed
/// observation (an edit, recall or delete seen on a feed) may carry only what changed:
/// `header: None` and `content` set only for an edit. The store never lets a missing part
/// erase what it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MessageObservation {
    pub conversation_id: String,
    pub message_id: String,
    pub header: Option<MessageHeader>,
    /// The current content, if this observation knows it.
    pub content: Option<Content>,
    /// When the current content was written by an edit (upstream time), if it was edited.
    pub edited_at: Option<DateTime<Utc>>,
    /// Versions before `content`, oldest first, where upstream keeps an edit history.
    pub earlier_versions: Vec<EarlierVersion>,
    pub recalled: Option<Mark>,
    pub deleted: Option<Mark>,
    /// The message's complete reaction set, where the observation carries it.
    pub reactions: Option<Vec<ReactionState>>,
    /// The upstream payload this observation was made from.
    pub raw: Value,
}

/// One reaction change from a reaction feed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReactionObservation {
    pub conversation_id: String,
    pub message_id: String,
    pub user_id: String,
    pub user_name: Option<String>,
    pub emoji: String,
    /// `true`: the reaction stands; `false`: it was removed.
    pub present: bool,
    /// The platform allows one reaction per user and message: a standing reaction with
    /// this emoji ends the user's other open reactions on the message.
    pub one_per_user: bool,
    /// Upstream time of the change, where known.
    pub at: Option<DateTime<Utc>>,
}

/// A range of sequence numbers the connector could not see (filtered upstream, or gone).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeqGap {
    pub conversation_id: String,
    /// First missing seq, inclusive.
    pub from_seq: i64,
    /// Last missing seq, inclusive.
    pub to_seq: i64,
    pub reason: String,
    /// What kind of gap it is (for `chatvault coverage`).
    #[serde(default)]
    pub kind: GapKind,
}

/// Why seqs are missing, in classes an auditor can count (`archive.coverage_gaps.kind`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapKind {
    /// Upstream did not return them (cleared history, device filters, deleted for the account).
    #[default]
    NotReturned,
    /// Upstream fails when asked for them (a server error on one record).
    Unreadable,
    /// Before the oldest message the account can see (e.g. before it joined).
    BeforeHistory,
    /// A group the account is no longer a member of.
    NotMember,
}

impl GapKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GapKind::NotReturned => "not_returned",
            GapKind::Unreadable => "unreadable",
            GapKind::BeforeHistory => "before_history",
            GapKind::NotMember => "not_member",
        }
    }
}

/// A record that could not be decoded or mapped. It is kept, never dropped (invariant 6).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuarantineRecord {
    pub reason: String,
    /// The record as received: JSON as is, bytes as `{"base64": "..."}`.
    pub raw: Value,
}

/// A complete read of one conversation over a time window: upstream holds exactly
/// `present` among the messages sent in `[from, to]` (both inclusive). The store marks
/// every message it holds in that window, not yet deleted and not in `present` (nor observed
/// in full, with a header, in the same page), as deleted with `detail` ("absent upstream"),
/// keeping its content.
///
/// A connector emits one only after reading the whole window to its end without a failed,
/// truncated or skipped page: a partial read would turn missing pages into deletions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WindowObservation {
    pub conversation_id: String,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub present: Vec<String>,
    /// Why absence means deletion here, recorded in each `message_deleted` event.
    pub detail: String,
}

/// An opaque, versioned cursor position, owned by the connector that wrote it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(pub Value);

/// Everything one page of upstream data yields. The store applies a page in one
/// transaction: observations, events, and the move of `cursor_key` from `expected_cursor`
/// to `next_cursor` (invariant 2).
#[derive(Clone, Debug, PartialEq)]
pub struct Page {
    /// Which cursor this page advances (e.g. `messages/<conversation>`).
    pub cursor_key: String,
    /// The cursor the page was fetched from (`None`: the key had no cursor yet).
    pub expected_cursor: Option<Cursor>,
    pub next_cursor: Cursor,
    pub conversations: Vec<ConversationObservation>,
    pub messages: Vec<MessageObservation>,
    pub reactions: Vec<ReactionObservation>,
    pub gaps: Vec<SeqGap>,
    pub quarantine: Vec<QuarantineRecord>,
    /// Complete window reads whose absent messages are deletions.
    pub windows: Vec<WindowObservation>,
}

impl Page {
    /// An empty page that moves `cursor_key` from `expected` to `next`.
    pub fn new(cursor_key: impl Into<String>, expected: Option<Cursor>, next: Cursor) -> Self {
        Page {
            cursor_key: cursor_key.into(),
            expected_cursor: expected,
            next_cursor: next,
            conversations: Vec::new(),
            messages: Vec::new(),
            reactions: Vec::new(),
            gaps: Vec::new(),
            quarantine: Vec::new(),
            windows: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for kind in MessageKind::ALL {
            assert_eq!(MessageKind::parse(kind.as_str()), kind);
        }
        assert_eq!(MessageKind::parse("hologram"), MessageKind::Other);
    }

    #[test]
    fn platform_keys_round_trip() {
        for p in Platform::ALL {
            assert_eq!(Platform::from_key(p.key()), Some(p));
        }
        assert_eq!(Platform::from_key("wechat"), None);
    }
}
