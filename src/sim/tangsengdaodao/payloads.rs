//! Generated message payloads (docs/upstreams/tangsengdaodao.md, "Payloads"): text with
//! mentions and replies, image, GIF, voice, video, location, card, file, merged forward,
//! group system notices and a few types TSDD does not define. Shapes follow what the
//! official clients send.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde_json::{json, Value};

use super::generate::lang_of;
use super::world::{ChannelKey, World, TSDD_SYSTEM_UID};
use crate::sim::text::{self, Lang};

/// Payload type numbers TSDD does not define, sent by newer or forked clients.
pub const UNKNOWN_TYPES: &[i64] = &[15, 17, 42, 3001];

fn name_of(world: &World, uid: &str) -> String {
    world.user(uid).map(|u| u.name.clone()).unwrap_or_default()
}

fn file_url(rng: &mut StdRng, key: &ChannelKey, ext: &str) -> String {
    format!(
        "file/preview/chat/{}/{}/{:016x}.{ext}",
        key.channel_type,
        key.fake_id.replace('@', "_"),
        rng.gen::<u64>()
    )
}

fn extra_of(world: &World, uids: &[&str]) -> Value {
    Value::Array(
        uids.iter()
            .map(|u| json!({"uid": u, "name": name_of(world, u)}))
            .collect(),
    )
}

pub(super) fn payload_for(
    rng: &mut StdRng,
    world: &World,
    key: &ChannelKey,
    members: &[String],
    from: &str,
    at_us: i64,
) -> Value {
    let channel = world.channel(key);
    let seq = channel.map_or(0, |c| c.last_seq()) + 1;
    let is_group = key.participants().is_none();
    if from == TSDD_SYSTEM_UID {
        let content = format!(
            "您的账号于{}在新设备登录，如非本人操作请及时修改密码。",
            chrono::DateTime::from_timestamp(at_us / 1_000_000, 0)
                .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_default()
        );
        return json!({"type": 1, "content": content});
    }
    if is_group && seq <= 2 {
        let group = world.group(&key.fake_id).expect("group exists");
        let owner = group.owner.as_str();
        let invited: Vec<&str> = members
            .iter()
            .map(String::as_str)
            .filter(|u| *u != owner)
            .take(3)
            .collect();
        let mut uids = vec![owner];
        uids.extend(&invited);
        let names: Vec<String> = (1..uids.len()).map(|i| format!("{{{i}}}")).collect();
        if seq == 1 {
            return json!({
                "type": 1001,
                "content": format!("{{0}}邀请{}加入群聊", names.join("、")),
                "extra": extra_of(world, &uids),
                "creator": owner,
                "creator_name": name_of(world, owner),
                "version": at_us / 1000,
            });
        }
        return json!({
            "type": 1002,
            "content": format!("{{0}}邀请{}加入群聊", names.join("、")),
            "extra": extra_of(world, &uids),
            "from_uid": owner,
            "from_name": name_of(world, owner),
        });
    }
    let lang = lang_of(from);
    let roll = rng.gen_range(0..1000);
    match roll {
        0..=699 => text_payload(rng, world, key, members, from, seq),
        700..=789 => {
            let (w, h) = *[(1080, 1920), (1920, 1080), (750, 1334), (1024, 1024)]
                .choose(rng)
                .unwrap_or(&(800, 600));
            json!({"type": 2, "url": file_url(rng, key, "jpg"), "width": w, "height": h})
        }
        790..=814 => json!({
            "type": 3, "url": file_url(rng, key, "gif"), "width": 240, "height": 240,
            "category": "emoji", "title": text::pick(rng, &["哈哈", "赞", "OK", "加油"]), "format": "gif",
        }),
        815..=864 => json!({
            "type": 4, "url": file_url(rng, key, "amr"), "timeTrad": rng.gen_range(1..=60),
            "waveform": waveform(rng),
        }),
        865..=894 => json!({
            "type": 5, "url": file_url(rng, key, "mp4"), "cover": file_url(rng, key, "jpg"),
            "size": rng.gen_range(100_000..80_000_000u64), "width": 720, "height": 1280,
            "second": rng.gen_range(2..=180),
        }),
        895..=909 => json!({
            "type": 6, "lng": 116.0 + rng.gen::<f64>() * 5.0, "lat": 22.0 + rng.gen::<f64>() * 10.0,
            "title": text::place(rng), "address": text::place(rng), "img": file_url(rng, key, "png"),
        }),
        910..=924 => {
            let uid = &members[rng.gen_range(0..members.len())];
            json!({
                "type": 7, "uid": uid, "name": name_of(world, uid),
                "avatar": format!("users/{uid}/avatar"), "vercode": format!("{:08x}@2", rng.gen::<u32>()),
            })
        }
        925..=964 => {
            let (stem, ext) = *[
                ("季度报告", "pdf"),
                ("需求文档v3", "docx"),
                ("budget", "xlsx"),
                ("logs", "zip"),
            ]
            .choose(rng)
            .unwrap_or(&("file", "bin"));
            let mut payload = json!({
                "type": 8, "url": file_url(rng, key, ext), "name": format!("{stem}.{ext}"),
                "size": rng.gen_range(1_000..50_000_000u64),
            });
            if rng.gen_bool(0.5) {
                payload["ext"] = json!(ext);
            }
            payload
        }
        965..=979 => forward_payload(rng, world, key),
        980..=994 if is_group => {
            let target = &members[rng.gen_range(0..members.len())];
            let name = text::group_name(rng);
            json!({
                "type": 1005, "content": format!("{{0}}修改群名为\"{name}\""),
                "extra": extra_of(world, &[target.as_str()]),
            })
        }
        995..=999 => json!({
            "type": UNKNOWN_TYPES[rng.gen_range(0..UNKNOWN_TYPES.len())],
            "content": text::sentence(rng, lang), "data": {"v": rng.gen_range(1..9)},
        }),
        _ => text_payload(rng, world, key, members, from, seq),
    }
}

