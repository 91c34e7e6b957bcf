//! The PostgreSQL durable tier, through deadpool-postgres.
//!
//! Table `progress` (schema in `migrations/`) holds one row per id: the exact
//! stored bytes of [`StoredRecord`] in `record`, and beside them copies of
//! the fields Postgres needs to guard, expire and list rows without parsing
//! the document (`version`, `status`, `created_at`, `updated_at`,
//! `expires_at`). A row past `expires_at` is absent to every read and guard,
//! whether or not cleanup has removed it yet.
//!
//! The files:
//! - `mod.rs`: the store, its settings, and [`ProgressStore`] for PostgreSQL.
//! - `pg_connect.rs`: the connection string (URL or libpq key=value) and TLS.
//! - `session.rs`: pooled connections, the time limit, error messages.
//! - `schema.rs`: the embedded migrations and the schema check.
//! - `queries.rs`: the SQL.
//! - `rows.rs`: rows to records and back.
//! - `fence.rs`: writes made while Redis is down, and the fence that ends them.
//! - `peers.rs`: heartbeats and flush requests between instances, and the
//!   connection that listens for them.
//! - `tiering.rs`: what the tiering layer calls past [`ProgressStore`].
//! - `cleanup.rs`, `bulk.rs`, `listing.rs`: expired rows, bulk deletes,
//!   listing and counts.

use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};

use self::queries::GET;
use self::session::pg;
use super::bulk::{RecordFilter, StatusCounts};
use super::health::{LastError, TierHealth, timed};
use super::listing::{ListPage, ListQuery};
use super::{BacklogSummary, CleanupReport, Health, Maintenance, ProgressStore, StoreError};
use crate::domain::{ProgressId, StoredRecord};
use crate::metrics::store_op;
use crate::secrets::redact_url;

mod bulk;
mod cleanup;
mod fence;
mod listing;
mod outbox;
mod peers;
pub mod pg_connect;
mod queries;
mod rows;
mod schema;
mod session;
mod tiering;
mod tombstones;

pub use self::rows::DurableRow;
pub use self::schema::MIGRATIONS_PENDING;

/// How to reach PostgreSQL and how long to wait for it.
#[derive(Clone)]
pub struct PostgresStoreConfig {
    /// `postgres://user:pass@host:port/db` (holds a password: never log it).
    pub url: String,
    /// Most connections the pool opens.
    pub pool_size: usize,
    /// Bound on connecting, on waiting for the pool and on every operation.
    pub timeout: Duration,
}

/// What libpq's environment says when the URL does not.
#[derive(Debug, Clone, Default)]
pub struct PgDefaults {
    /// `sslmode` (`PGSSLMODE`).
    pub ssl_mode: Option<String>,
    /// The trusted roots' PEM file (`PGSSLROOTCERT`).
    pub ssl_root_cert: Option<String>,
}

impl fmt::Debug for PostgresStoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStoreConfig")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// PostgreSQL tier.
pub struct PostgresStore {
    pool: Pool,
    timeout: Duration,
    /// The most recent failure, for `/readyz`.
    last_error: LastError,
    /// libpq's `sslmode` in force.
    ssl_mode: pg_connect::SslMode,
    /// How to connect, for the connection that listens to other instances.
    pg_config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// Notices from other instances (`peers.rs`).
    peers: peers::PeerChannel,
    /// How long deleted and expired rows answer 410 (and are kept).
    tombstone: Duration,
}

impl PostgresStore {
    /// libpq's `sslmode` in force (from the URL, `PGSSLMODE`, or `prefer`).
    pub fn ssl_mode(&self) -> pg_connect::SslMode {
        self.ssl_mode
    }

    /// Builds the pool. Connects lazily: a Postgres that is down now is not
    /// an error until an operation needs it.
    pub fn new(config: PostgresStoreConfig) -> Result<Self, String> {
        Self::with_defaults(config, &PgDefaults::default())
    }

