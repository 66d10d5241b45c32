//! `lms-sync config`: the settings a command would run with here, each with where its value
//! came from, as a TOML file (valid: it can be saved and used as the config file) or as JSON.
//! Nothing else is touched: no database, no Truto.

use std::fmt::Write as _;

use crate::config::{Explained, Origin, Setting};

/// What `lms-sync config` prints: the TOML text with each key's origin in a comment.
pub fn toml(e: &Explained) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# The settings lms-sync runs with here: built-in defaults, then {}, then LMS_SYNC__* \
         environment variables (then DATABASE_URL for database.url).",
        match &e.config_file {
            Some(path) => format!("config file {}", path.display()),
            None => format!(
                "no config file (neither --config nor {})",
                crate::config::DEFAULT_CONFIG_PATH
            ),
        }
    );
    out.push_str(
        "# Each key's comment says where its value came from. Secrets are never printed: only \
         whether each is set, and from where.\n",
    );
    let _ = writeln!(
        out,
        "# Configuration digest: {} (a replica of `run` with this configuration shows it in \
         lms-sync status and on the status page).",
        e.digest
    );
    for note in &e.notes {
        let _ = writeln!(out, "# Note: {note}");
    }
    let mut section = "";
    for s in &e.settings {
        let (head, name) = s.key.split_once('.').unwrap_or(("", &s.key));
        if head != section {
            secrets_of(&mut out, e, section);
            section = head;
            let _ = writeln!(out, "\n[{head}]");
            let fixed: Vec<&str> = crate::config::FIXED_AT_START
                .iter()
                .filter_map(|k| k.strip_prefix(head)?.strip_prefix('.'))
                .collect();
            if !fixed.is_empty() {
                let _ = writeln!(
                    out,
                    "# Read only at start (a running service takes a change at its restart, not \
                     on SIGHUP or a changed file): {}",
                    fixed.join(", ")
                );
            }
        }
        key_line(&mut out, name, s);
        if s.key == "schedule.every" && s.value.is_null() && unset(e, "schedule.at") {
            let _ = writeln!(
                out,
                "#   (with `at` unset too, accounts are synced every {})",
                crate::config::DEFAULT_EVERY
            );
        }
    }
    secrets_of(&mut out, e, section);
    for (table, id, entries) in [
        ("tenants", "tenant_id", &e.tenants),
        ("accounts", "integrated_account_id", &e.accounts),
    ] {
        for entry in entries {
            let _ = writeln!(out, "\n[[{table}]]");
            written(&mut out, entry, id);
        }
    }
    out
}

/// An entry's keys as written: only those set (an entry's unset keys are serde's defaults;
/// an `[[accounts]]` entry takes nothing from `[account_defaults]`), and a fleet's file may
/// hold thousands of entries. The entry's `id` key comes first, the one a reader looks for.
fn written(out: &mut String, entry: &serde_json::Value, id: &str) {
    if let serde_json::Value::Object(keys) = entry {
        let set = keys
            .iter()
            .filter(|(k, _)| *k == id)
            .chain(keys.iter().filter(|(k, _)| *k != id))
            .filter(|(_, v)| {
                !matches!(v, serde_json::Value::Bool(false))
                    && v.as_array().is_none_or(|a| !a.is_empty())
                    && v.as_object().is_none_or(|o| !o.is_empty())
            });
        for (k, v) in set {
            let _ = writeln!(out, "{} = {}", k, toml_value(v));
        }
    }
}

fn unset(e: &Explained, key: &str) -> bool {
    e.settings.iter().any(|s| s.key == key && s.value.is_null())
}

/// `key = value  # origin`, or a comment for a key left unset.
fn key_line(out: &mut String, name: &str, s: &Setting) {
    let origin = match (&s.from, &s.file_value) {
        (Origin::Default, _) => "default".to_string(),
        (from, Some(file)) => format!("{from} (over the file's {})", toml_value(file)),
        (from, None) => from.to_string(),
    };
    if s.value.is_null() {
        let _ = writeln!(out, "# {name}: unset  # {origin}");
    } else {
        let _ = writeln!(out, "{name} = {}  # {origin}", toml_value(&s.value));
    }
}

