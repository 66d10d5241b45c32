//! `check`: a deployment's preflight. What `run` needs is checked once, changing nothing: the
//! database (reachable, a supported PostgreSQL, room for a process's sessions), the schema (migrated for this binary), the
//! role's rights, Truto's answer to the API token, each configured account as Truto knows it,
//! the discovery listing and the configuration's tenants in it, whether Truto's webhooks would
//! be received and acted on, and the admin routes' token. One line per check, with what to do;
//! exit 0 only when none failed (a warning is for what may be meant).
//! Its few requests are paced under the token's budget shared with the running replicas.

use futures_util::stream::{self, StreamExt};
use tokio_util::sync::CancellationToken;

use super::exit::CliError;
use super::render::{self, Check};
use crate::config::{AccountSettings, Settings};
use crate::domain::ErrorKind;
use crate::source::{SourceError, TrutoClient};
use crate::store::Store;

/// The oldest PostgreSQL lms-sync runs on (`server_version_num`).
const OLDEST_POSTGRES: i32 = 140_000;
/// Configured accounts looked up at once.
const LOOKUPS_AT_ONCE: usize = 4;
/// Problems listed by name in one check's detail; the rest are counted.
const LISTED: usize = 10;
/// Attempts of the first request to Truto. A preflight says within seconds (at most this many
/// request timeouts when nothing answers at all) that Truto fails, instead of after the minute
/// or more a request's whole retries take (8 attempts with the defaults); a blip is still
/// retried. Once Truto has answered, the rest retries as every request does.
const TRUTO_ATTEMPTS: u32 = 3;

pub async fn check(settings: Settings) -> Result<(), CliError> {
    let token = super::commands::sync_prerequisites(&settings)?;
    let source = TrutoClient::from_settings(&settings, &token)?;
    let mut checks = vec![Check::passed("configuration", configuration(&settings))];
    let dropped = settings.exclusions_dropped();
    if !dropped.is_empty() {
        checks.push(Check::warned("exclusions", dropped.join("; ")));
    }
    let store = database(&settings, &mut checks).await;
    let cancel = crate::service::shutdown_on_signals();
    // The token's window is shared with the service's replicas when the schema is usable.
    let sharing = CancellationToken::new();
    let shared = store
        .as_ref()
        .and_then(|store| super::commands::share_budget(store, &source, &sharing));
    // The environment the mirror follows, to compare the listing with (none when the schema
    // cannot be read: the database's check says why).
    let follows = match &store {
        Some(store) => store
            .discovery_state()
            .await
            .ok()
            .flatten()
            .and_then(|d| d.6),
        None => None,
    };
    truto(&settings, &source, follows.as_deref(), &cancel, &mut checks).await;
    checks.extend(webhooks(&settings));
    checks.extend(admin_routes(&settings));
    checks.extend(status_page(&settings));
    sharing.cancel();
    if let Some(task) = shared {
        let _ = task.await;
    }
    print!("{}", render::checks(&checks));
    if checks.iter().all(Check::ok) {
        Ok(())
    } else {
        Err(CliError::Failed)
    }
}

/// The status page when it needs the admin token (`server.status_page_requires_token`): `run`
/// does not start without one.
fn status_page(settings: &Settings) -> Option<Check> {
    if !settings.server.status_page_requires_token {
        return None;
    }
    Some(match super::commands::require_page_token(settings) {
        Err(e) => Check::failed("status page", format!("{e}; run does not start so")),
        Ok(()) => Check::passed(
            "status page",
            "/ and /accounts/{id} need the admin token (Bearer, or as a browser's password)",
        ),
    })
}

