//! Reading one chat's history: passes from the newest message down over the rescan window,
//! the `list-message-by-seq` catch-up, passes below the oldest archived message, the
//! confirmation of an empty page, and the edit records of edited messages (see the parent
//! module's doc for the cursor and when each is used). Gaps are reported where upstream
//! skips seqs.
//!
//! Every function here works on a copy of the request's cursor: a fetch that fails leaves
//! nothing behind, and the same cursor always leads to the same requests.

use super::*;
use crate::connector::ChangedMessage;

/// What one step of reading yields.
#[derive(Default)]
struct Step {
    messages: Vec<map::Mapped>,
    gaps: Vec<SeqGap>,
    quarantine: Vec<QuarantineRecord>,
    /// The chat has nothing more to read in this run.
    done: bool,
}

/// A message whose edit record must be read, with what its earlier versions are completed
/// from.
struct Wanted {
    id: String,
    current: map::Current,
}

impl Pass {
    /// A pass from the newest message down, stopping at `stop_seq` (0: at the oldest).
    fn from_top(stop_seq: i64, window: bool) -> Pass {
        Pass {
            anchor_seq: i64::MAX,
            stop_seq,
            window,
            ..Pass::default()
        }
    }

    fn anchored(&self) -> bool {
        self.anchor_seq != i64::MAX
    }

    /// Whether the pass has reached the messages archived before it began.
    fn caught_up(&self) -> bool {
        self.stop_seq > 0 && self.anchored() && self.anchor_seq <= self.stop_seq + 1
    }
}

fn anchor_of(m: &map::Mapped) -> Anchor {
    Anchor {
        seq: m.seq,
        id: m.observation.message_id.clone(),
    }
}

impl YunhuConnector {
    fn window_disabled(&self) -> bool {
        self.rescan_messages == 0 && self.rescan_days == 0
    }

    pub(super) fn decode_error(
        &self,
        path: &str,
        chat: Option<&str>,
        why: String,
        body: &[u8],
    ) -> ConnectorError {
        ConnectorError::Decode {
            message: format!("{}: {why}", self.api.what(path, chat)),
            raw: Some(raw_body(body)),
        }
    }

    /// The next page of a chat's history: up to [`PAGES_PER_FETCH`] steps chained, then the
    /// edit records of the edited messages among them.
    pub(super) async fn fetch_history(
        &self,
        ctx: &RunContext,
        chat: &Chat,
        cursor: Option<HistoryCursor>,
        changed: &[ChangedMessage],
    ) -> Result<Fetched, ConnectorError> {
        let mut c = cursor.unwrap_or(HistoryCursor {
            v: CURSOR_VERSION,
            ..HistoryCursor::default()
        });
        // A cursor written by an earlier run: this run's work on the chat begins.
        let run_start = c.run != ctx.run;
        if run_start {
            c.run = ctx.run.clone();
            c.run_requests = 0;
        }
        if c.run_requests >= MAX_REQUESTS_PER_RUN {
            return Err(ConnectorError::Permanent(format!(
                "yunhu source {}: chat {} made {} requests in this run, the most one chat may; \
                 what was read is archived and the next run goes on from there",
                self.source, chat.id, c.run_requests
            )));
        }
        let mut out = Fetched::empty(Cursor(Value::Null), false);
        let mut wanted = Vec::new();
        let mut first = run_start;
        for _ in 0..PAGES_PER_FETCH {
            let step = self
                .step(ctx, chat, &mut c, first, changed, &mut wanted)
                .await?;
            first = false;
            out.messages
                .extend(step.messages.into_iter().map(|m| m.observation));
            out.gaps.extend(step.gaps);
            out.quarantine.extend(step.quarantine);
            out.done = step.done;
            if step.done
                || out.messages.len() >= MESSAGES_PER_FETCH
                || c.run_requests >= MAX_REQUESTS_PER_RUN
            {
                break;
            }
        }
        let requests = self.attach_versions(chat, &mut out, wanted).await?;
        c.run_requests = c.run_requests.saturating_add(requests);
        out.next_cursor = cursor::encode(&c);
        Ok(out)
    }

