//! Full-object hydration: the simulator lists partial users (as TalentLMS does) and serves the
//! full object on `GET /unified/lms/users/{id}`; hydrating accounts end with the full objects.

use std::sync::Arc;
use std::time::Duration;

use crate::helpers::*;
use lms_sync::devkit::simulator::{Fault, RateLimit};
use lms_sync::domain::Outcome;
use lms_sync::source::budget::{Limit, RateBudget};
use lms_sync::sync::{sync_account, NoProgress, PassStatus, SyncOptions, SyncOutcome};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What TalentLMS's list leaves out, in this test (including the unknown `hire_date`).
const UNLISTED: &[&str] = &[
    "job_title",
    "phones",
    "manager",
    "custom_fields",
    "hire_date",
];

async fn hydrating_env(users: usize, max_per_run: Option<u32>) -> (Env, Uuid) {
    let a = account_id(1);
    let mut env = Env::new(&[(a, users)]).await;
    env.sim.set_partial_list_fields(a, UNLISTED);
    env.settings.accounts[0].hydrate = true;
    env.settings.accounts[0].hydrate_max_per_run = max_per_run;
    (env, a)
}

fn assert_succeeded(o: &SyncOutcome) {
    assert_eq!(
        o.status,
        PassStatus::Finished(Outcome::Succeeded),
        "{:?}",
        o.error
    );
}

