//! What this process's requests last told of Truto itself, beyond any one account: whether it
//! refuses the API token, whether it answers at all, and whether the token lists the integrated
//! accounts of the Truto environment the mirror follows. Any way every run would fail alike,
//! one account after another, each with a failed run and requests spent. So the client
//! remembers it, the service starts no run meanwhile and probes Truto with one request now and
//! then (`service::truto_watch`), and a one-off `sync` starts no further account.
//!
//! - A 401 without `truto_is_remote_error` is the token's, not an account's: it is refused
//!   until a request with the token succeeds again.
//! - Truto is *unreachable* when requests for two different accounts (or an account and the
//!   listing) gave up (their retries spent) on failures of Truto's own (no connection, a
//!   timeout, a connection lost, a 5xx that is not the vendor's) and no request of this process
//!   got an answer since: while other accounts' requests are answered, and while only one
//!   account fails, its failures are its own. The next answer, to
//!   any request, ends it.
//! - The token is one of *another environment* when a listing of integrated accounts made with
//!   it shows another environment's than the registry follows (`discovery_state.environment_id`):
//!   a staging token in production's place, the wrong secret in a rotation. Each known account's
//!   run would answer 404 and mark it `not_found`. A listing with the token in use (the same,
//!   or one put in its place) that shows the followed environment, or none, ends it.

use std::time::Instant;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::accounts::LISTING_BUDGET_KEY;
use super::{Failed, SourceError, TrutoClient};
use crate::domain::ErrorKind;

/// Truto's standing for this process, shared by every clone of a client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standing {
    /// When a request was first refused for the token, until one made with it succeeds.
    pub rejected_since: Option<DateTime<Utc>>,
    /// Since when Truto has not answered, and the last request's failure, until it answers.
    pub unreachable: Option<Unreachable>,
    /// Since when the API token lists another Truto environment's integrated accounts than the
    /// one the mirror follows, until a listing with it shows the followed one's.
    pub other_environment: Option<OtherEnvironment>,
    /// How often the token was replaced (SIGHUP): a watcher tries the new one at once.
    pub replaced: u64,
    /// When a request last got an answer from Truto (any status that is not a failure of its
    /// own). Not a change anyone waits for: updated without notifying.
    answered: Option<Instant>,
    /// The key (an account, or the listing's) of a request that gave up on Truto's own
    /// failures with nothing answered since; a second key doing the same halts the process.
    /// Cleared by any answer.
    suspect: Option<Uuid>,
}

impl Standing {
    /// How long ago a request last got an answer from Truto (any status that is not a
    /// failure of its own), if one did.
    pub fn answered_ago(&self) -> Option<std::time::Duration> {
        self.answered.map(|at| at.elapsed())
    }

    /// Why no run should start now, if Truto refuses the token, does not answer, or lists
    /// another environment's accounts with it.
    pub fn halt(&self) -> Option<Halt> {
        if let Some(since) = self.rejected_since {
            return Some(Halt::TokenRejected(since));
        }
        if let Some(u) = &self.unreachable {
            return Some(Halt::Unreachable(u.clone()));
        }
        self.other_environment.clone().map(Halt::OtherEnvironment)
    }
}

/// The API token listing another Truto environment's integrated accounts: since when, which
/// environment it lists, and which one the mirror follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherEnvironment {
    pub since: DateTime<Utc>,
    pub listed: String,
    pub follows: String,
}

/// Truto not answering: since when, and why the request that gave up did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable {
    pub since: DateTime<Utc>,
    /// The last failure, as `SourceError` says it ("gave up after 8 attempts: HTTP 502 …").
    pub error: String,
    /// Its kind, for the runs not started meanwhile.
    pub kind: ErrorKind,
    /// The account whose request gave up (`None`: the account listing's): the probe asks for
    /// its users, so that Truto answering its account listing alone does not end the halt.
    pub account: Option<Uuid>,
}

/// Why no run starts now, whatever the account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Halt {
    /// Truto refuses the API token, since then.
    TokenRejected(DateTime<Utc>),
    /// Truto does not answer.
    Unreachable(Unreachable),
    /// The API token lists another environment's accounts.
    OtherEnvironment(OtherEnvironment),
}

impl Halt {
    /// The kind of error a run not started for it is recorded with.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Halt::TokenRejected(_) | Halt::OtherEnvironment(_) => ErrorKind::BadToken,
            Halt::Unreachable(u) => u.kind,
        }
    }
}

