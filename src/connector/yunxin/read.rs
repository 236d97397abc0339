//! The `messages` feed's cursor and the plan of a run's window reads. Pure: no I/O, no
//! clock (callers pass `now`), so every decision here is a function of its arguments.
//!
//! A run reads one conversation in phases, each a paged window read persisted in the
//! cursor page by page: `All` (everything new, widened to the rescan window), `Sense` (the
//! rescan window again without no-sense messages), `Retry` (windows whose quick comments
//! could not be read earlier) and `Sweep` (one older window a day, for quick comments on
//! old messages). What upstream does that this relies on: `docs/upstreams/yunxin.md`.

use serde::{Deserialize, Serialize};

use crate::connector::cursor;
use crate::model::Cursor;

/// 2: the cursor keeps a [`SenseMark`]. Version 1 cursors are still read ([`upgrade`]).
pub(super) const CURSOR_VERSION: u32 = 2;
/// Each incremental read starts this far before the watermark: whether `begin_time` and
/// `end_time` are inclusive is not documented, and a message can be stamped a little
/// before it becomes readable. Also how long after a read its newest messages count as
/// settled for the no-sense decision.
pub(super) const OVERLAP_MS: i64 = 5 * 60_000;
/// Reads end this far before now, so messages still being written are not half seen (short,
/// so that a read answering a push finds the message; the overlap of the next read catches
/// one that became readable later).
pub(super) const LAG_MS: i64 = 1_000;
pub(super) const SWEEP_WINDOW_MS: i64 = 30 * 86_400_000;
pub(super) const SWEEP_EVERY_MS: i64 = 86_400_000;
pub(super) const DAY_MS: i64 = 86_400_000;
/// Windows of messages whose quick comments are still to be read, at most.
pub(super) const MAX_PENDING: usize = 32;
/// Message ids a [`SenseMark`] keeps, at most.
pub(super) const MAX_MARKED_IDS: usize = 2_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Phase {
    All,
    Sense,
    Retry,
    Sweep,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum Order {
    Asc,
    Desc,
}

/// One window read, persisted in the cursor page by page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Read {
    /// The connector instance (run) that planned it; page tokens are only reused by it.
    pub run: String,
    /// Which plan of this run it belongs to (the run's memory of the read is keyed by it).
    #[serde(default)]
    pub id: u64,
    pub phase: Phase,
    pub begin: i64,
    pub end: i64,
    /// Where the rescan (absence and no-sense decisions) starts, if this run rescans.
    pub rescan_from: Option<i64>,
    /// The older window to sweep at the end, if due.
    pub sweep: Option<(i64, i64)>,
    /// Windows whose quick comments this run reads again; the first is the one a `Retry`
    /// phase is reading.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retry: Vec<(i64, i64)>,
    pub token: Option<String>,
    pub order: Option<Order>,
    pub last_time: Option<i64>,
    /// Read from `begin` in this run without a restart: absence decisions are allowed.
    pub whole: bool,
    /// Pages of this phase read so far in this run.
    #[serde(default)]
    pub page: u32,
    /// Consecutive pages with `has_more` that brought no message new to this read.
    #[serde(default)]
    pub stale: u32,
    /// `Sense`: how many pages the `All` read had (its memory must hold them all).
    #[serde(default)]
    pub all_pages: u32,
}

