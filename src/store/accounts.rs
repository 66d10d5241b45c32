//! The account registry (`accounts`): configured accounts, what discovery found (and retired),
//! and operators' requests (pause, sync now, reset the cursor), read by every replica. Also the
//! purge of a retired account's data.

use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::{Store, StoreError, Ts};
use crate::config::{AccountSettings, DiscoverySettings};
use crate::domain::{AccountSource, Health};

pub use crate::domain::AccountRow;

/// An integrated account as a complete or partial listing showed it.
#[derive(Debug, Clone)]
pub struct Discovered {
    pub id: Uuid,
    pub tenant_id: Option<String>,
    pub status: Option<String>,
    pub integration: Option<String>,
    pub is_sandbox: bool,
    /// The Truto environment it belongs to, when said.
    pub environment_id: Option<String>,
}

/// What one listing changed in the registry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoveryApplied {
    pub listed: u64,
    pub added: u64,
    pub unretired: u64,
    pub retired: u64,
    /// Why accounts no longer listed were not retired, when some were not.
    pub retire_guard: Option<String>,
    /// The discovered accounts the listing no longer shows (not yet retired): retired by it,
    /// or kept by the guard.
    pub missing: Vec<Uuid>,
    /// The Truto environment the registry follows after the listing (`None` while no listing
    /// has shown one).
    pub environment: Option<String>,
    /// The environment the registry followed before, when the listing moved it to another
    /// ([`ListedEnvironment::adopt`]).
    pub adopted_from: Option<String>,
}

/// The Truto environment a listing's accounts belong to, as discovery applies it: the registry
/// follows one (`discovery_state.environment_id`, recorded by the first listing that shows
/// one), and a listing of another is refused ([`StoreError::OtherEnvironment`]) unless adopted.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListedEnvironment<'a> {
    /// `None` when no listed account says (an empty listing): nothing to compare.
    pub id: Option<&'a str>,
    /// Follow it from now on, whatever the registry followed (`accounts discover
    /// --adopt-environment`).
    pub adopt: bool,
}

/// Why a listing, or an account event, of the Truto environment `listed` must not be applied
/// where the registry follows `follows` (pure): `None` when either is not known, or they are
/// the same.
pub fn other_environment(follows: Option<&str>, listed: Option<&str>) -> Option<StoreError> {
    match (follows, listed) {
        (Some(follows), Some(listed)) if follows != listed => Some(StoreError::OtherEnvironment {
            follows: follows.to_string(),
            listed: listed.to_string(),
        }),
        _ => None,
    }
}

/// The Truto environment the registry follows, read in `tx` under `lock` (`FOR UPDATE` to
/// record another, `FOR SHARE` to compare with it).
async fn followed_environment(
    tx: &mut Transaction<'_, Postgres>,
    lock: &'static str,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(&format!(
        "SELECT environment_id FROM discovery_state {lock}"
    ))
    .fetch_optional(&mut **tx)
    .await?
    .flatten())
}

/// What [`Store::environments`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environments {
    /// `discovery_state.environment_id`.
    pub follows: Option<String>,
    /// `discovery_state.other_environment_id`.
    pub other: Option<String>,
    /// When the last listing ended.
    pub listed_at: Option<Ts>,
}

/// What discovery's guard decides about retiring.
#[derive(Debug, Clone, Copy)]
pub struct RetirePolicy {
    /// The listing was complete (not partial, every record read): only then may it retire.
    pub complete: bool,
    pub max_fraction: f64,
}

/// Why a listing must not retire `missing` of `known` accounts, if it must not (pure).
pub fn retire_guard(missing: u64, known: u64, listed: u64, policy: RetirePolicy) -> Option<String> {
    if missing == 0 {
        return None;
    }
    if !policy.complete {
        return Some(format!(
            "the listing was not complete; {missing} accounts it did not show were not retired"
        ));
    }
    if listed == 0 {
        return Some(format!(
            "the listing showed no accounts while {known} are known; none was retired"
        ));
    }
    if missing as f64 > policy.max_fraction * known as f64 {
        return Some(format!(
            "the listing would retire {missing} of {known} accounts, more than the allowed share ({:.0}%); none was retired. \
             If this is right, `lms-sync accounts discover --retire-missing` retires them (once; with --dry-run first, it \
             names them)",
            policy.max_fraction * 100.0
        ));
    }
    None
}

/// SQL: an `accounts` row due to be purged, `$1` seconds after its retirement (by the database's
/// clock): discovered and no longer listed (an account configured in `[[accounts]]` is synced
/// whatever its `retired_at`), and not protected. [`Store::retired_for`] lists them,
/// [`Store::purge_summary`] counts them.
macro_rules! due_for_purge {
    () => {
        "source = 'discovered' AND protected_at IS NULL
         AND retired_at < now() - make_interval(secs => $1)"
    };
}

