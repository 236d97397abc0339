//! Soak test: the sync engine on a short schedule against a fake TangSengDaoDao server that
//! keeps changing and keeps failing, then a check of the archive against the fake world.
//!
//! For `--minutes`, a background task makes steady upstream activity (posts, edits, recalls,
//! deletions, reactions, the odd history clear) and queues random faults (429s, 5xx,
//! connections dropped mid-body, slow answers), while the main loop calls `sync_source` every
//! `--every-secs`, as the daemon would on a short schedule. Then the activity stops, one clean
//! sync catches up, and the archive is compared with the world's truth: every visible message
//! archived once with its current state, every edited one with its versions, the standing
//! reactions, and the hash chain verified.
//!
//! Run: `cargo run --release --example soak -- --minutes 5` (needs the PostgreSQL server
//! binaries: the archive goes into a throwaway cluster in `$TMPDIR`). Exits 1 if anything
//! was lost, duplicated or wrong, or if the chain does not verify.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::sync::watch;

use chatvault::config::{PlatformConfig, Secret, SourceConfig, TsddAuth, TsddConfig};
use chatvault::model::SourceName;
use chatvault::sim::tangsengdaodao::{Activity, ChannelTruth, Faults, SimServer, World, WorldSpec};
use chatvault::store::Store;
use chatvault::sync::{sync_source, SourceResult, SyncOptions};

/// Paths a fault may be scoped to; `None` is any path (login and discovery included).
const FAULT_PATHS: [Option<&str>; 4] = [
    None,
    Some("/v1/message/channel/sync"),
    Some("/v1/message/extra/sync"),
    Some("/v1/reaction/sync"),
];

