//! The operations server's admin routes against a running service: 403 without a configured
//! token, 401 with a wrong one, the accounts' actions recorded as the commands record them, and
//! the status page behind the admin token when told so.

use std::time::Duration;

use crate::helpers::service::*;
use crate::helpers::*;
use serde_json::json;
use uuid::Uuid;

const ADMIN: &str = "admin-token-for-tests";

/// With `server.status_page_requires_token`, the status page and the accounts' pages need the
/// admin token (a Bearer, or a browser's Basic password under any user name), while the
/// probes, `/metrics` and the webhooks' route stay open; without an admin token they answer
/// 403, and `run` and `check` refuse such a configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_needs_the_admin_token_when_told_to() {
    let a = account_id(1);
    let env = Env::new(&[(a, 5)]).await;
    let get = |url: String, auth: Option<(&'static str, Option<&'static str>)>| async move {
        let mut req = reqwest::Client::new().get(&url);
        req = match auth {
            Some(("bearer", Some(t))) => req.bearer_auth(t),
            Some((user, password)) => req.basic_auth(user, password),
            None => req,
        };
        let r = req.send().await.unwrap();
        let challenge = r
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        (r.status().as_u16(), challenge, r.text().await.unwrap())
    };
    let mut s = daemon_settings(&env, "1h");
    let admin = secret_file(ADMIN);
    s.server.admin_token_file = Some(admin.to_path_buf());
    s.server.status_page_requires_token = true;
    let (daemon, stop, mut rx, base) = serve_daemon(s.clone()).await;
    loop {
        if let Event::Finished(..) = next(&mut rx).await {
            break;
        }
    }
    for page in [format!("{base}/"), format!("{base}/accounts/{a}")] {
        let (status, challenge, body) = get(page.clone(), None).await;
        assert_eq!(status, 401, "{page}: {body}");
        assert_eq!(
            challenge.as_deref(),
            Some("Basic realm=\"lms-sync status\", charset=\"UTF-8\""),
            "{page}"
        );
        assert!(body.contains("server.status_page_requires_token"), "{body}");
        for wrong in [
            Some(("bearer", Some("nope"))),
            Some(("ops", Some("nope"))),
            Some(("ops", None)),
        ] {
            assert_eq!(get(page.clone(), wrong).await.0, 401, "{page} {wrong:?}");
        }
        for right in [
            Some(("bearer", Some(ADMIN))),
            Some(("ops", Some(ADMIN))),
            Some(("", Some(ADMIN))),
        ] {
            let (status, _, body) = get(page.clone(), right).await;
            assert_eq!(status, 200, "{page} {right:?}: {body}");
            assert!(body.contains("<html"), "{body}");
        }
    }
    for open in ["healthz", "readyz", "metrics"] {
        assert_eq!(get(format!("{base}/{open}"), None).await.0, 200, "{open}");
    }
    stop.cancel();
    daemon.await.unwrap().unwrap();

    // No admin token: the page is closed (403), not open.
    s.server.admin_token_file = None;
    let (daemon, stop, mut rx, base) = serve_daemon(s).await;
    loop {
        if let Event::Finished(..) = next(&mut rx).await {
            break;
        }
    }
    let (status, _, body) = get(format!("{base}/"), Some(("ops", Some(ADMIN)))).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("none is set"), "{body}");
    stop.cancel();
    daemon.await.unwrap().unwrap();

    // Nor do `run` and `check` start so.
    let cfg = crate::helpers::daemon::config(&env.sim, &[a], "1h", 1);
    for cmd in ["run", "check"] {
        let o = crate::helpers::daemon::lms_sync(&cfg, &env.db_url, &[cmd])
            .env("LMS_SYNC__SERVER__STATUS_PAGE_REQUIRES_TOKEN", "true")
            .output()
            .await
            .unwrap();
        let said = said(&o);
        assert!(
            said.contains(
                "server.status_page_requires_token is on, but no admin token is set (set \
                 LMS_SYNC_ADMIN_TOKEN or server.admin_token_file): nobody could open the status page"
            ),
            "{cmd}: {said}"
        );
        assert_eq!(
            o.status.code(),
            Some(if cmd == "run" { 2 } else { 1 }),
            "{cmd}: {said}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_routes_need_a_configured_token_and_act_through_the_registry() {
    let a = account_id(1);
    let env = Env::new(&[(a, 30)]).await;
    let get = |url: String, token: Option<&'static str>| async move {
        let mut req = reqwest::Client::new().get(&url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    let post_as = |url: String, token: Option<&'static str>| async move {
        let mut req = reqwest::Client::new().post(&url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send().await.unwrap().status().as_u16()
    };

    // Without a configured token: 403; /healthz and /metrics stay open.
    for with_token in [false, true] {
        let mut s = daemon_settings(&env, "1h");
        let admin = secret_file(ADMIN);
        if with_token {
            s.server.admin_token_file = Some(admin.to_path_buf());
        }
        let (daemon, stop, mut rx, base) = serve_daemon(s).await;
        loop {
            if let Event::Finished(..) = next(&mut rx).await {
                break;
            }
        }
        assert_eq!(get(format!("{base}/healthz"), None).await.0, 200);
        assert_eq!(get(format!("{base}/metrics"), None).await.0, 200);
        if !with_token {
            assert_eq!(get(format!("{base}/status"), Some(ADMIN)).await.0, 403);
            assert_eq!(
                get(format!("{base}/status/budget"), Some(ADMIN)).await.0,
                403
            );
            assert_eq!(
                post_as(format!("{base}/accounts/{a}/sync"), Some(ADMIN)).await,
                403
            );
        } else {
            assert_eq!(get(format!("{base}/status"), None).await.0, 401);
            assert_eq!(get(format!("{base}/status"), Some("nope")).await.0, 401);
            let (status, body) = get(format!("{base}/status"), Some(ADMIN)).await;
            assert_eq!(status, 200);
            // The scheme in any case, as HTTP wants it (a proxy or a client may send `bearer`).
            let lower = reqwest::Client::new()
                .get(format!("{base}/status"))
                .header("Authorization", format!("bearer {ADMIN}"))
                .send()
                .await
                .unwrap();
            assert_eq!(lower.status().as_u16(), 200);
            let list: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(list[0]["integrated_account_id"], a.to_string());
            assert_eq!(list[0]["live_users"], 30);
            // The shared request budget: this service is its only holder, alive, and the
            // window adds up (held + hot + free = the token's limit).
            assert_eq!(get(format!("{base}/status/budget"), None).await.0, 401);
            let (status, body) = get(format!("{base}/status/budget"), Some(ADMIN)).await;
            assert_eq!(status, 200, "{body}");
            let b: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(b["per_token"], 500, "{b}");
            assert_eq!(b["window_secs"], 10, "{b}");
            assert_eq!(b["holders"].as_array().unwrap().len(), 1, "{b}");
            assert_eq!(b["holders"][0]["alive"], true, "{b}");
            // It says what budget it is configured with; nobody disagrees.
            assert_eq!(b["holders"][0]["per_token"], 500, "{b}");
            assert_eq!(b["holders"][0]["window_secs"], 10, "{b}");
            assert_eq!(
                (&b["shared"], &b["mismatch"]),
                (&500.into(), &false.into()),
                "{b}"
            );
            // One configuration, nothing compared.
            assert_eq!(b["configurations"].as_array().unwrap().len(), 1, "{b}");
            assert_eq!(b["configurations"][0]["replicas"], 1, "{b}");
            assert!(b["configurations"][0]["differences"].is_null(), "{b}");
            assert!(b["compared_with"].is_null(), "{b}");
            assert!(
                b["holders"][0]["holder"].as_str().unwrap().contains(':'),
                "{b}"
            );
            let (held, hot, free) = (
                b["held"].as_i64().unwrap(),
                b["hot"].as_i64().unwrap(),
                b["free"].as_i64().unwrap(),
            );
            assert_eq!(held, b["holders"][0]["share"].as_i64().unwrap(), "{b}");
            assert_eq!(held + hot + free, 500, "{b}");
            // After a spell of the database taking no writes, looked at on the status page,
            // the pool holds sessions left read-only: an operator's action that meets one is
            // tried again on a new session, not refused.
            let mut owner = <sqlx::PgConnection as sqlx::Connection>::connect(&env.db_url)
                .await
                .unwrap();
            takes_writes(&mut owner, false).await;
            assert!(get(format!("{base}/"), None).await.1.contains("<html"));
            takes_writes(&mut owner, true).await;
            assert_eq!(
                post_as(format!("{base}/accounts/{a}/pause"), None).await,
                401
            );
            assert_eq!(
                post_as(format!("{base}/accounts/{a}/pause"), Some(ADMIN)).await,
                200
            );
            let paused: bool =
                sqlx::query_scalar("SELECT paused FROM accounts WHERE integrated_account_id = $1")
                    .bind(a)
                    .fetch_one(env.store.pool())
                    .await
                    .unwrap();
            assert!(paused);
            // Exported with the time of its pause, from the record (the accounts' state is read
            // at most every 5 s: looked at until it shows).
            let at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
                "SELECT acted_at FROM account_actions WHERE integrated_account_id = $1",
            )
            .bind(a)
            .fetch_one(env.store.pool())
            .await
            .unwrap();
            let series = format!(
                "lms_sync_account_paused_since_timestamp_seconds{{account=\"{a}\"}} {}",
                at.timestamp_millis() as f64 / 1000.0
            );
            metrics_show(&base, &series).await;
            assert_eq!(
                post_as(format!("{base}/accounts/{a}/resume"), Some(ADMIN)).await,
                200
            );
            let protected = || async {
                sqlx::query_scalar::<_, bool>(
                    "SELECT protected_at IS NOT NULL FROM accounts WHERE integrated_account_id = $1",
                )
                .bind(a)
                .fetch_one(env.store.pool())
                .await
                .unwrap()
            };
            assert_eq!(
                post_as(format!("{base}/accounts/{a}/protect"), None).await,
                401
            );
            assert!(!protected().await);
            assert_eq!(
                post_as(
                    format!("{base}/accounts/{a}/protect?reason=legal+hold%3A+matter+M-17"),
                    Some(ADMIN)
                )
                .await,
                200
            );
            assert!(protected().await);
            let unprotect = reqwest::Client::new()
                .post(format!("{base}/accounts/{a}/unprotect"))
                .bearer_auth(ADMIN)
                .header("X-Forwarded-For", "203.0.113.9")
                .send()
                .await
                .unwrap();
            assert_eq!(unprotect.status().as_u16(), 200);
            assert!(!protected().await);
            // Each action is recorded with who asked (the caller's address) and why.
            let actions: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
                "SELECT action, actor, reason FROM account_actions
                  WHERE integrated_account_id = $1 ORDER BY action_id",
            )
            .bind(a)
            .fetch_all(env.store.pool())
            .await
            .unwrap();
            let done: Vec<&str> = actions.iter().map(|(x, ..)| x.as_str()).collect();
            assert_eq!(done, ["pause", "resume", "protect", "unprotect"]);
            for (_, actor, _) in &actions {
                let actor = actor.as_deref().unwrap_or_default();
                assert!(actor.starts_with("the admin API from 127.0.0.1"), "{actor}");
            }
            assert_eq!(actions[2].2.as_deref(), Some("legal hold: matter M-17"));
            assert!(actions[0]
                .1
                .as_deref()
                .unwrap()
                .starts_with("the admin API from 127.0.0.1 (replica "));
            assert_eq!(actions[3].2, None);
            // Behind a proxy, what it says of the caller too.
            let actor = actions[3].1.as_deref().unwrap();
            assert!(
                actor.starts_with(
                    "the admin API from 127.0.0.1, forwarded for 203.0.113.9 (replica "
                ),
                "{actor}"
            );
            // A reason of two lines is refused, and nothing is done.
            assert_eq!(
                post_as(
                    format!("{base}/accounts/{a}/protect?reason=two%0Alines"),
                    Some(ADMIN)
                )
                .await,
                400
            );
            assert!(!protected().await);
            assert_eq!(
                post_as(format!("{base}/accounts/{a}/purge"), Some(ADMIN)).await,
                404,
                "no purge over HTTP"
            );
            assert_eq!(
                post_as(format!("{base}/accounts/{a}/sync"), Some(ADMIN)).await,
                200
            );
            let again = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    if let Event::Finished(_, o) = next(&mut rx).await {
                        return o;
                    }
                }
            })
            .await
            .expect("the requested run comes within seconds");
            assert_eq!(again, "succeeded");
            // A pause given an end, as `accounts pause --until`; an end is for a pause only,
            // and in the future.
            assert_eq!(
                post_as(format!("{base}/accounts/{a}/pause?until=1h"), Some(ADMIN)).await,
                200
            );
            let until: Option<f64> = sqlx::query_scalar(
                "SELECT extract(epoch FROM paused_until - now())::float8 FROM accounts
                  WHERE integrated_account_id = $1 AND paused",
            )
            .bind(a)
            .fetch_one(env.store.pool())
            .await
            .unwrap();
            assert!(
                until.is_some_and(|s| (3500.0..=3600.0).contains(&s)),
                "{until:?}"
            );
            // Exported, so that the paused-too-long alert leaves it alone until then.
            let end: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
                "SELECT paused_until FROM accounts WHERE integrated_account_id = $1",
            )
            .bind(a)
            .fetch_one(env.store.pool())
            .await
            .unwrap();
            let series = format!(
                "lms_sync_account_paused_until_timestamp_seconds{{account=\"{a}\"}} {}",
                end.timestamp_millis() as f64 / 1000.0
            );
            metrics_show(&base, &series).await;
            for refused in ["resume?until=1h", "pause?until=2020-01-01T00:00:00Z"] {
                assert_eq!(
                    post_as(format!("{base}/accounts/{a}/{refused}"), Some(ADMIN)).await,
                    400,
                    "{refused}"
                );
            }
            assert_eq!(
                post_as(format!("{base}/accounts/{a}/resume"), Some(ADMIN)).await,
                200
            );
            // The cursor reset and the allowance past the delete guard, as the commands give
            // them (the allowance asks for a run too).
            for action in ["reset-cursor", "allow-deletes"] {
                assert_eq!(
                    post_as(
                        format!("{base}/accounts/{a}/{action}?reason=CHG-88"),
                        Some(ADMIN)
                    )
                    .await,
                    200,
                    "{action}"
                );
            }
            let recorded: Vec<(String, Option<String>)> = sqlx::query_as(
                "SELECT action, reason FROM account_actions
                  WHERE integrated_account_id = $1 ORDER BY action_id DESC LIMIT 2",
            )
            .bind(a)
            .fetch_all(env.store.pool())
            .await
            .unwrap();
            let reason = Some("CHG-88".to_string());
            assert_eq!(
                recorded,
                [
                    ("allow_deletes".to_string(), reason.clone()),
                    ("reset_cursor".to_string(), reason)
                ]
            );
            let unknown = Uuid::from_u128(77);
            assert_eq!(
                post_as(format!("{base}/accounts/{unknown}/sync"), Some(ADMIN)).await,
                404
            );
        }
        stop.cancel();
        daemon.await.unwrap().unwrap();
    }

    // Requests not paced: no budget to show, said plainly (the page leaves the section out).
    let mut s = daemon_settings(&env, "1h");
    let admin = secret_file(ADMIN);
    s.server.admin_token_file = Some(admin.to_path_buf());
    s.rate_budget.enabled = false;
    let (daemon, stop, _, base) = serve_daemon(s).await;
    let (status, body) = get(format!("{base}/status/budget"), Some(ADMIN)).await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("rate_budget.enabled = false"), "{body}");
    let (status, page) = get(format!("{base}/"), None).await;
    assert_eq!(status, 200);
    assert!(!page.contains("Request budget"), "{page}");
    stop.cancel();
    daemon.await.unwrap().unwrap();
}

