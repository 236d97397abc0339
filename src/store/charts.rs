//! The series behind the web pages' charts: messages per day of a source or a conversation
//! (by upstream send time, UTC days, days without messages included as zero) and the
//! durations of a source's last runs. Read-only.

use chrono::{DateTime, NaiveDate, Utc};

use super::{Result, Store};

/// Messages sent on one UTC day.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct DayCount {
    pub day: NaiveDate,
    pub messages: i64,
}

/// One finished run: when it started, how it ended and how long it took.
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct RunDuration {
    pub run_id: i64,
    pub started_at: DateTime<Utc>,
    pub status: String,
    pub seconds: f64,
}

/// Days per series, bounded so that a request cannot ask for an unbounded series.
pub const MAX_DAYS: i64 = 366;

impl Store {
    /// Messages per day of `source` for the `days` UTC days ending with `last_day`, oldest
    /// first, one entry per day (zero where nothing was sent).
    pub async fn messages_per_day(
        &self,
        source: &str,
        last_day: NaiveDate,
        days: i64,
    ) -> Result<Vec<DayCount>> {
        self.day_counts(source, None, last_day, days).await
    }

    /// Messages per day of one conversation, as [`Store::messages_per_day`].
    pub async fn conversation_messages_per_day(
        &self,
        source: &str,
        conversation_id: &str,
        last_day: NaiveDate,
        days: i64,
    ) -> Result<Vec<DayCount>> {
        self.day_counts(source, Some(conversation_id), last_day, days)
            .await
    }

    async fn day_counts(
        &self,
        source: &str,
        conversation_id: Option<&str>,
        last_day: NaiveDate,
        days: i64,
    ) -> Result<Vec<DayCount>> {
        let days = days.clamp(1, MAX_DAYS);
        Ok(sqlx::query_as(
            "WITH span AS (
                 SELECT ($2::date - ($3::int - 1)) AS first_day, $2::date AS last_day
             ),
             counts AS (
                 SELECT (m.sent_at AT TIME ZONE 'UTC')::date AS day, count(*) AS messages
                 FROM vault.messages m, span
                 WHERE m.source = $1
                   AND ($4::text IS NULL OR m.conversation_id = $4)
                   AND m.sent_at >= (span.first_day::timestamp AT TIME ZONE 'UTC')
                   AND m.sent_at < ((span.last_day + 1)::timestamp AT TIME ZONE 'UTC')
                 GROUP BY 1
             )
             SELECT d.day::date AS day, COALESCE(c.messages, 0) AS messages
             FROM span,
                  generate_series(span.first_day, span.last_day, interval '1 day') AS d(day)
             LEFT JOIN counts c ON c.day = d.day::date
             ORDER BY d.day",
        )
        .bind(source)
        .bind(last_day)
        .bind(days as i32)
        .bind(conversation_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The last `limit` finished runs of `source`, oldest first.
    pub async fn run_durations(&self, source: &str, limit: i64) -> Result<Vec<RunDuration>> {
        Ok(sqlx::query_as(
            "SELECT run_id, started_at, status, seconds FROM (
                 SELECT run_id, started_at, status,
                        (extract(epoch FROM finished_at - started_at))::float8 AS seconds
                 FROM vault.sync_runs
                 WHERE source = $1 AND finished_at IS NOT NULL
                 ORDER BY run_id DESC LIMIT $2
             ) last ORDER BY run_id",
        )
        .bind(source)
        .bind(limit.clamp(0, 10_000))
        .fetch_all(&self.pool)
        .await?)
    }
}
