//! `lms-sync bench`: the performance scenarios, measured side by side with their floors in one
//! run on this machine. Each scenario runs the real binary (`lms-sync sync`) as a child process
//! against a simulator child process and a throwaway PostgreSQL, so that CPU and peak memory are
//! the sync's own. Floors: the API floor (a minimal client fetching every page, no processing)
//! and the DB floor (PostgreSQL COPY of the same normalized rows into empty tables with the same
//! keys).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::value::RawValue;
use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::config::Settings;
use crate::devkit::pg::TempPostgres;
use crate::devkit::simulator::{demo_account_id, generate_user, DEMO_TOKEN};
use crate::model::{decode_user, UserRecord};
use crate::store::{CopyRows, Store};

/// How a scenario runs lms-sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `lms-sync sync` of the configured `[[accounts]]`.
    Sync,
    /// `lms-sync sync` of the accounts `[discovery]` finds (no `[[accounts]]`).
    Discovery,
    /// This many `lms-sync run` replicas on one database, until every account has been synced.
    Replicas(u32),
}

/// One performance scenario (issues 4 and 13).
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: &'static str,
    pub accounts: u32,
    pub users: usize,
    pub latency_ms: u64,
    /// Truto's budgets enforced by the simulator (and honoured by the daemon's budget).
    pub rate_limited: bool,
    /// Re-sync of the previous scenario's database, nothing changed upstream.
    pub resync_of: Option<&'static str>,
    pub kind: Kind,
    /// `sync.max_concurrent_accounts` of each process; every account at once when `None`.
    pub max_concurrent: Option<u32>,
}

impl Scenario {
    const fn sync(name: &'static str, accounts: u32, users: usize) -> Scenario {
        Scenario {
            name,
            accounts,
            users,
            latency_ms: 0,
            rate_limited: false,
            resync_of: None,
            kind: Kind::Sync,
            max_concurrent: None,
        }
    }

    /// Requests each account's listing takes (pages of 100).
    fn pages(&self) -> u64 {
        (self.users as u64).div_ceil(100)
    }
}

pub fn scenarios(big: bool) -> Vec<Scenario> {
    let limited = |mut s: Scenario| {
        s.rate_limited = true;
        s
    };
    let mut s = vec![
        Scenario::sync("S1", 1, 100_000),
        Scenario {
            latency_ms: 50,
            ..Scenario::sync("S2", 20, 5_000)
        },
        limited(Scenario::sync("S3", 10, 20_000)),
        Scenario {
            resync_of: Some("S1"),
            ..Scenario::sync("S4", 1, 100_000)
        },
    ];
    if big {
        s.push(Scenario::sync("S5", 1, 1_000_000));
    }
    s.extend([
        // A fleet found by discovery, synced ten accounts at a time (the default).
        limited(Scenario {
            kind: Kind::Discovery,
            max_concurrent: Some(10),
            ..Scenario::sync("S6", 1_000, 200)
        }),
        // Three replicas of four accounts at a time: together they cover the ten.
        limited(Scenario {
            kind: Kind::Replicas(3),
            max_concurrent: Some(4),
            ..Scenario::sync("S7", 10, 20_000)
        }),
        limited(Scenario {
            latency_ms: 300,
            ..Scenario::sync("S8", 10, 20_000)
        }),
    ]);
    s
}

/// `database.max_connections` of every lms-sync process the bench starts.
const POOL: u32 = 20;

/// Truto's limits, as the simulator enforces them in S3 and S6–S8.
pub const BUDGET_PER_ACCOUNT: usize = 50;
pub const BUDGET_PER_TOKEN: usize = 500;
pub const BUDGET_WINDOW_SECS: u64 = 10;

/// The least wall time `requests_per_account` requests of each of `accounts` accounts can take
/// under sliding-window budgets: the last request may go out once enough windows have passed.
pub fn budget_limited_minimum(accounts: u64, requests_per_account: u64) -> Duration {
    token_limited_minimum(accounts * requests_per_account)
        .max(windows(requests_per_account, BUDGET_PER_ACCOUNT as u64))
}

/// The least wall time `requests` requests of one token can take (every one of them at the
/// token's rate, whatever it is for: listings, discovery).
pub fn token_limited_minimum(requests: u64) -> Duration {
    windows(requests, BUDGET_PER_TOKEN as u64)
}

/// Whole windows that must pass before the last of `requests` may go out at `limit` per window.
fn windows(requests: u64, limit: u64) -> Duration {
    Duration::from_secs(requests.div_ceil(limit).saturating_sub(1) * BUDGET_WINDOW_SECS)
}

