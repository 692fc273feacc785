//! `regnotify demo`: the whole flow on one machine with nothing installed. It starts librdkafka's
//! mock cluster in process (real Kafka protocol over TCP on 127.0.0.1), an in-process Alipay+
//! simulator with fresh keys, produces sample events — mostly valid, some REJECTED decisions, and
//! a few of each failure kind — runs the real pipeline against them and prints a summary.
//!
//! Events are produced in step with consumption (a bounded window ahead of the terminal count),
//! because the mock cluster, like a real broker's retention, keeps only a few megabytes per
//! partition. The demo never judges its own success by its own counters alone: it reads the
//! result and dead-letter topics back and asks the group coordinator for committed offsets.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::{Rng, RngExt, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::alipayplus::{AlipayPlusClient, ClientOptions};
use crate::codec::{EventEncoder, decode_outcome};
use crate::config::{InputEncoding, Ordering, Settings};
use crate::event::{Decision, NotifyOutcome, RegistrationDecided};
use crate::inspect;
use crate::keys::PrivateSigningKey;
use crate::observe::Stats;
use crate::pipeline::record::DeadLetterReason;
use crate::service::Application;
use crate::simulator::rules::{Fault, FaultRule};
use crate::simulator::{Simulator, SimulatorConfig};

const INPUT_TOPIC: &str = "merchant.registration.decided";
const RESULT_TOPIC: &str = "merchant.registration.notify-result";
const DLQ_TOPIC: &str = "merchant.registration.decided.dlq";
const INPUT_PARTITIONS: i32 = 4;
const CLIENT_ID: &str = "DEMO_CLIENT";
/// Events produced ahead of the terminal count; far below what the mock cluster retains.
const PRODUCE_WINDOW: u64 = 4_000;

/// What the demo is asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub events: usize,
    pub latency: Duration,
    pub max_in_flight: Option<usize>,
    pub ordering: Option<Ordering>,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// What the demo saw; printed as a table or as one JSON object.
#[derive(Debug, Clone, Serialize)]
pub struct DemoSummary {
    pub events: u64,
    pub notified: u64,
    pub rejected: u64,
    pub dead_lettered: u64,
    /// Undecodable records: dead-lettered, no outcome.
    pub poison: u64,
    pub dlq_records: u64,
    pub dead_letters_by_reason: BTreeMap<String, u64>,
    pub outcomes_by_result_code: BTreeMap<String, u64>,
    /// Outcome records read back from the result topic.
    pub result_records: u64,
    pub http_calls: u64,
    pub retries: u64,
    pub elapsed_seconds: f64,
    pub events_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub latency_ms: u64,
    pub max_in_flight: usize,
    pub ordering: String,
    /// Every event reached its terminal state, and Kafka holds exactly one outcome per decodable
    /// event and one dead letter per dead-lettered event.
    pub all_terminal: bool,
    /// The group's committed offset equals the end of every input partition.
    pub all_committed: bool,
    /// Every merchant's requests reached the simulator in offset order.
    pub merchant_order_kept: bool,
}

/// The kind of sample event at position `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sample {
    Approved,
    RejectedDecision,
    Poison,
    InvalidEmptyId,
    InvalidLongReason,
    UnknownThenSuccess,
    ProcessFail,
    InvalidClient,
}

fn sample_kind(index: usize) -> Sample {
    match index % 100 {
        0 => Sample::Poison,
        1 => Sample::InvalidEmptyId,
        51 => Sample::InvalidLongReason,
        2 | 52 => Sample::UnknownThenSuccess,
        3 => Sample::ProcessFail,
        4 => Sample::InvalidClient,
        n if n % 10 == 5 => Sample::RejectedDecision,
        _ => Sample::Approved,
    }
}

/// Sample event `index`, or `None` for a poison record.
fn sample_event(index: usize, merchants: usize) -> Option<RegistrationDecided> {
    let kind = sample_kind(index);
    let merchant = match kind {
        Sample::Poison => return None,
        Sample::InvalidEmptyId => String::new(),
        Sample::UnknownThenSuccess => format!("M-RETRY-{index}"),
        Sample::ProcessFail => format!("M-FAIL-{index}"),
        Sample::InvalidClient => format!("M-DENY-{index}"),
        _ => format!("M-{:06}", index % merchants),
    };
    let (decision, reason) = match kind {
        Sample::RejectedDecision => (Decision::Rejected, Some("incomplete KYC documents".into())),
        Sample::InvalidLongReason => (Decision::Rejected, Some("x".repeat(300))),
        _ => (Decision::Approved, None),
    };
    Some(RegistrationDecided {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at_ms: chrono::Utc::now().timestamp_millis(),
        reference_merchant_id: merchant,
        registration_request_id: format!("R-{index:09}"),
        decision,
        rejection_reason: reason,
        psp_id: None,
    })
}

