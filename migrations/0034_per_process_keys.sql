-- Replicas' configurations are compared without what is each process's own: where it listens
-- (replicas on one host each need a port of their own) and where it reads its secrets from
-- (systemd hands each unit its credentials in a directory of its own). Comparing them made
-- `LmsSyncConfigMismatch` fire for replicas that do the same to every account. Only the
-- catalog's words change here; the digest is computed by the binary.
-- Compatible with 0028: comments only.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (34, 28);

COMMENT ON TABLE replica_configurations IS $$The configurations replicas run, by digest (internal): as lms-sync config shows them (every key, accounts included; the secrets, [log], server.listen and the secrets' files' paths aside), for the status page and lms-sync status to name what differs between replicas.$$;
COMMENT ON COLUMN rate_shares.config_digest IS $$A digest of the configuration the process runs with (every key; the secrets, [log], server.listen and the secrets' files' paths aside; the same lms-sync config prints), as of its last negotiation; processes with different digests run different configurations. NULL in rows of binaries older than migration 0032.$$;
