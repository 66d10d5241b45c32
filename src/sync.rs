//! One complete pass over one account: lease it, open a run, follow the cursor page by page
//! (fetching the next page while the current one is written), sweep deletions after a complete
//! listing, close the run. The one-shot CLI, the daemon and the tests all call [`sync_account`].
//! This module decides; it holds no SQL and speaks no HTTP.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::config::AccountSettings;
use crate::source::{FetchedPage, SourceError, TrutoClient};
use crate::store::{CopyRows, Outcome, PageWrite, RunCounts, RunEnd, Store, StoreError, Sweep};

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
    /// Single-user GETs per run of a hydrating account (unless the account says otherwise).
    pub hydrate_max_per_run: u32,
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
            hydrate_max_per_run: s.sync.hydrate_max_per_run,
        }
    }
}

pub fn worker_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{}", std::process::id())
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
    pub error_kind: Option<String>,
    pub elapsed: Duration,
    /// The account's health as this pass found it (`None`: it could not tell).
    pub health: Option<String>,
    /// Role and status values outside the documented lists, with how many users had them.
    pub unknown_enum_values: std::collections::BTreeMap<(String, String), u64>,
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

/// Why the listing loop stopped early.
enum Stop {
    /// The API failed for good, after this many requests.
    Source(SourceError, u32),
    Store(StoreError),
    /// A protocol violation by the API that makes the cursor useless (repeat, too many pages).
    Listing(String),
    Cancelled,
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
) -> crate::store::BoxFuture<'a, SyncOutcome> {
    Box::pin(sync_account_inner(
        store, source, account, opts, cancel, progress,
    ))
}

async fn sync_account_inner(
    store: &Store,
    source: &TrutoClient,
    account: &AccountSettings,
    opts: &SyncOptions,
    cancel: &CancellationToken,
    progress: &dyn Progress,
) -> SyncOutcome {
    let started = Instant::now();
    let id = account.integrated_account_id;
    let mut out = SyncOutcome {
        account: id,
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
    };
    let lease = match store.try_lease(id).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            out.status = PassStatus::Busy;
            out.error = Some("another lms-sync process is syncing this account".into());
            out.elapsed = started.elapsed();
            return out;
        }
        Err(e) => {
            out.error = Some(e.to_string());
            out.error_kind = Some("database".into());
            out.elapsed = started.elapsed();
            return out;
        }
    };
    let span = tracing::info_span!("sync", account = %id, run_id = tracing::field::Empty);
    run_leased(
        store, source, account, opts, cancel, progress, &mut out, &span, started,
    )
    .instrument(span.clone())
    .await;
    lease.release().await;
    out.elapsed = started.elapsed();
    progress.finished(account, &out);
    out
}

