//! NetEase Yunxin (网易云信) connector (spec `specs/yunxin.md`): signed v2.1 reads of the
//! cloud conversations of configured accounts, their history in time windows, and the
//! re-reads that catch what upstream changes or removes afterwards.
//!
//! It only fetches and maps (STYLE rule 3). HTTP, signing and error classification live in
//! [`api`], pure mapping in [`map`].
//!
//! Yunxin has no sequence numbers and no change feed. The one feed, `messages`, keeps a
//! per-conversation cursor (versioned JSON):
//! `{"v":1, "covered_to":ms, "newest":ms, "oldest":ms, "sweep_end":ms, "swept_at":ms,
//!   "read":{...}}`. Every `create_time ≤ covered_to` has been read. A run plans one *read*:
//! - `all`: `[covered_to − overlap, now − lag]` widened back to the rescan window
//!   (`rescan_days`), or everything from `history_start` on the first run, paged with
//!   `page_token` until `has_more` is false. Only a complete read moves `covered_to`; an
//!   interrupted one resumes from its last committed page;
//! - `sense`: the rescan window again without no-sense messages: ids only the first read
//!   returned are one-way recalled (or one-way deleted) and get a recall mark. When both
//!   reads were whole, they yield a [`WindowObservation`]: held messages of the rescan
//!   window that neither read returned are marked deleted ("absent upstream"), content kept;
//! - `sweep`: once a day per conversation, one older 30-day window is re-read, rotating
//!   backwards through the history, for quick comments added to old messages.
//!
//! Each page's messages get their quick comments from the batch query (one call per page).
//! The conversation's `revoke_notification` marks its last message recalled.
//!
//! Per-run memory (reset by each planned read): which ids each read returned, for the
//! absence and no-sense decisions. A read resumed after a crash has lost it and so never
//! produces either (no false deletions).

pub mod api;
pub mod map;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;

use async_trait::async_trait;
use rand::Rng;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use self::api::Api;
use super::http::HttpClient;
use super::{Connector, ConnectorError, DiscoverRequest, Discovery, FetchRequest, Fetched};
use crate::config::{SourceConfig, YunxinConfig};
use crate::model::{
    ConversationObservation, Cursor, Mark, MessageObservation, Platform, QuarantineRecord,
    SourceName, WindowObservation,
};

