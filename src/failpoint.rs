//! Named points where a crash test can stop the process dead. With `LMS_SYNC_FAILPOINT=name:n`
//! in the environment, the n-th pass through the point `name` logs `failpoint reached` and then
//! waits forever, so the test can SIGKILL the process exactly there (inside a page's
//! transaction, between pages, in the deletion sweep, ...). Without the variable (always, in
//! production) a point costs one initialized-once check.
//!
//! Points: `page_tx` (a page batch written, not committed), `page_committed` (between
//! batches), `sweep_tx` (deletions written, not committed), `hydrate_tx` (a hydration batch
//! written, not committed), `finish_run` (the run's end written, not committed), `purge_tx` (an
//! account's rows deleted and the purge recorded, not committed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
static HITS: AtomicU64 = AtomicU64::new(0);

fn armed() -> Option<&'static (String, u64)> {
    ARMED
        .get_or_init(|| {
            let v = std::env::var("LMS_SYNC_FAILPOINT").ok()?;
            let (name, n) = v.split_once(':').unwrap_or((v.as_str(), "1"));
            Some((name.to_string(), n.parse().ok().filter(|n| *n > 0)?))
        })
        .as_ref()
}

/// Passes through the point `name`; hangs here if this is the armed pass.
pub async fn point(name: &str) {
    let Some((want, n)) = armed() else { return };
    if want != name || HITS.fetch_add(1, Ordering::SeqCst) + 1 != *n {
        return;
    }
    tracing::error!(failpoint = name, "failpoint reached");
    std::future::pending::<()>().await;
}
