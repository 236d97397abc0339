//! `chatvault verify`: recompute every source's hash chain (invariant 5), check that the
//! stored chain head and every stored version agree with it, and optionally check heads
//! saved earlier outside the database.
//!
//! An `UPDATE`, `DELETE` or re-ordering of events changes a recomputed hash or breaks the
//! `event_seq`/`prev_hash` links. Every break is reported, each event and each version on its
//! own: one break never hides another further on. Someone with write access could recompute the whole chain
//! consistently; a head saved elsewhere (`--head SOURCE=SEQ:HASH`) catches that, because
//! the event at SEQ then no longer has HASH.

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
        let mut rows = sqlx::query_as::<_, EventRow>(
            "SELECT event_seq, kind, conversation_id, message_id, occurred_at, observed_at, detail,
                    prev_hash, hash
             FROM vault.events WHERE source = $1 ORDER BY event_seq",
        )
        .bind(source)
        .fetch(&self.pool);
        let mut walk = ChainWalk::new(source, EVENTS, wanted);
        while let Some(e) = rows.try_next().await? {
            walk.link(report, e.event_seq, &e.prev_hash);
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
                walk.altered(report, e.event_seq, &e.kind, &e.hash, &recomputed);
            }
            walk.advance(e.event_seq, &e.hash);
        }
        Ok(walk.finish(report, head_seq, head_hash))
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

/// How failures name the links of a chain: `event`/`events`/`the chain`.
pub(super) struct ChainNouns {
    pub(super) one: &'static str,
    pub(super) many: &'static str,
    pub(super) whole: &'static str,
}

pub(super) const EVENTS: ChainNouns = ChainNouns {
    one: "event",
    many: "events",
    whole: "the chain",
};

/// One walk along a hash chain in numbering order, shared by the event chains and the
/// access log: gapless numbering, each `prev_hash` the stored hash of the link before, the
/// recorded head at the end, and the heads saved elsewhere (`wanted`) found with their
/// hash. Every break is a failure of its own; the walk never stops at the first.
pub(super) struct ChainWalk<'a> {
    chain: &'a str,
    nouns: ChainNouns,
    wanted: &'a [&'a ExpectedHead],
    /// Per wanted head: not reached yet, or reached with a matching hash or not.
    seen_wanted: Vec<Option<bool>>,
    /// The stored hash of the link before (the genesis before the first).
    prev: Hash,
    last_seq: i64,
    count: i64,
}

impl<'a> ChainWalk<'a> {
    pub(super) fn new(chain: &'a str, nouns: ChainNouns, wanted: &'a [&'a ExpectedHead]) -> Self {
        ChainWalk {
            chain,
            nouns,
            wanted,
            seen_wanted: vec![None; wanted.len()],
            prev: canonical::GENESIS,
            last_seq: 0,
            count: 0,
        }
    }

    fn fail(&self, report: &mut VerifyReport, seq: Option<i64>, problem: String) {
        report.failures.push(VerifyFailure {
            source: self.chain.to_string(),
            event_seq: seq,
            problem,
        });
    }

    /// The next link `seq`, which names `prev_hash` as the hash before it: its number must
    /// follow the last one, and its `prev_hash` the last stored hash.
    pub(super) fn link(&mut self, report: &mut VerifyReport, seq: i64, prev_hash: &[u8]) {
        self.count += 1;
        let expected = self.last_seq + 1;
        let ChainNouns { one, many, .. } = self.nouns;
        if seq != expected {
            let problem = if seq == expected + 1 {
                format!("{one} {expected} is missing")
            } else {
                format!("{many} {expected} to {} are missing", seq - 1)
            };
            self.fail(report, Some(expected), problem);
            // After a gap the link before is missing: this link cannot be checked.
            return;
        }
        if prev_hash != self.prev {
            let problem = format!(
                "prev_hash {} does not match the hash of {one} {} ({})",
                hex::encode(prev_hash),
                seq - 1,
                hex::encode(self.prev)
            );
            self.fail(report, Some(seq), problem);
        }
    }

    /// Link `seq` (a `what`) does not hash to what is stored.
    pub(super) fn altered(
        &self,
        report: &mut VerifyReport,
        seq: i64,
        what: &str,
        stored: &[u8],
        recomputed: &[u8],
    ) {
        let problem = format!(
            "{what} {} was altered: stored hash {}, recomputed {}",
            self.nouns.one,
            hex::encode(stored),
            hex::encode(recomputed)
        );
        self.fail(report, Some(seq), problem);
    }

    /// Move past link `seq` whose stored hash is `stored`.
    pub(super) fn advance(&mut self, seq: i64, stored: &[u8]) {
        let stored: Hash = stored.try_into().unwrap_or([0xff; 32]);
        let stored_hex = hex::encode(stored);
        for (w, seen) in self.wanted.iter().zip(self.seen_wanted.iter_mut()) {
            if w.event_seq == Some(seq) || (w.event_seq.is_none() && stored_hex == w.hash) {
                *seen = Some(stored_hex == w.hash);
            }
        }
        self.prev = stored;
        self.last_seq = seq;
    }

    /// The end of the chain: it must be the recorded head, and every wanted head must have
    /// been found. Returns the links walked and the head reached.
    pub(super) fn finish(
        self,
        report: &mut VerifyReport,
        head_seq: i64,
        head_hash: &[u8],
    ) -> (i64, (i64, Hash)) {
        let ChainNouns { one, many, whole } = self.nouns;
        let last_seq = self.last_seq;
        if last_seq != head_seq || self.prev[..] != *head_hash {
            let problem = format!(
                "{whole} ends at {last_seq}:{} but the recorded head is {head_seq}:{}",
                hex::encode(self.prev),
                hex::encode(head_hash)
            );
            self.fail(report, Some(last_seq), problem);
        }
        for (w, seen) in self.wanted.iter().zip(&self.seen_wanted) {
            let problem = match seen {
                Some(true) => continue,
                Some(false) => format!(
                    "the saved head {} does not match: {whole} was rewritten at or before {one} {}",
                    w.hash,
                    w.event_seq.unwrap_or(0)
                ),
                None => format!(
                    "the saved head {} is not in {whole} (it has {last_seq} {many})",
                    w.hash
                ),
            };
            self.fail(report, w.event_seq, problem);
        }
        (self.count, (last_seq, self.prev))
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
