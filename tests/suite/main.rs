//! The integration tests, in one binary so that they link once: each module is one suite
//! (see the README's Development section), sharing the harness in `helpers`.

mod helpers;

mod admin;
mod alertmanager;
mod analysts;
mod budget;
mod chaos;
mod cli;
mod config_fuzz;
mod daemon;
mod deploy;
mod environments;
mod fleet;
mod history;
mod hostile;
mod hydration;
mod kill_matrix;
mod network;
mod pg_restart;
mod process;
mod prometheus;
mod purges;
mod soak;
mod status_page;
mod sync;
mod upgrades;
mod webhooks;
