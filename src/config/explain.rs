//! Each setting's value and the layer it came from, for `lms-sync config`: an operator with a
//! config file, a ConfigMap's env, a Secret's files and the built-in defaults can see what a
//! process would run with, and why, before it runs (a variable misspelled, a file key that an
//! env var overrides, a `DATABASE_URL` that another setting shadows).
//!
//! Secrets are never in it: only whether each is set, where from, and for the database URL
//! its host and database with the password and every unknown parameter's value masked.

use serde::ser::Serializer;

use super::*;

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Built in.
    Default,
    /// The config file.
    File,
    /// This environment variable.
    Env(String),
    /// A command-line flag (`--no-migrate`).
    Flag(&'static str),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File => f.write_str("file"),
            Origin::Env(var) => write!(f, "env {var}"),
            Origin::Flag(flag) => f.write_str(flag),
        }
    }
}

impl Serialize for Origin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Where a secret came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretOrigin {
    Unset,
    /// This environment variable.
    Env(&'static str),
    /// The config file's key (only the database URL may be written there).
    ConfigFile,
    /// The file that this key names, read now.
    File {
        key: &'static str,
        path: PathBuf,
    },
}

impl std::fmt::Display for SecretOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretOrigin::Unset => f.write_str("unset"),
            SecretOrigin::Env(var) => write!(f, "env {var}"),
            SecretOrigin::ConfigFile => f.write_str("file"),
            SecretOrigin::File { key, path } => write!(f, "{key} {}", path.display()),
        }
    }
}

impl Serialize for SecretOrigin {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One key of a section.
#[derive(Debug, Clone, Serialize)]
pub struct Setting {
    /// `section.key`, as the config reference names it.
    pub key: String,
    /// `null` when unset.
    pub value: serde_json::Value,
    pub from: Origin,
    /// The config file's value, when an env var (or a flag) replaced it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_value: Option<serde_json::Value>,
}

/// One secret: never its value.
#[derive(Debug, Clone, Serialize)]
pub struct Secret {
    /// `section.name`: `database.url`, `truto.api_token`, `server.admin_token`,
    /// `webhooks.secret`.
    pub name: &'static str,
    pub set: bool,
    pub from: SecretOrigin,
    /// The database URL with its password and unknown parameters' values masked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shown: Option<String>,
}

/// What `lms-sync config` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Explained {
    /// The config file read, if any.
    pub config_file: Option<PathBuf>,
    /// [`Settings::digest`]: what `lms-sync status` and the status page show for each replica.
    pub digest: String,
    /// Every key of every section (accounts aside), sections in the reference's order, keys
    /// sorted within each.
    pub settings: Vec<Setting>,
    /// `[[accounts]]` as configured (keys left unset omitted).
    pub accounts: Vec<serde_json::Value>,
    /// `[[tenants]]` as configured (keys left unset omitted).
    pub tenants: Vec<serde_json::Value>,
    pub secrets: Vec<Secret>,
    /// What the operator may not expect: a variable that is not read, one that another
    /// setting shadows.
    pub notes: Vec<String>,
}

/// The sections, in the order of the config reference.
const SECTIONS: &[&str] = &[
    "truto",
    "database",
    "sync",
    "schedule",
    "rate_budget",
    "server",
    "webhooks",
    "history",
    "log",
    "discovery",
    "account_defaults",
];

/// The secrets, each with its env var (which wins) and the key naming its file.
const SECRETS: &[(&str, &str, &str)] = &[
    ("truto.api_token", TOKEN_ENV, "truto.api_token_file"),
    (
        "server.admin_token",
        ADMIN_TOKEN_ENV,
        "server.admin_token_file",
    ),
    (
        "webhooks.secret",
        WEBHOOK_SECRET_ENV,
        "webhooks.secret_file",
    ),
];

