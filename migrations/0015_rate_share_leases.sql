-- A share is leased: the process that holds it sends under it only until `good_until`, unless a
-- negotiation renews it (it stops by then when it cannot reach the database, or its
-- negotiation hangs). So a holder whose connection is gone may still be alive and sending
-- until then — after a database restart every connection is gone at once — and its share
-- stays hot for one window from `good_until`, or from when it was found gone if that is later.
-- See docs/rate-budget.md. Compatible with 0014: older binaries neither write nor read it
-- (NULL reads as "found gone now", their rule).
INSERT INTO migration_compat (version, oldest_compatible) VALUES (15, 14);

ALTER TABLE rate_shares ADD COLUMN good_until timestamptz;
