//! Change history: the users' states before a change, one `user_changes` row per changed user,
//! and pruning old history.

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::StoreError;
use crate::model::UserRecord;

/// The users' states (`user_snapshots.state`) as JSON text: (ids, states).
pub(super) async fn snapshots(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    users: &[&UserRecord],
) -> Result<(Vec<String>, Vec<String>), StoreError> {
    let ids: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT user_id, state::text FROM user_snapshots
          WHERE integrated_account_id = $1 AND user_id = ANY($2::text[])",
    )
    .persistent(false)
    .bind(account)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().unzip())
}

/// One `user_changes` row per user whose state differs from `before`, with the fields that
/// changed (old and new values). Users whose only change is `remote_data` get none.
pub(super) async fn record_updates(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    run_id: i64,
    before: &(Vec<String>, Vec<String>),
    first_hydration: &[&str],
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO user_changes (integrated_account_id, user_id, run_id, kind, changed_fields)
         SELECT $1, o.user_id, $3,
                CASE WHEN o.user_id = ANY($5::text[]) THEN 'hydrate'
                     WHEN o.state ->> 'deleted_at' IS NOT NULL AND s.state ->> 'deleted_at' IS NULL THEN 'undelete'
                     ELSE 'update' END,
                d.diff
           FROM (SELECT t.user_id, t.state::jsonb AS state
                   FROM unnest($2::text[], $4::text[]) AS t(user_id, state)) o
           JOIN user_snapshots s ON s.integrated_account_id = $1 AND s.user_id = o.user_id
          CROSS JOIN LATERAL (
                SELECT jsonb_object_agg(n.key, jsonb_build_object('old', o.state -> n.key, 'new', n.value)) AS diff
                  FROM jsonb_each(s.state) n
                 WHERE n.value IS DISTINCT FROM o.state -> n.key) d
          WHERE d.diff IS NOT NULL",
    )
    .persistent(false)
    .bind(account)
    .bind(&before.0)
    .bind(run_id)
    .bind(&before.1)
    .bind(first_hydration)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
