//! The deployment files: the Grafana dashboard is valid and names only exported metrics, the
//! alert rules name only exported metrics, the PrometheusRule is the same rules, the
//! dashboard's ConfigMap (for Grafana's sidecar) is the same dashboard, docker compose's
//! monitoring profile fits together, and the
//! Kubernetes Deployment leaves the service time to stop gracefully, its disruption budget
//! and spread select its pods, its ConfigMap loads, and Truto's webhooks reach their one
//! route on any replica; `kubectl apply -k` applies the core objects with one image, and names
//! every other file as an option; every alert has its section in the runbook. (`promtool` and
//! `kubernetes-validate` check the files themselves in `.ci/run`.)

use lms_sync::metrics::DEFINITIONS;

const DASHBOARD: &str = include_str!("../../deploy/grafana/lms-sync.json");
const ALERTS: &str = include_str!("../../deploy/prometheus/alerts.yml");
const RULE: &str = include_str!("../../deploy/k8s/prometheusrule.yaml");
const DASHBOARD_MAP: &str = include_str!("../../deploy/k8s/grafana-dashboard.yaml");
const COMPOSE: &str = include_str!("../../docker-compose.yml");
const COMPOSE_PROMETHEUS: &str = include_str!("../../deploy/compose/prometheus.yml");
const COMPOSE_DASHBOARDS: &str = include_str!("../../deploy/compose/grafana/dashboards.yml");
const DEPLOYMENT: &str = include_str!("../../deploy/k8s/deployment.yaml");
const CONFIGMAP: &str = include_str!("../../deploy/k8s/configmap.yaml");
const DISRUPTION: &str = include_str!("../../deploy/k8s/poddisruptionbudget.yaml");
const WEBHOOKS: &str = include_str!("../../deploy/k8s/webhooks.yaml");
const RUNBOOK: &str = include_str!("../../docs/runbook.md");
const KUSTOMIZATION: &str = include_str!("../../deploy/k8s/kustomization.yaml");
const JOB: &str = include_str!("../../deploy/k8s/job-migrate.yaml");

/// The `lms_sync_*` metric names a text mentions, histogram suffixes folded.
fn metrics_named(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("lms_sync_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(&name)
            .to_string();
        out.push(base);
    }
    out
}

fn exported(name: &str) -> bool {
    DEFINITIONS.iter().any(|d| d.0 == name)
}

#[test]
fn the_dashboard_is_valid_and_names_only_exported_metrics() {
    let d: serde_json::Value = serde_json::from_str(DASHBOARD).expect("valid JSON");
    assert!(d["title"].is_string() && d["uid"].is_string());
    assert!(d["schemaVersion"].as_u64().unwrap() >= 30);
    let panels = d["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let mut named = Vec::new();
    for p in panels {
        assert!(p["title"].is_string() && p["type"].is_string(), "{p}");
        for k in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][k].is_u64(), "{p}");
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{p}");
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            named.extend(metrics_named(expr));
        }
    }
    for name in &named {
        assert!(
            exported(name),
            "the dashboard queries {name}, which is not exported"
        );
    }
    // What fires can be looked at: every metric an alert rule reads is on a panel.
    for name in metrics_named(ALERTS) {
        assert!(
            named.contains(&name),
            "an alert reads {name}, and no panel of the dashboard shows it"
        );
    }
    // What an SRE asks first is on it.
    for needed in [
        "lms_sync_fleet_accounts",
        "lms_sync_account_health",
        "lms_sync_last_success_timestamp_seconds",
        "lms_sync_runs_total",
        "lms_sync_users_total",
        "lms_sync_http_requests_total",
        "lms_sync_rate_limited_total",
        "lms_sync_run_duration_seconds",
    ] {
        assert!(named.iter().any(|n| n == needed), "no panel shows {needed}");
    }
}

