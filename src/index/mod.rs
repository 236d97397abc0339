//! The full-text index: a tantivy index in `data_dir/index`, derived from PostgreSQL and
//! rebuildable from it at any time (ARCHITECTURE.md, invariant 4).
//!
//! - [`tokenizer`]: the CJK n-gram analyser (decides matches) and the jieba word analyser
//!   (English stemming, whole-word ranking).
//! - [`query`]: the query language (words, `"phrases"`, `-exclude`, `OR`) and its errors.
//! - [`indexer`]: follows each source's event log and keeps the index current; its
//!   watermark (per source, the last `event_seq` applied) is the payload of the tantivy
//!   commit that applied it, so documents and watermark can never disagree. Rebuild, verify.
//! - [`search`]: [`SearchRequest`] → [`SearchPage`]: filters, sort, cursor, highlights;
//!   shared by the CLI, the HTTP API and the web page.
//!
//! Layout: `index/CURRENT` names the generation directory in use (`index/<generation>/`).
//! A rebuild fills a new generation and then replaces `CURRENT` by rename, so readers keep
//! the old one until the swap. The schema carries [`SCHEMA_VERSION`]: an index of another
//! version is not read, and the indexer rebuilds it.
//!
//! Rebuilds are serialised by an exclusive `flock` on `index/REBUILD` held from the new
//! generation's creation to its swap: a second `reindex` waits for the first (and then builds
//! its own), and no process removes a generation while a rebuild holds that lock, so two
//! rebuilds never delete each other's work.
//!
//! Files: the index directory and every generation directory are created mode 0700, `CURRENT`
//! and the lock files 0600, and tantivy's own files 0600 through [`directory::PrivateDirectory`]
//! (the index holds the full text of every message).

mod directory;
pub mod indexer;
pub mod query;
pub mod search;
pub mod tokenizer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{bail, Context as _};
use directory::PrivateDirectory;
use serde::{Deserialize, Serialize};
use tantivy::schema::{
    Field, IndexRecordOption, NumericOptions, Schema, TextFieldIndexing, TextOptions, FAST,
    INDEXED, STORED, STRING,
};
use tantivy::{Index, IndexReader, ReloadPolicy};

use crate::files;

pub use indexer::{IndexReport, Indexer};
pub use query::QueryError;
pub use search::{SearchError, SearchHit, SearchPage, SearchRequest, Sort};

/// Version of the schema and of the analysers. Bump it whenever either changes: an index
/// of another version is rebuilt rather than read.
pub const SCHEMA_VERSION: u32 = 1;

/// The memory budget of the index writer (tantivy's heap; the indexer's peak RSS is
/// about this plus the batch being indexed).
pub const WRITER_HEAP_BYTES: usize = 32 * 1024 * 1024;

/// The index directory inside a data directory.
pub fn index_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("index")
}

/// The schema's fields.
#[derive(Clone, Copy, Debug)]
pub struct Fields {
    /// `source \x1f conversation_id \x1f message_id`: the identity, for deletes.
    pub key: Field,
    /// A 64-bit hash of the key: the tie-breaker that makes "newest first" a total order.
    pub key_hash: Field,
    pub source: Field,
    pub conversation_id: Field,
    pub message_id: Field,
    /// Sender id and sender name, lowercased, both searchable by `--sender`.
    pub sender: Field,
    pub sender_id: Field,
    pub sender_name: Field,
    pub conversation_type: Field,
    pub kind: Field,
    /// Microseconds since the Unix epoch (UTC).
    pub sent_at: Field,
    pub edited: Field,
    pub recalled: Field,
    pub deleted: Field,
    /// 1 when recalled or deleted.
    pub recalled_or_deleted: Field,
    /// The current text as stored (for display and highlighting).
    pub text: Field,
    pub text_grams: Field,
    pub text_words: Field,
    /// Earlier versions' text, indexed only (searched with `history`).
    pub history_grams: Field,
    pub history_words: Field,
}

impl Fields {
    pub fn current(&self) -> query::TextFields {
        query::TextFields {
            grams: self.text_grams,
            words: self.text_words,
        }
    }
    pub fn history(&self) -> query::TextFields {
        query::TextFields {
            grams: self.history_grams,
            words: self.history_words,
        }
    }
}

