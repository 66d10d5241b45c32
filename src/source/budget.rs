//! The request budget: paces requests under Truto's limits (per integrated account and per API
//! token, as sliding windows) instead of running into 429s. The window logic is pure (time is an
//! argument); [`RateBudget::acquire`] is the thin async wrapper the source calls before each
//! request.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use uuid::Uuid;

use crate::backoff::LONGEST_HINT;

/// What an answer's `ratelimit-*` headers said.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateReport {
    pub remaining: Option<u64>,
    pub reset: Option<Duration>,
    /// From `ratelimit-limit: <n>;w=<seconds>` (`None` without a window).
    pub limit: Option<Limit>,
}

impl RateReport {
    /// Reads `ratelimit-limit`, `ratelimit-remaining` and `ratelimit-reset` (pure).
    pub fn parse(
        limit: Option<&str>,
        remaining: Option<&str>,
        reset: Option<&str>,
    ) -> Option<RateReport> {
        let report = RateReport {
            remaining: remaining.and_then(|r| r.trim().parse().ok()),
            reset: reset.and_then(crate::backoff::parse_reset_seconds),
            limit: limit.and_then(parse_limit),
        };
        (report != RateReport::default()).then_some(report)
    }
}

/// `50;w=10` (or `50, 50;w=10`): 50 requests per 10 s. A window longer than
/// [`LONGEST_HINT`] reads as that.
fn parse_limit(text: &str) -> Option<Limit> {
    let policy = text.split(',').map(str::trim).find(|p| p.contains("w="))?;
    let mut parts = policy.split(';').map(str::trim);
    let requests = parts.next()?.parse().ok()?;
    let window = parts
        .find_map(|p| p.strip_prefix("w="))?
        .trim()
        .parse::<u64>()
        .ok()?;
    (window > 0).then(|| Limit {
        requests,
        window: Duration::from_secs(window).min(LONGEST_HINT),
    })
}

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
    /// No request before this instant (a server asked us to pause, or another process may
    /// still have requests of the account's in the server's window).
    paused_until: Option<Instant>,
    /// The part of the pause the server asked for (a 429's `Retry-After`, a spent window's
    /// `ratelimit-reset`): what [`RateBudget::held_by_server`] reads.
    told_until: Option<Instant>,
    /// The window the vendor reported for the account (`ratelimit-limit: 50;w=10`), checked as
    /// one more sliding window over its requests.
    vendor: Option<Limit>,
    /// A request asked for a slot since the last [`RateBudget::take_demand`].
    asked: bool,
    /// No request at all until lifted: the account's lease ended with its connection, and
    /// another process may hold it now (see [`RateBudget::fence`]).
    fenced: bool,
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

    /// Requests started within `window` before `now`.
    fn in_window(&self, now: Instant, window: Duration) -> usize {
        self.starts
            .iter()
            .rev()
            .take_while(|t| now.saturating_duration_since(**t) < window)
            .count()
    }

    /// No request for `d` from `now`, at most [`LONGEST_HINT`] (a later pause already in force
    /// stays). Returns when this pause ends.
    fn pause_for(&mut self, now: Instant, d: Duration) -> Instant {
        let until = now + d.min(LONGEST_HINT);
        extend(&mut self.paused_until, until);
        until
    }

    /// [`Window::pause_for`], because the server asked for it.
    fn told_to_pause(&mut self, now: Instant, d: Duration) {
        let until = self.pause_for(now, d);
        extend(&mut self.told_until, until);
    }

    /// How long until one more request fits; zero when it fits now. (Starts older than
    /// `limit.window` do not count; the caller prunes with the longest window it checks.)
    fn wait(&self, now: Instant, limit: Limit) -> Duration {
        let paused = self
            .paused_until
            .map(|p| p.saturating_duration_since(now))
            .unwrap_or_default();
        paused.max(self.full_for(now, limit))
    }

    /// How long until `limit`'s window has room for one more request, pauses aside.
    fn full_for(&self, now: Instant, limit: Limit) -> Duration {
        if self.in_window(now, limit.window) >= limit.requests {
            let oldest = self.starts[self.starts.len() - limit.requests];
            (oldest + limit.window).saturating_duration_since(now)
        } else {
            Duration::ZERO
        }
    }
}

/// Moves `end` to `until` unless it is already later.
fn extend(end: &mut Option<Instant>, until: Instant) {
    *end = Some(end.map_or(until, |e| e.max(until)));
}

/// Everything a slot is decided on, under one lock: the token's window, each account's, and
/// this process's share of the token's window with its lease.
#[derive(Debug)]
struct Windows {
    token: Window,
    accounts: HashMap<Uuid, Window>,
    /// This process's share of the token's window when processes share it through the
    /// database (see `service::budget`); the whole `per_token` otherwise.
    share: usize,
    /// Until when the share may be used: a shared budget's share is leased, and a process
    /// that cannot renew it (it lost the database, its negotiation hangs) stops sending when
    /// the lease runs out, because the others treat its share as its own only until then (see
    /// `docs/rate-budget.md`). `None`: not leased (a budget this process has to itself).
    lease: Option<Instant>,
}

