-- One row shared by every instance: when an instance last found Redis
-- answering again after an outage (ms since the epoch), just before it
-- went back to Redis. A write an instance makes in PostgreSQL because its
-- own Redis breaker is open holds this row shared (FOR SHARE) and is given
-- up when the time is at or after its outage began: another instance is
-- back on Redis, and a write here would fork the record. Raising the time
-- waits for every such write in flight, so the instance that raised it
-- copies them all back into Redis before it uses Redis again.
CREATE TABLE progress_fence (
    one           boolean PRIMARY KEY DEFAULT true CHECK (one),
    redis_back_ms bigint  NOT NULL
);
INSERT INTO progress_fence (one, redis_back_ms) VALUES (true, 0);
