//! The PostgreSQL store: the only part that holds SQL. It owns the pool and the migrations;
//! each subject has a file: leases (`lease`), lock waits (`locks`), runs and their state
//! (`runs`), a batch of pages in one transaction (`pages`), users and their children (`users`),
//! COPY (`copy`), deletions (`sweep`), change history (`history`), hydration (`hydration`), and
//! what the scheduler and `status` read (`status`). It never imports `source` or `sync`: it is
//! told what to write.
//!
//! Queries are runtime-checked (`sqlx::query`, not `query!`): the schema name is chosen at run
//! time, and every statement here runs in the integration tests. Values always travel as bind
//! parameters; the only identifier ever formatted into SQL is the validated schema name.

mod accounts;
mod budget;
mod copy;
mod history;
mod hydration;
mod lease;
mod locks;
mod maintenance;
mod pages;
mod runs;
mod schema;
mod status;
mod sweep;
mod transport;
mod users;

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, PgPool};

pub use accounts::{
    other_environment, retire_guard, AccountAction, AccountRow, Acting, ActionGroup, Discovered,
    DiscoveryApplied, DiscoveryState, Environments, ListedEnvironment, Paused, PurgeSummary,
    Purged, PurgedBy, RetirePolicy, Steer, WebhookDeliveries, REASON_MAX_CHARS,
};
pub use budget::{
    agreed_limit, decide as decide_share, BudgetView, Negotiated, Reach, Runs, ShareHolder,
    ShareView, FENCE_MARGIN,
};
pub use copy::CopyRows;
pub use lease::{Handover, Lease};
pub use locks::SessionLockWait;
pub use pages::{Gate, PageResult, PageWrite};
pub use runs::{RunEnd, RunStart, RunView};
pub use schema::{ConnectionRoom, LockWait, SchemaState, MIGRATOR};
pub use status::{AccountMetrics, StatusRow};
pub use sweep::Vanished;
pub use transport::{DatabaseConnection, Transport};

use crate::config::{validate_schema_name, DatabaseSettings, DbTls};
use crate::domain::{Health, Outcome};

type Ts = chrono::DateTime<chrono::Utc>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {}{}", crate::text::error_chain(.0), advice(.0))]
    Db(sqlx::Error),
    #[error("migration failed: {}", crate::text::error_chain(.0))]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid database url: {0}")]
    Url(String),
    /// The run's position in the database is not where this process left it.
    #[error("the database no longer holds this run's last committed page (it lost committed transactions: a failover to a standby that had not received them, a crash with synchronous_commit=off, a restore; or another process took the account over); the run stopped, and the next run resumes from the database's cursor")]
    Diverged,
    /// The database has migrations this binary does not know and that are not marked
    /// compatible with it: a newer version migrated it.
    #[error("the database schema was migrated by a newer lms-sync (migrations {}), which this version cannot run against; run the newer version, or restore a backup taken before the upgrade", .0.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "))]
    Incompatible(Vec<i64>),
    /// Migrations are pending and this process may not apply them.
    #[error("the database schema is not up to date (pending migrations {}); run `lms-sync migrate` with a role that owns the schema", .0.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "))]
    NotMigrated(Vec<i64>),
    /// `accounts purge` of an account that is not retired.
    #[error("account {0} is not retired; only a retired account's data can be purged (it is retired when Truto no longer lists it)")]
    NotRetired(uuid::Uuid),
    /// `accounts purge` of an account the registry does not hold.
    #[error("account {0} is not in the registry (neither configured nor discovered, or already purged: see account_purges)")]
    NoSuchAccount(uuid::Uuid),
    /// A purge of a protected account (`accounts protect`).
    #[error("account {account} is protected (since {}): its data is never purged; `lms-sync accounts unprotect` lifts that", .since.format("%Y-%m-%d %H:%M UTC"))]
    Protected {
        account: uuid::Uuid,
        since: chrono::DateTime<chrono::Utc>,
    },
    /// A purge of an account whose lease a process holds (a run of it under way).
    #[error("account {0} is being synced (a process holds its lease); its data was not purged, try again once the run has ended")]
    PurgeBusy(uuid::Uuid),
    /// A state column holds text this version does not know (written by hand, or by a newer
    /// version).
    #[error("the database holds an unknown {0} {1:?}")]
    Unknown(&'static str, String),
    /// A batch written ahead was rolled back because the batch before it did not commit.
    #[error("rolled back: the batch before it did not commit")]
    PreviousFailed,
    /// No connection within `database.connect_timeout_secs`, with why ([`Store::explain`]).
    #[error("no database connection within {waited_secs} s: {why}")]
    NoConnection { waited_secs: u64, why: NoConnection },
    /// A migration waited `database.migration_lock_timeout_secs` for a lock and gave up.
    #[error("{0}")]
    MigrationLocked(LockWait),
    /// The database accepts no writes (see [`Store::refuses_writes`]).
    #[error("the database accepts no writes: {0}")]
    ReadOnly(String),
    /// A discovery listing of another Truto environment's accounts than the one the registry
    /// follows (`discovery_state.environment_id`): nothing of it was applied.
    #[error("Truto lists the integrated accounts of environment {listed}, but this mirror follows environment {follows}: is the API token one of another environment (a staging token, a rotation gone wrong)? Nothing was changed, and no run starts with that token (each would answer 404) until the right one is back; to follow {listed} from now on instead: lms-sync accounts discover --adopt-environment (with --retire-missing to retire the accounts of {follows} at once)")]
    OtherEnvironment { follows: String, listed: String },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_read_only(&e) {
            read_only::seen();
        } else if is_lost(&e) {
            read_only::lost();
        }
        StoreError::Db(e)
    }
}

