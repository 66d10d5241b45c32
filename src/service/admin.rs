//! The admin routes of the operations server: `GET /status` (every account, as JSON),
//! `GET /status/accounts/{id}` (one, with its latest runs and actions, as JSON),
//! `GET /status/budget` (the shared request budget, as JSON) and
//! `POST /accounts/{id}/sync|pause|resume|protect|unprotect|reset-cursor|allow-deletes` (one
//! account) and `POST /accounts/{action}` (many, named in a JSON body by id or chosen as
//! `accounts list` shows them: [`Batch`]), only with `Authorization: Bearer <admin token>`
//! (`LMS_SYNC_ADMIN_TOKEN` or `server.admin_token_file`). Without a configured token they
//! answer 403, with a wrong or missing one 401. They act through the registry, like the CLI.
//! With `server.status_page_requires_token` the status page asks for the same token
//! ([`refuse_page`]), which a browser may send as a Basic password.

use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::choose::Filter;
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

/// `GET /status`: every account of the fleet, as `accounts list --json` shows them; with
/// `?tenant=…&state=…&health=…&failing=true&needs_attention=true` only those `accounts list`
/// would keep with the same options ([`filter_of_query`]).
pub(super) async fn status(
    State(ops): State<Ops>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if let Some(no) = refuse(&ops, &headers) {
        return no;
    }
    let filter = match filter_of_query(query.as_deref().unwrap_or_default()) {
        Ok(f) => f,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let settings = ops.settings.borrow().clone();
    match super::status::read_state(&settings, &ops.store, None).await {
        Ok(state) => {
            let views = super::status::account_views(&state);
            match filter.apply(&views) {
                Ok(kept) => Json(kept).into_response(),
                Err(e) => text(StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the state: {e}\n"),
        ),
    }
}

/// The [`Filter`] a query string gives, as `accounts list`'s options: `tenant`, `state` and
/// `health` repeated or comma-separated (any of them), `failing` and `needs_attention` as
/// `true` or `false` (bare: true); several keys, all of them. A key it does not know is refused
/// rather than ignored: a misspelt one would otherwise list the whole fleet as the answer.
fn filter_of_query(query: &str) -> Result<Filter, String> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query).map_err(|e| format!("the query string: {e}"))?;
    let (mut states, mut healths) = (Vec::new(), Vec::new());
    let mut filter = Filter::default();
    let words = |v: &str| -> Vec<String> {
        v.split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    };
    for (key, value) in pairs {
        let flag = |v: &str| match v {
            "" | "true" => Ok(true),
            "false" => Ok(false),
            other => Err(format!(
                "{key}: {:?} is neither true nor false",
                crate::text::shorten(other, 60)
            )),
        };
        match key.as_str() {
            "tenant" => filter.tenant.extend(words(&value)),
            "state" => states.extend(words(&value)),
            "health" => healths.extend(words(&value)),
            "failing" => filter.failing = flag(&value)?,
            "needs_attention" => filter.needs_attention = flag(&value)?,
            other => {
                return Err(format!(
                    "{:?} is not a parameter of /status: tenant, state, health, failing, \
                     needs_attention",
                    crate::text::shorten(other, 60)
                ))
            }
        }
    }
    filter.state = values(&states, "state")?;
    filter.health = values(&healths, "health")?;
    Ok(filter)
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

/// `?runs=` of `GET /status/accounts/{id}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AccountQuery {
    runs: Option<i64>,
}

/// `GET /status/accounts/{id}`: one account, as `accounts show --json` gives it (what `GET
/// /status` says of it, its latest `?runs=N` runs, 10 unless asked, 1 to 1000, and its latest
/// operators' actions); 404 for an account outside the fleet.
pub(super) async fn account_status(
    State(ops): State<Ops>,
    Path(id): Path<String>,
    query: Result<Query<AccountQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Response {
    if let Some(no) = refuse(&ops, &headers) {
        return no;
    }
    let Ok(id) = Uuid::parse_str(&id) else {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "{:?} is not an account id (a uuid)\n",
                crate::text::shorten(&id, 60)
            ),
        );
    };
    let runs = match query {
        Ok(Query(AccountQuery { runs: None })) => 10,
        Ok(Query(AccountQuery { runs: Some(n) })) if (1..=1000).contains(&n) => n,
        Ok(_) => return text(StatusCode::BAD_REQUEST, "runs: from 1 to 1000\n"),
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{}\n", e.body_text())),
    };
    let settings = ops.settings.borrow().clone();
    match super::status::read_account(&settings, &ops.store, id, runs).await {
        Ok(Some(one)) => Json(one.json()).into_response(),
        Ok(None) => text(
            StatusCode::NOT_FOUND,
            format!(
                "account {id} is not in the fleet: neither configured in [[accounts]] nor \
                 discovered\n"
            ),
        ),
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot read the account: {e}\n"),
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
    let by = match acting(peer, &headers, query.reason.as_deref()) {
        Ok(by) => by,
        Err((status, why)) => return text(status, why),
    };
    let what = match steer_of(&action, query.until.as_deref()) {
        Ok(what) => what,
        Err((status, why)) => return text(status, why),
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
            log_acted(&action, &ids, &by);
            text(StatusCode::OK, format!("account {id}: {action}\n"))
        }
        Ok(false) => text(
            StatusCode::NOT_FOUND,
            format!("account {id} is not in the registry\n"),
        ),
        Err(e) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
    }
}

