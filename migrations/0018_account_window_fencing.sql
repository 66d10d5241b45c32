-- A lease holder that fences itself watches its lease's connection and stops sending for the
-- account the moment that connection ends, which is when the server frees the lease. So when
-- the next process takes a lease whose holder ended without handing its requests on, that
-- holder has sent its last request already: the account waits one window (and a margin), not
-- a window and a lease. The column names the holder that fences; it counts only while it
-- equals `holder`, so a lease taken since by an older binary (which writes `holder` but not
-- this) keeps the lease rule of 0014. See docs/rate-budget.md. Compatible with 0017: older
-- binaries neither write nor read it.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (18, 17);

ALTER TABLE rate_account_windows ADD COLUMN fencing_holder text;