#[derive(Parser, Debug)]
#[command(about = "Soak the sync engine against a changing, failing fake TangSengDaoDao server")]
struct Args {
    /// How long upstream activity, faults and scheduled syncs go on.
    #[arg(long, default_value_t = 5.0)]
    minutes: f64,
    /// Messages in the generated world before the activity starts.
    #[arg(long, default_value_t = 3_000)]
    messages: usize,
    /// Seconds between the starts of two syncs.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    every_secs: u64,
    /// Seed of the world, the activity and the faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// What the background task did upstream.
#[derive(Debug, Default)]
struct Upstream {
    activity: BTreeMap<&'static str, u64>,
    faults: BTreeMap<&'static str, u64>,
}

/// The scheduled syncs, summed.
#[derive(Debug, Default)]
struct Runs {
    ok: u64,
    failed: u64,
    skipped: u64,
    requests: u64,
    retries: u64,
    rate_limit_waits: u64,
    failed_requests: u64,
    messages_new: u64,
    messages_changed: u64,
    longest: Duration,
    errors: Vec<String>,
}

impl Runs {
    fn add(&mut self, result: &SourceResult) {
        if result.skipped {
            self.skipped += 1;
        } else if result.ok() {
            self.ok += 1;
        } else {
            self.failed += 1;
            if self.errors.len() < 3 {
                self.errors
                    .push(result.error.clone().unwrap_or_else(|| "no error".into()));
            }
        }
        self.requests += result.counts.requests;
        self.retries += result.counts.retries;
        self.rate_limit_waits += result.rate_limit_waits;
        self.failed_requests += result.failed_requests;
        self.messages_new += result.counts.messages_new;
        self.messages_changed += result.counts.messages_changed;
        self.longest = self.longest.max(result.duration);
    }
}

/// How the archive compares with the world.
#[derive(Debug, Default)]
struct Check {
    expected: usize,
    archived: usize,
    lost: Vec<(String, String)>,
    unexpected: Vec<(String, String)>,
    duplicates: i64,
    wrong_state: Vec<String>,
    edited_checked: usize,
    wrong_versions: Vec<String>,
    standing_reactions: usize,
    missing_reactions: usize,
    extra_reactions: usize,
    quarantined: i64,
}

impl Check {
    fn passed(&self) -> bool {
        self.lost.is_empty()
            && self.unexpected.is_empty()
            && self.duplicates == 0
            && self.wrong_state.is_empty()
            && self.wrong_versions.is_empty()
            && self.missing_reactions == 0
            && self.extra_reactions == 0
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let args = Args::parse();
    chatvault::telemetry::init(None, "error");
    match soak(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the soak and prints the report; `Ok(false)` when the archive is not right.
async fn soak(args: &Args) -> anyhow::Result<bool> {
    let rss_start = rss_mb();
    let spec = WorldSpec {
        seed: args.seed,
        users: 40,
        groups: 6,
        direct_chats: 12,
        messages: args.messages,
        cleared_channels: 1,
        ..WorldSpec::default()
    };
    let server = SimServer::start(World::generate(&spec)).await;
    let conversations = server.world().truth().len();
    let (options, _) = chatvault::pg::testing::fresh_database().await;
    let store = Store::connect(options, 4)
        .await
        .context("cannot connect to the throwaway database")?;
    store.migrate().await.context("cannot migrate")?;
    let source = source_config(&server, &spec);
    let sync_options = SyncOptions::default();

    println!(
        "soak: {:.1} min, {} messages in {conversations} conversations, a sync every {} s",
        args.minutes, args.messages, args.every_secs
    );

    let (stop, stopped) = watch::channel(false);
    let upstream = tokio::spawn(upstream_task(
        server.world_handle(),
        server.faults(),
        args.seed,
        stopped,
    ));

    let mut runs = Runs::default();
    let mut rss_after_backfill = None;
    let every = Duration::from_secs(args.every_secs);
    let deadline = Instant::now() + Duration::from_secs_f64(args.minutes.max(0.0) * 60.0);
    let mut interrupted = false;
    loop {
        let started = Instant::now();
        let result = sync_source(&store, &source, &sync_options, None).await;
        runs.add(&result);
        rss_after_backfill.get_or_insert_with(rss_mb);
        if Instant::now() >= deadline {
            break;
        }
        let next = (started + every).min(deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = tokio::signal::ctrl_c() => {
                interrupted = true;
                break;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }

    let _ = stop.send(true);
    let upstream = upstream.await.context("the upstream task panicked")?;
    let faults = server.faults();
    let faults_unfired = faults.pending();
    faults.clear();

    // The previous run's source lock goes when its connection's backend exits; until then a
    // new run is skipped, which here would leave the final sync undone.
    let mut last = sync_source(&store, &source, &sync_options, None).await;
    for _ in 0..100 {
        if !last.skipped {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = sync_source(&store, &source, &sync_options, None).await;
    }
    let truth = server.world().truth();
    let check = compare(&store, &truth).await?;
    let verify = store.verify(&[]).await.context("cannot verify the chain")?;
    let (events, head) = verify
        .sources
        .first()
        .map(|(_, events, head)| (*events, head.clone()))
        .unwrap_or_default();
    let rss_end = rss_mb();
    server.shutdown().await;

    let faults_injected: u64 = upstream.faults.values().sum();
    let activity_total: u64 = upstream.activity.values().sum();
    println!(
        "runs: {} ok, {} failed, {} skipped (source lock still held){}; final clean sync {}",
        runs.ok,
        runs.failed,
        runs.skipped,
        if interrupted {
            " (stopped by Ctrl-C)"
        } else {
            ""
        },
        if last.skipped {
            "skipped: the source lock was never released".to_string()
        } else if last.ok() {
            "ok".to_string()
        } else {
            format!("FAILED: {}", last.error.as_deref().unwrap_or("no error"))
        }
    );
    for error in &runs.errors {
        println!("  failed run: {error}");
    }
    println!(
        "  {} requests, {} retries, {} rate-limit waits, {} failed requests; {} new and {} changed messages; longest run {:.1} s",
        runs.requests,
        runs.retries,
        runs.rate_limit_waits,
        runs.failed_requests,
        runs.messages_new,
        runs.messages_changed,
        runs.longest.as_secs_f64()
    );
    println!(
        "upstream activity: {activity_total} changes ({})",
        tally(&upstream.activity)
    );
    println!(
        "faults injected: {faults_injected} ({}); {} never fired (cleared before the final sync)",
        tally(&upstream.faults),
        faults_unfired
    );
    println!(
        "archive: {} messages ({} visible upstream), {} edited messages' versions checked, {} standing reactions, {} quarantined",
        check.archived, check.expected, check.edited_checked, check.standing_reactions, check.quarantined
    );
    println!(
        "lost: {}  unexpected: {}  duplicates: {}  wrong state: {}  wrong versions: {}  reactions missing/extra: {}/{}",
        check.lost.len(),
        check.unexpected.len(),
        check.duplicates,
        check.wrong_state.len(),
        check.wrong_versions.len(),
        check.missing_reactions,
        check.extra_reactions
    );
    for key in check.lost.iter().take(5) {
        println!("  lost {}/{}", key.0, key.1);
    }
    for key in check.unexpected.iter().take(5) {
        println!("  unexpected {}/{}", key.0, key.1);
    }
    for problem in check
        .wrong_state
        .iter()
        .chain(&check.wrong_versions)
        .take(5)
    {
        println!("  {problem}");
    }
    if verify.ok() {
        println!(
            "chain: verified, {events} events, {} versions checked, head {head}",
            verify.versions_checked
        );
    } else {
        println!("chain: DOES NOT VERIFY");
        for failure in &verify.failures {
            match failure.event_seq {
                Some(seq) => println!("  event {seq}: {}", failure.problem),
                None => println!("  {}", failure.problem),
            }
        }
    }
    println!(
        "rss: {rss_start:.0} MB at start, {:.0} MB after the backfill, {rss_end:.0} MB at the end",
        rss_after_backfill.unwrap_or(rss_start)
    );
    let passed = last.ok() && !last.skipped && check.passed() && verify.ok();
    println!("result: {}", if passed { "PASS" } else { "FAIL" });
    Ok(passed)
}

fn source_config(server: &SimServer, spec: &WorldSpec) -> SourceConfig {
    SourceConfig {
        name: SourceName::new("soak"),
        schedule: "*/5 * * * * *".into(),
        requests_per_second: 20.0,
        request_timeout: Duration::from_secs(5),
        enabled: true,
        push: true,
        platform: PlatformConfig::Tangsengdaodao(TsddConfig {
            base_url: server.base_url(),
            auth: TsddAuth::Password {
                username: spec.me_username.clone(),
                password: Secret::new(spec.me_password.clone()),
            },
            device_flag: 1,
            page_size: 200,
        }),
    }
}

/// Every second: a few changes in the world, and half the time a fault queued for a random
/// path. Returns what it did once `stopped` turns true.
async fn upstream_task(
    world: std::sync::Arc<std::sync::Mutex<World>>,
    faults: Faults,
    seed: u64,
    mut stopped: watch::Receiver<bool>,
) -> Upstream {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(1));
    let mut done = Upstream::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return done,
        }
        let changes = {
            let mut world = world.lock().unwrap_or_else(|e| e.into_inner());
            let n = rng.gen_range(1..=6);
            world.random_activity(&mut rng, n)
        };
        for change in changes {
            *done.activity.entry(activity_name(&change)).or_default() += 1;
        }
        if rng.gen_bool(0.5) {
            let path = FAULT_PATHS[rng.gen_range(0..FAULT_PATHS.len())];
            let name = match rng.gen_range(0..4) {
                0 => {
                    faults.rate_limit(path, 1, 1);
                    "429"
                }
                1 => {
                    faults.status(path, 1, [500, 502, 503][rng.gen_range(0..3)]);
                    "5xx"
                }
                2 => {
                    faults.drop_mid_body(path, 1);
                    "dropped"
                }
                _ => {
                    let delay = Duration::from_millis(rng.gen_range(200..2_500));
                    faults.slow(path, 1, delay);
                    "slow"
                }
            };
            *done.faults.entry(name).or_default() += 1;
        }
    }
}

fn activity_name(change: &Activity) -> &'static str {
    match change {
        Activity::Posted(_) => "posted",
        Activity::Edited(_) => "edited",
        Activity::Revoked(_) => "recalled",
        Activity::MutuallyDeleted(_) => "deleted",
        Activity::Reacted { .. } => "reactions",
        Activity::ClearedHistory { .. } => "history clears",
    }
}

fn tally(counts: &BTreeMap<&'static str, u64>) -> String {
    let parts: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    parts.join(", ")
}

#[derive(sqlx::FromRow)]
struct Row {
    conversation_id: String,
    message_id: String,
    seq: Option<i64>,
    text: String,
    edit_count: i32,
    recalled: bool,
    deleted: bool,
}

/// Compares the archive with the world: what the archiving user can see must be archived,
/// once, as the world has it; what was archived must exist upstream (it may since have been
/// hidden by a history clear).
async fn compare(store: &Store, truth: &[ChannelTruth]) -> anyhow::Result<Check> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT conversation_id, message_id, seq, text, edit_count,
                recalled_at IS NOT NULL AS recalled, deleted_at IS NOT NULL AS deleted
         FROM archive.messages",
    )
    .fetch_all(store.pool())
    .await?;
    let rows: BTreeMap<(String, String), Row> = rows
        .into_iter()
        .map(|r| ((r.conversation_id.clone(), r.message_id.clone()), r))
        .collect();
    let version_rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT conversation_id, message_id, text FROM archive.message_versions
         ORDER BY conversation_id, message_id, version",
    )
    .fetch_all(store.pool())
    .await?;
    let mut versions: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (conversation_id, message_id, text) in version_rows {
        versions
            .entry((conversation_id, message_id))
            .or_default()
            .push(text);
    }
    let standing: BTreeSet<(String, String, String, String)> = sqlx::query_as(
        "SELECT conversation_id, message_id, user_id, emoji FROM archive.reactions
         WHERE removed_at IS NULL",
    )
    .fetch_all(store.pool())
    .await?
    .into_iter()
    .collect();

