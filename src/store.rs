//! The PostgreSQL store: the only module that holds SQL. It owns the pool, applies migrations,
//! leases accounts, and writes each page (rows + cursor + counters) in one transaction.
//!
//! Queries are runtime-checked (`sqlx::query`, not `query!`): the schema name is chosen at run
//! time, and every statement here runs in the integration tests. Values always travel as bind
//! parameters; the only identifier ever formatted into SQL is the validated schema name.

use std::collections::HashMap;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::config::{validate_schema_name, DatabaseSettings};
use crate::model::{DecodedPage, Rejection, UserRecord};

type Ts = chrono::DateTime<chrono::Utc>;

/// A boxed `Send` future.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {}", crate::source::error_chain(.0))]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {}", crate::source::error_chain(.0))]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid database url: {0}")]
    Url(String),
    /// The run's position in the database is not where this process left it.
    #[error("the database no longer holds this run's last committed page (it lost committed transactions, e.g. in a crash with synchronous_commit=off, or another process took the account over); the run stopped, and the next run resumes from the database's cursor")]
    Diverged,
    /// A batch written ahead was rolled back because the batch before it did not commit.
    #[error("rolled back: the batch before it did not commit")]
    PreviousFailed,
}

/// Opens when the batch before a batch written ahead has committed (`Some(true)`) or failed
/// (`Some(false)`); see [`Store::apply_page_after`].
pub type Gate = tokio::sync::watch::Receiver<Option<bool>>;

impl StoreError {
    /// Serialization failures, deadlocks, and lost or refused connections are worth another try
    /// of the whole transaction; constraint violations and bad SQL are not.
    pub fn is_retryable(&self) -> bool {
        let StoreError::Db(e) = self else {
            return false;
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
            }),
            _ => false,
        }
    }
}

/// Counters of one run, as committed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunCounts {
    pub pages: u64,
    pub users_seen: u64,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub deleted: u64,
    pub undeleted: u64,
    pub rejected: u64,
    pub duplicates: u64,
    pub http_requests: u64,
    pub retries: u64,
    pub rate_limited: u64,
    /// Full objects fetched and merged (or found unchanged) by hydration.
    pub hydrated: u64,
    /// Single-user GETs that failed (the user stays queued).
    pub hydration_failures: u64,
}

impl RunCounts {
    pub fn add(&mut self, o: &RunCounts) {
        self.pages += o.pages;
        self.users_seen += o.users_seen;
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.unchanged += o.unchanged;
        self.deleted += o.deleted;
        self.undeleted += o.undeleted;
        self.rejected += o.rejected;
        self.duplicates += o.duplicates;
        self.http_requests += o.http_requests;
        self.retries += o.retries;
        self.rate_limited += o.rate_limited;
        self.hydrated += o.hydrated;
        self.hydration_failures += o.hydration_failures;
    }
}

/// What a new run starts from.
#[derive(Debug, Clone)]
pub struct RunStart {
    pub run_id: i64,
    /// The cursor of an earlier run's unfinished listing; `None` starts from the first page.
    pub resume_cursor: Option<String>,
    /// Runs found still marked running (their process died) and now marked interrupted.
    pub interrupted_runs: u64,
}

/// How a run ended, as stored in `sync_runs.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    NeedsAttention,
    Failed,
    Interrupted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::NeedsAttention => "needs_attention",
            Outcome::Failed => "failed",
            Outcome::Interrupted => "interrupted",
        }
    }
}

/// How a run finished, for `finish_run`.
#[derive(Debug, Clone)]
pub struct RunEnd {
    pub outcome: Outcome,
    pub complete_listing: bool,
    /// Forget the listing's cursor so that the next run starts from the first page.
    pub reset_cursor: bool,
    pub deleted: u64,
    pub deletions_skipped_reason: Option<String>,
    pub error_kind: Option<String>,
    pub error: Option<String>,
    /// The account's health as this run found it: `Some("ok")` once a request for it
    /// succeeded, one of [`HEALTH_KINDS`] when the run failed that way, `None` when the run
    /// cannot tell (it failed before any answer, or for another reason).
    pub health: Option<&'static str>,
    /// The run's hydration counters (and its requests, added to the run's).
    pub hydration: RunCounts,
    /// Requests of the page that failed for good (retries included), when one did.
    pub failed_requests: u32,
}

/// Error kinds that say the account itself cannot be synced until someone acts upstream:
/// stored in `sync_state.health`, and the scheduler probes such an account hours apart.
pub const HEALTH_KINDS: &[&str] = &["needs_reauth", "blocked", "not_found", "forbidden"];

/// The health an error of this kind gives its account, if it is one of [`HEALTH_KINDS`].
pub fn health_of(kind: &str) -> Option<&'static str> {
    HEALTH_KINDS.iter().copied().find(|k| *k == kind)
}

/// The ids a listing contained, for the deletion sweep: a Bloom filter (4 hashes) of at most
/// 8 MiB, sized to the account: 640 bits per expected id, so an account of a few hundred users
/// takes a few kilobytes and memory never grows with account size beyond the cap. A false
/// positive can only make an id look seen, which leaves a vanished user undeleted for that run
/// — never a live user deleted. Each run seeds the hashes differently, so such a user is caught
/// by a later run. The odds per vanished user: about 1e-9 up to 100,000 users, 1e-5 at
/// 1,000,000, 5 % at 10,000,000 (`len()` tells when an account outgrows it).
#[derive(Debug, Clone)]
pub struct SeenIds {
    bits: Vec<u64>,
    mask: u64,
    seed: u64,
    inserted: usize,
}

const SEEN_MAX_BITS_LOG2: u32 = 26;
const SEEN_MIN_BITS_LOG2: u32 = 16;
const SEEN_BITS_PER_ID: u64 = 640;
const SEEN_HASHES: u64 = 4;

impl SeenIds {
    /// An empty set at full size (8 MiB), hashes seeded with `seed` (the run id).
    pub fn new(seed: u64) -> SeenIds {
        Self::sized(seed, u64::MAX)
    }

    /// An empty set for about `expected` ids.
    pub fn sized(seed: u64, expected: u64) -> SeenIds {
        let want = expected.saturating_mul(SEEN_BITS_PER_ID).max(1);
        let log2 = (64 - (want - 1).leading_zeros()).clamp(SEEN_MIN_BITS_LOG2, SEEN_MAX_BITS_LOG2);
        SeenIds {
            bits: vec![0; 1 << (log2 - 6)],
            mask: (1u64 << log2) - 1,
            seed,
            inserted: 0,
        }
    }

    /// The filter's size in bytes.
    pub fn bytes(&self) -> usize {
        self.bits.len() * 8
    }

    /// The filter's bit positions for `id` (a free function of the seed, so that `insert` can
    /// set bits while iterating without collecting them first).
    fn positions(seed: u64, mask: u64, id: &str) -> impl Iterator<Item = usize> {
        let h = xxhash_rust::xxh3::xxh3_128_with_seed(id.as_bytes(), seed);
        let (h1, h2) = (h as u64, ((h >> 64) as u64) | 1);
        (0..SEEN_HASHES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) & mask) as usize)
    }

    pub fn insert(&mut self, id: &str) {
        for p in Self::positions(self.seed, self.mask, id) {
            self.bits[p >> 6] |= 1 << (p & 63);
        }
        self.inserted += 1;
    }

    pub fn contains(&self, id: &str) -> bool {
        Self::positions(self.seed, self.mask, id).all(|p| self.bits[p >> 6] & (1 << (p & 63)) != 0)
    }

    /// Insertions so far (duplicates included).
    pub fn len(&self) -> usize {
        self.inserted
    }

    pub fn is_empty(&self) -> bool {
        self.inserted == 0
    }
}

/// What one page transaction writes.
#[derive(Debug, Clone, Copy)]
pub struct PageWrite<'a> {
    /// The users and rejected records of one or more consecutive API pages.
    pub page: &'a DecodedPage,
    /// The users pre-encoded for COPY (a set per page), used when they all turn out to be new.
    pub all_new: Option<&'a [CopyRows]>,
    /// The cursor the first page was fetched with: where the stored cursor must stand.
    pub cursor: Option<&'a str>,
    /// The cursor to store: the last page's next (none when the listing ended).
    pub next_cursor: Option<&'a str>,
    /// Requests, retries and 429s of the pages; `pages` is how many API pages they are.
    pub counts: RunCounts,
    /// `None`: any user may already be mirrored, look them all up. `Some(ids)`: only these
    /// may (the account was empty when the run started, and only this run has added users).
    pub lookup: Option<&'a [String]>,
    /// Record each change in `user_changes`.
    pub history: bool,
    /// The account hydrates: listed records may be partial (write only the fields they
    /// carry), and new or changed users are queued for their full objects.
    pub hydrate: bool,
}

