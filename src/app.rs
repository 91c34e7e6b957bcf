//! Assembly: the store chosen from settings, the router, and the server
//! loop with graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;

use crate::domain::WritePolicy;
use crate::http::{self, AppState, BodyLimits};
use crate::service::ProgressService;
use crate::settings::{redact_url, Settings};
use crate::store::{
    spawn_change_listener, CacheConfig, CachedStore, MemoryStore, ProgressStore, RedisStore, RedisStoreConfig,
};

/// How often the embedded store drops expired records from memory.
const MEMORY_SWEEP_EVERY: Duration = Duration::from_secs(10);

/// The hot tier the settings ask for: Redis (behind the coherent read
/// cache unless it is turned off) when `REDIS_URL` is set, else process
/// memory. Never waits for Redis: a Redis that is down at start-up is
/// reported per request, not as a start-up failure. Must run inside Tokio.
pub fn build_store(settings: &Settings) -> anyhow::Result<Arc<dyn ProgressStore>> {
    match &settings.redis_url {
        Some(url) => {
            let store = RedisStore::new(RedisStoreConfig {
                url: url.clone(),
                key_prefix: settings.key_prefix.clone(),
                pool_size: settings.redis_pool_size,
                shared_connections: settings.redis_connections,
                timeout: settings.redis_timeout(),
            })
            .map_err(|e| anyhow::anyhow!("invalid setting REDIS_URL ({}): {e}", redact_url(url)))?;
            tracing::info!(redis = %redact_url(url), key_prefix = %settings.key_prefix, "hot tier: Redis");
            if settings.cache_max_age_ms == 0 {
                return Ok(Arc::new(store));
            }
            let client = redis::Client::open(url.as_str())
                .map_err(|e| anyhow::anyhow!("invalid setting REDIS_URL ({}): {e}", redact_url(url)))?;
            let channel = store.changes_channel().to_owned();
            let cached = Arc::new(CachedStore::new(
                Arc::new(store),
                CacheConfig {
                    max_age: Duration::from_millis(settings.cache_max_age_ms),
                    max_entries: settings.cache_max_entries,
                },
            ));
            spawn_change_listener(client, channel, &cached, settings.redis_timeout());
            Ok(cached)
        }
        None => {
            tracing::info!("hot tier: process memory (REDIS_URL is unset; records are lost when the process exits)");
            tracing::info!("durable tier: none (DATABASE_URL is unset)");
            Ok(MemoryStore::start(MEMORY_SWEEP_EVERY))
        }
    }
}

/// The application router over `store`.
pub fn build_router(settings: &Settings, store: Arc<dyn ProgressStore>) -> Router {
    let policy = WritePolicy {
        default_ttl_seconds: settings.ttl_seconds,
        heartbeat_ms: i64::try_from(settings.heartbeat_seconds).unwrap_or(i64::MAX / 1000) * 1000,
    };
    let state = AppState {
        service: ProgressService::new(store, policy, settings.max_ttl_seconds),
        limits: BodyLimits { max_body_bytes: settings.max_body_bytes, max_json_depth: settings.max_json_depth },
    };
    http::router(state)
}

/// Serves on `listener` until `shutdown` completes, then finishes the
/// requests in flight and returns.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = build_store(&settings)?;
    let app = build_router(&settings, store);
    tracing::info!(address = %listener.local_addr()?, "progressd listening");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await?;
    tracing::info!("progressd stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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