/// The admin routes as `run` would serve them: said when an admin token is set (or cannot be
/// read). Reads the token; sends nothing.
fn admin_routes(settings: &Settings) -> Option<Check> {
    let listen = &settings.server.listen;
    Some(match settings.admin_token() {
        Err(e) => Check::failed(
            "admin routes",
            format!("{e}; run does not start without it"),
        ),
        Ok(None) => return None,
        Ok(Some(_)) if listen.is_empty() => Check::failed(
            "admin routes",
            "an admin token is set, but server.listen is empty: nothing serves GET /status or \
             POST /accounts/{id}/...; set server.listen",
        ),
        Ok(Some(_)) => Check::passed(
            "admin routes",
            format!(
                "GET /status, /status/budget and POST /accounts/{{id}}/... on {listen} take the \
                 token from {}",
                secret_source(crate::config::ADMIN_TOKEN_ENV, "server.admin_token_file")
            ),
        ),
    })
}

/// Where a secret comes from, as the settings read it: the variable `env` when set and not
/// blank, else the file `key` names.
fn secret_source(env: &'static str, key: &'static str) -> &'static str {
    if std::env::var(env).is_ok_and(|v| !v.trim().is_empty()) {
        env
    } else {
        key
    }
}

/// Truto's webhooks as `run` would receive them: said when a webhook secret is set (or cannot
/// be read), and with discovery on, which they speed up. Reads the secret; sends nothing.
fn webhooks(settings: &Settings) -> Option<Check> {
    let secret = match settings.webhook_secret() {
        Ok(secret) => secret,
        Err(e) => {
            return Some(Check::failed(
                "webhooks",
                format!("{e}; run does not start without it"),
            ))
        }
    };
    let listen = &settings.server.listen;
    Some(match (secret, settings.discovery.enabled) {
        (None, false) => return None,
        (None, true) => Check::passed(
            "webhooks",
            "off (no TRUTO_WEBHOOK_SECRET or webhooks.secret_file): an account connected in \
             Truto is found by the next listing, within discovery.interval",
        ),
        (Some(_), _) if listen.is_empty() => Check::failed(
            "webhooks",
            "a webhook secret is set, but server.listen is empty: nothing receives POST \
             /webhooks/truto; set server.listen",
        ),
        (Some(_), false) => Check::failed(
            "webhooks",
            "a webhook secret is set, but discovery is off: account events would be answered \
             and ignored; turn [discovery] on, or remove the secret",
        ),
        (Some(_), true) => Check::passed(
            "webhooks",
            format!(
                "POST /webhooks/truto on {listen} verifies deliveries with the secret from {}; \
                 register it with Truto for the integrated_account:* events",
                secret_source(crate::config::WEBHOOK_SECRET_ENV, "webhooks.secret_file")
            ),
        ),
    })
}

/// "1 account", "2 accounts".
fn accounts_n(n: usize) -> String {
    format!("{n} account{}", if n == 1 { "" } else { "s" })
}

fn configuration(settings: &Settings) -> String {
    let accounts = format!("{} configured", accounts_n(settings.accounts.len()));
    if settings.discovery.enabled {
        format!(
            "{accounts}; discovery on ({})",
            settings.discovery.integrations.join(", ")
        )
    } else {
        format!("{accounts}; discovery off")
    }
}

