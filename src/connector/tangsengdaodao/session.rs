//! The TangSengDaoDao session token, kept across runs and processes.
//!
//! Every `POST /v1/user/login` makes the server post a "login info" text from `u_10000` to
//! the user's phone and write a login-log row (docs/upstreams/tangsengdaodao.md, "Login and
//! the session token").
//! So the token of a password login is kept in a file under the data directory and reused
//! until the server answers 401; only then does the connector log in again.
//!
//! The file is `<dir>/<source>.token`, created with mode 0600 in a directory created with
//! mode 0700, written to a temporary file first and renamed over the old one, so a reader
//! never sees half a token. It holds the token and the account's uid and name (for
//! `sender_name`), under a key derived from the base URL and the username: a token cached
//! for another server or account is never sent. The token never reaches the database, a
//! log line, an error text or `Debug` output.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Secret;

const FORMAT_VERSION: u32 = 1;

/// What a cached session holds.
#[derive(Clone)]
pub struct Session {
    pub token: Secret,
    /// The account's uid and display name, from the login answer (empty when unknown).
    pub uid: String,
    pub name: String,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("token", &self.token)
            .field("uid", &self.uid)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct Stored {
    v: u32,
    /// `sha256("chatvault-tsdd-session\0" base_url "\0" username)`, hex.
    key: String,
    token: String,
    #[serde(default)]
    uid: String,
    #[serde(default)]
    name: String,
}

/// Where one source's session is kept, and for which server and account.
#[derive(Clone)]
pub struct SessionFile {
    path: PathBuf,
    key: String,
}

impl fmt::Debug for SessionFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionFile")
            .field("path", &self.path)
            .finish()
    }
}

impl SessionFile {
    /// The session file of `source` in `dir`, for logins of `username` at `base_url`.
    pub fn new(dir: &Path, source: &str, base_url: &str, username: &str) -> SessionFile {
        let file: String = source
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let digest = Sha256::digest(format!(
            "chatvault-tsdd-session\0{}\0{username}",
            base_url.trim_end_matches('/')
        ));
        SessionFile {
            path: dir.join(format!("{file}.token")),
            key: hex::encode(digest),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cached session, if there is one for this server and account. A missing,
    /// unreadable or foreign file is no session (the connector then logs in).
    pub fn load(&self) -> Option<Session> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let stored: Stored = serde_json::from_str(&text).ok()?;
        if stored.v != FORMAT_VERSION || stored.key != self.key || stored.token.is_empty() {
            return None;
        }
        Some(Session {
            token: Secret::new(stored.token),
            uid: stored.uid,
            name: stored.name,
        })
    }

    /// Keep `session`, replacing any earlier one. Errors name the path, never the token.
    pub fn store(&self, session: &Session) -> std::io::Result<()> {
        let dir = self
            .path
            .parent()
            .ok_or_else(|| std::io::Error::other("the session file has no directory"))?;
        create_private_dir(dir)?;
        let stored = Stored {
            v: FORMAT_VERSION,
            key: self.key.clone(),
            token: session.token.expose().to_string(),
            uid: session.uid.clone(),
            name: session.name.clone(),
        };
        let text = serde_json::to_string(&stored).map_err(std::io::Error::other)?;
        let tmp = dir.join(format!(
            ".{}.{}-{:016x}.tmp",
            self.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id(),
            rand::random::<u64>()
        ));
        let written = (|| {
            let mut file = create_private_file(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Forget the cached session (the server refused its token).
    pub fn remove(&self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

/// A new file readable and writable by its owner only, from the moment it exists.
#[cfg(unix)]
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "chatvault-session-test-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn session(token: &str) -> Session {
        Session {
            token: Secret::new(token),
            uid: "u1".into(),
            name: "Ann".into(),
        }
    }

    #[test]
    fn a_session_round_trips_for_the_same_server_and_account_only() {
        let root = temp_dir();
        let dir = root.join("sessions");
        let file = SessionFile::new(&dir, "acme", "http://im.example/api/", "alice");
        assert!(file.load().is_none());
        file.store(&session("tok-1")).unwrap();
        let loaded = file.load().unwrap();
        assert_eq!(loaded.token.expose(), "tok-1");
        assert_eq!((loaded.uid.as_str(), loaded.name.as_str()), ("u1", "Ann"));
        // the same base URL without the trailing slash is the same server
        let same = SessionFile::new(&dir, "acme", "http://im.example/api", "alice");
        assert!(same.load().is_some());
        // another account or another server never gets this token
        assert!(
            SessionFile::new(&dir, "acme", "http://im.example/api/", "bob")
                .load()
                .is_none()
        );
        assert!(
            SessionFile::new(&dir, "acme", "http://other.example/", "alice")
                .load()
                .is_none()
        );

        file.store(&session("tok-2")).unwrap();
        assert_eq!(file.load().unwrap().token.expose(), "tok-2");
        file.remove().unwrap();
        assert!(file.load().is_none());
        file.remove().unwrap();
        // nothing but the session file was left behind
        file.store(&session("tok-3")).unwrap();
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["acme.token".to_string()]);
        let shown = format!("{:?} {:?}", file.load().unwrap(), file);
        assert!(!shown.contains("tok-3"), "{shown}");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn the_file_is_private_from_the_start() {
        use std::os::unix::fs::PermissionsExt;
        let root = temp_dir();
        let dir = root.join("a").join("sessions");
        let file = SessionFile::new(&dir, "acme", "http://im.example/", "alice");
        file.store(&session("tok")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(file.path()), 0o600);
        assert_eq!(mode(&dir), 0o700);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_garbled_file_is_no_session() {
        let root = temp_dir();
        let file = SessionFile::new(&root, "acme", "http://im.example/", "alice");
        std::fs::write(file.path(), "{not json").unwrap();
        assert!(file.load().is_none());
        std::fs::write(file.path(), r#"{"v":9,"key":"x","token":"t"}"#).unwrap();
        assert!(file.load().is_none());
        std::fs::remove_dir_all(root).unwrap();
    }
}
