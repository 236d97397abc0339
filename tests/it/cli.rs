//! The `chatvault` binary as a user runs it: exit codes, one-line errors, stdout only for
//! output, no secrets anywhere.

use std::path::Path;
use std::process::{Command, Output};

use chatvault::sim::tangsengdaodao::{SimServer, World, WorldSpec};

fn chatvault(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatvault"));
    cmd.current_dir(dir)
        .args(args)
        .env_remove("CHATVAULT_CONFIG");
    for var in [
        "CHATVAULT_DATABASE_URL",
        "CHATVAULT_DATA_DIR",
        "CHATVAULT_LISTEN",
        "CHATVAULT_SERVER_TOKEN",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run chatvault")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A database URL for a fresh database of the test cluster.
async fn database_url() -> String {
    let (options, name) = chatvault::pg::testing::fresh_database().await;
    let socket = options
        .get_socket()
        .expect("the test cluster listens on a socket");
    format!(
        "postgres://{}@localhost/{name}?host={}",
        options.get_username(),
        socket.display()
    )
}

#[test]
fn every_subcommand_has_help_with_an_example() {
    let dir = tempfile::tempdir().unwrap();
    for sub in [
        "run",
        "sync",
        "status",
        "verify",
        "export",
        "audit",
        "coverage",
        "search",
        "reindex",
        "migrate",
        "config check",
        "sim",
        "demo",
    ] {
        let mut args: Vec<&str> = sub.split(' ').collect();
        args.push("--help");
        let out = chatvault(dir.path(), &args, &[]);
        assert!(out.status.success(), "{sub} --help");
        assert!(
            text(&out.stdout).contains("Example"),
            "{sub} --help has no example"
        );
    }
    let out = chatvault(dir.path(), &["frobnicate"], &[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn config_check_prints_one_line_per_problem_with_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "[[source]]\nname = \"a\"\nplatform = \"tangsengdaodao\"\nbase_url = \"http://x\"\nusername = \"u\"\npassword_env = \"NOT_SET_ANYWHERE_42\"\nschedule = \"every minute\"\npasword = \"x\"\n",
    )
    .unwrap();
    let out = chatvault(
        dir.path(),
        &["--config", "bad.toml", "config", "check"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines.iter().all(|l| l.starts_with("bad.toml:")), "{stdout}");
    assert!(stdout.contains("NOT_SET_ANYWHERE_42"), "{stdout}");
    assert!(stdout.contains("schedule"), "{stdout}");
    assert!(stdout.contains("did you mean \"password\""), "{stdout}");
}

#[test]
fn migrate_and_status_work_on_the_embedded_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let migrate = chatvault(dir.path(), &["migrate"], &[]);
    assert!(migrate.status.success(), "{}", text(&migrate.stderr));
    assert!(text(&migrate.stdout).contains("migrations current"));
    let status = chatvault(dir.path(), &["status", "--json"], &[]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    assert_eq!(text(&status.stdout), "", "no sources yet: no objects");
    assert!(dir
        .path()
        .join("chatvault-data/postgres/PG_VERSION")
        .exists());
    // the cluster was stopped on exit: its socket is gone
    assert!(!dir.path().join("chatvault-data/run/.s.PGSQL.5432").exists());
}

#[tokio::test]
async fn sync_status_and_verify_against_the_fake_server() {
    let server = SimServer::start(World::generate(&WorldSpec {
        messages: 400,
        ..WorldSpec::default()
    }))
    .await;
    let url = database_url().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[[source]]\nname = \"acme\"\nplatform = \"tangsengdaodao\"\nbase_url = \"{}\"\nusername = \"{}\"\npassword_env = \"ACME_PASSWORD\"\nrequests_per_second = 500\n",
        server.base_url(),
        WorldSpec::default().me_username
    );
    std::fs::write(dir.path().join("chatvault.toml"), config).unwrap();
    let env = [
        ("CHATVAULT_DATABASE_URL", url.as_str()),
        ("ACME_PASSWORD", "hunter2-wrong"),
    ];
    let dir_path = dir.path().to_path_buf();

    // a wrong password: exit 1, a clear message, the secret nowhere
    let out = tokio::task::spawn_blocking({
        let dir = dir_path.clone();
        let env = env.map(|(k, v)| (k.to_string(), v.to_string()));
        move || {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            chatvault(&dir, &["sync"], &env)
        }
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(!all.contains("hunter2-wrong"), "{all}");
    assert!(all.contains("acme: failed"), "{all}");
    assert!(all.contains("login"), "{all}");

    let password = WorldSpec::default().me_password;
    let env = [
        ("CHATVAULT_DATABASE_URL", url.clone()),
        ("ACME_PASSWORD", password.clone()),
    ];
    let run = |args: &'static [&'static str]| {
        let dir = dir_path.clone();
        let env = env.clone();
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            chatvault(&dir, args, &env)
        })
    };
    let out = run(&["sync"]).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("acme: ok"),
        "{}",
        text(&out.stdout)
    );

    let out = run(&["status", "--json"]).await.unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["source"], "acme");
    let messages = lines[0]["messages"].as_i64().unwrap();
    assert!(messages > 300, "{messages}");
    let head = lines[0]["chain_head"].as_str().unwrap().to_string();

    let out = run(&["verify"]).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("ok: every chain is intact"));

    // export: every message once, with its history, in the archive's order
    let out = run(&["export"]).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let exported: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(exported.len() as i64, messages);
    assert_eq!(
        text(&out.stderr).trim(),
        format!("exported {messages} messages")
    );
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM archive.message_versions")
        .fetch_one(&pool)
        .await
        .unwrap();
    let exported_versions: usize = exported
        .iter()
        .map(|m| m["versions"].as_array().unwrap().len())
        .sum();
    assert_eq!(exported_versions as i64, versions);
    for m in &exported {
        let v = m["versions"].as_array().unwrap();
        assert_eq!(v[0]["version"], 1);
        assert_eq!(v.last().unwrap()["text"], m["text"], "{m}");
        assert_eq!(v.len() as i64 - 1, m["edit_count"].as_i64().unwrap());
    }
    let conversation = exported[0]["conversation_id"].as_str().unwrap().to_string();
    let in_conversation: i64 =
        sqlx::query_scalar("SELECT count(*) FROM archive.messages WHERE conversation_id = $1")
            .bind(&conversation)
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;

    // CSV of one conversation into a file: a header, then one record per message
    let dir = dir_path.clone();
    let env2 = env.clone();
    let conv = conversation.clone();
    let out = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env2.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let args = [
            "export",
            "--conversation",
            &conv,
            "--format",
            "csv",
            "--output",
            "one.csv",
        ];
        chatvault(&dir, &args, &env)
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    let csv = std::fs::read_to_string(dir_path.join("one.csv")).unwrap();
    assert!(csv.starts_with("source,platform,conversation_id,"), "{csv}");
    let records = csv.split("\r\n").filter(|r| !r.is_empty()).count();
    assert_eq!(records as i64, in_conversation + 1);
    assert!(!dir_path.join("one.csv.partial").exists());

    // wrong input: one clear line, exit 1, nothing written
    let out = run(&["export", "--since", "last tuesday"]).await.unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is not a time"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["export", "--source", "acmee"]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("archived sources: acme"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "");
    let out = run(&["export", "--since", "2026-11-02", "--until", "2026-11-01"])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is not before"),
        "{}",
        text(&out.stderr)
    );

    // tamper with the database, as someone with write access could
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("SET session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("UPDATE vault.events SET detail = '{}'::jsonb WHERE event_seq = 10")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    pool.close().await;
    let out = run(&["verify"]).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("source acme, event 10"), "{stderr}");

    // a saved head that is not in the chain
    let dir = dir_path.clone();
    let env2 = env.clone();
    let bogus = format!("acme={}", head.replace('a', "b"));
    let out = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env2.iter().map(|(k, v)| (*k, v.as_str())).collect();
        chatvault(&dir, &["verify", "--head", &bogus], &env)
    })
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    server.shutdown().await;
}

