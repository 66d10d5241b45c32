//! The scheduler loop: it only decides *when* each account runs (through the pure
//! [`crate::schedule::next_run`], over run history kept in PostgreSQL so that replicas agree),
//! for the accounts of the fleet (the pure [`crate::fleet::plan`] over the registry, re-read
//! every round, so what any replica or an operator changed is obeyed within seconds), starts
//! each run as a task (the same pass as the CLI's [`crate::sync::sync_account`]), and notes
//! how runs ended. Runs live on a task tracker; shutdown, or an account paused or retired
//! while its run goes on, cancels them between pages (the latter saying why).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::config::{AccountSettings, Settings};
use crate::domain::{Health, Outcome};
use crate::fleet::{plan, Gate, Planned};
use crate::metrics::Metrics;
use crate::schedule::{next_run, Backlog, RunHistory, Schedule};
use crate::source::TrutoClient;
use crate::store::{LockWait, Store, StoreError};
use crate::sync::{sync_account_stopped_by, PassStatus, Progress, SyncOptions};

use super::{Live, Readiness};

/// How often the scheduler re-reads the registry and run history even when nothing is due (so
/// that it notices what other replicas and operators did): two cheap reads per round.
pub(super) const RESCAN: Duration = Duration::from_secs(2);

/// What the loop holds between its rounds.
struct Scheduler {
    /// The settings as of this round (see `follow_settings`).
    settings: Settings,
    live: Live,
    store: Store,
    source: Arc<TrutoClient>,
    opts: Arc<SyncOptions>,
    metrics: Arc<Metrics>,
    progress: Arc<dyn Progress>,
    root: CancellationToken,
    /// What `schedule.run_on_start` counts from: this process's start, or the epoch when it
    /// joined replicas already running (nothing is due for having run before it), and while
    /// that is not known yet.
    started: DateTime<Utc>,
    tracker: TaskTracker,
    /// The accounts being synced by this process, and how to stop each run (and say why).
    running: Arc<Mutex<HashMap<Uuid, Stopper>>>,
    /// The fleet as of the last round.
    fleet: HashMap<Uuid, Planned>,
    /// Woken when discovery changed the registry: look again at once.
    wake: Arc<tokio::sync::Notify>,
    /// After a `busy` answer (another replica holds the lease) or a store failure, not before this.
    not_before: HashMap<Uuid, DateTime<Utc>>,
    /// The accounts due that the last round could not start, each since the first round that
    /// found it so ([`Backlog`]).
    waiting_since: HashMap<Uuid, DateTime<Utc>>,
    /// The health each account's gauges were last set to by a round: a round sets only what
    /// changed (at 10,000 accounts, setting 50,000 series every round was most of an idle
    /// service's CPU).
    shown: HashMap<Uuid, Health>,
    done_tx: mpsc::UnboundedSender<(Uuid, PassStatus)>,
    /// Ticked at every round, for `/readyz`; it also holds why no run starts while the
    /// database accepts no writes (see `check_writes`), for `/readyz` and the status page.
    ready: Arc<Readiness>,
    /// The write refusal (`Store::write_refused_at`) the database was last asked about.
    writes_checked: Option<u64>,
    /// The listing refused for another environment (its `listed_at`) this process last
    /// checked its own token after.
    environment_checked: Option<DateTime<Utc>>,
}

/// How the loop stops a run: the reason is set before the token is cancelled, and the run
/// records it.
#[derive(Clone)]
struct Stopper {
    cancel: CancellationToken,
    why: Arc<OnceLock<String>>,
}

/// What the loop is given to work with.
pub(super) struct Parts {
    /// The settings in force (replaced on SIGHUP); read at every round.
    pub settings: Live,
    pub store: Store,
    pub source: Arc<TrutoClient>,
    pub metrics: Arc<Metrics>,
    pub progress: Arc<dyn Progress>,
    /// Cancelled on shutdown; each run gets a child of it.
    pub root: CancellationToken,
    /// Cancelled once the process is done with Truto (after `root`, when the webhook
    /// deliveries still being applied have ended): the share of the token's request budget
    /// lives until then, since their requests need it.
    pub lifetime: CancellationToken,
    /// Ticked at every round, for `/readyz`.
    pub ready: Arc<Readiness>,
    /// Notified when the registry changed (discovery): the next round starts at once.
    pub wake: Arc<tokio::sync::Notify>,
}

