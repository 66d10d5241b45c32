//! One request with everything around it: a slot from the request budget, metrics, pauses
//! after 429s, and retries with backoff for what [`SourceError::is_retryable`] says.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::budget::RateReport;
use super::{Failed, SourceError, TrutoClient};

/// A request's result and what it cost.
pub(super) struct Attempted<T> {
    pub value: T,
    pub requests: u32,
    pub rate_limited: u32,
    pub budget_wait: Duration,
}

/// The vendor's `ratelimit-*` headers on an answer, when it gave them.
pub(super) type Reported = Option<RateReport>;

/// What one request of a retried series has cost so far.
struct Tally {
    /// The most attempts this request may make.
    cap: u32,
    attempts: u32,
    rate_limited: u32,
    waited: Duration,
    budget_wait: Duration,
}

impl TrutoClient {
    /// One request for account `id` with the budget, metrics, 429 pauses and retries around
    /// it (the budget's per-account window is `id`'s). `once` makes the request and also returns
    /// what the vendor's `ratelimit-*` headers said, when it sent any.
    pub(super) async fn with_retries<T, F, Fut>(
        &self,
        id: Uuid,
        what: &'static str,
        cancel: &CancellationToken,
        once: F,
    ) -> Result<Attempted<T>, Failed>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(T, Reported), SourceError>>,
    {
        let cap = self.backoff.max_attempts;
        self.with_retries_at_most(id, what, cap, cancel, once).await
    }

