//! progressd tracks the progress of long-running jobs over HTTP.
//!
//! Workers write a record per job (`PUT`/`PATCH /progress/{id}`); readers
//! poll it, long-poll it or stream its changes. Records live in a store
//! chosen at start-up from two settings: process memory (neither set),
//! Redis (`REDIS_URL`), PostgreSQL (`DATABASE_URL`), or Redis over
//! PostgreSQL (both). `ARCHITECTURE.md` at the root of the repository
//! walks through the design; this is the map of the crate, from the
//! outside in:
//!
//! - [`app`]: builds the store from settings, the service and the router,
//!   and runs the server until shutdown ([`run`]); [`serve`] is the server
//!   loop: the connection cap, the header and idle timeouts, graceful
//!   shutdown.
//! - [`http`]: the route table with each route's access class, the outer
//!   layers (CORS, request ids, compression, timeout), extractors,
//!   handlers, and errors as problem+json. Handlers call the service only.
//! - [`service`]: the operations (read, the atomic write loop, delete,
//!   listing, the admin operations), free of HTTP.
//! - [`live`]: who waits on which record (long-polls, event streams); one
//!   re-read per change for all of them.
//! - [`domain`]: ids, the record, validation, merge patch, derived fields,
//!   the stored form; no I/O.
//! - [`store`]: the store traits (`ProgressStore`, `Health`,
//!   `Maintenance`; together `Store`) and their implementations: the
//!   embedded store (`memory`), Redis (`redis/`), PostgreSQL
//!   (`postgres/`), the read cache in front of Redis (`cached/`), and the
//!   tiering layer (`tiered/`: Redis over PostgreSQL, generic over a
//!   `HotTier` and a `DurableTier`, with breakers, write-behind, fence,
//!   settle and copy-back).
//! - Beside them: [`settings`] (typed configuration: defaults <
//!   `progressd.toml` < environment), [`secrets`] (passwords and tokens
//!   kept out of logs), [`metrics`] (Prometheus), [`error`] (the one error
//!   type of the request path, each variant a stable code), [`telemetry`]
//!   (logging), [`tls`] (rustls for the stores) and [`healthcheck`] (the
//!   `progressd healthcheck` command), [`tokens`] (scoped read tokens:
//!   signing keys, minting and verifying HS256 JWTs).
//!
//! `main.rs` only parses the command, loads settings, sets up logging,
//! binds and calls [`run`], so tests start exactly the server the binary
//! starts.

pub mod app;
pub mod domain;
pub mod error;
pub mod healthcheck;
pub mod http;
pub mod live;
pub mod metrics;
pub mod secrets;
pub mod serve;
pub mod service;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod tokens;
pub mod webhooks;

pub use app::run;
pub use settings::Settings;
