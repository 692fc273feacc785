//! The one harness every Kafka test shares: a Kafka (librdkafka's mock cluster over TCP by
//! default, a real broker when `REGNOTIFY_TEST_BOOTSTRAP` is set), random topic and group names,
//! an Alipay+ simulator over HTTP with fresh keys, a Schema Registry stand-in, and the real
//! pipeline.
//!
//! It fails closed: reads take whole topics (up to the end offsets, so an extra outcome or dead
//! letter is seen), committed offsets can be sampled through a run to prove they never move
//! backwards, and with `REGNOTIFY_REQUIRE_REAL_BROKER=1` (CI's real-broker step) a test that
//! needs a real broker fails instead of skipping when none is named.
//!
//! - [`registry`]: the Schema Registry stand-in (it can go down and come back).
//! - [`service`]: `regnotify run` as a child process (SIGTERM, SIGKILL, logs).
//! - [`broker`]: stopping and restarting the broker of `scripts/kafka-local.sh`.
//!
//! Long (about 1,000 lines) because it is the one harness: every suite's set-up, produce and
//! read-back in one place, so that no suite grows a second way of doing them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod broker;
pub mod registry;
pub mod service;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use regnotify::codec::{self, decode_outcome, schemas};
use regnotify::config::Settings;
use regnotify::event::{Decision, RegistrationDecided, RegistrationNotifyOutcome};
use regnotify::inspect::{self, PartitionProgress, ReadRecord};
use regnotify::keys::PrivateSigningKey;
use regnotify::observe::{Health, Stats};
use regnotify::service::Application;
use regnotify::simulator::rules::FaultRule;
use regnotify::simulator::{PairedSimulator, SimulatorHandle, paired_client};

use registry::RegistryStub;

pub const CLIENT_ID: &str = "TEST_CLIENT";

/// The environment variable naming a real broker for the integration suite.
pub const BOOTSTRAP_ENV: &str = "REGNOTIFY_TEST_BOOTSTRAP";

/// Set (to anything but `0`) where a real broker must be used: a test that needs one fails
/// instead of skipping, and the mock cluster is refused. CI's real-broker step sets it.
pub const REQUIRE_REAL_BROKER_ENV: &str = "REGNOTIFY_REQUIRE_REAL_BROKER";

/// The schema id under which the harness's registry knows the current input schema.
pub const INPUT_SCHEMA_ID: u32 = 1;

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// `regnotify` (the binary under test) with none of this process's `REGNOTIFY_*` variables: its
/// settings come from the test alone, not from the test run's (`REGNOTIFY_TEST_BOOTSTRAP`, CI's
/// `REGNOTIFY_REQUIRE_*`) or a developer's environment.
pub fn regnotify_binary() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_regnotify"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("REGNOTIFY_") {
            command.env_remove(name);
        }
    }
    command
}

