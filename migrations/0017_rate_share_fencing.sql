-- A holder that says it fences itself (`fences_on_loss`) watches its budget connection and
-- stops sending the moment that connection ends, so once the others find its backend gone it
-- has sent its last request: its share is hot for one window from then, not from the end of
-- its lease. A killed replica's share is back after about a window instead of a window and a
-- lease. Rows of older binaries read false and keep the lease rule of 0015. See
-- docs/rate-budget.md. Compatible with 0016: older binaries neither write nor read it.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (17, 16);

ALTER TABLE rate_shares ADD COLUMN fences_on_loss boolean NOT NULL DEFAULT false;
