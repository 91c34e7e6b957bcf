//! The PostgreSQL durable tier, through deadpool-postgres.
//!
//! Table `progress` (schema in `migrations/`) holds one row per id: the exact
//! stored bytes of [`StoredRecord`] in `record`, and beside them copies of
//! the fields Postgres needs to guard, expire and list rows without parsing
//! the document (`version`, `status`, `created_at`, `updated_at`,
//! `expires_at`). A row past `expires_at` is absent to every read and guard,
//! whether or not cleanup has removed it yet.
//!
//! tokio-postgres has no per-query timeout, so every operation (pool checkout
//! and query) runs under one `tokio::time::timeout`. A connection whose
//! operation failed or was cut short may still have a query in flight on a
//! server that stopped answering, so it is closed instead of going back to
//! the pool; the pool only checks `is_closed` on checkout
//! ([`RecyclingMethod::Fast`]) and would otherwise hand it to the next request.

use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use deadpool_postgres::{ClientWrapper, Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime, Timeouts};
use tokio_postgres::types::ToSql;
use tokio_postgres::{SimpleQueryMessage, Statement};

use super::listing::{ListCursor, ListPage, ListQuery};
use super::maintenance::{CleanupReport, LastError, MAINTENANCE_BATCH, RecordFilter, StatusCounts, TierHealth, timed};
use super::{ProgressStore, StoreError};
use crate::domain::{CorruptRecord, ProgressId, Status, StoredRecord, Timestamp};
use crate::metrics::{StoreOp, store_op};
use crate::settings::redact_url;

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

/// The live record, if any.
const GET: &str = "SELECT record FROM progress WHERE id = $1 AND expires_at > now() AND NOT deleted";

/// The row whatever its state: live, a tombstone, or expired.
const LOOKUP: &str = "SELECT record, deleted, created_at FROM progress WHERE id = $1 AND expires_at > now()";

/// A create: inserts, or overwrites a row that is there but expired (which
/// counts as absent). No row is affected when a live one exists.
const CREATE: &str = "
INSERT INTO progress (id, version, status, created_at, updated_at, expires_at, record)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (id) DO UPDATE SET
    version = EXCLUDED.version, status = EXCLUDED.status, created_at = EXCLUDED.created_at,
    updated_at = EXCLUDED.updated_at, expires_at = EXCLUDED.expires_at, record = EXCLUDED.record,
    deleted = false
WHERE progress.expires_at <= now() OR progress.deleted";

/// An update of the live row whose version is `$8`.
const REPLACE: &str = "
UPDATE progress SET
    version = $2, status = $3, created_at = $4, updated_at = $5, expires_at = $6, record = $7
WHERE id = $1 AND version = $8 AND expires_at > now() AND NOT deleted";

/// The version-guarded batch upsert of the write-behind flush. A row is
/// written when its id is absent, stored with a lower version, or expired
/// (a record created again after expiry starts over at version 1). Rows go
/// in id order so that two instances flushing overlapping batches lock them
/// in the same order and cannot deadlock.
const UPSERT_NEWER: &str = "
INSERT INTO progress (id, version, status, created_at, updated_at, expires_at, record)
SELECT * FROM UNNEST(
    $1::text[], $2::bigint[], $3::text[], $4::timestamptz[], $5::timestamptz[], $6::timestamptz[], $7::bytea[]
) ORDER BY 1
ON CONFLICT (id) DO UPDATE SET
    version = EXCLUDED.version, status = EXCLUDED.status, created_at = EXCLUDED.created_at,
    updated_at = EXCLUDED.updated_at, expires_at = EXCLUDED.expires_at, record = EXCLUDED.record,
    deleted = false
WHERE (progress.created_at, progress.version) < (EXCLUDED.created_at, EXCLUDED.version)
   OR progress.expires_at <= now()";

/// Live records written at or after `$1`, oldest first (ties by id, so that
/// the order is stable), at most `$2`.
const UPDATED_SINCE: &str = "
SELECT id, record, deleted, created_at, updated_at FROM progress
WHERE updated_at >= $1 AND expires_at > now()
ORDER BY updated_at, id
LIMIT $2";

/// Turns the live row with version `$2` into a tombstone.
const COMPARE_AND_DELETE: &str = "
UPDATE progress SET deleted = true, version = 9223372036854775807, updated_at = now()
WHERE id = $1 AND version = $2 AND expires_at > now() AND NOT deleted";

