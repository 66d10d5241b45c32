//! The scheduler loop: it only decides *when* each account runs (through the pure
//! [`crate::schedule::next_run`], over run history kept in PostgreSQL so that replicas agree),
//! starts each run as a task (the same [`sync_account`] step the CLI uses), and notes how runs
//! ended. Runs live on a task tracker; shutdown cancels them between pages and waits.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::config::{AccountSettings, Settings};
use crate::domain::Health;
use crate::metrics::Metrics;
use crate::schedule::{next_run, RunHistory};
use crate::source::TrutoClient;
use crate::store::{Store, StoreError};
use crate::sync::{sync_account, PassStatus, Progress, SyncOptions};

use super::Readiness;

/// How often the scheduler re-reads run history even when nothing is due (so that it notices
/// what other replicas did).
pub(super) const RESCAN: Duration = Duration::from_secs(30);

/// What the loop holds between its rounds.
struct Scheduler {
    settings: Settings,
    store: Store,
    source: Arc<TrutoClient>,
    opts: Arc<SyncOptions>,
    metrics: Arc<Metrics>,
    progress: Arc<dyn Progress>,
    root: CancellationToken,
    started: DateTime<Utc>,
    tracker: TaskTracker,
    running: Arc<Mutex<HashSet<Uuid>>>,
    /// After a `busy` answer (another replica holds the lease) or a store failure, not before this.
    not_before: HashMap<Uuid, DateTime<Utc>>,
    done_tx: mpsc::UnboundedSender<(Uuid, PassStatus)>,
}

/// What the loop is given to work with.
pub(super) struct Parts {
    pub settings: Settings,
    pub store: Store,
    pub source: TrutoClient,
    pub opts: SyncOptions,
    pub metrics: Arc<Metrics>,
    pub progress: Arc<dyn Progress>,
    /// Cancelled on shutdown; each run gets a child of it.
    pub root: CancellationToken,
    /// Ticked at every round, for `/readyz`.
    pub ready: Arc<Readiness>,
}

/// Runs the loop until `root` is cancelled, then waits for the runs in flight. Ends early only
/// for what no retry can fix (a schema migrated by an incompatible newer version).
pub(super) async fn run(parts: Parts) -> Result<(), StoreError> {
    let Parts {
        settings,
        store,
        source,
        opts,
        metrics,
        progress,
        root,
        ready,
    } = parts;
    if !wait_for_database(&store, settings.database.migrate, &root).await? {
        return Ok(());
    }
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut s = Scheduler {
        settings,
        store,
        source: Arc::new(source),
        opts: Arc::new(opts),
        metrics,
        progress,
        root,
        started: Utc::now(),
        tracker: TaskTracker::new(),
        running: Arc::default(),
        not_before: HashMap::new(),
        done_tx,
    };
    while !s.root.is_cancelled() {
        ready.tick();
        let histories = match s.store.run_histories().await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "cannot read run history; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    _ = s.root.cancelled() => break,
                }
            }
        };
        s.show_health(&histories);
        let wake = s.start_due(&histories);
        tokio::select! {
            _ = tokio::time::sleep((wake - Utc::now()).to_std().unwrap_or(Duration::ZERO)) => {}
            Some((id, status)) = done_rx.recv() => s.ended(id, status),
            _ = s.root.cancelled() => {}
        }
    }
    ready.stopped();
    s.tracker.close();
    s.tracker.wait().await;
    Ok(())
}

impl Scheduler {
    fn show_health(&self, histories: &HashMap<Uuid, RunHistory>) {
        for account in &self.settings.accounts {
            let id = account.integrated_account_id;
            let health = histories
                .get(&id)
                .and_then(|h| h.health)
                .unwrap_or(Health::Ok);
            set_health_gauges(&self.metrics, id, health);
        }
    }

