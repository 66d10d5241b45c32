//! The request budget: paces requests under Truto's limits (per integrated account and per API
//! token, as sliding windows) instead of running into 429s. The window logic is pure (time is an
//! argument); [`RateBudget::acquire`] is the thin async wrapper the source calls before each
//! request.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Requests allowed per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub requests: usize,
    pub window: Duration,
}

/// A sliding window of request start times.
#[derive(Debug, Default)]
struct Window {
    starts: VecDeque<Instant>,
    /// No request before this instant (a server asked us to pause).
    paused_until: Option<Instant>,
}

impl Window {
    fn prune(&mut self, now: Instant, window: Duration) {
        while self
            .starts
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            self.starts.pop_front();
        }
    }

    /// How long until one more request fits; zero when it fits now.
    fn wait(&mut self, now: Instant, limit: Limit) -> Duration {
        self.prune(now, limit.window);
        let paused = self
            .paused_until
            .map(|p| p.saturating_duration_since(now))
            .unwrap_or_default();
        let full = if self.starts.len() >= limit.requests {
            let oldest = self.starts[self.starts.len() - limit.requests];
            (oldest + limit.window).saturating_duration_since(now)
        } else {
            Duration::ZERO
        };
        paused.max(full)
    }
}

/// Budgets shared by every account that uses one token.
#[derive(Debug)]
pub struct RateBudget {
    per_account: Limit,
    per_token: Limit,
    /// Added to each window for clock granularity; the real safety is [`RateBudget::settle`],
    /// which counts each request from when its answer came.
    margin: Duration,
    state: Mutex<(Window, HashMap<Uuid, Window>)>,
}

impl RateBudget {
    /// The configured budget, or `None` when pacing is off (`rate_budget.enabled = false`).
    pub fn from_settings(s: &crate::config::RateBudgetSettings) -> Option<RateBudget> {
        let window = Duration::from_secs(s.window_secs);
        s.enabled.then(|| {
            RateBudget::new(
                Limit {
                    requests: s.per_account,
                    window,
                },
                Limit {
                    requests: s.per_token,
                    window,
                },
            )
        })
    }

    pub fn new(per_account: Limit, per_token: Limit) -> RateBudget {
        RateBudget {
            per_account,
            per_token,
            margin: Duration::from_millis(20),
            state: Mutex::new((Window::default(), HashMap::new())),
        }
    }

    fn widen(&self, l: Limit) -> Limit {
        Limit {
            requests: l.requests,
            window: l.window + self.margin,
        }
    }

    /// Takes a slot for `account` at `now` if both budgets have one; otherwise says how long
    /// to wait. Never takes a slot in one budget while waiting on the other.
    pub fn try_acquire(&self, account: Uuid, now: Instant) -> Result<(), Duration> {
        let mut guard = self.state.lock().expect("budget");
        let (token, accounts) = &mut *guard;
        let acct = accounts.entry(account).or_default();
        let wait = acct
            .wait(now, self.widen(self.per_account))
            .max(token.wait(now, self.widen(self.per_token)));
        if wait.is_zero() {
            acct.starts.push_back(now);
            token.starts.push_back(now);
            Ok(())
        } else {
            Err(wait)
        }
    }

