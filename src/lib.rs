//! progressd tracks the progress of long-running jobs over HTTP.
//!
//! A map of the crate, from the outside in:
//!
//! - [`settings`]: typed configuration (defaults < `progressd.toml` < environment).
//! - [`app`]: picks the store, builds the router, runs the server until shutdown.
//! - [`http`]: the route table, bearer-token access per route, the outer
//!   layers (CORS, request ids, compression, timeout), extractors,
//!   handlers, and errors as problem+json.
//! - [`live`]: who waits on which record (long-polls, event streams), woken on every change.
//! - [`service`]: the operations (read, the atomic write loop, delete), free of HTTP.
//! - [`domain`]: ids, the record, validation, merge patch, derived fields; no I/O.
//! - [`store`]: one trait, one implementation per tier (memory, Redis).
//! - [`metrics`]: Prometheus metrics: the recorder, the HTTP layer, what the stores count.
//! - [`error`]: the one error type of the request path, each variant a stable code.
//!
//! `main.rs` only loads settings, sets up logging, binds and calls [`run`],
//! so tests start exactly the server the binary starts.

pub mod app;
pub mod domain;
pub mod error;
pub mod healthcheck;
pub mod http;
pub mod live;
pub mod metrics;
pub mod service;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod tls;

pub use app::run;
pub use settings::Settings;
