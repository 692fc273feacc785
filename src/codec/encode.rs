//! Encoding outcomes (SPEC 3.2) and input events (for `regnotify produce`, the demo and tests).

use std::sync::Arc;

use apache_avro::types::Value;
use serde::Deserialize;

use super::framing::{frame_confluent, frame_single_object};
use super::registry::SchemaRegistryClient;
use super::schemas::{KnownSchema, builtin};
use super::value::{event_to_value, outcome_to_json, outcome_to_value};
use super::{DecodeError, EncodeError};
use crate::config::{InputEncoding, OutputEncoding};
use crate::event::{Decision, RegistrationDecided, RegistrationNotifyOutcome};

/// How a record is framed on the way out.
#[derive(Debug)]
enum Framing {
    /// Registered under `subject`; the id is cached by the registry client.
    Confluent {
        registry: Arc<SchemaRegistryClient>,
        subject: String,
    },
    SingleObject,
    Raw,
    Json,
}

async fn frame(
    framing: &Framing,
    schema: &KnownSchema,
    value: Value,
) -> Result<Vec<u8>, EncodeError> {
    let body = datum(schema, value)?;
    Ok(match framing {
        Framing::Confluent { registry, subject } => {
            let id = registry
                .register(subject, &schema.schema, schema.json)
                .await?;
            frame_confluent(id, &body)
        }
        Framing::SingleObject => frame_single_object(schema.fingerprint, &body),
        Framing::Raw | Framing::Json => body,
    })
}

fn datum(schema: &KnownSchema, value: Value) -> Result<Vec<u8>, EncodeError> {
    apache_avro::to_avro_datum(&schema.schema, value).map_err(|e| EncodeError::Avro(e.to_string()))
}

/// Encodes outcomes for the result topic.
#[derive(Debug)]
pub struct OutcomeEncoder {
    framing: Framing,
}

impl OutcomeEncoder {
    /// `OutputEncoding::Auto` is Confluent framing under subject `<result_topic>-value` when a
    /// registry is given, else single-object; `Json` is a JSON object with the Avro field names.
    pub fn new(
        encoding: OutputEncoding,
        registry: Option<Arc<SchemaRegistryClient>>,
        result_topic: &str,
    ) -> Self {
        let framing = match (encoding, registry) {
            (OutputEncoding::Json, _) => Framing::Json,
            (OutputEncoding::Auto, Some(registry)) => Framing::Confluent {
                registry,
                subject: format!("{result_topic}-value"),
            },
            (OutputEncoding::Auto, None) => Framing::SingleObject,
        };
        OutcomeEncoder { framing }
    }

    /// Encodes one outcome. Only the first Confluent encode per process waits on the registry.
    pub async fn encode(
        &self,
        outcome: &RegistrationNotifyOutcome,
    ) -> Result<Vec<u8>, EncodeError> {
        if let Framing::Json = self.framing {
            return Ok(encode_outcome_json(outcome));
        }
        frame(&self.framing, &builtin().outcome, outcome_to_value(outcome)).await
    }
}

/// Encodes input events, as an MPP would publish them.
#[derive(Debug)]
pub struct EventEncoder {
    framing: Framing,
}

impl EventEncoder {
    /// `InputEncoding::Auto` is Confluent framing under subject `<input_topic>-value` when a
    /// registry is given, else single-object. `Confluent` without a registry is an error.
    pub fn new(
        encoding: InputEncoding,
        registry: Option<Arc<SchemaRegistryClient>>,
        input_topic: &str,
    ) -> Result<Self, EncodeError> {
        let framing = match (encoding, registry) {
            (InputEncoding::Raw, _) => Framing::Raw,
            (InputEncoding::SingleObject, _) | (InputEncoding::Auto, None) => Framing::SingleObject,
            (InputEncoding::Confluent | InputEncoding::Auto, Some(registry)) => {
                Framing::Confluent {
                    registry,
                    subject: format!("{input_topic}-value"),
                }
            }
            (InputEncoding::Confluent, None) => return Err(EncodeError::RegistryNotConfigured),
        };
        Ok(EventEncoder { framing })
    }

    pub async fn encode(&self, event: &RegistrationDecided) -> Result<Vec<u8>, EncodeError> {
        frame(&self.framing, &builtin().input, event_to_value(event)?).await
    }
}

/// An input event as plain Avro binary with the current schema (`input_encoding = "raw"`).
pub fn encode_event_raw(event: &RegistrationDecided) -> Result<Vec<u8>, EncodeError> {
    datum(&builtin().input, event_to_value(event)?)
}

/// An input event in Avro single-object encoding with the current schema.
pub fn encode_event_single_object(event: &RegistrationDecided) -> Result<Vec<u8>, EncodeError> {
    let input = &builtin().input;
    Ok(frame_single_object(
        input.fingerprint,
        &encode_event_raw(event)?,
    ))
}

/// An input event in Confluent wire format, for a schema id already registered for our schema.
pub fn encode_event_confluent(
    schema_id: u32,
    event: &RegistrationDecided,
) -> Result<Vec<u8>, EncodeError> {
    Ok(frame_confluent(schema_id, &encode_event_raw(event)?))
}

/// An outcome in Avro single-object encoding.
pub fn encode_outcome_single_object(
    outcome: &RegistrationNotifyOutcome,
) -> Result<Vec<u8>, EncodeError> {
    let schema = &builtin().outcome;
    Ok(frame_single_object(
        schema.fingerprint,
        &datum(schema, outcome_to_value(outcome))?,
    ))
}

/// An outcome in Confluent wire format, for a schema id already registered for our schema.
pub fn encode_outcome_confluent(
    schema_id: u32,
    outcome: &RegistrationNotifyOutcome,
) -> Result<Vec<u8>, EncodeError> {
    Ok(frame_confluent(
        schema_id,
        &datum(&builtin().outcome, outcome_to_value(outcome))?,
    ))
}

/// An outcome as a JSON object (`output_encoding = "json"`), UTF-8, no trailing newline.
pub fn encode_outcome_json(outcome: &RegistrationNotifyOutcome) -> Vec<u8> {
    outcome_to_json(outcome).to_string().into_bytes()
}

/// One line of `regnotify produce` input: a JSON object with the Avro field names. `eventId`
/// defaults to a fresh v4 uuid and `occurredAt` to now; unknown fields are refused.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EventJson {
    event_id: Option<String>,
    occurred_at: Option<i64>,
    reference_merchant_id: String,
    registration_request_id: String,
    decision: String,
    #[serde(default)]
    rejection_reason: Option<String>,
    #[serde(default)]
    psp_id: Option<String>,
}

/// Parses one JSON line of `regnotify produce` into an event (see the field rules above).
pub fn event_from_json(line: &str) -> Result<RegistrationDecided, DecodeError> {
    let json: EventJson =
        serde_json::from_str(line).map_err(|e| DecodeError::Malformed(format!("json: {e}")))?;
    let decision = Decision::from_symbol(&json.decision).ok_or(DecodeError::InvalidValue {
        field: "decision",
        reason: format!("unknown symbol {:?}", json.decision),
    })?;
    Ok(RegistrationDecided {
        event_id: json
            .event_id
            .unwrap_or_else(|| uuid::Uuid::new_v4().hyphenated().to_string()),
        occurred_at_ms: json
            .occurred_at
            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis()),
        reference_merchant_id: json.reference_merchant_id,
        registration_request_id: json.registration_request_id,
        decision,
        rejection_reason: json.rejection_reason,
        psp_id: json.psp_id,
    })
}
