//! Prometheus metrics, served by `GET /metrics` in the text format.
//!
//! The `metrics` recorder is process-wide: [`handle`] installs it on first
//! use (tests start many servers in one process; they all record into, and
//! render from, the same registry). The README ("Metrics") lists every
//! metric; the names are the constants below.
//!
//! - **HTTP**: [`RouteMetrics`] counts requests by method, matched route
//!   (`/progress/{id}`, never the raw path; `unmatched` for requests no route
//!   matched) and status, and times them up to the response head.
//! - **Stores**: each tier counts its own operations where they happen
//!   (`store_op!`); the tiered store counts fallback reads. Gauges that
//!   describe state (breakers, backlog, pools) are set at scrape time by
//!   the store's `report_metrics`, which the `/metrics` handler in `http`
//!   calls before [`render`].
//! - **Records**: the service counts writes and deletes; cleanup reports
//!   what it purged through [`records_cleaned_up`].
//!
//! This module sits below everything that records into it: it takes plain
//! values (static names, numbers, booleans) and knows neither the HTTP
//! layer nor the store, so both can call it without an import cycle. A
//! store type that a gauge shows as a number implements [`GaugeValue`].
//!
//! Recording must stay cheap on the request path: label values are static
//! strings, and the handles of the series a request touches are looked up
//! once and kept (`RouteSeries`, the statics behind `store_op!`), so a
//! request costs a few atomic increments rather than registry lookups.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use ::metrics::{Counter, Gauge, Unit};
use ::metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests answered, by `method`, `route` and `status`.
pub const HTTP_REQUESTS: &str = "http_requests_total";
/// Time to the response head, by `method` and `route`.
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";
/// Operations a storage tier ran, by `tier` and `op`.
pub const STORE_OPERATIONS: &str = "progressd_store_operations_total";
/// Operations a storage tier failed, by `tier` and `op`.
pub const STORE_ERRORS: &str = "progressd_store_errors_total";
/// Reads answered by PostgreSQL after Redis missed or failed, by `reason`.
pub const FALLBACK_READS: &str = "progressd_fallback_reads_total";
/// Circuit breaker state by `tier`: 0 closed, 1 half-open, 2 open.
pub const BREAKER_STATE: &str = "progressd_circuit_breaker_state";
/// Times a tier's circuit breaker opened after failures, by `tier`.
pub const BREAKER_OPENED: &str = "progressd_circuit_breaker_opened_total";
/// Records waiting in the write-behind backlog.
pub const BACKLOG_SIZE: &str = "progressd_write_behind_backlog";
/// Age of the oldest write in the backlog (0 when it is empty).
pub const BACKLOG_OLDEST_AGE: &str = "progressd_write_behind_oldest_age_seconds";
/// Accepted writes (PUT and PATCH), by `kind`: `create` or `update`.
pub const RECORDS_WRITTEN: &str = "progressd_records_written_total";
/// Records deleted by a request.
pub const RECORDS_DELETED: &str = "progressd_records_deleted_total";
/// Expired or orphaned records purged by cleanup.
pub const RECORDS_CLEANED_UP: &str = "progressd_records_cleaned_up_total";
/// Connections a pool holds open, by `tier`.
pub const POOL_CONNECTIONS: &str = "progressd_pool_connections";
/// Open connections idle in a pool, by `tier`.
pub const POOL_IDLE: &str = "progressd_pool_idle_connections";
/// Most connections a pool opens, by `tier`.
pub const POOL_MAX: &str = "progressd_pool_max_connections";
/// Requests waiting for a pool connection, by `tier`.
pub const POOL_WAITING: &str = "progressd_pool_waiting";
/// Records held by the read cache in front of Redis.
pub const READ_CACHE_ENTRIES: &str = "progressd_read_cache_entries";
/// Client connections open now.
pub const CONNECTIONS_OPEN: &str = "progressd_connections_open";
/// Connections refused at once because `PROGRESS_MAX_CONNECTIONS` were open.
pub const CONNECTIONS_REFUSED: &str = "progressd_connections_refused_total";
/// Connections closed by a timeout, by `reason`: `header` or `idle`.
pub const CONNECTIONS_TIMED_OUT: &str = "progressd_connections_timed_out_total";
/// Webhook deliveries recorded in the outbox, by `event`.
pub const WEBHOOKS_RECORDED: &str = "progressd_webhooks_recorded_total";
/// Webhook attempts, by `event` and `result`: `delivered`, `retry` (failed,
/// to be tried again) or `failed` (failed, given up).
pub const WEBHOOK_ATTEMPTS: &str = "progressd_webhook_attempts_total";
/// Webhook deliveries that ended, by `event` and `outcome`: `delivered` or `failed`.
pub const WEBHOOK_DELIVERIES: &str = "progressd_webhook_deliveries_total";
/// Webhook deliveries waiting to be sent (in the outbox, every instance's).
pub const WEBHOOKS_PENDING: &str = "progressd_webhooks_pending";
/// Webhook deliveries given up and still kept (`GET /admin/webhooks`).
pub const WEBHOOKS_FAILED: &str = "progressd_webhooks_failed";
/// Age of the oldest pending webhook delivery (0 when none).
pub const WEBHOOKS_OLDEST_AGE: &str = "progressd_webhooks_oldest_pending_age_seconds";

