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
use crate::store::{
    Discovered, DiscoveryApplied, ListedEnvironment, RetirePolicy, Store, StoreError,
};

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

/// How a listing is applied beyond what the configuration says (`accounts discover`'s flags).
#[derive(Debug, Clone, Copy, Default)]
pub struct ListingOptions {
    /// Say what the listing would change, changing nothing (not even `discovery_state`).
    pub dry_run: bool,
    /// Follow the listing's Truto environment from now on, whatever the registry followed.
    pub adopt_environment: bool,
}

/// Lists and applies; never panics, every failure ends in the outcome (and in the log).
pub async fn discover(
    store: &Store,
    source: &TrutoClient,
    settings: &DiscoverySettings,
    cancel: &CancellationToken,
) -> DiscoveryOutcome {
    discover_with(store, source, settings, cancel, ListingOptions::default()).await
}

/// [`discover`], applied as `options` say.
pub async fn discover_with(
    store: &Store,
    source: &TrutoClient,
    settings: &DiscoverySettings,
    cancel: &CancellationToken,
    options: ListingOptions,
) -> DiscoveryOutcome {
    let mut out = DiscoveryOutcome::default();
    // The token the listing is made with: one replaced meanwhile is not judged by it.
    let generation = source.token_generation();
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
                return failed(store, out, error, None, options.dry_run).await;
            }
        }
    }
    let environment = match listed_environment(&listed) {
        Ok(id) => ListedEnvironment {
            id,
            adopt: options.adopt_environment,
        },
        Err(error) => return failed(store, out, error, None, options.dry_run).await,
    };
    let rows: Vec<Discovered> = listed.iter().map(discovered).collect();
    let policy = RetirePolicy {
        complete: out.incomplete.is_none(),
        max_fraction: settings.max_retire_fraction,
    };
    match store
        .apply_discovery(&rows, policy, environment, options.dry_run)
        .await
    {
        Ok(applied) if options.dry_run => out.applied = Some(applied),
        Ok(applied) => {
            source.environment_listed(generation, environment.id, applied.environment.as_deref());
            if let Some(guard) = &applied.retire_guard {
                tracing::warn!(guard = %guard, "discovery retired no account");
            }
            if let Some(before) = &applied.adopted_from {
                tracing::warn!(
                    environment = environment.id,
                    before = %before,
                    "the registry follows another Truto environment from now on"
                );
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
        Err(
            ref e @ StoreError::OtherEnvironment {
                ref follows,
                ref listed,
            },
        ) => {
            // No run of this process starts with the token meanwhile (each would answer 404);
            // the other processes sharing the database check theirs (`discovery_state`).
            if !options.dry_run {
                source.environment_listed(generation, Some(listed), Some(follows));
            }
            return failed(store, out, e.to_string(), Some(listed), options.dry_run).await;
        }
        Err(e) => {
            let e = store.explain(e).await;
            tracing::error!(error = %e, "could not apply the discovery to the registry");
            out.error = Some(e.to_string());
        }
    }
    out
}

/// A listing that failed, or that must not be applied: logged, and (unless a dry run)
/// recorded among the failed listings in a row; the registry is left as it was. `other`: the
/// environment the listing showed when it was not the followed one.
async fn failed(
    store: &Store,
    mut out: DiscoveryOutcome,
    error: String,
    other: Option<&str>,
    dry_run: bool,
) -> DiscoveryOutcome {
    tracing::error!(%error, "discovery failed; the registry is left as it was");
    if !dry_run {
        match store.discovery_failed(&error, other).await {
            Ok(n) => out.failures = Some(n),
            Err(e) => tracing::warn!(error = %e, "could not record the failed discovery"),
        }
    }
    out.error = Some(error);
    out
}

/// The one Truto environment the listed accounts belong to (`None` when none says which), or
/// why the listing cannot be applied: an API token lists one environment's accounts, so a
/// listing that shows several is not one to trust (pure).
pub fn listed_environment(listed: &[IntegratedAccount]) -> Result<Option<&str>, String> {
    let seen: std::collections::BTreeSet<&str> = listed
        .iter()
        .filter_map(|a| a.environment_id.as_deref())
        .collect();
    match seen.len() {
        0 | 1 => Ok(seen.into_iter().next()),
        n => Err(format!(
            "the listing shows the accounts of {n} Truto environments ({}), where an API token \
             lists one environment's; nothing was applied",
            seen.into_iter().collect::<Vec<_>>().join(", ")
        )),
    }
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
        environment_id: a.environment_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_environment(n: u128, environment: Option<&str>) -> IntegratedAccount {
        IntegratedAccount {
            id: Uuid::from_u128(n),
            tenant_id: None,
            status: Some("active".into()),
            is_sandbox: false,
            integration: Some("talentlms".into()),
            environment_id: environment.map(str::to_string),
        }
    }

    #[test]
    fn a_listing_belongs_to_the_one_environment_its_accounts_name() {
        assert_eq!(listed_environment(&[]), Ok(None));
        let one = [in_environment(1, Some("e1")), in_environment(2, None)];
        assert_eq!(listed_environment(&one), Ok(Some("e1")));
        let unsaid = [in_environment(1, None)];
        assert_eq!(listed_environment(&unsaid), Ok(None));
        let two = [
            in_environment(1, Some("e2")),
            in_environment(2, Some("e1")),
            in_environment(3, Some("e2")),
        ];
        let refused = listed_environment(&two).unwrap_err();
        assert!(
            refused.starts_with("the listing shows the accounts of 2 Truto environments (e1, e2)"),
            "{refused}"
        );
    }
}
