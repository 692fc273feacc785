//! When the service is stuck although its main loop turns: the stall, probe and invariant parts
//! of `/readyz` (README, "Health").
//!
//! - **Stall**: work waits (events in flight or awaiting their commit) and nothing has progressed
//!   for the stall time. Progress is an event reaching its terminal outcome (an outcome, a dead
//!   letter, a poison record), an Alipay+ answer, or a commit that landed. The quiet time counts
//!   from the later of the last progress and the moment work started waiting, so the first event
//!   after a long idle spell is not "stalled" at once.
//! - **Overdue probe**: an open circuit has jobs waiting and its probe did not go out by the
//!   deadline the pipeline gave.
//! - **Broken invariant**: the pipeline found its own state inconsistent; from then on its
//!   progress cannot be trusted, and readiness stays off until a restart.
//!
//! Pure: no I/O, no logging, no clock (the caller passes `now`).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::log_limiter::{LogLimiter, Verdict};

/// Distinct invariant checks whose log lines are rate-limited apiece.
const INVARIANT_LOG_KEYS: usize = 32;

/// What the pipeline reports about waiting work, progress and invariants, for one process: the
/// dispatcher reports its counts through free functions that carry no handle
/// ([`super::in_flight`], [`super::awaiting_commit`]), so this lives once per process
/// (see [`super::Health`]).
#[derive(Debug)]
pub(crate) struct Vigil {
    state: Mutex<Watch>,
}

#[derive(Debug)]
struct Watch {
    work: Work,
    /// Per broken check: how often and since when.
    broken: BTreeMap<&'static str, Broken>,
    log: LogLimiter<&'static str>,
}

/// The waiting work and the progress, as the stall rule reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Work {
    pub(crate) in_flight: usize,
    pub(crate) awaiting_commit: usize,
    /// When the waiting work last went from none to some.
    pub(crate) waiting_since: Option<Instant>,
    pub(crate) last_progress: Option<Instant>,
}

/// One invariant check that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Broken {
    pub(crate) first: Instant,
    pub(crate) times: u64,
}

/// Work waits and nothing has progressed for longer than the stall time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stall {
    pub(crate) in_flight: usize,
    pub(crate) awaiting_commit: usize,
    /// Since the last progress, or since work started waiting if that is later.
    pub(crate) quiet: Duration,
}

/// Which count a report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Count {
    InFlight,
    AwaitingCommit,
}

impl Default for Vigil {
    fn default() -> Self {
        Vigil {
            state: Mutex::new(Watch {
                work: Work::default(),
                broken: BTreeMap::new(),
                log: LogLimiter::new(super::ERROR_LOG_INTERVAL, INVARIANT_LOG_KEYS),
            }),
        }
    }
}

impl Vigil {
    fn state(&self) -> MutexGuard<'_, Watch> {
        // Every update is one call and leaves the state consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One of the counts is now `count`; `now` is read only when work starts waiting.
    pub(crate) fn count(&self, which: Count, count: usize, now: impl FnOnce() -> Instant) {
        let mut state = self.state();
        let work = &mut state.work;
        let before = work.in_flight + work.awaiting_commit;
        match which {
            Count::InFlight => work.in_flight = count,
            Count::AwaitingCommit => work.awaiting_commit = count,
        }
        if before == 0 && work.in_flight + work.awaiting_commit > 0 {
            work.waiting_since = Some(now());
        }
    }

    /// An event reached its terminal outcome, Alipay+ answered, or a commit landed.
    pub(crate) fn progressed(&self, now: Instant) {
        self.state().work.last_progress = Some(now);
    }

    /// An invariant check failed at `now`: remembered for good; says whether to log this one.
    pub(crate) fn invariant_broken(&self, check: &'static str, now: Instant) -> Verdict {
        let mut state = self.state();
        state
            .broken
            .entry(check)
            .and_modify(|broken| broken.times += 1)
            .or_insert(Broken {
                first: now,
                times: 1,
            });
        state.log.check(&check, now)
    }

    pub(crate) fn work(&self) -> Work {
        self.state().work
    }

    pub(crate) fn broken(&self) -> Vec<(&'static str, Broken)> {
        self.state()
            .broken
            .iter()
            .map(|(check, broken)| (*check, *broken))
            .collect()
    }
}

/// The stall rule: `Some` when work waits and the quiet time exceeds `stall_after` at `now`.
pub(crate) fn stall(work: &Work, stall_after: Duration, now: Instant) -> Option<Stall> {
    if work.in_flight + work.awaiting_commit == 0 {
        return None;
    }
    let since = work.waiting_since.max(work.last_progress)?;
    let quiet = now.saturating_duration_since(since);
    (quiet > stall_after).then_some(Stall {
        in_flight: work.in_flight,
        awaiting_commit: work.awaiting_commit,
        quiet,
    })
}

