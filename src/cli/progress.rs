//! Live progress of sync passes: spinners with counts on a terminal, periodic log lines
//! otherwise. Implements [`crate::sync::Progress`]; knows nothing of HTTP or SQL.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use uuid::Uuid;

use crate::config::{AccountSettings, ProgressMode};
use crate::domain::RunCounts;
use crate::sync::{Progress, SyncOutcome};

/// Picks bars on a terminal and log lines elsewhere, as `mode` says.
pub fn for_mode(mode: ProgressMode, log_interval: Duration) -> Box<dyn Progress> {
    let bars = match mode {
        ProgressMode::Off => return Box::new(crate::sync::NoProgress),
        ProgressMode::Log => false,
        ProgressMode::Bars => true,
        ProgressMode::Auto => std::io::stderr().is_terminal(),
    };
    if bars {
        let mp = crate::cli::telemetry::bars();
        mp.set_draw_target(ProgressDrawTarget::stderr());
        Box::new(Bars {
            bars: Mutex::new(HashMap::new()),
        })
    } else {
        Box::new(LogLines {
            every: log_interval,
            last: Mutex::new(HashMap::new()),
        })
    }
}

fn rate(users: u64, since: Instant) -> u64 {
    let secs = since.elapsed().as_secs_f64();
    if secs > 0.0 {
        (users as f64 / secs) as u64
    } else {
        0
    }
}

struct Bars {
    bars: Mutex<HashMap<Uuid, (ProgressBar, Instant)>>,
}

impl Progress for Bars {
    fn started(&self, account: &AccountSettings, resumed: bool) {
        let pb = crate::cli::telemetry::bars().add(ProgressBar::new_spinner());
        pb.set_style(
            ProgressStyle::with_template("{spinner} {prefix:<24} {msg}")
                .expect("template")
                .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏✓"),
        );
        pb.set_prefix(truncate(&account.display_name(), 24));
        pb.set_message(if resumed {
            "resuming…"
        } else {
            "starting…"
        });
        pb.enable_steady_tick(Duration::from_millis(120));
        self.bars
            .lock()
            .expect("bars")
            .insert(account.integrated_account_id, (pb, Instant::now()));
    }

    fn page(&self, account: &AccountSettings, t: &RunCounts) {
        if let Some((pb, since)) = self
            .bars
            .lock()
            .expect("bars")
            .get(&account.integrated_account_id)
        {
            pb.set_message(format!(
                "pages {}  users {}  {} users/s  new {}  changed {}  retries {}",
                t.pages,
                t.users_seen,
                rate(t.users_seen, *since),
                t.inserted,
                t.updated,
                t.retries
            ));
        }
    }

    fn finished(&self, account: &AccountSettings, o: &SyncOutcome) {
        if let Some((pb, _)) = self
            .bars
            .lock()
            .expect("bars")
            .remove(&account.integrated_account_id)
        {
            pb.finish_with_message(format!(
                "{}  pages {}  users {}  in {:.1}s",
                o.status_str(),
                o.counts.pages,
                o.counts.users_seen,
                o.elapsed.as_secs_f64()
            ));
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

struct LogLines {
    every: Duration,
    last: Mutex<HashMap<Uuid, (Instant, Instant)>>,
}

impl Progress for LogLines {
    fn started(&self, account: &AccountSettings, resumed: bool) {
        let now = Instant::now();
        self.last
            .lock()
            .expect("progress")
            .insert(account.integrated_account_id, (now, now));
        tracing::info!(account = %account.integrated_account_id, label = %account.display_name(), resumed, "sync started");
    }

    fn page(&self, account: &AccountSettings, t: &RunCounts) {
        let mut last = self.last.lock().expect("progress");
        let Some((since, logged)) = last.get_mut(&account.integrated_account_id) else {
            return;
        };
        if logged.elapsed() >= self.every {
            *logged = Instant::now();
            tracing::info!(
                account = %account.integrated_account_id,
                pages = t.pages,
                users_seen = t.users_seen,
                users_per_sec = rate(t.users_seen, *since),
                inserted = t.inserted,
                updated = t.updated,
                retries = t.retries,
                "sync progress"
            );
        }
    }

    fn finished(&self, account: &AccountSettings, _o: &SyncOutcome) {
        self.last
            .lock()
            .expect("progress")
            .remove(&account.integrated_account_id);
    }
}
