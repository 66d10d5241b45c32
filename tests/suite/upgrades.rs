//! Least privilege and safe upgrades, with the real binary: migrations as a separate step by
//! the schema's owner, the service and the read-only commands as roles without DDL rights
//! (granted as docs/schema.md says), and an older binary meeting a schema a newer one migrated.

use std::process::Output;
use std::time::{Duration, Instant};

use crate::analysts::{poll_feed, Position};
use crate::helpers::daemon::{query_one, BIN};
use crate::helpers::*;
use lms_sync::devkit::simulator::{Fault, Integrated, DEMO_TOKEN};
use lms_sync::store::SchemaState;
use uuid::Uuid;

/// Runs the binary with `db` as its database and `args`.
async fn lms_sync(env: &Env, db: &str, args: &[&str]) -> Output {
    lms_sync_with(env, db, args, &[]).await
}

/// [`lms_sync`] with more environment variables.
async fn lms_sync_with(env: &Env, db: &str, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let cfg = crate::helpers::daemon::config(&env.sim, &[account_id(1)], "1h", 2);
    lms_sync_as(&cfg, db, args, vars).await
}

/// `lms-sync --config cfg <args>` against `db`, with the simulator's token unless `vars` set
/// another, logging in the pretty format.
async fn lms_sync_as(
    cfg: &std::path::Path,
    db: &str,
    args: &[&str],
    vars: &[(&str, &str)],
) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TRUTO_API_TOKEN", DEMO_TOKEN)
        .env("LMS_SYNC__DATABASE__URL", db)
        .env("LMS_SYNC__LOG__FORMAT", "pretty")
        .env("NO_COLOR", "1")
        .envs(vars.iter().copied())
        .args(["--config", cfg.to_str().unwrap()])
        .args(args)
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("finishes within a minute")
        .expect("run lms-sync")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fenced block of docs/schema.md whose info string is `sql <name>`, with `role` for the
/// role it creates and grants to.
fn grants(name: &str, role: &str) -> Vec<String> {
    let doc = include_str!("../../docs/schema.md");
    let fence = format!("```sql {name}\n");
    let start = doc.find(&fence).expect("the GRANTs are in docs/schema.md") + fence.len();
    let end = start + doc[start..].find("```").unwrap();
    let default_role = match name {
        "service-role" => "lms_sync_service",
        _ => "lms_analyst",
    };
    doc[start..end]
        .split(";\n")
        .map(|s| s.trim())
        .filter(|s| !s.is_empty() && !s.starts_with("--"))
        .map(|s| s.replace(default_role, role).replace("PASSWORD '…'", ""))
        .collect()
}

