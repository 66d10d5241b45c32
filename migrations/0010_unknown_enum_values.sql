-- Undocumented role and status values, per account: metrics count them per field (a label per
-- value would grow without bound); the values themselves are kept here. Compatible with 0009.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (10, 9);

CREATE TABLE unknown_enum_values (
    integrated_account_id uuid        NOT NULL,
    field                 text        NOT NULL, -- role | status
    value                 text        NOT NULL, -- as the vendor sent it
    users                 bigint      NOT NULL, -- users written with it, summed over runs
    first_seen_at         timestamptz NOT NULL DEFAULT now(),
    last_seen_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (integrated_account_id, field, value)
);
