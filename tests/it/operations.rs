//! What an SRE relies on: `/metrics` counts what happened and parses as Prometheus text,
//! `/readyz` and `/healthz` answer as specified, a Kafka error that persists is counted, named by
//! `/readyz` and logged without a flood, and no key or signature ever reaches a log line, a metric
//! or an error message — checked on the real `regnotify run` binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

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

use common::{Harness, event, eventually, service};

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
    let Some(output) = reference_parser(text, &[]) else {
        return own_parse(text);
    };
    output
        .lines()
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Runs the reference parser (tests/external_prometheus/parse.py, prometheus-client) on `text`
/// with `args` and returns what it printed; fails on text it refuses. `None` when
/// prometheus-client is not installed, which fails instead where CI requires it.
fn reference_parser(text: &str, args: &[&str]) -> Option<String> {
    let external = Command::new("python3")
        .arg("tests/external_prometheus/parse.py")
        .args(args)
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
        return None;
    }
    let output = external.unwrap();
    assert!(
        output.status.success(),
        "not valid exposition text: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(String::from_utf8(output.stdout).unwrap())
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

// The Prometheus recorder is one per process, and the suites run side by side in one test
// binary: exact counts need a process of their own, so this test runs in a child process of
// the test binary (`rusty-fork`), with nothing else recording into it.
rusty_fork::rusty_fork_test! {
    #![rusty_fork(timeout_ms = 300_000)]
    #[test]
    fn metrics_count_what_happened_and_health_endpoints_answer() {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(count_what_happened_and_answer_health_checks());
    }
}

async fn count_what_happened_and_answer_health_checks() {
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

/// The running `regnotify run` binary: its stderr is read line by line as it comes, and it is
/// killed if the test ends early.
struct RunningBinary {
    child: Option<std::process::Child>,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl RunningBinary {
    fn start(config: &std::path::Path) -> RunningBinary {
        RunningBinary::start_with(config, &[])
    }

    /// With settings from `REGNOTIFY_…` variables on top of the file.
    fn start_with(config: &std::path::Path, environment: &[(&str, &str)]) -> RunningBinary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_regnotify"))
            .args(["run", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .envs(environment.iter().copied())
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
    let (private_key, public_key) = service::harness_key_files(harness, &dir.join("keys"));
    let admin_port = service::free_port();
    let mut child = service::ChildConfig::new(
        harness,
        &harness.simulator.base_url(),
        &private_key,
        &public_key,
    );
    child.bootstrap = bootstrap.to_owned();
    child.group = common::unique("group");
    child.topics = topics.map(str::to_owned);
    child.registry = None;
    // As the harness does: members notice a rebalance within half a second, and a member that
    // left is given up after 6 s rather than librdkafka's default 45 s.
    child.consumer = [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
    ]
    .iter()
    .chain(consumer)
    .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
    .collect();
    child.processing = vec![r#"commit_interval = "100ms""#.into()];
    child.admin_listen = format!("127.0.0.1:{admin_port}");
    let config = child.write(dir);
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

/// The real binary against a mock cluster of its own (so that the input topic can be missing at
/// start even when the suite runs against a real broker) whose result topic (`result_partitions`)
/// and DLQ exist and whose input topic does not yet; librdkafka looks for it again every second
/// (at each metadata refresh, 5 min by default).
struct MissingInput {
    mock: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    input: String,
    admin: String,
    service: RunningBinary,
    /// The configuration and keys the service reads: kept until the test ends.
    dir: tempfile::TempDir,
}

impl MissingInput {
    fn start(harness: &Harness, result_partitions: i32) -> MissingInput {
        let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
        let (input, result, dlq) = (
            common::unique("missing"),
            common::unique("result"),
            common::unique("dlq"),
        );
        mock.create_topic(&result, result_partitions, 1).unwrap();
        mock.create_topic(&dlq, 1, 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (config, admin) = service_config(
            harness,
            dir.path(),
            &mock.bootstrap_servers(),
            [&input, &result, &dlq],
            &[("topic.metadata.refresh.interval.ms", "1000")],
        );
        let service = RunningBinary::start(&config);
        MissingInput {
            mock,
            input,
            admin,
            service,
            dir,
        }
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
    let harness = Harness::new(1, vec![]).await;
    let MissingInput {
        mock,
        input,
        admin,
        service,
        dir: _dir,
    } = MissingInput::start(&harness, 1);
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

/// Every metric the Grafana dashboard (`docker/grafana/dashboards/regnotify.json`: every panel's
/// and nested row's `targets[].expr`, and the template variables' queries), the alert rules
/// (`docker/prometheus/alerts.yaml`, which must exist, and `docker/kubernetes/prometheusrule.yaml`
/// when it does: every `expr`) and the README (the metrics table, whose type column must match,
/// and every other `regnotify_…` name it mentions) name is in the real binary's `/metrics`, as
/// `# TYPE` says (checked by our reading of the `# TYPE` lines and by prometheus-client's parser,
/// which must agree). In PromQL a name inside `rate()`, `irate()` or `increase()` must be a
/// counter or a histogram's series, a `_bucket`/`_sum`/`_count` name a histogram's, and
/// `histogram_quantile()` must read a histogram's `_bucket`; a histogram is never named bare. A
/// recording rule's `record:` name is not a metric of the service. The failure lists every name
/// missing or mistyped and where it is named.
///
/// No metric is faked: the service is run through what makes each appear, and the names are
/// checked twice. At start, before any partition is assigned or any event taken (the input topic
/// does not exist yet), every named metric must already be exported except those in
/// [`APPEAR_LATER`], which says what makes each appear. The series exported from start come from
/// `observe::exported` (the label-free metrics, the fixed label sets, one set per configured MPP,
/// and `invariant_violations_total` for every check the pipeline reports: read here from the
/// source, so a check not listed there fails this test) and from the service's own start
/// (`build_info`, `key_version` and `circuit_state` per MPP). Then the topic is created and the
/// service runs through successes, a refusal dead-lettered, an invalid event, an undecodable
/// record and an unknown answer retried, and waits for librdkafka's statistics (every 5 s): now
/// every named metric must be there.
///
/// Exceptions (named but never exported): none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_alerts_and_readme_name_is_exported_with_its_type() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use regnotify::codec::EventEncoder;
    use regnotify::config::InputEncoding;

    let (uses, mut problems) =
        metric_uses::everywhere(std::path::Path::new(env!("CARGO_MANIFEST_DIR")));
    let rules = vec![
        FaultRule::for_prefix("M-REF-", result("F", "INVALID_CLIENT")),
        FaultRule::for_prefix("M-U1-", result("U", "UNKNOWN_EXCEPTION")).times(1),
    ];
    let harness = Harness::new(1, rules).await;
    let MissingInput {
        mock,
        input,
        admin,
        service,
        dir: _dir,
    } = MissingInput::start(&harness, 2);
    let bootstrap = mock.bootstrap_servers();
    let metrics_url = format!("{admin}/metrics");
    until(
        "readyz to name the missing input topic",
        &format!("{admin}/readyz"),
        WAIT,
        |status, body| status == 503 && body.contains("UnknownTopicOrPartition"),
    )
    .await;
    let (_, text) = get(&metrics_url).await;
    let from_start: Vec<metric_uses::Use> = uses
        .iter()
        .filter(|use_| !APPEAR_LATER.iter().any(|(name, _)| *name == use_.name))
        .cloned()
        .collect();
    let at_start = metric_uses::check(&from_start, &own_types(&text));

    mock.create_topic(&input, 2, 1).unwrap();
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let encoder = EventEncoder::new(InputEncoding::SingleObject, None, &input).unwrap();
    let mut records = Vec::new();
    for event in [
        event("M-OK-1", "R-1"),
        event("M-OK-2", "R-2"),
        event("M-REF-1", "R-3"),
        event("M-U1-1", "R-4"),
        event("", "R-5"),
    ] {
        let value = encoder.encode(&event).await.unwrap();
        records.push((event.reference_merchant_id.into_bytes(), value));
    }
    records.push((b"M-POISON".to_vec(), b"\x01garbage".to_vec()));
    for (key, value) in &records {
        let record = FutureRecord::to(&input)
            .key(key.as_slice())
            .payload(value.as_slice());
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
    }
    let sum_of = |samples: &BTreeMap<String, f64>, family: &str| -> f64 {
        samples
            .iter()
            .filter(|(series, _)| series.starts_with(&format!("{family}{{")))
            .map(|(_, value)| value)
            .sum()
    };
    until(
        "all six records to finish",
        &metrics_url,
        WAIT,
        |_, body| {
            let samples = own_parse(body);
            sum_of(&samples, "regnotify_outcomes_total") == 5.0
                && value(
                    &samples,
                    r#"regnotify_dead_letters_total{reason="DECODE_ERROR"}"#,
                ) == 1.0
        },
    )
    .await;
    // The statistics-fed gauges come within 5 s; the test waits a little longer for every name,
    // then reports what is still missing.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        let (_, text) = get(&metrics_url).await;
        if metric_uses::check(&uses, &own_types(&text)).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (_, text) = get(&metrics_url).await;
    service.stop().await;

    let types = own_types(&text);
    if let Some(reference) = reference_parser(&text, &["--families"]) {
        let external: BTreeMap<String, String> = reference
            .lines()
            .filter_map(|line| line.split_once(' '))
            .map(|(name, kind)| (name.to_string(), kind.to_string()))
            .collect();
        assert_eq!(
            types, external,
            "our reading of `# TYPE` and prometheus-client's disagree"
        );
    }
    let at_end = metric_uses::check(&uses, &types);
    problems.extend(
        at_start
            .into_iter()
            .filter(|problem| !at_end.contains(problem))
            .map(|problem| {
                format!("{problem}: at start, before any event (or list it in APPEAR_LATER)")
            }),
    );
    problems.extend(at_end);
    let samples = parse_exposition(&text);
    for check in metric_uses::invariant_checks(std::path::Path::new(env!("CARGO_MANIFEST_DIR"))) {
        let series = format!(r#"regnotify_invariant_violations_total{{check="{check}"}}"#);
        if !samples.contains_key(&series) {
            problems.push(format!(
                "{series}: the pipeline reports this check (src/pipeline) but it is not exported \
                 from start: list it in src/observe/exported.rs"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} problem(s) with the metrics the dashboard, the alert rules and the README name:\n{}\n\
         exported: {types:?}",
        problems.len(),
        problems.join("\n")
    );
}

/// The metrics that cannot be exported from start, and what makes each appear: their labels are
/// known only then (partitions, Kafka error codes, result codes), or a zero would be a claim
/// nobody made (brokers up, lag, committed offset).
const APPEAR_LATER: [(&str, &str); 15] = [
    (
        "regnotify_events_consumed_total",
        "an assignment (zero per partition)",
    ),
    (
        "regnotify_skipped_finished_total",
        "an assignment (zero per partition)",
    ),
    (
        "regnotify_partition_restarts_total",
        "an assignment (zero per partition)",
    ),
    (
        "regnotify_stalled_events_total",
        "an assignment (zero per partition)",
    ),
    (
        "regnotify_pending_events",
        "the dispatcher's first turn after an assignment",
    ),
    ("regnotify_consumer_lag_seconds", "an assignment"),
    ("regnotify_oldest_unfinished_seconds", "an assignment"),
    ("regnotify_committed_offset", "the first commit"),
    ("regnotify_finished_note_bytes", "the first commit"),
    ("regnotify_outcomes_total", "the first outcome"),
    (
        "regnotify_consumer_lag",
        "librdkafka's first statistics after an assignment",
    ),
    (
        "regnotify_kafka_brokers_up",
        "librdkafka's first statistics (every 5 s)",
    ),
    (
        "regnotify_consumer_errors_total",
        "the first consumer error of a code",
    ),
    (
        "regnotify_kafka_client_errors_total",
        "the first client error of a code",
    ),
    (
        "regnotify_consumer_error_active",
        "the first consumer error of a code that persists",
    ),
];

/// `name → type` from the `# TYPE` lines of exposition text.
fn own_types(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.trim().to_string()))
        .collect()
}

/// Where the dashboard, the alert rules and the README name a metric, and what each use needs of
/// it. Plain text and JSON reading, no I/O beyond reading those files.
mod metric_uses {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    pub const DASHBOARD: &str = "docker/grafana/dashboards/regnotify.json";
    pub const ALERTS: &str = "docker/prometheus/alerts.yaml";
    pub const PROMETHEUS_RULE: &str = "docker/kubernetes/prometheusrule.yaml";
    pub const README: &str = "README.md";

    /// Functions over a range vector that only make sense of a counter (or a histogram's series).
    const COUNTER_FUNCTIONS: [&str; 4] = ["rate", "irate", "increase", "resets"];
    /// PromQL keywords followed by a parenthesised list of label names, not an expression.
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

    /// One place that names a metric.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Use {
        /// As written: with a histogram's `_bucket`, `_sum` or `_count` when PromQL names those.
        pub name: String,
        pub place: String,
        pub how: How,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum How {
        /// In a PromQL expression; `calls` are the enclosing function calls, outermost first.
        PromQl { calls: Vec<String> },
        /// In the README's metrics table, which states the type.
        Table { stated: String },
        /// Mentioned in prose.
        Mentioned,
    }

    /// A metric name in PromQL, with the function calls around it (outermost first).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Reference {
        pub name: String,
        pub calls: Vec<String>,
    }

    /// Every use in the dashboard, the rule files and the README under `root`, and the problems
    /// found reading them (a required file missing).
    pub fn everywhere(root: &Path) -> (Vec<Use>, Vec<String>) {
        let mut uses = Vec::new();
        let mut problems = Vec::new();
        let read = |file: &str| std::fs::read_to_string(root.join(file));
        match read(DASHBOARD) {
            Ok(text) => {
                let json = serde_json::from_str(&text)
                    .unwrap_or_else(|error| panic!("{DASHBOARD} is not JSON: {error}"));
                let expressions = dashboard_expressions(&json);
                if expressions.is_empty() {
                    problems.push(format!("{DASHBOARD}: no panel target `expr` found"));
                }
                for (expr, place) in expressions {
                    uses.extend(promql_uses(
                        &expr,
                        &format!("{DASHBOARD}: {place}"),
                        &BTreeSet::new(),
                    ));
                }
            }
            Err(error) => problems.push(format!("{DASHBOARD}: cannot be read: {error}")),
        }
        for (file, required) in [(ALERTS, true), (PROMETHEUS_RULE, false)] {
            match read(file) {
                Ok(text) => {
                    let (expressions, recorded) = rule_expressions(&text);
                    if expressions.is_empty() {
                        problems.push(format!("{file}: no `expr:` found"));
                    }
                    for (expr, place) in expressions {
                        uses.extend(promql_uses(&expr, &format!("{file}:{place}"), &recorded));
                    }
                }
                Err(error) if required => problems.push(format!(
                    "{file}: cannot be read ({error}); the alert rules must exist and name only \
                     exported metrics"
                )),
                Err(_) => {}
            }
        }
        match read(README) {
            Ok(text) => {
                let named = readme_uses(&text);
                if !named
                    .iter()
                    .any(|use_| matches!(use_.how, How::Table { .. }))
                {
                    problems.push(format!(
                        "{README}: no metrics table row (`| `regnotify_…` | type | labels |`) found"
                    ));
                }
                uses.extend(named);
            }
            Err(error) => problems.push(format!("{README}: cannot be read: {error}")),
        }
        (uses, problems)
    }

    fn promql_uses(expr: &str, place: &str, recorded: &BTreeSet<String>) -> Vec<Use> {
        metric_references(expr)
            .into_iter()
            .filter(|reference| !recorded.contains(&reference.name))
            .map(|reference| Use {
                name: reference.name,
                place: place.to_string(),
                how: How::PromQl {
                    calls: reference.calls,
                },
            })
            .collect()
    }

    /// What is wrong with each use, given the exposition's `name → type`; empty when nothing.
    pub fn check(uses: &[Use], types: &BTreeMap<String, String>) -> Vec<String> {
        let mut problems: Vec<String> = uses
            .iter()
            .filter_map(|use_| {
                problem(use_, types).map(|why| format!("{}: {why} ({})", use_.name, use_.place))
            })
            .collect();
        problems.dedup();
        problems
    }

    fn problem(use_: &Use, types: &BTreeMap<String, String>) -> Option<String> {
        let name = use_.name.as_str();
        let (kind, suffix) = match types.get(name) {
            Some(kind) => (kind.as_str(), None),
            None => {
                let Some((base, suffix)) = HISTOGRAM_SUFFIXES
                    .iter()
                    .find_map(|suffix| Some((name.strip_suffix(suffix)?, *suffix)))
                else {
                    return Some("not exported".into());
                };
                let Some(kind) = types.get(base) else {
                    return Some(format!("not exported (nor is {base})"));
                };
                if kind != "histogram" {
                    return Some(format!(
                        "{base} is exported as a {kind}, which has no {suffix}"
                    ));
                }
                (kind.as_str(), Some(suffix))
            }
        };
        match &use_.how {
            How::Table { stated } if stated != kind => {
                Some(format!("the README says {stated}, exported as a {kind}"))
            }
            How::PromQl { calls } => {
                if kind == "histogram" && suffix.is_none() {
                    return Some(
                        "a histogram has no series of its bare name: use _bucket, _sum or _count"
                            .into(),
                    );
                }
                let innermost = calls.last().map(String::as_str).unwrap_or_default();
                if COUNTER_FUNCTIONS.contains(&innermost) && kind != "counter" && suffix.is_none() {
                    return Some(format!("{innermost}() of a {kind}; it needs a counter"));
                }
                if calls.iter().any(|call| call == "histogram_quantile")
                    && suffix != Some("_bucket")
                {
                    return Some("histogram_quantile() needs a histogram's _bucket series".into());
                }
                None
            }
            _ => None,
        }
    }

    /// The metric names (`regnotify_…`) in a PromQL expression, each with the function calls
    /// around it. Strings, label matchers `{…}`, ranges `[…]`, label lists (`by (…)`) and
    /// comments are skipped; Grafana's `$variables` are harmless there.
    pub fn metric_references(expr: &str) -> Vec<Reference> {
        let chars: Vec<char> = expr.chars().collect();
        let mut references = Vec::new();
        let mut calls: Vec<String> = Vec::new();
        let mut at = 0;
        while at < chars.len() {
            let c = chars[at];
            if matches!(c, '"' | '\'' | '`') {
                at = past_string(&chars, at);
            } else if c == '{' {
                at = past(&chars, at, '}');
            } else if c == '[' {
                at = past(&chars, at, ']');
            } else if c == '#' {
                while at < chars.len() && chars[at] != '\n' {
                    at += 1;
                }
            } else if c == '(' {
                calls.push(String::new());
                at += 1;
            } else if c == ')' {
                calls.pop();
                at += 1;
            } else if c.is_ascii_digit() || c == '.' {
                while at < chars.len() && (chars[at].is_ascii_alphanumeric() || chars[at] == '.') {
                    at += 1;
                }
            } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
                let start = at;
                while at < chars.len()
                    && (chars[at].is_ascii_alphanumeric() || matches!(chars[at], '_' | ':'))
                {
                    at += 1;
                }
                let word: String = chars[start..at].iter().collect();
                let mut next = at;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                if chars.get(next) == Some(&'(') {
                    if LABEL_LISTS.contains(&word.to_ascii_lowercase().as_str()) {
                        at = past(&chars, next, ')');
                    } else {
                        calls.push(word.to_ascii_lowercase());
                        at = next + 1;
                    }
                } else if word.starts_with("regnotify_") {
                    references.push(Reference {
                        name: word,
                        calls: calls.clone(),
                    });
                }
            } else {
                at += 1;
            }
        }
        references
    }

    /// The index just past the string that opens at `open`.
    fn past_string(chars: &[char], open: usize) -> usize {
        let quote = chars[open];
        let mut at = open + 1;
        while at < chars.len() && chars[at] != quote {
            at += if chars[at] == '\\' { 2 } else { 1 };
        }
        at + 1
    }

    /// The index just past the `close` that ends what opens at `open`, strings skipped.
    fn past(chars: &[char], open: usize, close: char) -> usize {
        let mut at = open + 1;
        while at < chars.len() && chars[at] != close {
            at = if matches!(chars[at], '"' | '\'' | '`') {
                past_string(chars, at)
            } else {
                at + 1
            };
        }
        at + 1
    }

    /// Every PromQL expression of a Grafana dashboard, with where it is: each panel's
    /// `targets[].expr` (panels of collapsed rows included) and each template variable's query.
    pub fn dashboard_expressions(dashboard: &serde_json::Value) -> Vec<(String, String)> {
        let mut found = Vec::new();
        walk_panels(dashboard["panels"].as_array(), "", &mut found);
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let query = &variable["query"];
            let query = query.as_str().or_else(|| query["query"].as_str());
            if let Some(query) = query {
                let name = variable["name"].as_str().unwrap_or("?");
                found.push((query.to_string(), format!("variable \"{name}\"")));
            }
        }
        found
    }

    fn walk_panels(
        panels: Option<&Vec<serde_json::Value>>,
        row: &str,
        found: &mut Vec<(String, String)>,
    ) {
        // A row that is not collapsed holds its panels after it, at the top level.
        let mut row = row.to_string();
        for panel in panels.into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("untitled");
            if panel["type"] == "row" {
                row = title.to_string();
                walk_panels(panel["panels"].as_array(), title, found);
                continue;
            }
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    found.push((
                        expr.to_string(),
                        format!(
                            "panel \"{row} / {title}\" (id {}), target {}",
                            panel["id"],
                            target["refId"].as_str().unwrap_or("?")
                        ),
                    ));
                }
            }
        }
    }

    /// One line of a rule file: its indentation, whether it opens a list item, its key and value.
    struct Line<'a> {
        indent: usize,
        item: bool,
        /// The column of the key, after a list item's `- `.
        column: usize,
        key: &'a str,
        value: &'a str,
    }

    fn line(text: &str) -> Option<Line<'_>> {
        let trimmed = text.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            return None;
        }
        let indent = text.len() - trimmed.len();
        let (item, column, rest) = match trimmed.strip_prefix('-') {
            Some(rest) if rest.is_empty() || rest.starts_with(' ') => {
                let body = rest.trim_start();
                (true, text.len() - body.len(), body)
            }
            _ => (false, indent, trimmed),
        };
        let (key, value) = rest.split_once(':').unwrap_or((rest, ""));
        Some(Line {
            indent,
            item,
            column,
            key: key.trim(),
            value: value.trim(),
        })
    }

    fn unquote(value: &str) -> String {
        if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
            return inner.replace("\\\"", "\"").replace("\\\\", "\\");
        }
        if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
            return inner.replace("''", "'");
        }
        value.to_string()
    }

    /// Every `expr:` of a Prometheus rule file (plain, quoted or a `|`/`>` block), each with
    /// `line N alert X` or `line N record X`; and the names recording rules define.
    pub fn rule_expressions(text: &str) -> (Vec<(String, String)>, BTreeSet<String>) {
        let lines: Vec<Option<Line<'_>>> = text.lines().map(line).collect();
        let raw: Vec<&str> = text.lines().collect();
        let recorded = lines
            .iter()
            .flatten()
            .filter(|line| line.key == "record")
            .map(|line| unquote(line.value))
            .collect();
        let mut found = Vec::new();
        for (index, current) in lines.iter().enumerate() {
            let Some(current) = current.as_ref().filter(|line| line.key == "expr") else {
                continue;
            };
            // The lines indented deeper than the key continue its value.
            let continued: Vec<&str> = raw[index + 1..]
                .iter()
                .take_while(|text| {
                    let trimmed = text.trim_start();
                    trimmed.is_empty() || text.len() - trimmed.len() > current.column
                })
                .map(|text| text.trim())
                .collect();
            let expr = if current.value.starts_with(['|', '>']) {
                continued.join("\n")
            } else {
                unquote(
                    &std::iter::once(current.value)
                        .chain(continued)
                        .collect::<Vec<_>>()
                        .join(" "),
                )
            };
            found.push((
                expr,
                format!("{} {}", index + 1, rule_name(&lines, index, current.column)),
            ));
        }
        (found, recorded)
    }

    /// `alert X` or `record X`: the name of the rule whose item holds line `at`.
    fn rule_name(lines: &[Option<Line<'_>>], at: usize, column: usize) -> String {
        let named = |line: &Line<'_>| {
            (line.column == column && matches!(line.key, "alert" | "record"))
                .then(|| format!("{} {}", line.key, unquote(line.value)))
        };
        for line in lines[..=at].iter().rev().flatten() {
            if let Some(name) = named(line) {
                return name;
            }
            if (line.item && line.column == column) || line.indent < column {
                break;
            }
        }
        for line in lines[at + 1..].iter().flatten() {
            if line.indent < column {
                break;
            }
            if let Some(name) = named(line) {
                return name;
            }
        }
        "(unnamed rule)".into()
    }

    /// The metrics the README names: the metrics table's rows (`| \`regnotify_…\` | type | …`),
    /// with their stated type, and every other `regnotify_…` it mentions.
    pub fn readme_uses(text: &str) -> Vec<Use> {
        let mut uses = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let place = format!("{README}:{}", index + 1);
            if line.starts_with("| `regnotify_") {
                let cells: Vec<&str> = line.split('|').collect();
                let stated: String = cells[2]
                    .trim()
                    .chars()
                    .take_while(char::is_ascii_alphabetic)
                    .collect();
                for name in names_in(cells[1]) {
                    uses.push(Use {
                        name,
                        place: format!("{place} (metrics table)"),
                        how: How::Table {
                            stated: stated.clone(),
                        },
                    });
                }
                continue;
            }
            for name in names_in(line) {
                uses.push(Use {
                    name,
                    place: place.clone(),
                    how: How::Mentioned,
                });
            }
        }
        uses
    }

    fn names_in(text: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("regnotify_") {
            let preceded = rest[..start].chars().next_back();
            let tail = &rest[start..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if !preceded.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                names.push(tail[..end].to_string());
            }
            rest = &tail[end..];
        }
        names
    }

    /// The text of a call's arguments, up to the parenthesis that closes it (`rest` starts just
    /// after the opening one).
    fn call_arguments(rest: &str) -> String {
        let chars: Vec<char> = rest.chars().collect();
        let (mut depth, mut at) = (0_usize, 0);
        while at < chars.len() {
            match chars[at] {
                '"' => {
                    at = past_string(&chars, at);
                    continue;
                }
                '(' => depth += 1,
                ')' if depth == 0 => break,
                ')' => depth -= 1,
                _ => {}
            }
            at += 1;
        }
        chars[..at.min(chars.len())].iter().collect()
    }

    /// The `check` names the pipeline passes to `invariant::take` and `invariant::expect` (the
    /// last string literal of each call), read from `src/pipeline` under `root`.
    pub fn invariant_checks(root: &Path) -> BTreeSet<String> {
        let mut checks = BTreeSet::new();
        let directory = root.join("src/pipeline");
        for entry in std::fs::read_dir(&directory).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|extension| extension != "rs") {
                continue;
            }
            let source = std::fs::read_to_string(&path).unwrap();
            for call in ["invariant::take(", "invariant::expect("] {
                for (start, _) in source.match_indices(call) {
                    let arguments = call_arguments(&source[start + call.len()..]);
                    let literal = arguments.rsplit('"').nth(1).unwrap_or_else(|| {
                        panic!("{}: no check name in {arguments}", path.display())
                    });
                    checks.insert(literal.to_string());
                }
            }
        }
        checks
    }
}

