//! A hostile Alipay+: a raw TCP server that answers the real client's `notifyRegistrationStatus`
//! with everything a broken or malicious peer might send — resets, silence, a trickle, a body far
//! larger than any answer, bodies that are not answers, success answers whose signature is missing,
//! by another key, over other content or for another client, and a redirect to another host.
//! None may ever be taken as success, and one stuck exchange must not hold up another. The same
//! cases run over HTTP/1.1 (plain) and over HTTP/2 (TLS with ALPN, all streams on one connection,
//! a stream reset in place of a connection reset).
//!
//! The server picks its behaviour by the request's `referenceMerchantId`. Timeouts are short
//! (1 s connect, 2 s request), so the whole file runs in a few seconds.
//!
//! Over 600 lines: one concern, the client against a peer that misbehaves; most of the length is
//! the server's catalogue of misbehaviours.
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
    /// HTTP/2 streams the server accepted.
    h2_streams: AtomicUsize,
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
/// An HTTP/1.1 answer. The server answers one request per connection and says so: a client that
/// reused the connection would see it closed, which is not the case under test.
fn answer(status: u16, headers: &[String], body: &str) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        307 => "Temporary Redirect",
        _ => "",
    };
    let mut text = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=UTF-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
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

/// An answer that is wrong in what it says, not in how it is sent: the same over HTTP/1.1 and
/// HTTP/2.
struct Canned {
    status: u16,
    headers: Vec<String>,
    body: String,
}

fn canned_answer(status: u16, headers: &[String], body: &str) -> Canned {
    Canned {
        status,
        headers: headers.to_vec(),
        body: body.into(),
    }
}

/// The headers of a genuine answer to this test's client.
fn genuine_headers(body: &str) -> Vec<String> {
    let alipayplus = key("alipayplus_private_key.pem");
    signed_headers(&alipayplus, CLIENT_ID, CLIENT_ID, RESPONSE_TIME, body)
}

/// The canned answer for `merchant`, `None` for the behaviours that depend on the transport.
fn canned(merchant: &str, redirect_to: &str) -> Option<Canned> {
    Some(match merchant {
        "M-OK" => canned_answer(200, &genuine_headers(SUCCESS), SUCCESS),
        "M-NOT-JSON" => {
            let body = "{\"result\":{\"resultCode\":\"SUCCESS\",";
            canned_answer(200, &genuine_headers(body), body)
        }
        "M-WRONG-TYPES" => {
            let body = r#"{"result":{"resultCode":["SUCCESS"],"resultStatus":1}}"#;
            canned_answer(200, &genuine_headers(body), body)
        }
        "M-NO-SIGNATURE" => canned_answer(
            200,
            &[
                format!("Client-Id: {CLIENT_ID}"),
                format!("Response-Time: {RESPONSE_TIME}"),
            ],
            SUCCESS,
        ),
        "M-OTHER-KEY" => canned_answer(
            200,
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
            canned_answer(200, &genuine_headers(other), SUCCESS)
        }
        "M-OTHER-TIME" => canned_answer(
            200,
            &signed_headers(
                &key("alipayplus_private_key.pem"),
                CLIENT_ID,
                CLIENT_ID,
                "2026-11-25T21:39:00+08:00",
                SUCCESS,
            ),
            SUCCESS,
        ),
        "M-OTHER-CLIENT" => canned_answer(
            200,
            // Well signed, by the right key, for another client.
            &signed_headers(
                &key("alipayplus_private_key.pem"),
                "SOMEONE_ELSE",
                "SOMEONE_ELSE",
                RESPONSE_TIME,
                SUCCESS,
            ),
            SUCCESS,
        ),
        "M-REDIRECT" => canned_answer(307, &[format!("Location: {redirect_to}")], ""),
        _ => return None,
    })
}

