//! The `lms-sync` binary: parse the command line and hand over to the library.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = lms_sync::cli::Cli::parse();
    lms_sync::cli::main(cli)
}
