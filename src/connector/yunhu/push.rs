//! Yunhu's push channel: the WebSocket at `wss://chat-ws-go.jwzhd.com/ws` (the source's
//! `ws_url`), as `docs/upstreams/yunhu.md` ("Push channel") writes it down.
//!
//! The client sends JSON text: a `login` with the user id (from `GET /v1/user/info`), the
//! token, a platform Yunhu accepts ([`PLATFORM`]) and a device id that stays the same for a
//! source ([`device_id`]), then a `heartbeat` every [`PushTiming::heartbeat_every`]. The
//! server sends binary protobuf frames `{info {seq, cmd}, data Any{type_url, value}}`;
//! `push_message` (a new message, or a recall when `delete_timestamp` is set),
//! `edit_message` and `stream_message` become [`PushSignal`]s, every other cmd is ignored.
//!
//! A push is only a signal: the engine reads the conversation through the same path as a
//! scheduled run (an edit's record included). The conversation id is the one discovery
//! uses: a group's id, or for a private chat the peer's id (a private message pushed to
//! the account carries the account's own id as `chat_id` and the peer as `sender`).
//!
//! The channel counts as up once a heartbeat is acknowledged; a heartbeat not acknowledged
//! within [`PushTiming::ack_timeout`] ends the connection, as does the server closing it.
//! Undecodable frames are counted and skipped; frames are bounded ([`MAX_FRAME_BYTES`]).
//! The token is sent only inside the login frame: it never appears in a log line or an
//! error.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use futures::{SinkExt, StreamExt};
use prost::Message;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::api::USER_INFO;
use super::{pb, YunhuConnector};
use crate::connector::ConnectorError;
use crate::push::{PushKind, PushSignal, PushSink};

/// Where Yunhu's clients connect.
pub const DEFAULT_WS_URL: &str = "wss://chat-ws-go.jwzhd.com/ws";
/// The login's `platform`: one of the values the server accepts (`windows`, `macos`,
/// `android`, `linux`, `ios`, `fuchsia`, `Web`; case matters).
pub const PLATFORM: &str = "linux";
/// The largest frame read; a larger one ends the connection (polling stays the net).
pub const MAX_FRAME_BYTES: usize = 1024 * 1024;
/// Message ids remembered per connection to place an edit push that names no peer.
const RECENT_MESSAGES: usize = 4096;

/// The push channel's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushTiming {
    /// Between heartbeats (Yunhu's clients: 15 s).
    pub heartbeat_every: Duration,
    /// How long a heartbeat may go unanswered before the connection counts as dead.
    pub ack_timeout: Duration,
    /// Connecting, the handshake and the first acknowledgement, together.
    pub login_timeout: Duration,
}

impl Default for PushTiming {
    fn default() -> Self {
        PushTiming {
            heartbeat_every: Duration::from_secs(15),
            ack_timeout: Duration::from_secs(30),
            login_timeout: Duration::from_secs(20),
        }
    }
}

/// The device id the login gives: the same for a source and account every time, so the
/// archive appears as one device, not a new one per connection.
pub fn device_id(source: &str, user_id: &str) -> String {
    let digest = Sha256::digest(format!("chatvault yunhu device\n{source}\n{user_id}"));
    format!("chatvault-{}", &hex::encode(digest)[..24])
}

/// The login frame (JSON text). Holds the token: never logged.
pub fn login_frame(seq: u64, user_id: &str, token: &str, device_id: &str) -> String {
    json!({
        "seq": seq.to_string(),
        "cmd": "login",
        "data": {
            "userId": user_id,
            "token": token,
            "platform": PLATFORM,
            "deviceId": device_id,
        }
    })
    .to_string()
}

pub fn heartbeat_frame(seq: u64) -> String {
    json!({"seq": seq.to_string(), "cmd": "heartbeat", "data": {}}).to_string()
}

