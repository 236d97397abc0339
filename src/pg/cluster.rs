//! The operating-system side of a cluster: its directory layout, locks,
//! `postmaster.pid`, and the `initdb` / `postgres` / `pg_ctl` command lines.
//!
//! Everything here is blocking; the async callers run it on a blocking thread.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::binaries::PgBinaries;
pub(crate) use super::user::ClusterUser;
use super::PgError;

/// Superuser created by `initdb`, and the database chatvault keeps its data in.
pub(crate) const SUPERUSER: &str = "chatvault";
/// The port only names the socket file (`.s.PGSQL.5432`); no TCP port is ever opened.
pub(crate) const PORT: u16 = 5432;
/// `sizeof(sun_path) - 1` on Linux; PostgreSQL refuses longer socket paths.
pub(crate) const MAX_SOCKET_PATH: usize = 107;

pub(crate) fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> PgError + 'a {
    move |source| PgError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Paths of one cluster under a chatvault data directory.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    /// Canonical (absolute, symlink-free) data directory.
    pub data_dir: PathBuf,
    /// `data_dir/postgres`: the PostgreSQL data directory.
    pub cluster: PathBuf,
    /// `data_dir/run`: the only place the server listens (a Unix socket).
    pub socket_dir: PathBuf,
    /// `data_dir/postgres.log`: server and `initdb` output.
    pub log: PathBuf,
    /// `data_dir/postgres.lock`: serialises init, start and stop between processes.
    pub start_lock: PathBuf,
    /// `data_dir/postgres.users`: every process using the cluster holds a shared lock on it.
    pub users_lock: PathBuf,
    /// `data_dir/run/chatvault.pid`: pid of the postmaster a chatvault process started.
    pub owner_marker: PathBuf,
    /// `data_dir/pg_hba.conf` and `data_dir/pg_ident.conf`: who may connect (see
    /// [`write_auth_files`]); the server is pointed at them on its command line.
    pub hba_file: PathBuf,
    pub ident_file: PathBuf,
}

impl Layout {
    /// Creates `data_dir` if needed (or makes it private, see [`crate::files::prepare_data_dir`])
    /// and checks that the socket path fits in `sun_path`.
    pub fn new(data_dir: &Path) -> Result<Self, PgError> {
        crate::files::prepare_data_dir(data_dir)
            .map_err(io_error("prepare the data directory", data_dir))?;
        let data_dir = data_dir
            .canonicalize()
            .map_err(io_error("resolve directory", data_dir))?;
        if data_dir.as_os_str().as_bytes().contains(&b'"') {
            return Err(PgError::UnsupportedPath {
                path: data_dir,
                reason: "it contains a double quote",
            });
        }
        let socket_dir = data_dir.join("run");
        let socket = socket_dir.join(format!(".s.PGSQL.{PORT}"));
        let len = socket.as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(PgError::SocketPathTooLong {
                path: socket,
                len,
                max: MAX_SOCKET_PATH,
            });
        }
        Ok(Layout {
            cluster: data_dir.join("postgres"),
            log: data_dir.join("postgres.log"),
            start_lock: data_dir.join("postgres.lock"),
            users_lock: data_dir.join("postgres.users"),
            owner_marker: socket_dir.join("chatvault.pid"),
            hba_file: data_dir.join("pg_hba.conf"),
            ident_file: data_dir.join("pg_ident.conf"),
            socket_dir,
            data_dir,
        })
    }

    pub fn socket_file(&self) -> PathBuf {
        self.socket_dir.join(format!(".s.PGSQL.{PORT}"))
    }

    /// Makes `data_dir` reachable for the cluster user, creates the private socket directory
    /// and writes the authentication files.
    pub fn prepare(&self, user: &ClusterUser) -> Result<(), PgError> {
        if user.switch {
            self.make_reachable(user)?;
        }
        ensure_private_dir(&self.socket_dir, user)?;
        write_auth_files(self, user)
    }

    /// Every ancestor of `data_dir` must let the cluster user through; `data_dir` itself gets
    /// the execute bits (0700 -> 0711) when we own it, which exposes no file names.
    fn make_reachable(&self, user: &ClusterUser) -> Result<(), PgError> {
        for dir in self.data_dir.ancestors().skip(1) {
            let meta = std::fs::metadata(dir).map_err(io_error("inspect directory", dir))?;
            if !user.may_traverse(&meta) {
                return Err(PgError::NotTraversable {
                    dir: dir.to_owned(),
                    user: user.name.clone(),
                });
            }
        }
        let meta = std::fs::metadata(&self.data_dir)
            .map_err(io_error("inspect directory", &self.data_dir))?;
        if user.may_traverse(&meta) {
            return Ok(());
        }
        // SAFETY: geteuid has no preconditions.
        if meta.uid() != unsafe { libc::geteuid() } {
            return Err(PgError::NotTraversable {
                dir: self.data_dir.clone(),
                user: user.name.clone(),
            });
        }
        let mode = (meta.permissions().mode() & 0o7777) | 0o111;
        crate::files::chmod_dir_nofollow(&self.data_dir, mode)
            .map_err(io_error("change permissions of", &self.data_dir))
    }
}

