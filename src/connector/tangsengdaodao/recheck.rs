//! The read-only re-read behind `chatvault verify --upstream`: channel sync by seq window
//! (`/v1/message/channel/sync`), the same request and mapping as the `messages` feed. A
//! channel-sync record carries the message's current extra state (edit, recall, deletion
//! for everyone, `is_deleted` for this account) and its reactions, so no change feed is read:
//! extra sync would move a server-side checkpoint (docs/upstreams/tangsengdaodao.md, "Extra
//! sync"), and reaction sync is not needed.
//!
//! Sampled seqs are read in windows: seqs less than [`RECHECK_WINDOW`] apart share one
//! request, and the whole window is compared, both ways. The newest page is the last
//! [`NEWEST_PAGE`] seqs up to the newest message (one probe, one window). A window the server
//! cannot serve is narrowed as a sync would (at most 64 requests); the seqs it cannot serve
//! are left out of the spans. So one call makes at most `targets + 2` requests plus narrowing.

use std::collections::BTreeSet;

use super::{map_records, Channel, SeqWindow, TsddConnector, NARROW_FROM_ATTEMPT};
use crate::connector::{
    ConnectorError, Fetched, Recheck, RecheckRequest, RecheckSpan, RecheckTarget,
};
use crate::model::Cursor;

/// Sampled seqs closer than this share one channel-sync window.
pub const RECHECK_WINDOW: u64 = 100;
/// Seqs in the newest page.
pub const NEWEST_PAGE: u64 = 50;

/// The windows `[start, end)` that cover `targets`' seqs, ascending and disjoint.
fn windows_of(targets: &[RecheckTarget]) -> Vec<(u64, u64)> {
    let seqs: BTreeSet<u64> = targets
        .iter()
        .filter_map(|t| t.seq)
        .filter_map(|s| u64::try_from(s).ok())
        .filter(|&s| s > 0)
        .collect();
    let mut windows: Vec<(u64, u64)> = Vec::new();
    for seq in seqs {
        match windows.last_mut() {
            Some((start, end)) if seq < *start + RECHECK_WINDOW => *end = seq + 1,
            _ => windows.push((seq, seq + 1)),
        }
    }
    windows
}

/// Inclusive spans of `[start, end)` without the `unreadable` seqs.
fn spans_without(start: u64, end: u64, unreadable: &BTreeSet<u64>) -> Vec<RecheckSpan> {
    let mut spans = Vec::new();
    let mut from = start;
    for &seq in unreadable.range(start..end) {
        if seq > from {
            spans.push((from, seq - 1));
        }
        from = seq + 1;
    }
    if from < end {
        spans.push((from, end - 1));
    }
    spans
        .into_iter()
        .map(|(from, to)| RecheckSpan::Seqs {
            from: from as i64,
            to: to as i64,
        })
        .collect()
}

impl TsddConnector {
    pub(super) async fn recheck_channel(
        &self,
        request: RecheckRequest<'_>,
        channel: &Channel,
    ) -> Result<Recheck, ConnectorError> {
        let token = self.token()?;
        let mut windows = windows_of(request.targets);
        if request.newest {
            let newest = match self.probe_newest(channel, &token).await {
                Ok(newest) => newest,
                Err(super::api::SeqWindowError::Other(e)) => return Err(e),
                Err(super::api::SeqWindowError::Panic) => {
                    return Err(self.newest_unreadable(channel))
                }
            };
            if newest > 0 {
                windows.push((newest.saturating_sub(NEWEST_PAGE - 1).max(1), newest + 1));
            }
        }
        let names = self.state().names.clone();
        let mut fetched = Fetched::empty(Cursor(serde_json::Value::Null), true);
        let mut recheck = Recheck {
            marks_shown: true,
            ..Recheck::default()
        };
        let mut seen_ids = BTreeSet::new();
        for (start, end) in windows {
            let window = SeqWindow {
                after: start - 1,
                start,
                end,
                width: end - start,
            };
            let read = self
                .read_window(channel, &token, window, NARROW_FROM_ATTEMPT)
                .await?;
            let mut part = Fetched::empty(Cursor(serde_json::Value::Null), true);
            map_records(&channel.id, &read, &names, &mut part);
            recheck.unmapped += part.quarantine.len();
            for m in part.messages {
                // the newest page may overlap a sampled window
                if seen_ids.insert(m.message_id.clone()) {
                    fetched.messages.push(m);
                }
            }
            if !read.not_member {
                recheck
                    .spans
                    .extend(spans_without(start, read.end, &read.unreadable));
            }
        }
        recheck.messages = fetched.messages;
        Ok(recheck)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn target(seq: i64) -> RecheckTarget {
        RecheckTarget {
            message_id: seq.to_string(),
            seq: Some(seq),
            sent_at: Utc::now(),
            next: None,
        }
    }

    #[test]
    fn near_seqs_share_a_window_and_far_ones_do_not() {
        let targets: Vec<RecheckTarget> = [5, 7, 104, 105, 400].into_iter().map(target).collect();
        assert_eq!(windows_of(&targets), vec![(5, 105), (105, 106), (400, 401)]);
        assert!(windows_of(&[]).is_empty());
    }

    #[test]
    fn unreadable_seqs_are_left_out_of_the_spans() {
        let unreadable: BTreeSet<u64> = [3, 4, 9].into_iter().collect();
        assert_eq!(
            spans_without(1, 10, &unreadable),
            vec![
                RecheckSpan::Seqs { from: 1, to: 2 },
                RecheckSpan::Seqs { from: 5, to: 8 }
            ]
        );
        assert_eq!(
            spans_without(1, 3, &BTreeSet::new()),
            vec![RecheckSpan::Seqs { from: 1, to: 2 }]
        );
    }
}
