//! The schema: applying migrations (as the schema's owner), and checking it without changing
//! it (for read-only commands and processes that run with DML rights only), including what a
//! binary does when a newer one has migrated the database.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::migrate::MigrateError;
use sqlx::postgres::PgConnection;
use sqlx::{ConnectOptions, Row};

use super::locks::HOLDER;
use super::{NoConnection, Store, StoreError, MIGRATE_APPLICATION_NAME};
use crate::domain::BoxFuture;

/// Every migration this binary knows, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Where the database's schema stands against this binary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaState {
    /// Migrations this binary knows that are not applied.
    pub pending: Vec<i64>,
    /// Applied migrations this binary does not know, marked compatible with it.
    pub newer_compatible: Vec<i64>,
    /// Applied migrations this binary does not know and may not run against.
    pub newer_incompatible: Vec<i64>,
}

impl SchemaState {
    /// The newest migration this binary knows.
    pub fn known() -> i64 {
        MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// Ready for this binary: nothing pending, nothing newer that it cannot run against.
    pub fn ready(&self) -> Result<(), StoreError> {
        if !self.newer_incompatible.is_empty() {
            return Err(StoreError::Incompatible(self.newer_incompatible.clone()));
        }
        if !self.pending.is_empty() {
            return Err(StoreError::NotMigrated(self.pending.clone()));
        }
        Ok(())
    }
}

impl Store {
    /// Reads where the schema stands, without changing anything.
    pub async fn schema_state(&self) -> Result<SchemaState, StoreError> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        let applied: Vec<i64> = if exists {
            sqlx::query_scalar(
                "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
            )
            .fetch_all(&self.pool)
            .await?
        } else {
            Vec::new()
        };
        let mut state = SchemaState {
            pending: MIGRATOR
                .iter()
                .map(|m| m.version)
                .filter(|v| !applied.contains(v))
                .collect(),
            ..SchemaState::default()
        };
        let newer: Vec<i64> = applied
            .into_iter()
            .filter(|v| !MIGRATOR.iter().any(|m| m.version == *v))
            .collect();
        if newer.is_empty() {
            return Ok(state);
        }
        // A migration newer than migration_compat itself always has a row when it is
        // compatible; one without (or a database without the table) is not.
        let compat: Vec<(i64, i64)> =
            sqlx::query_as("SELECT version, oldest_compatible FROM migration_compat")
                .fetch_all(&self.pool)
                .await
                .unwrap_or_default();
        let known = SchemaState::known();
        for v in newer {
            match compat.iter().find(|(version, _)| *version == v) {
                Some((_, oldest)) if *oldest <= known => state.newer_compatible.push(v),
                _ => state.newer_incompatible.push(v),
            }
        }
        Ok(state)
    }

    /// Creates the schema when missing and applies pending migrations. Refuses a database
    /// migrated by a newer binary unless its newer migrations are marked compatible. Safe to
    /// run from several processes at once: sqlx serializes migrations with an advisory lock.
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
        let state = self.schema_state().await?;
        if !state.newer_incompatible.is_empty() {
            return Err(StoreError::Incompatible(state.newer_incompatible));
        }
        let mut migrator = sqlx::migrate::Migrator {
            migrations: MIGRATOR.migrations.clone(),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        // Newer migrations marked compatible are left as they are.
        migrator.set_ignore_missing(true);
        // On a connection of its own, closed at the end whatever happened: sqlx keeps its
        // migration lock (a session advisory lock) when a migration fails, which on a pooled
        // connection would hold up every later attempt, this process's and every other's,
        // for as long as that connection lived.
        let waited = self.pool.options().get_acquire_timeout();
        let opts = self.options().application_name(MIGRATE_APPLICATION_NAME);
        let mut conn = match tokio::time::timeout(waited, opts.connect()).await {
            Ok(conn) => conn?,
            Err(_) => {
                return Err(StoreError::NoConnection {
                    waited_secs: waited.as_secs(),
                    why: NoConnection::Refused("the migrating connection did not open".into()),
                })
            }
        };
        let ran = self.run_watched(&migrator, &mut conn).await;
        if ran.is_err() {
            // Released here, before returning, rather than by the backend's exit after the
            // close, which the server completes a moment later: whoever acts on the error
            // (the next attempt, a test, another replica) finds the lock free.
            let _ = sqlx::Executor::execute(&mut conn, "SELECT pg_advisory_unlock_all()").await;
        }
        let _ = sqlx::Connection::close(conn).await;
        ran
    }

