//! The per-source lock: one writer per source across every process sharing the database.
//!
//! A PostgreSQL advisory lock keyed by the source's `lock_id` (a number of its own, unique
//! per source, in the high 32 bits the class [`LOCK_CLASS`]), held on a connection of its
//! own for the whole run: if the process dies the connection drops and another daemon can
//! take the source. The connection is checked every `check_every`; if it breaks, the lock
//! is gone and [`SourceLock::lost`] turns true, so the run stops before it writes again.

use std::time::Duration;

use sqlx::Connection;
use tokio::sync::{oneshot, watch};
use tracing::warn;

use super::{Result, Store, StoreError};
use crate::model::SourceName;

/// The class of source locks: the high 32 bits of their keys ("cv").
const LOCK_CLASS: i64 = 0x6376;
/// The class of the locks of sources' attachment downloads ("ca").
const ATTACHMENTS_LOCK_CLASS: i64 = 0x6361;

/// A held source lock (see the module doc).
pub struct SourceLock {
    release: oneshot::Sender<()>,
    lost: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Store {
    /// Take the lock of `source` if no one holds it: `Ok(None)` when someone does.
    pub async fn try_lock_source(
        &self,
        source: &SourceName,
        check_every: Duration,
    ) -> Result<Option<SourceLock>> {
        self.try_lock_class(LOCK_CLASS, source, check_every).await
    }

    /// Take the lock of `source`'s attachment downloads if no one holds it (`Ok(None)` when
    /// someone does): a lock of its own, so downloads never hold up the source's sync and
    /// never run twice at once for a source.
    pub async fn try_lock_attachments(
        &self,
        source: &SourceName,
        check_every: Duration,
    ) -> Result<Option<SourceLock>> {
        self.try_lock_class(ATTACHMENTS_LOCK_CLASS, source, check_every)
            .await
    }

    async fn try_lock_class(
        &self,
        class: i64,
        source: &SourceName,
        check_every: Duration,
    ) -> Result<Option<SourceLock>> {
        let id = self.lock_id(source).await?;
        let key = (class << 32) | i64::from(id as u32);
        let mut conn = self.pool.acquire().await?.detach();
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(key)
            .fetch_one(&mut conn)
            .await?;
        if !locked {
            let _ = conn.close().await;
            return Ok(None);
        }
        let (release, mut released) = oneshot::channel::<()>();
        let (lost_tx, lost) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut checks = tokio::time::interval(check_every);
            checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            checks.tick().await;
            loop {
                tokio::select! {
                    _ = checks.tick() => {
                        let alive = tokio::time::timeout(
                            check_every.max(Duration::from_secs(5)),
                            sqlx::query("SELECT 1").execute(&mut conn),
                        )
                        .await;
                        if !matches!(alive, Ok(Ok(_))) {
                            warn!("the connection holding the source lock broke; the lock is gone");
                            let _ = lost_tx.send(true);
                            return;
                        }
                    }
                    _ = &mut released => break,
                }
            }
            // Unlock explicitly: closing the connection alone releases the lock only once
            // the server has noticed, which a run started right after could race.
            if let Err(e) = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(key)
                .execute(&mut conn)
                .await
            {
                warn!(error = %e, "could not release the source lock; it goes with the connection");
            }
            let _ = conn.close().await;
        });
        Ok(Some(SourceLock {
            release,
            lost,
            task,
        }))
    }

    /// The number that keys the source's lock (unique per source, for good).
    pub async fn lock_id(&self, source: &SourceName) -> Result<i32> {
        sqlx::query_scalar("SELECT lock_id FROM vault.sources WHERE source = $1")
            .bind(source.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::UnknownSource(source.to_string()))
    }
}

impl SourceLock {
    /// Turns true once the lock is gone.
    pub fn lost(&self) -> watch::Receiver<bool> {
        self.lost.clone()
    }

    /// Release the lock and close its connection.
    pub async fn release(self) {
        let _ = self.release.send(());
        let _ = self.task.await;
    }
}
