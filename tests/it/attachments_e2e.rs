//! Attachments end to end, per platform: each fake over real HTTP with its media quirks on
//! (a deleted file, an expired signed URL, and for Yunxin a file whose declared md5 is
//! wrong), synced into a real PostgreSQL by the engine, then its files downloaded by the
//! fetcher the daemon runs (`Fetcher::run` with the platform's connector) into a blob
//! store. Checked against each fake's truth: every file `stored` with the sha256 the fake
//! serves, each blob once, the deleted and expired ones `gone` after `max_attempts` runs
//! while the messages keep syncing, the wrong md5 `failed` naming it; then `chatvault
//! verify --attachments` passes, and fails naming the attachment once a blob is altered.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chatvault::attachments::blob::BlobStore;
use chatvault::attachments::fetcher::{FetchOptions, Fetcher};
use chatvault::attachments::{shown_url, AttachmentKind};
use chatvault::config::{
    PlatformConfig, Secret, SourceConfig, TsddAuth, TsddConfig, YunhuConfig, YunxinConfig,
};
use chatvault::connector::{self, http::HttpClient};
use chatvault::model::SourceName;
use chatvault::store::Store;
use chatvault::sync::{sync_source, SyncOptions};

use futures::StreamExt;
use object_store::ObjectStore;

use crate::common::{Moto, BUCKET};
use crate::ediscovery::{run, text};

/// How often a download is tried before a refused file ends `gone`.
const MAX_ATTEMPTS: u32 = 3;

/// What the fake's truth says must become of a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Want {
    /// Stored, with this sha256.
    Stored(String),
    /// Deleted upstream or its signed URL expired: `gone` after the retries.
    Gone,
    /// The platform declares an md5 the bytes do not have: `failed`, the error naming it.
    WrongMd5(String),
}

/// The fetcher as the daemon runs it, but with retries due at once so a test can reach
/// `max_attempts`.
pub(crate) fn fetch_options() -> FetchOptions {
    FetchOptions {
        download: true,
        kinds: AttachmentKind::ALL.to_vec(),
        max_file_bytes: 16 << 20,
        max_run_bytes: 1 << 30,
        requests_per_second: 0.0,
        concurrency: 4,
        max_attempts: MAX_ATTEMPTS,
        request_timeout: Duration::from_secs(10),
        retry_base: Duration::ZERO,
        retry_cap: Duration::ZERO,
        scan_batch: 200,
        claim_batch: 100,
    }
}

pub(crate) fn sync_options() -> SyncOptions {
    SyncOptions {
        backoff_base: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        ..SyncOptions::default()
    }
}

/// A migrated store on a fresh database, and the URL the binary reaches it with.
pub(crate) async fn database() -> (Store, String) {
    let (options, name) = chatvault::pg::testing::fresh_database().await;
    let socket = options.get_socket().expect("a socket");
    let url = format!(
        "postgres://{}@localhost/{name}?host={}",
        options.get_username(),
        socket.display()
    );
    let store = Store::connect(options, 4).await.unwrap();
    store.migrate().await.unwrap();
    (store, url)
}

/// One row of `archive.attachments`.
#[derive(Debug)]
pub(crate) struct Row {
    pub conversation: String,
    pub message: String,
    pub ordinal: i32,
    pub url: String,
    pub status: String,
    pub sha256: Option<String>,
    pub error: Option<String>,
}

/// A row as `rows` selects it.
type RowTuple = (
    String,
    String,
    i32,
    String,
    String,
    Option<String>,
    Option<String>,
);

pub(crate) async fn rows(store: &Store, source: &str) -> Vec<Row> {
    let rows: Vec<RowTuple> = sqlx::query_as(
        "SELECT conversation_id, message_id, ordinal, upstream_url, status, sha256, error
         FROM archive.attachments WHERE source = $1
         ORDER BY conversation_id, message_id, ordinal",
    )
    .bind(source)
    .fetch_all(store.pool())
    .await
    .unwrap();
    rows.into_iter()
        .map(
            |(conversation, message, ordinal, url, status, sha256, error)| Row {
                conversation,
                message,
                ordinal,
                url,
                status,
                sha256,
                error,
            },
        )
        .collect()
}

