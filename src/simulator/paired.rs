//! The simulator and the MPP it answers, set up together: both key pairs, the simulator started
//! with the MPP's public key and client id, and the signing client that trusts the simulator's
//! key. The demo and the tests' harness run the real pipeline against it, so they set up keys,
//! simulator and client in one way; `regnotify run` never does (it loads its keys from files).
//!
//! Sets up only: never drives the simulator's faults, never reads its counts.

use std::sync::Arc;

use super::{Simulator, SimulatorConfig, SimulatorHandle};
use crate::alipayplus::{AlipayPlusClient, ClientBuildError, ClientOptions};
use crate::config::AlipayPlusSettings;
use crate::keys::PrivateSigningKey;

/// A running simulator and the two keys of the exchange.
#[derive(Debug)]
pub struct PairedSimulator {
    pub simulator: SimulatorHandle,
    /// What the MPP signs its requests with; the simulator holds its public half.
    pub mpp_key: PrivateSigningKey,
    /// What the simulator signs its answers with; the client holds its public half.
    pub alipayplus_key: PrivateSigningKey,
}

impl PairedSimulator {
    /// Starts the simulator for `client_id`, trusting `mpp_key`'s public half and signing with
    /// `alipayplus_key`; `configure` sets the rest (rules, latency) before it starts.
    pub async fn start(
        mpp_key: PrivateSigningKey,
        alipayplus_key: PrivateSigningKey,
        client_id: &str,
        configure: impl FnOnce(&mut SimulatorConfig),
    ) -> anyhow::Result<PairedSimulator> {
        let mut config = SimulatorConfig::new(alipayplus_key.clone());
        config.mpp_public_key = Some(mpp_key.public_key());
        config.client_ids = vec![client_id.to_owned()];
        configure(&mut config);
        let simulator = Simulator::start(config).await?;
        Ok(PairedSimulator {
            simulator,
            mpp_key,
            alipayplus_key,
        })
    }

    /// The signing client the service uses against this simulator, as `alipayplus` configures
    /// it (base URL, client id, timeouts).
    pub fn client(
        &self,
        alipayplus: &AlipayPlusSettings,
    ) -> Result<Arc<AlipayPlusClient>, ClientBuildError> {
        paired_client(alipayplus, &self.mpp_key, &self.alipayplus_key)
    }
}

/// [`PairedSimulator::client`] from the two keys, for a caller that keeps them apart from the
/// simulator.
pub fn paired_client(
    alipayplus: &AlipayPlusSettings,
    mpp_key: &PrivateSigningKey,
    alipayplus_key: &PrivateSigningKey,
) -> Result<Arc<AlipayPlusClient>, ClientBuildError> {
    AlipayPlusClient::new(
        ClientOptions::from_settings(alipayplus),
        mpp_key.clone(),
        Some(alipayplus_key.public_key()),
    )
    .map(Arc::new)
}
