-- `accounts pause --until`: a pause that ends by itself. An operator holding a customer's
-- accounts for a night (an LMS migration, a maintenance window) had to remember to resume
-- them; a pause forgotten leaves the mirror stale for days (the alert after 7 days says so,
-- late). The service (whichever replica looks first) resumes such an account once the time
-- has come, recorded in `account_actions` as a `resume` by lms-sync, as any resume is.
-- Compatible with 0028: older binaries neither set nor read it (their pauses last until a
-- resume, and a timed pause waits for a binary that knows it to end it).
INSERT INTO migration_compat (version, oldest_compatible) VALUES (31, 28);

ALTER TABLE accounts ADD COLUMN paused_until timestamptz;
COMMENT ON COLUMN accounts.paused_until IS $$Set by lms-sync accounts pause --until: when the service resumes the account by itself; NULL for a pause that lasts until a resume.$$;
