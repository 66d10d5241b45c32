//! The status page's sections around the accounts: the request budget and its holders, the
//! last discovery listing, the webhook receiver, and what holds every run (a refused token,
//! Truto not answering, a database taking no writes, a lock, the change feed held back).
//! Pure: each writes HTML for what the handler read.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};

use super::{escape, when};
use crate::fleet::Planned;
use crate::service::status::BudgetSection;
use crate::source::{OtherEnvironment, Unreachable};
use crate::store::{SessionLockWait, ShareView};

/// The request budget's section: who holds how much of the token's window, across every
/// process on the database.
pub(super) fn budget_section(s: &mut String, b: &BudgetSection, now: DateTime<Utc>) {
    let _ = write!(
        s,
        "<h2>Request budget</h2><p class=\"note\">The API token's {}.</p>",
        // The digests in it are the rows' (anyone with a write on the table could put markup).
        escape(&b.summary())
    );
    if b.view.holders.is_empty() {
        s.push_str("<p class=\"note\">No process holds a share yet.</p>");
        return;
    }
    s.push_str(
        "<table><thead><tr><th>Process</th><th class=\"num\">Share</th>\
         <th class=\"num\">Wants</th><th>Configured with</th><th>Runs</th><th>Renewed</th></tr></thead><tbody>",
    );
    for h in &b.view.holders {
        let _ = write!(
            s,
            "<tr><td data-k=\"Process\">{}{}{}</td><td data-k=\"Share\" class=\"num\">{}</td>\
             <td data-k=\"Wants\" class=\"num\">{}</td><td data-k=\"Configured with\">{}</td>\
             <td data-k=\"Runs\">{}</td><td data-k=\"Renewed\">{}</td></tr>",
            escape(&h.holder),
            if h.alive {
                ""
            } else {
                " <span class=\"why\">connection gone: its share is released at the next negotiation</span>"
            },
            h.halted
                .as_deref()
                .map(|why| format!(
                    " <span class=\"why\">starts no run: {}{}</span>",
                    escape(why),
                    cut_off(h, now)
                ))
                .unwrap_or_default(),
            h.share,
            h.wanted,
            configured(h, b),
            runs(h, b),
            when(Some(h.renewed_at), now),
        );
    }
    s.push_str("</tbody></table>");
}

/// What a halted holder's row adds when others reach Truto: the fault is on its own way.
fn cut_off(h: &ShareView, now: DateTime<Utc>) -> String {
    h.others_answered
        .map(|at| {
            format!(
                "; another process got an answer from Truto since ({}): this one's way to Truto \
                 (DNS, egress, proxy) is what fails",
                when(Some(at), now)
            )
        })
        .unwrap_or_default()
}

/// The budget a holder is configured with, flagged when it differs from this process's.
fn configured(h: &ShareView, b: &BudgetSection) -> String {
    match (h.per_token, h.window_secs) {
        (Some(n), Some(w)) if (n as usize, w as u64) == (b.per_token, b.window_secs) => {
            format!("{n} per {w} s")
        }
        (Some(n), Some(w)) => format!(
            "{n} per {w} s <span class=\"why\">differs from this process's {} per {} s</span>",
            b.per_token, b.window_secs
        ),
        // A binary older than migration 0019 does not say.
        _ => "—".to_string(),
    }
}

/// The version and configuration a holder runs, flagged when its configuration is not this
/// process's.
fn runs(h: &ShareView, b: &BudgetSection) -> String {
    match (&h.version, &h.config_digest) {
        (Some(v), Some(d)) if *d == b.config_digest => {
            format!("{}, configuration {}", escape(v), escape(d))
        }
        (Some(v), Some(d)) => format!(
            "{}, configuration {} <span class=\"why\">not this process's ({}){}: a rollout \
             halfway, a replica on an old ConfigMap, or a reload sent to some replicas only</span>",
            escape(v),
            escape(d),
            escape(&b.config_digest),
            unlike(d, b),
        ),
        // A one-off command, or a binary older than migration 0032, does not say.
        _ => "—".to_string(),
    }
}

/// What a holder's configuration has that the one compared with has not, or `""`.
fn unlike(digest: &str, b: &BudgetSection) -> String {
    match b.differences(digest) {
        Some((with, words)) if with == b.config_digest => {
            format!(", with {}", escape(&words.join("; ")))
        }
        Some((with, words)) => format!(
            ", and unlike {} has {}",
            escape(with),
            escape(&words.join("; "))
        ),
        None => String::new(),
    }
}