async fn messages(store: &Store, source: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM archive.messages WHERE source = $1")
        .bind(source)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// The files under a blob directory's `blobs/`, by name.
pub(crate) fn blob_files(attachments_dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(shards) = std::fs::read_dir(attachments_dir.join("blobs")) else {
        return out;
    };
    for shard in shards.flatten() {
        for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
            out.push(f.file_name().to_string_lossy().into_owned());
        }
    }
    out.sort();
    out
}

/// The files in a staging directory (the fetcher stages in a directory per source).
pub(crate) fn staged_in(staging: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(staging).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(staged_in(&path));
        } else {
            out.push(path.display().to_string());
        }
    }
    out
}

/// The files left in a blob store's staging directory.
pub(crate) fn staged(blobs: &BlobStore) -> Vec<String> {
    staged_in(blobs.staging_dir())
}

/// Every row is what `want` says of its URL and every wanted file has a row; returns the
/// distinct sha256 stored. Each refused file is named in `gone`/`wrong` counts so the test
/// shows the quirks were exercised.
pub(crate) fn check_rows(rows: &[Row], want: &BTreeMap<String, Want>) -> BTreeSet<String> {
    assert!(!rows.is_empty(), "no attachment recorded");
    let mut seen = BTreeSet::new();
    let mut stored = BTreeSet::new();
    for r in rows {
        let at = format!("{}/{}/{} {}", r.conversation, r.message, r.ordinal, r.url);
        let w = want
            .get(&r.url)
            .unwrap_or_else(|| panic!("{at}: a file the fake never served"));
        seen.insert(r.url.clone());
        match w {
            Want::Stored(sha) => {
                assert_eq!(r.status, "stored", "{at}: {:?}", r.error);
                assert_eq!(r.sha256.as_deref(), Some(sha.as_str()), "{at}");
                stored.insert(sha.clone());
            }
            Want::Gone => {
                assert_eq!(r.status, "gone", "{at}: {:?}", r.error);
                assert!(r.sha256.is_none(), "{at}");
            }
            Want::WrongMd5(declared) => {
                assert_eq!(r.status, "failed", "{at}: {:?}", r.error);
                let error = r.error.as_deref().unwrap_or_default();
                assert!(
                    error.contains("md5") && error.contains(declared.as_str()),
                    "{at}: {error}"
                );
            }
        }
    }
    let missing: Vec<&String> = want.keys().filter(|u| !seen.contains(*u)).collect();
    assert!(missing.is_empty(), "files with no row: {missing:?}");
    stored
}

/// A file two messages reference is one blob: the URLs more than one message names, all
/// stored under one sha256 each. Returns how many such files there are.
pub(crate) fn shared_files(rows: &[Row]) -> usize {
    let mut by_url: BTreeMap<&str, BTreeSet<(&str, &str)>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.status == "stored") {
        by_url
            .entry(&r.url)
            .or_default()
            .insert((&r.conversation, &r.message));
    }
    let mut shared = 0;
    for (url, messages) in by_url.iter().filter(|(_, m)| m.len() > 1) {
        let shas: BTreeSet<_> = rows
            .iter()
            .filter(|r| r.url == *url)
            .map(|r| r.sha256.clone())
            .collect();
        assert_eq!(shas.len(), 1, "{url} named by {messages:?}: {shas:?}");
        shared += 1;
    }
    shared
}

