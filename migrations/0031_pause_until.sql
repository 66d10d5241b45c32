-- `accounts pause --until`: a pause that ends by itself. An operator holding a customer's
-- accounts for a night (an LMS migration, a maintenance window) had to remember to resume
-- them; a pause forgotten leaves the mirror stale for days (the alert after 7 days says so,
-- late). The service (whichever replica looks first) resumes such an account once the time
-- has come, recorded in `account_actions` as a `resume` by lms-sync, as any resume is. A pause
-- given another end while it lasts is recorded too (`pause_end`), so that the trail says who
-- made a pause end, or last forever.
-- Compatible with 0028: older binaries neither set nor read it (their pauses last until a
-- resume, and a timed pause waits for a binary that knows it to end it).
INSERT INTO migration_compat (version, oldest_compatible) VALUES (31, 28);

ALTER TABLE accounts ADD COLUMN paused_until timestamptz;
COMMENT ON COLUMN accounts.paused_until IS $$Set by lms-sync accounts pause --until: when the service resumes the account by itself; NULL for a pause that lasts until a resume.$$;

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
COMMENT ON FUNCTION record_account_actions() IS $$Trigger of accounts: records pause, resume, pause_end, protect, unprotect, reset_cursor and allow_deletes in account_actions.$$;

CREATE OR REPLACE TRIGGER accounts_record_actions
    AFTER UPDATE OF paused, paused_until, protected_at, reset_cursor_requested, allow_deletes_requested
    ON accounts
    FOR EACH ROW EXECUTE FUNCTION record_account_actions();

COMMENT ON COLUMN account_actions.action IS $$pause, resume, pause_end (a pause given another end while it lasts), protect, unprotect, reset_cursor or allow_deletes.$$;
