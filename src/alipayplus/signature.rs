//! The Alipay+ `RSA256` signature scheme (SPEC 2.1, 2.2) as pure functions: the signed content,
//! the `Signature` header in both directions, and the request time format.
//!
//! Nothing here does I/O or decides what an answer means; [`super::classify`] does that with the
//! [`SignatureCheck`] computed here. Signing is CPU-heavy: async code calls [`sign_request`]
//! through [`crate::keys::run_rsa`]; [`verify_signature`] is cheap enough to call in place.

use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::keys::{KeyError, PrivateSigningKey, PublicVerifyingKey};

/// The only algorithm name Alipay+ uses for RSASSA-PKCS1-v1_5 / SHA-256.
pub(crate) const SIGNATURE_ALGORITHM: &str = "RSA256";

/// Whether an answer's signature could be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureCheck {
    /// Signed by the configured Alipay+ key over exactly this answer.
    Verified,
    /// No usable `Signature` (or `Response-Time`) header.
    Missing,
    /// A signature was present but malformed, over other content, or by another key.
    Invalid,
    /// Verification is switched off by configuration, or there was no answer to check.
    NotChecked,
}

impl SignatureCheck {
    /// True when a success answer may be believed: verified, or verification deliberately off.
    pub(crate) fn is_trusted(self) -> bool {
        matches!(self, SignatureCheck::Verified | SignatureCheck::NotChecked)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SignatureCheck::Verified => "verified",
            SignatureCheck::Missing => "missing",
            SignatureCheck::Invalid => "invalid",
            SignatureCheck::NotChecked => "not_checked",
        }
    }
}

/// `POST <path>\n<client-id>.<time>.<body>`, byte for byte.
pub fn signed_content(path: &str, client_id: &str, time: &str, body: &[u8]) -> Vec<u8> {
    let mut content =
        Vec::with_capacity(6 + path.len() + client_id.len() + time.len() + body.len() + 2);
    content.extend_from_slice(b"POST ");
    content.extend_from_slice(path.as_bytes());
    content.push(b'\n');
    content.extend_from_slice(client_id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(time.as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// Standard base64 with padding, then URL-form-encoded. Base64 only has `+`, `/` and `=` outside
/// `[A-Za-z0-9]`, so those three are all a form encoder would change.
pub fn encode_signature(raw: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
    let mut out = String::with_capacity(b64.len() + 32);
    for c in b64.chars() {
        match c {
            '+' => out.push_str("%2B"),
            '/' => out.push_str("%2F"),
            '=' => out.push_str("%3D"),
            c => out.push(c),
        }
    }
    out
}

/// `algorithm=RSA256,keyVersion=<n>,signature=<encoded>`.
pub fn signature_header_value(key_version: u32, encoded_signature: &str) -> String {
    format!(
        "algorithm={SIGNATURE_ALGORITHM},keyVersion={key_version},signature={encoded_signature}"
    )
}

/// The current time as Alipay+ wants it: RFC 3339, whole seconds, explicit `+00:00` offset.
pub(crate) fn request_time_now() -> String {
    format_request_time(Utc::now())
}

pub(crate) fn format_request_time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// A signed request, as `regnotify sign` prints it and the client sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    /// Exactly the bytes that were signed.
    pub signed_content: Vec<u8>,
    /// The `Signature` header value.
    pub signature_header: String,
}

/// Signs one request (SPEC 2.1). Deterministic: the same key and inputs give the same header.
pub fn sign_request(
    key: &PrivateSigningKey,
    path: &str,
    client_id: &str,
    request_time: &str,
    body: &[u8],
    key_version: u32,
) -> Result<SignedRequest, KeyError> {
    let signed_content = signed_content(path, client_id, request_time, body);
    let raw = key.sign(&signed_content)?;
    Ok(SignedRequest {
        signature_header: signature_header_value(key_version, &encode_signature(&raw)),
        signed_content,
    })
}

/// A parsed `Signature` header. The signature is still in its transmitted (URL-encoded) form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SignatureHeader {
    pub(crate) algorithm: String,
    pub(crate) key_version: Option<String>,
    pub(crate) signature: String,
}

/// Why a `Signature` header could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SignatureHeaderError {
    #[error("signature header has no signature= part")]
    NoSignature,
    #[error("signature header names algorithm {0:?}, expected RSA256")]
    UnsupportedAlgorithm(String),
    #[error("signature is not valid percent-encoding")]
    BadPercentEncoding,
    #[error("signature is not valid base64")]
    BadBase64,
}