    /// Starts every account that is due (up to `sync.max_concurrent_accounts` running), and
    /// returns when to look again.
    fn start_due(&mut self, histories: &HashMap<Uuid, RunHistory>) -> DateTime<Utc> {
        let now = Utc::now();
        let mut wake = now + chrono::Duration::from_std(RESCAN).expect("small");
        let max = self.settings.sync.max_concurrent_accounts;
        for account in &self.settings.accounts {
            let id = account.integrated_account_id;
            if self.running.lock().expect("running").contains(&id) {
                continue;
            }
            let schedule = self.settings.schedule_for(account);
            let history = histories.get(&id).cloned().unwrap_or_default();
            let mut due = next_run(&schedule, id, &history, self.started);
            if let Some(nb) = self.not_before.get(&id) {
                due = due.max(*nb);
            }
            if due > now {
                wake = wake.min(due);
                continue;
            }
            if self.running.lock().expect("running").len() >= max {
                continue;
            }
            self.spawn_run(account);
        }
        wake
    }

    /// Runs one pass over `account` as a task of its own.
    fn spawn_run(&self, account: &AccountSettings) {
        let id = account.integrated_account_id;
        {
            let mut running = self.running.lock().expect("running");
            running.insert(id);
            self.metrics
                .set("lms_sync_running_accounts", &[], running.len() as f64);
        }
        let (store, source, opts, account, cancel, tx, running, metrics, progress) = (
            self.store.clone(),
            self.source.clone(),
            self.opts.clone(),
            account.clone(),
            self.root.child_token(),
            self.done_tx.clone(),
            self.running.clone(),
            self.metrics.clone(),
            self.progress.clone(),
        );
        self.tracker.spawn(async move {
            let out =
                sync_account(&store, &source, &account, &opts, &cancel, progress.as_ref()).await;
            if let Some(h) = out.health {
                set_health_gauges(&metrics, id, h);
            }
            let mut r = running.lock().expect("running");
            r.remove(&id);
            metrics.set("lms_sync_running_accounts", &[], r.len() as f64);
            let _ = tx.send((id, out.status));
        });
    }

    /// Notes how a run ended: an account that was busy elsewhere, or whose run could not be
    /// recorded, waits `retry_initial` before it is tried again.
    fn ended(&mut self, id: Uuid, status: PassStatus) {
        match status {
            PassStatus::Busy | PassStatus::StoreFailed => {
                let Some(account) = self.settings.account(id) else {
                    return;
                };
                let retry = self.settings.schedule_for(account).retry_initial;
                let until = Utc::now() + chrono::Duration::from_std(retry).expect("small");
                self.not_before.insert(id, until);
            }
            PassStatus::Finished(_) => {
                self.not_before.remove(&id);
            }
        }
    }
}

/// Waits until the database is reachable and its schema ready (migrated here when `migrate`),
/// logging each failed attempt. A schema migrated by a newer, incompatible version is not
/// waited for: nothing this process can do fixes it, so it stops with the error.
async fn wait_for_database(
    store: &Store,
    migrate: bool,
    cancel: &CancellationToken,
) -> Result<bool, StoreError> {
    let policy = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(30),
        max_attempts: u32::MAX,
        max_total_wait: Duration::MAX,
    };
    let mut attempt = 0;
    loop {
        match store.prepare(migrate).await {
            Ok(()) => {
                tracing::info!("database reachable; migrations applied");
                return Ok(true);
            }
            Err(e @ StoreError::Incompatible(_)) => return Err(e),
            Err(e) => {
                let wait = policy.delay(attempt, fastrand::f64());
                attempt += 1;
                tracing::error!(error = %e, retry_in_secs = wait.as_secs_f64(), "database not ready; waiting");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => return Ok(false),
                }
            }
        }
    }
}

/// One `lms_sync_account_health` series per health value: 1 for the account's, 0 for the rest.
fn set_health_gauges(metrics: &Metrics, account: Uuid, health: Health) {
    let a = account.to_string();
    for h in Health::ALL {
        let v = if *h == health { 1.0 } else { 0.0 };
        metrics.set(
            "lms_sync_account_health",
            &[("account", &a), ("health", h.as_str())],
            v,
        );
    }
}
