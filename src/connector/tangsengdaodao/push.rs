//! TangSengDaoDao's push channel: a WuKongIM client connection ([`wkproto`]) that turns
//! each pushed message into a [`PushSignal`] for its conversation. The signal only says
//! "read this conversation now"; the engine reads it through the same fetch path as a
//! scheduled run, so nothing here writes to the archive.
//!
//! - The address comes from TangSengDaoDao's `GET /v1/users/:uid/im` (a proxy of
//!   WuKongIM's `/route`: `tcp_addr`, `ws_addr`, `wss_addr`). The connection uses
//!   `tcp_addr`: the same binary protocol the web client speaks inside WebSocket frames.
//! - CONNECT carries the account's uid, the session token, and the archive's own device
//!   flag (1 web or 2 PC, the flag its login used, so the token is the one the server holds
//!   for that flag; never 0, the phone's) and device id. CONNACK reason 2 (auth failed) is
//!   [`ConnectorError::Unauthorized`].
//! - Every RECV is acknowledged with a RECVACK. WuKongIM keeps delivery acknowledgements
//!   per connection (its gateway session's pending-ack tracker), so this moves nothing
//!   the user's other devices see: their read state and sync cursors are set only through
//!   TangSengDaoDao's HTTP API, which this channel never calls.
//! - A PING goes out every [`Timing::ping_every`]; no PONG within [`Timing::pong_within`]
//!   is a dead connection.
//! - A normal message is [`PushKind::NewMessage`]; the commands `syncMessageExtra` (an
//!   edit, recall, mutual delete, pin or read count changed) [`PushKind::Edit`],
//!   `syncMessageReaction` [`PushKind::Reaction`], `syncPinnedMessage`
//!   [`PushKind::Other`]. Other commands (friend requests, channel settings) name no
//!   message change and are not signalled.
//!
//! The token never appears in a log line or an error text.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tracing::{debug, warn};

use super::wkproto::{self, CodecError, Connect, KeyPair, Packet, Recv, SessionKeys};
use super::TsddConnector;
use crate::config::TsddAuth;
use crate::connector::{Connector, ConnectorError};
use crate::push::{PushKind, PushSignal, PushSink};

/// WuKongIM's person channel type; group channels (2) and the rest use their id as is.
const PERSON: u8 = 1;
/// A read buffer never holds more than one frame at the size limit plus a partial header.
const READ_CHUNK: usize = 16 * 1024;

/// Heartbeat and handshake timing of the push channel.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// How often a PING is sent.
    pub ping_every: Duration,
    /// How long a PING may go unanswered before the connection counts as dead.
    pub pong_within: Duration,
    /// Limit for the TCP connect and the CONNACK.
    pub connect_within: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            ping_every: Duration::from_secs(20),
            pong_within: Duration::from_secs(10),
            connect_within: Duration::from_secs(10),
        }
    }
}

impl TsddConnector {
    /// Use other heartbeat timing (tests use short ones).
    pub fn with_push_timing(mut self, timing: Timing) -> Self {
        self.push_timing = timing;
        self
    }

    pub(super) async fn listen_push(&self, sink: PushSink) -> Result<(), ConnectorError> {
        let result = self.push_session(&sink).await;
        let why = match &result {
            Ok(()) => "the connection closed".to_string(),
            Err(e) => e.to_string(),
        };
        sink.disconnected(&why);
        result
    }

