//! Throwaway PostgreSQL for tests: one cluster per test process, a new database per call.
//!
//! The cluster lives in `$TMPDIR/chatvault-pg-tests-<uid>/<pid>-<nanos>`, is made with
//! `initdb --no-sync` and runs with `fsync` off. Its postmaster is spawned by a thread that never
//! exits and carries `PR_SET_PDEATHSIG`, so the server shuts down when the test process ends,
//! however it ends. Directories left by finished test processes are removed by the next one.
//! Every test binary gets its own cluster, so test binaries may run in parallel.
//!
//! Each `#[tokio::test]` has its own runtime, so nothing async is shared between calls: every
//! call opens its own connections.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, PgPool};

use super::cluster::{self, ClusterUser, Layout, NotReady};
use super::{find_binaries, socket_options, PgError};

/// Settings that trade durability for speed; a test cluster never outlives its process.
const SETTINGS: [(&str, &str); 5] = [
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
    ("shared_buffers", "16MB"),
    ("max_connections", "200"),
];

static CLUSTER: OnceLock<Result<TestCluster, String>> = OnceLock::new();
static NEXT_DATABASE: AtomicU64 = AtomicU64::new(0);

#[derive(Debug)]
struct TestCluster {
    socket_dir: PathBuf,
}

/// A new, empty database on this process's test cluster: how to connect to it, and its name.
///
/// Panics if the cluster cannot be started (e.g. no PostgreSQL binaries): this is test support.
pub async fn fresh_database() -> (PgConnectOptions, String) {
    let socket_dir = tokio::task::spawn_blocking(|| {
        CLUSTER
            .get_or_init(|| start_cluster().map_err(|err| err.to_string()))
            .as_ref()
            .map(|cluster| cluster.socket_dir.clone())
    })
    .await
    .expect("test cluster start panicked")
    .unwrap_or_else(|err| panic!("test postgres cluster: {err}"));

    let name = format!("test_{}", NEXT_DATABASE.fetch_add(1, Ordering::Relaxed));
    let mut admin = PgConnection::connect_with(&socket_options(&socket_dir, "postgres"))
        .await
        .unwrap_or_else(|err| panic!("connect to the test cluster: {err}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap_or_else(|err| panic!("create test database {name}: {err}"));
    let _ = admin.close().await;
    (socket_options(&socket_dir, &name), name)
}

/// A pool (at most 5 connections) to a new, empty database; see [`fresh_database`].
pub async fn fresh_pool() -> PgPool {
    let (options, name) = fresh_database().await;
    PgPoolOptions::new()
        .max_connections(5)
        .connect_with(options)
        .await
        .unwrap_or_else(|err| panic!("connect to test database {name}: {err}"))
}

fn start_cluster() -> Result<TestCluster, PgError> {
    let binaries = find_binaries()?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let base = std::env::temp_dir().join(format!("chatvault-pg-tests-{euid}"));
    prepare_base(&base, euid).map_err(|source| PgError::Io {
        action: "prepare directory",
        path: base.clone(),
        source,
    })?;
    remove_finished(&base);

    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    let layout = Layout::new(&base.join(format!("{}-{nanos}", std::process::id())))?;
    let user = ClusterUser::choose(&layout)?;
    layout.prepare(&user)?;
    cluster::init_cluster(&binaries, &layout, &user, true)?;

    let (log, offset) = cluster::open_log(&layout)?;
    let stderr = log.try_clone().map_err(|source| PgError::Io {
        action: "open log file",
        path: layout.log.clone(),
        source,
    })?;
    let mut command = cluster::postgres_command(&binaries, &layout, &user, &SETTINGS);
    command.stdout(log).stderr(stderr);
    let pid = spawn_tied_to_process(command).map_err(|source| PgError::Io {
        action: "run",
        path: binaries.postgres(),
        source,
    })?;
    let ready = cluster::wait_ready(&layout.cluster, pid, Duration::from_secs(60), || {
        !cluster::process_alive(pid)
    });
    if let Err(not_ready) = ready {
        let detail = match not_ready {
            NotReady::Exited => cluster::log_excerpt(&layout.log, offset),
            NotReady::TimedOut => "not ready after 60 s".to_owned(),
        };
        return Err(PgError::StartFailed {
            dir: layout.cluster.clone(),
            detail,
            log: layout.log.clone(),
        });
    }
    Ok(TestCluster {
        socket_dir: layout.socket_dir,
    })
}

/// The shared parent of the test clusters, a predictable name in the temporary directory:
/// created 0711 (the cluster user, when we are root, must pass through), and used only if it
/// is a real directory of ours, never a symlink or someone else's directory made first.
fn prepare_base(base: &Path, euid: u32) -> std::io::Result<()> {
    crate::files::create_private_dir(base)?;
    let meta = std::fs::symlink_metadata(base)?;
    if !meta.is_dir() || meta.uid() != euid {
        return Err(std::io::Error::other(
            "not a directory owned by this user; remove it",
        ));
    }
    crate::files::chmod_dir_nofollow(base, 0o711)
}

/// Spawns `command` from a thread that lives as long as the process and asks the kernel to send
/// the child SIGINT (fast shutdown) when that thread, i.e. the process, dies. Returns its pid.
fn spawn_tied_to_process(mut command: std::process::Command) -> std::io::Result<i32> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the hook only calls async-signal-safe functions (prctl, getppid).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The process may have died before prctl took effect.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("test process exited"));
            }
            Ok(())
        });
    }
    let (sender, receiver) = mpsc::channel();
    std::thread::Builder::new()
        .name("test-postgres".to_owned())
        .spawn(move || {
            let mut child = match command.spawn() {
                Ok(child) => child,
                Err(err) => {
                    let _ = sender.send(Err(err));
                    return;
                }
            };
            let _ = sender.send(Ok(child.id() as i32));
            let _ = child.wait();
            // The death signal follows this thread, not the process: never exit.
            loop {
                std::thread::park();
            }
        })?;
    receiver
        .recv()
        .map_err(|_| std::io::Error::other("test postgres thread died"))?
}

/// Removes the cluster directories of test processes that have exited.
fn remove_finished(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if cluster::process_alive(pid) {
            continue;
        }
        let dir = entry.path();
        let server_alive = cluster::read_postmaster_pid(&dir.join("postgres"))
            .is_some_and(|found| cluster::process_alive(found.pid));
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        let ours = entry.metadata().is_ok_and(|meta| meta.uid() == euid);
        if !server_alive && ours {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
