//! A hostile Alipay+: a raw TCP server that answers the real client's `notifyRegistrationStatus`
//! with everything a broken or malicious peer might send — resets, silence, a trickle, a body far
//! larger than any answer, bodies that are not answers, success answers whose signature is missing,
//! by another key, over other content or for another client, and a redirect to another host.
//! None may ever be taken as success, and one stuck exchange must not hold up another.
//!
//! The server picks its behaviour by the request's `referenceMerchantId`. Timeouts are short
//! (1 s connect, 2 s request), so the whole file runs in a few seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use regnotify::alipayplus::signature::{encode_signature, signature_header_value, signed_content};
use regnotify::alipayplus::{
    AlipayPlusClient, AttemptError, ClientOptions, NOTIFY_REGISTRATION_STATUS_PATH, NotifyAttempt,
    ResultClass, SignatureCheck,
};
use regnotify::config::AlipayPlusSettings;
use regnotify::event::{Decision, RegistrationDecided};
use regnotify::keys::{PrivateSigningKey, PublicVerifyingKey};

const CLIENT_ID: &str = "HOSTILE_TEST_CLIENT";
const RESPONSE_TIME: &str = "2026-11-25T21:40:06+08:00";
const SUCCESS: &str =
    r#"{"result":{"resultCode":"SUCCESS","resultStatus":"S","resultMessage":"success"}}"#;

fn key(name: &str) -> PrivateSigningKey {
    PrivateSigningKey::from_file(&Path::new("tests/fixtures").join(name)).unwrap()
}

/// What the server saw, for checks on the server side.
#[derive(Default)]
struct Seen {
    /// The large body could not be written whole: the client stopped reading.
    large_body_cut_short: AtomicBool,
    /// Requests that reached the redirect target.
    redirect_target_requests: AtomicUsize,
    /// Lets the silent exchange end (the server closes without answering).
    release_silent: tokio::sync::Notify,
}

/// Reads one HTTP/1.1 request (headers, then `Content-Length` bytes); `None` on EOF.
async fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buffer = Vec::new();
    let mut chunk = [0; 4096];
    let header_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buffer.len() < header_end + length {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    Some(buffer[header_end..header_end + length].to_vec())
}

/// A complete HTTP/1.1 answer with a JSON body and the given extra header lines.
fn answer(status: &str, headers: &[String], body: &str) -> Vec<u8> {
    let mut text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json; charset=UTF-8\r\nContent-Length: {}\r\n",
        body.len()
    );
    for header in headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    text.push_str(body);
    text.into_bytes()
}

/// The three headers of a signed answer: `Client-Id` and `Response-Time` as sent, and a
/// `Signature` by `key` over `POST <path>\n<signed client id>.<signed time>.<signed body>`.
fn signed_headers(
    key: &PrivateSigningKey,
    client_id: &str,
    signed_client_id: &str,
    signed_time: &str,
    signed_body: &str,
) -> Vec<String> {
    let content = signed_content(
        NOTIFY_REGISTRATION_STATUS_PATH,
        signed_client_id,
        signed_time,
        signed_body.as_bytes(),
    );
    let signature = encode_signature(&key.sign(&content).unwrap());
    vec![
        format!("Client-Id: {client_id}"),
        format!("Response-Time: {RESPONSE_TIME}"),
        format!("Signature: {}", signature_header_value(1, &signature)),
    ]
}

