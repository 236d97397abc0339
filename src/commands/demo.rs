//! `chatvault demo`: everything embedded, nothing to configure.
//!
//! Starts the fake upstream of every platform with a seeded world, writes a real
//! configuration file for them into the data directory (secrets in files beside it), opens
//! the embedded PostgreSQL there, syncs once, and then runs the daemon (scheduler, HTTP API
//! and web pages) while the fakes keep producing activity: new messages, edits, recalls,
//! reactions. Ctrl-C stops everything; a temporary data directory is removed again.
//!
//! The temporary data directory is a fresh one with a random name, created mode 0700 (never a
//! predictable path that someone else could have made first); the secret files and the
//! configuration are created mode 0600, private from the first byte.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use futures::future::BoxFuture;
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::common::with_store_and_metrics;
use super::run::{daemon, DaemonExtras};
use crate::attachments::fetcher::AttachmentsRun;
use crate::config::Config;
use crate::store::Store;
use crate::sync::{self, SyncOptions};

#[derive(Debug, Args)]
#[command(
    after_help = "Nothing to configure: it starts a fake upstream server per platform with a seeded \
world (Chinese and English, groups and direct chats), an embedded PostgreSQL, syncs them every 15 s while \
the fakes keep posting, editing, recalling and reacting, and serves the web page. It prints the URL, a \
psql command line and commands to try. Ctrl-C stops everything.\n\nExamples:\n  cargo run --release -- demo\n  \
chatvault demo --data-dir ./demo-archive --listen 127.0.0.1:9000"
)]
pub struct DemoArgs {
    /// Keep the demo's archive here (default: a temporary directory, removed at the end).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Where to serve the web page and API (default: 127.0.0.1:8080, or a free port).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Messages in each fake upstream's world.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    pub messages: u64,
    /// Stop by itself after this many seconds (for scripts and tests).
    #[arg(long, value_name = "SECONDS", hide = true)]
    pub exit_after: Option<u64>,
}

/// How often each demo source syncs.
pub const SCHEDULE: &str = "*/15 * * * * *";

/// How often the fakes produce new activity.
const ACTIVITY_EVERY: Duration = Duration::from_secs(3);

/// A fake upstream serving for the demo.
pub struct Upstream {
    /// The `[[source]]` table of the configuration, secrets by `*_file` only.
    pub source_toml: String,
    /// Secret files to write beside the configuration: (file name, content).
    pub secret_files: Vec<(String, String)>,
    /// Adds some activity to the fake world; returns how many changes it made.
    pub activity: Box<dyn FnMut(&mut StdRng) -> usize + Send>,
    pub stop: BoxFuture<'static, ()>,
}

/// The fake TangSengDaoDao server with about `messages` messages.
async fn tangsengdaodao(messages: usize, secrets: &Path) -> anyhow::Result<Upstream> {
    use crate::sim::tangsengdaodao::{SimServer, World, WorldSpec};
    let spec = WorldSpec {
        seed: 11,
        users: 16,
        groups: 5,
        direct_chats: 8,
        messages,
        end_time: chrono::Utc::now().timestamp() - 60,
        days: 30,
        ..WorldSpec::default()
    };
    let server = SimServer::start(World::generate(&spec)).await;
    let secret = "demo-tsdd-password".to_string();
    Ok(Upstream {
        source_toml: format!(
            "[[source]]\nname = \"demo-tangsengdaodao\"\nplatform = \"tangsengdaodao\"\n\
             base_url = \"{}\"\nusername = \"{}\"\npassword_file = \"{}\"\n\
             schedule = \"{SCHEDULE}\"\nrequests_per_second = 200\n",
            server.base_url(),
            spec.me_username,
            toml_path(&secrets.join(&secret))
        ),
        secret_files: vec![(secret, spec.me_password.clone())],
        activity: Box::new(crate::sim::activity(server.world_handle(), 6)),
        stop: Box::pin(server.shutdown()),
    })
}