    /// [`PostgresStore::new`], with `defaults` for what the URL does not say.
    pub fn with_defaults(config: PostgresStoreConfig, defaults: &PgDefaults) -> Result<Self, String> {
        // The parse error names the bad part, never the value (nor the password).
        let connect = pg_connect::parse(&config.url, defaults.ssl_mode.as_deref(), defaults.ssl_root_cert.as_deref())?;
        for parameter in &connect.ignored {
            tracing::warn!(parameter = %parameter, "DATABASE_URL: ignoring a libpq parameter progressd does not use");
        }
        let mut pg = connect.config;
        pg.connect_timeout(config.timeout);
        if pg.get_application_name().is_none() {
            // Shows who holds a connection in pg_stat_activity.
            pg.application_name("progressd");
        }
        // Fast: no test query on every checkout (one extra round trip per
        // operation); a dead connection fails its operation and is closed.
        let manager = Manager::from_config(
            pg.clone(),
            connect.tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let timeouts =
            Timeouts { wait: Some(config.timeout), create: Some(config.timeout), recycle: Some(config.timeout) };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .timeouts(timeouts)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            pool,
            timeout: config.timeout,
            last_error: LastError::for_url(&config.url),
            ssl_mode: connect.mode,
            pg_config: pg,
            tls: connect.tls,
            peers: peers::PeerChannel::default(),
            tombstone: crate::store::DEFAULT_TOMBSTONE,
        })
    }

    /// One round trip (`SELECT 1`, after the pool checkout); its latency.
    pub async fn ping(&self) -> Result<Duration, StoreError> {
        let started = Instant::now();
        self.bounded_counted(store_op!("postgres", "ping"), async {
            let db = self.session().await?;
            let statement = db.prepare_cached("SELECT 1").await.map_err(pg)?;
            db.query_one(&statement, &[]).await.map_err(pg)?;
            db.done();
            Ok(())
        })
        .await?;
        Ok(started.elapsed())
    }
}

#[async_trait]
impl ProgressStore for PostgresStore {
    async fn get(&self, id: &ProgressId) -> Result<Option<StoredRecord>, StoreError> {
        let raw = self
            .bounded_counted(store_op!("postgres", "get"), async {
                let db = self.session().await?;
                let statement = db.prepare_cached(GET).await.map_err(pg)?;
                let row = db.query_opt(&statement, &[&id.as_str()]).await.map_err(pg)?;
                db.done();
                Ok(row.map(|row| row.get::<_, Vec<u8>>(0)))
            })
            .await?;
        raw.map(|bytes| StoredRecord::decode(Bytes::from(bytes)).map_err(StoreError::from)).transpose()
    }

    // The expiry comes from the record itself (`expires_at`), not `_ttl_ms`,
    // so a row put back from another tier keeps its remaining time.
    async fn compare_and_set(
        &self,
        id: &ProgressId,
        expected: u64,
        record: &StoredRecord,
        _ttl_ms: i64,
    ) -> Result<bool, StoreError> {
        Ok(self.compare_and_set_fenced(id, expected, record, None).await?.unwrap_or(false))
    }

    async fn compare_and_delete(&self, id: &ProgressId, expected: u64) -> Result<bool, StoreError> {
        Ok(self.compare_and_delete_fenced(id, expected, None).await?.unwrap_or(false))
    }

    async fn delete(&self, id: &ProgressId) -> Result<bool, StoreError> {
        Ok(self.delete_fenced(id, None).await?.unwrap_or(false))
    }

    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        self.list_page(query).await
    }
}

#[async_trait]
impl Health for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn report_metrics(&self) {
        let pool = self.pool.status();
        crate::metrics::set_pool("postgres", pool.size, pool.available, pool.max_size, pool.waiting);
    }

    async fn ping(&self) -> Result<Duration, StoreError> {
        PostgresStore::ping(self).await
    }

    async fn health(&self) -> Vec<TierHealth> {
        let (probe, latency) = timed(self.check_schema()).await;
        vec![TierHealth::from_probe("postgres", probe, latency, &self.last_error)]
    }
}

#[async_trait]
impl Maintenance for PostgresStore {
    async fn cleanup(&self, exclusive: bool) -> Result<Option<CleanupReport>, StoreError> {
        Ok(self
            .purge_expired(exclusive)
            .await?
            .map(|rows| CleanupReport { postgres_expired_rows: Some(rows), ..CleanupReport::default() }))
    }

    async fn delete_matching(&self, filter: &RecordFilter) -> Result<u64, StoreError> {
        Ok(self.tombstone_matching(filter, None).await?.0.len() as u64)
    }

    async fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
        self.count_statuses().await
    }

    fn write_behind(&self) -> Option<BacklogSummary> {
        None
    }

    // Every write is in PostgreSQL before it is acknowledged.
    async fn shutdown(&self) {}
}
