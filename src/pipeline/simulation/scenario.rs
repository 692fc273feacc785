//! The scenario: what a seed decides before the run starts (the records and their partitions,
//! the fault windows, rebalances and crashes, the settings under test). It never looks at the
//! world or the clock; the actors read it as the run goes.

use std::collections::HashMap;
use std::time::Duration;

use rand::RngExt;
use rand::rngs::StdRng;

use super::{FAULTS_END, PARTITIONS};
use crate::config::{CircuitBreakerSettings, ProcessingSettings};
use crate::event::{Decision, RegistrationDecided};
use crate::pipeline::backoff::MIN_SHARE_PER_SECOND;

/// A window of simulated time, from the start of the run.
#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    from: Duration,
    to: Duration,
}

impl Window {
    fn random(rng: &mut StdRng, shortest: u64, longest: u64) -> Window {
        let length = Duration::from_millis(rng.random_range(shortest..=longest));
        let from =
            Duration::from_millis(rng.random_range(0..=(FAULTS_END - length).as_millis() as u64));
        Window {
            from,
            to: from + length,
        }
    }

    pub(super) fn contains(&self, at: Duration) -> bool {
        self.from <= at && at < self.to
    }
}

#[derive(Debug)]
pub(super) struct Scenario {
    pub(super) exactly_once: bool,
    pub(super) ordering: crate::config::Ordering,
    pub(super) max_in_flight: usize,
    pub(super) max_pending_per_partition: usize,
    pub(super) refused_streak_threshold: u32,
    /// Per record: when it is appended, its partition, and what it is.
    pub(super) records: Vec<(Duration, i32, Payload)>,
    /// Per psp label: when Alipay+ answers nothing usable.
    pub(super) outages: HashMap<&'static str, Vec<Window>>,
    /// When Alipay+ refuses every call of ours (a key or client problem).
    pub(super) refusing_us: Vec<Window>,
    pub(super) commits_refused: Vec<Window>,
    pub(super) publishes_fail: Vec<Window>,
    pub(super) throttling: Vec<Window>,
    pub(super) rebalances: Vec<Rebalance>,
    /// When the member is killed (and a new one starts from the committed offsets).
    pub(super) crashes: Vec<Duration>,
    /// Exactly-once: the share of transactions that abort.
    pub(super) abort_ratio: f64,
    /// Each MPP's `max_requests_per_second`, a limit for the whole group (0: none).
    pub(super) requests_per_second: u32,
    /// Partitions of the input topic that other members of the group own: this member's share
    /// of the limit is its partitions over all of them.
    pub(super) others_partitions: usize,
}

/// A rebalance of the group.
#[derive(Debug, Clone)]
pub(super) struct Rebalance {
    pub(super) at: Duration,
    /// Revoked from the member (those it owns then).
    pub(super) partitions: Vec<i32>,
    /// Eager: every partition the member owns is revoked, under the old generation; else
    /// cooperative, a subset under the new one.
    pub(super) eager: bool,
    /// Lost: the member was out of the group, and commits nothing for them.
    pub(super) lost: bool,
    /// How long other members hold them before they come back (zero: at once).
    pub(super) away: Duration,
}

#[derive(Debug, Clone)]
pub(super) enum Payload {
    Event {
        event: RegistrationDecided,
        /// Alipay+ refuses this event's calls (about the event).
        refused: bool,
        /// Alipay+ rejects this event.
        rejected: bool,
    },
    Poison,
}

