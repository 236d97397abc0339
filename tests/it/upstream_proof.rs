//! `verify --upstream`, the proof against the source: an archive synced from a fake server
//! over real HTTP into a real PostgreSQL, then re-read read-only and compared. Intact archives
//! report nothing; archives altered in their base tables and upstreams changed after the
//! last sync are reported message by message; a failing upstream records no proof.

use crate::common;
use crate::common::tamper;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use chatvault::config::{PlatformConfig, Secret, SourceConfig, TsddAuth, TsddConfig};
use chatvault::model::SourceName;
use chatvault::sim::tangsengdaodao::{ChannelKey, SimServer, World, WorldSpec};
use chatvault::store::Store;
use chatvault::sync::{sync_source, SyncOptions};
use chatvault::upstream_proof::{prove_source, ProofOptions, SourceProof};
use serde_json::{json, Value};

fn spec() -> WorldSpec {
    WorldSpec {
        seed: 17,
        users: 8,
        groups: 3,
        direct_chats: 3,
        messages: 400,
        ..WorldSpec::default()
    }
}

fn session_dir(tag: &str) -> PathBuf {
    std::env::temp_dir()
        .join("chatvault-upstream-proof-tests")
        .join(format!("{}-{tag}", std::process::id()))
}

fn tsdd_source(server: &SimServer) -> SourceConfig {
    SourceConfig {
        name: SourceName::new("s"),
        schedule: "0 */5 * * * *".into(),
        requests_per_second: 0.0,
        request_timeout: Duration::from_secs(5),
        enabled: true,
        push: true,
        platform: PlatformConfig::Tangsengdaodao(TsddConfig {
            base_url: server.base_url(),
            auth: TsddAuth::Password {
                username: spec().me_username,
                password: Secret::new(spec().me_password),
            },
            device_flag: 1,
            page_size: 100,
        }),
    }
}

fn sync_options(session: &Path) -> SyncOptions {
    SyncOptions {
        backoff_base: Duration::from_millis(5),
        max_backoff: Duration::from_millis(100),
        session_dir: Some(session.to_path_buf()),
        ..SyncOptions::default()
    }
}

fn proof_options(session: &Path, sample: i64) -> ProofOptions {
    ProofOptions {
        sample,
        seed: "fixed-seed".into(),
        session_dir: Some(session.to_path_buf()),
    }
}

/// A TangSengDaoDao world synced once into a fresh archive.
async fn synced_tsdd(tag: &str) -> (SimServer, Store, SourceConfig, PathBuf) {
    let server = SimServer::start(World::generate(&spec())).await;
    let (store, _) = common::store().await;
    let src = tsdd_source(&server);
    let session = session_dir(tag);
    let result = sync_source(&store, &src, &sync_options(&session), None).await;
    assert!(result.ok(), "{:?}", result.error);
    (server, store, src, session)
}

/// `(message_id, what)` of every drift row, sorted.
fn drift(proof: &SourceProof) -> Vec<(String, &'static str)> {
    let mut rows: Vec<(String, &'static str)> = proof
        .drift
        .iter()
        .map(|r| (r.message_id.clone(), r.what))
        .collect();
    rows.sort();
    rows
}

async fn proofs_recorded(store: &Store) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT detail FROM archive.events WHERE kind = 'upstream_verified' ORDER BY event_seq",
    )
    .fetch_all(store.pool())
    .await
    .unwrap()
}

/// Text messages the account sees plainly (not recalled, deleted, edited), in group channels,
/// as `(channel_id, message_id)`.
fn plain_group_texts(server: &SimServer) -> Vec<(String, String)> {
    let truth = server.world().truth();
    let mut out = Vec::new();
    for ch in truth.iter().filter(|c| c.channel_type == 2 && c.is_member) {
        for m in &ch.messages {
            if m.visible
                && !m.revoked
                && !m.is_deleted
                && m.content_edit.is_none()
                && m.payload["type"] == 1
            {
                out.push((ch.channel_id.clone(), m.message_id.clone()));
            }
        }
    }
    out
}

