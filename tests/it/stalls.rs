//! Where features meet (issue 19): the stalls found by trying the service as a new user would,
//! each in both delivery modes. Safety: nothing lost, nothing doubled (under
//! `exactly_once`, one outcome per event as a `read_committed` reader sees it). Liveness: once
//! the fault ends, every event reaches its terminal outcome within a bound, and the service is
//! still running.
//!
//! - Alipay+ down while a second member joins and then leaves by SIGTERM (a deploy, or an
//!   autoscaler adding a member on growing lag during an outage): every event is notified after
//!   recovery, none dead-lettered.
//! - A few events Alipay+ refuses (HTTP 400) on a quiet topic: they are dead-lettered
//!   `REQUEST_REFUSED` on their own, and later good events are notified; also with a refused
//!   streak short enough to open the circuit.
//! - One MPP failing for a while: the other MPP's events, in the same partitions behind the
//!   failing MPP's own, are all notified during the outage, and the failing MPP's after it is
//!   back (before issue 19's item 4g was fixed, about 200 of the other MPP's 500 were, then the
//!   intake of every partition stopped until the failing MPP was back).
//!
//! (The broker killed and restarted under exactly-once is `tests/it/faults.rs`.)
//!
//! Every test runs on the mock cluster and, in CI's real-broker step, on a real broker
//! (`scripts/kafka-local.sh`, `REGNOTIFY_TEST_BOOTSTRAP`). The mock cluster does not store
//! transactional offsets and refuses commits during a rebalance, so where a member joins or
//! leaves, the per-event counts (one outcome each under `exactly_once`, repeats only where the
//! commit rule allows them at-least-once) are checked on a real broker only; everywhere else
//! they are checked on both. The tests take turns (they measure time on two shared cores).
//!
//! Over 600 lines: one concern, issue 19's stall scenarios, each scenario's set-up kept beside its
//! checks in both delivery modes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

use common::service::produce_in_background;
use common::{
    Harness, RunningPipeline, assert_nothing_lost, assert_one_outcome_each,
    assert_repeats_follow_at_least_once, event, merchant_events, note,
};
use regnotify::config::{MppClientSettings, Settings};
use regnotify::event::{NotifyOutcome, RegistrationDecided, RegistrationNotifyOutcome};
use regnotify::keys::PrivateSigningKey;
use regnotify::simulator::rules::{Fault, FaultRule};
use regnotify::simulator::{OutageMode, Simulator, SimulatorConfig, SimulatorHandle};

/// Two scenarios at a time, no more: each measures what happens within a bound of time (60 s
/// against some 30 s of the scenario's own waiting), and they spend that time waiting on timers
/// and the broker, not on the CPU. One at a time, this suite alone took 280-320 s of CI.
async fn two_at_a_time() -> SemaphorePermit<'static> {
    static TURNS: Semaphore = Semaphore::const_new(2);
    TURNS
        .acquire()
        .await
        .expect("the semaphore is never closed")
}

fn mode(exactly_once: bool) -> &'static str {
    if exactly_once {
        "exactly-once"
    } else {
        "at-least-once"
    }
}

fn broker(harness: &Harness) -> &'static str {
    if harness.kafka.is_real() {
        "real"
    } else {
        "mock"
    }
}

/// The settings of issue 19's scenarios: an event's retry budget is 5 s (8 attempts, backoff
/// from 200 ms), a revoke waits 2 s for work in flight, and an open circuit probes at least
/// every 4 s (production's 60 s would only lengthen the tests).
fn stall_settings(harness: &Harness, exactly_once: bool) -> Settings {
    let mut settings = harness.settings();
    settings.processing.exactly_once = exactly_once;
    settings.processing.transaction_interval = Duration::from_millis(50);
    settings.processing.max_attempts = 8;
    settings.processing.backoff_initial = Duration::from_millis(200);
    settings.processing.backoff_max = Duration::from_secs(2);
    settings.processing.max_retry_elapsed = Duration::from_secs(5);
    settings.processing.rebalance_drain_timeout = Duration::from_secs(2);
    settings.processing.shutdown_timeout = Duration::from_secs(5);
    settings.alipayplus.circuit_breaker.probe_interval_max = Duration::from_secs(4);
    settings
}

