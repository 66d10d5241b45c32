//! `POST /webhooks/truto`: Truto's account events, so that a new customer is synced within
//! seconds instead of at the next discovery. Discovery stays the source of truth: a lost
//! webhook is caught by the next listing.
//!
//! Order of checks: the signature (HMAC-SHA256 of the raw body under the webhook secret,
//! compared in constant time) before anything is parsed — missing or wrong: 401, nothing
//! changes; bodies over 1 MiB never get here (413). Then: an event older (or newer) than
//! `webhooks.tolerance_secs`, or one whose id was processed before (ids kept in the database,
//! so every replica agrees), or of a type we do not act on: 200 and no effect.
//!
//! A signed, fresh delivery the database cannot record or apply (down, taking no writes) is
//! answered 200 too, and left to the next discovery listing: Truto retries a failed delivery
//! only for seconds and deactivates an endpoint that keeps failing, and a webhook created
//! again comes with a new secret to deploy. Every delivery is counted by what became of it
//! (`lms_sync_webhook_deliveries_total`), so that deliveries signed under another secret (a
//! webhook created again in Truto, a secret not rotated here) can be alerted on before Truto
//! gives up on the endpoint.

use std::time::Duration;

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
use crate::source::{read_account, SourceError};
use crate::store::{retry_read_only, Discovered, StoreError};
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

/// What a delivery's signature says.
#[derive(Debug, PartialEq, Eq)]
pub enum Signature {
    /// The body's HMAC-SHA256 under the secret.
    Valid,
    /// No signature in Truto's form (no header, another format, not hex): not Truto's.
    Missing,
    /// A signature in Truto's form that does not match: signed under another secret (a
    /// webhook created again in Truto, its secret not given to lms-sync), or forged.
    Wrong,
}

/// What the signature in `headers` says of `body` under `secret`.
pub fn signature(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> Signature {
    let Some(value) = headers.get(SIGNATURE).and_then(|v| v.to_str().ok()) else {
        return Signature::Missing;
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
        return Signature::Missing;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return Signature::Wrong;
    };
    mac.update(body);
    // verify_slice compares in constant time.
    match mac.verify_slice(&given) {
        Ok(()) => Signature::Valid,
        Err(_) => Signature::Wrong,
    }
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

/// How long a delivery's answer waits for the delivery to be applied.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

pub(super) async fn receive(State(ops): State<Ops>, headers: HeaderMap, body: Bytes) -> Response {
    // Handled in a task of its own, counted when it ends: a delivery may wait on the database
    // (a lock, a busy pool) or, for an `updated` event, on its GET (paced behind a busy request
    // budget, or a slow Truto), while Truto takes a slow answer for a failure (retried, and an
    // endpoint failing for long is deactivated). After ANSWER_WITHIN it is answered, and goes on.
    let metrics = ops.metrics.clone();
    // Tracked, so that a shutdown waits for it (see `service::run_with`).
    let mut task = ops.deliveries.clone().spawn(async move {
        let (result, response) = answer(&ops, &headers, &body).await;
        metrics.inc("lms_sync_webhook_deliveries_total", &[("result", result)]);
        response
    });
    match tokio::time::timeout(ANSWER_WITHIN, &mut task).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "webhook handling failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, "handling failed\n")
        }
        Err(_) => {
            tracing::info!(
                within_secs = ANSWER_WITHIN.as_secs(),
                "webhook answered before it was applied; it goes on"
            );
            text(StatusCode::OK, "accepted; still being applied\n")
        }
    }
}

