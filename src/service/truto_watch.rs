//! While Truto refuses the API token (a 401 for the token itself: revoked, rotated in Truto but
//! not here, mistyped), does not answer at all (an outage, a network cut, DNS), or lists
//! another environment's integrated accounts with the token (a staging token in production's
//! place), every run would fail alike, one account after another, each with a failed run and
//! requests spent. The scheduler starts none meanwhile (see
//! [`crate::source::TrutoClient::halt`]); this task says so in `lms_sync_api_token_rejected`,
//! `lms_sync_truto_unreachable` and `lms_sync_api_token_other_environment`, probes Truto with
//! one request after 10 s, then twice as long each time up to 5 minutes (at once when the token
//! is replaced), and wakes the scheduler when Truto answers, takes the token and lists the
//! followed environment's accounts with it again.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::source::{Standing, TrutoClient};

/// The first probe after a halt.
const FIRST_CHECK: Duration = Duration::from_secs(10);
/// The longest wait between probes.
const LONGEST_CHECK: Duration = Duration::from_secs(300);

/// How long to wait before probe `n` (0-based) of one halt.
fn check_wait(n: u32) -> Duration {
    FIRST_CHECK
        .saturating_mul(2u32.saturating_pow(n.min(16)))
        .min(LONGEST_CHECK)
}

fn halted(s: &Standing) -> bool {
    s.halt().is_some()
}

/// The gauges for `s`.
fn show(metrics: &Metrics, s: &Standing) {
    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    metrics.set(
        "lms_sync_api_token_rejected",
        &[],
        flag(s.rejected_since.is_some()),
    );
    metrics.set(
        "lms_sync_truto_unreachable",
        &[],
        flag(s.unreachable.is_some()),
    );
    metrics.set(
        "lms_sync_api_token_other_environment",
        &[],
        flag(s.other_environment.is_some()),
    );
}

/// Watches until `cancel`.
pub(super) async fn run(
    source: Arc<TrutoClient>,
    metrics: Arc<Metrics>,
    wake: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    let mut states = source.watch_standing();
    loop {
        show(&metrics, &states.borrow_and_update());
        tokio::select! {
            r = states.wait_for(halted) => if r.is_err() { return },
            _ = cancel.cancelled() => return,
        }
        let mut n = 0;
        // The token the last probe was sent with (`Standing::replaced`): one replaced while
        // that probe was under way is tried as soon as it fails, not a whole wait later.
        let mut probed = None;
        'halt: loop {
            let due = tokio::time::Instant::now() + check_wait(n);
            // Until the probe is due: the gauges follow every change (the token refused once
            // Truto answers again, say), and a new token is tried at once.
            loop {
                let replaced = {
                    let s = states.borrow_and_update();
                    show(&metrics, &s);
                    if !halted(&s) {
                        // Another request was answered (discovery's, or a run's in flight).
                        break 'halt;
                    }
                    s.replaced
                };
                if probed.is_some_and(|p| p != replaced) {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => break,
                    r = states.changed() => {
                        if r.is_err() { return }
                        if states.borrow().replaced != replaced {
                            break;
                        }
                    }
                    _ = cancel.cancelled() => return,
                }
            }
            probed = Some(states.borrow().replaced);
            match source.probe(None, &cancel).await {
                // Answered, but the token still lists another environment's accounts.
                Ok(()) if halted(&states.borrow()) => {
                    n += 1;
                    tracing::warn!(
                        reason = %source.halt().map(|h| h.to_string()).unwrap_or_default(),
                        next_check_in_secs = check_wait(n).as_secs(),
                        "the API token still lists another Truto environment's integrated \
                         accounts; no run starts"
                    );
                }
                Ok(()) => break,
                Err(_) if cancel.is_cancelled() => return,
                Err(f) => {
                    n += 1;
                    tracing::warn!(
                        error = %f.error,
                        next_check_in_secs = check_wait(n).as_secs(),
                        "Truto still refuses the API token or does not answer; no run starts"
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