impl Store {
    /// Every account of the registry.
    pub async fn registry(&self) -> Result<Vec<AccountRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT integrated_account_id, tenant_id, label, source, truto_status, integration,
                    coalesce(is_sandbox, false), paused, retired_at, sync_requested_at,
                    first_seen_at, last_seen_at, protected_at, allow_deletes_requested,
                    paused_until
               FROM accounts ORDER BY integrated_account_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let source: String = r.get(3);
                Ok(AccountRow {
                    integrated_account_id: r.get(0),
                    tenant_id: r.get(1),
                    label: r.get(2),
                    source: AccountSource::parse(&source)
                        .ok_or(StoreError::Unknown("account source", source))?,
                    truto_status: r.get(4),
                    integration: r.get(5),
                    is_sandbox: r.get(6),
                    paused: r.get(7),
                    retired_at: r.get(8),
                    sync_requested_at: r.get(9),
                    first_seen_at: r.get(10),
                    last_seen_at: r.get(11),
                    protected_at: r.get(12),
                    allow_deletes: r.get(13),
                    paused_until: r.get(14),
                })
            })
            .collect()
    }

    /// Registers the `[[accounts]]` as configured accounts (with their labels).
    pub async fn register_configured(
        &self,
        accounts: &[AccountSettings],
    ) -> Result<(), StoreError> {
        let ids: Vec<Uuid> = accounts.iter().map(|a| a.integrated_account_id).collect();
        let labels: Vec<Option<&str>> = accounts.iter().map(|a| a.label.as_deref()).collect();
        sqlx::query(
            "INSERT INTO accounts (integrated_account_id, label, source)
             SELECT t.id, t.label, 'config' FROM unnest($1::uuid[], $2::text[]) AS t(id, label)
             ON CONFLICT (integrated_account_id) DO UPDATE
                SET source = 'config', label = coalesce(excluded.label, accounts.label)
              WHERE accounts.source <> 'config' OR accounts.label IS DISTINCT FROM excluded.label",
        )
        .bind(&ids)
        .bind(&labels)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Applies one listing of integrated accounts: registers new ones, updates what Truto says
    /// of known ones (and brings back retired ones it lists again), retires discovered accounts
    /// it no longer lists unless the guard refuses, and gates health on Truto's status. One
    /// transaction; the outcome is also kept in `discovery_state`.
    /// With `dry_run`, the transaction is rolled back: what it would do, exactly, changing
    /// nothing.
    pub async fn apply_discovery(
        &self,
        listed: &[Discovered],
        policy: RetirePolicy,
        environment: ListedEnvironment<'_>,
        dry_run: bool,
    ) -> Result<DiscoveryApplied, StoreError> {
        // Made again after a deadlock (a steering command locking the same rows in another
        // order), a lost connection or a session left read-only by a spell of the database
        // taking no writes: else the listing's requests were spent for nothing, and the next is
        // made after `discovery.retry_initial`. The listing applies the same however often.
        super::thrice(|| self.apply_discovery_once(listed, policy, environment, dry_run)).await
    }

    async fn apply_discovery_once(
        &self,
        listed: &[Discovered],
        policy: RetirePolicy,
        environment: ListedEnvironment<'_>,
        dry_run: bool,
    ) -> Result<DiscoveryApplied, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Locked for the transaction: a listing made meanwhile with another token waits, and
        // then compares with what this one recorded.
        let follows = followed_environment(&mut tx, "FOR UPDATE").await?;
        let adopted_from = match other_environment(follows.as_deref(), environment.id) {
            Some(refused) if !environment.adopt => {
                tx.rollback().await?;
                return Err(refused);
            }
            Some(_) => follows.clone(),
            None => None,
        };
        let mut out = upsert_listed(&mut tx, listed).await?;
        out.environment = environment.id.map(str::to_string).or(follows);
        out.adopted_from = adopted_from;
        retire_missing(&mut tx, listed, policy, &mut out).await?;
        gate_health(&mut tx, listed).await?;
        sqlx::query(
            "INSERT INTO discovery_state (singleton, listed_at, succeeded_at, accounts_listed, added,
                                          retired, unretired, retire_guard, error, environment_id)
             VALUES (true, now(), CASE WHEN $6 THEN now() END, $1, $2, $3, $4, $5, NULL, $7)
             ON CONFLICT (singleton) DO UPDATE
                SET listed_at = now(),
                    succeeded_at = CASE WHEN $6 THEN now() ELSE discovery_state.succeeded_at END,
                    accounts_listed = $1, added = $2, retired = $3, unretired = $4,
                    retire_guard = $5, error = NULL, failures = 0,
                    environment_id = coalesce($7, discovery_state.environment_id),
                    other_environment_id = NULL",
        )
        .bind(out.listed as i32)
        .bind(out.added as i32)
        .bind(out.retired as i32)
        .bind(out.unretired as i32)
        .bind(&out.retire_guard)
        .bind(policy.complete)
        .bind(environment.id)
        .execute(&mut *tx)
        .await?;
        if dry_run {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(out)
    }

    /// Notes a webhook event id; `false` when it was processed before (a replay). Ids older
    /// than a day are forgotten on the way.
    pub async fn first_delivery(&self, event_id: &str, event: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM webhook_events WHERE received_at < now() - interval '1 day'")
            .execute(&mut *tx)
            .await?;
        let new = sqlx::query(
            "INSERT INTO webhook_events (event_id, event) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(event_id)
        .bind(event)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(new)
    }

    /// Forgets a webhook event id noted by [`Store::first_delivery`] whose event could not be
    /// applied, so that a later delivery of it is not taken for a replay.
    pub async fn forget_delivery(&self, event_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM webhook_events WHERE event_id = $1")
            .bind(event_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The webhook deliveries verified in the last 24 h (the ids kept to tell replays), and the
    /// last one ever kept: when and which event.
    pub async fn webhook_deliveries(&self) -> Result<WebhookDeliveries, StoreError> {
        let (last_day, at, event): (i64, Option<Ts>, Option<String>) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM webhook_events
                      WHERE received_at > now() - interval '1 day'),
                    w.received_at, w.event
               FROM (SELECT 1) one
               LEFT JOIN LATERAL (SELECT received_at, event FROM webhook_events
                                   ORDER BY received_at DESC LIMIT 1) w ON true",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(WebhookDeliveries {
            last_day,
            last: at.zip(event),
        })
    }

    /// One account as an event says it is now (registered when new, gated like a listing);
    /// `wanted` asks for a run at once, as does an account new or newly active (connected,
    /// reauthorized, back from retirement or from `not_found`), as a listing would. Returns
    /// whether this event asked for a run. An account of another
    /// Truto environment than the registry follows is refused, as its listing would be
    /// ([`StoreError::OtherEnvironment`]).
    ///
    /// Made again (three times in all) after a deadlock, a lost connection or a session left
    /// read-only: an event not applied waits for the next listing (a webhook is answered
    /// before Truto would deliver it again), and it is the same however often it is applied.
    pub async fn account_event(
        &self,
        account: &Discovered,
        wanted: bool,
    ) -> Result<bool, StoreError> {
        super::thrice(|| self.account_event_once(account, wanted)).await
    }

    async fn account_event_once(
        &self,
        account: &Discovered,
        wanted: bool,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if account.environment_id.is_some() {
            let follows = followed_environment(&mut tx, "FOR SHARE").await?;
            let listed = account.environment_id.as_deref();
            if let Some(refused) = other_environment(follows.as_deref(), listed) {
                tx.rollback().await?;
                return Err(refused);
            }
        }
        upsert_listed(&mut tx, std::slice::from_ref(account)).await?;
        gate_health(&mut tx, std::slice::from_ref(account)).await?;
        let requested = if wanted {
            sqlx::query(
                "UPDATE accounts SET sync_requested_at = now() WHERE integrated_account_id = $1",
            )
            .bind(account.id)
            .execute(&mut *tx)
            .await?;
            true
        } else {
            // Asked for by the listing's rules above, in this transaction: `now()` is its
            // start, so a request made by an earlier one differs.
            sqlx::query_scalar::<_, Option<bool>>(
                "SELECT sync_requested_at = now() FROM accounts WHERE integrated_account_id = $1",
            )
            .bind(account.id)
            .fetch_one(&mut *tx)
            .await?
            .unwrap_or(false)
        };
        tx.commit().await?;
        Ok(requested)
    }

    /// Retires one account (Truto says it was deleted). `false` when it is not registered.
    pub async fn retire(&self, account: Uuid) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "UPDATE accounts SET retired_at = coalesce(retired_at, now()) WHERE integrated_account_id = $1",
        )
        .bind(account)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    /// Records that a listing failed (the registry is left as it was), and counts it among
    /// the failures in a row; returns that count. `other`: the environment it showed when that
    /// was not the followed one (kept through later failures, until a listing succeeds).
    pub async fn discovery_failed(
        &self,
        error: &str,
        other: Option<&str>,
    ) -> Result<u32, StoreError> {
        let failures: i32 = sqlx::query_scalar(
            "INSERT INTO discovery_state (singleton, listed_at, error, failures,
                                          other_environment_id)
             VALUES (true, now(), $1, 1, $2)
             ON CONFLICT (singleton) DO UPDATE
                SET listed_at = now(), error = $1,
                    failures = CASE WHEN discovery_state.error IS NULL THEN 1
                                    ELSE discovery_state.failures + 1 END,
                    other_environment_id = coalesce($2, discovery_state.other_environment_id)
             RETURNING failures",
        )
        .bind(error)
        .bind(other)
        .fetch_one(&self.pool)
        .await?;
        Ok(failures.max(1) as u32)
    }

    /// The Truto environment the registry follows, and the other one a listing showed since
    /// the last that succeeded, with when the last listing ended: what each process checks
    /// its own API token against. `None` before any listing.
    pub async fn environments(&self) -> Result<Option<Environments>, StoreError> {
        let row: Option<(Option<String>, Option<String>, Option<Ts>)> = sqlx::query_as(
            "SELECT environment_id, other_environment_id, listed_at FROM discovery_state",
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(follows, other, listed_at)| Environments {
            follows,
            other,
            listed_at,
        }))
    }

    /// How long until the next listing is due: [`DiscoverySettings::next_listing_after`] the
    /// last one ended (an interval, or less after failures), whoever made it (this process,
    /// another replica, a one-off `sync`), counted in the database's time so that hosts' clocks
    /// do not matter. `retry_now`: a last listing that failed is due at once (what made it fail
    /// may be gone: Truto answers this process again). Zero when it is due or none was made.
    pub async fn discovery_due_in(
        &self,
        settings: &DiscoverySettings,
        retry_now: bool,
    ) -> Result<std::time::Duration, StoreError> {
        let row: Option<(Option<f64>, i32)> = sqlx::query_as(
            "SELECT EXTRACT(EPOCH FROM now() - listed_at)::float8,
                    CASE WHEN error IS NULL THEN 0 ELSE greatest(failures, 1) END
             FROM discovery_state",
        )
        .fetch_optional(&self.pool)
        .await?;
        let Some((Some(elapsed), failures)) = row else {
            return Ok(std::time::Duration::ZERO);
        };
        if retry_now && failures > 0 {
            return Ok(std::time::Duration::ZERO);
        }
        let after = settings.next_listing_after(failures as u32).as_secs_f64();
        Ok(std::time::Duration::from_secs_f64(
            (after - elapsed).clamp(0.0, after),
        ))
    }

    /// The last listing (see [`DiscoveryState`]).
    pub async fn discovery_state(&self) -> Result<Option<DiscoveryState>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT listed_at, succeeded_at, accounts_listed, retire_guard, error,
                    CASE WHEN error IS NULL THEN 0 ELSE greatest(failures, 1) END,
                    environment_id
               FROM discovery_state",
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// One operator's change of the registry for `accounts`, all of them or none, in one
    /// transaction that tells the trigger of `accounts` (migration 0028) who it is made for and
    /// why, for `account_actions` (a row for each account it changes). Returns the accounts the
    /// registry does not have: when there are any, nothing changed.
    ///
    /// Tried again (three times in all) after a deadlock or a lost connection: a listing
    /// applied meanwhile locks the same rows in Truto's order, and the change is the same
    /// however often it is made (the trigger records only what changes).
    pub async fn steer(
        &self,
        accounts: &[Uuid],
        what: Steer,
        by: &Acting,
    ) -> Result<Vec<Uuid>, StoreError> {
        super::thrice(|| self.steer_once(accounts, what, by)).await
    }

    async fn steer_once(
        &self,
        accounts: &[Uuid],
        what: Steer,
        by: &Acting,
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut tx = self.pool.begin().await?;
        acting_in(&mut tx, by).await?;
        // In the registry's order, so that two operators' overlapping changes take the rows'
        // locks in the same order and never deadlock.
        let sql = format!(
            "UPDATE accounts SET {} FROM (SELECT integrated_account_id FROM accounts
                    WHERE integrated_account_id = ANY($1)
                    ORDER BY integrated_account_id FOR UPDATE) AS chosen
              WHERE accounts.integrated_account_id = chosen.integrated_account_id
              RETURNING accounts.integrated_account_id",
            what.set()
        );
        let mut update = sqlx::query_scalar(&sql).bind(accounts);
        if let Steer::Pause { until } = what {
            update = update.bind(until);
        }
        let changed: Vec<Uuid> = update.fetch_all(&mut *tx).await?;
        let changed: std::collections::HashSet<Uuid> = changed.into_iter().collect();
        let missing: Vec<Uuid> = accounts
            .iter()
            .filter(|a| !changed.contains(a))
            .copied()
            .collect();
        if missing.is_empty() {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(missing)
    }

    /// Resumes the accounts whose pause was set to end (`accounts pause --until`) by now, as
    /// the database's clock says, recorded in `account_actions` as resumed `by`; returns them.
    /// Replicas doing it at once resume each account once.
    pub async fn end_lapsed_pauses(&self, by: &Acting) -> Result<Vec<Uuid>, StoreError> {
        let mut tx = self.pool.begin().await?;
        acting_in(&mut tx, by).await?;
        let resumed: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE accounts SET paused = false, paused_until = NULL
              WHERE paused AND paused_until <= now()
          RETURNING integrated_account_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(resumed)
    }

    /// The account's latest `limit` actions (`account_actions`), newest first.
    pub async fn account_actions(
        &self,
        account: Uuid,
        limit: i64,
    ) -> Result<Vec<AccountAction>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT acted_at, action, actor, db_user, application, reason
               FROM account_actions WHERE integrated_account_id = $1
              ORDER BY action_id DESC LIMIT $2",
        )
        .bind(account)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Who paused each paused account (of `only`, or every one), when and why: its latest
    /// `pause`, or `pause_end` (the pause given another end: who set its terms last), in
    /// `account_actions`. An account paused before that table existed has none.
    pub async fn pauses(&self, only: Option<Uuid>) -> Result<Vec<Paused>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT DISTINCT ON (a.integrated_account_id) a.integrated_account_id, x.acted_at,
                    coalesce(x.actor, x.db_user) AS actor, x.reason
               FROM accounts a
               JOIN account_actions x ON x.integrated_account_id = a.integrated_account_id
                                     AND x.action IN ('pause', 'pause_end')
              WHERE a.paused AND ($1::uuid IS NULL OR a.integrated_account_id = $1)
              ORDER BY a.integrated_account_id, x.action_id DESC",
        )
        .bind(only)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The operators' actions of the last `hours` hours across the fleet, newest first, at
    /// most `limit`: one transaction's action on many accounts is one [`ActionGroup`] (a
    /// tenant's accounts paused at once are one line, not fifty). Reads only the latest
    /// `RECENT_ACTIONS_READ` rows, by the primary key, so that its cost does not grow with
    /// the table.
    pub async fn recent_actions(
        &self,
        hours: i32,
        limit: i64,
    ) -> Result<Vec<ActionGroup>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT acted_at, action, coalesce(actor, db_user) AS actor, reason,
                    count(*) AS accounts, min(integrated_account_id::text)::uuid AS one_account
               FROM (SELECT acted_at, action, actor, db_user, reason, integrated_account_id
                       FROM account_actions ORDER BY action_id DESC LIMIT $3) AS latest
              WHERE acted_at > now() - make_interval(hours => $1)
              GROUP BY acted_at, action, coalesce(actor, db_user), reason
              ORDER BY acted_at DESC, action
              LIMIT $2",
        )
        .bind(hours)
        .bind(limit)
        .bind(RECENT_ACTIONS_READ)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Deletes every row of a retired account, table by table, and records it in
    /// `account_purges` (with `by`), all in one transaction that holds the account's registry
    /// row: a listing or a webhook that brings the account back waits for it and then registers
    /// the account anew, so it is never half purged. Holds the account's lease meanwhile, so
    /// that no run writes its rows as they go ([`StoreError::PurgeBusy`] when a process holds it).
    pub async fn purge(&self, account: Uuid, by: PurgedBy) -> Result<Purged, StoreError> {
        let Some(lease) = self.try_lease(account).await? else {
            return Err(StoreError::PurgeBusy(account));
        };
        let out = self.purge_leased(account, by).await;
        lease.release().await;
        out
    }

    async fn purge_leased(&self, account: Uuid, by: PurgedBy) -> Result<Purged, StoreError> {
        let mut tx = self.pool.begin().await?;
        type Row = (
            Option<Ts>,
            Option<String>,
            Option<String>,
            Option<String>,
            Ts,
            Option<Ts>,
        );
        // Retired means discovered and no longer listed: an account configured in
        // `[[accounts]]` is synced whatever its `retired_at` (one retired, then configured,
        // keeps it), so it is never purged.
        let row: Option<Row> = sqlx::query_as(
            "SELECT CASE WHEN source = 'discovered' THEN retired_at END, tenant_id, label,
                    integration, first_seen_at, protected_at
               FROM accounts WHERE integrated_account_id = $1 FOR UPDATE",
        )
        .bind(account)
        .fetch_optional(&mut *tx)
        .await?;
        let (retired_at, tenant, label, integration, first_seen) = match row {
            None => return Err(StoreError::NoSuchAccount(account)),
            Some((None, ..)) => return Err(StoreError::NotRetired(account)),
            Some((.., Some(since))) => return Err(StoreError::Protected { account, since }),
            Some((Some(at), tenant, label, integration, first_seen, None)) => {
                (at, tenant, label, integration, first_seen)
            }
        };
        let mut counts = Vec::new();
        // Children first (no foreign keys hold them to their users), then the rest. One
        // statement each: inside one transaction, batches would only add round trips.
        for table in PURGED_TABLES {
            let n = sqlx::query(&format!(
                "DELETE FROM {table} WHERE integrated_account_id = $1"
            ))
            .bind(account)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            counts.push((*table, n));
        }
        let total: u64 = counts.iter().map(|(_, n)| n).sum();
        let by_table: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|(t, n)| (t.to_string(), (*n).into()))
            .collect();
        let purged_at: Ts = sqlx::query_scalar(
            "INSERT INTO account_purges (integrated_account_id, tenant_id, label, integration,
                                         first_seen_at, retired_at, purged_by, rows_deleted,
                                         rows_by_table)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)
             RETURNING purged_at",
        )
        .bind(account)
        .bind(&tenant)
        .bind(&label)
        .bind(&integration)
        .bind(first_seen)
        .bind(retired_at)
        .bind(by.as_str())
        .bind(total as i64)
        .bind(serde_json::Value::Object(by_table).to_string())
        .fetch_one(&mut *tx)
        .await?;
        crate::failpoint::point("purge_tx").await;
        tx.commit().await?;
        Ok(Purged {
            counts,
            retired_at,
            purged_at,
        })
    }

    /// Purges in the last 24 hours, the latest purge's time, and how many retired accounts
    /// are due (retired longer than `after`), as of the database's clock.
    pub async fn purge_summary(
        &self,
        after: std::time::Duration,
    ) -> Result<PurgeSummary, StoreError> {
        let (last_day, last, due): (i64, Option<Ts>, i64) = sqlx::query_as(concat!(
            "SELECT (SELECT count(*) FROM account_purges WHERE purged_at > now() - interval '1 day'),
                    (SELECT max(purged_at) FROM account_purges),
                    (SELECT count(*) FROM accounts WHERE ",
            due_for_purge!(),
            ")"
        ))
        .bind(after.as_secs_f64())
        .fetch_one(&self.pool)
        .await?;
        Ok(PurgeSummary {
            after,
            last_day,
            last,
            due,
        })
    }

    /// The retired accounts (discovered, no longer listed) whose retirement is older than `age`
    /// (by the database's clock), the longest retired first.
    pub async fn retired_for(&self, age: std::time::Duration) -> Result<Vec<Uuid>, StoreError> {
        Ok(sqlx::query_scalar(concat!(
            "SELECT integrated_account_id FROM accounts WHERE ",
            due_for_purge!(),
            " ORDER BY retired_at"
        ))
        .bind(age.as_secs_f64())
        .fetch_all(&self.pool)
        .await?)
    }
}

