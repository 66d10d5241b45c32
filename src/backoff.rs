//! Backoff as data plus pure functions, and parsing of the server's retry hints.
//!
//! We keep our own ~50 lines instead of a crate: the `backoff` crate is unmaintained (RustSec),
//! and what we need — full jitter, a cap, a hint from the server that wins, a total-wait bound —
//! is easier to test as plain functions than to configure in a generic retry combinator.

use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The most time all waits of one operation may add up to.
    pub max_total_wait: Duration,
}

impl Backoff {
    /// The ceiling of the wait before attempt `retry + 1` (retry counts from 0): initial × 2^retry,
    /// capped at `max`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.min(30));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Full jitter: uniformly in [ceiling/2, ceiling], so waits never collapse to zero (no hot
    /// loop) while retries of many clients still spread. `unit` is a random number in [0, 1).
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let c = self.ceiling(retry);
        c.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }

    /// What to wait before the next attempt, or `None` when the budget is spent: attempts used
    /// up, or the wait would push the total past `max_total_wait`. A server hint wins over the
    /// computed delay when it is longer.
    pub fn next_wait(
        &self,
        attempts_made: u32,
        waited: Duration,
        hint: Option<Duration>,
        unit: f64,
    ) -> Option<Duration> {
        if attempts_made >= self.max_attempts {
            return None;
        }
        let computed = self.delay(attempts_made.saturating_sub(1), unit);
        let wait = match hint {
            Some(h) if h > computed => h,
            _ => computed,
        };
        if waited.saturating_add(wait) > self.max_total_wait {
            return None;
        }
        Some(wait)
    }
}

/// The longest wait or window read from a server's headers (`Retry-After`, `ratelimit-reset`,
/// the `w=` of `ratelimit-limit`): a longer one reads as this. A day still holds an account
/// back for as long as a daily quota asks, and nothing a server sends can overflow the time
/// arithmetic built on it (`Instant + Duration::from_secs(u64::MAX)` panics, and a panic while
/// the request budget's lock is held would stop every account of the process).
pub const LONGEST_HINT: Duration = Duration::from_secs(24 * 60 * 60);

/// Parses `Retry-After`: delta-seconds or an HTTP date, at most [`LONGEST_HINT`]. `0`, a date
/// in the past, or garbage is no hint (`None`): the caller falls back to its backoff, never a
/// hot loop.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return (secs > 0).then(|| Duration::from_secs(secs).min(LONGEST_HINT));
    }
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs > 0.0)
            .then(|| Duration::from_secs_f64(secs.min(LONGEST_HINT.as_secs_f64())));
    }
    let date = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let at = SystemTime::from(date.with_timezone(&chrono::Utc));
    at.duration_since(now)
        .ok()
        .filter(|d| !d.is_zero())
        .map(|d| d.min(LONGEST_HINT))
}

/// Parses `ratelimit-reset`: seconds until the window resets. Same rules as delta-seconds.
pub fn parse_reset_seconds(value: &str) -> Option<Duration> {
    let secs: u64 = value.trim().parse().ok()?;
    (secs > 0).then(|| Duration::from_secs(secs).min(LONGEST_HINT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            max_attempts: 5,
            max_total_wait: Duration::from_secs(10),
        }
    }

    #[test]
    fn ceiling_doubles_and_caps() {
        let b = policy();
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(10), Duration::from_secs(2));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn jitter_stays_within_half_to_full_ceiling() {
        let b = policy();
        assert_eq!(b.delay(2, 0.0), Duration::from_millis(200));
        assert_eq!(b.delay(2, 1.0), Duration::from_millis(400));
        assert!(b.delay(2, 0.5) > Duration::from_millis(200));
    }

    #[test]
    fn attempts_and_total_wait_bound_the_retries() {
        let b = policy();
        assert!(b.next_wait(1, Duration::ZERO, None, 0.0).is_some());
        assert_eq!(b.next_wait(5, Duration::ZERO, None, 0.0), None);
        assert_eq!(
            b.next_wait(1, Duration::from_millis(9_990), None, 0.0),
            None
        );
    }

    #[test]
    fn a_longer_hint_wins_and_a_hint_past_the_budget_gives_up() {
        let b = policy();
        let w = b.next_wait(1, Duration::ZERO, Some(Duration::from_secs(3)), 0.0);
        assert_eq!(w, Some(Duration::from_secs(3)));
        let w = b.next_wait(1, Duration::ZERO, Some(Duration::from_millis(1)), 0.0);
        assert_eq!(w, Some(Duration::from_millis(50)));
        assert_eq!(
            b.next_wait(1, Duration::ZERO, Some(Duration::from_secs(11)), 0.0),
            None
        );
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates_and_ignores_garbage() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("10", now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("0", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-3", now), None);
        // 2023-11-14T22:13:20Z is the epoch second 1_700_000_000.
        let date = "Tue, 14 Nov 2023 22:13:30 GMT";
        assert_eq!(parse_retry_after(date, now), Some(Duration::from_secs(10)));
        assert_eq!(
            parse_retry_after("Tue, 14 Nov 2023 22:13:00 GMT", now),
            None
        );
        assert_eq!(parse_reset_seconds("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_reset_seconds("x"), None);
    }

    #[test]
    fn a_servers_wait_longer_than_a_day_reads_as_a_day() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let day = LONGEST_HINT;
        assert_eq!(parse_retry_after("86400", now), Some(day));
        assert_eq!(parse_retry_after("86401", now), Some(day));
        assert_eq!(parse_retry_after("18446744073709551615", now), Some(day));
        assert_eq!(parse_retry_after("1e300", now), Some(day));
        assert_eq!(
            parse_retry_after("2.5", now),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(parse_retry_after("inf", now), None);
        assert_eq!(
            parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", now),
            Some(day)
        );
        assert_eq!(parse_reset_seconds("18446744073709551615"), Some(day));
        // Adding it up never overflows, whatever was waited already.
        assert_eq!(policy().next_wait(1, Duration::MAX, Some(day), 0.0), None);
        let unbounded = Backoff {
            max_total_wait: Duration::MAX,
            ..policy()
        };
        assert_eq!(
            unbounded.next_wait(1, Duration::from_secs(5), Some(day), 0.0),
            Some(day)
        );
    }
}
