//! The HTTP client for `notifyRegistrationStatus`: one signed POST per call, with explicit
//! timeouts, pooled connections, bounded response bodies and headers, response signature
//! verification, and the classification of what came back.
//!
//! It makes exactly one HTTP call per [`AlipayPlusClient::notify_registration_status`] and never
//! retries: retries, backoff and ordering belong to the pipeline. Signing runs through
//! [`run_rsa`] (tokio's blocking pool, one operation per core at a time), never on the async
//! worker threads; verifying an answer is cheap enough to run in place.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};

use super::classify::{
    ApiResult, Exchange, ResultClass, ResultOverrides, TransportFailure, classify,
    parse_response_body,
};
use super::credentials::{ClientKeys, KeySources, Signer};
use super::endpoint::{ca_bundle, endpoint_url};
use super::options::{ClientBuildError, ClientOptions};
use super::request::notify_request_body;
use super::signature::{SignatureCheck, request_time_now, sign_request, verify_signature};
use crate::config::{AlipayPlusSettings, MppClientSettings};
use crate::event::RegistrationDecided;
use crate::keys::{PrivateSigningKey, PublicVerifyingKey, run_rsa};

/// Longest `Client-Id` / `Response-Time` / `Signature` response header value considered.
pub(crate) const MAX_SIGNATURE_HEADER_BYTES: usize = 2048;

/// Why an attempt got no usable answer. Never contains key material or signatures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttemptError {
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("transport error: {0}")]
    Transport(String),
    #[error("response body exceeds {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("response body is not an alipay+ result")]
    UnparseableBody,
    #[error("cannot sign the request: {0}")]
    Signing(String),
}

/// Everything known about one HTTP attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyAttempt {
    pub class: ResultClass,
    pub http_status: Option<u16>,
    /// Alipay+'s `result`, when the body could be parsed.
    pub result: Option<ApiResult>,
    pub signature: SignatureCheck,
    /// From just before sending to the end of the response body (signing excluded).
    pub latency: Duration,
    /// The `Request-Time` header sent.
    pub(crate) request_time: String,
    pub error: Option<AttemptError>,
}

impl NotifyAttempt {
    /// What the metrics and logs report of this attempt.
    pub(crate) fn report(&self) -> crate::observe::AttemptReport<'_> {
        crate::observe::AttemptReport {
            class: self.class.as_str(),
            latency: self.latency,
            result_status: self.result.as_ref().map(|r| r.result_status.as_str()),
            result_code: self.result.as_ref().map(|r| r.result_code.as_str()),
            http_status: self.http_status,
            signature_trusted: self.signature.is_trusted(),
            signature: self.signature.as_str(),
        }
    }
}

/// A signing, verifying Alipay+ client. Cheap to share behind an `Arc`; clones of the inner
/// `reqwest::Client` share one connection pool.
pub struct AlipayPlusClient {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    /// The request URI path, as signed.
    path: String,
    client_id: String,
    client_id_header: HeaderValue,
    /// Signing key and version, Alipay+'s key(s): swapped by the key watcher while calls run.
    keys: Arc<ClientKeys>,
    verify_response_signature: bool,
    overrides: ResultOverrides,
    max_response_bytes: usize,
    limiter: Option<DefaultDirectRateLimiter>,
}

impl fmt::Debug for AlipayPlusClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlipayPlusClient")
            .field("endpoint", &self.endpoint.as_str())
            .field("client_id", &self.client_id)
            .field("key_version", &self.keys.key_version())
            .field("verify_response_signature", &self.verify_response_signature)
            .field("rate_limited", &self.limiter.is_some())
            .finish_non_exhaustive()
    }
}

impl AlipayPlusClient {
    /// Builds a client. `alipayplus_public_key` is required when
    /// `options.verify_response_signature` is on, and ignored otherwise.
    pub fn new(
        options: ClientOptions,
        signing_key: PrivateSigningKey,
        alipayplus_public_key: Option<PublicVerifyingKey>,
    ) -> Result<Self, ClientBuildError> {
        let keys = ClientKeys::new(
            Signer {
                key: signing_key,
                key_version: options.key_version,
            },
            alipayplus_public_key.filter(|_| options.verify_response_signature),
        );
        Self::with_keys(options, Arc::new(keys))
    }

