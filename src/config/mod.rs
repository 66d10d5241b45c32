//! Settings: typed sections, layered loading (file → env), validation with messages that name the
//! offending key and its env var. Owns no I/O beyond reading the config and token files.
//!
//! - this file: the sections, their keys and defaults, and the helpers both halves share;
//! - `load`: the layers, in order, and the secrets;
//! - `validate`: every check serde cannot make, and the effective schedules;
//! - `explain`: each key's value and the layer it came from (`lms-sync config`).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

mod db_hosts;
mod db_tls;
mod explain;
mod load;
mod validate;

pub use db_hosts::split_hosts;
pub use db_tls::{DbTls, ENV_NAMES, URL_NAMES};
pub use explain::{
    differences, digest_of, Explained, Origin, Secret, SecretOrigin, Setting, FIXED_AT_START,
};
pub use validate::validate_schema_name;

/// Env var prefix; sections are separated by `__` (`LMS_SYNC__TRUTO__BASE_URL`).
pub const ENV_PREFIX: &str = "LMS_SYNC";
/// The file read when `--config` is not given (if it exists).
pub const DEFAULT_CONFIG_PATH: &str = "config/default.toml";
/// Where the Truto token comes from. Never from a committed file.
pub const TOKEN_ENV: &str = "TRUTO_API_TOKEN";
/// The env var holding the operations server's admin token.
pub const ADMIN_TOKEN_ENV: &str = "LMS_SYNC_ADMIN_TOKEN";
/// The env var holding the secret Truto signs webhooks with.
pub const WEBHOOK_SECRET_ENV: &str = "TRUTO_WEBHOOK_SECRET";

/// An invalid configuration. Its `Display` is one line naming the key (and the env var that sets it,
/// or for a key no setting has, where it was written).
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {}", one_line(&redact_credentials(.0)))]
pub struct ConfigError(pub String);

/// Control characters (an echoed value may hold a newline) escaped, so a message stays one line.
fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `scheme://user:password@host` → `scheme://user:***@host`, wherever a message echoes a value:
/// a database URL put under the wrong key must not print its password.
pub fn redact_credentials(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c == '"' || c == '\'' || c == '`' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon]);
                        out.push_str(":***");
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

fn env_name(key: &str) -> String {
    let mut name = String::from(ENV_PREFIX);
    for part in key.split('.') {
        // Array indices (`accounts[0]`) cannot be set from env; name the section instead.
        let part = part.split('[').next().unwrap_or(part);
        name.push_str("__");
        name.push_str(&part.to_ascii_uppercase());
    }
    name
}

fn key_error(key: &str, msg: impl std::fmt::Display) -> ConfigError {
    if key.starts_with("accounts") || key.starts_with("tenants") {
        // Accounts and tenants are tables in the file; env vars cannot set them.
        ConfigError(format!("{key}: {msg}"))
    } else {
        ConfigError(format!("{key}: {msg} (env {})", env_name(key)))
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub truto: TrutoSettings,
    pub database: DatabaseSettings,
    pub sync: SyncSettings,
    pub log: LogSettings,
    pub schedule: ScheduleSettings,
    pub rate_budget: RateBudgetSettings,
    pub server: ServerSettings,
    pub history: HistorySettings,
    pub discovery: DiscoverySettings,
    pub webhooks: WebhookSettings,
    /// Applies to every discovered account that has no `[[accounts]]` entry of its own.
    pub account_defaults: AccountDefaults,
    /// `[[tenants]]`: for the discovered accounts of one tenant, instead of `account_defaults`.
    pub tenants: Vec<TenantSettings>,
    pub accounts: Vec<AccountSettings>,
}

/// The change history in `user_changes`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistorySettings {
    /// Record every insert, update, delete and undelete of a user.
    pub enabled: bool,
    /// Delete history older than this many days after each run; 0 keeps it forever.
    pub retention_days: u32,
    /// Delete an account's finished runs (`sync_runs`) older than this many days after each
    /// of its runs (its latest run always stays); 0 keeps them forever.
    pub sync_runs_retention_days: u32,
    /// Delete an account's rejected records not refused again for this many days; 0 keeps
    /// them forever.
    pub rejected_records_retention_days: u32,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            retention_days: 0,
            sync_runs_retention_days: 90,
            rejected_records_retention_days: 90,
        }
    }
}

/// `[discovery]`: the accounts to mirror, found in Truto's list of integrated accounts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoverySettings {
    /// Off: only `[[accounts]]`, exactly as without discovery.
    pub enabled: bool,
    /// `integration.name` values to mirror.
    pub integrations: Vec<String>,
    /// How often to list the integrated accounts (humantime).
    pub interval: String,
    /// How long after a failed listing the next is tried (humantime); doubles with each failure
    /// in a row, up to `interval`.
    pub retry_initial: String,
    /// When not empty, only accounts of these tenants.
    pub tenant_ids: Vec<String>,
    /// Never sync these accounts.
    pub exclude_accounts: Vec<Uuid>,
    pub include_sandbox: bool,
    /// A listing that would retire more than this share of the known accounts retires none.
    pub max_retire_fraction: f64,
    /// Purge (delete every row of) an account retired for longer than this (humantime), after
    /// a complete listing still without it; unset or empty: never (`accounts purge` only).
    pub purge_retired_after: Option<String>,
}

impl Default for DiscoverySettings {
    fn default() -> Self {
        Self {
            enabled: false,
            integrations: vec!["talentlms".into()],
            interval: "5m".into(),
            retry_initial: "1m".into(),
            tenant_ids: Vec::new(),
            exclude_accounts: Vec::new(),
            include_sandbox: false,
            max_retire_fraction: 0.5,
            purge_retired_after: None,
        }
    }
}

