//! Log set-up: human-readable by default, JSON lines for log collectors.

use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, Settings};

/// Installs the global subscriber. `RUST_LOG` wins over `PROGRESS_LOG_LEVEL`.
pub fn init(settings: &Settings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match settings.log_format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
