//! Deletions: the account's live ids that a complete listing did not contain, and marking
//! them deleted. Whether a listing may infer deletions at all, and how many, is decided by
//! `sync` (see `sync::sweep`).

use uuid::Uuid;

use super::{Store, StoreError};

/// The account's live users, and those of them a listing did not contain.
#[derive(Debug, Default)]
pub struct Vanished {
    pub live: u64,
    pub gone: Vec<String>,
}

impl Store {
    /// Whether an operator let the account's next complete listing delete past the delete
    /// guard (`accounts allow-deletes`; cleared by [`Store::mark_deleted`]).
    pub async fn deletes_allowed(&self, account: Uuid) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT allow_deletes_requested FROM accounts WHERE integrated_account_id = $1",
        )
        .bind(account)
        .fetch_optional(&self.pool)
        .await?
        .unwrap_or(false))
    }

    /// Streams the account's live ids (memory stays flat) and keeps those `seen` says the
    /// listing did not contain.
    pub async fn vanished_users(
        &self,
        account: Uuid,
        seen: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Vanished, StoreError> {
        use futures_util::TryStreamExt;
        let mut out = Vanished::default();
        let mut rows = sqlx::query_scalar::<_, String>(
            "SELECT id FROM users WHERE integrated_account_id = $1 AND deleted_at IS NULL",
        )
        .bind(account)
        .fetch(&self.pool);
        while let Some(id) = rows.try_next().await? {
            out.live += 1;
            if !seen(&id) {
                out.gone.push(id);
            }
        }
        Ok(out)
    }

    /// Marks `gone` users deleted (and records each deletion when `history`), in one
    /// transaction; only rows that become deleted are written. Returns how many did. With
    /// `allowed`, clears the account's allowance past the delete guard in the same transaction.
    pub async fn mark_deleted(
        &self,
        account: Uuid,
        run_id: i64,
        gone: &[String],
        history: bool,
        allowed: bool,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        if allowed {
            // The operator's allowance is spent by this sweep, in its transaction: the guard
            // is back for the next listing, and a sweep that fails leaves it for the next.
            sqlx::query(
                "UPDATE accounts SET allow_deletes_requested = false
                  WHERE integrated_account_id = $1 AND allow_deletes_requested",
            )
            .bind(account)
            .execute(&mut *tx)
            .await?;
        }
        let mut deleted = 0;
        for chunk in gone.chunks(10_000) {
            let n: i64 = sqlx::query_scalar(
                "WITH gone AS (
                     UPDATE users SET deleted_at = now(), last_changed_at = now(), last_changed_run_id = $3
                      WHERE integrated_account_id = $1 AND id = ANY($2::text[]) AND deleted_at IS NULL
                  RETURNING id, deleted_at),
                 noted AS (
                     INSERT INTO user_changes (integrated_account_id, user_id, run_id, kind, changed_fields)
                     SELECT $1, gone.id, $3, 'delete',
                            jsonb_build_object('deleted_at', jsonb_build_object('old', NULL, 'new', iso_utc(gone.deleted_at)))
                       FROM gone WHERE $4)
                 SELECT count(*) FROM gone",
            )
            .persistent(false)
            .bind(account)
            .bind(chunk)
            .bind(run_id)
            .bind(history)
            .fetch_one(&mut *tx)
            .await?;
            deleted += n as u64;
        }
        crate::failpoint::point("sweep_tx").await;
        tx.commit().await?;
        Ok(deleted)
    }
}