/// The PromQL, rule-file and README readings the metric-name test relies on.
#[test]
fn metric_uses_are_read_from_promql_rules_dashboards_and_the_readme() {
    use metric_uses::*;

    let names = |expr: &str| -> Vec<(String, Vec<String>)> {
        metric_references(expr)
            .into_iter()
            .map(|reference| (reference.name, reference.calls))
            .collect()
    };
    assert_eq!(
        names(
            r#"histogram_quantile(0.99, sum by (le) (rate(regnotify_notify_latency_seconds_bucket{instance=~"$instance",x="regnotify_no"}[$__rate_interval])))"#
        ),
        vec![(
            "regnotify_notify_latency_seconds_bucket".to_string(),
            vec!["histogram_quantile".into(), String::new(), "rate".into()]
        )]
    );
    assert_eq!(
        names(
            "max by (partition) (regnotify_a) / on (partition) group_left regnotify_b offset 5m > 0.5 # regnotify_c"
        ),
        vec![
            ("regnotify_a".to_string(), vec![String::new()]),
            ("regnotify_b".to_string(), vec![])
        ]
    );
    assert_eq!(
        names("up == 0 and label_values(regnotify_x, instance)")[0].1,
        vec!["label_values"]
    );

    let rules = r#"
groups:
  - name: regnotify
    rules:
      - record: regnotify:lag:max
        expr: max(regnotify_consumer_lag)
      - alert: Stalled
        expr: |
          increase(regnotify_stalled_events_total[5m])
            > 0
        for: 1m
      - expr: 'regnotify_in_flight > 0'
        alert: "Busy"
      - alert: Plain
        expr: regnotify_a
          + regnotify_b
        labels:
          severity: page
"#;
    let (expressions, recorded) = rule_expressions(rules);
    assert_eq!(
        expressions,
        vec![
            (
                "max(regnotify_consumer_lag)".to_string(),
                "6 record regnotify:lag:max".to_string()
            ),
            (
                "increase(regnotify_stalled_events_total[5m])\n> 0".to_string(),
                "8 alert Stalled".to_string()
            ),
            (
                "regnotify_in_flight > 0".to_string(),
                "12 alert Busy".to_string()
            ),
            (
                "regnotify_a + regnotify_b".to_string(),
                "15 alert Plain".to_string()
            ),
        ]
    );
    assert!(recorded.contains("regnotify:lag:max"));

    let dashboard = serde_json::json!({
        "panels": [
            {"type": "row", "title": "Open", "id": 1, "panels": []},
            {"type": "stat", "title": "A", "id": 2, "targets": [{"refId": "A", "expr": "regnotify_a"}]},
            {"type": "row", "title": "Closed", "id": 3, "collapsed": true, "panels": [
                {"type": "timeseries", "title": "B", "id": 4, "targets": [{"refId": "B", "expr": "regnotify_b"}]}
            ]}
        ],
        "templating": {"list": [{"name": "instance", "query": {"query": "label_values(regnotify_c, instance)"}}]}
    });
    assert_eq!(
        dashboard_expressions(&dashboard),
        vec![
            (
                "regnotify_a".to_string(),
                "panel \"Open / A\" (id 2), target A".to_string()
            ),
            (
                "regnotify_b".to_string(),
                "panel \"Closed / B\" (id 4), target B".to_string()
            ),
            (
                "label_values(regnotify_c, instance)".to_string(),
                "variable \"instance\"".to_string()
            ),
        ]
    );

    let readme = "x `regnotify_a{psp}` and regnotify_b.\n\
                  | `regnotify_c`, `regnotify_d` | gauge: 0 closed | psp |\n";
    let uses = readme_uses(readme);
    assert_eq!(
        uses.iter()
            .map(|u| (u.name.as_str(), u.how.clone()))
            .collect::<Vec<_>>(),
        vec![
            ("regnotify_a", How::Mentioned),
            ("regnotify_b", How::Mentioned),
            (
                "regnotify_c",
                How::Table {
                    stated: "gauge".into()
                }
            ),
            (
                "regnotify_d",
                How::Table {
                    stated: "gauge".into()
                }
            ),
        ]
    );

    let types: BTreeMap<String, String> = [
        ("regnotify_h", "histogram"),
        ("regnotify_c_total", "counter"),
        ("regnotify_g", "gauge"),
    ]
    .into_iter()
    .map(|(n, t)| (n.to_string(), t.to_string()))
    .collect();
    let promql = |expr: &str| -> Vec<String> {
        let uses: Vec<Use> = metric_references(expr)
            .into_iter()
            .map(|reference| Use {
                name: reference.name,
                place: "here".into(),
                how: How::PromQl {
                    calls: reference.calls,
                },
            })
            .collect();
        check(&uses, &types)
    };
    let fine = "histogram_quantile(0.5, rate(regnotify_h_bucket[5m])) \
                + rate(regnotify_c_total[1m]) + regnotify_g";
    assert_eq!(promql(fine), Vec::<String>::new());
    assert_eq!(
        promql("rate(regnotify_g[5m])"),
        vec!["regnotify_g: rate() of a gauge; it needs a counter (here)"]
    );
    assert_eq!(
        promql("regnotify_h"),
        vec![
            "regnotify_h: a histogram has no series of its bare name: use _bucket, _sum or _count (here)"
        ]
    );
    assert_eq!(
        promql("histogram_quantile(0.5, regnotify_h_count)"),
        vec!["regnotify_h_count: histogram_quantile() needs a histogram's _bucket series (here)"]
    );
    assert_eq!(
        promql("regnotify_g_bucket"),
        vec!["regnotify_g_bucket: regnotify_g is exported as a gauge, which has no _bucket (here)"]
    );
    assert_eq!(
        promql("regnotify_no_such_metric"),
        vec!["regnotify_no_such_metric: not exported (here)"]
    );
    let table = vec![Use {
        name: "regnotify_g".into(),
        place: "README.md:1".into(),
        how: How::Table {
            stated: "counter".into(),
        },
    }];
    assert_eq!(
        check(&table, &types),
        vec!["regnotify_g: the README says counter, exported as a gauge (README.md:1)"]
    );
}

