//! NetEase Yunxin (网易云信) connector: signed v2.1 reads of the cloud conversations of
//! configured accounts, their history in time windows, and the re-reads that catch what
//! upstream changes or removes afterwards. What it relies on about the upstream, and how
//! sure that is: `docs/upstreams/yunxin.md`.
//!
//! It only fetches and maps. HTTP, signing and error classification live in [`api`], pure
//! mapping in [`map`], the files a message points to in [`attachments`], the cursor and the plan of a run's reads in [`read`], the run's
//! memory of them in [`memo`], paging in [`history`], quick comments in [`comments`].
//!
//! Yunxin has no sequence numbers and no change feed. The one feed, `messages`, keeps a
//! per-conversation cursor (versioned JSON, [`read::MsgCursor`]). Every
//! `create_time ≤ covered_to` has been read. A run reads in phases, each a window paged
//! with `page_token` until `has_more` is false and persisted page by page:
//! - `all`: `[covered_to − overlap, now − lag]` widened back to the rescan window
//!   (`rescan_days`), or everything from `history_start` on the first run. Only a complete
//!   read moves `covered_to`; an interrupted one resumes past its last committed page;
//! - `sense`: the rescan window again without no-sense messages. When both reads were whole
//!   in this run, held messages of the window that neither returned are marked deleted
//!   ("absent upstream", content kept), and a message only the first returned is marked
//!   recalled if an earlier run saw it without the flag (a one-way recall); one never seen
//!   without it was sent with a no-sense flag and is left alone (the cursor's `sense` mark
//!   remembers which);
//! - `retry`: windows whose quick comments could not be read on an earlier run;
//! - `sweep`: once a day per conversation, one older 30-day window, rotating backwards
//!   through the history, for quick comments added to old messages.
//!
//! Each page's messages get their quick comments from the batch query; a failed query
//! never holds the page back ([`comments`]). The conversation's `revoke_notification`
//! marks its last message recalled.
//!
//! A fetch is a function of the request and the cursor: the run's memory (which ids each
//! read returned, the tokens it used) is keyed by page and replaced when a page is fetched
//! again, and the decisions that need it are taken only when it holds every page of the
//! read ([`memo`]). A read resumed in a later run has lost it and decides nothing.
//!
//! Every read ends: a page token met twice in one read, a run of pages with nothing new,
//! or more pages than a run allows stop that conversation with an error.

pub mod api;
pub mod attachments;
mod comments;
mod history;
pub mod map;
mod memo;
mod read;
mod recheck;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use rand::Rng;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use self::api::Api;
use self::memo::ConvMemo;
use self::read::{MsgCursor, Planner, CURSOR_VERSION, DAY_MS, LAG_MS, SWEEP_EVERY_MS};

/// How long after a message was sent a read can return it: reads stop this far before
/// now. A targeted run answering a pushed message waits as long.
pub const READ_LAG: std::time::Duration = std::time::Duration::from_millis(LAG_MS as u64);
use super::cursor;
use super::http::HttpClient;
use super::{
    Connector, ConnectorError, DiscoverRequest, Discovery, FetchRequest, Fetched,
    KnownConversation, Probe, Recheck, RecheckRequest,
};
use crate::attachments::{AttachmentRef, MediaRequest};
use crate::config::{SourceConfig, YunxinConfig};
use crate::model::{ConversationObservation, Cursor, Platform, QuarantineRecord, SourceName};

pub const FEED_MESSAGES: &str = "messages";
/// Pages of one account's conversation list, at most (a million conversations).
const MAX_LIST_PAGES: usize = 10_000;

/// The version of [`SourceState`]'s format.
const STATE_VERSION: u32 = 1;

#[derive(Default, Serialize, Deserialize)]
struct SourceState {
    v: u32,
    /// `update_time` per conversation at the last discovery.
    update_times: BTreeMap<String, i64>,
}

/// What a discovery found so far: the conversations (or why one is quarantined) and their
/// `update_time`s.
#[derive(Default)]
struct Found {
    discovery: Discovery,
    update_times: BTreeMap<String, i64>,
}

impl Found {
    fn take(&mut self, item: &Value) {
        match map::conversation(item) {
            Ok((obs, t)) => {
                self.update_times.insert(obs.conversation_id.clone(), t);
                self.discovery.conversations.push(obs);
            }
            Err(reason) => self.discovery.quarantine.push(QuarantineRecord {
                reason: format!("yunxin conversation: {reason}"),
                raw: item.clone(),
            }),
        }
    }
}

