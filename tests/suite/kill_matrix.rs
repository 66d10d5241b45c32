//! `kill -9` at every kind of point of a run — inside a page's transaction, between pages, in
//! the deletion sweep, in a hydration batch, while the run is being closed — then restarts:
//! the mirror ends exact, nothing is duplicated or lost, and sync_runs / sync_state agree.
//! The process is stopped at the exact point by a failpoint (src/failpoint.rs), then killed.

use std::process::Stdio;
use std::time::Duration;

use crate::helpers::*;
use lms_sync::devkit::simulator::{Simulator, DEMO_TOKEN};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_lms-sync");

fn config(sim: &Simulator, a: Uuid) -> TempFile {
    let t = format!(
        "[truto]\nbase_url = \"{}\"\nbackoff_initial_ms = 5\n\
         [sync]\nprogress = \"off\"\nhydrate_max_per_run = 5000\n[rate_budget]\nenabled = false\n\
         [log]\nformat = \"json\"\n\
         [[accounts]]\nintegrated_account_id = \"{a}\"\nhydrate = true\n",
        sim.base_url()
    );
    TempFile::new("lms-sync-kill", ".toml", t)
}

/// `lms-sync sync`; with a failpoint, waits until it is reached and kills the process there.
/// Returns the exit code (None when killed).
async fn sync(cfg: &std::path::Path, db: &str, failpoint: Option<&str>) -> Option<i32> {
    let mut cmd = Command::new(BIN);
    cmd.args(["--config", cfg.to_str().unwrap(), "sync"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TRUTO_API_TOKEN", DEMO_TOKEN)
        .env("LMS_SYNC__DATABASE__URL", db)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(f) = failpoint {
        cmd.env("LMS_SYNC_FAILPOINT", f);
    }
    let mut child = cmd.spawn().expect("start lms-sync sync");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    if failpoint.is_some() {
        let reached = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["fields"]["message"] == "failpoint reached" {
                        return true;
                    }
                }
            }
            false
        })
        .await
        .expect("the failpoint within 60s");
        assert!(reached, "the process exited before {failpoint:?}");
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        return None;
    }
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    tokio::time::timeout(Duration::from_secs(120), child.wait())
        .await
        .expect("sync finishes")
        .unwrap()
        .code()
}

