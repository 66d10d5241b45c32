-- Views and functions that stay true, history an analyst can query, counts over time, bounded
-- tables, account names where analysts look, and safe upgrades. Additive only: every column,
-- view and function an older binary uses keeps its name and meaning.

-- Upgrades: which binaries may run against a schema with a given migration applied. A binary
-- that finds migrations newer than it knows runs only if each of them has a row here whose
-- `oldest_compatible` is at most the newest migration the binary knows; otherwise it stops with
-- a message naming them. Additive migrations ("expand") say their predecessor; one that removes
-- or changes what older binaries use ("contract") says itself.
CREATE TABLE migration_compat (
    version           bigint PRIMARY KEY,
    oldest_compatible bigint NOT NULL
);
INSERT INTO migration_compat (version, oldest_compatible) VALUES (8, 7);

-- live_users was created as SELECT *, which PostgreSQL expands once: it lacked every column
-- added since. Now with an explicit list (the same columns, in the same order, as users);
-- tests check that it keeps every column of users.
CREATE OR REPLACE VIEW live_users AS
    SELECT integrated_account_id, id, name, first_name, last_name, username, job_title, locale,
           timezone, role, status, organization_id, organization_name, custom_fields, remote_data,
           created_at, updated_at, deleted_at, first_seen_at, last_changed_at,
           last_changed_run_id, content_hash, extra, hydrated_at, hydrated_hash, listed_hash
      FROM users
     WHERE deleted_at IS NULL;

-- The point-in-time functions named their tables unqualified, so they only worked in sessions
-- whose search_path held this schema. They now carry the schema they were created in.
ALTER FUNCTION users_at(uuid, timestamptz) SET search_path FROM CURRENT;
ALTER FUNCTION user_state_at(uuid, text, timestamptz) SET search_path FROM CURRENT;

-- The change history, one row per changed field (inserts, which carry no fields, have none).
CREATE VIEW user_field_changes AS
    SELECT c.integrated_account_id, c.user_id, c.change_id, c.changed_at, c.kind,
           f.key AS field, f.value -> 'old' AS old_value, f.value -> 'new' AS new_value
      FROM user_changes c
     CROSS JOIN LATERAL jsonb_each(c.changed_fields) f;

-- "What changed in this account since …" and "which changes touched field X". The field index
-- skips inserts (no fields), so a first sync does not pay for it.
CREATE INDEX user_changes_by_account_time ON user_changes (integrated_account_id, changed_at);
CREATE INDEX user_changes_fields ON user_changes USING gin (changed_fields)
    WHERE changed_fields IS NOT NULL;

-- Live users per status at the end of each UTC day (today: as of the last run). Maintained
-- after each run by refresh_daily_user_counts, which also fills the days since the account's
-- last row (or, the first time, every day since its first user) from the change history, so
-- the counts agree with users_at(account, end of day) for every day within the history.
CREATE TABLE daily_user_counts (
    integrated_account_id uuid   NOT NULL,
    day                   date   NOT NULL,
    status                text,            -- as users.status; NULL when the LMS gave none
    users                 bigint NOT NULL
);
CREATE INDEX daily_user_counts_by_day ON daily_user_counts (integrated_account_id, day);

-- Recomputes the account's days from its last recorded day (or its first user's) to today.
CREATE FUNCTION refresh_daily_user_counts(p_account uuid) RETURNS bigint
    LANGUAGE plpgsql
    SET search_path FROM CURRENT
    AS $$
DECLARE
    v_today date := (now() AT TIME ZONE 'UTC')::date;
    v_from  date;
    v_rows  bigint;
BEGIN
    SELECT max(day) INTO v_from FROM daily_user_counts WHERE integrated_account_id = p_account;
    IF v_from IS NULL THEN
        SELECT min((first_seen_at AT TIME ZONE 'UTC')::date) INTO v_from
          FROM users WHERE integrated_account_id = p_account;
    END IF;
    v_from := least(coalesce(v_from, v_today), v_today);
    DELETE FROM daily_user_counts WHERE integrated_account_id = p_account AND day >= v_from;
    -- Past days: each user's status and deletion at the end of the day, undoing the changes
    -- recorded after it (as users_at does). Usually none: a run on the same day as the last.
    IF v_from < v_today THEN
    INSERT INTO daily_user_counts (integrated_account_id, day, status, users)
    SELECT p_account, d.day, s.status, count(*)
      FROM (SELECT g::date AS day, (g + interval '1 day') AT TIME ZONE 'UTC' AS t
              FROM generate_series(v_from::timestamp, (v_today - 1)::timestamp, interval '1 day') g) d
      JOIN users u ON u.integrated_account_id = p_account AND u.first_seen_at <= d.t
      LEFT JOIN LATERAL (
               SELECT true AS found, c.changed_fields -> 'status' ->> 'old' AS old
                 FROM user_changes c
                WHERE c.integrated_account_id = p_account AND c.user_id = u.id
                  AND c.changed_at > d.t AND c.changed_fields ? 'status'
                ORDER BY c.change_id LIMIT 1) st ON true
      LEFT JOIN LATERAL (
               SELECT true AS found, c.changed_fields -> 'deleted_at' ->> 'old' AS old
                 FROM user_changes c
                WHERE c.integrated_account_id = p_account AND c.user_id = u.id
                  AND c.changed_at > d.t AND c.changed_fields ? 'deleted_at'
                ORDER BY c.change_id LIMIT 1) del ON true
     CROSS JOIN LATERAL (
               SELECT CASE WHEN st.found THEN st.old ELSE u.status END AS status,
                      CASE WHEN del.found THEN del.old IS NULL ELSE u.deleted_at IS NULL END AS live) s
     WHERE s.live
     GROUP BY d.day, s.status;
    END IF;
    -- Today: as the mirror stands.
    INSERT INTO daily_user_counts (integrated_account_id, day, status, users)
    SELECT p_account, v_today, status, count(*)
      FROM users
     WHERE integrated_account_id = p_account AND deleted_at IS NULL
     GROUP BY status;
    SELECT count(*) INTO v_rows FROM daily_user_counts
     WHERE integrated_account_id = p_account AND day >= v_from;
    RETURN v_rows;
