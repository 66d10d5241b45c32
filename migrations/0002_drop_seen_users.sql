-- The deletion sweep now keeps the ids a listing contained in memory (8 bytes an id) instead
-- of writing one row per id per run into seen_users: re-syncs of unchanged accounts write
-- (almost) nothing, and a database crash mid-run no longer loses what the run has seen.
DROP TABLE IF EXISTS seen_users;
