//! The one typed [`Settings`] of SPEC section 6, loaded in layers — built-in defaults < TOML file
//! < `REGNOTIFY_…` environment < command-line `--set key=value` flags — and validated once at
//! start-up.
//!
//! Unknown keys are errors, durations are strings such as `"250ms"` or `"10s"`, and every invalid
//! value is refused with one message that names its key. Secrets (keys, passwords) live in
//! [`Secret`] or in redacted librdkafka property maps, so neither `Debug` nor the effective-settings
//! dump can print them. This module reads files only through figment and never logs; the one
//! warning it gives, about an inherited `REGNOTIFY_` variable that is no setting, goes to stderr
//! because logging is set up from the settings it loads.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use secrecy::{ExposeSecret, SecretString};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The environment variable that names the TOML file when `--config` is not given.
pub const CONFIG_ENV: &str = "REGNOTIFY_CONFIG";
/// Prefix of every environment override; `__` separates levels.
pub const ENV_PREFIX: &str = "REGNOTIFY_";

/// A configuration problem, always naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid setting `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error("{0}")]
    Load(String),
}

impl ConfigError {
    pub fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A secret string: deserialises from plain text, prints and serialises as `[redacted]`.
#[derive(Clone)]
pub struct Secret(SecretString);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        lenient_string(deserializer).map(Secret::new)
    }
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    /// The secret text; call only where it is used, never to log or format it.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("[redacted]")
    }
}

/// Deserialises a string from any scalar. Environment and `--set` values are typed like TOML
/// scalars, so a numeric client id (`REGNOTIFY_ALIPAYPLUS__CLIENT_ID=2022123456789012`) arrives as
/// a number; string settings take it back as text.
fn lenient_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct Text;
    impl Visitor<'_> for Text {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, value: &str) -> Result<String, E> {
            Ok(value.to_string())
        }
        fn visit_string<E: de::Error>(self, value: String) -> Result<String, E> {
            Ok(value)
        }
        fn visit_bool<E: de::Error>(self, value: bool) -> Result<String, E> {
            Ok(value.to_string())
        }
        fn visit_i64<E: de::Error>(self, value: i64) -> Result<String, E> {
            Ok(value.to_string())
        }
        fn visit_u64<E: de::Error>(self, value: u64) -> Result<String, E> {
            Ok(value.to_string())
        }
        fn visit_i128<E: de::Error>(self, value: i128) -> Result<String, E> {
            Ok(value.to_string())
        }
        fn visit_u128<E: de::Error>(self, value: u128) -> Result<String, E> {
            Ok(value.to_string())
        }
        fn visit_f64<E: de::Error>(self, value: f64) -> Result<String, E> {
            Ok(value.to_string())
        }
    }
    deserializer.deserialize_any(Text)
}

/// [`lenient_string`] for optional settings.
fn lenient_opt_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    lenient_string(deserializer).map(Some)
}

/// A librdkafka property value: any TOML scalar, kept as text (`"session.timeout.ms" = 6000`).
#[derive(Deserialize)]
#[serde(transparent)]
struct PropertyValue(#[serde(deserialize_with = "lenient_string")] String);

/// librdkafka properties passed through verbatim; values of sensitive properties are redacted
/// from `Debug` and from the effective-settings dump.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct KafkaProperties(pub BTreeMap<String, String>);

impl<'de> Deserialize<'de> for KafkaProperties {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::<String, PropertyValue>::deserialize(deserializer)?;
        Ok(KafkaProperties(
            raw.into_iter()
                .map(|(name, value)| (name, value.0))
                .collect(),
        ))
    }
}

impl KafkaProperties {
    /// Whether a librdkafka property holds a secret (passwords, private keys, client secrets).
    pub fn is_sensitive(name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        [
            "password",
            "secret",
            "ssl.key.pem",
            "ssl_key",
            "sasl.oauthbearer.config",
        ]
        .iter()
        .any(|marker| name.contains(marker))
    }

    fn redacted(&self) -> BTreeMap<&str, &str> {
        self.0
            .iter()
            .map(|(name, value)| {
                let shown = if Self::is_sensitive(name) {
                    "[redacted]"
                } else {
                    value.as_str()
                };
                (name.as_str(), shown)
            })
            .collect()
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.redacted()).finish()
    }
}

impl Serialize for KafkaProperties {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.redacted().serialize(serializer)
    }
}

/// Framing of input values (SPEC 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InputEncoding {
    #[default]
    Auto,
    Confluent,
    SingleObject,
    Raw,
}

/// Framing of outcome values (SPEC 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OutputEncoding {
    /// Confluent framing when a Schema Registry is configured, else single-object.
    #[default]
    Auto,
    Json,
}

/// What one Alipay+ result code is treated as, overriding SPEC section 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResultPolicy {
    Success,
    Rejected,
    Retry,
    Refused,
}

