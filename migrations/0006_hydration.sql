-- Full-object hydration (accounts with hydrate = true): the list returns a partial user, the
-- single-user GET the full object. Users that are new or whose listed data changed are queued
-- here in the same transaction as the listing's write, so no run ever loses its place; the
-- queue drains within each account's request budget, across runs if need be.
CREATE TABLE hydration_queue (
    integrated_account_id uuid        NOT NULL,
    user_id               text        NOT NULL,
    queued_at             timestamptz NOT NULL DEFAULT now(),
    attempts              integer     NOT NULL DEFAULT 0,   -- failed GETs since it was queued
    next_attempt_at       timestamptz NOT NULL DEFAULT now(),
    last_error            text,
    PRIMARY KEY (integrated_account_id, user_id)
);
CREATE INDEX hydration_queue_due ON hydration_queue (integrated_account_id, next_attempt_at);

ALTER TABLE users
    ADD COLUMN hydrated_at   timestamptz, -- when the full object was last merged into the row
    ADD COLUMN hydrated_hash bytea;       -- hash of that full object: an unchanged one is not rewritten

ALTER TABLE sync_runs
    ADD COLUMN hydrated           bigint NOT NULL DEFAULT 0, -- full objects merged (or found unchanged)
    ADD COLUMN hydration_failures bigint NOT NULL DEFAULT 0; -- GETs that failed; retried later
