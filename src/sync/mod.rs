//! One complete pass over one account: lease it, open a run, follow the cursor page by page
//! (fetching the next page while the current one is written), decide and sweep deletions after
//! a complete listing, hydrate, close the run. The one-shot CLI, the service and the tests all
//! call [`sync_account`]. This part decides; it holds no SQL and speaks no HTTP.
//!
//! - `pass`: the steps of one pass, in order.
//! - `listing`: the first page, the fetcher that runs ahead, and the writer's loop.
//! - `writer`: the pipeline of batches being written, with its invariants.
//! - `sweep`: whether a listing may infer deletions (and the delete guard).
//! - `hydrate`: fetching queued full objects.
//! - `seen`: the seen-id filter (pure).
//! - `retry`: retrying the store's retryable errors.

pub mod discovery;
mod hydrate;
mod listing;
mod pass;
mod retry;
pub mod seen;
pub mod sweep;
mod writer;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::AccountSettings;
use crate::domain::{BoxFuture, ErrorKind, Health, Outcome, RunCounts};
use crate::source::budget::RateBudget;
use crate::source::{Halt, Standing, TrutoClient};
use crate::store::{Handover, Lease, Store, StoreError, FENCE_MARGIN};

/// Knobs of one pass that do not come from the account itself.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    pub max_pages: u64,
    pub max_delete_fraction: f64,
    /// Attempts to commit one page when the database fails with a retryable error.
    pub db_max_attempts: u32,
    /// `host:pid`, recorded in `sync_runs.worker`.
    pub worker: String,
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Record every change in `user_changes` (`history.enabled`).
    pub history: bool,
    /// Prune the account's history older than this after each run; 0 keeps it.
    pub history_retention_days: u32,
    /// Prune the account's finished runs older than this after each run; 0 keeps them.
    pub sync_runs_retention_days: u32,
    /// Prune the account's rejected records not refused again for this long; 0 keeps them.
    pub rejected_records_retention_days: u32,
    /// Single-user GETs per run of a hydrating account (unless the account says otherwise).
    pub hydrate_max_per_run: u32,
    /// How long a small batch waits for the next page (`sync.batch_fill_ms`).
    pub batch_fill_wait: std::time::Duration,
}

impl SyncOptions {
    pub fn from_settings(s: &crate::config::Settings) -> Self {
        Self {
            max_pages: s.truto.max_pages,
            max_delete_fraction: s.sync.max_delete_fraction,
            db_max_attempts: s.sync.db_max_attempts,
            worker: worker_name(),
            metrics: None,
            history: s.history.enabled,
            history_retention_days: s.history.retention_days,
            sync_runs_retention_days: s.history.sync_runs_retention_days,
            rejected_records_retention_days: s.history.rejected_records_retention_days,
            hydrate_max_per_run: s.sync.hydrate_max_per_run,
            batch_fill_wait: std::time::Duration::from_millis(s.sync.batch_fill_ms),
        }
    }
}

pub fn worker_name() -> String {
    format!("{}:{}", host_name(), std::process::id())
}

/// This host's name (`HOSTNAME`, else `/etc/hostname`; in Kubernetes, the pod's).
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "localhost".into())
}

/// Live progress of one pass, for terminals and logs.
pub trait Progress: Send + Sync {
    fn started(&self, _account: &AccountSettings, _resumed: bool) {}
    fn page(&self, _account: &AccountSettings, _totals: &RunCounts) {}
    fn finished(&self, _account: &AccountSettings, _outcome: &SyncOutcome) {}
}

/// Reports nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// What one pass did.
#[derive(Debug, Clone)]
pub struct SyncOutcome {
    pub account: Uuid,
    pub label: String,
    /// `None` when no run was opened (the account was busy elsewhere, or the database failed).
    pub run_id: Option<i64>,
    pub status: PassStatus,
    pub counts: RunCounts,
    pub resumed: bool,
    pub complete_listing: bool,
    pub deletions_skipped_reason: Option<String>,
    pub error: Option<String>,
    pub error_kind: Option<ErrorKind>,
    pub elapsed: Duration,
    /// The account's health as this pass found it (`None`: it could not tell).
    pub health: Option<Health>,
    /// Role and status values outside the documented lists, with how many users had them.
    pub unknown_enum_values: std::collections::BTreeMap<(String, String), u64>,
    /// The delete guard refused this listing's deletions.
    pub delete_guard_tripped: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassStatus {
    Finished(Outcome),
    /// Another process holds the account's lease.
    Busy,
    /// The run could not even be opened or closed (database unreachable).
    StoreFailed,
}

impl SyncOutcome {
    /// A pass over `account` that has not done anything yet.
    fn new(account: &AccountSettings) -> SyncOutcome {
        SyncOutcome {
            account: account.integrated_account_id,
            label: account.display_name(),
            run_id: None,
            status: PassStatus::StoreFailed,
            counts: RunCounts::default(),
            resumed: false,
            complete_listing: false,
            deletions_skipped_reason: None,
            error: None,
            error_kind: None,
            elapsed: Duration::ZERO,
            health: None,
            unknown_enum_values: Default::default(),
            delete_guard_tripped: false,
        }
    }

