//! Order per merchant and per partition, a stop and restart, a second member joining, a stop with
//! work in flight, and exactly-once: nothing lost, nothing repeated unexplained.

use crate::common;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use regnotify::event::NotifyOutcome;
use regnotify::inspect::fully_committed;
use regnotify::simulator::rules::{Fault, FaultRule};

use common::{Harness, assert_nothing_lost, assert_one_outcome_each, event, eventually};

use super::{WAIT, assert_repeats_explained};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_merchant_order_holds_under_concurrency() {
    // Every merchant's first request is answered U once: its retry must still come before the
    // merchant's next request.
    let rules = vec![FaultRule {
        merchant_prefix: None,
        probability: Some(0.3),
        times: Some(1),
        fault: Fault::result("U", "UNKNOWN_EXCEPTION"),
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
async fn partition_order_holds_through_pauses_and_resumes_of_a_backlog() {
    // A backlog under partition ordering: each partition's window (40 pending) fills and the
    // partition pauses (librdkafka drops what it fetched ahead), resumes once its window has
    // room and fetches again, over and over. Across those cycles every partition's calls must
    // stay in offset order, one at a time, with one outcome per event.
    const PARTITIONS: i32 = 4;
    let harness = Harness::new(PARTITIONS, Vec::new()).await;
    let events: Vec<_> = (0..1_200)
        .map(|i| event(&format!("M-{:03}", i % 150), &format!("R-{i:04}")))
        .collect();
    harness.produce(&events).await;
    let mut settings = harness.settings();
    settings.processing.ordering = regnotify::config::Ordering::Partition;
    settings.processing.max_pending_per_partition = 40;
    let pipeline = harness.start_pipeline(settings).await;
    assert!(fully_committed(&harness.wait_fully_committed(WAIT).await));
    let outcomes = harness.outcomes().await;
    assert_one_outcome_each(&events, &outcomes);

    // No fault is injected: a retry (a call repeated) would be a failure of its own, named here
    // rather than as an offset out of order below.
    assert_eq!(pipeline.stats.retries.load(Ordering::Relaxed), 0);
    let stats = harness.simulator.stats();
    assert_eq!(stats.arrivals_dropped, 0);
    assert!(
        stats.max_concurrent_calls <= PARTITIONS as u32,
        "at most one call per partition, got {} at once",
        stats.max_concurrent_calls
    );
    let source: BTreeMap<&str, (i32, i64)> = outcomes
        .iter()
        .map(|o| {
            (
                o.registration_request_id.as_str(),
                (o.source_partition, o.source_offset),
            )
        })
        .collect();
    let mut calls: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for arrival in &stats.arrivals {
        let (partition, offset) = source[arrival.registration_request_id.as_str()];
        calls.entry(partition).or_default().push(offset);
    }
    assert_eq!(
        calls.len(),
        PARTITIONS as usize,
        "every partition had events"
    );
    for (partition, offsets) in &calls {
        assert!(
            offsets.len() > 80,
            "partition {partition}: {} events, more than two windows' worth",
            offsets.len()
        );
        assert!(
            offsets.windows(2).all(|pair| pair[0] < pair[1]),
            "partition {partition}: calls in offset order, each once: {offsets:?}"
        );
    }
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
        Fault::result("F", "INVALID_CLIENT"),
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
