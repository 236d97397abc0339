//! The four sync endpoints: conversations, channel messages, message extras and reactions,
//! with their windows, limits, filters and quirks (docs/upstreams/tangsengdaodao.md).

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::faults::{FaultKind, Malformed};
use super::render::{self, Context};
use super::server::{authenticate, parse, Answer, AppState, Refusal, CHANNEL_SYNC_PATH};
use super::world::{ChannelKey, Message, GROUP, PERSON};
use crate::sim::faults::Stage;

/// WuKongIM's cap on channel-sync `limit`.
const CHANNEL_SYNC_MAX_LIMIT: i64 = 10_000;
/// WuKongIM's `conversation.userMaxCount`.
const MAX_CONVERSATIONS: usize = 1000;

// ---- conversation sync --------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default)]
struct ConversationSyncReq {
    version: i64,
    last_msg_seqs: String,
    msg_count: i64,
    #[allow(dead_code)]
    device_uuid: String,
}

/// WK `getChannelLastMsgSeqMap`: `id:type:seq` entries joined by `|`; entries that do not
/// split into exactly three parts are skipped; unparsable numbers count as 0.
fn parse_last_msg_seqs(raw: &str) -> HashMap<(String, u8), u64> {
    let mut out = HashMap::new();
    for entry in raw.split('|') {
        let parts: Vec<&str> = entry.split(':').collect();
        if parts.len() != 3 {
            continue;
        }
        let channel_type = parts[1].parse::<u8>().unwrap_or(0);
        let seq = parts[2].parse::<u64>().unwrap_or(0);
        out.insert((parts[0].to_string(), channel_type), seq);
    }
    out
}

pub(super) async fn conversation_sync(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let world = state.world();
    let me = authenticate(&world, &headers)?;
    let req: ConversationSyncReq = parse(&body)?;
    let mut conversations = Vec::new();
    let mut users = Vec::new();
    let mut groups = Vec::new();
    if req.msg_count > 0 {
        let listed = parse_last_msg_seqs(&req.last_msg_seqs);
        let mut candidates: Vec<_> = world
            .channels()
            .iter()
            .filter(|c| c.last_seq() > 0 && world.is_member(c.key(), &me))
            .collect();
        candidates
            .sort_by_key(|c| std::cmp::Reverse(c.messages().last().map_or(0, |m| m.timestamp)));
        candidates.truncate(MAX_CONVERSATIONS);
        for channel in candidates {
            let key = channel.key();
            let channel_id = key.id_for(&me);
            let lower = match listed.get(&(channel_id.clone(), key.channel_type)) {
                Some(&seq) => seq,
                None if req.version > 0 => u64::from(channel.my_read_seq()),
                None => 0,
            };
            let last = channel.last_seq();
            if u64::from(last) <= lower {
                continue;
            }
            let lower = lower as u32;
            let count = (req.msg_count as u64).min(u64::from(last - lower)) as u32;
            let window = &channel.messages()[(last - count) as usize..last as usize];
            let newest = window.last().expect("window is not empty");
            let recents: Vec<&Message> = window
                .iter()
                .rev()
                .filter(|m| m.message_seq > channel.my_offset())
                .collect();
            let mut rendered = Vec::with_capacity(recents.len());
            for m in &recents {
                match render::message_json(&world, channel, m, &me, Context::Recents) {
                    Ok(value) => rendered.push(value),
                    Err(render::HandlerPanic) => return Err(Refusal::Panic),
                }
            }
            if recents.is_empty() {
                continue;
            }
            let last_client_msg_no = recents
                .iter()
                .find(|m| !m.is_deleted_for(&me, channel.clear_offset()))
                .map_or(newest.client_msg_no.as_str(), |m| m.client_msg_no.as_str());
            let unread = channel.messages()[channel.my_read_seq() as usize..]
                .iter()
                .filter(|m| m.from_uid != me)
                .count();
            let mut conversation = json!({
                "channel_id": channel_id,
                "channel_type": key.channel_type,
                "timestamp": recents[0].timestamp,
                "last_msg_seq": newest.message_seq,
                "last_client_msg_no": last_client_msg_no,
                "offset_msg_seq": 0,
                "version": newest.timestamp * 1_000_000_000,
                "recents": rendered,
            });
            if unread > 0 {
                conversation["unread"] = json!(unread);
            }
            conversations.push(conversation);
            if key.channel_type == PERSON {
                if let Some(user) = world.user(&channel_id) {
                    users.push(render::user_json(&world, user, &me));
                }
            } else if let Some(group) = world.group(&channel_id) {
                groups.push(render::group_json(&world, group, &me));
            }
        }
    }
    Ok(Json(json!({
        "uid": me,
        "conversations": conversations,
        "users": users,
        "groups": groups,
        "channel_status": [],
    }))
    .into_response())
}

