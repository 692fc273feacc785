//! Decoding input values into [`RegistrationDecided`] (SPEC 3.1).

use std::sync::Arc;

use apache_avro::Schema;

use super::framing::{self, Framed};
use super::registry::SchemaRegistryClient;
use super::schemas::builtin;
use super::value::{event_from_value, outcome_from_value};
use super::{DecodeError, limit_avro_allocations};
use crate::config::InputEncoding;
use crate::event::{RegistrationDecided, RegistrationNotifyOutcome};

/// Decodes input values in the configured framing. Share it behind an `Arc`; it is `Sync`.
#[derive(Debug)]
pub struct EventDecoder {
    encoding: InputEncoding,
    registry: Option<Arc<SchemaRegistryClient>>,
}

impl EventDecoder {
    /// A decoder for `encoding`. Without a registry, Confluent records fail with
    /// [`DecodeError::RegistryNotConfigured`].
    pub fn new(encoding: InputEncoding, registry: Option<Arc<SchemaRegistryClient>>) -> Self {
        limit_avro_allocations();
        EventDecoder { encoding, registry }
    }

    /// Decodes one Kafka record value. Only a Confluent record whose writer schema is not cached
    /// yet waits on the network (bounded by the registry client's timeout).
    pub async fn decode(&self, bytes: &[u8]) -> Result<RegistrationDecided, DecodeError> {
        let framed = match self.encoding {
            InputEncoding::Raw => return decode_event_body(&builtin().input.schema, bytes),
            InputEncoding::Auto => framing::parse_auto(bytes)?,
            InputEncoding::Confluent => framing::parse_confluent(bytes)?,
            InputEncoding::SingleObject => framing::parse_single_object(bytes)?,
        };
        match framed {
            Framed::Confluent { schema_id, body } => {
                let registry = self
                    .registry
                    .as_ref()
                    .ok_or(DecodeError::RegistryNotConfigured(schema_id))?;
                let writer = registry.schema_by_id(schema_id).await?;
                decode_event_body(&writer.schema, body)
            }
            Framed::SingleObject { fingerprint, body } => {
                if let Some(known) = builtin().input_by_fingerprint.get(&fingerprint) {
                    return decode_event_body(&known.schema, body);
                }
                let cached = self
                    .registry
                    .as_ref()
                    .and_then(|r| r.cached_by_fingerprint(fingerprint))
                    .ok_or(DecodeError::UnknownFingerprint(fingerprint))?;
                decode_event_body(&cached.schema, body)
            }
        }
    }
}

/// Decodes one Avro binary datum written with `writer` and resolves it against our reader schema.
/// The datum must use every byte of `body`.
pub(crate) fn decode_event_body(
    writer: &Schema,
    body: &[u8],
) -> Result<RegistrationDecided, DecodeError> {
    let value = decode_datum(writer, &builtin().input.schema, body)?;
    event_from_value(value)
}

/// Decodes an outcome value as this crate writes it: single-object (our fingerprint), Confluent
/// (assuming the writer schema is our outcome schema, whatever the id) or JSON. For tests, the
/// demo and tools, not for reading other producers' outcomes.
pub fn decode_outcome(bytes: &[u8]) -> Result<RegistrationNotifyOutcome, DecodeError> {
    limit_avro_allocations();
    let outcome = &builtin().outcome;
    if bytes.first() == Some(&b'{') {
        return outcome_from_json(bytes);
    }
    let body = match framing::parse_auto(bytes)? {
        Framed::Confluent { body, .. } => body,
        Framed::SingleObject { fingerprint, body } if fingerprint == outcome.fingerprint => body,
        Framed::SingleObject { fingerprint, .. } => {
            return Err(DecodeError::UnknownFingerprint(fingerprint));
        }
    };
    outcome_from_value(decode_datum(&outcome.schema, &outcome.schema, body)?)
}

