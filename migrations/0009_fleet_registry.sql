-- The account registry for fleets: accounts found by discovery, retired when Truto no longer
-- lists them, paused or pushed by operators through any replica. Additive: compatible with 0008.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (9, 8);

ALTER TABLE accounts
    ADD COLUMN integration            text,     -- Truto's integration.name
    ADD COLUMN is_sandbox             boolean,
    ADD COLUMN sync_requested_at      timestamptz,                   -- `accounts sync-now`: run at once
    ADD COLUMN reset_cursor_requested boolean NOT NULL DEFAULT false; -- `accounts reset-cursor`

-- The last listing of integrated accounts (one row).
CREATE TABLE discovery_state (
    singleton       boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    listed_at       timestamptz, -- the last listing, whatever its result
    succeeded_at    timestamptz, -- the last complete one
    accounts_listed integer,
    added           integer,
    retired         integer,
    unretired       integer,
    retire_guard    text,        -- why accounts Truto no longer lists were not retired
    error           text         -- why the last listing failed
);

-- Users of retired accounts (deleted in Truto) are no longer live; their rows stay in users.
CREATE OR REPLACE VIEW live_users AS
    SELECT u.integrated_account_id, u.id, u.name, u.first_name, u.last_name, u.username,
           u.job_title, u.locale, u.timezone, u.role, u.status, u.organization_id,
           u.organization_name, u.custom_fields, u.remote_data, u.created_at, u.updated_at,
           u.deleted_at, u.first_seen_at, u.last_changed_at, u.last_changed_run_id,
           u.content_hash, u.extra, u.hydrated_at, u.hydrated_hash, u.listed_hash
      FROM users u
     WHERE u.deleted_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM accounts a
                        WHERE a.integrated_account_id = u.integrated_account_id
                          AND a.retired_at IS NOT NULL);

CREATE OR REPLACE VIEW users_with_account AS
    SELECT u.integrated_account_id, a.label AS account_label, a.tenant_id,
           u.id, u.name, u.first_name, u.last_name, u.username, u.job_title, u.locale,
           u.timezone, u.role, u.status, u.organization_id, u.organization_name,
           u.custom_fields, u.extra, u.created_at, u.updated_at, u.deleted_at, u.first_seen_at,
           u.last_changed_at, a.retired_at AS account_retired_at
      FROM users u
      LEFT JOIN accounts a ON a.integrated_account_id = u.integrated_account_id;

-- Truto webhook deliveries already processed, by event id, so that every replica ignores a
-- replay (events older than the receiver's tolerance are ignored anyway, so old ids can go).
CREATE TABLE webhook_events (
    event_id    text PRIMARY KEY,
    event       text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_events_by_age ON webhook_events (received_at);
