//! WuKongIM's binary client protocol ("WKProto"), the subset TangSengDaoDao's push channel
//! uses: CONNECT, CONNACK, RECV, RECVACK, PING, PONG and DISCONNECT, and the payload
//! encryption negotiated in CONNECT/CONNACK. Written from WuKongIM's own codec
//! (<https://github.com/WuKongIM/WuKongIM/tree/main/pkg/protocol/codec>, frame types and
//! reason codes in `pkg/protocol/frame/common.go`, encryption in
//! `pkg/protocol/wkprotoenc/crypto.go`); docs/upstreams/tangsengdaodao.md ("Push channel")
//! says which version was read and what is inferred.
//!
//! Both sides live here because the fake server speaks the same bytes: the connector
//! encodes CONNECT/RECVACK/PING and decodes the rest, the fake the other way round.
//!
//! A frame: one header byte (type in the high nibble, flags in the low one), then, except
//! for PING and PONG, the remaining length as a base-128 varint (at most 4 bytes, at most
//! [`MAX_REMAINING`]) and the body. Integers are big-endian, strings a `u16` length and
//! bytes.

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::Aes128;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use md5::{Digest, Md5};

pub const CONNECT: u8 = 1;
pub const CONNACK: u8 = 2;
pub const RECV: u8 = 5;
pub const RECVACK: u8 = 6;
pub const PING: u8 = 7;
pub const PONG: u8 = 8;
pub const DISCONNECT: u8 = 9;

/// The protocol version this client speaks: WuKongIM's `LatestVersion` (6: 64-bit message
/// seqs). A server that knows less answers with its own in CONNACK, which is then used.
pub const PROTO_VERSION: u8 = 6;
/// WuKongIM's `MaxRemaingLength`: a larger frame is refused (and ends the connection, since
/// the stream cannot be resynchronised after it).
pub const MAX_REMAINING: usize = 1024 * 1024;

/// CONNACK reason codes (`frame.ReasonCode`).
pub const REASON_SUCCESS: u8 = 1;
pub const REASON_AUTH_FAIL: u8 = 2;
pub const REASON_BAN: u8 = 19;
pub const REASON_CLIENT_KEY_EMPTY: u8 = 21;

/// RECV `setting` bits (`frame.Setting`).
pub const SETTING_NO_ENCRYPT: u8 = 1 << 4;
pub const SETTING_TOPIC: u8 = 1 << 3;
pub const SETTING_STREAM: u8 = 1 << 1;

/// Header flag of a RECV that is not stored (`NoPersist`, as TangSengDaoDao's commands).
pub const FLAG_NO_PERSIST: u8 = 0x01;

#[derive(Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: u8,
    pub device_flag: u8,
    pub device_id: String,
    pub uid: String,
    pub token: String,
    pub client_timestamp: i64,
    /// The client's X25519 public key, base64.
    pub client_key: String,
}