async fn serve(mut stream: TcpStream, redirect_to: String, seen: Arc<Seen>) {
    let Some(body) = read_request(&mut stream).await else {
        return;
    };
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let merchant = request["referenceMerchantId"].as_str().unwrap().to_owned();
    let alipayplus = key("alipayplus_private_key.pem");
    let genuine =
        |body: &str| signed_headers(&alipayplus, CLIENT_ID, CLIENT_ID, RESPONSE_TIME, body);
    let reply = match merchant.as_str() {
        "M-OK" => answer("200 OK", &genuine(SUCCESS), SUCCESS),
        "M-RESET" => {
            // Headers and half the body, then a reset (no orderly close).
            let whole = answer("200 OK", &genuine(SUCCESS), SUCCESS);
            stream.write_all(&whole[..whole.len() - 40]).await.unwrap();
            stream.set_zero_linger().unwrap();
            return;
        }
        "M-CLOSE" => {
            let whole = answer("200 OK", &genuine(SUCCESS), SUCCESS);
            stream.write_all(&whole[..whole.len() - 40]).await.unwrap();
            return;
        }
        "M-SILENT" => {
            // Accepts, reads, never answers: the client's timeout ends it, or the test lets the
            // server close the connection without a word.
            tokio::select! {
                () = seen.release_silent.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
            return;
        }
        "M-TRICKLE" => {
            for byte in answer("200 OK", &genuine(SUCCESS), SUCCESS) {
                if stream.write_all(&[byte]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            return;
        }
        "M-LARGE" => {
            // 100 MiB announced, streamed in 1 MiB pieces, starting like a genuine success.
            let total = 100 * 1024 * 1024;
            let mut head = format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n").into_bytes();
            for header in genuine(SUCCESS) {
                head.extend_from_slice(header.as_bytes());
                head.extend_from_slice(b"\r\n");
            }
            head.extend_from_slice(b"\r\n");
            if stream.write_all(&head).await.is_err() {
                return;
            }
            let mut piece = SUCCESS.as_bytes().to_vec();
            piece.resize(1024 * 1024, b' ');
            for _ in 0..100 {
                if stream.write_all(&piece).await.is_err() {
                    seen.large_body_cut_short.store(true, Ordering::SeqCst);
                    return;
                }
            }
            return;
        }
        "M-NOT-JSON" => {
            let body = "{\"result\":{\"resultCode\":\"SUCCESS\",";
            answer("200 OK", &genuine(body), body)
        }
        "M-WRONG-TYPES" => {
            let body = r#"{"result":{"resultCode":["SUCCESS"],"resultStatus":1}}"#;
            answer("200 OK", &genuine(body), body)
        }
        "M-NO-SIGNATURE" => answer(
            "200 OK",
            &[
                format!("Client-Id: {CLIENT_ID}"),
                format!("Response-Time: {RESPONSE_TIME}"),
            ],
            SUCCESS,
        ),
        "M-OTHER-KEY" => answer(
            "200 OK",
            &signed_headers(
                &key("other_private_key.pem"),
                CLIENT_ID,
                CLIENT_ID,
                RESPONSE_TIME,
                SUCCESS,
            ),
            SUCCESS,
        ),
        "M-OTHER-CONTENT" => {
            let other = r#"{"result":{"resultCode":"PROCESS_FAIL","resultStatus":"F"}}"#;
            answer("200 OK", &genuine(other), SUCCESS)
        }
        "M-OTHER-TIME" => answer(
            "200 OK",
            &signed_headers(
                &alipayplus,
                CLIENT_ID,
                CLIENT_ID,
                "2026-11-25T21:39:00+08:00",
                SUCCESS,
            ),
            SUCCESS,
        ),
        "M-OTHER-CLIENT" => answer(
            "200 OK",
            // Well signed, by the right key, for another client.
            &signed_headers(
                &alipayplus,
                "SOMEONE_ELSE",
                "SOMEONE_ELSE",
                RESPONSE_TIME,
                SUCCESS,
            ),
            SUCCESS,
        ),
        "M-REDIRECT" => answer(
            "307 Temporary Redirect",
            &[format!("Location: {redirect_to}")],
            "",
        ),
        other => panic!("no behaviour for {other}"),
    };
    let _ = stream.write_all(&reply).await;
    let _ = stream.shutdown().await;
}

/// Starts the hostile server and, on another address (127.0.0.2, "another host"), the redirect
/// target, which answers a genuine success should anything follow the redirect.
async fn start() -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let target = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let redirect_to = format!(
        "http://{}{NOTIFY_REGISTRATION_STATUS_PATH}",
        target.local_addr().unwrap()
    );
    let target_seen = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = target.accept().await.unwrap();
            target_seen
                .redirect_target_requests
                .fetch_add(1, Ordering::SeqCst);
            let _ = read_request(&mut stream).await;
            let alipayplus = key("alipayplus_private_key.pem");
            let headers = signed_headers(&alipayplus, CLIENT_ID, CLIENT_ID, RESPONSE_TIME, SUCCESS);
            let _ = stream.write_all(&answer("200 OK", &headers, SUCCESS)).await;
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let server_seen = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(serve(stream, redirect_to.clone(), Arc::clone(&server_seen)));
        }
    });
    (base_url, seen)
}

fn client(base_url: &str, request_timeout: Duration) -> AlipayPlusClient {
    let mut settings = AlipayPlusSettings {
        base_url: base_url.into(),
        allow_insecure_http: true,
        client_id: CLIENT_ID.into(),
        ..AlipayPlusSettings::default()
    };
    settings.connect_timeout = Duration::from_secs(1);
    settings.request_timeout = request_timeout;
    AlipayPlusClient::new(
        ClientOptions::from_settings(&settings),
        key("mpp_private_key.pem"),
        Some(
            PublicVerifyingKey::from_file(Path::new("tests/fixtures/alipayplus_public_key.pem"))
                .unwrap(),
        ),
    )
    .unwrap()
}

