//! `lms-sync run`: the long-lived service. The scheduler only decides *when* (through the pure
//! functions of [`crate::schedule`], over run history kept in PostgreSQL so that replicas agree);
//! each run is the same [`crate::sync::sync_account`] step the CLI and tests use. One
//! cancellation tree: the shutdown future cancels the root token, running passes stop between
//! pages, and the daemon waits for them up to the grace period.

mod ops;
mod signals;

pub use signals::{shutdown_on_signals, wait_for_signal};

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::config::Settings;
use crate::domain::Health;
use crate::metrics::Metrics;
use crate::schedule::next_run;
use crate::source::TrutoClient;
use crate::store::Store;
use crate::sync::{sync_account, NoProgress, PassStatus, Progress, SyncOptions};

/// How often the scheduler re-reads run history even when nothing is due (so that it notices
/// what other replicas did).
const RESCAN: Duration = Duration::from_secs(30);

/// What a caller (the tests) may hand the daemon instead of its defaults.
#[derive(Default)]
pub struct Hooks {
    /// Told of every run's start, pages and end.
    pub progress: Option<Arc<dyn Progress>>,
    /// An already-bound listener for the operations server (instead of `server.listen`).
    pub listener: Option<TcpListener>,
    /// The registry to count in (so a test can read it).
    pub metrics: Option<Arc<Metrics>>,
}

/// Runs the service until `shutdown` completes. Returns after in-flight pages have committed
/// (or the grace period ran out). Errors only for what cannot be retried (bad settings).
pub async fn run(
    settings: Settings,
    token: SecretString,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with(settings, token, shutdown, Hooks::default()).await
}

/// [`run`] with hooks.
pub async fn run_with(
    settings: Settings,
    token: SecretString,
    shutdown: impl Future<Output = ()>,
    hooks: Hooks,
) -> anyhow::Result<()> {
    let metrics = hooks.metrics.unwrap_or_default();
    let progress: Arc<dyn Progress> = hooks.progress.unwrap_or_else(|| Arc::new(NoProgress));
    let root = CancellationToken::new();
    let url = settings.database_url()?.clone();
    let store = Store::connect_lazy(&url, &settings.database)?;

    let source = TrutoClient::from_settings(&settings, &token)?.with_metrics(metrics.clone());
    let mut opts = SyncOptions::from_settings(&settings);
    opts.metrics = Some(metrics.clone());

    let listener = match hooks.listener {
        Some(l) => Some(l),
        None if settings.server.listen.is_empty() => None,
        None => {
            let addr: SocketAddr = settings.server.listen.parse()?;
            Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| anyhow::anyhow!("server.listen: cannot listen on {addr}: {e}"))?,
            )
        }
    };
    let server = if let Some(listener) = listener {
        tracing::info!(addr = %listener.local_addr()?, "operations server listening (/healthz, /readyz, /metrics)");
        Some(tokio::spawn(ops::serve(
            listener,
            store.clone(),
            metrics.clone(),
            root.clone(),
        )))
    } else {
        None
    };

    tokio::pin!(shutdown);
    let stopped = root.clone();
    let scheduler = scheduler(
        settings.clone(),
        store.clone(),
        source,
        opts,
        metrics,
        progress,
        root.clone(),
    );
    tokio::pin!(scheduler);
    tokio::select! {
        _ = &mut shutdown => {
            tracing::warn!("shutdown requested: no new runs; waiting for pages in flight");
            stopped.cancel();
        }
        _ = &mut scheduler => {}
    }
    let grace = Duration::from_secs(settings.sync.shutdown_grace_secs);
    if tokio::time::timeout(grace, &mut scheduler).await.is_err() {
        tracing::error!(grace_secs = grace.as_secs(), "runs did not stop within the grace period; exiting anyway (uncommitted pages are rolled back and redone next time)");
    }
    if let Some(s) = server {
        s.abort();
    }
    store.pool().close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Waits until the database is reachable and migrated, logging each failed attempt.
async fn wait_for_database(store: &Store, cancel: &CancellationToken) -> bool {
    let policy = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(30),
        max_attempts: u32::MAX,
        max_total_wait: Duration::MAX,
    };
    let mut attempt = 0;
    loop {
        match store.migrate().await {
            Ok(()) => {
                tracing::info!("database reachable; migrations applied");
                return true;
            }
            Err(e) => {
                let wait = policy.delay(attempt, fastrand::f64());
                attempt += 1;
                tracing::error!(error = %e, retry_in_secs = wait.as_secs_f64(), "database not ready; waiting");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => return false,
                }
            }
        }
    }
}

