//! The ground truth of the fake Yunxin app: accounts, teams, message streams, the cloud
//! conversations of each account, quick comments; deterministic generation from a
//! [`WorldSpec`], the changes tests and the demo drive, and a [`truth`](World::truth)
//! snapshot to compare an archive against.
//!
//! A message belongs to a *stream* (a p2p pair or a team); every member's conversation
//! (`owner|type|target`) shows the same stream from the owner's side (see
//! `docs/upstreams/yunxin.md`, "Identifiers").

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::Digest;

use super::media::{MediaFile, MediaOutcome, BUCKET};
use crate::sim::text::{self, Lang};

/// The first `message_server_id`: above 2^53, as real ones are (`docs/upstreams/yunxin.md`,
/// "Identifiers").
pub const FIRST_SERVER_ID: i64 = 158_844_553_334_358_021;

/// Edits and two-way recalls reach back this many days (`docs/upstreams/yunxin.md`,
/// "Edits" and "Recalls and deletes").
pub const EDIT_DAYS: i64 = 7;
/// One-way recalls and deletes reach back this many days (`docs/upstreams/yunxin.md`,
/// "Recalls and deletes").
pub const ONE_WAY_DAYS: i64 = 30;

/// What `descending=true` means on this server (the doc and the name disagree:
/// `docs/upstreams/yunxin.md`, "Paging").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Descending {
    /// As the doc reads: `true` = ascending (oldest first).
    DocLiteral,
    /// As the name reads: `true` = newest first.
    NameLiteral,
}

/// How a broken server pages, for the client's loop guards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenLoop {
    /// From the third page on, `next_token` goes back to the second page's token: A, B, A,
    /// B… with `has_more` always true.
    Cycle,
    /// Every page is empty, `has_more` stays true, and every `next_token` is new.
    FreshEmpty,
}

/// Server behaviour switches.
#[derive(Clone, Debug)]
pub struct Behaviour {
    pub descending: Descending,
    /// Every third page of a history read is half full while `has_more` is still true.
    pub short_pages: bool,
    /// Requests per second per API before 416 (100 by default, `docs/upstreams/yunxin.md`,
    /// "Errors and rate limits"); `None` = no limit.
    pub rate_limit: Option<u32>,
    /// How long an API stays blocked after a 416.
    pub rate_limit_block: std::time::Duration,
    /// `last_message` in the v2.1 answers: flat (v2.1) or nested (v2).
    pub nested_last_message: bool,
    /// New messages are stamped this many ms before the wall clock (a server whose writes
    /// become readable after a while).
    pub clock_lag_ms: i64,
    /// Allowed CheckSum clock skew in seconds (±300, `docs/upstreams/yunxin.md`, "Signing").
    pub checksum_window_secs: i64,
    /// A quick-comment query holding a message without `message_client_id` (a field the
    /// API reference marks required) is refused as a whole with 414. What the real server
    /// does is not documented; this is the harshest reading.
    pub quick_comment_needs_client_id: bool,
    /// The history of this conversation pages in a loop (`None`: pages end).
    pub history_token_loop: Option<(String, TokenLoop)>,
    /// The conversation list pages A, B, A, B… with `has_more` always true.
    pub list_token_cycle: bool,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            descending: Descending::DocLiteral,
            short_pages: true,
            rate_limit: Some(100),
            rate_limit_block: std::time::Duration::from_secs(10),
            nested_last_message: false,
            clock_lag_ms: 0,
            checksum_window_secs: 300,
            quick_comment_needs_client_id: true,
            history_token_loop: None,
            list_token_cycle: false,
        }
    }
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct WorldSpec {
    pub seed: u64,
    pub app_key: String,
    pub app_secret: String,
    /// Accounts whose conversations are archived (they have cloud conversations).
    pub accounts: usize,
    /// Further users (peers and team members).
    pub users: usize,
    pub teams: usize,
    pub super_teams: usize,
    /// Direct chats per archived account.
    pub direct_chats: usize,
    pub messages: usize,
    /// End of the generated timeline, Unix ms.
    pub end_ms: i64,
    pub days: u32,
    /// Messages sharing one `create_time` in the busiest stream (a page boundary run).
    pub same_ms_run: usize,
    /// Accounts (beyond `accounts`) listed without cloud conversations.
    pub accounts_without_cloud: usize,
    /// The deliberate faults of the fake's NOS, on the first media messages generated:
    /// the first file is deleted upstream (404), the first video's URL is signed and
    /// expired (403), the first audio declares an md5 that is not its bytes', and the
    /// second audio's attachment is a JSON string holding the object.
    pub media_quirks: bool,
}

impl Default for WorldSpec {
    fn default() -> Self {
        WorldSpec {
            seed: 1,
            app_key: "0f1e2d3c4b5a69788796a5b4c3d2e1f0".into(),
            app_secret: "sim-app-secret-0123".into(),
            accounts: 2,
            users: 12,
            teams: 3,
            super_teams: 1,
            direct_chats: 4,
            messages: 2_000,
            end_ms: 1_748_736_000_000,
            days: 30,
            same_ms_run: 0,
            accounts_without_cloud: 0,
            media_quirks: true,
        }
    }
}

/// A p2p pair (sorted) or a team.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Stream {
    P2p(String, String),
    Team(i64),
}

