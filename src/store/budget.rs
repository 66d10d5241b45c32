//! The token's request budget shared by every process on one database (see
//! `docs/rate-budget.md`): each process holds a share of the window, negotiated here a few
//! times per window — never per request. A share given back stays "hot" for one window (the
//! requests sent under it are still in the server's window) before anyone else may take it.
//!
//! A holder keeps a connection of its own: its backend pid is how the others tell it is alive
//! (a process that dies, or loses its connection, leaves `pg_stat_activity` at once). It also
//! watches that connection between rounds ([`ShareHolder::lost`]) and stops sending the moment
//! it ends, so the share of a holder whose connection is gone is hot for one window from when
//! the others found it gone (and a little more: [`FENCE_MARGIN`]). Its share is also leased
//! (`good_until`): it sends under it only until then unless a round renews it, which covers
//! what watching cannot see (a cut the server notices before the process does) and the rows of
//! binaries older than migration 0017, which do not watch: theirs stay hot for one window from
//! the end of their lease.

use std::time::Duration;

use sqlx::Acquire;

use super::{Store, StoreError, Watched, BUDGET_APPLICATION_NAME};

/// SQL: whether the holder of `rate_shares` row `s` is alive. Its backend is there — its own,
/// not a later one that got the same pid (after a restart, or once pids wrap): that one started
/// after the holder's last round.
macro_rules! holder_alive {
    () => {
        "EXISTS (SELECT 1 FROM pg_stat_activity a
                  WHERE a.pid = s.backend_pid AND a.backend_start <= s.renewed_at)"
    };
}

/// SQL: when another holder of `rate_shares` row `s`'s budget last got an answer from Truto
/// after `s`'s holder stopped reaching it (NULL when none did, or while it reaches Truto): the
/// holder is cut off on its own way to Truto.
macro_rules! others_answered {
    () => {
        "(SELECT max(o.answered_at) FROM rate_shares o
           WHERE o.budget = s.budget AND o.holder <> s.holder
             AND o.answered_at > s.unreachable_since)"
    };
}

/// How long after the others find a watching holder's connection gone its share becomes hot
/// (for a window): the holder stops sending as soon as its task wakes on the connection's end,
/// which is milliseconds; this leaves room for a busy process.
pub const FENCE_MARGIN: Duration = Duration::from_millis(100);

/// One process's place at the budget.
pub struct ShareHolder {
    /// Its own connection, watched between rounds too, so that its end is seen at once
    /// ([`ShareHolder::lost`]). It never reconnects by itself: a holder whose connection ended
    /// is dropped and joins anew.
    conn: Watched,
    holder: String,
    schema: String,
    /// How long each share it is given stays good without a renewal (the process stops
    /// sending under it then): what the others wait for, besides a window, when its connection
    /// is gone.
    lease: Duration,
    /// Why the process starts no run now, written with each negotiation (see
    /// [`ShareHolder::standing`]).
    halted: Option<String>,
    /// What the process's requests tell of Truto, written with each negotiation (see
    /// [`ShareHolder::standing`]).
    reach: Reach,
    /// The process's version and configuration digest, written with each negotiation (see
    /// [`ShareHolder::runs`]).
    runs: Option<Runs>,
    /// The digest whose configuration this holder last recorded in `replica_configurations`.
    recorded: Option<String>,
}

/// What a process runs: its binary's version and its configuration's digest
/// ([`crate::config::Settings::digest`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runs {
    pub version: String,
    pub config_digest: String,
    /// The configuration itself ([`crate::config::Settings::comparable`]), recorded once per
    /// digest in `replica_configurations` for others to say how theirs differs.
    pub settings: std::sync::Arc<serde_json::Value>,
}

/// How long ago this process last got an answer from Truto, and since how long it has not
/// reached it (its requests gave up on Truto's own failures with nothing answered since), as
/// of a moment just before a negotiation. Durations, not times: the database turns them into
/// its own time, so that hosts whose clocks differ compare alike.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reach {
    pub answered_ago: Option<Duration>,
    pub unreachable_for: Option<Duration>,
}

