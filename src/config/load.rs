//! Loading the settings: built-in defaults, then the file, then the environment, then the
//! secrets (token, admin token, webhook secret) from their env vars or files.

use super::*;

impl Settings {
    /// Layers: built-in defaults → the file (`path`, else `config/default.toml` when present) →
    /// `LMS_SYNC__*` env vars (env wins) → `DATABASE_URL` when the database URL is still unset.
    pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(path, &env)
    }

    /// `load` with an explicit environment, so tests need not touch the process's.
    // The layering, in order, in one place (defaults → file → env → DATABASE_URL → secrets).
    pub fn load_from(
        path: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Settings, ConfigError> {
        Self::load_with_file(path, env).map(|(settings, _)| settings)
    }

    /// `load_from`, also handing back the config file read (its path and text) when there was
    /// one, for [`Settings::explain`] to tell the file's keys from the defaults.
    pub(super) fn load_with_file(
        path: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<(Settings, Option<(PathBuf, String)>), ConfigError> {
        let mut builder = config::Config::builder();
        let mut read = None;
        let file = match path {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
        };
        if let Some(file) = &file {
            let text = read_bounded(file, CONFIG_FILE_LIMIT).map_err(|e| {
                ConfigError(format!("cannot read config file {}: {e}", file.display()))
            })?;
            // Parse here first: the config crate's TOML errors do not always say where.
            if let Err(e) = text.parse::<toml_edit_free::Probe>() {
                return Err(ConfigError(format!(
                    "config file {} is not valid TOML: {e}",
                    file.display()
                )));
            }
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
            read = Some((file.clone(), text));
        }
        let prefix = format!("{ENV_PREFIX}__");
        let vars: config::Map<String, String> = env
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .cloned()
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(vars)),
        );
        let cfg = builder
            .build()
            .map_err(|e| ConfigError(format!("cannot load configuration: {e}")))?;
        let mut settings: Settings = serde_path_to_error::deserialize(cfg).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner().to_string();
            // The config crate appends its own location to some messages; keep ours.
            let mut inner = inner
                .split(" for key ")
                .next()
                .unwrap_or(&inner)
                .to_string();
            let mut key = key;
            if let Some(rest) = inner.strip_prefix("missing configuration field ") {
                // The config crate names the field as "accounts[0]integrated_account_id".
                let field = rest.trim_matches('"');
                let field = field
                    .rsplit(']')
                    .next()
                    .unwrap_or(field)
                    .rsplit('.')
                    .next()
                    .unwrap_or(field);
                key = if key == "." || key.is_empty() {
                    field.to_string()
                } else {
                    format!("{key}.{field}")
                };
                inner = "required key is missing".into();
            }
            if key == "." || key.is_empty() {
                ConfigError(inner)
            } else if inner.starts_with("unknown field") {
                // A key no setting has: say where it was written, not which variable would set
                // it (that reads as if the variable were set).
                let var = env_name(&key);
                match &file {
                    _ if env.iter().any(|(k, _)| *k == var) => {
                        ConfigError(format!("{key}: {inner} (from env {var})"))
                    }
                    Some(file) => ConfigError(format!(
                        "{key}: {inner} (in config file {})",
                        file.display()
                    )),
                    None => key_error(&key, inner),
                }
            } else {
                key_error(&key, inner)
            }
        })?;
        if settings.database.url.is_none() {
            if let Some((_, url)) = env.iter().find(|(k, _)| k == "DATABASE_URL") {
                if !url.is_empty() {
                    settings.database.url = Some(SecretString::from(url.clone()));
                }
            }
        }
        if settings.database.url.is_none() {
            if let Some(path) = settings.database.url_file.clone() {
                settings.database.url = Some(secret_file("database.url_file", &path)?);
                settings.database.url_from_file = true;
            }
        }
        settings.validate()?;
        Ok((settings, read))
    }

    pub fn database_url(&self) -> Result<&SecretString, ConfigError> {
        self.database.url.as_ref().ok_or_else(|| {
            ConfigError(
                "database.url: not set (env LMS_SYNC__DATABASE__URL or DATABASE_URL, or a file \
                 named by database.url_file)"
                    .into(),
            )
        })
    }

    /// The database URL as `database.url_file` holds it now, checked as at load; `None` when
    /// the URL in force did not come from that file (`database.url` or `DATABASE_URL` win).
    pub fn database_url_from_file(&self) -> Result<Option<SecretString>, ConfigError> {
        let (true, Some(path)) = (self.database.url_from_file, &self.database.url_file) else {
            return Ok(None);
        };
        let url = secret_file("database.url_file", path)?;
        super::validate::check_database_url(url.expose_secret())?;
        Ok(Some(url))
    }

    /// The token from `TRUTO_API_TOKEN`, else from `truto.api_token_file`; `None` when neither.
    pub fn api_token(&self) -> Result<Option<SecretString>, ConfigError> {
        secret(
            TOKEN_ENV,
            "truto.api_token_file",
            self.truto.api_token_file.as_deref(),
        )
    }

    /// The admin token of the operations server (`LMS_SYNC_ADMIN_TOKEN`, else
    /// `server.admin_token_file`); `None` when neither.
    pub fn admin_token(&self) -> Result<Option<SecretString>, ConfigError> {
        secret(
            ADMIN_TOKEN_ENV,
            "server.admin_token_file",
            self.server.admin_token_file.as_deref(),
        )
    }

    /// The webhook secret (`TRUTO_WEBHOOK_SECRET`, else `webhooks.secret_file`); `None` when
    /// neither: the receiver is off.
    pub fn webhook_secret(&self) -> Result<Option<SecretString>, ConfigError> {
        secret(
            WEBHOOK_SECRET_ENV,
            "webhooks.secret_file",
            self.webhooks.secret_file.as_deref(),
        )
    }
}

