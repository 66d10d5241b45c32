//! A soak: `lms-sync run` (the real binary) on a one-second schedule over several accounts,
//! with a fifth of all requests failing and the data changing between rounds, for many rounds.
//! Its memory and file descriptors stay flat, its database connections do not leak, its
//! counters never go backwards, and the mirror ends exact.
//!
//! `LMS_SYNC_SOAK_ROUNDS` sets the rounds (default 12; the README's full run uses 300).

use std::collections::{BTreeMap, HashMap};

use crate::helpers::daemon::*;
use crate::helpers::*;
use lms_sync::devkit::simulator::Simulator;
use lms_sync::store::{BUDGET_APPLICATION_NAME, LEASE_APPLICATION_NAME, POOL_APPLICATION_NAME};
use serde_json::json;
use uuid::Uuid;

fn rounds() -> usize {
    std::env::var("LMS_SYNC_SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
        .max(8)
}

/// What one look at the process found.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    fds: usize,
    /// The process's database sessions by role (see `lms_sync::store::*_APPLICATION_NAME`).
    pool: i64,
    leases: i64,
    budget: i64,
    /// Sessions in the database that are none of those (ours excepted).
    other: i64,
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// Every counter series of a Prometheus text page.
fn counters(page: &str) -> BTreeMap<String, f64> {
    page.lines()
        .filter(|l| !l.starts_with('#') && l.contains("_total"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_rounds_with_faults_keep_memory_fds_and_connections_flat_and_end_exact() {
    lms_sync::install_crypto_provider();
    let rounds = rounds();
    let accounts: Vec<Uuid> = (1..=4).map(account_id).collect();
    let sim = Simulator::start(0).await.unwrap();
    for (i, a) in accounts.iter().enumerate() {
        sim.add_account(*a, 250 + 50 * i, i as u64 + 1);
    }
    sim.set_random_faults(0.2, 42);
    let db = fresh_database_url().await;
    let cfg = config(&sim, &accounts, "1s", 4);
    let mut d = spawn(&cfg, &db);
    let pid = d.child.id().unwrap();
    let listening = d
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await;
    let metrics_url = format!(
        "http://{}/metrics",
        listening["fields"]["addr"].as_str().unwrap()
    );
    let store = store_for(&db).await;

    let mut finished: HashMap<String, usize> = HashMap::new();
    let mut samples: Vec<Sample> = Vec::new();
    let mut last_counters: BTreeMap<String, f64> = BTreeMap::new();
    let mut round = 0;
    while round < rounds {
        let ev = d.wait_for("sync run finished").await;
        let account = ev["span"]["account"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        *finished.entry(account).or_default() += 1;
        if finished.len() < accounts.len() || finished.values().min() <= Some(&round) {
            continue;
        }
        round += 1;
        // Every account finished another run: look at the process. Only client sessions
        // count: an autovacuum worker on this database shows here with no application name.
        let (pool, leases, budget, other): (i64, i64, i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE application_name = $1),
                    count(*) FILTER (WHERE application_name = $2),
                    count(*) FILTER (WHERE application_name = $3),
                    count(*) FILTER (WHERE application_name NOT IN ($1, $2, $3))
               FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()
                AND backend_type = 'client backend'",
        )
        .bind(POOL_APPLICATION_NAME)
        .bind(LEASE_APPLICATION_NAME)
        .bind(BUDGET_APPLICATION_NAME)
        .fetch_one(store.pool())
        .await
        .unwrap();
        samples.push(Sample {
            rss_kib: rss_kib(pid),
            fds: fds(pid),
            pool,
            leases,
            budget,
            other,
        });
        let page = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let now = counters(&page);
        for (series, before) in &last_counters {
            let after = now
                .get(series)
                .copied()
                .unwrap_or_else(|| panic!("{series} vanished"));
            assert!(after >= *before, "{series} went from {before} to {after}");
        }
        last_counters = now;
        // Upstream moves on between rounds.
        let a = accounts[round % accounts.len()];
        sim.update_user(
            a,
            &(round % 200 + 1).to_string(),
            json!({"job_title": format!("Round {round}")}),
        );
        sim.add_users(a, 1);
        sim.delete_user(a, &(round % 50 + 100).to_string());
    }

    eprintln!("soak: {rounds} rounds; samples (RSS KiB, fds, connections): {samples:?}");
    // Flat: RSS moves with how many runs are in flight at a sample, so compare medians (a
    // leak lifts them) and bound the peak by the design (a few MiB per concurrent account).
    let warm = &samples[2..samples.len() / 2];
    let late = &samples[samples.len() / 2..];
    let max = |s: &[Sample], f: fn(&Sample) -> u64| s.iter().map(f).max().unwrap();
    let median = |s: &[Sample], f: fn(&Sample) -> u64| {
        let mut v: Vec<u64> = s.iter().map(f).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    let (warm_rss, late_rss) = (median(warm, |s| s.rss_kib), median(late, |s| s.rss_kib));
    assert!(
        late_rss <= warm_rss + warm_rss / 5 + 8192,
        "memory grew: median {warm_rss} KiB then {late_rss} KiB ({samples:?})"
    );
    assert!(
        max(late, |s| s.rss_kib) < 64 * 1024,
        "peak RSS: {samples:?}"
    );
    // Descriptors too move with connections in flight (HTTP keep-alive, the pool, leases).
    let (warm_fds, late_fds) = (
        median(warm, |s| s.fds as u64),
        median(late, |s| s.fds as u64),
    );
    assert!(
        late_fds <= warm_fds + 3,
        "file descriptors grew: median {warm_fds} then {late_fds}"
    );
    assert!(max(late, |s| s.fds as u64) < 64, "descriptors: {samples:?}");
    // Database connections cannot creep: the pool fills lazily up to its size (10, the
    // default) and then holds; outside it the process holds one session per account it is
    // syncing (at most 4 at once; a finished run's lease is closed before its next run starts)
    // and one for the shared request budget. A leaked lease or budget session breaks a bound
    // within a round or two.
    for s in &samples {
        assert!(
            s.pool <= 10 && s.leases <= 4 && s.budget == 1 && s.other == 0,
            "database sessions beyond the design (or the budget's missing): {s:?} ({samples:?})"
        );
    }

    // Faults off: the next run of every account ends exact. Only a run opened after the last
    // change upstream counts (one still listing when it was made may miss it), and only a whole
    // listing (a resumed one starts past the changes on the pages before its cursor).
    sim.set_random_faults(0.0, 0);
    let opened_before: i64 = sqlx::query_scalar("SELECT coalesce(max(run_id), 0) FROM sync_runs")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let mut clean: HashMap<String, bool> = HashMap::new();
    while clean.len() < accounts.len() {
        let ev = d.wait_for("sync run finished").await;
        let account = ev["span"]["account"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let run_id = ev["span"]["run_id"]
            .as_i64()
            .unwrap_or_else(|| panic!("a finished run names its run_id: {ev}"));
        let resumed = ev["fields"]["resumed"]
            .as_bool()
            .unwrap_or_else(|| panic!("a finished run says whether it resumed: {ev}"));
        if run_id > opened_before
            && !resumed
            && ev["fields"]["outcome"] == "succeeded"
            && ev["fields"]["retries"] == 0
        {
            clean.insert(account, true);
        }
    }
    assert_eq!(d.terminate().await, 0);
    for a in &accounts {
        assert_mirror(&store, &sim, *a).await;
    }
    let stuck: i64 = sqlx::query_scalar("SELECT count(*) FROM sync_runs WHERE outcome = 'running'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(stuck, 0);
}