/// A new login role (cluster-wide, so its name is unique per test) with `name`'s grants.
async fn role(env: &Env, name: &str) -> (String, String) {
    let role = format!("r_{}", Uuid::new_v4().simple());
    for sql in grants(name, &role) {
        sqlx::raw_sql(&sql)
            .execute(env.store.pool())
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let mut url = reqwest::Url::parse(&env.db_url).unwrap();
    url.set_username(&role).unwrap();
    url.set_password(None).unwrap();
    (role, url.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_as_a_role_without_ddl_rights_after_the_owner_migrated() {
    let a = account_id(1);
    let env = Env::new(&[(a, 150)]).await;
    let (service, service_url) = role(&env, "service-role").await;

    // Without --no-migrate the service role would need DDL rights; with it, it only checks.
    let synced = lms_sync(&env, &service_url, &["--no-migrate", "sync"]).await;
    assert!(synced.status.success(), "{}", stderr(&synced));
    assert_mirror(&env.store, &env.sim, a).await;
    let status = lms_sync(&env, &service_url, &["status"]).await;
    assert!(status.status.success(), "{}", stderr(&status));
    // The same with the config key, and a second run that changes and deletes users.
    env.sim.delete_user(a, "3");
    env.sim
        .update_user(a, "4", serde_json::json!({"name": "Renamed"}));
    let mut cmd_env = lms_sync(&env, &service_url, &["sync"]).await;
    if !cmd_env.status.success() {
        // `database.migrate = true` needs the owner's rights: it must say so, not half-work.
        assert!(
            stderr(&cmd_env).contains("migrations"),
            "{}",
            stderr(&cmd_env)
        );
        cmd_env = lms_sync(&env, &service_url, &["--no-migrate", "sync"]).await;
    }
    assert!(cmd_env.status.success(), "{}", stderr(&cmd_env));
    assert_mirror(&env.store, &env.sim, a).await;
    // And as the service: `run` with the role, until a run has finished.
    env.sim.add_users(a, 3);
    let cfg = crate::helpers::daemon::config(&env.sim, &[a], "1h", 2);
    let mut daemon = crate::helpers::daemon::spawn_with(&cfg, &service_url, &["--no-migrate"]);
    let finished = daemon.wait_for("sync run finished").await;
    assert_eq!(finished["fields"]["outcome"], "succeeded", "{finished}");
    assert_eq!(daemon.terminate().await, 0);
    assert_mirror(&env.store, &env.sim, a).await;
    // The role really has no DDL rights.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&service_url)
        .await
        .unwrap();
    let ddl = sqlx::query("CREATE TABLE lms.nope (x int)")
        .execute(&mut conn)
        .await;
    assert!(ddl.is_err(), "{service} could create a table");

    // An analyst reads everything and writes nothing.
    let (_, analyst_url) = role(&env, "analyst-role").await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&analyst_url)
        .await
        .unwrap();
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM lms.live_users")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(live, 152);
    let at: i64 = sqlx::query_scalar("SELECT count(*) FROM lms.users_at($1, now())")
        .bind(a)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(at, 153);
    let write = sqlx::query("DELETE FROM lms.users")
        .execute(&mut conn)
        .await;
    assert!(write.is_err(), "an analyst could delete users");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_never_run_ddl() {
    let env = Env::new(&[(account_id(1), 10)]).await;
    let fresh = fresh_database_url().await;

    let status = lms_sync(&env, &fresh, &["status"]).await;

    assert_eq!(status.status.code(), Some(1), "{}", stderr(&status));
    assert!(
        stderr(&status).contains("lms-sync migrate"),
        "{}",
        stderr(&status)
    );
    let store = crate::helpers::daemon::store_for(&fresh).await;
    let schema: Option<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE nspname = 'lms'")
            .fetch_optional(store.pool())
            .await
            .unwrap();
    assert_eq!(schema, None, "status created the schema");
    // --no-migrate refuses to write to an unmigrated database, and says what to do.
    let sync = lms_sync(&env, &fresh, &["--no-migrate", "sync"]).await;
    assert_eq!(sync.status.code(), Some(1));
    assert!(
        stderr(&sync).contains("pending migrations"),
        "{}",
        stderr(&sync)
    );
    // `migrate` is the step that creates it.
    let migrate = lms_sync(&env, &fresh, &["migrate"]).await;
    assert!(migrate.status.success(), "{}", stderr(&migrate));
    let status = lms_sync(&env, &fresh, &["status"]).await;
    assert!(status.status.success(), "{}", stderr(&status));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_migrated_by_a_newer_version_stops_older_binaries_unless_marked_compatible() {
    let a = account_id(1);
    let env = Env::new(&[(a, 50)]).await;
    // What a newer release would have left: a migration this binary does not know.
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (9999, 'from the future', true, '\\x00', 1)",
    )
    .execute(env.store.pool())
    .await
    .unwrap();

    for args in [&["sync"][..], &["status"], &["migrate"]] {
        let o = lms_sync(&env, &env.db_url, args).await;
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("9999"), "{args:?}: {}", stderr(&o));
    }
    // The service does not wait behind a green /readyz: it stops, within seconds.
    let started = Instant::now();
    let run = lms_sync(&env, &env.db_url, &["run"]).await;
    assert_eq!(run.status.code(), Some(1), "{}", stderr(&run));
    assert!(stderr(&run).contains("9999"), "{}", stderr(&run));
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(env.sim.stats().requests, 0);

    // The newer release marks its migration compatible with this one: it runs.
    sqlx::query("INSERT INTO migration_compat (version, oldest_compatible) VALUES (9999, 8)")
        .execute(env.store.pool())
        .await
        .unwrap();
    let o = lms_sync(&env, &env.db_url, &["sync"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
    assert_mirror(&env.store, &env.sim, a).await;
    let o = lms_sync(&env, &env.db_url, &["status"]).await;
    assert!(o.status.success(), "{}", stderr(&o));
}

async fn limit_connections(env: &Env, role: &str, n: u32) {
    sqlx::raw_sql(&format!("ALTER ROLE {role} CONNECTION LIMIT {n}"))
        .execute(env.store.pool())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_a_connection_slot_fails_the_sync_saying_so_and_keeps_the_mirror() {
    let a = account_id(1);
    let env = Env::new(&[(a, 150)]).await;
    let (service, service_url) = role(&env, "service-role").await;
    let synced = lms_sync(&env, &service_url, &["--no-migrate", "sync"]).await;
    assert!(synced.status.success(), "{}", stderr(&synced));
    // What a server whose max_connections are taken (by other replicas, other applications)
    // answers: a role's limit gives the same SQLSTATE, 53300, without restarting the cluster.
    // One slot: the process's first connection takes it, and it needs more.
    wait_for_no_session(&env, Sessions::OfRole(&service)).await;
    limit_connections(&env, &service, 1).await;
    env.sim.delete_user(a, "3");
    let quick = [
        ("LMS_SYNC__DATABASE__CONNECT_TIMEOUT_SECS", "1"),
        ("LMS_SYNC__SYNC__DB_MAX_ATTEMPTS", "1"),
    ];
    let out = lms_sync_with(&env, &service_url, &["--no-migrate", "sync"], &quick).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // sqlx says only that its pool timed out; lms-sync says why, and what to do.
    assert!(
        err.contains(&format!("no database connection within 1 s: PostgreSQL refuses new connections (too many connections for role \"{service}\")"))
            && err.contains("sync.max_concurrent_accounts")
            && err.contains("raise the server's limit"),
        "{err}"
    );
    assert_eq!(
        env.store.live_users(a).await.unwrap(),
        150,
        "the mirror is kept"
    );
}

/// A pool that timed out is told apart: the server refusing connections, or every pooled
/// connection busy. (What a run records: the lease's connection, then the pool's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_timed_out_says_whether_the_server_or_the_pool_had_no_connection() {
    let a = account_id(1);
    let env = Env::new(&[(a, 10)]).await;
    let (service, service_url) = role(&env, "service-role").await;
    let settings = lms_sync::config::DatabaseSettings {
        max_connections: 1,
        connect_timeout_secs: 1,
        ..Default::default()
    };
    let store = lms_sync::store::Store::connect(&service_url.clone().into(), &settings)
        .await
        .unwrap();
    // The pool's one connection held: the pool is busy, the server has room.
    let held = store.pool().acquire().await.unwrap();
    let busy = store.registry().await.unwrap_err();
    assert!(busy.to_string().contains("pool timed out"), "{busy}");
    let busy = store.explain(busy).await.to_string();
    assert!(
        busy.starts_with("no database connection within 1 s: all 1 of this process's pooled connections (database.max_connections) were in use"),
        "{busy}"
    );
    drop(held);
    // The role's one slot is the pool's connection: a lease's finds none.
    limit_connections(&env, &service, 1).await;
    let Err(refused) = store.try_lease(a).await else {
        panic!("a lease beyond the role's connection limit");
    };
    let refused = store.explain(refused).await.to_string();
    assert!(
        refused.contains("PostgreSQL refuses new connections (too many connections for role"),
        "{refused}"
    );
    // Other errors are told as they are.
    let other = store
        .explain(lms_sync::store::StoreError::PreviousFailed)
        .await;
    assert!(matches!(other, lms_sync::store::StoreError::PreviousFailed));
    assert_eq!(store.registry().await.unwrap().len(), 0);
}

/// A database whose migrations stop at `last`, as an older release left it.
async fn migrated_up_to(url: &str, last: i64) {
    let store = crate::helpers::daemon::store_for(url).await;
    sqlx::raw_sql("CREATE SCHEMA lms")
        .execute(store.pool())
        .await
        .unwrap();
    let older = sqlx::migrate::Migrator {
        migrations: lms_sync::store::MIGRATOR
            .iter()
            .filter(|m| m.version <= last)
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    older.run(store.pool()).await.unwrap();
}

/// An analyst's session with a transaction left open after reading `sync_state`: it holds
/// the table's ACCESS SHARE lock until it ends.
async fn analyst_reading_sync_state(url: &str) -> sqlx::PgConnection {
    session_holding(url, "analyst-notebook", "SELECT count(*) FROM sync_state").await
}

/// The newest migration applied, and whether migration 20's column is there.
async fn schema_at(store: &lms_sync::store::Store) -> (i64, bool) {
    let version: i64 = sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let column: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                         WHERE table_schema = 'lms' AND table_name = 'sync_state'
                           AND column_name = 'live_user_count')",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    (version, column)
}

/// Migration 20 alters `sync_state`, which every replica and many analysts' queries read.
/// Behind an open transaction it would wait as long as that transaction, and every query on
/// the table would queue behind it: it gives up after its lock timeout instead, names who
/// holds the lock, applies nothing, and goes through when run again after they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_behind_an_open_transaction_gives_up_naming_it_and_goes_through_later() {
    let env = Env::new(&[(account_id(1), 10)]).await;
    let url = fresh_database_url().await;
    migrated_up_to(&url, 19).await;
    let analyst = analyst_reading_sync_state(&url).await;
    let quick = [("LMS_SYNC__DATABASE__MIGRATION_LOCK_TIMEOUT_SECS", "1")];

    let out = lms_sync_with(&env, &url, &["migrate"], &quick).await;

    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("migration 20 gave up after waiting 1 s (database.migration_lock_timeout_secs) for a lock on table sync_state held by pid ")
            && err.contains("application analyst-notebook, idle in transaction, its transaction open since ")
            && err.contains("nothing of it was applied"),
        "{err}"
    );
    let store = crate::helpers::daemon::store_for(&url).await;
    assert_eq!(
        schema_at(&store).await,
        (19, false),
        "nothing of 20 applied"
    );
    drop(analyst);
    let out = lms_sync_with(&env, &url, &["migrate"], &quick).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(schema_at(&store).await, (SchemaState::known(), true));
}

/// A migration that gave up holds nothing afterwards (sqlx keeps its migration lock when a
/// migration fails: on a pooled connection it would stop every later attempt); a process
/// that finds another migrating says so when it gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_that_gave_up_holds_no_lock_and_one_behind_another_says_so() {
    use lms_sync::store::{LockWait, Store, StoreError};
    let url = fresh_database_url().await;
    migrated_up_to(&url, 19).await;
    let analyst = analyst_reading_sync_state(&url).await;
    let open = |timeout: u64| {
        let settings = lms_sync::config::DatabaseSettings {
            migration_lock_timeout_secs: timeout,
            ..Default::default()
        };
        let url = url.clone();
        async move { Store::connect(&url.into(), &settings).await.unwrap() }
    };
    let (first, second) = (open(5).await, open(1).await);
    let observer = crate::helpers::daemon::store_for(&url).await;

    // The first waits for the table, holding the migration lock; the second waits for that.
    let waiting = {
        let first = first.clone();
        tokio::spawn(async move { first.prepare(true).await })
    };
    for tries in 0.. {
        assert!(tries < 500, "the first never waited for the table");
        let on_table: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
              WHERE a.datname = current_database() AND a.application_name LIKE 'lms-sync%'
                AND l.locktype = 'relation' AND NOT l.granted",
        )
        .fetch_one(observer.pool())
        .await
        .unwrap();
        if on_table == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let behind = second.prepare(true).await.unwrap_err();
    let StoreError::MigrationLocked(LockWait {
        migration: None,
        timeout_secs: 1,
        waiting_for,
        holders,
        ..
    }) = &behind
    else {
        panic!("{behind}");
    };
    assert_eq!(
        waiting_for,
        "the migration lock (another process is applying migrations)"
    );
    assert!(
        holders.len() == 1 && holders[0].contains("application lms-sync"),
        "{holders:?}"
    );
    let gave_up = waiting.await.unwrap().unwrap_err();
    assert!(
        matches!(&gave_up, StoreError::MigrationLocked(w) if w.migration == Some(20) && w.waiting_for == "a lock on table sync_state" && w.holders.len() == 1 && w.holders[0].contains("analyst-notebook")),
        "{gave_up}"
    );

    // Nothing is left holding a lock (the first process is still there, its pool too): once
    // the analyst is done, the next attempt goes through.
    let advisory: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks
          WHERE locktype = 'advisory'
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(observer.pool())
    .await
    .unwrap();
    assert_eq!(advisory, 0, "the migration lock is still held");
    drop(analyst);
    second.prepare(true).await.unwrap();
    assert_eq!(schema_at(&observer).await, (SchemaState::known(), true));
    first.prepare(true).await.unwrap();
}

/// The service does not try a migration again while the transaction that held it up is still
/// open (each try would hold up every query on the table for another lock timeout): it looks
/// at that transaction without queueing for the lock, and migrates as soon as it has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_waits_for_the_transaction_holding_up_a_migration_and_then_migrates() {
    use crate::helpers::daemon;
    let env = Env::new(&[(account_id(1), 10)]).await;
    let url = fresh_database_url().await;
    migrated_up_to(&url, 19).await;
    let analyst = analyst_reading_sync_state(&url).await;
    let cfg = daemon::config(&env.sim, &[account_id(1)], "1h", 2);
    let mut service = daemon::spawn_env(
        &cfg,
        &url,
        &[],
        &[
            ("TRUTO_API_TOKEN", DEMO_TOKEN),
            ("LMS_SYNC__DATABASE__MIGRATION_LOCK_TIMEOUT_SECS", "1"),
        ],
    );

    let gave_up = loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), service.events.recv())
            .await
            .expect("the migration gave up within a minute")
            .expect("the service is running");
        if ev["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("database not ready"))
        {
            break ev;
        }
    };
    assert_eq!(
        gave_up["fields"]["message"],
        "database not ready; waiting for the sessions holding the lock to end"
    );
    let error = gave_up["fields"]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("migration 20 gave up") && error.contains("application analyst-notebook"),
        "{gave_up}"
    );
    // The analyst stays a while longer (3 s, three lock timeouts): meanwhile no lms-sync
    // session waits for a lock, so nothing queues the analysts' and replicas' queries.
    let observer = daemon::store_for(&url).await;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let queued: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
              WHERE a.datname = current_database() AND a.application_name LIKE 'lms-sync%'
                AND NOT l.granted",
        )
        .fetch_one(observer.pool())
        .await
        .unwrap();
        assert_eq!(
            queued, 0,
            "the service queued for the lock while it was held"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(analyst);

    let mut seen = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), service.events.recv())
            .await
            .expect("migrated within a minute of the analyst leaving")
            .expect("the service is running");
        let msg = ev["fields"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if msg == "database reachable; migrations applied" {
            break;
        }
        seen.push(msg);
    }
    assert!(
        !seen.iter().any(|m| m.starts_with("database not ready")),
        "tried again while the lock was held: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|m| m == "the sessions holding up the migration have ended; migrating again"),
        "{seen:?}"
    );
    assert_eq!(schema_at(&observer).await, (SchemaState::known(), true));
    assert_eq!(service.terminate().await, 0);
}

