//! Validation: what serde cannot check (ranges, identifiers, duplicates, schedules), with
//! messages that name the key and the env var that sets it.

use super::*;

impl Settings {
    /// Checks what serde cannot: ranges, identifiers, duplicates.
    // Longer than our usual step: one flat list of checks, one per key, in the order of
    // config/default.toml, so that a reader finds a key's rule by the key's name.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let t = &self.truto;
        let url = reqwest::Url::parse(&t.base_url)
            .map_err(|e| key_error("truto.base_url", format!("not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(key_error("truto.base_url", "must be an http(s) URL"));
        }
        if !(1..=1000).contains(&t.page_size) {
            return Err(key_error("truto.page_size", "must be between 1 and 1000"));
        }
        check_range(
            "truto.request_timeout_secs",
            t.request_timeout_secs,
            1,
            A_DAY,
        )?;
        check_range(
            "truto.connect_timeout_secs",
            t.connect_timeout_secs,
            1,
            A_DAY,
        )?;
        check_range("truto.max_attempts", u64::from(t.max_attempts), 1, u64::MAX)?;
        check_range("truto.max_retry_wait_secs", t.max_retry_wait_secs, 0, A_DAY)?;
        check_range(
            "truto.backoff_initial_ms",
            t.backoff_initial_ms,
            1,
            A_DAY * 1000,
        )?;
        check_range("truto.backoff_max_secs", t.backoff_max_secs, 0, A_DAY)?;
        check_range("truto.max_pages", t.max_pages, 1, u64::MAX)?;
        check_range("truto.max_body_mb", t.max_body_mb, 1, 1024)?;
        let d = &self.database;
        validate_schema_name(&d.schema).map_err(|m| key_error("database.schema", m))?;
        // One connection holds each account's lease; pages need another. (The pool allocates
        // for its maximum up front: four billion aborted the process.)
        check_range(
            "database.max_connections",
            u64::from(d.max_connections),
            2,
            10_000,
        )?;
        check_range(
            "database.connect_timeout_secs",
            d.connect_timeout_secs,
            1,
            A_DAY,
        )?;
        check_range(
            "database.migration_lock_timeout_secs",
            d.migration_lock_timeout_secs,
            1,
            A_DAY,
        )?;
        check_range(
            "database.lock_wait_warn_secs",
            d.lock_wait_warn_secs,
            1,
            A_DAY,
        )?;
        // Three probes need a second each at least.
        check_range(
            "database.keepalive_timeout_secs",
            d.keepalive_timeout_secs,
            3,
            A_DAY,
        )?;
        if let Some(url) = &d.url {
            check_database_url(url.expose_secret())?;
        }
        let s = &self.sync;
        check_range(
            "sync.max_concurrent_accounts",
            s.max_concurrent_accounts as u64,
            1,
            u64::MAX,
        )?;
        check_fraction("sync.max_delete_fraction", s.max_delete_fraction)?;
        check_range(
            "sync.db_max_attempts",
            u64::from(s.db_max_attempts),
            1,
            u64::MAX,
        )?;
        check_range(
            "sync.hydrate_max_per_run",
            u64::from(s.hydrate_max_per_run),
            1,
            u64::MAX,
        )?;
        check_range("sync.batch_fill_ms", s.batch_fill_ms, 0, 10_000)?;
        check_range(
            "sync.progress_interval_secs",
            s.progress_interval_secs,
            1,
            A_DAY,
        )?;
        check_range("sync.shutdown_grace_secs", s.shutdown_grace_secs, 0, A_DAY)?;
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(key_error("log.level", "not a valid level or filter"));
        }
        for (key, days) in [
            ("history.retention_days", self.history.retention_days),
            (
                "history.sync_runs_retention_days",
                self.history.sync_runs_retention_days,
            ),
            (
                "history.rejected_records_retention_days",
                self.history.rejected_records_retention_days,
            ),
        ] {
            if days > 100_000 {
                return Err(key_error(
                    key,
                    "must be at most 100000 (0 keeps them forever)",
                ));
            }
        }
        // The shares are kept in PostgreSQL as integers, and a window is at most the longest a
        // server's own may be (see `backoff::LONGEST_HINT`).
        let b = &self.rate_budget;
        check_range(
            "rate_budget.per_account",
            b.per_account as u64,
            1,
            MOST_REQUESTS,
        )?;
        check_range(
            "rate_budget.per_token",
            b.per_token as u64,
            1,
            MOST_REQUESTS,
        )?;
        check_range("rate_budget.window_secs", b.window_secs, 1, A_DAY)?;
        if !self.server.listen.is_empty()
            && self.server.listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(key_error("server.listen", "must be host:port with a numeric host, like 127.0.0.1:9000, or empty to turn it off"));
        }
        check_range(
            "server.secret_files_check_secs",
            self.server.secret_files_check_secs,
            0,
            A_DAY,
        )?;
        check_range(
            "server.config_file_check_secs",
            self.server.config_file_check_secs,
            0,
            A_DAY,
        )?;
        self.base_schedule()?;
        self.check_discovery()?;
        self.check_account(
            &self.account_defaults.for_account(Uuid::nil()),
            "account_defaults",
        )?;
        self.check_tenants()?;
        let mut seen = HashSet::new();
        for (i, a) in self.accounts.iter().enumerate() {
            let prefix = format!("accounts[{i}]");
            if !seen.insert(a.integrated_account_id) {
                return Err(ConfigError(format!(
                    "{prefix}.integrated_account_id: duplicate account {}",
                    a.integrated_account_id
                )));
            }
            if a.integrated_account_id.is_nil() {
                return Err(ConfigError(format!(
                    "{prefix}.integrated_account_id: the nil uuid is not an account"
                )));
            }
            self.check_account(a, &prefix)?;
        }
        Ok(())
    }

    /// Each `[[tenants]]` entry: a tenant id as Truto writes them, named once, one that
    /// `discovery.tenant_ids` (when set) lets in, with keys an account could have.
    fn check_tenants(&self) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (i, entry) in self.tenants.iter().enumerate() {
            let prefix = format!("tenants[{i}]");
            let id = &entry.tenant_id;
            if id.is_empty() {
                return Err(ConfigError(format!(
                    "{prefix}.tenant_id: required (Truto's tenant_id of the customer)"
                )));
            }
            check_tenant_id(&format!("{prefix}.tenant_id"), id)?;
            if !seen.insert(id) {
                return Err(ConfigError(format!(
                    "{prefix}.tenant_id: tenant {id} has another [[tenants]] entry"
                )));
            }
            let d = &self.discovery;
            if !d.tenant_ids.is_empty() && !d.tenant_ids.contains(id) {
                return Err(ConfigError(format!(
                    "{prefix}.tenant_id: tenant {id} is not in discovery.tenant_ids, so none of \
                     its accounts is synced: add it there, or remove this entry"
                )));
            }
            self.check_account(&entry.keys().for_account(Uuid::nil()), &prefix)?;
        }
        Ok(())
    }

    fn check_discovery(&self) -> Result<(), ConfigError> {
        // A value no tenant can have (a stray space, a comma inside one string) would leave
        // that customer's accounts excluded without a word: refuse it.
        for (i, id) in self.discovery.tenant_ids.iter().enumerate() {
            check_tenant_id(&format!("discovery.tenant_ids[{i}]"), id)?;
        }
        if !(1..=86_400).contains(&self.webhooks.tolerance_secs) {
            return Err(key_error(
                "webhooks.tolerance_secs",
                "must be between 1 and 86400",
            ));
        }
        let d = &self.discovery;
        parse_bounded("discovery.interval", &d.interval, Duration::from_secs(10))?;
        parse_bounded(
            "discovery.retry_initial",
            &d.retry_initial,
            Duration::from_secs(1),
        )?;
        if d.enabled && d.integrations.is_empty() {
            return Err(key_error(
                "discovery.integrations",
                "name at least one integration (e.g. [\"talentlms\"]) when discovery is enabled",
            ));
        }
        if d.integrations.iter().any(|i| i.trim().is_empty()) {
            return Err(key_error(
                "discovery.integrations",
                "empty integration name",
            ));
        }
        check_fraction("discovery.max_retire_fraction", d.max_retire_fraction)?;
        if let Some(text) = d
            .purge_retired_after
            .as_deref()
            .filter(|t| !t.trim().is_empty())
        {
            const KEY: &str = "discovery.purge_retired_after";
            let after = parse_duration(KEY, text)?;
            if after < Duration::from_secs(3600) {
                return Err(key_error(
                    KEY,
                    "must be at least 1h: a retirement must stay undone long enough to notice a wrong one",
                ));
            }
            if after > Duration::from_secs(3650 * 86_400) {
                return Err(key_error(KEY, "must be at most 3650d"));
            }
            if !d.enabled {
                return Err(key_error(
                    KEY,
                    "needs discovery.enabled = true: the service purges after a listing still without the account",
                ));
            }
        }
        Ok(())
    }

    /// The checks of one account's keys (`prefix` names it in errors).
    fn check_account(&self, a: &AccountSettings, prefix: &str) -> Result<(), ConfigError> {
        self.schedule_for_prefixed(a, Some(prefix))?;
        if let Some(f) = a.max_delete_fraction {
            check_fraction(&format!("{prefix}.max_delete_fraction"), f)?;
        }
        if a.hydrate_max_per_run == Some(0) {
            return Err(ConfigError(format!(
                "{prefix}.hydrate_max_per_run: must be at least 1"
            )));
        }
        if a.exclude_fields.iter().any(|f| f.trim().is_empty()) {
            return Err(ConfigError(format!(
                "{prefix}.exclude_fields: empty field name"
            )));
        }
        if a.exclude_fields.iter().any(|f| f == "id") {
            return Err(ConfigError(format!(
                "{prefix}.exclude_fields: `id` cannot be excluded: users are keyed by it"
            )));
        }
        if a.remote_query.keys().any(|k| k.is_empty()) {
            return Err(ConfigError(format!("{prefix}.remote_query: empty key")));
        }
        Ok(())
    }

    /// Commands that sync need at least one account.
    pub fn require_accounts(&self) -> Result<(), ConfigError> {
        if self.accounts.is_empty() && !self.discovery.enabled {
            return Err(ConfigError(
                "accounts: no [[accounts]] configured; add one table per integrated account \
                 with integrated_account_id = \"<uuid>\", or enable [discovery]"
                    .into(),
            ));
        }
        Ok(())
    }

    fn base_schedule(&self) -> Result<crate::schedule::Schedule, ConfigError> {
        self.schedule_for_prefixed(&AccountSettings::new(Uuid::nil()), None)
    }

    /// The account's effective schedule (its overrides over `[schedule]`).
    pub fn schedule_for(&self, account: &AccountSettings) -> crate::schedule::Schedule {
        self.schedule_for_prefixed(account, None)
            .expect("schedules are validated when the settings load")
    }

    fn schedule_for_prefixed(
        &self,
        account: &AccountSettings,
        prefix: Option<&str>,
    ) -> Result<crate::schedule::Schedule, ConfigError> {
        use crate::schedule::{Cadence, Schedule};
        let g = &self.schedule;
        if g.every.is_some() && g.at.is_some() {
            return Err(key_error(
                "schedule.at",
                "set either schedule.every or schedule.at, not both",
            ));
        }
        let own = account.schedule.clone().unwrap_or_default();
        let prefix = prefix.map(|p| format!("{p}.schedule.")).unwrap_or_default();
        let k = |name: &str| {
            if own_has(&own, name) {
                format!("{prefix}{name}")
            } else {
                format!("schedule.{name}")
            }
        };
        if own.every.is_some() && own.at.is_some() {
            return Err(key_error(&k("at"), "set either every or at, not both"));
        }
        let (every, at) = if own.every.is_some() || own.at.is_some() {
            (own.every.clone(), own.at.clone())
        } else {
            (g.every.clone(), g.at.clone())
        };
        let tz_text = own.timezone.clone().unwrap_or_else(|| g.timezone.clone());
        let tz = parse_tz(&k("timezone"), &tz_text)?;
        let cadence = match (every, at) {
            (_, Some(at)) => Cadence::DailyAt {
                time: parse_at(&k("at"), &at)?,
                tz,
            },
            (every, None) => {
                let text = every.unwrap_or_else(|| DEFAULT_EVERY.into());
                Cadence::Every(parse_bounded(&k("every"), &text, Duration::from_secs(1))?)
            }
        };
        let jitter_text = own.jitter.clone().unwrap_or_else(|| g.jitter.clone());
        Ok(Schedule {
            cadence,
            run_on_start: g.run_on_start,
            jitter: parse_bounded(&k("jitter"), &jitter_text, Duration::ZERO)?,
            retry_initial: parse_bounded(
                "schedule.retry_initial",
                &g.retry_initial,
                Duration::ZERO,
            )?,
            retry_max: parse_bounded("schedule.retry_max", &g.retry_max, Duration::ZERO)?,
            health_retry_initial: parse_bounded(
                "schedule.health_retry_initial",
                &g.health_retry_initial,
                Duration::ZERO,
            )?,
            health_retry_max: parse_bounded(
                "schedule.health_retry_max",
                &g.health_retry_max,
                Duration::ZERO,
            )?,
        })
    }
}