/// Every table holding an account's rows, in the order a purge empties them.
const PURGED_TABLES: &[&str] = &[
    "user_emails",
    "user_phones",
    "user_managers",
    "users",
    "user_changes",
    "history_pruned",
    "hydration_queue",
    "rejected_records",
    "sync_runs",
    "daily_user_counts",
    "unknown_enum_values",
    "rate_account_windows",
    "sync_state",
    "accounts",
];

/// An operator's change of an account in the registry ([`Store::steer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steer {
    /// Start no run of it (a run under way finishes its page and stops), until a resume or,
    /// given `until`, until then (the service resumes it: [`Store::end_lapsed_pauses`]).
    Pause {
        until: Option<Ts>,
    },
    Resume,
    /// Run it at once, whatever its schedule.
    SyncNow,
    /// Start its next run from the first page.
    ResetCursor,
    /// Let its next complete, fresh listing delete whatever it no longer lists, past the delete
    /// guard (once), and run it at once.
    AllowDeletes,
    /// Keep its data from any purge (a legal hold); protecting again keeps the first time.
    Protect,
    Unprotect,
}

impl Steer {
    /// The `SET` clause of `accounts` that makes it.
    fn set(self) -> &'static str {
        match self {
            Steer::Pause { .. } => "paused = true, paused_until = $2",
            Steer::Resume => "paused = false, paused_until = NULL",
            Steer::SyncNow => "sync_requested_at = now()",
            Steer::ResetCursor => "reset_cursor_requested = true",
            Steer::AllowDeletes => "allow_deletes_requested = true, sync_requested_at = now()",
            Steer::Protect => "protected_at = coalesce(protected_at, now())",
            Steer::Unprotect => "protected_at = NULL",
        }
    }
}

