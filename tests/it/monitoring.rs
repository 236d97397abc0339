//! The Grafana dashboard and the Prometheus alert rules in `deploy/` against what chatvault
//! exports: every metric an expression uses is on the `/metrics` of a real `chatvault run`
//! (with its embedded database) after a sync against the fake TangSengDaoDao and a `verify`; `promtool` checks the rules
//! and fires each alert on synthetic series.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use chatvault::sim::tangsengdaodao::{SimServer, World, WorldSpec};
use serde_json::Value;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The binary in `dir`, with the embedded database (so the embedded server's metrics are
/// exported too).
fn chatvault(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatvault"));
    cmd.current_dir(dir)
        .args(args)
        .env_remove("CHATVAULT_CONFIG")
        .env_remove("CHATVAULT_DATA_DIR")
        .env_remove("CHATVAULT_LISTEN")
        .env_remove("CHATVAULT_SERVER_TOKEN")
        .env_remove("CHATVAULT_DATABASE_URL")
        .env("TSDD_PASSWORD", WorldSpec::default().me_password)
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to its end on a blocking thread, bounded by the test's own timeout.
async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("run chatvault"))
        .await
        .unwrap()
}

/// A daemon killed when dropped.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The names of the samples in a Prometheus text exposition (histograms by their
/// `_bucket`, `_sum` and `_count` series).
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let end = l.find(['{', ' ']).unwrap_or(l.len());
            l[..end].to_string()
        })
        .collect()
}

/// Removes everything between `open` and the matching `close` (not nested in PromQL).
fn strip_between(expr: &str, open: char, close: char) -> String {
    let mut out = String::new();
    let mut inside = false;
    for c in expr.chars() {
        match c {
            c if c == open && !inside => inside = true,
            c if c == close && inside => {
                inside = false;
                out.push(' ');
            }
            c if !inside => out.push(c),
            _ => {}
        }
    }
    out
}

/// The metric names a PromQL expression selects: identifiers that are not a function, a
/// keyword, a label list of a grouping clause, a label matcher, a range, a string or a
/// Grafana variable.
fn metric_names(expr: &str) -> Vec<String> {
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset", // operators
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values", // aggregations, which may come before `by (...)`
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let mut text = strip_between(expr, '"', '"');
    text = strip_between(&text, '{', '}');
    text = strip_between(&text, '[', ']');
    let chars: Vec<char> = text.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '$' {
            // a Grafana variable
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_' || c == ':') {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len()
            && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
        {
            i += 1;
        }
        let word: String = chars[start..i].iter().collect();
        let mut next = i;
        while next < chars.len() && chars[next].is_whitespace() {
            next += 1;
        }
        let before_paren = chars.get(next) == Some(&'(');
        if GROUPING.contains(&word.as_str()) {
            if before_paren {
                // skip the label list
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
            }
            continue;
        }
        if before_paren || KEYWORDS.contains(&word.as_str()) {
            continue;
        }
        names.push(word);
    }
    names
}

/// Every PromQL expression of the dashboard: panel targets, and the metric of the source
/// variable's `label_values(METRIC, source)`.
fn dashboard_expressions() -> Vec<String> {
    let text = std::fs::read_to_string(repo("deploy/grafana/chatvault.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr", Value::String(e)) => out.push(e.clone()),
                        ("definition", Value::String(d)) => {
                            let inner = d
                                .strip_prefix("label_values(")
                                .and_then(|r| r.split(',').next())
                                .unwrap_or_else(|| panic!("unexpected variable query {d}"));
                            out.push(inner.trim().to_string());
                        }
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard, &mut out);
    out
}

