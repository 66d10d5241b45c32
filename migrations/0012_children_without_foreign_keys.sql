-- The children of a user (emails, phones, manager link) no longer carry foreign keys to users.
-- Their integrity is lms-sync's: it writes a user's children in the same transaction as the
-- user, under the account's lease, and never deletes a user row (a deleted user is marked,
-- `deleted_at`); only `lms-sync accounts purge` removes an account's rows, children first.
-- The foreign keys cost a lookup per child row: a first sync of 100,000 users spent about a
-- second (of three) on them — more than writing the users themselves.
-- Compatible with 0011: older binaries never relied on the cascade.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (12, 11);

ALTER TABLE user_emails   DROP CONSTRAINT IF EXISTS user_emails_integrated_account_id_user_id_fkey;
ALTER TABLE user_phones   DROP CONSTRAINT IF EXISTS user_phones_integrated_account_id_user_id_fkey;
ALTER TABLE user_managers DROP CONSTRAINT IF EXISTS user_managers_integrated_account_id_user_id_fkey;
