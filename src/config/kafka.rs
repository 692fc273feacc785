//! `[kafka]` and `[schema_registry]`: the brokers, the group, the three topics, their framings
//! and the librdkafka properties passed through, and the Schema Registry client's settings.
//!
//! Holds the tables, their defaults and the `[kafka]` checks (including the librdkafka properties
//! regnotify manages itself and refuses to let be overridden). It must never open a connection or
//! read the environment.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::redact::{KafkaProperties, Secret};
use super::serde_helpers::{lenient_opt_string, lenient_string};
use super::validate::{check_topic, non_empty};

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

impl KafkaSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
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
