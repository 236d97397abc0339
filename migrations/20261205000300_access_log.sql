-- The access log: who searched, viewed or exported what, when, and how many results they
-- got. Append-only and hash-chained like the event log, as one chain of its own
-- (`access-log`): hash(n) = sha256(hash(n-1) || canonical(entry n)), hash(0) = 32 zero bytes,
-- canonical as in ARCHITECTURE.md ("The access log"). `chatvault verify` recomputes it.

CREATE TABLE vault.access_log (
    seq        bigint PRIMARY KEY,
    at         timestamptz NOT NULL,
    who        text NOT NULL,
    via        text NOT NULL,
    client     text,
    action     text NOT NULL,
    query      text,
    filters    jsonb NOT NULL,
    ids        jsonb NOT NULL,
    results    bigint,
    prev_hash  bytea NOT NULL,
    hash       bytea NOT NULL
);
CREATE INDEX access_log_by_time ON vault.access_log (at);

-- The head of the access log's chain: one row, locked FOR UPDATE by every append, so
-- entries are numbered without gaps in commit order.
CREATE TABLE vault.access_log_head (
    only_row   boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    seq        bigint NOT NULL,
    hash       bytea NOT NULL
);
INSERT INTO vault.access_log_head (only_row, seq, hash)
VALUES (true, 0, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);

CREATE TRIGGER access_log_append_only BEFORE UPDATE OR DELETE ON vault.access_log
    FOR EACH ROW EXECUTE FUNCTION vault.refuse_rewrite();
CREATE TRIGGER access_log_no_truncate BEFORE TRUNCATE ON vault.access_log
    FOR EACH STATEMENT EXECUTE FUNCTION vault.refuse_rewrite();

CREATE VIEW archive.access_log AS
SELECT seq, at, who, via, client, action, query, filters, ids, results,
       encode(prev_hash, 'hex') AS prev_hash, encode(hash, 'hex') AS hash
FROM vault.access_log;

COMMENT ON VIEW archive.access_log IS 'Every search, conversation view and export, append-only and hash-chained (chain access-log).';
COMMENT ON COLUMN archive.access_log.seq IS 'position in the access log''s chain, from 1, without gaps';
COMMENT ON COLUMN archive.access_log.at IS 'when the access was made';
COMMENT ON COLUMN archive.access_log.who IS 'the operating-system user (CLI) or the API token''s name (HTTP, also for browsers signed in with it); anonymous without a token';
COMMENT ON COLUMN archive.access_log.via IS 'cli, api or web';
COMMENT ON COLUMN archive.access_log.client IS 'the client''s address (HTTP); null for the CLI';
COMMENT ON COLUMN archive.access_log.action IS 'search, conversation, export (and what later features add)';
COMMENT ON COLUMN archive.access_log.query IS 'the search query, if any';
COMMENT ON COLUMN archive.access_log.filters IS 'the filters and options of the access (source, conversation, sender, since, until, format, ...)';
COMMENT ON COLUMN archive.access_log.ids IS 'what was shown: [{"source", "conversation_id", "message_id"}, ...] (exports: none; their filters say what was exported)';
COMMENT ON COLUMN archive.access_log.results IS 'how many results were returned (hits in the page, messages shown or exported)';
COMMENT ON COLUMN archive.access_log.prev_hash IS 'hash of the previous entry (hex; 64 zeros for the first)';
COMMENT ON COLUMN archive.access_log.hash IS 'sha256(prev_hash || canonical entry), hex';