/// Polls the result topic (about once a second) until each of `events` has an outcome, checking
/// that `pipeline` keeps running and showing `meanwhile` every read; `Err` with how many still
/// have none once `deadline` passes.
async fn outcomes_by(
    harness: &Harness,
    pipeline: &mut RunningPipeline,
    events: &[RegistrationDecided],
    deadline: Instant,
    mut meanwhile: impl FnMut(&[RegistrationNotifyOutcome]),
) -> Result<Vec<RegistrationNotifyOutcome>, usize> {
    loop {
        if pipeline.task.is_finished() {
            let ended = (&mut pipeline.task).await;
            panic!("the pipeline ended on its own: {ended:?}");
        }
        let outcomes = harness.outcomes().await;
        meanwhile(&outcomes);
        let missing = without_outcome(events, &outcomes);
        if missing == 0 {
            return Ok(outcomes);
        }
        if Instant::now() >= deadline {
            return Err(missing);
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
}

/// How many of `events` have no outcome in `outcomes`.
fn without_outcome(
    events: &[RegistrationDecided],
    outcomes: &[RegistrationNotifyOutcome],
) -> usize {
    let seen: HashSet<&str> = outcomes.iter().map(|o| o.event_id.as_str()).collect();
    events
        .iter()
        .filter(|e| !seen.contains(e.event_id.as_str()))
        .count()
}

/// Where the events of `events` that have no outcome in `outcomes` sit on the input topic
/// (offsets by partition), and the group's committed offsets: for a failure message.
async fn where_missing(
    harness: &Harness,
    events: &[RegistrationDecided],
    outcomes: &[RegistrationNotifyOutcome],
) -> String {
    let seen: HashSet<&str> = outcomes.iter().map(|o| o.event_id.as_str()).collect();
    let missing: Vec<&[u8]> = events
        .iter()
        .filter(|e| !seen.contains(e.event_id.as_str()))
        .map(|e| e.event_id.as_bytes())
        .collect();
    let mut at: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for record in harness.read_whole(&harness.input).await {
        let value = record.value.as_deref().unwrap_or_default();
        if missing
            .iter()
            .any(|id| value.windows(id.len()).any(|w| w == *id))
        {
            at.entry(record.partition).or_default().push(record.offset);
        }
    }
    let at: Vec<String> = at
        .into_iter()
        .map(|(partition, offsets)| format!("{partition}: {}", ranges(&offsets)))
        .collect();
    let mut merchants: BTreeMap<&str, usize> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| !seen.contains(e.event_id.as_str()))
    {
        *merchants
            .entry(e.reference_merchant_id.as_str())
            .or_default() += 1;
    }
    let named = merchants.len();
    let mut merchants: Vec<String> = merchants
        .into_iter()
        .take(12)
        .map(|(merchant, count)| format!("{merchant} x{count}"))
        .collect();
    if named > merchants.len() {
        merchants.push(format!("... {named} merchants in all"));
    }
    let committed: Vec<String> = harness
        .progress()
        .await
        .iter()
        .map(|p| format!("{}: {:?} of {}", p.partition, p.committed, p.end))
        .collect();
    format!(
        "input offsets without outcome [{}]; their merchants [{}]; committed [{}]",
        at.join("; "),
        merchants.join(", "),
        committed.join(", ")
    )
}

/// `1-4,7` for sorted `[1, 2, 3, 4, 7]`.
fn ranges(sorted: &[i64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        while i + 1 < sorted.len() && sorted[i + 1] == sorted[i] + 1 {
            i += 1;
        }
        out.push(if sorted[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", sorted[i])
        });
        i += 1;
    }
    out.join(",")
}

/// How many of `events` were notified.
fn notified(events: &[RegistrationDecided], outcomes: &[RegistrationNotifyOutcome]) -> usize {
    let done: HashSet<&str> = outcomes
        .iter()
        .filter(|o| o.outcome == NotifyOutcome::Notified)
        .map(|o| o.event_id.as_str())
        .collect();
    events
        .iter()
        .filter(|e| done.contains(e.event_id.as_str()))
        .count()
}

/// Every outcome of `outcomes` is NOTIFIED (the first five others named otherwise).
fn assert_all_notified(test: &str, outcomes: &[RegistrationNotifyOutcome]) {
    let others: Vec<_> = outcomes
        .iter()
        .filter(|o| o.outcome != NotifyOutcome::Notified)
        .map(|o| (&o.registration_request_id, o.outcome, &o.error))
        .collect();
    assert!(
        others.is_empty(),
        "{test}: {} outcomes not NOTIFIED, e.g. {:?}",
        others.len(),
        &others[..others.len().min(5)]
    );
}

// ---------------------------------------------------------------------------------------------
// 1. Alipay+ down while a member joins and leaves.
//
// Issue 19, scenario 1: one member, 800 events over 120 merchants, Alipay+ down (half dropped
// connections, half 503), 8 s later a second member joins, 12 s later it leaves by SIGTERM,
// 10 s later Alipay+ is back; 150 s after recovery 752 events had no outcome, for good (the
// revoke cancelled every parked job, the partitions assigned after it came back paused by the
// intake hold, and nobody was left to probe the open circuit). Here: 400 events over 100
// merchants, a quarter notified before the outage, the rest produced during its first 9 s.

const EVENTS: usize = 400;
const MERCHANTS: usize = 100;
/// From the start of the outage to the second member's start; from its start to its leave; from
/// its leave to the end of the outage (30 s in all when the group settles in time).
const JOIN_AFTER: Duration = Duration::from_secs(8);
const LEAVE_AFTER: Duration = Duration::from_secs(12);
const BACK_AFTER: Duration = Duration::from_secs(10);
/// Bound on the second member getting partitions.
const ASSIGNED_WITHIN: Duration = Duration::from_secs(60);
/// Every event has its outcome this long after Alipay+ is back (a probe within 4 s, then the
/// whole backlog at hundreds of events a second, and a rebalance or two).
const RECOVERY_BOUND: Duration = Duration::from_secs(60);

async fn alipay_down_while_a_member_joins_and_leaves(test: &str, exactly_once: bool) {
    let _turn = two_at_a_time().await;
    let started = Instant::now();
    let harness = Harness::new(6, Vec::new()).await;
    let events = merchant_events(EVENTS, MERCHANTS);
    let (before, during) = events.split_at(EVENTS / 4);
    let settings = stall_settings(&harness, exactly_once);
    let sampler = harness.sample_commits();

    let mut first = harness.start_pipeline(settings.clone()).await;
    harness.produce(before).await;
    let first_stats = first.stats.clone();
    first
        .wait_for(
            "the first quarter notified",
            Duration::from_secs(60),
            || first_stats.terminal() >= before.len() as u64,
        )
        .await;

    // Down until the test says so (10 s after the second member left).
    harness
        .simulator
        .outage(Duration::from_secs(3600), OutageMode::Mixed);
    let outage_started = Instant::now();
    let producing = produce_in_background(&harness, during.to_vec(), Duration::from_millis(1500));

    tokio::time::sleep(JOIN_AFTER).await;
    let second = harness.start_pipeline(settings).await;
    let joined = Instant::now();
    let second_status = second.status.clone();
    let mut second_assigned = 0;
    // It leaves 12 s after it joined, once it has partitions (the group may take longer to
    // settle on the mock cluster: then it leaves as soon as it has them).
    while joined.elapsed() < LEAVE_AFTER || second_assigned == 0 {
        first.assert_running();
        second.assert_running();
        second_assigned = second_assigned.max(second_status.assigned_partitions());
        assert!(
            joined.elapsed() < ASSIGNED_WITHIN,
            "{test}: the second member had no partition {ASSIGNED_WITHIN:?} after it started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stayed = joined.elapsed();
    // SIGTERM (the same path): it stops on its own time while the outage goes on.
    let leaving = tokio::spawn(second.stop());
    producing.await.expect("every event produced");

    tokio::time::sleep(BACK_AFTER).await;
    harness.simulator.outage(Duration::ZERO, OutageMode::Mixed);
    let outage = outage_started.elapsed();
    let recovered = Instant::now();
    let open_at_recovery = without_outcome(&events, &harness.outcomes().await);
    assert!(
        open_at_recovery > 0,
        "{test}: every event had its outcome before Alipay+ came back: no outage was seen"
    );
    let outcomes = match outcomes_by(
        &harness,
        &mut first,
        &events,
        recovered + RECOVERY_BOUND,
        |_| {},
    )
    .await
    {
        Ok(outcomes) => outcomes,
        Err(missing) => {
            let outcomes = harness.outcomes().await;
            panic!(
                "{test}: {missing} of {EVENTS} events have no outcome {RECOVERY_BOUND:?} after \
                 Alipay+ came back ({} calls in all, circuit: {:?}, consumed {}, terminal {}); \
                 {}",
                harness.simulator.stats().total_calls,
                first.status.circuit(),
                first
                    .stats
                    .consumed
                    .load(std::sync::atomic::Ordering::Relaxed),
                first.stats.terminal(),
                where_missing(&harness, &events, &outcomes).await
            )
        }
    };
    let all_in = recovered.elapsed();
    let left_in = leaving.await.expect("the second member stops");

    // The offsets too (the mock cluster does not store transactional ones).
    if !exactly_once || harness.kafka.is_real() {
        harness
            .wait_committed_while_running(&mut [&mut first], RECOVERY_BOUND)
            .await;
    }
    first.stop().await;
    sampler.finish();
    let outcomes = if exactly_once {
        // Outcomes written since the wait above are in transactions committed since.
        harness.outcomes().await
    } else {
        outcomes
    };
    let repeats = assert_nothing_lost(&events, &outcomes);
    if harness.kafka.is_real() {
        if exactly_once {
            assert_one_outcome_each(&events, &outcomes);
        } else {
            assert_repeats_follow_at_least_once(&outcomes);
        }
    }
    assert_all_notified(test, &outcomes);
    let letters = harness.dead_letters().await;
    assert!(letters.is_empty(), "{test}: dead letters: {letters:?}");
    note(&format!(
        "{test}: {EVENTS} events ({} mode, {} broker); {open_at_recovery} without outcome \
         when Alipay+ came back after {:.1}s, all in {:.1}s after; the second member held up \
         to {second_assigned} partitions, stayed {:.1}s and stopped in {:.1}s; {} outcomes \
         ({repeats} repeated), {} calls; {:.1}s in all",
        mode(exactly_once),
        broker(&harness),
        outage.as_secs_f64(),
        all_in.as_secs_f64(),
        stayed.as_secs_f64(),
        left_in.as_secs_f64(),
        outcomes.len(),
        harness.simulator.stats().total_calls,
        started.elapsed().as_secs_f64()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alipay_down_while_a_member_joins_and_leaves_then_everything_is_notified() {
    alipay_down_while_a_member_joins_and_leaves(
        "alipay_down_while_a_member_joins_and_leaves_then_everything_is_notified",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_alipay_down_while_a_member_joins_and_leaves_then_everything_is_notified() {
    alipay_down_while_a_member_joins_and_leaves(
        "exactly_once_alipay_down_while_a_member_joins_and_leaves_then_everything_is_notified",
        true,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2. A few refusals on a quiet topic.
//
// Issue 19, scenario 2: a member at the end of an idle topic, five events Alipay+ answers with
// HTTP 400, twenty good events 15 s later; after 120 s none of them had an outcome (the refused
// streak opened the circuit for good, the refused events became its probes, and their refusals
// spent no retry budget). Here the five are each a merchant of their own and the simulator
// answers every call for them HTTP 400.
//
// With the default refused streak (20), each refused event has five attempts, each refusal held
// 1 s for another answer to decide it: twenty-five refusals of five events, which must not open
// the circuit (the streak counts distinct events), and which end on their own, before any good
// event comes, by spending the events' retry budgets. With a refused streak of 3 the circuit does
// open and the refused events become its probes; each has three attempts, which its refused
// probes spend, so they still end, and the good events after them are notified.

const BAD: usize = 5;
const GOOD: usize = 20;
/// Between the refused events and the good ones. With the default streak, the refused ones end
/// within it on their own: five attempts, each refusal held 1 s, at most 3 s of backoff.
const QUIET: Duration = Duration::from_secs(15);
/// The good events' outcomes (and the refused ones', if they are not in yet) come within this.
const LATER_BOUND: Duration = Duration::from_secs(60);

async fn a_few_refusals_on_a_quiet_topic(test: &str, exactly_once: bool, streak: Option<u32>) {
    let _turn = two_at_a_time().await;
    let started = Instant::now();
    let rules = vec![FaultRule::for_prefix(
        "M-BAD-",
        Fault::HttpStatus { status: 400 },
    )];
    let harness = Harness::new(2, rules).await;
    let mut settings = stall_settings(&harness, exactly_once);
    settings.processing.max_retry_elapsed = Duration::from_secs(3);
    settings.alipayplus.circuit_breaker.refusal_hold = Duration::from_secs(1);
    match streak {
        None => settings.processing.max_attempts = 5,
        Some(streak) => {
            settings.processing.max_attempts = 3;
            settings.processing.refused_streak_threshold = streak;
            settings.alipayplus.circuit_breaker.probe_interval_max = Duration::from_secs(2);
        }
    }
    let bad: Vec<_> = (0..BAD)
        .map(|i| event(&format!("M-BAD-{i}"), &format!("R-BAD-{i}")))
        .collect();
    let good: Vec<_> = (0..GOOD)
        .map(|i| event(&format!("M-GOOD-{i:02}"), &format!("R-GOOD-{i:02}")))
        .collect();
    let all: Vec<_> = bad.iter().chain(&good).cloned().collect();

    let mut pipeline = harness.start_pipeline(settings).await;
    let status = pipeline.status.clone();
    pipeline
        .wait_for("the member assigned", Duration::from_secs(60), || {
            status.assigned_partitions() > 0
        })
        .await;
    // At the end of the empty topic for a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;

    harness.produce(&bad).await;
    let produced_bad = Instant::now();
    let mut circuit_opened = false;
    let mut bad_ended_in = None;
    while produced_bad.elapsed() < QUIET {
        pipeline.assert_running();
        circuit_opened |= status.circuit().is_some();
        if bad_ended_in.is_none() && pipeline.stats.terminal() >= BAD as u64 {
            bad_ended_in = Some(produced_bad.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bad_ended_alone = pipeline.stats.terminal();
    let calls_alone = harness.simulator.stats().total_calls;

    harness.produce(&good).await;
    let produced_good = Instant::now();
    let outcomes = match outcomes_by(
        &harness,
        &mut pipeline,
        &all,
        produced_good + LATER_BOUND,
        |_| circuit_opened |= status.circuit().is_some(),
    )
    .await
    {
        Ok(outcomes) => outcomes,
        Err(missing) => {
            let outcomes = harness.outcomes().await;
            panic!(
                "{test}: {missing} of {} events have no outcome {LATER_BOUND:?} after the good \
                 ones were produced: {} of {BAD} refused ones dead-lettered, {} of {GOOD} good \
                 ones notified, {} calls, circuit: {:?}",
                all.len(),
                bad.len() - without_outcome(&bad, &outcomes),
                notified(&good, &outcomes),
                harness.simulator.stats().total_calls,
                status.circuit()
            )
        }
    };
    let all_in = produced_good.elapsed();
    // The offsets too (the mock cluster does not store transactional ones).
    if !exactly_once || harness.kafka.is_real() {
        harness
            .wait_committed_while_running(&mut [&mut pipeline], LATER_BOUND)
            .await;
    }
    pipeline.stop().await;

    // One member, no rebalance: one outcome each in either mode.
    assert_one_outcome_each(&all, &outcomes);
    for event in &bad {
        let outcome = outcomes
            .iter()
            .find(|o| o.event_id == event.event_id)
            .unwrap();
        assert_eq!(
            outcome.outcome,
            NotifyOutcome::DeadLettered,
            "{test}: {outcome:?}"
        );
        assert_eq!(outcome.http_status, Some(400), "{test}: {outcome:?}");
    }
    assert_eq!(
        notified(&good, &outcomes),
        GOOD,
        "{test}: every good event notified"
    );
    let letters = harness.dead_letters().await;
    assert_eq!(
        letters.len(),
        BAD,
        "{test}: one dead letter per refused event"
    );
    for letter in &letters {
        assert_eq!(
            letter.header("dlq.reason"),
            Some("REQUEST_REFUSED"),
            "{test}: {letter:?}"
        );
    }
    match streak {
        // Five refused events cannot open a circuit that needs twenty (however often each is
        // refused), and nothing else tells their refusals apart: they spend their own budget
        // and end before any good event comes.
        None => {
            assert!(
                !circuit_opened,
                "{test}: five refused events opened the circuit"
            );
            assert_eq!(
                bad_ended_alone, BAD as u64,
                "{test}: the refused events ended on their own within {QUIET:?} on the quiet \
                 topic"
            );
        }
        Some(streak) => assert!(
            circuit_opened,
            "{test}: {BAD} refused events never opened a circuit with a refused streak of \
             {streak}"
        ),
    }
    note(&format!(
        "{test}: {} mode, {} broker; refused streak {}; {bad_ended_alone} of {BAD} refused \
         events ended within {QUIET:?} (all of them in {}; {calls_alone} calls), circuit \
         opened: {circuit_opened}; \
         every event ended {:.1}s after the good ones were produced; {} calls; {:.1}s in all",
        mode(exactly_once),
        broker(&harness),
        streak.map_or("20 (default)".to_owned(), |s| s.to_string()),
        bad_ended_in.map_or("more".to_owned(), |d| format!("{:.1}s", d.as_secs_f64())),
        all_in.as_secs_f64(),
        harness.simulator.stats().total_calls,
        started.elapsed().as_secs_f64()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_refusals_on_a_quiet_topic_are_dead_lettered_while_later_events_are_notified() {
    a_few_refusals_on_a_quiet_topic(
        "a_few_refusals_on_a_quiet_topic_are_dead_lettered_while_later_events_are_notified",
        false,
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_a_few_refusals_on_a_quiet_topic_are_dead_lettered_while_later_events_are_notified()
 {
    a_few_refusals_on_a_quiet_topic(
        "exactly_once_a_few_refusals_on_a_quiet_topic_are_dead_lettered_while_later_events_are_notified",
        true,
        None,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_that_open_the_circuit_on_a_quiet_topic_still_end_and_later_events_are_notified() {
    a_few_refusals_on_a_quiet_topic(
        "refusals_that_open_the_circuit_on_a_quiet_topic_still_end_and_later_events_are_notified",
        false,
        Some(3),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_refusals_that_open_the_circuit_on_a_quiet_topic_still_end_and_later_events_are_notified()
 {
    a_few_refusals_on_a_quiet_topic(
        "exactly_once_refusals_that_open_the_circuit_on_a_quiet_topic_still_end_and_later_events_are_notified",
        true,
        Some(3),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. One MPP failing for a while (issue 19, item 4g).
//
// Two MPPs in one deployment: the top-level identity and `WALLET_I`, which has a gateway of its
// own. Three of every four events are `WALLET_I`'s, over fewer merchants, interleaved with the
// other MPP's in the same partitions; every call of `WALLET_I` fails (dropped connections and
// 503) for a minute (see `mpp_outage`). Its merchants' later events wait behind their first
// (one call at a time per merchant): well over a thousand, where the consumer thread holds the
// intake at 512 waiting events (half the dispatcher's waiting limit of 1,024 at `max_in_flight`
// 256) unless events blocked behind a parked job are left out of that count. The other MPP's
// events must all be notified while `WALLET_I` is still down, and `WALLET_I`'s after it is back.

const WALLET_I: &str = "WALLET_I";
const CLIENT_I: &str = "CLIENT-WALLET-I";
const MPP_EVENTS: usize = 2_000;
const WALLET_I_MERCHANTS: usize = 150;
const OTHER_MERCHANTS: usize = 100;
/// A minute on a real broker, as issue 19 asks; half that on the mock cluster, where the same
/// run shows the same (the other MPP's events are all notified within seconds either way) and
/// CI's time is better spent elsewhere.
fn mpp_outage(harness: &Harness) -> Duration {
    if harness.kafka.is_real() {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(30)
    }
}

/// Writes `key` (PKCS#8, mode 0600) and its public half to `dir`; returns (private, public).
fn write_key(dir: &Path, name: &str, key: &PrivateSigningKey) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let pem = key.to_pkcs8_pem().expect("pem");
    std::fs::write(&private, secrecy::ExposeSecret::expose_secret(&pem)).expect("write key");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::write(&public, key.public_key().to_pem().expect("public pem")).expect("write key");
    (private, public)
}

/// `WALLET_I`'s own gateway: it knows the harness's MPP key under [`CLIENT_I`] and answers with
/// the harness's Alipay+ key.
async fn wallet_i_gateway(harness: &Harness) -> SimulatorHandle {
    let mut config = SimulatorConfig::new(harness.alipayplus_key.clone());
    config.mpp_public_key = Some(harness.mpp_key.public_key());
    config.client_ids = vec![CLIENT_I.into()];
    Simulator::start(config).await.expect("simulator")
}

fn wallet_i_table(harness: &Harness, gateway: &SimulatorHandle, dir: &Path) -> MppClientSettings {
    let (private, public) = write_key(dir, WALLET_I, &harness.mpp_key);
    let (_, alipayplus_public) = write_key(dir, "alipayplus", &harness.alipayplus_key);
    MppClientSettings {
        client_id: CLIENT_I.into(),
        private_key_file: Some(private),
        mpp_public_key_file: Some(public),
        alipayplus_public_key_file: Some(alipayplus_public),
        base_url: Some(gateway.base_url()),
        ..MppClientSettings::default()
    }
}

/// `MPP_EVENTS` events, three of four `WALLET_I`'s: (all in production order, `WALLET_I`'s,
/// the other MPP's).
fn two_mpp_events() -> (
    Vec<RegistrationDecided>,
    Vec<RegistrationDecided>,
    Vec<RegistrationDecided>,
) {
    let (mut all, mut of_i, mut others) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..MPP_EVENTS {
        if i % 4 == 0 {
            let e = event(
                &format!("M-D-{:03}", (i / 4) % OTHER_MERCHANTS),
                &format!("R-D-{i:05}"),
            );
            others.push(e.clone());
            all.push(e);
        } else {
            let mut e = event(
                &format!("M-I-{:03}", i % WALLET_I_MERCHANTS),
                &format!("R-I-{i:05}"),
            );
            e.psp_id = Some(WALLET_I.into());
            of_i.push(e.clone());
            all.push(e);
        }
    }
    (all, of_i, others)
}

async fn one_mpp_failing_for_a_while(test: &str, exactly_once: bool) {
    let _turn = two_at_a_time().await;
    let started = Instant::now();
    let harness = Harness::new(4, Vec::new()).await;
    let gateway_i = wallet_i_gateway(&harness).await;
    let dir = tempfile::tempdir().unwrap();
    let mut settings = stall_settings(&harness, exactly_once);
    settings.alipayplus.clients.insert(
        WALLET_I.into(),
        wallet_i_table(&harness, &gateway_i, dir.path()),
    );
    let (all, of_i, others) = two_mpp_events();

    let mut pipeline = harness.start_pipeline(settings).await;
    let status = pipeline.status.clone();
    pipeline
        .wait_for("the member assigned", Duration::from_secs(60), || {
            status.assigned_partitions() > 0
        })
        .await;
    let mpp_outage = mpp_outage(&harness);
    gateway_i.outage(mpp_outage, OutageMode::Mixed);
    let outage_started = Instant::now();
    let outage_ends = outage_started + mpp_outage;
    harness.produce(&all).await;

    // The other MPP's events, while WALLET_I is still down (a few seconds to spare).
    let others_by = outage_ends - Duration::from_secs(3);
    // (how many of them were notified, and when that count last grew)
    let mut progress = (0, Duration::ZERO);
    let during = outcomes_by(&harness, &mut pipeline, &others, others_by, |outcomes| {
        let now = notified(&others, outcomes);
        if now > progress.0 {
            progress = (now, outage_started.elapsed());
        }
    })
    .await;
    let outcomes_then = harness.outcomes().await;
    let others_notified = notified(&others, &outcomes_then);
    let i_notified_during = notified(&of_i, &outcomes_then);
    let others_took = outage_started.elapsed();
    let consumed_during = pipeline
        .stats
        .consumed
        .load(std::sync::atomic::Ordering::Relaxed);
    if let Err(missing) = &during {
        note(&format!(
            "{test}: {missing} of the other MPP's {} events have no outcome {:.0}s into \
             WALLET_I's {mpp_outage:?} outage: {others_notified} notified, the last of them \
             within {:.0}s; {consumed_during} of {MPP_EVENTS} events consumed",
            others.len(),
            others_took.as_secs_f64(),
            progress.1.as_secs_f64()
        ));
    }

    // Then WALLET_I's, once it is back.
    tokio::time::sleep(outage_ends.saturating_duration_since(Instant::now())).await;
    let recovered = Instant::now();
    let outcomes = match outcomes_by(
        &harness,
        &mut pipeline,
        &all,
        recovered + RECOVERY_BOUND,
        |_| {},
    )
    .await
    {
        Ok(outcomes) => outcomes,
        Err(missing) => {
            let outcomes = harness.outcomes().await;
            panic!(
                "{test}: {missing} of {MPP_EVENTS} events have no outcome {RECOVERY_BOUND:?} \
                 after WALLET_I came back (circuit: {:?}); {}",
                status.circuit(),
                where_missing(&harness, &all, &outcomes).await
            )
        }
    };
    let all_in = recovered.elapsed();
    if !exactly_once || harness.kafka.is_real() {
        harness
            .wait_committed_while_running(&mut [&mut pipeline], RECOVERY_BOUND)
            .await;
    }
    pipeline.stop().await;

    assert!(
        during.is_ok(),
        "{test}: the other MPP's events waited for WALLET_I: {others_notified} of {} notified \
         in the first {:.0}s of its outage (the last of them within {:.0}s), {consumed_during} \
         of {MPP_EVENTS} events consumed; all {MPP_EVENTS} ended {:.1}s after it was back",
        others.len(),
        others_took.as_secs_f64(),
        progress.1.as_secs_f64(),
        all_in.as_secs_f64()
    );
    assert_eq!(i_notified_during, 0, "{test}: WALLET_I was down");
    assert_one_outcome_each(&all, &outcomes);
    assert_all_notified(test, &outcomes);
    let letters = harness.dead_letters().await;
    assert!(letters.is_empty(), "{test}: dead letters: {letters:?}");
    note(&format!(
        "{test}: {} mode, {} broker; the other MPP's {} events notified {:.1}s into WALLET_I's \
         {mpp_outage:?} outage; WALLET_I's {} events all in {:.1}s after it was back ({} of its \
         calls); {:.1}s in all",
        mode(exactly_once),
        broker(&harness),
        others.len(),
        others_took.as_secs_f64(),
        of_i.len(),
        all_in.as_secs_f64(),
        gateway_i.stats().total_calls,
        started.elapsed().as_secs_f64()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mpp_failing_for_a_while_does_not_stop_the_others() {
    one_mpp_failing_for_a_while(
        "one_mpp_failing_for_a_while_does_not_stop_the_others",
        false,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_one_mpp_failing_for_a_while_does_not_stop_the_others() {
    one_mpp_failing_for_a_while(
        "exactly_once_one_mpp_failing_for_a_while_does_not_stop_the_others",
        true,
    )
    .await;
}
