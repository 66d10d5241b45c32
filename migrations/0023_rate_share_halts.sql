-- Why a process sharing the request budget starts no run now, in its own words: Truto refuses
-- the API token, or has not answered it since when and with what error. Each negotiation sets
-- it (NULL when the process runs normally), so `lms-sync status` and every replica's status page
-- show a halted replica, not only its own page. Compatible with 0022: older binaries neither
-- write nor read it.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (23, 22);

ALTER TABLE rate_shares ADD COLUMN halted text;