/// What a server frame means to the archive.
#[derive(Debug, PartialEq)]
pub enum Frame {
    HeartbeatAck,
    Signal(PushSignal),
    /// A push for a private chat that names no peer, for a message not seen on this
    /// connection: the next scheduled run reads it.
    Unplaced,
    /// A cmd chatvault does not read (drafts, invitations, bot boards, ...).
    Ignored(String),
}

/// Message ids seen on this connection and their conversation (bounded).
#[derive(Default)]
pub struct Recent {
    by_id: HashMap<String, String>,
    order: VecDeque<String>,
}

impl Recent {
    fn remember(&mut self, msg_id: &str, conversation: &str) {
        if msg_id.is_empty() || self.by_id.contains_key(msg_id) {
            return;
        }
        if self.order.len() >= RECENT_MESSAGES {
            if let Some(old) = self.order.pop_front() {
                self.by_id.remove(&old);
            }
        }
        self.by_id
            .insert(msg_id.to_string(), conversation.to_string());
        self.order.push_back(msg_id.to_string());
    }
}

fn at_ms(ms: u64) -> Option<DateTime<Utc>> {
    i64::try_from(ms)
        .ok()
        .filter(|ms| *ms > 0)
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
}

/// Decode one binary frame for the account `me`. `Err`: not a frame of this protocol.
pub fn decode_frame(bytes: &[u8], me: &str, recent: &mut Recent) -> Result<Frame, String> {
    let frame = pb::WsFrame::decode(bytes).map_err(|e| format!("not a push frame: {e}"))?;
    let cmd = frame.info.map(|i| i.cmd).unwrap_or_default();
    let value = frame.data.map(|d| d.value).unwrap_or_default();
    match cmd.as_str() {
        "heartbeat_ack" => Ok(Frame::HeartbeatAck),
        "push_message" | "edit_message" => {
            let msg = pb::PushMessage::decode(value.as_slice())
                .map_err(|e| format!("{cmd}: not a PushMessage: {e}"))?;
            if msg.msg_id.is_empty() {
                return Err(format!("{cmd}: no msg_id"));
            }
            let (kind, at) = if cmd == "edit_message" {
                (PushKind::Edit, msg.edit_time)
            } else if msg.delete_timestamp > 0 {
                (PushKind::Recall, msg.delete_timestamp)
            } else {
                (PushKind::NewMessage, msg.timestamp)
            };
            let peer = msg.sender.as_ref().map(|s| s.chat_id.as_str());
            let conversation = if msg.chat_id.is_empty() {
                return Err(format!("{cmd}: no chat_id"));
            } else if msg.chat_id != me {
                msg.chat_id.clone()
            } else if let Some(peer) = peer.filter(|p| !p.is_empty() && *p != me) {
                peer.to_string()
            } else if let Some(known) = recent.by_id.get(&msg.msg_id) {
                known.clone()
            } else {
                return Ok(Frame::Unplaced);
            };
            recent.remember(&msg.msg_id, &conversation);
            Ok(Frame::Signal(PushSignal {
                conversation_id: conversation,
                kind,
                message_id: Some(msg.msg_id),
                upstream_at: at_ms(at),
            }))
        }
        "stream_message" => {
            let msg = pb::StreamMessage::decode(value.as_slice())
                .map_err(|e| format!("{cmd}: not a StreamMessage: {e}"))?;
            let conversation = if !msg.chat_id.is_empty() && msg.chat_id != me {
                Some(msg.chat_id.clone())
            } else {
                recent.by_id.get(&msg.msg_id).cloned()
            };
            Ok(match conversation {
                Some(conversation_id) => Frame::Signal(PushSignal {
                    conversation_id,
                    kind: PushKind::Edit,
                    message_id: Some(msg.msg_id),
                    upstream_at: None,
                }),
                None => Frame::Unplaced,
            })
        }
        "" => Err("a frame without a cmd".into()),
        other => Ok(Frame::Ignored(other.chars().take(64).collect())),
    }
}