/// `lms-sync status`, run as the read-only analyst role, says which session of lms-sync waits
/// for a lock and who holds it, although that role cannot see other roles' queries or states.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_as_an_analyst_names_a_lock_a_session_of_lms_sync_waits_for() {
    let env = Env::new(&[(account_id(1), 10)]).await;
    assert!(env.sync(account_id(1)).await.succeeded());
    let (_, analyst_url) = role(&env, "analyst-role").await;
    let mut dba =
        session_holding(&env.db_url, "dba-reindex", "LOCK TABLE users IN SHARE MODE").await;
    // A write of lms-sync's behind it, as a page's would be.
    let mut writer = session_holding(&env.db_url, "lms-sync", "SELECT 1").await;
    let write = tokio::spawn(async move {
        sqlx::Executor::execute(&mut writer, "UPDATE users SET name = name WHERE id = '0'")
            .await
            .map(|_| ())
    });
    for tries in 0.. {
        assert!(tries < 500, "the write never waited a second");
        let waited: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks
              WHERE NOT granted AND waitstart < now() - interval '1 s'
                AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(env.store.pool())
        .await
        .unwrap();
        if waited == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let status = || {
        lms_sync_with(
            &env,
            &analyst_url,
            &["status"],
            &[("LMS_SYNC__DATABASE__LOCK_WAIT_WARN_SECS", "1")],
        )
    };

    let out = status().await;

    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    let line = stdout
        .lines()
        .find(|l| l.starts_with("waiting for a database lock: pid "))
        .unwrap_or_else(|| panic!("no lock wait in\n{stdout}"));
    assert!(
        line.contains("(lms-sync) has waited ")
            && line.contains(" for a lock on table users held by pid ")
            && line.contains("application dba-reindex"),
        "{line}"
    );
    sqlx::raw_sql("COMMIT").execute(&mut dba).await.unwrap();
    write.await.unwrap().unwrap();
    let out = status().await;
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("waiting for a database lock"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// A DBA's timeouts for the role or database (lms-sync sets none) cancel a write held up by a
/// lock: the sync fails saying which timeout it was and where it is set, and keeps the mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_set_for_the_database_fails_the_sync_saying_which_and_keeps_the_mirror() {
    let a = account_id(1);
    let env = Env::new(&[(a, 150)]).await;
    assert!(env.sync(a).await.succeeded());
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    // Every run begins by recording itself in sync_runs: held up at once.
    let mut dba = session_holding(
        &env.db_url,
        "dba-reindex",
        "LOCK TABLE sync_runs IN SHARE MODE",
    )
    .await;
    for (setting, says) in [
        (
            "lock_timeout",
            "longer than the lock_timeout set for this role or database",
        ),
        (
            "statement_timeout",
            "the statement_timeout set for this role or database ran out",
        ),
    ] {
        sqlx::raw_sql(&format!(
            "ALTER DATABASE \"{database}\" RESET ALL; ALTER DATABASE \"{database}\" SET {setting} = '1s'"
        ))
        .execute(env.store.pool())
        .await
        .unwrap();

        let out = lms_sync(&env, &env.db_url, &["sync"]).await;

        let said = said(&out);
        assert_eq!(out.status.code(), Some(1), "{setting}: {said}");
        assert!(
            said.contains(says) && said.contains("what was committed is kept"),
            "{setting}: {said}"
        );
    }
    sqlx::raw_sql("COMMIT").execute(&mut dba).await.unwrap();
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM users WHERE integrated_account_id = $1 AND deleted_at IS NULL",
    )
    .bind(a)
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert_eq!(live, 150, "the mirror is kept");
    sqlx::raw_sql(&format!("ALTER DATABASE \"{database}\" RESET ALL"))
        .execute(env.store.pool())
        .await
        .unwrap();
    let out = lms_sync(&env, &env.db_url, &["sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A role that lost a privilege it needs (a DBA's REVOKE, grants not run again after an
/// upgrade) fails the sync saying what to grant and where it is written, and keeps the mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_missing_a_privilege_fails_the_sync_saying_what_to_grant() {
    let a = account_id(1);
    let env = Env::new(&[(a, 150)]).await;
    let (service, service_url) = role(&env, "service-role").await;
    let first = lms_sync(&env, &service_url, &["--no-migrate", "sync"]).await;
    assert!(first.status.success(), "{}", stderr(&first));
    sqlx::raw_sql(&format!("REVOKE INSERT ON lms.users FROM {service}"))
        .execute(env.store.pool())
        .await
        .unwrap();
    env.sim.add_users(a, 3);

    let out = lms_sync(&env, &service_url, &["--no-migrate", "sync"]).await;

    let said = said(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("permission denied for table users")
            && said.contains("grant what docs/schema.md, Roles: least privilege, lists")
            && said.contains("what was committed is kept"),
        "{said}"
    );
    sqlx::raw_sql(&format!("GRANT INSERT ON lms.users TO {service}"))
        .execute(env.store.pool())
        .await
        .unwrap();
    let out = lms_sync(&env, &service_url, &["--no-migrate", "sync"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_mirror(&env.store, &env.sim, a).await;
}

/// A database host that does not answer at all (a listener that never accepts stands in: the
/// handshake completes, nothing is ever said) is reported as such, and the extra connection
/// attempt that tells it from a busy pool is not given a second whole connect timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_host_that_does_not_answer_is_reported_so_without_a_second_full_wait() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "postgres://lms@{}/lms?sslmode=disable",
        silent.local_addr().unwrap()
    );
    let settings = lms_sync::config::DatabaseSettings {
        connect_timeout_secs: 7,
        ..Default::default()
    };
    let store = lms_sync::store::Store::connect_lazy(&url.into(), &settings).unwrap();

    let e = store.registry().await.unwrap_err();
    let e = store.explain(e).await.to_string();

    assert!(
        e.starts_with("no database connection within 7 s: connecting fails: the server did not answer a new connection within 5 s either"),
        "{e}"
    );
    drop(silent);
}

/// `lms-sync check` with `accounts` configured, against `db`, with `token`.
async fn check(env: &Env, db: &str, accounts: &[Uuid], token: &str) -> Output {
    check_with(env, db, accounts, token, &[]).await
}

/// [`check`] with more environment variables.
async fn check_with(
    env: &Env,
    db: &str,
    accounts: &[Uuid],
    token: &str,
    vars: &[(&str, &str)],
) -> Output {
    let cfg = crate::helpers::daemon::config(&env.sim, accounts, "1h", 2);
    let vars: Vec<(&str, &str)> = [("TRUTO_API_TOKEN", token)]
        .into_iter()
        .chain(vars.iter().copied())
        .collect();
    lms_sync_as(&cfg, db, &["--no-migrate", "check"], &vars).await
}

/// The line of `check`'s report for one check.
fn check_line<'a>(out: &'a Output, name: &str) -> &'a str {
    let report = std::str::from_utf8(&out.stdout).unwrap();
    report
        .lines()
        .find(|l| l.split("  ").next() == Some(name))
        .unwrap_or_else(|| panic!("no `{name}` line:\n{report}"))
}

