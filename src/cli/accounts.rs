//! `lms-sync accounts …`: the fleet as operators see and steer it. Every action goes through
//! the database, so the running service (any replica) obeys within seconds.

use clap::Subcommand;
use uuid::Uuid;

use super::commands::{open_store, Access};
use super::exit::CliError;
use crate::config::Settings;
use crate::store::{Acting, PurgedBy, Store, StoreError};

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Every account: label, tenant, source, state, health, last success, next run, live users.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One account: what `list` says of it, why it is unhealthy or held back, its counts, its
    /// last error whole, and its latest runs (newest first) with what each did and why it failed.
    Show {
        account: Uuid,
        /// How many of its latest runs (1–1000).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i64).range(1..=1000))]
        runs: i64,
        /// One JSON object (`account`, `runs`) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List Truto's integrated accounts now and apply the listing to the registry, as the
    /// service does every `discovery.interval`: new accounts join (the running service starts
    /// them within seconds), those no longer listed are retired (under the retire guard).
    /// Needs `discovery.enabled`. The service's next listing is then an interval later.
    Discover,
    /// Stop starting runs of the account (a run in progress finishes its page and stops).
    Pause {
        account: Uuid,
        #[command(flatten)]
        why: Why,
    },
    /// Undo `pause`.
    Resume {
        account: Uuid,
        #[command(flatten)]
        why: Why,
    },
    /// Start a run of the account at once, whatever its schedule.
    SyncNow { account: Uuid },
    /// Make the account's next run start from the first page.
    ResetCursor {
        account: Uuid,
        #[command(flatten)]
        why: Why,
    },
    /// Keep the account's data whatever happens (a legal hold): no purge, by
    /// `discovery.purge_retired_after` or by `accounts purge`, until `unprotect`.
    Protect {
        account: Uuid,
        #[command(flatten)]
        why: Why,
    },
    /// Undo `protect`.
    Unprotect {
        account: Uuid,
        #[command(flatten)]
        why: Why,
    },
    /// Delete a retired account's data (users, history, runs, state). Refused unless retired.
    Purge {
        account: Uuid,
        /// Yes, delete it: there is no undo.
        #[arg(long)]
        yes: bool,
    },
}

/// Why an operator acts, recorded with the action in `account_actions` (and shown by
/// `accounts show` and the account's page).
#[derive(Debug, clap::Args)]
pub struct Why {
    /// Why (one line, at most 500 characters), e.g. a ticket or a legal matter.
    #[arg(long)]
    reason: Option<String>,
}

/// Who `accounts VERB` acts for, as `account_actions.actor` records it: the command and the
/// operating system's user and host it ran as (PostgreSQL records the database role beside).
fn acting(verb: &str, why: &Why) -> Result<Acting, CliError> {
    let user = ["USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("Uid:"))
                        .and_then(|l| l.split_whitespace().next().map(|uid| format!("uid {uid}")))
                })
        })
        .unwrap_or_else(|| "unknown".into());
    Acting::new(
        format!(
            "lms-sync accounts {verb} by {user}@{}",
            crate::sync::host_name()
        ),
        why.reason.as_deref(),
    )
    .map_err(|e| CliError::Usage(format!("--reason: {e}")))
}

pub async fn run(settings: Settings, command: AccountsCommand) -> Result<(), CliError> {
    match command {
        AccountsCommand::List { json } => list(settings, json).await,
        AccountsCommand::Show {
            account,
            runs,
            json,
        } => show(settings, account, runs, json).await,
        AccountsCommand::Discover => discover(settings).await,
        AccountsCommand::Pause { account, why } => {
            let by = acting("pause", &why)?;
            act(&settings, account, "paused", by, |s, id, by| {
                Box::pin(s.set_paused(id, true, by))
            })
            .await
        }
        AccountsCommand::Resume { account, why } => {
            let by = acting("resume", &why)?;
            act(&settings, account, "resumed", by, |s, id, by| {
                Box::pin(s.set_paused(id, false, by))
            })
            .await
        }
        AccountsCommand::SyncNow { account } => {
            let by = acting("sync-now", &Why { reason: None })?;
            act(&settings, account, SYNC_NOW, by, |s, id, by| {
                Box::pin(s.request_sync(id, by))
            })
            .await
        }
        AccountsCommand::ResetCursor { account, why } => {
            let by = acting("reset-cursor", &why)?;
            act(
                &settings,
                account,
                "set to start its next run from the first page",
                by,
                |s, id, by| Box::pin(s.request_cursor_reset(id, by)),
            )
            .await
        }
        AccountsCommand::Protect { account, why } => {
            let by = acting("protect", &why)?;
            act(
                &settings,
                account,
                "protected: its data is never purged until `accounts unprotect`",
                by,
                |s, id, by| Box::pin(s.set_protected(id, true, by)),
            )
            .await
        }
        AccountsCommand::Unprotect { account, why } => {
            let by = acting("unprotect", &why)?;
            act(
                &settings,
                account,
                "no longer protected",
                by,
                |s, id, by| Box::pin(s.set_protected(id, false, by)),
            )
            .await
        }
        AccountsCommand::Purge { account, yes } => purge(settings, account, yes).await,
    }
}