fn waveform(rng: &mut StdRng) -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..44).map(|_| B64[rng.gen_range(0..64)] as char).collect()
}

fn text_payload(
    rng: &mut StdRng,
    world: &World,
    key: &ChannelKey,
    members: &[String],
    from: &str,
    seq: u32,
) -> Value {
    let mut content = text::message(rng, lang_of(from));
    let mut payload = json!({"type": 1});
    if key.participants().is_none() && rng.gen_bool(0.05) {
        if rng.gen_bool(0.15) {
            content = format!("@所有人 {content}");
            payload["mention"] = json!({"all": 1});
        } else {
            let target = &members[rng.gen_range(0..members.len())];
            content = format!("@{} {content}", name_of(world, target));
            payload["mention"] = json!({"all": 0, "uids": [target]});
        }
    }
    if seq > 1 && rng.gen_bool(0.06) {
        let channel = world.channel(key).expect("channel has messages");
        let quoted_seq = seq - 1 - rng.gen_range(0..(seq - 1).min(20));
        if let Some(quoted) = channel.message(quoted_seq) {
            let mut quoted_payload = quoted.payload.clone();
            if let Some(object) = quoted_payload.as_object_mut() {
                object.remove("reply");
            }
            payload["reply"] = json!({
                "message_id": quoted.message_id.to_string(),
                "message_seq": quoted.message_seq,
                "from_uid": quoted.served_from_uid(),
                "from_name": name_of(world, &quoted.from_uid),
                "payload": quoted_payload,
            });
        }
    }
    payload["content"] = json!(content);
    payload
}

fn forward_payload(rng: &mut StdRng, world: &World, key: &ChannelKey) -> Value {
    let recent: Vec<_> = world
        .channel(key)
        .map(|c| {
            c.messages()
                .iter()
                .rev()
                .take(rng.gen_range(2..=5))
                .collect()
        })
        .unwrap_or_default();
    let mut msgs = Vec::new();
    let mut users = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for m in recent.iter().rev() {
        msgs.push(json!({
            "message_id": m.message_id.to_string(), "from_uid": m.served_from_uid(),
            "timestamp": m.timestamp, "payload": m.payload,
        }));
        if seen.insert(m.from_uid.clone()) {
            users.push(json!({
                "uid": m.served_from_uid(), "name": name_of(world, &m.from_uid),
                "avatar": format!("users/{}/avatar", m.from_uid),
            }));
        }
    }
    if msgs.is_empty() {
        msgs.push(json!({"message_id": "0", "from_uid": "", "timestamp": 0,
                         "payload": {"type": 1, "content": text::sentence(rng, Lang::Chinese)}}));
    }
    json!({"type": 11, "channel_type": key.channel_type, "users": users, "msgs": msgs})
}