#[allow(clippy::too_many_arguments)]
async fn run_leased(
    store: &Store,
    source: &TrutoClient,
    account: &AccountSettings,
    opts: &SyncOptions,
    cancel: &CancellationToken,
    progress: &dyn Progress,
    out: &mut SyncOutcome,
    span: &tracing::Span,
    started: Instant,
) {
    let id = account.integrated_account_id;
    let start = match with_db_retries(opts, cancel, || {
        store.begin_run(id, account.label.as_deref(), &opts.worker)
    })
    .await
    {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(e.to_string());
            out.error_kind = Some("database".into());
            return;
        }
    };
    span.record("run_id", start.run_id);
    out.run_id = Some(start.run_id);
    out.resumed = start.resume_cursor.is_some();
    if start.interrupted_runs > 0 {
        tracing::warn!(
            runs = start.interrupted_runs,
            "an earlier run of this account was interrupted; marked as such"
        );
    }
    progress.started(account, out.resumed);

    let listing = follow_listing(
        store,
        source,
        account,
        opts,
        cancel,
        progress,
        start.run_id,
        start.resume_cursor,
        out,
    )
    .await;
    // Fresh planner statistics once a run has grown the tables (see Store::note_inserted).
    store.note_inserted(out.counts.inserted).await;

    let mut end = RunEnd {
        outcome: Outcome::Succeeded,
        complete_listing: false,
        reset_cursor: false,
        deleted: 0,
        deletions_skipped_reason: None,
        error_kind: None,
        error: None,
        health: None,
        hydration: RunCounts::default(),
        failed_requests: 0,
    };
    let listed = listing.is_ok();
    match listing {
        Ok(listing) => {
            end.complete_listing = true;
            out.complete_listing = true;
            let skip = if listing.resumed {
                Some("the listing was resumed from an earlier run's cursor; the next complete listing infers deletions".to_string())
            } else if listing.partial {
                Some(
                    "Truto marked a page of the listing as partial (is_partial_response)"
                        .to_string(),
                )
            } else {
                None
            };
            match skip {
                Some(reason) => {
                    // A resumed listing is normal after a stop; a partial one needs a look.
                    if listing.partial {
                        end.outcome = Outcome::NeedsAttention;
                    }
                    end.deletions_skipped_reason = Some(reason);
                }
                None if listing.started_empty => end.deleted = 0,
                None => {
                    let fraction = account
                        .max_delete_fraction
                        .unwrap_or(opts.max_delete_fraction);
                    let sweep = with_db_retries(opts, cancel, || {
                        store.sweep_deletions(
                            id,
                            start_run(out),
                            &listing.seen,
                            fraction,
                            opts.history,
                        )
                    })
                    .await;
                    match sweep {
                        Ok(Sweep::Deleted(n)) => end.deleted = n,
                        Ok(Sweep::Skipped(reason)) => {
                            end.outcome = Outcome::NeedsAttention;
                            end.deletions_skipped_reason = Some(reason);
                        }
                        Err(e) => {
                            end.outcome = Outcome::Failed;
                            end.error_kind = Some("database".into());
                            end.error = Some(format!("deletion sweep failed: {e}"));
                        }
                    }
                }
            }
        }
        Err(stop) => {
            end.deletions_skipped_reason = Some("the listing did not complete".into());
            match stop {
                Stop::Cancelled => {
                    end.outcome = Outcome::Interrupted;
                    end.error = Some("interrupted by shutdown; the next run resumes from the last committed page".into());
                    end.error_kind = Some("interrupted".into());
                }
                Stop::Source(e, requests) => {
                    // The failed requests count too (they are not in any committed page).
                    end.failed_requests = requests;
                    end.outcome = Outcome::Failed;
                    end.health = crate::store::health_of(e.kind());
                    end.error_kind = Some(e.kind().into());
                    end.error = Some(e.to_string());
                }
                Stop::Store(e) => {
                    end.outcome = Outcome::Failed;
                    end.error_kind = Some("database".into());
                    end.error = Some(e.to_string());
                }
                Stop::Listing(m) => {
                    end.outcome = Outcome::Failed;
                    end.error_kind = Some("listing".into());
                    end.error = Some(m);
                    end.reset_cursor = true;
                }
            }
        }
    }
    if listed && account.hydrate && end.outcome != Outcome::Failed {
        match hydrate(store, source, account, opts, cancel, start_run(out)).await {
            Ok(h) => end.hydration = h,
            Err((h, e)) => {
                end.hydration = h;
                tracing::warn!(error = %e, "hydration stopped early; the rest of the queue waits for the next run");
            }
        }
        out.counts.add(&end.hydration);
    }
    if end.health.is_none() && (out.complete_listing || out.counts.pages > 0) {
        // The API answered for this account: whatever kept it unhealthy is over.
        end.health = Some("ok");
    }
    out.counts.deleted = end.deleted;
    out.deletions_skipped_reason = end.deletions_skipped_reason.clone();
    out.error = end.error.clone();
    out.error_kind = end.error_kind.clone();
    // Closing the run must not be skipped because shutdown was requested.
    let never = CancellationToken::new();
    match with_db_retries(opts, &never, || store.finish_run(id, start_run(out), &end)).await {
        Ok(before) => {
            out.status = PassStatus::Finished(end.outcome);
            out.health = end.health.map(str::to_string);
            match (before.as_deref(), end.health) {
                (Some(was), Some("ok")) if was != "ok" => {
                    tracing::info!(was, "the account answers again; back on its regular schedule")
                }
                (Some(was), Some(now)) if now != "ok" && was != now => tracing::error!(
                    health = now,
                    "the account cannot be synced until someone acts upstream; probing it hours apart (schedule.health_retry_initial)"
                ),
                _ => {}
            }
        }
        Err(e) => {
            out.status = PassStatus::StoreFailed;
            out.error = Some(format!(
                "{}could not record the end of the run: {e}",
                out.error
                    .as_ref()
                    .map(|m| format!("{m}; "))
                    .unwrap_or_default()
            ));
        }
    }
    if opts.history_retention_days > 0 {
        match store.prune_history(id, opts.history_retention_days).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                rows = n,
                retention_days = opts.history_retention_days,
                "pruned old change history"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not prune old change history; trying again after the next run")
            }
        }
    }
    out.elapsed = started.elapsed();
    log_summary(out);
    if let Some(m) = &opts.metrics {
        record_run(m, out);
    }
}

fn record_run(m: &crate::metrics::Metrics, out: &SyncOutcome) {
    let account = out.account.to_string();
    let a = account.as_str();
    m.inc(
        "lms_sync_runs_total",
        &[("account", a), ("outcome", out.status_str())],
    );
    m.add(
        "lms_sync_users_total",
        &[("account", a), ("change", "deleted")],
        out.counts.deleted as f64,
    );
    let secs = out.elapsed.as_secs_f64();
    m.add(
        "lms_sync_run_duration_seconds_total",
        &[("account", a)],
        secs,
    );
    m.set(
        "lms_sync_last_run_duration_seconds",
        &[("account", a)],
        secs,
    );
    for ((field, value), n) in &out.unknown_enum_values {
        m.add(
            "lms_sync_unknown_enum_values_total",
            &[("account", a), ("field", field), ("value", value)],
            *n as f64,
        );
    }
    if out.succeeded() {
        let now = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
        m.set(
            "lms_sync_last_success_timestamp_seconds",
            &[("account", a)],
            now,
        );
    }
}