/// Upper bounds of the latency histogram's buckets, in seconds.
pub const DURATION_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The content type of the Prometheus text format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often histogram samples are folded into their buckets between
/// scrapes: the exporter keeps each sample until then (16 bytes a request).
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// The process's Prometheus handle; installs the global recorder on first use.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(HTTP_REQUEST_DURATION.to_owned()), &DURATION_BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        match ::metrics::set_global_recorder(recorder) {
            Ok(()) => describe(),
            Err(e) => tracing::warn!(error = %e, "another metrics recorder is installed; /metrics will be empty"),
        }
        // Without the exporter's HTTP listener nobody else drains histogram
        // samples; a plain thread outlives every test's Tokio runtime.
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no metrics upkeep thread; histograms are drained at scrape time only");
        }
        handle
    })
}

fn describe() {
    describe_counter!(HTTP_REQUESTS, Unit::Count, "HTTP requests answered, by method, matched route and status.");
    describe_histogram!(
        HTTP_REQUEST_DURATION,
        Unit::Seconds,
        "Time from request to response head, by method and route."
    );
    describe_counter!(STORE_OPERATIONS, Unit::Count, "Operations run against a storage tier, by tier and operation.");
    describe_counter!(STORE_ERRORS, Unit::Count, "Operations a storage tier failed, by tier and operation.");
    describe_counter!(
        FALLBACK_READS,
        Unit::Count,
        "Reads answered by PostgreSQL after Redis missed or was unavailable."
    );
    describe_gauge!(BREAKER_STATE, "Circuit breaker state per tier: 0 closed, 1 half-open, 2 open.");
    describe_counter!(BREAKER_OPENED, Unit::Count, "Times a tier's circuit breaker opened after failures.");
    describe_gauge!(BACKLOG_SIZE, Unit::Count, "Records whose latest write PostgreSQL has not seen yet.");
    describe_gauge!(BACKLOG_OLDEST_AGE, Unit::Seconds, "Age of the oldest unflushed write (0 when none).");
    describe_counter!(RECORDS_WRITTEN, Unit::Count, "Accepted writes (PUT and PATCH), by kind: create or update.");
    describe_counter!(RECORDS_DELETED, Unit::Count, "Records deleted by a request.");
    describe_counter!(RECORDS_CLEANED_UP, Unit::Count, "Expired or orphaned records purged by cleanup.");
    describe_gauge!(POOL_CONNECTIONS, Unit::Count, "Connections the pool holds open.");
    describe_gauge!(POOL_IDLE, Unit::Count, "Open connections idle in the pool.");
    describe_gauge!(POOL_MAX, Unit::Count, "Most connections the pool opens.");
    describe_gauge!(POOL_WAITING, Unit::Count, "Requests waiting for a pool connection.");
    describe_gauge!(READ_CACHE_ENTRIES, Unit::Count, "Records held by the read cache in front of Redis.");
    describe_gauge!(CONNECTIONS_OPEN, Unit::Count, "Client connections open now.");
    describe_counter!(WEBHOOKS_RECORDED, Unit::Count, "Webhook deliveries recorded in the outbox, by event.");
    describe_counter!(
        WEBHOOK_ATTEMPTS,
        Unit::Count,
        "Webhook attempts, by event and result: delivered, retry or failed (given up)."
    );
    describe_counter!(WEBHOOK_DELIVERIES, Unit::Count, "Webhook deliveries that ended, by event and outcome.");
    describe_gauge!(WEBHOOKS_PENDING, Unit::Count, "Webhook deliveries waiting to be sent.");
    describe_gauge!(WEBHOOKS_FAILED, Unit::Count, "Webhook deliveries given up and still kept.");
    describe_gauge!(WEBHOOKS_OLDEST_AGE, Unit::Seconds, "Age of the oldest pending webhook delivery (0 when none).");
    describe_counter!(CONNECTIONS_REFUSED, Unit::Count, "Connections refused because the most allowed were open.");
    describe_counter!(
        CONNECTIONS_TIMED_OUT,
        Unit::Count,
        "Connections closed by the header timeout or the idle timeout, by reason."
    );
}

