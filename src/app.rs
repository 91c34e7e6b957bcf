//! Assembly: the store chosen from settings, the router, and `run`, which
//! serves them (the server loop itself is `serve.rs`) until shutdown.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::domain::WritePolicy;
use crate::http::{self, AccessTokens, AppState, BodyLimits, LayerSettings, SharedState};
use crate::live::Live;
use crate::service::ProgressService;
use crate::settings::{Settings, redact_url};
use crate::store::{
    CacheConfig, CachedStore, ChangeNotices, ChangeSink, ErrorLog, Fallback, Hot, MemoryOutbox, MemoryStore, Outbox,
    PostgresStore, PostgresStoreConfig, RedisStore, RedisStoreConfig, Store, TierState, TieredConfig, TieredStore,
};
use crate::tls::{self, Verify};
use crate::tokens::SigningKeys;
use crate::webhooks::{WebhookConfig, Webhooks};

/// Redis's change notices, when there is a Redis.
pub type Notices = Option<Arc<ChangeNotices>>;

/// What [`build_store`] builds: the store, Redis's change notices and the
/// webhook outbox, kept where the records are.
pub struct Built {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Redis's change notices, when there is a Redis.
    pub notices: Notices,
    /// Where webhook deliveries are recorded: memory, Redis, PostgreSQL, or
    /// PostgreSQL falling back to Redis.
    pub outbox: Arc<dyn Outbox>,
}

/// How often the embedded store drops expired records from memory.
const MEMORY_SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The store the settings ask for:
///
/// | `REDIS_URL` | `DATABASE_URL` | store |
/// |---|---|---|
/// | unset | unset | process memory (the embedded default) |
/// | set | unset | Redis, behind the coherent read cache unless it is off |
/// | unset | set | PostgreSQL alone |
/// | set | set | Redis over PostgreSQL: [`TieredStore`] |
///
/// With Redis, also the subscription to its change notices, which keeps
/// the read cache coherent and carries live updates across instances.
///
/// Never waits for a tier: one that is down at start-up is reported per
/// request (and retried in the background), not as a start-up failure.
/// Must run inside Tokio.
pub fn build_store(settings: &Settings) -> anyhow::Result<Built> {
    let (hot, notices) = match &settings.redis_url {
        Some(url) => {
            let (hot, notices) = build_redis(settings, url)?;
            (Some(hot), Some(notices))
        }
        None => (None, None),
    };
    let Some(database_url) = &settings.database_url else {
        let (store, outbox): (Arc<dyn Store>, Arc<dyn Outbox>) = match hot {
            Some(hot) => (hot.store, hot.tier),
            None => {
                tracing::info!(
                    "hot tier: process memory (REDIS_URL is unset; records are lost when the process exits)"
                );
                tracing::info!("durable tier: none (DATABASE_URL is unset)");
                let store: Arc<dyn Store> =
                    MemoryStore::start_with_tombstones(MEMORY_SWEEP_EVERY, settings.tombstone());
                (store, Arc::new(MemoryOutbox::default()))
            }
        };
        return Ok(Built { store, notices, outbox });
    };
    let config = PostgresStoreConfig {
        url: database_url.clone(),
        pool_size: settings.database_pool_size,
        timeout: settings.database_timeout(),
    };
    let durable = PostgresStore::with_defaults(config, &settings.database_defaults())
        .map_err(|e| {
            anyhow::anyhow!("invalid setting {} ({}): {e}", settings.database_url_variable, redact_url(database_url))
        })?
        .with_tombstone(settings.tombstone());
    tracing::info!(
        postgres = %redact_url(database_url),
        from = settings.database_url_variable,
        sslmode = durable.ssl_mode().as_str(),
        "durable tier: PostgreSQL (migrations run in the background)"
    );
    if hot.is_none() {
        tracing::info!("hot tier: none (REDIS_URL is unset); every request goes to PostgreSQL");
    }
    let config = TieredConfig {
        persist_interval: Duration::from_secs(settings.persist_interval_seconds),
        breaker_failures: settings.breaker_failures,
        probe_every: Duration::from_millis(settings.breaker_probe_ms),
        shutdown_flush: Duration::from_secs(settings.shutdown_flush_seconds),
        first_answer_wait: settings.database_timeout(),
    };
    let durable = Arc::new(durable);
    let outbox: Arc<dyn Outbox> = match &hot {
        Some(hot) => Arc::new(Fallback::new(durable.clone(), hot.tier.clone())),
        None => durable.clone(),
    };
    let store: Arc<TieredStore<RedisStore, PostgresStore>> = TieredStore::start(hot, durable, config);
    Ok(Built { store, notices, outbox })
}