#[test]
fn unknown_source_names_are_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let out = chatvault(dir.path(), &["sync", "--source", "nope"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: no source named \"nope\""),
        "{stderr}"
    );
    assert!(
        !dir.path().join("chatvault-data").exists(),
        "no database was started"
    );
}

/// Regression: an unreachable database was reported only as a pool timeout, twice, after 30 s.
#[test]
fn an_unreachable_database_is_one_line_naming_the_cause_without_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let out = chatvault(
        dir.path(),
        &["status"],
        &[(
            "CHATVAULT_DATABASE_URL",
            "postgres://u:topsecret@127.0.0.1:1/db",
        )],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot connect to PostgreSQL"), "{stderr}");
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(!stderr.contains("topsecret"), "{stderr}");
    assert!(!stderr.contains("timed out"), "{stderr}");
}

/// Regression: `requests_per_second = 1e-300` passed `config check` and panicked in `sync`.
#[test]
fn extreme_config_values_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("extreme.toml"),
        "[sync]\nschedule_jitter = 99999999999\n[[source]]\nname = \"a\"\nplatform = \"tangsengdaodao\"\nbase_url = \"http://127.0.0.1:9\"\nusername = \"u\"\npassword_env = \"EXTREME_PW\"\nrequests_per_second = 1e-300\nrequest_timeout = -1\n",
    )
    .unwrap();
    let env = [("EXTREME_PW", "p")];
    let out = chatvault(
        dir.path(),
        &["--config", "extreme.toml", "config", "check"],
        &env,
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("requests_per_second: must be a number from 0.001 to 1000000, got 1e-300"),
        "{stdout}"
    );
    assert!(stdout.contains("request_timeout"), "{stdout}");
    assert!(stdout.contains("schedule_jitter"), "{stdout}");
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    // and sync refuses to start rather than panic
    let out = chatvault(dir.path(), &["--config", "extreme.toml", "sync"], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dir.path().join("chatvault-data").exists());
}

