//! The `progressd` binary: settings, logging, bind, run.
//! `progressd healthcheck` probes a running server instead (for containers);
//! `progressd migrate` applies the database schema and exits.

use std::process::ExitCode;

use progressd::store::{PostgresStore, PostgresStoreConfig};
use progressd::{app, telemetry, Settings};

// glibc malloc showed up at ~8% of a GET profile, with arena lock waits;
// mimalloc's thread-local free lists avoid both.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("progressd: {e}");
            return ExitCode::from(2);
        }
    };
    match std::env::args().nth(1).as_deref() {
        None | Some("serve") => {}
        Some("healthcheck") => {
            return match progressd::healthcheck::probe(settings.port, std::time::Duration::from_secs(3)).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("progressd: unhealthy: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Some("migrate") => return migrate(&settings).await,
        Some(other) => {
            eprintln!("progressd: unknown command {other:?}; commands: serve (default), healthcheck, migrate");
            return ExitCode::from(2);
        }
    }
    telemetry::init(&settings);
    let shutdown = app::shutdown_signal();
    let address = (settings.host, settings.port);
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("progressd: cannot listen on {}:{}: {e}", address.0, address.1);
            return ExitCode::from(1);
        }
    };
    match progressd::run(settings, listener, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("progressd: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// `progressd migrate`: applies the embedded migrations to `DATABASE_URL`.
/// 0 when the schema is up to date, 1 when it could not be applied, 2 when
/// there is no (valid) database to apply it to.
async fn migrate(settings: &Settings) -> ExitCode {
    let Some(url) = settings.database_url.clone() else {
        eprintln!("progressd: migrate needs DATABASE_URL (a postgres:// URL); it is unset");
        return ExitCode::from(2);
    };
    let config = PostgresStoreConfig { url, pool_size: 1, timeout: settings.database_timeout() };
    let store = match PostgresStore::new(config) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("progressd: invalid setting DATABASE_URL: {e}");
            return ExitCode::from(2);
        }
    };
    match store.migrate().await {
        Ok(()) => {
            println!("progressd: database schema is up to date");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("progressd: migrate failed: {e}");
            ExitCode::from(1)
        }
    }
}
