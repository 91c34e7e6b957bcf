//! Log set-up: human-readable by default, JSON lines for log collectors.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::util::SubscriberInitExt;

pub mod request_span;

use request_span::LazySpans;

use crate::settings::{LogFormat, Settings};

/// Installs the global subscriber. `RUST_LOG` wins over `PROGRESS_LOG_LEVEL`.
pub fn init(settings: &Settings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.log_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colours(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR").is_some()));
    // Request spans are opened when a line needs them (`request_span`).
    let _ = match settings.log_format {
        LogFormat::Json => {
            LazySpans::new(builder.json().flatten_event(true).with_current_span(true).finish()).try_init()
        }
        LogFormat::Pretty => LazySpans::new(builder.finish()).try_init(),
    };
}

/// Colours (ANSI escapes) only on a terminal, and not when `NO_COLOR` is
/// set. tracing-subscriber colours whatever the output is, so a platform's
/// log viewer (Railway, Render, Fly) showed the escapes as text, and every
/// request's span paid for writing them: about a third of the span's cost
/// (issue 23).
fn colours(terminal: bool, no_color: bool) -> bool {
    terminal && !no_color
}
