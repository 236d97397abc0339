//! The embedded cluster against real PostgreSQL binaries: start, reuse, recovery, restart,
//! discovery errors, and the throwaway databases other tests rely on.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use chatvault::pg::{find_binaries_in, testing, EmbeddedPostgres, PgError};
use sqlx::{Connection, PgConnection};

async fn connect(server: &EmbeddedPostgres) -> PgConnection {
    PgConnection::connect_with(&server.connect_options())
        .await
        .expect("connect over the unix socket")
}

fn process_exists(pid: u32) -> bool {
    // A zombie (killed or stopped but not yet reaped) counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .unwrap()
            .1
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn wait_until_gone(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while process_exists(pid) {
        assert!(Instant::now() < deadline, "process {pid} still alive");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn proc_status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .unwrap()
        .trim()
        .to_owned()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[tokio::test]
async fn starts_on_a_fresh_dir_and_answers_over_the_socket_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let started = Instant::now();
    let server = EmbeddedPostgres::start(dir.path()).await.unwrap();
    eprintln!("first start (initdb included) took {:?}", started.elapsed());
    assert!(server.started_here());
    if is_root() {
        // The cluster user must pass through data_dir, and nothing more.
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o711);
    }
    let socket_dir_mode = std::fs::metadata(server.socket_dir())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(socket_dir_mode & 0o777, 0o700);
    assert!(server.socket_dir().join(".s.PGSQL.5432").exists());
    assert!(server
        .psql_command()
        .contains(&*server.socket_dir().to_string_lossy()));

    let mut connection = connect(&server).await;
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(one, 1);
    let listen: String = sqlx::query_scalar("SHOW listen_addresses")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(listen, "", "the server must not listen on TCP");
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(database, "chatvault");
    let encoding: String = sqlx::query_scalar("SHOW server_encoding")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(encoding, "UTF8");
    connection.close().await.unwrap();

    // Its own process group, so a terminal's Ctrl-C does not reach it.
    let pid = server.pid();
    // SAFETY: getpgid has no preconditions.
    assert_eq!(unsafe { libc::getpgid(pid as i32) }, pid as i32);
    if is_root() {
        let uids = proc_status_field(pid, "Uid:");
        assert!(
            !uids.split_whitespace().any(|uid| uid == "0"),
            "uids {uids}"
        );
        let groups = proc_status_field(pid, "Groups:");
        assert!(
            !groups.split_whitespace().any(|gid| gid == "0"),
            "groups {groups}"
        );
    }
    let log = std::fs::read_to_string(server.log_file()).unwrap();
    assert!(log.contains("database system is ready"), "{log}");

    server.stop().await.unwrap();
    wait_until_gone(pid);
    assert!(!dir.path().join("postgres/postmaster.pid").exists());
}

#[tokio::test]
async fn a_second_start_uses_the_running_server_and_does_not_stop_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = EmbeddedPostgres::start(dir.path()).await.unwrap();
    let started = Instant::now();
    let second = EmbeddedPostgres::start(dir.path()).await.unwrap();
    eprintln!("joining a running server took {:?}", started.elapsed());
    assert!(first.started_here());
    assert!(!second.started_here());
    assert_eq!(first.pid(), second.pid());

    second.stop().await.unwrap();
    let mut connection = connect(&first).await;
    sqlx::query("SELECT 1")
        .execute(&mut connection)
        .await
        .expect("the server survives the second process stopping");
    connection.close().await.unwrap();

    let pid = first.pid();
    first.stop().await.unwrap();
    wait_until_gone(pid);
}

#[tokio::test]
async fn the_last_user_stops_a_server_whose_starter_left_first() {
    let dir = tempfile::tempdir().unwrap();
    let first = EmbeddedPostgres::start(dir.path()).await.unwrap();
    let second = EmbeddedPostgres::start(dir.path()).await.unwrap();
    let pid = first.pid();

    first.stop().await.unwrap();
    let mut connection = connect(&second).await;
    sqlx::query("SELECT 1")
        .execute(&mut connection)
        .await
        .expect("the starter must not stop the server while another process uses it");
    connection.close().await.unwrap();

    second.stop().await.unwrap();
    wait_until_gone(pid);
    assert!(!dir.path().join("postgres/postmaster.pid").exists());
}

#[tokio::test]
async fn concurrent_starts_share_one_server() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = tokio::join!(
        EmbeddedPostgres::start(dir.path()),
        EmbeddedPostgres::start(dir.path())
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.pid(), b.pid());
    assert!(a.started_here() ^ b.started_here());
    let pid = a.pid();
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    wait_until_gone(pid);
}

