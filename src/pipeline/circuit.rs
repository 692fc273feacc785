//! The circuit breakers' shell: one [`Circuit`] per MPP (a [`Breaker`] behind a lock and a wake-up
//! for the workers waiting on it), and [`Circuits`], what an operator and the dispatcher see of
//! them together (one log line per transition, the `regnotify_circuit_state` gauge and
//! `regnotify_circuit_transitions_total` by `psp`, `/readyz`).
//!
//! One MPP's outage or refusal opens only its own circuit: its events wait, the others' go on.
//! The dispatcher pauses every partition only while no MPP's circuit is closed, since a partition
//! mixes MPPs; while some are closed, the waiting events of the open ones are bounded by the
//! partition windows and the in-flight limit like any other slow work.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::alipayplus::ResultClass;
use crate::config::CircuitBreakerSettings;
use crate::observe::{self, Health};
use crate::pipeline::breaker::{Admit, Breaker, CircuitState, Mark, Refusal, Signal, Transition};

/// Every MPP's circuit state, and the state they make together for the dispatcher.
#[derive(Debug)]
pub struct Circuits {
    /// Per psp label: the state and why it is not closed.
    states: Mutex<BTreeMap<String, (CircuitState, String)>>,
    combined: watch::Sender<CircuitState>,
    health: Arc<Health>,
}

impl Circuits {
    pub fn new(health: Arc<Health>) -> Arc<Circuits> {
        Arc::new(Circuits {
            states: Mutex::new(BTreeMap::new()),
            combined: watch::Sender::new(CircuitState::Closed),
            health,
        })
    }

    /// Follows the combined state: closed while any MPP's circuit is closed, open when all are
    /// open (the dispatcher then pauses the partitions), half-open when none is closed and some
    /// probe.
    pub fn subscribe(&self) -> watch::Receiver<CircuitState> {
        self.combined.subscribe()
    }

    fn set(&self, psp: &str, state: CircuitState, reason: String) {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        states.insert(psp.to_owned(), (state, reason));
        let combined = combine(states.values().map(|(state, _)| *state));
        let open: Vec<String> = states
            .iter()
            .filter(|(_, (state, _))| *state != CircuitState::Closed)
            .map(|(psp, (_, reason))| format!("psp {psp}: {reason}"))
            .collect();
        drop(states);
        self.health
            .set_circuit((!open.is_empty()).then(|| open.join("; ")));
        self.combined.send_if_modified(|now| {
            let changed = *now != combined;
            *now = combined;
            changed
        });
    }
}

/// The dispatcher's view of several circuits: any closed one keeps intake going.
fn combine(states: impl Iterator<Item = CircuitState>) -> CircuitState {
    let mut combined = None;
    for state in states {
        combined = Some(match (combined, state) {
            (_, CircuitState::Closed) | (Some(CircuitState::Closed), _) => CircuitState::Closed,
            (_, CircuitState::HalfOpen) | (Some(CircuitState::HalfOpen), _) => {
                CircuitState::HalfOpen
            }
            _ => CircuitState::Open,
        });
    }
    combined.unwrap_or(CircuitState::Closed)
}

/// One MPP's circuit breaker.
#[derive(Debug)]
pub struct Circuit {
    psp: String,
    breaker: Mutex<Breaker>,
    refusal_hold: Duration,
    /// Woken on every recorded answer and every transition.
    changed: Notify,
    board: Arc<Circuits>,
}

impl Circuit {
    /// The circuit of the MPP labelled `psp`, reporting to `board`.
    pub fn new(
        settings: CircuitBreakerSettings,
        refused_streak_threshold: u32,
        psp: &str,
        board: Arc<Circuits>,
    ) -> Circuit {
        observe::circuit_state(psp, CircuitState::Closed);
        board.set(psp, CircuitState::Closed, String::new());
        Circuit {
            psp: psp.to_owned(),
            refusal_hold: settings.refusal_hold,
            breaker: Mutex::new(Breaker::new(
                settings,
                refused_streak_threshold,
                Instant::now(),
            )),
            changed: Notify::new(),
            board,
        }
    }

