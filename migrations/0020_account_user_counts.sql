-- Each account's live and deleted users as of its last run, kept in sync_state so that the
-- status page, `/status` and `lms-sync status` read one row per account instead of counting
-- every user of the fleet on each look (at 10 million users that was 3 s and a read of the
-- whole users table, every 30 s per open page). Set after each run, from the day's
-- `daily_user_counts` (live) and the new partial index below (deleted: usually few). NULL
-- until an account's first run ends under this version; readers count those accounts'
-- users directly. Compatible with 0019: older binaries neither write nor read them. The index
-- reads the users table once (1.5 s for 10 million users, 888 MB, cached), writes waiting.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (20, 19);

ALTER TABLE sync_state ADD COLUMN live_user_count bigint, ADD COLUMN deleted_user_count bigint;

-- Deleted users per account: the after-run count above.
CREATE INDEX users_deleted_by_account ON users (integrated_account_id) WHERE deleted_at IS NOT NULL;
