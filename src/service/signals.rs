//! Process signals: SIGINT and SIGTERM end the service, and cancel one-shot syncs between
//! pages.

use tokio_util::sync::CancellationToken;

/// A token cancelled by SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::warn!("shutdown requested: finishing the pages in flight");
        t.cancel();
    });
    token
}

/// Completes at the first SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Loads the configuration again (the same file and environment as at start), for SIGHUP.
pub type Reload =
    Box<dyn Fn() -> Result<crate::config::Settings, crate::config::ConfigError> + Send + Sync>;

/// On every SIGHUP, `load`s the configuration again and hands it to the service; a file that
/// does not load is refused with one error line, and the configuration in force stays. Says in
/// `metrics` whether the last reload succeeded, and which keys it changed that only a restart
/// puts in force (compared with `started`, the settings the process started with).
pub async fn reload_on_hangup(
    settings: tokio::sync::watch::Sender<std::sync::Arc<crate::config::Settings>>,
    load: Reload,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    started: std::sync::Arc<crate::config::Settings>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            match load() {
                Ok(s) => {
                    let fixed = started.changed_fixed_at_start(&s);
                    settings.send_replace(std::sync::Arc::new(s));
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
                    tracing::info!("configuration reloaded (SIGHUP); running syncs go on, the next rounds follow it");
                    if !fixed.is_empty() {
                        tracing::warn!(
                            keys = fixed.join(", "),
                            "the reloaded configuration changes keys read only at start; they keep the values this process started with until it restarts"
                        );
                    }
                }
                Err(e) => {
                    metrics.set("lms_sync_config_last_reload_successful", &[], 0.0);
                    tracing::error!(
                        error = %e,
                        "configuration reload refused (SIGHUP); the previous configuration stays in force"
                    );
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (settings, load, metrics, started);
        std::future::pending::<()>().await;
    }
}
