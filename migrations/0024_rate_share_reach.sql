-- Whether a process that cannot reach Truto is alone in that: each negotiation records, in the
-- database's time, when the process last got an answer from Truto (`answered_at`) and since
-- when it has not reached Truto (`unreachable_since`, NULL while it does). A halted process
-- whose peers were answered after it stopped reaching Truto is cut off on its own way to Truto
-- (its DNS, egress, proxy), not watching Truto down: `lms_sync_truto_cut_off`, `lms-sync status`
-- and the status page say which. Compatible with 0023: older binaries neither write nor read
-- them.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (24, 23);

ALTER TABLE rate_shares ADD COLUMN answered_at timestamptz, ADD COLUMN unreachable_since timestamptz;