/// `check` before a deployment: as the service's documented role, with Truto taking the token
/// and knowing every account, every check passes (exit 0) and nothing is written; each broken
/// prerequisite (a right revoked, an account Truto does not know or that needs
/// re-authorization, a refused token) fails its own line saying what to do (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_a_ready_deployment_and_names_each_broken_prerequisite() {
    let (a, b, unknown) = (account_id(1), account_id(2), account_id(3));
    let env = Env::new(&[(a, 150), (b, 20)]).await;
    for id in [a, b] {
        env.sim.set_integrated(id, Integrated::active("acme"));
    }
    let (service, service_url) = role(&env, "service-role").await;

    let out = check(&env, &service_url, &[a, b], DEMO_TOKEN).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    let database = check_line(&out, "database");
    assert!(
        database.contains("ok       connected; PostgreSQL 1"),
        "{database}"
    );
    // How the role's sessions reach the server, read as that role.
    assert!(
        database.ends_with("; over a Unix-domain socket (TLS does not apply)"),
        "{database}"
    );
    assert!(check_line(&out, "schema").contains("ok       every migration"));
    assert!(check_line(&out, "privileges").contains("ok       the role has every right"));
    assert!(check_line(&out, "truto token").contains("ok       Truto accepts the API token"));
    assert!(check_line(&out, "accounts")
        .contains("ok       all 2 configured accounts are known to Truto and active"));
    assert!(said(&out).contains("every check passed"));
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_runs")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert_eq!(runs, 0, "a check syncs nothing");
    let stats = env.sim.stats();
    assert!(stats.by_account.is_empty(), "no user listing: {stats:?}");
    assert_eq!(
        (stats.requests, stats.account_listings),
        (3, 3),
        "the token, then each account"
    );

    // The documented role may read the operators' trail and the migrations' record and not
    // change them (and `check` above asked no more), and what it does to the registry is
    // recorded all the same.
    let mut as_service = <sqlx::PgConnection as sqlx::Connection>::connect(&service_url)
        .await
        .unwrap();
    for table in ["account_actions", "_sqlx_migrations", "migration_compat"] {
        let read: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM lms.{table}"))
            .fetch_one(&mut as_service)
            .await
            .unwrap();
        assert!(read > 0 || table == "account_actions", "{table}");
        let refused = sqlx::raw_sql(&format!("DELETE FROM lms.{table}"))
            .execute(&mut as_service)
            .await
            .unwrap_err();
        assert!(
            refused.to_string().contains("permission denied"),
            "{table}: {refused}"
        );
    }
    let paused = lms_sync(
        &env,
        &service_url,
        &["--no-migrate", "accounts", "pause", &a.to_string()],
    )
    .await;
    assert!(paused.status.success(), "{}", said(&paused));
    let (by, n): (String, i64) = sqlx::query_as(
        "SELECT max(db_user), count(*) FROM lms.account_actions WHERE action = 'pause'",
    )
    .fetch_one(&mut as_service)
    .await
    .unwrap();
    assert_eq!((by.as_str(), n), (service.as_str(), 1));
    sqlx::query("UPDATE lms.accounts SET paused = false")
        .execute(&mut as_service)
        .await
        .unwrap();

    // The registry's audit trail switched off by someone: said, with how to switch it on.
    sqlx::raw_sql("ALTER TABLE lms.accounts DISABLE TRIGGER accounts_record_actions")
        .execute(env.store.pool())
        .await
        .unwrap();
    let out = check(&env, &service_url, &[a, b], DEMO_TOKEN).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let schema = check_line(&out, "schema");
    assert!(
        schema.contains("FAILED   the trigger accounts_record_actions of accounts is disabled")
            && schema.ends_with(
                "as the schema's owner: ALTER TABLE lms.accounts ENABLE TRIGGER accounts_record_actions"
            ),
        "{schema}"
    );
    sqlx::raw_sql("ALTER TABLE lms.accounts ENABLE TRIGGER accounts_record_actions")
        .execute(env.store.pool())
        .await
        .unwrap();

    sqlx::raw_sql(&format!(
        "REVOKE INSERT, DELETE ON lms.users FROM {service}"
    ))
    .execute(env.store.pool())
    .await
    .unwrap();
    let mut reauth = Integrated::active("acme");
    reauth.status = "needs_reauth".into();
    env.sim.set_integrated(b, reauth);
    let out = check(&env, &service_url, &[a, b, unknown], DEMO_TOKEN).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let privileges = check_line(&out, "privileges");
    assert!(
        privileges.contains("FAILED   the role lacks 2 of the rights")
            && privileges.contains("docs/schema.md, Roles: least privilege")
            && privileges.ends_with(": INSERT on table users; DELETE on table users"),
        "{privileges}"
    );
    let accounts = check_line(&out, "accounts");
    assert!(
        accounts.contains("FAILED   2 of 3 configured accounts cannot be synced now: ")
            && accounts.contains(&format!("{b}: Truto says it is needs_reauth"))
            && accounts.contains(&format!("{unknown}: not found: the token does not know")),
        "{accounts}"
    );
    assert!(
        said(&out).contains("failed: privileges, accounts"),
        "{}",
        said(&out)
    );

    let out = check(&env, &service_url, &[a, b], "tok-WRONGSECRET").await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(check_line(&out, "truto token").contains("FAILED   HTTP 401"));
    assert!(check_line(&out, "accounts").contains("skipped  the token check failed"));
    assert!(!said(&out).contains("SECRET"), "{}", said(&out));
}