/// Whether the server could not be reached or ended the session (a host down, a restart, a
/// failover): with several hosts in database.url, another may be the primary now.
fn is_lost(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P0")),
        _ => false,
    }
}

/// `write`, once more if its session turned out read-only: sessions opened while the database
/// took no writes stay so after it takes them again, and the refusal has the pool replace them
/// (see `read_only`). For writes nothing else tries again (a webhook delivery's record, a
/// retirement); runs retry every retryable error, and `steer`, `account_event` and
/// `apply_discovery` make their transactions again after one (`thrice`).
pub async fn retry_read_only<T, F>(write: impl Fn() -> F) -> Result<T, StoreError>
where
    F: std::future::Future<Output = Result<T, StoreError>>,
{
    match write().await {
        Err(e) if e.is_read_only() => write().await,
        done => done,
    }
}

/// `transaction`, made again after a retryable error (a deadlock, a lost connection, a session
/// left read-only: [`StoreError::is_retryable`]), three times in all. For a change that is the
/// same however often it is made, and that nothing else would make again soon.
async fn thrice<T, F>(transaction: impl Fn() -> F) -> Result<T, StoreError>
where
    F: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 1;
    loop {
        match transaction().await {
            Err(e) if e.is_retryable() && attempt < 3 => attempt += 1,
            done => return done,
        }
    }
}

/// Whether the server refused a write because the session is read-only (SQLSTATE 25006): a
/// standby, `default_transaction_read_only`, or the old primary of a failover.
fn is_read_only(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("25006"))
}

/// Connections made to a server while it accepted no writes stay read-only when it accepts
/// them again, or when the address they were made to leads to another server: a failover's
/// old primary, demoted, keeps the sessions made to it while DNS (or a proxy) still named it,
/// and a session opened under `default_transaction_read_only` keeps it after the setting is
/// lifted. A pool would hand them out for as long as they live (without end, in a busy pool).
/// So once a statement is refused for that, every pooled connection opened before it is closed
/// as it is next taken from the pool, and a new one made in its place.
///
/// Process-wide, not the store's: errors become [`StoreError`]s through `?` everywhere, with
/// no store at hand, and a process has one database (several stores in one process, as in
/// tests, at worst reconnect once more than they need).
mod read_only {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    /// When a statement was last refused, in milliseconds since [`epoch`] plus one (0: never).
    static SEEN: AtomicU64 = AtomicU64::new(0);
    /// When a connection was last lost or refused, the same way.
    static LOST: AtomicU64 = AtomicU64::new(0);
    /// When the database was last found to take writes again after refusing them, the same
    /// way.
    static CLEARED: AtomicU64 = AtomicU64::new(0);

    fn epoch() -> Instant {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }

    /// Now, as [`last`] counts.
    pub(super) fn now_ms() -> u64 {
        epoch().elapsed().as_millis() as u64 + 1
    }

    /// Notes that a statement was refused now.
    pub(super) fn seen() {
        SEEN.fetch_max(now_ms(), Ordering::Relaxed);
    }

    /// When a statement was last refused, as a number that grows with time (`None`: never).
    pub(super) fn last() -> Option<u64> {
        Some(SEEN.load(Ordering::Relaxed)).filter(|&ms| ms > 0)
    }

