//! What one `regnotify bench` run measured ([`BenchReport`]): each scenario's figures against
//! its bounds, the signer against OpenSSL, the peak RSS growth, the machine; the JSON document the
//! bench prints.
//!
//! Data only: never measures (`runner`, `signer`) and never formats (`table`).

use serde::{Deserialize, Serialize};

use super::openssl;
use super::scenarios::{Scenario, cpu_bound};
use crate::demo::DemoSummary;

/// A scenario's figures and how they stand against its bounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ScenarioResult {
    pub(crate) name: String,
    pub(crate) scenario: Scenario,
    pub(crate) load_average_before: Option<f64>,
    pub(crate) demo: DemoSummary,
    /// cores / CPU seconds per event, from this run's own CPU cost.
    pub(crate) cpu_bound: Option<f64>,
    pub(crate) latency_bound: Option<f64>,
    pub(crate) fraction_of_cpu_bound: Option<f64>,
    pub(crate) fraction_of_latency_bound: Option<f64>,
    /// The steady rate (see [`DemoSummary::steady_events_per_second`]) over the latency bound.
    #[serde(default)]
    pub(crate) steady_fraction_of_latency_bound: Option<f64>,
}

impl ScenarioResult {
    pub(super) fn new(
        scenario: Scenario,
        load_average_before: Option<f64>,
        demo: DemoSummary,
    ) -> Self {
        let cpu_bound = cpu_bound(demo.cores, demo.cpu_seconds, demo.events);
        let latency_bound = scenario.latency_bound_of(&demo);
        let fraction = |bound: Option<f64>| {
            bound
                .filter(|bound| *bound > 0.0)
                .map(|bound| demo.events_per_second / bound)
        };
        ScenarioResult {
            name: scenario.name(),
            scenario,
            load_average_before,
            cpu_bound,
            latency_bound,
            fraction_of_cpu_bound: fraction(cpu_bound),
            fraction_of_latency_bound: fraction(latency_bound),
            steady_fraction_of_latency_bound: latency_bound
                .filter(|bound| *bound > 0.0)
                .zip(demo.steady_events_per_second)
                .map(|(bound, steady)| steady / bound),
            demo,
        }
    }
}

/// Our signer against OpenSSL's, one core each.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SignerResult {
    /// RSA-2048 PKCS#1 v1.5 SHA-256 signatures per second on one thread, through the function the
    /// service signs requests with (content assembly and header encoding included); the best of
    /// `rounds`.
    pub(crate) ours_per_second: f64,
    pub(crate) rounds: usize,
    /// The best of `rounds` runs of `openssl speed`.
    pub(crate) openssl: Option<openssl::OpenSslSpeed>,
    /// Why there is no OpenSSL figure.
    pub(crate) openssl_unavailable: Option<String>,
    /// ours / OpenSSL.
    pub(crate) ratio: Option<f64>,
}

/// Peak RSS of a long demo run against a short one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RssGrowth {
    pub(crate) short_events: u64,
    pub(crate) long_events: u64,
    pub(crate) short_peak_rss_bytes: Option<u64>,
    pub(crate) long_peak_rss_bytes: Option<u64>,
    /// long / short.
    pub(crate) ratio: Option<f64>,
    pub(crate) both_succeeded: bool,
}

/// Where the bench ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Machine {
    pub(crate) cores: usize,
    pub(crate) cpu_model: Option<String>,
    pub(crate) load_average_before: Option<f64>,
    pub(crate) load_average_after: Option<f64>,
    pub(crate) started_at: String,
    pub(crate) regnotify_version: String,
}

/// Everything one `regnotify bench` run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub(crate) machine: Machine,
    pub(crate) signer: SignerResult,
    pub(crate) scenarios: Vec<ScenarioResult>,
    /// The service alone against OpenSSL; `None` when left out or failed.
    pub(crate) service: Option<super::service::ServiceRun>,
    pub(crate) rss_growth: Option<RssGrowth>,
    /// Scenarios whose demo run failed: name and why.
    pub failures: Vec<(String, String)>,
}