fn start_run(out: &SyncOutcome) -> i64 {
    out.run_id.expect("run opened")
}

fn log_summary(out: &SyncOutcome) {
    if !out.unknown_enum_values.is_empty() {
        // Once per run, not per record: the vendor grew its enums; the values are kept as text.
        let values: Vec<String> = out
            .unknown_enum_values
            .iter()
            .map(|((f, v), n)| format!("{f}={v} ({n} users)"))
            .collect();
        tracing::warn!(values = %values.join(", "), "undocumented enum values seen (stored as given)");
    }
    let c = &out.counts;
    let msg = "sync run finished";
    macro_rules! summary {
        ($lvl:ident) => {
            tracing::$lvl!(
                outcome = out.status_str(),
                pages = c.pages,
                users_seen = c.users_seen,
                inserted = c.inserted,
                updated = c.updated,
                unchanged = c.unchanged,
                deleted = c.deleted,
                undeleted = c.undeleted,
                rejected = c.rejected,
                requests = c.http_requests,
                retries = c.retries,
                resumed = out.resumed,
                elapsed_ms = out.elapsed.as_millis() as u64,
                deletions_skipped = out.deletions_skipped_reason.as_deref(),
                error = out.error.as_deref(),
                "{msg}"
            )
        };
    }
    match out.status {
        PassStatus::Finished(Outcome::Succeeded) => summary!(info),
        PassStatus::Finished(Outcome::Interrupted)
        | PassStatus::Finished(Outcome::NeedsAttention) => summary!(warn),
        _ => summary!(error),
    }
}

struct Listing {
    resumed: bool,
    partial: bool,
    /// Every id the listing contained (bad records with a usable id included).
    seen: crate::store::SeenIds,
    /// The account had no users when the listing started: every live user now came from it,
    /// so there is nothing to sweep.
    started_empty: bool,
}