    /// One upstream page's worth of reading, from the cursor `c` (updated in place).
    async fn step(
        &self,
        ctx: &RunContext,
        chat: &Chat,
        c: &mut HistoryCursor,
        run_start: bool,
        changed: &[ChangedMessage],
        wanted: &mut Vec<Wanted>,
    ) -> Result<Step, ConnectorError> {
        if run_start && c.pass.is_none() {
            c.list_fp = ctx.fingerprints.get(&chat.id).cloned().unwrap_or_default();
            // A push named changed messages: Yunhu has no change feed, so the pass goes down
            // over the window and at least to the lowest of them, whenever the window was
            // last read.
            let window_due = !changed.is_empty()
                || (!self.window_disabled()
                    && ctx.now - c.rescanned_at >= i64::from(self.rescan_every_minutes) * 60);
            if c.newest_seq > 0 && !window_due {
                if let Some(step) = self.catch_up_by_seq(ctx, chat, c, wanted).await? {
                    return Ok(step);
                }
            }
            let mut pass = Pass::from_top(c.newest_seq, window_due);
            pass.down_to = changed.iter().filter_map(|m| m.seq).min().unwrap_or(0);
            c.pass = Some(pass);
        }
        if c.pass.is_none() {
            if c.complete {
                return Ok(Step {
                    done: true,
                    ..Step::default()
                });
            }
            // Back-fill: a pass from the oldest archived message down to the oldest message
            // upstream returns.
            c.pass = Some(if c.oldest_id.is_empty() {
                Pass::from_top(0, false)
            } else {
                Pass {
                    anchor_id: c.oldest_id.clone(),
                    anchor_seq: c.oldest_seq,
                    anchor_next: c.oldest_next.clone(),
                    backfill: true,
                    stop_seq: 0,
                    top_seq: c.newest_seq,
                    top_id: c.newest_id.clone(),
                    top_ms: c.newest_ms,
                    ..Pass::default()
                }
            });
        }
        self.pass_page(ctx, chat, c, wanted).await
    }

    /// One `list-message` page (decoded record by record) for `chat`.
    pub(super) async fn list_page(
        &self,
        chat: &Chat,
        path: &'static str,
        request: Vec<u8>,
    ) -> Result<PageRecords, ConnectorError> {
        let what = self.api.what(path, Some(&chat.id));
        let body = self
            .api
            .post_proto(path, Some(&chat.id), &self.token, &RawRequest(request))
            .await?;
        let list = pb::lenient_list(&body)
            .map_err(|e| self.decode_error(path, Some(&chat.id), e.to_string(), &body))?;
        api::check_status(&what, list.status.as_ref())?;
        let mut out = PageRecords::default();
        for (bytes, decoded) in list.records {
            let mapped = decoded
                .map_err(|e| format!("protobuf record does not decode: {e}"))
                .and_then(|msg| map::message(&chat.id, &msg, bytes));
            match mapped {
                Ok(m) => out.messages.push(m),
                Err(reason) => out.quarantine.push(QuarantineRecord {
                    reason: format!("yunhu chat {}: {reason}", chat.id),
                    raw: raw_body(bytes),
                }),
            }
        }
        if out.messages.is_empty() && !out.quarantine.is_empty() {
            // Nothing to page on: the next anchor would be unknown. Keep the records and
            // give up on this chat for this run rather than take the page for the end.
            return Err(ConnectorError::Decode {
                message: format!("{what}: no record of the page could be read"),
                raw: Some(Value::Array(
                    out.quarantine.into_iter().map(|q| q.raw).collect(),
                )),
            });
        }
        // newest first, whatever order upstream used
        out.messages.sort_by_key(|m| std::cmp::Reverse(m.seq));
        out.messages.dedup_by(|a, b| {
            a.seq == b.seq && a.observation.message_id == b.observation.message_id
        });
        Ok(out)
    }

    async fn list_before(
        &self,
        chat: &Chat,
        c: &mut HistoryCursor,
        anchor: &str,
    ) -> Result<PageRecords, ConnectorError> {
        let request = pb::ListMsgRequest {
            msg_count: PAGE_SIZE,
            msg_id: anchor.to_string(),
            chat_type: chat.chat_type,
            chat_id: chat.id.clone(),
        };
        c.run_requests = c.run_requests.saturating_add(1);
        self.list_page(chat, LIST_MESSAGE, request.encode_to_vec())
            .await
    }

