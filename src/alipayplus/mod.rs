//! Everything about talking to Alipay+: mapping an event to the `notifyRegistrationStatus` body
//! ([`request`]), the RSA256 signature scheme ([`signature`]), what each answer means
//! ([`classify`]), the HTTP client that puts them together ([`client`]), each MPP's keys
//! ([`credentials`]) and their reloading while the service runs ([`rotation`]).
//!
//! This module owns one HTTP call at a time; it never retries, never touches Kafka and never logs
//! key material or signatures.

pub mod classify;
pub mod client;
pub mod credentials;
pub mod request;
pub mod rotation;
pub mod signature;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;

pub use classify::{ApiResult, ResultClass, ResultOverrides, classify};
pub use client::{AlipayPlusClient, AttemptError, ClientBuildError, ClientOptions, NotifyAttempt};
pub use credentials::{ClientKeys, KeyLoadError, KeySources};
pub use rotation::KeyWatcher;
pub use request::{NOTIFY_REGISTRATION_STATUS_PATH, notify_request_body};
pub use signature::{SignatureCheck, SignedRequest, sign_request};

use crate::config::AlipayPlusSettings;
use crate::keys::PrivateSigningKey;

/// Every configured MPP's client: the top-level `[alipayplus]` identity and one per
/// `[alipayplus.clients.<pspId>]` table.
#[derive(Debug, Clone)]
pub struct Clients {
    pub default: Arc<AlipayPlusClient>,
    pub named: BTreeMap<String, Arc<AlipayPlusClient>>,
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
    pub fn with_default(
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
