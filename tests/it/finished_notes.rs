//! Finished offsets beyond the committed one travel in the commit's metadata, and the next owner
//! of the partition skips them: one slow merchant holding the commit position back no longer
//! means calling Alipay+ again for everything that finished behind it. Metadata another tool
//! committed skips nothing.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Harness, event, merchant_events};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use regnotify::config::Settings;
use regnotify::event::{NotifyOutcome, RegistrationDecided, RegistrationNotifyOutcome};
use regnotify::simulator::rules::{Fault, FaultRule};

const WAIT: Duration = Duration::from_secs(120);

/// Alipay+ calls per registration request id, as the simulator saw them.
fn calls_per_request(harness: &Harness) -> HashMap<String, usize> {
    let mut calls = HashMap::new();
    for arrival in harness.simulator.stats().arrivals {
        *calls.entry(arrival.registration_request_id).or_default() += 1;
    }
    calls
}

/// One partition whose first event (merchant `M-SLOW`) has its first `slow_calls` calls answered
/// after 20 s, and 200 events of 40 merchants behind it; settings in which a stop outruns the
/// drain, so the slow call is abandoned at each stop.
async fn behind_a_slow_merchant(
    exactly_once: bool,
    slow_calls: u32,
) -> (Harness, Vec<RegistrationDecided>, Settings) {
    let slow = FaultRule::for_prefix(
        "M-SLOW",
        Fault::Latency {
            delay: Duration::from_secs(20),
        },
    )
    .times(slow_calls);
    let harness = Harness::new(1, vec![slow]).await;
    let mut events = vec![event("M-SLOW-1", "R-SLOW")];
    events.extend(merchant_events(200, 40));
    harness.produce(&events).await;
    let mut settings = harness.settings();
    settings.processing.exactly_once = exactly_once;
    settings.processing.shutdown_timeout = Duration::from_secs(1);
    settings.alipayplus.request_timeout = Duration::from_secs(30);
    (harness, events, settings)
}

