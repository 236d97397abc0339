//! Proof against the source (`chatvault verify --upstream`): re-read, read-only, a seeded
//! random sample of archived messages and the newest page of each archived conversation
//! from the platform, compare what upstream holds now with what the archive holds, and
//! record the result as an `upstream_verified` event in the source's hash chain.
//!
//! Read-only: the re-reads go through [`Connector::recheck`], which reuses each connector's
//! requests and mapping but moves no cursor and no server-side checkpoint, and nothing is
//! written to the archive except the one event, and that only when every conversation was
//! read: a proof that could not be completed records nothing (the error says why).
//!
//! The comparison ([`compare`]) is that of the store's diff (`store/diff.rs`), turned into
//! a report instead of events. Normal facts are not drift: a message the archive holds as
//! recalled or deleted whose content upstream now blanks or leaves out. Drift is what the
//! archive holds differently or lacks: content that is not the archived current version
//! (edited upstream since the last sync, or the archived row changed in the database, told
//! apart by the digest recorded when the version was archived), a recall or deletion one
//! side shows and the other does not (where the platform's read shows marks), a different
//! set of standing reactions (where the read carries them), a message upstream returns that
//! the archive lacks, and one the archive holds unmarked that a complete upstream read of
//! its seqs or time window did not return.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use crate::config::SourceConfig;
use crate::connector::http::HttpClient;
use crate::connector::{
    self, Connector, ConnectorError, Recheck, RecheckRequest, RecheckSpan, RecheckTarget,
};
use crate::model::{Content, MessageObservation};
use crate::store::canonical::{canonical_bytes, content_hash, content_matches, sha256, value_hash};
use crate::store::upstream::{self as archived, ArchivedMessage, SampledMessage};
use crate::store::Store;

/// Archived messages sampled per source unless `--sample` says otherwise.
pub const DEFAULT_SAMPLE: i64 = 200;
/// The largest `--sample`.
pub const MAX_SAMPLE: i64 = 100_000;
/// Tries of one re-read (rate limits and transient failures are retried, with backoff).
const MAX_TRIES: u32 = 4;
/// The longest wait a rate limit may ask for before a retry.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// One difference between the archive and upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DriftRow {
    pub source: String,
    pub conversation_id: String,
    pub message_id: String,
    /// `text`, `content`, `recalled`, `deleted`, `reactions`, `missing_in_archive` or
    /// `missing_upstream`.
    pub what: &'static str,
    pub archived: String,
    pub upstream: String,
    pub note: String,
}

/// The outcome of one source's proof.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SourceProof {
    pub source: String,
    pub platform: String,
    pub seed: String,
    /// The sample size asked for.
    pub sample: i64,
    /// Archived messages sampled (fewer when the archive holds fewer).
    pub sampled: usize,
    pub conversations: usize,
    /// Messages compared: archived ones upstream returned or a complete read covered, and
    /// upstream ones the archive lacks.
    pub checked: usize,
    /// Sampled messages no read covered (upstream did not return them and gave no span).
    pub not_checked: usize,
    /// Upstream requests made.
    pub requests: u64,
    pub drift: Vec<DriftRow>,
    /// sha256 of the canonical JSON of `drift` (hex), as recorded in the event.
    pub report_sha256: String,
    /// The `upstream_verified` event, once recorded.
    pub event_seq: Option<i64>,
    pub error: Option<String>,
}

/// What `verify --upstream` was asked.
#[derive(Clone, Debug)]
pub struct ProofOptions {
    pub sample: i64,
    pub seed: String,
    /// Where connectors keep login sessions (as for `sync`).
    pub session_dir: Option<PathBuf>,
}

