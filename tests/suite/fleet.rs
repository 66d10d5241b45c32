//! The fleet: accounts found by discovery (every page, gated by Truto's status and the
//! filters), added and retired without a restart, the retire guard, a failed listing tried
//! again soon, operators' pause / resume / sync-now through the database obeyed by running
//! replicas, the `accounts` commands, and a large fleet scheduled without a burst and summed up
//! by `status`. (Purges: `purges.rs`; the environment a mirror follows: `environments.rs`.)

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::helpers::fleet::*;
use crate::helpers::service::*;
use crate::helpers::*;
use lms_sync::config::Settings;
use lms_sync::devkit::simulator::{Fault, Integrated, DEMO_TOKEN};
use lms_sync::fleet::{plan, Gate};
use lms_sync::service::Hooks;
use lms_sync::store::{Acting, Steer};
use lms_sync::sync::discovery::discover;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn gates(env: &Env, s: &Settings) -> Vec<(Uuid, Gate)> {
    let registry = env.store.registry().await.unwrap();
    plan(s, &registry)
        .into_iter()
        .map(|p| (p.id(), p.gate))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_reads_every_page_and_gates_by_status_tenant_and_sandbox() {
    let env = Env::new(&[]).await;
    let mut s = discovering(&env);
    s.truto.page_size = 7;
    s.discovery.tenant_ids = vec![];
    let mut expected = Vec::new();
    for n in 0..20u128 {
        let id = account_id(100 + n);
        let mut a = Integrated::active(&format!("tenant-{n}"));
        match n {
            0 => a.status = "needs_reauth".into(),
            1 => a.status = "connecting".into(),
            2 => a.status = "post_install_error".into(),
            3 => a.is_sandbox = true,
            _ => {}
        }
        env.sim.set_integrated(id, a);
        expected.push(id);
    }
    // Another integration is not listed at all.
    let mut other = Integrated::active("tenant-x");
    other.integration = "docebo".into();
    env.sim.set_integrated(account_id(999), other);
    let client = lms_sync::source::TrutoClient::new(&s.truto, &token()).unwrap();

    let out = discover(&env.store, &client, &s.discovery, &CancellationToken::new()).await;

    let applied = out.applied.expect("applied");
    assert_eq!((applied.listed, applied.added), (20, 20));
    assert_eq!(env.sim.stats().account_listings, 3, "20 accounts, 7 a page");
    let g = gates(&env, &s).await;
    assert_eq!(g.len(), 20);
    let of = |id: Uuid| g.iter().find(|(x, _)| *x == id).unwrap().1.clone();
    assert_eq!(of(expected[0]), Gate::TrutoStatus("needs_reauth".into()));
    assert_eq!(of(expected[1]), Gate::TrutoStatus("connecting".into()));
    assert_eq!(
        of(expected[2]),
        Gate::TrutoStatus("post_install_error".into())
    );
    assert!(matches!(of(expected[3]), Gate::Excluded(_)));
    assert_eq!(g.iter().filter(|(_, g)| g.syncs()).count(), 16);
    // needs_reauth is the account's health at once, without a request for it.
    let health: String =
        sqlx::query_scalar("SELECT health FROM sync_state WHERE integrated_account_id = $1")
            .bind(expected[0])
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!(health, "needs_reauth");
    assert_eq!(env.sim.stats().by_account.get(&expected[0]), None);
    // The tenant allow-list and the exclusions narrow it further.
    s.discovery.tenant_ids = vec!["tenant-5".into(), "tenant-6".into()];
    s.discovery.exclude_accounts = vec![expected[6]];
    let g = gates(&env, &s).await;
    let syncing: Vec<Uuid> = g
        .iter()
        .filter(|(_, g)| g.syncs())
        .map(|(id, _)| *id)
        .collect();
    assert_eq!(syncing, [expected[5]]);
    // Reauthorized in Truto: healthy again and asked to run at once.
    env.sim
        .set_integrated(expected[0], Integrated::active("tenant-0"));
    assert!(
        discover(&env.store, &client, &s.discovery, &CancellationToken::new())
            .await
            .applied
            .is_some()
    );
    let (health, requested): (String, bool) = sqlx::query_as(
        "SELECT s.health, a.sync_requested_at IS NOT NULL FROM sync_state s
           JOIN accounts a USING (integrated_account_id) WHERE integrated_account_id = $1",
    )
    .bind(expected[0])
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert_eq!((health.as_str(), requested), ("ok", true));
    // Done connecting: active, and asked to run at once too.
    s.discovery.tenant_ids.clear();
    s.discovery.exclude_accounts.clear();
    env.sim
        .set_integrated(expected[1], Integrated::active("tenant-1"));
    assert!(
        discover(&env.store, &client, &s.discovery, &CancellationToken::new())
            .await
            .applied
            .is_some()
    );
    let g = gates(&env, &s).await;
    assert!(g.iter().any(|(id, g)| *id == expected[1] && g.syncs()));
    let requested: bool = sqlx::query_scalar(
        "SELECT sync_requested_at IS NOT NULL FROM accounts WHERE integrated_account_id = $1",
    )
    .bind(expected[1])
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert!(requested);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retire_guard_keeps_accounts_when_a_listing_fails_is_partial_empty_or_too_small() {
    let ids: Vec<Uuid> = (1..=4).map(account_id).collect();
    let env = fleet_env(&ids.iter().map(|id| (*id, 5)).collect::<Vec<_>>()).await;
    let s = discovering(&env);
    assert_eq!(discover_now(&env, &s).await.applied.unwrap().added, 4);
    let retired = || async {
        env.scalar_i64("SELECT count(*) FROM accounts WHERE retired_at IS NOT NULL")
            .await
    };

    // A failed listing changes nothing and says why.
    env.sim.push_listing_fault(Fault::status(500));
    env.sim.push_listing_fault(Fault::status(500));
    env.sim.push_listing_fault(Fault::status(500));
    env.sim.push_listing_fault(Fault::status(500));
    env.sim.push_listing_fault(Fault::status(500));
    env.sim.push_listing_fault(Fault::status(500));
    let out = discover_now(&env, &s).await;
    assert!(out.error.is_some() && out.applied.is_none());
    // A partial listing that lacks one: not retired.
    env.sim.remove_integrated(ids[0]);
    env.sim.push_listing_fault(Fault::Partial);
    let out = discover_now(&env, &s).await;
    assert!(out
        .applied
        .unwrap()
        .retire_guard
        .unwrap()
        .contains("not complete"));
    assert_eq!(retired().await, 0);
    // An empty listing while accounts are known: not retired.
    for id in &ids[1..] {
        env.sim.remove_integrated(*id);
    }
    let out = discover_now(&env, &s).await;
    assert!(out
        .applied
        .unwrap()
        .retire_guard
        .unwrap()
        .contains("no accounts"));
    // Three of four gone: more than half.
    env.sim
        .set_integrated(ids[3], Integrated::active("tenant-3"));
    let out = discover_now(&env, &s).await;
    assert!(out
        .applied
        .unwrap()
        .retire_guard
        .unwrap()
        .contains("3 of 4"));
    assert_eq!(retired().await, 0);
    let (guard, error): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT retire_guard, error FROM discovery_state")
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert!(guard.unwrap().contains("3 of 4") && error.is_none());
    // One of four gone: retired.
    for (i, id) in ids.iter().enumerate().skip(1) {
        env.sim
            .set_integrated(*id, Integrated::active(&format!("tenant-{i}")));
    }
    let out = discover_now(&env, &s).await.applied.unwrap();
    assert_eq!((out.retired, out.retire_guard), (1, None));
    assert_eq!(retired().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_added_and_removed_upstream_are_synced_and_retired_without_a_restart() {
    let (a, b, c) = (account_id(1), account_id(2), account_id(3));
    let env = fleet_env(&[(a, 120), (b, 80)]).await;
    let s = discovering(&env);
    let (daemon, stop, mut rx, base) = serve_daemon(s.clone()).await;
    // The service discovers both at start and syncs them.
    let mut done = HashSet::new();
    while done.len() < 2 {
        if let Event::Finished(id, outcome) = next(&mut rx).await {
            assert_eq!(outcome, "succeeded");
            done.insert(id);
        }
    }
    // A customer connects: the account appears upstream and is synced, no restart.
    env.sim.add_account(c, 60, 33);
    env.sim.set_integrated(c, Integrated::active("tenant-c"));
    assert_eq!(discover_now(&env, &s).await.applied.unwrap().added, 1);
    loop {
        if let Event::Finished(id, outcome) = next(&mut rx).await {
            assert_eq!((id, outcome.as_str()), (c, "succeeded"));
            break;
        }
    }
    assert_mirror(&env.store, &env.sim, c).await;
    // A customer disconnects: retired, rows kept, no longer live.
    env.sim.remove_integrated(b);
    assert_eq!(discover_now(&env, &s).await.applied.unwrap().retired, 1);
    // The status page says what the listing found, and when it fails.
    let page = || async { get_text(&format!("{base}/")).await };
    let html = page().await;
    assert!(
        html.contains("listed 2 of Truto environment <code>env-1</code>. The next is due <time"),
        "{html}"
    );
    assert!(!html.contains("discovery failing"), "{html}");
    for _ in 0..6 {
        env.sim.push_listing_fault(Fault::status(500));
    }
    assert!(discover_now(&env, &s).await.error.is_some());
    let html = page().await;
    assert!(
        html.contains("<span class=\"pill bad\">discovery failing</span>"),
        "{html}"
    );
    assert!(
        html.contains("failed: listing the talentlms accounts failed"),
        "{html}"
    );
    stop.cancel();
    daemon.await.unwrap().unwrap();
    let live_b = env
        .scalar_i64(&format!(
            "SELECT count(*) FROM live_users WHERE integrated_account_id = '{b}'"
        ))
        .await;
    let kept_b = env
        .scalar_i64(&format!(
            "SELECT count(*) FROM users WHERE integrated_account_id = '{b}' AND deleted_at IS NULL"
        ))
        .await;
    assert_eq!((live_b, kept_b), (0, 80));
    let requests_b = env.sim.stats().by_account.get(&b).copied();
    assert_eq!(
        requests_b,
        Some(1),
        "b was synced once, never after it was retired"
    );
    // It comes back: un-retired.
    env.sim.unblock(b);
    env.sim.set_integrated(b, Integrated::active("tenant-1"));
    assert_eq!(discover_now(&env, &s).await.applied.unwrap().unretired, 1);
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM live_users WHERE integrated_account_id = '{b}'"
        ))
        .await,
        80
    );
}

/// The outcome of the next run that was not skipped as busy (held by the other replica).
async fn finished(rx: &mut mpsc::UnboundedReceiver<Event>) -> String {
    loop {
        if let Event::Finished(_, o) = next(rx).await {
            if o != "busy" {
                return o;
            }
        }
    }
}

/// Makes `what` of account `a`, for no one named (no actor, no reason); whether the registry
/// has the account.
async fn steered(env: &Env, a: Uuid, what: Steer) -> bool {
    let missing = env.store.steer(&[a], what, &Acting::default()).await;
    missing.unwrap().is_empty()
}

/// A running replica: its task, and the token that stops it.
type Replica = (
    tokio::task::JoinHandle<anyhow::Result<()>>,
    CancellationToken,
);

/// Two replicas of the service with `s`, and their runs' events.
fn two_replicas(s: &Settings) -> (Vec<Replica>, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let replicas = (0..2)
        .map(|_| {
            start_daemon(
                s.clone(),
                Hooks {
                    progress: Some(Arc::new(Events(tx.clone()))),
                    ..Hooks::default()
                },
            )
        })
        .collect();
    (replicas, rx)
}

/// `accounts pause --until`: the pause ends by itself. One of the running replicas resumes the
/// account then, once, recorded as lms-sync's doing, and the run asked for meanwhile starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_given_an_end_is_resumed_by_one_replica_then() {
    let a = account_id(1);
    let env = Env::new(&[(a, 30)]).await;
    let s = daemon_settings(&env, "1h");
    let (replicas, mut rx) = two_replicas(&s);
    assert_eq!(finished(&mut rx).await, "succeeded");
    // Paused until a resume, then given an end (far enough for the commands below to look
    // while it lasts, on a busy machine).
    let o = cli(
        &env,
        &["accounts", "pause", &a.to_string(), "--reason", "hold"],
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = cli(
        &env,
        &[
            "accounts",
            "pause",
            &a.to_string(),
            "--until",
            "15s",
            "--reason",
            "maintenance window",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        said.starts_with(&format!("account {a} paused until "))
            && said.contains("(the service resumes it then)"),
        "{said}"
    );
    let o = cli(&env, &["accounts", "show", &a.to_string(), "--json"]).await;
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(shown["account"]["paused_until"].is_string(), "{shown}");
    let o = cli(&env, &["accounts", "list"]).await;
    let list = String::from_utf8_lossy(&o.stdout);
    assert!(
        list.contains("\n    paused until ") && list.contains(" (then resumed by the service)\n"),
        "{list}"
    );
    let o = cli(&env, &["status"]).await;
    let status = String::from_utf8_lossy(&o.stdout);
    assert!(
        status.contains("    not synced: paused until ")
            && status.contains(" (then resumed by the service)\n"),
        "{status}"
    );
    // Who set the pause's terms last, and why, on a line of its own.
    assert!(
        status.contains("\n    paused by lms-sync accounts pause by ")
            && status.contains(": \"maintenance window\"\n"),
        "{status}"
    );
    assert!(steered(&env, a, Steer::SyncNow).await);
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(40), finished(&mut rx))
            .await
            .expect("the run once the pause ended"),
        "succeeded"
    );
    let started_after_the_end: bool = sqlx::query_scalar(
        "SELECT max(r.started_at) >= max(x.acted_at)
           FROM sync_runs r, account_actions x WHERE x.action = 'resume'",
    )
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert!(started_after_the_end);
    let trail: Vec<(String, String, Option<String>)> =
        sqlx::query_as("SELECT action, actor, reason FROM account_actions ORDER BY action_id")
            .fetch_all(env.store.pool())
            .await
            .unwrap();
    assert_eq!(trail.len(), 3, "{trail:?}");
    assert_eq!(
        (trail[0].0.as_str(), trail[0].2.as_deref()),
        ("pause", Some("hold"))
    );
    assert_eq!(
        (trail[1].0.as_str(), trail[1].2.as_deref()),
        ("pause_end", Some("maintenance window"))
    );
    assert_eq!(trail[2].0, "resume");
    assert!(
        trail[2]
            .1
            .starts_with("lms-sync at the end of its pause (accounts pause --until; replica "),
        "{trail:?}"
    );
    let left: (bool, Option<i64>) =
        sqlx::query_as("SELECT paused, extract(epoch FROM paused_until)::bigint FROM accounts")
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!(left, (false, None));
    for (daemon, stop) in replicas {
        stop.cancel();
        daemon.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_sync_now_are_obeyed_by_two_running_replicas() {
    let a = account_id(1);
    let env = Env::new(&[(a, 1500)]).await;
    let s = daemon_settings(&env, "1h");
    let (replicas, mut rx) = two_replicas(&s);
    assert_eq!(finished(&mut rx).await, "succeeded");
    let runs = || async { env.scalar_i64("SELECT count(*) FROM sync_runs").await };
    assert_eq!(runs().await, 1);

    // sync-now: one of the replicas runs it at once, although the schedule says in an hour.
    assert!(steered(&env, a, Steer::SyncNow).await);
    assert_eq!(finished(&mut rx).await, "succeeded");
    assert_eq!(runs().await, 2);

    // A pause stops a run in progress after its page, and no replica starts another.
    // (15 pages at 300 ms: longer than the replicas' 2-second look at the registry.)
    env.sim.set_latency(Duration::from_millis(300));
    assert!(steered(&env, a, Steer::SyncNow).await);
    loop {
        if let Event::Page(_) = next(&mut rx).await {
            break;
        }
    }
    assert!(steered(&env, a, Steer::Pause { until: None }).await);
    assert_eq!(finished(&mut rx).await, "interrupted");
    let (kind, error): (String, String) =
        sqlx::query_as("SELECT error_kind, error FROM sync_runs WHERE outcome = 'interrupted'")
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!(kind, "interrupted");
    assert_eq!(
        error,
        "stopped: the account is now paused; its next run resumes from the last committed page"
    );
    assert!(steered(&env, a, Steer::SyncNow).await);
    // Both replicas look at the registry every 2 s: give them three rounds.
    let quiet = tokio::time::timeout(Duration::from_secs(6), finished(&mut rx)).await;
    assert!(quiet.is_err(), "a paused account was started: {quiet:?}");
    assert_eq!(runs().await, 3);
    // The interrupted listing left a cursor; reset-cursor makes the next run start afresh.
    assert!(stored_cursor(&env.store, a).await.is_some());
    assert!(steered(&env, a, Steer::ResetCursor).await);
    // Resumed, the pending sync-now runs, from the first page.
    env.sim.set_latency(Duration::ZERO);
    assert!(steered(&env, a, Steer::Resume).await);
    assert_eq!(finished(&mut rx).await, "succeeded");
    let (resumed, pages): (bool, i64) =
        sqlx::query_as("SELECT resumed, pages FROM sync_runs ORDER BY run_id DESC LIMIT 1")
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!((resumed, pages), (false, 15));
    for (daemon, stop) in replicas {
        stop.cancel();
        daemon.await.unwrap().unwrap();
    }
    assert_mirror(&env.store, &env.sim, a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_discovered_accounts_are_scheduled_without_a_burst() {
    let env = Env::new(&[]).await;
    for n in 0..500u128 {
        let id = account_id(1000 + n);
        env.sim.add_account(id, 3, n as u64);
        env.sim
            .set_integrated(id, Integrated::active(&format!("t{n}")));
    }
    let mut s = discovering(&env);
    s.sync.max_concurrent_accounts = 10;
    s.rate_budget.enabled = false;
    s.database.max_connections = 30;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (daemon, stop) = start_daemon(
        s,
        Hooks {
            progress: Some(Arc::new(Events(tx))),
            ..Hooks::default()
        },
    );
    let (mut running, mut most, mut done) = (0i64, 0i64, HashSet::new());
    while done.len() < 500 {
        match next(&mut rx).await {
            Event::Started(_) => {
                running += 1;
                most = most.max(running);
            }
            Event::Finished(id, o) => {
                running -= 1;
                assert_eq!(o, "succeeded");
                done.insert(id);
            }
            Event::Page(_) => {}
        }
    }
    stop.cancel();
    daemon.await.unwrap().unwrap();
    assert!(most <= 10, "{most} runs at once");
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM accounts WHERE source = 'discovered'")
            .await,
        500
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM live_users").await,
        1500
    );
    // Each account ran once: a run that ended between a round's read of the run history and
    // its look at the runs in flight was not taken for one never started.
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM sync_runs").await,
        500,
        "runs started twice"
    );
}

/// `accounts discover` lists now and says what changed; a failed listing exits 1 and changes
/// nothing; with discovery off it is refused (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_discover_lists_now_and_says_what_it_changed() {
    let (a, b, c) = (account_id(1), account_id(2), account_id(3));
    let env = fleet_env(&[(a, 10), (b, 10)]).await;
    let text = |o: &std::process::Output| {
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let o = cli(&env, &["accounts", "discover"]).await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert_eq!(
        out,
        "integrated accounts listed: 2; added: 2, retired: 0, un-retired: 0; requests: 1\n"
    );
    let listed = || async {
        env.scalar_i64(
            "SELECT count(*) FROM accounts WHERE source = 'discovered' AND retired_at IS NULL",
        )
        .await
    };
    assert_eq!(listed().await, 2);
    // (In microseconds: the listings may be less than a second apart.)
    let at = "SELECT (extract(epoch FROM listed_at) * 1000000)::bigint FROM discovery_state";
    let first = env.scalar_i64(at).await;

    // One connected, one disconnected upstream.
    env.sim.add_account(c, 10, 3);
    env.sim.set_integrated(c, Integrated::active("tenant-c"));
    env.sim.remove_integrated(b);
    let o = cli(&env, &["accounts", "discover"]).await;
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert_eq!(
        out,
        format!(
            "integrated accounts listed: 2; added: 1, retired: 1, un-retired: 0; requests: 1\n\
             no longer listed (retired):\n  {b}  tenant tenant-1\n"
        )
    );
    let second = env.scalar_i64(at).await;
    assert!(
        second > first,
        "the service's next listing counts from this one"
    );

    // A listing that fails: exit 1, the registry as it was.
    for _ in 0..3 {
        env.sim.push_listing_fault(Fault::status(500));
    }
    let o = cli_with(
        &env,
        &[("LMS_SYNC__TRUTO__MAX_ATTEMPTS", "3")],
        &["accounts", "discover"],
    )
    .await;
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert!(
        err.contains("lms-sync: discovery: listing the talentlms accounts failed: ")
            && err.contains("; the registry is left as it was"),
        "{err}"
    );
    assert_eq!(listed().await, 2);

    // Discovery off: refused before anything is asked.
    let before = env.sim.stats().account_listings;
    let o = cli_with(
        &env,
        &[("LMS_SYNC__DISCOVERY__ENABLED", "false")],
        &["accounts", "discover"],
    )
    .await;
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}{err}");
    assert!(err.contains("accounts discover: discovery is off"), "{err}");
    assert_eq!(env.sim.stats().account_listings, before);

    // While a replica lists (holds the discovery lease), it waits for it, sending nothing.
    let lease = env
        .store
        .try_lease(lms_sync::sync::discovery::DISCOVERY_LEASE)
        .await
        .unwrap()
        .unwrap();
    let (_config, command) = cli_command(&env, &[], &["accounts", "discover"]);
    let (child, _stderr) = start_until(command, "the waiting line", |line| {
        line == "a replica is listing the integrated accounts; waiting for it to finish"
    })
    .await;
    assert_eq!(env.sim.stats().account_listings, before);
    lease.release().await;
    let o = child.wait_with_output().await.unwrap();
    let (out, _) = text(&o);
    assert!(o.status.success(), "{out}");
    assert_eq!(
        out,
        "integrated accounts listed: 2; added: 0, retired: 0, un-retired: 0; requests: 1\n"
    );
    assert_eq!(env.sim.stats().account_listings, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accounts_commands_list_steer_and_purge_through_the_database() {
    let (a, b) = (account_id(1), account_id(2));
    let env = fleet_env(&[(a, 30), (b, 20)]).await;
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // `sync` with discovery on lists the accounts first, then syncs them; the listing's
    // retry is logged as the listing's, with no account (not a nil id).
    env.sim.push_listing_fault(Fault::status(500));
    let o = cli(&env, &["sync"]).await;
    assert!(o.status.success(), "{}", err(&o));
    let retried: Vec<_> = err(&o)
        .lines()
        .filter(|l| l.contains("retrying account listing request"))
        .map(str::to_string)
        .collect();
    assert_eq!(retried.len(), 1, "{}", err(&o));
    assert!(!retried[0].contains("\"account\""), "{}", retried[0]);
    assert!(!err(&o).contains(&Uuid::nil().to_string()), "{}", err(&o));
    let o = cli(&env, &["accounts", "list", "--json"]).await;
    assert!(o.status.success(), "{}", err(&o));
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["tenant_id"], "tenant-0");
    assert_eq!(list[0]["source"], "discovered");
    assert_eq!(list[0]["state"], "active");
    assert_eq!(list[0]["live_users"], 30);
    assert!(list[0]["last_success"].is_string());

    let o = cli(&env, &["accounts", "pause", &a.to_string()]).await;
    assert!(o.status.success(), "{}", err(&o));
    let o = cli(&env, &["accounts", "list"]).await;
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("paused") && table.contains("tenant-1"),
        "{table}"
    );
    let o = cli(&env, &["status"]).await;
    let status = String::from_utf8_lossy(&o.stdout);
    assert!(status.contains("not synced: paused"), "{status}");
    assert!(status.contains("discovery: last listing"), "{status}");
    // The next listing is due discovery.interval (5 min by default) after the last.
    let next: String = sqlx::query_scalar(
        "SELECT to_char((listed_at + interval '5 min') AT TIME ZONE 'UTC', \
         'YYYY-MM-DD HH24:MI:SS\"Z\"') FROM discovery_state",
    )
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert!(
        status.contains(&format!(" accounts); next due {next}\n")),
        "{status}"
    );
    let o = cli(&env, &["accounts", "resume", &a.to_string()]).await;
    assert!(o.status.success());
    let o = cli(&env, &["accounts", "reset-cursor", &a.to_string()]).await;
    assert!(o.status.success());
    let o = cli(
        &env,
        &["accounts", "sync-now", &Uuid::from_u128(7).to_string()],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("not in the registry"), "{}", err(&o));

    // Purge: only a retired account, only with --yes.
    let o = cli(&env, &["accounts", "purge", &b.to_string(), "--yes"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("not retired"), "{}", err(&o));
    env.sim.remove_integrated(b);
    let s = discovering(&env);
    assert_eq!(discover_now(&env, &s).await.applied.unwrap().retired, 1);
    let o = cli(&env, &["accounts", "purge", &b.to_string()]).await;
    assert_eq!(o.status.code(), Some(2));
    // A run of it under way (a process holds its lease): refused, nothing deleted.
    let lease = env
        .store
        .try_lease(b)
        .await
        .unwrap()
        .expect("the lease is free");
    let o = cli(&env, &["accounts", "purge", &b.to_string(), "--yes"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("is being synced"), "{}", err(&o));
    let users =
        |id: Uuid| format!("SELECT count(*) FROM users WHERE integrated_account_id = '{id}'");
    assert_eq!(env.scalar_i64(&users(b)).await, 20);
    lease.release().await;
    // Protected (a legal hold): refused, nothing deleted, until unprotected.
    let o = cli_with(
        &env,
        &[("USER", "counsel")],
        &[
            "accounts",
            "protect",
            &b.to_string(),
            "--reason",
            "legal hold: matter M-17",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", err(&o));
    // Protecting again changes nothing, and records nothing; a reason of two lines is refused.
    let o = cli(&env, &["accounts", "protect", &b.to_string()]).await;
    assert!(o.status.success(), "{}", err(&o));
    let o = cli(
        &env,
        &[
            "accounts",
            "pause",
            &b.to_string(),
            "--reason",
            "two\nlines",
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains("--reason: the reason must be one line"),
        "{}",
        err(&o)
    );
    // Plain SQL, by a role that may update the registry and nothing more, is recorded too.
    let dba = format!("r_{}", Uuid::new_v4().simple());
    for sql in [
        format!("CREATE ROLE {dba} LOGIN"),
        format!("GRANT USAGE ON SCHEMA lms TO {dba}"),
        format!("GRANT SELECT, UPDATE ON lms.accounts TO {dba}"),
    ] {
        sqlx::raw_sql(&sql).execute(env.store.pool()).await.unwrap();
    }
    let mut url = reqwest::Url::parse(&env.db_url).unwrap();
    url.set_username(&dba).unwrap();
    url.query_pairs_mut()
        .append_pair("application_name", "psql");
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url.as_str())
        .await
        .unwrap();
    // Not even by a temporary table of its own named like the record's.
    sqlx::raw_sql(
        "CREATE TEMP TABLE account_actions (integrated_account_id uuid, action text, \
         actor text, db_user text, application text, reason text)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sqlx::query("UPDATE lms.accounts SET paused = true WHERE integrated_account_id = $1")
        .bind(b)
        .execute(&mut conn)
        .await
        .unwrap();
    let o = cli(&env, &["accounts", "purge", &b.to_string(), "--yes"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("is protected (since "), "{}", err(&o));
    assert_eq!(env.scalar_i64(&users(b)).await, 20);
    let o = cli(&env, &["accounts", "show", &b.to_string()]).await;
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(shown.contains("\nprotected      since "), "{shown}");
    assert!(
        shown.contains("\noperators' actions, newest first:\n"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(" pause        by role {dba} through psql\n")),
        "{shown}"
    );
    assert!(
        shown.contains(" protect      by lms-sync accounts protect by counsel@")
            && shown.contains(": legal hold: matter M-17\n"),
        "{shown}"
    );
    let o = cli(&env, &["accounts", "show", &b.to_string(), "--json"]).await;
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown["actions"][0]["action"], "pause", "{shown}");
    assert_eq!(shown["actions"][0]["db_user"], dba.as_str(), "{shown}");
    assert_eq!(
        shown["actions"][1]["reason"], "legal hold: matter M-17",
        "{shown}"
    );
    let o = cli(&env, &["accounts", "unprotect", &b.to_string()]).await;
    assert!(o.status.success(), "{}", err(&o));
    let o = cli(
        &env,
        &["accounts", "protect", &Uuid::from_u128(7).to_string()],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    let o = cli(&env, &["accounts", "purge", &b.to_string(), "--yes"]).await;
    assert!(o.status.success(), "{}", err(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("users") && out.contains("20 rows deleted"),
        "{out}"
    );
    assert!(out.contains("recorded in account_purges"), "{out}");
    // The record outlives the data: what the account was, when it was retired, by whom.
    let (tenant, by, rows, users_gone, retired_before): (String, String, i64, i64, bool) =
        sqlx::query_as(
            "SELECT tenant_id, purged_by, rows_deleted, (rows_by_table->>'users')::bigint,
                    retired_at < purged_at
               FROM account_purges WHERE integrated_account_id = $1",
        )
        .bind(b)
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert_eq!(
        (tenant.as_str(), by.as_str(), users_gone, retired_before),
        ("tenant-1", "command", 20, true)
    );
    assert!(out.contains(&format!("purged: {rows} rows")), "{out}");
    // So does the trail of who held it and who lifted the hold.
    type Action = (
        String,
        Option<String>,
        String,
        Option<String>,
        Option<String>,
    );
    let trail: Vec<Action> = sqlx::query_as(
        "SELECT action, actor, db_user, application, reason FROM account_actions
              WHERE integrated_account_id = $1 ORDER BY action_id",
    )
    .bind(b)
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    let done: Vec<&str> = trail.iter().map(|(x, ..)| x.as_str()).collect();
    assert_eq!(done, ["protect", "pause", "unprotect"], "{trail:?}");
    let (_, actor, _, app, reason) = &trail[0];
    assert!(
        actor
            .as_deref()
            .is_some_and(|a| a.starts_with("lms-sync accounts protect by counsel@")),
        "{trail:?}"
    );
    assert_eq!(reason.as_deref(), Some("legal hold: matter M-17"));
    assert!(
        app.as_deref().is_some_and(|a| a.starts_with("lms-sync")),
        "{trail:?}"
    );
    assert_eq!(
        (&trail[1].1, trail[1].2.as_str(), trail[1].3.as_deref()),
        (&None, dba.as_str(), Some("psql"))
    );
    assert!(trail[2]
        .1
        .as_deref()
        .unwrap()
        .starts_with("lms-sync accounts unprotect by uid "));
    // Gone from the registry: purging again says so.
    let o = cli(&env, &["accounts", "purge", &b.to_string(), "--yes"]).await;
    assert_eq!(o.status.code(), Some(1));
    assert!(err(&o).contains("not in the registry"), "{}", err(&o));
    // Every table that holds an account's rows, not only the ones known when purge was written
    // (the purges' record and the operators' actions aside: neither holds a user's data).
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT c.table_name::text FROM information_schema.columns c
           JOIN information_schema.tables t USING (table_schema, table_name)
          WHERE c.column_name = 'integrated_account_id' AND c.table_schema = current_schema()
            AND t.table_type = 'BASE TABLE'
            AND c.table_name NOT IN ('account_purges', 'account_actions')",
    )
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    assert!(tables.len() >= 13, "{tables:?}");
    for table in tables {
        let n = env
            .scalar_i64(&format!(
                "SELECT count(*) FROM {table} WHERE integrated_account_id = '{b}'"
            ))
            .await;
        assert_eq!(n, 0, "{table}");
    }
    // The customer connects again: registered anew and synced from scratch.
    env.sim.unblock(b);
    env.sim.set_integrated(b, Integrated::active("tenant-1"));
    assert_eq!(discover_now(&env, &s).await.applied.unwrap().added, 1);
    let o = cli(&env, &["sync"]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert_mirror(&env.store, &env.sim, b).await;
    assert_mirror(&env.store, &env.sim, a).await;

    // A pause is exported with its time from the record; one older than the record (made
    // before migration 0028, here with the trigger off) with the migration's: at least that.
    let paused_since = |id: Uuid| {
        let store = env.store.clone();
        async move {
            store
                .account_metrics()
                .await
                .unwrap()
                .into_iter()
                .find(|m| m.integrated_account_id == id)
                .unwrap()
                .paused_since
        }
    };
    // `accounts VERB a`, and when account_actions recorded it.
    let act_on_a = |verb: &'static str| {
        let env = &env;
        async move {
            let o = cli(env, &["accounts", verb, &a.to_string()]).await;
            assert!(o.status.success(), "{}", err(&o));
            sqlx::query_scalar::<_, chrono::DateTime<chrono::Utc>>(
                "SELECT max(acted_at) FROM account_actions WHERE integrated_account_id = $1",
            )
            .bind(a)
            .fetch_one(env.store.pool())
            .await
            .unwrap()
        }
    };
    assert_eq!(paused_since(a).await, None);
    let recorded = act_on_a("pause").await;
    assert_eq!(paused_since(a).await, Some(recorded));
    let resumed = act_on_a("resume").await;
    sqlx::raw_sql(&format!(
        "ALTER TABLE accounts DISABLE TRIGGER accounts_record_actions;
         UPDATE accounts SET paused = true WHERE integrated_account_id IN ('{a}', '{b}');
         ALTER TABLE accounts ENABLE TRIGGER accounts_record_actions;"
    ))
    .execute(env.store.pool())
    .await
    .unwrap();
    // Unrecorded: not before the last recorded resume; and for the account registered again
    // after its purge, whose old pause was of its former registration, not before that.
    assert_eq!(paused_since(a).await, Some(resumed));
    let (registered, migrated): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as(
            "SELECT first_seen_at, (SELECT installed_on FROM _sqlx_migrations WHERE version = 28)
               FROM accounts WHERE integrated_account_id = $1",
        )
        .bind(b)
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert_eq!(paused_since(b).await, Some(registered.max(migrated)));
}

/// Runs the CLI as [`cli`] does, with `input` on its stdin.
async fn cli_stdin(env: &Env, args: &[&str], input: &str) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let (_config, mut command) = cli_command(env, &[], args);
    command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    child.wait_with_output().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_steering_commands_act_on_many_accounts_at_once_all_or_none() {
    let ids: Vec<Uuid> = (1..=5).map(account_id).collect();
    let env = Env::new(&ids.iter().map(|a| (*a, 10)).collect::<Vec<_>>()).await;
    for (a, tenant) in ids.iter().zip(["acme", "acme", "acme", "globex", "globex"]) {
        env.sim.set_integrated(*a, Integrated::active(tenant));
    }
    let (acme, globex) = (&ids[..3], &ids[3..]);
    // The last account's runs fail: Truto answers 503 for it (health `blocked`).
    env.sim.block(ids[4], Fault::status(503));
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let out = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let o = cli(&env, &["sync"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    let lines = |ids: &[Uuid]| ids.iter().map(|a| format!("{a}\n")).collect::<String>();
    let flag = |sql: &str| {
        let sql = format!(
            "SELECT integrated_account_id FROM accounts WHERE {sql} ORDER BY integrated_account_id"
        );
        let pool = env.store.pool().clone();
        async move {
            sqlx::query_scalar::<_, Uuid>(&sql)
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };

    // `list` chooses as the steering commands do, and prints ids for them.
    let o = cli(&env, &["accounts", "list", "--tenant", "acme", "--ids"]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), lines(acme));
    // Several values, repeated or separated by commas (as the admin route's query takes them).
    for both in [
        &["--tenant", "globex,acme"][..],
        &["--tenant", "globex", "--tenant", "acme"][..],
    ] {
        let o = cli(&env, &[&["accounts", "list", "--ids"][..], both].concat()).await;
        assert!(o.status.success(), "{both:?}: {}", err(&o));
        let listed = out(&o);
        assert_eq!(
            listed.lines().count(),
            acme.len() + globex.len(),
            "{listed}"
        );
        assert!(
            acme.iter()
                .chain(globex)
                .all(|a| listed.contains(&a.to_string())),
            "{listed}"
        );
    }
    let o = cli(&env, &["accounts", "list", "--failing", "--json"]).await;
    let failing: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(failing.as_array().unwrap().len(), 1, "{failing}");
    assert_eq!(failing[0]["integrated_account_id"], ids[4].to_string());
    assert_eq!(failing[0]["last_outcome"], "failed");
    let o = cli(
        &env,
        &["accounts", "list", "--health", "unhealthy", "--ids"],
    )
    .await;
    assert_eq!(out(&o), lines(&ids[4..]));

    // --dry-run says which, and changes nothing.
    let o = cli(
        &env,
        &["accounts", "pause", "--tenant", "acme", "--dry-run"],
    )
    .await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        acme.iter().all(|a| out(&o).contains(&a.to_string()))
            && !globex.iter().any(|a| out(&o).contains(&a.to_string())),
        "{}",
        out(&o)
    );
    assert!(
        out(&o).ends_with("3 accounts would be paused; nothing changed (--dry-run)\n"),
        "{}",
        out(&o)
    );
    assert!(flag("paused").await.is_empty());

    // A tenant's accounts paused at once, each recorded with the reason.
    let o = cli_with(
        &env,
        &[("USER", "ops")],
        &[
            "accounts",
            "pause",
            "--tenant",
            "acme",
            "--reason",
            "LMS migration, CHG-88",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", err(&o));
    let said: String = acme
        .iter()
        .map(|a| format!("account {a} paused\n"))
        .collect();
    assert_eq!(out(&o), format!("{said}3 accounts paused\n"));
    assert_eq!(flag("paused").await, acme);
    let recorded: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT integrated_account_id, actor, reason FROM account_actions
          WHERE action = 'pause' ORDER BY integrated_account_id",
    )
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    for ((id, actor, reason), a) in recorded.iter().zip(acme) {
        assert_eq!((id, reason.as_str()), (a, "LMS migration, CHG-88"));
        assert!(
            actor.starts_with("lms-sync accounts pause by ops@"),
            "{actor}"
        );
    }

    // Resumed from a list piped in, comments and blank lines aside.
    let o = cli(&env, &["accounts", "list", "--state", "paused", "--ids"]).await;
    let piped = format!("# paused for CHG-88\n\n{}", out(&o));
    let o = cli_stdin(&env, &["accounts", "resume", "-"], &piped).await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).ends_with("3 accounts resumed\n"), "{}", out(&o));
    assert!(flag("paused").await.is_empty());
    let o = cli_stdin(&env, &["accounts", "resume", "-"], "").await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        err(&o).contains("no account id on stdin: nothing changed"),
        "{}",
        err(&o)
    );

    // All or none: one account the registry lacks, and none is protected.
    let stranger = Uuid::from_u128(7);
    let o = cli(
        &env,
        &[
            "accounts",
            "protect",
            &ids[0].to_string(),
            &stranger.to_string(),
        ],
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains(&format!("account {stranger} is not in the registry"))
            && err(&o).contains("nothing changed"),
        "{}",
        err(&o)
    );
    assert!(flag("protected_at IS NOT NULL").await.is_empty());
    let o = cli_stdin(
        &env,
        &["accounts", "protect", "-"],
        &format!("{}\nglobex\n", ids[0]),
    )
    .await;
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(
        err(&o).contains("stdin line 2: \"globex\" is not an account id"),
        "{}",
        err(&o)
    );
    // A tenant no account has is a typo, not an empty choice; nothing named is a usage error,
    // and so are ids with options.
    for (args, says) in [
        (
            &["accounts", "pause", "--tenant", "acne"][..],
            "no account of the fleet has tenant \"acne\"",
        ),
        (&["accounts", "pause"][..], "name the accounts"),
        (
            &["accounts", "pause", "--all", "--failing"][..],
            "--all selects every account",
        ),
        (
            &["accounts", "pause", "--state", "asleep"][..],
            "invalid value 'asleep' for '--state <STATE>'",
        ),
    ] {
        let o = cli(&env, args).await;
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", err(&o));
        assert!(err(&o).contains(says), "{args:?}: {}", err(&o));
    }
    assert!(flag("paused").await.is_empty());

    // Options narrow each other: the failing account of globex, not the other. (Discovery
    // asked for a run of each new account: only what is asked from now on counts.)
    let before: String = sqlx::query_scalar("SELECT now()::text")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    let o = cli(
        &env,
        &[
            "accounts",
            "sync-now",
            "--tenant",
            "globex",
            "--failing",
            "--reason",
            "ticket 42",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o), format!("account {} asked to sync now\n", ids[4]));
    assert_eq!(
        flag(&format!("sync_requested_at > '{before}'")).await,
        &ids[4..]
    );
    // A choice that matches nothing changes nothing, and is not an error.
    let o = cli(&env, &["accounts", "reset-cursor", "--state", "retired"]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(err(&o).contains("no account of the fleet matches: nothing changed"));
    // A listing allowed past the delete guard: pending until the account's next complete one.
    let o = cli(
        &env,
        &[
            "accounts",
            "allow-deletes",
            &ids[1].to_string(),
            "--reason",
            "offboarding",
        ],
    )
    .await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).starts_with(&format!(
            "account {} allowed to delete, at its next complete listing",
            ids[1]
        )),
        "{}",
        out(&o)
    );
    assert_eq!(flag("allow_deletes_requested").await, &ids[1..2]);
    let o = cli(&env, &["accounts", "show", &ids[1].to_string()]).await;
    assert!(
        out(&o).contains("\ndeletes        allowed: "),
        "{}",
        out(&o)
    );
    let o = cli(&env, &["accounts", "show", &ids[1].to_string(), "--json"]).await;
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(shown["account"]["deletes_allowed"], true, "{shown}");
    assert_eq!(shown["actions"][0]["action"], "allow_deletes", "{shown}");
    // --all: every account of the fleet, in one transaction.
    let o = cli(&env, &["accounts", "protect", "--all", "--reason", "audit"]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).ends_with(
            "5 accounts protected: its data is never purged until `accounts unprotect`\n"
        ),
        "{}",
        out(&o)
    );
    assert_eq!(flag("protected_at IS NOT NULL").await, ids);
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM account_actions WHERE action = 'protect' AND reason = 'audit'"
        )
        .await,
        5
    );
    // Who asked for runs: the operator's sync-now, with its reason; not the runs discovery
    // asked for each new account, nor the one allow-deletes asked for (its own action).
    let asked: Vec<(Uuid, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT integrated_account_id, actor, reason FROM account_actions
          WHERE action = 'sync_now' ORDER BY action_id",
    )
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(
        (asked[0].0, asked[0].2.as_deref()),
        (ids[4], Some("ticket 42"))
    );
    assert!(
        asked[0]
            .1
            .as_deref()
            .is_some_and(|a| a.starts_with("lms-sync accounts sync-now by ")),
        "{asked:?}"
    );
}

/// When most accounts really left, `accounts discover --retire-missing` retires them past the
/// guard, once; `--dry-run` names them first and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_retires_accounts_past_the_guard_after_naming_them() {
    let ids: Vec<Uuid> = (1..=4).map(account_id).collect();
    let env = fleet_env(&ids.iter().map(|a| (*a, 5)).collect::<Vec<_>>()).await;
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let out = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let o = cli(&env, &["accounts", "discover"]).await;
    assert!(o.status.success(), "{}", err(&o));
    for a in &ids[1..] {
        env.sim.remove_integrated(*a);
    }
    let retired = "SELECT count(*) FROM accounts WHERE retired_at IS NOT NULL";
    let o = cli(&env, &["accounts", "discover"]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).contains("retired none: the listing would retire 3 of 4 accounts")
            && out(&o).contains("`lms-sync accounts discover --retire-missing` retires them")
            && out(&o).contains("no longer listed (kept, as the guard says):"),
        "{}",
        out(&o)
    );
    assert_eq!(env.scalar_i64(retired).await, 0);

    let listed_at = "SELECT extract(epoch FROM listed_at)::float8 FROM discovery_state";
    let before: f64 = sqlx::query_scalar(listed_at)
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    let o = cli(
        &env,
        &["accounts", "discover", "--retire-missing", "--dry-run"],
    )
    .await;
    assert!(o.status.success(), "{}", err(&o));
    let named: String = ids[1..]
        .iter()
        .enumerate()
        .map(|(i, a)| format!("  {a}  tenant tenant-{}\n", i + 1))
        .collect();
    assert!(
        out(&o).contains("would be retired: 3,")
            && out(&o).contains(&format!("no longer listed (would be retired):\n{named}"))
            && out(&o).ends_with("nothing changed (--dry-run)\n"),
        "{}",
        out(&o)
    );
    assert_eq!(env.scalar_i64(retired).await, 0);
    let after: f64 = sqlx::query_scalar(listed_at)
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert_eq!(after, before, "a dry run records no listing");

    let o = cli(&env, &["accounts", "discover", "--retire-missing"]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).contains("retired: 3,") && out(&o).contains("no longer listed (retired):\n"),
        "{}",
        out(&o)
    );
    let gone: Vec<Uuid> = sqlx::query_scalar(
        "SELECT integrated_account_id FROM accounts WHERE retired_at IS NOT NULL
          ORDER BY integrated_account_id",
    )
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    assert_eq!(gone, &ids[1..]);
    // An empty listing retires none, even so.
    env.sim.remove_integrated(ids[0]);
    let o = cli(&env, &["accounts", "discover", "--retire-missing"]).await;
    assert!(
        out(&o).contains("retired none: the listing showed no accounts while 1 are known"),
        "{}",
        out(&o)
    );
    assert_eq!(env.scalar_i64(retired).await, 3);
}