    pub fn enabled(&self) -> bool {
        self.lock().enabled()
    }

    pub fn is_closed(&self) -> bool {
        self.lock().state() == CircuitState::Closed
    }

    /// Waits until a call may go out. Returns whether it is the probe, and how long it waited;
    /// `None` when `cancel` fired first.
    pub async fn admitted(&self, cancel: &CancellationToken) -> Option<(bool, Duration)> {
        let started = Instant::now();
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (admit, transition) = self.lock().admit(Instant::now());
            self.publish(transition);
            let wait = match admit {
                Admit::Call => return Some((false, started.elapsed())),
                Admit::Probe => return Some((true, started.elapsed())),
                Admit::Wait(wait) => wait,
            };
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => return None,
            }
        }
    }

    /// Records an answer; returns where the breaker stood right after it, for a held refusal.
    pub fn record(&self, class: ResultClass, probe: bool) -> Mark {
        let signal = match class {
            ResultClass::Success | ResultClass::Rejected | ResultClass::Throttled => {
                Signal::Healthy
            }
            ResultClass::Refused => Signal::Refused,
            ResultClass::Unknown => Signal::Unknown,
        };
        let (transition, mark) = {
            let mut breaker = self.lock();
            let transition = breaker.record(Instant::now(), signal, probe);
            (transition, breaker.mark())
        };
        self.publish(transition);
        self.changed.notify_waiters();
        mark
    }

    /// The probe's job was cancelled before its answer.
    pub fn probe_abandoned(&self) {
        let transition = self.lock().probe_abandoned(Instant::now());
        self.publish(transition);
        self.changed.notify_waiters();
    }

    /// Waits, up to `refusal_hold`, for the answers that tell whether a refusal recorded at
    /// `mark` was about the event or about us. Returns the verdict and how long it waited;
    /// `None` when `cancel` fired first.
    pub async fn refusal(
        &self,
        mark: Mark,
        cancel: &CancellationToken,
    ) -> Option<(Refusal, Duration)> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.refusal_hold;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let verdict = self.lock().refusal(mark);
            if verdict != Refusal::Undecided {
                return Some((verdict, started.elapsed()));
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Some((Refusal::Undecided, started.elapsed()));
                }
                () = cancel.cancelled() => return None,
            }
        }
    }

    fn publish(&self, transition: Option<Transition>) {
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
        observe::circuit_transition(psp, to);
        self.board.set(psp, to, reason);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CircuitState::{Closed, HalfOpen, Open};

    #[test]
    fn intake_stops_only_when_no_circuit_is_closed() {
        assert_eq!(combine([].into_iter()), Closed);
        assert_eq!(combine([Open, Closed].into_iter()), Closed);
        assert_eq!(combine([Closed, Open, HalfOpen].into_iter()), Closed);
        assert_eq!(combine([Open, HalfOpen].into_iter()), HalfOpen);
        assert_eq!(combine([Open, Open].into_iter()), Open);
    }

    #[test]
    fn the_board_names_the_open_psps() {
        let health = Arc::new(Health::default());
        let board = Circuits::new(Arc::clone(&health));
        let state = board.subscribe();
        board.set("A", Closed, String::new());
        board.set("B", Closed, String::new());
        board.set("B", Open, "refused".into());
        assert_eq!(*state.borrow(), Closed);
        assert_eq!(health.circuit().as_deref(), Some("psp B: refused"));
        board.set("A", Open, "down".into());
        assert_eq!(*state.borrow(), Open);
        board.set("B", Closed, String::new());
        board.set("A", Closed, String::new());
        assert_eq!(*state.borrow(), Closed);
        assert_eq!(health.circuit(), None);
    }
}
