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
