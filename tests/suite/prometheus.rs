//! Against the real thing: a real Prometheus (the Debian `prometheus` package, loopback only,
//! bounded in time) scrapes `lms-sync run` syncing two accounts, one of which then fails for
//! good, evaluates `deploy/prometheus/alerts.yml`, and its HTTP API shows both accounts'
//! series and the failing account's alert firing — not the healthy one's.

use std::time::{Duration, Instant};

use crate::helpers::daemon::*;
use crate::helpers::*;
use lms_sync::devkit::simulator::Fault;
use lms_sync::store::{Acting, Steer};
use serde_json::Value;

async fn api(base: &str, path: &str) -> Value {
    let r = reqwest::get(format!("{base}{path}")).await;
    match r {
        Ok(r) => {
            serde_json::from_slice(&r.bytes().await.unwrap_or_default()).unwrap_or(Value::Null)
        }
        Err(_) => Value::Null,
    }
}

/// Asks Prometheus until `ok` holds for the answer to `path`, for at most `limit`.
async fn until(base: &str, path: &str, limit: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let v = api(base, path).await;
        if ok(&v) {
            return v;
        }
        assert!(
            started.elapsed() < limit,
            "Prometheus did not show it within {limit:?}: {path}\n{v}"
        );
        // Polling an outside system: Prometheus scrapes and evaluates every second.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_sees_every_account_and_fires_only_the_failing_accounts_alert() {
    lms_sync::install_crypto_provider();
    let (good, bad) = (account_id(1), account_id(2));
    let env = Env::new(&[(good, 120), (bad, 60)]).await;
    // Failed runs are retried 1 s, 2 s, 4 s apart: three in a row within seconds.
    let cfg = config(&env.sim, &[good, bad], "1h", 4);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[truto]\n",
        "[truto]\nmax_attempts = 2\nmax_retry_wait_secs = 1\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let mut d = spawn(&cfg, &env.db_url);
    let listening = d
        .wait_for("operations server listening (/healthz, /readyz, /metrics)")
        .await;
    let target = listening["fields"]["addr"].as_str().unwrap().to_string();
    // Both accounts succeed once; then one fails for good, and is asked to sync again.
    for _ in 0..2 {
        let ev = d.wait_for("sync run finished").await;
        assert_eq!(ev["fields"]["outcome"], "succeeded", "{ev}");
    }
    env.sim.block(bad, Fault::status(500));
    let missing = env
        .store
        .steer(&[bad], Steer::SyncNow, &Acting::default())
        .await;
    assert!(missing.unwrap().is_empty());

    let dir = TempDir::new("lms-sync-prom");
    let rules =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alerts.yml");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: lms-sync\n    static_configs:\n      - targets: ['{target}']\n",
            rules.display()
        ),
    )
    .unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    ensure_tool("prometheus", "prometheus");
    let mut prometheus = tokio::process::Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus is installed (Debian package `prometheus`)");
    let limit = Duration::from_secs(60);

    // Both accounts' freshness series, from the database; the failing one's failures.
    let q = |expr: &str| format!("/api/v1/query?query={}", urlencode(expr));
    let fresh = until(
        &base,
        &q("lms_sync_last_success_timestamp_seconds"),
        limit,
        |v| v["data"]["result"].as_array().is_some_and(|r| r.len() == 2),
    )
    .await;
    let accounts: Vec<String> = fresh["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metric"]["account"].as_str().unwrap().to_string())
        .collect();
    assert!(accounts.contains(&good.to_string()) && accounts.contains(&bad.to_string()));
    until(
        &base,
        &q(&format!(
            "lms_sync_account_consecutive_failures{{account=\"{bad}\"}} >= 3"
        )),
        limit,
        |v| v["data"]["result"].as_array().is_some_and(|r| r.len() == 1),
    )
    .await;
    let info = api(&base, &q("lms_sync_account_info")).await;
    assert_eq!(
        info["data"]["result"].as_array().unwrap().len(),
        2,
        "{info}"
    );

    // The failing account's alert fires; nothing fires for the healthy one.
    let alerts = until(&base, "/api/v1/alerts", limit, |v| {
        v["data"]["alerts"].as_array().is_some_and(|a| {
            a.iter()
                .any(|x| x["labels"]["alertname"] == "LmsSyncRunsFailing" && x["state"] == "firing")
        })
    })
    .await;
    let all = alerts["data"]["alerts"].as_array().unwrap();
    let firing = all
        .iter()
        .find(|x| x["labels"]["alertname"] == "LmsSyncRunsFailing")
        .unwrap();
    assert_eq!(firing["labels"]["account"], bad.to_string(), "{firing}");
    assert!(
        firing["annotations"]["summary"]
            .as_str()
            .unwrap()
            .contains("failed"),
        "{firing}"
    );
    assert!(
        all.iter()
            .all(|x| x["labels"]["account"] != good.to_string()),
        "an alert for the healthy account: {alerts}"
    );
    assert!(
        all.iter()
            .all(|x| x["labels"]["alertname"] != "LmsSyncDown"),
        "{alerts}"
    );

    let _ = prometheus.kill().await;
    assert_eq!(d.terminate().await, 0);
}

/// Percent-encodes a query parameter.
fn urlencode(s: &str) -> String {
    let mut u = reqwest::Url::parse("http://x/").unwrap();
    u.query_pairs_mut().append_pair("q", s);
    u.query().unwrap()[2..].to_string()
}
