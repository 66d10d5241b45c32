//! The discovery loop of `run`: one listing of Truto's integrated accounts every
//! `discovery.interval` for the whole fleet, by whichever replica takes the discovery lease once
//! it is due, applied to the registry (see [`crate::sync::discovery`]); the scheduler is woken so
//! that new accounts start at once.
//!
//! - *Due* is counted from the end of the last listing, whoever made it (another replica, a
//!   one-off `sync`, this process before a restart), in the database's time: N replicas list
//!   once per interval, not N times, and a rollout does not list again.
//! - A listing that failed is tried again `discovery.retry_initial` after it, doubling with
//!   each failure in a row up to the interval ([`DiscoverySettings::next_listing_after`]): a
//!   cause fixed meanwhile (a token, a proxy) does not cost a whole interval without new
//!   accounts.
//! - A process that Truto does not answer, or that has its token refused, does not take its
//!   turn: its listing would fail after its retries (holding the lease meanwhile) while another
//!   replica's might not. When its runs start again it lists at once if the last listing
//!   failed, else when the next one is due.
//! - A process whose API token is replaced (its file changed, SIGHUP) lists at once if the last
//!   listing failed: the old token may be what failed it (one of another Truto environment,
//!   say), and the accounts its runs could not reach come back with the listing that has them.
//! - Nor does a process whose scheduler found that the database accepts no writes (a read-only
//!   mode, a standby at the primary's address): the listing could not be recorded, so every
//!   retry would spend a listing's requests for nothing. It lists again as above once the
//!   database takes writes.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Live, Readiness};
use crate::config::DiscoverySettings;
use crate::metrics::Metrics;
use crate::source::TrutoClient;
use crate::store::{PurgedBy, Store, StoreError};
use crate::sync::discovery::{discover, DISCOVERY_LEASE};

pub(super) async fn run(
    store: Store,
    source: Arc<TrutoClient>,
    live: Live,
    ready: Arc<Readiness>,
    metrics: Arc<Metrics>,
    wake: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    let mut standing = source.watch_standing();
    let mut writes = ready.watch_writes();
    let mut halted_before = false;
    let mut refused_before = false;
    let mut replaced_before = standing.borrow().replaced;
    while !cancel.is_cancelled() {
        // (A reloaded configuration applies from the next listing on.)
        let settings = live.borrow().discovery.clone();
        let replaced = standing.borrow_and_update().replaced;
        let halt = source.halt();
        let refused = writes.borrow_and_update().clone();
        // When the runs start again, a listing that failed meanwhile is tried at once: what
        // failed it (the token, Truto not answering, the database) is what just ended.
        let mut retry_now = false;
        if replaced != replaced_before {
            replaced_before = replaced;
            retry_now = true;
            tracing::info!(
                "the API token was replaced: listing the integrated accounts at once if the last \
                 listing failed, else when the next is due"
            );
        }
        if refused.is_some() != refused_before {
            refused_before = refused.is_some();
            match &refused {
                Some((why, _)) => tracing::warn!(
                    why = %why,
                    "not listing the integrated accounts while the database accepts no writes: \
                     no listing could be recorded"
                ),
                None => {
                    retry_now = true;
                    tracing::info!(
                        "the database accepts writes: listing the integrated accounts at once if \
                         the last listing failed, else when the next is due"
                    )
                }
            }
        }
        if halt.is_some() != halted_before {
            halted_before = halt.is_some();
            match &halt {
                Some(halt) => tracing::warn!(
                    reason = %halt,
                    "not listing the integrated accounts while this process's runs are held; any \
                     replica Truto answers lists them"
                ),
                None => {
                    retry_now = true;
                    tracing::info!(
                        "listing the integrated accounts again: at once if the last listing \
                         failed, else when the next is due"
                    )
                }
            }
        }
        let wait = if !settings.enabled {
            tracing::info!("discovery was turned off by a reloaded configuration");
            settings.interval()
        } else if halt.is_some() || refused.is_some() {
            settings.interval()
        } else {
            take_turn(
                &store, &source, &settings, &metrics, &wake, retry_now, &cancel,
            )
            .await
        };
        // Look again as soon as this process's standing with Truto changes (a hold begins or
        // ends, the token is replaced); and whenever the database's changes.
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            Ok(()) = standing.changed() => {}
            Ok(()) = writes.changed() => {}
            _ = cancel.cancelled() => {}
        }
    }
}