/// What one measured sync reported.
#[derive(Debug, Default, Clone)]
pub struct Measure {
    pub wall: Duration,
    pub users: u64,
    pub cpu_secs: f64,
    pub peak_rss_kib: u64,
    pub rows_written: i64,
    pub wal_bytes: i64,
    pub requests: i64,
    pub rate_limited: i64,
    pub exit_code: i32,
    /// What the simulator counted (its 429s are the ones that count).
    pub sim: SimCounts,
    /// The most database sessions of lms-sync seen at once (sampled every 20 ms).
    pub max_connections: i64,
    /// Distinct processes (`sync_runs.worker`) that synced an account.
    pub workers: i64,
}

/// The simulator's counters (`GET /__simulator/stats`).
#[derive(Debug, Default, Clone, Deserialize)]
pub struct SimCounts {
    pub requests: u64,
    pub rate_limited: u64,
    pub max_account_window: usize,
    pub max_token_window: usize,
    pub account_listings: u64,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub scenario: Scenario,
    pub sync: Measure,
    pub api_floor: Option<Duration>,
    pub db_floor: Option<Duration>,
    pub budget_minimum: Option<Duration>,
    pub target: String,
    pub met: bool,
    /// How many times the scenario ran, and in how many runs it met its target (the figures
    /// are the middle run's: see [`summarize`]).
    pub runs: usize,
    pub runs_met: usize,
}

/// Resource use of this process, written at exit when `LMS_SYNC_RUSAGE_FILE` is set (the bench
/// reads its children's this way: std has no `wait4`).
pub fn write_rusage_if_asked() {
    let Ok(path) = std::env::var("LMS_SYNC_RUSAGE_FILE") else {
        return;
    };
    let (cpu, rss) = own_rusage();
    let _ = std::fs::write(
        path,
        format!("{{\"cpu_secs\":{cpu},\"peak_rss_kib\":{rss}}}"),
    );
}

/// (CPU seconds, user + system; peak RSS in KiB) of this process, from /proc.
pub fn own_rusage() -> (f64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line; 12 and 13 after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu, rss)
}

struct SimChild {
    // Held for its kill-on-drop: the simulator lives as long as this value.
    _child: Child,
    base_url: String,
}

async fn start_simulator(exe: &Path, s: &Scenario) -> anyhow::Result<SimChild> {
    let mut cmd = Command::new(exe);
    cmd.args([
        "simulate",
        "--listen",
        "127.0.0.1:0",
        "--accounts",
        &s.accounts.to_string(),
        "--users",
        &s.users.to_string(),
        "--same-size",
        "--latency-ms",
        &s.latency_ms.to_string(),
    ]);
    if s.rate_limited {
        cmd.args([
            "--limit-per-account",
            &BUDGET_PER_ACCOUNT.to_string(),
            "--limit-per-token",
            &BUDGET_PER_TOKEN.to_string(),
            "--limit-window-secs",
            &BUDGET_WINDOW_SECS.to_string(),
            // As a vendor that reports its window does: a partly used window must not slow
            // the sync down.
            "--ratelimit-headers",
        ]);
    }
    let mut child = cmd
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("start the simulator")?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let first = lines.next_line().await?.unwrap_or_default();
    let base_url = first
        .rsplit(' ')
        .next()
        .filter(|u| u.starts_with("http://"))
        .with_context(|| format!("unexpected simulator output: {first}"))?
        .to_string();
    // Drain the rest so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(SimChild {
        _child: child,
        base_url,
    })
}

fn config_text(s: &Scenario, base_url: &str) -> String {
    let mut t = format!(
        "[truto]\nbase_url = \"{base_url}\"\npage_size = 100\n\
         [sync]\nprogress = \"off\"\nmax_concurrent_accounts = {}\n\
         [database]\nmax_connections = {}\n\
         [rate_budget]\nenabled = {}\nper_account = {BUDGET_PER_ACCOUNT}\nper_token = {BUDGET_PER_TOKEN}\nwindow_secs = {BUDGET_WINDOW_SECS}\n\
         [log]\nlevel = \"warn\"\n",
        s.max_concurrent.unwrap_or(s.accounts).max(1),
        POOL,
        s.rate_limited
    );
    match s.kind {
        Kind::Sync => {}
        // Every account the simulator lists, and no other.
        Kind::Discovery => {
            t.push_str("[discovery]\nenabled = true\n");
            return t;
        }
        // Once each: the bench waits for every account's first run, then stops them.
        Kind::Replicas(_) => t.push_str(
            "[schedule]\nevery = \"1h\"\njitter = \"0s\"\n[server]\nlisten = \"127.0.0.1:0\"\n",
        ),
    }
    for n in 1..=s.accounts {
        let _ = write!(
            t,
            "[[accounts]]\nintegrated_account_id = \"{}\"\n",
            demo_account_id(n)
        );
    }
    t
}

