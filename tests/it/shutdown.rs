//! Stopping with events queued behind busy merchants: the pipeline waits only for the work that
//! can still settle, in both delivery modes, and then exits — well inside `shutdown_timeout`
//! (and Kubernetes' default 30 s grace), not at its end. A stop that comes while a revoke
//! waits for work that cannot finish answers the revoke at its drain deadline.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use regnotify::simulator::rules::{Fault, FaultRule};

use common::{Harness, assert_nothing_lost, event, eventually};

const WAIT: Duration = Duration::from_secs(60);
/// Far longer than the calls in flight take: a stop that waits for it is the defect.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(40);

/// 400 events: every fourth of one of 4 slow merchants (2 s a call), the rest of 100 fast ones,
/// so the slow merchants' later events queue behind their running ones while fast events after
/// them finish. Stop after 40 calls. Returns how long the stop took.
async fn stop_behind_busy_merchants(exactly_once: bool) -> Duration {
    let slow = FaultRule::for_prefix(
        "M-SLOW-",
        Fault::Latency {
            delay: Duration::from_secs(2),
        },
    );
    let harness = Harness::new(1, vec![slow]).await;
    let events: Vec<_> = (0..400)
        .map(|i| {
            let merchant = if i % 4 == 0 {
                format!("M-SLOW-{}", (i / 4) % 4)
            } else {
                format!("M-FAST-{}", i % 100)
            };
            event(&merchant, &format!("R-{i:03}"))
        })
        .collect();
    harness.produce(&events).await;
    let mut settings = harness.settings();
    settings.processing.exactly_once = exactly_once;
    settings.processing.transaction_interval = Duration::from_millis(50);
    settings.processing.shutdown_timeout = SHUTDOWN_TIMEOUT;
    let pipeline = harness.start_pipeline(settings).await;
    let stats = pipeline.stats.clone();
    eventually("40 calls made", WAIT, || {
        stats.http_calls.load(Ordering::Relaxed) >= 40
    })
    .await;
    let took = pipeline.stop().await;
    assert!(
        stats.terminal() < 400,
        "the stop came mid-stream ({} finished)",
        stats.terminal()
    );
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_stop_does_not_wait_for_work_that_cannot_settle() {
    let took = stop_behind_busy_merchants(true).await;
    // The calls in flight take at most 2 s; a stop that waits on submitted outputs stuck behind
    // dropped events takes the whole shutdown_timeout.
    assert!(
        took < SHUTDOWN_TIMEOUT / 2,
        "exactly-once stop took {took:?} of a {SHUTDOWN_TIMEOUT:?} budget"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_stop_does_not_wait_for_work_that_cannot_settle() {
    let took = stop_behind_busy_merchants(false).await;
    assert!(
        took < SHUTDOWN_TIMEOUT / 2,
        "at-least-once stop took {took:?} of a {SHUTDOWN_TIMEOUT:?} budget"
    );
}

/// A stop that comes while a revoke waits on calls that will not answer: the revoke is answered
/// at `rebalance_drain_timeout` (its calls cancelled, its offsets left to the next owner), so
/// the member leaves within seconds, not at the end of `shutdown_timeout`; the other member then
/// finishes every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_a_pending_revoke_answers_it_at_the_drain_deadline() {
    const DRAIN: Duration = Duration::from_secs(1);
    let harness = Harness::new(2, Vec::new()).await;
    let events: Vec<_> = (0..20)
        .map(|i| event(&format!("M-{i:02}"), &format!("R-{i:02}")))
        .collect();
    harness.produce(&events).await;
    // Every call waits at the simulator's gate until the test opens it: the first member's
    // work cannot settle while it is held, and nothing times out or is retried meanwhile.
    harness.simulator.hold();
    let mut settings = harness.settings();
    settings.alipayplus.request_timeout = Duration::from_secs(300);
    settings.processing.max_attempts = 1;
    settings.processing.max_in_flight = 4;
    settings.processing.rebalance_drain_timeout = DRAIN;
    settings.processing.shutdown_timeout = SHUTDOWN_TIMEOUT;

    let first = harness.start_pipeline(settings.clone()).await;
    let first_stats = first.stats.clone();
    eventually("the first member's calls held", WAIT, || {
        harness.simulator.stats().held_calls >= 2
    })
    .await;
    let assigned = first_stats.rebalances.load(Ordering::Relaxed);
    let second = harness.start_pipeline(settings).await;
    eventually(
        "the first member asked to give its partitions up",
        WAIT,
        || first_stats.rebalances.load(Ordering::Relaxed) > assigned,
    )
    .await;
    // The revoke is pending: its calls are held. Stop now.
    let took = first.stop().await;
    common::note(&format!("stopped {took:?} after the revoke began"));
    // Measured on the mock cluster: 4.7 s with the drain deadline honoured during the stop (the
    // dispatcher is done at the deadline; the rest is the consumer leaving the group); 10.7 s
    // without it: the stop then waits until the consumer thread gives up on the revoke (the
    // drain deadline plus 5 s) and the group hands out the next assignment.
    assert!(
        took < DRAIN + Duration::from_secs(6),
        "the stop waited {took:?}: the pending revoke was not answered at its {DRAIN:?} drain \
         deadline (shutdown_timeout is {SHUTDOWN_TIMEOUT:?})"
    );
    assert_eq!(
        first_stats.terminal(),
        0,
        "no held call was answered, so nothing finished on the first member"
    );

    harness.simulator.open();
    let progress = harness.wait_fully_committed(WAIT).await;
    assert!(
        regnotify::inspect::fully_committed(&progress),
        "the second member finished the stream: {progress:?}"
    );
    second.stop().await;
    let outcomes = harness.outcomes().await;
    assert_nothing_lost(&events, &outcomes);
    assert_eq!(
        outcomes.len(),
        events.len(),
        "one outcome each: the first member's cancelled calls wrote nothing"
    );
}

/// Issue 19, item 4c: once the transaction writer has failed for good (here the coordinator
/// answers every EndTxn with `TRANSACTIONAL_ID_AUTHORIZATION_FAILED`, which no new producer
/// mends), the service stops at once with an error. It used to wait out `shutdown_timeout` for
/// the work in flight, whose outputs could no longer be committed (here: calls of slow merchants
/// that take minutes). Mock cluster only: a real broker cannot refuse on demand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_a_writer_that_failed_for_good_stops_the_service_at_once() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let slow = FaultRule::for_prefix(
        "M-SLOW-",
        Fault::Latency {
            delay: Duration::from_secs(120),
        },
    );
    let harness = Harness::new(1, vec![slow]).await;
    let Some(mock) = harness.kafka.mock() else {
        common::note(
            "exactly_once_a_writer_that_failed_for_good_stops_the_service_at_once: mock cluster only",
        );
        return;
    };
    let events: Vec<_> = (0..40)
        .map(|i| {
            let merchant = if i % 4 == 0 {
                format!("M-SLOW-{}", i / 4)
            } else {
                format!("M-FAST-{i:02}")
            };
            event(&merchant, &format!("R-{i:02}"))
        })
        .collect();
    harness.produce(&events).await;
    mock.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED; 1_000],
    );
    let mut settings = harness.settings();
    settings.processing.exactly_once = true;
    settings.processing.transaction_interval = Duration::from_millis(50);
    settings.processing.shutdown_timeout = SHUTDOWN_TIMEOUT;
    settings.alipayplus.request_timeout = Duration::from_secs(300);
    let mut pipeline = harness.start_pipeline(settings).await;
    let stats = pipeline.stats.clone();
    let started = std::time::Instant::now();
    let ended = tokio::time::timeout(SHUTDOWN_TIMEOUT + WAIT, &mut pipeline.task)
        .await
        .expect("the service stopped on its own")
        .expect("pipeline task");
    let took = started.elapsed();
    mock.clear_request_errors(RDKafkaApiKey::EndTxn);
    let error = ended.expect_err("the service ends with an error when its writer fails for good");
    common::note(&format!(
        "writer failed for good: the service stopped {took:?} after it started, with {} calls \
         made: {error:#}",
        stats.http_calls.load(Ordering::Relaxed)
    ));
    assert!(
        stats.terminal() < events.len() as u64,
        "the slow merchants' calls were still in flight ({} of {} finished)",
        stats.terminal(),
        events.len()
    );
    // The slow calls take 120 s: a stop that waits for them takes the whole shutdown_timeout.
    assert!(
        took < SHUTDOWN_TIMEOUT / 2,
        "the service took {took:?} to stop after its writer failed (shutdown_timeout is \
         {SHUTDOWN_TIMEOUT:?})"
    );
}