/// Runs the loop until `root` is cancelled, then waits for the runs in flight. Ends early only
/// for what no retry can fix (a schema migrated by an incompatible newer version).
pub(super) async fn run(parts: Parts) -> Result<(), StoreError> {
    let Parts {
        settings: live,
        store,
        source,
        metrics,
        progress,
        root,
        lifetime,
        ready,
        wake,
    } = parts;
    let settings = live.borrow().as_ref().clone();
    if !wait_for_database(&store, settings.database.migrate, &root).await? {
        return Ok(());
    }
    if let Some(budget) = source.budget() {
        // The token's window is shared with every process on this database (once the schema
        // is ready: the shares live in it).
        tokio::spawn(super::budget::share_token_budget(
            store.clone(),
            budget,
            source.watch_standing(),
            Some(metrics.clone()),
            Some(live.clone()),
            lifetime,
        ));
    }
    if let Err(e) = store.register_configured(&settings.accounts).await {
        tracing::warn!(error = %e, "could not register the configured accounts; each is registered at its first run");
    }
    // `schedule.run_on_start` syncs every account at once when the fleet starts, not each time
    // one replica does: a replica joining others that run (a rollout, a restart, a scale-up)
    // leaves the accounts they synced to their schedule, as if the fleet had always run. Only
    // the accounts never synced are due at once then.
    let process_started = Utc::now();
    // Whether other processes run is known only after a budget period or so (see
    // `others_running`); meanwhile the accounts never synced start (due at once either way),
    // and the synced ones wait for the answer.
    let (joining_tx, mut joining) = tokio::sync::watch::channel(None::<bool>);
    let mut deciding = settings.schedule.run_on_start;
    let started = if deciding {
        let (settings, store, source, root) = (
            settings.clone(),
            store.clone(),
            source.clone(),
            root.clone(),
        );
        tokio::spawn(async move {
            let others = others_running(&settings, &store, &source, &root).await;
            let _ = joining_tx.send(Some(others));
        });
        DateTime::<Utc>::UNIX_EPOCH
    } else {
        process_started
    };
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    metrics.set("lms_sync_database_read_only", &[], 0.0);
    let opts = Arc::new(options(&settings, &metrics));
    let mut s = Scheduler {
        opts,
        settings,
        store,
        source,
        live: live.clone(),
        metrics,
        progress,
        root,
        started,
        tracker: TaskTracker::new(),
        running: Arc::default(),
        fleet: HashMap::new(),
        wake,
        not_before: HashMap::new(),
        waiting_since: HashMap::new(),
        shown: HashMap::new(),
        done_tx,
        ready: ready.clone(),
        writes_checked: None,
        environment_checked: None,
    };
    s.tracker.spawn(super::lock_watch::run(
        s.store.clone(),
        live.clone(),
        Some(s.metrics.clone()),
        s.root.clone(),
    ));
    s.tracker.spawn(super::truto_watch::run(
        s.source.clone(),
        s.metrics.clone(),
        s.wake.clone(),
        s.root.clone(),
    ));
    if s.settings.discovery.enabled {
        s.tracker.spawn(super::discovery::run(
            s.store.clone(),
            s.source.clone(),
            live.clone(),
            s.ready.clone(),
            s.metrics.clone(),
            s.wake.clone(),
            s.root.clone(),
        ));
    }
    while !s.root.is_cancelled() {
        ready.tick();
        s.follow_settings();
        if deciding {
            if let Some(others) = *joining.borrow_and_update() {
                deciding = false;
                if others {
                    tracing::info!(
                        "other replicas are running: the accounts they synced keep their \
                         schedule (schedule.run_on_start applies when no replica runs)"
                    );
                } else {
                    s.started = process_started;
                }
            }
        }
        // The runs in flight before the read: one of them may end before `start_due` looks,
        // with its start not yet in what the read returned (a run of one page takes less than
        // a read of 10,000 accounts): it is not started again on that stale history.
        let in_flight: HashSet<Uuid> = s.running.lock().expect("running").keys().copied().collect();
        // With several hosts in database.url, a lost connection or a refused write may mean
        // another is the primary now: looked at before this round's reads.
        s.store.choose_host().await;
        let read = async {
            Ok::<_, StoreError>((
                s.store.registry().await?,
                s.store.run_histories(None).await?,
            ))
        };
        let (mut registry, histories) = match read.await {
            Ok(h) => h,
            Err(e) => {
                let e = s.store.explain(e).await;
                tracing::error!(error = %e, "cannot read run history; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    _ = s.root.cancelled() => break,
                }
            }
        };
        s.end_lapsed_pauses(&mut registry).await;
        s.fleet = plan(&s.settings, &registry)
            .into_iter()
            .map(|p| (p.id(), p))
            .collect();
        s.show_health(&histories);
        s.stop_gated();
        s.check_writes().await;
        s.check_environment().await;
        let wake = s.start_due(&histories, &in_flight);
        let woken = s.wake.clone();
        tokio::select! {
            _ = tokio::time::sleep((wake - Utc::now()).to_std().unwrap_or(Duration::ZERO)) => {}
            Some((id, status)) = done_rx.recv() => s.ended(id, status),
            _ = woken.notified() => {}
            Ok(()) = joining.changed(), if deciding => {}
            _ = s.root.cancelled() => {}
        }
        // Every run that ended meanwhile, in this one round: a round per run read the whole
        // registry and history once per run, and at 10,000 accounts fell minutes behind the
        // runs of a sweep.
        while let Ok((id, status)) = done_rx.try_recv() {
            s.ended(id, status);
        }
    }
    ready.stopped();
    s.tracker.close();
    s.tracker.wait().await;
    Ok(())
}

