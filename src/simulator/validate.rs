//! The simulator's strict reading of a `notifyRegistrationStatus` body (SPEC 2): anything our
//! client should never send is answered `PARAM_ILLEGAL`, so tests catch mapping mistakes.

use serde_json::Value;

use crate::event::{MAX_ID_CHARS, MAX_REJECTION_REASON_CHARS};

/// The identifying fields of a well-formed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ValidRequest {
    pub(crate) reference_merchant_id: String,
    pub(crate) registration_request_id: String,
    pub(crate) registration_status: String,
}

/// Checks the body; `Err` is the `resultMessage` of a `PARAM_ILLEGAL` answer.
pub(crate) fn validate_request_body(body: &[u8]) -> Result<ValidRequest, String> {
    let value: Value = serde_json::from_slice(body).map_err(|_| "body is not JSON".to_owned())?;
    let object = value.as_object().ok_or("body is not a JSON object")?;
    only_fields(
        object,
        &[
            "referenceMerchantId",
            "registrationRequestId",
            "registrationResult",
        ],
        "",
    )?;
    let merchant = id_field(object, "referenceMerchantId")?;
    let request = id_field(object, "registrationRequestId")?;
    let result = object
        .get("registrationResult")
        .ok_or("registrationResult is missing")?
        .as_object()
        .ok_or("registrationResult is not an object")?;
    only_fields(
        result,
        &["registrationStatus", "rejectionReason"],
        "registrationResult.",
    )?;
    let status = string_field(
        result,
        "registrationStatus",
        "registrationResult.registrationStatus",
    )?
    .ok_or("registrationResult.registrationStatus is missing")?;
    if status != "APPROVED" && status != "REJECTED" {
        return Err(format!(
            "registrationResult.registrationStatus {status:?} is not APPROVED or REJECTED"
        ));
    }
    if let Some(reason) = string_field(
        result,
        "rejectionReason",
        "registrationResult.rejectionReason",
    )? {
        if status != "REJECTED" {
            return Err("registrationResult.rejectionReason is only allowed with REJECTED".into());
        }
        let chars = reason.chars().count();
        if chars == 0 || chars > MAX_REJECTION_REASON_CHARS {
            return Err(format!(
                "registrationResult.rejectionReason must have 1 to {MAX_REJECTION_REASON_CHARS} characters"
            ));
        }
    }
    Ok(ValidRequest {
        reference_merchant_id: merchant.to_owned(),
        registration_request_id: request.to_owned(),
        registration_status: status.to_owned(),
    })
}

fn only_fields(
    object: &serde_json::Map<String, Value>,
    allowed: &[&str],
    prefix: &str,
) -> Result<(), String> {
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(format!("unknown field {prefix}{unknown}")),
        None => Ok(()),
    }
}

fn string_field<'a>(
    object: &'a serde_json::Map<String, Value>,
    name: &str,
    label: &str,
) -> Result<Option<&'a str>, String> {
    match object.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{label} is not a string")),
    }
}

fn id_field<'a>(object: &'a serde_json::Map<String, Value>, name: &str) -> Result<&'a str, String> {
    let value = string_field(object, name, name)?.ok_or_else(|| format!("{name} is missing"))?;
    let chars = value.chars().count();
    if chars == 0 || chars > MAX_ID_CHARS {
        return Err(format!("{name} must have 1 to {MAX_ID_CHARS} characters"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_the_mapping_produces() {
        let ok = validate_request_body(
            br#"{"referenceMerchantId":"M","registrationRequestId":"R","registrationResult":{"registrationStatus":"REJECTED","rejectionReason":"x"}}"#,
        );
        assert_eq!(
            ok,
            Ok(ValidRequest {
                reference_merchant_id: "M".into(),
                registration_request_id: "R".into(),
                registration_status: "REJECTED".into()
            })
        );
    }

    #[test]
    fn rejects_every_rule_break() {
        let long = "x".repeat(65);
        let cases = [
            "nope".to_owned(),
            "[]".to_owned(),
            r#"{"registrationRequestId":"R","registrationResult":{"registrationStatus":"APPROVED"}}"#.to_owned(),
            r#"{"referenceMerchantId":"","registrationRequestId":"R","registrationResult":{"registrationStatus":"APPROVED"}}"#.to_owned(),
            format!(r#"{{"referenceMerchantId":"{long}","registrationRequestId":"R","registrationResult":{{"registrationStatus":"APPROVED"}}}}"#),
            r#"{"referenceMerchantId":1,"registrationRequestId":"R","registrationResult":{"registrationStatus":"APPROVED"}}"#.to_owned(),
            r#"{"referenceMerchantId":"M","registrationRequestId":"R"}"#.to_owned(),
            r#"{"referenceMerchantId":"M","registrationRequestId":"R","registrationResult":{"registrationStatus":"MAYBE"}}"#.to_owned(),
            r#"{"referenceMerchantId":"M","registrationRequestId":"R","registrationResult":{"registrationStatus":"APPROVED","rejectionReason":"x"}}"#.to_owned(),
            r#"{"referenceMerchantId":"M","registrationRequestId":"R","registrationResult":{"registrationStatus":"REJECTED","rejectionReason":""}}"#.to_owned(),
            r#"{"referenceMerchantId":"M","registrationRequestId":"R","registrationResult":{"registrationStatus":"REJECTED","rejectionReason":null}}"#.to_owned(),
            r#"{"referenceMerchantId":"M","registrationRequestId":"R","registrationResult":{"registrationStatus":"APPROVED"},"extra":"x"}"#.to_owned(),
        ];
        for case in cases {
            assert!(validate_request_body(case.as_bytes()).is_err(), "{case}");
        }
    }
}