fn simulator_rules() -> Vec<FaultRule> {
    vec![
        FaultRule::for_prefix(
            "M-RETRY-",
            Fault::Result {
                status: "U".into(),
                code: "UNKNOWN_EXCEPTION".into(),
                message: None,
            },
        )
        .times(1),
        FaultRule::for_prefix(
            "M-FAIL-",
            Fault::Result {
                status: "F".into(),
                code: "PROCESS_FAIL".into(),
                message: Some("do not retry".into()),
            },
        ),
        FaultRule::for_prefix(
            "M-DENY-",
            Fault::Result {
                status: "F".into(),
                code: "INVALID_CLIENT".into(),
                message: None,
            },
        ),
    ]
}

/// Runs the demo to the end. Blocking: it owns the mock cluster, which must stay on this thread.
pub fn run(options: &DemoOptions) -> anyhow::Result<DemoSummary> {
    let cluster = MockCluster::new(1).context("cannot start the in-process kafka cluster")?;
    cluster.create_topic(INPUT_TOPIC, INPUT_PARTITIONS, 1)?;
    cluster.create_topic(RESULT_TOPIC, INPUT_PARTITIONS, 1)?;
    cluster.create_topic(DLQ_TOPIC, 1, 1)?;
    let bootstrap = cluster.bootstrap_servers();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let summary = runtime.block_on(run_against(&bootstrap, options));
    drop(runtime);
    drop(cluster);
    summary
}

