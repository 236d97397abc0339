//! `chatvault coverage` and the /coverage page over an archive of the fake TangSengDaoDao
//! server in which one group has history the account cleared (seqs the server does not
//! return) and a message the server cannot serve (it answers HTTP 500: an unreadable window).

use std::process::Command;
use std::time::Duration;

use chatvault::config::{PlatformConfig, Secret, SourceConfig, TsddAuth, TsddConfig};
use chatvault::http::{self as api, ApiState};
use chatvault::metrics::Metrics;
use chatvault::model::SourceName;
use chatvault::sim::tangsengdaodao::{ChannelKey, SimServer, World, WorldSpec};
use chatvault::store::Store;
use chatvault::sync::{sync_source, SyncOptions};
use serde_json::{json, Value};
use tokio::sync::watch;

pub fn spec() -> WorldSpec {
    WorldSpec {
        seed: 41,
        users: 5,
        groups: 2,
        direct_chats: 1,
        messages: 60,
        ..WorldSpec::default()
    }
}

pub fn source(server: &SimServer) -> SourceConfig {
    let spec = spec();
    SourceConfig {
        name: SourceName::new("acme"),
        schedule: "0 */5 * * * *".into(),
        requests_per_second: 0.0,
        request_timeout: Duration::from_secs(5),
        enabled: true,
        push: true,
        platform: PlatformConfig::Tangsengdaodao(TsddConfig {
            base_url: server.base_url(),
            auth: TsddAuth::Password {
                username: spec.me_username,
                password: Secret::new(spec.me_password),
            },
            device_flag: 1,
            page_size: 40,
        }),
    }
}

pub fn quick() -> SyncOptions {
    SyncOptions {
        backoff_base: Duration::from_millis(2),
        max_backoff: Duration::from_millis(20),
        ..SyncOptions::default()
    }
}

/// A fresh database (store and URL for the binary).
pub async fn database() -> (Store, String) {
    let (options, name) = chatvault::pg::testing::fresh_database().await;
    let socket = options.get_socket().expect("a socket").to_path_buf();
    let url = format!(
        "postgres://{}@localhost/{name}?host={}",
        options.get_username(),
        socket.display()
    );
    let store = Store::connect(options, 4).await.unwrap();
    store.migrate().await.unwrap();
    (store, url)
}

struct Archived {
    store: Store,
    url: String,
    group: String,
    cleared_to: i64,
    unreadable: i64,
    src: SourceConfig,
    _server: SimServer,
}

/// The group's seqs 1..=`cleared_to` cleared by the account, a message at `unreadable` the
/// server panics on, everything synced once.
async fn archived() -> Archived {
    let mut world = World::generate(&spec());
    let me = world.me().uid.clone();
    let group = world
        .truth()
        .into_iter()
        .find(|c| c.channel_type == 2 && c.is_member && c.my_offset == 0)
        .unwrap()
        .channel_id;
    let key = ChannelKey::group(&group);
    for i in 0..5 {
        world.post_message(
            &key,
            &me,
            json!({"type": 1, "content": format!("early {i}")}),
        );
    }
    let cleared = world.post_message(
        &key,
        &me,
        json!({"type": 1, "content": "cleared up to here"}),
    );
    world.clear_history_for_me(&key, cleared.message_seq);
    world.post_message(&key, &me, json!({"type": 1, "content": "before"}));
    let bad = world.post_message(
        &key,
        &me,
        json!({"type": 1, "content": "quoting", "reply": {"message_id": 1824334157854015488u64}}),
    );
    world.post_message(&key, &me, json!({"type": 1, "content": "after"}));
    let server = SimServer::start(world).await;
    let src = source(&server);
    let (store, url) = database().await;
    let r = sync_source(&store, &src, &quick(), None).await;
    assert!(r.ok(), "{:?}", r.error);
    Archived {
        store,
        url,
        group,
        cleared_to: i64::from(cleared.message_seq),
        unreadable: i64::from(bad.message_seq),
        src,
        _server: server,
    }
}

fn config_for(a: &Archived, dir: &std::path::Path) -> std::path::PathBuf {
    let PlatformConfig::Tangsengdaodao(c) = &a.src.platform else {
        unreachable!()
    };
    let path = dir.join("chatvault.toml");
    std::fs::write(
        &path,
        format!(
            "[[source]]\nname = \"acme\"\nplatform = \"tangsengdaodao\"\nbase_url = \"{}\"\nusername = \"u\"\npassword_env = \"UNSET_FOR_COVERAGE\"\n",
            c.base_url
        ),
    )
    .unwrap();
    path
}

