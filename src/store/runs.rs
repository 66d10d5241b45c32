//! Runs and their state: opening a run (`sync_runs`, `sync_state`), forgetting a refused
//! cursor, and closing the run with its outcome and the account's health.

use sqlx::Row;
use uuid::Uuid;

use super::{health, Store, StoreError};
use crate::backoff::LONGEST_HINT;
use crate::domain::{ErrorKind, Health, Outcome, RunCounts};

/// What a new run starts from.
#[derive(Debug, Clone)]
pub struct RunStart {
    pub run_id: i64,
    /// The cursor of an earlier run's unfinished listing; `None` starts from the first page.
    pub resume_cursor: Option<String>,
    /// Runs found still marked running (their process died) and now marked interrupted.
    pub interrupted_runs: u64,
    /// What is left of a hold the server put on the account's requests (`sync_state.held_until`,
    /// as of the database's clock), when one is.
    pub held_for: Option<std::time::Duration>,
}

/// How a run finished, for `finish_run`.
#[derive(Debug, Clone)]
pub struct RunEnd {
    pub outcome: Outcome,
    pub complete_listing: bool,
    /// Forget the listing's cursor so that the next run starts from the first page.
    pub reset_cursor: bool,
    pub deleted: u64,
    pub deletions_skipped_reason: Option<String>,
    pub error_kind: Option<ErrorKind>,
    pub error: Option<String>,
    /// The account's health as this run found it: `Some(Health::Ok)` once a request for it
    /// succeeded, another value when the run failed that way, `None` when the run cannot tell
    /// (it failed before any answer, or for another reason).
    pub health: Option<Health>,
    /// The run's hydration counters (and its requests, added to the run's).
    pub hydration: RunCounts,
    /// Requests of the page that failed for good (retries included), when one did.
    pub failed_requests: u32,
    /// How long the server holds the account's requests back from now, when that is why the
    /// run failed: kept as `sync_state.held_until`, before which no run starts.
    pub held_for: Option<std::time::Duration>,
    /// `held_for` is what is left of a hold this process already knew (it sent no request), not
    /// a server's new answer: an unexpired `held_until` it matches is kept as it is.
    pub hold_known: bool,
}

