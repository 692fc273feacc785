//! `[alipayplus]`, `[alipayplus.clients.<pspId>]` and `[alipayplus.circuit_breaker]`: the Alipay+
//! gateway, each MPP's identity and keys, result-code overrides and the circuit breaker.
//!
//! Holds the tables, their defaults, their checks and [`AlipayPlusSettings::require_credentials`].
//! Key files are only named here, never read: the `keys` module reads them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::redact::Secret;
use super::serde_helpers::{lenient_opt_string, lenient_string};
use super::validate::{check_http_url, non_empty, positive};

/// What one Alipay+ result code is treated as, overriding SPEC section 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResultPolicy {
    Success,
    Rejected,
    Retry,
    Refused,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlipayPlusSettings {
    #[serde(deserialize_with = "lenient_string")]
    pub base_url: String,
    /// `http://` base URLs are refused unless this is set (simulators only).
    pub allow_insecure_http: bool,
    #[serde(deserialize_with = "lenient_string")]
    pub client_id: String,
    pub key_version: u32,
    /// The MPP's RSA private key, PEM (PKCS#8 or PKCS#1).
    pub private_key_file: Option<PathBuf>,
    /// The same key as PEM text, for environments that inject secrets as variables
    /// (`REGNOTIFY_ALIPAYPLUS__PRIVATE_KEY`); exclusive with `private_key_file`.
    pub private_key: Option<Secret>,
    /// Alipay+'s public key (PEM), to verify response signatures.
    pub alipayplus_public_key_file: Option<PathBuf>,
    /// PEM bundle of CA certificates trusted for the Alipay+ gateway, in addition to the built-in
    /// web roots (a corporate TLS proxy, a private sandbox CA); absent = the built-in roots only.
    pub ca_bundle_file: Option<PathBuf>,
    pub verify_response_signature: bool,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Ceiling on notify calls per second for the whole consumer group, each member taking a
    /// share in proportion to the input partitions it owns; 0 = none.
    pub max_requests_per_second: u32,
    /// Per-result-code overrides of SPEC section 4.
    pub result_policy: BTreeMap<String, ResultPolicy>,
    /// When Alipay+ as a whole fails or refuses us: pause and probe (see the README).
    pub circuit_breaker: CircuitBreakerSettings,
    /// A file holding the `keyVersion` of the private key (one number); read with the key at
    /// start and at every reload, and then preferred to `key_version`.
    pub key_version_file: Option<PathBuf>,
    /// The MPP's public key (PEM), when given: a private key that does not pair with it is
    /// refused, at start and at every reload.
    pub mpp_public_key_file: Option<PathBuf>,
    /// How often key files are checked for changes (SIGHUP reloads at once).
    #[serde(with = "humantime_serde")]
    pub key_reload_interval: Duration,
    /// After Alipay+'s public key file changes, answers signed with the previous key still
    /// verify for this long.
    #[serde(with = "humantime_serde")]
    pub alipayplus_public_key_overlap: Duration,
    /// One table per MPP (`[alipayplus.clients.<pspId>]`): the credentials for events naming
    /// that `pspId`. The settings above serve events without one.
    pub clients: BTreeMap<String, MppClientSettings>,
}

/// `[alipayplus.clients.<pspId>]`: one MPP's identity. What it leaves out (timeouts, result
/// policy, circuit breaker settings, signature verification) is taken from `[alipayplus]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MppClientSettings {
    #[serde(deserialize_with = "lenient_string")]
    pub client_id: String,
    pub key_version: u32,
    pub key_version_file: Option<PathBuf>,
    pub private_key_file: Option<PathBuf>,
    pub private_key: Option<Secret>,
    pub mpp_public_key_file: Option<PathBuf>,
    pub alipayplus_public_key_file: Option<PathBuf>,
    /// Absent: `alipayplus.base_url`.
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub base_url: Option<String>,
    /// Absent: `alipayplus.max_requests_per_second` (each MPP has its own ceiling).
    pub max_requests_per_second: Option<u32>,
}

impl Default for MppClientSettings {
    fn default() -> Self {
        MppClientSettings {
            client_id: String::new(),
            key_version: 1,
            key_version_file: None,
            private_key_file: None,
            private_key: None,
            mpp_public_key_file: None,
            alipayplus_public_key_file: None,
            base_url: None,
            max_requests_per_second: None,
        }
    }
}