impl Settings {
    /// The settings as [`Settings::load_from`] loads them, with where each value came from.
    /// Reads the secrets' files, as `run` does at start: one that cannot be read is the same
    /// error here.
    pub fn explain(
        path: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<(Settings, Explained), ConfigError> {
        let (settings, read) = Self::load_with_file(path, env)?;
        let file_table = match &read {
            Some((_, text)) => text
                .parse::<toml::Table>()
                .map_err(|e| ConfigError(format!("config file is not valid TOML: {e}")))?,
            None => toml::Table::new(),
        };
        let value = serde_json::to_value(&settings)
            .map_err(|e| ConfigError(format!("cannot show the settings: {e}")))?;
        let mut out = Explained {
            config_file: read.map(|(path, _)| path),
            digest: settings.digest(),
            settings: Vec::new(),
            accounts: Vec::new(),
            tenants: Vec::new(),
            secrets: Vec::new(),
            notes: Vec::new(),
        };
        let vars: Vec<(String, &str)> = env
            .iter()
            .filter_map(|(k, _)| {
                let rest = k.strip_prefix(ENV_PREFIX)?.strip_prefix("__")?;
                Some((rest.to_ascii_lowercase().replace("__", "."), k.as_str()))
            })
            .collect();
        for section in SECTIONS {
            let Some(serde_json::Value::Object(keys)) = value.get(*section) else {
                continue;
            };
            for (name, v) in keys {
                let key = format!("{section}.{name}");
                let in_file = file_table
                    .get(*section)
                    .and_then(toml::Value::as_table)
                    .and_then(|t| t.get(name))
                    .map(|v| serde_json::to_value(v).unwrap_or(serde_json::Value::Null));
                let by_env = vars
                    .iter()
                    .filter(|(path, _)| *path == key || path.starts_with(&format!("{key}.")))
                    .map(|(_, var)| *var)
                    .min();
                let (from, file_value) = match (by_env, in_file) {
                    (Some(var), file_value) => (Origin::Env(var.to_string()), file_value),
                    (None, Some(_)) => (Origin::File, None),
                    (None, None) => (Origin::Default, None),
                };
                out.settings.push(Setting {
                    key,
                    value: v.clone(),
                    from,
                    file_value,
                });
            }
        }
        if let Some(serde_json::Value::Array(accounts)) = value.get("accounts") {
            out.accounts = accounts.iter().map(without_nulls).collect();
        }
        if let Some(serde_json::Value::Array(tenants)) = value.get("tenants") {
            out.tenants = tenants.iter().map(without_nulls).collect();
        }
        if !settings.tenants.is_empty() && !settings.discovery.enabled {
            out.notes.push(
                "[[tenants]] is not read: discovery.enabled is false (a tenant's entry is for \
                 the accounts discovery finds)"
                    .into(),
            );
        }
        out.notes.extend(settings.exclusions_dropped());
        out.secrets
            .push(database_url(&settings, &file_table, env, &mut out.notes));
        for (name, var, key) in SECRETS {
            let file = match *key {
                "truto.api_token_file" => settings.truto.api_token_file.as_deref(),
                "server.admin_token_file" => settings.server.admin_token_file.as_deref(),
                _ => settings.webhooks.secret_file.as_deref(),
            };
            let from_env = env.iter().any(|(k, v)| k == var && !v.trim().is_empty());
            let from = match (from_env, file) {
                (true, Some(path)) => {
                    out.notes.push(format!(
                        "{key} ({}) is not read: {var} is set, and wins",
                        path.display()
                    ));
                    SecretOrigin::Env(var)
                }
                (true, None) => SecretOrigin::Env(var),
                (false, Some(path)) => {
                    // Read as `run` reads it: a file it could not read fails here too.
                    load::secret_file(key, path)?;
                    SecretOrigin::File {
                        key,
                        path: path.to_path_buf(),
                    }
                }
                (false, None) => SecretOrigin::Unset,
            };
            out.secrets.push(Secret {
                name,
                set: from != SecretOrigin::Unset,
                from,
                shown: None,
            });
        }
        for (var, _) in env {
            if let Some(rest) = var.strip_prefix("LMS_SYNC_") {
                if !rest.starts_with('_') && rest.contains("__") {
                    out.notes.push(format!(
                        "{var} is not read: a setting's variable starts with {ENV_PREFIX}__ \
                         (two underscores), as {ENV_PREFIX}__{rest}"
                    ));
                }
            }
        }
        out.notes.sort();
        Ok((settings, out))
    }
}

/// The keys `run` reads once, at start: a reload (SIGHUP) that changes one leaves the value the
/// process started with in force until a restart. Every other key follows a reload (the next
/// round, the next listing, the next request), and so does every secret's file.
pub const FIXED_AT_START: &[&str] = &[
    "truto.base_url",
    "truto.page_size",
    "truto.request_timeout_secs",
    "truto.connect_timeout_secs",
    "truto.max_attempts",
    "truto.max_retry_wait_secs",
    "truto.backoff_initial_ms",
    "truto.backoff_max_secs",
    "truto.max_body_mb",
    "database.schema",
    "database.max_connections",
    "database.connect_timeout_secs",
    "database.migrate",
    "database.migration_lock_timeout_secs",
    "database.keepalive_timeout_secs",
    "rate_budget.enabled",
    "rate_budget.per_account",
    "rate_budget.per_token",
    "rate_budget.window_secs",
    "server.listen",
    "server.per_account_counters",
    "server.account_metrics",
    "log.format",
    "log.level",
];

impl Settings {
    /// The keys of [`FIXED_AT_START`] whose value `reloaded` changes, and `database.url` when
    /// it changes other than through `database.url_file` (which is read again by itself).
    pub fn changed_fixed_at_start(&self, reloaded: &Settings) -> Vec<&'static str> {
        let (Ok(before), Ok(after)) = (serde_json::to_value(self), serde_json::to_value(reloaded))
        else {
            return Vec::new();
        };
        let at = |v: &serde_json::Value, key: &str| {
            let (section, name) = key.split_once('.').unwrap_or((key, ""));
            v.get(section).and_then(|s| s.get(name)).cloned()
        };
        let mut changed: Vec<&'static str> = FIXED_AT_START
            .iter()
            .copied()
            .filter(|key| at(&before, key) != at(&after, key))
            .collect();
        let url = |s: &Settings| {
            (!s.database.url_from_file)
                .then(|| {
                    s.database
                        .url
                        .as_ref()
                        .map(|u| u.expose_secret().to_string())
                })
                .flatten()
        };
        if url(self) != url(reloaded) {
            changed.push("database.url");
        }
        changed
    }
}

