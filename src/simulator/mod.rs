//! An Alipay+ stand-in over HTTP for tests, integration environments and the demo: it serves
//! `POST /aps/api/v1/merchants/notifyRegistrationStatus`, verifies request signatures with the
//! MPP's public key, checks bodies strictly against SPEC 2, signs its answers with its own key,
//! and injects faults from [`rules`].
//!
//! Other routes: `GET /stats` (JSON [`SimulatorStats`]), `POST /admin/clients/{id}/refuse` and
//! `…/accept` (answer `INVALID_CLIENT` to a client id, or stop doing so), `PUT /admin/rules`
//! (replace the fault rules with a TOML rules document).
//!
//! Several MPPs can be trusted at once ([`TrustedKey`], per client id), and keys can be added,
//! withdrawn and the answer key replaced while it runs, to rehearse key rotations; each arrival
//! records which trusted key verified it and the `keyVersion` it carried.
//!
//! Tests can also hold answers at a gate ([`SimulatorHandle::hold`]) and let them through one by
//! one ([`SimulatorHandle::release`]), to stop the client's work at a known point.
//!
//! It is a test double, not a model of Alipay+'s internals: it keeps no state about
//! registrations beyond counters, and never talks to anything else.
//!
//! This file holds the configuration ([`SimulatorConfig`], [`TrustedKey`]) and [`Simulator::start`],
//! which wires the parts: the state every call shares (`state`), the scripted outages and
//! latency (`faults`), the routes and the long request handler (`routes`), answers and their
//! signatures (`signing`), the [`SimulatorHandle`] tests drive it with (`handle`), the fault
//! rules (`rules`), the counts (`stats`) and the strict body check (`validate`); `paired` starts
//! it together with the MPP's keys and client, for the demo and the tests.

mod faults;
mod handle;
mod paired;
mod routes;
pub mod rules;
mod signing;
mod state;
pub(crate) mod stats;
pub(crate) mod validate;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use tokio_util::sync::CancellationToken;

pub use faults::OutageMode;
pub use handle::SimulatorHandle;
pub use paired::{PairedSimulator, paired_client};
pub use rules::{Fault, FaultRule, SimulatorRules};
pub(crate) use stats::Arrival;
pub use stats::SimulatorStats;

use crate::alipayplus::NOTIFY_REGISTRATION_STATUS_PATH;
use crate::keys::{PrivateSigningKey, PublicVerifyingKey};
use faults::Behaviour;
use routes::{
    accept_route, no_interface, notify, outage_route, refuse_route, rules_route, stats_route,
};
use rules::RuleCounters;
use state::Shared;
use stats::StatsRecorder;

/// Largest request body accepted (Alipay+ requests are well under 1 KiB).
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Everything a simulator needs; the CLI fills it from flags, tests build it directly.
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Where to listen; port 0 picks a free port (default `127.0.0.1:0`).
    pub listen: SocketAddr,
    /// Signs every answer, like Alipay+'s own key.
    pub(crate) private_key: PrivateSigningKey,
    /// Verifies request signatures of any client id; with no trusted key at all (this or
    /// `trusted_keys`) any signature is accepted (and a log line says so).
    pub mpp_public_key: Option<PublicVerifyingKey>,
    /// More MPP public keys, each for one client id or any: a request verifies when one of the
    /// keys of its client id does.
    pub trusted_keys: Vec<TrustedKey>,
    /// `keyVersion` of response signatures.
    pub key_version: u32,
    /// Client ids accepted; empty accepts any.
    pub client_ids: Vec<String>,
    /// Client ids answered `INVALID_CLIENT` from the start (toggle at run time via the admin
    /// routes or [`SimulatorHandle::accept_client`]).
    pub refused_client_ids: Vec<String>,
    /// Added to every answer.
    pub latency: Duration,
    pub rules: Vec<FaultRule>,
    /// Bound on the arrival list of [`SimulatorStats`].
    pub(crate) max_arrivals: usize,
}

