//! `chatvault sync`, then `search`, `reindex` and `verify` as a newcomer runs them, against
//! the fake TangSengDaoDao server and a real PostgreSQL. Every query's hits are compared
//! with what PostgreSQL says contains the words.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use chatvault::sim::tangsengdaodao::{SimServer, World, WorldSpec};

fn chatvault(dir: &Path, args: &[&str], env: &[(String, String)]) -> Output {
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

async fn run(dir: &Path, args: &[&str], env: &[(String, String)]) -> Output {
    let dir = dir.to_path_buf();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env = env.to_vec();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        chatvault(&dir, &args, &env)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn search_after_sync_finds_exactly_the_messages_that_contain_the_words() {
    let spec = WorldSpec {
        messages: 600,
        ..WorldSpec::default()
    };
    let server = SimServer::start(World::generate(&spec)).await;
    let (options, name) = chatvault::pg::testing::fresh_database().await;
    let socket = options.get_socket().expect("a socket");
    let url = format!(
        "postgres://{}@localhost/{name}?host={}",
        options.get_username(),
        socket.display()
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("chatvault.toml"),
        format!(
            "[[source]]\nname = \"acme\"\nplatform = \"tangsengdaodao\"\nbase_url = \"{}\"\nusername = \"{}\"\npassword_env = \"ACME_PASSWORD\"\nrequests_per_second = 500\n",
            server.base_url(),
            spec.me_username
        ),
    )
    .unwrap();
    let env = vec![
        ("CHATVAULT_DATABASE_URL".to_string(), url.clone()),
        ("ACME_PASSWORD".to_string(), spec.me_password.clone()),
    ];

    // Before any sync: a clear error, not a panic.
    let out = run(dir.path(), &["search", "会议"], &env).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no search index yet"),
        "{}",
        text(&out.stderr)
    );

    let out = run(dir.path(), &["sync"], &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("index: "), "{stdout}");

    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM archive.messages")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(messages > 500, "{messages}");
    let mut nonempty = 0;
    for word in ["会议", "周报", "明天", "好的", "我", "收到", "bug", "PPT"] {
        let expected: BTreeSet<String> = sqlx::query_scalar(
            "SELECT message_id FROM archive.messages
             WHERE strpos(lower(text), lower($1)) > 0 AND recalled_at IS NULL AND deleted_at IS NULL",
        )
        .bind(word)
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
        // quoted: the exact word, as the SQL says it
        let quoted = format!("\"{word}\"");
        let out = run(
            dir.path(),
            &["search", &quoted, "--json", "--limit", "1000"],
            &env,
        )
        .await;
        assert!(out.status.success(), "{word}: {}", text(&out.stderr));
        let mut found = BTreeSet::new();
        for line in text(&out.stdout).lines() {
            let hit: serde_json::Value = serde_json::from_str(line).expect("one object per line");
            assert_eq!(hit["source"], "acme");
            assert!(hit["sent_at"].is_string());
            assert!(!hit["highlights"].as_array().unwrap().is_empty(), "{line}");
            found.insert(hit["message_id"].as_str().unwrap().to_string());
        }
        if word.is_ascii() {
            // English words match whole words only: every hit contains the word.
            assert!(found.is_subset(&expected), "{word}");
        } else {
            assert_eq!(found, expected, "{word}");
        }
        nonempty += usize::from(!found.is_empty());
    }
    assert!(nonempty >= 5, "the queries should find something");

    // Readable output: time, conversation, the hit marked.
    let out = run(dir.path(), &["search", "收到", "--limit", "3"], &env).await;
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    assert!(stdout.contains("【收到】"), "{stdout}");
    assert!(stdout.contains("matching message"), "{stdout}");

    // Malformed queries and arguments: one line, exit 1.
    for args in [
        vec!["search", "\"会议"],
        vec!["search", "会议 OR"],
        vec!["search", "会议", "--since", "yesterday"],
    ] {
        let out = run(dir.path(), &args, &env).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = text(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert_eq!(text(&out.stdout), "");
    }

    // reindex, then verify checks the index against PostgreSQL.
    let out = run(dir.path(), &["reindex"], &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("index rebuilt: {messages} messages")),
        "{}",
        text(&out.stdout)
    );
    let out = run(dir.path(), &["verify"], &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("{messages} documents, {messages} messages")),
        "{stdout}"
    );

    // Drift: a message PostgreSQL holds that the index lost is reported. (Deleting a
    // message outside a purge is refused by trigger; someone with owner rights bypasses it.)
    let mut conn = pool.acquire().await.unwrap();
    for sql in [
        "SET session_replication_role = replica",
        "DELETE FROM vault.messages WHERE message_id = (SELECT min(message_id) FROM vault.messages)",
        "SET session_replication_role = origin",
    ] {
        sqlx::query(sql).execute(&mut *conn).await.unwrap();
    }
    drop(conn);
    let out = run(dir.path(), &["verify"], &env).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("index drift"),
        "{}",
        text(&out.stderr)
    );
    pool.close().await;
    server.shutdown().await;
}

/// `chatvault run`: the daemon indexes what its scheduled syncs archive, and serves it on
/// `/api/search` from the same index.
#[tokio::test]
async fn the_daemon_indexes_its_syncs_and_serves_search() {
    let spec = WorldSpec {
        messages: 300,
        ..WorldSpec::default()
    };
    let server = SimServer::start(World::generate(&spec)).await;
    let (options, name) = chatvault::pg::testing::fresh_database().await;
    let socket = options.get_socket().expect("a socket");
    let url = format!(
        "postgres://{}@localhost/{name}?host={}",
        options.get_username(),
        socket.display()
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("chatvault.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nshutdown_timeout = 5\n[sync]\nschedule_jitter = 0\n[[source]]\nname = \"acme\"\nplatform = \"tangsengdaodao\"\nbase_url = \"{}\"\nusername = \"{}\"\npassword_env = \"ACME_PASSWORD\"\nrequests_per_second = 500\nschedule = \"*/2 * * * * *\"\n",
            server.base_url(),
            spec.me_username
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatvault"))
        .current_dir(dir.path())
        .args(["run"])
        .env_remove("CHATVAULT_CONFIG")
        .env_remove("CHATVAULT_DATA_DIR")
        .env_remove("CHATVAULT_LISTEN")
        .env_remove("CHATVAULT_SERVER_TOKEN")
        .env("CHATVAULT_DATABASE_URL", &url)
        .env("ACME_PASSWORD", &spec.me_password)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the daemon");

    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut agreed = false;
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let expected: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM archive.messages
             WHERE strpos(text, '收到') > 0 AND recalled_at IS NULL AND deleted_at IS NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
        let Ok(resp) = http
            .get(format!(
                "http://127.0.0.1:{port}/api/search?q=%E6%94%B6%E5%88%B0&limit=1"
            ))
            .send()
            .await
        else {
            continue;
        };
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        if expected > 0 && body["total"].as_i64() == Some(expected) {
            agreed = true;
            break;
        }
    }
    // SAFETY: a signal to the child this test started.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    pool.close().await;
    server.shutdown().await;
    assert!(
        agreed,
        "the daemon's /api/search never agreed with PostgreSQL"
    );
    assert!(status.success(), "{status:?}");
}