#[tokio::test]
async fn tsdd_an_intact_archive_reports_no_drift_and_the_proof_is_a_chained_event() {
    let (server, store, src, session) = synced_tsdd("intact").await;
    let before = common::archive_snapshot(&store).await;
    let cursors = store.cursors(&src.name).await.unwrap();
    let extra_syncs = server.request_count_for("/v1/message/extra/sync");
    let logins = server.world().login_count();

    let proof = prove_source(&store, &src, &proof_options(&session, 10_000)).await;
    assert_eq!(proof.error, None);
    assert!(proof.drift.is_empty(), "{:#?}", proof.drift);
    let archived = common::count(&store, "SELECT count(*) FROM archive.messages").await;
    assert_eq!(proof.sampled as i64, archived);
    assert!(
        proof.checked as i64 >= archived,
        "{} of {archived}",
        proof.checked
    );
    assert_eq!(proof.not_checked, 0);

    // read-only: no cursor, no message, no server-side checkpoint, no new login
    assert_eq!(store.cursors(&src.name).await.unwrap(), cursors);
    assert_eq!(
        server.request_count_for("/v1/message/extra/sync"),
        extra_syncs
    );
    assert_eq!(server.world().login_count(), logins);
    let after = common::archive_snapshot(&store).await;
    let changed = common::snapshot_diff(&before, &after);
    assert!(
        changed
            .iter()
            .all(|line| line.contains("upstream_verified")),
        "{changed:#?}"
    );

    // the proof is an event of the chain, and the chain verifies
    let recorded = proofs_recorded(&store).await;
    assert_eq!(recorded.len(), 1);
    let detail = &recorded[0];
    assert_eq!(detail["seed"], "fixed-seed");
    assert_eq!(detail["sample"], 10_000);
    assert_eq!(detail["drifted"], 0);
    assert_eq!(detail["checked"], json!(proof.checked));
    assert_eq!(detail["report_sha256"], json!(proof.report_sha256));
    assert!(detail["at"].as_str().is_some());
    let report = store.verify(&[]).await.unwrap();
    assert!(report.ok(), "{:?}", report.failures);
    let proofs = store.last_upstream_proofs().await.unwrap();
    assert_eq!(proofs["s"].event_seq, proof.event_seq.unwrap());
}

#[tokio::test]
async fn tsdd_an_archive_altered_in_its_base_tables_is_reported_with_the_exact_messages() {
    let (_server, store, src, session) = synced_tsdd("altered").await;
    let plain = plain_group_texts(&_server);
    let (forged_conv, forged) = plain[3].clone();
    let (_, removed) = plain[plain.len() - 5].clone();
    // as the database owner would: around the append-only triggers, a version rewritten and
    // a row deleted
    let quote = |s: &str| s.replace('\'', "''");
    tamper(
        &store,
        &format!(
            "UPDATE vault.message_versions SET text = 'forged', content = '{{\"text\": \"forged\"}}'
             WHERE conversation_id = '{}' AND message_id = '{}'",
            quote(&forged_conv),
            quote(&forged)
        ),
    )
    .await;
    tamper(
        &store,
        &format!(
            "DELETE FROM vault.messages WHERE message_id = '{}'",
            quote(&removed)
        ),
    )
    .await;

    let proof = prove_source(&store, &src, &proof_options(&session, 10_000)).await;
    assert_eq!(proof.error, None);
    let mut want = vec![
        (forged.clone(), "text"),
        (removed.clone(), "missing_in_archive"),
    ];
    want.sort();
    assert_eq!(drift(&proof), want, "{:#?}", proof.drift);
    let row = proof.drift.iter().find(|r| r.message_id == forged).unwrap();
    assert_eq!(row.archived, "forged");
    assert_eq!(row.conversation_id, forged_conv);
    assert!(row.note.contains("changed in the database"), "{}", row.note);
    assert_ne!(row.upstream, "forged");
    let recorded = proofs_recorded(&store).await;
    assert_eq!(recorded.last().unwrap()["drifted"], 2);
}

