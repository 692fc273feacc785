//! The service's spans in a real trace receiver (Jaeger).

use crate::common;

use std::time::Duration;

use regnotify::inspect::fully_committed;
use regnotify::simulator::rules::{Fault, FaultRule};

use common::{Framing, Harness, event};

use super::WAIT;

/// Jaeger (built from its Go module by `scripts/jaeger.sh install`), running on free loopback
/// ports with the configuration in tests/fixtures/jaeger.yaml; killed on drop.
struct Jaeger {
    child: std::process::Child,
    query: String,
    otlp_http: String,
    otlp_grpc: String,
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Jaeger {
    /// `None` (the test is skipped with a note) when the binary is not built, unless
    /// `REGNOTIFY_REQUIRE_JAEGER` is set: CI builds Jaeger while the real-broker suites run and
    /// then runs this test in a step of its own that requires it.
    async fn start() -> Option<Jaeger> {
        let binary = std::env::var_os("REGNOTIFY_EXTERNAL_JAEGER")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|home| std::path::Path::new(&home).join(".cache/regnotify/go-bin/jaeger"))
            })
            .filter(|path| path.is_file());
        let Some(binary) = binary else {
            assert!(
                std::env::var("REGNOTIFY_REQUIRE_JAEGER").is_err(),
                "jaeger is required: scripts/jaeger.sh install (or set REGNOTIFY_EXTERNAL_JAEGER)"
            );
            common::note("skipped: jaeger not built (scripts/jaeger.sh install)");
            return None;
        };
        let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
        let child = std::process::Command::new(binary)
            .arg(format!(
                "--config=file:{}/tests/fixtures/jaeger.yaml",
                env!("CARGO_MANIFEST_DIR")
            ))
            .env("JAEGER_QUERY_HTTP_PORT", ports[0].to_string())
            .env("JAEGER_QUERY_GRPC_PORT", ports[1].to_string())
            .env("JAEGER_OTLP_HTTP_PORT", ports[2].to_string())
            .env("JAEGER_OTLP_GRPC_PORT", ports[3].to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("jaeger starts");
        let jaeger = Jaeger {
            child,
            query: format!("http://127.0.0.1:{}", ports[0]),
            otlp_http: format!("http://127.0.0.1:{}", ports[2]),
            otlp_grpc: format!("http://127.0.0.1:{}", ports[3]),
        };
        let client = reqwest::Client::new();
        let url = format!("{}/api/services", jaeger.query);
        for _ in 0..300 {
            if let Ok(answer) = client.get(&url).send().await
                && answer.status().is_success()
            {
                return Some(jaeger);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("jaeger did not answer on {url} within 30 s");
    }

    /// The spans Jaeger holds for `trace_id` (its HTTP API, `/api/traces/{id}`), once `done`
    /// accepts them.
    async fn spans(
        &self,
        trace_id: &str,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let url = format!("{}/api/traces/{trace_id}", self.query);
        let client = reqwest::Client::new();
        let mut spans = Vec::new();
        for _ in 0..200 {
            if let Ok(answer) = client.get(&url).send().await
                && answer.status().is_success()
            {
                let body: serde_json::Value = answer.json().await.unwrap();
                spans = body["data"][0]["spans"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if done(&spans) {
                    return spans;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("jaeger never held the expected spans of trace {trace_id}: {spans:#?}");
    }
}

fn tag<'a>(span: &'a serde_json::Value, key: &str) -> Option<&'a serde_json::Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|tag| tag["key"] == key)
        .map(|tag| &tag["value"])
}

/// The span this span is a child of (its `CHILD_OF` reference), as (trace id, span id).
fn parent_of(span: &serde_json::Value) -> Option<(String, String)> {
    span["references"].as_array()?.iter().find_map(|reference| {
        (reference["refType"] == "CHILD_OF").then(|| {
            (
                reference["traceID"].as_str().unwrap_or_default().to_owned(),
                reference["spanID"].as_str().unwrap_or_default().to_owned(),
            )
        })
    })
}

/// Issue 20's acceptance: events carrying a producer's `traceparent` run through the service with
/// export on (over OTLP/HTTP, then over gRPC), and a real trace receiver (Jaeger) holds, for each
/// event, its span under the producer's parent with the messaging attributes and one child span per
/// Alipay+ attempt; the outcome and dead-letter records carry the event span's context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_is_one_span_under_the_producers_with_a_child_per_attempt_in_jaeger() {
    let Some(jaeger) = Jaeger::start().await else {
        return;
    };
    let rules = vec![FaultRule::for_prefix(
        "M-TRC-THR-",
        Fault::result("F", "REQUEST_TRAFFIC_EXCEED_LIMIT"),
    )];
    let harness = Harness::new(1, rules).await;
    // (event, the producer's trace id and span id, attempts expected, over which protocol)
    let cases = [
        (event("M-TRC-OK-1", "R-TRC-OK-1"), 1, "http/protobuf"),
        (event("M-TRC-THR-1", "R-TRC-THR-1"), 3, "http/protobuf"),
        (event("M-TRC-OK-2", "R-TRC-OK-2"), 1, "grpc"),
    ];
    let run = format!("{:016x}", rand_u64());
    let parent = |index: usize| {
        (
            format!("{run}{:016x}", index + 1),
            format!("{:016x}", 0xa0 + index),
        )
    };
    for protocol in ["http/protobuf", "grpc"] {
        for (index, (event, _, _)) in cases
            .iter()
            .enumerate()
            .filter(|(_, case)| case.2 == protocol)
        {
            let (trace_id, span_id) = parent(index);
            let traceparent = format!("00-{trace_id}-{span_id}-01");
            harness
                .produce_raw(
                    event.reference_merchant_id.as_bytes(),
                    &common::encode(event, Framing::Confluent, index),
                    &[
                        ("traceparent", traceparent.as_bytes()),
                        ("tracestate", b"producer=1"),
                    ],
                )
                .await;
        }
        let mut settings = harness.settings();
        settings.telemetry.traces = true;
        settings.telemetry.protocol = Some(if protocol == "grpc" {
            regnotify::config::OtlpProtocol::Grpc
        } else {
            regnotify::config::OtlpProtocol::HttpProtobuf
        });
        settings.telemetry.endpoint = Some(if protocol == "grpc" {
            jaeger.otlp_grpc.clone()
        } else {
            jaeger.otlp_http.clone()
        });
        settings.telemetry.service_name = Some("regnotify-test".into());
        let pipeline = harness.start_pipeline(settings).await;
        assert!(fully_committed(&harness.wait_fully_committed(WAIT).await));
        // Stopping exports what the batch processor still holds.
        pipeline.stop().await;
    }
    let outcomes = harness.read_whole(&harness.result).await;
    let letters = harness.dead_letters().await;
    assert_eq!(outcomes.len(), 3, "one outcome per event");
    assert_eq!(letters.len(), 1, "the throttled event's dead letter");
    for (index, (event, attempts, protocol)) in cases.iter().enumerate() {
        let (trace_id, producer_span) = parent(index);
        let spans = jaeger
            .spans(&trace_id, |spans| {
                spans
                    .iter()
                    .filter(|span| span["operationName"] == "POST")
                    .count()
                    == *attempts
                    && spans
                        .iter()
                        .any(|span| span["operationName"] == format!("process {}", harness.input))
            })
            .await;
        let context = format!("{} ({protocol})", event.reference_merchant_id);
        let event_spans: Vec<_> = spans
            .iter()
            .filter(|span| span["operationName"] == format!("process {}", harness.input))
            .collect();
        assert_eq!(event_spans.len(), 1, "{context}: one span per event");
        let event_span = event_spans[0];
        assert_eq!(
            parent_of(event_span),
            Some((trace_id.clone(), producer_span.clone())),
            "{context}: the event span is the producer's child"
        );
        let event_span_id = event_span["spanID"].as_str().unwrap().to_owned();
        for (key, value) in [
            ("messaging.system", "kafka"),
            ("messaging.destination.name", harness.input.as_str()),
            ("messaging.consumer.group.name", harness.group.as_str()),
            ("messaging.destination.partition.id", "0"),
            ("messaging.kafka.message.key", &event.reference_merchant_id),
            ("regnotify.event_id", &event.event_id),
            (
                "regnotify.registration_request_id",
                &event.registration_request_id,
            ),
            ("span.kind", "consumer"),
        ] {
            assert_eq!(
                tag(event_span, key).and_then(|v| v.as_str()),
                Some(value),
                "{context}: {key}"
            );
        }
        assert!(
            tag(event_span, "messaging.kafka.offset").is_some(),
            "{context}"
        );
        let expected_outcome = if *attempts == 1 {
            "NOTIFIED"
        } else {
            "DEAD_LETTERED"
        };
        assert_eq!(
            tag(event_span, "regnotify.outcome").and_then(|v| v.as_str()),
            Some(expected_outcome),
            "{context}"
        );
        let mut numbers: Vec<i64> = spans
            .iter()
            .filter(|span| span["operationName"] == "POST")
            .map(|span| {
                assert_eq!(
                    parent_of(span),
                    Some((trace_id.clone(), event_span_id.clone())),
                    "{context}: every attempt is the event span's child"
                );
                assert_eq!(
                    tag(span, "url.path").and_then(|v| v.as_str()),
                    Some("/aps/api/v1/merchants/notifyRegistrationStatus")
                );
                assert_eq!(
                    tag(span, "http.response.status_code").and_then(|v| v.as_i64()),
                    Some(200),
                    "{context}"
                );
                tag(span, "regnotify.attempt")
                    .and_then(|v| v.as_i64())
                    .unwrap()
            })
            .collect();
        numbers.sort_unstable();
        assert_eq!(
            numbers,
            (1..=*attempts as i64).collect::<Vec<_>>(),
            "{context}"
        );
        if *attempts > 1 {
            let retried = spans
                .iter()
                .find(|span| tag(span, "regnotify.attempt").and_then(|v| v.as_i64()) == Some(2))
                .unwrap();
            // Full jitter can draw a backoff under a millisecond (recorded as 0): what the span
            // must say is how long it waited, and the gap after the first attempt holds it.
            let waited = tag(retried, "regnotify.wait.backoff_ms")
                .and_then(|v| v.as_i64())
                .filter(|ms| *ms >= 0);
            assert!(
                waited.is_some(),
                "{context}: a retry's span says how long it waited: {retried:#?}"
            );
            let first = spans
                .iter()
                .find(|span| tag(span, "regnotify.attempt").and_then(|v| v.as_i64()) == Some(1))
                .unwrap();
            let micros = |span: &serde_json::Value, field: &str| span[field].as_i64().unwrap();
            let gap = micros(retried, "startTime")
                - (micros(first, "startTime") + micros(first, "duration"));
            assert!(
                gap + 1_000 >= waited.unwrap_or(0) * 1_000,
                "{context}: the retry started {gap} µs after the first attempt ended, before its \
                 recorded backoff of {waited:?} ms"
            );
        }
        // The outputs carry the event span's context, so the trace continues downstream.
        let expected = format!("00-{trace_id}-{event_span_id}-01");
        let outcome = outcomes
            .iter()
            .find(|record| record.key.as_deref() == Some(event.reference_merchant_id.as_bytes()))
            .unwrap();
        assert_eq!(
            outcome.header("traceparent"),
            Some(expected.as_str()),
            "{context}"
        );
        assert_eq!(
            outcome.header("tracestate"),
            Some("producer=1"),
            "{context}"
        );
        if *attempts > 1 {
            let letter = &letters[0];
            assert_eq!(
                letter.header("traceparent"),
                Some(expected.as_str()),
                "{context}"
            );
            let traceparents = letter
                .headers
                .iter()
                .filter(|(name, _)| name == "traceparent")
                .count();
            assert_eq!(
                traceparents, 1,
                "the input's traceparent is replaced, not repeated"
            );
        }
    }

    // The dead letter replayed (`regnotify replay-dlq`) starts a trace of its own whose event span
    // links to the span that dead-lettered it.
    let letter_context = letters[0].header("traceparent").unwrap().to_owned();
    let (original_trace, original_span) = {
        let parts: Vec<&str> = letter_context.split('-').collect();
        (parts[1].to_owned(), parts[2].to_owned())
    };
    let replayed = regnotify::tools::replay_dead_letters(
        &harness.settings(),
        &regnotify::tools::ReplayOptions::default(),
        |_| {},
    )
    .await
    .expect("replay runs");
    assert_eq!(replayed.replayed, 1);
    let mut settings = harness.settings();
    settings.telemetry.traces = true;
    settings.telemetry.endpoint = Some(jaeger.otlp_http.clone());
    let pipeline = harness.start_pipeline(settings).await;
    assert!(fully_committed(&harness.wait_fully_committed(WAIT).await));
    pipeline.stop().await;
    let outcomes = harness.read_whole(&harness.result).await;
    let replayed_trace = outcomes
        .iter()
        .filter(|record| record.key.as_deref() == Some(&b"M-TRC-THR-1"[..]))
        .filter_map(|record| record.header("traceparent"))
        .map(|traceparent| traceparent.split('-').nth(1).unwrap().to_owned())
        .find(|trace| *trace != original_trace)
        .expect("the replayed event's outcome, in a trace of its own");
    let event_span_name = format!("process {}", harness.input);
    let spans = jaeger
        .spans(&replayed_trace, |spans| {
            spans
                .iter()
                .any(|span| span["operationName"] == event_span_name)
        })
        .await;
    let event_span = spans
        .iter()
        .find(|span| span["operationName"] == event_span_name)
        .unwrap();
    assert_eq!(parent_of(event_span), None, "a root span: {event_span:#?}");
    let linked = event_span["references"]
        .as_array()
        .unwrap()
        .iter()
        .any(|reference| {
            reference["refType"] == "FOLLOWS_FROM"
                && reference["traceID"] == original_trace.as_str()
                && reference["spanID"] == original_span.as_str()
        });
    assert!(
        linked,
        "linked to the span that dead-lettered it: {event_span:#?}"
    );
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    hasher.finish()
}