/// The keys that are each process's own, left out when replicas' configurations are compared:
/// where it listens (replicas on one host each need a port of their own) and where it reads
/// its secrets (systemd hands each unit its credentials in a directory of its own). Neither
/// changes what a replica does to the accounts; a secret's value that differs shows as Truto
/// or the database refusing one replica.
pub const PER_PROCESS: [(&str, &str); 5] = [
    ("server", "listen"),
    ("server", "admin_token_file"),
    ("truto", "api_token_file"),
    ("database", "url_file"),
    ("webhooks", "secret_file"),
];

impl Settings {
    /// The settings as two replicas' configurations are compared: every section's keys and
    /// the accounts, as JSON; the secrets (which are not settings), `[log]` (which a replica
    /// may turn up on its own) and the keys of `PER_PROCESS` aside.
    pub fn comparable(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(sections) = value.as_object_mut() {
            sections.remove("log");
            for (section, key) in PER_PROCESS {
                if let Some(keys) = sections.get_mut(section).and_then(|s| s.as_object_mut()) {
                    keys.remove(key);
                }
            }
        }
        value
    }

    /// A short digest of [`Settings::comparable`]: two processes with the same one run with the
    /// same configuration. Recorded with each replica's share of the request budget, and
    /// printed by `lms-sync config`.
    pub fn digest(&self) -> String {
        digest_of(&self.comparable())
    }
}

