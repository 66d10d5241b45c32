-- `discovery_state.failures`: how many listings in a row have failed (0 after one that did
-- not). The service tries again `discovery.retry_initial` after a failed listing, doubling with
-- each failure up to `discovery.interval`, instead of waiting a whole interval.
-- Compatible with 0025: older binaries neither read nor write it; their listings are due an
-- interval after the last as before, and a newer binary counts from what it finds (a count
-- left by a failure is ignored once `error` is NULL, and reset by its next listing).
INSERT INTO migration_compat (version, oldest_compatible) VALUES (26, 25);

ALTER TABLE discovery_state ADD COLUMN failures integer NOT NULL DEFAULT 0;
