//! `lms-sync run`: the long-lived service: the scheduler loop (`scheduler`), the operations
//! HTTP server (`ops`) and signals (`signals`). The scheduler only decides *when* (through the
//! pure functions of [`crate::schedule`], over run history kept in PostgreSQL so that replicas
//! agree); each run is the same [`crate::sync::sync_account`] step the CLI and tests use. One
//! cancellation tree: the shutdown future cancels the root token, running passes stop between
//! pages, and the daemon waits for them up to the grace period.

pub mod account_page;
mod admin;
pub mod budget;
pub mod choose;
mod discovery;
pub mod lock_watch;
mod ops;
pub mod page;
mod reload;
mod reporter;
mod scheduler;
mod signals;
pub mod status;
mod truto_watch;
mod webhooks;

pub use reload::{reload_configuration, Reload};
pub use signals::{shutdown_on_signals, wait_for_signal};

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{AccountMetrics, Settings};
use crate::domain::Health;
use crate::metrics::Metrics;
use crate::schedule::next_run;
use crate::source::TrutoClient;
use crate::store::Store;
use crate::sync::{NoProgress, Progress};

/// A scheduler whose last round is older than this is not working (rounds come every
/// [`scheduler::RESCAN`], and a database error waits 5 s before the next).
const READY_STALE: Duration = Duration::from_secs(30);

/// Whether the scheduler is working: it ticks at every round; `/readyz` answers ready only
/// while the last tick is recent.
#[derive(Debug)]
pub struct Readiness {
    /// Unix milliseconds of the last round; 0 before the first and after the loop stopped.
    last_tick_ms: std::sync::atomic::AtomicI64,
    /// While the scheduler starts no run because the database accepts no writes: why, and
    /// since when (watched by discovery, which lists no accounts meanwhile).
    read_only: tokio::sync::watch::Sender<Option<(String, DateTime<Utc>)>>,
    /// The accounts waiting for a run slot as the last round counted them.
    backlog: std::sync::Mutex<crate::schedule::Backlog>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            last_tick_ms: Default::default(),
            read_only: tokio::sync::watch::Sender::new(None),
            backlog: Default::default(),
        }
    }
}

