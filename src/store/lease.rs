//! Leases: a process claims an account for a run with a PostgreSQL advisory lock held on a
//! connection of its own.

use sqlx::{ConnectOptions, Connection, PgConnection};
use uuid::Uuid;

use super::{Store, StoreError};

/// An exclusive claim on one account, held as a PostgreSQL advisory lock on a connection of its
/// own: it ends when released, when this value is dropped, or when the process or its
/// connection dies, so a crashed worker never blocks an account.
pub struct Lease {
    conn: Option<PgConnection>,
    keys: (i32, i32),
}

impl Lease {
    pub async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                .bind(self.keys.0)
                .bind(self.keys.1)
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
        }
    }
}

impl Store {
    /// Tries to lease `account`; `None` when another process holds it.
    pub async fn try_lease(&self, account: Uuid) -> Result<Option<Lease>, StoreError> {
        let mut conn = self.opts.connect().await?;
        let keys: (i32, i32) = sqlx::query_as("SELECT hashtext('lms-sync:' || $1), hashtext($2)")
            .bind(&self.schema)
            .bind(account.to_string())
            .fetch_one(&mut conn)
            .await?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(keys.0)
            .bind(keys.1)
            .fetch_one(&mut conn)
            .await?;
        if got {
            Ok(Some(Lease {
                conn: Some(conn),
                keys,
            }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }
}