/// What the last whole pair of rescan reads (with and without no-sense messages) saw, so
/// that a later run can tell a one-way recall (a message seen without the flag before)
/// from a message sent with a no-sense flag (never seen without it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct SenseMark {
    /// The reads covered `(from, end]`; messages in `(from, to)` had settled (been readable
    /// for a while) when they were read.
    pub from: i64,
    pub to: i64,
    pub end: i64,
    /// Ids returned only with `include_no_sense_msg=true`, sorted: every other message of
    /// `(from, to)` the reads returned was seen without the flag.
    #[serde(default)]
    pub flagged: Vec<String>,
    /// Ids of `[to, end]` seen without the flag, sorted (too recent to infer from time).
    #[serde(default)]
    pub tail: Vec<String>,
    /// More ids than a mark keeps: nothing is decided against it.
    #[serde(default)]
    pub overflow: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct MsgCursor {
    pub v: u32,
    pub covered_to: Option<i64>,
    pub newest: Option<i64>,
    pub oldest: Option<i64>,
    pub sweep_end: Option<i64>,
    pub swept_at: Option<i64>,
    pub read: Option<Read>,
    /// Windows holding messages whose quick comments could not be read; a later run reads
    /// them again. Sorted, disjoint, at most [`MAX_PENDING`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<(i64, i64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sense: Option<SenseMark>,
}

impl MsgCursor {
    pub fn to_cursor(&self) -> Cursor {
        cursor::encode(self)
    }

    /// Remember a window whose quick comments are still to be read. Overlapping or touching
    /// windows merge; beyond [`MAX_PENDING`] the two closest merge (a wider window only
    /// costs reading more, it loses nothing).
    pub fn add_pending(&mut self, window: (i64, i64)) {
        let (a, b) = window;
        if a > b {
            return;
        }
        self.pending.push((a, b));
        self.pending.sort_unstable();
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(self.pending.len());
        for &(b0, e0) in &self.pending {
            match merged.last_mut() {
                Some(last) if b0 <= last.1.saturating_add(1) => last.1 = last.1.max(e0),
                _ => merged.push((b0, e0)),
            }
        }
        while merged.len() > MAX_PENDING {
            let i = (0..merged.len() - 1)
                .min_by_key(|&i| merged[i + 1].0.saturating_sub(merged[i].1))
                .unwrap_or(0);
            merged[i].1 = merged[i].1.max(merged[i + 1].1);
            merged.remove(i + 1);
        }
        self.pending = merged;
    }
}

/// A version 1 cursor as version 2. Before the mark existed, every whole rescan marked each
/// message it saw only with the no-sense flag recalled, so the window the last run covered
/// (up to `covered_to`) counts as seen, with nothing flagged: a message of it that comes
/// back only with the flag was seen normally then, or is already marked.
pub(super) fn upgrade(mut cur: MsgCursor, rescan_ms: i64) -> MsgCursor {
    if cur.v != 1 {
        return cur;
    }
    cur.v = CURSOR_VERSION;
    if let (None, Some(end), true) = (&cur.sense, cur.covered_to, rescan_ms > 0) {
        let from = end.saturating_sub(rescan_ms);
        cur.sense = Some(SenseMark {
            from,
            to: (end - OVERLAP_MS).max(from),
            end,
            ..SenseMark::default()
        });
    }
    cur
}

/// The reads of one conversation in one run.
#[derive(Clone, Debug)]
pub(super) struct Planner {
    pub run: String,
    pub history_start: i64,
    pub rescan_ms: i64,
}

impl Planner {
    /// The read a run starts with, or `None` when there is nothing to read. Takes the
    /// cursor's pending quick-comment windows into the read.
    pub fn plan(&self, cur: &mut MsgCursor, now: i64, id: u64) -> Option<Read> {
        let end = now - LAG_MS;
        let floor = self.history_start;
        // the rescan window: absence and one-way recall decisions (also on a first read,
        // where the store holds nothing yet or, on --full, everything)
        let rescan_from = (self.rescan_ms > 0).then(|| (end - self.rescan_ms).max(floor));
        let (begin, sweep) = match cur.covered_to {
            None => (floor, None),
            Some(covered) => {
                let begin = (covered - OVERLAP_MS)
                    .min(rescan_from.unwrap_or(i64::MAX))
                    .max(floor);
                let due = cur.swept_at.is_none_or(|t| now - t >= SWEEP_EVERY_MS);
                let sweep = due.then(|| self.sweep_window(cur, begin)).flatten();
                (begin, sweep)
            }
        };
        let read = Read {
            run: self.run.clone(),
            id,
            phase: Phase::All,
            begin,
            end,
            rescan_from,
            sweep,
            retry: std::mem::take(&mut cur.pending),
            token: None,
            order: None,
            last_time: None,
            whole: true,
            page: 0,
            stale: 0,
            all_pages: 0,
        };
        if begin < end {
            Some(read)
        } else {
            after(&read, Phase::Sense, false)
        }
    }