    /// Applies `migrator` on `conn` with a lock timeout, and says who held the lock it gave up
    /// on. Without a timeout an `ALTER TABLE` behind one long transaction (an analyst's open
    /// session, a report) waits as long as that transaction, and every query on the table,
    /// older replicas' included, queues behind it: the fleet would stop for a lock.
    async fn run_watched(
        &self,
        migrator: &sqlx::migrate::Migrator,
        conn: &mut PgConnection,
    ) -> Result<(), StoreError> {
        // Through the executor's boxed futures: sqlx's generic query futures on `&mut
        // PgConnection` are not provably `Send` here (see `migrate`).
        let pid: i32 = sqlx::Executor::fetch_one(&mut *conn, "SELECT pg_backend_pid()")
            .await?
            .try_get(0)?;
        // A number, bounded by the configuration's check: nothing else is spliced in.
        let timeout = self.migration_lock_timeout_secs;
        let set = format!("SET lock_timeout = '{timeout}s'");
        sqlx::Executor::execute(&mut *conn, set.as_str()).await?;
        // Who holds what the migration waits for is known only while it waits: looked at
        // from a pooled connection until it ends (a query per look, only while migrating).
        let mut seen = None;
        let ran = {
            let watch = async {
                loop {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if let Ok(Some(wait)) = self.lock_wait_of(pid).await {
                        seen = Some(wait);
                    }
                }
            };
            // Boxed as `Send` for the reason `migrate` is.
            let run: BoxFuture<'_, Result<(), MigrateError>> =
                Box::pin(migrator.run_direct(&mut *conn));
            tokio::select! {
                ran = run => ran,
                _ = watch => unreachable!("the watch loops until the migration ends"),
            }
        };
        let Err(e) = ran else {
            return Ok(());
        };
        let Some(migration) = lock_timed_out(&e) else {
            return Err(e.into());
        };
        let (waiting_for, holders, transactions) = seen.unwrap_or_default();
        Err(StoreError::MigrationLocked(LockWait {
            migration,
            timeout_secs: timeout,
            waiting_for,
            holders,
            transactions,
        }))
    }

    /// What backend `pid` waits for (a table's lock, the migration lock) and who holds it; `None`
    /// when it waits for nothing.
    async fn lock_wait_of(&self, pid: i32) -> Result<Option<LockHolders>, StoreError> {
        let waiting_for: Option<String> = sqlx::query_scalar(
            "SELECT CASE l.locktype
                        WHEN 'relation' THEN 'a lock on table ' || l.relation::regclass::text
                        WHEN 'advisory' THEN 'the migration lock (another process is applying migrations)'
                        ELSE 'a lock (' || l.locktype || ')'
                    END
               FROM pg_locks l
              WHERE l.pid = $1 AND NOT l.granted
              LIMIT 1",
        )
        .bind(pid)
        .fetch_optional(&self.pool)
        .await?;
        let Some(waiting_for) = waiting_for else {
            return Ok(None);
        };
        // Who, not what: a session's query text is not shown (it may hold personal data);
        // its pid finds it in pg_stat_activity.
        let holders: Vec<(i32, Option<DateTime<Utc>>, String)> = sqlx::query_as(&format!(
            "SELECT a.pid, a.xact_start, {HOLDER}
               FROM pg_stat_activity a
              WHERE a.pid = ANY (pg_blocking_pids($1))
              ORDER BY a.pid"
        ))
        .bind(pid)
        .fetch_all(&self.pool)
        .await?;
        let transactions = holders.iter().map(|(p, x, _)| (*p, *x)).collect();
        let holders = holders.into_iter().map(|(_, _, h)| h).collect();
        Ok(Some((waiting_for, holders, transactions)))
    }

