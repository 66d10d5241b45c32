//! The binary's contract: commands, exit codes, config errors naming their key, the summary,
//! `status`, and a token that never shows in any output.

use std::process::Output;

use crate::helpers::*;
use lms_sync::devkit::simulator::{Fault, Simulator};
use uuid::Uuid;

const ACCT: &str = "0b5d7c4e-2f0a-4c8e-9a57-3f1e6d2c9b10";

fn write_config(text: &str) -> TempFile {
    TempFile::new("lms-sync-cli", ".toml", text)
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test]
async fn invalid_configurations_exit_2_with_one_line_naming_the_key() {
    let acct = format!("[[accounts]]\nintegrated_account_id = \"{ACCT}\"\n");
    let db = [
        ("DATABASE_URL", "postgres://u@127.0.0.1:1/db"),
        ("TRUTO_API_TOKEN", "t"),
    ];
    // (config file, extra env, what the error line must name)
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        ("[truto\nbase_url = 1".into(), vec![], "not valid TOML"),
        (format!("[trutoo]\n{acct}"), vec![], "trutoo"),
        (
            format!("[truto]\npagesize = 5\n{acct}"),
            vec![],
            "truto.pagesize",
        ),
        (
            format!("[truto]\npage_size = 0\n{acct}"),
            vec![],
            "truto.page_size",
        ),
        (
            format!("[truto]\npage_size = \"ten\"\n{acct}"),
            vec![],
            "truto.page_size",
        ),
        (
            format!("[truto]\nbase_url = \"not a url\"\n{acct}"),
            vec![],
            "truto.base_url",
        ),
        (
            format!("[truto]\nrequest_timeout_secs = 0\n{acct}"),
            vec![],
            "truto.request_timeout_secs",
        ),
        (
            format!("[truto]\nmax_attempts = -1\n{acct}"),
            vec![],
            "truto.max_attempts",
        ),
        (
            format!("[database]\nschema = \"Robert'); DROP TABLE students;--\"\n{acct}"),
            vec![],
            "database.schema",
        ),
        (
            format!("[database]\nmax_connections = 1\n{acct}"),
            vec![],
            "database.max_connections",
        ),
        (
            format!("[database]\nurl = \"mysql://x\"\n{acct}"),
            vec![],
            "database.url",
        ),
        (
            format!("[log]\nformat = \"xml\"\n{acct}"),
            vec![],
            "log.format",
        ),
        (
            format!("[sync]\nmax_delete_fraction = 2.0\n{acct}"),
            vec![],
            "sync.max_delete_fraction",
        ),
        (
            format!("[sync]\nprogress = \"loud\"\n{acct}"),
            vec![],
            "sync.progress",
        ),
        (
            "[[accounts]]\nintegrated_account_id = \"not-a-uuid\"\n".into(),
            vec![],
            "accounts[0].integrated_account_id",
        ),
        (
            "[[accounts]]\nlabel = \"x\"\n".into(),
            vec![],
            "integrated_account_id",
        ),
        (format!("{acct}{acct}"), vec![], "duplicate"),
        (format!("{acct}colour = \"red\"\n"), vec![], "colour"),
        (
            format!("{acct}remote_query = \"status=active\"\n"),
            vec![],
            "accounts[0].remote_query",
        ),
        ("".into(), vec![], "accounts"),
        // A tenant's entry: a tenant id, once, that discovery lets in, with an account's keys.
        (
            "[discovery]\nenabled = true\n[[tenants]]\nhydrate = true\n".into(),
            vec![],
            "tenants[0].tenant_id: required",
        ),
        (
            "[discovery]\nenabled = true\n[[tenants]]\ntenant_id = \"acme corp\"\n".into(),
            vec![],
            "tenants[0].tenant_id: \"acme corp\" is not a tenant id",
        ),
        (
            "[discovery]\nenabled = true\n[[tenants]]\ntenant_id = \"acme\"\n\
             [[tenants]]\ntenant_id = \"acme\"\n"
                .into(),
            vec![],
            "tenants[1].tenant_id: tenant acme has another [[tenants]] entry",
        ),
        (
            "[discovery]\nenabled = true\ntenant_ids = [\"acme\", \"globex \"]\n".into(),
            vec![],
            "discovery.tenant_ids[1]: \"globex \" is not a tenant id",
        ),
        (
            "[discovery]\nenabled = true\ntenant_ids = [\"globex\"]\n\
             [[tenants]]\ntenant_id = \"acme\"\n"
                .into(),
            vec![],
            "tenants[0].tenant_id: tenant acme is not in discovery.tenant_ids",
        ),
        (
            "[discovery]\nenabled = true\n[[tenants]]\ntenant_id = \"acme\"\n\
             exclude_fields = [\"id\"]\n"
                .into(),
            vec![],
            "tenants[0].exclude_fields",
        ),
        (
            "[discovery]\nenabled = true\n[[tenants]]\ntenant_id = \"acme\"\n\
             schedule = { every = \"soon\" }\n"
                .into(),
            vec![],
            "tenants[0].schedule.every",
        ),
        (
            "[discovery]\nenabled = true\n[[tenants]]\ntenant_id = \"acme\"\nhydrat = true\n"
                .into(),
            vec![],
            "hydrat",
        ),
        (
            acct.clone(),
            vec![("LMS_SYNC__TRUTO__PAGE_SIZE", "abc")],
            "truto.page_size",
        ),
        (
            acct.clone(),
            vec![("LMS_SYNC__TRUTO__NOPE", "1")],
            "LMS_SYNC__TRUTO__NOPE",
        ),
        (
            acct.clone(),
            vec![("LMS_SYNC__SERVER__ACCOUNT_METRICS", "two_replicas")],
            "server.account_metrics",
        ),
        (
            acct.clone(),
            vec![("LMS_SYNC__SERVER__PER_ACCOUNT_COUNTERS", "maybe")],
            "server.per_account_counters",
        ),
    ];
    assert!(cases.len() >= 20);
    for (toml, extra_env, key) in cases {
        let path = write_config(&toml);
        let mut env: Vec<(&str, &str)> = db.to_vec();
        env.extend(extra_env.iter().cloned());

        let out = run(&["--config", path.to_str().unwrap(), "sync"], &env).await;

        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{toml:?}: {stderr}");
        assert!(
            stderr.contains(key),
            "{toml:?}: expected {key:?} in {stderr:?}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr:?}");
        assert!(stdout.is_empty());
    }
}