/// Who an operator's change of the registry is made for, and why: what `account_actions`
/// records beside the session's role (the trigger of migration 0028 reads both).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acting {
    /// E.g. `lms-sync accounts pause by ops@bastion`, `the admin API from 10.0.0.7`.
    pub actor: String,
    /// As the operator gave it (`--reason`, `?reason=`).
    pub reason: Option<String>,
}

/// The longest reason kept with an action, in characters.
pub const REASON_MAX_CHARS: usize = 500;

impl Acting {
    /// `actor` acting for `reason`, which must be one line of at most [`REASON_MAX_CHARS`]
    /// characters (it is shown on the status page and in `accounts show`); blank is none.
    pub fn new(actor: String, reason: Option<&str>) -> Result<Acting, String> {
        let reason = reason.map(str::trim).filter(|r| !r.is_empty());
        if let Some(r) = reason {
            if r.chars().count() > REASON_MAX_CHARS {
                return Err(format!(
                    "the reason is {} characters long; at most {REASON_MAX_CHARS}",
                    r.chars().count()
                ));
            }
            if r.chars().any(char::is_control) {
                return Err(
                    "the reason must be one line of text, without control characters".into(),
                );
            }
        }
        Ok(Acting {
            actor,
            reason: reason.map(str::to_string),
        })
    }
}