/// `check` against a Truto that does not answer (its own 502s on every route) says so after
/// three attempts, not after a request's whole retries (8 with the defaults), and says that
/// the token is not what failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_after_three_attempts_that_truto_does_not_answer() {
    let a = account_id(1);
    let env = Env::new(&[(a, 10)]).await;
    env.sim.set_integrated(a, Integrated::active("acme"));
    env.sim.set_outage(Some(Fault::status(502)));

    let out = check(&env, &env.db_url, &[a], DEMO_TOKEN).await;

    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let token = check_line(&out, "truto token");
    assert!(
        token.contains(
            "FAILED   Truto gave no answer that says whether it takes the token: gave up after 3 attempts: HTTP 502"
        ),
        "{token}"
    );
    assert!(check_line(&out, "accounts").contains("skipped  the token check failed"));
    assert_eq!(env.sim.stats().requests, 3, "three attempts, no more");
}

/// `check` never migrates: on an empty database it says the schema is missing and how to
/// create it, and leaves the database as it found it. Truto's side is checked all the same,
/// discovery's listing too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_on_an_empty_database_says_to_migrate_and_creates_nothing() {
    let a = account_id(1);
    let env = Env::new(&[(a, 10)]).await;
    env.sim.set_integrated(a, Integrated::active("acme"));
    let empty = fresh_database_url().await;
    let discovery = [("LMS_SYNC__DISCOVERY__ENABLED", "true")];
    let out = check_with(&env, &empty, &[a], DEMO_TOKEN, &discovery).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    assert!(check_line(&out, "discovery")
        .contains("ok       Truto lists 1 account of talentlms (1 active)"));
    assert!(
        check_line(&out, "schema").contains("FAILED   the database schema is not up to date")
            && check_line(&out, "schema").contains("run `lms-sync migrate`"),
        "{}",
        said(&out)
    );
    assert!(check_line(&out, "privileges").contains("skipped  the schema is not ready"));
    assert!(check_line(&out, "truto token").contains("ok"));
    let created: bool = query_one(&empty, "SELECT to_regnamespace('lms') IS NOT NULL").await;
    assert!(!created, "check created the schema");
}

