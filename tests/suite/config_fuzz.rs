//! Property tests of the config loader: random documents built from the real key tree with
//! random (often wrong) values, random env overrides, and random byte-level mutations of the
//! shipped config files. Whatever the input: no panic, the same answer twice, an error is one
//! line that names where the problem is, and no secret is ever echoed.
//!
//! `LMS_SYNC_FUZZ_CASES` sets the number of cases per property (default 1500; the full run in
//! the README uses 100000).

use std::panic::AssertUnwindSafe;

use crate::helpers::TempFile;
use lms_sync::config::Settings;

const SECRET: &str = "pw-SHOULD-NEVER-SHOW-7781";

fn cases() -> usize {
    std::env::var("LMS_SYNC_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500)
}

/// Every key of the config tree (accounts aside), by section.
const KEYS: &[(&str, &[&str])] = &[
    (
        "truto",
        &[
            "base_url",
            "page_size",
            "request_timeout_secs",
            "connect_timeout_secs",
            "max_attempts",
            "backoff_initial_ms",
            "backoff_max_secs",
            "max_retry_wait_secs",
            "max_pages",
            "max_body_mb",
            "api_token_file",
        ],
    ),
    (
        "database",
        &[
            "url",
            "schema",
            "max_connections",
            "connect_timeout_secs",
            "migrate",
        ],
    ),
    (
        "sync",
        &[
            "max_concurrent_accounts",
            "max_delete_fraction",
            "db_max_attempts",
            "progress",
            "progress_interval_secs",
            "shutdown_grace_secs",
            "hydrate_max_per_run",
            "batch_fill_ms",
        ],
    ),
    (
        "schedule",
        &[
            "every",
            "at",
            "timezone",
            "run_on_start",
            "jitter",
            "retry_initial",
            "retry_max",
            "health_retry_initial",
            "health_retry_max",
        ],
    ),
    (
        "rate_budget",
        &["enabled", "per_account", "per_token", "window_secs"],
    ),
    (
        "server",
        &["listen", "admin_token_file", "secret_files_check_secs"],
    ),
    ("webhooks", &["secret_file", "tolerance_secs"]),
    (
        "history",
        &[
            "enabled",
            "retention_days",
            "sync_runs_retention_days",
            "rejected_records_retention_days",
        ],
    ),
    ("log", &["format", "level"]),
    (
        "discovery",
        &[
            "enabled",
            "integrations",
            "interval",
            "retry_initial",
            "tenant_ids",
            "exclude_accounts",
            "include_sandbox",
            "max_retire_fraction",
            "purge_retired_after",
        ],
    ),
    (
        "account_defaults",
        &[
            "label",
            "hydrate",
            "ignore_remote_data",
            "exclude_fields",
            "max_delete_fraction",
            "hydrate_max_per_run",
        ],
    ),
];
const ACCOUNT_KEYS: &[&str] = &[
    "integrated_account_id",
    "label",
    "ignore_remote_data",
    "exclude_fields",
    "max_delete_fraction",
    "hydrate",
    "hydrate_max_per_run",
    "remote_query",
    "schedule",
];

fn value(rng: &mut fastrand::Rng) -> String {
    let strings = [
        "\"\"",
        "\"6h\"",
        "\"30d\"",
        "\"0s\"",
        "\"25:99\"",
        "\"02:30\"",
        "\"Mars/Olympus\"",
        "\"Europe/Berlin\"",
        "\"http://127.0.0.1:1\"",
        "\"ftp://x\"",
        "\"127.0.0.1:0\"",
        "\"not a url\"",
        "\"json\"",
        "\"pretty\"",
        "\"info\"",
        "\"lms\"",
        "\"Robert'); DROP TABLE users;--\"",
        "\"x\\u0000y\"",
        "\"1e9999h\"",
        "\"-1s\"",
        "\"auto\"",
        "\"7e570000-0000-4000-8000-000000000001\"",
        "\"00000000-0000-0000-0000-000000000000\"",
        "\"🦀\"",
    ];
    match rng.u8(0..9) {
        0 => strings[rng.usize(..strings.len())].to_string(),
        1 => format!("\"postgres://u:{SECRET}@127.0.0.1:{}/db\"", rng.u16(..)),
        2 => rng.i64(-5..2000).to_string(),
        3 => [
            "0",
            "-1",
            "9223372036854775807",
            "18446744073709551616",
            "1_000",
        ][rng.usize(..5)]
        .into(),
        4 => ["0.5", "1.0", "0.0", "-0.1", "1.5", "nan", "inf", "1e308"][rng.usize(..8)].into(),
        5 => ["true", "false"][rng.usize(..2)].into(),
        6 => "[1, \"a\", true]".into(),
        7 => "{ a = 1 }".into(),
        _ => "1979-05-27T07:32:00Z".into(),
    }
}

fn document(rng: &mut fastrand::Rng) -> String {
    let mut t = String::new();
    // One key in `density` is set: dense documents (nearly always refused somewhere) and
    // sparse ones (often loaded) alike, whatever the number of keys.
    let density = [3, 3, 10, 40][rng.usize(..4)];
    for (section, keys) in KEYS {
        if rng.bool() {
            continue;
        }
        let name = if rng.u8(..40) == 0 {
            format!("{section}x")
        } else {
            section.to_string()
        };
        t.push_str(&format!("[{name}]\n"));
        for key in *keys {
            if rng.u8(..density) == 0 {
                t.push_str(&format!("{key} = {}\n", value(rng)));
            }
        }
        if rng.u8(..30) == 0 {
            t.push_str(&format!("unknown_key_{} = 1\n", rng.u8(..)));
        }
    }
    for _ in 0..rng.usize(..3) {
        t.push_str("[[accounts]]\n");
        for key in ACCOUNT_KEYS {
            if *key == "integrated_account_id" && rng.u8(..6) != 0 {
                t.push_str(&format!(
                    "integrated_account_id = \"7e570000-0000-4000-8000-{:012}\"\n",
                    rng.u8(..4)
                ));
            } else if rng.u8(..5) == 0 {
                t.push_str(&format!("{key} = {}\n", value(rng)));
            }
        }
    }
    t
}

fn env(rng: &mut fastrand::Rng) -> Vec<(String, String)> {
    let mut e = Vec::new();
    for _ in 0..rng.usize(..3) {
        let (section, keys) = KEYS[rng.usize(..KEYS.len())];
        let key = keys[rng.usize(..keys.len())];
        let v = value(rng).trim_matches('"').to_string();
        e.push((
            format!(
                "LMS_SYNC__{}__{}",
                section.to_uppercase(),
                key.to_uppercase()
            ),
            v,
        ));
    }
    if rng.u8(..4) == 0 {
        e.push((
            "DATABASE_URL".into(),
            format!("postgres://u:{SECRET}@127.0.0.1:1/db"),
        ));
    }
    e
}

fn temp_file(text: &str) -> TempFile {
    TempFile::new("lms-sync-fuzz", ".toml", text)
}

/// Loads twice; checks the properties; returns whether it loaded.
fn check(text: &str, env: &[(String, String)]) -> bool {
    let path = temp_file(text);
    let load =
        || std::panic::catch_unwind(AssertUnwindSafe(|| Settings::load_from(Some(&path), env)));
    let first = load().unwrap_or_else(|_| panic!("the loader panicked on:\n{text}\nenv {env:?}"));
    let second = load().expect("no panic the second time");
    match (first, second) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                format!("{a:?}"),
                format!("{b:?}"),
                "not deterministic:\n{text}"
            );
            // (Other keys may hold the test's secret-looking text verbatim: labels, paths.)
            assert!(
                !format!("{:?}", a.database).contains(SECRET),
                "Debug shows the database password"
            );
            a.validate().expect("what loads is valid");
            true
        }
        (Err(a), Err(b)) => {
            let (a, b) = (a.to_string(), b.to_string());
            assert_eq!(a, b, "not deterministic:\n{text}");
            assert!(
                !a.is_empty() && !a.contains('\n'),
                "not one line: {a:?}\nfor:\n{text}"
            );
            assert!(
                !a.to_lowercase().contains(&SECRET.to_lowercase()),
                "the error shows a secret: {a}"
            );
            let names_a_place = a.contains("config file")
                || a.contains("cannot load configuration")
                || KEYS.iter().any(|(s, _)| a.contains(s))
                || a.contains("accounts");
            assert!(
                names_a_place,
                "the error names no key: {a}\nfor:\n{text}\nenv {env:?}"
            );
            false
        }
        _ => panic!("one load succeeded and one failed:\n{text}"),
    }
}