/// One row of `account_actions`.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct AccountAction {
    pub acted_at: Ts,
    pub action: String,
    pub actor: Option<String>,
    pub db_user: String,
    pub application: Option<String>,
    pub reason: Option<String>,
}

/// Who paused a paused account, when and why (`Store::pauses`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Paused {
    pub integrated_account_id: Uuid,
    pub acted_at: Ts,
    /// `actor`, or for plain SQL the session's role.
    pub actor: String,
    pub reason: Option<String>,
}

/// How many of the latest `account_actions` rows [`Store::recent_actions`] reads at most.
pub const RECENT_ACTIONS_READ: i64 = 20_000;

/// One operator's action in one transaction, on one account or many (`Store::recent_actions`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ActionGroup {
    pub acted_at: Ts,
    pub action: String,
    /// `actor`, or for plain SQL the session's role.
    pub actor: String,
    pub reason: Option<String>,
    /// How many accounts it acted on.
    pub accounts: i64,
    /// One of them (the only one when `accounts` is 1).
    pub one_account: Uuid,
}

/// What the status page says of the webhook deliveries (with the receiver on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDeliveries {
    /// Deliveries verified in the last 24 hours (duplicates and stale ones aside).
    pub last_day: i64,
    /// The last one kept: when it came, and its event (kept a day, or until the next comes).
    pub last: Option<(Ts, String)>,
}

