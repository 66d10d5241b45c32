//! The change history: one row per applied change, none for unchanged users, a point-in-time
//! reconstruction that equals the mirror as it was, and retention.

use std::collections::BTreeMap;

use crate::helpers::*;
use lms_sync::domain::Outcome;
use lms_sync::sync::PassStatus;
use serde_json::{json, Value};
use uuid::Uuid;

/// The mirror's state of every user of the account now, and the server's clock right after.
async fn checkpoint(
    env: &Env,
    account: Uuid,
) -> (chrono::DateTime<chrono::Utc>, BTreeMap<String, Value>) {
    let rows: Vec<(String, Value)> = sqlx::query_as(
        "SELECT user_id, state FROM user_snapshots WHERE integrated_account_id = $1",
    )
    .bind(account)
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    let at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    (at, rows.into_iter().collect())
}

async fn users_at(
    env: &Env,
    account: Uuid,
    at: chrono::DateTime<chrono::Utc>,
) -> BTreeMap<String, Value> {
    let rows: Vec<(String, Value)> = sqlx::query_as("SELECT user_id, state FROM users_at($1, $2)")
        .bind(account)
        .bind(at)
        .fetch_all(env.store.pool())
        .await
        .unwrap();
    rows.into_iter().collect()
}

async fn sync_ok(env: &Env, account: Uuid) {
    let o = env.sync(account).await;
    assert_eq!(
        o.status,
        PassStatus::Finished(Outcome::Succeeded),
        "{:?}",
        o.error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_recorded_once_and_any_past_state_can_be_reconstructed() {
    let a = account_id(1);
    let env = Env::new(&[(a, 250)]).await;
    let mut checkpoints = vec![checkpoint(&env, a).await];

    // 1. First sync: one insert row per user, nothing else.
    sync_ok(&env, a).await;
    checkpoints.push(checkpoint(&env, a).await);
    assert_eq!(kinds(&env).await, BTreeMap::from([("insert".into(), 250)]));
    let null_fields = env
        .scalar_i64("SELECT count(*) FROM user_changes WHERE changed_fields IS NOT NULL")
        .await;
    assert_eq!(null_fields, 0, "inserts carry no field list");

    // 2. Nothing changed upstream: nothing recorded.
    sync_ok(&env, a).await;
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM user_changes").await,
        250
    );

    // 3. Field, child-table and manager changes, a deletion and a new user.
    env.sim.update_user(
        a,
        "5",
        json!({"status": "inactive", "job_title": "Retired"}),
    );
    env.sim.update_user(
        a,
        "6",
        json!({"emails": [{"email": "six@new.example", "is_primary": true, "type": "work"}]}),
    );
    env.sim.update_user(
        a,
        "7",
        json!({"manager": {"id": "9", "name": "Nine", "emails": ["nine@acme.example"]}}),
    );
    env.sim.delete_user(a, "8");
    env.sim.add_users(a, 1);
    sync_ok(&env, a).await;
    checkpoints.push(checkpoint(&env, a).await);
    // Updates are exactly the users whose mirrored state changed (adding a user also gives an
    // older one a manager in the simulator's data, so this is not just 5, 6 and 7).
    let (before, after) = (&checkpoints[1].1, &checkpoints[2].1);
    let changed: Vec<String> = after
        .iter()
        .filter(|(id, state)| before.get(*id).is_some_and(|b| b != *state) && *id != "8")
        .map(|(id, _)| id.clone())
        .collect();
    let updated: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM user_changes WHERE kind = 'update' ORDER BY user_id",
    )
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    assert_eq!(updated, changed);
    for id in ["5", "6", "7"] {
        assert!(updated.iter().any(|u| u == id), "{id} in {updated:?}");
    }
    assert_eq!(
        kinds(&env).await,
        BTreeMap::from([
            ("insert".into(), 251),
            ("update".into(), changed.len() as i64),
            ("delete".into(), 1)
        ])
    );
    let five: Value = sqlx::query_scalar(
        "SELECT changed_fields FROM user_changes WHERE user_id = '5' AND kind = 'update'",
    )
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    let fields: Vec<&String> = five.as_object().unwrap().keys().collect();
    assert_eq!(fields, ["job_title", "status"], "only what changed: {five}");
    assert_eq!(five["status"]["new"], "inactive");
    assert_eq!(five["job_title"]["new"], "Retired");
    assert_ne!(five["status"]["old"], "inactive");
    let six: Value = sqlx::query_scalar(
        "SELECT changed_fields FROM user_changes WHERE user_id = '6' AND kind = 'update'",
    )
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert_eq!(
        six.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["emails"]
    );
    assert_eq!(six["emails"]["new"][0]["email"], "six@new.example");
    let seven: Value = sqlx::query_scalar(
        "SELECT changed_fields FROM user_changes WHERE user_id = '7' AND kind = 'update'",
    )
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert_eq!(seven["manager"]["new"]["id"], "9");
    let eight: Value = sqlx::query_scalar(
        "SELECT changed_fields FROM user_changes WHERE user_id = '8' AND kind = 'delete'",
    )
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert!(eight["deleted_at"]["old"].is_null());
    assert!(eight["deleted_at"]["new"].is_string());

    // 4. The deleted user comes back unchanged, another comes back changed.
    env.sim.delete_user(a, "10");
    sync_ok(&env, a).await;
    checkpoints.push(checkpoint(&env, a).await);
    env.sim.restore_user(a, "8");
    env.sim.restore_user(a, "10");
    env.sim.update_user(a, "10", json!({"status": "suspended"}));
    sync_ok(&env, a).await;
    checkpoints.push(checkpoint(&env, a).await);
    let undeletes: Vec<(String, Value)> = sqlx::query_as(
        "SELECT user_id, changed_fields FROM user_changes WHERE kind = 'undelete' ORDER BY user_id",
    )
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    assert_eq!(undeletes.len(), 2, "{undeletes:?}");
    assert_eq!(undeletes[0].0, "10");
    assert!(undeletes[0].1["deleted_at"]["new"].is_null());
    assert_eq!(undeletes[0].1["status"]["new"], "suspended");
    assert_eq!(undeletes[1].0, "8");
    assert_eq!(
        undeletes[1]
            .1
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        ["deleted_at"]
    );
    assert_mirror(&env.store, &env.sim, a).await;

    // Every checkpoint is reconstructed exactly, for all users and for each one.
    for (i, (at, expected)) in checkpoints.iter().enumerate() {
        let got = users_at(&env, a, *at).await;
        assert_eq!(&got, expected, "users_at differs at checkpoint {i}");
        for id in ["5", "6", "7", "8", "10", "251"] {
            let one: Option<Value> = sqlx::query_scalar("SELECT user_state_at($1, $2, $3)")
                .bind(a)
                .bind(id)
                .bind(*at)
                .fetch_one(env.store.pool())
                .await
                .unwrap();
            assert_eq!(
                one.as_ref(),
                expected.get(id),
                "user {id} at checkpoint {i}"
            );
        }
    }
    assert!(checkpoints[0].1.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_can_be_turned_off_and_old_history_is_pruned() {
    let (a, b) = (account_id(1), account_id(2));
    let mut env = Env::new(&[(a, 120), (b, 50)]).await;
    sync_ok(&env, a).await;
    sync_ok(&env, b).await;
    // Age most of a's history and some of b's past a 30-day retention.
    sqlx::query(
        "UPDATE user_changes SET changed_at = changed_at - interval '31 days'
          WHERE (integrated_account_id = $1 AND user_id::int > 20)
             OR (integrated_account_id = $2 AND user_id::int > 40)",
    )
    .bind(a)
    .bind(b)
    .execute(env.store.pool())
    .await
    .unwrap();
    let aged: i64 = sqlx::query_scalar(
        "SELECT max(xact_id) FROM user_changes
          WHERE integrated_account_id = $1 AND user_id::int > 20",
    )
    .bind(a)
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    env.settings.history.retention_days = 30;
    env.sim.update_user(a, "3", json!({"job_title": "Dean"}));
    sync_ok(&env, a).await;
    // What retention deleted is noted, for loaders of the feed: up to the aged rows' position.
    let pruned: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT integrated_account_id, pruned_through FROM history_pruned")
            .fetch_all(env.store.pool())
            .await
            .unwrap();
    assert_eq!(pruned, vec![(a, aged)]);
    let left: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT integrated_account_id, count(*) FROM user_changes GROUP BY 1 ORDER BY 2",
    )
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    // a: 20 recent inserts + the update; b is pruned after its own runs only.
    assert_eq!(left, vec![(a, 21), (b, 50)]);

    env.settings.history.enabled = false;
    env.sim.update_user(a, "4", json!({"job_title": "Provost"}));
    env.sim.delete_user(a, "5");
    env.sim.add_users(a, 2);
    sync_ok(&env, a).await;
    let a_rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM user_changes WHERE integrated_account_id = $1")
            .bind(a)
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!(
        a_rows, 21,
        "with history off, changes are applied but not recorded"
    );
    assert_mirror(&env.store, &env.sim, a).await;
}