/// Redis, behind the read cache unless `PROGRESS_CACHE_MAX_AGE_MS` is 0,
/// and the subscription to its change notices.
fn build_redis(settings: &Settings, url: &str) -> anyhow::Result<(Hot<RedisStore>, Arc<ChangeNotices>)> {
    let variable = settings.redis_url_variable;
    let invalid = |e: &dyn std::fmt::Display| anyhow::anyhow!("invalid setting {variable} ({}): {e}", redact_url(url));
    let (client, tls) = redis_client(settings, url).map_err(|e| invalid(&e))?;
    let redis = Arc::new(
        RedisStore::with_client(
            RedisStoreConfig {
                url: url.to_owned(),
                key_prefix: settings.key_prefix.clone(),
                pool_size: settings.redis_pool_size,
                shared_connections: settings.redis_connections,
                timeout: settings.redis_timeout(),
            },
            &client,
        )
        .map_err(|e| invalid(&e))?
        .with_tombstone(settings.tombstone()),
    );
    let security = match tls.as_ref().map(|(_, verify)| *verify) {
        None => "plain",
        Some(Verify::Nothing) => "TLS, unverified",
        Some(_) => "TLS",
    };
    tracing::info!(redis = %redact_url(url), from = variable, security, key_prefix = %settings.key_prefix, "hot tier: Redis");
    let notices = ChangeNotices::listen(
        client,
        tls.map(|(config, _)| Arc::new(config)),
        redis.changes_channel().to_owned(),
        settings.redis_timeout(),
    );
    if settings.cache_max_age_ms == 0 {
        return Ok((Hot { store: redis.clone(), tier: redis, cache: None }, notices));
    }
    let cached = Arc::new(CachedStore::new(
        redis.clone(),
        CacheConfig {
            max_age: Duration::from_millis(settings.cache_max_age_ms),
            max_entries: settings.cache_max_entries,
        },
    ));
    notices.attach(Arc::downgrade(&cached) as std::sync::Weak<dyn ChangeSink>);
    Ok((Hot { store: cached.clone(), tier: redis, cache: Some(cached) }, notices))
}

/// The Redis client for `url`, and for `rediss://` the TLS configuration
/// of the change-notice subscription, which checks the server as the pool
/// does: against `PROGRESS_REDIS_CA_FILE`, or the system's roots, or not at
/// all when the URL ends in `#insecure`.
fn redis_client(
    settings: &Settings,
    url: &str,
) -> Result<(redis::Client, Option<(rustls::ClientConfig, Verify)>), String> {
    tls::install_provider();
    let ca_file = settings.redis_ca_file.as_deref();
    if !url.starts_with("rediss://") {
        if ca_file.is_some() {
            tracing::warn!(
                "PROGRESS_REDIS_CA_FILE is set but the Redis URL is not rediss://: the connection is not encrypted"
            );
        }
        return Ok((redis::Client::open(url).map_err(|e| e.to_string())?, None));
    }
    let insecure = url.ends_with("#insecure");
    if insecure {
        tracing::warn!(
            "Redis over TLS WITHOUT certificate verification (#insecure in the URL): the connection is encrypted, but the server is not checked"
        );
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        return Ok((client, Some((tls::client_config(Verify::Nothing, None)?, Verify::Nothing))));
    }
    // The CA file is read once: the subscription's roots and the pool's
    // (redis-rs parses its own copy of the PEM) come from the same bytes.
    let (client, roots) = match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("PROGRESS_REDIS_CA_FILE: cannot read {path}: {e}"))?;
            let roots = tls::roots_from_pem(&pem, std::path::Path::new(path))
                .map_err(|e| format!("PROGRESS_REDIS_CA_FILE: {e}"))?;
            let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
            (redis::Client::build_with_tls(url, certificates).map_err(|e| e.to_string())?, roots)
        }
        None => (redis::Client::open(url).map_err(|e| e.to_string())?, tls::roots(None)?),
    };
    Ok((client, Some((tls::client_config(Verify::Full, Some(roots))?, Verify::Full))))
}