/// What `status` and the status page say of the purges (`discovery.purge_retired_after`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeSummary {
    /// `discovery.purge_retired_after`.
    pub after: std::time::Duration,
    /// Accounts purged in the last 24 hours (by the command or the service).
    pub last_day: i64,
    /// The latest purge.
    pub last: Option<Ts>,
    /// Retired accounts due to be purged (at the next complete listing).
    pub due: i64,
}

/// Who purged an account (`account_purges.purged_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PurgedBy {
    /// `lms-sync accounts purge`.
    Command,
    /// The service, once the account had been retired for `discovery.purge_retired_after`.
    Service,
}

impl PurgedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            PurgedBy::Command => "command",
            PurgedBy::Service => "service",
        }
    }
}

/// What a purge deleted.
#[derive(Debug, Clone)]
pub struct Purged {
    /// Rows deleted per table, in the order they were.
    pub counts: Vec<(&'static str, u64)>,
    pub retired_at: Ts,
    pub purged_at: Ts,
}

impl Purged {
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|(_, n)| n).sum()
    }
}

/// The last listing, as `status` shows it: listed_at, succeeded_at, accounts listed, retire
/// guard, error, failed listings in a row (0 when the last did not fail), the Truto
/// environment the registry follows.
pub type DiscoveryState = (
    Option<Ts>,
    Option<Ts>,
    Option<i32>,
    Option<String>,
    Option<String>,
    i32,
    Option<String>,
);