/// What one page transaction did.
#[derive(Debug, Default)]
pub struct PageResult {
    pub counts: RunCounts,
    /// Records decoded only by the writer (they had changed) and refused then.
    pub rejected: Vec<Rejection>,
    /// Role and status values outside the documented lists among the users written.
    pub unknown_enums: Vec<(&'static str, String)>,
}

/// The result of the deletion sweep's guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sweep {
    Deleted(u64),
    Skipped(String),
}

/// One account's row of `lms-sync status`.
#[derive(Debug, Clone)]
pub struct StatusRow {
    pub integrated_account_id: Uuid,
    pub label: Option<String>,
    pub status: String,
    pub last_outcome: Option<String>,
    pub last_started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_succeeded_at: Option<chrono::DateTime<chrono::Utc>>,
    pub consecutive_failures: i32,
    pub last_error: Option<String>,
    pub resumable: bool,
    pub live_users: i64,
    pub deleted_users: i64,
    /// `ok`, or why the account cannot be synced (see [`HEALTH_KINDS`]), since when and why.
    pub health: String,
    pub health_since: Option<chrono::DateTime<chrono::Utc>>,
    pub health_reason: Option<String>,
    /// Users queued for hydration.
    pub hydration_pending: i64,
}

/// An exclusive claim on one account, held as a PostgreSQL advisory lock on a connection of its
/// own: it ends when released, when this value is dropped, or when the process or its
/// connection dies, so a crashed worker never blocks an account.
pub struct Lease {
    conn: Option<PgConnection>,
    keys: (i32, i32),
}

impl Lease {
    pub async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                .bind(self.keys.0)
                .bind(self.keys.1)
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
        }
    }
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    opts: PgConnectOptions,
    schema: String,
    /// Users inserted through this store (all accounts), for [`Store::note_inserted`].
    inserted: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("schema", &self.schema)
            .finish()
    }
}

/// Connect options for `url` with `search_path` set to `schema`.
pub fn connect_options(url: &SecretString, schema: &str) -> Result<PgConnectOptions, StoreError> {
    validate_schema_name(schema).map_err(StoreError::Url)?;
    let opts: PgConnectOptions = url
        .expose_secret()
        .parse()
        // sqlx's parse error can quote the URL; keep the password out of it.
        .map_err(|_| StoreError::Url("cannot parse database.url".into()))?;
    Ok(opts
        .application_name("lms-sync")
        .options([("search_path", schema)])
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(5)))
}

impl Store {
    /// Connects (lazily: the first query opens the first connection).
    pub fn connect_lazy(url: &SecretString, db: &DatabaseSettings) -> Result<Store, StoreError> {
        let opts = connect_options(url, &db.schema)?;
        let pool = PgPoolOptions::new()
            .max_connections(db.max_connections)
            .acquire_timeout(Duration::from_secs(db.connect_timeout_secs))
            .connect_lazy_with(opts.clone());
        Ok(Store {
            pool,
            opts,
            schema: db.schema.clone(),
            inserted: Default::default(),
        })
    }

