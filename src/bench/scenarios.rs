//! The demo scenarios of issue 9 ([`Scenario`]: ordering, latency, `max_in_flight`, traces,
//! exactly-once), which of them run (all, quick), how many events each gets, and the bounds a
//! run is held against (the latency bound, [`cpu_bound`]).
//!
//! Pure arithmetic: never runs a demo, never prints.

use serde::{Deserialize, Serialize};

use crate::config::Ordering;
use crate::demo::{DemoSummary, INPUT_PARTITIONS};

/// One demo configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Scenario {
    pub(crate) latency_ms: u64,
    pub(crate) max_in_flight: usize,
    pub(crate) ordering: Ordering,
    /// Every span recorded and exported over OTLP/HTTP (`demo --traces`).
    #[serde(default)]
    pub(crate) traces: bool,
    /// `processing.exactly_once = true` (`demo --exactly-once`).
    #[serde(default)]
    pub(crate) exactly_once: bool,
}

impl Scenario {
    /// `key/0ms/256`.
    pub(crate) fn name(&self) -> String {
        format!(
            "{}/{}ms/{}{}{}",
            ordering_name(self.ordering),
            self.latency_ms,
            self.max_in_flight,
            if self.traces { "+traces" } else { "" },
            if self.exactly_once { "+eos" } else { "" }
        )
    }

    /// Events that can be in flight at once: `max_in_flight`, or in partition ordering one per
    /// input partition.
    pub(crate) fn concurrency(&self) -> usize {
        match self.ordering {
            Ordering::Key => self.max_in_flight,
            Ordering::Partition => self.max_in_flight.min(INPUT_PARTITIONS as usize),
        }
    }

    /// Events per second if every call took exactly the simulated latency: concurrency / L.
    pub(crate) fn latency_bound(&self) -> Option<f64> {
        (self.latency_ms > 0).then(|| self.concurrency() as f64 * 1000.0 / self.latency_ms as f64)
    }

    /// The latency bound of a run: [`latency_bound`](Self::latency_bound), and at latency 0
    /// under partition ordering, where an event of a partition starts only once the one before
    /// it is done, partitions / (p50 of one call + p50 of its outputs' acknowledgement).
    pub(crate) fn latency_bound_of(&self, demo: &DemoSummary) -> Option<f64> {
        match (self.latency_bound(), self.ordering) {
            (Some(bound), _) => Some(bound),
            (None, Ordering::Partition) => {
                let per_event_ms = demo.p50_ms + demo.output_ack_p50_ms;
                (per_event_ms > 0.0).then(|| self.concurrency() as f64 * 1000.0 / per_event_ms)
            }
            (None, Ordering::Key) => None,
        }
    }
}

fn ordering_name(ordering: Ordering) -> &'static str {
    match ordering {
        Ordering::Key => "key",
        Ordering::Partition => "partition",
    }
}

/// Every scenario of issue 9, in the order they run.
pub(crate) fn all_scenarios() -> Vec<Scenario> {
    let mut scenarios = Vec::new();
    for ordering in [Ordering::Key, Ordering::Partition] {
        for latency_ms in [0, 50] {
            for max_in_flight in [16, 64, 256] {
                scenarios.push(Scenario {
                    latency_ms,
                    max_in_flight,
                    ordering,
                    traces: false,
                    exactly_once: false,
                });
            }
        }
    }
    // What tracing costs, then what exactly-once costs: the defaults at latency 0 (CPU-bound,
    // where a cost shows) and 64 in flight at 50 ms, with every span recorded and exported, or
    // outputs and offsets in Kafka transactions.
    for (traces, exactly_once) in [(true, false), (false, true)] {
        for (latency_ms, max_in_flight) in [(0, 256), (50, 64)] {
            scenarios.push(Scenario {
                latency_ms,
                max_in_flight,
                ordering: Ordering::Key,
                traces,
                exactly_once,
            });
        }
    }
    scenarios
}

/// The scenarios issue 9's targets are about: the defaults at latency 0, and 64 in flight at
/// 50 ms.
pub(crate) fn quick_scenarios() -> Vec<Scenario> {
    all_scenarios()
        .into_iter()
        .filter(|s| {
            s.ordering == Ordering::Key
                && !s.exactly_once
                && matches!(
                    (s.latency_ms, s.max_in_flight, s.traces),
                    (0, 256, _) | (50, 64, false)
                )
        })
        .collect()
}

/// Events for one scenario: `events`, but no more than about ten seconds' worth at the latency
/// bound (partition ordering at 50 ms is bound at 80 events/s), and at least 500.
pub(crate) fn scenario_events(scenario: &Scenario, events: usize) -> usize {
    match scenario.latency_bound() {
        Some(bound) => events.min((bound * 10.0) as usize).max(500),
        None => events,
    }
}

/// Events per second the cores would allow at the CPU cost measured for `events` events.
pub(crate) fn cpu_bound(cores: usize, cpu_seconds: Option<f64>, events: u64) -> Option<f64> {
    let cpu_seconds = cpu_seconds.filter(|cpu| *cpu > 0.0)?;
    Some(cores as f64 * events as f64 / cpu_seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_are_sixteen_scenarios_with_distinct_names() {
        let names: std::collections::BTreeSet<String> =
            all_scenarios().iter().map(Scenario::name).collect();
        assert_eq!(names.len(), 16);
        assert!(names.contains("key/50ms/64"));
        assert!(names.contains("partition/0ms/256"));
        assert!(names.contains("key/50ms/64+traces"));
        assert!(names.contains("key/0ms/256+eos"));
        let quick: Vec<String> = quick_scenarios().iter().map(Scenario::name).collect();
        assert_eq!(quick, ["key/0ms/256", "key/50ms/64", "key/0ms/256+traces"]);
    }

    #[test]
    fn bounds_follow_concurrency_and_latency() {
        let key = Scenario {
            latency_ms: 50,
            max_in_flight: 64,
            ordering: Ordering::Key,
            traces: false,
            exactly_once: false,
        };
        assert_eq!(key.latency_bound(), Some(1280.0));
        let partition = Scenario {
            ordering: Ordering::Partition,
            ..key
        };
        assert_eq!(partition.latency_bound(), Some(80.0));
        assert_eq!(scenario_events(&partition, 5000), 800);
        assert_eq!(scenario_events(&key, 5000), 5000);
        let no_latency = Scenario {
            latency_ms: 0,
            ..key
        };
        assert_eq!(no_latency.latency_bound(), None);
        assert_eq!(scenario_events(&no_latency, 300), 300);
        // At latency 0, one partition's events follow each other: a call and its outputs'
        // acknowledgement each, 0.5 + 1.5 ms, so 4 partitions allow 2,000 events/s.
        let demo = DemoSummary {
            p50_ms: 0.5,
            output_ack_p50_ms: 1.5,
            ..DemoSummary::default()
        };
        let partition_0ms = Scenario {
            latency_ms: 0,
            ..partition
        };
        assert_eq!(partition_0ms.latency_bound_of(&demo), Some(2000.0));
        assert_eq!(no_latency.latency_bound_of(&demo), None);
        assert_eq!(partition.latency_bound_of(&demo), Some(80.0));
        // 2 cores, 0.4 CPU seconds for 1,000 events: 5,000 events/s.
        assert_eq!(cpu_bound(2, Some(0.4), 1000), Some(5000.0));
        assert_eq!(cpu_bound(2, Some(0.0), 1000), None);
        assert_eq!(cpu_bound(2, None, 1000), None);
    }
}