END
$$;

-- The one list of accounts lms-sync works on. Accounts from [[accounts]] are registered with
-- source 'config' when they are synced; tenant_id and truto_status come from Truto's account
-- listing where it is used.
CREATE TABLE accounts (
    integrated_account_id uuid PRIMARY KEY,
    tenant_id             text,
    label                 text,
    source                text        NOT NULL DEFAULT 'config', -- config | discovered
    truto_status          text,                                   -- as Truto last reported it
    paused                boolean     NOT NULL DEFAULT false,
    retired_at            timestamptz,
    first_seen_at         timestamptz NOT NULL DEFAULT now(),
    last_seen_at          timestamptz NOT NULL DEFAULT now()
);
INSERT INTO accounts (integrated_account_id, label, first_seen_at, last_seen_at)
SELECT integrated_account_id, label, coalesce(last_started_at, updated_at), updated_at
  FROM sync_state
ON CONFLICT DO NOTHING;

-- Users with their account's name and tenant, for analysts who think in customers.
CREATE VIEW users_with_account AS
    SELECT u.integrated_account_id, a.label AS account_label, a.tenant_id,
           u.id, u.name, u.first_name, u.last_name, u.username, u.job_title, u.locale,
           u.timezone, u.role, u.status, u.organization_id, u.organization_name,
           u.custom_fields, u.extra, u.created_at, u.updated_at, u.deleted_at, u.first_seen_at,
           u.last_changed_at
      FROM users u
      LEFT JOIN accounts a ON a.integrated_account_id = u.integrated_account_id;

-- A record rejected again, with the same reason and the same raw JSON, updates its row
-- instead of adding one: rejected_records holds each distinct bad record once.
ALTER TABLE rejected_records
    ADD COLUMN record_hash      bytea,
    ADD COLUMN rejections       bigint      NOT NULL DEFAULT 1, -- times it was refused
    ADD COLUMN last_run_id      bigint,                         -- the last run that refused it
    ADD COLUMN last_rejected_at timestamptz;                    -- when (rejected_at: the first time)
UPDATE rejected_records
   SET record_hash = decode(md5(reason || chr(31) || raw), 'hex'),
       last_run_id = run_id, last_rejected_at = rejected_at;
-- Fold the duplicates already stored into their first row.
WITH dup AS (
    SELECT integrated_account_id, record_hash, min(rejection_id) AS keep, count(*) AS n,
           max(run_id) AS last_run, max(rejected_at) AS last_at
      FROM rejected_records GROUP BY 1, 2 HAVING count(*) > 1),
kept AS (
    UPDATE rejected_records r
       SET rejections = dup.n, last_run_id = dup.last_run, last_rejected_at = dup.last_at
      FROM dup WHERE r.rejection_id = dup.keep)
DELETE FROM rejected_records r
 USING dup
 WHERE r.integrated_account_id = dup.integrated_account_id AND r.record_hash = dup.record_hash
   AND r.rejection_id <> dup.keep;
ALTER TABLE rejected_records
    ALTER COLUMN record_hash SET NOT NULL,
    ALTER COLUMN last_run_id SET NOT NULL,
    ALTER COLUMN last_rejected_at SET NOT NULL,
    ALTER COLUMN last_rejected_at SET DEFAULT now();
CREATE UNIQUE INDEX rejected_records_once ON rejected_records (integrated_account_id, record_hash);
CREATE INDEX rejected_records_by_age ON rejected_records (last_rejected_at);
CREATE INDEX sync_runs_by_age ON sync_runs (started_at);

-- The kinds of change, as the history writes them (migration 0005's comment predates 'hydrate').
COMMENT ON COLUMN user_changes.kind IS
    'insert | update | delete | undelete | hydrate (fields first filled in from the full object after an insert)';
