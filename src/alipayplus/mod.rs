//! Everything about talking to Alipay+: mapping an event to the `notifyRegistrationStatus` body
//! ([`request`]), the RSA256 signature scheme ([`signature`]), what each answer means
//! ([`classify`]), and the HTTP client that puts them together ([`client`]).
//!
//! This module owns one HTTP call at a time; it never retries, never touches Kafka and never logs
//! key material or signatures.

pub mod classify;
pub mod client;
pub mod request;
pub mod signature;

use std::path::Path;

use anyhow::Context;

pub use classify::{ApiResult, ResultClass, ResultOverrides, classify};
pub use client::{AlipayPlusClient, AttemptError, ClientBuildError, ClientOptions, NotifyAttempt};
pub use request::{NOTIFY_REGISTRATION_STATUS_PATH, notify_request_body};
pub use signature::{SignatureCheck, SignedRequest, sign_request};

use crate::keys::PrivateSigningKey;

/// `regnotify sign`: signs `body` exactly as the client would and returns the signed content and
/// `Signature` header, so an operator can compare them with what Alipay+ rejected.
///
/// `request_time` defaults to now; when given it must be RFC 3339 with an explicit offset.
/// `path` defaults to the `notifyRegistrationStatus` path.
pub fn sign_command(
    private_key_file: &Path,
    client_id: &str,
    path: Option<&str>,
    request_time: Option<&str>,
    body: &[u8],
    key_version: u32,
) -> anyhow::Result<SignedRequest> {
    let key = PrivateSigningKey::from_file(private_key_file)?;
    let request_time = match request_time {
        Some(time) => {
            chrono::DateTime::parse_from_rfc3339(time).with_context(|| {
                format!("request time {time:?} is not RFC 3339 with an explicit offset")
            })?;
            time.to_owned()
        }
        None => signature::request_time_now(),
    };
    let path = path.unwrap_or(NOTIFY_REGISTRATION_STATUS_PATH);
    anyhow::ensure!(path.starts_with('/'), "path {path:?} must start with /");
    Ok(sign_request(
        &key,
        path,
        client_id,
        &request_time,
        body,
        key_version,
    )?)
}
