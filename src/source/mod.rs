//! The Truto client: the only module that speaks HTTP to Truto. It fetches one page of an
//! account's user listing, retrying what is retryable, and decodes it. It knows nothing of the
//! database and never logs the token (the header is marked sensitive; errors carry no headers).

pub mod budget;

use std::time::{Duration, SystemTime};

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;
use std::time::Instant;

use crate::backoff::{parse_reset_seconds, parse_retry_after, Backoff};
use crate::config::{AccountSettings, TrutoSettings};
use crate::domain::ErrorKind;
use crate::metrics::Metrics;
use crate::model::{decode_records, DecodedPage};
use crate::text::{error_chain, shorten};
use budget::RateBudget;

/// The users endpoint, relative to the base URL.
pub const USERS_PATH: &str = "unified/lms/users";

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
    #[error("gave up after {attempts} attempts: {last}")]
    Exhausted {
        attempts: u32,
        last: Box<SourceError>,
    },
    #[error("cancelled")]
    Cancelled,
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
        (404, _) => "no such integrated account for this token; check accounts.integrated_account_id",
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
            SourceError::Exhausted { .. } | SourceError::Cancelled => false,
        }
    }

    /// How long the server asked us to wait, if it did.
    pub fn retry_hint(&self) -> Option<Duration> {
        match self {
            SourceError::Status { retry_after, .. } => *retry_after,
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
            SourceError::Status { status: 429, .. } => ErrorKind::RateLimited,
            SourceError::Status { .. } => ErrorKind::HttpError,
            SourceError::Timeout => ErrorKind::Timeout,
            SourceError::Connect(_) => ErrorKind::Connect,
            SourceError::Network(_) => ErrorKind::Network,
            SourceError::InvalidPage(_) => ErrorKind::InvalidPage,
            SourceError::Exhausted { last, .. } => last.kind(),
            SourceError::Cancelled => ErrorKind::Cancelled,
        }
    }
}

/// One decoded page.
#[derive(Debug)]
pub struct FetchedPage {
    /// The records, once [`FetchedPage::decode`] has run (empty before).
    pub decoded: DecodedPage,
    /// The body, until it is decoded: decoding is left to the caller, so it can run in
    /// parallel with fetching the next page.
    body: Option<bytes::Bytes>,
    /// Where each record's text lies in `body`, as found when the envelope was checked.
    spans: Vec<std::ops::Range<usize>>,
    /// Records in `result`, bad ones included.
    pub records: usize,
    pub next_cursor: Option<String>,
    pub is_partial: bool,
    /// HTTP requests this page took (1 + retries).
    pub requests: u32,
    /// Of which answered 429.
    pub rate_limited: u32,
    /// `ratelimit-remaining` and `ratelimit-reset` of the answer, when the vendor gave them.
    pub rate_remaining: Option<(u64, Duration)>,
    /// Time spent waiting for the request budget.
    pub budget_wait: Duration,
}

/// Talks to Truto for every account (one token serves them all).
#[derive(Clone)]
pub struct TrutoClient {
    http: reqwest::Client,
    users_url: Url,
    auth: HeaderValue,
    page_size: u32,
    backoff: Backoff,
    budget: Option<Arc<RateBudget>>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for TrutoClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrutoClient")
            .field("users_url", &self.users_url.as_str())
            .field("auth", &"[redacted]")
            .finish()
    }
}

