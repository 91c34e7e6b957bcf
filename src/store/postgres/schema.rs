//! The schema: the migrations embedded in the binary (`migrations/`),
//! applied under an advisory lock so that instances starting together do
//! not race, and the health check that PostgreSQL is up to date.

use std::time::Duration;

use deadpool_postgres::Object;

use super::PostgresStore;
use super::session::{describe, pg, unavailable};
use crate::store::StoreError;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Our own history table, not refinery's default name: another application
/// sharing the database may use refinery too, and each would take the
/// other's migrations for missing ones.
const MIGRATION_TABLE: &str = "progressd_schema_history";

/// Key of the session advisory lock held while migrating (`progress` in ASCII).
const MIGRATION_LOCK: i64 = 0x7072_6f67_7265_7373;

/// Bound on waiting for the migration lock and applying the migrations. Longer
/// than the per-query timeout: another instance may be migrating, and DDL on
/// a large table takes what it takes.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(60);

/// What the health probe says of a reachable PostgreSQL whose schema is
/// not up to date yet.
pub const MIGRATIONS_PENDING: &str = "reachable, but its migrations have not run yet";

impl PostgresStore {
    /// Applies the embedded migrations under a Postgres advisory lock, so
    /// that several instances starting at once do not race: the others wait,
    /// then find nothing left to apply.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let object = tokio::time::timeout(self.timeout, self.pool.get())
            .await
            .map_err(|_| self.no_answer())?
            .map_err(|e| unavailable(describe(&e)))?;
        // This connection never goes back to the pool: the lock is held by the
        // session, and closing the session (also when the timeout below cuts
        // a migration short, which the server then rolls back) releases it.
        let mut client = Object::take(object);
        let attempt = async {
            client.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg)?;
            let mut runner = embedded::migrations::runner();
            runner.set_migration_table_name(MIGRATION_TABLE);
            runner.run_async(&mut *client).await.map_err(|e| unavailable(describe(&e)))?;
            Ok(())
        };
        tokio::time::timeout(MIGRATION_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(unavailable(format!("migrations did not finish within {MIGRATION_TIMEOUT:?}"))))
    }

    /// Up when PostgreSQL answers and this build's migrations have run.
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        let query = format!("SELECT max(version)::bigint FROM {MIGRATION_TABLE}");
        self.bounded(async {
            let db = self.session().await?;
            let applied = match db.query_one(&query, &[]).await {
                Ok(row) => row.get::<_, Option<i64>>(0).unwrap_or(0),
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => 0,
                Err(e) => return Err(pg(e)),
            };
            db.done();
            let latest = latest_migration();
            if applied < latest {
                return Err(unavailable(format!("{MIGRATIONS_PENDING} (schema version {applied} of {latest})")));
            }
            Ok(())
        })
        .await
    }
}

/// The newest migration this build carries.
fn latest_migration() -> i64 {
    static LATEST: std::sync::LazyLock<i64> = std::sync::LazyLock::new(|| {
        embedded::migrations::runner().get_migrations().iter().map(|m| i64::from(m.version())).max().unwrap_or(0)
    });
    *LATEST
}
