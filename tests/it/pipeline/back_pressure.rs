//! Back-pressure (SPEC 5): the simulator holds answers at its gate, so the test decides when
//! each event finishes.

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use regnotify::config::Settings;
use regnotify::inspect::fully_committed;

use common::{Harness, assert_one_outcome_each, event, eventually, merchant_events};

use super::{QUIET, WAIT};

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
