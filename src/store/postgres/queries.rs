//! The SQL the store runs, in one place: per-record reads and writes,
//! the write-behind upsert, the fence, cleanup, bulk deletes and listing.
//! Every statement treats a row past `expires_at` as absent, and a
//! tombstone (`deleted`) as a delete that outranks every version.

/// The live record, if any.
pub(super) const GET: &str = "SELECT record FROM progress WHERE id = $1 AND expires_at > now() AND NOT deleted";

/// The row whatever its state: live, a tombstone, or expired.
pub(super) const LOOKUP: &str = "SELECT record, deleted, created_at FROM progress WHERE id = $1 AND expires_at > now()";

/// A create: inserts, or overwrites a row that is there but expired (which
/// counts as absent). No row is affected when a live one exists.
pub(super) const CREATE: &str = "
INSERT INTO progress (id, version, status, created_at, updated_at, expires_at, record)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (id) DO UPDATE SET
    version = EXCLUDED.version, status = EXCLUDED.status, created_at = EXCLUDED.created_at,
    updated_at = EXCLUDED.updated_at, expires_at = EXCLUDED.expires_at, record = EXCLUDED.record,
    deleted = false
WHERE progress.expires_at <= now() OR progress.deleted";

/// An update of the live row whose version is `$8`.
pub(super) const REPLACE: &str = "
UPDATE progress SET
    version = $2, status = $3, created_at = $4, updated_at = $5, expires_at = $6, record = $7
WHERE id = $1 AND version = $8 AND expires_at > now() AND NOT deleted";

/// The version-guarded batch upsert of the write-behind flush. A row is
/// written when its id is absent, stored with a lower version, or expired
/// (a record created again after expiry starts over at version 1). Rows go
/// in id order so that two instances flushing overlapping batches lock them
/// in the same order and cannot deadlock.
pub(super) const UPSERT_NEWER: &str = "
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
pub(super) const UPDATED_SINCE: &str = "
SELECT id, record, deleted, created_at, updated_at FROM progress
WHERE updated_at >= $1 AND expires_at > now()
ORDER BY updated_at, id
LIMIT $2";

/// Turns the live row with version `$2` into a tombstone.
pub(super) const COMPARE_AND_DELETE: &str = "
UPDATE progress SET deleted = true, version = 9223372036854775807, updated_at = now(),
    status = 'deleted', gone_at = now()
WHERE id = $1 AND version = $2 AND expires_at > now() AND NOT deleted";

/// Turns the row into a tombstone, or writes one when there is no row (the
/// record may be in another instance's backlog, created while PostgreSQL
/// was down). The answer says whether a live record was deleted.
pub(super) const DELETE: &str = "
WITH old AS (SELECT expires_at > now() AND NOT deleted AS live FROM progress WHERE id = $1)
INSERT INTO progress (id, version, status, created_at, updated_at, expires_at, record, deleted)
VALUES ($1, 9223372036854775807, 'deleted', now(), now(), now() + interval '1 day', ''::bytea, true)
ON CONFLICT (id) DO UPDATE SET
    deleted = true, version = 9223372036854775807, updated_at = now(),
    expires_at = greatest(progress.expires_at, now() + interval '1 day'),
    status = CASE WHEN progress.expires_at > now() THEN 'deleted' ELSE 'expired' END,
    gone_at = least(progress.expires_at, now())
WHERE NOT progress.deleted
RETURNING (SELECT live FROM old)";

/// Opens the transaction of a write made while Redis is down and takes the
/// fence row shared (see `migrations/V4__redis_fence.sql`): one round trip.
pub(super) const ENTER_FENCE: &str = "BEGIN; SELECT redis_back_ms FROM progress_fence FOR SHARE";

/// Records that Redis answers again; waits for the fenced writes in flight.
pub(super) const RAISE_FENCE: &str = "
INSERT INTO progress_fence (one, redis_back_ms) VALUES (true, $1)
ON CONFLICT (one) DO UPDATE SET redis_back_ms = greatest(progress_fence.redis_back_ms, EXCLUDED.redis_back_ms)";

/// One batch of rows expired for longer than the tombstone time (`$2` ms),
/// records and tombstones: until then an expired row says when it expired
/// (410). Each batch is its own short statement, so purging a million rows
/// never holds many locks for long.
pub(super) const PURGE_EXPIRED: &str = "
DELETE FROM progress
WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM progress WHERE expires_at <= now() - $2::bigint * interval '1 millisecond' LIMIT $1))
  AND expires_at <= now() - $2::bigint * interval '1 millisecond'";

