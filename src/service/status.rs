//! The fleet's state as operators read it (`status`, `accounts list`, `GET /status`): every
//! account of the fleet with its registry entry, sync state and next run.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::config::Settings;
use crate::domain::{AccountRow, AccountSource};
use crate::fleet::{plan, Planned};
use crate::store::{BudgetView, DiscoveryState, PurgeSummary, StatusRow, Store, StoreError};

/// What `status` and `accounts list` read.
pub struct FleetState {
    pub fleet: Vec<Planned>,
    pub rows: Vec<StatusRow>,
    pub next: HashMap<Uuid, DateTime<Utc>>,
    pub discovery: Option<DiscoveryState>,
    /// What was purged lately and what is due, with `discovery.purge_retired_after` (None: the
    /// service purges no retired account).
    pub purges: Option<PurgeSummary>,
    /// Who paused each paused account, when and why (by account).
    pub pauses: HashMap<Uuid, crate::store::Paused>,
}

/// One account as `accounts list --json` and `GET /status` show it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AccountView {
    pub integrated_account_id: Uuid,
    pub label: Option<String>,
    pub tenant_id: Option<String>,
    pub source: String,
    pub state: String,
    pub health: String,
    pub health_since: Option<DateTime<Utc>>,
    pub last_success: Option<DateTime<Utc>>,
    /// How its last run ended (`succeeded`, `needs_attention`, `failed`, `interrupted`,
    /// `running`); none before its first.
    pub last_outcome: Option<String>,
    /// Why its last run needs attention (the delete guard kept users, a partial listing), when
    /// it does.
    pub attention_reason: Option<String>,
    pub next_run: Option<DateTime<Utc>>,
    /// The server holds the account's requests back until then (a quota spent): no run before.
    pub held_until: Option<DateTime<Utc>>,
    pub live_users: i64,
    pub last_error: Option<String>,
    /// When Truto stopped listing it (retired accounts only).
    pub retired_at: Option<DateTime<Utc>>,
    /// Since when its data is kept from any purge (`accounts protect`).
    pub protected_at: Option<DateTime<Utc>>,
    /// `accounts pause --until`: when the service resumes it (a paused account only).
    pub paused_until: Option<DateTime<Utc>>,
    /// A paused account: when it was paused, by whom and why (its latest `pause` in
    /// `account_actions`; none for a pause older than that table).
    pub paused_at: Option<DateTime<Utc>>,
    pub paused_by: Option<String>,
    pub pause_reason: Option<String>,
    /// `accounts allow-deletes`: its next complete listing deletes whatever it no longer lists,
    /// past the delete guard.
    pub deletes_allowed: bool,
    /// When the service may purge it (a retired account, with `discovery.purge_retired_after`):
    /// at the first complete listing from then on.
    pub purge_due: Option<DateTime<Utc>>,
    /// Where its keys come from: `accounts`, `tenants` or `account_defaults` (`accounts show`
    /// says what they are).
    pub settings_from: crate::config::SettingsFrom,
}

/// A mirror older than this needs attention (the stale-mirror alert's threshold).
const STALE_HOURS: i64 = 26;

/// What each rank of [`AccountView::attention`] counts as, in the status page's summary and
/// `lms-sync status`'s: its key (the page's `?why=`), and its words. The last one needs no
/// attention: its accounts are not synced on purpose.
pub const RANKS: [(&str, &str); 6] = [
    ("unsyncable", "cannot be synced"),
    ("failed", "failed their last run"),
    ("attention", "need attention after their last run"),
    ("stale", "not refreshed for over 26 h"),
    ("never", "never synced yet"),
    (
        "not_synced",
        "not synced here (paused, retired, excluded or gated)",
    ),
];

