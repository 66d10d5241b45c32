//! While Truto refuses the API token (a 401 for the token itself: revoked, rotated in Truto but
//! not here, mistyped), every run would fail alike, one account after another, each with a
//! failed run and a request refused. The scheduler starts none meanwhile (see
//! [`crate::source::TrutoClient::token_rejected_since`]); this task says so in
//! `lms_sync_api_token_rejected`, checks the token with one request after 10 s, then twice as
//! long each time up to 5 minutes, at once when the token is replaced (SIGHUP), and wakes the
//! scheduler when Truto takes it again.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::source::TrutoClient;

/// The first check after a refusal.
const FIRST_CHECK: Duration = Duration::from_secs(10);
/// The longest wait between checks.
const LONGEST_CHECK: Duration = Duration::from_secs(300);

/// How long to wait before check `n` (0-based) of one refusal.
fn check_wait(n: u32) -> Duration {
    FIRST_CHECK
        .saturating_mul(2u32.saturating_pow(n.min(16)))
        .min(LONGEST_CHECK)
}

/// Watches until `cancel`.
pub(super) async fn run(
    source: Arc<TrutoClient>,
    metrics: Arc<Metrics>,
    wake: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    let mut states = source.watch_token();
    loop {
        metrics.set("lms_sync_api_token_rejected", &[], 0.0);
        tokio::select! {
            r = states.wait_for(|s| s.rejected_since.is_some()) => if r.is_err() { return },
            _ = cancel.cancelled() => return,
        }
        metrics.set("lms_sync_api_token_rejected", &[], 1.0);
        let mut n = 0;
        loop {
            let wait = check_wait(n);
            let replaced = states.borrow_and_update().replaced;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                // Another request succeeded (discovery's), or a new token is to be tried.
                r = states.wait_for(|s| s.rejected_since.is_none() || s.replaced != replaced) => {
                    if r.is_err() { return }
                }
                _ = cancel.cancelled() => return,
            }
            if source.token_rejected_since().is_none() {
                break;
            }
            match source.check_token(&cancel).await {
                Ok(()) => break,
                Err(_) if cancel.is_cancelled() => return,
                Err(f) => {
                    n += 1;
                    tracing::warn!(
                        error = %f.error,
                        next_check_in_secs = check_wait(n).as_secs(),
                        "the API token is still refused (or could not be checked); no run starts"
                    );
                }
            }
        }
        wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_double_from_ten_seconds_up_to_five_minutes() {
        let secs: Vec<u64> = (0..7).map(|n| check_wait(n).as_secs()).collect();
        assert_eq!(secs, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(check_wait(u32::MAX), LONGEST_CHECK);
    }
}
