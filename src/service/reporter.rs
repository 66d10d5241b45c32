//! `server.account_metrics = "one_replica"`: one replica at a time, the holder of the reporter
//! lease, exports each account's state read from the database (see
//! [`crate::metrics::ACCOUNT_STATE_GAUGES`]); the others export none, so a fleet's state
//! series are scraped once, not once per replica. The lease is an advisory lock on a connection
//! of its own, like an account's: it ends with its holder (or the holder's connection), and
//! another replica takes it within [`TRY_EVERY`].

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::store::Store;

/// The reporter lease: the advisory lock of an id no integrated account has (the nil one is
/// discovery's).
const REPORTER_LEASE: Uuid = Uuid::from_u128(u128::MAX);

/// How often a replica without the lease tries to take it, and its holder checks that the
/// lease's connection still answers (one that ended is seen at once).
const TRY_EVERY: Duration = Duration::from_secs(10);

/// How long the holder's check may wait for its connection's answer.
const CHECK_LIMIT: Duration = Duration::from_secs(5);

/// Holds the reporter lease whenever it can until `cancel`; this process exports the accounts'
/// state while it holds it (the caller turns it off before: not until the lease is taken).
pub(super) async fn run(store: Store, metrics: Arc<Metrics>, cancel: CancellationToken) {
    while !cancel.is_cancelled() {
        match store.try_lease(REPORTER_LEASE).await {
            Ok(Some(mut lease)) => {
                metrics.report_account_state(true);
                tracing::info!("this replica exports the accounts' state metrics (server.account_metrics = \"one_replica\")");
                let why = loop {
                    tokio::select! {
                        why = lease.lost() => break Some(why),
                        _ = cancel.cancelled() => break None,
                        _ = tokio::time::sleep(TRY_EVERY) => {
                            if !lease.is_held(CHECK_LIMIT).await {
                                break Some("its connection did not answer".to_string());
                            }
                        }
                    }
                };
                metrics.report_account_state(false);
                match why {
                    Some(why) => {
                        tracing::warn!(error = %why, "this replica no longer exports the accounts' state metrics: its reporter lease ended; another replica (or this one) takes it over");
                        drop(lease);
                    }
                    None => lease.release().await,
                }
            }
            Ok(None) => {}
            Err(e) => {
                let e = store.explain(e).await;
                tracing::warn!(error = %e, "cannot take the reporter lease (server.account_metrics); trying again later");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(TRY_EVERY) => {}
            _ = cancel.cancelled() => {}
        }
    }
}
