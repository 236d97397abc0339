//! End-to-end benchmark: `chatvault`'s sync engine and Yunhu connector backfill a fake
//! server's world over loopback HTTP + protobuf into PostgreSQL (default 100,000 messages in
//! 200 chats, pages of 30), then an incremental pass with no changes; in the same run, the
//! store-only ingest of the same number of synthetic messages, as the baseline.
//!
//! Run: `cargo bench --bench yunhu_e2e` (`CHATVAULT_BENCH_MESSAGES=20000` for a quick run).

mod support;

use std::time::{Duration, Instant};

use chatvault::config::{PlatformConfig, Secret, SourceConfig, YunhuConfig};
use chatvault::model::{Platform, SourceName};
use chatvault::sim::yunhu::{SimServer, World, WorldSpec};
use chatvault::store::Store;
use chatvault::sync::{sync_source, SyncOptions};
use support::{env_usize, peak_rss_mb, rss_mb};

async fn fresh_store() -> anyhow::Result<Store> {
    let (options, _) = chatvault::pg::testing::fresh_database().await;
    let store = Store::connect(options, 4).await?;
    store.migrate().await?;
    Ok(store)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let total = env_usize("CHATVAULT_BENCH_MESSAGES", 100_000);
    let chats = env_usize("CHATVAULT_BENCH_CONVERSATIONS", 200);
    let groups = chats / 3;
    let bots = chats / 20;
    let spec = WorldSpec {
        seed: 42,
        users: chats,
        groups,
        bots,
        direct_chats: chats - groups - bots,
        messages: total,
        ..WorldSpec::default()
    };
    let t = Instant::now();
    let world = World::generate(&spec);
    let generated = t.elapsed().as_secs_f64();
    let server = SimServer::start(world).await;
    let rss_before = rss_mb();
    println!(
        "yunhu end-to-end benchmark: {total} messages in {chats} chats (world generated in {generated:.1} s, {rss_before:.0} MB resident with it)"
    );

    let source = SourceConfig {
        name: SourceName::new("bench"),
        schedule: "0 */5 * * * *".into(),
        requests_per_second: 0.0,
        request_timeout: Duration::from_secs(30),
        enabled: true,
        push: true,
        platform: PlatformConfig::Yunhu(YunhuConfig {
            base_url: server.base_url(),
            token: Secret::new(spec.token.clone()),
            rescan_messages: 200,
            rescan_days: 7,
            rescan_every_minutes: 60,
            ws_url: chatvault::connector::yunhu::push::DEFAULT_WS_URL.into(),
        }),
    };
    let options = SyncOptions::default();

    // 1. Backfill over HTTP.
    let store = fresh_store().await?;
    let requests_before = server.request_count();
    let t = Instant::now();
    let backfill = sync_source(&store, &source, &options, None).await;
    let e2e = t.elapsed().as_secs_f64();
    anyhow::ensure!(backfill.ok(), "backfill failed: {:?}", backfill.error);
    let requests = server.request_count() - requests_before;
    let archived = backfill.counts.messages_new as f64;

    // 2. An incremental pass with nothing new.
    let requests_before = server.request_count();
    let t = Instant::now();
    let quiet = sync_source(&store, &source, &options, None).await;
    let incremental = t.elapsed().as_secs_f64();
    anyhow::ensure!(quiet.ok(), "incremental pass failed: {:?}", quiet.error);
    let quiet_requests = server.request_count() - requests_before;

    // 3. An incremental pass after 200 changes (new messages, edits, recalls) over the chats.
    let changes = {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
        server.world().random_activity(&mut rng, 200).len()
    };
    let requests_before = server.request_count();
    let t = Instant::now();
    let busy = sync_source(&store, &source, &options, None).await;
    let busy_time = t.elapsed().as_secs_f64();
    anyhow::ensure!(busy.ok(), "incremental pass failed: {:?}", busy.error);
    let busy_requests = server.request_count() - requests_before;
    let peak = peak_rss_mb();

    // 4. Baseline: the store alone, the same number of messages, same run.
    let baseline_store = fresh_store().await?;
    let src = SourceName::new("baseline");
    baseline_store
        .register_source(&src, Platform::Yunhu)
        .await?;
    let store_only = support::ingest(&baseline_store, &src, archived as usize).await?;

    println!(
        "backfill end to end:  {:>9.0} messages/s, {:>7.0} requests/s ({archived:.0} messages, {requests} requests, {e2e:.1} s)",
        archived / e2e,
        requests as f64 / e2e
    );
    println!(
        "store-only ingest:    {:>9.0} messages/s ({store_only:.1} s)",
        archived / store_only
    );
    println!(
        "ratio end-to-end / store-only: {:.2} (target >= 0.40)",
        store_only / e2e
    );
    println!(
        "incremental pass, no changes: {incremental:.3} s, {quiet_requests} requests over {chats} chats"
    );
    println!(
        "incremental pass after {changes} changes: {busy_time:.2} s, {busy_requests} requests, {} chats read (window not due: by-seq catch-up), {} new messages, {} changed",
        busy.conversations, busy.counts.messages_new, busy.counts.messages_changed
    );
    println!(
        "peak RSS of this process: {peak:.0} MB, of which the fake server's world is about {rss_before:.0} MB"
    );
    server.shutdown().await;
    Ok(())
}