pub fn schema() -> (Schema, Fields) {
    let mut b = Schema::builder();
    let grams = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(tokenizer::GRAMS)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let words = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(tokenizer::WORDS)
            .set_index_option(IndexRecordOption::WithFreqs),
    );
    let flag = NumericOptions::default().set_indexed().set_stored();
    let fields = Fields {
        key: b.add_text_field("key", STRING),
        key_hash: b.add_u64_field("key_hash", FAST),
        source: b.add_text_field("source", STRING | STORED),
        conversation_id: b.add_text_field("conversation_id", STRING | STORED),
        message_id: b.add_text_field("message_id", STORED),
        sender: b.add_text_field("sender", STRING),
        sender_id: b.add_text_field("sender_id", STORED),
        sender_name: b.add_text_field("sender_name", STORED),
        conversation_type: b.add_text_field("conversation_type", STRING | STORED),
        kind: b.add_text_field("kind", STRING | STORED),
        sent_at: b.add_i64_field("sent_at", INDEXED | FAST | STORED),
        edited: b.add_u64_field("edited", flag.clone()),
        recalled: b.add_u64_field("recalled", flag.clone()),
        deleted: b.add_u64_field("deleted", flag.clone()),
        // the index field keeps its name: renaming it would change the schema
        recalled_or_deleted: b.add_u64_field("withdrawn", flag),
        text: b.add_text_field("text", STORED),
        text_grams: b.add_text_field("text_grams", grams.clone()),
        text_words: b.add_text_field("text_words", words.clone()),
        history_grams: b.add_text_field("history_grams", grams),
        history_words: b.add_text_field("history_words", words),
    };
    (b.build(), fields)
}

/// The message key as indexed.
pub fn doc_key(source: &str, conversation_id: &str, message_id: &str) -> String {
    format!("{source}\u{1f}{conversation_id}\u{1f}{message_id}")
}

/// FNV-1a of the key: stable across builds and platforms.
pub fn key_hash(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What a tantivy commit carries: the schema version and, per source, the last event
/// applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    pub schema: u32,
    pub watermarks: std::collections::BTreeMap<String, i64>,
}

/// One generation of the index, opened.
pub struct Generation {
    pub name: String,
    pub path: PathBuf,
    pub index: Index,
    pub reader: IndexReader,
    pub fields: Fields,
}

impl Generation {
    fn open(root: &Path, name: &str) -> anyhow::Result<Generation> {
        let path = root.join(name);
        let index = PrivateDirectory::open(&path)
            .and_then(Index::open)
            .with_context(|| {
                format!(
                    "cannot open the search index in {} (`chatvault reindex` rebuilds it)",
                    path.display()
                )
            })?;
        Self::wrap(index, name, path)
    }

    fn create(root: &Path, name: &str) -> anyhow::Result<Generation> {
        let path = root.join(name);
        if !files::create_private_dir(&path)
            .with_context(|| format!("cannot create {}", path.display()))?
        {
            bail!("cannot create {}: it exists already", path.display());
        }
        let (schema, _) = schema();
        let index = PrivateDirectory::open(&path)
            .and_then(|dir| Index::create(dir, schema, tantivy::IndexSettings::default()))
            .with_context(|| format!("cannot create the search index in {}", path.display()))?;
        Self::wrap(index, name, path)
    }

    fn wrap(index: Index, name: &str, path: PathBuf) -> anyhow::Result<Generation> {
        index
            .tokenizers()
            .register(tokenizer::GRAMS, tokenizer::grams_analyzer());
        index
            .tokenizers()
            .register(tokenizer::WORDS, tokenizer::words_analyzer());
        let (_, fields) = schema();
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::OnCommitWithDelay)
            .try_into()
            .context("cannot open a reader on the search index")?;
        Ok(Generation {
            name: name.to_string(),
            path,
            index,
            reader,
            fields,
        })
    }

    /// The payload of the last commit (an empty index has default watermarks).
    pub fn payload(&self) -> anyhow::Result<Payload> {
        let metas = self
            .index
            .load_metas()
            .context("cannot read the index metadata")?;
        match metas.payload {
            None => Ok(Payload {
                schema: SCHEMA_VERSION,
                watermarks: Default::default(),
            }),
            Some(p) => serde_json::from_str(&p).context("the index commit payload is not valid"),
        }
    }
}

