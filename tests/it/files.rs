//! What chatvault leaves on disk is private, whatever the umask: the data directory, the
//! embedded cluster's files, the search index and exports (the binary as a user runs it,
//! against the fake TangSengDaoDao server); and two `reindex` at once both end with a
//! working index.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chatvault::sim::tangsengdaodao::{SimServer, World, WorldSpec};

/// Runs the binary in `dir` with umask 0, so that nothing is private by accident.
fn chatvault(dir: &Path, args: &[&str], env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatvault"));
    cmd.current_dir(dir).args(args);
    for var in [
        "CHATVAULT_CONFIG",
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
    // SAFETY: umask is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    cmd.output().expect("run chatvault")
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

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// Every file and directory under `root` (not following symlinks), `root` first.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let path = out[i].clone();
        if std::fs::symlink_metadata(&path).unwrap().is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                out.push(entry.unwrap().path());
            }
        }
        i += 1;
    }
    out
}

/// Paths under `root` that someone other than their owner may read, write or enter, except
/// what must be so: the data directory's search bits and the authentication files' group
/// read bit when root runs the cluster as another user (the server has to reach and read
/// them).
fn open_to_others(root: &Path) -> Vec<String> {
    let mut open = Vec::new();
    for path in walk(root) {
        let mut allowed = 0;
        if is_root() && path == root {
            allowed = 0o011;
        }
        let name = path.file_name().unwrap().to_string_lossy();
        if is_root() && path.parent() == Some(root) && name.starts_with("pg_") {
            assert_ne!(std::fs::metadata(&path).unwrap().gid(), 0);
            allowed = 0o040;
        }
        let m = mode(&path);
        if m & 0o077 & !allowed != 0 {
            open.push(format!("{} {m:04o}", path.display()));
        }
    }
    open
}

fn tsdd_config(server: &SimServer, spec: &WorldSpec) -> String {
    format!(
        "[[source]]\nname = \"acme\"\nplatform = \"tangsengdaodao\"\nbase_url = \"{}\"\nusername = \"{}\"\npassword_env = \"ACME_PASSWORD\"\nrequests_per_second = 1000\n",
        server.base_url(),
        spec.me_username
    )
}

/// Regression: the data directory, the index (the text of every message) and exports were
/// created with the umask, readable by every local user.
#[tokio::test]
async fn files_are_private_after_sync_reindex_and_export() {
    let spec = WorldSpec {
        messages: 300,
        ..WorldSpec::default()
    };
    let server = SimServer::start(World::generate(&spec)).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("chatvault.toml"),
        tsdd_config(&server, &spec),
    )
    .unwrap();
    let env = vec![("ACME_PASSWORD".to_string(), spec.me_password.clone())];
    let data_dir = dir.path().join("chatvault-data");

    let out = run(dir.path(), &["sync"], &env).await;
    assert_ok(&out, "sync");
    assert!(data_dir.join("index/CURRENT").exists());
    assert_eq!(
        open_to_others(&data_dir),
        Vec::<String>::new(),
        "after sync"
    );

    let out = run(dir.path(), &["reindex"], &env).await;
    assert_ok(&out, "reindex");
    assert_eq!(
        open_to_others(&data_dir),
        Vec::<String>::new(),
        "after reindex"
    );

    let exports = dir.path().join("exports");
    std::fs::create_dir(&exports).unwrap();
    for format in ["jsonl", "csv"] {
        let file = format!("exports/all.{format}");
        let out = run(
            dir.path(),
            &["export", "--format", format, "--output", &file],
            &env,
        )
        .await;
        assert_ok(&out, "export");
        assert_eq!(mode(&dir.path().join(&file)), 0o600, "{file}");
        let manifest = format!("{file}.manifest.json");
        assert_eq!(mode(&dir.path().join(&manifest)), 0o600, "{manifest}");
    }
    let out = run(
        dir.path(),
        &["export", "--format", "eml", "--output", "exports/mails"],
        &env,
    )
    .await;
    assert_ok(&out, "export");
    let mails = dir.path().join("exports/mails");
    assert_eq!(mode(&mails), 0o700, "the EML directory");
    for e in std::fs::read_dir(&mails).unwrap() {
        assert_eq!(mode(&e.unwrap().path()), 0o600);
    }
    let mut left: Vec<_> = std::fs::read_dir(&exports)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    // each export and its manifest (beside a file, inside a directory), nothing temporary
    assert_eq!(
        left,
        [
            "all.csv",
            "all.csv.manifest.json",
            "all.jsonl",
            "all.jsonl.manifest.json",
            "mails"
        ],
        "no temporary file is left behind"
    );

    // a data directory someone opened up is made private again at the next start
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(dir.path(), &["status"], &env).await;
    assert_ok(&out, "status");
    assert_eq!(
        open_to_others(&data_dir),
        Vec::<String>::new(),
        "after status"
    );
    assert!(
        text(&out.stderr).contains("made it private"),
        "the tightening is logged: {}",
        text(&out.stderr)
    );
    server.shutdown().await;
}

/// Regression: each `reindex` removed every generation but its own when it swapped in, so
/// one deleted the generation the other was still filling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reindexes_at_once_both_end_with_a_working_index() {
    let spec = WorldSpec {
        messages: 3000,
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
        tsdd_config(&server, &spec),
    )
    .unwrap();
    let env = vec![
        ("CHATVAULT_DATABASE_URL".to_string(), url),
        ("ACME_PASSWORD".to_string(), spec.me_password.clone()),
    ];
    assert_ok(&run(dir.path(), &["sync"], &env).await, "sync");

    for round in 0..3 {
        let (a, b) = tokio::join!(
            run(dir.path(), &["reindex"], &env),
            run(dir.path(), &["reindex"], &env)
        );
        assert_ok(&a, &format!("first reindex of round {round}"));
        assert_ok(&b, &format!("second reindex of round {round}"));
        let out = run(dir.path(), &["verify"], &env).await;
        assert_ok(&out, "verify after two reindexes");
        let stdout = text(&out.stdout);
        assert!(!stdout.contains("index: none"), "{stdout}");
        let out = run(dir.path(), &["search", "会议", "--json"], &env).await;
        assert_ok(&out, "search");
        assert!(!out.stdout.is_empty(), "search finds messages");
        let generations: Vec<_> = std::fs::read_dir(dir.path().join("chatvault-data/index"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('v'))
            .collect();
        assert_eq!(generations.len(), 1, "{generations:?}");
    }
    server.shutdown().await;
}