    /// Whether any of the transactions that held up `wait` is still open. Reads only
    /// `pg_stat_activity`: it queues behind no lock. `None` when there is nothing to look
    /// at (no holder seen, or one this cannot follow: a prepared transaction has no session).
    /// A holder of another role whose transaction start this role may not see (without
    /// `pg_read_all_stats`) counts as open until its session ends.
    pub async fn lock_holders_remain(&self, wait: &LockWait) -> Result<Option<bool>, StoreError> {
        let followed =
            !wait.transactions.is_empty() && wait.transactions.iter().all(|(p, _)| *p != 0);
        if !followed {
            return Ok(None);
        }
        let (pids, starts): (Vec<i32>, Vec<Option<DateTime<Utc>>>) =
            wait.transactions.iter().copied().unzip();
        let remain: bool = sqlx::query_scalar(
            "SELECT EXISTS (
                 SELECT 1 FROM pg_stat_activity a
                   JOIN unnest($1::int[], $2::timestamptz[]) AS h (pid, xact_start)
                     ON a.pid = h.pid AND a.xact_start IS NOT DISTINCT FROM h.xact_start)",
        )
        .bind(pids)
        .bind(starts)
        .fetch_one(&self.pool)
        .await?;
        Ok(Some(remain))
    }

    /// The server's version as a number (`server_version_num`: 150008 for 15.8).
    pub async fn server_version_num(&self) -> Result<i32, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// How many more sessions this role may open on this database now, by the strictest of
    /// the server's `max_connections` (less its superuser-reserved slots), the role's and the
    /// database's `CONNECTION LIMIT`, each less the client sessions already counted against it
    /// (this one aside): what `check` holds a process's sessions against.
    pub async fn connection_room(&self) -> Result<ConnectionRoom, StoreError> {
        let (max, reserved, server_used, role_limit, role_used, db_limit, db_used): (
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
            i64,
        ) = sqlx::query_as(
            "WITH c AS (
                 SELECT usename, datname FROM pg_stat_activity
                  WHERE backend_type = 'client backend' AND pid <> pg_backend_pid())
             SELECT current_setting('max_connections')::bigint,
                    current_setting('superuser_reserved_connections')::bigint
                      + coalesce(nullif(current_setting('reserved_connections', true), '')::bigint, 0),
                    (SELECT count(*) FROM c),
                    (SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user)::bigint,
                    (SELECT count(*) FROM c WHERE usename = current_user),
                    (SELECT datconnlimit FROM pg_database WHERE datname = current_database())::bigint,
                    (SELECT count(*) FROM c WHERE datname = current_database())",
        )
        .fetch_one(&self.pool)
        .await?;
        let mut room = ConnectionRoom {
            room: max - reserved - server_used,
            bound: format!(
                "max_connections {max} (less {reserved} reserved), {server_used} in use"
            ),
        };
        for (limit, used, whose) in [
            (role_limit, role_used, "the role's CONNECTION LIMIT"),
            (db_limit, db_used, "the database's CONNECTION LIMIT"),
        ] {
            if limit >= 0 && limit - used < room.room {
                room = ConnectionRoom {
                    room: limit - used,
                    bound: format!("{whose} {limit}, {used} in use"),
                };
            }
        }
        room.room = room.room.max(0);
        Ok(room)
    }

    /// Why this role's sessions cannot write here, if they cannot: the server is a standby
    /// (a read replica, or a failover not finished), or `default_transaction_read_only` is on
    /// for the role, the database or the server. `None` when they can.
    pub async fn refuses_writes(&self) -> Result<Option<String>, StoreError> {
        let refused = no_writes(&self.pool).await?;
        if refused.is_some() {
            // This session stays so: the next look, or write, is on a new one.
            super::read_only::seen();
        }
        Ok(refused.map(|r| r.why().to_string()))
    }

    /// The schema's triggers that are disabled (`ALTER TABLE … DISABLE TRIGGER`), as
    /// `(table, trigger)`: with `accounts_record_actions` off, changes of the registry go
    /// unrecorded in `account_actions`. Reads the catalog only.
    pub async fn disabled_triggers(&self) -> Result<Vec<(String, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT c.relname::text, t.tgname::text FROM pg_trigger t
               JOIN pg_class c ON c.oid = t.tgrelid
              WHERE c.relnamespace = current_schema()::regnamespace
                AND NOT t.tgisinternal AND t.tgenabled = 'D'
              ORDER BY 1, 2",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// What the connected role lacks of the rights docs/schema.md ("Roles") grants the
    /// service: USAGE on the schema; SELECT, INSERT, UPDATE and DELETE on each of its tables
    /// (only SELECT on `account_actions`, `_sqlx_migrations` and `migration_compat`);
    /// USAGE on its sequences; EXECUTE on its functions. Each as "INSERT on table users"; empty
    /// when nothing is missing. Reads the catalog only.
    pub async fn missing_privileges(&self) -> Result<Vec<String>, StoreError> {
        let missing: Vec<String> = sqlx::query_scalar(
            "SELECT 'USAGE on schema ' || n.nspname
               FROM pg_namespace n
              WHERE n.nspname = $1 AND NOT has_schema_privilege(n.oid, 'USAGE')
             UNION ALL
             SELECT * FROM (
               SELECT p.privilege || ' on table ' || c.relname
                 FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                -- The operators' trail is written by its trigger as the owner, the migrations'
                -- record by the owner's migrations: the service only reads them, and may be
                -- kept from changing them (docs/schema.md, Roles).
                CROSS JOIN unnest(CASE WHEN c.relname IN ('account_actions', '_sqlx_migrations',
                                                          'migration_compat')
                                       THEN ARRAY['SELECT']
                                       ELSE ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE'] END)
                           AS p (privilege)
                WHERE n.nspname = $1 AND c.relkind IN ('r', 'p')
                  AND NOT has_table_privilege(c.oid, p.privilege)
                ORDER BY c.relname, array_position(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE'], p.privilege)
             ) t
             UNION ALL
             SELECT * FROM (
               SELECT 'USAGE on sequence ' || c.relname
                 FROM pg_class c
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                -- (In a CASE: the planner may test a row before the relkind filter, and
                -- has_sequence_privilege fails on anything but a sequence.)
                WHERE n.nspname = $1
                  AND CASE WHEN c.relkind = 'S' THEN NOT has_sequence_privilege(c.oid, 'USAGE') END
                ORDER BY c.relname
             ) s
             UNION ALL
             SELECT * FROM (
               SELECT 'EXECUTE on function ' || f.oid::regprocedure::text
                 FROM pg_proc f
                 JOIN pg_namespace n ON n.oid = f.pronamespace
                WHERE n.nspname = $1 AND NOT has_function_privilege(f.oid, 'EXECUTE')
                ORDER BY 1
             ) f",
        )
        .bind(&self.schema)
        .fetch_all(&self.pool)
        .await?;
        Ok(missing)
    }

    /// Makes the schema ready for this binary: migrates when `migrate`, otherwise only checks
    /// (a process with DML rights only, or a read-only command).
    pub async fn prepare(&self, migrate: bool) -> Result<(), StoreError> {
        if migrate {
            self.migrate().await
        } else {
            self.schema_state().await?.ready()
        }
    }

    /// [`Store::prepare`] for a process that writes the mirror: first, a database that accepts
    /// no writes (a standby, read-only sessions) is [`StoreError::ReadOnly`], said before
    /// anything fails on it.
    pub async fn prepare_to_write(&self, migrate: bool) -> Result<(), StoreError> {
        self.choose_host().await;
        if let Some(why) = self.refuses_writes().await? {
            return Err(StoreError::ReadOnly(why));
        }
        self.prepare(migrate).await
    }

    /// True when every migration this binary knows is applied and nothing newer forbids it.
    pub async fn migrations_applied(&self) -> Result<bool, StoreError> {
        Ok(self.schema_state().await?.ready().is_ok())
    }
}

/// Why a session cannot write.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum NoWrites {
    /// The server is in recovery.
    Standby,
    /// `transaction_read_only` is on for the session.
    ReadOnlySessions,
}

impl NoWrites {
    /// What it is, and what to do.
    fn why(self) -> &'static str {
        match self {
            NoWrites::Standby => {
                "the server is a standby (in recovery: a read replica, or a failover not \
                 finished); point database.url at the primary"
            }
            NoWrites::ReadOnlySessions => {
                "this role's sessions are read-only (default_transaction_read_only is on, set \
                 for the role, the database or the server; some managed PostgreSQL services \
                 set it while storage is nearly full); lms-sync writes the mirror: turn it off \
                 (ALTER ROLE, ALTER DATABASE or the server's parameters) or free storage"
            }
        }
    }
}

