//! What a failed request means: the error kinds, whether they are retried, and the advice an
//! operator reads.

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde::Deserialize;

use crate::backoff::{parse_reset_seconds, parse_retry_after};
use crate::domain::ErrorKind;
use crate::text::{error_chain, shorten};

/// Why a request failed. `is_retryable` is what retry code branches on.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{}", status_message(*.status, .message, *.remote))]
    Status {
        status: u16,
        /// Truto's `message` (or `error`), shortened.
        message: String,
        /// `truto_is_remote_error: true`: the vendor, not Truto, failed.
        remote: bool,
        retry_after: Option<Duration>,
    },
    #[error("request timed out")]
    Timeout,
    #[error("cannot connect to Truto: {0}")]
    Connect(String),
    #[error("network error: {0}")]
    Network(String),
    #[error("invalid page from Truto: {0}")]
    InvalidPage(String),
    #[error("the answer from Truto is larger than truto.max_body_mb ({limit_mb} MiB); nothing of it was written")]
    TooLarge { limit_mb: u64 },
    #[error("{}", exhausted_message(*.attempts, .last, *.asked))]
    Exhausted {
        attempts: u32,
        last: Box<SourceError>,
        /// The wait the last answer asked for, when that is what the retry budget lacked.
        asked: Option<Duration>,
    },
    /// The server holds the account back (a spent window until its reset, a 429's wait) for
    /// longer than `truto.max_retry_wait_secs`: not waited out with the account held.
    #[error("rate limited: the server holds {whose} requests back for another {} s (its Retry-After or ratelimit-* headers), longer than truto.max_retry_wait_secs allows; tried again once that has passed", .wait.as_secs())]
    Held {
        wait: Duration,
        /// "this account's", or "the account listing's" (discovery's budget key).
        whose: &'static str,
    },
    #[error("cancelled")]
    Cancelled,
}

fn exhausted_message(attempts: u32, last: &SourceError, asked: Option<Duration>) -> String {
    let tries = if attempts == 1 { "attempt" } else { "attempts" };
    match asked {
        Some(wait) => format!(
            "gave up after {attempts} {tries}: {last} (it asked to wait {} s, longer than truto.max_retry_wait_secs allows)",
            wait.as_secs()
        ),
        None => format!("gave up after {attempts} {tries}: {last}"),
    }
}

fn status_message(status: u16, message: &str, remote: bool) -> String {
    let detail = if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    };
    let advice = match (status, remote) {
        (401, true) => "the LMS credentials of this integrated account no longer work; the customer must re-authorize the integration in Truto",
        (401, false) => "Truto rejected the API token; check TRUTO_API_TOKEN (or truto.api_token_file)",
        (403, _) => "the token lacks a required scope or permission for this account; grant it in Truto",
        // The vendor's own 404 (its site or API moved or gone), not Truto's for the account.
        (404, true) => "the customer's LMS itself answered 404 through Truto (truto_is_remote_error): its site or API may have moved or been removed; check the integration's connection in Truto",
        (404, _) => crate::domain::TRUTO_404,
        (503, _) => "the integrated account is blocked in Truto; unblock it in Truto before the next sync",
        (429, _) => "rate limited by Truto",
        (400, _) | (409, _) | (422, _) => "Truto refused the request; check the account's remote_query and exclude_fields",
        (s, _) if s >= 500 => "Truto or the vendor failed",
        _ => "unexpected answer from Truto",
    };
    format!("HTTP {status}: {advice}{detail}")
}

impl SourceError {
    pub fn is_retryable(&self) -> bool {
        match self {
            SourceError::Status { status, .. } => {
                matches!(*status, 408 | 429 | 500 | 502 | 504)
                // Other gateway-ish 5xx answers (520–599) are transient too; 501, 503, 505 are not.
                || (*status >= 506 && *status <= 599)
            }
            SourceError::Timeout | SourceError::Connect(_) | SourceError::Network(_) => true,
            SourceError::InvalidPage(_) => true,
            // The same page would be as large again.
            SourceError::TooLarge { .. } => false,
            SourceError::Exhausted { .. } | SourceError::Held { .. } | SourceError::Cancelled => {
                false
            }
        }
    }

