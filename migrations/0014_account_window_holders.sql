-- Who holds an account's request window: taking a lease now records the process that took it
-- (`holder`) and since when (`held_since`); releasing clears `held_since`. A row still marked
-- held when the next process takes the lease means its holder died without handing its
-- requests on, so the next holder counts the account's window as full for one window instead
-- of running into the server's limit. And a process taking back a lease it held last needs no
-- handover (its requests are counted in its own memory already). See docs/rate-budget.md.
-- Compatible with 0013: older binaries neither read nor write these columns; a release by one
-- moves `released_at` past `held_since`, which also reads as released.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (14, 13);

ALTER TABLE rate_account_windows
    ADD COLUMN holder     text,
    ADD COLUMN held_since timestamptz;