/// Starts a measurement from a clean slate: the WAL written before it (the previous
/// scenario's, its floor's) is checkpointed now rather than during the measurement, so no
/// scenario or floor pays for another's. Production checkpoints too, but at times of its own.
async fn checkpoint(db: &mut PgConnection) -> anyhow::Result<()> {
    sqlx::query("CHECKPOINT").execute(db).await?;
    Ok(())
}

async fn admin(pg: &TempPostgres) -> anyhow::Result<PgConnection> {
    Ok(PgConnection::connect(&pg.url("postgres")).await?)
}

/// Sum of rows inserted, updated and deleted in the mirrored tables, and the WAL position.
async fn counters(db: &mut PgConnection) -> anyhow::Result<(i64, i64)> {
    let rows: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint FROM pg_stat_user_tables
          WHERE schemaname = 'lms' AND relname IN ('users', 'user_emails', 'user_phones', 'user_managers')",
    )
    .fetch_one(&mut *db)
    .await?;
    let wal: i64 =
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
            .fetch_one(&mut *db)
            .await?;
    Ok((rows, wal))
}

/// Waits until the sync's backends are gone, so that their statistics are flushed.
async fn wait_for_backends_gone(db: &mut PgConnection) -> anyhow::Result<()> {
    for _ in 0..500 {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'lms-sync%'",
        )
        .fetch_one(&mut *db)
        .await?;
        if n == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::bail!("the sync's database sessions did not end")
}

/// The environment of every lms-sync child the bench starts.
fn lms_sync(exe: &Path, cfg: &Path, db_url: &str, rusage: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(["--config", cfg.to_str().expect("utf-8 path")])
        .env("TRUTO_API_TOKEN", DEMO_TOKEN)
        .env("LMS_SYNC__DATABASE__URL", db_url)
        .env("LMS_SYNC_RUSAGE_FILE", rusage)
        // As the Docker image runs it (see the Dockerfile): two allocator arenas.
        .env("MALLOC_ARENA_MAX", "2")
        // LMS_SYNC_BENCH_LOG: the sync's log filter, to look inside a scenario (errors only
        // by default: the generated users' undocumented roles warn once per account).
        .env(
            "RUST_LOG",
            std::env::var("LMS_SYNC_BENCH_LOG").unwrap_or_else(|_| "error".into()),
        )
        .stdout(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// (CPU seconds, peak RSS KiB) a child wrote at exit.
fn read_rusage(path: &Path) -> (f64, u64) {
    #[derive(Deserialize)]
    struct Usage {
        cpu_secs: f64,
        peak_rss_kib: u64,
    }
    let usage = serde_json::from_str::<Usage>(&std::fs::read_to_string(path).unwrap_or_default())
        .map(|u| (u.cpu_secs, u.peak_rss_kib))
        .unwrap_or((0.0, 0));
    let _ = std::fs::remove_file(path);
    usage
}

fn rusage_path() -> PathBuf {
    std::env::temp_dir().join(format!("lms-sync-bench-{}.json", uuid::Uuid::new_v4()))
}

/// Samples how many database sessions lms-sync holds, every 20 ms, until stopped: a
/// measurement taken beside the run, not a synchronization.
struct SessionSampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<i64>,
}

impl SessionSampler {
    async fn start(url: &str) -> anyhow::Result<SessionSampler> {
        let mut conn = PgConnection::connect(url).await?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut most = 0;
            loop {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'lms-sync%'",
                )
                .fetch_one(&mut conn)
                .await
                .unwrap_or(0);
                most = most.max(n);
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = &mut stopped => return most,
                }
            }
        });
        Ok(SessionSampler { stop, task })
    }

    async fn most(self) -> i64 {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(0)
    }
}

async fn sim_counts(base_url: &str) -> anyhow::Result<SimCounts> {
    crate::install_crypto_provider();
    let url = format!("{base_url}{}", crate::devkit::simulator::STATS_PATH);
    let body = reqwest::Client::new()
        .get(url)
        .bearer_auth(DEMO_TOKEN)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    Ok(serde_json::from_slice(&body)?)
}

/// What the lms-sync children did: exit code, wall time, CPU (summed) and peak RSS (the most
/// of any one process).
struct Children {
    exit_code: i32,
    wall: Duration,
    cpu_secs: f64,
    peak_rss_kib: u64,
}

/// One `lms-sync sync`, from start to exit.
async fn one_sync(exe: &Path, cfg: &Path, db_url: &str) -> anyhow::Result<Children> {
    let rusage = rusage_path();
    let started = Instant::now();
    let status = lms_sync(exe, cfg, db_url, &rusage)
        .arg("sync")
        .status()
        .await?;
    let wall = started.elapsed();
    let (cpu_secs, peak_rss_kib) = read_rusage(&rusage);
    Ok(Children {
        exit_code: status.code().unwrap_or(-1),
        wall,
        cpu_secs,
        peak_rss_kib,
    })
}