/// The fake NetEase Yunxin server: two archived accounts, teams, a super team, direct chats;
/// it posts its message copies to the demo daemon's hook on `listen`.
async fn yunxin(messages: usize, secrets: &Path, listen: SocketAddr) -> anyhow::Result<Upstream> {
    use crate::sim::yunxin::{now_ms, send_copies, CopySigning, SimServer, World, WorldSpec};
    let spec = WorldSpec {
        seed: 12,
        messages,
        end_ms: now_ms() - 60_000,
        days: 30,
        ..WorldSpec::default()
    };
    let mut world = World::generate(&spec);
    world.enable_copies();
    let accounts = world.accounts.clone();
    let server = SimServer::start(world).await;
    let copier = send_copies(
        server.world_handle(),
        format!("http://{listen}/hooks/yunxin/demo-yunxin"),
        std::sync::Arc::new(std::sync::Mutex::new(CopySigning::Right)),
        Duration::from_millis(100),
        std::sync::Arc::default(),
    );
    let secret = "demo-yunxin-app-secret".to_string();
    Ok(Upstream {
        source_toml: format!(
            "[[source]]\nname = \"demo-yunxin\"\nplatform = \"yunxin\"\nbase_url = \"{}\"\n\
             app_key = \"{}\"\napp_secret_file = \"{}\"\naccounts = [{}]\n\
             schedule = \"{SCHEDULE}\"\nrequests_per_second = 90\n",
            server.base_url(),
            spec.app_key,
            toml_path(&secrets.join(&secret)),
            accounts
                .iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        secret_files: vec![(secret, spec.app_secret.clone())],
        activity: Box::new(crate::sim::activity(server.world_handle(), 6)),
        stop: Box::pin(async move {
            copier.abort();
            server.shutdown().await
        }),
    })
}

/// The fake Yunhu server: direct chats, groups and bots, with edit histories and recalls.
async fn yunhu(messages: usize, secrets: &Path) -> anyhow::Result<Upstream> {
    use crate::sim::yunhu::{SimServer, World, WorldSpec};
    let spec = WorldSpec {
        seed: 13,
        messages,
        end_time_ms: (chrono::Utc::now().timestamp_millis() - 60_000).max(0) as u64,
        days: 30,
        ..WorldSpec::default()
    };
    let server = SimServer::start(World::generate(&spec)).await;
    let secret = "demo-yunhu-token".to_string();
    Ok(Upstream {
        source_toml: format!(
            "[[source]]\nname = \"demo-yunhu\"\nplatform = \"yunhu\"\nbase_url = \"{}\"\n\
             ws_url = \"{}\"\n\
             token_file = \"{}\"\nschedule = \"{SCHEDULE}\"\nrescan_every_minutes = 0\n\
             requests_per_second = 200\n",
            server.base_url(),
            server.ws_url(),
            toml_path(&secrets.join(&secret)),
        ),
        secret_files: vec![(secret, spec.token.clone())],
        activity: Box::new(crate::sim::activity(server.world_handle(), 6)),
        stop: Box::pin(server.shutdown()),
    })
}

/// A path as a TOML basic string's content.
fn toml_path(p: &Path) -> String {
    p.display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

/// Where the demo keeps its data, and whether to remove it at the end: the given directory
/// (made private), or a new private temporary one.
fn data_dir(given: Option<&Path>) -> anyhow::Result<(PathBuf, bool)> {
    let (dir, temporary) = match given {
        Some(d) => {
            crate::files::prepare_data_dir(d)
                .with_context(|| format!("cannot use {} as the data directory", d.display()))?;
            (d.to_path_buf(), false)
        }
        None => {
            // mkdtemp: a new directory, mode 0700, under a random name.
            let temp = tempfile::Builder::new()
                .prefix("chatvault-demo-")
                .tempdir()
                .context("cannot create a temporary data directory")?;
            (temp.keep(), true)
        }
    };
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    Ok((dir, temporary))
}

/// The address to serve on: the one given, else 127.0.0.1:8080, else any free port.
fn listen_address(given: Option<SocketAddr>) -> anyhow::Result<SocketAddr> {
    let candidates: Vec<SocketAddr> = match given {
        Some(a) => vec![a],
        None => vec![
            SocketAddr::from(([127, 0, 0, 1], 8080)),
            SocketAddr::from(([127, 0, 0, 1], 0)),
        ],
    };
    let mut last = None;
    for address in candidates {
        match std::net::TcpListener::bind(address) {
            Ok(l) => return Ok(l.local_addr()?),
            Err(e) => last = Some((address, e)),
        }
    }
    let (address, e) = last.expect("at least one candidate");
    Err(anyhow::Error::new(e).context(format!("cannot listen on {address}")))
}

pub async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let (dir, temporary) = data_dir(args.data_dir.as_deref())?;
    let listen = listen_address(args.listen)?;
    let result = run_in(&dir, listen, &args).await;
    if temporary {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove the demo's data directory");
        }
    }
    result
}