impl TrutoClient {
    pub fn new(settings: &TrutoSettings, token: &SecretString) -> anyhow::Result<Self> {
        crate::install_crypto_provider();
        let mut base = Url::parse(&settings.base_url)?;
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let users_url = base.join(USERS_PATH)?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
            .map_err(|_| {
                anyhow::anyhow!(
                    "the Truto API token contains characters not allowed in an HTTP header"
                )
            })?;
        auth.set_sensitive(true);
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout())
            .connect_timeout(settings.connect_timeout())
            .user_agent(concat!("lms-sync/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            http,
            users_url,
            auth,
            page_size: settings.page_size,
            backoff: Backoff {
                initial: Duration::from_millis(settings.backoff_initial_ms),
                max: Duration::from_secs(settings.backoff_max_secs),
                max_attempts: settings.max_attempts,
                max_total_wait: Duration::from_secs(settings.max_retry_wait_secs),
            },
            budget: None,
            metrics: None,
        })
    }

    /// The client every command uses: the settings' timeouts and retries, paced by the
    /// configured request budget (when enabled).
    pub fn from_settings(
        settings: &crate::config::Settings,
        token: &SecretString,
    ) -> anyhow::Result<Self> {
        let client = Self::new(&settings.truto, token)?;
        Ok(match RateBudget::from_settings(&settings.rate_budget) {
            Some(b) => client.with_budget(Arc::new(b)),
            None => client,
        })
    }

    /// Paces every request under `budget` (shared by all clones of this client).
    pub fn with_budget(mut self, budget: Arc<RateBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Counts requests, retries, 429s and budget waits in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The URL of one page. Every parameter but `next_cursor` is the same on every page.
    pub fn page_url(&self, account: &AccountSettings, cursor: Option<&str>) -> Url {
        let mut url = self.users_url.clone();
        {
            let mut q = url.query_pairs_mut();
            q.append_pair(
                "integrated_account_id",
                &account.integrated_account_id.to_string(),
            );
            q.append_pair("limit", &self.page_size.to_string());
            if account.ignore_remote_data {
                q.append_pair("truto_ignore_remote_data", "true");
            }
            for f in &account.exclude_fields {
                q.append_pair("truto_exclude_fields[]", f);
            }
            for (k, v) in &account.remote_query {
                q.append_pair(&format!("remote_query[{k}]"), v);
            }
            if let Some(c) = cursor {
                q.append_pair("next_cursor", c);
            }
        }
        url
    }

    /// Fetches one page (undecoded: see [`FetchedPage::decode`]), retrying retryable failures
    /// with backoff. Waiting between attempts ends early with `Cancelled` when `cancel` fires.
    pub async fn fetch_page(
        &self,
        account: &AccountSettings,
        cursor: Option<&str>,
        cancel: &CancellationToken,
    ) -> Result<FetchedPage, Failed> {
        let url = self.page_url(account, cursor);
        let done = self
            .with_retries(account, "page", cancel, || async {
                let (body, headers) = self.get(&url).await?;
                let page = parse_envelope(body, &headers)?;
                let remaining = page.rate_remaining;
                Ok((page, remaining))
            })
            .await?;
        let mut page = done.value;
        page.requests = done.requests;
        page.rate_limited = done.rate_limited;
        page.budget_wait = done.budget_wait;
        Ok(page)
    }

    /// The URL of one user's full object: `.../unified/lms/users/{id}` with the account's
    /// Truto parameters (the vendor's `remote_query` is for listings and is not sent).
    pub fn user_url(&self, account: &AccountSettings, id: &str) -> Url {
        let mut url = self.users_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.push(id);
        }
        {
            let mut q = url.query_pairs_mut();
            q.append_pair(
                "integrated_account_id",
                &account.integrated_account_id.to_string(),
            );
            if account.ignore_remote_data {
                q.append_pair("truto_ignore_remote_data", "true");
            }
            for f in &account.exclude_fields {
                q.append_pair("truto_exclude_fields[]", f);
            }
        }
        url
    }

    /// Fetches one user's full object (`GET /unified/lms/users/{id}`), with the same retries
    /// and request budget as pages. Returns the record's JSON text and the requests it took.
    pub async fn fetch_user(
        &self,
        account: &AccountSettings,
        id: &str,
        cancel: &CancellationToken,
    ) -> Result<(String, u32), Failed> {
        let url = self.user_url(account, id);
        let done = self
            .with_retries(account, "user", cancel, || async {
                let (body, headers) = self.get(&url).await?;
                Ok((user_body(&body, &headers)?, None))
            })
            .await?;
        Ok((done.value, done.requests))
    }

    /// One request with the budget, metrics, 429 pauses and retries around it. `once` makes
    /// the request and also returns the vendor's `ratelimit-remaining` when it gave one.
    async fn with_retries<T, F, Fut>(
        &self,
        account: &AccountSettings,
        what: &'static str,
        cancel: &CancellationToken,
        mut once: F,
    ) -> Result<Attempted<T>, Failed>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(T, Option<(u64, Duration)>), SourceError>>,
    {
        let id = account.integrated_account_id;
        let label = id.to_string();
        let mut attempts = 0u32;
        let mut rate_limited = 0u32;
        let mut waited = Duration::ZERO;
        let mut budget_wait = Duration::ZERO;
        loop {
            attempts += 1;
            let mut slot = None;
            if let Some(budget) = &self.budget {
                let (taken, w) = tokio::select! {
                    w = budget.acquire(id) => w,
                    // (This attempt's request was never sent.)
                    _ = cancel.cancelled() => return Err(Failed::new(SourceError::Cancelled, attempts - 1)),
                };
                slot = Some(taken);
                budget_wait += w;
                if let Some(m) = &self.metrics {
                    m.add(
                        "lms_sync_rate_budget_wait_seconds_total",
                        &[("account", &label)],
                        w.as_secs_f64(),
                    );
                }
            }
            let result = tokio::select! {
                r = once() => r,
                _ = cancel.cancelled() => return Err(Failed::new(SourceError::Cancelled, attempts)),
            };
            if let (Some(budget), Some(taken)) = (&self.budget, slot) {
                budget.settle(id, taken, Instant::now());
            }
            if let Some(m) = &self.metrics {
                let status = match &result {
                    Ok(_) => "200".to_string(),
                    Err(SourceError::Status { status, .. }) => status.to_string(),
                    Err(e) => e.kind().as_str().to_string(),
                };
                m.inc("lms_sync_http_requests_total", &[("status", &status)]);
            }
            let err = match result {
                Ok((value, remaining)) => {
                    if let (Some(budget), Some((remaining, reset))) = (&self.budget, remaining) {
                        budget.observe_remaining(id, remaining, reset, Instant::now());
                    }
                    return Ok(Attempted {
                        value,
                        requests: attempts,
                        rate_limited,
                        budget_wait,
                    });
                }
                Err(e) => e,
            };
            if err.status() == Some(429) {
                rate_limited += 1;
                if let Some(m) = &self.metrics {
                    m.inc("lms_sync_rate_limited_total", &[("account", &label)]);
                }
                if let (Some(budget), Some(hint)) = (&self.budget, err.retry_hint()) {
                    budget.pause(id, hint, Instant::now());
                }
            }
            if !err.is_retryable() {
                return Err(Failed::new(err, attempts));
            }
            let Some(wait) =
                self.backoff
                    .next_wait(attempts, waited, err.retry_hint(), fastrand::f64())
            else {
                return Err(Failed::new(
                    SourceError::Exhausted {
                        attempts,
                        last: Box::new(err),
                    },
                    attempts,
                ));
            };
            if let Some(m) = &self.metrics {
                m.inc("lms_sync_retries_total", &[("account", &label)]);
            }
            tracing::warn!(
                account = %account.integrated_account_id,
                attempt = attempts,
                wait_ms = wait.as_millis() as u64,
                error = %err,
                "retrying {what} request"
            );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = cancel.cancelled() => return Err(Failed::new(SourceError::Cancelled, attempts)),
            }
            waited += wait;
        }
    }

    /// One GET: the body of a 2xx answer, or the error an other answer means.
    async fn get(&self, url: &Url) -> Result<(bytes::Bytes, HeaderMap), SourceError> {
        let resp = self
            .http
            .get(url.clone())
            .header(AUTHORIZATION, self.auth.clone())
            .send()
            .await
            .map_err(classify)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(classify);
        if !status.is_success() {
            let body = body.unwrap_or_default();
            return Err(status_error(status, &headers, &body));
        }
        Ok((body?, headers))
    }
}

