//! What one `notifyRegistrationStatus` exchange means (SPEC section 4), as a pure function of what
//! happened on the wire: transport failure, HTTP status, the parsed `result`, and whether the
//! answer's signature could be trusted — with per-code overrides from configuration.
//!
//! The pipeline acts on the [`ResultClass`] alone; it never re-reads codes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::signature::SignatureCheck;
use crate::config::ResultPolicy;

/// Result codes that mean our set-up is wrong (credentials, key, endpoint), not the event.
pub(crate) const REFUSED_CODES: &[&str] = &[
    "INVALID_SIGNATURE",
    "KEY_NOT_FOUND",
    "INVALID_CLIENT",
    "ACCESS_DENIED",
    "NO_INTERFACE_DEF",
    "METHOD_NOT_SUPPORTED",
    "MEDIA_TYPE_NOT_ACCEPTABLE",
];

/// The code that asks us to slow down.
pub(crate) const THROTTLED_CODE: &str = "REQUEST_TRAFFIC_EXCEED_LIMIT";

/// The class of one attempt, which decides what the pipeline does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResultClass {
    /// Alipay+ took the notification: outcome NOTIFIED.
    Success,
    /// Alipay+ refused this event for good: outcome REJECTED, no retry.
    Rejected,
    /// Alipay+ asks us to slow down: retry with backoff, lower the send rate.
    Throttled,
    /// We do not know whether Alipay+ took it: retry with the same parameters.
    Unknown,
    /// Our own set-up is wrong: dead-letter as REQUEST_REFUSED, no retry.
    Refused,
}

impl ResultClass {
    pub(crate) const ALL: [ResultClass; 5] = [
        ResultClass::Success,
        ResultClass::Rejected,
        ResultClass::Throttled,
        ResultClass::Unknown,
        ResultClass::Refused,
    ];

    /// Whether the pipeline should try again (within its retry budget).
    pub(crate) fn is_retryable(self) -> bool {
        matches!(self, ResultClass::Throttled | ResultClass::Unknown)
    }

    /// A fixed, low-cardinality label for metrics and logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ResultClass::Success => "success",
            ResultClass::Rejected => "rejected",
            ResultClass::Throttled => "throttled",
            ResultClass::Unknown => "unknown",
            ResultClass::Refused => "refused",
        }
    }
}

impl From<ResultPolicy> for ResultClass {
    fn from(policy: ResultPolicy) -> Self {
        match policy {
            ResultPolicy::Success => ResultClass::Success,
            ResultPolicy::Rejected => ResultClass::Rejected,
            ResultPolicy::Retry => ResultClass::Unknown,
            ResultPolicy::Refused => ResultClass::Refused,
        }
    }
}

/// The `result` object of an Alipay+ answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiResult {
    pub(crate) result_status: String,
    pub result_code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) result_message: Option<String>,
}

#[derive(Deserialize)]
struct ResponseEnvelope {
    result: ApiResult,
}

/// Parses `{"result":{…}}`; `None` when the body is not such a JSON object.
pub(crate) fn parse_response_body(body: &[u8]) -> Option<ApiResult> {
    serde_json::from_slice::<ResponseEnvelope>(body)
        .ok()
        .map(|envelope| envelope.result)
}

/// Why no HTTP answer was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TransportFailure {
    Timeout,
    Connect,
    /// Anything else between sending and a complete body (reset, protocol error, body too large).
    Other,
}

/// What happened in one exchange, as far as classification cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exchange<'a> {
    /// No (complete) answer.
    NoAnswer(TransportFailure),
    /// An HTTP answer; `result` is `None` when the body could not be parsed.
    Answered {
        http_status: u16,
        result: Option<&'a ApiResult>,
        signature: SignatureCheck,
    },
}

/// Per-code overrides (`[alipayplus.result_policy]`), already turned into classes.
pub(crate) type ResultOverrides = BTreeMap<String, ResultClass>;

