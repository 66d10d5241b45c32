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

/// On every SIGHUP, `load`s the configuration again and hands it to the service; a file that
/// does not load is refused with one error line, and the configuration in force stays.
pub async fn reload_on_hangup<F>(
    settings: tokio::sync::watch::Sender<std::sync::Arc<crate::config::Settings>>,
    load: F,
) where
    F: Fn() -> Result<crate::config::Settings, crate::config::ConfigError>,
{
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hangups) = signal(SignalKind::hangup()) else {
            return;
        };
        while hangups.recv().await.is_some() {
            match load() {
                Ok(s) => {
                    settings.send_replace(std::sync::Arc::new(s));
                    tracing::info!("configuration reloaded (SIGHUP); running syncs go on, the next rounds follow it");
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "configuration reload refused (SIGHUP); the previous configuration stays in force"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (settings, load);
        std::future::pending::<()>().await;
    }
}
