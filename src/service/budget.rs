//! Keeping this process's share of the token's request budget, through the database, so that
//! every process on it (`run` replicas, a one-off `sync`) stays within Truto's window together
//! (see `docs/rate-budget.md`). Four times per window — and at once when its requests wait for
//! the share (see [`spacing`]) — the process says what it wants: what its accounts could send
//! at their own windows' rate when it is short, about what it used otherwise; and it sets the
//! share it is given on its [`RateBudget`]. The cost is a handful of statements per
//! negotiation, at most a few per second whatever the request rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::source::budget::{Demand, RateBudget};
use crate::source::Standing;
use crate::store::{Negotiated, Reach, Runs, Store};

/// The budget the token's window is negotiated as.
pub(crate) const TOKEN: &str = "token";

/// The name at the budget of the process pacing itself by `budget`: unique even for two
/// processes of one host and pid namespace (containers), and known to the rest of the process
/// (the scheduler tells its own share from the others' by it).
pub(crate) fn holder_name(budget: &RateBudget) -> String {
    format!("{}:{}", crate::sync::worker_name(), budget.instance())
}

/// The least time between two negotiations of one process.
pub const MIN_SPACING: Duration = Duration::from_millis(200);

/// What to ask for, given the last period's demand (pure): never more than the accounts being
/// worked on could send at their own windows' rate (so that a process with few accounts leaves
/// the rest to the others); all of that when requests had to wait for the share; otherwise a
/// little more than was used, so that a growing load is noticed.
pub fn wanted(limit: usize, d: Demand) -> usize {
    let most = d.capacity.min(limit);
    if d.token_waited {
        most
    } else {
        (d.used + d.used / 4 + 1).min(most)
    }
}

/// How soon after a round that asked for `asked` requests waiting for the share may start the
/// next (pure): no sooner than [`MIN_SPACING`], unless that round asked for nothing. The first
/// round of all does (nothing has asked yet), so a process's first requests wait for one round
/// trip to the database, not for `MIN_SPACING`; the round after an immediate one asks for
/// something, so rounds still come at most every `MIN_SPACING` while requests wait.
pub fn spacing(asked: usize) -> Duration {
    if asked == 0 {
        Duration::ZERO
    } else {
        MIN_SPACING
    }
}

