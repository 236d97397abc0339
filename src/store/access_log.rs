//! The access log (`vault.access_log`, `archive.access_log`): who searched, viewed or
//! exported what, through which door, when, and how many results they got.
//!
//! One call records an access: [`Store::record_access`] with an [`AccessRecord`]. It is
//! append-only (triggers refuse `UPDATE`, `DELETE` and `TRUNCATE`) and hash-chained as a
//! chain of its own, named [`ACCESS_LOG_CHAIN`] wherever chain heads are written
//! (`verify --head access-log=SEQ:HASH`), with the same canonical encoding as the event
//! chain: `hash(n) = sha256(hash(n-1) || canonical(entry n))`, where the canonical entry is
//! the canonical JSON of `action, at, client, filters, ids, query, results, seq, via, who`
//! (ARCHITECTURE.md, "The access log"). [`Store::verify`] recomputes it.
//!
//! Recording fails closed: callers record *before* they hand anything out, and an access
//! whose record cannot be written is refused ([`AccessLogError`] says so).

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt, TryStreamExt};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::canonical::{self, canonical_time, strip_nul, strip_nul_value, Hash};
use super::verify::{ChainNouns, ChainWalk, ExpectedHead, VerifyReport};
use super::{Result, Store, StoreError};

/// How verify failures name the access log's links.
const ENTRIES: ChainNouns = ChainNouns {
    one: "entry",
    many: "entries",
    whole: "the access log",
};

/// The name of the access log's chain where heads are given or printed (never a source's
/// name: the configuration refuses it).
pub const ACCESS_LOG_CHAIN: &str = "access-log";

/// Through which door the archive was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// The command line (`who` is the operating-system user).
    Cli,
    /// The JSON API (`who` is the name of the token presented).
    Api,
    /// The web page (`who` is the name of the token the browser signed in with).
    Web,
}

impl Via {
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Cli => "cli",
            Via::Api => "api",
            Via::Web => "web",
        }
    }
}

/// What was shown: a message, or a whole conversation (`message_id` `None`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccessedId {
    pub source: String,
    pub conversation_id: String,
    pub message_id: Option<String>,
}

/// One access, as it is recorded. Build it with [`AccessRecord::new`] and the setters:
///
/// ```text
/// store.record_access(
///     AccessRecord::new(who, Via::Cli, "search")
///         .query(q).filter("source", source).ids(hits).results(n),
/// ).await?;
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AccessRecord {
    pub who: String,
    pub via: Via,
    /// The client's address (HTTP).
    pub client: Option<String>,
    /// `search`, `conversation`, `export`, ...
    pub action: String,
    pub query: Option<String>,
    /// A JSON object: the filters and options of the access.
    pub filters: Value,
    pub ids: Vec<AccessedId>,
    /// How many results were handed out.
    pub results: Option<i64>,
}

impl AccessRecord {
    pub fn new(who: impl Into<String>, via: Via, action: impl Into<String>) -> AccessRecord {
        AccessRecord {
            who: who.into(),
            via,
            client: None,
            action: action.into(),
            query: None,
            filters: Value::Object(Default::default()),
            ids: Vec::new(),
            results: None,
        }
    }

    pub fn client(mut self, client: Option<String>) -> Self {
        self.client = client;
        self
    }

    pub fn query(mut self, query: impl Into<String>) -> Self {
        self.query = Some(query.into());
        self
    }

    /// Adds `key: value` to the filters; a `None` or `null` value is left out.
    pub fn filter(mut self, key: &str, value: impl Serialize) -> Self {
        let value = serde_json::to_value(value).unwrap_or(Value::Null);
        if !value.is_null() {
            if let Value::Object(map) = &mut self.filters {
                map.insert(key.to_string(), value);
            }
        }
        self
    }

    pub fn ids(mut self, ids: Vec<AccessedId>) -> Self {
        self.ids = ids;
        self
    }

    pub fn results(mut self, n: i64) -> Self {
        self.results = Some(n);
        self
    }
}

/// The operating-system user running this process, as the CLI's accesses record it
/// (`uid N` when the user has no name).
pub fn os_user() -> String {
    match crate::pg::user::current_user_name() {
        Ok(name) => name,
        // SAFETY: geteuid has no preconditions.
        Err(_) => format!("uid {}", unsafe { libc::geteuid() }),
    }
}