    /// Notes that a connection was lost or refused now.
    pub(super) fn lost() {
        LOST.fetch_max(now_ms(), Ordering::Relaxed);
    }

    /// When anything was last refused or lost (see [`last`]).
    pub(super) fn last_trouble() -> Option<u64> {
        last().max(Some(LOST.load(Ordering::Relaxed)).filter(|&ms| ms > 0))
    }

    /// Notes that the database takes writes again now, after refusing them.
    pub(super) fn cleared() {
        CLEARED.fetch_max(now_ms(), Ordering::Relaxed);
    }

    /// Whether a pooled connection `age` old was opened after the last refusal, and after the
    /// database was last found to take writes again: a session opened while it took none may
    /// stay read-only for its whole life, since a database's or a role's
    /// `default_transaction_read_only` applies at a session's start.
    pub(super) fn opened_since(age: Duration) -> bool {
        let since = SEEN
            .load(Ordering::Relaxed)
            .max(CLEARED.load(Ordering::Relaxed));
        opened_after(now_ms(), age.as_millis() as u64, since)
    }

    /// How much later than it was a connection's opening may be reckoned: the pool measures a
    /// connection's age a moment before [`opened_since`] reads the clock (longer on a busy
    /// machine), and both round down to the millisecond.
    const SLACK_MS: u64 = 50;

    /// Whether a connection `age_ms` old at `now_ms` was opened after `since` (0: never), on
    /// the safe side: one opened up to [`SLACK_MS`] after it counts as opened before, and is
    /// replaced (a reconnection), so that one opened before it is never kept.
    pub(super) fn opened_after(now_ms: u64, age_ms: u64, since: u64) -> bool {
        since == 0 || now_ms.saturating_sub(age_ms) > since + SLACK_MS
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_connection_is_kept_only_when_surely_opened_after_the_mark() {
            assert!(opened_after(10, 10, 0), "no mark: kept");
            // Opened at 1,000, the mark at 1,001: replaced, even reckoned a little late.
            assert!(!opened_after(1_500, 500, 1_001));
            assert!(!opened_after(1_530, 500, 1_001));
            // Opened well after the mark: kept.
            assert!(opened_after(2_000, 500, 1_001));
            // Within the slack after it: replaced, to be safe.
            assert!(!opened_after(1_040, 0, 1_001));
        }
    }
}

/// Why a pool had no connection to give.
#[derive(Debug, Clone, PartialEq)]
pub enum NoConnection {
    /// Every pooled connection was in use (the pool's size, `database.max_connections`).
    PoolBusy(u32),
    /// The server has no connection slot left (SQLSTATE 53300, with its message).
    SlotsTaken(String),
    /// The server refused a connection otherwise, or did not answer.
    Refused(String),
}

impl std::fmt::Display for NoConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoConnection::PoolBusy(n) => write!(
                f,
                "all {n} of this process's pooled connections (database.max_connections) were in use; raise database.max_connections or lower sync.max_concurrent_accounts{KEPT}"
            ),
            NoConnection::SlotsTaken(why) => {
                write!(f, "PostgreSQL refuses new connections ({why}): {TOO_MANY}")
            }
            NoConnection::Refused(why) => write!(f, "connecting fails: {why}"),
        }
    }
}

/// The longest [`Store::explain`] waits for its own connection attempt: a server that answers
/// at all does within it, and one that does not is not waited for a second
/// `database.connect_timeout_secs`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a failed run keeps.
const KEPT: &str = "; what was committed is kept, and the next run resumes where this one stopped";

/// What to do when the server has no connection slot left (SQLSTATE 53300).
const TOO_MANY: &str = "its connection slots (max_connections, or a role's or database's CONNECTION LIMIT) are all taken. Each lms-sync process opens up to database.max_connections pooled connections, one more per account it syncs at once (sync.max_concurrent_accounts) and one each for the request budget and discovery: lower those, run fewer replicas, or raise the server's limit";

