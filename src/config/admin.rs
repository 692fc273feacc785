//! `[admin]`: the listen address of `/metrics` and the health endpoints, and the limits after
//! which `/livez` and `/readyz` fail and a single event is reported stalled.
//!
//! Holds the table, its defaults and its checks (against `[processing]`, passed in). It must never
//! bind the address: the `admin` module does.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::processing::ProcessingSettings;
use super::serde_helpers::lenient_string;
use super::validate::positive;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    #[serde(deserialize_with = "lenient_string")]
    pub listen: String,
    /// `/livez` answers 503 once the main loop has not turned for longer than this. It turns at
    /// least every `processing.commit_interval`, even while idle.
    #[serde(with = "humantime_serde")]
    pub(crate) livez_after: Duration,
    /// `/readyz` answers 503 once events wait (in flight or awaiting their commit) and none has
    /// finished, Alipay+ has not answered and no commit has landed for longer than this.
    #[serde(with = "humantime_serde")]
    pub(crate) stall_after: Duration,
    /// An event still without its terminal outcome this long after it was consumed is logged
    /// once (key, partition, offset, trace id) and counted in `regnotify_stalled_events_total`.
    #[serde(with = "humantime_serde")]
    pub(crate) event_stall_after: Duration,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: "0.0.0.0:8080".into(),
            livez_after: Duration::from_secs(60),
            stall_after: Duration::from_secs(5 * 60),
            event_stall_after: Duration::from_secs(5 * 60),
        }
    }
}

impl AdminSettings {
    pub(super) fn validate(&self, processing: &ProcessingSettings) -> Result<(), ConfigError> {
        self.listen_addr()?;
        positive("admin.livez_after", self.livez_after)?;
        positive("admin.stall_after", self.stall_after)?;
        positive("admin.event_stall_after", self.event_stall_after)?;
        // An idle main loop turns only at the commit tick: a shorter limit fails it while idle.
        if self.livez_after <= processing.commit_interval {
            return Err(ConfigError::invalid(
                "admin.livez_after",
                "must be longer than processing.commit_interval (an idle main loop turns only \
                 that often)",
            ));
        }
        // An event waits up to backoff_max between calls without any progress; a shorter stall
        // time would call a single retrying event a stall.
        if self.stall_after <= processing.backoff_max {
            return Err(ConfigError::invalid(
                "admin.stall_after",
                "must be longer than processing.backoff_max (a retrying event waits that long \
                 between calls)",
            ));
        }
        Ok(())
    }

    pub(crate) fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|_| {
            ConfigError::invalid(
                "admin.listen",
                format!("`{}` is not an address such as 0.0.0.0:8080", self.listen),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::tests::load;

    #[test]
    fn health_limits_are_read_and_checked() {
        let s = load(
            "[admin]\nlivez_after = \"90s\"\nstall_after = \"15m\"\n",
            &[("REGNOTIFY_ADMIN__STALL_AFTER", "20m")],
            &[],
        )
        .unwrap();
        assert_eq!(s.admin.livez_after, Duration::from_secs(90));
        assert_eq!(s.admin.stall_after, Duration::from_secs(20 * 60));
        let cases = [
            ("[admin]\nlivez_after = \"0s\"\n", "admin.livez_after"),
            ("[admin]\nstall_after = \"0s\"\n", "admin.stall_after"),
            ("[admin]\nstall_after = \"five\"\n", "admin.stall_after"),
            ("[admin]\nlivez_after = \"30d\"\n", "admin.livez_after"),
            (
                "[admin]\nlivez_after = \"5s\"\n[processing]\ncommit_interval = \"5s\"\n",
                "admin.livez_after",
            ),
            (
                "[admin]\nstall_after = \"1m\"\n[processing]\nbackoff_max = \"2m\"\n",
                "admin.stall_after",
            ),
        ];
        for (toml, key) in cases {
            let err = load(toml, &[], &[]).unwrap_err().to_string();
            assert!(err.contains(key), "{toml:?} gave {err}");
        }
    }
}