impl AccountView {
    /// Why the account needs attention (the most pressing reason), if it does, and its rank:
    /// an index of [`RANKS`], or past them for an account that is fine. Lower sorts first.
    pub fn attention(&self, now: DateTime<Utc>) -> (u8, Option<String>) {
        if self.health != "ok" {
            return (0, Some(format!("cannot be synced: {}", self.health)));
        }
        if self.last_error.is_some() && self.state == "active" {
            let why = match self.held_until {
                // (The run failed because of it; the schedule waits for it.)
                Some(t) if t > now => format!(
                    "the server holds its requests back until {} (a quota spent, say); it runs then",
                    t.format("%Y-%m-%d %H:%M UTC")
                ),
                _ => "the last run failed".into(),
            };
            return (1, Some(why));
        }
        if self.last_outcome.as_deref() == Some("needs_attention") && self.state == "active" {
            // Its runs succeed, so nothing else says it: the delete guard keeping users that
            // left, at every run, or Truto marking its listings partial.
            let why = self
                .attention_reason
                .as_deref()
                .unwrap_or("see the account's page");
            return (2, Some(format!("the last run needs attention: {why}")));
        }
        match self.last_success {
            Some(t) if now - t > chrono::Duration::hours(STALE_HOURS) => {
                return (3, Some(format!("not refreshed for over {STALE_HOURS} h")))
            }
            None if self.state == "active" => return (4, Some("never synced yet".into())),
            _ => {}
        }
        if self.state != "active" {
            return (5, None);
        }
        (6, None)
    }
}

/// `views` in the order the status page and `lms-sync status` list them, each with its
/// [`AccountView::attention`]: those needing attention first, the most pressing first, then
/// by label and id.
pub fn ranked(
    views: &[AccountView],
    now: DateTime<Utc>,
) -> Vec<(&AccountView, (u8, Option<String>))> {
    let mut rows: Vec<_> = views.iter().map(|v| (v, v.attention(now))).collect();
    rows.sort_by(|(a, ka), (b, kb)| {
        ka.0.cmp(&kb.0)
            .then_with(|| a.label.cmp(&b.label))
            .then_with(|| a.integrated_account_id.cmp(&b.integrated_account_id))
    });
    rows
}

/// How many of `ranked` accounts each rank of [`RANKS`] holds.
pub fn count_by_rank(ranked: &[(&AccountView, (u8, Option<String>))]) -> [usize; RANKS.len()] {
    let mut by_rank = [0usize; RANKS.len()];
    for (_, (rank, _)) in ranked {
        if let Some(n) = by_rank.get_mut(usize::from(*rank)) {
            *n += 1;
        }
    }
    by_rank
}

/// Reads the fleet's state (read-only); given `only`, of that one account (still planned
/// against the whole registry, which decides its state; empty when it is not in the fleet).
pub async fn read_state(
    settings: &Settings,
    store: &Store,
    only: Option<Uuid>,
) -> Result<FleetState, StoreError> {
    let registry = store.registry().await?;
    let mut fleet = plan(settings, &registry);
    if let Some(id) = only {
        fleet.retain(|p| p.id() == id);
    }
    let known: Vec<(Uuid, Option<String>)> = fleet
        .iter()
        .map(|p| (p.id(), p.account.label.clone()))
        .collect();
    let rows = store.status(&known, only).await?;
    let histories = store.run_histories(only).await?;
    let next = super::next_runs(settings, &fleet, &histories, Utc::now());
    let discovery = store.discovery_state().await?;
    let purges = match settings
        .discovery
        .enabled
        .then(|| settings.discovery.purge_retired_after())
        .flatten()
    {
        Some(after) => Some(store.purge_summary(after).await?),
        None => None,
    };
    // An extra: a role that may not read `account_actions` still sees the fleet.
    let pauses = store
        .pauses(only)
        .await
        .unwrap_or_else(|e| {
            tracing::debug!(error = %e, "cannot read who paused the paused accounts");
            Vec::new()
        })
        .into_iter()
        .map(|p| (p.integrated_account_id, p))
        .collect();
    Ok(FleetState {
        fleet,
        rows,
        next,
        discovery,
        purges,
        pauses,
    })
}