/// What to do about the database errors an operator can fix, by SQLSTATE (none for others).
/// Each of them fails the run without losing anything committed: the next run resumes.
fn advice(e: &sqlx::Error) -> std::borrow::Cow<'static, str> {
    let db = match e {
        sqlx::Error::Database(db) => db,
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) => return tls_advice(e).into(),
        _ => return "".into(),
    };
    match db.code().as_deref() {
        // pg_hba.conf has only `hostssl` lines for this client.
        Some("28000") if db.message().ends_with("no encryption") => " (the server accepts only encrypted connections from this host: set sslmode=verify-full in database.url, with sslrootcert naming the file of the CA that signed the server's certificate)".into(),
        Some("53300") => format!(" (PostgreSQL has no connection slot left: {TOO_MANY})").into(),
        Some("53100") => format!(" (PostgreSQL is out of disk space: free some or grow its volume{KEPT})").into(),
        Some("53200") => " (PostgreSQL is out of memory)".into(),
        Some("25006") => format!(" (the database accepts no writes: a standby, a failover's old primary, or default_transaction_read_only is on; tried again on new connections, and should it go on, point database.url at the primary or turn the setting off{KEPT})").into(),
        // lms-sync sets neither timeout: these are the role's or the database's (or an
        // operator's cancel), and a retry behind the same lock would end the same way.
        Some("57014") => format!(" (PostgreSQL cancelled the statement: the statement_timeout set for this role or database ran out, time spent waiting for another session's lock included, or an operator cancelled it{KEPT})").into(),
        Some("42501") => format!(" (this role lacks a privilege lms-sync needs: grant what docs/schema.md, Roles: least privilege, lists, again after an upgrade that added tables; migrations need the schema's owner: run lms-sync migrate as it{KEPT})").into(),
        Some("55P03") => format!(" (another session held a lock this statement needed for longer than the lock_timeout set for this role or database{KEPT})").into(),
        _ => "".into(),
    }
}

/// What to do about a connection's TLS failing: the server's certificate refused (by
/// rustls, inside sqlx's I/O error), or no TLS where database.url asks for it.
fn tls_advice(e: &sqlx::Error) -> &'static str {
    use rustls::CertificateError as C;
    if let sqlx::Error::Tls(t) = e {
        return if t.to_string().contains("server does not support TLS") {
            " (the server has TLS turned off (ssl = off in postgresql.conf) while database.url asks for it with sslmode=require, verify-ca or verify-full: turn it on in the server)"
        } else {
            ""
        };
    }
    let sqlx::Error::Io(io) = e else { return "" };
    let Some(cert) = crate::text::refused_certificate(io) else {
        return "";
    };
    match cert {
        C::UnknownIssuer | C::BadSignature | C::UnhandledCriticalExtension => " (the server's certificate is not signed by a certificate authority lms-sync trusts: set sslrootcert in database.url to the file of the CA that signed it (for a managed PostgreSQL, the provider's CA bundle); without sslrootcert only the public web CAs built into lms-sync are trusted)",
        C::NotValidForName | C::NotValidForNameContext { .. } => " (the server's certificate does not name the host that database.url connects to: connect by a name the certificate was issued for, or use sslmode=verify-ca, which checks who signed it but not the name)",
        C::Expired | C::ExpiredContext { .. } | C::NotValidYet | C::NotValidYetContext { .. } => " (the server's certificate is outside its validity period: renew it, or check this host's clock)",
        C::Revoked => " (the server's certificate has been revoked)",
        _ => " (the server's certificate was refused)",
    }
}

/// An outcome as stored in SQL: the one place where the store reads the text back.
fn outcome(text: &str) -> Result<Outcome, StoreError> {
    Outcome::parse(text).ok_or_else(|| StoreError::Unknown("outcome", text.to_string()))
}

/// A health as stored in SQL (see [`outcome`]).
fn health(text: &str) -> Result<Health, StoreError> {
    Health::parse(text).ok_or_else(|| StoreError::Unknown("health", text.to_string()))
}

impl StoreError {
    /// Whether the server refused a write because the session is read-only: tried again, it
    /// goes to a new session (see `read_only`), which a database taking writes again accepts.
    pub fn is_read_only(&self) -> bool {
        matches!(self, StoreError::Db(e) if is_read_only(e))
    }

    /// Serialization failures, deadlocks, and lost or refused connections are worth another try
    /// of the whole transaction; constraint violations and bad SQL are not.
    pub fn is_retryable(&self) -> bool {
        let e = match self {
            StoreError::Db(e) => e,
            StoreError::NoConnection { .. } => return true,
            _ => return false,
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                let c = c.as_ref();
                c == "40001" // serialization_failure
                    || c == "40P01" // deadlock_detected
                    || c.starts_with("08") // connection exceptions
                    || c == "57P01" // admin_shutdown
                    || c == "57P02" // crash_shutdown
                    || c == "57P03" // cannot_connect_now
                    || c == "53300" // too_many_connections
                    // read_only_sql_transaction: mid-failover, the old primary or a standby
                    // answers at the primary's address for a while; retried on new
                    // connections (see `read_only`).
                    || c == "25006"
            }),
            _ => false,
        }
    }
}