#[allow(clippy::too_many_arguments)]
async fn follow_listing(
    store: &Store,
    source: &TrutoClient,
    account: &AccountSettings,
    opts: &SyncOptions,
    cancel: &CancellationToken,
    progress: &dyn Progress,
    run_id: i64,
    resume_cursor: Option<String>,
    out: &mut SyncOutcome,
) -> Result<Listing, Stop> {
    let id = account.integrated_account_id;
    let mut listing = Listing {
        resumed: resume_cursor.is_some(),
        partial: false,
        seen: crate::store::SeenIds::sized(run_id as u64, 0),
        started_empty: false,
    };
    // The cursors this listing was given (see cursor_key), to notice one that repeats.
    let mut cursors: HashSet<u64> = HashSet::new();
    let mut cursor = resume_cursor;

    // The first page; a resumed cursor the API no longer accepts restarts the listing.
    let page = match source.fetch_page(account, cursor.as_deref(), cancel).await {
        Ok(p) => p,
        Err(refused) if listing.resumed && stale_cursor(&refused.error) => {
            let e = &refused.error;
            tracing::warn!(error = %e, "the saved cursor was refused; restarting the listing from the first page");
            with_db_retries(opts, cancel, || store.restart_listing(id, run_id))
                .await
                .map_err(Stop::Store)?;
            listing.resumed = false;
            out.resumed = false;
            cursor = None;
            let mut page = source
                .fetch_page(account, None, cancel)
                .await
                .map_err(source_stop)?;
            // The refused requests are committed with the first page's.
            page.requests += refused.requests;
            page
        }
        Err(e) => return Err(source_stop(e)),
    };
    if let Some(c) = &cursor {
        cursors.insert(cursor_key(c));
    }
    // The fetcher runs ahead of the writer by at most LOOKAHEAD pages (memory stays flat);
    // the writer commits whatever has arrived, up to a batch, in one transaction.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Decoding, Stop>>(LOOKAHEAD);
    // An account with no users yet (a first sync) needs no lookups for ids this listing has not
    // shown before: we hold its lease, so only this run adds users.
    let empty_at_start = !listing.resumed
        && with_db_retries(opts, cancel, || store.account_is_empty(id))
            .await
            .map_err(Stop::Store)?;
    listing.started_empty = empty_at_start;
    // Whether the last batch was all new users (from the start: whether the account is empty).
    // The fetcher then decodes pages in full and encodes them for COPY ahead; otherwise it only
    // scans them, and the writer decodes just the users whose text changed.
    let all_new = Arc::new(std::sync::atomic::AtomicBool::new(empty_at_start));
    if empty_at_start {
        // A first sync asks the filter only which ids it has already listed, to look just those
        // up (it sweeps nothing): 1 MiB keeps needless lookups under 0.001 % at 100,000 users
        // and about 2 % at a million, whatever the account's size.
        listing.seen = crate::store::SeenIds::sized(run_id as u64, 13_107);
    } else if !listing.resumed {
        // A fresh listing of an account with users sweeps: size its filter to the account (with
        // room for growth). A resumed listing neither sweeps nor asks.
        let live = with_db_retries(opts, cancel, || store.live_users(id))
            .await
            .map_err(Stop::Store)?
            .max(0) as u64;
        listing.seen = crate::store::SeenIds::sized(run_id as u64, live + live / 4 + 1000);
    }
    // A task of its own, so that decoding runs in parallel with the writer's database work.
    let fetcher = tokio::spawn(fetch_ahead(
        source.clone(),
        account.clone(),
        opts.max_pages,
        cancel.clone(),
        run_id,
        page,
        cursor,
        cursors,
        tx,
        all_new.clone(),
    ));
    let _stop_fetcher = AbortOnDrop(fetcher.abort_handle());
    let result = {
        let listing_ref = &mut listing;
        let writer = async move {
            let listing = listing_ref;
            // Where the writer's time goes: waiting for pages, or writing them.
            let (mut waiting, mut writing) = (Duration::ZERO, Duration::ZERO);
            // The batches whose transactions are under way (each in a task of its own), oldest
            // first: at most PIPELINE_DEPTH, plus the one being started.
            let mut in_flight: VecDeque<InFlight> = VecDeque::new();
            // Finishes the oldest batches in flight while `$more` says so (see finish_oldest).
            macro_rules! finish_while {
                ($more:expr) => {
                    finish_oldest(
                        &mut in_flight,
                        $more,
                        opts,
                        account,
                        out,
                        progress,
                        &all_new,
                    )
                };
            }
            loop {
                let t = Instant::now();
                let received = rx.recv().await;
                waiting += t.elapsed();
                tracing::trace!(
                    waiting_ms = waiting.as_millis() as u64,
                    writing_ms = writing.as_millis() as u64,
                    "writer"
                );
                // Batches that have committed meanwhile are accounted for now, in order (their
                // counters, progress, and the fetcher's mode must not lag behind).
                finish_while!(committed).await?;
                // With the pipeline full, the next batch can grow until its oldest batch commits
                // (a fuller batch costs nothing then); otherwise it takes what has arrived.
                let fill_until =
                    (in_flight.len() >= PIPELINE_DEPTH).then(|| in_flight[0].committed.clone());
                let (batch, pending) = match next_batch(received, &mut rx, fill_until).await {
                    Ok(b) => b,
                    Err(stop) => {
                        // What is being written still commits (or not) before we stop.
                        finish_while!(all).await?;
                        return Err(stop);
                    }
                };
                let last = batch.last().expect("non-empty");
                let done = last.is_last();
                let repeated = last.repeated;
                for f in &batch {
                    listing.partial |= f.page.is_partial;
                }
                // Ids that may already be mirrored: all of them, unless the account started empty,
                // then only those seen earlier in this listing (or false positives: harmless).
                let lookup: Option<Vec<String>> = empty_at_start.then(|| {
                    batch
                        .iter()
                        .flat_map(|f| f.page.decoded.ids())
                        .filter(|id| listing.seen.contains(id))
                        .map(str::to_string)
                        .collect()
                });
                for f in &batch {
                    for id in f.page.decoded.ids() {
                        listing.seen.insert(id);
                    }
                    for r in f
                        .page
                        .decoded
                        .rejected
                        .iter()
                        .filter_map(|r| r.user_id.as_deref())
                    {
                        listing.seen.insert(r);
                    }
                }
                let prepared = prepare(batch, lookup);
                let t = Instant::now();
                // New users that no earlier batch can hold (a first sync's usual case) are
                // written while earlier batches are still being written, on connections of
                // their own (when the pool has one idle: a batch waiting for a connection
                // behind batches that wait for it would stall); anything else waits.
                let ahead = !in_flight.is_empty()
                    && prepared.copy.is_some()
                    && prepared.lookup.as_ref().is_some_and(Vec::is_empty)
                    && store.has_idle_connection();
                let gate = if ahead {
                    in_flight.back().map(|f| f.committed.clone())
                } else {
                    finish_while!(all).await?;
                    None
                };
                let next = write_batch(store, opts, account, run_id, prepared, gate);
                in_flight.push_back(next);
                let over_depth = |q: &VecDeque<InFlight>| q.len() > PIPELINE_DEPTH;
                finish_while!(over_depth).await?;
                let last_of_listing = done || repeated || pending.is_some();
                if last_of_listing || cancel.is_cancelled() {
                    finish_while!(all).await?;
                    writing += t.elapsed();
                    if repeated {
                        return Err(Stop::Listing(format!(
                            "the API returned a cursor it had already returned in this listing (after {} pages); the listing was stopped instead of looping",
                            out.counts.pages
                        )));
                    }
                    if let Some(stop) = pending {
                        return Err(stop);
                    }
                    if done {
                        return Ok(());
                    }
                    return Err(Stop::Cancelled);
                }
                writing += t.elapsed();
            }
        };
        writer.await
    };
    result.map(|()| listing)
}