pub const FEED_MESSAGES: &str = "messages";
const CURSOR_VERSION: u32 = 1;
/// The history call's maximum `limit` (spec §6.1).
const PAGE_LIMIT: usize = 100;
/// Conversations per batch refresh and messages per quick-comment query.
const BATCH: usize = 100;
/// Each incremental read starts this far before the watermark (boundary inclusivity is
/// undocumented, §10 question 2; clocks jitter).
const OVERLAP_MS: i64 = 5 * 60_000;
/// Reads end this far before now, so messages still being written are not half seen.
const LAG_MS: i64 = 5_000;
const SWEEP_WINDOW_MS: i64 = 30 * 86_400_000;
const SWEEP_EVERY_MS: i64 = 86_400_000;
const DAY_MS: i64 = 86_400_000;
const ABSENT: &str =
    "absent upstream: two-way recalled or deleted (the API does not tell them apart)";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Phase {
    All,
    Sense,
    Sweep,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Order {
    Asc,
    Desc,
}

/// One planned window read, persisted in the cursor page by page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Read {
    /// The connector instance (run) that planned it; page tokens are only reused by it.
    run: String,
    phase: Phase,
    begin: i64,
    end: i64,
    /// Where the rescan (absence and no-sense decisions) starts, if this run rescans.
    rescan_from: Option<i64>,
    /// The older window to sweep after the rescan, if due.
    sweep: Option<(i64, i64)>,
    token: Option<String>,
    order: Option<Order>,
    last_time: Option<i64>,
    /// Read from `begin` in this run without a restart: absence decisions are allowed.
    whole: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct MsgCursor {
    v: u32,
    covered_to: Option<i64>,
    newest: Option<i64>,
    oldest: Option<i64>,
    sweep_end: Option<i64>,
    swept_at: Option<i64>,
    read: Option<Read>,
}

impl MsgCursor {
    fn to_cursor(&self) -> Cursor {
        Cursor(serde_json::to_value(self).unwrap_or_else(|_| json!({"v": CURSOR_VERSION})))
    }
}

/// What the reads of this run returned, per conversation.
#[derive(Default)]
struct Seen {
    present: HashSet<String>,
    /// Ids returned by the `all` read with `create_time ≥ rescan_from`.
    recent: Vec<String>,
    sense: HashSet<String>,
    /// An item came without a usable id: no absence or no-sense decision for this read.
    broken: bool,
}

#[derive(Default, Serialize, Deserialize)]
struct SourceState {
    v: u32,
    /// `update_time` per conversation at the last discovery.
    update_times: BTreeMap<String, i64>,
}

pub struct YunxinConnector {
    api: Api,
    source: SourceName,
    accounts: Vec<String>,
    history_start: i64,
    rescan_ms: i64,
    run: String,
    seen: Mutex<HashMap<String, Seen>>,
}

impl fmt::Debug for YunxinConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("YunxinConnector")
            .field("source", &self.source)
            .field("base_url", &self.api.base_url())
            .field("accounts", &self.accounts)
            .field("history_start", &self.history_start)
            .field("rescan_ms", &self.rescan_ms)
            .finish()
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn permanent(msg: String) -> ConnectorError {
    ConnectorError::Permanent(msg)
}

impl YunxinConnector {
    pub fn new(
        source: &SourceConfig,
        cfg: &YunxinConfig,
        http: HttpClient,
    ) -> anyhow::Result<Self> {
        if cfg.accounts.is_empty() {
            anyhow::bail!(
                "source {}: accounts must list at least one account",
                source.name
            );
        }
        if cfg.app_key.is_empty() {
            anyhow::bail!("source {}: app_key must not be empty", source.name);
        }
        let run: String = {
            let mut rng = rand::thread_rng();
            (0..16)
                .map(|_| char::from_digit(rng.gen_range(0..36), 36).unwrap_or('0'))
                .collect()
        };
        Ok(YunxinConnector {
            api: Api::new(
                http,
                &cfg.base_url,
                &cfg.app_key,
                cfg.app_secret.clone(),
                source.name.clone(),
            ),
            source: source.name.clone(),
            accounts: cfg.accounts.clone(),
            history_start: cfg
                .history_start
                .map(|t| t.timestamp_millis())
                .unwrap_or(0)
                .max(0),
            rescan_ms: i64::from(cfg.rescan_days).saturating_mul(DAY_MS),
            run,
            seen: Mutex::new(HashMap::new()),
        })
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn parse_cursor(&self, cursor: Option<&Cursor>) -> Result<MsgCursor, ConnectorError> {
        let Some(c) = cursor else {
            return Ok(MsgCursor {
                v: CURSOR_VERSION,
                ..MsgCursor::default()
            });
        };
        let parsed: MsgCursor = serde_json::from_value(c.0.clone()).map_err(|e| {
            permanent(format!(
                "yunxin source {}: stored messages cursor is not readable ({e}); run with --full",
                self.source
            ))
        })?;
        if parsed.v != CURSOR_VERSION {
            return Err(permanent(format!(
                "yunxin source {}: messages cursor version {} is not {CURSOR_VERSION}; run with --full",
                self.source, parsed.v
            )));
        }
        Ok(parsed)
    }

    /// The read a run starts with, or `None` when there is nothing to read.
    fn plan(&self, cur: &MsgCursor, now: i64) -> Option<Read> {
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
        (begin < end).then(|| Read {
            run: self.run.clone(),
            phase: Phase::All,
            begin,
            end,
            rescan_from,
            sweep,
            token: None,
            order: None,
            last_time: None,
            whole: true,
        })
    }

    /// The next older window to sweep, rotating back to `limit` when it passed the oldest.
    fn sweep_window(&self, cur: &MsgCursor, limit: i64) -> Option<(i64, i64)> {
        let floor = self.history_start.max(cur.oldest?);
        let mut end = cur.sweep_end.unwrap_or(limit).min(limit);
        if end <= floor {
            end = limit;
        }
        let begin = (end - SWEEP_WINDOW_MS).max(floor);
        (begin < end).then_some((begin, end))
    }

    async fn fetch_messages(&self, request: &FetchRequest<'_>) -> Result<Fetched, ConnectorError> {
        let conv = request.conversation.conversation_id.as_str();
        let mut cur = self.parse_cursor(request.cursor)?;
        let now = now_ms();
        let read = match cur.read.take() {
            Some(r) if r.run == self.run => r,
            Some(r) => match self.resume(r) {
                Some(r) => r,
                None => return Ok(self.finish(request, cur, now, Vec::new())),
            },
            None => match self.plan(&cur, now) {
                Some(r) => {
                    self.seen().insert(conv.to_string(), Seen::default());
                    r
                }
                None => {
                    let unchanged = request.cursor.cloned().unwrap_or_else(|| cur.to_cursor());
                    return Ok(Fetched::empty(unchanged, true));
                }
            },
        };
        self.read_page(request, cur, read, now).await
    }

    /// A read left by an earlier run (its page token and its memory are gone).
    fn resume(&self, mut r: Read) -> Option<Read> {
        r.run = self.run.clone();
        r.token = None;
        r.whole = false;
        match r.phase {
            Phase::All => {
                if let (Some(Order::Asc), Some(t)) = (r.order, r.last_time) {
                    r.begin = r.begin.max(t - OVERLAP_MS);
                }
                r.order = None;
                r.last_time = None;
                r.rescan_from = None;
                Some(r)
            }
            // the no-sense decision needs the first read's ids: skip to the sweep
            Phase::Sense => r.sweep.map(|(b, e)| Read {
                phase: Phase::Sweep,
                begin: b,
                end: e,
                order: None,
                last_time: None,
                ..r
            }),
            Phase::Sweep => {
                r.order = None;
                r.last_time = None;
                Some(r)
            }
        }
    }

    async fn read_page(
        &self,
        request: &FetchRequest<'_>,
        mut cur: MsgCursor,
        mut read: Read,
        now: i64,
    ) -> Result<Fetched, ConnectorError> {
        let conv = request.conversation.conversation_id.as_str();
        let path = api::history_path(conv);
        let what = format!(
            "{} (conversation {conv})",
            "/im/v2.1/conversations/{id}/messages"
        );
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
        let data = self
            .api
            .call(Method::GET, &path, &query, None, &what)
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
        let next_token = data
            .get("next_token")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if has_more && (next_token.is_empty() || read.token.as_deref() == Some(&next_token)) {
            return Err(permanent(format!(
                "{what}: has_more is true but next_token is {}; stopping this conversation rather than loop",
                if next_token.is_empty() { "empty" } else { "repeated" }
            )));
        }

        // order check: the pages of one read must all run the same way
        let times: Vec<i64> = items
            .iter()
            .filter_map(|i| map::int(i, "create_time"))
            .collect();
        let mut order = read.order;
        let mut prev = if order == Some(Order::Asc) || order == Some(Order::Desc) {
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
                                "{what}: history items are not in time order (asked for ascending); refusing to page on"
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

        let mut fetched = Fetched::empty(cur.to_cursor(), false);
        let mut good: Vec<(&Value, String, i64)> = Vec::new();
        {
            let mut seen = self.seen();
            let s = seen.entry(conv.to_string()).or_default();
            for item in &items {
                let id = map::int(item, "message_server_id");
                let ct = map::int(item, "create_time");
                match (id, ct) {
                    (Some(id), Some(ct)) => {
                        let id = id.to_string();
                        match read.phase {
                            Phase::All => {
                                s.present.insert(id.clone());
                                if read.rescan_from.is_some_and(|r| ct >= r) {
                                    s.recent.push(id.clone());
                                }
                            }
                            Phase::Sense => {
                                s.sense.insert(id.clone());
                            }
                            Phase::Sweep => {}
                        }
                        good.push((item, id, ct));
                    }
                    _ => {
                        s.broken = true;
                        if read.phase != Phase::Sense {
                            fetched.quarantine.push(QuarantineRecord {
                                reason: format!(
                                    "yunxin history item of conversation {conv} without a numeric message_server_id or create_time"
                                ),
                                raw: item.clone(),
                            });
                        }
                    }
                }
            }
        }
        if read.phase != Phase::Sense && !good.is_empty() {
            let comments = self.quick_comments(conv, &good).await?;
            for (item, id, ct) in &good {
                match map::message(conv, item, comments.get(id)) {
                    Ok(m) => fetched.messages.push(m),
                    Err(reason) => fetched.quarantine.push(QuarantineRecord {
                        reason: format!("yunxin message {id} of conversation {conv}: {reason}"),
                        raw: (*item).clone(),
                    }),
                }
                cur.newest = Some(cur.newest.map_or(*ct, |n| n.max(*ct)));
                cur.oldest = Some(cur.oldest.map_or(*ct, |o| o.min(*ct)));
            }
        }

        if has_more {
            read.token = Some(next_token);
            cur.read = Some(read);
            fetched.next_cursor = cur.to_cursor();
            return Ok(fetched);
        }
        // the phase is complete
        let next = match read.phase {
            Phase::All => {
                cur.covered_to = Some(cur.covered_to.map_or(read.end, |c| c.max(read.end)));
                if cur.swept_at.is_none() {
                    // a first backfill has just read every comment
                    cur.swept_at = Some(now);
                }
                let seen = self.seen();
                let s = seen.get(conv);
                match (read.rescan_from, s) {
                    (Some(_), Some(s)) if read.whole && !s.broken => Some(Read {
                        phase: Phase::Sense,
                        begin: read.rescan_from.unwrap_or(read.begin),
                        token: None,
                        order: None,
                        last_time: None,
                        ..read.clone()
                    }),
                    _ => read.sweep.map(|(b, e)| Read {
                        phase: Phase::Sweep,
                        begin: b,
                        end: e,
                        token: None,
                        order: None,
                        last_time: None,
                        ..read.clone()
                    }),
                }
            }
            Phase::Sense => {
                let seen = self.seen();
                if let Some(s) = seen.get(conv).filter(|s| !s.broken && read.whole) {
                    // absent from both reads of the window: deleted upstream. Two reads
                    // make a page skipped by one of them (a token shifted by a removal
                    // during the read) harmless.
                    let from = read.begin + 1;
                    let to = read.end - 1;
                    if let (Some(from), Some(to)) = (map::ms_to_time(from), map::ms_to_time(to)) {
                        let mut present: Vec<String> = s.present.union(&s.sense).cloned().collect();
                        present.sort();
                        fetched.windows.push(WindowObservation {
                            conversation_id: conv.to_string(),
                            from,
                            to,
                            present,
                            detail: ABSENT.to_string(),
                        });
                    }
                    let mut recalled: Vec<&String> = s
                        .recent
                        .iter()
                        .filter(|id| !s.sense.contains(*id))
                        .collect();
                    recalled.sort();
                    recalled.dedup();
                    for id in recalled {
                        fetched.messages.push(MessageObservation {
                            conversation_id: conv.to_string(),
                            message_id: id.clone(),
                            header: None,
                            content: None,
                            edited_at: None,
                            earlier_versions: Vec::new(),
                            recalled: Some(Mark::default()),
                            deleted: None,
                            reactions: None,
                            raw: json!({"no_sense": true, "message_server_id": id, "detail": "returned only with include_no_sense_msg=true: one-way recalled or deleted"}),
                        });
                    }
                }
                read.sweep.map(|(b, e)| Read {
                    phase: Phase::Sweep,
                    begin: b,
                    end: e,
                    token: None,
                    order: None,
                    last_time: None,
                    ..read.clone()
                })
            }
            Phase::Sweep => {
                cur.swept_at = Some(now);
                cur.sweep_end = Some(read.begin);
                None
            }
        };
        match next {
            Some(next) => {
                cur.read = Some(next);
                fetched.next_cursor = cur.to_cursor();
                Ok(fetched)
            }
            None => {
                let done = self.finish(request, cur, now, fetched.messages);
                Ok(Fetched {
                    quarantine: fetched.quarantine,
                    windows: fetched.windows,
                    ..done
                })
            }
        }
    }

    /// End the run's reads: clear the read and record the last message's recall notice.
    fn finish(
        &self,
        request: &FetchRequest<'_>,
        mut cur: MsgCursor,
        _now: i64,
        mut messages: Vec<MessageObservation>,
    ) -> Fetched {
        cur.read = None;
        self.seen().remove(&request.conversation.conversation_id);
        if let Some(rn) = request.conversation.metadata.get("revoke_notification") {
            if let Some(id) = map::int(rn, "server_id") {
                messages.push(MessageObservation {
                    conversation_id: request.conversation.conversation_id.clone(),
                    message_id: id.to_string(),
                    header: None,
                    content: None,
                    edited_at: None,
                    earlier_versions: Vec::new(),
                    recalled: Some(Mark {
                        at: None,
                        by: map::string(rn, "revoke_id").filter(|s| !s.is_empty()),
                        reason: None,
                    }),
                    deleted: None,
                    reactions: None,
                    raw: json!({"revoke_notification": rn}),
                });
            }
        }
        let mut f = Fetched::empty(cur.to_cursor(), true);
        f.messages = messages;
        f
    }

    /// The quick comments of one page's messages, by message id; a message the query
    /// failed for is left out (its reactions are then not touched).
    async fn quick_comments(
        &self,
        conv: &str,
        items: &[(&Value, String, i64)],
    ) -> Result<HashMap<String, Value>, ConnectorError> {
        let mut out = HashMap::new();
        for chunk in items.chunks(BATCH) {
            let body = json!({"messages": chunk.iter().map(|(i, _, _)| map::comment_key(i)).collect::<Vec<_>>()});
            let what = format!("{} (conversation {conv})", api::QUICK_COMMENTS);
            let data = self
                .api
                .call(Method::POST, api::QUICK_COMMENTS, &[], Some(&body), &what)
                .await?;
            let Some(list) = data.get("success_list").and_then(Value::as_array) else {
                return Err(ConnectorError::Decode {
                    message: format!("{what}: no success_list"),
                    raw: Some(data.clone()),
                });
            };
            for entry in list {
                if let Some(id) = map::int(entry, "message_server_id") {
                    let comments = entry.get("comments").cloned().unwrap_or(json!([]));
                    let comments = if comments.is_array() {
                        comments
                    } else {
                        json!([])
                    };
                    out.insert(id.to_string(), comments);
                }
            }
        }
        Ok(out)
    }

    /// Every conversation of one account, page by page.
    async fn list_account(
        &self,
        account: &str,
        into: &mut Vec<Value>,
    ) -> Result<(), ConnectorError> {
        let mut token: Option<String> = None;
        let what = format!("{} (account {account})", api::LIST);
        loop {
            let mut query = vec![("account_id", account.to_string()), ("limit", "100".into())];
            if let Some(t) = &token {
                query.push(("page_token", t.clone()));
            }
            let data = match self
                .api
                .call(Method::GET, api::LIST, &query, None, &what)
                .await
            {
                Ok(d) => d,
                // 414: a parameter or signature error, already explained
                Err(ConnectorError::Permanent(m)) if !m.contains("code 414") => {
                    return Err(permanent(format!(
                        "{m}. Listing conversations needs the app's cloud conversations \
                         (云端会话) feature, which records conversations from when it was \
                         switched on; see the Yunxin section of the README"
                    )))
                }
                Err(e) => return Err(e),
            };
            let has_more = data
                .get("has_more")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if let Some(items) = data.get("items").and_then(Value::as_array) {
                into.extend(items.iter().cloned());
            }
            if !has_more {
                return Ok(());
            }
            let next = data
                .get("next_token")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if next.is_empty() || token.as_deref() == Some(&next) {
                return Err(permanent(format!(
                    "{what}: has_more is true but next_token is empty or repeated; stopping rather than loop"
                )));
            }
            token = Some(next);
        }
    }
}

#[async_trait]
impl Connector for YunxinConnector {
    fn platform(&self) -> Platform {
        Platform::Yunxin
    }

    /// Signed requests need no login.
    async fn login(&self) -> Result<(), ConnectorError> {
        Ok(())
    }

    async fn discover(&self, request: DiscoverRequest<'_>) -> Result<Discovery, ConnectorError> {
        let previous: SourceState = request
            .state
            .and_then(|s| serde_json::from_value(s.0.clone()).ok())
            .unwrap_or_default();
        let mut items: Vec<Value> = Vec::new();
        for account in &self.accounts {
            self.list_account(account, &mut items).await?;
        }
        let mut discovery = Discovery::default();
        let mut update_times: BTreeMap<String, i64> = BTreeMap::new();
        let take = |item: &Value, d: &mut Discovery, ut: &mut BTreeMap<String, i64>| {
            match map::conversation(item) {
                Ok((obs, t)) => {
                    ut.insert(obs.conversation_id.clone(), t);
                    d.conversations.push(obs);
                }
                Err(reason) => d.quarantine.push(QuarantineRecord {
                    reason: format!("yunxin conversation: {reason}"),
                    raw: item.clone(),
                }),
            }
        };
        for item in &items {
            take(item, &mut discovery, &mut update_times);
        }
        // known conversations the lists no longer show: refresh them by id (seed 001)
        let missing: Vec<&str> = request
            .known
            .iter()
            .map(|k| k.conversation.conversation_id.as_str())
            .filter(|id| !update_times.contains_key(*id))
            .filter(|id| {
                self.accounts
                    .iter()
                    .any(|a| id.starts_with(&format!("{a}|")))
            })
            .collect();
        for chunk in missing.chunks(BATCH) {
            let what = format!("{} ({} conversations)", api::BATCH, chunk.len());
            let data = self
                .api
                .call(
                    Method::GET,
                    api::BATCH,
                    &[("conversation_ids", chunk.join(","))],
                    None,
                    &what,
                )
                .await?;
            if let Some(list) = data.get("success_list").and_then(Value::as_array) {
                for item in list {
                    take(item, &mut discovery, &mut update_times);
                }
            }
        }
        // unchanged: same update_time, nothing left to rescan, no sweep due
        let now = now_ms();
        if !request.full {
            for k in request.known {
                let id = &k.conversation.conversation_id;
                let (Some(t), Some(p)) = (update_times.get(id), previous.update_times.get(id))
                else {
                    continue;
                };
                let Some(cursor) = k.cursors.get(FEED_MESSAGES) else {
                    continue;
                };
                let Ok(c) = serde_json::from_value::<MsgCursor>(cursor.0.clone()) else {
                    continue;
                };
                let quiet = self.rescan_ms == 0
                    || c.newest.is_none_or(|n| n < now - LAG_MS - self.rescan_ms);
                let swept = c.swept_at.is_some_and(|s| now - s < SWEEP_EVERY_MS);
                if t == p && c.read.is_none() && c.covered_to.is_some() && quiet && swept {
                    discovery.unchanged.push(id.clone());
                }
            }
        }
        discovery.state = Some(Cursor(json!(SourceState { v: 1, update_times })));
        Ok(discovery)
    }

    fn feeds(&self, _conversation: &ConversationObservation) -> Vec<&'static str> {
        vec![FEED_MESSAGES]
    }

    async fn fetch(&self, request: FetchRequest<'_>) -> Result<Fetched, ConnectorError> {
        match request.feed {
            FEED_MESSAGES => self.fetch_messages(&request).await,
            other => Err(permanent(format!(
                "yunxin source {}: unknown feed {other}",
                self.source
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(rescan_days: u32) -> YunxinConnector {
        let cfg = YunxinConfig {
            base_url: "http://127.0.0.1:9".into(),
            app_key: "k".into(),
            app_secret: crate::config::Secret::new("s"),
            accounts: vec!["a".into()],
            history_start: None,
            rescan_days,
        };
        let source = SourceConfig {
            name: SourceName::new("y"),
            schedule: String::new(),
            requests_per_second: 0.0,
            request_timeout: std::time::Duration::from_secs(5),
            enabled: true,
            platform: crate::config::PlatformConfig::Yunxin(cfg.clone()),
        };
        YunxinConnector::new(
            &source,
            &cfg,
            HttpClient::new(0.0, std::time::Duration::from_secs(5)).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn plans_backfill_then_overlap_and_rescan() {
        let c = connector(7);
        let now = 1_750_000_000_000;
        let first = c.plan(&MsgCursor::default(), now).unwrap();
        assert_eq!(
            (first.begin, first.end, first.rescan_from),
            (0, now - LAG_MS, Some(now - LAG_MS - 7 * DAY_MS))
        );
        let cur = MsgCursor {
            covered_to: Some(now - 1000),
            oldest: Some(now - 100 * DAY_MS),
            swept_at: Some(now),
            ..MsgCursor::default()
        };
        let next = c.plan(&cur, now).unwrap();
        assert_eq!(next.rescan_from, Some(now - LAG_MS - 7 * DAY_MS));
        assert_eq!(next.begin, now - LAG_MS - 7 * DAY_MS);
        assert_eq!(next.sweep, None, "swept just now");
        let c0 = connector(0);
        let next = c0.plan(&cur, now).unwrap();
        assert_eq!(
            (next.begin, next.rescan_from),
            (now - 1000 - OVERLAP_MS, None)
        );
    }

    #[test]
    fn sweeps_rotate_backwards_and_wrap() {
        let c = connector(7);
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
    fn a_resumed_read_never_decides_absence() {
        let c = connector(7);
        let r = Read {
            run: "old".into(),
            phase: Phase::All,
            begin: 0,
            end: 1_000_000_000,
            rescan_from: Some(500),
            sweep: None,
            token: Some("t".into()),
            order: Some(Order::Asc),
            last_time: Some(900_000_000),
            whole: true,
        };
        let r = c.resume(r).unwrap();
        assert!(!r.whole);
        assert_eq!(r.token, None);
        assert_eq!(r.rescan_from, None);
        assert_eq!(r.begin, 900_000_000 - OVERLAP_MS);
    }
}
