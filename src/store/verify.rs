//! `chatvault verify`: recompute every source's hash chain (invariant 5), check that the
//! stored chain head and every stored version agree with it, and optionally check heads
//! saved earlier outside the database.
//!
//! An `UPDATE`, `DELETE` or re-ordering of events changes a recomputed hash or breaks the
//! `event_seq`/`prev_hash` links. Every break is reported, each event and each version on its
//! own: one break never hides another further on. Someone with write access could recompute the whole chain
//! consistently; a head saved elsewhere (`--head SOURCE=SEQ:HASH`) catches that, because
//! the event at SEQ then no longer has HASH.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Serialize;
use serde_json::Value;

use super::canonical::{self, chain_hash, chain_hash_as, EventFields, Hash, Numbers};
use super::{Result, Store};

/// A head saved earlier: the chain of `source` must contain `hash` at `event_seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectedHead {
    pub source: String,
    pub event_seq: Option<i64>,
    pub hash: String,
}

impl ExpectedHead {
    /// Parse `SOURCE=SEQ:HASH` (as `status` prints heads) or `SOURCE=HASH`.
    pub fn parse(s: &str) -> Result<ExpectedHead, String> {
        let (source, head) = s
            .split_once('=')
            .ok_or_else(|| format!("--head {s:?}: expected SOURCE=SEQ:HASH"))?;
        let (seq, hash) = match head.split_once(':') {
            Some((seq, hash)) => {
                let seq = seq
                    .parse::<i64>()
                    .map_err(|_| format!("--head {s:?}: {seq:?} is not an event number"))?;
                (Some(seq), hash)
            }
            None => (None, head),
        };
        let hash = hash.trim().to_ascii_lowercase();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("--head {s:?}: the hash must be 64 hex digits"));
        }
        if source.is_empty() {
            return Err(format!("--head {s:?}: the source name is empty"));
        }
        Ok(ExpectedHead {
            source: source.to_string(),
            event_seq: seq,
            hash,
        })
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct VerifyFailure {
    pub source: String,
    pub event_seq: Option<i64>,
    pub problem: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct VerifyReport {
    /// Per source: events checked and the head `seq:hash`.
    pub sources: Vec<(String, i64, String)>,
    pub versions_checked: i64,
    /// The access log: entries checked and the head `seq:hash`.
    pub access_log: (i64, String),
    pub failures: Vec<VerifyFailure>,
    /// Every purge in the chains, checked against what it lists as removed.
    pub purges: Vec<super::retention::PurgeSummary>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }
}

#[derive(sqlx::FromRow)]
struct EventRow {
    event_seq: i64,
    kind: String,
    conversation_id: Option<String>,
    message_id: Option<String>,
    occurred_at: Option<DateTime<Utc>>,
    observed_at: DateTime<Utc>,
    detail: Value,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

impl Store {
    pub async fn verify(&self, expected: &[ExpectedHead]) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        let sources: Vec<(String, i64, Vec<u8>)> = sqlx::query_as(
            "SELECT s.source, COALESCE(h.event_seq, 0), COALESCE(h.hash, '\\x'::bytea)
             FROM vault.sources s LEFT JOIN vault.chain_heads h USING (source) ORDER BY s.source",
        )
        .fetch_all(&self.pool)
        .await?;
        for head in expected {
            if head.source != super::ACCESS_LOG_CHAIN
                && !sources.iter().any(|(s, _, _)| *s == head.source)
            {
                report.failures.push(VerifyFailure {
                    source: head.source.clone(),
                    event_seq: head.event_seq,
                    problem: "no such source in the archive".into(),
                });
            }
        }
        for (source, head_seq, head_hash) in sources {
            let wanted: Vec<&ExpectedHead> =
                expected.iter().filter(|h| h.source == source).collect();
            let (count, last) = self
                .verify_source(&source, head_seq, &head_hash, &wanted, &mut report)
                .await?;
            report
                .sources
                .push((source, count, format!("{}:{}", last.0, hex::encode(last.1))));
        }
        report.versions_checked = self.verify_versions(&mut report).await?;
        let wanted: Vec<&ExpectedHead> = expected
            .iter()
            .filter(|h| h.source == super::ACCESS_LOG_CHAIN)
            .collect();
        let (count, last) = self.verify_access_log(&wanted, &mut report).await?;
        report.access_log = (count, format!("{}:{}", last.0, hex::encode(last.1)));
        report.purges = self.verify_purges(&mut report.failures).await?;
        Ok(report)
    }

