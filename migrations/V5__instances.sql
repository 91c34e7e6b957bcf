-- One row per running Redis-over-PostgreSQL instance (src/store/tiered/handover.rs).
-- seen_ms: its last heartbeat; flushed_ms: the latest flush request it has
-- answered, meaning that everything it acknowledged from Redis before that
-- request is in `progress`; redis_up: whether Redis answered it then. Both in this server's clock (ms since the epoch),
-- so the instances' own clocks need not agree. An instance whose Redis fails
-- asks all to flush (NOTIFY progress_peers) and writes here once every row
-- with a recent heartbeat has answered its request, none with redis_up.
CREATE TABLE progress_instances (
    instance   text   PRIMARY KEY,
    seen_ms    bigint NOT NULL,
    flushed_ms bigint NOT NULL DEFAULT 0,
    redis_up   boolean NOT NULL DEFAULT false
);
