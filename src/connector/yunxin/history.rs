//! The `messages` feed: one page of one window read per fetch (the phases are in
//! [`super::read`], the run's memory of them in [`super::memo`]).

use reqwest::Method;
use serde_json::{json, Value};

use super::comments::{Comments, Item};
use super::memo::{PageMemo, Recorded};
use super::read::{self, decide_no_sense, MsgCursor, Order, Phase, Read};
use super::{api, map, now_ms, permanent, YunxinConnector};
use crate::connector::{ConnectorError, FetchRequest, Fetched};
use crate::model::{Mark, MessageObservation, QuarantineRecord, WindowObservation};

/// The history call's maximum `limit` (`docs/upstreams/yunxin.md`, "Paging").
const PAGE_LIMIT: usize = 100;
/// Pages one window read may take in one run (a million messages and more). A read that
/// goes on beyond it stops with an error for that conversation; the next run resumes it.
pub(super) const MAX_READ_PAGES: u32 = 10_000;
/// Consecutive pages with `has_more` and no message new to the read, at most.
pub(super) const MAX_STALE_PAGES: u32 = 20;
/// Longest page token kept in a cursor.
const MAX_TOKEN_CHARS: usize = 4_096;
const ABSENT: &str =
    "absent upstream: two-way recalled or deleted (the API does not tell them apart)";
const ONE_WAY: &str = "returned only with include_no_sense_msg=true after an earlier run saw it \
     without: one-way recalled or deleted";

impl YunxinConnector {
    pub(super) async fn fetch_messages(
        &self,
        request: &FetchRequest<'_>,
    ) -> Result<Fetched, ConnectorError> {
        let mut cur = self.parse_cursor(request.cursor)?;
        let now = now_ms();
        let read = match cur.read.take() {
            Some(r) if r.run == self.planner.run => r,
            Some(r) => match self.planner.resume(r, self.next_plan()) {
                Some(r) => r,
                None => return Ok(self.finish(request, cur, Vec::new())),
            },
            None => match self.planner.plan(&mut cur, now, self.next_plan()) {
                Some(r) => r,
                None => {
                    let unchanged = request.cursor.cloned().unwrap_or_else(|| cur.to_cursor());
                    return Ok(Fetched::empty(unchanged, true));
                }
            },
        };
        self.read_page(request, cur, read, now).await
    }

    async fn read_page(
        &self,
        request: &FetchRequest<'_>,
        mut cur: MsgCursor,
        mut read: Read,
        now: i64,
    ) -> Result<Fetched, ConnectorError> {
        let conv = request.conversation.conversation_id.as_str();
        let what = format!(
            "{} (conversation {conv})",
            "/im/v2.1/conversations/{id}/messages"
        );
        if read.page >= MAX_READ_PAGES {
            return Err(permanent(format!(
                "{what}: one window read took {MAX_READ_PAGES} pages in this run and upstream \
                 still has more; stopping this conversation (the next run goes on from here)"
            )));
        }
        let page = self.history_page(conv, &what, &read).await?;
        check_order(&what, &mut read, &page.items)?;

        let mut fetched = Fetched::empty(cur.to_cursor(), false);
        let (good, unusable) = split_items(conv, &page.items);
        let broken = !unusable.is_empty();
        if read.phase != Phase::Sense {
            // the sense read sees the same items again: quarantined once, by the first read
            fetched.quarantine.extend(unusable);
        }
        self.count_page(conv, &what, &mut read, &page, &good, broken)?;
        if read.phase != Phase::Sense && !good.is_empty() {
            let comments = self.quick_comments(conv, &good, request.attempt).await?;
            self.map_page(conv, &good, &comments, &mut cur, &mut fetched);
        }

        if let Some(next_token) = page.next_token {
            read.token = Some(next_token);
            cur.read = Some(read);
            fetched.next_cursor = cur.to_cursor();
            return Ok(fetched);
        }
        match self.end_phase(conv, read, &mut cur, &mut fetched, now) {
            Some(next) => {
                cur.read = Some(next);
                fetched.next_cursor = cur.to_cursor();
                Ok(fetched)
            }
            None => {
                let done = self.finish(request, cur, fetched.messages);
                Ok(Fetched {
                    quarantine: fetched.quarantine,
                    windows: fetched.windows,
                    ..done
                })
            }
        }
    }

