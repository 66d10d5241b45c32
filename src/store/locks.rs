//! Who of lms-sync waits for a lock, and who holds it. A run behind a DBA's `CREATE INDEX` or
//! an analyst's `LOCK TABLE` waits as long as they do, and nothing else shows it: the service
//! looks here and says so. Never a session's query text: it may hold personal data.

use chrono::{DateTime, Utc};

use super::{Store, StoreError};

/// A session of this database and `pg_stat_activity` row `a`, described for an operator:
/// pid, user, application, state, since when its transaction is open.
pub(super) const HOLDER: &str = "format('pid %s (%s)', a.pid, concat_ws(', ',
        'user ' || coalesce(a.usename::text, 'unknown'),
        'application ' || coalesce(nullif(a.application_name, ''), 'unnamed'),
        a.state,
        'its transaction open since '
            || to_char(a.xact_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
            || ' UTC'))";

/// A session of lms-sync waiting for a lock, as seen at one look.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct SessionLockWait {
    pub pid: i32,
    /// Its `application_name` (`lms-sync`, `lms-sync lease`, …): which of its sessions.
    pub application: String,
    /// When it began to wait for the lock.
    pub since: DateTime<Utc>,
    /// How long it has waited so far, in seconds.
    pub waited_secs: f64,
    /// What for: "a lock on table …", "rows of table … another transaction is changing", ….
    pub waiting_for: String,
    /// The sessions holding it (or ahead of it in the queue), described by `HOLDER`.
    pub holders: Vec<String>,
}

impl std::fmt::Display for SessionLockWait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} ({}) has waited {:.0} s for {}",
            self.pid, self.application, self.waited_secs, self.waiting_for
        )?;
        if !self.holders.is_empty() {
            write!(f, " held by {}", self.holders.join("; "))?;
        }
        Ok(())
    }
}

impl Store {
    /// The sessions of lms-sync (any process's: they share the application name's prefix) on
    /// this database that have waited at least `min_secs` for a lock, the longest first. Reads
    /// `pg_stat_activity` and `pg_locks` only: it queues behind nothing. Any role sees the
    /// waits (`pg_locks` and a session's pid, user and application are visible to all); a
    /// holder's state and transaction start show only to its own role or with
    /// `pg_read_all_stats`.
    pub async fn lock_waits(&self, min_secs: f64) -> Result<Vec<SessionLockWait>, StoreError> {
        let sql = format!(
            "SELECT w.pid, w.application_name AS application, l.since,
                    extract(epoch FROM now() - l.since)::float8 AS waited_secs,
                    CASE l.locktype
                        WHEN 'relation' THEN 'a lock on table ' || l.relation::regclass::text
                        WHEN 'tuple' THEN 'rows of table ' || l.relation::regclass::text
                                          || ' another transaction is changing'
                        WHEN 'transactionid' THEN 'rows another transaction is changing'
                        ELSE 'a lock (' || l.locktype || ')'
                    END AS waiting_for,
                    ARRAY(SELECT {HOLDER} FROM pg_stat_activity a
                           WHERE a.pid = ANY (pg_blocking_pids(w.pid)) ORDER BY a.pid) AS holders
               FROM pg_stat_activity w
               JOIN LATERAL (SELECT locktype, relation, waitstart AS since FROM pg_locks
                              WHERE pid = w.pid AND NOT granted LIMIT 1) l ON true
              WHERE w.datname = current_database()
                AND w.application_name LIKE '{prefix}%'
                AND l.since <= now() - make_interval(secs => $1)
              ORDER BY l.since, w.pid",
            prefix = super::POOL_APPLICATION_NAME,
        );
        Ok(sqlx::query_as(&sql)
            .bind(min_secs)
            .fetch_all(&self.pool)
            .await?)
    }
}
