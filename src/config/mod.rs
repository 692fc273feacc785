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
//!
//! This file owns the [`Settings`] type, [`ConfigError`] and the loading in layers; the tables
//! live one file per table or group of related tables (`kafka`, `alipayplus`, `processing`,
//! `admin`, `telemetry`), the `REGNOTIFY_*` layer in `env`, the value checks in `validate`, the
//! types that hold secrets and the redacted dump in `redact`, the lenient scalar deserialisers in
//! `serde_helpers`. It wires them and re-exports their public items, so callers name everything
//! as `config::…`; it must not grow checks or environment parsing of its own.

use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

mod admin;
mod alipayplus;
mod env;
mod kafka;
mod processing;
mod redact;
mod serde_helpers;
mod telemetry;
mod validate;

pub(crate) use admin::AdminSettings;
pub use alipayplus::{AlipayPlusSettings, MppClientSettings, ResultPolicy};
pub(crate) use alipayplus::{CircuitBreakerSettings, DEFAULT_PSP_LABEL};
pub(crate) use env::unknown_environment_variable;
pub use kafka::InputEncoding;
pub(crate) use kafka::KafkaSettings;
pub use kafka::{OutputEncoding, SchemaRegistrySettings};
pub use processing::Ordering;
pub(crate) use processing::ProcessingSettings;
pub use redact::Secret;
pub use telemetry::{LogFormat, OtlpProtocol};
pub(crate) use telemetry::{LogSettings, TelemetrySettings};

use env::{environment_setting, parse_value, process_environment};

/// The environment variable that names the TOML file when `--config` is not given.
pub(crate) const CONFIG_ENV: &str = "REGNOTIFY_CONFIG";
/// Prefix of every environment override; `__` separates levels.
pub(crate) const ENV_PREFIX: &str = "REGNOTIFY_";

/// A configuration problem, always naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid setting `{key}`: {message}")]
    Invalid { key: String, message: String },
    #[error("{0}")]
    Load(String),
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
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
    pub(crate) fn load_with_env(
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
    pub(crate) fn load_from_toml_str(
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    pub(super) fn load(
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