/// The last listing of Truto's integrated accounts, when discovery is on.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryView {
    pub listed_at: Option<DateTime<Utc>>,
    pub succeeded_at: Option<DateTime<Utc>>,
    pub listed: Option<i32>,
    /// Why accounts Truto no longer lists were not retired.
    pub guard: Option<String>,
    pub error: Option<String>,
    /// Failed listings in a row (0 when the last did not fail).
    pub failures: u32,
    /// When the next listing is due (`discovery.interval` after the last, whoever made it;
    /// sooner after a failed one).
    pub next_due: Option<DateTime<Utc>>,
    /// With `discovery.purge_retired_after`: what was purged lately and what is due.
    pub purges: Option<crate::store::PurgeSummary>,
    /// The Truto environment the registry follows (`discovery_state.environment_id`).
    pub environment: Option<String>,
    /// The configuration's tenants no discovered account is of ([`crate::fleet::unmatched_tenants`]).
    pub unmatched_tenants: Vec<String>,
}

impl DiscoveryView {
    /// The view, with what `purges` says (see [`crate::store::PurgeSummary`]).
    pub fn with_purges(mut self, purges: Option<crate::store::PurgeSummary>) -> Self {
        self.purges = purges;
        self
    }

    /// What the purges did and will do, in words (`status` and the page; `when` writes a time).
    pub fn purge_words(&self, when: impl Fn(DateTime<Utc>) -> String) -> Option<String> {
        let p = self.purges.as_ref()?;
        let latest = p
            .last
            .map(|t| format!(" (the latest {})", when(t)))
            .unwrap_or_default();
        let due = match p.due {
            0 => "none is due".to_string(),
            1 => "1 is due at the next complete listing".to_string(),
            n => format!(
                "{n} are due, up to {} at each complete listing",
                crate::service::discovery::PURGES_PER_LISTING
            ),
        };
        let secs = p.after.as_secs();
        let after = match secs {
            s if s % 86_400 == 0 => format!("{} d", s / 86_400),
            s if s % 3600 == 0 => format!("{} h", s / 3600),
            _ => humantime::format_duration(p.after).to_string(),
        };
        Some(format!(
            "retired accounts are purged {after} after their retirement: {} in the last 24 h{latest}; {due}",
            p.last_day
        ))
    }

    /// The view, with the tenants `settings` name that no account of `fleet` is of, once a
    /// listing succeeded (before, the registry has no discovered account to hold them against).
    pub fn with_tenants(mut self, settings: &crate::config::Settings, fleet: &[Planned]) -> Self {
        if self.succeeded_at.is_some() {
            self.unmatched_tenants = crate::fleet::unmatched_tenants(settings, fleet);
        }
        self
    }

    /// The tenants the configuration names that no discovered account is of, in words
    /// (`status` and the page), when there are.
    pub fn tenant_words(&self) -> Option<String> {
        (!self.unmatched_tenants.is_empty()).then(|| {
            format!(
                "no discovered account is of {}: a misspelt tenant id, or a customer not \
                 connected yet (lms-sync check names the tenants Truto lists)",
                self.unmatched_tenants.join(", ")
            )
        })
    }

    /// The view, with the next listing due as `settings` have it (an interval after the
    /// last, or less after failed ones: [`DiscoverySettings::next_listing_after`]).
    ///
    /// [`DiscoverySettings::next_listing_after`]: crate::config::DiscoverySettings::next_listing_after
    pub fn due_by(mut self, settings: &crate::config::DiscoverySettings) -> Self {
        let after = settings.next_listing_after(self.failures);
        self.next_due = self
            .listed_at
            .and_then(|at| chrono::Duration::from_std(after).ok().map(|i| at + i));
        self
    }
}

impl From<Option<crate::store::DiscoveryState>> for DiscoveryView {
    fn from(state: Option<crate::store::DiscoveryState>) -> Self {
        let Some((listed_at, succeeded_at, listed, guard, error, failures, environment)) = state
        else {
            return Self::default();
        };
        Self {
            listed_at,
            succeeded_at,
            listed,
            guard,
            error,
            failures: failures.max(0) as u32,
            next_due: None,
            purges: None,
            environment,
            unmatched_tenants: Vec::new(),
        }
    }
}

