//! A tantivy directory whose files are private (mode 0600) from the moment they exist.
//!
//! tantivy's `MmapDirectory` creates segment and lock files with the process umask (0644 under
//! the usual 022); only its atomic writes (`meta.json`, `.managed.json`) go through a 0600
//! temporary file. [`PrivateDirectory`] wraps it and creates every other file itself with mode
//! 0600 (`O_EXCL`, `O_NOFOLLOW`), so the full text of the archive is never readable by another
//! user, whatever the umask. The generation directory is 0700 as well (see the parent module).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tantivy::directory::error::{DeleteError, LockError, OpenReadError, OpenWriteError};
use tantivy::directory::{
    AntiCallToken, Directory, DirectoryLock, FileHandle, Lock, MmapDirectory, TerminatingWrite,
    WatchCallback, WatchHandle, WritePtr,
};

use crate::files;

#[derive(Clone, Debug)]
pub struct PrivateDirectory {
    root: PathBuf,
    inner: MmapDirectory,
}

impl PrivateDirectory {
    pub fn open(root: &Path) -> tantivy::Result<PrivateDirectory> {
        Ok(PrivateDirectory {
            root: root.to_path_buf(),
            inner: MmapDirectory::open(root)?,
        })
    }
}

/// A segment file being written: flushed and synced when tantivy is done with it, like
/// `MmapDirectory`'s own writer.
struct PrivateFile(File);

impl Write for PrivateFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TerminatingWrite for PrivateFile {
    fn terminate_ref(&mut self, _: AntiCallToken) -> io::Result<()> {
        self.0.flush()?;
        self.0.sync_data()
    }
}

impl Directory for PrivateDirectory {
    fn get_file_handle(
        &self,
        path: &Path,
    ) -> Result<std::sync::Arc<dyn FileHandle>, OpenReadError> {
        self.inner.get_file_handle(path)
    }

    fn delete(&self, path: &Path) -> Result<(), DeleteError> {
        self.inner.delete(path)
    }

    fn exists(&self, path: &Path) -> Result<bool, OpenReadError> {
        self.inner.exists(path)
    }

    fn open_write(&self, path: &Path) -> Result<WritePtr, OpenWriteError> {
        let file = files::create_new_private(&self.root.join(path)).map_err(|err| {
            if err.kind() == io::ErrorKind::AlreadyExists {
                OpenWriteError::FileAlreadyExists(path.to_path_buf())
            } else {
                OpenWriteError::wrap_io_error(err, path.to_path_buf())
            }
        })?;
        Ok(io::BufWriter::new(Box::new(PrivateFile(file))))
    }

    fn atomic_read(&self, path: &Path) -> Result<Vec<u8>, OpenReadError> {
        self.inner.atomic_read(path)
    }

    /// tantivy writes through a 0600 temporary file renamed into place.
    fn atomic_write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.inner.atomic_write(path, data)
    }

    fn acquire_lock(&self, lock: &Lock) -> Result<DirectoryLock, LockError> {
        // The lock file exists (0600) before tantivy opens it, so it never creates one.
        files::open_private(&self.root.join(&lock.filepath)).map_err(LockError::wrap_io_error)?;
        self.inner.acquire_lock(lock)
    }

    fn watch(&self, watch_callback: WatchCallback) -> tantivy::Result<WatchHandle> {
        self.inner.watch(watch_callback)
    }

    fn sync_directory(&self) -> io::Result<()> {
        self.inner.sync_directory()
    }
}
