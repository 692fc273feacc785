//! `/readyz` and the time-based health: a Kafka error that persists, an input topic that does not
//! exist yet, an event that stalls.

use crate::common;

use std::time::Duration;

use regnotify::event::NotifyOutcome;
use regnotify::simulator::rules::{Fault, FaultRule};

use common::{Harness, event};

use super::binary::{MissingInput, RunningBinary, get, json_lines, service_config, until};
use super::{WAIT, own_parse, parse_exposition, value};

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
