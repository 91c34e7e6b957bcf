//! Connections and the time limit of every operation, and how failures
//! become [`StoreError`]s.
//!
//! tokio-postgres has no per-query timeout, so every operation (pool checkout
//! and query) runs under one `tokio::time::timeout`. A connection whose
//! operation failed or was cut short may still have a query in flight on a
//! server that stopped answering, so it is closed instead of going back to
//! the pool; the pool only checks `is_closed` on checkout
//! ([`RecyclingMethod::Fast`](deadpool_postgres::RecyclingMethod::Fast))
//! and would otherwise hand it to the next request.

use std::ops::Deref;

use deadpool_postgres::{ClientWrapper, Object};

use super::PostgresStore;
use crate::metrics::StoreOp;
use crate::store::StoreError;

impl PostgresStore {
    /// A pooled connection for one operation.
    pub(super) async fn session(&self) -> Result<Session, StoreError> {
        let object = self.pool.get().await.map_err(|e| unavailable(describe(&e)))?;
        Ok(Session(Some(object)))
    }

    /// Runs one operation (checkout and queries) within the timeout.
    pub(super) async fn bounded<T>(&self, op: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let result = tokio::time::timeout(self.timeout, op).await.unwrap_or_else(|_| Err(self.no_answer()));
        self.last_error.observe(result)
    }

    /// [`PostgresStore::bounded`], counted as one `op` in the store metrics.
    pub(super) async fn bounded_counted<T>(
        &self,
        op: &StoreOp,
        operation: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        op.observe(self.bounded(operation)).await
    }

    /// One prepared statement on a pooled connection, within the timeout,
    /// counted as `op`: its rows.
    pub(super) async fn query_counted(
        &self,
        op: &StoreOp,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        self.bounded_counted(op, async {
            let db = self.session().await?;
            let statement = db.prepare_cached(sql).await.map_err(pg)?;
            let rows = db.query(&statement, params).await.map_err(pg)?;
            db.done();
            Ok(rows)
        })
        .await
    }

    /// [`PostgresStore::query_counted`] for a statement without rows: how
    /// many it changed.
    pub(super) async fn execute_counted(
        &self,
        op: &StoreOp,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        self.bounded_counted(op, async {
            let db = self.session().await?;
            let statement = db.prepare_cached(sql).await.map_err(pg)?;
            let changed = db.execute(&statement, params).await.map_err(pg)?;
            db.done();
            Ok(changed)
        })
        .await
    }

    pub(super) fn no_answer(&self) -> StoreError {
        unavailable(format!("no answer within {:?}", self.timeout))
    }
}

/// A connection lent to one operation. It goes back to the pool only through
/// [`Session::done`]; dropped before that (an error, or the timeout cutting
/// the operation short) it is closed, since it may still have a query in
/// flight on a server that no longer answers.
pub(super) struct Session(Option<Object>);

impl Session {
    /// The operation finished: the connection is fit for the next one.
    pub(super) fn done(mut self) {
        drop(self.0.take());
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

pub(super) fn unavailable(reason: String) -> StoreError {
    StoreError::Unavailable { tier: "postgres", reason }
}

pub(super) fn pg(e: tokio_postgres::Error) -> StoreError {
    unavailable(describe(&e))
}

/// An error and its causes on one line. tokio-postgres and deadpool print
/// only their own layer ("db error", "error connecting to server"); the
/// useful part is in the sources. None of them holds the URL or password.
pub(super) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
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
    let text = crate::store::health::connect_failure(&text.replace('\n', "; "));
    crate::tls::with_hint(crate::tls::Store::Postgres, text)
}
