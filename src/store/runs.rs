//! Sync runs (`archive.sync_runs`) and the per-source status report.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Result, Store};
use crate::model::SourceName;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Running,
    Ok,
    Failed,
    Interrupted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Ok => "ok",
            RunStatus::Failed => "failed",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

/// What started a run, as `archive.sync_runs.trigger` records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunTrigger {
    /// A scheduled or manual run over every conversation (`poll`).
    Poll,
    /// A targeted run answering a push: only the conversations it named (`push`).
    Push,
}

impl RunTrigger {
    pub fn as_str(self) -> &'static str {
        match self {
            RunTrigger::Poll => "poll",
            RunTrigger::Push => "push",
        }
    }
}

/// Counts a run accumulates.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunCounts {
    pub messages_new: u64,
    pub messages_changed: u64,
    pub requests: u64,
    pub retries: u64,
}

/// One source's state, as `chatvault status` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct SourceStatus {
    pub source: String,
    pub platform: String,
    pub conversations: i64,
    pub messages: i64,
    pub versions: i64,
    pub events: i64,
    pub reactions: i64,
    pub quarantine: i64,
    pub gaps: i64,
    /// `event_seq:hash` of the chain head; save it outside the database and pass it to
    /// `verify --head` later to prove nothing was rewritten since.
    pub chain_head: String,
    pub cursors: i64,
    pub last_run: Option<LastRun>,
    pub last_success_at: Option<DateTime<Utc>>,
    /// Seconds since the last successful run finished.
    pub lag_seconds: Option<i64>,
    /// The newest upstream send time archived.
    pub newest_message_at: Option<DateTime<Utc>>,
    /// Failed runs since the last successful one.
    pub failures_in_a_row: i64,
    /// When the schedule next fires (filled in by callers that know the configuration).
    pub next_run_at: Option<DateTime<Utc>>,
    /// The source's push channel (filled in by the daemon once it connected or received a
    /// push; absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push: Option<crate::push::PushStatus>,
}

#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct LastRun {
    pub run_id: i64,
    pub status: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub messages_new: i64,
    pub messages_changed: i64,
    pub requests: i64,
    pub retries: i64,
    pub error: Option<String>,
    /// How long the run took (so far, while it is running).
    pub duration_seconds: Option<f64>,
}

impl Store {
    /// Record the start of a run. Runs of this source left `running` by a process that is
    /// gone are marked `interrupted` first (the caller holds the source's lock).
    pub async fn start_run(&self, source: &SourceName) -> Result<i64> {
        self.start_run_with_trigger(source, RunTrigger::Poll).await
    }

