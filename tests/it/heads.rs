//! Chain heads kept elsewhere: `verify --print-heads` round-trips into `verify --head`, and
//! each sync run appends the heads to `heads_file` and hands them to `heads_command`; a
//! failing or slow command never fails the sync.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chatvault::config::IntegrityConfig;
use chatvault::metrics::Metrics;
use chatvault::sim::tangsengdaodao::{SimServer, World};
use chatvault::sync::{sync_source, SyncOptions};

use crate::coverage::{database, quick, source, spec};

fn verify(url: &str, args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chatvault"))
        .current_dir(dir.path())
        .arg("verify")
        .args(args)
        .env_remove("CHATVAULT_CONFIG")
        .env("CHATVAULT_DATABASE_URL", url)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sh(script: String) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_run_appends_the_heads_and_runs_the_command_and_they_verify() {
    let server = SimServer::start(World::generate(&spec())).await;
    let src = source(&server);
    let (store, url) = database().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("heads.log");
    let got = dir.path().join("stdin-of-command");
    let options = SyncOptions {
        heads: Some(Arc::new(IntegrityConfig {
            heads_file: Some(file.clone()),
            heads_command: Some(sh(format!("cat >> '{}'", got.display()))),
            heads_command_timeout: Duration::from_secs(10),
        })),
        ..quick()
    };
    for run in 1..=2 {
        let r = sync_source(&store, &src, &options, None).await;
        assert!(r.ok(), "{:?}", r.error);
        assert_eq!(r.heads_published, Some(true));
        let lines: Vec<String> = std::fs::read_to_string(&file)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(lines.len(), run, "one line per run");
        let stored = store.stored_heads().await.unwrap();
        let (time, heads) = lines[run - 1].split_once(' ').unwrap();
        chrono::DateTime::parse_from_rfc3339(time).unwrap();
        let want: Vec<String> = stored.iter().map(|h| h.to_string()).collect();
        assert_eq!(heads.split(' ').collect::<Vec<_>>(), want);
        assert!(want[0].starts_with("acme=") && !want[0].starts_with("acme=0:"));
        assert_eq!(
            std::fs::read_to_string(&got).unwrap(),
            std::fs::read_to_string(&file).unwrap(),
            "the command got each line on stdin"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // a line of the file, and `--print-heads`, are what `verify --head` takes
    let last = std::fs::read_to_string(&file).unwrap();
    let saved: Vec<String> = last
        .lines()
        .last()
        .unwrap()
        .split(' ')
        .skip(1)
        .map(|h| format!("--head={h}"))
        .collect();
    let saved: Vec<&str> = saved.iter().map(String::as_str).collect();
    let (code, _, err) = tokio::task::block_in_place(|| verify(&url, &saved));
    assert_eq!(code, 0, "{err}");
    let (code, printed, err) = tokio::task::block_in_place(|| verify(&url, &["--print-heads"]));
    assert_eq!(code, 0, "{err}");
    let args: Vec<String> = printed.lines().map(|h| format!("--head={h}")).collect();
    assert_eq!(args.len(), 1);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = tokio::task::block_in_place(|| verify(&url, &args));
    assert_eq!(code, 0, "{out}{err}");
    let (code, json, _) =
        tokio::task::block_in_place(|| verify(&url, &["--print-heads", "--json"]));
    assert_eq!(code, 0);
    let object: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(
        format!("--head={}", object["head"].as_str().unwrap()),
        args[0]
    );
    assert_eq!(
        object["head"].as_str().unwrap(),
        format!(
            "{}={}:{}",
            object["source"].as_str().unwrap(),
            object["event_seq"],
            object["hash"].as_str().unwrap()
        )
    );

    // a head that is not in the chain (a consistent rewrite would leave the saved one out)
    let forged = format!(
        "--head={}",
        printed
            .trim()
            .rsplit_once(':')
            .map(|(a, _)| format!("{a}:{}", "0".repeat(64)))
            .unwrap()
    );
    let (code, _, err) = tokio::task::block_in_place(|| verify(&url, &[&forged]));
    assert_eq!(code, 1, "{err}");
}

#[tokio::test]
async fn a_failing_or_slow_command_never_fails_the_sync() {
    let server = SimServer::start(World::generate(&spec())).await;
    let src = source(&server);
    let (store, _) = database().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("heads.log");
    let metrics = Metrics::new();
    for (command, timeout) in [
        (sh("exit 7".into()), Duration::from_secs(10)),
        (sh("sleep 30".into()), Duration::from_secs(1)),
        (
            vec!["/nonexistent/keeper".to_string()],
            Duration::from_secs(1),
        ),
    ] {
        let options = SyncOptions {
            heads: Some(Arc::new(IntegrityConfig {
                heads_file: Some(file.clone()),
                heads_command: Some(command.clone()),
                heads_command_timeout: timeout,
            })),
            ..quick()
        };
        let started = Instant::now();
        let r = sync_source(&store, &src, &options, None).await;
        assert!(r.ok(), "{command:?}: {:?}", r.error);
        assert_eq!(r.heads_published, Some(false), "{command:?}");
        assert!(started.elapsed() < Duration::from_secs(20), "{command:?}");
        metrics.record_run(&r);
    }
    // the file still got its line each time
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 3);
    let text = metrics.render();
    assert!(
        text.contains("chatvault_heads_publish_failures_total{source=\"acme\"} 3"),
        "{text}"
    );
}
