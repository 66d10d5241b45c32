//! What the fleet's suites share: accounts that are also Truto's integrated accounts, the
//! binary's one-off commands with discovery on, a service's config file with discovery, the
//! settings and the listing of a fleet found by discovery only, a command started until it says
//! something, and the time of a log event.

use std::time::Duration;

use super::daemon::BIN;
use super::service::daemon_settings;
use super::*;
use lms_sync::config::Settings;
use lms_sync::devkit::simulator::{Integrated, DEMO_TOKEN};
use lms_sync::sync::discovery::{discover, DiscoveryOutcome};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// An environment whose accounts are also integrated accounts in the simulator.
pub async fn fleet_env(accounts: &[(Uuid, usize)]) -> Env {
    let env = Env::new(accounts).await;
    for (i, (id, _)) in accounts.iter().enumerate() {
        env.sim
            .set_integrated(*id, Integrated::active(&format!("tenant-{i}")));
    }
    env
}

/// Runs the binary with `args` against `env`'s database, discovery on.
pub async fn cli(env: &Env, args: &[&str]) -> std::process::Output {
    cli_with(env, &[], args).await
}

/// As [`cli`], with more environment variables.
pub async fn cli_with(env: &Env, vars: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let (_config, mut command) = cli_command(env, vars, args);
    command.output().await.unwrap()
}

/// The command [`cli_with`] runs, and its configuration file, to keep while it runs.
pub fn cli_command(
    env: &Env,
    vars: &[(&str, &str)],
    args: &[&str],
) -> (TempFile, tokio::process::Command) {
    let cfg = TempFile::new(
        "lms-sync-fleet",
        ".toml",
        format!(
            "[truto]\nbase_url = \"{}\"\n[discovery]\nenabled = true\n[log]\nformat = \"json\"\n",
            env.sim.base_url()
        ),
    );
    let mut command = tokio::process::Command::new(BIN);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TRUTO_API_TOKEN", DEMO_TOKEN)
        .env("LMS_SYNC__DATABASE__URL", &env.db_url)
        .envs(vars.iter().copied())
        .args(["--config", cfg.to_str().unwrap()])
        .args(args);
    (cfg, command)
}

/// The service's config file with discovery on and these `[discovery]` keys (`[[accounts]]`:
/// `configured`).
pub fn discovery_config(env: &Env, configured: &[Uuid], keys: &str) -> TempFile {
    let text = std::fs::read_to_string(&*crate::helpers::daemon::config(
        &env.sim, configured, "1h", 2,
    ))
    .unwrap();
    TempFile::new(
        "lms-sync-discovery",
        ".toml",
        format!("{text}[discovery]\nenabled = true\n{keys}"),
    )
}

/// The time of a log event.
pub fn logged_at(ev: &serde_json::Value) -> chrono::DateTime<chrono::Utc> {
    let at = ev["timestamp"].as_str().unwrap_or_else(|| panic!("{ev}"));
    chrono::DateTime::parse_from_rfc3339(at).unwrap().into()
}

/// Settings for a fleet found by discovery only (no `[[accounts]]`).
pub fn discovering(env: &Env) -> Settings {
    let mut s = daemon_settings(env, "1h");
    s.accounts.clear();
    s.discovery.enabled = true;
    s.discovery.interval = "1h".into();
    s
}

pub async fn discover_now(env: &Env, s: &Settings) -> DiscoveryOutcome {
    discover(
        &env.store,
        &env.client(),
        &s.discovery,
        &CancellationToken::new(),
    )
    .await
}

/// Starts `command` (stdout and stderr piped, killed when dropped) and returns it once a line
/// of its stderr satisfies `seen`, with the rest of its stderr, unread but kept open (the
/// process may go on writing to it). Panics when no such line comes within 60 s, or the
/// command ends first (`what` names the line).
pub async fn start_until(
    mut command: tokio::process::Command,
    what: &str,
    seen: impl Fn(&str) -> bool,
) -> (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("{what} within 60 s"))
            .unwrap()
            .unwrap_or_else(|| panic!("{what} before the command ends"));
        if seen(&line) {
            return (child, lines);
        }
    }
}