/// Turns the row into a tombstone, or writes one when there is no row (the
/// record may be in another instance's backlog, created while PostgreSQL
/// was down). The answer says whether a live record was deleted.
const DELETE: &str = "
WITH old AS (SELECT expires_at > now() AND NOT deleted AS live FROM progress WHERE id = $1)
INSERT INTO progress (id, version, status, created_at, updated_at, expires_at, record, deleted)
VALUES ($1, 9223372036854775807, 'deleted', now(), now(), now() + interval '1 day', ''::bytea, true)
ON CONFLICT (id) DO UPDATE SET
    deleted = true, version = 9223372036854775807, updated_at = now(),
    expires_at = greatest(progress.expires_at, now() + interval '1 day')
WHERE NOT progress.deleted
RETURNING (SELECT live FROM old)";

/// Opens the transaction of a write made while Redis is down and takes the
/// fence row shared (see `migrations/V4__redis_fence.sql`): one round trip.
const ENTER_FENCE: &str = "BEGIN; SELECT redis_back_ms FROM progress_fence FOR SHARE";

/// Records that Redis answers again; waits for the fenced writes in flight.
const RAISE_FENCE: &str = "
INSERT INTO progress_fence (one, redis_back_ms) VALUES (true, $1)
ON CONFLICT (one) DO UPDATE SET redis_back_ms = greatest(progress_fence.redis_back_ms, EXCLUDED.redis_back_ms)";

/// What the health probe says of a reachable PostgreSQL whose schema is
/// not up to date yet.
pub const MIGRATIONS_PENDING: &str = "reachable, but its migrations have not run yet";

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
    ssl_mode: super::pg_connect::SslMode,
}

impl PostgresStore {
    /// libpq's `sslmode` in force (from the URL, `PGSSLMODE`, or `prefer`).
    pub fn ssl_mode(&self) -> super::pg_connect::SslMode {
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
        let connect =
            super::pg_connect::parse(&config.url, defaults.ssl_mode.as_deref(), defaults.ssl_root_cert.as_deref())?;
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
        let manager =
            Manager::from_config(pg, connect.tls.clone(), ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let timeouts =
            Timeouts { wait: Some(config.timeout), create: Some(config.timeout), recycle: Some(config.timeout) };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .timeouts(timeouts)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { pool, timeout: config.timeout, last_error: LastError::for_url(&config.url), ssl_mode: connect.mode })
    }

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

    /// Version-guarded batch upsert in one statement: each record is written
    /// only if its id is absent or expired, or stored with a lower version.
    /// A record the guard skips is a stale write, not an error. Returns how
    /// many rows were written.
    ///
    /// When the batch holds an id more than once, its highest version is the
    /// one sent. A record whose body does not parse is left out (and logged)
    /// rather than failing the batch, so one bad record cannot stop every
    /// flush after it.
    pub async fn upsert_newer(&self, records: &[(ProgressId, StoredRecord)]) -> Result<u64, StoreError> {
        // ON CONFLICT cannot touch one row twice in a statement: one per id.
        let mut newest: HashMap<&str, &StoredRecord> = HashMap::with_capacity(records.len());
        for (id, stored) in records {
            newest
                .entry(id.as_str())
                .and_modify(|kept| {
                    if stored.version() > kept.version() {
                        *kept = stored;
                    }
                })
                .or_insert(stored);
        }
        let mut batch = Batch::with_capacity(newest.len());
        for (id, stored) in newest {
            match Row::of(id, stored) {
                Ok(row) => batch.push(row),
                Err(e) => tracing::error!(id, error = %e, "not persisted: the record does not parse"),
            }
        }
        if batch.ids.is_empty() {
            return Ok(0);
        }
        self.bounded_counted(store_op!("postgres", "upsert_newer"), async {
            let db = self.session().await?;
            let statement = db.prepare_cached(UPSERT_NEWER).await.map_err(pg)?;
            let written = db
                .execute(
                    &statement,
                    &[
                        &batch.ids,
                        &batch.versions,
                        &batch.statuses,
                        &batch.created,
                        &batch.updated,
                        &batch.expires,
                        &batch.records,
                    ],
                )
                .await
                .map_err(pg)?;
            db.done();
            Ok(written)
        })
        .await
    }

