//! Process metrics, exposed in the OpenMetrics text format through the `prometheus-client`
//! crate. Every metric is declared once in [`DEFINITIONS`] (name, kind, help); the parts count
//! in them by name and labels, and a name that is not declared is a bug (debug builds assert).
//! Label values come from our own words (accounts, outcomes, fields), never from upstream data
//! without a bound.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// What a metric is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Observations in seconds, in [`SECONDS_BUCKETS`].
    Histogram,
}

/// Every metric: full name (as exposed), kind, help.
pub const DEFINITIONS: &[(&str, Kind, &str)] = &[
    ("lms_sync_runs_total", Kind::Counter, "Finished sync runs by account and outcome."),
    ("lms_sync_users_total", Kind::Counter, "Users processed by account and change (inserted, updated, unchanged, deleted, undeleted, rejected)."),
    ("lms_sync_pages_total", Kind::Counter, "Pages committed by account."),
    ("lms_sync_http_requests_total", Kind::Counter, "HTTP requests to Truto by status (or error kind for requests without one) and account."),
    ("lms_sync_retries_total", Kind::Counter, "Retried requests by account."),
    ("lms_sync_rate_limited_total", Kind::Counter, "429 answers received by account."),
    ("lms_sync_rate_budget_wait_seconds_total", Kind::Counter, "Time spent waiting for the request budget, by account."),
    ("lms_sync_rate_budget_share", Kind::Gauge, "Requests per window of the token's budget this process may send now (its share; the processes on one database share the budget)."),
    ("lms_sync_rate_budget_wanted", Kind::Gauge, "Requests per window of the token's budget this process asked for at its last negotiation."),
    ("lms_sync_rate_budget_holders", Kind::Gauge, "Processes sharing the token's budget, this one included, as of its last negotiation."),
    ("lms_sync_rate_budget_limit", Kind::Gauge, "Requests per window of the token's budget the processes on one database share: the strictest any of them is configured with, as of this process's last negotiation."),
    ("lms_sync_rate_budget_mismatch", Kind::Gauge, "1 when another process sharing the token's budget is configured with a different budget (rate_budget), as of this process's last negotiation; 0 otherwise."),
    ("lms_sync_run_duration_seconds_total", Kind::Counter, "Summed duration of finished runs, by account."),
    ("lms_sync_last_run_duration_seconds", Kind::Gauge, "Duration of the last finished run, by account."),
    ("lms_sync_last_success_timestamp_seconds", Kind::Gauge, "Unix time of the account's last successful run, from the database (every replica reports every account, or one: server.account_metrics)."),
    ("lms_sync_running_accounts", Kind::Gauge, "Accounts being synced by this process now."),
    ("lms_sync_accounts_waiting", Kind::Gauge, "Accounts due now that no process is syncing: waiting for a free run slot (sync.max_concurrent_accounts on each replica) or for a hold on every run to end (Truto not answering, the token refused, a database taking no writes), as this process's last scheduler round counted them (every replica counts the whole fleet)."),
    ("lms_sync_accounts_behind_schedule", Kind::Gauge, "Of lms_sync_accounts_waiting, the accounts that have waited longer than their schedule's period (schedule.every, or a day with schedule.at) since this process first found them due: a whole slot missed, the fleet's runs do not keep up with its schedules."),
    ("lms_sync_schedule_lag_seconds", Kind::Gauge, "How long the account of lms_sync_accounts_waiting that has waited longest has waited since this process first found it due, in seconds; 0 when none waits."),
    ("lms_sync_account_health", Kind::Gauge, "1 for the account's current health (ok, needs_reauth, blocked, not_found, forbidden), 0 for the others, by account and health; from the database."),
    ("lms_sync_account_consecutive_failures", Kind::Gauge, "Failed runs in a row, by account; from the database."),
    ("lms_sync_account_live_users", Kind::Gauge, "Live users in the mirror, by account (as of its last run); from the database."),
    ("lms_sync_account_hydration_queue", Kind::Gauge, "Users waiting for their full object, by account; from the database."),
    ("lms_sync_account_info", Kind::Gauge, "1 per account, with its label and tenant, to join names onto ids; from the database."),
    ("lms_sync_account_held_until_timestamp_seconds", Kind::Gauge, "Unix time until which the server holds the account's requests back (a 429's Retry-After or a spent ratelimit-* window longer than truto.max_retry_wait_secs: a quota spent), by account; only while it does; from the database."),
    ("lms_sync_account_paused_since_timestamp_seconds", Kind::Gauge, "Unix time since which the account is paused (its pause in account_actions; a pause made before migration 0028, unrecorded: the latest of that migration, the account's registration and its last recorded resume), by account; only while it is; from the database."),
    ("lms_sync_account_paused_until_timestamp_seconds", Kind::Gauge, "Unix time at which the service resumes the account by itself (accounts pause --until), by account; only while it is paused with an end; from the database."),
    ("lms_sync_change_feed_held_back_seconds", Kind::Gauge, "How long the oldest change committed to user_changes has waited out of the view user_change_feed, in seconds (a transaction older than it, which has written something, is still open somewhere in the cluster: loaders get no newer change until it ends; or positions brought from another cluster by a restore, which lms-sync check names); 0 when none waits; from the database."),
    ("lms_sync_account_state_reporter", Kind::Gauge, "1 while this process exports the accounts' state from the database (lms_sync_account_info and the others; always with server.account_metrics = \"every_replica\", while it holds the reporter lease with \"one_replica\"); 0 otherwise."),
    ("lms_sync_hydrations_total", Kind::Counter, "Full objects fetched for hydration, by account and result (merged, failed, gone)."),
    ("lms_sync_unknown_enum_values_total", Kind::Counter, "Users inserted or changed with a role or status outside the documented values, by account and field (the values are in the log and in the unknown_enum_values table)."),
    ("lms_sync_discovery_runs_total", Kind::Counter, "Listings of Truto's integrated accounts, by result (succeeded, failed, guarded: accounts no longer listed were not retired)."),
    ("lms_sync_webhook_deliveries_total", Kind::Counter, "Deliveries to POST /webhooks/truto, by what became of them: applied, ignored (not an account event, another integration, discovery off), duplicate, stale (outside webhooks.tolerance_secs), deferred (signed and fresh, but the database could not record or apply it: answered 200, the next discovery listing applies it), wrong_signature (signed in Truto's form under another secret), unsigned, invalid (not a delivery), off (no webhook secret)."),
    ("lms_sync_accounts_purged_total", Kind::Counter, "Retired accounts this process purged (every row deleted, recorded in account_purges) once they had been retired for discovery.purge_retired_after, by result (purged, failed)."),
    ("lms_sync_fleet_accounts", Kind::Gauge, "Accounts of the fleet by state (active, paused, retired, excluded, gated by Truto's status)."),
    ("lms_sync_database_lock_wait_seconds", Kind::Gauge, "How long the longest-waiting session of lms-sync on this database has waited for a lock another session holds, in seconds; 0 when none has waited longer than database.lock_wait_warn_secs (every replica reports every process's sessions)."),
    ("lms_sync_api_token_rejected", Kind::Gauge, "1 while Truto refuses the API token itself (HTTP 401 without truto_is_remote_error): this process starts no run and checks the token now and then; 0 otherwise."),
    ("lms_sync_truto_unreachable", Kind::Gauge, "1 while Truto does not answer this process (a request gave up on no connection, timeouts or Truto's own 5xx, and nothing was answered since it began): it starts no run and asks Truto now and then; 0 otherwise."),
    ("lms_sync_database_read_only", Kind::Gauge, "1 while this process starts no run because the database accepts no writes (a standby answering at database.url mid-failover, or sessions made read-only: default_transaction_read_only, which some managed services set while storage is nearly full); it asks the database again every round; 0 otherwise."),
    ("lms_sync_api_token_other_environment", Kind::Gauge, "1 while this process's API token lists the integrated accounts of another Truto environment than the one the mirror follows (discovery_state.environment_id): a staging token in production's place, the wrong secret in a rotation. It starts no run (each would answer 404) and checks the token now and then; 0 otherwise. Needs discovery.enabled."),
    ("lms_sync_truto_cut_off", Kind::Gauge, "1 while this process does not reach Truto (lms_sync_truto_unreachable) and another process sharing its database got answers from Truto since: what fails is this process's way to Truto (DNS, egress, proxy), not Truto; 0 otherwise. Needs rate_budget.enabled (the processes tell each other through the shared budget)."),
    ("lms_sync_delete_guard_tripped_total", Kind::Counter, "Runs whose listing would have deleted more than the allowed share of an account's users (nothing was deleted), by account."),
    ("lms_sync_run_duration_seconds", Kind::Histogram, "Duration of finished runs."),
    ("lms_sync_http_request_duration_seconds", Kind::Histogram, "Duration of HTTP requests to Truto, by endpoint (page, user, account listing, account, token check) and status class (2xx, 4xx, 5xx, error)."),
    ("lms_sync_page_write_duration_seconds", Kind::Histogram, "Duration of a batch's transaction (pages, rows, cursor)."),
    ("lms_sync_build_info", Kind::Gauge, "1, with the version of the binary."),
    ("lms_sync_config_last_reload_successful", Kind::Gauge, "0 when the last reload of the configuration (SIGHUP) was refused (the file or the environment does not load: the previous configuration stays in force, the log says why); 1 when it succeeded, or none was tried since the start."),
    ("lms_sync_config_last_reload_success_timestamp_seconds", Kind::Gauge, "Unix time at which this process last put a configuration in force: its start, or the last reload (SIGHUP) that succeeded."),
    ("lms_sync_config_mismatch", Kind::Gauge, "1 when another replica (a `run` process sharing the database and the request budget) runs with a different configuration than this one (their digests, shown by lms-sync status, the status page and lms-sync config, differ), as of this process's last negotiation of the budget; 0 otherwise. Needs rate_budget.enabled."),
    ("lms_sync_config_restart_pending", Kind::Gauge, "1 when the configuration in force, reloaded, changes keys read only at start (Truto's client, the database's pool, the request budget, the operations server, the log: the log names them, lms-sync config shows them): they keep the values the process started with until it restarts; 0 otherwise."),
];

