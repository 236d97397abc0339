-- Each source's push channel as the daemon last reported it, for `chatvault status` (which
-- runs in a process of its own). Written by `chatvault run` every few seconds and when it
-- stops; a report older than a minute means no daemon is reporting.
CREATE TABLE vault.push_state (
    source        text PRIMARY KEY,
    connected     boolean NOT NULL,
    healthy       boolean NOT NULL,
    -- since when the channel has been up (connected) or down
    since         timestamptz,
    reconnects    bigint NOT NULL DEFAULT 0,
    pushes        bigint NOT NULL DEFAULT 0,
    last_push_at  timestamptz,
    lag_seconds   double precision,
    -- why it last went down, without secrets
    last_error    text,
    reported_at   timestamptz NOT NULL
);