/// Whether the session `e` runs on can write, and why not: one query, for the store's look
/// ([`Store::refuses_writes`]) and for a host's ([`Store::choose_host`]).
pub(super) async fn no_writes<'e>(
    e: impl sqlx::PgExecutor<'e>,
) -> Result<Option<NoWrites>, sqlx::Error> {
    let (standby, read_only): (bool, bool) = sqlx::query_as(
        "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'",
    )
    .fetch_one(e)
    .await?;
    Ok(if standby {
        Some(NoWrites::Standby)
    } else if read_only {
        Some(NoWrites::ReadOnlySessions)
    } else {
        None
    })
}

/// What a backend waits for, who holds it (described), and their transactions (pid and start).
type LockHolders = (String, Vec<String>, Vec<(i32, Option<DateTime<Utc>>)>);

/// The migration a lock timeout stopped (`None` before any: the migration lock itself), or
/// `None` outside when `e` is not a lock timeout.
fn lock_timed_out(e: &MigrateError) -> Option<Option<i64>> {
    let (e, migration) = match e {
        MigrateError::ExecuteMigration(e, version) => (e, Some(*version)),
        MigrateError::Execute(e) => (e, None),
        _ => return None,
    };
    let lock_not_available =
        matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("55P03"));
    lock_not_available.then_some(migration)
}