/// Histogram buckets, in seconds: 5 ms to about 20 min.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1200.0,
];

type Labels = Vec<(String, String)>;
type CounterFamily = Family<Labels, Counter<f64, AtomicU64>>;
type GaugeFamily = Family<Labels, Gauge<f64, AtomicU64>>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn seconds_histogram() -> Histogram {
    Histogram::new(SECONDS_BUCKETS.iter().copied())
}

enum Metric {
    Counter(CounterFamily),
    Gauge(GaugeFamily),
    Histogram(HistogramFamily),
}

/// The counters that keep their `account` label whatever [`Metrics::count_per_account`] says:
/// alerts name the account they fire for, and they are rare (no series until the first).
const ALWAYS_PER_ACCOUNT: &[&str] = &[
    "lms_sync_rate_limited_total",
    "lms_sync_delete_guard_tripped_total",
];

/// Gauges of one process's runs by account, not set without per-account counters.
const PER_ACCOUNT_RUN_GAUGES: &[&str] = &["lms_sync_last_run_duration_seconds"];

/// Each account's state, read from the database: exported by every replica, or by one
/// (see [`Metrics::report_account_state`]).
pub const ACCOUNT_STATE_GAUGES: &[&str] = &[
    "lms_sync_last_success_timestamp_seconds",
    "lms_sync_account_consecutive_failures",
    "lms_sync_account_live_users",
    "lms_sync_account_hydration_queue",
    "lms_sync_account_info",
    "lms_sync_account_health",
    "lms_sync_account_held_until_timestamp_seconds",
    "lms_sync_account_paused_since_timestamp_seconds",
    "lms_sync_account_paused_until_timestamp_seconds",
    "lms_sync_change_feed_held_back_seconds",
];

