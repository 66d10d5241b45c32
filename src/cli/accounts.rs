//! `lms-sync accounts …`: the fleet as operators see and steer it. Every action goes through
//! the database, so the running service (any replica) obeys within seconds.

use clap::Subcommand;
use uuid::Uuid;

use super::commands::{open_store, Access};
use super::exit::CliError;
use super::select::{Chosen, Filter, Select};
use crate::config::Settings;
use crate::service::status::AccountView;
use crate::store::{Acting, PurgedBy, Steer};

#[derive(Debug, Subcommand)]
pub enum AccountsCommand {
    /// Every account: label, tenant, source, state, health, last success, next run, live users.
    List {
        #[command(flatten)]
        filter: Filter,
        /// One JSON array instead of a table.
        #[arg(long, conflicts_with = "ids")]
        json: bool,
        /// Only the accounts' ids, one per line (for `accounts pause -` and the like).
        #[arg(long)]
        ids: bool,
    },
    /// One account: what `list` says of it, why it is unhealthy or held back, its counts, the
    /// settings it runs with and where they come from, its last error whole, and its latest
    /// runs (newest first) with what each did and why it failed.
    Show {
        account: Uuid,
        /// How many of its latest runs (1–1000).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(i64).range(1..=1000))]
        runs: i64,
        /// One JSON object (`account`, `runs`, `actions`, `settings`) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List Truto's integrated accounts now and apply the listing to the registry, as the
    /// service does every `discovery.interval`: new accounts join (the running service starts
    /// them within seconds), those no longer listed are retired (under the retire guard).
    /// Needs `discovery.enabled`. The service's next listing is then an interval later.
    Discover {
        /// List, and say what the listing would change (the accounts it no longer shows
        /// named), changing nothing.
        #[arg(long)]
        dry_run: bool,
        /// Retire every account the listing no longer shows, whatever their share of the known
        /// ones (`discovery.max_retire_fraction` lifted for this listing; a failed, partial or
        /// empty listing still retires none).
        #[arg(long)]
        retire_missing: bool,
        /// Apply a listing of another Truto environment's accounts than the mirror follows (an
        /// API token of another environment, on purpose): the mirror follows that environment
        /// from now on. Its accounts join; the other's are retired under the guard as any
        /// missing account (--retire-missing retires them all at once).
        #[arg(long)]
        adopt_environment: bool,
    },
    /// Stop starting runs of the accounts (a run in progress finishes its page and stops).
    /// Every steering command takes account ids, `-` for ids on stdin, or chooses the accounts
    /// with --tenant, --state, --health, --failing or --all (--dry-run says which, changing
    /// nothing); all of them change or none.
    Pause {
        #[command(flatten)]
        which: Select,
        /// Resume them by themselves then: a time (`2026-12-08T06:00:00Z`, RFC 3339) or a
        /// time from now (`8h`, `90m`, `2d`); at most a year ahead. Without it, until `resume`.
        #[arg(long, value_name = "WHEN")]
        until: Option<String>,
        #[command(flatten)]
        why: Why,
    },
    /// Undo `pause`.
    Resume {
        #[command(flatten)]
        which: Select,
        #[command(flatten)]
        why: Why,
    },
    /// Start a run of the accounts at once, whatever their schedule.
    SyncNow {
        #[command(flatten)]
        which: Select,
        #[command(flatten)]
        why: Why,
    },
    /// Make the accounts' next run start from the first page.
    ResetCursor {
        #[command(flatten)]
        which: Select,
        #[command(flatten)]
        why: Why,
    },
    /// Let the accounts' next complete listing delete whatever it no longer lists, past the
    /// delete guard (once: the guard is back for the listing after), and run them at once: for
    /// a customer that really removed most of its users.
    AllowDeletes {
        #[command(flatten)]
        which: Select,
        #[command(flatten)]
        why: Why,
    },
    /// Keep the accounts' data whatever happens (a legal hold): no purge, by
    /// `discovery.purge_retired_after` or by `accounts purge`, until `unprotect`.
    Protect {
        #[command(flatten)]
        which: Select,
        #[command(flatten)]
        why: Why,
    },
    /// Undo `protect`.
    Unprotect {
        #[command(flatten)]
        which: Select,
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
    let settings = &settings;
    let steer = |which, what, verb, why: Why| async move {
        let by = acting(verb, &why)?;
        steer(settings, which, what, by).await
    };
    match command {
        AccountsCommand::List { filter, json, ids } => list(settings, filter, json, ids).await,
        AccountsCommand::Show {
            account,
            runs,
            json,
        } => show(settings, account, runs, json).await,
        AccountsCommand::Discover {
            dry_run,
            retire_missing,
            adopt_environment,
        } => {
            let options = crate::sync::discovery::ListingOptions {
                dry_run,
                adopt_environment,
            };
            discover(settings, options, retire_missing).await
        }
        AccountsCommand::Pause { which, until, why } => {
            let until = until
                .as_deref()
                .map(|w| crate::schedule::pause_end(w, chrono::Utc::now()))
                .transpose()
                .map_err(|e| CliError::Usage(format!("--until: {e}")))?;
            steer(which, Steer::Pause { until }, "pause", why).await
        }
        AccountsCommand::Resume { which, why } => steer(which, Steer::Resume, "resume", why).await,
        AccountsCommand::SyncNow { which, why } => {
            steer(which, Steer::SyncNow, "sync-now", why).await
        }
        AccountsCommand::ResetCursor { which, why } => {
            steer(which, Steer::ResetCursor, "reset-cursor", why).await
        }
        AccountsCommand::AllowDeletes { which, why } => {
            steer(which, Steer::AllowDeletes, "allow-deletes", why).await
        }
        AccountsCommand::Protect { which, why } => {
            steer(which, Steer::Protect, "protect", why).await
        }
        AccountsCommand::Unprotect { which, why } => {
            steer(which, Steer::Unprotect, "unprotect", why).await
        }
        AccountsCommand::Purge { account, yes } => purge(settings, account, yes).await,
    }
}

/// `accounts discover`: one listing for the fleet now, under the discovery lease (waiting while
/// a replica lists), its budget shared with the service's replicas. Exit 1 when the listing
/// fails (the registry is left as it was).
async fn discover(
    settings: &Settings,
    options: crate::sync::discovery::ListingOptions,
    retire_missing: bool,
) -> Result<(), CliError> {
    use crate::sync::discovery::DISCOVERY_LEASE;
    let dry_run = options.dry_run;
    if !settings.discovery.enabled {
        return Err(CliError::Usage(
            "accounts discover: discovery is off (set discovery.enabled = true, or \
             LMS_SYNC__DISCOVERY__ENABLED=true)"
                .into(),
        ));
    }
    let token = super::commands::require_token(settings)?;
    settings.database_url()?;
    let source = crate::source::TrutoClient::from_settings(settings, &token)?;
    let store = open_store(settings, Access::Write).await?;
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
    let mut policy = settings.discovery.clone();
    if retire_missing {
        policy.max_retire_fraction = 1.0;
    }
    let out =
        crate::sync::discovery::discover_with(&store, &source, &policy, &cancel, options).await;
    lease.release().await;
    sharing.cancel();
    if let Some(task) = shared {
        let _ = task.await;
    }
    let Some(applied) = out.applied else {
        let error = out.error.unwrap_or_else(|| "interrupted".into());
        return Err(anyhow::anyhow!("discovery: {error}; the registry is left as it was").into());
    };
    let (would, none) = if dry_run {
        ("would be ", "would retire none")
    } else {
        ("", "retired none")
    };
    println!(
        "integrated accounts listed: {}; {would}added: {}, {would}retired: {}, {would}un-retired: {}; requests: {}",
        applied.listed, applied.added, applied.retired, applied.unretired, out.requests
    );
    if let Some(before) = &applied.adopted_from {
        println!(
            "the mirror {} Truto environment {} from now on (it followed {before})",
            if dry_run { "would follow" } else { "follows" },
            applied.environment.as_deref().unwrap_or("-")
        );
    }
    if let Some(why) = &out.incomplete {
        println!("the listing was not complete: {why}");
    }
    if let Some(guard) = &applied.retire_guard {
        println!("{none}: {guard}");
    }
    if !applied.missing.is_empty() {
        println!(
            "no longer listed ({}):",
            match (&applied.retire_guard, dry_run) {
                (Some(_), _) => "kept, as the guard says",
                (None, true) => "would be retired",
                (None, false) => "retired",
            }
        );
        // By id: thousands of accounts that left, looked up one by one, are millions of
        // comparisons.
        let registry: std::collections::HashMap<Uuid, _> = store
            .registry()
            .await
            .map_err(db)?
            .into_iter()
            .map(|r| (r.integrated_account_id, r))
            .collect();
        for id in &applied.missing {
            let row = registry.get(id);
            println!(
                "  {id}  tenant {}{}",
                row.and_then(|r| r.tenant_id.as_deref()).unwrap_or("-"),
                row.and_then(|r| r.label.as_deref())
                    .map(|l| format!(", {l}"))
                    .unwrap_or_default()
            );
        }
    }
    if dry_run {
        println!("nothing changed (--dry-run)");
    }
    Ok(())
}

async fn list(settings: &Settings, filter: Filter, json: bool, ids: bool) -> Result<(), CliError> {
    let store = open_store(settings, Access::Read).await?;
    let state = super::commands::fleet_state(settings, &store).await?;
    let views = crate::service::status::account_views(&state);
    let kept: Vec<&AccountView> = filter.apply(&views).map_err(CliError::Usage)?;
    if json {
        let text = serde_json::to_string_pretty(&kept)
            .map_err(|e| anyhow::anyhow!("cannot write JSON: {e}"))?;
        println!("{text}");
    } else if ids {
        for v in kept {
            println!("{}", v.integrated_account_id);
        }
    } else {
        print!("{}", super::render::accounts(&kept));
    }
    Ok(())
}

async fn show(settings: &Settings, account: Uuid, runs: i64, json: bool) -> Result<(), CliError> {
    let store = open_store(settings, Access::Read).await?;
    let db = |error| CliError::Store {
        context: "cannot read the account",
        error,
    };
    let Some(one) = crate::service::status::read_account(settings, &store, account, runs)
        .await
        .map_err(db)?
    else {
        return Err(CliError::Usage(format!(
            "account {account} is not in the fleet: neither configured in [[accounts]] nor discovered"
        )));
    };
    if json {
        let text = serde_json::to_string_pretty(&one.json())
            .map_err(|e| anyhow::anyhow!("cannot write JSON: {e}"))?;
        println!("{text}");
    } else {
        let running = crate::service::status::processes_running(settings, &store)
            .await
            .map_err(db)?;
        print!(
            "{}",
            super::render::account(
                &one.view,
                one.row.as_ref(),
                &one.runs,
                &one.actions,
                &one.settings,
                chrono::Utc::now(),
                running
            )
        );
    }
    Ok(())
}

/// Applies one registry change to the accounts `which` names, for `by`, all of them or none,
/// and says what it did to each.
async fn steer(
    settings: &Settings,
    which: Select,
    what: Steer,
    by: Acting,
) -> Result<(), CliError> {
    let chosen = which
        .chosen(|| std::io::read_to_string(std::io::stdin()))
        .map_err(CliError::Usage)?;
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
    // The fleet's views (its whole state, read once) only when they choose or are shown: a
    // change of accounts named by id needs the registry alone.
    let views = if which.dry_run || !matches!(chosen, Chosen::Ids(_)) {
        let state = super::commands::fleet_state(settings, &store).await?;
        crate::service::status::account_views(&state)
    } else {
        Vec::new()
    };
    let chosen: Vec<Uuid> = match chosen {
        Chosen::Ids(ids) => {
            if ids.is_empty() {
                eprintln!("no account id on stdin: nothing changed");
                return Ok(());
            }
            ids
        }
        Chosen::All => views.iter().map(|v| v.integrated_account_id).collect(),
        Chosen::Filter => which
            .filter
            .apply(&views)
            .map_err(CliError::Usage)?
            .iter()
            .map(|v| v.integrated_account_id)
            .collect(),
    };
    if chosen.is_empty() {
        eprintln!("no account of the fleet matches: nothing changed");
        return Ok(());
    }
    let done = done(what);
    let done = done.as_str();
    if which.dry_run {
        let registry: std::collections::HashSet<Uuid> = store
            .registry()
            .await
            .map_err(db)?
            .iter()
            .map(|r| r.integrated_account_id)
            .collect();
        not_in_registry(
            chosen
                .iter()
                .filter(|a| !registry.contains(a))
                .copied()
                .collect(),
        )?;
        let by_id: std::collections::HashMap<Uuid, &AccountView> =
            views.iter().map(|v| (v.integrated_account_id, v)).collect();
        let kept: Vec<&AccountView> = chosen
            .iter()
            .filter_map(|a| by_id.get(a).copied())
            .collect();
        print!("{}", super::render::accounts(&kept));
        println!(
            "{} would be {done}; nothing changed (--dry-run)",
            counted(chosen.len())
        );
        return Ok(());
    }
    not_in_registry(store.steer(&chosen, what, &by).await.map_err(db)?)?;
    for id in &chosen {
        println!("account {id} {done}");
    }
    if chosen.len() > 1 {
        println!("{} {done}", counted(chosen.len()));
    }
    if matches!(what, Steer::SyncNow | Steer::AllowDeletes) {
        // A run before the server's hold ends fails at once, without a request: say so now.
        let only = (chosen.len() == 1).then(|| chosen[0]);
        let rows = store.status(&[], only).await.map_err(db)?;
        let wanted: std::collections::HashSet<&Uuid> = chosen.iter().collect();
        let held: Vec<_> = rows
            .iter()
            .filter(|r| wanted.contains(&r.integrated_account_id))
            .filter_map(|r| r.held_until)
            .collect();
        match held.as_slice() {
            [] => {}
            [until] if chosen.len() == 1 => println!(
                "note: {}; until then the run fails at once, without a request",
                crate::schedule::held_back(*until)
            ),
            _ => println!(
                "note: the server holds back the requests of {} of them (a quota spent, say; \
                 `accounts list` says until when); until then their runs fail at once, without \
                 a request",
                held.len()
            ),
        }
    }
    Ok(())
}

/// What a steering command says it did to an account.
fn done(what: Steer) -> String {
    let said = match what {
        Steer::Pause { until: Some(t) } => {
            return format!(
                "paused until {} (the service resumes it then)",
                t.format("%Y-%m-%d %H:%M:%S UTC")
            )
        }
        Steer::Pause { until: None } => "paused",
        Steer::Resume => "resumed",
        Steer::SyncNow => "asked to sync now",
        Steer::ResetCursor => "set to start its next run from the first page",
        Steer::AllowDeletes => {
            "allowed to delete, at its next complete listing, whatever that no longer lists \
             (past the delete guard, once); asked to sync now"
        }
        Steer::Protect => "protected: its data is never purged until `accounts unprotect`",
        Steer::Unprotect => "no longer protected",
    };
    said.to_string()
}

/// "1 account", "12 accounts".
fn counted(n: usize) -> String {
    if n == 1 {
        "1 account".into()
    } else {
        format!("{n} accounts")
    }
}

/// A usage error for the accounts named that the registry does not have (nothing changed).
fn not_in_registry(missing: Vec<Uuid>) -> Result<(), CliError> {
    match missing.as_slice() {
        [] => Ok(()),
        [one] => Err(CliError::Usage(format!(
            "account {one} is not in the registry: neither configured in [[accounts]] nor \
             discovered; nothing changed"
        ))),
        many => Err(CliError::Usage(format!(
            "{} of the accounts named are not in the registry (neither configured in \
             [[accounts]] nor discovered): {}{}; nothing changed",
            many.len(),
            many.iter()
                .take(5)
                .map(Uuid::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            if many.len() > 5 { ", …" } else { "" }
        ))),
    }
}

async fn purge(settings: &Settings, account: Uuid, yes: bool) -> Result<(), CliError> {
    if !yes {
        return Err(CliError::Usage(format!(
            "accounts purge deletes every row of account {account} for good; add --yes to do it"
        )));
    }
    settings.database_url()?;
    let store = open_store(settings, Access::Write).await?;
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
