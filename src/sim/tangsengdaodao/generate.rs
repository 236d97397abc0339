//! Deterministic world generation: the same [`WorldSpec`] always yields the same world.
//!
//! Messages are laid out on one timeline, oldest first, and spread over the conversations
//! with a skewed (Zipf-like) weight so a few chats are busy and most are quiet. Edits,
//! revokes, mutual deletes, read counts, pins and reaction toggles are collected as timed
//! events and replayed in time order, so extra versions and reaction seqs grow the way a
//! live server's would. Generation never reads the wall clock.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::payloads::payload_for;
use super::world::{crc32, ChannelKey, Group, User, World, SYSTEM_UID, TSDD_SYSTEM_UID};
use crate::sim::text::{self, Lang};

/// Reaction emoji, most popular first.
pub const EMOJI: &[&str] = &["👍", "❤️", "😂", "🎉", "😮", "🙏", "👌", "😢"];

/// What to generate.
#[derive(Clone, Debug)]
pub struct WorldSpec {
    pub seed: u64,
    /// Other users besides the archiving one (and TSDD's system account).
    pub users: usize,
    pub groups: usize,
    /// One-to-one chats of the archiving user (at most `users`).
    pub direct_chats: usize,
    /// Total messages over all conversations, system notices included.
    pub messages: usize,
    /// Unix seconds of the end of the generated timeline.
    pub end_time: i64,
    /// Length of the timeline in days.
    pub days: u32,
    pub me_username: String,
    pub me_password: String,
    /// Groups the archiving user has been removed from by the end of the timeline.
    pub left_groups: usize,
    /// Conversations whose history the archiving user cleared part of.
    pub cleared_channels: usize,
}

impl Default for WorldSpec {
    fn default() -> Self {
        WorldSpec {
            seed: 1,
            users: 30,
            groups: 5,
            direct_chats: 10,
            messages: 2_000,
            end_time: 1_748_736_000, // 2025-06-01T00:00:00Z
            days: 180,
            me_username: "008613800000000".into(),
            me_password: "archive-me-123".into(),
            left_groups: 0,
            cleared_channels: 0,
        }
    }
}

/// The language a user writes in, fixed by their uid.
pub fn lang_of(uid: &str) -> Lang {
    if crc32(uid.as_bytes()) % 10 < 7 {
        Lang::Chinese
    } else {
        Lang::English
    }
}

