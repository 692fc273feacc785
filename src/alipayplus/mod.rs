//! Everything about talking to Alipay+: mapping an event to the `notifyRegistrationStatus` body
//! ([`request`]), the RSA256 signature scheme ([`signature`]), what each answer means
//! ([`classify`]), the HTTP client that puts them together ([`client`]), what it is built from
//! ([`options`]), where it sends and whom it trusts ([`endpoint`]), each MPP's keys
//! ([`credentials`]) and their reloading while the service runs ([`rotation`]).
//!
//! This module owns one HTTP call at a time; it never retries, never touches Kafka and never logs
//! key material or signatures.

pub(crate) mod classify;
pub(crate) mod client;
pub(crate) mod credentials;
mod endpoint;
mod options;
pub(crate) mod request;
pub(crate) mod rotation;
pub mod signature;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

pub use classify::ResultClass;
pub use client::{AlipayPlusClient, AttemptError, NotifyAttempt};
pub(crate) use credentials::KeySources;
pub use options::{ClientBuildError, ClientOptions};
pub use request::NOTIFY_REGISTRATION_STATUS_PATH;
pub(crate) use rotation::KeyWatcher;
pub use signature::{SignatureCheck, SignedRequest, sign_request};

use crate::config::AlipayPlusSettings;
use crate::keys::PrivateSigningKey;

/// Every configured MPP's client: the top-level `[alipayplus]` identity and one per
/// `[alipayplus.clients.<pspId>]` table.
#[derive(Debug, Clone)]
pub struct Clients {
    pub default: Arc<AlipayPlusClient>,
    pub(crate) named: BTreeMap<String, Arc<AlipayPlusClient>>,
}

impl Clients {
    /// Builds every client the settings name, and a watcher over their key files.
    pub fn from_settings(settings: &AlipayPlusSettings) -> anyhow::Result<(Clients, KeyWatcher)> {
        let default = Arc::new(
            AlipayPlusClient::from_settings(settings)
                .context("the alipay+ client cannot be built from these settings")?,
        );
        Self::with_default(settings, default)
    }

    /// Builds the `[alipayplus.clients]` clients around a top-level client made elsewhere (the
    /// demo and tests hold its keys in memory; its key files, if the settings name any, are
    /// watched all the same).
    pub(crate) fn with_default(
        settings: &AlipayPlusSettings,
        default: Arc<AlipayPlusClient>,
    ) -> anyhow::Result<(Clients, KeyWatcher)> {
        let mut watcher = KeyWatcher::new(settings.alipayplus_public_key_overlap);
        watcher.watch(KeySources::top_level(settings), Arc::clone(default.keys()));
        let mut named = BTreeMap::new();
        for (psp_id, client_settings) in &settings.clients {
            let client = AlipayPlusClient::for_mpp(settings, psp_id, client_settings)
                .with_context(|| {
                    format!("the alipay+ client of [alipayplus.clients.{psp_id}] cannot be built")
                })?;
            watcher.watch(
                KeySources::for_client(settings, psp_id, client_settings),
                Arc::clone(client.keys()),
            );
            named.insert(psp_id.clone(), Arc::new(client));
        }
        Ok((Clients { default, named }, watcher))
    }
}

/// `regnotify sign`: signs `body` exactly as the client would and returns the signed content and
/// `Signature` header, so an operator can compare them with what Alipay+ rejected.
///
/// `request_time` defaults to now; when given it must be RFC 3339 with an explicit offset.
/// `path` defaults to the `notifyRegistrationStatus` path.
pub fn sign_command(
    private_key_file: &Path,
    client_id: &str,
    path: Option<&str>,
    request_time: Option<&str>,
    body: &[u8],
    key_version: u32,
) -> anyhow::Result<SignedRequest> {
    let key = PrivateSigningKey::from_file(private_key_file)?;
    let request_time = match request_time {
        Some(time) => {
            chrono::DateTime::parse_from_rfc3339(time).with_context(|| {
                format!("request time {time:?} is not RFC 3339 with an explicit offset")
            })?;
            time.to_owned()
        }
        None => signature::request_time_now(),
    };
    let path = path.unwrap_or(NOTIFY_REGISTRATION_STATUS_PATH);
    anyhow::ensure!(path.starts_with('/'), "path {path:?} must start with /");
    Ok(sign_request(
        &key,
        path,
        client_id,
        &request_time,
        body,
        key_version,
    )?)
}

/// What `check-config` reports of one MPP: never key material, only whether the keys load and pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MppCheck {
    /// `default` or the pspId of its table.
    pub psp: String,
    pub(crate) client_id: String,
    /// The key version requests would be signed with, when it could be read.
    pub(crate) key_version: Option<u32>,
    /// The private key: loaded (and paired with `mpp_public_key_file` when given), or why not.
    pub(crate) private_key: Result<&'static str, String>,
    /// Alipay+'s public key: loaded, not verified, or why not.
    pub(crate) alipayplus_public_key: Result<&'static str, String>,
}

impl MppCheck {
    pub fn is_ok(&self) -> bool {
        self.private_key.is_ok() && self.alipayplus_public_key.is_ok()
    }
}

impl std::fmt::Display for MppCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let version = self
            .key_version
            .map_or_else(|| "?".to_owned(), |v| v.to_string());
        let verdict = |result: &Result<&'static str, String>| match result {
            Ok(what) => (*what).to_owned(),
            Err(error) => format!("REFUSED: {error}"),
        };
        write!(
            f,
            "mpp {}: client_id {}, key_version {version}; private key {}; alipay+ public key {}",
            self.psp,
            self.client_id,
            verdict(&self.private_key),
            verdict(&self.alipayplus_public_key),
        )
    }
}

/// Loads every MPP's keys as `run` would, for `check-config`.
pub fn check_mpps(settings: &AlipayPlusSettings) -> Vec<MppCheck> {
    std::iter::once(KeySources::top_level(settings))
        .chain(
            settings
                .clients
                .iter()
                .map(|(psp, client)| KeySources::for_client(settings, psp, client)),
        )
        .map(|sources| {
            let signer = sources.load_signer();
            let paired = if sources.mpp_public_key_file.is_some() {
                "loads and pairs with mpp_public_key_file"
            } else {
                "loads (no mpp_public_key_file to pair it with)"
            };
            MppCheck {
                psp: sources.psp.clone(),
                client_id: sources.client_id.clone(),
                key_version: sources.key_version().ok(),
                private_key: signer.map(|_| paired).map_err(|e| e.to_string()),
                alipayplus_public_key: sources
                    .load_answer_key()
                    .map(|key| match key {
                        Some(_) => "loads",
                        None => "not used (verify_response_signature = false)",
                    })
                    .map_err(|e| e.to_string()),
            }
        })
        .collect()
}
