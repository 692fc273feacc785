//! The circuit breaker's shell: the [`Breaker`] behind a lock, a wake-up for the workers waiting
//! on it, and what an operator sees of it (one log line per transition, the
//! `regnotify_circuit_state` gauge and `regnotify_circuit_transitions_total`, `/readyz`). The
//! dispatcher watches its state to pause the partitions while the circuit is not closed.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::alipayplus::ResultClass;
use crate::config::CircuitBreakerSettings;
use crate::observe::{self, Health};
use crate::pipeline::breaker::{Admit, Breaker, CircuitState, Mark, Refusal, Signal, Transition};

#[derive(Debug)]
pub struct Circuit {
    breaker: Mutex<Breaker>,
    refusal_hold: Duration,
    /// Woken on every recorded answer and every transition.
    changed: Notify,
    state: watch::Sender<CircuitState>,
    health: Arc<Health>,
}

impl Circuit {
    pub fn new(
        settings: CircuitBreakerSettings,
        refused_streak_threshold: u32,
        health: Arc<Health>,
    ) -> Circuit {
        observe::circuit_state(CircuitState::Closed);
        Circuit {
            refusal_hold: settings.refusal_hold,
            breaker: Mutex::new(Breaker::new(
                settings,
                refused_streak_threshold,
                Instant::now(),
            )),
            changed: Notify::new(),
            state: watch::Sender::new(CircuitState::Closed),
            health,
        }
    }

    /// Follows the state (the dispatcher pauses the partitions while it is not closed).
    pub fn subscribe(&self) -> watch::Receiver<CircuitState> {
        self.state.subscribe()
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
        match to {
            CircuitState::Open => tracing::warn!(
                from = from.as_str(),
                %reason,
                "alipay+ circuit open: no new calls, partitions paused, retries held"
            ),
            CircuitState::HalfOpen => {
                tracing::info!(
                    from = from.as_str(),
                    "alipay+ circuit half-open: sending a probe"
                );
            }
            CircuitState::Closed => {
                tracing::info!(from = from.as_str(), "alipay+ circuit closed: calls resume");
            }
        }
        observe::circuit_transition(to);
        self.health
            .set_circuit((to != CircuitState::Closed).then_some(reason));
        self.state.send_replace(to);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