/// `accounts discover`: one listing for the fleet now, under the discovery lease (waiting while
/// a replica lists), its budget shared with the service's replicas. Exit 1 when the listing
/// fails (the registry is left as it was).
async fn discover(settings: Settings) -> Result<(), CliError> {
    use crate::sync::discovery::DISCOVERY_LEASE;
    if !settings.discovery.enabled {
        return Err(CliError::Usage(
            "accounts discover: discovery is off (set discovery.enabled = true, or \
             LMS_SYNC__DISCOVERY__ENABLED=true)"
                .into(),
        ));
    }
    let token = super::commands::require_token(&settings)?;
    settings.database_url()?;
    let source = crate::source::TrutoClient::from_settings(&settings, &token)?;
    let store = open_store(&settings, Access::Write).await?;
    let cancel = crate::service::shutdown_on_signals();
    let db = |error| CliError::Store {
        context: "cannot take the discovery lease",
        error,
    };
    let mut said = false;
    let lease = loop {
        if let Some(lease) = store.try_lease(DISCOVERY_LEASE).await.map_err(db)? {
            break lease;
        }
        if !said {
            eprintln!("a replica is listing the integrated accounts; waiting for it to finish");
            said = true;
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = cancel.cancelled() => {
                return Err(anyhow::anyhow!("interrupted while waiting for the replica's listing").into())
            }
        }
    };
    let sharing = tokio_util::sync::CancellationToken::new();
    let shared = super::commands::share_budget(&store, &source, &sharing);
    let out = crate::sync::discovery::discover(&store, &source, &settings.discovery, &cancel).await;
    lease.release().await;
    sharing.cancel();
    if let Some(task) = shared {
        let _ = task.await;
    }
    let Some(applied) = out.applied else {
        let error = out.error.unwrap_or_else(|| "interrupted".into());
        return Err(anyhow::anyhow!("discovery: {error}; the registry is left as it was").into());
    };
    println!(
        "integrated accounts listed: {}; added: {}, retired: {}, un-retired: {}; requests: {}",
        applied.listed, applied.added, applied.retired, applied.unretired, out.requests
    );
    if let Some(why) = &out.incomplete {
        println!("the listing was not complete: {why}");
    }
    if let Some(guard) = &applied.retire_guard {
        println!("retired none: {guard}");
    }
    Ok(())
}

async fn list(settings: Settings, json: bool) -> Result<(), CliError> {
    let store = open_store(&settings, Access::Read).await?;
    let state = super::commands::fleet_state(&settings, &store).await?;
    let views = crate::service::status::account_views(&state);
    if json {
        let text = serde_json::to_string_pretty(&views)
            .map_err(|e| anyhow::anyhow!("cannot write JSON: {e}"))?;
        println!("{text}");
    } else {
        print!("{}", super::render::accounts(&views));
    }
    Ok(())
}

async fn show(settings: Settings, account: Uuid, runs: i64, json: bool) -> Result<(), CliError> {
    let store = open_store(&settings, Access::Read).await?;
    let db = |error| CliError::Store {
        context: "cannot read the account",
        error,
    };
    let state = crate::service::status::read_state(&settings, &store, Some(account))
        .await
        .map_err(db)?;
    let views = crate::service::status::account_views(&state);
    let Some(view) = views.first() else {
        return Err(CliError::Usage(format!(
            "account {account} is not in the fleet: neither configured in [[accounts]] nor discovered"
        )));
    };
    let runs = store.recent_runs(account, runs).await.map_err(db)?;
    let actions = store
        .account_actions(account, crate::service::account_page::ACTIONS_SHOWN)
        .await
        .map_err(db)?;
    if json {
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "account": view,
            "runs": runs,
            "actions": actions,
        }))
        .map_err(|e| anyhow::anyhow!("cannot write JSON: {e}"))?;
        println!("{text}");
    } else {
        let row = state.rows.first();
        print!(
            "{}",
            super::render::account(view, row, &runs, &actions, chrono::Utc::now())
        );
    }
    Ok(())
}

type Action = for<'a> fn(
    &'a Store,
    Uuid,
    &'a Acting,
) -> crate::domain::BoxFuture<'a, Result<bool, StoreError>>;

/// Applies one registry action to `account` for `by` and says so.
async fn act(
    settings: &Settings,
    account: Uuid,
    done: &str,
    by: Acting,
    action: Action,
) -> Result<(), CliError> {
    settings.database_url()?;
    let store = open_store(settings, Access::Write).await?;
    let db = |error| CliError::Store {
        context: "cannot update the account registry",
        error,
    };
    // Configured accounts are in the registry even before their first run.
    store
        .register_configured(&settings.accounts)
        .await
        .map_err(db)?;
    if !action(&store, account, &by).await.map_err(db)? {
        return Err(CliError::Usage(format!(
            "account {account} is not in the registry: neither configured in [[accounts]] nor discovered"
        )));
    }
    println!("account {account} {done}");
    if done == SYNC_NOW {
        // A run before the server's hold ends fails at once, without a request: say so now.
        let rows = store.status(&[], Some(account)).await.map_err(db)?;
        if let Some(until) = rows.first().and_then(|r| r.held_until) {
            println!(
                "note: {}; until then the run fails at once, without a request",
                crate::schedule::held_back(until)
            );
        }
    }
    Ok(())
}

/// What `accounts sync-now` says it did.
const SYNC_NOW: &str = "asked to sync now";

async fn purge(settings: Settings, account: Uuid, yes: bool) -> Result<(), CliError> {
    if !yes {
        return Err(CliError::Usage(format!(
            "accounts purge deletes every row of account {account} for good; add --yes to do it"
        )));
    }
    settings.database_url()?;
    let store = open_store(&settings, Access::Write).await?;
    let purged = store
        .purge(account, PurgedBy::Command)
        .await
        .map_err(|error| CliError::Store {
            context: "cannot purge",
            error,
        })?;
    for (table, n) in &purged.counts {
        println!("{table:<20} {n:>10} rows deleted");
    }
    println!(
        "account {account} purged: {} rows (retired {}; recorded in account_purges)",
        purged.total(),
        purged.retired_at.format("%Y-%m-%d %H:%M UTC")
    );
    Ok(())
}