/// A reader that stopped reading (`accounts list --ids | head -1`) ends the command as it
/// would end `ls`: exit 141, as if killed by SIGPIPE, without an "internal error" on stderr.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_ends_a_command_quietly() {
    let env = fleet_env(&[(account_id(1), 5)]).await;
    let o = cli(&env, &["accounts", "discover"]).await;
    assert!(o.status.success());
    for args in [&["accounts", "list", "--ids"][..], &["status"][..]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let (_config, mut command) = cli_command(&env, &[], args);
        // (Not `output()`, which pipes stdout anew.)
        let child = command
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let o = child.wait_with_output().await.unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(141), "{args:?}: {err}");
        assert!(!err.contains("internal error"), "{args:?}: {err}");
    }
}

/// A steering change caught in a deadlock (another transaction locking the same accounts in
/// another order, as a listing applied in Truto's order does) is made again, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steering_change_caught_in_a_deadlock_is_made_again() {
    let ids: Vec<Uuid> = (1..=3).map(account_id).collect();
    let env = fleet_env(&ids.iter().map(|a| (*a, 5)).collect::<Vec<_>>()).await;
    discover_now(&env, &discovering(&env))
        .await
        .applied
        .unwrap();
    let label = "UPDATE accounts SET label = 'locked' WHERE integrated_account_id = $1";
    let mut other = env.store.pool().begin().await.unwrap();
    sqlx::query(label)
        .bind(ids[2])
        .execute(&mut *other)
        .await
        .unwrap();
    // The change locks the first two accounts, then waits for the third...
    let by = Acting::new("test".into(), Some("deadlock")).unwrap();
    let store = env.store.clone();
    let all = ids.clone();
    let steer =
        tokio::spawn(async move { store.steer(&all, Steer::Pause { until: None }, &by).await });
    let waiting = "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s USING (pid)
                    WHERE NOT l.granted AND s.datname = current_database()";
    for tries in 0.. {
        assert!(
            tries < 1500,
            "the change never waited for the third account"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        if env.scalar_i64(waiting).await > 0 {
            break;
        }
    }
    // ...while the other transaction, holding it, waits for the first: PostgreSQL ends the
    // change's transaction (it waited first, so it is the one to find the deadlock).
    sqlx::query(label)
        .bind(ids[0])
        .execute(&mut *other)
        .await
        .expect("the change's transaction gave way");
    other.commit().await.unwrap();
    let missing = steer.await.unwrap().expect("the change is made again");
    assert!(missing.is_empty());
    let paused: Vec<Uuid> = sqlx::query_scalar(
        "SELECT integrated_account_id FROM accounts WHERE paused ORDER BY integrated_account_id",
    )
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    assert_eq!(paused, ids);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM account_actions WHERE action = 'pause'")
            .await,
        3
    );
}

