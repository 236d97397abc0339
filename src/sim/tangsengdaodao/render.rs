//! The JSON the server answers with: message objects, extra rows, reaction rows, user details
//! and group details, always for one viewer (docs/upstreams/tangsengdaodao.md).

use chrono::{DateTime, FixedOffset};
use serde_json::{json, Map, Value};

use super::world::{Channel, Group, Message, MessageExtra, Reaction, User, World, PERSON};

/// `"YYYY-MM-DD HH:MM:SS"` in the server's local time.
pub(super) fn local_time(world: &World, unix_secs: i64) -> String {
    let offset = FixedOffset::east_opt(world.utc_offset_secs)
        .unwrap_or(FixedOffset::east_opt(0).expect("utc"));
    DateTime::from_timestamp(unix_secs, 0)
        .map(|t| {
            t.with_timezone(&offset)
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })
        .unwrap_or_default()
}

/// A Go type assertion in the real handler fails on this message: it panics, and gin's
/// recovery answers HTTP 500 with an empty body.
#[derive(Debug)]
pub(super) struct HandlerPanic;

/// Whether the channel-sync handler's first pass over WuKongIM's messages panics on this
/// payload: a JSON object whose `reply` is present and not null, and either not an object
/// or without a string `message_id` (`replyJson.(map[string]interface{})["message_id"].(string)`
/// in `newSyncChannelMessageResp`). This pass runs before the per-user offset filters, so a
/// message the user can no longer see still makes the whole answer fail.
pub(super) fn reply_panics(payload: &Value) -> bool {
    let Some(object) = payload.as_object().filter(|o| !o.is_empty()) else {
        return false;
    };
    match object.get("reply") {
        None | Some(Value::Null) => false,
        Some(Value::Object(reply)) => !matches!(reply.get("message_id"), Some(Value::String(_))),
        Some(_) => true,
    }
}

/// Whether `MsgSyncResp.from` panics on this payload: `visibles` present and not an array
/// (`visibles.([]interface{})`). It runs for the messages left after the offset filters.
fn visibles_panic(payload: &Value) -> bool {
    payload
        .get("visibles")
        .is_some_and(|v| !v.is_null() && !v.is_array())
}

/// How a message is being served.
#[derive(Clone, Copy)]
pub(super) enum Context {
    /// `conversation/sync` recents: extra versions forced to 0, no reply rewrite.
    Recents,
    /// `message/channel/sync`: reply payloads rewritten with the quoted message's edit.
    ChannelSync,
}

/// `channel_id` inside a message: for a person channel, the participant who is not the
/// sender.
fn message_channel_id(channel: &Channel, message: &Message) -> String {
    let key = channel.key();
    match key.participants() {
        Some((a, b)) if key.channel_type == PERSON => {
            if message.from_uid == a {
                b.to_string()
            } else {
                a.to_string()
            }
        }
        _ => key.fake_id.clone(),
    }
}

pub(super) fn message_json(
    world: &World,
    channel: &Channel,
    message: &Message,
    viewer: &str,
    context: Context,
) -> Result<Value, HandlerPanic> {
    let mut payload = message.payload.clone();
    if visibles_panic(&payload) {
        return Err(HandlerPanic);
    }
    if let Context::ChannelSync = context {
        rewrite_reply(world, &mut payload)?;
    }
    let force_zero = matches!(context, Context::Recents);
    let mut out = Map::new();
    out.insert(
        "header".into(),
        json!({"no_persist": 0, "red_dot": 1, "sync_once": 0}),
    );
    out.insert("setting".into(), json!(message.setting));
    out.insert("message_id".into(), json!(message.message_id));
    out.insert(
        "message_idstr".into(),
        json!(message.message_id.to_string()),
    );
    out.insert("message_seq".into(), json!(message.message_seq));
    out.insert("client_msg_no".into(), json!(message.client_msg_no));
    out.insert("from_uid".into(), json!(message.served_from_uid()));
    out.insert(
        "channel_id".into(),
        json!(message_channel_id(channel, message)),
    );
    out.insert("channel_type".into(), json!(channel.key().channel_type));
    out.insert("timestamp".into(), json!(message.timestamp));
    out.insert("payload".into(), payload);
    out.insert("signal_payload".into(), json!(""));
    if message.expire > 0 {
        out.insert("expire".into(), json!(message.expire));
    }
    if !message.reactions.is_empty() {
        let reactions: Vec<Value> = message
            .reactions
            .iter()
            .map(|r| reaction_json(world, r))
            .collect();
        out.insert("reactions".into(), Value::Array(reactions));
    }
    let deleted = message.is_deleted_for(viewer, channel.clear_offset());
    out.insert("is_deleted".into(), json!(i32::from(deleted)));
    out.insert("readed".into(), json!(0));
    let mut extra_version = 0;
    if let Some(extra) = &message.extra {
        if extra.revoke {
            out.insert("revoke".into(), json!(1));
        }
        if !extra.revoker.is_empty() {
            out.insert("revoker".into(), json!(extra.revoker));
        }
        if extra.readed_count > 0 {
            out.insert("readed_count".into(), json!(extra.readed_count));
        }
        if !force_zero {
            extra_version = extra.version;
        }
        out.insert(
            "message_extra".into(),
            extra_json(message, extra, force_zero),
        );
    }
    out.insert("extra_version".into(), json!(extra_version));
    Ok(Value::Object(out))
}