/// `n` `lms-sync run` replicas, started together, from their start until every one of
/// `accounts` accounts has a run that succeeded (as the database records it); then stopped
/// with SIGTERM. The exit code is the first non-zero one, if any.
async fn replicas(
    exe: &Path,
    cfg: &Path,
    db_url: &str,
    n: u32,
    accounts: u32,
    runs0: i64,
    timeout: Duration,
) -> anyhow::Result<Children> {
    let mut conn = PgConnection::connect(db_url).await?;
    let t0: f64 = sqlx::query_scalar("SELECT extract(epoch FROM clock_timestamp())::float8")
        .fetch_one(&mut conn)
        .await?;
    let mut children = Vec::new();
    for _ in 0..n {
        let rusage = rusage_path();
        let child = lms_sync(exe, cfg, db_url, &rusage)
            .arg("run")
            .stderr(Stdio::null())
            .spawn()
            .context("start a replica")?;
        children.push((child, rusage));
    }
    let started = Instant::now();
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT integrated_account_id) FROM lms.sync_runs
              WHERE run_id > $1 AND outcome = 'succeeded'",
        )
        .bind(runs0)
        .fetch_one(&mut conn)
        .await?;
        if done >= accounts as i64 {
            break;
        }
        if started.elapsed() > timeout {
            anyhow::bail!("the replicas did not sync every account within {timeout:?}");
        }
        // Polling the database for the runs' end; the wall time itself comes from the runs'
        // own finished_at, not from this loop.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t1: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM max(finished_at))::float8 FROM lms.sync_runs WHERE run_id > $1",
    )
    .bind(runs0)
    .fetch_one(&mut conn)
    .await?;
    let mut out = Children {
        exit_code: 0,
        wall: Duration::from_secs_f64((t1 - t0).max(0.0)),
        cpu_secs: 0.0,
        peak_rss_kib: 0,
    };
    for (mut child, rusage) in children {
        if let Some(pid) = child.id() {
            Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await?;
        }
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .context("a replica did not stop within 60 s of SIGTERM")??;
        let code = status.code().unwrap_or(-1);
        if out.exit_code == 0 {
            out.exit_code = code;
        }
        let (cpu, rss) = read_rusage(&rusage);
        out.cpu_secs += cpu;
        out.peak_rss_kib = out.peak_rss_kib.max(rss);
    }
    Ok(out)
}

async fn measure(
    exe: &Path,
    pg: &TempPostgres,
    db: &str,
    cfg: &Path,
    s: &Scenario,
    sim_url: &str,
) -> anyhow::Result<Measure> {
    let url = pg.url(db);
    let mut conn = PgConnection::connect(&url).await?;
    checkpoint(&mut conn).await?;
    let (rows0, wal0) = counters(&mut conn).await?;
    let runs0: i64 = sqlx::query_scalar("SELECT coalesce(max(run_id), 0) FROM lms.sync_runs")
        .fetch_one(&mut conn)
        .await?;
    let sampler = SessionSampler::start(&url).await?;
    let children = match s.kind {
        Kind::Sync | Kind::Discovery => one_sync(exe, cfg, &url).await?,
        Kind::Replicas(n) => {
            let bound = budget_limited_minimum(s.accounts as u64, s.pages()) * 4;
            replicas(
                exe,
                cfg,
                &url,
                n,
                s.accounts,
                runs0,
                bound.max(Duration::from_secs(120)),
            )
            .await?
        }
    };
    let max_connections = sampler.most().await;
    let sim = sim_counts(sim_url).await?;
    wait_for_backends_gone(&mut conn).await?;
    let (rows1, wal1) = counters(&mut conn).await?;
    let (users, requests, limited, workers): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(users_seen), 0)::bigint, coalesce(sum(http_requests), 0)::bigint,
                coalesce(sum(rate_limited), 0)::bigint, count(DISTINCT worker)
           FROM lms.sync_runs WHERE run_id > $1",
    )
    .bind(runs0)
    .fetch_one(&mut conn)
    .await?;
    Ok(Measure {
        wall: children.wall,
        users: users as u64,
        cpu_secs: children.cpu_secs,
        peak_rss_kib: children.peak_rss_kib,
        rows_written: rows1 - rows0,
        wal_bytes: wal1 - wal0,
        // What the server saw: the discovery listing's requests too.
        requests: requests.max(sim.requests as i64),
        rate_limited: limited.max(sim.rate_limited as i64),
        exit_code: children.exit_code,
        sim,
        max_connections,
        workers,
    })
}

