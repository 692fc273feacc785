//! The `notifyRegistrationStatus` request body (SPEC 2): a pure mapping from a
//! [`RegistrationDecided`] event to the exact JSON bytes that are both signed and sent.
//!
//! Every scalar is a JSON string and optional fields are left out, never sent as `""`. The
//! mapping does not validate: callers check [`RegistrationDecided::validate`] first and never send
//! an event that breaks a field rule.

use serde_json::{Map, Value};

use crate::event::{Decision, RegistrationDecided};

/// The API path, also the `<path>` of the signed content.
pub const NOTIFY_REGISTRATION_STATUS_PATH: &str = "/aps/api/v1/merchants/notifyRegistrationStatus";

/// The request body as compact UTF-8 JSON, fields in a fixed order (`referenceMerchantId`,
/// `registrationRequestId`, `registrationResult` {`registrationStatus`, `rejectionReason`}).
pub(crate) fn notify_request_body(event: &RegistrationDecided) -> Vec<u8> {
    let mut result = Map::new();
    result.insert(
        "registrationStatus".into(),
        Value::String(event.decision.as_str().into()),
    );
    let reason = match event.decision {
        Decision::Rejected => event.rejection_reason.as_deref().filter(|r| !r.is_empty()),
        Decision::Approved => None,
    };
    if let Some(reason) = reason {
        result.insert("rejectionReason".into(), Value::String(reason.into()));
    }
    let mut body = Map::new();
    body.insert(
        "referenceMerchantId".into(),
        Value::String(event.reference_merchant_id.clone()),
    );
    body.insert(
        "registrationRequestId".into(),
        Value::String(event.registration_request_id.clone()),
    );
    body.insert("registrationResult".into(), Value::Object(result));
    // `Value`'s `Display` cannot fail, unlike `to_vec`; the keys above are inserted in the order
    // they sort, so the output is the same whether or not serde_json's `preserve_order` is on.
    Value::Object(body).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(decision: Decision, reason: Option<&str>) -> RegistrationDecided {
        RegistrationDecided {
            event_id: "e1".into(),
            occurred_at_ms: 0,
            reference_merchant_id: "M-1".into(),
            registration_request_id: "R-1".into(),
            decision,
            rejection_reason: reason.map(Into::into),
            psp_id: Some("psp".into()),
        }
    }

    fn body(e: &RegistrationDecided) -> String {
        String::from_utf8_lossy(&notify_request_body(e)).into_owned()
    }

    #[test]
    fn approved_never_carries_a_reason() {
        for reason in [None, Some("ignored")] {
            assert_eq!(
                body(&event(Decision::Approved, reason)),
                r#"{"referenceMerchantId":"M-1","registrationRequestId":"R-1","registrationResult":{"registrationStatus":"APPROVED"}}"#
            );
        }
    }

    #[test]
    fn rejected_carries_a_present_non_empty_reason_only() {
        assert_eq!(
            body(&event(Decision::Rejected, Some("bad \"docs\" ü"))),
            r#"{"referenceMerchantId":"M-1","registrationRequestId":"R-1","registrationResult":{"registrationStatus":"REJECTED","rejectionReason":"bad \"docs\" ü"}}"#
        );
        for reason in [None, Some("")] {
            assert_eq!(
                body(&event(Decision::Rejected, reason)),
                r#"{"referenceMerchantId":"M-1","registrationRequestId":"R-1","registrationResult":{"registrationStatus":"REJECTED"}}"#
            );
        }
    }
}