/// Issue 20's time-based health: an event Alipay+ holds for 4 s shows in
/// `regnotify_oldest_unfinished_seconds` and `regnotify_consumer_lag_seconds` of its partition
/// while it waits, is warned about once (`admin.event_stall_after` = 1 s: one log line naming its
/// key, partition, offset and trace id, and `regnotify_stalled_events_total` 1, not one per
/// check), and once it is finished and committed both gauges read 0 again; the event ends with one
/// outcome. On the real binary, whose metrics are its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_event_shows_in_the_time_gauges_and_is_warned_about_once() {
    let slow = Fault::Latency {
        delay: Duration::from_secs(4),
    };
    let harness = Harness::new(1, vec![FaultRule::for_prefix("M-SLOW-", slow)]).await;
    // Single-object framing: the child service has no schema registry.
    harness
        .produce_framed(
            &[event("M-SLOW-1", "R-SLOW-1")],
            common::Framing::SingleObject,
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (config, admin) = service_config(
        &harness,
        dir.path(),
        &harness.kafka.bootstrap,
        [&harness.input, &harness.result, &harness.dlq],
        &[],
    );
    let service = RunningBinary::start_with(
        &config,
        &[
            ("REGNOTIFY_ADMIN__EVENT_STALL_AFTER", "1s"),
            ("REGNOTIFY_ALIPAYPLUS__REQUEST_TIMEOUT", "10s"),
        ],
    );
    let metrics = format!("{admin}/metrics");
    let stalled = r#"regnotify_stalled_events_total{partition="0"}"#;
    let oldest = r#"regnotify_oldest_unfinished_seconds{partition="0"}"#;
    let lag = r#"regnotify_consumer_lag_seconds{partition="0"}"#;
    let (_, text) = until("the stall to be counted", &metrics, WAIT, |_, body| {
        value(&own_parse(body), stalled) >= 1.0
    })
    .await;
    let samples = parse_exposition(&text);
    assert_eq!(value(&samples, stalled), 1.0, "{text}");
    assert!(value(&samples, oldest) >= 1.0, "{text}");
    assert!(value(&samples, lag) >= 1.0, "{text}");
    let (_, text) = until(
        "the event to finish and be committed",
        &metrics,
        WAIT,
        |_, body| {
            let samples = own_parse(body);
            value(&samples, r#"regnotify_committed_offset{partition="0"}"#) >= 1.0
                && value(&samples, oldest) == 0.0
                && value(&samples, lag) == 0.0
        },
    )
    .await;
    // Unfinished for about 4 s, checked every 100 ms: still reported once.
    assert_eq!(value(&parse_exposition(&text), stalled), 1.0, "{text}");
    let lines = service.stop().await;
    let warnings = json_lines(
        &lines,
        "event unfinished for longer than admin.event_stall_after (1s)",
    );
    assert_eq!(warnings.len(), 1, "{lines:#?}");
    let warning = &warnings[0];
    assert_eq!(warning["key"], "M-SLOW-1");
    assert_eq!(warning["partition"], 0);
    assert_eq!(warning["offset"], 0);
    assert_eq!(warning["trace_id"].as_str().map(str::len), Some(32));
    // The event's own lines carry the same trace id.
    let finished = json_lines(&lines, "event finished");
    assert_eq!(finished.len(), 1, "one outcome: {lines:#?}");
    assert_eq!(finished[0]["span"]["trace_id"], warning["trace_id"]);
    let outcomes = harness.outcomes().await;
    assert_eq!(outcomes.len(), 1);
    assert_eq!(outcomes[0].outcome, NotifyOutcome::Notified);
}
