-- The archive store. Base tables live in schema `vault` and are the store's business;
-- schema `archive` holds the public views documented in README.md (the SQL contract).
-- Every key begins with the source (then the conversation), so the schema can be
-- distributed on that key without redesign.

CREATE SCHEMA IF NOT EXISTS vault;
CREATE SCHEMA IF NOT EXISTS archive;

CREATE TABLE vault.sources (
    source      text PRIMARY KEY,
    platform    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The head of each source's hash chain. Locked FOR UPDATE by every page a writer applies,
-- so appends to one source are serialised.
CREATE TABLE vault.chain_heads (
    source      text PRIMARY KEY REFERENCES vault.sources (source),
    event_seq   bigint NOT NULL DEFAULT 0,
    hash        bytea NOT NULL
);

CREATE TABLE vault.cursors (
    source      text NOT NULL,
    key         text NOT NULL,
    value       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL,
    PRIMARY KEY (source, key)
);

CREATE TABLE vault.conversations (
    source              text NOT NULL,
    conversation_id     text NOT NULL,
    conversation_type   text NOT NULL,
    name                text,
    metadata            jsonb NOT NULL DEFAULT '{}'::jsonb,
    message_count       bigint NOT NULL DEFAULT 0,
    first_message_at    timestamptz,
    last_message_at     timestamptz,
    first_seen_at       timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    PRIMARY KEY (source, conversation_id)
);

CREATE TABLE vault.messages (
    source           text NOT NULL,
    conversation_id  text NOT NULL,
    message_id       text NOT NULL,
    seq              bigint,
    sender_id        text,
    sender_name      text,
    sent_at          timestamptz NOT NULL,
    reply_to         text,
    -- the version that is current; versions live in vault.message_versions
    current_version  integer NOT NULL,
    -- sha256 of every version's canonical content, concatenated in version order
    version_hashes   bytea NOT NULL,
    edited_at        timestamptz,
    recalled_at      timestamptz,
    recalled_by      text,
    deleted_at       timestamptz,
    deleted_by       text,
    archived_at      timestamptz NOT NULL,
    raw              jsonb NOT NULL,
    raw_hash         bytea NOT NULL,
    PRIMARY KEY (source, conversation_id, message_id)
);
CREATE INDEX messages_by_time ON vault.messages (source, conversation_id, sent_at);

CREATE TABLE vault.message_versions (
    source           text NOT NULL,
    conversation_id  text NOT NULL,
    message_id       text NOT NULL,
    version          integer NOT NULL,
    kind             text NOT NULL,
    text             text NOT NULL,
    content          jsonb NOT NULL,
    edited_at        timestamptz,
    observed_at      timestamptz NOT NULL,
    PRIMARY KEY (source, conversation_id, message_id, version)
);

CREATE TABLE vault.reactions (
    source           text NOT NULL,
    reaction_id      bigserial,
    conversation_id  text NOT NULL,
    message_id       text NOT NULL,
    user_id          text NOT NULL,
    user_name        text,
    emoji            text NOT NULL,
    reacted_at       timestamptz NOT NULL,
    removed_at       timestamptz,
    PRIMARY KEY (source, reaction_id)
);
CREATE INDEX reactions_by_message ON vault.reactions (source, conversation_id, message_id);
-- at most one open episode per user, emoji and message
CREATE UNIQUE INDEX reactions_open ON vault.reactions (source, conversation_id, message_id, user_id, emoji)
    WHERE removed_at IS NULL;

CREATE TABLE vault.events (
    source           text NOT NULL,
    event_seq        bigint NOT NULL,
    kind             text NOT NULL,
    conversation_id  text,
    message_id       text,
    occurred_at      timestamptz,
    observed_at      timestamptz NOT NULL,
    detail           jsonb NOT NULL,
    prev_hash        bytea NOT NULL,
    hash             bytea NOT NULL,
    PRIMARY KEY (source, event_seq)
);
CREATE INDEX events_by_message ON vault.events (source, conversation_id, message_id);

CREATE TABLE vault.seq_gaps (
    source           text NOT NULL,
    conversation_id  text NOT NULL,
    from_seq         bigint NOT NULL,
    to_seq           bigint NOT NULL,
    reason           text NOT NULL,
    observed_at      timestamptz NOT NULL,
    PRIMARY KEY (source, conversation_id, from_seq, to_seq)
);

CREATE TABLE vault.quarantine (
    source       text NOT NULL,
    raw_hash     bytea NOT NULL,
    observed_at  timestamptz NOT NULL,
    reason       text NOT NULL,
    raw          jsonb NOT NULL,
    PRIMARY KEY (source, raw_hash)
);

CREATE TABLE vault.sync_runs (
    source            text NOT NULL,
    run_id            bigserial,
    started_at        timestamptz NOT NULL,
    finished_at       timestamptz,
    status            text NOT NULL CHECK (status IN ('running', 'ok', 'failed', 'interrupted')),
    messages_new      bigint NOT NULL DEFAULT 0,
    messages_changed  bigint NOT NULL DEFAULT 0,
    requests          bigint NOT NULL DEFAULT 0,
    retries           bigint NOT NULL DEFAULT 0,
    error             text,
    chain_head_seq    bigint,
    chain_head        bytea,
    PRIMARY KEY (source, run_id)
);

-- Append-only guards: the event log and the versions are never rewritten by chatvault.
-- (An owner can still bypass triggers; `chatvault verify` is what proves integrity.)
CREATE FUNCTION vault.refuse_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'vault.% is append-only: % refused', TG_TABLE_NAME, TG_OP;
END
$$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON vault.events
    FOR EACH ROW EXECUTE FUNCTION vault.refuse_rewrite();
CREATE TRIGGER message_versions_append_only BEFORE UPDATE OR DELETE ON vault.message_versions
    FOR EACH ROW EXECUTE FUNCTION vault.refuse_rewrite();

-- ---------------------------------------------------------------------------------------
-- The public views (DESIGN.md, "SQL contract").

CREATE VIEW archive.conversations AS
SELECT c.source, s.platform, c.conversation_id, c.conversation_type, c.name,
       c.message_count, c.first_message_at, c.last_message_at, c.metadata
FROM vault.conversations c
JOIN vault.sources s USING (source);

COMMENT ON VIEW archive.conversations IS 'One row per archived conversation.';
COMMENT ON COLUMN archive.conversations.source IS 'configured source name (one account on one platform)';
COMMENT ON COLUMN archive.conversations.platform IS 'tangsengdaodao, yunxin or yunhu';
COMMENT ON COLUMN archive.conversations.conversation_id IS 'the platform''s conversation id as text (TangSengDaoDao: peer uid or group number)';
COMMENT ON COLUMN archive.conversations.conversation_type IS 'direct, group, bot or other';
COMMENT ON COLUMN archive.conversations.name IS 'display name as last seen upstream';
COMMENT ON COLUMN archive.conversations.message_count IS 'messages archived in this conversation';
COMMENT ON COLUMN archive.conversations.first_message_at IS 'sent_at of the oldest archived message';
COMMENT ON COLUMN archive.conversations.last_message_at IS 'sent_at of the newest archived message';
COMMENT ON COLUMN archive.conversations.metadata IS 'platform-specific facts about the conversation';

CREATE VIEW archive.messages AS
SELECT m.source, s.platform, m.conversation_id, c.conversation_type, m.message_id, m.seq,
       m.sender_id, m.sender_name, m.sent_at, v.kind, v.text, v.content, m.reply_to,
       m.edited_at, m.current_version - 1 AS edit_count, m.recalled_at, m.recalled_by,
       m.deleted_at, m.archived_at, m.raw
FROM vault.messages m
JOIN vault.message_versions v
  ON v.source = m.source AND v.conversation_id = m.conversation_id
 AND v.message_id = m.message_id AND v.version = m.current_version
JOIN vault.conversations c
  ON c.source = m.source AND c.conversation_id = m.conversation_id
JOIN vault.sources s ON s.source = m.source;

COMMENT ON VIEW archive.messages IS 'Current state of every archived message, one row per message.';
COMMENT ON COLUMN archive.messages.source IS 'configured source name';
COMMENT ON COLUMN archive.messages.platform IS 'tangsengdaodao, yunxin or yunhu';
COMMENT ON COLUMN archive.messages.conversation_id IS 'conversation the message belongs to';
COMMENT ON COLUMN archive.messages.conversation_type IS 'direct, group, bot or other';
COMMENT ON COLUMN archive.messages.message_id IS 'the platform''s message id as text (exact, also above 2^53)';
COMMENT ON COLUMN archive.messages.seq IS 'per-conversation sequence number; null where the platform has none';
COMMENT ON COLUMN archive.messages.sender_id IS 'sender''s platform user id; null for system messages';
COMMENT ON COLUMN archive.messages.sender_name IS 'sender''s display name where known';
COMMENT ON COLUMN archive.messages.sent_at IS 'upstream send time';
COMMENT ON COLUMN archive.messages.kind IS 'text, markdown, html, image, file, voice, video, location, card, sticker, forward, form, post, call, system or other';
COMMENT ON COLUMN archive.messages.text IS 'current plain text (what search indexes)';
COMMENT ON COLUMN archive.messages.content IS 'normalised current content: urls, names, sizes, mentions, reply';
COMMENT ON COLUMN archive.messages.reply_to IS 'message_id this message replies to, or null';
COMMENT ON COLUMN archive.messages.edited_at IS 'time of the last edit; null if never edited';
COMMENT ON COLUMN archive.messages.edit_count IS 'number of edits (versions minus one)';
COMMENT ON COLUMN archive.messages.recalled_at IS 'when the message was recalled; the original content is kept';
COMMENT ON COLUMN archive.messages.recalled_by IS 'who recalled it, where known';
COMMENT ON COLUMN archive.messages.deleted_at IS 'when the message was deleted upstream; the content is kept';
COMMENT ON COLUMN archive.messages.archived_at IS 'when chatvault first archived the message';
COMMENT ON COLUMN archive.messages.raw IS 'the last upstream payload (protobuf decoded to JSON)';

CREATE VIEW archive.message_versions AS
SELECT source, conversation_id, message_id, version, text, content, edited_at, observed_at
FROM vault.message_versions;

COMMENT ON VIEW archive.message_versions IS 'Every version of every message; version 1 is the original.';
COMMENT ON COLUMN archive.message_versions.source IS 'configured source name';
COMMENT ON COLUMN archive.message_versions.conversation_id IS 'conversation of the message';
COMMENT ON COLUMN archive.message_versions.message_id IS 'the message';
COMMENT ON COLUMN archive.message_versions.version IS '1 = the original, then one per edit';
COMMENT ON COLUMN archive.message_versions.text IS 'plain text of this version';
COMMENT ON COLUMN archive.message_versions.content IS 'normalised content of this version';
COMMENT ON COLUMN archive.message_versions.edited_at IS 'when this version was written by an edit; null for version 1';
COMMENT ON COLUMN archive.message_versions.observed_at IS 'when chatvault first saw this version';

CREATE VIEW archive.reactions AS
SELECT source, conversation_id, message_id, user_id, user_name, emoji, reacted_at, removed_at
FROM vault.reactions;

COMMENT ON VIEW archive.reactions IS 'Every reaction episode: re-adding a removed reaction starts a new row.';
COMMENT ON COLUMN archive.reactions.source IS 'configured source name';
COMMENT ON COLUMN archive.reactions.conversation_id IS 'conversation of the message';
COMMENT ON COLUMN archive.reactions.message_id IS 'the message reacted to';
COMMENT ON COLUMN archive.reactions.user_id IS 'who reacted';
COMMENT ON COLUMN archive.reactions.user_name IS 'their display name where known';
COMMENT ON COLUMN archive.reactions.emoji IS 'the reaction';
COMMENT ON COLUMN archive.reactions.reacted_at IS 'when the reaction was added (upstream time where known, else when observed)';
COMMENT ON COLUMN archive.reactions.removed_at IS 'when it was removed; null while it stands';

CREATE VIEW archive.events AS
SELECT source, event_seq, kind, conversation_id, message_id, occurred_at, observed_at, detail,
       encode(prev_hash, 'hex') AS prev_hash, encode(hash, 'hex') AS hash
FROM vault.events;

COMMENT ON VIEW archive.events IS 'The append-only event log, hash-chained per source (see ARCHITECTURE.md).';
COMMENT ON COLUMN archive.events.source IS 'configured source name';
COMMENT ON COLUMN archive.events.event_seq IS 'position in the source''s chain, from 1, without gaps';
COMMENT ON COLUMN archive.events.kind IS 'message_created, message_edited, message_recalled, message_deleted, reaction_added, reaction_removed, conversation_created or conversation_changed';
COMMENT ON COLUMN archive.events.conversation_id IS 'conversation concerned';
COMMENT ON COLUMN archive.events.message_id IS 'message concerned, if any';
COMMENT ON COLUMN archive.events.occurred_at IS 'upstream time of the change where known';
COMMENT ON COLUMN archive.events.observed_at IS 'when chatvault observed the change';
COMMENT ON COLUMN archive.events.detail IS 'what changed (kind-specific)';
COMMENT ON COLUMN archive.events.prev_hash IS 'hash of the previous event of this source (hex; 64 zeros for the first)';
COMMENT ON COLUMN archive.events.hash IS 'sha256(prev_hash || canonical event), hex';

CREATE VIEW archive.sync_runs AS
SELECT source, run_id, started_at, finished_at, status, messages_new, messages_changed,
       requests, error
FROM vault.sync_runs;

COMMENT ON VIEW archive.sync_runs IS 'One row per sync run of a source.';
COMMENT ON COLUMN archive.sync_runs.source IS 'configured source name';
COMMENT ON COLUMN archive.sync_runs.run_id IS 'run number';
COMMENT ON COLUMN archive.sync_runs.started_at IS 'when the run started';
COMMENT ON COLUMN archive.sync_runs.finished_at IS 'when it ended; null while running';
COMMENT ON COLUMN archive.sync_runs.status IS 'running, ok, failed or interrupted';
COMMENT ON COLUMN archive.sync_runs.messages_new IS 'messages archived for the first time';
COMMENT ON COLUMN archive.sync_runs.messages_changed IS 'archived messages that changed (edit, recall, deletion, reactions)';
COMMENT ON COLUMN archive.sync_runs.requests IS 'upstream requests made';
COMMENT ON COLUMN archive.sync_runs.error IS 'why the run failed, or what failed in it';

CREATE VIEW archive.quarantine AS
SELECT source, observed_at, reason, raw
FROM vault.quarantine;

COMMENT ON VIEW archive.quarantine IS 'Upstream records that could not be decoded or mapped, kept raw.';
COMMENT ON COLUMN archive.quarantine.source IS 'configured source name';
COMMENT ON COLUMN archive.quarantine.observed_at IS 'when it was received';
COMMENT ON COLUMN archive.quarantine.reason IS 'why it could not be archived';
COMMENT ON COLUMN archive.quarantine.raw IS 'the record as received (bytes as {"base64": ...})';