impl DiscoverySettings {
    /// The listing interval (validated when the settings load).
    pub fn interval(&self) -> Duration {
        parse_duration("discovery.interval", &self.interval)
            .expect("validated when the settings load")
    }

    /// How long after the last listing the next is due: `interval` after one that did not
    /// fail; after `failures` failed listings in a row, `retry_initial` doubled for each but
    /// the first, never longer than `interval` (a listing that failed for a cause since fixed,
    /// such as a token, need not wait a whole interval; one that keeps failing is not tried
    /// more often than needed).
    pub fn next_listing_after(&self, failures: u32) -> Duration {
        let interval = self.interval();
        if failures == 0 {
            return interval;
        }
        let initial = parse_duration("discovery.retry_initial", &self.retry_initial)
            .expect("validated when the settings load");
        let doubled = initial.saturating_mul(1 << (failures - 1).min(30));
        doubled.min(interval)
    }

    /// How long an account stays retired before the service purges it; `None`: never
    /// (validated when the settings load).
    pub fn purge_retired_after(&self) -> Option<Duration> {
        let text = self.purge_retired_after.as_deref()?.trim();
        if text.is_empty() {
            return None;
        }
        Some(
            parse_duration("discovery.purge_retired_after", text)
                .expect("validated when the settings load"),
        )
    }
}

/// `[account_defaults]`: an account's keys (its id aside), for discovered accounts.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountDefaults {
    pub label: Option<String>,
    pub remote_query: BTreeMap<String, String>,
    pub ignore_remote_data: bool,
    pub exclude_fields: Vec<String>,
    pub max_delete_fraction: Option<f64>,
    pub schedule: Option<AccountSchedule>,
    pub hydrate: bool,
    pub hydrate_max_per_run: Option<u32>,
}

impl AccountDefaults {
    /// The settings of a discovered account without an `[[accounts]]` entry.
    pub fn for_account(&self, id: Uuid) -> AccountSettings {
        AccountSettings {
            integrated_account_id: id,
            label: self.label.clone(),
            remote_query: self.remote_query.clone(),
            ignore_remote_data: self.ignore_remote_data,
            exclude_fields: self.exclude_fields.clone(),
            max_delete_fraction: self.max_delete_fraction,
            schedule: self.schedule.clone(),
            hydrate: self.hydrate,
            hydrate_max_per_run: self.hydrate_max_per_run,
        }
    }
}

/// `[[tenants]]`: the keys of one tenant's discovered accounts (those without an `[[accounts]]`
/// entry), instead of `[account_defaults]`: an account of a tenant listed here takes its keys
/// from this entry, whole, as an `[[accounts]]` entry takes nothing from `[account_defaults]`,
/// so that what a tenant's accounts run with is read in one place. A customer's accounts that
/// discovery finds later take it too, with no configuration change.
///
/// Its keys are [`AccountDefaults`]'s written out again rather than `#[serde(flatten)]`ed:
/// serde cannot refuse the unknown keys of a flattened struct, and a misspelt key (`hydrat`)
/// must stop the load, not be ignored.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantSettings {
    /// Truto's `tenant_id`.
    pub tenant_id: String,
    pub label: Option<String>,
    pub remote_query: BTreeMap<String, String>,
    pub ignore_remote_data: bool,
    pub exclude_fields: Vec<String>,
    pub max_delete_fraction: Option<f64>,
    pub schedule: Option<AccountSchedule>,
    pub hydrate: bool,
    pub hydrate_max_per_run: Option<u32>,
}

impl TenantSettings {
    /// The tenant's keys, as `[account_defaults]` holds them for every other account.
    pub fn keys(&self) -> AccountDefaults {
        AccountDefaults {
            label: self.label.clone(),
            remote_query: self.remote_query.clone(),
            ignore_remote_data: self.ignore_remote_data,
            exclude_fields: self.exclude_fields.clone(),
            max_delete_fraction: self.max_delete_fraction,
            schedule: self.schedule.clone(),
            hydrate: self.hydrate,
            hydrate_max_per_run: self.hydrate_max_per_run,
        }
    }
}

/// When `lms-sync run` syncs each account.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSettings {
    /// An interval (humantime: "6h", "90m", "1d"). The default cadence when `at` is unset.
    pub every: Option<String>,
    /// A daily wall-clock time "HH:MM" in `timezone`; excludes `every`.
    pub at: Option<String>,
    /// IANA time zone of `at`.
    pub timezone: String,
    /// Sync every account once as soon as the daemon starts.
    pub run_on_start: bool,
    /// Spread: each account's slots shift by a stable offset in [0, jitter).
    pub jitter: String,
    /// First retry of a failed account; doubles per failure up to `retry_max`.
    pub retry_initial: String,
    pub retry_max: String,
    /// First probe of an account whose credentials or access are broken (needs
    /// re-authorization, blocked, not found, forbidden); doubles per failed probe.
    pub health_retry_initial: String,
    pub health_retry_max: String,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        Self {
            every: None,
            at: None,
            timezone: "UTC".into(),
            run_on_start: true,
            jitter: "30s".into(),
            retry_initial: "1m".into(),
            retry_max: "1h".into(),
            health_retry_initial: "1h".into(),
            health_retry_max: "24h".into(),
        }
    }
}

/// The default interval when neither `every` nor `at` is set.
pub const DEFAULT_EVERY: &str = "6h";