/// Creates `dir` if missing, owned by the cluster user, mode 0700. The owner and mode are set
/// through a descriptor opened without following symlinks, so a symlink at `dir` is refused.
fn ensure_private_dir(dir: &Path, user: &ClusterUser) -> Result<(), PgError> {
    crate::files::create_private_dir(dir).map_err(io_error("create directory", dir))?;
    if user.switch {
        crate::files::chown_dir_nofollow(dir, user.uid, user.gid)
            .map_err(io_error("change owner of", dir))?;
    }
    crate::files::chmod_dir_nofollow(dir, 0o700).map_err(io_error("change permissions of", dir))
}

/// The ident map naming who may connect.
const IDENT_MAP: &str = "chatvault";

/// Writes `pg_hba.conf` and `pg_ident.conf` into `data_dir`: the server accepts connections on
/// its Unix socket only, by `peer` authentication (the kernel tells it the connecting process's
/// user), and maps exactly one operating-system user to the superuser: the one running
/// chatvault. So when root runs the server as the shared `postgres` or `nobody` account, no
/// process of that account can connect (it may not even enter the socket directory), and no
/// password exists that could leak.
///
/// Both files are rewritten at every start (a fresh file renamed over the old one). They hold
/// no secret; the server reads them as the cluster user, so when that is another user they
/// are mode 0640 with the cluster user's group, else 0600.
pub(crate) fn write_auth_files(layout: &Layout, user: &ClusterUser) -> Result<(), PgError> {
    let client = super::user::current_user_name()?;
    let hba = format!(
        "# Written by chatvault at every start of its embedded server; edits are overwritten.\n\
         # Unix socket only, peer authentication, users mapped by {IDENT_MAP:?} in pg_ident.conf.\n\
         local all all peer map={IDENT_MAP}\n"
    );
    let ident = format!(
        "# Written by chatvault at every start of its embedded server; edits are overwritten.\n\
         # The operating-system user running chatvault is the superuser {SUPERUSER}; nobody else.\n\
         {IDENT_MAP} \"{client}\" {SUPERUSER}\n"
    );
    let (mode, gid) = if user.switch {
        (0o640, Some(user.gid))
    } else {
        (0o600, None)
    };
    for (path, text) in [(&layout.hba_file, hba), (&layout.ident_file, ident)] {
        crate::files::write_replacing(path, text.as_bytes(), mode, gid)
            .map_err(io_error("write", path))?;
    }
    Ok(())
}

/// An open lock file; the `flock` is released when this is dropped (or the process dies).
#[derive(Debug)]
pub(crate) struct FileLock(File);

impl FileLock {
    /// Blocks until the lock is granted.
    pub fn acquire(path: &Path, exclusive: bool) -> Result<Self, PgError> {
        let file = crate::files::open_private(path).map_err(io_error("open lock file", path))?;
        let operation = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        loop {
            // SAFETY: the descriptor is open for the duration of the call.
            if unsafe { libc::flock(file.as_raw_fd(), operation) } == 0 {
                return Ok(FileLock(file));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(io_error("lock", path)(err));
            }
        }
    }