async fn notify(client: &AlipayPlusClient, merchant: &str) -> NotifyAttempt {
    let event = RegistrationDecided {
        event_id: format!("ev-{merchant}"),
        occurred_at_ms: 1_764_000_000_000,
        reference_merchant_id: merchant.into(),
        registration_request_id: format!("R-{merchant}"),
        decision: Decision::Approved,
        rejection_reason: None,
        psp_id: None,
    };
    client.notify_registration_status(&event).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hostile_answer_is_ever_taken_as_success() {
    let (base_url, seen) = start().await;
    let client = Arc::new(client(&base_url, Duration::from_secs(2)));

    // The genuine answer first: the server and the client agree when nobody cheats.
    let genuine = notify(&client, "M-OK").await;
    assert_eq!(genuine.class, ResultClass::Success, "{genuine:?}");
    assert_eq!(genuine.signature, SignatureCheck::Verified);

    // Every hostile case at once, as the pipeline would send them for different merchants.
    let cases: [&'static str; 13] = [
        "M-RESET",
        "M-CLOSE",
        "M-SILENT",
        "M-TRICKLE",
        "M-LARGE",
        "M-NOT-JSON",
        "M-WRONG-TYPES",
        "M-NO-SIGNATURE",
        "M-OTHER-KEY",
        "M-OTHER-CONTENT",
        "M-OTHER-TIME",
        "M-OTHER-CLIENT",
        "M-REDIRECT",
    ];
    let tasks: Vec<_> = cases
        .into_iter()
        .map(|merchant| {
            let client = Arc::clone(&client);
            tokio::spawn(async move { (merchant, notify(&client, merchant).await) })
        })
        .collect();
    let mut attempts = std::collections::HashMap::new();
    for task in tasks {
        let (merchant, attempt) = task.await.unwrap();
        assert_ne!(
            attempt.class,
            ResultClass::Success,
            "{merchant}: {attempt:?}"
        );
        attempts.insert(merchant, attempt);
    }

    // Transport failures are unknown (retried with the same parameters), never success.
    for merchant in ["M-RESET", "M-CLOSE", "M-SILENT", "M-TRICKLE"] {
        let attempt = &attempts[merchant];
        assert_eq!(
            attempt.class,
            ResultClass::Unknown,
            "{merchant}: {attempt:?}"
        );
        assert!(attempt.error.is_some(), "{merchant}: {attempt:?}");
    }
    for merchant in ["M-SILENT", "M-TRICKLE"] {
        assert!(
            matches!(attempts[merchant].error, Some(AttemptError::Timeout(_))),
            "{merchant}: {:?}",
            attempts[merchant]
        );
    }
    // The large body is cut at the client's cap; the server saw the client stop reading.
    let large = &attempts["M-LARGE"];
    assert_eq!(large.class, ResultClass::Unknown, "{large:?}");
    assert!(
        matches!(large.error, Some(AttemptError::BodyTooLarge { .. })),
        "{large:?}"
    );
    assert!(seen.large_body_cut_short.load(Ordering::SeqCst));
    // Bodies that are not answers.
    for merchant in ["M-NOT-JSON", "M-WRONG-TYPES"] {
        let attempt = &attempts[merchant];
        assert_eq!(
            attempt.class,
            ResultClass::Unknown,
            "{merchant}: {attempt:?}"
        );
        assert_eq!(attempt.result, None, "{merchant}");
        assert_eq!(
            attempt.error,
            Some(AttemptError::UnparseableBody),
            "{merchant}"
        );
    }
    // Success answers that cannot be trusted.
    assert_eq!(
        attempts["M-NO-SIGNATURE"].signature,
        SignatureCheck::Missing
    );
    for merchant in [
        "M-NO-SIGNATURE",
        "M-OTHER-KEY",
        "M-OTHER-CONTENT",
        "M-OTHER-TIME",
        "M-OTHER-CLIENT",
    ] {
        let attempt = &attempts[merchant];
        assert_eq!(
            attempt.class,
            ResultClass::Unknown,
            "{merchant}: {attempt:?}"
        );
        assert_eq!(
            attempt.result.as_ref().map(|r| r.result_code.as_str()),
            Some("SUCCESS"),
            "{merchant}: the body did say success"
        );
        if merchant != "M-NO-SIGNATURE" {
            assert_eq!(attempt.signature, SignatureCheck::Invalid, "{merchant}");
        }
    }
    // A redirect is not followed (it would change the signed path): refused, and the other host
    // never hears of it.
    let redirect = &attempts["M-REDIRECT"];
    assert_eq!(redirect.class, ResultClass::Refused, "{redirect:?}");
    assert_eq!(redirect.http_status, Some(307));
    assert_eq!(seen.redirect_target_requests.load(Ordering::SeqCst), 0);
}

/// A peer that never answers holds up only its own exchange: others on the same client complete
/// meanwhile. No clock decides it: the silent exchange is released only after the others have
/// finished (with a request timeout far longer than the test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_does_not_hold_up_other_merchants() {
    let (base_url, seen) = start().await;
    let client = Arc::new(client(&base_url, Duration::from_secs(60)));
    let (finished, mut order) = tokio::sync::mpsc::unbounded_channel();
    for merchant in ["M-SILENT", "M-OK", "M-OK", "M-OK"] {
        let (client, finished) = (Arc::clone(&client), finished.clone());
        tokio::spawn(async move {
            let attempt = notify(&client, merchant).await;
            finished.send((merchant, attempt.class)).unwrap();
        });
    }
    drop(finished);
    for _ in 0..3 {
        assert_eq!(
            order.recv().await,
            Some(("M-OK", ResultClass::Success)),
            "the others finish while the silent exchange waits"
        );
    }
    seen.release_silent.notify_one();
    assert_eq!(
        order.recv().await,
        Some(("M-SILENT", ResultClass::Unknown)),
        "closed without an answer: unknown"
    );
}