// ---- channel sync -------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default)]
struct ChannelSyncReq {
    channel_id: String,
    channel_type: u8,
    start_message_seq: u32,
    end_message_seq: u32,
    limit: i64,
    pull_mode: i64,
    #[allow(dead_code)]
    device_uuid: String,
    #[allow(dead_code)]
    login_uid: String,
}

/// WK's window selection over a gap-free seq range ("Channel sync"); returns the index range.
fn channel_window(
    last: u32,
    start: u32,
    end: u32,
    limit: i64,
    pull_mode: i64,
) -> std::ops::Range<usize> {
    let limit = limit.clamp(0, CHANNEL_SYNC_MAX_LIMIT) as u64;
    let last = u64::from(last);
    let (start, end) = (u64::from(start), u64::from(end));
    let empty = 0..0;
    // Seqs `lo..=hi` map to indexes `lo-1..hi`.
    let newest = |lo: u64, hi: u64| -> std::ops::Range<usize> {
        if limit == 0 || lo > hi {
            return 0..0;
        }
        let lo = lo.max(hi.saturating_sub(limit) + 1);
        (lo - 1) as usize..hi as usize
    };
    if start == 0 && end == 0 {
        return newest(1, last);
    }
    if pull_mode == 1 {
        let lo = start.max(1);
        let hi = if end == 0 { last } else { (end - 1).min(last) };
        if lo > hi {
            return empty;
        }
        let hi = if limit == 0 {
            hi
        } else {
            hi.min(lo + limit - 1)
        };
        return (lo - 1) as usize..hi as usize;
    }
    if end != 0 && end > start {
        return empty;
    }
    newest(end + 1, start.min(last))
}

pub(super) async fn channel_sync(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let world = state.world();
    let me = authenticate(&world, &headers)?;
    let req: ChannelSyncReq = parse(&body)?;
    if req.channel_id.is_empty() {
        return Err(Refusal::BadRequest("频道ID不能为空！"));
    }
    if state.faults.channel_fails(&req.channel_id) {
        return Err(Refusal::BadRequest("同步频道内的消息失败！"));
    }
    let echo = |start: u32, end: u32, messages: Vec<Value>| {
        Ok(Json(json!({
            "start_message_seq": start,
            "end_message_seq": end,
            "pull_mode": 0,
            "more": 0,
            "messages": messages,
        }))
        .into_response())
    };
    let key = match req.channel_type {
        PERSON => ChannelKey::person(&me, &req.channel_id),
        GROUP => {
            let key = ChannelKey::group(&req.channel_id);
            if !world.is_member(&key, &me) {
                return echo(req.end_message_seq, req.end_message_seq, Vec::new());
            }
            key
        }
        other => ChannelKey {
            channel_type: other,
            fake_id: req.channel_id.clone(),
        },
    };
    let Some(channel) = world.channel(&key) else {
        return echo(req.start_message_seq, req.end_message_seq, Vec::new());
    };
    let range = channel_window(
        channel.last_seq(),
        req.start_message_seq,
        req.end_message_seq,
        req.limit,
        req.pull_mode,
    );
    let window = &channel.messages()[range];
    // the handler's first pass runs over everything WuKongIM returned, filters come later
    if window.iter().any(|m| render::reply_panics(&m.payload)) {
        return Err(Refusal::Panic);
    }
    let mut messages = Vec::with_capacity(window.len());
    for message in window {
        if message.message_seq <= channel.my_offset() {
            continue;
        }
        match render::message_json(&world, channel, message, &me, Context::ChannelSync) {
            Ok(value) => messages.push(value),
            Err(render::HandlerPanic) => return Err(Refusal::Panic),
        }
    }
    if !messages.is_empty() {
        if let Some(FaultKind::Malformed(how)) =
            state.faults.take(Stage::Malformed, CHANNEL_SYNC_PATH)
        {
            let middle = messages.len() / 2;
            let victim = &mut messages[middle];
            match how {
                Malformed::SeqAsString => {
                    victim["message_seq"] = json!(victim["message_seq"].to_string());
                }
                Malformed::PayloadNotObject => {
                    victim["payload"] = json!(victim["payload"].to_string());
                }
            }
        }
    }
    echo(req.start_message_seq, req.end_message_seq, messages)
}

// ---- extra sync ---------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default)]
struct ExtraSyncReq {
    channel_id: String,
    channel_type: u8,
    extra_version: i64,
    source: String,
    limit: i64,
}

