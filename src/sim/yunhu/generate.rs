//! Deterministic world generation: the same [`WorldSpec`] always yields the same world.
//!
//! Messages are laid out on one timeline, oldest first, over the chats with a skewed
//! (Zipf-like) weight so a few chats are busy and most are quiet; every content type the
//! community documents occurs (`docs/upstreams/yunhu.md`, "Content types"), plus an unknown
//! one. Edits, recalls and deletions-for-me are applied at
//! the end of the timeline. Generation never reads the wall clock.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::media;
use super::world::{Chat, Person, World, BOT, GROUP, USER};
use crate::connector::yunhu::pb;
use crate::sim::text::{self, Lang};

/// What to generate.
#[derive(Clone, Debug)]
pub struct WorldSpec {
    pub seed: u64,
    pub users: usize,
    pub groups: usize,
    pub bots: usize,
    /// Direct chats of the archiving user (at most `users`).
    pub direct_chats: usize,
    /// Total messages over all chats.
    pub messages: usize,
    /// Unix milliseconds of the end of the generated timeline.
    pub end_time_ms: u64,
    pub days: u32,
    /// The archiving user's token (the `token` header).
    pub token: String,
    /// Chats removed from the conversation list, still in the address book.
    pub unlisted_chats: usize,
    /// Groups joined late: their history starts above seq 1 (a group's `history_msg` off).
    pub late_joined_groups: usize,
    /// Per mille of messages deleted for the archiving user (seq gaps).
    pub hidden_per_mille: u32,
    /// Per mille of messages edited (one to three times).
    pub edited_per_mille: u32,
    /// Per mille of messages recalled.
    pub recalled_per_mille: u32,
    /// A recalled message's content is blanked in list results (else it is kept): nobody
    /// has documented which, so the fake does both.
    pub recall_blanks_content: bool,
}

impl Default for WorldSpec {
    fn default() -> Self {
        WorldSpec {
            seed: 1,
            users: 20,
            groups: 4,
            bots: 2,
            direct_chats: 8,
            messages: 2_000,
            end_time_ms: 1_755_566_778_727,
            days: 120,
            token: "0f3c2a4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b".into(),
            unlisted_chats: 1,
            late_joined_groups: 1,
            hidden_per_mille: 5,
            edited_per_mille: 30,
            recalled_per_mille: 15,
            recall_blanks_content: false,
        }
    }
}

pub(super) fn hex_id(rng: &mut StdRng) -> String {
    format!("{:016x}{:016x}", rng.gen::<u64>(), rng.gen::<u64>())
}

/// The language a user writes in, fixed by their id.
pub(super) fn lang_of(id: &str) -> Lang {
    if id.bytes().map(u32::from).sum::<u32>() % 10 < 7 {
        Lang::Chinese
    } else {
        Lang::English
    }
}

/// How long signed file URLs stay valid after the end of the timeline: longer than any
/// test or demo runs on the world's clock.
const SIGNED_URL_VALIDITY_SECS: u64 = 10 * 365 * 86_400;

