-- `account_actions`: who paused, resumed, protected, unprotected or reset the cursor of an
-- account, when, and why. A legal hold lifted (`accounts unprotect`) and then purged must be
-- answerable to an auditor, and a paused account months later to the next operator. A trigger
-- on `accounts` writes it, so every way of changing the registry is recorded: lms-sync's
-- commands and admin routes (which say who they act for, in `actor`, and why, in `reason`), an
-- older binary, and plain SQL (whose session's role and application are recorded all the same).
-- Kept when the account is purged, as `account_purges` is: it holds no user's data.
-- Compatible with 0027: older binaries' updates are recorded too, without an actor.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (28, 27);

CREATE TABLE account_actions (
    action_id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    integrated_account_id uuid        NOT NULL,
    acted_at              timestamptz NOT NULL DEFAULT now(),
    action                text        NOT NULL,
    actor                 text,
    db_user               text        NOT NULL,
    application           text,
    reason                text
);
CREATE INDEX account_actions_by_account ON account_actions (integrated_account_id, action_id);

-- As the schema's owner (SECURITY DEFINER), so that a role allowed to update `accounts` needs
-- no right on `account_actions` and cannot leave an update unrecorded; `session_user` is still
-- the role that logged in.
CREATE FUNCTION record_account_actions() RETURNS trigger
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

CREATE TRIGGER accounts_record_actions
    AFTER UPDATE OF paused, protected_at, reset_cursor_requested ON accounts
    FOR EACH ROW EXECUTE FUNCTION record_account_actions();

COMMENT ON TABLE account_actions IS $$Who paused, resumed, protected, unprotected or reset the cursor of an account, when and why: one row per action, whatever made it (lms-sync's commands and admin routes, or SQL). Kept when the account is purged.$$;
COMMENT ON COLUMN account_actions.action_id IS $$Primary key, increasing.$$;
COMMENT ON COLUMN account_actions.integrated_account_id IS $$The account acted on.$$;
COMMENT ON COLUMN account_actions.acted_at IS $$When (the transaction that made the change).$$;
COMMENT ON COLUMN account_actions.action IS $$pause, resume, protect, unprotect or reset_cursor.$$;
COMMENT ON COLUMN account_actions.actor IS $$Who lms-sync acted for, as it says (e.g. lms-sync accounts pause by ops@bastion, or the admin API from 10.0.0.7); NULL for SQL and binaries older than migration 28.$$;
COMMENT ON COLUMN account_actions.db_user IS $$The PostgreSQL role of the session that made the change (session_user).$$;
COMMENT ON COLUMN account_actions.application IS $$That session's application_name (lms-sync's own, psql, …).$$;
COMMENT ON COLUMN account_actions.reason IS $$Why, as given (lms-sync accounts … --reason, or the admin route's ?reason=); NULL when not given.$$;
COMMENT ON FUNCTION record_account_actions() IS $$Trigger of accounts: records pause, resume, protect, unprotect and reset_cursor in account_actions.$$;
