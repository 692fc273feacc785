//! `regnotify demo`: the whole flow on one machine with nothing installed. It starts librdkafka's
//! mock cluster in process (real Kafka protocol over TCP on 127.0.0.1), an in-process Alipay+
//! simulator with fresh keys, produces sample events — mostly valid, some REJECTED decisions, and
//! a few of each failure kind — runs the real pipeline against them and prints a summary.
//!
//! Events are produced in step with consumption (a bounded window ahead of the terminal count),
//! because the mock cluster, like a real broker's retention, keeps only a few megabytes per
//! partition. The demo never judges its own success by its own counters alone: it reads the
//! result and dead-letter topics back (streaming, keeping one bit per input offset, so the check
//! holds at any run length the mock cluster can store) and asks the group coordinator for
//! committed offsets.
//!
//! `--soak` ([`soak`]) reads the outputs while the run goes on instead, for runs longer than the
//! mock cluster can hold, and reports throughput, memory, descriptors and threads over time.
//!
//! Besides correctness it measures itself for `regnotify bench`: events/s, CPU time and quantiles
//! over the window from the first record consumed to the last terminal outcome (the consumer
//! group's start-up left out), and the process's peak RSS.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::{Rng, RngExt, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::alipayplus::{AlipayPlusClient, ClientOptions};
use crate::codec::{EventEncoder, decode_outcome};
use crate::config::{InputEncoding, Ordering, Settings};
use crate::event::DeadLetterReason;
use crate::event::{Decision, RegistrationDecided};
use crate::inspect;
use crate::keys::PrivateSigningKey;
use crate::observe::Stats;
use crate::service::Application;
use crate::simulator::rules::{Fault, FaultRule};
use crate::simulator::{Simulator, SimulatorConfig, SimulatorHandle};
use crate::usage;

mod ledger;
pub mod soak;
mod trace_sink;

pub use trace_sink::TraceExports;

use ledger::{Delivered, Expect, OffsetSet};

const INPUT_TOPIC: &str = "merchant.registration.decided";
const RESULT_TOPIC: &str = "merchant.registration.notify-result";
const DLQ_TOPIC: &str = "merchant.registration.decided.dlq";
pub const INPUT_PARTITIONS: i32 = 4;
/// The mock cluster keeps at most 5 MB or 100,000 records per partition and drops the oldest
/// beyond that; eight partitions hold the outcomes of about 250,000 events for the read-back.
const RESULT_PARTITIONS: i32 = 8;
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
    /// Record a span per event and per attempt and export them over OTLP/HTTP to a receiver in
    /// the demo's process (what tracing costs).
    pub traces: bool,
    /// `processing.exactly_once = true`: outputs and offsets in Kafka transactions.
    pub exactly_once: bool,
}

impl DemoOptions {
    /// The `regnotify demo` arguments that ask for this run (the bench starts each scenario as
    /// its own process, so that its peak RSS is its own).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--events".to_string(),
            self.events.to_string(),
            "--latency-ms".to_string(),
            self.latency.as_millis().to_string(),
        ];
        if let Some(max) = self.max_in_flight {
            args.extend(["--max-in-flight".to_string(), max.to_string()]);
        }
        if let Some(ordering) = self.ordering {
            let name = match ordering {
                Ordering::Key => "key",
                Ordering::Partition => "partition",
            };
            args.extend(["--ordering".to_string(), name.to_string()]);
        }
        if self.traces {
            args.push("--traces".to_string());
        }
        if self.exactly_once {
            args.push("--exactly-once".to_string());
        }
        args
    }
}

