//! Mapping between Avro [`Value`]s (after resolution against our schemas) and the domain records
//! of [`crate::event`], plus the JSON form of an outcome. Pure functions, no I/O.
//!
//! Decoding looks fields up by name and accepts every shape apache-avro may produce for them
//! (a uuid as `Uuid` or `String`, a timestamp as `TimestampMillis` or `Long`, optional values with
//! or without their `Union` wrapper), so that a surprising value is a typed error, never a panic.

use apache_avro::types::Value;
use serde_json::json;

use super::{DecodeError, EncodeError};
use crate::event::{Decision, NotifyOutcome, RegistrationDecided, RegistrationNotifyOutcome};

/// Maps a `MerchantRegistrationDecided` record value to the domain event.
pub(crate) fn event_from_value(value: Value) -> Result<RegistrationDecided, DecodeError> {
    let Value::Record(fields) = value else {
        return Err(DecodeError::InvalidValue {
            field: "(record)",
            reason: format!("expected a record, found {}", kind(&value)),
        });
    };
    let mut fields = Fields(fields);
    Ok(RegistrationDecided {
        event_id: fields.string("eventId")?,
        occurred_at_ms: fields.long("occurredAt")?,
        reference_merchant_id: fields.string("referenceMerchantId")?,
        registration_request_id: fields.string("registrationRequestId")?,
        decision: fields.decision("decision")?,
        rejection_reason: fields.optional_string("rejectionReason")?,
        psp_id: fields.optional_string("pspId")?,
    })
}

struct Fields(Vec<(String, Value)>);

impl Fields {
    /// Takes a field out of the record; absent fields are `None` (optional ones map to `None`).
    fn take(&mut self, name: &str) -> Option<Value> {
        let at = self.0.iter().position(|(n, _)| n == name)?;
        Some(strip_union(self.0.swap_remove(at).1))
    }

    fn required(&mut self, name: &'static str) -> Result<Value, DecodeError> {
        self.take(name).ok_or(DecodeError::InvalidValue {
            field: name,
            reason: "missing".into(),
        })
    }

    fn string(&mut self, name: &'static str) -> Result<String, DecodeError> {
        match self.required(name)? {
            Value::String(s) => Ok(s),
            Value::Uuid(u) => Ok(u.hyphenated().to_string()),
            other => Err(unexpected(name, "a string", &other)),
        }
    }

    fn optional_string(&mut self, name: &'static str) -> Result<Option<String>, DecodeError> {
        match self.take(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(unexpected(name, "null or a string", &other)),
        }
    }

    fn long(&mut self, name: &'static str) -> Result<i64, DecodeError> {
        match self.required(name)? {
            Value::Long(n) | Value::TimestampMillis(n) => Ok(n),
            Value::Int(n) => Ok(i64::from(n)),
            other => Err(unexpected(name, "a long", &other)),
        }
    }

    fn decision(&mut self, name: &'static str) -> Result<Decision, DecodeError> {
        let symbol = match self.required(name)? {
            Value::Enum(_, symbol) | Value::String(symbol) => symbol,
            other => return Err(unexpected(name, "an enum symbol", &other)),
        };
        Decision::from_symbol(&symbol).ok_or(DecodeError::InvalidValue {
            field: name,
            reason: format!("unknown symbol {symbol:?}"),
        })
    }
}

fn strip_union(value: Value) -> Value {
    match value {
        Value::Union(_, inner) => strip_union(*inner),
        other => other,
    }
}

fn unexpected(field: &'static str, expected: &str, found: &Value) -> DecodeError {
    DecodeError::InvalidValue {
        field,
        reason: format!("expected {expected}, found {}", kind(found)),
    }
}

fn kind(value: &Value) -> String {
    format!("{:?}", apache_avro::types::ValueKind::from(value)).to_lowercase()
}

/// The Avro value of an input event, for the `MerchantRegistrationDecided` schema.
pub(crate) fn event_to_value(event: &RegistrationDecided) -> Result<Value, EncodeError> {
    let event_id =
        uuid::Uuid::parse_str(&event.event_id).map_err(|e| EncodeError::InvalidField {
            field: "eventId",
            reason: format!("not a uuid: {e}"),
        })?;
    Ok(Value::Record(vec![
        ("eventId".into(), Value::Uuid(event_id)),
        (
            "occurredAt".into(),
            Value::TimestampMillis(event.occurred_at_ms),
        ),
        (
            "referenceMerchantId".into(),
            Value::String(event.reference_merchant_id.clone()),
        ),
        (
            "registrationRequestId".into(),
            Value::String(event.registration_request_id.clone()),
        ),
        ("decision".into(), decision_value(event.decision)),
        (
            "rejectionReason".into(),
            optional_string(event.rejection_reason.as_deref()),
        ),
        ("pspId".into(), optional_string(event.psp_id.as_deref())),
    ]))
}

