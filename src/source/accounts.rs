//! Truto's list of integrated accounts (`GET /integrated-account`), for discovery: every page of
//! one integration's accounts, paced under the token's budget like any request.

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::envelope::invalid_body;
use super::{Failed, SourceError, TrutoClient};
use crate::text::shorten;

/// The request budget's per-account window for account listings: no integrated account has the
/// nil id, so listings count against the token's window and a window of their own.
pub(super) const LISTING_BUDGET_KEY: Uuid = Uuid::nil();

/// Pages of the listing at the most (a longer one is a loop).
const MAX_LISTING_PAGES: u32 = 10_000;

/// One integrated account as Truto lists it (the fields discovery uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegratedAccount {
    pub id: Uuid,
    pub tenant_id: Option<String>,
    /// `active`, `connecting`, `post_install_error`, `validation_error`, `needs_reauth`, or a
    /// value Truto adds later.
    pub status: Option<String>,
    pub is_sandbox: bool,
    /// `integration.name`.
    pub integration: Option<String>,
    /// The Truto environment the account belongs to (the token's).
    pub environment_id: Option<String>,
}

/// A whole listing of one integration's accounts.
#[derive(Debug, Default)]
pub struct Listed {
    pub accounts: Vec<IntegratedAccount>,
    /// Truto said a page is partial, or a record could not be read: the listing is not
    /// complete, so nothing may be retired on its account.
    pub incomplete: Option<String>,
    /// HTTP requests it took (retries included).
    pub requests: u32,
}

#[derive(Deserialize)]
struct Page<'a> {
    #[serde(borrow, default)]
    result: Option<Vec<&'a RawValue>>,
    /// One reference page calls the array `results`.
    #[serde(borrow, default)]
    results: Option<Vec<&'a RawValue>>,
    #[serde(default)]
    next_cursor: Option<serde_json::Value>,
    #[serde(default)]
    is_partial_response: Option<bool>,
}

#[derive(Deserialize)]
struct Wire {
    id: String,
    #[serde(default)]
    tenant_id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    is_sandbox: Option<bool>,
    #[serde(default)]
    integration: Option<WireIntegration>,
    #[serde(default)]
    environment_id: Option<String>,
}

#[derive(Deserialize)]
struct WireIntegration {
    #[serde(default)]
    name: Option<String>,
}

impl Wire {
    fn account(self) -> Result<IntegratedAccount, String> {
        let id = Uuid::parse_str(&self.id)
            .map_err(|_| format!("id {:?} is not a uuid", shorten(&self.id, 60)))?;
        Ok(IntegratedAccount {
            id,
            tenant_id: self.tenant_id,
            status: self.status,
            is_sandbox: self.is_sandbox.unwrap_or(false),
            integration: self.integration.and_then(|i| i.name),
            environment_id: self.environment_id.filter(|e| !e.is_empty()),
        })
    }
}

/// Reads one integrated account (a listing's record, or a webhook's payload).
pub fn read_account(json: &str) -> Result<IntegratedAccount, String> {
    serde_json::from_str::<Wire>(json)
        .map_err(|e| e.to_string())?
        .account()
}

/// One page: its accounts, the records that could not be read, the next cursor, partial.
type ParsedPage = (Vec<IntegratedAccount>, Vec<String>, Option<String>, bool);

/// Reads one page of the listing.
fn parse_page(
    body: &[u8],
    headers: &reqwest::header::HeaderMap,
) -> Result<ParsedPage, SourceError> {
    let page: Page = serde_json::from_slice(body).map_err(|e| invalid_body(body, headers, &e))?;
    let records = page
        .result
        .or(page.results)
        .ok_or_else(|| SourceError::InvalidPage("no `result` array".into()))?;
    let mut accounts = Vec::with_capacity(records.len());
    let mut bad = Vec::new();
    for r in records {
        match read_account(r.get()) {
            Ok(a) => accounts.push(a),
            Err(e) => bad.push(format!("{e}: {}", shorten(r.get(), 80))),
        }
    }
    let next = match page.next_cursor {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.is_empty() => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    };
    Ok((accounts, bad, next, page.is_partial_response == Some(true)))
}

