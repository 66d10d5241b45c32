//! The command line: parsing, exit codes, and the commands `sync`, `migrate`, `status`, `demo`
//! and `simulate`. Each command loads settings, builds the pieces and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{ConfigError, Settings};
use crate::source::TrutoClient;
use crate::store::Store;
use crate::sync::{sync_accounts, SyncOptions, SyncOutcome};

/// Every account succeeded.
pub const EXIT_OK: u8 = 0;
/// A sync (or the database) failed.
pub const EXIT_FAILED: u8 = 1;
/// Invalid configuration or usage.
pub const EXIT_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "lms-sync",
    version,
    about = "Mirror LMS users from Truto's unified API into PostgreSQL"
)]
pub struct Cli {
    /// Config file (TOML). Without it, config/default.toml is read when present.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sync every configured account (or one) once, then exit. Exit 0 only if all succeeded.
    Sync {
        /// Only this integrated account (must be configured).
        #[arg(long, value_name = "UUID")]
        account: Option<Uuid>,
    },
    /// Run as a service: sync every account on its schedule until SIGTERM/SIGINT.
    Run,
    /// Apply database migrations, then exit.
    Migrate,
    /// Exit 0 when the `run` service's /healthz answers 200 (for container health checks).
    Healthcheck {
        /// The service's health URL.
        #[arg(long, default_value = "http://127.0.0.1:9000/healthz")]
        url: String,
    },
    /// Show each account's sync state.
    Status,
    /// Run a real sync of generated accounts from the built-in simulator into PostgreSQL
    /// (the configured database, else a throwaway cluster), then show the mirror.
    Demo {
        /// Simulated accounts.
        #[arg(long, default_value_t = 3)]
        accounts: u32,
        /// Users of the first account; the others get a bit fewer.
        #[arg(long, default_value_t = 12_000)]
        users: usize,
    },
    /// Serve the simulated Truto API until interrupted (for manual runs and docker compose).
    Simulate {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value_t = 3)]
        accounts: u32,
        #[arg(long, default_value_t = 12_000)]
        users: usize,
        /// Share of requests answered with a random retryable fault (0..1).
        #[arg(long, default_value_t = 0.0)]
        fault_rate: f64,
        /// Delay added to every answer, in milliseconds.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Give every account `--users` users (instead of fewer for later accounts).
        #[arg(long)]
        same_size: bool,
        /// Enforce a budget per account (requests per window; 429 + Retry-After beyond).
        #[arg(long)]
        limit_per_account: Option<usize>,
        /// Enforce a budget per token (requests per window).
        #[arg(long)]
        limit_per_token: Option<usize>,
        #[arg(long, default_value_t = 10)]
        limit_window_secs: u64,
    },
    /// Run the performance scenarios against the simulator and a throwaway PostgreSQL, with
    /// their floors, and print (or write) the figures.
    Bench {
        /// Which scenarios (S1..S5), comma-separated; default S1–S4.
        #[arg(long, value_delimiter = ',')]
        scenarios: Vec<String>,
        /// Also run S5 (1,000,000 users).
        #[arg(long)]
        big: bool,
        /// Write the figures as a Markdown table to this file.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
    },
}

/// Runs the CLI to completion and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => return config_exit(&e),
    };
    crate::telemetry::init(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Blocking threads decode pages (CPU-bound): a few are as fast as many, and each
        // extra thread keeps an allocator arena, which is memory that never comes back.
        .max_blocking_threads(8)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lms-sync: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Sync { account } => cmd_sync(settings, account).await,
            Command::Run => cmd_run(settings).await,
            Command::Migrate => cmd_migrate(settings).await,
            Command::Healthcheck { url } => cmd_healthcheck(&url).await,
            Command::Status => cmd_status(settings).await,
            Command::Demo { accounts, users } => crate::demo::run(settings, accounts, users).await,
            Command::Simulate {
                listen,
                accounts,
                users,
                fault_rate,
                latency_ms,
                same_size,
                limit_per_account,
                limit_per_token,
                limit_window_secs,
            } => {
                let limit = match (limit_per_account, limit_per_token) {
                    (None, None) => None,
                    (a, t) => Some(crate::simulator::RateLimit {
                        per_account: a.unwrap_or(usize::MAX),
                        per_token: t.unwrap_or(usize::MAX),
                        window: Duration::from_secs(limit_window_secs.max(1)),
                    }),
                };
                let sizes = SimSizes { users, same_size };
                cmd_simulate(listen, accounts, sizes, fault_rate, latency_ms, limit).await
            }
            Command::Bench {
                scenarios,
                big,
                report,
            } => cmd_bench(scenarios, big, report).await,
        }
    });
    // Don't wait for stray background tasks (idle pool connections, bars) at exit.
    runtime.shutdown_timeout(Duration::from_secs(2));
    crate::bench::write_rusage_if_asked();
    ExitCode::from(code)
}

fn config_exit(e: &ConfigError) -> ExitCode {
    eprintln!("lms-sync: {e}");
    ExitCode::from(EXIT_CONFIG)
}