/// Lists the integrated accounts if this process holds the discovery lease and a listing is
/// due (`retry_now`: a failed last listing is due at once); how long to wait before asking
/// again.
async fn take_turn(
    store: &Store,
    source: &TrutoClient,
    settings: &DiscoverySettings,
    metrics: &Metrics,
    wake: &tokio::sync::Notify,
    retry_now: bool,
    cancel: &CancellationToken,
) -> Duration {
    let interval = settings.interval();
    let lease = match store.try_lease(DISCOVERY_LEASE).await {
        Ok(Some(lease)) => lease,
        Ok(None) => {
            tracing::debug!("another replica is listing the integrated accounts");
            return settings.next_listing_after(1);
        }
        Err(e) => {
            let e = store.explain(e).await;
            tracing::warn!(error = %e, "cannot take the discovery lease; trying again later");
            return settings.next_listing_after(1);
        }
    };
    // Read under the lease: a listing that ends meanwhile is one this process then sees.
    match store.discovery_due_in(settings, retry_now).await {
        Ok(left) if !left.is_zero() => {
            lease.release().await;
            tracing::debug!(
                due_in_secs = left.as_secs(),
                "the integrated accounts were listed lately; the next listing is not due yet"
            );
            return left;
        }
        Ok(_) => {}
        Err(e) => {
            lease.release().await;
            let e = store.explain(e).await;
            tracing::warn!(error = %e, "cannot read when the accounts were last listed; trying again later");
            return settings.next_listing_after(1);
        }
    }
    let out = discover(store, source, settings, cancel).await;
    let result = match (&out.applied, &out.error) {
        (Some(a), _) if a.retire_guard.is_some() => "guarded",
        (Some(_), _) => "succeeded",
        _ => "failed",
    };
    // Only after a complete listing that retired as it should: one that failed, was partial
    // or was guarded might not have shown an account that is back.
    if let (Some(after), "succeeded") = (settings.purge_retired_after(), result) {
        purge_retired(store, after, metrics, cancel).await;
    }
    lease.release().await;
    metrics.inc("lms_sync_discovery_runs_total", &[("result", result)]);
    if out.applied.is_some() {
        wake.notify_one();
        return interval;
    }
    // Failed: the next is tried sooner than an interval, later with each failure in a row.
    let failures = out.failures.unwrap_or(1);
    let retry = settings.next_listing_after(failures);
    tracing::info!(
        failures,
        retry_in_secs = retry.as_secs(),
        "the integrated accounts will be listed again after the failed listing"
    );
    retry
}

/// The most accounts one listing's turn purges: the discovery lease is held meanwhile, so a
/// backlog (the rule just turned on over a year of departures) is worked off over several
/// listings instead of keeping every replica from listing for as long as it takes.
pub(super) const PURGES_PER_LISTING: usize = 10;

/// Purges the accounts retired for longer than `after` (the longest retired first, at most
/// [`PURGES_PER_LISTING`]), one transaction each (see [`Store::purge`]), under the discovery
/// lease: one replica purges, right after a listing that still did not show them. One that
/// fails (its run holds its lease, say) is tried again after the next listing.
async fn purge_retired(
    store: &Store,
    after: Duration,
    metrics: &Metrics,
    cancel: &CancellationToken,
) {
    let due = match store.retired_for(after).await {
        Ok(due) => due,
        Err(e) => {
            let e = store.explain(e).await;
            tracing::warn!(error = %e, "cannot read which retired accounts are due to be purged; trying after the next listing");
            return;
        }
    };
    let after_text = humantime::format_duration(after).to_string();
    if due.len() > PURGES_PER_LISTING {
        tracing::info!(
            due = due.len(),
            now = PURGES_PER_LISTING,
            "more retired accounts are due to be purged than one listing purges; the rest follow \
             after the next listings"
        );
    }
    for account in due.into_iter().take(PURGES_PER_LISTING) {
        if cancel.is_cancelled() {
            return;
        }
        match store.purge(account, PurgedBy::Service).await {
            Ok(p) => {
                metrics.inc("lms_sync_accounts_purged_total", &[("result", "purged")]);
                tracing::info!(
                    %account,
                    retired_at = %p.retired_at,
                    rows = p.total(),
                    purge_retired_after = %after_text,
                    "retired account purged: every row of it deleted (recorded in account_purges)"
                );
            }
            // Brought back (a webhook) or purged by an operator since it was read: nothing to do.
            Err(
                StoreError::NotRetired(_)
                | StoreError::NoSuchAccount(_)
                | StoreError::Protected { .. },
            ) => {
                tracing::debug!(%account, "the account is no longer retired, already purged, or protected; not purged");
            }
            Err(e) => {
                metrics.inc("lms_sync_accounts_purged_total", &[("result", "failed")]);
                let e = store.explain(e).await;
                tracing::warn!(%account, error = %e, "cannot purge a retired account; trying after the next listing");
            }
        }
    }
}