    /// Waits until `account` may send a request, then takes the slot. Returns the slot's time
    /// (for [`RateBudget::settle`]) and the time waited.
    pub async fn acquire(&self, account: Uuid) -> (Instant, Duration) {
        let began = Instant::now();
        loop {
            let now = Instant::now();
            match self.try_acquire(account, now) {
                Ok(()) => return (now, began.elapsed()),
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Moves a slot taken at `taken` to `answered`, when the answer came: the server counted the
    /// request somewhere in between, and under load (a busy runtime, connection set-up) that can
    /// be long after the slot was taken. Counting from the later time keeps us under the
    /// server's window whatever the delay.
    pub fn settle(&self, account: Uuid, taken: Instant, answered: Instant) {
        let mut guard = self.state.lock().expect("budget");
        let (token, accounts) = &mut *guard;
        for w in [Some(token), accounts.get_mut(&account)]
            .into_iter()
            .flatten()
        {
            if let Some(slot) = w.starts.iter_mut().rev().find(|t| **t == taken) {
                *slot = answered;
            }
            // Keep the window ordered, so pruning from the front stays right.
            w.starts.make_contiguous().sort_unstable();
        }
    }

    /// The server says the account's window has `remaining` requests left and resets in
    /// `reset`. When nothing is left, pause the account until the reset; when the vendor is
    /// stricter than our own budget, spread what is left evenly over the time to the reset.
    pub fn observe_remaining(&self, account: Uuid, remaining: u64, reset: Duration, now: Instant) {
        if remaining == 0 {
            self.pause(account, reset, now);
        } else if (remaining as usize) < self.per_account.requests {
            self.pause(account, reset / (remaining as u32 + 1), now);
        }
    }

    /// No request for `account` for `d` (after a 429 with a hint, or an exhausted window).
    pub fn pause(&self, account: Uuid, d: Duration, now: Instant) {
        let mut guard = self.state.lock().expect("budget");
        let w = guard.1.entry(account).or_default();
        let until = now + d;
        w.paused_until = Some(w.paused_until.map_or(until, |p| p.max(until)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(acct: usize, token: usize) -> RateBudget {
        let mut b = RateBudget::new(
            Limit {
                requests: acct,
                window: Duration::from_secs(10),
            },
            Limit {
                requests: token,
                window: Duration::from_secs(10),
            },
        );
        b.margin = Duration::ZERO;
        b
    }

    #[test]
    fn an_account_gets_its_budget_then_waits_for_the_oldest_request_to_age_out() {
        let b = budget(3, 100);
        let a = Uuid::from_u128(1);
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(b.try_acquire(a, t0 + Duration::from_secs(i)).is_ok());
        }
        let wait = b.try_acquire(a, t0 + Duration::from_secs(3)).unwrap_err();
        assert_eq!(wait, Duration::from_secs(7));
        assert!(b.try_acquire(a, t0 + Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn the_token_budget_is_shared_by_all_accounts() {
        let b = budget(10, 4);
        let t0 = Instant::now();
        for i in 0..4 {
            assert!(b.try_acquire(Uuid::from_u128(i), t0).is_ok());
        }
        assert!(b.try_acquire(Uuid::from_u128(9), t0).is_err());
    }

    #[test]
    fn waiting_on_one_budget_takes_nothing_from_the_other() {
        let b = budget(1, 2);
        let (a, c) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let t0 = Instant::now();
        assert!(b.try_acquire(a, t0).is_ok());
        assert!(b.try_acquire(a, t0).is_err(), "account budget spent");
        // The refused attempt did not use a token slot: another account still fits.
        assert!(b.try_acquire(c, t0).is_ok());
    }

    #[test]
    fn a_pause_holds_the_account_until_it_ends() {
        let b = budget(10, 10);
        let a = Uuid::from_u128(1);
        let t0 = Instant::now();
        b.pause(a, Duration::from_secs(5), t0);
        assert_eq!(b.try_acquire(a, t0).unwrap_err(), Duration::from_secs(5));
        assert!(
            b.try_acquire(Uuid::from_u128(2), t0).is_ok(),
            "other accounts go on"
        );
        assert!(b.try_acquire(a, t0 + Duration::from_secs(5)).is_ok());
        b.observe_remaining(a, 0, Duration::from_secs(2), t0 + Duration::from_secs(6));
        assert!(b.try_acquire(a, t0 + Duration::from_secs(7)).is_err());
        b.observe_remaining(a, 30, Duration::from_secs(60), t0 + Duration::from_secs(8));
        assert!(
            b.try_acquire(a, t0 + Duration::from_secs(8)).is_ok(),
            "plenty left: no pause"
        );
    }

    #[test]
    fn a_settled_slot_counts_from_when_the_answer_came() {
        let b = budget(2, 100);
        let a = Uuid::from_u128(1);
        let t0 = Instant::now();
        assert!(b.try_acquire(a, t0).is_ok());
        assert!(b.try_acquire(a, t0).is_ok());
        b.settle(a, t0, t0 + Duration::from_secs(3));
        // The oldest slot is still t0; the settled one expires 3 s later than it would have.
        assert!(b.try_acquire(a, t0 + Duration::from_secs(10)).is_ok());
        assert_eq!(
            b.try_acquire(a, t0 + Duration::from_secs(10)).unwrap_err(),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn a_stricter_vendor_budget_spreads_the_remaining_requests() {
        let b = budget(10, 100);
        let a = Uuid::from_u128(1);
        let t0 = Instant::now();
        b.observe_remaining(a, 3, Duration::from_secs(8), t0);
        assert_eq!(b.try_acquire(a, t0).unwrap_err(), Duration::from_secs(2));
        assert!(b.try_acquire(a, t0 + Duration::from_secs(2)).is_ok());
    }

    #[test]
    fn in_any_window_no_more_than_the_limit_is_taken() {
        let b = budget(5, 100);
        let a = Uuid::from_u128(1);
        let t0 = Instant::now();
        let mut taken = Vec::new();
        let mut now = t0;
        while taken.len() < 40 {
            match b.try_acquire(a, now) {
                Ok(()) => taken.push(now),
                Err(w) => now += w,
            }
        }
        for (i, t) in taken.iter().enumerate() {
            let in_window = taken[i..]
                .iter()
                .take_while(|u| u.duration_since(*t) < Duration::from_secs(10))
                .count();
            assert!(in_window <= 5);
        }
    }
}
