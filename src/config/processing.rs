//! `[processing]`: ordering, concurrency, retries and backoff, commits, shutdown and
//! exactly-once delivery.
//!
//! Holds the table, its defaults and its checks; the pipeline applies it. It must never hold
//! run-time state.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::validate::{at_least, positive};

/// Which events must wait for each other (SPEC 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ordering {
    /// One event in flight per `referenceMerchantId`.
    #[default]
    Key,
    /// One event in flight per partition (strict offset order).
    Partition,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessingSettings {
    pub ordering: Ordering,
    pub max_in_flight: usize,
    pub max_pending_per_partition: usize,
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub max_retry_elapsed: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub backoff_max: Duration,
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub rebalance_drain_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    pub exactly_once: bool,
    #[serde(with = "humantime_serde")]
    pub transaction_interval: Duration,
    /// Consecutive refused answers after which `/readyz` reports the service stalled.
    pub refused_streak_threshold: u32,
}

impl Default for ProcessingSettings {
    fn default() -> Self {
        ProcessingSettings {
            ordering: Ordering::Key,
            max_in_flight: 256,
            max_pending_per_partition: 10_000,
            max_attempts: 8,
            max_retry_elapsed: Duration::from_secs(600),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            commit_interval: Duration::from_secs(1),
            rebalance_drain_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            exactly_once: false,
            transaction_interval: Duration::from_millis(100),
            refused_streak_threshold: 20,
        }
    }
}

impl ProcessingSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        at_least("processing.max_in_flight", self.max_in_flight, 1)?;
        at_least(
            "processing.max_pending_per_partition",
            self.max_pending_per_partition,
            1,
        )?;
        at_least("processing.max_attempts", self.max_attempts as usize, 1)?;
        positive("processing.max_retry_elapsed", self.max_retry_elapsed)?;
        positive("processing.backoff_initial", self.backoff_initial)?;
        positive("processing.backoff_max", self.backoff_max)?;
        if self.backoff_initial > self.backoff_max {
            return Err(ConfigError::invalid(
                "processing.backoff_initial",
                "must not exceed processing.backoff_max",
            ));
        }
        positive("processing.commit_interval", self.commit_interval)?;
        positive(
            "processing.rebalance_drain_timeout",
            self.rebalance_drain_timeout,
        )?;
        positive("processing.shutdown_timeout", self.shutdown_timeout)?;
        positive("processing.transaction_interval", self.transaction_interval)?;
        at_least(
            "processing.refused_streak_threshold",
            self.refused_streak_threshold as usize,
            1,
        )?;
        Ok(())
    }
}
