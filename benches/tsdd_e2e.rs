//! End-to-end benchmark of a first backfill: `chatvault`'s sync engine and TangSengDaoDao
//! connector read a fake server's world over loopback HTTP into PostgreSQL with durability on
//! (an embedded cluster with its default settings: `fsync`, `synchronous_commit` and full
//! page writes on), search indexing included, default 200,000 messages in 200 conversations;
//! then an incremental pass with no changes; then, in the same run and on the same cluster,
//! a raw binary `COPY` of the same rows (read back from the archive) into a table with the
//! same keys, as the baseline the backfill is measured against.
//!
//! The fake server runs in a child process (this benchmark's binary again), so that the
//! peak resident memory printed is chatvault's own: the peak (`VmHWM`) is reset just before
//! the backfill and read just after the indexing.
//!
//! Run: `cargo bench --bench tsdd_e2e`. Environment:
//! - `CHATVAULT_BENCH_MESSAGES` (default 200000), `CHATVAULT_BENCH_CONVERSATIONS` (200);
//! - `CHATVAULT_BENCH_PAGE_SIZE`: the source's `page_size` (default: the configuration's);
//! - `CHATVAULT_BENCH_RATE_LIMITED=1`: also back-fill a second archive at the default
//!   `requests_per_second`.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chatvault::config::{PlatformConfig, Secret, SourceConfig, TsddAuth, TsddConfig};
use chatvault::index::{self, Indexer, SearchIndex};
use chatvault::model::SourceName;
use chatvault::pg::EmbeddedPostgres;
use chatvault::sim::tangsengdaodao::{SimServer, World, WorldSpec};
use chatvault::store::Store;
use chatvault::sync::{sync_source, SyncOptions};
use chrono::{DateTime, Utc};
use sqlx::Connection;
use support::{env_usize, peak_rss_mb, rss_mb};

const ROLE: &str = "CHATVAULT_BENCH_ROLE";

fn spec() -> WorldSpec {
    let total = env_usize("CHATVAULT_BENCH_MESSAGES", 200_000);
    let conversations = env_usize("CHATVAULT_BENCH_CONVERSATIONS", 200);
    let groups = conversations / 3;
    WorldSpec {
        seed: 42,
        users: conversations,
        groups,
        direct_chats: conversations - groups,
        messages: total,
        ..WorldSpec::default()
    }
}

/// The child: serve the world until stdin closes.
async fn upstream() -> anyhow::Result<()> {
    let t = Instant::now();
    let world = World::generate(&spec());
    let server = SimServer::start(world).await;
    println!("{} {:.1}", server.base_url(), t.elapsed().as_secs_f64());
    std::io::stdout().flush()?;
    tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
    })
    .await?;
    server.shutdown().await;
    Ok(())
}

/// Start the fake server in a child process: its base URL and how long generating took.
fn start_upstream() -> anyhow::Result<(Child, String, f64)> {
    let mut child = Command::new(std::env::current_exe()?)
        .env(ROLE, "upstream")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .map_err(|e| anyhow::anyhow!("the fake server did not start: {e}"))?;
    let mut parts = line.split_whitespace();
    let url = parts
        .next()
        .ok_or_else(|| anyhow::anyhow!("the fake server did not start"))?
        .to_string();
    let took = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    Ok((child, url, took))
}

/// Reset this process's peak resident memory to what it holds now (`clear_refs` 5).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn source_config(name: &str, base_url: &str, requests_per_second: f64) -> SourceConfig {
    let spec = spec();
    let mut tsdd = TsddConfig {
        base_url: base_url.to_string(),
        auth: TsddAuth::Password {
            username: spec.me_username.clone(),
            password: Secret::new(spec.me_password.clone()),
        },
        device_flag: 1,
        page_size: 2000, // the configuration's default
    };
    if let Ok(size) = std::env::var("CHATVAULT_BENCH_PAGE_SIZE") {
        tsdd.page_size = size.parse().expect("CHATVAULT_BENCH_PAGE_SIZE is a number");
    }
    SourceConfig {
        name: SourceName::new(name),
        schedule: "0 */5 * * * *".into(),
        requests_per_second,
        request_timeout: Duration::from_secs(60),
        enabled: true,
        push: true,
        platform: PlatformConfig::Tangsengdaodao(tsdd),
    }
}

/// The engine's defaults, with login sessions kept beside the index (as `chatvault sync`
/// keeps them in the data directory), so the incremental pass does not log in again.
fn sync_options(index_root: &std::path::Path) -> SyncOptions {
    SyncOptions {
        session_dir: Some(index_root.with_file_name("sessions")),
        ..SyncOptions::default()
    }
}

