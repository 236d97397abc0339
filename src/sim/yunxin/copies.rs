//! The fake's message copies (消息抄送): once [`World::enable_copies`] is on, every new
//! message and two-way recall queues the JSON event Yunxin would post, and
//! [`send_copies`] posts them to the configured URL, signed as Yunxin signs them (headers
//! `AppKey`, `CurTime` in ms, `MD5` of the body, `CheckSum` = sha1(AppSecret + MD5 +
//! CurTime)) or, for tests, signed wrongly in a chosen way.
//!
//! Event keys as NetEase documents them
//! (<https://doc.yunxin.163.com/messaging/guide/TcxNzU4NzU?platform=server>): `eventType`
//! "1" for a message, with `convType`, `fromAccount`, `to`, `msgType`, `body`,
//! `msgidServer`, `msgidClient`, `msgTimestamp`; a recall as `eventType` "7"
//! (one-to-one) or "8" (team) with the recalled `msgidServer` (inferred).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use md5::Md5;
use serde_json::{json, Value};
use sha1::{Digest, Sha1};

use super::world::{Message, Stream, World};

/// How the fake signs the copies it posts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CopySigning {
    #[default]
    Right,
    /// A `CheckSum` made with another secret.
    WrongChecksum,
    /// An `MD5` that is not the body's.
    WrongMd5,
    /// A `CurTime` ten minutes old.
    Stale,
    /// Another app's `AppKey`.
    WrongAppKey,
}

impl World {
    /// Queue a message copy for every new message and two-way recall from now on.
    pub fn enable_copies(&mut self) {
        self.copies.get_or_insert_with(Vec::new);
    }

    /// The copies queued and not yet sent.
    pub fn take_copies(&mut self) -> Vec<Value> {
        self.copies.as_mut().map(std::mem::take).unwrap_or_default()
    }

    pub(super) fn copy_message(&mut self, idx: usize) {
        if self.copies.is_none() {
            return;
        }
        let m = &self.messages[idx];
        let copy = json!({
            "eventType": "1",
            "convType": conv_type(self, m),
            "fromAccount": m.sender,
            "to": m.receiver(),
            "msgType": "TEXT",
            "body": m.text,
            "msgidServer": m.server_id.to_string(),
            "msgidClient": m.client_id,
            "msgTimestamp": m.create_time.to_string(),
            "fromClientType": "WEB",
            "resendFlag": "0",
        });
        if let Some(out) = self.copies.as_mut() {
            out.push(copy);
        }
    }

    pub(super) fn copy_recall(&mut self, server_id: i64, by: &str, at: i64) {
        let Some(&idx) = self.by_id.get(&server_id) else {
            return;
        };
        if self.copies.is_none() {
            return;
        }
        let m = &self.messages[idx];
        let event = if matches!(m.stream, Stream::P2p(..)) {
            "7"
        } else {
            "8"
        };
        let copy = json!({
            "eventType": event,
            "convType": conv_type(self, m),
            "fromAccount": m.sender,
            "to": m.receiver(),
            "msgidServer": m.server_id.to_string(),
            "deleteMsgid": m.server_id.to_string(),
            "ope": by,
            "msgTimestamp": at.to_string(),
        });
        if let Some(out) = self.copies.as_mut() {
            out.push(copy);
        }
    }
}

fn conv_type(world: &World, m: &Message) -> &'static str {
    match m.conversation_type(world) {
        1 => "PERSON",
        2 => "TEAM",
        _ => "SUPER_TEAM",
    }
}

/// The headers Yunxin sends with `body`, signed as `signing` says.
pub fn copy_headers(
    app_key: &str,
    app_secret: &str,
    body: &[u8],
    now_ms: i64,
    signing: CopySigning,
) -> Vec<(&'static str, String)> {
    let cur_time = match signing {
        CopySigning::Stale => now_ms - 600_000,
        _ => now_ms,
    }
    .to_string();
    let md5 = match signing {
        CopySigning::WrongMd5 => hex::encode(Md5::digest(b"another body")),
        _ => hex::encode(Md5::digest(body)),
    };
    let secret = match signing {
        CopySigning::WrongChecksum => "not-the-secret",
        _ => app_secret,
    };
    let mut h = Sha1::new();
    h.update(secret.as_bytes());
    h.update(md5.as_bytes());
    h.update(cur_time.as_bytes());
    let key = match signing {
        CopySigning::WrongAppKey => "another-app".to_string(),
        _ => app_key.to_string(),
    };
    vec![
        ("AppKey", key),
        ("CurTime", cur_time),
        ("MD5", md5),
        ("CheckSum", hex::encode(h.finalize())),
    ]
}

/// Post the world's queued copies to `url` every `every`, signed as `signing` holds at
/// the time, until the returned task is aborted. The statuses answered are kept in
/// `answers` (the last 1000).
pub fn send_copies(
    world: Arc<Mutex<World>>,
    url: String,
    signing: Arc<Mutex<CopySigning>>,
    every: Duration,
    answers: Arc<Mutex<Vec<u16>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("a plain HTTP client builds");
        loop {
            tokio::time::sleep(every).await;
            let (copies, key, secret) = {
                let mut w = crate::sim::serve::lock(&world);
                (w.take_copies(), w.app_key.clone(), w.app_secret.clone())
            };
            for copy in copies {
                let body = copy.to_string().into_bytes();
                let how = *signing.lock().unwrap_or_else(|e| e.into_inner());
                let now = chrono::Utc::now().timestamp_millis();
                let mut request = client
                    .post(&url)
                    .header("Content-Type", "application/json;charset=utf-8");
                for (name, value) in copy_headers(&key, &secret, &body, now, how) {
                    request = request.header(name, value);
                }
                let status = match request.body(body).send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                let mut a = answers.lock().unwrap_or_else(|e| e.into_inner());
                if a.len() >= 1000 {
                    a.remove(0);
                }
                a.push(status);
            }
        }
    })
}