fn own_has(s: &AccountSchedule, name: &str) -> bool {
    match name {
        "every" => s.every.is_some(),
        "at" => s.at.is_some(),
        "timezone" => s.timezone.is_some(),
        "jitter" => s.jitter.is_some(),
        _ => false,
    }
}

/// The most seconds a timeout, a wait or a rate window may be set to.
const A_DAY: u64 = 86_400;

/// The most requests a rate window may allow.
const MOST_REQUESTS: u64 = 1_000_000;

/// The longest interval a schedule or discovery may be set to: longer ones are typos, and
/// the times computed from them must stay within the calendar.
const LONGEST_INTERVAL: Duration = Duration::from_secs(365 * 86_400);

/// `value` within `min..=max`, or an error naming the key and the bound it broke.
fn check_range(key: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min {
        return Err(key_error(key, format!("must be at least {min}")));
    }
    if value > max {
        return Err(key_error(key, format!("must be at most {max}")));
    }
    Ok(())
}

/// A duration between `min` and [`LONGEST_INTERVAL`].
fn parse_bounded(key: &str, text: &str, min: Duration) -> Result<Duration, ConfigError> {
    let d = parse_duration(key, text)?;
    if d < min {
        let min = humantime::format_duration(min);
        return Err(key_error(key, format!("must be at least {min}")));
    }
    if d > LONGEST_INTERVAL {
        return Err(key_error(key, "must be at most 365d"));
    }
    Ok(d)
}