/// Negotiates until `cancel`, then gives the share back. A process that cannot reach the
/// database sends no token request (its share is 0) until it can again: the others may already
/// have taken what it held.
///
/// `settings`, given by the service (`run`), are the settings in force: their digest and the
/// binary's version are recorded with the share for the other processes to compare with theirs
/// (one-off commands record neither: their configuration is the operator's shell's).
pub async fn share_token_budget(
    store: Store,
    budget: Arc<RateBudget>,
    mut standing: watch::Receiver<Standing>,
    metrics: Option<Arc<Metrics>>,
    mut settings: Option<super::Live>,
    cancel: CancellationToken,
) {
    let report = |share: usize, wanted: usize, holders: Option<i32>| {
        if let Some(m) = &metrics {
            m.set("lms_sync_rate_budget_share", &[], share as f64);
            m.set("lms_sync_rate_budget_wanted", &[], wanted as f64);
            if let Some(h) = holders {
                m.set("lms_sync_rate_budget_holders", &[], h as f64);
            }
        }
    };
    let holder = holder_name(&budget);
    let limit = budget.token_limit();
    let period = budget.period();
    // Each round renews the share for a period and a half: the next round comes a period later
    // (sooner when requests wait), with room for a slow one. A process that cannot renew stops
    // sending when the lease runs out; one whose connection ends stops at once (`lost`
    // below), which is what lets the others take its share a window after finding it gone
    // (see `docs/rate-budget.md`).
    let lease = budget.lease();
    let mut me = None;
    // The round failed or the connection ended: nothing is sent under the share until a round
    // gives one again, and the next round joins anew.
    // Said as a warning once in a row of failures, then at debug until a round succeeds: a
    // database down or taking no writes (mid-failover) fails every round.
    let lose = |reason: &dyn std::fmt::Display, want: usize, loud: bool| {
        budget.set_token_share(0);
        if loud {
            tracing::warn!(error = %reason, "lost the shared request budget; no requests until it is back");
        } else {
            tracing::debug!(error = %reason, "lost the shared request budget; no requests until it is back");
        }
        report(0, want, None);
    };
    // Rounds (joining included) failed in a row; the next comes later the more there were.
    let mut failed = 0u32;
    // Until the first negotiation, nothing: another process may hold the whole budget.
    budget.set_token_share(0);
    // Nothing is wanted before a request asks (then `more_wanted` wakes the loop).
    let mut want = 0;
    // What the last round said of the budgets the other holders are configured with, so that
    // a change is logged once: (the limit shared by, whether any of them differs).
    let mut agreement = (limit.requests as i32, false);
    // Why this process starts no run, as the last round recorded it for the others to show.
    let mut recorded: Option<String> = None;
    // Whether the last round found this process cut off from Truto while others reach it.
    let mut cut_off = false;
    // What this process runs, as recorded with its share: computed again when the settings
    // are reloaded.
    let mut runs: Option<Runs> = None;
    // The other configurations the last round found processes running (their digests): a
    // warning for each that joins, not only for the first.
    let mut other_configs: Vec<String> = Vec::new();
    while !cancel.is_cancelled() {
        if let Some(live) = settings.as_mut() {
            if runs.is_none() || live.has_changed().unwrap_or(false) {
                let settings = live.borrow_and_update().comparable();
                runs = Some(Runs {
                    version: env!("CARGO_PKG_VERSION").to_string(),
                    config_digest: crate::config::digest_of(&settings),
                    settings: Arc::new(settings),
                });
            }
        }
        let (halted, reach) = {
            let now = standing.borrow_and_update();
            let reach = Reach {
                answered_ago: now.answered_ago(),
                unreachable_for: now
                    .unreachable
                    .as_ref()
                    .map(|u| (chrono::Utc::now() - u.since).to_std().unwrap_or_default()),
            };
            (now.halt().map(|h| h.to_string()), reach)
        };
        let negotiated_at = tokio::time::Instant::now();
        if me.is_none() {
            match store.budget_holder(&holder, lease).await {
                Ok(h) => me = Some(h),
                Err(e) => {
                    failed += 1;
                    let e = store.explain(e).await;
                    if failed == 1 {
                        tracing::warn!(error = %e, "cannot join the shared request budget; no requests until it can")
                    } else {
                        tracing::debug!(error = %e, "cannot join the shared request budget; no requests until it can")
                    }
                }
            }
        }
        if let Some(h) = me.as_mut() {
            h.standing(halted.clone(), reach);
            if let Some(r) = &runs {
                h.runs(r.clone());
            }
            // The lease counts from before the round: the database's, from the start of its
            // transaction, ends no earlier.
            let started = Instant::now();
            let negotiated: Result<_, String> = tokio::time::timeout(
                // A round takes milliseconds; one that hangs (a connection dead without a word)
                // is given up, and the next one starts on a new connection.
                limit.window,
                h.negotiate(
                    TOKEN,
                    limit.requests as i32,
                    limit.window.as_secs().max(1) as i32,
                    want as i32,
                    // Before the others may take what this round gives back: stop sending
                    // beyond the new share and count what the old one was used for.
                    |decided| {
                        budget.shrink_token_share(decided.max(0) as usize, Instant::now()) as i32
                    },
                ),
            )
            .await
            .map_or_else(
                |_| Err(format!("no answer within {:?}", limit.window)),
                |r| r.map_err(|e| e.to_string()),
            );
            match negotiated {
                Ok(n) => {
                    if failed > 0 {
                        tracing::info!(failed_rounds = failed, "the shared request budget is back");
                        failed = 0;
                    }
                    if halted != recorded {
                        tracing::debug!(
                            halted = halted.as_deref().unwrap_or("no"),
                            "recorded with the request budget why no run starts"
                        );
                        recorded = halted;
                    }
                    // The gauges first: what the logs below say is on /metrics by then (one of
                    // them waits for the database while the gauges would lag behind it).
                    if let Some(m) = &metrics {
                        m.set(
                            "lms_sync_config_mismatch",
                            &[],
                            f64::from(u8::from(!n.other_configs.is_empty())),
                        );
                        m.set(
                            "lms_sync_truto_cut_off",
                            &[],
                            f64::from(u8::from(n.cut_off)),
                        );
                        m.set("lms_sync_rate_budget_limit", &[], f64::from(n.limit));
                        m.set(
                            "lms_sync_rate_budget_mismatch",
                            &[],
                            f64::from(u8::from(n.disagree)),
                        );
                    }
                    if (n.limit, n.disagree) != agreement {
                        agreement = (n.limit, n.disagree);
                        log_agreement(limit, &n);
                    }
                    if n.cut_off != cut_off {
                        cut_off = n.cut_off;
                        if cut_off {
                            tracing::error!(
                                "another process sharing the database got answers from Truto \
                                 since this one stopped reaching it: what fails is this \
                                 process's way to Truto (its DNS, egress, proxy), not Truto; the \
                                 others sync the accounts meanwhile"
                            );
                        }
                    }
                    // A warning for each configuration that joins (a third while two already
                    // differ too), naming what differs.
                    if n.other_configs.iter().any(|d| !other_configs.contains(d)) {
                        let differs = match &runs {
                            Some(r) => others_configurations(&store, limit.window, r).await,
                            None => String::new(),
                        };
                        tracing::warn!(
                            config_digest = runs.as_ref().map(|r| r.config_digest.as_str()),
                            differs,
                            "another process sharing the database runs with a different \
                             configuration (a rollout halfway, a replica left on an old \
                             ConfigMap, a reload sent to some replicas only): lms-sync status \
                             and the status page name each process's"
                        );
                    } else if n.other_configs.is_empty() && !other_configs.is_empty() {
                        tracing::info!(
                            "the processes sharing the database run with one configuration again"
                        );
                    }
                    other_configs.clone_from(&n.other_configs);
                    let before = budget.token_share();
                    budget.set_token_share_until(n.share.max(0) as usize, started + lease);
                    report(budget.token_share(), want, Some(n.holders));
                    if budget.token_share() != before {
                        tracing::debug!(
                            share = n.share,
                            holders = n.holders,
                            "request budget share"
                        );
                    }
                }
                Err(e) => {
                    failed += 1;
                    lose(&e, want, failed == 1);
                    me = None;
                }
            }
        }
        let short = async {
            budget.more_wanted().await;
            tokio::time::sleep_until(
                negotiated_at + after_failures(failed, period).max(spacing(want)),
            )
            .await;
        };
        // The others may take this process's share a window after they find its connection
        // gone, which may be at once: when it ends, stop sending now, not at the next round.
        let lost = async {
            match me.as_mut() {
                Some(h) => h.lost().await,
                None => std::future::pending().await,
            }
        };
        // A halt that begins or ends is shown to the others at once.
        let halt_changed = async {
            if standing.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = tokio::time::sleep_until(negotiated_at + period) => {}
            _ = short => {}
            _ = halt_changed => {}
            reason = lost => {
                lose(&reason, want, true);
                me = None;
                // Then join again (the round says what is left of the share), but not in a
                // tight loop should connections keep ending at once.
                tokio::select! {
                    _ = tokio::time::sleep(MIN_SPACING) => {}
                    _ = cancel.cancelled() => break,
                }
            }
            _ = cancel.cancelled() => break,
        }
        want = wanted(limit.requests, budget.take_demand(Instant::now()));
    }
    if let Some(h) = me {
        // No request after this, and all sent so far stay hot for a window.
        let used = budget.shrink_token_share(0, Instant::now());
        h.leave(TOKEN, used as i32).await;
    }
}