/// The feed as a loader following docs/schema.md takes it from `after`, on `db`.
async fn feed_after(db: &str, after: Position) -> Vec<Position> {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(db)
        .await
        .unwrap();
    poll_feed(&mut conn, after).await
}

/// A mirror moved to another cluster by pg_dump and pg_restore (a new managed database, a
/// major version by dump): the cluster's transaction ids start over, below the change feed's
/// positions. The feed would hide every change restored and put new ones behind them; `check`
/// says so with the statement that mends it, and after it the feed is whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_restored_into_another_cluster_is_told_how_to_mend_its_change_feed() {
    let a = account_id(1);
    let (_old, old_url) = own_cluster().await;
    let env = Env::on(old_url.clone(), &[(a, 40)]).await;
    // A cluster that has lived: its transaction ids are well past a new one's.
    let burn = "BEGIN; SELECT pg_current_xact_id(); COMMIT; ".repeat(2000);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&old_url)
        .await
        .unwrap();
    sqlx::raw_sql(&burn).execute(&mut conn).await.unwrap();
    assert!(env.sync(a).await.succeeded());
    assert_eq!(feed_after(&old_url, (0, 0)).await.len(), 40);

    let (_new, new_url) = own_cluster().await;
    let bin = lms_sync::devkit::pg::find_bindir().unwrap();
    let dir = TempDir::new("lms-sync-dump");
    let dump = dir.join("mirror.dump");
    for (tool, args) in [
        (
            "pg_dump",
            vec!["-Fc", "-f", dump.to_str().unwrap(), &old_url],
        ),
        (
            "pg_restore",
            vec!["--no-owner", "-d", &new_url, dump.to_str().unwrap()],
        ),
    ] {
        let out = std::process::Command::new(bin.join(tool))
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Restored: every change is there, and none is in the feed.
    let changes: i64 = query_one(&new_url, "SELECT count(*) FROM lms.user_changes").await;
    assert_eq!(changes, 40);
    assert_eq!(feed_after(&new_url, (0, 0)).await, []);

    let out = check(&env, &new_url, &[a], DEMO_TOKEN).await;
    let schema = check_line(&out, "schema");
    assert!(
        schema.contains("FAILED") && schema.contains("restored into another cluster"),
        "{schema}"
    );
    let fix = schema
        .split("as the schema's owner: ")
        .nth(1)
        .and_then(|s| s.split(';').next())
        .unwrap()
        .to_string();
    assert_eq!(
        fix,
        "UPDATE lms.user_changes SET xact_id = 0 \
         WHERE xact_id >= pg_snapshot_xmax(pg_current_snapshot())::text::bigint"
    );
    // The service says it too, once, as it starts.
    let cfg = crate::helpers::daemon::config(&env.sim, &[a], "1h", 1);
    let mut d = crate::helpers::daemon::spawn(&cfg, &new_url);
    let ev = d
        .wait_for("the change feed's positions come from another cluster")
        .await;
    assert!(
        ev["fields"]["advice"].as_str().unwrap().contains(&fix),
        "{ev}"
    );
    assert_eq!(d.terminate().await, 0);
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&new_url)
        .await
        .unwrap();
    sqlx::raw_sql(&fix).execute(&mut conn).await.unwrap();
    let out = check(&env, &new_url, &[a], DEMO_TOKEN).await;
    assert!(
        check_line(&out, "schema").contains("ok       every migration"),
        "{}",
        check_line(&out, "schema")
    );

    // The feed holds them again, and a change synced into the new cluster comes after them.
    let restored = feed_after(&new_url, (0, 0)).await;
    assert_eq!(restored.len(), 40);
    let moved = Env::on(new_url.clone(), &[(a, 40)]).await;
    moved
        .sim
        .update_user(a, "3", serde_json::json!({"job_title": "Auditor"}));
    assert!(moved.sync(a).await.succeeded());
    let next = feed_after(&new_url, *restored.last().unwrap()).await;
    assert_eq!(next.len(), 1, "{next:?}");
}