/// An access that could not be recorded, and so was refused.
#[derive(Debug, thiserror::Error)]
#[error("the access could not be recorded in the access log, so it was refused (nothing was shown or written): {0}")]
pub struct AccessLogError(pub StoreError);

/// A recorded access, as `archive.access_log` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct AccessEntry {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub who: String,
    pub via: String,
    pub client: Option<String>,
    pub action: String,
    pub query: Option<String>,
    pub filters: Value,
    pub ids: Value,
    pub results: Option<i64>,
    #[serde(with = "hex_bytes")]
    pub prev_hash: Vec<u8>,
    #[serde(with = "hex_bytes")]
    pub hash: Vec<u8>,
}

mod hex_bytes {
    pub fn serialize<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }
}

/// The canonical bytes of an entry (see the module doc).
pub fn entry_bytes(e: &AccessEntry) -> Vec<u8> {
    let value = json!({
        "seq": e.seq,
        "at": canonical_time(&e.at),
        "who": e.who,
        "via": e.via,
        "client": e.client,
        "action": e.action,
        "query": e.query,
        "filters": e.filters,
        "ids": e.ids,
        "results": e.results,
    });
    canonical::canonical_bytes(&value)
}

/// `sha256(prev || canonical entry)`.
pub fn entry_hash(prev: &[u8], e: &AccessEntry) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(prev);
    hasher.update(entry_bytes(e));
    hasher.finalize().into()
}

/// Now, to the microsecond PostgreSQL keeps (what is hashed is what is stored).
fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

impl Store {
    /// Append one access to the access log (one transaction, under the log's head lock) and
    /// return its entry. An error here means the access must be refused.
    pub async fn record_access(&self, record: AccessRecord) -> Result<AccessEntry, AccessLogError> {
        self.append_access(record).await.map_err(AccessLogError)
    }