/// An account's own schedule; unset keys fall back to `[schedule]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountSchedule {
    pub every: Option<String>,
    pub at: Option<String>,
    pub timezone: Option<String>,
    pub jitter: Option<String>,
}

/// Requests per window, per integrated account and per API token (Truto: 50 and 500 per 10 s).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateBudgetSettings {
    pub enabled: bool,
    pub per_account: usize,
    pub per_token: usize,
    pub window_secs: u64,
}

impl Default for RateBudgetSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            per_account: 50,
            per_token: 500,
            window_secs: 10,
        }
    }
}

/// The operations HTTP server of `lms-sync run`: /healthz, /readyz, /metrics, and the admin
/// routes and webhook receiver when their secrets are configured.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// `host:port`; empty turns the server off.
    pub listen: String,
    /// File holding the admin token for `GET /status` and `POST /accounts/{id}/...`;
    /// `LMS_SYNC_ADMIN_TOKEN` wins. Without either, those routes answer 403.
    pub admin_token_file: Option<PathBuf>,
    /// Whether the counters of this process's runs (users, pages, runs, requests, retries,
    /// budget waits, hydrations) carry an `account` label; `false` counts them for the whole
    /// process, for fleets too large for a series per account and counter (see
    /// [`crate::metrics::Metrics::count_per_account`]).
    pub per_account_counters: bool,
    /// Which replicas export the accounts' state gauges read from the database.
    pub account_metrics: AccountMetrics,
    /// How often `run` reads the secrets' files (`truto.api_token_file`,
    /// `server.admin_token_file`, `webhooks.secret_file`) and takes one that changed, as a
    /// mounted Kubernetes Secret does when it is updated; 0 reads them on SIGHUP only.
    pub secret_files_check_secs: u64,
    /// How often `run` reads its config file and, when its content changed (and stayed so for
    /// one more check: a file caught mid-write is not taken), reloads it as SIGHUP does; 0
    /// reloads on SIGHUP only.
    pub config_file_check_secs: u64,
    /// Whether the status page (`/` and `/accounts/{id}`) needs the admin token too, as the
    /// admin routes do (as `Authorization: Bearer <token>`, or HTTP Basic with the token as the
    /// password, which a browser asks for): for a port that others in the network reach, such
    /// as Prometheus scraping `/metrics` beside it. `/healthz`, `/readyz`, `/metrics` and the
    /// webhooks' route stay as they are.
    pub status_page_requires_token: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9000".into(),
            admin_token_file: None,
            per_account_counters: true,
            account_metrics: AccountMetrics::EveryReplica,
            secret_files_check_secs: 10,
            config_file_check_secs: 10,
            status_page_requires_token: false,
        }
    }
}

/// `server.account_metrics`: which replicas export each account's state (last success, health,
/// failures in a row, live users, hydration queue, info), read from the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum AccountMetrics {
    /// Every replica: any one scraped is enough for the alerts.
    EveryReplica,
    /// One at a time, the holder of the reporter lease: a fleet's state series once, not once
    /// per replica.
    OneReplica,
}

/// The value as written in the config (what `lms-sync config` prints).
impl From<AccountMetrics> for &'static str {
    fn from(m: AccountMetrics) -> Self {
        match m {
            AccountMetrics::EveryReplica => "every_replica",
            AccountMetrics::OneReplica => "one_replica",
        }
    }
}

impl TryFrom<String> for AccountMetrics {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "every_replica" => Ok(AccountMetrics::EveryReplica),
            "one_replica" => Ok(AccountMetrics::OneReplica),
            _ => Err(format!(
                "must be one of every_replica, one_replica (got `{s}`)"
            )),
        }
    }
}

/// `[webhooks]`: the receiver of Truto's webhooks (`POST /webhooks/truto`), on when a secret
/// is configured.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// File holding the webhook's secret; `TRUTO_WEBHOOK_SECRET` wins.
    pub secret_file: Option<PathBuf>,
    /// Events whose `created_at` is further than this from now are ignored (replays).
    pub tolerance_secs: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            secret_file: None,
            tolerance_secs: 300,
        }
    }
}

fn parse_duration(key: &str, v: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(v.trim()).map_err(|e| {
        key_error(
            key,
            format!("`{v}` is not a duration like \"6h\" or \"90s\" ({e})"),
        )
    })
}

fn parse_at(key: &str, v: &str) -> Result<chrono::NaiveTime, ConfigError> {
    chrono::NaiveTime::parse_from_str(v.trim(), "%H:%M")
        .map_err(|_| key_error(key, format!("`{v}` is not a time like \"02:30\"")))
}

