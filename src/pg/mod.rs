//! Embedded PostgreSQL: find the server binaries, initialise, start, stop (also used by tests).
//!
//! With no `database.url`, chatvault keeps a private cluster under its data directory:
//!
//! - `data_dir/postgres`: the cluster, made by `initdb` on first use (superuser `chatvault`,
//!   UTF8, C locale), holding the database `chatvault`;
//! - `data_dir/run`: the Unix socket directory, mode 0700, owned by the cluster user. The server
//!   listens there and nowhere else (`listen_addresses = ''`, no TCP);
//! - `data_dir/pg_hba.conf`, `data_dir/pg_ident.conf`: who may connect, rewritten at every
//!   start and given to the server on its command line (the cluster's own `pg_hba.conf`
//!   rejects everyone): `peer` authentication on the socket, and only the operating-system user
//!   running chatvault maps to the superuser. The kernel vouches for the connecting user, so
//!   there is no password to keep or leak; when root runs the server as the shared `postgres`
//!   or `nobody` account, processes of that account are refused;
//! - `data_dir/postgres.log`: everything the server and `initdb` print;
//! - `data_dir/postgres.lock` and `data_dir/postgres.users`: the `flock`s described below.
//!
//! `data_dir` is private (0700, see [`crate::files::prepare_data_dir`]); every file chatvault
//! writes there is created 0600 (the authentication files 0640 for the cluster user's group,
//! when that is another user: the server must read them). As root, ownership and modes are
//! changed through descriptors opened with `O_NOFOLLOW`, and files in directories the cluster
//! user owns are replaced by rename, never written through, so that user cannot redirect
//! root's writes with a symlink.
//!
//! # Which user runs the server
//!
//! PostgreSQL refuses to run as root. Started as root, chatvault runs `initdb`, `postgres` and
//! `pg_ctl` as the owner of an existing cluster, else as `postgres` if that user exists, else as
//! `nobody` (it never creates a user), with supplementary groups dropped. The cluster and socket
//! directories are given to that user; `data_dir` itself gains the execute bits (0700 -> 0711)
//! when chatvault owns it, and every directory above it must already let that user through,
//! which rules out e.g. `/root/...` (the error names the directory). Started as anyone else,
//! chatvault runs the server as itself.
//!
//! # Invariants
//!
//! - One server per data directory. Init, start and stop are serialised between processes by an
//!   exclusive `flock` on `postgres.lock`. A process that finds the server running (its
//!   `postmaster.pid` names a live process working in the cluster and the socket accepts a
//!   connection) uses it instead of starting another.
//! - A `postmaster.pid` whose process is gone (a killed server), or whose pid now belongs to a
//!   process that is not a `postgres -D <this cluster>` (a recycled pid), is removed, with the
//!   socket's lock file, before starting.
//! - Every process using the cluster holds a shared `flock` on `postgres.users` until it stops.
//!   [`EmbeddedPostgres::stop`] stops the server only when no other chatvault process uses it,
//!   and only if a chatvault process started it (`run/chatvault.pid` names the running
//!   postmaster). So a process that found the server running never stops it under the process
//!   that started it; if the starter leaves first, the last one out stops it.
//! - The server runs in its own process group, so Ctrl-C in a terminal reaches chatvault only,
//!   which then stops the server cleanly. A chatvault process that dies without stopping leaves
//!   the server running; the next start uses it and the last user then stops it.
//! - A server that dies while chatvault uses it is started again ([`EmbeddedPostgres::supervise`]):
//!   checked every second, the death logged with the end of the server's log, the restart
//!   counted (`chatvault_embedded_postgres_restarts_total` in the daemon's metrics).

mod binaries;
mod cluster;
pub mod testing;
pub(crate) mod user;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};
use sqlx::Connection;

pub use binaries::{find_binaries, find_binaries_in, PgBinaries, BINDIR_ENV};
use cluster::{ClusterUser, FileLock, Layout, NotReady};

/// The database chatvault keeps its data in.
pub const DATABASE: &str = "chatvault";

