-- `discovery_state.environment_id`: the Truto environment whose integrated accounts the registry
-- follows. An API token belongs to one environment, and every account Truto lists carries its
-- `environment_id`. A token of another environment put in the token's place by mistake (a
-- staging token in production, the wrong secret in a rotation) made the next listing register
-- that environment's accounts and mirror their users beside the customers', and fail every
-- known account's runs (HTTP 404) meanwhile. Now a listing of another environment's accounts
-- changes nothing and fails, saying so, until an operator moves the mirror on with
-- `lms-sync accounts discover --adopt-environment`.
-- Compatible with 0028: older binaries neither read nor write it (their listings are not
-- checked); a newer binary records the environment of its first listing that shows accounts.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (36, 28);

ALTER TABLE discovery_state ADD COLUMN environment_id text;

COMMENT ON COLUMN discovery_state.environment_id IS $$The Truto environment whose integrated accounts the registry follows (each listed account's environment_id), recorded by the first listing that showed accounts; a listing of another environment's accounts (an API token of another environment) changes nothing and fails until lms-sync accounts discover --adopt-environment. NULL until then.$$;
