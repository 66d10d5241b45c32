//! A page's envelope: `{"result": [...], "next_cursor": ..., "is_partial_response": ...}`,
//! checked when the page arrives (records located, not decoded), and the records decoded or
//! scanned later, on a thread of their own.

use std::time::Duration;

use reqwest::header::{HeaderMap, CONTENT_TYPE};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::budget::RateReport;
use super::SourceError;
use crate::model::{decode_records, DecodedPage};
use crate::text::shorten;

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
    /// The answer's `ratelimit-limit`, `-remaining` and `-reset`, when the vendor gave any.
    pub rate_report: Option<RateReport>,
    /// Time spent waiting for the request budget.
    pub budget_wait: Duration,
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

    /// Splits a page of more than `max` records into pages of at most `max`, in order, sharing
    /// the body. A page far larger than asked for (a server ignoring `limit`: 50 MB of three
    /// million tiny records took 3.7 GiB decoded at once) is then decoded and written a part
    /// at a time, its memory bounded like any page's. Only the last part keeps the next cursor
    /// (the caller says the others are not the listing's end); the first keeps what the request
    /// cost. A page already decoded, or of `max` records or fewer, stays whole.
    pub fn into_parts(mut self, max: usize) -> Vec<FetchedPage> {
        let max = max.max(1);
        if self.records <= max || self.spans.len() != self.records {
            return vec![self];
        }
        let Some(body) = self.body.take() else {
            return vec![self];
        };
        let spans = std::mem::take(&mut self.spans);
        let parts = spans.len().div_ceil(max);
        spans
            .chunks(max)
            .enumerate()
            .map(|(i, spans)| {
                let (first, last) = (i == 0, i + 1 == parts);
                FetchedPage {
                    decoded: DecodedPage::default(),
                    body: Some(body.clone()),
                    spans: spans.to_vec(),
                    records: spans.len(),
                    next_cursor: if last { self.next_cursor.clone() } else { None },
                    is_partial: self.is_partial,
                    requests: if first { self.requests } else { 0 },
                    rate_limited: if first { self.rate_limited } else { 0 },
                    rate_report: if first { self.rate_report } else { None },
                    budget_wait: if first {
                        self.budget_wait
                    } else {
                        Duration::ZERO
                    },
                }
            })
            .collect()
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
pub(super) fn parse_envelope(
    body: bytes::Bytes,
    headers: &HeaderMap,
) -> Result<FetchedPage, SourceError> {
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

pub(super) fn invalid_body(
    body: &[u8],
    headers: &HeaderMap,
    e: &dyn std::fmt::Display,
) -> SourceError {
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
    let rate_report = RateReport::parse(
        header("ratelimit-limit"),
        header("ratelimit-remaining"),
        header("ratelimit-reset"),
    );
    Ok(FetchedPage {
        decoded: DecodedPage::default(),
        body: None,
        spans: Vec::new(),
        records,
        next_cursor,
        is_partial,
        requests: 1,
        rate_limited: 0,
        rate_report,
        budget_wait: Duration::ZERO,
    })
}