enum EventKind {
    Edit(Value),
    Revoke(String),
    MutualDelete,
    React(String, &'static str),
    ReadedCount(i64),
}

struct Event {
    at_us: i64,
    message_id: u64,
    kind: EventKind,
}

fn hex_id(rng: &mut StdRng) -> String {
    format!("{:016x}{:016x}", rng.gen::<u64>(), rng.gen::<u64>())
}

fn make_user(rng: &mut StdRng) -> User {
    let uid = hex_id(rng);
    let name = text::person_name(rng, lang_of(&uid));
    let phone = format!("13{:09}", rng.gen_range(0..1_000_000_000u64));
    User {
        username: format!("0086{phone}"),
        password: format!("{:012x}", rng.gen::<u64>() >> 16),
        sex: rng.gen_range(0..=1),
        short_no: format!("{:010}", rng.gen_range(0..10_000_000_000u64)),
        zone: "0086".into(),
        phone,
        category: String::new(),
        name,
        uid,
    }
}

impl World {
    /// Build a world from `spec`; deterministic for a given spec.
    pub fn generate(spec: &WorldSpec) -> World {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let mut me = make_user(&mut rng);
        me.name = text::person_name(&mut rng, Lang::Chinese);
        me.username = spec.me_username.clone();
        me.password = spec.me_password.clone();
        let me_uid = me.uid.clone();
        let mut world = World::new(me, spec.seed);

        let others: Vec<User> = (0..spec.users).map(|_| make_user(&mut rng)).collect();
        for user in &others {
            world.add_user(user.clone());
        }
        let start = spec.end_time - i64::from(spec.days.max(1)) * 86_400;

        // Conversations: TSDD's notice chat, direct chats, groups.
        let mut keys = vec![ChannelKey::person(&me_uid, TSDD_SYSTEM_UID)];
        let mut peers: Vec<&User> = others.iter().collect();
        peers.shuffle(&mut rng);
        for peer in peers.iter().take(spec.direct_chats) {
            keys.push(ChannelKey::person(&me_uid, &peer.uid));
        }
        for _ in 0..spec.groups {
            let group_no = hex_id(&mut rng);
            let max = others.len().clamp(1, 200);
            let cap = if rng.gen_bool(0.2) { 200 } else { 30 };
            let size = rng.gen_range(max.min(2)..=max.min(cap));
            let mut members: std::collections::BTreeSet<String> = others
                .choose_multiple(&mut rng, size)
                .map(|u| u.uid.clone())
                .collect();
            members.insert(me_uid.clone());
            let listed: Vec<&String> = members.iter().collect();
            let owner = if rng.gen_bool(0.2) {
                me_uid.clone()
            } else {
                listed[rng.gen_range(0..listed.len())].clone()
            };
            world.add_group(Group {
                name: text::group_name(&mut rng),
                owner,
                members,
                saved: rng.gen_bool(0.5),
                notice: if rng.gen_bool(0.3) {
                    text::sentence(&mut rng, Lang::Chinese)
                } else {
                    String::new()
                },
                created_at: start,
                group_no: group_no.clone(),
            });
            keys.push(ChannelKey::group(&group_no));
        }

        // Skewed weights: a few busy chats, many quiet ones; the notice chat stays quiet.
        let mut weights: Vec<f64> = (0..keys.len())
            .map(|k| 1.0 / ((k + 1) as f64).powf(0.9))
            .collect();
        weights[1..].shuffle(&mut rng);
        weights[0] = weights.iter().cloned().fold(f64::MAX, f64::min) * 0.3;
        let mut cumulative = Vec::with_capacity(weights.len());
        let mut total = 0.0;
        for w in &weights {
            total += w;
            cumulative.push(total);
        }

        let members_of: Vec<Vec<String>> = keys.iter().map(|k| world.senders_of(k)).collect();
        let span_us = (spec.end_time - start) * 1_000_000;
        let start_us = start * 1_000_000;
        let n = spec.messages.max(1) as i64;
        let mut events = Vec::new();
        let mut last_us = start_us;
        for i in 0..spec.messages as i64 {
            let step = span_us / n;
            let at_us = (start_us + span_us * i / n + rng.gen_range(0..step.max(1))).max(last_us);
            last_us = at_us;
            let pick = rng.gen::<f64>() * total;
            let ci = cumulative
                .partition_point(|&c| c < pick)
                .min(keys.len() - 1);
            let key = &keys[ci];
            let members = &members_of[ci];
            let from = pick_sender(&mut rng, key, members, &me_uid);
            let payload = payload_for(&mut rng, &world, key, members, &from, at_us);
            let from = if (1000..=2000).contains(&payload["type"].as_i64().unwrap_or(0)) {
                SYSTEM_UID.to_string()
            } else {
                from
            };
            let placed = world.post_message_at(key, &from, payload, at_us);
            plan_events(
                &mut rng,
                &mut events,
                &world,
                placed.message_id,
                key,
                members,
                &from,
                at_us,
            );
        }

        events.sort_by_key(|e| e.at_us);
        let end_us = spec.end_time * 1_000_000;
        for event in events {
            let at = event.at_us.min(end_us);
            match event.kind {
                EventKind::Edit(payload) => {
                    world.edit_at(event.message_id, &payload, at);
                }
                EventKind::Revoke(by) => world.revoke_at(event.message_id, &by, at),
                EventKind::MutualDelete => world.mutual_delete_at(event.message_id, at),
                EventKind::React(uid, emoji) => {
                    world.toggle_reaction_at(event.message_id, &uid, emoji, at);
                }
                EventKind::ReadedCount(count) => {
                    world.set_readed_count_at(event.message_id, count, at)
                }
            }
        }

        // Read positions: most chats read to the end, some with a few unread.
        for key in &keys {
            let last = world.channel(key).map_or(0, |c| c.last_seq());
            let read = if last > 0 && rng.gen_bool(0.3) {
                last - rng.gen_range(1..=last.min(30))
            } else {
                last
            };
            world.set_my_read_seq(key, read);
        }
        let busy: Vec<ChannelKey> = keys
            .iter()
            .filter(|k| world.channel(k).is_some_and(|c| c.last_seq() >= 10))
            .cloned()
            .collect();
        for key in busy.iter().rev().take(spec.cleared_channels) {
            let last = world.channel(key).map_or(0, |c| c.last_seq());
            world.clear_history_for_me(key, rng.gen_range(1..=last / 2));
        }
        let groups: Vec<String> = world.groups().map(|g| g.group_no.clone()).collect();
        for group_no in groups.iter().take(spec.left_groups) {
            if world.group(group_no).is_some_and(|g| g.owner != me_uid) {
                world.remove_me_from_group_at(group_no, end_us);
            }
        }
        world
    }
}

fn pick_sender(rng: &mut StdRng, key: &ChannelKey, members: &[String], me: &str) -> String {
    if let Some((a, b)) = key.participants() {
        let peer = if a == me { b } else { a };
        if peer == TSDD_SYSTEM_UID || rng.gen_bool(0.55) {
            return peer.to_string();
        }
        return me.to_string();
    }
    if rng.gen_bool(0.12) {
        return me.to_string();
    }
    // Skew towards the first members: every group has its chatterboxes.
    let i = (rng.gen::<f64>().powi(2) * members.len() as f64) as usize;
    members[i.min(members.len() - 1)].clone()
}

#[allow(clippy::too_many_arguments)]
fn plan_events(
    rng: &mut StdRng,
    events: &mut Vec<Event>,
    world: &World,
    message_id: u64,
    key: &ChannelKey,
    members: &[String],
    from: &str,
    at_us: i64,
) {
    let later = |rng: &mut StdRng| at_us + rng.gen_range(1_000_000..7_200_000_000i64);
    let is_system = from == SYSTEM_UID || from == TSDD_SYSTEM_UID;
    if !is_system && rng.gen_bool(0.02) {
        let content = text::message(rng, lang_of(from));
        let at = later(rng);
        events.push(Event {
            at_us: at,
            message_id,
            kind: EventKind::Edit(json!({"type": 1, "content": content})),
        });
        if rng.gen_bool(0.2) {
            let again = format!("{content}（补充）");
            let at = at + rng.gen_range(1_000_000..600_000_000);
            events.push(Event {
                at_us: at,
                message_id,
                kind: EventKind::Edit(json!({"type": 1, "content": again})),
            });
        }
    }
    if !is_system && rng.gen_bool(0.01) {
        let by = match world.group(&key.fake_id) {
            Some(group) if rng.gen_bool(0.2) => group.owner.clone(),
            _ => from.to_string(),
        };
        events.push(Event {
            at_us: at_us + rng.gen_range(1_000_000..120_000_000),
            message_id,
            kind: EventKind::Revoke(by),
        });
    }
    if !is_system && rng.gen_bool(0.004) {
        events.push(Event {
            at_us: later(rng),
            message_id,
            kind: EventKind::MutualDelete,
        });
    }
    if key.participants().is_none() && !is_system && rng.gen_bool(0.03) {
        let count = rng.gen_range(1..=members.len() as i64);
        events.push(Event {
            at_us: later(rng),
            message_id,
            kind: EventKind::ReadedCount(count),
        });
    }
    if rng.gen_bool(0.04) {
        for _ in 0..rng.gen_range(1..=4) {
            let uid = members[rng.gen_range(0..members.len())].clone();
            if uid == TSDD_SYSTEM_UID {
                continue;
            }
            let emoji = EMOJI[(rng.gen::<f64>().powi(2) * EMOJI.len() as f64) as usize];
            let at = later(rng);
            events.push(Event {
                at_us: at,
                message_id,
                kind: EventKind::React(uid.clone(), emoji),
            });
            if rng.gen_bool(0.15) {
                // Taken back (same emoji) or swapped (another emoji).
                let second = if rng.gen_bool(0.5) {
                    emoji
                } else {
                    EMOJI[rng.gen_range(0..EMOJI.len())]
                };
                let at = at + rng.gen_range(1_000_000..60_000_000);
                events.push(Event {
                    at_us: at,
                    message_id,
                    kind: EventKind::React(uid, second),
                });
            }
        }
    }
}
