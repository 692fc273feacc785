//! [`Shared`]: the state every call, admin route and handle method shares (keys, clients, fault
//! state, counters, the gate, the shutdown token), and the small operations on it (which client is
//! accepted, which trusted key verified a request, scripted outages and refusals, waiting at the
//! gate).
//!
//! It never builds an answer or a route (`signing` and `routes` do).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

#[cfg(doc)]
use super::SimulatorHandle;
use super::TrustedKey;
use super::faults::{Behaviour, Outage, OutageMode};
use super::rules::{RuleCounters, SimulatorRules};
use super::stats::StatsRecorder;
use crate::alipayplus::signature::verify_signature;
use crate::keys::PrivateSigningKey;

#[derive(Debug)]
pub(super) struct Shared {
    /// Signs answers, with its `keyVersion`.
    pub(super) answer_key: RwLock<(Arc<PrivateSigningKey>, u32)>,
    /// Whether request signatures are checked (some key was trusted at start).
    pub(super) check_signatures: bool,
    pub(super) trusted: RwLock<Vec<TrustedKey>>,
    pub(super) client_ids: HashSet<String>,
    pub(super) refused: Mutex<HashSet<String>>,
    pub(super) behaviour: RwLock<Behaviour>,
    pub(super) counters: Mutex<RuleCounters>,
    pub(super) stats: Mutex<StatsRecorder>,
    /// Recent answer signatures by signed content. Answers are timed to the second, so within one
    /// second identical answers (most successes) share a signature: the simulator then costs the
    /// demo and benchmarks one RSA signature per distinct answer, not per call.
    pub(super) signatures: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    /// Closed gate: calls wait for a permit (see [`SimulatorHandle::hold`]).
    pub(super) gate: Mutex<Option<Arc<Semaphore>>>,
    /// A scripted outage (see [`SimulatorHandle::outage`]).
    pub(super) outage: Mutex<Option<Outage>>,
    /// Client ids refused until a time (see [`SimulatorHandle::refuse_client_for`]).
    pub(super) refused_until: Mutex<HashMap<String, std::time::Instant>>,
    pub(super) shutdown: CancellationToken,
}

impl Shared {
    pub(super) fn start_outage(&self, duration: Duration, mode: OutageMode) {
        tracing::info!(?duration, ?mode, "simulator outage starts");
        *lock(&self.outage) = Some(Outage {
            until: std::time::Instant::now() + duration,
            mode,
        });
    }

    pub(super) fn refuse_for(&self, client_id: &str, duration: Duration) {
        tracing::info!(client_id, ?duration, "simulator refuses client for a while");
        lock(&self.refused_until)
            .insert(client_id.to_owned(), std::time::Instant::now() + duration);
    }

    pub(super) fn set_rules(&self, rules: SimulatorRules) {
        let mut behaviour = self
            .behaviour
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(latency) = rules.latency {
            behaviour.latency = latency;
        }
        behaviour.rules = rules.rules;
    }

    pub(super) fn accepts(&self, client_id: &str) -> bool {
        let refused_for_now = lock(&self.refused_until)
            .get(client_id)
            .is_some_and(|until| std::time::Instant::now() < *until);
        (self.client_ids.is_empty() || self.client_ids.contains(client_id))
            && !lock(&self.refused).contains(client_id)
            && !refused_for_now
    }

    /// How the current call fails, while a scripted outage lasts.
    pub(super) fn outage_now(&self) -> Option<OutageMode> {
        let mut outage = lock(&self.outage);
        match *outage {
            Some(Outage { until, mode }) if std::time::Instant::now() < until => Some(match mode {
                OutageMode::Mixed if rand::random::<bool>() => OutageMode::Drop,
                OutageMode::Mixed => OutageMode::Unavailable,
                other => other,
            }),
            Some(_) => {
                *outage = None;
                None
            }
            None => None,
        }
    }

    /// The name of the trusted key of `client_id` that verifies the request, if any.
    pub(super) fn signed_by(
        &self,
        path: &str,
        client_id: &str,
        request_time: &str,
        body: &[u8],
        signature: Option<&str>,
    ) -> Option<String> {
        let trusted = self.trusted.read().unwrap_or_else(PoisonError::into_inner);
        trusted
            .iter()
            .filter(|known| known.client_id.as_deref().is_none_or(|id| id == client_id))
            .find(|known| {
                verify_signature(&known.key, path, client_id, request_time, body, signature)
                    == crate::alipayplus::SignatureCheck::Verified
            })
            .map(|known| known.name.clone())
    }

    pub(super) fn record(&self, label: &str) {
        lock(&self.stats).answer(label);
    }

    /// Waits at a closed gate until let through; false when the simulator shuts down first.
    pub(super) async fn pass_gate(&self) -> bool {
        let Some(gate) = lock(&self.gate).clone() else {
            return true;
        };
        lock(&self.stats).held(true);
        let passed = tokio::select! {
            permit = gate.acquire() => {
                // A closed semaphore means the gate was opened.
                if let Ok(permit) = permit {
                    permit.forget();
                }
                true
            }
            () = self.shutdown.cancelled() => false,
        };
        lock(&self.stats).held(false);
        passed
    }

    /// Sleeps unless the simulator shuts down first; false when it did.
    pub(super) async fn sleep(&self, duration: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(duration) => true,
            () = self.shutdown.cancelled() => false,
        }
    }
}

/// Counters and sets stay consistent even if a holder panicked, so poisoning is ignored.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