/// The longest `pspId` a `[alipayplus.clients]` table may be named by.
pub(crate) const MAX_PSP_ID_LEN: usize = 64;
/// The `psp` metric label of the top-level `[alipayplus]` identity.
pub(crate) const DEFAULT_PSP_LABEL: &str = "default";

/// `[alipayplus.circuit_breaker]`. The refused streak that opens the circuit is
/// `processing.refused_streak_threshold`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreakerSettings {
    /// `false`: every event spends its own retry budget and a refusal is dead-lettered at once.
    pub enabled: bool,
    /// The sliding window over which the share of unknown answers is measured: the answers of
    /// the last `window`, at most the last `window_calls` of them.
    #[serde(with = "humantime_serde")]
    pub(crate) window: Duration,
    pub window_calls: u32,
    /// Calls the window must hold before its share can open the circuit.
    pub min_calls: u32,
    /// Share of unknown answers (timeouts, connection errors, 5xx, `U`) in the window that
    /// opens the circuit, in (0, 1].
    pub(crate) failure_ratio: f64,
    /// The first wait before a probe; it doubles after each failed probe up to `probe_interval_max`.
    #[serde(with = "humantime_serde")]
    pub(crate) probe_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub probe_interval_max: Duration,
    /// How long a refused event waits for other answers to tell whether the refusal was about it
    /// (others succeed) or about us (others are refused too) before it asks again; it does not
    /// wait while no other call of its MPP is out.
    #[serde(with = "humantime_serde")]
    pub refusal_hold: Duration,
}

impl Default for CircuitBreakerSettings {
    fn default() -> Self {
        CircuitBreakerSettings {
            enabled: true,
            window: Duration::from_secs(30),
            window_calls: 50,
            min_calls: 20,
            failure_ratio: 0.5,
            probe_interval: Duration::from_secs(1),
            probe_interval_max: Duration::from_secs(60),
            refusal_hold: Duration::from_secs(2),
        }
    }
}

impl CircuitBreakerSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        positive("alipayplus.circuit_breaker.window", self.window)?;
        positive(
            "alipayplus.circuit_breaker.probe_interval",
            self.probe_interval,
        )?;
        positive(
            "alipayplus.circuit_breaker.probe_interval_max",
            self.probe_interval_max,
        )?;
        positive("alipayplus.circuit_breaker.refusal_hold", self.refusal_hold)?;
        if self.probe_interval_max < self.probe_interval {
            return Err(ConfigError::invalid(
                "alipayplus.circuit_breaker.probe_interval_max",
                "must be at least alipayplus.circuit_breaker.probe_interval",
            ));
        }
        if self.min_calls == 0 || self.min_calls > self.window_calls {
            return Err(ConfigError::invalid(
                "alipayplus.circuit_breaker.min_calls",
                "must be at least 1 and at most alipayplus.circuit_breaker.window_calls",
            ));
        }
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return Err(ConfigError::invalid(
                "alipayplus.circuit_breaker.failure_ratio",
                "must be above 0 and at most 1 (a share such as 0.5)",
            ));
        }
        Ok(())
    }
}

impl Default for AlipayPlusSettings {
    fn default() -> Self {
        AlipayPlusSettings {
            base_url: "https://open-sea-global.alipayplus.com".into(),
            allow_insecure_http: false,
            client_id: String::new(),
            key_version: 1,
            private_key_file: None,
            private_key: None,
            alipayplus_public_key_file: None,
            ca_bundle_file: None,
            verify_response_signature: true,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            max_requests_per_second: 0,
            result_policy: BTreeMap::new(),
            circuit_breaker: CircuitBreakerSettings::default(),
            key_version_file: None,
            mpp_public_key_file: None,
            key_reload_interval: Duration::from_secs(5),
            alipayplus_public_key_overlap: Duration::from_secs(24 * 3600),
            clients: BTreeMap::new(),
        }
    }
}

