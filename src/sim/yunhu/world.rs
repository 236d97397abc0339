//! The fake Yunhu world: the archiving account, its chats (direct, group, bot) and their
//! messages with edit records and recalls; the changes tests and demos drive, a
//! [`truth`](World::truth) snapshot, and what the endpoints serve of it. Generation lives in
//! `generate`.

use std::collections::{HashMap, HashSet};

use rand::rngs::StdRng;
use rand::Rng;
use serde::Serialize;
use serde_json::json;
use sha2::Digest;

pub use super::generate::WorldSpec;
use super::generate::{hex_id, lang_of};
use super::media::{self, Located};
use crate::attachments::AttachmentKind;

use crate::connector::yunhu::pb;
use crate::sim::text;

pub const USER: i64 = 1;
pub const GROUP: i64 = 2;
pub const BOT: i64 = 3;

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
    /// What the edit replaced, as a JSON string: only what an edit can change (the text,
    /// the buttons, the quoted text), keys left out when empty (`docs/upstreams/yunhu.md`,
    /// "Edit records").
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

/// How `list-message-by-seq` reads its `msg_start`: the community's sources disagree
/// (`docs/upstreams/yunhu.md`, "list-message-by-seq"), so the fake can answer each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BySeq {
    /// The messages after `msg_start`; more than [`super::BY_SEQ_WINDOW`] behind the
    /// newest, only the newest that many (the documentation's reading).
    #[default]
    Newer,
    /// The messages after `msg_start`; more than the window behind, nothing.
    NewerOrNothing,
    /// The window of messages before `msg_start` (one client loads older history this
    /// way); `msg_start` 0 gives the newest.
    Older,
}

pub struct World {
    pub me: Person,
    pub token: String,
    pub recall_blanks_content: bool,
    /// How `list-message-by-seq` answers.
    pub by_seq: BySeq,
    /// The most edit-record rows one page returns, whatever `size` asked for.
    pub edit_record_page_cap: usize,
    /// Every edit-record page is the first (a server that ignores `page`).
    pub edit_record_ignores_page: bool,
    pub chats: Vec<Chat>,
    pub(super) clock_ms: u64,
    pub(super) next_edit_id: i64,
    pub(super) rng: StdRng,
    pub(super) index: HashMap<String, (usize, usize)>,
    /// Every file a message references, by [`Located::key`], and that message's id.
    pub(super) media: HashMap<String, String>,
    /// Files deleted upstream (a 404), by [`Located::key`].
    pub(super) media_deleted: HashSet<String>,
    /// The expiry (Unix seconds) of signed URLs that do not say.
    pub(super) media_valid_until: u64,
    /// Every post, edit and recall as it happens, for the push channel ([`super::push`]).
    pub(super) changes: tokio::sync::broadcast::Sender<Change>,
}

/// A change the push channel tells logged-in clients about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    New(String),
    Edit(String),
    Recall(String),
}

/// Whether a file can be downloaded, as the fake serves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaState {
    Available,
    /// A signed URL past its expiry: 403.
    Expired,
    /// Deleted upstream: 404.
    Deleted,
}

/// One file a message references, as the fake serves it.
#[derive(Clone, Debug, Serialize)]
pub struct AttachmentTruth {
    pub kind: AttachmentKind,
    /// The URL as list results serve it (on the fake).
    pub url: String,
    /// The sha256 (hex) of the bytes the fake serves for it.
    pub sha256: String,
    pub size: u64,
    pub state: MediaState,
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

/// The text a version shows (what the archive's `text` holds for text-like types).
fn plain(content_type: i64, c: &pb::MsgContent) -> String {
    crate::connector::yunhu::content_text(content_type, c)
}

impl World {
    pub(super) fn tick(&mut self) -> u64 {
        self.clock_ms += 1 + self.rng.gen_range(0..5_000);
        self.clock_ms
    }

    /// The world's clock (ms), never behind anything stored.
    pub fn now_ms(&self) -> u64 {
        self.clock_ms
    }

    pub(super) fn post(
        &mut self,
        ci: usize,
        from: Person,
        content_type: i64,
        content: pb::MsgContent,
    ) -> String {
        let msg_id = hex_id(&mut self.rng);
        for (_, value, host) in media_fields(content_type, &content) {
            if let Some(located) = media::locate(value, host) {
                self.media.insert(located.key(), msg_id.clone());
            }
        }
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
        let _ = self.changes.send(Change::New(msg_id.clone()));
        msg_id
    }

