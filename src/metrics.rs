//! Prometheus metrics: every chatvault metric is named `chatvault_*`.
//!
//! Each [`Metrics`] owns a [`prometheus::Registry`] of its own (never the crate's global one,
//! so tests can hold several), rendered by the crate's encoder in the Prometheus text
//! exposition format 0.0.4. Three kinds of numbers live here:
//! - run metrics, counted by the daemon as runs end ([`Metrics::record_run`],
//!   [`Metrics::run_skipped`]), and restarts of the embedded PostgreSQL server
//!   ([`Metrics::embedded_postgres_restarted`]);
//! - archive gauges (events, messages, quarantine per source), set from the store's status at
//!   scrape time ([`Metrics::set_archive_status`]), so they are right before the first run and
//!   agree with `chatvault status`;
//! - the index's lag behind each chain ([`Metrics::set_index_lag`]) and the last `chatvault
//!   verify` of each source ([`Metrics::set_verify_results`]), set at scrape time too;
//! - process metrics (`chatvault_process_*`), read from `/proc/self` at render time by the
//!   crate's process collector (Linux only).
//!
//! Invariants: a family is rendered once it has a sample; the archive gauges are replaced as a
//! whole, never seen half-replaced by a scrape; `chatvault_database_up` is absent until the
//! first status read; a run skipped for the lock is counted but not timed.
//!
//! A new metric is a field, one `register` line in [`Metrics::new`] and a method that moves it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::core::Collector;
use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tracing::warn;

use crate::store::{RunStatus, SourceStatus, VerifyResult};
use crate::sync::SourceResult;

/// Upper bounds (seconds) of the run duration histogram's buckets; `+Inf` is implied.
pub const RUN_DURATION_BUCKETS: [f64; 12] = [
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The daemon's metrics registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// By source and outcome.
    runs: IntCounterVec,
    runs_skipped: IntCounterVec,
    messages_new: IntCounterVec,
    messages_changed: IntCounterVec,
    requests: IntCounterVec,
    request_failures: IntCounterVec,
    retries: IntCounterVec,
    rate_limit_waits: IntCounterVec,
    run_duration: HistogramVec,
    last_success: GaugeVec,
    events: IntGaugeVec,
    messages: IntGaugeVec,
    quarantine: IntGaugeVec,
    consecutive_failures: IntGaugeVec,
    index_lag: IntGaugeVec,
    verify_ok: IntGaugeVec,
    verify_time: GaugeVec,
    schedule_period: GaugeVec,
    /// Without labels: it has no sample, so is not rendered, until the first status read.
    database_up: IntGaugeVec,
    /// Without labels: rendered only in a process that watches an embedded server.
    embedded_postgres_restarts: IntCounterVec,
    /// Chain heads handed to `[integrity] heads_file`/`heads_command` after a run, and the
    /// times that failed (by source).
    heads_published: IntCounterVec,
    heads_publish_failures: IntCounterVec,
    /// Attachment downloads by source and outcome, bytes downloaded, attachments by status,
    /// and the download queue.
    attachment_downloads: IntCounterVec,
    attachment_bytes: IntCounterVec,
    attachments: IntGaugeVec,
    attachment_queue: IntGaugeVec,
    /// Push channels (`crate::realtime`): connection state, reconnects, signals received,
    /// targeted runs, and the lag from an upstream change to its archived row.
    push_connected: IntGaugeVec,
    push_reconnects: IntCounterVec,
    push_signals: IntCounterVec,
    push_runs: IntCounterVec,
    push_lag: HistogramVec,
    /// Held while the archive gauges are replaced and while the registry is gathered.
    archive: Mutex<()>,
}

/// The `outcome` label of `chatvault_sync_runs_total`.
fn outcome(result: &SourceResult) -> &'static str {
    if result.skipped {
        return "skipped_locked";
    }
    match result.status {
        RunStatus::Ok => "ok",
        RunStatus::Interrupted => "interrupted",
        // a finished run is never `running`; count it as what it is to the operator
        RunStatus::Failed | RunStatus::Running => "failed",
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Registers `collector` with `registry` and hands it back.
///
/// Panics on an invalid name or one registered twice: a mistake in [`Metrics::new`] that every
/// test creating a [`Metrics`] shows.
fn register<C: Collector + Clone + 'static>(
    registry: &Registry,
    collector: prometheus::Result<C>,
) -> C {
    let collector = collector.expect("metric names, labels and buckets are valid");
    registry
        .register(Box::new(collector.clone()))
        .expect("every metric is registered once");
    collector
}

/// A counter labelled by `source`.
fn source_counter(name: &str, help: &str) -> prometheus::Result<IntCounterVec> {
    IntCounterVec::new(Opts::new(name, help), &["source"])
}