/// Random content of a random type, every documented type plus an unknown one. Media
/// fields hold what Yunhu's clients see (bare keys, or URLs on Yunhu's hosts, files on
/// `chat-file` or signed on `chat-storage1` valid until `valid_until`); sizes and
/// dimensions are those of the bytes the fake serves for them ([`media`]).
fn random_content(rng: &mut StdRng, lang: Lang, valid_until: u64) -> (i64, pb::MsgContent) {
    let roll = rng.gen_range(0..100);
    let mut c = pb::MsgContent::default();
    let ty = match roll {
        0..=59 => {
            c.text = text::message(rng, lang);
            1
        }
        60..=67 => {
            c.image_url = format!("{:032x}.png", rng.gen::<u128>());
            // drawn as before, so the rest of the world stays the same; the served PNG's
            // own dimensions and size are what the message declares
            let _declared: (i64, i64, i64) = (
                rng.gen_range(100..2000),
                rng.gen_range(100..2000),
                rng.gen_range(10_000..3_000_000),
            );
            let (w, h) = media::png_size(&c.image_url);
            c.width = i64::from(w);
            c.height = i64::from(h);
            c.file_size = media::png_len(w, h) as i64;
            2
        }
        68..=71 => {
            c.text = format!(
                "## {}\n\n- {}",
                text::sentence(rng, lang),
                text::sentence(rng, lang)
            );
            3
        }
        72..=75 => {
            c.file_name = format!("{}.pdf", text::place(rng));
            let key = rng.gen::<u64>();
            let path = format!("{key:016x}.pdf");
            let host = if key % 2 == 0 {
                c.file_url = path.clone();
                "chat-file"
            } else {
                c.file_url = format!(
                    "https://chat-storage1.jwznb.com/{path}?sign={}&t={valid_until}",
                    media::sign(&path, valid_until)
                );
                media::SIGNED_HOST
            };
            let _declared: i64 = rng.gen_range(1_000..50_000_000);
            c.file_size = media::derived_len(host, &path) as i64;
            4
        }
        76 => {
            c.form = json!({"id": rng.gen_range(1..999), "fields": [{"label": "姓名", "type": "input"}]}).to_string();
            5
        }
        77 => {
            c.post_id = rng.gen_range(10_000..99_999).to_string();
            c.post_title = text::sentence(rng, lang);
            c.post_content = text::message(rng, lang);
            c.post_content_type = "1".into();
            6
        }
        78..=81 => {
            c.image = format!(
                "https://chat-img.jwznb.com/sticker/{:08x}.png",
                rng.gen::<u32>()
            );
            c.sticker_item_id = rng.gen_range(1..5000);
            c.sticker_pack_id = rng.gen_range(1..200);
            7
        }
        82 => {
            c.text = format!("<p>{}</p>", text::sentence(rng, lang));
            8
        }
        83..=84 => {
            c.text = "管理员开启了全员禁言".into();
            9
        }
        85..=86 => {
            let key = rng.gen::<u64>();
            c.video_url = format!("{key:016x}.mp4");
            c.image_url = format!("{key:016x}-cover.png");
            c.video_time = rng.gen_range(1..600);
            10
        }
        87..=90 => {
            c.audio_url = format!("{:016x}.m4a", rng.gen::<u64>());
            c.audio_time = rng.gen_range(1..60);
            11
        }
        91 => {
            c.call_status_text = "通话时长 03:12".into();
            c.call_text = "语音通话".into();
            13
        }
        92 => {
            c.buttons =
                json!({"a2ui": {"type": "card", "title": text::sentence(rng, lang)}}).to_string();
            14
        }
        93 => {
            c.text = text::sentence(rng, lang);
            99
        }
        _ => {
            c.text = text::message(rng, lang);
            c.buttons =
                json!([[{"text": "打开", "actionType": 1, "url": "https://www.yhchat.com"}]])
                    .to_string();
            1
        }
    };
    (ty, c)
}

