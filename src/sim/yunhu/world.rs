//! The fake Yunhu world: the archiving account, its chats (direct, group, bot) and their
//! messages with edit records and recalls; deterministic generation from a [`WorldSpec`],
//! the changes tests and demos drive, and a [`truth`](World::truth) snapshot.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;

use crate::connector::yunhu::pb;
use crate::sim::text::{self, Lang};

pub const USER: i64 = 1;
pub const GROUP: i64 = 2;
pub const BOT: i64 = 3;

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
    /// Groups joined late: their history starts above seq 1 (spec §5, `history_msg`).
    pub late_joined_groups: usize,
    /// Per mille of messages deleted for the archiving user (seq gaps).
    pub hidden_per_mille: u32,
    /// Per mille of messages edited (one to three times).
    pub edited_per_mille: u32,
    /// Per mille of messages recalled.
    pub recalled_per_mille: u32,
    /// A recalled message's content is blanked in list results (else it is kept): spec
    /// §11.3 leaves it open, so the fake does both.
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

#[derive(Clone, Debug)]
pub struct Person {
    pub id: String,
    pub name: String,
    pub chat_type: i64,
}

/// One row of a message's edit record.
#[derive(Clone, Debug, Serialize)]
pub struct EditRecord {
    pub id: i64,
    pub content_type: i64,
    /// The replaced content as a JSON string (spec §4.8).
    pub content_old: String,
    pub create_time: u64,
    /// When this content was replaced.
    pub msg_time: u64,
}

#[derive(Clone, Debug)]
pub struct Msg {
    pub msg_id: String,
    pub seq: i64,
    pub sender: Person,
    pub content_type: i64,
    /// The current content, as kept by the server before any recall blanking.
    pub content: pb::MsgContent,
    pub send_time: u64,
    pub edit_time: u64,
    pub recall_time: u64,
    pub quote_msg_id: String,
    pub edits: Vec<EditRecord>,
    /// Deleted for the archiving user: never listed again.
    pub hidden: bool,
}

#[derive(Clone, Debug)]
pub struct Chat {
    pub chat_id: String,
    pub chat_type: i64,
    pub name: String,
    pub remark: String,
    /// In the conversation list (else only in the address book).
    pub in_list: bool,
    /// The first seq the archiving user may read.
    pub visible_from: i64,
    pub members: Vec<Person>,
    pub messages: Vec<Msg>,
}

impl Chat {
    pub fn visible(&self, m: &Msg) -> bool {
        !m.hidden && m.seq >= self.visible_from
    }

    pub fn last_seq(&self) -> i64 {
        self.messages.last().map(|m| m.seq).unwrap_or(0)
    }
}

pub struct World {
    pub me: Person,
    pub token: String,
    pub recall_blanks_content: bool,
    pub chats: Vec<Chat>,
    clock_ms: u64,
    next_edit_id: i64,
    rng: StdRng,
    index: HashMap<String, (usize, usize)>,
}

/// One change made by [`World::random_activity`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Activity {
    Posted { chat_id: String, msg_id: String },
    Edited(String),
    Recalled(String),
}