async fn queued(env: &Env) -> i64 {
    env.scalar_i64("SELECT count(*) FROM hydration_queue").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hydration_fills_in_what_the_list_leaves_out_within_the_shared_budget() {
    let (env, a) = hydrating_env(120, None).await;
    env.sim.set_rate_limit(Some(RateLimit {
        per_account: 60,
        per_token: 100,
        window: Duration::from_secs(1),
    }));
    let limit = |n| Limit {
        requests: n,
        window: Duration::from_secs(1),
    };
    let client = env
        .client()
        .with_budget(Arc::new(RateBudget::new(limit(60), limit(100))));
    let opts = SyncOptions::from_settings(&env.settings);
    let account = env.account(a);
    let never = CancellationToken::new();
    let sync = || sync_account(&env.store, &client, &account, &opts, &never, &NoProgress);

    let o = sync().await;
    assert_succeeded(&o);
    assert_eq!((o.counts.inserted, o.counts.hydrated), (120, 120));
    let stats = env.sim.stats();
    assert_eq!(stats.user_gets, 120);
    assert_eq!(stats.rate_limited, 0, "listing and GETs share one budget");
    assert!(stats.max_account_window <= 60);
    assert_mirror(&env.store, &env.sim, a).await;
    assert_eq!(queued(&env).await, 0);
    let k = kinds(&env).await;
    assert_eq!(k.get("insert"), Some(&120));
    assert!(k.get("hydrate").is_some_and(|n| *n > 100), "{k:?}");
    assert_eq!(k.len(), 2, "filling in is not an update: {k:?}");
    let (runs_hydrated, runs_requests): (i64, i64) =
        sqlx::query_as("SELECT hydrated, http_requests FROM sync_runs")
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!((runs_hydrated, runs_requests), (120, 122));

    // Nothing changed: no GET, no write.
    let versions = row_versions(&env.store).await;
    let o = sync().await;
    assert_succeeded(&o);
    assert_eq!(o.counts.hydrated, 0);
    assert_eq!(env.sim.stats().user_gets, 120);
    assert_eq!(row_versions(&env.store).await, versions);

    // A listed change re-hydrates that user only; the history tells both changes apart.
    env.sim.update_user(
        a,
        "5",
        json!({"status": "suspended", "job_title": "Registrar"}),
    );
    let o = sync().await;
    assert_succeeded(&o);
    assert_eq!((o.counts.updated, o.counts.hydrated), (1, 1));
    assert_eq!(env.sim.stats().user_gets, 121);
    assert_mirror(&env.store, &env.sim, a).await;
    let fields: Vec<String> = sqlx::query_scalar(
        "SELECT (SELECT string_agg(k, ',' ORDER BY k) FROM jsonb_object_keys(changed_fields) k)
           FROM user_changes WHERE user_id = '5' AND kind = 'update' ORDER BY change_id",
    )
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    assert_eq!(fields, ["status", "job_title"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_gets_wait_their_turn_the_allowance_carries_over_and_partial_rows_keep_their_full_fields(
) {
    let (env, a) = hydrating_env(250, Some(100)).await;
    // User 1's GETs fail until cleared.
    env.sim.set_user_get_fault(a, "1", Some(Fault::status(500)));

    // Each run spends its allowance of 100 GETs; the rest of the queue waits for the next.
    let o = env.sync(a).await;
    assert_succeeded(&o);
    assert_eq!(o.counts.hydrated + o.counts.hydration_failures, 100);
    assert_eq!(queued(&env).await, 250 - o.counts.hydrated as i64);
    let mut hydrated = o.counts.hydrated;
    let mut failures = o.counts.hydration_failures;
    for _ in 0..2 {
        let o = env.sync(a).await;
        assert_succeeded(&o);
        hydrated += o.counts.hydrated;
        failures += o.counts.hydration_failures;
    }
    // Everyone but the failing user; its one failure never held up the others, and its retry
    // is not due yet (a minute later).
    assert_eq!((hydrated, failures), (249, 1));
    let left: Vec<(String, i32, String)> =
        sqlx::query_as("SELECT user_id, attempts, last_error FROM hydration_queue")
            .fetch_all(env.store.pool())
            .await
            .unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!((left[0].0.as_str(), left[0].1), ("1", 1));
    assert!(left[0].2.contains("500"), "{left:?}");
    // Every request is accounted for, the retries of the GET that failed for good included.
    let (requests, retries): (i64, i64) =
        sqlx::query_as("SELECT sum(http_requests)::bigint, sum(retries)::bigint FROM sync_runs")
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    let stats = env.sim.stats();
    assert_eq!(requests as u64, stats.requests);
    assert!(retries >= 1, "the failing GET was retried: {retries}");

    // The vendor recovers and the retry comes due: the mirror is complete.
    env.sim.set_user_get_fault(a, "1", None);
    sqlx::query("UPDATE hydration_queue SET next_attempt_at = now()")
        .execute(env.store.pool())
        .await
        .unwrap();
    let o = env.sync(a).await;
    assert_eq!(o.counts.hydrated, 1);
    assert_eq!(queued(&env).await, 0);
    assert_mirror(&env.store, &env.sim, a).await;

    // A listed change whose GET fails: the listed fields are written, the fields only the
    // full object has keep their values (no false NULLs), and the user stays queued.
    let id: String = sqlx::query_scalar(
        "SELECT u.id FROM users u
          WHERE u.job_title IS NOT NULL AND u.id NOT IN ('1', '4')
            AND EXISTS (SELECT 1 FROM user_phones p WHERE p.user_id = u.id)
          ORDER BY u.id LIMIT 1",
    )
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    let unlisted = "SELECT status, job_title, (SELECT count(*) FROM user_phones WHERE user_id = $1)
                      FROM users WHERE id = $1";
    let before: (String, Option<String>, i64) = sqlx::query_as(unlisted)
        .bind(&id)
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    env.sim
        .update_user(a, &id, json!({"status": "on_leave", "job_title": "Bursar"}));
    env.sim.set_user_get_fault(a, &id, Some(Fault::status(502)));
    let o = env.sync(a).await;
    assert_succeeded(&o);
    assert_eq!((o.counts.updated, o.counts.hydration_failures), (1, 1));
    let after: (String, Option<String>, i64) = sqlx::query_as(unlisted)
        .bind(&id)
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert_eq!(
        after,
        ("on_leave".to_string(), before.1.clone(), before.2),
        "was {before:?}"
    );
    env.sim.set_user_get_fault(a, &id, None);
    sqlx::query("UPDATE hydration_queue SET next_attempt_at = now()")
        .execute(env.store.pool())
        .await
        .unwrap();
    env.sync(a).await;
    assert_mirror(&env.store, &env.sim, a).await;

    // A user whose GET says 404 leaves the queue (the next listing decides about deletion).
    env.sim.update_user(a, "4", json!({"status": "invited"}));
    env.sim.set_user_get_fault(a, "4", Some(Fault::status(404)));
    let o = env.sync(a).await;
    assert_succeeded(&o);
    assert_eq!(queued(&env).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_without_hydration_never_get_and_mirror_the_list_exactly() {
    let a = account_id(1);
    let env = Env::new(&[(a, 90)]).await;
    let o = env.sync(a).await;
    assert_succeeded(&o);
    assert_eq!(env.sim.stats().user_gets, 0);
    assert_eq!(queued(&env).await, 0);
    // A field that disappears from the list becomes NULL: the list is the whole truth here.
    env.sim.remove_field(a, "2", "job_title");
    env.sync(a).await;
    assert_mirror(&env.store, &env.sim, a).await;
}