/// What one backfill did.
struct Backfill {
    seconds: f64,
    sync_seconds: f64,
    /// Peak RSS when the sync ended (MB).
    sync_peak: f64,
    messages: u64,
    requests: u64,
}

/// Sync one source and index what it archives beside it, as `chatvault sync` does.
async fn backfill(
    store: &Store,
    source: &SourceConfig,
    index_root: &std::path::Path,
) -> anyhow::Result<Backfill> {
    let t = Instant::now();
    let mut indexer = Indexer::new(SearchIndex::open_or_create(index_root)?);
    let sync = async {
        let result = sync_source(store, source, &sync_options(index_root), None).await;
        (result, t.elapsed().as_secs_f64(), peak_rss_mb())
    };
    let ((result, sync_seconds, sync_peak), report) = indexer
        .index_while(store, index::indexer::FOLLOW_INTERVAL, sync)
        .await;
    anyhow::ensure!(result.ok(), "backfill failed: {:?}", result.error);
    let report = report?;
    anyhow::ensure!(
        report.documents >= result.counts.messages_new,
        "indexed {} documents for {} new messages",
        report.documents,
        result.counts.messages_new
    );
    Ok(Backfill {
        seconds: t.elapsed().as_secs_f64(),
        sync_seconds,
        sync_peak,
        messages: result.counts.messages_new,
        requests: result.counts.requests,
    })
}

/// One row of the baseline table.
#[derive(sqlx::FromRow)]
struct CopyRow {
    source: String,
    conversation_id: String,
    message_id: String,
    seq: Option<i64>,
    sender_id: Option<String>,
    sender_name: Option<String>,
    sent_at: DateTime<Utc>,
    kind: String,
    text: String,
    content: String,
    raw: String,
}

/// PostgreSQL's binary `COPY` encoding.
struct BinaryCopy(Vec<u8>);

impl BinaryCopy {
    fn new() -> BinaryCopy {
        let mut b = Vec::with_capacity(8 << 20);
        b.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        b.extend_from_slice(&0i32.to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes());
        BinaryCopy(b)
    }
    fn fields(&mut self, n: i16) {
        self.0.extend_from_slice(&n.to_be_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(&(v.len() as i32).to_be_bytes());
        self.0.extend_from_slice(v);
    }
    fn text(&mut self, v: Option<&str>) {
        match v {
            Some(s) => self.bytes(s.as_bytes()),
            None => self.0.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    fn int8(&mut self, v: Option<i64>) {
        match v {
            Some(v) => self.bytes(&v.to_be_bytes()),
            None => self.0.extend_from_slice(&(-1i32).to_be_bytes()),
        }
    }
    fn jsonb(&mut self, v: &str) {
        self.0
            .extend_from_slice(&(v.len() as i32 + 1).to_be_bytes());
        self.0.push(1);
        self.0.extend_from_slice(v.as_bytes());
    }
    fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&(-1i16).to_be_bytes());
        self.0
    }
}

/// Microseconds from PostgreSQL's epoch (2000-01-01 UTC).
fn pg_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros() - 946_684_800_000_000
}

/// The baseline: the archived rows, read back, `COPY`ed (binary, 10,000 rows per statement,
/// each its own transaction) into a bare table with the messages' primary key. Only the
/// encoding and the `COPY`s are timed.
async fn raw_copy(options: &sqlx::postgres::PgConnectOptions) -> anyhow::Result<(f64, usize)> {
    let mut conn = sqlx::PgConnection::connect_with(options).await?;
    let rows: Vec<CopyRow> = sqlx::query_as(
        "SELECT m.source, m.conversation_id, m.message_id, m.seq, m.sender_id, m.sender_name,
                m.sent_at, v.kind, v.text, v.content::text AS content, m.raw::text AS raw
         FROM vault.messages m JOIN vault.message_versions v
           ON v.source = m.source AND v.conversation_id = m.conversation_id
          AND v.message_id = m.message_id AND v.version = 1
         ORDER BY m.source, m.conversation_id, m.seq",
    )
    .fetch_all(&mut conn)
    .await?;
    sqlx::query(
        "CREATE TABLE bench_copy (source text, conversation_id text, message_id text, seq bigint,
             sender_id text, sender_name text, sent_at timestamptz, kind text, text text,
             content jsonb, raw jsonb, PRIMARY KEY (source, conversation_id, message_id))",
    )
    .execute(&mut conn)
    .await?;
    let t = Instant::now();
    for chunk in rows.chunks(10_000) {
        let mut data = BinaryCopy::new();
        for r in chunk {
            data.fields(11);
            data.text(Some(&r.source));
            data.text(Some(&r.conversation_id));
            data.text(Some(&r.message_id));
            data.int8(r.seq);
            data.text(r.sender_id.as_deref());
            data.text(r.sender_name.as_deref());
            data.int8(Some(pg_micros(r.sent_at)));
            data.text(Some(&r.kind));
            data.text(Some(&r.text));
            data.jsonb(&r.content);
            data.jsonb(&r.raw);
        }
        let mut copy = conn
            .copy_in_raw("COPY bench_copy FROM STDIN (FORMAT binary)")
            .await?;
        copy.send(data.finish()).await?;
        copy.finish().await?;
    }
    Ok((t.elapsed().as_secs_f64(), rows.len()))
}

