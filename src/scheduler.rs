//! The scheduler: every enabled source on its cron schedule, for the daemon (`chatvault run`).
//!
//! It owns *when* a source runs; the engine (`sync.rs`) owns the run itself. Invariants:
//!
//! - **One run of a source at a time.** Each source has one loop; a tick that falls due while
//!   the source's previous run is still going (or still waiting for a concurrency slot) is
//!   skipped and counted (`Metrics::run_skipped`), never queued. Across daemons sharing a
//!   database the engine's advisory lock keeps the same promise: a run that finds the lock
//!   taken ends as `skipped` at once.
//! - **At most `max_concurrent_sources` runs at once**, over all sources (a semaphore).
//! - **Ticks are computed in UTC** from the source's `cron` expression (seconds first), each
//!   delayed by a random `0..jitter` so daemons and sources do not start in lockstep.
//! - **A failing source backs off**: after `n` consecutive failed runs the next run is not
//!   before `min(backoff_base * 2^(n-1), backoff_cap)` after the failure; one successful run
//!   resets it. Interrupted runs (shutdown) and runs skipped for another daemon's lock neither
//!   count as failures nor reset the count.
//! - **Shutdown**: once the shutdown watch turns true nothing new starts; running runs get the
//!   same watch and stop between pages (recorded `interrupted`). [`Scheduler::run`] returns
//!   when every run has ended; the caller bounds that wait.
//!
//! The next-run arithmetic ([`next_run`], [`backoff_delay`], [`parse_schedule`]) is pure and
//! tested here; the loops are tested against a real database and a fake upstream in
//! `tests/it/daemon.rs`. A snapshot of every source's state ([`SourceState`]) is shared through
//! [`Scheduler::state`] for the HTTP API.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cron::Schedule;
use rand::Rng;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::config::{Config, SourceConfig};
use crate::metrics::Metrics;
use crate::store::{RunStatus, Store};
use crate::sync::{self, SourceResult, SyncOptions};

/// A source's schedule is not a valid `cron` expression.
#[derive(Debug, thiserror::Error)]
#[error("source {source_name}: invalid cron schedule {expression:?}: {reason}")]
pub struct ScheduleError {
    pub source_name: String,
    pub expression: String,
    pub reason: String,
}

/// Parse a source's `schedule` (cron crate syntax, seconds first).
pub fn parse_schedule(source: &str, expression: &str) -> Result<Schedule, ScheduleError> {
    Schedule::from_str(expression).map_err(|e| ScheduleError {
        source_name: source.to_string(),
        expression: expression.to_string(),
        reason: e.to_string(),
    })
}

/// How long a source that failed `failures` times in a row waits at least after its last
/// failure: `min(base * 2^(failures-1), cap)`; zero when it has not failed.
pub fn backoff_delay(failures: u32, base: Duration, cap: Duration) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let factor = 2u32.saturating_pow(failures - 1);
    base.checked_mul(factor).unwrap_or(cap).min(cap)
}

/// When a source runs next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextRun {
    /// The cron tick this run belongs to.
    pub tick: DateTime<Utc>,
    /// The tick plus its jitter: when the run starts.
    pub at: DateTime<Utc>,
}

/// The first tick of `schedule` strictly after `after` and not before `not_before` (the end of
/// a backoff), delayed by `jitter`. `None` when the schedule has no more ticks.
pub fn next_run(
    schedule: &Schedule,
    after: DateTime<Utc>,
    not_before: Option<DateTime<Utc>>,
    jitter: Duration,
) -> Option<NextRun> {
    let mut tick = schedule.after(&after).next()?;
    if let Some(not_before) = not_before {
        if tick < not_before {
            // the first tick at or after `not_before`
            let just_before = not_before - chrono::Duration::nanoseconds(1);
            tick = schedule.after(&just_before).next()?;
        }
    }
    let jitter = chrono::Duration::from_std(jitter).unwrap_or(chrono::Duration::zero());
    Some(NextRun {
        tick,
        at: tick + jitter,
    })
}

/// The longest wait between two consecutive ticks among the next 64 of `schedule` after
/// `after` (a weekday schedule waits over the weekend): what "one schedule period" means to an
/// alert on a source without a successful run. `None` with fewer than two ticks left.
pub fn schedule_period(schedule: &Schedule, after: DateTime<Utc>) -> Option<Duration> {
    let ticks: Vec<DateTime<Utc>> = schedule.after(&after).take(64).collect();
    ticks
        .windows(2)
        .filter_map(|w| (w[1] - w[0]).to_std().ok())
        .max()
}