    pub fn succeeded(&self) -> bool {
        self.status == PassStatus::Finished(Outcome::Succeeded)
    }

    pub fn status_str(&self) -> &'static str {
        match self.status {
            PassStatus::Finished(o) => o.as_str(),
            PassStatus::Busy => "busy",
            PassStatus::StoreFailed => "failed",
        }
    }
}

/// Everything one pass works with; handed to each step instead of a long parameter list.
#[derive(Clone, Copy)]
struct Pass<'a> {
    store: &'a Store,
    source: &'a TrutoClient,
    account: &'a AccountSettings,
    opts: &'a SyncOptions,
    cancel: &'a CancellationToken,
    /// Cancelled (with `cancel`) when the pass found it no longer holds the account's lease.
    lease_lost: Option<&'a CancellationToken>,
    /// Set (and `cancel` cancelled) when the process halted while the pass went on: Truto
    /// refused the token or stopped answering (see [`TrutoClient::halt`]).
    halted: Option<&'a OnceLock<Halt>>,
    /// Why the caller cancelled `cancel`, when it said (see [`sync_account_stopped_by`]).
    stop_why: Option<&'a OnceLock<String>>,
    progress: &'a dyn Progress,
}

impl Pass<'_> {
    fn id(&self) -> Uuid {
        self.account.integrated_account_id
    }

    /// Why the process halted, when that is what stopped the pass.
    fn halt(&self) -> Option<&Halt> {
        self.halted.and_then(OnceLock::get)
    }

    /// Why the caller stopped the pass, when it said.
    fn stop_why(&self) -> Option<&str> {
        self.stop_why.and_then(OnceLock::get).map(String::as_str)
    }
}

/// One complete pass over one account. Never panics on bad input or faults: every failure ends
/// as an outcome with an error message, and what was committed stays committed.
///
/// Boxed as `Send` so that callers can spawn it: rustc cannot prove the `Send`-ness of the
/// retry closures' futures through layers of `async fn` otherwise.
pub fn sync_account<'a>(
    store: &'a Store,
    source: &'a TrutoClient,
    account: &'a AccountSettings,
    opts: &'a SyncOptions,
    cancel: &'a CancellationToken,
    progress: &'a dyn Progress,
) -> BoxFuture<'a, SyncOutcome> {
    sync_account_stopped_by(store, source, account, opts, cancel, None, progress)
}

/// [`sync_account`], for a caller that may stop the pass for a reason of its own (the account
/// paused, say): it sets `why` before it cancels, and the run records it instead of a shutdown.
pub fn sync_account_stopped_by<'a>(
    store: &'a Store,
    source: &'a TrutoClient,
    account: &'a AccountSettings,
    opts: &'a SyncOptions,
    cancel: &'a CancellationToken,
    why: Option<&'a OnceLock<String>>,
    progress: &'a dyn Progress,
) -> BoxFuture<'a, SyncOutcome> {
    let pass = Pass {
        store,
        source,
        account,
        opts,
        cancel,
        lease_lost: None,
        halted: None,
        stop_why: why,
        progress,
    };
    Box::pin(sync_leased(pass))
}