    /// Unexpired rows (records and tombstones) with `updated_at >= since`,
    /// oldest first, at most `limit`, with the time of the last one.
    pub async fn updated_since(
        &self,
        since: Timestamp,
        limit: i64,
    ) -> Result<Vec<(ProgressId, DurableRow, Timestamp)>, StoreError> {
        let since = system_time(since.millis());
        let rows = self
            .bounded_counted(store_op!("postgres", "updated_since"), async {
                let db = self.session().await?;
                let statement = db.prepare_cached(UPDATED_SINCE).await.map_err(pg)?;
                let rows = db.query(&statement, &[&since, &limit.max(0)]).await.map_err(pg)?;
                db.done();
                Ok(rows)
            })
            .await?;
        rows.into_iter()
            .map(|row| {
                let id: &str = row.get(0);
                let id = ProgressId::parse(id)
                    .map_err(|e| CorruptRecord(format!("row id {id:?} is not a valid id: {}", e.0)))?;
                let updated: SystemTime = row.get(4);
                Ok((id, DurableRow::from_columns(row.get(1), row.get(2), row.get(3))?, millis(updated)))
            })
            .collect()
    }

    /// The row for `id` as it stands: a live record, a tombstone, or nothing
    /// (absent or expired).
    pub async fn lookup(&self, id: &ProgressId) -> Result<DurableRow, StoreError> {
        let row = self
            .bounded_counted(store_op!("postgres", "lookup"), async {
                let db = self.session().await?;
                let statement = db.prepare_cached(LOOKUP).await.map_err(pg)?;
                let row = db.query_opt(&statement, &[&id.as_str()]).await.map_err(pg)?;
                db.done();
                Ok(row)
            })
            .await?;
        match row {
            None => Ok(DurableRow::Absent),
            Some(row) => Ok(DurableRow::from_columns(row.get(0), row.get(1), row.get(2))?),
        }
    }

    /// A pooled connection for one operation.
    async fn session(&self) -> Result<Session, StoreError> {
        let object = self.pool.get().await.map_err(|e| unavailable(describe(&e)))?;
        Ok(Session(Some(object)))
    }

    /// Runs one operation (checkout and queries) within the timeout.
    async fn bounded<T>(&self, op: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let result = tokio::time::timeout(self.timeout, op).await.unwrap_or_else(|_| Err(self.no_answer()));
        self.last_error.observe(result)
    }

    fn no_answer(&self) -> StoreError {
        unavailable(format!("no answer within {:?}", self.timeout))
    }
}

/// A connection lent to one operation. It goes back to the pool only through
/// [`Session::done`]; dropped before that (an error, or the timeout cutting
/// the operation short) it is closed, since it may still have a query in
/// flight on a server that no longer answers.
struct Session(Option<Object>);

impl Session {
    /// The operation finished: the connection is fit for the next one.
    fn done(mut self) {
        drop(self.0.take());
    }

    /// Commits the transaction of [`PostgresStore::fenced_session`] (with
    /// `fence`), then [`Session::done`].
    async fn leave_fence(self, fence: Option<Timestamp>) -> Result<(), StoreError> {
        if fence.is_some() {
            self.batch_execute("COMMIT").await.map_err(pg)?;
        }
        self.done();
        Ok(())
    }
}

impl Deref for Session {
    type Target = ClientWrapper;
    fn deref(&self) -> &ClientWrapper {
        self.0.as_ref().expect("a session holds its connection until done")
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(object) = self.0.take() {
            // Detached from the pool; dropping the client closes the connection.
            drop(Object::take(object));
        }
    }
}

/// What PostgreSQL holds for one id.
#[derive(Debug, Clone)]
pub enum DurableRow {
    /// A record.
    Live(StoredRecord),
    /// A tombstone: the incarnation created at `created_at` was deleted.
    Deleted {
        /// `created_at` of the deleted record (or of the delete, when there was no row).
        created_at: Timestamp,
    },
    /// Nothing, or only an expired row.
    Absent,
}

impl DurableRow {
    fn from_columns(record: Vec<u8>, deleted: bool, created_at: SystemTime) -> Result<Self, CorruptRecord> {
        if deleted {
            return Ok(Self::Deleted { created_at: millis(created_at) });
        }
        StoredRecord::decode(Bytes::from(record)).map(Self::Live)
    }
}

fn millis(t: SystemTime) -> Timestamp {
    Timestamp(t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64))
}

/// The columns of one row, taken from the stored record.
struct Row<'a> {
    id: &'a str,
    version: i64,
    status: &'static str,
    created_at: SystemTime,
    updated_at: SystemTime,
    expires_at: SystemTime,
    record: &'a [u8],
}