    /// Connects and checks that the database answers.
    pub async fn connect(url: &SecretString, db: &DatabaseSettings) -> Result<Store, StoreError> {
        let store = Self::connect_lazy(url, db)?;
        sqlx::query("SELECT 1").execute(&store.pool).await?;
        Ok(store)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Creates the schema when missing and applies pending migrations. Safe to run from several
    /// processes at once: sqlx serializes migrations with an advisory lock.
    ///
    /// Boxed as `Send` on purpose: it lets callers hold this future inside spawned tasks
    /// (rustc cannot prove sqlx's migrator future `Send` through an `async fn` otherwise).
    pub fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.migrate_inner())
    }

    async fn migrate_inner(&self) -> Result<(), StoreError> {
        // IMPORTANT: the schema name is spliced into SQL; validate_schema_name() allows only
        // [a-z_][a-z0-9_]*, and it is quoted besides.
        let create = format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", self.schema);
        if let Err(e) = sqlx::query(&create).execute(&self.pool).await {
            // Two processes creating it at once: one loses with a unique violation; fine.
            let raced = matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505") || d.code().as_deref() == Some("42P06"));
            if !raced {
                return Err(e.into());
            }
        }
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// True when every migration this binary knows is applied.
    pub async fn migrations_applied(&self) -> Result<bool, StoreError> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        if !exists {
            return Ok(false);
        }
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await?;
        Ok(MIGRATOR.iter().all(|m| applied.contains(&m.version)))
    }

    /// Whether a pooled connection is free right now: idle, or not opened yet.
    pub fn has_idle_connection(&self) -> bool {
        self.pool.num_idle() > 0 || self.pool.size() < self.pool.options().get_max_connections()
    }

    /// Tries to lease `account`; `None` when another process holds it.
    pub async fn try_lease(&self, account: Uuid) -> Result<Option<Lease>, StoreError> {
        let mut conn = self.opts.connect().await?;
        let keys: (i32, i32) = sqlx::query_as("SELECT hashtext('lms-sync:' || $1), hashtext($2)")
            .bind(&self.schema)
            .bind(account.to_string())
            .fetch_one(&mut conn)
            .await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(keys.0)
            .bind(keys.1)
            .fetch_one(&mut conn)
            .await?;
        if got {
            Ok(Some(Lease {
                conn: Some(conn),
                keys,
            }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }

    /// Opens a run for a leased account: records it in `sync_runs`, marks runs left `running` by
    /// a dead process as interrupted, and says where the listing resumes.
    pub async fn begin_run(
        &self,
        account: Uuid,
        label: Option<&str>,
        worker: &str,
    ) -> Result<RunStart, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO sync_state (integrated_account_id, label) VALUES ($1, $2)
             ON CONFLICT (integrated_account_id) DO UPDATE SET label = excluded.label
             WHERE sync_state.label IS DISTINCT FROM excluded.label",
        )
        .bind(account)
        .bind(label)
        .execute(&mut *tx)
        .await?;
        let cursor: Option<String> = sqlx::query_scalar(
            "SELECT cursor FROM sync_state WHERE integrated_account_id = $1 FOR UPDATE",
        )
        .bind(account)
        .fetch_one(&mut *tx)
        .await?;
        let interrupted = sqlx::query(
            "UPDATE sync_runs SET outcome = 'interrupted', finished_at = now(),
                    error = coalesce(error, 'the process running it stopped before the run finished')
              WHERE integrated_account_id = $1 AND outcome = 'running'",
        )
        .bind(account)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let run_id: i64 = sqlx::query_scalar(
            "INSERT INTO sync_runs (integrated_account_id, resumed, worker)
             VALUES ($1, $2, $3) RETURNING run_id",
        )
        .bind(account)
        .bind(cursor.is_some())
        .bind(worker)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE sync_state
                SET status = 'running', current_run_id = $2, last_started_at = now(),
                    listing_run_id = CASE WHEN cursor IS NULL THEN $2 ELSE listing_run_id END,
                    pages = 0, users_seen = 0, inserted = 0, updated = 0, unchanged = 0,
                    deleted = 0, rejected = 0, updated_at = now()
              WHERE integrated_account_id = $1",
        )
        .bind(account)
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(RunStart {
            run_id,
            resume_cursor: cursor,
            interrupted_runs: interrupted,
        })
    }

    /// Forgets a listing's cursor (the API refused it), so the run starts from the first page.
    pub async fn restart_listing(&self, account: Uuid, run_id: i64) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE sync_state SET cursor = NULL, listing_run_id = $2, updated_at = now()
              WHERE integrated_account_id = $1",
        )
        .bind(account)
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE sync_runs SET resumed = false WHERE run_id = $1")
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Writes one page in one transaction: changed users and their children, the rejected
    /// records, the cursor advance and the counters. Unchanged users cause no write.
    /// Returns the page's counters.
    pub async fn apply_page(
        &self,
        account: Uuid,
        run_id: i64,
        w: &PageWrite<'_>,
    ) -> Result<PageResult, StoreError> {
        self.apply_page_after(account, run_id, w, None).await
    }

    /// [`Store::apply_page`] for a batch written ahead, while the batch before it is still
    /// committing: its rows are written at once (on a connection of its own, so PostgreSQL
    /// works on both at the same time), but the cursor advance waits for `gate`, so cursors
    /// still move in order; if the previous batch failed, this one rolls back. Only for
    /// batches that share no user with the one before (nothing to wait on in between).
    pub async fn apply_page_after(
        &self,
        account: Uuid,
        run_id: i64,
        w: &PageWrite<'_>,
        gate: Option<Gate>,
    ) -> Result<PageResult, StoreError> {
        let PageWrite {
            page,
            cursor,
            next_cursor,
            mut counts,
            ..
        } = *w;
        // `counts.pages` says how many API pages `page` holds (several are written together
        // when the writer falls behind the fetcher).
        let pages = counts.pages.max(1);
        let mut tx = self.pool.begin().await?;
        let written = write_users(&mut tx, account, run_id, w).await?;
        counts.inserted = written.inserted;
        counts.updated = written.updated;
        counts.unchanged = written.unchanged;
        counts.undeleted = written.undeleted;
        counts.rejected = (page.rejected.len() + written.rejected.len()) as u64;
        counts.duplicates = page.duplicates;
        counts.users_seen = (page.len() - written.rejected.len()) as u64;
        counts.pages = pages;

        let rejected: Vec<&Rejection> = page.rejected.iter().chain(&written.rejected).collect();
        if !rejected.is_empty() {
            let ids: Vec<Option<&str>> = rejected.iter().map(|r| r.user_id.as_deref()).collect();
            let reasons: Vec<String> = rejected
                .iter()
                .map(|r| r.reason.replace('\0', "\\u0000"))
                .collect();
            let raws: Vec<&str> = rejected.iter().map(|r| r.raw.as_str()).collect();
            sqlx::query(
                "INSERT INTO rejected_records (integrated_account_id, run_id, user_id, reason, raw)
                 SELECT $1, $2, t.user_id, t.reason, t.raw
                   FROM unnest($3::text[], $4::text[], $5::text[]) AS t(user_id, reason, raw)",
            )
            .bind(account)
            .bind(run_id)
            .bind(&ids)
            .bind(&reasons)
            .bind(&raws)
            .execute(&mut *tx)
            .await?;
        }

        if let Some(mut gate) = gate {
            let opened = gate.wait_for(Option::is_some).await.map(|v| *v);
            if !matches!(opened, Ok(Some(true))) {
                return Err(StoreError::PreviousFailed);
            }
        }
        // IMPORTANT: the cursor advances only from where this run left it. Anything else means
        // the database lost commits or another process owns the run: writing on would skip pages.
        let advanced = sqlx::query(
            "UPDATE sync_state
                SET cursor = $2, pages = pages + $10, users_seen = users_seen + $3,
                    inserted = inserted + $4, updated = updated + $5, unchanged = unchanged + $6,
                    rejected = rejected + $7, updated_at = now()
              WHERE integrated_account_id = $1 AND current_run_id = $8
                AND cursor IS NOT DISTINCT FROM $9",
        )
        .bind(account)
        .bind(next_cursor)
        .bind(counts.users_seen as i64)
        .bind(counts.inserted as i64)
        .bind(counts.updated as i64)
        .bind(counts.unchanged as i64)
        .bind(counts.rejected as i64)
        .bind(run_id)
        .bind(cursor)
        .bind(pages as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if advanced != 1 {
            return Err(StoreError::Diverged);
        }
        sqlx::query(
            "UPDATE sync_runs
                SET pages = pages + $12, users_seen = users_seen + $2, inserted = inserted + $3,
                    updated = updated + $4, unchanged = unchanged + $5, undeleted = undeleted + $6,
                    rejected = rejected + $7, duplicates = duplicates + $8,
                    http_requests = http_requests + $9, retries = retries + $10,
                    rate_limited = rate_limited + $11
              WHERE run_id = $1",
        )
        .bind(run_id)
        .bind(counts.users_seen as i64)
        .bind(counts.inserted as i64)
        .bind(counts.updated as i64)
        .bind(counts.unchanged as i64)
        .bind(counts.undeleted as i64)
        .bind(counts.rejected as i64)
        .bind(counts.duplicates as i64)
        .bind(counts.http_requests as i64)
        .bind(counts.retries as i64)
        .bind(counts.rate_limited as i64)
        .bind(pages as i64)
        .execute(&mut *tx)
        .await?;
        crate::failpoint::point("page_tx").await;
        tx.commit().await?;
        Ok(PageResult {
            counts,
            rejected: written.rejected,
            unknown_enums: written.unknown_enums,
        })
    }

    /// After a complete listing: marks the account's live users that the listing did not
    /// contain as deleted, unless the guard says the listing cannot be trusted. Streams the
    /// live ids (memory stays flat) and writes only the rows that become deleted.
    pub async fn sweep_deletions(
        &self,
        account: Uuid,
        run_id: i64,
        seen: &SeenIds,
        max_delete_fraction: f64,
        history: bool,
    ) -> Result<Sweep, StoreError> {
        use futures_util::TryStreamExt;
        let mut gone: Vec<String> = Vec::new();
        let mut live: u64 = 0;
        {
            let mut rows = sqlx::query_scalar::<_, String>(
                "SELECT id FROM users WHERE integrated_account_id = $1 AND deleted_at IS NULL",
            )
            .bind(account)
            .fetch(&self.pool);
            while let Some(id) = rows.try_next().await? {
                live += 1;
                if !seen.contains(&id) {
                    gone.push(id);
                }
            }
        }
        if gone.is_empty() {
            return Ok(Sweep::Deleted(0));
        }
        if let Some(reason) = delete_guard(gone.len() as u64, live, max_delete_fraction) {
            return Ok(Sweep::Skipped(reason));
        }
        let mut tx = self.pool.begin().await?;
        let mut deleted = 0;
        for chunk in gone.chunks(10_000) {
            let n: i64 = sqlx::query_scalar(
                "WITH gone AS (
                     UPDATE users SET deleted_at = now(), last_changed_at = now(), last_changed_run_id = $3
                      WHERE integrated_account_id = $1 AND id = ANY($2::text[]) AND deleted_at IS NULL
                  RETURNING id, deleted_at),
                 noted AS (
                     INSERT INTO user_changes (integrated_account_id, user_id, run_id, kind, changed_fields)
                     SELECT $1, gone.id, $3, 'delete',
                            jsonb_build_object('deleted_at', jsonb_build_object('old', NULL, 'new', iso_utc(gone.deleted_at)))
                       FROM gone WHERE $4)
                 SELECT count(*) FROM gone",
            )
            .persistent(false)
            .bind(account)
            .bind(chunk)
            .bind(run_id)
            .bind(history)
            .fetch_one(&mut *tx)
            .await?;
            deleted += n as u64;
        }
        crate::failpoint::point("sweep_tx").await;
        tx.commit().await?;
        Ok(Sweep::Deleted(deleted))
    }

    /// Closes a run in `sync_runs` and `sync_state`. Returns the account's health before the
    /// run (`None` if the run was taken over and `sync_state` was left alone).
    pub async fn finish_run(
        &self,
        account: Uuid,
        run_id: i64,
        end: &RunEnd,
    ) -> Result<Option<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE sync_runs
                SET finished_at = now(), outcome = $2, complete_listing = $3, deleted = $4,
                    deletions_skipped_reason = $5, error_kind = $6, error = $7,
                    hydrated = $8, hydration_failures = $9,
                    http_requests = http_requests + $10, retries = retries + $11,
                    rate_limited = rate_limited + $12
              WHERE run_id = $1",
        )
        .bind(run_id)
        .bind(end.outcome.as_str())
        .bind(end.complete_listing)
        .bind(end.deleted as i64)
        .bind(&end.deletions_skipped_reason)
        .bind(&end.error_kind)
        .bind(&end.error)
        .bind(end.hydration.hydrated as i64)
        .bind(end.hydration.hydration_failures as i64)
        .bind((end.hydration.http_requests + u64::from(end.failed_requests)) as i64)
        .bind((end.hydration.retries + u64::from(end.failed_requests.saturating_sub(1))) as i64)
        .bind(end.hydration.rate_limited as i64)
        .execute(&mut *tx)
        .await?;
        let before = sqlx::query(
            "UPDATE sync_state
                SET status = $3, last_outcome = $3, last_finished_at = now(), deleted = $4,
                    last_error = $5,
                    last_succeeded_at = CASE WHEN $3 = 'succeeded' THEN now() ELSE last_succeeded_at END,
                    consecutive_failures = CASE WHEN $3 IN ('succeeded', 'needs_attention') THEN 0
                                                WHEN $3 = 'failed' THEN consecutive_failures + 1
                                                ELSE consecutive_failures END,
                    cursor = CASE WHEN $6 THEN NULL ELSE cursor END,
                    health = coalesce($7, s.health),
                    health_since = CASE WHEN $7 IS NULL OR $7 = s.health THEN s.health_since ELSE now() END,
                    health_reason = CASE WHEN $7 IS NULL THEN s.health_reason
                                         WHEN $7 = 'ok' THEN NULL ELSE $8 END,
                    health_failures = CASE WHEN $7 IS NULL THEN s.health_failures
                                           WHEN $7 = 'ok' THEN 0 ELSE s.health_failures + 1 END,
                    updated_at = now()
               FROM (SELECT health, health_since, health_reason, health_failures
                       FROM sync_state WHERE integrated_account_id = $1) AS s
              WHERE sync_state.integrated_account_id = $1 AND current_run_id = $2
          RETURNING s.health",
        )
        .bind(account)
        .bind(run_id)
        .bind(end.outcome.as_str())
        .bind(end.deleted as i64)
        .bind(end.error.as_ref().or(end.deletions_skipped_reason.as_ref()))
        .bind(end.complete_listing || end.reset_cursor)
        .bind(end.health)
        .bind(&end.error)
        .fetch_optional(&mut *tx)
        .await?;
        crate::failpoint::point("finish_run").await;
        tx.commit().await?;
        Ok(before.map(|r| r.get(0)))
    }

    /// Up to `limit` queued users of the account whose full object is due, oldest first.
    pub async fn hydration_due(
        &self,
        account: Uuid,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT user_id FROM hydration_queue
              WHERE integrated_account_id = $1 AND next_attempt_at <= now()
              ORDER BY next_attempt_at, queued_at, user_id LIMIT $2",
        )
        .bind(account)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Users still queued for hydration (due or waiting for a retry).
    pub async fn hydration_pending(&self, account: Uuid) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM hydration_queue WHERE integrated_account_id = $1",
        )
        .bind(account)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Merges full objects into their rows and takes them off the queue, in one transaction.
    /// `failed` stay queued with their error and a later retry time (1 min doubling to 6 h);
    /// `gone` (the GET says no such user) leave the queue: the next complete listing decides
    /// whether they were deleted. Returns how many rows were rewritten (an unchanged full
    /// object is not written again).
    pub async fn apply_hydration(
        &self,
        account: Uuid,
        run_id: i64,
        full: &[UserRecord],
        failed: &[(String, String)],
        gone: &[String],
        history: bool,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let ids: Vec<&str> = full.iter().map(|u| u.id.as_str()).collect();
        let stored: HashMap<String, (Option<Vec<u8>>, bool)> = if ids.is_empty() {
            HashMap::new()
        } else {
            sqlx::query_as::<_, (String, Option<Vec<u8>>, bool)>(
                "SELECT id, hydrated_hash, hydrated_at IS NULL FROM users
                  WHERE integrated_account_id = $1 AND id = ANY($2::text[]) FOR UPDATE",
            )
            .persistent(false)
            .bind(account)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|(id, h, first)| (id, (h, first)))
            .collect()
        };
        let write: Vec<&UserRecord> = full
            .iter()
            .filter(|u| match stored.get(&u.id) {
                Some((Some(h), _)) => h.as_slice() != u.content_hash,
                Some((None, _)) => true,
                None => false, // not mirrored (any more): nothing to merge into
            })
            .collect();
        if !write.is_empty() {
            let before = if history {
                Some(snapshots(&mut tx, account, &write).await?)
            } else {
                None
            };
            update_users(&mut tx, account, run_id, &write, UpdateMode::Hydrated).await?;
            if let Some(before) = before {
                let first: Vec<&str> = write
                    .iter()
                    .filter(|u| stored.get(&u.id).is_some_and(|(_, first)| *first))
                    .map(|u| u.id.as_str())
                    .collect();
                record_updates(&mut tx, account, run_id, &before, &first).await?;
            }
        }
        let done: Vec<&str> = ids
            .iter()
            .copied()
            .chain(gone.iter().map(String::as_str))
            .collect();
        if !done.is_empty() {
            sqlx::query(
                "DELETE FROM hydration_queue WHERE integrated_account_id = $1 AND user_id = ANY($2::text[])",
            )
            .persistent(false)
            .bind(account)
            .bind(&done)
            .execute(&mut *tx)
            .await?;
        }
        if !failed.is_empty() {
            let (fids, errors): (Vec<&str>, Vec<&str>) = failed
                .iter()
                .map(|(id, e)| (id.as_str(), e.as_str()))
                .unzip();
            sqlx::query(
                "UPDATE hydration_queue q
                    SET attempts = q.attempts + 1, last_error = f.error,
                        next_attempt_at = now() + least(interval '1 minute' * power(2, q.attempts), interval '6 hours')
                   FROM unnest($2::text[], $3::text[]) AS f(user_id, error)
                  WHERE q.integrated_account_id = $1 AND q.user_id = f.user_id",
            )
            .persistent(false)
            .bind(account)
            .bind(&fids)
            .bind(&errors)
            .execute(&mut *tx)
            .await?;
        }
        crate::failpoint::point("hydrate_tx").await;
        tx.commit().await?;
        Ok(write.len() as u64)
    }

    /// Deletes the account's change history older than `days` days, in batches (each its own
    /// transaction, so a long prune never holds locks for long). Returns the rows deleted.
    pub async fn prune_history(&self, account: Uuid, days: u32) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = sqlx::query(
                "DELETE FROM user_changes WHERE change_id IN (
                     SELECT change_id FROM user_changes
                      WHERE integrated_account_id = $1
                        AND changed_at < now() - make_interval(days => $2)
                      LIMIT 10000)",
            )
            .bind(account)
            .bind(days as i32)
            .execute(&self.pool)
            .await?
            .rows_affected();
            total += n;
            if n < 10_000 {
                return Ok(total);
            }
        }
    }

    /// Counts `n` users inserted by a run and refreshes the planner's statistics when the
    /// process's total crosses 2,000 × 4^k: a handful of ANALYZEs however many accounts grow,
    /// so that later runs' key lookups are planned on the table as it is.
    pub async fn note_inserted(&self, n: u64) {
        use std::sync::atomic::Ordering;
        if n == 0 {
            return;
        }
        let before = self.inserted.fetch_add(n, Ordering::Relaxed);
        if analyze_due(before, before + n) {
            if let Err(e) = self.analyze().await {
                tracing::warn!(error = %e, "could not refresh table statistics");
            }
        }
    }

    /// The account's live users.
    pub async fn live_users(&self, account: Uuid) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM users WHERE integrated_account_id = $1 AND deleted_at IS NULL",
        )
        .bind(account)
        .fetch_one(&self.pool)
        .await?)
    }

    /// True when the account has no users in the mirror.
    pub async fn account_is_empty(&self, account: Uuid) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM users WHERE integrated_account_id = $1)",
        )
        .bind(account)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Refreshes the planner's statistics of `users`. A first sync grows it from nothing
    /// faster than autovacuum notices, and key lookups planned with "empty table" statistics
    /// turn into scans.
    pub async fn analyze(&self) -> Result<(), StoreError> {
        // A small sample is enough (the planner needs the table's size, not fine histograms):
        // ~60 ms instead of ~700 ms for 100,000 users. SKIP_LOCKED: if autovacuum is already
        // analyzing the table, let it.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL default_statistics_target = 10")
            .execute(&mut *tx)
            .await?;
        // "skipping analyze ... lock not available" is the expected answer when another
        // process analyzes: not worth a warning in our log.
        sqlx::query("SET LOCAL client_min_messages = error")
            .execute(&mut *tx)
            .await?;
        sqlx::query("ANALYZE (SKIP_LOCKED) users")
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// What the scheduler needs to know of each account's runs. An account whose state says
    /// `running` reports that as its last outcome: it is running elsewhere, or its process died.
    pub async fn run_histories(
        &self,
    ) -> Result<HashMap<Uuid, crate::schedule::RunHistory>, StoreError> {
        type Row = (
            Uuid,
            Option<Ts>,
            Option<Ts>,
            Option<String>,
            i32,
            String,
            i32,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT integrated_account_id, last_started_at, last_finished_at,
                        CASE WHEN status = 'running' THEN 'running' ELSE last_outcome END,
                        consecutive_failures, health, health_failures
                   FROM sync_state",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(id, started, finished, outcome, failures, health, health_failures)| {
                    (
                        id,
                        crate::schedule::RunHistory {
                            last_started_at: started,
                            last_finished_at: finished,
                            last_outcome: outcome,
                            consecutive_failures: failures.max(0) as u32,
                            health: Some(health),
                            health_failures: health_failures.max(0) as u32,
                        },
                    )
                },
            )
            .collect())
    }

    /// One row per account known to `sync_state`, plus configured accounts never synced.
    pub async fn status(
        &self,
        configured: &[(Uuid, Option<String>)],
    ) -> Result<Vec<StatusRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT s.integrated_account_id, s.label, s.status, s.last_outcome, s.last_started_at,
                    s.last_finished_at, s.last_succeeded_at, s.consecutive_failures, s.last_error,
                    (s.cursor IS NOT NULL) AS resumable,
                    (SELECT count(*) FROM users u WHERE u.integrated_account_id = s.integrated_account_id AND u.deleted_at IS NULL) AS live,
                    (SELECT count(*) FROM users u WHERE u.integrated_account_id = s.integrated_account_id AND u.deleted_at IS NOT NULL) AS gone,
                    s.health, s.health_since, s.health_reason,
                    (SELECT count(*) FROM hydration_queue q WHERE q.integrated_account_id = s.integrated_account_id) AS pending
               FROM sync_state s ORDER BY coalesce(s.label, s.integrated_account_id::text)",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out: Vec<StatusRow> = rows
            .into_iter()
            .map(|r| StatusRow {
                integrated_account_id: r.get(0),
                label: r.get(1),
                status: r.get(2),
                last_outcome: r.get(3),
                last_started_at: r.get(4),
                last_finished_at: r.get(5),
                last_succeeded_at: r.get(6),
                consecutive_failures: r.get(7),
                last_error: r.get(8),
                resumable: r.get(9),
                live_users: r.get(10),
                deleted_users: r.get(11),
                health: r.get(12),
                health_since: r.get(13),
                health_reason: r.get(14),
                hydration_pending: r.get(15),
            })
            .collect();
        for (id, label) in configured {
            if !out.iter().any(|r| r.integrated_account_id == *id) {
                out.push(StatusRow {
                    integrated_account_id: *id,
                    label: label.clone(),
                    status: "never synced".into(),
                    last_outcome: None,
                    last_started_at: None,
                    last_finished_at: None,
                    last_succeeded_at: None,
                    consecutive_failures: 0,
                    last_error: None,
                    resumable: false,
                    live_users: 0,
                    deleted_users: 0,
                    health: "ok".into(),
                    health_since: None,
                    health_reason: None,
                    hydration_pending: 0,
                });
            }
        }
        Ok(out)
    }
}

