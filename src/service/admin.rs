//! The admin routes of the operations server: `GET /status` (every account, as JSON),
//! `GET /status/budget` (the shared request budget, as JSON) and
//! `POST /accounts/{id}/sync|pause|resume|protect|unprotect`, only with `Authorization: Bearer <admin token>`
//! (`LMS_SYNC_ADMIN_TOKEN` or `server.admin_token_file`). Without a configured token they
//! answer 403, with a wrong or missing one 401. They act through the registry, like the CLI.
//! With `server.status_page_requires_token` the status page asks for the same token
//! ([`refuse_page`]), which a browser may send as a Basic password.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::ops::{text, Ops, Peer};
use crate::store::{Acting, Steer};

/// `None` when the request may go on; otherwise the answer that refuses it.
fn refuse(ops: &Ops, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = ops.admin_token.get() else {
        return Some(text(
            StatusCode::FORBIDDEN,
            "admin routes are off: set LMS_SYNC_ADMIN_TOKEN or server.admin_token_file\n",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| credentials(v, "Bearer"))
        .unwrap_or("");
    (!matches(given, &token)).then(|| {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a valid admin token is needed (Authorization: Bearer <token>)\n",
        )
            .into_response()
    })
}

/// Whether `given` is `token`, in constant time: a wrong token must not tell how much of it
/// was right.
fn matches(given: &str, token: &secrecy::SecretString) -> bool {
    given
        .as_bytes()
        .ct_eq(token.expose_secret().as_bytes())
        .into()
}

/// What an `Authorization` header gives under `scheme`: the rest of the header, when it names
/// that scheme. The scheme is matched in any case, as HTTP wants (RFC 9110, 11.1): clients and
/// proxies that send `bearer` are not refused for it.
fn credentials<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (name, rest) = value.split_once(' ')?;
    name.eq_ignore_ascii_case(scheme)
        .then(|| rest.trim_start_matches(' '))
}

/// The token an `Authorization` header gives: `Bearer <token>`, or HTTP Basic with the token
/// as the password (any user name), which is what a browser sends once it asked for it.
fn given_token(value: &str) -> Option<String> {
    if let Some(token) = credentials(value, "Bearer") {
        return Some(token.to_string());
    }
    use base64::Engine as _;
    let encoded = credentials(value, "Basic")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let pair = String::from_utf8(decoded).ok()?;
    pair.split_once(':')
        .map(|(_, password)| password.to_string())
}

/// `None` when the status page (`/`, `/accounts/{id}`) may be shown: it needs no token
/// (`server.status_page_requires_token` off), or the request gives the admin token. Otherwise
/// the answer that refuses it: 401 asking for it (a browser then asks for a password), or 403
/// when no admin token is set.
pub(super) fn refuse_page(ops: &Ops, headers: &HeaderMap) -> Option<Response> {
    if !ops.settings.borrow().server.status_page_requires_token {
        return None;
    }
    let Some(token) = ops.admin_token.get() else {
        return Some(text(
            StatusCode::FORBIDDEN,
            "the status page needs the admin token (server.status_page_requires_token), and \
             none is set: set LMS_SYNC_ADMIN_TOKEN or server.admin_token_file\n",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(given_token)
        .unwrap_or_default();
    (!matches(&given, &token)).then(|| {
        (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"lms-sync status\", charset=\"UTF-8\"",
            )],
            "the status page needs the admin token (server.status_page_requires_token): as \
             Authorization: Bearer <token>, or as the password a browser asks for (any user \
             name)\n",
        )
            .into_response()
    })
}

/// `GET /status`: every account of the fleet, as `accounts list --json` shows them.
pub(super) async fn status(State(ops): State<Ops>, headers: HeaderMap) -> Response {
    if let Some(no) = refuse(&ops, &headers) {
        return no;
    }
    let settings = ops.settings.borrow().clone();
    match super::status::read_state(&settings, &ops.store, None).await {
        Ok(state) => Json(super::status::account_views(&state)).into_response(),
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the state: {e}\n"),
        ),
    }
}

/// `GET /status/budget`: the token's request budget as every process on the database shares
/// it (what the status page shows); 404 when requests are not paced.
pub(super) async fn budget(State(ops): State<Ops>, headers: HeaderMap) -> Response {
    if let Some(no) = refuse(&ops, &headers) {
        return no;
    }
    let settings = ops.settings.borrow().clone();
    match super::status::read_budget(&settings, &ops.store).await {
        Ok(Some(b)) => Json(serde_json::json!({
            "per_token": b.per_token,
            "window_secs": b.window_secs,
            "shared": b.shared(),
            "mismatch": b.mismatch(),
            "held": b.held(),
            "hot": b.view.hot,
            "free": b.free(),
            "holders": b.view.holders,
            // The configurations the live replicas run, the most common first, and how each
            // differs from the one compared with (null when all run one).
            "configurations": b.configurations().iter().map(|(d, n)| serde_json::json!({
                "digest": d,
                "replicas": n,
                "differences": b.differences(d).map(|(_, words)| words),
            })).collect::<Vec<_>>(),
            "compared_with": b.compared.as_ref().map(|c| &c.with),
        }))
        .into_response(),
        Ok(None) => text(
            StatusCode::NOT_FOUND,
            "requests are not paced (rate_budget.enabled = false): there is no budget to share\n",
        ),
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the budget: {e}\n"),
        ),
    }
}