impl Readiness {
    fn tick(&self) {
        self.last_tick_ms.store(
            chrono::Utc::now().timestamp_millis(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn stopped(&self) {
        self.last_tick_ms
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }

    fn read_only(&self, why: Option<String>) {
        self.read_only
            .send_replace(why.map(|why| (why, Utc::now())));
    }

    /// Why, and since when, the scheduler starts no run because the database accepts no
    /// writes, while it does.
    pub fn refusing_writes(&self) -> Option<(String, DateTime<Utc>)> {
        self.read_only.borrow().clone()
    }

    /// Follows [`Readiness::refusing_writes`].
    fn watch_writes(&self) -> tokio::sync::watch::Receiver<Option<(String, DateTime<Utc>)>> {
        self.read_only.subscribe()
    }

    fn set_backlog(&self, backlog: crate::schedule::Backlog) {
        *self.backlog.lock().expect("backlog") = backlog;
    }

    /// The accounts due that wait for a run slot, as the scheduler's last round counted them.
    pub fn backlog(&self) -> crate::schedule::Backlog {
        *self.backlog.lock().expect("backlog")
    }

    /// Why the scheduler is not working, if it is not.
    pub fn not_working(&self) -> Option<&'static str> {
        let last = self.last_tick_ms.load(std::sync::atomic::Ordering::Relaxed);
        let stale = READY_STALE.as_millis() as i64;
        if self.refusing_writes().is_some() {
            Some("the database accepts no writes; no run starts until it does")
        } else if last == 0 {
            Some("the scheduler is not running (waiting for the database, or stopping)")
        } else if chrono::Utc::now().timestamp_millis() - last > stale {
            Some("the scheduler has not completed a round for over 30 s")
        } else {
            None
        }
    }
}

/// What a caller (the tests) may hand the daemon instead of its defaults.
#[derive(Default)]
pub struct Hooks {
    /// Told of every run's start, pages and end.
    pub progress: Option<Arc<dyn Progress>>,
    /// An already-bound listener for the operations server (instead of `server.listen`).
    pub listener: Option<TcpListener>,
    /// The registry to count in (so a test can read it).
    pub metrics: Option<Arc<Metrics>>,
    /// How to load the configuration again, on `SIGHUP` and when its file changes (none:
    /// neither). Schedules,
    /// accounts, `[account_defaults]`, `[discovery]` and the sync knobs follow a reload at the
    /// next round, and the secrets (the API token, the admin token, the webhook secret, the
    /// database URL of `database.url_file`) are read again at once; the keys of
    /// [`crate::config::FIXED_AT_START`] need a restart.
    pub reload: Option<Reload>,
}

/// The settings in force, replaced as a whole when the configuration is reloaded.
pub type Live = tokio::sync::watch::Receiver<Arc<Settings>>;

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
    metrics.count_per_account(settings.server.per_account_counters);
    let progress: Arc<dyn Progress> = hooks.progress.unwrap_or_else(|| Arc::new(NoProgress));
    let root = CancellationToken::new();
    let url = settings.database_url()?.clone();
    let store = Store::connect_lazy(&url, &settings.database)?;

    let source =
        Arc::new(TrutoClient::from_settings(&settings, &token)?.with_metrics(metrics.clone()));
    let started = Arc::new(settings.clone());
    let (live_tx, live) = tokio::sync::watch::channel(started.clone());
    metrics.set("lms_sync_config_last_reload_successful", &[], 1.0);
    metrics.set(
        "lms_sync_config_last_reload_success_timestamp_seconds",
        &[],
        chrono::Utc::now().timestamp_millis() as f64 / 1000.0,
    );
    metrics.set("lms_sync_config_restart_pending", &[], 0.0);
    reload::warn_of_dropped_exclusions(&settings);
    if let Some(reload) = hooks.reload {
        tokio::spawn(reload_configuration(
            live_tx,
            reload,
            metrics.clone(),
            started,
        ));
    }
    // Read at shutdown from the configuration then in force.
    let grace_from = live.clone();
    let wake = Arc::new(tokio::sync::Notify::new());
    let admin_token = Rotating::new(settings.admin_token()?);
    let webhook_secret = Rotating::new(settings.webhook_secret()?);
    tokio::spawn(reload_secrets(
        live.clone(),
        source.clone(),
        store.clone(),
        admin_token.clone(),
        webhook_secret.clone(),
        root.clone(),
    ));

    let ready = Arc::new(Readiness::default());
    // Webhook deliveries still being applied (answered already): waited for at shutdown.
    let deliveries = tokio_util::task::TaskTracker::new();
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
        // From 0, so that the first delivery under another secret is an increase (an alert's).
        metrics.add(
            "lms_sync_webhook_deliveries_total",
            &[("result", "wrong_signature")],
            0.0,
        );
        let ops = ops::Ops {
            store: store.clone(),
            metrics: metrics.clone(),
            ready: ready.clone(),
            settings: live.clone(),
            source: source.clone(),
            wake: wake.clone(),
            admin_token: admin_token.clone(),
            webhook_secret: webhook_secret.clone(),
            refreshed: Arc::default(),
            deliveries: deliveries.clone(),
        };
        if settings.server.account_metrics == AccountMetrics::OneReplica {
            metrics.report_account_state(false);
            tokio::spawn(reporter::run(store.clone(), metrics.clone(), root.clone()));
        }
        Some(tokio::spawn(ops::serve(listener, ops, root.clone())))
    } else {
        None
    };

    tokio::pin!(shutdown);
    let stopped = root.clone();
    let lifetime = CancellationToken::new();
    let scheduler = scheduler::run(scheduler::Parts {
        settings: live,
        store: store.clone(),
        source,
        metrics,
        progress,
        root: root.clone(),
        lifetime: lifetime.clone(),
        ready,
        wake,
    });
    tokio::pin!(scheduler);
    let mut ended = tokio::select! {
        _ = &mut shutdown => {
            tracing::warn!("shutdown requested: no new runs; waiting for pages in flight");
            stopped.cancel();
            None
        }
        r = &mut scheduler => Some(r),
    };
    let grace = Duration::from_secs(grace_from.borrow().sync.shutdown_grace_secs);
    let until = tokio::time::Instant::now() + grace;
    if ended.is_none() {
        match tokio::time::timeout_at(until, &mut scheduler).await {
            Ok(r) => ended = Some(r),
            Err(_) => tracing::error!(grace_secs = grace.as_secs(), "runs did not stop within the grace period; exiting anyway (uncommitted pages are rolled back and redone next time)"),
        }
    }
    // A delivery answered 200 is not sent again: one dropped here would wait for the next
    // discovery listing (minutes) to be applied.
    deliveries.close();
    if !deliveries.is_empty() {
        tracing::info!(
            deliveries = deliveries.len(),
            "waiting for webhook deliveries being applied"
        );
        if tokio::time::timeout_at(until, deliveries.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                deliveries = deliveries.len(),
                "webhook deliveries not applied within the grace period; the next discovery listing applies them"
            );
        }
    }
    root.cancel();
    lifetime.cancel();
    if let Some(s) = server {
        s.abort();
    }
    store.pool().close().await;
    tracing::info!("stopped");
    // The scheduler stops on its own only for what no retry can fix (an incompatible schema).
    ended.unwrap_or(Ok(()))?;
    Ok(())
}