/// True when an inserted count crossed one of 2,000 × 4^k.
fn analyze_due(before: u64, after: u64) -> bool {
    let mut t = 2_000u64;
    while t <= after {
        if before < t {
            return true;
        }
        t = t.saturating_mul(4);
    }
    false
}

/// Why a sweep of `gone` of `live` users must not run, if it must not.
pub fn delete_guard(gone: u64, live: u64, max_fraction: f64) -> Option<String> {
    if gone as f64 > max_fraction * live as f64 {
        Some(format!(
            "the listing would delete {gone} of {live} live users, more than the allowed share ({:.0}%); nothing was deleted. \
             If this is right, raise max_delete_fraction for this account and sync again",
            max_fraction * 100.0
        ))
    } else {
        None
    }
}

/// What [`write_users`] did.
#[derive(Debug, Default)]
struct Written {
    inserted: u64,
    updated: u64,
    unchanged: u64,
    undeleted: u64,
    /// Scanned records that turned out not to decode.
    rejected: Vec<Rejection>,
    /// Role and status values outside the documented lists among the users written.
    unknown_enums: Vec<(&'static str, String)>,
}

/// Classifies the page's users against their stored hashes and writes only what changed.
/// Scanned records whose text is what was mirrored are not even decoded.
async fn write_users(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    run_id: i64,
    w: &PageWrite<'_>,
) -> Result<Written, StoreError> {
    let PageWrite {
        page,
        all_new,
        lookup,
        history,
        hydrate,
        ..
    } = *w;
    let mut out = Written::default();
    if page.is_empty() {
        return Ok(out);
    }
    let ids: Vec<&str> = match lookup {
        Some(only) => only.iter().map(String::as_str).collect(),
        None => page.ids().collect(),
    };
    type Stored = (Vec<u8>, Option<Vec<u8>>, bool);
    let existing: HashMap<String, Stored> = if ids.is_empty() {
        HashMap::new()
    } else {
        sqlx::query_as::<_, (String, Vec<u8>, Option<Vec<u8>>, bool)>(
            "SELECT id, content_hash, listed_hash, deleted_at IS NOT NULL
           FROM users WHERE integrated_account_id = $1 AND id = ANY($2::text[])",
        )
        // IMPORTANT: unnamed statements are planned with their parameters each time. A named
        // (cached, generic) plan made while the table was small — a first sync starts empty —
        // keeps seq-scanning it as it grows, which made first syncs quadratic. (Setting
        // plan_cache_mode for the session instead also replans every foreign-key check.)
        .persistent(false)
        .bind(account)
        .bind(&ids)
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .map(|(id, h, l, d)| (id, (h, l, d)))
        .collect()
    };

    // Scanned records: the same text as mirrored means the same user; the rest are decoded.
    let mut revived: Vec<&str> = Vec::new();
    let mut decoded: Vec<UserRecord> = Vec::new();
    for l in &page.listed {
        match existing.get(&l.id) {
            Some((_, Some(listed), deleted)) if listed.as_slice() == l.listed_hash => {
                if *deleted {
                    out.undeleted += 1;
                    revived.push(&l.id);
                } else {
                    out.unchanged += 1;
                }
            }
            _ => match l.decode() {
                Ok(u) => decoded.push(u),
                Err(r) => out.rejected.push(r),
            },
        }
    }
    let users: Vec<&UserRecord> = page.users.iter().chain(decoded.iter()).collect();

    let mut changed: Vec<&UserRecord> = Vec::new();
    // Unchanged users mirrored before their text was hashed: record the hash, once.
    let mut backfill: Vec<&UserRecord> = Vec::new();
    for u in &users {
        match existing.get(&u.id) {
            None => {
                out.inserted += 1;
                changed.push(u);
            }
            Some((hash, listed, deleted)) => {
                if *deleted {
                    out.undeleted += 1;
                }
                if hash.as_slice() != u.content_hash {
                    out.updated += 1;
                    changed.push(u);
                } else {
                    if listed.is_none() {
                        backfill.push(u);
                    }
                    if *deleted {
                        revived.push(&u.id);
                    } else {
                        out.unchanged += 1;
                    }
                }
            }
        }
    }
    for u in &changed {
        out.unknown_enums
            .extend(u.unknown_enum_values().map(|(f, v)| (f, v.to_string())));
    }
    if !backfill.is_empty() {
        let ids: Vec<&str> = backfill.iter().map(|u| u.id.as_str()).collect();
        let hashes: Vec<&[u8]> = backfill.iter().map(|u| &u.listed_hash[..]).collect();
        sqlx::query(
            "UPDATE users u SET listed_hash = t.h
               FROM unnest($2::text[], $3::bytea[]) AS t(id, h)
              WHERE u.integrated_account_id = $1 AND u.id = t.id AND u.listed_hash IS NULL",
        )
        .persistent(false)
        .bind(account)
        .bind(&ids)
        .bind(&hashes)
        .execute(&mut **tx)
        .await?;
    }
    if !revived.is_empty() {
        sqlx::query(
            "WITH prev AS (
                 SELECT id, deleted_at FROM users
                  WHERE integrated_account_id = $1 AND id = ANY($2::text[]) FOR UPDATE),
             revived AS (
                 UPDATE users u SET deleted_at = NULL, last_changed_at = now(), last_changed_run_id = $3
                   FROM prev WHERE u.integrated_account_id = $1 AND u.id = prev.id)
             INSERT INTO user_changes (integrated_account_id, user_id, run_id, kind, changed_fields)
             SELECT $1, prev.id, $3, 'undelete',
                    jsonb_build_object('deleted_at', jsonb_build_object('old', iso_utc(prev.deleted_at), 'new', NULL))
               FROM prev WHERE $4",
        )
        .persistent(false)
        .bind(account)
        .bind(&revived)
        .bind(run_id)
        .bind(history)
        .execute(&mut **tx)
        .await?;
    }
    if changed.is_empty() {
        return Ok(out);
    }
    let (old, new): (Vec<&UserRecord>, Vec<&UserRecord>) =
        changed.iter().partition(|u| existing.contains_key(&u.id));
    // Users the mirror does not have (we hold the account's lease, so nobody else adds them):
    // COPY them and their children straight in.
    match all_new {
        // Encoded ahead by the caller for exactly these users.
        Some(sets) if page.listed.is_empty() && new.len() == page.users.len() => {
            copy_all(sets, tx).await?
        }
        _ if !new.is_empty() => {
            let mut rows = CopyRows::default();
            rows.add(account, Some(run_id), &new);
            rows.copy_in(tx).await?;
        }
        _ => {}
    }
    if history && !new.is_empty() {
        // One narrow row per new user, by COPY (a first sync inserts many).
        let (acct, run) = (account.to_string(), run_id.to_string());
        let mut lines = String::with_capacity(new.len() * 64);
        for u in &new {
            copy_line(
                &mut lines,
                &[Some(&acct), Some(&u.id), Some(&run), Some("insert")],
            );
        }
        let mut copy = tx
            .copy_in_raw(
                "COPY user_changes (integrated_account_id, user_id, run_id, kind) FROM STDIN",
            )
            .await?;
        copy.send(lines.as_bytes()).await?;
        copy.finish().await?;
    }
    if hydrate {
        // Their full objects are fetched after the listing (see sync::hydrate).
        let ids: Vec<&str> = changed.iter().map(|u| u.id.as_str()).collect();
        sqlx::query(
            "INSERT INTO hydration_queue (integrated_account_id, user_id)
             SELECT $1, t.id FROM unnest($2::text[]) AS t(id)
             ON CONFLICT (integrated_account_id, user_id) DO UPDATE
                SET queued_at = now(), attempts = 0, next_attempt_at = now(), last_error = NULL",
        )
        .persistent(false)
        .bind(account)
        .bind(&ids)
        .execute(&mut **tx)
        .await?;
    }
    // Changed users: update, and write only the child rows that differ.
    if !old.is_empty() {
        let before = if history {
            Some(snapshots(tx, account, &old).await?)
        } else {
            None
        };
        let mode = if hydrate {
            UpdateMode::ListedPartial
        } else {
            UpdateMode::Listed
        };
        update_users(tx, account, run_id, &old, mode).await?;
        if let Some(before) = before {
            record_updates(tx, account, run_id, &before, &[]).await?;
        }
    }
    Ok(out)
}

