//! PostgreSQL stopped and started again in the middle of a run, and under two replicas sharing
//! the request budget or the same accounts. These tests restart the server, so each starts a
//! private throwaway cluster instead of the shared one.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::budget::budget_config_with;
use crate::helpers::daemon::*;
use crate::helpers::*;
use lms_sync::config::AccountSettings;
use lms_sync::devkit::pg::TempPostgres;
use lms_sync::devkit::simulator::RateLimit;
use lms_sync::domain::{Outcome, RunCounts};
use lms_sync::store::Store;
use lms_sync::sync::{PassStatus, Progress};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

struct Pages(mpsc::UnboundedSender<u64>);

impl Progress for Pages {
    fn page(&self, _account: &AccountSettings, totals: &RunCounts) {
        let _ = self.0.send(totals.pages);
    }
}

/// A replica's config for `accounts` under `limit` whose database retries outlast a restart.
fn riding_out_a_restart(env: &Env, accounts: &[Uuid], limit: RateLimit) -> TempFile {
    with_db_attempts(budget_config_with(env, accounts, limit), 30)
}

/// `cfg` with `sync.db_max_attempts = attempts`.
fn with_db_attempts(cfg: TempFile, attempts: u32) -> TempFile {
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[sync]\n",
        &format!("[sync]\ndb_max_attempts = {attempts}\n"),
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// A private cluster with a migrated database `mirror`, and a simulator with `accounts`.
async fn private_env(accounts: &[(Uuid, usize)]) -> (Env, Arc<TempPostgres>) {
    let (pg, db_url) = own_cluster().await;
    let pg = Arc::new(pg);
    let sim = lms_sync::devkit::simulator::Simulator::start(0)
        .await
        .unwrap();
    for (i, (id, users)) in accounts.iter().enumerate() {
        sim.add_account(*id, *users, 1 + i as u64);
    }
    let ids: Vec<Uuid> = accounts.iter().map(|(id, _)| *id).collect();
    let mut settings = settings_for(&sim, &db_url, &ids);
    settings.sync.db_max_attempts = 12;
    let store = Store::connect(settings.database.url.as_ref().unwrap(), &settings.database)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let env = Env {
        sim,
        store,
        settings,
        db_url,
    };
    (env, pg)
}

/// Syncs account `a` of `env` and, once 3 or more pages are committed, does `fault` to the
/// cluster (blocking) while the pass goes on. Returns the pass's outcome.
async fn sync_with_a_fault_after_page_3(
    env: &Env,
    a: Uuid,
    pg: &Arc<TempPostgres>,
    fault: impl FnOnce(&TempPostgres) -> anyhow::Result<()> + Send + 'static,
) -> lms_sync::sync::SyncOutcome {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let pg = pg.clone();
    let faulty = tokio::spawn(async move {
        while let Some(pages) = rx.recv().await {
            if pages >= 3 {
                tokio::task::spawn_blocking(move || fault(&pg))
                    .await
                    .unwrap()
                    .unwrap();
                return true;
            }
        }
        false
    });
    let o = env
        .sync_with(&env.account(a), &CancellationToken::new(), &Pages(tx))
        .await;
    assert!(faulty.await.unwrap(), "the fault came mid-run");
    o
}

/// Syncs a 2,000-user account and, once 3 or more pages are committed, restarts PostgreSQL (a clean
/// stop, or a crash) while the pass goes on. Returns the outcome and the env.
async fn sync_across_a_restart(
    crash: bool,
) -> (lms_sync::sync::SyncOutcome, Env, Arc<TempPostgres>) {
    let a = account_id(1);
    let (env, pg) = private_env(&[(a, 2000)]).await;
    env.sim.set_latency(Duration::from_millis(10));
    let o = sync_with_a_fault_after_page_3(&env, a, &pg, move |pg| {
        if crash { pg.crash() } else { pg.stop() }?;
        pg.start_again()
    })
    .await;
    (o, env, pg)
}

/// The pass succeeded, and went through all 20 pages (none left to a later run).
fn assert_whole_pass(o: &lms_sync::sync::SyncOutcome) {
    assert_eq!(
        o.status,
        PassStatus::Finished(Outcome::Succeeded),
        "{:?}",
        o.error
    );
    assert_eq!(o.counts.pages, 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_run_is_survived_with_an_exact_mirror() {
    let (o, env, _pg) = sync_across_a_restart(false).await;

    assert_whole_pass(&o);
    assert_mirror(&env.store, &env.sim, account_id(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_mid_run_loses_nothing_committed() {
    let (o, env, _pg) = sync_across_a_restart(true).await;

    assert_whole_pass(&o);
    let deleted = env
        .scalar_i64("SELECT count(*) FROM users WHERE deleted_at IS NOT NULL")
        .await;
    assert_eq!(deleted, 0);
    assert_mirror(&env.store, &env.sim, account_id(1)).await;
    // The next pass finds nothing to do.
    let again = env.sync(account_id(1)).await;
    assert!(again.succeeded());
    assert_eq!(again.counts.unchanged, 2000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_the_budget_stay_within_its_window_across_a_postgres_restart() {
    // Two replicas, each listing an account of 150 pages, share 40 requests a second. The
    // server restarts while both hold a share: every holder's connection goes at once, each
    // stops sending as soon as it sees its own end, and none may take another's share before
    // a window from finding it gone is over.
    let (a, b) = (account_id(1), account_id(2));
    let (env, pg) = private_env(&[(a, 1500), (b, 1500)]).await;
    let (per_account, per_token) = (1000, 40);
    let limit = RateLimit {
        per_account,
        per_token,
        window: Duration::from_secs(1),
    };
    env.sim.set_rate_limit(Some(limit));
    let (cfg_a, cfg_b) = (
        riding_out_a_restart(&env, &[a], limit),
        riding_out_a_restart(&env, &[b], limit),
    );
    let mut r1 = spawn(&cfg_a, &env.db_url);
    while r1.next_budget_share().await != per_token as i64 {}
    let mut r2 = spawn(&cfg_b, &env.db_url);
    while r2.next_budget_share().await <= 0 {}

    let before = env.sim.stats().requests;
    let server = pg.clone();
    tokio::task::spawn_blocking(move || {
        let pg = server;
        pg.stop().unwrap();
        pg.start_again().unwrap();
    })
    .await
    .unwrap();

    // Each replica lost its share and found it again, and both accounts end synced.
    let mut done = Vec::new();
    let waiting = async {
        for r in [&mut r1, &mut r2] {
            r.wait_for("lost the shared request budget; no requests until it is back")
                .await;
            loop {
                let ev = r.wait_for("sync run finished").await;
                if ev["fields"]["outcome"] == "succeeded" {
                    done.push(ev["span"]["account"].to_string());
                    break;
                }
            }
        }
    };
    // A replica that never recovers still logs (retries), so bound the whole wait.
    tokio::time::timeout(Duration::from_secs(120), waiting)
        .await
        .expect("both replicas recovered and finished within 2 minutes");
    assert_eq!(done.len(), 2);
    assert_eq!(r1.terminate().await, 0);
    assert_eq!(r2.terminate().await, 0);

    let stats = env.sim.stats();
    assert!(
        stats.requests > before,
        "nothing was sent after the restart"
    );
    assert_eq!(stats.rate_limited, 0, "429s: {stats:?}");
    assert!(stats.max_token_window <= per_token, "{stats:?}");
    for id in [a, b] {
        assert_mirror(&env.store, &env.sim, id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_syncing_the_same_accounts_keep_each_accounts_window_across_a_postgres_restart() {
    // Two replicas, both configured with the same two accounts of 150 pages at 20 requests a
    // second each. The restart drops every account's lease while its holder is listing: the
    // holder stops sending for the account at once and takes the lease back when the server
    // is there again. If it gets it back, nobody held it in between and its pass goes on;
    // if the other replica took it first, that one waits out the account's window before its
    // first request, and the holder stops. Either way the server never sees more than 20 in a
    // second.
    let (a, b) = (account_id(1), account_id(2));
    let (env, pg) = private_env(&[(a, 1500), (b, 1500)]).await;
    let per_account = 20;
    let limit = RateLimit {
        per_account,
        per_token: 1000,
        window: Duration::from_secs(1),
    };
    env.sim.set_rate_limit(Some(limit));
    let cfg = riding_out_a_restart(&env, &[a, b], limit);
    let mut r1 = spawn(&cfg, &env.db_url);
    let mut r2 = spawn(&cfg, &env.db_url);

    // Both accounts are being listed (by one replica or by both).
    let mut listing = std::collections::HashSet::new();
    while listing.len() < 2 {
        let ev = tokio::select! {
            ev = r1.wait_for("page committed") => ev,
            ev = r2.wait_for("page committed") => ev,
        };
        listing.insert(ev["span"]["account"].to_string());
    }
    let server = pg.clone();
    tokio::task::spawn_blocking(move || {
        server.stop().unwrap();
        server.start_again().unwrap();
    })
    .await
    .unwrap();

    // Every pass cut by the restart sees its lease end; both accounts then finish.
    let ended = "the account's lease ended with its database connection; no requests for the account until this process holds it again";
    let (mut ended_seen, mut done) = (0, std::collections::HashSet::new());
    let waiting = async {
        while done.len() < 2 {
            let ev = tokio::select! {
                Some(ev) = r1.events.recv() => ev,
                Some(ev) = r2.events.recv() => ev,
            };
            let message = &ev["fields"]["message"];
            if message == ended {
                ended_seen += 1;
            } else if message == "sync run finished" && ev["fields"]["outcome"] == "succeeded" {
                done.insert(ev["span"]["account"].to_string());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), waiting)
        .await
        .expect("both accounts finished within 2 minutes of the restart");
    assert!(ended_seen >= 1, "no pass noticed its lease end");
    assert_eq!(r1.terminate().await, 0);
    assert_eq!(r2.terminate().await, 0);

    let stats = env.sim.stats();
    assert_eq!(stats.rate_limited, 0, "429s: {stats:?}");
    assert!(stats.max_account_window <= per_account, "{stats:?}");
    for id in [a, b] {
        assert_mirror(&env.store, &env.sim, id).await;
    }
}

/// A managed database fails over to a standby that had not received the last commits, as an
/// asynchronous replica may not have: pages the pass committed are gone from the database it
/// reconnects to. The pass must not go on as if they were there (its run would end "succeeded"
/// with those pages' users missing), and the next run must leave an exact mirror, with no user
/// taken for deleted and each insert recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_that_lost_committed_pages_stops_the_run_and_the_next_one_is_exact() {
    let a = account_id(1);
    let (env, pg) = private_env(&[(a, 3000)]).await;
    env.sim.set_latency(Duration::from_millis(40));
    let standby_url = standby_of(&pg, "mirror").await;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let pg2 = pg.clone();
    let sim = &env.sim;
    let failover = async move {
        // After 5 pages the standby stops receiving (replication cut off) ...
        let mut pages = 0;
        while pages < 5 {
            pages = rx.recv().await.expect("the pass reached page 5");
        }
        // (Truto slowed down meanwhile: on a busy machine the pass could otherwise commit its
        // last page before the failover, and the test wait for pages that never come.)
        sim.set_latency(Duration::from_secs(2));
        let mut standby = <sqlx::PgConnection as sqlx::Connection>::connect(&standby_url)
            .await
            .unwrap();
        for sql in [
            "ALTER SYSTEM SET primary_conninfo = ''",
            "SELECT pg_reload_conf()",
        ] {
            sqlx::raw_sql(sql).execute(&mut standby).await.unwrap();
        }
        loop {
            let receiving: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_wal_receiver")
                .fetch_one(&mut standby)
                .await
                .unwrap();
            if receiving == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // What it received, replayed: the pages it keeps. (The last record received may be
        // cut in two, and replay never reaches its end: then the startup process waits for WAL
        // from any source, everything on disk replayed.)
        loop {
            let replayed: bool = sqlx::query_scalar(
                "SELECT pg_last_wal_replay_lsn() >= pg_last_wal_receive_lsn()
                     OR EXISTS (SELECT 1 FROM pg_stat_activity
                                 WHERE backend_type = 'startup'
                                   AND wait_event = 'RecoveryRetrieveRetryInterval')",
            )
            .fetch_one(&mut standby)
            .await
            .unwrap();
            if replayed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let kept: i64 =
            sqlx::query_scalar("SELECT coalesce(sum(pages), 0)::bigint FROM lms.sync_runs")
                .fetch_one(&mut standby)
                .await
                .unwrap();
        drop(standby);
        sim.set_latency(Duration::from_millis(40));
        // ... and once the server has committed two pages more than that, it fails over to
        // the standby.
        while (pages as i64) < kept + 2 {
            pages = rx.recv().await.expect("two more pages");
        }
        tokio::task::spawn_blocking(move || pg2.fail_over())
            .await
            .unwrap()
            .unwrap();
        (kept, pages)
    };

    let (cancel, pages, account) = (CancellationToken::new(), Pages(tx), env.account(a));
    // (Bounded: a pass that ended before the failover would leave it waiting for pages.)
    let (o, (kept, committed)) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(env.sync_with(&account, &cancel, &pages), failover)
    })
    .await
    .expect("the failover came within the run");
    assert!(
        kept < committed as i64,
        "pages were lost: {kept} kept of {committed}"
    );

    // The pass took its lease back on the promoted standby, and its next page found the
    // database's cursor behind its own.
    assert_eq!(
        o.status,
        PassStatus::Finished(Outcome::Failed),
        "{:?}",
        o.error
    );
    let error = o.error.unwrap_or_default();
    assert!(
        error.contains("no longer holds this run's last committed page")
            && error.contains("a failover to a standby that had not received them"),
        "{error}"
    );

    let again = env.sync(a).await;
    assert!(again.succeeded(), "{:?}", again.error);
    assert_mirror(&env.store, &env.sim, a).await;
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM users WHERE deleted_at IS NOT NULL")
            .await,
        0
    );
    let kinds = kinds(&env).await;
    assert_eq!(kinds.get("insert"), Some(&3000), "{kinds:?}");
    assert_eq!(kinds.get("delete"), None, "{kinds:?}");
}

/// A failover's read-only spell in the middle of a run, as the service meets it: every session
/// ends (the old primary restarting as a standby), and the address still leads to a server
/// that accepts no writes for a while (DNS, or a proxy, not yet moved), here new sessions of
/// the database made read-only. The pass's next write is refused (SQLSTATE 25006) and retried;
/// once writes are accepted again, the sessions opened meanwhile, read-only for their life,
/// are replaced instead of being handed out again, and the run succeeds with an exact mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_left_read_only_by_a_failover_are_replaced_and_the_run_goes_on() {
    let a = account_id(1);
    let env = Env::new(&[(a, 3000)]).await;
    env.sim.set_latency(Duration::from_millis(60));
    let cfg = with_db_attempts(crate::helpers::daemon::config(&env.sim, &[a], "1h", 1), 30);
    let mut d = spawn(&cfg, &env.db_url);
    let listening = d
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await;
    let status = format!("http://{}/", listening["fields"]["addr"].as_str().unwrap());
    for _ in 0..3 {
        d.wait_for("page committed").await;
    }

    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&env.db_url)
        .await
        .unwrap();
    takes_writes(&mut admin, false).await;
    // An operator looks at the status page meanwhile: it reads, which read-only sessions do,
    // so they stay in the pool.
    lms_sync::install_crypto_provider();
    let page = reqwest::get(&status).await.unwrap();
    assert_eq!(page.status(), 200);
    // The pass takes its lease back on a new session, and is refused.
    loop {
        let ev = d.wait_for("database operation failed; retrying").await;
        if ev["fields"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("read-only transaction")
        {
            break;
        }
    }
    takes_writes(&mut admin, true).await;
    let ev = d.wait_for("sync run finished").await;
    assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
    assert_eq!(d.terminate().await, 0);
    assert_mirror(&env.store, &env.sim, a).await;
    let kinds = kinds(&env).await;
    assert_eq!(kinds.get("insert"), Some(&3000), "{kinds:?}");
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM users WHERE deleted_at IS NOT NULL")
            .await,
        0
    );
}

/// The database stops taking writes under the service and stays so (a managed service's
/// storage-full read-only mode; a standby answering at the address for longer than a failover
/// takes): the runs that meet it fail after their retries, and then none starts (each would
/// fail alike, one account after another) while the service says why: its log,
/// `lms_sync_database_read_only` 1 and `/readyz` 503. Discovery lists no accounts meanwhile
/// (the listing could not be recorded, and each retry would spend its requests). Once it takes
/// writes again, runs start and succeed, and the accounts are listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_taking_no_writes_holds_every_run_and_listing_until_it_does() {
    let (a, b) = (account_id(1), account_id(2));
    let env = Env::new(&[(a, 100), (b, 100)]).await;
    for id in [a, b] {
        env.sim
            .set_integrated(id, lms_sync::devkit::simulator::Integrated::active("acme"));
    }
    // A run fails at its first refused write: one that started would end within the quiet
    // spell below. A failed listing would be tried again every second. Without the request
    // budget: its share, which the database can no longer record, would hold the listing's
    // requests back too.
    let cfg = with_db_attempts(
        crate::helpers::daemon::config(&env.sim, &[a, b], "1s", 2),
        1,
    );
    let discovery = "[discovery]\nenabled = true\ninterval = \"10s\"\nretry_initial = \"1s\"\n\
                     [rate_budget]\nenabled = false\n";
    let text = std::fs::read_to_string(&cfg).unwrap() + discovery;
    std::fs::write(&cfg, text).unwrap();
    let mut d = spawn(&cfg, &env.db_url);
    let listening = d
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await;
    let first = d
        .wait_for_each(&[
            "discovery finished",
            "sync run finished",
            "sync run finished",
        ])
        .await;
    // The next listing is due 10 s after this one ended.
    let listed = Instant::now();
    for ev in &first[1..] {
        assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
    }
    let listings = env.sim.stats().account_listings;
    assert_eq!(listings, 1);
    let addr = listening["fields"]["addr"].as_str().unwrap().to_string();
    lms_sync::install_crypto_provider();
    let get = |path: &'static str| {
        let url = format!("http://{addr}{path}");
        async move {
            let r = reqwest::get(url).await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(
        gauge(&get("/metrics").await.1, "lms_sync_database_read_only"),
        Some(0.0)
    );

    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&env.db_url)
        .await
        .unwrap();
    takes_writes(&mut admin, false).await;

    let held = d
        .wait_for("the database accepts no writes; no run starts until it does")
        .await;
    assert!(
        held["fields"]["why"]
            .as_str()
            .unwrap()
            .starts_with("this role's sessions are read-only"),
        "{held}"
    );
    d.wait_for(
        "not listing the integrated accounts while the database accepts no writes: no listing \
         could be recorded",
    )
    .await;
    let (status, body) = get("/readyz").await;
    assert_eq!(
        (status, body.as_str()),
        (
            503,
            "not ready: the database accepts no writes; no run starts until it does\n"
        )
    );
    // The status page reads, which read-only sessions do, and says it above the accounts.
    let (status, page) = get("/").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("<span class=\"pill bad\">database takes no writes</span>")
            && page.contains("(this role&#39;s sessions are read-only"),
        "{page}"
    );
    // Once the runs that met it have ended (one may end after the hold began: both accounts'
    // runs start together, and the first refusal holds the next), ...
    loop {
        let metrics = get("/metrics").await.1;
        assert_eq!(gauge(&metrics, "lms_sync_database_read_only"), Some(1.0));
        if gauge(&metrics, "lms_sync_running_accounts") == Some(0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // (What those runs logged may still be on its way: said before now, it is theirs.)
    let ended = chrono::Utc::now();
    let failed_before = env.sim.stats().requests;
    // ... none starts, though both come due every second; nor is a listing made, though one
    // comes due 10 s after the first (the spell lasts past that).
    let spell = Duration::from_secs(5).max((listed + Duration::from_secs(13)) - Instant::now());
    let quiet = tokio::time::timeout(spell, async {
        loop {
            let ev = d.next_event("a run").await;
            let said = ev["fields"]["message"].as_str().unwrap_or_default();
            let at: chrono::DateTime<chrono::Utc> =
                ev["timestamp"].as_str().unwrap().parse().unwrap();
            if (said == "sync run finished" || said.starts_with("sync run not started"))
                && at >= ended
            {
                return ev;
            }
        }
    })
    .await;
    assert!(
        quiet.is_err(),
        "a run started: {quiet:?}; the latest:\n{}",
        d.latest()
    );
    assert_eq!(env.sim.stats().requests, failed_before);
    assert_eq!(env.sim.stats().account_listings, listings);

    takes_writes(&mut admin, true).await;
    d.wait_for("the database accepts writes again; runs start")
        .await;
    // A run succeeds, and the listing that came due meanwhile is made now.
    let ev = &d
        .wait_for_each(&["sync run finished", "discovery finished"])
        .await[0];
    assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
    assert_eq!(env.sim.stats().account_listings, listings + 1);
    assert_eq!(get("/readyz").await.0, 200);
    assert_eq!(
        gauge(&get("/metrics").await.1, "lms_sync_database_read_only"),
        Some(0.0)
    );
    assert_eq!(d.terminate().await, 0);
}

/// A session opened while the database took no writes keeps its read-only default after the
/// database takes them again (a database's or a role's `default_transaction_read_only` applies
/// at a session's start). Once the service has found writes taken again, the pool replaces
/// every session opened before: the first write does not meet one (it did, and the first run
/// after such a spell could fail to record its end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_opened_while_the_database_took_no_writes_are_replaced_once_it_takes_them() {
    let env = Env::new(&[]).await;
    // A pool of one session, so that each statement meets the one the last left.
    let mut settings = lms_sync::config::Settings::default();
    settings.database.max_connections = 1;
    let url = secrecy::SecretString::from(env.db_url.clone());
    let store = lms_sync::store::Store::connect(&url, &settings.database)
        .await
        .unwrap();
    let read_only = || async {
        sqlx::query_scalar::<_, String>("SHOW transaction_read_only")
            .fetch_one(store.pool())
            .await
            .unwrap()
    };
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&env.db_url)
        .await
        .unwrap();
    takes_writes(&mut admin, false).await;
    assert!(store.refuses_writes().await.unwrap().is_some());
    // A read after that look (the status page, /metrics) opens a session: read-only for good.
    assert_eq!(read_only().await, "on");
    takes_writes(&mut admin, true).await;
    store.writes_taken_again();
    assert_eq!(read_only().await, "off");
    store.discovery_failed("a write", None).await.unwrap();
}

/// A cluster with a standby and nothing in front (no proxy, no virtual IP: Patroni, repmgr),
/// named host by host in database.url with `target_session_attrs=read-write`, the standby
/// first: lms-sync connects to the primary, and `check` says which host it uses. After a
/// switchover (the primary stopped, the standby promoted where it is) the service finds the
/// new primary by itself, and a run leaves an exact mirror there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_follows_the_primary_among_the_hosts_database_url_names() {
    let a = account_id(1);
    let (env, pg) = private_env(&[(a, 300)]).await;
    env.sim
        .set_integrated(a, lms_sync::devkit::simulator::Integrated::active("acme"));
    let standby = standby_of(&pg, "mirror").await;
    let (primary_dir, standby_dir) = (
        pg.socket_dir().display().to_string(),
        pg.socket_dir().join("replica").display().to_string(),
    );
    let both = format!(
        "postgres://postgres@localhost/mirror?host={standby_dir},{primary_dir}\
         &target_session_attrs=read-write"
    );
    let cfg = crate::helpers::daemon::config(&env.sim, &[a], "1s", 1);

    let out = crate::helpers::daemon::lms_sync(&cfg, &both, &["--no-migrate", "check"])
        .output()
        .await
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{report}");
    let database = report.lines().find(|l| l.starts_with("database")).unwrap();
    assert!(
        database.ends_with(&format!(
            "; host {primary_dir} of database.url's 2 ({standby_dir}: accepts no writes)"
        )),
        "{database}"
    );

    let mut d = spawn(&cfg, &both);
    let chose = d
        .wait_for("database.url: connecting to the first of its hosts that accepts writes")
        .await;
    assert_eq!(chose["fields"]["host"], primary_dir.as_str(), "{chose}");
    let ev = d.wait_for("sync run finished").await;
    assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");

    let pg2 = pg.clone();
    tokio::task::spawn_blocking(move || pg2.switch_over())
        .await
        .unwrap()
        .unwrap();
    env.sim
        .update_user(a, "7", serde_json::json!({"job_title": "Switched over"}));
    let chose = d
        .wait_for("database.url: connecting to the first of its hosts that accepts writes")
        .await;
    assert_eq!(chose["fields"]["host"], standby_dir.as_str(), "{chose}");
    loop {
        let ev = d.wait_for("sync run finished").await;
        if ev["fields"]["outcome"] == "succeeded" && ev["fields"]["updated"] == 1 {
            break;
        }
    }
    assert_eq!(d.terminate().await, 0);
    let promoted = Store::connect(&standby.into(), &env.settings.database)
        .await
        .unwrap();
    assert_mirror(&promoted, &env.sim, a).await;
}

/// The same switchover in the middle of a pass (a one-off `sync`, or a run the service's next
/// round would not reach in time): the pass's retries find the new primary among the hosts,
/// take its lease back there, and the run succeeds with an exact mirror on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_under_way_follows_a_switchover_among_the_hosts_database_url_names() {
    let a = account_id(1);
    let (mut env, pg) = private_env(&[(a, 2000)]).await;
    env.sim.set_latency(Duration::from_millis(40));
    let standby = standby_of(&pg, "mirror").await;
    let both = format!(
        "postgres://postgres@localhost/mirror?host={0}/replica,{0}&target_session_attrs=primary",
        pg.socket_dir().display()
    );
    env.store = Store::connect(&both.into(), &env.settings.database)
        .await
        .unwrap();

    let o = sync_with_a_fault_after_page_3(&env, a, &pg, TempPostgres::switch_over).await;

    assert_whole_pass(&o);
    let promoted = Store::connect(&standby.into(), &env.settings.database)
        .await
        .unwrap();
    assert_mirror(&promoted, &env.sim, a).await;
}
