//! Custom serde deserialisers of the settings: strings taken from any scalar, because environment
//! and `--set` values are typed like TOML scalars (a numeric client id arrives as a number).
//!
//! Leaf of the `config` module: it knows no table and no secret, and never fails on a scalar a
//! string setting could hold.

use std::fmt;

use serde::Deserialize;
use serde::Deserializer;
use serde::de::{self, Visitor};

/// Deserialises a string from any scalar. Environment and `--set` values are typed like TOML
/// scalars, so a numeric client id (`REGNOTIFY_ALIPAYPLUS__CLIENT_ID=2022123456789012`) arrives as
/// a number; string settings take it back as text.
pub(super) fn lenient_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<String, D::Error> {
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
pub(super) fn lenient_opt_string<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    lenient_string(deserializer).map(Some)
}

/// A librdkafka property value: any TOML scalar, kept as text (`"session.timeout.ms" = 6000`).
#[derive(Deserialize)]
#[serde(transparent)]
pub(super) struct PropertyValue(#[serde(deserialize_with = "lenient_string")] pub(super) String);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::config::tests::load;

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
}
