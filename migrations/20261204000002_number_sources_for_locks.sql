-- Each source gets a number of its own, used as the key of its advisory lock: the lock was
-- keyed by a 32-bit hash of the source name, and two names with the same hash would have
-- kept one of the two sources from ever syncing.
ALTER TABLE vault.sources ADD COLUMN lock_id integer GENERATED ALWAYS AS IDENTITY;
ALTER TABLE vault.sources ADD CONSTRAINT sources_lock_id_key UNIQUE (lock_id);
