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
use serde_json::{json, Value};

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
pub(super) fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

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

    /// `is_deleted` as served to `viewer` (§5 rules 1–3 and 5; messages never expire here).
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
    key: ChannelKey,
    messages: Vec<Message>,
    extras_by_version: BTreeMap<i64, u32>,
    reactions_by_seq: BTreeMap<i64, (u32, usize)>,
    next_reaction_seq: i64,
    my_offset: u32,
    clear_offset: u32,
    my_read_seq: u32,
}

impl Channel {
    fn new(key: ChannelKey) -> Self {
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

/// A login session.
#[derive(Clone, Debug)]
struct Session {
    uid: String,
}

/// Why a login was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoginError {
    MissingUsername,
    MissingPassword,
    UnknownUser,
    WrongPassword,
}

/// One change made by [`World::random_activity`].
#[derive(Clone, Debug)]
pub enum Activity {
    Posted(MessageRef),
    Edited(u64),
    Revoked(u64),
    MutuallyDeleted(u64),
    Reacted {
        message_id: u64,
        uid: String,
        emoji: String,
    },
    ClearedHistory {
        channel: ChannelKey,
        upto_seq: u32,
    },
}

/// The whole fake account world. See the module docs for invariants.
#[derive(Debug)]
pub struct World {
    pub(super) me: String,
    pub(super) users: BTreeMap<String, User>,
    pub(super) groups: BTreeMap<String, Group>,
    channels: Vec<Channel>,
    channel_index: HashMap<ChannelKey, usize>,
    message_index: HashMap<u64, (usize, u32)>,
    last_message_id: u64,
    last_version: i64,
    last_timestamp: i64,
    tokens: HashMap<String, Session>,
    device_tokens: HashMap<(String, u8), String>,
    extra_cursors: HashMap<(String, String), i64>,
    /// Offset of the server's local time from UTC, for `created_at` strings.
    pub(super) utc_offset_secs: i32,
    rng: StdRng,
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
            utc_offset_secs: 8 * 3600,
            rng: StdRng::seed_from_u64(seed ^ 0x5eed_7d5d),
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

    fn next_version(&mut self, at_us: i64) -> i64 {
        self.last_version = at_us.max(self.last_version + 1);
        self.last_version
    }

