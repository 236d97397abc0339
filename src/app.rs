//! What each subcommand does: open the configuration and the store, run, print.
//!
//! Output for people goes to stdout (one JSON object per line with `--json`); logs and
//! errors go to stderr. Every command returns an exit code.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context};
use sqlx::postgres::PgConnectOptions;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::cli::{
    Cli, Command, ConfigCommand, ExportArgs, SearchArgs, SearchSort, SimArgs, SimPlatform,
    StatusArgs,
};
use crate::config::{self, Config, SourceConfig};
use crate::http::{self, ApiState};
use crate::index::{self, Indexer, SearchIndex, SearchRequest};
use crate::metrics::Metrics;
use crate::pg::EmbeddedPostgres;
use crate::scheduler::{self, Scheduler, SchedulerOptions};
use crate::store::{ExpectedHead, Store};
use crate::sync::{self, SyncOptions};

/// Exit codes.
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;

/// How often the daemon's indexer looks for new events (the index lags a committed page by
/// about this plus the time to index it).
pub const INDEX_INTERVAL: Duration = Duration::from_millis(500);

pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Config(ConfigCommand::Check) => config_check(cli.config.as_deref()),
        Command::Migrate => {
            let config = load_config(cli.config.as_deref(), true)?;
            with_store(&config, false, |store| async move {
                store.migrate().await.context("applying migrations")?;
                let n = crate::store::MIGRATOR.iter().count();
                println!("migrations current ({n} applied)");
                Ok(EXIT_OK)
            })
            .await
        }
        Command::Status(args) => {
            let config = load_config(cli.config.as_deref(), true)?;
            let settings = config.clone();
            with_store(&config, true, |store| status(store, settings, args)).await
        }
        Command::Verify(args) => {
            let mut heads = Vec::new();
            for h in &args.heads {
                heads.push(ExpectedHead::parse(h).map_err(anyhow::Error::msg)?);
            }
            let config = load_config(cli.config.as_deref(), true)?;
            let index_dir = index::index_dir(&config.storage.data_dir);
            with_store(&config, true, |store| verify(store, heads, index_dir)).await
        }
        Command::Sync(args) => {
            let config = load_config(cli.config.as_deref(), false)?;
            let selected = select_sources(&config, &args.sources)?;
            let settings = config.clone();
            with_store(&config, true, move |store| {
                sync(store, settings, selected, args.full)
            })
            .await
        }
        Command::Run => {
            let config = load_config(cli.config.as_deref(), false)?;
            daemon_preflight(&config)?;
            let settings = config.clone();
            let metrics = Metrics::new();
            let extras = DaemonExtras {
                metrics: Some(metrics.clone()),
                ..DaemonExtras::default()
            };
            with_store_and_metrics(&config, true, Some(metrics), move |store| {
                daemon(store, settings, extras)
            })
            .await
        }
        Command::Search(args) => {
            let request = search_request(&args)?;
            let config = load_config(cli.config.as_deref(), true)?;
            let index_dir = index::index_dir(&config.storage.data_dir);
            // No index: say so before starting a database for nothing.
            if SearchIndex::open(&index_dir)?.is_none() {
                bail!(index::SearchError::NoIndex);
            }
            with_store(&config, true, move |store| {
                search(store, index_dir, request, args.json)
            })
            .await
        }
        Command::Reindex => {
            let config = load_config(cli.config.as_deref(), true)?;
            prepare_data_dir(&config)?;
            let index_dir = index::index_dir(&config.storage.data_dir);
            with_store(&config, true, move |store| reindex(store, index_dir)).await
        }
        Command::Export(args) => {
            let config = load_config(cli.config.as_deref(), true)?;
            with_store(&config, true, |store| export(store, args)).await
        }
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Sim(args) => sim(args).await,
    }
}

/// What `run` checks before it opens the store: something to schedule, valid schedules.
fn daemon_preflight(config: &Config) -> anyhow::Result<()> {
    if !config.sources.iter().any(|s| s.enabled) {
        bail!("no enabled sources to schedule: add a [[source]] to the configuration (see deploy/chatvault.example.toml) or set `enabled = true` on one");
    }
    for source in config.sources.iter().filter(|s| s.enabled) {
        scheduler::parse_schedule(source.name.as_str(), &source.schedule)?;
    }
    Ok(())
}

/// Makes the data directory private (see [`crate::files::prepare_data_dir`]) before anything
/// is written into it.
fn prepare_data_dir(config: &Config) -> anyhow::Result<()> {
    let dir = &config.storage.data_dir;
    crate::files::prepare_data_dir(dir)
        .with_context(|| format!("cannot use {} as the data directory", dir.display()))?;
    Ok(())
}

