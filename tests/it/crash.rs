//! `regnotify run` as a separate process against a real Kafka broker, killed with SIGKILL mid-stream
//! (SPEC 5: a crash at any point loses nothing). Real broker only: start one with
//! `scripts/kafka-local.sh start` and set `REGNOTIFY_TEST_BOOTSTRAP`; without it these tests say
//! they were skipped and pass, except where `REGNOTIFY_REQUIRE_REAL_BROKER` is set (CI's
//! real-broker step), where a skip is a failure.
//!
//! Why not the mock cluster: these tests depend on what a broker keeps across the death of a
//! client, and on its group coordinator expiring a dead member after `session.timeout.ms`; the
//! mock's group coordinator and storage are simplified stand-ins for both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use regnotify::event::{RegistrationDecided, RegistrationNotifyOutcome};
use regnotify::inspect::fully_committed;

use common::service::{
    Service, produce_in_background, stable_members, wait_committed, wait_for_calls,
};
use common::{
    Harness, assert_nothing_lost, assert_one_outcome_each, merchant_events, note,
    real_broker_or_skip,
};

const WAIT: Duration = Duration::from_secs(120);
/// `max_in_flight` of the SIGKILL tests: what each kill may repeat at most.
const MAX_IN_FLIGHT: u64 = 32;

