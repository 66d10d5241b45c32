//! The discovery loop of `run`: every `discovery.interval`, one replica (the one holding the
//! discovery lease) lists Truto's integrated accounts and applies them to the registry (see
//! [`crate::sync::discovery`]); the scheduler is woken so that new accounts start at once.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::Live;
use crate::metrics::Metrics;
use crate::source::TrutoClient;
use crate::store::Store;
use crate::sync::discovery::discover;

/// The discovery lease: the advisory lock of the nil account (no integrated account has it).
const DISCOVERY_LEASE: Uuid = Uuid::nil();

pub(super) async fn run(
    store: Store,
    source: Arc<TrutoClient>,
    live: Live,
    metrics: Arc<Metrics>,
    wake: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    while !cancel.is_cancelled() {
        // (A reloaded configuration applies from the next listing on.)
        let settings = live.borrow().discovery.clone();
        match store.try_lease(DISCOVERY_LEASE).await {
            Ok(Some(lease)) if settings.enabled => {
                let out = discover(&store, &source, &settings, &cancel).await;
                lease.release().await;
                let result = match (&out.applied, &out.error) {
                    (Some(a), _) if a.retire_guard.is_some() => "guarded",
                    (Some(_), _) => "succeeded",
                    _ => "failed",
                };
                metrics.inc("lms_sync_discovery_runs_total", &[("result", result)]);
                if out.applied.is_some() {
                    wake.notify_one();
                }
            }
            Ok(Some(lease)) => lease.release().await,
            Ok(None) => tracing::debug!("another replica is listing the integrated accounts"),
            Err(e) => {
                let e = store.explain(e).await;
                tracing::warn!(error = %e, "cannot take the discovery lease; trying again later")
            }
        }
        if !settings.enabled {
            tracing::info!("discovery was turned off by a reloaded configuration");
        }
        tokio::select! {
            _ = tokio::time::sleep(settings.interval()) => {}
            _ = cancel.cancelled() => {}
        }
    }
}
