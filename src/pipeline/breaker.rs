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
//! the time; the worker waits and calls. One concern over about 600 lines: half the file is the
//! state machine's tests, next to it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::CircuitBreakerSettings;

/// The state, as the `regnotify_circuit_state` gauge shows it (0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    pub(crate) const ALL: [CircuitState; 3] = [
        CircuitState::Closed,
        CircuitState::Open,
        CircuitState::HalfOpen,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
        }
    }

    pub(crate) fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::Open => 1.0,
            CircuitState::HalfOpen => 2.0,
        }
    }
}

/// What an answer says about Alipay+ as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// Alipay+ answered about the event: success, an event-specific rejection, or throttling.
    Healthy,
    /// No usable answer: timeout, connection error, 5xx, `U`.
    Unknown,
    /// Refused-class: our key, signature or client id.
    Refused,
}

/// May a call go out now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    Call,
    /// The one call of the half-open state: its answer decides.
    Probe,
    /// Not now: ask again after this long, or sooner when the state changes.
    Wait(Duration),
}

/// A change of state, for the log line, the counter and the gauge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) from: CircuitState,
    pub(crate) to: CircuitState,
    pub(crate) reason: String,
}

#[derive(Debug)]
pub(crate) struct Breaker {
    settings: CircuitBreakerSettings,
    refused_streak_threshold: u32,
    state: CircuitState,
    /// Closed: recent answers (when, unknown?) within `settings.window`.
    window: VecDeque<(Instant, bool)>,
    unknown_in_window: usize,
    /// Closed: when each event refused since the last healthy answer was first refused, within
    /// `settings.window`. One event asking again adds nothing: only refusals of distinct events
    /// say the fault is ours.
    refused_streak: VecDeque<Instant>,
    probe_interval: Duration,
    next_probe_at: Instant,
    /// Why the circuit is not closed.
    reason: String,
    /// Calls let out so far; the number of each is its [`Call`].
    sent: u64,
    /// The newest call (by when it was sent) answered healthily: a held refusal is about the
    /// event once a call sent after it was answered.
    newest_healthy: u64,
    /// Times the circuit opened so far.
    openings: u64,
    /// Calls let out and neither answered nor abandoned yet: while there are none, nothing can
    /// decide a held refusal.
    outstanding: u64,
}

/// One call let out by [`Breaker::admit`], numbered in the order calls were sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Call(u64);

/// An answer, as the breaker weighs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) signal: Signal,
    /// The call it answers.
    pub(crate) call: Call,
    /// That call was the one [`Admit::Probe`] allowed.
    pub(crate) probe: bool,
    /// A refusal of an event that was refused before: it does not lengthen the refused streak,
    /// which counts distinct events.
    pub(crate) repeat: bool,
}

/// Where the breaker stood when a refusal was recorded: a held refusal waits for a call sent
/// after it to be answered, or for the circuit to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark {
    call: Call,
    openings: u64,
}

/// What became of a held refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Other calls were answered since: the refusal was about the event.
    AboutTheEvent,
    /// The circuit opened since (or is not closed): the refusal was about us.
    AboutUs,
    Undecided,
}

