//! A batch of pages in one transaction: its users (see [`super::users`]), the rejected
//! records, the cursor advance and the run's counters commit together or not at all.

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::users::write_users;
use super::{CopyRows, Store, StoreError};
use crate::domain::RunCounts;
use crate::model::{DecodedPage, Rejection};

/// Opens when the batch before a batch written ahead has committed (`Some(true)`) or failed
/// (`Some(false)`); see [`Store::apply_page`].
pub type Gate = tokio::sync::watch::Receiver<Option<bool>>;

/// What one page transaction writes.
#[derive(Debug, Clone, Copy)]
pub struct PageWrite<'a> {
    /// The users and rejected records of one or more consecutive API pages.
    pub page: &'a DecodedPage,
    /// The users pre-encoded for COPY (a set per page), used when they all turn out to be new.
    pub all_new: Option<&'a [CopyRows]>,
    /// The cursor the first page was fetched with: where the stored cursor must stand.
    pub cursor: Option<&'a str>,
    /// The cursor to store: the last page's next (none when the listing ended).
    pub next_cursor: Option<&'a str>,
    /// Requests, retries and 429s of the pages; `pages` is how many API pages they are.
    pub counts: RunCounts,
    /// `None`: any user may already be mirrored, look them all up. `Some(ids)`: only these
    /// may (the account was empty when the run started, and only this run has added users).
    pub lookup: Option<&'a [String]>,
    /// Record each change in `user_changes`.
    pub history: bool,
    /// The account hydrates: listed records may be partial (write only the fields they
    /// carry), and new or changed users are queued for their full objects.
    pub hydrate: bool,
}

