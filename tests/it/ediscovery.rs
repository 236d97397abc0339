//! `chatvault export` for e-discovery, through the binary against a real PostgreSQL: EML
//! parsed by Python's `email` package, mbox by `mailbox`, CSV by `csv`; manifests whose
//! hashes match the files and that `--check-manifest` checks; JSONL read back equal to
//! `archive.messages`; and each export in the access log.

use crate::common::*;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chatvault::model::{Mark, MessageKind, SourceName};
use chatvault::store::Store;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub(crate) fn chatvault(dir: &Path, args: &[&str], env: &[(String, String)]) -> Output {
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

pub(crate) async fn run(dir: &Path, args: &[&str], env: &[(String, String)]) -> Output {
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

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An archive for the binary: a fresh database seeded by [`seed`], an empty configuration
/// and a data directory; returns the store, the environment and the directory.
pub(crate) async fn archive() -> (Store, Vec<(String, String)>, tempfile::TempDir) {
    let (options, name) = chatvault::pg::testing::fresh_database().await;
    let socket = options.get_socket().expect("a socket");
    let url = format!(
        "postgres://{}@localhost/{name}?host={}",
        options.get_username(),
        socket.display()
    );
    let store = Store::connect(options, 4).await.unwrap();
    store.migrate().await.unwrap();
    seed(&store).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("chatvault.toml"), "").unwrap();
    let env = vec![
        ("CHATVAULT_DATABASE_URL".to_string(), url),
        (
            "CHATVAULT_DATA_DIR".to_string(),
            dir.path().join("data").display().to_string(),
        ),
    ];
    (store, env, dir)
}

/// Source `s`: group `g1` ("项目组 🚀") with a reply chain (1 ← 2 ← 3), a message edited
/// twice (4), a recalled one (5), a file (6) and one the next day (8); direct chat `d1`
/// with a hostile text (7).
pub(crate) async fn seed(store: &Store) {
    let src = SourceName::new("s");
    store
        .register_source(&src, chatvault::model::Platform::Tangsengdaodao)
        .await
        .unwrap();
    let texts = [
        (1, "明天上午十点开会议 🎉"),
        (2, "好的 OK 👍"),
        (
            3,
            "From the top:\nFrom here, a line mbox must quote\n>From there",
        ),
        (4, "初稿 draft"),
        (5, "秘密计划 secret"),
        (6, "报告"),
    ];
    let mut messages = Vec::new();
    for (seq, body) in texts {
        let mut m = message("g1", &seq.to_string(), seq, body);
        let header = m.header.as_mut().unwrap();
        header.sender_name = Some(
            if seq % 2 == 0 {
                "王伟"
            } else {
                "Ann \"A\" Lee"
            }
            .into(),
        );
        header.sender_id = Some(if seq % 2 == 0 { "u2" } else { "u1" }.into());
        if seq == 2 || seq == 3 {
            header.reply_to = Some((seq - 1).to_string());
        }
        if seq == 6 {
            let c = m.content.as_mut().unwrap();
            c.kind = MessageKind::File;
            c.content = json!({"name": "报告.pdf", "size": 4096,
                               "url": "https://files.example/报告.pdf"});
        }
        messages.push(m);
    }
    let mut next_day = message("g1", "8", 8, "第二天 next day");
    next_day.header.as_mut().unwrap().sent_at = t(90_000);
    messages.push(next_day);
    let mut first = page("m/g1", None, 8, messages);
    let mut g1 = conversation("g1");
    g1.name = Some("项目组 🚀".into());
    first.conversations.push(g1);
    store.apply_page(&src, &first).await.unwrap();

    for (i, body) in ["second draft 第二版", "终稿 final"].iter().enumerate() {
        let mut edited = message("g1", "4", 4, body);
        edited.header.as_mut().unwrap().sender_id = Some("u2".into());
        edited.header.as_mut().unwrap().sender_name = Some("王伟".into());
        edited.edited_at = Some(t(1000 + i as i64 * 100));
        store
            .apply_page(&src, &page("m/g1", Some(8), 8, vec![edited]))
            .await
            .unwrap();
    }
    let mut recalled = message("g1", "5", 5, "");
    recalled.recalled = Some(Mark {
        at: Some(t(2000)),
        by: Some("u1".into()),
        reason: None,
    });
    store
        .apply_page(&src, &page("m/g1", Some(8), 8, vec![recalled]))
        .await
        .unwrap();

    let mut d = page(
        "m/d1",
        None,
        1,
        vec![message(
            "d1",
            "7",
            7,
            "hi =?UTF-8?B?eA==?= \u{1b}]52;c;ZXZpbA==\u{7} 你好",
        )],
    );
    let mut d1 = conversation("d1");
    d1.conversation_type = chatvault::model::ConversationType::Direct;
    d1.name = None;
    d.conversations.push(d1);
    store.apply_page(&src, &d).await.unwrap();
}

fn sha256_file(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn python(script: &str, args: &[&Path]) -> Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(out.status.success(), "python: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)))
}

/// Python's `email` package (the modern policy, which decodes encoded-words and
/// quoted-printable) over each file: headers and the decoded body.
const PARSE_EML: &str = r#"
import email, json, sys
from email import policy
out = []
for path in sys.argv[1:]:
    with open(path, 'rb') as f:
        raw = f.read()
    m = email.message_from_bytes(raw, policy=policy.default)
    headers = {}
    for k, v in m.items():
        headers.setdefault(k, []).append(str(v))
    # mail's line ends are CRLF; compare texts with LF
    out.append({"headers": headers, "body": m.get_content().replace('\r\n', '\n'),
                "ascii": all(b < 128 for b in raw),
                "defects": [str(d) for d in m.defects],
                "from_name": m['From'].addresses[0].display_name,
                "from_addr": m['From'].addresses[0].addr_spec})
print(json.dumps(out))
"#;

const PARSE_MBOX: &str = r#"
import json, mailbox, sys
from email import policy
import email
out = []
for msg in mailbox.mbox(sys.argv[1]):
    m = email.message_from_bytes(msg.as_bytes(), policy=policy.default)
    out.append({"subject": str(m['Subject']), "id": str(m['X-Chatvault-Message-Id'] or ''),
                "body": m.get_content(), "from_line": msg.get_from()})
print(json.dumps(out))
"#;

const PARSE_CSV: &str = r#"
import csv, json, sys
with open(sys.argv[1], newline='', encoding='utf-8') as f:
    print(json.dumps(list(csv.DictReader(f))))
"#;

fn header<'a>(mail: &'a Value, name: &str) -> Option<&'a str> {
    mail["headers"][name][0].as_str()
}