/// The discovery's line: what the last listing found, and what went wrong with it.
pub(super) fn discovery_section(s: &mut String, d: &DiscoveryView, now: DateTime<Utc>) {
    match (d.listed_at, d.error.as_deref()) {
        (None, _) => s.push_str(
            "<p class=\"note\">Accounts are discovered from Truto's listing; none is done yet.</p>",
        ),
        (Some(at), Some(e)) => {
            let _ = write!(
                s,
                "<p class=\"note\">Accounts are discovered from Truto's listing. \
                 <span class=\"why\">The last listing, {}, failed: {}</span>{} \
                 The last that succeeded: {}.{}</p>",
                when(Some(at), now),
                // Long enough for lms-sync's own errors, whose advice comes last (a token of
                // another environment: ~450 characters); a server's body is cut before.
                escape(&crate::text::shorten(e, 1000)),
                in_a_row(d.failures),
                when(d.succeeded_at, now),
                next_listing(d, now),
            );
        }
        (Some(at), None) => {
            let _ = write!(
                s,
                "<p class=\"note\">Accounts are discovered from Truto's listing: the last, {}, \
                 listed {}{}.{}</p>",
                when(Some(at), now),
                d.listed.unwrap_or(0),
                d.environment
                    .as_deref()
                    .map(|e| format!(
                        " of Truto environment <code>{}</code>",
                        escape(&crate::text::shorten(e, 80))
                    ))
                    .unwrap_or_default(),
                next_listing(d, now),
            );
        }
    }
    if let Some(g) = &d.guard {
        let _ = write!(
            s,
            "<p class=\"note why\">Accounts Truto no longer lists were not retired: {}</p>",
            escape(g)
        );
    }
    // The words are this program's, with numbers and times only: nothing to escape.
    if let Some(words) = d.purge_words(|t| when(Some(t), now)) {
        let _ = write!(s, "<p class=\"note\">R{}.</p>", &words[1..]);
    }
    if let Some(words) = d.tenant_words() {
        let _ = write!(s, "<p class=\"note why\">N{}.</p>", escape(&words[1..]));
    }
}

/// With the webhook receiver on: what it verified in the last 24 h, and the last delivery.
pub(super) fn webhooks_section(
    s: &mut String,
    w: Option<&crate::store::WebhookDeliveries>,
    now: DateTime<Utc>,
) {
    let Some(w) = w else {
        return;
    };
    let last = w
        .last
        .as_ref()
        .map(|(at, event)| {
            format!(
                ", the last {} ({})",
                when(Some(*at), now),
                escape(&crate::text::shorten(event, 60))
            )
        })
        .unwrap_or_default();
    match w.last_day {
        0 => {
            let _ = write!(
                s,
                "<p class=\"note\">Truto's webhooks (POST /webhooks/truto): none verified in the \
                 last 24 h{last}. Truto sends one when an account is connected, changed or \
                 disconnected; refused ones are counted in \
                 lms_sync_webhook_deliveries_total.</p>"
            );
        }
        n => {
            let _ = write!(
                s,
                "<p class=\"note\">Truto's webhooks (POST /webhooks/truto): {n} deliver{} \
                 verified in the last 24 h{last}.</p>",
                if n == 1 { "y" } else { "ies" }
            );
        }
    }
}

/// The operators' actions of the last 24 hours: who paused, resumed, protected, reset or ran
/// which accounts, and why (one transaction on many accounts is one line), so that whoever
/// looks at a fleet with accounts paused sees who did it without a query.
pub(super) fn actions_section(
    s: &mut String,
    actions: &[crate::store::ActionGroup],
    now: DateTime<Utc>,
) {
    if actions.is_empty() {
        return;
    }
    let _ = write!(
        s,
        "<p class=\"note\">Operators' actions in the last {ACTIONS_HOURS} h, newest first \
         (every one: <code>account_actions</code>):</p><ul class=\"note actions\">"
    );
    for a in actions {
        let which = if a.accounts == 1 {
            format!("<a href=\"accounts/{id}\">{id}</a>", id = a.one_account)
        } else {
            format!("{} accounts", a.accounts)
        };
        let _ = write!(
            s,
            "<li>{}: <b>{}</b> of {which} by {}{}</li>",
            when(Some(a.acted_at), now),
            escape(&a.action),
            escape(&crate::text::shorten(&a.actor, 200)),
            a.reason
                .as_deref()
                .map(|r| format!(" — “{}”", escape(r)))
                .unwrap_or_default()
        );
    }
    s.push_str("</ul>");
}

