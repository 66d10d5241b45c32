//! Against the real thing: a real Alertmanager (the Debian `prometheus-alertmanager` package,
//! loopback only) with `deploy/prometheus/alertmanager.yml` holds back the per-account alerts a
//! fleet-wide cause explains (Truto unreachable, the API token refused) while that cause's
//! alert fires, and lets through those it does not explain.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Each alert Alertmanager holds, as `alertname` (with `account` when it has one) → its state
/// (`active` or `suppressed`).
async fn states(base: &str) -> BTreeMap<String, String> {
    let body = reqwest::get(format!("{base}/api/v2/alerts"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let l = &a["labels"];
            let name = match l["account"].as_str() {
                Some(acct) => format!("{} {acct}", l["alertname"].as_str().unwrap()),
                None => l["alertname"].as_str().unwrap().to_string(),
            };
            (name, a["status"]["state"].as_str().unwrap().to_string())
        })
        .collect()
}

/// Posts `alerts` (labels only: firing from now), or resolves them when `resolved`.
async fn post(base: &str, alerts: &[Value], resolved: bool) {
    let body: Vec<Value> = alerts
        .iter()
        .map(|labels| {
            let mut a = json!({ "labels": labels });
            if resolved {
                a["endsAt"] = json!("2000-01-01T00:00:00Z");
            }
            a
        })
        .collect();
    let r = reqwest::Client::new()
        .post(format!("{base}/api/v2/alerts"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}

fn expect(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_wide_alert_holds_back_the_per_account_alerts_it_explains_and_no_other() {
    lms_sync::install_crypto_provider();
    let config =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/alertmanager.yml");
    let dir = crate::helpers::TempDir::new("lms-sync-am");
    let port = crate::helpers::free_port();
    let base = format!("http://127.0.0.1:{port}");
    crate::helpers::ensure_tool("prometheus-alertmanager", "prometheus-alertmanager");
    let _alertmanager = tokio::process::Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("Alertmanager is installed (Debian package `prometheus-alertmanager`)");
    let started = Instant::now();
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/-/ready")).await {
            if r.status().is_success() {
                break;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "Alertmanager did not start"
        );
        // Polling an outside system until it listens.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let per_account = [
        json!({"alertname": "LmsSyncRunsFailing", "account": "a", "severity": "warning"}),
        json!({"alertname": "LmsSyncMirrorStale", "account": "a", "severity": "warning"}),
        json!({"alertname": "LmsSyncAccountNeedsAttention", "account": "b", "health": "needs_reauth", "severity": "warning"}),
        json!({"alertname": "LmsSyncDeleteGuardTripped", "account": "c", "severity": "warning"}),
        json!({"alertname": "LmsSyncDiscoveryFailing", "severity": "warning"}),
        json!({"alertname": "LmsSyncFallingBehind", "severity": "warning"}),
    ];
    post(&base, &per_account, false).await;
    let all_active = [
        ("LmsSyncAccountNeedsAttention b", "active"),
        ("LmsSyncDeleteGuardTripped c", "active"),
        ("LmsSyncDiscoveryFailing", "active"),
        ("LmsSyncFallingBehind", "active"),
        ("LmsSyncMirrorStale a", "active"),
        ("LmsSyncRunsFailing a", "active"),
    ];
    assert_eq!(states(&base).await, expect(&all_active));

    for cause in [
        "LmsSyncTrutoUnreachable",
        "LmsSyncApiTokenRejected",
        "LmsSyncApiTokenOtherEnvironment",
    ] {
        let source = [json!({"alertname": cause, "severity": "critical"})];
        post(&base, &source, false).await;
        let mut held = expect(&[
            ("LmsSyncAccountNeedsAttention b", "active"),
            ("LmsSyncDeleteGuardTripped c", "active"),
            ("LmsSyncDiscoveryFailing", "suppressed"),
            ("LmsSyncFallingBehind", "suppressed"),
            ("LmsSyncMirrorStale a", "suppressed"),
            ("LmsSyncRunsFailing a", "suppressed"),
        ]);
        held.insert(cause.to_string(), "active".to_string());
        assert_eq!(states(&base).await, held, "while {cause} fires");
        // Resolved, it holds nothing back.
        post(&base, &source, true).await;
        assert_eq!(states(&base).await, expect(&all_active), "{cause} resolved");
    }

    // One replica cut off from Truto, or sending a token Truto refuses, is not a fleet-wide
    // cause (the others sync its accounts): an account that fails meanwhile fails for a reason
    // of its own, and its alert comes through.
    let mut none_held = expect(&all_active);
    for one in ["LmsSyncTrutoCutOff", "LmsSyncReplicaTokenRejected"] {
        let alert = [json!({"alertname": one, "instance": "a", "severity": "warning"})];
        post(&base, &alert, false).await;
        none_held.insert(one.to_string(), "active".to_string());
        assert_eq!(states(&base).await, none_held, "while {one} fires");
    }
}