/// Tells the trigger of `accounts` (migration 0028) who the transaction's changes are made for,
/// and why, for `account_actions`.
async fn acting_in(tx: &mut Transaction<'_, Postgres>, by: &Acting) -> Result<(), StoreError> {
    sqlx::query(
        "SELECT set_config('lms_sync.actor', $1, true),
                set_config('lms_sync.reason', coalesce($2, ''), true)",
    )
    .bind(&by.actor)
    .bind(&by.reason)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Registers or updates the listed accounts; counts the new and the brought back.
async fn upsert_listed(
    tx: &mut Transaction<'_, Postgres>,
    listed: &[Discovered],
) -> Result<DiscoveryApplied, StoreError> {
    let ids: Vec<Uuid> = listed.iter().map(|a| a.id).collect();
    let (added, unretired): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM unnest($1::uuid[]) AS t(id)
                  WHERE NOT EXISTS (SELECT 1 FROM accounts a WHERE a.integrated_account_id = t.id)),
                (SELECT count(*) FROM accounts
                  WHERE integrated_account_id = ANY($1) AND retired_at IS NOT NULL)",
    )
    .bind(&ids)
    .fetch_one(&mut **tx)
    .await?;
    let tenants: Vec<Option<&str>> = listed.iter().map(|a| a.tenant_id.as_deref()).collect();
    let statuses: Vec<Option<&str>> = listed.iter().map(|a| a.status.as_deref()).collect();
    let integrations: Vec<Option<&str>> = listed.iter().map(|a| a.integration.as_deref()).collect();
    let sandbox: Vec<bool> = listed.iter().map(|a| a.is_sandbox).collect();
    sqlx::query(
        // An account that is new, or newly active (connected, reauthorized, back from
        // retirement), is asked to run at once rather than at its next slot.
        "INSERT INTO accounts (integrated_account_id, tenant_id, truto_status, integration,
                               is_sandbox, source, sync_requested_at)
         SELECT t.id, t.tenant, t.status, t.integration, t.sandbox, 'discovered',
                CASE WHEN t.status = 'active' THEN now() END
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bool[])
                AS t(id, tenant, status, integration, sandbox)
         ON CONFLICT (integrated_account_id) DO UPDATE
            SET tenant_id = excluded.tenant_id, truto_status = excluded.truto_status,
                integration = excluded.integration, is_sandbox = excluded.is_sandbox,
                sync_requested_at = CASE
                    WHEN excluded.truto_status = 'active'
                     AND (accounts.truto_status IS DISTINCT FROM 'active' OR accounts.retired_at IS NOT NULL)
                    THEN now() ELSE accounts.sync_requested_at END,
                retired_at = NULL, last_seen_at = now()",
    )
    .bind(&ids)
    .bind(&tenants)
    .bind(&statuses)
    .bind(&integrations)
    .bind(&sandbox)
    .execute(&mut **tx)
    .await?;
    Ok(DiscoveryApplied {
        listed: listed.len() as u64,
        added: added as u64,
        unretired: unretired as u64,
        ..DiscoveryApplied::default()
    })
}