/// Which events must wait for each other (SPEC 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ordering {
    /// One event in flight per `referenceMerchantId`.
    #[default]
    Key,
    /// One event in flight per partition (strict offset order).
    Partition,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub schema_registry: Option<SchemaRegistrySettings>,
    pub alipayplus: AlipayPlusSettings,
    pub processing: ProcessingSettings,
    pub admin: AdminSettings,
    pub log: LogSettings,
    pub telemetry: TelemetrySettings,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    #[serde(deserialize_with = "lenient_string")]
    pub bootstrap_servers: String,
    #[serde(deserialize_with = "lenient_string")]
    pub group_id: String,
    #[serde(deserialize_with = "lenient_string")]
    pub input_topic: String,
    #[serde(deserialize_with = "lenient_string")]
    pub result_topic: String,
    #[serde(deserialize_with = "lenient_string")]
    pub dlq_topic: String,
    pub input_encoding: InputEncoding,
    pub output_encoding: OutputEncoding,
    /// librdkafka consumer properties (`security.protocol`, `sasl.*`, …).
    pub consumer: KafkaProperties,
    /// librdkafka producer properties.
    pub producer: KafkaProperties,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            bootstrap_servers: "localhost:9092".into(),
            group_id: "regnotify".into(),
            input_topic: "merchant.registration.decided".into(),
            result_topic: "merchant.registration.notify-result".into(),
            dlq_topic: "merchant.registration.decided.dlq".into(),
            input_encoding: InputEncoding::Auto,
            output_encoding: OutputEncoding::Auto,
            consumer: KafkaProperties::default(),
            producer: KafkaProperties::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchemaRegistrySettings {
    #[serde(deserialize_with = "lenient_string")]
    pub url: String,
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub username: Option<String>,
    pub password: Option<Secret>,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for SchemaRegistrySettings {
    fn default() -> Self {
        SchemaRegistrySettings {
            url: "http://localhost:8081".into(),
            username: None,
            password: None,
            request_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlipayPlusSettings {
    #[serde(deserialize_with = "lenient_string")]
    pub base_url: String,
    /// `http://` base URLs are refused unless this is set (simulators only).
    pub allow_insecure_http: bool,
    #[serde(deserialize_with = "lenient_string")]
    pub client_id: String,
    pub key_version: u32,
    /// The MPP's RSA private key, PEM (PKCS#8 or PKCS#1).
    pub private_key_file: Option<PathBuf>,
    /// The same key as PEM text, for environments that inject secrets as variables
    /// (`REGNOTIFY_ALIPAYPLUS__PRIVATE_KEY`); exclusive with `private_key_file`.
    pub private_key: Option<Secret>,
    /// Alipay+'s public key (PEM), to verify response signatures.
    pub alipayplus_public_key_file: Option<PathBuf>,
    /// PEM bundle of CA certificates trusted for the Alipay+ gateway, in addition to the built-in
    /// web roots (a corporate TLS proxy, a private sandbox CA); absent = the built-in roots only.
    pub ca_bundle_file: Option<PathBuf>,
    pub verify_response_signature: bool,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Ceiling on notify calls per second for the whole consumer group, each member taking a
    /// share in proportion to the input partitions it owns; 0 = none.
    pub max_requests_per_second: u32,
    /// Per-result-code overrides of SPEC section 4.
    pub result_policy: BTreeMap<String, ResultPolicy>,
    /// When Alipay+ as a whole fails or refuses us: pause and probe (see the README).
    pub circuit_breaker: CircuitBreakerSettings,
    /// A file holding the `keyVersion` of the private key (one number); read with the key at
    /// start and at every reload, and then preferred to `key_version`.
    pub key_version_file: Option<PathBuf>,
    /// The MPP's public key (PEM), when given: a private key that does not pair with it is
    /// refused, at start and at every reload.
    pub mpp_public_key_file: Option<PathBuf>,
    /// How often key files are checked for changes (SIGHUP reloads at once).
    #[serde(with = "humantime_serde")]
    pub key_reload_interval: Duration,
    /// After Alipay+'s public key file changes, answers signed with the previous key still
    /// verify for this long.
    #[serde(with = "humantime_serde")]
    pub alipayplus_public_key_overlap: Duration,
    /// One table per MPP (`[alipayplus.clients.<pspId>]`): the credentials for events naming
    /// that `pspId`. The settings above serve events without one.
    pub clients: BTreeMap<String, MppClientSettings>,
}

/// `[alipayplus.clients.<pspId>]`: one MPP's identity. What it leaves out (timeouts, result
/// policy, circuit breaker settings, signature verification) is taken from `[alipayplus]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MppClientSettings {
    #[serde(deserialize_with = "lenient_string")]
    pub client_id: String,
    pub key_version: u32,
    pub key_version_file: Option<PathBuf>,
    pub private_key_file: Option<PathBuf>,
    pub private_key: Option<Secret>,
    pub mpp_public_key_file: Option<PathBuf>,
    pub alipayplus_public_key_file: Option<PathBuf>,
    /// Absent: `alipayplus.base_url`.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub base_url: Option<String>,
    /// Absent: `alipayplus.max_requests_per_second` (each MPP has its own ceiling).
    pub max_requests_per_second: Option<u32>,
}

impl Default for MppClientSettings {
    fn default() -> Self {
        MppClientSettings {
            client_id: String::new(),
            key_version: 1,
            key_version_file: None,
            private_key_file: None,
            private_key: None,
            mpp_public_key_file: None,
            alipayplus_public_key_file: None,
            base_url: None,
            max_requests_per_second: None,
        }
    }
}

/// The longest `pspId` a `[alipayplus.clients]` table may be named by.
pub const MAX_PSP_ID_LEN: usize = 64;
/// The `psp` metric label of the top-level `[alipayplus]` identity.
pub const DEFAULT_PSP_LABEL: &str = "default";

/// `[alipayplus.circuit_breaker]`. The refused streak that opens the circuit is
/// `processing.refused_streak_threshold`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerSettings {
    /// `false`: every event spends its own retry budget and a refusal is dead-lettered at once.
    pub enabled: bool,
    /// The sliding window over which the share of unknown answers is measured: the answers of
    /// the last `window`, at most the last `window_calls` of them.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    pub window_calls: u32,
    /// Calls the window must hold before its share can open the circuit.
    pub min_calls: u32,
    /// Share of unknown answers (timeouts, connection errors, 5xx, `U`) in the window that
    /// opens the circuit, in (0, 1].
    pub failure_ratio: f64,
    /// The first wait before a probe; it doubles after each failed probe up to `probe_interval_max`.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub probe_interval_max: Duration,
    /// How long a refused event waits for other answers to tell whether the refusal was about it
    /// (others succeed) or about us (others are refused too) before it asks again; it does not
    /// wait while no other call of its MPP is out.
    #[serde(with = "humantime_serde")]
    pub refusal_hold: Duration,
}

impl Default for CircuitBreakerSettings {
    fn default() -> Self {
        CircuitBreakerSettings {
            enabled: true,
            window: Duration::from_secs(30),
            window_calls: 50,
            min_calls: 20,
            failure_ratio: 0.5,
            probe_interval: Duration::from_secs(1),
            probe_interval_max: Duration::from_secs(60),
            refusal_hold: Duration::from_secs(2),
        }
    }
}

impl CircuitBreakerSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        positive("alipayplus.circuit_breaker.window", self.window)?;
        positive(
            "alipayplus.circuit_breaker.probe_interval",
            self.probe_interval,
        )?;
        positive(
            "alipayplus.circuit_breaker.probe_interval_max",
            self.probe_interval_max,
        )?;
        positive("alipayplus.circuit_breaker.refusal_hold", self.refusal_hold)?;
        if self.probe_interval_max < self.probe_interval {
            return Err(ConfigError::invalid(
                "alipayplus.circuit_breaker.probe_interval_max",
                "must be at least alipayplus.circuit_breaker.probe_interval",
            ));
        }
        if self.min_calls == 0 || self.min_calls > self.window_calls {
            return Err(ConfigError::invalid(
                "alipayplus.circuit_breaker.min_calls",
                "must be at least 1 and at most alipayplus.circuit_breaker.window_calls",
            ));
        }
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return Err(ConfigError::invalid(
                "alipayplus.circuit_breaker.failure_ratio",
                "must be above 0 and at most 1 (a share such as 0.5)",
            ));
        }
        Ok(())
    }
}

