//! The accounts lms-sync works on: the `[[accounts]]` merged with the registry (what discovery
//! found, what operators paused), each with its effective settings and whether it may be synced
//! now, and why not. Pure: the scheduler, `sync`, `status` and `accounts list` all ask this.

use uuid::Uuid;

use crate::config::{AccountSettings, Settings, SettingsFrom};
use crate::domain::{AccountRow, AccountSource};

/// Whether an account may be synced, and why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Synced on its schedule.
    Sync,
    /// `accounts pause`: not started until resumed.
    Paused,
    /// Truto no longer lists it: never requested again (its rows are kept).
    Retired,
    /// The configuration leaves it out; the reason names the key.
    Excluded(String),
    /// Truto's status says a request would fail (`needs_reauth`, `connecting`, ...).
    TrutoStatus(String),
}

impl Gate {
    pub fn syncs(&self) -> bool {
        *self == Gate::Sync
    }

    /// The state as `status` and `accounts list` show it.
    pub fn state(&self) -> String {
        match self {
            Gate::Sync => "active".into(),
            Gate::Paused => "paused".into(),
            Gate::Retired => "retired".into(),
            Gate::Excluded(why) => format!("excluded: {why}"),
            Gate::TrutoStatus(s) => format!("gated: Truto status {s}"),
        }
    }
}

/// One account of the fleet.
#[derive(Debug, Clone)]
pub struct Planned {
    pub account: AccountSettings,
    pub gate: Gate,
    /// Its registry row, once it has one.
    pub row: Option<AccountRow>,
    pub source: AccountSource,
    /// Which part of the configuration its keys come from.
    pub settings_from: SettingsFrom,
}

impl Planned {
    pub fn id(&self) -> Uuid {
        self.account.integrated_account_id
    }
}

/// The fleet: every configured account, and (with discovery on) every discovered one, in the
/// registry's order then the configuration's.
pub fn plan(settings: &Settings, registry: &[AccountRow]) -> Vec<Planned> {
    let mut out: Vec<Planned> = Vec::new();
    for a in &settings.accounts {
        let row = registry
            .iter()
            .find(|r| r.integrated_account_id == a.integrated_account_id);
        out.push(Planned {
            account: a.clone(),
            gate: gate(settings, row, true),
            row: row.cloned(),
            source: AccountSource::Config,
            settings_from: SettingsFrom::Account,
        });
    }
    if settings.discovery.enabled {
        for r in registry {
            if settings.account(r.integrated_account_id).is_some() {
                continue;
            }
            let (mut account, settings_from) =
                settings.discovered_account(r.integrated_account_id, r.tenant_id.as_deref());
            if r.label.is_some() {
                account.label = r.label.clone();
            }
            out.push(Planned {
                account,
                gate: gate(settings, Some(r), false),
                row: Some(r.clone()),
                source: r.source,
                settings_from,
            });
        }
    }
    out
}

/// The tenants the configuration names, each once: every `[[tenants]]` entry's, then the
/// `discovery.tenant_ids` values no entry has, each with how the configuration writes it
/// (`[[tenants]] tenant_id = "acme"`, `discovery.tenant_ids "globex"`).
pub fn named_tenants(settings: &Settings) -> Vec<(&str, String)> {
    let mut named: Vec<(&str, String)> = settings
        .tenants
        .iter()
        .map(|t| {
            (
                t.tenant_id.as_str(),
                format!("[[tenants]] tenant_id = {:?}", t.tenant_id),
            )
        })
        .collect();
    for t in &settings.discovery.tenant_ids {
        if !named.iter().any(|(id, _)| id == t) {
            named.push((t.as_str(), format!("discovery.tenant_ids {t:?}")));
        }
    }
    named
}