fn request_key(me: &str, channel_id: &str, channel_type: u8) -> ChannelKey {
    match channel_type {
        PERSON => ChannelKey::person(me, channel_id),
        _ => ChannelKey {
            channel_type,
            fake_id: channel_id.to_string(),
        },
    }
}

pub(super) async fn extra_sync(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let mut world = state.world();
    let me = authenticate(&world, &headers)?;
    let req: ExtraSyncReq = parse(&body)?;
    if req.channel_id.trim().is_empty() {
        return Err(Refusal::BadRequest("频道ID不能为空！"));
    }
    let limit = if req.limit <= 0 {
        100
    } else {
        req.limit.min(10_000)
    } as usize;
    let key = request_key(&me, &req.channel_id, req.channel_type);
    let version = world.extra_cursor(&me, &req.source, &key, req.extra_version);
    let Some(channel) = world.channel(&key) else {
        return Ok(Json(json!([])).into_response());
    };
    let rows: Vec<&Message> = if version == 0 {
        let mut newest: Vec<&Message> = channel.extras_newest().take(limit).collect();
        newest.reverse();
        newest
    } else {
        channel.extras_after(version).take(limit).collect()
    };
    let rows: Vec<Value> = rows
        .into_iter()
        .filter_map(|m| m.extra.as_ref().map(|e| render::extra_json(m, e, false)))
        .collect();
    Ok(Json(Value::Array(rows)).into_response())
}

// ---- reaction sync ------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(default)]
struct ReactionSyncReq {
    channel_id: String,
    channel_type: u8,
    seq: i64,
    limit: u64,
}

pub(super) async fn reaction_sync(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let world = state.world();
    let me = authenticate(&world, &headers)?;
    let req: ReactionSyncReq = parse(&body)?;
    let limit = match req.limit {
        0 => 100,
        n => n.min(1000),
    } as usize;
    let key = if req.channel_id.contains('@') {
        ChannelKey {
            channel_type: req.channel_type,
            fake_id: req.channel_id.clone(),
        }
    } else {
        request_key(&me, &req.channel_id, req.channel_type)
    };
    let Some(channel) = world.channel(&key) else {
        return Ok(Json(json!([])).into_response());
    };
    let rows: Vec<Value> = if req.seq > 0 {
        channel
            .reactions_after(req.seq)
            .take(limit)
            .map(|(m, r)| render::reaction_row_json(&world, channel, m, r, &me))
            .collect()
    } else {
        channel
            .reactions_newest()
            .take(limit)
            .map(|(m, r)| render::reaction_row_json(&world, channel, m, r, &me))
            .collect()
    };
    Ok(Json(Value::Array(rows)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_latest_takes_newest_limit() {
        assert_eq!(channel_window(100, 0, 0, 10, 0), 90..100);
        assert_eq!(channel_window(100, 0, 0, 10, 1), 90..100);
        assert_eq!(channel_window(5, 0, 0, 10, 0), 0..5);
        assert_eq!(channel_window(100, 0, 0, 0, 1), 0..0);
    }

    #[test]
    fn window_up_is_start_inclusive_end_exclusive() {
        assert_eq!(channel_window(100, 11, 21, 50, 1), 10..20);
        assert_eq!(channel_window(100, 11, 21, 5, 1), 10..15);
        assert_eq!(channel_window(100, 95, 0, 50, 1), 94..100);
        assert_eq!(channel_window(100, 101, 0, 50, 1), 0..0);
        // limit 0 in up mode returns everything to the end
        assert_eq!(channel_window(100, 10, 0, 0, 1), 9..100);
        assert_eq!(channel_window(100, 0, 20, 50, 1), 0..19);
    }

    #[test]
    fn window_down_takes_newest_below_start() {
        assert_eq!(channel_window(100, 50, 40, 100, 0), 40..50);
        assert_eq!(channel_window(100, 50, 0, 5, 0), 45..50);
        assert_eq!(channel_window(100, 50, 60, 5, 0), 0..0);
        assert_eq!(channel_window(100, 0, 60, 5, 0), 0..0);
        assert_eq!(channel_window(100, 50, 0, 0, 0), 0..0);
        assert_eq!(channel_window(100, 500, 0, 5, 0), 95..100);
    }

    #[test]
    fn last_msg_seqs_parsing() {
        let parsed = parse_last_msg_seqs("g_1:2:15|u2:1:7|bad|a:b|x:1:zz|:2:3");
        assert_eq!(parsed.get(&("g_1".to_string(), 2)), Some(&15));
        assert_eq!(parsed.get(&("u2".to_string(), 1)), Some(&7));
        assert_eq!(parsed.get(&("x".to_string(), 1)), Some(&0));
        assert_eq!(parsed.len(), 4);
    }
}