/// Prove one source against its upstream. Never fails as a whole: an error is in
/// [`SourceProof::error`], and then no event was recorded.
pub async fn prove_source(
    store: &Store,
    source: &SourceConfig,
    options: &ProofOptions,
) -> SourceProof {
    let mut proof = SourceProof {
        source: source.name.to_string(),
        platform: source.platform_key().to_string(),
        seed: options.seed.clone(),
        sample: options.sample,
        ..SourceProof::default()
    };
    let http = match HttpClient::new(source.requests_per_second, source.request_timeout) {
        Ok(http) => http,
        Err(e) => {
            proof.error = Some(e.to_string());
            return proof;
        }
    };
    let stats = http.stats();
    let outcome = match connector::build(source, http, options.session_dir.as_deref()) {
        Ok(conn) => prove(store, source, options, conn.as_ref(), &mut proof).await,
        Err(e) => Err(format!("{e:#}")),
    };
    proof.requests = stats.requests();
    match outcome {
        Ok(()) => {}
        Err(e) => {
            proof.error = Some(e);
            return proof;
        }
    }
    proof.report_sha256 = report_digest(&proof.drift);
    let detail = json!({
        "at": Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
        "sample": proof.sample,
        "seed": proof.seed,
        "sampled": proof.sampled,
        "conversations": proof.conversations,
        "checked": proof.checked,
        "not_checked": proof.not_checked,
        "drifted": drifted_messages(&proof.drift),
        "rows": proof.drift.len(),
        "requests": proof.requests,
        "report_sha256": proof.report_sha256,
    });
    match store.record_upstream_verified(&source.name, &detail).await {
        Ok(seq) => proof.event_seq = Some(seq),
        Err(e) => proof.error = Some(format!("recording the proof in the chain: {e}")),
    }
    proof
}

/// Distinct messages among the drift rows.
pub fn drifted_messages(rows: &[DriftRow]) -> usize {
    rows.iter()
        .map(|r| (&r.conversation_id, &r.message_id))
        .collect::<HashSet<_>>()
        .len()
}

/// The sha256 (hex) of the canonical JSON of the drift rows: what the event records, so a
/// report kept elsewhere can be matched to it.
pub fn report_digest(rows: &[DriftRow]) -> String {
    let value = serde_json::to_value(rows).unwrap_or(Value::Null);
    hex::encode(sha256(&canonical_bytes(&value)))
}

async fn prove(
    store: &Store,
    source: &SourceConfig,
    options: &ProofOptions,
    conn: &dyn Connector,
    proof: &mut SourceProof,
) -> Result<(), String> {
    let name = &source.name;
    let sampled = store
        .sample_for_upstream(name, options.sample, &options.seed)
        .await
        .map_err(|e| e.to_string())?;
    proof.sampled = sampled.len();
    let newest: HashMap<String, SampledMessage> = store
        .newest_messages(name)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|m| (m.conversation_id.clone(), m))
        .collect();
    let conversations = store.conversations(name).await.map_err(|e| e.to_string())?;
    proof.conversations = conversations.len();
    with_retries(conn, || conn.login())
        .await
        .map_err(|e| format!("logging in: {e}"))?;
    for conversation in &conversations {
        let id = &conversation.conversation_id;
        let targets: Vec<RecheckTarget> = sampled
            .iter()
            .filter(|m| &m.conversation_id == id)
            .map(target)
            .collect();
        let newest_archived = newest.get(id).map(target);
        let request = RecheckRequest {
            conversation,
            targets: &targets,
            newest: true,
            newest_archived: newest_archived.as_ref(),
        };
        let recheck = with_retries(conn, || conn.recheck(request.clone()))
            .await
            .map_err(|e| format!("re-reading conversation {id}: {e}"))?;
        let mut ids: Vec<String> = targets.iter().map(|t| t.message_id.clone()).collect();
        ids.extend(recheck.messages.iter().map(|m| m.message_id.clone()));
        let (seq_spans, time_spans) = split_spans(&recheck.spans);
        let held = store
            .archived_messages(name, id, &ids, &seq_spans, &time_spans)
            .await
            .map_err(|e| e.to_string())?;
        let compared = compare(name.as_str(), id, &held, &recheck, newest_archived.as_ref());
        proof.checked += compared.checked.len();
        proof.not_checked += targets
            .iter()
            .filter(|t| !compared.checked.contains(&t.message_id))
            .count();
        proof.drift.extend(compared.rows);
    }
    Ok(())
}