async fn run_in(dir: &Path, listen: SocketAddr, args: &DemoArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let secrets = dir.join("secrets");
    crate::files::create_private_dir_all(&secrets)
        .with_context(|| format!("cannot create {}", secrets.display()))?;
    eprintln!(
        "starting the fake upstreams (seeded worlds, {} messages each)…",
        args.messages
    );
    let messages = args.messages as usize;
    let mut upstreams = vec![
        tangsengdaodao(messages, &secrets).await?,
        yunxin(messages, &secrets, listen).await?,
        yunhu(messages, &secrets).await?,
    ];

    let mut toml = format!(
        "# Written by `chatvault demo` for its fake upstreams.\n\n[storage]\ndata_dir = \"{}\"\n\n\
         [server]\nlisten = \"{listen}\"\n\n\
         # The fakes run on this machine: their files can be fetched quickly.\n\
         [attachments]\nrequests_per_second = 500\nconcurrency = 8\n\n",
        toml_path(dir)
    );
    for u in &upstreams {
        toml.push_str(&u.source_toml);
        toml.push('\n');
        for (name, content) in &u.secret_files {
            write_secret(&secrets.join(name), content)?;
        }
    }
    let config_path = dir.join("chatvault.toml");
    crate::files::write_private(&config_path, toml.as_bytes())
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    let config = crate::config::load(Some(&config_path))
        .map_err(|errors| {
            anyhow::anyhow!(
                "the demo's configuration is invalid: {}",
                errors
                    .0
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?
        .config;

    let exit_after = args.exit_after.map(Duration::from_secs);
    let mut activities = Vec::new();
    let mut stops = Vec::new();
    for u in upstreams.drain(..) {
        activities.push(u.activity);
        stops.push(u.stop);
    }
    let settings = config.clone();
    let metrics = crate::metrics::Metrics::new();
    let daemon_metrics = metrics.clone();
    let code = with_store_and_metrics(&config, true, Some(metrics), move |store| async move {
        first_sync(&store, &settings).await;
        let (ready, listening) = tokio::sync::oneshot::channel();
        let banner = {
            let store = store.clone();
            let settings = settings.clone();
            tokio::spawn(async move {
                if listening.await.is_ok() {
                    print_banner(
                        &store,
                        &settings,
                        &config_path,
                        started,
                        exit_after.is_some(),
                    )
                    .await;
                }
            })
        };
        let activity = tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(7);
            loop {
                tokio::time::sleep(ACTIVITY_EVERY).await;
                let changes: usize = activities.iter_mut().map(|a| a(&mut rng)).sum();
                tracing::debug!(changes, "new activity in the fake worlds");
            }
        });
        let extras = DaemonExtras {
            metrics: Some(daemon_metrics),
            lifetime: exit_after,
            ready: Some(ready),
        };
        let code = daemon(store, settings, extras).await;
        banner.abort();
        activity.abort();
        code
    })
    .await;
    futures::future::join_all(stops).await;
    eprintln!("demo stopped");
    code
}

/// A secret file, mode 0600 from its creation.
fn write_secret(path: &Path, content: &str) -> anyhow::Result<()> {
    crate::files::write_private(path, content.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// One pass over every source before serving, its attachments fetched after it, so the
/// page shows an archive with its images at once.
async fn first_sync(store: &Store, config: &Config) {
    let options = SyncOptions {
        max_retries: config.sync.max_retries,
        session_dir: Some(sync::session_dir(&config.storage.data_dir)),
        ..SyncOptions::default()
    };
    let attachments = match AttachmentsRun::from_config(config, None) {
        Ok(run) => run,
        Err(e) => {
            eprintln!("attachments will not be fetched: {e:#}");
            None
        }
    };
    for source in &config.sources {
        let t = Instant::now();
        let r = sync::sync_source(store, source, &options, None).await;
        match &r.error {
            None => eprintln!(
                "synced {}: {} messages in {} conversations ({:.1} s)",
                source.name,
                r.counts.messages_new,
                r.conversations,
                t.elapsed().as_secs_f64()
            ),
            Some(e) => eprintln!("sync of {} failed: {e}", source.name),
        }
        let Some(run) = attachments.as_ref() else {
            continue;
        };
        let t = Instant::now();
        // fetch_source logs a failure once
        if let Ok(r) = run.fetch(store, source, None, None).await {
            eprintln!(
                "fetched {}'s attachments: {} files stored ({:.1} s)",
                source.name,
                r.stored,
                t.elapsed().as_secs_f64()
            );
        }
    }
}

async fn print_banner(
    store: &Store,
    config: &Config,
    config_path: &Path,
    started: Instant,
    scripted: bool,
) {
    let psql = psql_line(store).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read the database's connection facts");
        "(unknown)".to_string()
    });
    let c = config_path.display();
    let sources: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
    let mut b = String::new();
    let _ = writeln!(
        b,
        "\nchatvault demo is running (ready in {:.0} s)\n",
        started.elapsed().as_secs_f64()
    );
    let _ = writeln!(b, "  web page   http://{}/", config.server.listen);
    let _ = writeln!(b, "  database   psql {psql}");
    let _ = writeln!(b, "  sources    {} (fake upstreams, syncing every 15 s while they keep posting, editing, recalling and reacting)", sources.join(", "));
    let _ = writeln!(b, "\n  try        chatvault --config {c} status");
    let _ = writeln!(
        b,
        "             chatvault --config {c} export --format csv | head"
    );
    let _ = writeln!(
        b,
        "             psql {psql} -c 'SELECT conversation_id, message_id, version, text FROM archive.message_versions WHERE version > 1 LIMIT 10'"
    );
    let _ = writeln!(
        b,
        "             curl -s http://{}/api/status",
        config.server.listen
    );
    if scripted {
        let _ = writeln!(
            b,
            "\n  stops by itself (--exit-after); Ctrl-C stops it earlier."
        );
    } else {
        let _ = writeln!(b, "\n  Ctrl-C stops everything.");
    }
    println!("{b}");
}

/// `"host=… port=… user=… dbname=…"` for the database the store is connected to.
async fn psql_line(store: &Store) -> anyhow::Result<String> {
    let (user, db, sockets, port) = store.connection_facts().await?;
    let host = sockets
        .split(',')
        .next()
        .unwrap_or("")
        .trim()
        .trim_matches('"')
        .to_string();
    Ok(format!(
        "\"host={host} port={port} user={user} dbname={db}\""
    ))
}
