//! `chatvault doctor`, the real binary against the three fake upstreams and a real
//! PostgreSQL: a working setup passes every check (exit 0) without logging in again; a wrong
//! token, an unreachable database and a data directory open to others each fail their line
//! with the fix (exit 1); `--json` gives one object per check.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use chatvault::sim::{tangsengdaodao as tsdd, yunhu, yunxin};
use serde_json::Value;

const LOGIN: &str = "/v1/user/login";

/// The three fakes, small.
struct Fakes {
    tsdd: tsdd::SimServer,
    yunxin: yunxin::SimServer,
    yunhu: yunhu::SimServer,
    yunxin_spec: yunxin::WorldSpec,
    yunhu_token: String,
}

async fn fakes() -> Fakes {
    let tsdd = tsdd::SimServer::start(tsdd::World::generate(&tsdd::WorldSpec {
        seed: 3,
        messages: 60,
        ..tsdd::WorldSpec::default()
    }))
    .await;
    let yunxin_spec = yunxin::WorldSpec {
        seed: 3,
        messages: 60,
        end_ms: yunxin::now_ms() - 60_000,
        ..yunxin::WorldSpec::default()
    };
    let yunxin = yunxin::SimServer::start(yunxin::World::generate(&yunxin_spec)).await;
    let yunhu_spec = yunhu::WorldSpec {
        seed: 3,
        messages: 60,
        ..yunhu::WorldSpec::default()
    };
    let yunhu_token = yunhu_spec.token.clone();
    let yunhu = yunhu::SimServer::start(yunhu::World::generate(&yunhu_spec)).await;
    Fakes {
        tsdd,
        yunxin,
        yunhu,
        yunxin_spec,
        yunhu_token,
    }
}

impl Fakes {
    fn config(&self) -> String {
        let accounts: Vec<String> = self
            .yunxin
            .world()
            .accounts
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect();
        format!(
            "[storage]\ndata_dir = \"data\"\n\
             [[source]]\nname = \"t\"\nplatform = \"tangsengdaodao\"\nbase_url = \"{}\"\nusername = \"{}\"\npassword_env = \"TSDD_PASSWORD\"\nrequests_per_second = 2000\n\
             [[source]]\nname = \"x\"\nplatform = \"yunxin\"\nbase_url = \"{}\"\napp_key = \"{}\"\napp_secret_env = \"YUNXIN_SECRET\"\naccounts = [{}]\nrequests_per_second = 90\n\
             [[source]]\nname = \"h\"\nplatform = \"yunhu\"\nbase_url = \"{}\"\ntoken_env = \"YUNHU_TOKEN\"\nrequests_per_second = 200\n",
            self.tsdd.base_url(),
            tsdd::WorldSpec::default().me_username,
            self.yunxin.base_url(),
            self.yunxin_spec.app_key,
            accounts.join(", "),
            self.yunhu.base_url(),
        )
    }

    fn command(&self, dir: &Path, database_url: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatvault"));
        cmd.current_dir(dir)
            .arg("--config")
            .arg("chatvault.toml")
            .args(args)
            .env_remove("CHATVAULT_CONFIG")
            .env_remove("CHATVAULT_DATA_DIR")
            .env_remove("CHATVAULT_SERVER_TOKEN")
            .env("CHATVAULT_DATABASE_URL", database_url)
            .env("TSDD_PASSWORD", tsdd::WorldSpec::default().me_password)
            .env("YUNXIN_SECRET", &self.yunxin_spec.app_secret)
            .env("YUNHU_TOKEN", &self.yunhu_token)
            .stdin(Stdio::null());
        cmd
    }
}

async fn database_url() -> String {
    let (options, name) = chatvault::pg::testing::fresh_database().await;
    format!(
        "postgres://{}@localhost/{name}?host={}",
        options.get_username(),
        options.get_socket().unwrap().display()
    )
}

