//! `lms-sync demo`: the README's "run it" command. Starts the simulator (unless a Truto token
//! and accounts are configured), uses the configured database or a throwaway cluster, runs a
//! real sync, changes the upstream data, syncs again, and shows the mirror with example SQL.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use sqlx::Row;

use crate::cli::CliError;
use crate::config::{AccountSettings, Settings};
use crate::devkit::pg::TempPostgres;
use crate::devkit::simulator::{demo_account_id, Integrated, Simulator, DEMO_TOKEN};
use crate::source::TrutoClient;
use crate::store::Store;
use crate::sync::{sync_accounts, SyncOptions, SyncOutcome};

/// Users of the demo's n-th account (n from 1): the first has `users`, the others fewer.
pub fn account_size(users: usize, n: u32) -> usize {
    users * 3 / (n as usize + 2)
}

/// Example queries shown (and run) by the demo, as (title, SQL).
pub const EXAMPLE_QUERIES: &[(&str, &str)] = &[
    (
        "users per status",
        "SELECT status, count(*) AS users FROM lms.live_users GROUP BY status ORDER BY users DESC",
    ),
    (
        "live users without a primary email",
        "SELECT count(*) AS users FROM lms.live_users u WHERE NOT EXISTS (SELECT 1 FROM lms.user_emails e WHERE e.integrated_account_id = u.integrated_account_id AND e.user_id = u.id AND e.is_primary)",
    ),
    (
        "manager chains (user → manager → manager's manager)",
        "SELECT u.user_name, u.manager_name, m2.manager_name AS managers_manager FROM lms.users_with_manager u LEFT JOIN lms.users_with_manager m2 ON m2.integrated_account_id = u.integrated_account_id AND m2.user_id = u.manager_id WHERE m2.manager_id IS NOT NULL ORDER BY u.integrated_account_id, u.user_id LIMIT 5",
    ),
    (
        "how current each account's mirror is",
        "SELECT integrated_account_id, health, last_outcome, date_trunc('second', since_success)::text AS since_success, live_users FROM lms.account_freshness ORDER BY integrated_account_id",
    ),
    (
        "the history as a loader takes it: the changes after position (0, 0), by kind",
        "SELECT kind, count(*) AS changes, max(xact_id) AS last_xact_id FROM lms.user_change_feed WHERE (xact_id, change_id) > (0, 0) GROUP BY kind ORDER BY kind",
    ),
    (
        "last runs",
        "SELECT integrated_account_id, outcome, pages, users_seen, inserted, updated, unchanged, deleted FROM lms.sync_runs ORDER BY run_id",
    ),
];

pub async fn run(settings: Settings, accounts: u32, users: usize) -> Result<(), CliError> {
    match run_inner(settings, accounts, users).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(CliError::Failed),
        Err(e) => Err(e.context("demo").into()),
    }
}

