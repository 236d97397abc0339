//! Finding the PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`) on this machine.
//!
//! Search order: `CHATVAULT_PG_BINDIR` alone when set, else every directory of `PATH`, then
//! `pg_config --bindir`, then `/usr/lib/postgresql/<major>/bin`, newest major first. The first
//! directory that holds all three executables wins.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::PgError;

/// Environment variable naming the one directory to take the server binaries from.
pub const BINDIR_ENV: &str = "CHATVAULT_PG_BINDIR";

/// The executables a directory must hold to count as a PostgreSQL server installation.
const REQUIRED: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// Where the PostgreSQL server binaries live, and which major version they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    pub bindir: PathBuf,
    /// Major version reported by `postgres --version`, e.g. 15.
    pub version: u32,
}

impl PgBinaries {
    pub fn initdb(&self) -> PathBuf {
        self.bindir.join("initdb")
    }

    pub fn pg_ctl(&self) -> PathBuf {
        self.bindir.join("pg_ctl")
    }

    pub fn postgres(&self) -> PathBuf {
        self.bindir.join("postgres")
    }

    /// `psql` next to the server binaries (or next to where `postgres` links to) if installed
    /// there, else whatever `psql` is on PATH.
    pub fn psql(&self) -> PathBuf {
        let resolved = std::fs::canonicalize(self.postgres())
            .ok()
            .and_then(|postgres| postgres.parent().map(|dir| dir.join("psql")));
        [Some(self.bindir.join("psql")), resolved]
            .into_iter()
            .flatten()
            .find(|psql| is_executable(psql))
            .unwrap_or_else(|| PathBuf::from("psql"))
    }
}

/// Finds the server binaries in the standard places (see the module doc for the order).
pub fn find_binaries() -> Result<PgBinaries, PgError> {
    if let Some(dir) = std::env::var_os(BINDIR_ENV).filter(|dir| !dir.is_empty()) {
        return find_binaries_in(&[PathBuf::from(dir)]);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    if let Some(dir) = pg_config_bindir() {
        dirs.push(dir);
    }
    dirs.extend(debian_bindirs(Path::new("/usr/lib/postgresql")));
    find_binaries_in(&dirs)
}

/// Returns the first of `dirs` that holds `initdb`, `pg_ctl` and `postgres`.
pub fn find_binaries_in(dirs: &[PathBuf]) -> Result<PgBinaries, PgError> {
    for dir in dirs {
        if !REQUIRED.iter().all(|name| is_executable(&dir.join(name))) {
            continue;
        }
        if let Some(version) = server_version(&dir.join("postgres")) {
            return Ok(PgBinaries {
                bindir: dir.clone(),
                version,
            });
        }
    }
    Err(PgError::BinariesNotFound {
        searched: dirs.to_vec(),
    })
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn pg_config_bindir() -> Option<PathBuf> {
    let output = Command::new("pg_config").arg("--bindir").output().ok()?;
    if !output.status.success() {
        return None;
    }
    let dir = String::from_utf8(output.stdout).ok()?;
    let dir = dir.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// `<root>/<major>/bin` for every numeric `<major>` under `root`, newest first.
fn debian_bindirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut versions: Vec<(u32, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((major, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(major, _)| std::cmp::Reverse(*major));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

/// Major version from `postgres --version` (allowed as root: it exits before the root check).
fn server_version(postgres: &Path) -> Option<u32> {
    let output = Command::new(postgres).arg("--version").output().ok()?;
    parse_major_version(&String::from_utf8_lossy(&output.stdout))
}

/// `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)` -> 15; `... 17beta1` -> 17.
pub(crate) fn parse_major_version(version_line: &str) -> Option<u32> {
    let after = version_line
        .split_once(')')
        .map_or(version_line, |(_, rest)| rest);
    let word = after.split_whitespace().next()?;
    let digits: String = word.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_major_versions() {
        let debian = "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n";
        assert_eq!(parse_major_version(debian), Some(15));
        assert_eq!(parse_major_version("postgres (PostgreSQL) 9.6.24"), Some(9));
        assert_eq!(
            parse_major_version("postgres (PostgreSQL) 17beta1"),
            Some(17)
        );
        assert_eq!(parse_major_version("garbage"), None);
    }

    #[test]
    fn debian_bindirs_are_newest_first() {
        let root = tempfile::tempdir().unwrap();
        for name in ["9", "15", "13", "notaversion"] {
            std::fs::create_dir_all(root.path().join(name).join("bin")).unwrap();
        }
        let dirs = debian_bindirs(root.path());
        let majors: Vec<_> = dirs
            .iter()
            .map(|dir| dir.parent().unwrap().file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(majors, ["15", "13", "9"]);
    }

    #[test]
    fn a_directory_missing_pg_ctl_is_skipped() {
        let partial = tempfile::tempdir().unwrap();
        for name in ["initdb", "postgres"] {
            let path = partial.path().join(name);
            std::fs::write(&path, "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let err = find_binaries_in(&[partial.path().to_owned()]).unwrap_err();
        assert!(matches!(err, PgError::BinariesNotFound { .. }));
    }
}