fn parse_tz(key: &str, v: &str) -> Result<chrono_tz::Tz, ConfigError> {
    v.trim().parse::<chrono_tz::Tz>().map_err(|_| {
        key_error(
            key,
            format!("`{v}` is not an IANA time zone like \"Europe/Berlin\""),
        )
    })
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrutoSettings {
    pub base_url: String,
    /// The `limit` sent with every page request.
    pub page_size: u32,
    pub request_timeout_secs: u64,
    pub connect_timeout_secs: u64,
    /// A file holding the token (e.g. a Docker secret). `TRUTO_API_TOKEN` wins when both are set.
    pub api_token_file: Option<PathBuf>,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// Total time one request may spend waiting between its attempts.
    pub max_retry_wait_secs: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_secs: u64,
    /// A listing with more pages than this fails instead of running forever.
    pub max_pages: u64,
    /// The largest answer read, in MiB: a larger one fails its request instead of filling
    /// the memory every account shares.
    pub max_body_mb: u64,
}

impl Default for TrutoSettings {
    fn default() -> Self {
        Self {
            base_url: "https://api.truto.one".into(),
            page_size: 100,
            request_timeout_secs: 30,
            connect_timeout_secs: 10,
            api_token_file: None,
            max_attempts: 8,
            max_retry_wait_secs: 300,
            backoff_initial_ms: 500,
            backoff_max_secs: 60,
            max_pages: 100_000,
            max_body_mb: 64,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// Holds the password, so it is a secret: never printed.
    #[serde(skip_serializing)]
    pub url: Option<SecretString>,
    /// A file holding the URL (a mounted Secret, a credentials agent's output), read when `url`
    /// is not set, and again while the service runs: rotated credentials reach new connections
    /// without a restart.
    pub url_file: Option<PathBuf>,
    /// Whether `url` was read from `url_file` at load (so that reading the file again means
    /// something); not a key.
    #[serde(skip)]
    pub url_from_file: bool,
    pub schema: String,
    pub max_connections: u32,
    pub connect_timeout_secs: u64,
    /// Create the schema and apply pending migrations at start (needs a role that owns the
    /// schema). Off: only check that `lms-sync migrate` has applied them (DML rights suffice).
    pub migrate: bool,
    /// How long a migration waits for a table's lock before it gives up (and is tried again):
    /// while it waits, every other query on that table waits behind it.
    pub migration_lock_timeout_secs: u64,
    /// How long a session of lms-sync may wait for a lock another session holds (a DBA's
    /// `CREATE INDEX`, an analyst's `LOCK TABLE` or open `SELECT … FOR UPDATE`) before the
    /// service logs it, shows it on the status page and counts it in
    /// `lms_sync_database_lock_wait_seconds`.
    pub lock_wait_warn_secs: u64,
    /// About how long PostgreSQL keeps a session of lms-sync whose process it can no longer
    /// reach (a node lost, a network cut), through the server's TCP keepalives: a lost
    /// replica's account leases and budget share are held that long.
    pub keepalive_timeout_secs: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: None,
            url_file: None,
            url_from_file: false,
            schema: "lms".into(),
            max_connections: 10,
            connect_timeout_secs: 10,
            migrate: true,
            migration_lock_timeout_secs: 10,
            lock_wait_warn_secs: 30,
            keepalive_timeout_secs: 60,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSettings {
    /// Accounts synced at the same time.
    pub max_concurrent_accounts: usize,
    /// A complete listing that would mark more than this share of the account's live users
    /// deleted deletes nothing and is recorded as needing attention.
    pub max_delete_fraction: f64,
    /// Attempts to commit one page when the database fails with a retryable error.
    pub db_max_attempts: u32,
    /// `auto` (bars on a terminal, log lines otherwise), `bars`, `log`, `off`.
    pub progress: ProgressMode,
    /// Seconds between plain progress log lines when output is not a terminal.
    pub progress_interval_secs: u64,
    /// On SIGTERM/SIGINT, how long `run` waits for pages in flight before exiting anyway.
    pub shutdown_grace_secs: u64,
    /// Single-user GETs one run of a hydrating account may spend; the rest of its queue waits
    /// for the next run.
    pub hydrate_max_per_run: u32,
    /// How long a batch of fewer than four pages waits for the next page before it is
    /// written (fewer, larger transactions); 0 writes whatever has arrived.
    pub batch_fill_ms: u64,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            max_concurrent_accounts: 10,
            max_delete_fraction: 0.5,
            db_max_attempts: 5,
            progress: ProgressMode::Auto,
            progress_interval_secs: 10,
            shutdown_grace_secs: 30,
            hydrate_max_per_run: 1000,
            batch_fill_ms: 250,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum ProgressMode {
    Auto,
    Bars,
    Log,
    Off,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    pub format: LogFormat,
    /// Used when `RUST_LOG` is not set.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "&'static str")]
pub enum LogFormat {
    Pretty,
    Json,
}

impl From<LogFormat> for &'static str {
    fn from(f: LogFormat) -> Self {
        match f {
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
        }
    }
}

impl From<ProgressMode> for &'static str {
    fn from(m: ProgressMode) -> Self {
        match m {
            ProgressMode::Auto => "auto",
            ProgressMode::Bars => "bars",
            ProgressMode::Log => "log",
            ProgressMode::Off => "off",
        }
    }
}

impl TryFrom<String> for LogFormat {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "pretty" => Ok(LogFormat::Pretty),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("must be one of pretty, json (got `{s}`)")),
        }
    }
}

impl TryFrom<String> for ProgressMode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "auto" => Ok(ProgressMode::Auto),
            "bars" => Ok(ProgressMode::Bars),
            "log" => Ok(ProgressMode::Log),
            "off" => Ok(ProgressMode::Off),
            _ => Err(format!("must be one of auto, bars, log, off (got `{s}`)")),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountSettings {
    pub integrated_account_id: Uuid,
    #[serde(default)]
    pub label: Option<String>,
    /// Passed to the vendor as `remote_query[key]=value`.
    #[serde(default)]
    pub remote_query: BTreeMap<String, String>,
    /// Sends `truto_ignore_remote_data=true`: `remote_data` stays NULL, pages get smaller.
    #[serde(default)]
    pub ignore_remote_data: bool,
    /// Sent as `truto_exclude_fields[]=...`.
    #[serde(default)]
    pub exclude_fields: Vec<String>,
    /// Overrides `sync.max_delete_fraction` for this account.
    #[serde(default)]
    pub max_delete_fraction: Option<f64>,
    /// Overrides `[schedule]` keys for this account.
    #[serde(default)]
    pub schedule: Option<AccountSchedule>,
    /// After each listing, fetch the full object (`GET /unified/lms/users/{id}`) of users that
    /// are new or whose listed data changed, and merge it into the row.
    #[serde(default)]
    pub hydrate: bool,
    /// Overrides `sync.hydrate_max_per_run` for this account.
    #[serde(default)]
    pub hydrate_max_per_run: Option<u32>,
}

impl AccountSettings {
    pub fn new(id: Uuid) -> Self {
        Self {
            integrated_account_id: id,
            label: None,
            remote_query: BTreeMap::new(),
            ignore_remote_data: false,
            exclude_fields: Vec::new(),
            max_delete_fraction: None,
            schedule: None,
            hydrate: false,
            hydrate_max_per_run: None,
        }
    }

    /// The label when given, else the id: what logs and summaries call the account.
    pub fn display_name(&self) -> String {
        match &self.label {
            Some(l) if !l.is_empty() => l.clone(),
            _ => self.integrated_account_id.to_string(),
        }
    }
}

impl TrutoSettings {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }
}