async fn output(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().expect("run chatvault"))
        .await
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The line of `check` in doctor's text output.
fn line<'a>(text: &'a str, check: &str) -> &'a str {
    text.lines()
        .find(|l| {
            l.get(5..)
                .is_some_and(|rest| rest.starts_with(&format!("{check}:")))
        })
        .unwrap_or_else(|| panic!("no {check} line in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_working_setup_passes_every_check_without_logging_in_again() {
    let fakes = fakes().await;
    let url = database_url().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("chatvault.toml"), fakes.config()).unwrap();

    // before any sync: no schema, and no kept TangSengDaoDao session (not logged in for it)
    let out = output(fakes.command(dir.path(), &url, &["doctor"])).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(line(&text, "schema").starts_with("FAIL"), "{text}");
    assert!(
        line(&text, "schema").contains("chatvault migrate"),
        "{text}"
    );
    let t = line(&text, "credentials t");
    assert!(t.starts_with("warn") && t.contains("--login"), "{text}");
    assert_eq!(fakes.tsdd.request_count_for(LOGIN), 0, "doctor logged in");

    let sync = output(fakes.command(dir.path(), &url, &["sync"])).await;
    assert!(
        sync.status.success(),
        "{}",
        String::from_utf8_lossy(&sync.stderr)
    );
    let logins = fakes.tsdd.request_count_for(LOGIN);
    assert_eq!(logins, 1);

    let out = output(fakes.command(dir.path(), &url, &["doctor"])).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let checks = [
        "config",
        "database",
        "schema",
        "data_dir",
        "attachments",
        "credentials t",
        "credentials x",
        "credentials h",
        "clock t",
        "clock x",
        "clock h",
        "index",
    ];
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), checks.len(), "{text}");
    for (l, check) in lines.iter().zip(checks) {
        assert!(l.starts_with(&format!("ok   {check}: ")), "{l}\n{text}");
    }
    assert!(
        line(&text, "credentials t").contains("kept session"),
        "{text}"
    );
    assert!(line(&text, "index").contains("documents"), "{text}");
    assert_eq!(
        fakes.tsdd.request_count_for(LOGIN),
        logins,
        "doctor logged in although a session was kept"
    );

    // --json: one object per check, in the same order, with the same verdicts
    let out = output(fakes.command(dir.path(), &url, &["doctor", "--json"])).await;
    assert_eq!(out.status.code(), Some(0));
    let objects: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect();
    assert_eq!(objects.len(), checks.len());
    for (object, check) in objects.iter().zip(checks) {
        let keys: Vec<&String> = object.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["check", "detail", "fix", "status"], "{object}");
        assert_eq!(object["check"], check);
        assert_eq!(object["status"], "ok", "{object}");
        assert!(object["fix"].is_null());
        assert!(!object["detail"].as_str().unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_fails_its_line_with_the_fix() {
    let fakes = fakes().await;
    let url = database_url().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("chatvault.toml"), fakes.config()).unwrap();
    let migrate = output(fakes.command(dir.path(), &url, &["migrate"])).await;
    assert!(migrate.status.success());

    let mut cmd = fakes.command(dir.path(), &url, &["doctor"]);
    cmd.env("YUNHU_TOKEN", "not-the-token");
    let out = output(cmd).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let h = line(&text, "credentials h");
    assert!(h.starts_with("FAIL"), "{text}");
    assert!(h.contains("fix: the server refused the token"), "{text}");
    assert!(!text.contains("not-the-token"), "the token was printed");
    assert!(line(&text, "credentials x").starts_with("ok"), "{text}");
    assert!(line(&text, "schema").starts_with("ok"), "{text}");

    let mut cmd = fakes.command(dir.path(), &url, &["doctor", "--json"]);
    cmd.env("YUNHU_TOKEN", "not-the-token");
    let out = output(cmd).await;
    let failed: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|o| o["status"] == "fail")
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["check"], "credentials h");
    assert!(failed[0]["fix"].as_str().unwrap().contains("token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_and_an_open_data_dir_fail_with_their_fixes() {
    let fakes = fakes().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("chatvault.toml"), fakes.config()).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    // no server listens in this socket directory
    let nowhere = dir.path().join("no-server");
    std::fs::create_dir(&nowhere).unwrap();
    let url = format!(
        "postgres://chatvault@localhost/chatvault?host={}",
        nowhere.display()
    );

    let out = output(fakes.command(dir.path(), &url, &["doctor"])).await;
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(line(&text, "database").starts_with("ok"), "{text}");
    let schema = line(&text, "schema");
    assert!(schema.starts_with("FAIL"), "{text}");
    assert!(schema.contains("cannot connect to PostgreSQL"), "{text}");
    assert!(schema.contains("fix: check that the server runs"), "{text}");
    let data_dir = line(&text, "data_dir");
    assert!(data_dir.starts_with("FAIL"), "{text}");
    assert!(data_dir.contains("mode 0755"), "{text}");
    assert!(
        data_dir.contains(&format!("fix: chmod 700 {}", Path::new("data").display())),
        "{text}"
    );
    // doctor only looks: the mode is as it was
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o755);
    // the sources are still checked
    assert!(line(&text, "credentials h").starts_with("ok"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_doctor_before_the_first_start_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatvault"));
    cmd.current_dir(dir.path())
        .arg("doctor")
        .env_remove("CHATVAULT_CONFIG")
        .env_remove("CHATVAULT_DATABASE_URL")
        .env("CHATVAULT_LOG", "error");
    let out = output(cmd).await;
    let text = stdout(&out);
    assert!(
        line(&text, "schema").starts_with("skip"),
        "the schema is checked once a cluster exists:\n{text}"
    );
    assert!(line(&text, "schema").contains("first sync"), "{text}");
    assert!(
        !dir.path().join("chatvault-data").exists(),
        "doctor created the data directory:\n{text}"
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
}