/// The `--json` line of `source` in a command's output.
fn json_line_of(stdout: &[u8], source: &str) -> serde_json::Value {
    text(stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["source"] == source)
        .unwrap_or_else(|| panic!("no line for {source}"))
}

#[tokio::test]
async fn status_shows_the_push_channel_a_daemon_reported_and_never_a_stale_connection() {
    use chatvault::model::{Platform, SourceName};
    use chatvault::push::{PushState, PushStatus};
    let url = database_url().await;
    let store = chatvault::store::Store::from_pool(sqlx::PgPool::connect(&url).await.unwrap());
    store.migrate().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("chatvault.toml"),
        "[[source]]\nname = \"yh\"\nplatform = \"yunhu\"\ntoken_env = \"YH_TOKEN\"\n\
         [[source]]\nname = \"off\"\nplatform = \"yunhu\"\ntoken_env = \"YH_TOKEN\"\npush = false\n",
    )
    .unwrap();
    for name in ["yh", "off"] {
        store
            .register_source(&SourceName::new(name), Platform::Yunhu)
            .await
            .unwrap();
    }
    let since = chrono::Utc::now() - chrono::Duration::minutes(30);
    let reported = |at| {
        let status = PushStatus {
            state: PushState {
                connected: true,
                since: Some(since),
                reconnects: 2,
                pushes: 17,
                last_push_at: Some(since),
                last_error: None,
            },
            healthy: true,
            lag_seconds: Some(0.4),
        };
        let store = store.clone();
        async move {
            store
                .report_push_states(&[("yh".to_string(), status)], at)
                .await
                .unwrap()
        }
    };
    let status = |json: bool| {
        let dir = dir.path().to_path_buf();
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let args: &[&str] = if json {
                &["status", "--json"]
            } else {
                &["status"]
            };
            chatvault(
                &dir,
                args,
                &[("CHATVAULT_DATABASE_URL", &url), ("YH_TOKEN", "t")],
            )
        })
    };
    reported(chrono::Utc::now()).await;
    let out = status(false).await.unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("push connected since"), "{shown}");
    assert!(shown.contains("healthy"), "{shown}");
    assert!(shown.contains("17 pushes"), "{shown}");
    assert!(shown.contains("2 reconnects"), "{shown}");
    assert!(shown.contains("push off (push = false)"), "{shown}");
    let out = status(true).await.unwrap();
    let line = json_line_of(&out.stdout, "yh");
    assert_eq!(line["push"]["connected"], true, "{line}");
    assert_eq!(line["push"]["stale"], false, "{line}");
    assert_eq!(line["push"]["pushes"], 17, "{line}");

    // the daemon stopped reporting five minutes ago: nothing is claimed about now
    reported(chrono::Utc::now() - chrono::Duration::minutes(5)).await;
    let shown = text(&status(false).await.unwrap().stdout);
    assert!(
        shown.contains("push unknown: no daemon has reported since"),
        "{shown}"
    );
    assert!(!shown.contains("push connected"), "{shown}");
    let out = status(true).await.unwrap();
    let line = json_line_of(&out.stdout, "yh");
    assert_eq!(line["push"]["connected"], false, "{line}");
    assert_eq!(line["push"]["healthy"], false, "{line}");
    assert_eq!(line["push"]["stale"], true, "{line}");
}