/// The database's checks; the store when its schema is ready, the role may use it and it
/// accepts writes.
async fn database(settings: &Settings, checks: &mut Vec<Check>) -> Option<Store> {
    let url = settings.database_url().ok()?;
    let store = match Store::connect(url, &settings.database).await {
        Ok(store) => store,
        Err(e) => {
            checks.push(Check::failed("database", e.to_string()));
            checks.push(Check::skipped("schema", "no database connection"));
            checks.push(Check::skipped("privileges", "no database connection"));
            return None;
        }
    };
    // A database that takes no writes is not one the token's window can be shared through
    // (the rounds write), whatever the checks after this one find.
    let mut writable = true;
    match store.server_version_num().await {
        Ok(v) if v >= OLDEST_POSTGRES => {
            let mut how = match store.connection().await {
                Ok(c) => format!("; {c}"),
                Err(_) => String::new(),
            };
            if let Some(host) = store.host_in_use() {
                how.push_str(&format!("; {host}"));
            }
            checks.push(match store.refuses_writes().await {
                Ok(None) => Check::passed("database", format!("connected; {}{how}", postgres(v))),
                Ok(Some(why)) => {
                    writable = false;
                    Check::failed(
                        "database",
                        format!(
                            "connected; {}{how}; but it accepts no writes: {why}",
                            postgres(v)
                        ),
                    )
                }
                Err(e) => Check::failed("database", store.explain(e).await.to_string()),
            })
        }
        Ok(v) => checks.push(Check::failed(
            "database",
            format!(
                "{} is older than the PostgreSQL 14 lms-sync needs (it reads pg_locks.waitstart)",
                postgres(v)
            ),
        )),
        Err(e) => checks.push(Check::failed(
            "database",
            store.explain(e).await.to_string(),
        )),
    }
    if let Some(c) = connections(settings, &store).await {
        checks.push(c);
    }
    let ready = match store.schema_state().await.and_then(|s| s.ready()) {
        Ok(()) => {
            // Ready either way: a disabled trigger costs the operators' trail, positions from
            // another cluster the change feed's loaders, not the sync.
            let off = store.disabled_triggers().await.unwrap_or_default();
            let problem = match off.first() {
                Some((table, trigger)) => Some(format!(
                    "the trigger {trigger} of {table} is disabled{}: changes it records \
                     (account_actions: who paused, protected or reset an account) go \
                     unrecorded; as the schema's owner: ALTER TABLE {}.{table} ENABLE \
                     TRIGGER {trigger}",
                    if off.len() > 1 {
                        format!(" (and {} more)", off.len() - 1)
                    } else {
                        String::new()
                    },
                    store.schema()
                )),
                None => store.feed_positions_ahead().await.ok().flatten(),
            };
            checks.push(match problem {
                Some(problem) => Check::failed("schema", problem),
                None => Check::passed(
                    "schema",
                    format!(
                        "every migration of this binary is applied (the latest: {})",
                        crate::store::SchemaState::known()
                    ),
                ),
            });
            true
        }
        Err(e) => {
            checks.push(Check::failed("schema", store.explain(e).await.to_string()));
            false
        }
    };
    if !ready {
        checks.push(Check::skipped("privileges", "the schema is not ready"));
        return None;
    }
    match store.missing_privileges().await {
        Ok(missing) if missing.is_empty() => {
            checks.push(Check::passed(
                "privileges",
                "the role has every right the service needs on the schema",
            ));
            writable.then_some(store)
        }
        Ok(missing) => {
            checks.push(Check::failed(
                "privileges",
                format!(
                    "the role lacks {} of the rights the service needs; grant what docs/schema.md, \
                     Roles: least privilege, lists (as the schema's owner): {}",
                    missing.len(),
                    listed(&missing)
                ),
            ));
            None
        }
        Err(e) => {
            checks.push(Check::failed(
                "privileges",
                store.explain(e).await.to_string(),
            ));
            None
        }
    }
}

fn postgres(version_num: i32) -> String {
    format!(
        "PostgreSQL {}.{}",
        version_num / 10_000,
        version_num % 10_000
    )
}

/// The first [`LISTED`] of `items`, and how many more.
fn listed(items: &[String]) -> String {
    let mut s = items
        .iter()
        .take(LISTED)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if items.len() > LISTED {
        s.push_str(&format!("; and {} more", items.len() - LISTED));
    }
    s
}

/// The sessions a `run` process with these settings opens at full load, each kind named:
/// its pool, a lease per account it syncs at once, and one each for the request budget,
/// discovery and the accounts' state reporter when those are on.
fn sessions_needed(settings: &Settings) -> (i64, String) {
    let pool = i64::from(settings.database.max_connections);
    let leases = i64::try_from(settings.sync.max_concurrent_accounts).unwrap_or(i64::MAX);
    let mut parts = vec![
        format!("database.max_connections {pool}"),
        format!("a lease for each of sync.max_concurrent_accounts {leases}"),
    ];
    let mut total = pool.saturating_add(leases);
    for (on, what) in [
        (settings.rate_budget.enabled, "the request budget"),
        (settings.discovery.enabled, "discovery"),
        (
            settings.server.account_metrics == crate::config::AccountMetrics::OneReplica,
            "the accounts' state reporter",
        ),
    ] {
        if on {
            total = total.saturating_add(1);
            parts.push(format!("1 for {what}"));
        }
    }
    (total, parts.join(", "))
}