#[derive(Clone, Debug)]
pub struct Team {
    pub id: i64,
    pub name: String,
    pub super_team: bool,
    pub members: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Comment {
    pub operator_id: String,
    pub index: i64,
    pub extension: String,
    pub time: i64,
}

/// How a message left the history (two-way recall or delete).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Removal {
    TwoWayRecall { by: String, at: i64 },
    Delete { at: i64 },
}

#[derive(Clone, Debug)]
pub struct Message {
    pub server_id: i64,
    pub client_id: String,
    pub stream: Stream,
    pub sender: String,
    pub sender_client_type: i64,
    pub message_type: i64,
    pub sub_type: i64,
    pub create_time: i64,
    pub text: String,
    pub attachment: Option<Value>,
    pub extension: String,
    pub modify_account_id: Option<String>,
    pub modify_time: Option<i64>,
    /// Accounts for whom this is a no-sense message (one-way recall or delete, or sent
    /// with `sender_no_sense`/`receiver_no_sense`).
    pub no_sense_for: BTreeSet<String>,
    /// Sent with a no-sense flag (no-sense from the start, never recalled).
    pub sent_no_sense: bool,
    pub removed: Option<Removal>,
    pub comments: Vec<Comment>,
    /// Set on a message broken on purpose (its id is served as a string of garbage).
    pub malformed: bool,
}

impl Message {
    pub fn conversation_type(&self, world: &World) -> i64 {
        match &self.stream {
            Stream::P2p(..) => 1,
            Stream::Team(id) => {
                if world.teams.get(id).is_some_and(|t| t.super_team) {
                    3
                } else {
                    2
                }
            }
        }
    }

    /// The receiver as the history items show it (the peer for p2p).
    pub fn receiver(&self) -> String {
        match &self.stream {
            Stream::P2p(a, b) => {
                if *a == self.sender {
                    b.clone()
                } else {
                    a.clone()
                }
            }
            Stream::Team(id) => id.to_string(),
        }
    }
}

/// One cloud conversation of one account.
#[derive(Clone, Debug)]
pub struct Conversation {
    pub owner: String,
    pub stream: Stream,
    pub conversation_type: i64,
    pub target: String,
    pub stick_top: bool,
    pub group_ids: Vec<i64>,
    pub server_extension: String,
    pub message_state: i64,
    pub revoke_notification: Option<Value>,
    pub create_time: i64,
    pub update_time: i64,
}

impl Conversation {
    pub fn id(&self) -> String {
        format!("{}|{}|{}", self.owner, self.conversation_type, self.target)
    }
}

/// The whole fake app.
#[derive(Clone, Debug)]
pub struct World {
    pub app_key: String,
    pub app_secret: String,
    pub behaviour: Behaviour,
    /// Accounts to archive, in order.
    pub accounts: Vec<String>,
    /// Accounts that exist but whose app side has no cloud conversations.
    pub no_cloud: BTreeSet<String>,
    pub users: Vec<String>,
    pub teams: BTreeMap<i64, Team>,
    pub messages: Vec<Message>,
    pub by_id: HashMap<i64, usize>,
    /// Message indexes per stream, ordered by `(create_time, server_id)`.
    pub streams: BTreeMap<Stream, Vec<usize>>,
    /// Conversations by id.
    pub conversations: BTreeMap<String, Conversation>,
    /// The NOS objects media messages point to, by key (see `media.rs`).
    pub media: BTreeMap<String, MediaFile>,
    /// Where the NOS objects are served (the fake's own origin once it serves; empty
    /// before, so attachment URLs are paths).
    pub media_origin: String,
    /// Message copies waiting to be posted (`None`: copies are off; see `copies.rs`).
    pub copies: Option<Vec<Value>>,
    next_id: i64,
    last_time: i64,
}

