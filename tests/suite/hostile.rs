//! Hostile input: records and pages built to break parsers, PostgreSQL or assumptions. Each
//! case ends with no crash, nothing mirrored lost, and a clear record of what was refused.

use crate::helpers::*;
use lms_sync::devkit::simulator::Fault;
use lms_sync::domain::{ErrorKind, Outcome};
use lms_sync::sync::PassStatus;
use serde_json::Value;

async fn rejected(env: &Env) -> Vec<(Option<String>, String)> {
    sqlx::query_as("SELECT user_id, reason FROM rejected_records ORDER BY rejection_id")
        .fetch_all(env.store.pool())
        .await
        .unwrap()
}

fn reason_of<'a>(r: &'a [(Option<String>, String)], id: &str) -> &'a str {
    r.iter()
        .find(|(u, _)| u.as_deref() == Some(id))
        .map(|(_, reason)| reason.as_str())
        .unwrap_or_else(|| panic!("no rejection for {id}: {r:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_parsers_disagree_on_or_postgres_cannot_hold_are_kept_or_refused_never_lost() {
    let a = account_id(1);
    let env = Env::new(&[(a, 300)]).await;
    assert!(env.sync(a).await.succeeded());
    let big_name = "é".repeat(600_000); // 1.2 MB of text
    let wide: serde_json::Map<String, Value> = (0..20_000)
        .map(|i| (format!("k{i}"), Value::from(i)))
        .collect();
    let raws: Vec<(&str, String)> = vec![
        // JSON parsers disagree on duplicate keys (first wins? last wins?): refuse, don't guess.
        ("21", r#"{"id":"21","name":"first","name":"second"}"#.into()),
        // A lone surrogate is not a character: no UTF-8 for it.
        ("22", r#"{"id":"22","name":"\ud800"}"#.into()),
        // Control characters other than NUL are text PostgreSQL stores as given.
        ("23", "{\"id\":\"23\",\"name\":\"tab\\there\\u0007bell\\u001b[0m\\r\\n\"}".into()),
        ("24", format!(r#"{{"id":"24","name":"{big_name}"}}"#)),
        ("25", format!(r#"{{"id":"25","custom_fields":{}}}"#, Value::Object(wide))),
        // Nulls inside arrays are skipped; wrong types inside them refuse the record.
        ("26", r#"{"id":"26","emails":[null,{"email":"x@y.example"},null],"phones":[null]}"#.into()),
        ("27", r#"{"id":"27","emails":[5]}"#.into()),
        ("28", r#"{"id":"28","phones":[{"number":12345}]}"#.into()),
        // A manager without an id is kept as given.
        ("29", r#"{"id":"29","manager":{"name":"The Boss","emails":null}}"#.into()),
        ("30", r#"{"id":"30","created_at":"2024-02-30T00:00:00Z"}"#.into()),
        ("31", r#"{"id":"31","created_at":"2024-01-05 10:00:00","updated_at":"2024-01-05T10:00:00.123456789+05:30"}"#.into()),
        ("32", r#"{"id":"32","status":"on_sabbatical","role":{"not":"text"}}"#.into()),
        ("33", r#"{"id":"33","custom_fields":{"n":1e400000}}"#.into()),
    ];
    for (id, raw) in &raws {
        env.sim.set_raw_record(a, id, raw);
    }
    // The same id twice: once on this page, once on the next (the later record wins).
    env.sim
        .set_raw_record(a, "40", r#"{"id":"160","name":"an early copy of 160"}"#);

    let o = env.sync(a).await;
    assert_eq!(
        o.status,
        PassStatus::Finished(Outcome::Succeeded),
        "{:?}",
        o.error
    );
    let r = rejected(&env).await;
    assert!(reason_of(&r, "21").contains("duplicate field"), "{r:?}");
    assert!(reason_of(&r, "22").contains("not valid JSON"), "{r:?}");
    assert!(reason_of(&r, "27").contains("fit"), "{r:?}");
    assert!(reason_of(&r, "28").contains("fit"), "{r:?}");
    assert!(reason_of(&r, "30").starts_with("created_at"), "{r:?}");
    assert!(reason_of(&r, "32").contains("fit"), "{r:?}");
    assert!(reason_of(&r, "33").contains("number"), "{r:?}");
    assert_eq!(r.len(), 7, "{r:?}");

    let text = |id: &'static str, col: &'static str| {
        let sql =
            format!("SELECT {col}::text FROM users WHERE integrated_account_id = $1 AND id = $2");
        let pool = env.store.pool().clone();
        async move {
            sqlx::query_scalar::<_, Option<String>>(&sql)
                .bind(a)
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        text("23", "name").await.as_deref(),
        Some("tab\there\u{7}bell\u{1b}[0m\r\n")
    );
    assert_eq!(text("24", "name").await.unwrap(), big_name);
    let keys = env
        .scalar_i64(&format!("SELECT count(*) FROM users u, jsonb_object_keys(u.custom_fields) WHERE u.integrated_account_id = '{a}' AND u.id = '25'"))
        .await;
    assert_eq!(keys, 20_000);
    let emails26 = env
        .scalar_i64("SELECT count(*) FROM user_emails WHERE user_id = '26'")
        .await;
    assert_eq!(emails26, 1);
    let boss: (Option<String>, Option<String>) =
        sqlx::query_as("SELECT manager_id, manager_name FROM user_managers WHERE user_id = '29'")
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!(boss, (None, Some("The Boss".into())));
    assert_eq!(
        text("31", "(created_at at time zone 'UTC')")
            .await
            .as_deref(),
        Some("2024-01-05 10:00:00")
    );
    // Refused records with a usable id stay as they were mirrored, live.
    let live_refused = env
        .scalar_i64("SELECT count(*) FROM users WHERE id IN ('21','22','27','28','30','32','33') AND deleted_at IS NULL AND first_seen_at < last_changed_at + interval '1 hour'")
        .await;
    assert_eq!(live_refused, 7);
    let name160: Option<String> = text("160", "name").await;
    assert_ne!(name160.as_deref(), Some("an early copy of 160"));
    // Every user the API still lists normally is exact.
    assert_mirror(&env.store, &env.sim, a).await;
    // The only user gone is 40, whose place in the listing now holds the copy of 160.
    let gone: Vec<String> = sqlx::query_scalar("SELECT id FROM users WHERE deleted_at IS NOT NULL")
        .fetch_all(env.store.pool())
        .await
        .unwrap();
    assert_eq!(gone, ["40"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_that_are_not_what_they_should_be_are_retried_or_fail_clearly_and_touch_nothing() {
    let a = account_id(1);
    let mut env = Env::new(&[(a, 400)]).await;
    env.settings.truto.max_attempts = 3;
    assert!(env.sync(a).await.succeeded());
    let before = row_versions(&env.store).await;
    let cases: Vec<(Fault, &str)> = vec![
        (Fault::Body("this is not json".into()), "not a JSON object"),
        (Fault::Body("[1,2,3]".into()), "not a JSON object"),
        (
            Fault::Body(r#"{"result":{"id":"1"}}"#.into()),
            "not an array",
        ),
        (Fault::Body(r#"{"data":[]}"#.into()), "no `result`"),
        (
            Fault::Body(r#"{"result":[],"next_cursor":{"page":2}}"#.into()),
            "not a string",
        ),
        (Fault::Html200, "text/html"),
    ];
    for (fault, says) in cases {
        env.sim.block(a, fault.clone());
        let o = env.sync(a).await;
        assert_eq!(o.status, PassStatus::Finished(Outcome::Failed), "{fault:?}");
        assert_eq!(
            o.error_kind.map(ErrorKind::as_str),
            Some("invalid_page"),
            "{fault:?}"
        );
        let err = o.error.unwrap();
        assert!(err.contains(says), "{fault:?}: {err}");
        assert_eq!(row_versions(&env.store).await, before, "{fault:?}");
    }
    env.sim.unblock(a);

    // A huge page (100 records of ~200 kB: 20 MB) is stored whole.
    let blob = "x".repeat(200_000);
    for i in 1..=100 {
        env.sim.set_raw_record(
            a,
            &i.to_string(),
            &format!(r#"{{"id":"{i}","custom_fields":{{"blob":"{blob}"}}}}"#),
        );
    }
    let o = env.sync(a).await;
    assert!(o.succeeded(), "{:?}", o.error);
    let stored = env
        .scalar_i64("SELECT count(*) FROM users WHERE length(custom_fields->>'blob') = 200000")
        .await;
    assert_eq!(stored, 100);
    assert_mirror(&env.store, &env.sim, a).await;
}

/// A server's waits and windows can be absurd: a `Retry-After`, a `ratelimit-reset` or a
/// window of u64::MAX seconds. Each reads as a day at most: the account told to wait fails
/// its run saying why, and the process's other accounts sync as if nothing was said. (Before,
/// the time arithmetic panicked while the request budget's lock was held, which poisoned it:
/// every later request of the process panicked too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_waits_and_windows_from_the_server_fail_their_account_clearly_and_stop_no_other() {
    let (told, windowed, quiet) = (account_id(1), account_id(2), account_id(3));
    let env = Env::new(&[(told, 250), (windowed, 250), (quiet, 250)]).await;
    let forever = u64::MAX.to_string();
    env.sim.push_fault(
        Some(told),
        Fault::Status {
            status: 429,
            retry_after: Some(forever.clone()),
            remote: false,
        },
    );
    env.sim.push_fault(
        Some(windowed),
        Fault::Headers(vec![
            ("ratelimit-limit".into(), format!("5000;w={forever}")),
            ("ratelimit-remaining".into(), "4999".into()),
            ("ratelimit-reset".into(), forever.clone()),
        ]),
    );
    let cfg = crate::helpers::daemon::config(&env.sim, &[told, windowed, quiet], "1h", 3);
    let out = crate::helpers::daemon::one_off_sync(&cfg, &env.db_url)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(1), "one account failed: {stderr}");

    let run = |id: uuid::Uuid| {
        let pool = env.store.pool().clone();
        async move {
            sqlx::query_as::<_, (String, Option<String>, Option<String>)>(
                "SELECT outcome, error_kind, error FROM sync_runs WHERE integrated_account_id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let (outcome, kind, error) = run(told).await;
    assert_eq!(outcome, "failed");
    assert_eq!(kind.as_deref(), Some("rate_limited"));
    let error = error.unwrap();
    assert!(
        error.contains("HTTP 429")
            && error.contains("asked to wait 86400 s, longer than truto.max_retry_wait_secs"),
        "{error}"
    );
    for id in [windowed, quiet] {
        assert_eq!(run(id).await.0, "succeeded", "{id}");
        assert_mirror(&env.store, &env.sim, id).await;
    }
    // The told account asked once, and was not asked again.
    let stats = env.sim.stats();
    assert_eq!(stats.by_status.get(&429), Some(&1), "{stats:?}");
    assert_eq!(stats.by_account.get(&told), Some(&1), "{stats:?}");
}

/// A server that says an account's window is spent for hours — on a successful answer
/// (`ratelimit-remaining: 0` with a reset of a day, a daily quota our own request used up) —
/// fails that account's run at once, saying why, instead of waiting the hours out with its
/// lease and a place among the concurrent passes held; the other accounts are not held up.
/// (Before, the pass waited inside its next request's slot for the whole reset.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_spent_for_hours_fails_its_run_at_once_instead_of_holding_the_account() {
    let (spent, quota, quiet) = (account_id(1), account_id(2), account_id(3));
    let env = Env::new(&[(spent, 250), (quota, 250), (quiet, 250)]).await;
    let day = "86400".to_string();
    env.sim.push_fault(
        Some(spent),
        Fault::Headers(vec![
            ("ratelimit-remaining".into(), "0".into()),
            ("ratelimit-reset".into(), day.clone()),
        ]),
    );
    env.sim.push_fault(
        Some(quota),
        Fault::Headers(vec![
            ("ratelimit-limit".into(), format!("1;w={day}")),
            ("ratelimit-remaining".into(), "0".into()),
            ("ratelimit-reset".into(), day.clone()),
        ]),
    );
    let cfg = crate::helpers::daemon::config(&env.sim, &[spent, quota, quiet], "1h", 3);
    let mut sync = crate::helpers::daemon::one_off_sync(&cfg, &env.db_url);
    // Without the fix it waits a day: a deadline turns that into a failure.
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        sync.kill_on_drop(true).output(),
    )
    .await
    .expect("the sync ends instead of waiting out the reset")
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "two accounts failed: {stderr}");

    for id in [spent, quota] {
        let (outcome, kind, error): (String, Option<String>, Option<String>) = sqlx::query_as(
            "SELECT outcome, error_kind, error FROM sync_runs WHERE integrated_account_id = $1",
        )
        .bind(id)
        .fetch_one(env.store.pool())
        .await
        .unwrap();
        assert_eq!(outcome, "failed", "{id}");
        assert_eq!(kind.as_deref(), Some("rate_limited"), "{id}");
        let error = error.unwrap();
        assert!(
            error.contains("holds this account's requests back for another 86")
                && error.contains("longer than truto.max_retry_wait_secs allows"),
            "{id}: {error}"
        );
        // The first page was asked for and answered; nothing after it.
        assert_eq!(env.sim.stats().by_account.get(&id), Some(&1), "{id}");
    }
    let (outcome,): (String,) =
        sqlx::query_as("SELECT outcome FROM sync_runs WHERE integrated_account_id = $1")
            .bind(quiet)
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!(outcome, "succeeded");
    assert_mirror(&env.store, &env.sim, quiet).await;
}

/// After a 429 whose `Retry-After` is a day, the process's next run of that account fails at
/// once without a request, instead of waiting in its first slot for the rest of the day with
/// the account held; once the server's wait is over it syncs as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_run_after_a_long_429_fails_at_once_without_asking_again() {
    let a = account_id(1);
    let env = Env::new(&[(a, 250)]).await;
    // One client, so one request budget, for both runs: as in one process.
    let client = lms_sync::source::TrutoClient::from_settings(
        &env.settings,
        &secrecy::SecretString::from(lms_sync::devkit::simulator::DEMO_TOKEN.to_string()),
    )
    .unwrap();
    assert!(client.budget().is_some());
    let (account, options) = (
        env.account(a),
        lms_sync::sync::SyncOptions::from_settings(&env.settings),
    );
    let cancel = tokio_util::sync::CancellationToken::new();
    let pass = || {
        lms_sync::sync::sync_account(
            &env.store,
            &client,
            &account,
            &options,
            &cancel,
            &lms_sync::sync::NoProgress,
        )
    };
    env.sim.push_fault(
        Some(a),
        Fault::Status {
            status: 429,
            retry_after: Some("86400".into()),
            remote: false,
        },
    );
    let first = pass().await;
    assert_eq!(first.status, PassStatus::Finished(Outcome::Failed));
    assert!(first.error.unwrap().contains("asked to wait 86400 s"));
    assert_eq!(env.sim.stats().requests, 1);

    // Without the fix it waits a day: a deadline turns that into a failure.
    let second = tokio::time::timeout(std::time::Duration::from_secs(60), pass())
        .await
        .expect("the run ends instead of waiting out the server's wait");
    assert_eq!(second.status, PassStatus::Finished(Outcome::Failed));
    assert_eq!(second.error_kind, Some(ErrorKind::RateLimited));
    let error = second.error.unwrap();
    assert!(
        error.contains("holds this account's requests back for another 86"),
        "{error}"
    );
    assert_eq!(env.sim.stats().requests, 1, "not asked again");

    // The server's wait over (as a process's budget would see it a day later: a fresh one),
    // the account syncs whole.
    assert!(env.sync(a).await.succeeded());
    assert_mirror(&env.store, &env.sim, a).await;
}

/// An answer larger than `truto.max_body_mb` — one that says so in its Content-Length, or a
/// chunked one that never ends — fails its run at once, without a retry, before it can fill
/// the memory every account shares; nothing mirrored changes, and the run after it is whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_larger_than_the_limit_fail_their_run_without_filling_memory() {
    let a = account_id(1);
    let mut env = Env::new(&[(a, 250)]).await;
    env.settings.truto.max_body_mb = 1;
    assert!(env.sync(a).await.succeeded());
    let before = row_versions(&env.store).await;

    // A page of 100 users of `blob` each (the first page: ids 1 to 100).
    let first_page = |env: &Env, blob: &str| {
        for i in 1..=100 {
            env.sim.set_raw_record(
                a,
                &i.to_string(),
                &format!(r#"{{"id":"{i}","custom_fields":{{"blob":"{blob}"}}}}"#),
            );
        }
    };
    // 20 kB each: 2 MB, declared in its Content-Length.
    let blob = "x".repeat(20_000);
    first_page(&env, &blob);
    let requests = env.sim.stats().requests;
    let o = env.sync(a).await;
    assert_eq!(o.status, PassStatus::Finished(Outcome::Failed));
    assert_eq!(o.error_kind.map(ErrorKind::as_str), Some("invalid_page"));
    let err = o.error.unwrap();
    assert!(
        err.contains("larger than truto.max_body_mb (1 MiB)"),
        "{err}"
    );
    assert_eq!(env.sim.stats().requests, requests + 1, "not retried");
    assert_eq!(row_versions(&env.store).await, before);

    // A chunked answer without end.
    first_page(&env, "small");
    env.sim.push_fault(Some(a), Fault::Endless);
    let o = env.sync(a).await;
    assert_eq!(o.status, PassStatus::Finished(Outcome::Failed));
    let err = o.error.unwrap();
    assert!(
        err.contains("larger than truto.max_body_mb (1 MiB)"),
        "{err}"
    );
    assert_eq!(row_versions(&env.store).await, before);

    // The same 2 MB page within a larger limit is stored whole.
    first_page(&env, &blob);
    env.settings.truto.max_body_mb = 3;
    let o = env.sync(a).await;
    assert!(o.succeeded(), "{:?}", o.error);
    assert_mirror(&env.store, &env.sim, a).await;
}