/// What `run` and `demo` add to a daemon.
#[derive(Default)]
pub(crate) struct DaemonExtras {
    /// The registry to serve (created by the caller so that the embedded PostgreSQL's
    /// supervisor counts into it); a new one if `None`.
    pub metrics: Option<std::sync::Arc<Metrics>>,
    /// Stop by itself after this long.
    pub lifetime: Option<Duration>,
    /// Told once the HTTP API listens.
    pub ready: Option<tokio::sync::oneshot::Sender<()>>,
}

/// `chatvault run`: the scheduler and the HTTP API until SIGTERM or Ctrl-C (or, given a
/// `lifetime`, until it has passed). The first signal stops scheduling and lets running runs
/// stop between pages, for at most `server.shutdown_timeout`; a second signal exits at once.
pub(crate) async fn daemon(
    store: Store,
    config: Config,
    extras: DaemonExtras,
) -> anyhow::Result<i32> {
    let DaemonExtras {
        metrics,
        lifetime,
        ready,
    } = extras;
    use tokio::signal::unix::{signal, SignalKind};

    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let metrics = metrics.unwrap_or_else(Metrics::new);
    prepare_data_dir(&config)?;
    let scheduler = Scheduler::new(
        store.clone(),
        metrics.clone(),
        &config.sources,
        SchedulerOptions::from_config(&config),
    )?;
    let schedules: Vec<String> = config
        .sources
        .iter()
        .filter(|s| s.enabled)
        .map(|s| format!("{} ({})", s.name, s.schedule))
        .collect();
    info!(
        sources = %schedules.join(", "),
        listen = %config.server.listen,
        max_concurrent_sources = config.sync.max_concurrent_sources,
        "chatvault daemon started"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let search_index = SearchIndex::open_or_create(&index::index_dir(&config.storage.data_dir))?;
    let indexer = tokio::spawn(Indexer::new(search_index.clone()).follow(
        store.clone(),
        INDEX_INTERVAL,
        stop_rx.clone(),
    ));
    // The API's address is checked and bound before anything runs: an address in use or a
    // public address without a token is a startup error, not a daemon without its API.
    let state = ApiState::new(&store, metrics.clone())
        .with_server(&config.server)
        .with_sources(config.sources.clone())
        .with_search(search_index)
        .with_scheduler(scheduler.state());
    let listener = http::bind(config.server.listen).await?;
    if let Some(ready) = ready {
        let _ = ready.send(());
    }
    let api = {
        let stop = stop_rx.clone();
        let shutdown_timeout = config.server.shutdown_timeout;
        tokio::spawn(async move {
            if let Err(e) = http::serve_on(listener, state, stop, shutdown_timeout).await {
                warn!(error = %format!("{e:#}"), "the HTTP API stopped serving");
            }
        })
    };
    let mut runs = tokio::spawn(scheduler.run(stop_rx));

    let signal_name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
        () = async {
            match lifetime {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        } => "end of lifetime",
    };
    let deadline = config.server.shutdown_timeout;
    info!(
        signal = signal_name,
        deadline_seconds = deadline.as_secs(),
        "stopping: no new runs, running ones stop after their current page (a second signal exits at once)"
    );
    let _ = stop_tx.send(true);
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
        eprintln!("error: second signal, exiting at once");
        std::process::exit(130);
    });
    if tokio::time::timeout(deadline, &mut runs).await.is_err() {
        warn!(
            deadline_seconds = deadline.as_secs(),
            "runs still going at the shutdown deadline: stopping them (the archive stays consistent; the next run resumes)"
        );
        runs.abort();
        let _ = runs.await;
    }
    if tokio::time::timeout(Duration::from_secs(2), api)
        .await
        .is_err()
    {
        warn!("the HTTP API did not stop in time");
    }
    if tokio::time::timeout(Duration::from_secs(5), indexer)
        .await
        .is_err()
    {
        warn!("the indexer did not stop in time");
    }
    info!("chatvault daemon stopped");
    Ok(EXIT_OK)
}

/// Until Ctrl-C: add activity to a fake world every `--activity-every` seconds; then stop
/// its server.
async fn serve_sim(
    args: &SimArgs,
    mut activity: impl FnMut(&mut rand::rngs::StdRng) -> usize + Send + 'static,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<i32> {
    let task = (args.activity_every > 0).then(|| {
        let every = Duration::from_secs(args.activity_every);
        let seed = args.seed;
        tokio::spawn(async move {
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
            loop {
                tokio::time::sleep(every).await;
                let changes = activity(&mut rng);
                tracing::info!(changes, "new activity in the fake world");
            }
        })
    });
    tokio::signal::ctrl_c()
        .await
        .context("cannot wait for Ctrl-C")?;
    if let Some(task) = task {
        task.abort();
    }
    stop.await;
    Ok(EXIT_OK)
}