fn fail(msg: impl std::fmt::Display) -> u8 {
    tracing::error!("{msg}");
    eprintln!("lms-sync: {msg}");
    EXIT_FAILED
}

/// Connects and migrates, or says why not.
pub async fn open_store(settings: &Settings) -> Result<Store, String> {
    let url = settings.database_url().map_err(|e| e.to_string())?;
    let store = Store::connect(url, &settings.database)
        .await
        .map_err(|e| format!("cannot connect to the database: {e}"))?;
    store
        .migrate()
        .await
        .map_err(|e| format!("cannot apply migrations: {e}"))?;
    Ok(store)
}

/// A token cancelled by SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::warn!("shutdown requested: finishing the pages in flight");
        t.cancel();
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn cmd_sync(settings: Settings, account: Option<Uuid>) -> u8 {
    let token = match sync_prerequisites(&settings) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let accounts = match account {
        None => settings.accounts.clone(),
        Some(id) => match settings.account(id) {
            Some(a) => vec![a.clone()],
            None => {
                eprintln!("lms-sync: --account {id} is not configured in [[accounts]]");
                return EXIT_CONFIG;
            }
        },
    };
    let source = match TrutoClient::from_settings(&settings, &token) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let store = match open_store(&settings).await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let cancel = shutdown_on_signals();
    let progress: Arc<dyn crate::sync::Progress> = Arc::from(crate::progress::for_mode(
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
    print_summary(&outcomes);
    if outcomes.iter().all(SyncOutcome::succeeded) {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

/// What `sync` and `run` need before they start: accounts, a token and a database URL. On
/// failure, the message is printed and the exit code returned.
fn sync_prerequisites(settings: &Settings) -> Result<secrecy::SecretString, u8> {
    settings
        .require_accounts()
        .map_err(|e| config_exit_code(&e))?;
    let token = match settings.api_token() {
        Ok(Some(t)) => t,
        Ok(None) => {
            eprintln!(
                "lms-sync: invalid configuration: no Truto API token: set TRUTO_API_TOKEN or truto.api_token_file"
            );
            return Err(EXIT_CONFIG);
        }
        Err(e) => return Err(config_exit_code(&e)),
    };
    settings.database_url().map_err(|e| config_exit_code(&e))?;
    Ok(token)
}

fn config_exit_code(e: &ConfigError) -> u8 {
    eprintln!("lms-sync: {e}");
    EXIT_CONFIG
}

/// The per-account table printed after `sync` and `demo`.
pub fn print_summary(outcomes: &[SyncOutcome]) {
    println!(
        "{:<38} {:<16} {:>6} {:>8} {:>8} {:>8} {:>9} {:>7} {:>8} {:>8}",
        "account",
        "outcome",
        "pages",
        "users",
        "inserted",
        "updated",
        "unchanged",
        "deleted",
        "rejected",
        "seconds"
    );
    for o in outcomes {
        let c = &o.counts;
        println!(
            "{:<38} {:<16} {:>6} {:>8} {:>8} {:>8} {:>9} {:>7} {:>8} {:>8.1}",
            crate::source::shorten(&o.label, 37),
            o.status_str(),
            c.pages,
            c.users_seen,
            c.inserted,
            c.updated,
            c.unchanged,
            c.deleted,
            c.rejected,
            o.elapsed.as_secs_f64()
        );
    }
    for o in outcomes {
        if let Some(e) = &o.error {
            println!("  {}: {e}", o.label);
        } else if let Some(r) = &o.deletions_skipped_reason {
            if !o.succeeded() {
                println!("  {}: {r}", o.label);
            }
        }
    }
}

async fn cmd_run(settings: Settings) -> u8 {
    let token = match sync_prerequisites(&settings) {
        Ok(t) => t,
        Err(code) => return code,
    };
    match crate::daemon::run(settings, token, wait_for_signal()).await {
        Ok(()) => EXIT_OK,
        Err(e) => fail(format!("{e:#}")),
    }
}

async fn cmd_healthcheck(url: &str) -> u8 {
    crate::install_crypto_provider();
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
    {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    match client.get(url).send().await {
        Ok(r) if r.status().is_success() => EXIT_OK,
        Ok(r) => fail(format!("{url} answered {}", r.status())),
        Err(e) => fail(format!("{url}: {}", crate::source::error_chain(&e))),
    }
}

async fn cmd_migrate(settings: Settings) -> u8 {
    if let Err(e) = settings.database_url() {
        return config_exit_code(&e);
    }
    match open_store(&settings).await {
        Ok(store) => {
            println!("migrations applied to schema {}", store.schema());
            EXIT_OK
        }
        Err(e) => fail(e),
    }
}

async fn cmd_status(settings: Settings) -> u8 {
    if let Err(e) = settings.database_url() {
        return config_exit_code(&e);
    }
    let store = match open_store(&settings).await {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let configured: Vec<(Uuid, Option<String>)> = settings
        .accounts
        .iter()
        .map(|a| (a.integrated_account_id, a.label.clone()))
        .collect();
    let rows = match store.status(&configured).await {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let next = match store.run_histories().await {
        Ok(h) => crate::daemon::next_runs(&settings, &h, chrono::Utc::now()),
        Err(e) => return fail(e),
    };
    print!("{}", render_status(&rows, &next));
    EXIT_OK
}

/// `status` as a readable table.
pub fn render_status(
    rows: &[crate::store::StatusRow],
    next: &std::collections::HashMap<Uuid, chrono::DateTime<chrono::Utc>>,
) -> String {
    let t = |v: Option<chrono::DateTime<chrono::Utc>>| {
        v.map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
            .unwrap_or_else(|| "-".into())
    };
    let mut s = format!(
        "{:<38} {:<16} {:<13} {:<16} {:<21} {:<21} {:<21} {:>8} {:>8} {:>5}\n",
        "account",
        "status",
        "health",
        "last outcome",
        "last finished",
        "last success",
        "next run",
        "live",
        "deleted",
        "fails"
    );
    for r in rows {
        let name = r
            .label
            .clone()
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| r.integrated_account_id.to_string());
        s.push_str(&format!(
            "{:<38} {:<16} {:<13} {:<16} {:<21} {:<21} {:<21} {:>8} {:>8} {:>5}\n",
            crate::source::shorten(&name, 37),
            r.status,
            r.health,
            r.last_outcome.as_deref().unwrap_or("-"),
            t(r.last_finished_at),
            t(r.last_succeeded_at),
            t(next.get(&r.integrated_account_id).copied()),
            r.live_users,
            r.deleted_users,
            r.consecutive_failures
        ));
        if r.resumable {
            s.push_str("    the next run resumes an unfinished listing\n");
        }
        if r.hydration_pending > 0 {
            s.push_str(&format!(
                "    {} users queued for hydration (full objects fetched in the next runs)\n",
                r.hydration_pending
            ));
        }
        if r.health != "ok" {
            s.push_str(&format!(
                "    unhealthy since {}: {}; probed again at the next run time, then synced as soon as a request succeeds\n",
                t(r.health_since),
                r.health_reason
                    .as_deref()
                    .map(|e| crate::source::shorten(e, 300))
                    .unwrap_or_default()
            ));
        }
        if let Some(e) = &r.last_error {
            s.push_str(&format!(
                "    last error: {}\n",
                crate::source::shorten(e, 300)
            ));
        }
    }
    s
}

/// How many users each simulated account has.
struct SimSizes {
    users: usize,
    same_size: bool,
}

impl SimSizes {
    fn of(&self, n: u32) -> usize {
        if self.same_size {
            self.users
        } else {
            crate::demo::account_size(self.users, n)
        }
    }
}

async fn cmd_bench(scenarios: Vec<String>, big: bool, report: Option<PathBuf>) -> u8 {
    let all = crate::bench::scenarios(true);
    let chosen: Vec<crate::bench::Scenario> = if scenarios.is_empty() {
        crate::bench::scenarios(big)
    } else {
        let mut list = Vec::new();
        for name in &scenarios {
            match all.iter().find(|s| s.name.eq_ignore_ascii_case(name)) {
                Some(s) => list.push(s.clone()),
                None => {
                    eprintln!("lms-sync: --scenarios: unknown scenario {name} (S1..S5)");
                    return EXIT_CONFIG;
                }
            }
        }
        list
    };
    match crate::bench::run_all(&chosen, report.as_deref()).await {
        Ok(rows) if rows.iter().all(|r| r.met) => EXIT_OK,
        Ok(_) => EXIT_FAILED,
        Err(e) => fail(format!("bench: {e:#}")),
    }
}

async fn cmd_simulate(
    listen: std::net::SocketAddr,
    accounts: u32,
    sizes: SimSizes,
    fault_rate: f64,
    latency_ms: u64,
    limit: Option<crate::simulator::RateLimit>,
) -> u8 {
    if !(0.0..1.0).contains(&fault_rate) {
        eprintln!("lms-sync: --fault-rate must be in [0, 1)");
        return EXIT_CONFIG;
    }
    let sim = match crate::simulator::Simulator::start_on(listen).await {
        Ok(s) => s,
        Err(e) => return fail(format!("cannot listen on {listen}: {e}")),
    };
    for n in 1..=accounts {
        sim.add_account(crate::simulator::demo_account_id(n), sizes.of(n), n as u64);
    }
    sim.set_random_faults(fault_rate, 1);
    sim.set_latency(Duration::from_millis(latency_ms));
    sim.set_rate_limit(limit);
    println!("simulated Truto listening on {}", sim.base_url());
    println!("token: {}", crate::simulator::DEMO_TOKEN);
    for n in 1..=accounts {
        println!(
            "account {}: {} users",
            crate::simulator::demo_account_id(n),
            sizes.of(n)
        );
    }
    wait_for_signal().await;
    EXIT_OK
}
