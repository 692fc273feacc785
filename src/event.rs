//! The domain records of the contract (SPEC section 3) as plain Rust types, and the field rules
//! of SPEC section 2 that an event must satisfy before anything is sent to Alipay+.
//!
//! This module owns no I/O and no encoding: [`crate::codec`] turns bytes into these types and back.

use std::fmt;

/// Longest `referenceMerchantId` / `registrationRequestId` Alipay+ accepts, in characters.
pub(crate) const MAX_ID_CHARS: usize = 64;
/// Longest `rejectionReason` we send, in characters (our own bound; Alipay+ documents none).
pub(crate) const MAX_REJECTION_REASON_CHARS: usize = 256;

/// The MPP's decision on a merchant registration (Avro enum `RegistrationDecision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Approved,
    Rejected,
}

impl Decision {
    /// The symbol used both in Avro and in the Alipay+ request body.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Decision::Approved => "APPROVED",
            Decision::Rejected => "REJECTED",
        }
    }

    pub(crate) fn from_symbol(symbol: &str) -> Option<Self> {
        match symbol {
            "APPROVED" => Some(Decision::Approved),
            "REJECTED" => Some(Decision::Rejected),
            _ => None,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `MerchantRegistrationDecided` input event (SPEC 3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationDecided {
    pub event_id: String,
    /// When the MPP decided, in milliseconds since the Unix epoch.
    pub occurred_at_ms: i64,
    pub reference_merchant_id: String,
    pub registration_request_id: String,
    pub decision: Decision,
    pub rejection_reason: Option<String>,
    pub psp_id: Option<String>,
}

/// Why a decoded event must not be sent to Alipay+ (dead-lettered as `INVALID_EVENT`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InvalidEvent {
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field} has {chars} characters, more than the {max} allowed")]
    TooLong {
        field: &'static str,
        chars: usize,
        max: usize,
    },
}

impl RegistrationDecided {
    /// Checks the field rules of SPEC section 2. Lengths are counted in characters, not bytes.
    pub(crate) fn validate(&self) -> Result<(), InvalidEvent> {
        check_id("referenceMerchantId", &self.reference_merchant_id)?;
        check_id("registrationRequestId", &self.registration_request_id)?;
        if let Some(reason) = &self.rejection_reason {
            let chars = reason.chars().count();
            if chars > MAX_REJECTION_REASON_CHARS {
                return Err(InvalidEvent::TooLong {
                    field: "rejectionReason",
                    chars,
                    max: MAX_REJECTION_REASON_CHARS,
                });
            }
        }
        Ok(())
    }
}

fn check_id(field: &'static str, value: &str) -> Result<(), InvalidEvent> {
    let chars = value.chars().count();
    if chars == 0 {
        return Err(InvalidEvent::Empty { field });
    }
    if chars > MAX_ID_CHARS {
        return Err(InvalidEvent::TooLong {
            field,
            chars,
            max: MAX_ID_CHARS,
        });
    }
    Ok(())
}

/// What finally became of an event (Avro enum `NotifyOutcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotifyOutcome {
    Notified,
    Rejected,
    DeadLettered,
}

impl NotifyOutcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            NotifyOutcome::Notified => "NOTIFIED",
            NotifyOutcome::Rejected => "REJECTED",
            NotifyOutcome::DeadLettered => "DEAD_LETTERED",
        }
    }

    pub(crate) fn from_symbol(symbol: &str) -> Option<Self> {
        match symbol {
            "NOTIFIED" => Some(NotifyOutcome::Notified),
            "REJECTED" => Some(NotifyOutcome::Rejected),
            "DEAD_LETTERED" => Some(NotifyOutcome::DeadLettered),
            _ => None,
        }
    }
}

impl fmt::Display for NotifyOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `RegistrationNotifyOutcome` record (SPEC 3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationNotifyOutcome {
    pub event_id: String,
    pub reference_merchant_id: String,
    pub registration_request_id: String,
    pub decision: Decision,
    pub outcome: NotifyOutcome,
    pub result_status: Option<String>,
    pub result_code: Option<String>,
    pub result_message: Option<String>,
    pub http_status: Option<i32>,
    /// HTTP calls made for this event.
    pub attempts: i32,
    pub first_attempt_at_ms: Option<i64>,
    pub completed_at_ms: i64,
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    /// Why the event was dead-lettered.
    pub error: Option<String>,
}

/// Why an input ended on the dead-letter topic (`dlq.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    DecodeError,
    InvalidEvent,
    RetriesExhausted,
    RequestRefused,
}

impl DeadLetterReason {
    pub(crate) const ALL: [DeadLetterReason; 4] = [
        DeadLetterReason::DecodeError,
        DeadLetterReason::InvalidEvent,
        DeadLetterReason::RetriesExhausted,
        DeadLetterReason::RequestRefused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterReason::DecodeError => "DECODE_ERROR",
            DeadLetterReason::InvalidEvent => "INVALID_EVENT",
            DeadLetterReason::RetriesExhausted => "RETRIES_EXHAUSTED",
            DeadLetterReason::RequestRefused => "REQUEST_REFUSED",
        }
    }

    pub(crate) fn from_symbol(symbol: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|reason| reason.as_str() == symbol)
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> RegistrationDecided {
        RegistrationDecided {
            event_id: "0b5f7c1e-6c8a-4a57-9d62-4a1d1f0e9a11".into(),
            occurred_at_ms: 1_764_000_000_000,
            reference_merchant_id: "M".repeat(MAX_ID_CHARS),
            registration_request_id: "R1".into(),
            decision: Decision::Rejected,
            rejection_reason: Some("é".repeat(MAX_REJECTION_REASON_CHARS)),
            psp_id: None,
        }
    }

    #[test]
    fn limits_are_inclusive_and_counted_in_characters() {
        assert_eq!(event().validate(), Ok(()));
    }

    #[test]
    fn empty_and_over_long_fields_are_invalid() {
        let mut e = event();
        e.registration_request_id.clear();
        assert_eq!(
            e.validate(),
            Err(InvalidEvent::Empty {
                field: "registrationRequestId"
            })
        );
        let mut e = event();
        e.reference_merchant_id.push('x');
        assert!(matches!(
            e.validate(),
            Err(InvalidEvent::TooLong {
                field: "referenceMerchantId",
                chars: 65,
                ..
            })
        ));
        let mut e = event();
        e.rejection_reason = Some("a".repeat(MAX_REJECTION_REASON_CHARS + 1));
        assert!(matches!(
            e.validate(),
            Err(InvalidEvent::TooLong {
                field: "rejectionReason",
                ..
            })
        ));
    }

    #[test]
    fn symbols_round_trip() {
        for d in [Decision::Approved, Decision::Rejected] {
            assert_eq!(Decision::from_symbol(d.as_str()), Some(d));
        }
        for o in [
            NotifyOutcome::Notified,
            NotifyOutcome::Rejected,
            NotifyOutcome::DeadLettered,
        ] {
            assert_eq!(NotifyOutcome::from_symbol(o.as_str()), Some(o));
        }
    }
}
