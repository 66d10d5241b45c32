-- Until when the server holds an account's requests back: a run that failed because Truto (or
-- the vendor behind it) asked to wait longer than truto.max_retry_wait_secs (a 429's
-- Retry-After, a spent ratelimit-* window: an hourly or daily quota) records the end of that
-- wait here, in the database's time. The schedule of every replica runs the account no earlier
-- (instead of a failed run every few minutes), and a process that leases it before then (a
-- one-off sync, `accounts sync-now`) fails the run without a request. NULL: no hold; every
-- run's end sets it anew. Compatible with 0020: older binaries neither write nor read it.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (21, 20);

ALTER TABLE sync_state ADD COLUMN held_until timestamptz;