impl World {
    /// Build a world from `spec`; deterministic for a given spec.
    pub fn generate(spec: &WorldSpec) -> World {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let person = |rng: &mut StdRng, chat_type: i64| {
            let id = rng.gen_range(1_000_000..9_999_999u64).to_string();
            let name = if chat_type == BOT {
                format!("{}助手", text::place(rng))
            } else {
                text::person_name(rng, lang_of(&id))
            };
            Person {
                id,
                name,
                chat_type,
            }
        };
        let me = person(&mut rng, USER);
        let users: Vec<Person> = (0..spec.users.max(1))
            .map(|_| person(&mut rng, USER))
            .collect();
        let bots: Vec<Person> = (0..spec.bots).map(|_| person(&mut rng, BOT)).collect();
        let mut chats = Vec::new();
        for u in users.iter().take(spec.direct_chats) {
            chats.push(Chat {
                chat_id: u.id.clone(),
                chat_type: USER,
                name: u.name.clone(),
                remark: if rng.gen_bool(0.3) {
                    format!("{}(同事)", u.name)
                } else {
                    String::new()
                },
                in_list: true,
                visible_from: 1,
                members: vec![me.clone(), u.clone()],
                messages: Vec::new(),
            });
        }
        for _ in 0..spec.groups {
            let mut members = vec![me.clone()];
            for u in &users {
                if rng.gen_bool(0.5) {
                    members.push(u.clone());
                }
            }
            if let Some(b) = bots.first() {
                members.push(b.clone());
            }
            chats.push(Chat {
                chat_id: rng.gen_range(100_000_000..999_999_999u64).to_string(),
                chat_type: GROUP,
                name: text::group_name(&mut rng),
                remark: String::new(),
                in_list: true,
                visible_from: 1,
                members,
                messages: Vec::new(),
            });
        }
        for b in &bots {
            chats.push(Chat {
                chat_id: b.id.clone(),
                chat_type: BOT,
                name: b.name.clone(),
                remark: String::new(),
                in_list: true,
                visible_from: 1,
                members: vec![me.clone(), b.clone()],
                messages: Vec::new(),
            });
        }
        let mut world = World {
            me: me.clone(),
            token: spec.token.clone(),
            recall_blanks_content: spec.recall_blanks_content,
            by_seq: super::world::BySeq::default(),
            edit_record_page_cap: super::server::EDIT_RECORD_PAGE_CAP,
            edit_record_ignores_page: false,
            chats,
            clock_ms: spec
                .end_time_ms
                .saturating_sub(u64::from(spec.days) * 86_400_000),
            next_edit_id: 1,
            rng: StdRng::seed_from_u64(spec.seed ^ 0x5eed),
            index: HashMap::new(),
            media: HashMap::new(),
            media_deleted: Default::default(),
            media_valid_until: spec.end_time_ms / 1000 + SIGNED_URL_VALIDITY_SECS,
            changes: tokio::sync::broadcast::channel(super::push::CHANGES_BUFFERED).0,
        };
        if world.chats.is_empty() {
            return world;
        }
        // Zipf-like weights: a few busy chats, many quiet ones.
        let weights: Vec<f64> = (0..world.chats.len())
            .map(|i| 1.0 / (i as f64 + 1.0).powf(0.8))
            .collect();
        let total: f64 = weights.iter().sum();
        let span = u64::from(spec.days) * 86_400_000;
        let step = (span / (spec.messages as u64 + 1)).max(1);
        let mut late = Vec::new();
        for i in 0..spec.messages {
            let mut pick = rng.gen_range(0.0..total);
            let mut ci = 0;
            for (j, w) in weights.iter().enumerate() {
                if pick < *w {
                    ci = j;
                    break;
                }
                pick -= w;
            }
            world.clock_ms = spec.end_time_ms - span + step * (i as u64 + 1);
            let members = world.chats[ci].members.clone();
            let from = members[rng.gen_range(0..members.len())].clone();
            let (ty, content) =
                random_content(&mut rng, lang_of(&from.id), world.media_valid_until);
            let msg_id = world.post(ci, from, ty, content);
            let roll = rng.gen_range(0..1000);
            if roll < spec.hidden_per_mille {
                late.push((msg_id, 0u8));
            } else if roll < spec.hidden_per_mille + spec.edited_per_mille {
                late.push((msg_id, 1 + rng.gen_range(0..3)));
            } else if roll < spec.hidden_per_mille + spec.edited_per_mille + spec.recalled_per_mille
            {
                late.push((msg_id, 9));
            }
        }
        // later changes, at the end of the timeline
        for (msg_id, what) in late {
            match what {
                0 => {
                    if let Some((c, m)) = world.index.get(&msg_id).copied() {
                        world.chats[c].messages[m].hidden = true;
                    }
                }
                9 => {
                    world.recall(&msg_id);
                }
                n => {
                    for _ in 0..n {
                        let lang = lang_of(&msg_id);
                        let new = text::message(&mut rng, lang);
                        world.edit_text(&msg_id, &new);
                    }
                }
            }
        }
        expire_and_delete_media(&mut world);
        let n = world.chats.len();
        for k in 0..spec.unlisted_chats.min(n) {
            let i = n - 1 - k;
            world.chats[i].in_list = false;
        }
        let mut done = 0;
        for chat in world.chats.iter_mut().filter(|c| c.chat_type == GROUP) {
            if done >= spec.late_joined_groups {
                break;
            }
            if chat.messages.len() > 10 {
                chat.visible_from = chat.messages[chat.messages.len() / 3].seq;
                done += 1;
            }
        }
        world
    }
}

/// What becomes of files upstream: the first signed file in the world has expired by the
/// end of its timeline (403), the first image was deleted (404). Neither draws from the
/// world's random numbers.
fn expire_and_delete_media(world: &mut World) {
    let expired_at = (world.clock_ms / 1000).saturating_sub(86_400);
    let mut expired = false;
    let mut deleted = None;
    for msg in world.chats.iter_mut().flat_map(|c| c.messages.iter_mut()) {
        if !expired && msg.content_type == 4 && msg.content.file_url.contains("://") {
            if let Some(located) = media::locate(&msg.content.file_url, "chat-file") {
                msg.content.file_url = format!(
                    "https://chat-storage1.jwznb.com/{}?sign={}&t={expired_at}",
                    located.path,
                    media::sign(&located.path, expired_at)
                );
                expired = true;
            }
        }
        if deleted.is_none() && msg.content_type == 2 {
            deleted = media::locate(&msg.content.image_url, "chat-img").map(|l| l.key());
        }
    }
    world.media_deleted.extend(deleted);
}
