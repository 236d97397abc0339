//! The fake WuKongIM gateway: the subset of WuKongIM's binary client protocol the
//! connector's push channel uses ([`crate::connector::tangsengdaodao::wkproto`]), on a TCP
//! port of its own that `GET /v1/users/:uid/im` names as `tcp_addr`.
//!
//! - CONNECT is checked like WuKongIM checks it against TangSengDaoDao's token cache: the
//!   token must be a live session token of the uid (else CONNACK reason 2); a missing
//!   client key is reason 21. The CONNACK carries a fresh X25519 key and salt, and every
//!   RECV's payload is AES-encrypted and signed with its `msg_key`.
//! - Each connection watches the world (every few milliseconds) and pushes, for the
//!   archiving account's channels: a RECV per new message; a `syncMessageExtra` command
//!   when a channel's extras version moves (edit, recall, mutual delete, pin, read count);
//!   a `syncMessageReaction` command when its reaction seq moves. Commands are RECVs with
//!   the no-persist flag and a `{"type":99,"cmd":..}` payload, as TangSengDaoDao's
//!   `SendCMD` sends them.
//! - PING is answered with PONG; PINGs and RECVACKs are counted.
//!
//! Switches (on [`super::Faults`]): drop every open connection now
//! ([`ImSwitches::drop_connections`]), stop answering PINGs
//! ([`ImSwitches::mute_pongs`]), refuse every token ([`ImSwitches::refuse_tokens`]), spoil the next RECVs'
//! `msg_key` ([`ImSwitches::tamper_next`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::world::{ChannelKey, World};
use crate::connector::tangsengdaodao::wkproto::{
    self, Connack, KeyPair, Packet, Recv, SessionKeys,
};
use crate::sim::serve;

/// How often a connection looks for changes in the world.
const WATCH_EVERY: Duration = Duration::from_millis(10);
/// TangSengDaoDao's command message type.
const CMD_TYPE: u8 = 99;

/// Live switches and counters of the fake gateway.
#[derive(Debug, Default)]
pub struct ImSwitches {
    generation: AtomicU64,
    mute_pongs: AtomicBool,
    refuse_tokens: AtomicBool,
    tamper: AtomicU64,
    connections: AtomicU64,
    refused: AtomicU64,
    recvacks: AtomicU64,
    pushes: AtomicU64,
    pings: AtomicU64,
}

impl ImSwitches {
    /// Close every open connection now, mid-stream (new ones are accepted).
    pub fn drop_connections(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Stop (or resume) answering PINGs.
    pub fn mute_pongs(&self, mute: bool) {
        self.mute_pongs.store(mute, Ordering::SeqCst);
    }

    /// Refuse (or accept again) every token at CONNECT, as WuKongIM does when its token
    /// cache no longer holds the session's token.
    pub fn refuse_tokens(&self, refuse: bool) {
        self.refuse_tokens.store(refuse, Ordering::SeqCst);
    }

    /// Send the next `n` RECVs with a wrong `msg_key` (as a tampered or corrupted packet).
    pub fn tamper_next(&self, n: u64) {
        self.tamper.store(n, Ordering::SeqCst);
    }

    /// Connections that got a successful CONNACK.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// CONNECTs refused.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// RECVACKs received.
    pub fn recvacks(&self) -> u64 {
        self.recvacks.load(Ordering::SeqCst)
    }

    /// RECVs sent.
    pub fn pushes(&self) -> u64 {
        self.pushes.load(Ordering::SeqCst)
    }

    /// PINGs received (the clients' keepalives), answered or not.
    pub fn pings(&self) -> u64 {
        self.pings.load(Ordering::SeqCst)
    }
}

/// The listening gateway; stops (with all its connections) when dropped.
pub(super) struct Gateway {
    addr: SocketAddr,
    _stop: watch::Sender<()>,
}

impl Gateway {
    pub(super) async fn start(
        ip: IpAddr,
        world: Arc<Mutex<World>>,
        switches: Arc<ImSwitches>,
    ) -> std::io::Result<Gateway> {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0)).await?;
        let mut addr = listener.local_addr()?;
        if addr.ip().is_unspecified() {
            addr.set_ip(IpAddr::from([127, 0, 0, 1]));
        }
        let (stop, stopped) = watch::channel(());
        tokio::spawn(async move {
            let mut stopped_accept = stopped.clone();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let conn = Connection {
                            world: world.clone(),
                            switches: switches.clone(),
                        };
                        let stopped = stopped.clone();
                        tokio::spawn(conn.serve(stream, stopped));
                    }
                    _ = stopped_accept.changed() => return,
                }
            }
        });
        Ok(Gateway { addr, _stop: stop })
    }

    pub(super) fn tcp_addr(&self) -> String {
        self.addr.to_string()
    }
}

