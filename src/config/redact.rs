//! What must never print: [`Secret`] (keys, passwords) and [`KafkaProperties`] (librdkafka
//! properties whose sensitive values are redacted), and the effective-settings dump
//! ([`Settings::to_redacted_toml`]) that relies on them.
//!
//! Both types print and serialise redacted; the secret text is reachable only through
//! [`Secret::expose`], at the place it is used. This file must never format a secret, log, or
//! serialise anything but the redacted form.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Settings;
use super::serde_helpers::{PropertyValue, lenient_string};

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
    pub(crate) fn expose(&self) -> &str {
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
    pub(crate) fn is_sensitive(name: &str) -> bool {
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

impl Settings {
    /// The effective settings as TOML, secrets redacted (for `check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|err| format!("# settings could not be rendered: {err}\n"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::config::tests::load;

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
}