/// The keys one account runs with, as the configuration of the process that reads them has
/// them (an `[[accounts]]` entry's, a `[[tenants]]` entry's or `[account_defaults]`' over the
/// global ones), and where they come from: what `accounts show`, its page and
/// `GET /status/accounts/{id}` say when an operator asks why an account syncs as it does.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AccountSettingsView {
    /// `accounts`, `tenants` or `account_defaults`.
    pub from: crate::config::SettingsFrom,
    /// When the service runs it, in words (`every 6h, jitter 30s`).
    pub schedule: String,
    pub remote_query: std::collections::BTreeMap<String, String>,
    pub ignore_remote_data: bool,
    pub exclude_fields: Vec<String>,
    /// The delete guard's fraction in force (its own, else `sync.max_delete_fraction`).
    pub max_delete_fraction: f64,
    pub hydrate: bool,
    /// Users hydrated per run at most, when it hydrates (its own, else
    /// `sync.hydrate_max_per_run`).
    pub hydrate_max_per_run: Option<u32>,
}

impl AccountSettingsView {
    pub fn of(settings: &Settings, p: &Planned) -> Self {
        let a = &p.account;
        Self {
            from: p.settings_from,
            schedule: settings.schedule_for(a).words(),
            remote_query: a.remote_query.clone(),
            ignore_remote_data: a.ignore_remote_data,
            exclude_fields: a.exclude_fields.clone(),
            max_delete_fraction: a
                .max_delete_fraction
                .unwrap_or(settings.sync.max_delete_fraction),
            hydrate: a.hydrate,
            hydrate_max_per_run: a.hydrate.then(|| {
                a.hydrate_max_per_run
                    .unwrap_or(settings.sync.hydrate_max_per_run)
            }),
        }
    }

    /// Its facts in words, for an account of `tenant`, as `accounts show` and the account's
    /// page list them: where they come from, the schedule, what the listing asks for, the
    /// delete guard, hydration.
    pub fn facts(&self, tenant: Option<&str>) -> Vec<(&'static str, String)> {
        let mut asks = Vec::new();
        if self.ignore_remote_data {
            asks.push("no remote_data (ignore_remote_data)".to_string());
        }
        if !self.exclude_fields.is_empty() {
            asks.push(format!(
                "without {} (exclude_fields)",
                self.exclude_fields.join(", ")
            ));
        }
        if !self.remote_query.is_empty() {
            let query: Vec<String> = self
                .remote_query
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            asks.push(format!("remote_query {}", query.join("&")));
        }
        if asks.is_empty() {
            asks.push("every field, with remote_data".into());
        }
        vec![
            ("settings", format!("from {}", self.from.words(tenant))),
            ("schedule", self.schedule.clone()),
            ("asks for", asks.join("; ")),
            (
                "delete guard",
                format!(
                    "a listing deletes at most {} % of its live users (max_delete_fraction)",
                    (self.max_delete_fraction * 1000.0).round() / 10.0
                ),
            ),
            (
                "hydrate",
                match self.hydrate_max_per_run {
                    Some(n) => format!("yes, up to {n} users a run"),
                    None => "no".into(),
                },
            ),
        ]
    }
}

/// One account with what its own pages show: `accounts show`, the status page's
/// `/accounts/{id}` and the admin route `GET /status/accounts/{id}` ([`read_account`]).
pub struct OneAccount {
    /// What `accounts list` says of it.
    pub view: AccountView,
    /// Its sync state, once it has one.
    pub row: Option<StatusRow>,
    /// Its latest runs, newest first.
    pub runs: Vec<crate::store::RunView>,
    /// Its latest operators' actions, newest first (`ACTIONS_SHOWN`).
    pub actions: Vec<crate::store::AccountAction>,
    /// The keys it runs with and where they come from.
    pub settings: AccountSettingsView,
}

impl OneAccount {
    /// As `accounts show --json` and `GET /status/accounts/{id}` give it: `account`, `runs`,
    /// `actions` and `settings`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "account": self.view,
            "runs": self.runs,
            "actions": self.actions,
            "settings": self.settings,
        })
    }
}

