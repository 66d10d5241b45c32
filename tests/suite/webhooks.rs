//! The operations server's fleet routes against a running service: Truto's webhooks (signed,
//! replayed, stale, oversize, unknown, account events acted on within seconds). The admin
//! routes are in `admin.rs`.

use std::time::Duration;

use crate::helpers::service::*;
use crate::helpers::*;
use hmac::{Hmac, Mac};
use lms_sync::devkit::simulator::{Fault, Integrated};
use serde_json::json;
use sha2::Sha256;
use uuid::Uuid;

const SECRET: &str = "whsec-test-0123456789";

fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!(
        "format=sha256,v={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// A delivery as Truto sends it, `age_secs` old.
fn delivery(id: &str, event: &str, payload: serde_json::Value, age_secs: i64) -> Vec<u8> {
    let at = (chrono::Utc::now() - chrono::Duration::seconds(age_secs))
        .format("%Y-%m-%d %H:%M:%S")
        .to_string();
    json!({"id": id, "event": event, "payload": payload, "environment_id": "env-1",
           "webhook_id": "wh-1", "created_at": at})
    .to_string()
    .into_bytes()
}

fn account_payload(id: Uuid, tenant: &str, status: &str) -> serde_json::Value {
    json!({"id": id.to_string(), "tenant_id": tenant, "status": status, "is_sandbox": false,
           "integration": {"name": "talentlms", "category": "lms"}})
}

async fn post(url: &str, body: Vec<u8>, signature: Option<String>) -> (u16, String) {
    let mut req = reqwest::Client::new().post(url).body(body);
    if let Some(s) = signature {
        req = req.header("X-Truto-Signature", s);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// POSTs `body` signed as Truto signs it, under the secret lms-sync was given.
async fn post_signed(url: &str, body: &[u8]) -> (u16, String) {
    post(url, body.to_vec(), Some(signature(SECRET, body))).await
}

/// The outcome of `account`'s next run to finish, within `secs`.
async fn finished(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Event>,
    account: Uuid,
    secs: u64,
) -> String {
    tokio::time::timeout(Duration::from_secs(secs), async {
        loop {
            if let Event::Finished(id, o) = next(rx).await {
                if id == account {
                    return o;
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no run of {account} finished within {secs} s"))
}

/// A service with discovery on (every hour) and the webhook receiver on, whose one account
/// `a` Truto lists and the service has synced.
struct Receiving {
    env: Env,
    daemon: tokio::task::JoinHandle<anyhow::Result<()>>,
    stop: tokio_util::sync::CancellationToken,
    rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
    /// The operations server's address, and its webhook route's.
    base: String,
    url: String,
    _secret: TempFile,
}

/// A customer connects account `b` in Truto: 40 users, active, of `tenant-b`.
fn connects(env: &Env, b: Uuid) {
    env.sim.add_account(b, 40, 9);
    env.sim.set_integrated(b, Integrated::active("tenant-b"));
}

async fn receiving(a: Uuid) -> Receiving {
    let env = Env::new(&[(a, 50)]).await;
    env.sim.set_integrated(a, Integrated::active("tenant-a"));
    let mut s = daemon_settings(&env, "1h");
    s.accounts.clear();
    s.discovery.enabled = true;
    s.discovery.interval = "1h".into();
    let secret = secret_file(SECRET);
    s.webhooks.secret_file = Some(secret.to_path_buf());
    let (daemon, stop, mut rx, base) = serve_daemon(s).await;
    let url = format!("{base}/webhooks/truto");
    loop {
        if let Event::Finished(id, _) = next(&mut rx).await {
            assert_eq!(id, a);
            break;
        }
    }
    Receiving {
        env,
        daemon,
        stop,
        rx,
        base,
        url,
        _secret: secret,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_verified_deduplicated_and_acted_on_within_seconds() {
    let (a, b) = (account_id(1), account_id(2));
    let Receiving {
        env,
        daemon,
        stop,
        mut rx,
        base,
        url,
        _secret,
    } = receiving(a).await;
    let registered = || async {
        env.scalar_i64(&format!(
            "SELECT count(*) FROM accounts WHERE integrated_account_id = '{b}'"
        ))
        .await
    };

    // Counted from 0 (an alert's `increase` sees the first).
    let metrics = get_text(&format!("{base}/metrics")).await;
    assert!(
        metrics.contains("lms_sync_webhook_deliveries_total{result=\"wrong_signature\"} 0.0\n"),
        "{metrics}"
    );
    // Missing, wrong, or another body's signature: 401 and nothing changes.
    let body = delivery(
        "evt-1",
        "integrated_account:active",
        account_payload(b, "tenant-b", "active"),
        0,
    );
    assert_eq!(post(&url, body.clone(), None).await.0, 401);
    assert_eq!(
        post(&url, body.clone(), Some(signature("wrong", &body)))
            .await
            .0,
        401
    );
    assert_eq!(
        post(&url, body.clone(), Some(signature(SECRET, b"{}")))
            .await
            .0,
        401
    );
    assert_eq!(registered().await, 0);
    // Counted apart: a wrong signature in Truto's form is most likely Truto under a secret
    // lms-sync was not given (an alert says so before Truto deactivates the endpoint).
    let metrics = get_text(&format!("{base}/metrics")).await;
    assert!(
        metrics.contains("lms_sync_webhook_deliveries_total{result=\"unsigned\"} 1.0\n")
            && metrics
                .contains("lms_sync_webhook_deliveries_total{result=\"wrong_signature\"} 2.0\n"),
        "{metrics}"
    );
    // Over 1 MiB: 413.
    let big = vec![b' '; 1024 * 1024 + 10];
    assert_eq!(post_signed(&url, &big).await.0, 413);
    // Stale: 200, no effect.
    let stale = delivery(
        "evt-0",
        "integrated_account:active",
        account_payload(b, "tenant-b", "active"),
        600,
    );
    assert_eq!(post_signed(&url, &stale).await.0, 200);
    assert_eq!(registered().await, 0);
    // Unknown event type: 200, ignored.
    let test = delivery("evt-t", "test", json!({"foo": "bar"}), 0);
    let (status, text) = post_signed(&url, &test).await;
    assert_eq!(
        (status, text.trim()),
        (200, "ignored: not an account event")
    );

    // An account of another Truto environment (a webhook of that environment's, signed with
    // the same secret): not registered, as its listing would not be.
    let c = account_id(3);
    env.sim.set_integrated(
        c,
        Integrated {
            environment_id: "env-2".into(),
            ..Integrated::active("tenant-c")
        },
    );
    let other = delivery(
        "evt-c",
        "integrated_account:active",
        account_payload(c, "tenant-c", "active"),
        0,
    );
    let (status, text) = post_signed(&url, &other).await;
    assert_eq!(
        (status, text.trim()),
        (
            200,
            "ignored: an account of another Truto environment than the mirror follows"
        )
    );
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM accounts WHERE integrated_account_id = '{c}'"
        ))
        .await,
        0
    );

    // A new active account: registered and synced within seconds.
    connects(&env, b);
    let (status, text) = post_signed(&url, &body).await;
    assert_eq!((status, text.trim()), (200, "registered; syncing now"));
    assert_eq!(
        finished(&mut rx, b, 10).await,
        "succeeded",
        "synced within seconds of the webhook"
    );
    assert_mirror(&env.store, &env.sim, b).await;
    // The same delivery again: 200, no effect (replicas agree through the database).
    let (status, text) = post_signed(&url, &body).await;
    assert_eq!((status, text.trim()), (200, "ignored: already processed"));
    // Truto updates the account, still active (its context changed, an OAuth token was
    // refreshed): applied, and no run asked for, since it is active and synced; its schedule
    // goes on. An `active` event asks for one all the same.
    let asked = format!(
        "SELECT coalesce(sync_requested_at::text, '-') FROM accounts \
          WHERE integrated_account_id = '{b}'"
    );
    let asked = || async {
        sqlx::query_scalar::<_, String>(&asked)
            .fetch_one(env.store.pool())
            .await
            .unwrap()
    };
    let before = asked().await;
    let updated = delivery(
        "evt-u1",
        "integrated_account:updated",
        account_payload(b, "tenant-b", "active"),
        0,
    );
    let (status, text) = post_signed(&url, &updated).await;
    assert_eq!(
        (status, text.trim()),
        (
            200,
            "applied: already active, no run asked for; its schedule goes on"
        )
    );
    assert_eq!(asked().await, before);
    let active = delivery(
        "evt-a1",
        "integrated_account:active",
        account_payload(b, "tenant-b", "active"),
        0,
    );
    let (status, text) = post_signed(&url, &active).await;
    assert_eq!((status, text.trim()), (200, "registered; syncing now"));
    assert_ne!(asked().await, before);
    assert_eq!(finished(&mut rx, b, 10).await, "succeeded");

    // Needs re-authorization (as Truto has it when the event comes), then deleted.
    env.sim.set_integrated(
        b,
        Integrated {
            status: "needs_reauth".into(),
            ..Integrated::active("tenant-b")
        },
    );
    let reauth = delivery(
        "evt-2",
        "integrated_account:authentication_error",
        account_payload(b, "tenant-b", "needs_reauth"),
        0,
    );
    assert_eq!(post_signed(&url, &reauth).await.0, 200);
    let health: String =
        sqlx::query_scalar("SELECT health FROM sync_state WHERE integrated_account_id = $1")
            .bind(b)
            .fetch_one(env.store.pool())
            .await
            .unwrap();
    assert_eq!(health, "needs_reauth");
    let deleted = delivery(
        "evt-3",
        "integrated_account:deleted",
        account_payload(b, "tenant-b", "active"),
        0,
    );
    let (status, text) = post_signed(&url, &deleted).await;
    assert_eq!((status, text.trim()), (200, "retired"));
    // An earlier event delivered after it (Truto retried it, or the order was lost), while
    // Truto no longer has the account: checked against Truto, it brings nothing back.
    env.sim.remove_integrated(b);
    let late = delivery(
        "evt-late",
        "integrated_account:active",
        account_payload(b, "tenant-b", "active"),
        20,
    );
    let (status, text) = post_signed(&url, &late).await;
    assert_eq!(
        (status, text.trim()),
        (200, "ignored: Truto no longer has this account")
    );
    let retired: bool = sqlx::query_scalar(
        "SELECT retired_at IS NOT NULL FROM accounts WHERE integrated_account_id = $1",
    )
    .bind(b)
    .fetch_one(env.store.pool())
    .await
    .unwrap();
    assert!(retired);
    // The status page says what was verified lately (every replica alike: from the database):
    // the test event, the other environment's and the six account events; not the stale
    // one, nor the duplicate.
    let page = get_text(&format!("{base}/")).await;
    assert!(
        page.contains(
            "Truto's webhooks (POST /webhooks/truto): 8 deliveries verified in the last 24 h, \
             the last <time"
        ) && page.contains("(integrated_account:active).</p>"),
        "{page}"
    );
    let metrics = get_text(&format!("{base}/metrics")).await;
    for (result, n) in [
        ("applied", 5),
        ("duplicate", 1),
        ("stale", 1),
        ("ignored", 3),
        ("unsigned", 1),
        ("wrong_signature", 2),
    ] {
        assert!(
            metrics.contains(&format!(
                "lms_sync_webhook_deliveries_total{{result=\"{result}\"}} {n}.0\n"
            )),
            "{result}: {metrics}"
        );
    }
    stop.cancel();
    daemon.await.unwrap().unwrap();
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM live_users WHERE integrated_account_id = '{b}'"
        ))
        .await,
        0
    );
}

/// A signed, fresh delivery that the database cannot record (it takes no writes, or is down)
/// is answered 200, not 5xx: Truto retries for seconds only and deactivates an endpoint that
/// keeps failing, and a webhook created again comes with a new secret. Nothing is recorded, so
/// the same delivery later is applied; the next discovery listing would apply it anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_the_database_cannot_record_is_accepted_and_left_to_discovery() {
    let (a, b) = (account_id(1), account_id(2));
    let Receiving {
        env,
        daemon,
        stop,
        mut rx,
        base,
        url,
        _secret,
    } = receiving(a).await;
    connects(&env, b);
    let body = delivery(
        "evt-1",
        "integrated_account:active",
        account_payload(b, "tenant-b", "active"),
        0,
    );

    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&env.db_url)
        .await
        .unwrap();
    takes_writes(&mut admin, false).await;
    let (status, text) = post_signed(&url, &body).await;
    assert_eq!(
        (status, text.trim()),
        (200, "accepted; the next discovery applies it")
    );
    let metrics = get_text(&format!("{base}/metrics")).await;
    assert!(
        metrics.contains("lms_sync_webhook_deliveries_total{result=\"deferred\"} 1.0\n"),
        "{metrics}"
    );

    // An operator looks at the status page meanwhile: its reads leave sessions opened while
    // the database took no writes in the pool, read-only for their life.
    assert!(get_text(&format!("{base}/")).await.contains("<html"));
    takes_writes(&mut admin, true).await;
    // The delivery's write meets one, is refused, and is tried again on a new session.
    let (status, text) = post_signed(&url, &body).await;
    assert_eq!((status, text.trim()), (200, "registered; syncing now"));
    assert_eq!(
        finished(&mut rx, b, 30).await,
        "succeeded",
        "synced after the delivery was applied"
    );
    stop.cancel();
    daemon.await.unwrap().unwrap();
    assert_mirror(&env.store, &env.sim, b).await;
}

/// Deliveries come in any order: an `authentication_error` delivered after the
/// `reactivated` that ended it (Truto retried it, or the order was lost) must not gate an
/// account that works, nor a late `reactivated` ungate one that needs re-authorization: each
/// event is read as Truto has the account when it comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_events_out_of_order_leave_the_account_as_truto_has_it() {
    let (a, b) = (account_id(1), account_id(2));
    let Receiving {
        env,
        daemon,
        stop,
        mut rx,
        base: _,
        url,
        _secret,
    } = receiving(a).await;
    connects(&env, b);
    let health = || async {
        sqlx::query_scalar::<_, String>(
            "SELECT health FROM sync_state WHERE integrated_account_id = $1",
        )
        .bind(b)
        .fetch_one(env.store.pool())
        .await
        .unwrap()
    };
    let send = |id: &str, event: &str, status: &str, age: i64| {
        let body = delivery(id, event, account_payload(b, "tenant-b", status), age);
        let url = url.clone();
        async move { post_signed(&url, &body).await }
    };
    // The reactivation arrives first; the error it ended, 20 s older, after it.
    let (status, text) = send("evt-r", "integrated_account:reactivated", "active", 0).await;
    assert_eq!((status, text.trim()), (200, "registered; syncing now"));
    assert_eq!(finished(&mut rx, b, 30).await, "succeeded");
    let (status, text) = send(
        "evt-e",
        "integrated_account:authentication_error",
        "needs_reauth",
        20,
    )
    .await;
    assert_eq!(
        (status, text.trim()),
        (200, "registered; syncing now"),
        "read as Truto has it: active"
    );
    assert_eq!(
        health().await,
        "ok",
        "a late error event gated an account that works"
    );
    // (The run it asked for ends before the account is gated below: a run's success no longer
    // clears a gate set during it, but one started on the scheduler's view from before the
    // gate would, as its start comes after the gate.)
    assert_eq!(finished(&mut rx, b, 30).await, "succeeded");
    // The other way round: Truto has the account needing re-authorization, and the late event
    // is the reactivation of an earlier streak.
    env.sim.set_integrated(
        b,
        Integrated {
            status: "needs_reauth".into(),
            ..Integrated::active("tenant-b")
        },
    );
    let (status, text) = send(
        "evt-e2",
        "integrated_account:authentication_error",
        "needs_reauth",
        0,
    )
    .await;
    assert_eq!((status, text.trim()), (200, "gated"));
    let (status, text) = send("evt-r0", "integrated_account:reactivated", "active", 30).await;
    assert_eq!((status, text.trim()), (200, "gated"));
    assert_eq!(health().await, "needs_reauth");
    stop.cancel();
    daemon.await.unwrap().unwrap();
}

/// A delivery recorded but not applied (here the `updated` event's GET of the account fails)
/// is not taken for a replay when the same event comes again (Truto delivers at least once; an
/// operator may redeliver it): it is applied then, instead of waiting for the next listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_that_could_not_be_applied_is_applied_when_it_comes_again() {
    let (a, b) = (account_id(1), account_id(2));
    let Receiving {
        env,
        daemon,
        stop,
        mut rx,
        base,
        url,
        _secret,
    } = receiving(a).await;
    connects(&env, b);
    let updated = delivery(
        "evt-u",
        "integrated_account:updated",
        account_payload(b, "tenant-b", "active"),
        0,
    );
    // Truto answers the account's GET 503 (not retried; not Truto down).
    env.sim.push_listing_fault(Fault::Status {
        status: 503,
        retry_after: None,
        remote: false,
    });
    let (status, text) = post_signed(&url, &updated).await;
    assert_eq!(
        (status, text.trim()),
        (200, "accepted; the next discovery applies it")
    );
    let kept: i64 = env
        .scalar_i64("SELECT count(*) FROM webhook_events WHERE event_id = 'evt-u'")
        .await;
    assert_eq!(kept, 0, "an event not applied is not kept as processed");
    let (status, text) = post_signed(&url, &updated).await;
    assert_eq!((status, text.trim()), (200, "registered; syncing now"));
    assert_eq!(finished(&mut rx, b, 30).await, "succeeded");
    // Applied now: a third delivery is the replay.
    let (status, text) = post_signed(&url, &updated).await;
    assert_eq!((status, text.trim()), (200, "ignored: already processed"));
    let metrics = get_text(&format!("{base}/metrics")).await;
    for result in ["deferred", "applied", "duplicate"] {
        assert!(
            metrics.contains(&format!(
                "lms_sync_webhook_deliveries_total{{result=\"{result}\"}} 1.0\n"
            )),
            "{result}: {metrics}"
        );
    }
    stop.cancel();
    daemon.await.unwrap().unwrap();
    assert_mirror(&env.store, &env.sim, b).await;
}

