//! Hydration: fetching the full objects of an account's queued users, up to its per-run
//! allowance, and merging them into their rows (see `Store::apply_hydration`). A failed GET
//! leaves its user queued for a later retry and never stops the others; an error that concerns
//! the whole account (or the database, a shutdown, or the process halting) stops the phase,
//! and the queue waits for the next run.

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::retry::with_db_retries;
use super::Pass;
use crate::domain::{ErrorKind, RunCounts};
use crate::model::UserRecord;
use crate::source::{Failed, SourceError};
use crate::text::shorten;

/// A queued user's id and what its GET answered (the body and the requests it took).
type UserAnswer = (String, Result<(String, u32), Failed>);

/// Single-user GETs in flight at once while hydrating (the request budget paces them).
const HYDRATE_CONCURRENCY: usize = 4;

/// A batch of answers, sorted.
#[derive(Default)]
struct Sorted {
    full: Vec<UserRecord>,
    /// Users whose GET failed (they stay queued), with why.
    failed: Vec<(String, String)>,
    /// Users the API says do not exist (they leave the queue).
    gone: Vec<String>,
    /// Why the phase must stop, if it must.
    stop: Option<String>,
}

/// Runs the hydration phase. Returns the counters (and them with the error when it stopped
/// early).
pub(super) async fn run(p: &Pass<'_>, run_id: i64) -> Result<RunCounts, (RunCounts, String)> {
    let id = p.id();
    let allowance = p
        .account
        .hydrate_max_per_run
        .unwrap_or(p.opts.hydrate_max_per_run) as u64;
    let mut counts = RunCounts::default();
    let mut fetched = 0u64;
    let never = CancellationToken::new();
    while fetched < allowance && !p.cancel.is_cancelled() {
        let take = (allowance - fetched).min(100) as u32;
        let due = with_db_retries(p.store, p.opts, p.cancel, || {
            p.store.hydration_due(id, take)
        })
        .await
        .map_err(|e| (counts, e.to_string()))?;
        if due.is_empty() {
            break;
        }
        fetched += due.len() as u64;
        let answers: Vec<UserAnswer> = futures_util::stream::iter(due)
            .map(|uid| async move {
                let r = p.source.fetch_user(p.account, &uid, p.cancel).await;
                (uid, r)
            })
            .buffer_unordered(HYDRATE_CONCURRENCY)
            .collect()
            .await;
        let sorted = sort(answers, &mut counts, p);
        for (uid, error) in &sorted.failed {
            tracing::warn!(user_id = %uid, %error, "could not fetch the user's full object; retried later");
        }
        // Like a page, a hydration batch is never abandoned half-written for shutdown.
        with_db_retries(p.store, p.opts, &never, || {
            p.store.apply_hydration(
                id,
                run_id,
                &sorted.full,
                &sorted.failed,
                &sorted.gone,
                p.opts.history,
            )
        })
        .await
        .map_err(|e| (counts, e.to_string()))?;
        count_metrics(p, &sorted);
        if let Some(why) = sorted.stop {
            return Err((counts, why));
        }
    }
    if let Ok(left) = p.store.hydration_pending(id).await {
        if left > 0 {
            tracing::info!(
                pending = left,
                "users still queued for hydration (per-run allowance used, or waiting for a retry)"
            );
        }
    }
    Ok(counts)
}

/// Sorts the answers into full objects, failures and users that are gone, and counts their
/// requests.
fn sort(answers: Vec<UserAnswer>, counts: &mut RunCounts, p: &Pass<'_>) -> Sorted {
    let mut s = Sorted::default();
    for (uid, answer) in answers {
        match answer {
            Ok((body, requests)) => {
                counts.add_requests(requests);
                match crate::model::decode_user(&body) {
                    Ok(u) if u.id == uid => s.full.push(u),
                    Ok(u) => s.failed.push((
                        uid,
                        format!("the full object has id {:?}", shorten(&u.id, 60)),
                    )),
                    Err(r) => s.failed.push((uid, r.reason)),
                }
            }
            Err(f) if matches!(f.error, SourceError::Cancelled) => {
                s.stop = Some(match (p.halt(), p.stop_why()) {
                    (Some(halt), _) => format!("stopped: {halt}"),
                    (None, Some(why)) => format!("stopped: {why}"),
                    (None, None) => "interrupted by shutdown".into(),
                })
            }
            Err(Failed { error: e, requests }) => {
                counts.add_requests(requests);
                if e.status() == Some(404) {
                    s.gone.push(uid);
                } else if e.kind().health().is_some() || e.kind() == ErrorKind::BadToken {
                    s.stop = Some(e.to_string());
                } else {
                    s.failed.push((uid, e.to_string()));
                }
            }
        }
    }
    counts.hydrated += s.full.len() as u64;
    counts.hydration_failures += s.failed.len() as u64;
    s
}

fn count_metrics(p: &Pass<'_>, s: &Sorted) {
    let Some(m) = &p.opts.metrics else { return };
    let a = p.id().to_string();
    for (result, n) in [
        ("merged", s.full.len()),
        ("failed", s.failed.len()),
        ("gone", s.gone.len()),
    ] {
        m.add(
            "lms_sync_hydrations_total",
            &[("account", &a), ("result", result)],
            n as f64,
        );
    }
}
