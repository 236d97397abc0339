//! The read-only re-read behind `chatvault verify --upstream`: history by time window
//! (`GET /im/v2.1/conversations/{id}/messages`, with no-sense messages) and the quick
//! comments of what it returns, the same requests and mapping as the `messages` feed. No
//! cursor is read or written and the run's memory of window reads is not touched.
//!
//! Each sampled message is read in the window of [`AROUND_MS`] either side of its send time
//! (overlapping windows are merged); the newest page is the window from just before the
//! newest archived message (the last day when none is archived) to now. A window is paged
//! to its end within [`MAX_PAGES`] pages; only a window read to its end is a span (an
//! archived message in it that upstream did not return is absent upstream), and since the
//! API does not document whether its bounds are inclusive, the span leaves out the bound
//! milliseconds. Yunxin shows no recall or deletion marks in history (a two-way recall or a
//! deletion leaves the message out, a one-way recall serves it unmarked), so archived marks
//! are not compared.

use chrono::{Duration, Utc};

use super::history::{map_items, split_items};
use super::read::{Phase, Read};
use super::{map, YunxinConnector};
use crate::connector::{ConnectorError, Recheck, RecheckRequest, RecheckSpan};

/// Milliseconds either side of a sampled message's send time.
pub const AROUND_MS: i64 = 1_000;
/// Pages one window may take (100 messages each).
pub const MAX_PAGES: u32 = 10;
/// How far back the newest page reaches when nothing of the conversation is archived.
const NEWEST_WITHOUT_ARCHIVE_MS: i64 = 24 * 3_600_000;

/// Merged windows `[begin, end]` (ms) around `times`.
fn windows_of(mut times: Vec<i64>) -> Vec<(i64, i64)> {
    times.sort_unstable();
    let mut windows: Vec<(i64, i64)> = Vec::new();
    for t in times {
        let (begin, end) = (t - AROUND_MS, t + AROUND_MS);
        match windows.last_mut() {
            Some((_, e)) if begin <= *e => *e = end,
            _ => windows.push((begin, end)),
        }
    }
    windows
}

fn read_of(begin: i64, end: i64, token: Option<String>) -> Read {
    Read {
        run: String::new(),
        id: 0,
        // the first read of a run: with no-sense messages, as the archive read them
        phase: Phase::All,
        begin,
        end,
        rescan_from: None,
        sweep: None,
        retry: Vec::new(),
        token,
        order: None,
        last_time: None,
        whole: false,
        page: 0,
        stale: 0,
        all_pages: 0,
    }
}

impl YunxinConnector {
    pub(super) async fn recheck_conversation(
        &self,
        request: RecheckRequest<'_>,
    ) -> Result<Recheck, ConnectorError> {
        let conv = request.conversation.conversation_id.as_str();
        let what = format!("/im/v2.1/conversations/{{id}}/messages (conversation {conv})");
        let mut windows = windows_of(
            request
                .targets
                .iter()
                .map(|t| t.sent_at.timestamp_millis())
                .collect(),
        );
        if request.newest {
            let now = Utc::now().timestamp_millis();
            let begin = request
                .newest_archived
                .map_or(now - NEWEST_WITHOUT_ARCHIVE_MS, |n| {
                    n.sent_at.timestamp_millis() - AROUND_MS
                });
            windows.push((begin.min(now), now));
        }
        let mut recheck = Recheck {
            marks_shown: false,
            ..Recheck::default()
        };
        let mut seen = std::collections::HashSet::new();
        for (begin, end) in windows {
            let mut token: Option<String> = None;
            let mut whole = false;
            for _ in 0..MAX_PAGES {
                let read = read_of(begin, end, token.clone());
                let page = self.history_page(conv, &what, &read).await?;
                let (good, unusable) = split_items(conv, &page.items);
                recheck.unmapped += unusable.len();
                if !good.is_empty() {
                    let comments = self.quick_comments(conv, &good, 0).await?;
                    let (messages, quarantine) = map_items(conv, &good, &comments);
                    recheck.unmapped += quarantine.len();
                    for m in messages {
                        if seen.insert(m.message_id.clone()) {
                            recheck.messages.push(m);
                        }
                    }
                }
                match page.next_token {
                    Some(next) if Some(&next) != token.as_ref() => token = Some(next),
                    Some(_) => break,
                    None => {
                        whole = true;
                        break;
                    }
                }
            }
            if whole && end - begin >= 2 {
                if let (Some(from), Some(to)) =
                    (map::ms_to_time(begin + 1), map::ms_to_time(end - 1))
                {
                    recheck.spans.push(RecheckSpan::Times {
                        from,
                        to: to + Duration::microseconds(999),
                    });
                }
            }
        }
        Ok(recheck)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_windows_merge() {
        assert_eq!(
            windows_of(vec![10_000, 10_500, 20_000]),
            vec![(9_000, 11_500), (19_000, 21_000)]
        );
        assert!(windows_of(vec![]).is_empty());
    }
}
