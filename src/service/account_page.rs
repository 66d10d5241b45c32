//! `GET /accounts/{id}`: one account's page, linked from the status page. Plain HTML (no
//! script, refreshing every 30 s): what the status page says of the account, with what it
//! leaves out (why it is unhealthy, deleted users, failures in a row, hydration, whether the
//! listing resumes, the last error whole), and its latest runs from `sync_runs` with their
//! counts, requests and errors. Rendering is pure; the handler reads the account's state.

use std::fmt::Write as _;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::ops::{text, Ops};
use super::page::{escape, head, html_response, next_run, unreadable, when};
use super::status::{AccountSettingsView, AccountView};
use crate::store::{AccountAction, RunView, StatusRow};

/// What this page adds to the status pages' style: the facts table, stacked on a phone.
const STYLE: &str = "
.facts{max-width:960px}.facts th{width:14em}.bad{color:#b3261e;font-weight:600}a{color:#1a56c4}
@media (max-width:720px){.facts tr{margin:0;border-radius:0;box-shadow:none;\
border-bottom:1px solid #eceef2}.facts th{display:block;width:auto;background:none;\
border:none;padding:8px 12px 0;font-size:12px;color:#6b7385}}";

/// Runs listed: a fortnight of hourly runs' worth of failures is more than anyone reads here;
/// `sync_runs` keeps the rest for SQL.
pub const RUNS_SHOWN: i64 = 50;

pub(super) async fn account(
    State(ops): State<Ops>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(no) = super::admin::refuse_page(&ops, &headers) {
        return no;
    }
    let Ok(id) = Uuid::parse_str(&id) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!(
                "not an integrated account id (a UUID): {}\n",
                crate::text::shorten(&id, 80)
            ),
        );
    };
    let settings = ops.settings.borrow().clone();
    let one = match super::status::read_account(&settings, &ops.store, id, RUNS_SHOWN).await {
        Ok(Some(one)) => one,
        Ok(None) => {
            return text(
                StatusCode::NOT_FOUND,
                format!("no account {id} in this fleet (configured or discovered)\n"),
            )
        }
        Err(e) => return unreadable(&e),
    };
    html_response(render(
        &one.view,
        one.row.as_ref(),
        &one.runs,
        &one.actions,
        &one.settings,
        settings.history.sync_runs_retention_days,
        Utc::now(),
    ))
}

/// Operators' actions listed (`account_actions` keeps every one, for SQL).
pub const ACTIONS_SHOWN: i64 = 10;

/// Who acted, as `account_actions` says: lms-sync's own account of it, else the database
/// session's role and application (plain SQL, or a binary older than migration 0028).
pub fn who(a: &AccountAction) -> String {
    match (&a.actor, &a.application) {
        (Some(actor), _) => format!("{actor} (role {})", a.db_user),
        (None, Some(app)) => format!("role {} through {app}", a.db_user),
        (None, None) => format!("role {}", a.db_user),
    }
}

/// How long a run took (or has been running, as of `now`).
pub fn took(r: &RunView, now: DateTime<Utc>) -> String {
    let end = r.finished_at.unwrap_or(now);
    let ms = (end - r.started_at).num_milliseconds().max(0);
    let d = if ms < 10_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 5_400_000 {
        let s = ms / 1000;
        if s < 90 {
            format!("{s} s")
        } else {
            format!("{} min {} s", s / 60, s % 60)
        }
    } else {
        format!("{} h {} min", ms / 3_600_000, ms / 60_000 % 60)
    };
    if r.finished_at.is_some() {
        d
    } else {
        format!("{d} so far")
    }
}

/// The run's requests, and how many were retried or answered 429 when any were.
pub fn requests(r: &RunView) -> String {
    let mut s = r.http_requests.to_string();
    if r.retries > 0 || r.rate_limited > 0 {
        let _ = write!(s, " ({} retried, {} × 429)", r.retries, r.rate_limited);
    }
    s
}

/// The listing as the run left it.
pub fn listing(r: &RunView) -> &'static str {
    if r.finished_at.is_none() {
        return if r.resumed {
            "under way (resumed)"
        } else {
            "under way"
        };
    }
    match (r.complete_listing, r.resumed) {
        (true, true) => "complete (resumed)",
        (true, false) => "complete",
        (false, true) => "partial (resumed)",
        (false, false) => "partial",
    }
}

