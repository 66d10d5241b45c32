-- An account's request window, handed from one process to the next: when a process releases
-- an account's lease it records when it sent the account's requests still in the window, and
-- the next process to lease the account (a replica, a one-off sync) counts them as its own, so
-- the per-account window holds across processes. See docs/rate-budget.md.
-- Compatible with 0012: older binaries neither write nor read it.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (13, 12);

CREATE TABLE rate_account_windows (
    integrated_account_id uuid        PRIMARY KEY,
    released_at           timestamptz NOT NULL DEFAULT now(), -- the lease's release (database time)
    ages_ms               integer[]   NOT NULL                -- each request's age then, in ms
);
