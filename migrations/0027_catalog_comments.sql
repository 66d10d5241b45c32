-- What docs/schema.md says of each table, view, column and function, also in the catalog, so
-- that `\d+` in psql and the column descriptions of BI and catalog tools (Metabase, DBeaver,
-- dbt's `docs generate`, DataHub) tell an analyst what a column means where they meet it.
-- A test holds every later migration to it: a table, view, column or function without a
-- comment fails the build, and a table's comment begins as its heading in docs/schema.md.
-- Compatible with 0026: comments change nothing a binary reads or writes.
INSERT INTO migration_compat (version, oldest_compatible) VALUES (27, 26);

-- users -------------------------------------------------------------------------------------
COMMENT ON TABLE users IS $$One row per user ever seen, by integrated account. Deleted users keep their rows (and their emails, phones and manager link): filter on deleted_at IS NULL, or use the view live_users.$$;
COMMENT ON COLUMN users.integrated_account_id IS $$The Truto integrated account (one customer's LMS); primary key with id.$$;
COMMENT ON COLUMN users.id IS $$The LMS's user id; primary key with integrated_account_id.$$;
COMMENT ON COLUMN users.name IS $$The user's full name, as the LMS gives it; NULL when absent.$$;
COMMENT ON COLUMN users.first_name IS $$The user's first name, as the LMS gives it; NULL when absent.$$;
COMMENT ON COLUMN users.last_name IS $$The user's last name, as the LMS gives it; NULL when absent.$$;
COMMENT ON COLUMN users.username IS $$The user's login name in the LMS; NULL when absent.$$;
COMMENT ON COLUMN users.job_title IS $$The user's job title, as the LMS gives it; NULL when absent.$$;
COMMENT ON COLUMN users.locale IS $$The user's locale (e.g. en-US), as the LMS gives it; NULL when absent.$$;
COMMENT ON COLUMN users.timezone IS $$The user's time zone (e.g. Europe/Athens), as the LMS gives it; NULL when absent.$$;
COMMENT ON COLUMN users.role IS $$learner, instructor, admin, manager, other, or any new value the vendor sends, kept as-is (see unknown_enum_values).$$;
COMMENT ON COLUMN users.status IS $$active, inactive, invited, suspended, deleted, unknown, or any new value the vendor sends, kept as-is (see unknown_enum_values).$$;
COMMENT ON COLUMN users.organization_id IS $$The user's organization in the LMS.$$;
COMMENT ON COLUMN users.organization_name IS $$The user's organization in the LMS.$$;
COMMENT ON COLUMN users.custom_fields IS $$The LMS's custom fields, as JSON.$$;
COMMENT ON COLUMN users.remote_data IS $$The vendor's raw record (NULL for accounts with ignore_remote_data).$$;
COMMENT ON COLUMN users.extra IS $$Top-level fields of the unified record not mapped to a column yet (NULL when none): nothing upstream sends is dropped. E.g. extra->>'hire_date'.$$;
COMMENT ON COLUMN users.created_at IS $$When the user was created, as the LMS says (not lms-sync's time).$$;
COMMENT ON COLUMN users.updated_at IS $$When the user was last updated, as the LMS says (not lms-sync's time).$$;
COMMENT ON COLUMN users.deleted_at IS $$NULL while the user exists upstream; set when the user vanished from a complete listing; cleared if the user reappears.$$;
COMMENT ON COLUMN users.first_seen_at IS $$When lms-sync first stored the user.$$;
COMMENT ON COLUMN users.last_changed_at IS $$When lms-sync last changed the row (content, deletion or reappearance).$$;
COMMENT ON COLUMN users.last_changed_run_id IS $$The sync_runs.run_id that last changed the row.$$;
COMMENT ON COLUMN users.content_hash IS $$Internal: hash of everything mirrored for the user.$$;
COMMENT ON COLUMN users.hydrated_at IS $$Accounts with hydrate = true: when the full object was last merged into the row (NULL: not yet).$$;
COMMENT ON COLUMN users.hydrated_hash IS $$Internal: hash of the full object last merged.$$;
COMMENT ON COLUMN users.listed_hash IS $$Internal: hash of the record's text as last listed (a re-sync skips decoding an unchanged record).$$;

-- the children ------------------------------------------------------------------------------
COMMENT ON TABLE user_emails IS $$One row per email of a user, in the LMS's order. Belongs to users by (integrated_account_id, user_id).$$;
COMMENT ON COLUMN user_emails.integrated_account_id IS $$The user's integrated account.$$;
COMMENT ON COLUMN user_emails.user_id IS $$The user (users.id).$$;
COMMENT ON COLUMN user_emails.position IS $$0, 1, … in the order the LMS gives the emails.$$;
COMMENT ON COLUMN user_emails.email IS $$The address, as given.$$;
COMMENT ON COLUMN user_emails.is_primary IS $$Whether the LMS marks it primary; NULL when it does not say (see the view user_primary_email).$$;
COMMENT ON COLUMN user_emails.type IS $$work, personal, … or NULL.$$;

COMMENT ON TABLE user_phones IS $$One row per phone of a user, in the LMS's order. Belongs to users by (integrated_account_id, user_id).$$;
COMMENT ON COLUMN user_phones.integrated_account_id IS $$The user's integrated account.$$;
COMMENT ON COLUMN user_phones.user_id IS $$The user (users.id).$$;
COMMENT ON COLUMN user_phones.position IS $$0, 1, … in the order the LMS gives the phones.$$;
COMMENT ON COLUMN user_phones.number IS $$The number, as given.$$;
COMMENT ON COLUMN user_phones.extension IS $$The extension, as given; NULL when none.$$;
COMMENT ON COLUMN user_phones.type IS $$work, mobile, … or NULL.$$;

COMMENT ON TABLE user_managers IS $$One row per user that has a manager. The manager need not be a mirrored user: join through the view users_with_manager.$$;
COMMENT ON COLUMN user_managers.integrated_account_id IS $$The user's integrated account.$$;
COMMENT ON COLUMN user_managers.user_id IS $$The user (users.id) whose manager this is.$$;
COMMENT ON COLUMN user_managers.manager_id IS $$The manager's user id in the LMS; NULL when the LMS named a manager without an id.$$;
COMMENT ON COLUMN user_managers.manager_name IS $$The manager's name, as the LMS gives it.$$;
COMMENT ON COLUMN user_managers.manager_emails IS $$The manager's emails (JSON), as the LMS gives them.$$;

-- runs and state ----------------------------------------------------------------------------
COMMENT ON TABLE sync_runs IS $$One row per sync run of one account. Kept for history.sync_runs_retention_days (an account's latest run always stays).$$;
COMMENT ON COLUMN sync_runs.run_id IS $$Primary key, increasing.$$;
COMMENT ON COLUMN sync_runs.integrated_account_id IS $$The account the run synced.$$;
COMMENT ON COLUMN sync_runs.started_at IS $$When the run started.$$;
COMMENT ON COLUMN sync_runs.finished_at IS $$When the run ended; NULL while running.$$;
COMMENT ON COLUMN sync_runs.outcome IS $$running, succeeded, needs_attention (synced, deletions not applied: see deletions_skipped_reason), failed (see error) or interrupted (the next run resumes).$$;
COMMENT ON COLUMN sync_runs.resumed IS $$Whether the run resumed an unfinished listing from its saved cursor.$$;
COMMENT ON COLUMN sync_runs.complete_listing IS $$Whether the run read the account's whole listing (only then are deletions applied).$$;
COMMENT ON COLUMN sync_runs.pages IS $$Pages of users committed.$$;
COMMENT ON COLUMN sync_runs.users_seen IS $$Users listed.$$;
COMMENT ON COLUMN sync_runs.inserted IS $$Users new to the mirror.$$;
COMMENT ON COLUMN sync_runs.updated IS $$Users whose mirrored data changed.$$;
COMMENT ON COLUMN sync_runs.unchanged IS $$Users listed and found unchanged.$$;
COMMENT ON COLUMN sync_runs.deleted IS $$Users marked deleted (vanished from a complete listing).$$;
COMMENT ON COLUMN sync_runs.undeleted IS $$Deleted users that reappeared.$$;
COMMENT ON COLUMN sync_runs.rejected IS $$Records that could not be stored (see rejected_records).$$;
COMMENT ON COLUMN sync_runs.duplicates IS $$Records whose user id came again in the same page (the last one is kept).$$;
COMMENT ON COLUMN sync_runs.http_requests IS $$Requests the run made that an answer or a failure ended (pages, a page that failed for good, hydration GETs).$$;
COMMENT ON COLUMN sync_runs.retries IS $$Requests tried again.$$;
COMMENT ON COLUMN sync_runs.rate_limited IS $$Answers 429 (too many requests) the run received.$$;
COMMENT ON COLUMN sync_runs.deletions_skipped_reason IS $$With outcome needs_attention: why deletions were not applied (the delete guard, or a partial response from the vendor).$$;
COMMENT ON COLUMN sync_runs.error_kind IS $$Why a failed or interrupted run ended: bad_token, needs_reauth, forbidden, not_found, blocked, rate_limited, http_error, timeout, connect, network, invalid_page, listing, database, interrupted, lease_lost.$$;
COMMENT ON COLUMN sync_runs.error IS $$What went wrong and what to do; NULL for a run that succeeded.$$;
COMMENT ON COLUMN sync_runs.worker IS $$The process that ran it (host:pid).$$;
COMMENT ON COLUMN sync_runs.hydrated IS $$Accounts with hydrate = true: full objects merged or found unchanged.$$;
COMMENT ON COLUMN sync_runs.hydration_failures IS $$Accounts with hydrate = true: GETs of full objects that failed (those users stay queued).$$;

COMMENT ON TABLE sync_state IS $$One row per account: its last run's outcome, where an unfinished listing resumes, the current run's counters and the account's health.$$;
COMMENT ON COLUMN sync_state.integrated_account_id IS $$The account; primary key.$$;
COMMENT ON COLUMN sync_state.label IS $$The account's label.$$;
COMMENT ON COLUMN sync_state.status IS $$The last run's outcome, or running.$$;
COMMENT ON COLUMN sync_state.current_run_id IS $$The sync_runs.run_id of the run under way or last run.$$;
COMMENT ON COLUMN sync_state.cursor IS $$Where an unfinished listing resumes; NULL = from the start.$$;
COMMENT ON COLUMN sync_state.listing_run_id IS $$The run that began the listing the cursor belongs to.$$;
COMMENT ON COLUMN sync_state.pages IS $$The current run's pages so far.$$;
COMMENT ON COLUMN sync_state.users_seen IS $$The current run's users listed so far.$$;
COMMENT ON COLUMN sync_state.inserted IS $$The current run's new users so far.$$;
COMMENT ON COLUMN sync_state.updated IS $$The current run's changed users so far.$$;
COMMENT ON COLUMN sync_state.unchanged IS $$The current run's unchanged users so far.$$;
COMMENT ON COLUMN sync_state.deleted IS $$The current run's deleted users so far.$$;
COMMENT ON COLUMN sync_state.rejected IS $$The current run's rejected records so far.$$;
COMMENT ON COLUMN sync_state.last_started_at IS $$When the last run started.$$;
COMMENT ON COLUMN sync_state.last_finished_at IS $$When the last run ended.$$;
COMMENT ON COLUMN sync_state.last_succeeded_at IS $$When a run last succeeded; NULL if none has.$$;
COMMENT ON COLUMN sync_state.last_outcome IS $$The last finished run's outcome (as sync_runs.outcome).$$;
COMMENT ON COLUMN sync_state.last_error IS $$The last failed run's error.$$;
COMMENT ON COLUMN sync_state.consecutive_failures IS $$Runs in a row that failed.$$;
COMMENT ON COLUMN sync_state.updated_at IS $$When this row last changed.$$;
COMMENT ON COLUMN sync_state.health IS $$ok, or why the account cannot be synced until someone acts upstream: needs_reauth, blocked, not_found, forbidden.$$;
COMMENT ON COLUMN sync_state.health_since IS $$When the current health began (NULL if the account was always ok).$$;
COMMENT ON COLUMN sync_state.health_reason IS $$The error that set the health (NULL while ok).$$;
COMMENT ON COLUMN sync_state.health_failures IS $$Failed probes in a row while unhealthy.$$;
COMMENT ON COLUMN sync_state.live_user_count IS $$The account's live users as its last run left them (NULL until a run under migration 0020 ends).$$;
COMMENT ON COLUMN sync_state.deleted_user_count IS $$The account's deleted users as its last run left them (NULL until a run under migration 0020 ends).$$;
COMMENT ON COLUMN sync_state.held_until IS $$While the server asked to wait longer than truto.max_retry_wait_secs (a vendor's quota spent): the end of that wait, before which no process runs the account; NULL otherwise.$$;

-- history -----------------------------------------------------------------------------------
COMMENT ON TABLE user_changes IS $$One row per change lms-sync applied to a user, written in the same transaction as the change. Unchanged users add nothing; rows older than history.retention_days are deleted (0 keeps them). Per field: the view user_field_changes.$$;
COMMENT ON COLUMN user_changes.change_id IS $$Increasing; orders the changes.$$;
COMMENT ON COLUMN user_changes.integrated_account_id IS $$The user's integrated account.$$;
COMMENT ON COLUMN user_changes.user_id IS $$The user (users.id).$$;
COMMENT ON COLUMN user_changes.run_id IS $$The sync_runs.run_id that applied the change.$$;
COMMENT ON COLUMN user_changes.changed_at IS $$When the mirror changed (the run's transaction), not the LMS's updated_at.$$;
COMMENT ON COLUMN user_changes.changed_fields IS $${"field": {"old": …, "new": …}} for each field that changed (the keys of user_snapshots.state); NULL for insert.$$;

COMMENT ON TABLE hydration_queue IS $$Users waiting for their full object (accounts with hydrate = true): queued when new or changed, gone once the full object is merged.$$;
COMMENT ON COLUMN hydration_queue.integrated_account_id IS $$The user's integrated account.$$;
COMMENT ON COLUMN hydration_queue.user_id IS $$The user (users.id).$$;
COMMENT ON COLUMN hydration_queue.queued_at IS $$When the user was queued.$$;
COMMENT ON COLUMN hydration_queue.attempts IS $$Failed GETs since it was queued.$$;
COMMENT ON COLUMN hydration_queue.next_attempt_at IS $$When the next GET may be tried.$$;
COMMENT ON COLUMN hydration_queue.last_error IS $$Why the last GET failed.$$;

COMMENT ON TABLE rejected_records IS $$Records lms-sync could not store. A record refused again with the same reason and JSON updates its row; rows not refused again for history.rejected_records_retention_days are deleted.$$;
COMMENT ON COLUMN rejected_records.rejection_id IS $$Primary key.$$;
COMMENT ON COLUMN rejected_records.integrated_account_id IS $$The account it was listed in.$$;
COMMENT ON COLUMN rejected_records.run_id IS $$The run that first refused it.$$;
COMMENT ON COLUMN rejected_records.user_id IS $$The record's user id, when it had a usable one (that user's mirrored row stays as it was).$$;
COMMENT ON COLUMN rejected_records.reason IS $$Why it was refused.$$;
COMMENT ON COLUMN rejected_records.raw IS $$The record's JSON, as text.$$;
COMMENT ON COLUMN rejected_records.rejected_at IS $$The first time it was refused.$$;
COMMENT ON COLUMN rejected_records.record_hash IS $$Internal: identifies the same record refused again.$$;
COMMENT ON COLUMN rejected_records.rejections IS $$How many times it was refused.$$;
COMMENT ON COLUMN rejected_records.last_run_id IS $$The run that last refused it.$$;
COMMENT ON COLUMN rejected_records.last_rejected_at IS $$The last time it was refused.$$;

-- the registry ------------------------------------------------------------------------------
COMMENT ON TABLE accounts IS $$The accounts lms-sync works on (the registry): configured ones and those Truto lists. Every process reads it every few seconds, so a change (by lms-sync accounts … or by SQL) is obeyed without a restart.$$;
COMMENT ON COLUMN accounts.integrated_account_id IS $$The Truto integrated account; primary key.$$;
COMMENT ON COLUMN accounts.tenant_id IS $$The customer, as Truto knows it.$$;
COMMENT ON COLUMN accounts.label IS $$The label given in [[accounts]]; NULL for discovered accounts (tenant_id names them).$$;
COMMENT ON COLUMN accounts.source IS $$config (from [[accounts]]) or discovered (from Truto's list of integrated accounts).$$;
COMMENT ON COLUMN accounts.truto_status IS $$As Truto last reported it: active, connecting, post_install_error, validation_error, needs_reauth, ….$$;
COMMENT ON COLUMN accounts.paused IS $$Set by lms-sync accounts pause: no run starts until resume.$$;
COMMENT ON COLUMN accounts.retired_at IS $$When Truto stopped listing it: never requested again, its rows kept; NULL again if it reappears.$$;
COMMENT ON COLUMN accounts.first_seen_at IS $$When lms-sync first registered it.$$;
COMMENT ON COLUMN accounts.last_seen_at IS $$When a discovery listing last named it (a configured account never listed: when it was registered).$$;
COMMENT ON COLUMN accounts.integration IS $$Truto's integration.name (the vendor, e.g. talentlms).$$;
COMMENT ON COLUMN accounts.is_sandbox IS $$Whether Truto marks it a sandbox.$$;
COMMENT ON COLUMN accounts.sync_requested_at IS $$Set by lms-sync accounts sync-now: a run starts within seconds.$$;
COMMENT ON COLUMN accounts.reset_cursor_requested IS $$Set by lms-sync accounts reset-cursor: the next run lists from the start.$$;
COMMENT ON COLUMN accounts.protected_at IS $$Set by lms-sync accounts protect (a legal hold): since when no purge may delete its data; NULL when not protected.$$;

COMMENT ON TABLE account_purges IS $$Accounts whose data was deleted: one row per purge, kept after the data is gone. A purge is one transaction.$$;
COMMENT ON COLUMN account_purges.purge_id IS $$Primary key.$$;
COMMENT ON COLUMN account_purges.integrated_account_id IS $$The purged account.$$;
COMMENT ON COLUMN account_purges.tenant_id IS $$As the registry had it.$$;
COMMENT ON COLUMN account_purges.label IS $$As the registry had it.$$;
COMMENT ON COLUMN account_purges.integration IS $$As the registry had it.$$;
COMMENT ON COLUMN account_purges.first_seen_at IS $$As the registry had it.$$;
COMMENT ON COLUMN account_purges.retired_at IS $$When Truto stopped listing the account.$$;
COMMENT ON COLUMN account_purges.purged_at IS $$When the data was deleted.$$;
COMMENT ON COLUMN account_purges.purged_by IS $$command (lms-sync accounts purge) or service (discovery.purge_retired_after).$$;
COMMENT ON COLUMN account_purges.rows_deleted IS $$Rows deleted, every table together.$$;
COMMENT ON COLUMN account_purges.rows_by_table IS $$Rows deleted per table (JSON), e.g. {"users": 20, "user_emails": 20, …}.$$;

COMMENT ON TABLE discovery_state IS $$The last listing of integrated accounts (one row).$$;
COMMENT ON COLUMN discovery_state.singleton IS $$Always true: keeps the table to one row.$$;
COMMENT ON COLUMN discovery_state.listed_at IS $$When the last listing ended (the next is due discovery.interval later).$$;
COMMENT ON COLUMN discovery_state.succeeded_at IS $$When the last complete listing ended.$$;
COMMENT ON COLUMN discovery_state.accounts_listed IS $$Accounts the last listing found.$$;
COMMENT ON COLUMN discovery_state.added IS $$Accounts the last listing registered.$$;
COMMENT ON COLUMN discovery_state.retired IS $$Accounts the last listing retired.$$;
COMMENT ON COLUMN discovery_state.unretired IS $$Retired accounts the last listing found again.$$;
COMMENT ON COLUMN discovery_state.retire_guard IS $$Why accounts no longer listed were not retired (a partial or empty listing, or more than discovery.max_retire_fraction).$$;
COMMENT ON COLUMN discovery_state.error IS $$Why the last listing failed (nothing changed then); NULL after one that did not.$$;
COMMENT ON COLUMN discovery_state.failures IS $$Listings in a row that failed; 0 after one that did not.$$;

COMMENT ON TABLE daily_user_counts IS $$Live users per status at the end of each UTC day, by account; today's rows as of the latest run, past days from the change history.$$;
COMMENT ON COLUMN daily_user_counts.integrated_account_id IS $$The account.$$;
COMMENT ON COLUMN daily_user_counts.day IS $$The UTC date.$$;
COMMENT ON COLUMN daily_user_counts.status IS $$As users.status; NULL when the LMS gave none.$$;
COMMENT ON COLUMN daily_user_counts.users IS $$Live users with that status at the end of the day.$$;

COMMENT ON TABLE webhook_events IS $$Truto webhook deliveries already processed: a delivery whose id is here is a replay and is ignored. Ids older than a day are forgotten.$$;
COMMENT ON COLUMN webhook_events.event_id IS $$The delivery's id; primary key.$$;
COMMENT ON COLUMN webhook_events.event IS $$The event's type.$$;
COMMENT ON COLUMN webhook_events.received_at IS $$When it was received.$$;

COMMENT ON TABLE unknown_enum_values IS $$Undocumented role and status values, kept as the vendor sent them.$$;
COMMENT ON COLUMN unknown_enum_values.integrated_account_id IS $$The account that sent it.$$;
COMMENT ON COLUMN unknown_enum_values.field IS $$role or status.$$;
COMMENT ON COLUMN unknown_enum_values.value IS $$As the vendor sent it.$$;
COMMENT ON COLUMN unknown_enum_values.users IS $$Users written with it, summed over runs.$$;
COMMENT ON COLUMN unknown_enum_values.first_seen_at IS $$When it was first seen.$$;
COMMENT ON COLUMN unknown_enum_values.last_seen_at IS $$When it was last seen.$$;

-- internal ----------------------------------------------------------------------------------
COMMENT ON TABLE rate_shares IS $$The shared request budget (internal): each process's share of the token's requests per window. See docs/rate-budget.md.$$;
COMMENT ON COLUMN rate_shares.budget IS $$Internal: the budget shared (one per token).$$;
COMMENT ON COLUMN rate_shares.holder IS $$Internal: the process (one row each).$$;
COMMENT ON COLUMN rate_shares.share IS $$Internal: requests per window the process may send.$$;
COMMENT ON COLUMN rate_shares.wanted IS $$Internal: requests per window the process asked for.$$;
COMMENT ON COLUMN rate_shares.backend_pid IS $$Internal: the process's connection (its share ends with it).$$;
COMMENT ON COLUMN rate_shares.renewed_at IS $$Internal: when the share was last negotiated.$$;
COMMENT ON COLUMN rate_shares.good_until IS $$Internal: the end of the share's lease.$$;
COMMENT ON COLUMN rate_shares.fences_on_loss IS $$Internal: the process stops sending the moment its connection ends.$$;
COMMENT ON COLUMN rate_shares.per_token IS $$Internal: the process's rate_budget.per_token.$$;
COMMENT ON COLUMN rate_shares.window_secs IS $$Internal: the process's rate_budget.window_secs.$$;
COMMENT ON COLUMN rate_shares.halted IS $$Why the process starts no run now (Truto refused the token, or does not answer); NULL while it runs normally.$$;
COMMENT ON COLUMN rate_shares.answered_at IS $$When the process last got an answer from Truto (database time).$$;
COMMENT ON COLUMN rate_shares.unreachable_since IS $$Since when the process has not reached Truto; NULL while it does.$$;

COMMENT ON TABLE rate_share_releases IS $$The shared request budget (internal): shares given back, or left by a process gone, which nobody takes for one window. See docs/rate-budget.md.$$;
COMMENT ON COLUMN rate_share_releases.budget IS $$Internal: the budget.$$;
COMMENT ON COLUMN rate_share_releases.released IS $$Internal: requests per window released.$$;
COMMENT ON COLUMN rate_share_releases.released_at IS $$Internal: from when the release counts.$$;

COMMENT ON TABLE rate_account_windows IS $$An account's request window between processes (internal): the next process to lease the account counts these requests as its own. See docs/rate-budget.md.$$;
COMMENT ON COLUMN rate_account_windows.integrated_account_id IS $$Internal: the account.$$;
COMMENT ON COLUMN rate_account_windows.released_at IS $$Internal: when the last process released the account's lease (database time).$$;
COMMENT ON COLUMN rate_account_windows.ages_ms IS $$Internal: the ages then, in milliseconds, of the requests still in the account's window.$$;
COMMENT ON COLUMN rate_account_windows.holder IS $$Internal: the process that took the lease last.$$;
COMMENT ON COLUMN rate_account_windows.held_since IS $$Internal: when it took the lease; NULL once released.$$;
COMMENT ON COLUMN rate_account_windows.fencing_holder IS $$Internal: the holder, when it stops sending the moment its lease's connection ends.$$;

COMMENT ON TABLE migration_compat IS $$Which binaries may run against this schema: a binary that does not know a migration applied here runs only if it knows that migration's oldest_compatible.$$;
COMMENT ON COLUMN migration_compat.version IS $$A migration.$$;
COMMENT ON COLUMN migration_compat.oldest_compatible IS $$The oldest migration a binary must know to run against a database that has version applied.$$;

COMMENT ON TABLE _sqlx_migrations IS $$The migrations applied to this schema (kept by sqlx, the migration library): lms-sync migrate applies those missing.$$;
COMMENT ON COLUMN _sqlx_migrations.version IS $$The migration's number (migrations/NNNN_….sql).$$;
COMMENT ON COLUMN _sqlx_migrations.description IS $$The migration's name.$$;
COMMENT ON COLUMN _sqlx_migrations.installed_on IS $$When it was applied.$$;
COMMENT ON COLUMN _sqlx_migrations.success IS $$Whether it was applied whole.$$;
COMMENT ON COLUMN _sqlx_migrations.checksum IS $$The migration file's checksum when it was applied.$$;
COMMENT ON COLUMN _sqlx_migrations.execution_time IS $$How long it took, in nanoseconds.$$;

-- views -------------------------------------------------------------------------------------
COMMENT ON VIEW live_users IS $$users where deleted_at IS NULL, every column of users, except the users of retired accounts (kept in users until the account is purged).$$;
COMMENT ON VIEW users_with_account IS $$Every user (deleted ones included: filter on deleted_at) with the account's label, tenant and retirement; the internal hashes and remote_data aside.$$;
COMMENT ON COLUMN users_with_account.account_label IS $$The account's label (accounts.label).$$;
COMMENT ON COLUMN users_with_account.tenant_id IS $$The customer, as Truto knows it (accounts.tenant_id).$$;
COMMENT ON COLUMN users_with_account.account_retired_at IS $$When Truto stopped listing the account (accounts.retired_at); NULL while listed.$$;
-- The other columns of these two views are the users' columns and mean the same.
DO $$
DECLARE
    col record;
BEGIN
    FOR col IN
        SELECT v.relname AS view, a.attname AS name, col_description(u.oid, ua.attnum) AS said
          FROM pg_class v
          JOIN pg_attribute a ON a.attrelid = v.oid AND a.attnum > 0
          JOIN pg_class u ON u.relname = 'users' AND u.relnamespace = v.relnamespace
          JOIN pg_attribute ua ON ua.attrelid = u.oid AND ua.attname = a.attname
         WHERE v.relnamespace = current_schema()::regnamespace
           AND v.relname IN ('live_users', 'users_with_account')
           AND col_description(v.oid, a.attnum) IS NULL
    LOOP
        EXECUTE format('COMMENT ON COLUMN %I.%I IS %L', col.view, col.name, col.said);
    END LOOP;
END
$$;

COMMENT ON VIEW user_field_changes IS $$The change history, one row per changed field (inserts carry no fields and have no rows here).$$;
COMMENT ON COLUMN user_field_changes.integrated_account_id IS $$The user's integrated account.$$;
COMMENT ON COLUMN user_field_changes.user_id IS $$The user (users.id).$$;
COMMENT ON COLUMN user_field_changes.change_id IS $$The user_changes row it comes from.$$;
COMMENT ON COLUMN user_field_changes.changed_at IS $$When the mirror changed.$$;
COMMENT ON COLUMN user_field_changes.kind IS $$update, delete, undelete or hydrate.$$;
COMMENT ON COLUMN user_field_changes.field IS $$The field (a key of user_snapshots.state).$$;
COMMENT ON COLUMN user_field_changes.old_value IS $$The value before (JSON).$$;
COMMENT ON COLUMN user_field_changes.new_value IS $$The value after (JSON).$$;

COMMENT ON VIEW user_primary_email IS $$One row per user with an email: the first email marked primary, else the first email.$$;
COMMENT ON COLUMN user_primary_email.integrated_account_id IS $$The user's integrated account.$$;
COMMENT ON COLUMN user_primary_email.user_id IS $$The user (users.id).$$;
COMMENT ON COLUMN user_primary_email.email IS $$The address.$$;
COMMENT ON COLUMN user_primary_email.type IS $$work, personal, … or NULL.$$;
COMMENT ON COLUMN user_primary_email.is_marked_primary IS $$Whether the LMS marks it primary (false: the first email, none being marked).$$;

COMMENT ON VIEW users_with_manager IS $$Every user with their manager link and, when the manager is a mirrored user of the same account, the manager's own row.$$;
COMMENT ON COLUMN users_with_manager.integrated_account_id IS $$The user's integrated account.$$;
COMMENT ON COLUMN users_with_manager.user_id IS $$The user (users.id).$$;
COMMENT ON COLUMN users_with_manager.user_name IS $$The user's name.$$;
COMMENT ON COLUMN users_with_manager.user_deleted_at IS $$The user's deleted_at.$$;
COMMENT ON COLUMN users_with_manager.manager_id IS $$The manager's user id in the LMS; NULL when the user has no manager, or one without an id.$$;
COMMENT ON COLUMN users_with_manager.manager_name IS $$The manager's name, as the LMS gives it in the link.$$;
COMMENT ON COLUMN users_with_manager.manager_emails IS $$The manager's emails (JSON), as the LMS gives them in the link.$$;
COMMENT ON COLUMN users_with_manager.manager_in_mirror IS $$Whether the manager is a mirrored user of the same account.$$;
COMMENT ON COLUMN users_with_manager.manager_user_name IS $$The manager's users.name, when in the mirror.$$;
COMMENT ON COLUMN users_with_manager.manager_job_title IS $$The manager's users.job_title, when in the mirror.$$;
COMMENT ON COLUMN users_with_manager.manager_status IS $$The manager's users.status, when in the mirror.$$;
COMMENT ON COLUMN users_with_manager.manager_deleted_at IS $$The manager's users.deleted_at, when in the mirror.$$;

COMMENT ON VIEW user_snapshots IS $$Each user's mirrored state as one JSON object: what the change history compares.$$;
COMMENT ON COLUMN user_snapshots.integrated_account_id IS $$The user's integrated account.$$;
COMMENT ON COLUMN user_snapshots.user_id IS $$The user (users.id).$$;
COMMENT ON COLUMN user_snapshots.first_seen_at IS $$When lms-sync first stored the user.$$;
COMMENT ON COLUMN user_snapshots.state IS $$The users columns (remote_data aside), deleted_at, and emails, phones and manager as whole values; timestamps as UTC text.$$;

COMMENT ON VIEW account_freshness IS $$One row per account of the registry: how current its mirror is, to check before joining its users against something else.$$;
COMMENT ON COLUMN account_freshness.integrated_account_id IS $$The account.$$;
COMMENT ON COLUMN account_freshness.label IS $$The account's label.$$;
COMMENT ON COLUMN account_freshness.tenant_id IS $$The customer, as Truto knows it.$$;
COMMENT ON COLUMN account_freshness.integration IS $$Truto's integration.name.$$;
COMMENT ON COLUMN account_freshness.paused IS $$Whether it is paused.$$;
COMMENT ON COLUMN account_freshness.retired_at IS $$When Truto stopped listing it; NULL while listed.$$;
COMMENT ON COLUMN account_freshness.health IS $$ok, or why it cannot be synced until someone acts upstream.$$;
COMMENT ON COLUMN account_freshness.last_succeeded_at IS $$When a run last succeeded; NULL if none has.$$;
COMMENT ON COLUMN account_freshness.since_success IS $$How long ago that was (an interval); NULL until a run succeeds.$$;
COMMENT ON COLUMN account_freshness.last_outcome IS $$The last finished run's outcome.$$;
COMMENT ON COLUMN account_freshness.last_finished_at IS $$When the last run ended.$$;
COMMENT ON COLUMN account_freshness.held_until IS $$While the server holds the account's requests back (a quota spent): until when.$$;
COMMENT ON COLUMN account_freshness.live_users IS $$Live users as of its last run.$$;
COMMENT ON COLUMN account_freshness.last_error IS $$The last failed run's error.$$;

-- functions ---------------------------------------------------------------------------------
COMMENT ON FUNCTION user_state_at(uuid, text, timestamptz) IS $$The user's user_snapshots.state as the mirror held it at the given instant; NULL if lms-sync did not have the user yet. Exact within history.retention_days.$$;
COMMENT ON FUNCTION users_at(uuid, timestamptz) IS $$Every user of the account as the mirror held them at the given instant (user_id, state). Exact within history.retention_days.$$;
COMMENT ON FUNCTION iso_utc(timestamptz) IS $$An instant as UTC text, the same in every session (the history's format).$$;
COMMENT ON FUNCTION refresh_daily_user_counts(uuid) IS $$Brings the account's daily_user_counts up to date by hand (every run does it).$$;