/// Sync and fetch `MAX_ATTEMPTS` times, then check the archive against `want` and
/// `verify --attachments`, before and after a blob is altered on disk. `min_shared` is how
/// many files referenced by more than one message the world must have.
async fn end_to_end(
    store: &Store,
    url: &str,
    src: &SourceConfig,
    want: &BTreeMap<String, Want>,
    min_shared: usize,
    backend: Backend<'_>,
) {
    assert!(want.values().any(|w| *w == Want::Gone), "a refused file");
    let dir = tempfile::tempdir().unwrap();
    let attachments_dir = dir.path().join("data/attachments");
    let blobs = Arc::new(backend.open(&attachments_dir));
    let http = HttpClient::new(0.0, Duration::from_secs(5)).unwrap();
    let conn = connector::build(src, http, Some(&dir.path().join("sessions"))).unwrap();
    let fetcher = Fetcher::new(store.clone(), blobs.clone(), fetch_options()).unwrap();
    let source = src.name.as_str();

    let mut held = 0;
    let mut stored_total = 0;
    for round in 1..=MAX_ATTEMPTS {
        let result = sync_source(store, src, &sync_options(), None).await;
        assert!(result.ok(), "round {round}: {:?}", result.error);
        let now = messages(store, source).await;
        assert!(now >= held && now > 0, "round {round}: {now} messages");
        held = now;
        let report = fetcher.run(&src.name, conn.as_ref(), None).await.unwrap();
        assert!(!report.skipped);
        if round == 1 {
            assert!(report.stored > 0, "{report:?}");
        } else {
            assert_eq!(report.stored, 0, "round {round} stored again: {report:?}");
        }
        stored_total += report.stored;
        if round < MAX_ATTEMPTS {
            let rows = rows(store, source).await;
            assert!(
                rows.iter().all(|r| r.status != "gone"),
                "gone before max_attempts in round {round}"
            );
        }
    }

    let rows = rows(store, source).await;
    let stored = check_rows(&rows, want);
    assert_eq!(
        stored_total as usize,
        rows.iter().filter(|r| r.status == "stored").count(),
        "each row stored once, by the first run"
    );
    assert_eq!(
        backend.list(&attachments_dir).await,
        stored.iter().cloned().collect::<Vec<_>>(),
        "one blob per distinct sha256"
    );
    assert!(staged(&blobs).is_empty(), "{:?}", staged(&blobs));
    let shared = shared_files(&rows);
    eprintln!(
        "{source}: {} attachments, {} blobs, {shared} files named by more than one message",
        rows.len(),
        stored.len()
    );
    assert!(
        shared >= min_shared,
        "{shared} files referenced by more than one message"
    );

    std::fs::write(
        dir.path().join("chatvault.toml"),
        format!(
            "[database]\nurl = \"{url}\"\n[storage]\ndata_dir = \"data\"\n{}",
            backend.config()
        ),
    )
    .unwrap();
    let env = backend.env();
    let out = run(dir.path(), &["verify", "--attachments"], &env).await;
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains(&format!(
            "attachments: {} stored files checked",
            rows.iter().filter(|r| r.status == "stored").count()
        )),
        "{}",
        text(&out.stdout)
    );

    // flip one byte of one blob
    let victim = rows.iter().find(|r| r.status == "stored").unwrap();
    let sha = victim.sha256.clone().unwrap();
    backend.flip_a_byte(&attachments_dir, &sha).await;
    let out = run(dir.path(), &["verify", "--attachments"], &env).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "attachment {} of message {} in conversation {}",
            victim.ordinal, victim.message, victim.conversation
        )) && err.contains("was altered"),
        "{err}"
    );
}

/// Where the blobs go: the directory store under the data directory, or a bucket of an
/// S3-compatible server.
#[derive(Clone, Copy)]
pub(crate) enum Backend<'a> {
    Directory,
    S3(&'a Moto),
}

/// The key prefix of the bucket's blobs.
const PREFIX: &str = "e2e";