    /// The next page of `read` from upstream, checked: a boolean `has_more`, an `items`
    /// array (absent only on the last page), and a usable `next_token` when there is more.
    pub(super) async fn history_page(
        &self,
        conv: &str,
        what: &str,
        read: &Read,
    ) -> Result<HistoryPage, ConnectorError> {
        let mut query = vec![
            ("begin_time", read.begin.to_string()),
            ("end_time", read.end.to_string()),
            ("limit", PAGE_LIMIT.to_string()),
            // the doc reads `true` as ascending; the order actually returned is checked
            ("descending", "true".to_string()),
            (
                "include_no_sense_msg",
                (read.phase != Phase::Sense).to_string(),
            ),
            ("check_team_valid", "false".to_string()),
        ];
        if let Some(t) = &read.token {
            query.push(("page_token", t.clone()));
        }
        let path = api::history_path(conv);
        let data = self
            .api
            .call(Method::GET, &path, &query, None, what)
            .await?;
        let bad = |m: &str| ConnectorError::Decode {
            message: format!("{what}: {m}"),
            raw: Some(data.clone()),
        };
        let has_more = data
            .get("has_more")
            .and_then(Value::as_bool)
            .ok_or_else(|| bad("the page has no boolean has_more"))?;
        let items = match data.get("items") {
            Some(Value::Array(a)) => a.clone(),
            None | Some(Value::Null) if !has_more => Vec::new(),
            _ => return Err(bad("the page has no items array")),
        };
        if !has_more {
            return Ok(HistoryPage {
                items,
                next_token: None,
            });
        }
        let next_token = data
            .get("next_token")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if next_token.is_empty() || next_token.chars().count() > MAX_TOKEN_CHARS {
            return Err(permanent(format!(
                "{what}: has_more is true but next_token is {}; stopping this conversation rather than loop",
                if next_token.is_empty() { "empty" } else { "longer than any token should be" }
            )));
        }
        Ok(HistoryPage {
            items,
            next_token: Some(next_token),
        })
    }

