-- One row per purged account, kept after its data is gone: when a customer's data was deleted,
-- by whom (`lms-sync accounts purge`, or the service once the account had been retired for
-- `discovery.purge_retired_after`), what the account was, and how many rows of each table went.
-- `accounts.protected_at` (`lms-sync accounts protect`): an account whose data must be kept
-- (a legal hold) is never purged, by the rule or the command; NULL: not protected.
-- Compatible with 0024: older binaries neither read nor write them (their `accounts purge`
-- records nothing and does not know protection).
INSERT INTO migration_compat (version, oldest_compatible) VALUES (25, 24);

CREATE TABLE account_purges (
    purge_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    integrated_account_id uuid NOT NULL,
    tenant_id text,
    label text,
    integration text,
    first_seen_at timestamptz,
    retired_at timestamptz NOT NULL,
    purged_at timestamptz NOT NULL DEFAULT now(),
    purged_by text NOT NULL CHECK (purged_by IN ('command', 'service')),
    rows_deleted bigint NOT NULL,
    rows_by_table jsonb NOT NULL
);
CREATE INDEX account_purges_account ON account_purges (integrated_account_id, purged_at);

ALTER TABLE accounts ADD COLUMN protected_at timestamptz;
