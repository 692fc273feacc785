//! What an SRE relies on: `/metrics` counts what happened and parses as Prometheus text,
//! `/readyz` and `/healthz` answer as specified, and no key or signature ever reaches a log line,
//! a metric or an error message — checked on the real `regnotify run` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use regnotify::admin::{AdminState, install_metrics};
use regnotify::event::NotifyOutcome;
use regnotify::observe::Health;
use regnotify::simulator::rules::{Fault, FaultRule};
use tokio_util::sync::CancellationToken;

use common::{Harness, event, eventually};

const WAIT: Duration = Duration::from_secs(60);

fn result(status: &str, code: &str) -> Fault {
    Fault::Result {
        status: status.into(),
        code: code.into(),
        message: None,
    }
}

/// Parses exposition text with the reference Python parser when it is installed (required in
/// CI), else with a strict line check of our own; returns `series → value`.
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    let external = Command::new("python3")
        .arg("tests/external_prometheus/parse.py")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
            child.wait_with_output()
        });
    let parser_missing = match &external {
        Ok(output) => String::from_utf8_lossy(&output.stderr).contains("No module named"),
        Err(_) => true,
    };
    if parser_missing {
        assert!(
            std::env::var("REGNOTIFY_REQUIRE_EXTERNAL").is_err(),
            "prometheus-client is required (pip install -r tests/external_prometheus/requirements.txt)"
        );
        eprintln!("skipped the reference parser: prometheus-client not installed");
        return own_parse(text);
    }
    let output = external.unwrap();
    assert!(
        output.status.success(),
        "not valid exposition text: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn own_parse(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            assert!(
                comment.starts_with("HELP ") || comment.starts_with("TYPE "),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
        let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        assert!(labels.ends_with('}'), "{line}");
        let mut sorted: Vec<&str> = labels
            .trim_end_matches('}')
            .split(',')
            .filter(|l| !l.is_empty())
            .collect();
        sorted.sort();
        samples.insert(format!("{name}{{{}}}", sorted.join(",")), value);
    }
    samples
}

fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_happened_and_health_endpoints_answer() {
    let metrics = install_metrics().unwrap();
    let rules = vec![
        FaultRule::for_prefix("M-REF-", result("F", "INVALID_CLIENT")),
        FaultRule::for_prefix("M-U1-", result("U", "UNKNOWN_EXCEPTION")).times(1),
    ];
    let harness = Harness::new(2, rules).await;
    let health = Arc::new(Health::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_url = format!("http://{}", listener.local_addr().unwrap());
    let stop_admin = CancellationToken::new();
    tokio::spawn(regnotify::admin::serve(
        listener,
        AdminState {
            metrics,
            health: Arc::clone(&health),
            refused_streak_threshold: 20,
        },
        stop_admin.clone(),
    ));
    let http = reqwest::Client::new();
    let status = |path: &'static str| {
        let (http, url) = (http.clone(), format!("{admin_url}{path}"));
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(
        status("/readyz").await,
        503,
        "not ready before the group is joined"
    );

    harness
        .produce(&[
            event("M-OK-1", "R-1"),
            event("M-OK-2", "R-2"),
            event("M-OK-3", "R-3"),
            event("M-REF-1", "R-4"),
            event("M-U1-1", "R-5"),
            event("", "R-6"),
        ])
        .await;
    harness.produce_raw(b"M-POISON", b"\x01garbage", &[]).await;
    let pipeline = harness.start_pipeline_with_health(harness.settings(), Arc::clone(&health));
    let stats = pipeline.stats.clone();
    eventually("all 7 terminal", WAIT, || stats.terminal() == 7).await;
    assert_eq!(status("/readyz").await, 200, "ready once joined");
    assert_eq!(status("/healthz").await, 200, "healthy while running");

    let text = http
        .get(format!("{admin_url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples = parse_exposition(&text);
    let outcomes = "regnotify_outcomes_total";
    assert_eq!(
        value(
            &samples,
            &format!(r#"{outcomes}{{outcome="NOTIFIED",result_code="SUCCESS"}}"#)
        ),
        4.0,
        "{text}"
    );
    assert_eq!(
        value(
            &samples,
            &format!(r#"{outcomes}{{outcome="DEAD_LETTERED",result_code="INVALID_CLIENT"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            &format!(r#"{outcomes}{{outcome="DEAD_LETTERED",result_code="none"}}"#)
        ),
        1.0
    );
    let letters = "regnotify_dead_letters_total";
    assert_eq!(
        value(
            &samples,
            &format!(r#"{letters}{{reason="REQUEST_REFUSED"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(&samples, &format!(r#"{letters}{{reason="INVALID_EVENT"}}"#)),
        1.0
    );
    assert_eq!(
        value(&samples, &format!(r#"{letters}{{reason="DECODE_ERROR"}}"#)),
        1.0
    );
    let attempts = "regnotify_notify_attempts_total";
    assert_eq!(
        value(&samples, &format!(r#"{attempts}{{class="success"}}"#)),
        4.0
    );
    assert_eq!(
        value(&samples, &format!(r#"{attempts}{{class="refused"}}"#)),
        1.0
    );
    assert_eq!(
        value(&samples, &format!(r#"{attempts}{{class="unknown"}}"#)),
        1.0
    );
    assert_eq!(
        value(&samples, r#"regnotify_retries_total{class="unknown"}"#),
        1.0
    );
    let consumed: f64 = samples
        .iter()
        .filter(|(series, _)| series.starts_with("regnotify_events_consumed_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(consumed, 7.0);
    assert_eq!(
        value(&samples, "regnotify_notify_latency_seconds_count{}"),
        6.0
    );
    assert!(
        samples
            .keys()
            .any(|s| s.starts_with("regnotify_notify_latency_seconds_bucket{le=")),
        "latency is a histogram with buckets"
    );
    assert!(
        samples
            .keys()
            .any(|s| s.starts_with("regnotify_signing_seconds_bucket{"))
    );
    assert!(
        samples
            .keys()
            .any(|s| s.starts_with("regnotify_end_to_end_latency_seconds_bucket{"))
    );
    assert!(
        samples
            .keys()
            .any(|s| s.starts_with("regnotify_build_info{"))
    );
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let kind = line.rsplit(' ').next().unwrap();
        assert_ne!(kind, "summary", "histograms, not summaries: {line}");
    }

    pipeline.stop().await;
    stop_admin.cancel();
}

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
        FaultRule::for_prefix("M-REF-", result("F", "INVALID_CLIENT")),
        FaultRule::for_prefix("M-SIG-", Fault::BadSignature),
    ];
    let harness = Harness::new(1, rules).await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let mpp_pem = harness.mpp_key.to_pkcs8_pem().unwrap();
    let mpp_pem = secrecy::ExposeSecret::expose_secret(&mpp_pem).to_string();
    std::fs::write(keys.join("mpp.pem"), &mpp_pem).unwrap();
    std::fs::write(
        keys.join("alipayplus_public.pem"),
        harness.alipayplus_key.public_key().to_pem().unwrap(),
    )
    .unwrap();

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

    let admin_port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let config = dir.path().join("regnotify.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
input_topic = "{input}"
result_topic = "{result}"
dlq_topic = "{dlq}"
[schema_registry]
url = "{registry}"
[alipayplus]
base_url = "{proxy_url}"
allow_insecure_http = true
client_id = "{client}"
private_key_file = "{keys}/mpp.pem"
alipayplus_public_key_file = "{keys}/alipayplus_public.pem"
[processing]
max_attempts = 2
backoff_initial = "10ms"
backoff_max = "20ms"
commit_interval = "100ms"
[admin]
listen = "127.0.0.1:{admin_port}"
[log]
format = "json"
level = "trace"
"#,
            bootstrap = harness.kafka.bootstrap,
            group = harness.group,
            input = harness.input,
            result = harness.result,
            dlq = harness.dlq,
            registry = harness.registry.url,
            client = common::CLIENT_ID,
            keys = keys.display(),
        ),
    )
    .unwrap();
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