/// The sessions a `run` process opens at full load against the room PostgreSQL has for more
/// now: a warning when it would be refused some (SQLSTATE 53300, `too many clients`) once its
/// accounts run at once, as a rollout's new pod beside the old ones would. Not a failure: the
/// pool opens sessions only as they are needed. None when the room cannot be read.
async fn connections(settings: &Settings, store: &Store) -> Option<Check> {
    let room = store.connection_room().await.ok()?;
    let (needed, parts) = sessions_needed(settings);
    let processes = room.room / needed.max(1);
    let said = format!(
        "a run process opens up to {needed} sessions at full load ({parts}); PostgreSQL has room \
         for {} more now ({})",
        room.room, room.bound
    );
    Some(if needed <= room.room {
        Check::passed(
            "connections",
            format!(
                "{said}: {processes} process{} like it",
                if processes == 1 { "" } else { "es" }
            ),
        )
    } else {
        Check::warned(
            "connections",
            format!(
                "{said}: at full load it would be refused sessions (too many clients); lower \
                 database.max_connections or sync.max_concurrent_accounts, run fewer replicas, \
                 or raise the limit"
            ),
        )
    })
}

/// Truto's checks: the token, then (when Truto takes it) the accounts and the listing.
async fn truto(
    settings: &Settings,
    source: &TrutoClient,
    follows: Option<&str>,
    cancel: &CancellationToken,
    checks: &mut Vec<Check>,
) {
    if let Err(f) = source.probe(Some(TRUTO_ATTEMPTS), cancel).await {
        let said = match f.error.kind() {
            ErrorKind::BadToken => f.error.to_string(),
            _ => format!(
                "Truto gave no answer that says whether it takes the token: {}",
                f.error
            ),
        };
        checks.push(Check::failed("truto token", said));
        let why = "the token check failed";
        if !settings.accounts.is_empty() {
            checks.push(Check::skipped("accounts", why));
        }
        if settings.discovery.enabled {
            checks.push(Check::skipped("discovery", why));
        }
        return;
    }
    let via = source
        .proxy()
        .map(|p| format!(" (through the proxy {p})"))
        .unwrap_or_default();
    checks.push(Check::passed(
        "truto token",
        format!("Truto accepts the API token{via}"),
    ));
    if !settings.accounts.is_empty() {
        checks.push(accounts(&settings.accounts, source, cancel).await);
    }
    if settings.discovery.enabled {
        // Every listed account's tenant, to hold the configuration's tenants against; none
        // when a listing failed (its check says why).
        let mut tenants: Option<Vec<Option<String>>> = Some(Vec::new());
        for integration in &settings.discovery.integrations {
            let check = match source.list_integrated_accounts(integration, cancel).await {
                Ok(listed) => {
                    if let Some(t) = tenants.as_mut() {
                        t.extend(listed.accounts.iter().map(|a| a.tenant_id.clone()));
                    }
                    listing(integration, &listed, follows)
                }
                Err(f) => Check::failed("discovery", format!("{integration}: {}", f.error)),
            };
            if !check.ok() {
                tenants = None;
            }
            checks.push(check);
        }
        checks.extend(configured_tenants(settings, tenants.as_deref()));
    }
}

