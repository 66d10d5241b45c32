//! The writer pipeline: batches of consecutive pages, each written in one transaction by a
//! task of its own, and accounted for in order.
//!
//! Invariants (the rest of the pass relies on them):
//! - **Order.** Batches are accounted for (counters, progress, metrics) in listing order, each
//!   as soon as it and those before it have committed (not when the next page arrives), and
//!   their cursor advances commit in listing order: a batch written ahead of the one before it
//!   holds its cursor advance until that one has committed (its gate).
//! - **All or nothing.** A batch's users, rejected records, history, cursor and counters commit
//!   together. If a batch fails, every batch after it rolls back (its gate says so), the writer
//!   waits for them and reports the first failure; what committed before stays.
//! - **Ahead only when safe.** A batch is written ahead only when it holds nothing but new
//!   users (COPY) that no earlier batch can hold, and the pool has an idle connection (a batch
//!   waiting for a connection behind batches that wait for it would stall).
//! - **Bounded.** At most [`PIPELINE_DEPTH`] batches are in flight, plus the one being started;
//!   a batch holds at most [`MAX_BATCH_PAGES`] pages and about [`MAX_BATCH_USERS`] users,
//!   and waits at most `sync.batch_fill_ms` per page for its first [`MIN_BATCH_PAGES`].
//! - **Never abandoned.** A batch's bounded retries run to the end even during shutdown: a batch
//!   is never cut in half. (A page too large to write whole goes in parts, a batch each; its
//!   cursor advances with its last part, so a listing stopped between parts fetches the page
//!   again, and the parts already written find their users unchanged.)

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::listing::{Arrival, Fetched, Stop};
use super::retry::with_db_retries;
use super::{Pass, SyncOptions, SyncOutcome};
use crate::domain::RunCounts;
use crate::model::DecodedPage;
use crate::store::{CopyRows, Gate, PageResult, PageWrite, Store, StoreError};

/// Batches of new users written at the same time, each in its own transaction (their cursor
/// advances still commit in order): PostgreSQL then works on more than one at once.
const PIPELINE_DEPTH: usize = 2;
/// The most API pages, and users, written in one transaction.
const MAX_BATCH_PAGES: usize = 8;
pub(super) const MAX_BATCH_USERS: usize = 1_000;
/// A batch smaller than this waits up to `sync.batch_fill_ms` for the next page before it
/// is written. Each transaction costs PostgreSQL a commit (a WAL flush under default
/// durability) and the bookkeeping rows of a batch; when pages arrive a little slower than
/// the database writes them, taking only what has arrived would write one page per
/// transaction. The wait only delays a batch's commit; the last page never waits.
const MIN_BATCH_PAGES: usize = 4;

/// A batch of consecutive pages, ready to be written in one transaction.
pub(super) struct Prepared {
    decoded: DecodedPage,
    /// The users encoded for COPY, a set per page, when every page was (and no user repeats).
    copy: Option<Vec<CopyRows>>,
    cursor: Option<String>,
    next_cursor: Option<String>,
    counts: RunCounts,
    lookup: Option<Vec<String>>,
}

