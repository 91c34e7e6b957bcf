//! The `progressd` binary: settings, logging, bind, run.
//! `progressd healthcheck` probes a running server instead (for containers).

use std::process::ExitCode;

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
        Some(other) => {
            eprintln!("progressd: unknown command {other:?}; commands: serve (default), healthcheck");
            return ExitCode::from(2);
        }
    }
    telemetry::init(&settings);
    let address = (settings.host, settings.port);
    let listener = match tokio::net::TcpListener::bind(address).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("progressd: cannot listen on {}:{}: {e}", address.0, address.1);
            return ExitCode::from(1);
        }
    };
    match progressd::run(settings, listener, app::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("progressd: {e:#}");
            ExitCode::from(1)
        }
    }
}
