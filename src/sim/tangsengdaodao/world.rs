//! The mutable ground truth behind the fake server: users, groups, channels, messages,
//! message extras, reactions, per-user offsets and login tokens.
//!
//! Invariants:
//! - a channel's messages sit in a `Vec` indexed by `message_seq - 1`; seqs start at 1
//!   and have no gaps in storage (gaps only appear through per-viewer filtering);
//! - `message_id`s are unique snowflake-like values above 2^53 and grow with time;
//! - extra versions come from one monotonic microsecond clock, so they are unique; each
//!   channel indexes its extra rows by version and its reaction rows by seq;
//! - reaction seqs come from a per-channel counter starting at 1,000,001;
//! - there is one reaction row per (message, uid) and one extra row per message, each
//!   holding the full current state.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;

/// WuKongIM's system uid. Messages sent without a sender carry it; it is served as `""`.
pub const SYSTEM_UID: &str = "____system";
/// TangSengDaoDao's own system account (welcome and login notices); served as-is.
pub const TSDD_SYSTEM_UID: &str = "u_10000";
/// `channel_type` of a one-to-one chat.
pub const PERSON: u8 = 1;
/// `channel_type` of a group chat.
pub const GROUP: u8 = 2;
/// First seq the per-channel reaction counter hands out.
pub const REACTION_SEQ_START: i64 = 1_000_001;
/// Twitter-style snowflake epoch (ms), which puts every id far above 2^53.
const SNOWFLAKE_EPOCH_MS: i64 = 1_288_834_974_657;

/// A registered account.
#[derive(Clone, Debug)]
pub struct User {
    pub uid: String,
    pub name: String,
    /// Login name: zone + phone for phone-registered accounts.
    pub username: String,
    pub password: String,
    pub sex: u8,
    pub short_no: String,
    pub zone: String,
    pub phone: String,
    /// `""`, `system`, `customerService`, `visitor`.
    pub category: String,
}

/// A group and its current members.
#[derive(Clone, Debug)]
pub struct Group {
    pub group_no: String,
    pub name: String,
    pub owner: String,
    pub members: BTreeSet<String>,
    /// Saved to the archiving user's contacts (listed by `GET /v1/group/my`).
    pub saved: bool,
    pub notice: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// Identifies a channel the way WuKongIM stores it: groups by number, person channels by
/// the fake id `a@b` (order decided by crc32, see [`fake_channel_id`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ChannelKey {
    pub channel_type: u8,
    pub fake_id: String,
}

impl ChannelKey {
    pub fn person(a: &str, b: &str) -> Self {
        ChannelKey {
            channel_type: PERSON,
            fake_id: fake_channel_id(a, b),
        }
    }

    pub fn group(group_no: &str) -> Self {
        ChannelKey {
            channel_type: GROUP,
            fake_id: group_no.to_string(),
        }
    }

    /// The two uids of a person channel.
    pub fn participants(&self) -> Option<(&str, &str)> {
        if self.channel_type != PERSON {
            return None;
        }
        self.fake_id.split_once('@')
    }

    /// The `channel_id` `viewer` uses to request this channel: the peer's uid for a person
    /// channel, the group number for a group.
    pub fn id_for(&self, viewer: &str) -> String {
        match self.participants() {
            Some((a, b)) if a == viewer => b.to_string(),
            Some((a, _)) => a.to_string(),
            None => self.fake_id.clone(),
        }
    }
}

/// WuKongIM's person-channel key: the uid with the larger crc32 goes first
/// (`GetFakeChannelIDWith`); equal hashes fall back to string order.
pub fn fake_channel_id(a: &str, b: &str) -> String {
    let (ha, hb) = (crc32(a.as_bytes()), crc32(b.as_bytes()));
    if ha > hb || (ha == hb && a >= b) {
        format!("{a}@{b}")
    } else {
        format!("{b}@{a}")
    }
}

/// CRC-32 (IEEE), as Go's `crc32.ChecksumIEEE`.
pub(super) use crate::sim::png::crc32;