/// A database that accepts no writes, told before any run: `check` fails its `database` line
/// for a hot standby (database.url naming a read replica's endpoint) and for read-only
/// sessions (`default_transaction_read_only`, which some managed services set while storage is
/// nearly full), saying which; `run` against such a database waits, saying why, and not
/// ready, instead of failing every run, and syncs once it accepts writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_the_service_tell_a_database_that_accepts_no_writes() {
    let a = account_id(1);
    let (pg, url) = own_cluster().await;
    let pg = std::sync::Arc::new(pg);
    let env = Env::on(url.clone(), &[(a, 150)]).await;
    env.sim.set_integrated(a, Integrated::active("acme"));
    let standby = standby_of(&pg, "mirror").await;

    let out = check(&env, &standby, &[a], DEMO_TOKEN).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let database = check_line(&out, "database");
    assert!(
        database.contains("FAILED   connected; PostgreSQL 1")
            && database.ends_with(
                "but it accepts no writes: the server is a standby (in recovery: a read \
                 replica, or a failover not finished); point database.url at the primary"
            ),
        "{database}"
    );
    // `status` reads a standby (it is read-only), and says it takes no writes.
    let cfg = crate::helpers::daemon::config(&env.sim, &[a], "1h", 1);
    let out = lms_sync_as(&cfg, &standby, &["status"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(
            "database: accepts no writes (the server is a standby (in recovery: a read replica, \
             or a failover not finished); point database.url at the primary); a service \
             writing to it starts no run until it does"
        ),
        "{}",
        said(&out)
    );
    let out = check(&env, &url, &[a], DEMO_TOKEN).await;
    assert_eq!(out.status.code(), Some(0), "{}", said(&out));

    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    sqlx::raw_sql("ALTER DATABASE mirror SET default_transaction_read_only = on")
        .execute(&mut admin)
        .await
        .unwrap();
    let out = check(&env, &url, &[a], DEMO_TOKEN).await;
    assert_eq!(out.status.code(), Some(1), "{}", said(&out));
    let database = check_line(&out, "database");
    assert!(
        database.contains("FAILED")
            && database.contains(
                "but it accepts no writes: this role's sessions are read-only \
                 (default_transaction_read_only is on"
            ),
        "{database}"
    );

    let mut d = crate::helpers::daemon::spawn(&cfg, &url);
    let listening = d
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await;
    let ev = d.wait_for("database not ready; waiting").await;
    assert!(
        ev["fields"]["error"]
            .as_str()
            .unwrap()
            .starts_with("the database accepts no writes: this role's sessions are read-only"),
        "{ev}"
    );
    lms_sync::install_crypto_provider();
    let ready = reqwest::get(format!(
        "http://{}/readyz",
        listening["fields"]["addr"].as_str().unwrap()
    ))
    .await
    .unwrap();
    assert_eq!(ready.status(), 503);
    assert!(ready
        .text()
        .await
        .unwrap()
        .contains("waiting for the database"));
    sqlx::raw_sql("ALTER DATABASE mirror RESET default_transaction_read_only")
        .execute(&mut admin)
        .await
        .unwrap();
    let ev = d.wait_for("sync run finished").await;
    assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
    assert_eq!(d.terminate().await, 0);
    assert_mirror(&env.store, &env.sim, a).await;
}
