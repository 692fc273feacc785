//! The pipeline end to end: the real pipeline against Kafka's protocol (mock cluster over TCP, or a
//! real broker with `REGNOTIFY_TEST_BOOTSTRAP`) and the simulator over HTTP.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use regnotify::codec::{self, framing};
use regnotify::config::{InputEncoding, OutputEncoding, Settings};
use regnotify::event::{Decision, NotifyOutcome, RegistrationDecided, RegistrationNotifyOutcome};
use regnotify::inspect::{ReadRecord, fully_committed};
use regnotify::simulator::SimulatorRules;
use regnotify::simulator::rules::{Fault, FaultRule};

use common::{
    Framing, Harness, assert_nothing_lost, assert_one_outcome_each,
    assert_repeats_follow_at_least_once, event, eventually, merchant_events,
};

const WAIT: Duration = Duration::from_secs(60);
/// How long a check waits for something that must not happen (a paused partition consuming).
/// Only a missed failure, never a false one, can come of a slow machine here.
const QUIET: Duration = Duration::from_secs(2);

fn result(status: &str, code: &str) -> Fault {
    Fault::Result {
        status: status.into(),
        code: code.into(),
        message: Some(format!("{code} from the simulator")),
    }
}

fn by_request(
    outcomes: &[RegistrationNotifyOutcome],
) -> HashMap<String, RegistrationNotifyOutcome> {
    outcomes
        .iter()
        .map(|o| (o.registration_request_id.clone(), o.clone()))
        .collect()
}