    /// Turns a shared lock into an exclusive one if nobody else holds the file; on failure the
    /// lock may be lost (Linux drops the old lock before trying), so only call this when leaving.
    pub fn try_upgrade(&self) -> bool {
        // SAFETY: the descriptor is open for the duration of the call.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    }
}

/// Whether `pid` is a live process (a zombie counts as gone).
pub(crate) fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may contain spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => true,
    }
}

/// What `postmaster.pid` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PostmasterPid {
    pub pid: i32,
    /// Line 8 is `ready` once the server accepts connections.
    pub ready: bool,
}

pub(crate) fn read_postmaster_pid(cluster: &Path) -> Option<PostmasterPid> {
    let text = std::fs::read_to_string(cluster.join("postmaster.pid")).ok()?;
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let ready = lines.nth(6).is_some_and(|status| status.trim() == "ready");
    Some(PostmasterPid { pid, ready })
}

/// Whether `pid` is a postmaster serving `cluster` (see [`judge_postmaster`]); a pid recycled
/// since the server died belongs to some other program, which must not keep a new server from
/// starting.
pub(crate) fn serves_cluster(pid: i32, cluster: &Path) -> bool {
    if !process_alive(pid) {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok();
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
    judge_postmaster(cmdline.as_deref(), cwd.as_deref(), cluster)
}

/// Whether a live process with this command line (NUL-separated, world-readable in `/proc`)
/// and working directory (readable for our own processes, or as root) is a postmaster of
/// `cluster`. It must be a program named `postgres` (or `postmaster`); then it is ours if it
/// was given `-D cluster` (`-Dcluster`, `--pgdata=cluster`) or, failing that, if it works in
/// `cluster` (a postmaster `chdir`s to its data directory). What cannot be read counts in
/// favour: wrongly taking a dead server for alive only delays a start with a clear error,
/// while wrongly taking a live one for dead would start a second server on its files.
pub(crate) fn judge_postmaster(cmdline: Option<&[u8]>, cwd: Option<&Path>, cluster: &Path) -> bool {
    let Some(cmdline) = cmdline else {
        return cwd.is_none_or(|cwd| cwd == cluster);
    };
    let args: Vec<&[u8]> = cmdline
        .split(|b| *b == 0)
        .filter(|arg| !arg.is_empty())
        .collect();
    let Some(program) = args.first() else {
        return false;
    };
    let program = Path::new(std::ffi::OsStr::from_bytes(program));
    let named = program
        .file_name()
        .is_some_and(|name| name == "postgres" || name == "postmaster");
    if !named {
        return false;
    }
    let is_cluster = |dir: &[u8]| Path::new(std::ffi::OsStr::from_bytes(dir)) == cluster;
    let given_cluster = args.iter().enumerate().skip(1).any(|(i, arg)| {
        if *arg == b"-D" {
            args.get(i + 1).is_some_and(|dir| is_cluster(dir))
        } else if let Some(dir) = arg.strip_prefix(b"--pgdata=") {
            is_cluster(dir)
        } else if let Some(dir) = arg.strip_prefix(b"-D") {
            is_cluster(dir)
        } else {
            false
        }
    });
    given_cluster || cwd.is_none_or(|cwd| cwd == cluster)
}

/// Removes what a killed server leaves behind: `postmaster.pid`, the socket and its lock file.
pub(crate) fn remove_stale_files(layout: &Layout) -> Result<(), PgError> {
    let socket = layout.socket_file();
    let mut socket_lock = socket.clone().into_os_string();
    socket_lock.push(".lock");
    for path in [
        layout.cluster.join("postmaster.pid"),
        PathBuf::from(socket_lock),
        socket,
    ] {
        match std::fs::remove_file(&path) {
            Ok(()) => tracing::info!(path = %path.display(), "removed stale postgres file"),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(io_error("remove stale file", &path)(err)),
        }
    }
    Ok(())
}

/// Opens the server log for appending, returning it and its current length.
pub(crate) fn open_log(layout: &Layout) -> Result<(File, u64), PgError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&layout.log)
        .map_err(io_error("open log file", &layout.log))?;
    let len = log
        .metadata()
        .map_err(io_error("inspect log file", &layout.log))?
        .len();
    Ok((log, len))
}

