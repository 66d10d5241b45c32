//! Where deletions are decided. Only a complete, fresh listing may infer them: one that was
//! resumed from an earlier run's cursor or marked partial by Truto infers none, and one that
//! would delete more than the account's `max_delete_fraction` of its live users is refused by
//! the guard (the run then needs attention). The store streams the ids and writes the marks.

use super::listing::Listing;
use super::retry::with_db_retries;
use super::Pass;
use crate::domain::{ErrorKind, Outcome};
use crate::store::RunEnd;

/// Why a complete listing may not infer deletions, if it may not: the reason, and whether it
/// needs someone's attention (a resumed listing is normal after a stop; a partial one is not).
pub fn skip_reason(resumed: bool, partial: bool) -> Option<(&'static str, bool)> {
    if resumed {
        Some(("the listing was resumed from an earlier run's cursor; the next complete listing infers deletions", false))
    } else if partial {
        Some((
            "Truto marked a page of the listing as partial (is_partial_response)",
            true,
        ))
    } else {
        None
    }
}

/// Why a sweep of `gone` of `live` users must not run, if it must not.
pub fn delete_guard(gone: u64, live: u64, max_fraction: f64) -> Option<String> {
    if gone as f64 > max_fraction * live as f64 {
        Some(format!(
            "the listing would delete {gone} of {live} live users, more than the allowed share ({:.0}%); nothing was deleted. \
             If this is right, `lms-sync accounts allow-deletes <account>` lets its next listing delete them \
             (once; or raise max_delete_fraction for this account)",
            max_fraction * 100.0
        ))
    } else {
        None
    }
}

/// After a complete listing: marks the live users it did not contain as deleted, when the
/// listing may infer deletions and the guard allows it; says in `end` what happened. Returns
/// whether the delete guard refused.
pub(super) async fn after_listing(
    p: &Pass<'_>,
    run_id: i64,
    listing: &Listing,
    end: &mut RunEnd,
) -> bool {
    if let Some((reason, attention)) = skip_reason(listing.resumed, listing.partial) {
        if attention {
            end.outcome = Outcome::NeedsAttention;
        }
        end.deletions_skipped_reason = Some(reason.to_string());
        return false;
    }
    let id = p.id();
    let fraction = p
        .account
        .max_delete_fraction
        .unwrap_or(p.opts.max_delete_fraction);
    let seen = |id: &str| listing.seen.contains(id);
    let swept = async {
        // An operator's allowance (`accounts allow-deletes`) lifts the guard for this listing,
        // and is spent by it.
        let allowed =
            with_db_retries(p.store, p.opts, p.cancel, || p.store.deletes_allowed(id)).await?;
        // Every live user came from this listing when it started empty: nothing to sweep.
        let vanished = if listing.started_empty {
            Default::default()
        } else {
            with_db_retries(p.store, p.opts, p.cancel, || {
                p.store.vanished_users(id, &seen)
            })
            .await?
        };
        if vanished.gone.is_empty() && !allowed {
            return Ok(Ok(0));
        }
        if let Some(reason) = delete_guard(vanished.gone.len() as u64, vanished.live, fraction) {
            if !allowed {
                return Ok(Err(reason));
            }
            tracing::warn!(
                gone = vanished.gone.len(),
                live = vanished.live,
                "the delete guard is lifted for this listing by `accounts allow-deletes`: deleting what it no longer lists"
            );
        }
        with_db_retries(p.store, p.opts, p.cancel, || {
            p.store
                .mark_deleted(id, run_id, &vanished.gone, p.opts.history, allowed)
        })
        .await
        .map(Ok)
    };
    match swept.await {
        Ok(Ok(n)) => end.deleted = n,
        Ok(Err(reason)) => {
            end.outcome = Outcome::NeedsAttention;
            end.deletions_skipped_reason = Some(reason);
            return true;
        }
        Err(e) => {
            end.outcome = Outcome::Failed;
            end.error_kind = Some(ErrorKind::Database);
            end.error = Some(format!(
                "deletion sweep failed: {}",
                p.store.explain(e).await
            ));
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delete_guard_allows_up_to_the_share_and_refuses_beyond() {
        assert_eq!(delete_guard(5, 10, 0.5), None);
        assert!(delete_guard(6, 10, 0.5).is_some());
        assert!(delete_guard(10, 10, 0.5).unwrap().contains("10 of 10"));
        assert_eq!(delete_guard(10, 10, 1.0), None);
    }

    #[test]
    fn only_a_fresh_whole_listing_infers_deletions() {
        assert_eq!(skip_reason(false, false), None);
        assert!(matches!(skip_reason(true, false), Some((_, false))));
        assert!(matches!(skip_reason(false, true), Some((_, true))));
        assert!(matches!(skip_reason(true, true), Some((_, false))));
    }
}
