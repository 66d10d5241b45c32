//! The Truto client: the only part that speaks HTTP to Truto. It fetches one page of an
//! account's user listing (or one user), paced by the request budget (`budget`), retrying what
//! is retryable (`retry`, `error`), and hands the page over with its envelope checked
//! (`envelope`), and remembers whether Truto refuses the API token itself or does not answer at
//! all (`standing`). It knows
//! nothing of the database and never logs the token (the header is marked sensitive; errors
//! carry no headers).

mod accounts;
pub mod budget;
mod envelope;
mod error;
mod proxy;
mod retry;
mod standing;

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use reqwest::Url;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::config::{AccountSettings, TrutoSettings};
use crate::metrics::Metrics;
pub use accounts::{read_account, IntegratedAccount, Listed};
use budget::RateBudget;
use envelope::{invalid_body, parse_envelope};
pub use envelope::{parse_page, FetchedPage};
use error::{classify, status_error};
pub use error::{Failed, SourceError};
pub use standing::{Halt, OtherEnvironment, Standing, Unreachable};

/// The users endpoint, relative to the base URL.
pub const USERS_PATH: &str = "unified/lms/users";
/// The integrated accounts endpoint, relative to the base URL.
pub const ACCOUNTS_PATH: &str = "integrated-account";

/// The `Authorization` header for `token`, marked sensitive (never shown by `Debug`).
fn bearer(token: &SecretString) -> anyhow::Result<HeaderValue> {
    let mut auth =
        HeaderValue::from_str(&format!("Bearer {}", token.expose_secret())).map_err(|_| {
            anyhow::anyhow!("the Truto API token contains characters not allowed in an HTTP header")
        })?;
    auth.set_sensitive(true);
    Ok(auth)
}