/// Listens on `host`:`port`. Without a host, on `::` with IPv4 mapped
/// (dual-stack: Railway's private network and Fly's 6PN are IPv6, most
/// health checks and proxies IPv4), or on 0.0.0.0 where the machine has
/// no IPv6.
pub fn bind(host: Option<IpAddr>, port: u16) -> Result<TcpListener, String> {
    let cannot = |address: SocketAddr, e: std::io::Error| format!("cannot listen on {address}: {e}");
    match host {
        Some(ip) => listen(SocketAddr::new(ip, port), false).map_err(|e| cannot(SocketAddr::new(ip, port), e)),
        None => {
            let dual = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
            match listen(dual, true) {
                Ok(listener) => Ok(listener),
                Err(e) if matches!(e.kind(), std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied) => {
                    Err(cannot(dual, e))
                }
                Err(e) => {
                    tracing::info!(error = %e, "no IPv6 here; listening on IPv4 only");
                    let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
                    listen(v4, false).map_err(|e| cannot(v4, e))
                }
            }
        }
    }
}

fn listen(address: SocketAddr, dual_stack: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))?;
    if dual_stack {
        socket.set_only_v6(false)?;
    }
    // As tokio's own bind does: a restart need not wait out TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Logs, per tier, when it cannot be used and why (once, again when the