/// Whether another process shares the request budget now: other replicas (or a one-off
/// `sync`) are running. One that has just ended can still look alive for a moment (its
/// backend exiting, its row left when it could not leave), so a holder counts only when its
/// share is renewed while this process looks (a running one renews every budget period);
/// this waits up to two leases, and only when another holder is there at all (after up to a
/// lease for this process's own share to be recorded). False without a shared budget, or when
/// it cannot be read: the process then starts as the first of its fleet.
async fn others_running(
    settings: &Settings,
    store: &Store,
    source: &TrutoClient,
    cancel: &CancellationToken,
) -> bool {
    let Some(budget) = source.budget() else {
        return false;
    };
    // This process's own share is renewed while it looks too: it is not another replica.
    let me = super::budget::holder_name(&budget);
    // The live holders, this process's own share among them when it is recorded.
    let holders = || async {
        match super::status::read_budget(settings, store).await {
            Ok(Some(section)) => Some(
                section
                    .view
                    .holders
                    .into_iter()
                    .filter(|h| h.alive)
                    .map(|h| (h.holder, h.renewed_at))
                    .collect::<HashMap<_, _>>(),
            ),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read which processes share the request budget; syncing every account as at the fleet's start");
                None
            }
        }
    };
    // A quarter period between two reads; false when the process stops meanwhile.
    let pause = || async {
        tokio::select! {
            _ = tokio::time::sleep(budget.period() / 4) => true,
            _ = cancel.cancelled() => false,
        }
    };
    // The look starts once this process's own share is recorded (its first round comes at
    // once), so that what it reads does not hang on which of the two tasks came first.
    let joined_by = tokio::time::Instant::now() + budget.lease();
    let first = loop {
        let Some(mut all) = holders().await else {
            return false;
        };
        if all.remove(&me).is_some() || tokio::time::Instant::now() >= joined_by {
            break all;
        }
        if !pause().await {
            return false;
        }
    };
    if first.is_empty() {
        return false;
    }
    let deadline = tokio::time::Instant::now() + budget.lease() * 2;
    while tokio::time::Instant::now() < deadline {
        if !pause().await {
            return false;
        }
        let Some(mut now) = holders().await else {
            return false;
        };
        now.remove(&me);
        if now
            .iter()
            .any(|(holder, at)| first.get(holder).is_some_and(|before| at > before))
        {
            return true;
        }
        if now.is_empty() {
            return false;
        }
    }
    false
}

/// The knobs of each pass, from the settings.
fn options(settings: &Settings, metrics: &Arc<Metrics>) -> SyncOptions {
    let mut opts = SyncOptions::from_settings(settings);
    opts.metrics = Some(metrics.clone());
    opts
}

impl Scheduler {
    /// Takes a reloaded configuration: runs under way go on with the settings they started
    /// with; the next runs, schedules and the fleet follow the new ones.
    fn follow_settings(&mut self) {
        if !self.live.has_changed().unwrap_or(false) {
            return;
        }
        self.settings = self.live.borrow_and_update().as_ref().clone();
        self.opts = Arc::new(options(&self.settings, &self.metrics));
        tracing::info!("following the reloaded configuration");
    }

