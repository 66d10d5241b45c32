//! The product's commands: `sync`, `run`, `migrate`, `status`, `healthcheck`. Each loads what
//! it needs from the settings, builds the parts and calls the library; errors go back to
//! `exit::finish`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::exit::CliError;
use crate::config::{ConfigError, Settings};
use crate::source::TrutoClient;
use crate::store::{Store, StoreError};
use crate::sync::{sync_accounts, Progress, SyncOptions, SyncOutcome};

/// What a command does to the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Writes: applies pending migrations first, unless `database.migrate` is off.
    Write,
    /// Only reads (`status`): never runs DDL, only checks the schema is ready.
    Read,
}

/// Connects, and applies migrations or checks them (see [`Access`]).
pub async fn open_store(settings: &Settings, access: Access) -> Result<Store, CliError> {
    let url = settings.database_url()?;
    let store = Store::connect(url, &settings.database)
        .await
        .map_err(|error| CliError::Store {
            context: "cannot connect to the database",
            error,
        })?;
    let migrate = access == Access::Write && settings.database.migrate;
    let prepared = match access {
        Access::Write => store.prepare_to_write(migrate).await,
        Access::Read => store.prepare(false).await,
    };
    if let Err(error) = prepared {
        return Err(CliError::Store {
            context: if migrate && !matches!(error, StoreError::ReadOnly(_)) {
                "cannot apply migrations"
            } else {
                "the database is not ready"
            },
            error: store.explain(error).await,
        });
    }
    Ok(store)
}

/// `sync`: one pass over every account of the fleet that may be synced (or one), then a
/// summary. With discovery on, the integrated accounts are listed first.
pub async fn sync(settings: Settings, account: Option<Uuid>) -> Result<(), CliError> {
    let token = sync_prerequisites(&settings)?;
    if let Some(id) = account {
        if !settings.discovery.enabled && settings.account(id).is_none() {
            return Err(CliError::Usage(format!(
                "--account {id} is not configured in [[accounts]]"
            )));
        }
    }
    let source = TrutoClient::from_settings(&settings, &token)?;
    let store = open_store(&settings, Access::Write).await?;
    store.log_connection("database ready").await;
    let cancel = crate::service::shutdown_on_signals();
    // Beside the passes, until they end: the token's window is shared with the service's
    // replicas (and any other `sync`), and a write held up by someone else's lock is logged.
    let sharing = CancellationToken::new();
    let shared = share_budget(&store, &source, &sharing);
    let (_in_force, live) = tokio::sync::watch::channel(Arc::new(settings.clone()));
    let watching = tokio::spawn(crate::service::lock_watch::run(
        store.clone(),
        live,
        None,
        sharing.clone(),
    ));
    let fleet = fleet(&settings, &store, &source, &cancel).await?;
    let accounts: Vec<_> = match account {
        None => fleet
            .into_iter()
            .filter(|p| p.gate.syncs())
            .map(|p| p.account)
            .collect(),
        Some(id) => match fleet.into_iter().find(|p| p.id() == id) {
            Some(p) if p.gate.syncs() => vec![p.account],
            Some(p) => {
                return Err(CliError::Usage(format!(
                    "--account {id} is not synced: {}",
                    p.gate.state()
                )))
            }
            None => {
                return Err(CliError::Usage(format!(
                    "--account {id} is neither configured in [[accounts]] nor discovered"
                )))
            }
        },
    };
    let progress: Arc<dyn Progress> = Arc::from(super::progress::for_mode(
        settings.sync.progress,
        Duration::from_secs(settings.sync.progress_interval_secs),
    ));
    let outcomes = sync_accounts(
        &store,
        &source,
        &accounts,
        &SyncOptions::from_settings(&settings),
        settings.sync.max_concurrent_accounts,
        &cancel,
        progress,
    )
    .await;
    print!("{}", super::render::summary(&outcomes));
    sharing.cancel();
    if let Some(task) = shared {
        let _ = task.await;
    }
    let _ = watching.await;
    if outcomes.iter().all(SyncOutcome::succeeded) {
        Ok(())
    } else {
        Err(CliError::Failed)
    }
}

/// Shares the token's request window with the service's replicas (and any other command)
/// until `until` is cancelled: the task to await then, when requests are paced.
pub(super) fn share_budget(
    store: &Store,
    source: &TrutoClient,
    until: &CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    source.budget().map(|budget| {
        tokio::spawn(crate::service::budget::share_token_budget(
            store.clone(),
            budget,
            source.watch_standing(),
            None,
            None,
            until.clone(),
        ))
    })
}