async fn bench() -> anyhow::Result<()> {
    let spec = spec();
    let load_before = load_average();
    let (mut child, base_url, generated) = start_upstream()?;
    let dir = tempfile::tempdir()?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    }
    let pg = EmbeddedPostgres::start(dir.path()).await?;
    let options = pg.connect_options();
    let store = Store::connect(options.clone(), 4).await?;
    store.migrate().await?;
    let source = source_config("bench", &base_url, 0.0);
    let page_size = match &source.platform {
        PlatformConfig::Tangsengdaodao(t) => t.page_size,
        _ => unreachable!(),
    };
    println!(
        "end-to-end benchmark: {} messages in {} conversations (fake server in a child process, world generated in {generated:.1} s); page_size {page_size}; load average {load_before}",
        spec.messages,
        spec.groups + spec.direct_chats,
    );

    // 1. Backfill over HTTP, indexing included; the peak RSS is this phase's.
    let rss_start = rss_mb();
    reset_peak_rss();
    let index_root = index::index_dir(dir.path());
    let e2e = backfill(&store, &source, &index_root).await?;
    let peak = peak_rss_mb();

    // 2. An incremental pass with nothing new.
    let t = Instant::now();
    let quiet = sync_source(&store, &source, &sync_options(&index_root), None).await;
    let incremental = t.elapsed().as_secs_f64();
    anyhow::ensure!(quiet.ok(), "incremental pass failed: {:?}", quiet.error);

    // 3. Baseline: raw binary COPY of the same rows, same cluster, same run.
    let (copy, rows) = raw_copy(&options).await?;
    let archived = e2e.messages + quiet.counts.messages_new;
    anyhow::ensure!(
        rows as u64 == archived,
        "{rows} rows for {archived} messages"
    );

    // 4. Optionally, at the default rate limit.
    let limited = if std::env::var("CHATVAULT_BENCH_RATE_LIMITED").is_ok_and(|v| v == "1") {
        let rps = 20.0; // the configuration's default
        let src = source_config("bench_limited", &base_url, rps);
        Some((rps, backfill(&store, &src, &index_root).await?))
    } else {
        None
    };

    let n = e2e.messages as f64;
    let e2e_rate = n / e2e.seconds;
    let copy_rate = n / copy;
    println!(
        "backfill end to end:  {e2e_rate:>9.0} messages/s ({n:.0} messages, {} requests, {:.1} s: sync {:.1} s, indexing done {:.1} s later)",
        e2e.requests,
        e2e.seconds,
        e2e.sync_seconds,
        e2e.seconds - e2e.sync_seconds
    );
    println!("raw binary COPY:      {copy_rate:>9.0} rows/s ({copy:.1} s)");
    println!(
        "ratio end-to-end / raw COPY: {:.2} (target >= 0.50)",
        e2e_rate / copy_rate
    );
    println!(
        "peak RSS during the backfill: {peak:.0} MB (target < 300; {:.0} MB when the sync ended, {rss_start:.0} MB before it)",
        e2e.sync_peak
    );
    println!(
        "incremental pass, no changes: {incremental:.2} s, {} requests over {} conversations",
        quiet.counts.requests, quiet.conversations
    );
    if let Some((rps, b)) = limited {
        println!(
            "backfill at {rps} requests/s: {:.0} messages/s ({} requests, {:.1} s)",
            b.messages as f64 / b.seconds,
            b.requests,
            b.seconds
        );
    }
    println!("load average after: {}", load_average());
    drop(store);
    drop(child.stdin.take());
    let _ = child.wait();
    pg.stop().await?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    if std::env::var(ROLE).is_ok_and(|r| r == "upstream") {
        return upstream().await;
    }
    bench().await
}