    /// Remember a page in the run's memory and count it in `read`. A page token this read
    /// used before, or too many pages in a row with nothing new, stops the conversation.
    fn count_page(
        &self,
        conv: &str,
        what: &str,
        read: &mut Read,
        page: &HistoryPage,
        good: &[Item<'_>],
        broken: bool,
    ) -> Result<(), ConnectorError> {
        let has_more = page.next_token.is_some();
        let recorded = self.remember(
            conv,
            read,
            PageMemo {
                token: read.token.clone(),
                next: page.next_token.clone(),
                items: good.iter().map(|(_, id, ct)| (id.clone(), *ct)).collect(),
                broken,
            },
        );
        if has_more && recorded.repeated {
            return Err(permanent(format!(
                "{what}: upstream answered a page token already used in this read (page {}); \
                 stopping this conversation rather than go round in circles",
                read.page + 1
            )));
        }
        read.page += 1;
        read.stale = if recorded.any_new || !has_more {
            0
        } else {
            read.stale + 1
        };
        if read.stale > MAX_STALE_PAGES {
            return Err(permanent(format!(
                "{what}: {} pages in a row brought no new message while has_more stayed true; \
                 stopping this conversation",
                read.stale
            )));
        }
        Ok(())
    }

    /// A phase has read its last page: note what it covered in the cursor, take the
    /// decisions it makes possible, and return the read of the next phase, if any.
    fn end_phase(
        &self,
        conv: &str,
        read: Read,
        cur: &mut MsgCursor,
        fetched: &mut Fetched,
        now: i64,
    ) -> Option<Read> {
        match read.phase {
            Phase::All => {
                cur.covered_to = Some(cur.covered_to.map_or(read.end, |c| c.max(read.end)));
                if cur.swept_at.is_none() {
                    // a first backfill has just read every comment
                    cur.swept_at = Some(now);
                }
                let sense_ok = read.whole
                    && read.rescan_from.is_some()
                    && self.memo_complete(conv, read.id, Phase::All, read.page);
                read::after(&read, Phase::All, sense_ok)
            }
            Phase::Sense => {
                self.decide(conv, &read, cur, fetched);
                read::after(&read, Phase::Sense, false)
            }
            Phase::Retry => read::after(&read, Phase::Retry, false),
            Phase::Sweep => {
                cur.swept_at = Some(now);
                cur.sweep_end = Some(read.begin);
                None
            }
        }
    }

    /// Map a page's items with their quick comments; note the window of those whose
    /// comments are still to be read.
    fn map_page(
        &self,
        conv: &str,
        good: &[Item<'_>],
        comments: &Comments,
        cur: &mut MsgCursor,
        fetched: &mut Fetched,
    ) {
        let (messages, quarantine) = map_items(conv, good, comments);
        for m in &messages {
            if let Some(ct) = m.header.as_ref().map(|h| h.sent_at.timestamp_millis()) {
                cur.newest = Some(cur.newest.map_or(ct, |n| n.max(ct)));
                cur.oldest = Some(cur.oldest.map_or(ct, |o| o.min(ct)));
            }
        }
        fetched.messages.extend(messages);
        fetched.quarantine.extend(quarantine);
        let (lo, hi) = (
            comments.pending.iter().min().copied(),
            comments.pending.iter().max().copied(),
        );
        if let (Some(lo), Some(hi)) = (lo, hi) {
            // a margin either side: whether the bounds are inclusive is not documented
            cur.add_pending((lo.saturating_sub(1), hi.saturating_add(1)));
        }
    }

    fn remember(&self, conv: &str, read: &Read, page: PageMemo) -> Recorded {
        let mut memory = self.memory();
        memory
            .entry(conv.to_string())
            .or_default()
            .read(read.id, (read.phase, read.begin, read.end))
            .record(read.page, page)
    }

    fn memo_complete(&self, conv: &str, plan: u64, phase: Phase, pages: u32) -> bool {
        self.memory()
            .get(conv)
            .and_then(|m| m.find(plan, phase))
            .is_some_and(|r| r.complete(pages))
    }

    /// End of a whole pair of rescan reads: messages neither returned are absent upstream,
    /// messages only the first returned are no-sense (a one-way recall only if an earlier
    /// run saw them without the flag).
    fn decide(&self, conv: &str, read: &Read, cur: &mut MsgCursor, fetched: &mut Fetched) {
        let memory = self.memory();
        let Some(m) = memory.get(conv) else { return };
        let (Some(all), Some(sense)) = (m.find(read.id, Phase::All), m.find(read.id, Phase::Sense))
        else {
            return;
        };
        if !(read.whole && all.complete(read.all_pages) && sense.complete(read.page)) {
            return;
        }
        let plain: Vec<(String, i64)> = sense.items().cloned().collect();
        let plain_ids: std::collections::HashSet<&str> =
            plain.iter().map(|(id, _)| id.as_str()).collect();
        let from = read.begin;
        let mut only_flagged: Vec<(String, i64)> = all
            .items()
            .filter(|(id, ct)| *ct >= from && !plain_ids.contains(id.as_str()))
            .cloned()
            .collect();
        only_flagged.sort();
        only_flagged.dedup();
        // absent from both reads of the window: deleted upstream. Two reads make a page
        // skipped by one of them (a token shifted by a removal during the read) harmless.
        if let (Some(t_from), Some(t_to)) = (
            map::ms_to_time(read.begin + 1),
            map::ms_to_time(read.end - 1),
        ) {
            let mut present: Vec<String> = all
                .items()
                .chain(sense.items())
                .map(|(id, _)| id.clone())
                .collect();
            present.sort();
            present.dedup();
            fetched.windows.push(WindowObservation {
                conversation_id: conv.to_string(),
                from: t_from,
                to: t_to,
                present,
                detail: ABSENT.to_string(),
            });
        }
        let outcome = decide_no_sense(cur.sense.as_ref(), from, read.end, &only_flagged, &plain);
        for id in outcome.recalled {
            let mark = Mark {
                reason: Some(ONE_WAY.to_string()),
                ..Mark::default()
            };
            let raw = json!({"no_sense": true, "message_server_id": id, "detail": ONE_WAY});
            fetched.messages.push(recall(conv, id, mark, raw));
        }
        cur.sense = Some(outcome.mark);
    }

    /// End the run's reads: clear the read, forget the run's memory of this conversation,
    /// and record the last message's recall notice.
    pub(super) fn finish(
        &self,
        request: &FetchRequest<'_>,
        mut cur: MsgCursor,
        mut messages: Vec<MessageObservation>,
    ) -> Fetched {
        cur.read = None;
        self.memory().remove(&request.conversation.conversation_id);
        if let Some(rn) = request.conversation.metadata.get("revoke_notification") {
            if let Some(id) = map::int(rn, "server_id") {
                let mark = Mark {
                    by: map::string(rn, "revoke_id").filter(|s| !s.is_empty()),
                    ..Mark::default()
                };
                let raw = json!({"revoke_notification": rn});
                messages.push(recall(
                    &request.conversation.conversation_id,
                    id.to_string(),
                    mark,
                    raw,
                ));
            }
        }
        let mut f = Fetched::empty(cur.to_cursor(), true);
        f.messages = messages;
        f
    }
}

/// A recall of a message, and nothing else about it: the store sets the mark on the
/// message it holds and changes nothing else.
fn recall(conv: &str, message_id: String, mark: Mark, raw: Value) -> MessageObservation {
    MessageObservation {
        conversation_id: conv.to_string(),
        message_id,
        header: None,
        content: None,
        edited_at: None,
        earlier_versions: Vec::new(),
        recalled: Some(mark),
        deleted: None,
        reactions: None,
        raw,
    }
}

/// One history page as read: its items, and the token of the next page when upstream has
/// more.
pub(super) struct HistoryPage {
    pub items: Vec<Value>,
    pub next_token: Option<String>,
}

/// A page's items: those with a numeric id and time, and a quarantine record for each of
/// the others.
pub(super) fn split_items<'a>(
    conv: &str,
    items: &'a [Value],
) -> (Vec<Item<'a>>, Vec<QuarantineRecord>) {
    let mut good = Vec::new();
    let mut unusable = Vec::new();
    for item in items {
        match (
            map::int(item, "message_server_id"),
            map::int(item, "create_time"),
        ) {
            (Some(id), Some(ct)) => good.push((item, id.to_string(), ct)),
            _ => unusable.push(QuarantineRecord {
                reason: format!(
                    "yunxin history item of conversation {conv} without a numeric message_server_id or create_time"
                ),
                raw: item.clone(),
            }),
        }
    }
    (good, unusable)
}

/// Usable items as observations with their quick comments, or quarantine records: one of
/// the two for each item.
pub(super) fn map_items(
    conv: &str,
    good: &[Item<'_>],
    comments: &Comments,
) -> (Vec<MessageObservation>, Vec<QuarantineRecord>) {
    let mut messages = Vec::with_capacity(good.len());
    let mut quarantine = Vec::new();
    for (item, id, _) in good {
        match map::message(conv, item, comments.found.get(id)) {
            Ok(mut m) => {
                if let Some(why) = comments.refused.get(id) {
                    m.raw["quick_comments_refused"] = json!(why);
                }
                messages.push(m);
            }
            Err(reason) => quarantine.push(QuarantineRecord {
                reason: format!("yunxin message {id} of conversation {conv}: {reason}"),
                raw: (*item).clone(),
            }),
        }
    }
    (messages, quarantine)
}

/// The pages of one read must all run the same way (whatever `descending` means upstream).
fn check_order(what: &str, read: &mut Read, items: &[Value]) -> Result<(), ConnectorError> {
    let times: Vec<i64> = items
        .iter()
        .filter_map(|i| map::int(i, "create_time"))
        .collect();
    let mut order = read.order;
    let mut prev = if order.is_some() {
        read.last_time
    } else {
        None
    };
    for &t in &times {
        if let Some(p) = prev {
            let step = match t.cmp(&p) {
                std::cmp::Ordering::Greater => Some(Order::Asc),
                std::cmp::Ordering::Less => Some(Order::Desc),
                std::cmp::Ordering::Equal => None,
            };
            if let Some(step) = step {
                match order {
                    None => order = Some(step),
                    Some(o) if o != step => {
                        return Err(permanent(format!(
                            "{what}: history items are not in time order; refusing to page on"
                        )))
                    }
                    _ => {}
                }
            }
        }
        prev = Some(t);
    }
    read.order = order;
    if let Some(&t) = times.last() {
        read.last_time = Some(t);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item() -> impl Strategy<Value = Value> {
        let id = prop_oneof![
            (0i64..i64::MAX).prop_map(Value::from),
            "[0-9x]{0,20}".prop_map(Value::from),
            Just(Value::Null),
        ];
        let time = prop_oneof![
            any::<i64>().prop_map(Value::from),
            (0i64..4_000_000_000_000).prop_map(Value::from),
            "[0-9]{0,14}".prop_map(Value::from),
        ];
        let ty = prop_oneof![(-2i64..200).prop_map(Value::from), Just(Value::Null)];
        (id, time, ty, "\\PC{0,12}", proptest::bool::ANY).prop_map(|(id, t, ty, text, obj)| {
            if obj {
                json!({"message_server_id": id, "create_time": t, "message_type": ty, "text": text})
            } else {
                json!([id, t])
            }
        })
    }

    proptest! {
        /// Every item of a page becomes an observation or a quarantine record, never both,
        /// never neither, and nothing panics.
        #[test]
        fn every_item_is_archived_or_quarantined(items in proptest::collection::vec(item(), 0..40)) {
            let (good, unusable) = split_items("c", &items);
            let (messages, quarantine) = map_items("c", &good, &Comments::default());
            prop_assert_eq!(good.len() + unusable.len(), items.len());
            prop_assert_eq!(messages.len() + quarantine.len(), good.len());
            for m in &messages {
                prop_assert!(good.iter().any(|(_, id, _)| *id == m.message_id));
                prop_assert!(m.reactions.is_none(), "no answer, no reactions");
            }
        }
    }
}
