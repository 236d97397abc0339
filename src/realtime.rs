//! The daemon's side of push channels (see [`crate::push`]): per source, a listener task
//! that keeps the connector's push channel open (reconnecting with capped backoff), and an
//! applier task that turns the signals into targeted runs.
//!
//! - **A push is a trigger, never data.** Signals are coalesced (a short debounce per
//!   source, duplicates merged) into one targeted run reading only the conversations named
//!   ([`SyncOptions::only`]), through the same fetch, diff, event and index path as a
//!   scheduled run, under the same source lock, recorded in `archive.sync_runs` with
//!   `trigger = 'push'`.
//! - **Nothing is lost.** A signal that arrives during a run waits for the next targeted
//!   run; a run that finds the source locked (a scheduled run is going) or fails is tried
//!   again a few times; after that, polling reads the conversation anyway.
//! - **Polling is the safety net.** The scheduler keeps polling, every
//!   `[sync] push_poll_factor`-th tick while the channel is healthy and has been up since
//!   the last poll began ([`PushHub::poll_may_wait`]), every tick otherwise.
//! - **Bounded.** Reconnects back off from 1 s doubling to 5 min; one channel failing never
//!   stops the daemon or another source.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::SourceConfig;
use crate::connector::{Connector, ConnectorError};
use crate::metrics::Metrics;
use crate::push::{PushKind, PushSignal, PushSink, PushState, PushStatus};
use crate::store::{RunStatus, Store};
use crate::sync::{self, SyncOptions};

/// Signals waiting per source; beyond this a signal is dropped (polling reads it).
pub const QUEUE: usize = 4096;
/// How long the applier waits for more signals before a targeted run.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// A channel fed by upstream's own requests (Yunxin's message copies) counts as healthy
/// while its last verified push is younger than this, or while the last poll found
/// nothing the copies had not brought already.
pub const PASSIVE_HEALTHY_FOR: Duration = Duration::from_secs(30 * 60);
/// How often the daemon records the channels' state for `chatvault status`.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);
/// Reconnect backoff: the first wait and the cap.
pub const RECONNECT_BASE: Duration = Duration::from_secs(1);
pub const RECONNECT_CAP: Duration = Duration::from_secs(300);
/// Attempts of a targeted run for the same signals (skipped for the lock, failed, or a
/// pushed message not served yet) before they are left to polling.
pub const RUN_ATTEMPTS: u32 = 6;
/// The first wait before a targeted run is repeated; it doubles per attempt.
pub const RETRY_BASE: Duration = Duration::from_millis(250);

/// One source's push channel as the daemon keeps it.
#[derive(Clone, Debug)]
struct Channel {
    sink: PushSink,
    /// Fed by upstream's requests to the daemon, not by a connection the daemon holds.
    passive: bool,
    /// The lag of the last targeted run's changes, in seconds.
    last_lag: Arc<Mutex<Option<f64>>>,
    /// The last scheduled poll of the source that succeeded.
    last_poll: Arc<Mutex<Option<Poll>>>,
}

/// A scheduled poll as the channel's health sees it.
#[derive(Clone, Copy, Debug)]
struct Poll {
    started_at: DateTime<Utc>,
    /// It found no new or changed message: pushes had brought everything.
    found_nothing: bool,
}

/// Every source's push channel: the sinks connectors and the Yunxin hook send to, the
/// health the scheduler and the status read. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct PushHub {
    channels: Arc<BTreeMap<String, Channel>>,
}

/// What the hub hands to each source's applier.
pub struct Receivers(pub BTreeMap<String, mpsc::Receiver<PushSignal>>);

