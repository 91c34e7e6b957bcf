//! Listing and counting in PostgreSQL: one page of live rows newest
//! first, in one statement over the listing indexes, and live records per
//! status.

use bytes::Bytes;

use super::PostgresStore;
use super::queries::{COUNT_BY_STATUS, LIST_ALL, LIST_BY_STATUS};
use super::rows::{millis, system_time};
use super::session::pg;
use crate::domain::{CorruptRecord, ProgressId, Status, StoredRecord};
use crate::metrics::store_op;
use crate::store::listing::{ListCursor, ListPage, ListQuery};
use crate::store::{StatusCounts, StoreError};

impl PostgresStore {
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
