//! `chatvault export --attachments DIR` through the binary against a real PostgreSQL and
//! a directory blob store: the stored files of the exported messages copied once each,
//! named by sha256; the manifest listing every attachment and checked by
//! `--check-manifest` (a tampered copy fails it); every format and `--as-of`; a file
//! missing from the blob store named, not hidden.

use crate::attachments_web::{self, HTML, LOST, PDF, PNG, SVG};
use crate::common::*;
use crate::ediscovery::{run, text};

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use chatvault::attachments::blob::BlobStore;
use chatvault::model::SourceName;
use chatvault::store::Store;
use serde_json::Value;

/// The seeded archive for the binary (`attachments_web::seed`, blobs in the data
/// directory's default store); returns the store, the environment and the directory.
async fn archive() -> (Store, Vec<(String, String)>, tempfile::TempDir) {
    let (options, name) = chatvault::pg::testing::fresh_database().await;
    let socket = options.get_socket().expect("a socket");
    let url = format!(
        "postgres://{}@localhost/{name}?host={}",
        options.get_username(),
        socket.display()
    );
    let store = Store::connect(options, 4).await.unwrap();
    store.migrate().await.unwrap();
    let source = SourceName::new("s");
    store
        .register_source(&source, chatvault::model::Platform::Tangsengdaodao)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let blobs = BlobStore::in_directory(&data.join("attachments")).unwrap();
    attachments_web::seed(&store, &source, &blobs).await;
    std::fs::write(dir.path().join("chatvault.toml"), "").unwrap();
    let env = vec![
        ("CHATVAULT_DATABASE_URL".to_string(), url),
        ("CHATVAULT_DATA_DIR".to_string(), data.display().to_string()),
    ];
    (store, env, dir)
}

fn manifest(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// The files under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(dir).unwrap() {
        let sub = sub.unwrap().path();
        for f in std::fs::read_dir(&sub).unwrap() {
            let f = f.unwrap().path();
            out.push(f.strip_prefix(dir).unwrap().display().to_string());
        }
    }
    out.sort();
    out
}

fn copy_name(bytes: &[u8]) -> String {
    let sha = attachments_web::sha(bytes);
    format!("{}/{sha}", &sha[..2])
}

/// The manifest's attachment entries as `message/ordinal status file`.
fn entries(m: &Value) -> Vec<String> {
    m["attachments"]["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            format!(
                "{}/{} {} {}",
                a["message_id"].as_str().unwrap(),
                a["ordinal"],
                a["status"].as_str().unwrap(),
                a["file"].as_str().unwrap_or("-")
            )
        })
        .collect()
}