impl Default for AlipayPlusSettings {
    fn default() -> Self {
        AlipayPlusSettings {
            base_url: "https://open-sea-global.alipayplus.com".into(),
            allow_insecure_http: false,
            client_id: String::new(),
            key_version: 1,
            private_key_file: None,
            private_key: None,
            alipayplus_public_key_file: None,
            ca_bundle_file: None,
            verify_response_signature: true,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            max_requests_per_second: 0,
            result_policy: BTreeMap::new(),
            circuit_breaker: CircuitBreakerSettings::default(),
            key_version_file: None,
            mpp_public_key_file: None,
            key_reload_interval: Duration::from_secs(5),
            alipayplus_public_key_overlap: Duration::from_secs(24 * 3600),
            clients: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessingSettings {
    pub ordering: Ordering,
    pub max_in_flight: usize,
    pub max_pending_per_partition: usize,
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub max_retry_elapsed: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub rebalance_drain_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    pub exactly_once: bool,
    #[serde(with = "humantime_serde")]
    pub transaction_interval: Duration,
    /// Consecutive refused answers after which `/readyz` reports the service stalled.
    pub refused_streak_threshold: u32,
}

impl Default for ProcessingSettings {
    fn default() -> Self {
        ProcessingSettings {
            ordering: Ordering::Key,
            max_in_flight: 256,
            max_pending_per_partition: 10_000,
            max_attempts: 8,
            max_retry_elapsed: Duration::from_secs(600),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            commit_interval: Duration::from_secs(1),
            rebalance_drain_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            exactly_once: false,
            transaction_interval: Duration::from_millis(100),
            refused_streak_threshold: 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    #[serde(deserialize_with = "lenient_string")]
    pub listen: String,
    /// `/livez` answers 503 once the main loop has not turned for longer than this. It turns at
    /// least every `processing.commit_interval`, even while idle.
    #[serde(with = "humantime_serde")]
    pub livez_after: Duration,
    /// `/readyz` answers 503 once events wait (in flight or awaiting their commit) and none has
    /// finished, Alipay+ has not answered and no commit has landed for longer than this.
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
    /// An event still without its terminal outcome this long after it was consumed is logged
    /// once (key, partition, offset, trace id) and counted in `regnotify_stalled_events_total`.
    #[serde(with = "humantime_serde")]
    pub event_stall_after: Duration,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: "0.0.0.0:8080".into(),
            livez_after: Duration::from_secs(60),
            stall_after: Duration::from_secs(5 * 60),
            event_stall_after: Duration::from_secs(5 * 60),
        }
    }
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
    pub sample_ratio: f64,
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
    pub fn as_str(self) -> &'static str {
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
    fn validate(&self) -> Result<(), ConfigError> {
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
    pub fn effective_protocol(&self) -> OtlpProtocol {
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
    pub fn effective_service_name(&self) -> String {
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

/// Where settings come from, besides the built-in defaults and the process environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `--config FILE`; when absent, `REGNOTIFY_CONFIG` is consulted.
    pub config_file: Option<PathBuf>,
    /// `--set key=value` flags, highest precedence; keys are dotted (`kafka.group_id`).
    pub overrides: Vec<(String, String)>,
}

impl Settings {
    /// Loads and validates the settings from every layer.
    pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
        let env = process_environment()?;
        let settings = Self::load_with_env(sources, env.iter().cloned())?;
        // Logging is set up from these settings, so this one warning goes to stderr directly.
        for (name, _) in &env {
            if let Some(warning) = unknown_environment_variable(name) {
                eprintln!("warning: {warning}");
            }
        }
        Ok(settings)
    }

    /// As [`Settings::load`], with the environment given explicitly (tests).
    pub fn load_with_env(
        sources: &Sources,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let config_file = sources.config_file.clone().or_else(|| {
            env.iter()
                .find(|(name, _)| name == CONFIG_ENV)
                .map(|(_, value)| PathBuf::from(value))
        });
        let mut figment = Figment::new();
        if let Some(path) = &config_file {
            if !path.is_file() {
                return Err(ConfigError::Load(format!(
                    "configuration file {} does not exist or is not a file",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        Self::extract_layers(figment, &env, &sources.overrides)
    }

    /// The layers above the built-in defaults, with the TOML file given as text instead of a path
    /// (`REGNOTIFY_CONFIG` is then not consulted). The fuzzing entry point of the loader.
    pub fn load_from_toml_str(
        toml: &str,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Settings, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        Self::extract_layers(Figment::new().merge(Toml::string(toml)), &env, overrides)
    }

    fn extract_layers(
        mut figment: Figment,
        env: &[(String, String)],
        overrides: &[(String, String)],
    ) -> Result<Settings, ConfigError> {
        for (name, value) in env {
            let Some(key) = environment_setting(name)? else {
                continue;
            };
            figment = figment.merge(Serialized::default(&key, parse_value(value)));
        }
        for (key, value) in overrides {
            figment = figment.merge(Serialized::default(key, parse_value(value)));
        }
        let mut settings: Settings = figment.extract().map_err(describe_figment_error)?;
        // Result codes are upper-case; environment keys arrive lower-cased.
        settings.alipayplus.result_policy = std::mem::take(&mut settings.alipayplus.result_policy)
            .into_iter()
            .map(|(code, policy)| (code.to_ascii_uppercase(), policy))
            .collect();
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every value whose validity does not depend on files or the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        if let Some(registry) = &self.schema_registry {
            check_http_url("schema_registry.url", &registry.url, true)?;
            positive("schema_registry.request_timeout", registry.request_timeout)?;
            if registry.password.is_some() && registry.username.is_none() {
                return Err(ConfigError::invalid(
                    "schema_registry.username",
                    "is required when schema_registry.password is set",
                ));
            }
        }
        self.alipayplus.validate()?;
        self.processing.validate()?;
        if self.kafka.producer.0.contains_key("transactional.id") && !self.processing.exactly_once {
            return Err(ConfigError::invalid(
                "kafka.producer.\"transactional.id\"",
                "is only used with processing.exactly_once = true",
            ));
        }
        self.admin.validate(&self.processing)?;
        self.telemetry.validate()?;
        // tracing-subscriber's directive parser slices by byte offsets that can fall inside a
        // multi-byte character and panics (found by fuzzing); directives are ASCII anyway.
        if !self.log.level.is_ascii() {
            return Err(ConfigError::invalid(
                "log.level",
                "must be ASCII, such as \"info\" or \"info,regnotify=debug\"",
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|err| ConfigError::invalid("log.level", err.to_string()))?;
        Ok(())
    }

    /// The effective settings as TOML, secrets redacted (for `check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|err| format!("# settings could not be rendered: {err}\n"))
    }
}

/// Prefixes (after `REGNOTIFY_`) of variables that belong to the test suites and tools, never to
/// the settings: `REGNOTIFY_TEST_BOOTSTRAP`, `REGNOTIFY_REQUIRE_EXTERNAL`, …
pub const RESERVED_ENV_PREFIXES: [&str; 3] = ["TEST_", "REQUIRE_", "EXTERNAL_"];
/// Tables whose keys are free-form (librdkafka properties, result codes), so any key below them is
/// a candidate setting that the table itself judges.
const FREE_FORM_TABLES: [&str; 4] = [
    "kafka.consumer",
    "kafka.producer",
    "alipayplus.result_policy",
    "alipayplus.clients",
];

/// The process environment as text. A `REGNOTIFY_` variable that is not UTF-8 is an error naming
/// it (`std::env::vars` would panic on it); other programs' variables are none of ours.
fn process_environment() -> Result<Vec<(String, String)>, ConfigError> {
    let mut env = Vec::new();
    for (name, value) in std::env::vars_os() {
        let name = match name.into_string() {
            Ok(name) => name,
            Err(name) if name.as_encoded_bytes().starts_with(ENV_PREFIX.as_bytes()) => {
                return Err(ConfigError::Load(format!(
                    "environment variable {} has a name that is not UTF-8",
                    name.to_string_lossy()
                )));
            }
            Err(_) => continue,
        };
        match value.into_string() {
            Ok(value) => env.push((name, value)),
            Err(_) if name == CONFIG_ENV || environment_setting(&name)?.is_some() => {
                return Err(ConfigError::Load(format!(
                    "environment variable {name} has a value that is not UTF-8"
                )));
            }
            Err(_) => {}
        }
    }
    Ok(env)
}

/// What an environment variable is to the settings: `Some(path)` for a setting
/// (`REGNOTIFY_PROCESSING__MAX_IN_FLIGHT` → `processing.max_in_flight`), `None` for a variable that
/// is not regnotify's, is `REGNOTIFY_CONFIG`, or is reserved for tests and tools
/// ([`RESERVED_ENV_PREFIXES`]). Any other `REGNOTIFY_` name is a mistake that would otherwise be
/// silently ignored, so it is an error naming the variable and the settings it may have meant.
fn environment_setting(name: &str) -> Result<Option<String>, ConfigError> {
    let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
        return Ok(None);
    };
    if name == CONFIG_ENV || RESERVED_ENV_PREFIXES.iter().any(|p| rest.starts_with(p)) {
        return Ok(None);
    }
    let key = rest.to_ascii_lowercase();
    let path = key.replace("__", ".");
    if key.contains("__") && is_setting_path(&path) {
        return Ok(Some(path));
    }
    let squash = |text: &str| text.replace(['_', '.'], "");
    let leaf = path.rsplit('.').next().unwrap_or_default();
    let candidates: Vec<String> = setting_paths()
        .iter()
        .filter(|known| {
            let known_leaf = known.rsplit('.').next().unwrap_or_default();
            squash(known) == squash(&path) || squash(known_leaf) == squash(leaf)
        })
        .map(|known| {
            format!(
                "{ENV_PREFIX}{} ({known})",
                known.replace('.', "__").to_ascii_uppercase()
            )
        })
        .collect();
    let what = if key.contains("__") {
        format!("environment variable {name}: unknown setting `{path}`")
    } else {
        format!("environment variable {name} is not a setting")
    };
    if candidates.is_empty() {
        let table = setting_paths()
            .iter()
            .filter_map(|known| known.split('.').next())
            .find(|table| key.starts_with(&format!("{table}_")));
        if let Some(table) = table.filter(|_| !key.contains("__")) {
            return Err(ConfigError::Load(format!(
                "{what}: did you mean {ENV_PREFIX}{}__{}?",
                table.to_ascii_uppercase(),
                key[table.len() + 1..].to_ascii_uppercase()
            )));
        }
        if key.contains("__") {
            return Err(ConfigError::Load(format!("{what}; {ENV_CONVENTION}")));
        }
        // Looks like no setting at all: a tool's variable (`REGNOTIFY_BIN` of the benchmark
        // script) that the process inherited. Warned about by `Settings::load`, never fatal.
        return Ok(None);
    }
    Err(ConfigError::Load(format!(
        "{what}: did you mean {}?",
        candidates.join(" or ")
    )))
}

const ENV_CONVENTION: &str = "settings are REGNOTIFY_<TABLE>__<KEY> (for example \
     REGNOTIFY_PROCESSING__MAX_IN_FLIGHT), REGNOTIFY_CONFIG names the file, and REGNOTIFY_TEST_*, \
     REGNOTIFY_REQUIRE_* and REGNOTIFY_EXTERNAL_* are left to tests and tools";

/// The warning for a `REGNOTIFY_` variable that is neither a setting nor reserved, and resembles
/// no setting (those are errors): probably a tool's, possibly a typo.
pub fn unknown_environment_variable(name: &str) -> Option<String> {
    let rest = name.strip_prefix(ENV_PREFIX)?;
    if name == CONFIG_ENV
        || RESERVED_ENV_PREFIXES.iter().any(|p| rest.starts_with(p))
        || rest.contains("__")
        || !matches!(environment_setting(name), Ok(None))
    {
        return None;
    }
    Some(format!(
        "environment variable {name} is not a setting and is ignored; {ENV_CONVENTION}"
    ))
}

/// Whether a dotted path names a setting, or a key inside a free-form table.
fn is_setting_path(path: &str) -> bool {
    setting_paths().iter().any(|known| known == path)
        || FREE_FORM_TABLES.iter().any(|table| {
            path.strip_prefix(table)
                .and_then(|rest| rest.strip_prefix('.'))
                .is_some_and(|rest| !rest.is_empty())
        })
}

/// Every setting's dotted path (`processing.max_in_flight`), taken from the settings type itself
/// so the list cannot fall behind it; free-form tables are listed as themselves.
fn setting_paths() -> &'static [String] {
    static PATHS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    PATHS.get_or_init(|| {
        let mut every = Settings {
            schema_registry: Some(SchemaRegistrySettings {
                username: Some(String::new()),
                password: Some(Secret::new("")),
                ..SchemaRegistrySettings::default()
            }),
            ..Settings::default()
        };
        every.alipayplus.private_key_file = Some(PathBuf::new());
        every.alipayplus.private_key = Some(Secret::new(""));
        every.alipayplus.alipayplus_public_key_file = Some(PathBuf::new());
        every.alipayplus.ca_bundle_file = Some(PathBuf::new());
        every.alipayplus.key_version_file = Some(PathBuf::new());
        every.alipayplus.mpp_public_key_file = Some(PathBuf::new());
        every.telemetry.endpoint = Some(String::new());
        every.telemetry.protocol = Some(OtlpProtocol::HttpProtobuf);
        every.telemetry.service_name = Some(String::new());
        let mut paths = Vec::new();
        if let Ok(toml::Value::Table(table)) = toml::Value::try_from(&every) {
            collect_paths(&table, "", &mut paths);
        }
        paths
    })
}

fn collect_paths(table: &toml::Table, prefix: &str, paths: &mut Vec<String>) {
    for (name, value) in table {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match value {
            toml::Value::Table(inner) if !FREE_FORM_TABLES.contains(&path.as_str()) => {
                collect_paths(inner, &path, paths);
            }
            _ => paths.push(path),
        }
    }
}

/// Environment and flag values are typed like TOML scalars (`8`, `true`, `"10s"`).
fn parse_value(value: &str) -> figment::value::Value {
    // figment's parser recurses once per `[` or `{`: a deeply nested value (`[[[[…`) overflowed
    // the stack and killed the process (found by fuzzing). No setting nests, so a value nested
    // deeper than any could be stays text, and the setting's type check names the key.
    if nesting_depth(value) > MAX_VALUE_NESTING {
        return figment::value::Value::from(value.to_owned());
    }
    // figment's parser slices a quoted string by character index where it means byte index, and
    // panics when a backslash escape follows a non-ASCII character (found by fuzzing:
    // `REGNOTIFY_ALIPAYPLUS__CLIENT_ID="é\t"` stopped start-up with a panic). Such values go through
    // the toml crate instead, which reads the same syntax; what it cannot read stays text.
    if value.contains('\\') && !value.is_ascii() {
        return toml::from_str::<toml::Table>(&format!("value = {value}"))
            .ok()
            .and_then(|mut table| table.remove("value"))
            .and_then(|parsed| figment::value::Value::serialize(parsed).ok())
            .unwrap_or_else(|| figment::value::Value::from(value.to_owned()));
    }
    match value.parse::<figment::value::Value>() {
        Ok(parsed) => parsed,
        Err(never) => match never {},
    }
}

/// Deeper than any setting's value (a table of arrays at most) could ever nest.
const MAX_VALUE_NESTING: usize = 16;

/// The deepest nesting of `[` and `{` in `value` (quotes are not told apart: an overestimate).
fn nesting_depth(value: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for c in value.chars() {
        match c {
            '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

fn describe_figment_error(err: figment::Error) -> ConfigError {
    let mut messages = Vec::new();
    for error in err {
        let key = error.path.join(".");
        let message = match &error.kind {
            figment::error::Kind::UnknownField(field, _) => {
                let full = if key.is_empty() {
                    field.clone()
                } else {
                    format!("{key}.{field}")
                };
                messages.push(format!("unknown setting `{full}`"));
                continue;
            }
            kind => kind.to_string(),
        };
        let origin = error
            .metadata
            .as_ref()
            .map(|meta| format!(" (from {})", meta.name))
            .unwrap_or_default();
        if key.is_empty() {
            messages.push(format!("{message}{origin}"));
        } else {
            messages.push(format!("invalid setting `{key}`: {message}{origin}"));
        }
    }
    ConfigError::Load(messages.join("; "))
}

impl KafkaSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        non_empty("kafka.bootstrap_servers", &self.bootstrap_servers)?;
        non_empty("kafka.group_id", &self.group_id)?;
        check_topic("kafka.input_topic", &self.input_topic)?;
        check_topic("kafka.result_topic", &self.result_topic)?;
        check_topic("kafka.dlq_topic", &self.dlq_topic)?;
        if self.input_topic == self.result_topic || self.input_topic == self.dlq_topic {
            return Err(ConfigError::invalid(
                "kafka.input_topic",
                "must differ from kafka.result_topic and kafka.dlq_topic",
            ));
        }
        // Properties regnotify sets itself: overriding them would break the delivery guarantees
        // of SPEC section 5, so they are refused rather than silently ignored.
        for name in [
            "enable.auto.commit",
            "enable.auto.offset.store",
            "group.id",
            "bootstrap.servers",
            "isolation.level",
        ] {
            if self.consumer.0.contains_key(name) {
                return Err(ConfigError::invalid(
                    format!("kafka.consumer.\"{name}\""),
                    "is managed by regnotify and cannot be overridden",
                ));
            }
        }
        for name in [
            "enable.idempotence",
            "acks",
            "request.required.acks",
            "bootstrap.servers",
        ] {
            if self.producer.0.contains_key(name) {
                return Err(ConfigError::invalid(
                    format!("kafka.producer.\"{name}\""),
                    "is managed by regnotify and cannot be overridden",
                ));
            }
        }
        Ok(())
    }
}

impl AlipayPlusSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        check_http_url(
            "alipayplus.base_url",
            &self.base_url,
            self.allow_insecure_http,
        )?;
        if self.private_key.is_some() && self.private_key_file.is_some() {
            return Err(ConfigError::invalid(
                "alipayplus.private_key",
                "set either alipayplus.private_key or alipayplus.private_key_file, not both",
            ));
        }
        self.circuit_breaker.validate()?;
        positive("alipayplus.connect_timeout", self.connect_timeout)?;
        positive("alipayplus.request_timeout", self.request_timeout)?;
        if self.client_id.len() > 128 || self.client_id.chars().any(|c| c.is_control()) {
            return Err(ConfigError::invalid(
                "alipayplus.client_id",
                "must be at most 128 characters without control characters",
            ));
        }
        positive("alipayplus.key_reload_interval", self.key_reload_interval)?;
        positive(
            "alipayplus.alipayplus_public_key_overlap",
            self.alipayplus_public_key_overlap,
        )?;
        for (psp_id, client) in &self.clients {
            client.validate(psp_id, self.allow_insecure_http)?;
        }
        for code in self.result_policy.keys() {
            if code.is_empty()
                || !code
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(ConfigError::invalid(
                    format!("alipayplus.result_policy.{code}"),
                    "result codes are upper-case words such as PROCESS_FAIL",
                ));
            }
        }
        Ok(())
    }

    /// Checks that everything needed to call Alipay+ is configured (for `run`, `check-config`).
    pub fn require_credentials(&self) -> Result<(), ConfigError> {
        non_empty("alipayplus.client_id", &self.client_id)?;
        if self.private_key.is_none() && self.private_key_file.is_none() {
            return Err(ConfigError::invalid(
                "alipayplus.private_key_file",
                "is required (or alipayplus.private_key as PEM text)",
            ));
        }
        if self.verify_response_signature && self.alipayplus_public_key_file.is_none() {
            return Err(ConfigError::invalid(
                "alipayplus.alipayplus_public_key_file",
                "is required while alipayplus.verify_response_signature is true",
            ));
        }
        for (psp_id, client) in &self.clients {
            let key = |name: &str| format!("alipayplus.clients.{psp_id}.{name}");
            if client.private_key.is_none() && client.private_key_file.is_none() {
                return Err(ConfigError::invalid(
                    key("private_key_file"),
                    format!("is required (or {} as PEM text)", key("private_key")),
                ));
            }
            if self.verify_response_signature && client.alipayplus_public_key_file.is_none() {
                return Err(ConfigError::invalid(
                    key("alipayplus_public_key_file"),
                    "is required while alipayplus.verify_response_signature is true",
                ));
            }
        }
        Ok(())
    }
}

impl MppClientSettings {
    fn validate(&self, psp_id: &str, allow_insecure_http: bool) -> Result<(), ConfigError> {
        let key = |name: &str| format!("alipayplus.clients.{psp_id}.{name}");
        if psp_id.is_empty()
            || psp_id.len() > MAX_PSP_ID_LEN
            || !psp_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(ConfigError::invalid(
                format!("alipayplus.clients.{psp_id}"),
                format!(
                    "a pspId names the table: 1-{MAX_PSP_ID_LEN} of a-z A-Z 0-9 _ - . (quote it in TOML)"
                ),
            ));
        }
        if psp_id == DEFAULT_PSP_LABEL {
            return Err(ConfigError::invalid(
                format!("alipayplus.clients.{psp_id}"),
                "`default` is the metric label of the top-level [alipayplus] identity; events \
                 without a pspId use that one",
            ));
        }
        non_empty(&key("client_id"), &self.client_id)?;
        if self.client_id.len() > 128 || self.client_id.chars().any(|c| c.is_control()) {
            return Err(ConfigError::invalid(
                key("client_id"),
                "must be at most 128 characters without control characters",
            ));
        }
        if self.private_key.is_some() && self.private_key_file.is_some() {
            return Err(ConfigError::invalid(
                key("private_key"),
                format!(
                    "set either {} or {}, not both",
                    key("private_key"),
                    key("private_key_file")
                ),
            ));
        }
        if let Some(base_url) = &self.base_url {
            check_http_url(&key("base_url"), base_url, allow_insecure_http)?;
        }
        Ok(())
    }
}

impl ProcessingSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        at_least("processing.max_in_flight", self.max_in_flight, 1)?;
        at_least(
            "processing.max_pending_per_partition",
            self.max_pending_per_partition,
            1,
        )?;
        at_least("processing.max_attempts", self.max_attempts as usize, 1)?;
        positive("processing.max_retry_elapsed", self.max_retry_elapsed)?;
        positive("processing.backoff_initial", self.backoff_initial)?;
        positive("processing.backoff_max", self.backoff_max)?;
        if self.backoff_initial > self.backoff_max {
            return Err(ConfigError::invalid(
                "processing.backoff_initial",
                "must not exceed processing.backoff_max",
            ));
        }
        positive("processing.commit_interval", self.commit_interval)?;
        positive(
            "processing.rebalance_drain_timeout",
            self.rebalance_drain_timeout,
        )?;
        positive("processing.shutdown_timeout", self.shutdown_timeout)?;
        positive("processing.transaction_interval", self.transaction_interval)?;
        at_least(
            "processing.refused_streak_threshold",
            self.refused_streak_threshold as usize,
            1,
        )?;
        Ok(())
    }
}

impl AdminSettings {
    fn validate(&self, processing: &ProcessingSettings) -> Result<(), ConfigError> {
        self.listen_addr()?;
        positive("admin.livez_after", self.livez_after)?;
        positive("admin.stall_after", self.stall_after)?;
        positive("admin.event_stall_after", self.event_stall_after)?;
        // An idle main loop turns only at the commit tick: a shorter limit fails it while idle.
        if self.livez_after <= processing.commit_interval {
            return Err(ConfigError::invalid(
                "admin.livez_after",
                "must be longer than processing.commit_interval (an idle main loop turns only \
                 that often)",
            ));
        }
        // An event waits up to backoff_max between calls without any progress; a shorter stall
        // time would call a single retrying event a stall.
        if self.stall_after <= processing.backoff_max {
            return Err(ConfigError::invalid(
                "admin.stall_after",
                "must be longer than processing.backoff_max (a retrying event waits that long \
                 between calls)",
            ));
        }
        Ok(())
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            ConfigError::invalid(
                "admin.listen",
                format!("`{}` is not an address such as 0.0.0.0:8080", self.listen),
            )
        })
    }
}

fn non_empty(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::invalid(key, "must not be empty"));
    }
    Ok(())
}

