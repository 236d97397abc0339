-- Storing an attachment's file is an event in the source's hash chain:
-- `attachment_stored`, with the conversation and message, and detail
-- {"ordinal", "kind", "sha256", "size", "url"} (the URL without credentials).
COMMENT ON COLUMN archive.events.kind IS 'message_created, message_edited, message_recalled, message_deleted, reaction_added, reaction_removed, conversation_created, conversation_changed, hold_placed, hold_released, messages_purged, upstream_verified or attachment_stored';
