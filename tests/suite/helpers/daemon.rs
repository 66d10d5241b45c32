//! The binary as a child process: `lms-sync run` with a config file, its JSON log parsed into
//! events the tests wait on.

use std::process::Stdio;
use std::time::Duration;

use super::TempFile;
use lms_sync::devkit::simulator::{Simulator, DEMO_TOKEN};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use uuid::Uuid;

pub const BIN: &str = env!("CARGO_BIN_EXE_lms-sync");

pub fn config(sim: &Simulator, accounts: &[Uuid], every: &str, max_concurrent: usize) -> TempFile {
    let mut t = format!(
        "[truto]\nbase_url = \"{}\"\nbackoff_initial_ms = 5\n\
         [sync]\nprogress = \"off\"\nmax_concurrent_accounts = {max_concurrent}\nshutdown_grace_secs = 20\n\
         [schedule]\nevery = \"{every}\"\njitter = \"0s\"\nretry_initial = \"1s\"\n\
         [server]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n",
        sim.base_url()
    );
    for id in accounts {
        t.push_str(&format!("[[accounts]]\nintegrated_account_id = \"{id}\"\n"));
    }
    TempFile::new("lms-sync-proc", ".toml", t)
}

/// `lms-sync sync` with `cfg` against `db`, in a clean environment with the simulator's token.
pub fn one_off_sync(cfg: &std::path::Path, db: &str) -> Command {
    lms_sync(cfg, db, &["sync"])
}

/// `lms-sync --config cfg <args>` against the database `db`, with nothing else from the
/// environment.
pub fn lms_sync(cfg: &std::path::Path, db: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TRUTO_API_TOKEN", DEMO_TOKEN)
        .env("LMS_SYNC__DATABASE__URL", db)
        .args(["--config", cfg.to_str().unwrap()])
        .args(args);
    cmd
}

/// A running `lms-sync run` and the events parsed from its log.
pub struct Daemon {
    pub child: Child,
    pub events: mpsc::UnboundedReceiver<Value>,
    /// The latest events read (time and message), shown when an awaited one does not come.
    seen: std::collections::VecDeque<String>,
}

/// How many of the latest events a timeout shows.
const SEEN: usize = 30;

pub fn spawn(cfg: &std::path::Path, db: &str) -> Daemon {
    spawn_with(cfg, db, &[])
}

/// [`spawn`] with more arguments before `run` (e.g. `--no-migrate`).
pub fn spawn_with(cfg: &std::path::Path, db: &str, args: &[&str]) -> Daemon {
    spawn_env(cfg, db, args, &[("TRUTO_API_TOKEN", DEMO_TOKEN)])
}

/// [`spawn_with`] with `env` instead of the simulator's token in `TRUTO_API_TOKEN` (to give
/// the token in a file, say). An empty `db` sets no database URL (`env` gives it another way).
pub fn spawn_env(cfg: &std::path::Path, db: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
    let db_env: &[(&str, &str)] = if db.is_empty() {
        &[]
    } else {
        &[("LMS_SYNC__DATABASE__URL", db)]
    };
    let mut child = Command::new(BIN)
        .args(["--config", cfg.to_str().unwrap()])
        .args(args)
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .envs(db_env.iter().copied())
        .env("RUST_LOG", "lms_sync=debug,info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start lms-sync run");
    let stderr = child.stderr.take().unwrap();
    let (tx, events) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    Daemon {
        child,
        events,
        seen: Default::default(),
    }
}

impl Daemon {
    /// The next log event whose message is `msg`, within 3 minutes (a process logging other
    /// things all along must not keep a test waiting for a line that never comes).
    pub async fn wait_for(&mut self, msg: &str) -> Value {
        self.wait_for_any(&[msg]).await
    }