    /// Builds a client around keys shared with a key watcher. The key version is the signer's;
    /// `options.key_version` is not used.
    pub(crate) fn with_keys(
        options: ClientOptions,
        keys: Arc<ClientKeys>,
    ) -> Result<Self, ClientBuildError> {
        let endpoint = endpoint_url(&options.base_url, options.allow_insecure_http)?;
        let client_id_header = HeaderValue::from_str(&options.client_id)
            .ok()
            .filter(|_| !options.client_id.is_empty())
            .ok_or(ClientBuildError::ClientId)?;
        if options.verify_response_signature && !keys.verifies_answers() {
            return Err(ClientBuildError::MissingPublicKey);
        }
        let extra_roots = match &options.ca_bundle_file {
            Some(path) => ca_bundle(path)?,
            None => Vec::new(),
        };
        let http = reqwest::Client::builder()
            .tls_certs_merge(extra_roots)
            .connect_timeout(options.connect_timeout)
            .timeout(options.request_timeout)
            // A redirect would change the signed path; a 3xx is classified as refused instead.
            .redirect(reqwest::redirect::Policy::none())
            .https_only(!options.allow_insecure_http)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("regnotify/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientBuildError::Http(error_chain(&e)))?;
        let limiter = NonZeroU32::new(options.max_requests_per_second)
            .map(|rate| RateLimiter::direct(Quota::per_second(rate)));
        Ok(AlipayPlusClient {
            http,
            path: endpoint.path().to_owned(),
            endpoint,
            client_id: options.client_id,
            client_id_header,
            keys,
            verify_response_signature: options.verify_response_signature,
            overrides: options.result_overrides,
            max_response_bytes: options.max_response_bytes,
            limiter,
        })
    }

    /// Builds the top-level `[alipayplus]` client from settings, loading the keys they name,
    /// and warns about settings that weaken security (an exposed key file, plain http,
    /// unverified answers).
    pub fn from_settings(settings: &AlipayPlusSettings) -> Result<Self, ClientBuildError> {
        let sources = KeySources::top_level(settings);
        if sources.private_key.is_none() {
            return Err(ClientBuildError::MissingPrivateKey);
        }
        if settings.verify_response_signature && settings.alipayplus_public_key_file.is_none() {
            return Err(ClientBuildError::MissingPublicKey);
        }
        if settings.allow_insecure_http {
            crate::observe::insecure_http_allowed(&settings.base_url);
        }
        if !settings.verify_response_signature {
            crate::observe::response_verification_off();
        }
        Self::from_sources(ClientOptions::from_settings(settings), &sources)
    }

    /// Builds the client of `[alipayplus.clients.<psp_id>]`.
    pub(crate) fn for_mpp(
        settings: &AlipayPlusSettings,
        psp_id: &str,
        client: &MppClientSettings,
    ) -> Result<Self, ClientBuildError> {
        let sources = KeySources::for_client(settings, psp_id, client);
        let options = ClientOptions::for_client(settings, client);
        if client.base_url.is_some() && settings.allow_insecure_http {
            crate::observe::insecure_http_allowed(&options.base_url);
        }
        Self::from_sources(options, &sources)
    }

    /// Loads the keys `sources` name (warning about a private key file others can read).
    pub(crate) fn from_sources(
        options: ClientOptions,
        sources: &KeySources,
    ) -> Result<Self, ClientBuildError> {
        if let Some(super::credentials::PrivateKeySource::File(path)) = &sources.private_key
            && let Some(mode) = crate::keys::private_key_exposure(path)
        {
            crate::observe::private_key_file_exposed(
                &format!("{}.private_key_file", sources.prefix),
                path,
                mode,
            );
        }
        let keys = sources.load()?;
        Self::with_keys(options, Arc::new(keys))
    }

    /// The keys this client signs and verifies with (the key watcher replaces them).
    pub(crate) fn keys(&self) -> &Arc<ClientKeys> {
        &self.keys
    }

    /// The full URL called.
    pub(crate) fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// Sends one signed `notifyRegistrationStatus` for `event` and classifies the answer.
    /// Never retries and never fails: every problem is described in the returned attempt.
    pub async fn notify_registration_status(&self, event: &RegistrationDecided) -> NotifyAttempt {
        self.post_signed(Bytes::from(notify_request_body(event)))
            .await
    }

    /// Signs and posts an exact body. Public for tools and tests that need to send bodies the
    /// mapping would never produce.
    pub async fn post_signed(&self, body: Bytes) -> NotifyAttempt {
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
        let request_time = request_time_now();
        let signature_header = match self.sign(&request_time, body.clone()).await {
            Ok(header) => header,
            Err(error) => {
                // A key that cannot sign is a set-up problem, not the event's.
                return NotifyAttempt {
                    class: ResultClass::Refused,
                    http_status: None,
                    result: None,
                    signature: SignatureCheck::NotChecked,
                    latency: Duration::ZERO,
                    request_time,
                    error: Some(error),
                };
            }
        };
        let started = Instant::now();
        let mut attempt = self.exchange(&request_time, signature_header, body).await;
        attempt.latency = started.elapsed();
        attempt
    }

    async fn sign(&self, request_time: &str, body: Bytes) -> Result<HeaderValue, AttemptError> {
        // One read: the key and its version are always used together.
        let signer = self.keys.signer();
        let path = self.path.clone();
        let client_id = self.client_id.clone();
        let request_time = request_time.to_owned();
        let signed = run_rsa(move || {
            let started = Instant::now();
            let signed = sign_request(
                &signer.key,
                &path,
                &client_id,
                &request_time,
                &body,
                signer.key_version,
            );
            crate::observe::signing_time(started.elapsed());
            signed
        })
        .await
        .map_err(|e| AttemptError::Signing(format!("signing task failed: {e}")))?
        .map_err(|e| AttemptError::Signing(e.to_string()))?;
        HeaderValue::from_str(&signed.signature_header).map_err(|_| {
            AttemptError::Signing("signature header is not a valid header value".into())
        })
    }

    async fn exchange(
        &self,
        request_time: &str,
        signature_header: HeaderValue,
        body: Bytes,
    ) -> NotifyAttempt {
        let mut attempt = NotifyAttempt {
            class: ResultClass::Unknown,
            http_status: None,
            result: None,
            signature: SignatureCheck::NotChecked,
            latency: Duration::ZERO,
            request_time: request_time.to_owned(),
            error: None,
        };
        let sent = self
            .http
            .post(self.endpoint.clone())
            .header(CONTENT_TYPE, "application/json; charset=UTF-8")
            .header("Client-Id", self.client_id_header.clone())
            .header("Request-Time", request_time)
            .header("Signature", signature_header)
            .body(body)
            .send()
            .await;
        let mut response = match sent {
            Ok(response) => response,
            Err(error) => {
                let (failure, error) = transport_error(&error);
                attempt.class = classify(Exchange::NoAnswer(failure), &self.overrides);
                attempt.error = Some(error);
                return attempt;
            }
        };
        let http_status = response.status().as_u16();
        attempt.http_status = Some(http_status);
        let headers = SignedHeaders::from_response(response.headers());
        let response_body = match read_limited(&mut response, self.max_response_bytes).await {
            Ok(bytes) => bytes,
            Err((failure, error)) => {
                attempt.class = classify(Exchange::NoAnswer(failure), &self.overrides);
                attempt.error = Some(error);
                return attempt;
            }
        };
        attempt.result = parse_response_body(&response_body);
        if attempt.result.is_none() && (200..300).contains(&http_status) {
            attempt.error = Some(AttemptError::UnparseableBody);
        }
        attempt.signature = self.check_signature(headers, &response_body);
        attempt.class = classify(
            Exchange::Answered {
                http_status,
                result: attempt.result.as_ref(),
                signature: attempt.signature,
            },
            &self.overrides,
        );
        attempt
    }

    /// Runs in place on the async worker: verifying costs about 12 µs (RSA-2048), less than
    /// handing it to another thread, and an answer already received must not queue behind the
    /// signatures waiting in [`run_rsa`] for other requests.
    fn check_signature(&self, headers: SignedHeaders, body: &[u8]) -> SignatureCheck {
        if !self.verify_response_signature {
            return SignatureCheck::NotChecked;
        }
        let (signature, response_time, client_id) = match headers {
            SignedHeaders::Missing => return SignatureCheck::Missing,
            SignedHeaders::Unusable => return SignatureCheck::Invalid,
            SignedHeaders::Present {
                signature,
                response_time,
                client_id,
            } => (signature, response_time, client_id),
        };
        // Alipay+ echoes our client id. An answer for another client, however well signed, is
        // not an answer to this request; a left-off header stands for ours.
        if client_id.is_some_and(|echoed| echoed != self.client_id) {
            return SignatureCheck::Invalid;
        }
        // During a rotation of Alipay+'s key, the previous key verifies until its overlap ends.
        self.keys
            .verify_answer(Instant::now(), SignatureCheck::Verified, |key| {
                verify_signature(
                    key,
                    &self.path,
                    &self.client_id,
                    &response_time,
                    body,
                    Some(&signature),
                )
            })
            .unwrap_or(SignatureCheck::Invalid)
    }
}

/// The response headers that signature verification needs, bounded in length.
enum SignedHeaders {
    Missing,
    Unusable,
    Present {
        signature: String,
        response_time: String,
        client_id: Option<String>,
    },
}

impl SignedHeaders {
    fn from_response(headers: &HeaderMap) -> Self {
        let get = |name: &str| -> Result<Option<String>, ()> {
            let Some(value) = headers.get(name) else {
                return Ok(None);
            };
            if value.len() > MAX_SIGNATURE_HEADER_BYTES {
                return Err(());
            }
            value.to_str().map(|v| Some(v.to_owned())).map_err(|_| ())
        };
        match (get("signature"), get("response-time"), get("client-id")) {
            (Ok(Some(signature)), Ok(Some(response_time)), Ok(client_id)) => {
                SignedHeaders::Present {
                    signature,
                    response_time,
                    client_id,
                }
            }
            (Ok(None), _, _) | (_, Ok(None), _) => SignedHeaders::Missing,
            _ => SignedHeaders::Unusable,
        }
    }
}

/// Reads the body in chunks and stops as soon as it passes `limit`.
async fn read_limited(
    response: &mut reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, (TransportFailure, AttemptError)> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > limit {
                    return Err((
                        TransportFailure::Other,
                        AttemptError::BodyTooLarge { limit },
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(error) => return Err(transport_error(&error)),
        }
    }
}

fn transport_error(error: &reqwest::Error) -> (TransportFailure, AttemptError) {
    let message = error_chain(error);
    if error.is_timeout() {
        (TransportFailure::Timeout, AttemptError::Timeout(message))
    } else if error.is_connect() {
        (TransportFailure::Connect, AttemptError::Connect(message))
    } else {
        (TransportFailure::Other, AttemptError::Transport(message))
    }
}

/// `error: cause: cause`, since reqwest's own `Display` hides the interesting part.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}
