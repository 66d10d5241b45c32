//! What the scheduler, `status` and a pass read of the accounts: run histories, the status
//! table, live users; and keeping the planner's statistics fresh as tables grow.

use std::collections::HashMap;

use sqlx::Row;
use uuid::Uuid;

use super::{health, outcome, Store, StoreError, Ts};
use crate::domain::{Health, Outcome};

/// One account's row of `lms-sync status`.
#[derive(Debug, Clone)]
pub struct StatusRow {
    pub integrated_account_id: Uuid,
    pub label: Option<String>,
    pub status: String,
    pub last_outcome: Option<Outcome>,
    pub last_started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_succeeded_at: Option<chrono::DateTime<chrono::Utc>>,
    pub consecutive_failures: i32,
    pub last_error: Option<String>,
    pub resumable: bool,
    pub live_users: i64,
    pub deleted_users: i64,
    /// Whether the account can be synced, since when, and why not.
    pub health: Health,
    pub health_since: Option<chrono::DateTime<chrono::Utc>>,
    pub health_reason: Option<String>,
    /// Users queued for hydration.
    pub hydration_pending: i64,
    /// The server holds the account's requests back until then (`sync_state.held_until`, while
    /// it is to come): no run starts before.
    pub held_until: Option<chrono::DateTime<chrono::Utc>>,
    /// Why its last run needs attention (`needs_attention`: the delete guard kept users, Truto
    /// marked the listing partial), when it does.
    pub attention_reason: Option<String>,
}

impl Store {
    /// Counts `n` users inserted (as each batch commits) and refreshes the planner's statistics
    /// when the process's total crosses 2,000 × 4^k: a handful of ANALYZEs however many
    /// accounts grow, so that key lookups are planned on the table as it is.
    ///
    /// The ANALYZE runs on a task of its own: it serves the queries planned after it, so
    /// neither the batches after the one that crossed the mark nor the run's close wait for
    /// it. A process that exits meanwhile leaves the statistics to autovacuum.
    pub fn note_inserted(&self, n: u64) {
        use std::sync::atomic::Ordering;
        if n == 0 {
            return;
        }
        let before = self.inserted.fetch_add(n, Ordering::Relaxed);
        if analyze_due(before, before + n) {
            let store = self.clone();
            tokio::spawn(async move {
                if let Err(e) = store.analyze().await {
                    tracing::warn!(error = %e, "could not refresh table statistics");
                }
            });
        }
    }

