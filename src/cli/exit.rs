//! Exit codes, and the one place where an error that ends a command becomes one: every
//! command returns `Result<(), CliError>`, and [`finish`] reports the error and picks the code.

use crate::config::ConfigError;
use crate::store::StoreError;

/// Success (for `sync`: every account succeeded; for `run`: stopped by a signal after a clean
/// shutdown).
pub const EXIT_OK: u8 = 0;
/// A sync failed, or the database was unreachable for a one-shot command.
pub const EXIT_FAILED: u8 = 1;
/// Invalid configuration or usage.
pub const EXIT_CONFIG: u8 = 2;

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A bad key or value; the message names the key and its env var.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A bad command line.
    #[error("{0}")]
    Usage(String),
    /// The database could not be reached, or migrated.
    #[error("{context}: {error}")]
    Store {
        context: &'static str,
        error: StoreError,
    },
    /// The command ran, and what failed was reported as it went (the sync summary).
    #[error("some of the work failed")]
    Failed,
    /// Anything else that stopped the command.
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl CliError {
    pub fn code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Usage(_) => EXIT_CONFIG,
            CliError::Store { .. } | CliError::Failed | CliError::Other(_) => EXIT_FAILED,
        }
    }
}

/// Reports how a command ended (once, on stderr and in the log) and returns its exit code.
pub fn finish(result: Result<(), CliError>) -> u8 {
    let Err(e) = result else {
        return EXIT_OK;
    };
    match &e {
        // Configuration errors are one line on stderr: logging may not even be set up.
        CliError::Config(_) | CliError::Usage(_) => eprintln!("lms-sync: {e}"),
        CliError::Failed => {}
        CliError::Store { .. } | CliError::Other(_) => {
            tracing::error!("{e}");
            eprintln!("lms-sync: {e}");
        }
    }
    e.code()
}