/// reason changes, and at most once a minute while it lasts), and when it
/// answers again. Probes every second while a tier is down, every ten
/// while all are up; stops once the store is dropped.
fn watch_tiers(store: &Arc<dyn Store>) {
    use crate::store::MIGRATIONS_PENDING;
    let store = Arc::downgrade(store);
    tokio::spawn(async move {
        let mut logs: Vec<(&'static str, ErrorLog, bool)> = Vec::new();
        loop {
            let Some(s) = store.upgrade() else { return };
            let tiers = s.health().await;
            drop(s);
            let mut all_up = true;
            for tier in tiers {
                let at = match logs.iter().position(|(name, _, _)| *name == tier.tier) {
                    Some(at) => at,
                    None => {
                        logs.push((tier.tier, ErrorLog::default(), false));
                        logs.len() - 1
                    }
                };
                let (name, log, seen_up) = &mut logs[at];
                if tier.state == TierState::Up {
                    if log.clear() || !*seen_up {
                        tracing::info!(
                            tier = *name,
                            latency_ms = tier.latency.as_secs_f64() * 1000.0,
                            "{name} answers"
                        );
                    }
                    *seen_up = true;
                    continue;
                }
                all_up = false;
                let error = tier.last_error.map(|(_, e)| e).unwrap_or_else(|| "down".into());
                // Reachable, migrations under way (or failing, which the
                // migration task reports): not a connection problem.
                if error.contains(MIGRATIONS_PENDING) {
                    continue;
                }
                if log.should_log(&error) {
                    tracing::error!(tier = *name, error = %error, "cannot use {name}; retrying");
                }
            }
            let pause = if all_up { Duration::from_secs(10) } else { Duration::from_secs(1) };
            tokio::time::sleep(pause).await;
        }
    });
}

/// The application router over `store`, with live updates from this
/// instance's writes only, and webhooks (recorded in memory) when the
/// settings turn them on. Must run inside Tokio.
pub fn build_router(settings: &Settings, store: Arc<dyn Store>) -> http::App {
    let hooks = build_webhooks(settings, Arc::new(MemoryOutbox::default())).ok().flatten();
    build_app(settings, store, None, hooks).0
}

/// The application router over `store`, and its live-update hub, which
/// also hears of other instances' writes through `notices`. With `hooks`,
/// writes record webhook deliveries.
pub fn build_app(
    settings: &Settings,
    store: Arc<dyn Store>,
    notices: Notices,
    hooks: Option<Arc<Webhooks>>,
) -> (http::App, Live) {
    let policy = WritePolicy {
        default_ttl_seconds: settings.ttl_seconds,
        heartbeat_ms: i64::try_from(settings.heartbeat_seconds).unwrap_or(i64::MAX / 1000) * 1000,
    };
    let mut service = ProgressService::new(store, policy, settings.max_ttl_seconds);
    if let Some(hooks) = hooks {
        hooks.spawn(service.clone());
        service = service.with_webhooks(hooks);
    }
    let live = service.live().clone();
    if let Some(notices) = notices {
        live.attach(notices);
    }
    let state = AppState::new(SharedState {
        service,
        limits: BodyLimits { max_body_bytes: settings.max_body_bytes, max_json_depth: settings.max_json_depth },
        tokens: Arc::new(AccessTokens::from_settings(settings, signing_keys(settings))),
        layers: LayerSettings::from_settings(settings),
        heartbeat: Duration::from_secs(settings.sse_heartbeat_seconds),
        max_token_ttl_seconds: settings.max_token_ttl_seconds,
    });
    (http::router(state), live)
}

/// Webhooks, when `PROGRESS_WEBHOOK_SECRET` is set, over `outbox`.
fn build_webhooks(settings: &Settings, outbox: Arc<dyn Outbox>) -> anyhow::Result<Option<Arc<Webhooks>>> {
    let Some(config) = WebhookConfig::from_settings(settings) else { return Ok(None) };
    tracing::info!(
        url = config.operator_url.as_deref().map(redact_url).as_deref().unwrap_or("none"),
        allowed_hosts = ?settings.webhook_allowed_hosts,
        "webhooks on"
    );
    let hooks =
        Webhooks::new(config, outbox).map_err(|e| anyhow::anyhow!("invalid setting PROGRESS_WEBHOOK_SECRET: {e}"))?;
    Ok(Some(Arc::new(hooks)))
}

/// The keys of `PROGRESS_SIGNING_KEYS` (already checked with the settings;
/// a key the JWT library refuses is logged and scoped tokens stay off).
fn signing_keys(settings: &Settings) -> Option<Arc<SigningKeys>> {
    match SigningKeys::new(&settings.signing_keys) {
        Ok(keys) => keys.map(Arc::new),
        Err(reason) => {
            tracing::error!("invalid setting PROGRESS_SIGNING_KEYS: {reason}; scoped tokens are off");
            None
        }
    }
}

/// With no token of any class, every request is open: said once, as a
/// warning, when the address is reachable from other machines.
fn warn_if_open(settings: &Settings, address: SocketAddr) {
    let open = settings.read_tokens.is_empty() && settings.write_tokens.is_empty() && settings.admin_token.is_none();
    if open && !address.ip().to_canonical().is_loopback() {
        tracing::warn!(
            address = %address,
            "no PROGRESS_READ_TOKENS, PROGRESS_WRITE_TOKENS or PROGRESS_ADMIN_TOKEN is set: anyone who can reach this port can read, write and list every job"
        );
    }
}

/// Serves on `listener` (a [`TcpListener`], or see [`crate::serve::Listener`])
/// until `shutdown` completes, then finishes the requests in flight and returns.
pub async fn run<L: crate::serve::Listener>(
    settings: Settings,
    listener: L,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Built { store, notices, outbox } = build_store(&settings)?;
    let hooks = build_webhooks(&settings, outbox)?;
    // Stops by itself once the store is dropped, after the server below.
    crate::store::spawn_cleanup(&store, Duration::from_secs(settings.cleanup_interval_seconds));
    if settings.redis_url.is_some() || settings.database_url.is_some() {
        watch_tiers(&store);
    }
    let (app, live) = build_app(&settings, store.clone(), notices, hooks.clone());
    let address = listener.local_addr()?;
    tracing::info!(address = %address, "progressd listening");
    warn_if_open(&settings, address);
    // Long-polls and event streams would hold the graceful shutdown open:
    // end them when it starts.
    let shutdown = async move {
        shutdown.await;
        live.close();
    };
    // Every connection shares the router (an `Arc`): a route table per
    // connection was about 24 KB each (bench/sse.sh: 10,000 event streams
    // took 540 MB instead of 290).
    let limits = crate::serve::Limits::from_settings(&settings, L::OPENS_FILES);
    tracing::info!(
        max_connections = limits.max_connections,
        header_timeout_s = limits.header_timeout.as_secs(),
        idle_timeout_s = limits.idle_timeout.as_secs(),
        "connection limits"
    );
    crate::serve::serve(listener, app, limits, shutdown).await;
    if let Some(hooks) = &hooks {
        hooks.stop();
    }
    // No request is running any more: persist what only memory holds.
    store.shutdown().await;
    tracing::info!("progressd stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM. The handlers are installed by this call,
/// not when the future is first polled, so a SIGTERM that arrives while the
/// service is still starting (say, right after it began listening) is a
/// graceful shutdown too, not the default action (death by signal).
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        let ctrl_c = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        #[cfg(unix)]
        let terminate = async {
            match terminate {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let terminate = std::future::pending::<()>();
        tokio::select! {
            () = ctrl_c => {},
            () = terminate => {},
        }
        tracing::info!("shutdown requested; finishing requests in flight");
    }
}