/// A quoted message that was edited is shown with its edit (the handler's second pass).
fn rewrite_reply(world: &World, payload: &mut Value) -> Result<(), HandlerPanic> {
    if reply_panics(payload) {
        return Err(HandlerPanic);
    }
    let Some(reply) = payload.get_mut("reply").and_then(Value::as_object_mut) else {
        return Ok(());
    };
    let Some(Value::String(quoted_id)) = reply.get("message_id") else {
        return Ok(());
    };
    let edited = quoted_id
        .parse::<u64>()
        .ok()
        .and_then(|id| world.message(id))
        .and_then(|(_, quoted)| quoted.extra.as_ref())
        .and_then(MessageExtra::content_edit_json);
    if let Some(edited) = edited {
        reply.insert("payload".into(), edited);
    }
    Ok(())
}

/// A reaction as embedded in a message.
fn reaction_json(world: &World, r: &Reaction) -> Value {
    json!({
        "seq": r.seq,
        "uid": r.uid,
        "name": r.name,
        "emoji": r.emoji,
        "is_deleted": i32::from(r.is_deleted),
        "created_at": local_time(world, r.created_at),
    })
}

/// A `reaction/sync` row; `channel_id` is what the viewer calls the channel.
pub(super) fn reaction_row_json(
    world: &World,
    channel: &Channel,
    message: &Message,
    r: &Reaction,
    viewer: &str,
) -> Value {
    json!({
        "message_id": message.message_id.to_string(),
        "channel_id": channel.key().id_for(viewer),
        "channel_type": channel.key().channel_type,
        "seq": r.seq,
        "uid": r.uid,
        "name": r.name,
        "emoji": r.emoji,
        "is_deleted": i32::from(r.is_deleted),
        "created_at": local_time(world, r.created_at),
    })
}

/// An extra row ("Extra sync"): full state, zero fields absent, `extra_version` always
/// present.
pub(super) fn extra_json(
    message: &Message,
    extra: &MessageExtra,
    force_zero_version: bool,
) -> Value {
    let mut out = Map::new();
    out.insert("message_id".into(), json!(message.message_id));
    out.insert(
        "message_id_str".into(),
        json!(message.message_id.to_string()),
    );
    if extra.revoke {
        out.insert("revoke".into(), json!(1));
    }
    if !extra.revoker.is_empty() {
        out.insert("revoker".into(), json!(extra.revoker));
    }
    if extra.readed_count > 0 {
        out.insert("readed_count".into(), json!(extra.readed_count));
    }
    if extra.is_mutual_deleted {
        out.insert("is_mutual_deleted".into(), json!(1));
    }
    if extra.is_pinned {
        out.insert("is_pinned".into(), json!(1));
    }
    if let Some(edit) = extra.content_edit_json() {
        out.insert("content_edit".into(), edit);
    }
    if extra.edited_at > 0 {
        out.insert("edited_at".into(), json!(extra.edited_at));
    }
    let version = if force_zero_version { 0 } else { extra.version };
    out.insert("extra_version".into(), json!(version));
    Value::Object(out)
}

/// `UserDetailResp` as seen by `viewer`.
pub(super) fn user_json(world: &World, user: &User, viewer: &str) -> Value {
    let is_friend = world
        .channel(&super::world::ChannelKey::person(viewer, &user.uid))
        .is_some();
    let mut out = json!({
        "uid": user.uid,
        "name": user.name,
        "username": "",
        "mute": 0,
        "top": 0,
        "sex": user.sex,
        "category": user.category,
        "short_no": user.short_no,
        "chat_pwd_on": 0,
        "screenshot": 1,
        "revoke_remind": 1,
        "receipt": 1,
        "online": 0,
        "last_offline": world.last_timestamp_hint(),
        "device_flag": 1,
        "follow": i32::from(is_friend),
        "be_deleted": 0,
        "be_blacklist": 0,
        "code": "",
        "vercode": format!("{}@1", &user.uid[..user.uid.len().min(8)]),
        "source_desc": "",
        "remark": "",
        "status": 1,
        "is_upload_avatar": 0,
        "robot": 0,
        "is_destroy": 0,
        "flame": 0,
        "flame_second": 0,
        "join_group_invite_uid": "",
        "join_group_invite_name": "",
        "join_group_time": "",
    });
    if user.uid == viewer {
        out["zone"] = json!(user.zone);
        out["phone"] = json!(user.phone);
    }
    out
}

/// `GroupResp` as seen by `viewer`.
pub(super) fn group_json(world: &World, group: &Group, viewer: &str) -> Value {
    let member = group.members.contains(viewer);
    let role = if group.owner == viewer { 1 } else { 0 };
    let created = local_time(world, group.created_at);
    json!({
        "group_no": group.group_no,
        "group_type": 0,
        "category": "",
        "name": group.name,
        "remark": "",
        "notice": group.notice,
        "mute": 0,
        "top": 0,
        "show_nick": 0,
        "save": i32::from(group.saved),
        "forbidden": 0,
        "invite": 0,
        "chat_pwd_on": 0,
        "screenshot": 0,
        "revoke_remind": 1,
        "join_group_remind": 0,
        "forbidden_add_friend": 0,
        "status": 1,
        "receipt": 0,
        "flame": 0,
        "flame_second": 0,
        "allow_view_history_msg": 1,
        "allow_member_pinned_message": 0,
        "member_count": group.members.len(),
        "online_count": 0,
        "quit": i32::from(!member),
        "role": if member { role } else { 0 },
        "forbidden_expir_time": 0,
        "created_at": created,
        "updated_at": created,
        "version": group.created_at * 1000,
    })
}
