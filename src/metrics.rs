//! Process metrics in the Prometheus text format, kept in a small registry of our own (a
//! handful of counters and gauges does not need a metrics framework). Counters only grow.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Every metric: name, type, help. Rendering emits only these, in this order.
pub const DEFINITIONS: &[(&str, &str, &str)] = &[
    ("lms_sync_runs_total", "counter", "Finished sync runs by account and outcome."),
    ("lms_sync_users_total", "counter", "Users processed by account and change (inserted, updated, unchanged, deleted, undeleted, rejected)."),
    ("lms_sync_pages_total", "counter", "Pages committed by account."),
    ("lms_sync_http_requests_total", "counter", "HTTP requests to Truto by status (or error kind for requests without one)."),
    ("lms_sync_retries_total", "counter", "Retried requests by account."),
    ("lms_sync_rate_limited_total", "counter", "429 answers received by account."),
    ("lms_sync_rate_budget_wait_seconds_total", "counter", "Time spent waiting for the request budget, by account."),
    ("lms_sync_run_duration_seconds_total", "counter", "Summed duration of finished runs, by account."),
    ("lms_sync_last_run_duration_seconds", "gauge", "Duration of the last finished run, by account."),
    ("lms_sync_last_success_timestamp_seconds", "gauge", "Unix time of the last successful run, by account."),
    ("lms_sync_running_accounts", "gauge", "Accounts being synced by this process now."),
    ("lms_sync_account_health", "gauge", "1 for the account's current health (ok, needs_reauth, blocked, not_found, forbidden), 0 for the others, by account and health."),
    ("lms_sync_hydrations_total", "counter", "Full objects fetched for hydration, by account and result (merged, failed, gone)."),
    ("lms_sync_unknown_enum_values_total", "counter", "Users inserted or changed with a role or status outside the documented values, by account, field and value."),
    ("lms_sync_discovery_runs_total", "counter", "Listings of Truto's integrated accounts, by result (succeeded, failed, guarded: accounts no longer listed were not retired)."),
    ("lms_sync_fleet_accounts", "gauge", "Accounts of the fleet by state (active, paused, retired, excluded, gated by Truto's status)."),
];

type Key = (&'static str, String);

#[derive(Debug, Default)]
pub struct Metrics {
    values: Mutex<BTreeMap<Key, f64>>,
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let v = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(s, "{k}=\"{v}\"");
    }
    s
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Adds `v` to a counter.
    pub fn add(&self, name: &'static str, pairs: &[(&str, &str)], v: f64) {
        debug_assert!(
            DEFINITIONS.iter().any(|d| d.0 == name),
            "undefined metric {name}"
        );
        *self
            .values
            .lock()
            .expect("metrics")
            .entry((name, labels(pairs)))
            .or_default() += v;
    }

    pub fn inc(&self, name: &'static str, pairs: &[(&str, &str)]) {
        self.add(name, pairs, 1.0);
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, pairs: &[(&str, &str)], v: f64) {
        debug_assert!(
            DEFINITIONS.iter().any(|d| d.0 == name),
            "undefined metric {name}"
        );
        self.values
            .lock()
            .expect("metrics")
            .insert((name, labels(pairs)), v);
    }

    /// The current value (0 when never set), for tests and status.
    pub fn get(&self, name: &'static str, pairs: &[(&str, &str)]) -> f64 {
        self.values
            .lock()
            .expect("metrics")
            .get(&(name, labels(pairs)))
            .copied()
            .unwrap_or(0.0)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let values = self.values.lock().expect("metrics");
        let mut out = String::new();
        for (name, kind, help) in DEFINITIONS {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for ((n, l), v) in values.range((*name, String::new())..) {
                if n != name {
                    break;
                }
                if l.is_empty() {
                    let _ = writeln!(out, "{n} {v}");
                } else {
                    let _ = writeln!(out, "{n}{{{l}}} {v}");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_gauges_with_escaped_labels() {
        let m = Metrics::new();
        m.inc(
            "lms_sync_runs_total",
            &[("account", "a"), ("outcome", "succeeded")],
        );
        m.add(
            "lms_sync_runs_total",
            &[("account", "a"), ("outcome", "succeeded")],
            2.0,
        );
        m.set("lms_sync_running_accounts", &[], 3.0);
        m.inc("lms_sync_http_requests_total", &[("status", "x\"y")]);
        let text = m.render();
        assert!(
            text.contains("lms_sync_runs_total{account=\"a\",outcome=\"succeeded\"} 3\n"),
            "{text}"
        );
        assert!(text.contains("lms_sync_running_accounts 3\n"));
        assert!(text.contains("status=\"x\\\"y\""));
        assert!(text.contains("# TYPE lms_sync_last_success_timestamp_seconds gauge"));
        assert_eq!(
            m.get(
                "lms_sync_runs_total",
                &[("account", "a"), ("outcome", "succeeded")]
            ),
            3.0
        );
    }
}