    async fn append_access(&self, r: AccessRecord) -> Result<AccessEntry> {
        let ids = Value::Array(
            r.ids
                .iter()
                .map(|id| {
                    json!({
                        "source": id.source,
                        "conversation_id": id.conversation_id,
                        "message_id": id.message_id,
                    })
                })
                .collect(),
        );
        let mut tx = self.pool.begin().await?;
        let (head_seq, head_hash): (i64, Vec<u8>) =
            sqlx::query_as("SELECT seq, hash FROM vault.access_log_head WHERE only_row FOR UPDATE")
                .fetch_one(&mut *tx)
                .await?;
        let mut entry = AccessEntry {
            seq: head_seq + 1,
            at: now_micros(),
            who: strip_nul(&r.who).into_owned(),
            via: r.via.as_str().to_string(),
            client: r.client.as_deref().map(|c| strip_nul(c).into_owned()),
            action: strip_nul(&r.action).into_owned(),
            query: r.query.as_deref().map(|q| strip_nul(q).into_owned()),
            filters: strip_nul_value(&r.filters).into_owned(),
            ids: strip_nul_value(&ids).into_owned(),
            results: r.results,
            prev_hash: head_hash,
            hash: Vec::new(),
        };
        entry.hash = entry_hash(&entry.prev_hash, &entry).to_vec();
        sqlx::query(
            "INSERT INTO vault.access_log
                 (seq, at, who, via, client, action, query, filters, ids, results, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(entry.seq)
        .bind(entry.at)
        .bind(&entry.who)
        .bind(&entry.via)
        .bind(&entry.client)
        .bind(&entry.action)
        .bind(&entry.query)
        .bind(&entry.filters)
        .bind(&entry.ids)
        .bind(entry.results)
        .bind(&entry.prev_hash)
        .bind(&entry.hash)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE vault.access_log_head SET seq = $1, hash = $2 WHERE only_row")
            .bind(entry.seq)
            .bind(&entry.hash)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(entry)
    }

    /// The access log in order, optionally from `since` (inclusive) to `until` (exclusive).
    pub fn access_log<'a>(
        &'a self,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> impl Stream<Item = Result<AccessEntry>> + Send + 'a {
        sqlx::query_as::<_, AccessEntry>(
            "SELECT seq, at, who, via, client, action, query, filters, ids, results, prev_hash, hash
             FROM vault.access_log
             WHERE ($1::timestamptz IS NULL OR at >= $1)
               AND ($2::timestamptz IS NULL OR at < $2)
             ORDER BY seq",
        )
        .bind(since)
        .bind(until)
        .fetch(&self.pool)
        .map(|row| row.map_err(StoreError::from))
    }

    /// The access log's head as `(seq, hash)`.
    pub async fn access_log_head(&self) -> Result<(i64, Hash)> {
        let (seq, hash): (i64, Vec<u8>) =
            sqlx::query_as("SELECT seq, hash FROM vault.access_log_head WHERE only_row")
                .fetch_one(&self.pool)
                .await?;
        Ok((seq, hash.as_slice().try_into().unwrap_or([0xff; 32])))
    }

    /// Recompute the access log's chain as [`Store::verify`] does an event chain: every
    /// entry from its own stored `prev_hash`, every link, gapless numbering, the recorded
    /// head, and the heads saved elsewhere for [`ACCESS_LOG_CHAIN`]. Returns the entries
    /// checked and the head reached.
    pub(super) async fn verify_access_log(
        &self,
        wanted: &[&ExpectedHead],
        report: &mut VerifyReport,
    ) -> Result<(i64, (i64, Hash))> {
        let (head_seq, head_hash) = self.access_log_head().await?;
        let mut rows = std::pin::pin!(self.access_log(None, None));
        let mut walk = ChainWalk::new(ACCESS_LOG_CHAIN, ENTRIES, wanted);
        while let Some(e) = rows.try_next().await? {
            walk.link(report, e.seq, &e.prev_hash);
            let recomputed = entry_hash(&e.prev_hash, &e);
            if e.hash != recomputed {
                walk.altered(report, e.seq, &e.action, &e.hash, &recomputed);
            }
            walk.advance(e.seq, &e.hash);
        }
        Ok(walk.finish(report, head_seq, &head_hash))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::canonical::GENESIS;

    fn entry() -> AccessEntry {
        AccessEntry {
            seq: 1,
            at: DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap(),
            who: "alice".into(),
            via: "cli".into(),
            client: None,
            action: "search".into(),
            query: Some("会议 🎉".into()),
            filters: json!({"source": "acme", "limit": 20}),
            ids: json!([{"source": "acme", "conversation_id": "g", "message_id": "1"}]),
            results: Some(1),
            prev_hash: GENESIS.to_vec(),
            hash: Vec::new(),
        }
    }

    #[test]
    fn the_canonical_entry_is_sorted_compact_json() {
        assert_eq!(
            String::from_utf8(entry_bytes(&entry())).unwrap(),
            r#"{"action":"search","at":"2023-11-14T22:13:20.123456Z","client":null,"filters":{"limit":20,"source":"acme"},"ids":[{"conversation_id":"g","message_id":"1","source":"acme"}],"query":"会议 🎉","results":1,"seq":1,"via":"cli","who":"alice"}"#
        );
    }

    #[test]
    fn the_hash_depends_on_every_field() {
        let base = entry();
        let h = entry_hash(&GENESIS, &base);
        let mut variants = Vec::new();
        let mut v = base.clone();
        v.who = "bob".into();
        variants.push(v);
        let mut v = base.clone();
        v.results = Some(2);
        variants.push(v);
        let mut v = base.clone();
        v.client = Some("127.0.0.1:1".into());
        variants.push(v);
        let mut v = base.clone();
        v.filters = json!({});
        variants.push(v);
        let mut v = base.clone();
        v.at += chrono::Duration::microseconds(1);
        variants.push(v);
        for v in variants {
            assert_ne!(entry_hash(&GENESIS, &v), h, "{v:?}");
        }
        assert_ne!(entry_hash(&[1u8; 32], &base), h);
    }

    #[test]
    fn filters_leave_out_what_was_not_given() {
        let r = AccessRecord::new("a", Via::Api, "search")
            .filter("source", Some("acme"))
            .filter("sender", None::<String>)
            .filter("history", true);
        assert_eq!(r.filters, json!({"source": "acme", "history": true}));
    }
}
