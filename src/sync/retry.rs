//! Retrying the store's retryable errors (lost connection, restart, deadlock) with backoff.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::SyncOptions;
use crate::backoff::Backoff;
use crate::store::{Store, StoreError};

/// Runs a store operation, retrying retryable errors (lost connection, restart, deadlock) with
/// backoff. Non-retryable errors return at once. With several hosts in database.url, `store`
/// looks for the one that accepts writes before a retry that follows trouble (a failover).
pub(super) async fn with_db_retries<T, F, Fut>(
    store: &Store,
    opts: &SyncOptions,
    cancel: &CancellationToken,
    op: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    with_db_retries_every(store, opts, cancel, Duration::from_secs(10), op).await
}

/// [`with_db_retries`] with no wait longer than `max` between attempts: for an operation
/// whose lateness costs more than its attempts (taking back a lost lease, which another
/// process may take meanwhile).
pub(super) async fn with_db_retries_every<T, F, Fut>(
    store: &Store,
    opts: &SyncOptions,
    cancel: &CancellationToken,
    max: Duration,
    mut op: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let policy = Backoff {
        initial: Duration::from_millis(250).min(max),
        max,
        max_attempts: opts.db_max_attempts,
        max_total_wait: Duration::from_secs(120),
    };
    let mut attempts = 0;
    let mut waited = Duration::ZERO;
    loop {
        attempts += 1;
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() => {
                let Some(wait) = policy.next_wait(attempts, waited, None, fastrand::f64()) else {
                    return Err(e);
                };
                tracing::warn!(attempt = attempts, wait_ms = wait.as_millis() as u64, error = %e, "database operation failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => return Err(e),
                }
                waited += wait;
                store.choose_host().await;
            }
            Err(e) => return Err(e),
        }
    }
}
