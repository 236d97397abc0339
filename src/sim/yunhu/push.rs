//! The fake's push channel: Yunhu's WebSocket as `docs/upstreams/yunhu.md` ("Push channel")
//! writes it down. The client sends JSON text (`login`, `heartbeat`); the server answers a
//! heartbeat with a binary `heartbeat_ack` frame and, once a login with the world's token, a
//! platform Yunhu accepts and the account's user id was received, pushes every post
//! (`push_message`), edit (`edit_message`, without sender, chat type or timestamp) and
//! recall (`push_message` with `delete_timestamp` and the recalled seq) of the world as it
//! happens. A private message pushed to the account carries the account's own id as
//! `chat_id` and the peer as `sender`. Anything sent before a valid login is answered
//! with the text `数据不合法`, as Yunhu does.
//!
//! [`PushControl`] (in the fake's [`super::Faults`]) records the logins and heartbeats
//! seen, and has the switches tests need: drop every connection mid-stream, stop answering
//! heartbeats, refuse logins or heartbeats, send a frame that is not protobuf or one far too large.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use prost::Message as _;
use serde_json::Value;
use tokio::sync::broadcast;

use super::server::AppState;
use super::world::{Change, World, GROUP};
use crate::connector::yunhu::pb;
use crate::sim::serve;

/// Changes a slow client may fall behind by before it misses some.
pub const CHANGES_BUFFERED: usize = 4096;
/// The platforms Yunhu's WebSocket login accepts (case matters).
pub const PLATFORMS: &[&str] = &[
    "windows", "macos", "android", "linux", "ios", "fuchsia", "Web",
];
/// What Yunhu answers to anything it does not accept.
pub const INVALID: &str = "数据不合法";
/// The size of the frame [`PushControl::send_oversized`] sends: past any sane bound.
pub const OVERSIZED_FRAME: usize = 4 * 1024 * 1024;
/// The largest frame the fake reads.
const MAX_FRAME: usize = 64 * 1024;

/// A login the fake received (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    pub user_id: String,
    pub platform: String,
    pub device_id: String,
    pub accepted: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Command {
    Drop,
    Garbage,
    Oversized,
}

#[derive(Debug)]
struct Control {
    logins: Mutex<Vec<Login>>,
    heartbeats: AtomicU64,
    silent: AtomicBool,
    refuse: AtomicBool,
    /// Heartbeats still to answer with [`INVALID`] whatever the login.
    overtaken: AtomicU64,
    open: AtomicU64,
    commands: broadcast::Sender<Command>,
}

/// The push channel's switches and what it saw; cheap to clone.
#[derive(Clone, Debug)]
pub struct PushControl {
    inner: Arc<Control>,
}

impl Default for PushControl {
    fn default() -> Self {
        PushControl {
            inner: Arc::new(Control {
                logins: Mutex::default(),
                heartbeats: AtomicU64::new(0),
                silent: AtomicBool::new(false),
                refuse: AtomicBool::new(false),
                overtaken: AtomicU64::new(0),
                open: AtomicU64::new(0),
                commands: broadcast::channel(16).0,
            }),
        }
    }
}

impl PushControl {
    /// Every login received, oldest first.
    pub fn logins(&self) -> Vec<Login> {
        serve::lock(&self.inner.logins).clone()
    }

    /// Heartbeats received (answered or not).
    pub fn heartbeats(&self) -> u64 {
        self.inner.heartbeats.load(Ordering::SeqCst)
    }

    /// WebSocket connections open now.
    pub fn open_connections(&self) -> u64 {
        self.inner.open.load(Ordering::SeqCst)
    }

    /// Stop (or resume) answering heartbeats.
    pub fn answer_heartbeats(&self, on: bool) {
        self.inner.silent.store(!on, Ordering::SeqCst);
    }

    /// Refuse (or accept again) every login, whatever it carries (a token revoked since).
    pub fn refuse_logins(&self, on: bool) {
        self.inner.refuse.store(on, Ordering::SeqCst);
    }

    /// Answer the next `n` heartbeats with [`INVALID`] even after a valid login, as if each
    /// overtook the login on the server.
    pub fn refuse_heartbeats(&self, n: u64) {
        self.inner.overtaken.store(n, Ordering::SeqCst);
    }

    /// Cut every open connection now, without a closing handshake.
    pub fn drop_connections(&self) {
        let _ = self.inner.commands.send(Command::Drop);
    }

    /// Send every open, logged-in connection one binary frame of [`OVERSIZED_FRAME`] bytes.
    pub fn send_oversized(&self) {
        let _ = self.inner.commands.send(Command::Oversized);
    }

    /// Send every open, logged-in connection a binary frame that is not a push frame.
    pub fn send_garbage(&self) {
        let _ = self.inner.commands.send(Command::Garbage);
    }
}

/// `GET /ws`.
pub(super) async fn upgrade(State(state): State<AppState>, ws: WebSocketUpgrade) -> Response {
    ws.max_frame_size(MAX_FRAME)
        .max_message_size(MAX_FRAME)
        .on_upgrade(move |socket| session(state, socket))
}