/// A request that failed for good, and the HTTP requests it took (retries included).
#[derive(Debug)]
pub struct Failed {
    pub error: SourceError,
    pub requests: u32,
}

impl Failed {
    fn new(error: SourceError, requests: u32) -> Failed {
        Failed { error, requests }
    }
}

/// A request's result and what it cost.
struct Attempted<T> {
    value: T,
    requests: u32,
    rate_limited: u32,
    budget_wait: Duration,
}

/// The single-user GET's body: the user object itself (or, tolerated, wrapped in `result`).
fn user_body(body: &[u8], headers: &HeaderMap) -> Result<String, SourceError> {
    #[derive(Deserialize)]
    struct Probe<'a> {
        #[serde(borrow, default)]
        id: Option<&'a RawValue>,
        #[serde(borrow, default)]
        result: Option<&'a RawValue>,
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| SourceError::InvalidPage("user body is not UTF-8".into()))?;
    let probe: Probe = serde_json::from_str(text).map_err(|e| invalid_body(body, headers, &e))?;
    match (probe.id, probe.result) {
        (None, Some(r)) if r.get().trim_start().starts_with('{') => Ok(r.get().to_string()),
        _ => Ok(text.to_string()),
    }
}

impl FetchedPage {
    /// Decodes the records (once; later calls do nothing).
    pub fn decode(&mut self) {
        self.read_records(decode_records);
    }