/// Why a request is refused: its status and what the answer says.
type Refused = (StatusCode, String);

/// Who acts, for `account_actions`: the admin API from the caller's address (and, behind a
/// proxy, what it says of the caller), on this replica, for `reason`; a 400 for a reason
/// `Acting` refuses.
fn acting(
    peer: Option<Extension<Peer>>,
    headers: &HeaderMap,
    reason: Option<&str>,
) -> Result<Acting, Refused> {
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
    Acting::new(
        format!(
            "the admin API from {from} (replica {})",
            crate::sync::worker_name()
        ),
        reason,
    )
    .map_err(|e| (StatusCode::BAD_REQUEST, format!("reason: {e}\n")))
}

/// The registry change an action's name asks for, with a pause's end; a 404 listing the
/// actions for a name that is none, a 400 for an end that is wrong or not a pause's.
fn steer_of(action: &str, until: Option<&str>) -> Result<Steer, Refused> {
    let what = match action {
        "sync" => Steer::SyncNow,
        "pause" => Steer::Pause { until: None },
        "resume" => Steer::Resume,
        "protect" => Steer::Protect,
        "unprotect" => Steer::Unprotect,
        "reset-cursor" => Steer::ResetCursor,
        "allow-deletes" => Steer::AllowDeletes,
        _ => return Err((StatusCode::NOT_FOUND, ACTIONS.into())),
    };
    match (what, until) {
        (what, None) => Ok(what),
        (Steer::Pause { .. }, Some(w)) => match crate::schedule::pause_end(w, chrono::Utc::now()) {
            Ok(t) => Ok(Steer::Pause { until: Some(t) }),
            Err(e) => Err((StatusCode::BAD_REQUEST, format!("until: {e}\n"))),
        },
        (_, Some(_)) => Err((
            StatusCode::BAD_REQUEST,
            "until: only a pause has an end
"
            .into(),
        )),
    }
}

/// Logs what an operator did through the admin API, for whoever audits the service by its
/// logs (`account_actions` holds the same, per account): the action, how many accounts and
/// which (the first 20), who asked and why.
fn log_acted(action: &str, ids: &[Uuid], by: &Acting) {
    const NAMED: usize = 20;
    let mut named = ids
        .iter()
        .take(NAMED)
        .map(Uuid::to_string)
        .collect::<Vec<_>>()
        .join(",");
    if ids.len() > NAMED {
        named.push_str(&format!(" and {} more", ids.len() - NAMED));
    }
    tracing::info!(
        action,
        accounts = ids.len(),
        ids = %named,
        actor = %by.actor,
        reason = by.reason.as_deref().unwrap_or_default(),
        "an operator acted on accounts through the admin API"
    );
}

/// The JSON body of `POST /accounts/{action}`: which accounts, as `accounts pause` and its
/// siblings take them, and why. Exactly one way of naming them: `ids`, or any of `tenant`,
/// `state`, `health`, `failing`, `needs_attention` (as `accounts list`'s options: several values
/// of one, any of them; several, all of them), or `all`. A key it does not know is refused, so
/// that a misspelt `tenants` cannot widen an action to every account.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Batch {
    ids: Option<Vec<String>>,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    tenant: Vec<String>,
    #[serde(default)]
    state: Vec<String>,
    #[serde(default)]
    health: Vec<String>,
    #[serde(default)]
    failing: bool,
    #[serde(default)]
    needs_attention: bool,
    reason: Option<String>,
    /// `pause` only, as `accounts pause --until`.
    until: Option<String>,
    /// Answer with the accounts it would act on, and change nothing.
    #[serde(default)]
    dry_run: bool,
}

/// How a [`Batch`] names its accounts.
#[derive(Debug, PartialEq, Eq)]
enum Named {
    /// By id, in the order given, without repeats; every one must be in the registry.
    Ids(Vec<Uuid>),
    /// As `accounts list` shows them.
    Chosen(Filter),
    /// Every account of the fleet.
    All,
}