/// The `message_extra` row of a message: full current state.
#[derive(Clone, Debug, Default)]
pub struct MessageExtra {
    pub revoke: bool,
    pub revoker: String,
    pub is_mutual_deleted: bool,
    pub is_pinned: bool,
    pub readed_count: i64,
    /// The latest edit exactly as stored: the client's JSON string.
    pub content_edit: Option<String>,
    /// Unix seconds of the last edit, 0 if never edited.
    pub edited_at: i64,
    /// Microseconds from the world's monotonic clock.
    pub version: i64,
}

impl MessageExtra {
    /// The edit parsed back into an object; `None` when absent or not valid JSON.
    pub fn content_edit_json(&self) -> Option<Value> {
        let raw = self.content_edit.as_deref()?;
        serde_json::from_str(raw).ok()
    }
}

/// One reaction row: one per (message, uid), toggled in place.
#[derive(Clone, Debug, Serialize)]
pub struct Reaction {
    pub uid: String,
    pub name: String,
    pub emoji: String,
    pub is_deleted: bool,
    pub seq: i64,
    /// Unix seconds when the row was created; toggles do not change it.
    pub created_at: i64,
}

/// A stored message.
#[derive(Clone, Debug)]
pub struct Message {
    pub message_id: u64,
    pub message_seq: u32,
    pub client_msg_no: String,
    /// As stored; [`SYSTEM_UID`] for messages sent without a sender.
    pub from_uid: String,
    /// Unix seconds.
    pub timestamp: i64,
    pub setting: u8,
    /// The original payload; edits never change it.
    pub payload: Value,
    pub extra: Option<MessageExtra>,
    pub reactions: Vec<Reaction>,
    /// Users who deleted this message for themselves only.
    pub deleted_for: Vec<String>,
    /// Seconds after `timestamp` at which the message expires (0: never).
    pub expire: u32,
}

impl Message {
    /// `from_uid` as the server returns it: `""` for WuKongIM's system uid.
    pub fn served_from_uid(&self) -> &str {
        if self.from_uid == SYSTEM_UID {
            ""
        } else {
            &self.from_uid
        }
    }

    /// `is_deleted` as served to `viewer`, in the order the server's `MsgSyncResp.from`
    /// computes it (docs/upstreams/tangsengdaodao.md, "is_deleted"): deleted for everyone;
    /// then a non-empty `visibles` decides alone; then deleted for the viewer; then expired
    /// (against the wall clock); then at or below the channel-wide clear point.
    pub fn is_deleted_for(&self, viewer: &str, channel_clear_offset: u32) -> bool {
        let mut deleted = self.extra.as_ref().is_some_and(|e| e.is_mutual_deleted);
        if let Some(visibles) = self.payload.get("visibles").and_then(Value::as_array) {
            if !visibles.is_empty() {
                deleted = !visibles.iter().any(|v| v.as_str() == Some(viewer));
            }
        }
        if !deleted && self.deleted_for.iter().any(|u| u == viewer) {
            deleted = true;
        }
        if self.expire > 0 {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            if now - i64::from(self.expire) >= self.timestamp {
                deleted = true;
            }
        }
        deleted || self.message_seq <= channel_clear_offset
    }
}

/// Where a message landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageRef {
    pub channel: ChannelKey,
    pub message_id: u64,
    pub message_seq: u32,
}

/// One channel's history and per-channel state.
#[derive(Clone, Debug)]
pub struct Channel {
    pub(super) key: ChannelKey,
    pub(super) messages: Vec<Message>,
    pub(super) extras_by_version: BTreeMap<i64, u32>,
    pub(super) reactions_by_seq: BTreeMap<i64, (u32, usize)>,
    pub(super) next_reaction_seq: i64,
    pub(super) my_offset: u32,
    pub(super) clear_offset: u32,
    pub(super) my_read_seq: u32,
}

impl Channel {
    pub(super) fn new(key: ChannelKey) -> Self {
        Channel {
            key,
            messages: Vec::new(),
            extras_by_version: BTreeMap::new(),
            reactions_by_seq: BTreeMap::new(),
            next_reaction_seq: REACTION_SEQ_START,
            my_offset: 0,
            clear_offset: 0,
            my_read_seq: 0,
        }
    }

    pub fn key(&self) -> &ChannelKey {
        &self.key
    }