impl PushHub {
    /// A channel for every enabled source in `sources`; Yunxin sources' channels are
    /// passive (fed by the message-copy hook).
    pub fn new(sources: &[SourceConfig]) -> (PushHub, Receivers) {
        let mut channels = BTreeMap::new();
        let mut receivers = BTreeMap::new();
        for source in sources.iter().filter(|s| s.enabled && s.push) {
            let (tx, rx) = mpsc::channel(QUEUE);
            let name = source.name.as_str().to_string();
            channels.insert(
                name.clone(),
                Channel {
                    sink: PushSink::new(tx, Arc::default()),
                    passive: matches!(source.platform, crate::config::PlatformConfig::Yunxin(_)),
                    last_lag: Arc::default(),
                    last_poll: Arc::default(),
                },
            );
            receivers.insert(name, rx);
        }
        (
            PushHub {
                channels: Arc::new(channels),
            },
            Receivers(receivers),
        )
    }

    /// Where `source`'s pushes go (`None`: not an enabled source).
    pub fn sink(&self, source: &str) -> Option<PushSink> {
        self.channels.get(source).map(|c| c.sink.clone())
    }

    /// Whether `source`'s push channel is connected and healthy, so polling may be reduced.
    pub fn healthy(&self, source: &str) -> bool {
        self.channels
            .get(source)
            .is_some_and(|c| healthy(c, &c.sink.state()))
    }

    /// Whether `source`'s scheduled tick may leave polling to the push channel: it is
    /// healthy and has been up since before the last poll began, so nothing happened while
    /// it was down that no poll has read since.
    pub fn poll_may_wait(&self, source: &str) -> bool {
        let Some(channel) = self.channels.get(source) else {
            return false;
        };
        let state = channel.sink.state();
        let poll = *channel.last_poll.lock().unwrap_or_else(|e| e.into_inner());
        healthy(channel, &state)
            && matches!((state.since, poll), (Some(since), Some(p)) if since <= p.started_at)
    }

    /// A scheduled poll of `source` that began at `started_at` succeeded; `found_nothing`:
    /// it archived no new or changed message.
    pub fn record_poll(&self, source: &str, started_at: DateTime<Utc>, found_nothing: bool) {
        if let Some(channel) = self.channels.get(source) {
            *channel.last_poll.lock().unwrap_or_else(|e| e.into_inner()) = Some(Poll {
                started_at,
                found_nothing,
            });
        }
    }

    /// `source`'s channel state, once it ever connected or received a push.
    pub fn status(&self, source: &str) -> Option<PushStatus> {
        let channel = self.channels.get(source)?;
        let state = channel.sink.state();
        if state.since.is_none() && state.pushes == 0 {
            return None;
        }
        Some(PushStatus {
            healthy: healthy(channel, &state),
            lag_seconds: *channel.last_lag.lock().unwrap_or_else(|e| e.into_inner()),
            state,
        })
    }

    /// Every channel that ever connected or received a push, with its state.
    pub fn statuses(&self) -> Vec<(String, PushStatus)> {
        self.channels
            .keys()
            .filter_map(|name| Some((name.clone(), self.status(name)?)))
            .collect()
    }

    /// Bring the `chatvault_push_*` metrics up to date.
    pub fn refresh_metrics(&self, metrics: &Metrics) {
        for (name, channel) in self.channels.iter() {
            let state = channel.sink.state();
            if state.since.is_none() && state.pushes == 0 {
                continue;
            }
            metrics.set_push_state(name, &state, healthy(channel, &state));
        }
    }

    fn record_lag(&self, source: &str, lag: Option<Duration>) {
        if let (Some(channel), Some(lag)) = (self.channels.get(source), lag) {
            *channel.last_lag.lock().unwrap_or_else(|e| e.into_inner()) = Some(lag.as_secs_f64());
        }
    }
}

fn healthy(channel: &Channel, state: &PushState) -> bool {
    if !state.connected {
        return false;
    }
    if !channel.passive {
        return true;
    }
    // Upstream calls in only when something happens: a quiet app sends nothing, so a copy
    // received lately, or a poll since that found nothing the copies had not brought,
    // shows the channel works.
    let Some(last_push) = state.last_push_at else {
        return false;
    };
    let recent = (Utc::now() - last_push)
        .to_std()
        .map_or(true, |age| age < PASSIVE_HEALTHY_FOR);
    let poll = *channel.last_poll.lock().unwrap_or_else(|e| e.into_inner());
    recent || poll.is_some_and(|p| p.found_nothing)
}