/// A chat as the archive should end up with it.
#[derive(Clone, Debug, Serialize)]
pub struct ChatTruth {
    pub chat_id: String,
    pub chat_type: i64,
    pub name: String,
    pub in_list: bool,
    pub messages: Vec<MsgTruth>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MsgTruth {
    pub msg_id: String,
    pub seq: i64,
    pub sender_id: String,
    pub sender_name: String,
    pub content_type: i64,
    /// Text of every version, oldest first (the last is current).
    pub versions: Vec<String>,
    pub send_time: u64,
    pub edit_time: u64,
    pub recall_time: u64,
    pub quote_msg_id: String,
    /// Whether list results return it to the archiving user.
    pub visible: bool,
}

fn hex_id(rng: &mut StdRng) -> String {
    format!("{:016x}{:016x}", rng.gen::<u64>(), rng.gen::<u64>())
}

fn lang_of(id: &str) -> Lang {
    if id.bytes().map(u32::from).sum::<u32>() % 10 < 7 {
        Lang::Chinese
    } else {
        Lang::English
    }
}

/// Random content of a random type, every type of spec §6.2 plus an unknown one.
fn random_content(rng: &mut StdRng, lang: Lang) -> (i64, pb::MsgContent) {
    let roll = rng.gen_range(0..100);
    let mut c = pb::MsgContent::default();
    let ty = match roll {
        0..=59 => {
            c.text = text::message(rng, lang);
            1
        }
        60..=67 => {
            c.image_url = format!("{:032x}.jpg", rng.gen::<u128>());
            c.width = rng.gen_range(100..2000);
            c.height = rng.gen_range(100..2000);
            c.file_size = rng.gen_range(10_000..3_000_000);
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
            c.file_url = format!(
                "https://chat-storage1.jwznb.com/{:016x}.pdf?sign=ab12&t=1755566778",
                rng.gen::<u64>()
            );
            c.file_size = rng.gen_range(1_000..50_000_000);
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
                "https://chat-img.jwznb.com/sticker/{:08x}.gif",
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
            c.video_url = format!("{:016x}.mp4", rng.gen::<u64>());
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

/// The text a version shows (what the archive's `text` holds for text-like types).
fn plain(content_type: i64, c: &pb::MsgContent) -> String {
    crate::connector::yunhu::content_text(content_type, c)
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
            chats,
            clock_ms: spec
                .end_time_ms
                .saturating_sub(u64::from(spec.days) * 86_400_000),
            next_edit_id: 1,
            rng: StdRng::seed_from_u64(spec.seed ^ 0x5eed),
            index: HashMap::new(),
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
            let (ty, content) = random_content(&mut rng, lang_of(&from.id));
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

    fn tick(&mut self) -> u64 {
        self.clock_ms += 1 + self.rng.gen_range(0..5_000);
        self.clock_ms
    }

    /// The world's clock (ms), never behind anything stored.
    pub fn now_ms(&self) -> u64 {
        self.clock_ms
    }

    fn post(
        &mut self,
        ci: usize,
        from: Person,
        content_type: i64,
        content: pb::MsgContent,
    ) -> String {
        let msg_id = hex_id(&mut self.rng);
        let chat = &mut self.chats[ci];
        let seq = chat.last_seq() + 1;
        let quote_msg_id = if seq > 3 && self.rng.gen_range(0..20) == 0 {
            chat.messages[chat.messages.len() - 2].msg_id.clone()
        } else {
            String::new()
        };
        chat.messages.push(Msg {
            msg_id: msg_id.clone(),
            seq,
            sender: from,
            content_type,
            content,
            send_time: self.clock_ms,
            edit_time: 0,
            recall_time: 0,
            quote_msg_id,
            edits: Vec::new(),
            hidden: false,
        });
        self.index
            .insert(msg_id.clone(), (ci, chat.messages.len() - 1));
        msg_id
    }

    /// Post a text message now in `chat_id` from `from_id` (a member). `None` if either is
    /// unknown.
    pub fn post_text(&mut self, chat_id: &str, from_id: &str, text: &str) -> Option<String> {
        let ci = self.chats.iter().position(|c| c.chat_id == chat_id)?;
        let from = self.chats[ci]
            .members
            .iter()
            .find(|p| p.id == from_id)?
            .clone();
        self.tick();
        let content = pb::MsgContent {
            text: text.to_string(),
            ..Default::default()
        };
        Some(self.post(ci, from, 1, content))
    }

    /// Edit a message's text now: the old content goes to its edit record.
    pub fn edit_text(&mut self, msg_id: &str, text: &str) -> bool {
        let Some((c, m)) = self.index.get(msg_id).copied() else {
            return false;
        };
        let now = self.tick();
        let id = self.next_edit_id;
        self.next_edit_id += 1;
        let msg = &mut self.chats[c].messages[m];
        // only text-like messages can be edited
        if msg.recall_time > 0 || !matches!(msg.content_type, 1 | 3 | 8) {
            return false;
        }
        let mut old = json!({"text": msg.content.text});
        if !msg.content.buttons.is_empty() {
            old["buttons"] = json!(msg.content.buttons);
        }
        let old = old.to_string();
        msg.edits.push(EditRecord {
            id,
            content_type: msg.content_type,
            content_old: old,
            create_time: msg.send_time,
            msg_time: now,
        });
        msg.content.text = text.to_string();
        msg.edit_time = now;
        true
    }

    /// Recall a message now.
    pub fn recall(&mut self, msg_id: &str) -> bool {
        let Some((c, m)) = self.index.get(msg_id).copied() else {
            return false;
        };
        let now = self.tick();
        let msg = &mut self.chats[c].messages[m];
        if msg.recall_time > 0 {
            return false;
        }
        msg.recall_time = now;
        true
    }

    /// Delete a message for the archiving user (it is never listed again).
    pub fn hide(&mut self, msg_id: &str) -> bool {
        let Some((c, m)) = self.index.get(msg_id).copied() else {
            return false;
        };
        self.chats[c].messages[m].hidden = true;
        true
    }

    pub fn chat(&self, chat_id: &str) -> Option<&Chat> {
        self.chats.iter().find(|c| c.chat_id == chat_id)
    }

    pub fn chat_mut(&mut self, chat_id: &str) -> Option<&mut Chat> {
        self.chats.iter_mut().find(|c| c.chat_id == chat_id)
    }

    pub fn message(&self, msg_id: &str) -> Option<(&Chat, &Msg)> {
        let (c, m) = self.index.get(msg_id).copied()?;
        Some((&self.chats[c], &self.chats[c].messages[m]))
    }

    pub fn message_count(&self) -> usize {
        self.chats.iter().map(|c| c.messages.len()).sum()
    }

    /// A random mix of new messages (60%), edits (25%) and recalls (15%) in listed chats.
    pub fn random_activity<R: Rng + ?Sized>(&mut self, rng: &mut R, n: usize) -> Vec<Activity> {
        let listed: Vec<usize> = (0..self.chats.len())
            .filter(|&i| self.chats[i].in_list)
            .collect();
        let mut done = Vec::new();
        if listed.is_empty() {
            return done;
        }
        for _ in 0..n {
            let ci = listed[rng.gen_range(0..listed.len())];
            let chat = &self.chats[ci];
            let from = chat.members[rng.gen_range(0..chat.members.len())].clone();
            let roll = rng.gen_range(0..100);
            if chat.messages.is_empty() || roll < 60 {
                let text = text::message(rng, lang_of(&from.id));
                let chat_id = chat.chat_id.clone();
                if let Some(msg_id) = self.post_text(&chat_id, &from.id, &text) {
                    done.push(Activity::Posted { chat_id, msg_id });
                }
                continue;
            }
            let msg_id = chat.messages[rng.gen_range(0..chat.messages.len())]
                .msg_id
                .clone();
            if roll < 85 {
                let text = text::message(rng, lang_of(&from.id));
                if self.edit_text(&msg_id, &text) {
                    done.push(Activity::Edited(msg_id));
                }
            } else if self.recall(&msg_id) {
                done.push(Activity::Recalled(msg_id));
            }
        }
        done
    }

    /// Everything, as the archive should end up with it.
    pub fn truth(&self) -> Vec<ChatTruth> {
        self.chats
            .iter()
            .map(|c| ChatTruth {
                chat_id: c.chat_id.clone(),
                chat_type: c.chat_type,
                name: c.name.clone(),
                in_list: c.in_list,
                messages: c
                    .messages
                    .iter()
                    .map(|m| {
                        let mut versions: Vec<String> = m
                            .edits
                            .iter()
                            .map(|e| {
                                let old: serde_json::Value =
                                    serde_json::from_str(&e.content_old).unwrap_or_default();
                                old.get("text")
                                    .and_then(|t| t.as_str())
                                    .unwrap_or_default()
                                    .to_string()
                            })
                            .collect();
                        versions.push(plain(m.content_type, &m.content));
                        MsgTruth {
                            msg_id: m.msg_id.clone(),
                            seq: m.seq,
                            sender_id: m.sender.id.clone(),
                            sender_name: m.sender.name.clone(),
                            content_type: m.content_type,
                            versions,
                            send_time: m.send_time,
                            edit_time: m.edit_time,
                            recall_time: m.recall_time,
                            quote_msg_id: m.quote_msg_id.clone(),
                            visible: c.visible(m),
                        }
                    })
                    .collect(),
            })
            .collect()
    }

    /// The message as list results serve it.
    pub fn served(&self, m: &Msg) -> pb::MsgData {
        let blank = m.recall_time > 0 && self.recall_blanks_content;
        pb::MsgData {
            msg_id: m.msg_id.clone(),
            sender: Some(pb::Sender {
                chat_id: m.sender.id.clone(),
                chat_type: m.sender.chat_type,
                name: m.sender.name.clone(),
                avatar_url: format!("https://chat-img.jwznb.com/avatar/{}.jpg", m.sender.id),
                ..Default::default()
            }),
            direction: if m.sender.id == self.me.id {
                "right"
            } else {
                "left"
            }
            .into(),
            content_type: m.content_type,
            content: Some(if blank {
                pb::MsgContent::default()
            } else {
                m.content.clone()
            }),
            send_time: m.send_time,
            cmd: None,
            recall_time: m.recall_time,
            quote_msg_id: m.quote_msg_id.clone(),
            msg_seq: m.seq,
            edit_time: m.edit_time,
        }
    }

    /// The conversation list entry of a chat.
    pub fn list_entry(&self, chat: &Chat) -> pb::ConversationData {
        let last = chat.messages.iter().rev().find(|m| chat.visible(m));
        let preview = match last {
            None => String::new(),
            Some(m) if m.recall_time > 0 => "此消息已被撤回".into(),
            Some(m) => match m.content_type {
                1 | 3 | 8 | 9 => m.content.text.chars().take(40).collect(),
                2 => "[图片]".into(),
                4 => "[文件]".into(),
                7 => "[表情]".into(),
                10 => "[视频]".into(),
                11 => "[语音]".into(),
                _ => "[消息]".into(),
            },
        };
        let at = last.map(|m| m.send_time).unwrap_or(0);
        pb::ConversationData {
            chat_id: chat.chat_id.clone(),
            chat_type: chat.chat_type,
            remark: chat.remark.clone(),
            chat_content: preview,
            timestamp_ms: at,
            unread_msg: 0,
            avatar_url: format!("https://chat-img.jwznb.com/avatar/{}.jpg", chat.chat_id),
            send_timestamp: at / 1000,
            name: chat.name.clone(),
            ..Default::default()
        }
    }
}