impl std::fmt::Display for Halt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Halt::TokenRejected(_) => f.write_str(
                "Truto refused the API token (check TRUTO_API_TOKEN or truto.api_token_file)",
            ),
            Halt::Unreachable(u) => write!(
                f,
                "Truto has not answered since {} ({})",
                u.since.format("%Y-%m-%d %H:%M:%S UTC"),
                u.error
            ),
            Halt::OtherEnvironment(o) => write!(
                f,
                "the API token lists the integrated accounts of Truto environment {}, not those \
                 of {} that this mirror follows (a token of another environment: check \
                 TRUTO_API_TOKEN or truto.api_token_file)",
                o.listed, o.follows
            ),
        }
    }
}

/// What a request's answer says of the token it was sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Accepted,
    Rejected,
    /// No answer, or one that says nothing of the token (a 5xx, a 429).
    Unknown,
}

impl Verdict {
    pub(super) fn of<T>(result: &Result<T, SourceError>) -> Verdict {
        match result {
            Ok(_) => Verdict::Accepted,
            Err(e) => Verdict::of_error(e),
        }
    }

    fn of_error(e: &SourceError) -> Verdict {
        match e {
            e if e.kind() == ErrorKind::BadToken => Verdict::Rejected,
            // Truto authenticated the token before it looked at the account or the scopes.
            SourceError::Status { status, .. }
                if (400..=499).contains(status) && *status != 429 =>
            {
                Verdict::Accepted
            }
            _ => Verdict::Unknown,
        }
    }
}

/// What one attempt's result says of whether Truto answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reach {
    /// An answer from Truto: a page, or any status but a failure of Truto's own (a 4xx, a
    /// 503 for a blocked account, a 5xx the vendor caused).
    Answered,
    /// No answer (no connection, a timeout, the connection lost) or a 5xx of Truto's own.
    Failed,
    /// Neither (a body that is not a page, a request not sent).
    Unknown,
}

impl Reach {
    pub(super) fn of<T>(result: &Result<T, SourceError>) -> Reach {
        match result {
            Ok(_) => Reach::Answered,
            Err(e) => Reach::of_error(e),
        }
    }

    fn of_error(e: &SourceError) -> Reach {
        match e {
            SourceError::Status { status, remote, .. } => {
                if *status >= 500 && !remote && e.is_retryable() {
                    Reach::Failed
                } else {
                    Reach::Answered
                }
            }
            SourceError::Timeout | SourceError::Connect(_) | SourceError::Network(_) => {
                Reach::Failed
            }
            SourceError::TooLarge { .. } => Reach::Answered,
            SourceError::Exhausted { last, .. } => Reach::of_error(last),
            SourceError::InvalidPage(_) | SourceError::Held { .. } | SourceError::Cancelled => {
                Reach::Unknown
            }
        }
    }
}

impl TrutoClient {
    /// Why no run should start now, if Truto refuses the token or does not answer (as far as
    /// this process's requests tell).
    pub fn halt(&self) -> Option<Halt> {
        self.standing.borrow().halt()
    }

    /// Since when Truto has refused the API token, if it does now.
    pub fn token_rejected_since(&self) -> Option<DateTime<Utc>> {
        self.standing.borrow().rejected_since
    }

    /// Since when (and why) Truto has not answered, if it does not now.
    pub fn unreachable(&self) -> Option<Unreachable> {
        self.standing.borrow().unreachable.clone()
    }

    /// Follows Truto's standing.
    pub fn watch_standing(&self) -> watch::Receiver<Standing> {
        self.standing.subscribe()
    }

    /// Since when (and which) the API token lists another environment's accounts, if it does.
    pub fn other_environment(&self) -> Option<OtherEnvironment> {
        self.standing.borrow().other_environment.clone()
    }