/// The index as the process shares it: the generation `CURRENT` names, reopened when a
/// rebuild swaps in another. Cheap to clone.
#[derive(Clone)]
pub struct SearchIndex {
    root: PathBuf,
    current: Arc<RwLock<Arc<Generation>>>,
    /// The key search cursors are signed with, read (or made) on first use.
    cursor_key: Arc<std::sync::OnceLock<[u8; 32]>>,
}

/// Read a 32-byte key from `path`, or make one there (created with mode 0600, never
/// replacing a key another process made first).
fn load_or_create_key(path: &Path) -> anyhow::Result<[u8; 32]> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let read = |path: &Path| -> anyhow::Result<[u8; 32]> {
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        bytes.try_into().map_err(|_| {
            anyhow::anyhow!(
                "{} is not a 32-byte key; remove it and a new one is made (search cursors given before stop working)",
                path.display()
            )
        })
    };
    if path.exists() {
        return read(path);
    }
    let key: [u8; 32] = rand::random();
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    file.write_all(&key)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    // a hard link fails if another process made the key first: then theirs is the key
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(path),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

fn read_current(root: &Path) -> anyhow::Result<Option<String>> {
    match std::fs::read_to_string(root.join("CURRENT")) {
        Ok(s) => Ok(Some(s.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}/CURRENT", root.display())),
    }
}

/// Replaces `CURRENT` atomically (a fresh 0600 file renamed over it).
fn write_current(root: &Path, name: &str) -> anyhow::Result<()> {
    files::write_private(&root.join("CURRENT"), format!("{name}\n").as_bytes())
        .with_context(|| format!("cannot replace {}/CURRENT", root.display()))
}

fn new_generation_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("v{SCHEMA_VERSION}-{nanos}")
}

impl SearchIndex {
    /// Open the index in `root`, or `None` when there is none yet (or only one of another
    /// schema version, which the indexer rebuilds).
    pub fn open(root: &Path) -> anyhow::Result<Option<SearchIndex>> {
        let Some(name) = read_current(root)? else {
            return Ok(None);
        };
        let generation = Generation::open(root, &name)?;
        if generation.payload()?.schema != SCHEMA_VERSION {
            return Ok(None);
        }
        Ok(Some(SearchIndex {
            root: root.to_path_buf(),
            current: Arc::new(RwLock::new(Arc::new(generation))),
            cursor_key: Arc::default(),
        }))
    }

