//! The steps of one pass over a leased account, in order: open the run, follow the listing,
//! decide what the listing's end means (deletions, failure), hydrate, close the run, prune
//! history, report.

use std::time::Instant;

use tokio_util::sync::CancellationToken;

use super::listing::{self, Listing, Stop};
use super::retry::with_db_retries;
use super::{Pass, PassStatus, SyncOutcome};
use crate::domain::{ErrorKind, Health, Outcome, RunCounts};
use crate::source::SourceError;
use crate::store::{RunEnd, RunStart};

/// Runs the pass; `out` says what it did.
pub(super) async fn run(
    p: &Pass<'_>,
    out: &mut SyncOutcome,
    span: &tracing::Span,
    started: Instant,
) {
    let Some(start) = open_run(p, out).await else {
        return;
    };
    span.record("run_id", start.run_id);
    let run_id = start.run_id;
    let listing = listing::follow(p, run_id, start.resume_cursor, out).await;

    let listed = listing.is_ok();
    let mut end = conclude_listing(p, run_id, listing, out).await;
    if listed && p.account.hydrate && end.outcome != Outcome::Failed {
        match super::hydrate::run(p, run_id).await {
            Ok(h) => end.hydration = h,
            Err((h, e)) => {
                end.hydration = h;
                tracing::warn!(error = %e, "hydration stopped early; the rest of the queue waits for the next run");
            }
        }
        out.counts.add(&end.hydration);
    }
    if end.health.is_none()
        && (out.complete_listing
            || out.counts.pages > 0
            || out.counts.users_seen > 0
            || out.counts.rejected > 0)
    {
        // The API answered for this account (a page, or a part of one, was written): whatever
        // kept it unhealthy is over.
        end.health = Some(Health::Ok);
    }
    out.counts.deleted = end.deleted;
    out.deletions_skipped_reason = end.deletions_skipped_reason.clone();
    out.error = end.error.clone();
    out.error_kind = end.error_kind;
    close_run(p, run_id, &end, out).await;
    upkeep(p, out).await;
    out.elapsed = started.elapsed();
    log_summary(out);
    if let Some(m) = &p.opts.metrics {
        record_run(m, out);
    }
}

/// Opens the run; `None` (with the error in `out`) when the database refused.
async fn open_run(p: &Pass<'_>, out: &mut SyncOutcome) -> Option<RunStart> {
    let account = p.account;
    let begun = with_db_retries(p.store, p.opts, p.cancel, || {
        p.store
            .begin_run(p.id(), account.label.as_deref(), &p.opts.worker)
    })
    .await;
    let start = match begun {
        Ok(s) => s,
        Err(e) => {
            let e = p.store.explain(e).await.to_string();
            // No run is recorded, and no summary logged: this line is what says it.
            tracing::error!(error = %e, "sync run not started: the database did not record its start");
            out.error = Some(e);
            out.error_kind = Some(ErrorKind::Database);
            return None;
        }
    };
    out.run_id = Some(start.run_id);
    out.resumed = start.resume_cursor.is_some();
    if let (Some(held), Some(budget)) = (start.held_for, p.source.budget()) {
        // The server's word, recorded by the run that heard it (in any process): this run's
        // first request waits for it, or fails at once when it is too long to wait.
        budget.pause(p.id(), held, Instant::now());
    }
    if start.interrupted_runs > 0 {
        tracing::warn!(
            runs = start.interrupted_runs,
            "an earlier run of this account was interrupted; marked as such"
        );
    }
    p.progress.started(account, out.resumed);
    Some(start)
}

/// What the listing's end means for the run: a complete listing may infer deletions (see
/// [`super::sweep`]); a stopped one says why.
async fn conclude_listing(
    p: &Pass<'_>,
    run_id: i64,
    listing: Result<Listing, Stop>,
    out: &mut SyncOutcome,
) -> RunEnd {
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
        held_for: None,
        hold_known: false,
    };
    match listing {
        Ok(listing) => {
            end.complete_listing = true;
            out.complete_listing = true;
            out.delete_guard_tripped =
                super::sweep::after_listing(p, run_id, &listing, &mut end).await;
        }
        Err(stop) => stopped(p, stop, &mut end).await,
    }
    end
}

/// How a listing that stopped early ends the run.
async fn stopped(p: &Pass<'_>, stop: Stop, end: &mut RunEnd) {
    end.deletions_skipped_reason = Some("the listing did not complete".into());
    end.outcome = Outcome::Failed;
    match stop {
        Stop::Cancelled if p.lease_lost.is_some_and(CancellationToken::is_cancelled) => {
            end.outcome = Outcome::Interrupted;
            end.error = Some(
                "stopped: this process lost the account's lease with its database connection, and another process may be syncing the account; the next run resumes from the last committed page".into(),
            );
            end.error_kind = Some(ErrorKind::LeaseLost);
        }
        Stop::Cancelled => {
            end.outcome = Outcome::Interrupted;
            end.error = Some(match (p.halt(), p.stop_why()) {
                (Some(halt), _) => format!(
                    "stopped: {halt}; the account's next run, once runs start again, resumes from the last committed page"
                ),
                (None, Some(why)) => {
                    format!("stopped: {why}; its next run resumes from the last committed page")
                }
                (None, None) => {
                    "interrupted by shutdown; the next run resumes from the last committed page"
                        .into()
                }
            });
            end.error_kind = Some(ErrorKind::Interrupted);
        }
        Stop::Source(e, requests) => {
            // The failed requests count too (they are not in any committed page).
            end.failed_requests = requests;
            end.held_for = e.held_for();
            end.hold_known = matches!(e, SourceError::Held { .. });
            end.health = e.kind().health();
            end.error_kind = Some(e.kind());
            end.error = Some(e.to_string());
        }
        Stop::Store(e) => {
            end.error_kind = Some(ErrorKind::Database);
            end.error = Some(p.store.explain(e).await.to_string());
        }
        Stop::Listing(m) => {
            end.error_kind = Some(ErrorKind::Listing);
            end.error = Some(m);
            end.reset_cursor = true;
        }
    }
}