/// Pages the fetcher may hold ahead of the writer.
const LOOKAHEAD: usize = 8;
/// Batches of new users written at the same time, each in its own transaction (their cursor
/// advances still commit in order): PostgreSQL then works on more than one at once.
const PIPELINE_DEPTH: usize = 2;
/// The most API pages, and users, written in one transaction.
const MAX_BATCH_PAGES: usize = 8;
const MAX_BATCH_USERS: usize = 1_000;

/// A fetched page and the cursor it was fetched with.
struct Fetched {
    page: FetchedPage,
    cursor: Option<String>,
    /// Its next cursor was seen before in this listing: write it, then stop.
    repeated: bool,
    /// The page's users encoded for COPY, should they all be new (when the fetcher expected so).
    copy: Option<CopyRows>,
}

/// A page being decoded on a blocking thread.
struct Decoding(tokio::task::JoinHandle<Fetched>);

impl Decoding {
    async fn done(self) -> Result<Fetched, Stop> {
        self.0
            .await
            .map_err(|e| Stop::Listing(format!("decoding a page failed: {e}")))
    }
}

/// Aborts a task when dropped: the fetcher never outlives its writer.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Fetched {
    fn is_last(&self) -> bool {
        self.page.next_cursor.is_none() || self.repeated
    }

    /// The cursor to store after this page: none when the listing ends here (or loops).
    fn next_to_store(&self) -> Option<&str> {
        if self.repeated {
            None
        } else {
            self.page.next_cursor.as_deref()
        }
    }
}

/// Follows the cursor from `first` on, sending each page (or the reason to stop) to the writer.
#[allow(clippy::too_many_arguments)]
async fn fetch_ahead(
    source: TrutoClient,
    account: AccountSettings,
    max_pages: u64,
    cancel: CancellationToken,
    run_id: i64,
    first: FetchedPage,
    first_cursor: Option<String>,
    mut cursors: HashSet<u64>,
    tx: tokio::sync::mpsc::Sender<Result<Decoding, Stop>>,
    all_new: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut page = first;
    let mut cursor = first_cursor;
    let mut pages: u64 = 1;
    let account_id = account.integrated_account_id;
    loop {
        let next = page.next_cursor.clone();
        let repeated = next
            .as_ref()
            .is_some_and(|n| !cursors.insert(cursor_key(n)));
        let last = next.is_none() || repeated;
        let encode = all_new.load(std::sync::atomic::Ordering::Relaxed);
        // Decoding (and, when the last batch was all new users, encoding for COPY) runs on a
        // thread of its own while the next request is already under way.
        let decoding = tokio::task::spawn_blocking(move || {
            if encode {
                page.decode();
            } else {
                page.scan();
            }
            let copy = encode.then(|| {
                let mut copy = CopyRows::default();
                let users: Vec<&crate::model::UserRecord> = page.decoded.users.iter().collect();
                copy.add(account_id, Some(run_id), &users);
                copy
            });
            Fetched {
                page,
                cursor,
                repeated,
                copy,
            }
        });
        if tx.send(Ok(Decoding(decoding))).await.is_err() || last {
            return;
        }
        let next = next.expect("not the last page");
        if pages >= max_pages {
            let _ = tx
                .send(Err(Stop::Listing(format!(
                    "the listing has more than truto.max_pages = {} pages; raise it if the account really is that large",
                    max_pages
                ))))
                .await;
            return;
        }
        match source.fetch_page(&account, Some(&next), &cancel).await {
            Ok(p) => page = p,
            Err(e) => {
                let _ = tx.send(Err(source_stop(e))).await;
                return;
            }
        }
        pages += 1;
        cursor = Some(next);
    }
}

/// What the repeat check keeps of a cursor: a hash (8 bytes a page, not the cursor's text).
fn cursor_key(cursor: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(cursor.as_bytes())
}

fn source_stop(f: crate::source::Failed) -> Stop {
    match f.error {
        SourceError::Cancelled => Stop::Cancelled,
        e => Stop::Source(e, f.requests),
    }
}

/// A queued user's id and what its GET answered (the body and the requests it took).
type UserAnswer = (String, Result<(String, u32), crate::source::Failed>);