/// `delete guard` as the facts' names are written here: `Delete guard`.
fn capitalized(name: &str) -> String {
    let mut c = name.chars();
    c.next()
        .map(|first| first.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn fact(s: &mut String, name: &str, value: &str) {
    let _ = write!(s, "<tr><th>{name}</th><td>{value}</td></tr>");
}

/// The page of `v` (with its `sync_state` row, when it has one) and its latest `runs`,
/// newest first, as of `now`; `retention_days` is how long `sync_runs` keeps them.
pub fn render(
    v: &AccountView,
    row: Option<&StatusRow>,
    runs: &[RunView],
    actions: &[AccountAction],
    settings: &AccountSettingsView,
    retention_days: u32,
    now: DateTime<Utc>,
) -> String {
    let name = v
        .label
        .clone()
        .unwrap_or_else(|| v.integrated_account_id.to_string());
    let mut s = String::with_capacity(8192 + runs.len() * 800);
    head(&mut s, &format!("{name} · lms-sync"), STYLE);
    let _ = write!(
        s,
        "<header><h1>{}</h1><p>{} · tenant {} · {} · as of {}</p></header><main>\
         <p class=\"note\"><a href=\"../\">← all accounts</a></p>",
        escape(&name),
        v.integrated_account_id,
        escape(v.tenant_id.as_deref().unwrap_or("—")),
        escape(&v.source),
        now.format("%Y-%m-%d %H:%M:%S UTC"),
    );
    s.push_str("<table class=\"facts\"><tbody>");
    fact(&mut s, "State", &escape(&v.state));
    if let Some(until) = v.paused_until {
        fact(
            &mut s,
            "Paused until",
            &format!(
                "{} <span class=\"muted\">the service resumes it then \
                 (accounts pause --until)</span>",
                when(Some(until), now)
            ),
        );
    }
    if let Some(at) = v.retired_at {
        fact(&mut s, "Retired", &when(Some(at), now));
    }
    if let Some(since) = v.protected_at {
        fact(
            &mut s,
            "Protected",
            &format!(
                "since {} <span class=\"muted\">its data is never purged \
                 (accounts unprotect lifts that)</span>",
                when(Some(since), now)
            ),
        );
    }
    if v.deletes_allowed {
        fact(
            &mut s,
            "Deletes",
            "allowed <span class=\"muted\">its next complete listing deletes whatever it no \
             longer lists, past the delete guard (accounts allow-deletes; once)</span>",
        );
    }
    if let Some(due) = v.purge_due {
        fact(
            &mut s,
            "Purge due",
            &format!(
                "{} <span class=\"muted\">every row deleted at the first complete listing \
                 from then on (discovery.purge_retired_after)</span>",
                when(Some(due), now)
            ),
        );
    }
    let mut health = escape(&v.health);
    if v.health != "ok" {
        let _ = write!(
            health,
            " <span class=\"muted\">since {}</span>",
            when(v.health_since, now)
        );
        if let Some(why) = row.and_then(|r| r.health_reason.as_deref()) {
            let _ = write!(health, "<div class=\"why\">{}</div>", escape(why));
        }
    }
    fact(&mut s, "Health", &health);
    fact(&mut s, "Last success", &when(v.last_success, now));
    let mut next = next_run(v.next_run, now);
    if let Some(until) = v.held_until {
        let _ = write!(
            next,
            "<div class=\"why\">{}</div>",
            escape(&crate::schedule::held_back(until))
        );
    }
    fact(&mut s, "Next run", &next);
    fact(&mut s, "Live users", &v.live_users.to_string());
    if let Some(r) = row {
        fact(&mut s, "Deleted users", &r.deleted_users.to_string());
        fact(
            &mut s,
            "Failed runs in a row",
            &r.consecutive_failures.to_string(),
        );
        fact(&mut s, "Users to hydrate", &r.hydration_pending.to_string());
        fact(
            &mut s,
            "Listing",
            if r.resumable {
                "the next run resumes where the last one stopped"
            } else {
                "the next run starts from the first page"
            },
        );
    }
    for (name, value) in settings.facts(v.tenant_id.as_deref()) {
        fact(&mut s, &capitalized(name), &escape(&value));
    }
    fact(
        &mut s,
        "Last error",
        &escape(v.last_error.as_deref().unwrap_or("—")),
    );
    s.push_str("</tbody></table>");

    if !actions.is_empty() {
        let _ = write!(
            s,
            "<h2>Operators' actions</h2><p class=\"note\">The latest {ACTIONS_SHOWN} of \
             <code>account_actions</code> (pause, resume, pause_end, protect, unprotect, reset_cursor, \
             allow_deletes, sync_now), \
             newest first.</p><table><thead><tr><th>When</th><th>Action</th><th>By</th>\
             <th>Reason</th></tr></thead><tbody>"
        );
        for a in actions {
            let _ = write!(
                s,
                "<tr><td data-k=\"When\">{}</td><td data-k=\"Action\">{}</td>\
                 <td data-k=\"By\">{}</td><td data-k=\"Reason\">{}</td></tr>",
                when(Some(a.acted_at), now),
                escape(&a.action),
                escape(&who(a)),
                escape(a.reason.as_deref().unwrap_or("—")),
            );
        }
        s.push_str("</tbody></table>");
    }

    let _ = write!(
        s,
        "<h2>Runs</h2><p class=\"note\">The latest {} of the runs <code>sync_runs</code> \
         keeps ({} days), newest first.</p>",
        RUNS_SHOWN, retention_days
    );
    if runs.is_empty() {
        s.push_str("<p class=\"note\">No run yet.</p>");
    } else {
        s.push_str(
            "<table><thead><tr><th>Run</th><th>Started</th><th>Took</th><th>Outcome</th>\
             <th>Listing</th><th class=\"num\">Pages</th><th class=\"num\">Seen</th>\
             <th>Changes</th><th>Requests</th><th>Error or note</th></tr></thead><tbody>",
        );
        for r in runs {
            let bad = matches!(r.outcome.as_str(), "failed" | "needs_attention");
            let mut changes = format!(
                "+{} new · {} updated · {} unchanged · {} deleted",
                r.inserted, r.updated, r.unchanged, r.deleted
            );
            for (n, what) in [
                (r.undeleted, "back"),
                (r.rejected, "rejected"),
                (r.hydrated, "hydrated"),
            ] {
                if n > 0 {
                    let _ = write!(changes, " · {n} {what}");
                }
            }
            let requests = requests(r);
            let note = match (&r.error_kind, &r.error, &r.deletions_skipped_reason) {
                (kind, Some(e), _) => format!(
                    "<span class=\"bad\">{}</span> {}",
                    escape(kind.as_deref().unwrap_or("error")),
                    escape(e)
                ),
                (_, None, Some(why)) => format!("no deletions: {}", escape(why)),
                _ => String::new(),
            };
            let _ = write!(
                s,
                "<tr><td data-k=\"Run\">{}<div class=\"muted\">{}</div></td>\
                 <td data-k=\"Started\">{}</td><td data-k=\"Took\">{}</td>\
                 <td data-k=\"Outcome\"{}>{}</td><td data-k=\"Listing\">{}</td>\
                 <td data-k=\"Pages\" class=\"num\">{}</td><td data-k=\"Seen\" class=\"num\">{}</td>\
                 <td data-k=\"Changes\">{}</td><td data-k=\"Requests\">{}</td>\
                 <td data-k=\"Error or note\" class=\"err\">{}</td></tr>",
                r.run_id,
                escape(r.worker.as_deref().unwrap_or("")),
                when(Some(r.started_at), now),
                took(r, now),
                if bad { " class=\"bad\"" } else { "" },
                escape(&r.outcome),
                listing(r),
                r.pages,
                r.users_seen,
                changes,
                requests,
                note,
            );
        }
        s.push_str("</tbody></table>");
    }
    s.push_str("</main></body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Health;

    fn view() -> AccountView {
        AccountView {
            integrated_account_id: Uuid::from_u128(7),
            label: Some("Acme <Academy>".into()),
            tenant_id: Some("t&7".into()),
            source: "discovered".into(),
            state: "active".into(),
            health: "needs_reauth".into(),
            health_since: Some(Utc::now() - chrono::Duration::hours(2)),
            last_success: None,
            last_outcome: None,
            attention_reason: None,
            next_run: None,
            held_until: Some("2026-12-05T15:30:00Z".parse().unwrap()),
            live_users: 1200,
            last_error: Some("HTTP 401: <credentials> no longer work".into()),
            retired_at: None,
            protected_at: None,
            deletes_allowed: false,
            paused_until: None,
            purge_due: None,
            ..AccountView::default()
        }
    }

    /// Its tenant's `[[tenants]]` entry's keys, one of them to be escaped.
    fn settings() -> AccountSettingsView {
        AccountSettingsView {
            from: crate::config::SettingsFrom::Tenant,
            schedule: "every 1h, jitter 30s".into(),
            remote_query: [("branch".to_string(), "<north>".to_string())].into(),
            ignore_remote_data: true,
            exclude_fields: vec!["custom_fields".into()],
            max_delete_fraction: 0.3,
            hydrate: true,
            hydrate_max_per_run: Some(200),
        }
    }

    fn run(id: i64, outcome: &str, started: DateTime<Utc>, secs: Option<i64>) -> RunView {
        RunView {
            run_id: id,
            started_at: started,
            finished_at: secs.map(|s| started + chrono::Duration::seconds(s)),
            outcome: outcome.into(),
            resumed: false,
            complete_listing: outcome == "succeeded",
            pages: 12,
            users_seen: 1200,
            inserted: 3,
            updated: 2,
            unchanged: 1195,
            deleted: 1,
            undeleted: 0,
            rejected: 0,
            hydrated: 0,
            http_requests: 13,
            retries: 0,
            rate_limited: 0,
            deletions_skipped_reason: None,
            error_kind: None,
            error: None,
            worker: Some("web-1:42".into()),
        }
    }

    #[test]
    fn the_page_shows_the_accounts_facts_and_its_runs_with_their_errors_escaped() {
        let now = Utc::now();
        let row = StatusRow {
            integrated_account_id: Uuid::from_u128(7),
            label: None,
            status: "idle".into(),
            last_outcome: None,
            last_started_at: None,
            last_finished_at: None,
            last_succeeded_at: None,
            consecutive_failures: 3,
            last_error: None,
            resumable: true,
            live_users: 1200,
            deleted_users: 17,
            health: Health::NeedsReauth,
            health_since: None,
            health_reason: Some("the customer must <re-authorize>".into()),
            hydration_pending: 5,
            held_until: None,
            attention_reason: None,
        };
        let mut failed = run(12, "failed", now - chrono::Duration::minutes(5), Some(2));
        failed.error_kind = Some("needs_reauth".into());
        failed.error = Some("HTTP 401: <b>no</b>".into());
        failed.retries = 2;
        failed.rate_limited = 1;
        let ok = run(11, "succeeded", now - chrono::Duration::hours(3), Some(754));
        let running = run(13, "running", now - chrono::Duration::seconds(30), None);
        let html = render(
            &view(),
            Some(&row),
            &[running, failed, ok],
            &[],
            &settings(),
            90,
            now,
        );

        assert!(html.contains("<h1>Acme &lt;Academy&gt;</h1>"), "{html}");
        assert!(html.contains("tenant t&amp;7 · discovered"));
        assert!(html.contains("<div class=\"why\">the customer must &lt;re-authorize&gt;</div>"));
        for fact in [
            "<th>Deleted users</th><td>17</td>",
            "<th>Failed runs in a row</th><td>3</td>",
            "<th>Users to hydrate</th><td>5</td>",
            "the next run resumes where the last one stopped",
            "HTTP 401: &lt;credentials&gt; no longer work",
            "<div class=\"why\">the server holds its requests back until 2026-12-05 15:30:00Z",
            // The keys it runs with, and where they come from.
            "<th>Settings</th><td>from the [[tenants]] entry of tenant_id = &quot;t&amp;7&quot;</td>",
            "<th>Schedule</th><td>every 1h, jitter 30s</td>",
            "<th>Asks for</th><td>no remote_data (ignore_remote_data); without custom_fields \
             (exclude_fields); remote_query branch=&lt;north&gt;</td>",
            "<th>Delete guard</th><td>a listing deletes at most 30 % of its live users",
            "<th>Hydrate</th><td>yes, up to 200 users a run</td>",
        ] {
            assert!(html.contains(fact), "{fact}: {html}");
        }
        // Newest first, each with what it took, what it did and why it failed.
        let at = |id: &str| html.find(&format!("<td data-k=\"Run\">{id}<")).unwrap();
        assert!(at("13") < at("12") && at("12") < at("11"));
        assert!(html.contains(">30 s so far<"), "{html}");
        assert!(html.contains(">2.0 s<"), "{html}");
        assert!(
            html.contains("<td data-k=\"Listing\">under way</td>"),
            "{html}"
        );
        assert!(html.contains(">12 min 34 s<"), "{html}");
        assert!(html
            .contains("<span class=\"bad\">needs_reauth</span> HTTP 401: &lt;b&gt;no&lt;/b&gt;"));
        assert!(html.contains("13 (2 retried, 1 × 429)"));
        assert!(html.contains("+3 new · 2 updated · 1195 unchanged · 1 deleted"));
        assert!(!html.contains("<b>no</b>") && !html.contains("<Academy>"));
        assert!(html.contains("<a href=\"../\">"));

        let html = render(&view(), None, &[], &[], &settings(), 90, now);
        assert!(html.contains("No run yet."));
        assert!(!html.contains("Operators' actions"), "none: no section");

        // Operators' actions: who (lms-sync's word, else the session's role), and why.
        let by_cli = AccountAction {
            acted_at: now,
            action: "protect".into(),
            actor: Some("lms-sync accounts protect by counsel@bastion".into()),
            db_user: "lms_sync_service".into(),
            application: Some("lms-sync".into()),
            reason: Some("matter <M-17>".into()),
        };
        let by_sql = AccountAction {
            action: "pause".into(),
            actor: None,
            db_user: "dba".into(),
            application: Some("psql".into()),
            reason: None,
            ..by_cli.clone()
        };
        let html = render(&view(), None, &[], &[by_sql, by_cli], &settings(), 90, now);
        assert!(html.contains("<h2>Operators' actions</h2>"), "{html}");
        assert!(
            html.contains(
                "<td data-k=\"By\">lms-sync accounts protect by counsel@bastion (role \
                 lms_sync_service)</td><td data-k=\"Reason\">matter &lt;M-17&gt;</td>"
            ),
            "{html}"
        );
        assert!(
            html.contains(
                "<td data-k=\"By\">role dba through psql</td><td data-k=\"Reason\">—</td>"
            ),
            "{html}"
        );
        assert!(
            !html.contains("Deleted users"),
            "no sync_state row, no counts"
        );
        assert!(!html.contains("Retired") && !html.contains("Purge due"));
    }

    #[test]
    fn a_retired_accounts_page_says_when_it_was_retired_and_when_its_purge_is_due() {
        let now = Utc::now();
        let mut v = view();
        v.state = "retired".into();
        v.retired_at = Some(now - chrono::Duration::days(3));
        v.purge_due = Some(now + chrono::Duration::days(27));
        let html = render(&v, None, &[], &[], &settings(), 90, now);
        assert!(
            html.contains("<th>Retired</th><td><time datetime=")
                && html.contains(">3 d ago</time>"),
            "{html}"
        );
        assert!(
            html.contains("<th>Purge due</th><td><time datetime=")
                && html.contains(">in 27 d</time> <span class=\"muted\">every row deleted"),
            "{html}"
        );
        assert!(!html.contains("Protected"), "{html}");
        v.protected_at = Some(now - chrono::Duration::days(1));
        v.purge_due = None;
        let html = render(&v, None, &[], &[], &settings(), 90, now);
        assert!(
            html.contains("<th>Protected</th><td>since <time")
                && html.contains("its data is never purged (accounts unprotect lifts that)")
                && !html.contains("Purge due"),
            "{html}"
        );
    }
}