    /// The account's live users.
    pub async fn live_users(&self, account: Uuid) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM users WHERE integrated_account_id = $1 AND deleted_at IS NULL",
        )
        .bind(account)
        .fetch_one(&self.pool)
        .await?)
    }

    /// True when the account has no users in the mirror.
    pub async fn account_is_empty(&self, account: Uuid) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM users WHERE integrated_account_id = $1)",
        )
        .bind(account)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Refreshes the planner's statistics of `users`. A first sync grows it from nothing
    /// faster than autovacuum notices, and key lookups planned with "empty table" statistics
    /// turn into scans.
    pub async fn analyze(&self) -> Result<(), StoreError> {
        // A small sample is enough (the planner needs the table's size, not fine histograms):
        // ~60 ms instead of ~700 ms for 100,000 users. SKIP_LOCKED: if autovacuum is already
        // analyzing the table, let it.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL default_statistics_target = 10")
            .execute(&mut *tx)
            .await?;
        // "skipping analyze ... lock not available" is the expected answer when another
        // process analyzes: not worth a warning in our log.
        sqlx::query("SET LOCAL client_min_messages = error")
            .execute(&mut *tx)
            .await?;
        sqlx::query("ANALYZE (SKIP_LOCKED) users")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// What the scheduler needs to know of each account's runs (of one, given `only`). An
    /// account whose state says `running` reports that as its last outcome: it is running
    /// elsewhere, or its process died.
    pub async fn run_histories(
        &self,
        only: Option<Uuid>,
    ) -> Result<HashMap<Uuid, crate::schedule::RunHistory>, StoreError> {
        type Row = (
            Uuid,
            Option<Ts>,
            Option<Ts>,
            Option<String>,
            i32,
            String,
            i32,
            Option<Ts>,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT integrated_account_id, last_started_at, last_finished_at,
                        CASE WHEN status = 'running' THEN 'running' ELSE last_outcome END,
                        consecutive_failures, health, health_failures, held_until
                   FROM sync_state
                  WHERE $1::uuid IS NULL OR integrated_account_id = $1",
        )
        .bind(only)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(
                |(id, started, finished, last, failures, h, health_failures, held_until)| {
                    let history = crate::schedule::RunHistory {
                        last_started_at: started,
                        last_finished_at: finished,
                        last_outcome: last.as_deref().map(outcome).transpose()?,
                        consecutive_failures: failures.max(0) as u32,
                        health: Some(health(&h)?),
                        health_failures: health_failures.max(0) as u32,
                        held_until,
                    };
                    Ok((id, history))
                },
            )
            .collect()
    }

    /// One row per account known to `sync_state`, plus configured accounts never synced. Live
    /// and deleted users are as of each account's last run (noted in `sync_state`; counted
    /// here only for accounts with none noted yet, a first run under way, say), so a look
    /// costs a row per account, not a count of every user of the fleet. The counts are queries
    /// of their own (the hydration queue's grouped once) rather than subqueries on every
    /// row: the planner costs a subquery for every row whether or not it runs, and at 10,000
    /// accounts that set off JIT compilation (about 0.3 s a look, in a query that takes
    /// 0.04 s). Given `only`, the one account's row (an account's page: a row, not the fleet).
    pub async fn status(
        &self,
        configured: &[(Uuid, Option<String>)],
        only: Option<Uuid>,
    ) -> Result<Vec<StatusRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.integrated_account_id, s.label, s.status, s.last_outcome, s.last_started_at,
                    s.last_finished_at, s.last_succeeded_at, s.consecutive_failures, s.last_error,
                    (s.cursor IS NOT NULL) AS resumable, s.live_user_count, s.deleted_user_count,
                    s.health, s.health_since, s.health_reason,
                    CASE WHEN s.held_until > now() THEN s.held_until END,
                    CASE WHEN s.last_outcome = 'needs_attention' THEN
                        (SELECT r.deletions_skipped_reason FROM sync_runs r
                          WHERE r.integrated_account_id = s.integrated_account_id
                            AND r.outcome = 'needs_attention'
                          ORDER BY r.run_id DESC LIMIT 1) END
               FROM sync_state s
              WHERE $1::uuid IS NULL OR s.integrated_account_id = $1
              ORDER BY coalesce(s.label, s.integrated_account_id::text)",
        )
        .bind(only)
        .fetch_all(&self.pool)
        .await?;
        let uncounted: Vec<Uuid> = rows
            .iter()
            .filter(|r| {
                r.get::<Option<i64>, _>(10).is_none() || r.get::<Option<i64>, _>(11).is_none()
            })
            .map(|r| r.get(0))
            .collect();
        // (Each count through its partial index: users_live_by_account, users_deleted_by_account.)
        let counted: HashMap<Uuid, (i64, i64)> = if uncounted.is_empty() {
            HashMap::new()
        } else {
            sqlx::query_as::<_, (Uuid, i64, i64)>(
                "SELECT a.id,
                        (SELECT count(*) FROM users u
                          WHERE u.integrated_account_id = a.id AND u.deleted_at IS NULL),
                        (SELECT count(*) FROM users u
                          WHERE u.integrated_account_id = a.id AND u.deleted_at IS NOT NULL)
                   FROM unnest($1::uuid[]) AS a(id)",
            )
            .bind(&uncounted)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|(id, live, gone)| (id, (live, gone)))
            .collect()
        };
        let pending: HashMap<Uuid, i64> = sqlx::query_as(
            "SELECT integrated_account_id, count(*) FROM hydration_queue
              WHERE $1::uuid IS NULL OR integrated_account_id = $1
              GROUP BY integrated_account_id",
        )
        .bind(only)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .collect();
        let mut out: Vec<StatusRow> = rows
            .into_iter()
            .map(|r| -> Result<StatusRow, StoreError> {
                let id: Uuid = r.get(0);
                let (live, gone) = counted.get(&id).copied().unwrap_or_default();
                Ok(StatusRow {
                    integrated_account_id: id,
                    label: r.get(1),
                    status: r.get(2),
                    last_outcome: r.get::<Option<&str>, _>(3).map(outcome).transpose()?,
                    last_started_at: r.get(4),
                    last_finished_at: r.get(5),
                    last_succeeded_at: r.get(6),
                    consecutive_failures: r.get(7),
                    last_error: r.get(8),
                    resumable: r.get(9),
                    live_users: r.get::<Option<i64>, _>(10).unwrap_or(live),
                    deleted_users: r.get::<Option<i64>, _>(11).unwrap_or(gone),
                    health: health(r.get(12))?,
                    health_since: r.get(13),
                    health_reason: r.get(14),
                    hydration_pending: pending.get(&id).copied().unwrap_or(0),
                    held_until: r.get(15),
                    attention_reason: r.get(16),
                })
            })
            .collect::<Result<_, _>>()?;
        let mut known: std::collections::HashSet<Uuid> =
            out.iter().map(|r| r.integrated_account_id).collect();
        for (id, label) in configured
            .iter()
            .filter(|(id, _)| only.is_none_or(|o| o == *id))
        {
            if known.insert(*id) {
                out.push(StatusRow {
                    integrated_account_id: *id,
                    label: label.clone(),
                    status: "never synced".into(),
                    last_outcome: None,
                    last_started_at: None,
                    last_finished_at: None,
                    last_succeeded_at: None,
                    consecutive_failures: 0,
                    last_error: None,
                    resumable: false,
                    live_users: 0,
                    deleted_users: 0,
                    health: Health::Ok,
                    health_since: None,
                    health_reason: None,
                    hydration_pending: 0,
                    held_until: None,
                    attention_reason: None,
                });
            }
        }
        Ok(out)
    }
}

