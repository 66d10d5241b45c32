//! What the commands print: the per-account summary after `sync` (and `demo`), and the
//! `status` table. Pure: strings in, strings out.

use std::collections::HashMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::domain::Outcome;
use crate::service::status::{AccountSettingsView, AccountView, BudgetSection};
use crate::store::{AccountAction, RunView, StatusRow};
use crate::sync::SyncOutcome;
use crate::text::shorten;

/// The per-account table printed after `sync` and `demo`.
pub fn summary(outcomes: &[SyncOutcome]) -> String {
    let mut s = format!(
        "{:<38} {:<16} {:>6} {:>8} {:>8} {:>8} {:>9} {:>7} {:>8} {:>8}\n",
        "account",
        "outcome",
        "pages",
        "users",
        "inserted",
        "updated",
        "unchanged",
        "deleted",
        "rejected",
        "seconds"
    );
    for o in outcomes {
        let c = &o.counts;
        let _ = writeln!(
            s,
            "{:<38} {:<16} {:>6} {:>8} {:>8} {:>8} {:>9} {:>7} {:>8} {:>8.1}",
            shorten(&o.label, 37),
            o.status_str(),
            c.pages,
            c.users_seen,
            c.inserted,
            c.updated,
            c.unchanged,
            c.deleted,
            c.rejected,
            o.elapsed.as_secs_f64()
        );
    }
    for o in outcomes {
        if let Some(e) = &o.error {
            let _ = writeln!(s, "  {}: {e}", o.label);
        } else if let Some(r) = &o.deletions_skipped_reason {
            if !o.succeeded() {
                let _ = writeln!(s, "  {}: {r}", o.label);
            }
        }
    }
    s
}

/// What the registry adds to an account's status: its tenant and its state in the fleet.
#[derive(Debug, Clone, Default)]
pub struct FleetInfo {
    pub tenant_id: Option<String>,
    /// `active`, `paused`, `retired`, `excluded: why`, `gated: why`.
    pub state: String,
    /// A paused account: by whom, when and why ([`paused_by`]).
    pub paused: Option<String>,
}

/// The line of `lms-sync status` under its table: the fleet's size and how many of its
/// accounts need attention, by kind, in the status page's words (`by_rank`: a count per
/// [`crate::service::status::RANKS`]), and how many are not synced on purpose.
pub fn status_summary(
    accounts: usize,
    live_users: i64,
    by_rank: &[usize; crate::service::status::RANKS.len()],
) -> String {
    use crate::service::status::RANKS;
    let (attention, off) = by_rank.split_at(RANKS.len() - 1);
    let kinds: Vec<String> = attention
        .iter()
        .zip(RANKS)
        .filter(|(n, _)| **n > 0)
        .map(|(n, (_, what))| format!("{n} {what}"))
        .collect();
    let mut line = format!(
        "fleet: {accounts} account{}, {live_users} live users; ",
        if accounts == 1 { "" } else { "s" }
    );
    match attention.iter().sum::<usize>() {
        0 => line.push_str("none needs attention"),
        1 => line.push_str("1 needs attention"),
        n => line.push_str(&format!("{n} need attention")),
    }
    if !kinds.is_empty() {
        line.push_str(&format!(" ({})", kinds.join(", ")));
    }
    if let Some(&n) = off.first().filter(|n| **n > 0) {
        line.push_str(&format!("; {n} {}", RANKS[RANKS.len() - 1].1));
    }
    line.push('\n');
    line
}