impl Store {
    /// Opens a run for a leased account: records it in `sync_runs`, marks runs left `running` by
    /// a dead process as interrupted, and says where the listing resumes.
    pub async fn begin_run(
        &self,
        account: Uuid,
        label: Option<&str>,
        worker: &str,
    ) -> Result<RunStart, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The account registry: a configured account is registered when it is first synced.
        // Its row is locked before the account's `sync_state` row, in the order a discovery
        // listing and a webhook's account event lock them (`accounts`, then `sync_state` to gate
        // the health): the other order deadlocked a run starting while an event for its
        // account was applied, and the event was left to the next listing.
        sqlx::query(
            "INSERT INTO accounts (integrated_account_id, label) VALUES ($1, $2)
             ON CONFLICT (integrated_account_id) DO UPDATE
                SET label = coalesce(excluded.label, accounts.label), last_seen_at = now()",
        )
        .bind(account)
        .bind(label)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO sync_state (integrated_account_id, label) VALUES ($1, $2)
             ON CONFLICT (integrated_account_id) DO UPDATE SET label = excluded.label
             WHERE sync_state.label IS DISTINCT FROM excluded.label",
        )
        .bind(account)
        .bind(label)
        .execute(&mut *tx)
        .await?;
        // `accounts reset-cursor`: this run starts from the first page.
        sqlx::query(
            "WITH reset AS (
                 UPDATE accounts SET reset_cursor_requested = false
                  WHERE integrated_account_id = $1 AND reset_cursor_requested RETURNING 1)
             UPDATE sync_state SET cursor = NULL
              WHERE integrated_account_id = $1 AND EXISTS (SELECT 1 FROM reset)",
        )
        .bind(account)
        .execute(&mut *tx)
        .await?;
        let (cursor, held_secs): (Option<String>, Option<f64>) = sqlx::query_as(
            "SELECT cursor, extract(epoch FROM held_until - now())::float8
               FROM sync_state WHERE integrated_account_id = $1 FOR UPDATE",
        )
        .bind(account)
        .fetch_one(&mut *tx)
        .await?;
        let interrupted = sqlx::query(
            "UPDATE sync_runs SET outcome = 'interrupted', finished_at = now(),
                    error = coalesce(error, 'the process running it stopped before the run finished')
              WHERE integrated_account_id = $1 AND outcome = 'running'",
        )
        .bind(account)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let run_id: i64 = sqlx::query_scalar(
            "INSERT INTO sync_runs (integrated_account_id, resumed, worker)
             VALUES ($1, $2, $3) RETURNING run_id",
        )
        .bind(account)
        .bind(cursor.is_some())
        .bind(worker)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE sync_state
                SET status = 'running', current_run_id = $2, last_started_at = now(),
                    listing_run_id = CASE WHEN cursor IS NULL THEN $2 ELSE listing_run_id END,
                    pages = 0, users_seen = 0, inserted = 0, updated = 0, unchanged = 0,
                    deleted = 0, rejected = 0, updated_at = now()
              WHERE integrated_account_id = $1",
        )
        .bind(account)
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(RunStart {
            run_id,
            resume_cursor: cursor,
            interrupted_runs: interrupted,
            held_for: held_secs
                .filter(|s| *s > 0.0)
                .map(|s| std::time::Duration::from_secs_f64(s.min(LONGEST_HINT.as_secs_f64()))),
        })
    }

    /// Forgets a listing's cursor (the API refused it), so the run starts from the first page.
    pub async fn restart_listing(&self, account: Uuid, run_id: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE sync_state SET cursor = NULL, listing_run_id = $2, updated_at = now()
              WHERE integrated_account_id = $1",
        )
        .bind(account)
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE sync_runs SET resumed = false WHERE run_id = $1")
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Closes a run in `sync_runs` and `sync_state`. Returns the account's health before the
    /// run and as recorded now (`None` if the run was taken over and `sync_state` was left
    /// alone).
    pub async fn finish_run(
        &self,
        account: Uuid,
        run_id: i64,
        end: &RunEnd,
    ) -> Result<Option<(Health, Health)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE sync_runs
                SET finished_at = now(), outcome = $2, complete_listing = $3, deleted = $4,
                    deletions_skipped_reason = $5, error_kind = $6, error = $7,
                    hydrated = $8, hydration_failures = $9,
                    http_requests = http_requests + $10, retries = retries + $11,
                    rate_limited = rate_limited + $12
              WHERE run_id = $1",
        )
        .bind(run_id)
        .bind(end.outcome.as_str())
        .bind(end.complete_listing)
        .bind(end.deleted as i64)
        .bind(&end.deletions_skipped_reason)
        .bind(end.error_kind.map(ErrorKind::as_str))
        .bind(&end.error)
        .bind(end.hydration.hydrated as i64)
        .bind(end.hydration.hydration_failures as i64)
        .bind((end.hydration.http_requests + u64::from(end.failed_requests)) as i64)
        .bind((end.hydration.retries + u64::from(end.failed_requests.saturating_sub(1))) as i64)
        .bind(end.hydration.rate_limited as i64)
        .execute(&mut *tx)
        .await?;
        // Truto's `needs_reauth`, applied by a listing or a webhook event while this run was
        // under way, is newer news than the run's answers: the run's `ok` leaves it standing
        // (the next listing or event ungates the account if Truto has it active again). The
        // row is locked first so that an event committed meanwhile is the one compared.
        let gated_since_start: bool = sqlx::query_scalar(
            "SELECT s.health = $3 AND s.health_since >= r.started_at
               FROM sync_state s JOIN sync_runs r ON r.run_id = $2
              WHERE s.integrated_account_id = $1
                FOR UPDATE OF s",
        )
        .bind(account)
        .bind(run_id)
        .bind(Health::NeedsReauth.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .unwrap_or(false);
        let found = match end.health {
            Some(Health::Ok) if gated_since_start => None,
            h => h,
        };
        let before = sqlx::query(
            "UPDATE sync_state
                SET status = $3, last_outcome = $3, last_finished_at = now(), deleted = $4,
                    last_error = $5,
                    last_succeeded_at = CASE WHEN $3 = 'succeeded' THEN now() ELSE last_succeeded_at END,
                    consecutive_failures = CASE WHEN $3 IN ('succeeded', 'needs_attention') THEN 0
                                                WHEN $3 = 'failed' THEN consecutive_failures + 1
                                                ELSE consecutive_failures END,
                    cursor = CASE WHEN $6 THEN NULL ELSE cursor END,
                    health = coalesce($7, s.health),
                    health_since = CASE WHEN $7 IS NULL OR $7 = s.health THEN s.health_since ELSE now() END,
                    health_reason = CASE WHEN $7 IS NULL THEN s.health_reason
                                         WHEN $7 = 'ok' THEN NULL ELSE $8 END,
                    health_failures = CASE WHEN $7 IS NULL THEN s.health_failures
                                           WHEN $7 = 'ok' THEN 0 ELSE s.health_failures + 1 END,
                    -- A known hold's wait was measured a moment before this statement: the
                    -- same end comes back some milliseconds later, and rewriting it would move
                    -- it a little later at each run started during it. A second longer is a
                    -- new hold.
                    held_until = CASE WHEN $10 AND held_until > now()
                                       AND held_until + interval '1 second'
                                           >= now() + make_interval(secs => $9)
                                      THEN held_until
                                      ELSE now() + make_interval(secs => $9) END,
                    updated_at = now()
               FROM (SELECT health, health_since, health_reason, health_failures
                       FROM sync_state WHERE integrated_account_id = $1) AS s
              WHERE sync_state.integrated_account_id = $1 AND current_run_id = $2
          RETURNING s.health, sync_state.health",
        )
        .bind(account)
        .bind(run_id)
        .bind(end.outcome.as_str())
        .bind(end.deleted as i64)
        .bind(end.error.as_ref().or(end.deletions_skipped_reason.as_ref()))
        .bind(end.complete_listing || end.reset_cursor)
        .bind(found.map(Health::as_str))
        .bind(&end.error)
        .bind(end.held_for.map(|d| d.as_secs_f64()))
        .bind(end.hold_known)
        .fetch_optional(&mut *tx)
        .await?;
        crate::failpoint::point("finish_run").await;
        tx.commit().await?;
        before
            .map(|r| Ok((health(r.get(0))?, health(r.get(1))?)))
            .transpose()
    }
}

