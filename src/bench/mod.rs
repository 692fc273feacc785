//! `regnotify bench`: how close regnotify comes to the machine's limits, in one run that prints a
//! table and a JSON document. It measures
//!
//! - our RSA-2048 signing rate on one core (the aws-lc path the service signs with) against
//!   `openssl speed` on the same machine ([`openssl`]);
//! - demo scenarios (latency 0 and 50 ms, `max_in_flight` 16, 64, 256, key and partition
//!   ordering), each held against its bounds: the CPU bound, cores over the CPU one event cost in
//!   that run, and the latency bound, the events that may be in flight over the latency;
//! - the peak RSS of a long demo run against a short one.
//!
//! Each demo run is its own `regnotify demo --json` process, so its peak RSS is its own and no
//! run inherits another's heap, threads or metrics. [`measure`] is the service's side of the
//! comparison with another implementation on a real broker (`scripts/bench-peers.sh`).
//!
//! Nothing here asserts a speed: it reports figures, and the tests only check the arithmetic.

pub mod measure;
pub mod openssl;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::alipayplus::signature::{request_time_now, sign_request};
use crate::config::Ordering;
use crate::demo::{DemoOptions, DemoSummary, INPUT_PARTITIONS};
use crate::keys::PrivateSigningKey;

/// What `regnotify bench` is asked to do.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Events per scenario (latency-bound scenarios run fewer; see [`scenario_events`]).
    pub events: usize,
    /// Only scenarios whose name contains this, e.g. `key/50ms` or `/64`.
    pub filter: Option<String>,
    /// Only the scenarios that issue 9's targets name ([`quick_scenarios`]).
    pub quick: bool,
    /// Seconds of signing for each signer figure.
    pub signer_seconds: u64,
    /// The short and the long demo run whose peak RSS are compared; `None` skips the comparison.
    pub rss_growth: Option<(usize, usize)>,
}

/// One demo configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scenario {
    pub latency_ms: u64,
    pub max_in_flight: usize,
    pub ordering: Ordering,
    /// Every span recorded and exported over OTLP/HTTP (`demo --traces`).
    #[serde(default)]
    pub traces: bool,
    /// `processing.exactly_once = true` (`demo --exactly-once`).
    #[serde(default)]
    pub exactly_once: bool,
}