/// Single-user GETs in flight at once while hydrating (the request budget paces them).
const HYDRATE_CONCURRENCY: usize = 4;

/// Fetches the full objects of the account's queued users, up to its per-run allowance, and
/// merges them into their rows (see [`Store::apply_hydration`]). A failed GET leaves its user
/// queued for a later retry and never stops the others; an error that concerns the whole
/// account (or the database, or shutdown) stops the phase, and the queue waits for the next
/// run. Returns the counters (and them with the error when it stopped early).
async fn hydrate(
    store: &Store,
    source: &TrutoClient,
    account: &AccountSettings,
    opts: &SyncOptions,
    cancel: &CancellationToken,
    run_id: i64,
) -> Result<RunCounts, (RunCounts, String)> {
    use futures_util::StreamExt;
    let id = account.integrated_account_id;
    let allowance = account
        .hydrate_max_per_run
        .unwrap_or(opts.hydrate_max_per_run) as u64;
    let mut counts = RunCounts::default();
    let mut fetched = 0u64;
    let never = CancellationToken::new();
    while fetched < allowance && !cancel.is_cancelled() {
        let take = (allowance - fetched).min(100) as u32;
        let due = with_db_retries(opts, cancel, || store.hydration_due(id, take))
            .await
            .map_err(|e| (counts, e.to_string()))?;
        if due.is_empty() {
            break;
        }
        fetched += due.len() as u64;
        let answers: Vec<UserAnswer> = futures_util::stream::iter(due)
            .map(|uid| async move {
                let r = source.fetch_user(account, &uid, cancel).await;
                (uid, r)
            })
            .buffer_unordered(HYDRATE_CONCURRENCY)
            .collect()
            .await;
        let (mut full, mut failed, mut gone) = (Vec::new(), Vec::new(), Vec::new());
        let mut stop: Option<String> = None;
        for (uid, answer) in answers {
            match answer {
                Ok((body, requests)) => {
                    counts.http_requests += requests as u64;
                    counts.retries += requests.saturating_sub(1) as u64;
                    match crate::model::decode_user(&body) {
                        Ok(u) if u.id == uid => full.push(u),
                        Ok(u) => failed.push((
                            uid,
                            format!(
                                "the full object has id {:?}",
                                crate::source::shorten(&u.id, 60)
                            ),
                        )),
                        Err(r) => failed.push((uid, r.reason)),
                    }
                }
                Err(f) if matches!(f.error, SourceError::Cancelled) => {
                    stop = Some("interrupted by shutdown".into())
                }
                Err(crate::source::Failed { error: e, requests }) => {
                    counts.http_requests += requests as u64;
                    counts.retries += requests.saturating_sub(1) as u64;
                    if e.status() == Some(404) {
                        gone.push(uid);
                    } else if crate::store::health_of(e.kind()).is_some() || e.kind() == "bad_token"
                    {
                        stop = Some(e.to_string());
                    } else {
                        failed.push((uid, e.to_string()));
                    }
                }
            }
        }
        counts.hydrated += full.len() as u64;
        counts.hydration_failures += failed.len() as u64;
        for (uid, error) in &failed {
            tracing::warn!(user_id = %uid, %error, "could not fetch the user's full object; retried later");
        }
        // Like a page, a hydration batch is never abandoned half-written for shutdown.
        with_db_retries(opts, &never, || {
            store.apply_hydration(id, run_id, &full, &failed, &gone, opts.history)
        })
        .await
        .map_err(|e| (counts, e.to_string()))?;
        if let Some(m) = &opts.metrics {
            let a = id.to_string();
            for (result, n) in [
                ("merged", full.len()),
                ("failed", failed.len()),
                ("gone", gone.len()),
            ] {
                m.add(
                    "lms_sync_hydrations_total",
                    &[("account", &a), ("result", result)],
                    n as f64,
                );
            }
        }
        if let Some(why) = stop {
            return Err((counts, why));
        }
    }
    if let Ok(left) = store.hydration_pending(id).await {
        if left > 0 {
            tracing::info!(
                pending = left,
                "users still queued for hydration (per-run allowance used, or waiting for a retry)"
            );
        }
    }
    Ok(counts)
}

/// A 4xx other than auth/scope/blocked answering a resumed cursor means the cursor expired.
fn stale_cursor(e: &SourceError) -> bool {
    matches!(e, SourceError::Status { status, .. } if matches!(*status, 400 | 404 | 410 | 422))
}