/// Grafana's dashboard sidecar provisions the file as it is: no import fills `__inputs`, so
/// every query names the data source through the dashboard's own `datasource` variable; and the
/// ConfigMap it loads is the dashboard, byte for byte, under the label it looks for.
#[test]
fn the_dashboard_needs_no_import_and_its_configmap_is_the_same() {
    let d: serde_json::Value = serde_json::from_str(DASHBOARD).expect("valid JSON");
    assert!(
        d.get("__inputs").is_none(),
        "a provisioned dashboard gets no inputs"
    );
    let variables = d["templating"]["list"].as_array().expect("templating");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no data source variable: {variables:?}"
    );
    let wanted = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    let mut sources = 0;
    for p in d["panels"].as_array().expect("panels") {
        let targets = p["targets"].as_array().expect("targets");
        for source in
            std::iter::once(&p["datasource"]).chain(targets.iter().map(|t| &t["datasource"]))
        {
            assert_eq!(source, &wanted, "in {}", p["title"]);
            sources += 1;
        }
    }
    assert!(sources > 20);

    assert!(
        DASHBOARD_MAP.contains(
            "\n  labels:\n    app.kubernetes.io/name: lms-sync\n    grafana_dashboard: \"1\"\n"
        ),
        "the sidecar's label"
    );
    let key = "\n  lms-sync.json: |\n";
    let data = &DASHBOARD_MAP[DASHBOARD_MAP.find(key).expect("the dashboard's key") + key.len()..];
    let indented: String = DASHBOARD
        .lines()
        .map(|l| {
            if l.is_empty() {
                "\n".to_string()
            } else {
                format!("    {l}\n")
            }
        })
        .collect();
    assert_eq!(
        data, indented,
        "deploy/k8s/grafana-dashboard.yaml drifted from deploy/grafana/lms-sync.json"
    );
}

/// docker compose's `monitoring` profile fits together: its Prometheus scrapes the service's
/// port under the job name the alert rules expect, with the rules mounted where its config
/// reads them; Grafana finds the dashboard where it is mounted; and nothing is published
/// beyond this host. (`promtool check config` and `docker-compose config` check the files
/// themselves in `.ci/run`.)
#[test]
fn the_compose_monitoring_profile_scrapes_the_service_and_loads_the_rules_and_the_dashboard() {
    assert!(ALERTS.contains("up{job=\"lms-sync\"}"));
    assert!(COMPOSE_PROMETHEUS.contains("\n  - job_name: lms-sync\n"));
    assert!(COMPOSE_PROMETHEUS.contains("\n      - names: [\"lms-sync\"]\n"));
    assert!(COMPOSE.contains("\n  lms-sync:\n"), "the service's name");
    assert!(COMPOSE.contains("LMS_SYNC__SERVER__LISTEN: 0.0.0.0:9000\n"));
    assert!(COMPOSE_PROMETHEUS.contains("\n        port: 9000\n"));
    assert!(COMPOSE_PROMETHEUS.contains("\n  - alerts.yml "));
    for mount in [
        "- ./deploy/compose/prometheus.yml:/etc/prometheus/prometheus.yml:ro\n",
        "- ./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro\n",
        "- ./deploy/prometheus/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro\n",
        "- ./deploy/grafana/lms-sync.json:/var/lib/grafana/dashboards/lms-sync.json:ro\n",
        "- ./deploy/compose/grafana/dashboards.yml:/etc/grafana/provisioning/dashboards/",
        "- ./deploy/compose/grafana/datasources.yml:/etc/grafana/provisioning/datasources/",
    ] {
        assert!(COMPOSE.contains(mount), "{mount}");
    }
    assert!(COMPOSE_DASHBOARDS.contains("\n      path: /var/lib/grafana/dashboards\n"));
    let published: Vec<&str> = COMPOSE
        .lines()
        .filter(|l| l.trim_start().starts_with("- \"") && l.contains(':'))
        .collect();
    assert_eq!(published.len(), 3, "{published:?}");
    for p in published {
        assert!(
            p.contains("\"127.0.0.1:"),
            "published beyond this host: {p}"
        );
    }
}

