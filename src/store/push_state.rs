//! The push channels' state as the daemon reports it (`vault.push_state`), so that
//! `chatvault status`, which runs in a process of its own, can show it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Result, Store};
use crate::push::PushStatus;

/// A report older than this means no daemon is reporting: its figures are stale.
pub const PUSH_REPORT_FRESH_FOR: chrono::Duration = chrono::Duration::seconds(60);

/// One source's push channel as last reported.
#[derive(Clone, Debug, PartialEq, Serialize, sqlx::FromRow)]
pub struct ReportedPush {
    pub connected: bool,
    pub healthy: bool,
    pub since: Option<DateTime<Utc>>,
    pub reconnects: i64,
    pub pushes: i64,
    pub last_push_at: Option<DateTime<Utc>>,
    pub lag_seconds: Option<f64>,
    pub last_error: Option<String>,
    pub reported_at: DateTime<Utc>,
}

impl ReportedPush {
    /// Whether the report is too old to say anything about now.
    pub fn stale(&self, now: DateTime<Utc>) -> bool {
        now - self.reported_at > PUSH_REPORT_FRESH_FOR
    }
}

impl Store {
    /// Record the push channels' state as of `at` (one row per source, replaced).
    pub async fn report_push_states(
        &self,
        states: &[(String, PushStatus)],
        at: DateTime<Utc>,
    ) -> Result<()> {
        if states.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (source, s) in states {
            sqlx::query(
                "INSERT INTO vault.push_state (source, connected, healthy, since, reconnects,
                        pushes, last_push_at, lag_seconds, last_error, reported_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (source) DO UPDATE SET connected = EXCLUDED.connected,
                        healthy = EXCLUDED.healthy, since = EXCLUDED.since,
                        reconnects = EXCLUDED.reconnects, pushes = EXCLUDED.pushes,
                        last_push_at = EXCLUDED.last_push_at,
                        lag_seconds = EXCLUDED.lag_seconds, last_error = EXCLUDED.last_error,
                        reported_at = EXCLUDED.reported_at",
            )
            .bind(source)
            .bind(s.state.connected)
            .bind(s.healthy)
            .bind(s.state.since)
            .bind(i64::try_from(s.state.reconnects).unwrap_or(i64::MAX))
            .bind(i64::try_from(s.state.pushes).unwrap_or(i64::MAX))
            .bind(s.state.last_push_at)
            .bind(s.lag_seconds)
            .bind(
                s.state
                    .last_error
                    .as_deref()
                    .map(|e| super::canonical::strip_nul(e).into_owned()),
            )
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The last report of every source's push channel, by source.
    pub async fn reported_push_states(&self) -> Result<HashMap<String, ReportedPush>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            source: String,
            #[sqlx(flatten)]
            push: ReportedPush,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT source, connected, healthy, since, reconnects, pushes, last_push_at,
                    lag_seconds, last_error, reported_at
             FROM vault.push_state",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| (r.source, r.push)).collect())
    }
}