/// What one negotiation decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Requests per window this process may send from now on.
    pub share: i32,
    /// Live holders, this one included.
    pub holders: i32,
    /// The requests per window the share was decided within: this holder's configured limit,
    /// or less when another live holder is configured with a stricter budget (see
    /// [`agreed_limit`]).
    pub limit: i32,
    /// Another live holder is configured with a different budget (requests or window).
    pub disagree: bool,
    /// The digests of the configurations other live holders run with, where they differ from
    /// this one's (holders of binaries older than migration 0032 record none, and count as
    /// agreeing), sorted; empty while every replica runs this one.
    pub other_configs: Vec<String>,
    /// This process has not reached Truto for a while, and another holder got an answer from
    /// it since: what fails is this process's way to Truto, not Truto.
    pub cut_off: bool,
}

/// One process's place at a budget, as the status page shows it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow, serde::Serialize)]
pub struct ShareView {
    pub holder: String,
    pub share: i32,
    pub wanted: i32,
    pub renewed_at: chrono::DateTime<chrono::Utc>,
    /// Its connection is there: a holder without one is released by the next negotiation.
    pub alive: bool,
    /// The budget it is configured with (`rate_budget.per_token` per `window_secs`); `None`
    /// for a binary older than migration 0019.
    pub per_token: Option<i32>,
    pub window_secs: Option<i32>,
    /// Why it starts no run now (Truto refuses the token or does not answer), as of its last
    /// negotiation; `None` when it runs normally (or is older than migration 0023).
    pub halted: Option<String>,
    /// While it does not reach Truto: when another holder last got an answer from Truto
    /// since it stopped reaching it (it is cut off on its own way to Truto), as of their last
    /// negotiations; `None` otherwise.
    pub others_answered: Option<chrono::DateTime<chrono::Utc>>,
    /// Its lms-sync version and configuration digest, as of its last negotiation; `None`
    /// for a binary older than migration 0032.
    pub version: Option<String>,
    pub config_digest: Option<String>,
}

/// A budget's holders and what is hot (given back, still in the server's window).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct BudgetView {
    pub holders: Vec<ShareView>,
    pub hot: i64,
}

impl BudgetView {
    /// Whether a live process holds a share: one runs against the database.
    pub fn running(&self) -> bool {
        self.holders.iter().any(|h| h.alive)
    }
}

impl Store {
    /// Who holds `budget` now, for people to read (nothing is changed). `window` is the
    /// budget's: releases older than that are no longer hot even before a negotiation prunes
    /// them (the same rule as [`ShareHolder::negotiate`]'s).
    pub async fn budget_view(
        &self,
        budget: &str,
        window: Duration,
    ) -> Result<BudgetView, StoreError> {
        let holders = sqlx::query_as(concat!(
            "SELECT s.holder, s.share, s.wanted, s.renewed_at, s.per_token, s.window_secs, s.halted,
                    s.version, s.config_digest, ",
            others_answered!(),
            " AS others_answered, ",
            holder_alive!(),
            " AS alive
               FROM rate_shares s
              WHERE s.budget = $1
              ORDER BY s.holder"
        ))
        .bind(budget)
        .fetch_all(&self.pool)
        .await?;
        let hot: i64 = sqlx::query_scalar(
            "SELECT coalesce(sum(released), 0)::bigint FROM rate_share_releases
              WHERE budget = $1 AND released_at >= now() - make_interval(secs => $2)",
        )
        .bind(budget)
        .bind(window.as_secs_f64())
        .fetch_one(&self.pool)
        .await?;
        Ok(BudgetView { holders, hot })
    }