fn manifest_of(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Every file the manifest lists exists with its size and sha256.
fn assert_manifest_matches(manifest: &Path) -> Value {
    let m = manifest_of(manifest);
    let dir = manifest.parent().unwrap();
    for f in m["files"].as_array().unwrap() {
        let path = dir.join(f["path"].as_str().unwrap());
        assert_eq!(sha256_file(&path), f["sha256"].as_str().unwrap(), "{f}");
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            f["bytes"].as_u64().unwrap()
        );
    }
    m
}

#[tokio::test]
async fn eml_export_parses_with_a_real_mime_parser_threaded_and_with_a_manifest() {
    let (store, env, dir) = archive().await;
    let out = run(
        dir.path(),
        &["export", "--format", "eml", "--output", "mails"],
        &env,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "", "nothing on stdout");
    let mails_dir = dir.path().join("mails");
    let manifest = assert_manifest_matches(&mails_dir.join("manifest.json"));
    assert_eq!(manifest["messages"], 8);
    assert_eq!(manifest["format"], "eml");
    assert_eq!(manifest["eml_per"], "message");
    assert_eq!(manifest["chatvault_version"], env!("CARGO_PKG_VERSION"));
    let head: (i64, String) = sqlx::query_as(
        "SELECT event_seq, encode(hash, 'hex') FROM vault.chain_heads WHERE source = 's'",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(
        manifest["chain_heads"],
        json!([{"chain": "s", "seq": head.0, "hash": head.1}])
    );
    assert_eq!(manifest["first_sent_at"], json!(t(1).to_rfc3339()));
    assert_eq!(manifest["last_sent_at"], json!(t(90_000).to_rfc3339()));
    let files: Vec<PathBuf> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| mails_dir.join(f["path"].as_str().unwrap()))
        .collect();
    assert_eq!(files.len(), 8);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&files[0]).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let parsed = python(PARSE_EML, &paths);
    let by_id: BTreeMap<String, &Value> = parsed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (header(m, "X-Chatvault-Message-Id").unwrap().to_string(), m))
        .collect();
    for m in by_id.values() {
        assert!(m["ascii"].as_bool().unwrap(), "headers and body are ASCII");
        assert_eq!(m["defects"], json!([]), "{m}");
        assert_eq!(header(m, "X-Chatvault-Source"), Some("s"));
    }
    let first = by_id["1"];
    assert_eq!(first["from_name"], "Ann \"A\" Lee");
    assert_eq!(first["from_addr"], "u1@users.s.chatvault.invalid");
    assert_eq!(
        header(first, "To"),
        Some("项目组 🚀 <g1@conversations.s.chatvault.invalid>")
    );
    assert_eq!(
        header(first, "Subject"),
        Some("[项目组 🚀] 明天上午十点开会议 🎉")
    );
    assert_eq!(first["body"], "明天上午十点开会议 🎉\n");
    assert_eq!(
        header(first, "Date"),
        Some(
            t(1).format("%a, %d %b %Y %H:%M:%S +0000")
                .to_string()
                .as_str()
        )
    );
    assert_eq!(header(first, "X-Chatvault-Conversation"), Some("g1"));
    assert_eq!(header(first, "X-Chatvault-Version"), Some("1"));
    assert_eq!(header(first, "In-Reply-To"), None);

    // threaded by reply: 3 answers 2, which answers 1
    let id_of = |n: &str| header(by_id[n], "Message-ID").unwrap().to_string();
    let third = by_id["3"];
    assert_eq!(header(third, "In-Reply-To"), Some(id_of("2").as_str()));
    assert_eq!(
        header(third, "References"),
        Some(format!("{} {}", id_of("1"), id_of("2")).as_str())
    );
    assert_eq!(
        third["body"],
        "From the top:\nFrom here, a line mbox must quote\n>From there\n"
    );
    assert_eq!(third["from_name"], "Ann \"A\" Lee");

    // every version, the recall, the attachment by reference
    let edited = by_id["4"];
    assert_eq!(header(edited, "X-Chatvault-Version"), Some("3"));
    assert_eq!(edited["from_name"], "王伟");
    let body = edited["body"].as_str().unwrap();
    assert!(body.starts_with("终稿 final\n"), "{body}");
    for v in ["Version 1 (original):\n初稿 draft", "second draft 第二版"] {
        assert!(body.contains(v), "{body}");
    }
    let recalled = by_id["5"];
    assert_eq!(
        header(recalled, "X-Chatvault-Recalled"),
        Some(format!("{} by u1", t(2000).to_rfc3339()).as_str())
    );
    assert!(recalled["body"]
        .as_str()
        .unwrap()
        .starts_with("秘密计划 secret"));
    let file = by_id["6"];
    assert_eq!(
        header(file, "X-Chatvault-Attachment"),
        Some("https://files.example/报告.pdf (报告.pdf)")
    );
    assert_eq!(header(file, "X-Chatvault-Kind"), Some("file"));
    // a hostile text stays text: the encoded-word look-alike is not decoded, the escape is
    // in the body as it was
    let hostile = by_id["7"];
    assert_eq!(
        hostile["body"],
        "hi =?UTF-8?B?eA==?= \u{1b}]52;c;ZXZpbA==\u{7} 你好\n"
    );
    assert_eq!(
        header(hostile, "Subject"),
        Some("[d1] hi =?UTF-8?B?eA==?= \u{1b}]52;c;ZXZpbA==\u{7} 你好")
    );

    // --check-manifest: intact, then one file changed and one added
    let check = run(
        dir.path(),
        &["export", "--check-manifest", "mails/manifest.json"],
        &[],
    )
    .await;
    assert!(check.status.success(), "{}", text(&check.stderr));
    assert!(text(&check.stdout).contains("ok: 8 files match the manifest"));
    let victim = files[2].clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&victim, bytes).unwrap();
    std::fs::write(mails_dir.join("planted.eml"), "x").unwrap();
    let check = run(
        dir.path(),
        &["export", "--check-manifest", "mails/manifest.json"],
        &[],
    )
    .await;
    assert_eq!(check.status.code(), Some(1));
    let stderr = text(&check.stderr);
    let victim_name = victim.file_name().unwrap().to_str().unwrap();
    assert!(
        stderr.contains(&format!("{victim_name}: differs from the manifest")),
        "{stderr}"
    );
    assert!(
        stderr.contains("planted.eml: in the directory but not in the manifest"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 2, "{stderr}");

    // an existing directory is refused, nothing written
    let out = run(
        dir.path(),
        &["export", "--format", "eml", "--output", "mails"],
        &env,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("already exists"));
}

