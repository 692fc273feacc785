//! The circuit breakers' shell: one [`Circuit`] per MPP (a [`Breaker`] behind a lock and a wake-up
//! for the workers waiting on it), and [`Circuits`], what an operator and the dispatcher see of
//! them together (one log line per transition, the `regnotify_circuit_state` gauge and
//! `regnotify_circuit_transitions_total` by `psp`, `/readyz`).
//!
//! One MPP's outage or refusal opens only its own circuit: its events wait, the others' go on.
//! The dispatcher pauses every partition only while no MPP's circuit is closed, since a partition
//! mixes MPPs, and only while every circuit that is not closed has an event waiting to probe it
//! (or its probe is out): an open circuit moves only when a call goes out, so holding the intake
//! with nobody left to probe (the waiting jobs were cancelled by a rebalance, or dead-lettered)
//! would stop the service for good. While some are closed, the waiting events of the open ones
//! are bounded by the partition windows like any other slow work.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::alipayplus::ResultClass;
use crate::config::CircuitBreakerSettings;
use crate::observe::{self, Health};
use crate::pipeline::breaker::{
    Admit, Answer, Breaker, Call, CircuitState, Mark, Refusal, Signal, Transition,
};
use crate::pipeline::job::now;

/// One MPP's circuit as the board sees it.
#[derive(Debug, Clone, Default)]
struct Board {
    state: Option<CircuitState>,
    /// Why it is not closed.
    reason: String,
    /// Jobs waiting for it to let a call out.
    waiting: usize,
    /// While open: when the next probe may go, and when it is overdue (twice the longest
    /// probe interval later; `/readyz` fails then, if anyone waits).
    probe_due: Option<(Instant, Duration)>,
}

impl Board {
    fn state(&self) -> CircuitState {
        self.state.unwrap_or(CircuitState::Closed)
    }

    /// A call will move this circuit without new events: one waits to call, or the probe is out.
    fn moves_alone(&self) -> bool {
        self.waiting > 0 || self.state() == CircuitState::HalfOpen
    }
}

/// How long a refusal with no call of its MPP out waits for one to be sent before it is
/// undecided (see [`Circuit::refusal`]).
pub(crate) const REFUSAL_GRACE: Duration = Duration::from_millis(100);

/// Every MPP's circuit state, and whether the dispatcher should hold the intake.
#[derive(Debug)]
pub(crate) struct Circuits {
    /// Per psp label.
    states: Mutex<BTreeMap<String, Board>>,
    hold: watch::Sender<bool>,
    health: Arc<Health>,
}

impl Circuits {
    pub(crate) fn new(health: Arc<Health>) -> Arc<Circuits> {
        Arc::new(Circuits {
            states: Mutex::new(BTreeMap::new()),
            hold: watch::Sender::new(false),
            health,
        })
    }

    /// Follows whether the intake should be held: no MPP's circuit is closed and each will move
    /// without new events (see [`hold_intake`]).
    pub(crate) fn subscribe(&self) -> watch::Receiver<bool> {
        self.hold.subscribe()
    }

    fn set(
        &self,
        psp: &str,
        state: CircuitState,
        reason: String,
        probe_due: Option<(Instant, Duration)>,
    ) {
        self.update(psp, |board| {
            board.state = Some(state);
            board.reason = reason;
            board.probe_due = probe_due;
        });
    }

    fn waiting(&self, psp: &str, more: bool) {
        self.update(psp, |board| {
            if more {
                board.waiting += 1;
            } else {
                board.waiting = board.waiting.saturating_sub(1);
            }
        });
    }

    fn update(&self, psp: &str, change: impl FnOnce(&mut Board)) {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        let board = states.entry(psp.to_owned()).or_default();
        change(board);
        let overdue_after = match (board.state(), board.probe_due) {
            (CircuitState::Open, Some((at, grace))) if board.waiting > 0 => Some(at + grace),
            _ => None,
        };
        self.health.circuit_probe(psp, overdue_after);
        let hold = hold_intake(states.values());
        let open: Vec<String> = states
            .iter()
            .filter(|(_, board)| board.state() != CircuitState::Closed)
            .map(|(psp, board)| format!("psp {psp}: {}", board.reason))
            .collect();
        self.health
            .set_circuit((!open.is_empty()).then(|| open.join("; ")));
        // Published under the lock: two updates that computed their verdicts in one order must
        // not publish them in the other (a stale hold with nobody waiting would stop intake).
        self.hold.send_if_modified(|now| {
            let changed = *now != hold;
            *now = hold;
            changed
        });
        drop(states);
    }
}

/// Whether the dispatcher should stop fetching: no circuit is closed (any closed one keeps the
/// intake going, since a partition mixes MPPs), and every circuit will move without new events.
/// A circuit that nobody waits on takes new events in, so that one of them probes it when its
/// time comes.
fn hold_intake<'a>(boards: impl Iterator<Item = &'a Board>) -> bool {
    let mut any = false;
    for board in boards {
        if board.state() == CircuitState::Closed || !board.moves_alone() {
            return false;
        }
        any = true;
    }
    any
}