/// Says once that the processes sharing the budget are configured with different budgets (a
/// rolling change of `rate_budget`, a replica left on an old config), and what is shared.
fn log_agreement(configured: crate::source::budget::Limit, n: &Negotiated) {
    let window_secs = configured.window.as_secs();
    if !n.disagree {
        tracing::info!(
            per_token = configured.requests,
            window_secs,
            "every process sharing the request budget is configured with the same one again"
        );
    } else if (n.limit as usize) < configured.requests {
        tracing::warn!(
            configured = configured.requests,
            window_secs,
            shared = n.limit,
            "another process sharing the request budget is configured with a stricter one (rate_budget); \
             all share the strictest until their configs agree"
        );
    } else {
        tracing::warn!(
            configured = configured.requests,
            window_secs,
            shared = n.limit,
            "another process sharing the request budget is configured with a different one (rate_budget); \
             this one's is the strictest, and all share it until their configs agree"
        );
    }
}

/// How long after a round the next may start when `failed` rounds in a row failed (pure):
/// [`MIN_SPACING`], doubling with each failure, at most `period` (when the next round is due
/// anyway). Nothing after none.
fn after_failures(failed: u32, period: Duration) -> Duration {
    match failed {
        0 => Duration::ZERO,
        n => MIN_SPACING.saturating_mul(1 << (n - 1).min(16)).min(period),
    }
}