/// The first owner finishes the 200 fast events, commits the note of what finished (in a
/// periodic commit, or in a transaction) and stops with the slow call still out.
async fn first_owner_finishes_the_fast_events(harness: &Harness, settings: Settings) {
    let first = harness.start_pipeline(settings).await;
    let stats = first.stats.clone();
    common::eventually("the 200 fast events finished", WAIT, || {
        stats.terminal() >= 200
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.stop().await;
    assert_eq!(
        calls_per_request(harness).len(),
        201,
        "every event was called by the first owner"
    );
}

/// No event but the slow one was called more than once; its calls.
fn assert_only_the_slow_event_called_again(harness: &Harness, when: &str) -> usize {
    let calls = calls_per_request(harness);
    let repeated: Vec<(&String, &usize)> = calls
        .iter()
        .filter(|(request, count)| **count > 1 && request.as_str() != "R-SLOW")
        .collect();
    assert!(
        repeated.is_empty(),
        "finished events called again {when} ({} of them): {repeated:?}",
        repeated.len()
    );
    calls.get("R-SLOW").copied().unwrap_or(0)
}

/// Exactly one outcome each: under exactly-once as a read-committed reader sees them, and
/// at-least-once because nothing finished was called (and written) again.
fn assert_one_outcome_each(
    exactly_once: bool,
    events: &[RegistrationDecided],
    outcomes: &[RegistrationNotifyOutcome],
) {
    if exactly_once {
        common::assert_one_outcome_each(events, outcomes);
    } else {
        assert_eq!(outcomes.len(), events.len(), "one outcome each");
    }
}

async fn stop_and_restart_behind_a_slow_merchant(exactly_once: bool) {
    let (harness, events, settings) = behind_a_slow_merchant(exactly_once, 1).await;
    first_owner_finishes_the_fast_events(&harness, settings.clone()).await;

    let second = harness.start_pipeline(settings).await;
    let outcomes = harness.wait_outcomes_of(&events, WAIT).await;
    common::assert_nothing_lost(&events, &outcomes);
    let slow_calls = assert_only_the_slow_event_called_again(&harness, "after the restart");
    assert_eq!(
        slow_calls, 2,
        "the abandoned event is called again by the new owner"
    );
    assert!(
        outcomes
            .iter()
            .all(|outcome| outcome.outcome == NotifyOutcome::Notified)
    );
    assert_one_outcome_each(exactly_once, &events, &outcomes);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_skips_what_finished_behind_a_slow_merchant() {
    stop_and_restart_behind_a_slow_merchant(false).await;
}

/// The mock cluster does not store transactional offset commits (nor their metadata): this runs
/// only against a real broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_owner_skips_what_finished_behind_a_slow_merchant_exactly_once() {
    if !common::real_broker_or_skip(
        "a_new_owner_skips_what_finished_behind_a_slow_merchant_exactly_once",
    ) {
        return;
    }
    stop_and_restart_behind_a_slow_merchant(true).await;
}

/// Issue 19, items 4a and 4 ("a partition handed over twice"): the partition goes from owner to
/// owner twice while its first event is still being called. The second owner takes only a few
/// records before its window is full (small fetches, `max_pending_per_partition` 20, behind the
/// slow event), so most of what the first owner finished it has not consumed yet when it hands
/// the partition on. Its commits must carry that inherited note on: no finished event is
/// called again by the third owner.
async fn handed_over_twice_behind_a_slow_merchant(exactly_once: bool) {
    // The slow event's first two calls (the first and the second owner's) take 20 s.
    let (harness, events, settings) = behind_a_slow_merchant(exactly_once, 2).await;
    let mut narrow = settings.clone();
    narrow.processing.max_pending_per_partition = 20;
    narrow
        .kafka
        .consumer
        .0
        .insert("fetch.message.max.bytes".into(), "4096".into());
    first_owner_finishes_the_fast_events(&harness, settings.clone()).await;

    // The second owner: the slow event again, and a window full after about 20 records.
    let second = harness.start_pipeline(narrow).await;
    common::eventually("the second owner calls the slow event", WAIT, || {
        calls_per_request(&harness).get("R-SLOW") >= Some(&2)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    second.stop().await;

    let third = harness.start_pipeline(settings).await;
    let outcomes = harness.wait_outcomes_of(&events, WAIT).await;
    third.stop().await;
    common::assert_nothing_lost(&events, &outcomes);
    let slow_calls = assert_only_the_slow_event_called_again(&harness, "after two handovers");
    assert_eq!(slow_calls, 3, "the slow event, once by each owner");
    assert_one_outcome_each(exactly_once, &events, &outcomes);
    common::note(&format!(
        "handed over twice ({}): {} events, no finished event called again",
        if exactly_once {
            "exactly-once"
        } else {
            "at-least-once"
        },
        events.len()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_handed_over_twice_calls_nothing_finished_again() {
    handed_over_twice_behind_a_slow_merchant(false).await;
}

/// Real broker only (the mock cluster does not store transactional offsets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_handed_over_twice_calls_nothing_finished_again_exactly_once() {
    if !common::real_broker_or_skip(
        "a_partition_handed_over_twice_calls_nothing_finished_again_exactly_once",
    ) {
        return;
    }
    handed_over_twice_behind_a_slow_merchant(true).await;
}

/// Metadata committed by another tool, or a note that belongs to another position, is ignored:
/// every event from the committed offset on is processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_another_tool_committed_skips_nothing() {
    let harness = Harness::new(2, Vec::new()).await;
    let events = merchant_events(60, 12);
    harness.produce(&events).await;
    let foreign = ["checkpoint:v2:offsets=11-29", "rn1:3:rAQ"];
    {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &harness.kafka.bootstrap)
            .set("group.id", &harness.group)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for (partition, note) in foreign.iter().enumerate() {
            tpl.add_partition_offset(&harness.input, partition as i32, Offset::Offset(10))
                .unwrap();
            tpl.find_partition(&harness.input, partition as i32)
                .unwrap()
                .set_metadata(*note);
        }
        consumer.commit(&tpl, CommitMode::Sync).unwrap();
    }
    let pipeline = harness.start_pipeline(harness.settings()).await;
    let end: i64 = harness.end_offsets(&harness.input).await.values().sum();
    let expected = (end - 20) as u64;
    let stats = pipeline.stats.clone();
    common::eventually("every record from offset 10 on", WAIT, || {
        stats.terminal() >= expected
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stats.terminal(), expected, "nothing skipped, nothing more");
    let calls = calls_per_request(&harness);
    assert_eq!(calls.len() as u64, expected);
    assert!(calls.values().all(|count| *count == 1));
    pipeline.stop().await;
}
