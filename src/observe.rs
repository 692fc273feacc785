//! Everything the pipeline reports about itself: one function per observable event, which logs
//! it, counts it in Prometheus metrics and keeps the in-process [`Stats`] that the demo and tests
//! read. Metric names live here and nowhere else.
//!
//! Labels come from small fixed sets (outcome, class, result code, reason, partition, Kafka
//! error code); ids and secrets never become labels, and nothing here ever sees a key or a
//! signature. Errors that repeat are logged at most once per [`ERROR_LOG_INTERVAL`] per (code,
//! partition), never in a flood.

mod consumer_errors;
pub(crate) mod exported;
mod latency_histogram;
mod log_limiter;
mod stuck;

pub use self::latency_histogram::LatencyHistogram;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

use self::consumer_errors::{
    ErrorBook, ErrorKey, FetchProgress, Progress, Reported, Rules, partition_in_text,
};
use self::log_limiter::{LogLimiter, Verdict};
use self::stuck::{Count, Vigil};
use crate::event::DeadLetterReason;
use crate::event::{NotifyOutcome, RegistrationNotifyOutcome};

/// Metric names (SPEC section 8): `regnotify_` prefix, base units, counters end in `_total`.
pub mod names {
    pub const EVENTS_CONSUMED: &str = "regnotify_events_consumed_total";
    pub const OUTCOMES: &str = "regnotify_outcomes_total";
    pub const NOTIFY_ATTEMPTS: &str = "regnotify_notify_attempts_total";
    pub const NOTIFY_LATENCY: &str = "regnotify_notify_latency_seconds";
    pub const END_TO_END_LATENCY: &str = "regnotify_end_to_end_latency_seconds";
    pub const RETRIES: &str = "regnotify_retries_total";
    pub const DEAD_LETTERS: &str = "regnotify_dead_letters_total";
    pub const IN_FLIGHT: &str = "regnotify_in_flight";
    pub const AWAITING_COMMIT: &str = "regnotify_awaiting_commit";
    pub const PENDING: &str = "regnotify_pending_events";
    pub const COMMITTED_OFFSET: &str = "regnotify_committed_offset";
    pub const RESPONSE_SIGNATURE_FAILURES: &str = "regnotify_response_signature_failures_total";
    pub const UNVERIFIED_RESPONSES: &str = "regnotify_unverified_responses_total";
    pub const REBALANCES: &str = "regnotify_rebalances_total";
    pub const PUBLISH_ERRORS: &str = "regnotify_publish_errors_total";
    pub const COMMIT_ERRORS: &str = "regnotify_commit_errors_total";
    pub const CONSUMER_LAG: &str = "regnotify_consumer_lag";
    pub const SIGNING_TIME: &str = "regnotify_signing_seconds";
    pub const BUILD_INFO: &str = "regnotify_build_info";
    pub const KAFKA_BROKERS_UP: &str = "regnotify_kafka_brokers_up";
    pub const CONSUMER_ERRORS: &str = "regnotify_consumer_errors_total";
    pub const CONSUMER_ERROR_ACTIVE: &str = "regnotify_consumer_error_active";
    pub const KAFKA_CLIENT_ERRORS: &str = "regnotify_kafka_client_errors_total";
    pub const PARTITION_RESTARTS: &str = "regnotify_partition_restarts_total";
    pub const CIRCUIT_STATE: &str = "regnotify_circuit_state";
    pub const CIRCUIT_TRANSITIONS: &str = "regnotify_circuit_transitions_total";
    pub const SEND_RATE_LIMIT: &str = "regnotify_send_rate_limit";
    pub const SEND_RATE_SHARE: &str = "regnotify_send_rate_share";
    pub const THROTTLED: &str = "regnotify_throttled_total";
    pub const SKIPPED_FINISHED: &str = "regnotify_skipped_finished_total";
    pub const FINISHED_NOTE_BYTES: &str = "regnotify_finished_note_bytes";
    pub const KEY_RELOADS: &str = "regnotify_key_reloads_total";
    pub const KEY_VERSION: &str = "regnotify_key_version";
    pub const INVARIANT_VIOLATIONS: &str = "regnotify_invariant_violations_total";
    pub const CONSUMER_LAG_SECONDS: &str = "regnotify_consumer_lag_seconds";
    pub const OLDEST_UNFINISHED: &str = "regnotify_oldest_unfinished_seconds";
    pub const STALLED_EVENTS: &str = "regnotify_stalled_events_total";
}

/// A consumer error reported again and again for this long makes `/readyz` answer 503.
pub const CONSUMER_ERROR_PERSIST_AFTER: Duration = Duration::from_secs(10);
/// A repeating consumer error not reported for this long is over. librdkafka retries a failed
/// fetch every `fetch.error.backoff.ms` (500 ms by default), so this is many silent retries.
pub const CONSUMER_ERROR_CLEAR_AFTER: Duration = Duration::from_secs(15);
/// A repeated Kafka error is logged at most once per this interval per (code, partition); the next
/// line says how many repeats were left out.
pub const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Partitions (0 up to this) whose consumed records are counted one by one, so that an error
/// naming one of them ends as soon as it delivers again.
const TRACKED_PARTITIONS: usize = 256;
/// Distinct (code, partition) keys each log limiter remembers.
const LOG_LIMITER_KEYS: usize = 128;

/// The time limits of `/livez` and of the stall rule of `/readyz` (`admin.livez_after`,
/// `admin.stall_after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthLimits {
    /// `/livez` answers 503 once the main loop has not turned for longer than this.
    pub livez_after: Duration,
    /// `/readyz` answers 503 once work waits and nothing has progressed for longer than this.
    pub stall_after: Duration,
}

impl Default for HealthLimits {
    /// The defaults of the `[admin]` settings.
    fn default() -> Self {
        let admin = crate::config::AdminSettings::default();
        HealthLimits {
            livez_after: admin.livez_after,
            stall_after: admin.stall_after,
        }
    }
}

/// The process's record of waiting work, progress and broken invariants. The dispatcher reports
/// its counts ([`in_flight`], [`awaiting_commit`]) and the terminal outcomes and commits are
/// reported ([`outcome`], [`dead_letter`], [`poison`], [`committed`], [`invariant_broken`])
/// without a handle to a [`Health`], so every `Health` of the process reads this one. Several
/// services in one process (tests, the demo) share it, as they share the metrics recorder.
static PROCESS_VIGIL: LazyLock<Arc<Vigil>> = LazyLock::new(Arc::default);

#[cfg(test)]
thread_local! {
    /// In unit tests: the vigil the free functions called on this thread report to instead of
    /// the process's, so that a test's broken invariant does not leak into other tests.
    static TEST_VIGIL: RefCell<Option<Arc<Vigil>>> = const { RefCell::new(None) };
}

/// Runs `report` against the process's vigil (in unit tests, the one set for this thread).
fn with_vigil<R>(report: impl FnOnce(&Vigil) -> R) -> R {
    #[cfg(test)]
    if let Some(vigil) = TEST_VIGIL.with(|local| local.borrow().clone()) {
        return report(&vigil);
    }
    report(&PROCESS_VIGIL)
}