/// A secret from the env var `env` (wins), else from the file that `key` names.
pub(super) fn secret(
    env: &str,
    key: &str,
    file: Option<&Path>,
) -> Result<Option<SecretString>, ConfigError> {
    if let Ok(t) = std::env::var(env) {
        let t = t.trim();
        if !t.is_empty() {
            return Ok(Some(SecretString::from(t.to_string())));
        }
    }
    let Some(path) = file else {
        return Ok(None);
    };
    secret_file(key, path).map(Some)
}

/// The secret the file that `key` names holds, trimmed; an empty file is an error.
pub(super) fn secret_file(key: &str, path: &Path) -> Result<SecretString, ConfigError> {
    let text = read_bounded(path, SECRET_FILE_LIMIT)
        .map_err(|e| key_error(key, format!("cannot read {}: {e}", path.display())))?;
    let t = text.trim();
    if t.is_empty() {
        return Err(key_error(key, format!("{} is empty", path.display())));
    }
    Ok(SecretString::from(t.to_string()))
}

/// The most a config file may hold (thousands of accounts take a few hundred KiB).
const CONFIG_FILE_LIMIT: u64 = 16 << 20;

/// The most a secret's file may hold.
const SECRET_FILE_LIMIT: u64 = 64 << 10;

/// The UTF-8 text of `path`, refused when longer than `limit` bytes rather than read whole: a
/// key pointed by mistake at a log file, or at `/dev/zero`, must not fill the memory.
pub(super) fn read_bounded(path: &Path, limit: u64) -> Result<String, String> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > limit {
        return Err(format!("larger than {} KiB", limit >> 10));
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())
}

/// A tiny TOML syntax probe via the `toml` crate that `config` already depends on.
mod toml_edit_free {
    pub struct Probe;
    impl std::str::FromStr for Probe {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            s.parse::<toml::Table>().map(|_| Probe).map_err(|e| {
                // toml's message is multi-line with a source excerpt; keep where and what.
                let text = e.to_string();
                let lines: Vec<&str> = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect();
                match (lines.first(), lines.last()) {
                    (Some(first), Some(last)) if lines.len() > 1 => format!("{first}: {last}"),
                    _ => text.trim().to_string(),
                }
            })
        }
    }
}