impl Windows {
    /// The share usable at `now`: none once its lease has run out.
    fn share_at(&self, now: Instant) -> usize {
        if self.lease.is_none_or(|until| now < until) {
            self.share
        } else {
            0
        }
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
    state: Mutex<Windows>,
    /// A request had to wait for the token's window since the last
    /// [`RateBudget::take_demand`].
    token_waited: AtomicBool,
    /// Woken when a request waits for the token's window while this process holds less than
    /// the whole of it: the share may grow at once instead of at the next period.
    more_wanted: Notify,
    /// Woken when waiting requests may go sooner than they were told: the share grew (they look
    /// again at once rather than after [`SHARE_WAIT`]), or an account's fence came down.
    look_again: Notify,
    /// This budget's (so this process's) name where account windows are handed on: a lease
    /// last held by the same instance needs no handover, its windows are here.
    instance: String,
}

/// What this process asked of the token's window since the last look (see
/// [`RateBudget::take_demand`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Demand {
    /// Requests in the token's window now.
    pub used: usize,
    /// Some request had to wait for the token's window.
    pub token_waited: bool,
    /// The most this process could send per window: each account it is working on at its
    /// own window's rate (the token's share never needs to be larger).
    pub capacity: usize,
}

/// How long a request waits before looking again while its wait is for this process's share of
/// the token's window (which a negotiation may raise at any moment).
const SHARE_WAIT: Duration = Duration::from_millis(100);

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
            token_waited: AtomicBool::new(false),
            more_wanted: Notify::new(),
            look_again: Notify::new(),
            per_account,
            per_token,
            margin: Duration::from_millis(20),
            state: Mutex::new(Windows {
                token: Window::default(),
                accounts: HashMap::new(),
                share: per_token.requests,
                lease: None,
            }),
            instance: Uuid::new_v4().simple().to_string(),
        }
    }

    /// A quarter window, at least 250 ms: how often a process renegotiates its share of the
    /// token's window (`service::budget`), and how often a pass checks that it still holds its
    /// account's lease, giving one check at most half of it (`sync`).
    pub fn period(&self) -> Duration {
        (self.per_token.window / 4).max(Duration::from_millis(250))
    }

    /// A period and a half: how long a share stays good without a renewal, and the longest a
    /// pass whose account's lease hangs (its connection stopped answering; one that ended is
    /// seen at once) goes on sending before a check notices.
    pub fn lease(&self) -> Duration {
        let period = self.period();
        period + period / 2
    }

    /// How long an account waits before its first request when its last holder ended without
    /// handing on its window (killed, or lost its lease's connection): what it sent stays in
    /// the server's window for a window. A holder that fenced itself (see [`RateBudget::fence`])
    /// stopped sending before the lease could be taken, give or take `fenced`, the margin its
    /// waking may need; an older one that lost the lease without dying (`None`) may have gone on
    /// sending for up to a lease.
    pub fn abandoned_wait(&self, fenced: Option<Duration>) -> Duration {
        self.per_account.window + fenced.unwrap_or_else(|| self.lease())
    }

    /// This budget's name where account windows are handed on (unique per process).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    fn widen(&self, l: Limit) -> Limit {
        Limit {
            requests: l.requests,
            window: l.window + self.margin,
        }
    }

    /// How long an account's request start counts: our window, or the vendor's when it
    /// reported a longer one (both widened).
    fn counts_for(&self, w: &Window) -> Duration {
        let ours = self.widen(self.per_account).window;
        w.vendor.map_or(ours, |v| self.widen(v).window.max(ours))
    }

    /// How long an account's request start is kept: a window longer than it counts. An answer
    /// is judged as of its request's send (see [`RateBudget::observe`]) and its slot is found
    /// again on the answer (see [`RateBudget::settle`]); pruning as of now would forget, during
    /// a round trip, starts that still count as of the send: another request's slot (the
    /// account's hydration runs several at once) or a budget negotiation prunes meanwhile.
    fn kept_for(&self, w: &Window) -> Duration {
        2 * self.counts_for(w)
    }

    /// Takes a slot for `account` at `now` if both budgets have one; otherwise says how long
    /// to wait. Never takes a slot in one budget while waiting on the other.
    pub fn try_acquire(&self, account: Uuid, now: Instant) -> Result<(), Duration> {
        let mut guard = self.state.lock().expect("budget");
        let share = guard.share_at(now);
        let Windows {
            token, accounts, ..
        } = &mut *guard;
        token.prune(now, self.widen(self.per_token).window);
        let token_wait = if share == 0 {
            SHARE_WAIT
        } else {
            token.wait(
                now,
                self.widen(Limit {
                    requests: share,
                    window: self.per_token.window,
                }),
            )
        };
        let acct = accounts.entry(account).or_default();
        acct.asked = true;
        if acct.fenced {
            // Until [`RateBudget::lift_fence`], which wakes the waiting requests.
            return Err(self.lease());
        }
        let ours = self.widen(self.per_account);
        let vendor = acct.vendor.map(|l| self.widen(l));
        acct.prune(now, self.kept_for(acct));
        let mut acct_wait = acct.wait(now, ours);
        if let Some(v) = vendor {
            acct_wait = acct_wait.max(acct.wait(now, v));
        }
        if acct_wait.is_zero() && token_wait.is_zero() {
            acct.starts.push_back(now);
            token.starts.push_back(now);
            return Ok(());
        }
        if token_wait.is_zero() {
            return Err(acct_wait);
        }
        self.token_waited.store(true, Ordering::Relaxed);
        if share < self.per_token.requests {
            // Sharing: ask for more now, and look again soon rather than when the window frees
            // a slot (the share may grow first).
            self.more_wanted.notify_one();
            return Err(acct_wait.max(token_wait.min(SHARE_WAIT)));
        }
        Err(acct_wait.max(token_wait))
    }

    /// The token's budget (requests per window), before any sharing.
    pub fn token_limit(&self) -> Limit {
        self.per_token
    }

    /// Sets this process's share of the token's window (at most the whole budget).
    pub fn set_token_share(&self, requests: usize) {
        self.set_share(requests, None);
    }

    /// Sets this process's share of the token's window, usable until `until` (a lease the
    /// next negotiation renews); at `until` it counts as 0.
    pub fn set_token_share_until(&self, requests: usize, until: Instant) {
        self.set_share(requests, Some(until));
    }

    /// Sets the share, and its lease when given (otherwise the lease stays); wakes the
    /// requests waiting for the share when it grew.
    fn set_share(&self, requests: usize, lease: Option<Instant>) {
        let now = Instant::now();
        let mut guard = self.state.lock().expect("budget");
        let before = guard.share_at(now);
        guard.share = requests.min(self.per_token.requests);
        if lease.is_some() {
            guard.lease = lease;
        }
        if guard.share_at(now) > before {
            self.look_again.notify_waiters();
        }
    }

    /// This process's share of the token's window (as last set; its lease aside).
    pub fn token_share(&self) -> usize {
        self.state.lock().expect("budget").share
    }

    /// Lowers this process's share to `requests` (never raises it) and returns the requests in
    /// the token's window at `now`, in flight ones included. Both happen under the lock every
    /// slot is taken under, so no request slips in between: the count is all the old share was
    /// used for, and nothing beyond the new one follows.
    pub fn shrink_token_share(&self, requests: usize, now: Instant) -> usize {
        let mut guard = self.state.lock().expect("budget");
        guard.share = guard.share.min(requests);
        let token = &mut guard.token;
        token.prune(now, self.widen(self.per_token).window);
        token.starts.len()
    }

    /// This process's demand since the last call (see [`Demand`]). Forgets the windows of
    /// accounts it no longer works on.
    pub fn take_demand(&self, now: Instant) -> Demand {
        let mut guard = self.state.lock().expect("budget");
        let Windows {
            token, accounts, ..
        } = &mut *guard;
        token.prune(now, self.widen(self.per_token).window);
        let ours = self.widen(self.per_account);
        let mut capacity = 0;
        accounts.retain(|_, w| {
            w.prune(now, self.kept_for(w));
            let working = w.asked || w.in_window(now, self.counts_for(w)) > 0;
            if working {
                capacity += per_window(ours, w.vendor.map(|l| self.widen(l)));
            }
            w.asked = false;
            working || w.fenced || w.vendor.is_some() || w.paused_until.is_some_and(|p| p > now)
        });
        Demand {
            used: token.starts.len(),
            token_waited: self.token_waited.swap(false, Ordering::Relaxed),
            capacity: capacity.min(self.per_token.requests),
        }
    }

    /// Counts `account` in this process's demand from now on, before its first request asks:
    /// its pass has begun. Passes begin together (a process starting, a round of the fleet),
    /// and the first negotiation after they do should ask for all of them.
    pub fn working_on(&self, account: Uuid) {
        let mut guard = self.state.lock().expect("budget");
        guard.accounts.entry(account).or_default().asked = true;
    }

    /// The ages of `account`'s requests still in its window (ours, or the vendor's when longer),
    /// to hand on with its lease.
    pub fn recent(&self, account: Uuid, now: Instant) -> Vec<Duration> {
        let mut guard = self.state.lock().expect("budget");
        let Some(w) = guard.accounts.get_mut(&account) else {
            return Vec::new();
        };
        w.prune(now, self.counts_for(w));
        w.starts
            .iter()
            .map(|t| now.saturating_duration_since(*t))
            .collect()
    }

    /// Holds `account` for [`RateBudget::abandoned_wait`] from `now`: another process held it
    /// and ended without saying what it sent, so up to a whole window of its requests may still
    /// count at the server. Nothing else waits.
    pub fn wait_out_abandoned(&self, account: Uuid, now: Instant, fenced: Option<Duration>) {
        let mut guard = self.state.lock().expect("budget");
        let w = guard.accounts.entry(account).or_default();
        w.pause_for(now, self.abandoned_wait(fenced));
    }

    /// No request for `account` from now until [`RateBudget::lift_fence`]: its lease's
    /// connection ended, so another process may take the account (and its window) at any
    /// moment. A slot already taken is not called back; that is what the next holder's margin
    /// is for.
    pub fn fence(&self, account: Uuid) {
        let mut guard = self.state.lock().expect("budget");
        guard.accounts.entry(account).or_default().fenced = true;
    }

    /// Lets `account`'s requests go again (its lease is held again, or its pass is over), and
    /// wakes those waiting. Every pass ends with it, so it wakes nobody (every account's
    /// waiting requests alike) unless the account was fenced.
    pub fn lift_fence(&self, account: Uuid) {
        let mut guard = self.state.lock().expect("budget");
        if let Some(w) = guard.accounts.get_mut(&account).filter(|w| w.fenced) {
            w.fenced = false;
            self.look_again.notify_waiters();
        }
    }

    /// Counts requests another process sent for `account` (their ages as of `now`) in its
    /// window, as if this one had sent them.
    pub fn seed(&self, account: Uuid, ages: &[Duration], now: Instant) {
        let mut guard = self.state.lock().expect("budget");
        let w = guard.accounts.entry(account).or_default();
        w.starts
            .extend(ages.iter().filter_map(|a| now.checked_sub(*a)));
        w.starts.make_contiguous().sort_unstable();
    }

    /// Resolves when a request has waited for this process's share of the token's window
    /// since the last call (at once if one already has).
    pub async fn more_wanted(&self) {
        self.more_wanted.notified().await
    }

    /// How long the server holds `account` back from `now`: a pause it asked for (a 429's
    /// `Retry-After`, a spent window's `ratelimit-reset`), or the window it reported being
    /// full. Our own windows and pauses are not in it: they are pacing, not the server's word.
    pub fn held_by_server(&self, account: Uuid, now: Instant) -> Duration {
        let guard = self.state.lock().expect("budget");
        let Some(w) = guard.accounts.get(&account) else {
            return Duration::ZERO;
        };
        let told = w
            .told_until
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or_default();
        let full = w
            .vendor
            .map(|v| w.full_for(now, self.widen(v)))
            .unwrap_or_default();
        told.max(full)
    }

    /// Waits until `account` may send a request, then takes the slot. Returns the slot's time
    /// (for [`RateBudget::settle`]) and the time waited; or, without waiting, how long the
    /// server holds the account back when that is longer than `longest` and than our own
    /// window (see [`RateBudget::held_by_server`]): a wait of hours (a daily quota spent) is
    /// better failed at once, for the schedule to try again, than waited out with the
    /// account's lease and a place among the concurrent passes held. Waits within our own
    /// window are pacing, never refused.
    pub async fn acquire(
        &self,
        account: Uuid,
        longest: Duration,
    ) -> Result<(Instant, Duration), Duration> {
        let began = Instant::now();
        let longest = longest.max(self.widen(self.per_account).window);
        loop {
            // Registered before looking, so that a share grown (or a fence lifted) in between
            // wakes it too.
            let grown = self.look_again.notified();
            tokio::pin!(grown);
            grown.as_mut().enable();
            let now = Instant::now();
            let held = self.held_by_server(account, now);
            if held > longest {
                return Err(held);
            }
            match self.try_acquire(account, now) {
                Ok(()) => return Ok((now, began.elapsed())),
                Err(wait) => tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = grown => {}
                },
            }
        }
    }

    /// Moves a slot taken at `taken` to `answered`, when the answer came: the server counted the
    /// request somewhere in between, and under load (a busy runtime, connection set-up) that can
    /// be long after the slot was taken. Counting from the later time keeps us under the
    /// server's window whatever the delay. A request in flight for longer than two windows has
    /// had its slot pruned meanwhile (see `kept_for`); it counts again, from its answer.
    pub fn settle(&self, account: Uuid, taken: Instant, answered: Instant) {
        let mut guard = self.state.lock().expect("budget");
        let Windows {
            token, accounts, ..
        } = &mut *guard;
        for w in [token, accounts.entry(account).or_default()] {
            match w.starts.iter_mut().rev().find(|t| **t == taken) {
                Some(slot) => *slot = answered,
                None => w.starts.push_back(answered),
            }
            // Keep the window ordered, so pruning from the front stays right.
            w.starts.make_contiguous().sort_unstable();
        }
    }

    /// What the server said of the account's window on an answer: its limit and window (when
    /// given) become one more sliding window over the account's requests; a window with nothing
    /// left pauses the account until it resets. A window that is merely partly used says
    /// nothing more: our own windows already pace the requests.
    ///
    /// `sent` is when the request took its slot, `now` when its answer came. The server counted
    /// its window somewhere between the two, so ours is counted as of `sent`: a request of ours
    /// that left our window while this one was under way was still in the server's when it
    /// counted. (Counted as of `now`, it made a window the server had just filled look one
    /// short, as if the server knew of a request we did not, and paused the account for the
    /// reset rounded up to a second.)
    pub fn observe(&self, account: Uuid, report: RateReport, sent: Instant, now: Instant) {
        let limit = report.limit.filter(|l| l.requests > 0).map(|l| Limit {
            window: l.window.min(LONGEST_HINT),
            ..l
        });
        let mut guard = self.state.lock().expect("budget");
        let w = guard.accounts.entry(account).or_default();
        if limit.is_some() {
            w.vendor = limit;
        }
        let Some(reset) = report.reset.filter(|_| report.remaining == Some(0)) else {
            return;
        };
        // When our own record of the account's window is as full as the vendor says, the
        // window already waits exactly until its oldest request leaves (the reset, rounded up
        // to whole seconds, would wait longer); when it is not, the vendor knows of requests
        // we do not: pause until its reset.
        let full = limit.is_some_and(|l| w.in_window(sent, self.widen(l).window) >= l.requests);
        if !full {
            w.told_to_pause(now, reset);
        }
    }

    /// No request for `account` for `d`: the server asked for it (a 429's hint).
    pub fn pause(&self, account: Uuid, d: Duration, now: Instant) {
        let mut guard = self.state.lock().expect("budget");
        guard
            .accounts
            .entry(account)
            .or_default()
            .told_to_pause(now, d);
    }
}

