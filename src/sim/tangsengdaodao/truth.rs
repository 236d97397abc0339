//! An owned snapshot of the archiving user's whole world, for comparing an archive with.
//!
//! Ids, seqs and `from_uid` are given exactly as the server serves them, so a test can
//! match archive rows field by field. `visible` says whether channel sync can still
//! return the message to the archiving user today (member, and above the clear-history
//! offset); everything else is the full state whether visible or not.

use serde::Serialize;
use serde_json::Value;

use super::media::AttachmentTruth;
use super::world::{Channel, Message, World};

/// One conversation of the archiving user.
#[derive(Clone, Debug, Serialize)]
pub struct ChannelTruth {
    pub channel_type: u8,
    /// What the archiving user requests: peer uid or group number.
    pub channel_id: String,
    /// WuKongIM's key: `a@b` for person channels, the group number for groups.
    pub fake_id: String,
    /// Whether the archiving user can still pull this channel.
    pub is_member: bool,
    /// The archiving user's clear-history offset (0 = none).
    pub my_offset: u32,
    pub last_seq: u32,
    pub messages: Vec<MessageTruth>,
}

/// One message with its full current state.
#[derive(Clone, Debug, Serialize)]
pub struct MessageTruth {
    pub message_id: String,
    pub message_seq: u32,
    pub client_msg_no: String,
    /// As served: `""` for WuKongIM's system uid.
    pub from_uid: String,
    pub timestamp: i64,
    /// The original payload (edits never change it).
    pub payload: Value,
    /// The latest edit, parsed; `None` if never edited or not valid JSON.
    pub content_edit: Option<Value>,
    pub edited_at: Option<i64>,
    pub revoked: bool,
    pub revoker: Option<String>,
    pub mutually_deleted: bool,
    pub pinned: bool,
    pub readed_count: i64,
    /// `is_deleted` as served to the archiving user.
    pub is_deleted: bool,
    /// Whether channel sync can return it to the archiving user now.
    pub visible: bool,
    /// Version of the extra row, if the message has one.
    pub extra_version: Option<i64>,
    /// Every reaction row, removed ones included (one per uid).
    pub reactions: Vec<ReactionTruth>,
    /// The files the original payload references, in the order the archive lists them,
    /// with the bytes' sha256 and what the storage answers ([`World::attachments_of`]).
    pub attachments: Vec<AttachmentTruth>,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ReactionTruth {
    pub uid: String,
    pub name: String,
    pub emoji: String,
    pub is_deleted: bool,
    pub seq: i64,
}

impl World {
    /// Every channel the archiving user takes part in (or took part in), with all its
    /// messages, in channel creation order.
    pub fn truth(&self) -> Vec<ChannelTruth> {
        let me = self.me().uid.clone();
        self.channels()
            .iter()
            .filter(|c| self.took_part(c, &me))
            .map(|c| channel_truth(self, c, &me))
            .collect()
    }

    fn took_part(&self, channel: &Channel, me: &str) -> bool {
        match channel.key().participants() {
            Some((a, b)) => a == me || b == me,
            None => self.group(&channel.key().fake_id).is_some(),
        }
    }
}

fn channel_truth(world: &World, channel: &Channel, me: &str) -> ChannelTruth {
    let key = channel.key();
    let is_member = world.is_member(key, me);
    ChannelTruth {
        channel_type: key.channel_type,
        channel_id: key.id_for(me),
        fake_id: key.fake_id.clone(),
        is_member,
        my_offset: channel.my_offset(),
        last_seq: channel.last_seq(),
        messages: channel
            .messages()
            .iter()
            .map(|m| message_truth(world, channel, m, me, is_member))
            .collect(),
    }
}

fn message_truth(
    world: &World,
    channel: &Channel,
    m: &Message,
    me: &str,
    is_member: bool,
) -> MessageTruth {
    let extra = m.extra.as_ref();
    MessageTruth {
        message_id: m.message_id.to_string(),
        message_seq: m.message_seq,
        client_msg_no: m.client_msg_no.clone(),
        from_uid: m.served_from_uid().to_string(),
        timestamp: m.timestamp,
        payload: m.payload.clone(),
        content_edit: extra.and_then(|e| e.content_edit_json()),
        edited_at: extra.map(|e| e.edited_at).filter(|&t| t > 0),
        revoked: extra.is_some_and(|e| e.revoke),
        revoker: extra.map(|e| e.revoker.clone()).filter(|r| !r.is_empty()),
        mutually_deleted: extra.is_some_and(|e| e.is_mutual_deleted),
        pinned: extra.is_some_and(|e| e.is_pinned),
        readed_count: extra.map_or(0, |e| e.readed_count),
        is_deleted: m.is_deleted_for(me, channel.clear_offset()),
        visible: is_member && m.message_seq > channel.my_offset(),
        extra_version: extra.map(|e| e.version),
        reactions: m
            .reactions
            .iter()
            .map(|r| ReactionTruth {
                uid: r.uid.clone(),
                name: r.name.clone(),
                emoji: r.emoji.clone(),
                is_deleted: r.is_deleted,
                seq: r.seq,
            })
            .collect(),
        attachments: world.attachments_of(&m.payload),
    }
}