impl SimulatorConfig {
    /// Defaults around a signing key: 127.0.0.1:0, no request verification, no faults.
    pub fn new(private_key: PrivateSigningKey) -> Self {
        SimulatorConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            private_key,
            mpp_public_key: None,
            trusted_keys: Vec::new(),
            key_version: 1,
            client_ids: Vec::new(),
            refused_client_ids: Vec::new(),
            latency: Duration::ZERO,
            rules: Vec::new(),
            max_arrivals: 100_000,
        }
    }

    /// Loads the keys and (optionally) a rules file, for `regnotify simulator`. A `latency` in
    /// the rules file replaces `self.latency` only if set there.
    pub fn from_files(
        private_key_file: &Path,
        mpp_public_key_file: Option<&Path>,
        rules_file: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let private_key =
            PrivateSigningKey::from_file(private_key_file).context("simulator private key")?;
        let mut config = SimulatorConfig::new(private_key);
        if let Some(path) = mpp_public_key_file {
            config.mpp_public_key =
                Some(PublicVerifyingKey::from_file(path).context("simulator mpp public key")?);
        }
        if let Some(path) = rules_file {
            config.apply_rules(SimulatorRules::load(path)?);
        }
        Ok(config)
    }

    pub fn apply_rules(&mut self, rules: SimulatorRules) {
        if let Some(latency) = rules.latency {
            self.latency = latency;
        }
        self.rules = rules.rules;
    }
}

/// An MPP public key the simulator trusts.
#[derive(Debug, Clone)]
pub struct TrustedKey {
    /// Recorded in [`Arrival::signed_by`] for the requests it verifies.
    pub name: String,
    /// The client id it signs for; `None`: any.
    pub client_id: Option<String>,
    pub key: PublicVerifyingKey,
}

/// Starts simulators.
#[derive(Debug)]
pub struct Simulator;

impl Simulator {
    /// Binds and starts serving in a background task; returns once the port is bound.
    pub async fn start(config: SimulatorConfig) -> anyhow::Result<SimulatorHandle> {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("simulator cannot listen on {}", config.listen))?;
        let addr = listener
            .local_addr()
            .context("simulator listener address")?;
        let mut trusted = config.trusted_keys;
        if let Some(key) = config.mpp_public_key {
            trusted.insert(
                0,
                TrustedKey {
                    name: "mpp".into(),
                    client_id: None,
                    key,
                },
            );
        }
        if trusted.is_empty() {
            tracing::warn!(%addr, "simulator accepts requests without checking their signature");
        }
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            signatures: Mutex::default(),
            answer_key: RwLock::new((Arc::new(config.private_key), config.key_version)),
            check_signatures: !trusted.is_empty(),
            trusted: RwLock::new(trusted),
            client_ids: config.client_ids.into_iter().collect(),
            refused: Mutex::new(config.refused_client_ids.into_iter().collect()),
            behaviour: RwLock::new(Behaviour {
                latency: config.latency,
                rules: config.rules,
            }),
            counters: Mutex::new(RuleCounters::default()),
            stats: Mutex::new(StatsRecorder::new(config.max_arrivals)),
            gate: Mutex::new(None),
            outage: Mutex::new(None),
            refused_until: Mutex::new(HashMap::new()),
            shutdown: shutdown.clone(),
        });
        let app = Router::new()
            .route(NOTIFY_REGISTRATION_STATUS_PATH, post(notify))
            .route("/stats", get(stats_route))
            .route("/admin/clients/{id}/refuse", post(refuse_route))
            .route("/admin/clients/{id}/accept", post(accept_route))
            .route("/admin/rules", put(rules_route))
            .route("/admin/outage", post(outage_route))
            .fallback(no_interface)
            .layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES))
            .with_state(Arc::clone(&shared));
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await
        });
        tracing::info!(%addr, "alipay+ simulator listening");
        Ok(SimulatorHandle {
            addr,
            shared,
            shutdown,
            task: Some(task),
        })
    }
}
