//! Kafka faults (issue 8, deliverable 4): input batches in every compression codec, the broker
//! killed and restarted mid-stream in both delivery modes, a rolling restart of three
//! `regnotify run` members, and a 30 s schema-registry outage with `max.poll.interval.ms` at
//! 15 s. After each: every event has an outcome, the committed offsets reach the ends and never
//! move backwards (sampled through the run), and under `exactly_once` a `read_committed` reader
//! sees exactly one outcome per event.
//!
//! The compression tests run on the mock cluster too; the others need a real broker
//! (`scripts/kafka-local.sh start`, `REGNOTIFY_TEST_BOOTSTRAP`) and say they were skipped
//! without one, except under `REGNOTIFY_REQUIRE_REAL_BROKER` (CI's real-broker step), where a
//! skip is a failure. The broker-restart tests stop the broker of `scripts/kafka-local.sh`, so
//! they hold it exclusively while every other test here waits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::time::{Duration, Instant};

use regnotify::codec::{self, schemas};
use regnotify::event::RegistrationDecided;

use common::service::{
    Service, group_members, produce_in_background, stable_members, wait_committed, wait_for_calls,
};
use common::{
    Framing, Harness, assert_nothing_lost, assert_one_outcome_each,
    assert_repeats_follow_at_least_once, broker, event, merchant_events, note, produce_events,
    real_broker_or_skip, real_broker_required,
};

/// Generous bound on waiting for the service to catch up after a fault.
const WAIT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------------
// Compressed input (SPEC 3: any codec Kafka has). Outputs are compressed with the same codec.

