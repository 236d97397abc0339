-- Retention and legal hold (README, "Retention and legal hold").
--
-- A purge is the one way anything archived is ever deleted, and it deletes only messages
-- (with their versions and reactions) whose retention period has passed and that no active
-- hold covers. Every purge writes a `messages_purged` event to the source's hash chain and
-- lists what it removed in `vault.purged_messages` (ids, send times, version digests,
-- counts; no content), which `chatvault verify` checks against the event's digest. Events
-- themselves are never deleted.

-- Legal holds. A hold is placed once and released once; its name is never reused.
CREATE TABLE vault.holds (
    name             text PRIMARY KEY,
    -- null: every source, present and future
    source           text,
    conversation_id  text,
    sender_id        text,
    since            timestamptz,
    until            timestamptz,
    reason           text NOT NULL,
    placed_at        timestamptz NOT NULL,
    placed_by        text,
    released_at      timestamptz,
    released_by      text,
    release_reason   text,
    CHECK (since IS NULL OR until IS NULL OR since < until)
);

-- Only ever insert a hold, and set its release once.
CREATE FUNCTION vault.guard_holds() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.released_at IS NULL AND NEW.released_at IS NOT NULL
       AND (NEW.name, NEW.source, NEW.conversation_id, NEW.sender_id, NEW.since, NEW.until,
            NEW.reason, NEW.placed_at, NEW.placed_by)
           IS NOT DISTINCT FROM
           (OLD.name, OLD.source, OLD.conversation_id, OLD.sender_id, OLD.since, OLD.until,
            OLD.reason, OLD.placed_at, OLD.placed_by)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'vault.holds: a hold is placed once and released once: % refused', TG_OP;
END
$$;
CREATE TRIGGER holds_place_and_release_only BEFORE UPDATE OR DELETE ON vault.holds
    FOR EACH ROW EXECUTE FUNCTION vault.guard_holds();
CREATE TRIGGER holds_no_truncate BEFORE TRUNCATE ON vault.holds
    FOR EACH STATEMENT EXECUTE FUNCTION vault.refuse_rewrite();

-- Whether an active hold covers a message of `source`/`conversation` from `sender` sent at
-- `sent_at`. The one definition: the purge selects with it and the guard below checks it.
CREATE FUNCTION vault.held(p_source text, p_conversation text, p_sender text, p_sent_at timestamptz)
RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM vault.holds h
        WHERE h.released_at IS NULL
          AND (h.source IS NULL OR h.source = p_source)
          AND (h.conversation_id IS NULL OR h.conversation_id = p_conversation)
          AND (h.sender_id IS NULL OR h.sender_id = p_sender)
          AND (h.since IS NULL OR p_sent_at >= h.since)
          AND (h.until IS NULL OR p_sent_at < h.until))
$$;

-- What each purge removed, one row per message, no content. `purge_seq` is the event_seq of
-- the `messages_purged` event in the source's chain; `version_hashes` are the message's
-- version digests (as the chain recorded them), `versions` and `reactions` the rows removed.
CREATE TABLE vault.purged_messages (
    source           text NOT NULL,
    conversation_id  text NOT NULL,
    message_id       text NOT NULL,
    purge_seq        bigint NOT NULL,
    sent_at          timestamptz NOT NULL,
    versions         integer NOT NULL,
    version_hashes   bytea NOT NULL,
    reactions        integer NOT NULL,
    PRIMARY KEY (source, conversation_id, message_id, purge_seq)
);
CREATE INDEX purged_messages_by_purge ON vault.purged_messages (source, purge_seq);

CREATE TRIGGER purged_messages_append_only BEFORE UPDATE OR DELETE ON vault.purged_messages
    FOR EACH ROW EXECUTE FUNCTION vault.refuse_rewrite();
CREATE TRIGGER purged_messages_no_truncate BEFORE TRUNCATE ON vault.purged_messages
    FOR EACH STATEMENT EXECUTE FUNCTION vault.refuse_rewrite();

-- A message under an active hold is never listed as purged (and so never deleted).
CREATE FUNCTION vault.refuse_purge_of_held() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM vault.messages m
               WHERE m.source = NEW.source AND m.conversation_id = NEW.conversation_id
                 AND m.message_id = NEW.message_id
                 AND vault.held(m.source, m.conversation_id, m.sender_id, m.sent_at)) THEN
        RAISE EXCEPTION 'message % of conversation % (source %) is under legal hold: not purged',
            NEW.message_id, NEW.conversation_id, NEW.source;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER purged_messages_never_held BEFORE INSERT ON vault.purged_messages
    FOR EACH ROW EXECUTE FUNCTION vault.refuse_purge_of_held();

