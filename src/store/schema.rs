//! The schema: applying migrations (as the schema's owner), and checking it without changing
//! it (for read-only commands and processes that run with DML rights only), including what a
//! binary does when a newer one has migrated the database.

use super::{Store, StoreError};
use crate::domain::BoxFuture;

/// Every migration this binary knows, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Where the database's schema stands against this binary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaState {
    /// Migrations this binary knows that are not applied.
    pub pending: Vec<i64>,
    /// Applied migrations this binary does not know, marked compatible with it.
    pub newer_compatible: Vec<i64>,
    /// Applied migrations this binary does not know and may not run against.
    pub newer_incompatible: Vec<i64>,
}

impl SchemaState {
    /// The newest migration this binary knows.
    pub fn known() -> i64 {
        MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
    }

    /// Ready for this binary: nothing pending, nothing newer that it cannot run against.
    pub fn ready(&self) -> Result<(), StoreError> {
        if !self.newer_incompatible.is_empty() {
            return Err(StoreError::Incompatible(self.newer_incompatible.clone()));
        }
        if !self.pending.is_empty() {
            return Err(StoreError::NotMigrated(self.pending.clone()));
        }
        Ok(())
    }
}

impl Store {
    /// Reads where the schema stands, without changing anything.
    pub async fn schema_state(&self) -> Result<SchemaState, StoreError> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        let applied: Vec<i64> = if exists {
            sqlx::query_scalar(
                "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
            )
            .fetch_all(&self.pool)
            .await?
        } else {
            Vec::new()
        };
        let mut state = SchemaState {
            pending: MIGRATOR
                .iter()
                .map(|m| m.version)
                .filter(|v| !applied.contains(v))
                .collect(),
            ..SchemaState::default()
        };
        let newer: Vec<i64> = applied
            .into_iter()
            .filter(|v| !MIGRATOR.iter().any(|m| m.version == *v))
            .collect();
        if newer.is_empty() {
            return Ok(state);
        }
        // A migration newer than migration_compat itself always has a row when it is
        // compatible; one without (or a database without the table) is not.
        let compat: Vec<(i64, i64)> =
            sqlx::query_as("SELECT version, oldest_compatible FROM migration_compat")
                .fetch_all(&self.pool)
                .await
                .unwrap_or_default();
        let known = SchemaState::known();
        for v in newer {
            match compat.iter().find(|(version, _)| *version == v) {
                Some((_, oldest)) if *oldest <= known => state.newer_compatible.push(v),
                _ => state.newer_incompatible.push(v),
            }
        }
        Ok(state)
    }

    /// Creates the schema when missing and applies pending migrations. Refuses a database
    /// migrated by a newer binary unless its newer migrations are marked compatible. Safe to
    /// run from several processes at once: sqlx serializes migrations with an advisory lock.
    ///
    /// Boxed as `Send` on purpose: it lets callers hold this future inside spawned tasks
    /// (rustc cannot prove sqlx's migrator future `Send` through an `async fn` otherwise).
    pub fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.migrate_inner())
    }

    async fn migrate_inner(&self) -> Result<(), StoreError> {
        // IMPORTANT: the schema name is spliced into SQL; validate_schema_name() allows only
        // [a-z_][a-z0-9_]*, and it is quoted besides.
        let create = format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", self.schema);
        if let Err(e) = sqlx::query(&create).execute(&self.pool).await {
            // Two processes creating it at once: one loses with a unique violation; fine.
            let raced = matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505") || d.code().as_deref() == Some("42P06"));
            if !raced {
                return Err(e.into());
            }
        }
        let state = self.schema_state().await?;
        if !state.newer_incompatible.is_empty() {
            return Err(StoreError::Incompatible(state.newer_incompatible));
        }
        let mut migrator = sqlx::migrate::Migrator {
            migrations: MIGRATOR.migrations.clone(),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        // Newer migrations marked compatible are left as they are.
        migrator.set_ignore_missing(true);
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// Makes the schema ready for this binary: migrates when `migrate`, otherwise only checks
    /// (a process with DML rights only, or a read-only command).
    pub async fn prepare(&self, migrate: bool) -> Result<(), StoreError> {
        if migrate {
            self.migrate().await
        } else {
            self.schema_state().await?.ready()
        }
    }

    /// True when every migration this binary knows is applied and nothing newer forbids it.
    pub async fn migrations_applied(&self) -> Result<bool, StoreError> {
        Ok(self.schema_state().await?.ready().is_ok())
    }
}