/// A replica holding its runs because its API token lists another Truto environment's
/// accounts (read from a refused listing another process made) does not apply an account
/// event either: with that token Truto would answer the account's GET 404, as if it were
/// deleted. The event is answered 200, not kept as processed, and left to the next listing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_held_for_a_token_of_another_environment_leaves_account_events_to_discovery() {
    let (a, b) = (account_id(1), account_id(2));
    let Receiving {
        env,
        daemon,
        stop,
        rx: _rx,
        base,
        url,
        _secret,
    } = receiving(a).await;
    // Truto now lists env-2's accounts (for the simulator, any token's), and a listing by
    // another process is refused for it.
    env.sim.remove_integrated(a);
    env.sim.set_integrated(
        account_id(11),
        Integrated {
            environment_id: "env-2".into(),
            ..Integrated::active("staging")
        },
    );
    let refused = env
        .store
        .discovery_failed("a listing of env-2", Some("env-2"))
        .await
        .unwrap();
    assert_eq!(refused, 1);
    metrics_show(&base, "lms_sync_api_token_other_environment{} 1.0\n").await;
    connects(&env, b);
    let updated = delivery(
        "evt-e",
        "integrated_account:updated",
        account_payload(b, "tenant-b", "active"),
        0,
    );
    let (status, text) = post_signed(&url, &updated).await;
    assert_eq!(
        (status, text.trim()),
        (200, "accepted; the next discovery applies it")
    );
    for sql in [
        "SELECT count(*) FROM webhook_events WHERE event_id = 'evt-e'".to_string(),
        format!("SELECT count(*) FROM accounts WHERE integrated_account_id = '{b}'"),
    ] {
        assert_eq!(env.scalar_i64(&sql).await, 0, "{sql}");
    }
    stop.cancel();
    daemon.await.unwrap().unwrap();
}

