-- The configurations the replicas of `run` run with, by digest (`rate_shares.config_digest`),
-- so that the status page and `lms-sync status` say how two replicas' configurations differ
-- (which keys, which accounts), not only that they do. A replica records its configuration
-- when it starts or reloads into one not recorded yet; one no replica has run for a week is
-- deleted. Secrets are not settings and are never in it.
-- Compatible with 0028: older binaries neither write nor read it.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (33, 28);

CREATE TABLE replica_configurations (
    config_digest text PRIMARY KEY,
    settings      jsonb NOT NULL,
    recorded_at   timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE replica_configurations IS $$The configurations replicas run, by digest (internal): as lms-sync config shows them (every key, accounts included; the secrets and [log] aside), for the status page and lms-sync status to name what differs between replicas.$$;
COMMENT ON COLUMN replica_configurations.config_digest IS $$The digest rate_shares.config_digest names (Settings::digest).$$;
COMMENT ON COLUMN replica_configurations.settings IS $$Every section's keys and their values, and the accounts, as JSON.$$;
COMMENT ON COLUMN replica_configurations.recorded_at IS $$When a replica last recorded it (starting, or reloading into it); deleted a week after that when no replica runs it.$$;
