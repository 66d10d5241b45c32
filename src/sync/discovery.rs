//! One discovery pass: list every configured integration's accounts in Truto and apply the
//! listing to the registry (new accounts join, known ones are updated, ones Truto no longer
//! lists are retired unless the guard refuses, Truto's status gates health). The service's
//! discovery loop, the one-shot `sync` and the tests all call [`discover`]. A listing that
//! fails changes nothing.

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{DiscoverySettings, Settings};
use crate::fleet::{plan, Planned};
use crate::source::{IntegratedAccount, TrutoClient};
use crate::store::{Discovered, DiscoveryApplied, RetirePolicy, Store, StoreError};

/// What one discovery pass did.
#[derive(Debug, Default)]
pub struct DiscoveryOutcome {
    /// What the listing changed; `None` when it failed.
    pub applied: Option<DiscoveryApplied>,
    /// Why the listing failed (nothing changed), or the registry could not be written.
    pub error: Option<String>,
    /// Why the listing was not complete (nothing retired), when it was not.
    pub incomplete: Option<String>,
    /// HTTP requests the listing took.
    pub requests: u32,
    /// After a failed listing: how many have failed in a row, as recorded (`None` when the
    /// listing did not fail or its failure could not be recorded).
    pub failures: Option<u32>,
}

/// The discovery lease: the advisory lock of the nil account (no integrated account has it).
/// Whoever lists for the fleet (a replica's loop, `accounts discover`) holds it meanwhile.
pub const DISCOVERY_LEASE: Uuid = Uuid::nil();

/// Lists and applies; never panics, every failure ends in the outcome (and in the log).
pub async fn discover(
    store: &Store,
    source: &TrutoClient,
    settings: &DiscoverySettings,
    cancel: &CancellationToken,
) -> DiscoveryOutcome {
    discover_with(store, source, settings, cancel, false).await
}

/// [`discover`]; with `dry_run`, says what the listing would change and changes nothing (not
/// even `discovery_state`).
pub async fn discover_with(
    store: &Store,
    source: &TrutoClient,
    settings: &DiscoverySettings,
    cancel: &CancellationToken,
    dry_run: bool,
) -> DiscoveryOutcome {
    let mut out = DiscoveryOutcome::default();
    let mut listed: Vec<IntegratedAccount> = Vec::new();
    for integration in &settings.integrations {
        match source.list_integrated_accounts(integration, cancel).await {
            Ok(l) => {
                out.requests += l.requests;
                listed.extend(l.accounts);
                if l.incomplete.is_some() {
                    out.incomplete = l.incomplete;
                }
            }
            Err(f) => {
                out.requests += f.requests;
                let error = format!("listing the {integration} accounts failed: {}", f.error);
                tracing::error!(%error, "discovery failed; the registry is left as it was");
                if !dry_run {
                    match store.discovery_failed(&error).await {
                        Ok(n) => out.failures = Some(n),
                        Err(e) => {
                            tracing::warn!(error = %e, "could not record the failed discovery")
                        }
                    }
                }
                out.error = Some(error);
                return out;
            }
        }
    }
    let rows: Vec<Discovered> = listed.iter().map(discovered).collect();
    let policy = RetirePolicy {
        complete: out.incomplete.is_none(),
        max_fraction: settings.max_retire_fraction,
    };
    match store.apply_discovery(&rows, policy, dry_run).await {
        Ok(applied) if dry_run => out.applied = Some(applied),
        Ok(applied) => {
            if let Some(guard) = &applied.retire_guard {
                tracing::warn!(guard = %guard, "discovery retired no account");
            }
            tracing::info!(
                listed = applied.listed,
                added = applied.added,
                retired = applied.retired,
                unretired = applied.unretired,
                incomplete = out.incomplete.as_deref(),
                "discovery finished"
            );
            out.applied = Some(applied);
        }
        Err(e) => {
            let e = store.explain(e).await;
            tracing::error!(error = %e, "could not apply the discovery to the registry");
            out.error = Some(e.to_string());
        }
    }
    out
}

/// The fleet as the one-shot commands work on it: the configured accounts registered, Truto's
/// integrated accounts listed first when discovery is on, then the registry merged with the
/// configuration. The listing's outcome (when there was one) is the caller's to report.
pub async fn refresh_fleet(
    store: &Store,
    source: &TrutoClient,
    settings: &Settings,
    cancel: &CancellationToken,
) -> Result<(Vec<Planned>, Option<DiscoveryOutcome>), StoreError> {
    store.register_configured(&settings.accounts).await?;
    let listed = if settings.discovery.enabled {
        Some(discover(store, source, &settings.discovery, cancel).await)
    } else {
        None
    };
    let registry = store.registry().await?;
    Ok((plan(settings, &registry), listed))
}

fn discovered(a: &IntegratedAccount) -> Discovered {
    Discovered {
        id: a.id,
        tenant_id: a.tenant_id.clone(),
        status: a.status.clone(),
        integration: a.integration.clone(),
        is_sandbox: a.is_sandbox,
    }
}