impl Batch {
    /// Reads a body; what is wrong with it, said for the caller.
    fn parse(body: &[u8]) -> Result<Batch, String> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(format!("the body is empty: {NAME_THEM}"));
        }
        serde_json::from_slice(body).map_err(|e| format!("the body is not what it takes: {e}"))
    }

    fn named(&self) -> Result<Named, String> {
        let filter = Filter {
            tenant: self.tenant.clone(),
            state: values(&self.state, "state")?,
            health: values(&self.health, "health")?,
            failing: self.failing,
            needs_attention: self.needs_attention,
        };
        match (&self.ids, filter.is_set(), self.all) {
            (None, false, false) => Err(NAME_THEM.into()),
            (Some(_), true, _) | (Some(_), _, true) => {
                Err("give ids or what chooses accounts (tenant, all, …), not both".into())
            }
            (None, true, true) => {
                Err("all chooses every account: drop it, or the other choices".into())
            }
            (None, true, false) => Ok(Named::Chosen(filter)),
            (None, false, true) => Ok(Named::All),
            (Some(ids), false, false) => super::choose::account_ids(
                ids.iter()
                    .enumerate()
                    .map(|(n, word)| (format!("ids[{n}]"), word.as_str())),
            )
            .map(Named::Ids),
        }
    }
}

/// What a body that names no accounts is told.
const NAME_THEM: &str = "name the accounts: a JSON object with \"ids\": [...], or choose them \
    with \"tenant\", \"state\", \"health\", \"failing\" or \"needs_attention\" (as `accounts \
    list` does), or \"all\": true";

/// `key`'s values as clap would take them on the command line (`--state paused`).
fn values<T: clap::ValueEnum>(words: &[String], key: &str) -> Result<Vec<T>, String> {
    words
        .iter()
        .map(|w| {
            T::from_str(w, false).map_err(|_| {
                let known: Vec<String> = T::value_variants()
                    .iter()
                    .filter_map(|v| v.to_possible_value())
                    .map(|v| v.get_name().to_string())
                    .collect();
                format!(
                    "{key}: {:?} is none of {}",
                    crate::text::shorten(w, 60),
                    known.join(", ")
                )
            })
        })
        .collect()
}

