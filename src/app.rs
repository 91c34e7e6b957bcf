//! Assembly: the store chosen from settings, the router, and the server
//! loop with graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

use crate::domain::WritePolicy;
use crate::http::{self, AccessTokens, AppState, BodyLimits, LayerSettings, SharedState};
use crate::live::Live;
use crate::service::ProgressService;
use crate::settings::{redact_url, Settings};
use crate::store::{
    CacheConfig, CachedStore, ChangeNotices, ChangeSink, HotTier, MemoryStore, PostgresStore, PostgresStoreConfig,
    ProgressStore, RedisStore, RedisStoreConfig, TieredConfig, TieredStore,
};

/// Redis's change notices, when there is a Redis.
pub type Notices = Option<Arc<ChangeNotices>>;

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
pub fn build_store(settings: &Settings) -> anyhow::Result<(Arc<dyn ProgressStore>, Notices)> {
    let (hot, notices) = match &settings.redis_url {
        Some(url) => {
            let (hot, notices) = build_redis(settings, url)?;
            (Some(hot), Some(notices))
        }
        None => (None, None),
    };
    let Some(database_url) = &settings.database_url else {
        let store = match hot {
            Some(hot) => hot.store,
            None => {
                tracing::info!("hot tier: process memory (REDIS_URL is unset; records are lost when the process exits)");
                tracing::info!("durable tier: none (DATABASE_URL is unset)");
                MemoryStore::start(MEMORY_SWEEP_EVERY)
            }
        };
        return Ok((store, notices));
    };
    let durable = PostgresStore::new(PostgresStoreConfig {
        url: database_url.clone(),
        pool_size: settings.database_pool_size,
        timeout: settings.database_timeout(),
    })
    .map_err(|e| anyhow::anyhow!("invalid setting DATABASE_URL ({}): {e}", redact_url(database_url)))?;
    tracing::info!(postgres = %redact_url(database_url), "durable tier: PostgreSQL (migrations run in the background)");
    if hot.is_none() {
        tracing::info!("hot tier: none (REDIS_URL is unset); every request goes to PostgreSQL");
    }
    let config = TieredConfig {
        persist_interval: Duration::from_secs(settings.persist_interval_seconds),
        breaker_failures: settings.breaker_failures,
        probe_every: Duration::from_millis(settings.breaker_probe_ms),
    };
    Ok((TieredStore::start(hot, Arc::new(durable), config), notices))
}

/// Redis, behind the read cache unless `PROGRESS_CACHE_MAX_AGE_MS` is 0,
/// and the subscription to its change notices.
fn build_redis(settings: &Settings, url: &str) -> anyhow::Result<(HotTier, Arc<ChangeNotices>)> {
    let invalid = |e: &dyn std::fmt::Display| anyhow::anyhow!("invalid setting REDIS_URL ({}): {e}", redact_url(url));
    let redis = Arc::new(
        RedisStore::new(RedisStoreConfig {
            url: url.to_owned(),
            key_prefix: settings.key_prefix.clone(),
            pool_size: settings.redis_pool_size,
            shared_connections: settings.redis_connections,
            timeout: settings.redis_timeout(),
        })
        .map_err(|e| invalid(&e))?,
    );
    tracing::info!(redis = %redact_url(url), key_prefix = %settings.key_prefix, "hot tier: Redis");
    let client = redis::Client::open(url).map_err(|e| invalid(&e))?;
    let notices = ChangeNotices::listen(client, redis.changes_channel().to_owned(), settings.redis_timeout());
    if settings.cache_max_age_ms == 0 {
        return Ok((HotTier { store: redis.clone(), redis, cache: None }, notices));
    }
    let cached = Arc::new(CachedStore::new(
        redis.clone(),
        CacheConfig {
            max_age: Duration::from_millis(settings.cache_max_age_ms),
            max_entries: settings.cache_max_entries,
        },
    ));
    notices.attach(Arc::downgrade(&cached) as std::sync::Weak<dyn ChangeSink>);
    Ok((HotTier { store: cached.clone(), redis, cache: Some(cached) }, notices))
}

/// The application router over `store`, with live updates from this
/// instance's writes only.
pub fn build_router(settings: &Settings, store: Arc<dyn ProgressStore>) -> Router {
    build_app(settings, store, None).0
}

/// The application router over `store`, and its live-update hub, which
/// also hears of other instances' writes through `notices`.
pub fn build_app(
    settings: &Settings,
    store: Arc<dyn ProgressStore>,
    notices: Notices,
) -> (Router, Live) {
    let policy = WritePolicy {
        default_ttl_seconds: settings.ttl_seconds,
        heartbeat_ms: i64::try_from(settings.heartbeat_seconds).unwrap_or(i64::MAX / 1000) * 1000,
    };
    let service = ProgressService::new(store, policy, settings.max_ttl_seconds);
    let live = service.live().clone();
    if let Some(notices) = notices {
        live.attach(notices);
    }
    let state = AppState::new(SharedState {
        service,
        limits: BodyLimits { max_body_bytes: settings.max_body_bytes, max_json_depth: settings.max_json_depth },
        tokens: Arc::new(AccessTokens::from_settings(settings)),
        layers: LayerSettings::from_settings(settings),
        heartbeat: Duration::from_secs(settings.sse_heartbeat_seconds),
    });
    (http::router(state), live)
}

/// Serves on `listener` until `shutdown` completes, then finishes the
/// requests in flight and returns.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (store, notices) = build_store(&settings)?;
    // Stops by itself once the store is dropped, after the server below.
    crate::store::spawn_cleanup(&store, Duration::from_secs(settings.cleanup_interval_seconds));
    let (app, live) = build_app(&settings, store.clone(), notices);
    tracing::info!(address = %listener.local_addr()?, "progressd listening");
    // Long-polls and event streams would hold the graceful shutdown open:
    // end them when it starts.
    let shutdown = async move {
        shutdown.await;
        live.close();
    };
    // `into_make_service`: every connection shares the router. Serving the
    // `Router` itself clones the route table per connection, about 24 KB
    // each (bench/sse.sh: 10,000 event streams took 540 MB instead of 290).
    axum::serve(listener, app.into_make_service()).with_graceful_shutdown(shutdown).await?;
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
