//! The one Truto environment a mirror follows: a listing of another's integrated accounts
//! (a staging token in production's place) changes nothing until an operator adopts it, and a
//! token of another environment holds every replica's runs until the right one is back or the
//! mirror adopts that environment.

use crate::helpers::fleet::*;
use crate::helpers::*;
use lms_sync::devkit::simulator::{Integrated, DEMO_TOKEN};
use uuid::Uuid;

/// A token of another Truto environment (a staging token put in production's place) lists
/// that environment's accounts: the listing changes nothing and fails, saying so (`check`
/// too), until an operator moves the mirror on with `--adopt-environment`. A listing that
/// mixes environments is refused as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_of_another_environment_changes_nothing_until_adopted() {
    let ours: Vec<Uuid> = (1..=3).map(account_id).collect();
    let env = fleet_env(&ours.iter().map(|a| (*a, 5)).collect::<Vec<_>>()).await;
    let err = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    let out = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let o = cli(&env, &["accounts", "discover"]).await;
    assert!(o.status.success(), "{}", err(&o));
    let follows = "SELECT coalesce(environment_id, '-') FROM discovery_state";
    let pool = env.store.pool();
    let text = |sql: &'static str| async move {
        sqlx::query_scalar::<_, String>(sql)
            .fetch_one(pool)
            .await
            .unwrap()
    };
    assert_eq!(text(follows).await, "env-1");
    let o = cli(&env, &["status"]).await;
    assert!(
        out(&o)
            .contains("\ntruto environment: env-1 (the mirror follows its integrated accounts)\n"),
        "{}",
        out(&o)
    );

    // The token is now one of env-2: Truto lists its accounts, and none of ours.
    let theirs: Vec<Uuid> = (11..=12).map(account_id).collect();
    for a in &ours {
        env.sim.remove_integrated(*a);
    }
    for (i, a) in theirs.iter().enumerate() {
        env.sim.set_integrated(
            *a,
            Integrated {
                environment_id: "env-2".into(),
                ..Integrated::active(&format!("staging-{i}"))
            },
        );
    }
    let refused = "Truto lists the integrated accounts of environment env-2, but this mirror \
                   follows environment env-1: is the API token one of another environment";
    let o = cli(&env, &["check"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        out(&o).contains(&format!("talentlms: {refused}")),
        "{}",
        out(&o)
    );
    let o = cli(&env, &["accounts", "discover", "--retire-missing"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        err(&o).contains(refused) && err(&o).contains("the registry is left as it was"),
        "{}",
        err(&o)
    );
    let registry = "SELECT count(*) FROM accounts WHERE retired_at IS NULL";
    assert_eq!(env.scalar_i64(registry).await, 3);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM accounts WHERE retired_at IS NOT NULL")
            .await,
        0
    );
    assert_eq!(text(follows).await, "env-1");
    assert!(text("SELECT error FROM discovery_state")
        .await
        .contains(refused));
    assert_eq!(
        env.scalar_i64("SELECT failures::int8 FROM discovery_state")
            .await,
        1
    );

    // On purpose: a dry run says so and changes nothing; then the mirror follows env-2.
    let adopt = [
        "accounts",
        "discover",
        "--adopt-environment",
        "--retire-missing",
    ];
    let o = cli(&env, &[&adopt[..], &["--dry-run"]].concat()).await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).contains(
            "the mirror would follow Truto environment env-2 from now on (it followed env-1)"
        ) && out(&o).contains("would be added: 2, would be retired: 3,"),
        "{}",
        out(&o)
    );
    assert_eq!(text(follows).await, "env-1");
    assert_eq!(env.scalar_i64(registry).await, 3);
    let o = cli(&env, &adopt).await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o)
            .contains("the mirror follows Truto environment env-2 from now on (it followed env-1)"),
        "{}",
        out(&o)
    );
    assert_eq!(text(follows).await, "env-2");
    let live: Vec<Uuid> = sqlx::query_scalar(
        "SELECT integrated_account_id FROM accounts WHERE retired_at IS NULL
          ORDER BY integrated_account_id",
    )
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    assert_eq!(live, theirs);
    let o = cli(&env, &["check"]).await;
    assert!(
        out(&o).contains("Truto lists 2 accounts of talentlms (2 active) in environment env-2"),
        "{}",
        out(&o)
    );

    // One listing, two environments: not a listing to trust.
    env.sim.set_integrated(
        account_id(13),
        Integrated {
            environment_id: "env-3".into(),
            ..Integrated::active("other")
        },
    );
    let o = cli(&env, &["accounts", "discover", "--adopt-environment"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    assert!(
        err(&o).contains("the listing shows the accounts of 2 Truto environments (env-2, env-3)"),
        "{}",
        err(&o)
    );
    assert_eq!(env.scalar_i64(registry).await, 2);
    assert_eq!(text(follows).await, "env-2");
}

/// A service of one account (`a`, synced) whose API token file, and Truto's, now hold a
/// token of env-2 (which lists `staging`), held after a one-off `sync` with that token was
/// refused its listing: what the two tests below start from.
struct HeldByStagingToken {
    env: Env,
    a: Uuid,
    service: crate::helpers::daemon::Daemon,
    /// The service's configuration file, kept while it runs (bind it: `..` drops it).
    _cfg: TempFile,
    token: TempFile,
    ops: String,
    staging: Uuid,
}

const TOKEN_REPLACED: &str = "the API token was replaced: listing the integrated accounts at \
                              once if the last listing failed, else when the next is due";

async fn held_by_a_staging_token() -> HeldByStagingToken {
    use crate::helpers::daemon::spawn_env;
    let a = account_id(1);
    let env = fleet_env(&[(a, 7)]).await;
    let cfg = discovery_config(&env, &[], "interval = \"1h\"\nretry_initial = \"1h\"\n");
    let token = TempFile::new("lms-sync-token", "", format!("{DEMO_TOKEN}\n"));
    let mut service = spawn_env(
        &cfg,
        &env.db_url,
        &[],
        &[
            ("LMS_SYNC__TRUTO__API_TOKEN_FILE", token.to_str().unwrap()),
            ("LMS_SYNC__SERVER__SECRET_FILES_CHECK_SECS", "0"),
        ],
    );
    let listening = service
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await;
    let ops = listening["fields"]["addr"].as_str().unwrap().to_string();
    let ev = service.wait_for("discovery finished").await;
    assert_eq!(ev["fields"]["added"], 1, "{ev}");
    let ev = service.wait_for("sync run finished").await;
    assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");

    // The token is now one of env-2: Truto lists that environment's account, and would answer
    // 404 for ours.
    let staging = account_id(11);
    env.sim.set_token("tok-staging");
    env.sim.remove_integrated(a);
    env.sim.set_integrated(
        staging,
        Integrated {
            environment_id: "env-2".into(),
            ..Integrated::active("staging")
        },
    );
    std::fs::write(&token, "tok-staging\n").unwrap();
    service.hangup().await;
    // (The last listing succeeded: none now.)
    service
        .wait_for_each(&[
            "Truto API token reloaded; the next requests use it",
            TOKEN_REPLACED,
        ])
        .await;
    let o = cli_with(&env, &[("TRUTO_API_TOKEN", "tok-staging")], &["sync"]).await;
    assert_eq!(o.status.code(), Some(1));
    let said = said(&o);
    assert!(
        said.contains(
            "discovery: Truto lists the integrated accounts of environment env-2, but this \
             mirror follows environment env-1"
        ),
        "{said}"
    );
    let held = "the API token lists the integrated accounts of another Truto environment than \
                the one this mirror follows: no new run starts until a listing with it shows the \
                followed environment's (put that environment's token in TRUTO_API_TOKEN or \
                truto.api_token_file); it is checked again in 10 s, then less and less often";
    let ev = service.wait_for(held).await;
    assert_eq!(
        (&ev["fields"]["listed"], &ev["fields"]["follows"]),
        (&"env-2".into(), &"env-1".into()),
        "{ev}"
    );
    HeldByStagingToken {
        env,
        a,
        service,
        _cfg: cfg,
        token,
        ops,
        staging,
    }
}

/// A token of another Truto environment for a while (a staging token put in production's
/// place, in the service's file and in a one-off `sync`'s environment): the one-off's listing
/// is refused and it syncs nothing; the service, which did not list (each of its runs would
/// answer 404 and mark the account `not_found`), reads the refusal from the database, checks its own token with
/// one request, and holds its runs too, sync-now included, saying so in its log, its gauge and
/// its status page. Once the right token is back (its file rewritten), the hold ends at once,
/// the replica lists at once (the last listing failed) and syncs the account: not after
/// `discovery.retry_initial` (an hour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_of_another_environment_holds_the_runs_until_the_right_one_is_back() {
    let HeldByStagingToken {
        env,
        a,
        mut service,
        _cfg: _kept,
        token,
        ops,
        staging,
    } = held_by_a_staging_token().await;
    let o = cli(&env, &["accounts", "sync-now", &a.to_string()]).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The first check, 10 s later: the sync-now request stood through five rounds meanwhile.
    let ev = service
        .wait_for(
            "the API token still lists another Truto environment's integrated accounts; no run \
             starts",
        )
        .await;
    assert_eq!(ev["fields"]["next_check_in_secs"], 20, "{ev}");
    assert_eq!(env.scalar_i64("SELECT count(*) FROM sync_runs").await, 1);
    let health = "SELECT count(*) FROM sync_state WHERE health <> 'ok'";
    assert_eq!(env.scalar_i64(health).await, 0);
    let metrics = get_text(&format!("http://{ops}/metrics")).await;
    assert_eq!(
        gauge(&metrics, "lms_sync_api_token_other_environment"),
        Some(1.0)
    );
    let page = get_text(&format!("http://{ops}/")).await;
    assert!(
        page.contains("<span class=\"pill bad\">API token of another environment</span>"),
        "{page}"
    );

    // The right token is back.
    env.sim.set_token(DEMO_TOKEN);
    env.sim.remove_integrated(staging);
    env.sim.set_integrated(a, Integrated::active("tenant-0"));
    env.sim.unblock(a);
    std::fs::write(&token, format!("{DEMO_TOKEN}\n")).unwrap();
    service.hangup().await;
    let ev = service.wait_for(TOKEN_REPLACED).await;
    let at = logged_at(&ev);
    service
        .wait_for(
            "the API token lists the integrated accounts of the environment this mirror \
             follows; runs start again",
        )
        .await;
    // The listing and the run the sync-now request stood for start together, once the hold
    // ends: either may end first.
    let [listed, ran] = <[_; 2]>::try_from(
        service
            .wait_for_each(&["discovery finished", "sync run finished"])
            .await,
    )
    .unwrap();
    let waited = (logged_at(&listed) - at).num_seconds();
    assert!(waited < 10, "{waited} s");
    assert_eq!(ran["fields"]["outcome"], "succeeded", "{ran}");
    assert_eq!(env.scalar_i64(health).await, 0);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM discovery_state WHERE other_environment_id IS NULL")
            .await,
        1
    );
    let metrics = get_text(&format!("http://{ops}/metrics")).await;
    assert_eq!(
        gauge(&metrics, "lms_sync_api_token_other_environment"),
        Some(0.0)
    );
    assert_mirror(&env.store, &env.sim, a).await;
    service.terminate().await;
}

/// Held by a token of another environment that is meant (the mirror is to follow env-2 from
/// now on): once an operator adopts env-2 (`accounts discover --adopt-environment`, from
/// another host), the service checks its token against the environment now followed, its
/// hold ends, and it syncs the account of env-2: no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_held_for_another_environment_runs_once_that_environment_is_adopted() {
    let HeldByStagingToken {
        env,
        mut service,
        _cfg: _kept,
        staging,
        ..
    } = held_by_a_staging_token().await;
    env.sim.add_account(staging, 4, 11);
    let adopt = [
        "accounts",
        "discover",
        "--adopt-environment",
        "--retire-missing",
    ];
    let o = cli_with(&env, &[("TRUTO_API_TOKEN", "tok-staging")], &adopt).await;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let ev = service
        .wait_for(
            "the API token lists the integrated accounts of the environment this mirror \
             follows; runs start again",
        )
        .await;
    assert_eq!(ev["fields"]["follows"], "env-2", "{ev}");
    let ev = service.wait_for("sync run finished").await;
    assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
    assert_eq!(ev["span"]["account"], staging.to_string(), "{ev}");
    assert_mirror(&env.store, &env.sim, staging).await;
    service.terminate().await;
}