/// A gauge labelled by `source`.
fn source_gauge(name: &str, help: &str) -> prometheus::Result<IntGaugeVec> {
    IntGaugeVec::new(Opts::new(name, help), &["source"])
}

impl Metrics {
    /// A registry of its own with every metric, and on Linux the process metrics, which the
    /// collector's namespace names `chatvault_process_*`.
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let r = &registry;
        #[cfg(target_os = "linux")]
        if let Ok(pid) = prometheus::process_collector::pid_t::try_from(std::process::id()) {
            use prometheus::process_collector::ProcessCollector;
            r.register(Box::new(ProcessCollector::new(pid, "chatvault")))
                .expect("the process metrics are registered once");
        }
        let metrics = Metrics {
            runs: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "chatvault_sync_runs_total",
                        "Sync runs that ended, by source and outcome (ok, failed, interrupted, skipped_locked).",
                    ),
                    &["source", "outcome"],
                ),
            ),
            runs_skipped: register(
                r,
                source_counter(
                    "chatvault_runs_skipped_total",
                    "Scheduled runs skipped because the previous run of the source was still going.",
                ),
            ),
            messages_new: register(
                r,
                source_counter(
                    "chatvault_messages_new_total",
                    "Messages archived for the first time.",
                ),
            ),
            messages_changed: register(
                r,
                source_counter(
                    "chatvault_messages_changed_total",
                    "Archived messages that changed (edited, recalled, deleted, reactions).",
                ),
            ),
            requests: register(
                r,
                source_counter(
                    "chatvault_upstream_requests_total",
                    "Requests sent to the upstream chat server.",
                ),
            ),
            request_failures: register(
                r,
                source_counter(
                    "chatvault_upstream_request_failures_total",
                    "Upstream requests that failed in transport (timeouts, dropped connections).",
                ),
            ),
            retries: register(
                r,
                source_counter(
                    "chatvault_upstream_retries_total",
                    "Upstream requests retried after a transient failure.",
                ),
            ),
            rate_limit_waits: register(
                r,
                source_counter(
                    "chatvault_rate_limit_waits_total",
                    "Times a sync waited because the upstream rate-limited it.",
                ),
            ),
            run_duration: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "chatvault_sync_run_duration_seconds",
                        "How long sync runs took.",
                    )
                    .buckets(RUN_DURATION_BUCKETS.to_vec()),
                    &["source"],
                ),
            ),
            last_success: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "chatvault_last_success_timestamp_seconds",
                        "When the last successful sync run of the source ended, as a Unix timestamp.",
                    ),
                    &["source"],
                ),
            ),
            events: register(
                r,
                source_gauge(
                    "chatvault_events",
                    "Events in the source's hash chain (the sequence number of its head).",
                ),
            ),
            messages: register(
                r,
                source_gauge("chatvault_messages", "Messages archived for the source."),
            ),
            quarantine: register(
                r,
                source_gauge(
                    "chatvault_quarantine_records",
                    "Upstream records kept in quarantine because they could not be archived.",
                ),
            ),
            consecutive_failures: register(
                r,
                source_gauge(
                    "chatvault_source_consecutive_failures",
                    "Failed sync runs of the source since its last successful one.",
                ),
            ),
            index_lag: register(
                r,
                source_gauge(
                    "chatvault_index_lag_events",
                    "Events of the source's hash chain the search index has not applied yet.",
                ),
            ),
            verify_ok: register(
                r,
                source_gauge(
                    "chatvault_verify_ok",
                    "Whether the last `chatvault verify` found the source's chain and versions intact (1) or not (0).",
                ),
            ),
            verify_time: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "chatvault_verify_timestamp_seconds",
                        "When the last `chatvault verify` checked the source, as a Unix timestamp.",
                    ),
                    &["source"],
                ),
            ),
            push_connected: register(
                r,
                source_gauge(
                    "chatvault_push_connected",
                    "Whether the source's push channel is connected and healthy (1) or not (0).",
                ),
            ),
            push_reconnects: register(
                r,
                source_counter(
                    "chatvault_push_reconnects_total",
                    "Times the source's push channel connected again after it dropped.",
                ),
            ),
            push_signals: register(
                r,
                source_counter(
                    "chatvault_push_signals_total",
                    "Pushes received on the source's push channel.",
                ),
            ),
            push_runs: register(
                r,
                source_counter(
                    "chatvault_push_runs_total",
                    "Targeted runs answering pushes (each reads only the conversations pushed).",
                ),
            ),
            push_lag: register(
                r,
                HistogramVec::new(
                    prometheus::HistogramOpts::new(
                        "chatvault_push_lag_seconds",
                        "From the change upstream (as the push dates it) to the end of the targeted run that archived it.",
                    )
                    .buckets(vec![0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0]),
                    &["source"],
                ),
            ),
            schedule_period: register(
                r,
                GaugeVec::new(
                    Opts::new(
                        "chatvault_schedule_period_seconds",
                        "The longest wait between two scheduled runs of the source (set by the daemon).",
                    ),
                    &["source"],
                ),
            ),
            database_up: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "chatvault_database_up",
                        "Whether the last read of the archive for these metrics worked (1) or not (0).",
                    ),
                    &[],
                ),
            ),
            embedded_postgres_restarts: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "chatvault_embedded_postgres_restarts_total",
                        "Times the embedded PostgreSQL server died and the daemon started it again.",
                    ),
                    &[],
                ),
            ),
            heads_published: register(
                r,
                source_counter(
                    "chatvault_heads_published_total",
                    "Runs after which the chain heads were handed to every configured [integrity] target.",
                ),
            ),
            heads_publish_failures: register(
                r,
                source_counter(
                    "chatvault_heads_publish_failures_total",
                    "Runs after which writing the chain heads to heads_file or heads_command failed (the sync itself is not failed).",
                ),
            ),
            attachment_downloads: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "chatvault_attachment_downloads_total",
                        "Attachment downloads that ended, by source and outcome (stored, failed, gone, too_large).",
                    ),
                    &["source", "outcome"],
                ),
            ),
            attachment_bytes: register(
                r,
                source_counter(
                    "chatvault_attachment_bytes_total",
                    "Bytes of attachments downloaded.",
                ),
            ),
            attachments: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "chatvault_attachments",
                        "Attachments archived messages reference, by source and status (pending, stored, failed, too_large, gone, skipped).",
                    ),
                    &["source", "status"],
                ),
            ),
            attachment_queue: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "chatvault_attachment_queue",
                        "Attachments due for download, by source.",
                    ),
                    &["source"],
                ),
            ),
            archive: Mutex::new(()),
            registry,
        };
        Arc::new(metrics)
    }

    /// Serialises replacing the archive gauges with gathering them.
    fn archive_lock(&self) -> MutexGuard<'_, ()> {
        // the lock guards no data: a panic while it was held leaves nothing inconsistent
        self.archive.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Record the end of one source's run.
    pub fn record_run(&self, result: &SourceResult) {
        let source = result.source.as_str();
        self.runs
            .with_label_values(&[source, outcome(result)])
            .inc();
        let counts = [
            (&self.messages_new, result.counts.messages_new),
            (&self.messages_changed, result.counts.messages_changed),
            (&self.requests, result.counts.requests),
            (&self.request_failures, result.failed_requests),
            (&self.retries, result.counts.retries),
            (&self.rate_limit_waits, result.rate_limit_waits),
        ];
        for (counter, n) in counts {
            counter.with_label_values(&[source]).inc_by(n);
        }
        match result.heads_published {
            Some(true) => self.heads_published.with_label_values(&[source]).inc(),
            Some(false) => self
                .heads_publish_failures
                .with_label_values(&[source])
                .inc(),
            None => {}
        }
        if result.skipped {
            // nothing ran: its duration would only drag the histogram towards zero
            return;
        }
        self.run_duration
            .with_label_values(&[source])
            .observe(result.duration.as_secs_f64());
        if result.status == RunStatus::Ok {
            self.last_success
                .with_label_values(&[source])
                .set(unix_now());
        }
    }

    /// One attachment download ended with `outcome` (stored, failed, gone, too_large).
    pub fn attachment_downloaded(&self, source: &str, outcome: &str) {
        self.attachment_downloads
            .with_label_values(&[source, outcome])
            .inc();
    }

    /// `bytes` of attachments were downloaded for `source`.
    pub fn attachment_bytes(&self, source: &str, bytes: u64) {
        self.attachment_bytes
            .with_label_values(&[source])
            .inc_by(bytes);
    }

    /// Replace the attachment gauges: counts by `(source, status)` and the queue by source.
    pub fn set_attachment_status(
        &self,
        counts: &std::collections::BTreeMap<(String, String), i64>,
        queue: &std::collections::BTreeMap<String, i64>,
    ) {
        let _guard = self.archive_lock();
        self.attachments.reset();
        for ((source, status), n) in counts {
            self.attachments
                .with_label_values(&[source.as_str(), status.as_str()])
                .set(*n);
        }
        self.attachment_queue.reset();
        for (source, n) in queue {
            self.attachment_queue
                .with_label_values(&[source.as_str()])
                .set(*n);
        }
    }

    /// A scheduled run was skipped because the previous one was still going.
    pub fn run_skipped(&self, source: &str) {
        self.runs_skipped.with_label_values(&[source]).inc();
    }

    /// Bring the push gauges and counters up to a push channel's `state` (the counts in
    /// it only grow); `healthy`: connected and recently heard from.
    pub fn set_push_state(&self, source: &str, state: &crate::push::PushState, healthy: bool) {
        self.push_connected
            .with_label_values(&[source])
            .set(i64::from(healthy));
        for (counter, value) in [
            (&self.push_reconnects, state.reconnects),
            (&self.push_signals, state.pushes),
        ] {
            let counter = counter.with_label_values(&[source]);
            let seen = counter.get();
            if value > seen {
                counter.inc_by(value - seen);
            }
        }
    }

    /// A targeted run answering pushes ended; `lags`: how long after each change upstream
    /// it was archived.
    pub fn push_run(&self, source: &str, lags: &[std::time::Duration]) {
        self.push_runs.with_label_values(&[source]).inc();
        let histogram = self.push_lag.with_label_values(&[source]);
        for lag in lags {
            histogram.observe(lag.as_secs_f64());
        }
    }

    /// This process uses an embedded PostgreSQL server: its restarts are counted from 0.
    pub fn embedded_postgres_watched(&self) {
        self.embedded_postgres_restarts
            .with_label_values::<&str>(&[])
            .inc_by(0);
    }

    /// The embedded PostgreSQL server died and this process started it again.
    pub fn embedded_postgres_restarted(&self) {
        self.embedded_postgres_restarts
            .with_label_values::<&str>(&[])
            .inc();
    }

    /// Replace the archive gauges with `status` (what [`crate::store::Store::status`]
    /// returns): a source gone from it is gone from the gauges.
    pub fn set_archive_status(&self, status: &[SourceStatus]) {
        let _archive = self.archive_lock();
        let gauges = [
            &self.events,
            &self.messages,
            &self.quarantine,
            &self.consecutive_failures,
        ];
        for gauge in gauges {
            gauge.reset();
        }
        for s in status {
            let source = [s.source.as_str()];
            self.events.with_label_values(&source).set(s.events);
            self.messages.with_label_values(&source).set(s.messages);
            self.quarantine.with_label_values(&source).set(s.quarantine);
            self.consecutive_failures
                .with_label_values(&source)
                .set(s.failures_in_a_row);
            // known from the archive after a restart too, before this process's first run
            if let Some(at) = s.last_success_at {
                let gauge = self.last_success.with_label_values(&source);
                let at = at.timestamp_millis() as f64 / 1000.0;
                if at > gauge.get() {
                    gauge.set(at);
                }
            }
        }
        self.database_up.with_label_values::<&str>(&[]).set(1);
    }

    /// The daemon schedules `source` with at most `period` between two runs: its skipped
    /// runs are counted from 0 from now on (so `increase()` sees the first one).
    pub fn source_scheduled(&self, source: &str, period: Option<std::time::Duration>) {
        self.runs_skipped.with_label_values(&[source]).inc_by(0);
        if let Some(period) = period {
            self.schedule_period
                .with_label_values(&[source])
                .set(period.as_secs_f64());
        }
    }

    /// Replace the index lag gauges: per source, the events of its chain (`head`) less those
    /// the index has applied (`watermark`), never below zero.
    pub fn set_index_lag<'a>(&self, lags: impl IntoIterator<Item = (&'a str, i64, i64)>) {
        let _archive = self.archive_lock();
        self.index_lag.reset();
        for (source, head, watermark) in lags {
            self.index_lag
                .with_label_values(&[source])
                .set((head - watermark).max(0));
        }
    }

    /// Replace the verification gauges with the last `chatvault verify` of each source.
    pub fn set_verify_results(&self, results: &[VerifyResult]) {
        let _archive = self.archive_lock();
        self.verify_ok.reset();
        self.verify_time.reset();
        for r in results {
            let source = [r.source.as_str()];
            self.verify_ok
                .with_label_values(&source)
                .set(i64::from(r.ok));
            self.verify_time
                .with_label_values(&source)
                .set(r.checked_at.timestamp_millis() as f64 / 1000.0);
        }
    }

    /// Note that the store could not be read: `chatvault_database_up` turns 0 and the archive
    /// gauges keep their last values.
    pub fn set_database_down(&self) {
        let _archive = self.archive_lock();
        self.database_up.with_label_values::<&str>(&[]).set(0);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let families = {
            let _archive = self.archive_lock();
            self.registry.gather()
        };
        let mut text = String::new();
        // fails only on a family without samples, which gathering leaves out
        if let Err(err) = TextEncoder::new().encode_utf8(&families, &mut text) {
            warn!(error = %err, "metrics: rendering failed");
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};
    use std::time::Duration;

    use super::*;
    use crate::model::SourceName;
    use crate::store::RunCounts;

    /// One parsed sample line.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Sample {
        pub name: String,
        pub labels: BTreeMap<String, String>,
        pub value: f64,
    }

    /// Parses the text format strictly: HELP and TYPE once per family and before its
    /// samples, every sample `name{labels} value` of an announced family. Panics otherwise.
    pub fn parse(text: &str) -> Vec<Sample> {
        let mut helped = HashSet::new();
        let mut types: BTreeMap<String, String> = BTreeMap::new();
        let mut seen_samples = HashSet::new();
        let mut samples = Vec::new();
        assert!(text.ends_with('\n'), "the exposition ends with a newline");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').expect("HELP has a name and text");
                assert!(helped.insert(name.to_owned()), "HELP twice for {name}");
                assert!(!seen_samples.contains(name), "HELP after samples: {name}");
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a name and kind");
                assert!(helped.contains(name), "TYPE before HELP: {name}");
                assert!(
                    ["counter", "gauge", "histogram"].contains(&kind),
                    "type {kind}"
                );
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "TYPE twice for {name}"
                );
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment: {line}");
            let sample = parse_sample(line);
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = sample.name.strip_suffix(suffix)?;
                    (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
                })
                .unwrap_or(&sample.name)
                .to_owned();
            assert!(
                types.contains_key(&family),
                "sample before its TYPE: {line}"
            );
            assert!(
                family.starts_with("chatvault_"),
                "named chatvault_*: {line}"
            );
            seen_samples.insert(family);
            samples.push(sample);
        }
        samples
    }

    fn parse_sample(line: &str) -> Sample {
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                (name, parse_labels(body, line))
            }
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line}"
        );
        Sample {
            name: name.to_owned(),
            labels,
            value,
        }
    }

    fn parse_labels(body: &str, line: &str) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        let mut chars = body.chars().peekable();
        while chars.peek().is_some() {
            let name: String = chars.by_ref().take_while(|&c| c != '=').collect();
            assert!(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "bad label name in {line}"
            );
            assert_eq!(chars.next(), Some('"'), "label value is quoted in {line}");
            let mut value = String::new();
            loop {
                match chars.next().expect("label value is closed") {
                    '"' => break,
                    '\\' => match chars.next() {
                        Some('\\') => value.push('\\'),
                        Some('"') => value.push('"'),
                        Some('n') => value.push('\n'),
                        other => panic!("bad escape {other:?} in {line}"),
                    },
                    '\n' => panic!("raw newline in {line}"),
                    c => value.push(c),
                }
            }
            assert!(
                labels.insert(name, value).is_none(),
                "label twice in {line}"
            );
            match chars.next() {
                None => break,
                Some(',') => {}
                Some(c) => panic!("unexpected {c:?} in {line}"),
            }
        }
        labels
    }

    /// The value of the sample `name` whose labels include `labels`.
    pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    fn result(source: &str, status: RunStatus, seconds: f64) -> SourceResult {
        SourceResult {
            source: SourceName::new(source),
            run_id: Some(1),
            status,
            counts: RunCounts {
                messages_new: 10,
                messages_changed: 2,
                requests: 7,
                retries: 1,
            },
            conversations: 3,
            failed_conversations: Vec::new(),
            error: None,
            skipped: false,
            rate_limit_waits: 4,
            failed_requests: 5,
            duration: Duration::from_secs_f64(seconds),
            heads_published: None,
        }
    }

    fn status(source: &str, events: i64, messages: i64, quarantine: i64) -> SourceStatus {
        SourceStatus {
            source: source.to_owned(),
            platform: "tangsengdaodao".to_owned(),
            conversations: 1,
            messages,
            versions: messages,
            events,
            reactions: 0,
            quarantine,
            gaps: 0,
            chain_head: format!("{events}:00"),
            cursors: 1,
            last_run: None,
            last_success_at: None,
            lag_seconds: None,
            newest_message_at: None,
            failures_in_a_row: 0,
            next_run_at: None,
            push: None,
        }
    }

    /// Runs of every outcome, skips (one for a source name that needs escaping) and two
    /// archive statuses, the second without the source `gone`, then a failed status read.
    fn scenario() -> Arc<Metrics> {
        let metrics = Metrics::new();
        metrics.record_run(&result("a", RunStatus::Ok, 2.0));
        metrics.record_run(&result("a", RunStatus::Failed, 0.05));
        metrics.record_run(&result("b", RunStatus::Interrupted, 45.0));
        metrics.record_run(&result("a", RunStatus::Ok, 4000.0));
        let mut skipped = result("c", RunStatus::Ok, 0.0);
        skipped.skipped = true;
        skipped.counts = RunCounts::default();
        skipped.rate_limit_waits = 0;
        skipped.failed_requests = 0;
        metrics.record_run(&skipped);
        metrics.run_skipped("a");
        metrics.run_skipped("b");
        metrics.run_skipped("we\"ird\\source\nname");
        metrics.set_archive_status(&[
            status("a", 5, 3, 1),
            status("b", 0, 0, 0),
            status("gone", 9, 9, 9),
        ]);
        metrics.set_archive_status(&[status("a", 6, 3, 1), status("b", 2, 1, 0)]);
        metrics.set_database_down();
        metrics
    }

    /// `# HELP` and `# TYPE` by family name.
    fn families(text: &str) -> BTreeMap<String, (String, String)> {
        let mut families: BTreeMap<String, (String, String)> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                families.entry(name.to_owned()).or_default().1 = help.to_owned();
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                families.entry(name.to_owned()).or_default().0 = kind.to_owned();
            }
        }
        families
    }

    #[test]
    fn an_empty_registry_renders_valid_text() {
        let samples = parse(&Metrics::new().render());
        assert!(samples
            .iter()
            .all(|s| s.name.starts_with("chatvault_process_")));
    }

    #[test]
    fn counters_move_after_record_run() {
        let metrics = Metrics::new();
        metrics.record_run(&result("a", RunStatus::Ok, 2.0));
        metrics.record_run(&result("a", RunStatus::Failed, 0.05));
        metrics.run_skipped("a");
        let samples = parse(&metrics.render());
        let v = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);
        let a = [("source", "a")];
        assert_eq!(
            v(
                "chatvault_sync_runs_total",
                &[("source", "a"), ("outcome", "ok")]
            ),
            Some(1.0)
        );
        assert_eq!(
            v(
                "chatvault_sync_runs_total",
                &[("source", "a"), ("outcome", "failed")]
            ),
            Some(1.0)
        );
        assert_eq!(v("chatvault_messages_new_total", &a), Some(20.0));
        assert_eq!(v("chatvault_messages_changed_total", &a), Some(4.0));
        assert_eq!(v("chatvault_upstream_requests_total", &a), Some(14.0));
        assert_eq!(
            v("chatvault_upstream_request_failures_total", &a),
            Some(10.0)
        );
        assert_eq!(v("chatvault_upstream_retries_total", &a), Some(2.0));
        assert_eq!(v("chatvault_rate_limit_waits_total", &a), Some(8.0));
        assert_eq!(v("chatvault_runs_skipped_total", &a), Some(1.0));
        assert_eq!(
            v("chatvault_sync_run_duration_seconds_count", &a),
            Some(2.0)
        );
        let sum = v("chatvault_sync_run_duration_seconds_sum", &a).unwrap();
        assert!((sum - 2.05).abs() < 1e-9, "{sum}");
        assert_eq!(
            v(
                "chatvault_sync_run_duration_seconds_bucket",
                &[("source", "a"), ("le", "0.1")]
            ),
            Some(1.0)
        );
        assert_eq!(
            v(
                "chatvault_sync_run_duration_seconds_bucket",
                &[("source", "a"), ("le", "5")]
            ),
            Some(2.0)
        );
        let last = v("chatvault_last_success_timestamp_seconds", &a).unwrap();
        assert!((last - unix_now()).abs() < 60.0, "{last}");
    }

    #[test]
    fn a_run_skipped_for_the_lock_counts_as_skipped_locked_without_a_duration() {
        let metrics = Metrics::new();
        let mut skipped = result("a", RunStatus::Ok, 0.0);
        skipped.skipped = true;
        skipped.counts = RunCounts::default();
        metrics.record_run(&skipped);
        metrics.record_run(&result("b", RunStatus::Interrupted, 1.0));
        let samples = parse(&metrics.render());
        let runs = |source, outcome| {
            value(
                &samples,
                "chatvault_sync_runs_total",
                &[("source", source), ("outcome", outcome)],
            )
        };
        assert_eq!(runs("a", "skipped_locked"), Some(1.0));
        assert_eq!(runs("a", "ok"), None);
        assert_eq!(runs("b", "interrupted"), Some(1.0));
        assert_eq!(
            value(
                &samples,
                "chatvault_sync_run_duration_seconds_count",
                &[("source", "a")]
            ),
            None
        );
        assert_eq!(
            value(
                &samples,
                "chatvault_last_success_timestamp_seconds",
                &[("source", "a")]
            ),
            None
        );
        assert_eq!(
            value(
                &samples,
                "chatvault_last_success_timestamp_seconds",
                &[("source", "b")]
            ),
            None
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_inf_equal_to_count() {
        let metrics = Metrics::new();
        for seconds in [0.01, 0.3, 0.3, 7.0, 45.0, 4000.0, 1e9] {
            metrics.record_run(&result("s", RunStatus::Ok, seconds));
        }
        let samples = parse(&metrics.render());
        let buckets: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.name == "chatvault_sync_run_duration_seconds_bucket")
            .collect();
        assert_eq!(buckets.len(), RUN_DURATION_BUCKETS.len() + 1);
        let mut last_le = f64::NEG_INFINITY;
        let mut last_count = 0.0;
        for bucket in &buckets {
            let le = match bucket.labels["le"].as_str() {
                "+Inf" => f64::INFINITY,
                le => le.parse().unwrap(),
            };
            assert!(le > last_le, "buckets are in increasing order");
            assert!(bucket.value >= last_count, "buckets are cumulative");
            last_le = le;
            last_count = bucket.value;
        }
        assert_eq!(buckets.last().unwrap().labels["le"], "+Inf");
        let count = value(
            &samples,
            "chatvault_sync_run_duration_seconds_count",
            &[("source", "s")],
        );
        assert_eq!(Some(last_count), count);
        assert_eq!(count, Some(7.0));
        let at = |le| {
            value(
                &samples,
                "chatvault_sync_run_duration_seconds_bucket",
                &[("le", le)],
            )
        };
        assert_eq!(at("0.1"), Some(1.0));
        assert_eq!(at("0.5"), Some(3.0));
        assert_eq!(at("3600"), Some(5.0));
    }

    #[test]
    fn label_values_are_escaped() {
        let metrics = Metrics::new();
        let nasty = "we\"ird\\source\nname} 1";
        metrics.run_skipped(nasty);
        let text = metrics.render();
        assert!(
            text.contains(r#"chatvault_runs_skipped_total{source="we\"ird\\source\nname} 1"} 1"#)
        );
        let samples = parse(&text);
        assert_eq!(
            value(
                &samples,
                "chatvault_runs_skipped_total",
                &[("source", nasty)]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn archive_gauges_follow_the_last_status_and_database_up_reports_failures() {
        let metrics = Metrics::new();
        metrics.set_archive_status(&[status("a", 5, 3, 1), status("b", 0, 0, 0)]);
        let samples = parse(&metrics.render());
        assert_eq!(
            value(&samples, "chatvault_events", &[("source", "a")]),
            Some(5.0)
        );
        assert_eq!(
            value(&samples, "chatvault_messages", &[("source", "a")]),
            Some(3.0)
        );
        assert_eq!(
            value(&samples, "chatvault_quarantine_records", &[("source", "a")]),
            Some(1.0)
        );
        assert_eq!(
            value(&samples, "chatvault_events", &[("source", "b")]),
            Some(0.0)
        );
        assert_eq!(value(&samples, "chatvault_database_up", &[]), Some(1.0));

        // a source gone from the status is gone from the gauges
        metrics.set_archive_status(&[status("a", 6, 3, 1)]);
        metrics.set_database_down();
        let samples = parse(&metrics.render());
        assert_eq!(
            value(&samples, "chatvault_events", &[("source", "b")]),
            None
        );
        assert_eq!(
            value(&samples, "chatvault_events", &[("source", "a")]),
            Some(6.0)
        );
        assert_eq!(value(&samples, "chatvault_database_up", &[]), Some(0.0));
    }

    #[test]
    fn failures_index_lag_and_verify_results_are_gauges_per_source() {
        let metrics = Metrics::new();
        let checked_at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let mut failing = status("a", 5, 3, 0);
        failing.failures_in_a_row = 4;
        failing.last_success_at = Some(checked_at);
        metrics.set_archive_status(&[failing, status("b", 1, 1, 0)]);
        metrics.set_index_lag([("a", 10, 7), ("b", 3, 5)]);
        metrics.set_verify_results(&[
            VerifyResult {
                source: "a".into(),
                checked_at,
                ok: false,
                events: 5,
                failures: 2,
            },
            VerifyResult {
                source: "b".into(),
                checked_at,
                ok: true,
                events: 1,
                failures: 0,
            },
        ]);
        let samples = parse(&metrics.render());
        let v = |name, source| value(&samples, name, &[("source", source)]);
        assert_eq!(v("chatvault_source_consecutive_failures", "a"), Some(4.0));
        assert_eq!(v("chatvault_source_consecutive_failures", "b"), Some(0.0));
        // the last success the archive knows, before this process ran anything
        assert_eq!(
            v("chatvault_last_success_timestamp_seconds", "a"),
            Some(1_700_000_000.0)
        );
        assert_eq!(v("chatvault_last_success_timestamp_seconds", "b"), None);
        assert_eq!(v("chatvault_index_lag_events", "a"), Some(3.0));
        assert_eq!(
            v("chatvault_index_lag_events", "b"),
            Some(0.0),
            "never below zero"
        );
        assert_eq!(v("chatvault_verify_ok", "a"), Some(0.0));
        assert_eq!(v("chatvault_verify_ok", "b"), Some(1.0));
        assert_eq!(
            v("chatvault_verify_timestamp_seconds", "b"),
            Some(1_700_000_000.0)
        );

        // a source gone from the index's view is gone from the lag
        metrics.set_index_lag([("a", 10, 10)]);
        let samples = parse(&metrics.render());
        assert_eq!(
            value(&samples, "chatvault_index_lag_events", &[("source", "b")]),
            None
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_metrics_are_read_on_linux() {
        let samples = parse(&Metrics::new().render());
        for name in [
            "chatvault_process_cpu_seconds_total",
            "chatvault_process_resident_memory_bytes",
            "chatvault_process_start_time_seconds",
            "chatvault_process_open_fds",
        ] {
            let v = value(&samples, name, &[]).unwrap_or_else(|| panic!("{name} missing"));
            assert!(v >= 0.0, "{name} = {v}");
        }
        let rss = value(&samples, "chatvault_process_resident_memory_bytes", &[]).unwrap();
        assert!(rss > 1e6, "rss {rss}");
        let start = value(&samples, "chatvault_process_start_time_seconds", &[]).unwrap();
        assert!(start <= unix_now() + 1.0 && start > unix_now() - 86400.0 * 365.0);
    }

    /// What the hand-written renderer this module had before the `prometheus` crate wrote for
    /// [`scenario`], verbatim (its process values are those of the process that recorded it).
    const RECORDED_BEFORE_THE_CRATE: &str =
        include_str!("../tests/data/metrics_hand_rendered.prom");

    #[test]
    fn the_exposition_has_the_samples_recorded_before_the_crate() {
        let before = RECORDED_BEFORE_THE_CRATE;
        let after = scenario().render();
        let is_process = |name: &str| name.starts_with("chatvault_process_");

        // the same families, each with the same type and help; process ones at least
        let (families_before, families_after) = (families(before), families(&after));
        for (name, family) in &families_before {
            if is_process(name) {
                assert_eq!(
                    families_after.get(name).map(|f| &f.0),
                    Some(&family.0),
                    "{name}"
                );
            } else {
                assert_eq!(families_after.get(name), Some(family), "{name}");
            }
        }
        let added: Vec<&String> = families_after
            .keys()
            .filter(|name| !families_before.contains_key(*name))
            .collect();
        // families added since then: the process ones and those listed here
        let added_since = ["chatvault_source_consecutive_failures"];
        assert!(
            added
                .iter()
                .all(|name| is_process(name) || added_since.contains(&name.as_str())),
            "{added:?}"
        );

        // the same samples with the same labels and values, but for the time of the last
        // success and the process's own numbers
        let comparable = |text: &str| {
            let mut samples: Vec<(String, BTreeMap<String, String>, String)> = parse(text)
                .into_iter()
                .filter(|s| !is_process(&s.name))
                .filter(|s| s.name != "chatvault_source_consecutive_failures")
                .map(|s| {
                    let value = if s.name == "chatvault_last_success_timestamp_seconds" {
                        "when it was rendered".to_owned()
                    } else {
                        s.value.to_string()
                    };
                    (s.name, s.labels, value)
                })
                .collect();
            samples.sort();
            samples
        };
        assert_eq!(comparable(before), comparable(&after));
        let samples = parse(&after);
        let last = value(&samples, "chatvault_last_success_timestamp_seconds", &[]).unwrap();
        assert!((last - unix_now()).abs() < 60.0, "{last}");
    }

    #[test]
    fn each_metrics_has_a_registry_of_its_own() {
        let (one, other) = (Metrics::new(), Metrics::new());
        one.run_skipped("a");
        one.set_archive_status(&[status("a", 1, 1, 0)]);
        let samples = parse(&other.render());
        assert_eq!(
            value(&samples, "chatvault_runs_skipped_total", &[("source", "a")]),
            None
        );
        assert_eq!(
            value(&samples, "chatvault_events", &[("source", "a")]),
            None
        );
        assert_eq!(value(&samples, "chatvault_database_up", &[]), None);
    }

    #[test]
    fn embedded_postgres_restarts_are_counted_once_watched() {
        let metrics = Metrics::new();
        let restarts = |m: &Metrics| {
            value(
                &parse(&m.render()),
                "chatvault_embedded_postgres_restarts_total",
                &[],
            )
        };
        assert_eq!(restarts(&metrics), None, "no embedded server, no counter");
        metrics.embedded_postgres_watched();
        assert_eq!(restarts(&metrics), Some(0.0));
        metrics.embedded_postgres_restarted();
        metrics.embedded_postgres_restarted();
        assert_eq!(restarts(&metrics), Some(2.0));
    }
}
