//! `POST /webhooks/truto`: Truto's account events, so that a new customer is synced within
//! seconds instead of at the next discovery. Discovery stays the source of truth: a lost
//! webhook is caught by the next listing.
//!
//! Order of checks: the signature (HMAC-SHA256 of the raw body under the webhook secret,
//! compared in constant time) before anything is parsed — missing or wrong: 401, nothing
//! changes; bodies over 1 MiB never get here (413). Then: an event older (or newer) than
//! `webhooks.tolerance_secs`, or one whose id was processed before (ids kept in the database,
//! so every replica agrees), or of a type we do not act on: 200 and no effect.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{NaiveDateTime, Utc};
use hmac::{Hmac, Mac};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use super::ops::{text, Ops};
use crate::source::read_account;
use crate::store::Discovered;
use crate::text::shorten;

/// The signature header: `format=sha256,v=<hex>`.
const SIGNATURE: &str = "x-truto-signature";

#[derive(Deserialize)]
struct Delivery<'a> {
    id: String,
    event: String,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
    /// `"2024-09-10 12:00:00"` (UTC, no zone), or RFC 3339.
    #[serde(default)]
    created_at: Option<String>,
}

/// Whether `body` carries a valid signature in `headers` for `secret`.
pub fn signed(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let Some(value) = headers.get(SIGNATURE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut format_ok = false;
    let mut given: Option<Vec<u8>> = None;
    for part in value.split(',') {
        match part.trim().split_once('=') {
            Some(("format", f)) => format_ok = f == "sha256",
            Some(("v", hex)) => given = hex::decode(hex).ok(),
            _ => {}
        }
    }
    let (true, Some(given)) = (format_ok, given) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    // verify_slice compares in constant time.
    mac.verify_slice(&given).is_ok()
}

/// The instant of `created_at`, in either of Truto's forms.
fn created(at: &str) -> Option<chrono::DateTime<Utc>> {
    NaiveDateTime::parse_from_str(at, "%Y-%m-%d %H:%M:%S")
        .map(|t| t.and_utc())
        .ok()
        .or_else(|| {
            chrono::DateTime::parse_from_rfc3339(at)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        })
}

pub(super) async fn receive(State(ops): State<Ops>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = ops.webhook_secret.get() else {
        return text(
            StatusCode::NOT_FOUND,
            "the webhook receiver is off: set TRUTO_WEBHOOK_SECRET or webhooks.secret_file\n",
        );
    };
    if !signed(secret.expose_secret().as_bytes(), &headers, &body) {
        tracing::warn!("webhook refused: missing or wrong X-Truto-Signature");
        return text(StatusCode::UNAUTHORIZED, "invalid signature\n");
    }
    let Ok(delivery) = serde_json::from_slice::<Delivery>(&body) else {
        return text(StatusCode::BAD_REQUEST, "not a Truto webhook delivery\n");
    };
    let tolerance = ops.settings.borrow().webhooks.tolerance_secs as i64;
    let age = delivery
        .created_at
        .as_deref()
        .and_then(created)
        .map(|t| (Utc::now() - t).num_seconds().abs());
    if age.is_none_or(|a| a > tolerance) {
        tracing::info!(event = %shorten(&delivery.event, 60), "webhook ignored: outside the time tolerance (or no created_at)");
        return text(StatusCode::OK, "ignored: stale\n");
    }
    match ops
        .store
        .first_delivery(&delivery.id, &delivery.event)
        .await
    {
        Ok(true) => {}
        Ok(false) => return text(StatusCode::OK, "ignored: already processed\n"),
        // Truto retries a delivery that failed: let it.
        Err(e) => return text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
    match act(&ops, &delivery).await {
        Ok(what) => {
            tracing::info!(event = %shorten(&delivery.event, 60), what, "webhook processed");
            text(StatusCode::OK, format!("{what}\n"))
        }
        Err(e) => {
            tracing::warn!(event = %shorten(&delivery.event, 60), error = %e, "webhook could not be applied; the next discovery catches up");
            text(StatusCode::OK, "accepted; the next discovery applies it\n")
        }
    }
}

/// Applies an account event to the registry; says what it did.
async fn act(ops: &Ops, d: &Delivery<'_>) -> Result<&'static str, String> {
    let Some(kind) = d.event.strip_prefix("integrated_account:") else {
        return Ok("ignored: not an account event");
    };
    let discovery = ops.settings.borrow().discovery.clone();
    if !discovery.enabled {
        return Ok("ignored: discovery is off");
    }
    let payload = d.payload.map(|p| p.get()).unwrap_or("null");
    let mut account = read_account(payload).map_err(|e| format!("payload: {e}"))?;
    if kind == "updated" {
        // The payload may be stale by the time it arrives: read the account as it is now.
        account = ops
            .source
            .get_integrated_account(account.id, &CancellationToken::new())
            .await
            .map_err(|f| f.error.to_string())?;
    }
    let integration = account.integration.clone().unwrap_or_default();
    if !discovery.integrations.contains(&integration) {
        return Ok("ignored: another integration");
    }
    let row = Discovered {
        id: account.id,
        tenant_id: account.tenant_id.clone(),
        status: account.status.clone(),
        integration: account.integration.clone(),
        is_sandbox: account.is_sandbox,
    };
    let store = &ops.store;
    let done = match kind {
        "created" | "active" | "reactivated" | "updated" => {
            let mut row = row;
            if kind != "created" && kind != "updated" {
                row.status = Some("active".into());
            }
            let wanted = row.status.as_deref() == Some("active");
            store
                .account_event(&row, wanted)
                .await
                .map_err(|e| e.to_string())?;
            if wanted {
                "registered; syncing now"
            } else {
                "registered"
            }
        }
        "deleted" => {
            store.retire(row.id).await.map_err(|e| e.to_string())?;
            "retired"
        }
        "authentication_error" | "post_install_error" | "validation_error" => {
            let mut row = row;
            row.status = Some(
                match kind {
                    "authentication_error" => "needs_reauth",
                    other => other,
                }
                .into(),
            );
            store
                .account_event(&row, false)
                .await
                .map_err(|e| e.to_string())?;
            "gated"
        }
        _ => return Ok("ignored: an account event we do not act on"),
    };
    ops.wake.notify_one();
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], body: &[u8]) -> HeaderMap {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        let v = hex::encode(mac.finalize().into_bytes());
        let mut h = HeaderMap::new();
        h.insert(SIGNATURE, format!("format=sha256,v={v}").parse().unwrap());
        h
    }

    #[test]
    fn only_the_exact_body_under_the_secret_is_signed() {
        let body = br#"{"id":"1","event":"test","payload":{"foo":"bar"}}"#;
        let h = sign(b"s3cret", body);
        assert!(signed(b"s3cret", &h, body));
        assert!(!signed(b"other", &h, body));
        assert!(!signed(b"s3cret", &h, b"{}"));
        assert!(!signed(b"s3cret", &HeaderMap::new(), body));
        let mut md5 = HeaderMap::new();
        md5.insert(SIGNATURE, "format=md5,v=00".parse().unwrap());
        assert!(!signed(b"s3cret", &md5, body));
    }

    #[test]
    fn created_at_is_read_in_truto_s_form_and_rfc_3339() {
        assert!(created("2024-09-10 12:00:00").is_some());
        assert!(created("2024-09-10T12:00:00Z").is_some());
        assert!(created("yesterday").is_none());
    }
}