/// `status` as a readable table.
pub fn status(
    rows: &[StatusRow],
    next: &HashMap<Uuid, DateTime<Utc>>,
    fleet: &HashMap<Uuid, FleetInfo>,
) -> String {
    let t = |v: Option<DateTime<Utc>>| {
        v.map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
            .unwrap_or_else(|| "-".into())
    };
    let mut s = format!(
        "{:<38} {:<16} {:<16} {:<13} {:<16} {:<21} {:<21} {:<21} {:>8} {:>8} {:>5}\n",
        "account",
        "tenant",
        "status",
        "health",
        "last outcome",
        "last finished",
        "last success",
        "next run",
        "live",
        "deleted",
        "fails"
    );
    for r in rows {
        let name = r
            .label
            .clone()
            .filter(|l| !l.is_empty())
            .unwrap_or_else(|| r.integrated_account_id.to_string());
        let info = fleet.get(&r.integrated_account_id);
        let _ = writeln!(
            s,
            "{:<38} {:<16} {:<16} {:<13} {:<16} {:<21} {:<21} {:<21} {:>8} {:>8} {:>5}",
            shorten(&name, 37),
            shorten(info.and_then(|i| i.tenant_id.as_deref()).unwrap_or("-"), 15),
            r.status,
            r.health.as_str(),
            r.last_outcome.map_or("-", Outcome::as_str),
            t(r.last_finished_at),
            t(r.last_succeeded_at),
            t(next.get(&r.integrated_account_id).copied()),
            r.live_users,
            r.deleted_users,
            r.consecutive_failures
        );
        if let Some(i) = info.filter(|i| i.state != "active") {
            let _ = writeln!(s, "    not synced: {}", i.state);
        }
        if let Some(by) = info.and_then(|i| i.paused.as_deref()) {
            let _ = writeln!(s, "    paused {by}");
        }
        if let Some(why) = &r.attention_reason {
            let _ = writeln!(s, "    last run needs attention: {}", shorten(why, 300));
        }
        if r.resumable {
            s.push_str("    the next run resumes an unfinished listing\n");
        }
        if r.hydration_pending > 0 {
            let _ = writeln!(
                s,
                "    {} users queued for hydration (full objects fetched in the next runs)",
                r.hydration_pending
            );
        }
        if !r.health.is_ok() {
            let _ = writeln!(
                s,
                "    unhealthy since {}: {}; probed again at the next run time, then synced as soon as a request succeeds",
                t(r.health_since),
                r.health_reason
                    .as_deref()
                    .map(|e| shorten(e, 300))
                    .unwrap_or_default()
            );
        }
        if let Some(until) = r.held_until {
            let _ = writeln!(s, "    {}", crate::schedule::held_back(until));
        }
        if let Some(e) = &r.last_error {
            let _ = writeln!(s, "    last error: {}", shorten(e, 300));
        }
    }
    s
}

/// The line of `lms-sync status` that says no process is running against the database (none
/// holds a share of the request budget), with how many accounts' runs are `due`; `None` while
/// one is, or when the budget cannot tell.
pub fn nothing_running(running: Running, due: usize) -> Option<String> {
    (running == Some(false)).then(|| {
        format!(
            "service: no lms-sync process holds a share of the request budget: none runs against \
             this database, and no run starts until one does ({due} account{} due now)",
            if due == 1 { "" } else { "s" }
        )
    })
}

/// Who paused an account, when and why, as `status`, `accounts list` and `accounts show` say
/// it: `by the admin API from 10.0.0.7 (replica a:1) at 2026-12-08 05:55:00Z: "CHG-1"`.
pub fn paused_by(at: DateTime<Utc>, actor: &str, reason: Option<&str>) -> String {
    format!(
        "by {} at {}{}",
        shorten(actor, 200),
        at.format("%Y-%m-%d %H:%M:%SZ"),
        reason
            .map(|r| format!(": \"{}\"", shorten(r, REASON_SHOWN)))
            .unwrap_or_default()
    )
}

/// Who paused `v`, when and why ([`paused_by`]), when it is paused and that is recorded.
pub fn pause_words(v: &AccountView) -> Option<String> {
    let (at, by) = v.paused_at.zip(v.paused_by.as_deref())?;
    Some(paused_by(at, by, v.pause_reason.as_deref()))
}

/// The longest reason an operator can give (`Acting`): shown whole, with no control character
/// (plain SQL may have recorded anything).
const REASON_SHOWN: usize = crate::store::REASON_MAX_CHARS;

/// One of the operators' actions of the last day, as `status` lists them under the fleet:
/// `operator: 2026-12-08 06:00Z (5 min ago) pause of 50 accounts by … — "why"`.
pub fn operator_action(a: &crate::store::ActionGroup, now: DateTime<Utc>) -> String {
    let minutes = (now - a.acted_at).num_minutes().max(0);
    let ago = if minutes < 90 {
        format!("{minutes} min ago")
    } else {
        format!("{} h ago", minutes / 60)
    };
    let which = if a.accounts == 1 {
        format!("account {}", a.one_account)
    } else {
        format!("{} accounts", a.accounts)
    };
    // (What plain SQL recorded may hold anything: no control character reaches the terminal.)
    format!(
        "operator: {} ({ago}) {} of {which} by {}{}",
        a.acted_at.format("%Y-%m-%d %H:%MZ"),
        shorten(&a.action, 40),
        shorten(&a.actor, 200),
        a.reason
            .as_deref()
            .map(|r| format!(" — \"{}\"", shorten(r, REASON_SHOWN)))
            .unwrap_or_default()
    )
}