/// The fleet to sync (see [`crate::sync::discovery::refresh_fleet`]); a failed listing fails
/// the command.
async fn fleet(
    settings: &Settings,
    store: &Store,
    source: &TrutoClient,
    cancel: &CancellationToken,
) -> Result<Vec<crate::fleet::Planned>, CliError> {
    let (fleet, listed) =
        match crate::sync::discovery::refresh_fleet(store, source, settings, cancel).await {
            Ok(refreshed) => refreshed,
            Err(error) => {
                return Err(CliError::Store {
                    context: "cannot read or update the account registry",
                    error: store.explain(error).await,
                })
            }
        };
    if let Some(e) = listed.and_then(|l| l.error) {
        return Err(anyhow::anyhow!("discovery: {e}").into());
    }
    Ok(fleet)
}

/// The Truto API token, which `sync` and `run` cannot do without.
pub(super) fn require_token(settings: &Settings) -> Result<SecretString, ConfigError> {
    settings.api_token()?.ok_or_else(|| {
        ConfigError("no Truto API token: set TRUTO_API_TOKEN or truto.api_token_file".to_string())
    })
}

/// A status page that needs the admin token needs one to be set: otherwise nobody could open it.
pub(super) fn require_page_token(settings: &Settings) -> Result<(), ConfigError> {
    if settings.server.status_page_requires_token && settings.admin_token()?.is_none() {
        return Err(ConfigError(format!(
            "server.status_page_requires_token is on, but no admin token is set (set {} or \
             server.admin_token_file): nobody could open the status page",
            crate::config::ADMIN_TOKEN_ENV
        )));
    }
    Ok(())
}

/// What `sync`, `run` and `check` need before they start: accounts, a token and a database URL.
pub(super) fn sync_prerequisites(settings: &Settings) -> Result<SecretString, CliError> {
    settings.require_accounts()?;
    let token = require_token(settings)?;
    settings.database_url()?;
    Ok(token)
}

/// `run`: the service, until SIGTERM or SIGINT; SIGHUP reloads `config` (the same file and
/// environment as at start) and the secrets' files.
pub async fn run(
    settings: Settings,
    config: Option<std::path::PathBuf>,
    no_migrate: bool,
) -> Result<(), CliError> {
    let token = sync_prerequisites(&settings)?;
    require_page_token(&settings)?;
    let config_file = config.clone();
    let load = move || {
        let mut s = Settings::load(config.as_deref())?;
        if no_migrate {
            s.database.migrate = false;
        }
        s.require_accounts()?;
        // A configuration without a token would leave the old one in force unsaid: refuse it.
        require_token(&s)?;
        require_page_token(&s)?;
        Ok(s)
    };
    // The file `load` reads, checked for changes (`server.config_file_check_secs`).
    let file = config_file.or_else(|| {
        Some(std::path::PathBuf::from(crate::config::DEFAULT_CONFIG_PATH)).filter(|p| p.exists())
    });
    let hooks = crate::service::Hooks {
        reload: Some(crate::service::Reload {
            load: Box::new(load),
            file,
        }),
        ..Default::default()
    };
    crate::service::run_with(settings, token, crate::service::wait_for_signal(), hooks).await?;
    Ok(())
}

/// `healthcheck`: whether the service's `/healthz` answers 200.
pub async fn healthcheck(url: &str) -> Result<(), CliError> {
    crate::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .context("cannot build an HTTP client")?;
    match client.get(url).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(anyhow::anyhow!("{url} answered {}", r.status()).into()),
        Err(e) => Err(anyhow::anyhow!("{url}: {}", crate::text::error_chain(&e)).into()),
    }
}

/// `migrate`: apply the migrations, then exit.
pub async fn migrate(settings: Settings) -> Result<(), CliError> {
    let mut settings = settings;
    // `migrate` is the one command that always migrates (--no-migrate aside).
    settings.database.migrate = true;
    settings.database_url()?;
    let store = open_store(&settings, Access::Write).await?;
    println!("migrations applied to schema {}", store.schema());
    Ok(())
}

/// The fleet's state, read-only (for `status` and `accounts list`).
pub async fn fleet_state(
    settings: &Settings,
    store: &Store,
) -> Result<crate::service::status::FleetState, CliError> {
    crate::service::status::read_state(settings, store, None)
        .await
        .map_err(|error| CliError::Store {
            context: "cannot read the sync state",
            error,
        })
}

