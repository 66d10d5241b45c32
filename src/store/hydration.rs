//! The hydration queue: users whose full object is due, and merging full objects into their
//! rows.

use std::collections::HashMap;

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::history::{record_updates, snapshots};
use super::users::{update_users, UpdateMode};
use super::{Store, StoreError};
use crate::model::UserRecord;

impl Store {
    /// Up to `limit` queued users of the account whose full object is due, oldest first.
    pub async fn hydration_due(
        &self,
        account: Uuid,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT user_id FROM hydration_queue
              WHERE integrated_account_id = $1 AND next_attempt_at <= now()
              ORDER BY next_attempt_at, queued_at, user_id LIMIT $2",
        )
        .bind(account)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Users still queued for hydration (due or waiting for a retry).
    pub async fn hydration_pending(&self, account: Uuid) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM hydration_queue WHERE integrated_account_id = $1",
        )
        .bind(account)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Merges full objects into their rows and takes them off the queue, in one transaction.
    /// `failed` stay queued with their error and a later retry time (1 min doubling to 6 h);
    /// `gone` (the GET says no such user) leave the queue: the next complete listing decides
    /// whether they were deleted. Returns how many rows were rewritten (an unchanged full
    /// object is not written again).
    pub async fn apply_hydration(
        &self,
        account: Uuid,
        run_id: i64,
        full: &[UserRecord],
        failed: &[(String, String)],
        gone: &[String],
        history: bool,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<&str> = full.iter().map(|u| u.id.as_str()).collect();
        let stored: HashMap<String, (Option<Vec<u8>>, bool)> = if ids.is_empty() {
            HashMap::new()
        } else {
            sqlx::query_as::<_, (String, Option<Vec<u8>>, bool)>(
                "SELECT id, hydrated_hash, hydrated_at IS NULL FROM users
                  WHERE integrated_account_id = $1 AND id = ANY($2::text[]) FOR UPDATE",
            )
            .persistent(false)
            .bind(account)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|(id, h, first)| (id, (h, first)))
            .collect()
        };
        let write: Vec<&UserRecord> = full
            .iter()
            .filter(|u| match stored.get(&u.id) {
                Some((Some(h), _)) => h.as_slice() != u.content_hash,
                Some((None, _)) => true,
                None => false, // not mirrored (any more): nothing to merge into
            })
            .collect();
        if !write.is_empty() {
            let before = if history {
                Some(snapshots(&mut tx, account, &write).await?)
            } else {
                None
            };
            update_users(&mut tx, account, run_id, &write, UpdateMode::Hydrated).await?;
            if let Some(before) = before {
                let first: Vec<&str> = write
                    .iter()
                    .filter(|u| stored.get(&u.id).is_some_and(|(_, first)| *first))
                    .map(|u| u.id.as_str())
                    .collect();
                record_updates(&mut tx, account, run_id, &before, &first).await?;
            }
        }
        let done: Vec<&str> = ids
            .iter()
            .copied()
            .chain(gone.iter().map(String::as_str))
            .collect();
        dequeue(&mut tx, account, &done).await?;
        retry_later(&mut tx, account, failed).await?;
        crate::failpoint::point("hydrate_tx").await;
        tx.commit().await?;
        Ok(write.len() as u64)
    }
}

/// Takes users off the queue.
async fn dequeue(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    ids: &[&str],
) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "DELETE FROM hydration_queue WHERE integrated_account_id = $1 AND user_id = ANY($2::text[])",
    )
    .persistent(false)
    .bind(account)
    .bind(ids)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Leaves users whose GET failed queued, with their error and a later retry time.
async fn retry_later(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    failed: &[(String, String)],
) -> Result<(), StoreError> {
    if failed.is_empty() {
        return Ok(());
    }
    let (ids, errors): (Vec<&str>, Vec<&str>) = failed
        .iter()
        .map(|(id, e)| (id.as_str(), e.as_str()))
        .unzip();
    sqlx::query(
        "UPDATE hydration_queue q
            SET attempts = q.attempts + 1, last_error = f.error,
                next_attempt_at = now() + least(interval '1 minute' * power(2, q.attempts), interval '6 hours')
           FROM unnest($2::text[], $3::text[]) AS f(user_id, error)
          WHERE q.integrated_account_id = $1 AND q.user_id = f.user_id",
    )
    .persistent(false)
    .bind(account)
    .bind(&ids)
    .bind(&errors)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
