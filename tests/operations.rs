//! What an SRE relies on: `/metrics` counts what happened and parses as Prometheus text,
//! `/readyz` and `/healthz` answer as specified, a Kafka error that persists is counted, named by
//! `/readyz` and logged without a flood, and no key or signature ever reaches a log line, a metric
//! or an error message — checked on the real `regnotify run` binary.
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
use regnotify::event::NotifyOutcome;
use regnotify::simulator::rules::{Fault, FaultRule};

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
    let rules = vec![
        FaultRule::for_prefix("M-REF-", result("F", "INVALID_CLIENT")),
        FaultRule::for_prefix("M-U1-", result("U", "UNKNOWN_EXCEPTION")).times(1),
    ];
    let harness = Harness::new(2, rules).await;
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
    // The service's own admin listener, bound before the pipeline starts (`admin.listen` is
    // 127.0.0.1:0 in the harness; the bound address is reported).
    let pipeline = harness.start_pipeline(harness.settings()).await;
    let admin_url = pipeline.admin_url.clone();
    let http = reqwest::Client::new();
    let status = |path: &'static str| {
        let (http, url) = (http.clone(), format!("{admin_url}{path}"));
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
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
        value(
            &samples,
            &format!(r#"{attempts}{{class="success",psp="default"}}"#)
        ),
        4.0
    );
    assert_eq!(
        value(
            &samples,
            &format!(r#"{attempts}{{class="refused",psp="default"}}"#)
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            &format!(r#"{attempts}{{class="unknown",psp="default"}}"#)
        ),
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

/// The running `regnotify run` binary: its stderr is read line by line as it comes, and it is
/// killed if the test ends early.
struct RunningBinary {
    child: Option<std::process::Child>,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl RunningBinary {
    fn start(config: &std::path::Path) -> RunningBinary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_regnotify"))
            .args(["run", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = std::thread::spawn({
            let lines = Arc::clone(&lines);
            move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line);
                }
            }
        });
        RunningBinary {
            child: Some(child),
            lines,
            reader: Some(reader),
        }
    }

    /// The JSON log lines written so far whose message is `message`.
    fn logged(&self, message: &str) -> Vec<serde_json::Value> {
        json_lines(&self.lines.lock().unwrap(), message)
    }

    /// SIGTERM, then waits for a clean exit; returns every line it wrote.
    async fn stop(mut self) -> Vec<String> {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(exit.success(), "exit 0 on SIGTERM: {exit:?}");
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

/// The JSON log lines among `lines` whose message is `message`.
fn json_lines(lines: &[String], message: &str) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["message"] == message)
        .collect()
}

impl Drop for RunningBinary {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes a `regnotify run` configuration against `bootstrap` and the harness' simulator, with
/// the harness' keys and `consumer` as extra librdkafka consumer properties; returns its path and
/// the admin URL.
fn service_config(
    harness: &Harness,
    dir: &std::path::Path,
    bootstrap: &str,
    topics: [&str; 3],
    consumer: &[(&str, &str)],
) -> (std::path::PathBuf, String) {
    let keys = dir.join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let mpp_pem = harness.mpp_key.to_pkcs8_pem().unwrap();
    std::fs::write(
        keys.join("mpp.pem"),
        secrecy::ExposeSecret::expose_secret(&mpp_pem),
    )
    .unwrap();
    std::fs::write(
        keys.join("alipayplus_public.pem"),
        harness.alipayplus_key.public_key().to_pem().unwrap(),
    )
    .unwrap();
    let admin_port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let [input, result, dlq] = topics;
    // As the harness does: members notice a rebalance within half a second, and a member that
    // left is given up after 6 s rather than librdkafka's default 45 s.
    let consumer: String = [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
    ]
    .iter()
    .chain(consumer)
    .map(|(name, value)| format!("\"{name}\" = \"{value}\"\n"))
    .collect();
    let config = dir.join("regnotify.toml");
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
[alipayplus]
base_url = "{base_url}"
allow_insecure_http = true
client_id = "{client}"
private_key_file = "{keys}/mpp.pem"
alipayplus_public_key_file = "{keys}/alipayplus_public.pem"
[processing]
commit_interval = "100ms"
[admin]
listen = "127.0.0.1:{admin_port}"
[kafka.consumer]
{consumer}
[log]
format = "json"
level = "info"
"#,
            group = common::unique("group"),
            base_url = harness.simulator.base_url(),
            client = common::CLIENT_ID,
            keys = keys.display(),
        ),
    )
    .unwrap();
    (config, format!("http://127.0.0.1:{admin_port}"))
}

async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        // The admin listener is not up yet.
        Err(_) => (0, String::new()),
    }
}