/// The tenants the configuration names ([`named_tenants`]) that no account of `fleet` is of,
/// each as the configuration writes it: most often a misspelt id, whose entry then applies to
/// nothing without a word.
pub fn unmatched_tenants(settings: &Settings, fleet: &[Planned]) -> Vec<String> {
    let present: std::collections::HashSet<&str> = fleet
        .iter()
        .filter_map(|p| p.row.as_ref()?.tenant_id.as_deref())
        .collect();
    named_tenants(settings)
        .into_iter()
        .filter(|(id, _)| !present.contains(id))
        .map(|(_, words)| words)
        .collect()
}

/// Why an account may not be synced, if it may not.
fn gate(settings: &Settings, row: Option<&AccountRow>, configured: bool) -> Gate {
    let d = &settings.discovery;
    let id = match row {
        Some(r) => r.integrated_account_id,
        None => return Gate::Sync,
    };
    if d.exclude_accounts.contains(&id) {
        return Gate::Excluded("listed in discovery.exclude_accounts".into());
    }
    let r = row.expect("checked");
    if r.paused {
        return Gate::Paused;
    }
    if !configured {
        if r.retired_at.is_some() {
            return Gate::Retired;
        }
        if let Some(i) = &r.integration {
            if !d.integrations.iter().any(|x| x == i) {
                return Gate::Excluded(format!("integration {i} is not in discovery.integrations"));
            }
        }
        if !d.tenant_ids.is_empty()
            && !r
                .tenant_id
                .as_ref()
                .is_some_and(|t| d.tenant_ids.contains(t))
        {
            return Gate::Excluded("its tenant is not in discovery.tenant_ids".into());
        }
        if r.is_sandbox && !d.include_sandbox {
            return Gate::Excluded("a sandbox account (discovery.include_sandbox = false)".into());
        }
    }
    match r.truto_status.as_deref() {
        None | Some("active") => Gate::Sync,
        Some(other) if d.enabled => Gate::TrutoStatus(other.to_string()),
        Some(_) => Gate::Sync,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(n: u128) -> AccountRow {
        let t = chrono::Utc::now();
        AccountRow {
            integrated_account_id: Uuid::from_u128(n),
            tenant_id: Some(format!("t{n}")),
            label: None,
            source: AccountSource::Discovered,
            truto_status: Some("active".into()),
            integration: Some("talentlms".into()),
            is_sandbox: false,
            paused: false,
            retired_at: None,
            protected_at: None,
            sync_requested_at: None,
            allow_deletes: false,
            paused_until: None,
            first_seen_at: t,
            last_seen_at: t,
        }
    }

    fn settings() -> Settings {
        let mut s = Settings::default();
        s.discovery.enabled = true;
        s.account_defaults.hydrate = true;
        let mut configured = AccountSettings::new(Uuid::from_u128(2));
        configured.label = Some("Configured".into());
        s.accounts = vec![configured];
        s
    }

    #[test]
    fn discovered_accounts_get_the_defaults_and_configured_ones_their_own_settings() {
        let s = settings();
        let mut r2 = row(2);
        r2.source = AccountSource::Config;
        let fleet = plan(&s, &[row(1), r2, row(3)]);
        let ids: Vec<u128> = fleet.iter().map(|p| p.id().as_u128()).collect();
        assert_eq!(ids, [2, 1, 3]);
        assert_eq!(fleet[0].account.label.as_deref(), Some("Configured"));
        assert!(!fleet[0].account.hydrate);
        assert!(fleet[1].account.hydrate && fleet[2].account.hydrate);
        assert!(fleet.iter().all(|p| p.gate.syncs()));
        // Without discovery, only the configured account.
        let mut off = settings();
        off.discovery.enabled = false;
        assert_eq!(plan(&off, &[row(1), row(3)]).len(), 1);
    }

    #[test]
    fn a_tenants_discovered_accounts_take_its_entry_instead_of_the_defaults() {
        let mut s = settings();
        s.tenants = vec![crate::config::TenantSettings {
            tenant_id: "t3".into(),
            ignore_remote_data: true,
            exclude_fields: vec!["custom_fields".into()],
            schedule: Some(crate::config::AccountSchedule {
                every: Some("1h".into()),
                ..Default::default()
            }),
            ..Default::default()
        }];
        // Account 2 is configured, and of tenant t3 too: its own entry wins.
        let mut r2 = row(2);
        r2.tenant_id = Some("t3".into());
        let mut r4 = row(4);
        r4.tenant_id = None;
        let fleet = plan(&s, &[row(1), r2, row(3), r4]);
        let by = |n: u128| {
            &fleet
                .iter()
                .find(|p| p.id().as_u128() == n)
                .expect("planned")
                .account
        };
        // The tenant's entry, whole: not the defaults' hydrate.
        let t3 = by(3);
        assert!(t3.ignore_remote_data && !t3.hydrate, "{t3:?}");
        assert_eq!(t3.exclude_fields, ["custom_fields"]);
        assert_eq!(
            t3.schedule.as_ref().and_then(|s| s.every.as_deref()),
            Some("1h")
        );
        // Another tenant's, and one without a tenant: the defaults.
        for n in [1, 4] {
            let a = by(n);
            assert!(
                a.hydrate && !a.ignore_remote_data && a.schedule.is_none(),
                "{a:?}"
            );
        }
        let configured = by(2);
        assert!(!configured.ignore_remote_data && !configured.hydrate);
        assert_eq!(configured.label.as_deref(), Some("Configured"));
        // Every tenant named has an account here but one misspelt, and one in tenant_ids.
        s.tenants.push(crate::config::TenantSettings {
            tenant_id: "t33".into(),
            ..Default::default()
        });
        s.discovery.tenant_ids = vec!["t3".into(), "t33".into(), "t4".into()];
        assert_eq!(
            unmatched_tenants(&s, &fleet),
            [
                "[[tenants]] tenant_id = \"t33\"",
                "discovery.tenant_ids \"t4\""
            ]
        );
        // And each says where its keys came from.
        let from = |n: u128| {
            fleet
                .iter()
                .find(|p| p.id().as_u128() == n)
                .expect("planned")
                .settings_from
        };
        assert_eq!(
            [from(1), from(2), from(3), from(4)],
            [
                SettingsFrom::AccountDefaults,
                SettingsFrom::Account,
                SettingsFrom::Tenant,
                SettingsFrom::AccountDefaults
            ]
        );
    }

    #[test]
    fn accounts_are_gated_by_registry_state_truto_status_and_the_filters() {
        let mut s = settings();
        s.discovery.exclude_accounts = vec![Uuid::from_u128(5)];
        s.discovery.tenant_ids = vec![
            "t1".into(),
            "t3".into(),
            "t4".into(),
            "t6".into(),
            "t7".into(),
        ];
        let mut paused = row(1);
        paused.paused = true;
        let mut retired = row(3);
        retired.retired_at = Some(chrono::Utc::now());
        let mut reauth = row(4);
        reauth.truto_status = Some("needs_reauth".into());
        let mut sandbox = row(6);
        sandbox.is_sandbox = true;
        let mut other = row(7);
        other.integration = Some("docebo".into());
        let fleet = plan(
            &s,
            &[paused, retired, reauth, row(5), sandbox, other, row(8)],
        );
        let gates: Vec<String> = fleet.iter().skip(1).map(|p| p.gate.state()).collect();
        assert_eq!(gates[0], "paused");
        assert_eq!(gates[1], "retired");
        assert_eq!(gates[2], "gated: Truto status needs_reauth");
        assert!(gates[3].contains("exclude_accounts"), "{}", gates[3]);
        assert!(gates[4].contains("sandbox"), "{}", gates[4]);
        assert!(gates[5].contains("docebo"), "{}", gates[5]);
        assert!(gates[6].contains("tenant_ids"), "{}", gates[6]);
    }
}