/// A random delay in `0..max` (zero when `max` is zero).
pub fn random_jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_millis(rand::thread_rng().gen_range(0..max.as_millis().max(1) as u64))
}

/// How the scheduler runs sources.
#[derive(Clone, Debug)]
pub struct SchedulerOptions {
    /// Runs at once, over all sources (at least 1).
    pub max_concurrent_sources: usize,
    /// Each tick is delayed by a random `0..jitter`.
    pub jitter: Duration,
    /// The first backoff after a failed run; it doubles per consecutive failure up to the cap.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// What each run is given.
    pub sync: SyncOptions,
    /// Attachments are fetched after each run of a source, beside its schedule (`None`:
    /// not fetched).
    pub attachments: Option<crate::attachments::fetcher::AttachmentsRun>,
}

impl SchedulerOptions {
    /// The daemon's options from the configuration: backoff 30 s doubling up to 30 min.
    pub fn from_config(config: &Config) -> SchedulerOptions {
        SchedulerOptions {
            max_concurrent_sources: config.sync.max_concurrent_sources.max(1),
            jitter: config.sync.schedule_jitter,
            backoff_base: Duration::from_secs(30),
            backoff_cap: Duration::from_secs(30 * 60),
            sync: SyncOptions {
                max_retries: config.sync.max_retries,
                session_dir: Some(sync::session_dir(&config.storage.data_dir)),
                heads: config
                    .integrity
                    .is_configured()
                    .then(|| Arc::new(config.integrity.clone())),
                ..SyncOptions::default()
            },
            attachments: None,
        }
    }
}

/// How a source's last run ended.
#[derive(Clone, Debug, Serialize)]
pub struct LastRun {
    pub run_id: Option<i64>,
    pub finished_at: DateTime<Utc>,
    /// `ok`, `failed`, `interrupted`, or `skipped` (another daemon holds the source's lock).
    pub status: String,
    pub duration_ms: u64,
    pub messages_new: u64,
    pub messages_changed: u64,
    pub error: Option<String>,
}

/// One source as the scheduler sees it (for status pages and the API).
#[derive(Clone, Debug, Default, Serialize)]
pub struct SourceState {
    pub schedule: String,
    /// When the next run starts (jitter and backoff included); `None` while stopping or
    /// when the schedule has no more ticks.
    pub next_run: Option<DateTime<Utc>>,
    /// A run is going (or waiting for a concurrency slot).
    pub running: bool,
    pub consecutive_failures: u32,
    /// Ticks skipped because the previous run was still going.
    pub skipped_ticks: u64,
    /// Runs finished since the daemon started (skipped ones included).
    pub runs: u64,
    /// Ticks that did not poll because the source's push channel was healthy.
    pub ticks_left_to_push: u64,
    pub last_run: Option<LastRun>,
}

/// Every source's state by name, shared with readers; never held across an `.await`.
pub type SharedState = Arc<RwLock<BTreeMap<String, SourceState>>>;

/// The per-source cron loops of one daemon.
pub struct Scheduler {
    store: Store,
    metrics: Arc<Metrics>,
    options: SchedulerOptions,
    jobs: Vec<(SourceConfig, Schedule)>,
    state: SharedState,
    push: Option<PushPolling>,
}

/// See [`Scheduler::with_push`].
#[derive(Clone, Debug)]
struct PushPolling {
    hub: crate::realtime::PushHub,
    factor: u32,
}

impl Scheduler {
    /// Poll less while a source's push channel in `hub` is healthy: only every
    /// `factor`-th tick runs (`[sync] push_poll_factor`); every tick while it is not.
    pub fn with_push(mut self, hub: crate::realtime::PushHub, factor: u32) -> Scheduler {
        self.push = Some(PushPolling {
            hub,
            factor: factor.max(1),
        });
        self
    }