/// The most requests one account may send per `ours.window`: ours, or fewer when the vendor's
/// window is stricter (pure).
fn per_window(ours: Limit, vendor: Option<Limit>) -> usize {
    let Some(v) = vendor else {
        return ours.requests;
    };
    let scaled = (v.requests as u128 * ours.window.as_millis())
        .div_ceil(v.window.as_millis().max(1)) as usize;
    ours.requests.min(scaled.max(1))
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

    #[tokio::test(start_paused = true)]
    async fn a_request_waiting_for_the_share_goes_as_soon_as_the_share_grows() {
        let b = std::sync::Arc::new(budget(5, 100));
        b.set_token_share(0);
        let a = Uuid::from_u128(1);
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.acquire(a, Duration::MAX).await }
        });
        // It looked, found no share and asked for one; now it waits.
        b.more_wanted().await;
        let asked = tokio::time::Instant::now();
        b.set_token_share(5);
        waiting.await.unwrap().unwrap();
        // Woken by the share, not by its next look (SHARE_WAIT later in the paused clock).
        assert_eq!(asked.elapsed(), Duration::ZERO);
    }

    #[test]
    fn a_pass_that_has_begun_counts_in_the_demand_before_its_first_request() {
        let b = budget(50, 500);
        let t0 = Instant::now();
        for n in 1..=4 {
            b.working_on(Uuid::from_u128(n));
        }
        b.try_acquire(Uuid::from_u128(1), t0).unwrap();
        assert_eq!(b.take_demand(t0).capacity, 200);
        // A window later, with nothing asked since: nothing wanted.
        assert_eq!(b.take_demand(t0 + Duration::from_secs(11)).capacity, 0);
    }

    #[test]
    fn demand_counts_the_accounts_being_worked_on_and_a_short_share_asks_for_more() {
        let b = budget(5, 100);
        let (a, c) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let t0 = Instant::now();
        assert!(b.try_acquire(a, t0).is_ok() && b.try_acquire(c, t0).is_ok());
        let d = b.take_demand(t0);
        assert_eq!((d.used, d.token_waited, d.capacity), (2, false, 10));
        // A stricter vendor window (1 per 10 s) lowers what its account could send.
        b.observe(
            a,
            RateReport::parse(Some("1;w=10"), Some("0"), Some("10")).unwrap(),
            t0,
            t0,
        );
        assert_eq!(b.take_demand(t0).capacity, 6);
        // A window later, nothing asked: nothing wanted.
        let later = t0 + Duration::from_secs(11);
        assert_eq!(b.take_demand(later).capacity, 0);
        // A share of one: the second request waits for the share, briefly, and says so.
        b.set_token_share(1);
        assert!(b.try_acquire(c, later).is_ok());
        assert_eq!(b.try_acquire(c, later).unwrap_err(), SHARE_WAIT);
        let d = b.take_demand(later);
        assert!(d.token_waited);
        assert_eq!(d.capacity, 5);
        assert!(!b.take_demand(later).token_waited, "taken once");
    }

    #[test]
    fn requests_handed_on_with_a_lease_count_in_the_next_processs_window() {
        let (before, after) = (budget(3, 100), budget(3, 100));
        let a = Uuid::from_u128(1);
        let t0 = Instant::now() + Duration::from_secs(60);
        for i in 0..3 {
            assert!(before.try_acquire(a, t0 + Duration::from_secs(i)).is_ok());
        }
        let at = t0 + Duration::from_secs(4);
        let ages = before.recent(a, at);
        assert_eq!(
            ages,
            [4, 3, 2].map(Duration::from_secs).to_vec(),
            "oldest first"
        );
        after.seed(a, &ages, at);
        // The oldest leaves the window 10 s after it was sent: 6 s from now.
        assert_eq!(
            after.try_acquire(a, at).unwrap_err(),
            Duration::from_secs(6)
        );
        assert!(after.try_acquire(a, t0 + Duration::from_secs(10)).is_ok());
        assert!(before.recent(Uuid::from_u128(2), at).is_empty());
    }

    #[test]
    fn an_abandoned_window_holds_its_account_for_a_window_and_a_lease_check_and_nothing_else() {
        let b = budget(3, 100);
        let (a, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let at = Instant::now() + Duration::from_secs(60);
        b.wait_out_abandoned(a, at, None);
        // The window (10 s) and a lease check and a half (2.5 s × 1.5).
        assert_eq!(
            b.try_acquire(a, at).unwrap_err(),
            Duration::from_millis(13_750)
        );
        assert!(b.try_acquire(other, at).is_ok(), "another account waits");
        assert!(b
            .try_acquire(a, at + Duration::from_millis(13_749))
            .is_err());
        assert!(b.try_acquire(a, at + Duration::from_millis(13_750)).is_ok());
        assert_ne!(b.instance(), budget(3, 100).instance());
    }

    #[test]
    fn an_abandoned_window_of_a_holder_that_fenced_itself_holds_its_account_for_a_window_and_the_margin(
    ) {
        let b = budget(3, 100);
        let a = Uuid::from_u128(1);
        let at = Instant::now() + Duration::from_secs(60);
        let margin = Some(Duration::from_millis(100));
        assert_eq!(b.abandoned_wait(margin), Duration::from_millis(10_100));
        b.wait_out_abandoned(a, at, margin);
        assert!(b
            .try_acquire(a, at + Duration::from_millis(10_099))
            .is_err());
        assert!(b.try_acquire(a, at + Duration::from_millis(10_100)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_fenced_account_sends_nothing_until_the_fence_is_lifted_and_then_at_once() {
        let b = std::sync::Arc::new(budget(5, 100));
        let (a, other) = (Uuid::from_u128(1), Uuid::from_u128(2));
        b.fence(a);
        let t0 = Instant::now();
        assert!(b.try_acquire(a, t0).is_err());
        assert!(
            b.try_acquire(a, t0 + Duration::from_secs(3600)).is_err(),
            "however long"
        );
        assert!(b.try_acquire(other, t0).is_ok(), "another account goes");
        // The window's demand keeps the fence, even with nothing asked for a long time.
        b.take_demand(t0 + Duration::from_secs(3600));
        b.take_demand(t0 + Duration::from_secs(7200));
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.acquire(a, Duration::MAX).await }
        });
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!waiting.is_finished());
        let lifted = tokio::time::Instant::now();
        b.lift_fence(a);
        waiting.await.unwrap().unwrap();
        // Woken by the lift, not by its next look (a lease later in the paused clock).
        assert_eq!(lifted.elapsed(), Duration::ZERO);
    }

    #[test]
    fn a_share_whose_lease_ran_out_sends_nothing_and_asks_again_until_renewed() {
        let b = budget(100, 10);
        let (a, t0) = (Uuid::from_u128(1), Instant::now());
        let lease = t0 + Duration::from_millis(375);
        b.set_token_share_until(5, lease);
        assert!(b.try_acquire(a, t0).is_ok());
        assert!(b.try_acquire(a, lease - Duration::from_millis(1)).is_ok());
        // Not renewed: nothing more, however empty the window, and the negotiation is woken.
        b.take_demand(lease);
        assert_eq!(b.try_acquire(a, lease).unwrap_err(), SHARE_WAIT);
        assert!(b.take_demand(lease).token_waited);
        assert_eq!(
            b.try_acquire(a, lease + Duration::from_secs(60))
                .unwrap_err(),
            SHARE_WAIT
        );
        // Renewed: the share is usable again.
        let later = lease + Duration::from_secs(60);
        b.set_token_share_until(5, later + Duration::from_millis(375));
        assert!(b.try_acquire(a, later).is_ok());
    }

    #[test]
    fn shrinking_the_share_counts_every_request_of_the_old_one_and_allows_none_beyond_the_new() {
        let b = budget(100, 10);
        let t0 = Instant::now();
        // Eight requests in the window, none of them answered yet.
        for i in 0..8 {
            let acct = Uuid::from_u128(i);
            b.try_acquire(acct, t0).unwrap();
        }
        assert_eq!(b.shrink_token_share(5, t0), 8);
        assert_eq!(b.token_share(), 5);
        assert!(b.try_acquire(Uuid::from_u128(99), t0).is_err());
        // It never raises the share (a round only raises it once committed).
        assert_eq!(b.shrink_token_share(9, t0), 8);
        assert_eq!(b.token_share(), 5);
        // A window later the old requests have left it and the new share is usable.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(b.shrink_token_share(5, later), 0);
        for i in 0..5 {
            b.try_acquire(Uuid::from_u128(100 + i), later).unwrap();
        }
        assert!(b.try_acquire(Uuid::from_u128(200), later).is_err());
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
        let empty = |reset| RateReport {
            remaining: Some(0),
            reset: Some(Duration::from_secs(reset)),
            limit: None,
        };
        b.observe(
            a,
            empty(2),
            t0 + Duration::from_secs(6),
            t0 + Duration::from_secs(6),
        );
        assert!(b.try_acquire(a, t0 + Duration::from_secs(7)).is_err());
        let plenty = RateReport {
            remaining: Some(30),
            reset: Some(Duration::from_secs(60)),
            limit: None,
        };
        b.observe(
            a,
            plenty,
            t0 + Duration::from_secs(8),
            t0 + Duration::from_secs(8),
        );
        assert!(
            b.try_acquire(a, t0 + Duration::from_secs(8)).is_ok(),
            "plenty left: no pause"
        );
    }

    #[test]
    fn what_a_server_says_of_waits_and_windows_holds_an_account_a_day_at_most() {
        let b = budget(10, 100);
        let (a, c, v) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let t0 = Instant::now();
        let day = LONGEST_HINT;
        // A 429's Retry-After of u64::MAX seconds, read by the source as a day.
        let hint =
            crate::backoff::parse_retry_after("18446744073709551615", std::time::SystemTime::now());
        b.pause(a, hint.unwrap(), t0);
        assert_eq!(b.try_acquire(a, t0).unwrap_err(), day);
        // Even handed a longer pause directly.
        b.pause(a, Duration::MAX, t0);
        assert_eq!(b.try_acquire(a, t0).unwrap_err(), day);
        // A window with nothing left and a reset of u64::MAX seconds.
        assert!(b.try_acquire(c, t0).is_ok());
        let empty = RateReport::parse(Some("50;w=10"), Some("0"), Some("18446744073709551615"));
        b.observe(c, empty.unwrap(), t0, t0);
        assert_eq!(b.try_acquire(c, t0).unwrap_err(), day);
        // A vendor window of u64::MAX seconds: a day's window, 2 requests in it.
        let huge = RateReport::parse(Some("2;w=18446744073709551615"), Some("1"), None).unwrap();
        assert_eq!(huge.limit.unwrap().window, day);
        assert!(b.try_acquire(v, t0).is_ok());
        b.observe(v, huge, t0, t0);
        let t1 = t0 + Duration::from_secs(1);
        assert!(b.try_acquire(v, t1).is_ok());
        assert_eq!(
            b.try_acquire(v, t1).unwrap_err(),
            day - Duration::from_secs(1)
        );
        // Handed such a window directly, too.
        let direct = RateReport {
            limit: Some(Limit {
                requests: 2,
                window: Duration::MAX,
            }),
            ..RateReport::default()
        };
        b.observe(v, direct, t1, t1);
        assert_eq!(
            b.try_acquire(v, t1).unwrap_err(),
            day - Duration::from_secs(1)
        );
        // Other accounts go on.
        assert!(b.try_acquire(Uuid::from_u128(4), t1).is_ok());
    }

    #[test]
    fn what_holds_an_account_back_on_the_servers_word_is_told_apart_from_our_own_pacing() {
        let b = budget(2, 100);
        let (ours, told, spent) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        // Our own window full, and our own pause for an abandoned lease: pacing, not the
        // server's word.
        for _ in 0..2 {
            assert!(b.try_acquire(ours, t0).is_ok());
        }
        b.wait_out_abandoned(ours, t0, None);
        assert!(b.try_acquire(ours, t0).is_err());
        assert_eq!(b.held_by_server(ours, t0), Duration::ZERO);
        // A 429's hint, and a spent window until its reset.
        b.pause(told, hour, t0);
        assert_eq!(b.held_by_server(told, t0), hour);
        let reset = RateReport::parse(None, Some("0"), Some("3600")).unwrap();
        b.observe(spent, reset, t0, t0);
        assert_eq!(b.held_by_server(spent, t0), hour);
        assert_eq!(
            b.held_by_server(spent, t0 + Duration::from_secs(600)),
            Duration::from_secs(3000),
            "it runs down"
        );
        // A daily quota the vendor reports, used up by our own requests: its window is full.
        let quota = Uuid::from_u128(4);
        assert!(b.try_acquire(quota, t0).is_ok());
        let daily = RateReport::parse(Some("1;w=86400"), Some("0"), Some("86400")).unwrap();
        b.observe(quota, daily, t0, t0);
        assert_eq!(b.held_by_server(quota, t0), Duration::from_secs(86400));
        assert_eq!(b.held_by_server(Uuid::from_u128(5), t0), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_the_server_holds_back_for_longer_than_it_may_wait_fails_at_once() {
        let b = budget(10, 100);
        let (a, c) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let hour = Duration::from_secs(3600);
        b.pause(a, hour, Instant::now());
        let began = tokio::time::Instant::now();
        let held = b.acquire(a, Duration::from_secs(300)).await.unwrap_err();
        assert!(
            held <= hour && held > hour - Duration::from_secs(1),
            "{held:?}"
        );
        assert_eq!(began.elapsed(), Duration::ZERO, "without waiting");
        // Allowed to wait that long, it waits.
        let waits = tokio::time::timeout(Duration::from_secs(60), b.acquire(a, 2 * hour));
        assert!(waits.await.is_err(), "still waiting after a minute");
        // A hold within our own window is pacing: waited out, whatever `longest` says.
        b.pause(c, Duration::from_secs(5), Instant::now());
        let waits = tokio::time::timeout(Duration::from_secs(1), b.acquire(c, Duration::ZERO));
        assert!(waits.await.is_err(), "still waiting after a second");
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
    fn a_request_in_flight_longer_than_a_window_counts_again_from_its_answer() {
        let b = budget(1, 1);
        let (a, c) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let t0 = Instant::now();
        b.try_acquire(a, t0).unwrap();
        // Still unanswered a window later: its slot has aged out (another account's request
        // prunes the token's window and takes the freed slot).
        let late = t0 + Duration::from_secs(11);
        b.try_acquire(c, late).unwrap();
        b.settle(c, late, late);
        b.settle(a, t0, late);
        // The server counted a's request somewhere before `late`: a window from then, neither
        // the account nor the token has room.
        let then = late + Duration::from_secs(5);
        assert_eq!(b.try_acquire(a, then).unwrap_err(), Duration::from_secs(5));
        assert_eq!(b.shrink_token_share(1, then), 2);
        assert!(b.try_acquire(a, late + Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn an_empty_vendor_window_pauses_only_when_ours_does_not_already_wait_for_it() {
        let b = budget(2, 100);
        let (a, c) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let t0 = Instant::now();
        assert!(b.try_acquire(a, t0).is_ok() && b.try_acquire(a, t0).is_ok());
        // Our window is full too: it waits exactly for the oldest request, not for the
        // reset rounded up to whole seconds.
        let empty = RateReport::parse(Some("2;w=10"), Some("0"), Some("11")).unwrap();
        b.observe(a, empty, t0, t0);
        assert!(b.try_acquire(a, t0 + Duration::from_millis(10_100)).is_ok());
        // Another account the vendor says is spent, though we sent nothing: pause.
        b.observe(c, empty, t0, t0);
        assert!(b.try_acquire(c, t0 + Duration::from_secs(10)).is_err());
        assert!(b.try_acquire(c, t0 + Duration::from_secs(11)).is_ok());
    }

    /// On `a` of a budget of 2 per 10 s: two requests answered at once, then a third sent
    /// when the first has left the window (the instant returned). With the second, it fills
    /// the window.
    fn a_third_request_after_the_first_left(b: &RateBudget, a: Uuid, t0: Instant) -> Instant {
        let ms = Duration::from_millis;
        b.try_acquire(a, t0).unwrap();
        b.settle(a, t0, t0 + ms(10));
        b.try_acquire(a, t0 + ms(20)).unwrap();
        b.settle(a, t0 + ms(20), t0 + ms(30));
        let sent = t0 + ms(10_010);
        b.try_acquire(a, sent).unwrap();
        sent
    }

    #[test]
    fn a_window_the_request_itself_filled_does_not_pause_though_an_old_request_left_ours_meanwhile()
    {
        let b = budget(2, 100);
        let a = Uuid::from_u128(1);
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // The third is answered 90 ms later. The server counted the second and the third (2 of
        // 2: nothing left, reset in a second), but by the answer the second has left our
        // window too.
        let sent = a_third_request_after_the_first_left(&b, a, t0);
        let answered = sent + ms(90);
        b.settle(a, sent, answered);
        let full = RateReport::parse(Some("2;w=10"), Some("0"), Some("1")).unwrap();
        b.observe(a, full, sent, answered);
        // Our window already waited for what the server counted: no pause for the reset.
        assert!(b.try_acquire(a, answered).is_ok());
        // Counted as of the answer, the server's full window looked one short of ours and
        // paused the account for a second:
        let c = Uuid::from_u128(2);
        b.try_acquire(c, t0).unwrap();
        b.settle(c, t0, t0 + ms(30));
        b.try_acquire(c, sent).unwrap();
        b.settle(c, sent, answered);
        b.observe(c, full, answered, answered);
        assert!(b.try_acquire(c, answered).is_err());
    }

    #[test]
    fn a_budget_negotiation_during_a_round_trip_forgets_nothing_its_answer_is_judged_by() {
        let b = budget(2, 100);
        let a = Uuid::from_u128(1);
        let ms = Duration::from_millis;
        // While the third is under way, the share's negotiation takes the process's demand,
        // after the second has left our window.
        let sent = a_third_request_after_the_first_left(&b, a, Instant::now());
        assert_eq!(b.take_demand(sent + ms(50)).capacity, 2, "still working");
        let answered = sent + ms(90);
        b.settle(a, sent, answered);
        let full = RateReport::parse(Some("2;w=10"), Some("0"), Some("1")).unwrap();
        b.observe(a, full, sent, answered);
        // As of the send, the second still counted: the server's full window is ours, no pause.
        assert!(b.try_acquire(a, answered).is_ok());
    }

    #[test]
    fn a_partly_used_vendor_window_slows_nothing_and_a_stricter_one_is_one_more_window() {
        let b = budget(10, 100);
        let a = Uuid::from_u128(1);
        let t0 = Instant::now();
        // A window as large as ours, partly used: nothing to wait for.
        let report = RateReport::parse(Some("10;w=10"), Some("3"), Some("8")).unwrap();
        b.observe(a, report, t0, t0);
        assert!(b.try_acquire(a, t0).is_ok());
        // A stricter one (2 per 10 s): one more fits its window, then the account waits.
        let strict = RateReport::parse(Some("2, 2;w=10"), Some("1"), Some("9")).unwrap();
        assert_eq!(
            strict.limit,
            Some(Limit {
                requests: 2,
                window: Duration::from_secs(10)
            })
        );
        b.observe(a, strict, t0, t0);
        assert!(b.try_acquire(a, t0).is_ok());
        assert!(b.try_acquire(a, t0).is_err(), "two in its window already");
        assert!(b.try_acquire(a, t0 + Duration::from_secs(11)).is_ok());
        assert_eq!(RateReport::parse(None, None, None), None);
        assert_eq!(RateReport::parse(Some("50"), None, None), None, "no window");
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