/// How the record went, if it did: a tombstone's kind (`status`) and time
/// (`gone_at`), or an expired row's expiry. No row for a live record.
pub(super) const GONE: &str = "
SELECT CASE WHEN deleted THEN status ELSE 'expired' END, CASE WHEN deleted THEN gone_at ELSE expires_at END
FROM progress WHERE id = $1 AND (deleted OR expires_at <= now())";

/// The conditions of a [`RecordFilter`](crate::store::RecordFilter) on live rows: `$1` status, `$2` id
/// prefix, `$3` updated before (each NULL when not set).
pub(super) const LIVE_MATCHING: &str = "
NOT deleted AND expires_at > now()
  AND ($1::text IS NULL OR status = $1)
  AND ($2::text IS NULL OR starts_with(id, $2))
  AND ($3::timestamptz IS NULL OR updated_at < $3)";

/// The tombstone a delete leaves (see `DELETE`): deleted now, or expired
/// at its expiry when the row had expired before the delete reached it.
pub(super) const TOMBSTONE_SET: &str = "
deleted = true, version = 9223372036854775807, updated_at = now(),
expires_at = greatest(progress.expires_at, now() + interval '1 day'),
status = CASE WHEN progress.expires_at > now() THEN 'deleted' ELSE 'expired' END,
gone_at = least(progress.expires_at, now())";

/// Live records per status.
pub(super) const COUNT_BY_STATUS: &str =
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
pub(super) const LIST_ALL: &str = list_page!(list_window!(""));

/// A listing page over the statuses `$6`: each status's newest rows after
/// the cursor (index `progress_listing_status`), merged.
pub(super) const LIST_BY_STATUS: &str = list_page!(concat!(
    "SELECT p.* FROM unnest($6::text[]) AS s(status) CROSS JOIN LATERAL (",
    list_window!("AND status = s.status"),
    ") p ORDER BY created_at DESC, id DESC LIMIT $4"
));

/// The server's clock in ms since the epoch: the instances' heartbeats and
/// flush requests are compared in it, not in their own clocks.
macro_rules! now_ms {
    () => {
        "(extract(epoch FROM clock_timestamp()) * 1000)::bigint"
    };
}

/// The channel of flush requests and confirmations (`peers.rs`).
pub(super) const PEER_CHANNEL: &str = "progress_peers";

/// An instance is alive now; rows silent for a day are gone for good.
pub(super) const HEARTBEAT: &str = concat!(
    "WITH gone AS (DELETE FROM progress_instances WHERE seen_ms < ",
    now_ms!(),
    " - 86400000) INSERT INTO progress_instances (instance, seen_ms) VALUES ($1, ",
    now_ms!(),
    ") ON CONFLICT (instance) DO UPDATE SET seen_ms = EXCLUDED.seen_ms"
);

/// Asks every instance to flush, as of `$1` (null: now); the request's time.
pub(super) const REQUEST_FLUSH: &str = concat!(
    "SELECT at, pg_notify('progress_peers', 'flush:' || at)::text FROM (SELECT coalesce($1::bigint, ",
    now_ms!(),
    ") AS at) request"
);

/// An instance flushed for the request of `$2`, and Redis answered it (`$3`) or not.
pub(super) const CONFIRM_FLUSH: &str = concat!(
    "INSERT INTO progress_instances (instance, seen_ms, flushed_ms, redis_up) VALUES ($1, ",
    now_ms!(),
    ", $2, $3) ON CONFLICT (instance) DO UPDATE SET seen_ms = EXCLUDED.seen_ms, ",
    "redis_up = CASE WHEN EXCLUDED.flushed_ms >= progress_instances.flushed_ms ",
    "THEN EXCLUDED.redis_up ELSE progress_instances.redis_up END, ",
    "flushed_ms = greatest(progress_instances.flushed_ms, EXCLUDED.flushed_ms)"
);

/// Tells the instances that wait to check again.
pub(super) const NOTIFY_FLUSHED: &str = "SELECT pg_notify('progress_peers', 'flushed')::text";

/// Of the instances heard from in the last `$2` ms: how many have not answered
/// the request of `$1`, and how many answered that Redis answers them.
pub(super) const FLUSH_STATE: &str = concat!(
    "SELECT count(*) FILTER (WHERE flushed_ms < $1), count(*) FILTER (WHERE flushed_ms >= $1 AND redis_up) ",
    "FROM progress_instances WHERE seen_ms >= ",
    now_ms!(),
    " - $2"
);

/// An instance shut down with its backlog flushed.
pub(super) const LEAVE: &str = "DELETE FROM progress_instances WHERE instance = $1";