/// How long a starting server may take to accept connections (crash recovery included).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Errors of the embedded cluster. Each message says what failed and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "postgresql server binaries (initdb, pg_ctl, postgres) not found in {}; install them with \"apt-get install postgresql\" (Debian/Ubuntu) or \"brew install postgresql\" (macOS), or set database.url to use an existing server",
        display_dirs(searched)
    )]
    BinariesNotFound { searched: Vec<PathBuf> },

    #[error(
        "unix socket path {} is {len} bytes, over the limit of {max}; choose a shorter data_dir",
        path.display()
    )]
    SocketPathTooLong {
        path: PathBuf,
        len: usize,
        max: usize,
    },

    #[error("data_dir {} is not supported because {reason}; choose another data_dir", path.display())]
    UnsupportedPath { path: PathBuf, reason: &'static str },

    #[error(
        "running as root, but neither user \"postgres\" nor \"nobody\" exists to run the embedded postgres server; create one, run chatvault as a normal user, or set database.url to use an existing server"
    )]
    NoUnprivilegedUser,

    #[error(
        "uid {uid} has no plain user name (see /etc/passwd), which the embedded postgres server needs to recognise chatvault by peer authentication; run chatvault as a named user or set database.url to use an existing server"
    )]
    NoUserName { uid: u32 },

    #[error(
        "user {user} runs the embedded postgres server but cannot enter {}; make it traversable (chmod o+x) or choose a data_dir outside it",
        dir.display()
    )]
    NotTraversable { dir: PathBuf, user: String },

    #[error(
        "cluster {} is owned by uid {owner} and cannot be run by uid {uid}; run chatvault as the owner or fix the ownership (root may own no cluster)",
        dir.display()
    )]
    WrongOwner { dir: PathBuf, owner: u32, uid: u32 },

    #[error("{} exists but is not a postgresql cluster; move it away", path.display())]
    NotACluster { path: PathBuf },

    #[error(
        "cluster {} was made by postgresql {cluster}, but the binaries in {} are postgresql {binaries}; set {BINDIR_ENV} to postgresql {cluster}'s bin directory or upgrade the cluster with pg_upgrade",
        dir.display(),
        bindir.display()
    )]
    VersionMismatch {
        dir: PathBuf,
        cluster: u32,
        bindir: PathBuf,
        binaries: u32,
    },

    #[error("initdb failed ({status}) for {}: {detail} (see {})", dir.display(), log.display())]
    InitdbFailed {
        dir: PathBuf,
        status: ExitStatus,
        detail: String,
        log: PathBuf,
    },

    #[error("postgres did not start for {}: {detail} (see {})", dir.display(), log.display())]
    StartFailed {
        dir: PathBuf,
        detail: String,
        log: PathBuf,
    },

    #[error("postgres did not stop for {}: {detail} (see {})", dir.display(), log.display())]
    StopFailed {
        dir: PathBuf,
        detail: String,
        log: PathBuf,
    },

    #[error("could not {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("could not set up database {database} in the embedded cluster: {source}")]
    Database {
        database: String,
        #[source]
        source: sqlx::Error,
    },
}

fn display_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "no directory".to_owned();
    }
    let dirs: Vec<String> = dirs.iter().map(|dir| dir.display().to_string()).collect();
    dirs.join(", ")
}

/// How often [`EmbeddedPostgres::supervise`] checks the server.
const SUPERVISE_INTERVAL: Duration = Duration::from_secs(1);

/// An embedded cluster being watched (see [`EmbeddedPostgres::supervise`]).
#[derive(Debug)]
pub struct Supervisor {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<EmbeddedPostgres>,
}

impl Supervisor {
    /// Ends the watch (after a restart in progress), then leaves the cluster as
    /// [`EmbeddedPostgres::stop`] does.
    pub async fn stop(self) -> Result<(), PgError> {
        let _ = self.stop.send(true);
        let server = self.task.await.expect("postgres supervisor panicked");
        server.stop().await
    }
}

/// A running embedded cluster, started by this process or found running.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    layout: Layout,
    binaries: PgBinaries,
    user: ClusterUser,
    pid: i32,
    /// The postmaster, when this process started it.
    child: Option<Child>,
    /// Shared `flock` on `postgres.users`, held while this value lives.
    users: FileLock,
}

impl EmbeddedPostgres {
    /// Starts the cluster of `data_dir` (creating it on first use), or joins the server another
    /// process already runs there, and makes sure the database `chatvault` exists.
    pub async fn start(data_dir: &Path) -> Result<EmbeddedPostgres, PgError> {
        let data_dir = data_dir.to_owned();
        let (server, start_lock) =
            tokio::task::spawn_blocking(move || EmbeddedPostgres::start_blocking(&data_dir))
                .await
                .expect("postgres start task panicked")?;
        if let Err(err) = server.ensure_database().await {
            if server.started_here() {
                let _ = tokio::task::spawn_blocking(move || server.shutdown(&start_lock)).await;
            }
            return Err(err);
        }
        drop(start_lock);
        Ok(server)
    }

