//! Development tools, kept apart from the product: a simulated Truto, a throwaway PostgreSQL,
//! the demo and the benchmark, and the commands that run them (`demo`, `simulate`, `bench`).
//! Compiled only with the `devkit` cargo feature (on by default); the product builds without
//! it (`cargo check --no-default-features --lib --bins`, run by `.ci/run`), so nothing outside
//! this folder can come to depend on it.

pub mod bench;
pub mod demo;
mod http1;
pub mod pg;
pub mod simulator;

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use crate::cli::CliError;
use crate::config::Settings;

/// The development commands, parsed beside the product's (see [`crate::cli::Command`]).
#[derive(Debug, Subcommand)]
pub enum DevCommand {
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
    Simulate(SimulateArgs),
    /// Run the performance scenarios against the simulator and a throwaway PostgreSQL, with
    /// their floors, and print (or write) the figures.
    Bench {
        /// Which scenarios (S1..S8), comma-separated; default all but S5.
        #[arg(long, value_delimiter = ',')]
        scenarios: Vec<String>,
        /// Also run S5 (1,000,000 users).
        #[arg(long)]
        big: bool,
        /// Write the figures as a Markdown table to this file.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        /// Run each scenario this many times, its floors measured again each time; report the
        /// middle run (by how close it came to its bound) and meet the target in most runs.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=20))]
        repeat: u16,
    },
}

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
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
    /// How long every answer takes from its request, rendering included, in milliseconds.
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
    /// Report each account's window on every answer (`ratelimit-limit`, `-remaining`,
    /// `-reset`), as a vendor with those limits does.
    #[arg(long)]
    ratelimit_headers: bool,
}

/// Runs a development command.
pub async fn run(command: DevCommand, settings: Settings) -> Result<(), CliError> {
    match command {
        DevCommand::Demo { accounts, users } => demo::run(settings, accounts, users).await,
        DevCommand::Simulate(args) => simulate(args).await,
        DevCommand::Bench {
            scenarios,
            big,
            report,
            repeat,
        } => run_bench(scenarios, big, report, repeat.into()).await,
    }
}

async fn run_bench(
    scenarios: Vec<String>,
    big: bool,
    report: Option<PathBuf>,
    repeat: usize,
) -> Result<(), CliError> {
    let all = bench::scenarios(true);
    let chosen: Vec<bench::Scenario> = if scenarios.is_empty() {
        bench::scenarios(big)
    } else {
        if let Some(name) = scenarios
            .iter()
            .find(|n| !all.iter().any(|s| s.name.eq_ignore_ascii_case(n)))
        {
            return Err(CliError::Usage(format!(
                "--scenarios: unknown scenario {name} (S1..S8)"
            )));
        }
        // In the usual order, whatever the order given: a re-sync runs after its first sync.
        all.into_iter()
            .filter(|s| scenarios.iter().any(|n| s.name.eq_ignore_ascii_case(n)))
            .collect()
    };
    for s in &chosen {
        if let Some(of) = s.resync_of {
            if !chosen.iter().any(|c| c.name == of) {
                return Err(CliError::Usage(format!(
                    "--scenarios: {} re-syncs what {of} mirrored; choose {of} too",
                    s.name
                )));
            }
        }
    }
    let rows = bench::run_all(&chosen, repeat, report.as_deref())
        .await
        .map_err(|e| e.context("bench"))?;
    if rows.iter().all(|r| r.met) {
        Ok(())
    } else {
        Err(CliError::Failed)
    }
}

async fn simulate(a: SimulateArgs) -> Result<(), CliError> {
    if !(0.0..1.0).contains(&a.fault_rate) {
        return Err(CliError::Usage("--fault-rate must be in [0, 1)".into()));
    }
    let limit = match (a.limit_per_account, a.limit_per_token) {
        (None, None) => None,
        (per_account, per_token) => Some(simulator::RateLimit {
            per_account: per_account.unwrap_or(usize::MAX),
            per_token: per_token.unwrap_or(usize::MAX),
            window: Duration::from_secs(a.limit_window_secs.max(1)),
        }),
    };
    let size = |n: u32| {
        if a.same_size {
            a.users
        } else {
            demo::account_size(a.users, n)
        }
    };
    let sim = simulator::Simulator::start_on(a.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", a.listen))?;
    for n in 1..=a.accounts {
        let id = simulator::demo_account_id(n);
        sim.add_account(id, size(n), n as u64);
        // Listed as integrated accounts too, so that [discovery] finds them.
        sim.set_integrated(
            id,
            simulator::Integrated::active(&format!("demo-tenant-{n}")),
        );
    }
    sim.set_random_faults(a.fault_rate, 1);
    sim.set_latency(Duration::from_millis(a.latency_ms));
    sim.set_rate_limit(limit);
    sim.set_ratelimit_headers(a.ratelimit_headers);
    println!("simulated Truto listening on {}", sim.base_url());
    println!("token: {}", simulator::DEMO_TOKEN);
    for n in 1..=a.accounts {
        println!(
            "account {}: {} users",
            simulator::demo_account_id(n),
            size(n)
        );
    }
    crate::service::wait_for_signal().await;
    Ok(())
}