#[tokio::test]
async fn conversation_days_mbox_and_csv_parse_and_their_manifests_match() {
    let (_store, env, dir) = archive().await;

    // one EML per conversation and day: g1 on two days, d1 on one
    let out = run(
        dir.path(),
        &[
            "export",
            "--format",
            "eml",
            "--eml-per",
            "conversation-day",
            "-o",
            "days",
        ],
        &env,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let manifest = assert_manifest_matches(&dir.path().join("days/manifest.json"));
    assert_eq!(manifest["messages"], 8);
    let files: Vec<PathBuf> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| dir.path().join("days").join(f["path"].as_str().unwrap()))
        .collect();
    assert_eq!(files.len(), 3);
    let paths: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let parsed = python(PARSE_EML, &paths);
    let days: Vec<(String, String, &Value)> = parsed
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                header(m, "X-Chatvault-Conversation").unwrap().to_string(),
                header(m, "X-Chatvault-Day").unwrap().to_string(),
                m,
            )
        })
        .collect();
    let first_day = t(1).date_naive().to_string();
    let next_day = t(90_000).date_naive().to_string();
    let keys: Vec<(&str, &str)> = days
        .iter()
        .map(|(c, d, _)| (c.as_str(), d.as_str()))
        .collect();
    // in export order: conversation, then day
    assert_eq!(
        keys,
        [
            ("d1", first_day.as_str()),
            ("g1", first_day.as_str()),
            ("g1", next_day.as_str())
        ]
    );
    let day1 = days[1].2;
    assert_eq!(header(day1, "X-Chatvault-Messages"), Some("6"));
    assert_eq!(
        header(day1, "Subject"),
        Some(format!("[项目组 🚀] {}: 6 messages", t(1).date_naive()).as_str())
    );
    let body = day1["body"].as_str().unwrap();
    for part in [
        "Ann \"A\" Lee (u1)  [message 1]\n明天上午十点开会议 🎉",
        "[message 3, reply to 2]",
        "[message 4, version 3]\n终稿 final",
        "秘密计划 secret",
    ] {
        assert!(body.contains(part), "{part:?} in {body}");
    }
    assert_eq!(header(days[2].2, "X-Chatvault-Messages"), Some("1"));
    assert!(days[2].2["body"]
        .as_str()
        .unwrap()
        .contains("第二天 next day"));
    assert_eq!(header(days[0].2, "X-Chatvault-Messages"), Some("1"));
    assert!(days[0].2["body"].as_str().unwrap().contains("你好"));

    // mbox: one file, mboxrd, read by Python's mailbox
    let out = run(
        dir.path(),
        &["export", "--format", "mbox", "-o", "all.mbox"],
        &env,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let manifest = assert_manifest_matches(&dir.path().join("all.mbox.manifest.json"));
    assert_eq!(manifest["files"][0]["path"], "all.mbox");
    assert_eq!(manifest["format"], "mbox");
    let mbox = python(PARSE_MBOX, &[&dir.path().join("all.mbox")]);
    let mbox = mbox.as_array().unwrap();
    assert_eq!(mbox.len(), 8, "quoted From lines split no message");
    let third = mbox.iter().find(|m| m["id"] == "3").unwrap();
    // mboxrd: the body's From lines carry one more '>' in the file (Python's mailbox keeps
    // the quoting, as mboxrd readers that do not unquote do)
    assert_eq!(
        third["body"],
        ">From the top:\n>From here, a line mbox must quote\n>>From there\n"
    );
    assert!(third["from_line"]
        .as_str()
        .unwrap()
        .starts_with("u1@users.s.chatvault.invalid "));
    let first = mbox.iter().find(|m| m["id"] == "1").unwrap();
    assert_eq!(first["subject"], "[项目组 🚀] 明天上午十点开会议 🎉");
    assert_eq!(first["body"], "明天上午十点开会议 🎉\n");
    let raw = std::fs::read_to_string(dir.path().join("all.mbox")).unwrap();
    assert!(raw.contains("\n>From here, a line"), "mboxrd quoting");

    // CSV read back by a real CSV parser
    let out = run(
        dir.path(),
        &["export", "--format", "csv", "-o", "all.csv"],
        &env,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_manifest_matches(&dir.path().join("all.csv.manifest.json"));
    let rows = python(PARSE_CSV, &[&dir.path().join("all.csv")]);
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 8);
    let third = rows.iter().find(|r| r["message_id"] == "3").unwrap();
    assert_eq!(
        third["text"],
        "From the top:\nFrom here, a line mbox must quote\n>From there"
    );
    assert_eq!(third["reply_to"], "2");
    assert_eq!(third["conversation_name"], "项目组 🚀");
    let edited = rows.iter().find(|r| r["message_id"] == "4").unwrap();
    assert_eq!(edited["text"], "终稿 final");
    assert_eq!(edited["edit_count"], "2");

    // --eml-per without a mail format, eml without a directory: clear errors
    let out = run(
        dir.path(),
        &["export", "--eml-per", "conversation-day"],
        &env,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--eml-per applies to --format eml and mbox only"));
    let out = run(dir.path(), &["export", "--format", "eml"], &env).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("give --output DIR"));
}