    fn start_blocking(data_dir: &Path) -> Result<(EmbeddedPostgres, FileLock), PgError> {
        let layout = Layout::new(data_dir)?;
        let binaries = find_binaries()?;
        let start_lock = FileLock::acquire(&layout.start_lock, true)?;
        let users = FileLock::acquire(&layout.users_lock, false)?;
        let user = ClusterUser::choose(&layout)?;
        layout.prepare(&user)?;
        cluster::init_cluster(&binaries, &layout, &user, false)?;

        let mut server = EmbeddedPostgres {
            layout,
            binaries,
            user,
            pid: 0,
            child: None,
            users,
        };
        if let Some(found) = cluster::read_postmaster_pid(&server.layout.cluster) {
            if cluster::serves_cluster(found.pid, &server.layout.cluster) {
                tracing::info!(pid = found.pid, "using the postgres server already running");
                server.pid = found.pid;
                return Ok((server, start_lock));
            }
            tracing::warn!(
                pid = found.pid,
                "postmaster.pid names a process that is not this cluster's server (it is gone, or its pid was reused); cleaning up after it"
            );
            cluster::remove_stale_files(&server.layout)?;
        }
        server.spawn_and_mark()?;
        Ok((server, start_lock))
    }

    /// Starts the server and records in `run/chatvault.pid` that a chatvault process did. The
    /// socket directory belongs to the cluster user, so the marker is a new file renamed into
    /// place: nothing planted there is written through.
    fn spawn_and_mark(&mut self) -> Result<(), PgError> {
        let child = self.spawn_server()?;
        self.pid = child.id() as i32;
        self.child = Some(child);
        let marker = &self.layout.owner_marker;
        crate::files::write_private(marker, format!("{}\n", self.pid).as_bytes()).map_err(
            |source| PgError::Io {
                action: "write",
                path: marker.clone(),
                source,
            },
        )
    }