#[tokio::test]
async fn tsdd_an_upstream_changed_after_the_last_sync_is_reported_with_the_exact_messages() {
    let (server, store, src, session) = synced_tsdd("changed").await;
    let plain = plain_group_texts(&server);
    let (edited_conv, edited) = plain[1].clone();
    let (_, recalled) = plain[2].clone();
    let (_, reacted) = plain[plain.len() - 1].clone();
    let me = server.world().me().uid.clone();
    let new_id = {
        let mut w = server.world();
        assert!(w.edit(
            edited.parse().unwrap(),
            &json!({"type": 1, "content": "edited later"})
        ));
        w.revoke(recalled.parse().unwrap(), &me);
        w.toggle_reaction(reacted.parse().unwrap(), &me, "👍");
        w.post_message(
            &ChannelKey::group(&edited_conv),
            &me,
            json!({"type": 1, "content": "after the sync"}),
        )
        .message_id
        .to_string()
    };

    // a small sample: the changes are found by the sample's windows and the newest pages
    let proof = prove_source(&store, &src, &proof_options(&session, 10_000)).await;
    assert_eq!(proof.error, None);
    let mut want = vec![
        (edited.clone(), "text"),
        (recalled.clone(), "recalled"),
        (reacted.clone(), "reactions"),
        (new_id.clone(), "missing_in_archive"),
    ];
    want.sort();
    assert_eq!(drift(&proof), want, "{:#?}", proof.drift);
    let row = |id: &str| proof.drift.iter().find(|r| r.message_id == id).unwrap();
    assert_eq!(row(&edited).note, "edited upstream since the last sync");
    assert_eq!(row(&edited).upstream, "edited later");
    assert_eq!(
        (
            row(&recalled).archived.as_str(),
            row(&recalled).upstream.as_str()
        ),
        ("no", "yes")
    );
    assert!(
        row(&new_id).note.contains("not synced yet"),
        "{}",
        row(&new_id).note
    );

    // once synced, the archive holds what upstream holds again (the recall is no drift
    // although upstream still serves the message as recalled)
    let result = sync_source(&store, &src, &sync_options(&session), None).await;
    assert!(result.ok(), "{:?}", result.error);
    let proof = prove_source(&store, &src, &proof_options(&session, 10_000)).await;
    assert_eq!(proof.error, None);
    assert!(proof.drift.is_empty(), "{:#?}", proof.drift);
    assert!(store.verify(&[]).await.unwrap().ok());
}

#[tokio::test]
async fn tsdd_a_small_sample_still_reads_the_newest_page_of_every_conversation() {
    let (server, store, src, session) = synced_tsdd("newest").await;
    let me = server.world().me().uid.clone();
    let conv = plain_group_texts(&server)[0].0.clone();
    let new_id = server
        .world()
        .post_message(
            &ChannelKey::group(&conv),
            &me,
            json!({"type": 1, "content": "new"}),
        )
        .message_id
        .to_string();
    let proof = prove_source(&store, &src, &proof_options(&session, 1)).await;
    assert_eq!(proof.error, None);
    assert_eq!(proof.sampled, 1);
    assert_eq!(drift(&proof), vec![(new_id, "missing_in_archive")]);
}

#[tokio::test]
async fn tsdd_a_failing_upstream_is_a_clear_error_and_records_no_proof() {
    let (server, store, src, session) = synced_tsdd("failing").await;
    server
        .faults()
        .status(Some("/v1/message/channel/sync"), 1000, 503);
    let proof = prove_source(&store, &src, &proof_options(&session, 50)).await;
    let error = proof.error.expect("an error");
    assert!(error.contains("re-reading conversation"), "{error}");
    assert!(proofs_recorded(&store).await.is_empty());
    assert_eq!(proof.event_seq, None);
}