impl Scenario {
    pub(super) fn new(rng: &mut StdRng) -> Scenario {
        let events = rng.random_range(10..=60);
        // Now and then many merchants: many calls ready at once, more than a send rate allows.
        let merchants = if rng.random_bool(0.3) {
            rng.random_range(20..=40)
        } else {
            rng.random_range(3..=12)
        };
        let quiet = rng.random_bool(0.3);
        let mut records = Vec::new();
        for i in 0..events {
            // A quiet topic: a few records now and then; else most at the start.
            let at = if quiet || rng.random_bool(0.3) {
                Duration::from_millis(rng.random_range(0..40_000))
            } else {
                Duration::from_millis(rng.random_range(0..2_000))
            };
            // Keyed by merchant, as the producers of these events do: one merchant, one partition.
            let merchant_no = rng.random_range(0..merchants);
            let partition = merchant_no % PARTITIONS;
            let payload = if rng.random_bool(0.03) {
                Payload::Poison
            } else {
                let merchant = format!("M-{merchant_no}");
                let psp_id = rng.random_bool(0.3).then(|| "B".to_owned());
                Payload::Event {
                    event: RegistrationDecided {
                        event_id: uuid::Builder::from_random_bytes(rng.random())
                            .into_uuid()
                            .to_string(),
                        occurred_at_ms: 1_700_000_000_000 + i64::from(i),
                        reference_merchant_id: merchant,
                        registration_request_id: format!("R-{i}"),
                        decision: Decision::Approved,
                        rejection_reason: None,
                        psp_id,
                    },
                    refused: rng.random_bool(0.06),
                    rejected: rng.random_bool(0.05),
                }
            };
            records.push((at, partition, payload));
        }
        records.sort_by_key(|(at, _, _)| *at);
        let windows = |rng: &mut StdRng, chance: f64, most: usize, shortest, longest| {
            let mut windows = Vec::new();
            for _ in 0..most {
                if rng.random_bool(chance) {
                    windows.push(Window::random(rng, shortest, longest));
                }
            }
            windows
        };
        let mut outages = HashMap::new();
        outages.insert("default", windows(rng, 0.5, 2, 3_000, 30_000));
        outages.insert("B", windows(rng, 0.3, 1, 3_000, 30_000));
        let rebalances = (0..rng.random_range(0..=3))
            .map(|_| {
                // Some while the first records are still waiting: a rebalance under load.
                let until = if rng.random_bool(0.3) {
                    5_000
                } else {
                    FAULTS_END.as_millis() as u64
                };
                let at = Duration::from_millis(rng.random_range(0..until));
                let eager = rng.random_bool(0.5);
                let partitions: Vec<i32> = (0..PARTITIONS)
                    .filter(|_| eager || rng.random_bool(0.5))
                    .collect();
                let lost = rng.random_bool(0.15);
                let away = if rng.random_bool(0.5) {
                    Duration::from_millis(rng.random_range(500..=10_000))
                } else {
                    Duration::ZERO
                };
                Rebalance {
                    at,
                    partitions,
                    eager,
                    lost,
                    away,
                }
            })
            .collect();
        let mut crashes = Vec::new();
        for _ in 0..rng.random_range(0..=2) {
            if rng.random_bool(0.5) {
                crashes.push(Duration::from_millis(
                    rng.random_range(0..FAULTS_END.as_millis() as u64),
                ));
            }
        }
        Scenario {
            exactly_once: rng.random_bool(0.4),
            ordering: if rng.random_bool(0.8) {
                crate::config::Ordering::Key
            } else {
                crate::config::Ordering::Partition
            },
            max_in_flight: rng.random_range(1..=16),
            max_pending_per_partition: rng.random_range(4..=64),
            refused_streak_threshold: rng.random_range(2..=20),
            records,
            outages,
            refusing_us: windows(rng, 0.25, 1, 2_000, 20_000),
            commits_refused: windows(rng, 0.3, 1, 1_000, 15_000),
            publishes_fail: windows(rng, 0.2, 1, 500, 5_000),
            throttling: windows(rng, 0.2, 1, 1_000, 10_000),
            rebalances,
            crashes,
            abort_ratio: if rng.random_bool(0.3) { 0.3 } else { 0.0 },
            requests_per_second: if rng.random_bool(0.5) {
                rng.random_range(1..=40)
            } else {
                0
            },
            others_partitions: rng.random_range(0..=3),
        }
    }

    /// This member's share of each MPP's `max_requests_per_second` while it owns `owned`
    /// partitions (in proportion to the topic's; below one a second with a small limit), when
    /// there is a limit.
    pub(super) fn share(&self, owned: usize) -> Option<f64> {
        (self.requests_per_second > 0).then(|| {
            let fraction = owned as f64 / self.topic_partitions() as f64;
            (f64::from(self.requests_per_second) * fraction).max(MIN_SHARE_PER_SECOND)
        })
    }

    /// How many partitions the input topic has: this member's and the others'.
    pub(super) fn topic_partitions(&self) -> usize {
        PARTITIONS as usize + self.others_partitions
    }

    pub(super) fn processing(&self) -> ProcessingSettings {
        ProcessingSettings {
            ordering: self.ordering,
            max_in_flight: self.max_in_flight,
            max_pending_per_partition: self.max_pending_per_partition,
            max_attempts: 8,
            max_retry_elapsed: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(200),
            backoff_max: Duration::from_secs(5),
            commit_interval: Duration::from_secs(1),
            rebalance_drain_timeout: Duration::from_secs(2),
            shutdown_timeout: Duration::from_secs(5),
            exactly_once: self.exactly_once,
            transaction_interval: Duration::from_millis(50),
            refused_streak_threshold: self.refused_streak_threshold,
        }
    }

    pub(super) fn breaker(&self) -> CircuitBreakerSettings {
        CircuitBreakerSettings {
            enabled: true,
            window: Duration::from_secs(30),
            window_calls: 50,
            min_calls: 5,
            failure_ratio: 0.5,
            probe_interval: Duration::from_secs(1),
            probe_interval_max: Duration::from_secs(8),
            refusal_hold: Duration::from_secs(2),
        }
    }
}