/// Takes the next batch: the page received, and whatever else has arrived, up to a batch (and
/// the fetcher's reason to stop, if it came right after).
async fn next_batch(
    received: Option<Result<Decoding, Stop>>,
    rx: &mut tokio::sync::mpsc::Receiver<Result<Decoding, Stop>>,
    mut fill_until: Option<crate::store::Gate>,
) -> Result<(Vec<Fetched>, Option<Stop>), Stop> {
    let Some(first) = received else {
        // The fetcher ended without a last page: only after cancellation.
        return Err(Stop::Cancelled);
    };
    let mut batch = vec![first?.done().await?];
    let mut pending: Option<Stop> = None;
    while !batch.last().expect("non-empty").is_last()
        && batch.len() < MAX_BATCH_PAGES
        && batch.iter().map(|f| f.page.records).sum::<usize>() < MAX_BATCH_USERS
    {
        let next = match rx.try_recv() {
            Ok(next) => Some(next),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => None,
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                // Nothing more yet: wait for the next page only while `fill_until` is closed.
                let Some(gate) = fill_until.as_mut() else {
                    break;
                };
                tokio::select! {
                    biased;
                    next = rx.recv() => next,
                    _ = gate.wait_for(Option::is_some) => break,
                }
            }
        };
        match next {
            Some(Ok(d)) => batch.push(d.done().await?),
            Some(Err(stop)) => {
                pending = Some(stop);
                break;
            }
            None => break,
        }
    }
    Ok((batch, pending))
}

/// A batch of consecutive pages, ready to be written in one transaction.
struct Prepared {
    decoded: crate::model::DecodedPage,
    /// The users encoded for COPY, a set per page, when every page was (and no user repeats).
    copy: Option<Vec<CopyRows>>,
    cursor: Option<String>,
    next_cursor: Option<String>,
    counts: RunCounts,
    lookup: Option<Vec<String>>,
}

fn prepare(batch: Vec<Fetched>, lookup: Option<Vec<String>>) -> Prepared {
    let mut counts = RunCounts {
        pages: batch.len() as u64,
        ..RunCounts::default()
    };
    let cursor = batch[0].cursor.clone();
    let next_cursor = batch[batch.len() - 1].next_to_store().map(str::to_string);
    let mut decoded = crate::model::DecodedPage::default();
    let mut copy: Option<Vec<CopyRows>> = Some(Vec::with_capacity(batch.len()));
    for f in batch {
        counts.http_requests += f.page.requests as u64;
        counts.retries += f.page.requests.saturating_sub(1) as u64;
        counts.rate_limited += f.page.rate_limited as u64;
        decoded.append(f.page.decoded);
        // Usable only if every page of the batch was encoded.
        copy = match (copy, f.copy) {
            (Some(mut all), Some(page)) => {
                all.push(page);
                Some(all)
            }
            _ => None,
        };
    }
    // And only if no user appears twice in the batch.
    let copy = copy.filter(|_| decoded.duplicates == 0);
    Prepared {
        decoded,
        copy,
        cursor,
        next_cursor,
        counts,
        lookup,
    }
}

/// A batch being written by a task of its own.
struct InFlight {
    task: tokio::task::JoinHandle<(Result<crate::store::PageResult, StoreError>, Prepared)>,
    /// Opens when it has committed (or failed): the gate of a batch written ahead of it.
    committed: crate::store::Gate,
}

/// Starts writing a batch in one transaction, retried whole on retryable database errors.
/// With a gate, its cursor advance waits for the previous batch (see
/// [`Store::apply_page_after`]).
fn write_batch(
    store: &Store,
    opts: &SyncOptions,
    account: &AccountSettings,
    run_id: i64,
    prepared: Prepared,
    gate: Option<crate::store::Gate>,
) -> InFlight {
    tracing::trace!(ahead = gate.is_some(), "writing a batch");
    let (done_tx, committed) = tokio::sync::watch::channel(None);
    let (store, opts) = (store.clone(), opts.clone());
    let (id, history, hydrate) = (account.integrated_account_id, opts.history, account.hydrate);
    let task = tokio::spawn(async move {
        let write = PageWrite {
            page: &prepared.decoded,
            all_new: prepared.copy.as_deref(),
            cursor: prepared.cursor.as_deref(),
            next_cursor: prepared.next_cursor.as_deref(),
            counts: prepared.counts,
            lookup: prepared.lookup.as_deref(),
            history,
            hydrate,
        };
        // IMPORTANT: a page is never abandoned for shutdown; its (bounded) retries run to the
        // end so that rows and cursor commit together or not at all.
        let never = CancellationToken::new();
        let result = with_db_retries(&opts, &never, || {
            store.apply_page_after(id, run_id, &write, gate.clone())
        })
        .await;
        let _ = done_tx.send(Some(result.is_ok()));
        (result, prepared)
    });
    InFlight { task, committed }
}

/// For [`finish_oldest`]: every batch in flight.
fn all(q: &VecDeque<InFlight>) -> bool {
    !q.is_empty()
}

/// For [`finish_oldest`]: the oldest batch has committed (or failed) already.
fn committed(q: &VecDeque<InFlight>) -> bool {
    q.front().is_some_and(|f| f.committed.borrow().is_some())
}