/// The users' states (`user_snapshots.state`) as JSON text: (ids, states).
async fn snapshots(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    users: &[&UserRecord],
) -> Result<(Vec<String>, Vec<String>), StoreError> {
    let ids: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT user_id, state::text FROM user_snapshots
          WHERE integrated_account_id = $1 AND user_id = ANY($2::text[])",
    )
    .persistent(false)
    .bind(account)
    .bind(&ids)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().unzip())
}

/// One `user_changes` row per user whose state differs from `before`, with the fields that
/// changed (old and new values). Users whose only change is `remote_data` get none.
async fn record_updates(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    run_id: i64,
    before: &(Vec<String>, Vec<String>),
    first_hydration: &[&str],
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO user_changes (integrated_account_id, user_id, run_id, kind, changed_fields)
         SELECT $1, o.user_id, $3,
                CASE WHEN o.user_id = ANY($5::text[]) THEN 'hydrate'
                     WHEN o.state ->> 'deleted_at' IS NOT NULL AND s.state ->> 'deleted_at' IS NULL THEN 'undelete'
                     ELSE 'update' END,
                d.diff
           FROM (SELECT t.user_id, t.state::jsonb AS state
                   FROM unnest($2::text[], $4::text[]) AS t(user_id, state)) o
           JOIN user_snapshots s ON s.integrated_account_id = $1 AND s.user_id = o.user_id
          CROSS JOIN LATERAL (
                SELECT jsonb_object_agg(n.key, jsonb_build_object('old', o.state -> n.key, 'new', n.value)) AS diff
                  FROM jsonb_each(s.state) n
                 WHERE n.value IS DISTINCT FROM o.state -> n.key) d
          WHERE d.diff IS NOT NULL",
    )
    .persistent(false)
    .bind(account)
    .bind(&before.0)
    .bind(run_id)
    .bind(&before.1)
    .bind(first_hydration)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// New users and their children in PostgreSQL's COPY text format: the fast path for users the