#[derive(Clone)]
pub struct Store {
    /// Its connect options are every connection's, the store's own outside the pool too
    /// ([`Store::options`]); [`Store::set_url`] replaces them.
    pool: PgPool,
    /// The URL the connect options were made from, to tell a rotated one from the same.
    url: std::sync::Arc<std::sync::Mutex<SecretString>>,
    keepalive_secs: u64,
    schema: String,
    /// `database.migration_lock_timeout_secs`.
    migration_lock_timeout_secs: u64,
    /// Users inserted through this store (all accounts), for [`Store::note_inserted`].
    inserted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// database.url's hosts, one for a URL naming one; the pool connects to the one
    /// [`Store::choose_host`] chose.
    hosts: std::sync::Arc<std::sync::Mutex<Hosts>>,
}

/// The hosts of database.url (see [`crate::config::split_hosts`]) and which the pool uses.
#[derive(Clone)]
struct Hosts {
    each: Vec<Host>,
    /// The index of the one in use.
    current: usize,
    /// When they were last looked at (as `read_only::now` counts), 0 for never: trouble
    /// after that is a reason to look again.
    looked_at: u64,
    /// What the last look found of the hosts before the one in use ("name: why not").
    passed_over: Vec<String>,
}

#[derive(Clone)]
struct Host {
    /// As said in logs and by `check`: the host and port, or the socket's directory.
    name: String,
    options: PgConnectOptions,
}