/// `chatvault sim`: serve a generated fake upstream until Ctrl-C.
async fn sim(args: SimArgs) -> anyhow::Result<i32> {
    match args.platform {
        SimPlatform::Tangsengdaodao => sim_tsdd(args).await,
        SimPlatform::Yunxin => sim_yunxin(args).await,
        SimPlatform::Yunhu => sim_yunhu(args).await,
    }
}

/// `chatvault sim yunhu`: the fake Yunhu user API; prints the base_url and the token.
async fn sim_yunhu(args: SimArgs) -> anyhow::Result<i32> {
    use crate::sim::yunhu::{SimServer, World, WorldSpec};
    let conversations = args.conversations as usize;
    let groups = (conversations / 3).max(1);
    let bots = (conversations / 10).max(1);
    let direct_chats = conversations.saturating_sub(groups + bots).max(1);
    let spec = WorldSpec {
        seed: args.seed,
        users: direct_chats.max(8) + 4,
        groups,
        bots,
        direct_chats,
        messages: args.messages as usize,
        ..WorldSpec::default()
    };
    let started = std::time::Instant::now();
    let world = World::generate(&spec);
    let server = SimServer::start_on(world, args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let base_url = server.base_url();
    println!(
        "fake Yunhu server on {base_url} ({} messages, {} chats, generated in {:.1}s)",
        args.messages,
        direct_chats + groups + bots,
        started.elapsed().as_secs_f64()
    );
    println!("archive it with this configuration (then `chatvault --config sim.toml sync`):\n");
    println!(
        "[[source]]\nname = \"sim-yunhu\"\nplatform = \"yunhu\"\nbase_url = \"{base_url}\"\ntoken_env = \"SIM_YUNHU_TOKEN\"   # export SIM_YUNHU_TOKEN={}\nrequests_per_second = 200\n",
        spec.token
    );
    println!("Ctrl-C stops the server.");
    let activity = crate::sim::activity(server.world_handle(), 5);
    serve_sim(&args, activity, server.shutdown()).await
}

async fn sim_tsdd(args: SimArgs) -> anyhow::Result<i32> {
    use crate::sim::tangsengdaodao::{SimServer, World, WorldSpec};
    let conversations = args.conversations as usize;
    let groups = (conversations / 3).max(1);
    let direct_chats = conversations - groups;
    let spec = WorldSpec {
        seed: args.seed,
        users: direct_chats.max(8) + 4,
        groups,
        direct_chats,
        messages: args.messages as usize,
        ..WorldSpec::default()
    };
    let started = std::time::Instant::now();
    let world = World::generate(&spec);
    let server = SimServer::start_on(world, args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let base_url = server.base_url();
    println!(
        "fake TangSengDaoDao server on {base_url} ({} messages, {conversations} conversations, generated in {:.1}s)",
        args.messages,
        started.elapsed().as_secs_f64()
    );
    println!("archive it with this configuration (then `chatvault --config sim.toml sync`):\n");
    println!(
        "[[source]]\nname = \"sim-tsdd\"\nplatform = \"tangsengdaodao\"\nbase_url = \"{base_url}\"\nusername = \"{}\"\npassword_env = \"SIM_TSDD_PASSWORD\"   # export SIM_TSDD_PASSWORD={}\nrequests_per_second = 200\n",
        spec.me_username, spec.me_password
    );
    println!("Ctrl-C stops the server.");
    let activity = crate::sim::activity(server.world_handle(), 5);
    serve_sim(&args, activity, server.shutdown()).await
}

/// `chatvault sim yunxin`: a fake Yunxin app whose timeline ends now.
async fn sim_yunxin(args: SimArgs) -> anyhow::Result<i32> {
    use crate::sim::yunxin::{now_ms, SimServer, World, WorldSpec};
    let conversations = args.conversations as usize;
    let spec = WorldSpec {
        seed: args.seed,
        accounts: 2,
        users: (conversations / 2).max(4) + 4,
        teams: (conversations / 4).max(1),
        super_teams: 1,
        direct_chats: (conversations / 3).max(1),
        messages: args.messages as usize,
        end_ms: now_ms() - 60_000,
        days: 60,
        ..WorldSpec::default()
    };
    let started = std::time::Instant::now();
    let world = World::generate(&spec);
    let accounts = world.accounts.clone();
    let server = SimServer::start_on(world, args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let base_url = server.base_url();
    println!(
        "fake Yunxin server on {base_url} ({} messages, {} conversations, generated in {:.1}s)",
        args.messages,
        server.world().conversations.len(),
        started.elapsed().as_secs_f64()
    );
    println!("app_key    = {}", spec.app_key);
    println!("app_secret = {}", spec.app_secret);
    println!("accounts   = {}", accounts.join(", "));
    println!("archive it with this configuration (then `chatvault --config sim.toml sync`):\n");
    println!(
        "[[source]]\nname = \"sim-yunxin\"\nplatform = \"yunxin\"\nbase_url = \"{base_url}\"\napp_key = \"{}\"\napp_secret_env = \"SIM_YUNXIN_SECRET\"   # export SIM_YUNXIN_SECRET={}\naccounts = [{}]\nrequests_per_second = 90\n",
        spec.app_key,
        spec.app_secret,
        accounts
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("The server allows 100 requests/s per API, as Yunxin's standard package does. Ctrl-C stops it.");
    let activity = crate::sim::activity(server.world_handle(), 5);
    serve_sim(&args, activity, server.shutdown()).await
}

/// Load the configuration; `offline` for commands that never contact upstream (a source's
/// missing secret is then only a warning).
fn load_config(path: Option<&Path>, offline: bool) -> anyhow::Result<Config> {
    let loaded = if offline {
        config::load_offline(path)
    } else {
        config::load(path)
    };
    match loaded {
        Ok(loaded) => {
            for w in &loaded.warnings {
                tracing::warn!("{w}");
            }
            Ok(loaded.config)
        }
        Err(errors) if errors.0.len() == 1 => bail!("{}", errors.0[0]),
        Err(errors) => {
            for p in &errors.0 {
                eprintln!("{p}");
            }
            bail!(
                "the configuration has {} problems (listed above; `chatvault config check` lists them too)",
                errors.0.len()
            )
        }
    }
}

fn config_check(path: Option<&Path>) -> anyhow::Result<i32> {
    match config::load(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                println!("warning: {w}");
            }
            let file = loaded
                .config
                .path
                .as_ref()
                .map_or("no configuration file, defaults".to_string(), |p| {
                    p.display().to_string()
                });
            println!(
                "config ok: {file}: {} source(s)",
                loaded.config.sources.len()
            );
            Ok(EXIT_OK)
        }
        Err(errors) => {
            for p in &errors.0 {
                println!("{p}");
            }
            eprintln!("error: {} problem(s) in the configuration", errors.0.len());
            Ok(EXIT_FAILED)
        }
    }
}

/// Open the store (starting the embedded cluster when no URL is configured), run `f`, and
/// stop the embedded cluster again if this process started it.
pub(crate) async fn with_store<F, Fut>(config: &Config, migrate: bool, f: F) -> anyhow::Result<i32>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<i32>>,
{
    with_store_and_metrics(config, migrate, None, f).await
}

/// [`with_store`], counting restarts of the embedded cluster (which is watched and started
/// again should it die while `f` runs) into `metrics`.
pub(crate) async fn with_store_and_metrics<F, Fut>(
    config: &Config,
    migrate: bool,
    metrics: Option<std::sync::Arc<Metrics>>,
    f: F,
) -> anyhow::Result<i32>
where
    F: FnOnce(Store) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<i32>>,
{
    let (options, embedded) = match &config.database.url {
        Some(url) => {
            let options = PgConnectOptions::from_str(url.expose()).map_err(|_| {
                anyhow::anyhow!(
                    "database.url is not a valid PostgreSQL URL (postgres://user@host/db)"
                )
            })?;
            (options, None)
        }
        None => {
            // Creates the data directory, or makes it private.
            let pg = EmbeddedPostgres::start(&config.storage.data_dir).await?;
            let options = pg.connect_options();
            let on_restart: Box<dyn Fn() + Send + Sync> = match metrics {
                Some(metrics) => {
                    metrics.embedded_postgres_watched();
                    Box::new(move || metrics.embedded_postgres_restarted())
                }
                None => Box::new(|| {}),
            };
            (options, Some(pg.supervise(on_restart)))
        }
    };
    let result = async {
        let store = Store::connect(options, config.database.max_connections)
            .await
            .context("cannot connect to PostgreSQL")?;
        if migrate {
            store.migrate().await.context("applying migrations")?;
            for source in &config.sources {
                store
                    .register_source(&source.name, source.platform_key())
                    .await?;
            }
        }
        let code = f(store.clone()).await;
        store.pool().close().await;
        code
    }
    .await;
    if let Some(pg) = embedded {
        if let Err(e) = pg.stop().await {
            tracing::warn!(error = %e, "could not stop the embedded PostgreSQL");
        }
    }
    result
}

async fn status(store: Store, config: Config, args: StatusArgs) -> anyhow::Result<i32> {
    let mut statuses = store.status().await?;
    let now = chrono::Utc::now();
    crate::scheduler::fill_next_runs(&mut statuses, &config.sources, now);
    let mut out = std::io::stdout().lock();
    if args.json {
        for s in &statuses {
            writeln!(out, "{}", serde_json::to_string(s)?)?;
        }
        return Ok(EXIT_OK);
    }
    if statuses.is_empty() {
        writeln!(
            out,
            "no sources yet: add a [[source]] to the configuration (see deploy/chatvault.example.toml), then run `chatvault sync`"
        )?;
        return Ok(EXIT_OK);
    }
    for s in &statuses {
        writeln!(out, "{} ({})", s.source, s.platform)?;
        writeln!(
            out,
            "  conversations {}  messages {}  versions {}  reactions {}  events {}",
            s.conversations, s.messages, s.versions, s.reactions, s.events
        )?;
        writeln!(
            out,
            "  quarantine {}  seq gaps {}  cursors {}",
            s.quarantine, s.gaps, s.cursors
        )?;
        writeln!(out, "  chain head {}", s.chain_head)?;
        match &s.last_run {
            Some(r) => {
                let lag = s.lag_seconds.map_or("never succeeded".to_string(), |l| {
                    format!("{l}s since the last success")
                });
                writeln!(
                    out,
                    "  last run #{} {} at {} ({} new, {} changed, {} requests, {} retries; {lag})",
                    r.run_id,
                    r.status,
                    r.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    r.messages_new,
                    r.messages_changed,
                    r.requests,
                    r.retries
                )?;
                if let Some(secs) = r.duration_seconds {
                    writeln!(
                        out,
                        "  took {secs:.1}s; failed runs in a row: {}",
                        s.failures_in_a_row
                    )?;
                }
                if let Some(e) = &r.error {
                    writeln!(out, "  error: {}", crate::terminal::escape_line(e))?;
                }
            }
            None => writeln!(out, "  never synced")?,
        }
        if let Some(t) = s.newest_message_at {
            let behind = (now - t).num_seconds().max(0);
            writeln!(
                out,
                "  newest message {} ({behind}s ago)",
                t.format("%Y-%m-%d %H:%M:%S UTC")
            )?;
        }
        if let Some(t) = s.next_run_at {
            writeln!(
                out,
                "  next scheduled run {}",
                t.format("%Y-%m-%d %H:%M:%S UTC")
            )?;
        }
    }
    Ok(EXIT_OK)
}

async fn verify(
    store: Store,
    heads: Vec<ExpectedHead>,
    index_dir: std::path::PathBuf,
) -> anyhow::Result<i32> {
    let report = store.verify(&heads).await?;
    let index_ok = verify_index(&store, &index_dir).await?;
    let mut out = std::io::stdout().lock();
    for (source, events, head) in &report.sources {
        writeln!(out, "{source}: {events} events, head {head}")?;
    }
    writeln!(out, "{} message versions checked", report.versions_checked)?;
    if report.ok() {
        writeln!(out, "ok: every chain is intact")?;
        return Ok(if index_ok { EXIT_OK } else { EXIT_FAILED });
    }
    for f in &report.failures {
        match f.event_seq {
            Some(seq) => eprintln!(
                "verify failed: source {}, event {seq}: {}",
                f.source, f.problem
            ),
            None => eprintln!("verify failed: source {}: {}", f.source, f.problem),
        }
    }
    Ok(EXIT_FAILED)
}

/// The sources a `sync` runs: the named ones, or every enabled one.
fn select_sources(config: &Config, names: &[String]) -> anyhow::Result<Vec<SourceConfig>> {
    for name in names {
        if !config.sources.iter().any(|s| s.name.as_str() == name) {
            let known: Vec<&str> = config.sources.iter().map(|s| s.name.as_str()).collect();
            bail!(
                "no source named {name:?} in the configuration (configured: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            );
        }
    }
    let selected: Vec<SourceConfig> = config
        .sources
        .iter()
        .filter(|s| {
            if names.is_empty() {
                s.enabled
            } else {
                names.iter().any(|n| n == s.name.as_str())
            }
        })
        .cloned()
        .collect();
    if selected.is_empty() {
        bail!("no sources to sync: add a [[source]] to the configuration (see deploy/chatvault.example.toml)");
    }
    Ok(selected)
}

async fn sync(
    store: Store,
    config: Config,
    selected: Vec<SourceConfig>,
    full: bool,
) -> anyhow::Result<i32> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::warn!("stopping after the current pages (Ctrl-C again to exit at once)");
            let _ = stop_tx.send(true);
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    let options = SyncOptions {
        full,
        max_retries: config.sync.max_retries,
        progress_bar: std::io::stderr().is_terminal(),
        session_dir: Some(sync::session_dir(&config.storage.data_dir)),
        ..SyncOptions::default()
    };
    let limit = config.sync.max_concurrent_sources.max(1);
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(limit));
    let mut tasks = Vec::new();
    for source in selected {
        let store = store.clone();
        let options = options.clone();
        let stop = stop_rx.clone();
        let semaphore = semaphore.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            sync::sync_source(&store, &source, &options, Some(stop)).await
        }));
    }
    let mut failed = false;
    let mut out = std::io::stdout().lock();
    for task in tasks {
        let r = task.await.context("a sync task panicked")?;
        let c = &r.counts;
        if r.skipped {
            writeln!(
                out,
                "{}: skipped, another chatvault process is syncing it",
                r.source
            )?;
            continue;
        }
        let line = format!(
            "{}: {}, {} conversations, {} new, {} changed, {} requests, {} retries",
            r.source,
            r.status.as_str(),
            r.conversations,
            c.messages_new,
            c.messages_changed,
            c.requests,
            c.retries
        );
        writeln!(out, "{line}")?;
        if let Some(e) = &r.error {
            writeln!(out, "{}: {e}", r.source)?;
        }
        failed |= !r.ok();
    }
    drop(out);
    index_after_sync(&store, &config).await;
    Ok(if failed { EXIT_FAILED } else { EXIT_OK })
}