/// mirror does not have yet (a first sync), and what the benchmark's DB floor copies.
#[derive(Debug, Default)]
pub struct CopyRows {
    pub users: String,
    pub emails: String,
    pub phones: String,
    pub managers: String,
}

const COPY_USERS: &str = "COPY users (integrated_account_id, id, name, first_name, last_name, username, job_title, locale, timezone, role, status, organization_id, organization_name, custom_fields, remote_data, extra, created_at, updated_at, content_hash, last_changed_run_id, listed_hash) FROM STDIN";
const COPY_EMAILS: &str = "COPY user_emails (integrated_account_id, user_id, position, email, is_primary, type) FROM STDIN";
const COPY_PHONES: &str = "COPY user_phones (integrated_account_id, user_id, position, number, extension, type) FROM STDIN";
const COPY_MANAGERS: &str = "COPY user_managers (integrated_account_id, user_id, manager_id, manager_name, manager_emails) FROM STDIN";

/// Appends one COPY text-format field (NULL as `\N`; backslash, tab, newline, CR escaped).
/// Values never hold NUL: the model refuses such records.
fn copy_field(out: &mut String, v: Option<&str>) {
    match v {
        None => out.push_str("\\N"),
        Some(s) => {
            // Copy runs of plain bytes at once; only these four need escaping (all ASCII, so
            // the runs split the text at character boundaries).
            let mut start = 0;
            for (i, b) in s.bytes().enumerate() {
                let escaped = match b {
                    b'\\' => "\\\\",
                    b'\t' => "\\t",
                    b'\n' => "\\n",
                    b'\r' => "\\r",
                    _ => continue,
                };
                out.push_str(&s[start..i]);
                out.push_str(escaped);
                start = i + 1;
            }
            out.push_str(&s[start..]);
        }
    }
}

fn copy_line(out: &mut String, fields: &[Option<&str>]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        copy_field(out, *f);
    }
    out.push('\n');
}

impl CopyRows {
    /// Adds `users` of `account` (written by `run_id`, when a run writes them).
    pub fn add(&mut self, account: Uuid, run_id: Option<i64>, users: &[&UserRecord]) {
        let acct = account.to_string();
        let run = run_id.map(|r| r.to_string());
        for u in users {
            let hash = bytea_text(&u.content_hash);
            let listed = bytea_text(&u.listed_hash);
            let created = u.created_at.map(|t| t.to_rfc3339());
            let updated = u.updated_at.map(|t| t.to_rfc3339());
            copy_line(
                &mut self.users,
                &[
                    Some(&acct),
                    Some(&u.id),
                    u.name.as_deref(),
                    u.first_name.as_deref(),
                    u.last_name.as_deref(),
                    u.username.as_deref(),
                    u.job_title.as_deref(),
                    u.locale.as_deref(),
                    u.timezone.as_deref(),
                    u.role.as_deref(),
                    u.status.as_deref(),
                    u.organization_id.as_deref(),
                    u.organization_name.as_deref(),
                    u.custom_fields.as_deref(),
                    u.remote_data.as_deref(),
                    u.extra.as_deref(),
                    created.as_deref(),
                    updated.as_deref(),
                    Some(&hash),
                    run.as_deref(),
                    Some(&listed),
                ],
            );
            for (p, e) in u.emails.iter().enumerate() {
                let pos = p.to_string();
                let primary = e.is_primary.map(|b| if b { "t" } else { "f" });
                copy_line(
                    &mut self.emails,
                    &[
                        Some(&acct),
                        Some(&u.id),
                        Some(&pos),
                        e.email.as_deref(),
                        primary,
                        e.kind.as_deref(),
                    ],
                );
            }
            for (p, ph) in u.phones.iter().enumerate() {
                let pos = p.to_string();
                copy_line(
                    &mut self.phones,
                    &[
                        Some(&acct),
                        Some(&u.id),
                        Some(&pos),
                        ph.number.as_deref(),
                        ph.extension.as_deref(),
                        ph.kind.as_deref(),
                    ],
                );
            }
            if let Some(m) = &u.manager {
                copy_line(
                    &mut self.managers,
                    &[
                        Some(&acct),
                        Some(&u.id),
                        m.id.as_deref(),
                        m.name.as_deref(),
                        m.emails.as_deref(),
                    ],
                );
            }
        }
    }

    /// Streams the rows into their tables on `conn` (inside the caller's transaction).
    pub async fn copy_in(&self, conn: &mut PgConnection) -> Result<(), StoreError> {
        copy_all(std::slice::from_ref(self), conn).await
    }
}

