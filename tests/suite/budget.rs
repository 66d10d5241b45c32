//! The token's request budget shared by every process on one database: negotiated shares that
//! never sum above the limit, a dead holder's share free again after one window, and two
//! service replicas plus a one-off sync together under a simulator that enforces both windows,
//! and an account's window handed on with its lease.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::helpers::daemon::*;
use crate::helpers::*;
use lms_sync::devkit::simulator::{RateLimit, SimStats, DEMO_TOKEN};
use lms_sync::source::budget::{Limit, RateBudget};
use lms_sync::store::{Handover, ShareHolder, FENCE_MARGIN, LEASE_APPLICATION_NAME};
use lms_sync::sync::SyncOutcome;
use uuid::Uuid;

/// A holder whose shares are good only for the round that gave them (no lease): a test's
/// holder sends nothing.
async fn holder(env: &Env, name: &str) -> ShareHolder {
    env.store.budget_holder(name, Duration::ZERO).await.unwrap()
}

/// A share handed on through the database stays hot for one window (1 s in these tests): it may
/// not come back sooner, since requests sent under it may still be in Truto's window, and it
/// must come back within the window, the rounds that find it given back or gone and then take
/// it (at most 200 ms apart while requests wait), the margin for a gone holder's stopping
/// (100 ms) and the rounds' own time; not a second window, nor a lease more. Measured: 1.0–1.05 s
/// for a share given back, 1.1–1.2 s for a test's holder gone, 1.25–1.35 s for a killed
/// replica's, also with both cores kept busy.
fn assert_back_after_one_window(waited: Duration, what: &str) {
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(1_600),
        "{what} came back after {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shares_split_fairly_never_exceed_the_limit_and_a_dead_holders_share_returns_after_a_window(
) {
    let env = Env::new(&[]).await;
    let (limit, window) = (100, 1);
    let mut a = holder(&env, "a").await;
    let mut b = holder(&env, "b").await;
    // Alone, a gets everything it wants.
    assert_eq!(
        a.negotiate("token", limit, window, 100, |_| 100)
            .await
            .unwrap()
            .share,
        100
    );
    // b arrives: nothing is free; a gives back half at its next round, and b may take it only
    // once the requests a sent under it have left the window.
    assert_eq!(
        b.negotiate("token", limit, window, 100, |_| 100)
            .await
            .unwrap()
            .share,
        0
    );
    assert_eq!(
        a.negotiate("token", limit, window, 100, |_| 100)
            .await
            .unwrap()
            .share,
        50
    );
    assert_eq!(
        b.negotiate("token", limit, window, 100, |_| 100)
            .await
            .unwrap()
            .share,
        0
    );
    let released = Instant::now();
    let b_share = loop {
        let n = b
            .negotiate("token", limit, window, 100, |_| 100)
            .await
            .unwrap();
        if n.share > 0 || released.elapsed() > Duration::from_secs(5) {
            break n;
        }
        // Time itself is what is tested here: the share is hot for one window.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((b_share.share, b_share.holders), (50, 2));
    assert_back_after_one_window(released.elapsed(), "the half a gave back");

    // a dies holding its half (its connection goes): b may take it one window later, not
    // before, and not never.
    drop(a);
    let died = Instant::now();
    let mut shares = Vec::new();
    loop {
        let n = b
            .negotiate("token", limit, window, 100, |_| 100)
            .await
            .unwrap();
        shares.push(n.share);
        if n.share == 100 || died.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(shares.last(), Some(&100), "{shares:?}");
    // A holder stops sending when its connection ends, so the share is hot for one window
    // from when b found it gone: not before the window, and with room for the rounds but not
    // for a second window.
    assert_back_after_one_window(
        died.elapsed(),
        &format!("the dead holder's share ({shares:?})"),
    );
    let held: i64 = env
        .scalar_i64("SELECT coalesce(sum(share), 0)::bigint FROM rate_shares")
        .await;
    assert_eq!(held, 100);
    b.leave("token", 100).await;
}

/// Two holders, `a` without a lease and `b` with 3 s; b holds the whole limit. Then b's
/// backend is terminated (what a database restart or a connection the server dropped does).
async fn b_holds_everything_and_its_backend_is_terminated(
    env: &Env,
    b_watches: bool,
) -> (ShareHolder, ShareHolder) {
    let (limit, window) = (100, 1);
    let a = holder(env, "a").await;
    let mut b = env
        .store
        .budget_holder("b", Duration::from_secs(3))
        .await
        .unwrap();
    let n = b
        .negotiate("token", limit, window, 100, |_| 0)
        .await
        .unwrap();
    assert_eq!(n.share, 100);
    if !b_watches {
        // The row as a binary older than migration 0017 writes it.
        let marked = env
            .scalar_i64(
                "WITH m AS (UPDATE rate_shares SET fences_on_loss = false
                             WHERE holder = 'b' RETURNING 1)
                 SELECT count(*) FROM m",
            )
            .await;
        assert_eq!(marked, 1);
    }
    let terminated = env
        .scalar_i64(
            "SELECT count(*) FROM rate_shares
              WHERE holder = 'b' AND pg_terminate_backend(backend_pid, 10000)",
        )
        .await;
    assert_eq!(terminated, 1);
    (a, b)
}

/// a's next round, which finds b gone: a may not take b's share yet, since requests sent under
/// it may still be in the server's window. Returns in how many milliseconds from now that
/// share's window of heat starts.
async fn a_finds_b_gone(env: &Env, a: &mut ShareHolder) -> i64 {
    assert_eq!(
        a.negotiate("token", 100, 1, 100, |_| 0)
            .await
            .unwrap()
            .share,
        0,
        "a took the share of a holder that may still be sending"
    );
    env.scalar_i64(
        "SELECT (extract(epoch FROM released_at - now()) * 1000)::bigint
           FROM rate_share_releases WHERE budget = 'token' AND released = 100",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_whose_connection_is_dropped_sees_it_at_once_and_its_share_is_hot_a_window_from_then(
) {
    let env = Env::new(&[]).await;
    let (mut a, mut b) = b_holds_everything_and_its_backend_is_terminated(&env, true).await;
    // b watches its connection: it learns of the end at once, and stops sending then (the
    // service sets its share to 0 when `lost` resolves).
    let reason = tokio::time::timeout(Duration::from_secs(1), b.lost())
        .await
        .expect("b did not see its connection end");
    assert!(!reason.is_empty());
    // Hot from when a found b gone (and the margin for b's waking), not from b's lease's end.
    let from_now = a_finds_b_gone(&env, &mut a).await;
    assert!(
        (0..=FENCE_MARGIN.as_millis() as i64).contains(&from_now),
        "hot from {from_now} ms from now"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_holder_whose_connection_is_dropped_keeps_its_share_hot_until_its_lease_and_a_window_end(
) {
    // A holder of a binary that does not watch its connection may be alive and sending under
    // its share until its lease runs out: the others must count that share as used until then,
    // and a window beyond.
    let env = Env::new(&[]).await;
    let (mut a, mut b) = b_holds_everything_and_its_backend_is_terminated(&env, false).await;
    // Hot from the end of b's lease (3 s after its round), not from now.
    let from_now = a_finds_b_gone(&env, &mut a).await;
    assert!(
        (2_500..=3_000).contains(&from_now),
        "hot from {from_now} ms from now"
    );
    // Such a holder finds out at its next round, which fails: it sends nothing until it is
    // back.
    assert!(b.negotiate("token", 100, 1, 100, |_| 0).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_backend_with_a_gone_holders_pid_does_not_keep_it_alive() {
    let env = Env::new(&[]).await;
    let (limit, window) = (100, 1);
    let mut a = holder(&env, "a").await;
    let mut b = holder(&env, "b").await;
    b.negotiate("token", limit, window, 100, |_| 0)
        .await
        .unwrap();
    // b's row as a restart leaves it when a new backend gets b's old pid: that backend started
    // after b's last round. Its share must count as gone (hot), not be held for ever.
    let moved = env
        .scalar_i64(
            "WITH m AS (UPDATE rate_shares SET renewed_at = now() - interval '1 hour'
                         WHERE holder = 'b' RETURNING 1)
             SELECT count(*) FROM m",
        )
        .await;
    assert_eq!(moved, 1);
    let n = a
        .negotiate("token", limit, window, 100, |_| 0)
        .await
        .unwrap();
    assert_eq!((n.share, n.holders), (0, 1));
    let hot = env
        .scalar_i64("SELECT coalesce(sum(released), 0)::bigint FROM rate_share_releases")
        .await;
    assert_eq!(hot, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_stalled_inside_a_round_holds_up_the_others_for_a_second_not_until_it_wakes() {
    let env = Env::new(&[]).await;
    let (limit, window) = (100, 1);
    let mut b = holder(&env, "b").await;
    // a freezes halfway through its second round, holding the round's lock. The stall is the
    // fault injected, on a thread and runtime of a's own, as a stopped process would be.
    let (inside, stalled) = tokio::sync::oneshot::channel();
    let store = env.store.clone();
    let a_round = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut a = store.budget_holder("a", Duration::ZERO).await.unwrap();
            a.negotiate("token", limit, window, 50, |_| 0)
                .await
                .unwrap();
            a.negotiate("token", limit, window, 50, |_| {
                inside.send(()).unwrap();
                std::thread::sleep(Duration::from_secs(4));
                0
            })
            .await
            .is_err()
        })
    });
    stalled.await.unwrap();
    // b's round waits for the lock only until the server ends a's transaction (1 s idle).
    let started = Instant::now();
    let n = b
        .negotiate("token", limit, window, 50, |_| 0)
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_millis(2_500),
        "b waited {waited:?} for a stalled holder"
    );
    assert_eq!(n.share, 50);
    // a, once awake, finds its round undone: it must not send under what it thought it got.
    let undone = tokio::task::spawn_blocking(|| a_round.join().unwrap())
        .await
        .unwrap();
    assert!(undone);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sent_while_a_share_is_negotiated_keep_the_part_given_back_hot() {
    let env = Env::new(&[]).await;
    let (limit, window) = (100, 1);
    let mut a = holder(&env, "a").await;
    let mut b = holder(&env, "b").await;
    let share = |n: lms_sync::store::Negotiated| n.share;
    // a holds everything but has sent nothing when b arrives and asks for half.
    assert_eq!(
        share(
            a.negotiate("token", limit, window, 100, |_| 0)
                .await
                .unwrap()
        ),
        100
    );
    assert_eq!(
        share(
            b.negotiate("token", limit, window, 100, |_| 0)
                .await
                .unwrap()
        ),
        0
    );
    // a's next round gives back half. Its requests are counted once that is decided, and by
    // then it has sent its whole old share (a burst while the round ran): the half it gives
    // back was used, so it must stay hot for a window.
    let mut asked = Vec::new();
    let n = a
        .negotiate("token", limit, window, 100, |decided| {
            asked.push(decided);
            100
        })
        .await
        .unwrap();
    assert_eq!((n.share, asked), (50, vec![50]));
    assert_eq!(
        share(
            b.negotiate("token", limit, window, 100, |_| 0)
                .await
                .unwrap()
        ),
        0,
        "b took the half a had just used"
    );
    let hot = env
        .scalar_i64("SELECT coalesce(sum(released), 0)::bigint FROM rate_share_releases")
        .await;
    assert_eq!(hot, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_configured_with_different_budgets_share_the_strictest_until_they_agree() {
    let env = Env::new(&[]).await;
    let mut a = holder(&env, "a").await;
    let mut b = holder(&env, "b").await;
    // a is configured with 100 a second, alone: all of it.
    let n = a.negotiate("token", 100, 1, 100, |_| 100).await.unwrap();
    assert_eq!((n.share, n.limit, n.disagree), (100, 100, false));
    // b, configured with 60 (a rolling change of the config, halfway), finds a's 100 held.
    let n = b.negotiate("token", 60, 1, 60, |_| 0).await.unwrap();
    assert_eq!((n.share, n.limit, n.disagree), (0, 60, true));
    // a learns of b's stricter budget and keeps only its fair part of 60, not of 100.
    let n = a.negotiate("token", 100, 1, 100, |_| 100).await.unwrap();
    assert_eq!((n.share, n.limit, n.disagree), (30, 60, true));
    // What a gave back is hot for a window; then b takes the rest of the 60, and no more.
    let released = Instant::now();
    let n = loop {
        let n = b.negotiate("token", 60, 1, 60, |_| 0).await.unwrap();
        if n.share > 0 || released.elapsed() > Duration::from_secs(5) {
            break n;
        }
        // Time itself is what is tested here: the share is hot for one window.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(n.share, 30);
    assert_back_after_one_window(released.elapsed(), "the part a gave back");
    let held = env
        .scalar_i64("SELECT sum(share)::bigint FROM rate_shares WHERE budget = 'token'")
        .await;
    assert_eq!(held, 60);
    // A row of a binary older than migration 0019 says nothing of its budget: taken to agree.
    sqlx::query("UPDATE rate_shares SET per_token = NULL, window_secs = NULL WHERE holder = 'b'")
        .execute(env.store.pool())
        .await
        .unwrap();
    let n = a.negotiate("token", 100, 1, 100, |_| 30).await.unwrap();
    assert_eq!((n.limit, n.disagree), (100, false));
    b.leave("token", 0).await;
    a.leave("token", 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_configured_with_different_budgets_share_the_strictest_and_never_run_into_it() {
    // A rolling change of `rate_budget` caught halfway: r2 has the new budget, which is what
    // the server enforces (20 a second); r1 still has the old one, twice as large. Between them
    // they must keep to 20, and say why. (Each deciding by its own would send 30 a second.)
    let (a, b) = (account_id(1), account_id(2));
    let env = Env::new(&[(a, 600), (b, 1_000)]).await;
    let per_token = SHARED_PER_TOKEN;
    env.sim.set_rate_limit(Some(RateLimit {
        per_account: 1000,
        per_token,
        window: Duration::from_secs(1),
    }));
    let (cfg_a, cfg_b) = (
        budget_config(&env, &[a], 2 * per_token),
        budget_config(&env, &[b], per_token),
    );
    let mut r2 = spawn(&cfg_b, &env.db_url);
    while r2.next_budget_share().await != per_token as i64 {}
    let mut r1 = spawn(&cfg_a, &env.db_url);
    let said = r1
        .wait_for("another process sharing the request budget is configured with a stricter one (rate_budget); all share the strictest until their configs agree")
        .await;
    assert_eq!(said["fields"]["configured"], 2 * per_token, "{said}");
    assert_eq!(said["fields"]["shared"], per_token, "{said}");
    let said = r2
        .wait_for("another process sharing the request budget is configured with a different one (rate_budget); this one's is the strictest, and all share it until their configs agree")
        .await;
    assert_eq!(said["fields"]["shared"], per_token, "{said}");
    loop {
        let ev = r1.wait_for("sync run finished").await;
        if ev["fields"]["outcome"] == "succeeded" {
            break;
        }
    }
    // r1 leaves first: alone, it would go back to its own (wrong) budget.
    assert_eq!(r1.terminate().await, 0);
    // r2 says the configs agree again once r1's share is gone, and finishes its listing.
    let (mut agreed, mut finished) = (false, false);
    while !(agreed && finished) {
        let ev = tokio::time::timeout(Duration::from_secs(60), r2.events.recv())
            .await
            .expect("r2 goes on")
            .expect("r2 runs");
        let message = &ev["fields"]["message"];
        agreed |= message
            == "every process sharing the request budget is configured with the same one again";
        finished |= message == "sync run finished" && ev["fields"]["outcome"] == "succeeded";
    }
    assert_eq!(r2.terminate().await, 0);
    let stats = env.sim.stats();
    assert_eq!(stats.rate_limited, 0, "429s: {stats:?}");
    assert!(stats.max_token_window <= per_token, "{stats:?}");
    for id in [a, b] {
        assert_mirror(&env.store, &env.sim, id).await;
    }
}

/// What a replica logs when it sees another process run another configuration.
const DIFFERENT_CONFIGURATION: &str = "another process sharing the database runs with a different configuration (a rollout halfway, a replica left on an old ConfigMap, a reload sent to some replicas only): lms-sync status and the status page name each process's";

/// Replicas left on different configurations (a ConfigMap edited and one pod restarted, a
/// SIGHUP sent to one replica only) are named as such: each replica's digest is recorded with
/// its share, the same `lms-sync config` prints, and `lms_sync_config_mismatch`, the status
/// page and `lms-sync status` say they differ (a third configuration joining is logged too),
/// until a reload makes them one again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_different_configurations_are_named_until_a_reload_makes_them_one() {
    let (a, b) = (account_id(1), account_id(2));
    let env = Env::new(&[(a, 20), (b, 20)]).await;
    let cfg_1 = config(&env.sim, &[a, b], "1h", 4);
    // A key a reload applies: SIGHUP with the first's file makes the second run it.
    let cfg_2 = config(&env.sim, &[a, b], "1h", 4);
    let text = std::fs::read_to_string(&cfg_2).unwrap();
    std::fs::write(&cfg_2, format!("{text}[history]\nretention_days = 30\n")).unwrap();
    let digest = |cfg: &std::path::Path| {
        let out = std::process::Command::new(BIN)
            .env_clear()
            .args(["--config", cfg.to_str().unwrap(), "config", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["digest"].as_str().unwrap().to_string()
    };
    let (d1, d2) = (digest(&cfg_1), digest(&cfg_2));
    assert_ne!(d1, d2);

    let mut r1 = spawn_env(
        &cfg_1,
        &env.db_url,
        &[],
        &[
            ("TRUTO_API_TOKEN", DEMO_TOKEN),
            ("LMS_SYNC_ADMIN_TOKEN", "admin-of-r1"),
        ],
    );
    let ops = r1
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await["fields"]["addr"]
        .as_str()
        .unwrap()
        .to_string();
    let r2 = spawn(&cfg_2, &env.db_url);
    let said = r1.wait_for(DIFFERENT_CONFIGURATION).await;
    assert_eq!(
        said["fields"]["differs"],
        format!("{d2}: history.retention_days 30, not 0"),
        "{said}"
    );
    let recorded: Vec<(Option<String>, Option<String>)> =
        sqlx::query_as("SELECT version, config_digest FROM rate_shares ORDER BY config_digest")
            .fetch_all(env.store.pool())
            .await
            .unwrap();
    let version = Some(env!("CARGO_PKG_VERSION").to_string());
    let mut expected = vec![
        (version.clone(), Some(d1.clone())),
        (version.clone(), Some(d2.clone())),
    ];
    expected.sort_by(|x, y| x.1.cmp(&y.1));
    assert_eq!(recorded, expected);
    let metrics = get_text(&format!("http://{ops}/metrics")).await;
    assert_eq!(
        gauge(&metrics, "lms_sync_config_mismatch"),
        Some(1.0),
        "{metrics}"
    );
    let page = get_text(&format!("http://{ops}/")).await;
    assert!(
        page.contains(&format!(
            "configuration {d2} <span class=\"why\">not this process's ({d1}), with \
             history.retention_days 30, not 0: a rollout halfway"
        )),
        "{page}"
    );
    let out = lms_sync(&cfg_1, &env.db_url, &["status"])
        .output()
        .await
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("; the replicas run 2 different configurations ("),
        "{status}"
    );
    assert!(!status.contains("service: no lms-sync process"), "{status}");
    assert!(
        status.contains(&format!("configuration {d1}\n")),
        "{status}"
    );
    assert!(
        status.contains(&format!(
            "configuration {d2} (unlike {d1}: history.retention_days 30, not 0)\n"
        )),
        "{status}"
    );
    let body = reqwest::Client::new()
        .get(format!("http://{ops}/status/budget"))
        .bearer_auth("admin-of-r1")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let b: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{body}"));
    assert_eq!(b["compared_with"], d1.as_str(), "{b}");
    let theirs = b["configurations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["digest"] == d2.as_str())
        .unwrap_or_else(|| panic!("{b}"));
    assert_eq!(theirs["replicas"], 1, "{b}");
    assert_eq!(
        theirs["differences"],
        serde_json::json!(["history.retention_days 30, not 0"]),
        "{b}"
    );
    // Each configuration is recorded once, secrets aside.
    let recorded: Vec<(String, serde_json::Value)> =
        sqlx::query_as::<_, (String, sqlx::types::Json<serde_json::Value>)>(
            "SELECT config_digest, settings FROM replica_configurations ORDER BY config_digest",
        )
        .fetch_all(env.store.pool())
        .await
        .unwrap()
        .into_iter()
        .map(|(d, s)| (d, s.0))
        .collect();
    let mut digests: Vec<&str> = recorded.iter().map(|(d, _)| d.as_str()).collect();
    digests.sort();
    let mut both = vec![d1.as_str(), d2.as_str()];
    both.sort();
    assert_eq!(digests, both);
    for (_, settings) in &recorded {
        let text = settings.to_string();
        assert!(settings["history"]["retention_days"].is_number(), "{text}");
        assert!(settings.get("log").is_none(), "{text}");
        assert!(!text.contains(&env.db_url), "a secret recorded");
        assert!(!text.contains(DEMO_TOKEN), "a secret recorded");
    }

    // A third configuration joining while two already differ is named as well.
    let cfg_3 = config(&env.sim, &[a, account_id(2)], "1h", 4);
    let text = std::fs::read_to_string(&cfg_3).unwrap();
    std::fs::write(
        &cfg_3,
        format!("{text}[history]\nsync_runs_retention_days = 30\n"),
    )
    .unwrap();
    let d3 = digest(&cfg_3);
    let r3 = spawn(&cfg_3, &env.db_url);
    let said = r1.wait_for(DIFFERENT_CONFIGURATION).await;
    let differs = said["fields"]["differs"].as_str().unwrap_or_default();
    assert!(
        differs.contains(&format!(
            "{d3}: history.sync_runs_retention_days 30, not 90"
        )) && differs.contains(&format!("{d2}: history.retention_days 30, not 0")),
        "{said}"
    );
    assert_eq!(r3.terminate().await, 0);

    // The second replica reloads the first's file: one configuration again.
    std::fs::copy(&cfg_1, &cfg_2).unwrap();
    r2.hangup().await;
    r1.wait_for("the processes sharing the database run with one configuration again")
        .await;
    let metrics = get_text(&format!("http://{ops}/metrics")).await;
    assert_eq!(
        gauge(&metrics, "lms_sync_config_mismatch"),
        Some(0.0),
        "{metrics}"
    );
    let same: i64 = env
        .scalar_i64("SELECT count(DISTINCT config_digest) FROM rate_shares")
        .await;
    assert_eq!(same, 1);
    assert_eq!(r2.terminate().await, 0);
    assert_eq!(r1.terminate().await, 0);
}

/// A config for the binary with a budget of `per_token` requests per second (and 1,000 per
/// account).
fn budget_config(env: &Env, accounts: &[Uuid], per_token: usize) -> TempFile {
    budget_config_with(
        env,
        accounts,
        RateLimit {
            per_account: 1000,
            per_token,
            window: Duration::from_secs(1),
        },
    )
}

/// A config for the binary whose budget is `limit` (the simulator's, in these tests), pages of
/// 10.
pub(crate) fn budget_config_with(env: &Env, accounts: &[Uuid], limit: RateLimit) -> TempFile {
    let cfg = config(&env.sim, accounts, "1h", 10);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[truto]\n",
        &format!(
            "[rate_budget]\nper_account = {}\nper_token = {}\nwindow_secs = {}\n[truto]\npage_size = 10\n",
            limit.per_account,
            limit.per_token,
            limit.window.as_secs()
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    cfg
}

/// One account of `users` users whose window is 10 requests per 2 s, both at the simulator
/// and in the config for the binary (pages of 10).
async fn one_account_at_10_per_2s(users: usize) -> (Uuid, Env, TempFile) {
    let id = account_id(1);
    let env = Env::new(&[(id, users)]).await;
    let limit = RateLimit {
        per_account: 10,
        per_token: 1000,
        window: Duration::from_secs(2),
    };
    env.sim.set_rate_limit(Some(limit));
    let cfg = budget_config_with(&env, &[id], limit);
    (id, env, cfg)
}

/// `lms-sync sync` once, which must succeed.
async fn sync_once(env: &Env, cfg: &std::path::Path) {
    let out = one_off_sync(cfg, &env.db_url).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What the simulator saw of an account of [`one_account_at_10_per_2s`]: no 429, never more
/// than its 10 requests in its window, and the account mirrored exactly.
async fn assert_kept_to_10_per_window(env: &Env, id: Uuid) -> SimStats {
    let stats = env.sim.stats();
    assert_eq!(stats.rate_limited, 0, "429s: {stats:?}");
    assert!(stats.max_account_window <= 10, "{stats:?}");
    assert_mirror(&env.store, &env.sim, id).await;
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_and_a_one_off_sync_stay_within_both_windows_together() {
    let service: Vec<Uuid> = (1..=4).map(account_id).collect();
    let one_off: Vec<Uuid> = (5..=6).map(account_id).collect();
    let all: Vec<(Uuid, usize)> = service
        .iter()
        .chain(&one_off)
        .map(|id| (*id, 150))
        .collect();
    let env = Env::new(&all).await;
    let (per_account, per_token) = (6, 20);
    let limit = RateLimit {
        per_account,
        per_token,
        window: Duration::from_secs(1),
    };
    env.sim.set_rate_limit(Some(limit));
    // Run the migrations once, so the replicas start together.
    let cfg = budget_config_with(&env, &service, limit);
    let mut r1 = spawn(&cfg, &env.db_url);
    let mut r2 = spawn(&cfg, &env.db_url);
    let sync_cfg = budget_config_with(&env, &one_off, limit);
    let one = one_off_sync(&sync_cfg, &env.db_url).output();
    let waiting = async {
        let mut done = HashSet::new();
        while done.len() < service.len() {
            tokio::select! {
                ev = r1.wait_for("sync run finished") => { if ev["fields"]["outcome"] == "succeeded" { done.insert(ev["span"]["account"].to_string()); } }
                ev = r2.wait_for("sync run finished") => { if ev["fields"]["outcome"] == "succeeded" { done.insert(ev["span"]["account"].to_string()); } }
            }
        }
    };
    let (one, ()) = tokio::join!(one, waiting);
    let one = one.unwrap();
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    assert_eq!(r1.terminate().await, 0);
    assert_eq!(r2.terminate().await, 0);

    let stats = env.sim.stats();
    assert_eq!(stats.rate_limited, 0, "429s: {stats:?}");
    assert!(stats.max_token_window <= per_token, "{stats:?}");
    assert!(stats.max_account_window <= per_account, "{stats:?}");
    // 6 accounts × 15 pages = 90 requests at 20 a second, each account's at 6 a second.
    assert!(stats.requests >= 90, "{stats:?}");
    for id in service.iter().chain(&one_off) {
        assert_mirror(&env.store, &env.sim, *id).await;
    }
}

/// The server reports the account's window on every answer (`ratelimit-*`), and another client
/// has spent most of it: the sync sends what the server says is left, waits for it to reset,
/// and never gets a 429 (its own window alone would have sent 10).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_the_server_says_is_spent_by_another_client_is_waited_for_without_a_429() {
    let (id, env, cfg) = one_account_at_10_per_2s(150).await;
    env.sim.set_ratelimit_headers(true);
    // The other client: 7 of the account's 10, answered before the sync starts.
    let other = env.client();
    let never = tokio_util::sync::CancellationToken::new();
    for _ in 0..7 {
        other
            .fetch_page(&env.account(id), None, &never)
            .await
            .unwrap();
    }
    sync_once(&env, &cfg).await;
    let stats = assert_kept_to_10_per_window(&env, id).await;
    assert_eq!(stats.requests, 7 + 15, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_window_goes_with_its_lease_to_the_next_process_that_syncs_it() {
    // 100 users in pages of 10: one sync sends 10 requests, the whole window.
    let (id, env, cfg) = one_account_at_10_per_2s(100).await;
    // Two processes one after the other: the second counts the first's requests, still in the
    // server's window, as its own, and waits for them instead of running into 429s.
    for _ in 0..2 {
        sync_once(&env, &cfg).await;
    }
    let stats = assert_kept_to_10_per_window(&env, id).await;
    assert_eq!(stats.requests, 20, "{stats:?}");
}

/// The token's budget, per 1 s window, of [`two_replicas_sharing_20_a_second`].
const SHARED_PER_TOKEN: usize = 20;

/// Two `run` replicas sharing a token budget of 20 requests a second, which the simulator
/// enforces, each listing an account big enough to go on for a while (150 pages): r1 starts
/// alone and takes the whole budget, then r2 joins, and r1 gives back half, hot for a window.
/// Returns once r2 has it: the env, r1's config, both replicas and r2's operations address.
async fn two_replicas_sharing_20_a_second() -> (Env, TempFile, Daemon, Daemon, String) {
    let (a, b) = (account_id(1), account_id(2));
    let env = Env::new(&[(a, 3_000), (b, 3_000)]).await;
    env.sim.set_rate_limit(Some(RateLimit {
        per_account: 1000,
        per_token: SHARED_PER_TOKEN,
        window: Duration::from_secs(1),
    }));
    let cfg_a = budget_config(&env, &[a], SHARED_PER_TOKEN);
    let mut r1 = spawn(&cfg_a, &env.db_url);
    while r1.next_budget_share().await != SHARED_PER_TOKEN as i64 {}
    // r2's config may go once r2 holds a share: it has read it by then.
    let cfg_b = budget_config(&env, &[b], SHARED_PER_TOKEN);
    let mut r2 = spawn(&cfg_b, &env.db_url);
    let ops = r2
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await["fields"]["addr"]
        .as_str()
        .unwrap()
        .to_string();
    while r2.next_budget_share().await <= 0 {}
    (env, cfg_a, r1, r2, ops)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_holding_its_share_starves_the_other_for_a_window_and_the_rounds_that_find_it(
) {
    let per_token = SHARED_PER_TOKEN;
    let (env, cfg_a, mut r1, mut r2, ops) = two_replicas_sharing_20_a_second().await;
    // `lms-sync status` shows the split from the database: both processes, and the window
    // adding up (held + hot + free = the token's limit).
    let out = lms_sync(&cfg_a, &env.db_url, &["status"])
        .output()
        .await
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{status}");
    let summary = status
        .lines()
        .find(|l| l.starts_with("request budget: "))
        .unwrap_or_else(|| panic!("no budget line: {status}"));
    // (Up to what follows the figures: the replicas' configurations differ here, each with
    // its own account, and their digests hold digits.)
    let figures: Vec<i64> = summary
        .split(';')
        .next()
        .unwrap()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    // per_token, window, held, processes, hot, free
    let [limit, 1, held, 2, hot, free] = figures[..] else {
        panic!("{summary}")
    };
    assert_eq!(limit, per_token as i64, "{summary}");
    assert_eq!(held + hot + free, limit, "{summary}");
    assert_eq!(
        status.lines().filter(|l| l.contains(": share ")).count(),
        2,
        "{status}"
    );

    r1.child.start_kill().unwrap();
    let killed = Instant::now();
    r1.child.wait().await.unwrap();
    // r2 finds r1's connection gone at its next negotiation (every 200 ms while its requests
    // wait). A replica stops sending the moment its connection ends (r2 cannot tell a kill
    // from a dropped connection, but either way r1 has stopped), so r1's share is free again
    // one window (and a 100 ms margin) after r2 found it gone, and r2's at its next round.
    // Before replicas watched their connection it took a lease more (1.41 s). Nothing earlier
    // than the window would be safe.
    while r2.next_budget_share().await != per_token as i64 {}
    assert_back_after_one_window(killed.elapsed(), "the dead replica's share");
    // Ops see it too: the whole budget, one holder.
    lms_sync::install_crypto_provider();
    let metrics = get_text(&format!("http://{ops}/metrics")).await;
    let gauge = |name: &str| gauge(&metrics, name);
    assert_eq!(
        gauge("lms_sync_rate_budget_share"),
        Some(per_token as f64),
        "{metrics}"
    );
    assert_eq!(gauge("lms_sync_rate_budget_holders"), Some(1.0));
    assert!(gauge("lms_sync_rate_budget_wanted").is_some_and(|w| w > 0.0));
    let stats = env.sim.stats();
    assert_eq!(stats.rate_limited, 0, "429s: {stats:?}");
    assert!(stats.max_token_window <= per_token, "{stats:?}");
    assert_eq!(r2.terminate().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_budget_connection_ends_stops_at_once_and_neither_runs_into_the_limit() {
    // What a database restart or a backend terminated by hand does to one replica: it is alive,
    // its share's row looks dead to the other, which may take the share a window after finding
    // it gone. So the replica must stop sending the moment its connection ends, not at its
    // next round or when its lease runs out.
    let per_token = SHARED_PER_TOKEN;
    let (env, _, mut r1, mut r2, _) = two_replicas_sharing_20_a_second().await;
    let r1_pid = r1.child.id().unwrap();
    let terminated = env
        .scalar_i64(&format!(
            "SELECT count(*) FROM rate_shares
              WHERE holder LIKE '%:{r1_pid}:%' AND pg_terminate_backend(backend_pid, 10000)"
        ))
        .await;
    assert_eq!(terminated, 1);
    let ended = Instant::now();
    // r1 stops sending at once: it watches its connection between rounds, and a round under
    // way fails. Not only when its lease (375 ms) runs out.
    r1.wait_for("lost the shared request budget; no requests until it is back")
        .await;
    let noticed = ended.elapsed();
    assert!(
        noticed < Duration::from_millis(375),
        "noticed after {noticed:?}"
    );
    // ...joins again, and the two go on sharing the budget: two windows' worth of r2's pages
    // more (20 requests a second between them), long enough for an overlap of r1's requests
    // and r2's to show at the simulator.
    while r1.next_budget_share().await <= 0 {}
    // Only pages committed from now on.
    while r2.events.try_recv().is_ok() {}
    for _ in 0..20 {
        r2.wait_for("page committed").await;
    }
    let stats = env.sim.stats();
    assert_eq!(stats.rate_limited, 0, "429s: {stats:?}");
    assert!(stats.max_token_window <= per_token, "{stats:?}");
    assert_eq!(r1.terminate().await, 0);
    assert_eq!(r2.terminate().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_says_who_held_the_accounts_window_before_and_what_it_left() {
    let id = account_id(1);
    let env = Env::new(&[(id, 10)]).await;
    let lease = || async { env.store.try_lease(id).await.unwrap().expect("free") };

    // Nobody held it.
    let mut l = lease().await;
    assert_eq!(l.take_window("a").await.unwrap(), Handover::Nothing);
    l.release_with_requests(&[Duration::from_millis(300)]).await;
    // The same process again: its own memory has those requests (counting them twice would
    // halve its rate).
    let mut l = lease().await;
    assert_eq!(l.take_window("a").await.unwrap(), Handover::Mine);
    l.release_with_requests(&[Duration::from_millis(300), Duration::from_millis(100)])
        .await;
    // Another process: the ages, grown by the time since the release.
    let mut l = lease().await;
    match l.take_window("b").await.unwrap() {
        Handover::Released(ages) => {
            assert_eq!(ages.len(), 2, "{ages:?}");
            assert!(
                ages.iter().any(|a| *a >= Duration::from_millis(300))
                    && ages.iter().any(
                        |a| *a >= Duration::from_millis(100) && *a < Duration::from_millis(300)
                    ),
                "{ages:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    // b ends without handing anything on (what a kill leaves behind): whoever comes next,
    // b itself aside, must assume a full window. b watched its lease's connection, so it
    // stopped sending when the lease ended.
    l.release().await;
    let mut l = lease().await;
    assert_eq!(
        l.take_window("c").await.unwrap(),
        Handover::Abandoned { fenced: true }
    );
    l.release().await;
    // A lease taken since by an older binary, which marks `holder` and `held_since` only: it
    // may have gone on sending for a lease after its connection ended.
    sqlx::query("UPDATE rate_account_windows SET holder = 'old', held_since = now() WHERE integrated_account_id = $1")
        .bind(id)
        .execute(env.store.pool())
        .await
        .unwrap();
    let mut l = lease().await;
    assert_eq!(
        l.take_window("c").await.unwrap(),
        Handover::Abandoned { fenced: false }
    );
    l.release_with_requests(&[]).await;
    // Released with nothing in the window: nothing to hand on.
    let mut l = lease().await;
    assert_eq!(l.take_window("d").await.unwrap(), Handover::Nothing);
    l.release_with_requests(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_holding_an_accounts_lease_leaves_a_window_the_next_one_waits_out() {
    // 200 users in pages of 10: 20 requests, two windows' worth.
    let (id, env, cfg) = one_account_at_10_per_2s(200).await;
    // A replica syncs the account and is killed with its window full of requests the server
    // still counts, and nothing handed on.
    let mut d = spawn(&cfg, &env.db_url);
    d.wait_for("page committed").await;
    d.child.start_kill().unwrap();
    d.child.wait().await.unwrap();
    let sent = env.sim.stats().requests;
    assert!(sent >= 1, "the killed replica sent nothing");
    // Its lease ends with its connection; the next process takes the account as soon as it
    // is free, and waits one window (2 s) and the margin a holder's waking may need: the
    // killed one watched its lease, so it sent nothing after the lease was free. Not a window
    // and a lease (2 s + 750 ms), as for an older binary that may not have noticed.
    wait_for_no_session(&env, Sessions::Named(LEASE_APPLICATION_NAME)).await;
    let mut next = spawn(&cfg, &env.db_url);
    let waits = next
        .wait_for("the account's last lease holder ended without handing on its requests; waiting out its request window before the account's first request")
        .await;
    assert_eq!(waits["fields"]["fenced"], true, "{waits}");
    assert_eq!(
        waits["fields"]["wait_ms"],
        (2_000 + FENCE_MARGIN.as_millis()) as u64,
        "{waits}"
    );
    let done = next.wait_for("sync run finished").await;
    assert_eq!(done["fields"]["outcome"], "succeeded", "{done}");
    assert_eq!(next.terminate().await, 0);
    assert_kept_to_10_per_window(&env, id).await;
}

/// What happens to the account's lease backend once a pass has committed some pages.
#[derive(Clone, Copy, PartialEq)]
enum Loss {
    /// Terminated: what a database restart or a cut connection does to a lease.
    Terminated,
    /// Terminated, with another session queued for the lock first, so that the lock is that
    /// session's the moment it is free: another process took the account meanwhile.
    TakenMeanwhile,
    /// Stopped with SIGSTOP: a connection that no longer answers, as behind a network
    /// partition. The lock stays with the stopped backend.
    Stopped,
}

/// Makes the account's lease backend meet `how` once `at` pages are committed.
struct LoseLease {
    at: u64,
    how: Loss,
    pool: sqlx::PgPool,
    /// When, and the backend's pid.
    done: std::sync::Mutex<Option<(Instant, i32)>>,
    /// The session that took the lock meanwhile ([`Loss::TakenMeanwhile`]); it holds it until
    /// dropped.
    taker: std::sync::Mutex<Option<sqlx::PgConnection>>,
}

impl LoseLease {
    fn new(env: &Env, at: u64, how: Loss) -> LoseLease {
        LoseLease {
            at,
            how,
            pool: env.store.pool().clone(),
            done: Default::default(),
            taker: Default::default(),
        }
    }

    fn when(&self) -> (Instant, i32) {
        self.done.lock().unwrap().expect("the lease was lost")
    }

    /// Queues a session of its own for the lease's lock (as it is held by `pid`), then
    /// terminates `pid`: the lock passes to the queued session as the backend ends.
    async fn take_meanwhile(&self, pid: i32) {
        // The lease's keys, as the server holds them (two int4 keys: classid and objid).
        let keys: (i32, i32) = sqlx::query_as(
            "SELECT classid::bigint::bit(32)::int, objid::bigint::bit(32)::int FROM pg_locks
              WHERE pid = $1 AND locktype = 'advisory' AND granted",
        )
        .bind(pid)
        .fetch_one(&self.pool)
        .await
        .unwrap();
        let mut taker = self.pool.acquire().await.unwrap().detach();
        let queued = tokio::spawn(async move {
            sqlx::query("SELECT pg_advisory_lock($1, $2)")
                .bind(keys.0)
                .bind(keys.1)
                .execute(&mut taker)
                .await
                .unwrap();
            taker
        });
        while sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
        )
        .fetch_one(&self.pool)
        .await
        .unwrap()
            == 0
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        signal(pid, "-TERM");
        *self.taker.lock().unwrap() = Some(queued.await.unwrap());
    }

    /// The session that took the lock meanwhile lets it go.
    async fn let_go(&self) {
        let taker = self.taker.lock().unwrap().take();
        let mut taker = taker.expect("a session took the lock");
        sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut taker)
            .await
            .unwrap();
        sqlx::Connection::close(taker).await.unwrap();
    }
}

impl lms_sync::sync::Progress for LoseLease {
    fn page(
        &self,
        _account: &lms_sync::config::AccountSettings,
        totals: &lms_sync::domain::RunCounts,
    ) {
        let mut done = self.done.lock().unwrap();
        if totals.pages < self.at || done.is_some() {
            return;
        }
        let pids: Vec<i32> = tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(
                sqlx::query_scalar(
                    "SELECT pid FROM pg_stat_activity
                      WHERE datname = current_database() AND application_name = $1",
                )
                .bind(LEASE_APPLICATION_NAME)
                .fetch_all(&self.pool),
            )
        })
        .unwrap();
        assert_eq!(pids.len(), 1, "one lease backend");
        match self.how {
            Loss::Terminated => signal(pids[0], "-TERM"),
            Loss::Stopped => signal(pids[0], "-STOP"),
            Loss::TakenMeanwhile => tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(self.take_meanwhile(pids[0]))
            }),
        }
        *done = Some((Instant::now(), pids[0]));
    }
}

impl Drop for LoseLease {
    /// A stopped backend runs again whatever the test's outcome, or the cluster could not shut
    /// down. It is usually gone by now (its connection was closed), so `kill` has nothing to
    /// say worth printing.
    fn drop(&mut self) {
        if let (Loss::Stopped, Ok(Some((_, pid)))) = (self.how, self.done.lock().as_deref()) {
            let _ = std::process::Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

fn signal(pid: i32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

/// A client paced by a budget with a 1 s window: the lease is checked every 250 ms, and a
/// check is given 125 ms, so a lost lease is noticed within 375 ms.
fn client_with_a_1s_window(env: &Env) -> lms_sync::source::TrutoClient {
    let window = Duration::from_secs(1);
    let limit = Limit {
        requests: 1_000,
        window,
    };
    let budget = RateBudget::new(limit, limit);
    assert_eq!(budget.period(), Duration::from_millis(250));
    assert_eq!(budget.lease(), Duration::from_millis(375));
    env.client().with_budget(std::sync::Arc::new(budget))
}

/// Syncs `a` with `hook`, bounded: a pass that waited on its lost lease would hang.
async fn sync_losing_the_lease(env: &Env, a: Uuid, hook: &LoseLease) -> SyncOutcome {
    let client = client_with_a_1s_window(env);
    let account = env.account(a);
    let opts = lms_sync::sync::SyncOptions::from_settings(&env.settings);
    let cancel = tokio_util::sync::CancellationToken::new();
    let pass = lms_sync::sync::sync_account(&env.store, &client, &account, &opts, &cancel, hook);
    tokio::time::timeout(Duration::from_secs(30), pass)
        .await
        .expect("the pass ended")
}

/// The pass ended interrupted for its lost lease, well before its listing would have, and its
/// run says so.
async fn assert_stopped_on_the_lost_lease(env: &Env, o: &SyncOutcome, lost: Instant) {
    let stopped_after = lost.elapsed();
    assert_eq!(
        o.status,
        lms_sync::sync::PassStatus::Finished(lms_sync::domain::Outcome::Interrupted),
        "{:?}",
        o.error
    );
    assert!(
        o.error
            .as_deref()
            .unwrap()
            .contains("lost the account's lease"),
        "{:?}",
        o.error
    );
    assert!(o.counts.pages < 50, "{:?}", o.counts);
    // 375 ms to notice, a page in flight and closing the run; generous for a busy machine,
    // and well short of the 2.5 s the listing had left.
    assert!(
        stopped_after < Duration::from_millis(1_500),
        "{stopped_after:?}"
    );
    assert_eq!(o.error_kind, Some(lms_sync::domain::ErrorKind::LeaseLost));
    let (outcome, kind): (String, String) = sqlx::query_as(
        "SELECT outcome, error_kind FROM sync_runs WHERE integrated_account_id = $1 AND run_id = $2",
    )
    .bind(o.account)
    .bind(o.run_id.unwrap())
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert_eq!(
        (outcome.as_str(), kind.as_str()),
        ("interrupted", "lease_lost")
    );
}

/// 50 pages, 50 ms each: the listing would go on for 2.5 s after the lease is lost at page 2.
async fn slow_account() -> (Uuid, Env) {
    let a = account_id(1);
    let env = Env::new(&[(a, 5_000)]).await;
    env.sim.set_latency(Duration::from_millis(50));
    (a, env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_whose_lease_connection_ends_takes_the_lease_back_and_finishes_in_the_same_run() {
    let (a, env) = slow_account().await;
    let hook = LoseLease::new(&env, 2, Loss::Terminated);

    let o = sync_losing_the_lease(&env, a, &hook).await;

    hook.when();
    assert!(o.succeeded(), "{:?}", o.error);
    assert_eq!(o.counts.pages, 50);
    // One run, not one interrupted and one resumed.
    let runs: Vec<String> =
        sqlx::query_scalar("SELECT outcome FROM sync_runs WHERE integrated_account_id = $1")
            .bind(a)
            .fetch_all(env.store.pool())
            .await
            .unwrap();
    assert_eq!(runs, ["succeeded"]);
    assert_mirror(&env.store, &env.sim, a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_whose_lease_another_process_took_meanwhile_stops_at_once_and_resumes_later() {
    let (a, env) = slow_account().await;
    let hook = LoseLease::new(&env, 2, Loss::TakenMeanwhile);

    let o = sync_losing_the_lease(&env, a, &hook).await;

    assert_stopped_on_the_lost_lease(&env, &o, hook.when().0).await;
    // The other process lets go; the next pass resumes where this one stopped.
    hook.let_go().await;
    let next = env.sync(a).await;
    assert!(next.succeeded(), "{:?}", next.error);
    assert!(next.resumed);
    assert_mirror(&env.store, &env.sim, a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_whose_lease_connection_stops_answering_stops_without_waiting_on_it() {
    let (a, env) = slow_account().await;
    let hook = LoseLease::new(&env, 2, Loss::Stopped);

    let o = sync_losing_the_lease(&env, a, &hook).await;

    let (lost, pid) = hook.when();
    assert_stopped_on_the_lost_lease(&env, &o, lost).await;
    // The stopped backend still holds the lock; once it runs again it finds its client gone
    // and ends, and the account can be leased again.
    signal(pid, "-CONT");
    wait_for_no_session(&env, Sessions::Named(LEASE_APPLICATION_NAME)).await;
    let next = env.sync(a).await;
    assert!(next.succeeded(), "{:?}", next.error);
    assert!(next.resumed);
    assert_mirror(&env.store, &env.sim, a).await;
}