/// One run of `sync_runs`, as an account's page (and `accounts show`) shows it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct RunView {
    pub run_id: i64,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// As stored: `running`, `succeeded`, `needs_attention`, `failed` or `interrupted`.
    pub outcome: String,
    pub resumed: bool,
    pub complete_listing: bool,
    pub pages: i64,
    pub users_seen: i64,
    pub inserted: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub deleted: i64,
    pub undeleted: i64,
    pub rejected: i64,
    pub hydrated: i64,
    pub http_requests: i64,
    pub retries: i64,
    pub rate_limited: i64,
    pub deletions_skipped_reason: Option<String>,
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub worker: Option<String>,
}

impl Store {
    /// The account's latest `limit` runs, newest first (through `sync_runs_by_account`).
    pub async fn recent_runs(&self, account: Uuid, limit: i64) -> Result<Vec<RunView>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT run_id, started_at, finished_at, outcome, resumed, complete_listing, pages,
                    users_seen, inserted, updated, unchanged, deleted, undeleted, rejected,
                    hydrated, http_requests, retries, rate_limited, deletions_skipped_reason,
                    error_kind, error, worker
               FROM sync_runs
              WHERE integrated_account_id = $1
              ORDER BY started_at DESC, run_id DESC
              LIMIT $2",
        )
        .bind(account)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}