/// The psps whose probe deadline has passed at `now`, with how long ago it passed.
pub(crate) fn overdue_probes(
    deadlines: &BTreeMap<String, Instant>,
    now: Instant,
) -> Vec<(&str, Duration)> {
    deadlines
        .iter()
        .filter(|(_, deadline)| now > **deadline)
        .map(|(psp, deadline)| (psp.as_str(), now.saturating_duration_since(*deadline)))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const STALL_AFTER: Duration = Duration::from_secs(300);

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn no_waiting_work_is_never_a_stall() {
        let start = Instant::now();
        let vigil = Vigil::default();
        assert_eq!(stall(&vigil.work(), STALL_AFTER, at(start, 10_000)), None);
        vigil.count(Count::InFlight, 2, || start);
        vigil.count(Count::InFlight, 0, || start);
        assert_eq!(stall(&vigil.work(), STALL_AFTER, at(start, 10_000)), None);
    }

    #[test]
    fn waiting_work_without_progress_stalls_after_the_stall_time() {
        let start = Instant::now();
        let vigil = Vigil::default();
        vigil.count(Count::InFlight, 3, || start);
        vigil.count(Count::AwaitingCommit, 1, || at(start, 1));
        assert_eq!(stall(&vigil.work(), STALL_AFTER, at(start, 300)), None);
        assert_eq!(
            stall(&vigil.work(), STALL_AFTER, at(start, 301)),
            Some(Stall {
                in_flight: 3,
                awaiting_commit: 1,
                quiet: Duration::from_secs(301),
            }),
            "the quiet time counts from when work started waiting"
        );
    }

    #[test]
    fn progress_restarts_the_quiet_time() {
        let start = Instant::now();
        let vigil = Vigil::default();
        vigil.count(Count::InFlight, 1, || start);
        vigil.progressed(at(start, 200));
        assert_eq!(stall(&vigil.work(), STALL_AFTER, at(start, 500)), None);
        let stalled = stall(&vigil.work(), STALL_AFTER, at(start, 501)).unwrap();
        assert_eq!(stalled.quiet, Duration::from_secs(301));
    }

    /// The first event after an idle hour is not stalled because the last progress is an hour
    /// old: the quiet time starts when work starts waiting.
    #[test]
    fn work_arriving_after_a_long_idle_spell_is_not_stalled_at_once() {
        let start = Instant::now();
        let vigil = Vigil::default();
        vigil.progressed(start);
        vigil.count(Count::AwaitingCommit, 1, || at(start, 3_600));
        assert_eq!(stall(&vigil.work(), STALL_AFTER, at(start, 3_601)), None);
        assert!(stall(&vigil.work(), STALL_AFTER, at(start, 3_901)).is_some());
    }

    /// While work keeps waiting, counts that change do not restart the quiet time; only work
    /// that drained to none and came back does.
    #[test]
    fn changing_counts_do_not_restart_the_quiet_time() {
        let start = Instant::now();
        let vigil = Vigil::default();
        vigil.count(Count::InFlight, 1, || start);
        vigil.count(Count::AwaitingCommit, 4, || at(start, 100));
        vigil.count(Count::InFlight, 0, || at(start, 200));
        assert!(stall(&vigil.work(), STALL_AFTER, at(start, 301)).is_some());
        vigil.count(Count::AwaitingCommit, 0, || at(start, 302));
        vigil.count(Count::InFlight, 1, || at(start, 400));
        assert_eq!(stall(&vigil.work(), STALL_AFTER, at(start, 700)), None);
        assert!(stall(&vigil.work(), STALL_AFTER, at(start, 701)).is_some());
    }

    #[test]
    fn a_probe_is_overdue_only_once_its_deadline_has_passed() {
        let start = Instant::now();
        let deadlines: BTreeMap<String, Instant> = [
            ("PSP_A".to_string(), at(start, 100)),
            ("PSP_B".to_string(), at(start, 50)),
        ]
        .into_iter()
        .collect();
        assert!(overdue_probes(&deadlines, at(start, 50)).is_empty());
        assert_eq!(
            overdue_probes(&deadlines, at(start, 60)),
            vec![("PSP_B", Duration::from_secs(10))]
        );
        assert_eq!(overdue_probes(&deadlines, at(start, 101)).len(), 2);
    }

    #[test]
    fn a_broken_invariant_is_remembered_and_its_lines_are_rate_limited() {
        let start = Instant::now();
        let vigil = Vigil::default();
        assert_eq!(
            vigil.invariant_broken("slots", start),
            Verdict::Log { suppressed: 0 }
        );
        assert_eq!(
            vigil.invariant_broken("slots", at(start, 1)),
            Verdict::Suppress
        );
        assert_eq!(
            vigil.invariant_broken("window", at(start, 2)),
            Verdict::Log { suppressed: 0 }
        );
        assert_eq!(
            vigil.invariant_broken("slots", at(start, 3_600)),
            Verdict::Log { suppressed: 1 }
        );
        assert_eq!(
            vigil.broken(),
            vec![
                (
                    "slots",
                    Broken {
                        first: start,
                        times: 3
                    }
                ),
                (
                    "window",
                    Broken {
                        first: at(start, 2),
                        times: 1
                    }
                ),
            ]
        );
    }
}
