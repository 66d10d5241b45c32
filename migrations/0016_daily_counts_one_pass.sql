-- refresh_daily_user_counts, the first time for an account, reads its users once instead of
-- twice: the first day and today's counts come from the same pass (before, one scan found the
-- first user's day and a second counted today's live users). The results are the same; an
-- account's first sync ends sooner. Compatible with 0015: the function's name, arguments and
-- results do not change.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (16, 15);

CREATE OR REPLACE FUNCTION refresh_daily_user_counts(p_account uuid) RETURNS bigint
    LANGUAGE plpgsql
    SET search_path FROM CURRENT
    AS $$
DECLARE
    v_today    date := (now() AT TIME ZONE 'UTC')::date;
    v_from     date;
    v_first    boolean;
    v_statuses text[];
    v_live     bigint[];
    v_rows     bigint;
BEGIN
    SELECT max(day) INTO v_from FROM daily_user_counts WHERE integrated_account_id = p_account;
    v_first := v_from IS NULL;
    IF v_first THEN
        -- Every day since the first user's, and today's live users per status, in one pass.
        SELECT min(x.first_day),
               array_agg(x.status) FILTER (WHERE x.live > 0),
               array_agg(x.live) FILTER (WHERE x.live > 0)
          INTO v_from, v_statuses, v_live
          FROM (SELECT status, min((first_seen_at AT TIME ZONE 'UTC')::date) AS first_day,
                       count(*) FILTER (WHERE deleted_at IS NULL) AS live
                  FROM users WHERE integrated_account_id = p_account
                 GROUP BY status) x;
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
    -- Today: as the mirror stands. The first time, from the pass above; later, from the live
    -- users alone (users_live_by_account), since deleted users stay in the mirror for good.
    IF v_first THEN
        INSERT INTO daily_user_counts (integrated_account_id, day, status, users)
        SELECT p_account, v_today, t.status, t.live
          FROM unnest(v_statuses, v_live) AS t(status, live);
    ELSE
        INSERT INTO daily_user_counts (integrated_account_id, day, status, users)
        SELECT p_account, v_today, status, count(*)
          FROM users
         WHERE integrated_account_id = p_account AND deleted_at IS NULL
         GROUP BY status;
    END IF;
    SELECT count(*) INTO v_rows FROM daily_user_counts
     WHERE integrated_account_id = p_account AND day >= v_from;
    RETURN v_rows;
END
$$;