async fn scheduler(
    settings: Settings,
    store: Store,
    source: TrutoClient,
    opts: SyncOptions,
    metrics: Arc<Metrics>,
    progress: Arc<dyn Progress>,
    root: CancellationToken,
) {
    if !wait_for_database(&store, &root).await {
        return;
    }
    let started = Utc::now();
    let tracker = TaskTracker::new();
    let running: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
    // After a `busy` answer (another replica holds the lease) or a store failure, not before this.
    let mut not_before: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(Uuid, PassStatus)>();
    let max = settings.sync.max_concurrent_accounts;
    let source = Arc::new(source);
    let opts = Arc::new(opts);

    while !root.is_cancelled() {
        let histories = match store.run_histories().await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "cannot read run history; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    _ = root.cancelled() => break,
                }
            }
        };
        for account in &settings.accounts {
            let id = account.integrated_account_id;
            let health = histories
                .get(&id)
                .and_then(|h| h.health)
                .unwrap_or(Health::Ok);
            set_health_gauges(&metrics, id, health);
        }
        let now = Utc::now();
        let mut wake = now + chrono::Duration::from_std(RESCAN).expect("small");
        for account in &settings.accounts {
            let id = account.integrated_account_id;
            if running.lock().expect("running").contains(&id) {
                continue;
            }
            let schedule = settings.schedule_for(account);
            let history = histories.get(&id).cloned().unwrap_or_default();
            let mut due = next_run(&schedule, id, &history, started);
            if let Some(nb) = not_before.get(&id) {
                due = due.max(*nb);
            }
            if due > now {
                wake = wake.min(due);
                continue;
            }
            if running.lock().expect("running").len() >= max {
                continue;
            }
            running.lock().expect("running").insert(id);
            metrics.set(
                "lms_sync_running_accounts",
                &[],
                running.lock().expect("running").len() as f64,
            );
            let progress = progress.clone();
            let (store, source, opts, account, cancel, tx, running, metrics) = (
                store.clone(),
                source.clone(),
                opts.clone(),
                account.clone(),
                root.child_token(),
                done_tx.clone(),
                running.clone(),
                metrics.clone(),
            );
            tracker.spawn(async move {
                let out =
                    sync_account(&store, &source, &account, &opts, &cancel, progress.as_ref())
                        .await;
                if let Some(h) = out.health {
                    set_health_gauges(&metrics, id, h);
                }
                let mut r = running.lock().expect("running");
                r.remove(&id);
                metrics.set("lms_sync_running_accounts", &[], r.len() as f64);
                let _ = tx.send((id, out.status));
            });
        }
        tokio::select! {
            _ = tokio::time::sleep((wake - Utc::now()).to_std().unwrap_or(Duration::ZERO)) => {}
            Some((id, status)) = done_rx.recv() => {
                let retry = settings.schedule_for(settings.account(id).expect("configured")).retry_initial;
                match status {
                    PassStatus::Busy | PassStatus::StoreFailed => {
                        not_before.insert(id, Utc::now() + chrono::Duration::from_std(retry).expect("small"));
                    }
                    PassStatus::Finished(_) => {
                        not_before.remove(&id);
                    }
                }
            }
            _ = root.cancelled() => {}
        }
    }
    tracker.close();
    tracker.wait().await;
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

/// When each configured account runs next, for `status`.
pub fn next_runs(
    settings: &Settings,
    histories: &HashMap<Uuid, crate::schedule::RunHistory>,
    now: DateTime<Utc>,
) -> HashMap<Uuid, DateTime<Utc>> {
    settings
        .accounts
        .iter()
        .map(|a| {
            let mut schedule = settings.schedule_for(a);
            // `status` is not the daemon: show the regular schedule, not a start-up run.
            schedule.run_on_start = false;
            let h = histories
                .get(&a.integrated_account_id)
                .cloned()
                .unwrap_or_default();
            (
                a.integrated_account_id,
                next_run(&schedule, a.integrated_account_id, &h, now).max(now),
            )
        })
        .collect()
}