/// What `/livez`, `/healthz` and `/readyz` look at, written by the pipeline as it runs.
#[derive(Debug)]
pub struct Health {
    started: std::time::Instant,
    limits: HealthLimits,
    /// Waiting work, progress and broken invariants (the process's; see [`PROCESS_VIGIL`]).
    vigil: Arc<Vigil>,
    /// Per psp whose open circuit has jobs waiting: the instant by which its probe is overdue.
    probe_deadlines: Mutex<BTreeMap<String, Instant>>,
    /// Milliseconds since `started` at the main loop's last turn.
    last_beat_ms: AtomicU64,
    joined: std::sync::atomic::AtomicBool,
    assigned_partitions: AtomicU64,
    /// Whether librdkafka's last statistics showed at least one broker up.
    kafka_reachable: std::sync::atomic::AtomicBool,
    /// Refused answers in a row, across all events.
    refused_streak: AtomicU64,
    /// Why the alipay+ circuit is open or half-open; `None` while closed.
    circuit: Mutex<Option<String>>,
    /// Why offset commits keep failing, while they do.
    commits_refused: Mutex<Option<String>>,
    /// Records consumed, all partitions; then per partition below [`TRACKED_PARTITIONS`].
    records_consumed: AtomicU64,
    partition_records: Box<[AtomicU64]>,
    /// Rebalances that assigned at least one partition.
    assignments: AtomicU64,
    /// Kafka errors: which persist, what each limiter let through, where fetches stand.
    kafka_errors: Mutex<KafkaErrors>,
}

/// The state behind consumer-error readiness and the rate-limited error lines. Touched only when
/// an error is reported, on librdkafka statistics and on `/readyz`; never per record.
#[derive(Debug)]
struct KafkaErrors {
    book: ErrorBook,
    consumer_log: LogLimiter<ErrorKey>,
    client_log: LogLimiter<ErrorKey>,
    fetch: FetchProgress,
    /// Codes whose `regnotify_consumer_error_active` gauge exists (set to 0 when over).
    gauged: BTreeSet<String>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            started: std::time::Instant::now(),
            limits: HealthLimits::default(),
            vigil: Arc::clone(&PROCESS_VIGIL),
            probe_deadlines: Mutex::new(BTreeMap::new()),
            last_beat_ms: AtomicU64::new(0),
            joined: Default::default(),
            assigned_partitions: AtomicU64::new(0),
            kafka_reachable: std::sync::atomic::AtomicBool::new(true),
            refused_streak: AtomicU64::new(0),
            circuit: Mutex::new(None),
            commits_refused: Mutex::new(None),
            records_consumed: AtomicU64::new(0),
            partition_records: (0..TRACKED_PARTITIONS).map(|_| AtomicU64::new(0)).collect(),
            assignments: AtomicU64::new(0),
            kafka_errors: Mutex::new(KafkaErrors {
                book: ErrorBook::new(Rules {
                    persist_after: CONSUMER_ERROR_PERSIST_AFTER,
                    clear_after: CONSUMER_ERROR_CLEAR_AFTER,
                }),
                consumer_log: LogLimiter::new(ERROR_LOG_INTERVAL, LOG_LIMITER_KEYS),
                client_log: LogLimiter::new(ERROR_LOG_INTERVAL, LOG_LIMITER_KEYS),
                fetch: FetchProgress::default(),
                gauged: BTreeSet::new(),
            }),
        }
    }
}

impl Health {
    /// The same health with these limits (from the `[admin]` settings).
    #[must_use]
    pub fn with_limits(mut self, limits: HealthLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> HealthLimits {
        self.limits
    }

    /// A health of its own for a unit test: it reads a fresh vigil, not the process's; the free
    /// functions report to it inside [`Health::reporting`].
    #[cfg(test)]
    pub(crate) fn isolated() -> Health {
        Health {
            vigil: Arc::default(),
            ..Health::default()
        }
    }

    /// Runs `report` with the free functions of this thread ([`in_flight`], [`committed`],
    /// [`invariant_broken`], …) reporting to this health's vigil (unit tests).
    #[cfg(test)]
    pub(crate) fn reporting<R>(&self, report: impl FnOnce() -> R) -> R {
        struct Restore(Option<Arc<Vigil>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let previous = self.0.take();
                TEST_VIGIL.with(|local| *local.borrow_mut() = previous);
            }
        }
        let previous = TEST_VIGIL.with(|local| local.borrow_mut().replace(Arc::clone(&self.vigil)));
        let _restore = Restore(previous);
        report()
    }

    /// The main loop turned.
    pub fn beat(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_beat_ms.store(now, Ordering::Relaxed);
    }

    /// How long ago the main loop last turned.
    pub fn since_last_beat(&self) -> Duration {
        self.quiet_at(Instant::now())
    }