impl<'a> Row<'a> {
    fn of(id: &'a str, stored: &'a StoredRecord) -> Result<Self, CorruptRecord> {
        let record = stored.durable_columns()?;
        let version = i64::try_from(stored.version())
            .map_err(|_| CorruptRecord(format!("version {} does not fit a bigint", stored.version())))?;
        // The header's expiry; a header from before it carried one has the body's.
        let expires_ms = if stored.meta().x > 0 { stored.meta().x } else { record.expires_at.millis() };
        Ok(Self {
            id,
            version,
            status: record.status.as_str(),
            created_at: system_time(record.created_at.millis()),
            updated_at: system_time(record.updated_at.millis()),
            expires_at: system_time(expires_ms),
            record: stored.raw().as_ref(),
        })
    }
}

/// Rows as the column arrays `UNNEST` takes.
struct Batch<'a> {
    ids: Vec<&'a str>,
    versions: Vec<i64>,
    statuses: Vec<&'static str>,
    created: Vec<SystemTime>,
    updated: Vec<SystemTime>,
    expires: Vec<SystemTime>,
    records: Vec<&'a [u8]>,
}

impl<'a> Batch<'a> {
    fn with_capacity(n: usize) -> Self {
        Self {
            ids: Vec::with_capacity(n),
            versions: Vec::with_capacity(n),
            statuses: Vec::with_capacity(n),
            created: Vec::with_capacity(n),
            updated: Vec::with_capacity(n),
            expires: Vec::with_capacity(n),
            records: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, row: Row<'a>) {
        self.ids.push(row.id);
        self.versions.push(row.version);
        self.statuses.push(row.status);
        self.created.push(row.created_at);
        self.updated.push(row.updated_at);
        self.expires.push(row.expires_at);
        self.records.push(row.record);
    }
}

/// Key of the session advisory lock held while cleaning up (`progclup` in ASCII).
const CLEANUP_LOCK: i64 = 0x7072_6f67_636c_7570;

/// One batch of expired rows (records and tombstones): each batch is its own
/// short statement, so purging a million rows never holds many locks for long.
const PURGE_EXPIRED: &str = "
DELETE FROM progress
WHERE ctid = ANY(ARRAY(SELECT ctid FROM progress WHERE expires_at <= now() LIMIT $1))
  AND expires_at <= now()";

/// The conditions of a [`RecordFilter`] on live rows: `$1` status, `$2` id
/// prefix, `$3` updated before (each NULL when not set).
const LIVE_MATCHING: &str = "
NOT deleted AND expires_at > now()
  AND ($1::text IS NULL OR status = $1)
  AND ($2::text IS NULL OR starts_with(id, $2))
  AND ($3::timestamptz IS NULL OR updated_at < $3)";

/// The tombstone a delete leaves (see `DELETE`).
const TOMBSTONE_SET: &str = "
deleted = true, version = 9223372036854775807, updated_at = now(),
expires_at = greatest(progress.expires_at, now() + interval '1 day')";

/// Live records per status.
const COUNT_BY_STATUS: &str =
    "SELECT status, count(*) FROM progress WHERE NOT deleted AND expires_at > now() GROUP BY status";

/// The live rows of a listing page, newest first, resuming after the cursor
/// (`$1` created_at, `$2` id), at most `$4` of them: the window a page
/// examines. `$3` is the id prefix ('' for none). `{status}` narrows it to
/// `s.status` when the rows are read per status (see [`LIST_BY_STATUS`]).
macro_rules! list_window {
    ($status:literal) => {
        concat!(
            "SELECT id COLLATE \"C\" AS id, created_at, record, starts_with(id, $3) AS hit
             FROM progress
             WHERE NOT deleted ",
            $status,
            " AND expires_at > now()
               AND (created_at, id COLLATE \"C\") < ($1, $2)
             ORDER BY created_at DESC, id COLLATE \"C\" DESC
             LIMIT $4"
        )
    };
}

/// The rows of the window a page needs: the matching ones up to `$5` (one
/// more than the limit, to tell whether there is more), plus the window's
/// last row (where the next page starts when the window runs out first),
/// each with the window's size.
macro_rules! list_page {
    ($window:expr) => {
        concat!(
            "SELECT id, created_at, CASE WHEN hit THEN record END, hit, total FROM (
                 SELECT w.*, count(*) FILTER (WHERE hit) OVER o AS hits, row_number() OVER o AS n, count(*) OVER () AS total
                 FROM (", $window, ") w
                 WINDOW o AS (ORDER BY created_at DESC, id DESC ROWS UNBOUNDED PRECEDING)
             ) x
             WHERE (hit AND hits <= $5) OR n = total
             ORDER BY created_at DESC, id DESC"
        )
    };
}

/// A listing page over every status (index `progress_listing`).
const LIST_ALL: &str = list_page!(list_window!(""));

/// A listing page over the statuses `$6`: each status's newest rows after
/// the cursor (index `progress_listing_status`), merged.
const LIST_BY_STATUS: &str = list_page!(concat!(
    "SELECT p.* FROM unnest($6::text[]) AS s(status) CROSS JOIN LATERAL (",
    list_window!("AND status = s.status"),
    ") p ORDER BY created_at DESC, id DESC LIMIT $4"
));

/// The newest migration this build carries.
fn latest_migration() -> i64 {
    static LATEST: std::sync::LazyLock<i64> = std::sync::LazyLock::new(|| {
        embedded::migrations::runner().get_migrations().iter().map(|m| i64::from(m.version())).max().unwrap_or(0)
    });
    *LATEST
}

/// A filter as the parameters `$1`–`$3` of [`LIVE_MATCHING`].
fn filter_params(filter: &RecordFilter) -> (Option<&'static str>, Option<&str>, Option<SystemTime>) {
    (
        filter.status.map(Status::as_str),
        filter.id_prefix.as_deref(),
        filter.updated_before.map(|t| system_time(t.millis())),
    )
}

fn parse_ids(rows: Vec<tokio_postgres::Row>) -> Vec<ProgressId> {
    rows.iter().filter_map(|row| ProgressId::parse(row.get::<_, &str>(0)).ok()).collect()
}

/// The writes a Redis-over-PostgreSQL instance makes here while its Redis
/// breaker is open, and the fence that stops them once another instance is
/// back on Redis (`migrations/V4__redis_fence.sql`).
///
/// Each write takes `fence`: `None` writes as is (PostgreSQL alone, or the
/// durable copy of a write Redis took); `Some(since)` (Redis down for this
/// instance since then) runs it in a transaction that first holds the fence
/// row shared and answers `None`, writing nothing, when an instance has
/// raised the fence at or after `since`.
impl PostgresStore {
    /// Records that Redis answered this instance again at `at`, before it
    /// uses Redis again. Waits for every fenced write in flight (their share
    /// locks), so that each has landed before the copy-back that follows;
    /// every later one is refused.
    pub async fn raise_fence(&self, at: Timestamp) -> Result<(), StoreError> {
        self.bounded_counted(store_op!("postgres", "raise_fence"), async {
            let db = self.session().await?;
            let statement = db.prepare_cached(RAISE_FENCE).await.map_err(pg)?;
            db.execute(&statement, &[&at.millis()]).await.map_err(pg)?;
            db.done();
            Ok(())
        })
        .await
    }

