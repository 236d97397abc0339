//! Private files: what chatvault writes is readable by the user running it, and nobody else.
//!
//! The archive (the search index holds the full text of every message, exports hold whole
//! conversations) is as sensitive as data gets, so nothing here trusts the umask:
//!
//! - directories are created mode 0700 and files mode 0600, with that mode from the first
//!   moment ([`create_private_dir_all`], [`create_new_private`], [`write_private`]), never
//!   created open and restricted afterwards;
//! - a file is replaced by writing a fresh temporary file beside it and renaming it over the
//!   old one, so a symlink planted at its path is replaced, never followed;
//! - ownership and mode changes go through a descriptor opened with `O_NOFOLLOW`
//!   ([`chown_dir_nofollow`], [`chmod_dir_nofollow`]), so a symlink is refused, not followed;
//! - the data directory is checked at start ([`prepare_data_dir`]): created 0700 when missing;
//!   one of ours that others may read or write is tightened to 0700 (with a warning in the
//!   log); one of another user's that others may read or write is refused.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Mode of every directory chatvault creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file chatvault creates.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and any missing parents, each mode 0700. An existing directory is left as it
/// is.
pub fn create_private_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Creates `dir` mode 0700; `Ok(false)` when something already exists there.
pub fn create_private_dir(dir: &Path) -> io::Result<bool> {
    match DirBuilder::new().mode(DIR_MODE).create(dir) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(err),
    }
}

/// Opens a new file for writing with `mode`, failing if anything (a symlink included) exists
/// at `path`.
pub fn create_new_with_mode(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Opens a new file for writing, mode 0600, failing if anything exists at `path`.
pub fn create_new_private(path: &Path) -> io::Result<File> {
    create_new_with_mode(path, FILE_MODE)
}

/// Opens (creating it 0600 if missing) a file that is never replaced, such as a lock file,
/// refusing a symlink at `path`.
pub fn open_private(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Replaces `path` with `contents`, mode 0600: see [`write_replacing`].
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    write_replacing(path, contents, FILE_MODE, None)
}

/// Replaces `path` with `contents`: a new temporary file beside it, created with `mode` (and,
/// given `gid`, handed to that group through its descriptor), written, synced and renamed over
/// `path`. Whatever was at `path` (a symlink included) is replaced, never written through.
pub fn write_replacing(
    path: &Path,
    contents: &[u8],
    mode: u32,
    gid: Option<u32>,
) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = dir.unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other(format!("{} names no file", path.display())))?;
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let mut temp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)?;
    if let Some(gid) = gid {
        fchown(temp.as_file(), None, Some(gid))?;
    }
    temp.write_all(contents)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|err| err.error)?;
    Ok(())
}

/// A new temporary file in `dir` (mode 0600, a random name starting with `prefix`), removed
/// when dropped unless persisted: for output that appears under its name only when complete.
pub fn private_temp_file_in(dir: &Path, prefix: &str) -> io::Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(prefix)
        .suffix(".partial")
        .permissions(std::fs::Permissions::from_mode(FILE_MODE))
        .tempfile_in(dir)
}

/// Opens a directory for `fchown`/`fchmod`, refusing a symlink at `dir`.
fn open_dir_nofollow(dir: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|err| {
            if err.raw_os_error() == Some(libc::ELOOP) || err.raw_os_error() == Some(libc::ENOTDIR)
            {
                io::Error::other(format!(
                    "{} is a symlink or not a directory; refusing to follow it",
                    dir.display()
                ))
            } else {
                err
            }
        })
}

