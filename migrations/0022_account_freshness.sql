-- One row per account of the registry: how current its mirror is, for analysts who want to know
-- before they join its users against something else (payroll, HR) without reading the
-- service's bookkeeping. Compatible with 0021: a view older binaries neither read nor write.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (22, 21);

CREATE VIEW account_freshness AS
    SELECT a.integrated_account_id, a.label, a.tenant_id, a.integration, a.paused, a.retired_at,
           coalesce(s.health, 'ok') AS health,
           s.last_succeeded_at,
           now() - s.last_succeeded_at AS since_success,
           s.last_outcome,
           s.last_finished_at,
           CASE WHEN s.held_until > now() THEN s.held_until END AS held_until,
           s.live_user_count AS live_users,
           s.last_error
      FROM accounts a
      LEFT JOIN sync_state s ON s.integrated_account_id = a.integrated_account_id;