    /// Checks every event of one source and reports every break it finds, never stopping at
    /// the first: each event is recomputed from its own stored `prev_hash` (so one altered
    /// event is one failure, and the events after it are still checked), each `prev_hash`
    /// must be the stored hash of the event before, numbering must have no gaps, and the
    /// recorded head must be the last event.
    async fn verify_source(
        &self,
        source: &str,
        head_seq: i64,
        head_hash: &[u8],
        wanted: &[&ExpectedHead],
        report: &mut VerifyReport,
    ) -> Result<(i64, (i64, Hash))> {
        let fail = |report: &mut VerifyReport, seq: Option<i64>, problem: String| {
            report.failures.push(VerifyFailure {
                source: source.to_string(),
                event_seq: seq,
                problem,
            });
        };
        let mut rows = sqlx::query_as::<_, EventRow>(
            "SELECT event_seq, kind, conversation_id, message_id, occurred_at, observed_at, detail,
                    prev_hash, hash
             FROM vault.events WHERE source = $1 ORDER BY event_seq",
        )
        .bind(source)
        .fetch(&self.pool);
        // The stored hash of the event before (the genesis before the first).
        let mut prev: Hash = canonical::GENESIS;
        let mut last_seq = 0i64;
        let mut count = 0i64;
        let mut seen_wanted: HashMap<usize, bool> = HashMap::new();
        while let Some(e) = rows.try_next().await? {
            count += 1;
            let expected_seq = last_seq + 1;
            let after_gap = e.event_seq != expected_seq;
            if after_gap {
                let problem = if e.event_seq == expected_seq + 1 {
                    format!("event {expected_seq} is missing")
                } else {
                    format!("events {expected_seq} to {} are missing", e.event_seq - 1)
                };
                fail(report, Some(expected_seq), problem);
            }
            // After a gap the event before is missing: its link cannot be checked.
            if !after_gap && e.prev_hash != prev {
                fail(
                    report,
                    Some(e.event_seq),
                    format!(
                        "prev_hash {} does not match the hash of event {} ({})",
                        hex::encode(&e.prev_hash),
                        e.event_seq - 1,
                        hex::encode(prev)
                    ),
                );
            }
            let stored_prev: Hash = e.prev_hash.as_slice().try_into().unwrap_or([0xff; 32]);
            let fields = EventFields {
                source,
                event_seq: e.event_seq,
                kind: &e.kind,
                conversation_id: e.conversation_id.as_deref(),
                message_id: e.message_id.as_deref(),
                occurred_at: e.occurred_at,
                observed_at: e.observed_at,
                detail: &e.detail,
            };
            let recomputed = chain_hash(&stored_prev, &fields);
            if e.hash != recomputed
                && e.hash != chain_hash_as(&stored_prev, &fields, Numbers::Legacy)
            {
                fail(
                    report,
                    Some(e.event_seq),
                    format!(
                        "{} event was altered: stored hash {}, recomputed {}",
                        e.kind,
                        hex::encode(&e.hash),
                        hex::encode(recomputed)
                    ),
                );
            }
            let stored: Hash = e.hash.as_slice().try_into().unwrap_or([0xff; 32]);
            for (i, w) in wanted.iter().enumerate() {
                if w.event_seq == Some(e.event_seq)
                    || (w.event_seq.is_none() && hex::encode(stored) == w.hash)
                {
                    seen_wanted.insert(i, hex::encode(stored) == w.hash);
                }
            }
            prev = stored;
            last_seq = e.event_seq;
        }
        if last_seq != head_seq || prev[..] != *head_hash {
            fail(
                report,
                Some(last_seq),
                format!(
                    "the chain ends at {last_seq}:{} but the recorded head is {head_seq}:{}",
                    hex::encode(prev),
                    hex::encode(head_hash)
                ),
            );
        }
        for (i, w) in wanted.iter().enumerate() {
            match seen_wanted.get(&i) {
                Some(true) => {}
                Some(false) => fail(
                    report,
                    w.event_seq,
                    format!(
                        "the saved head {} does not match: the chain was rewritten at or before event {}",
                        w.hash,
                        w.event_seq.unwrap_or(0)
                    ),
                ),
                None => fail(
                    report,
                    w.event_seq,
                    format!(
                        "the saved head {} is not in the chain (it has {last_seq} events)",
                        w.hash
                    ),
                ),
            }
        }
        Ok((count, (last_seq, prev)))
    }