/// The process's metrics.
pub struct Metrics {
    registry: Registry,
    by_name: HashMap<&'static str, Metric>,
    /// See [`Metrics::count_per_account`].
    per_account: std::sync::atomic::AtomicBool,
    /// See [`Metrics::report_account_state`]; held while such a gauge is set, so that one set
    /// as it is turned off cannot outlive the clearing.
    account_state: std::sync::Mutex<bool>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The label set, values escaped as the exposition format needs (the crate writes them as
/// given): an account's label is the operator's text and may hold a quote.
fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            (k.to_string(), v)
        })
        .collect()
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let mut by_name = HashMap::new();
        for (name, kind, help) in DEFINITIONS {
            // (The encoder ends each help with a period of its own.)
            let help = help.trim_end_matches('.');
            let metric = match kind {
                Kind::Counter => {
                    let f = CounterFamily::default();
                    // The encoder appends `_total` to a counter's name.
                    let base = name.strip_suffix("_total").expect("counters end in _total");
                    registry.register(base, help, f.clone());
                    Metric::Counter(f)
                }
                Kind::Gauge => {
                    let f = GaugeFamily::default();
                    registry.register(*name, help, f.clone());
                    Metric::Gauge(f)
                }
                Kind::Histogram => {
                    let f = HistogramFamily::new_with_constructor(seconds_histogram as fn() -> _);
                    registry.register(*name, help, f.clone());
                    Metric::Histogram(f)
                }
            };
            by_name.insert(*name, metric);
        }
        let m = Metrics {
            registry,
            by_name,
            per_account: std::sync::atomic::AtomicBool::new(true),
            account_state: std::sync::Mutex::new(true),
        };
        m.set("lms_sync_account_state_reporter", &[], 1.0);
        m.set(
            "lms_sync_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1.0,
        );
        m
    }

    fn metric(&self, name: &'static str) -> Option<&Metric> {
        let m = self.by_name.get(name);
        debug_assert!(m.is_some(), "undefined metric {name}");
        m
    }

    /// Whether the counters of runs carry the `account` label (`server.per_account_counters`;
    /// on by default). Off, they count for the whole process and the per-run gauges are not
    /// set: each account then costs its state gauges (from the database) and nothing more.
    /// Set before the first count: series already created stay as they are.
    pub fn count_per_account(&self, on: bool) {
        self.per_account
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether this process exports the accounts' state ([`ACCOUNT_STATE_GAUGES`]; on by
    /// default). Off, those gauges are emptied and setting them does nothing, until it is on
    /// again (and they are read anew from the database).
    pub fn report_account_state(&self, on: bool) {
        let mut reporting = self.account_state.lock().expect("account state");
        *reporting = on;
        if !on {
            for name in ACCOUNT_STATE_GAUGES {
                self.clear(name);
            }
        }
        drop(reporting);
        self.set(
            "lms_sync_account_state_reporter",
            &[],
            if on { 1.0 } else { 0.0 },
        );
    }

    pub fn reports_account_state(&self) -> bool {
        *self.account_state.lock().expect("account state")
    }

    fn per_account(&self) -> bool {
        self.per_account.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Adds `v` to a counter.
    pub fn add(&self, name: &'static str, pairs: &[(&str, &str)], v: f64) {
        if let Some(Metric::Counter(f)) = self.metric(name) {
            if self.per_account() || ALWAYS_PER_ACCOUNT.contains(&name) {
                f.get_or_create(&labels(pairs)).inc_by(v);
            } else {
                let pairs: Vec<(&str, &str)> = pairs
                    .iter()
                    .copied()
                    .filter(|(k, _)| *k != "account")
                    .collect();
                f.get_or_create(&labels(&pairs)).inc_by(v);
            }
        }
    }

    pub fn inc(&self, name: &'static str, pairs: &[(&str, &str)]) {
        self.add(name, pairs, 1.0);
    }

    /// Sets a gauge.
    pub fn set(&self, name: &'static str, pairs: &[(&str, &str)], v: f64) {
        if !self.per_account() && PER_ACCOUNT_RUN_GAUGES.contains(&name) {
            return;
        }
        let Some(Metric::Gauge(f)) = self.metric(name) else {
            return;
        };
        if ACCOUNT_STATE_GAUGES.contains(&name) {
            let reporting = self.account_state.lock().expect("account state");
            if *reporting {
                f.get_or_create(&labels(pairs)).set(v);
            }
        } else {
            f.get_or_create(&labels(pairs)).set(v);
        }
    }

    /// Records one observation (in seconds) in a histogram.
    pub fn observe(&self, name: &'static str, pairs: &[(&str, &str)], v: f64) {
        if let Some(Metric::Histogram(f)) = self.metric(name) {
            f.get_or_create(&labels(pairs)).observe(v);
        }
    }

    /// Forgets every series of a gauge (before setting it anew from the database, so that an
    /// account that left the fleet leaves the metric too).
    pub fn clear(&self, name: &'static str) {
        if let Some(Metric::Gauge(f)) = self.metric(name) {
            f.clear();
        }
    }

    /// The current value of a counter or gauge (0 when never set), for tests and status.
    pub fn get(&self, name: &'static str, pairs: &[(&str, &str)]) -> f64 {
        match self.metric(name) {
            Some(Metric::Counter(f)) => f.get_or_create(&labels(pairs)).get(),
            Some(Metric::Gauge(f)) => f.get_or_create(&labels(pairs)).get(),
            _ => 0.0,
        }
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms_with_escaped_labels() {
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
        m.observe("lms_sync_run_duration_seconds", &[], 0.7);
        let text = m.render();
        assert!(
            text.contains("lms_sync_runs_total{account=\"a\",outcome=\"succeeded\"} 3"),
            "{text}"
        );
        assert!(text.contains("lms_sync_running_accounts{} 3"), "{text}");
        assert!(text.contains("status=\"x\\\"y\""), "{text}");
        assert!(
            text.contains("# TYPE lms_sync_running_accounts gauge"),
            "{text}"
        );
        assert!(
            text.contains("lms_sync_run_duration_seconds_bucket{le=\"1.0\"} 1"),
            "{text}"
        );
        assert!(text.contains("lms_sync_build_info{version=\""), "{text}");
        assert_eq!(
            m.get(
                "lms_sync_runs_total",
                &[("account", "a"), ("outcome", "succeeded")]
            ),
            3.0
        );
        m.set("lms_sync_account_info", &[("account", "a")], 1.0);
        m.clear("lms_sync_account_info");
        assert!(!m.render().contains("lms_sync_account_info{"));
    }

    #[test]
    fn without_per_account_counters_runs_count_for_the_process_and_alerts_keep_their_account() {
        let m = Metrics::new();
        m.count_per_account(false);
        for a in ["a", "b"] {
            m.add(
                "lms_sync_users_total",
                &[("account", a), ("change", "inserted")],
                10.0,
            );
            m.inc("lms_sync_rate_limited_total", &[("account", a)]);
            m.set("lms_sync_last_run_duration_seconds", &[("account", a)], 2.0);
            m.set("lms_sync_account_live_users", &[("account", a)], 10.0);
        }
        let text = m.render();
        assert!(
            text.contains("lms_sync_users_total{change=\"inserted\"} 20"),
            "{text}"
        );
        assert!(!text.contains("lms_sync_users_total{account"), "{text}");
        assert!(
            !text.contains("lms_sync_last_run_duration_seconds{"),
            "{text}"
        );
        for a in ["a", "b"] {
            for kept in [
                format!("lms_sync_rate_limited_total{{account=\"{a}\"}} 1"),
                format!("lms_sync_account_live_users{{account=\"{a}\"}} 10"),
            ] {
                assert!(text.contains(&kept), "{kept}: {text}");
            }
        }
    }

    #[test]
    fn a_process_that_does_not_report_the_accounts_state_exports_none_of_it() {
        let m = Metrics::new();
        let info = [("account", "a"), ("label", ""), ("tenant", "")];
        m.set("lms_sync_account_info", &info, 1.0);
        assert!(m.render().contains("lms_sync_account_state_reporter{} 1"));
        m.report_account_state(false);
        m.set("lms_sync_account_live_users", &[("account", "a")], 10.0);
        m.set("lms_sync_running_accounts", &[], 2.0);
        let text = m.render();
        for name in ACCOUNT_STATE_GAUGES {
            assert!(!text.contains(&format!("{name}{{")), "{name}: {text}");
        }
        assert!(text.contains("lms_sync_running_accounts{} 2"), "{text}");
        assert!(
            text.contains("lms_sync_account_state_reporter{} 0"),
            "{text}"
        );
        m.report_account_state(true);
        m.set("lms_sync_account_info", &info, 1.0);
        assert!(m.render().contains("lms_sync_account_info{account=\"a\""));
    }

    #[test]
    fn every_name_is_declared_once() {
        let mut names: Vec<&str> = DEFINITIONS.iter().map(|d| d.0).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DEFINITIONS.len());
    }
}