/// Leases the account, runs the pass, releases the lease.
async fn sync_leased(p: Pass<'_>) -> SyncOutcome {
    let started = Instant::now();
    let id = p.id();
    let mut out = SyncOutcome::new(p.account);
    let mut lease = match p.store.try_lease(id).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            out.status = PassStatus::Busy;
            out.error = Some("another lms-sync process is syncing this account".into());
            out.elapsed = started.elapsed();
            return out;
        }
        Err(e) => {
            out.error = Some(p.store.explain(e).await.to_string());
            out.error_kind = Some(ErrorKind::Database);
            out.elapsed = started.elapsed();
            return out;
        }
    };
    let span = tracing::info_span!("sync", account = %id, run_id = tracing::field::Empty);
    // The account's window goes with its lease: the requests the process before this one sent
    // are still in the server's window (see docs/rate-budget.md).
    let budget = p.source.budget();
    if let Some(b) = &budget {
        b.working_on(id);
        match lease.take_window(b.instance()).await {
            Ok(Handover::Released(ages)) => b.seed(id, &ages, Instant::now()),
            Ok(Handover::Abandoned { fenced }) => {
                let margin = fenced.then_some(FENCE_MARGIN);
                let wait = b.abandoned_wait(margin);
                tracing::info!(parent: &span, wait_ms = wait.as_millis() as u64, fenced, "the account's last lease holder ended without handing on its requests; waiting out its request window before the account's first request");
                b.wait_out_abandoned(id, Instant::now(), margin)
            }
            Ok(Handover::Nothing | Handover::Mine) => {}
            Err(e) => {
                tracing::warn!(parent: &span, error = %e, "could not read the account's request window; the server's limit headers still pace it")
            }
        }
    }
    let lost = watched(p, &mut lease, &mut out, &span, started, budget.as_deref()).await;
    if let Some(b) = &budget {
        // A pass that lost its lease fenced the account's requests; it sends nothing now.
        b.lift_fence(id);
    }
    match &budget {
        // A lost lease's connection failed or hangs: hand nothing on through it (the next
        // holder waits as for an abandoned account) and do not wait on it, just close it.
        _ if lost => drop(lease),
        Some(b) => {
            lease
                .release_with_requests(&b.recent(id, Instant::now()))
                .await
        }
        None => lease.release().await,
    }
    out.elapsed = started.elapsed();
    p.progress.finished(p.account, &out);
    out
}

/// Runs the pass while watching the account's lease and the process's standing with Truto.
///
/// Once the process halts (Truto refused the token, or two requests gave up with nothing
/// answered in between), the pass stops after the page in flight and ends interrupted, to
/// resume from it once Truto answers: its own requests would only be retried for a minute or
/// so each and then fail the run, and fail each next attempt alike after its failure backoff.
///
/// The lease: its connection's end is seen at once, and every budget period
/// ([`RateBudget::period`]) the connection must answer, or it counts as ended too. A lease
/// that ended (a database restart, a terminated backend, a network cut) may be another
/// process's from that moment, and that process waits out this one's requests for a window
/// only (see [`RateBudget::abandoned_wait`]). So the pass stops sending for the
/// account at once, and takes the lease back: held again, and nobody held it in between, the
/// pass goes on where it was; otherwise it stops and ends interrupted, to resume from its last
/// committed page next time. True when the pass ended without its lease.
async fn watched(
    p: Pass<'_>,
    lease: &mut Lease,
    out: &mut SyncOutcome,
    span: &tracing::Span,
    started: Instant,
    budget: Option<&RateBudget>,
) -> bool {
    let every = budget.map_or(DEFAULT_LEASE_CHECK, RateBudget::period);
    let cancel = p.cancel.child_token();
    let lost = CancellationToken::new();
    let halted = OnceLock::new();
    let mut standing = p.source.watch_standing();
    let outer = p;
    let p = Pass {
        cancel: &cancel,
        lease_lost: Some(&lost),
        halted: Some(&halted),
        ..p
    };
    let run = pass::run(&p, out, span, started).instrument(span.clone());
    tokio::pin!(run);
    loop {
        let why = loop {
            tokio::select! {
                () = &mut run => return false,
                why = lease.lost() => break why,
                halt = halts(&mut standing) => {
                    tracing::warn!(parent: span, why = %halt, "the process halted: the run stops after the page in flight and resumes from it once Truto answers");
                    let _ = halted.set(halt);
                    cancel.cancel();
                    run.await;
                    return false;
                }
                () = tokio::time::sleep(every) => {}
            }
            // The pass is not polled during a check (a round trip); its fetcher and writers
            // run on their own tasks meanwhile.
            if !lease.is_held(every / 2).await {
                break "it failed or did not answer in time".to_string();
            }
        };
        if let Some(b) = budget {
            b.fence(outer.id());
        }
        tracing::warn!(parent: span, reason = %why, "the account's lease ended with its database connection; no requests for the account until this process holds it again");
        let again = take_back(outer, budget, every);
        tokio::select! {
            // Over before the lease was back: nothing is left to send, and nothing to hand on
            // (the caller lifts the fence).
            () = &mut run => return true,
            back = again => match back {
                Some(back) => {
                    *lease = back;
                    if let Some(b) = budget {
                        b.lift_fence(outer.id());
                    }
                    tracing::info!(parent: span, "holds the account's lease again; the pass goes on");
                }
                // A shutdown: the pass ends interrupted by it, not by the lease.
                None if outer.cancel.is_cancelled() => break,
                None => {
                    tracing::warn!(parent: span, "lost the account's lease with its database connection; stopping the pass (another process may be syncing the account now)");
                    lost.cancel();
                    break;
                }
            },
        }
    }
    cancel.cancel();
    run.await;
    true
}