/// Runs `regnotify run` over 2000 events, SIGKILLs it three times at random moments (restarting
/// it each time), lets it finish and stops it with SIGTERM. Returns the events and every outcome
/// a `read_committed` reader sees.
async fn sigkill_three_times(
    test: &str,
    exactly_once: bool,
) -> (Vec<RegistrationDecided>, Vec<RegistrationNotifyOutcome>) {
    let started = Instant::now();
    let harness = Harness::new(3, Vec::new()).await;
    let mut processing = format!(
        "max_in_flight = {MAX_IN_FLIGHT}\nmax_pending_per_partition = 500\n\
         exactly_once = {exactly_once}\ntransaction_interval = \"50ms\""
    );
    if exactly_once {
        // One instance restarted in place keeps its transactional id, so each restart aborts
        // the killed process's open transaction at once (see README, exactly-once).
        processing.push_str(&format!(
            "\n\n[kafka.producer]\n\"transactional.id\" = \"{}-eos\"\n",
            harness.group
        ));
    }
    let service = Service::new(&harness, Duration::from_millis(10), &processing).await;
    let events = merchant_events(2000, 200);
    let producing = produce_in_background(&harness, events.clone(), Duration::ZERO);
    // Committed offsets never move backwards, not even across SIGKILLs.
    let sampler = harness.sample_commits();

    let mut running = service.spawn("run");
    let kills = 3;
    let mut killed_at = Vec::new();
    for kill in 0..kills {
        // Somewhere inside each fifth of the stream (counted in HTTP calls, which include the
        // repeats after earlier crashes), then a random few milliseconds more.
        let fifth = events.len() as u64 / 5;
        let target = (kill + 1) * fifth + rand::random_range(0..fifth / 2);
        wait_for_calls(&service, &mut [&mut running], target).await;
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..150))).await;
        killed_at.push(service.calls());
        running.crash();
        running = service.spawn("run");
    }
    producing.await.expect("all events produced");
    wait_committed(&harness, &mut [&mut running]).await;
    running.stop_cleanly(Duration::from_secs(30));
    let commits = sampler.finish();

    let progress = harness.progress().await;
    assert!(fully_committed(&progress), "{progress:?}");
    // Whole topics, as a read_committed reader sees them (aborted outputs of a killed process
    // are skipped; the read waits for any transaction it left open to be aborted).
    let outcomes = harness.outcomes().await;
    let repeats = assert_nothing_lost(&events, &outcomes);
    let dead_letters = harness.dead_letters().await;
    assert!(
        dead_letters.is_empty(),
        "no dead letters expected: {dead_letters:?}"
    );
    assert_eq!(service.simulator.stats().signature_failures, 0);
    // Every event is answered at the first call, so each call beyond one per event is a repeat.
    // An event keeps its in-flight slot from its call until its outcome is durable (its commit,
    // or its transaction, landed), so a kill can repeat only the events holding a slot then:
    // at most max_in_flight a kill. Finished work the commits cover (their notes included) is
    // not called again.
    let stats = service.simulator.stats();
    assert_eq!(
        stats.arrivals_dropped, 0,
        "every call is in the simulator's record"
    );
    let mut calls_per_event: HashMap<&str, u64> = HashMap::new();
    for arrival in &stats.arrivals {
        *calls_per_event
            .entry(arrival.registration_request_id.as_str())
            .or_default() += 1;
    }
    for event in &events {
        assert!(
            calls_per_event.contains_key(event.registration_request_id.as_str()),
            "{} never called",
            event.registration_request_id
        );
    }
    // The simulator records a call when it answers; a call cut short by a kill has no answer.
    let answered_again: u64 = calls_per_event.values().map(|calls| calls - 1).sum();
    let most = calls_per_event.values().copied().max().unwrap_or(0);
    let cut_short = service.calls() - stats.arrivals.len() as u64;
    let repeated_calls = service.calls() - events.len() as u64;
    note(&format!(
        "{test}: {} events, {kills} SIGKILLs at {killed_at:?} HTTP calls, {} HTTP calls in all \
         ({repeated_calls} repeated: {answered_again} answered again, {cut_short} cut short by \
         a kill; at most {most} answered calls for one event), {} outcomes ({repeats} repeated), {} commit samples, {:.1}s",
        events.len(),
        service.calls(),
        outcomes.len(),
        commits.samples,
        started.elapsed().as_secs_f64()
    ));
    assert!(
        repeated_calls <= kills * MAX_IN_FLIGHT,
        "{repeated_calls} repeated calls over {kills} kills: more than the {MAX_IN_FLIGHT} \
         events that can be in flight at each"
    );
    (events, outcomes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_and_restart_loses_nothing() {
    let test = "sigkill_mid_stream_and_restart_loses_nothing";
    if !real_broker_or_skip(test) {
        return;
    }
    let (events, outcomes) = sigkill_three_times(test, false).await;
    // At least once: only work after the last commit before each crash may repeat, a small
    // part of the stream.
    let repeats = outcomes.len() - events.len();
    assert!(
        repeats < events.len() / 2,
        "{repeats} repeats for {} events",
        events.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_sigkill_mid_stream_shows_one_outcome_per_event() {
    let test = "exactly_once_sigkill_mid_stream_shows_one_outcome_per_event";
    if !real_broker_or_skip(test) {
        return;
    }
    let (events, outcomes) = sigkill_three_times(test, true).await;
    // Outputs of a transaction cut short by SIGKILL are aborted (fenced by the next producer of
    // the group), so a read_committed reader sees exactly one outcome per event.
    assert_one_outcome_each(&events, &outcomes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_mid_stream_is_replaced_after_its_session_times_out() {
    if !real_broker_or_skip("a_member_killed_mid_stream_is_replaced_after_its_session_times_out") {
        return;
    }
    let started = Instant::now();
    let harness = Harness::new(4, Vec::new()).await;
    let service = Service::new(&harness, Duration::from_millis(10), "max_in_flight = 16").await;
    let events = merchant_events(1000, 100);
    // A steady stream (about 7 s long), so that the kill below lands mid-stream.
    let producing = produce_in_background(&harness, events.clone(), Duration::from_millis(350));

    let mut first = service.spawn("first");
    let mut second = service.spawn("second");
    wait_for_calls(&service, &mut [&mut first, &mut second], 100).await;
    // Both members hold partitions before one dies.
    let deadline = Instant::now() + WAIT;
    while stable_members(&harness.kafka.bootstrap, &harness.group).await != 2 {
        first.assert_alive();
        second.assert_alive();
        assert!(Instant::now() < deadline, "the group never had two members");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let killed_at = service.calls();
    let killed = Instant::now();
    first.crash();
    assert!(
        killed_at < events.len() as u64,
        "killed before the stream was done ({killed_at} calls)"
    );
    producing.await.expect("all events produced");
    wait_committed(&harness, &mut [&mut second]).await;
    let took_over = killed.elapsed();
    second.stop_cleanly(Duration::from_secs(30));

    let outcomes = harness.outcomes().await;
    let repeats = assert_nothing_lost(&events, &outcomes);
    let per_partition: HashMap<i32, usize> =
        outcomes.iter().fold(HashMap::new(), |mut counts, o| {
            *counts.entry(o.source_partition).or_default() += 1;
            counts
        });
    assert_eq!(per_partition.len(), 4, "outcomes from every partition");
    note(&format!(
        "rebalance test: member SIGKILLed at {killed_at} HTTP calls, the other finished \
         everything {:.1}s later, {} outcomes ({repeats} repeated), {:.1}s",
        took_over.as_secs_f64(),
        outcomes.len(),
        started.elapsed().as_secs_f64()
    ));
    assert!(
        took_over >= Duration::from_secs(3),
        "the dead member's partitions waited for its session to time out ({took_over:?})"
    );
}