#[test]
fn the_alert_rules_name_only_exported_metrics_and_the_prometheus_rule_is_the_same() {
    let named = metrics_named(ALERTS);
    assert!(named.len() >= 10);
    for name in &named {
        assert!(
            exported(name),
            "an alert uses {name}, which is not exported"
        );
    }
    let groups = &ALERTS[ALERTS.find("groups:").unwrap()..];
    let indented: String = groups
        .trim_end()
        .lines()
        .map(|l| {
            if l.trim().is_empty() {
                "\n".to_string()
            } else {
                format!("  {l}\n")
            }
        })
        .collect();
    let spec = &RULE[RULE.find("spec:\n").unwrap() + "spec:\n".len()..];
    assert_eq!(
        spec, indented,
        "deploy/k8s/prometheusrule.yaml drifted from alerts.yml"
    );
    for alert in [
        "LmsSyncMirrorStale",
        "LmsSyncAccountPausedLong",
        "LmsSyncAccountNeedsAttention",
        "LmsSyncRunsFailing",
        "LmsSyncRateLimited",
        "LmsSyncDeleteGuardTripped",
        "LmsSyncRetireGuardTripped",
        "LmsSyncDiscoveryFailing",
        "LmsSyncAccountPurgeFailing",
        "LmsSyncDown",
        "LmsSyncDatabaseLockWait",
        "LmsSyncFallingBehind",
        "LmsSyncApiTokenRejected",
        "LmsSyncReplicaTokenRejected",
        "LmsSyncApiTokenOtherEnvironment",
        "LmsSyncReplicaTokenOtherEnvironment",
        "LmsSyncTrutoUnreachable",
        "LmsSyncTrutoCutOff",
        "LmsSyncAccountStateUnreported",
        "LmsSyncDatabaseReadOnly",
        "LmsSyncWebhookSecretMismatch",
        "LmsSyncConfigReloadFailed",
        "LmsSyncConfigRestartPending",
        "LmsSyncConfigMismatch",
    ] {
        assert!(ALERTS.contains(&format!("alert: {alert}")), "{alert}");
    }
}