async fn run_against(bootstrap: &str, options: &DemoOptions) -> anyhow::Result<DemoSummary> {
    let mpp_key = PrivateSigningKey::generate()?;
    let alipayplus_key = PrivateSigningKey::generate()?;
    let mut simulator_config = SimulatorConfig::new(alipayplus_key.clone());
    simulator_config.mpp_public_key = Some(mpp_key.public_key());
    simulator_config.client_ids = vec![CLIENT_ID.into()];
    simulator_config.latency = options.latency;
    simulator_config.rules = simulator_rules();
    let simulator = Simulator::start(simulator_config).await?;

    let settings = demo_settings(bootstrap, &simulator.base_url(), options);
    let client = Arc::new(AlipayPlusClient::new(
        ClientOptions::from_settings(&settings.alipayplus),
        mpp_key,
        Some(alipayplus_key.public_key()),
    )?);
    let application = Application::build_with_client(settings.clone(), client).await?;
    let stats = application.stats();
    if options.progress {
        eprintln!(
            "metrics and health while the demo runs: http://{}/metrics /readyz",
            application.admin_addr()
        );
    }
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let pipeline = tokio::spawn(application.run_until_stopped(shutdown.clone()));

    let total = options.events as u64;
    let progress = progress_bar(options.progress, total);
    let produced = produce_in_step(bootstrap, options.events, &stats, &progress).await?;
    let finished_at = wait_until(Duration::from_secs(120 + total / 50), &progress, || {
        stats.terminal() >= total
    })
    .await;
    let elapsed = finished_at.unwrap_or_else(Instant::now) - started;
    // Let the periodic commit catch up with the last outcomes before stopping.
    let bootstrap_owned = bootstrap.to_string();
    let group = settings.kafka.group_id.clone();
    wait_for_commits(&bootstrap_owned, &group, Duration::from_secs(10)).await;
    shutdown.cancel();
    pipeline.await.context("pipeline task failed")??;
    progress.finish_and_clear();
    let simulator_stats = simulator.stats();
    simulator.shutdown().await?;

    let merchants_in_order = merchant_order_kept(&simulator_stats.arrivals);
    let expected = produced;
    let verified =
        tokio::task::spawn_blocking(move || verify_topics(&bootstrap_owned, &group, &expected))
            .await??;
    let elapsed_seconds = elapsed.as_secs_f64();
    let ms = |q: f64| {
        stats
            .latency_quantile(q)
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    Ok(DemoSummary {
        events: total,
        notified: stats.notified.load(AtomicOrdering::Relaxed),
        rejected: stats.rejected.load(AtomicOrdering::Relaxed),
        dead_lettered: stats.dead_lettered.load(AtomicOrdering::Relaxed),
        poison: stats.poison.load(AtomicOrdering::Relaxed),
        dlq_records: verified.dlq_records,
        dead_letters_by_reason: DeadLetterReason::ALL
            .into_iter()
            .map(|reason| (reason.as_str().to_string(), stats.dead_letters(reason)))
            .collect(),
        outcomes_by_result_code: stats.result_codes(),
        result_records: verified.result_records,
        http_calls: stats.http_calls.load(AtomicOrdering::Relaxed),
        retries: stats.retries.load(AtomicOrdering::Relaxed),
        elapsed_seconds,
        events_per_second: if elapsed_seconds > 0.0 {
            total as f64 / elapsed_seconds
        } else {
            0.0
        },
        p50_ms: ms(0.50),
        p99_ms: ms(0.99),
        latency_ms: options.latency.as_millis() as u64,
        max_in_flight: settings.processing.max_in_flight,
        ordering: format!("{:?}", settings.processing.ordering).to_lowercase(),
        all_terminal: stats.terminal() == total && verified.outputs_match,
        all_committed: verified.all_committed,
        merchant_order_kept: merchants_in_order,
    })
}

fn demo_settings(bootstrap: &str, simulator_url: &str, options: &DemoOptions) -> Settings {
    let mut settings = Settings::default();
    settings.kafka.bootstrap_servers = bootstrap.to_string();
    settings.kafka.group_id = "regnotify-demo".into();
    settings.kafka.input_encoding = InputEncoding::Auto;
    settings.alipayplus.base_url = simulator_url.to_string();
    settings.alipayplus.allow_insecure_http = true;
    settings.alipayplus.client_id = CLIENT_ID.into();
    // Any free port on loopback: the demo must never collide with a running service.
    settings.admin.listen = "127.0.0.1:0".into();
    // Short backoff so the U-then-S samples finish quickly; the budget itself is the default.
    settings.processing.backoff_initial = Duration::from_millis(50);
    settings.processing.backoff_max = Duration::from_secs(1);
    settings.processing.commit_interval = Duration::from_millis(200);
    settings.processing.shutdown_timeout = Duration::from_secs(10);
    if let Some(max) = options.max_in_flight {
        settings.processing.max_in_flight = max.max(1);
    }
    if let Some(ordering) = options.ordering {
        settings.processing.ordering = ordering;
    }
    settings
}

/// What the sample set should end as.
#[derive(Debug, Default)]
struct Produced {
    decodable: u64,
    dead_letters: u64,
}

async fn produce_in_step(
    bootstrap: &str,
    events: usize,
    stats: &Stats,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<Produced> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    let encoder = EventEncoder::new(InputEncoding::SingleObject, None, INPUT_TOPIC)?;
    let merchants = (events / 4).max(1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut produced = Produced::default();
    let mut deliveries = Vec::with_capacity(1024);
    for index in 0..events {
        while index as u64 >= stats.terminal() + PRODUCE_WINDOW {
            progress.set_position(stats.terminal());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (key, value) = match sample_event(index, merchants) {
            Some(event) => {
                produced.decodable += 1;
                if matches!(
                    sample_kind(index),
                    Sample::InvalidEmptyId | Sample::InvalidLongReason | Sample::InvalidClient
                ) {
                    produced.dead_letters += 1;
                }
                let value = encoder.encode(&event).await?;
                (event.reference_merchant_id.into_bytes(), value)
            }
            None => {
                produced.dead_letters += 1;
                let mut garbage = vec![0u8; rng.random_range(1..64)];
                rng.fill_bytes(&mut garbage);
                garbage[0] = 0x7f;
                (b"poison".to_vec(), garbage)
            }
        };
        let record = FutureRecord::to(INPUT_TOPIC).key(&key).payload(&value);
        let delivery = producer
            .send_result(record)
            .map_err(|(error, _)| anyhow::anyhow!("cannot queue sample event: {error}"))?;
        deliveries.push(delivery);
        if deliveries.len() >= 1024 {
            for delivery in deliveries.drain(..) {
                delivery
                    .await?
                    .map_err(|(error, _)| anyhow::anyhow!("sample event not written: {error}"))?;
            }
            progress.set_position(stats.terminal());
        }
    }
    for delivery in deliveries {
        delivery
            .await?
            .map_err(|(error, _)| anyhow::anyhow!("sample event not written: {error}"))?;
    }
    Ok(produced)
}

fn progress_bar(visible: bool, total: u64) -> indicatif::ProgressBar {
    if !visible {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} events terminal ({per_sec})",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Polls `done` until it holds or `timeout` passes; the instant it first held.
async fn wait_until(
    timeout: Duration,
    progress: &indicatif::ProgressBar,
    done: impl Fn() -> bool,
) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    let stats_bar = progress.clone();
    loop {
        if done() {
            return Some(Instant::now());
        }
        if Instant::now() >= deadline {
            return None;
        }
        stats_bar.tick();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_for_commits(bootstrap: &str, group: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let (bootstrap, group) = (bootstrap.to_string(), group.to_string());
        let progress = tokio::task::spawn_blocking(move || {
            inspect::group_progress(&bootstrap, &group, INPUT_TOPIC, Duration::from_secs(5))
        })
        .await;
        if let Ok(Ok(progress)) = progress
            && inspect::fully_committed(&progress)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Debug)]
struct Verified {
    result_records: u64,
    dlq_records: u64,
    outputs_match: bool,
    all_committed: bool,
}

/// Reads the outputs back from Kafka and checks them against what was produced.
fn verify_topics(bootstrap: &str, group: &str, produced: &Produced) -> anyhow::Result<Verified> {
    let timeout = Duration::from_secs(10);
    let outcomes = inspect::read_topic(
        bootstrap,
        RESULT_TOPIC,
        produced.decodable as usize,
        timeout,
    )?;
    let dead_letters = inspect::read_topic(
        bootstrap,
        DLQ_TOPIC,
        produced.dead_letters as usize,
        timeout,
    )?;
    let mut per_event: HashMap<String, NotifyOutcome> = HashMap::new();
    let mut undecodable_outcomes = 0;
    for record in &outcomes {
        match record.value.as_deref().map(decode_outcome) {
            Some(Ok(outcome)) => {
                per_event.insert(outcome.event_id, outcome.outcome);
            }
            _ => undecodable_outcomes += 1,
        }
    }
    // Nothing after the last expected record may be waiting either: read a little more.
    let extra = inspect::read_topic(
        bootstrap,
        RESULT_TOPIC,
        produced.decodable as usize + 1,
        Duration::from_millis(500),
    )?;
    let progress = inspect::group_progress(bootstrap, group, INPUT_TOPIC, timeout)?;
    Ok(Verified {
        result_records: outcomes.len() as u64,
        dlq_records: dead_letters.len() as u64,
        outputs_match: undecodable_outcomes == 0
            && per_event.len() as u64 == produced.decodable
            && extra.len() as u64 == produced.decodable
            && dead_letters.len() as u64 == produced.dead_letters,
        all_committed: inspect::fully_committed(&progress),
    })
}

/// Whether, for every merchant, the first call of each request reached the simulator in the
/// order the requests were produced (request ids are numbered in production order).
fn merchant_order_kept(arrivals: &[crate::simulator::stats::Arrival]) -> bool {
    let mut last: HashMap<&str, &str> = HashMap::new();
    for arrival in arrivals {
        let request = arrival.registration_request_id.as_str();
        match last.get(arrival.reference_merchant_id.as_str()) {
            Some(previous) if request < *previous => return false,
            _ => {
                last.insert(arrival.reference_merchant_id.as_str(), request);
            }
        }
    }
    true
}

impl DemoSummary {
    /// The summary as the table `regnotify demo` prints.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let mut line = |label: &str, value: String| {
            out.push_str(&format!("  {label:<34} {value}\n"));
        };
        line("events produced", self.events.to_string());
        line("outcome NOTIFIED", self.notified.to_string());
        line("outcome REJECTED", self.rejected.to_string());
        line("outcome DEAD_LETTERED", self.dead_lettered.to_string());
        line("undecodable (dead letter only)", self.poison.to_string());
        for (code, count) in &self.outcomes_by_result_code {
            line(&format!("  result code {code}"), count.to_string());
        }
        line(
            "dead letters in the DLQ topic",
            self.dlq_records.to_string(),
        );
        for (reason, count) in &self.dead_letters_by_reason {
            line(&format!("  reason {reason}"), count.to_string());
        }
        line(
            "outcomes in the result topic",
            self.result_records.to_string(),
        );
        line("HTTP calls to Alipay+", self.http_calls.to_string());
        line("retries", self.retries.to_string());
        line(
            "settings",
            format!(
                "latency {} ms, max_in_flight {}, ordering {}",
                self.latency_ms, self.max_in_flight, self.ordering
            ),
        );
        line("elapsed", format!("{:.2} s", self.elapsed_seconds));
        line(
            "throughput",
            format!("{:.0} events/s", self.events_per_second),
        );
        line(
            "notify latency p50 / p99",
            format!("{:.1} ms / {:.1} ms", self.p50_ms, self.p99_ms),
        );
        line("every event terminal", yes_no(self.all_terminal));
        line("every input offset committed", yes_no(self.all_committed));
        line("per-merchant order kept", yes_no(self.merchant_order_kept));
        out
    }

    pub fn succeeded(&self) -> bool {
        self.all_terminal && self.all_committed && self.merchant_order_kept
    }
}

fn yes_no(value: bool) -> String {
    if value { "yes" } else { "NO" }.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_mix_has_every_kind() {
        let kinds: Vec<Sample> = (0..100).map(sample_kind).collect();
        for kind in [
            Sample::Approved,
            Sample::RejectedDecision,
            Sample::Poison,
            Sample::InvalidEmptyId,
            Sample::InvalidLongReason,
            Sample::UnknownThenSuccess,
            Sample::ProcessFail,
            Sample::InvalidClient,
        ] {
            assert!(kinds.contains(&kind), "{kind:?}");
        }
        assert!(sample_event(0, 10).is_none());
        let invalid = sample_event(1, 10).map(|e| e.validate().is_err());
        assert_eq!(invalid, Some(true));
    }
}
