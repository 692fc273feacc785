//! Answers and their signatures: the `result` body, and the response headers signed with the
//! simulator's answer key (properly, over other content, or not at all), with a small cache so
//! identical answers within a second cost one RSA signature.
//!
//! It signs through `run_rsa` and never decides which answer a call gets (`routes` does).

use std::sync::{Arc, PoisonError};

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::state::{Shared, lock};
use crate::alipayplus::signature::{
    encode_signature, format_request_time, signature_header_value, signed_content,
};
use crate::keys::run_rsa;

/// Bound on remembered answer signatures; the map is cleared when it is reached.
const MAX_CACHED_SIGNATURES: usize = 256;

/// How an answer is signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Signing {
    Proper,
    /// Well-formed but over other content.
    Wrong,
    Unsigned,
}

pub(super) struct Answer<'a> {
    pub(super) path: &'a str,
    pub(super) client_id: &'a str,
    pub(super) status: &'a str,
    pub(super) code: &'a str,
    pub(super) message: &'a str,
    pub(super) signing: Signing,
}

pub(super) fn result_body(status: &str, code: &str, message: &str) -> Vec<u8> {
    serde_json::json!({
        "result": { "resultCode": code, "resultStatus": status, "resultMessage": message }
    })
    .to_string()
    .into_bytes()
}

pub(super) async fn answer(shared: &Shared, answer: Answer<'_>) -> Response {
    shared.record(answer.code);
    let body = result_body(answer.status, answer.code, answer.message);
    signed_response(shared, answer.path, answer.client_id, body, answer.signing).await
}

pub(super) async fn signed_response(
    shared: &Shared,
    path: &str,
    client_id: &str,
    body: Vec<u8>,
    signing: Signing,
) -> Response {
    let response_time = format_request_time(chrono::Utc::now());
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    if let Ok(value) = HeaderValue::from_str(client_id) {
        headers.insert("client-id", value);
    }
    if let Ok(value) = HeaderValue::from_str(&response_time) {
        headers.insert("response-time", value);
    }
    if signing != Signing::Unsigned {
        let mut content = signed_content(path, client_id, &response_time, &body);
        if signing == Signing::Wrong {
            content.push(b' ');
        }
        let (key, key_version) = {
            let answer_key = shared
                .answer_key
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            (Arc::clone(&answer_key.0), answer_key.1)
        };
        let cached = lock(&shared.signatures).get(&content).cloned();
        let signed = match cached {
            Some(raw) => Some(raw),
            None => {
                let signing = content.clone();
                let raw = run_rsa(move || key.sign(&signing))
                    .await
                    .ok()
                    .and_then(Result::ok);
                if let Some(raw) = &raw {
                    let mut cache = lock(&shared.signatures);
                    if cache.len() >= MAX_CACHED_SIGNATURES {
                        cache.clear();
                    }
                    cache.insert(content, raw.clone());
                }
                raw
            }
        };
        if let Some(raw) = signed {
            let value = signature_header_value(key_version, &encode_signature(&raw));
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert("signature", value);
            }
        }
    }
    (StatusCode::OK, headers, body).into_response()
}
