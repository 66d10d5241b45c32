-- Each holder says what budget it is configured with: `per_token` requests per `window_secs`.
-- Processes on one database should agree, but a rolling change of `rate_budget` (or one
-- replica left on an old config) runs them side by side with different budgets; each
-- negotiation then shares the strictest any live holder is configured with, so the old
-- budget's replicas cannot send the new one's excess, nor the new one's the old one's. Rows of
-- older binaries leave both NULL and are taken to agree. See docs/rate-budget.md. Compatible
-- with 0018: older binaries neither write nor read them.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (19, 18);

ALTER TABLE rate_shares ADD COLUMN per_token integer, ADD COLUMN window_secs integer;