impl Hosts {
    /// The connect options for each host of `url`.
    fn of(url: &SecretString, schema: &str, keepalive_secs: u64) -> Result<Hosts, StoreError> {
        let urls = crate::config::split_hosts(url.expose_secret())
            .map_err(|m| StoreError::Url(format!("database.url: {m}")))?;
        let each = urls
            .into_iter()
            .map(|one| {
                let options = connect_options(&SecretString::from(one), schema, keepalive_secs)?;
                let name = match options.get_socket() {
                    Some(dir) => dir.display().to_string(),
                    None => format!("{}:{}", options.get_host(), options.get_port()),
                };
                Ok(Host { name, options })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Hosts {
            each,
            current: 0,
            looked_at: 0,
            passed_over: Vec::new(),
        })
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("schema", &self.schema)
            .finish()
    }
}

/// How lms-sync's connections name themselves in `pg_stat_activity`: the pool's, each held
/// account lease's (one per account syncing), the shared request budget's (one per process)
/// and, while migrations are applied, the migrating one's.
/// Every one starts with `lms-sync`, so `application_name LIKE 'lms-sync%'` counts them all.
pub const POOL_APPLICATION_NAME: &str = "lms-sync";
/// A session of its own whose end is seen the moment it comes, not at its next query: a
/// listener on no channel that never reconnects by itself. Queries run on it as on a
/// connection (`&mut *watched`).
pub struct Watched(PgListener);

impl Watched {
    /// Resolves when the connection has ended (the database restarted, its backend was
    /// terminated, the network said so), with the reason. Cancel-safe: the owner waits on it
    /// between its queries, beside its timers.
    pub async fn ended(&mut self) -> String {
        loop {
            match self.0.try_recv().await {
                // Notifications are not listened for; nothing else comes between queries.
                Ok(Some(_)) => continue,
                Ok(None) => return "the connection ended".to_string(),
                Err(e) => return e.to_string(),
            }
        }
    }
}

impl std::ops::Deref for Watched {
    type Target = PgListener;
    fn deref(&self) -> &PgListener {
        &self.0
    }
}

impl std::ops::DerefMut for Watched {
    fn deref_mut(&mut self) -> &mut PgListener {
        &mut self.0
    }
}

pub const LEASE_APPLICATION_NAME: &str = "lms-sync lease";
pub const MIGRATE_APPLICATION_NAME: &str = "lms-sync migrate";
pub const BUDGET_APPLICATION_NAME: &str = "lms-sync budget";

/// How often a session's statement looks whether its client is still there. Without it a
/// statement of a killed process (say, a page's write waiting behind a DBA's lock) goes on until
/// it ends by itself, holding its transaction's row locks (which the replica taking the account
/// over then waits for) and a connection slot.
const CLIENT_CHECK_INTERVAL: &str = "5s";

/// The server's TCP keepalive settings for a session, so that it ends within about `secs` of
/// its process becoming unreachable (a node lost, a network cut: no FIN ever comes). The
/// leases and the budget share are held by sessions: with the operating system's defaults
/// (about 2 h 11 min) a lost replica's accounts and share would stay taken that long. Idle for
/// half of it, then three probes over the rest; unacknowledged data is given as long.
/// Ignored on a Unix-domain socket (no network between them).
fn keepalives(secs: u64) -> [(&'static str, String); 4] {
    let idle = (secs / 2).max(1);
    let interval = (secs.saturating_sub(idle) / 3).max(1);
    [
        ("tcp_keepalives_idle", idle.to_string()),
        ("tcp_keepalives_interval", interval.to_string()),
        ("tcp_keepalives_count", "3".to_string()),
        ("tcp_user_timeout", format!("{}", secs.saturating_mul(1000))),
    ]
}

/// Connect options for `url` with `search_path` set to `schema`, statements that end with the
/// process that sent them (`CLIENT_CHECK_INTERVAL`), and sessions the server ends within
/// about `keepalive_secs` once their process can no longer be reached (`keepalives`).
pub fn connect_options(
    url: &SecretString,
    schema: &str,
    keepalive_secs: u64,
) -> Result<PgConnectOptions, StoreError> {
    validate_schema_name(schema).map_err(StoreError::Url)?;
    let mut opts: PgConnectOptions = url
        .expose_secret()
        .parse()
        // sqlx's parse error can quote the URL; keep the password out of it.
        .map_err(|_| StoreError::Url("cannot parse database.url".into()))?;
    // libpq verifies the server's certificate against a CA file given with sslmode=require
    // (as verify-ca); sqlx would encrypt without checking it. An operator who names the CA
    // means it to be checked.
    let root_cert = DbTls::from_url(url.expose_secret()).and_then(|t| t.root_cert);
    if matches!(opts.get_ssl_mode(), PgSslMode::Require)
        && (root_cert.is_some() || std::env::var_os("PGSSLROOTCERT").is_some())
    {
        opts = opts.ssl_mode(PgSslMode::VerifyCa);
    }
    let mut options = vec![
        ("search_path", schema.to_string()),
        (
            "client_connection_check_interval",
            CLIENT_CHECK_INTERVAL.to_string(),
        ),
    ];
    options.extend(keepalives(keepalive_secs));
    Ok(opts
        .application_name(POOL_APPLICATION_NAME)
        .options(options)
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(5)))
}

impl Store {
    /// Connects (lazily: the first query opens the first connection).
    pub fn connect_lazy(url: &SecretString, db: &DatabaseSettings) -> Result<Store, StoreError> {
        let hosts = Hosts::of(url, &db.schema, db.keepalive_timeout_secs)?;
        let opts = hosts.each[0].options.clone();
        let pool = PgPoolOptions::new()
            .max_connections(db.max_connections)
            .acquire_timeout(Duration::from_secs(db.connect_timeout_secs))
            .before_acquire(|_, meta| {
                // Read the clock now, as the pool measured the age, not when the future runs.
                let keep = read_only::opened_since(meta.age);
                Box::pin(async move { Ok(keep) })
            })
            .connect_lazy_with(opts);
        Ok(Store {
            pool,
            url: std::sync::Arc::new(std::sync::Mutex::new(url.clone())),
            keepalive_secs: db.keepalive_timeout_secs,
            schema: db.schema.clone(),
            migration_lock_timeout_secs: db.migration_lock_timeout_secs,
            inserted: Default::default(),
            hosts: std::sync::Arc::new(std::sync::Mutex::new(hosts)),
        })
    }

    /// Connects and checks that the database answers (with several hosts in database.url,
    /// the first that accepts writes, else the first that answers).
    pub async fn connect(url: &SecretString, db: &DatabaseSettings) -> Result<Store, StoreError> {
        let store = Self::connect_lazy(url, db)?;
        store.choose_host().await;
        if let Err(e) = sqlx::query("SELECT 1").execute(&store.pool).await {
            return Err(store.explain(e.into()).await);
        }
        Ok(store)
    }

    /// The options a new connection opens with (the pool's: the latest URL's).
    pub(crate) fn options(&self) -> PgConnectOptions {
        (*self.pool.connect_options()).clone()
    }