/// What the demo saw; printed as a table or as one JSON object (which `regnotify bench` reads
/// back from the demo runs it starts).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
    /// From the start of the pipeline to the last terminal outcome.
    pub elapsed_seconds: f64,
    /// From the start of the pipeline to the first record consumed (joining the group).
    pub startup_seconds: f64,
    /// From the first record consumed to the last terminal outcome: the measured window.
    pub measured_seconds: f64,
    /// Events over the measured window.
    pub events_per_second: f64,
    /// Events over the middle of the run, from 10 % to 90 % of them terminal (no start-up, no
    /// tail); `None` for runs too short to have one.
    #[serde(default)]
    pub steady_events_per_second: Option<f64>,
    /// Notify latency (one HTTP call as the client sees it, signing excluded), all calls.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// From handing an event's outputs to the producer to Kafka's acknowledgement of them, p50.
    #[serde(default)]
    pub output_ack_p50_ms: f64,
    /// From each decodable event's `occurredAt` (set when the demo produced it) to its
    /// terminal outcome.
    pub end_to_end_p99_ms: f64,
    /// CPU time of the whole process (pipeline, simulator, mock cluster, producer) over the
    /// measured window; `None` without `/proc`.
    pub cpu_seconds: Option<f64>,
    pub cpu_seconds_per_1000_events: Option<f64>,
    /// Peak resident set size of the process when the last event finished (before the read-back).
    pub peak_rss_bytes: Option<u64>,
    /// Cores the process may use.
    pub cores: usize,
    pub latency_ms: u64,
    pub max_in_flight: usize,
    pub ordering: String,
    /// With `--traces`: what the OTLP receiver was sent (spans: one per event and per attempt).
    #[serde(default)]
    pub trace_exports: Option<TraceExports>,
    /// Every event reached its terminal state, and Kafka holds exactly one outcome per decodable
    /// event and one dead letter per dead-lettered event.
    pub all_terminal: bool,
    /// The group's committed offset equals the end of every input partition.
    pub all_committed: bool,
    /// Run with `processing.exactly_once`: the in-process cluster answers transactional offset
    /// commits without storing them, so `all_committed` cannot hold (the real-broker suites
    /// check those commits) and is not required.
    #[serde(default)]
    pub exactly_once: bool,
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
    on_mock_cluster(|bootstrap| async move { run_against(&bootstrap, options).await })
}

/// Starts the mock cluster with the demo's topics and an async runtime, and runs `body` on it
/// with the cluster's bootstrap servers; both are gone when it returns.
fn on_mock_cluster<T, F>(body: impl FnOnce(String) -> F) -> anyhow::Result<T>
where
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let cluster = MockCluster::new(1).context("cannot start the in-process kafka cluster")?;
    cluster.create_topic(INPUT_TOPIC, INPUT_PARTITIONS, 1)?;
    cluster.create_topic(RESULT_TOPIC, RESULT_PARTITIONS, 1)?;
    cluster.create_topic(DLQ_TOPIC, 1, 1)?;
    let bootstrap = cluster.bootstrap_servers();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(body(bootstrap));
    drop(runtime);
    drop(cluster);
    result
}

/// What runs against the mock cluster in a demo: the simulator, the watch on merchant order, and
/// the real pipeline.
struct Rig {
    simulator: Arc<SimulatorHandle>,
    order: Arc<std::sync::Mutex<MerchantOrder>>,
    order_watch: tokio::task::JoinHandle<()>,
    settings: Settings,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    pipeline: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// When the pipeline was started.
    started: Instant,
    /// With `--traces`: where the spans go.
    trace_sink: Option<trace_sink::TraceSink>,
}