/// One MPP's circuit breaker.
#[derive(Debug)]
pub(crate) struct Circuit {
    psp: String,
    breaker: Mutex<Breaker>,
    refusal_hold: Duration,
    probe_interval_max: Duration,
    /// Woken on every recorded answer and every transition.
    changed: Notify,
    board: Arc<Circuits>,
}

impl Circuit {
    /// The circuit of the MPP labelled `psp`, reporting to `board`.
    pub(crate) fn new(
        settings: CircuitBreakerSettings,
        refused_streak_threshold: u32,
        psp: &str,
        board: Arc<Circuits>,
    ) -> Circuit {
        observe::circuit_state(psp, CircuitState::Closed.gauge());
        board.set(psp, CircuitState::Closed, String::new(), None);
        Circuit {
            psp: psp.to_owned(),
            refusal_hold: settings.refusal_hold,
            probe_interval_max: settings.probe_interval_max,
            breaker: Mutex::new(Breaker::new(settings, refused_streak_threshold, now())),
            changed: Notify::new(),
            board,
        }
    }

    pub(crate) fn enabled(&self) -> bool {
        self.lock().enabled()
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().state() == CircuitState::Closed
    }

    /// Waits until a call may go out. Returns the call (and whether it is the probe) and how
    /// long it waited; `None` when `cancel` fired first. While it waits, the board counts it
    /// (see [`hold_intake`]).
    pub(crate) async fn admitted(
        &self,
        cancel: &CancellationToken,
    ) -> Option<(Admitted, Duration)> {
        let started = now();
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait = {
                let mut breaker = self.lock();
                let (admit, transition) = breaker.admit(now());
                match admit {
                    Admit::Call | Admit::Probe => {
                        let call = breaker.send();
                        let probe = admit == Admit::Probe;
                        // Counted out before the transition is published, so the board never
                        // sees a half-open circuit's probe as a waiter too.
                        drop(waiting.take());
                        self.publish(&breaker, transition);
                        drop(breaker);
                        let admitted = Admitted { call, probe };
                        return Some((admitted, now().saturating_duration_since(started)));
                    }
                    Admit::Wait(wait) => {
                        self.publish(&breaker, transition);
                        wait
                    }
                }
            };
            waiting.get_or_insert_with(|| {
                self.board.waiting(&self.psp, true);
                Waiting { circuit: self }
            });
            tokio::select! {
                biased;
                () = cancel.cancelled() => return None,
                () = notified => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Records the answer to `call` (`repeat`: a refusal of an event refused before); returns
    /// where the breaker stood right after it, for a held refusal.
    pub(crate) fn record(&self, class: ResultClass, call: Admitted, repeat: bool) -> Mark {
        let signal = match class {
            ResultClass::Success | ResultClass::Rejected | ResultClass::Throttled => {
                Signal::Healthy
            }
            ResultClass::Refused => Signal::Refused,
            ResultClass::Unknown => Signal::Unknown,
        };
        let answer = Answer {
            signal,
            call: call.call,
            probe: call.probe,
            repeat,
        };
        let mark = {
            let mut breaker = self.lock();
            let transition = breaker.record(now(), answer);
            self.publish(&breaker, transition);
            breaker.mark(call.call)
        };
        self.changed.notify_waiters();
        mark
    }

    /// The job of a call let out was cancelled before its answer.
    pub(crate) fn abandoned(&self, call: Admitted) {
        {
            let mut breaker = self.lock();
            let transition = breaker.abandoned(now(), call.probe);
            self.publish(&breaker, transition);
        }
        self.changed.notify_waiters();
    }

    /// Waits, up to `refusal_hold`, for the answers that tell whether a refusal recorded at
    /// `mark` was about the event or about us. Returns the verdict and how long it waited;
    /// `None` when `cancel` fired first.
    ///
    /// Undecided after [`REFUSAL_GRACE`] when no call of this MPP is out by then: no answer is
    /// coming that could decide it, and holding would only stall what waits behind the event
    /// (under `ordering = "partition"` the very events whose answers would decide it). The event
    /// then asks again after its backoff, against its retry budget, as after a hold that ran out.
    pub(crate) async fn refusal(
        &self,
        mark: Mark,
        cancel: &CancellationToken,
    ) -> Option<(Refusal, Duration)> {
        let started = now();
        let deadline = tokio::time::Instant::now() + self.refusal_hold;
        let grace = tokio::time::Instant::now() + REFUSAL_GRACE.min(self.refusal_hold);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (verdict, awaited) = {
                let breaker = self.lock();
                (breaker.refusal(mark), breaker.awaits_answers())
            };
            if verdict != Refusal::Undecided {
                return Some((verdict, now().saturating_duration_since(started)));
            }
            // Nothing out: wait a moment for a call to be sent (events of a burst follow each
            // other closely), then give up rather than hold for the whole `refusal_hold`.
            let until = if awaited {
                deadline
            } else if tokio::time::Instant::now() < grace {
                grace
            } else {
                return Some((Refusal::Undecided, now().saturating_duration_since(started)));
            };
            tokio::select! {
                biased;
                () = cancel.cancelled() => return None,
                () = notified => {}
                () = tokio::time::sleep_until(until) => {
                    if until == deadline {
                        return Some((Refusal::Undecided, now().saturating_duration_since(started)));
                    }
                }
            }
        }
    }

    /// Reports a transition, with the breaker still locked: transitions reach the board in the
    /// order they happened (published after the lock, two of them could cross, and the board
    /// would hold the intake for a circuit that is closed).
    fn publish(&self, breaker: &Breaker, transition: Option<Transition>) {
        let Some(Transition { from, to, reason }) = transition else {
            return;
        };
        let psp = self.psp.as_str();
        match to {
            CircuitState::Open => tracing::warn!(
                psp,
                from = from.as_str(),
                %reason,
                "alipay+ circuit open for this psp: no new calls, its retries held"
            ),
            CircuitState::HalfOpen => {
                tracing::info!(
                    psp,
                    from = from.as_str(),
                    "alipay+ circuit half-open: sending a probe"
                );
            }
            CircuitState::Closed => {
                tracing::info!(
                    psp,
                    from = from.as_str(),
                    "alipay+ circuit closed: calls resume"
                );
            }
        }
        observe::circuit_transition(psp, to.as_str(), to.gauge());
        let probe_due = breaker
            .next_probe_at()
            .map(|at| (at, self.probe_interval_max * 2));
        self.board.set(psp, to, reason, probe_due);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A call the circuit let out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admitted {
    pub(crate) call: Call,
    /// The one call of the half-open state: its answer decides.
    pub(crate) probe: bool,
}

/// A job counted on the board as waiting for its circuit; uncounted when dropped.
struct Waiting<'a> {
    circuit: &'a Circuit,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.circuit.board.waiting(&self.circuit.psp, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CircuitState::{Closed, HalfOpen, Open};

    fn board(state: CircuitState, waiting: usize) -> Board {
        Board {
            state: Some(state),
            reason: String::new(),
            waiting,
            probe_due: None,
        }
    }

    #[test]
    fn intake_is_held_only_while_no_circuit_is_closed_and_each_will_move_alone() {
        let hold = |boards: &[Board]| hold_intake(boards.iter());
        assert!(!hold(&[]));
        assert!(!hold(&[board(Open, 3), board(Closed, 0)]));
        assert!(hold(&[board(Open, 1), board(HalfOpen, 0)]));
        assert!(hold(&[board(Open, 2), board(Open, 1)]));
        // Nobody waits on the second: new events must come in to probe it.
        assert!(!hold(&[board(Open, 2), board(Open, 0)]));
        assert!(!hold(&[board(Open, 0)]));
    }

    #[test]
    fn the_board_names_the_open_psps_and_holds_while_someone_waits() {
        let health = Arc::new(Health::default());
        let board = Circuits::new(Arc::clone(&health));
        let hold = board.subscribe();
        board.set("A", Closed, String::new(), None);
        board.set("B", Closed, String::new(), None);
        board.set("B", Open, "refused".into(), None);
        assert!(!*hold.borrow());
        assert_eq!(health.circuit().as_deref(), Some("psp B: refused"));
        board.set("A", Open, "down".into(), None);
        // Both open, but nobody waits to probe: new events are let in.
        assert!(!*hold.borrow());
        board.waiting("A", true);
        assert!(!*hold.borrow());
        board.waiting("B", true);
        assert!(*hold.borrow());
        board.waiting("B", false);
        assert!(!*hold.borrow());
        board.set("B", Closed, String::new(), None);
        board.set("A", Closed, String::new(), None);
        assert!(!*hold.borrow());
        assert_eq!(health.circuit(), None);
    }

    #[tokio::test]
    async fn a_cancelled_waiter_lets_the_intake_go() {
        let health = Arc::new(Health::default());
        let board = Circuits::new(health);
        let settings = CircuitBreakerSettings {
            probe_interval: Duration::from_secs(3600),
            probe_interval_max: Duration::from_secs(3600),
            ..CircuitBreakerSettings::default()
        };
        let circuit = Arc::new(Circuit::new(settings, 1, "A", Arc::clone(&board)));
        let hold = board.subscribe();
        let cancel = CancellationToken::new();
        let (call, _) = circuit.admitted(&cancel).await.expect("closed");
        circuit.record(ResultClass::Refused, call, false);
        assert!(!circuit.is_closed());
        assert!(!*hold.borrow(), "open, but nobody waits");
        let waiter = tokio::spawn({
            let (circuit, cancel) = (Arc::clone(&circuit), cancel.clone());
            async move { circuit.admitted(&cancel).await }
        });
        let mut watching = hold.clone();
        watching.wait_for(|held| *held).await.expect("board alive");
        cancel.cancel();
        assert!(waiter.await.expect("joins").is_none());
        assert!(!*hold.borrow(), "the waiter was cancelled: intake goes on");
    }
}
