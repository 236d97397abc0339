//! What the archive holds of each conversation and what it knows it lacks (`chatvault
//! coverage`, the /coverage page): the `archive.coverage` and `archive.coverage_gaps` views,
//! and the record of when a conversation was last read to its end.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Result, Store};
use crate::model::SourceName;

/// One conversation's row of `archive.coverage`.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct ConversationCoverage {
    pub source: String,
    pub platform: String,
    pub conversation_id: String,
    pub conversation_type: String,
    pub name: Option<String>,
    pub message_count: i64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    pub first_message_at: Option<DateTime<Utc>>,
    pub last_message_at: Option<DateTime<Utc>>,
    pub gaps: i64,
    pub missing_seqs: i64,
    pub read_complete_at: Option<DateTime<Utc>>,
    pub source_last_ok_run_at: Option<DateTime<Utc>>,
}

/// One row of `archive.coverage_gaps`.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct GapView {
    pub source: String,
    pub conversation_id: String,
    pub from_seq: i64,
    pub to_seq: i64,
    pub kind: String,
    pub reason: String,
    pub observed_at: DateTime<Utc>,
    pub archived_since: i64,
}

/// A source's records that could not be archived: how many and the newest.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct QuarantineCount {
    pub source: String,
    pub records: i64,
    pub newest: Option<DateTime<Utc>>,
}

impl Store {
    /// Note that a run read every feed of a conversation to its end.
    pub async fn record_complete_read(
        &self,
        source: &SourceName,
        conversation_id: &str,
        run_id: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO vault.conversation_reads (source, conversation_id, read_complete_at, run_id)
             VALUES ($1, $2, now(), $3)
             ON CONFLICT (source, conversation_id)
             DO UPDATE SET read_complete_at = EXCLUDED.read_complete_at, run_id = EXCLUDED.run_id",
        )
        .bind(source.as_str())
        .bind(conversation_id)
        .bind(run_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `archive.coverage`, of one source or all, by source and conversation.
    pub async fn coverage(&self, source: Option<&str>) -> Result<Vec<ConversationCoverage>> {
        Ok(sqlx::query_as(
            "SELECT source, platform, conversation_id, conversation_type, name,
                    message_count::bigint AS message_count, first_seq, last_seq,
                    first_message_at, last_message_at, gaps::bigint AS gaps,
                    missing_seqs::bigint AS missing_seqs, read_complete_at, source_last_ok_run_at
             FROM archive.coverage
             WHERE ($1::text IS NULL OR source = $1)
             ORDER BY source, conversation_id",
        )
        .bind(source)
        .fetch_all(&self.pool)
        .await?)
    }

    /// `archive.coverage_gaps`, of one source or all, by source, conversation and seq.
    pub async fn coverage_gaps(&self, source: Option<&str>) -> Result<Vec<GapView>> {
        Ok(sqlx::query_as(
            "SELECT source, conversation_id, from_seq, to_seq, kind, reason, observed_at,
                    archived_since::bigint AS archived_since
             FROM archive.coverage_gaps
             WHERE ($1::text IS NULL OR source = $1)
             ORDER BY source, conversation_id, from_seq, to_seq",
        )
        .bind(source)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Per source with any, the records kept in quarantine (they name no conversation).
    pub async fn quarantine_counts(&self, source: Option<&str>) -> Result<Vec<QuarantineCount>> {
        Ok(sqlx::query_as(
            "SELECT source, count(*)::bigint AS records, max(observed_at) AS newest
             FROM vault.quarantine
             WHERE ($1::text IS NULL OR source = $1)
             GROUP BY source ORDER BY source",
        )
        .bind(source)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// The coverage of one source: its conversations with their gaps, its quarantine, and what
/// its platform and configuration let the archive know (filled in by
/// [`crate::connector::limits::describe`]).
#[derive(Clone, Debug, Serialize)]
pub struct SourceCoverage {
    pub source: String,
    pub platform: String,
    /// When the last run that ended ok finished.
    pub last_ok_run_at: Option<DateTime<Utc>>,
    /// Records kept in quarantine (they could not be archived; they name no conversation).
    pub quarantined: i64,
    /// The rescan window in force (`None`: the source is not in this configuration).
    pub rescan_window: Option<String>,
    /// What the archive cannot know on this platform.
    pub cannot_know: Vec<String>,
    pub conversations: Vec<ConversationReport>,
}

/// The conversations a coverage report shows: what its access-log entry counts.
pub fn coverage_rows(report: &[SourceCoverage]) -> i64 {
    report.iter().map(|s| s.conversations.len() as i64).sum()
}

/// One conversation of a coverage report.
#[derive(Clone, Debug, Serialize)]
pub struct ConversationReport {
    #[serde(flatten)]
    pub coverage: ConversationCoverage,
    pub gap_list: Vec<GapView>,
}

impl Store {
    /// Per source (one, or all), its conversations with every known gap, and its
    /// quarantine; the platform facts are left empty.
    pub async fn coverage_report(&self, source: Option<&str>) -> Result<Vec<SourceCoverage>> {
        let conversations = self.coverage(source).await?;
        let gaps = self.coverage_gaps(source).await?;
        let quarantine = self.quarantine_counts(source).await?;
        let sources: Vec<(String, String, Option<DateTime<Utc>>)> = sqlx::query_as(
            "SELECT s.source, s.platform,
                    (SELECT max(r.finished_at) FROM vault.sync_runs r
                      WHERE r.source = s.source AND r.status = 'ok')
             FROM vault.sources s WHERE ($1::text IS NULL OR s.source = $1) ORDER BY s.source",
        )
        .bind(source)
        .fetch_all(&self.pool)
        .await?;
        // (PostgreSQL's collation need not order text as Rust does: match by key.)
        let mut by_conversation: std::collections::HashMap<(String, String), Vec<GapView>> =
            std::collections::HashMap::new();
        for g in gaps {
            by_conversation
                .entry((g.source.clone(), g.conversation_id.clone()))
                .or_default()
                .push(g);
        }
        let mut out = Vec::with_capacity(sources.len());
        for (name, platform, last_ok_run_at) in sources {
            let mut list = Vec::new();
            for c in conversations.iter().filter(|c| c.source == name) {
                let gap_list = by_conversation
                    .remove(&(name.clone(), c.conversation_id.clone()))
                    .unwrap_or_default();
                list.push(ConversationReport {
                    coverage: c.clone(),
                    gap_list,
                });
            }
            out.push(SourceCoverage {
                quarantined: quarantine
                    .iter()
                    .find(|q| q.source == name)
                    .map_or(0, |q| q.records),
                source: name,
                platform,
                last_ok_run_at,
                rescan_window: None,
                cannot_know: Vec::new(),
                conversations: list,
            });
        }
        Ok(out)
    }
}