    /// Schedule every enabled source of `sources`. Fails on the first invalid schedule.
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        sources: &[SourceConfig],
        options: SchedulerOptions,
    ) -> Result<Scheduler, ScheduleError> {
        let mut jobs = Vec::new();
        let mut state = BTreeMap::new();
        for source in sources.iter().filter(|s| s.enabled) {
            let schedule = parse_schedule(source.name.as_str(), &source.schedule)?;
            state.insert(
                source.name.as_str().to_string(),
                SourceState {
                    schedule: source.schedule.clone(),
                    ..SourceState::default()
                },
            );
            jobs.push((source.clone(), schedule));
        }
        Ok(Scheduler {
            store,
            metrics,
            options,
            jobs,
            state: Arc::new(RwLock::new(state)),
            push: None,
        })
    }

    /// The names of the scheduled (enabled) sources.
    pub fn sources(&self) -> Vec<&str> {
        self.jobs.iter().map(|(s, _)| s.name.as_str()).collect()
    }

    /// A handle on every source's state, updated as the scheduler goes.
    pub fn state(&self) -> SharedState {
        self.state.clone()
    }

    /// Run every source on its schedule until `shutdown` turns true, then wait for running
    /// runs to stop (between pages) and return. Dropping the future drops every run at once.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let limit = Arc::new(Semaphore::new(self.options.max_concurrent_sources.max(1)));
        let mut loops = JoinSet::new();
        for (source, schedule) in self.jobs {
            let job = SourceLoop {
                store: self.store.clone(),
                metrics: self.metrics.clone(),
                options: self.options.clone(),
                state: self.state.clone(),
                limit: limit.clone(),
                source,
                schedule,
                push: self.push.clone(),
            };
            loops.spawn(job.run(shutdown.clone()));
        }
        while let Some(joined) = loops.join_next().await {
            if let Err(e) = joined {
                if e.is_panic() {
                    warn!(error = %e, "a source's schedule loop panicked");
                }
            }
        }
    }
}

enum Event {
    Shutdown,
    Due,
    Finished(Option<SourceResult>),
}

type RunFuture = Pin<Box<dyn Future<Output = Option<SourceResult>> + Send>>;

struct SourceLoop {
    store: Store,
    metrics: Arc<Metrics>,
    options: SchedulerOptions,
    state: SharedState,
    limit: Arc<Semaphore>,
    source: SourceConfig,
    schedule: Schedule,
    push: Option<PushPolling>,
}

