//! The life of one event after dispatch: validate, notify Alipay+ with retries per SPEC section 4,
//! then write its outcome and any dead letter and wait for Kafka to acknowledge them.
//!
//! A worker never commits offsets and never touches another event: it reports back to the
//! dispatcher, which alone decides what may be committed. It gives up only when its job's cancel
//! token fires (shutdown, or its partition was revoked and the drain deadline passed), and then
//! reports the event as abandoned so that its offset is never committed. A write Kafka can never
//! accept (too large, not authorised, producer fenced) is reported as fatal: the service stops
//! rather than leave a partition silently stuck.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::alipayplus::{NotifyAttempt, ResultClass};
use crate::codec::DecodeError;
use crate::event::DeadLetterReason;
use crate::event::{NotifyOutcome, RegistrationDecided, RegistrationNotifyOutcome};
use crate::observe::{self, Health, Stats};
use crate::pipeline::backoff::{RECHECK, RetryBudget};
use crate::pipeline::book::Slot;
use crate::pipeline::breaker::Refusal;
use crate::pipeline::circuit::{Admitted, Circuits};
pub(crate) use crate::pipeline::decisions::Finish;
use crate::pipeline::job::{Job, Work, now, sleep_unless_stopped};
use crate::pipeline::mpp::{Mpp, Mpps};
use crate::pipeline::parking::Parking;
use crate::pipeline::record::{DeadLetter, InputRecord};
use crate::pipeline::sink::OutputSink;
use crate::telemetry::traces::{self, Waits};

/// What every worker shares.
pub(crate) struct WorkerContext {
    /// Each MPP's client, circuit breaker and send rate.
    pub(crate) mpps: Mpps,
    /// In-flight slots: a job waiting for its MPP's open circuit gives its slot back.
    pub(crate) parking: Arc<Parking>,
    pub(crate) sink: OutputSink,
    pub(crate) budget: RetryBudget,
    pub(crate) stats: Arc<Stats>,
    pub(crate) health: Arc<Health>,
    /// Fires when all work in flight must stop at once; every job's token is a child of it.
    pub(crate) hard_stop: CancellationToken,
    /// Every MPP's circuit together (the dispatcher pauses intake when none is closed).
    pub(crate) circuit: Arc<Circuits>,
    /// The randomness of retry delays: seeded in the simulation, so a run repeats exactly.
    pub(crate) jitter: Jitter,
}

/// A shared random source for backoff jitter.
#[derive(Debug)]
pub(crate) struct Jitter(std::sync::Mutex<rand::rngs::StdRng>);

impl Jitter {
    /// Seeded from the operating system.
    pub(crate) fn from_os() -> Jitter {
        Jitter::seeded(rand::random())
    }

    /// The same delays for the same seed.
    pub(crate) fn seeded(seed: u64) -> Jitter {
        use rand::SeedableRng;
        Jitter(std::sync::Mutex::new(rand::rngs::StdRng::seed_from_u64(
            seed,
        )))
    }