/// The secrets of `section`, as comments at its end.
fn secrets_of(out: &mut String, e: &Explained, section: &str) {
    for secret in &e.secrets {
        let Some((head, name)) = secret.name.split_once('.') else {
            continue;
        };
        if head != section {
            continue;
        }
        match (&secret.shown, secret.set) {
            (Some(shown), _) => {
                let _ = writeln!(out, "# {name}: {shown}  # secret, from {}", secret.from);
            }
            (None, true) => {
                let _ = writeln!(out, "# {name}: set  # secret, from {}", secret.from);
            }
            (None, false) => {
                let _ = writeln!(out, "# {name}: unset  # secret");
            }
        }
    }
}

/// A JSON value as TOML writes it inline (`null` members left out: TOML has none).
fn toml_value(v: &serde_json::Value) -> String {
    match toml::Value::try_from(strip_nulls(v)) {
        Ok(v) => v.to_string(),
        Err(_) => v.to_string(),
    }
}

fn strip_nulls(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(map) => map
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), strip_nulls(v)))
            .collect(),
        serde_json::Value::Array(items) => items.iter().map(strip_nulls).collect(),
        other => other.clone(),
    }
}

/// `lms-sync config --json`: settings by key, each with its value and origin.
pub fn json(e: &Explained) -> serde_json::Value {
    let settings: serde_json::Map<String, serde_json::Value> = e
        .settings
        .iter()
        .map(|s| {
            let mut v = serde_json::json!({
                "value": s.value,
                "from": s.from.to_string(),
                "fixed_at_start": crate::config::FIXED_AT_START.contains(&s.key.as_str()),
            });
            if let Some(file) = &s.file_value {
                v["file_value"] = file.clone();
            }
            (s.key.clone(), v)
        })
        .collect();
    let secrets: serde_json::Map<String, serde_json::Value> = e
        .secrets
        .iter()
        .map(|s| {
            let mut v = serde_json::json!({"set": s.set, "from": s.from.to_string()});
            if let Some(shown) = &s.shown {
                v["shown"] = shown.clone().into();
            }
            (s.name.to_string(), v)
        })
        .collect();
    serde_json::json!({
        "config_file": e.config_file,
        "digest": e.digest,
        "settings": settings,
        "accounts": e.accounts,
        "tenants": e.tenants,
        "secrets": secrets,
        "notes": e.notes,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;

    #[test]
    fn the_toml_is_a_config_file_that_loads_to_the_same_settings() {
        let env = vec![
            ("LMS_SYNC__TRUTO__PAGE_SIZE".to_string(), "300".to_string()),
            ("LMS_SYNC__SCHEDULE__AT".to_string(), "02:30".to_string()),
            ("TRUTO_API_TOKEN".to_string(), "tok-secret".to_string()),
        ];
        let dir = std::env::temp_dir().join(format!("lms-show-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.toml");
        std::fs::write(&empty, "").unwrap();
        let (_, e) = Settings::explain(Some(&empty), &env).unwrap();
        let text = super::toml(&e);
        assert!(
            text.contains("page_size = 300  # env LMS_SYNC__TRUTO__PAGE_SIZE\n"),
            "{text}"
        );
        assert!(text.contains("# every: unset  # default\n"), "{text}");
        // The keys a reload does not change, said once per section.
        assert!(
            text.contains("\n[server]\n# Read only at start (a running service takes a change at its restart, not on SIGHUP or a changed file): listen, per_account_counters, account_metrics\n"),
            "{text}"
        );
        assert!(!text.contains("[schedule]\n# Read only"), "{text}");
        assert!(
            text.contains("# api_token: set  # secret, from env TRUTO_API_TOKEN\n"),
            "{text}"
        );
        assert!(!text.contains("tok-secret"), "{text}");
        let file = dir.join("saved.toml");
        std::fs::write(&file, &text).unwrap();
        let (_, again) = Settings::explain(Some(&file), &[]).unwrap();
        for (a, b) in e.settings.iter().zip(&again.settings) {
            assert_eq!((&a.key, &a.value), (&b.key, &b.value));
        }
        assert_eq!(e.settings.len(), again.settings.len());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