/// One change made by [`World::random_activity`].
#[derive(Clone, Debug, PartialEq)]
pub enum Activity {
    Message {
        server_id: i64,
    },
    /// A message sent with a no-sense flag.
    NoSenseMessage {
        server_id: i64,
    },
    Edit {
        server_id: i64,
    },
    OneWayRecall {
        server_id: i64,
    },
    TwoWayRecall {
        server_id: i64,
    },
    Delete {
        server_id: i64,
    },
    CommentAdded {
        server_id: i64,
        operator: String,
        index: i64,
    },
    CommentRemoved {
        server_id: i64,
        operator: String,
        index: i64,
    },
    ConversationChanged {
        conversation_id: String,
    },
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn lang_of(id: &str) -> Lang {
    if id.bytes().map(u32::from).sum::<u32>() % 10 < 7 {
        Lang::Chinese
    } else {
        Lang::English
    }
}

impl World {
    /// Generate a world; the same spec always gives the same world (no wall clock).
    pub fn generate(spec: &WorldSpec) -> World {
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let accounts: Vec<String> = (0..spec.accounts.max(1))
            .map(|i| format!("acc{i:02}"))
            .collect();
        let no_cloud: BTreeSet<String> = (0..spec.accounts_without_cloud)
            .map(|i| format!("nocloud{i:02}"))
            .collect();
        let users: Vec<String> = (0..spec.users.max(2))
            .map(|i| format!("user{i:03}"))
            .collect();
        let mut world = World {
            copies: None,
            app_key: spec.app_key.clone(),
            app_secret: spec.app_secret.clone(),
            behaviour: Behaviour::default(),
            accounts: accounts.clone(),
            no_cloud,
            users: users.clone(),
            teams: BTreeMap::new(),
            messages: Vec::new(),
            by_id: HashMap::new(),
            streams: BTreeMap::new(),
            conversations: BTreeMap::new(),
            media: BTreeMap::new(),
            media_origin: String::new(),
            next_id: FIRST_SERVER_ID,
            last_time: 0,
        };
        let start = spec.end_ms - i64::from(spec.days.max(1)) * 86_400_000;
        // streams
        let mut streams: Vec<Stream> = Vec::new();
        for acc in &accounts {
            let mut peers: Vec<&String> = users.iter().collect();
            peers.shuffle(&mut rng);
            for peer in peers.into_iter().take(spec.direct_chats) {
                streams.push(p2p(acc, peer));
            }
        }
        if accounts.len() >= 2 {
            streams.push(p2p(&accounts[0], &accounts[1]));
        }
        for t in 0..(spec.teams + spec.super_teams) {
            let id = 2_366_968_294 + t as i64 * 1_001;
            let mut members: Vec<String> = accounts.clone();
            let mut others = users.clone();
            others.shuffle(&mut rng);
            members.extend(others.into_iter().take(rng.gen_range(2..=6)));
            world.teams.insert(
                id,
                Team {
                    id,
                    name: text::group_name(&mut rng),
                    super_team: t >= spec.teams,
                    members,
                },
            );
            streams.push(Stream::Team(id));
        }
        streams.sort();
        streams.dedup();
        for s in &streams {
            world.streams.insert(s.clone(), Vec::new());
            world.open_conversations(s, start);
        }
        // messages: skewed over streams, times sorted
        let mut times: Vec<i64> = (0..spec.messages)
            .map(|_| rng.gen_range(start..spec.end_ms))
            .collect();
        times.sort();
        let weights: Vec<f64> = (0..streams.len()).map(|i| 1.0 / (i as f64 + 1.0)).collect();
        let dist = rand::distributions::WeightedIndex::new(&weights).expect("weights");
        let busiest = streams.first().cloned();
        let run_at = times.get(times.len() / 2).copied().unwrap_or(start);
        let mut i = 0;
        while i < times.len() {
            let (stream, at, n) = if i == times.len() / 2 && spec.same_ms_run > 0 {
                let n = spec.same_ms_run.min(times.len() - i);
                (busiest.clone().expect("a stream"), run_at, n)
            } else {
                let s = streams[rand::distributions::Distribution::sample(&dist, &mut rng)].clone();
                (s, times[i], 1)
            };
            for _ in 0..n {
                let sender = world.random_member(&stream, &mut rng);
                let (mt, text, att, file) = random_body(&mut rng, &sender);
                let att = world.register_media(att, file);
                let id = world.insert_message(&stream, &sender, at, mt, text, att, &mut rng);
                // history of edits, one-way recalls, removals, comments
                let roll: f64 = rng.gen();
                let idx = world.by_id[&id];
                if roll < 0.04 {
                    let m = &mut world.messages[idx];
                    m.text = format!("{} (已编辑)", m.text);
                    m.modify_account_id = Some(m.sender.clone());
                    m.modify_time = Some(at + 30_000);
                } else if roll < 0.05 {
                    let sender = world.messages[idx].sender.clone();
                    let members = world.members(&stream);
                    let m = &mut world.messages[idx];
                    for who in members.into_iter().filter(|w| *w != sender) {
                        m.no_sense_for.insert(who);
                    }
                } else if roll < 0.06 {
                    world.messages[idx].removed = Some(Removal::Delete { at: at + 60_000 });
                }
                if rng.gen_bool(0.08) {
                    let members = world.members(&stream);
                    let op = members.choose(&mut rng).cloned().unwrap_or_default();
                    let index = rng.gen_range(1..=6);
                    world.messages[idx].comments.push(Comment {
                        operator_id: op,
                        index,
                        extension: if rng.gen_bool(0.3) {
                            json!({"emoji": index}).to_string()
                        } else {
                            String::new()
                        },
                        time: at + 5_000,
                    });
                }
            }
            i += n;
        }
        world.last_time = spec.end_ms;
        if spec.media_quirks {
            world.media_quirks(spec.end_ms);
        }
        let convs: Vec<String> = world.conversations.keys().cloned().collect();
        for id in convs {
            world.refresh_conversation(&id);
        }
        world
    }

    fn open_conversations(&mut self, stream: &Stream, at: i64) {
        let members = self.members(stream);
        for owner in members {
            if !self.accounts.contains(&owner) {
                continue;
            }
            let (ty, target) = match stream {
                Stream::P2p(a, b) => (1, if *a == owner { b.clone() } else { a.clone() }),
                Stream::Team(id) => (
                    if self.teams[id].super_team { 3 } else { 2 },
                    id.to_string(),
                ),
            };
            let c = Conversation {
                owner,
                stream: stream.clone(),
                conversation_type: ty,
                target,
                stick_top: false,
                group_ids: Vec::new(),
                server_extension: String::new(),
                message_state: 0,
                revoke_notification: None,
                create_time: at,
                update_time: at,
            };
            self.conversations.insert(c.id(), c);
        }
    }