    /// Note the messages whose edit record must be read: `edit_time` is news.
    fn want_versions(
        records: &PageRecords,
        known: &dyn Fn(&str) -> Option<u64>,
        wanted: &mut Vec<Wanted>,
    ) {
        for m in &records.messages {
            if m.edit_time > 0 && known(&m.observation.message_id).is_none_or(|t| t < m.edit_time) {
                wanted.push(Wanted {
                    id: m.observation.message_id.clone(),
                    current: m.current.clone(),
                });
            }
        }
    }

    /// Read the edit records of `wanted` a few at a time (the shared client's rate limit
    /// still spaces them) and attach every earlier version. Rows that cannot be read, and
    /// what lies beyond a record's bounds, are quarantined. Returns the requests made.
    async fn attach_versions(
        &self,
        chat: &Chat,
        fetched: &mut Fetched,
        mut wanted: Vec<Wanted>,
    ) -> Result<u32, ConnectorError> {
        use futures::StreamExt;
        // a message read twice in one fetch has its record read once
        let mut seen = HashSet::new();
        wanted.reverse();
        wanted.retain(|w| seen.insert(w.id.clone()));
        wanted.reverse();
        let histories: Vec<_> = futures::stream::iter(wanted)
            .map(|w| async move {
                let history = self.edit_history(chat, &w).await;
                (w.id, history)
            })
            .buffered(EDIT_RECORD_CONCURRENCY)
            .collect()
            .await;
        let index: HashMap<String, usize> = fetched
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| (m.message_id.clone(), i))
            .collect();
        let mut requests = 0u32;
        for (id, history) in histories {
            let history = history?;
            requests = requests.saturating_add(history.requests);
            if let Some(&i) = index.get(&id) {
                fetched.messages[i].earlier_versions = history.versions;
            }
            fetched.quarantine.extend(history.quarantine);
        }
        Ok(requests)
    }

    /// Every earlier version of a message, oldest first: pages of [`EDIT_PAGE_SIZE`] rows
    /// until `total` rows or an empty page, within [`MAX_EDIT_PAGES`], [`MAX_EDIT_ROWS`]
    /// and [`MAX_EDIT_BYTES`]. A record cut short keeps what was read and says so in a
    /// quarantine record.
    async fn edit_history(&self, chat: &Chat, want: &Wanted) -> Result<History, ConnectorError> {
        let label = format!("yunhu chat {} message {}", chat.id, want.id);
        let mut history = History::default();
        let mut read = EditRecordRead::default();
        let mut cut: Option<String> = None;
        for page in 1..=MAX_EDIT_PAGES {
            history.requests += 1;
            let (rows, total) = self.edit_record_page(chat, &want.id, page).await?;
            if total.is_some() {
                read.total = total;
            }
            if rows.is_empty() {
                break;
            }
            match read.take(&rows, &want.current, &label, &mut history.quarantine) {
                Err(why) => {
                    cut = Some(why);
                    break;
                }
                Ok(0) => {
                    cut = Some(format!("page {page} repeats rows already read"));
                    break;
                }
                Ok(_) => {}
            }
            if read.total.is_some_and(|t| read.rows_read as u64 >= t) {
                break;
            }
            if page == MAX_EDIT_PAGES {
                cut = Some(format!("it has more than {MAX_EDIT_PAGES} pages"));
            }
        }
        if let Some(why) = cut {
            history
                .quarantine
                .push(read.cut_short(chat, &want.id, &label, &why));
        }
        history.versions = read.versions();
        Ok(history)
    }

    /// One page of a message's edit record: its rows (none when `list` is `null` or
    /// absent) and `total`, when upstream gave it.
    async fn edit_record_page(
        &self,
        chat: &Chat,
        msg_id: &str,
        page: u32,
    ) -> Result<(Vec<Value>, Option<u64>), ConnectorError> {
        let data = self
            .api
            .post_json(
                EDIT_RECORD,
                Some(&chat.id),
                &self.token,
                &json!({"msgId": msg_id, "size": EDIT_PAGE_SIZE, "page": page}),
            )
            .await?;
        let total = data.get("total").and_then(Value::as_u64);
        match data.get("list") {
            Some(Value::Array(rows)) => Ok((rows.clone(), total)),
            None | Some(Value::Null) => Ok((Vec::new(), total)),
            Some(_) => Err(ConnectorError::Decode {
                message: format!(
                    "{}: list is not an array",
                    self.api.what(EDIT_RECORD, Some(&chat.id))
                ),
                raw: Some(data),
            }),
        }
    }

    /// Whether a pass has covered the trailing window after `covered` messages, the oldest
    /// sent at `oldest_ms`.
    fn window_covered(&self, now: i64, covered: u32, oldest_ms: i64) -> bool {
        let by_count = covered >= self.rescan_messages;
        let horizon = now.saturating_mul(1000) - i64::from(self.rescan_days) * 86_400_000;
        let by_age = self.rescan_days == 0 || oldest_ms < horizon;
        by_count && by_age
    }

    /// Catch up with one `list-message-by-seq` call. The answer is kept only when it is
    /// contiguous with the newest archived message and reaches the newest message the
    /// conversation list announced: an empty or partial answer is no proof of being caught
    /// up (far behind, upstream answers with the newest messages only, or, as one client
    /// reads it, with older ones). `None`: page from the top instead.
    async fn catch_up_by_seq(
        &self,
        ctx: &RunContext,
        chat: &Chat,
        c: &mut HistoryCursor,
        wanted: &mut Vec<Wanted>,
    ) -> Result<Option<Step>, ConnectorError> {
        let request = pb::ListMsgBySeqRequest {
            msg_start: c.newest_seq,
            chat_type: chat.chat_type,
            chat_id: chat.id.clone(),
        };
        c.run_requests = c.run_requests.saturating_add(1);
        let mut records = self
            .list_page(chat, LIST_MESSAGE_BY_SEQ, request.encode_to_vec())
            .await?;
        records.messages.retain(|m| m.seq > c.newest_seq);
        let contiguous = records
            .messages
            .last()
            .is_none_or(|lowest| lowest.seq == c.newest_seq + 1)
            && records.quarantine.is_empty();
        let head_ms = records
            .messages
            .first()
            .map_or(c.newest_ms, |top| top.sent_ms.max(c.newest_ms));
        let announced = ctx.list_ms.get(&chat.id).copied();
        let reaches_list = head_ms > 0 && announced.is_some_and(|t| t as i64 <= head_ms);
        if !contiguous || !reaches_list {
            return Ok(None);
        }
        Self::want_versions(&records, &|_| None, wanted);
        let mut step = Step {
            gaps: missing_between(&chat.id, None, &records.messages),
            ..Step::default()
        };
        if let Some(top) = records.messages.first() {
            c.newest_seq = top.seq;
            c.newest_id = top.observation.message_id.clone();
            c.newest_ms = top.sent_ms;
        }
        step.messages = records.messages;
        step.done = c.complete;
        Ok(Some(step))
    }

    /// One page of a pass.
    async fn pass_page(
        &self,
        ctx: &RunContext,
        chat: &Chat,
        c: &mut HistoryCursor,
        wanted: &mut Vec<Wanted>,
    ) -> Result<Step, ConnectorError> {
        let pass = c.pass.take().unwrap_or_else(|| Pass::from_top(0, false));
        // Asking below a confirmation anchor, or below the pass's own anchor.
        let ask_id = pass
            .confirm
            .and_then(|i| pass.anchor_next.get(i))
            .map_or(pass.anchor_id.clone(), |a| a.id.clone());
        let mut records = self.list_before(chat, c, &ask_id).await?;
        let mut step = Step {
            quarantine: std::mem::take(&mut records.quarantine),
            ..Step::default()
        };
        let (mut pass, kept_above) = match confirm(chat, pass, &mut records, c.complete, &mut step)
        {
            Confirmation::AskAgain(pass) => {
                c.pass = Some(pass);
                return Ok(step);
            }
            Confirmation::GoOn(pass, kept_above) => (pass, kept_above),
        };
        note_page(chat, &mut pass, &records, &c.edits, &mut step, wanted);
        if self.advance(ctx, &mut pass, &records, kept_above) {
            end_pass(ctx, chat, c, pass, records.messages.is_empty(), &mut step);
        } else {
            c.pass = Some(pass);
        }
        step.messages = records.messages;
        Ok(step)
    }

    /// Move the pass's anchor down to the page's lowest message, keeping the few messages
    /// above it to confirm an empty page with. Whether the pass is finished: the page was
    /// empty, or the pass has caught up and covered the trailing window when it must.
    fn advance(
        &self,
        ctx: &RunContext,
        pass: &mut Pass,
        records: &PageRecords,
        kept_above: Vec<Anchor>,
    ) -> bool {
        let Some(lowest) = records.messages.last() else {
            return true;
        };
        let mut next: Vec<Anchor> = records
            .messages
            .iter()
            .rev()
            .skip(1)
            .take(CONFIRM_ANCHORS)
            .map(anchor_of)
            .collect();
        next.extend(kept_above);
        next.truncate(CONFIRM_ANCHORS);
        pass.anchor_next = next;
        pass.anchor_seq = lowest.seq;
        pass.anchor_id = lowest.observation.message_id.clone();
        pass.caught_up()
            && (!pass.window || self.window_covered(ctx.now, pass.covered, lowest.sent_ms))
            && (pass.down_to == 0 || pass.anchor_seq <= pass.down_to)
    }
}