/// A database URL's scheme and TLS parameters (at load, and each time `database.url_file` is
/// read again). Never echoes the URL: it may hold a password.
pub(super) fn check_database_url(u: &str) -> Result<(), ConfigError> {
    if !(u.starts_with("postgres://") || u.starts_with("postgresql://")) {
        return Err(key_error(
            "database.url",
            "must start with postgres:// or postgresql://",
        ));
    }
    // Each host's URL has the same parameters: the first stands for all.
    let hosts = super::split_hosts(u).map_err(|m| key_error("database.url", m))?;
    let Some(tls) = DbTls::from_url(&hosts[0]) else {
        return Ok(());
    };
    tls.check_as(URL_NAMES)
        .map_err(|m| key_error("database.url", m))?;
    // What the URL does not say, sqlx takes from PGSSLMODE, PGSSLROOTCERT, PGSSLCERT and
    // PGSSLKEY: checked the same way, and more so the mode, which sqlx would take for
    // `prefer` (no certificate checked, plain text when the server allows) when it is not one
    // it knows, without a word.
    let env = DbTls::from_env(|name| std::env::var(name).ok()).beneath(&tls);
    env.check_as(ENV_NAMES).map_err(|m| {
        let fallback = if m.starts_with("PGSSLMODE=") {
            "; unchecked, it would be taken as prefer, which checks no certificate"
        } else {
            ""
        };
        ConfigError(format!(
            "{m} (from the environment, used where database.url does not say{fallback})"
        ))
    })?;
    tls.or(&env)
        .check_pair(!env.is_empty())
        .map_err(|m| key_error("database.url", m))?;
    Ok(())
}

fn check_fraction(key: &str, v: f64) -> Result<(), ConfigError> {
    if !(v > 0.0 && v <= 1.0) {
        return Err(key_error(key, "must be a number in (0, 1]"));
    }
    Ok(())
}

/// Schema names reach SQL as identifiers, so only plain lower-case identifiers are allowed.
pub fn validate_schema_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{s}` is not a plain identifier (lower-case letters, digits, _; at most 63; not pg_*)"
        ))
    }
}

/// A tenant id as Truto's are written: letters, digits and `._:@+-`, 1 to 256 of them.
fn check_tenant_id(key: &str, id: &str) -> Result<(), ConfigError> {
    if id.is_empty()
        || id.len() > 256
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._:@+-".contains(c))
    {
        return Err(ConfigError(format!(
            "{key}: {:?} is not a tenant id (letters, digits and ._:@+-, 1 to 256 of them)",
            crate::text::shorten(id, 60)
        )));
    }
    Ok(())
}