/// Every metric the service exports has its row in the README's table of metrics (type,
/// labels, meaning): a series on a dashboard nobody can look up is noise.
#[test]
fn every_exported_metric_is_in_the_readmes_table() {
    let readme = include_str!("../../README.md");
    let missing: Vec<&str> = DEFINITIONS
        .iter()
        .map(|d| d.0)
        .filter(|name| !readme.contains(&format!("| `{name}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "not in the README's metrics table: {missing:?}"
    );
}

/// On call, an alert's name is what one has: docs/runbook.md must have a section under it for
/// every alert, and none for an alert that is gone; its links to its own sections must lead
/// somewhere.
#[test]
fn every_alert_has_its_section_in_the_runbook_and_every_section_an_alert() {
    let alerts: std::collections::BTreeSet<&str> = ALERTS
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    let sections: std::collections::BTreeSet<&str> = RUNBOOK
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .collect();
    assert!(alerts.len() >= 20, "{alerts:?}");
    let missing: Vec<_> = alerts.difference(&sections).collect();
    assert!(
        missing.is_empty(),
        "no section in docs/runbook.md for {missing:?}"
    );
    let gone: Vec<_> = sections.difference(&alerts).collect();
    assert!(
        gone.is_empty(),
        "docs/runbook.md has sections for no alert: {gone:?}"
    );
    // Headings as GitHub anchors them: lower case, spaces as dashes, punctuation dropped.
    let anchors: Vec<String> = RUNBOOK
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect();
    let mut links = 0;
    for part in RUNBOOK.split("](#").skip(1) {
        let anchor = &part[..part.find(')').unwrap()];
        assert!(
            anchors.iter().any(|a| a == anchor),
            "docs/runbook.md links to #{anchor}, which it does not have"
        );
        links += 1;
    }
    assert!(links >= 5, "{links}");
}

/// The number after `key:` (or `key =`) in a manifest.
fn number(text: &str, key: &str) -> u64 {
    let at = text.find(key).unwrap_or_else(|| panic!("{key}")) + key.len();
    text[at..]
        .trim_start_matches([':', ' ', '='])
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

#[test]
fn the_deployment_outlives_the_shutdown_grace_and_runs_locked_down() {
    let grace = number(DEPLOYMENT, "terminationGracePeriodSeconds");
    let shutdown = number(CONFIGMAP, "shutdown_grace_secs");
    assert!(grace > shutdown, "{grace} <= {shutdown}");
    for needed in [
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
        "path: /healthz",
        "path: /readyz",
        "key: database-url",
    ] {
        assert!(DEPLOYMENT.contains(needed), "the Deployment lacks {needed}");
    }
    assert!(CONFIGMAP.contains("migrate = false"));
}

/// The API token and the database URL reach the pods as files of the Secret's volume, which
/// the kubelet updates when the Secret is (the service reads them again within
/// `server.secret_files_check_secs`), not as environment variables or subPath mounts, neither of
/// which a running pod ever sees change; only the keys the service uses are mounted (not the
/// schema owner's URL); and the files are readable by the user the service runs as.
#[test]
fn the_deployment_mounts_its_secrets_so_that_a_rotated_secret_reaches_running_pods() {
    let value_of = |var: &str| {
        DEPLOYMENT
            .split(&format!("name: {var}\n"))
            .nth(1)
            .and_then(|rest| rest.trim_start().strip_prefix("value: "))
            .and_then(|rest| rest.lines().next())
            .unwrap_or_else(|| panic!("{var} has a value"))
    };
    let mount = labels_under(DEPLOYMENT, "volumeMounts:", "- name: secrets");
    assert!(mount.contains(&"readOnly: true".to_string()), "{mount:?}");
    let dir = mount
        .iter()
        .find_map(|l| l.strip_prefix("mountPath: "))
        .expect("the secrets' volume is mounted");
    let mut items = labels_under(DEPLOYMENT, "- name: secrets\n          secret:", "items:");
    // (The webhook secret's, commented out until webhooks are turned on: webhooks.yaml.)
    items.retain(|l| !l.starts_with('#'));
    assert_eq!(
        items,
        [
            "- key: truto-api-token",
            "path: truto-api-token",
            "- key: database-url",
            "path: database-url"
        ],
        "only the keys the service uses"
    );
    assert_eq!(
        value_of("LMS_SYNC__TRUTO__API_TOKEN_FILE"),
        format!("{dir}/truto-api-token")
    );
    assert_eq!(
        value_of("LMS_SYNC__DATABASE__URL_FILE"),
        format!("{dir}/database-url")
    );
    assert!(!DEPLOYMENT.contains("subPath:"));
    assert!(
        !DEPLOYMENT.contains("secretKeyRef"),
        "a secret in the environment"
    );
    assert!(!DEPLOYMENT.contains("name: TRUTO_API_TOKEN\n"));
    assert!(!DEPLOYMENT.contains("name: LMS_SYNC__DATABASE__URL\n"));
    assert_eq!(
        number(DEPLOYMENT, "fsGroup"),
        number(DEPLOYMENT, "runAsGroup")
    );
    assert!(DEPLOYMENT.contains("defaultMode: 0440"));
}

/// The `key: value` lines of the mapping under the first `section:` after `from` in a manifest.
fn labels_under(text: &str, from: &str, section: &str) -> Vec<String> {
    let start = text.find(from).unwrap_or_else(|| panic!("{from}"));
    let at = start
        + text[start..]
            .find(section)
            .unwrap_or_else(|| panic!("{section}"));
    let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let indent = at - line_start;
    text[at..]
        .lines()
        .skip(1)
        .take_while(|l| l.len() - l.trim_start().len() > indent && !l.trim().is_empty())
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn the_disruption_budget_and_the_spread_select_exactly_the_services_pods() {
    let pods = labels_under(DEPLOYMENT, "template:", "labels:");
    assert_eq!(
        pods,
        [
            "app.kubernetes.io/name: lms-sync",
            "app.kubernetes.io/component: service"
        ]
    );
    assert_eq!(labels_under(DISRUPTION, "selector:", "matchLabels:"), pods);
    assert_eq!(
        labels_under(DEPLOYMENT, "topologySpreadConstraints:", "matchLabels:"),
        pods
    );
    assert_eq!(number(DISRUPTION, "maxUnavailable"), 1);
    assert!(number(DEPLOYMENT, "replicas:") > number(DISRUPTION, "maxUnavailable"));
}

/// Truto's webhooks come in through an Ingress of their one route, matched exactly (the
/// status page, `/metrics` and the admin routes stay inside the cluster), to a Service of the
/// service's pods that routes to those not ready too (lms-sync answers a delivery itself while
/// the database takes no writes; no endpoint would be a 503, and Truto deactivates an endpoint
/// that keeps failing); and the secret's file the ConfigMap's commented key names is where the
/// Deployment's commented item mounts it.
#[test]
fn webhooks_reach_only_their_route_on_any_replica_and_their_secret_where_the_config_reads_it() {
    let paths: Vec<&str> = WEBHOOKS
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- path: "))
        .collect();
    assert_eq!(paths, ["/webhooks/truto"]);
    assert_eq!(WEBHOOKS.matches("pathType:").count(), 1);
    assert!(WEBHOOKS.contains("pathType: Exact"));
    assert!(WEBHOOKS.contains("publishNotReadyAddresses: true"));
    let pods = labels_under(DEPLOYMENT, "template:", "labels:");
    assert_eq!(labels_under(WEBHOOKS, "kind: Service", "selector:"), pods);
    // The Ingress's backend is that Service, by its name and its port's.
    let backend = labels_under(WEBHOOKS, "backend:", "service:");
    assert_eq!(backend[0], "name: lms-sync-webhooks");
    assert!(WEBHOOKS.contains("kind: Service\nmetadata:\n  name: lms-sync-webhooks\n"));
    assert!(
        WEBHOOKS.contains("    - name: webhooks\n      port: 9000\n      targetPort: metrics\n")
    );
    assert!(WEBHOOKS.contains("                  name: webhooks\n"));

    let read_at = CONFIGMAP
        .lines()
        .find_map(|l| l.trim().strip_prefix("# secret_file = "))
        .expect("the commented webhooks.secret_file")
        .trim_matches('"');
    let mounted_at = DEPLOYMENT
        .split("- name: secrets\n")
        .nth(1)
        .and_then(|rest| rest.trim_start().strip_prefix("mountPath: "))
        .and_then(|rest| rest.lines().next())
        .expect("the secrets' mount");
    let item = DEPLOYMENT
        .lines()
        .find_map(|l| l.trim().strip_prefix("#   path: "))
        .expect("the commented item");
    assert_eq!(read_at, format!("{mounted_at}/{item}"));
    assert!(DEPLOYMENT.contains("# - key: truto-webhook-secret\n"));
}

/// The ConfigMap's `config.toml` is a configuration the binary loads (a key misspelt in it
/// would stop every replica at start), with the settings its comments promise.
#[test]
fn the_configmaps_config_loads_as_the_service_would_read_it() {
    let start = CONFIGMAP.find("config.toml: |\n").expect("config.toml") + "config.toml: |\n".len();
    let toml: String = CONFIGMAP[start..]
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let file = crate::helpers::TempFile::new("lms-sync-configmap", ".toml", toml);
    // With the Deployment's environment, its secrets' files standing in for the mounted ones.
    let url = "postgres://lms_sync_service:pw@db/lms";
    let url_file = crate::helpers::TempFile::new("lms-sync-db-url", "", format!("{url}\n"));
    let token_file = crate::helpers::TempFile::new("lms-sync-token", "", "tok\n");
    let env: Vec<(String, String)> = DEPLOYMENT
        .split("- name: ")
        .skip(1)
        .filter_map(|rest| {
            let (name, rest) = rest.split_once('\n')?;
            let value = rest.trim_start().strip_prefix("value: ")?.lines().next()?;
            let value = match name {
                "LMS_SYNC__DATABASE__URL_FILE" => url_file.to_str().unwrap().to_string(),
                "LMS_SYNC__TRUTO__API_TOKEN_FILE" => token_file.to_str().unwrap().to_string(),
                _ => value.trim_matches('"').to_string(),
            };
            Some((name.to_string(), value))
        })
        .collect();
    assert!(
        env.iter().any(|(n, _)| n == "LMS_SYNC__DATABASE__URL_FILE"),
        "{env:?}"
    );
    let settings =
        lms_sync::config::Settings::load_from(Some(&file), &env).unwrap_or_else(|e| panic!("{e}"));
    use secrecy::ExposeSecret;
    let loaded = settings
        .database
        .url
        .as_ref()
        .expect("the URL from its file");
    assert_eq!(loaded.expose_secret(), url);
    assert!(settings.database.url_from_file);
    assert_eq!(
        settings.api_token().unwrap().unwrap().expose_secret(),
        "tok"
    );
    assert!(!settings.database.migrate);
    assert!(settings.discovery.enabled);
    assert_eq!(
        settings.server.account_metrics,
        lms_sync::config::AccountMetrics::OneReplica
    );
    assert_eq!(settings.server.listen, "0.0.0.0:9000");
}

/// `kubectl apply -k deploy/k8s` applies what every installation needs, and names the rest of
/// the directory's manifests (those needing the Prometheus Operator, Grafana's sidecar or
/// webhooks) as commented lines to turn on: a manifest added later is listed, one way or the
/// other. The Secret's example is never applied. Its `images` entry is the image both the
/// Deployment and the migrate Job name, so that one line sets it for both.
#[test]
fn the_kustomization_applies_the_core_objects_and_names_every_other_manifest() {
    let listed = |prefix: &str| -> Vec<String> {
        KUSTOMIZATION
            .lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .map(|f| f.trim().to_string())
            .filter(|f| f.ends_with(".yaml"))
            .collect()
    };
    let (on, optional) = (listed("  - "), listed("  # - "));
    let core = [
        "configmap.yaml",
        "job-migrate.yaml",
        "deployment.yaml",
        "poddisruptionbudget.yaml",
        "service.yaml",
    ];
    assert_eq!(on, core, "{KUSTOMIZATION}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml"))
        .filter(|f| f != "kustomization.yaml" && f != "secret.example.yaml")
        .collect();
    files.sort();
    let mut named: Vec<String> = on.iter().chain(&optional).cloned().collect();
    named.sort();
    assert_eq!(
        named, files,
        "every manifest is listed, applied or optional"
    );

    let image = |manifest: &str| -> String {
        let line = manifest
            .lines()
            .find_map(|l| l.trim().strip_prefix("image: "))
            .expect("an image");
        line.trim().to_string()
    };
    assert_eq!(image(DEPLOYMENT), image(JOB));
    let (name, tag) = image(DEPLOYMENT)
        .rsplit_once(':')
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .unwrap();
    let images = &KUSTOMIZATION[KUSTOMIZATION.find("\nimages:\n").expect("images")..];
    assert!(images.contains(&format!("  - name: {name}\n")), "{images}");
    assert!(images.contains(&format!("    newTag: {tag}\n")), "{images}");
}