/// Where a pass goes after a page below its anchor (or below a confirmation anchor).
enum Confirmation {
    /// Ask again before taking the page for anything: the pass as it is to be kept.
    AskAgain(Pass),
    /// Go on with the page (the messages below the anchor, or none: the bottom), and the
    /// messages known just above its lowest.
    GoOn(Pass, Vec<Anchor>),
}

/// What the page below the anchor tells: an empty page below a stored anchor is taken for
/// the bottom only once the messages above the anchor confirm it (asked below each in
/// turn, then from the top once). Drops from `records` the messages from the anchor up,
/// which the pass has read already.
fn confirm(
    chat: &Chat,
    mut pass: Pass,
    records: &mut PageRecords,
    complete: bool,
    step: &mut Step,
) -> Confirmation {
    let answered = !records.messages.is_empty();
    let anchor_there = records
        .messages
        .iter()
        .any(|m| m.observation.message_id == pass.anchor_id && m.seq == pass.anchor_seq);
    records.messages.retain(|m| m.seq < pass.anchor_seq);
    // The messages to remember just above this page's lowest, if it goes on from here.
    let mut kept_above: Vec<Anchor> = Vec::new();
    if pass.anchored() {
        kept_above.push(Anchor {
            seq: pass.anchor_seq,
            id: pass.anchor_id.clone(),
        });
    }
    kept_above.extend(pass.anchor_next.iter().cloned());
    if let Some(i) = pass.confirm {
        // The page below the anchor came back empty; this asked below `anchor_next[i]`.
        if records.messages.is_empty() && !answered {
            // That message is gone too: try the next one, then the top.
            if i + 1 < pass.anchor_next.len() {
                pass.confirm = Some(i + 1);
                return Confirmation::AskAgain(pass);
            }
            match restart(chat, &mut pass, step) {
                Some(again) => return Confirmation::AskAgain(again),
                None => kept_above.clear(),
            }
        } else if !anchor_there {
            // Messages below where the anchor was: it disappeared, go on from them.
            // None: it is gone with nothing below where it was, the bottom.
            kept_above = pass.anchor_next[i.min(pass.anchor_next.len())..].to_vec();
        }
        // else the anchor is there: messages below it, or none, the bottom confirmed
        pass.confirm = None;
    } else if records.messages.is_empty() && pass.anchored() && (!complete || !pass.caught_up()) {
        if !pass.anchor_next.is_empty() {
            pass.confirm = Some(0);
            return Confirmation::AskAgain(pass);
        }
        if let Some(again) = restart(chat, &mut pass, step) {
            return Confirmation::AskAgain(again);
        }
    }
    Confirmation::GoOn(pass, kept_above)
}