/// `POST /accounts/{action}` (`sync`, `pause`, … as `POST /accounts/{id}/{action}`) for many
/// accounts at once, named in a JSON [`Batch`]: all of them change in one transaction, or none
/// (an id the registry lacks: 404 naming it). Answers the accounts acted on (or, with
/// `dry_run`, those it would act on) as JSON; a choice that matches none changes nothing.
pub(super) async fn accounts_action(
    State(ops): State<Ops>,
    Path(action): Path<String>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(no) = refuse(&ops, &headers) {
        return no;
    }
    if Uuid::parse_str(&action).is_ok() {
        return text(
            StatusCode::NOT_FOUND,
            format!("POST /accounts/{action}/ACTION acts on that account; {ACTIONS}"),
        );
    }
    let bad = |e: String| text(StatusCode::BAD_REQUEST, format!("{e}\n"));
    let batch = match Batch::parse(&body) {
        Ok(b) => b,
        Err(e) => return bad(e),
    };
    let what = match steer_of(&action, batch.until.as_deref()) {
        Ok(what) => what,
        Err((status, why)) => return text(status, why),
    };
    let named = match batch.named() {
        Ok(n) => n,
        Err(e) => return bad(e),
    };
    let by = match acting(peer, &headers, batch.reason.as_deref()) {
        Ok(by) => by,
        Err((status, why)) => return text(status, why),
    };
    let unavailable =
        |e: &dyn std::fmt::Display| text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"));
    let chosen: Vec<Uuid> = match named {
        Named::Ids(ids) => ids,
        named => {
            let settings = ops.settings.borrow().clone();
            let views = match super::status::read_state(&settings, &ops.store, None).await {
                Ok(state) => super::status::account_views(&state),
                Err(e) => return unavailable(&format!("cannot read the fleet: {e}")),
            };
            match named {
                Named::Chosen(filter) => match filter.apply(&views) {
                    Ok(kept) => kept.iter().map(|v| v.integrated_account_id).collect(),
                    Err(e) => return bad(e),
                },
                _ => views.iter().map(|v| v.integrated_account_id).collect(),
            }
        }
    };
    let missing = if chosen.is_empty() {
        Ok(Vec::new())
    } else if batch.dry_run {
        ops.store.registry().await.map(|rows| {
            let known: std::collections::HashSet<Uuid> =
                rows.iter().map(|r| r.integrated_account_id).collect();
            chosen
                .iter()
                .filter(|a| !known.contains(a))
                .copied()
                .collect()
        })
    } else {
        // (`steer` makes its transaction again after a refusal on a session left read-only.)
        ops.store.steer(&chosen, what, &by).await
    };
    match missing {
        Ok(missing) if missing.is_empty() => {
            if !batch.dry_run && !chosen.is_empty() {
                ops.wake.notify_one();
                log_acted(&action, &chosen, &by);
            }
            Json(serde_json::json!({
                "action": action,
                "dry_run": batch.dry_run,
                "count": chosen.len(),
                "accounts": chosen,
            }))
            .into_response()
        }
        Ok(missing) => text(
            StatusCode::NOT_FOUND,
            format!(
                "not in the registry: {}; nothing changed\n",
                missing
                    .iter()
                    .map(Uuid::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        Err(e) => unavailable(&e),
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

    #[test]
    fn a_batch_names_its_accounts_one_way_and_says_what_is_wrong() {
        use super::super::choose::{Health, State};
        let named = |body: &str| Batch::parse(body.as_bytes()).and_then(|b| b.named());
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(
            named(&format!(r#"{{"ids": ["{a}", "{b}", "{a}"]}}"#)),
            Ok(Named::Ids(vec![a, b]))
        );
        assert_eq!(named(r#"{"ids": []}"#), Ok(Named::Ids(vec![])));
        assert_eq!(named(r#"{"all": true, "dry_run": true}"#), Ok(Named::All));
        assert_eq!(
            named(r#"{"health": ["unhealthy"], "state": ["active", "gated"], "failing": true}"#),
            Ok(Named::Chosen(Filter {
                health: vec![Health::Unhealthy],
                state: vec![State::Active, State::Gated],
                failing: true,
                ..Filter::default()
            }))
        );
        let wrong = |body: &str| named(body).unwrap_err();
        assert!(wrong("").starts_with("the body is empty: name the accounts"));
        assert!(wrong(" \n").starts_with("the body is empty"));
        assert!(wrong("{}").starts_with("name the accounts"));
        assert!(wrong(r#"{"all": false}"#).starts_with("name the accounts"));
        assert!(wrong(r#"{"tenants": ["acme"]}"#).contains("unknown field `tenants`"));
        assert!(wrong(r#"["acme"]"#).starts_with("the body is not what it takes"));
        assert!(wrong(r#"{"ids": "acme"}"#).starts_with("the body is not what it takes"));
        assert_eq!(
            wrong(r#"{"ids": ["x"]}"#),
            "ids[0]: \"x\" is not an account id (a uuid)"
        );
        assert!(wrong(&format!(r#"{{"ids": ["{a}"], "tenant": ["t"]}}"#)).contains("not both"));
        assert!(wrong(r#"{"ids": [], "all": true}"#).contains("not both"));
        assert!(wrong(r#"{"all": true, "failing": true}"#).starts_with("all chooses every"));
        assert_eq!(
            wrong(r#"{"health": ["sick"]}"#),
            "health: \"sick\" is none of ok, needs_reauth, blocked, not_found, forbidden, \
             unhealthy"
        );
    }

    #[test]
    fn the_status_list_takes_accounts_lists_options_in_its_query() {
        use super::super::choose::{Health, State};
        assert_eq!(filter_of_query(""), Ok(Filter::default()));
        assert_eq!(
            filter_of_query("tenant=acme&tenant=globex,initech&state=paused&health=unhealthy"),
            Ok(Filter {
                tenant: vec!["acme".into(), "globex".into(), "initech".into()],
                state: vec![State::Paused],
                health: vec![Health::Unhealthy],
                ..Filter::default()
            })
        );
        assert_eq!(
            filter_of_query("failing&needs_attention=true"),
            Ok(Filter {
                failing: true,
                needs_attention: true,
                ..Filter::default()
            })
        );
        assert_eq!(filter_of_query("failing=false"), Ok(Filter::default()));
        assert_eq!(
            filter_of_query("tenant=a%2Bb%40c"),
            Ok(Filter {
                tenant: vec!["a+b@c".into()],
                ..Filter::default()
            })
        );
        assert!(filter_of_query("tenants=acme")
            .unwrap_err()
            .starts_with("\"tenants\" is not a parameter of /status"));
        assert_eq!(
            filter_of_query("failing=yes").unwrap_err(),
            "failing: \"yes\" is neither true nor false"
        );
        assert!(filter_of_query("state=activ")
            .unwrap_err()
            .starts_with("state: \"activ\" is none of"));
    }
}