/// Polls `url` until `done(status, body)` holds; returns the last answer.
async fn until(
    what: &str,
    url: &str,
    timeout: Duration,
    done: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (status, body) = get(url).await;
        if done(status, &body) {
            return (status, body);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; last answer {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A partition that cannot be fetched (the broker answers every fetch with "unsupported
/// compression type", as a broker does for a zstd batch to a client that cannot read it) is
/// counted by code, makes `/readyz` answer 503 naming the error and the partitions that hold
/// records but do not move, is logged once per interval rather than at every retry, and readiness
/// returns once fetches succeed again — on the real binary. It needs librdkafka's mock cluster
/// for the fault injection, so it uses one even when a real broker is configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_consumer_error_is_counted_named_by_readyz_and_not_flooded() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use regnotify::codec::EventEncoder;
    use regnotify::config::InputEncoding;

    const CODE: &str = "UnsupportedCompressionType";
    let harness = Harness::new(1, vec![]).await;
    let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let (input, result, dlq) = (
        common::unique("decided"),
        common::unique("result"),
        common::unique("dlq"),
    );
    mock.create_topic(&input, 3, 1).unwrap();
    mock.create_topic(&result, 3, 1).unwrap();
    mock.create_topic(&dlq, 1, 1).unwrap();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let encoder = EventEncoder::new(InputEncoding::SingleObject, None, &input).unwrap();
    let mut with_records = std::collections::BTreeSet::new();
    let produced = 8;
    for index in 0..produced {
        let event = event(&format!("M-{index}"), &format!("R-{index}"));
        let value = encoder.encode(&event).await.unwrap();
        let record = FutureRecord::to(&input)
            .key(event.reference_merchant_id.as_bytes())
            .payload(&value);
        let delivery = producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
        with_records.insert(delivery.partition);
    }
    // Every fetch fails until the errors are cleared (librdkafka retries about twice a second).
    mock.request_errors(
        RDKafkaApiKey::Fetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNSUPPORTED_COMPRESSION_TYPE; 2_000],
    );

    let dir = tempfile::tempdir().unwrap();
    let (config, admin) = service_config(
        &harness,
        dir.path(),
        &bootstrap,
        [&input, &result, &dlq],
        &[],
    );
    let started = std::time::Instant::now();
    let service = RunningBinary::start(&config);
    let counted = format!(r#"regnotify_consumer_errors_total{{code="{CODE}"}}"#);
    let metrics_url = format!("{admin}/metrics");
    let readyz_url = format!("{admin}/readyz");

    until("the error to be counted", &metrics_url, WAIT, |_, body| {
        value(&own_parse(body), &counted) >= 1.0
    })
    .await;
    let (_, body) = until(
        "readyz to name the error",
        &readyz_url,
        WAIT,
        |status, body| status == 503 && body.contains(CODE),
    )
    .await;
    assert!(
        started.elapsed() >= regnotify::observe::CONSUMER_ERROR_PERSIST_AFTER,
        "not before the error persisted: {body}"
    );
    assert!(
        body.contains("librdkafka does not say which partition"),
        "no partition is invented: {body}"
    );
    // From librdkafka's statistics: the partitions with records whose position does not move.
    let stuck: Vec<String> = with_records.iter().map(i32::to_string).collect();
    let stuck = format!("partitions {} have records waiting", stuck.join(", "));
    let (_, body) = until(
        "readyz to name the stuck partitions",
        &readyz_url,
        WAIT,
        |status, body| status == 503 && body.contains(&stuck),
    )
    .await;
    println!("readyz while the error persists: {body}");

    let (_, text) = get(&metrics_url).await;
    let samples = parse_exposition(&text);
    let errors = value(&samples, &counted);
    let failing_for = started.elapsed();
    assert!(errors >= 10.0, "the error repeats: {errors}");
    assert_eq!(
        value(
            &samples,
            &format!(r#"regnotify_consumer_error_active{{code="{CODE}"}}"#)
        ),
        1.0
    );
    assert!(
        value(
            &samples,
            &format!(r#"regnotify_kafka_client_errors_total{{code="{CODE}"}}"#)
        ) >= errors,
        "librdkafka reports each consumer error to the client context too"
    );
    // One line per 10 s per (code, partition), not one per retry.
    let most = failing_for.as_secs() / 10 + 1;
    for message in ["kafka consumer error", "kafka client error"] {
        let lines = service
            .logged(message)
            .into_iter()
            .filter(|line| line["code"] == CODE)
            .count() as u64;
        assert!(
            (1..=most).contains(&lines),
            "{lines} `{message}` lines in {failing_for:?} for {errors} errors"
        );
    }
    assert_eq!(
        service
            .logged("kafka consumer error persists; /readyz answers 503 until it is over")
            .len(),
        1
    );

    // The broker serves fetches again: the records flow, and after a quiet interval the error is
    // over and the service ready.
    mock.clear_request_errors(RDKafkaApiKey::Fetch);
    let recovering = std::time::Instant::now();
    let consumed = |body: &str| -> f64 {
        own_parse(body)
            .iter()
            .filter(|(series, _)| series.starts_with("regnotify_events_consumed_total{"))
            .map(|(_, v)| v)
            .sum()
    };
    until(
        "the records to be consumed",
        &metrics_url,
        WAIT,
        |_, body| consumed(body) == f64::from(produced),
    )
    .await;
    let (_, body) = until("readyz to recover", &readyz_url, WAIT, |status, _| {
        status == 200
    })
    .await;
    assert!(
        recovering.elapsed()
            >= regnotify::observe::CONSUMER_ERROR_CLEAR_AFTER - Duration::from_secs(1),
        "ready again only after a quiet interval: {body}"
    );
    let (_, text) = get(&metrics_url).await;
    let samples = own_parse(&text);
    assert_eq!(
        value(
            &samples,
            &format!(r#"regnotify_consumer_error_active{{code="{CODE}"}}"#)
        ),
        0.0
    );
    let total = value(&samples, &counted) as u64;
    let lines = service.stop().await;

    // Every error was either logged or counted into a later line: nothing vanished unseen.
    let of_code = |message: &str| -> Vec<serde_json::Value> {
        json_lines(&lines, message)
            .into_iter()
            .filter(|line| line["code"] == CODE)
            .collect()
    };
    let suppressed = |line: &serde_json::Value| line["suppressed"].as_u64().unwrap();
    let written = of_code("kafka consumer error");
    let over = of_code("kafka consumer error over");
    assert_eq!(over.len(), 1, "one line when the error ends");
    let accounted: u64 = written.iter().map(|line| 1 + suppressed(line)).sum::<u64>()
        + over.iter().map(suppressed).sum::<u64>();
    assert_eq!(accounted, total, "{written:?} {over:?}");
    assert_eq!(over[0]["reports"].as_u64(), Some(total));
}

/// An input topic that does not exist (a typo, a topic not yet created): librdkafka says so once,
/// and the group is joined with no partition, which used to look ready. `/readyz` answers 503 at
/// once naming the error, and 200 once the topic exists and its partitions are assigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_input_topic_is_named_by_readyz_until_it_exists() {
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::DefaultProducerContext;

    let harness = Harness::new(1, vec![]).await;
    let mock: MockCluster<'static, DefaultProducerContext> = MockCluster::new(1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let (input, result, dlq) = (
        common::unique("missing"),
        common::unique("result"),
        common::unique("dlq"),
    );
    mock.create_topic(&result, 1, 1).unwrap();
    mock.create_topic(&dlq, 1, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // librdkafka looks for the topic again at each metadata refresh (5 min by default).
    let (config, admin) = service_config(
        &harness,
        dir.path(),
        &bootstrap,
        [&input, &result, &dlq],
        &[("topic.metadata.refresh.interval.ms", "1000")],
    );
    let service = RunningBinary::start(&config);
    let readyz_url = format!("{admin}/readyz");
    let (_, body) = until(
        "readyz to name the missing topic",
        &readyz_url,
        WAIT,
        |status, body| {
            status == 503 && body.contains("kafka consumer error UnknownTopicOrPartition")
        },
    )
    .await;
    println!("readyz without the input topic: {body}");
    assert_eq!(
        service
            .logged("kafka consumer error persists; /readyz answers 503 until it is over")
            .len(),
        1
    );

    mock.create_topic(&input, 2, 1).unwrap();
    until("readyz to recover", &readyz_url, WAIT, |status, _| {
        status == 200
    })
    .await;
    let (_, text) = get(&format!("{admin}/metrics")).await;
    let samples = parse_exposition(&text);
    assert!(
        value(
            &samples,
            r#"regnotify_consumer_errors_total{code="UnknownTopicOrPartition"}"#
        ) >= 1.0,
        "{text}"
    );
    assert_eq!(
        value(
            &samples,
            r#"regnotify_consumer_error_active{code="UnknownTopicOrPartition"}"#
        ),
        0.0
    );
    let lines = service.stop().await;
    assert_eq!(json_lines(&lines, "kafka consumer error over").len(), 1);
}
