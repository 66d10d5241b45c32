//! `GET /`: the status page. Plain server-rendered HTML (no script), refreshing itself every
//! 30 s: the fleet's accounts with their label, tenant, state, health and since when, last
//! success, next run, live users and last error, the ones needing attention first (the first
//! [`SHOWN`] of them unless `?all=true`; `?q=` narrows them to a search; above them, with
//! discovery on, what the last account listing found, and whether Truto refuses the API
//! token or a lock holds the syncs up); then the token's request budget, who holds how much
//! of it across processes; cards that stack on a phone.
//! Rendering is pure; the handler reads the fleet's state. The sections around the accounts
//! (budget, discovery, webhooks, what holds every run) are in `sections`.

use std::fmt::Write as _;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};

use super::ops::{text, Ops};
use super::status::{count_by_rank, ranked, AccountView, BudgetSection, RANKS};

mod sections;
use sections::{
    actions_section, backlog_section, budget_section, discovery_section, environment_section,
    feed_section, lock_wait_section, read_only_section, token_section, unreachable_section,
    webhooks_section, FEED_HELD_BACK_SHOWN,
};
pub use sections::{DiscoveryView, Halts, ACTIONS_HOURS, ACTIONS_SHOWN};

/// Accounts listed unless `?all=true`: at 10,000 accounts the whole list is 5 MB of HTML a
/// refresh, more than a person reads or a phone renders; the ones needing attention come
/// first, so these are the ones that matter, and the rest are a search or a click away.
pub const SHOWN: usize = 200;

/// What the page is asked to show.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct PageQuery {
    /// Only the accounts whose label, tenant or id contain this (any case); blank: all.
    #[serde(default)]
    pub q: Option<String>,
    /// Every account (or every match), not only the first [`SHOWN`].
    #[serde(default)]
    pub all: bool,
    /// Only the accounts needing attention for this reason (a key of `RANKS`, as the
    /// summary's pills link to it).
    #[serde(default)]
    pub why: Option<String>,
}

impl PageQuery {
    /// The search as asked (trimmed), if any.
    fn text(&self) -> Option<&str> {
        self.q.as_deref().map(str::trim).filter(|q| !q.is_empty())
    }

    /// The rank of `attention` asked for with `why`; an error names the keys.
    pub fn rank(&self) -> Result<Option<u8>, String> {
        let Some(why) = self.why.as_deref().map(str::trim).filter(|w| !w.is_empty()) else {
            return Ok(None);
        };
        match RANKS.iter().position(|(key, _)| *key == why) {
            Some(i) => Ok(Some(i as u8)),
            None => Err(format!(
                "why={}: not one of {}",
                crate::text::shorten(why, 40),
                RANKS.map(|(key, _)| key).join(", ")
            )),
        }
    }
}

pub(super) async fn page(
    State(ops): State<Ops>,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Response {
    if let Some(no) = super::admin::refuse_page(&ops, &headers) {
        return no;
    }
    let query = match query {
        Ok(Query(q)) => q,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "{}; the page takes q=<text to search for>, all=true|false and why=<{}>\n",
                    e.body_text(),
                    RANKS.map(|(key, _)| key).join("|")
                ),
            )
        }
    };
    if let Err(e) = query.rank() {
        return text(StatusCode::BAD_REQUEST, format!("{e}\n"));
    }
    let settings = ops.settings.borrow().clone();
    let read = async {
        let state = super::status::read_state(&settings, &ops.store, None).await?;
        // An extra: the page shows without it rather than not at all.
        let waits = ops
            .store
            .lock_waits(settings.database.lock_wait_warn_secs as f64)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot read which sessions wait for a lock");
                Vec::new()
            });
        Ok::<_, crate::store::StoreError>((
            state,
            super::status::read_budget(&settings, &ops.store).await?,
            Halts {
                token_rejected_since: ops.source.token_rejected_since(),
                unreachable: ops.source.unreachable(),
                other_environment: ops.source.other_environment(),
                lock_waits: waits,
                read_only: ops.ready.refusing_writes(),
                backlog: ops.ready.backlog(),
                max_concurrent_accounts: settings.sync.max_concurrent_accounts,
                // An extra too; said once it is as long as its alert's threshold.
                feed_held_back: ops
                    .store
                    .change_feed_held_back()
                    .await
                    .ok()
                    .filter(|&secs| secs >= FEED_HELD_BACK_SHOWN),
                webhooks: match ops.webhook_secret.get() {
                    Some(_) => ops.store.webhook_deliveries().await.ok(),
                    None => None,
                },
                // An extra as well.
                recent_actions: ops
                    .store
                    .recent_actions(sections::ACTIONS_HOURS, sections::ACTIONS_SHOWN)
                    .await
                    .unwrap_or_default(),
            },
        ))
    };
    match read.await {
        Ok((state, budget, halts)) => {
            let views = super::status::account_views(&state);
            let discovery = settings.discovery.enabled.then(|| {
                DiscoveryView::from(state.discovery.clone())
                    .due_by(&settings.discovery)
                    .with_purges(state.purges.clone())
                    .with_tenants(&settings, &state.fleet)
            });
            let html = render(
                &views,
                budget.as_ref(),
                discovery.as_ref(),
                &halts,
                Utc::now(),
                &query,
            );
            html_response(html)
        }
        Err(e) => unreadable(&e),
    }
}

/// A page, as the status pages answer it.
pub(super) fn html_response(html: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        html,
    )
        .into_response()
}

/// The answer of a status page whose state could not be read.
pub(super) fn unreadable(e: &crate::store::StoreError) -> Response {
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("cannot read the state: {e}\n"),
    )
}

/// Starts a status page titled `title`, refreshing itself every 30 s, with the pages' style and
/// `style` after it: everything up to `<body>`.
pub(super) fn head(s: &mut String, title: &str, style: &str) {
    let _ = write!(
        s,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"30\"><title>{}</title>\
         <style>{STYLE}{style}</style></head><body>",
        escape(title)
    );
}

/// `v`'s label, tenant or id contains `q` (lower-case), in any case.
fn matches(v: &AccountView, q: &str) -> bool {
    let has = |s: &str| s.to_lowercase().contains(q);
    v.label.as_deref().is_some_and(has)
        || v.tenant_id.as_deref().is_some_and(has)
        || v.integrated_account_id.to_string().contains(q)
}

