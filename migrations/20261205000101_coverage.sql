-- What the archive holds of each conversation and what it knows it lacks (`chatvault
-- coverage`, the /coverage page).

-- What kind of gap a row is: `not_returned` (upstream did not return these seqs: cleared
-- history, device filters, deleted for this account), `unreadable` (upstream fails on them,
-- e.g. a server error on one record), `before_history` (before the oldest message the
-- account can see, e.g. before it joined), `not_member` (a group the account has left).
-- Rows written before this column existed have none; archive.coverage_gaps derives it from
-- their reason.
ALTER TABLE vault.seq_gaps ADD COLUMN kind text;

-- When each conversation's feeds were last all read to their end in one run.
CREATE TABLE vault.conversation_reads (
    source            text NOT NULL,
    conversation_id   text NOT NULL,
    read_complete_at  timestamptz NOT NULL,
    run_id            bigint NOT NULL,
    PRIMARY KEY (source, conversation_id)
);

CREATE VIEW archive.coverage_gaps AS
SELECT g.source, g.conversation_id, g.from_seq, g.to_seq,
       COALESCE(g.kind, CASE
           WHEN g.reason LIKE 'upstream cannot serve%' THEN 'unreadable'
           WHEN g.reason LIKE 'before the oldest message%' THEN 'before_history'
           WHEN g.reason LIKE '%not a current member%' THEN 'not_member'
           ELSE 'not_returned' END) AS kind,
       g.reason, g.observed_at,
       (SELECT count(*) FROM vault.messages m
         WHERE m.source = g.source AND m.conversation_id = g.conversation_id
           AND m.seq BETWEEN g.from_seq AND g.to_seq) AS archived_since
FROM vault.seq_gaps g;

COMMENT ON VIEW archive.coverage_gaps IS 'Every known gap in a conversation''s sequence numbers, with its reason.';
COMMENT ON COLUMN archive.coverage_gaps.source IS 'configured source name';
COMMENT ON COLUMN archive.coverage_gaps.conversation_id IS 'the conversation';
COMMENT ON COLUMN archive.coverage_gaps.from_seq IS 'first missing seq (inclusive)';
COMMENT ON COLUMN archive.coverage_gaps.to_seq IS 'last missing seq (inclusive)';
COMMENT ON COLUMN archive.coverage_gaps.kind IS 'not_returned, unreadable, before_history or not_member';
COMMENT ON COLUMN archive.coverage_gaps.reason IS 'why the seqs are missing, as recorded when found';
COMMENT ON COLUMN archive.coverage_gaps.observed_at IS 'when the gap was found';
COMMENT ON COLUMN archive.coverage_gaps.archived_since IS 'messages of that range archived later (e.g. by sync --full once upstream could serve them)';

CREATE VIEW archive.coverage AS
SELECT c.source, s.platform, c.conversation_id, c.conversation_type, c.name,
       c.message_count, m.first_seq, m.last_seq, c.first_message_at, c.last_message_at,
       COALESCE(g.gaps, 0) AS gaps, COALESCE(g.missing_seqs, 0) AS missing_seqs,
       r.read_complete_at,
       (SELECT max(sr.finished_at) FROM vault.sync_runs sr
         WHERE sr.source = c.source AND sr.status = 'ok') AS source_last_ok_run_at
FROM vault.conversations c
JOIN vault.sources s ON s.source = c.source
LEFT JOIN LATERAL (
    SELECT min(vm.seq) AS first_seq, max(vm.seq) AS last_seq
    FROM vault.messages vm
    WHERE vm.source = c.source AND vm.conversation_id = c.conversation_id
) m ON true
LEFT JOIN LATERAL (
    SELECT count(*) AS gaps, sum(vg.to_seq - vg.from_seq + 1) AS missing_seqs
    FROM vault.seq_gaps vg
    WHERE vg.source = c.source AND vg.conversation_id = c.conversation_id
) g ON true
LEFT JOIN vault.conversation_reads r
  ON r.source = c.source AND r.conversation_id = c.conversation_id;

COMMENT ON VIEW archive.coverage IS 'Per conversation: what is archived, how many known gaps, when its history was last read completely.';
COMMENT ON COLUMN archive.coverage.source IS 'configured source name';
COMMENT ON COLUMN archive.coverage.platform IS 'tangsengdaodao, yunxin or yunhu';
COMMENT ON COLUMN archive.coverage.conversation_id IS 'the conversation';
COMMENT ON COLUMN archive.coverage.conversation_type IS 'direct, group, bot or other';
COMMENT ON COLUMN archive.coverage.name IS 'display name as last seen upstream';
COMMENT ON COLUMN archive.coverage.message_count IS 'messages archived';
COMMENT ON COLUMN archive.coverage.first_seq IS 'lowest archived seq; null where the platform has none';
COMMENT ON COLUMN archive.coverage.last_seq IS 'highest archived seq; null where the platform has none';
COMMENT ON COLUMN archive.coverage.first_message_at IS 'sent_at of the oldest archived message';
COMMENT ON COLUMN archive.coverage.last_message_at IS 'sent_at of the newest archived message';
COMMENT ON COLUMN archive.coverage.gaps IS 'known gaps (rows of archive.coverage_gaps)';
COMMENT ON COLUMN archive.coverage.missing_seqs IS 'seqs in those gaps';
COMMENT ON COLUMN archive.coverage.read_complete_at IS 'when a run last read every feed of the conversation to its end; null if none has since this was recorded';
COMMENT ON COLUMN archive.coverage.source_last_ok_run_at IS 'when the last run of the source that ended ok finished (a conversation upstream reported unchanged is not read again)';
