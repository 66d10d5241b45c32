//! Following one listing: the first page (a refused saved cursor restarts the listing), the
//! seen-id filter sized to the account, the fetcher that runs ahead of the writer, and the
//! writer's loop that turns arriving pages into batches for [`super::writer::Writer`].

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::retry::with_db_retries;
use super::seen::SeenIds;
use super::writer::{next_batch, prepare, Writer};
use super::{Pass, SyncOutcome};
use crate::config::AccountSettings;
use crate::source::{Failed, FetchedPage, SourceError, TrutoClient};
use crate::store::{CopyRows, StoreError};

/// Pages the fetcher may hold ahead of the writer.
const LOOKAHEAD: usize = 8;
/// The most records of one API page decoded and written together: a larger page (a server
/// that ignores `limit`) goes to the writer in parts of this size, a batch's worth.
const PAGE_PART: usize = super::writer::MAX_BATCH_USERS;

/// Why the listing stopped early.
pub(super) enum Stop {
    /// The API failed for good, after this many requests.
    Source(SourceError, u32),
    Store(StoreError),
    /// A protocol violation by the API that makes the cursor useless (repeat, too many pages).
    Listing(String),
    Cancelled,
}

/// A listing that went through to its last page.
pub(super) struct Listing {
    pub resumed: bool,
    pub partial: bool,
    /// Every id the listing contained (bad records with a usable id included).
    pub seen: SeenIds,
    /// The account had no users when the listing started: every live user now came from it,
    /// so there is nothing to sweep.
    pub started_empty: bool,
}

/// A fetched page and the cursor it was fetched with.
pub(super) struct Fetched {
    pub page: FetchedPage,
    pub cursor: Option<String>,
    /// Its next cursor was seen before in this listing: write it, then stop.
    pub repeated: bool,
    /// The page's users encoded for COPY, should they all be new (when the fetcher expected so).
    pub copy: Option<CopyRows>,
    /// A part of an API page too large to write whole (see [`FetchedPage::into_parts`]) that
    /// more parts of the same page follow: it ends nothing, and its cursor stays.
    pub more: bool,
}

impl Fetched {
    pub fn is_last(&self) -> bool {
        !self.more && (self.page.next_cursor.is_none() || self.repeated)
    }

    /// The cursor to store after this page: none when the listing ends here (or loops); the
    /// page's own while more of it follows (a resumed listing fetches it again).
    pub fn next_to_store(&self) -> Option<&str> {
        if self.more {
            self.cursor.as_deref()
        } else if self.repeated {
            None
        } else {
            self.page.next_cursor.as_deref()
        }
    }
}

/// A page being decoded on a blocking thread.
pub(super) struct Decoding(tokio::task::JoinHandle<Fetched>);

impl Decoding {
    pub async fn done(self) -> Result<Fetched, Stop> {
        self.0
            .await
            .map_err(|e| Stop::Listing(format!("decoding a page failed: {e}")))
    }
}

/// What the fetcher sends the writer: a page being decoded, or why the listing stops.
pub(super) type Arrival = Result<Decoding, Stop>;

/// Follows the listing from `resume_cursor` (or the first page) to its end, writing every page.
pub(super) async fn follow(
    p: &Pass<'_>,
    run_id: i64,
    resume_cursor: Option<String>,
    out: &mut SyncOutcome,
) -> Result<Listing, Stop> {
    let mut listing = Listing {
        resumed: resume_cursor.is_some(),
        partial: false,
        seen: SeenIds::sized(run_id as u64, 0),
        started_empty: false,
    };
    let (first, cursor) = first_page(p, run_id, resume_cursor, &mut listing, out).await?;
    // The cursors this listing was given (see cursor_key), to notice one that repeats.
    let mut cursors: HashSet<u64> = HashSet::new();
    if let Some(c) = &cursor {
        cursors.insert(cursor_key(c));
    }
    size_seen_filter(p, run_id, &mut listing).await?;
    // Whether the last batch was all new users (from the start: whether the account is empty).
    // The fetcher then decodes pages in full and encodes them for COPY ahead; otherwise it only
    // scans them, and the writer decodes just the users whose text changed.
    let all_new = Arc::new(AtomicBool::new(listing.started_empty));
    // The fetcher runs ahead of the writer by at most LOOKAHEAD pages (memory stays flat), in
    // a task of its own so that decoding runs in parallel with the writer's database work; it
    // never outlives the writer.
    let (tx, rx) = mpsc::channel::<Arrival>(LOOKAHEAD);
    let fetcher = Fetcher {
        source: p.source.clone(),
        account: p.account.clone(),
        max_pages: p.opts.max_pages,
        cancel: p.cancel.clone(),
        run_id,
        cursors,
        tx,
        all_new: all_new.clone(),
    };
    // In the run's span: its requests' events (retries) carry the account and the run.
    let _fetcher =
        AbortOnDropHandle::new(tokio::spawn(fetcher.run(first, cursor).in_current_span()));
    write_all(p, run_id, rx, &mut listing, all_new, out).await?;
    Ok(listing)
}

