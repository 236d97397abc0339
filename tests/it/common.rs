//! Shared helpers for integration tests: a migrated store on a fresh database, and
//! builders for observations.
#![allow(dead_code)]

use chrono::{DateTime, Utc};
use serde_json::json;

use chatvault::model::{
    Content, ConversationObservation, ConversationType, Cursor, MessageHeader, MessageKind,
    MessageObservation, Page, Platform, SourceName,
};
use chatvault::store::Store;

/// A store on a brand-new database of the test cluster, migrated, with source `s` registered.
pub async fn store() -> (Store, SourceName) {
    let pool = chatvault::pg::testing::fresh_pool().await;
    let store = Store::from_pool(pool);
    store.migrate().await.expect("migrations apply");
    let source = SourceName::new("s");
    store
        .register_source(&source, Platform::Tangsengdaodao)
        .await
        .expect("register");
    (store, source)
}

pub fn t(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_750_000_000 + secs, 0).unwrap()
}

pub fn conversation(id: &str) -> ConversationObservation {
    ConversationObservation {
        conversation_id: id.into(),
        conversation_type: ConversationType::Group,
        name: Some(format!("group {id}")),
        metadata: json!({"channel_type": 2}),
    }
}

pub fn message(conv: &str, id: &str, seq: i64, text: &str) -> MessageObservation {
    MessageObservation {
        conversation_id: conv.into(),
        message_id: id.into(),
        header: Some(MessageHeader {
            seq: Some(seq),
            sender_id: Some("u1".into()),
            sender_name: Some("Ann".into()),
            sent_at: t(seq),
            reply_to: None,
        }),
        content: Some(Content {
            kind: MessageKind::Text,
            text: text.into(),
            content: json!({"text": text}),
        }),
        edited_at: None,
        earlier_versions: vec![],
        recalled: None,
        deleted: None,
        reactions: None,
        raw: json!({"message_idstr": id, "payload": {"type": 1, "content": text}}),
    }
}

pub fn cursor(n: i64) -> Cursor {
    Cursor(json!({"v": 1, "seq": n}))
}

/// A page of `messages` on key `key`, moving its cursor from `from` to `to`.
pub fn page(key: &str, from: Option<i64>, to: i64, messages: Vec<MessageObservation>) -> Page {
    let mut p = Page::new(key, from.map(cursor), cursor(to));
    p.messages = messages;
    p
}

pub async fn count(store: &Store, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// What the archive holds, as sorted lines, leaving out what legitimately differs between
/// two runs over the same upstream (observation times, run ids, the order of events): two
/// archives of the same upstream state must give equal snapshots, so a test can compare a
/// run that met failures with a clean one line by line.
pub async fn archive_snapshot(store: &Store) -> Vec<String> {
    const QUERIES: [&str; 6] = [
        "SELECT format('conversation %s %s %s %s %s', source, conversation_id, conversation_type,
                name, metadata) FROM vault.conversations",
        "SELECT format('message %s %s %s seq=%s sender=%s/%s sent=%s reply=%s version=%s
                edited=%s recalled=%s by=%s deleted=%s', source, conversation_id, message_id, seq,
                sender_id, sender_name, sent_at, reply_to, current_version, edited_at,
                recalled_at IS NOT NULL, recalled_by, deleted_at IS NOT NULL)
         FROM vault.messages",
        "SELECT format('version %s %s %s v%s %s %s %s edited=%s', source, conversation_id,
                message_id, version, kind, text, content, edited_at)
         FROM vault.message_versions",
        "SELECT format('reaction %s %s %s %s %s %s removed=%s', source, conversation_id,
                message_id, user_id, user_name, emoji, removed_at IS NOT NULL)
         FROM vault.reactions",
        "SELECT format('gap %s %s %s-%s %s', source, conversation_id, from_seq, to_seq, reason)
         FROM vault.seq_gaps",
        "SELECT format('quarantine %s %s', source, reason) FROM vault.quarantine",
    ];
    let mut lines = Vec::new();
    for sql in QUERIES {
        let rows: Vec<String> = sqlx::query_scalar(sql)
            .fetch_all(store.pool())
            .await
            .unwrap_or_else(|e| panic!("snapshot query failed: {e}\n{sql}"));
        lines.extend(rows);
    }
    lines.sort();
    lines
}

/// The lines in which two snapshots differ, `-` only in `want`, `+` only in `got`.
pub fn snapshot_diff(want: &[String], got: &[String]) -> Vec<String> {
    use std::collections::BTreeSet;
    let want_set: BTreeSet<&String> = want.iter().collect();
    let got_set: BTreeSet<&String> = got.iter().collect();
    let mut diff: Vec<String> = want_set
        .difference(&got_set)
        .map(|l| format!("- {l}"))
        .collect();
    diff.extend(got_set.difference(&want_set).map(|l| format!("+ {l}")));
    diff
}

