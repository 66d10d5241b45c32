//! Shared test harness: a real PostgreSQL (DATABASE_URL, else a throwaway cluster started once
//! per test binary from the local binaries), a fresh database per test, a real simulator per
//! test, and a field-by-field comparison of the mirror with the simulator's dataset.
#![allow(dead_code)]

pub mod daemon;
pub mod fleet;
pub mod service;

use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use lms_sync::config::{AccountSettings, Settings};
use lms_sync::devkit::pg::TempPostgres;
use lms_sync::devkit::simulator::{Simulator, DEMO_TOKEN};
use lms_sync::source::TrutoClient;
use lms_sync::store::Store;
use lms_sync::sync::{sync_account, NoProgress, SyncOptions, SyncOutcome};
use secrecy::SecretString;
use serde_json::Value;
use sqlx::Row;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

static CLUSTER: OnceLock<TempPostgres> = OnceLock::new();

/// A file of the test's own in the temp directory (a config, a secret), removed when dropped so
/// that a test run leaves nothing behind. Keep it alive while a process it was handed runs.
pub struct TempFile(PathBuf);

impl TempFile {
    /// Writes `contents` to a new file named `{prefix}-{uuid}{suffix}`.
    pub fn new(prefix: &str, suffix: &str, contents: impl AsRef<[u8]>) -> TempFile {
        let path = std::env::temp_dir().join(format!("{prefix}-{}{suffix}", Uuid::new_v4()));
        std::fs::write(&path, contents).expect("write a temp file");
        TempFile(path)
    }
}

/// Writes `text` to `file` in the server's data directory as the server's own file, mode 0600
/// (what it asks of a key file), owned by whoever owns the directory (the `postgres` OS user
/// when the tests run as root).
pub fn write_as_server(data_dir: &str, file: &str, text: &str) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let owner = std::fs::metadata(data_dir).unwrap();
    let path = std::path::Path::new(data_dir).join(file);
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&path, Some(owner.uid()), Some(owner.gid())).unwrap();
}

/// Runs the binary with a clean environment plus `env`.
pub async fn run(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_lms-sync"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.expect("run lms-sync")
}

/// A throwaway cluster of the test's own that listens on a free loopback port too (for what
/// only TCP has: passwords, TLS, keepalives), and that port.
pub async fn tcp_cluster() -> (TempPostgres, u16) {
    let port = free_port();
    let pg = tokio::task::spawn_blocking(move || TempPostgres::start_tcp(port))
        .await
        .unwrap()
        .unwrap();
    (pg, port)
}

/// A cluster of the test's own with an empty database `mirror`, and its URL.
pub async fn own_cluster() -> (lms_sync::devkit::pg::TempPostgres, String) {
    let pg = tokio::task::spawn_blocking(lms_sync::devkit::pg::TempPostgres::start)
        .await
        .unwrap()
        .unwrap();
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&pg.url("postgres"))
        .await
        .unwrap();
    sqlx::query("CREATE DATABASE mirror")
        .execute(&mut admin)
        .await
        .unwrap();
    let url = pg.url("mirror");
    (pg, url)
}

/// A hot standby of `pg` (see [`TempPostgres::start_standby`]), and its URL for database `db`.
pub async fn standby_of(pg: &std::sync::Arc<TempPostgres>, db: &str) -> String {
    let (pg, db) = (pg.clone(), db.to_string());
    tokio::task::spawn_blocking(move || pg.start_standby(&db))
        .await
        .unwrap()
        .unwrap()
}

/// A free loopback port: bound, then released for an outside program (Prometheus,
/// Alertmanager) to take.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A new directory named `{prefix}-{uuid}` under the temp dir, removed with what it holds when
/// dropped (a failed assertion included).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&path).expect("create a temp dir");
        TempDir(path)
    }
}

impl Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A directory laid out as the kubelet mounts a Secret: each key a symbolic link to
/// `..data/<key>`, `..data` a link to a timestamped directory, and an update written to a new
/// directory and put in place by renaming a new `..data` link over the old (so a reader sees
/// the old files or the new, never half of either).
pub struct MountedSecret {
    dir: TempDir,
    version: std::cell::Cell<u32>,
}

impl MountedSecret {
    pub fn new() -> MountedSecret {
        MountedSecret {
            dir: TempDir::new("lms-sync-secret"),
            version: std::cell::Cell::new(0),
        }
    }

