//! Prometheus metrics: every chatvault metric is named `chatvault_*`.
//!
//! A small registry of our own, rendered in the Prometheus text exposition format 0.0.4.
//! Three kinds of numbers live here:
//! - run metrics, counted by the daemon as runs end ([`Metrics::record_run`],
//!   [`Metrics::run_skipped`]), and restarts of the embedded PostgreSQL server
//!   ([`Metrics::embedded_postgres_restarted`]);
//! - archive gauges (events, messages, quarantine per source), read from the store at scrape
//!   time ([`Metrics::refresh_from_store`]), so they are right before the first run and agree
//!   with `chatvault status`;
//! - process metrics, read from `/proc/self` at render time (left out where there is none).
//!
//! Invariants: every family is announced by `# HELP` and `# TYPE` before its samples; label
//! values are escaped; histogram buckets are cumulative and end with `+Inf` equal to `_count`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::store::{RunStatus, SourceStatus, Store, StoreError};
use crate::sync::SourceResult;

/// Upper bounds (seconds) of the run duration histogram's buckets; `+Inf` is implied.
pub const RUN_DURATION_BUCKETS: [f64; 12] = [
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The daemon's metrics registry.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// By (source, outcome).
    runs: BTreeMap<(String, &'static str), u64>,
    runs_skipped: BTreeMap<String, u64>,
    messages_new: BTreeMap<String, u64>,
    messages_changed: BTreeMap<String, u64>,
    requests: BTreeMap<String, u64>,
    request_failures: BTreeMap<String, u64>,
    retries: BTreeMap<String, u64>,
    rate_limit_waits: BTreeMap<String, u64>,
    run_duration: BTreeMap<String, Histogram>,
    last_success: BTreeMap<String, f64>,
    /// The archive as last read from the store, by source.
    archive: BTreeMap<String, ArchiveGauges>,
    /// Whether the last read from the store worked; `None` before the first one.
    database_up: Option<bool>,
    /// Times the embedded PostgreSQL server died and was started again; `None` without an
    /// embedded server.
    embedded_postgres_restarts: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ArchiveGauges {
    events: i64,
    messages: i64,
    quarantine: i64,
}

/// Reads one of the archive gauges.
type ArchiveField = fn(&ArchiveGauges) -> i64;

#[derive(Clone, Debug)]
struct Histogram {
    /// Per bucket of [`RUN_DURATION_BUCKETS`], observations that fell in it (not cumulative).
    counts: [u64; RUN_DURATION_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: [0; RUN_DURATION_BUCKETS.len()],
            count: 0,
            sum: 0.0,
        }
    }
}

impl Histogram {
    fn observe(&mut self, value: f64) {
        if let Some(i) = RUN_DURATION_BUCKETS.iter().position(|&le| value <= le) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum += value;
    }
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

fn add(map: &mut BTreeMap<String, u64>, source: &str, n: u64) {
    let value = map.entry(source.to_owned()).or_default();
    *value = value.saturating_add(n);
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // a panic while holding the lock leaves plain numbers behind: still worth serving
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Record the end of one source's run.
    pub fn record_run(&self, result: &SourceResult) {
        let source = result.source.as_str();
        let mut inner = self.lock();
        *inner
            .runs
            .entry((source.to_owned(), outcome(result)))
            .or_default() += 1;
        add(&mut inner.messages_new, source, result.counts.messages_new);
        add(
            &mut inner.messages_changed,
            source,
            result.counts.messages_changed,
        );
        add(&mut inner.requests, source, result.counts.requests);
        add(&mut inner.request_failures, source, result.failed_requests);
        add(&mut inner.retries, source, result.counts.retries);
        add(&mut inner.rate_limit_waits, source, result.rate_limit_waits);
        if result.skipped {
            // nothing ran: its duration would only drag the histogram towards zero
            return;
        }
        inner
            .run_duration
            .entry(source.to_owned())
            .or_default()
            .observe(result.duration.as_secs_f64());
        if result.status == RunStatus::Ok {
            inner.last_success.insert(source.to_owned(), unix_now());
        }
    }

    /// A scheduled run was skipped because the previous one was still going.
    pub fn run_skipped(&self, source: &str) {
        add(&mut self.lock().runs_skipped, source, 1);
    }

    /// This process uses an embedded PostgreSQL server: its restarts are counted from 0.
    pub fn embedded_postgres_watched(&self) {
        self.lock().embedded_postgres_restarts.get_or_insert(0);
    }

    /// The embedded PostgreSQL server died and this process started it again.
    pub fn embedded_postgres_restarted(&self) {
        let mut inner = self.lock();
        let restarts = inner.embedded_postgres_restarts.get_or_insert(0);
        *restarts = restarts.saturating_add(1);
    }

    /// Replace the archive gauges with `status` (what [`Store::status`] returns).
    pub fn set_archive_status(&self, status: &[SourceStatus]) {
        let archive = status
            .iter()
            .map(|s| {
                let gauges = ArchiveGauges {
                    events: s.events,
                    messages: s.messages,
                    quarantine: s.quarantine,
                };
                (s.source.clone(), gauges)
            })
            .collect();
        let mut inner = self.lock();
        inner.archive = archive;
        inner.database_up = Some(true);
    }

    /// Note that the store could not be read: `chatvault_database_up` turns 0 and the archive
    /// gauges keep their last values.
    pub fn set_database_down(&self) {
        self.lock().database_up = Some(false);
    }

    /// Read the archive gauges from the store (call before [`Metrics::render`] on a scrape).
    /// On error the gauges keep their last values and `chatvault_database_up` is 0.
    pub async fn refresh_from_store(&self, store: &Store) -> Result<(), StoreError> {
        match store.status().await {
            Ok(status) => {
                self.set_archive_status(&status);
                Ok(())
            }
            Err(err) => {
                self.set_database_down();
                Err(err)
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Text::default();
        {
            let inner = self.lock();
            out.family(
                "chatvault_sync_runs_total",
                "counter",
                "Sync runs that ended, by source and outcome (ok, failed, interrupted, skipped_locked).",
            );
            for ((source, outcome), n) in &inner.runs {
                out.sample(
                    "chatvault_sync_runs_total",
                    &[("source", source), ("outcome", outcome)],
                    *n as f64,
                );
            }
            let counters: [(&str, &str, &BTreeMap<String, u64>); 7] = [
                (
                    "chatvault_runs_skipped_total",
                    "Scheduled runs skipped because the previous run of the source was still going.",
                    &inner.runs_skipped,
                ),
                (
                    "chatvault_messages_new_total",
                    "Messages archived for the first time.",
                    &inner.messages_new,
                ),
                (
                    "chatvault_messages_changed_total",
                    "Archived messages that changed (edited, recalled, deleted, reactions).",
                    &inner.messages_changed,
                ),
                (
                    "chatvault_upstream_requests_total",
                    "Requests sent to the upstream chat server.",
                    &inner.requests,
                ),
                (
                    "chatvault_upstream_request_failures_total",
                    "Upstream requests that failed in transport (timeouts, dropped connections).",
                    &inner.request_failures,
                ),
                (
                    "chatvault_upstream_retries_total",
                    "Upstream requests retried after a transient failure.",
                    &inner.retries,
                ),
                (
                    "chatvault_rate_limit_waits_total",
                    "Times a sync waited because the upstream rate-limited it.",
                    &inner.rate_limit_waits,
                ),
            ];
            for (name, help, values) in counters {
                out.family(name, "counter", help);
                for (source, n) in values {
                    out.sample(name, &[("source", source)], *n as f64);
                }
            }

            let name = "chatvault_sync_run_duration_seconds";
            out.family(name, "histogram", "How long sync runs took.");
            for (source, histogram) in &inner.run_duration {
                out.histogram(name, source, histogram);
            }

            let name = "chatvault_last_success_timestamp_seconds";
            out.family(
                name,
                "gauge",
                "When the last successful sync run of the source ended, as a Unix timestamp.",
            );
            for (source, at) in &inner.last_success {
                out.sample(name, &[("source", source)], *at);
            }

            let gauges: [(&str, &str, ArchiveField); 3] = [
                (
                    "chatvault_events",
                    "Events in the source's hash chain (the sequence number of its head).",
                    |g| g.events,
                ),
                (
                    "chatvault_messages",
                    "Messages archived for the source.",
                    |g| g.messages,
                ),
                (
                    "chatvault_quarantine_records",
                    "Upstream records kept in quarantine because they could not be archived.",
                    |g| g.quarantine,
                ),
            ];
            for (name, help, value) in gauges {
                out.family(name, "gauge", help);
                for (source, archive) in &inner.archive {
                    out.sample(name, &[("source", source)], value(archive) as f64);
                }
            }

            if let Some(restarts) = inner.embedded_postgres_restarts {
                let name = "chatvault_embedded_postgres_restarts_total";
                out.family(
                    name,
                    "counter",
                    "Times the embedded PostgreSQL server died and the daemon started it again.",
                );
                out.sample(name, &[], restarts as f64);
            }

            if let Some(up) = inner.database_up {
                let name = "chatvault_database_up";
                out.family(
                    name,
                    "gauge",
                    "Whether the last read of the archive for these metrics worked (1) or not (0).",
                );
                out.sample(name, &[], if up { 1.0 } else { 0.0 });
            }
        }
        render_process(&mut out);
        out.0
    }
}

/// Process metrics from `/proc/self`; each one is left out when it cannot be read.
fn render_process(out: &mut Text) {
    if let Some(stat) = ProcStat::read() {
        let name = "chatvault_process_cpu_seconds_total";
        out.family(
            name,
            "counter",
            "User and system CPU time spent, in seconds.",
        );
        out.sample(name, &[], stat.cpu_seconds);
        let name = "chatvault_process_resident_memory_bytes";
        out.family(name, "gauge", "Resident memory size in bytes.");
        out.sample(name, &[], stat.resident_bytes);
        if let Some(start) = stat.start_time {
            let name = "chatvault_process_start_time_seconds";
            out.family(
                name,
                "gauge",
                "When the process started, as a Unix timestamp.",
            );
            out.sample(name, &[], start);
        }
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        // the directory handle itself is one of the entries
        let open = entries.count().saturating_sub(1);
        let name = "chatvault_process_open_fds";
        out.family(name, "gauge", "Open file descriptors.");
        out.sample(name, &[], open as f64);
    }
}

struct ProcStat {
    cpu_seconds: f64,
    resident_bytes: f64,
    start_time: Option<f64>,
}

impl ProcStat {
    fn read() -> Option<ProcStat> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // SAFETY: sysconf has no preconditions.
        let (ticks, page_size) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if ticks <= 0 || page_size <= 0 {
            return None;
        }
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| parse_boot_time(&text));
        parse_proc_stat(&stat, ticks as f64, page_size as f64, boot_time)
    }
}

/// Parses `/proc/self/stat`: the fields after the command name (which may hold spaces and
/// parentheses, hence the last `)`) start with field 3, `state`.
fn parse_proc_stat(
    stat: &str,
    ticks_per_second: f64,
    page_size: f64,
    boot_time: Option<f64>,
) -> Option<ProcStat> {
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse::<f64>().ok() };
    let utime = field(14)?;
    let stime = field(15)?;
    let start_ticks = field(22)?;
    let rss_pages = field(24)?;
    Some(ProcStat {
        cpu_seconds: (utime + stime) / ticks_per_second,
        resident_bytes: rss_pages * page_size,
        start_time: boot_time.map(|boot| boot + start_ticks / ticks_per_second),
    })
}

/// The `btime` line of `/proc/stat`: when the system booted, as a Unix timestamp.
fn parse_boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// Text exposition being written.
#[derive(Default)]
struct Text(String);

impl Text {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{label}=\"{}\"", escape_label_value(value));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {}", format_value(value));
    }

    fn histogram(&mut self, name: &str, source: &str, histogram: &Histogram) {
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0;
        for (le, n) in RUN_DURATION_BUCKETS.iter().zip(histogram.counts) {
            cumulative += n;
            let le = format_value(*le);
            self.sample(
                &bucket,
                &[("source", source), ("le", &le)],
                cumulative as f64,
            );
        }
        self.sample(
            &bucket,
            &[("source", source), ("le", "+Inf")],
            histogram.count as f64,
        );
        self.sample(&format!("{name}_sum"), &[("source", source)], histogram.sum);
        self.sample(
            &format!("{name}_count"),
            &[("source", source)],
            histogram.count as f64,
        );
    }
}