    /// Open the index in `root`, creating an empty one when there is none of this schema
    /// version.
    pub fn open_or_create(root: &Path) -> anyhow::Result<SearchIndex> {
        files::create_private_dir_all(root)
            .with_context(|| format!("cannot create the index directory {}", root.display()))?;
        // Several processes may share a data directory: one creates, the others open.
        let _lock = DirLock::acquire(root, "LOCK")?;
        if let Some(index) = Self::open(root)? {
            return Ok(index);
        }
        let name = new_generation_name();
        let generation = Generation::create(root, &name)?;
        write_current(root, &name)?;
        // A rebuild in progress elsewhere owns the generation it is filling.
        if let Some(_rebuild) = DirLock::try_acquire(root, REBUILD_LOCK)? {
            remove_other_generations(root, &name);
        }
        Ok(SearchIndex {
            root: root.to_path_buf(),
            current: Arc::new(RwLock::new(Arc::new(generation))),
            cursor_key: Arc::default(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The key that signs search cursors: 32 random bytes in `cursor.key` beside the
    /// generations (mode 0600, made by the first process that needs it), so that every
    /// process sharing the data directory accepts the cursors the others gave.
    pub fn cursor_key(&self) -> anyhow::Result<[u8; 32]> {
        if let Some(key) = self.cursor_key.get() {
            return Ok(*key);
        }
        let key = load_or_create_key(&self.root.join("cursor.key"))?;
        Ok(*self.cursor_key.get_or_init(|| key))
    }

    /// The generation in use, switching to another one if a rebuild swapped it in.
    pub fn generation(&self) -> anyhow::Result<Arc<Generation>> {
        let held = self.current.read().expect("index lock poisoned").clone();
        let named = read_current(&self.root)?;
        match named {
            Some(name) if name != held.name => {
                let generation = Arc::new(Generation::open(&self.root, &name)?);
                *self.current.write().expect("index lock poisoned") = generation.clone();
                Ok(generation)
            }
            _ => Ok(held),
        }
    }

    /// Wait until no other rebuild runs on this index, and keep it so until the returned lock
    /// is dropped (after [`Self::swap_in`]). Blocking: call it on a blocking thread.
    pub fn lock_for_rebuild(&self) -> anyhow::Result<RebuildLock> {
        if let Some(lock) = DirLock::try_acquire(&self.root, REBUILD_LOCK)? {
            return Ok(RebuildLock { _held: lock });
        }
        tracing::warn!(
            index = %self.root.display(),
            "another reindex is running on this index; waiting for it to finish"
        );
        DirLock::acquire(&self.root, REBUILD_LOCK).map(|lock| RebuildLock { _held: lock })
    }

    /// Create an empty generation beside the current one (for a rebuild, under
    /// [`Self::lock_for_rebuild`]).
    pub fn create_generation(&self, _rebuild: &RebuildLock) -> anyhow::Result<Generation> {
        Generation::create(&self.root, &new_generation_name())
    }

    /// Make `generation` the current one (atomically, by renaming `CURRENT`), and remove
    /// the others.
    pub fn swap_in(&self, generation: Generation, _rebuild: &RebuildLock) -> anyhow::Result<()> {
        let _lock = DirLock::acquire(&self.root, "LOCK")?;
        write_current(&self.root, &generation.name)?;
        let name = generation.name.clone();
        *self.current.write().expect("index lock poisoned") = Arc::new(generation);
        remove_other_generations(&self.root, &name);
        Ok(())
    }
}

/// The lock file a rebuild holds from creating its generation until it swapped it in.
const REBUILD_LOCK: &str = "REBUILD";

/// Held by a rebuild (see [`SearchIndex::lock_for_rebuild`]); released when dropped.
pub struct RebuildLock {
    _held: DirLock,
}

/// An exclusive `flock` on a lock file in the index directory: `index/LOCK` is held while
/// `CURRENT` is created or replaced and old generations are removed; `index/REBUILD` by a
/// rebuild.
struct DirLock(std::fs::File);

impl DirLock {
    fn open(root: &Path, name: &str) -> anyhow::Result<(std::fs::File, PathBuf)> {
        let path = root.join(name);
        let file = files::open_private(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok((file, path))
    }

    /// Blocks until the lock is granted.
    fn acquire(root: &Path, name: &str) -> anyhow::Result<DirLock> {
        use std::os::fd::AsRawFd;
        let (file, path) = Self::open(root, name)?;
        loop {
            // SAFETY: flock on a file descriptor this struct owns; no memory is involved.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(DirLock(file));
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err).with_context(|| format!("cannot lock {}", path.display()));
            }
        }
    }

    /// `None` when someone else holds the lock.
    fn try_acquire(root: &Path, name: &str) -> anyhow::Result<Option<DirLock>> {
        use std::os::fd::AsRawFd;
        let (file, path) = Self::open(root, name)?;
        // SAFETY: as above.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(DirLock(file)));
        }
        let err = std::io::Error::last_os_error();
        if err.kind() == std::io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        Err(err).with_context(|| format!("cannot lock {}", path.display()))
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as above; closing the file would release the lock too.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

/// Best effort: a generation another process still has open stays readable until it
/// closes it (its files are unlinked, not truncated).
fn remove_other_generations(root: &Path, keep: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('v') && name != keep && entry.path().is_dir() {
            if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                tracing::warn!(generation = %name, error = %e, "cannot remove an old index generation");
            }
        }
    }
}
