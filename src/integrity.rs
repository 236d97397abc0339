//! Chain heads kept outside the database (`[integrity]`): after each sync run, one line with
//! the time and every source's head is appended to `heads_file` and/or given on stdin to
//! `heads_command`. A head saved where the database's administrators cannot write is what
//! makes a consistent rewrite of a chain detectable (`verify --head`, ARCHITECTURE.md,
//! invariant 5).
//!
//! Publishing never fails a sync: a failure is logged (without the command's output, which
//! is the operator's business) and counted (`chatvault_heads_publish_failures_total`).
//! The command runs without a shell, from its argv, and is killed at its timeout.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use tokio::io::AsyncWriteExt as _;
use tracing::{info, warn};

use crate::config::IntegrityConfig;
use crate::store::heads::ChainHead;
use crate::store::Store;

/// One line: `TIME SOURCE=SEQ:HASH SOURCE=SEQ:HASH ...` and a newline, the time RFC 3339 UTC.
/// Each head after the time is an argument `verify --head` takes as it is.
pub fn heads_line(at: DateTime<Utc>, heads: &[ChainHead]) -> String {
    let mut line = at.to_rfc3339_opts(SecondsFormat::Secs, true);
    for head in heads {
        line.push(' ');
        line.push_str(&head.to_string());
    }
    line.push('\n');
    line
}

/// Read the heads and hand them to every configured target. `true` when every target took
/// them; a failure is logged here.
pub async fn publish_heads(store: &Store, config: &IntegrityConfig) -> bool {
    let heads = match store.stored_heads().await {
        Ok(heads) => heads,
        Err(e) => {
            warn!(error = %e, "could not read the chain heads to keep them elsewhere");
            return false;
        }
    };
    let line = heads_line(Utc::now(), &heads);
    let mut ok = true;
    if let Some(path) = &config.heads_file {
        let path = path.clone();
        let text = line.clone();
        let written = tokio::task::spawn_blocking(move || append_line(&path, &text))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        if let Err(e) = written {
            let file = config.heads_file.as_deref().unwrap_or(Path::new(""));
            warn!(file = %file.display(), error = %e, "could not append the chain heads to integrity.heads_file");
            ok = false;
        }
    }
    if let Some(argv) = &config.heads_command {
        match run_command(argv, line.as_bytes(), config.heads_command_timeout).await {
            Ok(()) => info!(program = %argv[0], "chain heads handed to integrity.heads_command"),
            Err(why) => {
                warn!(program = %argv[0], problem = %why, "integrity.heads_command failed; the heads of this run are not kept by it");
                ok = false;
            }
        }
    }
    ok
}

/// Append `line` to `path`, creating it 0600 (a symlink is refused), and flush it to disk.
fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    file.write_all(line.as_bytes())?;
    file.sync_data()
}

/// Run `argv` without a shell, `input` on its stdin, its output discarded; killed when it
/// takes longer than `timeout`. The error says what went wrong in one line.
async fn run_command(argv: &[String], input: &[u8], timeout: Duration) -> Result<(), String> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| "no program configured".to_string())?;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {program:?}: {e}"))?;
    let mut stdin = child.stdin.take();
    let run = async {
        if let Some(stdin) = stdin.as_mut() {
            // A command that does not read its input is its own business: a closed pipe is
            // not an error, its exit status says how it went.
            match stdin.write_all(input).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                Err(e) => return Err(format!("cannot write to its stdin: {e}")),
            }
        }
        drop(stdin.take());
        child
            .wait()
            .await
            .map_err(|e| format!("cannot wait for it: {e}"))
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(format!("it exited with {status}")),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            Err(format!(
                "it did not finish within {} s (integrity.heads_command_timeout) and was killed",
                timeout.as_secs()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(source: &str, seq: i64) -> ChainHead {
        ChainHead {
            source: source.into(),
            event_seq: seq,
            hash: format!("{seq:064x}"),
        }
    }

    #[test]
    fn a_line_is_the_time_then_each_head_as_verify_reads_it() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let line = heads_line(at, &[head("a", 3), head("b-2", 10)]);
        assert_eq!(
            line,
            format!("2027-01-15T08:00:00Z a=3:{:064x} b-2=10:{:064x}\n", 3, 10)
        );
        for arg in line.split_whitespace().skip(1) {
            crate::store::ExpectedHead::parse(arg).unwrap();
        }
    }

    #[tokio::test]
    async fn a_command_gets_the_line_and_a_slow_or_failing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("got");
        let sh = |script: String| vec!["sh".to_string(), "-c".to_string(), script];
        run_command(
            &sh(format!("cat > '{}'", out.display())),
            b"x=1:ab\n",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "x=1:ab\n");
        let failed = run_command(&sh("exit 3".into()), b"", Duration::from_secs(10)).await;
        assert!(failed.unwrap_err().contains("exit"));
        let started = std::time::Instant::now();
        let slow = run_command(&sh("sleep 30".into()), b"", Duration::from_secs(1)).await;
        assert!(slow.unwrap_err().contains("killed"));
        assert!(started.elapsed() < Duration::from_secs(10));
        let missing = run_command(
            &["/nonexistent/heads-keeper".to_string()],
            b"",
            Duration::from_secs(1),
        )
        .await;
        assert!(missing.unwrap_err().contains("cannot start"));
    }
}
