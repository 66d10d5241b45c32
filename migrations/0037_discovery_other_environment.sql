-- `discovery_state.other_environment_id`: the Truto environment a listing showed when it was
-- not the one the registry follows (an API token of another environment), until a listing
-- succeeds. The process that made the listing holds its runs (each would answer 404 and mark
-- its account `not_found`); every other process sharing the database reads this column, checks
-- its own token with one listing request, and holds its runs too if that token lists the
-- same other environment. Without it only the process that listed knew.
-- Compatible with 0028: older binaries neither read nor write it.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (37, 28);

ALTER TABLE discovery_state ADD COLUMN other_environment_id text;

COMMENT ON COLUMN discovery_state.other_environment_id IS $$The Truto environment a listing showed when it was not the one the registry follows (environment_id): the API token of the process that listed is one of another environment, and every process checks its own and starts no run while it lists that environment too. Kept through later failed listings; NULL once a listing succeeds, and when none was refused so.$$;
