//! `verify --attachments`: every `attachment_stored` event of the chain names a blob that
//! is in the blob store and whose bytes still hash to the sha256 the event recorded. The
//! blobs are read as streams (memory stays bounded whatever their size) and the events in
//! batches; every missing or altered blob is reported with where it belongs.

use futures::StreamExt;
use sha2::{Digest, Sha256};

use super::blob::{BlobStore, Sha256Hex};
use crate::model::SourceName;
use crate::store::Store;

/// Events read at a time.
const BATCH: i64 = 1000;

/// One stored attachment whose blob is not what the chain recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobProblem {
    pub source: String,
    pub event_seq: i64,
    pub conversation_id: String,
    pub message_id: String,
    pub ordinal: i64,
    pub problem: String,
}

impl std::fmt::Display for BlobProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "source {}, event {}: attachment {} of message {} in conversation {}: {}",
            self.source,
            self.event_seq,
            self.ordinal,
            self.message_id,
            self.conversation_id,
            self.problem
        )
    }
}

/// What `verify --attachments` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlobCheck {
    /// `attachment_stored` events checked, and the bytes read for them.
    pub checked: u64,
    pub bytes: u64,
    /// Events of messages a later purge removed (their blobs may be gone with them).
    pub purged: u64,
    pub problems: Vec<BlobProblem>,
}

impl BlobCheck {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Check every `attachment_stored` event (of `only`, or of every source) against `blobs`.
pub async fn check_blobs(
    store: &Store,
    blobs: &BlobStore,
    only: Option<&SourceName>,
) -> anyhow::Result<BlobCheck> {
    let mut check = BlobCheck::default();
    let mut after: Option<(String, i64)> = None;
    // (source, event_seq) strictly increases from batch to batch, so this ends.
    loop {
        let events = store
            .stored_attachment_events(only, after.as_ref().map(|(s, q)| (s.as_str(), *q)), BATCH)
            .await?;
        let Some(last) = events.last() else { break };
        after = Some((last.source.clone(), last.event_seq));
        for e in events {
            let problem = |what: String| BlobProblem {
                source: e.source.clone(),
                event_seq: e.event_seq,
                conversation_id: e.conversation_id.clone().unwrap_or_default(),
                message_id: e.message_id.clone().unwrap_or_default(),
                ordinal: e.ordinal.unwrap_or(-1),
                problem: what,
            };
            if e.purged {
                check.purged += 1;
                continue;
            }
            check.checked += 1;
            let Some(sha) = e.sha256.as_deref().and_then(|s| Sha256Hex::parse(s).ok()) else {
                check
                    .problems
                    .push(problem("the event records no valid sha256".to_string()));
                continue;
            };
            let Some(reader) = blobs.open(&sha).await? else {
                check.problems.push(problem(format!(
                    "blob {sha} is missing from {}",
                    blobs.describe()
                )));
                continue;
            };
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            let mut bytes = reader.bytes;
            let mut unreadable = None;
            while let Some(chunk) = bytes.next().await {
                match chunk {
                    Ok(chunk) => {
                        size += chunk.len() as u64;
                        hasher.update(&chunk);
                    }
                    Err(err) => {
                        unreadable = Some(err);
                        break;
                    }
                }
            }
            check.bytes += size;
            if let Some(err) = unreadable {
                check
                    .problems
                    .push(problem(format!("blob {sha} cannot be read: {err}")));
                continue;
            }
            let actual = Sha256Hex::of_digest(&hasher.finalize());
            if actual != sha {
                check.problems.push(problem(format!(
                    "blob {sha} was altered: its bytes hash to {actual}"
                )));
            } else if e.size.is_some_and(|want| want != size as i64) {
                check.problems.push(problem(format!(
                    "blob {sha} has {size} bytes, the event recorded {}",
                    e.size.unwrap_or_default()
                )));
            }
        }
    }
    Ok(check)
}