async fn serve(mut stream: TcpStream, redirect_to: String, seen: Arc<Seen>) {
    let Some(body) = read_request(&mut stream).await else {
        return;
    };
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let merchant = request["referenceMerchantId"].as_str().unwrap().to_owned();
    let reply = match merchant.as_str() {
        "M-RESET" => {
            // Headers and half the body, then a reset (no orderly close).
            let whole = answer(200, &genuine_headers(SUCCESS), SUCCESS);
            stream.write_all(&whole[..whole.len() - 40]).await.unwrap();
            stream.set_zero_linger().unwrap();
            return;
        }
        "M-CLOSE" => {
            let whole = answer(200, &genuine_headers(SUCCESS), SUCCESS);
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
            for byte in answer(200, &genuine_headers(SUCCESS), SUCCESS) {
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
            let mut head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {total}\r\nConnection: close\r\n")
                    .into_bytes();
            for header in genuine_headers(SUCCESS) {
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
        other => match canned(other, &redirect_to) {
            Some(Canned {
                status,
                headers,
                body,
            }) => answer(status, &headers, &body),
            None => panic!("no behaviour for {other}"),
        },
    };
    let _ = stream.write_all(&reply).await;
    let _ = stream.shutdown().await;
}

/// The redirect target on another host (127.0.0.2): counts what reaches it and answers a
/// genuine success should anything follow the redirect. Returns the URL to redirect to.
async fn start_redirect_target(seen: Arc<Seen>) -> String {
    let target = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let redirect_to = format!(
        "http://{}{NOTIFY_REGISTRATION_STATUS_PATH}",
        target.local_addr().unwrap()
    );
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = target.accept().await.unwrap();
            seen.redirect_target_requests.fetch_add(1, Ordering::SeqCst);
            let _ = read_request(&mut stream).await;
            let _ = stream
                .write_all(&answer(200, &genuine_headers(SUCCESS), SUCCESS))
                .await;
        }
    });
    redirect_to
}

/// Starts the hostile server and, on another address (127.0.0.2, "another host"), the redirect
/// target, which answers a genuine success should anything follow the redirect.
async fn start() -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let redirect_to = start_redirect_target(Arc::clone(&seen)).await;
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