    /// Where a key's file is (a link, there before the key is).
    pub fn path(&self, key: &str) -> PathBuf {
        let link = self.dir.join(key);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{key}"), &link).unwrap();
        }
        link
    }

    /// Makes `keys` (name, value) the Secret's whole content.
    pub fn update(&self, keys: &[(&str, &str)]) {
        let n = self.version.get() + 1;
        self.version.set(n);
        let name = format!("..v{n}");
        let fresh = self.dir.join(&name);
        std::fs::create_dir(&fresh).unwrap();
        for (key, value) in keys {
            std::fs::write(fresh.join(key), value).unwrap();
            self.path(key);
        }
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
        if n > 1 {
            std::fs::remove_dir_all(self.dir.join(format!("..v{}", n - 1))).unwrap();
        }
    }
}

impl Deref for TempFile {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempFile {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The URL of the server's maintenance database: DATABASE_URL when set, else a throwaway
/// cluster's. A database test never skips: no server is a failure.
pub fn admin_url() -> String {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        if !url.is_empty() {
            return url;
        }
    }
    CLUSTER
        .get_or_init(|| TempPostgres::start().expect("start a throwaway PostgreSQL for the tests"))
        .url("postgres")
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let mut u = reqwest::Url::parse(url).expect("database url");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

/// A fresh, empty database of its own for one test.
pub async fn fresh_database_url() -> String {
    let admin = admin_url();
    let name = format!("t_{}", Uuid::new_v4().simple());
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .expect("connect to the test server");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create test database");
    with_database(&admin, &name)
}

/// Test settings pointing at `sim` and `db_url`, with fast backoff.
pub fn settings_for(sim: &Simulator, db_url: &str, accounts: &[Uuid]) -> Settings {
    let mut s = Settings::default();
    s.truto.base_url = sim.base_url();
    s.truto.page_size = 100;
    s.truto.request_timeout_secs = 5;
    s.truto.backoff_initial_ms = 5;
    s.truto.backoff_max_secs = 1;
    s.truto.max_attempts = 6;
    s.database.url = Some(SecretString::from(db_url.to_string()));
    s.database.max_connections = 6;
    s.server.listen = String::new();
    s.accounts = accounts.iter().map(|a| AccountSettings::new(*a)).collect();
    s
}

/// Everything one test needs: a simulator, a migrated store, a client.
pub struct Env {
    pub sim: Simulator,
    pub store: Store,
    pub settings: Settings,
    pub db_url: String,
}

impl Env {
    /// A simulator with `accounts` (id, users, seed) and a fresh, migrated database.
    pub async fn new(accounts: &[(Uuid, usize)]) -> Env {
        Env::on(fresh_database_url().await, accounts).await
    }

    /// [`Env::new`] on a database of the test's own (an empty one, of a cluster it started).
    pub async fn on(db_url: String, accounts: &[(Uuid, usize)]) -> Env {
        let sim = Simulator::start(0).await.expect("start simulator");
        for (i, (id, n)) in accounts.iter().enumerate() {
            sim.add_account(*id, *n, 100 + i as u64);
        }
        let ids: Vec<Uuid> = accounts.iter().map(|(id, _)| *id).collect();
        let settings = settings_for(&sim, &db_url, &ids);
        let store = Store::connect(settings.database.url.as_ref().unwrap(), &settings.database)
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        Env {
            sim,
            store,
            settings,
            db_url,
        }
    }

    pub fn client(&self) -> TrutoClient {
        TrutoClient::new(
            &self.settings.truto,
            &SecretString::from(DEMO_TOKEN.to_string()),
        )
        .expect("client")
    }

    pub fn account(&self, id: Uuid) -> AccountSettings {
        self.settings
            .account(id)
            .cloned()
            .unwrap_or_else(|| AccountSettings::new(id))
    }

    /// One pass over `id` with the env's settings.
    pub async fn sync(&self, id: Uuid) -> SyncOutcome {
        self.sync_with(&self.account(id), &CancellationToken::new(), &NoProgress)
            .await
    }