impl Settings {
    pub fn account(&self, id: Uuid) -> Option<&AccountSettings> {
        self.accounts.iter().find(|a| a.integrated_account_id == id)
    }

    /// The settings of a discovered account without an `[[accounts]]` entry: its tenant's
    /// `[[tenants]]` entry when there is one, else `[account_defaults]`; and which of the two.
    pub fn discovered_account(
        &self,
        id: Uuid,
        tenant: Option<&str>,
    ) -> (AccountSettings, SettingsFrom) {
        match tenant.and_then(|t| self.tenants.iter().find(|e| e.tenant_id == t)) {
            Some(entry) => (entry.keys().for_account(id), SettingsFrom::Tenant),
            None => (
                self.account_defaults.for_account(id),
                SettingsFrom::AccountDefaults,
            ),
        }
    }

    /// The entries whose accounts mirror what `[account_defaults]` keeps out of the mirror
    /// (its `exclude_fields`, its `ignore_remote_data`), each in words. Entries are not merged
    /// with the defaults, so an entry written for another key (a tenant's hourly schedule)
    /// brings back the fields the defaults exclude, perhaps for privacy, unless it repeats
    /// them: `config` notes it and `check` warns, since it may also be meant.
    pub fn exclusions_dropped(&self) -> Vec<String> {
        if !self.discovery.enabled {
            return Vec::new();
        }
        let d = &self.account_defaults;
        let dropped = |ignore_remote_data: bool, exclude_fields: &[String]| {
            let mut out: Vec<String> = d
                .exclude_fields
                .iter()
                .filter(|f| !exclude_fields.contains(f))
                .map(|f| format!("{f} (exclude_fields)"))
                .collect();
            if d.ignore_remote_data && !ignore_remote_data {
                out.push("remote_data (ignore_remote_data)".into());
            }
            out
        };
        let tenants = self.tenants.iter().map(|t| {
            (
                format!("[[tenants]] tenant_id = {:?}", t.tenant_id),
                dropped(t.ignore_remote_data, &t.exclude_fields),
            )
        });
        let accounts = self.accounts.iter().map(|a| {
            (
                format!(
                    "[[accounts]] integrated_account_id = \"{}\"",
                    a.integrated_account_id
                ),
                dropped(a.ignore_remote_data, &a.exclude_fields),
            )
        });
        tenants
            .chain(accounts)
            .filter(|(_, dropped)| !dropped.is_empty())
            .map(|(entry, dropped)| {
                format!(
                    "{entry} mirrors what [account_defaults] leaves out: {} (an entry takes \
                     none of [account_defaults]' keys; repeat them in it to keep them out)",
                    dropped.join(", ")
                )
            })
            .collect()
    }
}

/// Which part of the configuration an account's keys come from: the answer to "why does this
/// account run with these settings?" when `[[tenants]]` and `[account_defaults]` both apply to
/// discovered accounts.
/// In JSON, the configuration's table: `accounts`, `tenants`, `account_defaults`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum SettingsFrom {
    /// Its own `[[accounts]]` entry.
    #[serde(rename = "accounts")]
    Account,
    /// Its tenant's `[[tenants]]` entry.
    #[serde(rename = "tenants")]
    Tenant,
    /// `[account_defaults]`.
    #[default]
    #[serde(rename = "account_defaults")]
    AccountDefaults,
}

impl SettingsFrom {
    /// In words, for an account of `tenant`.
    pub fn words(self, tenant: Option<&str>) -> String {
        match self {
            SettingsFrom::Account => "its own [[accounts]] entry".into(),
            SettingsFrom::Tenant => format!(
                "the [[tenants]] entry of tenant_id = {:?}",
                tenant.unwrap_or_default()
            ),
            SettingsFrom::AccountDefaults => "[account_defaults]".into(),
        }
    }
}

#[cfg(test)]
mod redact_tests {
    use super::redact_credentials;