#[tokio::test]
async fn starts_after_the_postmaster_was_killed() {
    let dir = tempfile::tempdir().unwrap();
    let killed = EmbeddedPostgres::start(dir.path()).await.unwrap();
    let mut connection = connect(&killed).await;
    sqlx::query("CREATE TABLE kept (id int)")
        .execute(&mut connection)
        .await
        .unwrap();
    let old_pid = killed.pid();
    // SAFETY: plain kill(2) of the postmaster we started.
    assert_eq!(unsafe { libc::kill(old_pid as i32, libc::SIGKILL) }, 0);
    wait_until_gone(old_pid);
    drop(connection);
    drop(killed);
    assert!(dir.path().join("postgres/postmaster.pid").exists());

    let started = Instant::now();
    let server = EmbeddedPostgres::start(dir.path()).await.unwrap();
    eprintln!("start after kill -9 took {:?}", started.elapsed());
    assert!(server.started_here());
    assert_ne!(server.pid(), old_pid);
    let mut connection = connect(&server).await;
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename = 'kept'")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(tables, 1, "committed data survives the crash");
    connection.close().await.unwrap();
    let pid = server.pid();
    server.stop().await.unwrap();
    wait_until_gone(pid);
}

#[tokio::test]
async fn data_survives_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = EmbeddedPostgres::start(dir.path()).await.unwrap();
    let mut connection = connect(&server).await;
    sqlx::query("CREATE TABLE notes (body text)")
        .execute(&mut connection)
        .await
        .unwrap();
    sqlx::query("INSERT INTO notes VALUES ('still here')")
        .execute(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();
    let first_pid = server.pid();
    server.stop().await.unwrap();
    wait_until_gone(first_pid);

    let started = Instant::now();
    let server = EmbeddedPostgres::start(dir.path()).await.unwrap();
    eprintln!(
        "restart of an existing cluster took {:?}",
        started.elapsed()
    );
    assert!(server.started_here());
    let mut connection = connect(&server).await;
    let body: String = sqlx::query_scalar("SELECT body FROM notes")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(body, "still here");
    connection.close().await.unwrap();
    server.stop().await.unwrap();
}

#[test]
fn missing_binaries_give_one_clear_line() {
    let empty = tempfile::tempdir().unwrap();
    let err = find_binaries_in(&[empty.path().to_owned()]).unwrap_err();
    assert!(matches!(err, PgError::BinariesNotFound { .. }));
    let message = err.to_string();
    assert!(!message.contains('\n'), "{message}");
    assert!(
        message.contains(&*empty.path().to_string_lossy()),
        "{message}"
    );
    assert!(message.contains("apt-get install postgresql"), "{message}");
    assert!(message.contains("database.url"), "{message}");
}

#[test]
fn binaries_are_found_on_this_machine() {
    let binaries = chatvault::pg::find_binaries().unwrap();
    assert!(binaries.bindir.join("initdb").exists());
    assert!(binaries.version >= 10, "{binaries:?}");
}

#[tokio::test]
async fn a_data_dir_the_cluster_user_cannot_reach_is_refused_by_name() {
    if !is_root() {
        return; // only root switches to another user
    }
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let data_dir = private.path().join("data");
    let err = EmbeddedPostgres::start(&data_dir).await.unwrap_err();
    assert!(matches!(err, PgError::NotTraversable { .. }), "{err}");
    assert!(
        err.to_string().contains(&*private.path().to_string_lossy()),
        "{err}"
    );
}

#[tokio::test]
async fn fresh_pools_are_isolated_databases() {
    let started = Instant::now();
    let first = testing::fresh_pool().await;
    eprintln!(
        "first fresh_pool (cluster start included) took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let second = testing::fresh_pool().await;
    eprintln!("next fresh_pool took {:?}", started.elapsed());

    sqlx::query("CREATE TABLE only_here (id int)")
        .execute(&first)
        .await
        .unwrap();
    let visible: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename = 'only_here'")
            .fetch_one(&second)
            .await
            .unwrap();
    assert_eq!(visible, 0);
    let names: (String, String) = (
        sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&first)
            .await
            .unwrap(),
        sqlx::query_scalar("SELECT current_database()")
            .fetch_one(&second)
            .await
            .unwrap(),
    );
    assert_ne!(names.0, names.1);
}

#[tokio::test]
async fn fresh_databases_work_from_another_test_runtime() {
    let (options, name) = testing::fresh_database().await;
    let mut connection = PgConnection::connect_with(&options).await.unwrap();
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(database, name);
    let fsync: String = sqlx::query_scalar("SHOW fsync")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(fsync, "off");
}

/// A `postmaster.pid` as a server leaves it when it is killed, naming `pid`.
fn write_stale_postmaster_pid(cluster: &std::path::Path, socket_dir: &std::path::Path, pid: u32) {
    let text = format!(
        "{pid}\n{}\n1700000000\n5432\n{}\n\n  5432001     32768\nready   \n",
        cluster.display(),
        socket_dir.display()
    );
    std::fs::write(cluster.join("postmaster.pid"), text).unwrap();
}