/// The tenants the configuration names (`[[tenants]]`, `discovery.tenant_ids`) against those
/// Truto lists: a tenant id no listed account has is most often misspelt, and then its entry
/// applies to nothing and no word is said. Only a warning: the entry may be ready for a
/// customer not connected yet. `listed` is each listed account's tenant; none when a listing
/// failed.
fn configured_tenants(settings: &Settings, listed: Option<&[Option<String>]>) -> Option<Check> {
    let named = crate::fleet::named_tenants(settings);
    if named.is_empty() {
        return None;
    }
    let Some(listed) = listed else {
        return Some(Check::skipped(
            "tenants",
            "the discovery listing failed, so the configuration's tenants were not compared \
             with Truto's",
        ));
    };
    let mut by_tenant: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for t in listed.iter().flatten() {
        *by_tenant.entry(t.as_str()).or_default() += 1;
    }
    let count = |id: &str| by_tenant.get(id).copied().unwrap_or(0);
    let unmatched: Vec<&String> = named
        .iter()
        .filter(|(id, _)| count(id) == 0)
        .map(|(_, words)| words)
        .collect();
    if unmatched.is_empty() {
        let each: Vec<String> = named
            .iter()
            .map(|(id, _)| format!("{id} {}", accounts_n(count(id))))
            .collect();
        return Some(Check::passed(
            "tenants",
            format!(
                "Truto lists accounts of each tenant named: {}",
                each.join(", ")
            ),
        ));
    }
    let mut known: Vec<&str> = by_tenant.keys().copied().collect();
    known.sort_unstable();
    let shown: Vec<String> = known.iter().take(20).map(|t| format!("{t:?}")).collect();
    let more = known.len().saturating_sub(shown.len());
    Some(Check::warned(
        "tenants",
        format!(
            "no account Truto lists is of {}: a misspelt tenant id, or a customer not connected \
             yet (the tenants Truto lists: {}{})",
            unmatched
                .iter()
                .map(|w| w.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if shown.is_empty() {
                "none".to_string()
            } else {
                shown.join(", ")
            },
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ),
    ))
}

/// What `run` would make of one integration's listing: complete, and of the Truto environment
/// the mirror follows (the first listing's, when none is recorded yet).
fn listing(integration: &str, listed: &crate::source::Listed, follows: Option<&str>) -> Check {
    if let Some(why) = &listed.incomplete {
        return Check::failed(
            "discovery",
            format!("the listing of {integration} is incomplete: {why}"),
        );
    }
    let environment = match crate::sync::discovery::listed_environment(&listed.accounts) {
        Ok(environment) => environment,
        Err(why) => return Check::failed("discovery", format!("{integration}: {why}")),
    };
    if let Some(refused) = crate::store::other_environment(follows, environment) {
        return Check::failed("discovery", format!("{integration}: {refused}"));
    }
    let active = listed
        .accounts
        .iter()
        .filter(|a| a.status.as_deref() == Some("active"))
        .count();
    Check::passed(
        "discovery",
        format!(
            "Truto lists {} of {integration} ({active} active){}",
            accounts_n(listed.accounts.len()),
            environment
                .map(|e| format!(" in environment {e}"))
                .unwrap_or_default()
        ),
    )
}

/// Each configured account as Truto knows it: known to the token and active.
async fn accounts(
    configured: &[AccountSettings],
    source: &TrutoClient,
    cancel: &CancellationToken,
) -> Check {
    let problems: Vec<String> = stream::iter(configured)
        .map(|a| async move {
            let id = a.integrated_account_id;
            let why = match source.get_integrated_account(id, cancel).await {
                Ok(found) => match found.status.as_deref() {
                    Some("active") => return None,
                    Some(status) => format!("Truto says it is {status}"),
                    None => "Truto gives it no status".to_string(),
                },
                Err(f) => match &f.error {
                    SourceError::Status { status: 404, .. } => {
                        "not found: the token does not know this integrated account (HTTP 404)"
                            .to_string()
                    }
                    e => e.to_string(),
                },
            };
            Some(if a.label.as_deref().is_some_and(|l| !l.is_empty()) {
                format!("{} ({id}): {why}", a.display_name())
            } else {
                format!("{id}: {why}")
            })
        })
        .buffered(LOOKUPS_AT_ONCE)
        .filter_map(|p| async move { p })
        .collect()
        .await;
    let n = configured.len();
    if problems.is_empty() {
        Check::passed(
            "accounts",
            format!("all {n} configured accounts are known to Truto and active"),
        )
    } else {
        Check::failed(
            "accounts",
            format!(
                "{} of {n} configured accounts cannot be synced now: {}",
                problems.len(),
                listed(&problems)
            ),
        )
    }
}