/// The account `id` with its latest `runs` runs and latest actions; `None` for an account
/// outside the fleet (neither configured nor discovered).
pub async fn read_account(
    settings: &Settings,
    store: &Store,
    id: Uuid,
    runs: i64,
) -> Result<Option<OneAccount>, StoreError> {
    let state = read_state(settings, store, Some(id)).await?;
    let Some(view) = account_views(&state).into_iter().next() else {
        return Ok(None);
    };
    let settings_view = AccountSettingsView::of(settings, &state.fleet[0]);
    let row = state.rows.into_iter().next();
    Ok(Some(OneAccount {
        view,
        row,
        runs: store.recent_runs(id, runs).await?,
        actions: store
            .account_actions(id, super::account_page::ACTIONS_SHOWN)
            .await?,
        settings: settings_view,
    }))
}

/// Each account of the fleet, for lists and JSON.
pub fn account_views(state: &FleetState) -> Vec<AccountView> {
    // By id: a fleet of thousands looked up row by row is millions of comparisons a look.
    let rows: HashMap<Uuid, &StatusRow> = state
        .rows
        .iter()
        .map(|r| (r.integrated_account_id, r))
        .collect();
    state
        .fleet
        .iter()
        .map(|p| {
            let row = rows.get(&p.id()).copied();
            // As the purge reads it: discovered and no longer listed (paused or not).
            let retired_at = match p.source {
                AccountSource::Discovered => p.row.as_ref().and_then(|r| r.retired_at),
                AccountSource::Config => None,
            };
            let protected_at = p.row.as_ref().and_then(|r| r.protected_at);
            let pause = state
                .pauses
                .get(&p.id())
                .filter(|_| p.gate == crate::fleet::Gate::Paused);
            let purge_due = retired_at
                .filter(|_| protected_at.is_none())
                .zip(state.purges.as_ref().map(|p| p.after))
                .and_then(|(at, after)| {
                    chrono::Duration::from_std(after)
                        .ok()
                        .and_then(|after| at.checked_add_signed(after))
                });
            AccountView {
                integrated_account_id: p.id(),
                label: p.account.label.clone(),
                tenant_id: p.row.as_ref().and_then(|r| r.tenant_id.clone()),
                source: p.source.as_str().to_string(),
                state: p.gate.state(),
                health: row.map_or("ok", |r| r.health.as_str()).to_string(),
                health_since: row.and_then(|r| r.health_since),
                last_success: row.and_then(|r| r.last_succeeded_at),
                last_outcome: row
                    .and_then(|r| r.last_outcome)
                    .map(|o| o.as_str().to_string()),
                attention_reason: row.and_then(|r| r.attention_reason.clone()),
                next_run: state.next.get(&p.id()).copied(),
                held_until: row.and_then(|r| r.held_until),
                live_users: row.map_or(0, |r| r.live_users),
                last_error: row.and_then(|r| r.last_error.clone()),
                retired_at,
                protected_at,
                deletes_allowed: p.row.as_ref().is_some_and(|r| r.allow_deletes),
                paused_until: p.row.as_ref().and_then(AccountRow::pause_end),
                // (Only while it is paused: the gate says so, not a stale record.)
                paused_at: pause.map(|x| x.acted_at),
                paused_by: pause.map(|x| x.actor.clone()),
                pause_reason: pause.and_then(|x| x.reason.clone()),
                purge_due,
                settings_from: p.settings_from,
            }
        })
        .collect()
}

/// The token's request budget as the database holds it (the status page, `GET /status/budget`).
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetSection {
    pub per_token: usize,
    pub window_secs: u64,
    pub view: BudgetView,
    /// The digest of the configuration of the process that reads it
    /// ([`Settings::digest`]): on the status page, the replica's own.
    pub config_digest: String,
    /// When the live replicas run more than one configuration: the one the others are
    /// compared with (this process's when a live replica runs it, else the most common), and
    /// how each other one differs from it, as [`crate::config::differences`] words it (empty
    /// when its configuration is not recorded: a binary older than migration 0033).
    pub compared: Option<Compared>,
}