    /// [`Store::start_run`], recording what started the run.
    pub async fn start_run_with_trigger(
        &self,
        source: &SourceName,
        trigger: RunTrigger,
    ) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE vault.sync_runs SET status = 'interrupted', finished_at = now(),
                    error = COALESCE(error, 'the process running it stopped before it finished')
             WHERE source = $1 AND status = 'running'",
        )
        .bind(source.as_str())
        .execute(&mut *tx)
        .await?;
        let run_id: i64 = sqlx::query_scalar(
            "INSERT INTO vault.sync_runs (source, started_at, status, trigger)
             VALUES ($1, now(), 'running', $2)
             RETURNING run_id",
        )
        .bind(source.as_str())
        .bind(trigger.as_str())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(run_id)
    }

    /// When the last run of `source` that `trigger` started began, if any ran.
    pub async fn last_run_started(
        &self,
        source: &SourceName,
        trigger: RunTrigger,
    ) -> Result<Option<DateTime<Utc>>> {
        Ok(sqlx::query_scalar(
            "SELECT max(started_at) FROM vault.sync_runs WHERE source = $1 AND trigger = $2",
        )
        .bind(source.as_str())
        .bind(trigger.as_str())
        .fetch_one(&self.pool)
        .await?)
    }

    /// Record the end of a run with its counts, error and the chain head it ended at.
    pub async fn finish_run(
        &self,
        source: &SourceName,
        run_id: i64,
        status: RunStatus,
        counts: &RunCounts,
        error: Option<&str>,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE vault.sync_runs r
             SET finished_at = now(), status = $3, messages_new = $4, messages_changed = $5,
                 requests = $6, retries = $7, error = $8,
                 chain_head_seq = h.event_seq, chain_head = h.hash
             FROM vault.chain_heads h
             WHERE r.source = $1 AND r.run_id = $2 AND h.source = r.source",
        )
        .bind(source.as_str())
        .bind(run_id)
        .bind(status.as_str())
        .bind(counts.messages_new as i64)
        .bind(counts.messages_changed as i64)
        .bind(counts.requests as i64)
        .bind(counts.retries as i64)
        // an error may quote upstream text, which may hold what PostgreSQL cannot store
        .bind(error.map(super::clean::text))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Status of every registered source, by name.
    pub async fn status(&self) -> Result<Vec<SourceStatus>> {
        #[derive(sqlx::FromRow)]
        struct Row {
            source: String,
            platform: String,
            conversations: i64,
            messages: i64,
            versions: i64,
            events: i64,
            reactions: i64,
            quarantine: i64,
            gaps: i64,
            cursors: i64,
            head_seq: i64,
            head_hash: Vec<u8>,
            last_success_at: Option<DateTime<Utc>>,
            newest_message_at: Option<DateTime<Utc>>,
            failures_in_a_row: i64,
        }
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT s.source, s.platform,
                (SELECT count(*) FROM vault.conversations c WHERE c.source = s.source) AS conversations,
                (SELECT count(*) FROM vault.messages m WHERE m.source = s.source) AS messages,
                (SELECT count(*) FROM vault.message_versions v WHERE v.source = s.source) AS versions,
                COALESCE(h.event_seq, 0) AS events,
                (SELECT count(*) FROM vault.reactions r WHERE r.source = s.source) AS reactions,
                (SELECT count(*) FROM vault.quarantine q WHERE q.source = s.source) AS quarantine,
                (SELECT count(*) FROM vault.seq_gaps g WHERE g.source = s.source) AS gaps,
                (SELECT count(*) FROM vault.cursors k WHERE k.source = s.source) AS cursors,
                COALESCE(h.event_seq, 0) AS head_seq,
                COALESCE(h.hash, '\\x'::bytea) AS head_hash,
                (SELECT max(finished_at) FROM vault.sync_runs r
                  WHERE r.source = s.source AND r.status = 'ok') AS last_success_at,
                (SELECT max(c.last_message_at) FROM vault.conversations c
                  WHERE c.source = s.source) AS newest_message_at,
                (SELECT count(*) FROM vault.sync_runs f
                  WHERE f.source = s.source AND f.status = 'failed'
                    AND f.run_id > COALESCE((SELECT max(o.run_id) FROM vault.sync_runs o
                                             WHERE o.source = s.source AND o.status = 'ok'), 0)
                ) AS failures_in_a_row
             FROM vault.sources s LEFT JOIN vault.chain_heads h ON h.source = s.source
             ORDER BY s.source",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let last_run: Option<LastRun> = sqlx::query_as(
                "SELECT run_id, status, started_at, finished_at, messages_new, messages_changed,
                        requests, retries, error,
                        (extract(epoch FROM COALESCE(finished_at, now()) - started_at))::float8
                          AS duration_seconds
                 FROM vault.sync_runs WHERE source = $1 ORDER BY run_id DESC LIMIT 1",
            )
            .bind(&r.source)
            .fetch_optional(&self.pool)
            .await?;
            out.push(SourceStatus {
                lag_seconds: r
                    .last_success_at
                    .map(|t| (Utc::now() - t).num_seconds().max(0)),
                source: r.source,
                platform: r.platform,
                conversations: r.conversations,
                messages: r.messages,
                versions: r.versions,
                events: r.events,
                reactions: r.reactions,
                quarantine: r.quarantine,
                gaps: r.gaps,
                chain_head: format!("{}:{}", r.head_seq, hex::encode(&r.head_hash)),
                cursors: r.cursors,
                last_run,
                last_success_at: r.last_success_at,
                newest_message_at: r.newest_message_at,
                failures_in_a_row: r.failures_in_a_row,
                next_run_at: None,
                push: None,
            });
        }
        Ok(out)
    }
}