impl std::fmt::Debug for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connect")
            .field("version", &self.version)
            .field("device_flag", &self.device_flag)
            .field("device_id", &self.device_id)
            .field("uid", &self.uid)
            .field("token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connack {
    /// Present when the header's low bit says so (servers answering a client of version > 3).
    pub server_version: Option<u8>,
    pub time_diff: i64,
    pub reason_code: u8,
    /// The server's X25519 public key, base64.
    pub server_key: String,
    /// The AES IV (its first 16 bytes).
    pub salt: String,
    /// Only from version 4 on.
    pub node_id: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Recv {
    /// Header flags (low nibble): no-persist, red dot, sync-once, dup.
    pub flags: u8,
    pub setting: u8,
    pub msg_key: String,
    pub from_uid: String,
    pub channel_id: String,
    pub channel_type: u8,
    pub expire: u32,
    pub client_msg_no: String,
    pub message_id: i64,
    pub message_seq: u64,
    /// Unix seconds.
    pub timestamp: i32,
    pub topic: String,
    /// Encrypted (base64 of AES-CBC) unless `setting` has [`SETTING_NO_ENCRYPT`].
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    Connect(Connect),
    Connack(Connack),
    Recv(Recv),
    Recvack {
        message_id: i64,
        message_seq: u64,
    },
    Ping,
    Pong,
    Disconnect {
        reason_code: u8,
        reason: String,
    },
    /// A frame of a type this client does not read (SEND, SUB, EVENT...), skipped whole.
    Other {
        frame_type: u8,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// The stream is broken (a length over the limit or an overlong varint): the
    /// connection cannot continue.
    #[error("broken frame: {0}")]
    Fatal(String),
    /// One frame's body could not be decoded; `consumed` bytes skip it.
    #[error("undecodable frame of type {frame_type}: {message}")]
    Body {
        frame_type: u8,
        message: String,
        consumed: usize,
    },
}

// ---- remaining length ---------------------------------------------------------------

/// The base-128 remaining length, low digits first (MQTT style). WuKongIM writes nothing
/// for 0; every frame this module writes has a body, so 0 is written as one zero byte,
/// which WuKongIM's decoder reads as 0 too.
pub fn encode_length(mut n: u32, out: &mut Vec<u8>) {
    loop {
        let mut digit = (n % 0x80) as u8;
        n /= 0x80;
        if n > 0 {
            digit |= 0x80;
        }
        out.push(digit);
        if n == 0 {
            break;
        }
    }
}

/// `Ok(None)`: more bytes are needed. `Ok(Some((length, bytes used)))` otherwise.
pub fn decode_length(data: &[u8]) -> Result<Option<(u32, usize)>, CodecError> {
    let mut value: u32 = 0;
    for (i, &digit) in data.iter().enumerate().take(4) {
        value |= u32::from(digit & 0x7f) << (7 * i);
        if digit & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if data.len() >= 4 {
        return Err(CodecError::Fatal(
            "remaining length longer than 4 bytes".into(),
        ));
    }
    Ok(None)
}

// ---- encoding -----------------------------------------------------------------------

fn put_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let len = bytes.len().min(u16::MAX as usize);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&bytes[..len]);
}

fn put_seq(out: &mut Vec<u8>, version: u8, seq: u64) {
    if version <= 5 {
        out.extend_from_slice(&(seq.min(u64::from(u32::MAX)) as u32).to_be_bytes());
    } else {
        out.extend_from_slice(&seq.to_be_bytes());
    }
}

/// One frame's bytes, as `version` lays them out.
pub fn encode(packet: &Packet, version: u8) -> Vec<u8> {
    let mut body = Vec::new();
    let header = match packet {
        Packet::Ping => return vec![PING << 4],
        Packet::Pong => return vec![PONG << 4],
        Packet::Connect(c) => {
            body.push(c.version);
            body.push(c.device_flag);
            put_str(&mut body, &c.device_id);
            put_str(&mut body, &c.uid);
            put_str(&mut body, &c.token);
            body.extend_from_slice(&c.client_timestamp.to_be_bytes());
            put_str(&mut body, &c.client_key);
            CONNECT << 4
        }
        Packet::Connack(c) => {
            if let Some(v) = c.server_version {
                body.push(v);
            }
            body.extend_from_slice(&c.time_diff.to_be_bytes());
            body.push(c.reason_code);
            put_str(&mut body, &c.server_key);
            put_str(&mut body, &c.salt);
            if version >= 4 {
                body.extend_from_slice(&c.node_id.to_be_bytes());
            }
            CONNACK << 4 | u8::from(c.server_version.is_some())
        }
        Packet::Recv(r) => {
            body.push(r.setting);
            put_str(&mut body, &r.msg_key);
            put_str(&mut body, &r.from_uid);
            put_str(&mut body, &r.channel_id);
            body.push(r.channel_type);
            if version >= 3 {
                body.extend_from_slice(&r.expire.to_be_bytes());
            }
            put_str(&mut body, &r.client_msg_no);
            if (2..5).contains(&version) && r.setting & SETTING_STREAM != 0 {
                body.push(0);
                put_str(&mut body, "");
                body.extend_from_slice(&0u64.to_be_bytes());
            }
            body.extend_from_slice(&r.message_id.to_be_bytes());
            put_seq(&mut body, version, r.message_seq);
            body.extend_from_slice(&r.timestamp.to_be_bytes());
            if r.setting & SETTING_TOPIC != 0 {
                put_str(&mut body, &r.topic);
            }
            body.extend_from_slice(&r.payload);
            RECV << 4 | (r.flags & 0x0f)
        }
        Packet::Recvack {
            message_id,
            message_seq,
        } => {
            body.extend_from_slice(&message_id.to_be_bytes());
            put_seq(&mut body, version, *message_seq);
            RECVACK << 4
        }
        Packet::Disconnect {
            reason_code,
            reason,
        } => {
            body.push(*reason_code);
            put_str(&mut body, reason);
            DISCONNECT << 4
        }
        Packet::Other { frame_type } => frame_type << 4,
    };
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(header);
    encode_length(body.len() as u32, &mut out);
    out.extend_from_slice(&body);
    out
}

// ---- decoding -----------------------------------------------------------------------

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return Err(format!("body ends at byte {} of {}", self.at, self.at + n));
        };
        let slice = &self.data[self.at..end];
        self.at = end;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().unwrap_or([0; 4]),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().unwrap_or([0; 8]),
        ))
    }
    fn str(&mut self) -> Result<String, String> {
        let len = u16::from_be_bytes(self.take(2)?.try_into().unwrap_or([0; 2]));
        let bytes = self.take(usize::from(len))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a string is not UTF-8".to_string())
    }
    fn seq(&mut self, version: u8) -> Result<u64, String> {
        if version <= 5 {
            Ok(u64::from(self.u32()?))
        } else {
            self.u64()
        }
    }
    fn rest(&mut self) -> Vec<u8> {
        let rest = self.data[self.at..].to_vec();
        self.at = self.data.len();
        rest
    }
}