/// One account's figures for the metrics (exported by every replica, or by the holder of the
/// reporter lease: see `server.account_metrics`).
#[derive(Debug, Clone)]
pub struct AccountMetrics {
    pub integrated_account_id: Uuid,
    pub label: Option<String>,
    pub tenant_id: Option<String>,
    pub last_succeeded_at: Option<Ts>,
    pub health: Health,
    pub consecutive_failures: i32,
    /// As of the account's last run (`daily_user_counts`).
    pub live_users: i64,
    pub hydration_queue: i64,
    /// The server holds the account's requests back until then (`sync_state.held_until`, while
    /// it is to come).
    pub held_until: Option<Ts>,
    /// While the account is paused: since when, as `account_actions` recorded its pause (of
    /// this registration: a purged account registered again starts afresh); for a pause that
    /// went unrecorded (made before migration 0028), the latest of what it cannot predate (the
    /// migration, the registration, the last recorded resume): at least that long.
    pub paused_since: Option<Ts>,
    /// While the account is paused with an end (`accounts pause --until`): when the service
    /// resumes it.
    pub paused_until: Option<Ts>,
}

impl Store {
    /// How long the oldest change committed to `user_changes` has waited out of
    /// `user_change_feed`, in seconds: 0 when none waits. A change waits while a transaction
    /// older than its own, which has written something, is still open anywhere in the cluster
    /// (see the view). It needs no right to see other sessions: the rows tell it. One index
    /// range, from the oldest open transaction on.
    pub async fn change_feed_held_back(&self) -> Result<f64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT coalesce(extract(epoch FROM now() - min(changed_at))::float8, 0)
               FROM user_changes
              WHERE xact_id >= pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// What to do when `user_changes` holds feed positions beyond this cluster's transaction
    /// ids: the database was restored into another cluster (pg_dump and pg_restore, logical
    /// replication), whose ids start over. The view would hide those changes and new ones would
    /// come behind them, below every loader's position. None when all is well (an index's end
    /// against the snapshot's bound: cheap).
    pub async fn feed_positions_ahead(&self) -> Result<Option<String>, StoreError> {
        let (max, next): (Option<i64>, i64) = sqlx::query_as(
            "SELECT (SELECT max(xact_id) FROM user_changes),
                    pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(max.filter(|max| *max >= next).map(|max| {
            format!(
                "user_changes holds change-feed positions (xact_id up to {max}) beyond this \
                 cluster's transaction ids (the next is {next}): the database was restored into \
                 another cluster, whose transaction ids start over, so user_change_feed hides \
                 those changes and puts new ones behind them; as the schema's owner: UPDATE \
                 {schema}.user_changes SET xact_id = 0 WHERE xact_id >= \
                 pg_snapshot_xmax(pg_current_snapshot())::text::bigint; then start each \
                 loader of user_change_feed again from (0, 0), keeping the changes it has by \
                 change_id (docs/schema.md, Loading the changes elsewhere)",
                schema = self.schema
            )
        }))
    }

    /// Every registered account that is not retired, with its figures: a handful of index
    /// lookups per account, cheap at a thousand accounts.
    pub async fn account_metrics(&self) -> Result<Vec<AccountMetrics>, StoreError> {
        let rows = sqlx::query(
            "SELECT a.integrated_account_id, a.label, a.tenant_id, s.last_succeeded_at,
                    coalesce(s.health, 'ok'), coalesce(s.consecutive_failures, 0),
                    coalesce((SELECT sum(d.users) FROM daily_user_counts d
                               WHERE d.integrated_account_id = a.integrated_account_id
                                 AND d.day = (SELECT max(day) FROM daily_user_counts m
                                               WHERE m.integrated_account_id = a.integrated_account_id)), 0)::bigint,
                    (SELECT count(*) FROM hydration_queue q
                      WHERE q.integrated_account_id = a.integrated_account_id),
                    CASE WHEN s.held_until > now() THEN s.held_until END,
                    CASE WHEN a.paused THEN (
                        SELECT CASE WHEN l.action = 'pause' THEN l.acted_at
                                    ELSE greatest(l.acted_at, a.first_seen_at,
                                                  (SELECT installed_on FROM _sqlx_migrations
                                                    WHERE version = 28)) END
                          FROM (SELECT 1) one
                          LEFT JOIN LATERAL (
                              SELECT x.action, x.acted_at FROM account_actions x
                               WHERE x.integrated_account_id = a.integrated_account_id
                                 AND x.action IN ('pause', 'resume')
                                 AND x.acted_at >= a.first_seen_at
                               ORDER BY x.action_id DESC LIMIT 1) l ON true) END,
                    CASE WHEN a.paused THEN a.paused_until END
               FROM accounts a
               LEFT JOIN sync_state s ON s.integrated_account_id = a.integrated_account_id
              WHERE a.retired_at IS NULL
              ORDER BY a.integrated_account_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(AccountMetrics {
                    integrated_account_id: r.get(0),
                    label: r.get(1),
                    tenant_id: r.get(2),
                    last_succeeded_at: r.get(3),
                    health: health(r.get(4))?,
                    consecutive_failures: r.get(5),
                    live_users: r.get(6),
                    hydration_queue: r.get(7),
                    held_until: r.get(8),
                    paused_since: r.get(9),
                    paused_until: r.get(10),
                })
            })
            .collect()
    }

