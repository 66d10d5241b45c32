//! Departed customers' data deleted by the retention rule `discovery.purge_retired_after`:
//! only after a complete listing, never a protected account, ten a listing, each purge one
//! transaction (a purge killed midway deletes nothing), recorded and counted.

use std::time::Duration;

use crate::helpers::fleet::*;
use crate::helpers::*;
use lms_sync::devkit::simulator::{Fault, Integrated, DEMO_TOKEN};
use uuid::Uuid;

/// A config file for `lms-sync run` against `env` (with `configured` in `[[accounts]]`) listing
/// every 10 s and purging accounts retired over an hour, with `more` keys of `[discovery]`.
fn purging_config(env: &Env, configured: &[Uuid], more: &str) -> TempFile {
    discovery_config(
        env,
        configured,
        &format!("interval = \"10s\"\npurge_retired_after = \"1h\"\n{more}"),
    )
}

/// With `discovery.purge_retired_after`, the service purges an account retired for longer than
/// that, right after a complete listing still without it: not after a failed listing, not an
/// account retired more recently, nor one retired and then configured in `[[accounts]]` (which
/// is synced), nor a protected one; the purge is recorded and counted, and the rest of the
/// fleet is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_purges_accounts_retired_longer_than_purge_retired_after() {
    use crate::helpers::daemon::spawn_env;
    let (a, b, c, d) = (account_id(1), account_id(2), account_id(3), account_id(4));
    let e = account_id(5);
    let env = fleet_env(&[(a, 30), (b, 20), (c, 10), (d, 15), (e, 5)]).await;
    let s = discovering(&env);
    assert_eq!(discover_now(&env, &s).await.applied.unwrap().added, 5);
    let o = cli(&env, &["sync"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // b, c, d and e disconnect; b's, d's and e's retirements are two hours old, c's new; d is then
    // configured in [[accounts]] (its users endpoint answering again).
    for gone in [b, c, d, e] {
        env.sim.remove_integrated(gone);
        assert_eq!(discover_now(&env, &s).await.applied.unwrap().retired, 1);
    }
    env.sim.unblock(d);
    let backdated = sqlx::query(
        "UPDATE accounts SET retired_at = now() - interval '2 hours'
          WHERE integrated_account_id = ANY($1)",
    )
    .bind([b, d, e])
    .execute(env.store.pool())
    .await
    .unwrap();
    assert_eq!(backdated.rows_affected(), 3);
    // e is protected (a legal hold).
    let o = cli(&env, &["accounts", "protect", &e.to_string()]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let users =
        |id: Uuid| format!("SELECT count(*) FROM users WHERE integrated_account_id = '{id}'");

    let cfg = purging_config(&env, &[d], "");
    // The service's first listing fails (its 3 attempts answered 500): nothing is purged.
    for _ in 0..3 {
        env.sim.push_listing_fault(Fault::status(500));
    }
    let mut service = spawn_env(
        &cfg,
        &env.db_url,
        &[],
        &[
            ("TRUTO_API_TOKEN", DEMO_TOKEN),
            ("LMS_SYNC__TRUTO__MAX_ATTEMPTS", "3"),
        ],
    );
    let listening = service
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await;
    let ops = listening["fields"]["addr"].as_str().unwrap().to_string();
    service
        .wait_for("discovery failed; the registry is left as it was")
        .await;
    // The next listing, complete and still without b: b is purged after it (not after the
    // failed one: no purge line comes before this), c (retired 0 h) is not.
    service.wait_for("discovery finished").await;
    let ev = service
        .wait_for("retired account purged: every row of it deleted (recorded in account_purges)")
        .await;
    assert_eq!(ev["fields"]["account"], b.to_string(), "{ev}");
    assert_eq!(ev["fields"]["purge_retired_after"], "1h", "{ev}");
    let rows = ev["fields"]["rows"].as_u64().unwrap();
    assert!(rows > 20, "{ev}");
    let metrics = get_text(&format!("http://{ops}/metrics")).await;
    assert!(
        metrics.contains("lms_sync_accounts_purged_total{result=\"purged\"} 1.0\n"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("lms_sync_accounts_purged_total{result=\"failed\"}")
            && metrics.contains("lms_sync_discovery_runs_total{result=\"failed\"} 1.0\n"),
        "{metrics}"
    );
    assert_eq!(service.terminate().await, 0);

    let (by, recorded): (String, i64) = sqlx::query_as(
        "SELECT purged_by, rows_deleted FROM account_purges WHERE integrated_account_id = $1",
    )
    .bind(b)
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert_eq!((by.as_str(), recorded), ("service", rows as i64));
    assert_eq!(env.scalar_i64(&users(b)).await, 0);
    let registered = |id: Uuid| {
        format!("SELECT count(*) FROM accounts WHERE integrated_account_id = '{id}' AND retired_at IS NOT NULL")
    };
    assert_eq!(env.scalar_i64(&registered(b)).await, 0);
    assert_eq!(env.scalar_i64(&registered(c)).await, 1);
    assert_eq!(
        env.scalar_i64(&users(c)).await,
        10,
        "c was retired too recently"
    );
    assert_eq!(env.scalar_i64(&users(d)).await, 15, "d is configured");
    assert_eq!(env.scalar_i64(&users(e)).await, 5, "e is protected");
    assert_mirror(&env.store, &env.sim, d).await;
    // `accounts show` says when c's purge is due: its retirement plus the setting.
    let o = cli_with(
        &env,
        &[("LMS_SYNC__DISCOVERY__PURGE_RETIRED_AFTER", "1h")],
        &["accounts", "show", &c.to_string(), "--json"],
    )
    .await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (retired, due): (String, String) = sqlx::query_as(
        "SELECT to_char(retired_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS'),
                to_char((retired_at + interval '1 hour') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS')
           FROM accounts WHERE integrated_account_id = $1",
    )
    .bind(c)
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    let at = |field: &str| shown["account"][field].as_str().unwrap_or_default()[..19].to_string();
    assert_eq!(
        (at("retired_at"), at("purge_due")),
        (retired, due.clone()),
        "{shown}"
    );
    let o = cli_with(
        &env,
        &[("LMS_SYNC__DISCOVERY__PURGE_RETIRED_AFTER", "1h")],
        &["accounts", "show", &c.to_string()],
    )
    .await;
    let text = String::from_utf8_lossy(&o.stdout);
    let line = format!(
        "purge due      {}Z: every row deleted at the first complete listing from then on \
         (discovery.purge_retired_after)\n",
        due.replace('T', " ")
    );
    assert!(text.contains(&line), "{line}{text}");
    // `status` says what the rule did and what is due.
    let o = cli_with(
        &env,
        &[("LMS_SYNC__DISCOVERY__PURGE_RETIRED_AFTER", "1h")],
        &["status"],
    )
    .await;
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(
            "\npurges: retired accounts are purged 1 h after their retirement: 1 in the last 24 h \
             (the latest "
        ) && text.contains("); none is due\n"),
        "{text}"
    );
    let o = cli_with(
        &env,
        &[("LMS_SYNC__DISCOVERY__PURGE_RETIRED_AFTER", "1h")],
        &["accounts", "show", &d.to_string(), "--json"],
    )
    .await;
    let shown: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        shown["account"]["purge_due"].is_null(),
        "configured: {shown}"
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM account_purges").await,
        1
    );
    assert_mirror(&env.store, &env.sim, a).await;
}

/// A backlog of retired accounts due to be purged (the rule just turned on) is worked off ten
/// per listing, the longest retired first, so that the discovery lease is not held for as
/// long as the whole backlog takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_of_retired_accounts_is_purged_ten_per_listing() {
    use crate::helpers::daemon::spawn_env;
    let ids: Vec<Uuid> = (1..=12).map(account_id).collect();
    let env = fleet_env(&ids.iter().map(|&id| (id, 3)).collect::<Vec<_>>()).await;
    let mut s = discovering(&env);
    s.discovery.max_retire_fraction = 1.0;
    assert_eq!(discover_now(&env, &s).await.applied.unwrap().added, 12);
    let o = cli(&env, &["sync"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for &gone in &ids[1..] {
        env.sim.remove_integrated(gone);
    }
    assert_eq!(discover_now(&env, &s).await.applied.unwrap().retired, 11);
    // Retired 2 h ago and earlier: the last account the longest.
    for (i, id) in ids[1..].iter().enumerate() {
        sqlx::query(
            "UPDATE accounts SET retired_at = now() - interval '2 hours' - make_interval(mins => $2)
              WHERE integrated_account_id = $1",
        )
        .bind(id)
        .bind(i as i32)
        .execute(env.store.pool())
        .await
        .unwrap();
    }
    let cfg = purging_config(&env, &[], "max_retire_fraction = 1.0\n");
    let mut service = spawn_env(&cfg, &env.db_url, &[], &[("TRUTO_API_TOKEN", DEMO_TOKEN)]);
    let ev = service
        .wait_for(
            "more retired accounts are due to be purged than one listing purges; the rest \
             follow after the next listings",
        )
        .await;
    assert_eq!(
        (ev["fields"]["due"].as_u64(), ev["fields"]["now"].as_u64()),
        (Some(11), Some(10))
    );
    let mut purged = Vec::new();
    loop {
        let ev = service
            .next_event("the first ten purges and the next listing")
            .await;
        match ev["fields"]["message"].as_str().unwrap_or_default() {
            "retired account purged: every row of it deleted (recorded in account_purges)" => {
                purged.push(ev["fields"]["account"].as_str().unwrap().to_string())
            }
            "discovery finished" => break,
            _ => {}
        }
    }
    // The longest retired first: all but the one retired most recently (ids[1]).
    let expected: Vec<String> = ids[2..].iter().rev().map(Uuid::to_string).collect();
    assert_eq!(purged, expected);
    let ev = service
        .wait_for("retired account purged: every row of it deleted (recorded in account_purges)")
        .await;
    assert_eq!(ev["fields"]["account"], ids[1].to_string(), "{ev}");
    assert_eq!(service.terminate().await, 0);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM account_purges").await,
        11
    );
    assert_eq!(env.scalar_i64("SELECT count(*) FROM accounts").await, 1);
    assert_mirror(&env.store, &env.sim, ids[0]).await;
}

/// A purge is one transaction holding the account's registry row: killed midway it deletes
/// nothing, and a listing that shows the account again meanwhile waits for it (then brings the
/// account back with every row it had).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_killed_midway_deletes_nothing_and_a_listing_meanwhile_waits_for_it() {
    let (a, b) = (account_id(1), account_id(2));
    let env = fleet_env(&[(a, 30), (b, 20)]).await;
    let s = discovering(&env);
    assert_eq!(discover_now(&env, &s).await.applied.unwrap().added, 2);
    let o = cli(&env, &["sync"]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    env.sim.remove_integrated(b);
    assert_eq!(discover_now(&env, &s).await.applied.unwrap().retired, 1);

    let (_cfg, command) = cli_command(
        &env,
        &[("LMS_SYNC_FAILPOINT", "purge_tx")],
        &["accounts", "purge", &b.to_string(), "--yes"],
    );
    let (mut purge, _stderr) = start_until(command, "the purge's failpoint", |line| {
        line.contains("failpoint reached")
    })
    .await;
    // Every row deleted, not committed. Truto lists b again: the listing waits on the purge.
    env.sim.unblock(b);
    env.sim.set_integrated(b, Integrated::active("tenant-1"));
    let listing = discover_now(&env, &s);
    tokio::pin!(listing);
    let waiting = "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s USING (pid)
                    WHERE NOT l.granted AND s.datname = current_database()";
    for tries in 0.. {
        assert!(tries < 1500, "the listing never waited for the purge");
        tokio::select! {
            out = &mut listing => panic!("the listing did not wait for the purge: {:?}", out.applied),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
        if env.scalar_i64(waiting).await > 0 {
            break;
        }
    }
    purge.kill().await.unwrap();
    let applied = listing.await.applied.expect("the listing applied");
    assert_eq!((applied.unretired, applied.added), (1, 0));
    let users = format!("SELECT count(*) FROM users WHERE integrated_account_id = '{b}'");
    assert_eq!(env.scalar_i64(&users).await, 20);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM account_purges").await,
        0
    );
    assert_mirror(&env.store, &env.sim, b).await;
    assert_mirror(&env.store, &env.sim, a).await;
}