    /// The next older window to sweep, rotating back to `limit` when it passed the oldest.
    pub fn sweep_window(&self, cur: &MsgCursor, limit: i64) -> Option<(i64, i64)> {
        let floor = self.history_start.max(cur.oldest?);
        let mut end = cur.sweep_end.unwrap_or(limit).min(limit);
        if end <= floor {
            end = limit;
        }
        let begin = (end - SWEEP_WINDOW_MS).max(floor);
        (begin < end).then_some((begin, end))
    }

    /// A read left by an earlier run: its page tokens and the run's memory of it are gone,
    /// so it restarts its window (past what the committed pages already covered) and
    /// decides nothing about absence or no-sense messages.
    pub fn resume(&self, mut r: Read, id: u64) -> Option<Read> {
        r.run = self.run.clone();
        r.id = id;
        r.token = None;
        r.whole = false;
        r.page = 0;
        r.stale = 0;
        match r.phase {
            Phase::All => {
                match (r.order, r.last_time) {
                    (Some(Order::Asc), Some(t)) => r.begin = r.begin.max(t - OVERLAP_MS),
                    // newest first: everything above `t` was read (a smaller `end` only
                    // lowers `covered_to`, so the next run reads that part again)
                    (Some(Order::Desc), Some(t)) => r.end = r.end.min(t + OVERLAP_MS),
                    _ => {}
                }
                r.order = None;
                r.last_time = None;
                r.rescan_from = None;
                if r.begin < r.end {
                    Some(r)
                } else {
                    after(&r, Phase::All, false)
                }
            }
            // the no-sense decision needs both reads of this run: go on after it
            Phase::Sense => after(&r, Phase::Sense, false),
            Phase::Retry | Phase::Sweep => {
                r.order = None;
                r.last_time = None;
                Some(r)
            }
        }
    }
}

/// A fresh read of `phase` over `[begin, end]` that carries on `read`'s plan.
fn fresh(read: &Read, phase: Phase, begin: i64, end: i64) -> Read {
    Read {
        phase,
        begin,
        end,
        token: None,
        order: None,
        last_time: None,
        page: 0,
        stale: 0,
        all_pages: 0,
        ..read.clone()
    }
}

/// The read that follows when `read`'s phase `done` is complete; `sense_ok`: after `All`,
/// whether the `Sense` read runs (the `All` read was whole and its memory complete).
pub(super) fn after(read: &Read, done: Phase, sense_ok: bool) -> Option<Read> {
    match done {
        Phase::All if sense_ok => read.rescan_from.map(|from| Read {
            all_pages: read.page,
            ..fresh(read, Phase::Sense, from, read.end)
        }),
        Phase::All | Phase::Sense => retry_or_sweep(read, &read.retry),
        Phase::Retry => retry_or_sweep(read, read.retry.get(1..).unwrap_or(&[])),
        Phase::Sweep => None,
    }
}

fn retry_or_sweep(read: &Read, retry: &[(i64, i64)]) -> Option<Read> {
    if let Some(&(b, e)) = retry.first() {
        let mut next = fresh(read, Phase::Retry, b, e);
        next.retry = retry.to_vec();
        return Some(next);
    }
    read.sweep.map(|(b, e)| {
        let mut next = fresh(read, Phase::Sweep, b, e);
        next.retry = Vec::new();
        next
    })
}