/// Fetches the first page. A resumed cursor the API no longer accepts restarts the listing.
async fn first_page(
    p: &Pass<'_>,
    run_id: i64,
    mut cursor: Option<String>,
    listing: &mut Listing,
    out: &mut SyncOutcome,
) -> Result<(FetchedPage, Option<String>), Stop> {
    let refused = match p
        .source
        .fetch_page(p.account, cursor.as_deref(), p.cancel)
        .await
    {
        Ok(page) => return Ok((page, cursor)),
        Err(refused) if listing.resumed && stale_cursor(&refused.error) => refused,
        Err(e) => return Err(source_stop(e)),
    };
    tracing::warn!(error = %refused.error, "the saved cursor was refused; restarting the listing from the first page");
    with_db_retries(p.store, p.opts, p.cancel, || {
        p.store.restart_listing(p.id(), run_id)
    })
    .await
    .map_err(Stop::Store)?;
    listing.resumed = false;
    out.resumed = false;
    cursor = None;
    let mut page = p
        .source
        .fetch_page(p.account, None, p.cancel)
        .await
        .map_err(source_stop)?;
    // The refused requests are committed with the first page's.
    page.requests += refused.requests;
    Ok((page, cursor))
}

/// Notes whether the account starts empty and sizes the seen-id filter to it.
async fn size_seen_filter(p: &Pass<'_>, run_id: i64, listing: &mut Listing) -> Result<(), Stop> {
    // An account with no users yet (a first sync) needs no lookups for ids this listing has not
    // shown before: we hold its lease, so only this run adds users.
    listing.started_empty = !listing.resumed
        && with_db_retries(p.store, p.opts, p.cancel, || {
            p.store.account_is_empty(p.id())
        })
        .await
        .map_err(Stop::Store)?;
    if listing.started_empty {
        // A first sync asks the filter only which ids it has already listed, to look just those
        // up (it sweeps nothing): 1 MiB keeps needless lookups under 0.001 % at 100,000 users
        // and about 2 % at a million, whatever the account's size.
        listing.seen = SeenIds::sized(run_id as u64, 13_107);
    } else if !listing.resumed {
        // A fresh listing of an account with users sweeps: size its filter to the account (with
        // room for growth). A resumed listing neither sweeps nor asks.
        let live = with_db_retries(p.store, p.opts, p.cancel, || p.store.live_users(p.id()))
            .await
            .map_err(Stop::Store)?
            .max(0) as u64;
        listing.seen = SeenIds::sized(run_id as u64, live + live / 4 + 1000);
    }
    Ok(())
}

/// The writer's loop: takes the pages as they arrive, a batch at a time, notes their ids,
/// and hands each batch to the pipeline, until the listing ends or stops.
async fn write_all(
    p: &Pass<'_>,
    run_id: i64,
    mut rx: mpsc::Receiver<Arrival>,
    listing: &mut Listing,
    all_new: Arc<AtomicBool>,
    out: &mut SyncOutcome,
) -> Result<(), Stop> {
    let mut writer = Writer::new(p, run_id, all_new);
    loop {
        // While waiting for the next page, each batch is accounted for as it commits, oldest
        // first: a paced account's next page can be a window away, and the batch's counters,
        // progress, metrics and the fetcher's mode must not wait for it.
        let received = loop {
            let Some(mut oldest) = writer.oldest_committed() else {
                break rx.recv().await;
            };
            tokio::select! {
                biased;
                received = rx.recv() => break received,
                // Also when its task ended without saying (a panic): finishing it reports that.
                // (The guard `wait_for` returns is dropped before anything is awaited.)
                _ = async { drop(oldest.wait_for(Option::is_some).await) } => {
                    writer.finish_oldest(out).await?
                }
            }
        };
        // Batches that have committed meanwhile are accounted for now, in order.
        writer.finish_committed(out).await?;
        let (batch, pending) = match next_batch(
            received,
            &mut rx,
            writer.fill_until(),
            p.opts.batch_fill_wait,
        )
        .await
        {
            Ok(b) => b,
            Err(stop) => {
                // What is being written still commits (or not) before we stop.
                writer.finish_all(out).await?;
                return Err(stop);
            }
        };
        let last = batch.last().expect("non-empty");
        let (done, repeated) = (last.is_last(), last.repeated);
        listing.partial |= batch.iter().any(|f| f.page.is_partial);
        // Ids that may already be mirrored: all of them, unless the account started empty,
        // then only those seen earlier in this listing (or false positives: harmless).
        let lookup: Option<Vec<String>> = listing.started_empty.then(|| {
            batch
                .iter()
                .flat_map(|f| f.page.decoded.ids())
                .filter(|id| listing.seen.contains(id))
                .map(str::to_string)
                .collect()
        });
        for f in &batch {
            let decoded = &f.page.decoded;
            let rejected_ids = decoded.rejected.iter().filter_map(|r| r.user_id.as_deref());
            for id in decoded.ids().chain(rejected_ids) {
                listing.seen.insert(id);
            }
        }
        writer.submit(prepare(batch, lookup), out).await?;
        if done || repeated || pending.is_some() || p.cancel.is_cancelled() {
            writer.finish_all(out).await?;
            if repeated {
                return Err(Stop::Listing(format!(
                    "the API returned a cursor it had already returned in this listing (after {} pages); the listing was stopped instead of looping",
                    out.counts.pages
                )));
            }
            return match (pending, done) {
                (Some(stop), _) => Err(stop),
                (None, true) => Ok(()),
                (None, false) => Err(Stop::Cancelled),
            };
        }
    }
}

