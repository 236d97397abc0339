-- Every message as it stood at a moment: `SELECT * FROM archive.messages_as_of('2026-11-01T12:00:00Z')`.
--
-- The columns are those of archive.messages, in the same order. What "as it stood" means:
-- - a message exists from its upstream send time: one sent after `ts` is left out (whenever
--   chatvault archived it; `archived_at` says when that was);
-- - the version current at `ts` is the newest one written by then: version 1 from the send
--   time, each later version from its upstream edit time (`edited_at`), or from when
--   chatvault first saw it (`observed_at`) where upstream gave no edit time;
-- - `edited_at` and `edit_count` are those of that version;
-- - `recalled_at`/`recalled_by` and `deleted_at` are set only if the recall or deletion
--   happened at or before `ts`;
-- - `raw` is the last payload received (it may be newer than `ts`), as in archive.messages.
-- A plain SQL function so that PostgreSQL inlines it and filters on source, conversation
-- and sent_at use the indexes.
CREATE FUNCTION archive.messages_as_of(ts timestamptz)
RETURNS TABLE (
    source text, platform text, conversation_id text, conversation_type text,
    message_id text, seq bigint, sender_id text, sender_name text, sent_at timestamptz,
    kind text, text text, content jsonb, reply_to text, edited_at timestamptz,
    edit_count integer, recalled_at timestamptz, recalled_by text, deleted_at timestamptz,
    archived_at timestamptz, raw jsonb
)
LANGUAGE sql STABLE
AS $$
SELECT m.source, s.platform, m.conversation_id, c.conversation_type, m.message_id, m.seq,
       m.sender_id, m.sender_name, m.sent_at, v.kind, v.text, v.content, m.reply_to,
       v.edited_at, v.version - 1,
       CASE WHEN m.recalled_at <= ts THEN m.recalled_at END,
       CASE WHEN m.recalled_at <= ts THEN m.recalled_by END,
       CASE WHEN m.deleted_at <= ts THEN m.deleted_at END,
       m.archived_at, m.raw
FROM vault.messages m
JOIN LATERAL (
    SELECT mv.version, mv.kind, mv.text, mv.content, mv.edited_at
    FROM vault.message_versions mv
    WHERE mv.source = m.source AND mv.conversation_id = m.conversation_id
      AND mv.message_id = m.message_id
      AND (mv.version = 1 OR COALESCE(mv.edited_at, mv.observed_at) <= ts)
    ORDER BY mv.version DESC
    LIMIT 1
) v ON true
JOIN vault.conversations c
  ON c.source = m.source AND c.conversation_id = m.conversation_id
JOIN vault.sources s ON s.source = m.source
WHERE m.sent_at <= ts
$$;

COMMENT ON FUNCTION archive.messages_as_of(timestamptz) IS
    'Every message as it stood at ts: sent by then, the version written by then (upstream edit time, else first observation), recall and deletion only if at or before ts. Columns as archive.messages.';