impl YunhuConnector {
    /// The account's own user id (`GET /v1/user/info`).
    pub(super) async fn user_id(&self) -> Result<String, ConnectorError> {
        let body = self.api.get_proto(USER_INFO, &self.token).await?;
        let what = self.api.what_get(USER_INFO);
        let info =
            pb::UserInfoResponse::decode(body.as_slice()).map_err(|e| ConnectorError::Decode {
                message: format!("{what}: not a user info: {e}"),
                raw: Some(crate::connector::http::raw_body(&body)),
            })?;
        super::api::check_status(&what, info.status.as_ref())?;
        match info.data.map(|d| d.id).filter(|id| !id.is_empty()) {
            Some(id) => Ok(id),
            None => Err(ConnectorError::Decode {
                message: format!("{what}: no user id"),
                raw: None,
            }),
        }
    }

    /// One connection of the push channel, until it ends; the error says why.
    pub(super) async fn listen_once(&self, sink: &PushSink) -> ConnectorError {
        let what = format!("yunhu source {}: push channel", self.source);
        let user_id = match self.user_id().await {
            Ok(id) => id,
            Err(e) => return e,
        };
        let timing = self.push_timing;
        let deadline = Instant::now() + timing.login_timeout;
        let config = WebSocketConfig::default()
            .max_frame_size(Some(MAX_FRAME_BYTES))
            .max_message_size(Some(MAX_FRAME_BYTES));
        let connect =
            tokio_tungstenite::connect_async_with_config(self.ws_url.as_str(), Some(config), false);
        let mut ws = match tokio::time::timeout_at(deadline, connect).await {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => {
                return ConnectorError::Transient(format!(
                    "{what}: cannot connect to {}: {}",
                    self.ws_url,
                    short(&e.to_string())
                ))
            }
            Err(_) => {
                return ConnectorError::Transient(format!(
                    "{what}: connecting to {} took longer than {:?}",
                    self.ws_url, timing.login_timeout
                ))
            }
        };
        let mut seq = 1u64;
        let login = login_frame(
            seq,
            &user_id,
            self.token.expose(),
            &device_id(self.source.as_str(), &user_id),
        );
        seq += 1;
        if let Err(e) = ws.send(WsMessage::text(login)).await {
            return ConnectorError::Transient(format!(
                "{what}: login not sent: {}",
                short(&e.to_string())
            ));
        }
        if let Err(e) = ws.send(WsMessage::text(heartbeat_frame(seq))).await {
            return ConnectorError::Transient(format!(
                "{what}: heartbeat not sent: {}",
                short(&e.to_string())
            ));
        }
        seq += 1;
        let mut connected = false;
        let mut last_ack = Instant::now();
        let mut heartbeat_sent = Instant::now();
        let mut awaiting_ack = true;
        let mut undecodable = 0u64;
        let mut recent = Recent::default();
        let mut ticker = tokio::time::interval(timing.heartbeat_every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        // Refusals (text frames) received before the first acknowledgement.
        let mut refusals: Vec<String> = Vec::new();
        let end = loop {
            let ack_due = if connected {
                heartbeat_sent + timing.ack_timeout
            } else {
                deadline
            };
            tokio::select! {
                _ = ticker.tick() => {
                    if awaiting_ack && Instant::now() >= heartbeat_sent + timing.ack_timeout {
                        break self.dead_heartbeat(&what, timing, last_ack);
                    }
                    if let Err(e) = ws.send(WsMessage::text(heartbeat_frame(seq))).await {
                        break ConnectorError::Transient(format!(
                            "{what}: heartbeat not sent: {}",
                            short(&e.to_string())
                        ));
                    }
                    seq += 1;
                    if !awaiting_ack {
                        heartbeat_sent = Instant::now();
                        awaiting_ack = true;
                    }
                }
                _ = tokio::time::sleep_until(ack_due), if awaiting_ack => {
                    if !connected {
                        break ConnectorError::Transient(format!(
                            "{what}: login not acknowledged within {:?}",
                            timing.login_timeout
                        ));
                    }
                    break self.dead_heartbeat(&what, timing, last_ack);
                }
                frame = ws.next() => {
                    let frame = match frame {
                        None => break ConnectorError::Transient(format!("{what}: connection closed")),
                        Some(Err(e)) => break ConnectorError::Transient(format!(
                            "{what}: connection lost: {}",
                            short(&e.to_string())
                        )),
                        Some(Ok(frame)) => frame,
                    };
                    match frame {
                        WsMessage::Binary(bytes) => match decode_frame(&bytes, &user_id, &mut recent) {
                            Ok(Frame::HeartbeatAck) => {
                                last_ack = Instant::now();
                                awaiting_ack = false;
                                if !connected {
                                    connected = true;
                                    sink.connected();
                                    tracing::info!(source = %self.source, "yunhu push channel connected");
                                }
                            }
                            Ok(Frame::Signal(signal)) => sink.signal(signal),
                            Ok(Frame::Unplaced) => tracing::debug!(
                                source = %self.source,
                                "yunhu push for a private chat without its peer; the next run reads it"
                            ),
                            Ok(Frame::Ignored(cmd)) => {
                                tracing::debug!(source = %self.source, cmd, "yunhu push ignored")
                            }
                            Err(why) => {
                                undecodable += 1;
                                tracing::warn!(
                                    source = %self.source,
                                    undecodable,
                                    "yunhu push frame skipped: {why}"
                                );
                            }
                        },
                        WsMessage::Text(text) => {
                            if !connected {
                                // Yunhu answers what it does not accept with a text
                                // ("数据不合法"): a refused login, or a heartbeat that
                                // overtook the login. The heartbeat after it decides.
                                refusals.push(short(text.as_str()));
                                if refusals.len() >= 2 {
                                    break ConnectorError::Unauthorized(format!(
                                        "{what}: login refused ({}); check the token",
                                        refusals[0]
                                    ));
                                }
                                continue;
                            }
                            undecodable += 1;
                            tracing::warn!(source = %self.source, undecodable, "yunhu push: unexpected text frame skipped");
                        }
                        WsMessage::Close(close) => {
                            let why = close
                                .map(|c| format!("{} {}", u16::from(c.code), short(c.reason.as_str())))
                                .unwrap_or_else(|| "no reason".into());
                            break ConnectorError::Transient(format!("{what}: closed by upstream ({why})"));
                        }
                        // tungstenite answers pings itself
                        WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
                    }
                }
            }
        };
        // a connection that ends after a refusal and before any acknowledgement: refused
        match refusals.first() {
            Some(text) if !connected && !matches!(end, ConnectorError::Unauthorized(_)) => {
                ConnectorError::Unauthorized(format!(
                    "{what}: login refused ({text}); check the token"
                ))
            }
            _ => end,
        }
    }

    fn dead_heartbeat(&self, what: &str, timing: PushTiming, last_ack: Instant) -> ConnectorError {
        ConnectorError::Transient(format!(
            "{what}: heartbeat not answered within {:?} (last answer {:?} ago)",
            timing.ack_timeout,
            last_ack.elapsed()
        ))
    }
}

/// An upstream or library text, cut short (it is never the token: the token travels only
/// inside the login frame, which no error quotes).
fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(cmd: &str, msg: Option<pb::PushMessage>) -> Vec<u8> {
        pb::WsFrame {
            info: Some(pb::WsInfo {
                seq: "1".into(),
                cmd: cmd.into(),
            }),
            data: msg.map(|m| pb::WsAny {
                type_url: "type.googleapis.com/proto.PushMessage".into(),
                value: m.encode_to_vec(),
            }),
        }
        .encode_to_vec()
    }

