//! Logging set-up: `tracing` with JSON lines for the service (`run`) and human-readable text for
//! interactive commands. The level comes from `RUST_LOG` when set, else from settings.
//!
//! This module only configures output; what is logged, and that no secret ever is, is the
//! business of the modules that emit events. Traces (W3C context, OTLP export) are in
//! [`traces`].

pub(crate) mod traces;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Later calls are ignored (tests may call it many times).
pub fn init(format: LogFormat, level: &str) {
    // A non-ASCII RUST_LOG can panic tracing-subscriber's parser (as a non-ASCII `log.level`
    // could, which the settings refuse): such a RUST_LOG is ignored.
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|value| value.is_ascii())
        .map(|value| EnvFilter::try_new(value).map_err(|_| ()));
    let filter = from_env
        .unwrap_or(Err(()))
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            // An event's lines carry its span's fields (`span.trace_id`).
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
}