impl Breaker {
    pub(crate) fn new(
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
            refused_streak: VecDeque::new(),
            next_probe_at: now,
            reason: String::new(),
            sent: 0,
            newest_healthy: 0,
            openings: 0,
            outstanding: 0,
        }
    }

    pub(crate) fn state(&self) -> CircuitState {
        self.state
    }

    /// Why the circuit is open or half-open (empty when closed).
    #[cfg(test)]
    pub(crate) fn reason(&self) -> &str {
        &self.reason
    }

    pub(crate) fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// Where the breaker stands for a refusal of `call` recorded now.
    pub(crate) fn mark(&self, call: Call) -> Mark {
        Mark {
            call,
            openings: self.openings,
        }
    }

    /// The time the next probe may go while the circuit is open.
    pub(crate) fn next_probe_at(&self) -> Option<Instant> {
        (self.settings.enabled && self.state == CircuitState::Open).then_some(self.next_probe_at)
    }

    /// Numbers a call that [`admit`](Self::admit) let out.
    pub(crate) fn send(&mut self) -> Call {
        self.sent += 1;
        self.outstanding += 1;
        Call(self.sent)
    }

    /// Some call is out without an answer yet: its answer may decide a held refusal (a call
    /// sent after it answered healthily) or open the circuit.
    pub(crate) fn awaits_answers(&self) -> bool {
        self.outstanding > 0
    }

    /// May a call go out now? While open, nobody calls until the probe time; then exactly one
    /// caller gets [`Admit::Probe`] and the rest wait for its answer.
    pub(crate) fn admit(&mut self, now: Instant) -> (Admit, Option<Transition>) {
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

    /// The answer to a call.
    pub(crate) fn record(&mut self, now: Instant, answer: Answer) -> Option<Transition> {
        self.outstanding = self.outstanding.saturating_sub(1);
        if !self.settings.enabled {
            return None;
        }
        let Answer {
            signal,
            call,
            probe,
            repeat,
        } = answer;
        match signal {
            Signal::Healthy => {
                self.newest_healthy = self.newest_healthy.max(call.0);
                self.refused_streak.clear();
            }
            Signal::Refused if !repeat => self.refused_streak.push_back(now),
            Signal::Refused | Signal::Unknown => {}
        }
        match self.state {
            CircuitState::HalfOpen if probe => {
                if signal == Signal::Healthy {
                    self.probe_interval = self.settings.probe_interval;
                    self.change(CircuitState::Closed, String::new())
                } else {
                    self.probe_interval =
                        (self.probe_interval * 2).min(self.settings.probe_interval_max);
                    // The first reason stays the cause; a long outage must not grow it.
                    let cause = self
                        .reason
                        .split_once(PROBE_FAILED_SEP)
                        .map_or(self.reason.as_str(), |(_, cause)| cause);
                    let reason = format!(
                        "the probe failed too ({}){PROBE_FAILED_SEP}{cause}",
                        describe(signal),
                    );
                    self.open(now, reason)
                }
            }
            // Answers to calls made before the circuit opened change nothing now.
            CircuitState::Open | CircuitState::HalfOpen => None,
            CircuitState::Closed => self.closed_answer(now, signal),
        }
    }

    /// A call let out never got an answer (its job was cancelled). When it was the probe,
    /// another caller may probe now.
    pub(crate) fn abandoned(&mut self, now: Instant, probe: bool) -> Option<Transition> {
        self.outstanding = self.outstanding.saturating_sub(1);
        if !probe || self.state != CircuitState::HalfOpen {
            return None;
        }
        self.next_probe_at = now;
        self.change(CircuitState::Open, self.reason.clone())
    }

    /// A held refusal, decided by what was recorded since `mark`.
    /// Only calls sent after the refused one count: an answer to a call sent before it (signed
    /// before a key changed, say) says nothing about it.
    pub(crate) fn refusal(&self, mark: Mark) -> Refusal {
        if self.state != CircuitState::Closed || self.openings > mark.openings {
            Refusal::AboutUs
        } else if self.newest_healthy > mark.call.0 {
            Refusal::AboutTheEvent
        } else {
            Refusal::Undecided
        }
    }

    fn closed_answer(&mut self, now: Instant, signal: Signal) -> Option<Transition> {
        while let Some(&at) = self.refused_streak.front() {
            if now.saturating_duration_since(at) <= self.settings.window {
                break;
            }
            self.refused_streak.pop_front();
        }
        if self.refused_streak.len() >= self.refused_streak_threshold as usize {
            let reason = format!(
                "alipay+ refused the last {} events in a row (check client id, keys and key \
                 version)",
                self.refused_streak.len()
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
        self.refused_streak.clear();
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

/// Between a failed probe's note and the reason the circuit first opened.
const PROBE_FAILED_SEP: &str = "; opened because ";

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

    /// Sends one call now and records its answer (a first refusal, for `Refused`).
    fn rec(breaker: &mut Breaker, now: Instant, signal: Signal, probe: bool) -> Option<Transition> {
        let call = breaker.send();
        breaker.record(
            now,
            Answer {
                signal,
                call,
                probe,
                repeat: false,
            },
        )
    }

    fn at(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    #[test]
    fn unknown_answers_over_the_ratio_open_the_circuit_only_after_min_calls() {
        let start = Instant::now();
        let mut breaker = Breaker::new(settings(), 20, start);
        assert_eq!(
            rec(&mut breaker, at(start, 1), Signal::Unknown, false),
            None
        );
        assert_eq!(
            rec(&mut breaker, at(start, 2), Signal::Unknown, false),
            None
        );
        assert_eq!(
            rec(&mut breaker, at(start, 3), Signal::Healthy, false),
            None
        );
        let opened = rec(&mut breaker, at(start, 4), Signal::Unknown, false).unwrap();
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
            rec(&mut breaker, at(start, millis), Signal::Unknown, false);
        }
        // Eleven seconds later the three unknown answers are out of the window.
        for millis in 0..3 {
            assert_eq!(
                rec(
                    &mut breaker,
                    at(start, 11_000 + millis),
                    Signal::Healthy,
                    false
                ),
                None
            );
        }
        assert_eq!(
            rec(&mut breaker, at(start, 11_010), Signal::Unknown, false),
            None
        );
        assert_eq!(breaker.state(), CircuitState::Closed);
    }

    #[test]
    fn only_the_last_window_calls_count_however_many_came_before() {
        let start = Instant::now();
        let mut breaker = Breaker::new(settings(), 20, start);
        for millis in 0..1_000 {
            rec(&mut breaker, at(start, millis), Signal::Healthy, false);
        }
        // Three unknown among the last six answers: half of the window.
        rec(&mut breaker, at(start, 1_001), Signal::Unknown, false);
        rec(&mut breaker, at(start, 1_002), Signal::Unknown, false);
        let opened = rec(&mut breaker, at(start, 1_003), Signal::Unknown, false);
        assert_eq!(opened.unwrap().to, CircuitState::Open);
    }

    #[test]
    fn one_probe_at_a_time_closes_on_an_answer_and_backs_off_on_failure() {
        let start = Instant::now();
        let mut breaker = Breaker::new(settings(), 2, start);
        rec(&mut breaker, start, Signal::Refused, false);
        let opened = rec(&mut breaker, start, Signal::Refused, false).unwrap();
        assert!(
            opened.reason.contains("refused the last 2 events"),
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
            rec(&mut breaker, at(start, 1_002), Signal::Healthy, false),
            None
        );
        // The probe fails: open again, next probe after twice the interval.
        let reopened = rec(&mut breaker, at(start, 1_100), Signal::Unknown, true).unwrap();
        assert_eq!(reopened.to, CircuitState::Open);
        assert_eq!(
            breaker.admit(at(start, 2_000)).0,
            Admit::Wait(Duration::from_millis(1_100))
        );
        assert_eq!(breaker.admit(at(start, 3_100)).0, Admit::Probe);
        rec(&mut breaker, at(start, 3_200), Signal::Refused, true);
        // Doubled again, up to the maximum of 4 s.
        assert_eq!(
            breaker.admit(at(start, 3_200)).0,
            Admit::Wait(Duration::from_secs(4))
        );
        assert_eq!(breaker.admit(at(start, 7_200)).0, Admit::Probe);
        // However many probes failed, the reason names the last one and the first cause once.
        assert_eq!(
            breaker.reason(),
            "the probe failed too (refused); opened because alipay+ refused the last 2 events in \
             a row (check client id, keys and key version)"
        );
        let closed = rec(&mut breaker, at(start, 7_300), Signal::Healthy, true).unwrap();
        assert_eq!(closed.to, CircuitState::Closed);
        assert_eq!(breaker.admit(at(start, 7_301)).0, Admit::Call);
        // The interval starts over after a recovery.
        rec(&mut breaker, at(start, 8_000), Signal::Refused, false);
        rec(&mut breaker, at(start, 8_000), Signal::Refused, false);
        assert_eq!(
            breaker.admit(at(start, 8_000)).0,
            Admit::Wait(Duration::from_secs(1))
        );
    }

    #[test]
    fn a_held_refusal_is_about_the_event_when_others_are_answered_and_about_us_when_it_opens() {
        let start = Instant::now();
        let mut breaker = Breaker::new(settings(), 3, start);
        rec(&mut breaker, start, Signal::Refused, false);
        let mark = breaker.mark(Call(breaker.sent));
        assert_eq!(breaker.refusal(mark), Refusal::Undecided);
        rec(&mut breaker, start, Signal::Healthy, false);
        assert_eq!(breaker.refusal(mark), Refusal::AboutTheEvent);

        rec(&mut breaker, start, Signal::Refused, false);
        let mark = breaker.mark(Call(breaker.sent));
        rec(&mut breaker, start, Signal::Refused, false);
        assert_eq!(breaker.refusal(mark), Refusal::Undecided);
        rec(&mut breaker, start, Signal::Refused, false);
        assert_eq!(breaker.state(), CircuitState::Open);
        assert_eq!(breaker.refusal(mark), Refusal::AboutUs);
    }

    #[test]
    fn an_abandoned_probe_lets_another_caller_probe() {
        let start = Instant::now();
        let mut breaker = Breaker::new(settings(), 1, start);
        rec(&mut breaker, start, Signal::Refused, false);
        assert_eq!(breaker.admit(at(start, 1_000)).0, Admit::Probe);
        breaker.abandoned(at(start, 1_500), true);
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
            assert_eq!(rec(&mut breaker, start, Signal::Refused, false), None);
            assert_eq!(rec(&mut breaker, start, Signal::Unknown, false), None);
        }
        assert_eq!(breaker.admit(start).0, Admit::Call);
    }

    #[test]
    fn an_answer_to_a_call_sent_before_a_refusal_does_not_judge_it() {
        let start = Instant::now();
        let mut breaker = Breaker::new(settings(), 20, start);
        // Sent before the key changed, answered after the refusal of a call sent later.
        let earlier = breaker.send();
        let refused = breaker.send();
        breaker.record(
            start,
            Answer {
                signal: Signal::Refused,
                call: refused,
                probe: false,
                repeat: false,
            },
        );
        let mark = breaker.mark(refused);
        breaker.record(
            at(start, 10),
            Answer {
                signal: Signal::Healthy,
                call: earlier,
                probe: false,
                repeat: false,
            },
        );
        assert_eq!(breaker.refusal(mark), Refusal::Undecided);
        // A call sent after the refusal and answered tells: it was about the event.
        rec(&mut breaker, at(start, 20), Signal::Healthy, false);
        assert_eq!(breaker.refusal(mark), Refusal::AboutTheEvent);
    }

    #[test]
    fn a_held_refusal_awaits_answers_only_while_a_call_is_out() {
        let start = Instant::now();
        let mut breaker = Breaker::new(settings(), 20, start);
        assert!(!breaker.awaits_answers());
        let _earlier = breaker.send();
        let refused = breaker.send();
        let refusal = |call| Answer {
            signal: Signal::Refused,
            call,
            probe: false,
            repeat: false,
        };
        breaker.record(start, refusal(refused));
        // The earlier call is still out: its answer could open the circuit.
        assert!(breaker.awaits_answers());
        breaker.abandoned(at(start, 5), false);
        assert!(!breaker.awaits_answers());
        assert_eq!(breaker.refusal(breaker.mark(refused)), Refusal::Undecided);
        // A call sent later is out again, and its answer decides.
        let later = breaker.send();
        assert!(breaker.awaits_answers());
        breaker.record(
            at(start, 10),
            Answer {
                signal: Signal::Healthy,
                call: later,
                probe: false,
                repeat: false,
            },
        );
        assert!(!breaker.awaits_answers());
        assert_eq!(
            breaker.refusal(breaker.mark(refused)),
            Refusal::AboutTheEvent
        );
        // A disabled breaker counts its calls too (its answers are not weighed).
        let mut disabled = Breaker::new(
            CircuitBreakerSettings {
                enabled: false,
                ..settings()
            },
            20,
            start,
        );
        let call = disabled.send();
        assert!(disabled.awaits_answers());
        disabled.record(start, refusal(call));
        assert!(!disabled.awaits_answers());
    }

    #[test]
    fn the_refused_streak_counts_distinct_events_within_the_window() {
        let start = Instant::now();
        let mut breaker = Breaker::new(settings(), 3, start);
        rec(&mut breaker, start, Signal::Refused, false);
        // The same event refused again and again adds nothing.
        for millis in 1..50 {
            let call = breaker.send();
            let answer = Answer {
                signal: Signal::Refused,
                call,
                probe: false,
                repeat: true,
            };
            assert_eq!(breaker.record(at(start, millis), answer), None);
        }
        rec(&mut breaker, at(start, 100), Signal::Refused, false);
        assert_eq!(breaker.state(), CircuitState::Closed);
        // Eleven seconds on, the first two are out of the 10 s window.
        assert_eq!(
            rec(&mut breaker, at(start, 11_000), Signal::Refused, false),
            None
        );
        rec(&mut breaker, at(start, 11_001), Signal::Refused, false);
        let opened = rec(&mut breaker, at(start, 11_002), Signal::Refused, false).unwrap();
        assert!(
            opened.reason.contains("refused the last 3 events"),
            "{}",
            opened.reason
        );
    }
}