/// Every `expr:` of the alert rules (plain, or a folded block on the lines below it).
fn alert_expressions() -> Vec<String> {
    let text = std::fs::read_to_string(repo("deploy/prometheus/alerts.yml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(value) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let value = value.trim();
        if value.starts_with('>') || value.starts_with('|') {
            let indent = line.len() - line.trim_start().len();
            let block: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect();
            out.push(block.join(" "));
        } else {
            out.push(value.to_string());
        }
    }
    out
}

#[test]
fn the_expression_scanner_finds_metric_names_only() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.95, sum by (source, le) (rate(chatvault_x_bucket{source=~"$source"}[$__rate_interval])))"#
        ),
        ["chatvault_x_bucket"]
    );
    assert_eq!(
        metric_names("time() - a_b > 3 * c offset 5m or absent(up{job=\"x\"})"),
        ["a_b", "c", "up"]
    );
    assert_eq!(
        metric_names("sum without (le) (x) / on (source) group_left y"),
        ["x", "y"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_of_the_dashboard_and_the_alerts_is_exported_by_the_daemon() {
    let server = SimServer::start(World::generate(&WorldSpec {
        seed: 21,
        messages: 300,
        ..WorldSpec::default()
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("chatvault.toml"),
        format!(
            "[storage]\ndata_dir = \"data\"\n[server]\nlisten = \"127.0.0.1:0\"\n[sync]\nschedule_jitter = 0\n\
             [[source]]\nname = \"s\"\nplatform = \"tangsengdaodao\"\nbase_url = \"{}\"\nusername = \"{}\"\n\
             password_env = \"TSDD_PASSWORD\"\nrequests_per_second = 2000\nschedule = \"*/2 * * * * *\"\n",
            server.base_url(),
            WorldSpec::default().me_username
        ),
    )
    .unwrap();
    let config = ["--config", "chatvault.toml"];
    for command in ["sync", "verify"] {
        let out = output(chatvault(dir.path(), &[&config[..], &[command]].concat())).await;
        assert!(
            out.status.success(),
            "{command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let log = dir.path().join("run.err");
    let child = chatvault(dir.path(), &[&config[..], &["run"]].concat())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _daemon = Daemon(child);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let wanted = [
        "chatvault_sync_runs_total",
        "chatvault_sync_run_duration_seconds_bucket",
        "chatvault_index_lag_events",
    ];
    let names = loop {
        assert!(
            Instant::now() < deadline,
            "no run in the daemon's metrics after 90 s: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let log_text = std::fs::read_to_string(&log).unwrap_or_default();
        let Some(address) = log_text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["fields"]["message"] == "http api listening")
            .and_then(|e| e["fields"]["address"].as_str().map(str::to_string))
        else {
            continue;
        };
        let Ok(response) = http.get(format!("http://{address}/metrics")).send().await else {
            continue;
        };
        let names = sample_names(&response.text().await.unwrap());
        if wanted.iter().all(|w| names.contains(*w)) {
            break names;
        }
    };

    let expressions: Vec<(&str, String)> = dashboard_expressions()
        .into_iter()
        .map(|e| ("deploy/grafana/chatvault.json", e))
        .chain(
            alert_expressions()
                .into_iter()
                .map(|e| ("deploy/prometheus/alerts.yml", e)),
        )
        .collect();
    assert!(expressions.len() >= 25, "{expressions:?}");
    let mut used = BTreeSet::new();
    let mut missing = Vec::new();
    for (file, expr) in &expressions {
        let found = metric_names(expr);
        assert!(!found.is_empty(), "{file}: no metric in {expr}");
        for name in found {
            // `up` is Prometheus's own series for each scrape target
            if name == "up" {
                continue;
            }
            if !names.contains(&name) {
                missing.push(format!("{file}: {name} (in {expr})"));
            }
            used.insert(name);
        }
    }
    assert!(
        missing.is_empty(),
        "not exported by chatvault:\n{}\nexported: {names:?}",
        missing.join("\n")
    );
    // what the dashboard and the alerts are for is there
    for name in [
        "chatvault_sync_runs_total",
        "chatvault_messages_new_total",
        "chatvault_last_success_timestamp_seconds",
        "chatvault_sync_run_duration_seconds_bucket",
        "chatvault_upstream_requests_total",
        "chatvault_upstream_retries_total",
        "chatvault_rate_limit_waits_total",
        "chatvault_quarantine_records",
        "chatvault_index_lag_events",
        "chatvault_verify_ok",
        "chatvault_source_consecutive_failures",
        "chatvault_schedule_period_seconds",
    ] {
        assert!(used.contains(name), "{name} is used by no expression");
    }
}

/// `promtool`, or a failure saying how to get it (CI installs it).
fn promtool(args: &[&str]) -> Output {
    match Command::new("promtool")
        .args(args)
        .current_dir(repo("deploy/prometheus"))
        .output()
    {
        Ok(out) => out,
        Err(e) => panic!(
            "promtool is needed to check the alert rules ({e}): install Debian's `prometheus` \
             package (`apt-get install prometheus`); `bash .ci/run` installs it"
        ),
    }
}

#[test]
fn promtool_checks_the_alert_rules_and_fires_each_alert_in_its_unit_tests() {
    let check = promtool(&["check", "rules", "alerts.yml"]);
    let text = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{text}");
    let rules = std::fs::read_to_string(repo("deploy/prometheus/alerts.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(
        text.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "{text}"
    );

    let test = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    // each alert is made to fire by some test case (an expected alert under its name)
    let tests = std::fs::read_to_string(repo("deploy/prometheus/alerts_test.yml")).unwrap();
    let lines: Vec<&str> = tests.lines().collect();
    for alert in alerts {
        let fires = lines.windows(3).any(|w| {
            w[0].trim() == format!("alertname: {alert}")
                && w[1].trim() == "exp_alerts:"
                && w[2].trim().starts_with("- exp_labels:")
        });
        assert!(fires, "no unit test makes {alert} fire");
    }
}