/// A migration that gave up waiting for a lock: which, for what, and who held it.
#[derive(Debug, Clone, PartialEq)]
pub struct LockWait {
    /// The migration's version; `None` when it waited for the migration lock itself.
    pub migration: Option<i64>,
    pub timeout_secs: u64,
    /// What it waited for ("a lock on table …", "the migration lock (…)"), as seen while it
    /// waited (empty if it was never seen waiting).
    pub waiting_for: String,
    /// The sessions holding it (or ahead of it in the queue).
    pub holders: Vec<String>,
    /// Those sessions' transactions as pid and start (pid 0: a prepared transaction), to
    /// tell when they have ended without queueing for the lock again.
    pub transactions: Vec<(i32, Option<DateTime<Utc>>)>,
}

impl std::fmt::Display for LockWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.migration {
            Some(v) => write!(f, "migration {v}")?,
            None => write!(f, "applying migrations")?,
        }
        let waiting_for = match self.waiting_for.as_str() {
            "" => "a lock",
            what => what,
        };
        write!(
            f,
            " gave up after waiting {} s (database.migration_lock_timeout_secs) for {waiting_for}",
            self.timeout_secs
        )?;
        if !self.holders.is_empty() {
            write!(f, " held by {}", self.holders.join("; "))?;
        }
        write!(
            f,
            ", so as not to hold up the queries queued behind it; nothing of it was applied. \
             It is tried again (the service by itself, a command when run again); to let it \
             through, end those sessions or wait for them"
        )
    }
}

/// How many more sessions this role may open now ([`Store::connection_room`]), and the limit
/// that says so, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRoom {
    pub room: i64,
    /// `max_connections 100 (less 3 reserved), 12 in use`, or the role's or database's limit.
    pub bound: String,
}