fn chatvault(dir: &Path, args: &[&str], env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatvault"));
    cmd.current_dir(dir)
        .args(args)
        .env_remove("CHATVAULT_CONFIG");
    for var in [
        "CHATVAULT_DATABASE_URL",
        "CHATVAULT_DATA_DIR",
        "CHATVAULT_LISTEN",
    ] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
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

#[tokio::test]
async fn the_cli_reports_drift_as_json_with_its_own_exit_code_and_status_shows_the_proof() {
    let server = SimServer::start(World::generate(&spec())).await;
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
            spec().me_username
        ),
    )
    .unwrap();
    let env = vec![
        ("CHATVAULT_DATABASE_URL".to_string(), url),
        ("ACME_PASSWORD".to_string(), spec().me_password),
    ];
    let out = run(dir.path(), &["sync"], &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = run(dir.path(), &["verify", "--upstream", "--seed", "s1"], &env).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("no drift"),
        "{}",
        text(&out.stdout)
    );

    let plain = plain_group_texts(&server);
    let edited = plain[0].1.clone();
    assert!(server.world().edit(
        edited.parse().unwrap(),
        &json!({"type": 1, "content": "changed"})
    ));
    let out = run(
        dir.path(),
        &[
            "verify",
            "--upstream",
            "--source",
            "acme",
            "--sample",
            "5000",
            "--json",
        ],
        &env,
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let rows = report["drift"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["message_id"], json!(edited));
    assert_eq!(rows[0]["what"], "text");
    assert_eq!(rows[0]["upstream"], "changed");
    assert_eq!(report["sources"][0]["source"], "acme");
    assert!(report["sources"][0]["event_seq"].as_i64().is_some());

    let out = run(dir.path(), &["status"], &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("proven against upstream"),
        "{}",
        text(&out.stdout)
    );

    // bad input and a failing upstream are errors (exit 1), not drift
    let out = run(dir.path(), &["verify", "--upstream", "--sample", "0"], &env).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--sample"),
        "{}",
        text(&out.stderr)
    );
    server
        .faults()
        .status(Some("/v1/message/channel/sync"), 1000, 500);
    let out = run(dir.path(), &["verify", "--upstream"], &env).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("nothing was recorded"),
        "{}",
        text(&out.stderr)
    );
}

// ---- NetEase Yunxin ----------------------------------------------------------------------

mod yunxin {
    use super::*;
    use chatvault::config::YunxinConfig;
    use chatvault::sim::yunxin::{now_ms, SimServer, World, WorldSpec};

    fn world() -> World {
        let mut w = World::generate(&WorldSpec {
            seed: 23,
            accounts: 1,
            users: 6,
            teams: 1,
            super_teams: 0,
            direct_chats: 2,
            messages: 300,
            end_ms: now_ms() - 2 * 3_600_000,
            days: 5,
            ..WorldSpec::default()
        });
        w.behaviour.rate_limit = None;
        w
    }

    fn source(server: &SimServer) -> SourceConfig {
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
    }