/// The digest of a [`Settings::comparable`] value.
pub fn digest_of(comparable: &serde_json::Value) -> String {
    use sha2::Digest as _;
    // serde_json's maps are sorted: the same settings give the same text.
    let text = serde_json::to_vec(comparable).unwrap_or_default();
    hex::encode(&sha2::Sha256::digest(&text)[..6])
}

/// How configuration `theirs` differs from `ours` (both [`Settings::comparable`] values), in
/// words, at most `most` items (then how many more): each key whose value differs
/// (`history.retention_days 30, not 0`), and the accounts configured in one and not the
/// other, or configured differently.
pub fn differences(
    theirs: &serde_json::Value,
    ours: &serde_json::Value,
    most: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    let empty = serde_json::Map::new();
    let sections = |v: &serde_json::Value| -> Vec<String> {
        v.as_object()
            .map(|o| {
                o.keys()
                    .filter(|k| !ENTRIES.iter().any(|(list, _)| *k == list))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut names = sections(theirs);
    names.extend(sections(ours));
    names.sort();
    names.dedup();
    let shown = |v: Option<&serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => "unset".to_string(),
        Some(v) => v.to_string(),
    };
    for section in names {
        let t = theirs
            .get(&section)
            .and_then(|v| v.as_object())
            .unwrap_or(&empty);
        let o = ours
            .get(&section)
            .and_then(|v| v.as_object())
            .unwrap_or(&empty);
        let mut keys: Vec<&String> = t.keys().chain(o.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            if t.get(key) != o.get(key) {
                out.push(format!(
                    "{section}.{key} {}, not {}",
                    shown(t.get(key)),
                    shown(o.get(key))
                ));
            }
        }
    }
    for (list, id_key) in ENTRIES {
        entries_differ(&mut out, theirs, ours, list, id_key);
    }
    if out.len() > most {
        let more = out.len() - most;
        out.truncate(most);
        out.push(format!("{more} more"));
    }
    out
}

/// The lists of entries, each keyed by one of its keys: compared entry by entry.
const ENTRIES: [(&str, &str); 2] = [
    ("accounts", "integrated_account_id"),
    ("tenants", "tenant_id"),
];

/// The entries of `list` (`accounts`, `tenants`) configured in one and not the other, or
/// configured differently, by their `id_key`: `accounts: also <id>`, `tenants: 3 of them
/// configured otherwise`.
fn entries_differ(
    out: &mut Vec<String>,
    theirs: &serde_json::Value,
    ours: &serde_json::Value,
    list: &str,
    id_key: &str,
) {
    let entries = |v: &serde_json::Value| -> BTreeMap<String, serde_json::Value> {
        v.get(list)
            .and_then(|a| a.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|entry| {
                        let id = entry.get(id_key)?.as_str()?.to_string();
                        Some((id, entry.clone()))
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let (t, o) = (entries(theirs), entries(ours));
    let only = |a: &BTreeMap<String, serde_json::Value>,
                b: &BTreeMap<String, serde_json::Value>| {
        a.keys()
            .filter(|id| !b.contains_key(*id))
            .cloned()
            .collect::<Vec<_>>()
    };
    let (more, fewer) = (only(&t, &o), only(&o, &t));
    let changed: Vec<String> = t
        .iter()
        .filter(|(id, a)| o.get(*id).is_some_and(|b| b != *a))
        .map(|(id, _)| id.clone())
        .collect();
    let listed = |ids: &[String]| match ids {
        [one] => one.clone(),
        many => format!("{} of them", many.len()),
    };
    if !more.is_empty() {
        out.push(format!("{list}: also {}", listed(&more)));
    }
    if !fewer.is_empty() {
        out.push(format!("{list}: not {}", listed(&fewer)));
    }
    if !changed.is_empty() {
        out.push(format!("{list}: {} configured otherwise", listed(&changed)));
    }
}

impl Explained {
    /// The setting `key` (`section.name`).
    pub fn setting_mut(&mut self, key: &str) -> Option<&mut Setting> {
        self.settings.iter_mut().find(|s| s.key == key)
    }
}

/// Where the database URL came from, in [`Settings::load_from`]'s order: `database.url` (env,
/// then file), `DATABASE_URL`, `database.url_file`.
fn database_url(
    settings: &Settings,
    file: &toml::Table,
    env: &[(String, String)],
    notes: &mut Vec<String>,
) -> Secret {
    let var = env_name("database.url");
    let in_file = file
        .get("database")
        .and_then(toml::Value::as_table)
        .is_some_and(|t| t.contains_key("url"));
    let from = if env.iter().any(|(k, _)| *k == var) {
        SecretOrigin::Env("LMS_SYNC__DATABASE__URL")
    } else if in_file {
        SecretOrigin::ConfigFile
    } else if env
        .iter()
        .any(|(k, v)| k == "DATABASE_URL" && !v.is_empty())
    {
        SecretOrigin::Env("DATABASE_URL")
    } else if let (true, Some(path)) =
        (settings.database.url_from_file, &settings.database.url_file)
    {
        SecretOrigin::File {
            key: "database.url_file",
            path: path.clone(),
        }
    } else {
        SecretOrigin::Unset
    };
    let database_url_set = env
        .iter()
        .any(|(k, v)| k == "DATABASE_URL" && !v.is_empty());
    let winner = match &from {
        SecretOrigin::Env("DATABASE_URL") => Some("DATABASE_URL is set".to_string()),
        SecretOrigin::Env(_) | SecretOrigin::ConfigFile => {
            Some(format!("database.url is set ({from})"))
        }
        _ => None,
    };
    if let Some(winner) = winner {
        if database_url_set && from != SecretOrigin::Env("DATABASE_URL") {
            notes.push(format!("DATABASE_URL is not read: {winner}, and wins"));
        }
        if let Some(path) = &settings.database.url_file {
            notes.push(format!(
                "database.url_file ({}) is not read: {winner}, and wins",
                path.display()
            ));
        }
    }
    Secret {
        name: "database.url",
        set: settings.database.url.is_some(),
        shown: settings
            .database
            .url
            .as_ref()
            .map(|u| masked_url(u.expose_secret())),
        from,
    }
}

/// The URL's parameters whose values say nothing secret (libpq's names).
const PLAIN_PARAMS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "target_session_attrs",
    "application_name",
    "connect_timeout",
    "options",
];

/// `postgres://user:***@host/db?sslmode=verify-full&password=***`: the password masked, and
/// every parameter not known to be harmless (`password`, `sslpassword`, anything new).
fn masked_url(url: &str) -> String {
    let redacted = redact_credentials(url);
    let Some((base, query)) = redacted.split_once('?') else {
        return redacted;
    };
    let params: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if !PLAIN_PARAMS.contains(&k) => format!("{k}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

/// The value with every `null` member of an object left out (TOML has no null).
fn without_nulls(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.iter().map(without_nulls).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn setting<'a>(e: &'a Explained, key: &str) -> &'a Setting {
        e.settings
            .iter()
            .find(|s| s.key == key)
            .unwrap_or_else(|| panic!("no {key}"))
    }

    #[test]
    fn each_key_names_the_layer_it_came_from_and_env_over_file_keeps_the_files_value() {
        let dir = std::env::temp_dir().join(format!("lms-explain-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            "[truto]\npage_size = 200\nbase_url = \"http://truto.test\"\n\
             [schedule]\nat = \"02:30\"\n\
             [[accounts]]\nintegrated_account_id = \"6f0d7d3e-8d1a-4c56-9d0e-1b2f3a4c5d6e\"\n\
             schedule = { every = \"1h\" }\n",
        )
        .unwrap();
        let (settings, e) = Settings::explain(
            Some(&file),
            &env(&[
                ("LMS_SYNC__TRUTO__PAGE_SIZE", "300"),
                (
                    "DATABASE_URL",
                    "postgres://u:pw@db/x?sslmode=require&password=pw2",
                ),
                ("LMS_SYNC_SYNC__MAX_CONCURRENT_ACCOUNTS", "3"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.truto.page_size, 300);
        let page = setting(&e, "truto.page_size");
        assert_eq!(page.value, 300);
        assert_eq!(page.from.to_string(), "env LMS_SYNC__TRUTO__PAGE_SIZE");
        assert_eq!(page.file_value, Some(serde_json::json!(200)));
        assert_eq!(setting(&e, "truto.base_url").from, Origin::File);
        assert_eq!(setting(&e, "truto.max_attempts").from, Origin::Default);
        assert_eq!(setting(&e, "schedule.every").value, serde_json::Value::Null);
        assert_eq!(setting(&e, "schedule.at").value, "02:30");
        assert_eq!(setting(&e, "sync.progress").value, "auto");
        assert_eq!(setting(&e, "server.account_metrics").value, "every_replica");
        // No secret's value, nor the URL's password, anywhere in it.
        let json = serde_json::to_string(&e).unwrap();
        assert!(!json.contains("pw"), "{json}");
        let url = &e.secrets[0];
        assert_eq!(url.from.to_string(), "env DATABASE_URL");
        assert_eq!(
            url.shown.as_deref(),
            Some("postgres://u:***@db/x?sslmode=require&password=***")
        );
        assert_eq!(
            e.accounts[0]["schedule"],
            serde_json::json!({"every": "1h"})
        );
        assert!(
            e.notes.iter().any(|n| n.starts_with(
                "LMS_SYNC_SYNC__MAX_CONCURRENT_ACCOUNTS is not read: a setting's variable starts with LMS_SYNC__ (two underscores), as LMS_SYNC__SYNC__MAX_CONCURRENT_ACCOUNTS"
            )),
            "{:?}",
            e.notes
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_database_url_that_shadows_another_says_so() {
        // An empty file, not `None`: the repository's config/default.toml would be read.
        let file = std::env::temp_dir().join(format!("lms-explain-{}.toml", std::process::id()));
        std::fs::write(&file, "").unwrap();
        let (_, e) = Settings::explain(
            Some(&file),
            &env(&[
                ("LMS_SYNC__DATABASE__URL", "postgres://a@h/one"),
                ("DATABASE_URL", "postgres://b@h/two"),
            ]),
        )
        .unwrap();
        assert_eq!(e.secrets[0].from.to_string(), "env LMS_SYNC__DATABASE__URL");
        assert_eq!(e.secrets[0].shown.as_deref(), Some("postgres://a@h/one"));
        assert_eq!(
            e.notes,
            vec!["DATABASE_URL is not read: database.url is set (env LMS_SYNC__DATABASE__URL), and wins"]
        );
        std::fs::remove_file(&file).unwrap();
    }

    #[test]
    fn a_reload_names_the_keys_read_only_at_start_that_it_changes() {
        let started = Settings::default();
        assert!(started.changed_fixed_at_start(&started.clone()).is_empty());
        let mut reloaded = started.clone();
        reloaded.truto.page_size = 500;
        reloaded.schedule.every = Some("1h".into());
        reloaded.database.max_connections = 20;
        reloaded.database.url = Some(SecretString::from("postgres://u@h/d"));
        assert_eq!(
            started.changed_fixed_at_start(&reloaded),
            vec![
                "truto.page_size",
                "database.max_connections",
                "database.url"
            ]
        );
        // Every key listed is a key: a renamed one would never be found changed.
        let (_, e) = Settings::explain(Some(&empty_file()), &[]).unwrap();
        for key in FIXED_AT_START {
            assert!(e.settings.iter().any(|s| s.key == *key), "{key}");
        }
    }

    #[test]
    fn differences_name_each_key_and_the_accounts_and_tenants_configured_otherwise() {
        let base = Settings::default();
        let mut other = base.clone();
        other.history.retention_days = 30;
        other.schedule.at = Some("02:00".into());
        other.log.level = "debug".into();
        let a = Uuid::from_u128(1);
        other.accounts.push(AccountSettings::new(a));
        assert_ne!(base.digest(), other.digest());
        assert_eq!(
            differences(&other.comparable(), &base.comparable(), 10),
            vec![
                "history.retention_days 30, not 0".to_string(),
                "schedule.at \"02:00\", not unset".to_string(),
                format!("accounts: also {a}"),
            ]
        );
        let mut relabelled = other.clone();
        relabelled.accounts[0].label = Some("Acme".into());
        assert_eq!(
            differences(&relabelled.comparable(), &other.comparable(), 10),
            vec![format!("accounts: {a} configured otherwise")]
        );
        assert_eq!(
            differences(&base.comparable(), &other.comparable(), 1),
            vec![
                "history.retention_days 0, not 30".to_string(),
                "2 more".to_string()
            ]
        );
        // A tenant's entry, by its tenant id.
        let mut tenant = base.clone();
        tenant.tenants.push(crate::config::TenantSettings {
            tenant_id: "acme".into(),
            ..Default::default()
        });
        assert_ne!(tenant.digest(), base.digest());
        assert_eq!(
            differences(&tenant.comparable(), &base.comparable(), 10),
            vec!["tenants: also acme".to_string()]
        );
        let mut hourly = tenant.clone();
        hourly.tenants[0].hydrate = true;
        assert_eq!(
            differences(&hourly.comparable(), &tenant.comparable(), 10),
            vec!["tenants: acme configured otherwise".to_string()]
        );
        // [log] is a replica's own business.
        let mut louder = base.clone();
        louder.log.level = "debug".into();
        assert_eq!(louder.digest(), base.digest());
    }

    #[test]
    fn where_a_replica_listens_and_finds_its_secrets_is_its_own() {
        let base = Settings::default();
        let mut own = base.clone();
        own.server.listen = "127.0.0.1:9001".into();
        own.server.admin_token_file = Some("/run/credentials/lms-sync@2.service/admin".into());
        own.truto.api_token_file = Some("/run/credentials/lms-sync@2.service/truto".into());
        own.database.url_file = Some("/run/credentials/lms-sync@2.service/db".into());
        own.webhooks.secret_file = Some("/run/credentials/lms-sync@2.service/webhooks".into());
        assert_eq!(own.digest(), base.digest());
        assert!(differences(&own.comparable(), &base.comparable(), 10).is_empty());
        // Every key named is one: a renamed key would leave its twin compared.
        let all = serde_json::to_value(&base).unwrap();
        for (section, key) in PER_PROCESS {
            assert!(
                all[section].as_object().unwrap().contains_key(key),
                "{section}.{key}"
            );
        }
        // What a replica does to the accounts is still compared.
        own.server.per_account_counters = !base.server.per_account_counters;
        assert_ne!(own.digest(), base.digest());
    }

    fn empty_file() -> PathBuf {
        let file =
            std::env::temp_dir().join(format!("lms-explain-empty-{}.toml", std::process::id()));
        std::fs::write(&file, "").unwrap();
        file
    }

    #[test]
    fn masked_urls_keep_only_harmless_parameters() {
        assert_eq!(
            masked_url("postgres://u:p@h:5432,h2/d?target_session_attrs=read-write&sslpassword=k"),
            "postgres://u:***@h:5432,h2/d?target_session_attrs=read-write&sslpassword=***"
        );
        assert_eq!(
            masked_url("postgres:///d?host=/run/pg"),
            "postgres:///d?host=/run/pg"
        );
    }
}