    fn show_health(&mut self, histories: &HashMap<Uuid, RunHistory>) {
        let mut states: std::collections::BTreeMap<&'static str, usize> =
            ["active", "paused", "retired", "excluded", "gated"]
                .into_iter()
                .map(|s| (s, 0))
                .collect();
        for p in self.fleet.values() {
            let state = match p.gate {
                Gate::Sync => "active",
                Gate::Paused => "paused",
                Gate::Retired => "retired",
                Gate::Excluded(_) => "excluded",
                Gate::TrutoStatus(_) => "gated",
            };
            *states.entry(state).or_default() += 1;
        }
        for (state, n) in states {
            self.metrics
                .set("lms_sync_fleet_accounts", &[("state", state)], n as f64);
        }
        self.shown.retain(|id, _| self.fleet.contains_key(id));
        for id in self.fleet.keys().copied() {
            let health = histories
                .get(&id)
                .and_then(|h| h.health)
                .unwrap_or(Health::Ok);
            if self.shown.insert(id, health) != Some(health) {
                super::set_health_gauges(&self.metrics, id, health);
            }
        }
    }

    /// Whether the database accepts writes, asked (one query) only after a write was refused
    /// since it was last asked, and at every round while it does not: meanwhile every run
    /// would fail alike at its first write, one account after another, each after its
    /// retries (a storage-full read-only mode lasts until someone acts). The runs under way
    /// retry their writes on their own; none starts until it takes writes again.
    async fn check_writes(&mut self) {
        let held = self.ready.refusing_writes().is_some();
        if !held && self.store.write_refused_at() <= self.writes_checked {
            return;
        }
        match self.store.refuses_writes().await {
            Ok(Some(why)) => {
                if !held {
                    tracing::error!(why = %why, "the database accepts no writes; no run starts until it does");
                    self.metrics.set("lms_sync_database_read_only", &[], 1.0);
                    self.ready.read_only(Some(why));
                }
            }
            Ok(None) => {
                if held {
                    self.store.writes_taken_again();
                    tracing::info!("the database accepts writes again; runs start");
                    self.metrics.set("lms_sync_database_read_only", &[], 0.0);
                    self.ready.read_only(None);
                }
            }
            // The round's reads say what fails; asked again next round.
            Err(_) => return,
        }
        // Its own look counts (a session found read-only is noted as a refusal).
        self.writes_checked = self.store.write_refused_at();
    }

    /// Whether this process's API token lists the environment the registry follows, checked
    /// (one listing request) when a listing made by any process since the last that succeeded
    /// showed another one (`discovery_state.other_environment_id`), once per such listing,
    /// and when the registry moved on to another environment while this process held its
    /// runs for the one it followed before (`accounts discover --adopt-environment`). Without
    /// it only the process that listed would hold; every other one would run each account
    /// into a 404 and mark it `not_found`. The hold itself is lifted by the Truto watch's
    /// checks (see [`crate::source::TrutoClient::probe`]). One query a round, with discovery.
    async fn check_environment(&mut self) {
        if !self.settings.discovery.enabled {
            return;
        }
        // The round's reads say what fails; asked again next round.
        let Ok(Some(known)) = self.store.environments().await else {
            return;
        };
        let due = match self.source.other_environment() {
            Some(held) => known.follows.as_deref() != Some(held.follows.as_str()),
            None => {
                known.other.is_some()
                    && self.source.halt().is_none()
                    && self.environment_checked != known.listed_at
            }
        };
        if !due {
            return;
        }
        self.environment_checked = known.listed_at;
        tracing::info!(
            follows = known.follows.as_deref(),
            "checking which Truto environment's integrated accounts this process's API token \
             lists: a listing showed another environment's, or the mirror moved on to another"
        );
        if let Err(f) = self
            .source
            .check_environment(known.follows.as_deref(), Some(2), &self.root)
            .await
        {
            tracing::warn!(error = %f.error, "cannot check which Truto environment the API token lists; its runs go on");
        }
    }

    /// Resumes the accounts of `registry` whose pause has reached the end an operator gave it
    /// (`accounts pause --until`), in the database and in `registry`. Any replica may: the first
    /// to look does, once. Not while the database takes no writes (the next round does).
    async fn end_lapsed_pauses(&self, registry: &mut [crate::domain::AccountRow]) {
        let now = Utc::now();
        let lapsed = |r: &crate::domain::AccountRow| r.pause_end().is_some_and(|t| t <= now);
        if !registry.iter().any(lapsed) || self.ready.refusing_writes().is_some() {
            return;
        }
        let by = crate::store::Acting {
            actor: format!(
                "lms-sync at the end of its pause (accounts pause --until; replica {})",
                crate::sync::worker_name()
            ),
            reason: None,
        };
        match self.store.end_lapsed_pauses(&by).await {
            Ok(resumed) => {
                for row in registry
                    .iter_mut()
                    .filter(|r| resumed.contains(&r.integrated_account_id))
                {
                    tracing::info!(
                        account = %row.integrated_account_id,
                        until = ?row.paused_until,
                        "the account's pause has ended (accounts pause --until): resumed"
                    );
                    row.paused = false;
                    row.paused_until = None;
                }
            }
            Err(e) => {
                let e = self.store.explain(e).await;
                tracing::warn!(error = %e, "cannot resume the accounts whose pause has ended; the next round tries again");
            }
        }
    }

