-- Change history: one row per change lms-sync applied to a user, written in the same
-- transaction as the change itself, so the history and the mirror never disagree.

-- An instant as text, the same in every session whatever its TimeZone: the history's JSON
-- must compare equal across sessions.
CREATE FUNCTION iso_utc(t timestamptz) RETURNS text
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') $$;

-- Each user's mirrored state as one JSON object (remote_data aside): what the history diffs.
CREATE VIEW user_snapshots AS
SELECT u.integrated_account_id,
       u.id AS user_id,
       u.first_seen_at,
       jsonb_build_object(
           'name', u.name,
           'first_name', u.first_name,
           'last_name', u.last_name,
           'username', u.username,
           'job_title', u.job_title,
           'locale', u.locale,
           'timezone', u.timezone,
           'role', u.role,
           'status', u.status,
           'organization_id', u.organization_id,
           'organization_name', u.organization_name,
           'custom_fields', u.custom_fields,
           'extra', u.extra,
           'created_at', iso_utc(u.created_at),
           'updated_at', iso_utc(u.updated_at),
           'deleted_at', iso_utc(u.deleted_at),
           'emails', coalesce((
               SELECT jsonb_agg(jsonb_build_object('email', e.email, 'is_primary', e.is_primary,
                                                   'type', e.type) ORDER BY e.position)
                 FROM user_emails e
                WHERE e.integrated_account_id = u.integrated_account_id AND e.user_id = u.id),
               '[]'::jsonb),
           'phones', coalesce((
               SELECT jsonb_agg(jsonb_build_object('number', p.number, 'extension', p.extension,
                                                   'type', p.type) ORDER BY p.position)
                 FROM user_phones p
                WHERE p.integrated_account_id = u.integrated_account_id AND p.user_id = u.id),
               '[]'::jsonb),
           'manager', (
               SELECT jsonb_build_object('id', m.manager_id, 'name', m.manager_name,
                                         'emails', m.manager_emails)
                 FROM user_managers m
                WHERE m.integrated_account_id = u.integrated_account_id AND m.user_id = u.id)
       ) AS state
  FROM users u;

CREATE TABLE user_changes (
    change_id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    integrated_account_id uuid        NOT NULL,
    user_id               text        NOT NULL,
    run_id                bigint      NOT NULL,  -- the sync run that applied it
    changed_at            timestamptz NOT NULL DEFAULT now(), -- when the mirror changed
    -- insert | update | delete | undelete
    kind                  text        NOT NULL,
    -- {"field": {"old": ..., "new": ...}} for each field of user_snapshots.state that changed;
    -- NULL for an insert (the inserted state is user_state_at(account, user, changed_at)).
    changed_fields        jsonb
);
CREATE INDEX user_changes_by_user ON user_changes (integrated_account_id, user_id, changed_at);
-- Retention deletes by age; rows arrive in time order, so a BRIN index is tiny and enough.
CREATE INDEX user_changes_by_time ON user_changes USING brin (changed_at);

-- One user's state at an instant: NULL if the mirror did not have the user yet. Exact for any
-- instant within history.retention_days (and since history was enabled).
CREATE FUNCTION user_state_at(p_account uuid, p_user_id text, p_at timestamptz) RETURNS jsonb
    LANGUAGE sql STABLE
    AS $$
    SELECT s.state || coalesce((
               SELECT jsonb_object_agg(f.key, f.old)
                 FROM (SELECT DISTINCT ON (e.key) e.key, e.value -> 'old' AS old
                         FROM user_changes c CROSS JOIN LATERAL jsonb_each(c.changed_fields) e
                        WHERE c.integrated_account_id = p_account AND c.user_id = p_user_id
                          AND c.changed_at > p_at
                        ORDER BY e.key, c.change_id) f),
           '{}'::jsonb)
      FROM user_snapshots s
     WHERE s.integrated_account_id = p_account AND s.user_id = p_user_id
       AND s.first_seen_at <= p_at
$$;

-- Every user of an account as the mirror held them at an instant (deleted ones included:
-- state->>'deleted_at' IS NULL means live then).
CREATE FUNCTION users_at(p_account uuid, p_at timestamptz)
    RETURNS TABLE (user_id text, state jsonb)
    LANGUAGE sql STABLE
    AS $$
    SELECT s.user_id, s.state || coalesce(o.old, '{}'::jsonb)
      FROM user_snapshots s
      LEFT JOIN (SELECT x.user_id, jsonb_object_agg(x.key, x.old) AS old
                   FROM (SELECT DISTINCT ON (c.user_id, e.key) c.user_id, e.key, e.value -> 'old' AS old
                           FROM user_changes c CROSS JOIN LATERAL jsonb_each(c.changed_fields) e
                          WHERE c.integrated_account_id = p_account AND c.changed_at > p_at
                          ORDER BY c.user_id, e.key, c.change_id) x
                  GROUP BY x.user_id) o ON o.user_id = s.user_id
     WHERE s.integrated_account_id = p_account AND s.first_seen_at <= p_at
$$;