impl Rig {
    /// Starts the simulator with fresh keys and the pipeline against it. `announce` prints the
    /// admin address on stderr.
    async fn start(bootstrap: &str, options: &DemoOptions, announce: bool) -> anyhow::Result<Rig> {
        let mpp_key = PrivateSigningKey::generate()?;
        let alipayplus_key = PrivateSigningKey::generate()?;
        let mut simulator_config = SimulatorConfig::new(alipayplus_key.clone());
        simulator_config.mpp_public_key = Some(mpp_key.public_key());
        simulator_config.client_ids = vec![CLIENT_ID.into()];
        simulator_config.latency = options.latency;
        simulator_config.rules = simulator_rules();
        let simulator = Arc::new(Simulator::start(simulator_config).await?);
        // Arrivals are checked as they come and then forgotten, so memory stays flat however long
        // the run; the simulator keeps up to 100,000 between two looks, far more than 20 ms bring.
        let order = Arc::new(std::sync::Mutex::new(MerchantOrder::default()));
        let order_watch = tokio::spawn(watch_merchant_order(
            Arc::clone(&simulator),
            Arc::clone(&order),
        ));

        let mut settings = demo_settings(bootstrap, &simulator.base_url(), options);
        let trace_sink = if options.traces {
            let sink = trace_sink::TraceSink::start().await?;
            settings.telemetry.traces = true;
            settings.telemetry.endpoint = Some(sink.endpoint());
            settings.telemetry.protocol = Some(crate::config::OtlpProtocol::HttpProtobuf);
            settings.telemetry.sample_ratio = 1.0;
            Some(sink)
        } else {
            None
        };
        let client = Arc::new(AlipayPlusClient::new(
            ClientOptions::from_settings(&settings.alipayplus),
            mpp_key,
            Some(alipayplus_key.public_key()),
        )?);
        let application = Application::build_with_client(settings.clone(), client).await?;
        let stats = application.stats();
        if announce {
            eprintln!(
                "metrics and health while the demo runs: http://{}/metrics /readyz",
                application.admin_addr()
            );
        }
        let shutdown = CancellationToken::new();
        let started = Instant::now();
        let pipeline = tokio::spawn(application.run_until_stopped(shutdown.clone()));
        Ok(Rig {
            simulator,
            order,
            order_watch,
            settings,
            stats,
            shutdown,
            pipeline,
            started,
            trace_sink,
        })
    }

    /// Lets the periodic commit catch up with the last outcomes, then stops the pipeline and the
    /// simulator. Whether every merchant's requests reached the simulator in order.
    async fn stop(self, bootstrap: &str) -> anyhow::Result<bool> {
        Ok(self.stop_with_traces(bootstrap).await?.0)
    }

    /// [`Rig::stop`], and with `--traces` what the OTLP receiver was sent (the pipeline exports
    /// its last spans as it stops).
    async fn stop_with_traces(
        self,
        bootstrap: &str,
    ) -> anyhow::Result<(bool, Option<TraceExports>)> {
        wait_for_commits(
            bootstrap,
            &self.settings.kafka.group_id,
            Duration::from_secs(10),
        )
        .await;
        self.shutdown.cancel();
        self.pipeline.await.context("pipeline task failed")??;
        self.order_watch.abort();
        // Wait for the aborted task to let go of the simulator.
        let _ = self.order_watch.await;
        let arrivals_dropped = self.simulator.stats().arrivals_dropped;
        let merchants_in_order = {
            let mut order = self
                .order
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            order.observe(self.simulator.take_arrivals());
            // Arrivals the simulator had to drop were never checked: no claim about them.
            order.kept() && arrivals_dropped == 0
        };
        match Arc::try_unwrap(self.simulator) {
            Ok(simulator) => simulator.shutdown().await?,
            Err(_) => anyhow::bail!("the simulator is still shared after the run"),
        }
        let exports = self.trace_sink.as_ref().map(trace_sink::TraceSink::exports);
        Ok((merchants_in_order, exports))
    }
}