fn decode_body(frame_type: u8, flags: u8, body: &[u8], version: u8) -> Result<Packet, String> {
    let mut r = Reader { data: body, at: 0 };
    Ok(match frame_type {
        CONNECT => Packet::Connect(Connect {
            version: r.u8()?,
            device_flag: r.u8()?,
            device_id: r.str()?,
            uid: r.str()?,
            token: r.str()?,
            client_timestamp: r.u64()? as i64,
            client_key: r.str()?,
        }),
        CONNACK => {
            let server_version = if flags & 0x01 != 0 {
                Some(r.u8()?)
            } else {
                None
            };
            let version = server_version.unwrap_or(version);
            Packet::Connack(Connack {
                server_version,
                time_diff: r.u64()? as i64,
                reason_code: r.u8()?,
                server_key: r.str()?,
                salt: r.str()?,
                node_id: if version >= 4 && r.at < body.len() {
                    r.u64()?
                } else {
                    0
                },
            })
        }
        RECV => {
            let mut p = Recv {
                flags,
                setting: r.u8()?,
                msg_key: r.str()?,
                from_uid: r.str()?,
                channel_id: r.str()?,
                channel_type: r.u8()?,
                ..Recv::default()
            };
            if version >= 3 {
                p.expire = r.u32()?;
            }
            p.client_msg_no = r.str()?;
            if (2..5).contains(&version) && p.setting & SETTING_STREAM != 0 {
                r.u8()?;
                r.str()?;
                r.u64()?;
            }
            p.message_id = r.u64()? as i64;
            p.message_seq = r.seq(version)?;
            p.timestamp = r.u32()? as i32;
            if p.setting & SETTING_TOPIC != 0 {
                p.topic = r.str()?;
            }
            p.payload = r.rest();
            Packet::Recv(p)
        }
        RECVACK => Packet::Recvack {
            message_id: r.u64()? as i64,
            message_seq: r.seq(version)?,
        },
        DISCONNECT => Packet::Disconnect {
            reason_code: r.u8()?,
            reason: r.str()?,
        },
        other => Packet::Other { frame_type: other },
    })
}

/// The first frame in `data`: `Ok(None)` when more bytes are needed, else the packet and
/// the bytes it took. A body that cannot be decoded is [`CodecError::Body`] with the
/// bytes to skip; only a broken length is fatal.
pub fn decode(data: &[u8], version: u8) -> Result<Option<(Packet, usize)>, CodecError> {
    let Some(&header) = data.first() else {
        return Ok(None);
    };
    let (frame_type, flags) = (header >> 4, header & 0x0f);
    match frame_type {
        PING => return Ok(Some((Packet::Ping, 1))),
        PONG => return Ok(Some((Packet::Pong, 1))),
        0 => return Err(CodecError::Fatal("frame type 0".into())),
        _ => {}
    }
    let Some((length, used)) = decode_length(&data[1..])? else {
        return Ok(None);
    };
    let length = length as usize;
    if length > MAX_REMAINING {
        return Err(CodecError::Fatal(format!(
            "a frame of {length} bytes (the limit is {MAX_REMAINING})"
        )));
    }
    let start = 1 + used;
    let Some(body) = data.get(start..start + length) else {
        return Ok(None);
    };
    match decode_body(frame_type, flags, body, version) {
        Ok(packet) => Ok(Some((packet, start + length))),
        Err(message) => Err(CodecError::Body {
            frame_type,
            message,
            consumed: start + length,
        }),
    }
}