/// Waits until the process halts, and says why. (The standing's sender lives in the client,
/// which the pass borrows: it cannot close while the pass runs; if it did, nothing would halt.)
async fn halts(standing: &mut tokio::sync::watch::Receiver<Standing>) -> Halt {
    let halt = standing
        .wait_for(|s| s.halt().is_some())
        .await
        .ok()
        .and_then(|s| s.halt());
    match halt {
        Some(halt) => halt,
        None => std::future::pending().await,
    }
}

/// Takes back the lease of a pass whose lease ended, retrying while the database is away (no
/// wait longer than `every`, so that a process that takes the account meanwhile is seen soon).
/// `None` when another process holds it, or held it in between (its requests are not in this
/// process's window, and it may have written to the account): the pass must stop.
async fn take_back(p: Pass<'_>, budget: Option<&RateBudget>, every: Duration) -> Option<Lease> {
    let got = retry::with_db_retries_every(p.store, p.opts, p.cancel, every, || async {
        let Some(mut lease) = p.store.try_lease(p.id()).await? else {
            return Ok(None);
        };
        let Some(b) = budget else {
            // Unpaced, the account keeps no holder; a process that ran it meanwhile made its
            // own run the account's current one, which this pass's next page finds (and
            // stops on, `StoreError::Diverged`).
            return Ok(Some(lease));
        };
        // Not retried when the answer was lost: a mark that committed without its answer
        // would read as ours. One the server refused (a read-only session mid-failover, a
        // deadlock) did not commit: that is tried again, on a new lease, if retryable.
        Ok(match lease.take_window(b.instance()).await {
            Ok(Handover::Mine) => Some(lease),
            Err(e @ StoreError::Db(sqlx::Error::Database(_))) => return Err(e),
            _ => None,
        })
    })
    .await;
    got.ok().flatten()
}

/// How often a pass checks its lease when requests are not paced (no request budget).
const DEFAULT_LEASE_CHECK: Duration = Duration::from_millis(2_500);

/// The outcome of an account `sync_accounts` did not start, and why. No run is recorded.
fn not_started(
    account: &AccountSettings,
    outcome: Outcome,
    kind: ErrorKind,
    why: &str,
) -> SyncOutcome {
    let mut out = SyncOutcome::new(account);
    out.status = PassStatus::Finished(outcome);
    out.error = Some(format!("not started: {why}"));
    out.error_kind = Some(kind);
    out
}

/// Syncs many accounts, at most `max_concurrent` at once, and returns their outcomes in the
/// order given. Once Truto has refused the API token or stopped answering (see
/// [`TrutoClient::halt`]), the accounts not yet started are not.
pub async fn sync_accounts(
    store: &Store,
    source: &TrutoClient,
    accounts: &[AccountSettings],
    opts: &SyncOptions,
    max_concurrent: usize,
    cancel: &CancellationToken,
    progress: Arc<dyn Progress>,
) -> Vec<SyncOutcome> {
    use futures_util::stream::{self, StreamExt};
    stream::iter(accounts.iter())
        .map(|a| {
            let progress = progress.clone();
            async move {
                if cancel.is_cancelled() {
                    return not_started(
                        a,
                        Outcome::Interrupted,
                        ErrorKind::Interrupted,
                        "shutdown requested",
                    );
                }
                // Every account would fail alike, each with a run and requests spent.
                if let Some(halt) = source.halt() {
                    return not_started(a, Outcome::Failed, halt.kind(), &halt.to_string());
                }
                sync_account(store, source, a, opts, cancel, progress.as_ref()).await
            }
        })
        .buffered(max_concurrent.max(1))
        .collect()
        .await
}