/// " N listings in a row have failed." (empty for one).
fn in_a_row(failures: u32) -> String {
    match failures {
        0 | 1 => String::new(),
        n => format!(" {n} listings in a row have failed."),
    }
}

/// " The next is due …" (empty when it is not known).
fn next_listing(d: &DiscoveryView, now: DateTime<Utc>) -> String {
    match d.next_due {
        None => String::new(),
        Some(t) if t <= now => " The next is due now.".into(),
        Some(t) => format!(" The next is due {}.", when(Some(t), now)),
    }
}

/// What holds every sync up, whatever the account, and what the fleet's inputs say: shown
/// above the accounts.
#[derive(Debug, Default, Clone)]
pub struct Halts {
    /// Since when Truto has refused the API token (this process's last requests).
    pub token_rejected_since: Option<DateTime<Utc>>,
    /// Since when (and why) Truto has not answered this process.
    pub unreachable: Option<Unreachable>,
    /// Since when this process's API token has listed another environment's accounts.
    pub other_environment: Option<OtherEnvironment>,
    /// Sessions of lms-sync waiting for a lock longer than `database.lock_wait_warn_secs`.
    pub lock_waits: Vec<SessionLockWait>,
    /// While this process starts no run because the database accepts no writes: why, and
    /// since when.
    pub read_only: Option<(String, DateTime<Utc>)>,
    /// How long the change feed has been held back, in seconds, once that is
    /// `FEED_HELD_BACK_SHOWN` or more.
    pub feed_held_back: Option<f64>,
    /// With the webhook receiver on: the deliveries it verified lately.
    pub webhooks: Option<crate::store::WebhookDeliveries>,
    /// The operators' actions of the last [`ACTIONS_HOURS`] hours, newest first (at most
    /// [`ACTIONS_SHOWN`]).
    pub recent_actions: Vec<crate::store::ActionGroup>,
    /// The accounts due that wait for a run, as this process's scheduler last counted them.
    pub backlog: crate::schedule::Backlog,
    /// `sync.max_concurrent_accounts`, to say beside them.
    pub max_concurrent_accounts: usize,
}

