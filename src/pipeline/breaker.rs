//! The circuit breaker around Alipay+: closed, open, half-open.
//!
//! When Alipay+ as a whole is down (most answers unknown: timeouts, connection errors, 5xx, `U`)
//! or refuses us (our key or client id), the fault is not the events'. The breaker opens: no new
//! calls, the partitions are paused, events waiting to retry are held without spending their
//! retry budget. After a wait (doubling from `probe_interval` to `probe_interval_max`) one real
//! event is sent as a probe; an answer that is not systemic closes the circuit, anything else
//! opens it again.
//!
//! This is the decision only: no clock, no I/O. [`Breaker::admit`] and [`Breaker::record`] take
//! the time; the worker waits and calls.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::CircuitBreakerSettings;

/// The state, as the `regnotify_circuit_state` gauge shows it (0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    pub fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::Open => 1.0,
            CircuitState::HalfOpen => 2.0,
        }
    }
}

/// What an answer says about Alipay+ as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Alipay+ answered about the event: success, an event-specific rejection, or throttling.
    Healthy,
    /// No usable answer: timeout, connection error, 5xx, `U`.
    Unknown,
    /// Refused-class: our key, signature or client id.
    Refused,
}

/// May a call go out now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Call,
    /// The one call of the half-open state: its answer decides.
    Probe,
    /// Not now: ask again after this long, or sooner when the state changes.
    Wait(Duration),
}

/// A change of state, for the log line, the counter and the gauge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: CircuitState,
    pub to: CircuitState,
    pub reason: String,
}

#[derive(Debug)]
pub struct Breaker {
    settings: CircuitBreakerSettings,
    refused_streak_threshold: u32,
    state: CircuitState,
    /// Closed: recent answers (when, unknown?) within `settings.window`.
    window: VecDeque<(Instant, bool)>,
    unknown_in_window: usize,
    refused_streak: u32,
    probe_interval: Duration,
    next_probe_at: Instant,
    /// Why the circuit is not closed.
    reason: String,
    /// Healthy answers recorded so far: a held refusal compares it with its own snapshot.
    healthy: u64,
    /// Times the circuit opened so far.
    openings: u64,
}

/// Where the breaker stood when an answer was recorded: a held refusal waits for either number
/// to move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    healthy: u64,
    openings: u64,
}

/// What became of a held refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Other calls were answered since: the refusal was about the event.
    AboutTheEvent,
    /// The circuit opened since (or is not closed): the refusal was about us.
    AboutUs,
    Undecided,
}