/// What one page transaction did.
#[derive(Debug, Default)]
pub struct PageResult {
    pub counts: RunCounts,
    /// Records decoded only by the writer (they had changed) and refused then.
    pub rejected: Vec<Rejection>,
    /// Role and status values outside the documented lists among the users written.
    pub unknown_enums: Vec<(&'static str, String)>,
}

impl Store {
    /// Writes a batch of pages in one transaction: changed users and their children, the
    /// rejected records, the cursor advance and the counters. Unchanged users cause no write.
    ///
    /// With a `gate`, the batch is written ahead, while the batch before it is still
    /// committing: its rows are written at once (on a connection of its own, so PostgreSQL
    /// works on both at the same time), but the cursor advance waits for `gate`, so cursors
    /// still move in order; if the previous batch failed, this one rolls back. Only for
    /// batches that share no user with the one before (nothing to wait on in between).
    pub async fn apply_page(
        &self,
        account: Uuid,
        run_id: i64,
        w: &PageWrite<'_>,
        gate: Option<Gate>,
    ) -> Result<PageResult, StoreError> {
        let page = w.page;
        let mut tx = self.pool.begin().await?;
        let written = write_users(&mut tx, account, run_id, w).await?;
        let counts = RunCounts {
            inserted: written.inserted,
            updated: written.updated,
            unchanged: written.unchanged,
            undeleted: written.undeleted,
            rejected: (page.rejected.len() + written.rejected.len()) as u64,
            duplicates: page.duplicates,
            users_seen: (page.len() - written.rejected.len()) as u64,
            // `counts.pages` says how many API pages `page` holds: several are written
            // together when the writer falls behind the fetcher, and none when it is a part
            // of a page too large to write whole (its last part counts it).
            pages: w.counts.pages,
            ..w.counts
        };
        let rejected: Vec<&Rejection> = page.rejected.iter().chain(&written.rejected).collect();
        insert_rejected(&mut tx, account, run_id, &rejected).await?;
        if let Some(mut gate) = gate {
            let opened = gate.wait_for(Option::is_some).await.map(|v| *v);
            if !matches!(opened, Ok(Some(true))) {
                return Err(StoreError::PreviousFailed);
            }
        }
        advance_cursor(&mut tx, account, run_id, w, &counts).await?;
        add_run_counts(&mut tx, run_id, &counts).await?;
        crate::failpoint::point("page_tx").await;
        tx.commit().await?;
        Ok(PageResult {
            counts,
            rejected: written.rejected,
            unknown_enums: written.unknown_enums,
        })
    }
}

async fn insert_rejected(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    run_id: i64,
    rejected: &[&Rejection],
) -> Result<(), StoreError> {
    if rejected.is_empty() {
        return Ok(());
    }
    let ids: Vec<Option<&str>> = rejected.iter().map(|r| r.user_id.as_deref()).collect();
    let reasons: Vec<String> = rejected
        .iter()
        .map(|r| r.reason.replace('\0', "\\u0000"))
        .collect();
    let raws: Vec<&str> = rejected.iter().map(|r| r.raw.as_str()).collect();
    // The same record refused again for the same reason updates its row (one row per
    // distinct bad record); duplicates within the batch are folded first.
    sqlx::query(
        "INSERT INTO rejected_records AS r (integrated_account_id, run_id, last_run_id, user_id,
                                            reason, raw, record_hash, rejections)
         SELECT $1, $2, $2, t.user_id, t.reason, t.raw,
                decode(md5(t.reason || chr(31) || t.raw), 'hex'), count(*)
           FROM unnest($3::text[], $4::text[], $5::text[]) WITH ORDINALITY AS t(user_id, reason, raw, n)
          GROUP BY t.user_id, t.reason, t.raw
          ORDER BY min(t.n)
         ON CONFLICT (integrated_account_id, record_hash) DO UPDATE
            SET rejections = r.rejections + excluded.rejections, last_run_id = excluded.last_run_id,
                last_rejected_at = now()",
    )
    .bind(account)
    .bind(run_id)
    .bind(&ids)
    .bind(&reasons)
    .bind(&raws)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Moves the account's cursor past the batch, with the run's counters in `sync_state`.
async fn advance_cursor(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    run_id: i64,
    w: &PageWrite<'_>,
    counts: &RunCounts,
) -> Result<(), StoreError> {
    // IMPORTANT: the cursor advances only from where this run left it. Anything else means
    // the database lost commits or another process owns the run: writing on would skip pages.
    let advanced = sqlx::query(
        "UPDATE sync_state
            SET cursor = $2, pages = pages + $10, users_seen = users_seen + $3,
                inserted = inserted + $4, updated = updated + $5, unchanged = unchanged + $6,
                rejected = rejected + $7, updated_at = now()
          WHERE integrated_account_id = $1 AND current_run_id = $8
            AND cursor IS NOT DISTINCT FROM $9",
    )
    .bind(account)
    .bind(w.next_cursor)
    .bind(counts.users_seen as i64)
    .bind(counts.inserted as i64)
    .bind(counts.updated as i64)
    .bind(counts.unchanged as i64)
    .bind(counts.rejected as i64)
    .bind(run_id)
    .bind(w.cursor)
    .bind(counts.pages as i64)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if advanced != 1 {
        return Err(StoreError::Diverged);
    }
    Ok(())
}

async fn add_run_counts(
    tx: &mut Transaction<'_, Postgres>,
    run_id: i64,
    counts: &RunCounts,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE sync_runs
            SET pages = pages + $12, users_seen = users_seen + $2, inserted = inserted + $3,
                updated = updated + $4, unchanged = unchanged + $5, undeleted = undeleted + $6,
                rejected = rejected + $7, duplicates = duplicates + $8,
                http_requests = http_requests + $9, retries = retries + $10,
                rate_limited = rate_limited + $11
          WHERE run_id = $1",
    )
    .bind(run_id)
    .bind(counts.users_seen as i64)
    .bind(counts.inserted as i64)
    .bind(counts.updated as i64)
    .bind(counts.unchanged as i64)
    .bind(counts.undeleted as i64)
    .bind(counts.rejected as i64)
    .bind(counts.duplicates as i64)
    .bind(counts.http_requests as i64)
    .bind(counts.retries as i64)
    .bind(counts.rate_limited as i64)
    .bind(counts.pages as i64)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