    /// The configurations recorded for `digests` (those found), for saying how replicas'
    /// configurations differ.
    pub async fn replica_configurations(
        &self,
        digests: &[String],
    ) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        let rows: Vec<(String, sqlx::types::Json<serde_json::Value>)> = sqlx::query_as(
            "SELECT config_digest, settings FROM replica_configurations
              WHERE config_digest = ANY($1) ORDER BY config_digest",
        )
        .bind(digests)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(d, s)| (d, s.0)).collect())
    }

    /// Joins the budget as `holder` (unique per process), on a connection of its own. Each
    /// share it is given is good for `lease` from the start of the negotiation that gave it:
    /// the process must stop sending under it then unless a later one renewed it.
    pub async fn budget_holder(
        &self,
        holder: &str,
        lease: Duration,
    ) -> Result<ShareHolder, StoreError> {
        let mut conn = self.watched_connection(BUDGET_APPLICATION_NAME).await?;
        // A holder stalled inside a round (a frozen process, a paused VM, a partition) would
        // hold the round's lock, and with it every other process's budget, until it woke or
        // TCP gave up: the server ends such a transaction, and the session, after a lease (at
        // least a second). The holder's share then counts as found gone.
        let idle_ms = lease.max(Duration::from_secs(1)).as_millis();
        sqlx::query(&format!(
            "SET idle_in_transaction_session_timeout = {idle_ms}"
        ))
        .execute(&mut *conn)
        .await?;
        Ok(ShareHolder {
            conn,
            holder: holder.to_string(),
            schema: self.schema.clone(),
            lease,
            halted: None,
            reach: Reach::default(),
            runs: None,
            recorded: None,
        })
    }
}

impl ShareHolder {
    /// Says, from the next negotiation on, how the process stands with Truto: why it starts no
    /// run (Truto refuses the token or does not answer), or that it runs normally (`None`), and
    /// what its requests tell of Truto's answering. The other processes' status shows the first
    /// beside the share, and tells from the second whether a process that does not reach Truto
    /// is alone in that.
    pub fn standing(&mut self, halted: Option<String>, reach: Reach) {
        self.halted = halted;
        self.reach = reach;
    }

    /// Says, from the next negotiation on, which version and configuration the process runs,
    /// for the others to compare with theirs (a configuration reloaded changes it).
    pub fn runs(&mut self, runs: Runs) {
        self.runs = Some(runs);
    }

    /// Resolves when this holder's connection has ended, with the reason. Between rounds the
    /// caller waits on it beside its timers and, when it resolves, stops sending under its
    /// share at once and joins anew: the others may take the share a window (and
    /// [`FENCE_MARGIN`]) after they find the connection gone, which may be right away.
    /// Cancel-safe.
    pub async fn lost(&mut self) -> String {
        self.conn.ended().await
    }

