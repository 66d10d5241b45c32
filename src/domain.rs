//! The words every part shares: how a run ended, an account's health, why something failed,
//! and a run's counters. Enums, so that a typo does not compile; their text exists only for
//! the outside world (SQL columns, metric labels, logs) and is defined here, once, by
//! `as_str` and `parse`. Pure: no I/O.

use std::fmt;

/// A boxed `Send` future (for steps that callers spawn).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Defines a fieldless enum with its one text form (`as_str`), the inverse (`parse`), `ALL`
/// variants, and `Display`.
macro_rules! text_enum {
    ($(#[$m:meta])* pub enum $name:ident { $($(#[$vm:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $variant,)+ }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The text stored in the database and used in metric labels.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }

            /// The value whose text is `s`.
            pub fn parse(s: &str) -> Option<$name> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum! {
    /// How a run ended (`sync_runs.outcome`, `sync_state.last_outcome`).
    pub enum Outcome {
        /// Still under way (or its process died; the next run of the account marks it).
        Running = "running",
        Succeeded = "succeeded",
        /// Complete, but deletions were not inferred for a reason someone should look at.
        NeedsAttention = "needs_attention",
        Failed = "failed",
        /// Stopped by a shutdown; the next run resumes from the last committed page.
        Interrupted = "interrupted",
    }
}

text_enum! {
    /// Whether an account can be synced, as its last runs found (`sync_state.health`). Anything
    /// but `Ok` needs someone to act upstream; the scheduler probes such an account hours apart.
    pub enum Health {
        Ok = "ok",
        /// The vendor credentials no longer work (401 with `truto_is_remote_error`).
        NeedsReauth = "needs_reauth",
        /// Truto answered 503: the account is blocked.
        Blocked = "blocked",
        /// Truto answered 404: no such integrated account for this token (its reason then
        /// says [`TRUTO_404`]), or the customer's LMS did (`truto_is_remote_error`).
        NotFound = "not_found",
        /// Truto answered 403: the token lacks a scope.
        Forbidden = "forbidden",
    }
}

/// What the error of Truto's own 404 says (the account unknown to the token), and so the
/// `health_reason` of an account `not_found` for it: a listing that has the account active
/// vouches for the token knowing it again, where a vendor's 404 (its site gone) stays.
pub const TRUTO_404: &str = "no such integrated account for this token: deleted in Truto \
     (discovery retires it at its next complete listing), or the API token is one of another \
     Truto environment; check accounts.integrated_account_id and the token";

impl Health {
    pub fn is_ok(self) -> bool {
        self == Health::Ok
    }
}

text_enum! {
    /// Why a request or a run failed (`sync_runs.error_kind`, the `status` label of request
    /// metrics for requests that got no HTTP status).
    pub enum ErrorKind {
        NeedsReauth = "needs_reauth",
        /// Truto rejected the API token itself (401 without `truto_is_remote_error`).
        BadToken = "bad_token",
        Forbidden = "forbidden",
        NotFound = "not_found",
        Blocked = "blocked",
        RateLimited = "rate_limited",
        /// Any other HTTP status.
        HttpError = "http_error",
        Timeout = "timeout",
        Connect = "connect",
        Network = "network",
        InvalidPage = "invalid_page",
        Cancelled = "cancelled",
        /// PostgreSQL failed.
        Database = "database",
        /// The run was stopped by a shutdown.
        Interrupted = "interrupted",
        /// The run was stopped because its process lost the account's lease (its connection
        /// ended: a database restart, a terminated backend, a cut network) and could not take
        /// it back: another process held it, or held it meanwhile.
        LeaseLost = "lease_lost",
        /// The API broke the listing's protocol (a repeated cursor, too many pages).
        Listing = "listing",
    }
}

impl ErrorKind {
    /// The health an error of this kind gives its account: `Some` for errors that say the
    /// account itself cannot be synced until someone acts upstream.
    pub fn health(self) -> Option<Health> {
        match self {
            ErrorKind::NeedsReauth => Some(Health::NeedsReauth),
            ErrorKind::Blocked => Some(Health::Blocked),
            ErrorKind::NotFound => Some(Health::NotFound),
            ErrorKind::Forbidden => Some(Health::Forbidden),
            _ => None,
        }
    }
}

text_enum! {
    /// Where an account in the registry (`accounts.source`) came from.
    pub enum AccountSource {
        /// An `[[accounts]]` table.
        Config = "config",
        /// Truto's list of integrated accounts.
        Discovered = "discovered",
    }
}

/// Counters of one run, as committed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RunCounts {
    pub pages: u64,
    pub users_seen: u64,
    pub inserted: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub deleted: u64,
    pub undeleted: u64,
    pub rejected: u64,
    pub duplicates: u64,
    pub http_requests: u64,
    pub retries: u64,
    pub rate_limited: u64,
    /// Full objects fetched and merged (or found unchanged) by hydration.
    pub hydrated: u64,
    /// Single-user GETs that failed (the user stays queued).
    pub hydration_failures: u64,
}

impl RunCounts {
    pub fn add(&mut self, o: &RunCounts) {
        self.pages += o.pages;
        self.users_seen += o.users_seen;
        self.inserted += o.inserted;
        self.updated += o.updated;
        self.unchanged += o.unchanged;
        self.deleted += o.deleted;
        self.undeleted += o.undeleted;
        self.rejected += o.rejected;
        self.duplicates += o.duplicates;
        self.http_requests += o.http_requests;
        self.retries += o.retries;
        self.rate_limited += o.rate_limited;
        self.hydrated += o.hydrated;
        self.hydration_failures += o.hydration_failures;
    }

    /// Adds the requests of one request that took `requests` attempts.
    pub fn add_requests(&mut self, requests: u32) {
        self.http_requests += u64::from(requests);
        self.retries += u64::from(requests.saturating_sub(1));
    }
}

/// One account of the registry (the `accounts` table), as the store reads it and the fleet
/// plans with it.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountRow {
    pub integrated_account_id: uuid::Uuid,
    pub tenant_id: Option<String>,
    pub label: Option<String>,
    pub source: AccountSource,
    /// As Truto last reported it (discovered accounts).
    pub truto_status: Option<String>,
    pub integration: Option<String>,
    pub is_sandbox: bool,
    pub paused: bool,
    /// `accounts pause --until`: when the service resumes it (NULL: a pause until a resume).
    pub paused_until: Option<chrono::DateTime<chrono::Utc>>,
    pub retired_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `accounts protect`: its data is never purged (NULL: not protected).
    pub protected_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `accounts sync-now`: a run is wanted at once (when later than the last run's start).
    pub sync_requested_at: Option<chrono::DateTime<chrono::Utc>>,
    /// `accounts allow-deletes`: its next complete listing may delete past the delete guard.
    pub allow_deletes: bool,
    pub first_seen_at: chrono::DateTime<chrono::Utc>,
    pub last_seen_at: chrono::DateTime<chrono::Utc>,
}

impl AccountRow {
    /// When its pause ends by itself (`accounts pause --until`): only while it is paused.
    pub fn pause_end(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.paused_until.filter(|_| self.paused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_reads_back_from_its_text() {
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(*o));
        }
        for h in Health::ALL {
            assert_eq!(Health::parse(h.as_str()), Some(*h));
        }
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::parse(k.as_str()), Some(*k));
        }
        assert_eq!(Health::parse("OK"), None);
    }

    #[test]
    fn only_errors_about_the_account_itself_set_its_health() {
        let unhealthy: Vec<Health> = ErrorKind::ALL.iter().filter_map(|k| k.health()).collect();
        assert_eq!(
            unhealthy,
            [
                Health::NeedsReauth,
                Health::Forbidden,
                Health::NotFound,
                Health::Blocked
            ]
        );
        for h in unhealthy {
            assert_eq!(
                ErrorKind::parse(h.as_str()).and_then(|k| k.health()),
                Some(h)
            );
        }
        assert_eq!(ErrorKind::BadToken.health(), None);
    }
}