/// An account's next run as `accounts show` says it: one already due says what starts it, and
/// when no process holds a share of the request budget, that none is running to.
fn next_run(
    account: Uuid,
    at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    running: Running,
) -> String {
    let Some(at) = at else {
        return "-".into();
    };
    let shown = at.format("%Y-%m-%d %H:%M:%SZ");
    if at > now {
        return shown.to_string();
    }
    match running {
        Some(false) => format!(
            "{shown} (due, but no lms-sync process holds a share of the request budget: is the \
             service running? `lms-sync sync --account {account}` runs it once)"
        ),
        _ => format!("{shown} (due: a replica starts it once it has a slot free)"),
    }
}

/// The token's request budget under `status`: what the processes on this database hold of its
/// window, what is hot and free, then one line per process.
pub fn budget(b: &BudgetSection) -> String {
    let mut s = format!("request budget: {}\n", b.summary());
    if b.view.holders.is_empty() {
        s.push_str("    no process holds a share yet\n");
    }
    for h in &b.view.holders {
        let _ = writeln!(
            s,
            "    {}: share {} (wants {}), renewed {}{}{}{}{}",
            shorten(&h.holder, 80),
            h.share,
            h.wanted,
            h.renewed_at.format("%Y-%m-%d %H:%M:%SZ"),
            match (&h.version, &h.config_digest) {
                (Some(v), Some(d)) => format!(
                    "; lms-sync {}, configuration {}{}",
                    shorten(v, 40),
                    shorten(d, 40),
                    b.differences(d)
                        .map(|(with, words)| format!(
                            " (unlike {}: {})",
                            shorten(with, 40),
                            shorten(&words.join("; "), 600)
                        ))
                        .unwrap_or_default()
                ),
                _ => String::new(),
            },
            match (h.per_token, h.window_secs) {
                (Some(n), Some(w)) if (n as usize, w as u64) != (b.per_token, b.window_secs) =>
                    format!(
                        "; configured with {n} per {w} s, not this one's {} per {} s",
                        b.per_token, b.window_secs
                    ),
                _ => String::new(),
            },
            if h.alive {
                ""
            } else {
                "; connection gone: its share is released at the next negotiation"
            },
            h.halted
                .as_deref()
                .map(|why| format!(
                    "; starts no run: {}{}",
                    shorten(why, 300),
                    h.others_answered
                        .map(|at| format!(
                            "; another process got an answer from Truto since (at {}): this \
                             one's way to Truto (DNS, egress, proxy) is what fails",
                            at.format("%Y-%m-%d %H:%M:%SZ")
                        ))
                        .unwrap_or_default()
                ))
                .unwrap_or_default()
        );
    }
    s
}

/// `accounts list` as a readable table.
pub fn accounts(views: &[&AccountView]) -> String {
    let t = |v: Option<DateTime<Utc>>| {
        v.map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
            .unwrap_or_else(|| "-".into())
    };
    let mut s = format!(
        "{:<36} {:<24} {:<16} {:<10} {:<24} {:<13} {:<21} {:<21} {:>8}\n",
        "account",
        "label",
        "tenant",
        "source",
        "state",
        "health",
        "last success",
        "next run",
        "live"
    );
    for v in views {
        let _ = writeln!(
            s,
            "{:<36} {:<24} {:<16} {:<10} {:<24} {:<13} {:<21} {:<21} {:>8}",
            v.integrated_account_id,
            shorten(v.label.as_deref().unwrap_or("-"), 23),
            shorten(v.tenant_id.as_deref().unwrap_or("-"), 15),
            v.source,
            shorten(&v.state, 23),
            v.health,
            t(v.last_success),
            t(v.next_run),
            v.live_users
        );
        if let Some(until) = v.held_until {
            let _ = writeln!(s, "    {}", crate::schedule::held_back(until));
        }
        if let Some(words) = pause_words(v) {
            let _ = writeln!(s, "    paused {words}");
        }
        if let Some(until) = v.paused_until {
            let _ = writeln!(
                s,
                "    paused until {} (then resumed by the service)",
                t(Some(until))
            );
        }
        if let Some(e) = &v.last_error {
            let _ = writeln!(s, "    last error: {}", shorten(e, 300));
        }
        if let Some(why) = &v.attention_reason {
            let _ = writeln!(s, "    last run needs attention: {}", shorten(why, 300));
        }
    }
    s
}