#[test]
fn random_documents_and_env_never_panic_and_fail_on_one_line_naming_the_key() {
    let mut rng = fastrand::Rng::with_seed(0x1A5_5E7C);
    let (mut ok, mut err) = (0, 0);
    for _ in 0..cases() {
        let doc = document(&mut rng);
        let env = env(&mut rng);
        if check(&doc, &env) {
            ok += 1;
        } else {
            err += 1;
        }
    }
    // Both outcomes are exercised, or the generator is broken.
    assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
}

#[test]
fn mutated_shipped_configs_never_panic() {
    let sources = [
        include_str!("../../config/default.toml"),
        include_str!("../../config/demo.toml"),
    ];
    let mut rng = fastrand::Rng::with_seed(0x00C0_FFEE);
    let alphabet = b"[]{}=\"'#.,\n 0123456789abcdefxyz_-:\\\t\xff";
    for _ in 0..cases() {
        let mut bytes = sources[rng.usize(..sources.len())].as_bytes().to_vec();
        for _ in 0..rng.usize(1..6) {
            if bytes.is_empty() {
                break;
            }
            let at = rng.usize(..bytes.len());
            match rng.u8(..4) {
                0 => {
                    bytes.remove(at);
                }
                1 => bytes.insert(at, alphabet[rng.usize(..alphabet.len())]),
                2 => bytes[at] = alphabet[rng.usize(..alphabet.len())],
                _ => {
                    let end = (at + rng.usize(..80)).min(bytes.len());
                    let chunk = bytes[at..end].to_vec();
                    let to = rng.usize(..=bytes.len());
                    bytes.splice(to..to, chunk);
                }
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        check(&text, &[]);
    }
}