    /// Starts every account that is due (up to `sync.max_concurrent_accounts` running), counts
    /// those left waiting (`show_backlog`), and returns when to look again. None starts while
    /// Truto refuses the API token or does not answer, or while the database accepts no
    /// writes: each would fail alike (the Truto watch wakes the loop when that ends; the
    /// database is asked again every round).
    ///
    /// `in_flight`: the runs under way before `histories` was read; none of them is started
    /// again in this round, even if it has ended since (the next round's read has its start).
    fn start_due(
        &mut self,
        histories: &HashMap<Uuid, RunHistory>,
        in_flight: &HashSet<Uuid>,
    ) -> DateTime<Utc> {
        let now = Utc::now();
        let rescan = now + chrono::Duration::from_std(RESCAN).expect("small");
        let mut wake = rescan;
        let max = self.settings.sync.max_concurrent_accounts;
        // In a stable order (the registry's), so that a large fleet starts in the same order on
        // every replica and round.
        let mut due_now: Vec<(&Planned, Schedule)> = Vec::new();
        for p in self.fleet.values().filter(|p| p.gate.syncs()) {
            let id = p.id();
            if in_flight.contains(&id) || self.running.lock().expect("running").contains_key(&id) {
                continue;
            }
            let history = histories.get(&id).cloned().unwrap_or_default();
            let schedule = self.settings.schedule_for(&p.account);
            let due = self.due(p, &history, &schedule);
            if due > now {
                wake = wake.min(due);
            } else {
                due_now.push((p, schedule));
            }
        }
        due_now.sort_by_key(|(p, _)| p.id());
        let halted = self.source.halt().is_some() || self.ready.refusing_writes().is_some();
        let mut waiting: Vec<(Uuid, Schedule)> = Vec::new();
        for (p, schedule) in due_now {
            if halted || self.running.lock().expect("running").len() >= max {
                // It waits for a run slot, unless another process syncs it (its run is in
                // the history): counted for the fleet's backlog.
                let elsewhere = histories
                    .get(&p.id())
                    .is_some_and(|h| h.last_outcome == Some(Outcome::Running));
                if !elsewhere {
                    waiting.push((p.id(), schedule));
                }
                continue;
            }
            self.spawn_run(&p.account);
        }
        self.show_backlog(waiting, now);
        if halted {
            return rescan;
        }
        if self.running.lock().expect("running").len() >= max {
            // Nothing more starts before a run ends, which wakes the loop: the accounts coming
            // due meanwhile (a sweep's jittered starts, milliseconds apart) need no round each.
            return rescan;
        }
        wake
    }

    /// Counts the accounts `waiting` for a run slot (each since the first round that found it
    /// so), exports the backlog and hands it to the status page.
    fn show_backlog(&mut self, waiting: Vec<(Uuid, Schedule)>, now: DateTime<Utc>) {
        let mut backlog = Backlog::default();
        let mut since = HashMap::new();
        for (id, schedule) in waiting {
            let at = self.waiting_since.get(&id).copied().unwrap_or(now);
            backlog.add(&schedule, at, now);
            since.insert(id, at);
        }
        self.waiting_since = since;
        self.metrics
            .set("lms_sync_accounts_waiting", &[], backlog.waiting as f64);
        self.metrics.set(
            "lms_sync_accounts_behind_schedule",
            &[],
            backlog.behind as f64,
        );
        self.metrics.set(
            "lms_sync_schedule_lag_seconds",
            &[],
            backlog.longest.as_secs_f64(),
        );
        self.ready.set_backlog(backlog);
    }