/// Counts an open connection for as long as it lives.
struct Open(Arc<Control>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn next_change(changes: &mut Option<broadcast::Receiver<Change>>) -> Option<Change> {
    let Some(rx) = changes.as_mut() else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(change) => return Some(change),
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

async fn session(state: AppState, mut socket: WebSocket) {
    let control = state.faults.push.inner.clone();
    control.open.fetch_add(1, Ordering::SeqCst);
    let _open = Open(control.clone());
    let mut commands = control.commands.subscribe();
    let mut changes: Option<broadcast::Receiver<Change>> = None;
    loop {
        tokio::select! {
            incoming = socket.recv() => {
                let text = match incoming {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                    Some(Ok(Message::Text(text))) => text.to_string(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Binary(_))) => String::new(),
                };
                let request: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                let answer = match request.get("cmd").and_then(Value::as_str) {
                    Some("login") => {
                        let mut login = check_login(&state, &request["data"]);
                        login.accepted &= !control.refuse.load(Ordering::SeqCst);
                        let accepted = login.accepted;
                        serve::lock(&control.logins).push(login);
                        if accepted && changes.is_none() {
                            changes = Some(state.world().subscribe_changes());
                        }
                        // Yunhu does not acknowledge a login; a refused one shows later
                        None
                    }
                    Some("heartbeat") => {
                        control.heartbeats.fetch_add(1, Ordering::SeqCst);
                        let overtaken = control
                            .overtaken
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                        if changes.is_none() || overtaken {
                            Some(Message::Text(INVALID.into()))
                        } else if control.silent.load(Ordering::SeqCst) {
                            None
                        } else {
                            let seq = request.get("seq").and_then(Value::as_str).unwrap_or("");
                            Some(Message::Binary(frame(seq, "heartbeat_ack", None).into()))
                        }
                    }
                    _ => Some(Message::Text(INVALID.into())),
                };
                if let Some(answer) = answer {
                    if socket.send(answer).await.is_err() {
                        return;
                    }
                }
            }
            change = next_change(&mut changes) => {
                let Some(change) = change else { return };
                let pushed = push_frame(&state, &change);
                if let Some(bytes) = pushed {
                    if socket.send(Message::Binary(bytes.into())).await.is_err() {
                        return;
                    }
                }
            }
            command = commands.recv() => match command {
                Ok(Command::Drop) | Err(broadcast::error::RecvError::Closed) => return,
                Ok(Command::Garbage) if changes.is_some() => {
                    let garbage = vec![0xff, 0xff, 0xff, 0x0f, 0x12, 0x99];
                    if socket.send(Message::Binary(garbage.into())).await.is_err() {
                        return;
                    }
                }
                Ok(Command::Oversized) if changes.is_some() => {
                    let big = vec![0u8; OVERSIZED_FRAME];
                    if socket.send(Message::Binary(big.into())).await.is_err() {
                        return;
                    }
                }
                Ok(Command::Garbage | Command::Oversized) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            }
        }
    }
}

fn check_login(state: &AppState, data: &Value) -> Login {
    let field = |k: &str| {
        data.get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let world = state.world();
    let token = field("token");
    let login = Login {
        user_id: field("userId"),
        platform: field("platform"),
        device_id: field("deviceId"),
        accepted: false,
    };
    let accepted = !token.is_empty()
        && token == world.token
        && login.user_id == world.me.id
        && PLATFORMS.contains(&login.platform.as_str())
        && !login.device_id.is_empty();
    Login { accepted, ..login }
}

/// A server frame: `{info {seq, cmd}, data Any{type_url, value}}`.
pub fn frame(seq: &str, cmd: &str, value: Option<(&str, Vec<u8>)>) -> Vec<u8> {
    pb::WsFrame {
        info: Some(pb::WsInfo {
            seq: seq.to_string(),
            cmd: cmd.to_string(),
        }),
        data: value.map(|(type_url, value)| pb::WsAny {
            type_url: type_url.to_string(),
            value,
        }),
    }
    .encode_to_vec()
}

/// The frame announcing `change`, as Yunhu pushes it.
fn push_frame(state: &AppState, change: &Change) -> Option<Vec<u8>> {
    let world = state.world();
    let (msg_id, cmd) = match change {
        Change::New(id) | Change::Recall(id) => (id, "push_message"),
        Change::Edit(id) => (id, "edit_message"),
    };
    let msg = push_message(&world, msg_id, change, state.media_base())?;
    Some(frame(
        "",
        cmd,
        Some(("type.googleapis.com/proto.PushMessage", msg.encode_to_vec())),
    ))
}

fn push_message(
    world: &World,
    msg_id: &str,
    change: &Change,
    media_base: &str,
) -> Option<pb::PushMessage> {
    let (chat, m) = world.message(msg_id)?;
    if !chat.visible(m) {
        return None;
    }
    let served = world.served(m, media_base);
    // a private message pushed to the account names the account as chat and receiver
    let (chat_id, recv_id) = if chat.chat_type == GROUP || m.sender.id == world.me.id {
        (chat.chat_id.clone(), chat.chat_id.clone())
    } else {
        (world.me.id.clone(), world.me.id.clone())
    };
    let base = pb::PushMessage {
        msg_id: m.msg_id.clone(),
        chat_id: chat_id.clone(),
        content_type: m.content_type,
        msg_seq: u64::try_from(m.seq).unwrap_or(0),
        quote_msg_id: m.quote_msg_id.clone(),
        ..Default::default()
    };
    Some(match change {
        Change::New(_) => pb::PushMessage {
            sender: served.sender,
            recv_id,
            chat_type: chat.chat_type,
            content: served.content,
            timestamp: m.send_time,
            ..base
        },
        // edits carry no sender, chat type or timestamp; recv_id is the chat id
        Change::Edit(_) => pb::PushMessage {
            recv_id: chat_id,
            content: served.content,
            edit_time: m.edit_time,
            ..base
        },
        Change::Recall(_) => pb::PushMessage {
            sender: served.sender,
            recv_id,
            chat_type: chat.chat_type,
            timestamp: m.send_time,
            delete_timestamp: m.recall_time,
            ..base
        },
    })
}