/// How the configurations the live replicas run differ from one of them.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Compared {
    pub with: String,
    pub differences: Vec<(String, Vec<String>)>,
}

/// Differences named per configuration: more would not fit on a line of the status page.
const DIFFERENCES_SHOWN: usize = 6;

impl BudgetSection {
    /// Requests of the window held by the processes' shares.
    pub fn held(&self) -> i64 {
        self.view.holders.iter().map(|h| i64::from(h.share)).sum()
    }

    /// The budgets the live holders are configured with (those of binaries older than
    /// migration 0019 say nothing).
    fn configured(&self) -> Vec<(i32, i32)> {
        self.view
            .holders
            .iter()
            .filter(|h| h.alive)
            .filter_map(|h| Some((h.per_token?, h.window_secs?)))
            .collect()
    }

    /// Requests per window the processes share: the strictest of this process's configured
    /// budget and the live holders' (see `store::agreed_limit`).
    pub fn shared(&self) -> i64 {
        i64::from(crate::store::agreed_limit(
            self.per_token as i32,
            self.window_secs as i32,
            &self.configured(),
        ))
    }

    /// A live holder is configured with a budget other than this process's.
    pub fn mismatch(&self) -> bool {
        let mine = (self.per_token as i32, self.window_secs as i32);
        self.configured().iter().any(|c| *c != mine)
    }

    /// The configurations the live replicas run (their digests), the most common first, with
    /// how many run each; processes that record none (one-off commands, binaries older than
    /// migration 0032) are left out.
    pub fn configurations(&self) -> Vec<(&str, usize)> {
        configurations(&self.view)
    }

    /// How configuration `digest` differs from the one the others are compared with (`None`
    /// when it is that one, when its differences are not known, or when all run one).
    pub fn differences(&self, digest: &str) -> Option<(&str, &[String])> {
        let c = self.compared.as_ref()?;
        c.differences
            .iter()
            .find(|(d, l)| d == digest && !l.is_empty())
            .map(|(_, l)| (c.with.as_str(), l.as_slice()))
    }

    /// Requests of the window neither held nor hot.
    pub fn free(&self) -> i64 {
        (self.shared() - self.held() - self.view.hot).max(0)
    }