    /// Records what a listing of integrated accounts made with token `generation` showed:
    /// `listed`, the environment of its accounts (`None`: none said, or none listed), and
    /// `follows`, the registry's. Runs are held while the two differ, and start again once a
    /// listing with the token in use shows the followed one (or none). A change is logged once.
    pub fn environment_listed(&self, generation: u64, listed: Option<&str>, follows: Option<&str>) {
        let now = Utc::now();
        let mut change = None;
        self.standing.send_if_modified(|s| {
            if s.replaced != generation {
                return false;
            }
            let other = match (listed, follows) {
                (Some(l), Some(f)) if l != f => Some((l, f)),
                _ => None,
            };
            let next = other.map(|(listed, follows)| match &s.other_environment {
                Some(o) if o.listed == listed && o.follows == follows => o.clone(),
                _ => OtherEnvironment {
                    since: now,
                    listed: listed.to_string(),
                    follows: follows.to_string(),
                },
            });
            if next == s.other_environment {
                return false;
            }
            change = Some(next.is_some());
            s.other_environment = next;
            true
        });
        match change {
            Some(true) => tracing::error!(
                listed,
                follows,
                "the API token lists the integrated accounts of another Truto environment than \
                 the one this mirror follows: no new run starts until a listing with it shows \
                 the followed environment's (put that environment's token in TRUTO_API_TOKEN or \
                 truto.api_token_file); it is checked again in 10 s, then less and less often"
            ),
            Some(false) => tracing::info!(
                follows,
                "the API token lists the integrated accounts of the environment this mirror \
                 follows; runs start again"
            ),
            None => {}
        }
    }

    /// How often the token was replaced so far: a request records what its answer says of the
    /// token only if it was sent with the one still in use.
    pub fn token_generation(&self) -> u64 {
        self.standing.borrow().replaced
    }

    /// Records what an attempt's result, sent with token `generation`, says of the token and
    /// of Truto's answering. A change is logged once.
    pub(super) fn judge<T>(&self, generation: u64, result: &Result<T, SourceError>) {
        let verdict = Verdict::of(result);
        let answered = Reach::of(result) == Reach::Answered;
        let now = Utc::now();
        let mut token_change = None;
        let mut reached_again = false;
        self.standing.send_if_modified(|s| {
            if answered {
                s.answered = Some(Instant::now());
                s.suspect = None;
                reached_again = s.unreachable.take().is_some();
            }
            if s.replaced == generation {
                match (verdict, s.rejected_since) {
                    (Verdict::Rejected, None) => {
                        s.rejected_since = Some(now);
                        token_change = Some(verdict);
                    }
                    (Verdict::Accepted, Some(_)) => {
                        s.rejected_since = None;
                        token_change = Some(verdict);
                    }
                    _ => {}
                }
            }
            token_change.is_some() || reached_again
        });
        if reached_again {
            tracing::info!("Truto answers again; runs start again");
        }
        match token_change {
            Some(Verdict::Rejected) => tracing::error!(
                "Truto rejected the API token (HTTP 401): check TRUTO_API_TOKEN or \
                 truto.api_token_file; no new run starts until a request with it succeeds"
            ),
            Some(_) => tracing::info!("Truto accepts the API token again; runs start again"),
            None => {}
        }
    }

    /// Records that a request for `key` (an account, or the listing's key) whose retries began
    /// at `began` gave up with `error`: Truto is unreachable when that was a failure of its own
    /// and nothing was answered since.
    pub(super) fn gave_up(&self, key: Uuid, began: Instant, error: &SourceError) {
        if Reach::of_error(error) != Reach::Failed {
            return;
        }
        let now = Utc::now();
        let mut first = false;
        self.standing.send_if_modified(|s| {
            if s.answered.is_some_and(|at| at >= began) {
                return false;
            }
            // One key alone may be one account's trouble (its vendor behind a Truto that
            // times out), in a fleet whose other accounts happen to send nothing meanwhile.
            if s.unreachable.is_none() && s.suspect.is_none_or(|k| k == key) {
                s.suspect = Some(key);
                return false;
            }
            let since = match &s.unreachable {
                Some(u) => u.since,
                None => {
                    first = true;
                    now
                }
            };
            s.unreachable = Some(Unreachable {
                since,
                error: error.to_string(),
                kind: error.kind(),
                account: (key != LISTING_BUDGET_KEY).then_some(key),
            });
            first
        });
        if first {
            tracing::error!(
                error = %error,
                "Truto does not answer (and no other request was answered meanwhile): no new \
                 run starts until it does; it is asked again in 10 s, then less and less often"
            );
        }
    }

    /// Marks the token as replaced (see [`Standing::replaced`]).
    pub(super) fn token_replaced(&self) {
        self.standing.send_modify(|s| s.replaced += 1);
    }