fn dead_letter_for<'a>(letters: &'a [ReadRecord], merchant: &str) -> &'a ReadRecord {
    letters
        .iter()
        .find(|r| r.key.as_deref() == Some(merchant.as_bytes()))
        .unwrap_or_else(|| panic!("no dead letter keyed {merchant}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_class_of_answer_ends_as_specified() {
    let rules = vec![
        FaultRule::for_prefix("M-REJ-", result("F", "PROCESS_FAIL")),
        FaultRule::for_prefix("M-ABN-", result("F", "ABNORMAL_REGISTRATION_STATUS")),
        FaultRule::for_prefix("M-UNK-", result("U", "UNKNOWN_EXCEPTION")),
        FaultRule::for_prefix("M-U1-", result("U", "UNKNOWN_EXCEPTION")).times(1),
        FaultRule::for_prefix("M-500-", Fault::HttpStatus { status: 500 }),
        FaultRule::for_prefix("M-REF-", result("F", "INVALID_CLIENT")),
        FaultRule::for_prefix("M-404-", Fault::HttpStatus { status: 404 }),
        FaultRule::for_prefix("M-SIG-", Fault::BadSignature),
        FaultRule::for_prefix("M-GARB-", Fault::Garbled),
    ];
    let harness = Harness::new(3, rules).await;
    let mut rejected_decision = event("M-OK-2", "R-OK-2");
    rejected_decision.decision = Decision::Rejected;
    rejected_decision.rejection_reason = Some("documents expired".into());
    let events = vec![
        event("M-OK-1", "R-OK-1"),
        rejected_decision,
        event("M-REJ-1", "R-REJ-1"),
        event("M-ABN-1", "R-ABN-1"),
        event("M-UNK-1", "R-UNK-1"),
        event("M-U1-1", "R-U1-1"),
        event("M-500-1", "R-500-1"),
        event("M-REF-1", "R-REF-1"),
        event("M-404-1", "R-404-1"),
        event("M-SIG-1", "R-SIG-1"),
        event("M-GARB-1", "R-GARB-1"),
    ];
    harness.produce(&events).await;
    // SPEC's routing table as it stands, without the circuit breaker. With it, a refusal is held
    // until other answers explain it (tests/it/circuit.rs): whether one came in time depends on the
    // order the partitions were served in, so the refused event's attempt count would too.
    let mut settings = harness.settings();
    settings.alipayplus.circuit_breaker.enabled = false;
    let pipeline = harness.start_pipeline(settings).await;

    let progress = harness.wait_fully_committed(WAIT).await;
    assert!(fully_committed(&progress), "{progress:?}");
    let all = harness.outcomes().await;
    assert_one_outcome_each(&events, &all);
    let outcomes = by_request(&all);
    let expect = |request: &str, outcome: NotifyOutcome, code: Option<&str>, attempts: i32| {
        let o = &outcomes[request];
        assert_eq!(o.outcome, outcome, "{request}: {o:?}");
        assert_eq!(o.result_code.as_deref(), code, "{request}: {o:?}");
        assert_eq!(o.attempts, attempts, "{request}: {o:?}");
    };
    expect("R-OK-1", NotifyOutcome::Notified, Some("SUCCESS"), 1);
    expect("R-OK-2", NotifyOutcome::Notified, Some("SUCCESS"), 1);
    expect("R-REJ-1", NotifyOutcome::Rejected, Some("PROCESS_FAIL"), 1);
    expect(
        "R-ABN-1",
        NotifyOutcome::Rejected,
        Some("ABNORMAL_REGISTRATION_STATUS"),
        1,
    );
    expect(
        "R-UNK-1",
        NotifyOutcome::DeadLettered,
        Some("UNKNOWN_EXCEPTION"),
        3,
    );
    expect("R-U1-1", NotifyOutcome::Notified, Some("SUCCESS"), 2);
    expect("R-500-1", NotifyOutcome::DeadLettered, None, 3);
    expect(
        "R-REF-1",
        NotifyOutcome::DeadLettered,
        Some("INVALID_CLIENT"),
        1,
    );
    expect("R-404-1", NotifyOutcome::DeadLettered, None, 1);
    expect("R-SIG-1", NotifyOutcome::DeadLettered, Some("SUCCESS"), 3);
    expect("R-GARB-1", NotifyOutcome::DeadLettered, None, 3);

    // Field by field for one outcome of each shape.
    let ok = &outcomes["R-OK-2"];
    let source = events
        .iter()
        .find(|e| e.registration_request_id == "R-OK-2")
        .unwrap();
    assert_eq!(ok.event_id, source.event_id);
    assert_eq!(ok.reference_merchant_id, "M-OK-2");
    assert_eq!(ok.decision, Decision::Rejected);
    assert_eq!(ok.result_status.as_deref(), Some("S"));
    assert_eq!(ok.http_status, Some(200));
    assert_eq!(ok.error, None);
    assert_eq!(ok.source_topic, harness.input);
    assert!(
        ok.first_attempt_at_ms
            .is_some_and(|t| t <= ok.completed_at_ms)
    );
    let unknown = &outcomes["R-UNK-1"];
    assert_eq!(unknown.result_status.as_deref(), Some("U"));
    assert!(
        unknown
            .error
            .as_deref()
            .unwrap()
            .contains("retry budget exhausted")
    );
    let refused = &outcomes["R-REF-1"];
    assert_eq!(refused.result_status.as_deref(), Some("F"));
    assert_eq!(refused.http_status, Some(200));
    assert!(refused.error.is_some());
    assert_eq!(outcomes["R-500-1"].http_status, Some(500));

    // Dead letters: the dead-lettered events above, each with its reason, and no other.
    let letters = harness.dead_letters().await;
    assert_eq!(letters.len(), 6, "{letters:?}");
    let reasons: HashMap<&str, &str> = [
        ("M-UNK-1", "RETRIES_EXHAUSTED"),
        ("M-500-1", "RETRIES_EXHAUSTED"),
        ("M-SIG-1", "RETRIES_EXHAUSTED"),
        ("M-GARB-1", "RETRIES_EXHAUSTED"),
        ("M-REF-1", "REQUEST_REFUSED"),
        ("M-404-1", "REQUEST_REFUSED"),
    ]
    .into();
    for (merchant, reason) in &reasons {
        let letter = dead_letter_for(&letters, merchant);
        assert_eq!(letter.header("dlq.reason"), Some(*reason), "{merchant}");
        let outcome = outcomes
            .values()
            .find(|o| o.reference_merchant_id == *merchant)
            .unwrap();
        assert_eq!(
            letter.header("dlq.source.topic"),
            Some(harness.input.as_str())
        );
        assert_eq!(
            letter.header("dlq.source.partition"),
            Some(outcome.source_partition.to_string().as_str())
        );
        assert_eq!(
            letter.header("dlq.source.offset"),
            Some(outcome.source_offset.to_string().as_str())
        );
        assert_eq!(
            letter.header("dlq.consumer.group"),
            Some(harness.group.as_str())
        );
        assert_eq!(
            letter.header("dlq.attempts"),
            Some(outcome.attempts.to_string().as_str())
        );
        assert!(letter.header("dlq.source.timestamp").is_some());
        assert!(
            letter
                .header("dlq.error")
                .is_some_and(|e| !e.is_empty() && e.len() <= 1024)
        );
        let failed_at = letter.header("dlq.failed.at").unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(failed_at).is_ok(),
            "{failed_at}"
        );
    }
    let refused = dead_letter_for(&letters, "M-REF-1");
    assert_eq!(refused.header("dlq.result.code"), Some("INVALID_CLIENT"));
    assert_eq!(refused.header("dlq.http.status"), Some("200"));
    let http_500 = dead_letter_for(&letters, "M-500-1");
    assert_eq!(http_500.header("dlq.http.status"), Some("500"));
    assert_eq!(
        http_500.header("dlq.result.code"),
        None,
        "absent facts are absent headers"
    );

    // The simulator saw exactly the calls the outcomes report.
    let total_attempts: i32 = outcomes.values().map(|o| o.attempts).sum();
    assert_eq!(harness.simulator.stats().total_calls, total_attempts as u64);
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_then_dead_lettered() {
    let rules = vec![FaultRule::for_prefix(
        "M-THR-",
        result("F", "REQUEST_TRAFFIC_EXCEED_LIMIT"),
    )];
    let harness = Harness::new(1, rules).await;
    let events = [event("M-THR-1", "R-THR-1"), event("M-OK-1", "R-OK-1")];
    harness.produce(&events).await;
    let pipeline = harness.start_pipeline(harness.settings()).await;
    assert!(fully_committed(&harness.wait_fully_committed(WAIT).await));
    let all = harness.outcomes().await;
    assert_one_outcome_each(&events, &all);
    let outcomes = by_request(&all);
    let throttled = &outcomes["R-THR-1"];
    assert_eq!(throttled.outcome, NotifyOutcome::DeadLettered);
    assert_eq!(throttled.attempts, 3);
    assert_eq!(
        throttled.result_code.as_deref(),
        Some("REQUEST_TRAFFIC_EXCEED_LIMIT")
    );
    assert_eq!(outcomes["R-OK-1"].outcome, NotifyOutcome::Notified);
    let letters = harness.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].header("dlq.reason"), Some("RETRIES_EXHAUSTED"));
    assert_eq!(
        letters[0].header("dlq.result.code"),
        Some("REQUEST_TRAFFIC_EXCEED_LIMIT")
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_and_invalid_records_are_dead_lettered_without_http_calls() {
    let harness = Harness::new(2, Vec::new()).await;
    let poison = b"\x00\x00\x00\x00\x07not avro at all";
    harness
        .produce_raw(
            b"M-POISON",
            poison,
            &[("trace-id", b"abc-123"), ("origin", b"test")],
        )
        .await;
    harness
        .produce_raw(b"M-POISON-2", &[0xC3, 0x01, 0x02], &[])
        .await;
    let mut too_long = event("M-LONG", "R-LONG");
    too_long.decision = Decision::Rejected;
    too_long.rejection_reason = Some("r".repeat(257));
    let events = [
        event("", "R-EMPTY"),
        event(&"M".repeat(65), "R-65"),
        too_long,
        event("M-VALID", "R-VALID"),
    ];
    harness.produce(&events).await;
    let pipeline = harness.start_pipeline(harness.settings()).await;

    assert!(fully_committed(&harness.wait_fully_committed(WAIT).await));
    let all = harness.outcomes().await;
    // Poison records get no outcome.
    assert_one_outcome_each(&events, &all);
    let outcomes = by_request(&all);
    for request in ["R-EMPTY", "R-65", "R-LONG"] {
        let o = &outcomes[request];
        assert_eq!(o.outcome, NotifyOutcome::DeadLettered, "{request}");
        assert_eq!(o.attempts, 0, "{request}");
        assert_eq!(o.http_status, None);
        assert!(o.first_attempt_at_ms.is_none());
    }
    assert_eq!(outcomes["R-VALID"].outcome, NotifyOutcome::Notified);
    let letters = harness.dead_letters().await;
    assert_eq!(letters.len(), 5, "{letters:?}");
    let poison_letter = dead_letter_for(&letters, "M-POISON");
    assert_eq!(poison_letter.header("dlq.reason"), Some("DECODE_ERROR"));
    assert_eq!(
        poison_letter.value.as_deref(),
        Some(&poison[..]),
        "value kept byte for byte"
    );
    assert_eq!(
        poison_letter.header("trace-id"),
        Some("abc-123"),
        "input headers kept"
    );
    assert_eq!(poison_letter.header("origin"), Some("test"));
    assert!(
        poison_letter
            .header("dlq.error")
            .unwrap()
            .contains("schema")
    );
    assert_eq!(poison_letter.header("dlq.attempts"), None);
    let truncated = dead_letter_for(&letters, "M-POISON-2");
    assert_eq!(truncated.header("dlq.reason"), Some("DECODE_ERROR"));
    let invalid = letters
        .iter()
        .filter(|l| l.header("dlq.reason") == Some("INVALID_EVENT"))
        .count();
    assert_eq!(invalid, 3);
    let stats = harness.simulator.stats();
    assert_eq!(stats.total_calls, 1, "only the valid event reached Alipay+");
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_merchant_order_holds_under_concurrency() {
    // Every merchant's first request is answered U once: its retry must still come before the
    // merchant's next request.
    let rules = vec![FaultRule {
        merchant_prefix: None,
        probability: Some(0.3),
        times: Some(1),
        fault: result("U", "UNKNOWN_EXCEPTION"),
    }];
    let harness = Harness::with_latency(3, rules, Duration::from_millis(2)).await;
    let merchants = 12;
    let per_merchant = 8;
    let mut events = Vec::new();
    for round in 0..per_merchant {
        for merchant in 0..merchants {
            events.push(event(
                &format!("M-{merchant:02}"),
                &format!("R-{merchant:02}-{round:02}"),
            ));
        }
    }
    harness.produce(&events).await;
    let mut settings = harness.settings();
    settings.processing.max_in_flight = 32;
    let pipeline = harness.start_pipeline(settings).await;
    assert!(fully_committed(&harness.wait_fully_committed(WAIT).await));
    let outcomes = harness.outcomes().await;
    assert_one_outcome_each(&events, &outcomes);
    assert!(
        outcomes
            .iter()
            .all(|o| o.outcome == NotifyOutcome::Notified)
    );
    let stats = harness.simulator.stats();
    // One call at a time per merchant, as the simulator counted open calls, while merchants
    // did run side by side.
    assert_eq!(
        stats.merchants_with_overlapping_calls(),
        BTreeMap::new(),
        "merchants with calls open at the same time"
    );
    for merchant in 0..merchants {
        assert_eq!(stats.max_concurrency_of(&format!("M-{merchant:02}")), 1);
    }
    assert!(
        stats.max_concurrent_calls > 1,
        "different merchants were notified concurrently: {}",
        stats.max_concurrent_calls
    );
    assert_eq!(stats.arrivals_dropped, 0);
    for merchant in 0..merchants {
        let id = format!("M-{merchant:02}");
        let arrived = stats.requests_of(&id);
        // Drop the repeats of a retried request; what is left must be in production order.
        let mut firsts: Vec<&str> = Vec::new();
        for request in arrived {
            if firsts.last() != Some(&request) {
                firsts.push(request);
            }
        }
        let expected: Vec<String> = (0..per_merchant)
            .map(|r| format!("R-{merchant:02}-{r:02}"))
            .collect();
        assert_eq!(firsts, expected, "merchant {id}");
    }
    assert!(
        pipeline.stats.retries.load(Ordering::Relaxed) > 0,
        "some requests were retried"
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_ordering_keeps_one_event_in_flight_per_partition() {
    let harness = Harness::with_latency(1, Vec::new(), Duration::from_millis(1)).await;
    let events: Vec<_> = (0..30)
        .map(|i| event(&format!("M-{i:02}"), &format!("R-{i:02}")))
        .collect();
    harness.produce(&events).await;
    let mut settings = harness.settings();
    settings.processing.ordering = regnotify::config::Ordering::Partition;
    let pipeline = harness.start_pipeline(settings).await;
    assert!(fully_committed(&harness.wait_fully_committed(WAIT).await));
    assert_one_outcome_each(&events, &harness.outcomes().await);
    let stats = harness.simulator.stats();
    assert_eq!(
        stats.max_concurrent_calls, 1,
        "one call at a time on the one partition"
    );
    let arrivals: Vec<String> = stats
        .arrivals
        .iter()
        .map(|a| a.registration_request_id.clone())
        .collect();
    let expected: Vec<String> = (0..30).map(|i| format!("R-{i:02}")).collect();
    assert_eq!(arrivals, expected, "strict offset order on one partition");
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_mid_stream_and_restart_loses_nothing() {
    let harness = Harness::with_latency(3, Vec::new(), Duration::from_millis(20)).await;
    let events: Vec<_> = (0..150)
        .map(|i| event(&format!("M-{:02}", i % 40), &format!("R-{i:03}")))
        .collect();
    harness.produce(&events).await;
    let mut settings = harness.settings();
    settings.processing.max_in_flight = 8;
    // A short shutdown timeout abandons work in flight: its offsets must stay uncommitted.
    settings.processing.shutdown_timeout = Duration::from_millis(30);
    let sampler = harness.sample_commits();
    let first = harness.start_pipeline(settings.clone()).await;
    let stats = first.stats.clone();
    eventually("some outcomes", WAIT, || stats.terminal() >= 30).await;
    first.stop().await;
    let after_stop = harness.progress().await;
    assert!(
        !fully_committed(&after_stop),
        "stopped mid-stream: {after_stop:?}"
    );

    let second = harness.start_pipeline(settings).await;
    let progress = harness.wait_fully_committed(WAIT).await;
    assert!(fully_committed(&progress), "{progress:?}");
    second.stop().await;
    sampler.finish();
    // At least once: every event has an outcome; repeats only for events after the last commit.
    let outcomes = harness.outcomes().await;
    let repeats = assert_nothing_lost(&events, &outcomes);
    assert!(harness.dead_letters().await.is_empty());
    assert!(
        repeats < 40,
        "only work unfinished at the stop is repeated, got {repeats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_consumer_joining_rebalances_without_loss() {
    let harness = Harness::with_latency(4, Vec::new(), Duration::from_millis(10)).await;
    let events: Vec<_> = (0..200)
        .map(|i| event(&format!("M-{:02}", i % 50), &format!("R-{i:03}")))
        .collect();
    harness.produce(&events).await;
    let mut settings = harness.settings();
    settings.processing.max_in_flight = 4;
    let sampler = harness.sample_commits();
    let first = harness.start_pipeline(settings.clone()).await;
    let first_stats = first.stats.clone();
    eventually("first consumer working", WAIT, || {
        first_stats.terminal() >= 20
    })
    .await;
    let second = harness.start_pipeline(settings).await;
    let rebalances = first.stats.clone();
    eventually("the first consumer saw the second join", WAIT, || {
        rebalances.rebalances.load(Ordering::Relaxed) >= 2
    })
    .await;
    let progress = harness.wait_fully_committed(WAIT).await;
    assert!(fully_committed(&progress), "{progress:?}");
    second.stop().await;
    first.stop().await;
    sampler.finish();
    let outcomes = harness.outcomes().await;
    assert_nothing_lost(&events, &outcomes);
    assert_repeats_explained(&harness, &outcomes);
    assert!(harness.dead_letters().await.is_empty());
    let stats = harness.simulator.stats();
    assert_eq!(
        stats.merchants_with_overlapping_calls(),
        BTreeMap::new(),
        "one call at a time per merchant across the rebalance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_work_in_flight_commits_what_finished() {
    let harness = Harness::with_latency(2, Vec::new(), Duration::from_millis(300)).await;
    let events: Vec<_> = (0..40)
        .map(|i| event(&format!("M-{i:02}"), &format!("R-{i:02}")))
        .collect();
    harness.produce(&events).await;
    let mut settings = harness.settings();
    settings.processing.max_in_flight = 4;
    let pipeline = harness.start_pipeline(settings).await;
    let stats = pipeline.stats.clone();
    eventually("work in flight", WAIT, || {
        stats.http_calls.load(Ordering::Relaxed) >= 6
    })
    .await;
    let took = pipeline.stop().await;
    assert!(
        took < Duration::from_secs(10),
        "stopped within shutdown_timeout: {took:?}"
    );
    let finished = stats.terminal();
    assert!(
        finished > 0 && finished < 40,
        "stopped mid-stream after {finished}"
    );
    // Everything below each committed offset has its outcome in Kafka.
    let progress = harness.progress().await;
    let outcomes = harness.outcomes().await;
    assert_eq!(
        outcomes.len() as u64,
        finished,
        "one outcome per finished event"
    );
    let done: HashSet<(i32, i64)> = outcomes
        .iter()
        .map(|o| (o.source_partition, o.source_offset))
        .collect();
    let mut committed_total = 0;
    for p in &progress {
        let committed = p.committed.unwrap_or(0);
        committed_total += committed;
        for offset in 0..committed {
            assert!(
                done.contains(&(p.partition, offset)),
                "offset {offset} of {} committed without outcome",
                p.partition
            );
        }
    }
    assert!(
        committed_total >= (finished as i64) - 4,
        "what finished was committed: {progress:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_writes_outputs_and_offsets_in_transactions() {
    let rules = vec![FaultRule::for_prefix(
        "M-REF-",
        result("F", "INVALID_CLIENT"),
    )];
    let harness = Harness::with_latency(2, rules, Duration::from_millis(5)).await;
    let mut events: Vec<_> = (0..60)
        .map(|i| event(&format!("M-{:02}", i % 20), &format!("R-{i:03}")))
        .collect();
    events.push(event("M-REF-1", "R-REF"));
    harness.produce(&events).await;
    harness.produce_raw(b"M-POISON", b"\x05not avro", &[]).await;
    let mut settings = harness.settings();
    settings.processing.exactly_once = true;
    settings.processing.transaction_interval = Duration::from_millis(50);
    settings.processing.max_in_flight = 8;
    settings.processing.shutdown_timeout = Duration::from_millis(50);

    // Stop mid-stream, abandoning work in flight, then restart: a read_committed reader must
    // still see exactly one outcome per event (outputs of an unfinished transaction are never
    // visible). The mock cluster does not store transactional offsets, so there the restart
    // re-reads from the start and the exactly-once count is only checked on a real broker.
    let first = harness.start_pipeline(settings.clone()).await;
    let stats = first.stats.clone();
    eventually("some outcomes", WAIT, || stats.terminal() >= 15).await;
    first.stop().await;
    let second = harness.start_pipeline(settings).await;
    let stats = second.stats.clone();
    if harness.kafka.is_real() {
        let progress = harness.wait_fully_committed(WAIT).await;
        assert!(
            fully_committed(&progress),
            "offsets committed in transactions: {progress:?}"
        );
    } else {
        eventually("all terminal after restart", WAIT, || {
            stats.terminal() >= 62
        })
        .await;
        // Terminal is counted before the transaction carrying the outcome commits.
        harness.wait_outcomes_of(&events, WAIT).await;
    }
    let outcomes = harness.outcomes().await;
    assert_nothing_lost(&events, &outcomes);
    let refused = outcomes
        .iter()
        .find(|o| o.registration_request_id == "R-REF")
        .unwrap();
    assert_eq!(refused.outcome, NotifyOutcome::DeadLettered);
    if harness.kafka.is_real() {
        let progress = harness.wait_fully_committed(WAIT).await;
        assert!(
            fully_committed(&progress),
            "offsets committed in transactions: {progress:?}"
        );
        assert_one_outcome_each(&events, &outcomes);
        let letters = harness.dead_letters().await;
        assert_eq!(
            letters.len(),
            2,
            "one dead letter each for the refused and the poison record"
        );
    } else {
        eprintln!(
            "exactly-once count not checked: the mock cluster does not store transactional \
             offsets (set REGNOTIFY_TEST_BOOTSTRAP, see scripts/kafka-local.sh)"
        );
    }
    second.stop().await;
}

/// [`assert_repeats_follow_at_least_once`] on a real broker. The mock cluster's coordinator
/// refuses the commit a revoked member makes in its revoke callback (`RebalanceInProgress`,
/// where Kafka accepts a commit of the current generation while the group prepares a
/// rebalance), so there the finished prefix is consumed again by the next owner.
fn assert_repeats_explained(harness: &Harness, outcomes: &[RegistrationNotifyOutcome]) {
    if harness.kafka.is_real() {
        assert_repeats_follow_at_least_once(outcomes);
    } else {
        common::note(
            "repeated outcomes not checked against the commit rule: the mock cluster refuses \
             commits during a rebalance (set REGNOTIFY_TEST_BOOTSTRAP, see scripts/kafka-local.sh)",
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Every framing through the pipeline (SPEC 3.1, 3.2).

/// Runs the pipeline over what is on the input topic until every offset is committed, stops it,
/// and returns the whole result and dead-letter topics.
async fn run_to_the_end(
    harness: &Harness,
    settings: Settings,
) -> (Vec<ReadRecord>, Vec<ReadRecord>) {
    let pipeline = harness.start_pipeline(settings).await;
    let progress = harness.wait_fully_committed(WAIT).await;
    assert!(fully_committed(&progress), "{progress:?}");
    pipeline.stop().await;
    (
        harness.read_whole(&harness.result).await,
        harness.dead_letters().await,
    )
}

fn decoded(records: &[ReadRecord]) -> Vec<RegistrationNotifyOutcome> {
    records
        .iter()
        .map(|r| codec::decode_outcome(r.value.as_deref().unwrap()).unwrap())
        .collect()
}

fn some_events(prefix: &str) -> Vec<RegistrationDecided> {
    (0..6)
        .map(|i| event(&format!("M-{prefix}-{}", i % 3), &format!("R-{prefix}-{i}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_and_single_object_input_in_one_stream_give_confluent_outcomes() {
    let harness = Harness::new(2, Vec::new()).await;
    let events = some_events("MIX");
    harness.produce_framed(&events, Framing::Mixed).await;
    // A schema id the registry does not know makes that record poison, not a registry outage.
    let unknown_id = codec::encode_event_confluent(999, &event("M-UNKNOWN", "R-UNKNOWN")).unwrap();
    harness.produce_raw(b"M-UNKNOWN", &unknown_id, &[]).await;
    let (results, letters) = run_to_the_end(&harness, harness.settings()).await;

    assert_one_outcome_each(&events, &decoded(&results));
    let subject = format!("{}-value", harness.result);
    let outcome_id = harness
        .registry
        .id_of_subject(&subject)
        .unwrap_or_else(|| panic!("{subject} registered: {:?}", harness.registry.registered()));
    for record in &results {
        let value = record.value.as_deref().unwrap();
        assert_eq!(value[0], framing::CONFLUENT_MAGIC, "confluent outcome");
        assert_eq!(
            u32::from_be_bytes(value[1..5].try_into().unwrap()),
            outcome_id,
            "outcomes carry the schema id registered for {subject}"
        );
    }
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].header("dlq.reason"), Some("DECODE_ERROR"));
    assert_eq!(letters[0].value.as_deref(), Some(&unknown_id[..]));
    assert!(
        harness.registry.fetches() >= 1,
        "the pipeline asked the registry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_input_gives_json_outcomes() {
    let harness = Harness::new(2, Vec::new()).await;
    let events = some_events("RAW");
    harness.produce_framed(&events, Framing::Raw).await;
    let mut settings = harness.settings();
    settings.kafka.input_encoding = InputEncoding::Raw;
    settings.kafka.output_encoding = OutputEncoding::Json;
    let (results, letters) = run_to_the_end(&harness, settings).await;

    let outcomes = decoded(&results);
    assert_one_outcome_each(&events, &outcomes);
    for (record, outcome) in results.iter().zip(&outcomes) {
        let json: serde_json::Value =
            serde_json::from_slice(record.value.as_deref().unwrap()).expect("a JSON outcome");
        assert_eq!(json["eventId"], outcome.event_id.as_str(), "{json}");
        assert_eq!(json["outcome"], "NOTIFIED", "{json}");
    }
    assert!(letters.is_empty(), "{letters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_only_input_dead_letters_other_framings() {
    let harness = Harness::new(2, Vec::new()).await;
    let events = some_events("CNF");
    harness.produce_framed(&events, Framing::Confluent).await;
    let stranger = event("M-SINGLE", "R-SINGLE");
    harness
        .produce_framed(std::slice::from_ref(&stranger), Framing::SingleObject)
        .await;
    let mut settings = harness.settings();
    settings.kafka.input_encoding = InputEncoding::Confluent;
    let (results, letters) = run_to_the_end(&harness, settings).await;

    assert_one_outcome_each(&events, &decoded(&results));
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].key.as_deref(), Some(b"M-SINGLE".as_slice()));
    assert_eq!(letters[0].header("dlq.reason"), Some("DECODE_ERROR"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_object_input_without_a_registry_gives_single_object_outcomes() {
    let harness = Harness::new(2, Vec::new()).await;
    let events = some_events("SOE");
    harness.produce_framed(&events, Framing::SingleObject).await;
    // Without a registry a Confluent record cannot be read: poison.
    let confluent = event("M-CONFLUENT", "R-CONFLUENT");
    harness
        .produce_framed(std::slice::from_ref(&confluent), Framing::Confluent)
        .await;
    let mut settings = harness.settings();
    settings.schema_registry = None;
    let (results, letters) = run_to_the_end(&harness, settings).await;

    assert_one_outcome_each(&events, &decoded(&results));
    for record in &results {
        assert_eq!(
            &record.value.as_deref().unwrap()[..2],
            &framing::SINGLE_OBJECT_MAGIC,
            "single-object outcome"
        );
    }
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].key.as_deref(), Some(b"M-CONFLUENT".as_slice()));
    assert_eq!(letters[0].header("dlq.reason"), Some("DECODE_ERROR"));
    assert_eq!(harness.registry.fetches(), 0);
}

// ---------------------------------------------------------------------------------------------
// Back-pressure (SPEC 5): the simulator holds answers at its gate, so the test decides when
// each event finishes.

/// Settings for back-pressure tests: a call held at the gate must neither time out nor retry.
fn held_settings(harness: &Harness) -> Settings {
    let mut settings = harness.settings();
    settings.alipayplus.request_timeout = Duration::from_secs(300);
    settings.processing.max_attempts = 1;
    settings
}

/// Lets `calls` held calls through and waits until `finished` events are terminal and
/// `held` calls wait at the gate again.
async fn release_and_settle(
    harness: &Harness,
    stats: &regnotify::observe::Stats,
    calls: usize,
    finished: u64,
    held: u64,
) {
    harness.simulator.release(calls);
    eventually(
        &format!("{finished} events finished and {held} calls held"),
        WAIT,
        || stats.terminal() == finished && harness.simulator.stats().held_calls == held,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_partition_window_pauses_the_partition_until_half_of_it_drained() {
    const WINDOW: usize = 10;
    let harness = Harness::new(1, Vec::new()).await;
    // One merchant: its events run one at a time in offset order, so every call let through
    // finishes exactly the oldest pending event.
    let events: Vec<_> = (0..4 * WINDOW)
        .map(|i| event("M-BP", &format!("R-{i:02}")))
        .collect();
    harness.produce(&events).await;
    harness.simulator.hold();
    let mut settings = held_settings(&harness);
    settings.processing.max_pending_per_partition = WINDOW;
    let pipeline = harness.start_pipeline(settings).await;
    let stats = pipeline.stats.clone();
    let consumed = || stats.consumed.load(Ordering::Relaxed) as usize;

    eventually("the first call held", WAIT, || {
        harness.simulator.stats().held_calls == 1
    })
    .await;
    eventually("the window filled", WAIT, || consumed() >= WINDOW).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        consumed(),
        WINDOW,
        "the partition pauses when max_pending_per_partition events are pending"
    );

    // Half the window plus one still pending: still paused.
    let finished = WINDOW / 2 - 1;
    release_and_settle(&harness, &stats, finished, finished as u64, 1).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        consumed(),
        WINDOW,
        "still paused with {} of {WINDOW} pending",
        WINDOW - finished
    );

    // Half the window pending: resumed, until the window is full again.
    release_and_settle(&harness, &stats, 1, (finished + 1) as u64, 1).await;
    eventually("consumption resumed at half the window", WAIT, || {
        consumed() > WINDOW
    })
    .await;
    let refilled = finished + 1 + WINDOW;
    eventually("the window filled again", WAIT, || consumed() >= refilled).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(consumed(), refilled, "paused again when full");

    harness.simulator.open();
    assert!(fully_committed(&harness.wait_fully_committed(WAIT).await));
    pipeline.stop().await;
    assert_one_outcome_each(&events, &harness.outcomes().await);
    assert_eq!(harness.simulator.stats().max_concurrency_of("M-BP"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_waiting_events_stop_the_intake_until_some_of_them_start() {
    const MAX_IN_FLIGHT: usize = 2;
    // The consumer thread takes no more on while half the dispatcher's waiting limit wait (4 ×
    // max_in_flight, at least 1,024): it holds off polling, then pauses every partition.
    let intake = regnotify::pipeline::waiting_limit(MAX_IN_FLIGHT) / 2;
    let harness = Harness::new(4, Vec::new()).await;
    // Far more events than the bound, spread over merchants and partitions; no partition window
    // (max_pending_per_partition, 10 000 by default) comes near full.
    let events = merchant_events(intake * 4, 200);
    harness.produce(&events).await;
    harness.simulator.hold();
    let mut settings = held_settings(&harness);
    settings.processing.max_in_flight = MAX_IN_FLIGHT;
    let pipeline = harness.start_pipeline(settings).await;
    let stats = pipeline.stats.clone();
    let consumed = || stats.consumed.load(Ordering::Relaxed) as usize;

    eventually("max_in_flight calls held", WAIT, || {
        harness.simulator.stats().held_calls == MAX_IN_FLIGHT as u64
    })
    .await;
    eventually("the intake bound reached", WAIT, || {
        consumed() >= MAX_IN_FLIGHT + intake
    })
    .await;
    // Longer than the hold (500 ms): the partitions are paused by then, and stay so.
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        consumed(),
        MAX_IN_FLIGHT + intake,
        "nothing more taken on with {intake} events waiting behind {MAX_IN_FLIGHT} in flight"
    );

    // Each finished event lets a waiting one start, and one more record in.
    let finished = 5;
    let held = MAX_IN_FLIGHT as u64;
    release_and_settle(&harness, &stats, finished, finished as u64, held).await;
    eventually("as many taken on as started", WAIT, || {
        consumed() >= MAX_IN_FLIGHT + intake + finished
    })
    .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        consumed(),
        MAX_IN_FLIGHT + intake + finished,
        "no more than room was made for"
    );

    harness.simulator.open();
    assert!(fully_committed(&harness.wait_fully_committed(WAIT).await));
    pipeline.stop().await;
    assert_one_outcome_each(&events, &harness.outcomes().await);
    assert_eq!(
        harness.simulator.stats().merchants_with_overlapping_calls(),
        BTreeMap::new()
    );
}

// ---------------------------------------------------------------------------------------------
// A rebalance while events are being retried.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_while_events_are_retried_loses_and_repeats_nothing_unexplained() {
    // Answered U and HTTP 503 until the test changes the rules: the events stay mid-retry
    // through the rebalance, however long it takes.
    let retrying = |prefix: &str, fault: Fault| FaultRule::for_prefix(prefix, fault);
    let rules = vec![
        retrying("M-RETRY-U", result("U", "UNKNOWN_EXCEPTION")),
        retrying("M-RETRY-503", Fault::HttpStatus { status: 503 }),
    ];
    let harness = Harness::with_latency(4, rules, Duration::from_millis(5)).await;
    let mut events = vec![
        event("M-RETRY-U", "R-RETRY-U"),
        event("M-RETRY-503", "R-RETRY-503"),
    ];
    events.extend(merchant_events(200, 40));
    harness.produce(&events).await;
    let mut settings = harness.settings();
    settings.processing.max_in_flight = 8;
    settings.processing.max_attempts = 10_000;
    settings.processing.backoff_initial = Duration::from_millis(50);
    settings.processing.backoff_max = Duration::from_millis(200);
    // Short, so that the revoke gives up on the events still being retried.
    settings.processing.rebalance_drain_timeout = Duration::from_secs(2);
    // Two merchants answered U and 503 without end would open the circuit breaker (and hold
    // their retries); this test is about a revoke in the middle of retries.
    settings.alipayplus.circuit_breaker.enabled = false;

    let sampler = harness.sample_commits();
    let first = harness.start_pipeline(settings.clone()).await;
    eventually("both events retried", WAIT, || {
        let stats = harness.simulator.stats();
        stats.answered("UNKNOWN_EXCEPTION") >= 2 && stats.answered("HTTP_503") >= 2
    })
    .await;
    let second = harness.start_pipeline(settings).await;
    let (first_stats, second_status) = (first.stats.clone(), second.status.clone());
    eventually(
        "the first member revoked, the second assigned",
        WAIT,
        || {
            first_stats.rebalances.load(Ordering::Relaxed) >= 2
                && second_status.assigned_partitions() > 0
        },
    )
    .await;
    let retried_at_rebalance = harness.simulator.stats().answered("UNKNOWN_EXCEPTION");
    // Whoever owns them now goes on retrying, then Alipay+ recovers.
    eventually("retries after the rebalance", WAIT, || {
        harness.simulator.stats().answered("UNKNOWN_EXCEPTION") > retried_at_rebalance
    })
    .await;
    harness.simulator.set_rules(SimulatorRules::default());

    let progress = harness.wait_fully_committed(WAIT).await;
    assert!(fully_committed(&progress), "{progress:?}");
    second.stop().await;
    first.stop().await;
    sampler.finish();

    let outcomes = harness.outcomes().await;
    assert_nothing_lost(&events, &outcomes);
    assert_repeats_explained(&harness, &outcomes);
    for request in ["R-RETRY-U", "R-RETRY-503"] {
        let theirs: Vec<_> = outcomes
            .iter()
            .filter(|o| o.registration_request_id == request)
            .collect();
        assert_eq!(
            theirs.len(),
            1,
            "one terminal outcome for {request}: {theirs:?}"
        );
        assert_eq!(theirs[0].outcome, NotifyOutcome::Notified, "{theirs:?}");
    }
    let letters = harness.dead_letters().await;
    assert!(letters.is_empty(), "{letters:?}");
    assert_eq!(
        harness.simulator.stats().merchants_with_overlapping_calls(),
        BTreeMap::new(),
        "one call at a time per merchant across the rebalance"
    );
}

/// Produces 20 events of 20 merchants and makes the mock cluster's coordinator refuse every
/// commit until `clear_request_errors(OffsetCommit)`. `None` on a real broker, which cannot
/// refuse commits on demand (the refusal path is the same code on either).
async fn twenty_events_with_commits_refused<'h>(
    harness: &'h Harness,
    test: &str,
) -> Option<(
    &'h rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    Vec<RegistrationDecided>,
)> {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let Some(mock) = harness.kafka.mock() else {
        common::note(&format!("{test}: mock cluster only"));
        return None;
    };
    let events: Vec<_> = (0..20)
        .map(|i| event(&format!("M-{i:02}"), &format!("R-{i:02}")))
        .collect();
    harness.produce(&events).await;
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED; 100_000],
    );
    Some((mock, events))
}

/// A commit the group coordinator refuses is made again, even when nothing finishes after it:
/// the committed offsets reach the end of the stream once the coordinator accepts commits, and
/// no event is processed twice for it. (librdkafka reports the result of an asynchronous manual
/// commit only to a commit callback rdkafka does not install; a failed one used to be taken as
/// done, and the offsets it carried stayed uncommitted until the partition moved again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_commit_is_made_again_when_nothing_else_moves() {
    let harness = Harness::new(2, Vec::new()).await;
    let test = "a_refused_commit_is_made_again_when_nothing_else_moves";
    let Some((mock, events)) = twenty_events_with_commits_refused(&harness, test).await else {
        return;
    };
    let mut pipeline = harness.start_pipeline(harness.settings()).await;
    let stats = pipeline.stats.clone();
    pipeline
        .wait_for("every event finished", WAIT, || stats.terminal() == 20)
        .await;
    // Nothing finishes from here on: only a commit made again can move the offsets. The
    // coordinator says we are not authorised, which no retry mends alone: readiness says so.
    let status = Arc::clone(&pipeline.status);
    pipeline
        .wait_for("readiness names the refused commits", WAIT, || {
            status.commits_refused().is_some()
        })
        .await;
    let reason = status.commits_refused().unwrap_or_default();
    assert!(reason.contains("Group authorization failed"), "{reason}");
    mock.clear_request_errors(rdkafka::types::RDKafkaApiKey::OffsetCommit);
    let progress = harness.wait_fully_committed(WAIT).await;
    assert!(
        fully_committed(&progress),
        "the refused commits were made again: {progress:?}"
    );
    pipeline
        .wait_for("readiness clears once a commit lands", WAIT, || {
            status.commits_refused().is_none()
        })
        .await;
    pipeline.assert_running();
    pipeline.stop().await;
    assert_one_outcome_each(&events, &harness.outcomes().await);
}

/// An event keeps its in-flight slot until a commit covering it lands (README, "A crash repeats
/// at most `max_in_flight` calls"): while the coordinator refuses every commit, no more than
/// `max_in_flight` events are called, since none of their outcomes would survive a crash; once
/// commits land again, the rest follow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_commits_stop_new_calls_at_max_in_flight() {
    let harness = Harness::new(2, Vec::new()).await;
    let test = "refused_commits_stop_new_calls_at_max_in_flight";
    let Some((mock, events)) = twenty_events_with_commits_refused(&harness, test).await else {
        return;
    };
    let mut settings = harness.settings();
    settings.processing.max_in_flight = 4;
    let mut pipeline = harness.start_pipeline(settings).await;
    let stats = pipeline.stats.clone();
    pipeline
        .wait_for("the first slots' events finished", WAIT, || {
            stats.terminal() >= 4
        })
        .await;
    // Their commits keep failing: nothing else may be called meanwhile.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        harness.simulator.stats().total_calls,
        4,
        "calls beyond max_in_flight while no commit lands"
    );
    assert_eq!(stats.terminal(), 4);
    mock.clear_request_errors(rdkafka::types::RDKafkaApiKey::OffsetCommit);
    pipeline
        .wait_for("every event finished", WAIT, || stats.terminal() == 20)
        .await;
    let progress = harness.wait_fully_committed(WAIT).await;
    assert!(fully_committed(&progress), "{progress:?}");
    pipeline.stop().await;
    assert_one_outcome_each(&events, &harness.outcomes().await);
    assert_eq!(harness.simulator.stats().total_calls, 20);
}

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
        result("F", "REQUEST_TRAFFIC_EXCEED_LIMIT"),
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

/// Issue 21, item 5: `max_requests_per_second` is the whole group's. Three members share a
/// limit of 100 requests per second in proportion to the partitions each owns; the simulator
/// counts the calls of every second. While a backlog lasts the group sends at most 110 and, on
/// average over any three seconds, more than 85 a second, also while one member leaves and its
/// partitions move to the other two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_share_one_send_rate_limit_also_when_one_leaves() {
    const LIMIT: u32 = 100;
    const EVENTS: usize = 3_000;
    let harness = Harness::with_latency(6, Vec::new(), Duration::from_millis(5)).await;
    let mut settings = harness.settings();
    settings.alipayplus.max_requests_per_second = LIMIT;
    let members = [
        harness.start_pipeline(settings.clone()).await,
        harness.start_pipeline(settings.clone()).await,
        harness.start_pipeline(settings).await,
    ];
    let statuses: Vec<_> = members.iter().map(|member| member.status.clone()).collect();
    eventually("all three members own partitions", WAIT, || {
        statuses
            .iter()
            .all(|status| status.assigned_partitions() > 0)
            && statuses
                .iter()
                .map(|status| status.assigned_partitions())
                .sum::<u64>()
                == 6
    })
    .await;
    let events = merchant_events(EVENTS, 1_000);
    harness.produce(&events).await;
    let stats: Vec<_> = members.iter().map(|member| member.stats.clone()).collect();
    let terminal = || stats.iter().map(|stats| stats.terminal()).sum::<u64>();
    // A third of the backlog in, one member leaves: its partitions go to the other two.
    eventually("a third of the events done", WAIT, || {
        terminal() >= EVENTS as u64 / 3
    })
    .await;
    let [first, second, leaving] = members;
    let unix_second = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let left_second = unix_second();
    leaving.stop().await;
    let remaining = [first.status.clone(), second.status.clone()];
    eventually("the other two own every partition", WAIT, || {
        remaining
            .iter()
            .map(|status| status.assigned_partitions())
            .sum::<u64>()
            == 6
    })
    .await;
    let reassigned_second = unix_second();
    // The new owners fetch the leaver's partitions first; calls resume within seconds.
    eventually("calls resume after the reassignment", WAIT, || {
        harness
            .simulator
            .stats()
            .calls_per_second
            .keys()
            .any(|second| *second > reassigned_second)
    })
    .await;
    let progress = harness.wait_fully_committed(Duration::from_secs(120)).await;
    assert!(fully_committed(&progress), "{progress:?}");
    first.stop().await;
    second.stop().await;

    let outcomes = harness.outcomes().await;
    assert_nothing_lost(&events, &outcomes);
    let per_second = harness.simulator.stats().calls_per_second;
    // Whole seconds of the backlog: the first and the last second of calls are partial.
    let seconds: Vec<(u64, u64)> = per_second.into_iter().collect();
    assert!(
        seconds.len() >= 10,
        "the backlog lasted {} s",
        seconds.len()
    );
    let full = &seconds[1..seconds.len() - 1];
    common::note(&format!(
        "calls per second (unix second, calls): {full:?}; the member left in {left_second}, \
         the other two owned every partition in {reassigned_second}"
    ));
    let over: Vec<_> = full.iter().filter(|(_, calls)| *calls > 110).collect();
    assert!(
        over.is_empty(),
        "over 110 calls in a second (limit {LIMIT} for the group): {over:?} of {full:?}"
    );
    // The lower bound holds while every partition has an owner that is sending. On a real
    // broker that is the whole backlog, the member leaving included: it sends its share while it
    // finishes its work in flight, and the eager rebalance that follows (every member gives its
    // partitions back) takes tens of milliseconds on Kafka 4.1; the slots the revoke's stopped
    // jobs had reserved come back, so the new owners send at once (they waited 7-12 s before).
    // The mock cluster's group coordinator is a stand-in that takes seconds over the same
    // rebalance; there the seconds between the leave and the second after calls resumed are
    // left out. The last seconds are left out everywhere: a member whose partitions ran dry a
    // little before the others' has no backlog left to send its share on.
    let backlog = &full[..full.len().saturating_sub(3)];
    let resumed_second = full
        .iter()
        .map(|(second, _)| *second)
        .find(|second| *second > reassigned_second)
        .unwrap();
    assert!(
        resumed_second <= reassigned_second + 10,
        "calls resumed {} s after the reassignment: {full:?}",
        resumed_second - reassigned_second
    );
    let real_broker = harness.kafka.is_real();
    let owned = |window: &&[(u64, u64)]| {
        real_broker
            || window
                .iter()
                .all(|(second, _)| *second < left_second || *second > resumed_second)
    };
    let slow: Vec<_> = backlog
        .windows(3)
        .filter(owned)
        .filter(|window| window.iter().map(|(_, calls)| calls).sum::<u64>() <= 3 * 85)
        .collect();
    assert!(
        slow.is_empty(),
        "three seconds at 85 calls a second or fewer while the backlog lasted (the member left \
         in second {left_second}, its partitions had new owners in {reassigned_second}): \
         {slow:?} of {full:?}"
    );
    let after: Vec<_> = backlog
        .iter()
        .filter(|(second, _)| *second > resumed_second)
        .collect();
    assert!(
        after.len() >= 3,
        "the backlog outlasted the member leaving by three seconds: {full:?}, left in \
         {left_second}, reassigned in {reassigned_second}"
    );
}