    let mut check = Check {
        archived: rows.len(),
        ..Check::default()
    };
    check.duplicates = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM archive.messages WHERE seq IS NOT NULL
         GROUP BY conversation_id, seq HAVING count(*) > 1) AS d",
    )
    .fetch_one(store.pool())
    .await?;
    check.quarantined = sqlx::query_scalar("SELECT count(*) FROM archive.quarantine")
        .fetch_one(store.pool())
        .await?;

    let mut upstream = BTreeSet::new();
    let mut visible = BTreeSet::new();
    let mut expected_reactions = BTreeSet::new();
    for channel in truth {
        for m in &channel.messages {
            let key = (channel.channel_id.clone(), m.message_id.clone());
            upstream.insert(key.clone());
            if !m.visible {
                continue;
            }
            visible.insert(key.clone());
            for r in m.reactions.iter().filter(|r| !r.is_deleted) {
                expected_reactions.insert((
                    key.0.clone(),
                    key.1.clone(),
                    r.uid.clone(),
                    r.emoji.clone(),
                ));
            }
            let Some(row) = rows.get(&key) else {
                check.lost.push(key);
                continue;
            };
            let id = format!("{}/{}", key.0, key.1);
            if row.seq != Some(i64::from(m.message_seq))
                || row.recalled != m.revoked
                || row.deleted != m.mutually_deleted
            {
                check.wrong_state.push(format!(
                    "{id}: archived seq {:?} recalled {} deleted {}, upstream seq {} recalled {} deleted {}",
                    row.seq, row.recalled, row.deleted, m.message_seq, m.revoked, m.mutually_deleted
                ));
            }
            // A recall or deletion freezes the archived content, so later edits don't count.
            let Some(edit) = m.content_edit.as_ref() else {
                continue;
            };
            if *edit == m.payload || m.revoked || m.mutually_deleted {
                continue;
            }
            check.edited_checked += 1;
            let held = versions.get(&key).map(Vec::as_slice).unwrap_or_default();
            let original = text_of(&m.payload);
            let current = text_of(edit);
            let right = row.edit_count > 0
                && held.len() >= 2
                && original.is_none_or(|t| held.first().map(String::as_str) == Some(t))
                && current
                    .is_none_or(|t| held.last().map(String::as_str) == Some(t) && row.text == t);
            if !right {
                check.wrong_versions.push(format!(
                    "{id}: {} versions archived (edit_count {}), original {original:?}, current {current:?}",
                    held.len(),
                    row.edit_count
                ));
            }
        }
    }
    check.expected = visible.len();
    check.unexpected = rows
        .keys()
        .filter(|key| !upstream.contains(*key))
        .cloned()
        .collect();
    let standing_on_visible: BTreeSet<_> = standing
        .into_iter()
        .filter(|(c, m, _, _)| visible.contains(&(c.clone(), m.clone())))
        .collect();
    check.standing_reactions = standing_on_visible.len();
    check.missing_reactions = expected_reactions.difference(&standing_on_visible).count();
    check.extra_reactions = standing_on_visible.difference(&expected_reactions).count();
    Ok(check)
}

/// The text of a text payload (`type` 1); `None` for other kinds.
fn text_of(payload: &Value) -> Option<&str> {
    if payload["type"] != 1 {
        return None;
    }
    payload["content"].as_str()
}

/// Resident set size of this process in MB (`VmRSS` in `/proc/self/status`; 0 elsewhere).
fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