/// Where the watcher stands in one channel.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Mark {
    last_seq: u32,
    extra_version: i64,
    reaction_seq: i64,
}

struct Connection {
    world: Arc<Mutex<World>>,
    switches: Arc<ImSwitches>,
}

impl Connection {
    async fn serve(self, mut stream: TcpStream, mut stopped: watch::Receiver<()>) {
        let Some((uid, version, keys)) = self.handshake(&mut stream).await else {
            return;
        };
        self.switches.connections.fetch_add(1, Ordering::SeqCst);
        let generation = self.switches.generation.load(Ordering::SeqCst);
        let mut marks = self.marks(&uid);
        let mut next_cmd_id: i64 = 1 << 50;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 4096];
        let mut tick = tokio::time::interval(WATCH_EVERY);
        loop {
            tokio::select! {
                read = stream.read(&mut chunk) => {
                    let Ok(n) = read else { return };
                    if n == 0 { return }
                    buf.extend_from_slice(&chunk[..n]);
                    loop {
                        match wkproto::decode(&buf, version) {
                            Ok(Some((packet, used))) => {
                                buf.drain(..used);
                                let pong = !self.switches.mute_pongs.load(Ordering::SeqCst);
                                if matches!(packet, Packet::Ping) {
                                    self.switches.pings.fetch_add(1, Ordering::SeqCst);
                                }
                                match packet {
                                    Packet::Ping if pong && stream.write_all(&wkproto::encode(&Packet::Pong, version)).await.is_err() => return,
                                    Packet::Recvack { .. } => {
                                        self.switches.recvacks.fetch_add(1, Ordering::SeqCst);
                                    }
                                    _ => {}
                                }
                            }
                            Ok(None) => break,
                            Err(wkproto::CodecError::Body { consumed, .. }) => { buf.drain(..consumed); }
                            Err(wkproto::CodecError::Fatal(_)) => return,
                        }
                    }
                }
                _ = tick.tick() => {
                    if self.switches.generation.load(Ordering::SeqCst) != generation {
                        return; // dropped mid-stream: the socket closes without DISCONNECT
                    }
                    let pushes = self.changes(&uid, &mut marks, &mut next_cmd_id);
                    for recv in pushes {
                        let mut sealed = keys.seal(recv);
                        let tampered = self.switches.tamper.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
                        if tampered.is_ok() {
                            sealed.msg_key = "0".repeat(32);
                        }
                        self.switches.pushes.fetch_add(1, Ordering::SeqCst);
                        if stream.write_all(&wkproto::encode(&Packet::Recv(sealed), version)).await.is_err() {
                            return;
                        }
                    }
                }
                _ = stopped.changed() => return,
            }
        }
    }

    /// CONNECT in, CONNACK out: the uid, the protocol version and the session keys.
    async fn handshake(&self, stream: &mut TcpStream) -> Option<(String, u8, SessionKeys)> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let connect = loop {
            match wkproto::decode(&buf, wkproto::PROTO_VERSION) {
                Ok(Some((Packet::Connect(c), _))) => break c,
                Ok(None) => {}
                _ => return None,
            }
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk));
            match read.await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        };
        let version = match connect.version {
            0 => wkproto::PROTO_VERSION,
            v => v.min(wkproto::PROTO_VERSION),
        };
        let mut connack = Connack {
            server_version: (connect.version > 3).then_some(version),
            time_diff: 0,
            reason_code: wkproto::REASON_AUTH_FAIL,
            server_key: String::new(),
            salt: String::new(),
            node_id: 1,
        };
        let token_ok = serve::lock(&self.world).token_uid(&connect.token) == Some(&connect.uid)
            && !connect.token.is_empty()
            && !self.switches.refuse_tokens.load(Ordering::SeqCst);
        let server_keys = KeyPair::generate();
        let salt = wkproto::random_salt();
        let session = if !token_ok {
            None
        } else if connect.client_key.is_empty() {
            connack.reason_code = wkproto::REASON_CLIENT_KEY_EMPTY;
            None
        } else {
            server_keys.session(&connect.client_key, &salt).ok()
        };
        if let Some(_keys) = &session {
            connack.reason_code = wkproto::REASON_SUCCESS;
            connack.server_key = server_keys.public_b64.clone();
            connack.salt = salt;
        }
        let bytes = wkproto::encode(&Packet::Connack(connack), version);
        if stream.write_all(&bytes).await.is_err() {
            return None;
        }
        match session {
            Some(keys) => Some((connect.uid, version, keys)),
            None => {
                self.switches.refused.fetch_add(1, Ordering::SeqCst);
                None
            }
        }
    }

    fn marks(&self, uid: &str) -> HashMap<ChannelKey, Mark> {
        let world = serve::lock(&self.world);
        world
            .channels
            .iter()
            .filter(|c| world.is_member(&c.key, uid))
            .map(|c| (c.key.clone(), mark_of(c)))
            .collect()
    }

    /// The RECVs for what changed since `marks` (which move on).
    fn changes(
        &self,
        uid: &str,
        marks: &mut HashMap<ChannelKey, Mark>,
        next_cmd_id: &mut i64,
    ) -> Vec<Recv> {
        let world = serve::lock(&self.world);
        let mut out = Vec::new();
        for channel in &world.channels {
            if !world.is_member(&channel.key, uid) {
                continue;
            }
            let now = mark_of(channel);
            let before = marks.get(&channel.key).copied().unwrap_or_default();
            if now == before {
                continue;
            }
            let channel_id = channel.key.id_for(uid);
            let channel_type = channel.key.channel_type;
            for message in channel
                .messages
                .iter()
                .filter(|m| m.message_seq > before.last_seq)
            {
                out.push(Recv {
                    flags: 0x02, // red dot
                    from_uid: message.from_uid.clone(),
                    channel_id: channel_id.clone(),
                    channel_type,
                    client_msg_no: message.client_msg_no.clone(),
                    message_id: message.message_id as i64,
                    message_seq: u64::from(message.message_seq),
                    timestamp: message.timestamp as i32,
                    payload: serde_json::to_vec(&message.payload).unwrap_or_default(),
                    ..Recv::default()
                });
            }
            let mut command = |cmd: &str| {
                *next_cmd_id += 1;
                Recv {
                    flags: wkproto::FLAG_NO_PERSIST,
                    from_uid: uid.to_string(),
                    channel_id: channel_id.clone(),
                    channel_type,
                    client_msg_no: format!("cmd-{}", *next_cmd_id),
                    message_id: *next_cmd_id,
                    message_seq: 0,
                    timestamp: world.last_timestamp as i32,
                    payload: serde_json::to_vec(&json!({"type": CMD_TYPE, "cmd": cmd}))
                        .unwrap_or_default(),
                    ..Recv::default()
                }
            };
            if now.extra_version > before.extra_version {
                out.push(command("syncMessageExtra"));
            }
            if now.reaction_seq > before.reaction_seq {
                out.push(command("syncMessageReaction"));
            }
            marks.insert(channel.key.clone(), now);
        }
        out
    }
}

fn mark_of(channel: &super::world::Channel) -> Mark {
    Mark {
        last_seq: channel.last_seq(),
        extra_version: channel
            .extras_by_version
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0),
        reaction_seq: channel
            .reactions_by_seq
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0),
    }
}
