//! The service in-process: `run_with` in a task, its pass events forwarded to the test (tests
//! wait on events, never on time).

use std::time::Duration;

use lms_sync::config::{AccountSettings, Settings};
use lms_sync::devkit::simulator::DEMO_TOKEN;
use lms_sync::domain::RunCounts;
use lms_sync::service::{run_with, Hooks};
use lms_sync::sync::{Progress, SyncOutcome};
use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{get_text, Env, TempFile};

/// Forwards pass events to the test.
#[derive(Clone)]
pub struct Events(pub mpsc::UnboundedSender<Event>);

#[derive(Debug)]
pub enum Event {
    Started(Uuid),
    Page(u64),
    Finished(Uuid, String),
}

impl Progress for Events {
    fn started(&self, account: &AccountSettings, _resumed: bool) {
        let _ = self.0.send(Event::Started(account.integrated_account_id));
    }
    fn page(&self, _account: &AccountSettings, totals: &RunCounts) {
        let _ = self.0.send(Event::Page(totals.pages));
    }
    fn finished(&self, account: &AccountSettings, o: &SyncOutcome) {
        let _ = self.0.send(Event::Finished(
            account.integrated_account_id,
            o.status_str().to_string(),
        ));
    }
}

pub fn token() -> SecretString {
    SecretString::from(DEMO_TOKEN.to_string())
}

/// Receives the next event, failing the test if none comes within a generous bound.
pub async fn next(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(Duration::from_secs(60), rx.recv())
        .await
        .expect("no event within 60s")
        .expect("daemon gone")
}

/// Starts the daemon in a task; cancelling the token stops it.
pub fn start_daemon(
    settings: Settings,
    hooks: Hooks,
) -> (
    tokio::task::JoinHandle<anyhow::Result<()>>,
    CancellationToken,
) {
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    let daemon = tokio::spawn(run_with(
        settings,
        token(),
        async move { stopper.cancelled().await },
        hooks,
    ));
    (daemon, stop)
}

/// Starts the daemon with its ops server on a free loopback port and its pass events
/// forwarded: (the daemon's task, the token that stops it, its events, the server's
/// `http://127.0.0.1:<port>` without a trailing slash).
pub async fn serve_daemon(
    settings: Settings,
) -> (
    tokio::task::JoinHandle<anyhow::Result<()>>,
    CancellationToken,
    mpsc::UnboundedReceiver<Event>,
    String,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, events) = mpsc::unbounded_channel();
    let (daemon, stop) = start_daemon(
        settings,
        Hooks {
            progress: Some(std::sync::Arc::new(Events(tx))),
            listener: Some(listener),
            ..Hooks::default()
        },
    );
    (daemon, stop, events, base)
}

pub fn daemon_settings(env: &Env, every: &str) -> Settings {
    let mut s = env.settings.clone();
    s.schedule.every = Some(every.into());
    s.schedule.jitter = "0s".into();
    s.schedule.run_on_start = true;
    s.schedule.retry_initial = "1s".into();
    s.server.listen = String::new();
    s.sync.shutdown_grace_secs = 20;
    s
}

/// A file holding a secret (a token, a webhook secret), removed when dropped.
pub fn secret_file(text: &str) -> TempFile {
    TempFile::new("lms-sync-secret", "", text)
}

/// Waits until the service's `/metrics` shows `series` (with its value): the accounts' state
/// is read from the database at most every 5 s. Fails after 30 s, with what it showed.
pub async fn metrics_show(base: &str, series: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = get_text(&format!("{base}/metrics")).await;
        if metrics.contains(series) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {series} in:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