/// `bytes` as bytea input text (`\\x` and hex digits).
fn bytea_text(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(2 + 2 * bytes.len());
    out.push_str("\\x");
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Streams several sets of rows (one per page) into their tables: one COPY per table, each
/// set sent as it is, without first concatenating them.
pub async fn copy_all(sets: &[CopyRows], conn: &mut PgConnection) -> Result<(), StoreError> {
    type Part = fn(&CopyRows) -> &String;
    let tables: [(&str, Part); 4] = [
        (COPY_USERS, |r| &r.users),
        (COPY_EMAILS, |r| &r.emails),
        (COPY_PHONES, |r| &r.phones),
        (COPY_MANAGERS, |r| &r.managers),
    ];
    for (sql, part) in tables {
        if sets.iter().all(|r| part(r).is_empty()) {
            continue;
        }
        let mut copy = conn.copy_in_raw(sql).await?;
        for r in sets {
            let data = part(r);
            if !data.is_empty() {
                copy.send(data.as_bytes()).await?;
            }
        }
        copy.finish().await?;
    }
    Ok(())
}

/// How [`update_users`] writes a user it already has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UpdateMode {
    /// From a listing: the record is the user. Fields the record lacks become NULL.
    Listed,
    /// From a partial listing of an account with hydration: only the fields the record has
    /// are written (the rest came from the full object and stay); `extra` keys are merged.
    ListedPartial,
    /// From the single-user GET: the full object. The content hash (of the listed record)
    /// stays, so the next unchanged listing still writes nothing.
    Hydrated,
}

/// Writes users the mirror already has (we hold the account's lease: none can vanish).
async fn update_users(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    run_id: i64,
    users: &[&UserRecord],
    mode: UpdateMode,
) -> Result<(), StoreError> {
    fn col<'a>(
        users: &[&'a UserRecord],
        f: impl Fn(&'a UserRecord) -> Option<&'a str>,
    ) -> Vec<Option<&'a str>> {
        users.iter().map(|u| f(u)).collect()
    }
    let ids: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
    let hashes: Vec<&[u8]> = users.iter().map(|u| &u.content_hash[..]).collect();
    let listed: Vec<&[u8]> = users.iter().map(|u| &u.listed_hash[..]).collect();
    let created: Vec<_> = users.iter().map(|u| u.created_at).collect();
    let updated: Vec<_> = users.iter().map(|u| u.updated_at).collect();
    let present: Vec<i32> = users
        .iter()
        .map(|u| match mode {
            UpdateMode::Listed => crate::model::ALL_PRESENT as i32,
            _ => u.present as i32,
        })
        .collect();
    // Bits of `present`: positions in model::KNOWN_FIELDS.
    sqlx::query(
        "UPDATE users AS u SET
                name = CASE WHEN t.p & 2 <> 0 THEN t.name ELSE u.name END,
                first_name = CASE WHEN t.p & 4 <> 0 THEN t.first_name ELSE u.first_name END,
                last_name = CASE WHEN t.p & 8 <> 0 THEN t.last_name ELSE u.last_name END,
                username = CASE WHEN t.p & 16 <> 0 THEN t.username ELSE u.username END,
                job_title = CASE WHEN t.p & 32 <> 0 THEN t.job_title ELSE u.job_title END,
                locale = CASE WHEN t.p & 64 <> 0 THEN t.locale ELSE u.locale END,
                timezone = CASE WHEN t.p & 128 <> 0 THEN t.timezone ELSE u.timezone END,
                role = CASE WHEN t.p & 256 <> 0 THEN t.role ELSE u.role END,
                status = CASE WHEN t.p & 512 <> 0 THEN t.status ELSE u.status END,
                organization_id = CASE WHEN t.p & 8192 <> 0 THEN t.organization_id ELSE u.organization_id END,
                organization_name = CASE WHEN t.p & 8192 <> 0 THEN t.organization_name ELSE u.organization_name END,
                custom_fields = CASE WHEN t.p & 16384 <> 0 THEN t.custom_fields::jsonb ELSE u.custom_fields END,
                remote_data = CASE WHEN t.p & 32768 <> 0 THEN t.remote_data::jsonb ELSE u.remote_data END,
                created_at = CASE WHEN t.p & 65536 <> 0 THEN t.created_at ELSE u.created_at END,
                updated_at = CASE WHEN t.p & 131072 <> 0 THEN t.updated_at ELSE u.updated_at END,
                extra = CASE WHEN $21 = 'partial'
                             THEN nullif(coalesce(u.extra, '{}') || coalesce(t.extra::jsonb, '{}'), '{}')
                             ELSE t.extra::jsonb END,
                content_hash = CASE WHEN $21 = 'hydrated' THEN u.content_hash ELSE t.content_hash END,
                deleted_at = CASE WHEN $21 = 'hydrated' THEN u.deleted_at END,
                hydrated_at = CASE WHEN $21 = 'hydrated' THEN now() ELSE u.hydrated_at END,
                hydrated_hash = CASE WHEN $21 = 'hydrated' THEN t.content_hash ELSE u.hydrated_hash END,
                listed_hash = CASE WHEN $21 = 'hydrated' THEN u.listed_hash ELSE t.listed_hash END,
                last_changed_at = now(), last_changed_run_id = $2
           FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
                       $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[],
                       $15::text[], $16::text[], $17::timestamptz[], $18::timestamptz[], $19::bytea[],
                       $20::text[], $22::int4[], $23::bytea[])
             AS t(id, name, first_name, last_name, username, job_title, locale, timezone, role,
                  status, organization_id, organization_name, custom_fields, remote_data,
                  created_at, updated_at, content_hash, extra, p, listed_hash)
          WHERE u.integrated_account_id = $1 AND u.id = t.id",
    )
    .persistent(false)
    .bind(account)
    .bind(run_id)
    .bind(&ids)
    .bind(col(users, |u| u.name.as_deref()))
    .bind(col(users, |u| u.first_name.as_deref()))
    .bind(col(users, |u| u.last_name.as_deref()))
    .bind(col(users, |u| u.username.as_deref()))
    .bind(col(users, |u| u.job_title.as_deref()))
    .bind(col(users, |u| u.locale.as_deref()))
    .bind(col(users, |u| u.timezone.as_deref()))
    .bind(col(users, |u| u.role.as_deref()))
    .bind(col(users, |u| u.status.as_deref()))
    .bind(col(users, |u| u.organization_id.as_deref()))
    .bind(col(users, |u| u.organization_name.as_deref()))
    .bind(col(users, |u| u.custom_fields.as_deref()))
    .bind(col(users, |u| u.remote_data.as_deref()))
    .bind(&created)
    .bind(&updated)
    .bind(&hashes)
    .bind(col(users, |u| u.extra.as_deref()))
    .bind(match mode {
        UpdateMode::Listed => "listed",
        UpdateMode::ListedPartial => "partial",
        UpdateMode::Hydrated => "hydrated",
    })
    .bind(&present)
    .bind(&listed)
    .execute(&mut **tx)
    .await?;
    // The children a record carries replace the stored ones; absent ones stay (partial modes).
    let carrying = |field: &str| -> Vec<&UserRecord> {
        users
            .iter()
            .copied()
            .filter(|u| mode == UpdateMode::Listed || u.has(field))
            .collect()
    };
    sync_emails(tx, account, &carrying("emails")).await?;
    sync_phones(tx, account, &carrying("phones")).await?;
    sync_managers(tx, account, &carrying("manager")).await?;
    Ok(())
}

/// Rows of a child table for the changed users: (user id, position) plus three values.
struct ChildRows<'a, B> {
    user_ids: Vec<&'a str>,
    positions: Vec<i32>,
    a: Vec<Option<&'a str>>,
    b: Vec<B>,
    c: Vec<Option<&'a str>>,
}