/// How long an account has waited, in words: `40 s`, `12 min`, `3 h 5 min`.
fn waited(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..=89 => format!("{secs} s"),
        90..=5399 => format!("{} min", secs / 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

/// The accounts due that wait for a run (for a free slot, or for a hold on every run to end),
/// when some do: a note while they wait less than their period (a sweep under way), said as
/// trouble once some have waited longer (`LmsSyncFallingBehind`).
pub(super) fn backlog_section(s: &mut String, b: &crate::schedule::Backlog, max_running: usize) {
    if b.waiting == 0 {
        return;
    }
    let accounts = |n: usize| format!("{n} account{}", if n == 1 { "" } else { "s" });
    let _ = write!(
        s,
        "<p class=\"note\">Accounts waiting for a run: {} due that no replica syncs yet, the \
         longest for {} (each replica runs {max_running} at once: \
         <code>sync.max_concurrent_accounts</code>).",
        accounts(b.waiting),
        waited(b.longest),
    );
    if b.behind > 0 {
        let _ = write!(
            s,
            " <span class=\"why\">{} waited longer than their schedule's period: the fleet's \
             runs do not keep up with its schedules (too few run slots, or too small a request \
             budget; the runbook's LmsSyncFallingBehind says which).</span>",
            if b.behind == 1 {
                "1 of them has".to_string()
            } else {
                format!("{} of them have", b.behind)
            }
        );
    }
    s.push_str("</p>");
}

/// How far back the page shows the operators' actions, in hours.
pub const ACTIONS_HOURS: i32 = 24;
/// How many of them it shows at most (one transaction's on many accounts counts once).
pub const ACTIONS_SHOWN: i64 = 10;

/// How long the change feed is held back before the page says so: `LmsSyncChangeFeedHeldBack`'s
/// threshold (a sync's own transactions hold it back for seconds all the time).
pub(super) const FEED_HELD_BACK_SHOWN: f64 = 3600.0;

/// While the database accepts no writes: since when, why, and that no run starts.
pub(super) fn read_only_section(
    s: &mut String,
    read_only: Option<&(String, DateTime<Utc>)>,
    now: DateTime<Utc>,
) {
    let Some((why, since)) = read_only else {
        return;
    };
    let _ = write!(
        s,
        "<p class=\"note why\">The database has accepted no writes since {} ({}): no run \
         starts, as every one would fail at its first write. It is asked again every few \
         seconds, and runs start as soon as it takes writes.</p>",
        when(Some(*since), now),
        escape(why)
    );
}

/// While a transaction left open holds the change feed back (see docs/schema.md).
pub(super) fn feed_section(s: &mut String, held_back: Option<f64>) {
    let Some(secs) = held_back else {
        return;
    };
    let _ = write!(
        s,
        "<p class=\"note why\">The change feed (user_change_feed) has been held back for {} h: \
         a transaction that has written something has been open that long somewhere in the \
         cluster, and loaders get no change committed after it began until it ends. The query \
         in docs/schema.md (Loading the changes elsewhere) names the session.</p>",
        (secs / 360.0).floor() / 10.0
    );
}

/// While Truto refuses the API token: since when, that no run starts, and what to do.
pub(super) fn token_section(s: &mut String, since: Option<DateTime<Utc>>, now: DateTime<Utc>) {
    let Some(since) = since else {
        return;
    };
    let _ = write!(
        s,
        "<p class=\"note why\">Truto refuses the API token (HTTP 401; first refused {}): no \
         run starts, as every one would fail. Put a valid token in TRUTO_API_TOKEN or \
         truto.api_token_file and send SIGHUP (or restart); meanwhile the token is checked \
         again every few minutes, and runs start as soon as Truto takes it.</p>",
        when(Some(since), now)
    );
}

/// While Truto does not answer: since when, the last failure, that no run starts, and what
/// to check.
pub(super) fn unreachable_section(s: &mut String, down: Option<&Unreachable>, now: DateTime<Utc>) {
    let Some(down) = down else {
        return;
    };
    let _ = write!(
        s,
        "<p class=\"note why\">Truto has not answered since {} (last: {}): no run starts, as \
         every one would fail. It is asked again every few minutes, and runs start as soon as \
         it answers. Check that truto.base_url is reachable from here (DNS, egress firewall, \
         proxy) and Truto's status.</p>",
        when(Some(down.since), now),
        escape(&down.error)
    );
}

/// While the API token lists another Truto environment's accounts: which, since when, that no
/// run starts, and what to do.
pub(super) fn environment_section(
    s: &mut String,
    other: Option<&OtherEnvironment>,
    now: DateTime<Utc>,
) {
    let Some(o) = other else {
        return;
    };
    let _ = write!(
        s,
        "<p class=\"note why\">The API token lists the integrated accounts of Truto environment \
         <code>{}</code>, not those of <code>{}</code> that this mirror follows (since {}): it is \
         one of another environment (a staging token, a rotation gone wrong), and no run \
         starts, as each would answer 404. Put the followed environment's token in \
         TRUTO_API_TOKEN or truto.api_token_file; it is checked again every few minutes (at \
         once when it is replaced), and runs start as soon as it lists that environment. To \
         follow <code>{0}</code> instead: <code>lms-sync accounts discover \
         --adopt-environment</code>.</p>",
        escape(&o.listed),
        escape(&o.follows),
        when(Some(o.since), now),
    );
}

/// Sessions of lms-sync waiting for a lock another session holds (longer than
/// `database.lock_wait_warn_secs`): the syncs behind them stand still until it is released.
pub(super) fn lock_wait_section(s: &mut String, waits: &[SessionLockWait]) {
    if waits.is_empty() {
        return;
    }
    s.push_str(
        "<p class=\"note why\">Sessions of lms-sync are waiting for a database lock another \
         session holds; what they write stands still until it is released (they are not \
         cancelled):</p><ul class=\"note\">",
    );
    for w in waits {
        let _ = write!(s, "<li>{}</li>", escape(&w.to_string()));
    }
    s.push_str("</ul>");
}
