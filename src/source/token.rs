//! What Truto last said of the API token itself. A 401 without `truto_is_remote_error` is the
//! token's, not an account's: every request made with it fails alike. So the client remembers
//! it (until a request with the token succeeds again), and the service starts no run meanwhile
//! and checks the token with one request now and then (`service::token_watch`), and a one-off
//! `sync` starts no further account, instead of failing every account of a fleet in turn.

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::accounts::LISTING_BUDGET_KEY;
use super::{Failed, SourceError, TrutoClient};
use crate::domain::ErrorKind;

/// The token's standing, shared by every clone of a client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenState {
    /// When a request was first refused for the token, until one made with it succeeds.
    pub rejected_since: Option<DateTime<Utc>>,
    /// How often the token was replaced (SIGHUP): a watcher tries the new one at once.
    pub replaced: u64,
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

impl TrutoClient {
    /// Since when Truto has refused the API token, if it does now (as far as this process's
    /// requests tell).
    pub fn token_rejected_since(&self) -> Option<DateTime<Utc>> {
        self.token.borrow().rejected_since
    }

    /// Follows the token's standing.
    pub fn watch_token(&self) -> watch::Receiver<TokenState> {
        self.token.subscribe()
    }

    /// How often the token was replaced so far: a request records what its answer says of the
    /// token only if it was sent with the one still in use.
    pub(super) fn token_generation(&self) -> u64 {
        self.token.borrow().replaced
    }

    /// Records what an answer to a request sent with token `generation` says of it: the first
    /// refusal and the first success after refusals are logged, once each.
    pub(super) fn judge_token(&self, generation: u64, verdict: Verdict) {
        let now = Utc::now();
        let changed = self.token.send_if_modified(|s| {
            if s.replaced != generation {
                return false;
            }
            match (verdict, s.rejected_since) {
                (Verdict::Rejected, None) => s.rejected_since = Some(now),
                (Verdict::Accepted, Some(_)) => s.rejected_since = None,
                _ => return false,
            }
            true
        });
        if changed {
            match verdict {
                Verdict::Rejected => tracing::error!(
                    "Truto rejected the API token (HTTP 401): check TRUTO_API_TOKEN or \
                     truto.api_token_file; no new run starts until a request with it succeeds"
                ),
                _ => tracing::info!("Truto accepts the API token again; runs start again"),
            }
        }
    }

    /// Marks the token as replaced (see [`TokenState::replaced`]).
    pub(super) fn token_replaced(&self) {
        self.token.send_modify(|s| s.replaced += 1);
    }

    /// One request that tells whether Truto takes the token (the first integrated account of
    /// the listing, under the token's budget): `Ok` when it does, whatever the account, as any
    /// answer but a 401 for the token also says (a token without the scope to list accounts
    /// still works for the users). Retries what is retryable, like every request.
    pub async fn check_token(&self, cancel: &CancellationToken) -> Result<(), Failed> {
        let mut url = self.accounts_url.clone();
        url.query_pairs_mut().append_pair("limit", "1");
        // (`with_retries` records the verdict, as for every request.)
        let checked = self
            .with_retries(LISTING_BUDGET_KEY, "token check", cancel, || async {
                self.get(&url).await.map(|_| ((), None))
            })
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

    fn status(status: u16, remote: bool) -> Result<(), SourceError> {
        Err(SourceError::Status {
            status,
            message: String::new(),
            remote,
            retry_after: None,
        })
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
}