#[tokio::test]
async fn stored_files_are_copied_once_listed_in_the_manifest_and_checked() {
    let (store, env, dir) = archive().await;
    let out = run(
        dir.path(),
        &[
            "export",
            "--conversation",
            "g1",
            "-o",
            "g1.jsonl",
            "--attachments",
            "files",
        ],
        &env,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("copied 4 attachment files"),
        "{}",
        text(&out.stderr)
    );
    let files = dir.path().join("files");
    let mut want: Vec<String> = [PNG, PDF, HTML, SVG].map(copy_name).to_vec();
    want.sort();
    assert_eq!(
        files_under(&files),
        want,
        "each stored file once, by sha256"
    );
    for bytes in [PNG, PDF, HTML, SVG] {
        let path = files.join(copy_name(bytes));
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }

    let m = manifest(&dir.path().join("g1.jsonl.manifest.json"));
    assert_eq!(m["attachments"]["dir"], "files");
    assert_eq!(m["attachments"]["files"].as_array().unwrap().len(), 4);
    let png = copy_name(PNG);
    let pdf = copy_name(PDF);
    let html = copy_name(HTML);
    let svg = copy_name(SVG);
    assert_eq!(
        entries(&m),
        [
            format!("1/0 stored {png}"),
            "1/1 pending -".to_string(),
            format!("2/0 stored {pdf}"),
            format!("2/1 stored {html}"),
            format!("2/2 stored {svg}"),
            "3/0 failed -".to_string(),
            "3/1 gone -".to_string(),
            "3/2 too_large -".to_string(),
            "3/3 skipped -".to_string(),
            format!("4/0 stored {png}"),
        ]
    );
    let first = &m["attachments"]["attachments"][0];
    assert_eq!(first["name"], "截图.png");
    assert_eq!(first["sha256"], attachments_web::sha(PNG));
    assert_eq!(first["size"], PNG.len());
    assert_eq!(m["attachments"]["attachments"][1]["size"], 2048);

    let check = run(
        dir.path(),
        &["export", "--check-manifest", "g1.jsonl.manifest.json"],
        &env,
    )
    .await;
    assert!(check.status.success(), "{}", text(&check.stderr));
    assert!(
        text(&check.stdout).contains("ok: 5 files match the manifest"),
        "{}",
        text(&check.stdout)
    );

    // the export is in the access log with where the files went
    let filters: Value = sqlx::query_scalar(
        "SELECT filters FROM archive.access_log WHERE action = 'export' ORDER BY seq DESC LIMIT 1",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(filters["attachments"], "files", "{filters}");

    // a tampered copy fails the check, naming it
    std::fs::write(files.join(&pdf), b"%PDF-1.4 forged").unwrap();
    let check = run(
        dir.path(),
        &["export", "--check-manifest", "g1.jsonl.manifest.json"],
        &env,
    )
    .await;
    assert!(!check.status.success());
    let err = text(&check.stderr);
    assert!(
        err.contains(&format!("files/{pdf}: differs from the manifest")),
        "{err}"
    );
    // and so does a removed one
    std::fs::remove_file(files.join(&svg)).unwrap();
    let check = run(
        dir.path(),
        &["export", "--check-manifest", "g1.jsonl.manifest.json"],
        &env,
    )
    .await;
    let err = text(&check.stderr);
    assert!(err.contains(&format!("files/{svg}")), "{err}");
    assert!(!check.status.success());

    // exporting into the same directory again keeps what matches, refuses what does not
    let again = run(
        dir.path(),
        &[
            "export",
            "--conversation",
            "g1",
            "-o",
            "again.jsonl",
            "--attachments",
            "files",
        ],
        &env,
    )
    .await;
    assert!(
        !again.status.success(),
        "the forged copy is not taken for the file"
    );
    let err = text(&again.stderr);
    assert!(err.contains("already there with other content"), "{err}");
    assert_eq!(
        std::fs::read(files.join(&svg)).unwrap(),
        SVG,
        "copied again"
    );
}

#[tokio::test]
async fn every_format_and_as_of_carry_the_attachments() {
    let (_store, env, dir) = archive().await;
    for (args, manifest_file) in [
        (
            vec![
                "--format",
                "csv",
                "-o",
                "g1.csv",
                "--attachments",
                "csv-files",
            ],
            "g1.csv.manifest.json",
        ),
        (
            vec![
                "--format",
                "mbox",
                "-o",
                "g1.mbox",
                "--attachments",
                "mbox-files",
            ],
            "g1.mbox.manifest.json",
        ),
        (
            vec![
                "--format",
                "eml",
                "--output",
                "mails",
                "--attachments",
                "eml-files",
            ],
            "mails/manifest.json",
        ),
    ] {
        let mut all = vec!["export", "--conversation", "g1"];
        all.extend(args);
        let out = run(dir.path(), &all, &env).await;
        assert!(out.status.success(), "{all:?}: {}", text(&out.stderr));
        let m = manifest(&dir.path().join(manifest_file));
        assert_eq!(entries(&m).len(), 10, "{all:?}");
        assert_eq!(m["attachments"]["files"].as_array().unwrap().len(), 4);
        let check = run(
            dir.path(),
            &["export", "--check-manifest", manifest_file],
            &env,
        )
        .await;
        assert!(
            check.status.success(),
            "{all:?}: {}{}",
            text(&check.stdout),
            text(&check.stderr)
        );
    }
    // the EML directory lies elsewhere, so the manifest names it absolutely
    let m = manifest(&dir.path().join("mails/manifest.json"));
    assert!(Path::new(m["attachments"]["dir"].as_str().unwrap()).is_absolute());

    // as of the moment message 2 was sent: only messages 1 and 2, and their attachments
    let as_of = t(2).to_rfc3339();
    let out = run(
        dir.path(),
        &[
            "export",
            "--conversation",
            "g1",
            "--as-of",
            &as_of,
            "-o",
            "then.jsonl",
            "--attachments",
            "then-files",
        ],
        &env,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m = manifest(&dir.path().join("then.jsonl.manifest.json"));
    assert_eq!(m["messages"], 2, "{m}");
    let listed: Vec<String> = entries(&m).iter().map(|e| e[..3].to_string()).collect();
    assert_eq!(listed, ["1/0", "1/1", "2/0", "2/1", "2/2"]);
    assert_eq!(files_under(&dir.path().join("then-files")).len(), 4);
}

#[tokio::test]
async fn a_file_missing_from_the_blob_store_is_named_and_fails_the_export() {
    let (_store, env, dir) = archive().await;
    let out = run(
        dir.path(),
        &["export", "-o", "all.jsonl", "--attachments", "files"],
        &env,
    )
    .await;
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("1 attachments could not be copied"), "{err}");
    assert!(err.contains(&attachments_web::sha(LOST)), "{err}");
    // everything else is there, and the manifest says what is missing and why
    let m = manifest(&dir.path().join("all.jsonl.manifest.json"));
    assert_eq!(m["attachments"]["files"].as_array().unwrap().len(), 4);
    let lost = m["attachments"]["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["message_id"] == "9")
        .unwrap()
        .clone();
    assert_eq!(lost["file"], Value::Null, "{lost}");
    assert!(
        lost["problem"].as_str().unwrap().contains("has no file"),
        "{lost}"
    );
    let check = run(
        dir.path(),
        &["export", "--check-manifest", "all.jsonl.manifest.json"],
        &env,
    )
    .await;
    assert!(!check.status.success());
    assert!(
        text(&check.stderr).contains("attachment 0 of message \"9\" in s/g2: not copied"),
        "{}",
        text(&check.stderr)
    );

    // no manifest on stdout, so no attachments there
    let out = run(dir.path(), &["export", "--attachments", "files"], &env).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--attachments needs --output"),
        "{}",
        text(&out.stderr)
    );
}
