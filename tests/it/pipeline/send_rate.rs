//! One send-rate limit for the whole group (issue 21, item 5).

use crate::common;

use std::time::Duration;

use regnotify::event::NotifyOutcome;
use regnotify::inspect::fully_committed;
use regnotify::simulator::rules::{Fault, FaultRule};

use common::{Harness, assert_nothing_lost, eventually, merchant_events};

use super::WAIT;

/// Issue 21, item 5: `max_requests_per_second` is the whole group's. Three members share a
/// limit of 100 requests per second in proportion to the partitions each owns; the simulator
/// counts the calls of every second. While a backlog lasts the group sends at most 110 and, on
/// average over any three seconds, more than 85 a second, also while one member leaves and its
/// partitions move to the other two.
///
/// The seconds are those the calls' `Request-Time` names: the members stamp it as a call's send
/// slot comes. Counted by arrival, a test process starved of CPU (the members, their signing
/// and the simulator share it) moves calls from one second to the next: one CI run on a loaded
/// machine saw 78 then 123 arrive.
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
    let stats = harness.simulator.stats();
    common::note(&format!(
        "calls per second by arrival: {:?}",
        stats.calls_per_second
    ));
    // Whole seconds of the backlog: the first and the last second of calls are partial.
    let seconds: Vec<(u64, u64)> = stats.calls_per_request_second.into_iter().collect();
    assert!(
        seconds.len() >= 10,
        "the backlog lasted {} s",
        seconds.len()
    );
    let full = &seconds[1..seconds.len() - 1];
    common::note(&format!(
        "calls per second as sent (unix second, calls): {full:?}; the member left in {left_second}, \
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

/// A throttling answer halves the send rate at once, for the calls already waiting for their
/// turn as well. With a backlog, `max_in_flight` (256) events each hold a send slot, 2.56 s
/// ahead at 100 a second; kept at the old pace, those calls would go on at the rate Alipay+ just
/// refused for as long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_answer_slows_the_calls_already_waiting_for_their_turn() {
    const LIMIT: u32 = 100;
    let throttle_once =
        FaultRule::for_prefix("M-THR", Fault::result("F", "REQUEST_TRAFFIC_EXCEED_LIMIT")).times(1);
    // One partition, so the throttled event comes after 400 others (about 4 s at the limit)
    // whichever broker serves it.
    let harness = Harness::with_latency(1, vec![throttle_once], Duration::from_millis(5)).await;
    let mut events = merchant_events(900, 900);
    events.insert(400, common::event("M-THR-1", "R-THR-1"));
    harness.produce(&events).await;
    let mut settings = harness.settings();
    settings.alipayplus.max_requests_per_second = LIMIT;
    let pipeline = harness.start_pipeline(settings).await;

    let throttled = || {
        harness
            .simulator
            .stats()
            .answers
            .contains_key("REQUEST_TRAFFIC_EXCEED_LIMIT")
    };
    eventually("the throttling answer", WAIT, throttled).await;
    let throttled_second = unix_second();
    let progress = harness.wait_fully_committed(WAIT).await;
    assert!(fully_committed(&progress), "{progress:?}");
    pipeline.stop().await;
    let outcomes = harness.outcomes().await;
    assert_nothing_lost(&events, &outcomes);
    let retried = outcomes
        .iter()
        .find(|outcome| outcome.registration_request_id == "R-THR-1")
        .unwrap();
    assert_eq!(retried.outcome, NotifyOutcome::Notified, "{retried:?}");
    assert_eq!(retried.attempts, 2, "{retried:?}");

    // By the second the calls' Request-Time names, as the test above counts them.
    let stats = harness.simulator.stats();
    let per_second: Vec<(u64, u64)> = stats.calls_per_request_second.into_iter().collect();
    common::note(&format!(
        "calls per second as sent (unix second, calls): {per_second:?}, by arrival: {:?}; \
         throttled in {throttled_second}",
        stats.calls_per_second
    ));
    let before: Vec<u64> = per_second
        .iter()
        .filter(|(second, _)| *second < throttled_second)
        .map(|(_, calls)| *calls)
        .collect();
    assert!(
        before.iter().any(|calls| *calls >= 90),
        "a full second at the limit before the throttling answer: {per_second:?}"
    );
    // Halved to 50 a second, climbing back by 5 a second; the slots reserved at 100 a second
    // moved to the new pace.
    let after: Vec<&(u64, u64)> = per_second
        .iter()
        .filter(|(second, _)| (throttled_second + 1..=throttled_second + 2).contains(second))
        .collect();
    assert_eq!(
        after.len(),
        2,
        "the backlog outlasted the throttle: {per_second:?}"
    );
    // Over the two seconds together, so that a send late across their boundary does not count
    // twice against one; and not far below 100 either: slowed down, not stopped.
    let calls: u64 = after.iter().map(|(_, calls)| calls).sum();
    assert!(
        (80..=130).contains(&calls),
        "{calls} calls in the two seconds after Alipay+ throttled at 100 a second (throttled in \
         {throttled_second}), not about 100: {per_second:?}"
    );
}

fn unix_second() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}
