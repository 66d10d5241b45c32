//! PostgreSQL stopped and started again in the middle of a run. These tests restart the server,
//! so each starts a private throwaway cluster instead of the shared one.

use std::sync::Arc;
use std::time::Duration;

use crate::helpers::*;
use lms_sync::config::AccountSettings;
use lms_sync::devkit::pg::TempPostgres;
use lms_sync::domain::{Outcome, RunCounts};
use lms_sync::store::Store;
use lms_sync::sync::{PassStatus, Progress};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Pages(mpsc::UnboundedSender<u64>);

impl Progress for Pages {
    fn page(&self, _account: &AccountSettings, totals: &RunCounts) {
        let _ = self.0.send(totals.pages);
    }
}

/// Syncs a 2,000-user account and, once 3 or more pages are committed, restarts PostgreSQL (a clean
/// stop, or a crash) while the pass goes on. Returns the outcome and the env.
async fn sync_across_a_restart(
    crash: bool,
) -> (lms_sync::sync::SyncOutcome, Env, Arc<TempPostgres>) {
    let pg = Arc::new(
        tokio::task::spawn_blocking(TempPostgres::start)
            .await
            .unwrap()
            .unwrap(),
    );
    let a = account_id(1);
    let sim = lms_sync::devkit::simulator::Simulator::start(0)
        .await
        .unwrap();
    sim.add_account(a, 2000, 1);
    sim.set_latency(Duration::from_millis(10));
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&pg.url("postgres"))
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE mirror")
        .execute(&mut admin)
        .await
        .unwrap();
    drop(admin);
    let db_url = pg.url("mirror");
    let mut settings = settings_for(&sim, &db_url, &[a]);
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

    let (tx, mut rx) = mpsc::unbounded_channel();
    let pg2 = pg.clone();
    let restarter = tokio::spawn(async move {
        while let Some(pages) = rx.recv().await {
            if pages >= 3 {
                let pg = pg2.clone();
                tokio::task::spawn_blocking(move || {
                    if crash { pg.crash() } else { pg.stop() }.unwrap();
                    pg.start_again().unwrap();
                })
                .await
                .unwrap();
                return true;
            }
        }
        false
    });

    let o = env
        .sync_with(&env.account(a), &CancellationToken::new(), &Pages(tx))
        .await;

    assert!(restarter.await.unwrap(), "the server was restarted mid-run");
    (o, env, pg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_run_is_survived_with_an_exact_mirror() {
    let (o, env, _pg) = sync_across_a_restart(false).await;

    assert_eq!(
        o.status,
        PassStatus::Finished(Outcome::Succeeded),
        "{:?}",
        o.error
    );
    assert_eq!(o.counts.pages, 20);
    assert_mirror(&env.store, &env.sim, account_id(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_mid_run_loses_nothing_committed() {
    let (o, env, _pg) = sync_across_a_restart(true).await;

    assert_eq!(
        o.status,
        PassStatus::Finished(Outcome::Succeeded),
        "{:?}",
        o.error
    );
    assert_eq!(o.counts.pages, 20);
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