/// Whether any lms-sync process is running against the database, as far as the request
/// budget tells: `None` when it cannot (requests are not paced, so no process holds a share).
pub type Running = Option<bool>;

/// `accounts show`: one account's facts, then its `runs` (newest first), as of `now`;
/// `running` says whether a due next run has a process to start it.
pub fn account(
    v: &AccountView,
    row: Option<&StatusRow>,
    runs: &[RunView],
    actions: &[AccountAction],
    settings: &AccountSettingsView,
    now: DateTime<Utc>,
    running: Running,
) -> String {
    use crate::service::account_page::{listing, requests, took, who};
    let t = |v: Option<DateTime<Utc>>| {
        v.map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
            .unwrap_or_else(|| "-".into())
    };
    let mut s = String::new();
    let mut fact = |name: &str, value: &str| {
        let _ = writeln!(s, "{name:<14} {value}");
    };
    fact("account", &v.integrated_account_id.to_string());
    fact("label", v.label.as_deref().unwrap_or("-"));
    fact("tenant", v.tenant_id.as_deref().unwrap_or("-"));
    fact("source", &v.source);
    fact("state", &v.state);
    if let Some(words) = pause_words(v) {
        fact("paused", &words);
    }
    if let Some(until) = v.paused_until {
        fact(
            "paused until",
            &format!("{}: the service resumes it then", t(Some(until))),
        );
    }
    if let Some(at) = v.retired_at {
        fact("retired", &t(Some(at)));
    }
    if let Some(since) = v.protected_at {
        fact(
            "protected",
            &format!(
                "since {}: its data is never purged (accounts unprotect lifts that)",
                t(Some(since))
            ),
        );
    }
    if v.deletes_allowed {
        fact(
            "deletes",
            "allowed: its next complete listing deletes whatever it no longer lists, past the \
             delete guard (accounts allow-deletes; once)",
        );
    }
    if let Some(due) = v.purge_due {
        fact(
            "purge due",
            &format!(
                "{}: every row deleted at the first complete listing from then on (discovery.purge_retired_after)",
                t(Some(due))
            ),
        );
    }
    let mut health = v.health.clone();
    if v.health != "ok" {
        let _ = write!(health, " since {}", t(v.health_since));
        if let Some(why) = row.and_then(|r| r.health_reason.as_deref()) {
            let _ = write!(health, ": {}", shorten(why, 300));
        }
    }
    fact("health", &health);
    fact("last success", &t(v.last_success));
    fact(
        "next run",
        &next_run(v.integrated_account_id, v.next_run, now, running),
    );
    if let Some(until) = v.held_until {
        fact("held back", &crate::schedule::held_back(until));
    }
    fact("live users", &v.live_users.to_string());
    if let Some(r) = row {
        fact("deleted users", &r.deleted_users.to_string());
        fact("failures", &format!("{} in a row", r.consecutive_failures));
        fact("to hydrate", &r.hydration_pending.to_string());
        fact(
            "listing",
            if r.resumable {
                "the next run resumes where the last one stopped"
            } else {
                "the next run starts from the first page"
            },
        );
    }
    for (name, value) in settings.facts(v.tenant_id.as_deref()) {
        fact(name, &shorten(&value, 2000));
    }
    fact(
        "last error",
        &v.last_error
            .as_deref()
            .map(|e| shorten(e, 2000))
            .unwrap_or_else(|| "-".into()),
    );
    if !actions.is_empty() {
        s.push_str("\noperators' actions, newest first:\n");
        for a in actions {
            let _ = writeln!(
                s,
                "{:<21} {:<12} by {}{}",
                t(Some(a.acted_at)),
                shorten(&a.action, 40),
                shorten(&who(a), 200),
                a.reason
                    .as_deref()
                    .map(|r| format!(": {}", shorten(r, REASON_SHOWN)))
                    .unwrap_or_default()
            );
        }
    }
    if runs.is_empty() {
        s.push_str("\nno run yet\n");
        return s;
    }
    let _ = writeln!(
        s,
        "\nlatest runs, newest first:\n{:>8} {:<21} {:>12} {:<16} {:<19} {:>6} {:>8} {:>6} {:>6} {:>6}  requests",
        "run", "started", "took", "outcome", "listing", "pages", "users", "new", "upd", "del"
    );
    for r in runs {
        let _ = writeln!(
            s,
            "{:>8} {:<21} {:>12} {:<16} {:<19} {:>6} {:>8} {:>6} {:>6} {:>6}  {}",
            r.run_id,
            t(Some(r.started_at)),
            took(r, now),
            r.outcome,
            listing(r),
            r.pages,
            r.users_seen,
            r.inserted,
            r.updated,
            r.deleted,
            requests(r)
        );
        if let Some(e) = &r.error {
            let kind = r.error_kind.as_deref().unwrap_or("error");
            let _ = writeln!(s, "{:>8} {kind}: {}", "", shorten(e, 300));
        } else if let Some(why) = &r.deletions_skipped_reason {
            // (A failed run skips them for its failure, said above.)
            let _ = writeln!(s, "{:>8} deletions skipped: {}", "", shorten(why, 300));
        }
    }
    s
}