/// The Avro value of an outcome, for the `RegistrationNotifyOutcome` schema.
pub(crate) fn outcome_to_value(outcome: &RegistrationNotifyOutcome) -> Value {
    let o = outcome;
    Value::Record(vec![
        ("eventId".into(), Value::String(o.event_id.clone())),
        (
            "referenceMerchantId".into(),
            Value::String(o.reference_merchant_id.clone()),
        ),
        (
            "registrationRequestId".into(),
            Value::String(o.registration_request_id.clone()),
        ),
        ("decision".into(), decision_value(o.decision)),
        ("outcome".into(), notify_outcome_value(o.outcome)),
        (
            "resultStatus".into(),
            optional_string(o.result_status.as_deref()),
        ),
        (
            "resultCode".into(),
            optional_string(o.result_code.as_deref()),
        ),
        (
            "resultMessage".into(),
            optional_string(o.result_message.as_deref()),
        ),
        ("httpStatus".into(), optional(o.http_status.map(Value::Int))),
        ("attempts".into(), Value::Int(o.attempts)),
        (
            "firstAttemptAt".into(),
            optional(o.first_attempt_at_ms.map(Value::TimestampMillis)),
        ),
        (
            "completedAt".into(),
            Value::TimestampMillis(o.completed_at_ms),
        ),
        ("sourceTopic".into(), Value::String(o.source_topic.clone())),
        ("sourcePartition".into(), Value::Int(o.source_partition)),
        ("sourceOffset".into(), Value::Long(o.source_offset)),
        ("error".into(), optional_string(o.error.as_deref())),
    ])
}

/// The JSON form of an outcome (`output_encoding = "json"`): the Avro field names, `null` for
/// absent values, enums as their symbols, timestamps as epoch milliseconds.
pub(crate) fn outcome_to_json(outcome: &RegistrationNotifyOutcome) -> serde_json::Value {
    let o = outcome;
    json!({
        "eventId": o.event_id,
        "referenceMerchantId": o.reference_merchant_id,
        "registrationRequestId": o.registration_request_id,
        "decision": o.decision.as_str(),
        "outcome": o.outcome.as_str(),
        "resultStatus": o.result_status,
        "resultCode": o.result_code,
        "resultMessage": o.result_message,
        "httpStatus": o.http_status,
        "attempts": o.attempts,
        "firstAttemptAt": o.first_attempt_at_ms,
        "completedAt": o.completed_at_ms,
        "sourceTopic": o.source_topic,
        "sourcePartition": o.source_partition,
        "sourceOffset": o.source_offset,
        "error": o.error,
    })
}

/// Maps a resolved `RegistrationNotifyOutcome` value back to the domain record (tests, tools).
pub(crate) fn outcome_from_value(value: Value) -> Result<RegistrationNotifyOutcome, DecodeError> {
    let Value::Record(fields) = value else {
        return Err(DecodeError::InvalidValue {
            field: "(record)",
            reason: format!("expected a record, found {}", kind(&value)),
        });
    };
    let mut f = Fields(fields);
    let outcome_symbol = match f.required("outcome")? {
        Value::Enum(_, s) | Value::String(s) => s,
        other => return Err(unexpected("outcome", "an enum symbol", &other)),
    };
    Ok(RegistrationNotifyOutcome {
        event_id: f.string("eventId")?,
        reference_merchant_id: f.string("referenceMerchantId")?,
        registration_request_id: f.string("registrationRequestId")?,
        decision: f.decision("decision")?,
        outcome: NotifyOutcome::from_symbol(&outcome_symbol).ok_or(DecodeError::InvalidValue {
            field: "outcome",
            reason: format!("unknown symbol {outcome_symbol:?}"),
        })?,
        result_status: f.optional_string("resultStatus")?,
        result_code: f.optional_string("resultCode")?,
        result_message: f.optional_string("resultMessage")?,
        http_status: match f.take("httpStatus") {
            None | Some(Value::Null) => None,
            Some(Value::Int(n)) => Some(n),
            Some(other) => return Err(unexpected("httpStatus", "null or an int", &other)),
        },
        attempts: match f.required("attempts")? {
            Value::Int(n) => n,
            other => return Err(unexpected("attempts", "an int", &other)),
        },
        first_attempt_at_ms: match f.take("firstAttemptAt") {
            None | Some(Value::Null) => None,
            Some(Value::Long(n) | Value::TimestampMillis(n)) => Some(n),
            Some(other) => return Err(unexpected("firstAttemptAt", "null or a long", &other)),
        },
        completed_at_ms: f.long("completedAt")?,
        source_topic: f.string("sourceTopic")?,
        source_partition: match f.required("sourcePartition")? {
            Value::Int(n) => n,
            other => return Err(unexpected("sourcePartition", "an int", &other)),
        },
        source_offset: f.long("sourceOffset")?,
        error: f.optional_string("error")?,
    })
}