#[tokio::test]
async fn missing_file_token_database_or_account_exit_2() {
    let out = run(&["--config", "/nonexistent/lms.toml", "sync"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out)
        .1
        .contains("cannot read config file /nonexistent/lms.toml"));

    let path = write_config(&format!(
        "[[accounts]]\nintegrated_account_id = \"{ACCT}\"\n"
    ));
    let cfg = path.to_str().unwrap();
    let out = run(
        &["--config", cfg, "sync"],
        &[("DATABASE_URL", "postgres://u@127.0.0.1:1/db")],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("TRUTO_API_TOKEN"), "{}", text(&out).1);

    let out = run(&["--config", cfg, "sync"], &[("TRUTO_API_TOKEN", "t")]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("database.url"), "{}", text(&out).1);

    let other = Uuid::new_v4().to_string();
    let out = run(
        &["--config", cfg, "sync", "--account", &other],
        &[
            ("TRUTO_API_TOKEN", "t"),
            ("DATABASE_URL", "postgres://u@127.0.0.1:1/db"),
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("not configured"));

    let out = run(&["--config", cfg, "frobnicate"], &[]).await;
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

#[tokio::test]
async fn config_shows_each_setting_and_where_it_came_from_and_never_a_secret() {
    let path = write_config(&format!(
        "[truto]\npage_size = 200\nbase_url = \"http://127.0.0.1:1\"\n\
         [database]\nurl = \"postgres://lms:db-pw-s3cret@127.0.0.1:1/lms?sslmode=disable&password=q-s3cret\"\n\
         [[accounts]]\nintegrated_account_id = \"{ACCT}\"\nlabel = \"Acme\"\n\
         schedule = {{ every = \"1h\" }}\n"
    ));
    let token = TempFile::new("lms-sync-cli", ".token", "tok-s3cret\n");
    let cfg = path.to_str().unwrap();
    let env = [
        ("LMS_SYNC__TRUTO__PAGE_SIZE", "300"),
        ("LMS_SYNC__TRUTO__API_TOKEN_FILE", token.to_str().unwrap()),
        ("DATABASE_URL", "postgres://x:env-pw-s3cret@127.0.0.1:1/d"),
        ("LMS_SYNC_TRUTO__MAX_ATTEMPTS", "3"),
    ];
    let out = run(&["--config", cfg, "--no-migrate", "config", "--json"], &env).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for secret in ["s3cret", "tok-"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{stdout}{stderr}"
        );
    }
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let settings = &v["settings"];
    assert_eq!(
        settings["truto.page_size"],
        serde_json::json!({"value": 300, "from": "env LMS_SYNC__TRUTO__PAGE_SIZE", "file_value": 200, "fixed_at_start": true})
    );
    assert_eq!(settings["truto.base_url"]["from"], "file");
    assert_eq!(
        settings["truto.max_attempts"],
        serde_json::json!({"value": 8, "from": "default", "fixed_at_start": true})
    );
    // A key a reload applies.
    assert_eq!(settings["schedule.every"]["fixed_at_start"], false);
    assert_eq!(
        settings["database.migrate"],
        serde_json::json!({"value": false, "from": "--no-migrate", "fixed_at_start": true})
    );
    assert_eq!(settings["schedule.at"]["value"], serde_json::Value::Null);
    assert_eq!(v["config_file"], cfg);
    assert_eq!(
        v["secrets"]["database.url"],
        serde_json::json!({"set": true, "from": "file",
            "shown": "postgres://lms:***@127.0.0.1:1/lms?sslmode=disable&password=***"})
    );
    assert_eq!(
        v["secrets"]["truto.api_token"]["from"],
        format!("truto.api_token_file {}", token.to_str().unwrap())
    );
    assert_eq!(
        v["secrets"]["server.admin_token"],
        serde_json::json!({"set": false, "from": "unset"})
    );
    let notes = v["notes"].to_string();
    assert!(
        notes.contains("DATABASE_URL is not read: database.url is set (file), and wins"),
        "{notes}"
    );
    assert!(
        notes.contains("LMS_SYNC_TRUTO__MAX_ATTEMPTS is not read: a setting's variable starts with LMS_SYNC__ (two underscores), as LMS_SYNC__TRUTO__MAX_ATTEMPTS"),
        "{notes}"
    );
    assert_eq!(
        v["accounts"],
        serde_json::json!([{"integrated_account_id": ACCT, "label": "Acme",
            "schedule": {"every": "1h"}, "exclude_fields": [], "hydrate": false,
            "ignore_remote_data": false, "remote_query": {}}])
    );

    // The TOML form is a config file: saved and read back with no environment, the same
    // settings, each now from the file (or its default).
    let out = run(&["--config", cfg, "config"], &env).await;
    let (toml_text, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!toml_text.contains("s3cret"), "{toml_text}");
    assert!(
        toml_text
            .contains("page_size = 300  # env LMS_SYNC__TRUTO__PAGE_SIZE (over the file's 200)\n"),
        "{toml_text}"
    );
    let saved = write_config(&toml_text);
    let out = run(
        &["--config", saved.to_str().unwrap(), "config", "--json"],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let values = |v: &serde_json::Value| -> Vec<(String, serde_json::Value)> {
        v["settings"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, s)| (k.clone(), s["value"].clone()))
            .collect()
    };
    let mut expected = values(&v);
    // `--no-migrate` is a flag, not a setting the file keeps.
    for (k, value) in &mut expected {
        if k == "database.migrate" {
            *value = serde_json::Value::Bool(true);
        }
    }
    assert_eq!(values(&again), expected);
    assert_eq!(again["accounts"], v["accounts"]);
    assert_eq!(again["settings"]["truto.page_size"]["from"], "file");

    // What every command would refuse, `config` refuses too, naming the key.
    let out = run(
        &["--config", cfg, "config"],
        &[("LMS_SYNC__TRUTO__API_TOKEN_FILE", "/nonexistent/token")],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("truto.api_token_file"),
        "{}",
        text(&out).1
    );
    let out = run(
        &["--config", cfg, "config"],
        &[("LMS_SYNC__TRUTO__PAGE_SIZE", "0")],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).1.contains("LMS_SYNC__TRUTO__PAGE_SIZE"),
        "{}",
        text(&out).1
    );
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn an_unreachable_database_exits_1_with_a_clear_message_and_no_password() {
    let path = write_config(&format!(
        "[database]\nconnect_timeout_secs = 2\n[[accounts]]\nintegrated_account_id = \"{ACCT}\"\n"
    ));
    let out = run(
        &["--config", path.to_str().unwrap(), "sync"],
        &[
            ("TRUTO_API_TOKEN", "t"),
            ("DATABASE_URL", "postgres://u:hunter2secret@127.0.0.1:1/db"),
        ],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("cannot connect to the database"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2secret") && !stdout.contains("hunter2secret"));
}

/// Several hosts in database.url that lms-sync cannot use as given: said at start (exit 2),
/// naming the fault, never the password.
#[tokio::test]
async fn a_database_url_whose_hosts_cannot_be_used_exits_2_saying_why() {
    let path = write_config(&format!(
        "[[accounts]]\nintegrated_account_id = \"{ACCT}\"\n"
    ));
    for (url, said) in [
        (
            "postgres://u:hunter2secret@db-1,db-2/x?target_session_attrs=standby",
            "target_session_attrs=standby is not one lms-sync can use: it writes the mirror",
        ),
        (
            "postgres://u:hunter2secret@db-1/x?host=/run/a,/run/b,/run/c&port=1,2",
            "it gives 2 ports for 3 hosts in port=",
        ),
    ] {
        let out = run(
            &["--config", path.to_str().unwrap(), "check"],
            &[("TRUTO_API_TOKEN", "t"), ("DATABASE_URL", url)],
        )
        .await;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(said), "{stderr}");
        assert!(!stderr.contains("hunter2secret") && !stdout.contains("hunter2secret"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_accepts_no_writes_fails_the_sync_saying_so_and_keeps_the_mirror() {
    let a = account_id(1);
    let sim = sim_with(&[(a, 150)], "tok-ro").await;
    let db = fresh_database_url().await;
    let cfg = config_for(&sim, &[(a, "Acme")]);
    let args = ["--config", cfg.to_str().unwrap(), "sync"];
    let env = [
        ("TRUTO_API_TOKEN", "tok-ro"),
        ("LMS_SYNC__DATABASE__URL", db.as_str()),
    ];
    let first = run(&args, &env).await;
    assert!(first.status.success(), "{}", text(&first).1);
    // What a failover onto a standby, or a maintenance window, looks like to new sessions.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db)
        .await
        .unwrap();
    sqlx::query(
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET default_transaction_read_only = on', \
         current_database()); END $$",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    sim.delete_user(a, "3");
    let requests = sim.stats().requests;

    for args in [
        &args[..],
        &["--config", cfg.to_str().unwrap(), "--no-migrate", "sync"],
    ] {
        let out = run(args, &env).await;
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        // Said before anything is fetched or written.
        assert!(
            stderr.contains(
                "the database is not ready: the database accepts no writes: this role's \
                 sessions are read-only (default_transaction_read_only is on"
            ),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(sim.stats().requests, requests, "nothing fetched");
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM lms.users WHERE integrated_account_id = $1 AND deleted_at IS NULL",
    )
    .bind(a)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(live, 150, "the mirror is as the last sync left it");
}

/// `check` says whether Truto's webhooks would be received and acted on: a secret set with
/// discovery off (events ignored), or without the operations server, fails its line, as does a
/// secret file that cannot be read (run would not start); with both, the line says where they
/// are received; with discovery on and no secret, that new accounts wait for the next listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_whether_webhooks_would_be_received_and_acted_on() {
    let a = account_id(1);
    let sim = sim_with(&[(a, 10)], "tok-wh").await;
    sim.set_integrated(a, lms_sync::devkit::simulator::Integrated::active("acme"));
    let db = fresh_database_url().await;
    let cfg = config_for(&sim, &[(a, "Acme")]);
    let quiet = std::fs::read_to_string(&cfg).unwrap() + "[server]\nlisten = \"\"\n";
    let no_listen = write_config(&quiet);
    let secret = TempFile::new("lms-sync-wh", "", "whsec-check-SECRET\n");
    let secret = secret.to_str().unwrap();
    let env = |extra: &[(&'static str, &str)]| {
        let mut env = vec![
            ("TRUTO_API_TOKEN", "tok-wh".to_string()),
            ("LMS_SYNC__DATABASE__URL", db.clone()),
        ];
        env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        env
    };
    let migrated = run(
        &["--config", cfg.to_str().unwrap(), "migrate"],
        &[
            ("TRUTO_API_TOKEN", "tok-wh"),
            ("LMS_SYNC__DATABASE__URL", db.as_str()),
        ],
    )
    .await;
    assert!(migrated.status.success(), "{}", text(&migrated).1);
    let on = ("LMS_SYNC__DISCOVERY__ENABLED", "true");
    // (check's line, configuration, environment, exit code, what the line says)
    for (name, config, extra, code, said) in [
        (
            "webhooks",
            &cfg,
            vec![on, ("LMS_SYNC__WEBHOOKS__SECRET_FILE", secret)],
            0,
            "ok       POST /webhooks/truto on 127.0.0.1:9000 verifies deliveries with the secret \
             from webhooks.secret_file",
        ),
        (
            "webhooks",
            &cfg,
            vec![on],
            0,
            "ok       off (no TRUTO_WEBHOOK_SECRET or webhooks.secret_file): an account connected \
             in Truto is found by the next listing",
        ),
        (
            "webhooks",
            &cfg,
            vec![("TRUTO_WEBHOOK_SECRET", "whsec-check-SECRET")],
            1,
            "FAILED   a webhook secret is set, but discovery is off: account events would be \
             answered and ignored",
        ),
        (
            "webhooks",
            &no_listen,
            vec![on, ("TRUTO_WEBHOOK_SECRET", "whsec-check-SECRET")],
            1,
            "FAILED   a webhook secret is set, but server.listen is empty",
        ),
        (
            "webhooks",
            &cfg,
            vec![on, ("LMS_SYNC__WEBHOOKS__SECRET_FILE", "/nonexistent/webhook-secret")],
            1,
            "FAILED   invalid configuration: webhooks.secret_file: cannot read /nonexistent/webhook-secret",
        ),
        // The admin routes' token likewise: a file that cannot be read stopped `run` at start.
        (
            "admin routes",
            &cfg,
            vec![("LMS_SYNC__SERVER__ADMIN_TOKEN_FILE", secret)],
            0,
            "ok       GET /status, /status/budget and POST /accounts/{id}/... on 127.0.0.1:9000 \
             take the token from server.admin_token_file",
        ),
        (
            "admin routes",
            &no_listen,
            vec![("LMS_SYNC_ADMIN_TOKEN", "whsec-check-SECRET")],
            1,
            "FAILED   an admin token is set, but server.listen is empty",
        ),
        (
            "admin routes",
            &cfg,
            vec![("LMS_SYNC__SERVER__ADMIN_TOKEN_FILE", "/nonexistent/admin-token")],
            1,
            "FAILED   invalid configuration: server.admin_token_file: cannot read /nonexistent/admin-token",
        ),
    ] {
        let out = run(
            &["--config", config.to_str().unwrap(), "--no-migrate", "check"],
            &env(&extra)
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect::<Vec<_>>(),
        )
        .await;
        let (stdout, stderr) = text(&out);
        let line = stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{extra:?}: no {name} line:\n{stdout}{stderr}"));
        assert!(line.contains(said), "{extra:?}: {line}\n{stdout}");
        assert_eq!(out.status.code(), Some(code), "{extra:?}:\n{stdout}{stderr}");
        assert!(!stdout.contains("whsec-check-SECRET") && !stderr.contains("whsec-check-SECRET"));
    }

    // `status` says what the receiver verified lately, as the status page does.
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db)
        .await
        .unwrap();
    sqlx::raw_sql(
        "INSERT INTO lms.webhook_events (event_id, event, received_at) VALUES
           ('e-old', 'test', now() - interval '2 days'),
           ('e-1', 'integrated_account:created', now() - interval '2 hours'),
           ('e-2', 'integrated_account:active', now() - interval '1 hour')",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let out = run(
        &["--config", cfg.to_str().unwrap(), "--no-migrate", "status"],
        &env(&[on, ("LMS_SYNC__WEBHOOKS__SECRET_FILE", secret)])
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect::<Vec<_>>(),
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("webhooks: "))
        .unwrap_or_else(|| panic!("no webhooks line:\n{stdout}"));
    assert!(
        line.starts_with("webhooks: 2 verified in the last 24 h; the last 20")
            && line.ends_with("Z (integrated_account:active)"),
        "{line}"
    );
}

async fn sim_with(accounts: &[(Uuid, usize)], token: &str) -> Simulator {
    let sim = Simulator::start(0).await.unwrap();
    sim.set_token(token);
    for (i, (id, n)) in accounts.iter().enumerate() {
        sim.add_account(*id, *n, i as u64 + 1);
    }
    sim
}

fn config_for(sim: &Simulator, accounts: &[(Uuid, &str)]) -> TempFile {
    let mut t = format!(
        "[truto]\nbase_url = \"{}\"\nbackoff_initial_ms = 5\n[sync]\nprogress = \"log\"\n",
        sim.base_url()
    );
    for (id, label) in accounts {
        t.push_str(&format!(
            "[[accounts]]\nintegrated_account_id = \"{id}\"\nlabel = \"{label}\"\n"
        ));
    }
    write_config(&t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_status_and_migrate_work_end_to_end_and_never_show_the_token() {
    let token = "tok-SUPERSECRET-4242";
    let (a, b) = (account_id(1), account_id(2));
    let sim = sim_with(&[(a, 230), (b, 40)], token).await;
    let db = fresh_database_url().await;
    let cfg = config_for(&sim, &[(a, "Acme Academy"), (b, "Beta Learning")]);
    let cfg = cfg.to_str().unwrap();
    let env = [
        ("TRUTO_API_TOKEN", token),
        ("LMS_SYNC__DATABASE__URL", db.as_str()),
        ("RUST_LOG", "trace"),
    ];

    let migrate = run(&["--config", cfg, "migrate"], &env).await;
    assert_eq!(migrate.status.code(), Some(0), "{}", text(&migrate).1);

    let out = run(&["--config", cfg, "sync"], &env).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("Acme Academy") && stdout.contains("Beta Learning"),
        "{stdout}"
    );
    let acme = stdout
        .lines()
        .find(|l| l.starts_with("Acme Academy"))
        .unwrap();
    assert!(
        acme.contains("succeeded") && acme.contains(" 230 "),
        "{acme}"
    );
    assert!(
        stderr.contains("sync run finished"),
        "one summary line per run"
    );

    // One account fails: exit 1, the other still syncs.
    sim.block(
        b,
        Fault::Status {
            status: 401,
            retry_after: None,
            remote: true,
        },
    );
    let failed = run(&["--config", cfg, "sync"], &env).await;
    let (fstdout, fstderr) = text(&failed);
    assert_eq!(failed.status.code(), Some(1));
    assert!(fstdout.contains("re-authorize"), "{fstdout}");

    let only = run(
        &["--config", cfg, "sync", "--account", &a.to_string()],
        &env,
    )
    .await;
    assert_eq!(only.status.code(), Some(0));

    let status = run(&["--config", cfg, "status"], &env).await;
    let (sstdout, sstderr) = text(&status);
    assert_eq!(status.status.code(), Some(0), "{sstderr}");
    let beta = sstdout
        .lines()
        .find(|l| l.starts_with("Beta Learning"))
        .unwrap();
    assert!(
        beta.contains("failed") && beta.contains("needs_reauth"),
        "{sstdout}"
    );
    assert!(sstdout.contains("last error"), "{sstdout}");
    assert!(sstdout.contains("unhealthy since"), "{sstdout}");
    // Under the table, the fleet's summary: Beta needs re-authorization.
    assert!(
        sstdout
            .lines()
            .any(|l| l
                == "fleet: 2 accounts, 270 live users; 1 needs attention (1 cannot be synced)"),
        "{sstdout}"
    );
    let header = sstdout.lines().next().unwrap();
    assert!(
        header.contains("health") && header.contains("next run"),
        "{header}"
    );

    // At the default log level, migrating again says nothing of what already exists
    // (PostgreSQL's notices, which sqlx logs at INFO).
    let again = run(&["--config", cfg, "migrate"], &env[..2]).await;
    let (_, again_stderr) = text(&again);
    assert_eq!(again.status.code(), Some(0), "{again_stderr}");
    assert!(!again_stderr.contains("already exists"), "{again_stderr}");

    for output in [&stdout, &stderr, &fstdout, &fstderr, &sstdout, &sstderr] {
        assert!(
            !output.contains("SUPERSECRET"),
            "the token leaked: {output}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_shows_at_any_log_level_in_either_format() {
    let token = "tok-LEVELSECRET-9931";
    let (a, b) = (account_id(1), account_id(2));
    let sim = sim_with(&[(a, 120), (b, 30)], token).await;
    // Something to log at every level: retries, a refused record, a failing account.
    sim.set_raw_record(a, "7", r#"{"id":"7","emails":"nope"}"#);
    sim.block(
        b,
        Fault::Status {
            status: 401,
            retry_after: None,
            remote: true,
        },
    );
    let db = fresh_database_url().await;
    for format in ["pretty", "json"] {
        let cfg = write_config(&format!(
            "[truto]\nbase_url = \"{}\"\nbackoff_initial_ms = 5\n[sync]\nprogress = \"log\"\n\
             [log]\nformat = \"{format}\"\n\
             [[accounts]]\nintegrated_account_id = \"{a}\"\n[[accounts]]\nintegrated_account_id = \"{b}\"\n",
            sim.base_url()
        ));
        let cfg = cfg.to_str().unwrap();
        for level in ["error", "warn", "info", "debug", "trace"] {
            // On the second page: fetched ahead, by a task of the run's own.
            sim.push_fault_after(Some(a), 1, Fault::status(500));
            let env = [
                ("TRUTO_API_TOKEN", token),
                ("LMS_SYNC__DATABASE__URL", db.as_str()),
                ("RUST_LOG", level),
            ];
            for args in [
                vec!["--config", cfg, "sync"],
                vec!["--config", cfg, "status"],
            ] {
                let out = run(&args, &env).await;
                let (stdout, stderr) = text(&out);
                assert!(out.status.code().is_some(), "{format}/{level}: {args:?}");
                for output in [&stdout, &stderr] {
                    assert!(
                        !output.contains("LEVELSECRET"),
                        "{format}/{level}/{args:?}: the token leaked:\n{output}"
                    );
                }
                if level == "trace" && args[2] == "sync" {
                    // In the run's span: the account once, and the run.
                    let line = stderr
                        .lines()
                        .find(|l| l.contains("retrying page request"))
                        .unwrap_or_else(|| panic!("{format}: no retry line:\n{stderr}"));
                    if format == "json" {
                        let ev: serde_json::Value = serde_json::from_str(line).unwrap();
                        assert_eq!(ev["span"]["account"], a.to_string(), "{line}");
                        assert!(ev["span"]["run_id"].is_u64(), "{line}");
                    } else {
                        assert_eq!(line.matches("account=").count(), 1, "{line}");
                        assert!(line.contains(&format!("account={a}")), "{line}");
                        assert!(line.contains("run_id="), "{line}");
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn bench_refuses_bad_scenarios_or_repeats_before_starting_anything() {
    for (args, names) in [
        (&["bench", "--scenarios", "S1,S9"][..], "S9"),
        (&["bench", "--scenarios", "S4"][..], "choose S1 too"),
        (&["bench", "--repeat", "0"][..], "--repeat"),
        (&["bench", "--repeat", "21"][..], "--repeat"),
    ] {
        let o = run(args, &[]).await;
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(names), "{args:?}: {err}");
    }
}

/// Every key a command line can be given is documented where an operator looks for it: a row
/// of the README's configuration table and a line of config/default.toml, in its section (for
/// `account_defaults`, the keys of an `[[accounts]]` table: the same, documented once).
#[tokio::test]
async fn every_key_is_in_the_readme_and_in_default_toml() {
    let readme = include_str!("../../README.md");
    let defaults = include_str!("../../config/default.toml");
    let path = write_config("");
    let out = run(
        &["--config", path.to_str().unwrap(), "config", "--json"],
        &[],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let keys: Vec<&String> = v["settings"].as_object().unwrap().keys().collect();
    assert!(keys.len() >= 60, "{keys:?}");
    // The lines of default.toml under each table header, comments included.
    let mut sections: std::collections::HashMap<&str, Vec<&str>> = Default::default();
    let mut current = "";
    for line in defaults.lines() {
        let bare = line.trim_start_matches('#').trim();
        if let Some(header) = bare.strip_prefix('[').and_then(|h| h.split(']').next()) {
            if !line.starts_with('#') || bare.starts_with("[[accounts]]") {
                current = header.trim_start_matches('[');
            }
        }
        sections.entry(current).or_default().push(bare);
    }
    let mut undocumented = Vec::new();
    for key in keys {
        let (section, name) = key.split_once('.').unwrap();
        let (in_readme, toml_section) = if section == "account_defaults" {
            (
                readme.contains(&format!("| `accounts[].{name}")),
                "accounts",
            )
        } else {
            (readme.contains(&format!("| `{key}` |")), section)
        };
        if !in_readme {
            undocumented.push(format!("{key}: no row in the README's configuration table"));
        }
        let in_toml = sections.get(toml_section).is_some_and(|lines| {
            lines.iter().any(|l| {
                l.starts_with(&format!("{name} ="))
                    || l.starts_with(&format!("[{toml_section}.{name}]"))
            })
        });
        if !in_toml {
            undocumented.push(format!(
                "{key}: no line in config/default.toml's [{toml_section}]"
            ));
        }
    }
    assert!(undocumented.is_empty(), "{undocumented:#?}");
}