    /// A session for one write and its prepared `sql`. With `fence`, in a
    /// transaction that holds the fence row shared; `None` (rolled back)
    /// when the fence was raised at or after it. A write that fails after
    /// this drops its session, which closes the connection and so ends the
    /// transaction; one that succeeds ends with [`Session::leave_fence`].
    async fn fenced_session(
        &self,
        fence: Option<Timestamp>,
        sql: &str,
    ) -> Result<Option<(Session, Statement)>, StoreError> {
        let db = self.session().await?;
        if let Some(since) = fence {
            let raised = db.simple_query(ENTER_FENCE).await.map_err(pg)?.iter().find_map(|message| match message {
                SimpleQueryMessage::Row(row) => row.get(0).and_then(|ms| ms.parse::<i64>().ok()),
                _ => None,
            });
            if raised.is_some_and(|raised| raised >= since.millis()) {
                db.batch_execute("ROLLBACK").await.map_err(pg)?;
                db.done();
                return Ok(None);
            }
        }
        let statement = db.prepare_cached(sql).await.map_err(pg)?;
        Ok(Some((db, statement)))
    }

    /// [`ProgressStore::compare_and_set`] behind `fence`; `None` when fenced off.
    pub async fn compare_and_set_fenced(
        &self,
        id: &ProgressId,
        expected: u64,
        record: &StoredRecord,
        fence: Option<Timestamp>,
    ) -> Result<Option<bool>, StoreError> {
        let row = Row::of(id.as_str(), record)?;
        let (sql, expected) = match expected {
            0 => (CREATE, None),
            // A version beyond bigint cannot be stored, so it matches no row.
            v => match i64::try_from(v) {
                Ok(v) => (REPLACE, Some(v)),
                Err(_) => return Ok(Some(false)),
            },
        };
        self.bounded_counted(store_op!("postgres", "compare_and_set"), async {
            let Some((db, statement)) = self.fenced_session(fence, sql).await? else { return Ok(None) };
            // CREATE takes the columns, REPLACE the expected version as well.
            let guard = expected.unwrap_or(0);
            let params: [&(dyn ToSql + Sync); 8] = [
                &row.id,
                &row.version,
                &row.status,
                &row.created_at,
                &row.updated_at,
                &row.expires_at,
                &row.record,
                &guard,
            ];
            let written =
                db.execute(&statement, &params[..if expected.is_some() { 8 } else { 7 }]).await.map_err(pg)?;
            db.leave_fence(fence).await?;
            Ok(Some(written == 1))
        })
        .await
    }

