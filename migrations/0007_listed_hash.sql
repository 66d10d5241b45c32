-- The hash of each user's record text exactly as last listed. A listed record with the same
-- hash is the same user, so re-syncs skip decoding it altogether. Rows mirrored before this
-- column existed get their hash at their next unchanged sync (once).
ALTER TABLE users ADD COLUMN listed_hash bytea;