    /// Adds a run's undocumented enum values to `unknown_enum_values`; returns those no account
    /// of the fleet had shown before, as `(field, value)`.
    pub async fn note_unknown_enums(
        &self,
        account: Uuid,
        values: &[(&str, &str, i64)],
    ) -> Result<Vec<(String, String)>, StoreError> {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let fields: Vec<&str> = values.iter().map(|v| v.0).collect();
        let texts: Vec<&str> = values.iter().map(|v| v.1).collect();
        let users: Vec<i64> = values.iter().map(|v| v.2).collect();
        // Both parts read the table as it was before the statement: `new` sees no row this
        // insert adds.
        let new: Vec<(String, String)> = sqlx::query_as(
            "WITH t AS (
                 SELECT * FROM unnest($2::text[], $3::text[], $4::bigint[]) AS t(field, value, users)
             ), noted AS (
                 INSERT INTO unknown_enum_values AS u (integrated_account_id, field, value, users)
                 SELECT $1, t.field, t.value, t.users FROM t
                 ON CONFLICT (integrated_account_id, field, value) DO UPDATE
                    SET users = u.users + excluded.users, last_seen_at = now()
             )
             SELECT t.field, t.value FROM t
              WHERE NOT EXISTS (SELECT 1 FROM unknown_enum_values o
                                 WHERE o.field = t.field AND o.value = t.value)
              ORDER BY 1, 2",
        )
        .bind(account)
        .bind(&fields)
        .bind(&texts)
        .bind(&users)
        .fetch_all(&self.pool)
        .await?;
        Ok(new)
    }
}

/// True when an inserted count crossed one of 2,000 × 4^k.
fn analyze_due(before: u64, after: u64) -> bool {
    let mut t = 2_000u64;
    while t <= after {
        if before < t {
            return true;
        }
        t = t.saturating_mul(4);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_are_refreshed_at_growing_thresholds() {
        assert!(!analyze_due(0, 1_999));
        assert!(analyze_due(1_999, 2_000));
        assert!(!analyze_due(2_000, 7_999));
        assert!(analyze_due(7_000, 9_000));
        assert!(analyze_due(0, 100_000));
        assert!(!analyze_due(128_000, 500_000));
    }
}
