//! What an Alipay+ client is built from (`ClientOptions`, plain values read from `[alipayplus]`
//! and `[alipayplus.clients.*]`) and why building one fails (`ClientBuildError`, each message
//! naming the setting at fault).

use std::path::PathBuf;
use std::time::Duration;

use super::classify::{ResultClass, ResultOverrides};
use super::credentials::KeyLoadError;
use crate::config::{AlipayPlusSettings, MppClientSettings};
use crate::keys::KeyError;

/// Largest response body read; Alipay+ answers are a few hundred bytes.
const DEFAULT_MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Everything the client needs besides keys, in plain types.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub(crate) base_url: String,
    pub allow_insecure_http: bool,
    pub(crate) client_id: String,
    pub(crate) key_version: u32,
    pub verify_response_signature: bool,
    pub(crate) connect_timeout: Duration,
    pub request_timeout: Duration,
    /// 0 = no client-side ceiling.
    pub max_requests_per_second: u32,
    pub(crate) result_overrides: ResultOverrides,
    pub(crate) max_response_bytes: usize,
    /// Extra CA certificates (PEM bundle) trusted besides the built-in roots.
    pub(crate) ca_bundle_file: Option<PathBuf>,
}

impl ClientOptions {
    /// The options of the `[alipayplus.clients.<pspId>]` identity: its own client id, key
    /// version, base URL and rate ceiling, everything else from `[alipayplus]`.
    pub(crate) fn for_client(settings: &AlipayPlusSettings, client: &MppClientSettings) -> Self {
        let mut options = Self::from_settings(settings);
        options.client_id = client.client_id.clone();
        options.key_version = client.key_version;
        if let Some(base_url) = &client.base_url {
            options.base_url = base_url.clone();
        }
        if let Some(rate) = client.max_requests_per_second {
            options.max_requests_per_second = rate;
        }
        options
    }

    pub fn from_settings(settings: &AlipayPlusSettings) -> Self {
        ClientOptions {
            base_url: settings.base_url.clone(),
            allow_insecure_http: settings.allow_insecure_http,
            client_id: settings.client_id.clone(),
            key_version: settings.key_version,
            verify_response_signature: settings.verify_response_signature,
            connect_timeout: settings.connect_timeout,
            request_timeout: settings.request_timeout,
            max_requests_per_second: settings.max_requests_per_second,
            result_overrides: settings
                .result_policy
                .iter()
                .map(|(code, policy)| (code.clone(), ResultClass::from(*policy)))
                .collect(),
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            ca_bundle_file: settings.ca_bundle_file.clone(),
        }
    }
}

/// Why a client could not be built. Messages name the setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("alipayplus.base_url: {0}")]
    BaseUrl(String),
    #[error("alipayplus.base_url: http:// is refused unless alipayplus.allow_insecure_http = true")]
    InsecureHttp,
    #[error("alipayplus.client_id: must be a non-empty, visible ASCII header value")]
    ClientId,
    #[error("alipayplus.private_key_file: is required (or alipayplus.private_key as PEM text)")]
    MissingPrivateKey,
    #[error(
        "alipayplus.alipayplus_public_key_file: is required while verify_response_signature is on"
    )]
    MissingPublicKey,
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A key named by a setting does not load (or does not pair with its public key).
    #[error(transparent)]
    KeyFile(#[from] KeyLoadError),
    #[error("invalid setting `alipayplus.ca_bundle_file`: {0}")]
    CaBundle(String),
    #[error("cannot build the http client: {0}")]
    Http(String),
}