    /// Members of a stream (both sides of a pair, or the team's members).
    pub fn members(&self, stream: &Stream) -> Vec<String> {
        match stream {
            Stream::P2p(a, b) => vec![a.clone(), b.clone()],
            Stream::Team(id) => self
                .teams
                .get(id)
                .map(|t| t.members.clone())
                .unwrap_or_default(),
        }
    }

    fn random_member<R: Rng + ?Sized>(&self, stream: &Stream, rng: &mut R) -> String {
        self.members(stream)
            .choose(rng)
            .cloned()
            .unwrap_or_else(|| "user000".into())
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_message<R: Rng + ?Sized>(
        &mut self,
        stream: &Stream,
        sender: &str,
        at: i64,
        message_type: i64,
        text: String,
        attachment: Option<Value>,
        rng: &mut R,
    ) -> i64 {
        let id = self.next_id;
        self.next_id += rng.gen_range(1..=9);
        let m = Message {
            server_id: id,
            client_id: format!("c-{:08x}", rng.gen::<u32>()),
            stream: stream.clone(),
            sender: sender.to_string(),
            sender_client_type: *[1, 2, 4, 16, 32].choose(rng).unwrap_or(&1),
            message_type,
            sub_type: 0,
            create_time: at,
            text,
            attachment,
            extension: String::new(),
            modify_account_id: None,
            modify_time: None,
            no_sense_for: BTreeSet::new(),
            sent_no_sense: false,
            removed: None,
            comments: Vec::new(),
            malformed: false,
        };
        let idx = self.messages.len();
        self.messages.push(m);
        self.by_id.insert(id, idx);
        self.copy_message(idx);
        let list = self.streams.entry(stream.clone()).or_default();
        // keep (create_time, id) order; appends are the common case
        let pos = list.partition_point(|&j| {
            let o = &self.messages[j];
            (o.create_time, o.server_id) <= (at, id)
        });
        list.insert(pos, idx);
        id
    }

    /// Recompute the last-message facts of one conversation.
    fn refresh_conversation(&mut self, id: &str) {
        let Some(c) = self.conversations.get(id) else {
            return;
        };
        let last = self.streams.get(&c.stream).and_then(|l| l.last()).copied();
        if let Some(idx) = last {
            let t = self.messages[idx].create_time;
            let c = self.conversations.get_mut(id).expect("exists");
            c.update_time = c.update_time.max(t);
        }
    }

    /// The message visible last in a conversation (not removed, not no-sense for the owner).
    pub fn last_message(&self, conversation_id: &str) -> Option<&Message> {
        let c = self.conversations.get(conversation_id)?;
        self.streams.get(&c.stream)?.iter().rev().find_map(|&i| {
            let m = &self.messages[i];
            (m.removed.is_none() && !m.no_sense_for.contains(&c.owner)).then_some(m)
        })
    }

    /// The wall clock as this server stamps new messages (see [`Behaviour::clock_lag_ms`]).
    pub fn clock(&mut self) -> i64 {
        let t = (now_ms() - self.behaviour.clock_lag_ms).max(self.last_time + 1);
        self.last_time = t;
        t
    }

    // ---- changes ----------------------------------------------------------------------

    /// Post a text message to the stream behind `conversation_id`.
    pub fn post_text(&mut self, conversation_id: &str, sender: &str, text: &str) -> Option<i64> {
        let stream = self.conversations.get(conversation_id)?.stream.clone();
        let at = self.clock();
        let mut rng = StdRng::seed_from_u64(at as u64 ^ self.next_id as u64);
        Some(self.post_at(&stream, sender, at, 0, text.to_string(), None, &mut rng))
    }

    /// Post `n` text messages at the same millisecond.
    pub fn post_burst(&mut self, conversation_id: &str, sender: &str, n: usize) -> Vec<i64> {
        let Some(stream) = self
            .conversations
            .get(conversation_id)
            .map(|c| c.stream.clone())
        else {
            return Vec::new();
        };
        let at = self.clock();
        let mut rng = StdRng::seed_from_u64(at as u64);
        (0..n)
            .map(|i| self.post_at(&stream, sender, at, 0, format!("burst {i}"), None, &mut rng))
            .collect()
    }

    /// Post a text message sent with the no-sense flags of the send API
    /// (`sender_no_sense`: the sender does not see it; `receiver_no_sense`: the receivers do
    /// not). Reads return it only with `include_no_sense_msg=true` for those accounts, the
    /// same way as a one-way recalled message; it was never recalled.
    pub fn post_no_sense(
        &mut self,
        conversation_id: &str,
        sender: &str,
        text: &str,
        sender_no_sense: bool,
        receiver_no_sense: bool,
    ) -> Option<i64> {
        let id = self.post_text(conversation_id, sender, text)?;
        let idx = self.by_id[&id];
        let members = self.members(&self.messages[idx].stream.clone());
        let m = &mut self.messages[idx];
        m.sent_no_sense = sender_no_sense || receiver_no_sense;
        for who in members {
            let is_sender = who == m.sender;
            if (is_sender && sender_no_sense) || (!is_sender && receiver_no_sense) {
                m.no_sense_for.insert(who);
            }
        }
        Some(id)
    }

    /// Post a text message that carries no `message_client_id` (reads leave the field out).
    pub fn post_without_client_id(
        &mut self,
        conversation_id: &str,
        sender: &str,
        text: &str,
    ) -> Option<i64> {
        let id = self.post_text(conversation_id, sender, text)?;
        let idx = self.by_id[&id];
        self.messages[idx].client_id = String::new();
        Some(id)
    }

    #[allow(clippy::too_many_arguments)]
    fn post_at<R: Rng + ?Sized>(
        &mut self,
        stream: &Stream,
        sender: &str,
        at: i64,
        message_type: i64,
        text: String,
        attachment: Option<Value>,
        rng: &mut R,
    ) -> i64 {
        let id = self.insert_message(stream, sender, at, message_type, text, attachment, rng);
        self.touch_stream(stream, at);
        id
    }

    fn touch_stream(&mut self, stream: &Stream, at: i64) {
        let ids: Vec<String> = self
            .conversations
            .iter()
            .filter(|(_, c)| c.stream == *stream)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            let c = self.conversations.get_mut(&id).expect("exists");
            c.update_time = c.update_time.max(at);
            c.message_state = 0;
            c.revoke_notification = None;
        }
    }