/// `status`: the fleet's sync state: every account, in the status page's order (those needing
/// attention first, the most pressing first), then a count of each kind of trouble (the page's
/// summary), discovery, webhooks, the request budget and whatever holds every run. At fleet
/// size, `status | head` shows the accounts that matter and `status | tail` sums the fleet up.
pub async fn status(settings: Settings) -> Result<(), CliError> {
    use crate::service::status::{account_views, count_by_rank, ranked};
    let store = open_store(&settings, Access::Read).await?;
    let state = fleet_state(&settings, &store).await?;
    let views = account_views(&state);
    let order = ranked(&views, chrono::Utc::now());
    // The fleet's accounts in the page's order; then any other account the database has a
    // state for (one no longer configured), as before.
    let place: std::collections::HashMap<Uuid, usize> = order
        .iter()
        .enumerate()
        .map(|(i, (v, _))| (v.integrated_account_id, i))
        .collect();
    let mut rows = state.rows.clone();
    rows.sort_by_key(|r| {
        place
            .get(&r.integrated_account_id)
            .copied()
            .unwrap_or(usize::MAX)
    });
    let info = views
        .iter()
        .map(|v| {
            let mut state = v.state.clone();
            if let Some(until) = v.paused_until {
                state = format!(
                    "{state} until {} (then resumed by the service)",
                    until.format("%Y-%m-%d %H:%M:%SZ")
                );
            }
            let info = super::render::FleetInfo {
                tenant_id: v.tenant_id.clone(),
                state,
                paused: super::render::pause_words(v),
            };
            (v.integrated_account_id, info)
        })
        .collect();
    print!("{}", super::render::status(&rows, &state.next, &info));
    print!(
        "{}",
        super::render::status_summary(
            views.len(),
            views.iter().map(|v| v.live_users).sum(),
            &count_by_rank(&order)
        )
    );
    let budget = crate::service::status::read_budget(&settings, &store)
        .await
        .map_err(|error| CliError::Store {
            context: "cannot read the request budget",
            error,
        })?;
    let running = budget.as_ref().map(|b| b.view.running());
    let now = chrono::Utc::now();
    let due = state.next.values().filter(|at| **at <= now).count();
    if let Some(line) = super::render::nothing_running(running, due) {
        println!("{line}");
    }
    let stamp = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%SZ").to_string();
    if state.discovery.is_some() {
        // The next listing as the status page has it, by this configuration's interval and
        // retries (the service's may differ).
        let d = crate::service::page::DiscoveryView::from(state.discovery)
            .due_by(&settings.discovery)
            .with_purges(state.purges)
            .with_tenants(&settings, &state.fleet);
        let next = d
            .next_due
            .filter(|_| settings.discovery.enabled)
            .map(|t| format!("; next due {}", stamp(t)))
            .unwrap_or_default();
        println!(
            "discovery: last listing {} ({} accounts){}{}{next}",
            d.listed_at.map(stamp).as_deref().unwrap_or("-"),
            d.listed.unwrap_or(0),
            d.guard
                .as_deref()
                .map(|g| format!("; retire guard: {g}"))
                .unwrap_or_default(),
            d.error
                .as_deref()
                .map(|e| match d.failures {
                    0 | 1 => format!("; failed: {e}"),
                    n => format!("; failed ({n} in a row): {e}"),
                })
                .unwrap_or_default()
        );
        if let Some(e) = &d.environment {
            println!("truto environment: {e} (the mirror follows its integrated accounts)");
        }
        if let Some(words) = d.purge_words(stamp) {
            println!("purges: {words}");
        }
        if let Some(words) = d.tenant_words().filter(|_| settings.discovery.enabled) {
            println!("tenants: {words}");
        }
    }
    // With this configuration's webhook secret: what the receiver verified lately (as the
    // status page says it).
    if matches!(settings.webhook_secret(), Ok(Some(_))) {
        if let Ok(w) = store.webhook_deliveries().await {
            println!(
                "webhooks: {} verified in the last 24 h{}",
                w.last_day,
                w.last
                    .map(|(at, event)| format!("; the last {} ({event})", stamp(at)))
                    .unwrap_or_default()
            );
        }
    }
    // What operators did lately (as the status page says it); an extra.
    if let Ok(actions) = store
        .recent_actions(
            crate::service::page::ACTIONS_HOURS,
            crate::service::page::ACTIONS_SHOWN,
        )
        .await
    {
        for a in &actions {
            println!("{}", super::render::operator_action(a, now));
        }
    }
    if let Some(b) = budget {
        print!("{}", super::render::budget(&b));
    }
    // An extra: the state above stands without it.
    match store
        .lock_waits(settings.database.lock_wait_warn_secs as f64)
        .await
    {
        Ok(waits) => {
            for w in waits {
                println!("waiting for a database lock: {w}");
            }
        }
        Err(e) => println!("waiting for a database lock: cannot tell ({e})"),
    }
    // Read-only here is the service's hold there (when it is the service's database).
    if let Ok(Some(why)) = store.refuses_writes().await {
        println!(
            "database: accepts no writes ({why}); a service writing to it starts no run until it does"
        );
    }
    Ok(())
}