/// How the configurations the other live processes run differ from this one's, for the log:
/// `digest: difference; …` per configuration (`|` between them), as the status page says it
/// ([`super::status::compare`]); empty when they cannot be read (the warning says the rest).
async fn others_configurations(store: &Store, window: Duration, runs: &Runs) -> String {
    let Ok(view) = store.budget_view(TOKEN, window).await else {
        return String::new();
    };
    let own = || (*runs.settings).clone();
    let Some(compared) = super::status::compare(store, &view, &runs.config_digest, own).await
    else {
        return String::new();
    };
    compared
        .differences
        .iter()
        .filter(|(_, words)| !words.is_empty())
        .map(|(d, words)| format!("{d}: {}", words.join("; ")))
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_after_failures_come_further_apart_up_to_a_period() {
        let period = Duration::from_millis(2_500);
        assert_eq!(after_failures(0, period), Duration::ZERO);
        assert_eq!(after_failures(1, period), MIN_SPACING);
        assert_eq!(after_failures(2, period), MIN_SPACING * 2);
        assert_eq!(after_failures(40, period), period);
    }

    #[test]
    fn only_a_round_that_asked_for_nothing_is_followed_at_once() {
        assert_eq!(spacing(0), Duration::ZERO);
        assert_eq!(spacing(1), MIN_SPACING);
        assert_eq!(spacing(500), MIN_SPACING);
    }

    #[test]
    fn a_short_process_wants_what_its_accounts_could_send_and_an_easy_one_what_it_used() {
        let d = |used, token_waited, capacity| Demand {
            used,
            token_waited,
            capacity,
        };
        // Ten accounts at 50 per window, short of share: all of the budget.
        assert_eq!(wanted(500, d(480, true, 500)), 500);
        // Four accounts never need more than 200, however short.
        assert_eq!(wanted(500, d(100, true, 200),), 200);
        // Not short: a quarter over what was used, within what the accounts could send.
        assert_eq!(wanted(500, d(40, false, 200)), 51);
        assert_eq!(wanted(500, d(190, false, 200)), 200);
        // Idle: nothing.
        assert_eq!(wanted(500, d(0, false, 0)), 0);
        assert_eq!(wanted(500, d(0, true, 9_999)), 500);
    }
}