    /// All messages, ascending by seq (index = seq - 1).
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    pub fn message(&self, seq: u32) -> Option<&Message> {
        let index = usize::try_from(seq).ok()?.checked_sub(1)?;
        self.messages.get(index)
    }

    pub fn last_seq(&self) -> u32 {
        self.messages.len() as u32
    }

    /// The archiving user's clear-history offset: messages at or below it are not served.
    pub fn my_offset(&self) -> u32 {
        self.my_offset
    }

    /// The channel-wide clear point: messages at or below it are served with `is_deleted=1`.
    pub fn clear_offset(&self) -> u32 {
        self.clear_offset
    }

    /// The archiving user's read position.
    pub fn my_read_seq(&self) -> u32 {
        self.my_read_seq
    }

    /// Messages with extra rows, ascending by version, from just above `after`.
    pub(super) fn extras_after(&self, after: i64) -> impl Iterator<Item = &Message> + '_ {
        self.extras_by_version
            .range(after.saturating_add(1)..)
            .filter_map(|(_, &seq)| self.message(seq))
    }

    /// Messages with extra rows, descending by version (newest first).
    pub(super) fn extras_newest(&self) -> impl Iterator<Item = &Message> + '_ {
        self.extras_by_version
            .values()
            .rev()
            .filter_map(|&seq| self.message(seq))
    }

    /// Reaction rows ascending by seq from just above `after`, with their message.
    pub(super) fn reactions_after(
        &self,
        after: i64,
    ) -> impl Iterator<Item = (&Message, &Reaction)> + '_ {
        self.reactions_by_seq
            .range(after.saturating_add(1)..)
            .filter_map(|(_, &(seq, i))| self.reaction_at(seq, i))
    }

    /// Reaction rows descending by seq (newest first).
    pub(super) fn reactions_newest(&self) -> impl Iterator<Item = (&Message, &Reaction)> + '_ {
        self.reactions_by_seq
            .values()
            .rev()
            .filter_map(|&(seq, i)| self.reaction_at(seq, i))
    }

    fn reaction_at(&self, seq: u32, i: usize) -> Option<(&Message, &Reaction)> {
        let message = self.message(seq)?;
        Some((message, message.reactions.get(i)?))
    }
}

/// The whole fake account world. See the module docs for invariants. A clone is an
/// independent copy (tests restore a world to an earlier state with it).
#[derive(Clone, Debug)]
pub struct World {
    pub(super) me: String,
    pub(super) users: BTreeMap<String, User>,
    pub(super) groups: BTreeMap<String, Group>,
    pub(super) channels: Vec<Channel>,
    pub(super) channel_index: HashMap<ChannelKey, usize>,
    pub(super) message_index: HashMap<u64, (usize, u32)>,
    pub(super) last_message_id: u64,
    pub(super) last_version: i64,
    pub(super) last_timestamp: i64,
    pub(super) tokens: HashMap<String, super::sessions::Session>,
    pub(super) device_tokens: HashMap<(String, u8), String>,
    pub(super) extra_cursors: HashMap<(String, String), i64>,
    /// Successful logins so far.
    pub(super) logins: u64,
    /// The login-log entry of the last login (its "本次登录的信息" line).
    pub(super) last_login: Option<String>,
    /// The app setting `send_welcome_message_on`: each login posts a "login info" text
    /// from [`TSDD_SYSTEM_UID`] to the user (on by default, as on a real server).
    pub welcome_message_on: bool,
    /// Offset of the server's local time from UTC, for `created_at` strings.
    pub(super) utc_offset_secs: i32,
    pub(super) rng: StdRng,
    /// The paths the file storage refuses (none unless a test switches them on).
    pub media_quirks: super::media::MediaQuirks,
}