// ---- encryption ---------------------------------------------------------------------

/// The AES-128-CBC key and IV of one connection.
#[derive(Clone)]
pub struct SessionKeys {
    key: [u8; 16],
    iv: [u8; 16],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(<redacted>)")
    }
}

/// An X25519 key pair; the public half goes into CONNECT (or CONNACK) as base64.
pub struct KeyPair {
    secret: x25519_dalek::StaticSecret,
    pub public_b64: String,
}

impl KeyPair {
    pub fn generate() -> KeyPair {
        let bytes: [u8; 32] = rand::random();
        let secret = x25519_dalek::StaticSecret::from(bytes);
        let public = x25519_dalek::PublicKey::from(&secret);
        KeyPair {
            secret,
            public_b64: B64.encode(public.as_bytes()),
        }
    }

    /// The session keys from the peer's public key and the salt (the IV): the AES key is
    /// the first 16 hex digits of md5(base64(shared secret)) (`deriveAESKey`).
    pub fn session(&self, peer_public_b64: &str, salt: &str) -> Result<SessionKeys, String> {
        let peer: [u8; 32] = B64
            .decode(peer_public_b64)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("the peer's public key is not 32 bytes of base64")?;
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer));
        let digest = hex::encode(Md5::digest(B64.encode(shared.as_bytes()).as_bytes()));
        let salt = salt.as_bytes();
        if salt.len() < 16 {
            return Err("the salt is shorter than 16 bytes".into());
        }
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest.as_bytes()[..16]);
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&salt[..16]);
        Ok(SessionKeys { key, iv })
    }
}

/// A fresh 16-character IV as WuKongIM makes one (letters and digits).
pub fn random_salt() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..16)
        .map(|_| ALPHABET[rand::random::<usize>() % ALPHABET.len()] as char)
        .collect()
}

impl SessionKeys {
    fn cbc_encrypt(&self, plain: &[u8]) -> Vec<u8> {
        let cipher = Aes128::new(&self.key.into());
        let padding = 16 - plain.len() % 16;
        let mut data = plain.to_vec();
        data.extend(std::iter::repeat_n(padding as u8, padding));
        let mut previous = self.iv;
        for chunk in data.chunks_mut(16) {
            for (b, p) in chunk.iter_mut().zip(previous.iter()) {
                *b ^= p;
            }
            let block = aes::Block::from_mut_slice(chunk);
            cipher.encrypt_block(block);
            previous.copy_from_slice(chunk);
        }
        data
    }

    /// base64(AES-128-CBC(PKCS#7(plain))), as `EncryptPayload`.
    pub fn encrypt(&self, plain: &[u8]) -> Vec<u8> {
        B64.encode(self.cbc_encrypt(plain)).into_bytes()
    }

    /// The inverse of [`SessionKeys::encrypt`].
    pub fn decrypt(&self, encoded: &[u8]) -> Result<Vec<u8>, String> {
        let mut data = B64
            .decode(encoded)
            .map_err(|_| "the payload is not base64".to_string())?;
        if data.is_empty() || data.len() % 16 != 0 {
            return Err("the payload is not whole AES blocks".into());
        }
        let cipher = Aes128::new(&self.key.into());
        let mut previous = self.iv;
        for chunk in data.chunks_mut(16) {
            let mut ciphertext = [0u8; 16];
            ciphertext.copy_from_slice(chunk);
            cipher.decrypt_block(aes::Block::from_mut_slice(chunk));
            for (b, p) in chunk.iter_mut().zip(previous.iter()) {
                *b ^= p;
            }
            previous = ciphertext;
        }
        let padding = usize::from(*data.last().unwrap_or(&0));
        if padding == 0
            || padding > 16
            || data[data.len() - padding..]
                .iter()
                .any(|&b| usize::from(b) != padding)
        {
            return Err("the payload's padding is wrong".into());
        }
        data.truncate(data.len() - padding);
        Ok(data)
    }