/// A secret of the operations server, read again from the environment or its file when the
/// configuration is reloaded, so that rotating it needs no restart.
#[derive(Clone, Default)]
pub struct Rotating(Arc<std::sync::RwLock<Option<Arc<SecretString>>>>);

impl Rotating {
    fn new(secret: Option<SecretString>) -> Self {
        Self(Arc::new(std::sync::RwLock::new(secret.map(Arc::new))))
    }

    /// The secret in force (None: its routes are off).
    pub fn get(&self) -> Option<Arc<SecretString>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `secret` in force; true when it differs from the one before.
    fn set(&self, secret: Option<SecretString>) -> bool {
        use secrecy::ExposeSecret;
        let mut held = self.0.write().unwrap_or_else(|e| e.into_inner());
        // Compared in place: no copy of either secret is made.
        let changed = held.as_deref().map(|s| s.expose_secret())
            != secret.as_ref().map(|s| s.expose_secret());
        *held = secret.map(Arc::new);
        changed
    }
}

/// Whenever the settings are replaced (SIGHUP), and every `server.secret_files_check_secs`,
/// reads the secrets again and puts those that changed in force: a rotated API token is sent
/// from the next request on (requests in flight finish with the old one; a token Truto refused
/// is tried at once), a rotated admin token or webhook secret is checked from the next call on.
///
/// The files are read, not watched: a mounted Kubernetes Secret is updated by swapping a
/// symbolic link to a new directory, which file-change notifications on the file's own path do
/// not follow, while reading a few files of at most 64 KiB every few seconds costs nothing.
/// A secret that cannot be read leaves the one in force, with an error line (on a check, once
/// until the trouble changes or ends, not every few seconds); none is ever logged.
async fn reload_secrets(
    mut live: Live,
    source: Arc<TrutoClient>,
    store: Store,
    admin: Rotating,
    webhook: Rotating,
    stop: CancellationToken,
) {
    let mut trouble = Trouble::default();
    loop {
        let every = live.borrow().server.secret_files_check_secs;
        let checked = async {
            match every {
                0 => std::future::pending().await,
                s => tokio::time::sleep(Duration::from_secs(s)).await,
            }
        };
        let by = tokio::select! {
            _ = stop.cancelled() => return,
            changed = live.changed() => {
                if changed.is_err() { return }
                "SIGHUP"
            }
            _ = checked => "file_check",
        };
        let hangup = by == "SIGHUP";
        let settings = live.borrow_and_update().clone();
        let mut tell =
            |what: &'static str, problem: Option<String>| trouble.tell(what, problem, hangup);
        match settings.api_token() {
            Ok(Some(token)) => match source.set_token(&token) {
                Ok(changed) => {
                    let mended = tell("API token", None);
                    if changed {
                        tracing::info!(by, "Truto API token reloaded; the next requests use it");
                    } else if mended {
                        tracing::info!(
                            by,
                            "the Truto API token reads again; it is the one in force"
                        );
                    }
                }
                Err(e) => {
                    if tell("API token", Some(e.to_string())) {
                        tracing::error!(by, error = %e, "the reloaded Truto API token is refused; the previous one stays in force");
                    }
                }
            },
            Ok(None) => {
                if tell("API token", Some("none".into())) {
                    tracing::error!(by, "the reloaded configuration has no Truto API token; the previous one stays in force");
                }
            }
            Err(e) => {
                if tell("API token", Some(e.to_string())) {
                    tracing::error!(by, error = %e, "cannot read the Truto API token; the previous one stays in force");
                }
            }
        }
        // The database URL, when it comes from database.url_file: new connections use the
        // rotated credentials; those open go on with theirs (PostgreSQL keeps a session whose
        // password changed, and a session ended is opened again with the new URL).
        let read = settings.database_url_from_file().and_then(|url| match url {
            Some(url) => store
                .set_url(&url)
                .map_err(|e| crate::config::ConfigError(e.to_string())),
            None => Ok(false),
        });
        match read {
            Ok(changed) => {
                let mended = tell("database URL", None);
                if changed {
                    tracing::info!(
                        by,
                        "database URL reloaded (database.url_file); new connections use it"
                    );
                } else if mended {
                    tracing::info!(by, "the database URL reads again; it is the one in force");
                }
            }
            Err(e) => {
                if tell("database URL", Some(e.to_string())) {
                    tracing::error!(by, error = %e, "cannot use the database URL in database.url_file; the previous one stays in force");
                }
            }
        }
        for (what, rotating, read) in [
            ("admin token", &admin, settings.admin_token()),
            ("webhook secret", &webhook, settings.webhook_secret()),
        ] {
            match read {
                Ok(secret) => {
                    let mended = tell(what, None);
                    let on = secret.is_some();
                    if rotating.set(secret) {
                        tracing::info!(what, on, by, "secret reloaded");
                    } else if mended {
                        tracing::info!(what, by, "the secret reads again; it is the one in force");
                    }
                }
                Err(e) => {
                    if tell(what, Some(e.to_string())) {
                        tracing::error!(what, by, error = %e, "cannot read the secret; the previous one stays in force");
                    }
                }
            }
        }
    }
}