    /// Reads only the records' ids and hashes (once; see [`crate::model::scan_records`]): for
    /// pages whose users are expected to be mostly unchanged.
    pub fn scan(&mut self) {
        self.read_records(crate::model::scan_records);
    }

    fn read_records(&mut self, read: fn(&[&str]) -> DecodedPage) {
        let Some(body) = self.body.take() else { return };
        let spans = std::mem::take(&mut self.spans);
        // The envelope was checked, and the records found, when the page arrived: no need to
        // read it again. (The body is UTF-8 then: serde_json refuses anything else.)
        if let Ok(text) = std::str::from_utf8(&body) {
            let records: Option<Vec<&str>> = spans.iter().map(|r| text.get(r.clone())).collect();
            if let Some(records) = records.filter(|r| r.len() == self.records) {
                self.decoded = read(&records);
                return;
            }
        }
        // The envelope was checked when the page arrived; this cannot fail.
        if let Ok(env) = serde_json::from_slice::<Envelope>(&body) {
            if let Some(result) = env.result {
                if let Ok(records) = serde_json::from_str::<Vec<&RawValue>>(result.get()) {
                    let records: Vec<&str> = records.iter().map(|r| r.get()).collect();
                    self.decoded = read(&records);
                }
            }
        }
    }
}

fn classify(e: reqwest::Error) -> SourceError {
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

fn status_error(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> SourceError {
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

/// Parses the envelope `{"result": [...], "next_cursor": ..., "is_partial_response": ...}`.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(borrow, default)]
    next_cursor: Option<&'a RawValue>,
    // Raw, like the rest: serde_json skips raw values without its recursion limit, so no
    // nesting, however deep, can fail the page as a whole.
    #[serde(borrow, default)]
    is_partial_response: Option<&'a RawValue>,
}

/// [`Envelope`] with `result` read as an array of raw records, in the same pass.
#[derive(Deserialize)]
struct ListEnvelope<'a> {
    #[serde(borrow, default)]
    result: Option<Vec<&'a RawValue>>,
    #[serde(borrow, default)]
    next_cursor: Option<&'a RawValue>,
    #[serde(borrow, default)]
    is_partial_response: Option<&'a RawValue>,
}

/// Parses and decodes a whole page.
pub fn parse_page(body: &[u8], headers: &HeaderMap) -> Result<FetchedPage, SourceError> {
    let mut page = parse_envelope(bytes::Bytes::copy_from_slice(body), headers)?;
    page.decode();
    Ok(page)
}

/// Checks the envelope `{"result": [...], "next_cursor": ..., "is_partial_response": ...}` and
/// reads the cursor; the records stay undecoded in the page until [`FetchedPage::decode`].
fn parse_envelope(body: bytes::Bytes, headers: &HeaderMap) -> Result<FetchedPage, SourceError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        // (serde would read a struct out of an array, and blame the wrong thing.)
        return Err(invalid_body(&body, headers, &"no object"));
    }
    // One pass in the usual case; a second, field by field, to say what is wrong otherwise.
    let envelope = match serde_json::from_slice::<ListEnvelope>(&body) {
        Ok(e) => e,
        Err(_) => {
            let envelope: Envelope =
                serde_json::from_slice(&body).map_err(|e| invalid_body(&body, headers, &e))?;
            let result = envelope
                .result
                .ok_or_else(|| SourceError::InvalidPage("no `result` array".into()))?;
            ListEnvelope {
                result: Some(
                    serde_json::from_str(result.get())
                        .map_err(|_| SourceError::InvalidPage("`result` is not an array".into()))?,
                ),
                next_cursor: envelope.next_cursor,
                is_partial_response: envelope.is_partial_response,
            }
        }
    };
    let records = envelope
        .result
        .ok_or_else(|| SourceError::InvalidPage("no `result` array".into()))?;
    let cursor = envelope.next_cursor.map(|c| c.get());
    let partial = envelope.is_partial_response.map(|v| v.get().trim()) == Some("true");
    let mut page = finish_page(records.len(), cursor, partial, headers)?;
    let base = body.as_ptr() as usize;
    page.spans = records
        .iter()
        .map(|r| {
            let start = r.get().as_ptr() as usize - base;
            start..start + r.get().len()
        })
        .collect();
    drop(records);
    page.body = Some(body.clone());
    Ok(page)
}