    /// Opens every new connection (pooled, or a lease's, the budget's, a migration's) with
    /// `url` from now on: rotated credentials, a moved host. Connections already open go on
    /// with what they opened with until they end. True when it differs from the URL in force;
    /// a URL that cannot be used leaves that one in force.
    pub fn set_url(&self, url: &SecretString) -> Result<bool, StoreError> {
        let mut current = self.url.lock().unwrap_or_else(|e| e.into_inner());
        if current.expose_secret() == url.expose_secret() {
            return Ok(false);
        }
        let mut hosts = Hosts::of(url, &self.schema, self.keepalive_secs)?;
        let mut in_use = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        // The same hosts with new credentials keep the one in use; several are looked at
        // again when next asked either way (`Store::hosts_in_doubt`).
        if in_use.each.len() == hosts.each.len() {
            hosts.current = in_use.current;
        }
        self.pool
            .set_connect_options(hosts.each[hosts.current].options.clone());
        *in_use = hosts;
        drop(in_use);
        *current = url.clone();
        Ok(true)
    }

    /// With several hosts in database.url, whether they should be looked at again
    /// ([`Store::choose_host`]): never yet, or a connection was lost or a write refused since
    /// the last look. Costs no query. False for a URL naming one host.
    fn hosts_in_doubt(&self) -> bool {
        let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        hosts.each.len() > 1
            && (hosts.looked_at == 0 || read_only::last_trouble() > Some(hosts.looked_at))
    }

    /// With several hosts in database.url (a cluster with a standby and no proxy in front, whose
    /// primary is whichever host accepts writes, as libpq's `target_session_attrs=read-write`
    /// finds it): connects to each in order, and makes new connections go to the first that
    /// accepts writes, else to the first that answers; the pool's connections to another are
    /// closed as they are next taken. Says so when that changes. Only when they are in doubt
    /// (never looked at, or trouble since: no query otherwise); nothing for a URL naming one.
    pub async fn choose_host(&self) {
        if !self.hosts_in_doubt() {
            return;
        }
        let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let looked_at = read_only::now_ms();
        let mut answering = None;
        let mut writable = None;
        let mut said = Vec::new();
        for (i, h) in hosts.each.iter().enumerate() {
            let probe = async {
                let mut conn = h.options.connect().await?;
                let refuses = schema::no_writes(&mut conn).await?.is_some();
                let _ = sqlx::Connection::close(conn).await;
                Ok::<_, sqlx::Error>(refuses)
            };
            match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
                Ok(Ok(false)) => {
                    writable = Some(i);
                    break;
                }
                Ok(Ok(true)) => {
                    answering.get_or_insert(i);
                    said.push(format!("{}: accepts no writes", h.name));
                }
                Ok(Err(e)) => said.push(format!("{}: {}", h.name, crate::text::error_chain(&e))),
                Err(_) => said.push(format!(
                    "{}: no answer within {} s",
                    h.name,
                    PROBE_TIMEOUT.as_secs()
                )),
            }
        }
        let mut now = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let first = now.looked_at == 0;
        now.looked_at = looked_at;
        now.passed_over = said.clone();
        let Some(pick) = writable.or(answering) else {
            tracing::warn!(hosts = %said.join("; "), "no host of database.url answers");
            return;
        };
        if writable.is_none() {
            tracing::warn!(hosts = %said.join("; "), "no host of database.url accepts writes; using the first that answers");
        }
        if pick != now.current || first {
            if pick != now.current {
                // Connections to the other host are closed as they are next taken.
                read_only::seen();
            }
            now.current = pick;
            self.pool
                .set_connect_options(now.each[pick].options.clone());
            if writable.is_some() {
                tracing::info!(
                    host = %now.each[pick].name,
                    hosts = now.each.len(),
                    "database.url: connecting to the first of its hosts that accepts writes"
                );
            }
        }
    }

    /// With several hosts in database.url, which one is in use and how it was chosen (for
    /// `check`); `None` for a URL naming one.
    pub fn host_in_use(&self) -> Option<String> {
        let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        (hosts.each.len() > 1).then(|| {
            let mut s = format!(
                "host {} of database.url's {}",
                hosts.each[hosts.current].name,
                hosts.each.len()
            );
            if !hosts.passed_over.is_empty() {
                s.push_str(&format!(" ({})", hosts.passed_over.join("; ")));
            }
            s
        })
    }