async fn run_against(bootstrap: &str, options: &DemoOptions) -> anyhow::Result<DemoSummary> {
    let rig = Rig::start(bootstrap, options, options.progress).await?;
    let (stats, started) = (Arc::clone(&rig.stats), rig.started);
    let settings = rig.settings.clone();
    let first_consumed = tokio::spawn(first_consumption(Arc::clone(&stats)));
    let total = options.events as u64;
    let middle = tokio::spawn(middle_of_the_run(Arc::clone(&stats), total));

    let progress = progress_bar(options.progress, total);
    let merchants = (options.events / 4).max(1);
    let produced = produce_in_step(
        bootstrap,
        options.events,
        merchants,
        &stats,
        &progress,
        |_| {},
    )
    .await?;
    let finished_at = wait_until(Duration::from_secs(120 + total / 50), &progress, || {
        stats.terminal() >= total
    })
    .await;
    let finished = finished_at.unwrap_or_else(Instant::now);
    let cpu_at_end = usage::cpu_time();
    let peak_rss_bytes = usage::peak_rss_bytes();
    let elapsed = finished - started;
    first_consumed.abort();
    let (consuming_from, cpu_at_start) = match first_consumed.await {
        Ok(mark) => mark,
        // Nothing was ever consumed: the whole run is the window.
        Err(_) => (started, None),
    };
    let measured = finished.saturating_duration_since(consuming_from);
    middle.abort();
    let steady_events_per_second = middle.await.ok().flatten().and_then(|(from, to)| {
        let seconds = to.saturating_duration_since(from).as_secs_f64();
        (seconds > 0.0).then(|| STEADY_SHARE * total as f64 / seconds)
    });
    let cpu_seconds = cpu_at_end
        .zip(cpu_at_start)
        .map(|(end, start)| end.saturating_sub(start).as_secs_f64());
    let (merchants_in_order, trace_exports) = rig.stop_with_traces(bootstrap).await?;
    progress.finish_and_clear();
    let bootstrap_owned = bootstrap.to_string();
    let group = settings.kafka.group_id.clone();
    let expected = produced;
    let verified =
        tokio::task::spawn_blocking(move || verify_topics(&bootstrap_owned, &group, &expected))
            .await??;
    let elapsed_seconds = elapsed.as_secs_f64();
    let measured_seconds = measured.as_secs_f64();
    let notify = stats.notify_latencies();
    let ms = |latency: Option<Duration>| latency.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
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
        startup_seconds: consuming_from
            .saturating_duration_since(started)
            .as_secs_f64(),
        measured_seconds,
        events_per_second: if measured_seconds > 0.0 {
            total as f64 / measured_seconds
        } else {
            0.0
        },
        steady_events_per_second,
        p50_ms: ms(notify.quantile(0.50)),
        p99_ms: ms(notify.quantile(0.99)),
        output_ack_p50_ms: ms(stats.output_latencies().quantile(0.50)),
        end_to_end_p99_ms: ms(stats.end_to_end_latencies().quantile(0.99)),
        cpu_seconds,
        cpu_seconds_per_1000_events: cpu_seconds
            .filter(|_| total > 0)
            .map(|cpu| cpu * 1000.0 / total as f64),
        peak_rss_bytes,
        cores: usage::cores(),
        latency_ms: options.latency.as_millis() as u64,
        max_in_flight: settings.processing.max_in_flight,
        ordering: format!("{:?}", settings.processing.ordering).to_lowercase(),
        trace_exports,
        all_terminal: stats.terminal() == total && verified.outputs_match,
        all_committed: verified.all_committed,
        exactly_once: options.exactly_once,
        merchant_order_kept: merchants_in_order,
    })
}

/// The middle of the run whose rate is the steady one: from 10 % to 90 % of the events
/// terminal.
const STEADY_FROM: f64 = 0.1;
const STEADY_SHARE: f64 = 0.8;