/// The answer to a delivery, and what became of it (the metric's `result`).
async fn answer(ops: &Ops, headers: &HeaderMap, body: &[u8]) -> (&'static str, Response) {
    let Some(secret) = ops.webhook_secret.get() else {
        return (
            "off",
            text(
                StatusCode::NOT_FOUND,
                "the webhook receiver is off: set TRUTO_WEBHOOK_SECRET or webhooks.secret_file\n",
            ),
        );
    };
    match signature(secret.expose_secret().as_bytes(), headers, body) {
        Signature::Valid => {}
        Signature::Missing => {
            tracing::warn!("webhook refused: no X-Truto-Signature in Truto's form");
            return (
                "unsigned",
                text(StatusCode::UNAUTHORIZED, "invalid signature\n"),
            );
        }
        Signature::Wrong => {
            tracing::warn!(
                "webhook refused: X-Truto-Signature does not match the webhook secret (a webhook \
                 created again in Truto comes with a new secret: give it to lms-sync, or Truto \
                 deactivates the endpoint after repeated failures)"
            );
            return (
                "wrong_signature",
                text(StatusCode::UNAUTHORIZED, "invalid signature\n"),
            );
        }
    }
    let Ok(delivery) = serde_json::from_slice::<Delivery>(body) else {
        return (
            "invalid",
            text(StatusCode::BAD_REQUEST, "not a Truto webhook delivery\n"),
        );
    };
    let tolerance = ops.settings.borrow().webhooks.tolerance_secs as i64;
    let age = delivery
        .created_at
        .as_deref()
        .and_then(created)
        .map(|t| (Utc::now() - t).num_seconds().abs());
    if age.is_none_or(|a| a > tolerance) {
        tracing::info!(event = %shorten(&delivery.event, 60), "webhook ignored: outside the time tolerance (or no created_at)");
        return ("stale", text(StatusCode::OK, "ignored: stale\n"));
    }
    let applied = match retry_read_only(|| ops.store.first_delivery(&delivery.id, &delivery.event))
        .await
    {
        Ok(true) => {
            let acted = act(ops, &delivery).await;
            if acted.is_err() {
                // Not applied: the id is forgotten, so that the same event delivered again
                // (Truto delivers at least once; an operator may redeliver it) is applied
                // rather than taken for a replay. Best effort: the next listing applies
                // the change either way.
                if let Err(e) = retry_read_only(|| ops.store.forget_delivery(&delivery.id)).await {
                    tracing::debug!(error = %e, "cannot forget a webhook event that was not applied");
                }
            }
            acted
        }
        Ok(false) => {
            return (
                "duplicate",
                text(StatusCode::OK, "ignored: already processed\n"),
            )
        }
        // Not a 5xx: Truto's retries last seconds, and an endpoint that keeps failing (a
        // database down or taking no writes for a while) is deactivated.
        Err(e) => Err(ops.store.explain(e).await.to_string()),
    };
    match applied {
        Ok(acted) => {
            let (result, what) = match acted {
                Acted::Applied(what) => ("applied", what),
                Acted::Ignored(what) => ("ignored", what),
            };
            tracing::info!(event = %shorten(&delivery.event, 60), what, "webhook processed");
            (result, text(StatusCode::OK, format!("{what}\n")))
        }
        Err(e) => {
            tracing::warn!(event = %shorten(&delivery.event, 60), error = %e, "webhook could not be applied; the next discovery catches up");
            (
                "deferred",
                text(StatusCode::OK, "accepted; the next discovery applies it\n"),
            )
        }
    }
}

