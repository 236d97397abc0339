//! Changes to the world: posting, editing, revoking, deleting, reacting, clearing and
//! leaving, plus a random mix of them for demos.
//!
//! Every change to a message's extra state takes a new version from the world's monotonic
//! microsecond clock; every reaction change takes the channel's next reaction seq.

use rand::Rng;
use serde_json::{json, Value};

use super::world::{
    ChannelKey, Message, MessageExtra, MessageRef, Reaction, World, GROUP, SYSTEM_UID,
};

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

impl World {
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
            expire: 0,
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

    /// Rewrite a stored message's original payload in place, as an operator repairing a
    /// record in the database would (no extra row, no new version).
    pub fn replace_payload(&mut self, message_id: u64, payload: Value) {
        let (ci, seq) = self.locate(message_id);
        self.channels[ci].messages[seq as usize - 1].payload = payload;
    }

    /// Give a message a self-destruct timer: it is served with `is_deleted=1` once
    /// `seconds` have passed since it was sent.
    pub fn set_expire(&mut self, message_id: u64, seconds: u32) {
        let (ci, seq) = self.locate(message_id);
        self.channels[ci].messages[seq as usize - 1].expire = seconds;
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
}