/// When 10 % and when 90 % of `total` events were terminal: the start (joining the group, the
/// first fetches) and the tail (the last events of a partition, which under partition ordering
/// run one at a time with nothing else to overlap them) left out.
async fn middle_of_the_run(stats: Arc<Stats>, total: u64) -> Option<(Instant, Instant)> {
    let mark = |share: f64| (total as f64 * share).ceil() as u64;
    let (from, to) = (mark(STEADY_FROM), mark(STEADY_FROM + STEADY_SHARE));
    if to <= from {
        return None;
    }
    let mut from_at = None;
    loop {
        let terminal = stats.terminal();
        if from_at.is_none() && terminal >= from {
            from_at = Some(Instant::now());
        }
        if terminal >= to {
            return from_at.map(|from_at| (from_at, Instant::now()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits for the first consumed record; the instant and the process's CPU time then.
async fn first_consumption(stats: Arc<Stats>) -> (Instant, Option<Duration>) {
    while stats.consumed.load(AtomicOrdering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (Instant::now(), usage::cpu_time())
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
    settings.processing.exactly_once = options.exactly_once;
    settings
}

/// What the sample set should end as.
#[derive(Debug, Default)]
struct Produced {
    decodable: u64,
    dead_letters: u64,
}

/// What the sample event at `index` must end as: an outcome when it can be decoded, a dead letter
/// when it is poison, invalid or refused.
fn expectation(index: usize) -> Expect {
    let kind = sample_kind(index);
    Expect {
        outcome: kind != Sample::Poison,
        dead_letter: matches!(
            kind,
            Sample::Poison
                | Sample::InvalidEmptyId
                | Sample::InvalidLongReason
                | Sample::InvalidClient
        ),
    }
}

/// Produces `events` sample events over `merchants` regular merchants, at most `PRODUCE_WINDOW`
/// ahead of the terminal count; `delivered` hears where each one was written and what it must
/// end as.
async fn produce_in_step(
    bootstrap: &str,
    events: usize,
    merchants: usize,
    stats: &Stats,
    progress: &indicatif::ProgressBar,
    mut delivered: impl FnMut(Delivered),
) -> anyhow::Result<Produced> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    let encoder = EventEncoder::new(InputEncoding::SingleObject, None, INPUT_TOPIC)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut produced = Produced::default();
    let mut deliveries = Vec::with_capacity(1024);
    for index in 0..events {
        while index as u64 >= stats.terminal() + PRODUCE_WINDOW {
            progress.set_position(stats.terminal());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let expect = expectation(index);
        if expect.outcome {
            produced.decodable += 1;
        }
        if expect.dead_letter {
            produced.dead_letters += 1;
        }
        let (key, value) = match sample_event(index, merchants) {
            Some(event) => {
                let value = encoder.encode(&event).await?;
                (event.reference_merchant_id.into_bytes(), value)
            }
            None => {
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
        deliveries.push((expect, delivery));
        if deliveries.len() >= 1024 {
            for (expect, delivery) in deliveries.drain(..) {
                delivered(written(expect, delivery.await?)?);
            }
            progress.set_position(stats.terminal());
        }
    }
    for (expect, delivery) in deliveries {
        delivered(written(expect, delivery.await?)?);
    }
    Ok(produced)
}

/// Where a sample event was written, or why not.
fn written(
    expect: Expect,
    delivery: rdkafka::producer::future_producer::OwnedDeliveryResult,
) -> anyhow::Result<Delivered> {
    let delivery =
        delivery.map_err(|(error, _)| anyhow::anyhow!("sample event not written: {error}"))?;
    Ok(Delivered {
        partition: delivery.partition,
        offset: delivery.offset,
        expect,
    })
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

/// Which input offsets have an outcome: one bit per offset and partition, so the read-back
/// holds a few kilobytes however many events ran.
#[derive(Debug, Default)]
struct OutcomeLedger {
    seen: HashMap<i32, OffsetSet>,
    distinct: u64,
    repeated: u64,
    foreign: u64,
}

impl OutcomeLedger {
    /// Notes an outcome of input record `partition`/`offset`; offsets beyond `max_offset`, or of
    /// another topic, cannot be ours.
    fn note(&mut self, topic: &str, partition: i32, offset: i64, max_offset: u64) {
        let offset = match u64::try_from(offset) {
            Ok(offset) if topic == INPUT_TOPIC && offset <= max_offset => offset,
            _ => {
                self.foreign += 1;
                return;
            }
        };
        if self.seen.entry(partition).or_default().insert(offset) {
            self.distinct += 1;
        } else {
            self.repeated += 1;
        }
    }
}

/// Reads the outputs back from Kafka and checks them against what was produced: one outcome for
/// every decodable input record, none twice, one dead letter for each event that should have one.
fn verify_topics(bootstrap: &str, group: &str, produced: &Produced) -> anyhow::Result<Verified> {
    let timeout = Duration::from_secs(60);
    let mut ledger = OutcomeLedger::default();
    let mut undecodable_outcomes = 0u64;
    let max_offset = produced.decodable + produced.dead_letters;
    let outcomes = inspect::scan_topic(bootstrap, RESULT_TOPIC, timeout, |message| match message
        .payload()
        .map(decode_outcome)
    {
        Some(Ok(outcome)) => ledger.note(
            &outcome.source_topic,
            outcome.source_partition,
            outcome.source_offset,
            max_offset,
        ),
        _ => undecodable_outcomes += 1,
    })?;
    let dead_letters = inspect::scan_topic(bootstrap, DLQ_TOPIC, timeout, |_| {})?;
    if outcomes.dropped + dead_letters.dropped > 0 {
        tracing::error!(
            outcomes_dropped = outcomes.dropped,
            dead_letters_dropped = dead_letters.dropped,
            "the mock cluster dropped output records before they could be read back (it keeps \
             5 MB or 100,000 records per partition); run fewer events"
        );
    }
    let progress = inspect::group_progress(bootstrap, group, INPUT_TOPIC, timeout)?;
    Ok(Verified {
        result_records: outcomes.records,
        dlq_records: dead_letters.records,
        outputs_match: outcomes.dropped == 0
            && dead_letters.dropped == 0
            && undecodable_outcomes == 0
            && ledger.foreign == 0
            && ledger.repeated == 0
            && ledger.distinct == produced.decodable
            && outcomes.records == produced.decodable
            && dead_letters.records == produced.dead_letters,
        all_committed: inspect::fully_committed(&progress),
    })
}

/// Whether, for every merchant, the calls reached the simulator in the order the requests were
/// produced (request ids are numbered in production order; a retry repeats the last id). Fed
/// arrivals as they come; remembers one request id per merchant.
#[derive(Debug, Default)]
struct MerchantOrder {
    last: HashMap<String, String>,
    out_of_order: u64,
}

impl MerchantOrder {
    fn observe(&mut self, arrivals: Vec<crate::simulator::Arrival>) {
        for arrival in arrivals {
            let request = arrival.registration_request_id;
            match self.last.get_mut(&arrival.reference_merchant_id) {
                Some(previous) if request < *previous => self.out_of_order += 1,
                Some(previous) => *previous = request,
                None => {
                    self.last.insert(arrival.reference_merchant_id, request);
                }
            }
        }
    }

    fn kept(&self) -> bool {
        self.out_of_order == 0
    }
}

async fn watch_merchant_order(
    simulator: Arc<SimulatorHandle>,
    order: Arc<std::sync::Mutex<MerchantOrder>>,
) {
    loop {
        let arrivals = simulator.take_arrivals();
        order
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .observe(arrivals);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
        if let Some(exports) = &self.trace_exports {
            line(
                "spans exported (OTLP/HTTP)",
                format!(
                    "{} of {} (one per event and per call), {} requests, {:.1} MB",
                    exports.spans,
                    self.events + self.http_calls,
                    exports.requests,
                    exports.bytes as f64 / 1e6
                ),
            );
        }
        line(
            "settings",
            format!(
                "latency {} ms, max_in_flight {}, ordering {}",
                self.latency_ms, self.max_in_flight, self.ordering
            ),
        );
        line(
            "elapsed",
            format!(
                "{:.2} s ({:.2} s joining the group)",
                self.elapsed_seconds, self.startup_seconds
            ),
        );
        line(
            "throughput",
            format!(
                "{:.0} events/s (first record consumed to last outcome)",
                self.events_per_second
            ),
        );
        if let Some(steady) = self.steady_events_per_second {
            line(
                "steady throughput",
                format!("{steady:.0} events/s (from 10 % to 90 % of the events terminal)"),
            );
        }
        line(
            "notify latency p50 / p99",
            format!("{:.1} ms / {:.1} ms", self.p50_ms, self.p99_ms),
        );
        line(
            "output acknowledgement p50",
            format!("{:.1} ms", self.output_ack_p50_ms),
        );
        line(
            "end-to-end latency p99",
            format!("{:.1} ms", self.end_to_end_p99_ms),
        );
        if let Some(cpu) = self.cpu_seconds_per_1000_events {
            line(
                "CPU per 1,000 events",
                format!("{cpu:.2} s ({} cores)", self.cores),
            );
        }
        if let Some(bytes) = self.peak_rss_bytes {
            line("peak RSS", format!("{:.1} MB", bytes as f64 / 1e6));
        }
        line("every event terminal", yes_no(self.all_terminal));
        if self.exactly_once && !self.all_committed {
            line(
                "every input offset committed",
                "not stored by the in-process cluster (transactional commits)".to_string(),
            );
        } else {
            line("every input offset committed", yes_no(self.all_committed));
        }
        line("per-merchant order kept", yes_no(self.merchant_order_kept));
        out
    }

    pub fn succeeded(&self) -> bool {
        self.all_terminal && (self.all_committed || self.exactly_once) && self.merchant_order_kept
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
        // Per hundred: 99 decodable events with an outcome, and 4 dead letters (poison, two
        // invalid, one refused), of which only the poison one has no outcome.
        let expected: Vec<Expect> = (0..100).map(expectation).collect();
        assert_eq!(expected.iter().filter(|e| e.outcome).count(), 99);
        assert_eq!(expected.iter().filter(|e| e.dead_letter).count(), 4);
        assert!(expected.iter().all(|e| e.outcome || e.dead_letter));
        assert_eq!(
            expectation(0),
            Expect {
                outcome: false,
                dead_letter: true
            }
        );
        let invalid = sample_event(1, 10).map(|e| e.validate().is_err());
        assert_eq!(invalid, Some(true));
    }

    #[test]
    fn the_ledger_counts_each_input_offset_once() {
        let mut ledger = OutcomeLedger::default();
        for offset in [0, 1, 63, 64, 1_000] {
            ledger.note(INPUT_TOPIC, 2, offset, 1_000);
        }
        ledger.note(INPUT_TOPIC, 3, 64, 1_000);
        assert_eq!(
            (ledger.distinct, ledger.repeated, ledger.foreign),
            (6, 0, 0)
        );
        ledger.note(INPUT_TOPIC, 2, 64, 1_000);
        ledger.note(INPUT_TOPIC, 2, 1_001, 1_000);
        ledger.note(INPUT_TOPIC, 2, -1, 1_000);
        ledger.note("other.topic", 2, 5, 1_000);
        assert_eq!(
            (ledger.distinct, ledger.repeated, ledger.foreign),
            (6, 1, 3)
        );
    }

    #[test]
    fn merchant_order_is_checked_across_batches_of_arrivals() {
        let arrival = |merchant: &str, request: &str| crate::simulator::Arrival {
            reference_merchant_id: merchant.into(),
            registration_request_id: request.into(),
            registration_status: "APPROVED".into(),
            ..Default::default()
        };
        let mut order = MerchantOrder::default();
        order.observe(vec![arrival("M-1", "R-001"), arrival("M-2", "R-002")]);
        order.observe(vec![arrival("M-1", "R-001"), arrival("M-1", "R-003")]);
        assert!(order.kept());
        order.observe(vec![arrival("M-2", "R-004"), arrival("M-1", "R-002")]);
        assert!(!order.kept());
    }

    #[test]
    fn options_become_the_demo_command_line() {
        let options = DemoOptions {
            events: 500,
            latency: Duration::from_millis(50),
            max_in_flight: Some(64),
            ordering: Some(Ordering::Partition),
            exactly_once: true,
            progress: false,
            traces: true,
        };
        assert_eq!(
            options.to_args().join(" "),
            "--events 500 --latency-ms 50 --max-in-flight 64 --ordering partition --traces \
             --exactly-once"
        );
    }
}