impl Backend<'_> {
    fn open(&self, attachments_dir: &Path) -> BlobStore {
        match self {
            Backend::Directory => BlobStore::in_directory(attachments_dir).unwrap(),
            Backend::S3(moto) => BlobStore::in_s3(
                &moto.config(PREFIX),
                &attachments_dir.join("staging"),
                Duration::from_secs(60),
            )
            .unwrap(),
        }
    }

    /// The sha256 of every blob stored, sorted.
    async fn list(&self, attachments_dir: &Path) -> Vec<String> {
        match self {
            Backend::Directory => blob_files(attachments_dir),
            Backend::S3(moto) => {
                // the whole bucket (moto refuses the signature of a listing by prefix)
                let listed: Vec<_> = moto.raw().list(None).collect().await;
                let mut out: Vec<String> = listed
                    .into_iter()
                    .map(|m| m.unwrap().location)
                    .filter(|l| l.as_ref().starts_with(&format!("{PREFIX}/")))
                    .map(|l| l.filename().unwrap().to_string())
                    .collect();
                out.sort();
                out
            }
        }
    }

    /// The `[attachments]` section naming this store.
    fn config(&self) -> String {
        match self {
            Backend::Directory => String::new(),
            Backend::S3(moto) => format!(
                "[attachments]\nstore = \"s3://{BUCKET}/{PREFIX}\"\n[attachments.s3]\n\
                 endpoint = \"{}\"\nregion = \"us-east-1\"\nallow_http = true\n\
                 access_key_id_env = \"E2E_S3_KEY_ID\"\n\
                 secret_access_key_env = \"E2E_S3_SECRET\"\n",
                moto.endpoint()
            ),
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        match self {
            Backend::Directory => Vec::new(),
            Backend::S3(moto) => vec![
                ("E2E_S3_KEY_ID".into(), moto.access_key_id.clone()),
                ("E2E_S3_SECRET".into(), moto.secret_access_key.clone()),
            ],
        }
    }

    /// Change the last byte of the blob `sha`, behind the store's back.
    async fn flip_a_byte(&self, attachments_dir: &Path, sha: &str) {
        match self {
            Backend::Directory => {
                let path = attachments_dir.join("blobs").join(&sha[..2]).join(sha);
                let mut bytes = std::fs::read(&path).unwrap();
                let last = bytes.len() - 1;
                bytes[last] ^= 0x01;
                std::fs::write(&path, &bytes).unwrap();
            }
            Backend::S3(moto) => {
                let raw = moto.raw();
                let key = object_store::path::Path::from(format!("{PREFIX}/{}/{sha}", &sha[..2]));
                let mut bytes = raw.get(&key).await.unwrap().bytes().await.unwrap().to_vec();
                let last = bytes.len() - 1;
                bytes[last] ^= 0x01;
                raw.put(&key, bytes.into()).await.unwrap();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// TangSengDaoDao

pub(crate) mod tsdd {
    use super::*;
    use chatvault::sim::tangsengdaodao::{MediaFate, SimServer, World, WorldSpec};

    pub(crate) fn spec() -> WorldSpec {
        WorldSpec {
            seed: 11,
            users: 10,
            groups: 3,
            direct_chats: 5,
            messages: 600,
            ..WorldSpec::default()
        }
    }

    pub(crate) fn source(server: &SimServer) -> SourceConfig {
        let spec = spec();
        SourceConfig {
            name: SourceName::new("tsdd"),
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
                page_size: 100,
            }),
        }
    }

    /// The fake with its deleted file and expired URL, and what must become of each file.
    pub(crate) async fn world(
        spec: &WorldSpec,
        broken: bool,
    ) -> (SimServer, BTreeMap<String, Want>) {
        let server = SimServer::start(World::generate(spec)).await;
        if broken {
            let (gone, expired) = server.world().break_media();
            assert!(gone.is_some() && expired.is_some());
        }
        let mut want = BTreeMap::new();
        {
            let world = server.world();
            for m in world.truth().iter().flat_map(|c| c.messages.iter()) {
                let mut files = m.attachments.clone();
                if let Some(edit) = &m.content_edit {
                    files.extend(world.attachments_of(edit));
                }
                for a in files {
                    let w = match a.fate {
                        MediaFate::Served => Want::Stored(a.sha256.clone()),
                        MediaFate::Gone | MediaFate::Expired => Want::Gone,
                    };
                    want.insert(shown_url(&a.url), w);
                }
            }
        }
        (server, want)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_file_is_stored_once_the_refused_end_gone_and_verify_catches_an_altered_blob() {
        let (server, want) = world(&spec(), true).await;
        let (store, url) = database().await;
        // forwards carry the files of the messages they forward
        end_to_end(&store, &url, &source(&server), &want, 1, Backend::Directory).await;
    }

    /// The same against a bucket: moto's S3 server with authentication on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn in_a_bucket_every_file_is_stored_once_the_refused_end_gone_and_verify_catches_an_altered_blob(
    ) {
        let moto = Moto::start().await;
        let (server, want) = world(&spec(), true).await;
        let (store, url) = database().await;
        end_to_end(&store, &url, &source(&server), &want, 1, Backend::S3(&moto)).await;
    }
}

// ---------------------------------------------------------------------------------------
// NetEase Yunxin

mod yunxin {
    use super::*;
    use chatvault::sim::yunxin::{now_ms, MediaOutcome, SimServer, World, WorldSpec};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_file_is_stored_once_the_refused_end_gone_a_wrong_md5_fails_and_verify_catches_an_altered_blob(
    ) {
        let mut world = World::generate(&WorldSpec {
            seed: 41,
            accounts: 2,
            users: 8,
            teams: 2,
            super_teams: 1,
            direct_chats: 2,
            messages: 500,
            end_ms: now_ms() - 2 * 3_600_000,
            days: 20,
            media_quirks: true,
            ..WorldSpec::default()
        });
        world.behaviour.rate_limit = None;
        world.behaviour.clock_lag_ms = 20_000;
        let server = SimServer::start(world).await;
        let mut want = BTreeMap::new();
        for t in server.truth().into_iter().flat_map(|c| c.messages) {
            for a in t.attachments {
                let w = match a.outcome {
                    MediaOutcome::Served if a.md5 != a.declared_md5 => {
                        Want::WrongMd5(a.declared_md5.clone())
                    }
                    MediaOutcome::Served => Want::Stored(a.sha256.clone()),
                    MediaOutcome::Gone | MediaOutcome::Expired => Want::Gone,
                };
                want.insert(shown_url(&a.url), w);
            }
        }
        assert_eq!(
            want.values()
                .filter(|w| matches!(w, Want::WrongMd5(_)))
                .count(),
            1
        );
        let src = {
            let w = server.world();
            SourceConfig {
                name: SourceName::new("yx"),
                schedule: "0 */5 * * * *".into(),
                requests_per_second: 0.0,
                request_timeout: Duration::from_secs(5),
                enabled: true,
                push: true,
                platform: PlatformConfig::Yunxin(YunxinConfig {
                    base_url: server.base_url(),
                    app_key: w.app_key.clone(),
                    app_secret: Secret::new(w.app_secret.clone()),
                    accounts: w.accounts.clone(),
                    history_start: None,
                    rescan_days: 7,
                }),
            }
        };
        let (store, url) = database().await;
        end_to_end(&store, &url, &src, &want, 1, Backend::Directory).await;
    }
}

// ---------------------------------------------------------------------------------------
// Yunhu

mod yunhu {
    use super::*;
    use chatvault::sim::yunhu::{MediaState, SimServer, World, WorldSpec};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_file_is_stored_once_the_refused_end_gone_and_verify_catches_an_altered_blob() {
        let spec = WorldSpec {
            seed: 23,
            users: 8,
            groups: 2,
            bots: 1,
            direct_chats: 3,
            messages: 400,
            ..WorldSpec::default()
        };
        let server = SimServer::start(World::generate(&spec)).await;
        // The world has no file two messages name: send a picture again, as a user re-sends
        // one, so a second message names the same file.
        let pictures: Vec<String> = server
            .attachments_truth()
            .into_iter()
            .filter(|(_, files)| {
                files
                    .iter()
                    .any(|a| a.kind == AttachmentKind::Image && a.state == MediaState::Available)
            })
            .map(|(id, _)| id)
            .collect();
        let again = {
            let mut w = server.world();
            pictures.iter().find_map(|id| {
                let (chat, m) = w.message(id)?;
                if !chat.visible(m) {
                    return None;
                }
                let (chat_id, sender, kind, content) = (
                    chat.chat_id.clone(),
                    m.sender.id.clone(),
                    m.content_type,
                    m.content.clone(),
                );
                w.post_content(&chat_id, &sender, kind, content, "")
            })
        };
        assert!(again.is_some(), "no picture could be sent again");
        // the messages the archive must hold: the visible ones
        let visible: BTreeSet<String> = server
            .world()
            .truth()
            .into_iter()
            .flat_map(|c| c.messages)
            .filter(|m| m.visible)
            .map(|m| m.msg_id)
            .collect();
        let mut want = BTreeMap::new();
        for a in server
            .attachments_truth()
            .into_iter()
            .filter(|(id, _)| visible.contains(id))
            .flat_map(|(_, files)| files)
        {
            let w = match a.state {
                MediaState::Available => Want::Stored(a.sha256.clone()),
                MediaState::Expired | MediaState::Deleted => Want::Gone,
            };
            want.insert(shown_url(&a.url), w);
        }
        let src = SourceConfig {
            name: SourceName::new("yh"),
            schedule: "0 */5 * * * *".into(),
            requests_per_second: 0.0,
            request_timeout: Duration::from_secs(5),
            enabled: true,
            push: true,
            platform: PlatformConfig::Yunhu(YunhuConfig {
                base_url: server.base_url(),
                token: Secret::new(spec.token.clone()),
                rescan_messages: 0,
                rescan_days: 0,
                rescan_every_minutes: 0,
                ws_url: chatvault::connector::yunhu::push::DEFAULT_WS_URL.into(),
            }),
        };
        let (store, url) = database().await;
        end_to_end(&store, &url, &src, &want, 1, Backend::Directory).await;
    }
}

// ---------------------------------------------------------------------------------------
// Killed mid-download

/// Every file under `blobs/` hashes to its name.
fn blobs_are_whole(attachments_dir: &Path) {
    use sha2::{Digest, Sha256};
    for name in blob_files(attachments_dir) {
        let bytes =
            std::fs::read(attachments_dir.join("blobs").join(&name[..2]).join(&name)).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), name, "a partial blob");
    }
}