/// `accounts show`: one account's facts and its latest runs, newest first, with why a run
/// failed; `--runs` bounds them, `--json` gives the same as one object; a next run already due
/// while no process runs says so; an account outside the fleet is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_show_tells_one_accounts_facts_and_its_latest_runs() {
    let a = account_id(1);
    let env = fleet_env(&[(a, 30)]).await;
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    env.sim.push_fault(Some(a), Fault::status(400));
    let o = cli(&env, &["sync"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", err(&o));
    let o = cli(&env, &["sync"]).await;
    assert!(o.status.success(), "{}", err(&o));

    let o = cli(&env, &["accounts", "show", &a.to_string()]).await;
    assert!(o.status.success(), "{}", err(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for line in [
        format!("account        {a}\n"),
        "tenant         tenant-0\n".to_string(),
        "source         discovered\n".to_string(),
        "state          active\n".to_string(),
        "health         ok\n".to_string(),
        "live users     30\n".to_string(),
        "failures       0 in a row\n".to_string(),
        "last error     -\n".to_string(),
        "latest runs, newest first:\n".to_string(),
    ] {
        assert!(out.contains(&line), "{line}: {out}");
    }
    let runs: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("latest runs"))
        .skip(2)
        .collect();
    assert_eq!(runs.len(), 3, "{out}");
    assert!(
        runs[0].contains(" succeeded ") && runs[0].contains(" complete "),
        "{out}"
    );
    assert!(
        runs[1].contains(" failed ") && runs[1].contains(" partial "),
        "{out}"
    );
    assert!(
        runs[2].trim_start().starts_with("http_error: HTTP 400"),
        "{out}"
    );

    let o = cli(&env, &["accounts", "show", &a.to_string(), "--runs", "1"]).await;
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains(" failed "), "{out}");

    let o = cli(&env, &["accounts", "show", &a.to_string(), "--json"]).await;
    assert!(o.status.success(), "{}", err(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["account"]["integrated_account_id"], a.to_string());
    assert_eq!(v["account"]["live_users"], 30);
    let outcomes: Vec<&str> = v["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["succeeded", "failed"]);
    assert_eq!(v["runs"][1]["error_kind"], "http_error");
    assert_eq!(v["runs"][0]["users_seen"], 30);

    // A run asked for while no process runs (the one-off syncs are gone): due, and said so.
    let o = cli(&env, &["accounts", "sync-now", &a.to_string()]).await;
    assert!(o.status.success(), "{}", err(&o));
    let o = cli(&env, &["accounts", "show", &a.to_string()]).await;
    let out = String::from_utf8_lossy(&o.stdout);
    let next = out
        .lines()
        .find(|l| l.starts_with("next run "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        next.ends_with(&format!(
            " (due, but no lms-sync process holds a share of the request budget: is the service \
             running? `lms-sync sync --account {a}` runs it once)"
        )),
        "{out}"
    );

    let other = Uuid::from_u128(7).to_string();
    let o = cli(&env, &["accounts", "show", &other]).await;
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
    assert!(err(&o).contains("is not in the fleet"), "{}", err(&o));
    let o = cli(&env, &["accounts", "show", &a.to_string(), "--runs", "0"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", err(&o));
}

/// A listing that failed is tried again `discovery.retry_initial` after it, doubling with each
/// failure in a row, instead of a whole `discovery.interval` (an hour here) later: a customer
/// connected while Truto's listing failed is synced within seconds of it answering again, and
/// the state says how many failed in a row until one does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_listing_is_tried_again_after_retry_initial_doubling_not_an_interval_later() {
    use crate::helpers::daemon::spawn_env;
    let a = account_id(1);
    let env = fleet_env(&[(a, 12)]).await;
    let cfg = discovery_config(&env, &[], "interval = \"1h\"\nretry_initial = \"1s\"\n");
    // Refused outright (no retry within a listing): the first two listings fail.
    for _ in 0..2 {
        env.sim.push_listing_fault(Fault::status(400));
    }
    let mut service = spawn_env(&cfg, &env.db_url, &[], &[("TRUTO_API_TOKEN", DEMO_TOKEN)]);
    let mut failed_at = Vec::new();
    for (failures, retry_in_secs) in [(1, 1), (2, 2)] {
        let ev = service
            .wait_for("discovery failed; the registry is left as it was")
            .await;
        failed_at.push(logged_at(&ev));
        let ev = service
            .wait_for("the integrated accounts will be listed again after the failed listing")
            .await;
        assert_eq!(
            (
                ev["fields"]["failures"].as_u64(),
                ev["fields"]["retry_in_secs"].as_u64()
            ),
            (Some(failures), Some(retry_in_secs)),
            "{ev}"
        );
        if failures == 2 {
            let (n, error): (i32, Option<String>) =
                sqlx::query_as("SELECT failures, error FROM discovery_state")
                    .fetch_one(env.store.pool())
                    .await
                    .unwrap();
            assert_eq!(n, 2);
            assert!(error.unwrap().contains("HTTP 400"));
            let o = cli(&env, &["status"]).await;
            let out = String::from_utf8_lossy(&o.stdout);
            assert!(
                out.contains("; failed (2 in a row): listing the talentlms accounts failed: "),
                "{out}"
            );
        }
    }
    let ev = service.wait_for("discovery finished").await;
    assert_eq!(ev["fields"]["added"], 1, "{ev}");
    let listed_at = logged_at(&ev);
    // Each retry waited its delay, and no longer than a few seconds past it.
    let first = (failed_at[1] - failed_at[0]).num_milliseconds();
    let second = (listed_at - failed_at[1]).num_milliseconds();
    assert!((1000..10_000).contains(&first), "{first} ms");
    assert!((2000..11_000).contains(&second), "{second} ms");
    let ev = service.wait_for("sync run finished").await;
    assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
    assert_mirror(&env.store, &env.sim, a).await;
    let (n, error): (i32, Option<String>) =
        sqlx::query_as("SELECT failures, error FROM discovery_state")
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!((n, error), (0, None));
    // The next listing is an interval after the one that succeeded again.
    let o = cli_with(
        &env,
        &[
            ("LMS_SYNC__DISCOVERY__INTERVAL", "1h"),
            ("LMS_SYNC__DISCOVERY__RETRY_INITIAL", "1s"),
        ],
        &["status"],
    )
    .await;
    let out = String::from_utf8_lossy(&o.stdout);
    let line = out
        .lines()
        .find(|l| l.starts_with("discovery: "))
        .unwrap_or_else(|| panic!("{out}"));
    let due = line.rsplit("; next due ").next().unwrap();
    let due = chrono::NaiveDateTime::parse_from_str(due, "%Y-%m-%d %H:%M:%SZ")
        .unwrap()
        .and_utc();
    let after = (due - listed_at).num_seconds();
    assert!((3598..=3601).contains(&after), "{line}");
    service.terminate().await;
}

/// A replica whose runs are held because Truto refuses its token does not list; when the token
/// is accepted again, it lists at once if the last listing failed (the refusal failed it), not
/// after `discovery.retry_initial` or `discovery.interval` (an hour each here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_token_was_refused_lists_at_once_when_it_is_accepted_again() {
    use crate::helpers::daemon::spawn_env;
    let a = account_id(1);
    let env = fleet_env(&[(a, 7)]).await;
    let cfg = discovery_config(&env, &[], "interval = \"1h\"\nretry_initial = \"1h\"\n");
    env.sim.set_token("another-token");
    let mut service = spawn_env(&cfg, &env.db_url, &[], &[("TRUTO_API_TOKEN", DEMO_TOKEN)]);
    let ev = service
        .wait_for("discovery failed; the registry is left as it was")
        .await;
    assert!(
        ev["fields"]["error"].as_str().unwrap().contains("HTTP 401"),
        "{ev}"
    );
    service
        .wait_for(
            "not listing the integrated accounts while this process's runs are held; any \
             replica Truto answers lists them",
        )
        .await;
    // The token is accepted again (rotated at Truto's end): the process's probe finds out, and
    // the listing follows at once.
    env.sim.set_token(DEMO_TOKEN);
    let ev = service
        .wait_for(
            "listing the integrated accounts again: at once if the last listing failed, else \
             when the next is due",
        )
        .await;
    let resumed = logged_at(&ev);
    let ev = service.wait_for("discovery finished").await;
    assert_eq!(ev["fields"]["added"], 1, "{ev}");
    let waited = (logged_at(&ev) - resumed).num_seconds();
    assert!(waited < 10, "{waited} s");
    let ev = service.wait_for("sync run finished").await;
    assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
    assert_mirror(&env.store, &env.sim, a).await;
    service.terminate().await;
}

/// `lms-sync status` on a fleet of hundreds reads as the status page does: every account, those
/// needing attention first (the most pressing first), then the fleet's size and a count of
/// each kind of trouble, so that `status | head` shows what matters and `status | tail` sums the
/// fleet up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_large_fleet_leads_with_what_needs_attention() {
    use crate::helpers::daemon::{config, lms_sync};
    let good = account_id(1);
    let env = Env::new(&[(good, 20)]).await;
    // 210 configured accounts not synced yet, and one the token does not know (404).
    let unknown = account_id(999);
    let mut ids: Vec<Uuid> = (1000..1210).map(account_id).collect();
    ids.extend([good, unknown]);
    let cfg = config(&env.sim, &ids, "1h", 4);
    let sync = |id: Uuid| lms_sync(&cfg, &env.db_url, &["sync", "--account", &id.to_string()]);
    assert_eq!(sync(good).output().await.unwrap().status.code(), Some(0));
    assert_eq!(sync(unknown).output().await.unwrap().status.code(), Some(1));

    let out = lms_sync(&cfg, &env.db_url, &["status"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("account "), "{text}");
    // The account that cannot be synced first, the healthy one last, every one listed.
    assert!(lines[1].starts_with(&unknown.to_string()), "{text}");
    assert!(lines[1].contains("not_found"), "{text}");
    let rows: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| ids.iter().any(|id| l.starts_with(&id.to_string())))
        .collect();
    assert_eq!(rows.len(), 212, "{text}");
    assert!(rows[211].starts_with(&good.to_string()), "{text}");
    assert!(
        lines.contains(
            &"fleet: 212 accounts, 20 live users; 211 need attention (1 cannot be synced, \
              210 never synced yet)"
        ),
        "{text}"
    );
    // No service runs (only the one-off syncs did, and they are gone): said under the summary.
    let service = lines
        .iter()
        .find(|l| l.starts_with("service: "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        service.starts_with(
            "service: no lms-sync process holds a share of the request budget: none runs \
             against this database, and no run starts until one does ("
        ) && service.ends_with(" due now)"),
        "{text}"
    );
}

/// A tenant's `[[tenants]]` entry is what its discovered accounts run with, instead of
/// `[account_defaults]`; another tenant's accounts keep the defaults; `lms-sync config` shows
/// the entry as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_entry_applies_to_its_discovered_accounts_and_no_other() {
    let (a, b) = (account_id(1), account_id(2));
    // Tenants `tenant-0` (a) and `tenant-1` (b).
    let env = fleet_env(&[(a, 20), (b, 20)]).await;
    let cfg = TempFile::new(
        "lms-sync-tenants",
        ".toml",
        format!(
            "[truto]\nbase_url = \"{}\"\n[discovery]\nenabled = true\n[log]\nformat = \"json\"\n\
             [account_defaults]\nexclude_fields = [\"custom_fields\"]\n\
             [[tenants]]\ntenant_id = \"tenant-0\"\nignore_remote_data = true\n",
            env.sim.base_url()
        ),
    );
    let o = crate::helpers::daemon::lms_sync(&cfg, &env.db_url, &["sync"])
        .output()
        .await
        .unwrap();
    assert!(o.status.success(), "{}", said(&o));
    let kept = |account: Uuid| {
        let pool = env.store.pool().clone();
        async move {
            sqlx::query_as::<_, (i64, i64, i64)>(
                "SELECT count(*), count(remote_data), count(*) FILTER (WHERE custom_fields <> '{}')
                   FROM users WHERE integrated_account_id = $1",
            )
            .bind(account)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    // tenant-0's: no remote_data (its entry), custom fields kept (the defaults are not its).
    let (users, remote, custom) = kept(a).await;
    assert_eq!((users, remote), (20, 0));
    assert!(custom > 0, "{custom}");
    // tenant-1's: the defaults (custom fields excluded, remote_data kept).
    assert_eq!(kept(b).await, (20, 20, 0));

    // `accounts show` says which entry each runs with, and what that entry makes it ask for.
    let shown = |account: Uuid, json: bool| {
        let cfg = &cfg;
        let db = &env.db_url;
        async move {
            let id = account.to_string();
            let mut args = vec!["accounts", "show", id.as_str()];
            if json {
                args.push("--json");
            }
            let o = crate::helpers::daemon::lms_sync(cfg, db, &args)
                .output()
                .await
                .unwrap();
            assert!(o.status.success(), "{}", said(&o));
            String::from_utf8(o.stdout).unwrap()
        }
    };
    let v: serde_json::Value = serde_json::from_str(&shown(a, true).await).unwrap();
    assert_eq!(v["settings"]["from"], "tenants", "{v}");
    assert_eq!(v["settings"]["ignore_remote_data"], true, "{v}");
    assert_eq!(
        v["settings"]["exclude_fields"],
        serde_json::json!([]),
        "{v}"
    );
    assert_eq!(v["settings"]["schedule"], "every 6h, jitter 30s", "{v}");
    let v: serde_json::Value = serde_json::from_str(&shown(b, true).await).unwrap();
    assert_eq!(v["settings"]["from"], "account_defaults", "{v}");
    assert_eq!(v["settings"]["ignore_remote_data"], false, "{v}");
    assert_eq!(
        v["settings"]["exclude_fields"],
        serde_json::json!(["custom_fields"]),
        "{v}"
    );
    let o = crate::helpers::daemon::lms_sync(&cfg, &env.db_url, &["accounts", "list", "--json"])
        .output()
        .await
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let from = |account: Uuid| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["integrated_account_id"] == account.to_string())
            .map(|v| v["settings_from"].clone())
    };
    assert_eq!(from(a), Some(serde_json::json!("tenants")), "{listed}");
    assert_eq!(
        from(b),
        Some(serde_json::json!("account_defaults")),
        "{listed}"
    );
    let text = shown(a, false).await;
    for line in [
        "settings       from the [[tenants]] entry of tenant_id = \"tenant-0\"\n",
        "asks for       no remote_data (ignore_remote_data)\n",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    let text = shown(b, false).await;
    for line in [
        "settings       from [account_defaults]\n",
        "asks for       without custom_fields (exclude_fields)\n",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }

    let o = crate::helpers::daemon::lms_sync(&cfg, &env.db_url, &["config"])
        .output()
        .await
        .unwrap();
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(
        shown.contains("\n[[tenants]]\ntenant_id = \"tenant-0\"\nignore_remote_data = true\n"),
        "{shown}"
    );
    // The entry brings back what the defaults exclude: said, since it may not be meant.
    let dropped = "[[tenants]] tenant_id = \"tenant-0\" mirrors what [account_defaults] leaves \
                   out: custom_fields (exclude_fields) (an entry takes none of \
                   [account_defaults]' keys; repeat them in it to keep them out)";
    assert!(shown.contains(&format!("\n# Note: {dropped}\n")), "{shown}");
    // And the service says it in its log when it starts (where no one ran config or check).
    let mut service = crate::helpers::daemon::spawn_env(
        &cfg,
        &env.db_url,
        &[],
        &[
            ("TRUTO_API_TOKEN", lms_sync::devkit::simulator::DEMO_TOKEN),
            ("LMS_SYNC__SERVER__LISTEN", "127.0.0.1:0"),
        ],
    );
    let warned = service
        .wait_for("a configuration entry brings back fields [account_defaults] excludes")
        .await;
    assert_eq!(warned["fields"]["entry"], dropped, "{warned}");
    assert_eq!(service.terminate().await, 0);
    let o = crate::helpers::daemon::lms_sync(&cfg, &env.db_url, &["config", "--json"])
        .output()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tenants"][0]["tenant_id"], "tenant-0", "{v}");
    assert_eq!(v["tenants"][0]["ignore_remote_data"], true, "{v}");

    // `check` holds the configuration's tenants against Truto's listing: each has accounts...
    let o = crate::helpers::daemon::lms_sync(&cfg, &env.db_url, &["check"])
        .output()
        .await
        .unwrap();
    assert!(o.status.success(), "{}", said(&o));
    assert!(
        said(&o).contains(
            "tenants        ok       Truto lists accounts of each tenant named: tenant-0 1 account\n"
        ),
        "{}",
        said(&o)
    );
    assert!(
        said(&o).contains(&format!("\nexclusions     warning  {dropped}\n")),
        "{}",
        said(&o)
    );
    // ... and a misspelt one is a warning that names it and the tenants there are.
    let misspelt = TempFile::new(
        "lms-sync-tenants-misspelt",
        ".toml",
        format!(
            "[truto]\nbase_url = \"{}\"\n[discovery]\nenabled = true\n\
             [[tenants]]\ntenant_id = \"tenant-O\"\nignore_remote_data = true\n",
            env.sim.base_url()
        ),
    );
    let o = crate::helpers::daemon::lms_sync(&misspelt, &env.db_url, &["check"])
        .output()
        .await
        .unwrap();
    assert!(
        o.status.success(),
        "a warning is not a failure: {}",
        said(&o)
    );
    for line in [
        "tenants        warning  no account Truto lists is of [[tenants]] tenant_id = \"tenant-O\": \
         a misspelt tenant id, or a customer not connected yet (the tenants Truto lists: \
         \"tenant-0\", \"tenant-1\")\n",
        "every check passed\nlook at: ",
    ] {
        assert!(said(&o).contains(line), "{line}: {}", said(&o));
    }
    // (With the connections' warning too, on a test cluster busy with other tests.)
    assert!(
        said(&o).lines().any(|l| l.starts_with("look at: ")
            && l["look at: ".len()..].split(", ").any(|w| w == "tenants")),
        "{}",
        said(&o)
    );
    // `status` says so too, from the registry, with no request to Truto.
    let o = crate::helpers::daemon::lms_sync(&misspelt, &env.db_url, &["status"])
        .output()
        .await
        .unwrap();
    assert!(o.status.success(), "{}", said(&o));
    let line = "\ntenants: no discovered account is of [[tenants]] tenant_id = \"tenant-O\": a \
                misspelt tenant id, or a customer not connected yet (lms-sync check names the \
                tenants Truto lists)\n";
    assert!(said(&o).contains(line), "{}", said(&o));
    let o = crate::helpers::daemon::lms_sync(&cfg, &env.db_url, &["status"])
        .output()
        .await
        .unwrap();
    assert!(!said(&o).contains("\ntenants: "), "{}", said(&o));

    // The README's example loads as it says.
    let readme = include_str!("../../README.md");
    let example = readme
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("the README's [[tenants]] example");
    let cfg = TempFile::new(
        "lms-sync-tenants-example",
        ".toml",
        format!("[discovery]\nenabled = true\n{example}"),
    );
    let o = crate::helpers::daemon::lms_sync(&cfg, &env.db_url, &["config", "--json"])
        .output()
        .await
        .unwrap();
    assert!(o.status.success(), "{}", said(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["tenants"][0]["tenant_id"], "acme", "{v}");
    assert_eq!(v["tenants"][0]["schedule"]["every"], "1h", "{v}");
    assert_eq!(
        v["settings"]["account_defaults.exclude_fields"]["value"],
        serde_json::json!(["custom_fields"]),
        "{v}"
    );
}

/// `check` holds the sessions a `run` process opens at full load against the room PostgreSQL
/// has for more: a limit they would run into (here the database's CONNECTION LIMIT) is a
/// warning naming it, and what to lower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_holds_a_processs_sessions_against_the_room_postgresql_has() {
    let env = fleet_env(&[(account_id(1), 10)]).await;
    let sizes = [
        ("LMS_SYNC__DATABASE__MAX_CONNECTIONS", "4"),
        ("LMS_SYNC__SYNC__MAX_CONCURRENT_ACCOUNTS", "3"),
    ];
    let line = |o: &std::process::Output| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .find(|l| l.starts_with("connections "))
            .unwrap_or_else(|| panic!("no connections line: {}", said(o)))
            .to_string()
    };
    let needs = "a run process opens up to 9 sessions at full load (database.max_connections 4, \
                 a lease for each of sync.max_concurrent_accounts 3, 1 for the request budget, \
                 1 for discovery); PostgreSQL has room for ";
    let o = cli_with(&env, &sizes, &["check"]).await;
    assert!(line(&o).contains(needs), "{}", said(&o));
    assert!(
        line(&o).contains(" more now (max_connections "),
        "{}",
        said(&o)
    );

    sqlx::raw_sql(
        "DO $$ BEGIN
           EXECUTE format('ALTER DATABASE %I CONNECTION LIMIT 8', current_database());
         END $$",
    )
    .execute(env.store.pool())
    .await
    .unwrap();
    let o = cli_with(&env, &sizes, &["check"]).await;
    assert!(o.status.success(), "a warning: {}", said(&o));
    let warned = line(&o);
    assert!(
        warned.starts_with("connections    warning  ")
            && warned.contains(needs)
            && warned.contains(" more now (the database's CONNECTION LIMIT 8, ")
            && warned.ends_with(
                " in use): at full load it would be refused sessions (too many clients); lower \
                 database.max_connections or sync.max_concurrent_accounts, run fewer replicas, \
                 or raise the limit"
            ),
        "{warned}"
    );
}