/// What a whole pair of rescan reads decides about messages returned only with
/// `include_no_sense_msg=true`.
#[derive(Debug, PartialEq)]
pub(super) struct NoSense {
    /// One-way recalled (or deleted) since an earlier run saw them without the flag.
    pub recalled: Vec<String>,
    /// The mark the next run decides against.
    pub mark: SenseMark,
}

/// `only_flagged`: `(id, create_time)` returned by the first read but not the second;
/// `plain`: returned by the second read (without no-sense messages). The reads covered
/// `(from, end]`. Only a message an earlier mark shows as seen without the flag counts as
/// recalled: one sent with a no-sense flag was never seen without it.
pub(super) fn decide_no_sense(
    prior: Option<&SenseMark>,
    from: i64,
    end: i64,
    only_flagged: &[(String, i64)],
    plain: &[(String, i64)],
) -> NoSense {
    let seen_before = |id: &str, ct: i64| -> bool {
        let Some(p) = prior.filter(|p| !p.overflow) else {
            return false;
        };
        if p.from < ct && ct < p.to {
            p.flagged.binary_search_by(|f| f.as_str().cmp(id)).is_err()
        } else if p.to <= ct && ct <= p.end {
            p.tail.binary_search_by(|f| f.as_str().cmp(id)).is_ok()
        } else {
            false
        }
    };
    let mut recalled: Vec<String> = only_flagged
        .iter()
        .filter(|(id, ct)| seen_before(id, *ct))
        .map(|(id, _)| id.clone())
        .collect();
    recalled.sort();
    recalled.dedup();
    let to = (end - OVERLAP_MS).max(from);
    let mut flagged: Vec<String> = only_flagged.iter().map(|(id, _)| id.clone()).collect();
    flagged.sort();
    flagged.dedup();
    let mut tail: Vec<String> = plain
        .iter()
        .filter(|(_, ct)| *ct >= to)
        .map(|(id, _)| id.clone())
        .collect();
    tail.sort();
    tail.dedup();
    let overflow = flagged.len() + tail.len() > MAX_MARKED_IDS;
    if overflow {
        flagged.clear();
        tail.clear();
    }
    NoSense {
        recalled,
        mark: SenseMark {
            from,
            to,
            end,
            flagged,
            tail,
            overflow,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planner(rescan_days: i64) -> Planner {
        Planner {
            run: "r".into(),
            history_start: 0,
            rescan_ms: rescan_days * DAY_MS,
        }
    }

    fn read(phase: Phase) -> Read {
        Read {
            run: "old".into(),
            id: 1,
            phase,
            begin: 0,
            end: 1_000_000_000,
            rescan_from: Some(500),
            sweep: None,
            retry: Vec::new(),
            token: Some("t".into()),
            order: Some(Order::Asc),
            last_time: Some(900_000_000),
            whole: true,
            page: 7,
            stale: 2,
            all_pages: 0,
        }
    }

    #[test]
    fn plans_backfill_then_overlap_and_rescan() {
        let c = planner(7);
        let now = 1_750_000_000_000;
        let first = c.plan(&mut MsgCursor::default(), now, 1).unwrap();
        assert_eq!(
            (first.begin, first.end, first.rescan_from),
            (0, now - LAG_MS, Some(now - LAG_MS - 7 * DAY_MS))
        );
        let mut cur = MsgCursor {
            covered_to: Some(now - 1000),
            oldest: Some(now - 100 * DAY_MS),
            swept_at: Some(now),
            ..MsgCursor::default()
        };
        let next = c.plan(&mut cur.clone(), now, 2).unwrap();
        assert_eq!(next.rescan_from, Some(now - LAG_MS - 7 * DAY_MS));
        assert_eq!(next.begin, now - LAG_MS - 7 * DAY_MS);
        assert_eq!(next.sweep, None, "swept just now");
        let next = planner(0).plan(&mut cur, now, 3).unwrap();
        assert_eq!(
            (next.begin, next.rescan_from),
            (now - 1000 - OVERLAP_MS, None)
        );
    }

    #[test]
    fn sweeps_rotate_backwards_and_wrap() {
        let c = planner(7);
        let cur = MsgCursor {
            oldest: Some(0),
            sweep_end: Some(40 * DAY_MS),
            ..MsgCursor::default()
        };
        assert_eq!(
            c.sweep_window(&cur, 100 * DAY_MS),
            Some((10 * DAY_MS, 40 * DAY_MS))
        );
        let cur = MsgCursor {
            sweep_end: Some(0),
            ..cur
        };
        assert_eq!(
            c.sweep_window(&cur, 100 * DAY_MS),
            Some((70 * DAY_MS, 100 * DAY_MS))
        );
    }

    #[test]
    fn a_resumed_read_never_decides_absence_and_keeps_its_progress() {
        let c = planner(7);
        let r = c.resume(read(Phase::All), 9).unwrap();
        assert!(!r.whole);
        assert_eq!(
            (r.token, r.rescan_from, r.page, r.stale),
            (None, None, 0, 0)
        );
        assert_eq!((r.begin, r.id), (900_000_000 - OVERLAP_MS, 9));
        // newest first: the part above the last committed page is not read again
        let mut desc = read(Phase::All);
        desc.order = Some(Order::Desc);
        desc.last_time = Some(300_000_000);
        let r = c.resume(desc, 9).unwrap();
        assert_eq!((r.begin, r.end), (0, 300_000_000 + OVERLAP_MS));
        // a resumed no-sense read goes on with what follows it
        let mut sense = read(Phase::Sense);
        sense.retry = vec![(10, 20)];
        let r = c.resume(sense, 9).unwrap();
        assert_eq!((r.phase, r.begin, r.end), (Phase::Retry, 10, 20));
        assert_eq!(c.resume(read(Phase::Sense), 9), None);
    }

    #[test]
    fn phases_follow_all_sense_retry_sweep() {
        let mut r = read(Phase::All);
        r.retry = vec![(1, 2), (5, 6)];
        r.sweep = Some((100, 200));
        let s = after(&r, Phase::All, true).unwrap();
        assert_eq!(
            (s.phase, s.begin, s.end, s.all_pages),
            (Phase::Sense, 500, r.end, 7)
        );
        assert_eq!((s.page, s.token.as_deref()), (0, None));
        let t = after(&s, Phase::Sense, false).unwrap();
        assert_eq!((t.phase, t.begin, t.end), (Phase::Retry, 1, 2));
        let t = after(&t, Phase::Retry, false).unwrap();
        assert_eq!(
            (t.phase, t.begin, t.end, t.retry.len()),
            (Phase::Retry, 5, 6, 1)
        );
        let w = after(&t, Phase::Retry, false).unwrap();
        assert_eq!((w.phase, w.begin, w.end), (Phase::Sweep, 100, 200));
        assert!(w.retry.is_empty());
        assert_eq!(after(&w, Phase::Sweep, false), None);
        // no rescan: straight on
        let t = after(&r, Phase::All, false).unwrap();
        assert_eq!(t.phase, Phase::Retry);
    }

    #[test]
    fn pending_windows_merge_and_stay_bounded() {
        let mut c = MsgCursor::default();
        c.add_pending((10, 20));
        c.add_pending((15, 30));
        c.add_pending((31, 40));
        c.add_pending((100, 110));
        c.add_pending((5, 1));
        assert_eq!(c.pending, vec![(10, 40), (100, 110)]);
        for i in 0..1000 {
            c.add_pending((1_000 + i * 10, 1_000 + i * 10 + 3));
        }
        assert_eq!(c.pending.len(), MAX_PENDING);
        // nothing is lost: every window is inside a pending one
        for i in 0..1000 {
            let w = (1_000 + i * 10, 1_000 + i * 10 + 3);
            assert!(c.pending.iter().any(|p| p.0 <= w.0 && w.1 <= p.1), "{w:?}");
        }
        assert!(c.pending.windows(2).all(|p| p[0].1 < p[1].0));
        // a plan takes them into its read
        let now = 1_750_000_000_000;
        let r = planner(7).plan(&mut c, now, 1).unwrap();
        assert_eq!(r.retry.len(), MAX_PENDING);
        assert!(c.pending.is_empty());
    }

    #[test]
    fn only_messages_seen_without_the_flag_can_be_one_way_recalls() {
        let day = DAY_MS;
        let id = |s: &str| s.to_string();
        // first run: nothing known before; a message only seen with the flag is noted
        let first = decide_no_sense(
            None,
            0,
            10 * day,
            &[(id("sent-no-sense"), 2 * day)],
            &[
                (id("a"), day),
                (id("b"), 3 * day),
                (id("fresh"), 10 * day - 1),
            ],
        );
        assert!(first.recalled.is_empty());
        assert_eq!(first.mark.flagged, vec!["sent-no-sense"]);
        assert_eq!(first.mark.tail, vec!["fresh"], "too recent to infer");
        // next run: `b` and `fresh` lost their visibility, `sent-no-sense` never had it,
        // `late` was stamped inside the old window but not seen then, `new` is new
        let second = decide_no_sense(
            Some(&first.mark),
            day,
            11 * day,
            &[
                (id("sent-no-sense"), 2 * day),
                (id("b"), 3 * day),
                (id("fresh"), 10 * day - 1),
                (id("late"), 10 * day - 2),
                (id("new"), 11 * day - 5),
            ],
            &[(id("a"), day + 1)],
        );
        assert_eq!(second.recalled, vec!["b", "fresh"]);
        assert_eq!(
            second.mark.flagged,
            vec!["b", "fresh", "late", "new", "sent-no-sense"]
        );
        // and they are not recalled twice
        let third = decide_no_sense(
            Some(&second.mark),
            day,
            12 * day,
            &[(id("b"), 3 * day), (id("sent-no-sense"), 2 * day)],
            &[],
        );
        assert!(third.recalled.is_empty());
        // an overflowing mark decides nothing
        let many: Vec<(String, i64)> = (0..MAX_MARKED_IDS + 1)
            .map(|i| (format!("m{i}"), 2 * day))
            .collect();
        let big = decide_no_sense(None, 0, 10 * day, &many, &[]);
        assert!(big.mark.overflow && big.mark.flagged.is_empty());
        let after_big = decide_no_sense(Some(&big.mark), 0, 11 * day, &[(id("a"), day)], &[]);
        assert!(after_big.recalled.is_empty());
    }

    #[test]
    fn old_cursors_still_read() {
        let old = serde_json::json!({"v": 1, "covered_to": 5, "newest": 5, "oldest": 1,
            "sweep_end": null, "swept_at": 3, "read": {"run": "x", "phase": "all", "begin": 0,
            "end": 9, "rescan_from": null, "sweep": null, "token": "t", "order": "asc",
            "last_time": 4, "whole": true}});
        let c: MsgCursor = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(c.read.as_ref().unwrap().page, 0);
        assert!(c.pending.is_empty() && c.sense.is_none());
        // version 1 had marked every no-sense message of its rescan recalled: its window
        // counts as seen
        let up = upgrade(c.clone(), 7 * DAY_MS);
        assert_eq!(up.v, CURSOR_VERSION);
        let mark = up.sense.clone().unwrap();
        assert_eq!((mark.from, mark.end), (5 - 7 * DAY_MS, 5));
        assert!(mark.flagged.is_empty() && !mark.overflow);
        assert_eq!(upgrade(up.clone(), 7 * DAY_MS), up, "only once");
        assert_eq!(
            upgrade(c.clone(), 0).sense,
            None,
            "no rescan, nothing decided"
        );
        // nothing new is written for a cursor without the new state
        let back = serde_json::to_value(MsgCursor { read: None, ..c }).unwrap();
        assert!(back.get("pending").is_none() && back.get("sense").is_none());
    }
}