/// What an account event did.
enum Acted {
    /// It changed the registry: what it did.
    Applied(&'static str),
    /// Nothing to do: why.
    Ignored(&'static str),
}

/// The account events that say what state an account is in (read from Truto when they come).
const STATE_EVENTS: [&str; 7] = [
    "created",
    "active",
    "reactivated",
    "updated",
    "authentication_error",
    "post_install_error",
    "validation_error",
];

/// Applies an account event to the registry; says what it did.
async fn act(ops: &Ops, d: &Delivery<'_>) -> Result<Acted, String> {
    let Some(kind) = d.event.strip_prefix("integrated_account:") else {
        return Ok(Acted::Ignored("ignored: not an account event"));
    };
    let discovery = ops.settings.borrow().discovery.clone();
    if !discovery.enabled {
        return Ok(Acted::Ignored("ignored: discovery is off"));
    }
    let payload = d.payload.map(|p| p.get()).unwrap_or("null");
    let mut account = read_account(payload).map_err(|e| format!("payload: {e}"))?;
    let store = &ops.store;
    if kind == "deleted" {
        let known = retry_read_only(|| store.retire(account.id))
            .await
            .map_err(|e| e.to_string())?;
        if !known {
            return Ok(Acted::Ignored("ignored: an account lms-sync does not know"));
        }
        ops.wake.notify_one();
        return Ok(Acted::Applied("retired"));
    }
    if !STATE_EVENTS.contains(&kind) {
        return Ok(Acted::Ignored("ignored: an account event we do not act on"));
    }
    // While this process starts no run (Truto refusing its token or not answering, or the
    // token one of another environment, for which Truto answers 404 for every account of the
    // mirror's, as if deleted), the account's GET would fail or mislead: left to the next
    // listing, which a replica Truto answers makes.
    if let Some(halt) = ops.source.halt() {
        return Err(format!(
            "not applied while this process starts no run: {halt}"
        ));
    }
    // Every other event is read as Truto has the account now, not as its payload says: a
    // payload may be stale by the time it arrives, and deliveries come in any order (an
    // `authentication_error` retried after the `reactivated` that ended it would gate an
    // account that works; a `created` or `active` delivered after the account's deletion
    // would bring it back). One it no longer has stays as it is.
    account = match ops
        .source
        .get_integrated_account(account.id, &CancellationToken::new())
        .await
    {
        Ok(now) => now,
        Err(f) if matches!(f.error, SourceError::Status { status: 404, .. }) => {
            return Ok(Acted::Ignored("ignored: Truto no longer has this account"))
        }
        Err(f) => return Err(f.error.to_string()),
    };
    let integration = account.integration.clone().unwrap_or_default();
    if !discovery.integrations.contains(&integration) {
        return Ok(Acted::Ignored("ignored: another integration"));
    }
    let row = Discovered {
        id: account.id,
        tenant_id: account.tenant_id.clone(),
        status: account.status.clone(),
        integration: account.integration.clone(),
        is_sandbox: account.is_sandbox,
        environment_id: account.environment_id.clone(),
    };
    // An account new or newly active runs at once whatever the event (`account_event`). Of
    // the others, `updated` asks for no run by itself: Truto sends it whenever anything of
    // the account changes (its context, an OAuth token refreshed), and a full sync each time
    // would spend the budget of a fleet's accounts many times over; the regular schedule
    // picks up what changed.
    let wanted = row.status.as_deref() == Some("active") && kind != "updated";
    let requested = match store.account_event(&row, wanted).await {
        Ok(requested) => requested,
        Err(e @ StoreError::OtherEnvironment { .. }) => {
            tracing::warn!(account = %row.id, error = %e, "webhook ignored: an account of another Truto environment");
            return Ok(Acted::Ignored(
                "ignored: an account of another Truto environment than the mirror follows",
            ));
        }
        Err(e) => return Err(e.to_string()),
    };
    let done = match row.status.as_deref() {
        Some("active") if requested => "registered; syncing now",
        Some("active") => "applied: already active, no run asked for; its schedule goes on",
        Some("needs_reauth" | "post_install_error" | "validation_error") => "gated",
        _ => "registered",
    };
    ops.wake.notify_one();
    Ok(Acted::Applied(done))
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
        assert_eq!(signature(b"s3cret", &h, body), Signature::Valid);
        assert_eq!(signature(b"other", &h, body), Signature::Wrong);
        assert_eq!(signature(b"s3cret", &h, b"{}"), Signature::Wrong);
        assert_eq!(
            signature(b"s3cret", &HeaderMap::new(), body),
            Signature::Missing
        );
        let mut md5 = HeaderMap::new();
        md5.insert(SIGNATURE, "format=md5,v=00".parse().unwrap());
        assert_eq!(signature(b"s3cret", &md5, body), Signature::Missing);
        let mut not_hex = HeaderMap::new();
        not_hex.insert(SIGNATURE, "format=sha256,v=zz".parse().unwrap());
        assert_eq!(signature(b"s3cret", &not_hex, body), Signature::Missing);
    }

    #[test]
    fn created_at_is_read_in_truto_s_form_and_rfc_3339() {
        assert!(created("2024-09-10 12:00:00").is_some());
        assert!(created("2024-09-10T12:00:00Z").is_some());
        assert!(created("yesterday").is_none());
    }
}
