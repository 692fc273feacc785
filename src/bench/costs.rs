//! What a variant of a scenario costs against the same scenario without it: tracing (every span
//! exported) and exactly-once, in events per second and per CPU-second.
//!
//! Derived from a [`BenchReport`] only: never measures, never formats.

use serde::{Deserialize, Serialize};

use super::report::{BenchReport, ScenarioResult};
use super::scenarios::Scenario;

impl BenchReport {
    /// Each traced scenario against the same scenario with export off.
    pub(crate) fn tracing_costs(&self) -> Vec<TracingCost> {
        self.against_base(
            |scenario| scenario.traces,
            |scenario| Scenario {
                traces: false,
                ..scenario
            },
        )
        .map(|(traced, cost)| {
            let exports = traced.demo.trace_exports.unwrap_or_default();
            TracingCost {
                scenario: traced.name.clone(),
                cpu_efficiency_ratio: cost.cpu_efficiency_ratio,
                throughput_ratio: cost.throughput_ratio,
                spans_exported: exports.spans,
                spans_expected: traced.demo.events + traced.demo.http_calls,
            }
        })
        .collect()
    }

    /// Each exactly-once scenario against the same scenario at-least-once.
    pub(crate) fn exactly_once_costs(&self) -> Vec<VariantCost> {
        self.against_base(
            |scenario| scenario.exactly_once,
            |scenario| Scenario {
                exactly_once: false,
                ..scenario
            },
        )
        .map(|(_, cost)| cost)
        .collect()
    }

    /// Each scenario `is_variant` picks, with its rates over those of the scenario `base` gives
    /// for it (when that ran too).
    fn against_base<'a>(
        &'a self,
        is_variant: impl Fn(&Scenario) -> bool + 'a,
        base: impl Fn(Scenario) -> Scenario + 'a,
    ) -> impl Iterator<Item = (&'a ScenarioResult, VariantCost)> + 'a {
        let per_cpu = |result: &ScenarioResult| {
            result
                .demo
                .cpu_seconds
                .filter(|cpu| *cpu > 0.0)
                .map(|cpu| result.demo.events as f64 / cpu)
        };
        self.scenarios
            .iter()
            .filter(move |variant| is_variant(&variant.scenario))
            .filter_map(move |variant| {
                let wanted = base(variant.scenario);
                let base = self.scenarios.iter().find(|b| b.scenario == wanted)?;
                Some((
                    variant,
                    VariantCost {
                        scenario: variant.name.clone(),
                        cpu_efficiency_ratio: per_cpu(variant)
                            .zip(per_cpu(base))
                            .map(|(on, off)| on / off),
                        throughput_ratio: (base.demo.events_per_second > 0.0)
                            .then(|| variant.demo.events_per_second / base.demo.events_per_second),
                    },
                ))
            })
    }
}

/// A variant of a scenario (exactly-once, say) against the scenario without it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct VariantCost {
    pub(crate) scenario: String,
    /// Events per CPU-second of the variant over the same without it.
    pub(crate) cpu_efficiency_ratio: Option<f64>,
    /// Events per second of the variant over the same without it.
    pub(crate) throughput_ratio: Option<f64>,
}

/// What recording and exporting every span cost one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct TracingCost {
    pub(crate) scenario: String,
    /// Events per CPU-second with traces over the same without.
    pub(crate) cpu_efficiency_ratio: Option<f64>,
    /// Events per second with traces over the same without.
    pub(crate) throughput_ratio: Option<f64>,
    pub(crate) spans_exported: u64,
    /// One span per event and one per Alipay+ call.
    pub(crate) spans_expected: u64,
}