    fn next_message_id(&mut self, at_us: i64) -> u64 {
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

    fn channel_mut(&mut self, key: &ChannelKey) -> &mut Channel {
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

    fn locate(&self, message_id: u64) -> (usize, u32) {
        *self
            .message_index
            .get(&message_id)
            .unwrap_or_else(|| panic!("unknown message id {message_id}"))
    }

    // ---- mutations -----------------------------------------------------------------

    /// Send a message now. `from` may be [`SYSTEM_UID`] for a sender-less notice.
    ///
    /// Panics if `key` is a group that does not exist.
    pub fn post_message(&mut self, key: &ChannelKey, from: &str, payload: Value) -> MessageRef {
        let at = self.now_us();
        self.post_message_at(key, from, payload, at)
    }

    pub(super) fn post_message_at(
        &mut self,
        key: &ChannelKey,
        from: &str,
        payload: Value,
        at_us: i64,
    ) -> MessageRef {
        if key.channel_type == GROUP {
            assert!(
                self.groups.contains_key(&key.fake_id),
                "unknown group {}",
                key.fake_id
            );
        }
        let timestamp = (at_us / 1_000_000).max(self.last_timestamp);
        self.last_timestamp = timestamp;
        let message_id = self.next_message_id(at_us);
        let client_msg_no = self.random_hex();
        let me = self.me.clone();
        let channel_index = self.channel_index.get(key).copied();
        let channel = self.channel_mut(key);
        let message_seq = channel.messages.len() as u32 + 1;
        channel.messages.push(Message {
            message_id,
            message_seq,
            client_msg_no,
            from_uid: from.to_string(),
            timestamp,
            setting: 0,
            payload,
            extra: None,
            reactions: Vec::new(),
            deleted_for: Vec::new(),
        });
        if from == me {
            channel.my_read_seq = message_seq;
        }
        let ci = channel_index.unwrap_or(self.channels.len() - 1);
        self.message_index.insert(message_id, (ci, message_seq));
        MessageRef {
            channel: key.clone(),
            message_id,
            message_seq,
        }
    }

    /// Apply `change` to a message's extra row and give the row a new version.
    fn touch_extra(&mut self, message_id: u64, at_us: i64, change: impl FnOnce(&mut MessageExtra)) {
        let (ci, seq) = self.locate(message_id);
        let version = self.next_version(at_us);
        let channel = &mut self.channels[ci];
        let message = &mut channel.messages[seq as usize - 1];
        let extra = message.extra.get_or_insert_with(MessageExtra::default);
        if extra.version != 0 {
            channel.extras_by_version.remove(&extra.version);
        }
        change(extra);
        extra.version = version;
        channel.extras_by_version.insert(version, seq);
    }

    /// Replace a message's content (the latest edit wins; the payload stays). Returns
    /// false when the edit is identical to the stored one and so ignored.
    pub fn edit(&mut self, message_id: u64, new_payload: &Value) -> bool {
        let at = self.now_us();
        self.edit_at(message_id, new_payload, at)
    }

    pub(super) fn edit_at(&mut self, message_id: u64, new_payload: &Value, at_us: i64) -> bool {
        let text = new_payload.to_string();
        let (_, message) = self.message(message_id).expect("known message");
        let current = message
            .extra
            .as_ref()
            .and_then(|e| e.content_edit.as_deref());
        if current == Some(text.as_str()) {
            return false;
        }
        self.touch_extra(message_id, at_us, |e| {
            e.content_edit = Some(text);
            e.edited_at = at_us / 1_000_000;
        });
        true
    }

    /// Store an edit given as the raw string a client sends (it may be invalid JSON, in
    /// which case extra sync omits `content_edit`).
    pub fn edit_raw(&mut self, message_id: u64, content_edit: &str) {
        let at = self.now_us();
        let text = content_edit.to_string();
        self.touch_extra(message_id, at, |e| {
            e.content_edit = Some(text);
            e.edited_at = at / 1_000_000;
        });
    }

    /// Recall a message; its payload is kept. Unpins it.
    pub fn revoke(&mut self, message_id: u64, by: &str) {
        let at = self.now_us();
        self.revoke_at(message_id, by, at);
    }

    pub(super) fn revoke_at(&mut self, message_id: u64, by: &str, at_us: i64) {
        let by = by.to_string();
        self.touch_extra(message_id, at_us, |e| {
            e.revoke = true;
            e.revoker = by;
            e.is_pinned = false;
        });
    }

    /// Delete a message for everyone.
    pub fn mutual_delete(&mut self, message_id: u64) {
        let at = self.now_us();
        self.mutual_delete_at(message_id, at);
    }

    pub(super) fn mutual_delete_at(&mut self, message_id: u64, at_us: i64) {
        self.touch_extra(message_id, at_us, |e| e.is_mutual_deleted = true);
    }

    /// Pin or unpin a message.
    pub fn pin(&mut self, message_id: u64, pinned: bool) {
        let at = self.now_us();
        self.touch_extra(message_id, at, |e| e.is_pinned = pinned);
    }

    /// Set how many members have read a message.
    pub fn set_readed_count(&mut self, message_id: u64, count: i64) {
        let at = self.now_us();
        self.set_readed_count_at(message_id, count, at);
    }

    pub(super) fn set_readed_count_at(&mut self, message_id: u64, count: i64, at_us: i64) {
        self.touch_extra(message_id, at_us, |e| e.readed_count = count);
    }

    /// Delete a message for `uid` only (no extra row, no new version).
    pub fn delete_for(&mut self, message_id: u64, uid: &str) {
        let (ci, seq) = self.locate(message_id);
        let message = &mut self.channels[ci].messages[seq as usize - 1];
        if !message.deleted_for.iter().any(|u| u == uid) {
            message.deleted_for.push(uid.to_string());
        }
    }

    /// React as `uid`: a first reaction adds a row; the same emoji again removes it
    /// (`is_deleted`); another emoji replaces it in place; reacting on a removed row
    /// revives it. Every change takes the channel's next reaction seq. Returns the row.
    pub fn toggle_reaction(&mut self, message_id: u64, uid: &str, emoji: &str) -> Reaction {
        let at = self.now_us();
        self.toggle_reaction_at(message_id, uid, emoji, at)
    }

    pub(super) fn toggle_reaction_at(
        &mut self,
        message_id: u64,
        uid: &str,
        emoji: &str,
        at_us: i64,
    ) -> Reaction {
        let (ci, seq) = self.locate(message_id);
        let name = self
            .users
            .get(uid)
            .map(|u| u.name.clone())
            .unwrap_or_default();
        let channel = &mut self.channels[ci];
        let new_seq = channel.next_reaction_seq;
        channel.next_reaction_seq += 1;
        let message = &mut channel.messages[seq as usize - 1];
        let index = match message.reactions.iter().position(|r| r.uid == uid) {
            Some(i) => {
                let row = &mut message.reactions[i];
                channel.reactions_by_seq.remove(&row.seq);
                if !row.is_deleted && row.emoji == emoji {
                    row.is_deleted = true;
                } else {
                    row.is_deleted = false;
                    row.emoji = emoji.to_string();
                }
                row.name = name;
                row.seq = new_seq;
                i
            }
            None => {
                message.reactions.push(Reaction {
                    uid: uid.to_string(),
                    name,
                    emoji: emoji.to_string(),
                    is_deleted: false,
                    seq: new_seq,
                    created_at: at_us / 1_000_000,
                });
                message.reactions.len() - 1
            }
        };
        channel.reactions_by_seq.insert(new_seq, (seq, index));
        message.reactions[index].clone()
    }

    /// The archiving user clears their history of `key` up to `upto_seq`: those messages
    /// disappear from the user's channel sync. The offset only moves forward.
    pub fn clear_history_for_me(&mut self, key: &ChannelKey, upto_seq: u32) {
        let channel = self.channel_mut(key);
        channel.my_offset = channel.my_offset.max(upto_seq);
    }

    /// Someone clears `key` for everyone: every message up to the current last seq is
    /// served with `is_deleted=1`.
    pub fn clear_channel_for_everyone(&mut self, key: &ChannelKey) {
        let channel = self.channel_mut(key);
        channel.clear_offset = channel.last_seq();
    }

    /// The owner removes the archiving user from a group (a 1020 notice is posted first).
    /// Afterwards the group's history can no longer be pulled.
    pub fn remove_me_from_group(&mut self, group_no: &str) {
        let at = self.now_us();
        self.remove_me_from_group_at(group_no, at);
    }

    pub(super) fn remove_me_from_group_at(&mut self, group_no: &str, at_us: i64) {
        let group = self.groups.get(group_no).expect("known group").clone();
        let me = self.me().clone();
        let owner_name = self.users.get(&group.owner).map(|u| u.name.clone());
        let payload = json!({
            "type": 1020,
            "content": "{0}将{1}移出了群聊",
            "extra": [
                {"uid": group.owner, "name": owner_name.unwrap_or_default()},
                {"uid": me.uid, "name": me.name},
            ],
        });
        self.post_message_at(&ChannelKey::group(group_no), SYSTEM_UID, payload, at_us);
        if let Some(group) = self.groups.get_mut(group_no) {
            group.members.remove(&me.uid);
        }
    }

    /// A random mix of posts, edits, revokes, mutual deletes, reaction toggles and the
    /// odd history clear, in channels the archiving user belongs to. For demos.
    pub fn random_activity<R: Rng + ?Sized>(&mut self, rng: &mut R, n: usize) -> Vec<Activity> {
        let me = self.me.clone();
        let channels: Vec<usize> = (0..self.channels.len())
            .filter(|&i| self.is_member(&self.channels[i].key, &me))
            .collect();
        let mut done = Vec::with_capacity(n);
        if channels.is_empty() {
            return done;
        }
        for _ in 0..n {
            let ci = channels[rng.gen_range(0..channels.len())];
            let key = self.channels[ci].key.clone();
            let senders = self.senders_of(&key);
            let from = senders[rng.gen_range(0..senders.len())].clone();
            let last = self.channels[ci].last_seq();
            let roll = rng.gen_range(0..100);
            if last == 0 || roll < 55 {
                let lang = super::generate::lang_of(&from);
                let payload = json!({"type": 1, "content": crate::sim::text::message(rng, lang)});
                done.push(Activity::Posted(self.post_message(&key, &from, payload)));
                continue;
            }
            let seq = rng.gen_range(1..=last);
            let message_id = self.channels[ci].messages[seq as usize - 1].message_id;
            match roll {
                55..=69 => {
                    let emoji = super::generate::EMOJI[rng.gen_range(0..4)];
                    self.toggle_reaction(message_id, &from, emoji);
                    done.push(Activity::Reacted {
                        message_id,
                        uid: from,
                        emoji: emoji.to_string(),
                    });
                }
                70..=82 => {
                    let content = crate::sim::text::message(rng, super::generate::lang_of(&from));
                    self.edit(message_id, &json!({"type": 1, "content": content}));
                    done.push(Activity::Edited(message_id));
                }
                83..=91 => {
                    self.revoke(message_id, &from);
                    done.push(Activity::Revoked(message_id));
                }
                92..=97 => {
                    self.mutual_delete(message_id);
                    done.push(Activity::MutuallyDeleted(message_id));
                }
                _ => {
                    let upto_seq = rng.gen_range(1..=last.min(5));
                    self.clear_history_for_me(&key, upto_seq);
                    done.push(Activity::ClearedHistory {
                        channel: key,
                        upto_seq,
                    });
                }
            }
        }
        done
    }

    /// Who can send in a channel (participants or current members).
    pub(super) fn senders_of(&self, key: &ChannelKey) -> Vec<String> {
        match key.participants() {
            Some((a, b)) => vec![a.to_string(), b.to_string()],
            None => self.groups[&key.fake_id].members.iter().cloned().collect(),
        }
    }

    pub(super) fn set_my_read_seq(&mut self, key: &ChannelKey, seq: u32) {
        self.channel_mut(key).my_read_seq = seq;
    }

    // ---- tokens and cursors --------------------------------------------------------

    /// `POST /v1/user/login`: flag 0 (APP) always issues a new token and drops the
    /// previous APP token; flags 1 and 2 reuse a still-valid token of the same flag.
    pub fn login(
        &mut self,
        username: &str,
        password: &str,
        flag: u8,
    ) -> Result<String, LoginError> {
        if username.is_empty() {
            return Err(LoginError::MissingUsername);
        }
        if password.is_empty() {
            return Err(LoginError::MissingPassword);
        }
        let user = self
            .users
            .values()
            .find(|u| u.username == username)
            .ok_or(LoginError::UnknownUser)?;
        if user.password != password {
            return Err(LoginError::WrongPassword);
        }
        let uid = user.uid.clone();
        let slot = (uid.clone(), flag);
        if let Some(token) = self.device_tokens.get(&slot) {
            if flag != 0 && self.tokens.contains_key(token) {
                return Ok(token.clone());
            }
            let old = token.clone();
            self.tokens.remove(&old);
        }
        let token = self.random_hex();
        self.tokens.insert(token.clone(), Session { uid });
        self.device_tokens.insert(slot, token.clone());
        Ok(token)
    }

    /// The uid a token belongs to, if it is still valid.
    pub fn token_uid(&self, token: &str) -> Option<&str> {
        self.tokens.get(token).map(|s| s.uid.as_str())
    }

    /// Every issued token stops working (answers 401) until the next login.
    pub fn expire_tokens(&mut self) {
        self.tokens.clear();
        self.device_tokens.clear();
    }

    /// The extra-sync cursor cache (Redis hash `messageExtraVersion:<uid><source>`, field
    /// `<fakeChannelID>-<channelType>`): a cached value at or above the request wins;
    /// otherwise the request is stored. Returns the version to query from.
    pub(super) fn extra_cursor(
        &mut self,
        uid: &str,
        source: &str,
        key: &ChannelKey,
        requested: i64,
    ) -> i64 {
        let slot = (
            format!("{uid}{source}"),
            format!("{}-{}", key.fake_id, key.channel_type),
        );
        let cached = self.extra_cursors.get(&slot).copied().unwrap_or(0);
        if cached >= requested {
            return cached;
        }
        self.extra_cursors.insert(slot, requested);
        requested
    }
}