/// Follows the cursor, sending each page (or the reason to stop) to the writer.
struct Fetcher {
    source: TrutoClient,
    account: AccountSettings,
    max_pages: u64,
    cancel: CancellationToken,
    run_id: i64,
    /// The cursors seen so far (see [`cursor_key`]).
    cursors: HashSet<u64>,
    tx: mpsc::Sender<Arrival>,
    /// Whether to decode and encode pages for COPY (the last batch was all new users).
    all_new: Arc<AtomicBool>,
}

impl Fetcher {
    /// From the page `first`, fetched with `first_cursor`, to the end of the listing.
    async fn run(mut self, first: FetchedPage, first_cursor: Option<String>) {
        let mut page = first;
        let mut cursor = first_cursor;
        let mut pages: u64 = 1;
        loop {
            let next = page.next_cursor.clone();
            let repeated = next
                .as_ref()
                .is_some_and(|n| !self.cursors.insert(cursor_key(n)));
            let last = next.is_none() || repeated;
            let parts = page.into_parts(PAGE_PART);
            let count = parts.len();
            for (i, part) in parts.into_iter().enumerate() {
                let more = i + 1 < count;
                let decoding = self.decode(part, cursor.clone(), repeated && !more, more);
                if self.tx.send(Ok(decoding)).await.is_err() {
                    return;
                }
            }
            if last {
                return;
            }
            let next = next.expect("not the last page");
            if pages >= self.max_pages {
                let _ = self
                    .tx
                    .send(Err(Stop::Listing(format!(
                        "the listing has more than truto.max_pages = {} pages; raise it if the account really is that large",
                        self.max_pages
                    ))))
                    .await;
                return;
            }
            match self
                .source
                .fetch_page(&self.account, Some(&next), &self.cancel)
                .await
            {
                Ok(p) => page = p,
                Err(e) => {
                    let _ = self.tx.send(Err(source_stop(e))).await;
                    return;
                }
            }
            pages += 1;
            cursor = Some(next);
        }
    }

    /// Decodes the page (and, when the last batch was all new users, encodes it for COPY) on
    /// a thread of its own while the next request is already under way.
    fn decode(
        &self,
        mut page: FetchedPage,
        cursor: Option<String>,
        repeated: bool,
        more: bool,
    ) -> Decoding {
        let encode = self.all_new.load(Ordering::Relaxed);
        let (account_id, run_id) = (self.account.integrated_account_id, self.run_id);
        Decoding(tokio::task::spawn_blocking(move || {
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
                more,
            }
        }))
    }
}

/// What the repeat check keeps of a cursor: a hash (8 bytes a page, not the cursor's text).
fn cursor_key(cursor: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(cursor.as_bytes())
}

pub(super) fn source_stop(f: Failed) -> Stop {
    match f.error {
        SourceError::Cancelled => Stop::Cancelled,
        e => Stop::Source(e, f.requests),
    }
}

/// A 4xx other than auth/scope/blocked answering a resumed cursor means the cursor expired, or
/// cannot be sent at all (414: longer than the server takes in a URL; kept, it would fail every
/// later run until `reset-cursor`).
fn stale_cursor(e: &SourceError) -> bool {
    matches!(e, SourceError::Status { status, .. } if matches!(*status, 400 | 404 | 410 | 414 | 422))
}
