-- The outcome of each `chatvault verify` per source, so that the daemon can export the last
-- one as a metric (`chatvault_verify_ok`) and an alert can fire when a chain stops verifying
-- or verification stops being run. Rows are only ever inserted.
CREATE TABLE vault.verify_results (
    source      text NOT NULL REFERENCES vault.sources (source),
    checked_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    ok          boolean NOT NULL,
    events      bigint NOT NULL,
    failures    bigint NOT NULL,
    PRIMARY KEY (source, checked_at)
);

CREATE VIEW archive.verify_results AS
SELECT source, checked_at, ok, events, failures
FROM vault.verify_results;

COMMENT ON VIEW archive.verify_results IS 'one row per source per `chatvault verify`: whether its hash chain and versions were intact';
COMMENT ON COLUMN archive.verify_results.checked_at IS 'when verify checked the source';
COMMENT ON COLUMN archive.verify_results.ok IS 'true when no break was found in the chain or the stored versions';
COMMENT ON COLUMN archive.verify_results.events IS 'events checked';
COMMENT ON COLUMN archive.verify_results.failures IS 'breaks found';