    /// How long the main loop has not turned, at `now`.
    fn quiet_at(&self, now: Instant) -> Duration {
        let last_beat =
            self.started + Duration::from_millis(self.last_beat_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(last_beat)
    }

    /// `/livez` at `now`: `Err` with a one-line reason once the main loop has not turned for
    /// longer than [`HealthLimits::livez_after`]. The loop turns at least every
    /// `processing.commit_interval`, even while idle.
    pub fn liveness(&self, now: Instant) -> Result<(), String> {
        let quiet = self.quiet_at(now);
        if quiet > self.limits.livez_after {
            return Err(format!(
                "main loop has not turned for {} s (admin.livez_after = {})",
                quiet.as_secs(),
                humantime::format_duration(self.limits.livez_after)
            ));
        }
        Ok(())
    }

    /// The open circuit of `psp` has jobs waiting and its probe is due by `overdue_after`
    /// (`Some`); or it closed, or nobody waits on it any more (`None`). `/readyz` answers 503
    /// naming `psp` once the deadline has passed.
    pub fn circuit_probe(&self, psp: &str, overdue_after: Option<Instant>) {
        let mut deadlines = self
            .probe_deadlines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match overdue_after {
            Some(deadline) => match deadlines.get_mut(psp) {
                Some(known) => *known = deadline,
                None => {
                    deadlines.insert(psp.to_owned(), deadline);
                }
            },
            None => {
                deadlines.remove(psp);
            }
        }
    }

    /// Why the service is stuck at `now` although its main loop turns (this part of `/readyz`):
    /// broken invariants, a stall of waiting work (`admin.stall_after`), overdue probes. Empty
    /// when it is not.
    pub fn stuck(&self, now: Instant) -> Vec<String> {
        let mut problems = Vec::new();
        for (check, broken) in self.vigil.broken() {
            problems.push(format!(
                "internal invariant `{check}` broken ({} times, first {} s ago): the service's \
                 state can no longer be trusted to make progress; restart it",
                broken.times,
                now.saturating_duration_since(broken.first).as_secs()
            ));
        }
        if let Some(stall) = stuck::stall(&self.vigil.work(), self.limits.stall_after, now) {
            problems.push(format!(
                "stalled: {} events in flight and {} awaiting commit, and no event finished, no \
                 alipay+ answer and no commit landed for {} s (admin.stall_after = {})",
                stall.in_flight,
                stall.awaiting_commit,
                stall.quiet.as_secs(),
                humantime::format_duration(self.limits.stall_after)
            ));
        }
        let deadlines = self
            .probe_deadlines
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (psp, overdue) in stuck::overdue_probes(&deadlines, now) {
            problems.push(format!(
                "alipay+ circuit of psp {psp} has jobs waiting and its probe has not gone out \
                 ({} s past its deadline)",
                overdue.as_secs()
            ));
        }
        problems
    }

    /// The group assigned this instance `count` partitions (possibly none).
    pub fn assigned(&self, count: usize) {
        self.assigned_partitions
            .store(count as u64, Ordering::Relaxed);
        self.joined.store(true, Ordering::Relaxed);
        if count > 0 {
            self.assignments.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn joined(&self) -> bool {
        self.joined.load(Ordering::Relaxed)
    }

    pub fn assigned_partitions(&self) -> u64 {
        self.assigned_partitions.load(Ordering::Relaxed)
    }

    pub fn set_kafka_reachable(&self, reachable: bool) {
        self.kafka_reachable.store(reachable, Ordering::Relaxed);
    }

    pub fn kafka_reachable(&self) -> bool {
        self.kafka_reachable.load(Ordering::Relaxed)
    }

    /// Counts refused answers in a row; any other answer ends the streak. Every answer is
    /// progress (see [`Health::stuck`]).
    /// An answer from Alipay+. `repeat`: a refusal of an event refused before, which neither
    /// lengthens nor ends the streak (it counts distinct events, like the circuit breaker's).
    pub fn answered(&self, refused: bool, repeat: bool) {
        self.vigil.progressed(Instant::now());
        if repeat {
            return;
        }
        if refused {
            self.refused_streak.fetch_add(1, Ordering::Relaxed);
        } else {
            self.refused_streak.store(0, Ordering::Relaxed);
        }
    }

    pub fn set_circuit(&self, open_because: Option<String>) {
        *self.circuit.lock().unwrap_or_else(PoisonError::into_inner) = open_because;
    }

    /// Offset commits keep failing (`Some`: why), or one landed again (`None`).
    pub fn set_commits_refused(&self, because: Option<String>) {
        *self
            .commits_refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = because;
    }

    /// Why offset commits keep failing, if they do.
    pub fn commits_refused(&self) -> Option<String> {
        self.commits_refused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Why the alipay+ circuit is not closed, if it is not.
    pub fn circuit(&self) -> Option<String> {
        self.circuit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn refused_streak(&self) -> u64 {
        self.refused_streak.load(Ordering::Relaxed)
    }

    /// The counters that can end a consumer error, now, for an error of `partition`.
    fn progress(&self, partition: Option<i32>) -> Progress {
        Progress {
            records: self.records_consumed.load(Ordering::Relaxed),
            partition_records: partition
                .and_then(|p| usize::try_from(p).ok())
                .and_then(|p| self.partition_records.get(p))
                .map(|counter| counter.load(Ordering::Relaxed)),
            assignments: self.assignments.load(Ordering::Relaxed),
        }
    }

    fn kafka_errors(&self) -> MutexGuard<'_, KafkaErrors> {
        // The state stays consistent across a panic elsewhere: every update is one call.
        self.kafka_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Counters kept in process, for `regnotify demo` and for tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub consumed: AtomicU64,
    pub notified: AtomicU64,
    pub rejected: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub poison: AtomicU64,
    pub dlq_decode_error: AtomicU64,
    pub dlq_invalid_event: AtomicU64,
    pub dlq_retries_exhausted: AtomicU64,
    pub dlq_request_refused: AtomicU64,
    pub http_calls: AtomicU64,
    pub retries: AtomicU64,
    pub signature_failures: AtomicU64,
    pub publish_errors: AtomicU64,
    pub rebalances: AtomicU64,
    notify_latency: Mutex<LatencyHistogram>,
    end_to_end_latency: Mutex<LatencyHistogram>,
    /// From handing an event's outputs to the producer to Kafka's acknowledgement of all of them
    /// (at-least-once); in process only, for `regnotify bench`'s bound of partition ordering.
    output_latency: Mutex<LatencyHistogram>,
    result_codes: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Stats {
    fn dead_letter_counter(&self, reason: DeadLetterReason) -> &AtomicU64 {
        match reason {
            DeadLetterReason::DecodeError => &self.dlq_decode_error,
            DeadLetterReason::InvalidEvent => &self.dlq_invalid_event,
            DeadLetterReason::RetriesExhausted => &self.dlq_retries_exhausted,
            DeadLetterReason::RequestRefused => &self.dlq_request_refused,
        }
    }

    pub fn dead_letters(&self, reason: DeadLetterReason) -> u64 {
        self.dead_letter_counter(reason).load(Ordering::Relaxed)
    }

    /// Events that reached a terminal state: an outcome, or a dead letter without one (poison).
    pub fn terminal(&self) -> u64 {
        self.notified.load(Ordering::Relaxed)
            + self.rejected.load(Ordering::Relaxed)
            + self.dead_lettered.load(Ordering::Relaxed)
            + self.poison.load(Ordering::Relaxed)
    }

    /// The `q`-quantile (0..=1) of the HTTP call latencies seen so far.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        self.notify_latencies().quantile(q)
    }

    /// Every HTTP call's latency so far.
    pub fn notify_latencies(&self) -> LatencyHistogram {
        self.notify_latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Output acknowledgements so far (see [`outputs_acknowledged`]).
    pub fn output_latencies(&self) -> LatencyHistogram {
        self.output_latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// From each decodable event's `occurredAt` to its terminal outcome, so far.
    pub fn end_to_end_latencies(&self) -> LatencyHistogram {
        self.end_to_end_latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Outcomes by result code (`none` when Alipay+ gave none).
    pub fn result_codes(&self) -> std::collections::BTreeMap<String, u64> {
        self.result_codes
            .lock()
            .map(|codes| codes.clone())
            .unwrap_or_default()
    }
}

/// Describes every metric with its unit, once at start-up.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        names::EVENTS_CONSUMED,
        Unit::Count,
        "input records consumed"
    );
    describe_counter!(
        names::OUTCOMES,
        Unit::Count,
        "terminal outcomes by outcome and result code"
    );
    describe_counter!(
        names::NOTIFY_ATTEMPTS,
        Unit::Count,
        "alipay+ calls by result class"
    );
    describe_histogram!(
        names::NOTIFY_LATENCY,
        Unit::Seconds,
        "duration of one alipay+ call"
    );
    describe_histogram!(
        names::END_TO_END_LATENCY,
        Unit::Seconds,
        "from the event's occurredAt to its terminal outcome"
    );
    describe_counter!(
        names::RETRIES,
        Unit::Count,
        "alipay+ calls retried, by class"
    );
    describe_counter!(
        names::DEAD_LETTERS,
        Unit::Count,
        "dead letters written, by reason"
    );
    describe_gauge!(names::IN_FLIGHT, Unit::Count, "events being notified now");
    describe_gauge!(
        names::AWAITING_COMMIT,
        Unit::Count,
        "events notified whose outcome is not committed yet; each keeps its max_in_flight slot"
    );
    describe_gauge!(
        names::PENDING,
        Unit::Count,
        "uncommitted events per partition"
    );
    describe_gauge!(
        names::COMMITTED_OFFSET,
        Unit::Count,
        "last committed offset per partition"
    );
    describe_counter!(
        names::RESPONSE_SIGNATURE_FAILURES,
        Unit::Count,
        "success answers whose signature was missing or wrong"
    );
    describe_counter!(
        names::UNVERIFIED_RESPONSES,
        Unit::Count,
        "failure answers acted on without a valid signature"
    );
    describe_counter!(
        names::REBALANCES,
        Unit::Count,
        "partition assignments and revocations"
    );
    describe_counter!(
        names::PUBLISH_ERRORS,
        Unit::Count,
        "output writes kafka did not acknowledge"
    );
    describe_counter!(
        names::COMMIT_ERRORS,
        Unit::Count,
        "offset commits that failed"
    );
    describe_gauge!(
        names::CONSUMER_LAG,
        Unit::Count,
        "records between the committed offset and the partition end, per assigned partition"
    );
    describe_histogram!(
        names::SIGNING_TIME,
        Unit::Seconds,
        "time to RSA-sign one request"
    );
    describe_gauge!(
        names::BUILD_INFO,
        Unit::Count,
        "always 1; the version is a label"
    );
    describe_gauge!(
        names::KAFKA_BROKERS_UP,
        Unit::Count,
        "brokers librdkafka sees as up"
    );
    describe_counter!(
        names::CONSUMER_ERRORS,
        Unit::Count,
        "errors the kafka consumer returned instead of records, by librdkafka error code"
    );
    describe_gauge!(
        names::CONSUMER_ERROR_ACTIVE,
        Unit::Count,
        "1 while a consumer error of this code persists (readyz answers 503), else 0"
    );
    describe_counter!(
        names::KAFKA_CLIENT_ERRORS,
        Unit::Count,
        "errors librdkafka reported to the consumer client, by error code (includes consumer errors)"
    );
    describe_counter!(
        names::PARTITION_RESTARTS,
        Unit::Count,
        "times a partition started over within an assignment because a new record appeared at an \
         offset already consumed (log truncated or topic recreated)"
    );
    describe_counter!(
        names::SKIPPED_FINISHED,
        Unit::Count,
        "records not processed again because the committed offset's note says an earlier owner \
         finished them"
    );
    describe_gauge!(
        names::FINISHED_NOTE_BYTES,
        Unit::Bytes,
        "size of the last commit's note of finished offsets above the committed one, per partition"
    );
    describe_gauge!(
        names::CIRCUIT_STATE,
        Unit::Count,
        "the alipay+ circuit breaker: 0 closed, 1 open, 2 half-open (probing)"
    );
    describe_counter!(
        names::CIRCUIT_TRANSITIONS,
        Unit::Count,
        "alipay+ circuit breaker transitions, by the state entered"
    );
    describe_gauge!(
        names::SEND_RATE_LIMIT,
        Unit::Count,
        "requests per second this member's sends are paced to: its share of \
         max_requests_per_second, lower after throttling answers; 0 = not limited"
    );
    describe_gauge!(
        names::SEND_RATE_SHARE,
        Unit::Count,
        "this member's share of the group's max_requests_per_second, in requests per second, \
         in proportion to the input partitions it owns; 0 = no limit configured"
    );
    describe_counter!(
        names::THROTTLED,
        Unit::Count,
        "throttling answers from alipay+ (REQUEST_TRAFFIC_EXCEED_LIMIT)"
    );
    describe_counter!(
        names::KEY_RELOADS,
        Unit::Count,
        "key files reloaded while running, by psp, key (mpp_private_key, alipayplus_public_key) \
         and result (applied, refused)"
    );
    describe_gauge!(
        names::KEY_VERSION,
        Unit::Count,
        "the keyVersion requests of this psp are signed with"
    );
    describe_counter!(
        names::INVARIANT_VIOLATIONS,
        Unit::Count,
        "internal invariants found broken, by check (readyz answers 503 from the first)"
    );
    describe_gauge!(
        names::CONSUMER_LAG_SECONDS,
        Unit::Seconds,
        "now minus the timestamp of the next record to commit, by partition; 0 when every \
         consumed record is committed"
    );
    describe_gauge!(
        names::OLDEST_UNFINISHED,
        Unit::Seconds,
        "age of the oldest event taken but without its terminal outcome, by partition; 0 when none"
    );
    describe_counter!(
        names::STALLED_EVENTS,
        Unit::Count,
        "events found still unfinished admin.event_stall_after after they were taken, by \
         partition (each counted once, with a warning log naming key, partition and offset)"
    );
    metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

pub fn record_consumed(stats: &Stats, partition: i32) {
    stats.consumed.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(names::EVENTS_CONSUMED, "partition" => partition.to_string()).increment(1);
}

/// Kafka acknowledged every output record of an event, `latency` after they were handed over.
pub fn outputs_acknowledged(stats: &Stats, latency: Duration) {
    stats
        .output_latency
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .record(latency);
}

/// What the metrics and logs need of one HTTP call to Alipay+, in plain values (the Alipay+
/// client builds it from its attempt).
#[derive(Debug, Clone, Copy)]
pub struct AttemptReport<'a> {
    /// The answer's class, a fixed label (`success`, `rejected`, `throttled`, `unknown`,
    /// `refused`).
    pub class: &'static str,
    pub latency: Duration,
    /// `result.resultStatus` and `result.resultCode`, when the body could be parsed.
    pub result_status: Option<&'a str>,
    pub result_code: Option<&'a str>,
    pub http_status: Option<u16>,
    /// Whether the answer's signature was verified, and what the check found (a fixed label).
    pub signature_trusted: bool,
    pub signature: &'static str,
}

/// One HTTP call to Alipay+ has ended, whatever its answer.
pub fn notify_attempt(stats: &Stats, psp: &str, attempt: &AttemptReport<'_>) {
    stats.http_calls.fetch_add(1, Ordering::Relaxed);
    stats
        .notify_latency
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .record(attempt.latency);
    metrics::counter!(
        names::NOTIFY_ATTEMPTS,
        "class" => attempt.class,
        "psp" => psp.to_owned(),
    )
    .increment(1);
    metrics::histogram!(names::NOTIFY_LATENCY).record(attempt.latency.as_secs_f64());
    let success_code = attempt.result_status == Some("S");
    if !attempt.signature_trusted {
        if success_code {
            stats.signature_failures.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(names::RESPONSE_SIGNATURE_FAILURES, "psp" => psp.to_owned())
                .increment(1);
            tracing::warn!(
                psp,
                signature = attempt.signature,
                "success answer without a valid signature, treated as unknown"
            );
        } else if attempt.result_status.is_some() {
            metrics::counter!(names::UNVERIFIED_RESPONSES, "psp" => psp.to_owned()).increment(1);
        }
    }
}

/// An attempt will be retried after `delay`.
pub fn retry_scheduled(stats: &Stats, attempt: &AttemptReport<'_>, attempts: u32, delay: Duration) {
    stats.retries.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(names::RETRIES, "class" => attempt.class).increment(1);
    tracing::debug!(
        class = attempt.class,
        result_code = attempt.result_code,
        http_status = attempt.http_status,
        attempts,
        delay_ms = delay.as_millis() as u64,
        "retrying notify"
    );
}

/// A decodable event reached its terminal outcome and Kafka acknowledged its records.
pub fn outcome(stats: &Stats, outcome: &RegistrationNotifyOutcome, occurred_at_ms: i64) {
    let counter = match outcome.outcome {
        NotifyOutcome::Notified => &stats.notified,
        NotifyOutcome::Rejected => &stats.rejected,
        NotifyOutcome::DeadLettered => &stats.dead_lettered,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    with_vigil(|vigil| vigil.progressed(Instant::now()));
    let code = outcome.result_code.as_deref().unwrap_or("none");
    if let Ok(mut codes) = stats.result_codes.lock() {
        *codes.entry(code.to_string()).or_default() += 1;
    }
    metrics::counter!(
        names::OUTCOMES,
        "outcome" => outcome.outcome.as_str(),
        "result_code" => bounded_code_label(code),
    )
    .increment(1);
    let end_to_end_ms = outcome
        .completed_at_ms
        .saturating_sub(occurred_at_ms)
        .max(0);
    metrics::histogram!(names::END_TO_END_LATENCY).record(end_to_end_ms as f64 / 1000.0);
    stats
        .end_to_end_latency
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .record(Duration::from_millis(end_to_end_ms.unsigned_abs()));
    let latency_ms = outcome
        .first_attempt_at_ms
        .map(|first| outcome.completed_at_ms.saturating_sub(first).max(0));
    tracing::info!(
        event_id = %outcome.event_id,
        merchant_id = %outcome.reference_merchant_id,
        request_id = %outcome.registration_request_id,
        outcome = outcome.outcome.as_str(),
        result_code = outcome.result_code.as_deref(),
        attempts = outcome.attempts,
        latency_ms,
        source_partition = outcome.source_partition,
        source_offset = outcome.source_offset,
        error = outcome.error.as_deref(),
        "event finished"
    );
}

/// A dead letter was acknowledged by Kafka.
pub fn dead_letter(stats: &Stats, reason: DeadLetterReason, partition: i32, offset: i64) {
    stats
        .dead_letter_counter(reason)
        .fetch_add(1, Ordering::Relaxed);
    with_vigil(|vigil| vigil.progressed(Instant::now()));
    metrics::counter!(names::DEAD_LETTERS, "reason" => reason.as_str()).increment(1);
    tracing::debug!(
        reason = reason.as_str(),
        partition,
        offset,
        "dead letter written"
    );
}

/// An undecodable record was dead-lettered; it has no outcome.
pub fn poison(stats: &Stats, partition: i32, offset: i64, error: &str) {
    stats.poison.fetch_add(1, Ordering::Relaxed);
    with_vigil(|vigil| vigil.progressed(Instant::now()));
    tracing::info!(
        outcome = "POISON",
        source_partition = partition,
        source_offset = offset,
        error,
        "event finished"
    );
}

pub fn publish_failed(stats: &Stats, error: &dyn std::error::Error, retry_in: Duration) {
    stats.publish_errors.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(names::PUBLISH_ERRORS).increment(1);
    tracing::warn!(error = %error, retry_in_ms = retry_in.as_millis() as u64, "output not written, retrying");
}

/// One request was RSA-signed in `took`.
pub fn signing_time(took: Duration) {
    metrics::histogram!(names::SIGNING_TIME).record(took.as_secs_f64());
}

/// An output can never be written; the service stops.
pub fn publish_fatal(stats: &Stats, error: &dyn std::error::Error) {
    stats.publish_errors.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(names::PUBLISH_ERRORS).increment(1);
    tracing::error!(error = %error, "output can never be written; stopping");
}

pub fn rebalance(stats: &Stats, kind: &'static str, partitions: &[i32]) {
    stats.rebalances.fetch_add(1, Ordering::Relaxed);
    metrics::counter!(names::REBALANCES, "kind" => kind).increment(1);
    exported::export_partition_series(partitions);
    tracing::info!(kind, ?partitions, "rebalance");
}

/// Events being notified now (the dispatcher reports it after every turn): with
/// [`awaiting_commit`], the work the stall rule of `/readyz` watches.
pub fn in_flight(count: usize) {
    metrics::gauge!(names::IN_FLIGHT).set(count as f64);
    with_vigil(|vigil| vigil.count(Count::InFlight, count, Instant::now));
}

/// Events called whose outcome is not committed yet (reported after every turn).
pub fn awaiting_commit(count: usize) {
    metrics::gauge!(names::AWAITING_COMMIT).set(count as f64);
    with_vigil(|vigil| vigil.count(Count::AwaitingCommit, count, Instant::now));
}

/// One partition's ages at an instant, as the dispatcher samples them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartitionAges {
    pub partition: i32,
    /// Now minus the timestamp of the oldest record not committed; 0 when every consumed record
    /// is committed (or the oldest has no timestamp).
    pub lag: Duration,
    /// Now minus the moment the oldest event without its terminal outcome was consumed; 0 when
    /// none.
    pub oldest_unfinished: Duration,
}

/// An event unfinished for longer than the stall time, reported once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    pub partition: i32,
    pub offset: i64,
    pub key: Box<str>,
    pub trace_id: u128,
    pub unfinished_for: Duration,
}

/// Each partition's lag in seconds and the age of its oldest unfinished event.
pub fn partition_ages(ages: &[PartitionAges]) {
    for partition in ages {
        let label = partition.partition.to_string();
        metrics::gauge!(names::CONSUMER_LAG_SECONDS, "partition" => label.clone())
            .set(partition.lag.as_secs_f64());
        metrics::gauge!(names::OLDEST_UNFINISHED, "partition" => label)
            .set(partition.oldest_unfinished.as_secs_f64());
    }
}

/// The partition is no longer processed here: its ages read 0 (another member reports them).
pub fn partition_gone(partition: i32) {
    let label = partition.to_string();
    metrics::gauge!(names::CONSUMER_LAG_SECONDS, "partition" => label.clone()).set(0.0);
    metrics::gauge!(names::OLDEST_UNFINISHED, "partition" => label).set(0.0);
}

/// An event has been unfinished for longer than `admin.event_stall_after` (reported once).
pub fn event_stalled(stalled: &Stalled, after: Duration) {
    metrics::counter!(names::STALLED_EVENTS, "partition" => stalled.partition.to_string())
        .increment(1);
    tracing::warn!(
        key = %stalled.key,
        partition = stalled.partition,
        offset = stalled.offset,
        trace_id = %crate::telemetry::traces::format_trace_id(stalled.trace_id),
        unfinished_s = stalled.unfinished_for.as_secs(),
        "event unfinished for longer than admin.event_stall_after ({})",
        humantime::format_duration(after)
    );
}

pub fn pending(partition: i32, count: usize) {
    metrics::gauge!(names::PENDING, "partition" => partition.to_string()).set(count as f64);
}

/// The circuit of `psp` is in the state whose gauge value is `gauge` (0 closed, 1 open, 2
/// half-open).
pub fn circuit_state(psp: &str, gauge: f64) {
    metrics::gauge!(names::CIRCUIT_STATE, "psp" => psp.to_owned()).set(gauge);
}

/// The circuit of `psp` went to the state named `to` (a fixed label), whose gauge value is
/// `gauge`.
pub fn circuit_transition(psp: &str, to: &'static str, gauge: f64) {
    metrics::counter!(names::CIRCUIT_TRANSITIONS, "to" => to, "psp" => psp.to_owned()).increment(1);
    circuit_state(psp, gauge);
}

/// This member's share of a psp's `max_requests_per_second` (0: no limit).
pub fn send_rate_share(psp: &str, per_second: f64) {
    metrics::gauge!(names::SEND_RATE_SHARE, "psp" => psp.to_owned()).set(per_second);
}

/// The adaptive send rate of one psp after an answer (`None`: not limited).
pub fn send_rate(psp: &str, allowed_per_second: Option<f64>, throttled: bool) {
    if throttled {
        metrics::counter!(names::THROTTLED, "psp" => psp.to_owned()).increment(1);
    }
    metrics::gauge!(names::SEND_RATE_LIMIT, "psp" => psp.to_owned())
        .set(allowed_per_second.unwrap_or(0.0));
}

/// The keyVersion a psp's requests are signed with (at start and after each reload).
pub fn key_version(psp: &str, version: u32) {
    metrics::gauge!(names::KEY_VERSION, "psp" => psp.to_owned()).set(f64::from(version));
}

/// A new private key (and its version) signs this psp's requests from now on.
pub fn signing_key_reloaded(psp: &str, key_version: u32) {
    metrics::counter!(
        names::KEY_RELOADS,
        "psp" => psp.to_owned(),
        "key" => "mpp_private_key",
        "result" => "applied",
    )
    .increment(1);
    self::key_version(psp, key_version);
    tracing::info!(
        psp,
        key_version,
        "private key reloaded: new requests are signed with it"
    );
}

/// A new Alipay+ public key verifies answers; the previous one still does for `overlap`.
pub fn answer_key_reloaded(psp: &str, overlap: Duration) {
    metrics::counter!(
        names::KEY_RELOADS,
        "psp" => psp.to_owned(),
        "key" => "alipayplus_public_key",
        "result" => "applied",
    )
    .increment(1);
    tracing::info!(
        psp,
        overlap_s = overlap.as_secs(),
        "alipay+ public key reloaded: answers signed with the previous key are accepted until \
         the overlap ends"
    );
}

/// The previous Alipay+ public key's overlap ended: answers signed with it no longer verify.
pub fn answer_key_overlap_ended(psp: &str) {
    tracing::info!(psp, "previous alipay+ public key no longer accepted");
}

/// A changed key file was refused; the keys in use stay.
pub fn key_reload_refused(psp: &str, key: &'static str, error: &dyn std::error::Error) {
    metrics::counter!(
        names::KEY_RELOADS,
        "psp" => psp.to_owned(),
        "key" => key,
        "result" => "refused",
    )
    .increment(1);
    tracing::error!(
        psp,
        key,
        %error,
        "changed key file refused; the key in use stays until a valid replacement is written"
    );
}

pub fn skipped_finished(partition: i32) {
    metrics::counter!(names::SKIPPED_FINISHED, "partition" => partition.to_string()).increment(1);
}

pub fn finished_note(partition: i32, bytes: usize) {
    metrics::gauge!(names::FINISHED_NOTE_BYTES, "partition" => partition.to_string())
        .set(bytes as f64);
}

pub fn partition_restarted(partition: i32) {
    metrics::counter!(names::PARTITION_RESTARTS, "partition" => partition.to_string()).increment(1);
}

/// A commit of `partition` up to `offset` landed: progress.
pub fn committed(partition: i32, offset: i64) {
    metrics::gauge!(names::COMMITTED_OFFSET, "partition" => partition.to_string())
        .set(offset as f64);
    with_vigil(|vigil| vigil.progressed(Instant::now()));
}

/// The pipeline found one of its own invariants broken (`check`: a fixed name, the metric's
/// label; `detail`: what it saw, for the log). Release builds report instead of panicking, but
/// the service's state can no longer be trusted to make progress: counted in
/// `regnotify_invariant_violations_total{check}`, logged at ERROR (at most once per
/// [`ERROR_LOG_INTERVAL`] per check, the next line saying how many were left out), and `/readyz`
/// answers 503 naming the check from now on, until a restart.
pub fn invariant_broken(check: &'static str, detail: &str) {
    metrics::counter!(names::INVARIANT_VIOLATIONS, "check" => check).increment(1);
    let verdict = with_vigil(|vigil| vigil.invariant_broken(check, Instant::now()));
    if let Verdict::Log { suppressed } = verdict {
        tracing::error!(
            check,
            detail,
            suppressed,
            "internal invariant broken; /readyz answers 503 from now on: restart the service"
        );
    }
}

pub fn commit_failed(error: &dyn std::error::Error) {
    metrics::counter!(names::COMMIT_ERRORS).increment(1);
    tracing::warn!(error = %error, "offset commit failed");
}

/// A private key file that others can read (see [`crate::keys::private_key_exposure`]).
pub fn private_key_file_exposed(setting: &str, path: &std::path::Path, mode: u32) {
    tracing::warn!(
        setting,
        path = %path.display(),
        mode = %format_args!("{mode:04o}"),
        "private key file is readable by group or others: restrict it (chmod 600, or 0440 with a \
         group of this process only)"
    );
}

/// `alipayplus.allow_insecure_http` is on: said at every start, whatever the base URL.
pub fn insecure_http_allowed(base_url: &str) {
    tracing::warn!(
        base_url,
        "INSECURE: alipayplus.allow_insecure_http is on; signed notifications may travel without \
         tls; meant for simulators only, never for a real alipay+ gateway"
    );
}

/// `alipayplus.verify_response_signature` is off: answers are trusted unverified.
pub fn response_verification_off() {
    tracing::warn!(
        "INSECURE: alipayplus.verify_response_signature is off; any answer, even forged, is taken \
         at its word"
    );
}

/// Result codes as labels: the documented set, or `other` for anything Alipay+ might invent, so a
/// misbehaving peer cannot grow the label set without bound.
fn bounded_code_label(code: &str) -> &'static str {
    const KNOWN: [&str; 14] = [
        "none",
        "SUCCESS",
        "ABNORMAL_REGISTRATION_STATUS",
        "ACCESS_DENIED",
        "INVALID_CLIENT",
        "INVALID_SIGNATURE",
        "KEY_NOT_FOUND",
        "MEDIA_TYPE_NOT_ACCEPTABLE",
        "METHOD_NOT_SUPPORTED",
        "NO_INTERFACE_DEF",
        "PARAM_ILLEGAL",
        "PROCESS_FAIL",
        "REQUEST_TRAFFIC_EXCEED_LIMIT",
        "UNKNOWN_EXCEPTION",
    ];
    KNOWN
        .into_iter()
        .find(|known| *known == code)
        .unwrap_or("other")
}

/// librdkafka's periodic statistics: brokers up, lag per assigned partition of `topic`, and
/// where each partition's fetch stands (which names stuck partitions while a consumer error
/// persists).
pub fn kafka_statistics(health: &Health, statistics: &rdkafka::Statistics, topic: &str) {
    let up = statistics
        .brokers
        .values()
        .filter(|broker| broker.state == "UP")
        .count();
    health.set_kafka_reachable(up > 0);
    metrics::gauge!(names::KAFKA_BROKERS_UP).set(up as f64);
    let mut positions = Vec::new();
    if let Some(topic_stats) = statistics.topics.get(topic) {
        for (partition, stats) in &topic_stats.partitions {
            // librdkafka reports -1 for its internal partition, and lists partitions it knows of
            // but does not fetch here with `desired = false`.
            if *partition < 0 {
                continue;
            }
            if stats.desired {
                positions.push((*partition, stats.next_offset, stats.hi_offset));
            }
            if stats.consumer_lag >= 0 {
                metrics::gauge!(names::CONSUMER_LAG, "partition" => partition.to_string())
                    .set(stats.consumer_lag as f64);
            }
        }
    }
    let now = Instant::now();
    let mut errors = health.kafka_errors();
    errors.fetch.observe(now, positions);
    settle_consumer_errors(health, &mut errors, now);
}

/// What librdkafka told the client context about the error it is about to return from `poll`.
#[derive(Debug)]
struct ClientReport {
    code: Option<RDKafkaErrorCode>,
    partition: Option<i32>,
    reason: String,
    at: Instant,
}

thread_local! {
    /// librdkafka hands a consumer error first to the client context, with its text, and then
    /// returns it from `poll` with the code alone, on the same polling thread. The text (the only
    /// place a reason, and sometimes a partition, appear) is carried from one to the other here.
    static LAST_CLIENT_ERROR: RefCell<Option<ClientReport>> = const { RefCell::new(None) };
}

/// How long a client error's text may wait for the `poll` that returns the same error.
const CLIENT_REPORT_FRESH_FOR: Duration = Duration::from_secs(1);

/// The label value of an error code: the variant name of rdkafka's `RDKafkaErrorCode` (for
/// example `UnsupportedCompressionType`, `BadCompression`, `TopicAuthorizationFailed`), a fixed set.
fn code_label(code: Option<RDKafkaErrorCode>) -> String {
    code.map_or_else(|| "other".to_string(), |code| format!("{code:?}"))
}

/// `poll` returned an error instead of a record: counted by code, logged at most once per
/// [`ERROR_LOG_INTERVAL`] per (code, partition), and tracked for `/readyz`.
pub fn consumer_error(health: &Health, error: &KafkaError) {
    let code = error.rdkafka_error_code();
    let label = code_label(code);
    metrics::counter!(names::CONSUMER_ERRORS, "code" => label.clone()).increment(1);
    let now = Instant::now();
    let context = LAST_CLIENT_ERROR
        .with(|last| last.borrow_mut().take())
        .filter(|report| {
            report.code == code
                && now.saturating_duration_since(report.at) < CLIENT_REPORT_FRESH_FOR
        });
    let partition = context.as_ref().and_then(|report| report.partition);
    let reason = context.as_ref().map(|report| report.reason.as_str());
    let key = ErrorKey { code, partition };

    let mut errors = health.kafka_errors();
    settle_consumer_errors(health, &mut errors, now);
    let reported = errors.book.report(key, now, health.progress(partition));
    let (persistent, reports, lasting) =
        errors
            .book
            .get(&key)
            .map_or((false, 0, Duration::ZERO), |episode| {
                (
                    episode.is_persistent(errors.book.rules()),
                    episode.reports,
                    now.saturating_duration_since(episode.first),
                )
            });
    if reported == Reported::BecamePersistent {
        tracing::warn!(
            code = %label,
            partition,
            reason,
            reports,
            for_s = lasting.as_secs(),
            "kafka consumer error persists; /readyz answers 503 until it is over"
        );
        update_error_gauges(&mut errors);
    }
    if let Verdict::Log { suppressed } = errors.consumer_log.check(&key, now) {
        tracing::warn!(
            %error,
            code = %label,
            partition,
            reason,
            persistent,
            suppressed,
            "kafka consumer error"
        );
    }
}

/// librdkafka reported an error to the client context (connection, authentication, and every
/// consumer error before `poll` returns it): counted by code and logged at most once per
/// [`ERROR_LOG_INTERVAL`] per (code, partition). Marks Kafka unreachable when all brokers are down.
pub fn kafka_client_error(health: &Health, error: &KafkaError, reason: &str) {
    let code = error.rdkafka_error_code();
    if code == Some(RDKafkaErrorCode::AllBrokersDown) {
        health.set_kafka_reachable(false);
    }
    metrics::counter!(names::KAFKA_CLIENT_ERRORS, "code" => code_label(code)).increment(1);
    let partition = partition_in_text(reason);
    let now = Instant::now();
    let verdict = health
        .kafka_errors()
        .client_log
        .check(&ErrorKey { code, partition }, now);
    if let Verdict::Log { suppressed } = verdict {
        tracing::warn!(
            %error,
            code = %code_label(code),
            reason,
            partition,
            suppressed,
            "kafka client error"
        );
    }
    LAST_CLIENT_ERROR.with(|last| {
        *last.borrow_mut() = Some(ClientReport {
            code,
            partition,
            reason: reason.to_string(),
            at: now,
        });
    });
}

/// One record was consumed from `partition`: evidence that ends some consumer errors. Two
/// uncontended atomic additions; no lock, no allocation.
pub fn consumer_record(health: &Health, partition: i32) {
    health.records_consumed.fetch_add(1, Ordering::Relaxed);
    if let Some(counter) = usize::try_from(partition)
        .ok()
        .and_then(|index| health.partition_records.get(index))
    {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A consumer error that keeps the service from being ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistentConsumerError {
    /// The error code's label, as in `regnotify_consumer_errors_total`.
    pub code: String,
    /// The partition, when librdkafka named it.
    pub partition: Option<i32>,
    pub reports: u64,
    /// Since the first report.
    pub lasting: Duration,
    pub last_report_ago: Duration,
}

/// What `/readyz` says about consumer errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsumerErrorStatus {
    pub persistent: Vec<PersistentConsumerError>,
    /// Assigned partitions with records waiting whose fetch position has not moved for
    /// [`CONSUMER_ERROR_PERSIST_AFTER`] (librdkafka statistics); listed only while an error persists.
    pub not_advancing: Vec<i32>,
}

/// The consumer errors that persist now (ending those that are over, which is logged).
pub fn consumer_error_status(health: &Health) -> ConsumerErrorStatus {
    let now = Instant::now();
    let mut errors = health.kafka_errors();
    settle_consumer_errors(health, &mut errors, now);
    let persistent: Vec<_> = errors
        .book
        .persistent()
        .map(|episode| PersistentConsumerError {
            code: code_label(episode.key.code),
            partition: episode.key.partition,
            reports: episode.reports,
            lasting: now.saturating_duration_since(episode.first),
            last_report_ago: now.saturating_duration_since(episode.last),
        })
        .collect();
    let not_advancing = if persistent.is_empty() {
        Vec::new()
    } else {
        errors
            .fetch
            .not_advancing(now, CONSUMER_ERROR_PERSIST_AFTER)
    };
    ConsumerErrorStatus {
        persistent,
        not_advancing,
    }
}

/// Ends the consumer errors that are over at `now`: one line each, with the repeats its limiter
/// still held back, and the gauges follow.
fn settle_consumer_errors(health: &Health, errors: &mut KafkaErrors, now: Instant) {
    let over = errors
        .book
        .settle(now, |partition| health.progress(partition));
    if over.is_empty() {
        return;
    }
    for episode in &over {
        let suppressed = errors.consumer_log.forget(&episode.key);
        errors.client_log.forget(&episode.key);
        tracing::info!(
            code = %code_label(episode.key.code),
            partition = episode.key.partition,
            reports = episode.reports,
            suppressed,
            lasted_s = episode.last.saturating_duration_since(episode.first).as_secs(),
            "kafka consumer error over"
        );
    }
    update_error_gauges(errors);
}

/// `regnotify_consumer_error_active{code}`: 1 for each code with a persistent error, 0 for codes
/// that had one before.
fn update_error_gauges(errors: &mut KafkaErrors) {
    let active: BTreeSet<String> = errors
        .book
        .persistent()
        .map(|episode| code_label(episode.key.code))
        .collect();
    errors.gauged.extend(active.iter().cloned());
    for code in &errors.gauged {
        let value = if active.contains(code) { 1.0 } else { 0.0 };
        metrics::gauge!(names::CONSUMER_ERROR_ACTIVE, "code" => code.clone()).set(value);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A result code Alipay+ does not document is counted under `other`, so a peer inventing
    /// codes cannot grow the label set; documented codes keep their names.
    fn finished(code: Option<&str>, outcome: NotifyOutcome) -> RegistrationNotifyOutcome {
        RegistrationNotifyOutcome {
            event_id: "e".into(),
            reference_merchant_id: "m".into(),
            registration_request_id: "r".into(),
            decision: crate::event::Decision::Approved,
            outcome,
            result_status: code.map(|_| "F".into()),
            result_code: code.map(Into::into),
            result_message: None,
            http_status: code.map(|_| 200),
            attempts: 1,
            first_attempt_at_ms: Some(0),
            completed_at_ms: 1,
            source_topic: "t".into(),
            source_partition: 0,
            source_offset: 0,
            error: None,
        }
    }

    #[test]
    fn undocumented_result_codes_are_counted_as_other() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let stats = Stats::default();
        metrics::with_local_recorder(&recorder, || {
            for code in ["BRAND_NEW_CODE_1", "brand-new-2", "A\"B{C}", "PROCESS_FAIL"] {
                outcome(&stats, &finished(Some(code), NotifyOutcome::Rejected), 0);
            }
            outcome(&stats, &finished(None, NotifyOutcome::DeadLettered), 0);
        });
        let rendered = handle.render();
        let lines: Vec<&str> = rendered
            .lines()
            .filter(|line| line.starts_with(names::OUTCOMES))
            .collect();
        assert_eq!(lines.len(), 3, "{rendered}");
        assert!(
            lines.contains(
                &"regnotify_outcomes_total{outcome=\"REJECTED\",result_code=\"other\"} 3"
            ),
            "{rendered}"
        );
        assert!(
            lines.contains(
                &"regnotify_outcomes_total{outcome=\"REJECTED\",result_code=\"PROCESS_FAIL\"} 1"
            ),
            "{rendered}"
        );
        assert!(
            lines.contains(
                &"regnotify_outcomes_total{outcome=\"DEAD_LETTERED\",result_code=\"none\"} 1"
            ),
            "{rendered}"
        );
        assert!(!rendered.contains("BRAND_NEW"), "{rendered}");
    }

    fn consumption(code: RDKafkaErrorCode) -> KafkaError {
        KafkaError::MessageConsumption(code)
    }

    #[test]
    fn a_missing_topic_makes_the_service_not_ready_until_its_partitions_are_assigned() {
        let health = Health::default();
        let error = consumption(RDKafkaErrorCode::UnknownTopicOrPartition);
        kafka_client_error(
            &health,
            &KafkaError::Global(RDKafkaErrorCode::UnknownTopicOrPartition),
            "Subscribed topic not available: decided: Broker: Unknown topic or partition",
        );
        consumer_error(&health, &error);
        let status = consumer_error_status(&health);
        assert_eq!(status.persistent.len(), 1);
        assert_eq!(status.persistent[0].code, "UnknownTopicOrPartition");
        assert_eq!(status.persistent[0].partition, None);
        // An empty assignment (the topic still does not exist) proves nothing.
        health.assigned(0);
        assert_eq!(consumer_error_status(&health).persistent.len(), 1);
        health.assigned(2);
        assert_eq!(
            consumer_error_status(&health),
            ConsumerErrorStatus::default()
        );
    }

    #[test]
    fn the_partition_named_in_the_client_error_text_reaches_the_poll_error() {
        let health = Health::default();
        let code = RDKafkaErrorCode::TopicAuthorizationFailed;
        kafka_client_error(
            &health,
            &KafkaError::Global(code),
            "Failed to fetch committed offset for group \"g\" topic decided [3]: Broker: Topic authorization failed",
        );
        consumer_error(&health, &consumption(code));
        let status = consumer_error_status(&health);
        assert_eq!(status.persistent.len(), 1);
        assert_eq!(status.persistent[0].partition, Some(3));
        // The denial is topic-wide: a record from any partition proves the topic readable again.
        consumer_record(&health, 0);
        assert!(consumer_error_status(&health).persistent.is_empty());
    }

    #[test]
    fn a_client_error_of_another_code_lends_its_text_to_no_poll_error() {
        let health = Health::default();
        kafka_client_error(
            &health,
            &KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "decided [5]: disconnected",
        );
        consumer_error(
            &health,
            &consumption(RDKafkaErrorCode::TopicAuthorizationFailed),
        );
        let status = consumer_error_status(&health);
        assert_eq!(status.persistent[0].partition, None);
    }

    #[test]
    fn a_repeating_error_is_not_persistent_at_first() {
        let health = Health::default();
        for _ in 0..50 {
            consumer_error(
                &health,
                &consumption(RDKafkaErrorCode::UnsupportedCompressionType),
            );
        }
        assert!(
            consumer_error_status(&health).persistent.is_empty(),
            "only after {CONSUMER_ERROR_PERSIST_AFTER:?} of reports"
        );
    }

    const MINUTE: Duration = Duration::from_secs(60);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn health_limits_default_to_the_admin_settings_defaults() {
        let limits = Health::default().limits();
        assert_eq!(limits.livez_after, secs(60));
        assert_eq!(limits.stall_after, secs(300));
        assert_eq!(limits, HealthLimits::default());
    }

    #[test]
    fn liveness_fails_once_the_main_loop_is_quiet_longer_than_livez_after() {
        let health = Health::isolated().with_limits(HealthLimits {
            livez_after: 2 * MINUTE,
            stall_after: 10 * MINUTE,
        });
        health.beat();
        let now = Instant::now();
        assert_eq!(health.liveness(now), Ok(()));
        assert_eq!(health.liveness(now + secs(119)), Ok(()));
        let reason = health.liveness(now + secs(121)).unwrap_err();
        assert!(
            reason.starts_with("main loop has not turned for 121 s"),
            "{reason}"
        );
        assert!(reason.contains("admin.livez_after = 2m"), "{reason}");
        assert!(!reason.contains('\n'), "one line: {reason}");
    }

    /// The dispatcher's reports of its counts are what "work waits" means; nothing else is
    /// needed for a stall to show.
    #[test]
    fn waiting_work_reported_by_the_dispatcher_stalls_readiness_after_stall_after() {
        let health = Health::isolated();
        assert!(health.stuck(Instant::now() + secs(3_600)).is_empty());
        health.reporting(|| {
            in_flight(2);
            awaiting_commit(1);
        });
        let now = Instant::now();
        assert!(health.stuck(now + secs(299)).is_empty());
        let problems = health.stuck(now + secs(301));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("stalled: 2 events in flight and 1 awaiting commit"),
            "{problems:?}"
        );
        assert!(
            problems[0].contains("admin.stall_after = 5m"),
            "{problems:?}"
        );
        // All work done: no stall, however long nothing happens.
        health.reporting(|| {
            in_flight(0);
            awaiting_commit(0);
        });
        assert!(health.stuck(now + secs(3_600)).is_empty());
    }

    /// Each kind of progress (an outcome, a dead letter, a poison record, an Alipay+ answer, a
    /// commit) is recorded, and the stall time counts from it (the rule itself is tested in
    /// `stuck` with injected time).
    #[test]
    fn every_kind_of_progress_is_recorded_and_the_stall_time_counts_from_it() {
        let stats = Stats::default();
        type Kind<'a> = (&'a str, &'a dyn Fn(&Health));
        let kinds: [Kind<'_>; 5] = [
            ("outcome", &|health| {
                health.reporting(|| {
                    outcome(&stats, &finished(None, NotifyOutcome::Notified), 0);
                });
            }),
            ("dead letter", &|health| {
                health.reporting(|| dead_letter(&stats, DeadLetterReason::DecodeError, 0, 1));
            }),
            ("poison", &|health| {
                health.reporting(|| poison(&stats, 0, 1, "undecodable"));
            }),
            ("answer", &|health| health.answered(false, false)),
            ("commit", &|health| health.reporting(|| committed(0, 2))),
        ];
        for (kind, progress) in kinds {
            let health = Health::isolated();
            health.reporting(|| in_flight(1));
            assert_eq!(health.vigil.work().last_progress, None, "{kind}");
            let before = Instant::now();
            progress(&health);
            let at = health.vigil.work().last_progress;
            assert!(at.is_some_and(|at| at >= before), "{kind} is progress");
            let at = at.unwrap_or(before);
            assert!(health.stuck(at + secs(299)).is_empty(), "{kind}");
            assert_eq!(health.stuck(at + secs(301)).len(), 1, "{kind}");
        }
    }

    #[test]
    fn an_overdue_probe_makes_readiness_fail_naming_its_psp() {
        let health = Health::isolated();
        let now = Instant::now();
        health.circuit_probe("PSP_A", Some(now + secs(10)));
        health.circuit_probe("PSP_B", Some(now + secs(100)));
        assert!(health.stuck(now + secs(10)).is_empty(), "due, not overdue");
        let problems = health.stuck(now + secs(11));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("psp PSP_A"), "{problems:?}");
        assert!(
            problems[0].contains("1 s past its deadline"),
            "{problems:?}"
        );
        // A later deadline replaces the earlier one; None forgets the psp.
        health.circuit_probe("PSP_A", Some(now + secs(60)));
        assert!(health.stuck(now + secs(11)).is_empty());
        health.circuit_probe("PSP_B", None);
        health.circuit_probe("PSP_A", None);
        assert!(health.stuck(now + secs(3_600)).is_empty());
    }

    /// A writer for a test's log lines.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_broken_invariant_is_counted_logged_and_keeps_readiness_off_for_good() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let log = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer({
                let log = log.clone();
                move || log.clone()
            })
            .with_ansi(false)
            .finish();
        let health = Health::isolated();
        let bystander = Health::isolated();
        let now = Instant::now();
        tracing::subscriber::with_default(subscriber, || {
            metrics::with_local_recorder(&recorder, || {
                health.reporting(|| {
                    invariant_broken("window_order", "offset 7 finished before 5 was taken");
                    invariant_broken("window_order", "offset 8 finished before 5 was taken");
                });
            });
        });
        let rendered = handle.render();
        assert!(
            rendered.lines().any(
                |line| line == "regnotify_invariant_violations_total{check=\"window_order\"} 2"
            ),
            "{rendered}"
        );
        let log = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 1, "the repeat is held back: {log}");
        assert!(lines[0].contains("ERROR"), "{log}");
        assert!(lines[0].contains("check=\"window_order\""), "{log}");
        assert!(lines[0].contains("offset 7 finished before 5"), "{log}");
        for later in [now, now + secs(86_400)] {
            let problems = health.stuck(later);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].starts_with("internal invariant `window_order` broken (2 times"),
                "{problems:?}"
            );
        }
        assert!(bystander.stuck(now).is_empty(), "another vigil saw nothing");
    }
}