    /// A RECV's `msg_key`: md5 hex of the encrypted "verity string" (`VerityBytes`:
    /// message id, seq, client msg no, timestamp, from uid, channel id, channel type and
    /// the encrypted payload, concatenated).
    pub fn recv_msg_key(&self, r: &Recv) -> String {
        let mut sign = Vec::with_capacity(r.payload.len() + 96);
        sign.extend_from_slice(r.message_id.to_string().as_bytes());
        sign.extend_from_slice(r.message_seq.to_string().as_bytes());
        sign.extend_from_slice(r.client_msg_no.as_bytes());
        sign.extend_from_slice(r.timestamp.to_string().as_bytes());
        sign.extend_from_slice(r.from_uid.as_bytes());
        sign.extend_from_slice(r.channel_id.as_bytes());
        sign.extend_from_slice(r.channel_type.to_string().as_bytes());
        sign.extend_from_slice(&r.payload);
        hex::encode(Md5::digest(self.encrypt(&sign)))
    }

    /// Encrypt a RECV's payload and set its `msg_key` (`SealRecvPacket`).
    pub fn seal(&self, mut r: Recv) -> Recv {
        r.payload = self.encrypt(&r.payload);
        r.msg_key = self.recv_msg_key(&r);
        r
    }

    /// A RECV's plain payload, after checking its `msg_key`.
    pub fn open(&self, r: &Recv) -> Result<Vec<u8>, String> {
        if r.setting & SETTING_NO_ENCRYPT != 0 {
            return Ok(r.payload.clone());
        }
        if self.recv_msg_key(r) != r.msg_key {
            return Err("msg_key does not match (tampered or wrong keys)".into());
        }
        self.decrypt(&r.payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn recv() -> Recv {
        Recv {
            flags: FLAG_NO_PERSIST,
            setting: SETTING_TOPIC,
            msg_key: "k".into(),
            from_uid: "u1".into(),
            channel_id: "g1".into(),
            channel_type: 2,
            expire: 7,
            client_msg_no: "c-1".into(),
            message_id: 1_824_334_157_854_015_488,
            message_seq: 42,
            timestamp: 1_723_790_132,
            topic: "t".into(),
            payload: br#"{"type":1,"content":"hi"}"#.to_vec(),
        }
    }

    fn round_trip(packet: Packet, version: u8) {
        let bytes = encode(&packet, version);
        let (decoded, used) = decode(&bytes, version).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(decoded, packet);
        // every shorter prefix asks for more bytes, never decodes something else
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut], version), Ok(None), "prefix {cut}");
        }
    }

    #[test]
    fn every_packet_type_round_trips_in_every_version_read() {
        for version in [3u8, 4, 5, 6] {
            round_trip(
                Packet::Connect(Connect {
                    version,
                    device_flag: 1,
                    device_id: "dev".into(),
                    uid: "u1".into(),
                    token: "tok".into(),
                    client_timestamp: 1_700_000_000_000,
                    client_key: KeyPair::generate().public_b64,
                }),
                version,
            );
            round_trip(
                Packet::Connack(Connack {
                    server_version: Some(version),
                    time_diff: -5,
                    reason_code: REASON_SUCCESS,
                    server_key: "sk".into(),
                    salt: random_salt(),
                    node_id: if version >= 4 { 9 } else { 0 },
                }),
                version,
            );
            round_trip(Packet::Recv(recv()), version);
            round_trip(
                Packet::Recvack {
                    message_id: 77,
                    message_seq: 42,
                },
                version,
            );
            round_trip(Packet::Ping, version);
            round_trip(Packet::Pong, version);
            round_trip(
                Packet::Disconnect {
                    reason_code: 12,
                    reason: "kicked".into(),
                },
                version,
            );
        }
    }

    #[test]
    fn known_bytes_of_a_ping_a_recvack_and_a_connack_header() {
        assert_eq!(encode(&Packet::Ping, 6), vec![0x70]);
        assert_eq!(encode(&Packet::Pong, 6), vec![0x80]);
        let ack = encode(
            &Packet::Recvack {
                message_id: 1,
                message_seq: 2,
            },
            5,
        );
        assert_eq!(ack, vec![0x60, 12, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2]);
        let connack = encode(
            &Packet::Connack(Connack {
                server_version: Some(6),
                time_diff: 0,
                reason_code: REASON_AUTH_FAIL,
                server_key: String::new(),
                salt: String::new(),
                node_id: 0,
            }),
            6,
        );
        assert_eq!(connack[0], 0x21, "CONNACK with the server-version flag");
    }

    #[test]
    fn oversized_and_broken_frames_are_refused_and_bad_bodies_skipped() {
        let mut big = vec![RECV << 4];
        encode_length(MAX_REMAINING as u32 + 1, &mut big);
        assert!(matches!(decode(&big, 6), Err(CodecError::Fatal(_))));
        assert!(matches!(
            decode(&[RECV << 4, 0xff, 0xff, 0xff, 0xff, 0x01], 6),
            Err(CodecError::Fatal(_))
        ));
        // a RECV whose body stops inside its strings: skipped whole, the next frame reads
        let mut data = vec![RECV << 4, 3, 0, 0, 9];
        data.extend(encode(&Packet::Pong, 6));
        match decode(&data, 6) {
            Err(CodecError::Body { consumed, .. }) => {
                assert_eq!(consumed, 5);
                assert_eq!(decode(&data[consumed..], 6), Ok(Some((Packet::Pong, 1))));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decode(&encode(&Packet::Other { frame_type: 12 }, 6), 6),
            Ok(Some((Packet::Other { frame_type: 12 }, 2)))
        );
    }

    #[test]
    fn both_sides_derive_the_same_keys_and_sealed_recvs_open() {
        let client = KeyPair::generate();
        let server = KeyPair::generate();
        let salt = random_salt();
        let server_side = server.session(&client.public_b64, &salt).unwrap();
        let client_side = client.session(&server.public_b64, &salt).unwrap();
        for len in [0usize, 1, 15, 16, 17, 100] {
            let plain: Vec<u8> = (0..len as u8).collect();
            let sealed = server_side.seal(Recv {
                payload: plain.clone(),
                ..recv()
            });
            assert_ne!(sealed.payload, plain);
            assert_eq!(client_side.open(&sealed).unwrap(), plain);
        }
        // a tampered payload or a wrong key is refused
        let mut sealed = server_side.seal(recv());
        sealed.from_uid = "someone-else".into();
        assert!(client_side.open(&sealed).is_err());
        let other = KeyPair::generate()
            .session(&server.public_b64, &salt)
            .unwrap();
        assert!(other.open(&server_side.seal(recv())).is_err());
        assert!(client.session("not base64!", &salt).is_err());
        assert!(client.session(&server.public_b64, "short").is_err());
    }

    #[test]
    fn aes_cbc_matches_a_known_vector() {
        // NIST SP 800-38A F.2.1, first block, with PKCS#7 adding a second block
        let keys = SessionKeys {
            key: hex::decode("2b7e151628aed2a6abf7158809cf4f3c")
                .unwrap()
                .try_into()
                .unwrap(),
            iv: hex::decode("000102030405060708090a0b0c0d0e0f")
                .unwrap()
                .try_into()
                .unwrap(),
        };
        let plain = hex::decode("6bc1bee22e409f96e93d7e117393172a").unwrap();
        let encrypted = B64.decode(keys.encrypt(&plain)).unwrap();
        assert_eq!(
            hex::encode(&encrypted[..16]),
            "7649abac8119b246cee98e9b12e9197d"
        );
        assert_eq!(keys.decrypt(&keys.encrypt(&plain)).unwrap(), plain);
    }

    proptest! {
        #[test]
        fn remaining_length_round_trips(n in 0u32..(1 << 28)) {
            let mut out = Vec::new();
            encode_length(n, &mut out);
            prop_assert!(out.len() <= 4);
            prop_assert_eq!(decode_length(&out).unwrap(), Some((n, out.len())));
            // a cut varint asks for more
            prop_assert_eq!(decode_length(&out[..out.len() - 1]).unwrap(), None);
        }
    }
}