    /// Every change from now on (the push channel's feed).
    pub fn subscribe_changes(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
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

    /// Post a message of any content now, quoting `quote_msg_id` if not empty. `None` if
    /// the chat or the sender is unknown.
    pub fn post_content(
        &mut self,
        chat_id: &str,
        from_id: &str,
        content_type: i64,
        content: pb::MsgContent,
        quote_msg_id: &str,
    ) -> Option<String> {
        let ci = self.chats.iter().position(|c| c.chat_id == chat_id)?;
        let from = self.chats[ci]
            .members
            .iter()
            .find(|p| p.id == from_id)?
            .clone();
        self.tick();
        let msg_id = self.post(ci, from, content_type, content);
        let (c, m) = self.index[&msg_id];
        self.chats[c].messages[m].quote_msg_id = quote_msg_id.to_string();
        Some(msg_id)
    }

    /// Edit a message's text now: the old content goes to its edit record.
    pub fn edit_text(&mut self, msg_id: &str, text: &str) -> bool {
        let Some((c, m)) = self.index.get(msg_id).copied() else {
            return false;
        };
        let mut content = self.chats[c].messages[m].content.clone();
        content.text = text.to_string();
        self.edit(msg_id, content)
    }

    /// Edit a message now: `new` replaces the text, the buttons and the quoted text (what
    /// an edit can change; the rest of `new` is ignored), and the edit record keeps what
    /// they were.
    pub fn edit(&mut self, msg_id: &str, new: pb::MsgContent) -> bool {
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
        let mut old = serde_json::Map::new();
        if !msg.content.text.is_empty() {
            old.insert("text".into(), json!(msg.content.text));
        }
        if !msg.content.buttons.is_empty() {
            // kept as the JSON it is, an array of button rows, not as a string
            let buttons = serde_json::from_str::<serde_json::Value>(&msg.content.buttons)
                .unwrap_or_else(|_| json!(msg.content.buttons));
            old.insert("buttons".into(), buttons);
        }
        if !msg.content.quote_msg_text.is_empty() {
            old.insert("quote_msg_text".into(), json!(msg.content.quote_msg_text));
        }
        msg.edits.push(EditRecord {
            id,
            content_type: msg.content_type,
            content_old: serde_json::Value::Object(old).to_string(),
            create_time: msg.send_time,
            msg_time: now,
        });
        msg.content.text = new.text;
        msg.content.buttons = new.buttons;
        msg.content.quote_msg_text = new.quote_msg_text;
        msg.edit_time = now;
        let _ = self.changes.send(Change::Edit(msg_id.to_string()));
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
        let _ = self.changes.send(Change::Recall(msg_id.to_string()));
        true
    }

    /// Delete a message for the archiving user (it is never listed again, and is no
    /// anchor for `list-message` any more).
    pub fn hide(&mut self, msg_id: &str) -> bool {
        let Some((c, m)) = self.index.get(msg_id).copied() else {
            return false;
        };
        self.chats[c].messages[m].hidden = true;
        true
    }

    /// A group's auto-delete: every message of `chat_id` up to `seq` disappears for the
    /// archiving user. Returns how many did.
    pub fn auto_delete_up_to(&mut self, chat_id: &str, seq: i64) -> usize {
        let Some(chat) = self.chat_mut(chat_id) else {
            return 0;
        };
        let mut n = 0;
        for m in chat
            .messages
            .iter_mut()
            .filter(|m| m.seq <= seq && !m.hidden)
        {
            m.hidden = true;
            n += 1;
        }
        n
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
    /// Media fields point under `media_base` (`http://127.0.0.1:PORT/media`, where the
    /// fake serves them; empty: as the world keeps them).
    pub fn served(&self, m: &Msg, media_base: &str) -> pb::MsgData {
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
                self.served_content(&m.content, media_base)
            }),
            send_time: m.send_time,
            cmd: None,
            recall_time: m.recall_time,
            quote_msg_id: m.quote_msg_id.clone(),
            msg_seq: m.seq,
            edit_time: m.edit_time,
        }
    }