impl AlipayPlusSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_http_url(
            "alipayplus.base_url",
            &self.base_url,
            self.allow_insecure_http,
        )?;
        if self.private_key.is_some() && self.private_key_file.is_some() {
            return Err(ConfigError::invalid(
                "alipayplus.private_key",
                "set either alipayplus.private_key or alipayplus.private_key_file, not both",
            ));
        }
        self.circuit_breaker.validate()?;
        positive("alipayplus.connect_timeout", self.connect_timeout)?;
        positive("alipayplus.request_timeout", self.request_timeout)?;
        if self.client_id.len() > 128 || self.client_id.chars().any(|c| c.is_control()) {
            return Err(ConfigError::invalid(
                "alipayplus.client_id",
                "must be at most 128 characters without control characters",
            ));
        }
        positive("alipayplus.key_reload_interval", self.key_reload_interval)?;
        positive(
            "alipayplus.alipayplus_public_key_overlap",
            self.alipayplus_public_key_overlap,
        )?;
        for (psp_id, client) in &self.clients {
            client.validate(psp_id, self.allow_insecure_http)?;
        }
        for code in self.result_policy.keys() {
            if code.is_empty()
                || !code
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
            {
                return Err(ConfigError::invalid(
                    format!("alipayplus.result_policy.{code}"),
                    "result codes are upper-case words such as PROCESS_FAIL",
                ));
            }
        }
        Ok(())
    }

    /// Checks that everything needed to call Alipay+ is configured (for `run`, `check-config`).
    pub fn require_credentials(&self) -> Result<(), ConfigError> {
        non_empty("alipayplus.client_id", &self.client_id)?;
        if self.private_key.is_none() && self.private_key_file.is_none() {
            return Err(ConfigError::invalid(
                "alipayplus.private_key_file",
                "is required (or alipayplus.private_key as PEM text)",
            ));
        }
        if self.verify_response_signature && self.alipayplus_public_key_file.is_none() {
            return Err(ConfigError::invalid(
                "alipayplus.alipayplus_public_key_file",
                "is required while alipayplus.verify_response_signature is true",
            ));
        }
        for (psp_id, client) in &self.clients {
            let key = |name: &str| format!("alipayplus.clients.{psp_id}.{name}");
            if client.private_key.is_none() && client.private_key_file.is_none() {
                return Err(ConfigError::invalid(
                    key("private_key_file"),
                    format!("is required (or {} as PEM text)", key("private_key")),
                ));
            }
            if self.verify_response_signature && client.alipayplus_public_key_file.is_none() {
                return Err(ConfigError::invalid(
                    key("alipayplus_public_key_file"),
                    "is required while alipayplus.verify_response_signature is true",
                ));
            }
        }
        Ok(())
    }
}