/// Sends the genuine case, then every case at once (as the pipeline would for different
/// merchants), and checks that none is taken as success and each fails the way it should.
async fn assert_no_hostile_answer_taken_as_success(
    client: &Arc<AlipayPlusClient>,
    seen: &Seen,
    cases: &[&'static str],
) {
    // The genuine answer first: the server and the client agree when nobody cheats.
    let genuine = notify(client, "M-OK").await;
    assert_eq!(genuine.class, ResultClass::Success, "{genuine:?}");
    assert_eq!(genuine.signature, SignatureCheck::Verified);

    let tasks: Vec<_> = cases
        .iter()
        .map(|&merchant| {
            let client = Arc::clone(client);
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
    let sent = |merchants: &'static [&'static str]| {
        merchants
            .iter()
            .copied()
            .filter(|merchant| attempts.contains_key(merchant))
    };

    // Transport failures are unknown (retried with the same parameters), never success.
    for merchant in sent(&["M-RESET", "M-CLOSE", "M-SILENT", "M-TRICKLE"]) {
        let attempt = &attempts[merchant];
        assert_eq!(
            attempt.class,
            ResultClass::Unknown,
            "{merchant}: {attempt:?}"
        );
        assert!(attempt.error.is_some(), "{merchant}: {attempt:?}");
    }
    for merchant in sent(&["M-SILENT", "M-TRICKLE"]) {
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
    eventually_true(&seen.large_body_cut_short).await;
    // Bodies that are not answers.
    for merchant in sent(&["M-NOT-JSON", "M-WRONG-TYPES"]) {
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
    for merchant in sent(&[
        "M-NO-SIGNATURE",
        "M-OTHER-KEY",
        "M-OTHER-CONTENT",
        "M-OTHER-TIME",
        "M-OTHER-CLIENT",
    ]) {
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

/// The server notes a cut-short body when its next write fails, which may come just after the
/// client gave up.
async fn eventually_true(flag: &AtomicBool) {
    for _ in 0..100 {
        if flag.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the server never saw the client stop reading the large body");
}

/// The cases both transports share.
const ANSWER_CASES: [&str; 10] = [
    "M-LARGE",
    "M-NOT-JSON",
    "M-WRONG-TYPES",
    "M-NO-SIGNATURE",
    "M-OTHER-KEY",
    "M-OTHER-CONTENT",
    "M-OTHER-TIME",
    "M-OTHER-CLIENT",
    "M-REDIRECT",
    "M-TRICKLE",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hostile_answer_is_ever_taken_as_success() {
    let (base_url, seen) = start().await;
    let client = Arc::new(client(&base_url, Duration::from_secs(2)));
    let mut cases = vec!["M-RESET", "M-CLOSE", "M-SILENT"];
    cases.extend(ANSWER_CASES);
    assert_no_hostile_answer_taken_as_success(&client, &seen, &cases).await;
}

/// Sends one silent exchange and three genuine ones at once: the genuine ones finish while the
/// silent one waits, and it ends unknown once the server lets it go. No clock decides it: the
/// silent exchange is released only after the others have finished (with a request timeout far
/// longer than the test).
async fn assert_silence_holds_up_only_itself(client: AlipayPlusClient, seen: &Seen) {
    let client = Arc::new(client);
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
        "ended without an answer: unknown"
    );
}

/// A peer that never answers holds up only its own exchange: others on the same client complete
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_does_not_hold_up_other_merchants() {
    let (base_url, seen) = start().await;
    assert_silence_holds_up_only_itself(client(&base_url, Duration::from_secs(60)), &seen).await;
}

// ---------------------------------------------------------------------------------------------
// The same over HTTP/2: a TLS server (test CA in `alipayplus.ca_bundle_file`) that offers only
// `h2` by ALPN, as the real endpoint may. A client that did not speak HTTP/2 would fail every
// handshake, the genuine case included. All exchanges share one connection, so a stream that is
// reset, silent or trickling must not hold up the others on it.

use bytes::Bytes;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new("tests/fixtures").join(name)
}

/// Starts the HTTP/2 server and its redirect target; returns the server's `https://` base URL.
async fn start_h2() -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let certificates = CertificateDer::pem_file_iter(fixture("h2_server_cert.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let private_key = PrivateKeyDer::from_pem_file(fixture("h2_server_key.pem")).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certificates, private_key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let redirect_to = start_redirect_target(Arc::clone(&seen)).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("https://{}", listener.local_addr().unwrap());
    let server_seen = Arc::clone(&seen);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (acceptor, seen) = (acceptor.clone(), Arc::clone(&server_seen));
            let redirect_to = redirect_to.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
                let Ok(mut connection) = h2::server::handshake(tls).await else {
                    return;
                };
                while let Some(Ok((request, respond))) = connection.accept().await {
                    seen.h2_streams.fetch_add(1, Ordering::SeqCst);
                    let (redirect_to, seen) = (redirect_to.clone(), Arc::clone(&seen));
                    tokio::spawn(serve_h2(request, respond, redirect_to, seen));
                }
            });
        }
    });
    (base_url, seen)
}

/// Response headers: status, content type, the given `Name: value` lines and, when known, the
/// length.
fn h2_head(status: u16, headers: &[String], length: Option<usize>) -> http::Response<()> {
    let mut response = http::Response::builder()
        .status(status)
        .header("content-type", "application/json; charset=UTF-8");
    for header in headers {
        let (name, value) = header.split_once(": ").unwrap();
        response = response.header(name.to_ascii_lowercase(), value);
    }
    if let Some(length) = length {
        response = response.header("content-length", length);
    }
    response.body(()).unwrap()
}

/// Sends `data` as the peer's flow control allows; false once the client reset the stream.
async fn send_paced(send: &mut h2::SendStream<Bytes>, mut data: Bytes) -> bool {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(capacity)) if capacity > 0 => {
                let piece = data.split_to(capacity.min(data.len()));
                if send.send_data(piece, false).is_err() {
                    return false;
                }
            }
            Some(Ok(_)) => {}
            _ => return false,
        }
    }
    true
}