    /// [`ProgressStore::compare_and_delete`] behind `fence`; `None` when fenced off.
    pub async fn compare_and_delete_fenced(
        &self,
        id: &ProgressId,
        expected: u64,
        fence: Option<Timestamp>,
    ) -> Result<Option<bool>, StoreError> {
        let Ok(expected) = i64::try_from(expected) else { return Ok(Some(false)) };
        self.bounded_counted(store_op!("postgres", "compare_and_delete"), async {
            let Some((db, statement)) = self.fenced_session(fence, COMPARE_AND_DELETE).await? else { return Ok(None) };
            let deleted = db.execute(&statement, &[&id.as_str(), &expected]).await.map_err(pg)?;
            db.leave_fence(fence).await?;
            Ok(Some(deleted == 1))
        })
        .await
    }

    /// [`ProgressStore::delete`] behind `fence`; `None` when fenced off.
    pub async fn delete_fenced(&self, id: &ProgressId, fence: Option<Timestamp>) -> Result<Option<bool>, StoreError> {
        self.bounded_counted(store_op!("postgres", "delete"), async {
            let Some((db, statement)) = self.fenced_session(fence, DELETE).await? else { return Ok(None) };
            let row = db.query_opt(&statement, &[&id.as_str()]).await.map_err(pg)?;
            db.leave_fence(fence).await?;
            // A tombstone for an expired row or for no row at all: nothing was deleted.
            Ok(Some(row.is_some_and(|row| row.get::<_, Option<bool>>(0) == Some(true))))
        })
        .await
    }
}

/// Maintenance: health with the schema check, cleanup, bulk tombstones, counts.
impl PostgresStore {
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

    /// Deletes expired rows (records and tombstones) in batches of
    /// [`MAINTENANCE_BATCH`], each its own statement, yielding in between;
    /// returns how many. With `exclusive`, first takes a session advisory
    /// lock on the connection that runs the batches (`Ok(None)` when another
    /// instance holds it), released afterwards, or by closing the connection
    /// when a batch fails.
    pub async fn purge_expired(&self, exclusive: bool) -> Result<Option<u64>, StoreError> {
        let db = self.bounded(self.session()).await?;
        if exclusive {
            let locked: bool = self
                .bounded(async {
                    let row = db.query_one("SELECT pg_try_advisory_lock($1)", &[&CLEANUP_LOCK]).await.map_err(pg)?;
                    Ok(row.get(0))
                })
                .await?;
            if !locked {
                db.done();
                return Ok(None);
            }
        }
        let batch = MAINTENANCE_BATCH as i64;
        let mut purged = 0;
        loop {
            let n = self
                .bounded(async {
                    let statement = db.prepare_cached(PURGE_EXPIRED).await.map_err(pg)?;
                    db.execute(&statement, &[&batch]).await.map_err(pg)
                })
                .await?;
            purged += n;
            if n < MAINTENANCE_BATCH as u64 {
                break;
            }
            // Let requests waiting for a worker thread run between batches.
            tokio::task::yield_now().await;
        }
        if exclusive {
            self.bounded(async { db.execute("SELECT pg_advisory_unlock($1)", &[&CLEANUP_LOCK]).await.map_err(pg) })
                .await?;
        }
        db.done();
        Ok(Some(purged))
    }

