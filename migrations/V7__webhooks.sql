-- The webhook outbox (issue 21; src/store/postgres/outbox.rs). A delivery
-- is recorded here before the write that causes it is acknowledged, and
-- leaves when it has been delivered (a stall's is kept as `delivered` until
-- `keep_until_ms`, so the same silence is not reported twice) or, given up
-- (`failed`), after seven days. A claim moves `next_ms` to the end of its
-- lease; settling checks that value, so one instance at a time attempts a
-- delivery. Times are ms since the epoch.
CREATE TABLE progress_webhooks (
    id            text    PRIMARY KEY,
    event         text    NOT NULL,
    record_id     text    NOT NULL,
    url           text    NOT NULL,
    operator      boolean NOT NULL,
    body          text    NOT NULL,
    created_ms    bigint  NOT NULL,
    deadline_ms   bigint  NOT NULL,
    attempts      integer NOT NULL DEFAULT 0,
    next_ms       bigint  NOT NULL,
    state         text    NOT NULL DEFAULT 'pending',
    keep_until_ms bigint  NOT NULL DEFAULT 0,
    last_error    text
);
CREATE INDEX progress_webhooks_due ON progress_webhooks (next_ms) WHERE state = 'pending';