fn invalid_body(body: &[u8], headers: &HeaderMap, e: &dyn std::fmt::Display) -> SourceError {
    let ctype = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    let start = shorten(&String::from_utf8_lossy(&body[..body.len().min(80)]), 80);
    SourceError::InvalidPage(format!(
        "body is not a JSON object ({e}; content-type {ctype}; starts with {start:?})"
    ))
}

/// Interprets the cursor and decodes the records.
fn finish_page(
    records: usize,
    cursor: Option<&str>,
    is_partial: bool,
    headers: &HeaderMap,
) -> Result<FetchedPage, SourceError> {
    let next_cursor = match cursor.map(str::trim) {
        None | Some("null") => None,
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::String(s)) if !s.is_empty() => Some(s),
            Ok(serde_json::Value::String(_)) => {
                return Err(SourceError::InvalidPage(
                    "`next_cursor` is an empty string".into(),
                ))
            }
            Ok(serde_json::Value::Number(n)) => Some(n.to_string()),
            _ => {
                return Err(SourceError::InvalidPage(format!(
                    "`next_cursor` is not a string: {}",
                    shorten(text, 60)
                )))
            }
        },
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let rate_remaining = match (header("ratelimit-remaining"), header("ratelimit-reset")) {
        (Some(rem), Some(reset)) => rem
            .trim()
            .parse::<u64>()
            .ok()
            .zip(parse_reset_seconds(reset)),
        _ => None,
    };
    Ok(FetchedPage {
        decoded: DecodedPage::default(),
        body: None,
        spans: Vec::new(),
        records,
        next_cursor,
        is_partial,
        requests: 1,
        rate_limited: 0,
        rate_remaining,
        budget_wait: Duration::ZERO,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<FetchedPage, SourceError> {
        parse_page(body.as_bytes(), &HeaderMap::new())
    }

    #[test]
    fn records_are_read_where_the_envelope_found_them_whatever_surrounds_them() {
        // Spaces between records, escapes in them, and a key serde skips without checking
        // its bytes (not UTF-8): every record is still decoded, each exactly as sent.
        let mut body = br#"{"x":"#.to_vec();
        body.extend_from_slice(b"\"\xff\"");
        body.extend_from_slice(
            br#", "result": [ {"id":"1","name":"a\"b"} ,
               {"id":"2"}, {"nope":1} ], "next_cursor":"c"}"#,
        );
        let p = parse_page(&body, &HeaderMap::new()).unwrap();
        assert_eq!(p.records, 3);
        let ids: Vec<&str> = p.decoded.users.iter().map(|u| u.id.as_str()).collect();
        assert_eq!(ids, ["1", "2"]);
        assert_eq!(p.decoded.users[0].name.as_deref(), Some("a\"b"));
        assert_eq!(
            p.decoded.users[0].listed_hash,
            crate::model::listed_hash(r#"{"id":"1","name":"a\"b"}"#)
        );
        assert_eq!(p.decoded.rejected.len(), 1);
    }

    #[test]
    fn an_envelope_with_unknown_keys_parses() {
        let p = parse(r#"{"result":[{"id":"1"},{"nope":1}],"next_cursor":"abc","result_count":2,"prev_cursor":null}"#).unwrap();
        assert_eq!(p.records, 2);
        assert_eq!(p.decoded.users.len(), 1);
        assert_eq!(p.decoded.rejected.len(), 1);
        assert_eq!(p.next_cursor.as_deref(), Some("abc"));
        assert!(!p.is_partial);
    }

    #[test]
    fn a_null_or_absent_cursor_ends_the_listing() {
        assert!(parse(r#"{"result":[],"next_cursor":null}"#)
            .unwrap()
            .next_cursor
            .is_none());
        assert!(parse(r#"{"result":[]}"#).unwrap().next_cursor.is_none());
    }

    #[test]
    fn deep_nesting_never_fails_a_page_and_a_record_too_deep_for_postgres_is_refused_alone() {
        let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
        let body = format!(
            r#"{{"result":[{{"id":"1","name":"a \"quoted\" ]}} name"}},{{"id":"2","custom_fields":{{"x":{deep}}}}},{{"id":"3"}}],"next_cursor":"c2","is_partial_response":false}}"#
        );
        let p = parse(&body).unwrap();
        assert_eq!(p.records, 3);
        assert_eq!(p.decoded.users.len(), 3, "300 levels are stored");
        assert_eq!(
            p.decoded.users[0].name.as_deref(),
            Some("a \"quoted\" ]} name")
        );
        let deeper = body.replace(&deep, &format!("{}1{}", "[".repeat(700), "]".repeat(700)));
        let p = parse(&deeper).unwrap();
        assert_eq!(p.decoded.users.len(), 2);
        assert_eq!(p.decoded.rejected.len(), 1);
        assert_eq!(p.decoded.rejected[0].user_id.as_deref(), Some("2"));
        assert!(
            p.decoded.rejected[0].reason.contains("levels deep"),
            "{}",
            p.decoded.rejected[0].reason
        );
        assert_eq!(p.next_cursor.as_deref(), Some("c2"));
        assert!(!p.is_partial);
        let partial = format!(r#"{{"result":[],"is_partial_response":{deep}}}"#);
        assert!(!parse(&partial).unwrap().is_partial);
        // Broken structure is still an invalid page.
        let broken = format!(r#"{{"result":[{{"id":"1","x":{deep}"#);
        assert!(matches!(parse(&broken), Err(SourceError::InvalidPage(_))));
    }

    #[test]
    fn partial_responses_are_flagged() {
        assert!(
            parse(r#"{"result":[],"is_partial_response":true}"#)
                .unwrap()
                .is_partial
        );
    }

    #[test]
    fn malformed_pages_are_retryable_errors() {
        for body in [
            "<html>502 Bad Gateway</html>",
            r#"{"result":{"id":"1"}}"#,
            r#"{"items":[]}"#,
            r#"{"result":[],"next_cursor":{"a":1}}"#,
            r#"{"result":[],"next_cursor":""}"#,
            r#"{"result":[{"id":"1"}"#,
        ] {
            let e = parse(body).unwrap_err();
            assert!(matches!(e, SourceError::InvalidPage(_)), "{body}: {e}");
            assert!(e.is_retryable());
        }
    }

    #[test]
    fn the_client_never_shows_its_token() {
        let token = SecretString::from("tok-DEBUGSECRET".to_string());
        let client =
            TrutoClient::new(&crate::config::TrutoSettings::default(), &token).expect("client");
        let shown = format!("{client:?} {:?}", client.auth);
        assert!(!shown.contains("DEBUGSECRET"), "{shown}");
        assert!(!format!("{token:?}").contains("DEBUGSECRET"));
    }

    #[test]
    fn status_errors_say_what_to_do_and_whether_to_retry() {
        let e = status_error(
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
            br#"{"statusCode":401,"message":"Invalid credentials","truto_is_remote_error":true}"#,
        );
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("re-authorize"), "{e}");
        assert_eq!(e.kind(), ErrorKind::NeedsReauth);
        let e = status_error(StatusCode::SERVICE_UNAVAILABLE, &HeaderMap::new(), b"");
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("blocked"), "{e}");
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        let e = status_error(StatusCode::TOO_MANY_REQUESTS, &h, b"{}");
        assert!(e.is_retryable());
        assert_eq!(e.retry_hint(), Some(Duration::from_secs(7)));
        for s in [500u16, 502, 504] {
            let e = status_error(StatusCode::from_u16(s).unwrap(), &HeaderMap::new(), b"");
            assert!(e.is_retryable(), "{s}");
        }
        for s in [400u16, 403, 404, 409, 422] {
            let e = status_error(StatusCode::from_u16(s).unwrap(), &HeaderMap::new(), b"");
            assert!(!e.is_retryable(), "{s}");
        }
    }
}