    /// One round for `budget` (`limit` requests per `window_secs`), wanting `wanted`: gives back
    /// what is above this holder's fair part (the limit split by what every live holder wants) —
    /// hot for a window as far as requests were sent under it — takes what it lacks from what is
    /// neither held nor hot, and returns the share to use.
    ///
    /// `used` is called once, with the share decided, before anyone else can see what is given
    /// back: the caller stops sending beyond that share and returns the requests in its window
    /// *now*. Counting them any earlier would miss those sent while the round ran, which the old
    /// share still allowed, and would hand their part to others as free.
    pub async fn negotiate(
        &mut self,
        budget: &str,
        limit: i32,
        window_secs: i32,
        wanted: i32,
        used: impl FnOnce(i32) -> i32,
    ) -> Result<Negotiated, StoreError> {
        let mut tx = (&mut *self.conn).begin().await?;
        // One negotiation at a time per budget (a transaction lock: nothing to clean up).
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtext('lms-sync-budget:' || $1 || ':' || $2))",
        )
        .bind(&self.schema)
        .bind(budget)
        .execute(&mut *tx)
        .await?;
        // Holders whose connection is gone: their share is hot for one window from when it was
        // last sent under. A holder that watches its connection stopped when it ended: that is
        // now, or just before (the margin covers its waking). One that does not (a binary older
        // than 0017) may be alive and sending until its lease ends, not knowing yet.
        // `greatest` skips a NULL `good_until` (a row of a binary older than 0015). The clock's
        // time, not the transaction's: it may have waited for the lock, and the holder was
        // found gone after that.
        sqlx::query(concat!(
            "WITH dead AS (
                 DELETE FROM rate_shares s
                  WHERE s.budget = $1 AND s.holder <> $2 AND NOT ",
            holder_alive!(),
            "
              RETURNING s.share, s.good_until, s.fences_on_loss)
             INSERT INTO rate_share_releases (budget, released, released_at)
             SELECT $1, share,
                    CASE WHEN fences_on_loss
                         THEN clock_timestamp() + make_interval(secs => $3)
                         ELSE greatest(clock_timestamp(), good_until) END
               FROM dead
              WHERE share > 0"
        ))
        .bind(budget)
        .bind(&self.holder)
        .bind(FENCE_MARGIN.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "DELETE FROM rate_share_releases
              WHERE budget = $1 AND released_at < now() - make_interval(secs => $2)",
        )
        .bind(budget)
        .bind(window_secs as f64)
        .execute(&mut *tx)
        .await?;
        // The budgets the other holders are configured with (gone ones were deleted above).
        let configured: Vec<(i32, i32)> = sqlx::query_as(
            "SELECT per_token, window_secs FROM rate_shares
              WHERE budget = $1 AND holder <> $2 AND per_token IS NOT NULL AND window_secs IS NOT NULL",
        )
        .bind(budget)
        .bind(&self.holder)
        .fetch_all(&mut *tx)
        .await?;
        let agreed = agreed_limit(limit, window_secs, &configured);
        let digest = self.runs.as_ref().map(|r| r.config_digest.as_str());
        let other_configs: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT config_digest FROM rate_shares
              WHERE budget = $1 AND holder <> $2
                AND config_digest IS NOT NULL AND config_digest <> $3
              ORDER BY 1",
        )
        .bind(budget)
        .bind(&self.holder)
        .bind(digest)
        .fetch_all(&mut *tx)
        .await?;
        let disagree = configured
            .iter()
            .any(|&(n, w)| (n, w) != (limit, window_secs));
        let (mine, others_held, others_wanted, hot, holders): (i32, i64, i64, i64, i64) =
            sqlx::query_as(
                "SELECT coalesce((SELECT share FROM rate_shares WHERE budget = $1 AND holder = $2), 0),
                        coalesce((SELECT sum(share) FROM rate_shares WHERE budget = $1 AND holder <> $2), 0),
                        coalesce((SELECT sum(wanted) FROM rate_shares WHERE budget = $1 AND holder <> $2), 0),
                        coalesce((SELECT sum(released) FROM rate_share_releases WHERE budget = $1), 0),
                        (SELECT count(*) FROM rate_shares WHERE budget = $1 AND holder <> $2) + 1",
            )
            .bind(budget)
            .bind(&self.holder)
            .fetch_one(&mut *tx)
            .await?;
        let share = decide(
            mine,
            wanted,
            agreed,
            others_held as i32,
            others_wanted as i32,
            hot as i32,
        );
        // Only the part of the given-back share that requests were sent under is still in the
        // server's window; the rest is free at once.
        let used = used(share);
        let hot_now = (mine - share).min((used - share).max(0));
        if hot_now > 0 {
            // Hot from now, not from when this transaction began (`now()`): it may have waited
            // for the lock, and requests answered meanwhile were counted by the server later.
            sqlx::query(
                "INSERT INTO rate_share_releases (budget, released, released_at)
                 VALUES ($1, $2, clock_timestamp())",
            )
            .bind(budget)
            .bind(hot_now)
            .execute(&mut *tx)
            .await?;
        }
        // Whether this holder is cut off is read off its row as written, by the rule the status
        // shows it by.
        let cut_off: bool = sqlx::query_scalar(concat!(
            "INSERT INTO rate_shares AS s (budget, holder, share, wanted, backend_pid, good_until, fences_on_loss,
                                      per_token, window_secs, halted, answered_at, unreachable_since,
                                      version, config_digest)
             VALUES ($1, $2, $3, $4, pg_backend_pid(), now() + make_interval(secs => $5), true, $6, $7, $8,
                     now() - make_interval(secs => $9), now() - make_interval(secs => $10), $11, $12)
             ON CONFLICT (budget, holder) DO UPDATE
                SET share = excluded.share, wanted = excluded.wanted,
                    backend_pid = excluded.backend_pid, renewed_at = now(),
                    good_until = excluded.good_until, fences_on_loss = true,
                    per_token = excluded.per_token, window_secs = excluded.window_secs,
                    halted = excluded.halted, answered_at = excluded.answered_at,
                    unreachable_since = excluded.unreachable_since,
                    version = excluded.version, config_digest = excluded.config_digest
             RETURNING ",
            others_answered!(),
            " IS NOT NULL"
        ))
        .bind(budget)
        .bind(&self.holder)
        .bind(share)
        .bind(wanted)
        .bind(self.lease.as_secs_f64())
        .bind(limit)
        .bind(window_secs)
        .bind(&self.halted)
        .bind(self.reach.answered_ago.map(|d| d.as_secs_f64()))
        .bind(self.reach.unreachable_for.map(|d| d.as_secs_f64()))
        .bind(self.runs.as_ref().map(|r| r.version.as_str()))
        .bind(digest)
        .fetch_one(&mut *tx)
        .await?;
        // The configuration behind a digest not recorded yet by this holder (at its first round,
        // and after a reload), for the others to say how theirs differs; those no replica has
        // run for a week go.
        let record = self
            .runs
            .as_ref()
            .filter(|r| self.recorded.as_deref() != Some(r.config_digest.as_str()));
        if let Some(r) = record {
            sqlx::query(
                "INSERT INTO replica_configurations (config_digest, settings) VALUES ($1, $2)
                 ON CONFLICT (config_digest) DO UPDATE SET recorded_at = now()",
            )
            .bind(&r.config_digest)
            .bind(sqlx::types::Json(&*r.settings))
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "DELETE FROM replica_configurations c
                  WHERE c.recorded_at < now() - interval '7 days'
                    AND NOT EXISTS (SELECT 1 FROM rate_shares s WHERE s.config_digest = c.config_digest)",
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        if let Some(r) = record {
            self.recorded = Some(r.config_digest.clone());
        }
        Ok(Negotiated {
            share,
            holders: holders as i32,
            limit: agreed,
            disagree,
            other_configs,
            cut_off,
        })
    }

    /// Leaves the budget, having sent `used` requests in the last window: those stay hot for
    /// one window; the rest of the share is free at once.
    pub async fn leave(mut self, budget: &str, used: i32) {
        let _ = sqlx::query(
            "WITH gone AS (DELETE FROM rate_shares WHERE budget = $1 AND holder = $2 RETURNING share)
             INSERT INTO rate_share_releases (budget, released)
             SELECT $1, least(share, $3) FROM gone WHERE least(share, $3) > 0",
        )
        .bind(budget)
        .bind(&self.holder)
        .bind(used)
        .execute(&mut *self.conn)
        .await;
        // Dropping the listener ends the connection (its pool goes with it).
    }
}

