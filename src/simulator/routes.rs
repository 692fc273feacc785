//! The simulator's HTTP routes: `notifyRegistrationStatus` (the long request handler: outage,
//! gate, latency, client id, media type, signature, request time, body, then the fault rules),
//! the fallback `NO_INTERFACE_DEF`, `GET /stats` and the admin routes.
//!
//! The handler is one long function on purpose: it reads top to bottom in the order Alipay+
//! checks a request. It never signs (`signing` does) and keeps no state of its own (`state`
//! does).

use std::sync::{Arc, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::faults::{DroppedConnection, OutageMode};
use super::rules::{Fault, SimulatorRules};
use super::signing::{Answer, Signing, answer, result_body, signed_response};
use super::state::{Shared, lock};
use super::stats::Arrival;
use super::validate;
use crate::alipayplus::signature::parse_signature_header;

/// One open call in the stats, from arrival until the answer is sent or the client goes away
/// (axum then drops the handler, and this with it).
struct OpenCall {
    shared: Arc<Shared>,
    merchant_id: Option<String>,
}

impl OpenCall {
    fn open(shared: &Arc<Shared>, body: &[u8]) -> OpenCall {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Merchant {
            reference_merchant_id: String,
        }
        let merchant_id = serde_json::from_slice::<Merchant>(body)
            .ok()
            .map(|m| m.reference_merchant_id);
        lock(&shared.stats).call_opened(merchant_id.as_deref());
        OpenCall {
            shared: Arc::clone(shared),
            merchant_id,
        }
    }
}

impl Drop for OpenCall {
    fn drop(&mut self) {
        lock(&self.shared.stats).call_closed(self.merchant_id.as_deref());
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(super) async fn notify(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_time = header(&headers, "request-time").unwrap_or_default();
    // Read once: for the counts by the second it names, and checked below.
    let stamped = chrono::DateTime::parse_from_rfc3339(request_time).ok();
    lock(&shared.stats).call(stamped);
    match shared.outage_now() {
        Some(OutageMode::Unavailable) => {
            shared.record("OUTAGE_503");
            return (StatusCode::SERVICE_UNAVAILABLE, "simulated outage").into_response();
        }
        Some(_) => {
            shared.record("OUTAGE_DROPPED");
            let body =
                axum::body::Body::from_stream(tokio_util::io::ReaderStream::new(DroppedConnection));
            return (StatusCode::OK, body).into_response();
        }
        None => {}
    }
    let _open = OpenCall::open(&shared, &body);
    if !shared.pass_gate().await {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let latency = shared
        .behaviour
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .latency;
    if !latency.is_zero() && !shared.sleep(latency).await {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let path = uri.path();
    let client_id = header(&headers, "client-id").unwrap_or_default();
    let reply = |status, code, message, signing| Answer {
        path,
        client_id,
        status,
        code,
        message,
        signing,
    };
    if client_id.is_empty() {
        let a = reply(
            "F",
            "INVALID_CLIENT",
            "Client-Id header is missing",
            Signing::Unsigned,
        );
        return answer(&shared, a).await;
    }
    if !shared.accepts(client_id) {
        let a = reply(
            "F",
            "INVALID_CLIENT",
            "client id is not accepted",
            Signing::Proper,
        );
        return answer(&shared, a).await;
    }
    if !header(&headers, "content-type")
        .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("application/json"))
    {
        let a = reply(
            "F",
            "MEDIA_TYPE_NOT_ACCEPTABLE",
            "expected application/json",
            Signing::Proper,
        );
        return answer(&shared, a).await;
    }
    let mut signed_by = None;
    if shared.check_signatures {
        // Verifying costs about 12 µs: less than handing it to another thread, and it must not
        // queue behind the signatures waiting in `run_rsa`.
        signed_by = shared.signed_by(
            path,
            client_id,
            request_time,
            &body,
            header(&headers, "signature"),
        );
        if signed_by.is_none() {
            lock(&shared.stats).signature_failure();
            // Alipay+ leaves the signature off this answer: it cannot trust who it talks to.
            let a = reply(
                "F",
                "INVALID_SIGNATURE",
                "signature verification failed",
                Signing::Unsigned,
            );
            return answer(&shared, a).await;
        }
    }
    if stamped.is_none() {
        let a = reply(
            "F",
            "PARAM_ILLEGAL",
            "Request-Time is not RFC 3339",
            Signing::Proper,
        );
        return answer(&shared, a).await;
    }
    let request = match validate::validate_request_body(&body) {
        Ok(request) => request,
        Err(message) => {
            let a = reply("F", "PARAM_ILLEGAL", &message, Signing::Proper);
            return answer(&shared, a).await;
        }
    };
    lock(&shared.stats).arrival(Arrival {
        reference_merchant_id: request.reference_merchant_id.clone(),
        registration_request_id: request.registration_request_id.clone(),
        registration_status: request.registration_status.clone(),
        client_id: client_id.to_owned(),
        key_version: header(&headers, "signature")
            .and_then(|value| parse_signature_header(value).ok())
            .and_then(|parsed| parsed.key_version),
        signed_by,
    });
    let faults = {
        let behaviour = shared
            .behaviour
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        lock(&shared.counters).select(
            &behaviour.rules,
            &request.reference_merchant_id,
            &request.registration_request_id,
            rand::random::<f64>,
        )
    };
    for fault in faults {
        match fault {
            Fault::Latency { delay } => {
                if !shared.sleep(delay).await {
                    return StatusCode::SERVICE_UNAVAILABLE.into_response();
                }
            }
            Fault::Result {
                status,
                code,
                message,
            } => {
                let message = message.unwrap_or_else(|| format!("simulated {code}"));
                let a = reply(&status, &code, &message, Signing::Proper);
                return answer(&shared, a).await;
            }
            Fault::HttpStatus { status } => {
                shared.record(&format!("HTTP_{status}"));
                let status =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return (status, "simulated failure").into_response();
            }
            Fault::Hang { duration } => {
                shared.record("HANG");
                shared.sleep(duration).await;
                let body = result_body("U", "UNKNOWN_EXCEPTION", "simulated hang");
                return signed_response(&shared, path, client_id, body, Signing::Proper).await;
            }
            Fault::BadSignature => {
                shared.record("BAD_SIGNATURE");
                let body = result_body("S", "SUCCESS", "success");
                return signed_response(&shared, path, client_id, body, Signing::Wrong).await;
            }
            Fault::UnsignedSuccess => {
                shared.record("UNSIGNED_SUCCESS");
                let body = result_body("S", "SUCCESS", "success");
                return signed_response(&shared, path, client_id, body, Signing::Unsigned).await;
            }
            Fault::Garbled => {
                shared.record("GARBLED");
                let body = b"<html><body>502 upstream garbled</body></html>".to_vec();
                return signed_response(&shared, path, client_id, body, Signing::Proper).await;
            }
        }
    }
    answer(&shared, reply("S", "SUCCESS", "success", Signing::Proper)).await
}

pub(super) async fn no_interface(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let client_id = header(&headers, "client-id").unwrap_or_default();
    let a = Answer {
        path: uri.path(),
        client_id,
        status: "F",
        code: "NO_INTERFACE_DEF",
        message: "no such interface",
        signing: Signing::Unsigned,
    };
    answer(&shared, a).await
}

pub(super) async fn stats_route(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(lock(&shared.stats).snapshot()).into_response()
}

/// `?seconds=N` for a scripted refusal or outage; `mode=drop|503|mixed` for an outage.
#[derive(Debug, serde::Deserialize)]
pub(super) struct ForAWhile {
    seconds: Option<f64>,
    mode: Option<String>,
}

impl ForAWhile {
    /// `seconds` as a duration; `Err` with the text of a 400 answer when it is not one.
    fn duration(&self) -> Result<Option<Duration>, &'static str> {
        self.seconds
            .map(|seconds| {
                Duration::try_from_secs_f64(seconds)
                    .map_err(|_| "seconds: a number of seconds, 0 or more")
            })
            .transpose()
    }
}

pub(super) async fn refuse_route(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
    axum::extract::Query(query): axum::extract::Query<ForAWhile>,
) -> Response {
    match query.duration() {
        Err(error) => (StatusCode::BAD_REQUEST, error).into_response(),
        Ok(Some(duration)) => {
            shared.refuse_for(&id, duration);
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(None) => {
            tracing::info!(client_id = %id, "simulator refuses client");
            lock(&shared.refused).insert(id);
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

/// `POST /admin/outage?seconds=N&mode=drop|503|mixed` (mode: mixed unless given).
pub(super) async fn outage_route(
    State(shared): State<Arc<Shared>>,
    axum::extract::Query(query): axum::extract::Query<ForAWhile>,
) -> Response {
    let duration = match query.duration() {
        Err(error) => return (StatusCode::BAD_REQUEST, error).into_response(),
        Ok(Some(duration)) => duration,
        Ok(None) => {
            return (StatusCode::BAD_REQUEST, "seconds is required").into_response();
        }
    };
    let mode = match query.mode.as_deref().unwrap_or("mixed").parse() {
        Ok(mode) => mode,
        Err(error) => return (StatusCode::BAD_REQUEST, error).into_response(),
    };
    shared.start_outage(duration, mode);
    StatusCode::NO_CONTENT.into_response()
}

pub(super) async fn accept_route(
    State(shared): State<Arc<Shared>>,
    UrlPath(id): UrlPath<String>,
) -> StatusCode {
    tracing::info!(client_id = %id, "simulator accepts client");
    lock(&shared.refused).remove(&id);
    StatusCode::NO_CONTENT
}

pub(super) async fn rules_route(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let text = String::from_utf8_lossy(&body);
    match SimulatorRules::from_toml(&text, "request body") {
        Ok(rules) => {
            shared.set_rules(rules);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}