impl Breaker {
    pub fn new(
        settings: CircuitBreakerSettings,
        refused_streak_threshold: u32,
        now: Instant,
    ) -> Breaker {
        Breaker {
            probe_interval: settings.probe_interval,
            settings,
            refused_streak_threshold: refused_streak_threshold.max(1),
            state: CircuitState::Closed,
            window: VecDeque::new(),
            unknown_in_window: 0,
            refused_streak: 0,
            next_probe_at: now,
            reason: String::new(),
            healthy: 0,
            openings: 0,
        }
    }

    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// Why the circuit is open or half-open (empty when closed).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    pub fn mark(&self) -> Mark {
        Mark {
            healthy: self.healthy,
            openings: self.openings,
        }
    }

    /// May a call go out now? While open, nobody calls until the probe time; then exactly one
    /// caller gets [`Admit::Probe`] and the rest wait for its answer.
    pub fn admit(&mut self, now: Instant) -> (Admit, Option<Transition>) {
        match self.state {
            _ if !self.settings.enabled => (Admit::Call, None),
            CircuitState::Closed => (Admit::Call, None),
            CircuitState::Open if now >= self.next_probe_at => {
                let transition = self.change(CircuitState::HalfOpen, self.reason.clone());
                (Admit::Probe, transition)
            }
            CircuitState::Open => (Admit::Wait(self.next_probe_at - now), None),
            CircuitState::HalfOpen => (Admit::Wait(self.probe_interval), None),
        }
    }

    /// The answer to a call (`probe`: the one [`Admit::Probe`] allowed).
    pub fn record(&mut self, now: Instant, signal: Signal, probe: bool) -> Option<Transition> {
        if !self.settings.enabled {
            return None;
        }
        match signal {
            Signal::Healthy => {
                self.healthy += 1;
                self.refused_streak = 0;
            }
            Signal::Refused => self.refused_streak += 1,
            Signal::Unknown => {}
        }
        match self.state {
            CircuitState::HalfOpen if probe => {
                if signal == Signal::Healthy {
                    self.probe_interval = self.settings.probe_interval;
                    self.change(CircuitState::Closed, String::new())
                } else {
                    self.probe_interval =
                        (self.probe_interval * 2).min(self.settings.probe_interval_max);
                    let reason = format!(
                        "the probe failed too ({}); {}",
                        describe(signal),
                        self.reason
                    );
                    self.open(now, reason)
                }
            }
            // Answers to calls made before the circuit opened change nothing now.
            CircuitState::Open | CircuitState::HalfOpen => None,
            CircuitState::Closed => self.closed_answer(now, signal),
        }
    }

    /// The probe never got an answer (its job was cancelled): another caller may probe now.
    pub fn probe_abandoned(&mut self, now: Instant) -> Option<Transition> {
        if self.state != CircuitState::HalfOpen {
            return None;
        }
        self.next_probe_at = now;
        self.change(CircuitState::Open, self.reason.clone())
    }

    /// A held refusal, decided by what was recorded since `mark`.
    pub fn refusal(&self, mark: Mark) -> Refusal {
        if self.state != CircuitState::Closed || self.openings > mark.openings {
            Refusal::AboutUs
        } else if self.healthy > mark.healthy {
            Refusal::AboutTheEvent
        } else {
            Refusal::Undecided
        }
    }

    fn closed_answer(&mut self, now: Instant, signal: Signal) -> Option<Transition> {
        if self.refused_streak >= self.refused_streak_threshold {
            let reason = format!(
                "alipay+ refused the last {} requests (check client id, keys and key version)",
                self.refused_streak
            );
            return self.open(now, reason);
        }
        if signal == Signal::Refused {
            return None;
        }
        let unknown = signal == Signal::Unknown;
        self.window.push_back((now, unknown));
        self.unknown_in_window += usize::from(unknown);
        while let Some(&(at, was_unknown)) = self.window.front() {
            let too_many = self.window.len() > self.settings.window_calls as usize;
            if !too_many && now.duration_since(at) <= self.settings.window {
                break;
            }
            self.window.pop_front();
            self.unknown_in_window -= usize::from(was_unknown);
        }
        let calls = self.window.len();
        if calls >= self.settings.min_calls as usize
            && self.unknown_in_window as f64 >= self.settings.failure_ratio * calls as f64
        {
            let reason = format!(
                "{} of the last {calls} answers from alipay+ were unknown (timeouts, dropped \
                 connections, 5xx, U)",
                self.unknown_in_window
            );
            return self.open(now, reason);
        }
        None
    }

    fn open(&mut self, now: Instant, reason: String) -> Option<Transition> {
        self.openings += 1;
        self.window.clear();
        self.unknown_in_window = 0;
        self.refused_streak = 0;
        self.next_probe_at = now + self.probe_interval;
        self.change(CircuitState::Open, reason)
    }

    fn change(&mut self, to: CircuitState, reason: String) -> Option<Transition> {
        let from = self.state;
        self.state = to;
        self.reason = reason.clone();
        (from != to).then_some(Transition { from, to, reason })
    }
}

