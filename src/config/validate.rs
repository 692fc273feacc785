//! The value checks of the settings: [`Settings::validate`], which walks every table, and the
//! small checks the tables share (non-empty, positive durations, Kafka topic names, HTTP URLs).
//!
//! Checks here depend on the values alone: this file never reads files, the network or the
//! environment (the OTLP protocol variable is the telemetry table's own), and never refers to a
//! table's file: each table validates itself through its own `validate` method.

use std::time::Duration;

use super::{ConfigError, Settings};

impl Settings {
    /// Checks every value whose validity does not depend on files or the network.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
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
}

pub(super) fn non_empty(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::invalid(key, "must not be empty"));
    }
    Ok(())
}

/// Longest duration any setting may take; longer values are surely typos and would overflow
/// deadline arithmetic.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

pub(super) fn positive(key: &str, value: Duration) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::invalid(key, "must be longer than zero"));
    }
    if value > MAX_DURATION {
        return Err(ConfigError::invalid(key, "must be at most 7 days"));
    }
    Ok(())
}

pub(super) fn at_least(key: &str, value: usize, min: usize) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError::invalid(key, format!("must be at least {min}")));
    }
    Ok(())
}

/// Kafka's own topic-name rule: 1–249 characters of `[a-zA-Z0-9._-]`.
pub(super) fn check_topic(key: &str, topic: &str) -> Result<(), ConfigError> {
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

pub(super) fn check_http_url(key: &str, value: &str, allow_http: bool) -> Result<(), ConfigError> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::config::tests::load;

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
}