/// Parses `algorithm=RSA256,keyVersion=1,signature=…`, with or without spaces after the commas;
/// parameter names are case-insensitive and unknown parameters are ignored. A missing `algorithm`
/// is taken as RSA256 (the only one Alipay+ uses); a different one is an error.
pub(crate) fn parse_signature_header(value: &str) -> Result<SignatureHeader, SignatureHeaderError> {
    let mut algorithm = None;
    let mut key_version = None;
    let mut signature = None;
    for part in value.split(',') {
        let Some((name, val)) = part.trim().split_once('=') else {
            continue;
        };
        let val = val.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "algorithm" => algorithm = Some(val.to_owned()),
            "keyversion" => key_version = Some(val.to_owned()),
            "signature" => signature = Some(val.to_owned()),
            _ => {}
        }
    }
    let signature = signature
        .filter(|s| !s.is_empty())
        .ok_or(SignatureHeaderError::NoSignature)?;
    let algorithm = algorithm.unwrap_or_else(|| SIGNATURE_ALGORITHM.to_owned());
    if !algorithm.eq_ignore_ascii_case(SIGNATURE_ALGORITHM) {
        return Err(SignatureHeaderError::UnsupportedAlgorithm(algorithm));
    }
    Ok(SignatureHeader {
        algorithm,
        key_version,
        signature,
    })
}

/// URL-decodes then base64-decodes a transmitted signature. `+` is kept as `+`, so a signature
/// sent without URL encoding (raw base64) decodes too.
pub(crate) fn decode_signature(encoded: &str) -> Result<Vec<u8>, SignatureHeaderError> {
    let bytes = encoded.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(SignatureHeaderError::BadPercentEncoding)?;
            decoded.push(hex);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    base64::engine::general_purpose::STANDARD
        .decode(&decoded)
        .map_err(|_| SignatureHeaderError::BadBase64)
}

