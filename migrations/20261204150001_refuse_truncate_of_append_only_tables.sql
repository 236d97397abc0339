-- TRUNCATE empties a table without firing row triggers, so the append-only guards of the
-- first migration did not stop it. Refuse it like UPDATE and DELETE (statement triggers see
-- TRUNCATE, also when it arrives by CASCADE). As before, an owner can still bypass triggers;
-- `chatvault verify` is what proves integrity.
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON vault.events
    FOR EACH STATEMENT EXECUTE FUNCTION vault.refuse_rewrite();
CREATE TRIGGER message_versions_no_truncate BEFORE TRUNCATE ON vault.message_versions
    FOR EACH STATEMENT EXECUTE FUNCTION vault.refuse_rewrite();