fn decision_value(decision: Decision) -> Value {
    let index = match decision {
        Decision::Approved => 0,
        Decision::Rejected => 1,
    };
    Value::Enum(index, decision.as_str().into())
}

fn notify_outcome_value(outcome: NotifyOutcome) -> Value {
    let index = match outcome {
        NotifyOutcome::Notified => 0,
        NotifyOutcome::Rejected => 1,
        NotifyOutcome::DeadLettered => 2,
    };
    Value::Enum(index, outcome.as_str().into())
}

/// A `["null", T]` union value.
fn optional(value: Option<Value>) -> Value {
    match value {
        None => Value::Union(0, Box::new(Value::Null)),
        Some(v) => Value::Union(1, Box::new(v)),
    }
}

fn optional_string(value: Option<&str>) -> Value {
    optional(value.map(|s| Value::String(s.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: Vec<(&str, Value)>) -> Value {
        Value::Record(fields.into_iter().map(|(n, v)| (n.to_owned(), v)).collect())
    }

    fn minimal() -> Vec<(&'static str, Value)> {
        vec![
            ("eventId", Value::String("e1".into())),
            ("occurredAt", Value::Long(5)),
            ("referenceMerchantId", Value::String("M1".into())),
            ("registrationRequestId", Value::String("R1".into())),
            ("decision", Value::Enum(0, "APPROVED".into())),
        ]
    }

    #[test]
    fn accepts_every_shape_apache_avro_produces() {
        let id = uuid::Uuid::from_u128(0x0b5f7c1e_6c8a_4a57_9d62_4a1d1f0e9a11);
        let mut fields = minimal();
        fields[0].1 = Value::Uuid(id);
        fields[1].1 = Value::TimestampMillis(7);
        fields.push((
            "rejectionReason",
            Value::Union(1, Box::new(Value::String("no".into()))),
        ));
        fields.push(("pspId", Value::Null));
        let event = event_from_value(record(fields)).expect("decodes");
        assert_eq!(event.event_id, "0b5f7c1e-6c8a-4a57-9d62-4a1d1f0e9a11");
        assert_eq!(event.occurred_at_ms, 7);
        assert_eq!(event.decision, Decision::Approved);
        assert_eq!(event.rejection_reason.as_deref(), Some("no"));
        assert_eq!(event.psp_id, None);
    }

    #[test]
    fn absent_optional_fields_are_none() {
        let event = event_from_value(record(minimal())).expect("decodes");
        assert_eq!((event.rejection_reason, event.psp_id), (None, None));
    }

    #[test]
    fn wrong_shapes_are_typed_errors_naming_the_field() {
        let mut fields = minimal();
        fields[2].1 = Value::Int(3);
        assert!(matches!(
            event_from_value(record(fields)),
            Err(DecodeError::InvalidValue {
                field: "referenceMerchantId",
                ..
            })
        ));
        let mut fields = minimal();
        fields[4].1 = Value::Enum(2, "PENDING".into());
        assert!(matches!(
            event_from_value(record(fields)),
            Err(DecodeError::InvalidValue {
                field: "decision",
                ..
            })
        ));
        let mut fields = minimal();
        fields.remove(1);
        assert!(matches!(
            event_from_value(record(fields)),
            Err(DecodeError::InvalidValue {
                field: "occurredAt",
                ..
            })
        ));
        assert!(matches!(
            event_from_value(Value::Null),
            Err(DecodeError::InvalidValue {
                field: "(record)",
                ..
            })
        ));
    }

    #[test]
    fn event_to_value_refuses_a_non_uuid_event_id() {
        let event = RegistrationDecided {
            event_id: "not-a-uuid".into(),
            occurred_at_ms: 0,
            reference_merchant_id: "M".into(),
            registration_request_id: "R".into(),
            decision: Decision::Approved,
            rejection_reason: None,
            psp_id: None,
        };
        assert!(matches!(
            event_to_value(&event),
            Err(EncodeError::InvalidField {
                field: "eventId",
                ..
            })
        ));
    }
}
