//! The per-source status (counts, chain heads, last runs) as the server serves it: a
//! snapshot refreshed in the background, so that `/metrics`, `/api/status` and the status
//! page cost no database work per request, however many arrive.
//!
//! The first request waits for the first snapshot; later ones get the snapshot at hand,
//! which a background task replaces every [`MIN_INTERVAL`], or every [`SLOWDOWN`] times
//! as long as the last refresh took when that is longer, so a large archive whose counts
//! take seconds is not counted continually. One refresh runs at a time. The last
//! `chatvault verify` of each source is read with the snapshot (for `/metrics`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Mutex};

use crate::store::{SourceStatus, Store, VerifyResult};

/// The shortest time between two refreshes.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);
/// A refresh waits at least this many times as long as the previous one took.
const SLOWDOWN: u32 = 20;

/// A status read, or why it failed (one line).
pub type Snapshot = Result<Arc<Vec<SourceStatus>>, String>;

#[derive(Clone)]
pub struct StatusCache {
    store: Store,
    /// The snapshot, when it was taken and how long taking it took. Locked only to read
    /// or replace it, never across a database call.
    current: Arc<std::sync::Mutex<Option<(Snapshot, Instant, Duration)>>>,
    /// The last verification of each source, as of the last refresh that could read it.
    verify: Arc<std::sync::Mutex<Arc<Vec<VerifyResult>>>>,
    /// Held while a refresh runs: one at a time.
    refreshing: Arc<Mutex<()>>,
}

impl StatusCache {
    pub fn new(store: Store) -> StatusCache {
        StatusCache {
            store,
            current: Arc::default(),
            verify: Arc::default(),
            refreshing: Arc::default(),
        }
    }

    fn current(&self) -> Option<(Snapshot, Instant, Duration)> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The snapshot at hand, or the first one, waited for.
    pub async fn get(&self) -> Snapshot {
        if let Some((snapshot, _, _)) = self.current() {
            return snapshot;
        }
        let _one_at_a_time = self.refreshing.lock().await;
        if let Some((snapshot, _, _)) = self.current() {
            return snapshot;
        }
        self.refresh().await
    }

    /// The last verification of each source (empty until a refresh could read them).
    pub fn verify_results(&self) -> Arc<Vec<VerifyResult>> {
        self.verify
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn refresh(&self) -> Snapshot {
        let started = Instant::now();
        let verify =
            tokio::time::timeout(super::DATABASE_TIMEOUT, self.store.last_verify_results()).await;
        if let Ok(Ok(results)) = verify {
            *self.verify.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(results);
        }
        let read = tokio::time::timeout(super::DATABASE_TIMEOUT * 6, self.store.status()).await;
        let snapshot = match read {
            Ok(Ok(status)) => Ok(Arc::new(status)),
            Ok(Err(e)) => Err(format!("cannot read the archive status: {e}")),
            Err(_) => Err("the database did not answer in time".to_string()),
        };
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((snapshot.clone(), started, started.elapsed()));
        snapshot
    }

    /// Keep the snapshot fresh until `shutdown`, so requests never wait for one.
    pub async fn refresh_forever(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let taken = self.current().map(|(_, at, took)| (at, took));
            if due(taken) {
                let _one_at_a_time = self.refreshing.lock().await;
                if let Err(reason) = self.refresh().await {
                    tracing::warn!(%reason, "status snapshot not refreshed");
                }
            }
            let wait = next_due(self.current().map(|(_, at, took)| (at, took)));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }
}

/// The wait between two refreshes after one that took `took`.
fn interval(took: Duration) -> Duration {
    MIN_INTERVAL.max(took.saturating_mul(SLOWDOWN))
}

fn due(taken: Option<(Instant, Duration)>) -> bool {
    taken.is_none_or(|(at, took)| at.elapsed() >= interval(took))
}

fn next_due(taken: Option<(Instant, Duration)>) -> Duration {
    taken.map_or(Duration::ZERO, |(at, took)| {
        interval(took).saturating_sub(at.elapsed())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_refreshes_are_made_less_often() {
        assert_eq!(interval(Duration::from_millis(10)), MIN_INTERVAL);
        assert_eq!(interval(Duration::from_secs(3)), Duration::from_secs(60));
        assert!(due(None));
        let now = Instant::now();
        assert!(!due(Some((now, Duration::from_millis(1)))));
        assert!(next_due(Some((now, Duration::from_secs(1)))) > Duration::from_secs(19));
    }
}
