//! The `progressd` binary: settings, logging, bind, run.

use std::process::ExitCode;

use progressd::{app, telemetry, Settings};

#[tokio::main]
async fn main() -> ExitCode {
    let settings = match Settings::load() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("progressd: {e}");
            return ExitCode::from(2);
        }
    };
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