    fn sender(id: &str) -> Option<pb::Sender> {
        Some(pb::Sender {
            chat_id: id.into(),
            chat_type: 1,
            ..Default::default()
        })
    }

    #[test]
    fn a_private_push_is_keyed_by_the_peer_and_an_edit_without_sender_by_memory() {
        let mut recent = Recent::default();
        let new = pb::PushMessage {
            msg_id: "m1".into(),
            sender: sender("peer"),
            chat_id: "me".into(),
            recv_id: "me".into(),
            chat_type: 1,
            timestamp: 1_700_000_000_000,
            ..Default::default()
        };
        let Frame::Signal(s) =
            decode_frame(&frame("push_message", Some(new)), "me", &mut recent).unwrap()
        else {
            panic!("a signal")
        };
        assert_eq!(s.conversation_id, "peer");
        assert_eq!(s.kind, PushKind::NewMessage);
        assert_eq!(s.upstream_at.unwrap().timestamp_millis(), 1_700_000_000_000);
        let edit = pb::PushMessage {
            msg_id: "m1".into(),
            chat_id: "me".into(),
            recv_id: "me".into(),
            edit_time: 1_700_000_001_000,
            ..Default::default()
        };
        let got = decode_frame(
            &frame("edit_message", Some(edit.clone())),
            "me",
            &mut recent,
        );
        assert!(
            matches!(got, Ok(Frame::Signal(ref s)) if s.conversation_id == "peer" && s.kind == PushKind::Edit),
            "{got:?}"
        );
        let mut fresh = Recent::default();
        assert_eq!(
            decode_frame(&frame("edit_message", Some(edit)), "me", &mut fresh),
            Ok(Frame::Unplaced)
        );
    }