    /// Turns every live row matching `filter` into a tombstone, in batches,
    /// each behind `fence` (see [`Self::compare_and_set_fenced`]); returns
    /// the ids, and whether the fence stopped it before the end (the
    /// batches before that are tombstoned). For when PostgreSQL is the
    /// store of record.
    pub async fn tombstone_matching(
        &self,
        filter: &RecordFilter,
        fence: Option<Timestamp>,
    ) -> Result<(Vec<ProgressId>, bool), StoreError> {
        let query = format!(
            "WITH batch AS (SELECT id FROM progress WHERE {LIVE_MATCHING} LIMIT $4 FOR UPDATE)
             UPDATE progress SET {TOMBSTONE_SET} FROM batch WHERE progress.id = batch.id RETURNING progress.id"
        );
        let (status, prefix, before) = filter_params(filter);
        let batch = MAINTENANCE_BATCH as i64;
        let mut deleted = Vec::new();
        loop {
            let rows = self
                .bounded(async {
                    let Some((db, statement)) = self.fenced_session(fence, &query).await? else { return Ok(None) };
                    let rows = db.query(&statement, &[&status, &prefix, &before, &batch]).await.map_err(pg)?;
                    db.leave_fence(fence).await?;
                    Ok(Some(rows))
                })
                .await?;
            let Some(rows) = rows else { return Ok((deleted, true)) };
            let n = rows.len();
            deleted.extend(parse_ids(rows));
            if n < MAINTENANCE_BATCH {
                return Ok((deleted, false));
            }
            tokio::task::yield_now().await;
        }
    }

    /// Up to `limit` live rows matching `filter` with an id after `after`,
    /// in id order: `(id, version)`.
    pub async fn matching_page(
        &self,
        filter: &RecordFilter,
        after: &str,
        limit: i64,
    ) -> Result<Vec<(ProgressId, i64)>, StoreError> {
        let query = format!("SELECT id, version FROM progress WHERE {LIVE_MATCHING} AND id > $5 ORDER BY id LIMIT $4");
        let (status, prefix, before) = filter_params(filter);
        let rows = self
            .bounded(async {
                let db = self.session().await?;
                let statement = db.prepare_cached(&query).await.map_err(pg)?;
                let rows = db.query(&statement, &[&status, &prefix, &before, &limit, &after]).await.map_err(pg)?;
                db.done();
                Ok(rows)
            })
            .await?;
        Ok(rows
            .iter()
            .filter_map(|row| Some((ProgressId::parse(row.get::<_, &str>(0)).ok()?, row.get::<_, i64>(1))))
            .collect())
    }

    /// Tombstones the rows among `rows` that are still live at the version
    /// given; returns the ids tombstoned.
    pub async fn tombstone_versions(&self, rows: &[(ProgressId, i64)]) -> Result<Vec<ProgressId>, StoreError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let query = format!(
            "UPDATE progress SET {TOMBSTONE_SET}
             FROM UNNEST($1::text[], $2::bigint[]) AS t(id, version)
             WHERE progress.id = t.id AND progress.version = t.version
               AND NOT progress.deleted AND progress.expires_at > now()
             RETURNING progress.id"
        );
        let ids: Vec<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
        let versions: Vec<i64> = rows.iter().map(|(_, v)| *v).collect();
        let rows = self
            .bounded(async {
                let db = self.session().await?;
                let statement = db.prepare_cached(&query).await.map_err(pg)?;
                let rows = db.query(&statement, &[&ids, &versions]).await.map_err(pg)?;
                db.done();
                Ok(rows)
            })
            .await?;
        Ok(parse_ids(rows))
    }

