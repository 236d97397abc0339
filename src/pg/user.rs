//! The operating-system user the server runs as, and the commands run as that user.
//!
//! PostgreSQL refuses to run as root, so root hands the server to an unprivileged user (see the
//! parent module doc for which); anyone else runs it as themselves.

use std::ffi::{CStr, CString};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::cluster::{io_error, Layout};
use super::PgError;

/// The operating-system user the server runs as.
#[derive(Debug, Clone)]
pub(crate) struct ClusterUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// True when we are root and switch to `uid`/`gid` for every server command.
    pub switch: bool,
}

impl ClusterUser {
    /// Ourselves unless we are root. As root: the owner of an existing cluster, else `postgres`,
    /// else `nobody`.
    pub fn choose(layout: &Layout) -> Result<Self, PgError> {
        // SAFETY: geteuid/getegid have no preconditions.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let existing_owner = std::fs::metadata(layout.cluster.join("PG_VERSION"))
            .ok()
            .map(|_| std::fs::metadata(&layout.cluster))
            .transpose()
            .map_err(io_error("inspect directory", &layout.cluster))?;
        if euid != 0 {
            if let Some(meta) = existing_owner.filter(|meta| meta.uid() != euid) {
                return Err(PgError::WrongOwner {
                    dir: layout.cluster.clone(),
                    owner: meta.uid(),
                    uid: euid,
                });
            }
            let name = user_by_uid(euid).map_or_else(|| format!("uid {euid}"), |(name, _)| name);
            return Ok(ClusterUser {
                name,
                uid: euid,
                gid: egid,
                switch: false,
            });
        }
        if let Some(meta) = existing_owner {
            if meta.uid() == 0 {
                return Err(PgError::WrongOwner {
                    dir: layout.cluster.clone(),
                    owner: 0,
                    uid: 0,
                });
            }
            let (name, gid) = user_by_uid(meta.uid())
                .unwrap_or_else(|| (format!("uid {}", meta.uid()), meta.gid()));
            return Ok(ClusterUser {
                name,
                uid: meta.uid(),
                gid,
                switch: true,
            });
        }
        for name in ["postgres", "nobody"] {
            if let Some((uid, gid)) = user_by_name(name) {
                return Ok(ClusterUser {
                    name: name.to_owned(),
                    uid,
                    gid,
                    switch: true,
                });
            }
        }
        Err(PgError::NoUnprivilegedUser)
    }

    /// Whether this user may pass through a directory with `meta`, judged by its mode bits and
    /// the user's primary group only (supplementary groups are dropped when we switch).
    pub fn may_traverse(&self, meta: &std::fs::Metadata) -> bool {
        let mode = meta.permissions().mode();
        let bit = if meta.uid() == self.uid {
            0o100
        } else if meta.gid() == self.gid {
            0o010
        } else {
            0o001
        };
        mode & bit != 0
    }

    /// A command with a clean environment, run as this user in `cwd`.
    pub fn command(&self, program: &Path, cwd: &Path) -> Command {
        let mut command = Command::new(program);
        command.env_clear().current_dir(cwd).stdin(Stdio::null());
        if let Some(path) = std::env::var_os("PATH") {
            command.env("PATH", path);
        }
        if self.switch {
            // When root switches uid, std also drops the supplementary groups (setgroups(0)).
            command.uid(self.uid).gid(self.gid);
        }
        command
    }
}

/// The name of the user running chatvault: the one `peer` authentication admits (see
/// `cluster::write_auth_files`).
pub(crate) fn current_user_name() -> Result<String, PgError> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    match user_by_uid(euid) {
        Some((name, _))
            if !name.is_empty()
                && name
                    .chars()
                    .all(|c| c != '"' && !c.is_control() && !c.is_whitespace()) =>
        {
            Ok(name)
        }
        _ => Err(PgError::NoUserName { uid: euid }),
    }
}

fn user_by_name(name: &str) -> Option<(u32, u32)> {
    let name = CString::new(name).ok()?;
    lookup_passwd(|pwd, buf, result| {
        // SAFETY: all pointers are valid for the call; buf's length is passed along.
        unsafe { libc::getpwnam_r(name.as_ptr(), pwd, buf.as_mut_ptr(), buf.len(), result) }
    })
    .map(|(_, uid, gid)| (uid, gid))
}

fn user_by_uid(uid: u32) -> Option<(String, u32)> {
    lookup_passwd(|pwd, buf, result| {
        // SAFETY: all pointers are valid for the call; buf's length is passed along.
        unsafe { libc::getpwuid_r(uid, pwd, buf.as_mut_ptr(), buf.len(), result) }
    })
    .map(|(name, _, gid)| (name, gid))
}

fn lookup_passwd<F>(lookup: F) -> Option<(String, u32, u32)>
where
    F: FnOnce(&mut libc::passwd, &mut [libc::c_char], &mut *mut libc::passwd) -> libc::c_int,
{
    // SAFETY: passwd is plain data; an all-zero value is a valid placeholder.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result = std::ptr::null_mut();
    if lookup(&mut pwd, &mut buf, &mut result) != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success pw_name points to a NUL-terminated string inside buf.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) }
        .to_string_lossy()
        .into_owned();
    Some((name, pwd.pw_uid, pwd.pw_gid))
}