    /// Whether a message exists, is still in history and is at most `days` old.
    fn within(&mut self, server_id: i64, days: i64) -> Option<usize> {
        let now = self.clock();
        let &idx = self.by_id.get(&server_id)?;
        let m = &self.messages[idx];
        (m.removed.is_none() && now - m.create_time <= days * 86_400_000).then_some(idx)
    }

    /// Edit a message: new text, `modify_time`, `modify_account_id`; only
    /// messages of the last 7 days can be edited.
    pub fn edit(&mut self, server_id: i64, by: &str, text: &str) -> bool {
        let Some(idx) = self.within(server_id, EDIT_DAYS) else {
            return false;
        };
        let at = self.clock();
        let m = &mut self.messages[idx];
        m.text = text.to_string();
        m.modify_account_id = Some(by.to_string());
        m.modify_time = Some(at.max(m.modify_time.unwrap_or(0) + 1000));
        true
    }

    /// One-way recall (type 1, messages up to 30 days old): a no-sense message for everyone
    /// but the sender.
    pub fn recall_one_way(&mut self, server_id: i64) -> bool {
        let Some(idx) = self.within(server_id, ONE_WAY_DAYS) else {
            return false;
        };
        let stream = self.messages[idx].stream.clone();
        let members = self.members(&stream);
        let m = &mut self.messages[idx];
        let sender = m.sender.clone();
        m.no_sense_for
            .extend(members.into_iter().filter(|w| *w != sender));
        true
    }

    /// Two-way recall (type 2, within the app's recall window, at most 7 days): gone from
    /// history; if it was a conversation's last message, that conversation shows
    /// `message_state = 1` and a `revoke_notification`.
    pub fn recall_two_way(&mut self, server_id: i64, by: &str) -> bool {
        if self.within(server_id, EDIT_DAYS).is_none() {
            return false;
        }
        let at = self.clock();
        self.copy_recall(server_id, by, at);
        self.remove(
            server_id,
            Removal::TwoWayRecall {
                by: by.to_string(),
                at,
            },
            Some(by),
        )
    }

    /// Delete (type 3, messages up to 30 days old): gone from history, nobody notified.
    pub fn delete(&mut self, server_id: i64) -> bool {
        if self.within(server_id, ONE_WAY_DAYS).is_none() {
            return false;
        }
        let at = self.clock();
        self.remove(server_id, Removal::Delete { at }, None)
    }

    fn remove(&mut self, server_id: i64, how: Removal, by: Option<&str>) -> bool {
        let Some(&idx) = self.by_id.get(&server_id) else {
            return false;
        };
        if self.messages[idx].removed.is_some() {
            return false;
        }
        let stream = self.messages[idx].stream.clone();
        let convs: Vec<String> = self
            .conversations
            .iter()
            .filter(|(_, c)| c.stream == stream)
            .map(|(id, _)| id.clone())
            .collect();
        let was_last: Vec<bool> = convs
            .iter()
            .map(|c| self.last_message(c).map(|m| m.server_id) == Some(server_id))
            .collect();
        let at = match &how {
            Removal::TwoWayRecall { at, .. } | Removal::Delete { at } => *at,
        };
        let ty = self.messages[idx].conversation_type(self);
        self.messages[idx].removed = Some(how);
        if let Some(by) = by {
            for (id, last) in convs.iter().zip(was_last) {
                if !last {
                    continue;
                }
                let c = self.conversations.get_mut(id).expect("exists");
                c.message_state = 1;
                c.update_time = c.update_time.max(at);
                c.revoke_notification = Some(json!({
                    "server_id": server_id,
                    "revoke_id": by,
                    "revoke_type": if ty == 1 { 1 } else if ty == 2 { 2 } else { 3 },
                    "attach": "",
                    "custom_info": "",
                }));
            }
        }
        true
    }