/// One check of `check`: its name, how it went, and what it found or what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub state: CheckState,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckState {
    Passed,
    Failed,
    /// Not made: what it needs failed first (which is the check to fix).
    Skipped,
    /// Passed, with something the operator should look at that may be meant (a `[[tenants]]`
    /// entry for a customer not connected yet).
    Warned,
}

impl Check {
    pub fn passed(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            state: CheckState::Passed,
            detail: detail.into(),
        }
    }

    pub fn failed(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            state: CheckState::Failed,
            detail: detail.into(),
        }
    }

    pub fn skipped(name: &'static str, why: impl Into<String>) -> Check {
        Check {
            name,
            state: CheckState::Skipped,
            detail: why.into(),
        }
    }

    pub fn warned(name: &'static str, what: impl Into<String>) -> Check {
        Check {
            name,
            state: CheckState::Warned,
            detail: what.into(),
        }
    }

    /// Passed, or skipped for a failure reported by another check.
    pub fn ok(&self) -> bool {
        self.state != CheckState::Failed
    }
}

/// `check`'s report: a line per check, then a verdict.
pub fn checks(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        let state = match c.state {
            CheckState::Passed => "ok",
            CheckState::Failed => "FAILED",
            CheckState::Skipped => "skipped",
            CheckState::Warned => "warning",
        };
        let detail = c.detail.replace('\n', " ");
        let _ = writeln!(s, "{:<14} {state:<8} {detail}", c.name);
    }
    let failed: Vec<&str> = checks.iter().filter(|c| !c.ok()).map(|c| c.name).collect();
    if failed.is_empty() {
        s.push_str("every check passed\n");
    } else {
        let _ = writeln!(s, "failed: {}", failed.join(", "));
    }
    let warned: Vec<&str> = checks
        .iter()
        .filter(|c| c.state == CheckState::Warned)
        .map(|c| c.name)
        .collect();
    if !warned.is_empty() {
        let _ = writeln!(s, "look at: {}", warned.join(", "));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::BudgetView;

    #[test]
    fn the_budget_lists_every_holder_and_says_what_is_hot_and_free() {
        let renewed_at = "2026-12-02T18:40:01Z".parse().unwrap();
        let b = BudgetSection::example("web-1:42:ab", renewed_at);
        assert_eq!(
            budget(&b),
            "request budget: 500 requests per 10 s, shared by every process on this database: 350 held by 2 processes, 100 hot (given back, still in Truto's window), 50 free\n\
             \x20   web-1:42:ab: share 200 (wants 200), renewed 2026-12-02 18:40:01Z\n\
             \x20   web-2:7:cd: share 150 (wants 500), renewed 2026-12-02 18:40:01Z; connection gone: its share is released at the next negotiation\n"
        );
        let mut other = b.clone();
        other.view.holders[0].per_token = Some(300);
        assert!(
            budget(&other).contains(
                "request budget: 300 requests per 10 s (the strictest budget the processes are configured with: they disagree, and this one's is 500 per 10 s), shared"
            ),
            "{}",
            budget(&other)
        );
        assert!(budget(&other).contains(
            "web-1:42:ab: share 200 (wants 200), renewed 2026-12-02 18:40:01Z; configured with 300 per 10 s, not this one's 500 per 10 s\n"
        ));
        let mut halted = b.clone();
        halted.view.holders[1].alive = true;
        halted.view.holders[1].halted =
            Some("Truto has not answered since 2026-12-02 18:39:00 UTC (request timed out)".into());
        assert!(budget(&halted).ends_with(
            "web-2:7:cd: share 150 (wants 500), renewed 2026-12-02 18:40:01Z; starts no run: Truto has not answered since 2026-12-02 18:39:00 UTC (request timed out)\n"
        ), "{}", budget(&halted));
        halted.view.holders[1].others_answered = Some(b.view.holders[1].renewed_at);
        assert!(budget(&halted).ends_with(
            "web-2:7:cd: share 150 (wants 500), renewed 2026-12-02 18:40:01Z; starts no run: Truto has not answered since 2026-12-02 18:39:00 UTC (request timed out); another process got an answer from Truto since (at 2026-12-02 18:40:01Z): this one's way to Truto (DNS, egress, proxy) is what fails\n"
        ), "{}", budget(&halted));
        let mut replicas = b.clone();
        replicas.view.holders[1].alive = true;
        replicas.view.holders[0].version = Some("1.4.0".into());
        replicas.view.holders[0].config_digest = Some("aaaaaaaaaaaa".into());
        replicas.view.holders[1].version = Some("1.4.0".into());
        replicas.view.holders[1].config_digest = Some("bbbbbbbbbbbb".into());
        assert!(budget(&replicas).contains(
            "50 free; the replicas run 2 different configurations (aaaaaaaaaaaa by 1, bbbbbbbbbbbb by 1; lms-sync config prints a process's digest)\n"
        ), "{}", budget(&replicas));
        assert!(budget(&replicas).contains(
            "web-1:42:ab: share 200 (wants 200), renewed 2026-12-02 18:40:01Z; lms-sync 1.4.0, configuration aaaaaaaaaaaa\n"
        ), "{}", budget(&replicas));
        replicas.compared = Some(crate::service::status::Compared {
            with: "aaaaaaaaaaaa".into(),
            differences: vec![(
                "bbbbbbbbbbbb".into(),
                vec!["history.retention_days 30, not 0".into(), "2 more".into()],
            )],
        });
        assert!(budget(&replicas).contains(
            "web-2:7:cd: share 150 (wants 500), renewed 2026-12-02 18:40:01Z; lms-sync 1.4.0, configuration bbbbbbbbbbbb (unlike aaaaaaaaaaaa: history.retention_days 30, not 0; 2 more)\n"
        ), "{}", budget(&replicas));
        replicas.compared = None;
        replicas.view.holders[1].config_digest = Some("aaaaaaaaaaaa".into());
        assert!(
            budget(&replicas).contains("50 free\n"),
            "{}",
            budget(&replicas)
        );
        let empty = BudgetSection {
            view: BudgetView::default(),
            ..b
        };
        assert!(
            budget(&empty).ends_with(
                "0 held by 0 processes, 0 hot (given back, still in Truto's window), 500 free\n    no process holds a share yet\n"
            ),
            "{}",
            budget(&empty)
        );
    }

    #[test]
    fn status_says_when_no_process_runs() {
        assert_eq!(nothing_running(Some(true), 3), None);
        assert_eq!(nothing_running(None, 3), None);
        assert_eq!(
            nothing_running(Some(false), 1).unwrap(),
            "service: no lms-sync process holds a share of the request budget: none runs \
             against this database, and no run starts until one does (1 account due now)"
        );
        assert!(nothing_running(Some(false), 0)
            .unwrap()
            .ends_with("(0 accounts due now)"));
    }

    #[test]
    fn a_due_next_run_says_what_starts_it() {
        let now: DateTime<Utc> = "2026-12-07T12:00:00Z".parse().unwrap();
        let later = "2026-12-07T18:00:00Z".parse().unwrap();
        let due = "2026-12-07T11:59:00Z".parse().unwrap();
        let a = Uuid::from_u128(1);
        assert_eq!(next_run(a, None, now, Some(false)), "-");
        assert_eq!(
            next_run(a, Some(later), now, Some(false)),
            "2026-12-07 18:00:00Z"
        );
        assert_eq!(
            next_run(a, Some(due), now, Some(true)),
            "2026-12-07 11:59:00Z (due: a replica starts it once it has a slot free)"
        );
        assert_eq!(
            next_run(a, Some(due), now, None),
            next_run(a, Some(due), now, Some(true))
        );
        assert_eq!(
            next_run(a, Some(due), now, Some(false)),
            "2026-12-07 11:59:00Z (due, but no lms-sync process holds a share of the request \
             budget: is the service running? `lms-sync sync --account \
             00000000-0000-0000-0000-000000000001` runs it once)"
        );
    }

    #[test]
    fn a_check_report_says_each_state_and_which_failed() {
        let report = checks(&[
            Check::passed("database", "connected; PostgreSQL 15.8"),
            Check::failed(
                "truto token",
                "HTTP 401: Truto rejected the API token\nsecond line",
            ),
            Check::skipped("accounts", "the token check failed"),
        ]);
        assert_eq!(
            report,
            "database       ok       connected; PostgreSQL 15.8\n\
             truto token    FAILED   HTTP 401: Truto rejected the API token second line\n\
             accounts       skipped  the token check failed\n\
             failed: truto token\n"
        );
        let fine = checks(&[Check::passed("database", "connected")]);
        assert!(fine.ends_with("every check passed\n"), "{fine}");
        // A warning passes, and is named after the verdict.
        let warned = checks(&[
            Check::passed("database", "connected"),
            Check::warned("tenants", "no account is of acem"),
        ]);
        assert_eq!(
            warned,
            "database       ok       connected\n\
             tenants        warning  no account is of acem\n\
             every check passed\n\
             look at: tenants\n"
        );
    }

    #[test]
    fn an_operators_action_says_when_what_on_how_many_by_whom_and_why() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-08T06:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut a = crate::store::ActionGroup {
            acted_at: now - chrono::Duration::minutes(5),
            action: "pause".into(),
            actor: "the admin API from 10.0.0.7 (replica a:1)".into(),
            reason: Some("CHG-1".into()),
            accounts: 50,
            one_account: uuid::Uuid::from_u128(1),
        };
        assert_eq!(
            operator_action(&a, now),
            "operator: 2026-12-08 05:55Z (5 min ago) pause of 50 accounts by the admin API from \
             10.0.0.7 (replica a:1) — \"CHG-1\""
        );
        a.reason = Some("two\nlines \u{1b}[31mred".into());
        assert!(operator_action(&a, now).ends_with(" — \"two lines  [31mred\""));
        a.accounts = 1;
        a.reason = None;
        a.acted_at = now - chrono::Duration::hours(3);
        assert_eq!(
            operator_action(&a, now),
            "operator: 2026-12-08 03:00Z (3 h ago) pause of account \
             00000000-0000-0000-0000-000000000001 by the admin API from 10.0.0.7 (replica a:1)"
        );
    }

    #[test]
    fn a_pause_says_by_whom_when_and_why() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-08T05:55:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            paused_by(
                at,
                "the admin API from 10.0.0.7 (replica a:1)",
                Some("CHG-1")
            ),
            "by the admin API from 10.0.0.7 (replica a:1) at 2026-12-08 05:55:00Z: \"CHG-1\""
        );
        assert_eq!(
            paused_by(at, "lms_owner", None),
            "by lms_owner at 2026-12-08 05:55:00Z"
        );
        let view = AccountView {
            integrated_account_id: uuid::Uuid::from_u128(1),
            state: "paused".into(),
            paused_at: Some(at),
            paused_by: Some("ops\u{1b}[2J".into()),
            pause_reason: Some("two\nlines".into()),
            ..AccountView::default()
        };
        let listed = accounts(&[&view]);
        assert!(
            listed.contains("\n    paused by ops [2J at 2026-12-08 05:55:00Z: \"two lines\"\n"),
            "{listed}"
        );
    }
}
