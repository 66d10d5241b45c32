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

/// Completes at the first SIGINT or SIGTERM. The signals are taken from the call on, not from
/// the first poll: a SIGTERM while the service starts (a rollout scaling it down at once, a
/// test stopping it after its first log line) ends it as it would a running one, instead of
/// killing it by the signal's default action before its handler is installed.
pub fn wait_for_signal() -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                (Ok(mut one), Err(_)) | (Err(_), Ok(mut one)) => {
                    one.recv().await;
                }
                (Err(_), Err(_)) => std::future::pending().await,
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
