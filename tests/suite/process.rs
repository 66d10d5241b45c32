//! The binary as ops run it: `lms-sync run` stopped by SIGTERM, killed with SIGKILL and
//! restarted, and two replicas sharing one database. Progress is read from the JSON log lines
//! the processes write, so the tests wait on events, not on time.

use std::collections::{HashMap, HashSet};
use std::process::Stdio;
use std::time::Duration;

use crate::helpers::daemon::*;
use crate::helpers::*;
use lms_sync::devkit::simulator::Simulator;
use tokio::process::Command;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_exits_0_in_time_with_the_run_recorded_as_interrupted() {
    let a = account_id(1);
    let sim = Simulator::start(0).await.unwrap();
    sim.add_account(a, 4000, 1);
    sim.set_latency(Duration::from_millis(25));
    let db = fresh_database_url().await;
    let cfg = config(&sim, &[a], "6h", 4);
    let mut d = spawn(&cfg, &db);
    let listening = d
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await;
    let addr = listening["fields"]["addr"].as_str().unwrap().to_string();
    loop {
        let ev = d.wait_for("page committed").await;
        if ev["fields"]["pages"].as_u64() >= Some(3) {
            break;
        }
    }
    let health = Command::new(BIN)
        .args(["healthcheck", "--url", &format!("http://{addr}/healthz")])
        .env_clear()
        .status()
        .await
        .unwrap();
    assert!(
        health.success(),
        "the container health check passes while the daemon runs"
    );

    let code = d.terminate().await;

    let dead = Command::new(BIN)
        .args(["healthcheck", "--url", &format!("http://{addr}/healthz")])
        .env_clear()
        .stderr(Stdio::null())
        .status()
        .await
        .unwrap();
    assert_eq!(dead.code(), Some(1), "and fails once it is gone");
    assert_eq!(code, 0);
    let outcome: String = query_one(
        &db,
        "SELECT outcome FROM sync_runs ORDER BY run_id DESC LIMIT 1",
    )
    .await;
    assert_eq!(outcome, "interrupted");
    let (pages, users): (i64, i64) = (
        query_one(
            &db,
            "SELECT pages FROM sync_runs ORDER BY run_id DESC LIMIT 1",
        )
        .await,
        query_one(&db, "SELECT count(*) FROM users").await,
    );
    assert_eq!(users, pages * 100, "only whole pages were committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_restart_ends_with_an_exact_mirror() {
    let (a, b) = (account_id(1), account_id(2));
    let sim = Simulator::start(0).await.unwrap();
    sim.add_account(a, 3000, 1);
    sim.add_account(b, 1200, 2);
    sim.set_latency(Duration::from_millis(15));
    let db = fresh_database_url().await;
    let cfg = config(&sim, &[a, b], "6h", 4);
    let mut d = spawn(&cfg, &db);
    loop {
        let ev = d.wait_for("page committed").await;
        if ev["fields"]["pages"].as_u64() >= Some(4) {
            break;
        }
    }

    d.child.start_kill().unwrap();
    d.child.wait().await.unwrap();
    let running: i64 = query_one(
        &db,
        "SELECT count(*) FROM sync_runs WHERE outcome = 'running'",
    )
    .await;
    assert!(running >= 1, "the killed run is left running");
    sim.set_latency(Duration::ZERO);
    let mut d = spawn(&cfg, &db);
    let mut done = HashMap::new();
    while done.len() < 2 {
        let ev = d.wait_for("sync run finished").await;
        let account = ev["span"]["account"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
        done.insert(account, ev);
    }
    assert_eq!(d.terminate().await, 0);

    let store = store_for(&db).await;
    assert_mirror(&store, &sim, a).await;
    assert_mirror(&store, &sim, b).await;
    let interrupted: i64 = query_one(
        &db,
        "SELECT count(*) FROM sync_runs WHERE outcome = 'interrupted'",
    )
    .await;
    assert_eq!(
        interrupted, running,
        "the killed runs are marked interrupted"
    );
    let dupes: i64 = query_one(&db, "SELECT count(*) - count(DISTINCT (integrated_account_id, user_id, position)) FROM user_emails").await;
    assert_eq!(dupes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_share_the_work_and_never_sync_one_account_at_the_same_time() {
    let accounts: Vec<Uuid> = (1..=3).map(account_id).collect();
    let sim = Simulator::start(0).await.unwrap();
    for (i, a) in accounts.iter().enumerate() {
        sim.add_account(*a, 400, i as u64);
    }
    sim.set_latency(Duration::from_millis(20));
    let db = fresh_database_url().await;
    // Migrate once first, so both start from the same schema.
    let store = store_for(&db).await;
    store.migrate().await.unwrap();
    let cfg = config(&sim, &accounts, "1s", 1);
    let mut d1 = spawn(&cfg, &db);
    let mut d2 = spawn(&cfg, &db);

    let (mut n1, mut n2) = (0, 0);
    while n1 < 2 || n2 < 2 {
        tokio::select! {
            ev = d1.wait_for("sync run finished") => { assert_eq!(ev["fields"]["outcome"], "succeeded"); n1 += 1; }
            ev = d2.wait_for("sync run finished") => { assert_eq!(ev["fields"]["outcome"], "succeeded"); n2 += 1; }
        }
    }
    assert_eq!(d1.terminate().await, 0);
    assert_eq!(d2.terminate().await, 0);

    let overlaps: i64 = query_one(
        &db,
        "SELECT count(*) FROM sync_runs r JOIN sync_runs s
           ON r.integrated_account_id = s.integrated_account_id AND r.run_id <> s.run_id
          WHERE s.started_at >= r.started_at AND s.started_at < coalesce(r.finished_at, now())",
    )
    .await;
    assert_eq!(overlaps, 0, "two runs of one account overlapped");
    let workers: i64 = query_one(
        &db,
        "SELECT count(DISTINCT worker) FROM sync_runs WHERE outcome = 'succeeded'",
    )
    .await;
    assert_eq!(workers, 2, "both daemons did work");
    for a in &accounts {
        assert_mirror(&store, &sim, *a).await;
    }
}

/// `schedule.run_on_start` syncs every account when the fleet starts, not each time a replica
/// does: a replica started beside a running one (a rollout, a restart, a scale-up) leaves the
/// accounts that one synced to their schedule and syncs at once only one never synced; a
/// replica started alone syncs every account again (a share that looks alive but is not
/// renewed is not a running replica).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_joining_a_running_fleet_does_not_sync_every_account_again() {
    let synced: Vec<Uuid> = (1..=3).map(account_id).collect();
    let newcomer = account_id(4);
    let sim = Simulator::start(0).await.unwrap();
    for (i, a) in synced.iter().chain([&newcomer]).enumerate() {
        sim.add_account(*a, 40, i as u64);
    }
    let db = fresh_database_url().await;
    let store = store_for(&db).await;
    store.migrate().await.unwrap();
    let runs = || query_one::<i64>(&db, "SELECT count(*) FROM sync_runs");
    let first = config(&sim, &synced, "1h", 4);
    let mut a = spawn(&first, &db);
    for _ in 0..3 {
        let ev = a.wait_for("sync run finished").await;
        assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
    }
    // B joins (with no jitter, every account it took as due would start in its first round).
    let everyone: Vec<Uuid> = synced.iter().copied().chain([newcomer]).collect();
    let all = config(&sim, &everyone, "1h", 4);
    let mut b = spawn(&all, &db);
    // The account never synced starts at once, while B finds out whether others run: in
    // either order.
    let (mut joined, mut finished) = (false, false);
    while !joined || !finished {
        let ev = b.next_event("B joining and syncing the new account").await;
        match ev["fields"]["message"].as_str().unwrap_or_default() {
            "other replicas are running: the accounts they synced keep their schedule \
             (schedule.run_on_start applies when no replica runs)" => joined = true,
            "sync run finished" => {
                assert!(!finished, "B synced a second account: {ev}");
                assert_eq!(ev["span"]["account"], newcomer.to_string(), "{ev}");
                finished = true;
            }
            _ => {}
        }
    }
    assert_eq!(b.terminate().await, 0);
    assert_eq!(a.terminate().await, 0);
    assert_eq!(runs().await, 4, "B synced only the account never synced");

    // Alone, a replica syncs every account at start, even beside a share that looks alive
    // but is never renewed (a process that has just ended, its backend not yet gone).
    let mut ghost = <sqlx::PgConnection as sqlx::Connection>::connect(&db)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO lms.rate_shares (budget, holder, share, wanted, backend_pid, good_until)
         VALUES ('token', 'ended', 0, 0, pg_backend_pid(), now() + interval '1 hour')",
    )
    .execute(&mut ghost)
    .await
    .unwrap();
    let mut c = spawn(&all, &db);
    let mut seen = HashSet::new();
    while seen.len() < 4 {
        let ev = c.next_event("every account synced at start").await;
        let message = ev["fields"]["message"].as_str().unwrap_or_default();
        assert!(!message.starts_with("other replicas are running"), "{ev}");
        if message == "sync run finished" {
            assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
            seen.insert(ev["span"]["account"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(c.terminate().await, 0);
    assert_eq!(runs().await, 8);
    for id in &everyone {
        assert_mirror(&store, &sim, *id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_daemon_takes_over_an_account_whose_lease_holder_was_killed_mid_run() {
    let a = account_id(1);
    let sim = Simulator::start(0).await.unwrap();
    sim.add_account(a, 3000, 5);
    sim.set_latency(Duration::from_millis(15));
    let db = fresh_database_url().await;
    let store = store_for(&db).await;
    store.migrate().await.unwrap();
    let cfg = config(&sim, &[a], "6h", 1);
    let mut d1 = spawn(&cfg, &db);
    let mut d2 = spawn(&cfg, &db);

    // Whoever commits pages holds the lease: kill it with SIGKILL mid-run.
    let first_is_holder = loop {
        tokio::select! {
            ev = d1.wait_for("page committed") => if ev["fields"]["pages"].as_u64() >= Some(3) { break true },
            ev = d2.wait_for("page committed") => if ev["fields"]["pages"].as_u64() >= Some(3) { break false },
        }
    };
    let (mut holder, mut survivor) = if first_is_holder { (d1, d2) } else { (d2, d1) };
    holder.child.start_kill().unwrap();
    holder.child.wait().await.unwrap();

    // The survivor finds the lease free at its next look and finishes the listing.
    sim.set_latency(Duration::ZERO);
    let ev = survivor.wait_for("sync run finished").await;
    assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
    assert_eq!(
        ev["fields"]["resumed"], true,
        "it resumed the killed run's listing"
    );
    assert_eq!(survivor.terminate().await, 0);

    assert_mirror(&store, &sim, a).await;
    let outcomes: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT outcome, worker FROM sync_runs ORDER BY run_id")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(outcomes.len(), 2, "{outcomes:?}");
    assert_eq!(outcomes[0].0, "interrupted");
    assert_eq!(outcomes[1].0, "succeeded");
    assert_ne!(outcomes[0].1, outcomes[1].1, "another process finished it");
    let dupes: i64 = query_one(
        &db,
        "SELECT count(*) - count(DISTINCT user_id) FROM user_changes WHERE kind = 'insert'",
    )
    .await;
    assert_eq!(dupes, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_a_good_configuration_and_refuses_a_bad_one_without_a_restart() {
    let (a, b) = (account_id(1), account_id(2));
    let env = Env::new(&[(a, 120), (b, 80)]).await;
    let cfg = config(&env.sim, &[a], "1h", 4);
    let mut d = spawn(&cfg, &env.db_url);
    let listening = d
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await;
    let metrics = format!(
        "http://{}/metrics",
        listening["fields"]["addr"].as_str().unwrap()
    );
    let ev = d.wait_for("sync run finished").await;
    assert_eq!(ev["span"]["account"], a.to_string());
    let m = get_text(&metrics).await;
    assert_eq!(
        gauge(&m, "lms_sync_config_last_reload_successful"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        gauge(&m, "lms_sync_config_restart_pending"),
        Some(0.0),
        "{m}"
    );
    let started = gauge(&m, "lms_sync_config_last_reload_success_timestamp_seconds").unwrap();
    assert!(started > 1.7e9, "{m}");

    // A good file: the new account is synced, the process never restarted.
    std::fs::copy(config(&env.sim, &[a, b], "1h", 4), &cfg).unwrap();
    d.hangup().await;
    d.wait_for("configuration reloaded (SIGHUP); running syncs go on, the next rounds follow it")
        .await;
    let m = get_text(&metrics).await;
    assert!(gauge(&m, "lms_sync_config_last_reload_success_timestamp_seconds").unwrap() >= started);
    assert_eq!(
        gauge(&m, "lms_sync_config_restart_pending"),
        Some(0.0),
        "{m}"
    );
    let ev = d.wait_for("sync run finished").await;
    assert_eq!(ev["span"]["account"], b.to_string());
    assert_eq!(ev["fields"]["outcome"], "succeeded");

    // A good file that changes a key read only at start: taken, and the key named as
    // waiting for a restart.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{text}[database]\nmax_connections = 7\n")).unwrap();
    d.hangup().await;
    d.wait_for("configuration reloaded (SIGHUP); running syncs go on, the next rounds follow it")
        .await;
    let ev = d
        .wait_for("the reloaded configuration changes keys read only at start; they keep the values this process started with until it restarts")
        .await;
    assert_eq!(ev["fields"]["keys"], "database.max_connections", "{ev}");
    let m = get_text(&metrics).await;
    assert_eq!(
        gauge(&m, "lms_sync_config_restart_pending"),
        Some(1.0),
        "{m}"
    );

    // A bad file: one error line, and the configuration in force stays.
    std::fs::write(&cfg, "[truto]\npage_size = 0\n").unwrap();
    d.hangup().await;
    let ev = d
        .wait_for(
            "configuration reload refused (SIGHUP); the previous configuration stays in force",
        )
        .await;
    assert!(
        ev["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("truto.page_size"),
        "{ev}"
    );
    let m = get_text(&metrics).await;
    assert_eq!(
        gauge(&m, "lms_sync_config_last_reload_successful"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        gauge(&m, "lms_sync_config_restart_pending"),
        Some(1.0),
        "{m}"
    );

    // The file as it was at start: nothing waits for a restart any more.
    std::fs::copy(config(&env.sim, &[a, b], "1h", 4), &cfg).unwrap();
    d.hangup().await;
    d.wait_for("configuration reloaded (SIGHUP); running syncs go on, the next rounds follow it")
        .await;
    let m = get_text(&metrics).await;
    assert_eq!(
        gauge(&m, "lms_sync_config_last_reload_successful"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        gauge(&m, "lms_sync_config_restart_pending"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(d.terminate().await, 0);
    assert_mirror(&env.store, &env.sim, a).await;
    assert_mirror(&env.store, &env.sim, b).await;
}

/// A config file whose content changes (a ConfigMap updated, a file edited) is reloaded by
/// itself, once the new content has stayed for a check, without a signal or a restart; one
/// that does not load is refused and the configuration in force stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_that_changes_is_reloaded_without_a_signal() {
    let (a, b) = (account_id(1), account_id(2));
    let env = Env::new(&[(a, 40), (b, 30)]).await;
    let checked = |accounts: &[Uuid]| {
        std::fs::read_to_string(config(&env.sim, accounts, "1h", 4))
            .unwrap()
            .replace("[server]\n", "[server]\nconfig_file_check_secs = 1\n")
    };
    let cfg = TempFile::new("lms-sync-proc", ".toml", checked(&[a]));
    let mut d = spawn(&cfg, &env.db_url);
    let listening = d
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await;
    let metrics = format!(
        "http://{}/metrics",
        listening["fields"]["addr"].as_str().unwrap()
    );
    let ev = d.wait_for("sync run finished").await;
    assert_eq!(ev["span"]["account"], a.to_string());

    // Written in place, as an editor may: taken at a check after the one that saw it.
    std::fs::write(&cfg, checked(&[a, b])).unwrap();
    let ev = d
        .wait_for("configuration reloaded (its file changed); running syncs go on, the next rounds follow it")
        .await;
    assert_eq!(ev["fields"]["by"], "file_check", "{ev}");
    let ev = d.wait_for("sync run finished").await;
    assert_eq!(ev["span"]["account"], b.to_string());
    assert_eq!(ev["fields"]["outcome"], "succeeded");

    std::fs::write(&cfg, "[truto]\npage_size = 0\n").unwrap();
    let ev = d
        .wait_for("configuration reload refused (its file changed); the previous configuration stays in force")
        .await;
    assert!(
        ev["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("truto.page_size"),
        "{ev}"
    );
    let m = get_text(&metrics).await;
    assert_eq!(
        gauge(&m, "lms_sync_config_last_reload_successful"),
        Some(0.0),
        "{m}"
    );
    // The configuration in force stays: both accounts are still synced on request.
    let ev = d
        .sync_now(&cfg_for_commands(&env, &[a, b]), &env.db_url, b)
        .await;
    assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
    assert_eq!(d.terminate().await, 0);
    assert_mirror(&env.store, &env.sim, b).await;
}

/// A config file for one-off commands beside a daemon whose own file is being rewritten.
fn cfg_for_commands(env: &Env, accounts: &[Uuid]) -> TempFile {
    config(&env.sim, accounts, "1h", 4)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_api_token_and_the_admin_token_without_a_restart() {
    lms_sync::install_crypto_provider();
    let a = account_id(1);
    let env = Env::new(&[(a, 120)]).await;
    env.sim.set_token("tok-OLDSECRET");
    let cfg = config(&env.sim, &[a], "1h", 4);
    let token = TempFile::new("lms-sync-token", "", "tok-OLDSECRET\n");
    let admin = TempFile::new("lms-sync-admin", "", "adm-OLDSECRET\n");
    let mut d = spawn_env(
        &cfg,
        &env.db_url,
        &[],
        &[
            ("LMS_SYNC__TRUTO__API_TOKEN_FILE", token.to_str().unwrap()),
            (
                "LMS_SYNC__SERVER__ADMIN_TOKEN_FILE",
                admin.to_str().unwrap(),
            ),
            // Only SIGHUP reads the files here (see the mounted-Secret test for the checks).
            ("LMS_SYNC__SERVER__SECRET_FILES_CHECK_SECS", "0"),
        ],
    );
    let listening = d
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await;
    let status_url = format!(
        "http://{}/status",
        listening["fields"]["addr"].as_str().unwrap()
    );
    let ev = d.wait_for("sync run finished").await;
    assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
    let status_with = |bearer: &'static str| {
        let url = status_url.clone();
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(bearer)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status_with("adm-OLDSECRET").await, 200);

    // Truto now takes only the new token; the files hold the new secrets.
    env.sim.set_token("tok-NEWSECRET");
    std::fs::write(&token, "tok-NEWSECRET\n").unwrap();
    std::fs::write(&admin, "adm-NEWSECRET\n").unwrap();
    d.hangup().await;
    let ev = d
        .wait_for("Truto API token reloaded; the next requests use it")
        .await;
    assert_eq!(ev["fields"]["by"], "SIGHUP", "{ev}");
    let ev = d.wait_for("secret reloaded").await;
    assert_eq!(ev["fields"]["what"], "admin token", "{ev}");
    assert_eq!(ev["fields"]["by"], "SIGHUP", "{ev}");
    let ev = d.sync_now(&cfg, &env.db_url, a).await;
    assert_eq!(
        ev["fields"]["outcome"], "succeeded",
        "the run after the reload used the new token: {ev}"
    );
    assert_eq!(status_with("adm-OLDSECRET").await, 401);
    assert_eq!(status_with("adm-NEWSECRET").await, 200);

    // A token file gone: the reload is refused, the token in force stays, nothing is shown.
    std::fs::remove_file(&token).unwrap();
    d.hangup().await;
    let ev = d
        .wait_for(
            "configuration reload refused (SIGHUP); the previous configuration stays in force",
        )
        .await;
    let error = ev["fields"]["error"].as_str().unwrap();
    assert!(error.contains("truto.api_token_file"), "{ev}");
    assert!(!ev.to_string().contains("SECRET"), "{ev}");
    assert_eq!(d.terminate().await, 0);
    assert_mirror(&env.store, &env.sim, a).await;
}

/// The database URL from `database.url_file`, as a mounted Secret or a credentials agent
/// (Vault's database engine, a cloud's rotation) provides it: rotated credentials reach new
/// connections without a restart or SIGHUP, also after the old ones' sessions are ended (what
/// revoking them does), and a URL that cannot be used leaves the one in force, said once,
/// never shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_database_password_in_url_file_reaches_new_connections_without_a_restart() {
    let (pg, port) = tcp_cluster().await;
    // The test's sessions over the Unix socket (trusted); TCP asks for the password.
    let local = pg.url("postgres");
    let store = store_for(&local).await;
    let data_dir: String = sqlx::query_scalar("SELECT current_setting('data_directory')")
        .fetch_one(store.pool())
        .await
        .unwrap();
    write_as_server(
        &data_dir,
        "pg_hba.conf",
        "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256",
    );
    sqlx::raw_sql(
        "CREATE ROLE lms_rot LOGIN SUPERUSER PASSWORD 'pw-one-SECRET'; SELECT pg_reload_conf()",
    )
    .execute(store.pool())
    .await
    .unwrap();
    let url = |pw: &str| format!("postgres://lms_rot:{pw}@127.0.0.1:{port}/postgres");
    // The reload has taken effect once a wrong password is refused.
    for tries in 0.. {
        let wrong = <sqlx::PgConnection as sqlx::Connection>::connect(&url("wrong")).await;
        if wrong.is_err() {
            break;
        }
        assert!(tries < 500, "the server still trusts TCP");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let a = account_id(1);
    let sim = Simulator::start(0).await.unwrap();
    sim.add_account(a, 120, 1);
    let cfg = config(&sim, &[a], "1h", 2);
    let secret = MountedSecret::new();
    secret.update(&[("database-url", &format!("{}\n", url("pw-one-SECRET")))]);
    let file = secret.path("database-url");
    let mut d = spawn_env(
        &cfg,
        "",
        &[],
        &[
            ("TRUTO_API_TOKEN", lms_sync::devkit::simulator::DEMO_TOKEN),
            ("LMS_SYNC__DATABASE__URL_FILE", file.to_str().unwrap()),
            ("LMS_SYNC__SERVER__SECRET_FILES_CHECK_SECS", "1"),
        ],
    );
    let ev = d.wait_for("sync run finished").await;
    assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");

    // The password rotates: the role's changes, then the Secret; the service takes the file
    // within a check.
    sqlx::raw_sql("ALTER ROLE lms_rot PASSWORD 'pw-two-SECRET'")
        .execute(store.pool())
        .await
        .unwrap();
    secret.update(&[("database-url", &format!("{}\n", url("pw-two-SECRET")))]);
    let ev = d
        .wait_for("database URL reloaded (database.url_file); new connections use it")
        .await;
    assert_eq!(ev["fields"]["by"], "file_check", "{ev}");
    // Every session opened with the old password ends, as revoking those credentials does:
    // whatever the service opens from now on opens with the new one.
    sqlx::raw_sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'lms_rot'",
    )
    .execute(store.pool())
    .await
    .unwrap();
    sim.delete_user(a, "3");
    let ev = d.sync_now(&cfg, &url("pw-two-SECRET"), a).await;
    assert_eq!(
        ev["fields"]["outcome"], "succeeded",
        "the run after the rotation connected with the new password: {ev}"
    );
    assert_mirror(&store, &sim, a).await;

    // A file that now holds no usable URL: the one in force stays, said once, not shown.
    secret.update(&[(
        "database-url",
        "mysql://lms_rot:pw-bad-SECRET@127.0.0.1/x\n",
    )]);
    let ev = d
        .wait_for(
            "cannot use the database URL in database.url_file; the previous one stays in force",
        )
        .await;
    assert!(
        ev["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("must start with postgres://"),
        "{ev}"
    );
    assert!(!ev.to_string().contains("SECRET"), "{ev}");
    assert_eq!(d.terminate().await, 0);
}

/// Truto refusing the API token itself (revoked, or rotated in Truto but not here) fails the
/// run refused, stops the other under way (unless its own request was refused first: they race)
/// and starts no other, rather than failing every account in turn; the
/// log, the gauge and the status page say so, the token is checked with one request after
/// 10 s, and a valid token written to its file as Kubernetes updates a mounted Secret is
/// taken within a check of the file (no SIGHUP) and tried at once: every account is synced. A
/// key gone from the Secret leaves the token in force, with one error, until it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_api_token_holds_every_run_until_a_valid_one_is_loaded() {
    lms_sync::install_crypto_provider();
    let ids: Vec<Uuid> = (1..=6).map(account_id).collect();
    let env = Env::new(&ids.iter().map(|&a| (a, 120)).collect::<Vec<_>>()).await;
    env.sim.set_token("tok-VALIDSECRET");
    let cfg = config(&env.sim, &ids, "1h", 2);
    let secret = MountedSecret::new();
    secret.update(&[("truto-api-token", "tok-REVOKEDSECRET\n")]);
    let token = secret.path("truto-api-token");
    let mut d = spawn_env(
        &cfg,
        &env.db_url,
        &[],
        &[
            ("LMS_SYNC__TRUTO__API_TOKEN_FILE", token.to_str().unwrap()),
            ("LMS_SYNC__SERVER__SECRET_FILES_CHECK_SECS", "1"),
        ],
    );
    let listening = d
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await;
    let ops = listening["fields"]["addr"].as_str().unwrap().to_string();
    d.wait_for(
        "Truto rejected the API token (HTTP 401): check TRUTO_API_TOKEN or \
         truto.api_token_file; no new run starts until a request with it succeeds",
    )
    .await;
    let ev = d
        .wait_for("Truto still refuses the API token or does not answer; no run starts")
        .await;
    assert_eq!(ev["fields"]["next_check_in_secs"], 20, "{ev}");
    assert!(!ev.to_string().contains("SECRET"), "{ev}");
    // The two runs started first: each failed on its refused request, or stopped when the other's
    // was refused first (its own request perhaps sent, and refused unread). Their requests, and
    // the check: nothing else was sent in those 10 s.
    let failed: i64 = query_one(
        &env.db_url,
        "SELECT count(*) FROM sync_runs WHERE outcome = 'failed' AND error_kind = 'bad_token'",
    )
    .await;
    let stopped: i64 = query_one(
        &env.db_url,
        "SELECT count(*) FROM sync_runs WHERE outcome = 'interrupted' \
         AND error LIKE 'stopped: Truto refused the API token (check TRUTO_API_TOKEN or truto.api_token_file); %'",
    )
    .await;
    let runs: i64 = query_one(&env.db_url, "SELECT count(*) FROM sync_runs").await;
    assert!(failed >= 1, "{failed}");
    assert_eq!((failed + stopped, runs), (2, 2));
    let stats = env.sim.stats();
    let refused = stats.by_status.get(&401).copied().unwrap_or(0);
    assert!((failed as u64 + 1..=3).contains(&refused), "{stats:?}");
    assert_eq!(stats.requests, refused, "{stats:?}");
    let metrics = get_text(&format!("http://{ops}/metrics")).await;
    assert_eq!(gauge(&metrics, "lms_sync_api_token_rejected"), Some(1.0));
    let page = get_text(&format!("http://{ops}/")).await;
    assert!(page.contains("<span class=\"pill bad\">API token refused</span>"));
    assert!(
        page.contains("no run starts, as every one would fail"),
        "{page}"
    );

    secret.update(&[("truto-api-token", "tok-VALIDSECRET\n")]);
    let ev = d
        .wait_for("Truto API token reloaded; the next requests use it")
        .await;
    assert_eq!(ev["fields"]["by"], "file_check", "{ev}");
    d.wait_for("Truto accepts the API token again; runs start again")
        .await;
    let mut synced = std::collections::HashSet::new();
    while synced.len() < ids.len() {
        let ev = d.wait_for("sync run finished").await;
        assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
        synced.insert(ev["span"]["account"].as_str().unwrap().to_string());
    }
    let metrics = get_text(&format!("http://{ops}/metrics")).await;
    assert_eq!(gauge(&metrics, "lms_sync_api_token_rejected"), Some(0.0));

    // The key gone from the Secret: said once, and the token in force still syncs.
    secret.update(&[]);
    let ev = d
        .wait_for("cannot read the Truto API token; the previous one stays in force")
        .await;
    assert_eq!(ev["fields"]["by"], "file_check", "{ev}");
    let error = ev["fields"]["error"].as_str().unwrap();
    assert!(error.contains("truto.api_token_file"), "{ev}");
    assert!(!ev.to_string().contains("SECRET"), "{ev}");
    let ev = d.sync_now(&cfg, &env.db_url, ids[0]).await;
    assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
    secret.update(&[("truto-api-token", "tok-VALIDSECRET\n")]);
    d.wait_for("the Truto API token reads again; it is the one in force")
        .await;
    assert_eq!(d.terminate().await, 0);
    for a in ids {
        assert_mirror(&env.store, &env.sim, a).await;
    }
}

/// A one-off `sync` of many accounts whose token Truto refuses starts no account after the
/// first refusal: one request refused, one failed run, the others "not started", exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_off_sync_with_a_refused_token_starts_no_account_after_the_first_refusal() {
    let ids: Vec<Uuid> = (1..=4).map(account_id).collect();
    let env = Env::new(&ids.iter().map(|&a| (a, 50)).collect::<Vec<_>>()).await;
    env.sim.set_token("tok-VALIDSECRET");
    let cfg = config(&env.sim, &ids, "1h", 1);
    let o = one_off_sync(&cfg, &env.db_url).output().await.unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert_eq!(
        out.matches("not started: Truto refused the API token (check TRUTO_API_TOKEN or truto.api_token_file)")
            .count(),
        3,
        "{out}"
    );
    assert_eq!(env.sim.stats().requests, 1);
    let runs: i64 = query_one(&env.db_url, "SELECT count(*) FROM sync_runs").await;
    assert_eq!(runs, 1);
}

/// `lms-sync run` whose requests give up after 3 attempts (a few milliseconds apart with the
/// test configuration's backoff), so that Truto not answering shows within a second.
fn spawn_giving_up_after_3_attempts(cfg: &std::path::Path, db: &str) -> Daemon {
    spawn_env(
        cfg,
        db,
        &[],
        &[
            ("TRUTO_API_TOKEN", lms_sync::devkit::simulator::DEMO_TOKEN),
            ("LMS_SYNC__TRUTO__MAX_ATTEMPTS", "3"),
        ],
    )
}

/// A run under way when the process halts (here: waiting for an answer that would come only
/// after ten minutes, while two other accounts' requests give up on Truto's 502s) stops at
/// once and ends interrupted, saying why, instead of waiting out its request and its own
/// retries to fail; once Truto answers it runs again, as the others do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_under_way_when_truto_stops_answering_stops_and_runs_again_once_it_answers() {
    use lms_sync::devkit::simulator::Fault;
    let ids: Vec<Uuid> = (1..=3).map(account_id).collect();
    let env = Env::new(&ids.iter().map(|&a| (a, 120)).collect::<Vec<_>>()).await;
    let (down, waiting) = (&ids[..2], ids[2]);
    for &a in down {
        env.sim.block(a, Fault::status(502));
    }
    env.sim
        .block(waiting, Fault::Delay(Duration::from_secs(600)));
    let cfg = config(&env.sim, &ids, "1h", 3);
    let mut d = spawn_giving_up_after_3_attempts(&cfg, &env.db_url);
    let mut ended = std::collections::HashMap::new();
    while ended.len() < ids.len() {
        let ev = d.next_event("the three runs' ends").await;
        if ev["fields"]["message"] == "sync run finished" {
            let account = ev["span"]["account"].as_str().unwrap().to_string();
            ended.insert(
                account,
                ev["fields"]["outcome"].as_str().unwrap().to_string(),
            );
        }
    }
    assert_eq!(ended[&waiting.to_string()], "interrupted", "{ended:?}");
    for a in down {
        assert_eq!(ended[&a.to_string()], "failed", "{ended:?}");
    }
    let (kind, error): (String, String) =
        sqlx::query_as("SELECT error_kind, error FROM sync_runs WHERE integrated_account_id = $1")
            .bind(waiting)
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!(kind, "interrupted");
    assert!(
        error.starts_with("stopped: Truto has not answered since ")
            && error.contains("(gave up after 3 attempts: HTTP 502")
            && error.ends_with(
                "; the account's next run, once runs start again, resumes from the last committed page"
            ),
        "{error}"
    );

    for &a in &ids {
        env.sim.unblock(a);
    }
    let mut synced = std::collections::HashSet::new();
    while synced.len() < ids.len() {
        let ev = d
            .next_event("every account synced once Truto answers")
            .await;
        if ev["fields"]["message"] == "sync run finished" {
            assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
            synced.insert(ev["span"]["account"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(d.terminate().await, 0);
    // The waiting account's one request, unanswered, and the others' three attempts each.
    assert_eq!(env.sim.stats().by_status.get(&502), Some(&6));
    for a in ids {
        assert_mirror(&env.store, &env.sim, a).await;
    }
}

/// Truto itself down (its own 502 to every request, the account listing's too): the runs
/// under way fail and no other starts, instead of every account failing in turn after its
/// retries; the log, the gauge, the status page and `lms-sync status` say so; Truto is asked
/// again after 10 s (for an account's users), and once it answers every account is synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truto_not_answering_holds_every_run_until_it_answers_again() {
    use lms_sync::devkit::simulator::Fault;
    let ids: Vec<Uuid> = (1..=6).map(account_id).collect();
    let env = Env::new(&ids.iter().map(|&a| (a, 120)).collect::<Vec<_>>()).await;
    env.sim.set_outage(Some(Fault::status(502)));
    let cfg = config(&env.sim, &ids, "1h", 2);
    let mut d = spawn_giving_up_after_3_attempts(&cfg, &env.db_url);
    let listening = d
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await;
    let ops = listening["fields"]["addr"].as_str().unwrap().to_string();
    // The trip, the two runs started first failing (no other starts), and the halt recorded
    // with the request budget for the other processes to show, in whatever order they come.
    let (mut tripped, mut failed, mut recorded) = (false, 0, false);
    while !tripped || failed < 2 || !recorded {
        let ev = d
            .next_event("the halt, two failed runs and its record")
            .await;
        match ev["fields"]["message"].as_str().unwrap_or_default() {
            "Truto does not answer (and no other request was answered meanwhile): no new run \
             starts until it does; it is asked again in 10 s, then less and less often" => {
                let error = ev["fields"]["error"].as_str().unwrap();
                assert!(
                    error.starts_with("gave up after 3 attempts: HTTP 502"),
                    "{ev}"
                );
                tripped = true;
            }
            "sync run finished" => {
                assert_eq!(ev["fields"]["outcome"], "failed", "{ev}");
                failed += 1;
            }
            "recorded with the request budget why no run starts" => {
                let why = ev["fields"]["halted"].as_str().unwrap();
                assert!(why.starts_with("Truto has not answered since "), "{ev}");
                recorded = true;
            }
            _ => {}
        }
    }
    // Any process on the database shows it: `lms-sync status` here.
    let status = lms_sync(&cfg, &env.db_url, &["status"])
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(
        out.contains("; starts no run: Truto has not answered since "),
        "{out}"
    );
    assert!(out.contains("(gave up after 3 attempts: HTTP 502"), "{out}");
    let metrics = get_text(&format!("http://{ops}/metrics")).await;
    assert_eq!(gauge(&metrics, "lms_sync_truto_unreachable"), Some(1.0));
    assert_eq!(gauge(&metrics, "lms_sync_api_token_rejected"), Some(0.0));
    let page = get_text(&format!("http://{ops}/")).await;
    assert!(page.contains("<span class=\"pill bad\">Truto not answering</span>"));
    assert!(
        page.contains("(last: gave up after 3 attempts: HTTP 502"),
        "{page}"
    );
    assert!(
        page.contains("no run starts, as every one would fail"),
        "{page}"
    );

    env.sim.set_outage(None);
    let (mut answered, mut cleared) = (false, false);
    let mut synced = std::collections::HashSet::new();
    while !answered || !cleared || synced.len() < ids.len() {
        let ev = d
            .next_event("Truto answering, the halt cleared, every account synced")
            .await;
        match ev["fields"]["message"].as_str().unwrap_or_default() {
            "Truto answers again; runs start again" => answered = true,
            "recorded with the request budget why no run starts" => {
                assert_eq!(ev["fields"]["halted"], "no", "{ev}");
                cleared = true;
            }
            "sync run finished" => {
                assert!(answered, "a run ended before Truto answered: {ev}");
                assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
                synced.insert(ev["span"]["account"].as_str().unwrap().to_string());
            }
            _ => {}
        }
    }
    let metrics = get_text(&format!("http://{ops}/metrics")).await;
    assert_eq!(gauge(&metrics, "lms_sync_truto_unreachable"), Some(0.0));
    let status = lms_sync(&cfg, &env.db_url, &["status"])
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(!out.contains("starts no run"), "{out}");
    assert_eq!(d.terminate().await, 0);
    // While Truto was down: the two runs' three attempts each, nothing else (the probe came
    // once it answered).
    let stats = env.sim.stats();
    assert_eq!(stats.by_status.get(&502), Some(&6), "{stats:?}");
    // The probe asked for an account's users, the API that failed, not the account listing.
    assert_eq!(stats.account_listings, 0, "{stats:?}");
    let failed: i64 = query_one(
        &env.db_url,
        "SELECT count(*) FROM sync_runs WHERE outcome = 'failed' AND error_kind = 'http_error'",
    )
    .await;
    let runs: i64 = query_one(&env.db_url, "SELECT count(*) FROM sync_runs").await;
    assert_eq!((failed, runs), (2, 8));
    for a in ids {
        assert_mirror(&env.store, &env.sim, a).await;
    }
}

/// A replica cut off from Truto on its own (here: its `truto.base_url` leads nowhere, as a
/// broken DNS or egress would) halts as for an outage, but once another replica sharing the
/// database gets answers from Truto it says that its own way to Truto is what fails:
/// `lms_sync_truto_cut_off`, its log and `lms-sync status`. Alone, halted, it does not. The
/// other replica syncs the accounts meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_truto_says_so_once_another_replica_reaches_truto() {
    let ids: Vec<Uuid> = (1..=2).map(account_id).collect();
    let env = Env::new(&ids.iter().map(|&a| (a, 60)).collect::<Vec<_>>()).await;
    let reaching = config(&env.sim, &ids, "1h", 2);
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let cut = TempFile::new(
        "lms-sync-cut-off",
        ".toml",
        std::fs::read_to_string(&*reaching)
            .unwrap()
            .replace(&env.sim.base_url().to_string(), &nowhere),
    );
    let mut a = spawn_giving_up_after_3_attempts(&cut, &env.db_url);
    let listening = a
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await;
    let ops = listening["fields"]["addr"].as_str().unwrap().to_string();
    let (mut tripped, mut recorded) = (false, false);
    while !tripped || !recorded {
        let ev = a.next_event("the halt and its record").await;
        match ev["fields"]["message"].as_str().unwrap_or_default() {
            "Truto does not answer (and no other request was answered meanwhile): no new run \
             starts until it does; it is asked again in 10 s, then less and less often" => {
                tripped = true
            }
            "recorded with the request budget why no run starts"
                if ev["fields"]["halted"] != "no" =>
            {
                recorded = true
            }
            _ => {}
        }
    }
    // Alone it cannot tell its way from Truto's own trouble.
    let metrics = get_text(&format!("http://{ops}/metrics")).await;
    assert_eq!(gauge(&metrics, "lms_sync_truto_unreachable"), Some(1.0));
    assert_eq!(gauge(&metrics, "lms_sync_truto_cut_off"), Some(0.0));

    let mut b = spawn_giving_up_after_3_attempts(&reaching, &env.db_url);
    a.wait_for(
        "another process sharing the database got answers from Truto since this one stopped \
         reaching it: what fails is this process's way to Truto (its DNS, egress, proxy), not \
         Truto; the others sync the accounts meanwhile",
    )
    .await;
    let metrics = get_text(&format!("http://{ops}/metrics")).await;
    assert_eq!(gauge(&metrics, "lms_sync_truto_unreachable"), Some(1.0));
    assert_eq!(gauge(&metrics, "lms_sync_truto_cut_off"), Some(1.0));
    let status = lms_sync(&reaching, &env.db_url, &["status"])
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&status.stdout);
    assert_eq!(out.matches("; starts no run: ").count(), 1, "{out}");
    assert!(
        out.contains("; another process got an answer from Truto since (at ")
            && out.contains("): this one's way to Truto (DNS, egress, proxy) is what fails"),
        "{out}"
    );
    let mut synced = std::collections::HashSet::new();
    while synced.len() < ids.len() {
        let ev = b
            .next_event("the other replica syncing both accounts")
            .await;
        if ev["fields"]["message"] == "sync run finished" {
            assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
            synced.insert(ev["span"]["account"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(b.terminate().await, 0);
    assert_eq!(a.terminate().await, 0);
    for id in ids {
        assert_mirror(&env.store, &env.sim, id).await;
    }
}

/// Discovery lists once per `discovery.interval` for the whole fleet, and never from a replica
/// whose runs are held: replica A, cut off from Truto, lists at start (it cannot know yet),
/// fails and halts; replica B, started after, waits until that listing is an interval old
/// (not listing at start as well: the 20-s interval leaves it time to start under load); when
/// it is due, A does not take its turn, B lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_once_an_interval_and_not_from_a_replica_truto_does_not_answer() {
    use lms_sync::devkit::simulator::Integrated;
    let ids: Vec<Uuid> = (1..=2).map(account_id).collect();
    let env = Env::new(&ids.iter().map(|&a| (a, 30)).collect::<Vec<_>>()).await;
    for (i, id) in ids.iter().enumerate() {
        env.sim
            .set_integrated(*id, Integrated::active(&format!("tenant-{i}")));
    }
    let discovering = |base_url: &str| {
        let text = std::fs::read_to_string(&*config(&env.sim, &ids, "1h", 2))
            .unwrap()
            .replace(&env.sim.base_url().to_string(), base_url);
        TempFile::new(
            "lms-sync-discovering",
            ".toml",
            format!("{text}[discovery]\nenabled = true\ninterval = \"20s\"\n"),
        )
    };
    let reaching = discovering(&env.sim.base_url().to_string());
    let cut = discovering(&format!("http://127.0.0.1:{}", free_port()));

    let mut a = spawn_giving_up_after_3_attempts(&cut, &env.db_url);
    let listening = a
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await;
    let ops = listening["fields"]["addr"].as_str().unwrap().to_string();
    let skipping = "not listing the integrated accounts while this process's runs are held; any \
                    replica Truto answers lists them";
    // Its listing fails and it halts, in either order; its discovery loop may see the halt
    // (and say it skips its turn) before the halt's own line is written.
    let (mut failed, mut halted, mut skipped) = (false, false, None);
    while !failed || !halted {
        let ev = a.next_event("the failed listing and the halt").await;
        match ev["fields"]["message"].as_str().unwrap_or_default() {
            "discovery failed; the registry is left as it was" => failed = true,
            "Truto does not answer (and no other request was answered meanwhile): no new run \
             starts until it does; it is asked again in 10 s, then less and less often" => {
                halted = true
            }
            m if m == skipping => skipped = Some(ev),
            _ => {}
        }
    }

    let mut b = spawn_giving_up_after_3_attempts(&reaching, &env.db_url);
    let not_due = b
        .wait_for("the integrated accounts were listed lately; the next listing is not due yet")
        .await;
    assert!(
        not_due["fields"]["due_in_secs"].as_u64().unwrap() < 20,
        "{not_due}"
    );
    assert_eq!(
        env.sim.stats().account_listings,
        0,
        "B did not list at start"
    );
    let skipped = match skipped {
        Some(ev) => ev,
        None => a.wait_for(skipping).await,
    };
    assert!(
        skipped["fields"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("Truto has not answered since "),
        "{skipped}"
    );
    b.wait_for("discovery finished").await;
    assert_eq!(env.sim.stats().account_listings, 1);
    let metrics = get_text(&format!("http://{ops}/metrics")).await;
    assert!(
        metrics.contains("lms_sync_discovery_runs_total{result=\"failed\"} 1.0\n")
            && !metrics.contains("lms_sync_discovery_runs_total{result=\"succeeded\"}"),
        "A listed once, at start: {metrics}"
    );
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM discovery_state WHERE error IS NULL AND accounts_listed = 2"
        )
        .await,
        1
    );
    assert_eq!(b.terminate().await, 0);
    assert_eq!(a.terminate().await, 0);
}

/// A one-off `sync` of many accounts while Truto does not answer starts no account after the
/// second gave up (one alone may be that account's trouble): three attempts each, two failed
/// runs, the others "not started", exit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_off_sync_while_truto_does_not_answer_starts_no_account_after_the_second() {
    use lms_sync::devkit::simulator::Fault;
    let ids: Vec<Uuid> = (1..=4).map(account_id).collect();
    let env = Env::new(&ids.iter().map(|&a| (a, 50)).collect::<Vec<_>>()).await;
    env.sim.set_outage(Some(Fault::Reset));
    let cfg = config(&env.sim, &ids, "1h", 1);
    let o = one_off_sync(&cfg, &env.db_url)
        .env("LMS_SYNC__TRUTO__MAX_ATTEMPTS", "3")
        .output()
        .await
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(1), "{out}{err}");
    assert_eq!(
        out.matches("not started: Truto has not answered since ")
            .count(),
        2,
        "{out}"
    );
    assert_eq!(
        out.matches("(gave up after 3 attempts: network error")
            .count(),
        2,
        "{out}"
    );
    assert_eq!(env.sim.stats().requests, 6);
    let runs: i64 = query_one(&env.db_url, "SELECT count(*) FROM sync_runs").await;
    assert_eq!(runs, 2);
}

/// A vendor's quota spent for an hour (a 429 asking to wait 3,600 s, longer than the retries
/// may wait) fails the run once and holds the account until then, in the database: the
/// service does not retry it every few seconds (its `retry_initial` is 1 s here; the other
/// account, synced every second, is the clock), its next run is shown at the hold's end, and
/// a one-off `sync` in another process fails it without sending a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_spent_for_an_hour_holds_the_account_in_every_process_until_it_ends() {
    use lms_sync::devkit::simulator::Fault;
    let (a, b) = (account_id(1), account_id(2));
    let env = Env::new(&[(a, 30), (b, 30)]).await;
    env.sim.push_fault(
        Some(a),
        Fault::Status {
            status: 429,
            retry_after: Some("3600".into()),
            remote: false,
        },
    );
    let cfg = config(&env.sim, &[a, b], "1h", 2);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text = text.replace(
        &format!("integrated_account_id = \"{b}\"\n"),
        &format!("integrated_account_id = \"{b}\"\nschedule.every = \"1s\"\n"),
    );
    std::fs::write(&cfg, text).unwrap();
    let mut d = spawn(&cfg, &env.db_url);
    let listening = d
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await;
    let ops = listening["fields"]["addr"].as_str().unwrap().to_string();
    let mut b_runs = 0;
    while b_runs < 5 {
        let ev = d.wait_for("sync run finished").await;
        if ev["span"]["account"] == a.to_string() {
            assert_eq!(ev["fields"]["outcome"], "failed", "{ev}");
        } else {
            assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
            b_runs += 1;
        }
    }
    let sql = format!(
        "SELECT count(*) FROM sync_runs WHERE integrated_account_id = '{a}'
            AND outcome = 'failed' AND error_kind = 'rate_limited'"
    );
    assert_eq!(query_one::<i64>(&env.db_url, &sql).await, 1, "one run of a");
    let runs_of_a = format!("SELECT count(*) FROM sync_runs WHERE integrated_account_id = '{a}'");
    assert_eq!(query_one::<i64>(&env.db_url, &runs_of_a).await, 1);
    let held = format!(
        "SELECT extract(epoch FROM held_until - now())::float8 FROM sync_state
          WHERE integrated_account_id = '{a}'"
    );
    let left: f64 = query_one(&env.db_url, &held).await;
    assert!((3560.0..=3600.0).contains(&left), "{left}");
    assert_eq!(env.sim.stats().by_account.get(&a), Some(&1));
    let until: chrono::DateTime<chrono::Utc> = query_one(
        &env.db_url,
        &format!("SELECT held_until FROM sync_state WHERE integrated_account_id = '{a}'"),
    )
    .await;
    let metrics = get_text(&format!("http://{ops}/metrics")).await;
    let held_series: Vec<(&str, f64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("lms_sync_account_held_until_timestamp_seconds"))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(labels, v)| (labels, v.parse().unwrap()))
        .collect();
    assert_eq!(
        held_series,
        [(
            format!("{{account=\"{a}\"}}").as_str(),
            until.timestamp_millis() as f64 / 1000.0
        )],
        "only the held account, until its hold's end: {metrics}"
    );
    let page = get_text(&format!("http://{ops}/accounts/{a}")).await;
    assert!(
        page.contains(&format!("<time datetime=\"{}\"", until.to_rfc3339())),
        "the next run is the hold's end: {page}"
    );
    let why = format!(
        "the server holds its requests back until {}",
        until.format("%Y-%m-%d %H:%M:%SZ")
    );
    assert!(page.contains(&why), "{page}");
    let o = lms_sync(&cfg, &env.db_url, &["status"])
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.matches(&why).count(), 1, "{out}");
    let o = lms_sync(&cfg, &env.db_url, &["accounts", "list"])
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.matches(&why).count(), 1, "{out}");
    let o = lms_sync(&cfg, &env.db_url, &["accounts", "list", "--json"])
        .output()
        .await
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let held_in_list: HashMap<String, serde_json::Value> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["integrated_account_id"].as_str().unwrap().into(),
                v["held_until"].clone(),
            )
        })
        .collect();
    let expect = |id: Uuid| held_in_list[&id.to_string()].clone();
    let a_until: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(expect(a)).expect("a held_until for a");
    assert_eq!(a_until, until);
    assert_eq!(expect(b), serde_json::Value::Null);
    let b_held: Option<f64> = query_one(
        &env.db_url,
        &format!("SELECT extract(epoch FROM held_until)::float8 FROM sync_state WHERE integrated_account_id = '{b}'"),
    )
    .await;
    assert_eq!(b_held, None);

    let o = lms_sync(&cfg, &env.db_url, &["sync", "--account", &a.to_string()])
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("rate limited: the server holds this account's requests back for another 35"),
        "{out}"
    );
    assert_eq!(env.sim.stats().by_account.get(&a), Some(&1), "nothing sent");
    // The same hold, to the microsecond: a run started during it does not move its end.
    let until_after: chrono::DateTime<chrono::Utc> = query_one(
        &env.db_url,
        &format!("SELECT held_until FROM sync_state WHERE integrated_account_id = '{a}'"),
    )
    .await;
    assert_eq!(until_after, until);
    let o = lms_sync(&cfg, &env.db_url, &["accounts", "show", &a.to_string()])
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains(&format!("held back      {why}")), "{out}");
    let o = lms_sync(&cfg, &env.db_url, &["accounts", "sync-now", &a.to_string()])
        .output()
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!(
            "note: {why} (its Retry-After or ratelimit-* headers"
        )),
        "{out}"
    );
    assert!(
        out.contains(
            "no run starts before then; until then the run fails at once, without a request"
        ),
        "{out}"
    );
    assert_eq!(d.terminate().await, 0);
    assert_mirror(&env.store, &env.sim, b).await;
}

/// A migrated database whose `users` a DBA's session holds locked (`LOCK TABLE … IN SHARE
/// MODE`, until its `COMMIT`), a simulator with account `a` (300 users) and a config for it.
struct Behind {
    sim: Simulator,
    db: String,
    store: lms_sync::store::Store,
    dba: sqlx::PgConnection,
    cfg: TempFile,
}

async fn behind_a_lock(a: Uuid) -> Behind {
    let sim = Simulator::start(0).await.unwrap();
    sim.add_account(a, 300, 1);
    let db = fresh_database_url().await;
    let store = store_for(&db).await;
    store.prepare(true).await.unwrap();
    let dba = session_holding(&db, "dba-reindex", "LOCK TABLE users IN SHARE MODE").await;
    let cfg = config(&sim, &[a], "6h", 1);
    Behind {
        sim,
        db,
        store,
        dba,
        cfg,
    }
}

/// A replica killed while its write waits for someone else's lock leaves no session behind:
/// its sessions look for their client every few seconds (`client_connection_check_interval`),
/// so the statement ends with the process instead of waiting on for the lock (its
/// transaction's row locks and a connection slot with it) for as long as the holder keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_behind_a_lock_leaves_no_session_waiting_for_it() {
    let a = account_id(1);
    let Behind {
        sim: _serving,
        db,
        store,
        mut dba,
        cfg,
    } = behind_a_lock(a).await;
    let mut d = spawn(&cfg, &db);
    let waiting = "SELECT l.pid FROM pg_locks l JOIN pg_stat_activity s USING (pid)
                    WHERE NOT l.granted AND s.datname = current_database()
                      AND s.application_name LIKE 'lms-sync%'";
    let mut pid = None;
    for _ in 0..1500 {
        pid = sqlx::query_scalar::<_, i32>(waiting)
            .fetch_optional(store.pool())
            .await
            .unwrap();
        if pid.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = pid.expect("the run's write waits for the lock");

    d.child.start_kill().unwrap();
    d.child.wait().await.unwrap();

    wait_until_gone(
        &store,
        &[pid],
        30,
        "the killed replica's session waiting for the lock",
    )
    .await;
    // The lock was held all along: the session ended by itself, not because it got the lock.
    sqlx::raw_sql("COMMIT").execute(&mut dba).await.unwrap();
}

/// A one-off `lms-sync sync` held up by someone else's lock says so in its log, naming the
/// holder, and finishes once the lock is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_off_sync_behind_a_lock_logs_who_holds_it_and_finishes_after() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let a = account_id(1);
    let Behind {
        sim,
        db,
        store,
        mut dba,
        cfg,
    } = behind_a_lock(a).await;
    let mut child = one_off_sync(&cfg, &db)
        .env("LMS_SYNC__DATABASE__LOCK_WAIT_WARN_SECS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();

    let warned = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let Ok(ev) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let msg = ev["fields"]["message"].as_str().unwrap_or_default();
            if msg.starts_with("a session of lms-sync is waiting for a database lock") {
                return ev;
            }
        }
        panic!("the sync ended without saying it waited for a lock");
    })
    .await
    .expect("the wait was logged within a minute");
    let wait = warned["fields"]["wait"].as_str().unwrap_or_default();
    assert!(
        wait.contains("users held by pid ") && wait.contains("application dba-reindex"),
        "{warned}"
    );

    sqlx::raw_sql("COMMIT").execute(&mut dba).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the sync finished within a minute of the lock's release")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert_mirror(&store, &sim, a).await;
}

/// Packets between PostgreSQL on `server` and these client ports dropped both ways, as a cut
/// network does: no FIN or RST ever reaches either side. Undone when dropped. Needs root.
struct Cut(Vec<(u16, u16)>);

impl Cut {
    fn new(server: u16, clients: &[u16]) -> Cut {
        ensure_tool("iptables", "iptables");
        let mut cut = Cut(Vec::new());
        for &c in clients {
            for (from, to) in [(server, c), (c, server)] {
                cut.0.push((from, to));
                let status = std::process::Command::new("iptables")
                    .args(Cut::rule("-I", from, to))
                    .status()
                    .expect("iptables runs (as root) to cut a connection");
                assert!(status.success(), "iptables refused to drop {from}->{to}");
            }
        }
        cut
    }

    fn rule(op: &str, from: u16, to: u16) -> Vec<String> {
        [op, "INPUT", "-i", "lo", "-p", "tcp", "--sport"]
            .iter()
            .map(|s| s.to_string())
            .chain([from.to_string(), "--dport".into(), to.to_string()])
            .chain(["-j".into(), "DROP".into()])
            .collect()
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        for &(from, to) in &self.0 {
            let _ = std::process::Command::new("iptables")
                .args(Cut::rule("-D", from, to))
                .status();
        }
    }
}

/// A replica cut off from the database by the network (a node lost: no FIN ever comes) while
/// it holds an account's lease: the server ends its sessions within
/// `database.keepalive_timeout_secs` (with the operating system's defaults, after about
/// 2 h 11 min), so the lease is free and another replica syncs the account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_by_the_network_lets_go_of_its_account_within_the_keepalive_timeout() {
    use lms_sync::devkit::simulator::DEMO_TOKEN;
    let a = account_id(1);
    let sim = Simulator::start(0).await.unwrap();
    sim.add_account(a, 300, 1);
    let (pg, port) = tcp_cluster().await;
    // The replicas over TCP; the test's own sessions over the Unix socket (no client port).
    let db = pg.tcp_url("postgres").unwrap();
    let store = store_for(&pg.url("postgres")).await;
    store.prepare(true).await.unwrap();
    // The replica's first write waits behind a DBA's lock, so it holds the lease meanwhile.
    let mut dba = session_holding(
        &pg.url("postgres"),
        "dba-reindex",
        "LOCK TABLE users IN SHARE MODE",
    )
    .await;
    let cfg = config(&sim, &[a], "6h", 1);
    let quick = [
        ("TRUTO_API_TOKEN", DEMO_TOKEN),
        ("LMS_SYNC__DATABASE__KEEPALIVE_TIMEOUT_SECS", "4"),
    ];
    let mut replica = spawn_env(&cfg, &db, &[], &quick);
    let waiting = "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s USING (pid)
                    WHERE NOT l.granted AND s.application_name LIKE 'lms-sync%'";
    for tries in 0.. {
        assert!(
            tries < 1500,
            "the replica's write never waited for the lock"
        );
        let n: i64 = sqlx::query_scalar(waiting)
            .fetch_one(store.pool())
            .await
            .unwrap();
        if n > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every session of lms-sync on this cluster is the replica's: its lease's among them.
    let sessions: Vec<(i32, String, i32)> = sqlx::query_as(
        "SELECT pid, application_name, client_port FROM pg_stat_activity
          WHERE application_name LIKE 'lms-sync%' AND client_port > 0",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert!(
        sessions.iter().any(|(_, app, _)| app == "lms-sync lease"),
        "{sessions:?}"
    );

    let pid = replica.child.id().unwrap().to_string();
    let stopped = Command::new("kill").args(["-STOP", &pid]).status().await;
    assert!(stopped.unwrap().success());
    let ports: Vec<u16> = sessions.iter().map(|(_, _, p)| *p as u16).collect();
    let cut = Cut::new(port, &ports);
    let pids: Vec<i32> = sessions.iter().map(|(p, _, _)| *p).collect();
    wait_until_gone(&store, &pids, 60, "the cut-off replica's sessions").await;
    replica.child.start_kill().unwrap();
    replica.child.wait().await.unwrap();
    drop(cut);

    // The account is free: another replica syncs it once the DBA is done.
    sqlx::raw_sql("COMMIT").execute(&mut dba).await.unwrap();
    let mut other = spawn(&cfg, &db);
    let done = other.wait_for("sync run finished").await;
    assert_eq!(done["fields"]["outcome"], "succeeded", "{done}");
    assert_eq!(other.terminate().await, 0);
    assert_mirror(&store, &sim, a).await;
}

/// Waits until none of the backends `pids` is left, failing after `secs` seconds.
async fn wait_until_gone(store: &lms_sync::store::Store, pids: &[i32], secs: u64, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY ($1)")
                .bind(pids)
                .fetch_one(store.pool())
                .await
                .unwrap();
        if left == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: {left} still there after {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `server.per_account_counters = false` (here by its env var): the counters of the runs
/// count for the whole process, each account keeps its state gauges, and the totals are the
/// same; the series a fleet's accounts cost fall by half or more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_per_account_counters_the_runs_count_per_process_and_accounts_keep_their_state() {
    let ids: Vec<Uuid> = (1..=3).map(account_id).collect();
    let env = Env::new(&ids.iter().map(|&a| (a, 150)).collect::<Vec<_>>()).await;
    let cfg = config(&env.sim, &ids, "1h", 3);
    let mut d = spawn_env(
        &cfg,
        &env.db_url,
        &[],
        &[
            ("TRUTO_API_TOKEN", lms_sync::devkit::simulator::DEMO_TOKEN),
            ("LMS_SYNC__SERVER__PER_ACCOUNT_COUNTERS", "false"),
        ],
    );
    let listening = d
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await;
    let ops = listening["fields"]["addr"].as_str().unwrap().to_string();
    for _ in &ids {
        let ev = d.wait_for("sync run finished").await;
        assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
    }
    let metrics = get_text(&format!("http://{ops}/metrics")).await;
    let series = |name: &str| -> Vec<&str> {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .collect()
    };
    assert_eq!(
        series("lms_sync_users_total")
            .iter()
            .find(|l| l.contains("change=\"inserted\""))
            .and_then(|l| l.rsplit(' ').next()),
        Some("450.0"),
        "{metrics}"
    );
    assert_eq!(
        series("lms_sync_runs_total"),
        ["lms_sync_runs_total{outcome=\"succeeded\"} 3.0"]
    );
    for name in [
        "lms_sync_users_total",
        "lms_sync_pages_total",
        "lms_sync_http_requests_total",
        "lms_sync_run_duration_seconds_total",
        "lms_sync_rate_budget_wait_seconds_total",
        "lms_sync_last_run_duration_seconds",
    ] {
        assert!(
            series(name).iter().all(|l| !l.contains("account=")),
            "{name}: {metrics}"
        );
    }
    for a in &ids {
        for name in [
            "lms_sync_account_info",
            "lms_sync_last_success_timestamp_seconds",
            "lms_sync_account_live_users",
        ] {
            assert_eq!(
                series(name)
                    .iter()
                    .filter(|l| l.contains(&format!("account=\"{a}\"")))
                    .count(),
                1,
                "{name} of {a}: {metrics}"
            );
        }
    }
    assert_eq!(d.terminate().await, 0);
}

/// `server.account_metrics = "one_replica"`: of two replicas, only the holder of the reporter
/// lease exports the accounts' state (the other says it does not); killed, the other takes the
/// lease over and exports every account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_replica_reporting_only_the_lease_holder_exports_the_accounts_and_a_survivor_takes_over(
) {
    let ids: Vec<Uuid> = (1..=3).map(account_id).collect();
    let env = Env::new(&ids.iter().map(|&a| (a, 50)).collect::<Vec<_>>()).await;
    let cfg = config(&env.sim, &ids, "1h", 3);
    let vars = [
        ("TRUTO_API_TOKEN", lms_sync::devkit::simulator::DEMO_TOKEN),
        ("LMS_SYNC__SERVER__ACCOUNT_METRICS", "one_replica"),
    ];
    let reporting = "this replica exports the accounts' state metrics (server.account_metrics = \"one_replica\")";
    let mut first = spawn_env(&cfg, &env.db_url, &[], &vars);
    let at = |ev: serde_json::Value| ev["fields"]["addr"].as_str().unwrap().to_string();
    let first_ops = at(first
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await);
    first.wait_for(reporting).await;
    for _ in &ids {
        first.wait_for("sync run finished").await;
    }
    let mut second = spawn_env(&cfg, &env.db_url, &[], &vars);
    let second_ops = at(second
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await);
    let exported = |metrics: &str| -> usize {
        metrics
            .lines()
            .filter(|l| l.starts_with("lms_sync_account_info{"))
            .count()
    };
    let metrics = get_text(&format!("http://{first_ops}/metrics")).await;
    assert_eq!(exported(&metrics), 3, "{metrics}");
    assert_eq!(
        gauge(&metrics, "lms_sync_account_state_reporter"),
        Some(1.0)
    );
    let metrics = get_text(&format!("http://{second_ops}/metrics")).await;
    assert_eq!(exported(&metrics), 0, "{metrics}");
    assert!(!metrics.contains("lms_sync_account_health{"), "{metrics}");
    assert_eq!(
        gauge(&metrics, "lms_sync_account_state_reporter"),
        Some(0.0)
    );

    first.child.kill().await.unwrap();
    second.wait_for(reporting).await;
    let metrics = get_text(&format!("http://{second_ops}/metrics")).await;
    assert_eq!(exported(&metrics), 3, "{metrics}");
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.starts_with("lms_sync_account_health{") && l.ends_with(" 1.0"))
            .count(),
        3,
        "{metrics}"
    );
    assert_eq!(
        gauge(&metrics, "lms_sync_account_state_reporter"),
        Some(1.0)
    );
    assert_eq!(second.terminate().await, 0);
}