/// Longest duration any setting may take; longer values are surely typos and would overflow
/// deadline arithmetic.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

fn positive(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::invalid(key, "must be longer than zero"));
    }
    if value > MAX_DURATION {
        return Err(ConfigError::invalid(key, "must be at most 7 days"));
    }
    Ok(())
}

fn at_least(key: &str, value: usize, min: usize) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::invalid(key, format!("must be at least {min}")));
    }
    Ok(())
}

/// Kafka's own topic-name rule: 1–249 characters of `[a-zA-Z0-9._-]`.
fn check_topic(key: &str, topic: &str) -> Result<(), ConfigError> {
    let valid_chars = topic
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if topic.is_empty() || topic.len() > 249 || !valid_chars || topic == "." || topic == ".." {
        return Err(ConfigError::invalid(
            key,
            format!("`{topic}` is not a valid Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"),
        ));
    }
    Ok(())
}

fn check_http_url(key: &str, value: &str, allow_http: bool) -> Result<(), ConfigError> {
    let url = reqwest::Url::parse(value)
        .map_err(|err| ConfigError::invalid(key, format!("`{value}` is not a URL: {err}")))?;
    match url.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" if key.starts_with("alipayplus.") => {
            return Err(ConfigError::invalid(
                key,
                "http:// is refused; use https:// or set alipayplus.allow_insecure_http = true",
            ));
        }
        scheme => {
            return Err(ConfigError::invalid(
                key,
                format!("scheme `{scheme}` is not http or https"),
            ));
        }
    }
    if url.host_str().is_none() {
        return Err(ConfigError::invalid(key, "has no host"));
    }
    Ok(())
}