/// A minimal client: every page of every account (in parallel), nothing but the cursor parsed.
async fn api_floor(base_url: &str, s: &Scenario) -> anyhow::Result<Duration> {
    crate::install_crypto_provider();
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for n in 1..=s.accounts {
        let client = client.clone();
        let url = format!("{base_url}/unified/lms/users");
        tasks.push(tokio::spawn(async move {
            #[derive(Deserialize)]
            struct Env<'a> {
                #[serde(borrow)]
                #[allow(dead_code)]
                result: &'a RawValue,
                next_cursor: Option<String>,
            }
            let mut cursor: Option<String> = None;
            loop {
                let mut u = reqwest::Url::parse(&url)?;
                u.query_pairs_mut()
                    .append_pair("integrated_account_id", &demo_account_id(n).to_string())
                    .append_pair("limit", "100");
                if let Some(c) = &cursor {
                    u.query_pairs_mut().append_pair("next_cursor", c);
                }
                let resp = client.get(u).bearer_auth(DEMO_TOKEN).send().await?;
                let body = resp.error_for_status()?.bytes().await?;
                let env: Env = serde_json::from_slice(&body)?;
                match env.next_cursor {
                    Some(c) => cursor = Some(c),
                    None => return anyhow::Ok(()),
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(started.elapsed())
}

/// The contract's tables: exactly the mirrored columns of users and their children, with their
/// primary keys and nothing else — the least any mirror must write.
const FLOOR_TABLES: &str = "
CREATE TABLE users (integrated_account_id uuid, id text, name text, first_name text,
    last_name text, username text, job_title text, locale text, timezone text, role text,
    status text, organization_id text, organization_name text, custom_fields jsonb,
    remote_data jsonb, extra jsonb, created_at timestamptz, updated_at timestamptz,
    PRIMARY KEY (integrated_account_id, id));
CREATE TABLE user_emails (integrated_account_id uuid, user_id text, position integer,
    email text, is_primary boolean, type text, PRIMARY KEY (integrated_account_id, user_id, position));
CREATE TABLE user_phones (integrated_account_id uuid, user_id text, position integer,
    number text, extension text, type text, PRIMARY KEY (integrated_account_id, user_id, position));
CREATE TABLE user_managers (integrated_account_id uuid, user_id text, manager_id text,
    manager_name text, manager_emails jsonb, PRIMARY KEY (integrated_account_id, user_id));";

/// The users' columns of the contract: the first 18 of what a sync COPYs (the rest, hashes and
/// bookkeeping, are lms-sync's own and count against it).
const CONTRACT_USER_COLUMNS: usize = 18;

/// The DB floor: COPY, in one transaction on one connection, of the scenario's rows into the
/// contract's tables (see [`FLOOR_TABLES`]).
async fn db_floor(pg: &TempPostgres, s: &Scenario) -> anyhow::Result<Duration> {
    let db = format!("bench_floor_{}", s.name.to_lowercase());
    recreate_database(pg, &db).await?;
    // Build the COPY data first: the floor is the database's work, not ours. The rows are the
    // ones a sync writes, encoded by the same code the sync's COPY path uses.
    let mut rows = CopyRows::default();
    for n in 1..=s.accounts {
        let users: Vec<UserRecord> = (0..s.users)
            .map(|i| decode_user(&generate_user(n as u64, i, s.users).to_string()))
            .collect::<Result<_, _>>()
            .map_err(|r| anyhow::anyhow!(r.reason))?;
        let refs: Vec<&UserRecord> = users.iter().collect();
        rows.add(demo_account_id(n), None, &refs);
    }
    let users: String = rows
        .users
        .lines()
        .map(|l| {
            let mut l = l
                .split('\t')
                .take(CONTRACT_USER_COLUMNS)
                .collect::<Vec<_>>()
                .join("\t");
            l.push('\n');
            l
        })
        .collect();
    let mut conn: PgConnection = sqlx::Connection::connect(&pg.url(&db)).await?;
    sqlx::raw_sql(FLOOR_TABLES).execute(&mut conn).await?;
    checkpoint(&mut conn).await?;
    let started = Instant::now();
    let mut tx = conn.begin().await?;
    for (table, data) in [
        ("users", &users),
        ("user_emails", &rows.emails),
        ("user_phones", &rows.phones),
        ("user_managers", &rows.managers),
    ] {
        let mut copy = tx.copy_in_raw(&format!("COPY {table} FROM STDIN")).await?;
        copy.send(data.as_bytes()).await?;
        copy.finish().await?;
    }
    tx.commit().await?;
    Ok(started.elapsed())
}

async fn migrated_store(pg: &TempPostgres, db: &str) -> anyhow::Result<Store> {
    let settings = Settings::default();
    let store = Store::connect(&SecretString::from(pg.url(db)), &settings.database).await?;
    store.migrate().await?;
    Ok(store)
}

/// Runs the scenarios and returns their rows (and prints them as they finish). With `repeat`
/// above 1 each scenario runs that many times, every time with its floors measured again
/// (see [`summarize`]).
pub async fn run_all(
    list: &[Scenario],
    repeat: usize,
    report: Option<&Path>,
) -> anyhow::Result<Vec<Row>> {
    let exe = std::env::current_exe()?;
    // The server's default durability, as production runs it (fsync on).
    let pg = tokio::task::spawn_blocking(TempPostgres::start_durable).await??;
    let dir = std::env::temp_dir().join(format!("lms-sync-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir)?;
    let mut rows: Vec<Row> = Vec::new();
    println!("{}", header());
    for s in list {
        let mut runs = Vec::with_capacity(repeat);
        for k in 1..=repeat.max(1) {
            let row = run_once(&exe, &pg, &dir, s, &rows).await?;
            if repeat > 1 {
                println!("{}  (run {k} of {repeat})", line(&row));
            }
            runs.push(row);
        }
        let row = summarize(runs);
        println!("{}", line(&row));
        rows.push(row);
    }
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
    if let Some(path) = report {
        std::fs::write(path, markdown(&rows))?;
    }
    Ok(rows)
}

/// One run of a scenario: a fresh simulator (and, for a first sync, a fresh database), the
/// measurement, then its floors.
async fn run_once(
    exe: &Path,
    pg: &TempPostgres,
    dir: &Path,
    s: &Scenario,
    before: &[Row],
) -> anyhow::Result<Row> {
    let sim = start_simulator(exe, s).await?;
    let db = format!("bench_{}", s.resync_of.unwrap_or(s.name).to_lowercase());
    if s.resync_of.is_none() {
        recreate_database(pg, &db).await?;
        migrated_store(pg, &db).await?.pool().close().await;
    }
    let cfg: PathBuf = dir.join(format!("{}.toml", s.name));
    std::fs::write(&cfg, config_text(s, &sim.base_url))?;
    let sync = measure(exe, pg, &db, &cfg, s, &sim.base_url).await?;
    let api = if s.rate_limited {
        None
    } else {
        Some(api_floor(&sim.base_url, s).await?)
    };
    drop(sim);
    // The DB floor is judged in S1 and S2 only (S5 is about memory, and a million rows'
    // COPY data would take a gigabyte to build).
    let dbf = if matches!(s.name, "S1" | "S2") {
        Some(db_floor(pg, s).await?)
    } else {
        None
    };
    let budget = minimum(s, &sync);
    let (target, met) = judge(
        s,
        &sync,
        api,
        dbf,
        budget,
        before.iter().find(|r| r.scenario.name == "S1"),
    );
    Ok(Row {
        scenario: s.clone(),
        sync,
        api_floor: api,
        db_floor: dbf,
        budget_minimum: budget,
        target,
        met,
        runs: 1,
        runs_met: usize::from(met),
    })
}

/// An empty database named `db` (a repeated run starts from nothing, like the first).
async fn recreate_database(pg: &TempPostgres, db: &str) -> anyhow::Result<()> {
    let mut admin = admin(pg).await?;
    // Not "NOTICE: database does not exist, skipping" in the bench's output the first time.
    sqlx::query("SET client_min_messages = warning")
        .execute(&mut admin)
        .await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .execute(&mut admin)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {db}"))
        .execute(&mut admin)
        .await?;
    Ok(())
}

/// The runs of one scenario as one row: the run in the middle when ordered by how close each
/// came to its wall-time bound (by wall time where there is none), so one unlucky or lucky
/// run on a shared machine decides nothing. The scenario is met when most runs met it.
pub fn summarize(mut runs: Vec<Row>) -> Row {
    assert!(!runs.is_empty(), "a scenario runs at least once");
    let margin = |r: &Row| {
        let wall = r.sync.wall.as_secs_f64();
        match wall_bound(&r.scenario, r.api_floor, r.db_floor, r.budget_minimum) {
            Some(b) if b > 0.0 => wall / b,
            _ => wall,
        }
    };
    runs.sort_by(|a, b| margin(a).total_cmp(&margin(b)));
    let n = runs.len();
    let met = runs.iter().filter(|r| r.met).count();
    // The upper middle of an even count: the less flattering of the two.
    let mut row = runs.swap_remove(n / 2);
    row.runs = n;
    row.runs_met = met;
    row.met = 2 * met > n;
    row
}

/// The least wall time the scenario's limits allow, when those are what bound it: the budget
/// (S3, S6, S7) or the latency (S8).
fn minimum(s: &Scenario, m: &Measure) -> Option<Duration> {
    match s.name {
        // Every request, the discovery listing's included, at the token's rate.
        "S6" => Some(token_limited_minimum(m.sim.requests)),
        // The longest account's pages one after another.
        "S8" => Some(Duration::from_millis(s.pages() * s.latency_ms)),
        _ => s
            .rate_limited
            .then(|| budget_limited_minimum(s.accounts as u64, s.pages())),
    }
}

/// Sessions one process may hold: its pool, one lease per account synced at once, and the
/// budget's and discovery's connections of their own.
fn session_bound(s: &Scenario) -> i64 {
    (POOL + s.max_concurrent.unwrap_or(s.accounts)) as i64 + 2
}

/// The most wall time the scenario's target allows, where it has such a bound.
fn wall_bound(
    s: &Scenario,
    api: Option<Duration>,
    db: Option<Duration>,
    budget: Option<Duration>,
) -> Option<f64> {
    let secs = |d: Option<Duration>| d.unwrap_or_default().as_secs_f64();
    match s.name {
        "S1" => Some(1.25 * secs(db)),
        "S2" => Some(1.25 * secs(api).max(secs(db))),
        "S3" | "S6" => Some(1.1 * secs(budget)),
        "S4" => Some(2.0 * secs(api)),
        "S7" => Some(1.15 * secs(budget)),
        "S8" => Some(1.05 * secs(budget)),
        _ => None,
    }
}

fn judge(
    s: &Scenario,
    m: &Measure,
    api: Option<Duration>,
    db: Option<Duration>,
    budget: Option<Duration>,
    s1: Option<&Row>,
) -> (String, bool) {
    let wall = m.wall.as_secs_f64();
    let ok_exit = m.exit_code == 0;
    let bound = wall_bound(s, api, db, budget).unwrap_or(f64::INFINITY);
    match s.name {
        "S1" => (
            format!("wall ≤ 1.25 × DB floor ({bound:.2}s)"),
            ok_exit && wall <= bound,
        ),
        "S2" => (
            format!("wall ≤ 1.25 × max(API, DB floor) ({bound:.2}s)"),
            ok_exit && wall <= bound,
        ),
        "S3" => (
            format!("wall ≤ 1.1 × budget minimum ({bound:.1}s), zero 429s"),
            ok_exit && wall <= bound && m.rate_limited == 0,
        ),
        "S4" => (
            format!("0 rows written, WAL < 1 MB, wall ≤ 2 × API floor ({bound:.2}s)"),
            ok_exit && m.rows_written == 0 && m.wal_bytes < 1_000_000 && wall <= bound,
        ),
        "S5" => {
            let s1_rss = s1.map(|r| r.sync.peak_rss_kib).unwrap_or(0);
            (
                format!("peak RSS ≤ 64 MiB and ≈ S1's ({} MiB)", s1_rss / 1024),
                ok_exit
                    && m.peak_rss_kib <= 64 * 1024
                    && (s1_rss == 0 || m.peak_rss_kib <= s1_rss + s1_rss / 4),
            )
        }
        "S6" => {
            let sessions = session_bound(s);
            (
                format!(
                    "wall ≤ 1.1 × budget minimum ({bound:.1}s), zero 429s, peak RSS ≤ 96 MiB, sessions {} ≤ pool + leases ({sessions})",
                    m.max_connections
                ),
                ok_exit
                    && wall <= bound
                    && m.rate_limited == 0
                    && m.peak_rss_kib <= 96 * 1024
                    && m.max_connections <= sessions,
            )
        }
        "S7" => {
            let n = match s.kind {
                Kind::Replicas(n) => n as i64,
                _ => 1,
            };
            (
                format!(
                    "wall ≤ 1.15 × budget minimum ({bound:.1}s), zero 429s, {} of {n} replicas did work",
                    m.workers
                ),
                ok_exit && wall <= bound && m.rate_limited == 0 && m.workers == n,
            )
        }
        "S8" => (
            format!("wall ≤ 1.05 × latency minimum ({bound:.1}s), zero 429s"),
            ok_exit && wall <= bound && m.rate_limited == 0,
        ),
        _ => (String::new(), ok_exit),
    }
}

fn header() -> String {
    format!(
        "{:<4} {:>9} {:>9} {:>8} {:>9} {:>10} {:>10} {:>8} {:>5} {:>9} {:>9} {:>9}  {}",
        "",
        "wall s",
        "users/s",
        "CPU s",
        "RSS MiB",
        "rows",
        "WAL MB",
        "requests",
        "429s",
        "API fl s",
        "DB fl s",
        "min s",
        "target"
    )
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2}", d.as_secs_f64()))
        .unwrap_or_else(|| "-".into())
}

/// One row's figures, formatted once for the terminal line and the README table.
fn cells(r: &Row) -> [String; 12] {
    let m = &r.sync;
    let wall = m.wall.as_secs_f64();
    [
        r.scenario.name.to_string(),
        format!("{wall:.2}"),
        format!("{:.0}", m.users as f64 / wall.max(1e-9)),
        format!("{:.2}", m.cpu_secs),
        format!("{:.1}", m.peak_rss_kib as f64 / 1024.0),
        m.rows_written.to_string(),
        format!("{:.2}", m.wal_bytes as f64 / 1e6),
        m.requests.to_string(),
        m.rate_limited.to_string(),
        secs(r.api_floor),
        secs(r.db_floor),
        secs(r.budget_minimum),
    ]
}

fn line(r: &Row) -> String {
    let c = cells(r);
    format!(
        "{:<4} {:>9} {:>9} {:>8} {:>9} {:>10} {:>10} {:>8} {:>5} {:>9} {:>9} {:>9}  {} {}",
        c[0],
        c[1],
        c[2],
        c[3],
        c[4],
        c[5],
        c[6],
        c[7],
        c[8],
        c[9],
        c[10],
        c[11],
        verdict(r, "MET", "MISSED"),
        r.target
    )
}

/// Met or not, and with several runs how many of them met the target.
fn verdict(r: &Row, met: &str, missed: &str) -> String {
    let word = if r.met { met } else { missed };
    if r.runs > 1 {
        format!("{word} ({} of {} runs)", r.runs_met, r.runs)
    } else {
        word.to_string()
    }
}

/// The rows as a Markdown table, for the README.
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "| scenario | wall s | users/s | CPU s | peak RSS MiB | rows written | WAL MB | requests | 429s | API floor s | DB floor s | budget / latency min s | target | met |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            cells(r).join(" | "),
            r.target,
            verdict(r, "yes", "**no**")
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s1_run(wall_ms: u64, floor_ms: u64) -> Row {
        let s = scenarios(false).remove(0);
        let sync = Measure {
            wall: Duration::from_millis(wall_ms),
            ..Measure::default()
        };
        let db = Some(Duration::from_millis(floor_ms));
        let (target, met) = judge(&s, &sync, None, db, None, None);
        Row {
            scenario: s,
            sync,
            api_floor: None,
            db_floor: db,
            budget_minimum: None,
            target,
            met,
            runs: 1,
            runs_met: usize::from(met),
        }
    }

    #[test]
    fn repeated_runs_report_the_middle_one_by_margin_and_need_most_to_meet() {
        // Margins (wall / (1.25 x floor)) 1.5, 1.2 and 2.0: the 1.5 run is the middle one,
        // whatever the order the runs came in.
        let row = summarize(vec![
            s1_run(3_000, 1_600),
            s1_run(3_000, 2_000),
            s1_run(2_500, 1_000),
        ]);
        assert_eq!(row.db_floor, Some(Duration::from_millis(1_600)));
        assert_eq!((row.runs, row.runs_met, row.met), (3, 0, false));
        assert!(verdict(&row, "MET", "MISSED").ends_with("(0 of 3 runs)"));

        // Two of three met: met, and the middle run is one that met.
        let row = summarize(vec![
            s1_run(2_000, 2_000),
            s1_run(4_000, 2_000),
            s1_run(2_400, 2_000),
        ]);
        assert_eq!((row.runs_met, row.met), (2, true));
        assert_eq!(row.sync.wall, Duration::from_millis(2_400));

        // One of two is not most: the less flattering run is reported.
        let row = summarize(vec![s1_run(2_000, 2_000), s1_run(4_000, 2_000)]);
        assert!(!row.met);
        assert_eq!(row.sync.wall, Duration::from_millis(4_000));

        // A single run is just that run.
        let row = summarize(vec![s1_run(2_000, 2_000)]);
        assert_eq!((row.runs, row.met), (1, true));
        assert_eq!(verdict(&row, "MET", "MISSED"), "MET");
    }

    #[test]
    fn the_budget_limited_minimum_follows_the_sliding_window_rule() {
        // S3: 10 accounts x 200 pages: 2,000 requests at 500 per 10 s, 200 each at 50 per 10 s.
        assert_eq!(budget_limited_minimum(10, 200), Duration::from_secs(30));
        assert_eq!(budget_limited_minimum(1, 50), Duration::ZERO);
        assert_eq!(budget_limited_minimum(1, 51), Duration::from_secs(10));
        assert_eq!(budget_limited_minimum(20, 50), Duration::from_secs(10));
        // S6: 1,000 accounts x 2 pages and a discovery listing of 10 pages, at 500 per 10 s.
        assert_eq!(token_limited_minimum(2_010), Duration::from_secs(40));
        assert_eq!(token_limited_minimum(2_000), Duration::from_secs(30));
    }
}