impl SourceLoop {
    fn update(&self, f: impl FnOnce(&mut SourceState)) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = state.get_mut(self.source.name.as_str()) {
            f(s);
        }
    }

    fn plan(&self, after: DateTime<Utc>, not_before: Option<DateTime<Utc>>) -> Option<NextRun> {
        let next = next_run(
            &self.schedule,
            after,
            not_before,
            random_jitter(self.options.jitter),
        );
        self.update(|s| s.next_run = next.map(|n| n.at));
        next
    }

    /// One run: wait for a concurrency slot (or shutdown), then sync. `None`: shut down
    /// before it started.
    fn start(&self, shutdown: watch::Receiver<bool>) -> RunFuture {
        let store = self.store.clone();
        let source = self.source.clone();
        let options = self.options.sync.clone();
        let limit = self.limit.clone();
        Box::pin(async move {
            let mut stop = shutdown.clone();
            let permit = tokio::select! {
                permit = limit.acquire_owned() => permit.ok()?,
                _ = stop.wait_for(|s| *s) => return None,
            };
            let result = sync::sync_source(&store, &source, &options, Some(shutdown)).await;
            drop(permit);
            Some(result)
        })
    }

    async fn run(self, shutdown: watch::Receiver<bool>) {
        let name = self.source.name.as_str().to_string();
        let mut stop = shutdown.clone();
        let mut next = self.plan(Utc::now(), None);
        let mut running: Option<RunFuture> = None;
        let mut failures: u32 = 0;
        // Ticks since the last poll while the push channel was healthy.
        let mut quiet_ticks: u32 = 0;
        // When the running poll was started.
        let mut poll_started = Utc::now();
        // The source's attachment fetch: started after a run, never two at once, never in
        // the way of the next run.
        let mut fetching: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let wait = next.map(|n| (n.at - Utc::now()).to_std().unwrap_or(Duration::ZERO));
            let due = async {
                match wait {
                    Some(wait) => tokio::time::sleep(wait).await,
                    None => std::future::pending().await,
                }
            };
            let run_done = async {
                match running.as_mut() {
                    Some(run) => run.await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                _ = stop.wait_for(|s| *s) => Event::Shutdown,
                _ = due => Event::Due,
                result = run_done => Event::Finished(result),
            };
            match event {
                Event::Shutdown => break,
                Event::Due => {
                    let tick = next.expect("only a planned run falls due").tick;
                    let quiet = self
                        .push
                        .as_ref()
                        .filter(|p| p.hub.poll_may_wait(&name))
                        .is_some_and(|p| quiet_ticks + 1 < p.factor);
                    if let Some(p) = &self.push {
                        // what "one schedule period" means to the alerts: longer while
                        // polling waits for the push channel
                        let period = schedule_period(&self.schedule, tick).map(|d| {
                            if quiet {
                                d * p.factor
                            } else {
                                d
                            }
                        });
                        self.metrics.source_scheduled(&name, period);
                    }
                    if quiet {
                        // the push channel brings changes; poll only every n-th tick
                        quiet_ticks += 1;
                        self.update(|s| s.ticks_left_to_push += 1);
                    } else if running.is_some() {
                        self.metrics.run_skipped(&name);
                        self.update(|s| s.skipped_ticks += 1);
                        info!(source = %name, %tick, "tick skipped: the previous run is still going");
                    } else {
                        quiet_ticks = 0;
                        poll_started = Utc::now();
                        running = Some(self.start(shutdown.clone()));
                        self.update(|s| s.running = true);
                    }
                    // the tick after this one; when that is past already (a long jitter, a
                    // suspended host), the next one from now
                    let now = Utc::now();
                    let late = self.schedule.after(&tick).next().is_some_and(|t| t < now);
                    next = self.plan(if late { now } else { tick }, None);
                }
                Event::Finished(result) => {
                    running = None;
                    let Some(result) = result else { continue };
                    if let Some(p) = &self.push {
                        if !result.skipped && result.status == crate::store::RunStatus::Ok {
                            let c = &result.counts;
                            let found_nothing = c.messages_new == 0 && c.messages_changed == 0;
                            p.hub.record_poll(&name, poll_started, found_nothing);
                        }
                    }
                    if !result.skipped && fetching.as_ref().is_none_or(|f| f.is_finished()) {
                        fetching = self.fetch_attachments(shutdown.clone());
                    }
                    let finished = Utc::now();
                    failures = self.finished(&result, failures, finished);
                    if failures > 0 {
                        let wait = backoff_delay(
                            failures,
                            self.options.backoff_base,
                            self.options.backoff_cap,
                        );
                        let not_before = finished
                            + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX);
                        next = self.plan(finished, Some(not_before));
                        warn!(
                            source = %name,
                            failures,
                            backoff_seconds = wait.as_secs(),
                            next = ?next.map(|n| n.at),
                            "run failed, backing off"
                        );
                    }
                }
            }
        }
        self.update(|s| s.next_run = None);
        // a download in flight is dropped with its staged file; the next start cleans up
        if let Some(fetch) = fetching {
            fetch.abort();
        }
        // let the running run stop between pages
        if let Some(run) = running {
            if let Some(result) = run.await {
                self.finished(&result, failures, Utc::now());
            }
        }
    }

    /// Start fetching the source's attachments in the background, if configured.
    fn fetch_attachments(
        &self,
        shutdown: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let attachments = self.options.attachments.clone()?;
        let store = self.store.clone();
        let source = self.source.clone();
        Some(tokio::spawn(async move {
            // fetch_source logs its outcome once
            let _ = attachments
                .fetch(&store, &source, None, Some(shutdown))
                .await;
        }))
    }

    /// Record a finished run; returns the consecutive failures after it.
    fn finished(&self, result: &SourceResult, failures: u32, at: DateTime<Utc>) -> u32 {
        self.metrics.record_run(result);
        let failures = if result.skipped {
            failures
        } else {
            match result.status {
                RunStatus::Failed => failures.saturating_add(1),
                RunStatus::Ok => 0,
                RunStatus::Interrupted | RunStatus::Running => failures,
            }
        };
        let status = if result.skipped {
            "skipped"
        } else {
            result.status.as_str()
        };
        info!(
            source = %result.source,
            status,
            duration_ms = result.duration.as_millis() as u64,
            messages_new = result.counts.messages_new,
            messages_changed = result.counts.messages_changed,
            error = result.error.as_deref().unwrap_or(""),
            "run finished"
        );
        self.update(|s| {
            s.running = false;
            s.runs += 1;
            s.consecutive_failures = failures;
            s.last_run = Some(LastRun {
                run_id: result.run_id,
                finished_at: at,
                status: status.to_string(),
                duration_ms: result.duration.as_millis() as u64,
                messages_new: result.counts.messages_new,
                messages_changed: result.counts.messages_changed,
                error: result.error.clone(),
            });
        });
        failures
    }
}

/// Fill each status's `next_run_at` from the configured schedules (disabled sources have none).
/// Fill in each status's next run from the running scheduler's own state: jitter and
/// backoff included, as the scheduler will really start it.
pub fn fill_next_runs_from(statuses: &mut [crate::store::SourceStatus], state: &SharedState) {
    let state = state.read().unwrap_or_else(|e| e.into_inner());
    for status in statuses {
        if let Some(s) = state.get(&status.source) {
            status.next_run_at = s.next_run;
        }
    }
}