/// `POST /accounts/{action}` acts on many accounts at once, named by id or chosen as
/// `accounts list` chooses them (and `GET /status` lists them so, `GET /status/accounts/{id}`
/// shows one), all of them or none, each recorded as the one-account route
/// records it; a body that names them wrongly changes nothing and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_accounts_are_acted_on_in_one_request_named_or_chosen() {
    let (a, b, c) = (account_id(1), account_id(2), account_id(3));
    let env = Env::new(&[(a, 5), (b, 5), (c, 5)]).await;
    let mut s = daemon_settings(&env, "1h");
    let admin = secret_file(ADMIN);
    s.server.admin_token_file = Some(admin.to_path_buf());
    let (daemon, stop, mut rx, base) = serve_daemon(s).await;
    assert_eq!(runs(3, &mut rx).await, ["succeeded"; 3]);
    // Two customers: what discovery would have recorded of them.
    sqlx::query(
        "UPDATE accounts SET tenant_id = CASE WHEN integrated_account_id = $1 THEN 'globex'
                                              ELSE 'acme' END",
    )
    .bind(c)
    .execute(env.store.pool())
    .await
    .unwrap();
    let post = |action: &'static str, body: String, token: Option<&'static str>| {
        let url = format!("{base}/accounts/{action}");
        async move {
            let mut req = reqwest::Client::new().post(url).body(body);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let acted = |body: &str| -> Vec<Uuid> {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["count"], v["accounts"].as_array().unwrap().len(), "{v}");
        let mut ids: Vec<Uuid> = v["accounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().parse().unwrap())
            .collect();
        ids.sort();
        ids
    };
    let paused = || async {
        let mut ids: Vec<Uuid> =
            sqlx::query_scalar("SELECT integrated_account_id FROM accounts WHERE paused")
                .fetch_all(env.store.pool())
                .await
                .unwrap();
        ids.sort();
        ids
    };
    let actions = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM account_actions")
            .fetch_one(env.store.pool())
            .await
            .unwrap()
    };

    // `GET /status` lists them as `accounts list` would with the same options.
    let list = |query: &'static str| {
        let url = format!("{base}/status?{query}");
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    for (query, listed) in [
        ("", vec![a, b, c]),
        ("tenant=acme", vec![a, b]),
        ("tenant=globex&tenant=acme&state=active", vec![a, b, c]),
        ("tenant=globex,acme&health=unhealthy", vec![]),
        ("failing", vec![]),
    ] {
        let (status, body) = list(query).await;
        assert_eq!(status, 200, "{query}: {body}");
        let mut ids: Vec<Uuid> = serde_json::from_str::<Vec<serde_json::Value>>(&body)
            .unwrap()
            .iter()
            .map(|v| {
                v["integrated_account_id"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        ids.sort();
        assert_eq!(ids, listed, "{query}");
    }
    for (query, says) in [
        ("tenant=acne", "no account of the fleet has tenant \"acne\""),
        ("tenants=acme", "\"tenants\" is not a parameter of /status"),
        ("health=sick", "health: \"sick\" is none of"),
    ] {
        let (status, body) = list(query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(says), "{query}: {body}");
    }

    // The admin token, as for one account.
    let tenant = json!({"tenant": ["acme"]}).to_string();
    assert_eq!(post("pause", tenant.clone(), None).await.0, 401);
    // A dry run names them and changes nothing.
    let (status, body) = post(
        "pause",
        json!({"tenant": ["acme"], "dry_run": true}).to_string(),
        Some(ADMIN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(acted(&body), [a, b]);
    assert!(body.contains("\"dry_run\":true"), "{body}");
    assert!(paused().await.is_empty());
    assert_eq!(actions().await, 0);
    // A tenant's accounts, paused until a time, for a reason, each recorded.
    let (status, body) = post(
        "pause",
        json!({"tenant": ["acme"], "until": "2h", "reason": "CHG-1: the customer's migration"})
            .to_string(),
        Some(ADMIN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(acted(&body), [a, b]);
    assert_eq!(paused().await, [a, b]);
    let recorded: Vec<(Uuid, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT integrated_account_id, action, actor, reason FROM account_actions
          ORDER BY integrated_account_id",
    )
    .fetch_all(env.store.pool())
    .await
    .unwrap();
    assert_eq!(recorded.len(), 2, "{recorded:?}");
    for (i, (id, action, actor, reason)) in recorded.iter().enumerate() {
        assert_eq!((id, action.as_str()), (&[a, b][i], "pause"));
        assert!(
            actor
                .as_deref()
                .unwrap()
                .starts_with("the admin API from 127.0.0.1 (replica "),
            "{actor:?}"
        );
        assert_eq!(reason.as_deref(), Some("CHG-1: the customer's migration"));
    }
    let ends: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM accounts
          WHERE paused_until BETWEEN now() + interval '119 minutes' AND now() + interval '2 hours'",
    )
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert_eq!(ends, 2);
    // Whoever looks at the fleet sees who paused them and why, as one action on two accounts:
    // on the status page and in `lms-sync status`.
    let page = get_text(&format!("{base}/")).await;
    assert!(
        page.contains(
            "</time>: <b>pause</b> of 2 accounts by the admin API from 127.0.0.1 (replica "
        ) && page.contains(") — “CHG-1: the customer&#39;s migration”</li>"),
        "{page}"
    );
    let cfg = crate::helpers::daemon::config(&env.sim, &[a, b, c], "1h", 1);
    let o = crate::helpers::daemon::lms_sync(&cfg, &env.db_url, &["status"])
        .output()
        .await
        .unwrap();
    let said = said(&o);
    assert!(o.status.success(), "{said}");
    assert!(
        said.lines().any(|l| l.starts_with("operator: ")
            && l.contains(" min ago) pause of 2 accounts by the admin API from 127.0.0.1")
            && l.ends_with(" — \"CHG-1: the customer's migration\"")),
        "{said}"
    );
    // Each paused account says who paused it, when and why: as JSON, in `accounts list`, and
    // on the status page's row.
    let (status, body) = list("state=paused").await;
    assert_eq!(status, 200, "{body}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(listed.len(), 2, "{body}");
    for v in &listed {
        assert!(
            v["paused_by"]
                .as_str()
                .unwrap()
                .starts_with("the admin API from 127.0.0.1 (replica "),
            "{v}"
        );
        assert_eq!(v["pause_reason"], "CHG-1: the customer's migration", "{v}");
        assert!(v["paused_at"].is_string(), "{v}");
    }
    let o = crate::helpers::daemon::lms_sync(&cfg, &env.db_url, &["accounts", "list"])
        .output()
        .await
        .unwrap();
    let listing = crate::helpers::said(&o);
    assert_eq!(
        listing
            .lines()
            .filter(
                |l| l.starts_with("    paused by the admin API from 127.0.0.1 (replica ")
                    && l.ends_with(": \"CHG-1: the customer's migration\"")
            )
            .count(),
        2,
        "{listing}"
    );
    assert!(
        page.contains("<td data-k=\"State\">paused<div class=\"muted\"><time"),
        "{page}"
    );
    // Chosen by state, as `accounts list --state paused` shows them.
    let (status, body) = post(
        "resume",
        json!({"state": ["paused"]}).to_string(),
        Some(ADMIN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(acted(&body), [a, b]);
    assert!(paused().await.is_empty());
    let (_, body) = list("tenant=acme").await;
    let listed: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert!(
        listed
            .iter()
            .all(|v| v["paused_by"].is_null() && v["pause_reason"].is_null()),
        "{body}"
    );

    // Bodies that name the accounts wrongly change nothing, and say why.
    let before = actions().await;
    let unknown = Uuid::from_u128(77);
    for (action, body, status, says) in [
        (
            "protect",
            json!({"ids": [a.to_string(), unknown.to_string()]}).to_string(),
            404,
            format!("not in the registry: {unknown}; nothing changed"),
        ),
        (
            "pause",
            json!({"tenants": ["acme"]}).to_string(),
            400,
            "unknown field `tenants`".to_string(),
        ),
        (
            "pause",
            "{}".to_string(),
            400,
            "name the accounts".to_string(),
        ),
        ("pause", String::new(), 400, "the body is empty".to_string()),
        (
            "pause",
            "every acme account".to_string(),
            400,
            "the body is not what it takes".to_string(),
        ),
        (
            "pause",
            json!({"tenant": ["acne"]}).to_string(),
            400,
            "no account of the fleet has tenant \"acne\"".to_string(),
        ),
        (
            "pause",
            json!({"state": ["activ"]}).to_string(),
            400,
            "state: \"activ\" is none of active, paused, retired, excluded, gated".to_string(),
        ),
        (
            "pause",
            json!({"ids": [a.to_string()], "all": true}).to_string(),
            400,
            "not both".to_string(),
        ),
        (
            "pause",
            json!({"ids": ["acme"]}).to_string(),
            400,
            "ids[0]: \"acme\" is not an account id (a uuid)".to_string(),
        ),
        (
            "resume",
            json!({"all": true, "until": "1h"}).to_string(),
            400,
            "only a pause has an end".to_string(),
        ),
        (
            "purge",
            json!({"all": true}).to_string(),
            404,
            "actions: sync, pause".to_string(),
        ),
        (
            "pause",
            json!({"all": true, "reason": "two\nlines"}).to_string(),
            400,
            "reason: ".to_string(),
        ),
    ] {
        let (got, answer) = post(action, body.clone(), Some(ADMIN)).await;
        assert_eq!(got, status, "{action} {body}: {answer}");
        assert!(answer.contains(&says), "{action} {body}: {answer}");
    }
    assert_eq!(actions().await, before, "nothing was recorded");
    assert!(paused().await.is_empty());
    // A uuid where the action goes says where a single account's action goes.
    let (status, body) = post_raw(&format!("{base}/accounts/{a}"), "{}").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains(&format!("POST /accounts/{a}/ACTION acts on that account")),
        "{body}"
    );
    // Ids given twice act once; none at all, or a choice no account matches, change nothing.
    let (status, body) = post(
        "protect",
        json!({"ids": [a.to_string(), c.to_string(), a.to_string()]}).to_string(),
        Some(ADMIN),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(acted(&body), [a, c]);
    for nothing in [json!({"ids": []}), json!({"health": ["needs_reauth"]})] {
        let (status, body) = post("pause", nothing.to_string(), Some(ADMIN)).await;
        assert_eq!(status, 200, "{body}");
        assert!(acted(&body).is_empty(), "{body}");
    }
    assert_eq!(actions().await, before + 2);
    // Every account, run at once by the service.
    let (status, body) = post("sync", json!({"all": true}).to_string(), Some(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(acted(&body), [a, b, c]);
    let again = tokio::time::timeout(Duration::from_secs(20), runs(3, &mut rx))
        .await
        .expect("the asked runs come within seconds");
    assert_eq!(again, ["succeeded"; 3]);
    // One account as `accounts show --json` gives it: its runs, newest first, and the actions
    // taken on it.
    let show = |path: String, token: Option<&'static str>| {
        let url = format!("{base}/status/accounts/{path}");
        async move {
            let mut req = reqwest::Client::new().get(url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(show(a.to_string(), None).await.0, 401);
    let (status, body) = show(a.to_string(), Some(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    let shown: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        shown["account"]["integrated_account_id"],
        a.to_string(),
        "{shown}"
    );
    assert_eq!(shown["account"]["tenant_id"], "acme", "{shown}");
    assert_eq!(shown["runs"].as_array().unwrap().len(), 2, "{shown}");
    let done: Vec<&str> = shown["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["action"].as_str().unwrap())
        .collect();
    assert_eq!(done, ["sync_now", "protect", "resume", "pause"], "{shown}");
    let (status, body) = show(format!("{a}?runs=1"), Some(ADMIN)).await;
    assert_eq!(status, 200, "{body}");
    let one: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(one["runs"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(
        one["runs"][0]["run_id"], shown["runs"][0]["run_id"],
        "{one}"
    );
    for (path, status, says) in [
        (
            format!("{a}?runs=0"),
            400,
            "runs: from 1 to 1000".to_string(),
        ),
        (format!("{a}?run=1"), 400, "unknown field `run`".to_string()),
        (
            unknown.to_string(),
            404,
            format!("account {unknown} is not in the fleet"),
        ),
        (
            "acme".to_string(),
            404,
            "\"acme\" is not an account id".to_string(),
        ),
    ] {
        let (got, body) = show(path.clone(), Some(ADMIN)).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body.contains(&says), "{path}: {body}");
    }
    stop.cancel();
    daemon.await.unwrap().unwrap();
}

/// The outcomes of the next `n` runs to finish.
async fn runs(n: usize, rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>) -> Vec<String> {
    let mut outcomes = Vec::new();
    while outcomes.len() < n {
        if let Event::Finished(_, o) = next(rx).await {
            outcomes.push(o.to_string());
        }
    }
    outcomes
}

/// POSTs `body` with the admin token.
async fn post_raw(url: &str, body: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .post(url)
        .bearer_auth(ADMIN)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// What an operator does through the admin routes is in the service's log too (for whoever
/// audits it by its logs): the action, the accounts, who asked and why; never the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_routes_actions_are_logged_with_who_asked_and_why() {
    use crate::helpers::daemon::{config, spawn_env};
    use lms_sync::devkit::simulator::DEMO_TOKEN;
    lms_sync::install_crypto_provider();
    let (a, b) = (account_id(1), account_id(2));
    let env = Env::new(&[(a, 5), (b, 5)]).await;
    let cfg = config(&env.sim, &[a, b], "1h", 2);
    let mut d = spawn_env(
        &cfg,
        &env.db_url,
        &[],
        &[
            ("TRUTO_API_TOKEN", DEMO_TOKEN),
            ("LMS_SYNC_ADMIN_TOKEN", ADMIN),
        ],
    );
    let listening = d
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await;
    let base = format!("http://{}", listening["fields"]["addr"].as_str().unwrap());
    d.wait_for_each(&["sync run finished", "sync run finished"])
        .await;
    let logged = "an operator acted on accounts through the admin API";

    let (status, body) = post_raw(
        &format!("{base}/accounts/pause"),
        &json!({"all": true, "reason": "CHG-7: the vendor's maintenance"}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let ev = d.wait_for(logged).await;
    let f = &ev["fields"];
    assert_eq!(f["action"], "pause", "{ev}");
    assert_eq!(f["accounts"], 2, "{ev}");
    let mut ids: Vec<&str> = f["ids"].as_str().unwrap().split(',').collect();
    ids.sort();
    assert_eq!(ids, [a.to_string(), b.to_string()], "{ev}");
    assert!(
        f["actor"]
            .as_str()
            .unwrap()
            .starts_with("the admin API from 127.0.0.1 (replica "),
        "{ev}"
    );
    assert_eq!(f["reason"], "CHG-7: the vendor's maintenance", "{ev}");

    // One account, through its own route; a dry run is no action, and is not logged as one.
    let (status, body) = post_raw(
        &format!("{base}/accounts/pause"),
        &json!({"all": true, "dry_run": true}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post_raw(&format!("{base}/accounts/{a}/resume"), "").await;
    assert_eq!(status, 200, "{body}");
    let ev = d.wait_for(logged).await;
    let f = &ev["fields"];
    assert_eq!(
        (&f["action"], &f["accounts"], &f["ids"], &f["reason"]),
        (
            &json!("resume"),
            &json!(1),
            &json!(a.to_string()),
            &json!("")
        ),
        "{ev}"
    );
    assert!(!ev.to_string().contains(ADMIN), "{ev}");
    assert_eq!(d.terminate().await, 0);
}