/// Note a page in its pass: the edited messages whose record must be read, the seqs
/// missing between its messages, the edit times seen (not in a back-fill: the cursor's
/// describe the newest messages), the pass's top message and how many it has covered.
fn note_page(
    chat: &Chat,
    pass: &mut Pass,
    records: &PageRecords,
    previous_edits: &BTreeMap<String, u64>,
    step: &mut Step,
    wanted: &mut Vec<Wanted>,
) {
    let seen = &pass.edits;
    YunhuConnector::want_versions(
        records,
        &|id| previous_edits.get(id).or_else(|| seen.get(id)).copied(),
        wanted,
    );
    let above = pass.anchored().then_some(pass.anchor_seq);
    step.gaps
        .extend(missing_between(&chat.id, above, &records.messages));
    if !pass.backfill {
        for m in records.messages.iter().filter(|m| m.edit_time > 0) {
            pass.edits
                .insert(m.observation.message_id.clone(), m.edit_time);
        }
    }
    if pass.top_id.is_empty() {
        if let Some(top) = records.messages.first() {
            pass.top_seq = top.seq;
            pass.top_id = top.observation.message_id.clone();
            pass.top_ms = top.sent_ms;
        }
    }
    pass.covered = pass
        .covered
        .saturating_add(records.messages.len().min(u32::MAX as usize) as u32);
}