fn target(m: &SampledMessage) -> RecheckTarget {
    RecheckTarget {
        message_id: m.message_id.clone(),
        seq: m.seq,
        sent_at: m.sent_at,
        next: m.next.clone(),
    }
}

type Spans = (Vec<(i64, i64)>, Vec<(DateTime<Utc>, DateTime<Utc>)>);

fn split_spans(spans: &[RecheckSpan]) -> Spans {
    let mut seqs = Vec::new();
    let mut times = Vec::new();
    for span in spans {
        match span {
            RecheckSpan::Seqs { from, to } => seqs.push((*from, *to)),
            RecheckSpan::Times { from, to } => times.push((*from, *to)),
        }
    }
    (seqs, times)
}

/// Run a re-read with the engine's treatment of failures, bounded: a rate limit waits (as
/// long as upstream asks, at most a minute) and a transient failure backs off, up to
/// [`MAX_TRIES`] tries; a refused login is renewed once.
async fn with_retries<T, F, Fut>(conn: &dyn Connector, call: F) -> Result<T, ConnectorError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<T, ConnectorError>>,
{
    let mut relogged = false;
    let mut tries = 0;
    loop {
        tries += 1;
        let error = match call().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        match error {
            ConnectorError::Unauthorized(_) if !relogged => {
                relogged = true;
                conn.login().await?;
            }
            ConnectorError::RateLimited { retry_after } if tries < MAX_TRIES => {
                tokio::time::sleep(retry_after.unwrap_or(Duration::from_secs(1)).min(MAX_WAIT))
                    .await;
            }
            ConnectorError::Transient(_) if tries < MAX_TRIES => {
                tokio::time::sleep(Duration::from_millis(250 << tries)).await;
            }
            e => return Err(e),
        }
    }
}

/// What comparing one conversation found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Compared {
    /// Message ids compared.
    pub checked: BTreeSet<String>,
    pub rows: Vec<DriftRow>,
}

