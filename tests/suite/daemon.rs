//! The long-running service: rounds on a schedule, graceful shutdown mid-run, the rate budget,
//! and the operations endpoints. Synchronization is by events (progress hooks, channels), never
//! by sleeping.

use std::sync::Arc;
use std::time::Duration;

use crate::helpers::service::*;
use crate::helpers::*;
use lms_sync::config::AccountSettings;
use lms_sync::devkit::simulator::{Fault, RateLimit, DEMO_TOKEN};
use lms_sync::metrics::Metrics;
use lms_sync::service::Hooks;
use lms_sync::source::budget::{Limit, RateBudget};
use lms_sync::sync::{sync_accounts, NoProgress, SyncOptions, SyncOutcome};
use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_runs_every_account_again_on_its_interval() {
    let (a, b) = (account_id(1), account_id(2));
    let env = Env::new(&[(a, 150), (b, 120)]).await;
    let settings = daemon_settings(&env, "1s");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (daemon, stop) = start_daemon(
        settings,
        Hooks {
            progress: Some(Arc::new(Events(tx))),
            ..Hooks::default()
        },
    );

    let mut finished = std::collections::HashMap::<Uuid, Vec<String>>::new();
    while finished.values().map(Vec::len).min().unwrap_or(0) < 2 || finished.len() < 2 {
        if let Event::Finished(id, outcome) = next(&mut rx).await {
            finished.entry(id).or_default().push(outcome);
        }
    }
    stop.cancel();
    daemon.await.unwrap().unwrap();

    for (id, outcomes) in &finished {
        assert!(
            outcomes.iter().all(|o| o == "succeeded"),
            "{id}: {outcomes:?}"
        );
    }
    assert_mirror(&env.store, &env.sim, a).await;
    assert_mirror(&env.store, &env.sim, b).await;
    // The second round wrote nothing: the data did not change.
    let second_round_writes = env
        .scalar_i64("SELECT coalesce(sum(inserted + updated + deleted), 0)::bigint FROM sync_runs WHERE run_id > 2")
        .await;
    assert_eq!(second_round_writes, 0);
    // Rounds of one account never overlap.
    let overlaps = env
        .scalar_i64(
            "SELECT count(*) FROM sync_runs r JOIN sync_runs s
               ON r.integrated_account_id = s.integrated_account_id AND r.run_id < s.run_id
              WHERE s.started_at < r.finished_at",
        )
        .await;
    assert_eq!(overlaps, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_mid_run_commits_the_page_in_flight_records_the_run_and_resumes_later() {
    let a = account_id(1);
    let env = Env::new(&[(a, 3000)]).await;
    env.sim.set_latency(Duration::from_millis(20));
    let settings = daemon_settings(&env, "6h");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (daemon, stop) = start_daemon(
        settings.clone(),
        Hooks {
            progress: Some(Arc::new(Events(tx))),
            ..Hooks::default()
        },
    );
    loop {
        if let Event::Page(pages) = next(&mut rx).await {
            if pages >= 3 {
                break;
            }
        }
    }

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), daemon)
        .await
        .expect("the daemon stops within the grace period")
        .unwrap()
        .unwrap();

    let (outcome, pages): (String, i64) =
        sqlx::query_as("SELECT outcome, pages FROM sync_runs ORDER BY run_id DESC LIMIT 1")
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!(outcome, "interrupted");
    assert!((3..30).contains(&pages), "{pages}");
    let users = env.scalar_i64("SELECT count(*) FROM users").await;
    assert_eq!(users, pages * 100, "every committed page is whole");
    let cursor: Option<String> = sqlx::query_scalar("SELECT cursor FROM sync_state")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert!(cursor.is_some());

    // The next daemon resumes where this one stopped and ends with an exact mirror.
    env.sim.set_latency(Duration::ZERO);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (daemon, stop) = start_daemon(
        settings,
        Hooks {
            progress: Some(Arc::new(Events(tx))),
            ..Hooks::default()
        },
    );
    loop {
        if let Event::Finished(_, outcome) = next(&mut rx).await {
            assert_eq!(outcome, "succeeded");
            break;
        }
    }
    stop.cancel();
    daemon.await.unwrap().unwrap();
    let resumed: bool =
        sqlx::query_scalar("SELECT resumed FROM sync_runs ORDER BY run_id DESC LIMIT 1")
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert!(resumed);
    assert_mirror(&env.store, &env.sim, a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_account_and_per_token_budgets_are_never_exceeded() {
    let accounts: Vec<(Uuid, usize)> = (1..=3).map(|i| (account_id(i), 700)).collect();
    let env = Env::new(&accounts).await;
    let limit = RateLimit {
        per_account: 4,
        per_token: 6,
        window: Duration::from_secs(1),
    };
    env.sim.set_rate_limit(Some(limit));
    let budget = RateBudget::new(
        Limit {
            requests: 4,
            window: Duration::from_secs(1),
        },
        Limit {
            requests: 6,
            window: Duration::from_secs(1),
        },
    );
    let metrics = Arc::new(Metrics::new());
    let client = env
        .client()
        .with_budget(Arc::new(budget))
        .with_metrics(metrics.clone());
    let mut opts = SyncOptions::from_settings(&env.settings);
    opts.metrics = Some(metrics.clone());
    let list: Vec<AccountSettings> = accounts
        .iter()
        .map(|(id, _)| AccountSettings::new(*id))
        .collect();

    let outcomes = sync_accounts(
        &env.store,
        &client,
        &list,
        &opts,
        3,
        &CancellationToken::new(),
        Arc::new(NoProgress),
    )
    .await;

    assert!(outcomes.iter().all(SyncOutcome::succeeded));
    let stats = env.sim.stats();
    assert_eq!(
        stats.rate_limited, 0,
        "the budget kept every request under the limits"
    );
    assert!(stats.max_account_window <= 4);
    assert_eq!(stats.requests, 21);
    let waited: f64 = accounts
        .iter()
        .map(|(id, _)| {
            metrics.get(
                "lms_sync_rate_budget_wait_seconds_total",
                &[("account", &id.to_string())],
            )
        })
        .sum();
    assert!(waited > 1.0, "21 requests at 6/s must wait: {waited}");
    for (id, _) in &accounts {
        assert_mirror(&env.store, &env.sim, *id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_a_hint_pauses_the_account_and_the_run_still_succeeds() {
    let a = account_id(1);
    let env = Env::new(&[(a, 300)]).await;
    env.sim.set_rate_limit(Some(RateLimit {
        per_account: 2,
        per_token: 100,
        window: Duration::from_secs(1),
    }));
    // No client-side budget: the server's 429 + Retry-After is what paces us.
    let o = env.sync(a).await;
    assert!(o.succeeded(), "{:?}", o.error);
    assert!(o.counts.rate_limited >= 1);
    assert_mirror(&env.store, &env.sim, a).await;
}

async fn get(url: &str) -> (u16, String) {
    lms_sync::install_crypto_provider();
    let r = reqwest::get(url).await.expect("ops server answers");
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_readyz_and_metrics_answer() {
    let a = account_id(1);
    let env = Env::new(&[(a, 250)]).await;
    let settings = daemon_settings(&env, "6h");
    let (daemon, stop, mut rx, base) = serve_daemon(settings).await;
    loop {
        if let Event::Finished(..) = next(&mut rx).await {
            break;
        }
    }

    let (hs, hb) = get(&format!("{base}/healthz")).await;
    let (rs, rb) = get(&format!("{base}/readyz")).await;
    let (ms, metrics) = get(&format!("{base}/metrics")).await;
    let (ns, _) = get(&format!("{base}/nope")).await;
    stop.cancel();
    daemon.await.unwrap().unwrap();

    assert_eq!((hs, hb.as_str()), (200, "ok\n"));
    assert_eq!((rs, rb.as_str()), (200, "ready\n"));
    assert_eq!(ns, 404);
    assert_eq!(ms, 200);
    let acct = a.to_string();
    for needle in [
        format!("lms_sync_runs_total{{account=\"{acct}\",outcome=\"succeeded\"}} 1"),
        format!("lms_sync_users_total{{account=\"{acct}\",change=\"inserted\"}} 250"),
        format!("lms_sync_pages_total{{account=\"{acct}\"}} 3"),
        format!("lms_sync_http_requests_total{{status=\"200\",account=\"{acct}\"}} 3"),
        format!("lms_sync_last_success_timestamp_seconds{{account=\"{acct}\"}}"),
        format!("lms_sync_last_run_duration_seconds{{account=\"{acct}\"}}"),
        "# TYPE lms_sync_runs counter".to_string(),
        format!("lms_sync_unknown_enum_values_total{{account=\"{acct}\",field=\"role\"}}"),
        // Read from the database: every replica exports every account.
        format!("lms_sync_account_live_users{{account=\"{acct}\"}} 250"),
        format!("lms_sync_account_consecutive_failures{{account=\"{acct}\"}} 0"),
        format!("lms_sync_account_hydration_queue{{account=\"{acct}\"}} 0"),
        format!("lms_sync_account_info{{account=\"{acct}\",label=\"\",tenant=\"\"}} 1"),
        format!("lms_sync_account_health{{account=\"{acct}\",health=\"ok\"}} 1"),
        "lms_sync_http_request_duration_seconds_count{endpoint=\"page\",status_class=\"2xx\"} 3"
            .to_string(),
        "lms_sync_page_write_duration_seconds_count".to_string(),
        "lms_sync_run_duration_seconds_count{} 1".to_string(),
        "lms_sync_build_info{version=".to_string(),
    ] {
        assert!(metrics.contains(&needle), "missing {needle} in\n{metrics}");
    }
    assert!(!metrics.contains(DEMO_TOKEN));
}

/// Serves the daemon (see `serve_daemon`) on `a`, whose first `pages` pages answer at once
/// and whose next one only after the client gives up on it (30 s) and asks again. Returns once
/// those `pages` are counted, while the next is on its way: the daemon, its stop, its base URL.
async fn serve_until_a_held_page(
    env: &Env,
    a: Uuid,
    pages: u64,
) -> (
    tokio::task::JoinHandle<anyhow::Result<()>>,
    CancellationToken,
    String,
) {
    for _ in 0..pages {
        env.sim.push_fault(Some(a), Fault::Delay(Duration::ZERO));
    }
    env.sim
        .push_fault(Some(a), Fault::Delay(Duration::from_secs(300)));
    let mut settings = daemon_settings(env, "6h");
    settings.truto.request_timeout_secs = 30;
    let (daemon, stop, mut rx, base) = serve_daemon(settings).await;
    loop {
        match next(&mut rx).await {
            Event::Page(n) if n < pages => {}
            Event::Page(n) => {
                assert_eq!(n, pages);
                break;
            }
            Event::Started(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    (daemon, stop, base)
}

/// A paced account's next page can be a window away: what has committed is counted (progress,
/// `/metrics`) as it commits, not when the next page arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_batch_is_counted_while_the_next_page_is_still_on_its_way() {
    let a = account_id(1);
    let env = Env::new(&[(a, 250)]).await;
    let (daemon, stop, base) = serve_until_a_held_page(&env, a, 1).await;
    let requests = env.sim.stats().by_account.get(&a).copied();
    let (_, metrics) = get(&format!("{base}/metrics")).await;
    stop.cancel();
    daemon.await.unwrap().unwrap();

    // Page 2 is asked for once at most (its answer is 300 s away); counting page 1 only when
    // page 2 arrives would have needed a third request.
    assert!(
        matches!(requests, Some(1 | 2)),
        "page 1 was counted only after {requests:?} requests"
    );
    let acct = a.to_string();
    for needle in [
        format!("lms_sync_pages_total{{account=\"{acct}\"}} 1"),
        format!("lms_sync_users_total{{account=\"{acct}\",change=\"inserted\"}} 100"),
    ] {
        assert!(metrics.contains(&needle), "missing {needle} in\n{metrics}");
    }
    // What committed stays, and the run is left to resume from its cursor.
    assert_eq!(env.store.live_users(a).await.unwrap(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sync_refreshes_the_planners_statistics_while_its_listing_goes_on() {
    let a = account_id(1);
    let env = Env::new(&[(a, 2_500)]).await;
    // 20 pages: 2,000 users, the first mark.
    let (daemon, stop, _) = serve_until_a_held_page(&env, a, 20).await;
    // The ANALYZE runs on a task of its own: wait for what it leaves in the statistics.
    let mut analyzed: i64 = 0;
    for _ in 0..1_500 {
        analyzed = sqlx::query_scalar(
            "SELECT analyze_count FROM pg_stat_user_tables WHERE relid = 'users'::regclass",
        )
        .fetch_one(env.store.pool())
        .await
        .unwrap();
        if analyzed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let requests = env.sim.stats().by_account.get(&a).copied();
    stop.cancel();
    daemon.await.unwrap().unwrap();

    assert_eq!(analyzed, 1, "no ANALYZE of users within 30 s of page 20");
    // ... while page 21 was still on its way: the listing had not ended.
    assert_eq!(requests, Some(21));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_database_the_daemon_waits_reports_not_ready_and_still_stops_cleanly() {
    let env = Env::new(&[(account_id(1), 10)]).await;
    let mut settings = daemon_settings(&env, "6h");
    settings.database.url = Some(SecretString::from(
        "postgres://nobody@127.0.0.1:1/none".to_string(),
    ));
    settings.database.connect_timeout_secs = 1;
    let (daemon, stop, _, base) = serve_daemon(settings).await;

    let (hs, _) = get(&format!("{base}/healthz")).await;
    let (rs, rb) = get(&format!("{base}/readyz")).await;
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), daemon)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    assert_eq!(hs, 200);
    assert_eq!(rs, 503);
    assert!(rb.starts_with("not ready"), "{rb}");
    assert!(rb.contains("scheduler is not running"), "{rb}");
    assert_eq!(env.sim.stats().requests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_needing_reauth_is_marked_probed_hours_apart_and_picked_up_once_it_answers() {
    let (a, b) = (account_id(1), account_id(2));
    let env = Env::new(&[(a, 120), (b, 80)]).await;
    env.sim.block(
        b,
        Fault::Status {
            status: 401,
            retry_after: None,
            remote: true,
        },
    );
    let mut settings = daemon_settings(&env, "1s");
    settings.schedule.health_retry_initial = "1h".into();
    let metrics = Arc::new(Metrics::new());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (daemon, stop) = start_daemon(
        settings.clone(),
        Hooks {
            progress: Some(Arc::new(Events(tx))),
            metrics: Some(metrics.clone()),
            ..Hooks::default()
        },
    );
    // The healthy account keeps its 1-second schedule; the broken one is tried once.
    let (mut a_runs, mut b_runs) = (0, Vec::new());
    while a_runs < 4 {
        match next(&mut rx).await {
            Event::Finished(id, o) if id == a => {
                assert_eq!(o, "succeeded");
                a_runs += 1;
            }
            Event::Finished(id, o) if id == b => b_runs.push(o),
            _ => {}
        }
    }
    stop.cancel();
    daemon.await.unwrap().unwrap();
    assert_eq!(
        b_runs,
        ["failed"],
        "probed once, then left alone for an hour"
    );
    let (health, reason, failures): (String, Option<String>, i32) = sqlx::query_as(
        "SELECT health, health_reason, health_failures FROM sync_state WHERE integrated_account_id = $1",
    )
    .bind(b)
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert_eq!((health.as_str(), failures), ("needs_reauth", 1));
    assert!(reason.unwrap().contains("re-authorize"));
    let b_label = b.to_string();
    let gauge = |h: &str| {
        metrics.get(
            "lms_sync_account_health",
            &[("account", &b_label), ("health", h)],
        )
    };
    assert_eq!((gauge("needs_reauth"), gauge("ok")), (1.0, 0.0));
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM sync_state WHERE health <> 'ok'")
            .await,
        1,
        "the healthy account stays ok"
    );

    // With probes a moment apart: a failed probe counts up; once the customer re-authorizes,
    // the next probe succeeds and the account is synced and healthy again, with no restart.
    settings.schedule.run_on_start = false;
    settings.schedule.every = Some("6h".into());
    settings.schedule.health_retry_initial = "200ms".into();
    settings.schedule.health_retry_max = "200ms".into();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (daemon, stop) = start_daemon(
        settings,
        Hooks {
            progress: Some(Arc::new(Events(tx))),
            metrics: Some(metrics.clone()),
            ..Hooks::default()
        },
    );
    loop {
        if let Event::Finished(id, o) = next(&mut rx).await {
            assert_eq!((id, o.as_str()), (b, "failed"));
            break;
        }
    }
    env.sim.unblock(b);
    loop {
        if let Event::Finished(id, o) = next(&mut rx).await {
            assert_eq!(id, b);
            if o == "succeeded" {
                break;
            }
            assert_eq!(o, "failed", "a probe that raced the unblock");
        }
    }
    stop.cancel();
    daemon.await.unwrap().unwrap();
    let (health, reason, failures, since): (String, Option<String>, i32, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as(
            "SELECT health, health_reason, health_failures, health_since FROM sync_state WHERE integrated_account_id = $1",
        )
        .bind(b)
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert_eq!((health.as_str(), reason, failures), ("ok", None, 0));
    assert!(since.is_some(), "when it recovered");
    assert_eq!((gauge("needs_reauth"), gauge("ok")), (0.0, 1.0));
    assert_mirror(&env.store, &env.sim, b).await;
    assert_mirror(&env.store, &env.sim, a).await;
}

/// Polls `base` + `path` until `done` holds for its body (within 30 s), and returns that body.
async fn poll_until(base: &str, path: &str, done: impl Fn(&str) -> bool) -> String {
    // Before the daemon's own client may have installed it.
    lms_sync::install_crypto_provider();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(&format!("{base}{path}")).await;
        if status == 200 && done(&body) {
            return body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} did not show it within 30 s:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A DBA's `LOCK TABLE` (or a `CREATE INDEX` without CONCURRENTLY) holds up the sync's writes
/// for as long as it lasts. The run is not cancelled, but the wait no longer goes unseen: the
/// status page says who holds the lock and the gauge counts the seconds; once the lock is
/// released the run finishes and the mirror is exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_held_up_by_a_lock_shows_who_holds_it_until_it_is_released() {
    let a = account_id(1);
    let env = Env::new(&[(a, 300)]).await;
    let mut settings = daemon_settings(&env, "6h");
    settings.database.lock_wait_warn_secs = 1;
    let mut dba =
        session_holding(&env.db_url, "dba-reindex", "LOCK TABLE users IN SHARE MODE").await;
    let (daemon, stop, mut rx, base) = serve_daemon(settings).await;

    let page = poll_until(&base, "/", |b| b.contains("waiting for a database lock")).await;
    assert!(
        page.contains("users held by pid ") && page.contains("application dba-reindex"),
        "{page}"
    );
    let metrics = poll_until(&base, "/metrics", |m| {
        gauge(m, "lms_sync_database_lock_wait_seconds").is_some_and(|s| s >= 1.0)
    })
    .await;
    assert!(metrics.contains("# TYPE lms_sync_database_lock_wait_seconds gauge"));
    while let Ok(e) = rx.try_recv() {
        assert!(
            !matches!(e, Event::Finished(..)),
            "the run finished behind the lock: {e:?}"
        );
    }

    sqlx::raw_sql("COMMIT").execute(&mut dba).await.unwrap();
    loop {
        if let Event::Finished(id, status) = next(&mut rx).await {
            assert_eq!((id, status.as_str()), (a, "succeeded"));
            break;
        }
    }
    assert_mirror(&env.store, &env.sim, a).await;
    poll_until(&base, "/metrics", |m| {
        gauge(m, "lms_sync_database_lock_wait_seconds") == Some(0.0)
    })
    .await;
    let (_, page) = get(&format!("{base}/")).await;
    assert!(!page.contains("waiting for a database lock"), "{page}");
    stop.cancel();
    daemon.await.unwrap().unwrap();
}

/// An account due while every run slot is taken waits, and once it has waited longer than its
/// schedule's period it is behind it: counted in `/metrics` (`LmsSyncFallingBehind`) and said
/// on the status page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_that_waits_longer_than_its_period_for_a_run_slot_is_behind_schedule() {
    let (a, b) = (account_id(1), account_id(2));
    let env = Env::new(&[(a, 50), (b, 50)]).await;
    // a's first page is held until the client gives up on it (30 s): a's run keeps the only
    // run slot meanwhile.
    env.sim
        .push_fault(Some(a), Fault::Delay(Duration::from_secs(300)));
    let mut settings = daemon_settings(&env, "1s");
    settings.sync.max_concurrent_accounts = 1;
    settings.truto.request_timeout_secs = 30;
    let (daemon, stop, _, base) = serve_daemon(settings).await;
    // b (or a, if b ran first and is due again) waits past its 1 s period within two rounds.
    metrics_show(&base, "lms_sync_accounts_behind_schedule{} 1.0\n").await;
    let metrics = get_text(&format!("{base}/metrics")).await;
    assert!(
        metrics.contains("lms_sync_accounts_waiting{} 1.0\n"),
        "{metrics}"
    );
    let lag: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lms_sync_schedule_lag_seconds{} "))
        .expect("the lag is exported")
        .parse()
        .unwrap();
    assert!(lag > 1.0, "{lag}");
    let page = get_text(&format!("{base}/")).await;
    stop.cancel();
    daemon.await.unwrap().unwrap();
    assert!(
        page.contains("<span class=\"pill bad\">behind schedule</span>"),
        "{page}"
    );
    assert!(
        page.contains("Accounts waiting for a run: 1 account due that no replica syncs yet")
            && page.contains(
                "1 of them has waited longer than their schedule's period: the fleet's runs \
                 do not keep up"
            ),
        "{page}"
    );
}