/// Bring the search index up to date after a `sync`. A failure is reported, not fatal: the
/// archive is complete, and the next sync, `run` or `reindex` catches the index up.
async fn index_after_sync(store: &Store, config: &Config) {
    let dir = index::index_dir(&config.storage.data_dir);
    let result = async {
        prepare_data_dir(config)?;
        let index = SearchIndex::open_or_create(&dir)?;
        Indexer::new(index).catch_up(store).await
    }
    .await;
    match result {
        Ok(report) => println!(
            "index: {} events applied, {} messages indexed",
            report.events, report.documents
        ),
        Err(e) => eprintln!("warning: the search index was not updated: {e:#}"),
    }
}

fn search_request(args: &SearchArgs) -> anyhow::Result<SearchRequest> {
    let since = args
        .since
        .as_deref()
        .map(|s| index::search::parse_time(s, false))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|s| index::search::parse_time(s, true))
        .transpose()?;
    let recalled = if args.only_recalled {
        index::search::Recalled::Only
    } else if args.include_recalled {
        index::search::Recalled::Include
    } else {
        index::search::Recalled::Exclude
    };
    let request = SearchRequest {
        query: args.query.clone(),
        source: args.source.clone(),
        conversation: args.conversation.clone(),
        sender: args.sender.clone(),
        since,
        until,
        kind: args.kind.clone(),
        recalled,
        history: args.history,
        sort: match args.sort {
            SearchSort::Newest => index::Sort::Newest,
            SearchSort::Relevance => index::Sort::Relevance,
        },
        limit: args.limit as usize,
        cursor: None,
    };
    // A malformed query is reported before anything is opened.
    index::query::parse(&request.query).map_err(index::SearchError::from)?;
    Ok(request)
}