/// Fill in each status's next run from the configured schedule alone, for a process that
/// runs no scheduler (the CLI): the next cron tick, without backoff.
pub fn fill_next_runs(
    statuses: &mut [crate::store::SourceStatus],
    sources: &[SourceConfig],
    now: DateTime<Utc>,
) {
    for status in statuses {
        let Some(source) = sources.iter().find(|c| c.name.as_str() == status.source) else {
            continue;
        };
        if source.enabled {
            status.next_run_at = parse_schedule(&status.source, &source.schedule)
                .ok()
                .and_then(|schedule| schedule.after(&now).next());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_period_is_the_longest_gap_between_ticks() {
        let at = DateTime::parse_from_rfc3339("2026-01-05T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let every_5_min = parse_schedule("s", "0 */5 * * * *").unwrap();
        assert_eq!(
            schedule_period(&every_5_min, at),
            Some(Duration::from_secs(300))
        );
        let weekdays = parse_schedule("s", "0 0 9 * * Mon-Fri").unwrap();
        assert_eq!(
            schedule_period(&weekdays, at),
            Some(Duration::from_secs(3 * 86400))
        );
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_bad_expression_is_an_error_naming_the_source() {
        let err = parse_schedule("acme", "every 5 minutes").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("source acme: invalid cron schedule"),
            "{text}"
        );
        assert!(text.contains("every 5 minutes"), "{text}");
        assert!(parse_schedule("acme", "0 0 0 * * Mox").is_err());
        assert!(parse_schedule("acme", "").is_err());
    }

    #[test]
    fn ticks_follow_the_cron_expression_in_utc() {
        let every_5_min = parse_schedule("s", "0 */5 * * * *").unwrap();
        let next = next_run(
            &every_5_min,
            at("2026-01-01T10:02:30Z"),
            None,
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(next.tick, at("2026-01-01T10:05:00Z"));
        assert_eq!(next.at, next.tick);
        // strictly after: a tick is not repeated
        let next = next_run(
            &every_5_min,
            at("2026-01-01T10:05:00Z"),
            None,
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(next.tick, at("2026-01-01T10:10:00Z"));
        let daily = parse_schedule("s", "0 30 2 * * *").unwrap();
        let next = next_run(
            &daily,
            at("2026-01-01T23:00:00+08:00"),
            None,
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(next.tick, at("2026-01-02T02:30:00Z"));
    }

    #[test]
    fn jitter_delays_the_start_not_the_tick() {
        let every_second = parse_schedule("s", "* * * * * *").unwrap();
        let next = next_run(
            &every_second,
            at("2026-01-01T00:00:00Z"),
            None,
            Duration::from_millis(1500),
        )
        .unwrap();
        assert_eq!(next.tick, at("2026-01-01T00:00:01Z"));
        assert_eq!(next.at, at("2026-01-01T00:00:02.5Z"));
        for _ in 0..100 {
            assert!(random_jitter(Duration::from_secs(5)) < Duration::from_secs(5));
        }
        assert_eq!(random_jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn backoff_doubles_per_failure_up_to_the_cap() {
        let base = Duration::from_secs(30);
        let cap = Duration::from_secs(1800);
        let delays: Vec<u64> = (0..9)
            .map(|n| backoff_delay(n, base, cap).as_secs())
            .collect();
        assert_eq!(delays, [0, 30, 60, 120, 240, 480, 960, 1800, 1800]);
        assert_eq!(backoff_delay(u32::MAX, base, cap), cap);
    }

    #[test]
    fn a_backoff_moves_the_next_run_to_the_first_tick_after_it() {
        let every_10s = parse_schedule("s", "*/10 * * * * *").unwrap();
        let failed = at("2026-01-01T00:00:03Z");
        let not_before = failed + chrono::Duration::seconds(60);
        let next = next_run(&every_10s, failed, Some(not_before), Duration::ZERO).unwrap();
        assert_eq!(next.tick, at("2026-01-01T00:01:10Z"));
        // a tick exactly at the end of the backoff is allowed
        let not_before = at("2026-01-01T00:01:00Z");
        let next = next_run(&every_10s, failed, Some(not_before), Duration::ZERO).unwrap();
        assert_eq!(next.tick, at("2026-01-01T00:01:00Z"));
        // a backoff already over changes nothing
        let next = next_run(
            &every_10s,
            failed,
            Some(at("2025-01-01T00:00:00Z")),
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(next.tick, at("2026-01-01T00:00:10Z"));
    }

    #[test]
    fn a_schedule_without_more_ticks_has_no_next_run() {
        let once = parse_schedule("s", "0 0 0 1 1 * 2020").unwrap();
        assert_eq!(
            next_run(&once, at("2026-01-01T00:00:00Z"), None, Duration::ZERO),
            None
        );
    }
}