/// The requests per window a holder configured with `limit` per `window_secs` shares the
/// budget by, beside live holders configured with `others` (requests, window seconds) (pure):
/// the strictest of them all, in its own window. A holder with a window as long as ours or
/// shorter allows its `n` in any stretch that long, and our window holds such a stretch: no
/// more than `n`. One with a longer window allows `n` in any of its windows, which a run of
/// ⌈theirs / ours⌉ of ours covers, each of which may be full: no more than `n` divided by that
/// (at least 1, so that a process never stalls for good on a budget too small to divide).
pub fn agreed_limit(limit: i32, window_secs: i32, others: &[(i32, i32)]) -> i32 {
    // In i64: the rows are other processes' (or anyone's) writing, and `i32::MAX` seconds must
    // not overflow the division's rounding.
    let mine = i64::from(window_secs.max(1));
    others.iter().fold(limit, |agreed, &(n, w)| {
        let spans = (i64::from(w.max(1)) + mine - 1) / mine;
        let theirs = (i64::from(n) / spans).max(1);
        agreed.min(i32::try_from(theirs).unwrap_or(i32::MAX))
    })
}

/// The new share (pure): what the holder wants, up to its fair part of the limit (split by
/// what the live holders want) or to what the others do not want, whichever is more; it gives
/// back only what the others want beyond what is free, and takes no more than is neither held
/// by others nor hot.
pub fn decide(
    mine: i32,
    wanted: i32,
    limit: i32,
    others_held: i32,
    others_wanted: i32,
    hot: i32,
) -> i32 {
    let wanted = wanted.clamp(0, limit);
    let others_wanted = others_wanted.clamp(0, limit);
    let all_wanted = wanted + others_wanted;
    let fair = if all_wanted == 0 {
        0
    } else {
        // Rounded up, so that a lone holder gets the whole limit; the free check below keeps
        // the sum within it.
        ((limit as i64 * wanted as i64 + all_wanted as i64 - 1) / all_wanted as i64) as i32
    };
    // What nobody else wants: a holder keeps (or may grow into) it, so a lone process never
    // shrinks between its bursts.
    let room = limit - others_wanted;
    let target = wanted.min(fair.max(room)).max(mine.min(room));
    if target <= mine {
        return target;
    }
    let free = (limit - others_held - mine - hot).max(0);
    mine + (target - mine).min(free)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_configured_with_different_budgets_share_the_strictest_in_their_own_window() {
        // Alone, or beside holders that agree (or older binaries, which say nothing).
        assert_eq!(agreed_limit(500, 10, &[]), 500);
        assert_eq!(agreed_limit(500, 10, &[(500, 10), (500, 10)]), 500);
        // A replica still on a smaller budget: everyone shares that.
        assert_eq!(agreed_limit(500, 10, &[(300, 10)]), 300);
        assert_eq!(agreed_limit(300, 10, &[(500, 10)]), 300);
        // A shorter window allows its count in any stretch that short: ours may hold no more.
        assert_eq!(agreed_limit(500, 10, &[(400, 5)]), 400);
        // A longer one: 3,000 per 60 s is 500 in each of six of our 10 s windows; 15 s spans two
        // of ours, so 900 per 15 s allows 450 in each.
        assert_eq!(agreed_limit(500, 10, &[(3_000, 60)]), 500);
        assert_eq!(agreed_limit(500, 10, &[(900, 15)]), 450);
        // And the other way round: 500 per 10 s caps a 60 s window at 500 too.
        assert_eq!(agreed_limit(3_000, 60, &[(500, 10)]), 500);
        // Never below one request a window.
        assert_eq!(agreed_limit(500, 10, &[(5, 60)]), 1);
        // Rows nobody should have written never overflow: the longest windows, a negative
        // count.
        assert_eq!(agreed_limit(500, 10, &[(500, i32::MAX)]), 1);
        assert_eq!(agreed_limit(500, i32::MAX, &[(i32::MAX, 10)]), 500);
        assert_eq!(agreed_limit(500, 10, &[(-7, 10)]), 1);
    }

    #[test]
    fn a_lone_holder_gets_everything_it_wants_and_shares_converge_to_fair_parts() {
        assert_eq!(decide(0, 500, 500, 0, 0, 0), 500);
        assert_eq!(decide(0, 100, 500, 0, 0, 0), 100);
        // Alone, a holder keeps its share between bursts.
        assert_eq!(decide(500, 3, 500, 0, 0, 0), 500);
        // An idle holder beside a busy one keeps only what it wants.
        assert_eq!(decide(250, 3, 500, 250, 500, 0), 3);
        // A second holder arrives wanting everything: the first gives back half...
        assert_eq!(decide(500, 500, 500, 0, 500, 0), 250);
        // ...which is hot for a window: the second gets nothing yet, then its half.
        assert_eq!(decide(0, 500, 500, 250, 500, 250), 0);
        assert_eq!(decide(0, 500, 500, 250, 500, 0), 250);
        // Never more than the limit, whatever is asked.
        assert_eq!(decide(0, 9_999, 500, 400, 0, 0), 100);
        assert_eq!(decide(10, 500, 500, 490, 500, 0), 10);
    }
}
