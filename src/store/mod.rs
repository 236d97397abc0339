//! The archive store: all SQL lives here.
//!
//! Base tables live in schema `vault`; the public views in schema `archive` (the SQL
//! contract, see `migrations/`). The store keeps these invariants:
//! - 1 (nothing lost or overwritten): versions and events are only ever inserted (and
//!   guarded by triggers); marks are set once; see [`diff`].
//! - 2 (data and cursor in one transaction): [`Store::apply_page`] writes a page's
//!   observations, events and cursor in one transaction, after checking that the stored
//!   cursor is the one the page started from.
//! - 5 (tamper evidence): every event is appended to its source's hash chain
//!   ([`canonical`]); [`Store::verify`] recomputes it.
//! - 6 (quarantine): records that cannot be applied are kept raw with the reason.

pub mod access_log;
mod apply;
pub mod attachments;
pub mod browse;
pub mod canonical;
mod chain;
pub mod charts;
mod clean;
pub mod coverage;
pub mod diff;
pub mod export;
pub mod heads;
pub mod index_feed;
mod lock;
pub mod push_state;
pub mod retention;
mod runs;
pub mod upstream;
mod verify;
mod verify_results;

use std::collections::BTreeMap;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

pub use access_log::{
    AccessEntry, AccessLogError, AccessRecord, AccessedId, Via, ACCESS_LOG_CHAIN,
};
pub use apply::PageOutcome;
pub use lock::SourceLock;
pub use runs::{RunCounts, RunStatus, RunTrigger, SourceStatus};
pub use verify::{ExpectedHead, VerifyFailure, VerifyReport};
pub use verify_results::VerifyResult;

use crate::model::{ConversationObservation, ConversationType, Cursor, Platform, SourceName};