/// Run `sql` as someone with write access to the database could: the append-only triggers
/// off on this connection (an owner can do that; `verify` is what must catch it).
pub async fn tamper(store: &Store, sql: &str) {
    let mut conn = store.pool().acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(sql).execute(&mut *conn).await.unwrap();
    sqlx::query("SET session_replication_role = origin")
        .execute(&mut *conn)
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// An S3-compatible server for the blob store's tests

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chatvault::config::{S3Config, Secret};
use object_store::aws::AmazonS3Builder;

/// The bucket [`Moto::start`] makes.
pub const BUCKET: &str = "chat-media";

/// A moto server on this machine, killed when dropped.
pub struct Moto {
    child: std::process::Child,
    pub port: u16,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Starts the server, makes the user, its key and the bucket, then turns authentication
    /// on.
    pub async fn start() -> Moto {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("moto.log");
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("moto.err")).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "moto_server is needed for the S3 blob store tests ({e}): install it with \
                     `pip install 'moto[server]'` (.ci/run does)"
                )
            });
        let mut moto = Moto {
            child,
            port,
            log,
            _dir: dir,
            access_key_id: String::new(),
            secret_access_key: String::new(),
        };
        moto.wait_until_up().await;
        moto.set_up().await;
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn wait_until_up(&mut self) {
        let client = reqwest::Client::new();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "moto_server exited ({status}): {}",
                    std::fs::read_to_string(self._dir.path().join("moto.err")).unwrap_or_default()
                );
            }
            let up = client
                .get(format!("{}/moto-api/data.json", self.endpoint()))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "moto_server did not answer on port {} within 60 s; its log: {}",
            self.port,
            self.log.display()
        );
    }

    /// With authentication still off: an IAM user, its access key, a policy allowing
    /// `s3:*`, the bucket; then every request must be signed by a known key.
    async fn set_up(&mut self) {
        let client = reqwest::Client::new();
        let endpoint = self.endpoint();
        let unchecked = |service: &str| {
            format!(
                "AWS4-HMAC-SHA256 Credential=setup/20260101/us-east-1/{service}/aws4_request, \
                 SignedHeaders=host, Signature=00"
            )
        };
        let iam = |params: &[(&str, &str)]| {
            let mut form: Vec<(&str, &str)> = params.to_vec();
            form.push(("Version", "2010-05-08"));
            client
                .post(&endpoint)
                .header("Authorization", unchecked("iam"))
                .form(&form)
                .send()
        };
        let answer = |r: reqwest::Response| async move {
            let status = r.status();
            let body = r.text().await.unwrap();
            assert!(status.is_success(), "moto refused a set-up request: {body}");
            body
        };
        answer(
            iam(&[("Action", "CreateUser"), ("UserName", "chatvault")])
                .await
                .unwrap(),
        )
        .await;
        let key = answer(
            iam(&[("Action", "CreateAccessKey"), ("UserName", "chatvault")])
                .await
                .unwrap(),
        )
        .await;
        self.access_key_id = between(&key, "<AccessKeyId>", "</AccessKeyId>");
        self.secret_access_key = between(&key, "<SecretAccessKey>", "</SecretAccessKey>");
        let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#;
        answer(
            iam(&[
                ("Action", "PutUserPolicy"),
                ("UserName", "chatvault"),
                ("PolicyName", "blobs"),
                ("PolicyDocument", policy),
            ])
            .await
            .unwrap(),
        )
        .await;
        answer(
            client
                .put(format!("{endpoint}/{BUCKET}"))
                .header("Authorization", unchecked("s3"))
                .send()
                .await
                .unwrap(),
        )
        .await;
        answer(
            client
                .post(format!("{endpoint}/moto-api/reset-auth"))
                .header("Content-Type", "text/plain")
                .body("0")
                .send()
                .await
                .unwrap(),
        )
        .await;
    }

    /// `[attachments.s3]` for the bucket with the user's key.
    pub fn config(&self, prefix: &str) -> S3Config {
        S3Config {
            bucket: BUCKET.to_string(),
            prefix: prefix.to_string(),
            endpoint: Some(self.endpoint()),
            region: "us-east-1".to_string(),
            access_key_id: Some(Secret::new(&self.access_key_id)),
            secret_access_key: Some(Secret::new(&self.secret_access_key)),
            allow_http: true,
        }
    }

    /// A client of its own, to look at the bucket behind the store's back.
    pub fn raw(&self) -> object_store::aws::AmazonS3 {
        AmazonS3Builder::new()
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_endpoint(self.endpoint())
            .with_allow_http(true)
            .with_access_key_id(&self.access_key_id)
            .with_secret_access_key(&self.secret_access_key)
            .build()
            .unwrap()
    }
}

pub fn between(text: &str, open: &str, close: &str) -> String {
    let start = text
        .find(open)
        .unwrap_or_else(|| panic!("no {open} in {text}"))
        + open.len();
    let len = text[start..].find(close).unwrap();
    text[start..start + len].to_string()
}