pub struct YunxinConnector {
    api: Api,
    source: SourceName,
    accounts: Vec<String>,
    planner: Planner,
    /// Plans made by this run (each read carries the number of its plan).
    plans: AtomicU64,
    /// The run's memory of its reads, per conversation.
    memory: Mutex<HashMap<String, ConvMemo>>,
}

impl fmt::Debug for YunxinConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("YunxinConnector")
            .field("source", &self.source)
            .field("base_url", &self.api.base_url())
            .field("accounts", &self.accounts)
            .field("history_start", &self.planner.history_start)
            .field("rescan_ms", &self.planner.rescan_ms)
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
            planner: Planner {
                run,
                history_start: cfg
                    .history_start
                    .map(|t| t.timestamp_millis())
                    .unwrap_or(0)
                    .max(0),
                rescan_ms: i64::from(cfg.rescan_days).saturating_mul(DAY_MS),
            },
            plans: AtomicU64::new(1),
            memory: Mutex::new(HashMap::new()),
        })
    }

    fn memory(&self) -> std::sync::MutexGuard<'_, HashMap<String, ConvMemo>> {
        self.memory.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_plan(&self) -> u64 {
        self.plans.fetch_add(1, Ordering::Relaxed)
    }

    /// The stored cursor (version 1 cursors upgraded), or a new one for a first read.
    fn parse_cursor(&self, stored: Option<&Cursor>) -> Result<MsgCursor, ConnectorError> {
        let Some(stored) = stored else {
            return Ok(MsgCursor {
                v: CURSOR_VERSION,
                ..MsgCursor::default()
            });
        };
        let parsed: MsgCursor = cursor::decode(
            stored,
            &[1, CURSOR_VERSION],
            &format!("yunxin source {}: messages cursor", self.source),
        )?;
        Ok(read::upgrade(parsed, self.planner.rescan_ms))
    }

    /// The conversations of `ids`, as the batch query finds them (those it cannot find are
    /// left out).
    async fn conversations_by_id(&self, ids: &[&str]) -> Result<Vec<Value>, ConnectorError> {
        let what = format!("{} ({} conversations)", api::BATCH, ids.len());
        let data = self
            .api
            .call(
                Method::GET,
                api::BATCH,
                &[("conversation_ids", ids.join(","))],
                None,
                &what,
            )
            .await?;
        Ok(data
            .get("success_list")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    /// Whether a known conversation has nothing to read this run: the same `update_time`
    /// as at the last discovery, no read or quick-comment retry left over, nothing recent
    /// enough to rescan and no sweep due.
    fn unchanged(
        &self,
        known: &KnownConversation,
        update_times: &BTreeMap<String, i64>,
        previous: &SourceState,
        now: i64,
    ) -> bool {
        let id = &known.conversation.conversation_id;
        let (Some(t), Some(p)) = (update_times.get(id), previous.update_times.get(id)) else {
            return false;
        };
        let Some(c) = known
            .cursors
            .get(FEED_MESSAGES)
            .and_then(|stored| cursor::peek::<MsgCursor>(stored, &[1, CURSOR_VERSION]))
        else {
            return false;
        };
        let quiet = self.planner.rescan_ms == 0
            || c.newest
                .is_none_or(|n| n < now - LAG_MS - self.planner.rescan_ms);
        let swept = c.swept_at.is_some_and(|s| now - s < SWEEP_EVERY_MS);
        let settled = c.read.is_none() && c.pending.is_empty();
        t == p && settled && c.covered_to.is_some() && quiet && swept
    }

    /// Every conversation of one account, page by page. Ends on `has_more: false`; a page
    /// token met before, an empty one, or more than [`MAX_LIST_PAGES`] pages is an error.
    async fn list_account(
        &self,
        account: &str,
        into: &mut Vec<Value>,
    ) -> Result<(), ConnectorError> {
        let mut token: Option<String> = None;
        let mut used: HashSet<String> = HashSet::new();
        let what = format!("{} (account {account})", api::LIST);
        for _ in 0..MAX_LIST_PAGES {
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
            if next.is_empty() || !used.insert(next.clone()) {
                return Err(permanent(format!(
                    "{what}: has_more is true but next_token is empty or was already used; stopping rather than loop"
                )));
            }
            token = Some(next);
        }
        Err(permanent(format!(
            "{what}: more than {MAX_LIST_PAGES} pages of conversations; stopping rather than loop"
        )))
    }
}

#[async_trait]
impl Connector for YunxinConnector {
    fn platform(&self) -> Platform {
        Platform::Yunxin
    }

    /// One page of one conversation of the first account (signed as every request is).
    async fn probe(&self, _login: bool) -> Result<Probe, ConnectorError> {
        let Some(account) = self.accounts.first() else {
            return Err(permanent("no accounts are configured".to_string()));
        };
        let what = format!("{} (account {account})", api::LIST);
        let query = [("account_id", account.clone()), ("limit", "1".to_string())];
        self.api
            .call(Method::GET, api::LIST, &query, None, &what)
            .await?;
        Ok(Probe::Ok(format!(
            "conversation list of account {account} read"
        )))
    }

    /// Signed requests need no login.
    async fn login(&self) -> Result<(), ConnectorError> {
        Ok(())
    }

    async fn discover(&self, request: DiscoverRequest<'_>) -> Result<Discovery, ConnectorError> {
        let previous: SourceState = request
            .state
            .and_then(|s| cursor::peek(s, &[STATE_VERSION]))
            .unwrap_or_default();
        let mut items: Vec<Value> = Vec::new();
        for account in &self.accounts {
            self.list_account(account, &mut items).await?;
        }
        let mut found = Found::default();
        for item in &items {
            found.take(item);
        }
        // known conversations the lists no longer show: refresh them by id
        let missing: Vec<&str> = request
            .known
            .iter()
            .map(|k| k.conversation.conversation_id.as_str())
            .filter(|id| !found.update_times.contains_key(*id))
            .filter(|id| {
                self.accounts
                    .iter()
                    .any(|a| id.starts_with(&format!("{a}|")))
            })
            .collect();
        for chunk in missing.chunks(comments::BATCH) {
            for item in self.conversations_by_id(chunk).await? {
                found.take(&item);
            }
        }
        let Found {
            mut discovery,
            update_times,
        } = found;
        if !request.full {
            let now = now_ms();
            discovery.unchanged = request
                .known
                .iter()
                .filter(|k| self.unchanged(k, &update_times, &previous, now))
                .map(|k| k.conversation.conversation_id.clone())
                .collect();
        }
        discovery.state = Some(cursor::encode(&SourceState {
            v: STATE_VERSION,
            update_times,
        }));
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

    async fn recheck(&self, request: RecheckRequest<'_>) -> Result<Recheck, ConnectorError> {
        self.recheck_conversation(request).await
    }

    fn attachments(&self, content: &crate::model::Content) -> Vec<AttachmentRef> {
        attachments::of(content)
    }

    /// A plain GET of the NOS URL: NOS objects are read without the app's credentials
    /// (the AppSecret and the CheckSum headers are for the IM API only and never go there).
    async fn media_request(
        &self,
        reference: &AttachmentRef,
    ) -> Result<MediaRequest, ConnectorError> {
        media_request(&reference.url)
    }
}

/// The request for a NOS URL: a plain GET, no header, no credential; anything but an
/// absolute http(s) URL is refused (permanent: asking again cannot help).
pub fn media_request(url: &str) -> Result<MediaRequest, ConnectorError> {
    MediaRequest::get(url).map_err(|why| {
        permanent(format!(
            "yunxin attachment {}: {why}; Yunxin attachments are NOS http(s) URLs",
            crate::attachments::shown_url(url)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_names_no_secret() {
        let cfg = YunxinConfig {
            base_url: "http://127.0.0.1:9".into(),
            app_key: "k".into(),
            app_secret: crate::config::Secret::new("very-secret-value"),
            accounts: vec!["a".into()],
            history_start: None,
            rescan_days: 7,
        };
        let source = SourceConfig {
            name: SourceName::new("y"),
            schedule: String::new(),
            requests_per_second: 0.0,
            request_timeout: std::time::Duration::from_secs(5),
            enabled: true,
            push: true,
            platform: crate::config::PlatformConfig::Yunxin(cfg.clone()),
        };
        let c = YunxinConnector::new(
            &source,
            &cfg,
            HttpClient::new(0.0, std::time::Duration::from_secs(5)).unwrap(),
        )
        .unwrap();
        let debug = format!("{c:?}");
        assert!(debug.contains("rescan_ms") && !debug.contains("very-secret-value"));
        assert_ne!(c.next_plan(), c.next_plan());
    }

    #[test]
    fn media_requests_are_plain_gets_of_nos_urls() {
        let r = media_request("https://nim-nosdn.netease.im/MTAxMTAwMg==/bmltYV8x?e=1").unwrap();
        assert_eq!(r.url.host_str(), Some("nim-nosdn.netease.im"));
        assert!(r.headers.is_empty() && r.credentials.is_empty());
        for bad in [
            "ftp://nos.netease.com/a",
            "/nos/a/b",
            "",
            "javascript:alert(1)",
        ] {
            let err = media_request(bad).unwrap_err();
            assert!(!err.is_retryable(), "{bad}");
            assert!(err.to_string().contains("http(s)"), "{err}");
        }
    }
}