/// A shutdown (a rollout, a node drained) while a delivery answered 200 is still being applied
/// waits for it: Truto does not send it again, and the next listing may be minutes away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_waits_for_the_deliveries_still_being_applied() {
    let (a, b) = (account_id(1), account_id(2));
    let Receiving {
        env,
        daemon,
        stop,
        rx: _rx,
        base: _,
        url,
        _secret,
    } = receiving(a).await;
    connects(&env, b);
    let updated = delivery(
        "evt-s",
        "integrated_account:updated",
        account_payload(b, "tenant-b", "active"),
        0,
    );
    // The event's GET times out once (after 5 s), and its retry is answered.
    env.sim
        .push_listing_fault(Fault::Delay(Duration::from_secs(7)));
    let (status, text) = post_signed(&url, &updated).await;
    assert_eq!(
        (status, text.trim()),
        (200, "accepted; still being applied")
    );
    stop.cancel();
    daemon.await.unwrap().unwrap();
    let registered: i64 = env
        .scalar_i64(&format!(
            "SELECT count(*) FROM accounts WHERE integrated_account_id = '{b}' AND sync_requested_at IS NOT NULL"
        ))
        .await;
    assert_eq!(registered, 1, "applied before the service stopped");
}

/// A delivery slow to apply (an `updated` event's GET behind a slow Truto, or a busy request
/// budget) is answered within seconds, and applied when its GET returns: Truto takes a slow
/// answer for a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_slow_to_apply_is_answered_within_seconds_and_applied_after() {
    let (a, b) = (account_id(1), account_id(2));
    let Receiving {
        env,
        daemon,
        stop,
        mut rx,
        base,
        url,
        _secret,
    } = receiving(a).await;
    connects(&env, b);
    let updated = delivery(
        "evt-u",
        "integrated_account:updated",
        account_payload(b, "tenant-b", "active"),
        0,
    );
    // Truto answers the event's GET of the account too late, twice: each attempt times out
    // (after truto.request_timeout_secs, 5 s here), and the third is answered, 10 s on.
    for _ in 0..2 {
        env.sim
            .push_listing_fault(Fault::Delay(Duration::from_secs(7)));
    }
    let (status, text) = post_signed(&url, &updated).await;
    assert_eq!(
        (status, text.trim()),
        (200, "accepted; still being applied")
    );
    let metrics = get_text(&format!("{base}/metrics")).await;
    assert!(
        !metrics.contains("lms_sync_webhook_deliveries_total{result=\"applied\"}"),
        "counted when it ends: {metrics}"
    );
    assert_eq!(
        finished(&mut rx, b, 30).await,
        "succeeded",
        "registered and synced once the GET returned"
    );
    let metrics = get_text(&format!("{base}/metrics")).await;
    assert!(
        metrics.contains("lms_sync_webhook_deliveries_total{result=\"applied\"} 1.0\n"),
        "{metrics}"
    );
    stop.cancel();
    daemon.await.unwrap().unwrap();
    assert_mirror(&env.store, &env.sim, b).await;
}
