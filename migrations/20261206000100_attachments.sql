-- Attachments: the files, images, voice and video that archived messages point to.
--
-- `vault.attachments` is the fetcher's work list and record: one row per attachment a
-- message version references, found from the archived versions (so messages archived
-- before attachments were fetched are covered too). Its status moves as downloads happen;
-- what was stored is also proven by an `attachment_stored` event in the source's hash
-- chain carrying the sha256, so this table is bookkeeping, not the evidence.
CREATE TABLE vault.attachments (
    source           text NOT NULL,
    conversation_id  text NOT NULL,
    message_id       text NOT NULL,
    -- position among the message's attachments, in the order they were first seen
    ordinal          integer NOT NULL CHECK (ordinal >= 0),
    kind             text NOT NULL,
    name             text,
    mime             text,
    -- the size upstream declares (bytes), if it does
    declared_size    bigint,
    width            integer,
    height           integer,
    duration_ms      bigint,
    -- as upstream gives it (a path under the API root or a URL); what the fetcher asks for
    upstream_url     text NOT NULL,
    -- the same without credentials, query string or user info: what the view shows
    shown_url        text NOT NULL,
    -- the platform's own digest (Yunxin md5), lowercase hex, checked on download
    upstream_md5     text,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'stored', 'failed', 'too_large', 'gone', 'skipped')),
    sha256           text CHECK (sha256 IS NULL OR sha256 ~ '^[0-9a-f]{64}$'),
    size             bigint,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    fetched_at       timestamptz,
    error            text,
    first_seen_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, conversation_id, message_id, ordinal)
);
CREATE UNIQUE INDEX attachments_by_url
    ON vault.attachments (source, conversation_id, message_id, upstream_url);
CREATE INDEX attachments_due
    ON vault.attachments (source, next_attempt_at) WHERE status IN ('pending', 'failed');
CREATE INDEX attachments_by_sha256 ON vault.attachments (sha256) WHERE sha256 IS NOT NULL;

-- How far each source's events have been scanned for attachment references.
CREATE TABLE vault.attachment_scan (
    source     text PRIMARY KEY,
    event_seq  bigint NOT NULL
);

CREATE VIEW archive.attachments AS
SELECT source, conversation_id, message_id, ordinal, kind, name, mime,
       COALESCE(size, declared_size) AS size, sha256, shown_url AS upstream_url, status,
       fetched_at, error
  FROM vault.attachments;

COMMENT ON VIEW archive.attachments IS 'every attachment archived messages reference, and whether its file is stored';
COMMENT ON COLUMN archive.attachments.ordinal IS 'position among the message''s attachments (0-based), in the order first seen';
COMMENT ON COLUMN archive.attachments.kind IS 'image, file, voice, video, sticker or thumbnail';
COMMENT ON COLUMN archive.attachments.size IS 'bytes stored, or the size upstream declares while not stored';
COMMENT ON COLUMN archive.attachments.sha256 IS 'sha256 of the stored file (lowercase hex), also in the attachment_stored event';
COMMENT ON COLUMN archive.attachments.upstream_url IS 'where upstream keeps it, without credentials or query string';
COMMENT ON COLUMN archive.attachments.status IS 'pending, stored, failed (will be retried), too_large, gone (404 or expired after retries) or skipped (kind not fetched)';
