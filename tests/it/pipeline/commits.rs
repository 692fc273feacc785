//! A rebalance while events are retried, and commits the broker refuses.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use regnotify::event::{NotifyOutcome, RegistrationDecided};
use regnotify::inspect::fully_committed;
use regnotify::simulator::SimulatorRules;
use regnotify::simulator::rules::{Fault, FaultRule};

use common::{
    Harness, assert_nothing_lost, assert_one_outcome_each, event, eventually, merchant_events,
};

use super::{WAIT, assert_repeats_explained};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_while_events_are_retried_loses_and_repeats_nothing_unexplained() {
    // Answered U and HTTP 503 until the test changes the rules: the events stay mid-retry
    // through the rebalance, however long it takes.
    let retrying = |prefix: &str, fault: Fault| FaultRule::for_prefix(prefix, fault);
    let rules = vec![
        retrying("M-RETRY-U", Fault::result("U", "UNKNOWN_EXCEPTION")),
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