async fn compressed_input_is_consumed(codec: &str) {
    let _broker = broker::shared().await;
    let started = Instant::now();
    let harness = Harness::new(3, Vec::new()).await;
    let events = merchant_events(300, 30);
    // Sent together with a linger, so that records share (compressed) batches.
    let producer = harness.producer(&[("compression.type", codec), ("linger.ms", "50")]);
    produce_events(&producer, &harness.input, &events, Framing::Mixed).await;
    let mut settings = harness.settings();
    settings
        .kafka
        .producer
        .0
        .insert("compression.type".into(), codec.into());
    settings.processing.max_in_flight = 32;

    let sampler = harness.sample_commits();
    let mut pipeline = harness.start_pipeline(settings).await;
    harness
        .wait_committed_while_running(&mut [&mut pipeline], WAIT)
        .await;
    pipeline.stop().await;
    sampler.finish();
    assert_one_outcome_each(&events, &harness.outcomes().await);
    let letters = harness.dead_letters().await;
    assert!(letters.is_empty(), "{codec}: {letters:?}");
    note(&format!(
        "{codec}-compressed input: {} events on the {} broker, {:.1}s",
        events.len(),
        if harness.kafka.is_real() {
            "real"
        } else {
            "mock"
        },
        started.elapsed().as_secs_f64()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_compressed_input_is_consumed() {
    compressed_input_is_consumed("gzip").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snappy_compressed_input_is_consumed() {
    compressed_input_is_consumed("snappy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lz4_compressed_input_is_consumed() {
    compressed_input_is_consumed("lz4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zstd_compressed_input_is_consumed() {
    compressed_input_is_consumed("zstd").await;
}

// ---------------------------------------------------------------------------------------------
// The broker process killed for about 10 s mid-stream, then started again with its data.

const BROKER_DOWN: Duration = Duration::from_secs(10);

async fn broker_killed_mid_stream(test: &str, exactly_once: bool) {
    if !real_broker_or_skip(test) {
        return;
    }
    // Before anything talks to the broker: no other test of this binary may see the outage.
    let _exclusive = broker::exclusive().await;
    let started = Instant::now();
    let harness = Harness::with_latency(3, Vec::new(), Duration::from_millis(5)).await;
    if let Err(why) = broker::controllable(&harness.kafka.bootstrap) {
        assert!(
            !real_broker_required(),
            "{test}: cannot stop and restart the broker: {why}"
        );
        note(&format!("{test}: skipped: {why}"));
        return;
    }
    let events = merchant_events(1500, 150);
    let mut settings = harness.settings();
    settings.processing.exactly_once = exactly_once;
    settings.processing.max_in_flight = 32;

    let sampler = harness.sample_commits();
    let mut pipeline = harness.start_pipeline(settings).await;
    // A steady stream of about 10 s (longer with the outage), so the kill lands mid-stream.
    let producing = produce_in_background(&harness, events.clone(), Duration::from_millis(300));
    let stats = pipeline.stats.clone();
    pipeline
        .wait_for("300 events finished", WAIT, || stats.terminal() >= 300)
        .await;

    let finished_at_kill = stats.terminal();
    let outage = broker::kill();
    tokio::time::sleep(BROKER_DOWN).await;
    let restart_took = outage.end();
    producing.await.expect("every event produced");
    assert!(
        finished_at_kill < events.len() as u64,
        "the broker was killed mid-stream ({finished_at_kill} of {} finished)",
        events.len()
    );

    harness
        .wait_committed_while_running(&mut [&mut pipeline], WAIT)
        .await;
    pipeline.stop().await;
    let commits = sampler.finish();
    let outcomes = harness.outcomes().await;
    let repeats = assert_nothing_lost(&events, &outcomes);
    if exactly_once {
        assert_one_outcome_each(&events, &outcomes);
    }
    let letters = harness.dead_letters().await;
    assert!(letters.is_empty(), "no dead letters expected: {letters:?}");
    note(&format!(
        "{test}: {} events, broker killed after {finished_at_kill} finished, down {BROKER_DOWN:?} \
         plus a {:.1}s restart, {} outcomes ({repeats} repeated), {} commit samples ({} failed), \
         {:.1}s",
        events.len(),
        restart_took.as_secs_f64(),
        outcomes.len(),
        commits.samples,
        commits.failed_samples,
        started.elapsed().as_secs_f64()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_and_restarted_mid_stream_loses_nothing() {
    broker_killed_mid_stream(
        "broker_killed_and_restarted_mid_stream_loses_nothing",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_broker_killed_and_restarted_mid_stream_shows_one_outcome_per_event() {
    broker_killed_mid_stream(
        "exactly_once_broker_killed_and_restarted_mid_stream_shows_one_outcome_per_event",
        true,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// A rolling restart: three `regnotify run` members, each stopped with SIGTERM and started again
// in turn (after the group is whole again) while events flow.

const MEMBERS: usize = 3;

async fn rolling_restart(test: &str, exactly_once: bool) {
    if !real_broker_or_skip(test) {
        return;
    }
    let _broker = broker::shared().await;
    let started = Instant::now();
    let harness = Harness::new(6, Vec::new()).await;
    let processing = format!(
        "max_in_flight = 16\nexactly_once = {exactly_once}\ntransaction_interval = \"50ms\""
    );
    let service = Service::new(&harness, Duration::from_millis(5), &processing).await;
    let events = merchant_events(1500, 150);
    let sampler = harness.sample_commits();
    let names: Vec<String> = (0..MEMBERS).map(|i| format!("member-{i}")).collect();
    let mut members: Vec<_> = names.iter().map(|name| service.spawn(name)).collect();
    // A steady stream (about 12 s without the restarts) that outlasts them.
    let producing = produce_in_background(&harness, events.clone(), Duration::from_millis(400));

    let mut restarted_at = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let target = (i as u64 + 1) * 250;
        {
            let mut running: Vec<_> = members.iter_mut().collect();
            wait_for_calls(&service, &mut running, target).await;
            wait_for_whole_group(&harness, &mut running).await;
        }
        restarted_at.push(service.calls());
        let member = members.remove(i);
        member.stop_cleanly(Duration::from_secs(60));
        members.insert(i, service.spawn(name));
    }
    let last_restart = *restarted_at.last().unwrap();
    assert!(
        last_restart < events.len() as u64,
        "the last member restarted mid-stream ({last_restart} calls for {} events)",
        events.len()
    );
    producing.await.expect("every event produced");
    {
        let mut running: Vec<_> = members.iter_mut().collect();
        wait_committed(&harness, &mut running).await;
    }
    for member in members {
        member.stop_cleanly(Duration::from_secs(60));
    }
    let commits = sampler.finish();

    let outcomes = harness.outcomes().await;
    let repeats = assert_nothing_lost(&events, &outcomes);
    if exactly_once {
        assert_one_outcome_each(&events, &outcomes);
    } else {
        assert_repeats_follow_at_least_once(&outcomes);
    }
    let letters = harness.dead_letters().await;
    assert!(letters.is_empty(), "no dead letters expected: {letters:?}");
    let stats = service.simulator.stats();
    assert_eq!(stats.signature_failures, 0);
    assert!(
        stats.merchants_with_overlapping_calls().is_empty(),
        "one call at a time per merchant through the restarts: {:?}",
        stats.merchants_with_overlapping_calls()
    );
    note(&format!(
        "{test}: {} events, members restarted at {restarted_at:?} HTTP calls, {} calls in all, \
         {} outcomes ({repeats} repeated), {} commit samples, {:.1}s",
        events.len(),
        service.calls(),
        outcomes.len(),
        commits.samples,
        started.elapsed().as_secs_f64()
    ));
}

/// Waits until all [`MEMBERS`] are in the stable group, checking that they live.
async fn wait_for_whole_group(
    harness: &Harness,
    running: &mut [&mut common::service::RunningService],
) {
    let deadline = Instant::now() + WAIT;
    while stable_members(&harness.kafka.bootstrap, &harness.group).await != MEMBERS {
        for member in running.iter_mut() {
            member.assert_alive();
        }
        assert!(
            Instant::now() < deadline,
            "the group never had {MEMBERS} members"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_of_three_members_loses_nothing() {
    rolling_restart("rolling_restart_of_three_members_loses_nothing", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_rolling_restart_of_three_members_shows_one_outcome_per_event() {
    rolling_restart(
        "exactly_once_rolling_restart_of_three_members_shows_one_outcome_per_event",
        true,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// A schema-registry outage longer than max.poll.interval.ms: decoding waits (a registry outage
// never dead-letters a decision), and the member stays in the group all along.

const REGISTRY_DOWN: Duration = Duration::from_secs(30);
const MAX_POLL_INTERVAL_MS: &str = "15000";
/// A second id for the input schema, first seen by the pipeline during the outage.
const OUTAGE_SCHEMA_ID: u32 = 2;

fn phase(name: &str, count: usize) -> Vec<RegistrationDecided> {
    (0..count)
        .map(|i| event(&format!("M-{:02}", i % 20), &format!("R-{name}-{i:04}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_registry_outage_keeps_the_member_in_the_group() {
    let test = "schema_registry_outage_keeps_the_member_in_the_group";
    if !real_broker_or_skip(test) {
        return;
    }
    let _broker = broker::shared().await;
    let started = Instant::now();
    let harness = Harness::new(2, Vec::new()).await;
    harness
        .registry
        .add(OUTAGE_SCHEMA_ID, schemas::INPUT_SCHEMA_VERSIONS[0].json);
    let mut settings = harness.settings();
    settings
        .kafka
        .consumer
        .0
        .insert("max.poll.interval.ms".into(), MAX_POLL_INTERVAL_MS.into());
    settings.processing.max_in_flight = 32;

    // Before the outage: the input schema id and the outcome subject are known and cached.
    let before = phase("BEFORE", 20);
    harness.produce_framed(&before, Framing::Confluent).await;
    let sampler = harness.sample_commits();
    let mut pipeline = harness.start_pipeline(settings).await;
    harness
        .wait_committed_while_running(&mut [&mut pipeline], WAIT)
        .await;
    let stats = pipeline.stats.clone();
    let rebalances_before = stats.rebalances.load(std::sync::atomic::Ordering::Relaxed);
    let (state, members) = group_members(&harness.kafka.bootstrap, &harness.group)
        .await
        .expect("group described");
    assert_eq!(
        (state.as_str(), members.len()),
        ("Stable", 1),
        "{members:?}"
    );
    let member = members[0].clone();

    // The outage, with more records than any buffer between Kafka and the decoder holds, all in
    // a schema id the pipeline has not fetched yet.
    harness.registry.go_down().await;
    let during = phase("DURING", 3000);
    let records: Vec<(Vec<u8>, Vec<u8>)> = during
        .iter()
        .map(|e| {
            (
                e.reference_merchant_id.clone().into_bytes(),
                codec::encode_event_confluent(OUTAGE_SCHEMA_ID, e).unwrap(),
            )
        })
        .collect();
    harness.produce_values(&records).await;
    let outage_started = Instant::now();
    let mut samples = 0;
    let mut left_the_group = Vec::new();
    while outage_started.elapsed() < REGISTRY_DOWN {
        pipeline.assert_running();
        match group_members(&harness.kafka.bootstrap, &harness.group).await {
            Some((state, members)) => {
                samples += 1;
                if state != "Stable" || members != [member.clone()] {
                    left_the_group.push(format!(
                        "{:.1}s: {state} {members:?}",
                        outage_started.elapsed().as_secs_f64()
                    ));
                }
            }
            None => left_the_group.push(format!(
                "{:.1}s: the group is not listed",
                outage_started.elapsed().as_secs_f64()
            )),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let consumed_in_outage = stats.consumed.load(std::sync::atomic::Ordering::Relaxed);
    let finished_in_outage = stats.terminal();
    harness.registry.come_back().await;

    // The outage was real: records of the new schema id reached the pipeline and none of them
    // could finish without the registry.
    assert!(
        consumed_in_outage > before.len() as u64,
        "the pipeline took records during the outage ({consumed_in_outage} consumed)"
    );
    assert_eq!(
        finished_in_outage,
        before.len() as u64,
        "nothing decodable without the registry finished during the outage"
    );
    assert!(
        left_the_group.is_empty(),
        "the member left the group during a {REGISTRY_DOWN:?} registry outage with \
         max.poll.interval.ms = {MAX_POLL_INTERVAL_MS} (member {member}, {samples} samples): \
         {left_the_group:?}"
    );

    harness
        .wait_committed_while_running(&mut [&mut pipeline], WAIT)
        .await;
    let rebalances_after = stats.rebalances.load(std::sync::atomic::Ordering::Relaxed);
    let after = group_members(&harness.kafka.bootstrap, &harness.group).await;
    pipeline.stop().await;
    sampler.finish();
    assert_eq!(
        rebalances_after, rebalances_before,
        "no revoke, loss or new assignment through the outage"
    );
    assert_eq!(
        after.map(|(_, members)| members),
        Some(vec![member]),
        "the same member after the outage"
    );
    let mut events = before;
    events.extend(during);
    assert_one_outcome_each(&events, &harness.outcomes().await);
    let letters = harness.dead_letters().await;
    assert!(
        letters.is_empty(),
        "a registry outage never dead-letters: {letters:?}"
    );
    note(&format!(
        "{test}: {} events, registry down {REGISTRY_DOWN:?}, {samples} group samples, {:.1}s",
        events.len(),
        started.elapsed().as_secs_f64()
    ));
}