/// Regression: a `postmaster.pid` whose pid now belongs to another process (here one that
/// even works in the cluster's directory, as the old check looked at) was taken for the
/// running server, and startup waited for it until it gave up.
#[tokio::test]
async fn a_stale_postmaster_pid_naming_another_process_does_not_block_startup() {
    let dir = tempfile::tempdir().unwrap();
    let server = EmbeddedPostgres::start(dir.path()).await.unwrap();
    let socket_dir = server.socket_dir().to_path_buf();
    let pid = server.pid();
    server.stop().await.unwrap();
    wait_until_gone(pid);
    let cluster = dir.path().canonicalize().unwrap().join("postgres");
    let mut impostor = std::process::Command::new("sleep")
        .arg("300")
        .current_dir(&cluster)
        .spawn()
        .unwrap();
    write_stale_postmaster_pid(&cluster, &socket_dir, impostor.id());

    let started = Instant::now();
    let server = tokio::time::timeout(Duration::from_secs(60), EmbeddedPostgres::start(dir.path()))
        .await
        .expect("startup is not blocked by the stale postmaster.pid")
        .unwrap();
    eprintln!(
        "start past a stale postmaster.pid took {:?}",
        started.elapsed()
    );
    assert!(server.started_here());
    assert_ne!(server.pid(), impostor.id());
    let mut connection = connect(&server).await;
    sqlx::query("SELECT 1")
        .execute(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();
    assert!(
        process_exists(impostor.id()),
        "the other process is left alone"
    );
    let pid = server.pid();
    server.stop().await.unwrap();
    wait_until_gone(pid);
    impostor.kill().unwrap();
    impostor.wait().unwrap();
}

/// `psql` as `user` (root switches to it), `-c 'SELECT 1'` against the server's socket.
fn psql_as(server: &EmbeddedPostgres, user: Option<(u32, u32)>) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    let binaries = chatvault::pg::find_binaries().unwrap();
    let mut command = std::process::Command::new(binaries.psql());
    command
        .env_clear()
        .args(["-X", "-w", "-h"])
        .arg(server.socket_dir())
        .args(["-U", "chatvault", "-d", "chatvault", "-c", "SELECT 1"]);
    if let Some((uid, gid)) = user {
        command.uid(uid).gid(gid);
    }
    command.output().unwrap()
}

/// The uid and gid of the user running the cluster's processes.
fn server_user(server: &EmbeddedPostgres) -> (u32, u32) {
    let uid = proc_status_field(server.pid(), "Uid:");
    let gid = proc_status_field(server.pid(), "Gid:");
    let first = |ids: String| ids.split_whitespace().next().unwrap().parse().unwrap();
    (first(uid), first(gid))
}

/// Regression: as root the server runs as the shared `postgres` (or `nobody`) account with
/// trust authentication, so every process of that account was a database superuser.
#[tokio::test]
async fn only_the_user_running_chatvault_may_connect() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let server = EmbeddedPostgres::start(dir.path()).await.unwrap();
    let data_dir = dir.path().canonicalize().unwrap();

    let mut connection = connect(&server).await;
    let methods: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT auth_method FROM pg_hba_file_rules")
            .fetch_all(&mut connection)
            .await
            .unwrap();
    assert_eq!(methods, ["peer"]);
    let hba: String = sqlx::query_scalar("SHOW hba_file")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(hba, data_dir.join("pg_hba.conf").to_string_lossy());
    connection.close().await.unwrap();

    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    let ident = std::fs::read_to_string(data_dir.join("pg_ident.conf")).unwrap();
    let mapped: Vec<&str> = ident
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(mapped.len(), 1, "{ident}");
    let (cluster_uid, cluster_gid) = server_user(&server);
    for name in ["pg_hba.conf", "pg_ident.conf"] {
        let meta = std::fs::metadata(data_dir.join(name)).unwrap();
        assert_eq!(meta.uid(), me);
        let mode = meta.permissions().mode() & 0o777;
        if is_root() {
            assert_eq!((mode, meta.gid()), (0o640, cluster_gid), "{name}");
        } else {
            assert_eq!(mode, 0o600, "{name}");
        }
    }

    let mine = psql_as(&server, None);
    assert!(
        mine.status.success(),
        "{}",
        String::from_utf8_lossy(&mine.stderr)
    );
    if is_root() {
        assert_ne!(cluster_uid, 0);
        let theirs = psql_as(&server, Some((cluster_uid, cluster_gid)));
        let stderr = String::from_utf8_lossy(&theirs.stderr);
        assert!(!theirs.status.success(), "the cluster's account got in");
        assert!(stderr.contains("authentication failed"), "{stderr}");
    }
    let pid = server.pid();
    server.stop().await.unwrap();
    wait_until_gone(pid);
}

#[tokio::test]
async fn the_throwaway_test_clusters_use_peer_authentication_too() {
    let pool = testing::fresh_pool().await;
    let methods: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT auth_method FROM pg_hba_file_rules")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(methods, ["peer"]);
}

/// Regression: the socket directory's owner and mode were set by path, following a symlink
/// planted there, so root could be made to hand any directory to the cluster's account.
#[tokio::test]
async fn a_symlink_where_chatvault_changes_owners_is_refused_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let victim = tempfile::tempdir().unwrap();
    std::fs::set_permissions(victim.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).unwrap();
    std::os::unix::fs::symlink(victim.path(), data_dir.join("run")).unwrap();

    let err = EmbeddedPostgres::start(&data_dir).await.unwrap_err();
    assert!(err.to_string().contains("symlink"), "{err}");
    let meta = std::fs::metadata(victim.path()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    // SAFETY: geteuid has no preconditions.
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), unsafe {
        libc::geteuid()
    });
}
