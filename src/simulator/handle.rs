//! [`SimulatorHandle`]: a running simulator as tests and the demo drive it — its address and
//! stats, trusted keys and the answer key, refused clients, the gate that holds answers, scripted
//! outages, fault rules, and shutdown.
//!
//! It only changes the shared state the routes read; it never answers a call itself.

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::TrustedKey;
use super::faults::OutageMode;
use super::rules::SimulatorRules;
use super::state::{Shared, lock};
use super::stats::{Arrival, SimulatorStats};
use crate::keys::PrivateSigningKey;

/// A running simulator. Dropping it stops the server too (without waiting).
#[derive(Debug)]
pub struct SimulatorHandle {
    pub(crate) addr: SocketAddr,
    pub(super) shared: Arc<Shared>,
    pub(super) shutdown: CancellationToken,
    pub(super) task: Option<JoinHandle<std::io::Result<()>>>,
}

impl SimulatorHandle {
    /// `http://<addr>`, the `alipayplus.base_url` to point a client at.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn stats(&self) -> SimulatorStats {
        lock(&self.shared.stats).snapshot()
    }

    /// The arrivals recorded since the last call, oldest first, forgotten by the simulator: a
    /// long run that drains them often keeps its memory flat and loses none (compare
    /// [`SimulatorStats::arrivals_dropped`]).
    pub(crate) fn take_arrivals(&self) -> Vec<Arrival> {
        lock(&self.shared.stats).take_arrivals()
    }

    /// Trusts one more MPP public key (replacing a trusted key of the same name).
    pub fn trust(&self, key: TrustedKey) {
        let mut trusted = self
            .shared
            .trusted
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        trusted.retain(|known| known.name != key.name);
        trusted.push(key);
    }

    /// Signs answers with `key` and `key_version` from now on (Alipay+ rotating its key).
    pub fn set_answer_key(&self, key: PrivateSigningKey, key_version: u32) {
        *self
            .shared
            .answer_key
            .write()
            .unwrap_or_else(PoisonError::into_inner) = (Arc::new(key), key_version);
        lock(&self.shared.signatures).clear();
    }

    /// Answer `INVALID_CLIENT` to `client_id` from now on.
    pub fn refuse_client(&self, client_id: &str) {
        lock(&self.shared.refused).insert(client_id.to_owned());
    }

    /// Stop refusing `client_id`.
    pub fn accept_client(&self, client_id: &str) {
        lock(&self.shared.refused).remove(client_id);
    }

    /// Closes the gate: from now on every call waits before it is answered, until
    /// [`release`](Self::release) lets it through or [`open`](Self::open) opens the gate. Waiting
    /// calls count as open calls (and `held_calls`) in the stats.
    pub fn hold(&self) {
        let mut gate = lock(&self.shared.gate);
        if gate.is_none() {
            *gate = Some(Arc::new(Semaphore::new(0)));
        }
    }

    /// Lets `calls` more calls through the closed gate (waiting ones first, in arrival order;
    /// later arrivals use what is left). No effect while the gate is open.
    pub fn release(&self, calls: usize) {
        if let Some(gate) = lock(&self.shared.gate).as_ref() {
            gate.add_permits(calls);
        }
    }

    /// Opens the gate: every waiting call goes on, and later calls no longer wait.
    pub fn open(&self) {
        if let Some(gate) = lock(&self.shared.gate).take() {
            gate.close();
        }
    }

    /// Alipay+ is down for `duration`: every call fails as `mode` says, then service is back.
    pub fn outage(&self, duration: Duration, mode: OutageMode) {
        self.shared.start_outage(duration, mode);
    }

    /// Answer `INVALID_CLIENT` to `client_id` for `duration`, then accept it again.
    pub fn refuse_client_for(&self, client_id: &str, duration: Duration) {
        self.shared.refuse_for(client_id, duration);
    }

    /// Replaces the fault rules (and the latency, when the document sets one).
    pub fn set_rules(&self, rules: SimulatorRules) {
        self.shared.set_rules(rules);
    }

    /// Stops accepting connections, ends hanging answers, and waits for the server to finish.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await
                .context("simulator task failed")?
                .context("simulator server failed")?;
        }
        Ok(())
    }
}

impl Drop for SimulatorHandle {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
