//! Leases: a process claims an account for a run with a PostgreSQL advisory lock held on a
//! connection of its own.

use std::time::Duration;

use uuid::Uuid;

use super::{Store, StoreError, Watched, LEASE_APPLICATION_NAME};

/// An exclusive claim on one account, held as a PostgreSQL advisory lock on a connection of its
/// own: it ends when released, when this value is dropped, or when the process or its
/// connection dies, so a crashed worker never blocks an account. The connection is watched
/// ([`Lease::lost`]): its holder sees the lease end the moment the server frees it.
pub struct Lease {
    conn: Watched,
    keys: (i32, i32),
    account: Uuid,
}

/// What the process that held an account's lease before left of its request window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handover {
    /// Nobody recorded one: no requests of another process are in the window.
    Nothing,
    /// This process held it last: its own memory counts those requests already.
    Mine,
    /// Another process released it, with the ages (as of now) of its requests then still in
    /// the window.
    Released(Vec<Duration>),
    /// Another process held it and ended without releasing it (killed, lost its connection):
    /// what it sent is unknown, up to a whole window. `fenced`: that process watched its
    /// lease's connection and stopped sending the moment it ended, that is before this lease
    /// could be taken; otherwise (an older binary) it may have gone on for up to a lease.
    Abandoned { fenced: bool },
}

impl Lease {
    /// Takes over the account's request window from the process that held its lease before
    /// (see [`Handover`]), and marks it held by `holder` until [`Lease::release_with_requests`]
    /// — by a holder that fences itself: it stops sending for the account the moment this
    /// lease's connection ends ([`Lease::lost`]).
    pub async fn take_window(&mut self, holder: &str) -> Result<Handover, StoreError> {
        // The CTE's SELECT sees the row as it was before the INSERT's update.
        let row: Option<(Option<String>, bool, bool, Vec<i64>)> = sqlx::query_as(
            "WITH prev AS (
                 SELECT holder, held_since, released_at, ages_ms, fencing_holder
                   FROM rate_account_windows WHERE integrated_account_id = $1
             ), mark AS (
                 INSERT INTO rate_account_windows
                        (integrated_account_id, ages_ms, holder, held_since, fencing_holder)
                 VALUES ($1, '{}', $2, now(), $2)
                 ON CONFLICT (integrated_account_id) DO UPDATE
                    SET holder = excluded.holder, held_since = excluded.held_since,
                        fencing_holder = excluded.fencing_holder
             )
             SELECT holder,
                    coalesce(held_since >= released_at, false),
                    coalesce(fencing_holder = holder, false),
                    ARRAY(SELECT (a + extract(epoch FROM now() - released_at) * 1000)::bigint
                            FROM unnest(ages_ms) a)
               FROM prev",
        )
        .bind(self.account)
        .bind(holder)
        .fetch_optional(&mut *self.conn)
        .await?;
        Ok(match row {
            None => Handover::Nothing,
            Some((last, ..)) if last.as_deref() == Some(holder) => Handover::Mine,
            Some((_, true, fenced, _)) => Handover::Abandoned { fenced },
            Some((_, false, _, ages)) => Handover::Released(
                ages.into_iter()
                    .map(|ms| Duration::from_millis(ms.max(0) as u64))
                    .collect(),
            ),
        })
    }

    /// Records the ages of the account's requests still in its window (for the next process
    /// to lease it), then releases the lease. Every time is the database's, so hosts' clocks
    /// do not matter.
    pub async fn release_with_requests(mut self, ages: &[Duration]) {
        let ms: Vec<i32> = ages
            .iter()
            .map(|a| a.as_millis().min(i32::MAX as u128) as i32)
            .collect();
        let recorded = if ms.is_empty() {
            sqlx::query("DELETE FROM rate_account_windows WHERE integrated_account_id = $1")
                .bind(self.account)
                .execute(&mut *self.conn)
                .await
        } else {
            sqlx::query(
                "INSERT INTO rate_account_windows (integrated_account_id, ages_ms)
                 VALUES ($1, $2)
                 ON CONFLICT (integrated_account_id) DO UPDATE
                    SET released_at = now(), ages_ms = excluded.ages_ms, held_since = NULL",
            )
            .bind(self.account)
            .bind(&ms)
            .execute(&mut *self.conn)
            .await
        };
        if let Err(e) = recorded {
            // The next process may then run into the vendor's window, which it honours.
            tracing::warn!(error = %e, "could not hand the account's request window on");
        }
        self.release().await
    }

    /// Whether the lease is still held: its connection answers within `limit`. A connection
    /// that fails or does not answer has lost (or may have lost) the lock with it. (One that
    /// ended is seen sooner by [`Lease::lost`]; this also catches one that hangs.)
    pub async fn is_held(&mut self, limit: Duration) -> bool {
        let check = sqlx::query("SELECT 1").execute(&mut *self.conn);
        matches!(tokio::time::timeout(limit, check).await, Ok(Ok(_)))
    }

    pub async fn release(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock($1, $2)")
            .bind(self.keys.0)
            .bind(self.keys.1)
            .execute(&mut *self.conn)
            .await;
        // Dropping the connection ends it (its pool goes with it).
    }

    /// Resolves when the lease's connection has ended, and with it the lease: the server frees
    /// the lock as the session ends, so another process may take it from then on. The holder
    /// stops sending for the account at once; that is what makes it one that fences itself
    /// (see [`Lease::take_window`]). Cancel-safe.
    pub async fn lost(&mut self) -> String {
        self.conn.ended().await
    }
}

impl Store {
    /// Tries to lease `account`; `None` when another process holds it.
    pub async fn try_lease(&self, account: Uuid) -> Result<Option<Lease>, StoreError> {
        let mut conn = self.watched_connection(LEASE_APPLICATION_NAME).await?;
        let keys: (i32, i32) = sqlx::query_as("SELECT hashtext('lms-sync:' || $1), hashtext($2)")
            .bind(&self.schema)
            .bind(account.to_string())
            .fetch_one(&mut *conn)
            .await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(keys.0)
            .bind(keys.1)
            .fetch_one(&mut *conn)
            .await?;
        if got {
            Ok(Some(Lease {
                conn,
                keys,
                account,
            }))
        } else {
            Ok(None)
        }
    }
}