async fn serve_h2(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    redirect_to: String,
    seen: Arc<Seen>,
) {
    let mut body = request.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let Ok(chunk) = chunk else { return };
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let request: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let merchant = request["referenceMerchantId"].as_str().unwrap().to_owned();
    let genuine = || h2_head(200, &genuine_headers(SUCCESS), Some(SUCCESS.len()));
    match merchant.as_str() {
        "M-RESET" => {
            // Headers and part of the body, then RST_STREAM (the connection lives on).
            let Ok(mut send) = respond.send_response(genuine(), false) else {
                return;
            };
            let _ = send.send_data(Bytes::from_static(&SUCCESS.as_bytes()[..20]), false);
            tokio::time::sleep(Duration::from_millis(100)).await;
            send.send_reset(h2::Reason::INTERNAL_ERROR);
        }
        "M-SILENT" => {
            tokio::select! {
                () = seen.release_silent.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
            respond.send_reset(h2::Reason::CANCEL);
        }
        "M-TRICKLE" => {
            let Ok(mut send) = respond.send_response(genuine(), false) else {
                return;
            };
            for byte in SUCCESS.bytes() {
                if send.send_data(Bytes::from(vec![byte]), false).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        "M-LARGE" => {
            // 100 MiB announced, sent as fast as flow control allows, starting like a success.
            let total = 100 * 1024 * 1024;
            let head = h2_head(200, &genuine_headers(SUCCESS), Some(total));
            let Ok(mut send) = respond.send_response(head, false) else {
                return;
            };
            let mut piece = SUCCESS.as_bytes().to_vec();
            piece.resize(1024 * 1024, b' ');
            let piece = Bytes::from(piece);
            for _ in 0..100 {
                if !send_paced(&mut send, piece.clone()).await {
                    seen.large_body_cut_short.store(true, Ordering::SeqCst);
                    return;
                }
            }
        }
        other => {
            let Canned {
                status,
                headers,
                body,
            } = canned(other, &redirect_to).unwrap_or_else(|| panic!("no behaviour for {other}"));
            let head = h2_head(status, &headers, Some(body.len()));
            if let Ok(mut send) = respond.send_response(head, body.is_empty())
                && !body.is_empty()
            {
                let _ = send.send_data(Bytes::from(body), true);
            }
        }
    }
}

fn h2_client(base_url: &str, request_timeout: Duration) -> AlipayPlusClient {
    let mut settings = AlipayPlusSettings {
        base_url: base_url.into(),
        client_id: CLIENT_ID.into(),
        ca_bundle_file: Some(fixture("h2_ca.pem")),
        ..AlipayPlusSettings::default()
    };
    settings.connect_timeout = Duration::from_secs(1);
    settings.request_timeout = request_timeout;
    AlipayPlusClient::new(
        ClientOptions::from_settings(&settings),
        key("mpp_private_key.pem"),
        Some(PublicVerifyingKey::from_file(&fixture("alipayplus_public_key.pem")).unwrap()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_hostile_answer_over_http2_is_ever_taken_as_success() {
    let (base_url, seen) = start_h2().await;
    let client = Arc::new(h2_client(&base_url, Duration::from_secs(2)));
    let mut cases = vec!["M-RESET", "M-SILENT"];
    cases.extend(ANSWER_CASES);
    assert_no_hostile_answer_taken_as_success(&client, &seen, &cases).await;
    assert_eq!(
        seen.h2_streams.load(Ordering::SeqCst),
        cases.len() + 1,
        "every exchange was an HTTP/2 stream"
    );
}

/// On one HTTP/2 connection, a stream that never answers holds up only itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_http2_stream_does_not_hold_up_the_others_on_its_connection() {
    let (base_url, seen) = start_h2().await;
    assert_silence_holds_up_only_itself(h2_client(&base_url, Duration::from_secs(60)), &seen).await;
    assert_eq!(seen.h2_streams.load(Ordering::SeqCst), 4);
}
