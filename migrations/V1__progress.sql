-- The durable tier: one row per job id, written behind the hot tier.
--
-- `record` holds the exact bytes the hot tier holds (the header line, a
-- newline, then the record JSON as GET returns it). bytea, never jsonb:
-- jsonb would reorder keys, drop duplicate ones and rewrite numbers
-- (9007199254740993 and 0.1 must come back byte for byte), and a row read
-- back is served or put back into Redis without any JSON work.
--
-- The other columns copy fields out of `record` so that Postgres can guard,
-- expire, list and filter without parsing it; the writer keeps them in step.
CREATE TABLE progress (
    id          text        PRIMARY KEY,
    -- The record's version: upserts only ever move it forward, so an
    -- instance flushing an old copy never overwrites a newer one.
    version     bigint      NOT NULL,
    status      text        NOT NULL,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    -- A row past this time is treated as absent by every read and guard,
    -- whether or not cleanup has removed it yet.
    expires_at  timestamptz NOT NULL,
    record      bytea       NOT NULL
);

-- Cleanup deletes `WHERE expires_at <= now()` in batches without a full scan.
CREATE INDEX progress_expires_at ON progress (expires_at);

-- Newest-first listings for dashboards, and the "updated since" scan that
-- refills the hot tier after an outage.
CREATE INDEX progress_updated_at ON progress (updated_at DESC);

-- Counts by status for /admin/stats and `?status=` listings.
CREATE INDEX progress_status ON progress (status);
