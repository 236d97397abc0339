//! End-to-end benchmark of the Yunxin connector: the sync engine backfills a fake Yunxin
//! app over loopback HTTP into PostgreSQL (default 200,000 messages in 200 conversations of
//! one account), first with the fake's rate limit (100 requests/s per API) switched off,
//! then on (the client held at 90 requests/s); then incremental passes with no change and
//! different `rescan_days`; in the same run, the store-only ingest of as many synthetic
//! messages, as the baseline.
//!
//! Run: `cargo bench --bench yunxin_e2e` (`CHATVAULT_BENCH_MESSAGES=50000` for a quick run,
//! `CHATVAULT_BENCH_RATE_LIMITED=0` to skip the rate-limited backfill).

mod support;

use std::time::{Duration, Instant};

use chatvault::config::{PlatformConfig, Secret, SourceConfig, YunxinConfig};
use chatvault::model::{Platform, SourceName};
use chatvault::sim::yunxin::{
    now_ms, SimServer, World, WorldSpec, HISTORY_PATH, QUICK_COMMENT_PATH,
};
use chatvault::store::Store;
use chatvault::sync::{sync_source, SourceResult, SyncOptions};
use support::{env_usize, peak_rss_mb};

async fn fresh_store() -> anyhow::Result<Store> {
    let (options, _) = chatvault::pg::testing::fresh_database().await;
    let store = Store::connect(options, 4).await?;
    store.migrate().await?;
    Ok(store)
}

fn source(server: &SimServer, spec: &WorldSpec, rescan_days: u32, rps: f64) -> SourceConfig {
    SourceConfig {
        name: SourceName::new("bench"),
        schedule: "0 */5 * * * *".into(),
        requests_per_second: rps,
        request_timeout: Duration::from_secs(30),
        enabled: true,
        push: true,
        platform: PlatformConfig::Yunxin(YunxinConfig {
            base_url: server.base_url(),
            app_key: spec.app_key.clone(),
            app_secret: Secret::new(spec.app_secret.clone()),
            accounts: vec!["acc00".into()],
            history_start: None,
            rescan_days,
        }),
    }
}

async fn run(
    store: &Store,
    src: &SourceConfig,
    server: &SimServer,
) -> anyhow::Result<(SourceResult, f64, u64)> {
    let before = server.request_count();
    let t = Instant::now();
    let r = sync_source(store, src, &SyncOptions::default(), None).await;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(r.ok(), "sync failed: {:?}", r.error);
    Ok((r, secs, server.request_count() - before))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let total = env_usize("CHATVAULT_BENCH_MESSAGES", 200_000);
    let conversations = env_usize("CHATVAULT_BENCH_CONVERSATIONS", 200);
    let rate_limited = env_usize("CHATVAULT_BENCH_RATE_LIMITED", 1) == 1;
    let teams = conversations / 4;
    let spec = WorldSpec {
        seed: 42,
        accounts: 1,
        users: conversations,
        teams: teams - teams / 5,
        super_teams: teams / 5,
        direct_chats: conversations - teams,
        messages: total,
        end_ms: now_ms() - 3_600_000,
        days: 90,
        ..WorldSpec::default()
    };
    let t = Instant::now();
    let mut world = World::generate(&spec);
    world.behaviour.rate_limit = None;
    let generated = t.elapsed().as_secs_f64();
    let n_conv = world.conversations.len();
    let server = SimServer::start(world).await;
    println!(
        "yunxin end-to-end benchmark: {total} messages in {n_conv} conversations over 90 days (world generated in {generated:.1} s)"
    );

    // 1. Backfill, fake rate limit off, client unlimited.
    let store = fresh_store().await?;
    let src = source(&server, &spec, 7, 0.0);
    let counts_before = server.request_counts();
    let (backfill, e2e, requests) = run(&store, &src, &server).await?;
    let archived = backfill.counts.messages_new as f64;
    let counts = server.request_counts();
    let per =
        |p: &str| counts.get(p).copied().unwrap_or(0) - counts_before.get(p).copied().unwrap_or(0);
    println!(
        "backfill, rate limit off: {:>8.0} messages/s, {requests} requests ({} history pages, {} quick-comment queries), {archived:.0} messages, {e2e:.1} s",
        archived / e2e,
        per(HISTORY_PATH),
        per(QUICK_COMMENT_PATH),
    );

    // 2. Incremental passes with no change.
    for days in [7u32, 7, 1, 0] {
        let src = source(&server, &spec, days, 0.0);
        let (r, secs, requests) = run(&store, &src, &server).await?;
        anyhow::ensure!(
            r.counts.messages_new == 0,
            "a quiet pass archived something"
        );
        println!(
            "incremental, no change, rescan_days = {days}: {requests} requests, {} of {n_conv} conversations read, {secs:.2} s",
            r.conversations
        );
    }

    // 3. Backfill with the fake's rate limit on (100 requests/s per API), client at 90/s.
    if rate_limited {
        server.world().behaviour.rate_limit = Some(100);
        let store = fresh_store().await?;
        let src = source(&server, &spec, 7, 90.0);
        let (r, secs, requests) = run(&store, &src, &server).await?;
        println!(
            "backfill, rate limit on:  {:>8.0} messages/s, {requests} requests ({:.0} requests/s), {} rate-limit waits, {secs:.1} s",
            r.counts.messages_new as f64 / secs,
            requests as f64 / secs,
            r.rate_limit_waits
        );
        server.world().behaviour.rate_limit = None;
    }

    // 4. Baseline: the store alone, the same number of messages, same run.
    let baseline_store = fresh_store().await?;
    let src = SourceName::new("baseline");
    baseline_store
        .register_source(&src, Platform::Yunxin)
        .await?;
    let store_only = support::ingest(&baseline_store, &src, archived as usize).await?;
    println!(
        "store-only ingest:        {:>8.0} messages/s ({store_only:.1} s)",
        archived / store_only
    );
    println!(
        "ratio end-to-end (rate limit off) / store-only: {:.2}",
        store_only / e2e
    );
    println!("peak RSS of this process: {:.0} MB", peak_rss_mb());
    server.shutdown().await;
    Ok(())
}