/// Joins consecutive fetched pages into one batch. `lookup`: the ids that may already be
/// mirrored (`None`: any may).
pub(super) fn prepare(batch: Vec<Fetched>, lookup: Option<Vec<String>>) -> Prepared {
    let mut counts = RunCounts {
        // API pages: the parts of a page split for size count once, with its last part.
        pages: batch.iter().filter(|f| !f.more).count() as u64,
        ..RunCounts::default()
    };
    let cursor = batch[0].cursor.clone();
    let next_cursor = batch[batch.len() - 1].next_to_store().map(str::to_string);
    let mut decoded = DecodedPage::default();
    let mut copy: Option<Vec<CopyRows>> = Some(Vec::with_capacity(batch.len()));
    for f in batch {
        counts.add_requests(f.page.requests);
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

/// Takes the next batch: the page received, and whatever else has arrived, up to a batch (and
/// the fetcher's reason to stop, if it came right after). While `fill_until` is closed, it
/// waits for more pages instead of taking only what has arrived; otherwise a batch of fewer
/// than [`MIN_BATCH_PAGES`] waits up to `fill_wait` for each next page.
pub(super) async fn next_batch(
    received: Option<Arrival>,
    rx: &mut mpsc::Receiver<Arrival>,
    mut fill_until: Option<Gate>,
    fill_wait: std::time::Duration,
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
            Err(mpsc::error::TryRecvError::Disconnected) => None,
            Err(mpsc::error::TryRecvError::Empty) => match fill_until.as_mut() {
                Some(gate) => tokio::select! {
                    biased;
                    next = rx.recv() => next,
                    _ = gate.wait_for(Option::is_some) => break,
                },
                None if batch.len() < MIN_BATCH_PAGES && !fill_wait.is_zero() => {
                    match tokio::time::timeout(fill_wait, rx.recv()).await {
                        Ok(next) => next,
                        Err(_) => break,
                    }
                }
                None => break,
            },
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

/// A batch being written by a task of its own.
struct InFlight {
    task: tokio::task::JoinHandle<(Result<PageResult, StoreError>, Prepared)>,
    /// Opens when it has committed (or failed): the gate of a batch written ahead of it.
    committed: Gate,
}

/// The batches being written, oldest first (see the module's invariants).
pub(super) struct Writer<'p, 'a> {
    pass: &'p Pass<'a>,
    run_id: i64,
    in_flight: VecDeque<InFlight>,
    /// Shared with the fetcher: whether the last batch was all new users.
    all_new: Arc<AtomicBool>,
}

impl<'p, 'a> Writer<'p, 'a> {
    pub fn new(pass: &'p Pass<'a>, run_id: i64, all_new: Arc<AtomicBool>) -> Self {
        Writer {
            pass,
            run_id,
            in_flight: VecDeque::new(),
            all_new,
        }
    }

    /// With the pipeline full, the next batch can grow until the oldest batch commits (a
    /// fuller batch costs nothing then); otherwise it takes what has arrived.
    pub fn fill_until(&self) -> Option<Gate> {
        (self.in_flight.len() >= PIPELINE_DEPTH).then(|| self.in_flight[0].committed.clone())
    }

    /// Starts writing `prepared`: ahead of the batches in flight when it may be, otherwise
    /// after they have all finished. Keeps at most [`PIPELINE_DEPTH`] in flight.
    pub async fn submit(&mut self, prepared: Prepared, out: &mut SyncOutcome) -> Result<(), Stop> {
        let ahead = !self.in_flight.is_empty()
            && prepared.copy.is_some()
            && prepared.lookup.as_ref().is_some_and(Vec::is_empty)
            && self.pass.store.has_idle_connection();
        let gate = if ahead {
            self.in_flight.back().map(|f| f.committed.clone())
        } else {
            self.finish_all(out).await?;
            None
        };
        let next = self.start(prepared, gate);
        self.in_flight.push_back(next);
        self.finish_while(|q| q.len() > PIPELINE_DEPTH, out).await
    }

    /// Opens when the oldest batch in flight has committed (or failed); `None` with none in
    /// flight.
    pub fn oldest_committed(&self) -> Option<Gate> {
        self.in_flight.front().map(|f| f.committed.clone())
    }

    /// Waits for the oldest batch in flight (if any) and accounts for it.
    pub async fn finish_oldest(&mut self, out: &mut SyncOutcome) -> Result<(), Stop> {
        let rest = self.in_flight.len().saturating_sub(1);
        self.finish_while(|q| q.len() > rest, out).await
    }

    /// Accounts for the oldest batches that have already committed (or failed).
    pub async fn finish_committed(&mut self, out: &mut SyncOutcome) -> Result<(), Stop> {
        self.finish_while(
            |q| q.front().is_some_and(|f| f.committed.borrow().is_some()),
            out,
        )
        .await
    }

    /// Waits for every batch in flight.
    pub async fn finish_all(&mut self, out: &mut SyncOutcome) -> Result<(), Stop> {
        self.finish_while(|q| !q.is_empty(), out).await
    }

    /// Finishes batches, oldest first, while `more` says so. After a failure the later ones
    /// roll back on their own (their gates say a batch before them failed) and are only
    /// awaited.
    async fn finish_while(
        &mut self,
        more: impl Fn(&VecDeque<InFlight>) -> bool,
        out: &mut SyncOutcome,
    ) -> Result<(), Stop> {
        while more(&self.in_flight) {
            let f = self.in_flight.pop_front().expect("non-empty");
            if let Err(stop) = self.finish(f, out).await {
                for f in self.in_flight.drain(..) {
                    let _ = f.task.await;
                }
                return Err(stop);
            }
        }
        Ok(())
    }

    /// Starts a batch's transaction, retried whole on retryable database errors. With a gate,
    /// its cursor advance waits for the previous batch (see [`Store::apply_page`]).
    fn start(&self, prepared: Prepared, gate: Option<Gate>) -> InFlight {
        tracing::trace!(ahead = gate.is_some(), "writing a batch");
        let (done_tx, committed) = tokio::sync::watch::channel(None);
        let store: Store = self.pass.store.clone();
        let opts: SyncOptions = self.pass.opts.clone();
        let account = self.pass.account;
        let (id, run_id, hydrate) = (account.integrated_account_id, self.run_id, account.hydrate);
        let task = tokio::spawn(async move {
            let write = PageWrite {
                page: &prepared.decoded,
                all_new: prepared.copy.as_deref(),
                cursor: prepared.cursor.as_deref(),
                next_cursor: prepared.next_cursor.as_deref(),
                counts: prepared.counts,
                lookup: prepared.lookup.as_deref(),
                history: opts.history,
                hydrate,
            };
            // IMPORTANT: a page is never abandoned for shutdown; its (bounded) retries run to
            // the end so that rows and cursor commit together or not at all.
            let never = CancellationToken::new();
            let started = std::time::Instant::now();
            let result = with_db_retries(&store, &opts, &never, || {
                store.apply_page(id, run_id, &write, gate.clone())
            })
            .await;
            if let Some(m) = &opts.metrics {
                m.observe(
                    "lms_sync_page_write_duration_seconds",
                    &[],
                    started.elapsed().as_secs_f64(),
                );
            }
            let _ = done_tx.send(Some(result.is_ok()));
            (result, prepared)
        });
        InFlight { task, committed }
    }

    /// Waits for a batch's transaction and accounts for it: counters, metrics, logs, progress,
    /// and whether the fetcher should keep encoding for COPY.
    async fn finish(&self, f: InFlight, out: &mut SyncOutcome) -> Result<(), Stop> {
        let (result, prepared) = f
            .task
            .await
            .map_err(|e| Stop::Listing(format!("writing a batch failed: {e}")))?;
        let result = result.map_err(Stop::Store)?;
        crate::failpoint::point("page_committed").await;
        let counts = result.counts;
        out.counts.add(&counts);
        // Fresh planner statistics while a first sync grows the tables (see Store::note_inserted).
        self.pass.store.note_inserted(counts.inserted);
        self.all_new
            .store(counts.inserted == counts.users_seen, Ordering::Relaxed);
        // Counted for users written (new or changed): an unchanged user is not even decoded.
        for (field, value) in &result.unknown_enums {
            *out.unknown_enum_values
                .entry((field.to_string(), crate::text::shorten(value, 40)))
                .or_default() += 1;
        }
        tracing::debug!(
            pages = out.counts.pages,
            users_seen = out.counts.users_seen,
            "page committed"
        );
        self.count_metrics(&counts);
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
        self.pass.progress.page(self.pass.account, &out.counts);
        Ok(())
    }

    fn count_metrics(&self, counts: &RunCounts) {
        let Some(m) = &self.pass.opts.metrics else {
            return;
        };
        let id = self.pass.id().to_string();
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
}
