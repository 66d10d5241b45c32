//! The command line: parsing, the commands, what they print, progress and logging, and exit
//! codes. `main.rs` hands the parsed [`Cli`] to [`main`]; each command loads what it needs and
//! calls the library. With the `devkit` feature, the development commands (`demo`,
//! `simulate`, `bench`) are parsed here too and handed to [`crate::devkit`].

pub mod accounts;
mod check;
pub mod commands;
mod exit;
pub mod progress;
pub mod render;
mod select;
mod show_config;
pub mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use uuid::Uuid;

pub use commands::{open_store, Access};
pub use exit::{CliError, EXIT_CONFIG, EXIT_FAILED, EXIT_OK};

use crate::config::Settings;

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
    /// Never create the schema or apply migrations; only check that they are applied (for a
    /// role with DML rights only). The same as `database.migrate = false`.
    #[arg(long, global = true)]
    pub no_migrate: bool,
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
    /// Show the fleet's sync state: every account, those needing attention first, then a count
    /// of each kind of trouble and what holds every run.
    Status,
    /// Check what `run` needs, changing nothing: the database, the schema, the role's rights,
    /// Truto's answer to the token, the configured accounts, discovery. Exit 0 when all pass.
    Check,
    /// Show the settings this command line would run with: every key's value and where it came
    /// from (default, the config file, an env var), whether each secret is set and from where
    /// (never its value), and variables that are not read. Touches nothing else; exit 2 when
    /// the configuration is invalid, as every command would.
    Config {
        /// JSON instead of the annotated TOML.
        #[arg(long)]
        json: bool,
    },
    /// The fleet's accounts: list, show, discover, pause, resume, sync now, reset a cursor,
    /// protect from purges, purge.
    Accounts {
        #[command(subcommand)]
        command: accounts::AccountsCommand,
    },
    #[cfg(feature = "devkit")]
    #[command(flatten)]
    Dev(crate::devkit::DevCommand),
}

/// Runs the CLI to completion and returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    if let Command::Config { json } = cli.command {
        return ExitCode::from(exit::finish(show_config(&cli, json)));
    }
    let mut settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => return ExitCode::from(exit::finish(Err(e.into()))),
    };
    if cli.no_migrate {
        settings.database.migrate = false;
    }
    telemetry::init(&settings.log);
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
    let (config, no_migrate) = (cli.config.clone(), cli.no_migrate);
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Sync { account } => commands::sync(settings, account).await,
            Command::Run => commands::run(settings, config, no_migrate).await,
            Command::Migrate => commands::migrate(settings).await,
            Command::Healthcheck { url } => commands::healthcheck(&url).await,
            Command::Status => commands::status(settings).await,
            Command::Check => check::check(settings).await,
            Command::Accounts { command } => accounts::run(settings, command).await,
            Command::Config { .. } => unreachable!("answered before the runtime starts"),
            #[cfg(feature = "devkit")]
            Command::Dev(command) => crate::devkit::run(command, settings).await,
        }
    });
    let code = exit::finish(result);
    // Don't wait for stray background tasks (idle pool connections, bars) at exit.
    runtime.shutdown_timeout(Duration::from_secs(2));
    #[cfg(feature = "devkit")]
    crate::devkit::bench::write_rusage_if_asked();
    ExitCode::from(code)
}

/// `lms-sync config`: no runtime, no logging, no database; only the layers.
fn show_config(cli: &Cli, json: bool) -> Result<(), CliError> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    let (mut settings, mut explained) = Settings::explain(cli.config.as_deref(), &env)?;
    if cli.no_migrate {
        settings.database.migrate = false;
        explained.digest = settings.digest();
        if let Some(s) = explained.setting_mut("database.migrate") {
            if s.value == serde_json::Value::Bool(true) {
                s.file_value = (s.from == crate::config::Origin::File).then(|| s.value.clone());
                s.value = serde_json::Value::Bool(false);
                s.from = crate::config::Origin::Flag("--no-migrate");
            }
        }
    }
    if json {
        println!("{:#}", show_config::json(&explained));
    } else {
        print!("{}", show_config::toml(&explained));
    }
    Ok(())
}