impl Scenario {
    /// `key/0ms/256`.
    pub fn name(&self) -> String {
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
    pub fn concurrency(&self) -> usize {
        match self.ordering {
            Ordering::Key => self.max_in_flight,
            Ordering::Partition => self.max_in_flight.min(INPUT_PARTITIONS as usize),
        }
    }

    /// Events per second if every call took exactly the simulated latency: concurrency / L.
    pub fn latency_bound(&self) -> Option<f64> {
        (self.latency_ms > 0).then(|| self.concurrency() as f64 * 1000.0 / self.latency_ms as f64)
    }

    /// The latency bound of a run: [`latency_bound`](Self::latency_bound), and at latency 0
    /// under partition ordering, where an event of a partition starts only once the one before
    /// it is done, partitions / (p50 of one call + p50 of its outputs' acknowledgement).
    pub fn latency_bound_of(&self, demo: &DemoSummary) -> Option<f64> {
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
pub fn all_scenarios() -> Vec<Scenario> {
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
pub fn quick_scenarios() -> Vec<Scenario> {
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
pub fn scenario_events(scenario: &Scenario, events: usize) -> usize {
    match scenario.latency_bound() {
        Some(bound) => events.min((bound * 10.0) as usize).max(500),
        None => events,
    }
}

/// A scenario's figures and how they stand against its bounds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScenarioResult {
    pub name: String,
    pub scenario: Scenario,
    pub load_average_before: Option<f64>,
    pub demo: DemoSummary,
    /// cores / CPU seconds per event, from this run's own CPU cost.
    pub cpu_bound: Option<f64>,
    pub latency_bound: Option<f64>,
    pub fraction_of_cpu_bound: Option<f64>,
    pub fraction_of_latency_bound: Option<f64>,
    /// The steady rate (see [`DemoSummary::steady_events_per_second`]) over the latency bound.
    #[serde(default)]
    pub steady_fraction_of_latency_bound: Option<f64>,
}

impl ScenarioResult {
    fn new(scenario: Scenario, load_average_before: Option<f64>, demo: DemoSummary) -> Self {
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

/// Events per second the cores would allow at the CPU cost measured for `events` events.
pub fn cpu_bound(cores: usize, cpu_seconds: Option<f64>, events: u64) -> Option<f64> {
    let cpu_seconds = cpu_seconds.filter(|cpu| *cpu > 0.0)?;
    Some(cores as f64 * events as f64 / cpu_seconds)
}

/// Our signer against OpenSSL's, one core each.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignerResult {
    /// RSA-2048 PKCS#1 v1.5 SHA-256 signatures per second on one thread, through the function the
    /// service signs requests with (content assembly and header encoding included); the best of
    /// `rounds`.
    pub ours_per_second: f64,
    pub rounds: usize,
    /// The best of `rounds` runs of `openssl speed`.
    pub openssl: Option<openssl::OpenSslSpeed>,
    /// Why there is no OpenSSL figure.
    pub openssl_unavailable: Option<String>,
    /// ours / OpenSSL.
    pub ratio: Option<f64>,
}

/// Peak RSS of a long demo run against a short one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RssGrowth {
    pub short_events: u64,
    pub long_events: u64,
    pub short_peak_rss_bytes: Option<u64>,
    pub long_peak_rss_bytes: Option<u64>,
    /// long / short.
    pub ratio: Option<f64>,
    pub both_succeeded: bool,
}

/// Where the bench ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: Option<String>,
    pub load_average_before: Option<f64>,
    pub load_average_after: Option<f64>,
    pub started_at: String,
    pub regnotify_version: String,
}

/// Everything one `regnotify bench` run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub machine: Machine,
    pub signer: SignerResult,
    pub scenarios: Vec<ScenarioResult>,
    pub rss_growth: Option<RssGrowth>,
    /// Scenarios whose demo run failed: name and why.
    pub failures: Vec<(String, String)>,
}

/// Runs the whole bench; progress goes to stderr.
pub fn run(options: &BenchOptions) -> anyhow::Result<BenchReport> {
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let load_average_before = load_average();
    let signer = measure_signer(options.signer_seconds)?;
    let mut scenarios = Vec::new();
    let mut failures = Vec::new();
    let candidates = if options.quick {
        quick_scenarios()
    } else {
        all_scenarios()
    };
    let selected: Vec<Scenario> = candidates
        .into_iter()
        .filter(|s| options.filter.as_ref().is_none_or(|f| s.name().contains(f)))
        .collect();
    for (index, scenario) in selected.iter().enumerate() {
        let events = scenario_events(scenario, options.events);
        eprint!(
            "bench: [{}/{}] {} with {events} events … ",
            index + 1,
            selected.len(),
            scenario.name()
        );
        let load = load_average();
        let demo = DemoOptions {
            events,
            latency: Duration::from_millis(scenario.latency_ms),
            max_in_flight: Some(scenario.max_in_flight),
            ordering: Some(scenario.ordering),
            progress: false,
            traces: scenario.traces,
            exactly_once: scenario.exactly_once,
        };
        match run_demo_process(&demo) {
            Ok(summary) => {
                eprintln!("{:.0} events/s", summary.events_per_second);
                if !summary.succeeded() {
                    failures.push((scenario.name(), "the demo's checks failed".to_string()));
                }
                scenarios.push(ScenarioResult::new(*scenario, load, summary));
            }
            Err(error) => {
                eprintln!("failed");
                failures.push((scenario.name(), format!("{error:#}")));
            }
        }
    }
    let rss_growth = options
        .rss_growth
        .map(|(short, long)| measure_rss_growth(short, long, &mut failures));
    Ok(BenchReport {
        machine: Machine {
            cores: crate::usage::cores(),
            cpu_model: cpu_model(),
            load_average_before,
            load_average_after: load_average(),
            started_at,
            regnotify_version: env!("CARGO_PKG_VERSION").to_string(),
        },
        signer,
        scenarios,
        rss_growth,
        failures,
    })
}

/// Rounds of (ours, OpenSSL's), alternating; the best of each is kept, because on a shared machine
/// other work only ever slows a round down.
const SIGNER_ROUNDS: usize = 3;

/// Signs a typical request on this thread, and runs `openssl speed`, `seconds` each, in
/// [`SIGNER_ROUNDS`] alternating rounds.
fn measure_signer(seconds: u64) -> anyhow::Result<SignerResult> {
    let mut ours: Vec<f64> = Vec::new();
    let mut theirs: Vec<openssl::OpenSslSpeed> = Vec::new();
    let mut openssl_unavailable = None;
    for round in 1..=SIGNER_ROUNDS {
        eprintln!(
            "bench: signer round {round}/{SIGNER_ROUNDS}: ours, then openssl speed -seconds {seconds} rsa2048"
        );
        ours.push(our_signing_rate(seconds)?);
        if openssl_unavailable.is_none() {
            match openssl::measure(seconds) {
                Ok(speed) => theirs.push(speed),
                Err(why) => openssl_unavailable = Some(why),
            }
        }
    }
    let ours_per_second = ours.iter().copied().fold(0.0, f64::max);
    let openssl = theirs
        .into_iter()
        .max_by(|a, b| a.signs_per_second.total_cmp(&b.signs_per_second));
    let ratio = openssl
        .as_ref()
        .map(|speed| ours_per_second / speed.signs_per_second);
    Ok(SignerResult {
        ours_per_second,
        rounds: SIGNER_ROUNDS,
        openssl,
        openssl_unavailable,
        ratio,
    })
}

/// Signatures per second on this thread for `seconds` (after a short warm-up).
fn our_signing_rate(seconds: u64) -> anyhow::Result<f64> {
    let key = PrivateSigningKey::generate()?;
    let body = br#"{"referenceMerchantId":"M-000123","registrationRequestId":"R-000000042","registrationResult":{"registrationStatus":"APPROVED"}}"#;
    let time = request_time_now();
    let path = "/aps/api/v1/merchants/notifyRegistrationStatus";
    let sign = || sign_request(&key, path, "DEMO_CLIENT", &time, body, 1);
    for _ in 0..50 {
        sign()?;
    }
    let budget = Duration::from_secs(seconds.max(1));
    let started = Instant::now();
    let mut signed = 0u64;
    while started.elapsed() < budget {
        std::hint::black_box(sign()?);
        signed += 1;
    }
    Ok(signed as f64 / started.elapsed().as_secs_f64())
}

fn measure_rss_growth(
    short: usize,
    long: usize,
    failures: &mut Vec<(String, String)>,
) -> RssGrowth {
    let mut peak = |events: usize| -> (Option<u64>, bool) {
        eprint!("bench: peak RSS, default settings, {events} events … ");
        let options = DemoOptions {
            events,
            latency: Duration::ZERO,
            max_in_flight: None,
            ordering: None,
            progress: false,
            traces: false,
            exactly_once: false,
        };
        match run_demo_process(&options) {
            Ok(summary) => {
                eprintln!("{:.1} MB", summary.peak_rss_bytes.unwrap_or(0) as f64 / 1e6);
                (summary.peak_rss_bytes, summary.succeeded())
            }
            Err(error) => {
                eprintln!("failed");
                failures.push((format!("rss/{events}"), format!("{error:#}")));
                (None, false)
            }
        }
    };
    let (short_peak, short_ok) = peak(short);
    let (long_peak, long_ok) = peak(long);
    RssGrowth {
        short_events: short as u64,
        long_events: long as u64,
        short_peak_rss_bytes: short_peak,
        long_peak_rss_bytes: long_peak,
        ratio: short_peak
            .zip(long_peak)
            .filter(|(short, _)| *short > 0)
            .map(|(short, long)| long as f64 / short as f64),
        both_succeeded: short_ok && long_ok,
    }
}

/// Runs `regnotify demo --json` with these options as a child process and reads its summary.
/// A demo whose checks fail exits 1 but still prints its summary, which is returned.
fn run_demo_process(options: &DemoOptions) -> anyhow::Result<DemoSummary> {
    let exe = std::env::current_exe().context("cannot find the regnotify executable")?;
    let output = Command::new(exe)
        .arg("demo")
        .arg("--json")
        .args(options.to_args())
        .stdin(Stdio::null())
        .output()
        .context("cannot start regnotify demo")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary = stdout
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .map(serde_json::from_str::<DemoSummary>);
    match summary {
        Some(Ok(summary)) => Ok(summary),
        _ => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
            anyhow::bail!(
                "demo exited with {} and no summary; its last lines: {}",
                output.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )
        }
    }
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo
        .lines()
        .find(|line| line.starts_with("model name"))
        .and_then(|line| line.split_once(':'))
        .map(|(_, model)| model.trim().to_string())
}

fn fraction_text(value: Option<f64>) -> String {
    value.map_or("–".to_string(), |f| format!("{f:.2}"))
}

fn rate_text(value: Option<f64>) -> String {
    value.map_or("–".to_string(), |v| format!("{v:.0}"))
}

impl BenchReport {
    /// The report as tables for people.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let machine = &self.machine;
        out.push_str(&format!(
            "regnotify bench {} — {} cores, {}, started {}, load average {} before, {} after\n\n",
            machine.regnotify_version,
            machine.cores,
            machine.cpu_model.as_deref().unwrap_or("unknown CPU"),
            machine.started_at,
            fraction_text(machine.load_average_before),
            fraction_text(machine.load_average_after),
        ));
        let signer = &self.signer;
        out.push_str(&format!(
            "RSA-2048 PKCS#1 v1.5 SHA-256 signatures per second, one core (best of {} alternating rounds)\n",
            signer.rounds
        ));
        out.push_str(&format!(
            "  regnotify (aws-lc)  {:>8.0}\n",
            signer.ours_per_second
        ));
        match (&signer.openssl, &signer.openssl_unavailable) {
            (Some(speed), _) => out.push_str(&format!(
                "  openssl speed       {:>8.0}   ({})\n  ratio               {:>8.2}\n\n",
                speed.signs_per_second,
                speed.version,
                signer.ratio.unwrap_or(0.0)
            )),
            (None, why) => out.push_str(&format!(
                "  openssl speed       unavailable: {}\n\n",
                why.as_deref().unwrap_or("unknown")
            )),
        }
        out.push_str(
            "demo scenarios (ordering/latency/max_in_flight); rates over the window from the first record \
             consumed to the last outcome,\n  steady: from 10 % to 90 % of the events terminal (no \
             start-up, no tail)\n",
        );
        out.push_str(&format!(
            "  {:<20} {:>6} {:>8} {:>7} {:>9} {:>9} {:>9} {:>8} {:>7} {:>8} {:>6} {:>8} {:>6} {:>6} {:>5} {:>4}\n",
            "scenario",
            "events",
            "ev/s",
            "steady",
            "notify50",
            "notify99",
            "e2e p99",
            "CPU/1k",
            "RSS MB",
            "CPU bnd",
            "frac",
            "lat bnd",
            "frac",
            "steady",
            "load",
            "ok"
        ));
        for result in &self.scenarios {
            let demo = &result.demo;
            out.push_str(&format!(
                "  {:<20} {:>6} {:>8.0} {:>7} {:>7.1}ms {:>7.1}ms {:>7.0}ms {:>7.2}s {:>7.1} {:>8} {:>6} {:>8} {:>6} {:>6} {:>5} {:>4}\n",
                result.name,
                demo.events,
                demo.events_per_second,
                rate_text(demo.steady_events_per_second),
                demo.p50_ms,
                demo.p99_ms,
                demo.end_to_end_p99_ms,
                demo.cpu_seconds_per_1000_events.unwrap_or(f64::NAN),
                demo.peak_rss_bytes.unwrap_or(0) as f64 / 1e6,
                rate_text(result.cpu_bound),
                fraction_text(result.fraction_of_cpu_bound),
                rate_text(result.latency_bound),
                fraction_text(result.fraction_of_latency_bound),
                fraction_text(result.steady_fraction_of_latency_bound),
                fraction_text(result.load_average_before),
                if demo.succeeded() { "yes" } else { "NO" },
            ));
        }
        if let Some(growth) = &self.rss_growth {
            let mb = |bytes: Option<u64>| {
                bytes.map_or("–".to_string(), |b| format!("{:.1} MB", b as f64 / 1e6))
            };
            out.push_str(&format!(
                "\npeak RSS, default settings: {} events {}, {} events {}, ratio {}{}\n",
                growth.short_events,
                mb(growth.short_peak_rss_bytes),
                growth.long_events,
                mb(growth.long_peak_rss_bytes),
                fraction_text(growth.ratio),
                if growth.both_succeeded {
                    ""
                } else {
                    " (a run failed its checks)"
                },
            ));
        }
        let costs = self.tracing_costs();
        if !costs.is_empty() {
            out.push_str(
                "\ntracing: every span recorded and exported (OTLP/HTTP) against export off, same \
                 scenario\n",
            );
            for cost in costs {
                out.push_str(&format!(
                    "  {:<20} events per CPU-second {} of off, events/s {} of off, {} spans \
                     exported of {} (events + calls)\n",
                    cost.scenario,
                    fraction_text(cost.cpu_efficiency_ratio),
                    fraction_text(cost.throughput_ratio),
                    cost.spans_exported,
                    cost.spans_expected,
                ));
            }
        }
        let costs = self.exactly_once_costs();
        if !costs.is_empty() {
            out.push_str(
                "\nexactly-once: outputs and offsets in Kafka transactions against at-least-once, \
                 same scenario\n",
            );
            for cost in costs {
                out.push_str(&format!(
                    "  {:<20} events/s {} of at-least-once, events per CPU-second {} of it\n",
                    cost.scenario,
                    fraction_text(cost.throughput_ratio),
                    fraction_text(cost.cpu_efficiency_ratio),
                ));
            }
        }
        for (name, why) in &self.failures {
            out.push_str(&format!("\nFAILED {name}: {why}\n"));
        }
        out
    }

    /// Each traced scenario against the same scenario with export off.
    pub fn tracing_costs(&self) -> Vec<TracingCost> {
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
    pub fn exactly_once_costs(&self) -> Vec<VariantCost> {
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
pub struct VariantCost {
    pub scenario: String,
    /// Events per CPU-second of the variant over the same without it.
    pub cpu_efficiency_ratio: Option<f64>,
    /// Events per second of the variant over the same without it.
    pub throughput_ratio: Option<f64>,
}

/// What recording and exporting every span cost one scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TracingCost {
    pub scenario: String,
    /// Events per CPU-second with traces over the same without.
    pub cpu_efficiency_ratio: Option<f64>,
    /// Events per second with traces over the same without.
    pub throughput_ratio: Option<f64>,
    pub spans_exported: u64,
    /// One span per event and one per Alipay+ call.
    pub spans_expected: u64,
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