#[tokio::test]
async fn jsonl_read_back_equals_the_archive_and_every_export_is_in_the_access_log() {
    let (store, env, dir) = archive().await;
    let out = run(dir.path(), &["export", "-o", "all.jsonl"], &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr)
        .contains("exported 8 messages to all.jsonl (manifest all.jsonl.manifest.json)"));
    let manifest = assert_manifest_matches(&dir.path().join("all.jsonl.manifest.json"));
    assert_eq!(manifest["format"], "jsonl");
    assert_eq!(manifest["filters"]["source"], Value::Null);

    // the re-import: every archive.messages row, column by column, and every version
    let exported = reimport(&dir.path().join("all.jsonl"));
    let rows: Vec<Value> = sqlx::query_scalar(
        "SELECT to_jsonb(m) - 'raw' FROM archive.messages m ORDER BY source, conversation_id, message_id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(exported.len(), rows.len());
    for row in &rows {
        let key = (
            row["conversation_id"].as_str().unwrap().to_string(),
            row["message_id"].as_str().unwrap().to_string(),
        );
        let got = &exported[&key];
        for (column, want) in row.as_object().unwrap() {
            let got = &got[column.as_str()];
            let same = match (want.as_str(), got.as_str()) {
                // times: the same instant, whatever the spelling
                (Some(w), Some(g)) if column.ends_with("_at") => {
                    chrono::DateTime::parse_from_rfc3339(w).unwrap()
                        == chrono::DateTime::parse_from_rfc3339(g).unwrap()
                }
                _ => got == want,
            };
            assert!(same, "{key:?} {column}: exported {got}, archive {want}");
        }
    }
    let versions: Vec<(String, String, i32, String)> = sqlx::query_as(
        "SELECT conversation_id, message_id, version, text FROM archive.message_versions",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let exported_versions: usize = exported
        .values()
        .map(|m| m["versions"].as_array().unwrap().len())
        .sum();
    assert_eq!(exported_versions, versions.len());
    for (c, m, v, text) in &versions {
        let got = &exported[&(c.clone(), m.clone())]["versions"][(*v - 1) as usize];
        assert_eq!(got["version"], *v);
        assert_eq!(got["text"], *text);
    }

    // one conversation to stdout: no manifest, and the access log has both exports
    let out = run(dir.path(), &["export", "--conversation", "d1"], &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 1);
    let out = run(dir.path(), &["audit", "--json"], &env).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let entries: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let me = chatvault::store::access_log::os_user();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[0]["who"], me);
    assert_eq!(entries[0]["via"], "cli");
    assert_eq!(entries[0]["action"], "export");
    assert_eq!(entries[0]["results"], 8);
    assert_eq!(
        entries[0]["filters"],
        json!({"format": "jsonl", "output": "all.jsonl"})
    );
    assert_eq!(entries[1]["results"], 1);
    assert_eq!(
        entries[1]["filters"],
        json!({"format": "jsonl", "conversation": "d1"})
    );
    assert_eq!(entries[0]["seq"], 1);
    assert_eq!(
        manifest["access_log_entry"],
        json!({"chain": "access-log", "seq": 1, "hash": entries[0]["hash"]})
    );
}

/// The test's importer: a JSONL export back into messages by (conversation, message id).
fn reimport(path: &Path) -> BTreeMap<(String, String), Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                (
                    v["conversation_id"].as_str().unwrap().to_string(),
                    v["message_id"].as_str().unwrap().to_string(),
                ),
                v,
            )
        })
        .collect()
}