/// Every metric in the text format ([`TEXT_FORMAT`]), as of now.
pub fn render() -> String {
    handle().render()
}

// --- storage ------------------------------------------------------------------

/// The counters of one kind of store operation (one `tier`, one `op`).
pub struct StoreOp {
    operations: Counter,
    errors: Counter,
}

impl StoreOp {
    /// Registers the pair; `store_op!` keeps one per call site.
    pub fn new(tier: &'static str, op: &'static str) -> Self {
        handle();
        Self {
            operations: counter!(STORE_OPERATIONS, "tier" => tier, "op" => op),
            errors: counter!(STORE_ERRORS, "tier" => tier, "op" => op),
        }
    }

    /// Counts one finished operation, and its failure (whatever the error type).
    pub fn count<T, E>(&self, result: &Result<T, E>) {
        self.operations.increment(1);
        if result.is_err() {
            self.errors.increment(1);
        }
    }

    /// Counts one operation that cannot fail (the memory tier).
    pub fn succeeded(&self) {
        self.operations.increment(1);
    }

    /// Awaits `operation` and counts it.
    pub async fn observe<T, E>(&self, operation: impl Future<Output = Result<T, E>>) -> Result<T, E> {
        let result = operation.await;
        self.count(&result);
        result
    }
}

/// `store_op!("redis", "get")`: the `&'static` [`StoreOp`] of this call site,
/// registered on first use so that counting is one atomic increment.
macro_rules! store_op {
    ($tier:literal, $op:literal) => {{
        static OP: ::std::sync::OnceLock<$crate::metrics::StoreOp> = ::std::sync::OnceLock::new();
        OP.get_or_init(|| $crate::metrics::StoreOp::new($tier, $op))
    }};
}
pub(crate) use store_op;

/// Counters without per-call labels, registered once.
struct Counters {
    fallback_miss: Counter,
    fallback_unavailable: Counter,
    created: Counter,
    updated: Counter,
    deleted: Counter,
    cleaned_up: Counter,
    connections_open: Gauge,
    connections_refused: Counter,
    header_timeouts: Counter,
    idle_timeouts: Counter,
}

fn counters() -> &'static Counters {
    static COUNTERS: OnceLock<Counters> = OnceLock::new();
    COUNTERS.get_or_init(|| {
        handle();
        Counters {
            fallback_miss: counter!(FALLBACK_READS, "reason" => "redis_miss"),
            fallback_unavailable: counter!(FALLBACK_READS, "reason" => "redis_unavailable"),
            created: counter!(RECORDS_WRITTEN, "kind" => "create"),
            updated: counter!(RECORDS_WRITTEN, "kind" => "update"),
            deleted: counter!(RECORDS_DELETED),
            cleaned_up: counter!(RECORDS_CLEANED_UP),
            connections_open: gauge!(CONNECTIONS_OPEN),
            connections_refused: counter!(CONNECTIONS_REFUSED),
            header_timeouts: counter!(CONNECTIONS_TIMED_OUT, "reason" => "header"),
            idle_timeouts: counter!(CONNECTIONS_TIMED_OUT, "reason" => "idle"),
        }
    })
}

/// PostgreSQL answered a read because Redis missed (`true`) or was unavailable.
pub fn fallback_read(redis_missed: bool) {
    let c = counters();
    if redis_missed { &c.fallback_miss } else { &c.fallback_unavailable }.increment(1);
}

