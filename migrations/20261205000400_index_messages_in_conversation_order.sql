-- Messages of a conversation in their order (seq, then send time, then id), so that
-- `verify --upstream` finds the archived message after a sampled one, and the newest
-- message of each conversation, by an index scan instead of reading the conversation.
CREATE INDEX messages_in_order ON vault.messages
    (source, conversation_id, (COALESCE(seq, 0)), sent_at, message_id);