/// `?reason=` of an account action.
#[derive(Debug, serde::Deserialize)]
pub(super) struct ActionQuery {
    reason: Option<String>,
    /// `pause` only: when the service resumes the account (as `accounts pause --until`).
    until: Option<String>,
}

/// What `POST /accounts/{id}/{action}` answers for an action it does not know.
const ACTIONS: &str =
    "actions: sync, pause, resume, protect, unprotect, reset-cursor, allow-deletes\n";

/// `POST /accounts/{id}/{action}` with `sync`, `pause`, `resume`, `protect`, `unprotect`,
/// `reset-cursor` or `allow-deletes` (as the `accounts` commands of the same names), and
/// optionally `?reason=…` (and for `pause`, `?until=…`): recorded in `account_actions` with the
/// caller's address.
pub(super) async fn account_action(
    State(ops): State<Ops>,
    Path((id, action)): Path<(Uuid, String)>,
    Query(query): Query<ActionQuery>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    if let Some(no) = refuse(&ops, &headers) {
        return no;
    }
    let mut from = peer.map_or_else(
        || "an unknown address".to_string(),
        |p| p.0 .0.ip().to_string(),
    );
    // Behind an ingress or a reverse proxy the peer is the proxy: keep what it says of the
    // caller too (as it says it: only a holder of the admin token gets this far).
    if let Some(fwd) = headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        from = format!(
            "{from}, forwarded for {}",
            crate::text::shorten(&fwd.replace(|c: char| c.is_control(), ""), 100)
        );
    }
    let by = match Acting::new(
        format!(
            "the admin API from {from} (replica {})",
            crate::sync::worker_name()
        ),
        query.reason.as_deref(),
    ) {
        Ok(by) => by,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("reason: {e}\n")),
    };
    let what = match action.as_str() {
        "sync" => Steer::SyncNow,
        "pause" => Steer::Pause { until: None },
        "resume" => Steer::Resume,
        "protect" => Steer::Protect,
        "unprotect" => Steer::Unprotect,
        "reset-cursor" => Steer::ResetCursor,
        "allow-deletes" => Steer::AllowDeletes,
        _ => return text(StatusCode::NOT_FOUND, ACTIONS),
    };
    let what = match (what, query.until.as_deref()) {
        (what, None) => what,
        (Steer::Pause { .. }, Some(w)) => match crate::schedule::pause_end(w, chrono::Utc::now()) {
            Ok(t) => Steer::Pause { until: Some(t) },
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("until: {e}\n")),
        },
        (_, Some(_)) => return text(StatusCode::BAD_REQUEST, "until: only a pause has an end\n"),
    };
    let ids = [id];
    // (`steer` makes its transaction again after a refusal on a session left read-only.)
    let done = ops
        .store
        .steer(&ids, what, &by)
        .await
        .map(|missing| missing.is_empty());
    match done {
        Ok(true) => {
            ops.wake.notify_one();
            text(StatusCode::OK, format!("account {id}: {action}\n"))
        }
        Ok(false) => text(
            StatusCode::NOT_FOUND,
            format!("account {id} is not in the registry\n"),
        ),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_as_a_bearer_or_as_a_basic_password() {
        assert_eq!(given_token("Bearer abc").as_deref(), Some("abc"));
        // base64("ops:s3cret:with:colons")
        assert_eq!(
            given_token("Basic b3BzOnMzY3JldDp3aXRoOmNvbG9ucw==").as_deref(),
            Some("s3cret:with:colons")
        );
        // base64(":tok"): no user name.
        assert_eq!(given_token("Basic OnRvaw==").as_deref(), Some("tok"));
        // The scheme in any case, and more than one space after it.
        assert_eq!(given_token("bearer abc").as_deref(), Some("abc"));
        assert_eq!(given_token("BEARER  abc").as_deref(), Some("abc"));
        assert_eq!(given_token("basic OnRvaw==").as_deref(), Some("tok"));
        // Another scheme, or none, gives nothing.
        assert_eq!(given_token("Token abc"), None);
        assert_eq!(given_token("Bearerabc"), None);
        assert_eq!(given_token("abc"), None);
        assert_eq!(given_token("Basic not base64!"), None);
        // base64("no colon")
        assert_eq!(given_token("Basic bm8gY29sb24="), None);
        assert_eq!(given_token("Digest x"), None);
        let token = secrecy::SecretString::from("tok");
        assert!(matches("tok", &token));
        assert!(!matches("to", &token) && !matches("tok ", &token) && !matches("", &token));
    }
}