/// Classifies one exchange (SPEC section 4).
///
/// Overrides apply to any parsed result code. Whatever the override, a success can never come
/// from an answer whose signature is not trusted: that is [`ResultClass::Unknown`].
pub(crate) fn classify(exchange: Exchange<'_>, overrides: &ResultOverrides) -> ResultClass {
    let (http_status, result, signature) = match exchange {
        Exchange::NoAnswer(_) => return ResultClass::Unknown,
        Exchange::Answered {
            http_status,
            result,
            signature,
        } => (http_status, result, signature),
    };
    if http_status == 408 || http_status == 429 || http_status >= 500 {
        return ResultClass::Unknown;
    }
    if !(200..300).contains(&http_status) {
        // Other 4xx, and 1xx/3xx (redirects are not followed: the signed path would change).
        return ResultClass::Refused;
    }
    let Some(result) = result else {
        return ResultClass::Unknown;
    };
    let class = overrides
        .get(&result.result_code)
        .copied()
        .unwrap_or_else(|| default_class(result));
    if class == ResultClass::Success && !signature.is_trusted() {
        return ResultClass::Unknown;
    }
    class
}

fn default_class(result: &ApiResult) -> ResultClass {
    match result.result_status.as_str() {
        "S" => ResultClass::Success,
        "F" if REFUSED_CODES.contains(&result.result_code.as_str()) => ResultClass::Refused,
        "F" if result.result_code == THROTTLED_CODE => ResultClass::Throttled,
        "F" => ResultClass::Rejected,
        // "U", and any status Alipay+ does not document: we cannot know what happened.
        _ => ResultClass::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ResultClass::*;
    use SignatureCheck::*;

    fn result(status: &str, code: &str) -> ApiResult {
        ApiResult {
            result_status: status.into(),
            result_code: code.into(),
            result_message: None,
        }
    }

    fn answered(status: &str, code: &str, signature: SignatureCheck) -> ResultClass {
        let r = result(status, code);
        classify(
            Exchange::Answered {
                http_status: 200,
                result: Some(&r),
                signature,
            },
            &ResultOverrides::new(),
        )
    }

    #[test]
    fn result_codes_follow_the_spec_table() {
        let rows: &[(&str, &str, ResultClass)] = &[
            ("S", "SUCCESS", Success),
            ("F", "ABNORMAL_REGISTRATION_STATUS", Rejected),
            ("F", "PROCESS_FAIL", Rejected),
            ("F", "PARAM_ILLEGAL", Rejected),
            ("F", "SOME_NEW_CODE", Rejected),
            ("F", "REQUEST_TRAFFIC_EXCEED_LIMIT", Throttled),
            ("U", "UNKNOWN_EXCEPTION", Unknown),
            ("U", "SUCCESS", Unknown),
            ("U", "PROCESS_FAIL", Unknown),
            ("F", "INVALID_SIGNATURE", Refused),
            ("F", "KEY_NOT_FOUND", Refused),
            ("F", "INVALID_CLIENT", Refused),
            ("F", "ACCESS_DENIED", Refused),
            ("F", "NO_INTERFACE_DEF", Refused),
            ("F", "METHOD_NOT_SUPPORTED", Refused),
            ("F", "MEDIA_TYPE_NOT_ACCEPTABLE", Refused),
            ("X", "SUCCESS", Unknown),
            ("", "", Unknown),
        ];
        for &(status, code, expected) in rows {
            for signature in [Verified, NotChecked] {
                assert_eq!(
                    answered(status, code, signature),
                    expected,
                    "{status}/{code}/{signature:?}"
                );
            }
        }
    }

    #[test]
    fn untrusted_success_is_unknown_but_failures_are_acted_on() {
        assert_eq!(answered("S", "SUCCESS", Missing), Unknown);
        assert_eq!(answered("S", "SUCCESS", Invalid), Unknown);
        for signature in [Missing, Invalid] {
            assert_eq!(answered("F", "INVALID_SIGNATURE", signature), Refused);
            assert_eq!(answered("F", "PROCESS_FAIL", signature), Rejected);
            assert_eq!(answered("F", THROTTLED_CODE, signature), Throttled);
            assert_eq!(answered("U", "UNKNOWN_EXCEPTION", signature), Unknown);
        }
    }

    #[test]
    fn transport_failures_and_http_statuses_follow_the_spec_table() {
        let none = ResultOverrides::new();
        for failure in [
            TransportFailure::Timeout,
            TransportFailure::Connect,
            TransportFailure::Other,
        ] {
            assert_eq!(classify(Exchange::NoAnswer(failure), &none), Unknown);
        }
        let success = result("S", "SUCCESS");
        let rows: &[(u16, ResultClass)] = &[
            (408, Unknown),
            (429, Unknown),
            (500, Unknown),
            (502, Unknown),
            (503, Unknown),
            (504, Unknown),
            (400, Refused),
            (401, Refused),
            (403, Refused),
            (404, Refused),
            (405, Refused),
            (415, Refused),
            (301, Refused),
        ];
        for &(http_status, expected) in rows {
            for parsed in [None, Some(&success)] {
                let exchange = Exchange::Answered {
                    http_status,
                    result: parsed,
                    signature: Verified,
                };
                assert_eq!(classify(exchange, &none), expected, "{http_status}");
            }
        }
        let garbled = Exchange::Answered {
            http_status: 200,
            result: None,
            signature: Verified,
        };
        assert_eq!(classify(garbled, &none), Unknown);
    }

    #[test]
    fn overrides_change_the_class_of_a_code_but_never_trust_an_unsigned_success() {
        let overrides: ResultOverrides = [
            (
                "PROCESS_FAIL".to_owned(),
                ResultClass::from(ResultPolicy::Retry),
            ),
            ("ACCESS_DENIED".to_owned(), ResultPolicy::Rejected.into()),
            (
                "ABNORMAL_REGISTRATION_STATUS".to_owned(),
                ResultPolicy::Success.into(),
            ),
            ("SOME_CODE".to_owned(), ResultPolicy::Refused.into()),
        ]
        .into_iter()
        .collect();
        let with = |status: &str, code: &str, signature| {
            let r = result(status, code);
            classify(
                Exchange::Answered {
                    http_status: 200,
                    result: Some(&r),
                    signature,
                },
                &overrides,
            )
        };
        assert_eq!(with("F", "PROCESS_FAIL", Verified), Unknown);
        assert_eq!(with("F", "ACCESS_DENIED", Verified), Rejected);
        assert_eq!(with("F", "ABNORMAL_REGISTRATION_STATUS", Verified), Success);
        assert_eq!(with("F", "ABNORMAL_REGISTRATION_STATUS", Missing), Unknown);
        assert_eq!(with("F", "SOME_CODE", Missing), Refused);
        assert_eq!(with("F", "PARAM_ILLEGAL", Verified), Rejected);
    }

    #[test]
    fn retry_classes_are_throttled_and_unknown() {
        let retryable: Vec<_> = [Success, Rejected, Throttled, Unknown, Refused]
            .into_iter()
            .filter(|c| c.is_retryable())
            .collect();
        assert_eq!(retryable, vec![Throttled, Unknown]);
    }

    #[test]
    fn response_bodies_parse_or_are_none() {
        assert_eq!(
            parse_response_body(
                br#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"ok"}}"#
            ),
            Some(ApiResult {
                result_status: "S".into(),
                result_code: "SUCCESS".into(),
                result_message: Some("ok".into())
            })
        );
        assert_eq!(
            parse_response_body(
                br#"{"result":{"resultCode":"SUCCESS","resultStatus":"S"},"extra":1}"#
            )
            .map(|r| r.result_message),
            Some(None)
        );
        for garbled in [
            &b"<html>"[..],
            b"",
            b"{}",
            br#"{"result":{"resultCode":1,"resultStatus":"S"}}"#,
        ] {
            assert_eq!(parse_response_body(garbled), None);
        }
    }
}