    #[test]
    fn a_recall_is_a_push_message_with_a_delete_time() {
        let recall = pb::PushMessage {
            msg_id: "m2".into(),
            sender: sender("operator"),
            chat_id: "group-1".into(),
            chat_type: 2,
            delete_timestamp: 1_700_000_002_000,
            msg_seq: 9,
            ..Default::default()
        };
        let got = decode_frame(
            &frame("push_message", Some(recall)),
            "me",
            &mut Recent::default(),
        );
        assert!(
            matches!(got, Ok(Frame::Signal(ref s)) if s.conversation_id == "group-1" && s.kind == PushKind::Recall),
            "{got:?}"
        );
    }

    #[test]
    fn garbage_and_unknown_cmds_are_not_signals() {
        let mut recent = Recent::default();
        assert!(decode_frame(&[0xff, 0xff, 0xff], "me", &mut recent).is_err());
        assert_eq!(
            decode_frame(&frame("heartbeat_ack", None), "me", &mut recent),
            Ok(Frame::HeartbeatAck)
        );
        assert_eq!(
            decode_frame(&frame("draft_input", None), "me", &mut recent),
            Ok(Frame::Ignored("draft_input".into()))
        );
    }

    #[test]
    fn a_stream_chunk_is_an_edit_of_its_message() {
        let chunk = pb::StreamMessage {
            msg_id: "m3".into(),
            recv_id: "group-2".into(),
            chat_id: "group-2".into(),
            content: "more".into(),
        };
        let bytes = pb::WsFrame {
            info: Some(pb::WsInfo {
                seq: String::new(),
                cmd: "stream_message".into(),
            }),
            data: Some(pb::WsAny {
                type_url: String::new(),
                value: chunk.encode_to_vec(),
            }),
        }
        .encode_to_vec();
        let got = decode_frame(&bytes, "me", &mut Recent::default());
        assert!(
            matches!(got, Ok(Frame::Signal(ref s)) if s.conversation_id == "group-2" && s.kind == PushKind::Edit && s.message_id.as_deref() == Some("m3")),
            "{got:?}"
        );
    }

    #[test]
    fn memory_of_pushed_messages_is_bounded() {
        let mut recent = Recent::default();
        for i in 0..RECENT_MESSAGES + 10 {
            recent.remember(&format!("m{i}"), "c");
        }
        assert_eq!(recent.by_id.len(), RECENT_MESSAGES);
        assert!(!recent.by_id.contains_key("m0"));
        assert!(recent
            .by_id
            .contains_key(&format!("m{}", RECENT_MESSAGES + 9)));
    }

    #[test]
    fn the_device_id_is_stable_per_source_and_account() {
        assert_eq!(device_id("a", "1"), device_id("a", "1"));
        assert_ne!(device_id("a", "1"), device_id("b", "1"));
        assert_ne!(device_id("a", "1"), device_id("a", "2"));
    }
}