/// Reads a file that the settings name, with an error naming the key and the path.
pub fn read_named_file(key: &str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map_err(|err| ConfigError::invalid(key, format!("cannot read {}: {err}", path.display())))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;

    fn load(
        toml: &str,
        env: &[(&str, &str)],
        overrides: &[(&str, &str)],
    ) -> Result<Settings, ConfigError> {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(toml.as_bytes()).unwrap();
        let sources = Sources {
            config_file: Some(file.path().to_path_buf()),
            overrides: overrides
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        Settings::load_with_env(
            &sources,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_match_the_contract() {
        let s = load("", &[], &[]).unwrap();
        assert_eq!(s.kafka.group_id, "regnotify");
        assert_eq!(s.kafka.input_topic, "merchant.registration.decided");
        assert_eq!(s.processing.max_attempts, 8);
        assert_eq!(s.processing.max_retry_elapsed, Duration::from_secs(600));
        assert_eq!(s.processing.backoff_initial, Duration::from_millis(200));
        assert_eq!(s.alipayplus.request_timeout, Duration::from_secs(10));
        assert_eq!(s.admin.listen, "0.0.0.0:8080");
        assert_eq!(s.admin.livez_after, Duration::from_secs(60));
        assert_eq!(s.admin.stall_after, Duration::from_secs(300));
        assert!(s.schema_registry.is_none());
    }

    #[test]
    fn health_limits_are_read_and_checked() {
        let s = load(
            "[admin]\nlivez_after = \"90s\"\nstall_after = \"15m\"\n",
            &[("REGNOTIFY_ADMIN__STALL_AFTER", "20m")],
            &[],
        )
        .unwrap();
        assert_eq!(s.admin.livez_after, Duration::from_secs(90));
        assert_eq!(s.admin.stall_after, Duration::from_secs(20 * 60));
        let cases = [
            ("[admin]\nlivez_after = \"0s\"\n", "admin.livez_after"),
            ("[admin]\nstall_after = \"0s\"\n", "admin.stall_after"),
            ("[admin]\nstall_after = \"five\"\n", "admin.stall_after"),
            ("[admin]\nlivez_after = \"30d\"\n", "admin.livez_after"),
            (
                "[admin]\nlivez_after = \"5s\"\n[processing]\ncommit_interval = \"5s\"\n",
                "admin.livez_after",
            ),
            (
                "[admin]\nstall_after = \"1m\"\n[processing]\nbackoff_max = \"2m\"\n",
                "admin.stall_after",
            ),
        ];
        for (toml, key) in cases {
            let err = load(toml, &[], &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{toml:?} gave {err}");
        }
    }

    #[test]
    fn layers_apply_in_order_file_env_flags() {
        let toml = r#"
            [kafka]
            group_id = "from-file"
            input_topic = "in-file"
            [processing]
            max_in_flight = 3
            backoff_max = "5s"
        "#;
        let s = load(
            toml,
            &[
                ("REGNOTIFY_KAFKA__GROUP_ID", "from-env"),
                ("REGNOTIFY_PROCESSING__MAX_IN_FLIGHT", "7"),
            ],
            &[("processing.max_in_flight", "9")],
        )
        .unwrap();
        assert_eq!(s.kafka.group_id, "from-env");
        assert_eq!(s.kafka.input_topic, "in-file");
        assert_eq!(s.processing.max_in_flight, 9);
        assert_eq!(s.processing.backoff_max, Duration::from_secs(5));
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = load("[kafka]\ngroup = \"x\"\n", &[], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.group"), "{err}");
        let err = load("", &[("REGNOTIFY_PROCESSING__MAX_INFLIGHT", "3")], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("processing.max_inflight"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                "[processing]\nmax_retry_elapsed = \"ten minutes\"\n",
                "processing.max_retry_elapsed",
            ),
            (
                "[processing]\nmax_in_flight = 0\n",
                "processing.max_in_flight",
            ),
            (
                "[processing]\nordering = \"random\"\n",
                "processing.ordering",
            ),
            (
                "[alipayplus]\nbase_url = \"http://localhost:1\"\n",
                "alipayplus.base_url",
            ),
            (
                "[kafka]\ninput_topic = \"bad topic\"\n",
                "kafka.input_topic",
            ),
            (
                "[kafka.consumer]\n\"enable.auto.commit\" = \"true\"\n",
                "enable.auto.commit",
            ),
            ("[admin]\nlisten = \"nowhere\"\n", "admin.listen"),
            (
                "[kafka.producer]\n\"transactional.id\" = \"t\"\n",
                "transactional.id",
            ),
            ("[log]\nlevel = \"regnotify=loudest\"\n", "log.level"),
            (
                "[processing]\nbackoff_initial = \"1m\"\n",
                "processing.backoff_initial",
            ),
            (
                "[processing]\nshutdown_timeout = \"100years\"\n",
                "processing.shutdown_timeout",
            ),
        ];
        for (toml, key) in cases {
            let err = load(toml, &[], &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{toml:?} gave {err}");
        }
    }

    #[test]
    fn insecure_http_needs_explicit_consent() {
        let s = load(
            "[alipayplus]\nbase_url = \"http://127.0.0.1:9\"\nallow_insecure_http = true\n",
            &[],
            &[],
        )
        .unwrap();
        assert!(s.alipayplus.allow_insecure_http);
    }

    #[test]
    fn secrets_never_print() {
        let toml = r#"
            [schema_registry]
            url = "https://registry.example"
            username = "user"
            password = "registry-hunter2"
            [kafka.consumer]
            "sasl.password" = "sasl-hunter2"
            "security.protocol" = "SASL_SSL"
        "#;
        let s = load(
            toml,
            &[(
                "REGNOTIFY_ALIPAYPLUS__PRIVATE_KEY",
                "-----BEGIN PRIVATE KEY-----pem-hunter2",
            )],
            &[],
        )
        .unwrap();
        assert_eq!(
            s.alipayplus.private_key.as_ref().unwrap().expose(),
            "-----BEGIN PRIVATE KEY-----pem-hunter2"
        );
        for printed in [format!("{s:?}"), format!("{s:#?}"), s.to_redacted_toml()] {
            assert!(!printed.contains("hunter2"), "{printed}");
            assert!(printed.contains("SASL_SSL"));
        }
    }

    #[test]
    fn environment_variables_outside_the_tables_are_not_settings() {
        let s = load(
            "",
            &[
                ("REGNOTIFY_TEST_BOOTSTRAP", "x:1"),
                ("REGNOTIFY_TEST_KAFKA_PORT", "9092"),
                ("REGNOTIFY_REQUIRE_EXTERNAL", "1"),
                ("REGNOTIFY_REQUIRE_REAL_BROKER", "1"),
                ("REGNOTIFY_EXTERNAL_PYTHON", "python3"),
                ("OTHER_PROGRAM_MAX_IN_FLIGHT", "5"),
            ],
            &[],
        );
        assert!(s.is_ok());
        let err = load("", &[("REGNOTIFY_KAFKA_GROUP_ID", "g")], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("REGNOTIFY_KAFKA__GROUP_ID"), "{err}");
    }

    #[test]
    fn a_prefixed_variable_that_is_no_setting_stops_start_up_naming_the_right_one() {
        let cases = [
            (
                "REGNOTIFY_MAX_IN_FLIGHT",
                "REGNOTIFY_PROCESSING__MAX_IN_FLIGHT",
            ),
            ("REGNOTIFY_LOG_LEVEL", "REGNOTIFY_LOG__LEVEL"),
            (
                "REGNOTIFY_SCHEMA_REGISTRY_URL",
                "REGNOTIFY_SCHEMA_REGISTRY__URL",
            ),
            ("REGNOTIFY_CLIENT_ID", "REGNOTIFY_ALIPAYPLUS__CLIENT_ID"),
            (
                "REGNOTIFY_KAFKA__MAX_IN_FLIGHT",
                "REGNOTIFY_PROCESSING__MAX_IN_FLIGHT",
            ),
            (
                "REGNOTIFY_PROCESSING__MAXINFLIGHT",
                "REGNOTIFY_PROCESSING__MAX_IN_FLIGHT",
            ),
            (
                "REGNOTIFY_CA_BUNDLE_FILE",
                "REGNOTIFY_ALIPAYPLUS__CA_BUNDLE_FILE",
            ),
        ];
        for (variable, meant) in cases {
            let err = load("", &[(variable, "5")], &[]).unwrap_err().to_string();
            assert!(err.contains(variable), "{variable}: {err}");
            assert!(err.contains(meant), "{variable}: {err}");
        }
        // A setting in two tables: both are offered.
        let err = load("", &[("REGNOTIFY_REQUEST_TIMEOUT", "1s")], &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("REGNOTIFY_ALIPAYPLUS__REQUEST_TIMEOUT"),
            "{err}"
        );
        assert!(
            err.contains("REGNOTIFY_SCHEMA_REGISTRY__REQUEST_TIMEOUT"),
            "{err}"
        );
        // `__` naming no setting is surely meant as one.
        let err = load("", &[("REGNOTIFY_BANANA__SPLIT", "1")], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("REGNOTIFY_BANANA__SPLIT"), "{err}");
        assert!(err.contains("REGNOTIFY_TEST_*"), "{err}");
        assert!(
            load("", &[("REGNOTIFY_KAFKA_NOTHING", "1")], &[])
                .unwrap_err()
                .to_string()
                .contains("REGNOTIFY_KAFKA__NOTHING")
        );
        // Nothing like a setting: a tool's variable, ignored with a warning that spells out the
        // convention and the reserved prefixes.
        assert!(load("", &[("REGNOTIFY_BIN", "target/release/regnotify")], &[]).is_ok());
        let warning = unknown_environment_variable("REGNOTIFY_BIN").unwrap();
        assert!(warning.contains("REGNOTIFY_BIN"), "{warning}");
        assert!(warning.contains("REGNOTIFY_TEST_*"), "{warning}");
        for quiet in [
            "REGNOTIFY_TEST_BOOTSTRAP",
            "REGNOTIFY_CONFIG",
            "REGNOTIFY_PROCESSING__MAX_IN_FLIGHT",
            "REGNOTIFY_MAX_IN_FLIGHT",
            "OTHER_BIN",
        ] {
            assert_eq!(unknown_environment_variable(quiet), None, "{quiet}");
        }
    }

    #[test]
    fn every_setting_path_is_known_and_free_form_tables_take_any_key() {
        for path in [
            "kafka.bootstrap_servers",
            "schema_registry.password",
            "alipayplus.private_key",
            "alipayplus.ca_bundle_file",
            "processing.refused_streak_threshold",
            "log.level",
            "kafka.consumer.anything",
            "alipayplus.result_policy.process_fail",
        ] {
            assert!(is_setting_path(path), "{path}");
        }
        for path in [
            "kafka",
            "kafka.consumer.",
            "processing.max_inflight",
            "kafka.group",
        ] {
            assert!(!is_setting_path(path), "{path}");
        }
        let s = load(
            "",
            &[
                ("REGNOTIFY_KAFKA__CONSUMER__SECURITY_PROTOCOL", "SSL"),
                ("REGNOTIFY_ALIPAYPLUS__RESULT_POLICY__PROCESS_FAIL", "retry"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.kafka.consumer.0["security_protocol"], "SSL");
        assert_eq!(
            s.alipayplus.result_policy.get("PROCESS_FAIL"),
            Some(&ResultPolicy::Retry)
        );
    }

    /// Found by fuzzing (fuzz/corpus/settings/crash-figment-escape-after-non-ascii): figment's
    /// value parser panicked on an escape after a non-ASCII character.
    #[test]
    fn deeply_nested_values_are_refused_not_a_stack_overflow() {
        let deep = "[".repeat(100_000);
        let err = load(
            "",
            &[("REGNOTIFY_PROCESSING__MAX_IN_FLIGHT", deep.as_str())],
            &[],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("processing.max_in_flight"),
            "{err}"
        );
        let deep = format!("{}1{}", "[".repeat(50_000), "]".repeat(50_000));
        let err = load("", &[], &[("processing.max_in_flight", deep.as_str())]).unwrap_err();
        assert!(
            err.to_string().contains("processing.max_in_flight"),
            "{err}"
        );
        // Ordinary nesting still parses.
        let s = load(
            "",
            &[(
                "REGNOTIFY_ALIPAYPLUS__RESULT_POLICY",
                "{PROCESS_FAIL = \"retry\"}",
            )],
            &[],
        )
        .unwrap();
        assert_eq!(s.alipayplus.result_policy.len(), 1);
    }

    #[test]
    fn escapes_after_non_ascii_characters_in_environment_values_do_not_panic() {
        let s = load(
            "",
            &[
                ("REGNOTIFY_ALIPAYPLUS__CLIENT_ID", r#""é\u0041x""#),
                ("REGNOTIFY_KAFKA__GROUP_ID", r#"grü\n"#),
            ],
            &[("kafka.input_topic", r#""in\u0070ut""#)],
        )
        .unwrap();
        assert_eq!(s.alipayplus.client_id, "éAx");
        assert_eq!(s.kafka.group_id, r#"grü\n"#);
        assert_eq!(s.kafka.input_topic, "input");
        let err = load("", &[("REGNOTIFY_KAFKA__INPUT_TOPIC", r#""ü\q""#)], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka.input_topic"), "{err}");
    }

    /// Found by fuzzing (fuzz/corpus/settings/crash-envfilter-non-ascii-level): the log filter
    /// parser panicked on some non-ASCII levels.
    #[test]
    fn a_non_ascii_log_level_is_refused_by_name() {
        for level in ["info,a[{b=\"é\"}]=debug", "regnotify=dé[bug]", "ïnfo"] {
            let err = load("", &[("REGNOTIFY_LOG__LEVEL", level)], &[])
                .unwrap_err()
                .to_string();
            assert!(err.contains("log.level"), "{level}: {err}");
        }
    }

    #[test]
    fn numeric_values_of_string_settings_stay_text() {
        let s = load(
            "[kafka.consumer]\n\"session.timeout.ms\" = 6000\n",
            &[
                ("REGNOTIFY_ALIPAYPLUS__CLIENT_ID", "2022123456789012"),
                ("REGNOTIFY_KAFKA__GROUP_ID", "42"),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.alipayplus.client_id, "2022123456789012");
        assert_eq!(s.kafka.group_id, "42");
        assert_eq!(s.kafka.consumer.0["session.timeout.ms"], "6000");
    }

    #[test]
    fn mpp_tables_load_from_file_and_environment_and_are_checked_by_name() {
        let toml = r#"
            [alipayplus]
            client_id = "top"
            private_key_file = "/keys/top.pem"
            alipayplus_public_key_file = "/keys/alipay.pem"
            [alipayplus.clients.PSP_A]
            client_id = "client-a"
            private_key_file = "/keys/a.pem"
            alipayplus_public_key_file = "/keys/alipay-a.pem"
            base_url = "https://open-na-global.alipayplus.com"
            max_requests_per_second = 50
        "#;
        let s = load(
            toml,
            &[
                (
                    "REGNOTIFY_ALIPAYPLUS__CLIENTS__PSP_B__CLIENT_ID",
                    "2022000000000002",
                ),
                (
                    "REGNOTIFY_ALIPAYPLUS__CLIENTS__PSP_B__PRIVATE_KEY",
                    "pem-hunter2",
                ),
                ("REGNOTIFY_ALIPAYPLUS__CLIENTS__PSP_B__KEY_VERSION", "3"),
                (
                    "REGNOTIFY_ALIPAYPLUS__CLIENTS__PSP_B__ALIPAYPLUS_PUBLIC_KEY_FILE",
                    "/keys/alipay-b.pem",
                ),
            ],
            &[],
        )
        .unwrap();
        let a = &s.alipayplus.clients["PSP_A"];
        assert_eq!(a.client_id, "client-a");
        assert_eq!(a.key_version, 1, "a table's key_version defaults to 1");
        assert_eq!(a.max_requests_per_second, Some(50));
        // Environment keys arrive lower-cased, pspIds too (documented: use TOML for mixed case).
        let b = &s.alipayplus.clients["psp_b"];
        assert_eq!(
            (b.client_id.as_str(), b.key_version),
            ("2022000000000002", 3)
        );
        assert!(s.alipayplus.require_credentials().is_ok());
        for printed in [format!("{s:?}"), s.to_redacted_toml()] {
            assert!(!printed.contains("hunter2"), "{printed}");
        }
        let cases = [
            (
                "[alipayplus.clients.A]\nclient_id = \"a\"\nprivate_key_fil = \"x\"\n",
                "alipayplus.clients.A.private_key_fil",
            ),
            (
                "[alipayplus.clients.A]\nprivate_key_file = \"x\"\n",
                "alipayplus.clients.A.client_id",
            ),
            (
                "[alipayplus.clients.A]\nclient_id = \"a\"\nbase_url = \"http://x\"\n",
                "alipayplus.clients.A.base_url",
            ),
            (
                "[alipayplus.clients.default]\nclient_id = \"a\"\n",
                "alipayplus.clients.default",
            ),
            (
                "[alipayplus.clients.\"a b\"]\nclient_id = \"a\"\n",
                "alipayplus.clients.a b",
            ),
            (
                "[alipayplus]\nkey_reload_interval = \"0s\"\n",
                "alipayplus.key_reload_interval",
            ),
        ];
        for (toml, key) in cases {
            let err = load(toml, &[], &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{toml:?} gave {err}");
        }
        let s = load(
            "[alipayplus]\nclient_id = \"t\"\nprivate_key_file = \"k\"\nalipayplus_public_key_file = \"p\"\n\
             [alipayplus.clients.A]\nclient_id = \"a\"\nalipayplus_public_key_file = \"p\"\n",
            &[],
            &[],
        )
        .unwrap();
        let err = s.alipayplus.require_credentials().unwrap_err().to_string();
        assert!(
            err.contains("alipayplus.clients.A.private_key_file"),
            "{err}"
        );
    }

    #[test]
    fn credentials_are_required_for_run() {
        let s = load("", &[], &[]).unwrap();
        let err = s.alipayplus.require_credentials().unwrap_err().to_string();
        assert!(err.contains("alipayplus.client_id"), "{err}");
    }

    #[test]
    fn result_policy_overrides_parse() {
        let s = load(
            "[alipayplus.result_policy]\nPROCESS_FAIL = \"retry\"\n",
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(
            s.alipayplus.result_policy.get("PROCESS_FAIL"),
            Some(&ResultPolicy::Retry)
        );
        let err = load(
            "[alipayplus.result_policy]\nPROCESS_FAIL = \"maybe\"\n",
            &[],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("alipayplus.result_policy.PROCESS_FAIL"),
            "{err}"
        );
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let sources = Sources {
            config_file: Some(PathBuf::from("/nonexistent/regnotify.toml")),
            overrides: vec![],
        };
        let err = Settings::load_with_env(&sources, Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/regnotify.toml"), "{err}");
    }
}