/// `failpoint`, and a query that must answer 1 right after the kill: proof the process died
/// where the case says.
async fn one_case(failpoint: &str, died_where: &'static str) {
    let a = account_id(1);
    let sim = Simulator::start(0).await.unwrap();
    sim.add_account(a, 1500, 7);
    sim.set_partial_list_fields(a, &["job_title", "phones", "hire_date"]);
    let db = fresh_database_url().await;
    let cfg = config(&sim, a);
    assert_eq!(sync(&cfg, &db, None).await, Some(0));

    // Work of every kind for the run that gets killed: inserts, updates, deletions, and the
    // hydration of all of them.
    for id in ["3", "300", "700", "1100", "1499"] {
        sim.delete_user(a, id);
    }
    sim.add_users(a, 40);
    for i in (10..1400).step_by(70) {
        sim.update_user(
            a,
            &i.to_string(),
            json!({"status": "suspended", "job_title": "Moved"}),
        );
    }
    // Slow pages a little, so that the writer keeps up and commits page by page.
    sim.set_latency(Duration::from_millis(5));
    assert_eq!(sync(&cfg, &db, Some(failpoint)).await, None);
    sim.set_latency(Duration::ZERO);

    let store = {
        let mut s = lms_sync::config::Settings::default();
        s.database.url = Some(secrecy::SecretString::from(db.clone()));
        lms_sync::store::Store::connect(s.database.url.as_ref().unwrap(), &s.database)
            .await
            .unwrap()
    };
    let q = |sql: &'static str| {
        let pool = store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        q("SELECT count(*) FROM sync_runs WHERE outcome = 'running'").await,
        1,
        "{failpoint}"
    );
    assert_eq!(q(died_where).await, 1, "{failpoint}: {died_where}");

    // Restart until a complete, fresh listing has run and the hydration queue is empty (a
    // listing killed midway is resumed first, and a resumed listing infers no deletions).
    let mut restarts = 0;
    loop {
        restarts += 1;
        assert!(restarts <= 3, "{failpoint}: not converged after 3 restarts");
        assert_eq!(sync(&cfg, &db, None).await, Some(0), "{failpoint}");
        let fresh: i64 = q("SELECT count(*) FROM sync_runs WHERE run_id = (SELECT max(run_id) FROM sync_runs) AND outcome = 'succeeded' AND complete_listing AND NOT resumed").await;
        if fresh == 1 && q("SELECT count(*) FROM hydration_queue").await == 0 {
            break;
        }
    }

    assert_mirror(&store, &sim, a).await;
    let deleted: Vec<String> =
        sqlx::query_scalar("SELECT id FROM users WHERE deleted_at IS NOT NULL ORDER BY id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(deleted, ["1100", "1499", "3", "300", "700"], "{failpoint}");
    assert_eq!(
        q("SELECT count(*) FROM sync_runs WHERE outcome = 'running'").await,
        0
    );
    assert_eq!(
        q("SELECT count(*) FROM sync_runs WHERE outcome = 'interrupted'").await,
        1,
        "{failpoint}: the killed run is recorded as interrupted"
    );
    assert_eq!(
        q("SELECT count(*) FROM sync_state WHERE status = 'succeeded' AND cursor IS NULL AND health = 'ok' AND current_run_id = (SELECT max(run_id) FROM sync_runs)").await,
        1,
        "{failpoint}"
    );
    // No duplicates anywhere, and the history has exactly one insert per user and one delete
    // per deleted user, whatever was rolled back and redone.
    assert_eq!(q("SELECT count(*) - count(DISTINCT (integrated_account_id, user_id, position)) FROM user_emails").await, 0);
    assert_eq!(q("SELECT count(*) - count(DISTINCT (integrated_account_id, user_id, position)) FROM user_phones").await, 0);
    assert_eq!(
        q("SELECT count(*) FROM user_changes WHERE kind = 'insert'").await,
        1540,
        "{failpoint}"
    );
    assert_eq!(
        q("SELECT count(DISTINCT user_id) FROM user_changes WHERE kind = 'insert'").await,
        1540
    );
    assert_eq!(
        q("SELECT count(*) FROM user_changes WHERE kind = 'delete'").await,
        5,
        "{failpoint}"
    );
    assert_eq!(q("SELECT count(*) FROM users").await, 1540);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_inside_the_first_page_transaction() {
    one_case(
        "page_tx:1",
        // Nothing of the run committed: its transaction was rolled back.
        "SELECT count(*) FROM sync_state WHERE pages = 0 AND cursor IS NULL",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_inside_a_later_page_transaction() {
    one_case(
        // The second batch: the run's 16 pages make 2 to 4 batches (4 to 8 pages each,
        // depending on how far the listing runs ahead of the writer), so a later one than the
        // second is not always there.
        "page_tx:2",
        "SELECT count(*) FROM sync_state WHERE pages BETWEEN 1 AND 15 AND cursor IS NOT NULL",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_pages() {
    one_case(
        "page_committed:3",
        "SELECT count(*) FROM sync_state WHERE pages BETWEEN 3 AND 15 AND cursor IS NOT NULL",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_the_deletion_sweep() {
    one_case(
        "sweep_tx:1",
        // Every page committed, the sweep's deletions rolled back.
        "SELECT count(*) FROM sync_state WHERE pages = 16 AND cursor IS NULL
            AND NOT EXISTS (SELECT 1 FROM users WHERE deleted_at IS NOT NULL)",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_during_hydration() {
    one_case(
        "hydrate_tx:1",
        "SELECT count(*) FROM sync_state WHERE (SELECT count(*) FROM users WHERE deleted_at IS NOT NULL) = 5
            AND (SELECT count(*) FROM hydration_queue) > 0",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_closing_the_run() {
    one_case(
        "finish_run:1",
        "SELECT count(*) FROM sync_state WHERE status = 'running'
            AND (SELECT count(*) FROM hydration_queue) = 0",
    )
    .await;
}