/// A finished pass: the cursor takes its newest and oldest messages and its edit times. A
/// pass that ended on an empty page (`at_bottom`) has read the history to its start, and
/// the seqs below the oldest message are a gap before the visible history.
fn end_pass(
    ctx: &RunContext,
    chat: &Chat,
    c: &mut HistoryCursor,
    mut pass: Pass,
    at_bottom: bool,
    step: &mut Step,
) {
    if pass.window {
        c.rescanned_at = ctx.now;
    }
    if pass.top_seq > c.newest_seq {
        c.newest_seq = pass.top_seq;
        c.newest_id = pass.top_id.clone();
        c.newest_ms = pass.top_ms;
    }
    if pass.anchored() && (c.oldest_seq == 0 || pass.anchor_seq < c.oldest_seq) {
        c.oldest_seq = pass.anchor_seq;
        c.oldest_id = pass.anchor_id.clone();
        c.oldest_next = pass.anchor_next.clone();
    }
    if at_bottom {
        c.complete = true;
        if c.oldest_seq > 1 {
            step.gaps
                .push(gap(&chat.id, 1, c.oldest_seq - 1, BEFORE_HISTORY_REASON));
        }
    }
    if !pass.backfill {
        c.edits = std::mem::take(&mut pass.edits);
    }
    step.done = c.complete;
}

/// Every message an empty page could be confirmed with is gone: the pass begins again from
/// the newest message, down to the oldest (`Some`). The second time in one pass (`None`),
/// the empty page is taken for the bottom, with a quarantine record saying it could not be
/// confirmed.
fn restart(chat: &Chat, pass: &mut Pass, step: &mut Step) -> Option<Pass> {
    if pass.restarted {
        step.quarantine.push(QuarantineRecord {
            reason: format!(
                "yunhu chat {}: no message below seq {} could be read, and this could not be \
                 confirmed: the messages the read was anchored on kept disappearing upstream; \
                 the history is recorded as complete there",
                chat.id, pass.anchor_seq
            ),
            raw: json!({"chat_id": chat.id,
                        "anchor": {"seq": pass.anchor_seq, "id": pass.anchor_id},
                        "tried": pass.anchor_next}),
        });
        pass.confirm = None;
        return None;
    }
    Some(Pass {
        restarted: true,
        edits: std::mem::take(&mut pass.edits),
        down_to: pass.down_to,
        ..Pass::from_top(0, pass.window)
    })
}

/// A message's earlier versions, what could not be read of its record, and the requests
/// reading it took.
#[derive(Default)]
struct History {
    versions: Vec<EarlierVersion>,
    quarantine: Vec<QuarantineRecord>,
    requests: u32,
}

/// How far a message's edit record has been read.
#[derive(Default)]
struct EditRecordRead {
    records: Vec<map::EditRecord>,
    /// The rows read so far, by id and edit time.
    seen: HashSet<String>,
    rows_read: usize,
    bytes: usize,
    /// The rows the record has, as upstream last said.
    total: Option<u64>,
}