/// A sample value as the text format writes it (`+Inf`, `-Inf`, `NaN` for the specials).
fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value == f64::INFINITY {
        "+Inf".to_owned()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        format!("{value}")
    }
}

/// Label values escape backslash, double quote and line feed.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Help text escapes backslash and line feed.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
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
        }
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
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("line\nbreak"), r"line\nbreak");
        assert_eq!(escape_label_value("你好 {x=1}"), "你好 {x=1}");

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

    #[test]
    fn archive_gauges_follow_the_last_status_and_database_up_reports_failures() {
        let metrics = Metrics::new();
        let status = |source: &str, events, messages, quarantine| SourceStatus {
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
        };
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
    fn proc_stat_parsing_survives_odd_command_names() {
        let stat = "1234 (we ird) proc)) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 150 0 0 20 0 4 0 5000 123456789 300 18446744073709551615";
        let parsed = parse_proc_stat(stat, 100.0, 4096.0, Some(1_700_000_000.0)).unwrap();
        assert_eq!(parsed.cpu_seconds, 4.0);
        assert_eq!(parsed.resident_bytes, 300.0 * 4096.0);
        assert_eq!(parsed.start_time, Some(1_700_000_050.0));
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n"),
            Some(1_700_000_000.0)
        );
        assert!(parse_proc_stat("garbage", 100.0, 4096.0, None).is_none());
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
}