impl World {
    /// An empty world holding only the archiving user and TSDD's system account.
    pub fn new(me: User, seed: u64) -> Self {
        let mut world = World {
            me: me.uid.clone(),
            users: BTreeMap::new(),
            groups: BTreeMap::new(),
            channels: Vec::new(),
            channel_index: HashMap::new(),
            message_index: HashMap::new(),
            last_message_id: 0,
            last_version: 0,
            last_timestamp: 0,
            tokens: HashMap::new(),
            device_tokens: HashMap::new(),
            extra_cursors: HashMap::new(),
            logins: 0,
            last_login: None,
            welcome_message_on: true,
            utc_offset_secs: 8 * 3600,
            rng: StdRng::seed_from_u64(seed ^ 0x5eed_7d5d),
            media_quirks: Default::default(),
        };
        world.add_user(me);
        world.add_user(User {
            uid: TSDD_SYSTEM_UID.into(),
            name: "系统账号".into(),
            username: "10000".into(),
            password: String::new(),
            sex: 0,
            short_no: "10000".into(),
            zone: String::new(),
            phone: String::new(),
            category: "system".into(),
        });
        world
    }

    /// The archiving account.
    pub fn me(&self) -> &User {
        &self.users[&self.me]
    }

    pub fn user(&self, uid: &str) -> Option<&User> {
        self.users.get(uid)
    }

    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    pub fn add_user(&mut self, user: User) {
        self.users.insert(user.uid.clone(), user);
    }

    pub fn group(&self, group_no: &str) -> Option<&Group> {
        self.groups.get(group_no)
    }

    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    pub fn add_group(&mut self, group: Group) {
        self.groups.insert(group.group_no.clone(), group);
    }

    /// Every channel, in creation order.
    pub fn channels(&self) -> &[Channel] {
        &self.channels
    }

    pub fn channel(&self, key: &ChannelKey) -> Option<&Channel> {
        self.channel_index.get(key).map(|&i| &self.channels[i])
    }

    /// A message and its channel, by id.
    pub fn message(&self, message_id: u64) -> Option<(&Channel, &Message)> {
        let &(ci, seq) = self.message_index.get(&message_id)?;
        let channel = &self.channels[ci];
        Some((channel, channel.message(seq)?))
    }

    /// Total number of stored messages.
    pub fn message_count(&self) -> usize {
        self.message_index.len()
    }

    /// Whether `uid` may read `key` now: a participant of a person channel, a current
    /// member of a group.
    pub fn is_member(&self, key: &ChannelKey, uid: &str) -> bool {
        match key.channel_type {
            PERSON => key
                .participants()
                .is_some_and(|(a, b)| a == uid || b == uid),
            GROUP => self
                .groups
                .get(&key.fake_id)
                .is_some_and(|g| g.members.contains(uid)),
            _ => false,
        }
    }

    // ---- clock and ids -------------------------------------------------------------

    /// Wall-clock microseconds, never earlier than anything already stored.
    pub(super) fn now_us(&self) -> i64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        wall.max(self.last_timestamp * 1_000_000)
    }

    /// Unix seconds of the newest stored message.
    pub(super) fn last_timestamp_hint(&self) -> i64 {
        self.last_timestamp
    }

    pub(super) fn next_version(&mut self, at_us: i64) -> i64 {
        self.last_version = at_us.max(self.last_version + 1);
        self.last_version
    }

    pub(super) fn next_message_id(&mut self, at_us: i64) -> u64 {
        let ms = (at_us / 1000 - SNOWFLAKE_EPOCH_MS).max(1) as u64;
        let candidate = (ms << 22) | (7 << 12);
        self.last_message_id = candidate.max(self.last_message_id + 1);
        self.last_message_id
    }

    pub(super) fn random_hex(&mut self) -> String {
        format!(
            "{:016x}{:016x}",
            self.rng.gen::<u64>(),
            self.rng.gen::<u64>()
        )
    }

    pub(super) fn channel_mut(&mut self, key: &ChannelKey) -> &mut Channel {
        let index = match self.channel_index.get(key) {
            Some(&i) => i,
            None => {
                self.channels.push(Channel::new(key.clone()));
                self.channel_index
                    .insert(key.clone(), self.channels.len() - 1);
                self.channels.len() - 1
            }
        };
        &mut self.channels[index]
    }

    pub(super) fn locate(&self, message_id: u64) -> (usize, u32) {
        *self
            .message_index
            .get(&message_id)
            .unwrap_or_else(|| panic!("unknown message id {message_id}"))
    }
}