/// Whether a real broker is required here (see [`REQUIRE_REAL_BROKER_ENV`]).
pub fn real_broker_required() -> bool {
    std::env::var(REQUIRE_REAL_BROKER_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// With `REGNOTIFY_TEST_LOG` set to a tracing filter (e.g. `regnotify=debug`), the in-process
/// pipeline logs to the test output (shown for failed tests, or with `--nocapture`).
pub const TEST_LOG_ENV: &str = "REGNOTIFY_TEST_LOG";

fn init_test_log() {
    let Ok(filter) = std::env::var(TEST_LOG_ENV) else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_test_writer()
        .try_init();
}

/// Writes past libtest's output capture (it captures only `print!`/`eprint!`).
pub fn note(message: &str) {
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// Whether `test` can run: true with a real broker. Without one it says the test was skipped
/// and returns false, or panics when a real broker is required (CI's real-broker step).
pub fn real_broker_or_skip(test: &str) -> bool {
    if std::env::var(BOOTSTRAP_ENV).is_ok() {
        return true;
    }
    assert!(
        !real_broker_required(),
        "{test}: needs a real broker, and {REQUIRE_REAL_BROKER_ENV} forbids skipping it: set \
         {BOOTSTRAP_ENV} (see scripts/kafka-local.sh)"
    );
    note(&format!(
        "{test}: skipped: needs a real broker (set {BOOTSTRAP_ENV}, see scripts/kafka-local.sh)"
    ));
    false
}

/// The Kafka a test runs against.
pub struct TestKafka {
    mock: Option<MockCluster<'static, DefaultProducerContext>>,
    pub bootstrap: String,
}

impl TestKafka {
    pub fn start() -> TestKafka {
        if let Ok(bootstrap) = std::env::var(BOOTSTRAP_ENV) {
            return TestKafka {
                mock: None,
                bootstrap,
            };
        }
        assert!(
            !real_broker_required(),
            "{REQUIRE_REAL_BROKER_ENV} is set but {BOOTSTRAP_ENV} is not: this run must use a \
             real broker, not the mock cluster"
        );
        let mock = MockCluster::new(1).expect("mock cluster");
        let bootstrap = mock.bootstrap_servers();
        TestKafka {
            mock: Some(mock),
            bootstrap,
        }
    }

    pub fn is_real(&self) -> bool {
        self.mock.is_none()
    }

    /// librdkafka's mock cluster, for fault injection; `None` on a real broker.
    pub fn mock(&self) -> Option<&MockCluster<'static, DefaultProducerContext>> {
        self.mock.as_ref()
    }

    pub async fn create_topic(&self, name: &str, partitions: i32) {
        if let Some(mock) = &self.mock {
            mock.create_topic(name, partitions, 1).expect("mock topic");
            return;
        }
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("admin client");
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let results = admin
            .create_topics([&topic], &AdminOptions::new())
            .await
            .expect("create topics");
        for result in results {
            result.expect("topic created");
        }
    }
}

pub fn event(merchant: &str, request: &str) -> RegistrationDecided {
    RegistrationDecided {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at_ms: chrono::Utc::now().timestamp_millis(),
        reference_merchant_id: merchant.to_string(),
        registration_request_id: request.to_string(),
        decision: Decision::Approved,
        rejection_reason: None,
        psp_id: None,
    }
}

/// `count` events over `merchants` merchants (`M-000`…), requests `R-00000`….
pub fn merchant_events(count: usize, merchants: usize) -> Vec<RegistrationDecided> {
    (0..count)
        .map(|i| event(&format!("M-{:03}", i % merchants), &format!("R-{i:05}")))
        .collect()
}

/// How an input value is framed (SPEC 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Confluent wire format with [`INPUT_SCHEMA_ID`] (the harness's registry knows it).
    Confluent,
    SingleObject,
    /// Plain Avro binary: only `input_encoding = "raw"` reads it.
    Raw,
    /// Confluent and single-object in turn, event by event: what `input_encoding = "auto"`
    /// (the default) must take in one stream.
    Mixed,
}

/// Encodes the `index`-th event of a stream in `framing`.
pub fn encode(event: &RegistrationDecided, framing: Framing, index: usize) -> Vec<u8> {
    let framing = match framing {
        Framing::Mixed if index.is_multiple_of(2) => Framing::Confluent,
        Framing::Mixed => Framing::SingleObject,
        other => other,
    };
    match framing {
        Framing::Confluent => codec::encode_event_confluent(INPUT_SCHEMA_ID, event),
        Framing::SingleObject => codec::encode_event_single_object(event),
        Framing::Raw | Framing::Mixed => codec::encode_event_raw(event),
    }
    .expect("event encodes")
}

/// Everything one test needs. The mock cluster lives as long as the harness.
pub struct Harness {
    pub kafka: TestKafka,
    pub input: String,
    pub result: String,
    pub dlq: String,
    pub group: String,
    pub simulator: SimulatorHandle,
    /// Knows the input schema as [`INPUT_SCHEMA_ID`]; [`Harness::settings`] points at it.
    pub registry: RegistryStub,
    pub mpp_key: PrivateSigningKey,
    pub alipayplus_key: PrivateSigningKey,
    producer: FutureProducer,
}

/// A pipeline running in the background.
pub struct RunningPipeline {
    pub stats: Arc<Stats>,
    pub status: Arc<Health>,
    /// Where the service's `/metrics`, `/healthz` and `/readyz` answer.
    pub admin_url: String,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl RunningPipeline {
    /// Runs a built service in the background until [`RunningPipeline::stop`].
    fn run(application: Application) -> RunningPipeline {
        let (stats, status) = (application.stats(), application.health());
        let admin_url = format!("http://{}", application.admin_addr());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(application.run_until_stopped(shutdown.clone()));
        RunningPipeline {
            stats,
            status,
            admin_url,
            shutdown,
            task,
        }
    }

    /// SIGTERM-style stop; returns how long the pipeline took to stop.
    pub async fn stop(self) -> Duration {
        let started = Instant::now();
        self.shutdown.cancel();
        self.task
            .await
            .expect("pipeline task")
            .expect("pipeline ends cleanly");
        started.elapsed()
    }

    /// Polls `done` until it holds, like [`eventually`], but fails at once, with the
    /// pipeline's error, should the pipeline end on its own meanwhile.
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut() -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !done() {
            if self.task.is_finished() {
                let ended = (&mut self.task).await;
                panic!("the pipeline ended on its own while waiting for {what}: {ended:?}");
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Panics when the pipeline already ended (it should run until stopped).
    pub fn assert_running(&self) {
        assert!(
            !self.task.is_finished(),
            "the pipeline stopped on its own (see the log)"
        );
    }
}

impl Harness {
    pub async fn new(partitions: i32, rules: Vec<FaultRule>) -> Harness {
        Self::with_latency(partitions, rules, Duration::ZERO).await
    }

    pub async fn with_latency(
        partitions: i32,
        rules: Vec<FaultRule>,
        latency: Duration,
    ) -> Harness {
        init_test_log();
        let kafka = TestKafka::start();
        let input = unique("decided");
        let result = unique("result");
        let dlq = unique("dlq");
        kafka.create_topic(&input, partitions).await;
        kafka.create_topic(&result, partitions).await;
        kafka.create_topic(&dlq, 1).await;
        let PairedSimulator {
            simulator,
            mpp_key,
            alipayplus_key,
        } = PairedSimulator::start(test_key(0), test_key(1), CLIENT_ID, |config| {
            config.rules = rules;
            config.latency = latency;
        })
        .await
        .expect("simulator");
        let registry = RegistryStub::start().await;
        registry.add(INPUT_SCHEMA_ID, schemas::INPUT_SCHEMA_VERSIONS[0].json);
        let producer = producer(&kafka.bootstrap, &[]);
        Harness {
            kafka,
            input,
            result,
            dlq,
            group: unique("group"),
            simulator,
            registry,
            mpp_key,
            alipayplus_key,
            producer,
        }
    }

    /// Settings for a pipeline against this harness, with quick retries. The schema registry is
    /// configured, so outputs are in Confluent framing (`output_encoding = "auto"`).
    pub fn settings(&self) -> Settings {
        let mut settings = Settings::default();
        settings.kafka.bootstrap_servers = self.kafka.bootstrap.clone();
        settings.kafka.group_id = self.group.clone();
        settings.kafka.input_topic = self.input.clone();
        settings.kafka.result_topic = self.result.clone();
        settings.kafka.dlq_topic = self.dlq.clone();
        settings.admin.listen = "127.0.0.1:0".into();
        settings.schema_registry = Some(self.registry.settings());
        settings.alipayplus.base_url = self.simulator.base_url();
        settings.alipayplus.allow_insecure_http = true;
        settings.alipayplus.client_id = CLIENT_ID.into();
        settings.alipayplus.request_timeout = Duration::from_secs(2);
        settings.processing.max_attempts = 3;
        settings.processing.backoff_initial = Duration::from_millis(10);
        settings.processing.backoff_max = Duration::from_millis(50);
        settings.processing.commit_interval = Duration::from_millis(100);
        settings.processing.shutdown_timeout = Duration::from_secs(10);
        settings.processing.rebalance_drain_timeout = Duration::from_secs(5);
        settings
            .kafka
            .consumer
            .0
            .insert("session.timeout.ms".into(), "6000".into());
        // Members notice a rebalance within half a second, not librdkafka's default 3 s.
        settings
            .kafka
            .consumer
            .0
            .insert("heartbeat.interval.ms".into(), "500".into());
        settings
    }

    /// Starts the service as `regnotify run` does ([`Application`]: the admin listener bound
    /// first, then the pipeline), with this harness's keys in memory.
    pub async fn start_pipeline(&self, settings: Settings) -> RunningPipeline {
        let client = paired_client(&settings.alipayplus, &self.mpp_key, &self.alipayplus_key)
            .expect("client");
        let application = Application::build_with_client(settings, client)
            .await
            .expect("the service builds");
        RunningPipeline::run(application)
    }

    /// Starts the service exactly as `regnotify run` does ([`Application::build`]): every key is
    /// loaded from the files the settings name, and watched for changes while it runs.
    pub async fn start_service(&self, settings: Settings) -> RunningPipeline {
        let application = Application::build(settings)
            .await
            .expect("the service builds");
        RunningPipeline::run(application)
    }

    /// Produces events keyed by merchant, Confluent and single-object framing in turn (both
    /// auto-detected), and waits for the acks.
    pub async fn produce(&self, events: &[RegistrationDecided]) {
        self.produce_framed(events, Framing::Mixed).await;
    }

    pub async fn produce_framed(&self, events: &[RegistrationDecided], framing: Framing) {
        produce_events(&self.producer, &self.input, events, framing).await;
    }

    /// Produces `(key, value)` records as they are, sent together, and waits for the acks.
    pub async fn produce_values(&self, records: &[(Vec<u8>, Vec<u8>)]) {
        let mut acks = Vec::with_capacity(records.len());
        for (key, value) in records {
            let record = FutureRecord::to(&self.input).key(key).payload(value);
            acks.push(
                self.producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .expect("record queued"),
            );
        }
        for ack in acks {
            ack.await.expect("delivery").expect("input record written");
        }
    }

    /// A producer of input records of its own (idempotent), with extra librdkafka properties
    /// such as `compression.type`.
    pub fn producer(&self, properties: &[(&str, &str)]) -> FutureProducer {
        producer(&self.kafka.bootstrap, properties)
    }

    pub async fn produce_raw(&self, key: &[u8], value: &[u8], headers: &[(&str, &[u8])]) {
        let mut owned = OwnedHeaders::new();
        for (name, value) in headers {
            owned = owned.insert(Header {
                key: name,
                value: Some(*value),
            });
        }
        let record = FutureRecord::to(&self.input)
            .key(key)
            .payload(value)
            .headers(owned);
        self.producer
            .send(record, Timeout::After(Duration::from_secs(10)))
            .await
            .expect("input record written");
    }

    /// Every record of `topic` below its end offsets, as a `read_committed` reader sees them.
    pub async fn read_whole(&self, topic: &str) -> Vec<ReadRecord> {
        let (bootstrap, topic) = (self.kafka.bootstrap.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            read_whole_topic(
                &bootstrap,
                &topic,
                Isolation::ReadCommitted,
                WHOLE_READ_TIMEOUT,
            )
        })
        .await
        .unwrap()
    }

    /// The whole result topic, decoded.
    pub async fn outcomes(&self) -> Vec<RegistrationNotifyOutcome> {
        decode_outcomes(&self.read_whole(&self.result).await)
    }

    /// The whole dead-letter topic.
    pub async fn dead_letters(&self) -> Vec<ReadRecord> {
        self.read_whole(&self.dlq).await
    }

    /// Waits until the result topic holds at least `at_least` outcomes, then returns the whole
    /// topic (possibly more: callers compare the count themselves).
    pub async fn wait_outcomes(
        &self,
        at_least: usize,
        timeout: Duration,
    ) -> Vec<RegistrationNotifyOutcome> {
        decode_outcomes(&self.wait_records(&self.result, at_least, timeout).await)
    }

    /// Waits until every one of `events` has an outcome on the result topic (as a
    /// `read_committed` reader sees it), then returns the whole topic.
    pub async fn wait_outcomes_of(
        &self,
        events: &[RegistrationDecided],
        timeout: Duration,
    ) -> Vec<RegistrationNotifyOutcome> {
        let deadline = Instant::now() + timeout;
        loop {
            let outcomes = self.outcomes().await;
            let seen = outcomes_per_event(&outcomes);
            let missing = events
                .iter()
                .filter(|e| !seen.contains_key(e.event_id.as_str()))
                .count();
            if missing == 0 {
                return outcomes;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the outcomes of {missing} events"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the dead-letter topic holds at least `at_least` records, then returns it whole.
    pub async fn wait_dead_letters(&self, at_least: usize, timeout: Duration) -> Vec<ReadRecord> {
        self.wait_records(&self.dlq, at_least, timeout).await
    }

    async fn wait_records(
        &self,
        topic: &str,
        at_least: usize,
        timeout: Duration,
    ) -> Vec<ReadRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            // The end offsets bound the record count from above (transaction markers take
            // offsets too): cheap to ask, and the whole topic is read only when it may be enough.
            if self.end_offsets(topic).await.values().sum::<i64>() >= at_least as i64 {
                let records = self.read_whole(topic).await;
                if records.len() >= at_least {
                    return records;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {at_least} records on {topic}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The end offset of every partition of `topic`.
    pub async fn end_offsets(&self, topic: &str) -> BTreeMap<i32, i64> {
        let (bootstrap, topic) = (self.kafka.bootstrap.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            let consumer = reader(&bootstrap, Isolation::ReadUncommitted, false);
            end_offsets(&consumer, &topic)
        })
        .await
        .unwrap()
    }

    /// The group's progress on the input, once; a loop keeps a [`Harness::progress_reader`].
    pub async fn progress(&self) -> Vec<PartitionProgress> {
        let reader = self.progress_reader().await;
        let progress = reader.read().await;
        reader.close().await;
        progress
    }

    /// A reader of the group's progress on the input, for a loop that asks again and again.
    pub async fn progress_reader(&self) -> ProgressReader {
        ProgressReader::open(&self.kafka.bootstrap, &self.group, &self.input).await
    }

    /// Waits until the group committed every input partition to its end.
    pub async fn wait_fully_committed(&self, timeout: Duration) -> Vec<PartitionProgress> {
        let reader = self.progress_reader().await;
        let deadline = Instant::now() + timeout;
        loop {
            let progress = reader.read().await;
            if inspect::fully_committed(&progress) || Instant::now() > deadline {
                reader.close().await;
                return progress;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// As [`Harness::wait_fully_committed`], but fails at once, with its error, should one of
    /// `pipelines` end on its own meanwhile; panics when the deadline passes.
    pub async fn wait_committed_while_running(
        &self,
        pipelines: &mut [&mut RunningPipeline],
        timeout: Duration,
    ) -> Vec<PartitionProgress> {
        let reader = self.progress_reader().await;
        let deadline = Instant::now() + timeout;
        loop {
            let progress = reader.read().await;
            if inspect::fully_committed(&progress) {
                reader.close().await;
                return progress;
            }
            for pipeline in pipelines.iter_mut() {
                if pipeline.task.is_finished() {
                    let ended = (&mut pipeline.task).await;
                    panic!("a pipeline ended on its own before the end was committed: {ended:?}");
                }
            }
            assert!(
                Instant::now() < deadline,
                "not fully committed within {timeout:?}: {progress:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Starts sampling the group's committed input offsets (see [`CommitSampler`]).
    pub fn sample_commits(&self) -> CommitSampler {
        CommitSampler::start(&self.kafka.bootstrap, &self.group, &self.input)
    }
}

/// Reads a group's progress on a topic through one client for as long as it is kept (see
/// [`inspect::GroupProgressReader`]): a client per poll leaks, and is slow to close. Dropping
/// the client waits for its consumer to close, so it is dropped off the async workers: by
/// [`ProgressReader::close`], or, when a test fails before that, on a thread of its own.
pub struct ProgressReader(Option<Arc<inspect::GroupProgressReader>>);

impl ProgressReader {
    async fn open(bootstrap: &str, group: &str, topic: &str) -> ProgressReader {
        let (bootstrap, group, topic) = (bootstrap.to_owned(), group.to_owned(), topic.to_owned());
        let reader = tokio::task::spawn_blocking(move || {
            inspect::GroupProgressReader::new(&bootstrap, &group, &topic)
        })
        .await
        .unwrap()
        .expect("group progress reader");
        ProgressReader(Some(Arc::new(reader)))
    }

    /// The group's committed offsets and the topic's ends, as the cluster answers now.
    pub async fn read(&self) -> Vec<PartitionProgress> {
        let reader = Arc::clone(self.0.as_ref().expect("open until dropped"));
        tokio::task::spawn_blocking(move || {
            // A fresh broker answers NotCoordinator (or CoordinatorLoadInProgress) until the
            // group's coordinator is up: ask again for a while.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match reader.read(Duration::from_secs(10)) {
                    Ok(progress) => return progress,
                    Err(error) if Instant::now() < deadline => {
                        note(&format!("group progress not readable yet: {error}"));
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    Err(error) => panic!("group progress: {error}"),
                }
            }
        })
        .await
        .unwrap()
    }

    /// Drops the client on a blocking thread and waits for it to close.
    pub async fn close(mut self) {
        if let Some(reader) = self.0.take() {
            tokio::task::spawn_blocking(move || drop(reader))
                .await
                .unwrap();
        }
    }
}

impl Drop for ProgressReader {
    fn drop(&mut self) {
        if let Some(reader) = self.0.take() {
            std::thread::spawn(move || drop(reader));
        }
    }
}

fn producer(bootstrap: &str, properties: &[(&str, &str)]) -> FutureProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true");
    for (name, value) in properties {
        config.set(*name, *value);
    }
    config.create().expect("producer")
}

/// Sends every event (keyed by merchant) before awaiting the acks, so that records share batches
/// (and compression, where configured).
pub async fn produce_events(
    producer: &FutureProducer,
    topic: &str,
    events: &[RegistrationDecided],
    framing: Framing,
) {
    let mut acks = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        let value = encode(event, framing, index);
        let record = FutureRecord::to(topic)
            .key(event.reference_merchant_id.as_bytes())
            .payload(&value);
        acks.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| e)
                .expect("record queued"),
        );
    }
    for ack in acks {
        ack.await.expect("delivery").expect("input record written");
    }
}

fn decode_outcomes(records: &[ReadRecord]) -> Vec<RegistrationNotifyOutcome> {
    records
        .iter()
        .map(|r| decode_outcome(r.value.as_deref().expect("outcome value")).expect("outcome"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Whole-topic reads.

/// Bound on one whole-topic read (waiting for open transactions to end included).
pub const WHOLE_READ_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    ReadCommitted,
    ReadUncommitted,
}

fn reader(bootstrap: &str, isolation: Isolation, eof: bool) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("regnotify-test-reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", if eof { "true" } else { "false" })
        .set(
            "isolation.level",
            match isolation {
                Isolation::ReadCommitted => "read_committed",
                Isolation::ReadUncommitted => "read_uncommitted",
            },
        )
        .create()
        .expect("reader")
}

fn partitions_of(consumer: &BaseConsumer, topic: &str) -> Vec<i32> {
    inspect::partitions(consumer, topic, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("partitions of {topic}: {e}"))
}

/// End offsets as `consumer` sees them: the high watermark for a `read_uncommitted` consumer,
/// the last stable offset for a `read_committed` one.
fn end_offsets(consumer: &BaseConsumer, topic: &str) -> BTreeMap<i32, i64> {
    partitions_of(consumer, topic)
        .into_iter()
        .map(|partition| {
            let (_, high) = consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("end offset of {topic}/{partition}: {e}"));
            (partition, high)
        })
        .collect()
}

/// Every record of `topic` below the end offsets it has when the read starts; blocking.
///
/// A `read_committed` read first waits until no open transaction holds a partition's last stable
/// offset below that end, so that every record the topic will ever show such a reader up to
/// there is read. Panics when that or the read takes longer than `timeout`: a read that cannot
/// reach the end never passes for a complete one.
pub fn read_whole_topic(
    bootstrap: &str,
    topic: &str,
    isolation: Isolation,
    timeout: Duration,
) -> Vec<ReadRecord> {
    let deadline = Instant::now() + timeout;
    let ends = end_offsets(&reader(bootstrap, Isolation::ReadUncommitted, false), topic);
    let consumer = reader(bootstrap, isolation, true);
    if isolation == Isolation::ReadCommitted {
        loop {
            let stable = end_offsets(&consumer, topic);
            let open: Vec<_> = ends
                .iter()
                .filter(|(partition, end)| stable.get(partition).is_none_or(|s| s < end))
                .collect();
            if open.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{topic}: an open transaction keeps the last stable offsets {stable:?} below the \
                 ends {ends:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let mut assignment = TopicPartitionList::new();
    for partition in ends.keys() {
        assignment
            .add_partition_offset(topic, *partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).expect("assign");
    let mut at_end: HashSet<i32> = HashSet::new();
    let mut records = Vec::new();
    while at_end.len() < ends.len() {
        assert!(
            Instant::now() < deadline,
            "{topic}: read did not reach the ends {ends:?} in {timeout:?} (reached: {at_end:?}, \
             {} records)",
            records.len()
        );
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            // Emitted once the fetch position passes the end this reader can see, after every
            // record before it.
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                at_end.insert(partition);
            }
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            Some(Ok(message)) if message.offset() < ends[&message.partition()] => {
                records.push(ReadRecord::copy(&message));
            }
            // Written after the read started: not part of the topic as it was.
            Some(Ok(_)) => {}
        }
    }
    records.sort_by_key(|r| (r.partition, r.offset));
    records
}

// ---------------------------------------------------------------------------------------------
// Committed offsets through a run.

/// Samples a group's committed offsets on a thread of its own (about every 100 ms) until
/// [`CommitSampler::finish`], and checks that no partition's committed offset ever moves
/// backwards (or disappears). Failed samples (a broker down) are skipped and counted.
pub struct CommitSampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<CommitHistory>>,
}

/// What a [`CommitSampler`] saw.
#[derive(Debug, Default)]
pub struct CommitHistory {
    pub samples: usize,
    pub failed_samples: usize,
    /// Distinct committed offsets per partition, in the order seen.
    pub offsets: BTreeMap<i32, Vec<i64>>,
    pub backwards: Vec<String>,
}

impl CommitSampler {
    pub fn start(bootstrap: &str, group: &str, topic: &str) -> CommitSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let (bootstrap, group, topic) = (bootstrap.to_owned(), group.to_owned(), topic.to_owned());
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                // A consumer that never subscribes never joins the group: it only asks.
                let consumer: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &bootstrap)
                    .set("group.id", &group)
                    .set("enable.auto.commit", "false")
                    .create()
                    .expect("sampler");
                let partitions = partitions_of(&consumer, &topic);
                let mut history = CommitHistory::default();
                let mut last: HashMap<i32, i64> = HashMap::new();
                while !stop.load(Ordering::SeqCst) {
                    let mut tpl = TopicPartitionList::new();
                    for partition in &partitions {
                        tpl.add_partition(&topic, *partition);
                    }
                    match consumer.committed_offsets(tpl, Duration::from_secs(5)) {
                        Err(_) => history.failed_samples += 1,
                        Ok(committed) => {
                            history.samples += 1;
                            for element in committed.elements() {
                                let partition = element.partition();
                                let now = match element.offset() {
                                    Offset::Offset(offset) => Some(offset),
                                    _ => None,
                                };
                                let before = last.get(&partition).copied();
                                match (before, now) {
                                    (Some(before), Some(now)) if now < before => {
                                        history.backwards.push(format!(
                                            "partition {partition}: {before} -> {now}"
                                        ));
                                    }
                                    (Some(before), None) => history
                                        .backwards
                                        .push(format!("partition {partition}: {before} -> none")),
                                    _ => {}
                                }
                                if let Some(now) = now
                                    && before != Some(now)
                                {
                                    last.insert(partition, now);
                                    history.offsets.entry(partition).or_default().push(now);
                                }
                            }
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                history
            }
        });
        CommitSampler {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; panics if a committed offset ever moved backwards or nothing was sampled.
    pub fn finish(mut self) -> CommitHistory {
        self.stop.store(true, Ordering::SeqCst);
        let history = self.thread.take().unwrap().join().expect("sampler thread");
        assert!(
            history.backwards.is_empty(),
            "committed offsets moved backwards: {:?} (history {:?})",
            history.backwards,
            history.offsets
        );
        assert!(history.samples > 0, "no committed offsets were sampled");
        history
    }
}

impl Drop for CommitSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------------------------
// Outcome checks.

/// Outcomes per event id.
pub fn outcomes_per_event(outcomes: &[RegistrationNotifyOutcome]) -> HashMap<&str, usize> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for outcome in outcomes {
        *counts.entry(outcome.event_id.as_str()).or_default() += 1;
    }
    counts
}

/// Every produced event has an outcome and every outcome is for a produced event; returns how
/// many outcomes were repeats.
pub fn assert_nothing_lost(
    events: &[RegistrationDecided],
    outcomes: &[RegistrationNotifyOutcome],
) -> usize {
    let seen = outcomes_per_event(outcomes);
    let lost: Vec<&str> = events
        .iter()
        .filter(|e| !seen.contains_key(e.event_id.as_str()))
        .map(|e| e.registration_request_id.as_str())
        .collect();
    assert!(lost.is_empty(), "{} events lost: {lost:?}", lost.len());
    let produced: HashSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let strangers: Vec<&&str> = seen.keys().filter(|id| !produced.contains(*id)).collect();
    assert!(
        strangers.is_empty(),
        "outcomes for events never produced: {strangers:?}"
    );
    outcomes.len() - seen.len()
}

/// Exactly one outcome per produced event, none for anything else.
pub fn assert_one_outcome_each(
    events: &[RegistrationDecided],
    outcomes: &[RegistrationNotifyOutcome],
) {
    let repeats = assert_nothing_lost(events, outcomes);
    let repeated: Vec<(&str, usize)> = outcomes_per_event(outcomes)
        .into_iter()
        .filter(|(_, count)| *count > 1)
        .collect();
    assert_eq!(
        repeats, 0,
        "exactly one outcome per event; repeated: {repeated:?}"
    );
}

/// At-least-once without crashes (rebalances, SIGTERM): an outcome may be written again only for
/// an event whose offset could not have been committed when its first outcome was written, i.e.
/// some earlier offset of its partition had no outcome yet (finished no earlier than it). A
/// repeat of an event whose whole prefix was finished means a committed position was lost or
/// went backwards.
pub fn assert_repeats_follow_at_least_once(outcomes: &[RegistrationNotifyOutcome]) {
    // (partition, offset) -> first completion time.
    let mut first: BTreeMap<(i32, i64), i64> = BTreeMap::new();
    let mut count: HashMap<(i32, i64), usize> = HashMap::new();
    for o in outcomes {
        let at = (o.source_partition, o.source_offset);
        let entry = first.entry(at).or_insert(o.completed_at_ms);
        *entry = (*entry).min(o.completed_at_ms);
        *count.entry(at).or_default() += 1;
    }
    let mut unexplained = Vec::new();
    for (&(partition, offset), &n) in &count {
        if n < 2 {
            continue;
        }
        let finished_at = first[&(partition, offset)];
        let earlier_unfinished = first
            .range((partition, 0)..(partition, offset))
            .any(|(_, &earlier)| earlier >= finished_at);
        // An earlier offset with no outcome at all (a poison record) also keeps the position.
        let gap = (0..offset).any(|o| !first.contains_key(&(partition, o)));
        if !earlier_unfinished && !gap {
            unexplained.push((partition, offset, n));
        }
    }
    assert!(
        unexplained.is_empty(),
        "outcomes repeated although every earlier offset of their partition was finished first \
         (partition, offset, outcomes): {unexplained:?}"
    );
}

/// Polls `done` every 20 ms until it holds; panics with `what` after `timeout`.
pub async fn eventually(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fixed test keys, generated once per process (RSA generation is slow).
pub fn test_key(index: usize) -> PrivateSigningKey {
    static KEYS: std::sync::OnceLock<Vec<PrivateSigningKey>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        (0..2)
            .map(|_| PrivateSigningKey::generate().expect("key"))
            .collect()
    })[index]
        .clone()
}