    /// Whether the server this value knows is still running (our own child is asked, and
    /// reaped when it exited).
    fn alive(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(_))) => false,
            // not our child (or it cannot be asked): what /proc says
            None | Some(Err(_)) => cluster::serves_cluster(self.pid, &self.layout.cluster),
        }
    }

    /// After the server died: under the start lock, use the server another chatvault process
    /// may have started meanwhile, else clean up and start a new one. `Ok(true)` when this
    /// process started it.
    fn restart_blocking(&mut self) -> Result<bool, PgError> {
        let _start_lock = FileLock::acquire(&self.layout.start_lock, true)?;
        if let Some(found) = cluster::read_postmaster_pid(&self.layout.cluster) {
            if cluster::serves_cluster(found.pid, &self.layout.cluster) {
                if found.pid != self.pid {
                    tracing::info!(
                        pid = found.pid,
                        "another chatvault process restarted the postgres server; using it"
                    );
                    self.pid = found.pid;
                    self.child = None;
                }
                return Ok(false);
            }
        }
        cluster::remove_stale_files(&self.layout)?;
        // The authentication files are rewritten, as at every start.
        self.layout.prepare(&self.user)?;
        self.spawn_and_mark()?;
        Ok(true)
    }

    /// Watches the server while chatvault uses it: every second, whether it still runs; when
    /// it died, logs that (with the end of its log) and starts it again, retrying with backoff
    /// (1 s doubling to 1 min) while that fails, and calls `on_restart` after each restart.
    /// [`Supervisor::stop`] ends the watch and leaves the cluster as [`Self::stop`] does.
    pub fn supervise(self, on_restart: Box<dyn Fn() + Send + Sync>) -> Supervisor {
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let mut server = self;
            let mut wait = SUPERVISE_INTERVAL;
            loop {
                tokio::select! {
                    _ = stop_rx.wait_for(|stop| *stop) => return server,
                    () = tokio::time::sleep(wait) => {}
                }
                let (returned, restarted) = tokio::task::spawn_blocking(move || {
                    let mut server = server;
                    if server.alive() {
                        return (server, None);
                    }
                    let offset = std::fs::metadata(&server.layout.log)
                        .map_or(0, |meta| meta.len().saturating_sub(2048));
                    tracing::error!(
                        pid = server.pid,
                        log = %cluster::log_excerpt(&server.layout.log, offset),
                        "the embedded postgres server died; starting it again"
                    );
                    let result = server.restart_blocking();
                    (server, Some(result))
                })
                .await
                .expect("postgres supervisor task panicked");
                server = returned;
                match restarted {
                    None => wait = SUPERVISE_INTERVAL,
                    Some(Ok(started_here)) => {
                        tracing::warn!(
                            pid = server.pid,
                            started_here,
                            "the embedded postgres server runs again"
                        );
                        if started_here {
                            on_restart();
                        }
                        wait = SUPERVISE_INTERVAL;
                    }
                    Some(Err(err)) => {
                        wait = (wait * 2).min(Duration::from_secs(60));
                        tracing::error!(
                            error = %err,
                            retry_in_seconds = wait.as_secs(),
                            "could not start the embedded postgres server again"
                        );
                    }
                }
            }
        });
        Supervisor {
            stop: stop_tx,
            task,
        }
    }

    /// Spawns `postgres` in its own process group and waits until it is ready. Retries while
    /// the processes of a killed server still hold the old shared memory.
    fn spawn_server(&self) -> Result<Child, PgError> {
        let layout = &self.layout;
        let started = Instant::now();
        let deadline = started + START_TIMEOUT;
        loop {
            let (log, offset) = cluster::open_log(layout)?;
            let stderr = log.try_clone().map_err(|source| PgError::Io {
                action: "open log file",
                path: layout.log.clone(),
                source,
            })?;
            let mut child = cluster::postgres_command(&self.binaries, layout, &self.user, &[])
                .process_group(0)
                .stdout(log)
                .stderr(stderr)
                .spawn()
                .map_err(|source| PgError::Io {
                    action: "run",
                    path: self.binaries.postgres(),
                    source,
                })?;
            let pid = child.id() as i32;
            let timeout = deadline.saturating_duration_since(Instant::now());
            let ready = cluster::wait_ready(&layout.cluster, pid, timeout, || {
                !matches!(child.try_wait(), Ok(None))
            });
            let detail = match ready {
                Ok(()) => {
                    tracing::info!(
                        pid,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        socket_dir = %layout.socket_dir.display(),
                        "started postgres server"
                    );
                    return Ok(child);
                }
                Err(NotReady::Exited) => {
                    let detail = cluster::log_excerpt(&layout.log, offset);
                    // The children of a killed postmaster take a moment to exit.
                    if detail.contains("is still in use") && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(200));
                        continue;
                    }
                    detail
                }
                Err(NotReady::TimedOut) => format!(
                    "not ready after {} s, left running (pid {pid}): {}",
                    START_TIMEOUT.as_secs(),
                    cluster::log_excerpt(&layout.log, offset)
                ),
            };
            return Err(PgError::StartFailed {
                dir: layout.cluster.clone(),
                detail,
                log: layout.log.clone(),
            });
        }
    }

    /// Connects to the maintenance database, waiting while the server is still coming up.
    async fn connect_admin(&self) -> Result<PgConnection, PgError> {
        let options = self.connect_options().database("postgres");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let err = match PgConnection::connect_with(&options).await {
                Ok(connection) => return Ok(connection),
                Err(err) => err,
            };
            if !cluster::process_alive(self.pid) || Instant::now() >= deadline {
                return Err(PgError::StartFailed {
                    dir: self.layout.cluster.clone(),
                    detail: format!("server (pid {}) accepts no connections: {err}", self.pid),
                    log: self.layout.log.clone(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn ensure_database(&self) -> Result<(), PgError> {
        let database_error = |source| PgError::Database {
            database: DATABASE.to_owned(),
            source,
        };
        let mut connection = self.connect_admin().await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(DATABASE)
                .fetch_one(&mut connection)
                .await
                .map_err(database_error)?;
        if !exists {
            sqlx::query(&format!("CREATE DATABASE {DATABASE}"))
                .execute(&mut connection)
                .await
                .map_err(database_error)?;
            tracing::info!(database = DATABASE, "created database");
        }
        let _ = connection.close().await;
        Ok(())
    }

    /// How to reach the `chatvault` database: the Unix socket, as superuser `chatvault`.
    pub fn connect_options(&self) -> PgConnectOptions {
        socket_options(&self.layout.socket_dir, DATABASE)
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.layout.socket_dir
    }

    /// Where the server writes its log.
    pub fn log_file(&self) -> &Path {
        &self.layout.log
    }

    /// Process id of the postmaster.
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// Whether this process started the server (rather than finding it running).
    pub fn started_here(&self) -> bool {
        self.child.is_some()
    }

    /// A `psql` command line that opens the `chatvault` database, for a user to paste.
    pub fn psql_command(&self) -> String {
        format!(
            "{} -h {} -p {} -U {} {}",
            shell_quote(&self.binaries.psql().to_string_lossy()),
            shell_quote(&self.layout.socket_dir.to_string_lossy()),
            cluster::PORT,
            cluster::SUPERUSER,
            DATABASE
        )
    }

    /// Leaves the cluster: stops the server (`pg_ctl stop -m fast`) if a chatvault process
    /// started it and no other chatvault process still uses it; otherwise leaves it running.
    pub async fn stop(self) -> Result<(), PgError> {
        tokio::task::spawn_blocking(move || {
            let start_lock = FileLock::acquire(&self.layout.start_lock, true)?;
            self.shutdown(&start_lock)
        })
        .await
        .expect("postgres stop task panicked")
    }

    /// [`Self::stop`] with `postgres.lock` already held by the caller.
    fn shutdown(mut self, _start_lock: &FileLock) -> Result<(), PgError> {
        let layout = &self.layout;
        if !self.users.try_upgrade() {
            tracing::info!(
                pid = self.pid,
                "other chatvault processes use postgres; leaving it up"
            );
            return Ok(());
        }
        let running = cluster::read_postmaster_pid(&layout.cluster)
            .filter(|found| cluster::serves_cluster(found.pid, &layout.cluster));
        let started_by_chatvault = std::fs::read_to_string(&layout.owner_marker)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok());
        let mut stopped = None;
        if let Some(found) = running.filter(|found| started_by_chatvault == Some(found.pid)) {
            cluster::stop_cluster(&self.binaries, layout, &self.user)?;
            let _ = std::fs::remove_file(&layout.owner_marker);
            tracing::info!(pid = found.pid, "stopped postgres server");
            stopped = Some(found.pid);
        }
        if let Some(mut child) = self.child.take() {
            // Reap our postmaster: it is exiting if we just stopped it; never block on another.
            if stopped == Some(child.id() as i32) {
                let _ = child.wait();
            } else {
                let _ = child.try_wait();
            }
        }
        Ok(())
    }
}

/// Options for `database` on the cluster whose socket is in `socket_dir`. Set explicitly so that
/// `PGHOST`, `PGPORT`, `PGUSER` and friends in the environment cannot redirect them.
pub(crate) fn socket_options(socket_dir: &Path, database: &str) -> PgConnectOptions {
    PgConnectOptions::new_without_pgpass()
        .socket(socket_dir)
        .port(cluster::PORT)
        .username(cluster::SUPERUSER)
        .database(database)
        .ssl_mode(PgSslMode::Disable)
        .application_name("chatvault")
}

/// Quotes `word` for a POSIX shell when it holds anything but plain path characters.
fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:,@%=".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_leaves_plain_paths_alone() {
        assert_eq!(
            shell_quote("/var/lib/chatvault/run"),
            "/var/lib/chatvault/run"
        );
        assert_eq!(shell_quote("/my data/run"), "'/my data/run'");
        assert_eq!(shell_quote("/it's"), r"'/it'\''s'");
    }

    #[test]
    fn binaries_not_found_is_one_line_naming_the_fix() {
        let err = PgError::BinariesNotFound {
            searched: vec![PathBuf::from("/opt/pg/bin"), PathBuf::from("/usr/bin")],
        };
        let message = err.to_string();
        assert!(!message.contains('\n'));
        assert!(message.contains("/opt/pg/bin, /usr/bin"));
        assert!(message.contains("apt-get install postgresql"));
        assert!(message.contains("brew install postgresql"));
        assert!(message.contains("database.url"));
    }

    #[test]
    fn a_long_data_dir_is_refused_before_anything_runs() {
        let root = tempfile::tempdir().unwrap();
        let long = root.path().join("d".repeat(100));
        let err = Layout::new(&long).unwrap_err();
        assert!(matches!(err, PgError::SocketPathTooLong { .. }), "{err}");
        assert!(err.to_string().contains("shorter data_dir"));
    }
}
