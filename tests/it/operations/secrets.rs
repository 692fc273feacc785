//! No key or signature reaches a log line, a metric or an error message, at any log level.

use crate::common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use regnotify::event::NotifyOutcome;
use regnotify::simulator::rules::{Fault, FaultRule};

use common::{Harness, event, service};

use super::WAIT;

/// Records every `Signature` header that passes between regnotify and the simulator.
#[derive(Clone)]
struct RecordingProxy {
    upstream: String,
    http: reqwest::Client,
    signatures: Arc<Mutex<Vec<String>>>,
}

async fn forward(
    State(proxy): State<RecordingProxy>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, HeaderMap, Bytes) {
    if let Some(signature) = headers.get("signature").and_then(|v| v.to_str().ok()) {
        proxy.signatures.lock().unwrap().push(signature.to_string());
    }
    let mut request = proxy
        .http
        .post(format!(
            "{}/aps/api/v1/merchants/notifyRegistrationStatus",
            proxy.upstream
        ))
        .body(body);
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    let response = request.send().await.unwrap();
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let mut out = HeaderMap::new();
    for (name, value) in response.headers() {
        if name == "signature" {
            proxy
                .signatures
                .lock()
                .unwrap()
                .push(value.to_str().unwrap().to_string());
        }
        if name != "content-length" && name != "transfer-encoding" {
            out.insert(name.clone(), value.clone());
        }
    }
    (status, out, response.bytes().await.unwrap())
}

/// The parts of a secret that must never be printed: every line of a PEM body, and the
/// signature value of every `Signature` header in both its encoded and decoded forms.
fn secret_fragments(pem: &str, signatures: &[String]) -> Vec<String> {
    let mut fragments: Vec<String> = pem
        .lines()
        .filter(|line| !line.starts_with("-----") && line.len() >= 16)
        .map(str::to_string)
        .collect();
    for header in signatures {
        let value = header
            .rsplit("signature=")
            .next()
            .unwrap()
            .trim()
            .to_string();
        let decoded = value
            .replace("%2B", "+")
            .replace("%2F", "/")
            .replace("%3D", "=");
        // Any 24-character window of a signature is as telling as the whole.
        for text in [value, decoded] {
            let bytes = text.as_bytes();
            for start in (0..bytes.len().saturating_sub(24)).step_by(12) {
                fragments.push(String::from_utf8_lossy(&bytes[start..start + 24]).into_owned());
            }
        }
    }
    fragments
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_or_signature_reaches_logs_metrics_or_errors() {
    let rules = vec![
        FaultRule::for_prefix("M-REF-", Fault::result("F", "INVALID_CLIENT")),
        FaultRule::for_prefix("M-SIG-", Fault::BadSignature),
    ];
    let harness = Harness::new(1, rules).await;
    let dir = tempfile::tempdir().unwrap();
    let (private_key, public_key) = service::harness_key_files(&harness, &dir.path().join("keys"));
    let mpp_pem = std::fs::read_to_string(&private_key).unwrap();

    let proxy = RecordingProxy {
        upstream: harness.simulator.base_url(),
        http: reqwest::Client::new(),
        signatures: Arc::default(),
    };
    let proxy_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy_listener.local_addr().unwrap());
    let router = axum::Router::new()
        .route(
            "/aps/api/v1/merchants/notifyRegistrationStatus",
            axum::routing::post(forward),
        )
        .with_state(proxy.clone());
    tokio::spawn(async move { axum::serve(proxy_listener, router).await });

    let admin_port = service::free_port();
    let mut child = service::ChildConfig::new(&harness, &proxy_url, &private_key, &public_key);
    child.processing = [
        "max_attempts = 2",
        r#"backoff_initial = "10ms""#,
        r#"backoff_max = "20ms""#,
        r#"commit_interval = "100ms""#,
    ]
    .map(String::from)
    .to_vec();
    child.admin_listen = format!("127.0.0.1:{admin_port}");
    child.log_level = "trace".into();
    let config = child.write(dir.path());
    let child = common::regnotify_binary()
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    harness
        .produce(&[
            event("M-OK-1", "R-1"),
            event("M-REF-1", "R-2"),
            event("M-SIG-1", "R-3"),
        ])
        .await;
    let outcomes = harness.wait_outcomes(3, WAIT).await;
    assert_eq!(outcomes.len(), 3, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .any(|o| o.outcome == NotifyOutcome::Notified)
    );
    let metrics = reqwest::get(format!("http://127.0.0.1:{admin_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "exit 0 on SIGTERM: {:?}",
        output.status
    );
    let logs = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        logs.lines().count() > 10,
        "trace logging produced lines: {logs}"
    );
    assert!(logs.lines().all(|l| l.starts_with('{')), "json log lines");
    assert!(
        logs.contains("event finished"),
        "one line per terminal outcome"
    );

    let check_config = common::regnotify_binary()
        .args(["check-config", "--config"])
        .arg(&config)
        .env("REGNOTIFY_ALIPAYPLUS__PRIVATE_KEY", &mpp_pem)
        .env("REGNOTIFY_ALIPAYPLUS__PRIVATE_KEY_FILE", "")
        .output()
        .unwrap();
    // The service has stopped: the whole topics are final.
    assert_eq!(harness.outcomes().await.len(), 3);
    let letters = harness.dead_letters().await;
    assert_eq!(letters.len(), 2, "{letters:?}");

    let signatures = proxy.signatures.lock().unwrap().clone();
    assert!(
        signatures.len() >= 4,
        "requests and answers were signed: {signatures:?}"
    );
    let mut printed = vec![
        ("logs", logs),
        ("metrics", metrics),
        (
            "stdout",
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ),
        (
            "check-config",
            String::from_utf8_lossy(&check_config.stdout).into_owned()
                + &String::from_utf8_lossy(&check_config.stderr),
        ),
    ];
    for o in &outcomes {
        printed.push(("outcome error", format!("{:?}", o.error)));
    }
    for l in &letters {
        printed.push((
            "dlq.error",
            l.header("dlq.error").unwrap_or_default().to_string(),
        ));
    }
    let fragments = secret_fragments(&mpp_pem, &signatures);
    assert!(fragments.len() > 20);
    for (place, text) in &printed {
        for fragment in &fragments {
            assert!(
                !text.contains(fragment.as_str()),
                "{place} leaks {fragment}"
            );
        }
    }
}