    /// How long the server asked us to wait, if it did.
    pub fn retry_hint(&self) -> Option<Duration> {
        match self {
            SourceError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// How long the server holds the account back, when that is why the request failed: a
    /// hold longer than the retries could wait ([`SourceError::Held`]), or a 429 whose wait
    /// was longer than the retry budget had left.
    pub fn held_for(&self) -> Option<Duration> {
        match self {
            SourceError::Held { wait, .. } => Some(*wait),
            SourceError::Exhausted {
                asked: Some(wait),
                last,
                ..
            } if last.status() == Some(429) => Some(*wait),
            _ => None,
        }
    }

    /// The HTTP status behind this error, looking through `Exhausted`.
    pub fn status(&self) -> Option<u16> {
        match self {
            SourceError::Status { status, .. } => Some(*status),
            SourceError::Exhausted { last, .. } => last.status(),
            _ => None,
        }
    }

    /// What kind of failure this is (for `sync_runs.error_kind`, health and metrics).
    pub fn kind(&self) -> ErrorKind {
        match self {
            SourceError::Status {
                status: 401,
                remote: true,
                ..
            } => ErrorKind::NeedsReauth,
            SourceError::Status { status: 401, .. } => ErrorKind::BadToken,
            SourceError::Status { status: 403, .. } => ErrorKind::Forbidden,
            SourceError::Status { status: 404, .. } => ErrorKind::NotFound,
            SourceError::Status { status: 503, .. } => ErrorKind::Blocked,
            SourceError::Status { status: 429, .. } | SourceError::Held { .. } => {
                ErrorKind::RateLimited
            }
            SourceError::Status { .. } => ErrorKind::HttpError,
            SourceError::Timeout => ErrorKind::Timeout,
            SourceError::Connect(_) => ErrorKind::Connect,
            SourceError::Network(_) => ErrorKind::Network,
            SourceError::InvalidPage(_) | SourceError::TooLarge { .. } => ErrorKind::InvalidPage,
            SourceError::Exhausted { last, .. } => last.kind(),
            SourceError::Cancelled => ErrorKind::Cancelled,
        }
    }
}

/// A request that failed for good, and the HTTP requests it took (retries included).
#[derive(Debug)]
pub struct Failed {
    pub error: SourceError,
    pub requests: u32,
}

impl Failed {
    pub(crate) fn new(error: SourceError, requests: u32) -> Failed {
        Failed { error, requests }
    }
}

pub(super) fn classify(e: reqwest::Error) -> SourceError {
    if e.is_timeout() {
        return SourceError::Timeout;
    }
    let connect = e.is_connect();
    let chain = error_chain(&e.without_url());
    if connect {
        SourceError::Connect(chain)
    } else {
        SourceError::Network(chain)
    }
}

pub(super) fn status_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> SourceError {
    #[derive(Deserialize, Default)]
    struct ErrorBody {
        #[serde(default)]
        message: Option<serde_json::Value>,
        #[serde(default)]
        error: Option<serde_json::Value>,
        #[serde(default)]
        truto_is_remote_error: Option<bool>,
    }
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let text = |v: Option<serde_json::Value>| match v {
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Null) | None => None,
        Some(other) => Some(other.to_string()),
    };
    let message = text(parsed.message)
        .or(text(parsed.error))
        .unwrap_or_default();
    let retry_after = if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        headers
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()))
            .or_else(|| {
                headers
                    .get("ratelimit-reset")
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_reset_seconds)
            })
    } else {
        None
    };
    SourceError::Status {
        status: status.as_u16(),
        message: shorten(&message, 300),
        remote: parsed.truto_is_remote_error.unwrap_or(false),
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_404_says_whose_it_is() {
        let truto = status_message(404, "", false);
        assert!(
            truto.starts_with("HTTP 404: no such integrated account for this token"),
            "{truto}"
        );
        let vendor = status_message(404, "site gone", true);
        assert!(
            vendor.starts_with("HTTP 404: the customer's LMS itself answered 404 through Truto")
                && vendor.ends_with(": site gone"),
            "{vendor}"
        );
    }
}
