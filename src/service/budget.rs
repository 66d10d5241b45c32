//! Keeping this process's share of the token's request budget, through the database, so that
//! every process on it (`run` replicas, a one-off `sync`) stays within Truto's window together
//! (see `docs/rate-budget.md`). Four times per window the process says what it wants — all of
//! the budget when its requests had to wait for slots and it used most of its share, about what
//! it used otherwise — and sets the share it is given on its [`RateBudget`]. The cost is a
//! handful of statements per window, whatever the request rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::source::budget::RateBudget;
use crate::store::Store;

/// The budget the token's window is negotiated as.
const TOKEN: &str = "token";

/// This process's name at the budget: unique even for two processes of one host and pid
/// namespace (containers).
pub fn holder_name() -> String {
    format!(
        "{}:{}",
        crate::sync::worker_name(),
        uuid::Uuid::new_v4().simple()
    )
}

/// What to ask for, given the share held and the last period's use (pure).
pub fn wanted(limit: usize, share: usize, used: usize, waited: bool) -> usize {
    if waited && used * 5 >= share * 4 {
        limit
    } else {
        // Some headroom over what was used, so that a growing load is noticed.
        (used + used / 4 + 1).min(limit)
    }
}

/// Negotiates until `cancel`, then gives the share back. A process that cannot reach the
/// database sends no token request (its share is 0) until it can again: the others may already
/// have taken what it held.
pub async fn share_token_budget(
    store: Store,
    budget: Arc<RateBudget>,
    holder: String,
    cancel: CancellationToken,
) {
    let limit = budget.token_limit();
    let period = (limit.window / 4).max(Duration::from_millis(250));
    let mut me = None;
    // Until the first negotiation, nothing: another process may hold the whole budget.
    budget.set_token_share(0);
    let mut want = limit.requests;
    let mut used = 0;
    while !cancel.is_cancelled() {
        if me.is_none() {
            match store.budget_holder(&holder).await {
                Ok(h) => me = Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot join the shared request budget; no requests until it can")
                }
            }
        }
        if let Some(h) = me.as_mut() {
            let negotiated = h
                .negotiate(
                    TOKEN,
                    limit.requests as i32,
                    limit.window.as_secs().max(1) as i32,
                    want as i32,
                    used as i32,
                )
                .await;
            match negotiated {
                Ok(n) => {
                    if n.share as usize != budget.token_share() {
                        tracing::debug!(
                            share = n.share,
                            holders = n.holders,
                            "request budget share"
                        );
                    }
                    budget.set_token_share(n.share.max(0) as usize);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lost the shared request budget; no requests until it is back");
                    budget.set_token_share(0);
                    me = None;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = cancel.cancelled() => break,
        }
        let (now_used, waited) = budget.take_demand(Instant::now());
        used = now_used;
        want = wanted(limit.requests, budget.token_share(), used, waited);
    }
    if let Some(h) = me {
        let (used, _) = budget.take_demand(Instant::now());
        h.leave(TOKEN, used as i32).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_process_wants_everything_and_an_idle_one_about_what_it_used() {
        assert_eq!(wanted(500, 500, 480, true), 500);
        assert_eq!(wanted(500, 250, 250, true), 500);
        assert_eq!(wanted(500, 250, 40, true), 51);
        assert_eq!(wanted(500, 250, 0, false), 1);
        assert_eq!(wanted(500, 100, 460, false), 500);
    }
}