    pub async fn sync_with(
        &self,
        account: &AccountSettings,
        cancel: &CancellationToken,
        progress: &dyn lms_sync::sync::Progress,
    ) -> SyncOutcome {
        sync_account(
            &self.store,
            &self.client(),
            account,
            &SyncOptions::from_settings(&self.settings),
            cancel,
            progress,
        )
        .await
    }

    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(self.store.pool())
            .await
            .expect(sql)
    }
}

pub fn account_id(n: u128) -> Uuid {
    Uuid::from_u128(0x7e57_0000_0000_4000_8000_0000_0000_0000 | n)
}

fn opt_str(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s.clone()),
        None | Some(Value::Null) => None,
        Some(other) => panic!("expected a string, got {other}"),
    }
}

fn opt_time(v: Option<&Value>) -> Option<DateTime<Utc>> {
    opt_str(v).map(|s| {
        DateTime::parse_from_rfc3339(&s)
            .expect("simulator timestamps are RFC 3339")
            .with_timezone(&Utc)
    })
}

fn opt_json(v: Option<&Value>) -> Option<Value> {
    match v {
        None | Some(Value::Null) => None,
        Some(v) => Some(v.clone()),
    }
}

/// Asserts that the mirror of `account` equals the simulator's dataset, field by field: every
/// expected user is live with every column, email, phone and manager link as listed, and every
/// other user of the account is marked deleted.
pub async fn assert_mirror(store: &Store, sim: &Simulator, account: Uuid) {
    let expected = sim.expected_users(account);
    let rows = sqlx::query(
        "SELECT id, name, first_name, last_name, username, job_title, locale, timezone, role,
                status, organization_id, organization_name, custom_fields, remote_data,
                extra, created_at, updated_at, deleted_at
           FROM users WHERE integrated_account_id = $1",
    )
    .bind(account)
    .fetch_all(store.pool())
    .await
    .unwrap();
    let mut db: BTreeMap<String, sqlx::postgres::PgRow> = rows
        .into_iter()
        .map(|r| (r.get::<String, _>("id"), r))
        .collect();
    let emails = children(store, account, "SELECT user_id, email, is_primary::text, type FROM user_emails WHERE integrated_account_id = $1 ORDER BY user_id, position").await;
    let phones = children(store, account, "SELECT user_id, number, extension, type FROM user_phones WHERE integrated_account_id = $1 ORDER BY user_id, position").await;
    let managers: BTreeMap<String, ManagerLink> = sqlx::query(
        "SELECT user_id, manager_id, manager_name, manager_emails FROM user_managers WHERE integrated_account_id = $1",
    )
    .bind(account)
    .fetch_all(store.pool())
    .await
    .unwrap()
    .into_iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
    .collect();

    for u in &expected {
        let id = u["id"].as_str().unwrap();
        let row = db
            .remove(id)
            .unwrap_or_else(|| panic!("user {id} of {account} is missing"));
        let deleted: Option<DateTime<Utc>> = row.get("deleted_at");
        assert!(
            deleted.is_none(),
            "user {id} is live upstream but marked deleted"
        );
        for f in [
            "name",
            "first_name",
            "last_name",
            "username",
            "job_title",
            "locale",
            "timezone",
            "role",
            "status",
        ] {
            let got: Option<String> = row.get(f);
            assert_eq!(got, opt_str(u.get(f)), "user {id}: field {f}");
        }
        let org = u.get("organization");
        let got: Option<String> = row.get("organization_id");
        assert_eq!(
            got,
            opt_str(org.and_then(|o| o.get("id"))),
            "user {id}: organization_id"
        );
        let got: Option<String> = row.get("organization_name");
        assert_eq!(
            got,
            opt_str(org.and_then(|o| o.get("name"))),
            "user {id}: organization_name"
        );
        for f in ["custom_fields", "remote_data"] {
            let got: Option<Value> = row.get(f);
            assert_eq!(got, opt_json(u.get(f)), "user {id}: field {f}");
        }
        let unknown: serde_json::Map<String, Value> = u
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| !lms_sync::model::KNOWN_FIELDS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let got: Option<Value> = row.get("extra");
        let want = (!unknown.is_empty()).then_some(Value::Object(unknown));
        assert_eq!(got, want, "user {id}: extra (unknown fields)");
        for f in ["created_at", "updated_at"] {
            let got: Option<DateTime<Utc>> = row.get(f);
            assert_eq!(got, opt_time(u.get(f)), "user {id}: field {f}");
        }
        let want_emails: Vec<[Option<String>; 3]> = u
            .get("emails")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter(|e| !e.is_null())
                    .map(|e| {
                        [
                            opt_str(e.get("email")),
                            e.get("is_primary")
                                .and_then(Value::as_bool)
                                .map(|b| b.to_string()),
                            opt_str(e.get("type")),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            emails.get(id).cloned().unwrap_or_default(),
            want_emails,
            "user {id}: emails"
        );
        let want_phones: Vec<[Option<String>; 3]> = u
            .get("phones")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter(|p| !p.is_null())
                    .map(|p| {
                        [
                            opt_str(p.get("number")),
                            opt_str(p.get("extension")),
                            opt_str(p.get("type")),
                        ]
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            phones.get(id).cloned().unwrap_or_default(),
            want_phones,
            "user {id}: phones"
        );
        let want_manager = u.get("manager").filter(|m| m.is_object()).map(|m| {
            (
                opt_str(m.get("id")),
                opt_str(m.get("name")),
                opt_json(m.get("emails")),
            )
        });
        assert_eq!(
            managers.get(id).cloned(),
            want_manager,
            "user {id}: manager"
        );
    }
    // Users served as hand-written raw records are checked by their tests themselves.
    let raw = sim.raw_ids(account);
    for (id, row) in db {
        if raw.contains(&id) {
            continue;
        }
        let deleted: Option<DateTime<Utc>> = row.get("deleted_at");
        assert!(
            deleted.is_some(),
            "user {id} is gone upstream but live in the mirror"
        );
    }
}

/// (manager_id, manager_name, manager_emails) as stored.
type ManagerLink = (Option<String>, Option<String>, Option<Value>);

async fn children(
    store: &Store,
    account: Uuid,
    sql: &str,
) -> BTreeMap<String, Vec<[Option<String>; 3]>> {
    let mut out: BTreeMap<String, Vec<[Option<String>; 3]>> = BTreeMap::new();
    for r in sqlx::query(sql)
        .bind(account)
        .fetch_all(store.pool())
        .await
        .unwrap()
    {
        out.entry(r.get(0))
            .or_default()
            .push([r.get(1), r.get(2), r.get(3)]);
    }
    out
}

/// Where the account's next run would resume its listing (`sync_state.cursor`; None: from
/// the first page).
pub async fn stored_cursor(store: &Store, account: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT cursor FROM sync_state WHERE integrated_account_id = $1")
        .bind(account)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// Every row version of the mirrored tables: (table, ctid, xmin, xmax). Any update, delete,
/// re-insert or row lock changes it, so equal snapshots mean nothing was written.
pub async fn row_versions(store: &Store) -> Vec<(String, String, String, String)> {
    let mut all = Vec::new();
    for t in ["users", "user_emails", "user_phones", "user_managers"] {
        let rows: Vec<(String, String, String)> = sqlx::query_as(&format!(
            "SELECT ctid::text, xmin::text, xmax::text FROM {t} ORDER BY ctid"
        ))
        .fetch_all(store.pool())
        .await
        .unwrap();
        all.extend(rows.into_iter().map(|(c, x, m)| (t.to_string(), c, x, m)));
    }
    all
}

/// Row versions of one user's rows only.
pub async fn user_row_versions(store: &Store, account: Uuid, id: &str) -> Vec<String> {
    let mut all = Vec::new();
    for t in ["users", "user_emails", "user_phones", "user_managers"] {
        let key = if t == "users" { "id" } else { "user_id" };
        let rows: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT ctid::text || '/' || xmin::text || '/' || xmax::text FROM {t}
              WHERE integrated_account_id = $1 AND {key} = $2 ORDER BY ctid"
        ))
        .bind(account)
        .bind(id)
        .fetch_all(store.pool())
        .await
        .unwrap();
        all.extend(rows.into_iter().map(|r| format!("{t}:{r}")));
    }
    all
}

pub const SHORT: Duration = Duration::from_millis(10);

/// How many `user_changes` rows there are of each kind.
pub async fn kinds(env: &Env) -> BTreeMap<String, i64> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT kind, count(*) FROM user_changes GROUP BY kind")
            .fetch_all(env.store.pool())
            .await
            .unwrap();
    rows.into_iter().collect()
}

/// Which sessions [`wait_for_no_session`] waits to see gone.
pub enum Sessions<'a> {
    /// Of this role.
    OfRole(&'a str),
    /// With this `application_name`.
    Named(&'a str),
}

/// Waits until the test's database has none of `which` sessions (a process's backends end a
/// moment after it exits, or when they notice their connection is gone).
pub async fn wait_for_no_session(env: &Env, which: Sessions<'_>) {
    let (column, value) = match which {
        Sessions::OfRole(role) => ("usename", role),
        Sessions::Named(name) => ("application_name", name),
    };
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND {column} = $1"
    );
    for _ in 0..500 {
        let n: i64 = sqlx::query_scalar(&sql)
            .bind(value)
            .fetch_one(env.store.pool())
            .await
            .unwrap();
        if n == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("sessions with {column} {value} are still there after 5 s");
}

/// Makes the database take no writes, as a service meets it mid-failover or in a managed
/// service's storage-full mode: its new sessions read-only and every other session of it ended
/// (the old primary restarting as a standby); or takes writes again for new sessions (those
/// opened meanwhile stay read-only, as on a demoted primary). Through `admin`, opened before.
pub async fn takes_writes(admin: &mut sqlx::PgConnection, writes: bool) {
    let setting = if writes {
        "RESET default_transaction_read_only"
    } else {
        "SET default_transaction_read_only = on"
    };
    sqlx::raw_sql(&format!(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I {setting}', current_database()); END $$"
    ))
    .execute(&mut *admin)
    .await
    .unwrap();
    if !writes {
        // Every session that may have read the setting before it changed: one still starting
        // then shows up in pg_stat_activity only once it has, so look until none is left.
        let altered: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
            .fetch_one(&mut *admin)
            .await
            .unwrap();
        loop {
            let ended: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid()
                    AND backend_start <= $1",
            )
            .bind(altered)
            .fetch_all(&mut *admin)
            .await
            .unwrap();
            if ended.is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// A session of someone else's (named `application` in `pg_stat_activity`, `search_path` lms)
/// that has run `BEGIN; {sql}` and holds what it took until the test sends `COMMIT` or drops
/// it: a DBA's `LOCK TABLE`, an analyst's open transaction.
pub async fn session_holding(url: &str, application: &str, sql: &str) -> sqlx::PgConnection {
    use sqlx::ConnectOptions;
    let mut conn = url
        .parse::<sqlx::postgres::PgConnectOptions>()
        .unwrap()
        .application_name(application)
        .options([("search_path", "lms")])
        .connect()
        .await
        .unwrap();
    sqlx::raw_sql(&format!("BEGIN; {sql}"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

/// All a command said: its log (stderr), then its report (stdout), for a message that may be
/// on either.
pub fn said(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    )
}

/// The body of a GET that must answer (a page or `/metrics` of the ops server).
pub async fn get_text(url: &str) -> String {
    lms_sync::install_crypto_provider();
    reqwest::get(url)
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
        .text()
        .await
        .unwrap()
}

/// The value of the unlabelled metric `name` in a /metrics text.
pub fn gauge(metrics: &str, name: &str) -> Option<f64> {
    let prefix = format!("{name}{{}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// Makes sure the outside program `bin` that a suite drives for real (Prometheus, Alertmanager,
/// Chromium, iptables) is installed, installing Debian's `package` when it is not (as root,
/// with Debian's registry reachable): so `cargo test` on a fresh machine sets up what it needs
/// itself, as `.ci/run` does beforehand. Once per package and test run; fails naming the
/// package when it cannot.
pub fn ensure_tool(bin: &str, package: &str) {
    static INSTALLING: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let found = || {
        std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .any(|d| d.join(bin).is_file())
    };
    let mut updated = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if found() {
        return;
    }
    let apt = |args: &[&str]| {
        std::process::Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !*updated {
        *updated = apt(&["update", "-qq"]);
    }
    assert!(
        apt(&["install", "-y", "-qq", package]) && found(),
        "{bin} is needed and could not be installed: install Debian's package `{package}` (as root: apt-get install {package}), or run .ci/run, which does"
    );
}

/// `v` as JSON, cut to 300 characters (for a line of a test's failure message).
pub fn shorten_json(v: &serde_json::Value) -> String {
    let text = v.to_string();
    match text.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}