    /// Add a quick comment.
    pub fn add_comment(&mut self, server_id: i64, operator: &str, index: i64) -> bool {
        let at = self.clock();
        let Some(&idx) = self.by_id.get(&server_id) else {
            return false;
        };
        let m = &mut self.messages[idx];
        if m.comments
            .iter()
            .any(|c| c.operator_id == operator && c.index == index)
        {
            return false;
        }
        m.comments.push(Comment {
            operator_id: operator.to_string(),
            index,
            extension: json!({"n": index}).to_string(),
            time: at,
        });
        true
    }

    pub fn remove_comment(&mut self, server_id: i64, operator: &str, index: i64) -> bool {
        let Some(&idx) = self.by_id.get(&server_id) else {
            return false;
        };
        let m = &mut self.messages[idx];
        let before = m.comments.len();
        m.comments
            .retain(|c| !(c.operator_id == operator && c.index == index));
        m.comments.len() < before
    }

    /// The conversation update call (`PATCH /im/v2/conversations/{id}`).
    pub fn set_server_extension(&mut self, conversation_id: &str, ext: &str) -> bool {
        let at = self.clock();
        match self.conversations.get_mut(conversation_id) {
            Some(c) => {
                c.server_extension = ext.to_string();
                c.update_time = c.update_time.max(at);
                true
            }
            None => false,
        }
    }

    /// Pin or unpin (changes `stick_top` and `update_time`).
    pub fn set_stick_top(&mut self, conversation_id: &str, top: bool) -> bool {
        let at = self.clock();
        match self.conversations.get_mut(conversation_id) {
            Some(c) => {
                c.stick_top = top;
                c.update_time = c.update_time.max(at);
                true
            }
            None => false,
        }
    }