    #[test]
    fn passwords_in_urls_are_masked_and_the_rest_kept() {
        assert_eq!(
            redact_credentials("bad value \"postgres://u:s3cr@t@db:5432/x\" for key"),
            "bad value \"postgres://u:***@db:5432/x\" for key"
        );
        assert_eq!(redact_credentials("http://host/path"), "http://host/path");
        assert_eq!(
            redact_credentials("a://b@c d://e:f@g"),
            "a://b@c d://e:***@g"
        );
        assert_eq!(redact_credentials("no url"), "no url");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn an_entry_that_mirrors_what_the_defaults_exclude_is_named() {
        let mut s = Settings::default();
        s.discovery.enabled = true;
        s.account_defaults.exclude_fields = vec!["custom_fields".into(), "phones".into()];
        s.account_defaults.ignore_remote_data = true;
        s.tenants = vec![
            TenantSettings {
                tenant_id: "acme".into(),
                exclude_fields: vec!["phones".into()],
                ..Default::default()
            },
            TenantSettings {
                tenant_id: "globex".into(),
                exclude_fields: vec!["phones".into(), "custom_fields".into()],
                ignore_remote_data: true,
                ..Default::default()
            },
        ];
        let mut a = AccountSettings::new(Uuid::from_u128(1));
        a.ignore_remote_data = true;
        s.accounts = vec![a];
        assert_eq!(
            s.exclusions_dropped(),
            [
                "[[tenants]] tenant_id = \"acme\" mirrors what [account_defaults] leaves out: \
                 custom_fields (exclude_fields), remote_data (ignore_remote_data) (an entry \
                 takes none of [account_defaults]' keys; repeat them in it to keep them out)",
                "[[accounts]] integrated_account_id = \"00000000-0000-0000-0000-000000000001\" \
                 mirrors what [account_defaults] leaves out: custom_fields (exclude_fields), \
                 phones (exclude_fields) (an entry takes none of [account_defaults]' keys; \
                 repeat them in it to keep them out)",
            ]
        );
        // Without discovery, [account_defaults] applies to nothing.
        s.discovery.enabled = false;
        assert!(s.exclusions_dropped().is_empty());
    }

    fn load_toml(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut f = tempfile_in_target();
        f.1.write_all(text.as_bytes()).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let r = Settings::load_from(Some(&f.0), &env);
        let _ = std::fs::remove_file(&f.0);
        r
    }

    fn tempfile_in_target() -> (PathBuf, std::fs::File) {
        let p = std::env::temp_dir().join(format!("lms-sync-cfg-{}.toml", Uuid::new_v4()));
        let f = std::fs::File::create(&p).unwrap();
        (p, f)
    }

    const ACCT: &str =
        "[[accounts]]\nintegrated_account_id = \"0b5d7c4e-2f0a-4c8e-9a57-3f1e6d2c9b10\"\n";

    #[test]
    fn defaults_apply_when_keys_are_absent() {
        let s = load_toml(ACCT, &[]).unwrap();
        assert_eq!(s.truto.base_url, "https://api.truto.one");
        assert_eq!(s.truto.page_size, 100);
        assert_eq!(s.database.schema, "lms");
        assert_eq!(s.accounts.len(), 1);
    }

    #[test]
    fn retired_accounts_are_purged_only_when_purge_retired_after_is_set() {
        let s = load_toml(ACCT, &[]).unwrap();
        assert_eq!(s.discovery.purge_retired_after(), None);
        assert_eq!(s.server.secret_files_check_secs, 10);
        let on = "[discovery]\nenabled = true\npurge_retired_after = \"30d\"\n";
        let s = load_toml(on, &[]).unwrap();
        assert_eq!(
            s.discovery.purge_retired_after(),
            Some(Duration::from_secs(30 * 86_400))
        );
        // An empty value (an environment variable set to nothing) is off, not an error.
        let env = [("LMS_SYNC__DISCOVERY__PURGE_RETIRED_AFTER", "")];
        let s = load_toml("[discovery]\nenabled = true\n", &env).unwrap();
        assert_eq!(s.discovery.purge_retired_after(), None);
    }

    #[test]
    fn an_unknown_key_is_reported_where_it_was_written() {
        let e = load_toml(
            &format!("[server]\naccount_metric = \"one_replica\"\n{ACCT}"),
            &[],
        )
        .unwrap_err()
        .0;
        assert!(
            e.starts_with("server.account_metric: unknown field `account_metric`"),
            "{e}"
        );
        assert!(e.contains("expected one of `listen`"), "{e}");
        assert!(e.contains(" (in config file "), "{e}");
        assert!(!e.contains("(env "), "{e}");
        let e = load_toml(ACCT, &[("LMS_SYNC__SERVER__LISTN", "127.0.0.1:1")])
            .unwrap_err()
            .0;
        assert!(e.starts_with("server.listn: unknown field `listn`"), "{e}");
        assert!(e.ends_with(" (from env LMS_SYNC__SERVER__LISTN)"), "{e}");
    }

    #[test]
    fn env_overrides_file_and_database_url_is_honoured() {
        let text = format!("[truto]\npage_size = 50\n{ACCT}");
        let s = load_toml(
            &text,
            &[
                ("LMS_SYNC__TRUTO__PAGE_SIZE", "25"),
                ("LMS_SYNC__TRUTO__BASE_URL", "http://127.0.0.1:1"),
                ("DATABASE_URL", "postgres://u@h/db"),
            ],
        )
        .unwrap();
        assert_eq!(s.truto.page_size, 25);
        assert_eq!(s.truto.base_url, "http://127.0.0.1:1");
        assert_eq!(s.database.url.unwrap().expose_secret(), "postgres://u@h/db");
    }

    #[test]
    fn lms_sync_database_url_wins_over_database_url() {
        let s = load_toml(
            ACCT,
            &[
                ("LMS_SYNC__DATABASE__URL", "postgres://a@h/one"),
                ("DATABASE_URL", "postgres://b@h/two"),
            ],
        )
        .unwrap();
        assert_eq!(
            s.database.url.unwrap().expose_secret(),
            "postgres://a@h/one"
        );
    }

    #[test]
    fn non_uuid_account_id_is_named() {
        let e = load_toml("[[accounts]]\nintegrated_account_id = \"nope\"\n", &[]).unwrap_err();
        assert!(
            e.to_string().contains("accounts[0].integrated_account_id"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_accounts_are_refused() {
        let e = load_toml(&format!("{ACCT}{ACCT}"), &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("accounts[1].integrated_account_id: duplicate"),
            "{e}"
        );
    }

    #[test]
    fn bad_schema_name_is_refused() {
        let e = load_toml(&format!("[database]\nschema = \"lms; drop\"\n{ACCT}"), &[]).unwrap_err();
        assert!(e.to_string().contains("database.schema"), "{e}");
        assert!(validate_schema_name("lms").is_ok());
        assert!(validate_schema_name("Lms").is_err());
        assert!(validate_schema_name("pg_x").is_err());
        assert!(validate_schema_name("1x").is_err());
    }

    #[test]
    fn a_batch_fill_wait_over_ten_seconds_is_refused() {
        let ok = load_toml(&format!("[sync]\nbatch_fill_ms = 10000\n{ACCT}"), &[]).unwrap();
        assert_eq!(ok.sync.batch_fill_ms, 10_000);
        let e = load_toml(&format!("[sync]\nbatch_fill_ms = 10001\n{ACCT}"), &[]).unwrap_err();
        assert!(e.to_string().contains("sync.batch_fill_ms"), "{e}");
        assert!(e.to_string().contains("at most 10000"), "{e}");
    }

    #[test]
    fn values_whose_arithmetic_would_break_are_refused_at_load_with_their_bound() {
        // Each of these used to load, then panic (or abort, or stall) at run time.
        for (text, key, says) in [
            (
                "[schedule]\nevery = \"1000000y\"\n",
                "schedule.every",
                "at most 365d",
            ),
            (
                "[schedule]\njitter = \"366d\"\n",
                "schedule.jitter",
                "at most 365d",
            ),
            (
                "[schedule]\nhealth_retry_max = \"1000000y\"\n",
                "schedule.health_retry_max",
                "at most 365d",
            ),
            (
                "[schedule]\nretry_initial = \"400d\"\n",
                "schedule.retry_initial",
                "at most 365d",
            ),
            (
                "[discovery]\ninterval = \"1000000y\"\n",
                "discovery.interval",
                "at most 365d",
            ),
            (
                "[discovery]\nretry_initial = \"500ms\"\n",
                "discovery.retry_initial",
                "at least 1s",
            ),
            (
                "[discovery]\nretry_initial = \"366d\"\n",
                "discovery.retry_initial",
                "at most 365d",
            ),
            (
                "[discovery]\nenabled = true\npurge_retired_after = \"30m\"\n",
                "discovery.purge_retired_after",
                "at least 1h",
            ),
            (
                "[discovery]\nenabled = true\npurge_retired_after = \"3651d\"\n",
                "discovery.purge_retired_after",
                "at most 3650d",
            ),
            (
                "[discovery]\nenabled = true\npurge_retired_after = \"soon\"\n",
                "discovery.purge_retired_after",
                "not a duration",
            ),
            (
                "[discovery]\npurge_retired_after = \"30d\"\n",
                "discovery.purge_retired_after",
                "needs discovery.enabled = true",
            ),
            (
                "[server]\nsecret_files_check_secs = 86401\n",
                "server.secret_files_check_secs",
                "at most 86400",
            ),
            (
                "[server]\nconfig_file_check_secs = 86401\n",
                "server.config_file_check_secs",
                "at most 86400",
            ),
            (
                "[database]\nconnect_timeout_secs = 9223372036854775807\n",
                "database.connect_timeout_secs",
                "at most 86400",
            ),
            (
                "[database]\nconnect_timeout_secs = 0\n",
                "database.connect_timeout_secs",
                "at least 1",
            ),
            (
                "[database]\nmigration_lock_timeout_secs = 0\n",
                "database.migration_lock_timeout_secs",
                "at least 1",
            ),
            (
                "[database]\nmigration_lock_timeout_secs = 86401\n",
                "database.migration_lock_timeout_secs",
                "at most 86400",
            ),
            (
                "[database]\nlock_wait_warn_secs = 0\n",
                "database.lock_wait_warn_secs",
                "at least 1",
            ),
            (
                "[database]\nkeepalive_timeout_secs = 2\n",
                "database.keepalive_timeout_secs",
                "at least 3",
            ),
            (
                "[database]\nmax_connections = 4294967295\n",
                "database.max_connections",
                "at most 10000",
            ),
            (
                "[rate_budget]\nper_token = 9223372036854775807\n",
                "rate_budget.per_token",
                "at most 1000000",
            ),
            (
                "[rate_budget]\nwindow_secs = 4294967296\n",
                "rate_budget.window_secs",
                "at most 86400",
            ),
            (
                "[truto]\nrequest_timeout_secs = 86401\n",
                "truto.request_timeout_secs",
                "at most 86400",
            ),
            (
                "[sync]\nshutdown_grace_secs = 86401\n",
                "sync.shutdown_grace_secs",
                "at most 86400",
            ),
        ] {
            let e = load_toml(&format!("{text}{ACCT}"), &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains(says), "{text}: {e}");
        }
        // The bounds themselves load.
        let s = load_toml(
            &format!(
                "[schedule]\nevery = \"365d\"\njitter = \"365d\"\n[rate_budget]\nwindow_secs = 86400\n\
                 per_token = 1000000\n[database]\nmax_connections = 10000\n{ACCT}"
            ),
            &[],
        )
        .unwrap();
        assert_eq!(s.rate_budget.window_secs, 86_400);
        // As do the shipped defaults (their values are within every bound).
        assert!(load_toml(ACCT, &[]).is_ok());
    }

    #[test]
    fn bad_toml_says_so() {
        let e = load_toml("[truto\n", &[]).unwrap_err();
        assert!(e.to_string().contains("not valid TOML"), "{e}");
    }

    #[test]
    fn files_far_larger_than_a_config_or_a_secret_are_refused_not_read_whole() {
        // 17 MiB of blank lines: valid TOML, and an empty config, were it read.
        let blank = "\n".repeat(17 << 20);
        let e = load_toml(&blank, &[]).unwrap_err().to_string();
        assert!(
            e.contains("cannot read config file") && e.contains("larger than 16384 KiB"),
            "{e}"
        );
        // A token file of 65 KiB (a log file named by mistake, say).
        let (path, mut f) = tempfile_in_target();
        f.write_all(&b"x".repeat(65 << 10)).unwrap();
        let e = load::secret(
            "LMS_SYNC_TEST_UNSET_TOKEN",
            "truto.api_token_file",
            Some(&path),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("truto.api_token_file") && e.contains("larger than 64 KiB"),
            "{e}"
        );
        // Within the limits both load.
        f.set_len(64 << 10).unwrap();
        assert!(load::secret(
            "LMS_SYNC_TEST_UNSET_TOKEN",
            "truto.api_token_file",
            Some(&path)
        )
        .unwrap()
        .is_some());
        let _ = std::fs::remove_file(&path);
        assert!(load_toml(&format!("{}{ACCT}", "\n".repeat(1 << 20)), &[]).is_ok());
    }

    #[test]
    fn missing_file_says_so() {
        let e = Settings::load_from(Some(Path::new("/nonexistent/x.toml")), &[]).unwrap_err();
        assert!(e.to_string().contains("cannot read config file"), "{e}");
    }

    #[test]
    fn no_accounts_is_an_error_only_where_accounts_are_needed() {
        let s = load_toml("", &[]).unwrap();
        assert!(s
            .require_accounts()
            .unwrap_err()
            .to_string()
            .contains("accounts"));
    }

    #[test]
    fn schedules_resolve_with_account_overrides_and_bad_ones_name_their_key() {
        use crate::schedule::Cadence;
        let text = format!(
            "[schedule]\nat = \"02:30\"\ntimezone = \"Europe/Berlin\"\n{ACCT}[accounts.schedule]\nevery = \"90m\"\n\
             [[accounts]]\nintegrated_account_id = \"1b5d7c4e-2f0a-4c8e-9a57-3f1e6d2c9b10\"\n"
        );
        let s = load_toml(&text, &[]).unwrap();
        assert_eq!(
            s.schedule_for(&s.accounts[0]).cadence,
            Cadence::Every(Duration::from_secs(5400))
        );
        assert!(matches!(
            s.schedule_for(&s.accounts[1]).cadence,
            Cadence::DailyAt { .. }
        ));
        let d = load_toml(ACCT, &[]).unwrap();
        assert_eq!(
            d.schedule_for(&d.accounts[0]).cadence,
            Cadence::Every(Duration::from_secs(6 * 3600))
        );
        for (bad, key) in [
            (
                "[schedule]\nevery = \"6h\"\nat = \"01:00\"\n",
                "schedule.at",
            ),
            ("[schedule]\nat = \"25:00\"\n", "schedule.at"),
            ("[schedule]\nevery = \"soon\"\n", "schedule.every"),
            (
                "[schedule]\nat = \"01:00\"\ntimezone = \"Mars/Base\"\n",
                "schedule.timezone",
            ),
            ("[schedule]\njitter = \"-1s\"\n", "schedule.jitter"),
            ("[server]\nlisten = \"localhost\"\n", "server.listen"),
            (
                "[rate_budget]\nper_account = 0\n",
                "rate_budget.per_account",
            ),
        ] {
            let e = load_toml(&format!("{bad}{ACCT}"), &[])
                .unwrap_err()
                .to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
        let e = load_toml(
            &format!("{ACCT}[accounts.schedule]\ntimezone = \"Nowhere\"\n"),
            &[],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("accounts[0].schedule.timezone"),
            "{e}"
        );
    }

    #[test]
    fn env_var_names_follow_the_key() {
        assert_eq!(env_name("truto.base_url"), "LMS_SYNC__TRUTO__BASE_URL");
        assert_eq!(env_name("accounts[0].label"), "LMS_SYNC__ACCOUNTS__LABEL");
    }

    #[test]
    fn a_failed_listing_is_retried_sooner_than_an_interval_and_later_with_each_failure() {
        let d = |interval: &str, retry: &str| DiscoverySettings {
            interval: interval.into(),
            retry_initial: retry.into(),
            ..Default::default()
        };
        let secs = |s: u64| Duration::from_secs(s);
        let hourly = d("1h", "1m");
        assert_eq!(hourly.next_listing_after(0), secs(3600), "none failed");
        assert_eq!(hourly.next_listing_after(1), secs(60));
        assert_eq!(hourly.next_listing_after(2), secs(120));
        assert_eq!(hourly.next_listing_after(6), secs(1920));
        assert_eq!(
            hourly.next_listing_after(7),
            secs(3600),
            "never past the interval"
        );
        assert_eq!(hourly.next_listing_after(u32::MAX), secs(3600));
        assert_eq!(d("5m", "10m").next_listing_after(1), secs(300));
        let defaults = DiscoverySettings::default();
        assert_eq!(defaults.next_listing_after(1), secs(60));
        assert_eq!(defaults.next_listing_after(4), secs(300));
    }
}
