//! lms-sync mirrors the users of learning-management systems, read through Truto's unified
//! API, into PostgreSQL.
//!
//! Data flow:
//!
//! ```text
//! config (file → env) ──► app (CLI commands) ──► sync::sync_account, one pass per account
//!                                                   │
//!                         source (HTTP to Truto) ◄──┤ fetch page n+1 while page n is written
//!                         model  (wire → rows)   ◄──┤ decode, normalize, hash
//!                         store  (SQL)           ◄──┘ one transaction per page: rows + cursor
//! ```
//!
//! - [`config`]: typed settings, layered file → env, validated once at start.
//! - [`source`]: the only module that speaks HTTP to Truto; retries with [`backoff`].
//! - [`model`]: pure decoding and normalization of the unified user; content hashes.
//! - [`store`]: the only module that holds SQL; migrations, leases, page writes, the sweep.
//! - [`sync`]: one complete pass over one account; the step every caller shares.
//! - [`simulator`]: a simulated Truto for tests, the demo and benchmarks.
//! - [`pg`]: a throwaway PostgreSQL cluster from the local binaries.
//! - [`app`], [`demo`], [`progress`], [`telemetry`]: the binary's commands and output.
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
