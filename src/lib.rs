//! lms-sync mirrors the users of learning-management systems, read through Truto's unified
//! API, into PostgreSQL. `docs/architecture.md` is the map: where each concept lives and the
//! rules between the parts.
//!
//! Data flow:
//!
//! ```text
//! config (file → env) ──► cli (commands) ──► sync::sync_account, one pass per account
//!                         service (run)  ──┘    │
//!                         source (HTTP to Truto) ◄──┤ fetch page n+1 while page n is written
//!                         model  (wire → rows)   ◄──┤ decode, normalize, hash
//!                         store  (SQL)           ◄──┘ one transaction per page: rows + cursor
//! ```
//!
//! - [`config`]: typed settings, layered file → env, validated once at start.
//! - [`source`]: the only module that speaks HTTP to Truto; retries with [`backoff`], paced
//!   by the request budget.
//! - [`model`]: pure decoding and normalization of the unified user; content hashes.
//! - [`store`]: the only module that holds SQL; migrations, leases, page writes, the sweep,
//!   the shared request budget's table.
//! - [`sync`]: one complete pass over one account; the step every caller shares; discovery.
//! - [`service`]: `run`: the scheduler, the budget's negotiation, the operations HTTP server
//!   (status pages, metrics, admin routes, webhooks), reloads.
//! - [`cli`]: the commands, their output and exit codes.
//! - [`domain`], [`fleet`], [`schedule`], [`metrics`], [`text`]: pure pieces the others share.
//! - `devkit` (feature `devkit`, on by default for the README's commands; CI checks that the
//!   rest builds without it): the simulator, throwaway PostgreSQL clusters, the demo and the
//!   benchmark. No production module depends on it.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod cli;
pub mod config;
#[cfg(feature = "devkit")]
pub mod devkit;
pub mod domain;
pub mod failpoint;
pub mod fleet;
pub mod metrics;
pub mod model;
pub mod schedule;
pub mod service;
pub mod source;
pub mod store;
pub mod sync;
pub mod text;

/// Installs rustls' ring provider once per process (reqwest is built without a default one).
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