    fn own_uid(&self) -> Option<String> {
        self.own_uid
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn push_session(&self, sink: &PushSink) -> Result<(), ConnectorError> {
        let what = format!("tsdd source {}: push channel", self.source);
        if self.token().is_err() || self.own_uid().is_none() {
            if let TsddAuth::Password { .. } = self.auth {
                Connector::login(self).await?;
            }
        }
        let token = self.token()?;
        let Some(uid) = self.own_uid() else {
            return Err(ConnectorError::Permanent(format!(
                "{what}: the account's uid is unknown (a token-only configuration does not \
                 give it; configure username and password to use the push channel)"
            )));
        };
        let route = self.api.get(&format!("/v1/users/{uid}/im"), &token).await?;
        let addr = tcp_addr(&route).ok_or_else(|| ConnectorError::Decode {
            message: format!("{what}: /v1/users/{uid}/im names no tcp_addr"),
            raw: Some(route.clone()),
        })?;
        let timing = self.push_timing;
        let mut stream = timeout(timing.connect_within, TcpStream::connect(&addr))
            .await
            .map_err(|_| {
                ConnectorError::Transient(format!("{what}: connecting to {addr} timed out"))
            })?
            .map_err(|e| ConnectorError::Transient(format!("{what}: connecting to {addr}: {e}")))?;
        let keys = KeyPair::generate();
        let connect = Packet::Connect(Connect {
            version: wkproto::PROTO_VERSION,
            device_flag: self.device_flag,
            device_id: self.device_id.clone(),
            uid: uid.clone(),
            token: token.expose().to_string(),
            client_timestamp: Utc::now().timestamp_millis(),
            client_key: keys.public_b64.clone(),
        });
        write(
            &mut stream,
            &wkproto::encode(&connect, wkproto::PROTO_VERSION),
            &what,
        )
        .await?;

        let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
        let connack = timeout(
            timing.connect_within,
            read_connack(&mut stream, &mut buf, &what),
        )
        .await
        .map_err(|_| ConnectorError::Transient(format!("{what}: no CONNACK in time")))??;
        match connack.reason_code {
            wkproto::REASON_SUCCESS => {}
            wkproto::REASON_AUTH_FAIL => {
                return Err(ConnectorError::Unauthorized(format!(
                    "{what}: WuKongIM refused the session token (CONNACK reason 2)"
                )))
            }
            wkproto::REASON_BAN => {
                return Err(ConnectorError::Permanent(format!(
                    "{what}: WuKongIM says the account is banned (CONNACK reason 19)"
                )))
            }
            code => {
                return Err(ConnectorError::Transient(format!(
                    "{what}: WuKongIM refused the connection (CONNACK reason {code})"
                )))
            }
        }
        let version = connack.server_version.unwrap_or(wkproto::PROTO_VERSION);
        // an empty server key: the server runs without payload encryption
        let session = if connack.server_key.is_empty() {
            None
        } else {
            Some(
                keys.session(&connack.server_key, &connack.salt)
                    .map_err(|why| ConnectorError::Transient(format!("{what}: CONNACK: {why}")))?,
            )
        };
        sink.connected();
        debug!(source = %self.source, %addr, version, "push channel connected");

        let mut undecodable: u64 = 0;
        let mut last_ping = Instant::now();
        let mut awaiting_pong: Option<Instant> = None;
        let tick_every =
            (timing.ping_every.min(timing.pong_within) / 4).max(Duration::from_millis(5));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut chunk = vec![0u8; READ_CHUNK];
        loop {
            // every complete frame in the buffer first
            loop {
                match wkproto::decode(&buf, version) {
                    Ok(None) => break,
                    Ok(Some((packet, used))) => {
                        buf.drain(..used);
                        match packet {
                            Packet::Recv(recv) => {
                                let ack = Packet::Recvack {
                                    message_id: recv.message_id,
                                    message_seq: recv.message_seq,
                                };
                                write(&mut stream, &wkproto::encode(&ack, version), &what).await?;
                                match signal_of(&recv, session.as_ref(), &uid) {
                                    Ok(Some(signal)) => sink.signal(signal),
                                    Ok(None) => {}
                                    Err(why) => {
                                        undecodable += 1;
                                        warn!(source = %self.source, message_id = recv.message_id, undecodable, "push channel: a pushed message could not be read and is skipped ({why}); the next scheduled run reads its conversation anyway");
                                    }
                                }
                            }
                            Packet::Pong => awaiting_pong = None,
                            Packet::Ping => {
                                write(&mut stream, &wkproto::encode(&Packet::Pong, version), &what)
                                    .await?
                            }
                            Packet::Disconnect {
                                reason_code,
                                reason,
                            } => {
                                return Err(ConnectorError::Transient(format!(
                                    "{what}: WuKongIM disconnected this connection (reason {reason_code}: {})",
                                    reason.chars().take(200).collect::<String>()
                                )))
                            }
                            _ => {}
                        }
                    }
                    Err(CodecError::Body {
                        frame_type,
                        message,
                        consumed,
                    }) => {
                        buf.drain(..consumed);
                        undecodable += 1;
                        warn!(source = %self.source, frame_type, undecodable, "push channel: an undecodable frame is skipped ({message})");
                    }
                    Err(CodecError::Fatal(why)) => {
                        return Err(ConnectorError::Transient(format!("{what}: {why}")))
                    }
                }
            }
            tokio::select! {
                read = stream.read(&mut chunk) => {
                    let n = read.map_err(|e| ConnectorError::Transient(format!("{what}: reading: {e}")))?;
                    if n == 0 {
                        return Err(ConnectorError::Transient(format!("{what}: WuKongIM closed the connection")));
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                _ = tick.tick() => {
                    if let Some(sent) = awaiting_pong {
                        if sent.elapsed() >= timing.pong_within {
                            return Err(ConnectorError::Transient(format!(
                                "{what}: no PONG within {} ms of a PING",
                                timing.pong_within.as_millis()
                            )));
                        }
                    } else if last_ping.elapsed() >= timing.ping_every {
                        write(&mut stream, &wkproto::encode(&Packet::Ping, version), &what).await?;
                        last_ping = Instant::now();
                        awaiting_pong = Some(last_ping);
                    }
                }
            }
        }
    }
}

async fn write(stream: &mut TcpStream, bytes: &[u8], what: &str) -> Result<(), ConnectorError> {
    stream
        .write_all(bytes)
        .await
        .map_err(|e| ConnectorError::Transient(format!("{what}: writing: {e}")))
}

async fn read_connack(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    what: &str,
) -> Result<wkproto::Connack, ConnectorError> {
    let mut chunk = [0u8; 1024];
    loop {
        match wkproto::decode(buf, wkproto::PROTO_VERSION) {
            Ok(Some((Packet::Connack(connack), used))) => {
                buf.drain(..used);
                return Ok(connack);
            }
            Ok(Some((other, _))) => {
                return Err(ConnectorError::Transient(format!(
                    "{what}: expected CONNACK, got {}",
                    packet_name(&other)
                )))
            }
            Ok(None) => {}
            Err(e) => return Err(ConnectorError::Transient(format!("{what}: CONNACK: {e}"))),
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| ConnectorError::Transient(format!("{what}: reading CONNACK: {e}")))?;
        if n == 0 {
            return Err(ConnectorError::Transient(format!(
                "{what}: WuKongIM closed the connection before CONNACK"
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::Connack(_) => "CONNACK",
        Packet::Recv(_) => "RECV",
        Packet::Recvack { .. } => "RECVACK",
        Packet::Ping => "PING",
        Packet::Pong => "PONG",
        Packet::Disconnect { .. } => "DISCONNECT",
        Packet::Other { .. } => "another frame",
    }
}

/// `tcp_addr` of a route answer as `host:port` (a `tcp://` prefix removed).
fn tcp_addr(route: &Value) -> Option<String> {
    let addr = route.get("tcp_addr")?.as_str()?.trim();
    let addr = addr.strip_prefix("tcp://").unwrap_or(addr);
    (!addr.is_empty() && addr.contains(':')).then(|| addr.to_string())
}

/// The conversation id the connector uses for a pushed channel. A person channel is
/// archived under the other participant's uid: WuKongIM may name it by the peer, by the
/// account itself (a message the peer sent), or by its internal `a@b` id.
pub fn conversation_of(
    channel_id: &str,
    channel_type: u8,
    from_uid: &str,
    own_uid: &str,
) -> String {
    if channel_type != PERSON {
        return channel_id.to_string();
    }
    if let Some((a, b)) = channel_id.split_once('@') {
        return if a == own_uid { b } else { a }.to_string();
    }
    if channel_id == own_uid && !from_uid.is_empty() {
        return from_uid.to_string();
    }
    channel_id.to_string()
}

/// The signal a RECV stands for, `None` for a command that names no message change.
pub fn signal_of(
    recv: &Recv,
    keys: Option<&SessionKeys>,
    own_uid: &str,
) -> Result<Option<PushSignal>, String> {
    let plain = match keys {
        Some(keys) => keys.open(recv)?,
        None => recv.payload.clone(),
    };
    let payload: Value =
        serde_json::from_slice(&plain).map_err(|_| "the payload is not JSON".to_string())?;
    if !payload.is_object() {
        return Err("the payload is not a JSON object".into());
    }
    let conversation_id =
        conversation_of(&recv.channel_id, recv.channel_type, &recv.from_uid, own_uid);
    if conversation_id.is_empty() {
        return Err("the message names no channel".into());
    }
    let upstream_at = DateTime::<Utc>::from_timestamp(i64::from(recv.timestamp), 0);
    let (kind, message_id) = match payload.get("cmd").and_then(Value::as_str) {
        Some("syncMessageExtra") => (PushKind::Edit, None),
        Some("syncMessageReaction") => (PushKind::Reaction, None),
        Some("syncPinnedMessage") => (PushKind::Other, None),
        Some(_) => return Ok(None),
        None => (PushKind::NewMessage, Some(recv.message_id.to_string())),
    };
    Ok(Some(PushSignal {
        conversation_id,
        kind,
        message_id,
        upstream_at,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn person_channels_are_named_by_the_other_participant() {
        assert_eq!(conversation_of("peer", 1, "me", "me"), "peer");
        assert_eq!(conversation_of("me", 1, "peer", "me"), "peer");
        assert_eq!(conversation_of("me@peer", 1, "peer", "me"), "peer");
        assert_eq!(conversation_of("peer@me", 1, "me", "me"), "peer");
        assert_eq!(conversation_of("g1", 2, "peer", "me"), "g1");
    }

    #[test]
    fn payloads_map_to_kinds_and_bad_ones_are_errors() {
        let recv = |payload: &Value| Recv {
            channel_id: "g1".into(),
            channel_type: 2,
            from_uid: "u2".into(),
            message_id: 5,
            timestamp: 1_700_000_000,
            setting: wkproto::SETTING_NO_ENCRYPT,
            payload: serde_json::to_vec(payload).unwrap(),
            ..Recv::default()
        };
        let kind = |p: Value| signal_of(&recv(&p), None, "me").unwrap().map(|s| s.kind);
        assert_eq!(
            kind(json!({"type": 1, "content": "hi"})),
            Some(PushKind::NewMessage)
        );
        assert_eq!(
            kind(json!({"type": 99, "cmd": "syncMessageExtra"})),
            Some(PushKind::Edit)
        );
        assert_eq!(
            kind(json!({"type": 99, "cmd": "syncMessageReaction"})),
            Some(PushKind::Reaction)
        );
        assert_eq!(kind(json!({"type": 99, "cmd": "friendRequest"})), None);
        let signal = signal_of(&recv(&json!({"type": 1})), None, "me")
            .unwrap()
            .unwrap();
        assert_eq!(signal.message_id.as_deref(), Some("5"));
        assert_eq!(signal.upstream_at.unwrap().timestamp(), 1_700_000_000);
        let mut bad = recv(&json!({}));
        bad.payload = b"not json".to_vec();
        assert!(signal_of(&bad, None, "me").is_err());
    }

    #[test]
    fn route_answers_give_a_tcp_address() {
        assert_eq!(
            tcp_addr(&json!({"tcp_addr": "im.example:5100"})).as_deref(),
            Some("im.example:5100")
        );
        assert_eq!(
            tcp_addr(&json!({"tcp_addr": "tcp://10.0.0.1:5100"})).as_deref(),
            Some("10.0.0.1:5100")
        );
        assert_eq!(tcp_addr(&json!({"ws_addr": "ws://x:5200"})), None);
        assert_eq!(tcp_addr(&json!({"tcp_addr": ""})), None);
    }
}
