//! What `/livez`, `/healthz` and `/readyz` look at: [`Health`], written by the pipeline as it runs,
//! its [`HealthLimits`], and the process's vigil of waiting work, progress and broken invariants
//! that the free reporting functions write to (through `with_vigil`).
//!
//! It holds state and answers questions about it; the rules of a stall live in `stuck`, those of
//! a persistent consumer error in `consumer_errors`, and what updates them from librdkafka in
//! `kafka`. It never records metrics or logs.

#[cfg(test)]
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::consumer_errors::{ErrorBook, ErrorKey, FetchProgress, Progress, Rules};
use super::log_limiter::LogLimiter;
use super::stuck::{self, Vigil};
#[cfg(doc)]
use super::{
    awaiting_commit, committed, dead_letter, in_flight, invariant_broken, outcome, poison,
};

/// A consumer error reported again and again for this long makes `/readyz` answer 503.
pub const CONSUMER_ERROR_PERSIST_AFTER: Duration = Duration::from_secs(10);
/// A repeating consumer error not reported for this long is over. librdkafka retries a failed
/// fetch every `fetch.error.backoff.ms` (500 ms by default), so this is many silent retries.
pub const CONSUMER_ERROR_CLEAR_AFTER: Duration = Duration::from_secs(15);
/// A repeated Kafka error is logged at most once per this interval per (code, partition); the next
/// line says how many repeats were left out.
pub(crate) const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Partitions (0 up to this) whose consumed records are counted one by one, so that an error
/// naming one of them ends as soon as it delivers again.
const TRACKED_PARTITIONS: usize = 256;
/// Distinct (code, partition) keys each log limiter remembers.
const LOG_LIMITER_KEYS: usize = 128;

/// The time limits of `/livez` and of the stall rule of `/readyz` (`admin.livez_after`,
/// `admin.stall_after`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HealthLimits {
    /// `/livez` answers 503 once the main loop has not turned for longer than this.
    pub(crate) livez_after: Duration,
    /// `/readyz` answers 503 once work waits and nothing has progressed for longer than this.
    pub(crate) stall_after: Duration,
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
pub(super) fn with_vigil<R>(report: impl FnOnce(&Vigil) -> R) -> R {
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
    pub(super) vigil: Arc<Vigil>,
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
    pub(super) records_consumed: AtomicU64,
    pub(super) partition_records: Box<[AtomicU64]>,
    /// Rebalances that assigned at least one partition.
    assignments: AtomicU64,
    /// Kafka errors: which persist, what each limiter let through, where fetches stand.
    kafka_errors: Mutex<KafkaErrors>,
}

/// The state behind consumer-error readiness and the rate-limited error lines. Touched only when
/// an error is reported, on librdkafka statistics and on `/readyz`; never per record.
#[derive(Debug)]
pub(super) struct KafkaErrors {
    pub(super) book: ErrorBook,
    pub(super) consumer_log: LogLimiter<ErrorKey>,
    pub(super) client_log: LogLimiter<ErrorKey>,
    pub(super) fetch: FetchProgress,
    /// Codes whose `regnotify_consumer_error_active` gauge exists (set to 0 when over).
    pub(super) gauged: BTreeSet<String>,
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
    pub(crate) fn with_limits(mut self, limits: HealthLimits) -> Self {
        self.limits = limits;
        self
    }

    #[cfg(test)]
    pub(crate) fn limits(&self) -> HealthLimits {
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
    pub(crate) fn beat(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last_beat_ms.store(now, Ordering::Relaxed);
    }

    /// How long ago the main loop last turned.
    pub(crate) fn since_last_beat(&self) -> Duration {
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
    pub(crate) fn liveness(&self, now: Instant) -> Result<(), String> {
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
    pub(crate) fn circuit_probe(&self, psp: &str, overdue_after: Option<Instant>) {
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
    pub(crate) fn stuck(&self, now: Instant) -> Vec<String> {
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
    pub(crate) fn assigned(&self, count: usize) {
        self.assigned_partitions
            .store(count as u64, Ordering::Relaxed);
        self.joined.store(true, Ordering::Relaxed);
        if count > 0 {
            self.assignments.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn joined(&self) -> bool {
        self.joined.load(Ordering::Relaxed)
    }

    pub fn assigned_partitions(&self) -> u64 {
        self.assigned_partitions.load(Ordering::Relaxed)
    }

    pub(crate) fn set_kafka_reachable(&self, reachable: bool) {
        self.kafka_reachable.store(reachable, Ordering::Relaxed);
    }

    pub(crate) fn kafka_reachable(&self) -> bool {
        self.kafka_reachable.load(Ordering::Relaxed)
    }

    /// Counts refused answers in a row; any other answer ends the streak. Every answer is
    /// progress (see [`Health::stuck`]).
    /// An answer from Alipay+. `repeat`: a refusal of an event refused before, which neither
    /// lengthens nor ends the streak (it counts distinct events, like the circuit breaker's).
    pub(crate) fn answered(&self, refused: bool, repeat: bool) {
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

    pub(crate) fn set_circuit(&self, open_because: Option<String>) {
        *self.circuit.lock().unwrap_or_else(PoisonError::into_inner) = open_because;
    }

    /// Offset commits keep failing (`Some`: why), or one landed again (`None`).
    pub(crate) fn set_commits_refused(&self, because: Option<String>) {
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

    pub(crate) fn refused_streak(&self) -> u64 {
        self.refused_streak.load(Ordering::Relaxed)
    }

    /// The counters that can end a consumer error, now, for an error of `partition`.
    pub(super) fn progress(&self, partition: Option<i32>) -> Progress {
        Progress {
            records: self.records_consumed.load(Ordering::Relaxed),
            partition_records: partition
                .and_then(|p| usize::try_from(p).ok())
                .and_then(|p| self.partition_records.get(p))
                .map(|counter| counter.load(Ordering::Relaxed)),
            assignments: self.assignments.load(Ordering::Relaxed),
        }
    }

    pub(super) fn kafka_errors(&self) -> MutexGuard<'_, KafkaErrors> {
        // The state stays consistent across a panic elsewhere: every update is one call.
        self.kafka_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

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
}
