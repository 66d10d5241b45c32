//! Sessions of lms-sync waiting for a lock another session holds (a DBA's `CREATE INDEX`, an
//! analyst's `LOCK TABLE` or open `SELECT … FOR UPDATE`): the syncs behind them stand still,
//! and nothing else would say so. Logged with who holds the lock, and counted in
//! `lms_sync_database_lock_wait_seconds`; the status page reads them itself. Nothing is
//! cancelled: ending the wait is the holder's (or a DBA's) decision.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::Live;
use crate::metrics::Metrics;
use crate::store::Store;

/// How often to look (one read of `pg_stat_activity` and `pg_locks`).
const EVERY: Duration = Duration::from_secs(5);
/// How often a wait that goes on is logged again.
const RETELL: Duration = Duration::from_secs(300);

/// Looks until `cancel`, with the threshold `database.lock_wait_warn_secs` of the settings in
/// force (reloads included). The gauge is set when there are `metrics` (the service).
pub async fn run(
    store: Store,
    live: Live,
    metrics: Option<Arc<Metrics>>,
    cancel: CancellationToken,
) {
    // Each wait (a session's statement) is logged when first seen, then every RETELL.
    let mut told: HashMap<(i32, DateTime<Utc>), Instant> = HashMap::new();
    loop {
        let min_secs = live.borrow().database.lock_wait_warn_secs as f64;
        match store.lock_waits(min_secs).await {
            Ok(waits) => {
                let longest = waits.iter().map(|w| w.waited_secs).fold(0.0, f64::max);
                if let Some(m) = &metrics {
                    m.set("lms_sync_database_lock_wait_seconds", &[], longest);
                }
                told.retain(|k, _| waits.iter().any(|w| (w.pid, w.since) == *k));
                for w in &waits {
                    let key = (w.pid, w.since);
                    if told.get(&key).is_some_and(|t| t.elapsed() < RETELL) {
                        continue;
                    }
                    told.insert(key, Instant::now());
                    tracing::warn!(
                        wait = %w,
                        "a session of lms-sync is waiting for a database lock another session holds; what it writes stands still until that session releases it"
                    );
                }
            }
            // The next look tries again; a database that is down is reported by what uses it.
            Err(e) => tracing::debug!(error = %e, "cannot look for lock waits"),
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = cancel.cancelled() => return,
        }
    }
}
