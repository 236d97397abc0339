//! The outcome of each `chatvault verify` per source (`vault.verify_results`, public as
//! `archive.verify_results`): written by `verify`, read by the daemon for its metrics.
//! Rows are only ever inserted.

use chrono::{DateTime, Utc};

use super::{Result, Store, VerifyReport};

/// The last verification of one source.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct VerifyResult {
    pub source: String,
    pub checked_at: DateTime<Utc>,
    pub ok: bool,
    pub events: i64,
    pub failures: i64,
}

impl Store {
    /// Record what `report` found, one row per source it checked (a failure of a source it
    /// did not list, such as a saved head naming an unknown source, is not a row).
    pub async fn record_verify(&self, report: &VerifyReport) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for (source, events, _head) in &report.sources {
            let failures = report
                .failures
                .iter()
                .filter(|f| &f.source == source)
                .count() as i64;
            sqlx::query(
                "INSERT INTO vault.verify_results (source, ok, events, failures)
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(source)
            .bind(failures == 0)
            .bind(*events)
            .bind(failures)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The last verification of every source that was ever verified, by source.
    pub async fn last_verify_results(&self) -> Result<Vec<VerifyResult>> {
        Ok(sqlx::query_as(
            "SELECT DISTINCT ON (source) source, checked_at, ok, events, failures
             FROM vault.verify_results ORDER BY source, checked_at DESC",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
