//! The S3 blob store against a real S3-compatible server: moto's (`moto_server`, from
//! `pip install 'moto[server]'`), started for each test on a free 127.0.0.1 port with
//! authentication on, so requests are signed and checked as S3 checks them: an IAM user with
//! an access key and a policy allowing `s3:*`, and a bucket, made before authentication is
//! switched on (`/moto-api/reset-auth`). Without `moto_server` these tests fail saying how to
//! install it (`.ci/run` does).
//!
//! The same contract as the directory store: put, contains, open; a second put of the same
//! blob keeps the object; a 64 MiB file goes up in 8 MiB parts and comes back as a stream;
//! a missing blob is `None`; wrong credentials and a missing bucket are clear errors that
//! never show a secret; `chatvault doctor` checks the bucket with one read-only request.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use chatvault::attachments::blob::{self, BlobStore, Sha256Hex};
use chatvault::config::{BlobStoreConfig, Secret};
use futures::StreamExt;
use object_store::ObjectStore;
use sha2::{Digest, Sha256};

use crate::common::{Moto, BUCKET};

const TIMEOUT: Duration = Duration::from_secs(60);

fn stage(store: &BlobStore, bytes: &[u8]) -> (PathBuf, Sha256Hex) {
    let path = store
        .staging_dir()
        .join(format!("dl-{}", hex::encode(&Sha256::digest(bytes)[..8])));
    std::fs::write(&path, bytes).unwrap();
    (path, Sha256Hex::of_digest(&Sha256::digest(bytes)))
}

async fn read_all(store: &BlobStore, sha: &Sha256Hex) -> Option<Vec<u8>> {
    let reader = store.open(sha).await.unwrap()?;
    let mut out = Vec::new();
    let mut bytes = reader.bytes;
    while let Some(chunk) = bytes.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(out.len() as u64, reader.size);
    Some(out)
}