    /// Waits for an event saying each of `msgs`, in any order (a message listed twice, for two
    /// events): the events, in the order of `msgs`.
    pub async fn wait_for_each(&mut self, msgs: &[&str]) -> Vec<Value> {
        let mut found: Vec<Option<Value>> = vec![None; msgs.len()];
        while found.iter().any(Option::is_none) {
            let left: Vec<&str> = (0..msgs.len())
                .filter(|&i| found[i].is_none())
                .map(|i| msgs[i])
                .collect();
            let ev = self.wait_for_any(&left).await;
            let said = ev["fields"]["message"].as_str().unwrap_or_default();
            let slot = (0..msgs.len()).find(|&i| found[i].is_none() && msgs[i] == said);
            found[slot.expect("one of those left")] = Some(ev);
        }
        found.into_iter().flatten().collect()
    }

    /// The first event saying one of `msgs`.
    async fn wait_for_any(&mut self, msgs: &[&str]) -> Value {
        let waiting = msgs.join("` or `");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        loop {
            let Ok(ev) = tokio::time::timeout_at(deadline, self.next_event(&waiting)).await else {
                panic!(
                    "no `{waiting}` within 3 minutes; the latest:\n{}",
                    self.latest()
                );
            };
            if msgs.iter().any(|m| ev["fields"]["message"] == *m) {
                return ev;
            }
        }
    }

    /// The next log event, whatever it says (`waiting_for` names what the caller waits for, in
    /// the panic when none comes within 60 s).
    pub async fn next_event(&mut self, waiting_for: &str) -> Value {
        let next = tokio::time::timeout(Duration::from_secs(60), self.events.recv()).await;
        let Ok(next) = next else {
            panic!(
                "no `{waiting_for}` within 60s (and no other event); the latest:\n{}",
                self.latest()
            );
        };
        let Some(ev) = next else {
            panic!(
                "the daemon exited before `{waiting_for}`; the latest:\n{}",
                self.latest()
            );
        };
        if self.seen.len() == SEEN {
            self.seen.pop_front();
        }
        self.seen.push_back(format!(
            "{} {} {}",
            ev["timestamp"].as_str().unwrap_or("-"),
            ev["fields"]["message"].as_str().unwrap_or("-"),
            crate::helpers::shorten_json(&ev["fields"])
        ));
        ev
    }

    /// The latest events read, one a line.
    pub fn latest(&self) -> String {
        self.seen.iter().cloned().collect::<Vec<_>>().join("\n")
    }

    /// The share of the token's budget the next negotiation that changed it gave (-1 if the
    /// event carries none).
    pub async fn next_budget_share(&mut self) -> i64 {
        self.wait_for("request budget share").await["fields"]["share"]
            .as_i64()
            .unwrap_or(-1)
    }

    /// `lms-sync accounts sync-now ACCOUNT` through the database at `db` (it must succeed),
    /// then the daemon's next finished run, as its log event.
    pub async fn sync_now(&mut self, cfg: &std::path::Path, db: &str, account: Uuid) -> Value {
        let o = lms_sync(cfg, db, &["accounts", "sync-now", &account.to_string()])
            .output()
            .await
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        self.wait_for("sync run finished").await
    }

    /// Sends SIGHUP (reload the configuration and the secrets' files).
    pub async fn hangup(&self) {
        let pid = self.child.id().expect("running").to_string();
        let status = Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
    }

    pub async fn terminate(mut self) -> i32 {
        let pid = self.child.id().expect("running").to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .unwrap();
        assert!(status.success());
        let status = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits within the grace period")
            .unwrap();
        status.code().expect("exited, not killed")
    }
}

pub async fn query_one<T>(db: &str, sql: &str) -> T
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send + Unpin,
{
    let store = store_for(db).await;
    let v = sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .unwrap();
    store.pool().close().await;
    v
}

pub async fn store_for(db: &str) -> lms_sync::store::Store {
    let mut s = lms_sync::config::Settings::default();
    s.database.url = Some(secrecy::SecretString::from(db.to_string()));
    lms_sync::store::Store::connect(s.database.url.as_ref().unwrap(), &s.database)
        .await
        .unwrap()
}