fn fchown(file: &File, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let uid = uid.unwrap_or(u32::MAX);
    let gid = gid.unwrap_or(u32::MAX);
    // SAFETY: the descriptor is open for the duration of the call; -1 (u32::MAX) keeps an id.
    if unsafe { libc::fchown(file.as_raw_fd(), uid, gid) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn fchmod(file: &File, mode: u32) -> io::Result<()> {
    // SAFETY: the descriptor is open for the duration of the call.
    if unsafe { libc::fchmod(file.as_raw_fd(), mode as libc::mode_t) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Gives the directory `dir` to `uid`/`gid` without following a symlink at `dir`.
pub fn chown_dir_nofollow(dir: &Path, uid: u32, gid: u32) -> io::Result<()> {
    fchown(&open_dir_nofollow(dir)?, Some(uid), Some(gid))
}

/// Sets the mode of the directory `dir` without following a symlink at `dir`.
pub fn chmod_dir_nofollow(dir: &Path, mode: u32) -> io::Result<()> {
    fchmod(&open_dir_nofollow(dir)?, mode)
}

/// Read and write bits for group and others: what a private directory must not have. (Search
/// bits alone expose no names; the embedded cluster's user needs them on the data directory
/// when chatvault runs as root.)
const OPEN_BITS: u32 = 0o066;

/// What [`prepare_data_dir`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataDir {
    Created,
    Private,
    /// It was open to others (the old mode) and is 0700 now.
    Tightened {
        was: u32,
    },
}

/// Makes `dir` a private data directory: created 0700 (parents too) when missing; an existing
/// one owned by the effective user that group or others may read or write becomes 0700, and
/// that is logged; an existing one owned by someone else that group or others may read or
/// write is refused, as is anything that is not a directory.
pub fn prepare_data_dir(dir: &Path) -> io::Result<DataDir> {
    if !dir.exists() {
        create_private_dir_all(dir)?;
        return Ok(DataDir::Created);
    }
    let resolved = dir.canonicalize()?;
    let meta = std::fs::metadata(&resolved)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & OPEN_BITS == 0 {
        return Ok(DataDir::Private);
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(io::Error::other(format!(
            "{} is open to other users (mode {mode:04o}) and belongs to uid {}, so chatvault \
             will not tighten it; make it private (chmod 700) or choose another data_dir",
            dir.display(),
            meta.uid()
        )));
    }
    chmod_dir_nofollow(&resolved, DIR_MODE)?;
    tracing::warn!(
        data_dir = %dir.display(),
        was = %format!("{mode:04o}"),
        now = %format!("{DIR_MODE:04o}"),
        "the data directory was open to other users; made it private"
    );
    Ok(DataDir::Tightened { was: mode })
}

/// What `chatvault doctor` finds of the data directory, changing nothing: a line saying it is
/// fine, or the problem and its fix. Checked: it is a directory, belongs to the user running
/// chatvault (or that user is root), and neither it nor `sessions/` (with its token files)
/// nor `index/` may be read or written by others.
pub fn inspect_data_dir(dir: &Path) -> Result<String, (String, String)> {
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(format!(
                "{} does not exist yet; it is created (mode 0700) at the first start",
                dir.display()
            ))
        }
        Err(e) => return Err((
            format!("cannot read {}: {e}", dir.display()),
            "make it readable by the user running chatvault, or choose another storage.data_dir"
                .to_string(),
        )),
    };
    if !meta.is_dir() {
        return Err((
            format!("{} is not a directory", dir.display()),
            "set storage.data_dir to a directory".to_string(),
        ));
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid && euid != 0 {
        return Err((
            format!(
                "{} belongs to uid {}, but chatvault runs as uid {euid}",
                dir.display(),
                meta.uid()
            ),
            format!(
                "chown -R {euid} {} (or run chatvault as its owner)",
                dir.display()
            ),
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & OPEN_BITS != 0 {
        return Err((
            format!(
                "{} is open to other users (mode {mode:04o}): they can read the archive",
                dir.display()
            ),
            format!("chmod 700 {}", dir.display()),
        ));
    }
    let private = |path: &Path, want: u32| -> Result<(), (String, String)> {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return Ok(());
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err((
                format!(
                    "{} is open to other users (mode {mode:04o})",
                    path.display()
                ),
                format!("chmod {want:o} {}", path.display()),
            ));
        }
        Ok(())
    };
    let sessions = dir.join("sessions");
    private(&sessions, 0o700)?;
    if let Ok(entries) = std::fs::read_dir(&sessions) {
        for entry in entries.flatten().take(10_000) {
            private(&entry.path(), 0o600)?;
        }
    }
    private(&dir.join("index"), 0o700)?;
    Ok(format!(
        "{}: mode {mode:04o}, owned by uid {}",
        dir.display(),
        meta.uid()
    ))
}

/// The directory a file path lives in (`.` for a bare name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn directories_and_files_are_private_from_the_start() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a/b/c");
        create_private_dir_all(&deep).unwrap();
        for dir in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&root.path().join(dir)), 0o700, "{dir}");
        }
        let file = deep.join("f");
        create_new_private(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        assert!(
            create_new_private(&file).is_err(),
            "never opens an existing file"
        );
        write_private(&deep.join("g"), b"x").unwrap();
        assert_eq!(mode(&deep.join("g")), 0o600);
    }

    #[test]
    fn replacing_a_symlink_never_writes_through_it() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("target");
        std::fs::write(&target, "untouched").unwrap();
        let link = root.path().join("CURRENT");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_private(&link, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        assert_eq!(std::fs::read_to_string(&link).unwrap(), "new");
        assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
        let link2 = root.path().join("lock");
        std::os::unix::fs::symlink(&target, &link2).unwrap();
        assert!(open_private(&link2).is_err());
        assert!(create_new_private(&link2).is_err());
    }

    #[test]
    fn chmod_and_chown_refuse_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let real = root.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = root.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = chmod_dir_nofollow(&link, 0o700).unwrap_err();
        assert!(err.to_string().contains("symlink"), "{err}");
        // SAFETY: getuid/getgid have no preconditions.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        assert!(chown_dir_nofollow(&link, uid, gid).is_err());
        assert_eq!(mode(&real), 0o755, "the target is untouched");
        chmod_dir_nofollow(&real, 0o700).unwrap();
        assert_eq!(mode(&real), 0o700);
    }

    #[test]
    fn an_open_data_dir_of_ours_is_tightened_and_a_private_one_left_alone() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        assert_eq!(prepare_data_dir(&dir).unwrap(), DataDir::Created);
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            prepare_data_dir(&dir).unwrap(),
            DataDir::Tightened { was: 0o755 }
        );
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
        assert_eq!(prepare_data_dir(&dir).unwrap(), DataDir::Private);
        assert_eq!(mode(&dir), 0o711, "search bits alone are kept");
        let file = root.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(prepare_data_dir(&file).is_err());
    }
}