fn sha_of(byte: u8) -> Sha256Hex {
    Sha256Hex::parse(&format!("{byte:02x}").repeat(32)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_keeps_each_blob_once_under_prefix_ab_sha256() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store =
        BlobStore::in_s3(&moto.config("chat"), &dir.path().join("staging"), TIMEOUT).unwrap();
    assert_eq!(store.describe(), format!("s3://{BUCKET}/chat"));

    let (staged, sha) = stage(&store, b"picture");
    assert!(!store.contains(&sha).await.unwrap());
    store.put(&staged, &sha).await.unwrap();
    assert!(store.contains(&sha).await.unwrap());
    assert!(!staged.exists(), "the staged file was left behind");
    assert_eq!(read_all(&store, &sha).await.unwrap(), b"picture");

    let raw = moto.raw();
    let key = object_store::path::Path::from(format!("chat/{}/{sha}", &sha.as_str()[..2]));
    let first = raw.head(&key).await.unwrap();
    assert_eq!(first.size, 7);

    // The same bytes again: the staged copy goes, the object is not written again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (again, sha2) = stage(&store, b"picture");
    assert_eq!(sha, sha2);
    store.put(&again, &sha2).await.unwrap();
    assert!(!again.exists());
    let second = raw.head(&key).await.unwrap();
    assert_eq!(
        second.last_modified, first.last_modified,
        "a blob already stored was uploaded again"
    );

    // Parts of it, as a browser seeking in a video asks.
    use chatvault::attachments::blob::ByteRange;
    for (range, want) in [
        (ByteRange::Bounded(1, 3), &b"ict"[..]),
        (ByteRange::From(4), b"ure"),
        (ByteRange::Suffix(2), b"re"),
    ] {
        let part = store
            .open_range(&sha, range)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(part.size, 7);
        let bytes: Vec<u8> = part.bytes.map(|b| b.unwrap().to_vec()).concat().await;
        assert_eq!(bytes, want, "{range:?}");
    }
    let outside = store.open_range(&sha, ByteRange::From(7)).await.unwrap();
    assert!(matches!(outside, Some(Err(7))));

    // A missing blob: not contained, and open gives None.
    let missing = sha_of(0);
    assert!(!store.contains(&missing).await.unwrap());
    assert!(store.open(&missing).await.unwrap().is_none());
    assert!(store
        .open_range(&missing, ByteRange::From(0))
        .await
        .unwrap()
        .is_none());

    // An empty prefix puts the blob directories at the top of the bucket.
    let top = BlobStore::in_s3(&moto.config(""), &dir.path().join("staging"), TIMEOUT).unwrap();
    assert_eq!(top.describe(), format!("s3://{BUCKET}"));
    let (staged, sha) = stage(&top, b"voice");
    top.put(&staged, &sha).await.unwrap();
    let key = object_store::path::Path::from(format!("{}/{sha}", &sha.as_str()[..2]));
    assert_eq!(raw.head(&key).await.unwrap().size, 5);
    assert_eq!(read_all(&top, &sha).await.unwrap(), b"voice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_file_goes_up_in_parts_and_comes_back_as_a_stream() {
    const SIZE: usize = 64 * 1024 * 1024;
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store =
        BlobStore::in_s3(&moto.config("big"), &dir.path().join("staging"), TIMEOUT).unwrap();

    // 64 MiB of pseudo-random bytes, written and hashed 1 MiB at a time
    let staged = store.staging_dir().join("dl-big");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&staged).unwrap());
    let mut hasher = Sha256::new();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut block = vec![0u8; 1024 * 1024];
    for _ in 0..SIZE / block.len() {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        hasher.update(&block);
        file.write_all(&block).unwrap();
    }
    file.into_inner().unwrap().sync_all().unwrap();
    let sha = Sha256Hex::of_digest(&hasher.finalize());

    store.put(&staged, &sha).await.unwrap();
    assert!(!staged.exists());

    // A multipart upload's ETag ends in its number of parts: 64 MiB in 8 MiB parts is 8,
    // so the file was never sent (nor held) whole.
    let key = object_store::path::Path::from(format!("big/{}/{sha}", &sha.as_str()[..2]));
    let meta = moto.raw().head(&key).await.unwrap();
    assert_eq!(meta.size, SIZE as u64);
    let etag = meta.e_tag.unwrap();
    let parts = SIZE / blob::S3_PART_BYTES;
    assert!(
        etag.trim_matches('"').ends_with(&format!("-{parts}")),
        "not uploaded in {parts} parts: ETag {etag}"
    );

    // Read back as a stream of chunks, none of them the whole file.
    let reader = store.open(&sha).await.unwrap().unwrap();
    assert_eq!(reader.size, SIZE as u64);
    let mut bytes = reader.bytes;
    let mut hasher = Sha256::new();
    let (mut total, mut chunks, mut largest) = (0usize, 0usize, 0usize);
    while let Some(chunk) = bytes.next().await {
        let chunk = chunk.unwrap();
        total += chunk.len();
        chunks += 1;
        largest = largest.max(chunk.len());
        hasher.update(&chunk);
    }
    assert_eq!(total, SIZE);
    assert!(
        chunks > 1 && largest <= 16 * 1024 * 1024,
        "{chunks} chunks, the largest {largest} bytes"
    );
    assert_eq!(Sha256Hex::of_digest(&hasher.finalize()), sha);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_clearly_and_never_show_the_secret() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("staging");

    let mut wrong_secret = moto.config("chat");
    let secret = "wrong-secret-4f1d9c2e7b";
    wrong_secret.secret_access_key = Some(Secret::new(secret));
    let mut unknown_key = moto.config("chat");
    let key_id = "AKIAUNKNOWNKEY4F1D9C2";
    unknown_key.access_key_id = Some(Secret::new(key_id));

    for (config, hidden) in [(wrong_secret, secret), (unknown_key, key_id)] {
        let store = BlobStore::in_s3(&config, &staging, TIMEOUT).unwrap();
        assert!(!format!("{store:?}").contains(hidden), "{store:?}");

        let (staged, sha) = stage(&store, b"document");
        let error = format!("{:#}", store.put(&staged, &sha).await.unwrap_err());
        assert!(
            error.contains(&format!("s3://{BUCKET}/chat/{}/{sha}", &sha.as_str()[..2])),
            "the error does not name the object: {error}"
        );
        assert!(
            error.contains("the server refused the credentials"),
            "the error does not say what to do: {error}"
        );
        assert!(!error.contains(hidden), "a credential was shown: {error}");
        assert!(!error.contains(&moto.secret_access_key), "{error}");
        assert!(staged.exists(), "a failed upload lost the staged file");

        let error = format!("{:#}", store.contains(&sha).await.unwrap_err());
        assert!(error.contains("refused the credentials"), "{error}");
        assert!(!error.contains(hidden), "{error}");
        let error = format!("{:#}", store.open(&sha).await.err().unwrap());
        assert!(error.contains("refused the credentials"), "{error}");
        assert!(!error.contains(hidden), "{error}");

        let (problem, fix) = blob::probe(&BlobStoreConfig::S3(config)).await.unwrap_err();
        assert!(problem.contains(&format!("s3://{BUCKET}")), "{problem}");
        assert!(fix.contains("access_key_id"), "{fix}");
        assert!(
            !problem.contains(hidden) && !fix.contains(hidden),
            "{problem}"
        );
        std::fs::remove_file(&staged).unwrap();
    }

    // the right credentials on a bucket that does not exist
    let mut absent = moto.config("");
    absent.bucket = "no-such-bucket".to_string();
    let store = BlobStore::in_s3(&absent, &staging, TIMEOUT).unwrap();
    let (staged, sha) = stage(&store, b"document");
    let error = format!("{:#}", store.put(&staged, &sha).await.unwrap_err());
    assert!(
        error.contains("check that bucket no-such-bucket exists"),
        "{error}"
    );
    assert!(staged.exists());

    let detail = blob::probe(&BlobStoreConfig::S3(moto.config("chat")))
        .await
        .unwrap();
    assert!(
        detail.contains(&format!("s3://{BUCKET}/chat answers")),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_the_bucket_with_one_read_only_request() {
    let moto = Moto::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[storage]\ndata_dir = \"data\"\n\
         [attachments]\nstore = \"s3://{BUCKET}/chat\"\n\
         [attachments.s3]\nendpoint = \"{}\"\nallow_http = true\n\
         access_key_id_env = \"S3_KEY\"\nsecret_access_key_env = \"S3_SECRET\"\n",
        moto.endpoint()
    );
    std::fs::write(dir.path().join("chatvault.toml"), config).unwrap();
    let doctor = |secret: &str| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatvault"));
        cmd.current_dir(dir.path())
            .args(["--config", "chatvault.toml", "doctor"])
            .env_remove("CHATVAULT_CONFIG")
            .env_remove("CHATVAULT_DATA_DIR")
            .env_remove("CHATVAULT_DATABASE_URL")
            .env("CHATVAULT_LOG", "error")
            .env("S3_KEY", &moto.access_key_id)
            .env("S3_SECRET", secret)
            .stdin(Stdio::null());
        cmd
    };
    let run = |mut cmd: Command| async move {
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };

    let text = run(doctor(&moto.secret_access_key)).await;
    let line = attachments_line(&text);
    assert!(line.starts_with("ok   attachments: "), "{text}");
    assert!(
        line.contains(&format!("s3://{BUCKET}/chat answers")),
        "{text}"
    );

    let wrong = "doctor-wrong-secret-77aa";
    let text = run(doctor(wrong)).await;
    let line = attachments_line(&text);
    assert!(line.starts_with("FAIL attachments: "), "{text}");
    assert!(
        line.contains("fix: the server refused the credentials"),
        "{text}"
    );
    assert!(!text.contains(wrong), "the secret was printed:\n{text}");

    // doctor only looked: nothing was written to the bucket
    let listed: Vec<_> = moto.raw().list(None).collect().await;
    assert!(listed.is_empty(), "{listed:?}");
    assert!(!Path::new(&dir.path().join("data/attachments")).exists());
}

fn attachments_line(text: &str) -> &str {
    text.lines()
        .find(|l| l.get(5..).is_some_and(|r| r.starts_with("attachments:")))
        .unwrap_or_else(|| panic!("no attachments line in:\n{text}"))
}