/// Talks to Truto for every account (one token serves them all).
#[derive(Clone)]
pub struct TrutoClient {
    http: reqwest::Client,
    users_url: Url,
    /// `{base}/integrated-account`, Truto's list of integrated accounts.
    accounts_url: Url,
    /// `Bearer <token>`, marked sensitive; shared by the clones and replaced by
    /// [`TrutoClient::set_token`] when the token is rotated.
    auth: Arc<std::sync::RwLock<HeaderValue>>,
    page_size: u32,
    /// The largest answer read (`truto.max_body_mb`), in bytes.
    max_body: usize,
    backoff: Backoff,
    budget: Option<Arc<RateBudget>>,
    metrics: Option<Arc<Metrics>>,
    /// Whether Truto refuses the token or does not answer now (see `standing`); shared by the
    /// clones.
    standing: Arc<tokio::sync::watch::Sender<Standing>>,
    /// The proxy the environment sends requests to Truto through (see `proxy`), for errors.
    proxy: Option<Arc<str>>,
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
        let proxy = proxy::proxy_for(&base).map(Arc::from);
        let users_url = base.join(USERS_PATH)?;
        let accounts_url = base.join(ACCOUNTS_PATH)?;
        let auth = Arc::new(std::sync::RwLock::new(bearer(token)?));
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout())
            .connect_timeout(settings.connect_timeout())
            .user_agent(concat!("lms-sync/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            http,
            users_url,
            accounts_url,
            auth,
            page_size: settings.page_size,
            max_body: usize::try_from(settings.max_body_mb.saturating_mul(1 << 20))
                .unwrap_or(usize::MAX),
            backoff: Backoff {
                initial: Duration::from_millis(settings.backoff_initial_ms),
                max: Duration::from_secs(settings.backoff_max_secs),
                max_attempts: settings.max_attempts,
                max_total_wait: Duration::from_secs(settings.max_retry_wait_secs),
            },
            budget: None,
            metrics: None,
            standing: Arc::new(tokio::sync::watch::Sender::new(Standing::default())),
            proxy,
        })
    }

    /// The proxy requests to Truto go through (`scheme://host:port`, no credentials), when the
    /// environment sets one for Truto's URL.
    pub fn proxy(&self) -> Option<&str> {
        self.proxy.as_deref()
    }

    /// A request that failed before an answer, with what the operator's network has to do
    /// with it: a connection that failed through a proxy is the proxy's or beyond it (named, so
    /// that it does not read as Truto refusing connections), and a certificate refused is
    /// most often a TLS-inspecting proxy's.
    fn request_error(&self, e: reqwest::Error) -> SourceError {
        let refused = crate::text::refused_certificate(&e).is_some();
        match classify(e) {
            SourceError::Connect(chain) => {
                let via = self
                    .proxy
                    .as_ref()
                    .map(|p| format!("through the proxy {p} (from {}): ", proxy::PROXY_SOURCE))
                    .unwrap_or_default();
                let advice = if refused {
                    " (the certificate that answered is not signed by a CA in this host's store: behind a TLS-inspecting proxy, add the proxy's CA to the store (the image's /etc/ssl/certs) or point SSL_CERT_FILE at a bundle that holds it)"
                } else {
                    ""
                };
                SourceError::Connect(format!("{via}{chain}{advice}"))
            }
            e => e,
        }
    }

    /// The client every command uses: the settings' timeouts and retries, paced by the
    /// configured request budget (when enabled).
    pub fn from_settings(
        settings: &crate::config::Settings,
        token: &SecretString,
    ) -> anyhow::Result<Self> {
        let client = Self::new(&settings.truto, token)?;
        if let Some(p) = client.proxy() {
            tracing::info!(
                "requests to Truto go through the proxy {p} (from {}; NO_PROXY lists the hosts reached directly)",
                proxy::PROXY_SOURCE
            );
        }
        Ok(match RateBudget::from_settings(&settings.rate_budget) {
            Some(b) => client.with_budget(Arc::new(b)),
            None => client,
        })
    }

    /// Sends `token` from the next request on, in every clone of this client (a rotated
    /// token, read again on SIGHUP). True when it differs from the one in use.
    pub fn set_token(&self, token: &SecretString) -> anyhow::Result<bool> {
        let new = bearer(token)?;
        let mut auth = self.auth.write().unwrap_or_else(|e| e.into_inner());
        let changed = auth.as_bytes() != new.as_bytes();
        *auth = new;
        drop(auth);
        if changed {
            self.token_replaced();
        }
        Ok(changed)
    }

    /// The request budget this client paces under, if any.
    pub fn budget(&self) -> Option<Arc<RateBudget>> {
        self.budget.clone()
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
            .with_retries(account.integrated_account_id, "page", cancel, || async {
                let (body, headers) = self.get(&url).await?;
                let page = parse_envelope(body, &headers)?;
                let reported = page.rate_report;
                Ok((page, reported))
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
            .with_retries(account.integrated_account_id, "user", cancel, || async {
                let (body, headers) = self.get(&url).await?;
                Ok((user_body(&body, &headers)?, None))
            })
            .await?;
        Ok((done.value, done.requests))
    }

    fn auth_header(&self) -> HeaderValue {
        self.auth.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// One GET: the body of a 2xx answer, or the error an other answer means.
    async fn get(&self, url: &Url) -> Result<(bytes::Bytes, HeaderMap), SourceError> {
        let resp = self
            .http
            .get(url.clone())
            .header(AUTHORIZATION, self.auth_header())
            .send()
            .await
            .map_err(|e| self.request_error(e))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        if !status.is_success() {
            // Only its message is read, and shortened: a little of it is enough.
            let body = read_at_most(resp, ERROR_BODY_BYTES)
                .await
                .ok()
                .flatten()
                .unwrap_or_default();
            return Err(status_error(status, &headers, &body));
        }
        let body = read_at_most(resp, self.max_body)
            .await?
            .ok_or(SourceError::TooLarge {
                limit_mb: (self.max_body >> 20) as u64,
            })?;
        Ok((body, headers))
    }
}

/// How much of an error answer's body is read.
const ERROR_BODY_BYTES: usize = 64 * 1024;

/// The body, or `None` as soon as it is known to be longer than `limit` (from its
/// Content-Length, or while it streams): a server that sends without end fails one request
/// instead of filling the memory every account shares.
async fn read_at_most(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Option<bytes::Bytes>, SourceError> {
    let declared = resp
        .content_length()
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    if declared.is_some_and(|n| n > limit) {
        return Ok(None);
    }
    let mut body = bytes::BytesMut::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = resp.chunk().await.map_err(classify)? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        if body.is_empty() && declared == Some(chunk.len()) {
            // The whole body in one chunk: no copy.
            return Ok(Some(chunk));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
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

#[cfg(test)]
mod tests {
    use reqwest::header::RETRY_AFTER;
    use reqwest::StatusCode;

    use super::*;
    use crate::domain::ErrorKind;
    use std::time::Instant;
    use uuid::Uuid;

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
        let shown = format!("{client:?} {:?}", client.auth_header());
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

    #[tokio::test]
    async fn a_request_the_server_holds_back_too_long_is_never_sent_and_says_whose() {
        // Nothing listens on the discard port: a request sent would fail to connect instead.
        let settings = crate::config::TrutoSettings {
            base_url: "http://127.0.0.1:9".into(),
            ..Default::default()
        };
        let token = SecretString::from("t".to_string());
        let budget = Arc::new(RateBudget::new(
            budget::Limit {
                requests: 50,
                window: Duration::from_secs(10),
            },
            budget::Limit {
                requests: 500,
                window: Duration::from_secs(10),
            },
        ));
        let client = TrutoClient::new(&settings, &token)
            .unwrap()
            .with_budget(budget.clone());
        let day = Duration::from_secs(86_400);
        let (account, cancel) = (
            AccountSettings::new(Uuid::from_u128(7)),
            CancellationToken::new(),
        );
        budget.pause(account.integrated_account_id, day, Instant::now());
        budget.pause(Uuid::nil(), day, Instant::now());

        let f = client
            .fetch_page(&account, None, &cancel)
            .await
            .unwrap_err();
        assert_eq!(f.requests, 0);
        assert_eq!(f.error.kind(), ErrorKind::RateLimited);
        assert!(!f.error.is_retryable());
        let said = f.error.to_string();
        assert!(
            said.contains("holds this account's requests back for another 86"),
            "{said}"
        );
        assert!(said.contains("truto.max_retry_wait_secs"), "{said}");

        let f = client
            .list_integrated_accounts("talentlms", &cancel)
            .await
            .unwrap_err();
        assert_eq!(f.requests, 0);
        let said = f.error.to_string();
        assert!(
            said.contains("holds the account listing's requests back"),
            "{said}"
        );
    }

    #[test]
    fn a_page_larger_than_a_part_splits_in_order_with_the_cursor_on_its_last_part() {
        let records: Vec<String> = (1..=25).map(|i| format!(r#"{{"id":"{i}"}}"#)).collect();
        let body = format!(
            r#"{{"result":[{}],"next_cursor":"c2"}}"#,
            records.join(", ")
        );
        let mut page =
            envelope::parse_envelope(bytes::Bytes::from(body), &HeaderMap::new()).unwrap();
        page.requests = 3;
        let parts = page.into_parts(10);
        let sizes: Vec<usize> = parts.iter().map(|p| p.records).collect();
        assert_eq!(sizes, [10, 10, 5]);
        let cursors: Vec<Option<&str>> = parts.iter().map(|p| p.next_cursor.as_deref()).collect();
        assert_eq!(cursors, [None, None, Some("c2")]);
        let requests: Vec<u32> = parts.iter().map(|p| p.requests).collect();
        assert_eq!(requests, [3, 0, 0], "the request counts once");
        let mut ids = Vec::new();
        for mut part in parts {
            part.decode();
            ids.extend(part.decoded.users.iter().map(|u| u.id.clone()));
        }
        let want: Vec<String> = (1..=25).map(|i| i.to_string()).collect();
        assert_eq!(ids, want);

        // A page of no more than a part stays whole.
        let body = r#"{"result":[{"id":"1"}],"next_cursor":null}"#;
        let page = envelope::parse_envelope(bytes::Bytes::from(body), &HeaderMap::new()).unwrap();
        assert_eq!(page.into_parts(1).len(), 1);
    }
}