/// Makes the connector whose `listen` a listener drives (a fresh one per connection).
pub type ListenerFactory =
    Arc<dyn Fn(&SourceConfig) -> anyhow::Result<Box<dyn Connector>> + Send + Sync>;

/// The daemon's factory: the source's own connector.
pub fn connector_factory(session_dir: Option<std::path::PathBuf>) -> ListenerFactory {
    Arc::new(move |source: &SourceConfig| {
        let http = crate::connector::http::HttpClient::new(
            source.requests_per_second,
            source.request_timeout,
        )?;
        crate::connector::build(source, http, session_dir.as_deref())
    })
}

/// The wait before reconnect number `attempt` (from 1): doubling from
/// [`RECONNECT_BASE`] up to [`RECONNECT_CAP`].
pub fn reconnect_delay(attempt: u32, base: Duration, cap: Duration) -> Duration {
    crate::scheduler::backoff_delay(attempt.max(1), base, cap)
}

/// Whether `error` is the default answer of a connector without a push channel.
fn no_push_channel(error: &ConnectorError) -> bool {
    matches!(error, ConnectorError::Permanent(why) if why.ends_with("no push channel"))
}

/// Keep `source`'s push channel open until `shutdown`: `listen`, and when it returns,
/// reconnect after a backoff that resets once a connection came up. Returns at once for a
/// connector without a push channel.
pub async fn listen(
    source: SourceConfig,
    factory: ListenerFactory,
    sink: PushSink,
    base: Duration,
    cap: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let name = source.name.as_str().to_string();
    let mut failures: u32 = 0;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let outcome = match factory(&source) {
            Ok(connector) => {
                tokio::select! {
                    r = connector.listen(sink.clone()) => Some(r),
                    _ = shutdown.wait_for(|s| *s) => None,
                }
            }
            Err(e) => Some(Err(ConnectorError::Permanent(format!("{e:#}")))),
        };
        let Some(outcome) = outcome else {
            sink.disconnected("the daemon is stopping");
            return;
        };
        let came_up = sink.state().connected;
        let why = match outcome {
            // A connector without a channel of its own never opened one: whatever state
            // the sink has (a Yunxin copy may have arrived meanwhile) is not this task's.
            Err(e) if no_push_channel(&e) => {
                info!(source = %name, "no push channel: polling only");
                return;
            }
            Ok(()) => "the connection closed".to_string(),
            Err(e) => e.to_string(),
        };
        sink.disconnected(&why);
        failures = if came_up {
            1
        } else {
            failures.saturating_add(1)
        };
        let wait = reconnect_delay(failures, base, cap);
        let wait = wait + sync_jitter(wait);
        warn!(source = %name, error = %why, retry_in_ms = wait.as_millis() as u64, "push channel down, reconnecting");
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// Up to a tenth of `wait`, so channels of several sources do not reconnect in lockstep.
fn sync_jitter(wait: Duration) -> Duration {
    crate::scheduler::random_jitter(wait / 10)
}

/// Signals waiting for a targeted run: per conversation, the earliest upstream time, and
/// the new messages pushes named (the run is repeated until they are archived: upstream
/// may serve a message a moment after it pushed it).
#[derive(Debug, Default)]
struct Pending {
    conversations: BTreeMap<String, Option<DateTime<Utc>>>,
    messages: std::collections::BTreeSet<(String, String)>,
    /// Per conversation, the messages pushes named as edited, recalled, deleted or reacted
    /// to (read again by connectors without a change feed).
    changed: BTreeMap<String, std::collections::BTreeSet<String>>,
    /// The newest upstream time a signal named.
    latest: Option<DateTime<Utc>>,
    attempts: u32,
}

impl Pending {
    fn add(&mut self, signal: PushSignal) {
        match (signal.kind, &signal.message_id) {
            (PushKind::NewMessage, Some(id)) => {
                self.messages
                    .insert((signal.conversation_id.clone(), id.clone()));
            }
            (
                PushKind::Edit | PushKind::Recall | PushKind::Delete | PushKind::Reaction,
                Some(id),
            ) => {
                self.changed
                    .entry(signal.conversation_id.clone())
                    .or_default()
                    .insert(id.clone());
            }
            _ => {}
        }
        self.latest = self.latest.max(signal.upstream_at);
        let at = self
            .conversations
            .entry(signal.conversation_id)
            .or_insert(signal.upstream_at);
        *at = match (*at, signal.upstream_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
}

/// What a targeted run reports to the daemon.
#[derive(Clone, Debug)]
pub struct Applied {
    pub conversations: Vec<String>,
    pub status: RunStatus,
    pub skipped: bool,
    /// The largest lag from an upstream change to the end of this run.
    pub lag: Option<Duration>,
}

/// Answer `source`'s signals with targeted runs until `shutdown` (or the channel closes).
/// `applied` (tests) is told about every run.
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    store: Store,
    source: SourceConfig,
    options: SyncOptions,
    hub: PushHub,
    metrics: Option<Arc<Metrics>>,
    mut signals: mpsc::Receiver<PushSignal>,
    mut shutdown: watch::Receiver<bool>,
    applied: Option<mpsc::UnboundedSender<Applied>>,
) {
    let name = source.name.as_str().to_string();
    if let Some(channel) = hub.channels.get(&name).filter(|c| c.passive) {
        // Copies posted before this process started show the copy URL is set up: a quiet
        // app must not be polled on every tick until its next copy.
        match store
            .last_run_started(&source.name, crate::store::RunTrigger::Push)
            .await
        {
            Ok(Some(at)) => channel.sink.pushed_before(at),
            Ok(None) => {}
            Err(e) => warn!(source = %name, error = %e, "cannot read when copies last came"),
        }
    }
    let mut pending = Pending::default();
    loop {
        if pending.conversations.is_empty() {
            let signal = tokio::select! {
                s = signals.recv() => s,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let Some(signal) = signal else { return };
            pending.add(signal);
        }
        // the debounce: what arrives meanwhile joins this run
        tokio::select! {
            _ = tokio::time::sleep(DEBOUNCE) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        while let Ok(signal) = signals.try_recv() {
            pending.add(signal);
        }
        // a change upstream serves only a moment after it happened: read it then, not
        // before (a read too early finds nothing and is repeated)
        if let Some(wait) = read_wait(&source, pending.latest, Utc::now()) {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            while let Ok(signal) = signals.try_recv() {
                pending.add(signal);
            }
        }
        let ids: Vec<String> = pending.conversations.keys().cloned().collect();
        let started = Instant::now();
        let result = sync::sync_source(
            &store,
            &source,
            &SyncOptions {
                only: Some(ids.clone()),
                changed: pending
                    .changed
                    .iter()
                    .map(|(c, ids)| (c.clone(), ids.iter().cloned().collect()))
                    .collect(),
                ..options.clone()
            },
            Some(shutdown.clone()),
        )
        .await;
        let now = Utc::now();
        let mut done = !result.skipped && result.status == RunStatus::Ok;
        if done && !pending.messages.is_empty() {
            // a pushed message upstream did not serve yet: read its conversation again
            let wanted: Vec<(String, String)> = pending.messages.iter().cloned().collect();
            match store.held_messages(&source.name, &wanted).await {
                Ok(held) => {
                    let missing: Vec<(String, String)> =
                        wanted.into_iter().filter(|m| !held.contains(m)).collect();
                    if !missing.is_empty() {
                        done = false;
                        pending
                            .conversations
                            .retain(|c, _| missing.iter().any(|(mc, _)| mc == c));
                        pending.changed.clear();
                        pending.messages = missing.into_iter().collect();
                    }
                }
                Err(e) => warn!(source = %name, error = %e, "cannot check the pushed messages"),
            }
        }
        let lags: Vec<Duration> = if done {
            pending
                .conversations
                .values()
                .flatten()
                .filter_map(|at| (now - *at).to_std().ok())
                .collect()
        } else {
            Vec::new()
        };
        let lag = lags.iter().max().copied();
        if done {
            hub.record_lag(&name, lag);
        }
        if let Some(metrics) = &metrics {
            if !result.skipped {
                metrics.record_run(&result);
                metrics.push_run(&name, &lags);
            }
        }
        info!(
            source = %name,
            conversations = ids.len(),
            status = result.status.as_str(),
            skipped = result.skipped,
            new = result.counts.messages_new,
            changed = result.counts.messages_changed,
            seconds = started.elapsed().as_secs_f64(),
            "targeted run for pushes"
        );
        if let Some(applied) = &applied {
            let _ = applied.send(Applied {
                conversations: ids,
                status: result.status,
                skipped: result.skipped,
                lag,
            });
        }
        if done || result.status == RunStatus::Interrupted || *shutdown.borrow() {
            pending = Pending::default();
            continue;
        }
        pending.attempts += 1;
        if pending.attempts >= RUN_ATTEMPTS {
            warn!(source = %name, error = ?result.error, "targeted runs kept failing: left to polling");
            pending = Pending::default();
            continue;
        }
        // locked by a scheduled run, or failed: again after a while, with what came since
        let wait = reconnect_delay(pending.attempts, RETRY_BASE, RECONNECT_CAP);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

/// The longest a targeted run waits for a change to become readable.
const MAX_READ_WAIT: Duration = Duration::from_secs(5);

/// How long to wait, at `now`, before reading a change made upstream at `latest`: the
/// platform's read lag (Yunxin's reads stop a second before now) less the time passed.
fn read_wait(
    source: &SourceConfig,
    latest: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Option<Duration> {
    let lag = match source.platform {
        crate::config::PlatformConfig::Yunxin(_) => crate::connector::yunxin::READ_LAG,
        _ => return None,
    };
    let ready = latest? + chrono::Duration::from_std(lag).ok()?;
    let wait = (ready - now).to_std().ok()?;
    Some(wait.min(MAX_READ_WAIT))
}

/// Start, for every enabled source, its listener and its applier (tasks that end at
/// `shutdown`). `factory` makes the connectors whose push channels are listened on.
pub fn start(
    store: &Store,
    sources: &[SourceConfig],
    options: &SyncOptions,
    metrics: Option<Arc<Metrics>>,
    factory: ListenerFactory,
    shutdown: watch::Receiver<bool>,
) -> (PushHub, tokio::task::JoinSet<()>) {
    let (hub, Receivers(mut receivers)) = PushHub::new(sources);
    let mut tasks = tokio::task::JoinSet::new();
    for source in sources.iter().filter(|s| s.enabled) {
        let name = source.name.as_str();
        let (Some(channel), Some(rx)) = (hub.channels.get(name), receivers.remove(name)) else {
            continue;
        };
        // a passive channel is fed by upstream's requests to the daemon: nothing to open
        if !channel.passive {
            tasks.spawn(listen(
                source.clone(),
                factory.clone(),
                channel.sink.clone(),
                RECONNECT_BASE,
                RECONNECT_CAP,
                shutdown.clone(),
            ));
        }
        tasks.spawn(apply(
            store.clone(),
            source.clone(),
            options.clone(),
            hub.clone(),
            metrics.clone(),
            rx,
            shutdown.clone(),
            None,
        ));
    }
    tasks.spawn(report(store.clone(), hub.clone(), REPORT_EVERY, shutdown));
    (hub, tasks)
}

/// Record the channels' state in the archive every `every` until `shutdown`, then once
/// more as down (`chatvault status` reads it from another process).
pub async fn report(
    store: Store,
    hub: PushHub,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = store.report_push_states(&hub.statuses(), Utc::now()).await {
            warn!(error = %e, "cannot record the push channels' state");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    let stopped: Vec<(String, PushStatus)> = hub
        .statuses()
        .into_iter()
        .map(|(name, mut s)| {
            if s.state.connected {
                s.state.connected = false;
                s.state.since = Some(Utc::now());
                s.state.last_error = Some("the daemon stopped".into());
            }
            s.healthy = false;
            (name, s)
        })
        .collect();
    if let Err(e) = store.report_push_states(&stopped, Utc::now()).await {
        warn!(error = %e, "cannot record the push channels' state");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::push::PushKind;

    fn signal(id: &str, at: Option<i64>) -> PushSignal {
        PushSignal {
            conversation_id: id.into(),
            kind: PushKind::NewMessage,
            message_id: None,
            upstream_at: at.and_then(|s| DateTime::from_timestamp(s, 0)),
        }
    }

    /// A hub with one source `s` whose channel state is `state`.
    fn hub_with(passive: bool, state: PushState) -> PushHub {
        let (tx, _rx) = mpsc::channel(1);
        let channel = Channel {
            sink: PushSink::new(tx, Arc::new(Mutex::new(state))),
            passive,
            last_lag: Arc::default(),
            last_poll: Arc::default(),
        };
        PushHub {
            channels: Arc::new([("s".to_string(), channel)].into()),
        }
    }

    fn ago(minutes: i64) -> DateTime<Utc> {
        Utc::now() - chrono::Duration::minutes(minutes)
    }

    #[test]
    fn polling_waits_only_for_a_channel_up_since_the_last_poll_began() {
        let hub = hub_with(
            false,
            PushState {
                connected: true,
                since: Some(ago(10)),
                ..PushState::default()
            },
        );
        assert!(hub.healthy("s"));
        assert!(!hub.poll_may_wait("s"), "never polled yet");
        hub.record_poll("s", ago(20), true);
        assert!(!hub.poll_may_wait("s"), "came up after that poll began");
        hub.record_poll("s", ago(5), false);
        assert!(hub.poll_may_wait("s"), "up since before the last poll");
        hub.channels["s"].sink.disconnected("dropped");
        assert!(!hub.poll_may_wait("s"));
        hub.channels["s"].sink.connected();
        assert!(!hub.poll_may_wait("s"), "reconnected after the last poll");
        assert!(!hub.poll_may_wait("other"));
    }

    #[test]
    fn a_copy_channel_is_healthy_after_a_recent_copy_or_a_poll_that_found_nothing() {
        let up = |last_copy: Option<i64>| PushState {
            connected: true,
            since: Some(ago(600)),
            last_push_at: last_copy.map(ago),
            pushes: u64::from(last_copy.is_some()),
            ..PushState::default()
        };
        assert!(
            hub_with(true, up(Some(5))).healthy("s"),
            "a copy 5 minutes ago"
        );
        let old = hub_with(true, up(Some(120)));
        assert!(!old.healthy("s"), "the last copy 2 hours ago, never polled");
        old.record_poll("s", ago(1), false);
        assert!(!old.healthy("s"), "the poll found what no copy announced");
        old.record_poll("s", ago(1), true);
        assert!(old.healthy("s"), "the poll found nothing new");
        assert!(old.poll_may_wait("s"));
        let never = hub_with(true, up(None));
        never.record_poll("s", ago(1), true);
        assert!(!never.healthy("s"), "no copy was ever accepted");
    }

    fn yunxin_source() -> SourceConfig {
        use crate::config::{PlatformConfig, Secret, YunxinConfig};
        SourceConfig {
            name: crate::model::SourceName::new("yx"),
            schedule: "0 */5 * * * *".into(),
            requests_per_second: 1.0,
            request_timeout: Duration::from_secs(5),
            enabled: true,
            push: true,
            platform: PlatformConfig::Yunxin(YunxinConfig {
                base_url: "http://127.0.0.1:9".into(),
                app_key: "k".into(),
                app_secret: Secret::new("s"),
                accounts: vec!["a".into()],
                history_start: None,
                rescan_days: 7,
            }),
        }
    }

    #[tokio::test]
    async fn a_connector_without_a_channel_leaves_the_copy_channel_as_copies_made_it() {
        let (tx, _rx) = mpsc::channel(1);
        let sink = PushSink::new(tx, Arc::default());
        // a copy came in before the listener heard its connector has no channel
        sink.connected();
        let factory: ListenerFactory =
            Arc::new(|_: &SourceConfig| Err(anyhow::anyhow!("yunxin: no push channel")));
        let (_stop, shutdown) = watch::channel(false);
        let ms = Duration::from_millis(1);
        tokio::time::timeout(
            Duration::from_secs(5),
            listen(yunxin_source(), factory, sink.clone(), ms, ms, shutdown),
        )
        .await
        .expect("the listener ends at once");
        let state = sink.state();
        assert!(state.connected, "{state:?}");
        assert_eq!(state.reconnects, 0);
        assert_eq!(state.last_error, None);
    }

    #[test]
    fn a_yunxin_change_is_read_once_its_reads_can_return_it() {
        use crate::config::{PlatformConfig, Secret, YunhuConfig};
        let yunxin = yunxin_source();
        let now = Utc::now();
        let ms = chrono::Duration::milliseconds;
        assert_eq!(
            read_wait(&yunxin, Some(now - ms(300)), now),
            Some(Duration::from_millis(700))
        );
        assert_eq!(read_wait(&yunxin, Some(now - ms(1500)), now), None);
        assert_eq!(read_wait(&yunxin, None, now), None);
        assert_eq!(
            read_wait(&yunxin, Some(now + ms(3_600_000)), now),
            Some(MAX_READ_WAIT),
            "a clock far ahead upstream waits no longer than the cap"
        );
        let yunhu = SourceConfig {
            platform: PlatformConfig::Yunhu(YunhuConfig {
                base_url: "http://127.0.0.1:9".into(),
                token: Secret::new("t"),
                rescan_messages: 0,
                rescan_days: 0,
                rescan_every_minutes: 0,
                ws_url: "ws://127.0.0.1:9".into(),
            }),
            ..yunxin.clone()
        };
        assert_eq!(read_wait(&yunhu, Some(now), now), None);
    }

    #[test]
    fn pending_signals_keep_new_and_changed_messages_apart() {
        let mut p = Pending::default();
        for (kind, id) in [
            (PushKind::NewMessage, "n1"),
            (PushKind::Edit, "e1"),
            (PushKind::Recall, "r1"),
            (PushKind::Reaction, "e1"),
            (PushKind::Other, "o1"),
        ] {
            p.add(PushSignal {
                message_id: Some(id.into()),
                kind,
                ..signal("a", None)
            });
        }
        p.add(PushSignal {
            kind: PushKind::Edit,
            ..signal("b", None)
        });
        assert_eq!(
            p.messages.iter().collect::<Vec<_>>(),
            [&("a".to_string(), "n1".to_string())]
        );
        assert_eq!(
            p.changed.len(),
            1,
            "an edit without a message id names none"
        );
        assert_eq!(
            p.changed["a"]
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["e1", "r1"]
        );
        assert_eq!(p.conversations.len(), 2);
    }

    #[test]
    fn pending_signals_merge_per_conversation_keeping_the_earliest_time() {
        let mut p = Pending::default();
        p.add(signal("a", Some(20)));
        p.add(signal("a", Some(10)));
        p.add(signal("a", None));
        p.add(signal("b", None));
        assert_eq!(p.conversations.len(), 2);
        assert_eq!(p.conversations["a"], DateTime::from_timestamp(10, 0));
        assert_eq!(p.conversations["b"], None);
    }

    #[test]
    fn reconnects_back_off_up_to_the_cap() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(300);
        assert_eq!(reconnect_delay(1, base, cap), base);
        assert_eq!(reconnect_delay(3, base, cap), Duration::from_secs(4));
        assert_eq!(reconnect_delay(40, base, cap), cap);
    }

    #[test]
    fn only_the_default_answer_means_no_push_channel() {
        assert!(no_push_channel(&ConnectorError::Permanent(
            "yunxin: no push channel".into()
        )));
        assert!(!no_push_channel(&ConnectorError::Permanent(
            "login refused".into()
        )));
    }
}
