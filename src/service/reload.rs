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
    let mut watch = FileWatch::new(content(&reload.file).await);
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
                if !watch.changed(content(&reload.file).await) {
                    continue;
                }
                "file_check"
            }
        };
        // Tried once, whatever comes of it: a file refused is not tried again every check.
        watch.loaded(content(&reload.file).await);
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
                warn_of_dropped_exclusions(&settings.borrow());
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

/// When a config file's content counts as changed: a content other than the one last loaded
/// (or refused), seen at two checks in a row, so that a file caught mid-write is not loaded
/// half written. Pure: the checks hand it what they read.
#[derive(Debug)]
struct FileWatch {
    /// The content's hash as last loaded or refused.
    last: Option<u64>,
    /// A new content seen at the previous check.
    seen: Option<u64>,
}

impl FileWatch {
    fn new(at_start: Option<u64>) -> Self {
        FileWatch {
            last: at_start,
            seen: None,
        }
    }

    /// What a check read (`None`: the file could not be read now, as while it is replaced:
    /// looked at again at the next); true when it is to be loaded.
    fn changed(&mut self, now: Option<u64>) -> bool {
        let Some(now) = now else { return false };
        if Some(now) == self.last {
            self.seen = None;
            return false;
        }
        if self.seen != Some(now) {
            self.seen = Some(now);
            return false;
        }
        true
    }

    /// The content a reload (by either cause) is about to load.
    fn loaded(&mut self, content: Option<u64>) {
        self.last = content;
        self.seen = None;
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

/// Each entry that mirrors what `[account_defaults]` excludes
/// ([`Settings::exclusions_dropped`]), said at start and at each reload: an operator who
/// changes a ConfigMap without `lms-sync check` still hears of it.
pub(super) fn warn_of_dropped_exclusions(settings: &Settings) {
    for entry in settings.exclusions_dropped() {
        tracing::warn!(
            entry,
            "a configuration entry brings back fields [account_defaults] excludes"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::FileWatch;

    #[test]
    fn a_new_content_is_loaded_once_it_stayed_for_a_check_and_not_again() {
        let mut w = FileWatch::new(Some(1));
        assert!(!w.changed(Some(1)), "unchanged");
        // Caught mid-write: a content seen once, then another.
        assert!(!w.changed(Some(2)));
        assert!(!w.changed(Some(3)));
        // Unreadable for a check (being replaced): neither loaded nor forgotten.
        assert!(!w.changed(None));
        assert!(
            w.changed(Some(3)),
            "the same new content at two checks in a row"
        );
        w.loaded(Some(3));
        assert!(!w.changed(Some(3)), "loaded (or refused): not tried again");
        assert!(!w.changed(Some(3)));
        // Back to the old content for one check only: nothing.
        assert!(!w.changed(Some(1)));
        assert!(!w.changed(Some(3)));
        // A SIGHUP loads what the file holds then: the checks take that as loaded.
        assert!(!w.changed(Some(4)));
        w.loaded(Some(4));
        assert!(!w.changed(Some(4)));
        // No file at start: the first content is a change.
        let mut w = FileWatch::new(None);
        assert!(!w.changed(Some(7)));
        assert!(w.changed(Some(7)));
    }
}