/// `chatvault search`.
async fn search(
    store: Store,
    index_dir: std::path::PathBuf,
    request: SearchRequest,
    json: bool,
) -> anyhow::Result<i32> {
    let Some(search_index) = SearchIndex::open(&index_dir)? else {
        bail!(index::SearchError::NoIndex);
    };
    let page = index::search::search(&search_index, &store, request).await?;
    let mut out = std::io::stdout().lock();
    if json {
        for hit in &page.hits {
            writeln!(out, "{}", serde_json::to_string(hit)?)?;
        }
        return Ok(EXIT_OK);
    }
    let colour = std::io::stdout().is_terminal();
    for hit in &page.hits {
        let conversation = match &hit.conversation_name {
            Some(name) => format!("{name} ({})", hit.conversation_id),
            None => hit.conversation_id.clone(),
        };
        let sender = hit
            .sender_name
            .as_deref()
            .or(hit.sender_id.as_deref())
            .unwrap_or("system");
        let mut flags = Vec::new();
        if hit.flags.edited {
            flags.push("edited");
        }
        if hit.flags.recalled {
            flags.push("recalled");
        }
        if hit.flags.deleted {
            flags.push("deleted");
        }
        let flags = if flags.is_empty() {
            String::new()
        } else {
            format!("  [{}]", flags.join(", "))
        };
        writeln!(
            out,
            "{}  {} › {}  {}{}",
            hit.sent_at.format("%Y-%m-%d %H:%M"),
            hit.source,
            crate::terminal::escape_line(&conversation),
            crate::terminal::escape_line(sender),
            flags
        )?;
        writeln!(
            out,
            "  {}",
            render_highlighted(&hit.text, &hit.highlights, colour)
        )?;
    }
    let shown = page.hits.len();
    writeln!(
        out,
        "{shown} of {} matching message{}",
        page.total,
        if page.total == 1 { "" } else { "s" }
    )?;
    Ok(EXIT_OK)
}