    /// When the account is due: `accounts sync-now` makes it due at once; otherwise its
    /// schedule, after a `busy` or store failure not before `not_before`.
    fn due(&self, p: &Planned, history: &RunHistory, schedule: &Schedule) -> DateTime<Utc> {
        let id = p.id();
        let requested = p.row.as_ref().and_then(|r| r.sync_requested_at);
        if let Some(at) = requested {
            if history.last_started_at.is_none_or(|started| started < at) {
                return at;
            }
        }
        let due = next_run(schedule, id, history, self.started);
        match self.not_before.get(&id) {
            Some(nb) => due.max(*nb),
            None => due,
        }
    }

    /// Stops the runs of accounts that may no longer be synced (paused, retired, gated): the
    /// page in flight commits, then the run ends as interrupted, saying why.
    fn stop_gated(&self) {
        for (id, stop) in self.running.lock().expect("running").iter() {
            // (An account that left the configuration finishes its run.)
            let Some(p) = self.fleet.get(id).filter(|p| !p.gate.syncs()) else {
                continue;
            };
            if !stop.cancel.is_cancelled() {
                let state = p.gate.state();
                tracing::info!(account = %id, %state, "the account may no longer be synced; its run stops after the page in flight");
                let _ = stop.why.set(format!("the account is now {state}"));
                stop.cancel.cancel();
            }
        }
    }

    /// Runs one pass over `account` as a task of its own.
    fn spawn_run(&self, account: &AccountSettings) {
        let id = account.integrated_account_id;
        let stop = Stopper {
            cancel: self.root.child_token(),
            why: Arc::default(),
        };
        {
            let mut running = self.running.lock().expect("running");
            running.insert(id, stop.clone());
            self.metrics
                .set("lms_sync_running_accounts", &[], running.len() as f64);
        }
        let (store, source, opts, account, stop, tx, running, metrics, progress) = (
            self.store.clone(),
            self.source.clone(),
            self.opts.clone(),
            account.clone(),
            stop,
            self.done_tx.clone(),
            self.running.clone(),
            self.metrics.clone(),
            self.progress.clone(),
        );
        self.tracker.spawn(async move {
            let out = sync_account_stopped_by(
                &store,
                &source,
                &account,
                &opts,
                &stop.cancel,
                Some(&stop.why),
                progress.as_ref(),
            )
            .await;
            if let Some(h) = out.health {
                super::set_health_gauges(&metrics, id, h);
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
                let Some(p) = self.fleet.get(&id) else {
                    return;
                };
                let retry = self.settings.schedule_for(&p.account).retry_initial;
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
        match store.prepare_to_write(migrate).await {
            Ok(()) => {
                store
                    .log_connection("database reachable; migrations applied")
                    .await;
                // Not the sync's concern, but its loaders' (and nobody else would say it).
                if let Ok(Some(advice)) = store.feed_positions_ahead().await {
                    tracing::warn!(advice = %advice, "the change feed's positions come from another cluster");
                }
                return Ok(true);
            }
            Err(e @ StoreError::Incompatible(_)) => return Err(e),
            Err(StoreError::MigrationLocked(w))
                if store.lock_holders_remain(&w).await.ok().flatten() == Some(true) =>
            {
                // Trying again while they are open would only hold up the table's queries for
                // another lock timeout each time: wait for them to end, then try at once.
                tracing::error!(error = %w, "database not ready; waiting for the sessions holding the lock to end");
                if !wait_for_lock_holders(store, &w, cancel).await {
                    return Ok(false);
                }
            }
            Err(e) => {
                let wait = policy.delay(attempt, fastrand::f64());
                attempt += 1;
                let e = store.explain(e).await;
                tracing::error!(error = %e, retry_in_secs = wait.as_secs_f64(), "database not ready; waiting");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => return Ok(false),
                }
            }
        }
    }
}

/// Waits until the transactions that held up a migration have ended (looked at every second,
/// without queueing for the lock), for at most [`LOCK_HOLDERS_PATIENCE`]: then the migration
/// is tried again whatever they show. False when cancelled.
async fn wait_for_lock_holders(store: &Store, w: &LockWait, cancel: &CancellationToken) -> bool {
    let deadline = tokio::time::Instant::now() + LOCK_HOLDERS_PATIENCE;
    while tokio::time::Instant::now() < deadline {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = cancel.cancelled() => return false,
        }
        if store.lock_holders_remain(w).await.ok().flatten() != Some(true) {
            tracing::info!("the sessions holding up the migration have ended; migrating again");
            return true;
        }
    }
    true
}

/// The longest a migration that gave up on a lock waits for its holders before trying again
/// anyway (one lock timeout of held-up queries per this, should something be missed).
const LOCK_HOLDERS_PATIENCE: Duration = Duration::from_secs(600);
