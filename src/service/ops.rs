//! The operations HTTP server of `lms-sync run`: `/healthz` (the process is alive), `/readyz`
//! (the scheduler is working, the database answers and the schema is ready), `/metrics`
//! (Prometheus text), the admin routes (`admin`) and Truto's webhooks (`webhooks`).
//!
//! Routing and HTTP are axum on hyper. The port may face a busy network, so no client can hold
//! a task for long: request heads must arrive within [`HEAD_TIMEOUT`], a handler (body included)
//! finishes within [`HANDLER_TIMEOUT`], bodies are capped at [`BODY_LIMIT`], at most
//! [`MAX_CONNECTIONS`] connections are served at once, and a connection older than
//! [`MAX_CONNECTION_AGE`] is closed after its current answer. Holds no SQL: it asks the store.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use super::{Live, Readiness};
use crate::metrics::Metrics;
use crate::source::TrutoClient;
use crate::store::Store;

/// The longest a client may take to send a request head (also bounds idle keep-alive).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest one request may take, reading its body and answering included.
pub const HANDLER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request body accepted.
pub const BODY_LIMIT: usize = 1024 * 1024;
/// Connections served at once; more wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 64;
/// A connection is closed (after its current answer) once it is this old.
pub const MAX_CONNECTION_AGE: Duration = Duration::from_secs(120);
/// How long `/readyz` waits for the database.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

const TEXT: &str = "text/plain; charset=utf-8";
/// The OpenMetrics text format (what `prometheus-client` writes; Prometheus reads it).
const PROMETHEUS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the routes work with.
#[derive(Clone)]
pub struct Ops {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub ready: Arc<Readiness>,
    pub settings: Live,
    pub source: Arc<TrutoClient>,
    /// Notified when an admin action or a webhook changed the registry.
    pub wake: Arc<tokio::sync::Notify>,
    /// None: the admin routes answer 403.
    pub admin_token: super::Rotating,
    /// None: the webhook receiver is off.
    pub webhook_secret: super::Rotating,
    /// When the per-account metrics were last read from the database.
    pub refreshed: Arc<tokio::sync::Mutex<Option<std::time::Instant>>>,
    /// The webhook deliveries being applied, which a shutdown waits for.
    pub deliveries: tokio_util::task::TaskTracker,
}

/// How long per-account metrics read from the database are reused between scrapes.
const ACCOUNT_METRICS_TTL: Duration = Duration::from_secs(5);

/// The routes, with their limits.
fn router(ops: Ops) -> Router {
    Router::new()
        .route("/", get(super::page::page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/status", get(super::admin::status))
        .route("/status/budget", get(super::admin::budget))
        .route("/status/accounts/{id}", get(super::admin::account_status))
        // One segment: an account's page (GET), or an action on many accounts (POST, the
        // segment naming the action).
        .route(
            "/accounts/{id}",
            get(super::account_page::account).post(super::admin::accounts_action),
        )
        .route(
            "/accounts/{id}/{action}",
            axum::routing::post(super::admin::account_action),
        )
        .route(
            "/webhooks/truto",
            axum::routing::post(super::webhooks::receive),
        )
        .fallback(not_found)
        .layer(RequestBodyLimitLayer::new(BODY_LIMIT))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            HANDLER_TIMEOUT,
        ))
        .with_state(ops)
}

pub(super) fn text(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, TEXT)], body.into()).into_response()
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n")
}

async fn readyz(State(ops): State<Ops>) -> Response {
    if let Some(why) = ops.ready.not_working() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        );
    }
    match tokio::time::timeout(READY_TIMEOUT, ops.store.migrations_applied()).await {
        Ok(Ok(true)) => text(StatusCode::OK, "ready\n"),
        Ok(Ok(false)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: migrations not applied\n",
        ),
        Ok(Err(e)) => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
        Err(_) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: database did not answer within 2s\n",
        ),
    }
}

async fn metrics_text(State(ops): State<Ops>) -> Response {
    refresh_account_metrics(&ops).await;
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, PROMETHEUS)],
        ops.metrics.render(),
    )
        .into_response()
}

/// Sets the per-account metrics from the database, so that every replica (a freshly started
/// one too) exports every account: at most every [`ACCOUNT_METRICS_TTL`]. Nothing while
/// another replica exports them (`server.account_metrics = "one_replica"`).
async fn refresh_account_metrics(ops: &Ops) {
    let mut last = ops.refreshed.lock().await;
    if !ops.metrics.reports_account_state() {
        *last = None;
        return;
    }
    if last.is_some_and(|t| t.elapsed() < ACCOUNT_METRICS_TTL) {
        return;
    }
    let rows = match ops.store.account_metrics().await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the accounts' metrics; /metrics shows the last ones");
            return;
        }
    };
    *last = Some(std::time::Instant::now());
    let m = &ops.metrics;
    for name in crate::metrics::ACCOUNT_STATE_GAUGES {
        m.clear(name);
    }
    for r in rows {
        let a = r.integrated_account_id.to_string();
        let account = [("account", a.as_str())];
        if let Some(t) = r.last_succeeded_at {
            m.set(
                "lms_sync_last_success_timestamp_seconds",
                &account,
                t.timestamp_millis() as f64 / 1000.0,
            );
        }
        m.set(
            "lms_sync_account_consecutive_failures",
            &account,
            r.consecutive_failures as f64,
        );
        m.set("lms_sync_account_live_users", &account, r.live_users as f64);
        m.set(
            "lms_sync_account_hydration_queue",
            &account,
            r.hydration_queue as f64,
        );
        m.set(
            "lms_sync_account_info",
            &[
                ("account", a.as_str()),
                ("label", r.label.as_deref().unwrap_or("")),
                ("tenant", r.tenant_id.as_deref().unwrap_or("")),
            ],
            1.0,
        );
        super::set_health_gauges(m, r.integrated_account_id, r.health);
        if let Some(t) = r.held_until {
            m.set(
                "lms_sync_account_held_until_timestamp_seconds",
                &account,
                t.timestamp_millis() as f64 / 1000.0,
            );
        }
        if let Some(t) = r.paused_since {
            m.set(
                "lms_sync_account_paused_since_timestamp_seconds",
                &account,
                t.timestamp_millis() as f64 / 1000.0,
            );
        }
        if let Some(t) = r.paused_until {
            m.set(
                "lms_sync_account_paused_until_timestamp_seconds",
                &account,
                t.timestamp_millis() as f64 / 1000.0,
            );
        }
    }
    match ops.store.change_feed_held_back().await {
        Ok(secs) => m.set("lms_sync_change_feed_held_back_seconds", &[], secs),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read how long the change feed is held back");
        }
    }
}

async fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, "not found\n")
}

/// The address a request's connection came from.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// Serves the operations endpoints on `listener` until `cancel` fires.
pub async fn serve(listener: TcpListener, ops: Ops, cancel: CancellationToken) {
    let app = router(ops);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = cancel.cancelled() => return,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        // Each request knows the address it came from (the admin routes record it).
        let app = app.clone().layer(axum::Extension(Peer(peer)));
        let cancel = cancel.clone();
        tokio::spawn(async move {
            serve_connection(stream, app, cancel).await;
            drop(slot);
        });
    }
}

/// One connection, closed gracefully when it grows too old or the service stops.
async fn serve_connection(stream: tokio::net::TcpStream, app: Router, cancel: CancellationToken) {
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = tokio::time::sleep(MAX_CONNECTION_AGE) => {}
        _ = cancel.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    // A client that does not read its answer is dropped after this.
    let _ = tokio::time::timeout(HANDLER_TIMEOUT, conn).await;
}