impl<'a, B> ChildRows<'a, B> {
    /// One row per element of `items(user)`, numbered from 0 in the API's order.
    fn collect<T: 'a>(
        users: &[&'a UserRecord],
        items: impl Fn(&'a UserRecord) -> &'a [T],
        values: impl Fn(&'a T) -> (Option<&'a str>, B, Option<&'a str>),
    ) -> Self {
        let mut rows = Self {
            user_ids: Vec::new(),
            positions: Vec::new(),
            a: Vec::new(),
            b: Vec::new(),
            c: Vec::new(),
        };
        for u in users {
            for (i, item) in items(u).iter().enumerate() {
                let (a, b, c) = values(item);
                rows.user_ids.push(&u.id);
                rows.positions.push(i as i32);
                rows.a.push(a);
                rows.b.push(b);
                rows.c.push(c);
            }
        }
        rows
    }
}

/// The statements of one ordered child table (emails, phones).
struct ChildTable {
    /// Deletes the positions the users no longer have: $1 account, $2 owners, $3/$4 kept keys.
    delete_stale: &'static str,
    /// Inserts rows that are new or differ: $1 account, $2..$6 the columns.
    upsert_changed: &'static str,
}

const EMAILS: ChildTable = ChildTable {
    delete_stale: "DELETE FROM user_emails
              WHERE integrated_account_id = $1 AND user_id = ANY($2::text[])
                AND (user_id, position) NOT IN (SELECT * FROM unnest($3::text[], $4::int[]))",
    upsert_changed: "INSERT INTO user_emails (integrated_account_id, user_id, position, email, is_primary, type)
         SELECT $1, n.user_id, n.position, n.email, n.is_primary, n.type
           FROM unnest($2::text[], $3::int[], $4::text[], $5::bool[], $6::text[])
                AS n(user_id, position, email, is_primary, type)
           LEFT JOIN user_emails e
                  ON e.integrated_account_id = $1 AND e.user_id = n.user_id AND e.position = n.position
          WHERE e.user_id IS NULL
             OR (e.email, e.is_primary, e.type) IS DISTINCT FROM (n.email, n.is_primary, n.type)
         ON CONFLICT (integrated_account_id, user_id, position) DO UPDATE
            SET email = excluded.email, is_primary = excluded.is_primary, type = excluded.type",
};

const PHONES: ChildTable = ChildTable {
    delete_stale: "DELETE FROM user_phones
              WHERE integrated_account_id = $1 AND user_id = ANY($2::text[])
                AND (user_id, position) NOT IN (SELECT * FROM unnest($3::text[], $4::int[]))",
    upsert_changed: "INSERT INTO user_phones (integrated_account_id, user_id, position, number, extension, type)
         SELECT $1, n.user_id, n.position, n.number, n.extension, n.type
           FROM unnest($2::text[], $3::int[], $4::text[], $5::text[], $6::text[])
                AS n(user_id, position, number, extension, type)
           LEFT JOIN user_phones p
                  ON p.integrated_account_id = $1 AND p.user_id = n.user_id AND p.position = n.position
          WHERE p.user_id IS NULL
             OR (p.number, p.extension, p.type) IS DISTINCT FROM (n.number, n.extension, n.type)
         ON CONFLICT (integrated_account_id, user_id, position) DO UPDATE
            SET number = excluded.number, extension = excluded.extension, type = excluded.type",
};

/// Brings an ordered child table in line for changed `users`: their stale positions are
/// dropped and only differing rows written, so identical rows are untouched.
async fn sync_children<'a, B>(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    table: &ChildTable,
    users: &[&'a UserRecord],
    rows: ChildRows<'a, B>,
) -> Result<(), StoreError>
where
    Vec<B>: sqlx::Encode<'a, Postgres> + sqlx::Type<Postgres> + Send + 'a,
{
    if users.is_empty() {
        return Ok(());
    }
    let owners: Vec<&str> = users.iter().map(|u| u.id.as_str()).collect();
    // Lookups by key: planned per execution (see write_users).
    sqlx::query(table.delete_stale)
        .persistent(false)
        .bind(account)
        .bind(&owners)
        .bind(&rows.user_ids)
        .bind(&rows.positions)
        .execute(&mut **tx)
        .await?;
    if rows.user_ids.is_empty() {
        return Ok(());
    }
    sqlx::query(table.upsert_changed)
        .persistent(false)
        .bind(account)
        .bind(rows.user_ids)
        .bind(rows.positions)
        .bind(rows.a)
        .bind(rows.b)
        .bind(rows.c)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn sync_emails(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    users: &[&UserRecord],
) -> Result<(), StoreError> {
    let rows = ChildRows::collect(
        users,
        |u| &u.emails,
        |e| (e.email.as_deref(), e.is_primary, e.kind.as_deref()),
    );
    sync_children(tx, account, &EMAILS, users, rows).await
}

async fn sync_phones(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    users: &[&UserRecord],
) -> Result<(), StoreError> {
    let rows = ChildRows::collect(
        users,
        |u| &u.phones,
        |p| {
            (
                p.number.as_deref(),
                p.extension.as_deref(),
                p.kind.as_deref(),
            )
        },
    );
    sync_children(tx, account, &PHONES, users, rows).await
}

async fn sync_managers(
    tx: &mut Transaction<'_, Postgres>,
    account: Uuid,
    users: &[&UserRecord],
) -> Result<(), StoreError> {
    let without: Vec<&str> = users
        .iter()
        .filter(|u| u.manager.is_none())
        .map(|u| u.id.as_str())
        .collect();
    if !without.is_empty() {
        sqlx::query(
            "DELETE FROM user_managers WHERE integrated_account_id = $1 AND user_id = ANY($2::text[])",
        )
        .persistent(false)
        .bind(account)
        .bind(&without)
        .execute(&mut **tx)
        .await?;
    }
    let with: Vec<(&str, &crate::model::Manager)> = users
        .iter()
        .filter_map(|u| u.manager.as_ref().map(|m| (u.id.as_str(), m)))
        .collect();
    if with.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = with.iter().map(|(id, _)| *id).collect();
    let mids: Vec<Option<&str>> = with.iter().map(|(_, m)| m.id.as_deref()).collect();
    let names: Vec<Option<&str>> = with.iter().map(|(_, m)| m.name.as_deref()).collect();
    let emails: Vec<Option<&str>> = with.iter().map(|(_, m)| m.emails.as_deref()).collect();
    let sql = "INSERT INTO user_managers (integrated_account_id, user_id, manager_id, manager_name, manager_emails)
         SELECT $1, n.user_id, n.manager_id, n.manager_name, n.manager_emails::jsonb
           FROM unnest($2::text[], $3::text[], $4::text[], $5::text[])
                AS n(user_id, manager_id, manager_name, manager_emails)
           LEFT JOIN user_managers m ON m.integrated_account_id = $1 AND m.user_id = n.user_id
          WHERE m.user_id IS NULL
             OR (m.manager_id, m.manager_name, m.manager_emails)
                IS DISTINCT FROM (n.manager_id, n.manager_name, n.manager_emails::jsonb)
         ON CONFLICT (integrated_account_id, user_id) DO UPDATE
            SET manager_id = excluded.manager_id, manager_name = excluded.manager_name,
                manager_emails = excluded.manager_emails";
    sqlx::query(sql)
        .bind(account)
        .bind(&ids)
        .bind(&mids)
        .bind(&names)
        .bind(&emails)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_ids_never_forget_and_rarely_imagine() {
        let mut seen = SeenIds::new(7);
        for i in 0..200_000 {
            seen.insert(&i.to_string());
        }
        assert!(
            (0..200_000).all(|i| seen.contains(&i.to_string())),
            "no false negatives"
        );
        let false_positives = (200_000..400_000)
            .filter(|i| seen.contains(&i.to_string()))
            .count();
        assert!(false_positives <= 2, "{false_positives}");
        // Another run's seed gives other positions.
        let other = SeenIds::new(8);
        assert!(!other.contains("1"));
    }

    #[test]
    fn seen_ids_are_sized_to_the_account_within_bounds() {
        assert_eq!(SeenIds::sized(1, 0).bytes(), 8 << 10, "at least 64 Kibit");
        assert_eq!(SeenIds::sized(1, 300).bytes(), 32 << 10);
        assert_eq!(SeenIds::sized(1, 100_000).bytes(), 8 << 20);
        assert_eq!(SeenIds::sized(1, 10_000_000).bytes(), 8 << 20, "capped");
        // A small filter filled as sized still rarely imagines.
        let mut seen = SeenIds::sized(3, 1_000);
        for i in 0..1_000 {
            seen.insert(&format!("u{i}"));
        }
        assert!((0..1_000).all(|i| seen.contains(&format!("u{i}"))));
        let fp = (0..100_000)
            .filter(|i| seen.contains(&format!("v{i}")))
            .count();
        assert!(fp <= 1, "{fp}");
    }

    #[test]
    fn statistics_are_refreshed_at_growing_thresholds() {
        assert!(!analyze_due(0, 1_999));
        assert!(analyze_due(1_999, 2_000));
        assert!(!analyze_due(2_000, 7_999));
        assert!(analyze_due(7_000, 9_000));
        assert!(analyze_due(0, 100_000));
        assert!(!analyze_due(128_000, 500_000));
    }

    #[test]
    fn copy_fields_escape_what_copy_text_format_needs() {
        let mut s = String::new();
        copy_line(&mut s, &[Some("a\tb"), None, Some("c\\d\ne\rf")]);
        assert_eq!(s, "a\\tb\t\\N\tc\\\\d\\ne\\rf\n");
    }

    #[test]
    fn the_delete_guard_allows_up_to_the_share_and_refuses_beyond() {
        assert_eq!(delete_guard(5, 10, 0.5), None);
        assert!(delete_guard(6, 10, 0.5).is_some());
        assert!(delete_guard(10, 10, 0.5).unwrap().contains("10 of 10"));
        assert_eq!(delete_guard(10, 10, 1.0), None);
    }
}