    /// [`Self::with_retries`] making at most `cap` attempts (fewer when `truto.max_attempts`
    /// allows fewer).
    pub(super) async fn with_retries_at_most<T, F, Fut>(
        &self,
        id: Uuid,
        what: &'static str,
        cap: u32,
        cancel: &CancellationToken,
        mut once: F,
    ) -> Result<Attempted<T>, Failed>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(T, Reported), SourceError>>,
    {
        let mut t = Tally {
            cap: cap.clamp(1, self.backoff.max_attempts.max(1)),
            attempts: 0,
            rate_limited: 0,
            waited: Duration::ZERO,
            budget_wait: Duration::ZERO,
        };
        let began = Instant::now();
        loop {
            t.attempts += 1;
            let slot = match self.take_slot(id, cancel, &mut t).await {
                Ok(slot) => slot,
                // (This attempt's request was never sent.)
                Err(e) => return Err(Failed::new(e, t.attempts - 1)),
            };
            let sent = Instant::now();
            let generation = self.token_generation();
            let result = tokio::select! {
                r = once() => r,
                _ = cancel.cancelled() => return Err(Failed::new(SourceError::Cancelled, t.attempts)),
            };
            let answered = Instant::now();
            if let (Some(budget), Some(taken)) = (&self.budget, slot) {
                budget.settle(id, taken, answered);
            }
            self.count_request(id, what, sent.elapsed(), &result);
            self.judge(generation, &result);
            let err = match result {
                Ok((value, reported)) => {
                    if let (Some(budget), Some(taken), Some(report)) =
                        (&self.budget, slot, reported)
                    {
                        budget.observe(id, report, taken, answered);
                    }
                    return Ok(Attempted {
                        value,
                        requests: t.attempts,
                        rate_limited: t.rate_limited,
                        budget_wait: t.budget_wait,
                    });
                }
                Err(e) => e,
            };
            let (wait, err) = self.retry_wait(id, err, &mut t).inspect_err(|f| {
                self.gave_up(id, began, &f.error);
            })?;
            // An account's requests are made in its run's span, which names the account (a
            // field here too would show it twice); the listing's belong to no account.
            tracing::warn!(
                attempt = t.attempts,
                wait_ms = wait.as_millis() as u64,
                error = %err,
                "retrying {what} request"
            );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => return Err(Failed::new(SourceError::Cancelled, t.attempts)),
            }
            t.waited += wait;
        }
    }

    /// Waits for a slot of the request budget (when pacing is on): `Ok(None)` when there is
    /// no budget. Fails when cancelled first, or when the server holds the account back for
    /// longer than the retries have left to wait (see [`super::budget::RateBudget::acquire`]).
    async fn take_slot(
        &self,
        id: Uuid,
        cancel: &CancellationToken,
        t: &mut Tally,
    ) -> Result<Option<Instant>, SourceError> {
        let Some(budget) = &self.budget else {
            return Ok(None);
        };
        let longest = self.backoff.max_total_wait.saturating_sub(t.waited);
        let whose = match account_of(id) {
            Some(_) => "this account's",
            None => "the account listing's",
        };
        let (taken, waited) = tokio::select! {
            w = budget.acquire(id, longest) => w.map_err(|wait| SourceError::Held { wait, whose })?,
            _ = cancel.cancelled() => return Err(SourceError::Cancelled),
        };
        t.budget_wait += waited;
        if let Some(m) = &self.metrics {
            m.add(
                "lms_sync_rate_budget_wait_seconds_total",
                &[("account", &id.to_string())],
                waited.as_secs_f64(),
            );
        }
        Ok(Some(taken))
    }

    /// Counts a request by status and account, and its duration by endpoint and status class.
    fn count_request<T>(
        &self,
        id: Uuid,
        what: &'static str,
        took: Duration,
        result: &Result<T, SourceError>,
    ) {
        let Some(m) = &self.metrics else { return };
        let (status, class) = match result {
            Ok(_) => ("200".to_string(), "2xx"),
            Err(SourceError::Status { status, .. }) => (
                status.to_string(),
                match status {
                    400..=499 => "4xx",
                    500..=599 => "5xx",
                    _ => "other",
                },
            ),
            Err(e) => (e.kind().as_str().to_string(), "error"),
        };
        let account = account_of(id).map(|a| a.to_string()).unwrap_or_default();
        m.inc(
            "lms_sync_http_requests_total",
            &[("status", &status), ("account", &account)],
        );
        m.observe(
            "lms_sync_http_request_duration_seconds",
            &[("endpoint", what), ("status_class", class)],
            took.as_secs_f64(),
        );
    }

    /// After a failed attempt: how long to wait before the next, or the failure to return
    /// (not retryable, or out of attempts or time). A 429 with a hint pauses the account.
    fn retry_wait(
        &self,
        id: Uuid,
        err: SourceError,
        t: &mut Tally,
    ) -> Result<(Duration, SourceError), Failed> {
        let label = id.to_string();
        if err.status() == Some(429) {
            t.rate_limited += 1;
            if let Some(m) = &self.metrics {
                m.inc("lms_sync_rate_limited_total", &[("account", &label)]);
            }
            if let (Some(budget), Some(hint)) = (&self.budget, err.retry_hint()) {
                budget.pause(id, hint, Instant::now());
            }
        }
        if !err.is_retryable() {
            return Err(Failed::new(err, t.attempts));
        }
        let Some(wait) = self
            .backoff
            .next_wait(t.attempts, t.waited, err.retry_hint(), fastrand::f64())
            .filter(|_| t.attempts < t.cap)
        else {
            let attempts = t.attempts;
            // Attempts were left: the server's own wait is what the retry budget lacked.
            let asked = err.retry_hint().filter(|h| {
                attempts < t.cap && t.waited.saturating_add(*h) > self.backoff.max_total_wait
            });
            let last = Box::new(err);
            return Err(Failed::new(
                SourceError::Exhausted {
                    attempts,
                    last,
                    asked,
                },
                attempts,
            ));
        };
        if let Some(m) = &self.metrics {
            m.inc("lms_sync_retries_total", &[("account", &label)]);
        }
        Ok((wait, err))
    }
}

/// The account a request was paced and counted under: none for the account listing's, which
/// go under [`super::accounts::LISTING_BUDGET_KEY`].
fn account_of(id: Uuid) -> Option<Uuid> {
    (id != super::accounts::LISTING_BUDGET_KEY).then_some(id)
}