fn outcome_from_json(bytes: &[u8]) -> Result<RegistrationNotifyOutcome, DecodeError> {
    let json: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let value = apache_avro::types::Value::from(json);
    // JSON numbers become Long and symbols String; resolution turns them into the schema's types.
    let value = resolve_json_value(value)?;
    outcome_from_value(value)
}

fn resolve_json_value(
    value: apache_avro::types::Value,
) -> Result<apache_avro::types::Value, DecodeError> {
    use apache_avro::types::Value;
    // Narrow the int fields the JSON form carries as numbers before resolution.
    let Value::Map(map) = value else {
        return Err(DecodeError::Malformed(
            "outcome json is not an object".into(),
        ));
    };
    let fields = map
        .into_iter()
        .map(|(name, v)| {
            let v = match (name.as_str(), v) {
                ("httpStatus" | "attempts" | "sourcePartition", Value::Long(n)) => {
                    Value::Int(i32::try_from(n).map_err(|e| DecodeError::InvalidValue {
                        field: "(int)",
                        reason: e.to_string(),
                    })?)
                }
                (_, v) => v,
            };
            Ok((name, v))
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    Ok(Value::Record(fields))
}

fn decode_datum(
    writer: &Schema,
    reader: &Schema,
    body: &[u8],
) -> Result<apache_avro::types::Value, DecodeError> {
    limit_avro_allocations();
    let mut input = EofTracking {
        rest: body,
        hit_eof: false,
    };
    let value = apache_avro::from_avro_datum(writer, &mut input, None).map_err(classify)?;
    if input.hit_eof {
        return Err(DecodeError::Truncated { what: "avro body" });
    }
    if !input.rest.is_empty() {
        return Err(DecodeError::TrailingBytes(input.rest.len()));
    }
    value
        .resolve(reader)
        .map_err(|e| DecodeError::SchemaMismatch(e.to_string()))
}

/// A byte reader that remembers running out of bytes.
///
/// apache-avro 0.21 turns an end of input where a union index, a string or a boolean should be
/// into `null` instead of an error, so a record cut at the right place would decode with its
/// optional fields silently dropped. A datum is complete only if decoding never hit the end.
struct EofTracking<'a> {
    rest: &'a [u8],
    hit_eof: bool,
}

impl std::io::Read for EofTracking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.rest.is_empty() && !buf.is_empty() {
            self.hit_eof = true;
        }
        self.rest.read(buf)
    }
}

/// Tells "the bytes ran out" apart from "the bytes are wrong".
fn classify(error: apache_avro::Error) -> DecodeError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::UnexpectedEof
        {
            return DecodeError::Truncated { what: "avro body" };
        }
        source = cause.source();
    }
    DecodeError::Malformed(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode_event_raw;
    use crate::event::Decision;

    fn event() -> RegistrationDecided {
        RegistrationDecided {
            event_id: "0b5f7c1e-6c8a-4a57-9d62-4a1d1f0e9a11".into(),
            occurred_at_ms: 1,
            reference_merchant_id: "M".into(),
            registration_request_id: "R".into(),
            decision: Decision::Rejected,
            rejection_reason: Some("why".into()),
            psp_id: Some("p".into()),
        }
    }

    #[test]
    fn a_body_cut_before_its_optional_fields_is_truncated_not_null() {
        // apache-avro alone decodes this prefix with both optional fields as null.
        let body = encode_event_raw(&event()).expect("encodes");
        let cut = body.len() - "why".len() - "p".len() - 4;
        assert_eq!(
            decode_event_body(&builtin().input.schema, &body[..cut]),
            Err(DecodeError::Truncated { what: "avro body" })
        );
        assert_eq!(
            decode_event_body(&builtin().input.schema, &body),
            Ok(event())
        );
    }

    #[test]
    fn bytes_after_the_datum_are_refused() {
        let mut body = encode_event_raw(&event()).expect("encodes");
        body.push(0);
        assert_eq!(
            decode_event_body(&builtin().input.schema, &body),
            Err(DecodeError::TrailingBytes(1))
        );
    }
}
