//! After-run upkeep of one account's tables: the daily counts analysts trend on, and the
//! bounded tables (`user_changes`, `sync_runs`, `rejected_records`) pruned by age.

use uuid::Uuid;

use super::{Store, StoreError};

/// Rows deleted per statement when pruning: each batch is its own short transaction.
const PRUNE_BATCH: i64 = 10_000;

impl Store {
    /// Brings `daily_user_counts` up to date for the account (see the migration's
    /// `refresh_daily_user_counts`). Returns the rows written.
    pub async fn refresh_daily_counts(&self, account: Uuid) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT refresh_daily_user_counts($1)")
            .bind(account)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Notes the account's live and deleted users in `sync_state`, for the status readers
    /// (migration 0020): live from its latest `daily_user_counts`, so call it after
    /// [`Store::refresh_daily_counts`]; deleted from `users_deleted_by_account`.
    pub async fn note_user_counts(&self, account: Uuid) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sync_state SET
                    live_user_count = (SELECT coalesce(sum(d.users), 0) FROM daily_user_counts d
                                   WHERE d.integrated_account_id = $1
                                     AND d.day = (SELECT max(day) FROM daily_user_counts m
                                                   WHERE m.integrated_account_id = $1)),
                    deleted_user_count = (SELECT count(*) FROM users u
                                      WHERE u.integrated_account_id = $1 AND u.deleted_at IS NOT NULL)
              WHERE integrated_account_id = $1",
        )
        .bind(account)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes the account's change history older than `days` days, in batches (each its own
    /// transaction, so a long prune never holds locks for long), and notes in `history_pruned`
    /// the highest feed position it deleted, for loaders to know what they may have missed.
    /// Returns the rows deleted.
    pub async fn prune_history(&self, account: Uuid, days: u32) -> Result<u64, StoreError> {
        // The DELETE at the top, so that the rows it affected are the rows deleted.
        self.prune(
            "WITH doomed AS (
                 SELECT change_id, xact_id FROM user_changes
                  WHERE integrated_account_id = $1
                    AND changed_at < now() - make_interval(days => $2)
                  LIMIT $3),
             noted AS (
                 INSERT INTO history_pruned AS h (integrated_account_id, pruned_through)
                 SELECT $1, max(xact_id) FROM doomed HAVING count(*) > 0
                 ON CONFLICT (integrated_account_id) DO UPDATE
                    SET pruned_through = greatest(h.pruned_through, excluded.pruned_through),
                        pruned_at = now())
             DELETE FROM user_changes WHERE change_id IN (SELECT change_id FROM doomed)",
            account,
            days,
        )
        .await
    }

    /// Deletes the account's finished runs that started more than `days` days ago, except its
    /// latest run. Returns the rows deleted.
    pub async fn prune_runs(&self, account: Uuid, days: u32) -> Result<u64, StoreError> {
        self.prune(
            "DELETE FROM sync_runs WHERE run_id IN (
                 SELECT run_id FROM sync_runs r
                  WHERE r.integrated_account_id = $1 AND r.outcome <> 'running'
                    AND r.started_at < now() - make_interval(days => $2)
                    AND r.run_id <> (SELECT max(run_id) FROM sync_runs l
                                      WHERE l.integrated_account_id = $1)
                  LIMIT $3)",
            account,
            days,
        )
        .await
    }

    /// Deletes the account's rejected records not refused again for `days` days.
    pub async fn prune_rejected(&self, account: Uuid, days: u32) -> Result<u64, StoreError> {
        self.prune(
            "DELETE FROM rejected_records WHERE rejection_id IN (
                 SELECT rejection_id FROM rejected_records
                  WHERE integrated_account_id = $1
                    AND last_rejected_at < now() - make_interval(days => $2)
                  LIMIT $3)",
            account,
            days,
        )
        .await
    }

    /// Runs a batched DELETE (`$1` account, `$2` days, `$3` batch) until it deletes less than
    /// a batch.
    async fn prune(&self, sql: &'static str, account: Uuid, days: u32) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = sqlx::query(sql)
                .bind(account)
                .bind(days as i32)
                .bind(PRUNE_BATCH)
                .execute(&self.pool)
                .await?
                .rows_affected();
            total += n;
            if n < PRUNE_BATCH as u64 {
                return Ok(total);
            }
        }
    }
}
