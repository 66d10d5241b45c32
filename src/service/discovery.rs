//! The discovery loop of `run`: every `discovery.interval`, one replica (the one holding the
//! discovery lease) lists Truto's integrated accounts and applies them to the registry (see
//! [`crate::sync::discovery`]); the scheduler is woken so that new accounts start at once.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::DiscoverySettings;
use crate::metrics::Metrics;
use crate::source::TrutoClient;
use crate::store::Store;
use crate::sync::discovery::discover;

/// The discovery lease: the advisory lock of the nil account (no integrated account has it).
const DISCOVERY_LEASE: Uuid = Uuid::nil();

pub(super) async fn run(
    store: Store,
    source: Arc<TrutoClient>,
    settings: DiscoverySettings,
    metrics: Arc<Metrics>,
    wake: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    let interval = settings.interval();
    while !cancel.is_cancelled() {
        match store.try_lease(DISCOVERY_LEASE).await {
            Ok(Some(lease)) => {
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
            Ok(None) => tracing::debug!("another replica is listing the integrated accounts"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the discovery lease; trying again later")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = cancel.cancelled() => {}
        }
    }
}