/// What each secret's last read said was wrong, so that a file that stays unreadable is logged
/// once, not at every check.
#[derive(Default)]
struct Trouble(HashMap<&'static str, String>);

impl Trouble {
    /// Records what reading `what` said (`problem`, None when it read fine). With a problem:
    /// whether to log it (always on SIGHUP, since the operator asked; on a check only when it
    /// differs from the last). Without: whether it was in trouble until now.
    fn tell(&mut self, what: &'static str, problem: Option<String>, hangup: bool) -> bool {
        match problem {
            None => self.0.remove(what).is_some(),
            Some(p) => {
                let new = self.0.get(what) != Some(&p);
                self.0.insert(what, p);
                hangup || new
            }
        }
    }
}

/// When each account of the fleet that may be synced runs next, for `status`.
pub fn next_runs(
    settings: &Settings,
    fleet: &[crate::fleet::Planned],
    histories: &HashMap<Uuid, crate::schedule::RunHistory>,
    now: DateTime<Utc>,
) -> HashMap<Uuid, DateTime<Utc>> {
    fleet
        .iter()
        .filter(|p| p.gate.syncs())
        .map(|p| {
            let mut schedule = settings.schedule_for(&p.account);
            // `status` is not the daemon: show the regular schedule, not a start-up run.
            schedule.run_on_start = false;
            let h = histories.get(&p.id()).cloned().unwrap_or_default();
            let requested = p.row.as_ref().and_then(|r| r.sync_requested_at);
            let next = match requested {
                Some(at) if h.last_started_at.is_none_or(|s| s < at) => now,
                _ => next_run(&schedule, p.id(), &h, now).max(now),
            };
            (p.id(), next)
        })
        .collect()
}

/// One `lms_sync_account_health` series per health value: 1 for the account's, 0 for the rest.
pub(crate) fn set_health_gauges(metrics: &Metrics, account: Uuid, health: Health) {
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

#[cfg(test)]
mod tests {
    use super::Trouble;

    #[test]
    fn a_secret_files_trouble_is_told_once_per_check_and_every_time_on_sighup() {
        let mut t = Trouble::default();
        let gone = || Some("cannot read /run/secrets/token: not found".to_string());
        assert!(t.tell("API token", gone(), false), "new: told");
        assert!(
            !t.tell("API token", gone(), false),
            "the same at the next check: not"
        );
        assert!(t.tell("API token", gone(), true), "on SIGHUP: told again");
        assert!(
            t.tell("API token", Some("is empty".into()), false),
            "another trouble: told"
        );
        assert!(t.tell("admin token", gone(), false), "each secret its own");
        assert!(
            t.tell("API token", None, false),
            "read again: it was in trouble"
        );
        assert!(!t.tell("API token", None, false), "and is no longer");
        assert!(
            t.tell("API token", gone(), false),
            "trouble after a good read: told"
        );
    }
}