fn chatvault(a: &Archived, args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(a, dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_chatvault"))
        .current_dir(dir.path())
        .arg("--config")
        .arg(&config)
        .args(args)
        .env("CHATVAULT_DATABASE_URL", &a.url)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seq_gap_and_an_unreadable_window_are_shown_with_their_reasons() {
    let a = archived().await;

    // the view and the store
    let gaps: Vec<(i64, i64, String, String)> = sqlx::query_as(
        "SELECT from_seq, to_seq, kind, reason FROM archive.coverage_gaps
         WHERE conversation_id = $1 ORDER BY from_seq",
    )
    .bind(&a.group)
    .fetch_all(a.store.pool())
    .await
    .unwrap();
    let not_returned: Vec<_> = gaps.iter().filter(|g| g.2 == "not_returned").collect();
    let unreadable: Vec<_> = gaps.iter().filter(|g| g.2 == "unreadable").collect();
    assert_eq!(unreadable.len(), 1, "{gaps:?}");
    assert_eq!(
        (unreadable[0].0, unreadable[0].1),
        (a.unreadable, a.unreadable)
    );
    assert!(unreadable[0].3.contains("HTTP 500"), "{gaps:?}");
    assert!(
        not_returned
            .iter()
            .any(|g| g.0 <= a.cleared_to && g.1 >= a.cleared_to),
        "the cleared seqs are a gap: {gaps:?}"
    );
    let read: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT read_complete_at FROM archive.coverage WHERE conversation_id = $1",
    )
    .bind(&a.group)
    .fetch_one(a.store.pool())
    .await
    .unwrap();
    assert!(read.is_some(), "the group was read to its end in the run");

    // the CLI table
    let (code, table, err) = tokio::task::block_in_place(|| chatvault(&a, &["coverage"]));
    assert_eq!(code, 0, "{err}");
    assert!(table.contains("acme (tangsengdaodao)"), "{table}");
    assert!(table.contains("rescan window: none needed"), "{table}");
    assert!(table.contains("cannot know on this platform:"), "{table}");
    let unreadable_line = format!(
        "seq {}-{} unreadable: upstream cannot serve",
        a.unreadable, a.unreadable
    );
    assert!(table.contains(&unreadable_line), "{table}");
    assert!(
        table.contains(" not_returned: not returned by upstream"),
        "{table}"
    );
    assert!(!table.contains("last read completely: never"), "{table}");

    // --json: one object per source
    let (code, json_out, err) =
        tokio::task::block_in_place(|| chatvault(&a, &["coverage", "--json"]));
    assert_eq!(code, 0, "{err}");
    let objects: Vec<Value> = json_out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0]["source"], "acme");
    assert!(!objects[0]["cannot_know"].as_array().unwrap().is_empty());
    let group = objects[0]["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conversation_id"] == a.group.as_str())
        .unwrap();
    let kinds: Vec<&str> = group["gap_list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"unreadable") && kinds.contains(&"not_returned"),
        "{kinds:?}"
    );
    assert!(group["gap_list"]
        .as_array()
        .unwrap()
        .iter()
        .all(|g| !g["reason"].as_str().unwrap().is_empty()));
    assert!(group["read_complete_at"].is_string());

    // a source that is not archived is an error
    let (code, _, err) =
        tokio::task::block_in_place(|| chatvault(&a, &["coverage", "--source", "acmee"]));
    assert_eq!(code, 1);
    assert!(err.contains("no source named \"acmee\""), "{err}");

    // the web page, linked from the status page
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (_stop, shutdown) = watch::channel(false);
    tokio::spawn(api::serve_on(
        listener,
        ApiState::new(&a.store, Metrics::new()).with_sources(vec![a.src.clone()]),
        shutdown,
        Duration::from_secs(5),
    ));
    let http = reqwest::Client::new();
    let page = |path: &'static str| {
        let http = http.clone();
        let base = base.clone();
        async move {
            let r = http
                .get(format!("{base}{path}"))
                .header("accept", "text/html")
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, html) = page("/status").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("href=\"/coverage\""),
        "the status page links to it"
    );
    let (status, html) = page("/coverage").await;
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("class=\"gap unreadable\""), "{html}");
    assert!(html.contains("class=\"gap not_returned\""), "{html}");
    assert!(html.contains("upstream cannot serve this seq"), "{html}");
    assert!(html.contains("not returned by upstream"), "{html}");
    assert!(html.contains("none needed"), "the rescan window: {html}");
    assert!(html.contains("What the archive cannot know"), "{html}");

    // each report shown (CLI twice, the page once) is in the access log; the mistyped source
    // showed nothing and is not
    let logged: Vec<(String, i64)> = sqlx::query_as(
        "SELECT via, results FROM archive.access_log WHERE action = 'coverage' ORDER BY seq",
    )
    .fetch_all(a.store.pool())
    .await
    .unwrap();
    let vias: Vec<&str> = logged.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(vias, ["cli", "cli", "web"], "{logged:?}");
    assert!(logged.iter().all(|(_, n)| *n > 0), "{logged:?}");
}