impl TrutoClient {
    /// One integrated account (`GET /integrated-account/{id}`), as it is now.
    pub async fn get_integrated_account(
        &self,
        id: Uuid,
        cancel: &CancellationToken,
    ) -> Result<IntegratedAccount, Failed> {
        let mut url = self.accounts_url.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.push(&id.to_string());
        }
        let done = self
            .with_retries(LISTING_BUDGET_KEY, "account", cancel, || async {
                let (body, _) = self.get(&url).await?;
                let text = std::str::from_utf8(&body)
                    .map_err(|_| SourceError::InvalidPage("account body is not UTF-8".into()))?;
                let account = read_account(text).map_err(SourceError::InvalidPage)?;
                Ok((account, None))
            })
            .await?;
        Ok(done.value)
    }

    /// Which Truto environment the API token lists the integrated accounts of, from one
    /// account of the listing (`limit=1`, under the token's budget), recorded for the halt
    /// against `follows`, the registry's (see [`TrutoClient::environment_listed`]). A listing
    /// that shows no account, or none that says its environment, ends a hold: it shows no
    /// other environment. At most `at_most` attempts when given.
    pub async fn check_environment(
        &self,
        follows: Option<&str>,
        at_most: Option<u32>,
        cancel: &CancellationToken,
    ) -> Result<(), Failed> {
        let generation = self.token_generation();
        let mut url = self.accounts_url.clone();
        url.query_pairs_mut().append_pair("limit", "1");
        let done = self
            .with_retries_at_most(
                LISTING_BUDGET_KEY,
                "environment check",
                at_most.unwrap_or(self.backoff.max_attempts),
                cancel,
                || async {
                    let (body, headers) = self.get(&url).await?;
                    Ok((parse_page(&body, &headers)?, None))
                },
            )
            .await?;
        let (accounts, ..) = done.value;
        let listed = accounts.first().and_then(|a| a.environment_id.as_deref());
        self.environment_listed(generation, listed, follows);
        Ok(())
    }

    /// Every page of the integrated accounts of `integration` (`integration.name=...`).
    pub async fn list_integrated_accounts(
        &self,
        integration: &str,
        cancel: &CancellationToken,
    ) -> Result<Listed, Failed> {
        let mut out = Listed::default();
        let mut cursor: Option<String> = None;
        let mut seen_cursors = std::collections::HashSet::new();
        for _ in 0..MAX_LISTING_PAGES {
            let mut url = self.accounts_url.clone();
            {
                let mut q = url.query_pairs_mut();
                q.append_pair("integration.name", integration);
                q.append_pair("limit", &self.page_size.to_string());
                if let Some(c) = &cursor {
                    q.append_pair("next_cursor", c);
                }
            }
            let done = self
                .with_retries(LISTING_BUDGET_KEY, "account listing", cancel, || async {
                    let (body, headers) = self.get(&url).await?;
                    Ok((parse_page(&body, &headers)?, None))
                })
                .await
                .map_err(|f| Failed::new(f.error, f.requests + out.requests))?;
            out.requests += done.requests;
            let (accounts, bad, next, partial) = done.value;
            out.accounts.extend(accounts);
            if let Some(b) = bad.first() {
                out.incomplete = Some(format!("{} records could not be read, e.g. {b}", bad.len()));
            }
            if partial {
                out.incomplete = Some("Truto marked a page of the listing as partial".into());
            }
            match next {
                None => return Ok(out),
                Some(n) if !seen_cursors.insert(n.clone()) => {
                    out.incomplete = Some("the listing repeated a cursor".into());
                    return Ok(out);
                }
                Some(n) => cursor = Some(n),
            }
        }
        out.incomplete = Some(format!("more than {MAX_LISTING_PAGES} pages"));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_reads_accounts_from_result_or_results_and_flags_what_it_cannot_read() {
        let h = reqwest::header::HeaderMap::new();
        let body = br#"{"result":[{"id":"7e570000-0000-4000-8000-000000000001","tenant_id":"acme","status":"active","is_sandbox":false,"integration":{"name":"talentlms","id":"x"},"created_at":"2024-09-01 10:00:00","extra":1},{"id":"not-a-uuid"}],"next_cursor":"c2","limit":2}"#;
        let (accounts, bad, next, partial) = parse_page(body, &h).unwrap();
        assert_eq!(accounts.len(), 1);
        assert_eq!(accounts[0].tenant_id.as_deref(), Some("acme"));
        assert_eq!(accounts[0].integration.as_deref(), Some("talentlms"));
        assert_eq!(bad.len(), 1);
        assert_eq!(next.as_deref(), Some("c2"));
        assert!(!partial);
        let body = br#"{"results":[],"next_cursor":null,"is_partial_response":true}"#;
        let (accounts, bad, next, partial) = parse_page(body, &h).unwrap();
        assert!(accounts.is_empty() && bad.is_empty() && next.is_none() && partial);
        assert!(parse_page(b"[]", &h).is_err());
    }
}