    #[tokio::test]
    async fn yunxin_an_intact_archive_is_no_drift_and_an_edit_and_a_recall_upstream_are() {
        let server = SimServer::start(world()).await;
        let (store, _) = common::store().await;
        let src = source(&server);
        store
            .register_source(&src.name, src.platform_key())
            .await
            .unwrap();
        let session = session_dir("yunxin");
        let result = sync_source(&store, &src, &sync_options(&session), None).await;
        assert!(result.ok(), "{:?}", result.error);

        let proof = prove_source(&store, &src, &proof_options(&session, 10_000)).await;
        assert_eq!(proof.error, None);
        assert!(proof.drift.is_empty(), "{:#?}", proof.drift);
        assert!(proof.checked > 200, "{}", proof.checked);
        assert_eq!(proofs_recorded(&store).await.len(), 1);

        // two plain text messages of the last days, apart from the others in time
        let (edited, recalled) = {
            let w = server.world();
            let mut plain: Vec<(String, i64, String)> = w
                .truth()
                .into_iter()
                .flat_map(|c| c.messages)
                .filter(|m| {
                    m.removed.is_none()
                        && !m.no_sense
                        && m.modify_time.is_none()
                        && m.message_type == 0
                        && m.create_time > now_ms() - 4 * 86_400_000
                })
                .map(|m| (m.message_id, m.create_time, m.sender))
                .collect();
            plain.sort_by_key(|m| m.1);
            (plain[0].clone(), plain[plain.len() / 2].clone())
        };
        {
            let mut w = server.world();
            assert!(w.edit(edited.0.parse().unwrap(), &edited.2, "edited upstream"));
            assert!(w.recall_two_way(recalled.0.parse().unwrap(), &recalled.2));
        }
        let proof = prove_source(&store, &src, &proof_options(&session, 10_000)).await;
        assert_eq!(proof.error, None);
        let mut want = vec![
            (edited.0.clone(), "text"),
            (recalled.0.clone(), "missing_upstream"),
        ];
        want.sort();
        assert_eq!(drift(&proof), want, "{:#?}", proof.drift);
        let row = proof
            .drift
            .iter()
            .find(|r| r.message_id == edited.0)
            .unwrap();
        assert_eq!(row.upstream, "edited upstream");
        assert_eq!(row.note, "edited upstream since the last sync");
        assert!(store.verify(&[]).await.unwrap().ok());
    }
}

// ---- Yunhu -------------------------------------------------------------------------------

mod yunhu {
    use super::*;
    use chatvault::config::YunhuConfig;
    use chatvault::sim::yunhu::{SimServer, World, WorldSpec, GROUP};

    fn spec() -> WorldSpec {
        WorldSpec {
            seed: 29,
            users: 6,
            groups: 2,
            bots: 0,
            direct_chats: 2,
            messages: 300,
            ..WorldSpec::default()
        }
    }

    fn source(server: &SimServer) -> SourceConfig {
        SourceConfig {
            name: SourceName::new("yh"),
            schedule: "0 */5 * * * *".into(),
            requests_per_second: 0.0,
            request_timeout: Duration::from_secs(5),
            enabled: true,
            push: true,
            platform: PlatformConfig::Yunhu(YunhuConfig {
                base_url: server.base_url(),
                token: Secret::new(spec().token),
                rescan_messages: 200,
                rescan_days: 0,
                rescan_every_minutes: 0,
                ws_url: chatvault::connector::yunhu::push::DEFAULT_WS_URL.into(),
            }),
        }
    }

    #[tokio::test]
    async fn yunhu_an_intact_archive_is_no_drift_and_changes_upstream_are_reported() {
        let server = SimServer::start(World::generate(&spec())).await;
        let (store, _) = common::store().await;
        let src = source(&server);
        store
            .register_source(&src.name, src.platform_key())
            .await
            .unwrap();
        let session = session_dir("yunhu");
        let result = sync_source(&store, &src, &sync_options(&session), None).await;
        assert!(result.ok(), "{:?}", result.error);

        let proof = prove_source(&store, &src, &proof_options(&session, 10_000)).await;
        assert_eq!(proof.error, None);
        assert!(proof.drift.is_empty(), "{:#?}", proof.drift);
        assert!(proof.checked > 200, "{}", proof.checked);

        let (chat, edited, recalled) = {
            let w = server.world();
            let truth = w.truth();
            let group = truth
                .iter()
                .find(|c| c.chat_type == GROUP && c.in_list)
                .unwrap();
            let plain: Vec<String> = group
                .messages
                .iter()
                .filter(|m| m.visible && m.recall_time == 0 && m.content_type == 1)
                .map(|m| m.msg_id.clone())
                .collect();
            (
                group.chat_id.clone(),
                plain[2].clone(),
                plain[plain.len() / 2].clone(),
            )
        };
        let new_id = {
            let mut w = server.world();
            assert!(w.edit_text(&edited, "edited upstream"));
            assert!(w.recall(&recalled));
            let me = w.me.id.clone();
            w.post_text(&chat, &me, "after the sync").unwrap()
        };
        let proof = prove_source(&store, &src, &proof_options(&session, 10_000)).await;
        assert_eq!(proof.error, None);
        let mut want = vec![
            (edited.clone(), "text"),
            (recalled.clone(), "recalled"),
            (new_id.clone(), "missing_in_archive"),
        ];
        want.sort();
        assert_eq!(drift(&proof), want, "{:#?}", proof.drift);
        assert!(store.verify(&[]).await.unwrap().ok());
    }
}

