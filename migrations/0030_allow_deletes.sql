-- `accounts allow-deletes`: the way past the delete guard for one account, once. When a
-- customer really removes most of its users (an offboarding, an LMS that recreated every user
-- under a new id), each run of the account ended as needs_attention, deleting nothing, until
-- someone raised `max_delete_fraction` in the account's configuration (an `[[accounts]]`
-- entry for a discovered account, a restart) and lowered it again afterwards. The flag lets
-- the account's next complete, fresh listing delete whatever it no longer lists, whatever the
-- share, and is cleared by it; the guard is back for the run after. Recorded in
-- `account_actions` like the other operators' changes.
-- Compatible with 0028: older binaries neither set nor read the flag (their guard holds).
INSERT INTO migration_compat (version, oldest_compatible) VALUES (30, 28);

ALTER TABLE accounts ADD COLUMN allow_deletes_requested boolean NOT NULL DEFAULT false;
COMMENT ON COLUMN accounts.allow_deletes_requested IS $$Set by lms-sync accounts allow-deletes: the next complete, fresh listing deletes whatever it no longer lists, past the delete guard; cleared by it.$$;

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
COMMENT ON FUNCTION record_account_actions() IS $$Trigger of accounts: records pause, resume, protect, unprotect, reset_cursor and allow_deletes in account_actions.$$;

CREATE OR REPLACE TRIGGER accounts_record_actions
    AFTER UPDATE OF paused, protected_at, reset_cursor_requested, allow_deletes_requested ON accounts
    FOR EACH ROW EXECUTE FUNCTION record_account_actions();

COMMENT ON TABLE account_actions IS $$Who paused, resumed, protected, unprotected, reset the cursor of or allowed deletes for an account, when and why: one row per action, whatever made it (lms-sync's commands and admin routes, or SQL). Kept when the account is purged.$$;
COMMENT ON COLUMN account_actions.action IS $$pause, resume, protect, unprotect, reset_cursor or allow_deletes.$$;