    fn rng(&self) -> std::sync::MutexGuard<'_, rand::rngs::StdRng> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl std::fmt::Debug for WorkerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerContext")
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

/// Runs one job to its end. Every line it logs carries the event's trace id (`span.trace_id`).
pub(crate) async fn run_job(ctx: &WorkerContext, job: &Job) -> Finish {
    use tracing::Instrument as _;
    let span = tracing::info_span!(
        "event",
        trace_id = %job.trace.trace_id(),
        partition = job.record.partition,
        offset = job.record.offset,
    );
    let finish = async {
        match &job.work {
            Work::Poison(error) => dead_letter_poison(ctx, job, error).await,
            Work::Event(event) => notify_event(ctx, job, event).await,
        }
    }
    .instrument(span)
    .await;
    if matches!(finish, Finish::Abandoned | Finish::Fatal) {
        job.trace.abandoned();
    }
    finish
}

async fn dead_letter_poison(ctx: &WorkerContext, job: &Job, error: &DecodeError) -> Finish {
    let record = &job.record;
    let letter = DeadLetter {
        reason: DeadLetterReason::DecodeError,
        error: error.to_string(),
        attempts: None,
        result_code: None,
        http_status: None,
        failed_at: Utc::now(),
    };
    let written = write_outputs(ctx, job, Some(&letter), None).await;
    // Under exactly-once the outcome is decided and handed over; it is counted then.
    if !matches!(written, Finish::Terminal | Finish::Submitted) {
        return written;
    }
    observe::dead_letter(&ctx.stats, letter.reason, record.partition, record.offset);
    observe::poison(&ctx.stats, record.partition, record.offset, &letter.error);
    job.trace
        .finished("DEAD_LETTERED", None, 0, Some(&letter.error));
    written
}

/// What the notify phase ended with.
struct Verdict {
    outcome: NotifyOutcome,
    dead_letter: Option<(DeadLetterReason, String)>,
    last: Option<NotifyAttempt>,
    attempts: u32,
    first_attempt_at_ms: Option<i64>,
}

async fn notify_event(ctx: &WorkerContext, job: &Job, event: &RegistrationDecided) -> Finish {
    let record = &job.record;
    job.trace.event(
        &event.event_id,
        &event.registration_request_id,
        event.psp_id.as_deref(),
    );
    let invalid = |error: String| Verdict {
        outcome: NotifyOutcome::DeadLettered,
        dead_letter: Some((DeadLetterReason::InvalidEvent, error)),
        last: None,
        attempts: 0,
        first_attempt_at_ms: None,
    };
    let verdict = match event
        .validate()
        .map_err(|invalid| invalid.to_string())
        .and_then(|()| ctx.mpps.route(event.psp_id.as_deref()))
    {
        Err(error) => invalid(error),
        Ok(mpp) => match notify_with_retries(ctx, mpp, job, event).await {
            Some(verdict) => verdict,
            None => return Finish::Abandoned,
        },
    };
    let outcome = outcome_record(record, event, &verdict);
    let letter = verdict
        .dead_letter
        .as_ref()
        .map(|(reason, error)| DeadLetter {
            reason: *reason,
            error: error.clone(),
            attempts: (verdict.attempts > 0).then_some(verdict.attempts),
            result_code: outcome.result_code.clone(),
            http_status: verdict.last.as_ref().and_then(|a| a.http_status),
            failed_at: Utc::now(),
        });
    let written = write_outputs(ctx, job, letter.as_ref(), Some(&outcome)).await;
    // Under exactly-once the outcome is decided and handed over; it is counted then.
    if !matches!(written, Finish::Terminal | Finish::Submitted) {
        return written;
    }
    if let Some(letter) = &letter {
        observe::dead_letter(&ctx.stats, letter.reason, record.partition, record.offset);
    }
    observe::outcome(&ctx.stats, &outcome, event.occurred_at_ms);
    job.trace.finished(
        outcome.outcome.as_str(),
        outcome.result_code.as_deref(),
        verdict.attempts,
        outcome.error.as_deref(),
    );
    written
}

/// Calls Alipay+ until a terminal answer or the end of the retry budget. `None` when the hard stop
/// fired first.
///
/// The circuit breaker decides when a call may go out. Time spent waiting for it, and answers
/// that came while it was not closed, do not count against the retry budget: no event is
/// dead-lettered because Alipay+ as a whole was down. A refusal is held until the breaker tells
/// whether it was about the event (a call sent after it was answered: dead-lettered) or about us
/// (the circuit opened: retried after recovery); undecided after `refusal_hold`, the event asks
/// again after its backoff delay, against its own retry budget (spent, it is dead-lettered as
/// refused). Only an event's first refusal counts toward the refused streak that opens the
/// circuit, so a few bad events cannot open it by asking again. A refused probe spends the
/// probing event's budget too: with the circuit open nothing else can tell the refusal apart,
/// and an event that is refused every time it probes would otherwise hold the circuit open for
/// ever.
async fn notify_with_retries(
    ctx: &WorkerContext,
    mpp: &Mpp,
    job: &Job,
    event: &RegistrationDecided,
) -> Option<Verdict> {
    let (slot, cancel) = (job.slot(), &job.cancel);
    // Waits before a call is out end on a revoke too: the partition's next owner sends it.
    let unsent = &job.unsent;
    let mut budget = Spent::new();
    let mut attempts: u32 = 0;
    let mut first_attempt_at_ms = None;
    let mut refused_before = false;
    // What the next attempt waited for, on its span.
    let mut waits = Waits::default();
    loop {
        let (call, waited) = admitted(ctx, mpp, slot, unsent).await?;
        let probe = call.probe;
        budget.held += waited;
        waits.circuit += waited;
        // A call whose job stops before its answer is no longer out; a probe that does lets
        // another caller probe.
        let abandon = || {
            mpp.circuit.abandoned(call);
            None
        };
        let reserved = mpp
            .send_rate
            .lock()
            .map(|mut rate| rate.reserve(now()))
            .ok();
        let mut wait = reserved.map_or(Duration::ZERO, |(_, wait)| wait);
        let mut paced = Duration::ZERO;
        loop {
            // Looked at again at least every RECHECK: a higher rate may move the slot earlier.
            let nap = wait.min(RECHECK);
            if !nap.is_zero() && !sleep_unless_stopped(unsent, nap).await {
                // Stopped before its turn (a revoke, a shutdown): the slot goes back, so that it
                // does not hold back the sends of the events that come next.
                if let (Some((slot, _)), Ok(mut rate)) = (reserved, mpp.send_rate.lock()) {
                    rate.release(slot);
                }
                return abandon();
            }
            paced += nap;
            // A rate changed since (a throttling answer, a share, the climb back) moves it.
            let (Some((slot, _)), Ok(mut rate)) = (reserved, mpp.send_rate.lock()) else {
                break;
            };
            let instant = now();
            wait = rate.due(slot, instant);
            if wait.is_zero() {
                rate.claim(slot, instant);
                break;
            }
        }
        waits.throttle += paced;
        first_attempt_at_ms.get_or_insert_with(|| Utc::now().timestamp_millis());
        let started = std::time::SystemTime::now();
        let attempt = tokio::select! {
            biased;
            attempt = mpp.client.notify(event) => attempt,
            () = cancel.cancelled() => return abandon(),
        };
        attempts += 1;
        observe::notify_attempt(&ctx.stats, &mpp.psp, &attempt.report());
        let result = attempt.result.as_ref();
        job.trace.attempt(&traces::Attempt {
            number: attempts,
            psp: &mpp.psp,
            started,
            ended: std::time::SystemTime::now(),
            http_status: attempt.http_status,
            result_status: result.map(|result| result.result_status.as_str()),
            result_code: result.map(|result| result.result_code.as_str()),
            class: attempt.class.as_str(),
            waits: std::mem::take(&mut waits),
        });
        let refused = attempt.class == ResultClass::Refused;
        let repeat = refused && refused_before;
        refused_before |= refused;
        ctx.health.answered(refused, repeat);
        let mark = mpp.circuit.record(attempt.class, call, repeat);
        if let Ok(mut rate) = mpp.send_rate.lock() {
            let throttled = attempt.class == ResultClass::Throttled;
            if throttled {
                rate.on_throttled(now());
            } else {
                rate.on_accepted(now());
            }
            observe::send_rate(&mpp.psp, rate.allowed_per_second(), throttled);
        }
        let (outcome, dead_letter) = match attempt.class {
            ResultClass::Success => (NotifyOutcome::Notified, None),
            ResultClass::Rejected => (NotifyOutcome::Rejected, None),
            ResultClass::Refused => {
                if mpp.circuit.enabled() {
                    let refusal = if probe {
                        Refusal::Undecided
                    } else {
                        let (refusal, waited) = mpp.circuit.refusal(mark, unsent).await?;
                        budget.held += waited;
                        waits.backoff += waited;
                        refusal
                    };
                    match refusal {
                        Refusal::AboutUs => continue,
                        Refusal::AboutTheEvent => {}
                        // Nothing told them apart (a lone event, or this event's probe): asking
                        // again spends the event's retry budget, so a refusal no other answer
                        // explains is dead-lettered in the end rather than held for ever.
                        Refusal::Undecided => {
                            if let Some(delay) = budget.next_delay(&ctx.budget, &ctx.jitter) {
                                observe::retry_scheduled(
                                    &ctx.stats,
                                    &attempt.report(),
                                    attempts,
                                    delay,
                                );
                                if !sleep_unless_stopped(unsent, delay).await {
                                    return None;
                                }
                                waits.backoff += delay;
                                continue;
                            }
                        }
                    }
                }
                (
                    NotifyOutcome::DeadLettered,
                    Some((DeadLetterReason::RequestRefused, describe(&attempt))),
                )
            }
            ResultClass::Throttled | ResultClass::Unknown => {
                if !mpp.circuit.is_closed() {
                    // The outage, not this event: held until the circuit closes, not counted.
                    continue;
                }
                if let Some(delay) = budget.next_delay(&ctx.budget, &ctx.jitter) {
                    observe::retry_scheduled(&ctx.stats, &attempt.report(), attempts, delay);
                    if !sleep_unless_stopped(unsent, delay).await {
                        return None;
                    }
                    waits.backoff += delay;
                    continue;
                }
                let error = format!(
                    "retry budget exhausted after {attempts} attempts: {}",
                    describe(&attempt)
                );
                (
                    NotifyOutcome::DeadLettered,
                    Some((DeadLetterReason::RetriesExhausted, error)),
                )
            }
        };
        return Some(Verdict {
            outcome,
            dead_letter,
            last: Some(attempt),
            attempts,
            first_attempt_at_ms,
        });
    }
}

/// Waits until `mpp`'s circuit lets a call go out: whether it is the probe, and how long it
/// waited; `None` when `cancel` fired first. While the circuit is not closed the job gives its
/// in-flight slot back, so other MPPs' events take it, and then waits for a slot to call again.
async fn admitted(
    ctx: &WorkerContext,
    mpp: &Mpp,
    slot: Slot,
    cancel: &CancellationToken,
) -> Option<(Admitted, Duration)> {
    if mpp.circuit.is_closed() {
        return mpp.circuit.admitted(cancel).await;
    }
    let parked = ctx.parking.park(slot);
    let (call, waited) = mpp.circuit.admitted(cancel).await?;
    let resuming = now();
    if parked.resume(cancel).await.is_none() {
        mpp.circuit.abandoned(call);
        return None;
    }
    Some((call, waited + now().saturating_duration_since(resuming)))
}

/// What one event has spent of its retry budget: the attempts that count, and the time, less
/// what it spent waiting for the circuit breaker.
struct Spent {
    started: Instant,
    held: Duration,
    counted: u32,
}

impl Spent {
    fn new() -> Spent {
        Spent {
            started: now(),
            held: Duration::ZERO,
            counted: 0,
        }
    }

