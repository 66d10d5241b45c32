-- `accounts sync-now` (and the admin route `POST /accounts/{id}/sync`, which took a `?reason=`
-- and dropped it) recorded in `account_actions`, as the other steering actions are: an
-- operator asking why an account ran off its schedule, or why a quota was spent at night,
-- finds who asked for it, when and why. Only a request made for someone through lms-sync's
-- commands or admin routes (`lms_sync.actor` set) is an operator's action: the service asks
-- for runs itself (an account discovered, reconnected or announced by a webhook), and
-- `allow-deletes`, recorded as such, asks for one too.
-- Compatible with 0028: older binaries' `sync-now` is recorded the same way.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (35, 28);

CREATE OR REPLACE FUNCTION record_account_actions() RETURNS trigger
    LANGUAGE plpgsql
    SECURITY DEFINER
    SET search_path FROM CURRENT
AS $$
DECLARE
    actor  text := nullif(current_setting('lms_sync.actor', true), '');
    reason text := nullif(current_setting('lms_sync.reason', true), '');
    app    text := nullif(current_setting('application_name', true), '');
    done   text[] := '{}';
    a      text;
BEGIN
    IF NEW.paused IS DISTINCT FROM OLD.paused THEN
        done := done || CASE WHEN NEW.paused THEN 'pause' ELSE 'resume' END;
    END IF;
    IF (NEW.protected_at IS NULL) <> (OLD.protected_at IS NULL) THEN
        done := done || CASE WHEN NEW.protected_at IS NULL THEN 'unprotect' ELSE 'protect' END;
    END IF;
    IF NEW.reset_cursor_requested AND NOT OLD.reset_cursor_requested THEN
        done := done || 'reset_cursor'::text;
    END IF;
    IF NEW.allow_deletes_requested AND NOT OLD.allow_deletes_requested THEN
        done := done || 'allow_deletes'::text;
    ELSIF actor IS NOT NULL AND NEW.sync_requested_at IS NOT NULL
          AND NEW.sync_requested_at IS DISTINCT FROM OLD.sync_requested_at THEN
        done := done || 'sync_now'::text;
    END IF;
    -- A pause given another end (or none, or an end where it had none) while it lasts.
    IF NEW.paused AND OLD.paused AND NEW.paused_until IS DISTINCT FROM OLD.paused_until THEN
        done := done || 'pause_end'::text;
    END IF;
    -- The table named with its schema (that of `accounts`): unqualified, a temporary table
    -- of the caller's named account_actions would come first and take the record.
    FOREACH a IN ARRAY done LOOP
        EXECUTE format(
            'INSERT INTO %I.account_actions
                    (integrated_account_id, action, actor, db_user, application, reason)
             VALUES ($1, $2, $3, $4, $5, $6)', TG_TABLE_SCHEMA)
        USING NEW.integrated_account_id, a, actor, session_user::text, app, reason;
    END LOOP;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION record_account_actions() IS $$Trigger of accounts: records pause, resume, pause_end, protect, unprotect, reset_cursor, allow_deletes and sync_now (asked through lms-sync's commands or admin routes) in account_actions.$$;

CREATE OR REPLACE TRIGGER accounts_record_actions
    AFTER UPDATE OF paused, paused_until, protected_at, reset_cursor_requested,
                    allow_deletes_requested, sync_requested_at
    ON accounts
    FOR EACH ROW EXECUTE FUNCTION record_account_actions();

COMMENT ON COLUMN account_actions.action IS $$pause, resume, pause_end (a pause given another end while it lasts), protect, unprotect, reset_cursor, allow_deletes or sync_now (asked through lms-sync's commands or admin routes).$$;