    /// Every stored version must match the digest its event recorded.
    async fn verify_versions(&self, report: &mut VerifyReport) -> Result<i64> {
        #[derive(sqlx::FromRow)]
        struct V {
            source: String,
            conversation_id: String,
            message_id: String,
            version: i32,
            kind: String,
            text: String,
            content: Value,
            recorded: Option<String>,
            event_seq: Option<i64>,
        }
        let mut rows = sqlx::query_as::<_, V>(
            "SELECT v.source, v.conversation_id, v.message_id, v.version, v.kind, v.text, v.content,
                    e.detail->>'sha256' AS recorded, e.event_seq
             FROM vault.message_versions v
             LEFT JOIN vault.events e
               ON e.source = v.source AND e.conversation_id = v.conversation_id
              AND e.message_id = v.message_id
              AND e.kind IN ('message_created', 'message_edited')
              AND (e.detail->>'version')::int = v.version",
        )
        .fetch(&self.pool);
        let mut n = 0i64;
        while let Some(v) = rows.try_next().await? {
            n += 1;
            let content = crate::model::Content {
                kind: crate::model::MessageKind::parse(&v.kind),
                text: v.text,
                content: v.content,
            };
            let actual = hex::encode(canonical::content_hash(&content));
            let legacy = || hex::encode(canonical::content_hash_as(&content, Numbers::Legacy));
            match v.recorded {
                Some(recorded) if recorded == actual || recorded == legacy() => {}
                Some(recorded) => report.failures.push(VerifyFailure {
                    source: v.source,
                    event_seq: v.event_seq,
                    problem: format!(
                        "version {} of message {} in conversation {} was altered (recorded sha256 {recorded}, stored content hashes to {actual})",
                        v.version, v.message_id, v.conversation_id
                    ),
                }),
                None => report.failures.push(VerifyFailure {
                    source: v.source,
                    event_seq: None,
                    problem: format!(
                        "version {} of message {} in conversation {} has no event recording it",
                        v.version, v.message_id, v.conversation_id
                    ),
                }),
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_in_both_forms() {
        let h = "ab".repeat(32);
        let e = ExpectedHead::parse(&format!("acme=12:{h}")).unwrap();
        assert_eq!(e.event_seq, Some(12));
        assert_eq!(e.source, "acme");
        let e = ExpectedHead::parse(&format!("acme={}", h.to_uppercase())).unwrap();
        assert_eq!(e.event_seq, None);
        assert_eq!(e.hash, h);
        assert!(ExpectedHead::parse("acme").is_err());
        assert!(ExpectedHead::parse("acme=1:xyz").is_err());
        assert!(ExpectedHead::parse(&format!("acme=x:{h}")).is_err());
    }
}