/// `chatvault sync` as a process against a TangSengDaoDao fake whose storage trickles each
/// file, SIGKILLed while downloads are in flight (a partial file in staging, some files
/// already stored), then run again: every file stored with its sha256, no partial blob, no
/// staged leftover, and `verify --attachments` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_killed_mid_download_is_completed_by_the_next_one() {
    use chatvault::sim::tangsengdaodao::WorldSpec;
    let spec = WorldSpec {
        messages: 300,
        ..tsdd::spec()
    };
    let (server, want) = tsdd::world(&spec, false).await;
    server.world().media_quirks.trickle = Some(Duration::from_millis(400));
    assert!(want.len() > 10, "{} files", want.len());
    let (store, url) = database().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("chatvault.toml"),
        format!(
            "[database]\nurl = \"{url}\"\n[storage]\ndata_dir = \"data\"\n\
             [attachments]\nrequests_per_second = 1000\nconcurrency = 4\n\
             [[source]]\nname = \"tsdd\"\nplatform = \"tangsengdaodao\"\nbase_url = \"{}\"\n\
             username = \"{}\"\npassword = \"{}\"\nrequests_per_second = 500\n",
            server.base_url(),
            spec.me_username,
            spec.me_password,
        ),
    )
    .unwrap();
    let attachments_dir = dir.path().join("data/attachments");
    let staging = attachments_dir.join("staging");

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chatvault"))
        .current_dir(dir.path())
        .arg("sync")
        .env_remove("CHATVAULT_CONFIG")
        .env_remove("CHATVAULT_DATABASE_URL")
        .env_remove("CHATVAULT_DATA_DIR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for downloads in flight after some are stored: a staged file and a stored row.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let in_flight = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no download in flight within 120 s"
        );
        assert!(child.try_wait().unwrap().is_none(), "sync ended too soon");
        let staged = staged_in(&staging).len();
        let stored = rows(&store, "tsdd")
            .await
            .iter()
            .filter(|r| r.status == "stored")
            .count();
        if staged > 0 && stored > 0 {
            break staged;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(in_flight > 0);
    let before = rows(&store, "tsdd").await;
    let stored_before = before.iter().filter(|r| r.status == "stored").count();
    assert!(
        stored_before < before.len(),
        "killed after every file was stored ({stored_before})"
    );
    blobs_are_whole(&attachments_dir);

    server.world().media_quirks.trickle = None;
    let out = run(dir.path(), &["sync"], &[]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    let after = rows(&store, "tsdd").await;
    let stored = check_rows(&after, &want);
    assert_eq!(
        blob_files(&attachments_dir),
        stored.iter().cloned().collect::<Vec<_>>()
    );
    blobs_are_whole(&attachments_dir);
    let left = staged_in(&staging);
    assert!(left.is_empty(), "left in staging: {left:?}");
    let out = run(dir.path(), &["verify", "--attachments"], &[]).await;
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}