fn in_spans(m: &ArchivedMessage, spans: &[RecheckSpan]) -> bool {
    spans.iter().any(|span| match span {
        RecheckSpan::Seqs { from, to } => m.seq.is_some_and(|s| (*from..=*to).contains(&s)),
        RecheckSpan::Times { from, to } => (*from..=*to).contains(&m.sent_at),
    })
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn reactions_text(set: &[(String, String)]) -> String {
    if set.is_empty() {
        return "none".to_string();
    }
    set.iter()
        .map(|(user, emoji)| format!("{user} {emoji}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Compare one conversation's archived messages (`held`: those named by the re-read or
/// inside its spans) with what upstream returned. Pure.
pub fn compare(
    source: &str,
    conversation_id: &str,
    held: &[ArchivedMessage],
    recheck: &Recheck,
    newest_archived: Option<&RecheckTarget>,
) -> Compared {
    let mut out = Compared::default();
    let row = |message_id: &str, what, archived: String, upstream: String, note: &str| DriftRow {
        source: source.to_string(),
        conversation_id: conversation_id.to_string(),
        message_id: message_id.to_string(),
        what,
        archived,
        upstream,
        note: note.to_string(),
    };
    let held_by_id: HashMap<&str, &ArchivedMessage> =
        held.iter().map(|m| (m.message_id.as_str(), m)).collect();
    let mut returned: HashSet<&str> = HashSet::new();
    for observed in &recheck.messages {
        let (Some(header), Some(_)) = (&observed.header, &observed.content) else {
            continue;
        };
        if !returned.insert(observed.message_id.as_str()) {
            continue;
        }
        out.checked.insert(observed.message_id.clone());
        let upstream = archived::as_stored(observed);
        match held_by_id.get(observed.message_id.as_str()) {
            Some(a) => out
                .rows
                .extend(compare_message(a, &upstream, recheck.marks_shown, &row)),
            None => {
                let newer = newest_archived.is_none_or(|n| match (header.seq, n.seq) {
                    (Some(s), Some(ns)) => s > ns,
                    _ => header.sent_at > n.sent_at,
                });
                let note = if newer {
                    "sent after the newest archived message: not synced yet"
                } else {
                    "upstream holds it, the archive does not"
                };
                let text = upstream.content.as_ref().map_or("", |c| c.text.as_str());
                out.rows.push(row(
                    &observed.message_id,
                    "missing_in_archive",
                    "(none)".into(),
                    text.to_string(),
                    note,
                ));
            }
        }
    }
    for a in held {
        if returned.contains(a.message_id.as_str()) || !in_spans(a, &recheck.spans) {
            continue;
        }
        out.checked.insert(a.message_id.clone());
        if a.recalled || a.deleted {
            // recalled or deleted messages may be left out upstream: not drift
            continue;
        }
        out.rows.push(row(
            &a.message_id,
            "missing_upstream",
            a.text.clone(),
            "(none)".into(),
            "a complete upstream read of its seqs or time did not return it (deleted upstream, or hidden from this account)",
        ));
    }
    out
}

/// The differences of one message held on both sides. `u` is the upstream observation as
/// it would be stored.
fn compare_message(
    a: &ArchivedMessage,
    u: &MessageObservation,
    marks_shown: bool,
    row: &dyn Fn(&str, &'static str, String, String, &str) -> DriftRow,
) -> Vec<DriftRow> {
    let mut rows = Vec::new();
    let id = a.message_id.as_str();
    let marks = [
        ("recalled", a.recalled, u.recalled.is_some()),
        ("deleted", a.deleted, u.deleted.is_some()),
    ];
    for (what, held, seen) in marks {
        if seen && !held {
            rows.push(row(
                id,
                what,
                yes_no(false),
                yes_no(true),
                &format!("{what} upstream since the last sync"),
            ));
        } else if held && !seen && marks_shown {
            rows.push(row(
                id,
                what,
                yes_no(true),
                yes_no(false),
                &format!("the archive shows it {what}, upstream does not"),
            ));
        }
    }
    let stored = Content {
        kind: a.kind,
        text: a.text.clone(),
        content: a.content.clone(),
    };
    let recorded = a.version_hashes.last();
    let intact = recorded.is_some_and(|r| content_matches(r, &stored));
    let upstream_content = u.content.as_ref().expect("a full observation");
    let frozen = a.recalled || a.deleted || u.recalled.is_some() || u.deleted.is_some();
    let what = |upstream: &Content| {
        if upstream.text != stored.text {
            "text"
        } else {
            "content"
        }
    };
    let shown = |c: &Content| match what(upstream_content) {
        "text" => c.text.clone(),
        _ => c.content.to_string(),
    };
    if !intact {
        rows.push(row(
            id,
            what(upstream_content),
            shown(&stored),
            shown(upstream_content),
            "the archived version does not match the digest recorded when it was archived: changed in the database",
        ));
    } else if !frozen
        && value_hash(&u.raw) != a.raw_hash
        && recorded.is_some_and(|r| !content_matches(r, upstream_content))
    {
        let earlier = a.version_hashes[..a.version_hashes.len() - 1]
            .iter()
            .any(|h| content_matches(h, upstream_content));
        let note = if earlier {
            "upstream shows an earlier version than the archive's current one"
        } else if u.edited_at.is_some() {
            "edited upstream since the last sync"
        } else {
            "upstream holds different content"
        };
        if what(upstream_content) == "text"
            || content_hash(upstream_content) != content_hash(&stored)
        {
            rows.push(row(
                id,
                what(upstream_content),
                shown(&stored),
                shown(upstream_content),
                note,
            ));
        }
    }
    if let Some(reactions) = &u.reactions {
        let upstream: BTreeSet<(String, String)> = reactions
            .iter()
            .map(|r| (r.user_id.clone(), r.emoji.clone()))
            .collect();
        let upstream: Vec<(String, String)> = upstream.into_iter().collect();
        if upstream != a.reactions {
            rows.push(row(
                id,
                "reactions",
                reactions_text(&a.reactions),
                reactions_text(&upstream),
                "the standing reactions differ",
            ));
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Mark, MessageHeader, MessageKind, ReactionState};

    fn content(text: &str) -> Content {
        Content {
            kind: MessageKind::Text,
            text: text.into(),
            content: json!({"text": text}),
        }
    }

    fn held(id: &str, seq: i64, text: &str) -> ArchivedMessage {
        ArchivedMessage {
            conversation_id: "c".into(),
            message_id: id.into(),
            seq: Some(seq),
            sent_at: DateTime::from_timestamp(1_700_000_000 + seq, 0).unwrap(),
            kind: MessageKind::Text,
            text: text.into(),
            content: json!({"text": text}),
            version_hashes: vec![content_hash(&content(text))],
            raw_hash: [0; 32],
            recalled: false,
            deleted: false,
            reactions: vec![],
        }
    }

    fn seen(id: &str, seq: i64, text: &str) -> MessageObservation {
        MessageObservation {
            conversation_id: "c".into(),
            message_id: id.into(),
            header: Some(MessageHeader {
                seq: Some(seq),
                sender_id: Some("u1".into()),
                sender_name: None,
                sent_at: DateTime::from_timestamp(1_700_000_000 + seq, 0).unwrap(),
                reply_to: None,
            }),
            content: Some(content(text)),
            edited_at: None,
            earlier_versions: vec![],
            recalled: None,
            deleted: None,
            reactions: None,
            raw: json!({"seq": seq, "text": text}),
        }
    }

    fn recheck(messages: Vec<MessageObservation>, from: i64, to: i64) -> Recheck {
        Recheck {
            messages,
            spans: vec![RecheckSpan::Seqs { from, to }],
            marks_shown: true,
            unmapped: 0,
        }
    }

    fn whats(c: &Compared) -> Vec<(String, &'static str)> {
        c.rows
            .iter()
            .map(|r| (r.message_id.clone(), r.what))
            .collect()
    }

    #[test]
    fn the_same_messages_are_no_drift() {
        let c = compare(
            "s",
            "c",
            &[held("1", 1, "a"), held("2", 2, "b")],
            &recheck(vec![seen("1", 1, "a"), seen("2", 2, "b")], 1, 2),
            None,
        );
        assert!(c.rows.is_empty(), "{:?}", c.rows);
        assert_eq!(c.checked.len(), 2);
    }

    #[test]
    fn a_recall_the_archive_holds_is_no_drift_when_upstream_blanks_the_content() {
        let mut a = held("1", 1, "secret");
        a.recalled = true;
        let mut u = seen("1", 1, "");
        u.recalled = Some(Mark::default());
        let c = compare("s", "c", &[a], &recheck(vec![u], 1, 1), None);
        assert!(c.rows.is_empty(), "{:?}", c.rows);
    }

    #[test]
    fn a_recall_upstream_the_archive_lacks_is_drift() {
        let mut u = seen("1", 1, "");
        u.recalled = Some(Mark::default());
        let c = compare(
            "s",
            "c",
            &[held("1", 1, "a")],
            &recheck(vec![u], 1, 1),
            None,
        );
        assert_eq!(whats(&c), vec![("1".into(), "recalled")]);
        assert_eq!(
            (c.rows[0].archived.as_str(), c.rows[0].upstream.as_str()),
            ("no", "yes")
        );
    }

    #[test]
    fn an_archived_mark_upstream_does_not_show_is_drift_only_where_marks_are_shown() {
        let mut a = held("1", 1, "a");
        a.deleted = true;
        let mut r = recheck(vec![seen("1", 1, "a")], 1, 1);
        let c = compare("s", "c", std::slice::from_ref(&a), &r, None);
        assert_eq!(whats(&c), vec![("1".into(), "deleted")]);
        r.marks_shown = false;
        assert!(compare("s", "c", &[a], &r, None).rows.is_empty());
    }

    #[test]
    fn an_edit_upstream_and_a_changed_archive_row_are_told_apart() {
        let mut u = seen("1", 1, "edited");
        u.edited_at = Some(Utc::now());
        let c = compare(
            "s",
            "c",
            &[held("1", 1, "a")],
            &recheck(vec![u], 1, 1),
            None,
        );
        assert_eq!(whats(&c), vec![("1".into(), "text")]);
        assert_eq!(c.rows[0].note, "edited upstream since the last sync");
        assert_eq!(
            (c.rows[0].archived.as_str(), c.rows[0].upstream.as_str()),
            ("a", "edited")
        );

        let mut altered = held("1", 1, "a");
        altered.text = "forged".into();
        altered.content = json!({"text": "forged"});
        let c = compare(
            "s",
            "c",
            &[altered],
            &recheck(vec![seen("1", 1, "a")], 1, 1),
            None,
        );
        assert_eq!(whats(&c), vec![("1".into(), "text")]);
        assert!(
            c.rows[0].note.contains("changed in the database"),
            "{}",
            c.rows[0].note
        );
        assert_eq!(
            (c.rows[0].archived.as_str(), c.rows[0].upstream.as_str()),
            ("forged", "a")
        );
    }

    #[test]
    fn missing_on_either_side_is_drift_but_a_deleted_message_may_be_gone() {
        let mut gone = held("3", 3, "c");
        gone.deleted = true;
        let outside = held("9", 9, "z");
        let c = compare(
            "s",
            "c",
            &[held("1", 1, "a"), gone, outside],
            &recheck(vec![seen("2", 2, "b"), seen("5", 5, "new")], 1, 5),
            Some(&RecheckTarget {
                message_id: "4".into(),
                seq: Some(4),
                sent_at: Utc::now(),
                next: None,
            }),
        );
        assert_eq!(
            whats(&c),
            vec![
                ("2".into(), "missing_in_archive"),
                ("5".into(), "missing_in_archive"),
                ("1".into(), "missing_upstream")
            ]
        );
        assert_eq!(c.rows[0].note, "upstream holds it, the archive does not");
        assert!(c.rows[1].note.contains("not synced yet"));
        assert!(!c.checked.contains("9"), "outside every span: not checked");
    }

    #[test]
    fn reactions_are_compared_where_upstream_gives_the_set() {
        let mut a = held("1", 1, "a");
        a.reactions = vec![("u1".into(), "👍".into())];
        let mut u = seen("1", 1, "a");
        u.reactions = Some(vec![
            ReactionState {
                user_id: "u1".into(),
                user_name: None,
                emoji: "👍".into(),
            },
            ReactionState {
                user_id: "u2".into(),
                user_name: None,
                emoji: "❤".into(),
            },
        ]);
        let c = compare(
            "s",
            "c",
            std::slice::from_ref(&a),
            &recheck(vec![u], 1, 1),
            None,
        );
        assert_eq!(whats(&c), vec![("1".into(), "reactions")]);
        assert_eq!(c.rows[0].upstream, "u1 👍, u2 ❤");
        let c = compare(
            "s",
            "c",
            &[a],
            &recheck(vec![seen("1", 1, "a")], 1, 1),
            None,
        );
        assert!(c.rows.is_empty(), "no reaction set upstream: not compared");
    }

    #[test]
    fn the_report_digest_depends_on_every_row() {
        let row = DriftRow {
            source: "s".into(),
            conversation_id: "c".into(),
            message_id: "1".into(),
            what: "text",
            archived: "a".into(),
            upstream: "b".into(),
            note: String::new(),
        };
        let mut other = row.clone();
        other.upstream = "c".into();
        assert_ne!(
            report_digest(std::slice::from_ref(&row)),
            report_digest(&[other])
        );
        assert_eq!(
            report_digest(std::slice::from_ref(&row)),
            report_digest(&[row])
        );
        assert_eq!(report_digest(&[]).len(), 64);
    }
}
