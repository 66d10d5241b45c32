-- A change feed a downstream loader can follow without missing a change. `change_id` comes
-- from a sequence, taken when the row is written, not when its transaction commits: with
-- accounts synced at once (and replicas), a page's transaction that took change 100 can commit
-- after the one that took 101. A loader that remembers "everything up to 101" has then skipped
-- 100 for good. `xact_id` is the writing transaction's id, and `user_change_feed` shows only
-- the changes of transactions below the oldest one still open: no change can appear later
-- below a position already shown, so `xact_id` (with `change_id` within one transaction) is a
-- cursor any incremental loader may follow with `>`.
-- Compatible with 0028: older binaries name the columns they write, and the default fills
-- `xact_id` for them.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (29, 28);

-- A constant default first (no rewrite of a large history: the rows already there read as 0,
-- written before anything could follow them), then the transaction's id for every new row.
-- bigint rather than xid8, which loaders and warehouses do not know; an xid8 is below 2^63.
ALTER TABLE user_changes ADD COLUMN xact_id bigint NOT NULL DEFAULT 0;
ALTER TABLE user_changes ALTER COLUMN xact_id SET DEFAULT (pg_current_xact_id()::text::bigint);
-- The feed's reads: a loader's position onwards, in the feed's order, so that a poll reads
-- only the rows it returns. On `xact_id` alone, each poll would sort the whole of its first
-- transaction's rows, and the rows already there when this migration runs all share 0 (a
-- poll in the middle of 10 million of them took 3 s, against 2 ms with both columns).
-- B-tree, not BRIN, which has no use once retention frees old pages for new rows.
CREATE INDEX user_changes_by_xact ON user_changes (xact_id, change_id);

-- The changes no open transaction can add to below: those of transactions older than the
-- oldest transaction still running (pg_snapshot_xmin of this statement's snapshot). A change
-- appears here once its transaction and every older writing transaction have ended, usually
-- within a second; a transaction left open elsewhere in the cluster, after writing, delays
-- the feed (never loses from it). Read-only sessions do not.
CREATE VIEW user_change_feed AS
SELECT c.xact_id,
       c.change_id,
       c.integrated_account_id,
       c.user_id,
       c.run_id,
       c.changed_at,
       c.kind,
       c.changed_fields
  FROM user_changes c
 WHERE c.xact_id < pg_snapshot_xmin(pg_current_snapshot())::text::bigint;

-- What retention (history.retention_days) deleted, by account: a loader whose position is below
-- it may have missed some of those changes, which the feed can no longer show.
CREATE TABLE history_pruned (
    integrated_account_id uuid        PRIMARY KEY,
    pruned_through        bigint      NOT NULL,
    pruned_at             timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE history_pruned IS $$What retention deleted from the change history, by account: a loader whose position (xact_id) is below pruned_through may have missed changes the feed no longer shows.$$;
COMMENT ON COLUMN history_pruned.integrated_account_id IS $$The account.$$;
COMMENT ON COLUMN history_pruned.pruned_through IS $$The highest xact_id of the changes retention has deleted for the account.$$;
COMMENT ON COLUMN history_pruned.pruned_at IS $$When retention last deleted some.$$;
COMMENT ON COLUMN user_changes.xact_id IS $$The PostgreSQL transaction that wrote the change (pg_current_xact_id()); 0 for changes written before migration 29. The feed's position: see the view user_change_feed.$$;
COMMENT ON VIEW user_change_feed IS $$The changes of user_changes a loader may take incrementally: only those no open transaction can still add to below. Follow it by (xact_id, change_id) > the last one taken; it never shows a change below a position it has shown.$$;
COMMENT ON COLUMN user_change_feed.xact_id IS $$The position: the transaction that wrote the change. Changes of one transaction share it and appear together.$$;
COMMENT ON COLUMN user_change_feed.change_id IS $$The user_changes row; orders the changes within one xact_id.$$;
COMMENT ON COLUMN user_change_feed.integrated_account_id IS $$The user's integrated account.$$;
COMMENT ON COLUMN user_change_feed.user_id IS $$The user (users.id).$$;
COMMENT ON COLUMN user_change_feed.run_id IS $$The sync_runs.run_id that applied the change.$$;
COMMENT ON COLUMN user_change_feed.changed_at IS $$When the mirror changed (the run's transaction), not the LMS's updated_at.$$;
COMMENT ON COLUMN user_change_feed.kind IS $$insert, update, delete, undelete or hydrate.$$;
COMMENT ON COLUMN user_change_feed.changed_fields IS $${"field": {"old": …, "new": …}} for each field that changed; NULL for insert.$$;