impl MppClientSettings {
    fn validate(&self, psp_id: &str, allow_insecure_http: bool) -> Result<(), ConfigError> {
        let key = |name: &str| format!("alipayplus.clients.{psp_id}.{name}");
        if psp_id.is_empty()
            || psp_id.len() > MAX_PSP_ID_LEN
            || !psp_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(ConfigError::invalid(
                format!("alipayplus.clients.{psp_id}"),
                format!(
                    "a pspId names the table: 1-{MAX_PSP_ID_LEN} of a-z A-Z 0-9 _ - . (quote it in TOML)"
                ),
            ));
        }
        if psp_id == DEFAULT_PSP_LABEL {
            return Err(ConfigError::invalid(
                format!("alipayplus.clients.{psp_id}"),
                "`default` is the metric label of the top-level [alipayplus] identity; events \
                 without a pspId use that one",
            ));
        }
        non_empty(&key("client_id"), &self.client_id)?;
        if self.client_id.len() > 128 || self.client_id.chars().any(|c| c.is_control()) {
            return Err(ConfigError::invalid(
                key("client_id"),
                "must be at most 128 characters without control characters",
            ));
        }
        if self.private_key.is_some() && self.private_key_file.is_some() {
            return Err(ConfigError::invalid(
                key("private_key"),
                format!(
                    "set either {} or {}, not both",
                    key("private_key"),
                    key("private_key_file")
                ),
            ));
        }
        if let Some(base_url) = &self.base_url {
            check_http_url(&key("base_url"), base_url, allow_insecure_http)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::tests::load;

    #[test]
    fn insecure_http_needs_explicit_consent() {
        let s = load(
            "[alipayplus]\nbase_url = \"http://127.0.0.1:9\"\nallow_insecure_http = true\n",
            &[],
            &[],
        )
        .unwrap();
        assert!(s.alipayplus.allow_insecure_http);
    }

    #[test]
    fn mpp_tables_load_from_file_and_environment_and_are_checked_by_name() {
        let toml = r#"
            [alipayplus]
            client_id = "top"
            private_key_file = "/keys/top.pem"
            alipayplus_public_key_file = "/keys/alipay.pem"
            [alipayplus.clients.PSP_A]
            client_id = "client-a"
            private_key_file = "/keys/a.pem"
            alipayplus_public_key_file = "/keys/alipay-a.pem"
            base_url = "https://open-na-global.alipayplus.com"
            max_requests_per_second = 50
        "#;
        let s = load(
            toml,
            &[
                (
                    "REGNOTIFY_ALIPAYPLUS__CLIENTS__PSP_B__CLIENT_ID",
                    "2022000000000002",
                ),
                (
                    "REGNOTIFY_ALIPAYPLUS__CLIENTS__PSP_B__PRIVATE_KEY",
                    "pem-hunter2",
                ),
                ("REGNOTIFY_ALIPAYPLUS__CLIENTS__PSP_B__KEY_VERSION", "3"),
                (
                    "REGNOTIFY_ALIPAYPLUS__CLIENTS__PSP_B__ALIPAYPLUS_PUBLIC_KEY_FILE",
                    "/keys/alipay-b.pem",
                ),
            ],
            &[],
        )
        .unwrap();
        let a = &s.alipayplus.clients["PSP_A"];
        assert_eq!(a.client_id, "client-a");
        assert_eq!(a.key_version, 1, "a table's key_version defaults to 1");
        assert_eq!(a.max_requests_per_second, Some(50));
        // Environment keys arrive lower-cased, pspIds too (documented: use TOML for mixed case).
        let b = &s.alipayplus.clients["psp_b"];
        assert_eq!(
            (b.client_id.as_str(), b.key_version),
            ("2022000000000002", 3)
        );
        assert!(s.alipayplus.require_credentials().is_ok());
        for printed in [format!("{s:?}"), s.to_redacted_toml()] {
            assert!(!printed.contains("hunter2"), "{printed}");
        }
        let cases = [
            (
                "[alipayplus.clients.A]\nclient_id = \"a\"\nprivate_key_fil = \"x\"\n",
                "alipayplus.clients.A.private_key_fil",
            ),
            (
                "[alipayplus.clients.A]\nprivate_key_file = \"x\"\n",
                "alipayplus.clients.A.client_id",
            ),
            (
                "[alipayplus.clients.A]\nclient_id = \"a\"\nbase_url = \"http://x\"\n",
                "alipayplus.clients.A.base_url",
            ),
            (
                "[alipayplus.clients.default]\nclient_id = \"a\"\n",
                "alipayplus.clients.default",
            ),
            (
                "[alipayplus.clients.\"a b\"]\nclient_id = \"a\"\n",
                "alipayplus.clients.a b",
            ),
            (
                "[alipayplus]\nkey_reload_interval = \"0s\"\n",
                "alipayplus.key_reload_interval",
            ),
        ];
        for (toml, key) in cases {
            let err = load(toml, &[], &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{toml:?} gave {err}");
        }
        let s = load(
            "[alipayplus]\nclient_id = \"t\"\nprivate_key_file = \"k\"\nalipayplus_public_key_file = \"p\"\n\
             [alipayplus.clients.A]\nclient_id = \"a\"\nalipayplus_public_key_file = \"p\"\n",
            &[],
            &[],
        )
        .unwrap();
        let err = s.alipayplus.require_credentials().unwrap_err().to_string();
        assert!(
            err.contains("alipayplus.clients.A.private_key_file"),
            "{err}"
        );
    }

    #[test]
    fn credentials_are_required_for_run() {
        let s = load("", &[], &[]).unwrap();
        let err = s.alipayplus.require_credentials().unwrap_err().to_string();
        assert!(err.contains("alipayplus.client_id"), "{err}");
    }

    #[test]
    fn result_policy_overrides_parse() {
        let s = load(
            "[alipayplus.result_policy]\nPROCESS_FAIL = \"retry\"\n",
            &[],
            &[],
        )
        .unwrap();
        assert_eq!(
            s.alipayplus.result_policy.get("PROCESS_FAIL"),
            Some(&ResultPolicy::Retry)
        );
        let err = load(
            "[alipayplus.result_policy]\nPROCESS_FAIL = \"maybe\"\n",
            &[],
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("alipayplus.result_policy.PROCESS_FAIL"),
            "{err}"
        );
    }
}