/// Verifies a signature header over `POST <path>\n<client-id>.<time>.<body>` (SPEC 2.2).
/// `None` header → [`SignatureCheck::Missing`]; anything unusable or wrong → `Invalid`.
pub fn verify_signature(
    key: &PublicVerifyingKey,
    path: &str,
    client_id: &str,
    time: &str,
    body: &[u8],
    signature_header: Option<&str>,
) -> SignatureCheck {
    let Some(header) = signature_header else {
        return SignatureCheck::Missing;
    };
    let Ok(parsed) = parse_signature_header(header) else {
        return SignatureCheck::Invalid;
    };
    let Ok(raw) = decode_signature(&parsed.signature) else {
        return SignatureCheck::Invalid;
    };
    if key.verify(&signed_content(path, client_id, time, body), &raw) {
        SignatureCheck::Verified
    } else {
        SignatureCheck::Invalid
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::alipayplus::request::NOTIFY_REGISTRATION_STATUS_PATH as PATH;

    const PKCS8: &str = include_str!("../../tests/fixtures/mpp_private_key.pem");
    const PKCS1: &str = include_str!("../../tests/fixtures/mpp_private_key_pkcs1.pem");
    const PUBLIC: &str = include_str!("../../tests/fixtures/mpp_public_key.pem");
    const OTHER_PUBLIC: &str = include_str!("../../tests/fixtures/other_public_key.pem");

    const CLIENT_ID: &str = "SANDBOX_5YBZ1N2YDS8C07394";
    const REQUEST_TIME: &str = "2026-11-25T21:40:05+08:00";
    const BODY: &str = r#"{"referenceMerchantId":"M-1","registrationRequestId":"R-1","registrationResult":{"registrationStatus":"APPROVED"}}"#;

    /// Pinned once; the same value comes out of `openssl dgst -sha256 -sign` (then base64 and
    /// form encoding) and of Alipay's own SDK (tests/external_signature). PKCS#1 v1.5 is
    /// deterministic, so it never changes.
    const EXPECTED_HEADER: &str = concat!(
        "algorithm=RSA256,keyVersion=1,signature=",
        "Aqg%2BM8%2FyFmvZ0y3wfevP4LOmawHGNThTRboBhVbgjLRyKZBKClXEGS%2F1CeBMWjAZIgYpDDBcorQ2soFIHg2aSTy9r9t6ATZlS8%2FtNlHm7KhA%2FArhuYBrVmrnU51GfLnIM%2FDyBaI%2BDi0Lk3FQf9p79%2BZTfP%2BLucfRLnGnpDKJVhKHuem%2FvyEra0AHt0Tj%2FuA7ixSEOo6VSwqpOd9WrvjbasDfy07F6%2F%2FieFhWpS%2BjfSTJtUOneSeMyGm9fmV5zUYLvJzYlP25uOrkpacVUMzjQOY007DSyNKbT4OYtqKFfhpOGqHzcINJU%2FJMU2%2BP%2BNhVPJoEIeOCoMICuaAXx7xwaw%3D%3D"
    );

    fn key() -> PrivateSigningKey {
        PrivateSigningKey::from_pem(PKCS8, "fixture").unwrap()
    }

    #[test]
    fn signed_content_is_exactly_the_spec_layout() {
        assert_eq!(
            signed_content(PATH, CLIENT_ID, REQUEST_TIME, BODY.as_bytes()),
            format!("POST {PATH}\n{CLIENT_ID}.{REQUEST_TIME}.{BODY}").into_bytes()
        );
    }

    #[test]
    fn signature_header_is_pinned_for_fixed_key_and_inputs() {
        let signed =
            sign_request(&key(), PATH, CLIENT_ID, REQUEST_TIME, BODY.as_bytes(), 1).unwrap();
        assert_eq!(signed.signature_header, EXPECTED_HEADER);
        let pkcs1 = PrivateSigningKey::from_pem(PKCS1, "fixture").unwrap();
        let again =
            sign_request(&pkcs1, PATH, CLIENT_ID, REQUEST_TIME, BODY.as_bytes(), 1).unwrap();
        assert_eq!(again, signed);
    }

    #[test]
    fn pinned_signature_exercises_every_encoded_character() {
        let encoded = EXPECTED_HEADER.split("signature=").nth(1).unwrap();
        for escape in ["%2B", "%2F", "%3D"] {
            assert!(encoded.contains(escape), "{escape} missing from {encoded}");
        }
        assert!(!encoded.contains(['+', '/', '=']));
        let raw = decode_signature(encoded).unwrap();
        assert_eq!(raw.len(), 256);
        assert_eq!(encode_signature(&raw), encoded);
    }

    #[test]
    fn encoding_replaces_exactly_plus_slash_and_equals() {
        // 0xfb 0xff 0xbf → "+/+/"; one byte → two "=" of padding.
        assert_eq!(encode_signature(&[0xfb, 0xff, 0xbf]), "%2B%2F%2B%2F");
        assert_eq!(encode_signature(&[0xff]), "%2Fw%3D%3D");
        assert_eq!(decode_signature("%2Fw%3D%3D").unwrap(), vec![0xff]);
        assert_eq!(decode_signature("/w==").unwrap(), vec![0xff]);
        assert_eq!(decode_signature("%2fw%3d%3d").unwrap(), vec![0xff]);
        assert_eq!(
            decode_signature("%2").unwrap_err(),
            SignatureHeaderError::BadPercentEncoding
        );
        assert_eq!(
            decode_signature("%zz").unwrap_err(),
            SignatureHeaderError::BadPercentEncoding
        );
        assert_eq!(
            decode_signature("@@@").unwrap_err(),
            SignatureHeaderError::BadBase64
        );
    }

    #[test]
    fn header_parses_with_and_without_spaces_and_any_case() {
        for value in [
            "algorithm=RSA256,keyVersion=1,signature=abc%3D",
            "algorithm=RSA256, keyVersion=1, signature=abc%3D",
            "ALGORITHM=rsa256 ,  KEYVERSION=1,\tSignature=abc%3D",
            "signature=abc%3D,keyVersion=1,algorithm=RSA256",
            "keyVersion=1,signature=abc%3D,extra=x",
        ] {
            let parsed = parse_signature_header(value).unwrap();
            assert_eq!(parsed.signature, "abc%3D", "{value}");
            assert_eq!(parsed.key_version.as_deref(), Some("1"), "{value}");
        }
        assert_eq!(
            parse_signature_header("algorithm=RSA256,keyVersion=1").unwrap_err(),
            SignatureHeaderError::NoSignature
        );
        assert_eq!(
            parse_signature_header("algorithm=RSA256,signature=").unwrap_err(),
            SignatureHeaderError::NoSignature
        );
        assert!(matches!(
            parse_signature_header("algorithm=RSA512,signature=abc").unwrap_err(),
            SignatureHeaderError::UnsupportedAlgorithm(_)
        ));
        assert_eq!(
            parse_signature_header("").unwrap_err(),
            SignatureHeaderError::NoSignature
        );
    }

    #[test]
    fn verification_accepts_both_header_forms_and_rejects_any_change() {
        let public = PublicVerifyingKey::from_pem(PUBLIC, "fixture").unwrap();
        let signed =
            sign_request(&key(), PATH, CLIENT_ID, REQUEST_TIME, BODY.as_bytes(), 1).unwrap();
        let spaced = signed.signature_header.replace(',', ", ");
        let body = BODY.as_bytes();
        for header in [&signed.signature_header, &spaced] {
            let check = |path: &str, id: &str, time: &str, body: &[u8]| {
                verify_signature(&public, path, id, time, body, Some(header))
            };
            assert_eq!(
                check(PATH, CLIENT_ID, REQUEST_TIME, body),
                SignatureCheck::Verified
            );
            assert_eq!(
                check("/other", CLIENT_ID, REQUEST_TIME, body),
                SignatureCheck::Invalid
            );
            assert_eq!(
                check(PATH, "X", REQUEST_TIME, body),
                SignatureCheck::Invalid
            );
            assert_eq!(
                check(PATH, CLIENT_ID, "2026-11-25T21:40:06+08:00", body),
                SignatureCheck::Invalid
            );
            assert_eq!(
                check(PATH, CLIENT_ID, REQUEST_TIME, b"{}"),
                SignatureCheck::Invalid
            );
        }
        let other = PublicVerifyingKey::from_pem(OTHER_PUBLIC, "other").unwrap();
        assert_eq!(
            verify_signature(
                &other,
                PATH,
                CLIENT_ID,
                REQUEST_TIME,
                body,
                Some(&signed.signature_header)
            ),
            SignatureCheck::Invalid
        );
        assert_eq!(
            verify_signature(&public, PATH, CLIENT_ID, REQUEST_TIME, body, None),
            SignatureCheck::Missing
        );
        assert_eq!(
            verify_signature(
                &public,
                PATH,
                CLIENT_ID,
                REQUEST_TIME,
                body,
                Some("signature=%%%")
            ),
            SignatureCheck::Invalid
        );
    }

    #[test]
    fn request_time_is_rfc3339_with_explicit_offset() {
        let at = DateTime::parse_from_rfc3339("2026-11-25T13:40:05.123Z").unwrap();
        assert_eq!(
            format_request_time(at.with_timezone(&Utc)),
            "2026-11-25T13:40:05+00:00"
        );
        let now = request_time_now();
        assert!(DateTime::parse_from_rfc3339(&now).is_ok(), "{now}");
        assert!(now.ends_with("+00:00"), "{now}");
    }
}
