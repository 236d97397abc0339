-- What started a run: `poll` (a scheduled or manual run over every conversation) or `push`
-- (a targeted run reading only the conversations a push channel named). Runs recorded
-- before this migration were all polls.
ALTER TABLE vault.sync_runs
    ADD COLUMN trigger text NOT NULL DEFAULT 'poll' CHECK (trigger IN ('poll', 'push'));

-- The view gains the column at its end; its existing columns are unchanged.
CREATE OR REPLACE VIEW archive.sync_runs AS
SELECT source, run_id, started_at, finished_at, status, messages_new, messages_changed,
       requests, error, trigger
FROM vault.sync_runs;

COMMENT ON COLUMN archive.sync_runs.trigger IS 'poll (every conversation, on the schedule or by hand) or push (only the conversations a push channel named)';