/// Migrations embedded in the binary, applied at start and by `chatvault migrate`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The stored cursor is not the one the page started from: another writer moved it,
    /// or the page is stale. Nothing was written.
    #[error("source {source_name}: cursor {key} moved (expected {expected}, found {found}); the page was not applied")]
    CursorConflict {
        source_name: String,
        key: String,
        expected: String,
        found: String,
    },
    #[error("source {source_name} is archived as platform {archived}, but configured as {configured}; use a new source name")]
    PlatformMismatch {
        source_name: String,
        archived: String,
        configured: String,
    },
    #[error("source {0} is not registered in the archive")]
    UnknownSource(String),
    // Not `#[from]`/`#[source]`: the message already includes the cause, and a source
    // would make error chains print it twice.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(e)
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    pub async fn connect(options: PgConnectOptions, max_connections: u32) -> Result<Store> {
        // One direct connection first: a pool that cannot connect only reports a timeout,
        // this reports why (refused, unknown host, authentication failed, ...).
        let probe = <sqlx::PgConnection as sqlx::Connection>::connect_with(&options).await?;
        let _ = sqlx::Connection::close(probe).await;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(std::time::Duration::from_secs(30))
            .connect_with(options)
            .await?;
        Ok(Store { pool })
    }

    pub fn from_pool(pool: PgPool) -> Store {
        Store { pool }
    }

    /// The same database through a pool of its own, of at most `max_connections`, whose
    /// statements are cancelled after `statement_timeout`: for readers (the HTTP server)
    /// that must never hold up the syncs or wait on a slow query forever. Connects lazily.
    pub fn with_own_pool(
        &self,
        max_connections: u32,
        statement_timeout: std::time::Duration,
    ) -> Store {
        let options = (*self.pool.connect_options()).clone().options([(
            "statement_timeout",
            format!("{}", statement_timeout.as_millis()),
        )]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(statement_timeout)
            .connect_lazy_with(options);
        Store { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Apply the embedded migrations that are not applied yet.
    pub async fn migrate(&self) -> Result<()> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// Whether every embedded migration is applied (for `/readyz` and `status`).
    pub async fn migrations_current(&self) -> Result<bool> {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = 'public' AND tablename = '_sqlx_migrations')",
        )
        .fetch_one(&self.pool)
        .await?;
        if !exists {
            return Ok(false);
        }
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await?;
        Ok(MIGRATOR.iter().all(|m| applied.contains(&m.version)))
    }

    /// The embedded migrations not applied yet, oldest first, as `VERSION_description`.
    pub async fn pending_migrations(&self) -> Result<Vec<String>> {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = 'public' AND tablename = '_sqlx_migrations')",
        )
        .fetch_one(&self.pool)
        .await?;
        let applied: Vec<i64> = if exists {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await?
        } else {
            Vec::new()
        };
        Ok(MIGRATOR
            .iter()
            .filter(|m| !applied.contains(&m.version))
            .map(|m| format!("{}_{}", m.version, m.description.replace(' ', "_")))
            .collect())
    }

    /// Make sure `source` exists with its chain head. A source name keeps its platform
    /// forever: its archive and chain belong to that account.
    pub async fn register_source(&self, source: &SourceName, platform: Platform) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO vault.sources (source, platform) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(source.as_str())
        .bind(platform.key())
        .execute(&mut *tx)
        .await?;
        let archived: String =
            sqlx::query_scalar("SELECT platform FROM vault.sources WHERE source = $1")
                .bind(source.as_str())
                .fetch_one(&mut *tx)
                .await?;
        if archived != platform.key() {
            return Err(StoreError::PlatformMismatch {
                source_name: source.to_string(),
                archived,
                configured: platform.key().to_string(),
            });
        }
        sqlx::query(
            "INSERT INTO vault.chain_heads (source, event_seq, hash) VALUES ($1, 0, $2) ON CONFLICT DO NOTHING",
        )
        .bind(source.as_str())
        .bind(&canonical::GENESIS[..])
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Who and where the store is connected: `(user, database, socket directories, port)`,
    /// as the server says (for a `psql` line).
    pub async fn connection_facts(&self) -> Result<(String, String, String, String)> {
        Ok(sqlx::query_as(
            "SELECT current_user::text, current_database()::text,
                    current_setting('unix_socket_directories'), current_setting('port')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Whether the database answers a query.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The current names of conversations, by `(source, conversation_id)`; unknown ones
    /// are left out.
    pub async fn conversation_names(
        &self,
        keys: &[(String, String)],
    ) -> Result<std::collections::HashMap<(String, String), Option<String>>> {
        let (sources, conversations): (Vec<&str>, Vec<&str>) =
            keys.iter().map(|(s, c)| (s.as_str(), c.as_str())).unzip();
        let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT c.source, c.conversation_id, c.name
             FROM vault.conversations c
             JOIN unnest($1::text[], $2::text[]) AS k(source, conversation_id)
               ON k.source = c.source AND k.conversation_id = c.conversation_id",
        )
        .bind(&sources)
        .bind(&conversations)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(s, c, n)| ((s, c), n)).collect())
    }

    /// Every cursor of a source, by key.
    pub async fn cursors(&self, source: &SourceName) -> Result<BTreeMap<String, Cursor>> {
        let rows: Vec<(String, serde_json::Value)> =
            sqlx::query_as("SELECT key, value FROM vault.cursors WHERE source = $1")
                .bind(source.as_str())
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(k, v)| (k, Cursor(v))).collect())
    }

    /// Every conversation archived for a source, as last observed.
    pub async fn conversations(&self, source: &SourceName) -> Result<Vec<ConversationObservation>> {
        let rows: Vec<(String, String, Option<String>, serde_json::Value)> = sqlx::query_as(
            "SELECT conversation_id, conversation_type, name, metadata FROM vault.conversations
             WHERE source = $1 ORDER BY conversation_id",
        )
        .bind(source.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, ty, name, metadata)| ConversationObservation {
                conversation_id: id,
                conversation_type: ConversationType::parse(&ty),
                name,
                metadata,
            })
            .collect())
    }

    /// Which of `ids` are conversations archived for `source` (in `ids`' order).
    pub async fn known_conversations(
        &self,
        source: &SourceName,
        ids: &[String],
    ) -> Result<Vec<String>> {
        let found: Vec<String> = sqlx::query_scalar(
            "SELECT conversation_id FROM vault.conversations
             WHERE source = $1 AND conversation_id = ANY($2)",
        )
        .bind(source.as_str())
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids
            .iter()
            .filter(|id| found.contains(id))
            .cloned()
            .collect())
    }

    /// Which of `messages` (conversation id, message id) are archived for `source`.
    pub async fn held_messages(
        &self,
        source: &SourceName,
        messages: &[(String, String)],
    ) -> Result<Vec<(String, String)>> {
        let (conversations, ids): (Vec<String>, Vec<String>) = messages.iter().cloned().unzip();
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT m.conversation_id, m.message_id FROM vault.messages m
             JOIN unnest($2::text[], $3::text[]) AS w(conversation_id, message_id)
               ON m.conversation_id = w.conversation_id AND m.message_id = w.message_id
             WHERE m.source = $1",
        )
        .bind(source.as_str())
        .bind(&conversations)
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// The archived seqs of `message_ids` in one conversation (ids not archived, or without a
    /// seq, are left out).
    pub async fn message_seqs(
        &self,
        source: &SourceName,
        conversation_id: &str,
        message_ids: &[String],
    ) -> Result<Vec<(String, i64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT message_id, seq FROM vault.messages
             WHERE source = $1 AND conversation_id = $2 AND message_id = ANY($3)
               AND seq IS NOT NULL",
        )
        .bind(source.as_str())
        .bind(conversation_id)
        .bind(message_ids)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// The registered sources with their platforms.
    pub async fn sources(&self) -> Result<Vec<(SourceName, String)>> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT source, platform FROM vault.sources ORDER BY source")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(s, p)| (SourceName::new(s), p))
            .collect())
    }
}