    /// Says why a pool timed out, which sqlx does not: it retries a server's refusal of new
    /// connections ("too many clients", SQLSTATE 53300) until the acquire timeout and then
    /// reports only the timeout, which reads the same as every pooled connection being busy.
    /// One connection attempt of its own tells the two apart. Other errors are returned as
    /// they are. For where an error is reported (a run's failure, a command's, the log line of
    /// a loop that tries again), not inside retries that report it when they give up.
    pub async fn explain(&self, e: StoreError) -> StoreError {
        if !matches!(e, StoreError::Db(sqlx::Error::PoolTimedOut)) {
            return e;
        }
        let waited = self.pool.options().get_acquire_timeout();
        let probe = waited.min(PROBE_TIMEOUT);
        let why = match tokio::time::timeout(probe, self.options().connect()).await {
            Ok(Ok(conn)) => {
                let _ = sqlx::Connection::close(conn).await;
                NoConnection::PoolBusy(self.pool.options().get_max_connections())
            }
            Ok(Err(sqlx::Error::Database(db))) if db.code().as_deref() == Some("53300") => {
                NoConnection::SlotsTaken(db.message().to_string())
            }
            Ok(Err(other)) => NoConnection::Refused(crate::text::error_chain(&other)),
            Err(_) => NoConnection::Refused(format!(
                "the server did not answer a new connection within {} s either (a host down or \
                 unreachable, a firewall dropping the packets, or a server too loaded to answer)",
                probe.as_secs()
            )),
        };
        StoreError::NoConnection {
            waited_secs: waited.as_secs(),
            why,
        }
    }

    /// A connection outside the pool, named `application_name` in `pg_stat_activity`, for what
    /// holds a session for long and must not take a pooled connection from page writes (a
    /// lease's advisory lock, the budget's negotiation). It is watched: see [`Watched::ended`].
    async fn watched_connection(&self, application_name: &str) -> Result<Watched, StoreError> {
        // sqlx's listener is the way to read an idle connection's socket; it takes its
        // connection from a pool, here one of its own with room for one. Dropped, it closes
        // the connection with the pool. The pool opens it when the listener asks, and does not
        // ping a connection it has just opened: a lease is taken per pass, thousands in a
        // fleet's round.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .test_before_acquire(false)
            // A server that refuses connections is retried for as long as the store's own
            // pool would (`database.connect_timeout_secs`), not sqlx's default 30 s.
            .acquire_timeout(self.pool.options().get_acquire_timeout())
            .connect_lazy_with(self.options().application_name(application_name));
        let mut conn = PgListener::connect_with(&pool).await?;
        conn.eager_reconnect(false);
        conn.ignore_pool_close_event(true);
        Ok(Watched(conn))
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// When this process last had a statement refused because its session was read-only
    /// (SQLSTATE 25006, or [`Store::refuses_writes`] finding it so), as a number that only
    /// grows; `None` if it never has. Costs no query: for a loop that asks the database
    /// whether it takes writes only after something found it did not.
    pub fn write_refused_at(&self) -> Option<u64> {
        read_only::last()
    }

    /// Notes that the database takes writes again after refusing them: every pooled session
    /// opened before now is replaced as it is next taken. One opened meanwhile (to read the
    /// status page, to look whether writes are taken) may be read-only for good, as a
    /// database's or a role's `default_transaction_read_only` applies at a session's start,
    /// and the first write to meet it would fail.
    pub fn writes_taken_again(&self) {
        read_only::cleared();
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Whether a pooled connection is free right now: idle, or not opened yet.
    pub fn has_idle_connection(&self) -> bool {
        self.pool.num_idle() > 0 || self.pool.size() < self.pool.options().get_max_connections()
    }
}

#[cfg(test)]
mod tests {
    use super::keepalives;

    #[test]
    fn keepalives_end_a_lost_session_within_about_the_timeout() {
        let secs = |k: &[(&str, String); 4]| -> Vec<u64> {
            k.iter().map(|(_, v)| v.parse().unwrap()).collect()
        };
        // Idle 30 s, then 3 probes 10 s apart: 60 s; unacknowledged data 60,000 ms.
        assert_eq!(secs(&keepalives(60)), [30, 10, 3, 60_000]);
        // The least allowed still probes once a second.
        assert_eq!(secs(&keepalives(3)), [1, 1, 3, 3_000]);
        let names: Vec<&str> = keepalives(60).iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "tcp_keepalives_idle",
                "tcp_keepalives_interval",
                "tcp_keepalives_count",
                "tcp_user_timeout"
            ]
        );
    }
}