/// The text on one line, at most about 200 characters around the first highlight, the
/// highlights in bold yellow on a terminal and between 【】 elsewhere.
fn render_highlighted(text: &str, highlights: &[[usize; 2]], colour: bool) -> String {
    const WIDTH: usize = 200;
    // one character for one: the highlights are character offsets
    let chars: Vec<char> = text
        .chars()
        .map(|c| {
            if c == '\n' || c == '\r' {
                ' '
            } else {
                crate::terminal::visible(c)
            }
        })
        .collect();
    let first = highlights.first().map_or(0, |h| h[0]);
    let start = if chars.len() <= WIDTH {
        0
    } else {
        first.saturating_sub(WIDTH / 4).min(chars.len() - WIDTH)
    };
    let end = (start + WIDTH).min(chars.len());
    let (open, close) = if colour {
        ("\x1b[1;33m", "\x1b[0m")
    } else {
        ("【", "】")
    };
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    for (i, c) in chars.iter().enumerate().take(end).skip(start) {
        if highlights.iter().any(|h| h[0] == i) {
            out.push_str(open);
        }
        out.push(*c);
        if highlights.iter().any(|h| h[1] == i + 1) {
            out.push_str(close);
        }
    }
    if highlights.iter().any(|h| h[0] < end && h[1] > end) {
        out.push_str(close);
    }
    if end < chars.len() {
        out.push('…');
    }
    out
}