    /// Counts one more attempt; the delay before the next, or `None` when the budget is spent.
    fn next_delay(&mut self, budget: &RetryBudget, jitter: &Jitter) -> Option<Duration> {
        self.counted += 1;
        let spent = now()
            .saturating_duration_since(self.started)
            .saturating_sub(self.held);
        budget.next_delay(self.counted, spent, &mut *jitter.rng())
    }
}

/// A one-line account of an attempt for `dlq.error` and the outcome's `error`.
fn describe(attempt: &NotifyAttempt) -> String {
    let mut text = format!("{} answer", attempt.class.as_str());
    if let Some(status) = attempt.http_status {
        text.push_str(&format!(", http {status}"));
    }
    if let Some(result) = &attempt.result {
        text.push_str(&format!(
            ", {} {}",
            result.result_status, result.result_code
        ));
        if let Some(message) = &result.result_message {
            text.push_str(&format!(" ({message})"));
        }
    }
    if !attempt.signature.is_trusted() && attempt.result.is_some() {
        text.push_str(&format!(
            ", response signature {}",
            attempt.signature.as_str()
        ));
    }
    if let Some(error) = &attempt.error {
        text.push_str(&format!(": {error}"));
    }
    text
}

fn outcome_record(
    record: &InputRecord,
    event: &RegistrationDecided,
    verdict: &Verdict,
) -> RegistrationNotifyOutcome {
    let result = verdict.last.as_ref().and_then(|a| a.result.as_ref());
    RegistrationNotifyOutcome {
        event_id: event.event_id.clone(),
        reference_merchant_id: event.reference_merchant_id.clone(),
        registration_request_id: event.registration_request_id.clone(),
        decision: event.decision,
        outcome: verdict.outcome,
        result_status: result.map(|r| r.result_status.clone()),
        result_code: result.map(|r| r.result_code.clone()),
        result_message: result.and_then(|r| r.result_message.clone()),
        http_status: verdict
            .last
            .as_ref()
            .and_then(|a| a.http_status)
            .map(i32::from),
        attempts: i32::try_from(verdict.attempts).unwrap_or(i32::MAX),
        first_attempt_at_ms: verdict.first_attempt_at_ms,
        completed_at_ms: Utc::now().timestamp_millis(),
        source_topic: record.topic.to_string(),
        source_partition: record.partition,
        source_offset: record.offset,
        error: verdict.dead_letter.as_ref().map(|(_, error)| error.clone()),
    }
}

async fn write_outputs(
    ctx: &WorkerContext,
    job: &Job,
    letter: Option<&DeadLetter>,
    outcome: Option<&RegistrationNotifyOutcome>,
) -> Finish {
    ctx.sink.write(&ctx.stats, job, letter, outcome).await
}