-- A message, version or reaction row may be deleted only by a purge: inside the transaction
-- that wrote the `messages_purged` event whose event_seq it set as `chatvault.purge_seq`, and
-- only for a message that event's listing names. Everything else is refused as before.
CREATE FUNCTION vault.allow_purge_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v_seq bigint := NULLIF(current_setting('chatvault.purge_seq', true), '')::bigint;
BEGIN
    IF v_seq IS NOT NULL
       AND EXISTS (SELECT 1 FROM vault.purged_messages p
                   WHERE p.source = OLD.source AND p.conversation_id = OLD.conversation_id
                     AND p.message_id = OLD.message_id AND p.purge_seq = v_seq)
       AND EXISTS (SELECT 1 FROM vault.events e
                   WHERE e.source = OLD.source AND e.event_seq = v_seq
                     AND e.kind = 'messages_purged'
                     AND e.xmin::text = (pg_current_xact_id()::text::numeric % 4294967296)::text)
    THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'vault.% is append-only: % refused (only a purge of expired messages deletes, with its event)',
        TG_TABLE_NAME, TG_OP;
END
$$;

DROP TRIGGER message_versions_append_only ON vault.message_versions;
CREATE TRIGGER message_versions_no_update BEFORE UPDATE ON vault.message_versions
    FOR EACH ROW EXECUTE FUNCTION vault.refuse_rewrite();
CREATE TRIGGER message_versions_purge_only BEFORE DELETE ON vault.message_versions
    FOR EACH ROW EXECUTE FUNCTION vault.allow_purge_only();
CREATE TRIGGER messages_purge_only BEFORE DELETE ON vault.messages
    FOR EACH ROW EXECUTE FUNCTION vault.allow_purge_only();
CREATE TRIGGER reactions_purge_only BEFORE DELETE ON vault.reactions
    FOR EACH ROW EXECUTE FUNCTION vault.allow_purge_only();

-- ---------------------------------------------------------------------------------------
-- Public views.

COMMENT ON COLUMN archive.events.kind IS 'message_created, message_edited, message_recalled, message_deleted, reaction_added, reaction_removed, conversation_created, conversation_changed, hold_placed, hold_released or messages_purged';

CREATE VIEW archive.holds AS
SELECT name, source, conversation_id, sender_id, since, until, reason, placed_at, placed_by,
       released_at, released_by, release_reason
FROM vault.holds;

COMMENT ON VIEW archive.holds IS 'Legal holds, active (released_at null) and released: what they cover is never purged.';
COMMENT ON COLUMN archive.holds.name IS 'the hold''s name (used once)';
COMMENT ON COLUMN archive.holds.source IS 'source it covers; null = every source';
COMMENT ON COLUMN archive.holds.conversation_id IS 'conversation it covers; null = every conversation';
COMMENT ON COLUMN archive.holds.sender_id IS 'sender whose messages it covers; null = every sender';
COMMENT ON COLUMN archive.holds.since IS 'covers messages sent at or after this time; null = from the beginning';
COMMENT ON COLUMN archive.holds.until IS 'covers messages sent before this time; null = no end';
COMMENT ON COLUMN archive.holds.reason IS 'why the hold was placed';
COMMENT ON COLUMN archive.holds.placed_at IS 'when it was placed';
COMMENT ON COLUMN archive.holds.placed_by IS 'operating-system user who placed it';
COMMENT ON COLUMN archive.holds.released_at IS 'when it was released; null while active';
COMMENT ON COLUMN archive.holds.released_by IS 'operating-system user who released it';
COMMENT ON COLUMN archive.holds.release_reason IS 'why it was released';

CREATE VIEW archive.purged_messages AS
SELECT source, conversation_id, message_id, purge_seq, sent_at, versions, reactions,
       encode(version_hashes, 'hex') AS version_hashes
FROM vault.purged_messages;

COMMENT ON VIEW archive.purged_messages IS 'Every message a purge removed (ids and digests only, no content), one row per message and purge.';
COMMENT ON COLUMN archive.purged_messages.source IS 'configured source name';
COMMENT ON COLUMN archive.purged_messages.conversation_id IS 'conversation of the message';
COMMENT ON COLUMN archive.purged_messages.message_id IS 'the message removed';
COMMENT ON COLUMN archive.purged_messages.purge_seq IS 'event_seq of the messages_purged event in the source''s chain';
COMMENT ON COLUMN archive.purged_messages.sent_at IS 'when the message was sent (before the purge''s cut-off)';
COMMENT ON COLUMN archive.purged_messages.versions IS 'version rows removed';
COMMENT ON COLUMN archive.purged_messages.reactions IS 'reaction episodes removed';
COMMENT ON COLUMN archive.purged_messages.version_hashes IS 'sha256 of every version, 32 bytes each in version order (hex), as the chain recorded them';