/// The last few lines written to the log since `offset`, joined into one line.
pub(crate) fn log_excerpt(log: &Path, offset: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(log) {
        let len = file.metadata().map(|meta| meta.len()).unwrap_or(0);
        let start = offset.max(len.saturating_sub(4096));
        if file.seek(SeekFrom::Start(start)).is_ok() {
            let mut bytes = Vec::new();
            let _ = file.read_to_end(&mut bytes);
            text = String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    let tail = &lines[lines.len().saturating_sub(3)..];
    if tail.is_empty() {
        "no output".to_owned()
    } else {
        tail.join(" | ")
    }
}

/// The major version recorded in `cluster/PG_VERSION`, if the cluster exists.
pub(crate) fn cluster_version(cluster: &Path) -> Option<u32> {
    std::fs::read_to_string(cluster.join("PG_VERSION"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Creates the cluster unless it exists. `initdb` writes into a scratch directory that is renamed
/// into place, so an interrupted run never leaves a half-made cluster behind.
pub(crate) fn init_cluster(
    binaries: &PgBinaries,
    layout: &Layout,
    user: &ClusterUser,
    no_sync: bool,
) -> Result<(), PgError> {
    if let Some(version) = cluster_version(&layout.cluster) {
        if version != binaries.version {
            return Err(PgError::VersionMismatch {
                dir: layout.cluster.clone(),
                cluster: version,
                bindir: binaries.bindir.clone(),
                binaries: binaries.version,
            });
        }
        return Ok(());
    }
    if layout.cluster.exists() {
        let empty = std::fs::read_dir(&layout.cluster)
            .map_err(io_error("read directory", &layout.cluster))?
            .next()
            .is_none();
        if !empty {
            return Err(PgError::NotACluster {
                path: layout.cluster.clone(),
            });
        }
        std::fs::remove_dir(&layout.cluster)
            .map_err(io_error("remove directory", &layout.cluster))?;
    }
    let scratch = layout.data_dir.join("postgres.initdb");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).map_err(io_error("remove directory", &scratch))?;
    }
    ensure_private_dir(&scratch, user)?;

    let (log, offset) = open_log(layout)?;
    let stderr = log
        .try_clone()
        .map_err(io_error("open log file", &layout.log))?;
    let mut command = user.command(&binaries.initdb(), &scratch);
    command
        .arg("--pgdata")
        .arg(&scratch)
        // Nobody may connect by the cluster's own pg_hba.conf: chatvault starts the server with
        // its own (see `write_auth_files`).
        .args(["--username", SUPERUSER, "--auth=reject", "--encoding=UTF8"])
        .arg("--no-locale")
        .stdout(log)
        .stderr(stderr);
    if no_sync {
        command.arg("--no-sync");
    }
    let started = Instant::now();
    let status = command
        .status()
        .map_err(io_error("run", &binaries.initdb()))?;
    if !status.success() {
        return Err(PgError::InitdbFailed {
            dir: layout.cluster.clone(),
            status,
            detail: log_excerpt(&layout.log, offset),
            log: layout.log.clone(),
        });
    }
    std::fs::rename(&scratch, &layout.cluster).map_err(io_error("rename", &scratch))?;
    tracing::info!(
        cluster = %layout.cluster.display(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "initialised postgres cluster"
    );
    Ok(())
}

/// `postgres -D cluster` listening on the socket directory only, plus `settings`.
pub(crate) fn postgres_command(
    binaries: &PgBinaries,
    layout: &Layout,
    user: &ClusterUser,
    settings: &[(&str, &str)],
) -> Command {
    let mut socket_dirs = OsString::from("unix_socket_directories=\"");
    socket_dirs.push(&layout.socket_dir);
    socket_dirs.push("\"");
    let mut hba_file = OsString::from("hba_file=");
    hba_file.push(&layout.hba_file);
    let mut ident_file = OsString::from("ident_file=");
    ident_file.push(&layout.ident_file);
    let mut command = user.command(&binaries.postgres(), &layout.cluster);
    command
        .arg("-D")
        .arg(&layout.cluster)
        .args(["-c", "listen_addresses=", "-c", &format!("port={PORT}")])
        .arg("-c")
        .arg(socket_dirs)
        .arg("-c")
        .arg(hba_file)
        .arg("-c")
        .arg(ident_file);
    for (name, value) in settings {
        command.arg("-c").arg(format!("{name}={value}"));
    }
    command
}

/// Why waiting for a server failed.
#[derive(Debug)]
pub(crate) enum NotReady {
    /// The server exited before it became ready.
    Exited,
    TimedOut,
}

/// Waits until `postmaster.pid` names `pid` and says `ready`, or the server exits.
pub(crate) fn wait_ready(
    cluster: &Path,
    pid: i32,
    timeout: Duration,
    mut exited: impl FnMut() -> bool,
) -> Result<(), NotReady> {
    let deadline = Instant::now() + timeout;
    loop {
        if read_postmaster_pid(cluster) == Some(PostmasterPid { pid, ready: true }) {
            return Ok(());
        }
        if exited() {
            return Err(NotReady::Exited);
        }
        if Instant::now() >= deadline {
            return Err(NotReady::TimedOut);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `pg_ctl stop -m fast`: disconnects clients, checkpoints, waits until the server is gone.
pub(crate) fn stop_cluster(
    binaries: &PgBinaries,
    layout: &Layout,
    user: &ClusterUser,
) -> Result<(), PgError> {
    let (log, offset) = open_log(layout)?;
    let stderr = log
        .try_clone()
        .map_err(io_error("open log file", &layout.log))?;
    let status = user
        .command(&binaries.pg_ctl(), &layout.cluster)
        .arg("stop")
        .arg("--pgdata")
        .arg(&layout.cluster)
        .args(["--mode=fast", "--wait", "--timeout=120"])
        .stdout(log)
        .stderr(stderr)
        .status()
        .map_err(io_error("run", &binaries.pg_ctl()))?;
    if !status.success() {
        return Err(PgError::StopFailed {
            dir: layout.cluster.clone(),
            detail: log_excerpt(&layout.log, offset),
            log: layout.log.clone(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmdline(args: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        for arg in args {
            out.extend_from_slice(arg.as_bytes());
            out.push(0);
        }
        out
    }

    #[test]
    fn a_recycled_pid_is_not_taken_for_the_postmaster() {
        let cluster = Path::new("/data/postgres");
        let ours = cmdline(&[
            "/usr/lib/postgresql/15/bin/postgres",
            "-D",
            "/data/postgres",
            "-c",
            "port=5432",
        ]);
        assert!(judge_postmaster(Some(&ours), Some(cluster), cluster));
        assert!(judge_postmaster(Some(&ours), None, cluster));
        let pg_ctl_style = cmdline(&["postgres", "--pgdata=/data/postgres"]);
        assert!(judge_postmaster(Some(&pg_ctl_style), None, cluster));
        // relative -D: the working directory decides
        let relative = cmdline(&["postgres", "-D", "postgres"]);
        assert!(judge_postmaster(Some(&relative), Some(cluster), cluster));
        assert!(!judge_postmaster(
            Some(&relative),
            Some(Path::new("/other")),
            cluster
        ));

        // another program, even one working in the cluster's directory
        let sleep = cmdline(&["sleep", "300"]);
        assert!(!judge_postmaster(Some(&sleep), Some(cluster), cluster));
        assert!(!judge_postmaster(Some(&sleep), None, cluster));
        // another cluster's server
        let other = cmdline(&["postgres", "-D", "/var/lib/postgresql/15/main"]);
        assert!(!judge_postmaster(
            Some(&other),
            Some(Path::new("/var/lib/postgresql/15/main")),
            cluster
        ));
        assert!(!judge_postmaster(Some(b""), None, cluster));

        // nothing readable: taken to be it (never start a second server on live files)
        assert!(judge_postmaster(None, None, cluster));
        assert!(!judge_postmaster(None, Some(Path::new("/")), cluster));
    }
}
