-- Top-level fields of the unified user that lms-sync does not map to a column yet (the unified
-- model grows). Kept as given, so nothing upstream sends is lost; a later migration can turn
-- one into a column and backfill it from here, without fetching anything again.
ALTER TABLE users ADD COLUMN extra jsonb;