/// `chatvault reindex`: rebuild in a new generation, swap it in, catch up.
async fn reindex(store: Store, index_dir: std::path::PathBuf) -> anyhow::Result<i32> {
    let search_index = SearchIndex::open_or_create(&index_dir)?;
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "indexing {bar:40} {pos}/{len} messages ({per_sec}, {eta} left)",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let progress = {
        let bar = bar.clone();
        move |done: u64, total: u64| {
            if let Some(bar) = &bar {
                bar.set_length(total);
                bar.set_position(done);
            }
        }
    };
    let started = std::time::Instant::now();
    let report = Indexer::new(search_index)
        .rebuild(&store, &progress)
        .await?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    println!(
        "index rebuilt: {} messages in {:.1}s",
        report.documents,
        started.elapsed().as_secs_f64()
    );
    Ok(EXIT_OK)
}

/// The index half of `verify`: prints per-source counts and any drift; `false` on drift.
async fn verify_index(store: &Store, index_dir: &Path) -> anyhow::Result<bool> {
    let Some(search_index) = SearchIndex::open(index_dir)? else {
        println!("index: none yet (`chatvault sync` or `chatvault reindex` builds it)");
        return Ok(true);
    };
    let check = index::indexer::check(store, &search_index, 200).await?;
    for s in &check.sources {
        let lag = if s.watermark < s.head {
            format!(
                " (behind: {} events not applied yet, not compared)",
                s.head - s.watermark
            )
        } else {
            String::new()
        };
        println!(
            "index {}: {} documents, {} messages, events applied {}/{}{lag}",
            s.source, s.documents, s.messages, s.watermark, s.head
        );
    }
    println!("index: {} sampled messages checked", check.sampled);
    for d in &check.drift {
        eprintln!("verify failed: index drift: {d}");
    }
    if !check.ok() {
        eprintln!("the index disagrees with PostgreSQL: run `chatvault reindex` to rebuild it");
    }
    Ok(check.ok())
}