pub(super) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

pub(super) fn when(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(t) = t else {
        return "—".into();
    };
    let d = now - t;
    let ago = if d.num_seconds().abs() < 90 {
        format!("{} s", d.num_seconds().abs())
    } else if d.num_minutes().abs() < 90 {
        format!("{} min", d.num_minutes().abs())
    } else if d.num_hours().abs() < 48 {
        format!("{} h", d.num_hours().abs())
    } else {
        format!("{} d", d.num_days().abs())
    };
    let rel = if d.num_seconds() >= 0 {
        format!("{ago} ago")
    } else {
        format!("in {ago}")
    };
    format!(
        "<time datetime=\"{}\" title=\"{}\">{rel}</time>",
        t.to_rfc3339(),
        t.format("%Y-%m-%d %H:%M UTC")
    )
}

/// When an account's next run starts. The schedule never puts it in the past (an account
/// that is due runs as soon as it has a place), so a time that has come reads "now", not
/// "0 s ago" (nor "in 0 s": the page's clock is read a moment after the schedule's).
pub(super) fn next_run(t: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    match t {
        Some(at) if at - now < chrono::Duration::seconds(1) => format!(
            "<time datetime=\"{}\" title=\"{}\">now</time>",
            at.to_rfc3339(),
            at.format("%Y-%m-%d %H:%M UTC")
        ),
        _ => when(t, now),
    }
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f5f6f8;color:#1d2330}
header{padding:16px 20px;background:#1d2330;color:#fff}
header h1{margin:0;font-size:20px}header p{margin:4px 0 0;color:#c8ccd6;font-size:14px}
main{padding:12px}
.summary{display:flex;gap:8px;flex-wrap:wrap;margin:4px 8px 12px}
.pill{padding:4px 10px;border-radius:12px;background:#e3e6ec;font-size:14px}
.pill.bad{background:#fde2e1;color:#8a1c14}
a.pill{color:inherit;text-decoration:none}a.pill.bad{color:#8a1c14}a.pill:hover{text-decoration:underline}
table{width:100%;border-collapse:collapse;background:#fff;border-radius:8px;overflow:hidden}
th,td{padding:10px 12px;text-align:left;border-bottom:1px solid #eceef2;font-size:14px;vertical-align:top}
th{background:#fafbfc;font-weight:600;color:#4a5265}
tr.attention td:first-child{border-left:4px solid #d93025}
.label{font-weight:600}.label a{color:inherit}.muted{color:#6b7385;font-size:12px}
.why{color:#b3261e;font-size:13px}
.err{color:#6b7385;font-size:12px;max-width:40ch;overflow-wrap:anywhere}
.num{text-align:right;font-variant-numeric:tabular-nums}
.search{display:flex;gap:6px;margin:0 8px 8px;align-items:center;font-size:14px}
.search input{flex:0 1 320px;padding:6px 8px;border:1px solid #c8ccd6;border-radius:6px;font-size:14px}
.search button{padding:6px 12px;border:0;border-radius:6px;background:#1d2330;color:#fff;font-size:14px}
h2{font-size:16px;margin:20px 8px 4px}.note{margin:4px 8px 10px;font-size:14px;color:#4a5265}
@media (max-width:720px){
 table,thead,tbody,tr,td{display:block;width:auto}thead{display:none}
 tr{margin:0 0 12px;border-radius:8px;background:#fff;box-shadow:0 1px 2px rgba(0,0,0,.08)}
 td{border:none;padding:6px 12px}td[data-k]::before{content:attr(data-k) ': ';color:#6b7385;font-size:12px}
 tr.attention{border-left:4px solid #d93025}tr.attention td:first-child{border-left:none}
 .num{text-align:left}
}";

/// The page's own address with `pairs` as its query (relative, so it works behind a proxy's
/// path prefix).
fn link(pairs: &[(&str, &str)]) -> String {
    let query = serde_urlencoded::to_string(pairs).unwrap_or_default();
    escape(&format!("?{query}"))
}

/// The page for `views` (and the request budget, when paced) as of `now`, as `query` asks.
pub fn render(
    views: &[AccountView],
    budget: Option<&BudgetSection>,
    discovery: Option<&DiscoveryView>,
    halts: &Halts,
    now: DateTime<Utc>,
    query: &PageQuery,
) -> String {
    let mut rows = ranked(views, now);
    let needing = rows.iter().filter(|(_, (_, why))| why.is_some()).count();
    let by_rank = count_by_rank(&rows);
    let live: i64 = views.iter().map(|v| v.live_users).sum();
    let search = query.text();
    if let Some(q) = search {
        let q = q.to_lowercase();
        rows.retain(|(v, _)| matches(v, &q));
    }
    // (`page` refuses an unknown key before it gets here.)
    let why = query.rank().ok().flatten();
    if let Some(rank) = why {
        rows.retain(|(_, (r, _))| *r == rank);
    }
    let matching = rows.len();
    if !query.all {
        rows.truncate(SHOWN);
    }
    let mut s = String::with_capacity(4096 + rows.len() * 600);
    head(&mut s, "lms-sync status", "");
    let _ = write!(
        s,
        "<header><h1>lms-sync</h1>\
         <p>{} accounts · {} live users · as of {} (refreshes every 30 s)</p></header><main>\
         <div class=\"summary\"><span class=\"pill{}\">{} need attention</span>",
        views.len(),
        live,
        now.format("%Y-%m-%d %H:%M:%S UTC"),
        if needing > 0 { " bad" } else { "" },
        needing
    );
    for (rank, (n, (key, what))) in by_rank.iter().zip(RANKS).enumerate() {
        if *n > 0 {
            // Each a link to those accounts alone.
            let bad = if rank < RANKS.len() - 1 { " bad" } else { "" };
            let _ = write!(
                s,
                "<a class=\"pill{bad}\" href=\"{}\">{n} {what}</a>",
                link(&[("why", key)])
            );
        }
    }
    if let Some(d) = discovery {
        if d.error.is_some() {
            s.push_str("<span class=\"pill bad\">discovery failing</span>");
        }
        if d.guard.is_some() {
            s.push_str("<span class=\"pill bad\">retire guard holding</span>");
        }
    }
    if halts.token_rejected_since.is_some() {
        s.push_str("<span class=\"pill bad\">API token refused</span>");
    }
    if halts.unreachable.is_some() {
        s.push_str("<span class=\"pill bad\">Truto not answering</span>");
    }
    if halts.other_environment.is_some() {
        s.push_str("<span class=\"pill bad\">API token of another environment</span>");
    }
    if !halts.lock_waits.is_empty() {
        s.push_str("<span class=\"pill bad\">waiting for a database lock</span>");
    }
    if halts.read_only.is_some() {
        s.push_str("<span class=\"pill bad\">database takes no writes</span>");
    }
    if halts.feed_held_back.is_some() {
        s.push_str("<span class=\"pill bad\">change feed held back</span>");
    }
    if halts.backlog.behind > 0 {
        s.push_str("<span class=\"pill bad\">behind schedule</span>");
    }
    s.push_str("</div>");
    token_section(&mut s, halts.token_rejected_since, now);
    unreachable_section(&mut s, halts.unreachable.as_ref(), now);
    environment_section(&mut s, halts.other_environment.as_ref(), now);
    read_only_section(&mut s, halts.read_only.as_ref(), now);
    feed_section(&mut s, halts.feed_held_back);
    backlog_section(&mut s, &halts.backlog, halts.max_concurrent_accounts);
    if let Some(d) = discovery {
        discovery_section(&mut s, d, now);
    }
    webhooks_section(&mut s, halts.webhooks.as_ref(), now);
    actions_section(&mut s, &halts.recent_actions, now);
    lock_wait_section(&mut s, &halts.lock_waits);
    let _ = write!(
        s,
        "<form class=\"search\" method=\"get\" role=\"search\">\
         <input type=\"search\" name=\"q\" value=\"{}\" placeholder=\"Label, tenant or id\" \
         aria-label=\"Search the accounts\">{}<button type=\"submit\">Search</button>{}</form>",
        escape(search.unwrap_or_default()),
        // A search among the accounts of one reason stays among them.
        why.map(|rank| format!(
            "<input type=\"hidden\" name=\"why\" value=\"{}\">",
            RANKS[usize::from(rank)].0
        ))
        .unwrap_or_default(),
        if search.is_some() {
            format!(" <a href=\"{}\">clear</a>", link(&[]))
        } else {
            String::new()
        }
    );
    let shown = rows.len();
    let mut whole = if let Some(q) = search {
        format!(
            "{matching} of {} account{} match “{}”",
            views.len(),
            if views.len() == 1 { "" } else { "s" },
            escape(q)
        )
    } else {
        format!("{matching} account{}", if matching == 1 { "" } else { "s" })
    };
    let why = why.map(|rank| RANKS[usize::from(rank)]);
    if let Some((_, what)) = why {
        let _ = write!(
            whole,
            " {what} (<a href=\"{}\">every account</a>)",
            link(&search.map(|q| ("q", q)).into_iter().collect::<Vec<_>>())
        );
    }
    if shown < matching {
        let mut all = vec![("all", "true")];
        if let Some(q) = search {
            all.insert(0, ("q", q));
        }
        if let Some((key, _)) = why {
            all.insert(0, ("why", key));
        }
        let _ = write!(
            s,
            "<p class=\"note\">{whole}; showing the first {shown}, those needing attention \
             first. <a href=\"{}\">Show all {matching}</a> or search.</p>",
            link(&all)
        );
    } else if search.is_some() || why.is_some() {
        let _ = write!(s, "<p class=\"note\">{whole}.</p>");
    }
    s.push_str(
        "<table><thead><tr><th>Account</th><th>State</th><th>Health</th><th>Last success</th>\
         <th>Next run</th><th class=\"num\">Live users</th><th>Last error</th></tr></thead><tbody>",
    );
    for (v, (_, why)) in rows {
        let name = v
            .label
            .clone()
            .unwrap_or_else(|| v.integrated_account_id.to_string());
        let _ = write!(
            s,
            "<tr class=\"{}\"><td data-k=\"Account\"><div class=\"label\">\
             <a href=\"accounts/{}\">{}</a></div>\
             <div class=\"muted\">tenant {} · {}</div>{}</td>\
             <td data-k=\"State\">{}{}</td><td data-k=\"Health\">{}{}</td>\
             <td data-k=\"Last success\">{}</td><td data-k=\"Next run\">{}</td>\
             <td data-k=\"Live users\" class=\"num\">{}</td><td data-k=\"Last error\" class=\"err\">{}</td></tr>",
            if why.is_some() { "attention" } else { "" },
            v.integrated_account_id,
            escape(&name),
            escape(v.tenant_id.as_deref().unwrap_or("—")),
            v.integrated_account_id,
            why.map(|w| format!("<div class=\"why\">{}</div>", escape(&w)))
                .unwrap_or_default(),
            escape(&v.state),
            // Who paused it, when and why (one look, rather than a page per account).
            match (v.paused_at, &v.paused_by) {
                (Some(at), Some(by)) => format!(
                    "<div class=\"muted\">{} by {}{}</div>",
                    when(Some(at), now),
                    escape(&crate::text::shorten(by, 200)),
                    v.pause_reason
                        .as_deref()
                        .map(|r| format!(": “{}”", escape(r)))
                        .unwrap_or_default()
                ),
                _ => String::new(),
            },
            escape(&v.health),
            if v.health != "ok" {
                format!(" <span class=\"muted\">since {}</span>", when(v.health_since, now))
            } else {
                String::new()
            },
            when(v.last_success, now),
            next_run(v.next_run, now),
            v.live_users,
            escape(
                &v.last_error
                    .as_deref()
                    .map(|e| crate::text::shorten(e, 300))
                    .unwrap_or_default()
            ),
        );
    }
    s.push_str("</tbody></table>");
    if let Some(b) = budget {
        budget_section(&mut s, b, now);
    }
    s.push_str("</main></body></html>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Unreachable;
    use crate::store::{BudgetView, SessionLockWait};
    use uuid::Uuid;

    fn view(n: u128, label: &str) -> AccountView {
        AccountView {
            integrated_account_id: Uuid::from_u128(n),
            label: Some(label.into()),
            tenant_id: Some(format!("t{n}")),
            source: "config".into(),
            state: "active".into(),
            health: "ok".into(),
            health_since: None,
            last_success: Some(Utc::now()),
            last_outcome: None,
            attention_reason: None,
            next_run: Some(Utc::now()),
            held_until: None,
            live_users: 10,
            last_error: None,
            retired_at: None,
            protected_at: None,
            deletes_allowed: false,
            paused_until: None,
            purge_due: None,
            ..AccountView::default()
        }
    }

    #[test]
    fn accounts_needing_attention_come_first_and_text_is_escaped() {
        let now = Utc::now();
        let mut reauth = view(2, "Zeta <script>alert(1)</script>");
        reauth.health = "needs_reauth".into();
        reauth.health_since = Some(now - chrono::Duration::hours(3));
        let mut stale = view(3, "Stale & Co");
        stale.last_success = Some(now - chrono::Duration::hours(30));
        let html = fleet(&[view(1, "Alpha"), stale, reauth], now);
        let zeta = html.find("Zeta").unwrap();
        let stale_at = html.find("Stale &amp; Co").unwrap();
        let alpha = html.find("Alpha").unwrap();
        assert!(zeta < stale_at && stale_at < alpha, "{html}");
        assert!(!html.contains("<script>"));
        assert!(html.contains("2 need attention"));
        assert!(html.contains("http-equiv=\"refresh\""));
        assert!(html.contains("name=\"viewport\""));
        assert!(
            !html.contains("Request budget"),
            "not paced: no budget section"
        );
        // Every view's next run is due (the schedule never puts it in the past).
        assert_eq!(html.matches("\">now</time>").count(), 3, "{html}");
    }

    #[test]
    fn an_account_the_server_holds_back_says_until_when_and_one_whose_hold_ended_just_failed() {
        let now: DateTime<Utc> = "2026-12-05T12:00:00Z".parse().unwrap();
        let mut held = view(1, "Held");
        held.last_error = Some("rate limited: …".into());
        held.held_until = Some("2026-12-05T15:30:00Z".parse().unwrap());
        let mut over = view(2, "Over");
        over.last_error = Some("rate limited: …".into());
        over.held_until = Some("2026-12-05T11:00:00Z".parse().unwrap());
        let html = fleet(&[held, over], now);
        assert!(html.contains(
            "<div class=\"why\">the server holds its requests back until 2026-12-05 15:30 UTC \
             (a quota spent, say); it runs then</div>"
        ));
        assert_eq!(html.matches("the last run failed").count(), 1, "{html}");
        assert!(html.contains(">2 failed their last run<"), "{html}");
    }

    #[test]
    fn a_next_run_to_come_says_when_and_one_due_says_now() {
        let now = Utc::now();
        assert!(next_run(Some(now + chrono::Duration::minutes(5)), now).contains(">in 5 min<"));
        assert!(next_run(Some(now), now).contains(">now<"));
        assert_eq!(next_run(None, now), "—");
    }

    /// The page of one account with budget `b`.
    fn with_budget(b: &BudgetSection, now: DateTime<Utc>) -> String {
        render(
            &[view(1, "Alpha")],
            Some(b),
            None,
            &Halts::default(),
            now,
            &PageQuery::default(),
        )
    }

    #[test]
    fn the_budget_section_shows_every_holder_what_is_hot_and_what_is_free() {
        let now = Utc::now();
        let b = BudgetSection::example("web-1:42:<ab>", now - chrono::Duration::seconds(2));
        let html = with_budget(&b, now);
        assert!(html.contains("Request budget"), "{html}");
        assert!(
            html.contains("The API token's 500 requests per 10 s, shared by every process on this database: 350 held by 2 processes, 100 hot (given back, still in Truto&#39;s window), 50 free."),
            "{html}"
        );
        assert!(html.contains("web-1:42:&lt;ab&gt;"), "{html}");
        assert!(!html.contains("<ab>"));
        assert_eq!(html.matches("connection gone").count(), 1, "{html}");
        assert!(html.contains("2 s ago"), "{html}");
        assert!(!html.contains("starts no run"), "{html}");
        let mut halted = b.clone();
        halted.view.holders[0].halted = Some("Truto refused the API token (check <it>)".into());
        let html = with_budget(&halted, now);
        assert!(
            html.contains("web-1:42:&lt;ab&gt; <span class=\"why\">starts no run: Truto refused the API token (check &lt;it&gt;)</span></td>"),
            "{html}"
        );
        // Each replica's version and configuration; one not this process's is marked.
        let mut replicas = b.clone();
        replicas.view.holders[1].alive = true;
        replicas.view.holders[0].version = Some("1.4.0".into());
        replicas.view.holders[0].config_digest = Some(b.config_digest.clone());
        replicas.view.holders[1].version = Some("1.3.9".into());
        replicas.view.holders[1].config_digest = Some("<b>ffffffffff".into());
        let html = with_budget(&replicas, now);
        assert!(
            html.contains("<td data-k=\"Runs\">1.4.0, configuration 0123456789ab</td>"),
            "{html}"
        );
        assert!(
            html.contains("<td data-k=\"Runs\">1.3.9, configuration &lt;b&gt;ffffffffff <span class=\"why\">not this process's (0123456789ab)"),
            "{html}"
        );
        assert!(
            html.contains("; the replicas run 2 different configurations (0123456789ab by 1, &lt;b&gt;ffffffffff by 1; lms-sync config prints a process&#39;s digest)."),
            "{html}"
        );
        // What it differs in, when its configuration is recorded: against this process's, or
        // (this process's not among the live replicas') against the one compared with.
        replicas.compared = Some(crate::service::status::Compared {
            with: b.config_digest.clone(),
            differences: vec![(
                "<b>ffffffffff".into(),
                vec![
                    "history.retention_days 30, not 0".into(),
                    "accounts: also <x>".into(),
                ],
            )],
        });
        let html = with_budget(&replicas, now);
        assert!(
            html.contains("<span class=\"why\">not this process's (0123456789ab), with history.retention_days 30, not 0; accounts: also &lt;x&gt;: a rollout halfway"),
            "{html}"
        );
        replicas.compared.as_mut().unwrap().with = "cccccccccccc".into();
        let html = with_budget(&replicas, now);
        assert!(
            html.contains("not this process's (0123456789ab), and unlike cccccccccccc has history.retention_days 30, not 0; accounts: also &lt;x&gt;: a rollout"),
            "{html}"
        );
        let mut cut_off = b.clone();
        cut_off.view.holders[0].halted = Some("Truto has not answered since …".into());
        cut_off.view.holders[0].others_answered = Some(now - chrono::Duration::seconds(3));
        let html = with_budget(&cut_off, now);
        assert!(
            html.contains("starts no run: Truto has not answered since …; another process got an answer from Truto since (<time datetime="),
            "{html}"
        );
        assert!(
            html.contains(">3 s ago</time>): this one's way to Truto (DNS, egress, proxy) is what fails</span>"),
            "{html}"
        );
        let empty = BudgetSection {
            view: BudgetView::default(),
            ..b
        };
        let html = render(
            &[],
            Some(&empty),
            None,
            &Halts::default(),
            now,
            &PageQuery::default(),
        );
        assert!(html.contains("No process holds a share yet."), "{html}");
        assert!(html.contains("0 held by 0 processes, 0 hot"), "{html}");
    }

    #[test]
    fn a_holder_configured_with_another_budget_is_flagged_and_the_strictest_is_what_is_shared() {
        let now = Utc::now();
        let mut b = BudgetSection::example("web-1:42:ab", now);
        assert!(html_of(&b, now).contains("500 per 10 s</td>"));
        // The live holder is on an older, smaller config: 300 is shared, and 300 − 350 held
        // − 100 hot leaves nothing free.
        b.view.holders[0].per_token = Some(300);
        let html = html_of(&b, now);
        assert!(
            html.contains("The API token's 300 requests per 10 s (the strictest budget the processes are configured with: they disagree, and this one&#39;s is 500 per 10 s), shared by every process on this database: 350 held by 2 processes, 100 hot (given back, still in Truto&#39;s window), 0 free."),
            "{html}"
        );
        assert!(
            html.contains(
                "300 per 10 s <span class=\"why\">differs from this process's 500 per 10 s</span>"
            ),
            "{html}"
        );
        // Only live holders count: the gone one's other budget leaves the page's own.
        b.view.holders[0].per_token = Some(500);
        b.view.holders[1].per_token = Some(100);
        assert!(html_of(&b, now).contains("The API token's 500 requests per 10 s, shared"));
        // A binary older than migration 0019 does not say.
        b.view.holders[1].per_token = None;
        assert!(html_of(&b, now).contains("<td data-k=\"Configured with\">—</td>"));
    }

    /// Account rows on the page (the budget's rows have no class).
    fn account_rows(html: &str) -> usize {
        html.matches("<tr class=\"").count()
    }

    fn ask(q: Option<&str>, all: bool) -> PageQuery {
        PageQuery {
            q: q.map(str::to_string),
            all,
            why: None,
        }
    }

    #[test]
    fn each_pill_leads_to_its_accounts_alone_and_a_search_stays_among_them() {
        let now = Utc::now();
        let mut views: Vec<_> = (1..=300)
            .map(|n| view(n, &format!("School {n:03}")))
            .collect();
        // 230 failed (more than a page), 1 that cannot be synced, the rest fine.
        for v in &mut views[..230] {
            v.last_error = Some("HTTP 500".into());
        }
        views[250].health = "blocked".into();
        let by = |why: &str, q: Option<&str>, all: bool| {
            let query = PageQuery {
                why: Some(why.into()),
                ..ask(q, all)
            };
            render(&views, None, None, &Halts::default(), now, &query)
        };

        let html = fleet(&views, now);
        assert!(
            html.contains(
                "<a class=\"pill bad\" href=\"?why=failed\">230 failed their last run</a>"
            ) && html
                .contains("<a class=\"pill bad\" href=\"?why=unsyncable\">1 cannot be synced</a>"),
            "{html}"
        );
        let html = by("unsyncable", None, false);
        assert_eq!(account_rows(&html), 1);
        assert!(html.contains("School 251"));
        assert!(
            html.contains("1 account cannot be synced (<a href=\"?\">every account</a>)."),
            "{html}"
        );
        // More than a page: the link to all of them keeps the reason.
        let html = by("failed", None, false);
        assert_eq!(account_rows(&html), SHOWN);
        assert!(
            html.contains("<a href=\"?why=failed&amp;all=true\">Show all 230</a>"),
            "{html}"
        );
        assert_eq!(account_rows(&by("failed", None, true)), 230);
        // A search among them: the form carries the reason.
        assert!(html.contains("<input type=\"hidden\" name=\"why\" value=\"failed\">"));
        let html = by("failed", Some("School 00"), false);
        assert_eq!(account_rows(&html), 9, "School 001–009");
        assert!(html.contains(
            "9 of 300 accounts match “School 00” failed their last run (<a href=\"?q=School+00\">every account</a>)."
        ), "{html}");
        assert_eq!(account_rows(&by("stale", None, false)), 0);
        assert!(PageQuery {
            why: Some("asleep".into()),
            ..ask(None, false)
        }
        .rank()
        .unwrap_err()
        .starts_with(
            "why=asleep: not one of unsyncable, failed, attention, stale, never, not_synced"
        ));
    }

    #[test]
    fn a_fleet_larger_than_a_page_shows_its_first_accounts_those_needing_attention_first() {
        let now = Utc::now();
        let mut views: Vec<_> = (1..=250)
            .map(|n| view(n, &format!("School {n:03}")))
            .collect();
        // Four needing attention, of different kinds, at the end of the alphabet.
        views[246].health = "needs_reauth".into();
        views[247].last_error = Some("HTTP 500".into());
        views[248].last_outcome = Some("needs_attention".into());
        views[248].attention_reason =
            Some("the listing would delete 60 of 100 <live> users".into());
        views[249].last_success = None;
        views[0].state = "paused".into();
        let html = fleet(&views, now);
        assert_eq!(account_rows(&html), SHOWN, "{html}");
        let first = [&views[246], &views[247], &views[248], &views[249]].map(|v| {
            html.find(v.label.as_deref().unwrap())
                .unwrap_or_else(|| panic!("{:?} is not shown", v.label))
        });
        assert!(first.windows(2).all(|w| w[0] < w[1]), "{first:?}");
        assert!(first[3] < html.find("School 002").unwrap());
        assert!(html.contains(
            "the last run needs attention: the listing would delete 60 of 100 &lt;live&gt; users"
        ));
        assert!(!html.contains("School 210"), "past the first {SHOWN}");
        assert!(html.contains(
            "250 accounts; showing the first 200, those needing attention first. \
             <a href=\"?all=true\">Show all 250</a>"
        ));
        for pill in [
            ">4 need attention<",
            ">1 cannot be synced<",
            ">1 failed their last run<",
            ">1 need attention after their last run<",
            ">1 never synced yet<",
            ">1 not synced here (paused, retired, excluded or gated)<",
        ] {
            assert!(html.contains(pill), "{pill}");
        }
        assert!(
            !html.contains("not refreshed for over 26 h<"),
            "no stale account"
        );

        let html = render(&views, None, None, &Halts::default(), now, &ask(None, true));
        assert_eq!(account_rows(&html), 250);
        assert!(
            !html.contains("Show all") && !html.contains("showing"),
            "{html}"
        );
    }

    #[test]
    fn a_search_narrows_the_accounts_by_label_tenant_or_id_in_any_case() {
        let now = Utc::now();
        let mut views: Vec<_> = (1..=300)
            .map(|n| view(n, &format!("School {n:03}")))
            .collect();
        views[41].label = Some("ACME <Academy> & Co".into());
        let by = |q: &str| {
            render(
                &views,
                None,
                None,
                &Halts::default(),
                now,
                &ask(Some(q), false),
            )
        };

        let html = by("  acme ");
        assert_eq!(account_rows(&html), 1);
        assert!(html.contains("ACME &lt;Academy&gt; &amp; Co"));
        assert!(html.contains("1 of 300 accounts match “acme”."), "{html}");
        assert!(html.contains("value=\"acme\""));
        assert!(html.contains("<a href=\"?\">clear</a>"));
        // The summary still speaks of the whole fleet.
        assert!(html.contains("300 accounts · 3000 live users"));

        // By tenant (`t7` and `t70`–`t79`) and by id.
        assert_eq!(account_rows(&by("T7")), 11);
        let id = views[99].integrated_account_id.to_string();
        assert_eq!(account_rows(&by(&id)), 1);
        assert_eq!(account_rows(&by(&id.to_uppercase())), 1);

        // More matches than a page: the link to all of them keeps the search, encoded.
        let html = by("school & <1");
        assert_eq!(account_rows(&html), 0);
        assert!(
            html.contains("0 of 300 accounts match “school &amp; &lt;1”."),
            "{html}"
        );
        assert!(html.contains("value=\"school &amp; &lt;1\""));
        let html = by("School");
        assert_eq!(account_rows(&html), SHOWN);
        assert!(
            html.contains("<a href=\"?q=School&amp;all=true\">Show all 299</a>"),
            "{html}"
        );
        let html = render(
            &views,
            None,
            None,
            &Halts::default(),
            now,
            &ask(Some("School"), true),
        );
        assert_eq!(account_rows(&html), 299);
        // A blank search is no search.
        assert_eq!(account_rows(&by("   ")), SHOWN);
        assert!(!by("").contains("clear</a>"));
    }

    #[test]
    fn the_discovery_line_says_what_the_last_listing_found_and_what_went_wrong() {
        let now = Utc::now();
        let with = |d: &DiscoveryView| {
            render(
                &[view(1, "Alpha")],
                None,
                Some(d),
                &Halts::default(),
                now,
                &PageQuery::default(),
            )
        };
        let none = alpha(&Halts::default(), now);
        assert!(!none.contains("discovered"), "discovery off: no line");
        assert!(with(&DiscoveryView::default()).contains("none is done yet"));

        let mut d = DiscoveryView {
            listed_at: Some(now - chrono::Duration::minutes(3)),
            succeeded_at: Some(now - chrono::Duration::minutes(3)),
            listed: Some(1000),
            ..DiscoveryView::default()
        };
        let html = with(&d);
        assert!(
            html.contains("3 min ago</time>, listed 1000.</p>"),
            "{html}"
        );
        let every = |interval: &str| crate::config::DiscoverySettings {
            interval: interval.into(),
            ..Default::default()
        };
        let due = with(&d.clone().due_by(&every("5m")));
        assert!(
            due.contains("listed 1000. The next is due <time")
                && due.contains(">in 2 min</time>.</p>"),
            "{due}"
        );
        let late = with(&d.clone().due_by(&every("1m")));
        assert!(
            late.contains("listed 1000. The next is due now.</p>"),
            "{late}"
        );
        let followed = with(&DiscoveryView {
            environment: Some("env<1>".into()),
            ..d.clone()
        });
        assert!(
            followed.contains("listed 1000 of Truto environment <code>env&lt;1&gt;</code>.</p>"),
            "{followed}"
        );
        assert!(!html.contains("pill bad"), "{html}");
        assert!(!html.contains("purged"), "no purge rule: no line");
        assert!(!html.contains("No discovered account"), "{html}");
        let misspelt = with(&DiscoveryView {
            unmatched_tenants: vec!["[[tenants]] tenant_id = \"acem\"".into()],
            ..d.clone()
        });
        assert!(
            misspelt.contains(
                "<p class=\"note why\">No discovered account is of [[tenants]] tenant_id = \
                 &quot;acem&quot;: a misspelt tenant id, or a customer not connected yet \
                 (lms-sync check names the tenants Truto lists).</p>"
            ),
            "{misspelt}"
        );
        let purging = |last_day, last, due| {
            with(&d.clone().with_purges(Some(crate::store::PurgeSummary {
                after: std::time::Duration::from_secs(30 * 86_400),
                last_day,
                last,
                due,
            })))
        };
        let html = purging(2, Some(now - chrono::Duration::hours(3)), 0);
        assert!(
            html.contains(
                "<p class=\"note\">Retired accounts are purged 30 d after their retirement: \
                 2 in the last 24 h (the latest <time"
            ) && html.contains(">3 h ago</time>); none is due.</p>"),
            "{html}"
        );
        let html = purging(0, None, 12);
        assert!(
            html.contains(
                "purged 30 d after their retirement: 0 in the last 24 h; 12 are due, up to 10 \
                 at each complete listing.</p>"
            ),
            "{html}"
        );

        d.listed_at = Some(now - chrono::Duration::minutes(1));
        d.error = Some("HTTP 401: <token> rejected".into());
        d.guard = Some("3 of 4 accounts are gone".into());
        let html = with(&d);
        assert!(html.contains("<span class=\"pill bad\">discovery failing</span>"));
        assert!(html.contains("<span class=\"pill bad\">retire guard holding</span>"));
        assert!(
            html.contains("failed: HTTP 401: &lt;token&gt; rejected</span>"),
            "{html}"
        );
        assert!(html.contains("The last that succeeded: <time"), "{html}");
        assert!(html.contains("were not retired: 3 of 4 accounts are gone"));
        assert!(!html.contains("in a row"), "{html}");
        // lms-sync's own advice is shown whole (what to run is at its end).
        let other = crate::store::StoreError::OtherEnvironment {
            follows: "env-production-eu-1".into(),
            listed: "env-staging-eu-1".into(),
        };
        let html = with(&DiscoveryView {
            error: Some(other.to_string()),
            ..d.clone()
        });
        assert!(
            html.contains(
                "lms-sync accounts discover --adopt-environment (with --retire-missing to \
                 retire the accounts of env-production-eu-1 at once)</span>"
            ),
            "{html}"
        );

        // Three failures in a row: the next is tried 1 min doubled twice after the last (not an
        // hour after it), and the page says how many failed.
        d.failures = 3;
        let retrying = crate::config::DiscoverySettings {
            interval: "1h".into(),
            retry_initial: "1m".into(),
            ..Default::default()
        };
        let html = with(&d.clone().due_by(&retrying));
        assert!(
            html.contains("rejected</span> 3 listings in a row have failed. The last that"),
            "{html}"
        );
        assert!(html.contains(">in 3 min</time>.</p>"), "{html}");
    }

    #[test]
    fn a_session_waiting_for_a_lock_is_shown_with_who_holds_it_escaped() {
        let now = Utc::now();
        let wait = SessionLockWait {
            pid: 41,
            application: "lms-sync".into(),
            since: now - chrono::Duration::seconds(75),
            waited_secs: 75.4,
            waiting_for: "a lock on table users".into(),
            holders: vec!["pid 42 (user dba, application <psql>, active)".into()],
        };
        let html = alpha(
            &Halts {
                lock_waits: vec![wait],
                ..Halts::default()
            },
            now,
        );
        assert!(html.contains("<span class=\"pill bad\">waiting for a database lock</span>"));
        assert!(
            html.contains("<li>pid 41 (lms-sync) has waited 75 s for a lock on table users held by pid 42 (user dba, application &lt;psql&gt;, active)</li>"),
            "{html}"
        );
        let calm = alpha(&Halts::default(), now);
        assert!(!calm.contains("database lock"), "{calm}");
    }

    #[test]
    fn a_paused_account_says_who_paused_it_when_and_why_escaped() {
        let now = Utc::now();
        let mut v = view(1, "Acme");
        v.state = "paused".into();
        v.paused_at = Some(now - chrono::Duration::hours(2));
        v.paused_by = Some("the admin API from 10.0.0.7 (replica a:1)".into());
        v.pause_reason = Some("CHG-1 <migration>".into());
        let html = fleet(&[v], now);
        assert!(
            html.contains("<td data-k=\"State\">paused<div class=\"muted\"><time datetime=")
                && html.contains(
                    ">2 h ago</time> by the admin API from 10.0.0.7 (replica a:1): “CHG-1 \
                 &lt;migration&gt;”</div></td>"
                ),
            "{html}"
        );
        let quiet = fleet(&[view(2, "Globex")], now);
        assert!(
            quiet.contains("<td data-k=\"State\">active</td>"),
            "{quiet}"
        );
    }

    #[test]
    fn the_operators_actions_are_shown_one_line_a_transaction_escaped() {
        let now = Utc::now();
        let one = Uuid::from_u128(7);
        let halts = Halts {
            recent_actions: vec![
                crate::store::ActionGroup {
                    acted_at: now - chrono::Duration::minutes(5),
                    action: "pause".into(),
                    actor: "the admin API from 10.0.0.7 (replica a:1)".into(),
                    reason: Some("CHG-1 <migration>".into()),
                    accounts: 50,
                    one_account: Uuid::from_u128(1),
                },
                crate::store::ActionGroup {
                    acted_at: now - chrono::Duration::hours(3),
                    action: "protect".into(),
                    actor: "lms_sync_owner".into(),
                    reason: None,
                    accounts: 1,
                    one_account: one,
                },
            ],
            ..Halts::default()
        };
        let html = alpha(&halts, now);
        assert!(
            html.contains("Operators' actions in the last 24 h, newest first"),
            "{html}"
        );
        assert!(
            html.contains(
                ">5 min ago</time>: <b>pause</b> of 50 accounts by the admin API from 10.0.0.7 \
                 (replica a:1) — “CHG-1 &lt;migration&gt;”</li>"
            ),
            "{html}"
        );
        assert!(
            html.contains(&format!(
                ">3 h ago</time>: <b>protect</b> of <a href=\"accounts/{one}\">{one}</a> by \
                 lms_sync_owner</li>"
            )),
            "{html}"
        );
        let quiet = alpha(&Halts::default(), now);
        assert!(!quiet.contains("Operators' actions"), "{quiet}");
    }

    #[test]
    fn the_webhooks_line_says_what_was_verified_lately_and_only_with_the_receiver_on() {
        let now = Utc::now();
        let halts = |last_day, last| Halts {
            webhooks: Some(crate::store::WebhookDeliveries { last_day, last }),
            ..Halts::default()
        };
        let html = alpha(
            &halts(
                3,
                Some((
                    now - chrono::Duration::minutes(2),
                    "integrated_account:<active>".to_string(),
                )),
            ),
            now,
        );
        assert!(
            html.contains("Truto's webhooks (POST /webhooks/truto): 3 deliveries verified in the last 24 h, the last <time"),
            "{html}"
        );
        assert!(
            html.contains(">2 min ago</time> (integrated_account:&lt;active&gt;).</p>"),
            "{html}"
        );
        let quiet = alpha(&halts(0, None), now);
        assert!(
            quiet.contains("none verified in the last 24 h. Truto sends one when"),
            "{quiet}"
        );
        let off = alpha(&Halts::default(), now);
        assert!(!off.contains("webhooks"), "{off}");
    }

    #[test]
    fn a_refused_api_token_is_said_above_the_accounts_with_what_to_do() {
        let now = Utc::now();
        let halts = Halts {
            token_rejected_since: Some(now - chrono::Duration::minutes(4)),
            ..Halts::default()
        };
        let html = alpha(&halts, now);
        assert!(html.contains("<span class=\"pill bad\">API token refused</span>"));
        assert!(html.contains("Truto refuses the API token (HTTP 401; first refused <time"));
        assert!(html.contains(">4 min ago</time>): no run starts"), "{html}");
        assert!(html.find("API token refused") < html.find("Alpha"));
        let calm = alpha(&Halts::default(), now);
        assert!(!calm.contains("API token"), "{calm}");
    }

    #[test]
    fn a_token_of_another_environment_is_said_above_the_accounts_with_what_to_do() {
        let now = Utc::now();
        let halts = Halts {
            other_environment: Some(crate::source::OtherEnvironment {
                since: now - chrono::Duration::minutes(3),
                listed: "env-<2>".into(),
                follows: "env-1".into(),
            }),
            ..Halts::default()
        };
        let html = alpha(&halts, now);
        assert!(html.contains("<span class=\"pill bad\">API token of another environment</span>"));
        assert!(
            html.contains(
                "Truto environment <code>env-&lt;2&gt;</code>, not those of <code>env-1</code> \
                 that this mirror follows (since <time"
            ),
            "{html}"
        );
        assert!(
            html.contains(">3 min ago</time>): it is one of another"),
            "{html}"
        );
        assert!(
            html.contains("follow <code>env-&lt;2&gt;</code> instead"),
            "{html}"
        );
        assert!(html.find("another environment") < html.find("Alpha"));
        let calm = alpha(&Halts::default(), now);
        assert!(!calm.contains("another environment"), "{calm}");
    }

    #[test]
    fn truto_not_answering_is_said_above_the_accounts_with_the_last_failure_escaped() {
        let now = Utc::now();
        let halts = Halts {
            unreachable: Some(Unreachable {
                since: now - chrono::Duration::minutes(7),
                error: "gave up after 8 attempts: HTTP 502: <bad gateway>".into(),
                kind: crate::domain::ErrorKind::HttpError,
                account: None,
            }),
            ..Halts::default()
        };
        let html = alpha(&halts, now);
        assert!(html.contains("<span class=\"pill bad\">Truto not answering</span>"));
        assert!(
            html.contains("Truto has not answered since <time"),
            "{html}"
        );
        assert!(
            html.contains(">7 min ago</time> (last: gave up after 8 attempts: HTTP 502: &lt;bad gateway&gt;): no run starts"),
            "{html}"
        );
        assert!(html.find("Truto not answering") < html.find("Alpha"));
        let calm = alpha(&Halts::default(), now);
        assert!(!calm.contains("not answer"), "{calm}");
    }

    #[test]
    fn the_accounts_waiting_for_a_run_are_said_and_those_behind_their_schedule_as_trouble() {
        let now = Utc::now();
        let sweep = Halts {
            backlog: crate::schedule::Backlog {
                waiting: 990,
                behind: 0,
                longest: std::time::Duration::from_secs(12 * 60 + 5),
            },
            max_concurrent_accounts: 10,
            ..Halts::default()
        };
        let html = alpha(&sweep, now);
        assert!(
            html.contains(
                "<p class=\"note\">Accounts waiting for a run: 990 accounts due that no replica \
                 syncs yet, the longest for 12 min (each replica runs 10 at once: \
                 <code>sync.max_concurrent_accounts</code>).</p>"
            ),
            "{html}"
        );
        assert!(
            !html.contains("behind schedule"),
            "a sweep under way is no trouble"
        );
        let behind = Halts {
            backlog: crate::schedule::Backlog {
                waiting: 40,
                behind: 3,
                longest: std::time::Duration::from_secs(7 * 3600 + 5 * 60),
            },
            ..sweep
        };
        let html = alpha(&behind, now);
        assert!(html.contains("<span class=\"pill bad\">behind schedule</span>"));
        assert!(
            html.contains(
                "the longest for 7 h 5 min (each replica runs 10 at once: \
                 <code>sync.max_concurrent_accounts</code>). <span class=\"why\">3 of them have \
                 waited longer than their schedule's period: the fleet's runs do not keep up"
            ),
            "{html}"
        );
        assert!(!alpha(&Halts::default(), now).contains("waiting for a run"));
    }

    #[test]
    fn a_database_taking_no_writes_and_a_feed_held_back_are_said_above_the_accounts() {
        let now = Utc::now();
        let halts = Halts {
            read_only: Some((
                "the server is a standby <in recovery>".into(),
                now - chrono::Duration::minutes(3),
            )),
            feed_held_back: Some(5_400.0),
            ..Halts::default()
        };
        let html = alpha(&halts, now);
        assert!(html.contains("<span class=\"pill bad\">database takes no writes</span>"));
        assert!(
            html.contains(
                ">3 min ago</time> (the server is a standby &lt;in recovery&gt;): no run starts"
            ),
            "{html}"
        );
        assert!(html.contains("<span class=\"pill bad\">change feed held back</span>"));
        assert!(
            html.contains("The change feed (user_change_feed) has been held back for 1.5 h"),
            "{html}"
        );
        assert!(html.find("takes no writes") < html.find("Alpha"));
        let calm = alpha(&Halts::default(), now);
        assert!(
            !calm.contains("no writes") && !calm.contains("held back"),
            "{calm}"
        );
    }

    /// The page of `views` alone: no budget, no discovery, nothing halted, no query.
    fn fleet(views: &[AccountView], now: DateTime<Utc>) -> String {
        render(
            views,
            None,
            None,
            &Halts::default(),
            now,
            &PageQuery::default(),
        )
    }

    /// The page of one account, "Alpha", with `halts`.
    fn alpha(halts: &Halts, now: DateTime<Utc>) -> String {
        render(
            &[view(1, "Alpha")],
            None,
            None,
            halts,
            now,
            &PageQuery::default(),
        )
    }

    fn html_of(b: &BudgetSection, now: DateTime<Utc>) -> String {
        render(
            &[view(1, "Alpha")],
            Some(b),
            None,
            &Halts::default(),
            now,
            &PageQuery::default(),
        )
    }
}