fn describe(signal: Signal) -> &'static str {
    match signal {
        Signal::Healthy => "answered",
        Signal::Unknown => "no usable answer",
        Signal::Refused => "refused",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn settings() -> CircuitBreakerSettings {
        CircuitBreakerSettings {
            enabled: true,
            window: Duration::from_secs(10),
            window_calls: 6,
            min_calls: 4,
            failure_ratio: 0.5,
            probe_interval: Duration::from_secs(1),
            probe_interval_max: Duration::from_secs(4),
            refusal_hold: Duration::from_secs(1),
        }
    }

    fn at(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    #[test]
    fn unknown_answers_over_the_ratio_open_the_circuit_only_after_min_calls() {
        let start = Instant::now();
        let mut breaker = Breaker::new(settings(), 20, start);
        assert_eq!(breaker.record(at(start, 1), Signal::Unknown, false), None);
        assert_eq!(breaker.record(at(start, 2), Signal::Unknown, false), None);
        assert_eq!(breaker.record(at(start, 3), Signal::Healthy, false), None);
        let opened = breaker
            .record(at(start, 4), Signal::Unknown, false)
            .unwrap();
        assert_eq!(
            (opened.from, opened.to),
            (CircuitState::Closed, CircuitState::Open)
        );
        assert!(
            opened.reason.contains("3 of the last 4 answers"),
            "{}",
            opened.reason
        );
        assert_eq!(
            breaker.admit(at(start, 5)).0,
            Admit::Wait(Duration::from_millis(999))
        );
    }

    #[test]
    fn answers_older_than_the_window_do_not_count() {
        let start = Instant::now();
        let mut breaker = Breaker::new(settings(), 20, start);
        for millis in 0..3 {
            breaker.record(at(start, millis), Signal::Unknown, false);
        }
        // Eleven seconds later the three unknown answers are out of the window.
        for millis in 0..3 {
            assert_eq!(
                breaker.record(at(start, 11_000 + millis), Signal::Healthy, false),
                None
            );
        }
        assert_eq!(
            breaker.record(at(start, 11_010), Signal::Unknown, false),
            None
        );
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    #[test]
    fn only_the_last_window_calls_count_however_many_came_before() {
        let start = Instant::now();
        let mut breaker = Breaker::new(settings(), 20, start);
        for millis in 0..1_000 {
            breaker.record(at(start, millis), Signal::Healthy, false);
        }
        // Three unknown among the last six answers: half of the window.
        breaker.record(at(start, 1_001), Signal::Unknown, false);
        breaker.record(at(start, 1_002), Signal::Unknown, false);
        let opened = breaker.record(at(start, 1_003), Signal::Unknown, false);
        assert_eq!(opened.unwrap().to, CircuitState::Open);
    }

    #[test]
    fn one_probe_at_a_time_closes_on_an_answer_and_backs_off_on_failure() {
        let start = Instant::now();
        let mut breaker = Breaker::new(settings(), 2, start);
        breaker.record(start, Signal::Refused, false);
        let opened = breaker.record(start, Signal::Refused, false).unwrap();
        assert!(
            opened.reason.contains("refused the last 2"),
            "{}",
            opened.reason
        );
        // Before the probe time nobody calls; then exactly one probe.
        assert!(matches!(breaker.admit(at(start, 500)).0, Admit::Wait(_)));
        let (admit, half) = breaker.admit(at(start, 1_000));
        assert_eq!(admit, Admit::Probe);
        assert_eq!(half.unwrap().to, CircuitState::HalfOpen);
        assert!(matches!(breaker.admit(at(start, 1_001)).0, Admit::Wait(_)));
        // A late answer to an earlier call decides nothing.
        assert_eq!(
            breaker.record(at(start, 1_002), Signal::Healthy, false),
            None
        );
        // The probe fails: open again, next probe after twice the interval.
        let reopened = breaker
            .record(at(start, 1_100), Signal::Unknown, true)
            .unwrap();
        assert_eq!(reopened.to, CircuitState::Open);
        assert_eq!(
            breaker.admit(at(start, 2_000)).0,
            Admit::Wait(Duration::from_millis(1_100))
        );
        assert_eq!(breaker.admit(at(start, 3_100)).0, Admit::Probe);
        breaker.record(at(start, 3_200), Signal::Refused, true);
        // Doubled again, up to the maximum of 4 s.
        assert_eq!(
            breaker.admit(at(start, 3_200)).0,
            Admit::Wait(Duration::from_secs(4))
        );
        assert_eq!(breaker.admit(at(start, 7_200)).0, Admit::Probe);
        let closed = breaker
            .record(at(start, 7_300), Signal::Healthy, true)
            .unwrap();
        assert_eq!(closed.to, CircuitState::Closed);
        assert_eq!(breaker.admit(at(start, 7_301)).0, Admit::Call);
        // The interval starts over after a recovery.
        breaker.record(at(start, 8_000), Signal::Refused, false);
        breaker.record(at(start, 8_000), Signal::Refused, false);
        assert_eq!(
            breaker.admit(at(start, 8_000)).0,
            Admit::Wait(Duration::from_secs(1))
        );
    }

    #[test]
    fn a_held_refusal_is_about_the_event_when_others_are_answered_and_about_us_when_it_opens() {
        let start = Instant::now();
        let mut breaker = Breaker::new(settings(), 3, start);
        breaker.record(start, Signal::Refused, false);
        let mark = breaker.mark();
        assert_eq!(breaker.refusal(mark), Refusal::Undecided);
        breaker.record(start, Signal::Healthy, false);
        assert_eq!(breaker.refusal(mark), Refusal::AboutTheEvent);

        breaker.record(start, Signal::Refused, false);
        let mark = breaker.mark();
        breaker.record(start, Signal::Refused, false);
        assert_eq!(breaker.refusal(mark), Refusal::Undecided);
        breaker.record(start, Signal::Refused, false);
        assert_eq!(breaker.state(), CircuitState::Open);
        assert_eq!(breaker.refusal(mark), Refusal::AboutUs);
    }

    #[test]
    fn an_abandoned_probe_lets_another_caller_probe() {
        let start = Instant::now();
        let mut breaker = Breaker::new(settings(), 1, start);
        breaker.record(start, Signal::Refused, false);
        assert_eq!(breaker.admit(at(start, 1_000)).0, Admit::Probe);
        breaker.probe_abandoned(at(start, 1_500));
        assert_eq!(breaker.admit(at(start, 1_500)).0, Admit::Probe);
    }

    #[test]
    fn a_disabled_breaker_never_opens() {
        let start = Instant::now();
        let mut breaker = Breaker::new(
            CircuitBreakerSettings {
                enabled: false,
                ..settings()
            },
            1,
            start,
        );
        for _ in 0..50 {
            assert_eq!(breaker.record(start, Signal::Refused, false), None);
            assert_eq!(breaker.record(start, Signal::Unknown, false), None);
        }
        assert_eq!(breaker.admit(start).0, Admit::Call);
    }
}