/// A write was accepted; `created` when it created the record.
pub fn record_written(created: bool) {
    let c = counters();
    if created { &c.created } else { &c.updated }.increment(1);
}

/// `n` records were deleted by requests (single or bulk deletes).
pub fn records_deleted(n: u64) {
    counters().deleted.increment(n);
}

/// `n` expired or orphaned records were purged by cleanup.
pub fn records_cleaned_up(n: u64) {
    counters().cleaned_up.increment(n);
}

/// A client connection was accepted; the gauge goes down again when the
/// returned guard is dropped.
pub fn connection_opened() -> OpenConnection {
    counters().connections_open.increment(1.0);
    OpenConnection(())
}

/// Counts one open connection in [`CONNECTIONS_OPEN`] while it lives.
#[derive(Debug)]
pub struct OpenConnection(());

impl Drop for OpenConnection {
    fn drop(&mut self) {
        counters().connections_open.decrement(1.0);
    }
}

/// A connection was refused because the most allowed were open.
pub fn connection_refused() {
    counters().connections_refused.increment(1);
}

/// A connection was closed by the header timeout (`header`) or the idle
/// timeout (`idle`).
pub fn connection_timed_out(header: bool) {
    let c = counters();
    if header { &c.header_timeouts } else { &c.idle_timeouts }.increment(1);
}

/// A circuit breaker opened after failures of `tier`.
pub fn breaker_opened(tier: &'static str) {
    handle();
    counter!(BREAKER_OPENED, "tier" => tier).increment(1);
}

/// A state that a gauge shows as a number. The store's breaker state
/// implements it ([`BREAKER_STATE`]: 0 closed, 1 half-open, 2 open), so
/// this module need not know the store's types.
pub trait GaugeValue {
    /// The value the gauge is set to.
    fn gauge_value(self) -> f64;
}

impl GaugeValue for f64 {
    fn gauge_value(self) -> f64 {
        self
    }
}

/// Sets the breaker gauge of `tier` (scrape time).
pub fn set_breaker_state(tier: &'static str, state: impl GaugeValue) {
    gauge!(BREAKER_STATE, "tier" => tier).set(state.gauge_value());
}

/// Sets the write-behind gauges (scrape time).
pub fn set_backlog(len: usize, oldest: Option<Duration>) {
    gauge!(BACKLOG_SIZE).set(len as f64);
    gauge!(BACKLOG_OLDEST_AGE).set(oldest.unwrap_or_default().as_secs_f64());
}

/// Sets the pool gauges of `tier` from deadpool's `Pool::status()` (scrape time).
pub fn set_pool(tier: &'static str, size: usize, available: usize, max_size: usize, waiting: usize) {
    gauge!(POOL_CONNECTIONS, "tier" => tier).set(size as f64);
    gauge!(POOL_IDLE, "tier" => tier).set(available as f64);
    gauge!(POOL_MAX, "tier" => tier).set(max_size as f64);
    gauge!(POOL_WAITING, "tier" => tier).set(waiting as f64);
}

/// A webhook delivery of `event` was recorded.
pub fn webhook_recorded(event: &'static str) {
    handle();
    counter!(WEBHOOKS_RECORDED, "event" => event).increment(1);
}

/// A webhook attempt of `event` ended with `result` (`delivered`, `retry`,
/// `failed`); the last two end the delivery.
pub fn webhook_attempt(event: &'static str, result: &'static str) {
    handle();
    counter!(WEBHOOK_ATTEMPTS, "event" => event, "result" => result).increment(1);
    if result != "retry" {
        counter!(WEBHOOK_DELIVERIES, "event" => event, "outcome" => result).increment(1);
    }
}

/// Sets the webhook outbox gauges (by the delivery task, every few seconds).
pub fn set_webhooks(pending: u64, failed: u64, oldest: Option<Duration>) {
    handle();
    gauge!(WEBHOOKS_PENDING).set(pending as f64);
    gauge!(WEBHOOKS_FAILED).set(failed as f64);
    gauge!(WEBHOOKS_OLDEST_AGE).set(oldest.unwrap_or_default().as_secs_f64());
}

/// Sets the read cache gauge (scrape time).
pub fn set_read_cache_entries(entries: usize) {
    gauge!(READ_CACHE_ENTRIES).set(entries as f64);
}

mod http;

pub use http::{RequestMetrics, RouteMetrics, UNMATCHED};