    /// Messages of a conversation's stream still in history, oldest first.
    pub fn visible_ids(&self, conversation_id: &str) -> Vec<i64> {
        let Some(c) = self.conversations.get(conversation_id) else {
            return Vec::new();
        };
        self.streams
            .get(&c.stream)
            .map(|l| {
                l.iter()
                    .map(|&i| &self.messages[i])
                    .filter(|m| m.removed.is_none())
                    .map(|m| m.server_id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `n` random changes near the end of the timeline: new messages (mostly), edits,
    /// recalls, deletes, quick comments and conversation updates.
    pub fn random_activity<R: Rng + ?Sized>(&mut self, rng: &mut R, n: usize) -> Vec<Activity> {
        let mut done = Vec::new();
        let convs: Vec<String> = self.conversations.keys().cloned().collect();
        if convs.is_empty() {
            return done;
        }
        for _ in 0..n {
            let conv = convs.choose(rng).expect("non-empty").clone();
            let stream = self.conversations[&conv].stream.clone();
            let recent: Vec<i64> = self.visible_ids(&conv).into_iter().rev().take(30).collect();
            let roll = rng.gen_range(0..100);
            let target = recent.choose(rng).copied();
            let member = self.random_member(&stream, rng);
            match (roll, target) {
                (57..=59, Some(_)) => {
                    let lang = lang_of(&member);
                    let (sender_ns, receiver_ns) = match rng.gen_range(0..3) {
                        0 => (true, false),
                        1 => (false, true),
                        _ => (true, true),
                    };
                    let text = text::message(rng, lang);
                    if let Some(id) =
                        self.post_no_sense(&conv, &member, &text, sender_ns, receiver_ns)
                    {
                        done.push(Activity::NoSenseMessage { server_id: id });
                    }
                }
                (0..=59, _) | (_, None) => {
                    let (mt, text, att, file) = random_body(rng, &member);
                    let att = self.register_media(att, file);
                    let at = self.clock();
                    let id = self.post_at(&stream, &member, at, mt, text, att, rng);
                    done.push(Activity::Message { server_id: id });
                }
                (60..=69, Some(id)) => {
                    let lang = lang_of(&member);
                    if self.edit(id, &member, &text::message(rng, lang)) {
                        done.push(Activity::Edit { server_id: id });
                    }
                }
                (70..=73, Some(id)) => {
                    if self.recall_one_way(id) {
                        done.push(Activity::OneWayRecall { server_id: id });
                    }
                }
                (74..=77, Some(id)) => {
                    if self.recall_two_way(id, &member) {
                        done.push(Activity::TwoWayRecall { server_id: id });
                    }
                }
                (78..=79, Some(id)) => {
                    if self.delete(id) {
                        done.push(Activity::Delete { server_id: id });
                    }
                }
                (80..=91, Some(id)) => {
                    let index = rng.gen_range(1..=6);
                    if self.add_comment(id, &member, index) {
                        done.push(Activity::CommentAdded {
                            server_id: id,
                            operator: member,
                            index,
                        });
                    }
                }
                (92..=95, Some(id)) => {
                    let existing = self.by_id.get(&id).and_then(|&i| {
                        self.messages[i]
                            .comments
                            .first()
                            .map(|c| (c.operator_id.clone(), c.index))
                    });
                    if let Some((op, index)) = existing {
                        if self.remove_comment(id, &op, index) {
                            done.push(Activity::CommentRemoved {
                                server_id: id,
                                operator: op,
                                index,
                            });
                        }
                    }
                }
                _ => {
                    let ext = json!({"tag": rng.gen_range(0..1000)}).to_string();
                    if self.set_server_extension(&conv, &ext) {
                        done.push(Activity::ConversationChanged {
                            conversation_id: conv.clone(),
                        });
                    }
                }
            }
        }
        done
    }

    // ---- media ------------------------------------------------------------------------

    /// Keep `file` among the NOS objects and point `attachment`'s `url` at it.
    fn register_media(
        &mut self,
        attachment: Option<Value>,
        file: Option<MediaFile>,
    ) -> Option<Value> {
        let (Some(mut a), Some(file)) = (attachment.clone(), file) else {
            return attachment;
        };
        let url = format!("{}{}", self.media_origin, file.path());
        edit_attachment(&mut a, |o| {
            o.insert("url".into(), json!(url));
        });
        self.media.insert(file.key.clone(), file);
        Some(a)
    }

    /// Serve the NOS objects under `origin` (e.g. `http://127.0.0.1:40123`): every
    /// attachment URL pointing at the fake's NOS is rewritten to it.
    pub fn set_media_origin(&mut self, origin: &str) {
        let origin = origin.trim_end_matches('/').to_string();
        let old = std::mem::replace(&mut self.media_origin, origin.clone());
        for m in &mut self.messages {
            if let Some(a) = &mut m.attachment {
                edit_attachment(a, |o| {
                    let rest = o
                        .get("url")
                        .and_then(Value::as_str)
                        .and_then(|u| u.strip_prefix(old.as_str()))
                        .filter(|r| r.starts_with("/nos/"))
                        .map(str::to_string);
                    if let Some(rest) = rest {
                        o.insert("url".into(), json!(format!("{origin}{rest}")));
                    }
                });
            }
        }
    }

    /// The NOS object a message's attachment points to, if it is one of the fake's.
    pub fn media_of(&self, m: &Message) -> Option<&MediaFile> {
        self.media.get(&media_key(m.attachment.as_ref()?)?)
    }

    /// See [`WorldSpec::media_quirks`]. An expired URL's `Expires` is a day after the
    /// message was sent (NOS's shortest expiry), and never later than an hour before the
    /// end of the generated timeline.
    fn media_quirks(&mut self, end_ms: i64) {
        let mut seen = BTreeMap::<i64, usize>::new();
        for idx in 0..self.messages.len() {
            let m = &self.messages[idx];
            let Some(key) = m.attachment.as_ref().and_then(media_key) else {
                continue;
            };
            let (ty, at) = (m.message_type, m.create_time);
            let n = seen.entry(ty).or_default();
            *n += 1;
            let Some(file) = self.media.get_mut(&key) else {
                continue;
            };
            let a = self.messages[idx].attachment.as_mut().expect("has one");
            match (ty, *n) {
                (6, 1) => file.gone = true,
                (3, 1) => {
                    file.expires = Some((at / 1000 + 86_400).min(end_ms / 1000 - 3_600));
                    let url = format!("{}{}", self.media_origin, file.path());
                    edit_attachment(a, |o| {
                        o.insert("url".into(), json!(url));
                    });
                }
                (2, 1) => {
                    file.declared_md5 = format!("{:x}", md5::Md5::digest(file.key.as_bytes()));
                    let declared = file.declared_md5.clone();
                    edit_attachment(a, |o| {
                        o.insert("md5".into(), json!(declared));
                    });
                }
                (2, 2) => *a = Value::String(a.to_string()),
                _ => {}
            }
        }
    }

    // ---- truth --------------------------------------------------------------------------

    /// Everything the archived accounts' conversations hold or held, to compare an archive
    /// against.
    pub fn truth(&self) -> Vec<ConversationTruth> {
        self.conversations
            .values()
            .filter(|c| self.accounts.contains(&c.owner))
            .map(|c| ConversationTruth {
                conversation_id: c.id(),
                owner: c.owner.clone(),
                conversation_type: c.conversation_type,
                server_extension: c.server_extension.clone(),
                stick_top: c.stick_top,
                messages: self
                    .streams
                    .get(&c.stream)
                    .map(|l| {
                        l.iter()
                            .map(|&i| {
                                let m = &self.messages[i];
                                MessageTruth {
                                    message_id: m.server_id.to_string(),
                                    sender: m.sender.clone(),
                                    create_time: m.create_time,
                                    message_type: m.message_type,
                                    text: m.text.clone(),
                                    modify_time: m.modify_time,
                                    no_sense: m.no_sense_for.contains(&c.owner),
                                    sent_no_sense: m.sent_no_sense,
                                    removed: m.removed.clone(),
                                    comments: m
                                        .comments
                                        .iter()
                                        .map(|k| (k.operator_id.clone(), k.index))
                                        .collect(),
                                    attachments: self
                                        .media_of(m)
                                        .map(|f| AttachmentTruth {
                                            message_type: m.message_type,
                                            url: format!("{}{}", self.media_origin, f.path()),
                                            md5: f.md5.clone(),
                                            declared_md5: f.declared_md5.clone(),
                                            sha256: f.sha256.clone(),
                                            size: f.size,
                                            outcome: f.outcome(now_ms() / 1000),
                                            json_string: m
                                                .attachment
                                                .as_ref()
                                                .is_some_and(Value::is_string),
                                        })
                                        .into_iter()
                                        .collect(),
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect()
    }
}

/// One archived account's conversation as upstream holds it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ConversationTruth {
    pub conversation_id: String,
    pub owner: String,
    pub conversation_type: i64,
    pub server_extension: String,
    pub stick_top: bool,
    /// Every message of the stream, removed ones included, by `(create_time, id)`.
    pub messages: Vec<MessageTruth>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MessageTruth {
    pub message_id: String,
    pub sender: String,
    pub create_time: i64,
    pub message_type: i64,
    pub text: String,
    pub modify_time: Option<i64>,
    /// A no-sense message for this conversation's owner (one-way recalled or deleted, or
    /// sent with a no-sense flag).
    pub no_sense: bool,
    /// Sent with a no-sense flag: no-sense from the start, never recalled.
    pub sent_no_sense: bool,
    /// Gone from history (two-way recall or delete).
    pub removed: Option<Removal>,
    /// Standing quick comments `(operator, index)`.
    pub comments: Vec<(String, i64)>,
    /// The files it points to on the fake's NOS (at most one).
    pub attachments: Vec<AttachmentTruth>,
}

/// A file a message points to, as the fake's NOS holds it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AttachmentTruth {
    pub message_type: i64,
    /// As the message gives it.
    pub url: String,
    /// Of the bytes served.
    pub md5: String,
    /// As the message declares it (differs from `md5` for the deliberately wrong one).
    pub declared_md5: String,
    pub sha256: String,
    pub size: usize,
    /// What a request for it gets now.
    pub outcome: MediaOutcome,
    /// The message's attachment is a JSON string holding the object.
    pub json_string: bool,
}

/// Change an attachment's fields, whether it is an object or a JSON string holding one.
fn edit_attachment(a: &mut Value, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    match a {
        Value::Object(o) => f(o),
        Value::String(s) => {
            if let Ok(Value::Object(mut o)) = serde_json::from_str::<Value>(s) {
                f(&mut o);
                *s = Value::Object(o).to_string();
            }
        }
        _ => {}
    }
}

/// The key of the fake's NOS object an attachment's `url` names.
fn media_key(a: &Value) -> Option<String> {
    let url = match a {
        Value::String(s) => serde_json::from_str::<Value>(s)
            .ok()?
            .get("url")?
            .as_str()?
            .to_string(),
        _ => a.get("url")?.as_str()?.to_string(),
    };
    let rest = &url[url.find(&format!("/nos/{BUCKET}/"))? + BUCKET.len() + 6..];
    Some(rest.split(['?', '#']).next().unwrap_or(rest).to_string())
}

fn p2p(a: &str, b: &str) -> Stream {
    if a <= b {
        Stream::P2p(a.to_string(), b.to_string())
    } else {
        Stream::P2p(b.to_string(), a.to_string())
    }
}

/// A random message body: `(message_type, text, attachment, file)` covering every message
/// type (`docs/upstreams/yunxin.md`, "Identifiers"); media messages come with the NOS object
/// their attachment points to (its `url` a path until [`World::register_media`]).
fn random_body<R: Rng + ?Sized>(
    rng: &mut R,
    sender: &str,
) -> (i64, String, Option<Value>, Option<MediaFile>) {
    let lang = lang_of(sender);
    let roll = rng.gen_range(0..100);
    let seed = rng.gen::<u128>();
    let media = |ty: i64, ext: &str, n: u64| MediaFile::new(ty, ext, seed, n);
    let (mt, text, att) = match roll {
        0..=69 => (0, text::message(rng, lang), None),
        70..=76 => {
            let f = media(1, "png", rng.gen_range(1000..900_000));
            let (w, h) = f.dimensions().unwrap_or((1, 1));
            let a = json!({"name": "a.png", "md5": f.md5, "url": f.path(), "ext": "png", "w": w, "h": h, "size": f.size});
            return (1, String::new(), Some(a), Some(f));
        }
        77..=80 => {
            let dur = rng.gen_range(1000..60_000);
            let f = media(2, "aac", 0);
            let a =
                json!({"dur": dur, "md5": f.md5, "url": f.path(), "ext": "aac", "size": f.size});
            return (2, String::new(), Some(a), Some(f));
        }
        81..=83 => {
            let f = media(3, "mp4", 0);
            let a = json!({"dur": 12_000, "md5": f.md5, "url": f.path(), "w": 1280, "h": 720, "ext": "mp4", "size": f.size});
            return (3, String::new(), Some(a), Some(f));
        }
        87..=89 => {
            let f = media(6, "pdf", 0);
            let a = json!({"name": "报告.pdf", "md5": f.md5, "url": f.path(), "ext": "pdf", "size": f.size});
            return (6, String::new(), Some(a), Some(f));
        }
        84..=86 => (
            4,
            String::new(),
            Some(json!({"title": text::place(rng), "lng": 120.15, "lat": 30.28})),
        ),
        90..=91 => (10, "对方已加入群聊".to_string(), None),
        92 => (
            5,
            String::new(),
            Some(json!({"id": 0, "data": {"ids": [sender]}})),
        ),
        93 => (7, String::new(), Some(json!({"type": 1, "duration": 42}))),
        94 => (11, text::message(rng, lang), None),
        95..=96 => (
            12,
            String::new(),
            Some(json!({"type": 2, "status": 1, "duration": 65})),
        ),
        _ => (
            100,
            text::message(rng, lang),
            Some(json!({"kind": "card", "title": text::message(rng, lang)})),
        ),
    };
    (mt, text, att, None)
}