/// Finishes batches in flight, oldest first, while `more` says so. After a failure the later
/// ones roll back on their own (their gates say a batch before them failed) and are only
/// awaited.
async fn finish_oldest(
    in_flight: &mut VecDeque<InFlight>,
    more: impl Fn(&VecDeque<InFlight>) -> bool,
    opts: &SyncOptions,
    account: &AccountSettings,
    out: &mut SyncOutcome,
    progress: &dyn Progress,
    all_new: &std::sync::atomic::AtomicBool,
) -> Result<(), Stop> {
    while more(in_flight) {
        let f = in_flight.pop_front().expect("non-empty");
        if let Err(stop) = finish(f, opts, account, out, progress, all_new).await {
            for f in in_flight.drain(..) {
                let _ = f.task.await;
            }
            return Err(stop);
        }
    }
    Ok(())
}

/// Waits for a batch's transaction and accounts for it: counters, metrics, logs, progress,
/// and whether the fetcher should keep encoding for COPY.
async fn finish(
    f: InFlight,
    opts: &SyncOptions,
    account: &AccountSettings,
    out: &mut SyncOutcome,
    progress: &dyn Progress,
    all_new: &std::sync::atomic::AtomicBool,
) -> Result<(), Stop> {
    let (result, prepared) = f
        .task
        .await
        .map_err(|e| Stop::Listing(format!("writing a batch failed: {e}")))?;
    let result = result.map_err(Stop::Store)?;
    crate::failpoint::point("page_committed").await;
    let counts = result.counts;
    out.counts.add(&counts);
    all_new.store(
        counts.inserted == counts.users_seen,
        std::sync::atomic::Ordering::Relaxed,
    );
    // Counted for users written (new or changed): an unchanged user is not even decoded.
    for (field, value) in &result.unknown_enums {
        *out.unknown_enum_values
            .entry((field.to_string(), crate::source::shorten(value, 40)))
            .or_default() += 1;
    }
    tracing::debug!(
        pages = out.counts.pages,
        users_seen = out.counts.users_seen,
        "page committed"
    );
    if let Some(m) = &opts.metrics {
        let id = account.integrated_account_id.to_string();
        let a = id.as_str();
        m.add(
            "lms_sync_pages_total",
            &[("account", a)],
            counts.pages as f64,
        );
        for (change, n) in [
            ("inserted", counts.inserted),
            ("updated", counts.updated),
            ("unchanged", counts.unchanged),
            ("undeleted", counts.undeleted),
            ("rejected", counts.rejected),
        ] {
            m.add(
                "lms_sync_users_total",
                &[("account", a), ("change", change)],
                n as f64,
            );
        }
    }
    let decoded = &prepared.decoded;
    for r in decoded.rejected.iter().chain(&result.rejected) {
        tracing::warn!(user_id = r.user_id.as_deref(), reason = %r.reason, "record rejected; stored in rejected_records");
    }
    if decoded.duplicates > 0 {
        tracing::warn!(
            duplicates = decoded.duplicates,
            "the same user id appeared more than once in one page; the last one was kept"
        );
    }
    progress.page(account, &out.counts);
    Ok(())
}

/// Runs a store operation, retrying retryable errors (lost connection, restart, deadlock) with
/// backoff. Non-retryable errors return at once.
async fn with_db_retries<T, F, Fut>(
    opts: &SyncOptions,
    cancel: &CancellationToken,
    mut op: F,
) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let policy = Backoff {
        initial: Duration::from_millis(250),
        max: Duration::from_secs(10),
        max_attempts: opts.db_max_attempts,
        max_total_wait: Duration::from_secs(120),
    };
    let mut attempts = 0;
    let mut waited = Duration::ZERO;
    loop {
        attempts += 1;
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retryable() => {
                let Some(wait) = policy.next_wait(attempts, waited, None, fastrand::f64()) else {
                    return Err(e);
                };
                tracing::warn!(attempt = attempts, wait_ms = wait.as_millis() as u64, error = %e, "database operation failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = cancel.cancelled() => return Err(e),
                }
                waited += wait;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Syncs many accounts, at most `max_concurrent` at once, and returns their outcomes in the
/// order given.
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
                    return SyncOutcome {
                        account: a.integrated_account_id,
                        label: a.display_name(),
                        run_id: None,
                        status: PassStatus::Finished(Outcome::Interrupted),
                        counts: RunCounts::default(),
                        resumed: false,
                        complete_listing: false,
                        deletions_skipped_reason: None,
                        error: Some("not started: shutdown requested".into()),
                        error_kind: Some("interrupted".into()),
                        elapsed: Duration::ZERO,
                        health: None,
                        unknown_enum_values: Default::default(),
                    };
                }
                sync_account(store, source, a, opts, cancel, progress.as_ref()).await
            }
        })
        .buffered(max_concurrent.max(1))
        .collect()
        .await
}