/// `chatvault export`: stream matching messages to stdout or, through a private temporary
/// file beside it (mode 0600, a fresh random name) renamed at the end, to `--output`.
async fn export(store: Store, args: ExportArgs) -> anyhow::Result<i32> {
    use futures::StreamExt as _;

    use crate::cli::ExportFormat;
    use crate::store::export::{csv_record, ExportFilter, CSV_COLUMNS};

    if let (Some(since), Some(until)) = (args.since, args.until) {
        if since >= until {
            bail!("--since {since} is not before --until {until}: nothing could match");
        }
    }
    let filter = ExportFilter {
        source: args.source.clone(),
        conversation: args.conversation.clone(),
        since: args.since,
        until: args.until,
    };
    if let Some(source) = &filter.source {
        // A typo is an error, not an empty export.
        let archived: Vec<String> = store
            .sources()
            .await?
            .into_iter()
            .map(|(s, _)| s.to_string())
            .collect();
        if !archived.contains(source) {
            bail!(
                "no source named {source:?} in the archive (archived sources: {})",
                if archived.is_empty() {
                    "none yet".to_string()
                } else {
                    archived.join(", ")
                }
            );
        }
    }

    // The export is created private (0600) under a name nobody can predict or plant a
    // symlink at, and appears under `--output` only when complete.
    let partial = match &args.output {
        Some(path) => {
            let dir = crate::files::parent_dir(path);
            let name = path.file_name().map_or_else(
                || "export".to_string(),
                |n| n.to_string_lossy().into_owned(),
            );
            let temp = crate::files::private_temp_file_in(&dir, &format!(".{name}."))
                .with_context(|| format!("cannot create a file in {}", dir.display()))?;
            Some(temp)
        }
        None => None,
    };
    let sink: Box<dyn Write + Send> = match &partial {
        Some(temp) => Box::new(
            temp.as_file()
                .try_clone()
                .with_context(|| format!("cannot open {}", temp.path().display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let mut sink = std::io::BufWriter::with_capacity(1 << 16, sink);

    let written: anyhow::Result<u64> = async {
        let mut n = 0u64;
        match args.format {
            ExportFormat::Jsonl => {
                let mut rows = std::pin::pin!(store.export_jsonl(&filter));
                while let Some(line) = rows.next().await {
                    sink.write_all(line?.as_bytes())?;
                    sink.write_all(b"\n")?;
                    n += 1;
                }
            }
            ExportFormat::Csv => {
                let header: Vec<Option<String>> =
                    CSV_COLUMNS.iter().map(|c| Some(c.to_string())).collect();
                let guard = !args.keep_formulas;
                sink.write_all(csv_record(&header, guard).as_bytes())?;
                let mut rows = std::pin::pin!(store.export_csv(&filter));
                while let Some(fields) = rows.next().await {
                    sink.write_all(csv_record(&fields?, guard).as_bytes())?;
                    n += 1;
                }
            }
        }
        sink.flush()?;
        Ok(n)
    }
    .await;

    let n = match written {
        Ok(n) => n,
        Err(e) => {
            // A closed pipe (`export | head`) is the reader's choice, not a failure. (Dropping
            // the temporary file removes it.)
            if partial.is_none()
                && e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return Ok(EXIT_OK);
            }
            return Err(e.context("export stopped"));
        }
    };
    drop(sink);
    if let (Some(temp), Some(out)) = (partial, &args.output) {
        let from = temp.path().to_path_buf();
        temp.as_file()
            .sync_all()
            .with_context(|| format!("cannot write {}", from.display()))?;
        temp.persist(out).map_err(|e| {
            anyhow::Error::new(e.error).context(format!(
                "cannot move {} to {}",
                from.display(),
                out.display()
            ))
        })?;
        eprintln!("exported {n} messages to {}", out.display());
    } else {
        eprintln!("exported {n} messages");
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message can hold escape sequences (OSC 52 writes the reader's clipboard): shown,
    /// never sent to the terminal, and the highlights stay on the matched characters.
    #[test]
    fn search_output_shows_control_characters_instead_of_obeying_them() {
        let text = "a\u{1b}]52;c;ZXZpbA==\u{7}会议b";
        let chars: Vec<char> = text.chars().collect();
        let at = chars.iter().position(|c| *c == '会').unwrap();
        let shown = render_highlighted(text, &[[at, at + 2]], false);
        assert!(
            !shown.contains('\u{1b}') && !shown.contains('\u{7}'),
            "{shown:?}"
        );
        assert_eq!(shown, "a␛]52;c;ZXZpbA==␇【会议】b");
        let coloured = render_highlighted(text, &[[at, at + 2]], true);
        // the only escapes are the highlight's own
        assert_eq!(coloured.matches('\u{1b}').count(), 2, "{coloured:?}");
    }
}