// ---- the store's part --------------------------------------------------------------------

#[tokio::test]
async fn the_store_samples_by_seed_finds_neighbours_and_spans_and_chains_the_proof() {
    let (store, source) = common::store().await;
    let mut messages: Vec<_> = (1..=40)
        .map(|seq| common::message("g", &format!("m{seq}"), seq, &format!("text {seq}")))
        .collect();
    messages[4].recalled = Some(chatvault::model::Mark::default());
    let mut page = common::page("messages/g", None, 1, messages);
    page.conversations.push(common::conversation("g"));
    store.apply_page(&source, &page).await.unwrap();

    let a = store.sample_for_upstream(&source, 10, "one").await.unwrap();
    let b = store.sample_for_upstream(&source, 10, "one").await.unwrap();
    let c = store.sample_for_upstream(&source, 10, "two").await.unwrap();
    assert_eq!(a, b, "the same seed samples the same messages");
    assert_eq!(a.len(), 10);
    assert_ne!(a, c, "another seed samples others");
    for m in &a {
        let seq = m.seq.unwrap();
        let next = (seq < 40).then(|| (format!("m{}", seq + 1), Some(seq + 1)));
        assert_eq!(m.next, next, "{m:?}");
    }
    assert_eq!(
        store
            .sample_for_upstream(&source, 1000, "x")
            .await
            .unwrap()
            .len(),
        40
    );
    let newest = store.newest_messages(&source).await.unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].message_id, "m40");

    let held = store
        .archived_messages(
            &source,
            "g",
            &["m1".to_string()],
            &[(5, 7)],
            &[(common::t(20), common::t(21))],
        )
        .await
        .unwrap();
    let ids: Vec<&str> = held.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(ids, ["m1", "m5", "m6", "m7", "m20", "m21"]);
    assert!(held[1].recalled && !held[0].recalled);
    assert_eq!(held[0].text, "text 1");
    assert_eq!(held[0].version_hashes.len(), 1);

    let seq = store
        .record_upstream_verified(&source, &json!({"checked": 3, "drifted": 0}))
        .await
        .unwrap();
    let proofs = store.last_upstream_proofs().await.unwrap();
    assert_eq!(proofs["s"].event_seq, seq);
    assert_eq!(proofs["s"].detail["checked"], 3);
    assert!(store.verify(&[]).await.unwrap().ok());
    let unknown = store
        .record_upstream_verified(&SourceName::new("nobody"), &json!({}))
        .await;
    assert!(unknown.is_err());
}

#[tokio::test]
async fn the_status_page_shows_the_last_proof() {
    use chatvault::http::{self as api, ApiState};
    use chatvault::metrics::Metrics;
    let (store, source) = common::store().await;
    store
        .record_upstream_verified(&source, &json!({"checked": 321, "drifted": 4}))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    tokio::spawn(api::serve_on(
        listener,
        ApiState::new(&store, Metrics::new()),
        shutdown,
        Duration::from_secs(5),
    ));
    let html = reqwest::Client::new()
        .get(format!("http://{address}/status"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("Proven against upstream"), "{html}");
    assert!(html.contains("(event 1: 321 checked, 4 drifted)"), "{html}");
    stop.send(true).unwrap();
}
