-- Which binary and which configuration each process sharing the request budget runs with, so
-- that replicas left on an old configuration or version (a rollout stopped halfway, a ConfigMap
-- edited and one pod restarted, a SIGHUP sent to one replica only) are seen on the status page,
-- by `lms-sync status`, and alerted on, not only those whose request budget differs.
-- Compatible with 0028: older binaries leave both NULL, as one-off commands (`sync`, `check`,
-- `accounts discover`) do, and a NULL is taken to agree.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (32, 28);

ALTER TABLE rate_shares ADD COLUMN version text, ADD COLUMN config_digest text;
COMMENT ON COLUMN rate_shares.version IS $$The lms-sync version of the process, as of its last negotiation; NULL in rows of binaries older than migration 0032.$$;
COMMENT ON COLUMN rate_shares.config_digest IS $$A digest of the configuration the process runs with (every key, the secrets and [log] aside; the same lms-sync config prints), as of its last negotiation; processes with different digests run different configurations. NULL in rows of binaries older than migration 0032.$$;