    /// One request that tells whether Truto answers and takes the token: `Ok` when it does,
    /// whatever the account, as any answer but a 401 for the token also says. While Truto does
    /// not answer an account's requests, the first user of that account (`limit=1`, under its
    /// window): the API that failed, not only the account listing. Otherwise the first
    /// integrated account of the listing (under the token's budget; a token without the scope
    /// to list accounts still works for the users). Retries what is retryable, like every
    /// request, making at most `at_most` attempts when given (`check` answers within seconds,
    /// not after the minute a request's whole retries take). While the token lists another
    /// environment's accounts (and Truto answers), the same listing request, read for its
    /// environment ([`TrutoClient::check_environment`]): `Ok` then says Truto answered, not
    /// that the hold ended.
    pub async fn probe(
        &self,
        at_most: Option<u32>,
        cancel: &CancellationToken,
    ) -> Result<(), Failed> {
        let unreachable = self.unreachable();
        if let (None, Some(held)) = (&unreachable, self.other_environment()) {
            return self
                .check_environment(Some(&held.follows), at_most, cancel)
                .await;
        }
        let (key, mut url, what) = match unreachable.and_then(|u| u.account) {
            Some(account) => {
                let mut url = self.users_url.clone();
                url.query_pairs_mut()
                    .append_pair("integrated_account_id", &account.to_string());
                (account, url, "page")
            }
            None => (LISTING_BUDGET_KEY, self.accounts_url.clone(), "token check"),
        };
        url.query_pairs_mut().append_pair("limit", "1");
        // (`with_retries` records what the answer says, as for every request.)
        let checked = self
            .with_retries_at_most(
                key,
                what,
                at_most.unwrap_or(self.backoff.max_attempts),
                cancel,
                || async { self.get(&url).await.map(|_| ((), None)) },
            )
            .await;
        match checked {
            Ok(_) => Ok(()),
            Err(f) if Verdict::of_error(&f.error) == Verdict::Accepted => Ok(()),
            Err(f) => Err(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(status: u16, remote: bool) -> SourceError {
        SourceError::Status {
            status,
            message: String::new(),
            remote,
            retry_after: None,
        }
    }

    fn status(status: u16, remote: bool) -> Result<(), SourceError> {
        Err(error(status, remote))
    }

    #[test]
    fn only_a_401_for_the_token_rejects_it_and_an_answer_about_the_account_accepts_it() {
        assert_eq!(Verdict::of(&Ok::<(), SourceError>(())), Verdict::Accepted);
        assert_eq!(Verdict::of(&status(401, false)), Verdict::Rejected);
        // The vendor's credentials, not the token.
        assert_eq!(Verdict::of(&status(401, true)), Verdict::Accepted);
        assert_eq!(Verdict::of(&status(404, false)), Verdict::Accepted);
        assert_eq!(Verdict::of(&status(403, false)), Verdict::Accepted);
        assert_eq!(Verdict::of(&status(429, false)), Verdict::Unknown);
        assert_eq!(Verdict::of(&status(503, false)), Verdict::Unknown);
        assert_eq!(Verdict::of(&status(500, false)), Verdict::Unknown);
        assert_eq!(
            Verdict::of::<()>(&Err(SourceError::Timeout)),
            Verdict::Unknown
        );
    }

    #[test]
    fn only_no_answer_or_truto_s_own_5xx_is_a_failure_to_reach_it() {
        let e = |e: SourceError| Reach::of::<()>(&Err(e));
        assert_eq!(Reach::of(&Ok::<(), SourceError>(())), Reach::Answered);
        for s in [500, 502, 504, 520] {
            assert_eq!(Reach::of(&status(s, false)), Reach::Failed, "{s}");
            // The vendor failed; Truto answered.
            assert_eq!(Reach::of(&status(s, true)), Reach::Answered, "{s} remote");
        }
        // A blocked account, a refused token, a rate limit: all answers.
        for s in [503, 401, 404, 429, 400] {
            assert_eq!(Reach::of(&status(s, false)), Reach::Answered, "{s}");
        }
        assert_eq!(e(SourceError::Timeout), Reach::Failed);
        assert_eq!(e(SourceError::Connect("refused".into())), Reach::Failed);
        assert_eq!(e(SourceError::Network("reset".into())), Reach::Failed);
        assert_eq!(e(SourceError::InvalidPage("html".into())), Reach::Unknown);
        assert_eq!(e(SourceError::Cancelled), Reach::Unknown);
        let gave_up = SourceError::Exhausted {
            attempts: 8,
            last: Box::new(SourceError::Connect("refused".into())),
            asked: None,
        };
        assert_eq!(e(gave_up), Reach::Failed);
    }

    fn client() -> TrutoClient {
        let token = secrecy::SecretString::from("t".to_string());
        TrutoClient::new(&crate::config::TrutoSettings::default(), &token).expect("client")
    }

    fn gave_up_on(last: SourceError) -> SourceError {
        SourceError::Exhausted {
            attempts: 2,
            last: Box::new(last),
            asked: None,
        }
    }

    #[test]
    fn truto_is_unreachable_only_when_nothing_was_answered_since_the_failed_request_began() {
        let c = client();
        let began = Instant::now();
        c.judge(0, &Ok::<(), SourceError>(()));
        // An answer to another request meanwhile: this failure is the account's own.
        c.gave_up(LISTING_BUDGET_KEY, began, &gave_up_on(error(502, false)));
        assert_eq!(c.halt(), None);

        let began = Instant::now();
        // Not a failure of Truto's: an account's 503, the vendor's 500.
        c.gave_up(LISTING_BUDGET_KEY, began, &error(503, false));
        c.gave_up(LISTING_BUDGET_KEY, began, &gave_up_on(error(500, true)));
        assert_eq!(c.halt(), None);

        c.gave_up(LISTING_BUDGET_KEY, began, &gave_up_on(error(502, false)));
        // One key alone, even twice, is not Truto down.
        c.gave_up(LISTING_BUDGET_KEY, began, &gave_up_on(error(502, false)));
        assert_eq!(c.halt(), None);
        // A second key with nothing answered in between is.
        let other = Uuid::from_u128(9);
        c.gave_up(other, began, &gave_up_on(error(502, false)));
        let Some(Halt::Unreachable(u)) = c.halt() else {
            panic!("unreachable: {:?}", c.halt())
        };
        assert_eq!(u.kind, ErrorKind::HttpError);
        assert!(u.error.contains("gave up after 2 attempts"), "{}", u.error);
        assert_eq!(u.account, Some(other));
        // Another failure keeps the first one's time and says the latest error, and its
        // account, which the probe asks for.
        let account = Uuid::from_u128(7);
        c.gave_up(account, began, &gave_up_on(SourceError::Timeout));
        let again = c.unreachable().expect("still");
        assert_eq!((again.since, again.kind), (u.since, ErrorKind::Timeout));
        assert_eq!(again.account, Some(account));
        assert!(c
            .halt()
            .expect("halt")
            .to_string()
            .starts_with("Truto has not answered since "));

        // Any answer ends it: a 404 for an account, say.
        c.judge(0, &status(404, false));
        assert_eq!(c.halt(), None);
    }

    #[test]
    fn a_token_listing_another_environment_holds_runs_until_a_listing_with_it_shows_the_followed_one(
    ) {
        let c = client();
        // The followed one, none said, or none followed yet: nothing to hold for.
        c.environment_listed(0, Some("e1"), Some("e1"));
        c.environment_listed(0, None, Some("e1"));
        c.environment_listed(0, Some("e2"), None);
        assert_eq!(c.halt(), None);

        c.environment_listed(0, Some("e2"), Some("e1"));
        let Some(Halt::OtherEnvironment(o)) = c.halt() else {
            panic!("held: {:?}", c.halt())
        };
        assert_eq!((o.listed.as_str(), o.follows.as_str()), ("e2", "e1"));
        let halt = c.halt().expect("held");
        assert_eq!(halt.kind(), ErrorKind::BadToken);
        assert!(
            halt.to_string().starts_with(
                "the API token lists the integrated accounts of Truto environment e2, not those \
                 of e1 that this mirror follows"
            ),
            "{halt}"
        );
        // Listed again: since when is kept.
        c.environment_listed(0, Some("e2"), Some("e1"));
        assert_eq!(c.other_environment().expect("held").since, o.since);
        // A listing made with the token before it was replaced says nothing of the new one.
        c.token_replaced();
        c.environment_listed(0, Some("e1"), Some("e1"));
        assert!(c.other_environment().is_some());
        // A refused token is said first.
        c.judge(1, &status(401, false));
        assert!(matches!(c.halt(), Some(Halt::TokenRejected(_))));
        c.judge(1, &Ok::<(), SourceError>(()));
        assert!(matches!(c.halt(), Some(Halt::OtherEnvironment(_))));
        c.environment_listed(1, None, Some("e1"));
        assert_eq!(c.halt(), None);
    }
}