    /// The budget in one sentence, as the status page and `lms-sync status` say it.
    pub fn summary(&self) -> String {
        let n = self.view.holders.len();
        let size = if self.mismatch() {
            format!(
                "{} requests per {} s (the strictest budget the processes are configured with: \
                 they disagree, and this one's is {} per {} s)",
                self.shared(),
                self.window_secs,
                self.per_token,
                self.window_secs
            )
        } else {
            format!("{} requests per {} s", self.per_token, self.window_secs)
        };
        let configurations = self.configurations();
        let differ = if configurations.len() > 1 {
            format!(
                "; the replicas run {} different configurations ({}; lms-sync config prints a \
                 process's digest)",
                configurations.len(),
                configurations
                    .iter()
                    .map(|(d, n)| format!("{d} by {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            String::new()
        };
        format!(
            "{size}, shared by every process on this database: {} held by {} \
             process{}, {} hot (given back, still in Truto's window), {} free{differ}",
            self.held(),
            n,
            if n == 1 { "" } else { "es" },
            self.view.hot,
            self.free(),
        )
    }
}

#[cfg(test)]
impl BudgetSection {
    /// The page's and the CLI's example: 500 a window, two holders (the second's connection
    /// gone), 100 hot. `first` names the first holder, so a test can put markup in it.
    pub(crate) fn example(first: &str, renewed_at: chrono::DateTime<chrono::Utc>) -> Self {
        let holder = |name: &str, share, wanted, alive| crate::store::ShareView {
            holder: name.into(),
            share,
            wanted,
            renewed_at,
            alive,
            per_token: Some(500),
            window_secs: Some(10),
            halted: None,
            others_answered: None,
            version: None,
            config_digest: None,
        };
        BudgetSection {
            config_digest: "0123456789ab".into(),
            compared: None,
            per_token: 500,
            window_secs: 10,
            view: BudgetView {
                holders: vec![
                    holder(first, 200, 200, true),
                    holder("web-2:7:cd", 150, 500, false),
                ],
                hot: 100,
            },
        }
    }
}

/// The token's budget as the database holds it; `None` when requests are not paced
/// (`rate_budget.enabled = false`).
pub async fn read_budget(
    settings: &Settings,
    store: &Store,
) -> Result<Option<BudgetSection>, StoreError> {
    let Some(view) = budget_view(settings, store).await? else {
        return Ok(None);
    };
    let b = &settings.rate_budget;
    let mut section = BudgetSection {
        config_digest: settings.digest(),
        per_token: b.per_token,
        window_secs: b.window_secs,
        view,
        compared: None,
    };
    section.compared = compare(store, &section.view, &section.config_digest, || {
        settings.comparable()
    })
    .await;
    Ok(Some(section))
}

/// Whether an lms-sync process runs against the database, as the token's budget tells (a live
/// holder of a share); `None` when requests are not paced and it cannot tell. Reads the
/// holders only.
pub async fn processes_running(
    settings: &Settings,
    store: &Store,
) -> Result<Option<bool>, StoreError> {
    Ok(budget_view(settings, store).await?.map(|v| v.running()))
}

/// The token's budget's holders and what is hot; `None` when requests are not paced.
async fn budget_view(settings: &Settings, store: &Store) -> Result<Option<BudgetView>, StoreError> {
    let b = &settings.rate_budget;
    if !b.enabled {
        return Ok(None);
    }
    let window = std::time::Duration::from_secs(b.window_secs);
    Ok(Some(store.budget_view(super::budget::TOKEN, window).await?))
}

/// The configurations the live holders of `view` run (their digests), the most common first,
/// with how many run each; holders that record none are left out.
fn configurations(view: &BudgetView) -> Vec<(&str, usize)> {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for digest in view
        .holders
        .iter()
        .filter(|h| h.alive)
        .filter_map(|h| h.config_digest.as_deref())
    {
        match counts.iter_mut().find(|(d, _)| *d == digest) {
            Some((_, n)) => *n += 1,
            None => counts.push((digest, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    counts
}

/// How the configurations the live holders of `view` run differ, when they do: compared with
/// `own_digest`'s (`own`, the reader's own [`Settings::comparable`]) when a live holder runs
/// it, else with the most common, read from `replica_configurations` (one query, only then).
/// Best effort: `None` when they cannot be read.
pub async fn compare(
    store: &Store,
    view: &BudgetView,
    own_digest: &str,
    own: impl FnOnce() -> serde_json::Value,
) -> Option<Compared> {
    let configurations = configurations(view);
    if configurations.len() < 2 {
        return None;
    }
    let with = match configurations.iter().find(|(d, _)| *d == own_digest) {
        Some((d, _)) => d.to_string(),
        None => configurations[0].0.to_string(),
    };
    let digests: Vec<String> = configurations.iter().map(|(d, _)| d.to_string()).collect();
    let recorded = match store.replica_configurations(&digests).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read the replicas' configurations");
            return None;
        }
    };
    let reference = if with == own_digest {
        own()
    } else {
        recorded.iter().find(|(d, _)| *d == with)?.1.clone()
    };
    let differences = digests
        .into_iter()
        .filter(|d| *d != with)
        .map(|d| {
            let words = recorded
                .iter()
                .find(|(r, _)| *r == d)
                .map(|(_, theirs)| {
                    crate::config::differences(theirs, &reference, DIFFERENCES_SHOWN)
                })
                .unwrap_or_default();
            (d, words)
        })
        .collect();
    Some(Compared { with, differences })
}