    /// `content` with its media fields pointing at the fake ([`media::served_url`]).
    fn served_content(&self, content: &pb::MsgContent, media_base: &str) -> pb::MsgContent {
        let mut c = content.clone();
        if media_base.is_empty() {
            return c;
        }
        let fields = [
            (&mut c.image_url, "chat-img"),
            (&mut c.file_url, "chat-file"),
            (&mut c.image, "chat-img"),
            (&mut c.video_url, "chat-video1"),
            (&mut c.audio_url, "chat-audio1"),
        ];
        for (value, host) in fields {
            if let Some(located) = media::locate(value, host) {
                *value = media::served_url(media_base, &located, self.media_valid_until);
            }
        }
        c
    }

    /// Every message's files (messages without any left out), by message id, with URLs
    /// under `media_base` (see [`World::served`]): what [`World::truth`] does not compute,
    /// as it hashes every file.
    pub fn attachments_truth(
        &self,
        media_base: &str,
    ) -> std::collections::BTreeMap<String, Vec<AttachmentTruth>> {
        self.chats
            .iter()
            .flat_map(|c| c.messages.iter())
            .map(|m| (m.msg_id.clone(), self.attachments_of(m, media_base)))
            .filter(|(_, a)| !a.is_empty())
            .collect()
    }

    /// The files a message's current content references (before any recall blanking),
    /// one per URL, as the fake serves them under `media_base`.
    pub fn attachments_of(&self, m: &Msg, media_base: &str) -> Vec<AttachmentTruth> {
        let mut out: Vec<AttachmentTruth> = Vec::new();
        for (kind, value, host) in media_fields(m.content_type, &m.content) {
            let Some(located) = media::locate(value, host) else {
                continue;
            };
            let url = media::served_url(media_base, &located, self.media_valid_until);
            if out.iter().any(|a| a.url == url) {
                continue;
            }
            let bytes = media::bytes(&located);
            let state = if self.media_deleted.contains(&located.key()) {
                MediaState::Deleted
            } else if located.host == media::SIGNED_HOST
                && located.expires.unwrap_or(self.media_valid_until) < self.clock_ms / 1000
            {
                MediaState::Expired
            } else {
                MediaState::Available
            };
            out.push(AttachmentTruth {
                kind,
                url,
                sha256: hex::encode(sha2::Sha256::digest(&bytes)),
                size: bytes.len() as u64,
                state,
            });
        }
        out
    }

    /// A file the fake serves under `/media/{host}/{path}`, if a message references it.
    pub fn media_file(&self, host: &str, path: &str) -> Option<Located> {
        let located = Located {
            host: host.to_string(),
            path: path.to_string(),
            expires: None,
        };
        self.media.contains_key(&located.key()).then_some(located)
    }

    /// Whether a file (by [`Located::key`]) was deleted upstream.
    pub fn media_is_deleted(&self, key: &str) -> bool {
        self.media_deleted.contains(key)
    }

    /// Delete a file upstream (a 404 from now on), by its URL as served (on the fake) or
    /// as kept (a bare image key, or a URL on a Yunhu host). `false` if no message
    /// references it.
    pub fn delete_media(&mut self, url: &str) -> bool {
        let on_fake = url
            .contains("://")
            .then(|| url.split_once("/media/"))
            .flatten()
            .and_then(|(_, rest)| {
                let rest = rest.split(['?', '#']).next().unwrap_or(rest);
                let (host, path) = rest.split_once('/')?;
                Some(Located {
                    host: host.to_string(),
                    path: path.to_string(),
                    expires: None,
                })
            });
        match on_fake.or_else(|| media::locate(url, "chat-img")) {
            Some(l) if self.media.contains_key(&l.key()) => {
                self.media_deleted.insert(l.key());
                true
            }
            _ => false,
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

/// The media fields of a content, with the kind each file is and the host a bare key is
/// on (`docs/upstreams/yunhu.md`, "Attachments"): on a video message `image_url` is the
/// cover.
pub(super) fn media_fields(
    content_type: i64,
    c: &pb::MsgContent,
) -> [(AttachmentKind, &str, &'static str); 5] {
    let image = if content_type == 10 {
        AttachmentKind::Thumbnail
    } else {
        AttachmentKind::Image
    };
    [
        (image, &c.image_url, "chat-img"),
        (AttachmentKind::File, &c.file_url, "chat-file"),
        (AttachmentKind::Sticker, &c.image, "chat-img"),
        (AttachmentKind::Video, &c.video_url, "chat-video1"),
        (AttachmentKind::Voice, &c.audio_url, "chat-audio1"),
    ]
}