    /// Leaves a tombstone for each of `ids`, like [`ProgressStore::delete`]
    /// for many records at once (in batches).
    pub async fn tombstone_ids(&self, ids: &[ProgressId]) -> Result<(), StoreError> {
        let query = format!(
            "INSERT INTO progress (id, version, status, created_at, updated_at, expires_at, record, deleted)
             SELECT id, 9223372036854775807, 'deleted', now(), now(), now() + interval '1 day', ''::bytea, true
             FROM UNNEST($1::text[]) AS t(id) ORDER BY 1
             ON CONFLICT (id) DO UPDATE SET {TOMBSTONE_SET}
             WHERE NOT progress.deleted"
        );
        let mut unique: Vec<&str> = ids.iter().map(ProgressId::as_str).collect();
        unique.sort_unstable();
        unique.dedup();
        for chunk in unique.chunks(MAINTENANCE_BATCH) {
            self.bounded(async {
                let db = self.session().await?;
                let statement = db.prepare_cached(&query).await.map_err(pg)?;
                db.execute(&statement, &[&chunk]).await.map_err(pg)?;
                db.done();
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    /// One listing page (see [`crate::store::ListQuery`]). Without a prefix
    /// every row read is listed, so the window is one row more than the
    /// limit; with one, the window is the page's budget of rows.
    pub async fn list_page(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        let (after_at, after_id) = match &query.after {
            Some(c) => (system_time(c.created_ms), c.id.as_str()),
            None => (system_time(i64::MAX), ""),
        };
        let prefix = query.id_prefix.as_deref().unwrap_or("");
        let cap = i64::try_from(query.limit + 1).unwrap_or(i64::MAX);
        let window = if prefix.is_empty() { cap } else { i64::try_from(query.budget()).unwrap_or(i64::MAX) };
        let statuses: Vec<&str> = query.statuses.iter().map(|s| s.as_str()).collect();
        let rows = self
            .bounded_counted(store_op!("postgres", "list"), async {
                let db = self.session().await?;
                let rows = if statuses.is_empty() {
                    let statement = db.prepare_cached(LIST_ALL).await.map_err(pg)?;
                    db.query(&statement, &[&after_at, &after_id, &prefix, &window, &cap]).await
                } else {
                    let statement = db.prepare_cached(LIST_BY_STATUS).await.map_err(pg)?;
                    db.query(&statement, &[&after_at, &after_id, &prefix, &window, &cap, &statuses]).await
                }
                .map_err(pg)?;
                db.done();
                Ok(rows)
            })
            .await?;
        let (mut page, mut hits, mut last) = (ListPage::default(), 0, None);
        let mut window_full = false;
        for row in rows {
            let key = ListCursor::new(millis(row.get(1)).millis(), row.get(0));
            window_full = row.get::<_, i64>(4) >= window;
            if row.get::<_, bool>(3) {
                hits += 1;
                if hits > query.limit {
                    // `last` is the limit-th match: only matches and the
                    // window's last row come back.
                    page.next = last;
                    return Ok(page);
                }
                let record: Vec<u8> = row.get(2);
                let id = ProgressId::parse(&key.id)
                    .map_err(|e| CorruptRecord(format!("row id {:?} is not a valid id: {}", key.id, e.0)))?;
                page.items.push((id, StoredRecord::decode(Bytes::from(record))?));
            }
            last = Some(key);
        }
        if window_full {
            page.next = last;
        }
        Ok(page)
    }

    /// Live records per status.
    pub async fn count_statuses(&self) -> Result<StatusCounts, StoreError> {
        let rows = self
            .bounded(async {
                let db = self.session().await?;
                let statement = db.prepare_cached(COUNT_BY_STATUS).await.map_err(pg)?;
                let rows = db.query(&statement, &[]).await.map_err(pg)?;
                db.done();
                Ok(rows)
            })
            .await?;
        let mut counts = StatusCounts::new("postgres");
        for row in rows {
            if let Some(status) = Status::parse(row.get(0)) {
                counts.add(status, u64::try_from(row.get::<_, i64>(1)).unwrap_or(0));
            }
        }
        Ok(counts)
    }
}

/// Milliseconds since the epoch as a time Postgres accepts (years 1 to 9999).
fn system_time(ms: i64) -> SystemTime {
    let ms = ms.clamp(-62_135_596_800_000, 253_402_300_799_999);
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

impl PostgresStore {
    /// [`PostgresStore::bounded`], counted as one `op` in the store metrics.
    async fn bounded_counted<T>(
        &self,
        op: &StoreOp,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        op.observe(self.bounded(operation)).await
    }
}

fn unavailable(reason: String) -> StoreError {
    StoreError::Unavailable { tier: "postgres", reason }
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    unavailable(describe(&e))
}

/// An error and its causes on one line. tokio-postgres and deadpool print
/// only their own layer ("db error", "error connecting to server"); the
/// useful part is in the sources. None of them holds the URL or password.
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    let text = text.replace('\n', "; ").replace("Error occurred while creating a new object: ", "cannot connect: ");
    crate::tls::with_hint(crate::tls::Store::Postgres, text)
}

#[async_trait]
impl ProgressStore for PostgresStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn report_metrics(&self) {
        let pool = self.pool.status();
        crate::metrics::set_pool("postgres", pool.size, pool.available, pool.max_size, pool.waiting);
    }

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

    async fn ping(&self) -> Result<Duration, StoreError> {
        PostgresStore::ping(self).await
    }

    async fn health(&self) -> Vec<TierHealth> {
        let (probe, latency) = timed(self.check_schema()).await;
        vec![TierHealth::from_probe("postgres", probe, latency, &self.last_error)]
    }

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

    async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
        self.list_page(query).await
    }
}
