//! Faults and upstream changes under way: the mirror still ends exact, and no live user is ever
//! marked deleted by mistake.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::helpers::*;
use lms_sync::config::AccountSettings;
use lms_sync::devkit::simulator::Simulator;
use lms_sync::domain::RunCounts;
use lms_sync::sync::{sync_accounts, NoProgress, Progress, SyncOptions, SyncOutcome};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sustained_fifth_of_requests_failing_across_accounts_still_ends_exact() {
    // LMS_SYNC_CHAOS_SCALE multiplies the accounts' sizes (the full variant uses 20).
    let scale: usize = std::env::var("LMS_SYNC_CHAOS_SCALE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let accounts: Vec<_> = (1..=4)
        .map(|i| (account_id(i), (150 + 110 * i as usize) * scale))
        .collect();
    let mut env = Env::new(&accounts).await;
    env.settings.truto.max_attempts = 20;
    env.settings.truto.request_timeout_secs = 1;
    // 429s with and without hints, 500/502/504, resets, bodies cut mid-JSON, and answers that
    // stall mid-body or come later than the request timeout.
    env.sim.set_random_faults(0.2, 2026);
    env.sim
        .set_random_slow_faults(Some(Duration::from_millis(1500)));
    let list: Vec<AccountSettings> = accounts
        .iter()
        .map(|(id, _)| AccountSettings::new(*id))
        .collect();
    let opts = SyncOptions::from_settings(&env.settings);

    let outcomes = sync_accounts(
        &env.store,
        &env.client(),
        &list,
        &opts,
        4,
        &CancellationToken::new(),
        Arc::new(NoProgress),
    )
    .await;

    assert!(
        outcomes.iter().all(SyncOutcome::succeeded),
        "{:?}",
        outcomes.iter().map(|o| &o.error).collect::<Vec<_>>()
    );
    let retries: u64 = outcomes.iter().map(|o| o.counts.retries).sum();
    assert!(retries > 0, "faults were served and retried");
    assert!(env.sim.stats().faults_served > 0);
    for (id, _) in &accounts {
        assert_mirror(&env.store, &env.sim, *id).await;
    }
    // And a second pass under the same faults writes nothing.
    let again = sync_accounts(
        &env.store,
        &env.client(),
        &list,
        &opts,
        4,
        &CancellationToken::new(),
        Arc::new(NoProgress),
    )
    .await;
    assert!(again
        .iter()
        .all(|o| o.succeeded() && o.counts.inserted + o.counts.updated + o.counts.deleted == 0));
}

/// Changes the upstream listing once, after the first committed page: deletes users the pass
/// has already listed and one it has not reached, and adds new ones at the end.
struct ChangeUpstream<'a> {
    sim: &'a Simulator,
    account: uuid::Uuid,
    done: AtomicBool,
}

impl Progress for ChangeUpstream<'_> {
    fn page(&self, _account: &AccountSettings, _totals: &RunCounts) {
        if !self.done.swap(true, Ordering::SeqCst) {
            self.sim.delete_user(self.account, "3");
            self.sim.delete_user(self.account, "4");
            self.sim.delete_user(self.account, "550");
            self.sim.add_users(self.account, 5);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_changes_during_a_run_converge_on_the_next_and_never_delete_a_live_user() {
    let a = account_id(1);
    let mut env = Env::new(&[(a, 600)]).await;
    assert!(env.sync(a).await.succeeded());
    // Slow pages, each committed as it arrives, so that the change lands while the listing is
    // under way.
    env.sim.set_latency(Duration::from_millis(20));
    env.settings.sync.batch_fill_ms = 0;
    let hook = ChangeUpstream {
        sim: &env.sim,
        account: a,
        done: AtomicBool::new(false),
    };

    let o = env
        .sync_with(&env.account(a), &CancellationToken::new(), &hook)
        .await;

    assert!(o.succeeded(), "{:?}", o.error);
    assert_eq!(
        o.counts.inserted, 5,
        "users added mid-run are listed at the end"
    );
    assert_eq!(
        o.counts.deleted, 1,
        "only the user gone before the listing reached it"
    );
    // No user that exists upstream is marked deleted.
    let expected: Vec<String> = env
        .sim
        .expected_users(a)
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_string())
        .collect();
    let wrongly_deleted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM users WHERE integrated_account_id = $1 AND deleted_at IS NOT NULL AND id = ANY($2)",
    )
    .bind(a)
    .bind(&expected)
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert_eq!(wrongly_deleted, 0);

    // The next complete listing converges: the users deleted behind the pass go too.
    let next = env.sync(a).await;
    assert!(next.succeeded());
    assert_eq!(next.counts.deleted, 2);
    assert_mirror(&env.store, &env.sim, a).await;
}
