//! The configuration reloaded while the service runs: on SIGHUP, and when its file's content
//! changes (a Kubernetes ConfigMap updated, a file edited), checked every
//! `server.config_file_check_secs`. A configuration that does not load is refused and the one in
//! force stays; either way `/metrics` says how the last reload went, and which keys it changed
//! that only a restart puts in force.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{ConfigError, Settings};
use crate::metrics::Metrics;

/// How the service loads its configuration again.
pub struct Reload {
    /// Loads it: the same file and environment as at start.
    pub load: Box<dyn Fn() -> Result<Settings, ConfigError> + Send + Sync>,
    /// The config file `load` reads, checked for changes; `None`: SIGHUP only.
    pub file: Option<PathBuf>,
}

/// Until the process ends: reloads the configuration on SIGHUP and when its file changed,
/// and hands it to the service through `settings`. `started` is what the process started with:
/// a reload that changes one of its keys read only at start is taken for the rest and said.
pub async fn reload_configuration(
    settings: tokio::sync::watch::Sender<Arc<Settings>>,
    reload: Reload,
    metrics: Arc<Metrics>,
    started: Arc<Settings>,
) {
    let mut hangups = hangups();
    // The file's content as last loaded (or refused), and a new content seen once: taken at
    // the next check if it has not changed again meanwhile (a file caught mid-write is not).
    let mut last = content(&reload.file).await;
    let mut seen: Option<u64> = None;
    loop {
        let every = settings.borrow().server.config_file_check_secs;
        let check = async {
            match (every, &reload.file) {
                (0, _) | (_, None) => std::future::pending().await,
                (s, Some(_)) => tokio::time::sleep(Duration::from_secs(s)).await,
            }
        };
        let by = tokio::select! {
            _ = hangup(&mut hangups) => "SIGHUP",
            _ = check => {
                // A file that cannot be read now (being replaced, say) is looked at again at
                // the next check; SIGHUP says why it does not load.
                let Some(now) = content(&reload.file).await else { continue };
                if Some(now) == last {
                    seen = None;
                    continue;
                }
                if seen != Some(now) {
                    seen = Some(now);
                    continue;
                }
                "file_check"
            }
        };
        // Tried once, whatever comes of it: a file refused is not tried again every check.
        last = content(&reload.file).await;
        seen = None;
        match (reload.load)() {
            Ok(s) => {
                let fixed = started.changed_fixed_at_start(&s);
                settings.send_replace(Arc::new(s));
                metrics.set("lms_sync_config_last_reload_successful", &[], 1.0);
                metrics.set(
                    "lms_sync_config_last_reload_success_timestamp_seconds",
                    &[],
                    chrono::Utc::now().timestamp_millis() as f64 / 1000.0,
                );
                metrics.set(
                    "lms_sync_config_restart_pending",
                    &[],
                    if fixed.is_empty() { 0.0 } else { 1.0 },
                );
                if by == "SIGHUP" {
                    tracing::info!(by, "configuration reloaded (SIGHUP); running syncs go on, the next rounds follow it");
                } else {
                    tracing::info!(by, "configuration reloaded (its file changed); running syncs go on, the next rounds follow it");
                }
                if !fixed.is_empty() {
                    tracing::warn!(
                        by,
                        keys = fixed.join(", "),
                        "the reloaded configuration changes keys read only at start; they keep the values this process started with until it restarts"
                    );
                }
            }
            Err(e) => {
                metrics.set("lms_sync_config_last_reload_successful", &[], 0.0);
                if by == "SIGHUP" {
                    tracing::error!(by, error = %e, "configuration reload refused (SIGHUP); the previous configuration stays in force");
                } else {
                    tracing::error!(by, error = %e, "configuration reload refused (its file changed); the previous configuration stays in force");
                }
            }
        }
    }
}

/// A hash of the file's content; `None` when there is no file or it cannot be read now.
async fn content(file: &Option<PathBuf>) -> Option<u64> {
    let bytes = tokio::fs::read(file.as_ref()?).await.ok()?;
    Some(xxhash_rust::xxh3::xxh3_64(&bytes))
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

fn hangups() -> Hangups {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::hangup()).ok()
    }
}

/// The next SIGHUP (never, where there is none).
async fn hangup(hangups: &mut Hangups) {
    #[cfg(unix)]
    if let Some(h) = hangups.as_mut() {
        if h.recv().await.is_some() {
            return;
        }
    }
    let _ = hangups;
    std::future::pending::<()>().await
}