/// Records the run's end, and logs a change of the account's health.
async fn close_run(p: &Pass<'_>, run_id: i64, end: &RunEnd, out: &mut SyncOutcome) {
    // Closing the run must not be skipped because shutdown was requested.
    let never = CancellationToken::new();
    let closed = with_db_retries(p.store, p.opts, &never, || {
        p.store.finish_run(p.id(), run_id, end)
    })
    .await;
    match closed {
        Ok(recorded) => {
            out.status = PassStatus::Finished(end.outcome);
            // What the run found, unless the account's state says otherwise now (a
            // `needs_reauth` Truto reported while the run was under way stands).
            out.health = match recorded {
                Some((_, now)) => end.health.map(|_| now),
                None => end.health,
            };
            match (recorded.map(|(was, _)| was), out.health) {
                (Some(was), Some(Health::Ok)) if !was.is_ok() => {
                    tracing::info!(%was, "the account answers again; back on its regular schedule")
                }
                (Some(was), Some(now)) if !now.is_ok() && was != now => tracing::error!(
                    health = %now,
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
}

/// After-run upkeep: the account's daily counts, and its tables pruned past their retention.
/// Failures are logged and tried again after the next run; they never fail the run.
async fn upkeep(p: &Pass<'_>, out: &SyncOutcome) {
    let id = p.id();
    let unknown: Vec<(&str, &str, i64)> = out
        .unknown_enum_values
        .iter()
        .map(|((f, v), n)| (f.as_str(), v.as_str(), *n as i64))
        .collect();
    if !unknown.is_empty() {
        // Once per run, not per record: the vendor grew its enums; the values are kept as text.
        // A warning only for a value new to the fleet: a vendor's value is shown by each of its
        // accounts, and again whenever one of its users changes, which is news once.
        let values = |keep: &dyn Fn(&str, &str) -> bool| -> String {
            unknown
                .iter()
                .filter(|(f, v, _)| keep(f, v))
                .map(|(f, v, n)| format!("{f}={v} ({n} users)"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match p.store.note_unknown_enums(id, &unknown).await {
            Ok(new) if !new.is_empty() => {
                tracing::warn!(values = %values(&|f, v| new.iter().any(|(nf, nv)| nf == f && nv == v)),
                    "undocumented enum values new to the fleet, stored as given (every account's in unknown_enum_values)");
            }
            Ok(_) => {
                tracing::debug!(values = %values(&|_, _| true), "undocumented enum values seen before, stored as given");
            }
            Err(e) => {
                tracing::warn!(error = %e, values = %values(&|_, _| true), "undocumented enum values seen (stored as given); could not record them in unknown_enum_values");
            }
        }
    }
    match p.store.refresh_daily_counts(id).await {
        Ok(_) => {
            if let Err(e) = p.store.note_user_counts(id).await {
                tracing::warn!(error = %e, "could not note the account's user counts; the status shows the last ones noted until the next run");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not update daily_user_counts; trying again after the next run");
        }
    }
    let o = p.opts;
    if o.history_retention_days > 0 {
        let days = o.history_retention_days;
        pruned("user_changes", days, p.store.prune_history(id, days).await);
    }
    if o.sync_runs_retention_days > 0 {
        let days = o.sync_runs_retention_days;
        pruned("sync_runs", days, p.store.prune_runs(id, days).await);
    }
    if o.rejected_records_retention_days > 0 {
        let days = o.rejected_records_retention_days;
        pruned(
            "rejected_records",
            days,
            p.store.prune_rejected(id, days).await,
        );
    }
}

fn pruned(table: &str, days: u32, result: Result<u64, crate::store::StoreError>) {
    match result {
        Ok(0) => {}
        Ok(n) => tracing::info!(table, rows = n, retention_days = days, "pruned old rows"),
        Err(e) => {
            tracing::warn!(table, error = %e, "could not prune old rows; trying again after the next run")
        }
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
    m.observe("lms_sync_run_duration_seconds", &[], secs);
    // Counted per field: the values themselves are in unknown_enum_values (and in the log when
    // new to the fleet).
    for ((field, _), n) in &out.unknown_enum_values {
        m.add(
            "lms_sync_unknown_enum_values_total",
            &[("account", a), ("field", field)],
            *n as f64,
        );
    }
    if out.delete_guard_tripped {
        m.inc("lms_sync_delete_guard_tripped_total", &[("account", a)]);
    }
}

fn log_summary(out: &SyncOutcome) {
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