impl EditRecordRead {
    /// Take a page's rows: each new one becomes an earlier version (or, when it cannot be
    /// read, a quarantine record labelled `label`). Returns how many rows were new, or why
    /// the record is cut short here (past [`MAX_EDIT_ROWS`] or [`MAX_EDIT_BYTES`]).
    fn take(
        &mut self,
        rows: &[Value],
        current: &map::Current,
        label: &str,
        quarantine: &mut Vec<QuarantineRecord>,
    ) -> Result<usize, String> {
        let mut new_rows = 0;
        for row in rows {
            // A row is known by its id and edit time; a page that repeats rows (upstream
            // ignoring `page`, or rows shifting while new edits arrive) adds nothing.
            let key = match (row.get("id"), row.get("msgTime")) {
                (Some(id), Some(t)) => format!("{id}/{t}"),
                _ => row.to_string(),
            };
            if !self.seen.insert(key) {
                continue;
            }
            new_rows += 1;
            self.rows_read += 1;
            self.bytes += row.to_string().len();
            if self.rows_read > MAX_EDIT_ROWS {
                return Err(format!("it has more than {MAX_EDIT_ROWS} rows"));
            }
            if self.bytes > MAX_EDIT_BYTES {
                return Err(format!("its rows exceed {MAX_EDIT_BYTES} bytes"));
            }
            match map::edit_record(row, current) {
                Ok(r) => self.records.push(r),
                Err(reason) => quarantine.push(QuarantineRecord {
                    reason: format!("{label}: {reason}"),
                    raw: row.clone(),
                }),
            }
        }
        Ok(new_rows)
    }

    /// The quarantine record of a record not read to its end, and why.
    fn cut_short(&self, chat: &Chat, msg_id: &str, label: &str, why: &str) -> QuarantineRecord {
        QuarantineRecord {
            reason: format!(
                "{label}: edit record not read to its end ({why}); the earlier versions of {} \
                 rows are archived",
                self.records.len()
            ),
            raw: json!({"chat_id": chat.id, "msg_id": msg_id, "total": self.total,
                        "rows_read": self.rows_read.min(MAX_EDIT_ROWS), "bytes_read": self.bytes}),
        }
    }

    /// The earlier versions read, oldest first.
    fn versions(mut self) -> Vec<EarlierVersion> {
        self.records.sort_by_key(|r| (r.edited_ms, r.id));
        self.records.into_iter().map(|r| r.version).collect()
    }
}

/// A request body already encoded.
struct RawRequest(Vec<u8>);

impl Message for RawRequest {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        buf.put_slice(&self.0);
    }
    fn merge_field(
        &mut self,
        _tag: u32,
        _wire_type: prost::encoding::WireType,
        _buf: &mut impl prost::bytes::Buf,
        _ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        Err(prost::DecodeError::new("a raw request is never decoded"))
    }
    fn encoded_len(&self) -> usize {
        self.0.len()
    }
    fn clear(&mut self) {
        self.0.clear();
    }
}

impl fmt::Debug for RawRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawRequest({} bytes)", self.0.len())
    }
}

#[derive(Default)]
pub(super) struct PageRecords {
    pub messages: Vec<map::Mapped>,
    pub quarantine: Vec<QuarantineRecord>,
}

/// The seqs missing between messages listed newest first, and between `above` (a message
/// above the first, when there is one) and the first.
fn missing_between(chat_id: &str, above: Option<i64>, messages: &[map::Mapped]) -> Vec<SeqGap> {
    let mut gaps = Vec::new();
    let mut above = above;
    for m in messages {
        if let Some(above) = above {
            if m.seq + 1 < above {
                gaps.push(gap(chat_id, m.seq + 1, above - 1, GAP_REASON));
            }
        }
        above = Some(m.seq);
    }
    gaps
}

fn gap(conversation_id: &str, from: i64, to: i64, reason: &str) -> SeqGap {
    let kind = if reason == BEFORE_HISTORY_REASON {
        GapKind::BeforeHistory
    } else {
        GapKind::NotReturned
    };
    SeqGap {
        conversation_id: conversation_id.to_string(),
        from_seq: from,
        to_seq: to,
        reason: reason.to_string(),
        kind,
    }
}
