//! `[telemetry]` (traces over OTLP) and `[log]` (format and filter): the two tables of what the
//! process reports about itself besides metrics.
//!
//! Holds the tables, their defaults and the telemetry checks, including the standard
//! `OTEL_EXPORTER_OTLP_*` and `OTEL_SERVICE_NAME` fall-backs it reads. It must never set up a
//! subscriber or an exporter: the `telemetry` module does.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::serde_helpers::{lenient_opt_string, lenient_string};
use super::validate::check_http_url;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

/// `[telemetry]`: traces over OTLP (README, "Tracing"). Unset keys fall back to the standard
/// `OTEL_EXPORTER_OTLP_*` and `OTEL_SERVICE_NAME` variables, then to OpenTelemetry's defaults.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Records a span per event and per Alipay+ attempt and exports them. Off by default: trace
    /// contexts are then passed from input to outputs and nothing is recorded.
    pub traces: bool,
    /// The collector: `http://host:4318` for http/protobuf (`/v1/traces` is added), `http://host:4317`
    /// for grpc. Unset: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_ENDPOINT`, else
    /// localhost.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub endpoint: Option<String>,
    /// Unset: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, `OTEL_EXPORTER_OTLP_PROTOCOL`, else
    /// http/protobuf.
    pub protocol: Option<OtlpProtocol>,
    /// The share of new traces recorded, 0.0 to 1.0. A record whose producer decided keeps that
    /// decision (parent-based sampling).
    pub(crate) sample_ratio: f64,
    /// The `service.name` of the spans. Unset: `OTEL_SERVICE_NAME`, else `regnotify`.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub service_name: Option<String>,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            traces: false,
            endpoint: None,
            protocol: None,
            sample_ratio: 1.0,
            service_name: None,
        }
    }
}

/// How spans go to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum OtlpProtocol {
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "grpc")]
    Grpc,
}

impl OtlpProtocol {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::HttpProtobuf => "http/protobuf",
            OtlpProtocol::Grpc => "grpc",
        }
    }
}

/// The standard variables that choose the OTLP protocol, the traces-only one first.
const OTLP_PROTOCOL_ENV: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
];

impl TelemetrySettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(ConfigError::invalid(
                "telemetry.sample_ratio",
                "must be a number from 0.0 to 1.0",
            ));
        }
        if let Some(endpoint) = &self.endpoint {
            check_http_url("telemetry.endpoint", endpoint, true)?;
        }
        if self.traces {
            self.protocol_from_env()?;
        }
        Ok(())
    }

    /// The protocol in use: the setting, else the standard variables, else http/protobuf.
    pub(crate) fn effective_protocol(&self) -> OtlpProtocol {
        self.protocol
            .or_else(|| self.protocol_from_env().ok().flatten())
            .unwrap_or(OtlpProtocol::HttpProtobuf)
    }

    /// The protocol the standard variables name; an error naming the variable for one this
    /// service does not speak.
    fn protocol_from_env(&self) -> Result<Option<OtlpProtocol>, ConfigError> {
        if self.protocol.is_some() {
            return Ok(None);
        }
        for name in OTLP_PROTOCOL_ENV {
            let Ok(value) = std::env::var(name) else {
                continue;
            };
            return match value.trim() {
                "http/protobuf" => Ok(Some(OtlpProtocol::HttpProtobuf)),
                "grpc" => Ok(Some(OtlpProtocol::Grpc)),
                other => Err(ConfigError::invalid(
                    name,
                    format!(
                        "`{other}` is not a protocol regnotify exports with: use \
                         \"http/protobuf\" or \"grpc\" (or set telemetry.protocol)"
                    ),
                )),
            };
        }
        Ok(None)
    }

    /// The `service.name` of the spans.
    pub(crate) fn effective_service_name(&self) -> String {
        self.service_name
            .clone()
            .or_else(|| {
                std::env::var("OTEL_SERVICE_NAME")
                    .ok()
                    .filter(|name| !name.is_empty())
            })
            .unwrap_or_else(|| "regnotify".to_owned())
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    #[serde(deserialize_with = "lenient_string")]
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}