/// The demo; `Ok(false)` when a sync did not succeed.
async fn run_inner(mut settings: Settings, n_accounts: u32, users: usize) -> anyhow::Result<bool> {
    let token = settings.api_token()?;
    let real = token.is_some() && !settings.accounts.is_empty();
    let mut sim = None;
    let token = if real {
        println!("Using the configured Truto API and accounts.");
        token.expect("checked")
    } else {
        let s = Simulator::start(0).await?;
        settings.accounts = (1..=n_accounts.max(1))
            .map(|n| {
                let id = demo_account_id(n);
                s.add_account(id, account_size(users, n), n as u64);
                s.set_integrated(id, Integrated::active(&format!("demo-tenant-{n}")));
                let mut a = AccountSettings::new(id);
                a.label = Some(format!("demo account {n}"));
                a
            })
            .collect();
        // The accounts are also found by discovery, as a fleet's would be; one more is added
        // upstream half-way through.
        settings.discovery.enabled = true;
        // A few faults, to show retries at work: the mirror must still come out exact.
        s.set_random_faults(0.02, 42);
        settings.truto.base_url = s.base_url();
        // The simulator enforces no budget here; pacing would only slow the demo down.
        settings.rate_budget.enabled = false;
        settings.truto.backoff_initial_ms = 50;
        println!(
            "No Truto token configured: syncing {} simulated accounts ({} users) from {}",
            settings.accounts.len(),
            (1..=n_accounts.max(1))
                .map(|n| account_size(users, n))
                .sum::<usize>(),
            s.base_url()
        );
        sim = Some(s);
        SecretString::from(DEMO_TOKEN.to_string())
    };

    let mut cluster = None;
    if settings.database.url.is_none() {
        println!(
            "No database configured: starting a throwaway PostgreSQL from the local binaries…"
        );
        let pg = tokio::task::spawn_blocking(TempPostgres::start).await??;
        let admin = Store::connect(&pg.url_secret("postgres"), &settings.database).await?;
        sqlx::query("CREATE DATABASE lms_demo")
            .execute(admin.pool())
            .await?;
        admin.pool().close().await;
        settings.database.url = Some(pg.url_secret("lms_demo"));
        cluster = Some(pg);
    }
    let store = crate::cli::open_store(&settings, crate::cli::Access::Write)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let source = TrutoClient::from_settings(&settings, &token)?;
    let opts = SyncOptions::from_settings(&settings);
    let cancel = crate::service::shutdown_on_signals();
    let progress: Arc<dyn crate::sync::Progress> = Arc::from(crate::cli::progress::for_mode(
        settings.sync.progress,
        Duration::from_secs(settings.sync.progress_interval_secs.min(2)),
    ));
    let concurrency = settings.sync.max_concurrent_accounts;
    let sync = |label: &'static str| {
        let (store, source, settings, opts, cancel, progress) =
            (&store, &source, &settings, &opts, &cancel, progress.clone());
        async move {
            println!("\n== {label}");
            let accounts = fleet(store, source, settings, cancel).await;
            let outcomes = sync_accounts(
                store,
                source,
                &accounts,
                opts,
                concurrency,
                cancel,
                progress,
            )
            .await;
            print!("{}", crate::cli::render::summary(&outcomes));
            outcomes
        }
    };

    let first = sync("first sync: everything is new").await;
    let mut all_ok = first.iter().all(SyncOutcome::succeeded);
    if let (Some(s), true) = (&sim, all_ok && !cancel.is_cancelled()) {
        let a = settings.accounts[0].integrated_account_id;
        for id in ["1", "2", "3", "4", "5"] {
            s.update_user(
                a,
                id,
                serde_json::json!({"job_title": "Promoted", "updated_at": "2026-11-30T09:00:00Z"}),
            );
        }
        for id in ["10", "11", "12"] {
            s.delete_user(a, id);
        }
        s.add_users(a, 7);
        // A new customer connects their LMS: discovery finds the account, and it is synced.
        let new = demo_account_id(n_accounts.max(1) + 1);
        s.add_account(new, 500, 99);
        s.set_integrated(new, Integrated::active("demo-tenant-new"));
        let second = sync("second sync after upstream changes (5 updated, 3 deleted, 7 added in the first account; a new account connected)").await;
        all_ok &= second.iter().all(SyncOutcome::succeeded);
        let third = sync("third sync, nothing changed upstream: nothing is written").await;
        all_ok &= third.iter().all(SyncOutcome::succeeded);
    }
    show_queries(&store, &settings.database.schema).await?;
    if let Some(s) = &sim {
        let st = s.stats();
        println!(
            "\nsimulator served {} requests, {} of them injected faults (retried transparently)",
            st.requests, st.faults_served
        );
    }
    store.pool().close().await;
    drop(sim);
    if let Some(pg) = cluster {
        tokio::task::spawn_blocking(move || drop(pg)).await?;
        println!("\nThe throwaway database has been removed. Point LMS_SYNC__DATABASE__URL (or DATABASE_URL) at your own PostgreSQL to keep the mirror.");
    }
    Ok(all_ok)
}

/// The accounts to sync: with discovery on, Truto's integrated accounts are listed first.
async fn fleet(
    store: &Store,
    source: &TrutoClient,
    settings: &Settings,
    cancel: &tokio_util::sync::CancellationToken,
) -> Vec<AccountSettings> {
    let (fleet, listed) =
        match crate::sync::discovery::refresh_fleet(store, source, settings, cancel).await {
            Ok(f) => f,
            Err(e) => {
                // The configured accounts still run (and report the database error themselves).
                eprintln!("cannot read the account registry: {e}");
                (crate::fleet::plan(settings, &[]), None)
            }
        };
    if let Some(a) = listed.and_then(|l| l.applied) {
        println!(
            "discovery: {} integrated accounts listed, {} new",
            a.listed, a.added
        );
    }
    fleet
        .into_iter()
        .filter(|p| p.gate.syncs())
        .map(|p| p.account)
        .collect()
}

async fn show_queries(store: &Store, schema: &str) -> anyhow::Result<()> {
    println!("\n== the mirror, queried (try these yourself with psql)");
    for (title, sql) in EXAMPLE_QUERIES {
        let sql = sql.replace("lms.", &format!("{schema}."));
        println!("\n-- {title}\n{sql};");
        let rows = sqlx::query(&sql).fetch_all(store.pool()).await?;
        for row in rows.iter().take(8) {
            let cols: Vec<String> = (0..row.len()).map(|i| cell(row, i)).collect();
            println!("   {}", cols.join(" | "));
        }
    }
    Ok(())
}

fn cell(row: &sqlx::postgres::PgRow, i: usize) -> String {
    if let Ok(v) = row.try_get::<Option<String>, _>(i) {
        return v.unwrap_or_else(|| "NULL".into());
    }
    if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
        return v.map(|v| v.to_string()).unwrap_or_else(|| "NULL".into());
    }
    if let Ok(v) = row.try_get::<Option<uuid::Uuid>, _>(i) {
        return v.map(|v| v.to_string()).unwrap_or_else(|| "NULL".into());
    }
    "?".into()
}
