//! The bench run ([`run`]): the signer, then each selected scenario as its own `regnotify demo
//! --json` process (so its peak RSS is its own), then the service alone, then the RSS growth of a
//! long run against a short one; the machine it ran on.
//!
//! Progress goes to stderr; the report is returned, never printed here.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use super::child::{last_json_line, stderr_tail};
use super::report::{BenchReport, Machine, RssGrowth, ScenarioResult};
use super::scenarios::{Scenario, all_scenarios, quick_scenarios, scenario_events};
use super::service::measure_service;
use super::signer::measure_signer;
use crate::demo::{DemoOptions, DemoSummary};

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
    /// Warm-up and measured events of the service-alone run; `None` skips it.
    pub service: Option<(u64, u64)>,
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
    let service = options.service.and_then(|(warmup, events)| {
        eprint!("bench: the service alone, {events} events after {warmup} … ");
        let openssl = signer.openssl.as_ref().map(|speed| speed.signs_per_second);
        match measure_service(warmup, events, openssl) {
            Ok(run) => {
                eprintln!("{:.0} events/s", run.measurement.events_per_second);
                Some(run)
            }
            Err(error) => {
                eprintln!("failed");
                failures.push(("service".to_string(), format!("{error:#}")));
                None
            }
        }
    });
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
        service,
        rss_growth,
        failures,
    })
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
    match last_json_line::<DemoSummary>(&output.stdout) {
        Some(Ok(summary)) => Ok(summary),
        _ => anyhow::bail!(
            "demo exited with {} and no summary; its last lines: {}",
            output.status,
            stderr_tail(&output.stderr)
        ),
    }
}

/// The 1-minute load average.
pub(crate) fn load_average() -> Option<f64> {
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