/// Retires the discovered accounts the listing no longer shows, unless the guard refuses.
async fn retire_missing(
    tx: &mut Transaction<'_, Postgres>,
    listed: &[Discovered],
    policy: RetirePolicy,
    out: &mut DiscoveryApplied,
) -> Result<(), StoreError> {
    let ids: Vec<Uuid> = listed.iter().map(|a| a.id).collect();
    let (known, missing): (i64, Vec<Uuid>) = sqlx::query_as(
        "SELECT count(*),
                coalesce(array_agg(integrated_account_id ORDER BY integrated_account_id)
                             FILTER (WHERE NOT integrated_account_id = ANY($1)), '{}')
           FROM accounts WHERE source = 'discovered' AND retired_at IS NULL",
    )
    .bind(&ids)
    .fetch_one(&mut **tx)
    .await?;
    out.retire_guard = retire_guard(missing.len() as u64, known as u64, out.listed, policy);
    let nothing = missing.is_empty() || out.retire_guard.is_some();
    out.missing = missing;
    if nothing {
        return Ok(());
    }
    out.retired = sqlx::query(
        "UPDATE accounts SET retired_at = now()
          WHERE source = 'discovered' AND retired_at IS NULL AND NOT integrated_account_id = ANY($1)",
    )
    .bind(&ids)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(())
}

/// Truto's status says what a request would find: `needs_reauth` marks the account's health
/// without spending a request; `active` again clears it and asks for a run at once. `active`
/// clears `not_found` too: the listing or the event's GET was answered with the token the runs
/// use, so it knows the account now (say a token of another environment was replaced), and
/// the account need not wait hours for its next probe.
async fn gate_health(
    tx: &mut Transaction<'_, Postgres>,
    listed: &[Discovered],
) -> Result<(), StoreError> {
    let by_status = |s: &str| -> Vec<Uuid> {
        listed
            .iter()
            .filter(|a| a.status.as_deref() == Some(s))
            .map(|a| a.id)
            .collect()
    };
    sqlx::query(
        "INSERT INTO sync_state (integrated_account_id, health, health_since, health_reason, health_failures)
         SELECT t.id, $2, now(), 'Truto reports the integrated account as needs_reauth: the customer must re-authorize the integration in Truto', 1
           FROM unnest($1::uuid[]) AS t(id)
         ON CONFLICT (integrated_account_id) DO UPDATE
            SET health = excluded.health, health_since = now(), health_reason = excluded.health_reason,
                health_failures = sync_state.health_failures + 1
          WHERE sync_state.health <> excluded.health",
    )
    .bind(by_status("needs_reauth"))
    .bind(Health::NeedsReauth.as_str())
    .execute(&mut **tx)
    .await?;
    let back = by_status("active");
    // Not a vendor's own 404 (its site gone), which Truto listing the account cannot vouch for.
    sqlx::query(
        "WITH back AS (
             UPDATE sync_state SET health = $2, health_since = now(), health_reason = NULL, health_failures = 0
              WHERE integrated_account_id = ANY($1) AND health = ANY($3)
                AND (health <> $5 OR coalesce(strpos(health_reason, $4) > 0, true))
          RETURNING integrated_account_id)
         UPDATE accounts SET sync_requested_at = now()
          WHERE integrated_account_id IN (SELECT integrated_account_id FROM back)",
    )
    .bind(&back)
    .bind(Health::Ok.as_str())
    .bind([Health::NeedsReauth.as_str(), Health::NotFound.as_str()])
    .bind(crate::domain::TRUTO_404)
    .bind(Health::NotFound.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retire_guard_refuses_incomplete_empty_and_too_large_retirements() {
        let ok = RetirePolicy {
            complete: true,
            max_fraction: 0.5,
        };
        assert_eq!(retire_guard(0, 10, 10, ok), None);
        assert_eq!(retire_guard(5, 10, 5, ok), None);
        assert!(retire_guard(6, 10, 4, ok).unwrap().contains("6 of 10"));
        assert!(retire_guard(10, 10, 0, ok).unwrap().contains("no accounts"));
        let partial = RetirePolicy {
            complete: false,
            ..ok
        };
        assert!(retire_guard(1, 10, 9, partial)
            .unwrap()
            .contains("not complete"));
        assert_eq!(retire_guard(0, 10, 10, partial), None);
    }
}
