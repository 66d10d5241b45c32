//! End-to-end passes against the simulator and a real PostgreSQL: the mirror is exact, re-syncs
//! write nothing, faults are retried or fail cleanly, and nothing mirrored is ever lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::helpers::*;
use lms_sync::config::AccountSettings;
use lms_sync::devkit::simulator::Fault;
use lms_sync::domain::{ErrorKind, Outcome, RunCounts};
use lms_sync::store::{Acting, Steer};
use lms_sync::sync::{PassStatus, Progress};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn finished(o: &lms_sync::sync::SyncOutcome) -> Outcome {
    match o.status {
        PassStatus::Finished(x) => x,
        other => panic!("pass did not finish: {other:?} {:?}", o.error),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_field_of_every_user_lands_across_accounts_and_pages() {
    let (a, b) = (account_id(1), account_id(2));
    let env = Env::new(&[(a, 450), (b, 230)]).await;

    let oa = env.sync(a).await;
    let ob = env.sync(b).await;

    assert_eq!(finished(&oa), Outcome::Succeeded, "{:?}", oa.error);
    assert_eq!(finished(&ob), Outcome::Succeeded, "{:?}", ob.error);
    assert_eq!(oa.counts.pages, 5);
    assert_eq!(oa.counts.users_seen, 450);
    assert_eq!(oa.counts.inserted, 450);
    assert_eq!(ob.counts.inserted, 230);
    assert_mirror(&env.store, &env.sim, a).await;
    assert_mirror(&env.store, &env.sim, b).await;
    // The same remote id in two accounts is two users.
    let both = env
        .scalar_i64("SELECT count(*) FROM users WHERE id = '1'")
        .await;
    assert_eq!(both, 2);
    // The run is recorded.
    let runs = env
        .scalar_i64("SELECT count(*) FROM sync_runs WHERE outcome = 'succeeded' AND complete_listing AND users_seen > 0")
        .await;
    assert_eq!(runs, 2);
    let state: (String, Option<String>, i32) = sqlx::query_as(
        "SELECT status, cursor, consecutive_failures FROM sync_state WHERE integrated_account_id = $1",
    )
    .bind(a)
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert_eq!(state, ("succeeded".to_string(), None, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_of_unchanged_account_writes_no_rows() {
    let a = account_id(1);
    let env = Env::new(&[(a, 320)]).await;
    assert!(env.sync(a).await.succeeded());
    let before = row_versions(&env.store).await;

    let again = env.sync(a).await;

    assert!(again.succeeded(), "{:?}", again.error);
    assert_eq!(again.counts.unchanged, 320);
    assert_eq!(
        again.counts.inserted + again.counts.updated + again.counts.deleted,
        0
    );
    assert_eq!(
        row_versions(&env.store).await,
        before,
        "an unchanged re-sync wrote or locked rows"
    );
    assert_mirror(&env.store, &env.sim, a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_changes_without_content_changing_writes_nothing_and_old_rows_get_their_text_hash_once(
) {
    let a = account_id(1);
    let env = Env::new(&[(a, 220)]).await;
    assert!(env.sync(a).await.succeeded());
    // The same user, serialized differently (key order, spacing): new text, same content.
    let five = env.sim.expected_user(a, "5").unwrap();
    let mut keys: Vec<(&String, &serde_json::Value)> = five.as_object().unwrap().iter().collect();
    keys.reverse();
    let respelled = format!(
        "{{ {} }}",
        keys.iter()
            .map(|(k, v)| format!("{:?} : {}", k, v))
            .collect::<Vec<_>>()
            .join(" ,\n ")
    );
    env.sim.set_raw_record(a, "5", &respelled);
    let before = row_versions(&env.store).await;
    let o = env.sync(a).await;
    assert!(o.succeeded(), "{:?}", o.error);
    assert_eq!((o.counts.unchanged, o.counts.updated), (220, 0));
    assert_eq!(
        row_versions(&env.store).await,
        before,
        "no write for new text"
    );

    // Rows mirrored before text hashes existed (an upgrade) get theirs at the next unchanged
    // sync, once; after that, nothing is written again.
    sqlx::query("UPDATE users SET listed_hash = NULL WHERE id::int % 2 = 0")
        .execute(env.store.pool())
        .await
        .unwrap();
    let o = env.sync(a).await;
    assert_eq!((o.counts.unchanged, o.counts.updated), (220, 0));
    let missing = env
        .scalar_i64("SELECT count(*) FROM users WHERE listed_hash IS NULL")
        .await;
    assert_eq!(missing, 0);
    let before = row_versions(&env.store).await;
    let o = env.sync(a).await;
    assert_eq!(o.counts.unchanged, 220);
    assert_eq!(row_versions(&env.store).await, before);
    assert_mirror(&env.store, &env.sim, a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_deletions_and_reappearance_are_mirrored_exactly() {
    let a = account_id(1);
    let env = Env::new(&[(a, 300)]).await;
    assert!(env.sync(a).await.succeeded());
    let untouched = user_row_versions(&env.store, a, "40").await;
    let only_name = user_row_versions(&env.store, a, "41").await;

    env.sim
        .update_user(a, "41", json!({"name": "Renamed Person"}));
    env.sim.update_user(
        a,
        "42",
        json!({"emails": [{"email": "new@x.example", "is_primary": true, "type": "work"}], "phones": [], "manager": null, "status": "suspended"}),
    );
    env.sim.update_user(a, "43", json!({"manager": {"id": "999", "name": "New Boss", "emails": []}, "custom_fields": {"k": [1, 2, {"deep": true}]}}));
    env.sim.remove_field(a, "44", "organization");
    env.sim.delete_user(a, "50");
    env.sim.delete_user(a, "51");
    let added = env.sim.add_users(a, 3);
    let o = env.sync(a).await;

    assert!(o.succeeded(), "{:?}", o.error);
    assert_eq!(o.counts.inserted, 3);
    assert_eq!(o.counts.deleted, 2);
    assert!(o.counts.updated >= 4, "{:?}", o.counts);
    assert_mirror(&env.store, &env.sim, a).await;
    assert_eq!(
        user_row_versions(&env.store, a, "40").await,
        untouched,
        "an unchanged user was rewritten"
    );
    // Only the users row of 41 changed: its emails, phones and manager rows were not rewritten.
    let after = user_row_versions(&env.store, a, "41").await;
    assert_ne!(after[0], only_name[0]);
    assert_eq!(
        after[1..],
        only_name[1..],
        "unchanged children of a changed user were rewritten"
    );
    // Deleted users keep their rows, marked.
    let kept = env
        .scalar_i64(&format!("SELECT count(*) FROM users WHERE integrated_account_id = '{a}' AND id IN ('50','51') AND deleted_at IS NOT NULL"))
        .await;
    assert_eq!(kept, 2);
    let emails_kept = env
        .scalar_i64(&format!("SELECT count(*) FROM user_emails WHERE integrated_account_id = '{a}' AND user_id = '50'"))
        .await;
    assert!(emails_kept > 0 || env.sim.expected_user(a, "50").is_none());
    assert!(added
        .iter()
        .all(|id| env.sim.expected_user(a, id).is_some()));

    env.sim.restore_user(a, "50");
    let back = env.sync(a).await;

    assert!(back.succeeded());
    assert_eq!(back.counts.undeleted, 1);
    assert_mirror(&env.store, &env.sim, a).await;
}

/// A page far larger than asked for (a server that ignores `limit`) is decoded and written a
/// part at a time, a batch's worth of users each, not all at once: its memory stays bounded
/// like any page's (50 MB of three million tiny records took 3.7 GiB decoded whole). The run
/// counts it as one page and mirrors every user; the same page again writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_far_larger_than_asked_for_is_written_a_part_at_a_time() {
    let a = account_id(1);
    let env = Env::new(&[(a, 0)]).await;
    let records: Vec<String> = (1..=2_500)
        .map(|i| {
            format!(r#"{{"id":"{i}","name":"User {i}","emails":[{{"email":"u{i}@x.example"}}]}}"#)
        })
        .collect();
    let page = format!(r#"{{"result":[{}],"next_cursor":null}}"#, records.join(","));
    env.sim.push_fault(Some(a), Fault::Body(page.clone()));
    let o = env.sync(a).await;
    assert!(o.succeeded(), "{:?}", o.error);
    assert_eq!(
        (o.counts.pages, o.counts.inserted),
        (1, 2_500),
        "{:?}",
        o.counts
    );
    let users = format!("FROM users WHERE integrated_account_id = '{a}'");
    assert_eq!(
        env.scalar_i64(&format!("SELECT count(*) {users}")).await,
        2_500
    );
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM user_emails WHERE integrated_account_id = '{a}'"
        ))
        .await,
        2_500
    );
    // Three transactions (1,000, 1,000 and 500 users), not one of 2,500.
    assert_eq!(
        env.scalar_i64(&format!("SELECT count(DISTINCT xmin::text) {users}"))
            .await,
        3
    );
    let pages = env
        .scalar_i64(&format!(
            "SELECT pages FROM sync_state WHERE integrated_account_id = '{a}'"
        ))
        .await;
    assert_eq!((pages, stored_cursor(&env.store, a).await), (1, None));

    let before = row_versions(&env.store).await;
    env.sim.push_fault(Some(a), Fault::Body(page));
    let again = env.sync(a).await;
    assert!(again.succeeded(), "{:?}", again.error);
    assert_eq!(
        (
            again.counts.pages,
            again.counts.unchanged,
            again.counts.deleted
        ),
        (1, 2_500, 0),
        "{:?}",
        again.counts
    );
    assert_eq!(row_versions(&env.store).await, before, "nothing rewritten");
}

/// A last page of `n` users, with ids `{prefix}1` to `{prefix}n` and nothing else.
fn last_page_of(n: usize, prefix: &str) -> String {
    let records: Vec<String> = (1..=n)
        .map(|i| format!(r#"{{"id":"{prefix}{i}"}}"#))
        .collect();
    format!(r#"{{"result":[{}],"next_cursor":null}}"#, records.join(","))
}

/// A pass over `a` stopped once `after` users have committed; it ends interrupted.
async fn sync_stopped_after(env: &Env, a: uuid::Uuid, after: u64) -> lms_sync::sync::SyncOutcome {
    let cancel = CancellationToken::new();
    let stop = CancelAfterUsers {
        after,
        token: cancel.clone(),
    };
    let o = env.sync_with(&env.account(a), &cancel, &stop).await;
    assert_eq!(
        o.status,
        PassStatus::Finished(Outcome::Interrupted),
        "{:?}",
        o.error
    );
    o
}

/// Cancels the pass once it has committed `after` users: a shutdown between the parts of a
/// page too large to write whole (the parts of a page count no page until its last).
struct CancelAfterUsers {
    after: u64,
    token: CancellationToken,
}

impl Progress for CancelAfterUsers {
    fn page(&self, _account: &AccountSettings, totals: &RunCounts) {
        if totals.users_seen >= self.after {
            self.token.cancel();
        }
    }
}

/// A listing stopped between the parts of a large page keeps the cursor that page was
/// fetched with: the next run resumes there, fetches the page again, finds the parts already
/// written unchanged, and the mirror ends whole, with nothing inferred deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_stopped_between_the_parts_of_a_page_resumes_at_that_page() {
    let a = account_id(1);
    let env = Env::new(&[(a, 150)]).await;
    let big = last_page_of(5_000, "big-");
    // The first page as the simulator has it, then the large page in place of the second.
    env.sim.push_fault(Some(a), Fault::Delay(Duration::ZERO));
    env.sim.push_fault(Some(a), Fault::Body(big.clone()));
    sync_stopped_after(&env, a, 1_100).await;
    let written = env
        .scalar_i64(&format!(
            "SELECT count(*) FROM users WHERE integrated_account_id = '{a}' AND id LIKE 'big-%'"
        ))
        .await;
    assert!((1_000..5_000).contains(&written), "{written}");
    assert!(
        stored_cursor(&env.store, a).await.is_some(),
        "the large page's own cursor, to fetch it again"
    );

    env.sim.push_fault(Some(a), Fault::Body(big));
    let o = env.sync(a).await;
    assert!(o.succeeded(), "{:?}", o.error);
    assert!(o.resumed);
    assert_eq!(o.counts.inserted, 5_000 - written as u64, "{:?}", o.counts);
    assert_eq!(o.counts.unchanged, written as u64, "{:?}", o.counts);
    assert_eq!(o.counts.deleted, 0);
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM users WHERE integrated_account_id = '{a}' AND deleted_at IS NULL"
        ))
        .await,
        100 + 5_000
    );
}

/// A run that wrote only parts of its first page still heard from the API: an account marked
/// unhealthy is healthy again, as after any page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_wrote_part_of_its_first_page_clears_the_accounts_health() {
    let a = account_id(1);
    let env = Env::new(&[(a, 0)]).await;
    assert!(env.sync(a).await.succeeded());
    sqlx::query(
        "UPDATE sync_state SET health = 'blocked', health_since = now(), health_reason = 'x'
          WHERE integrated_account_id = $1",
    )
    .bind(a)
    .execute(env.store.pool())
    .await
    .unwrap();
    env.sim
        .push_fault(Some(a), Fault::Body(last_page_of(5_000, "")));
    let o = sync_stopped_after(&env, a, 1_000).await;
    assert_eq!(o.counts.pages, 0, "no page whole: {:?}", o.counts);
    let health: String =
        sqlx::query_scalar("SELECT health FROM sync_state WHERE integrated_account_id = $1")
            .bind(a)
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!(health, "ok");
}

/// Each run notes its account's live and deleted users in `sync_state`, and the status
/// readers (`lms-sync status`, the status page, `GET /status`) show those instead of counting
/// every user of the fleet on each look; an account with nothing noted yet is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_shows_each_accounts_user_counts_as_its_last_run_left_them() {
    let (a, b) = (account_id(1), account_id(2));
    let env = Env::new(&[(a, 300), (b, 40)]).await;
    assert!(env.sync(a).await.succeeded());
    env.sim.delete_user(a, "50");
    env.sim.delete_user(a, "51");
    env.sim.add_users(a, 3);
    assert!(env.sync(a).await.succeeded());

    let noted = |id: uuid::Uuid| {
        let pool = env.store.pool().clone();
        async move {
            sqlx::query_as::<_, (Option<i64>, Option<i64>)>(
                "SELECT live_user_count, deleted_user_count FROM sync_state WHERE integrated_account_id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(noted(a).await, (Some(301), Some(2)));
    for (where_, n) in [("deleted_at IS NULL", 301), ("deleted_at IS NOT NULL", 2)] {
        let sql =
            format!("SELECT count(*) FROM users WHERE integrated_account_id = '{a}' AND {where_}");
        assert_eq!(env.scalar_i64(&sql).await, n, "{where_}");
    }

    let status = |configured: Vec<(uuid::Uuid, Option<String>)>| {
        let store = env.store.clone();
        async move {
            store
                .status(&configured, None)
                .await
                .unwrap()
                .into_iter()
                .map(|r| {
                    (
                        r.integrated_account_id,
                        (r.status, r.live_users, r.deleted_users),
                    )
                })
                .collect::<std::collections::HashMap<_, _>>()
        }
    };
    let rows = status(vec![(a, None), (b, None), (b, None)]).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[&a], ("succeeded".to_string(), 301, 2));
    assert_eq!(rows[&b], ("never synced".to_string(), 0, 0));
    // Users queued for hydration are counted per account as they stand.
    sqlx::query(
        "INSERT INTO hydration_queue (integrated_account_id, user_id) VALUES ($1, '1'), ($1, '2')",
    )
    .bind(a)
    .execute(env.store.pool())
    .await
    .unwrap();
    let pending: std::collections::HashMap<_, _> = env
        .store
        .status(&[(b, None)], None)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.integrated_account_id, r.hydration_pending))
        .collect();
    assert_eq!((pending[&a], pending[&b]), (2, 0));
    // One account's read (its page) is that account's row alone, whether or not it is
    // configured, with its own counts.
    for (configured, only) in [
        (vec![(a, None), (b, None)], a),
        (vec![], a),
        (vec![(a, None), (b, None)], b),
    ] {
        let rows = env.store.status(&configured, Some(only)).await.unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].integrated_account_id, only);
        assert_eq!(rows[0].hydration_pending, if only == a { 2 } else { 0 });
    }
    let histories = env.store.run_histories(Some(b)).await.unwrap();
    assert!(histories.is_empty(), "b never ran: {histories:?}");
    assert_eq!(env.store.run_histories(Some(a)).await.unwrap().len(), 1);

    // What is read is what the run noted, not a count made on each look ...
    sqlx::query(
        "UPDATE sync_state SET live_user_count = 7, deleted_user_count = 5 WHERE integrated_account_id = $1",
    )
    .bind(a)
    .execute(env.store.pool())
    .await
    .unwrap();
    assert_eq!(status(vec![]).await[&a].1, 7);
    assert_eq!(status(vec![]).await[&a].2, 5);
    // ... and nothing noted (a first run under way, a row from before migration 0020) is
    // counted.
    sqlx::query(
        "UPDATE sync_state SET live_user_count = NULL, deleted_user_count = NULL WHERE integrated_account_id = $1",
    )
    .bind(a)
    .execute(env.store.pool())
    .await
    .unwrap();
    assert_eq!(status(vec![]).await[&a], ("succeeded".to_string(), 301, 2));

    // The next run notes them again.
    assert!(env.sync(a).await.succeeded());
    assert_eq!(noted(a).await, (Some(301), Some(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delete_guard_refuses_a_listing_that_would_delete_most_users() {
    let a = account_id(1);
    let env = Env::new(&[(a, 100)]).await;
    assert!(env.sync(a).await.succeeded());
    for i in 1..=60 {
        env.sim.delete_user(a, &i.to_string());
    }

    let o = env.sync(a).await;

    assert_eq!(finished(&o), Outcome::NeedsAttention);
    assert!(o
        .deletions_skipped_reason
        .as_deref()
        .unwrap()
        .contains("60 of 100"));
    let deleted = env
        .scalar_i64("SELECT count(*) FROM users WHERE deleted_at IS NOT NULL")
        .await;
    assert_eq!(deleted, 0, "the guard must delete nothing");
    let recorded = env
        .scalar_i64("SELECT count(*) FROM sync_runs WHERE outcome = 'needs_attention' AND deletions_skipped_reason LIKE '%60 of 100%'")
        .await;
    assert_eq!(recorded, 1);

    // An operator who confirms raises the share for the account; then the deletions apply.
    let mut acc = env.account(a);
    acc.max_delete_fraction = Some(0.7);
    let o = env
        .sync_with(&acc, &CancellationToken::new(), &lms_sync::sync::NoProgress)
        .await;
    assert!(o.succeeded(), "{:?}", o.error);
    assert_eq!(o.counts.deleted, 60);
    assert_mirror(&env.store, &env.sim, a).await;
}

/// `accounts allow-deletes`: the account's next complete, fresh listing deletes past the guard
/// and spends the allowance; a listing that may infer no deletions (failed, or resumed from a
/// cursor) leaves it for the next; the guard is back after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_lets_one_complete_listing_delete_past_the_guard() {
    let a = account_id(1);
    let env = Env::new(&[(a, 1000)]).await;
    assert!(env.sync(a).await.succeeded());
    for i in 1..=600 {
        env.sim.delete_user(a, &i.to_string());
    }
    let o = env.sync(a).await;
    assert_eq!(finished(&o), Outcome::NeedsAttention);
    let reason = o.deletions_skipped_reason.unwrap();
    assert!(
        reason.contains("600 of 1000") && reason.contains("accounts allow-deletes"),
        "{reason}"
    );
    // `accounts list`, `/status` and the status page say why, though the run did not fail.
    let attention = || async {
        let rows = env.store.status(&[], Some(a)).await.unwrap();
        rows[0].attention_reason.clone()
    };
    assert_eq!(attention().await, Some(reason));

    let by = Acting::new(
        "lms-sync accounts allow-deletes by ops@test".into(),
        Some("offboarding, HR-12"),
    )
    .unwrap();
    let missing = env.store.steer(&[a], Steer::AllowDeletes, &by).await;
    assert!(missing.unwrap().is_empty());
    let live = "SELECT count(*) FROM users WHERE deleted_at IS NULL";
    // A listing that fails on its third page, then the one resumed from its cursor.
    env.sim.push_fault_after(Some(a), 2, Fault::status(400));
    assert_eq!(finished(&env.sync(a).await), Outcome::Failed);
    let o = env.sync(a).await;
    assert!(o.succeeded(), "{:?}", o.error);
    assert!(o.deletions_skipped_reason.unwrap().contains("resumed"));
    assert!(env.store.deletes_allowed(a).await.unwrap());
    assert_eq!(env.scalar_i64(live).await, 1000);

    let o = env.sync(a).await;
    assert_eq!(finished(&o), Outcome::Succeeded, "{:?}", o.error);
    assert_eq!(o.counts.deleted, 600);
    assert!(!env.store.deletes_allowed(a).await.unwrap());
    assert_eq!(attention().await, None);
    assert_mirror(&env.store, &env.sim, a).await;

    for i in 601..=900 {
        env.sim.delete_user(a, &i.to_string());
    }
    let o = env.sync(a).await;
    assert_eq!(finished(&o), Outcome::NeedsAttention);
    assert!(o.deletions_skipped_reason.unwrap().contains("300 of 400"));
    assert_eq!(env.scalar_i64(live).await, 400);
    let allowed: Vec<(String, String)> =
        sqlx::query_as("SELECT actor, reason FROM account_actions WHERE action = 'allow_deletes'")
            .fetch_all(env.store.pool())
            .await
            .unwrap();
    assert_eq!(
        allowed,
        [(by.actor.clone(), "offboarding, HR-12".to_string())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_faults_are_retried_and_the_mirror_is_exact() {
    let a = account_id(1);
    let mut env = Env::new(&[(a, 500)]).await;
    env.settings.truto.request_timeout_secs = 1;
    // One page meets every fault in a row: allow them all.
    env.settings.truto.max_attempts = 12;
    let faults = [
        Fault::Status {
            status: 429,
            retry_after: Some("1".into()),
            remote: false,
        },
        Fault::Status {
            status: 429,
            retry_after: Some("soon".into()),
            remote: false,
        },
        Fault::status(500),
        Fault::status(502),
        Fault::status(504),
        Fault::Reset,
        Fault::Truncate,
        Fault::Html200,
        Fault::Body("{\"result\": {\"not\": \"an array\"}}".into()),
        Fault::Stall(Duration::from_secs(3)),
    ];
    for f in &faults {
        env.sim.push_fault(Some(a), f.clone());
    }

    let o = env.sync(a).await;

    assert!(o.succeeded(), "{:?}", o.error);
    assert_eq!(o.counts.retries, faults.len() as u64);
    assert_eq!(o.counts.rate_limited, 2);
    assert_eq!(env.sim.stats().faults_served, faults.len() as u64);
    assert_mirror(&env.store, &env.sim, a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_give_up_after_the_configured_attempts() {
    let a = account_id(1);
    let mut env = Env::new(&[(a, 50)]).await;
    env.settings.truto.max_attempts = 3;
    env.sim.block(a, Fault::status(500));

    let o = env.sync(a).await;

    assert_eq!(finished(&o), Outcome::Failed);
    assert!(
        o.error
            .as_deref()
            .unwrap()
            .contains("gave up after 3 attempts"),
        "{:?}",
        o.error
    );
    assert_eq!(env.sim.stats().requests, 3);
    // The run's figures say so too.
    assert_eq!(run_requests(&env, o.run_id.unwrap()).await, (3, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_errors_fail_clearly_and_touch_no_data() {
    let (a, b) = (account_id(1), account_id(2));
    let env = Env::new(&[(a, 150), (b, 120)]).await;
    assert!(env.sync(a).await.succeeded());
    let before = row_versions(&env.store).await;
    let cases = [
        (Fault::status(401), "TRUTO_API_TOKEN", "bad_token"),
        (
            Fault::Status {
                status: 401,
                retry_after: None,
                remote: true,
            },
            "re-authorize",
            "needs_reauth",
        ),
        (Fault::status(403), "scope", "forbidden"),
        (
            Fault::status(404),
            "no such integrated account",
            "not_found",
        ),
        // The vendor's own 404, through Truto: not the account's absence from Truto.
        (
            Fault::Status {
                status: 404,
                retry_after: None,
                remote: true,
            },
            "its site or API may have moved or been removed",
            "not_found",
        ),
        (Fault::status(503), "blocked", "blocked"),
        (Fault::status(422), "refused the request", "http_error"),
    ];
    let cases_len = cases.len() as i32;
    for (fault, advice, kind) in cases {
        env.sim.block(a, fault.clone());
        let requests_before = env.sim.stats().requests;

        let o = env.sync(a).await;

        assert_eq!(finished(&o), Outcome::Failed, "{fault:?}");
        let err = o.error.clone().unwrap();
        assert!(err.contains(advice), "{fault:?}: {err}");
        assert_eq!(o.error_kind.map(ErrorKind::as_str), Some(kind));
        assert_eq!(
            env.sim.stats().requests - requests_before,
            1,
            "{fault:?} must not be retried"
        );
        assert_eq!(
            row_versions(&env.store).await,
            before,
            "{fault:?} touched data"
        );
    }
    let failures: i32 = sqlx::query_scalar(
        "SELECT consecutive_failures FROM sync_state WHERE integrated_account_id = $1",
    )
    .bind(a)
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert_eq!(failures, cases_len);
    // Other accounts are unaffected.
    let ob = env.sync(b).await;
    assert!(ob.succeeded());
    assert_mirror(&env.store, &env.sim, b).await;
    // And the account recovers once unblocked.
    env.sim.unblock(a);
    assert!(env.sync(a).await.succeeded());
    assert_mirror(&env.store, &env.sim, a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeating_cursor_stops_the_listing_instead_of_looping() {
    let a = account_id(1);
    let env = Env::new(&[(a, 500)]).await;
    // Page 1 fine; page 2 hands back its own cursor.
    env.sim.push_fault(Some(a), Fault::Delay(Duration::ZERO));
    env.sim.push_fault(Some(a), Fault::RepeatCursor);

    let o = env.sync(a).await;

    assert_eq!(finished(&o), Outcome::Failed);
    assert!(
        o.error
            .as_deref()
            .unwrap()
            .contains("cursor it had already returned"),
        "{:?}",
        o.error
    );
    assert!(env.sim.stats().requests <= 3);
    let deleted = env
        .scalar_i64("SELECT count(*) FROM users WHERE deleted_at IS NOT NULL")
        .await;
    assert_eq!(deleted, 0);
    // The broken listing is not resumed: the next run starts over and completes.
    let o = env.sync(a).await;
    assert!(o.succeeded());
    assert!(!o.resumed);
    assert_mirror(&env.store, &env.sim, a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_longer_than_max_pages_fails() {
    let a = account_id(1);
    let mut env = Env::new(&[(a, 500)]).await;
    env.settings.truto.max_pages = 3;

    let o = env.sync(a).await;

    assert_eq!(finished(&o), Outcome::Failed);
    assert!(
        o.error.as_deref().unwrap().contains("max_pages"),
        "{:?}",
        o.error
    );
    assert_eq!(o.counts.pages, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_records_are_stored_as_rejected_while_the_rest_syncs() {
    let a = account_id(1);
    let env = Env::new(&[(a, 250)]).await;
    assert!(env.sync(a).await.succeeded());
    let user9 = user_row_versions(&env.store, a, "9").await;
    env.sim.set_raw_record(a, "5", r#"{"name":"no id at all"}"#);
    env.sim
        .set_raw_record(a, "7", r#"{"id":7,"name":"numeric id"}"#);
    env.sim
        .set_raw_record(a, "9", r#"{"id":"9","emails":"not-a-list"}"#);
    env.sim
        .set_raw_record(a, "11", r#"{"id":"11","name":"nul \u0000 inside"}"#);
    env.sim
        .set_raw_record(a, "13", r#"{"id":"13","updated_at":"last tuesday"}"#);
    let deep = format!(
        r#"{{"id":"15","custom_fields":{}1{}}}"#,
        "[".repeat(700),
        "]".repeat(700)
    );
    env.sim.set_raw_record(a, "15", &deep);

    let o = env.sync(a).await;

    assert!(o.succeeded(), "{:?}", o.error);
    assert_eq!(o.counts.rejected, 6);
    let reasons: Vec<(Option<String>, String, String)> = sqlx::query_as(
        "SELECT user_id, reason, raw FROM rejected_records WHERE integrated_account_id = $1 ORDER BY rejection_id",
    )
    .bind(a)
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    assert_eq!(reasons.len(), 6);
    assert_eq!(reasons[0].0, None);
    assert_eq!(reasons[0].1, "record has no id");
    assert!(reasons[1].1.contains("id is not a string"));
    assert_eq!(reasons[2].0.as_deref(), Some("9"));
    assert!(reasons[2].2.contains("not-a-list"));
    assert!(reasons[3].1.contains("NUL"));
    assert!(reasons[4].1.starts_with("updated_at"));
    assert!(reasons[5].1.contains("levels deep"), "{}", reasons[5].1);
    assert_eq!(reasons[5].0.as_deref(), Some("15"));
    // A refused record with a usable id is not a deletion: its mirrored row stays as it was.
    assert_eq!(user_row_versions(&env.store, a, "9").await, user9);
    let live9 = env
        .scalar_i64(&format!("SELECT count(*) FROM users WHERE integrated_account_id = '{a}' AND id = '9' AND deleted_at IS NULL"))
        .await;
    assert_eq!(live9, 1);
    // Users without a usable id could not be matched, so they are (correctly) not in the
    // listing any more; the other 245 are exact.
    let rejected_runs = env
        .scalar_i64("SELECT rejected FROM sync_runs ORDER BY run_id DESC LIMIT 1")
        .await;
    assert_eq!(rejected_runs, 6);

    // Refused again, the same records update their rows instead of adding new ones.
    let again = env.sync(a).await;
    assert_eq!(again.counts.rejected, 6);
    let (rows, times, last_run): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), sum(rejections)::bigint, min(last_run_id) FROM rejected_records WHERE integrated_account_id = $1",
    )
    .bind(a)
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert_eq!((rows, times), (6, 12));
    assert_eq!(Some(last_run), again.run_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_response_infers_no_deletions() {
    let a = account_id(1);
    let env = Env::new(&[(a, 300)]).await;
    assert!(env.sync(a).await.succeeded());
    env.sim.delete_user(a, "3");
    env.sim.push_fault(Some(a), Fault::Partial);

    let o = env.sync(a).await;

    assert_eq!(finished(&o), Outcome::NeedsAttention);
    assert!(o
        .deletions_skipped_reason
        .as_deref()
        .unwrap()
        .contains("partial"));
    let deleted = env
        .scalar_i64("SELECT count(*) FROM users WHERE deleted_at IS NOT NULL")
        .await;
    assert_eq!(deleted, 0);
    let o = env.sync(a).await;
    assert!(o.succeeded());
    assert_eq!(o.counts.deleted, 1);
}

/// Cancels the pass once it has committed `after` pages: a shutdown between pages.
struct CancelAfter {
    after: u64,
    token: CancellationToken,
    pages: AtomicU64,
}

impl Progress for CancelAfter {
    fn page(&self, _account: &AccountSettings, totals: &RunCounts) {
        self.pages.store(totals.pages, Ordering::SeqCst);
        if totals.pages >= self.after {
            self.token.cancel();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_run_resumes_from_its_cursor_and_infers_no_deletions_until_a_full_listing() {
    let a = account_id(1);
    let mut env = Env::new(&[(a, 1000)]).await;
    assert!(env.sync(a).await.succeeded());
    // Pages slower than writes, and batches that take what has arrived: the cancellation
    // lands between batches, well before the last page.
    env.settings.sync.batch_fill_ms = 0;
    env.sim.set_latency(Duration::from_millis(20));
    env.sim.delete_user(a, "2");
    env.sim
        .update_user(a, "950", json!({"name": "Changed Late"}));
    let token = CancellationToken::new();
    let stop = CancelAfter {
        after: 3,
        token: token.clone(),
        pages: AtomicU64::new(0),
    };

    let o = env.sync_with(&env.account(a), &token, &stop).await;

    assert_eq!(finished(&o), Outcome::Interrupted);
    // Pages fetched ahead may have been committed in the same batch; never all of them.
    assert!((3..10).contains(&o.counts.pages), "{:?}", o.counts);
    assert!(
        stored_cursor(&env.store, a).await.is_some(),
        "the cursor of the last committed page is kept"
    );
    let requests_before = env.sim.stats().requests;

    let resumed = env.sync(a).await;

    assert!(resumed.succeeded(), "{:?}", resumed.error);
    assert!(resumed.resumed);
    assert_eq!(
        resumed.counts.pages + o.counts.pages,
        10,
        "no page fetched twice, none skipped"
    );
    assert_eq!(
        env.sim.stats().requests - requests_before,
        resumed.counts.pages
    );
    assert_eq!(
        resumed.counts.deleted, 0,
        "a resumed listing infers no deletions"
    );
    let changed: String = sqlx::query_scalar(
        "SELECT name FROM users WHERE integrated_account_id = $1 AND id = '950'",
    )
    .bind(a)
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert_eq!(changed, "Changed Late");

    let full = env.sync(a).await;
    assert!(full.succeeded());
    assert!(!full.resumed);
    assert_eq!(full.counts.deleted, 1);
    assert_mirror(&env.store, &env.sim, a).await;
}

/// Account `a` of 600 users whose first run was stopped after two pages, its cursor saved.
async fn interrupted_after_two_pages(a: uuid::Uuid) -> Env {
    let mut env = Env::new(&[(a, 2000)]).await;
    // Pages slower than writes, and batches that take what has arrived: the writer commits
    // them one by one, so the cancellation lands mid-listing. And more pages than the
    // cancellation can find fetched ahead and written after it (two batches of up to 8),
    // however slow a loaded machine makes the writer: 20.
    env.settings.sync.batch_fill_ms = 0;
    env.sim.set_latency(Duration::from_millis(30));
    let token = CancellationToken::new();
    let stop = CancelAfter {
        after: 2,
        token: token.clone(),
        pages: AtomicU64::new(0),
    };
    let o = env.sync_with(&env.account(a), &token, &stop).await;
    assert_eq!(finished(&o), Outcome::Interrupted);
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_cursor_restarts_the_listing_from_the_first_page() {
    let a = account_id(1);
    let env = interrupted_after_two_pages(a).await;
    env.sim.expire_cursors();
    env.sim.delete_user(a, "599");
    let served_before = env.sim.stats().requests;

    let o = env.sync(a).await;

    assert!(o.succeeded(), "{:?}", o.error);
    assert!(!o.resumed, "the listing restarted, so it is complete");
    assert_mirror(&env.store, &env.sim, a).await;
    // The refused request counts with the run's others.
    assert_eq!(
        run_requests(&env, o.run_id.unwrap()).await.0 as u64,
        env.sim.stats().requests - served_before
    );
}

/// A saved cursor longer than the server takes in a URL (a vendor's runaway cursor, a bad
/// edit) is answered 414: the listing starts again from the first page instead of failing
/// every later run until `accounts reset-cursor`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_cursor_too_long_for_a_url_restarts_the_listing_from_the_first_page() {
    let a = account_id(1);
    let env = interrupted_after_two_pages(a).await;
    let long = "c".repeat(lms_sync::devkit::simulator::MAX_TARGET_LEN + 1);
    let saved = sqlx::query(
        "UPDATE sync_state SET cursor = $2 WHERE integrated_account_id = $1 AND cursor IS NOT NULL",
    )
    .bind(a)
    .bind(&long)
    .execute(env.store.pool())
    .await
    .unwrap();
    assert_eq!(
        saved.rows_affected(),
        1,
        "the interrupted run left a cursor"
    );

    let o = env.sync(a).await;

    assert!(o.succeeded(), "{:?}", o.error);
    assert!(!o.resumed, "the listing restarted, so it is complete");
    assert_mirror(&env.store, &env.sim, a).await;
}

/// A run's (http_requests, retries) as `sync_runs` has them.
async fn run_requests(env: &Env, run_id: i64) -> (i64, i64) {
    sqlx::query_as("SELECT http_requests, retries FROM sync_runs WHERE run_id = $1")
        .bind(run_id)
        .fetch_one(env.store.pool())
        .await
        .unwrap()
}

/// A run that starts while an account event for its account is applied (a webhook's, or a
/// listing's: `accounts`, then `sync_state` to gate its health) waits for it instead of
/// deadlocking with it: both lock the account's `accounts` row before its `sync_state` row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_starting_while_its_account_event_is_applied_waits_for_it() {
    let a = account_id(1);
    let env = Env::new(&[(a, 20)]).await;
    assert!(env.sync(a).await.succeeded());
    // Holds the account's registry row, so that the event and then the run queue behind it.
    let mut holder = env.store.pool().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM accounts WHERE integrated_account_id = $1 FOR UPDATE")
        .bind(a)
        .execute(&mut *holder)
        .await
        .unwrap();
    let event = needs_reauth_event(&env, a);
    until_waiting(&env, 1).await;
    let store = env.store.clone();
    let run = tokio::spawn(async move { store.begin_run(a, None, "here:1").await });
    until_waiting(&env, 2).await;
    holder.commit().await.unwrap();
    // (A deadlock is found within deadlock_timeout, 1 s, and fails one of them.)
    let event = event.await.unwrap();
    let run = run.await.unwrap();
    assert!(event.is_ok(), "the event: {:?}", event.err());
    assert!(run.is_ok(), "the run: {:?}", run.err());
    assert_eq!(health(&env, a).await, "needs_reauth");
}

/// Truto's `needs_reauth`, applied by an event while a run is under way (the run's first
/// answers came before it), stands when the run ends well: it is newer news than the run's.
/// (A gate the run started after is cleared by it, as before.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_needs_reauth_applied_during_a_run_outlives_the_run() {
    let a = account_id(1);
    let env = Env::new(&[(a, 20)]).await;
    // Holds the run's first write back (its requests answered), so the event comes mid-run.
    let mut holder = env.store.pool().begin().await.unwrap();
    sqlx::query("LOCK TABLE users IN SHARE MODE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let (run, ()) = tokio::join!(env.sync(a), async {
        until_waiting(&env, 1).await;
        let event = needs_reauth_event(&env, a).await.unwrap();
        assert!(event.is_ok(), "the event: {:?}", event.err());
        holder.commit().await.unwrap();
    });
    assert!(run.succeeded());
    assert_eq!(run.health, Some(lms_sync::domain::Health::NeedsReauth));
    assert_eq!(health(&env, a).await, "needs_reauth");

    // A run made after the gate (an operator's sync-now) that Truto answers clears it.
    let run = env.sync(a).await;
    assert!(run.succeeded());
    assert_eq!(health(&env, a).await, "ok");
}

/// A run answered 404 marks the account `not_found`, probed hours apart. A listing that has
/// it active, made with the same token, says the token knows it again (a token of another
/// environment was replaced, say): it is `ok` and synced at once, not hours later. A health a
/// listing cannot vouch for (`forbidden`: the token's scopes; `not_found` for the vendor's own
/// 404, its site gone) waits for its probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_listed_active_is_no_longer_taken_for_one_the_token_does_not_know() {
    let (a, b, c) = (account_id(1), account_id(2), account_id(3));
    let env = Env::new(&[(a, 20), (b, 20), (c, 20)]).await;
    let list = || async { listed_active(&env.store, &[a, b, c]).await.unwrap() };
    let requested = |id: uuid::Uuid| {
        format!(
            "SELECT count(*) FROM accounts
              WHERE integrated_account_id = '{id}' AND sync_requested_at IS NOT NULL"
        )
    };
    // Listed active already (the first listing asks for their first runs).
    list().await;
    sqlx::query("UPDATE accounts SET sync_requested_at = NULL")
        .execute(env.store.pool())
        .await
        .unwrap();
    env.sim.block(a, Fault::status(404));
    env.sim.block(b, Fault::status(403));
    env.sim.block(
        c,
        Fault::Status {
            status: 404,
            retry_after: None,
            remote: true,
        },
    );
    for id in [a, b, c] {
        assert!(!env.sync(id).await.succeeded());
    }
    assert_eq!(health(&env, a).await, "not_found");
    assert_eq!(health(&env, b).await, "forbidden");
    assert_eq!(health(&env, c).await, "not_found");

    list().await;
    assert_eq!(health(&env, a).await, "ok");
    assert_eq!(env.scalar_i64(&requested(a)).await, 1, "synced at once");
    for (id, was) in [(b, "forbidden"), (c, "not_found")] {
        assert_eq!(health(&env, id).await, was);
        assert_eq!(env.scalar_i64(&requested(id)).await, 0);
    }
}

/// An account event, and a listing, that lose a deadlock all the same (here to a transaction
/// that locks the account's rows in the other order) are made again, and applied: not left to
/// the next listing, nor the listing's requests spent for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_event_or_a_listing_that_loses_a_deadlock_is_made_again() {
    let a = account_id(1);
    let env = Env::new(&[(a, 20)]).await;
    assert!(env.sync(a).await.succeeded());
    let event = the_victim_of_a_deadlock(&env, a, || needs_reauth_event(&env, a)).await;
    assert!(event.is_ok(), "the event: {:?}", event.err());
    assert_eq!(health(&env, a).await, "needs_reauth");

    // Truto lists it active again: the listing gates it back to ok.
    let store = env.store.clone();
    let listing = the_victim_of_a_deadlock(&env, a, move || {
        tokio::spawn(async move { listed_active(&store, &[a]).await })
    })
    .await;
    assert!(listing.is_ok(), "the listing: {:?}", listing.err());
    assert_eq!(health(&env, a).await, "ok");
}

/// What `start` starts, made the victim of a deadlock: another transaction locks `a`'s
/// `sync_state` row, then (once `start`'s transaction waits for it) its registry row.
/// PostgreSQL looks for a deadlock in a session that has waited `deadlock_timeout`, and fails
/// that one: the other session looks after 30 s, `start`'s after 1 s, so `start`'s loses.
async fn the_victim_of_a_deadlock<T: Send + 'static>(
    env: &Env,
    a: uuid::Uuid,
    start: impl FnOnce() -> tokio::task::JoinHandle<Result<T, lms_sync::store::StoreError>>,
) -> Result<T, lms_sync::store::StoreError> {
    let mut other = env.store.pool().begin().await.unwrap();
    sqlx::query("SET LOCAL deadlock_timeout = '30s'")
        .execute(&mut *other)
        .await
        .unwrap();
    let lock = |table: &str| {
        format!("SELECT 1 FROM {table} WHERE integrated_account_id = '{a}' FOR UPDATE")
    };
    sqlx::query(&lock("sync_state"))
        .execute(&mut *other)
        .await
        .unwrap();
    let victim = start();
    // It holds the registry row and waits for sync_state; this then waits for the row.
    until_waiting(env, 1).await;
    sqlx::query(&lock("accounts"))
        .execute(&mut *other)
        .await
        .unwrap();
    other.commit().await.unwrap();
    victim.await.unwrap()
}

/// `account_event` of `a` needing re-authorization, under way in a task of its own.
fn needs_reauth_event(
    env: &Env,
    a: uuid::Uuid,
) -> tokio::task::JoinHandle<Result<bool, lms_sync::store::StoreError>> {
    let store = env.store.clone();
    tokio::spawn(async move {
        let row = listed_as(a, "needs_reauth", None);
        store.account_event(&row, false).await
    })
}

/// A complete listing of `ids`, each active in env-1, applied as discovery applies one.
async fn listed_active(
    store: &lms_sync::store::Store,
    ids: &[uuid::Uuid],
) -> Result<lms_sync::store::DiscoveryApplied, lms_sync::store::StoreError> {
    let rows: Vec<_> = ids
        .iter()
        .map(|&id| listed_as(id, "active", Some("env-1")))
        .collect();
    let policy = lms_sync::store::RetirePolicy {
        complete: true,
        max_fraction: 0.5,
    };
    let environment = lms_sync::store::ListedEnvironment {
        id: Some("env-1"),
        adopt: false,
    };
    store
        .apply_discovery(&rows, policy, environment, false)
        .await
}

/// `a` as Truto would list it, with `status`, in `environment`.
fn listed_as(
    a: uuid::Uuid,
    status: &str,
    environment: Option<&str>,
) -> lms_sync::store::Discovered {
    lms_sync::store::Discovered {
        id: a,
        tenant_id: Some("tenant-a".into()),
        status: Some(status.into()),
        integration: Some("talentlms".into()),
        is_sandbox: false,
        environment_id: environment.map(str::to_string),
    }
}

/// Waits until `n` sessions of the database wait for a lock.
async fn until_waiting(env: &Env, n: i64) {
    let waiting = "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s USING (pid)
                    WHERE NOT l.granted AND s.datname = current_database()";
    for tries in 0.. {
        assert!(tries < 1500, "never {n} waiting");
        if env.scalar_i64(waiting).await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn health(env: &Env, a: uuid::Uuid) -> String {
    sqlx::query_scalar("SELECT health FROM sync_state WHERE integrated_account_id = $1")
        .bind(a)
        .fetch_one(env.store.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_left_running_by_a_dead_process_is_marked_interrupted() {
    let a = account_id(1);
    let env = Env::new(&[(a, 120)]).await;
    // What a crash leaves behind: a run marked running and a cursor.
    let start = env.store.begin_run(a, None, "dead-host:1").await.unwrap();
    assert!(start.resume_cursor.is_none());

    let o = env.sync(a).await;

    assert!(o.succeeded());
    let outcome: String = sqlx::query_scalar("SELECT outcome FROM sync_runs WHERE run_id = $1")
        .bind(start.run_id)
        .fetch_one(env.store.pool())
        .await
        .unwrap();
    assert_eq!(outcome, "interrupted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_leased_by_another_process_is_not_synced_twice() {
    let a = account_id(1);
    let env = Env::new(&[(a, 50)]).await;
    let lease = env.store.try_lease(a).await.unwrap().expect("free");

    let o = env.sync(a).await;

    assert_eq!(o.status, PassStatus::Busy);
    assert_eq!(env.sim.stats().requests, 0);
    lease.release().await;
    assert!(env.sync(a).await.succeeded());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_parameters_are_sent_identically_on_every_page() {
    let a = account_id(1);
    let mut env = Env::new(&[(a, 250)]).await;
    let mut acc = AccountSettings::new(a);
    acc.ignore_remote_data = true;
    acc.exclude_fields = vec!["custom_fields".into()];
    acc.remote_query.insert("status".into(), "active".into());
    env.settings.accounts = vec![acc.clone()];

    let o = env.sync(a).await;

    assert!(o.succeeded());
    let with_remote = env
        .scalar_i64(
            "SELECT count(*) FROM users WHERE remote_data IS NOT NULL OR custom_fields IS NOT NULL",
        )
        .await;
    assert_eq!(
        with_remote, 0,
        "every page honoured the account's parameters"
    );
    let client = env.client();
    let url = client.page_url(&acc, Some("c1"));
    let q = url.query().unwrap();
    assert!(q.contains("truto_ignore_remote_data=true"));
    assert!(q.contains("truto_exclude_fields%5B%5D=custom_fields"));
    assert!(q.contains("remote_query%5Bstatus%5D=active"));
    assert!(q.contains("limit=100"));
    assert!(q.ends_with("next_cursor=c1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_account_syncs_to_an_empty_mirror() {
    let a = account_id(1);
    let env = Env::new(&[(a, 0)]).await;

    let o = env.sync(a).await;

    assert!(o.succeeded());
    assert_eq!(o.counts.pages, 1);
    assert_eq!(env.scalar_i64("SELECT count(*) FROM users").await, 0);
}

/// Moves the stored cursor behind the pass's back after `at` pages, as a database that lost
/// commits (or another process) would.
struct MoveCursor {
    at: u64,
    store: lms_sync::store::Store,
    moved: std::sync::atomic::AtomicBool,
}

impl MoveCursor {
    fn after(at: u64, env: &Env) -> MoveCursor {
        MoveCursor {
            at,
            store: env.store.clone(),
            moved: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

/// The pass failed because the cursor guard found the stored cursor moved.
fn assert_stopped_by_cursor_guard(o: &lms_sync::sync::SyncOutcome) {
    assert_eq!(finished(o), Outcome::Failed);
    assert!(
        o.error.as_deref().unwrap().contains("no longer holds"),
        "{:?}",
        o.error
    );
}

impl Progress for MoveCursor {
    fn page(&self, _account: &AccountSettings, totals: &RunCounts) {
        if totals.pages >= self.at && !self.moved.swap(true, Ordering::SeqCst) {
            tokio::task::block_in_place(|| {
                tokio::runtime::Handle::current().block_on(async {
                    sqlx::query("UPDATE sync_state SET cursor = 'moved-elsewhere'")
                        .execute(self.store.pool())
                        .await
                        .unwrap();
                })
            });
        }
    }
}

/// Rows and cursor advances committed together: the stored page count is the pass's, and
/// exactly those pages' users (100 a page) are mirrored.
async fn assert_rows_and_cursor_went_in_together(
    env: &Env,
    a: uuid::Uuid,
    o: &lms_sync::sync::SyncOutcome,
) {
    let pages = env
        .scalar_i64(&format!(
            "SELECT pages FROM sync_state WHERE integrated_account_id = '{a}'"
        ))
        .await;
    let users = env
        .scalar_i64(&format!(
            "SELECT count(*) FROM users WHERE integrated_account_id = '{a}'"
        ))
        .await;
    assert_eq!(pages as u64, o.counts.pages);
    assert_eq!(users as u64, 100 * o.counts.pages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_stops_when_the_stored_cursor_is_not_where_it_left_it() {
    let a = account_id(1);
    let mut env = Env::new(&[(a, 800)]).await;
    // Pages slower than writes, and batches that take what has arrived: the writer commits
    // them one by one.
    env.settings.sync.batch_fill_ms = 0;
    env.sim.set_latency(Duration::from_millis(30));
    let hook = MoveCursor::after(2, &env);

    let o = env
        .sync_with(&env.account(a), &CancellationToken::new(), &hook)
        .await;

    assert_stopped_by_cursor_guard(&o);
    // The hook moves the cursor once page 2 is committed; a batch already past the guard by
    // then (page 3, on a busy machine) commits before the move, in the database's order. What
    // must hold: no batch committed after it (the moved cursor is still there), and the rows
    // and the cursor's advances went in together.
    assert!(
        (2..8).contains(&o.counts.pages),
        "stopped within a batch or two of the move: {:?}",
        o.counts
    );
    let still_moved = env
        .scalar_i64(&format!(
            "SELECT count(*) FROM sync_state
              WHERE integrated_account_id = '{a}' AND cursor = 'moved-elsewhere'"
        ))
        .await;
    assert_eq!(still_moved, 1, "nothing was written past the divergence");
    assert_rows_and_cursor_went_in_together(&env, a, &o).await;
    // The next pass resumes from the database's cursor; the API refuses it; the listing restarts.
    let o = env.sync(a).await;
    assert!(o.succeeded(), "{:?}", o.error);
    assert_mirror(&env.store, &env.sim, a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_written_ahead_roll_back_together_when_one_before_them_fails() {
    let a = account_id(1);
    let env = Env::new(&[(a, 20_000)]).await;
    // Fast pages: by page 40 several batches are being written at once, each gated on the one
    // before; the cursor moves under the one the writer is accounting for.
    let hook = MoveCursor::after(40, &env);

    let o = env
        .sync_with(&env.account(a), &CancellationToken::new(), &hook)
        .await;

    assert_stopped_by_cursor_guard(&o);
    assert!(
        o.counts.pages >= 40 && o.counts.pages < 200,
        "{:?}",
        o.counts
    );
    // Nothing of the batches behind the failed one is mirrored.
    assert_rows_and_cursor_went_in_together(&env, a, &o).await;
    // The next pass starts over (the API refuses the moved cursor) and converges.
    let o = env.sync(a).await;
    assert!(o.succeeded(), "{:?}", o.error);
    assert_mirror(&env.store, &env.sim, a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_on_two_pages_of_a_first_sync_is_written_once_with_the_later_record() {
    let a = account_id(1);
    let mut env = Env::new(&[(a, 300)]).await;
    // Slow pages, and batches that take what has arrived: the writer commits them one by one,
    // so the two copies land in two batches.
    env.settings.sync.batch_fill_ms = 0;
    env.sim.set_latency(Duration::from_millis(30));
    let mut later = env.sim.expected_user(a, "5").unwrap();
    later["name"] = json!("Second Copy");
    env.sim.set_raw_record(a, "250", &later.to_string());

    let o = env.sync(a).await;

    assert!(o.succeeded(), "{:?}", o.error);
    assert_eq!(o.counts.inserted, 299, "{:?}", o.counts);
    assert_eq!(o.counts.updated, 1, "{:?}", o.counts);
    let name: String =
        sqlx::query_scalar("SELECT name FROM users WHERE integrated_account_id = $1 AND id = '5'")
            .bind(a)
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!(name, "Second Copy");
    let emails = env
        .scalar_i64(&format!("SELECT count(*) - count(DISTINCT (user_id, position)) FROM user_emails WHERE integrated_account_id = '{a}'"))
        .await;
    assert_eq!(emails, 0);
}

/// Counts the batches a pass commits (the progress hook runs once per batch).
#[derive(Default)]
struct Batches(AtomicU64);

impl Progress for Batches {
    fn page(&self, _account: &AccountSettings, _totals: &RunCounts) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_batches_wait_for_more_pages_so_a_slow_listing_commits_fewer_transactions() {
    let (a, b) = (account_id(1), account_id(2));
    let mut env = Env::new(&[(a, 800), (b, 800)]).await;
    // Pages slower than writes: taking only what has arrived would commit them one by one.
    // 100 ms leaves a slow machine room to write a page of 100 users before the next arrives
    // (at 30 ms, a busy run once wrote the 8 pages in 4 transactions without the wait).
    env.sim.set_latency(Duration::from_millis(100));

    let waiting = Batches::default();
    let o = env
        .sync_with(&env.account(a), &CancellationToken::new(), &waiting)
        .await;
    assert!(o.succeeded(), "{:?}", o.error);
    env.settings.sync.batch_fill_ms = 0;
    let taking = Batches::default();
    let o2 = env
        .sync_with(&env.account(b), &CancellationToken::new(), &taking)
        .await;
    assert!(o2.succeeded(), "{:?}", o2.error);

    assert_eq!((o.counts.pages, o2.counts.pages), (8, 8));
    let (waiting, taking) = (waiting.0.into_inner(), taking.0.into_inner());
    assert!(waiting <= 4, "8 pages in {waiting} transactions");
    assert!(
        taking >= 6,
        "8 pages in {taking} transactions without the wait"
    );
    assert_mirror(&env.store, &env.sim, a).await;
    assert_mirror(&env.store, &env.sim, b).await;
}

/// An undocumented enum value is news once: a warning when no account of the fleet has shown
/// it before, not again for each account of the same vendor, nor for each run whose changed
/// users carry it; every account's values are in `unknown_enum_values`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undocumented_enum_value_is_a_warning_once_for_the_fleet() {
    let (a, b) = (account_id(1), account_id(2));
    let env = Env::new(&[(a, 200), (b, 200)]).await;
    let cfg = crate::helpers::daemon::config(&env.sim, &[a, b], "1h", 2);
    // The values of each warning about undocumented enum values in a one-off sync's log.
    let warned = |account: uuid::Uuid| {
        let cfg = cfg.to_path_buf();
        let db = env.db_url.clone();
        async move {
            let out = crate::helpers::daemon::lms_sync(
                &cfg,
                &db,
                &["sync", "--account", &account.to_string()],
            )
            .output()
            .await
            .unwrap();
            let log = String::from_utf8_lossy(&out.stderr).to_string();
            assert!(out.status.success(), "{log}");
            log.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|e| {
                    e["level"] == "WARN"
                        && e["fields"]["message"]
                            .as_str()
                            .is_some_and(|m| m.contains("undocumented enum values"))
                })
                .map(|e| e["fields"]["values"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let first = warned(a).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(
        first[0].contains("role=superadmin (") && first[0].contains("status=archived ("),
        "{first:?}"
    );
    // The same vendor's values in another account: recorded, not news.
    assert_eq!(warned(b).await, Vec::<String>::new());
    // A value no account has shown: news, alone.
    env.sim.update_user(b, "7", json!({"status": "frozen"}));
    assert_eq!(warned(b).await, vec!["status=frozen (1 users)".to_string()]);
    let recorded: Vec<(String, String)> = sqlx::query_as(
        "SELECT field, value FROM unknown_enum_values WHERE integrated_account_id = $1 ORDER BY 1, 2",
    )
    .bind(b)
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    for value in [
        ("role", "superadmin"),
        ("status", "archived"),
        ("status", "frozen"),
    ] {
        assert!(
            recorded.contains(&(value.0.to_string(), value.1.to_string())),
            "{recorded:?}"
        );
    }
}
