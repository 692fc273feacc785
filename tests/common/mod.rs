//! The one harness every pipeline test shares: a Kafka (librdkafka's mock cluster over TCP by
//! default, a real broker when `REGNOTIFY_TEST_BOOTSTRAP` is set), random topic and group names,
//! an Alipay+ simulator over HTTP with fresh keys, and the real pipeline.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use regnotify::alipayplus::{AlipayPlusClient, ClientOptions};
use regnotify::codec::{EventEncoder, decode_outcome};
use regnotify::config::{InputEncoding, Settings};
use regnotify::event::{Decision, RegistrationDecided, RegistrationNotifyOutcome};
use regnotify::inspect::{self, PartitionProgress, ReadRecord};
use regnotify::keys::PrivateSigningKey;
use regnotify::observe::{Health, Stats};
use regnotify::pipeline;
use regnotify::simulator::rules::FaultRule;
use regnotify::simulator::{Simulator, SimulatorConfig, SimulatorHandle};

pub const CLIENT_ID: &str = "TEST_CLIENT";

/// The environment variable naming a real broker for the integration suite.
pub const BOOTSTRAP_ENV: &str = "REGNOTIFY_TEST_BOOTSTRAP";

/// A name no other test uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
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

/// Everything one test needs. The mock cluster lives as long as the harness.
pub struct Harness {
    pub kafka: TestKafka,
    pub input: String,
    pub result: String,
    pub dlq: String,
    pub group: String,
    pub simulator: SimulatorHandle,
    pub mpp_key: PrivateSigningKey,
    pub alipayplus_key: PrivateSigningKey,
    producer: FutureProducer,
}

/// A pipeline running in the background.
pub struct RunningPipeline {
    pub stats: Arc<Stats>,
    pub status: Arc<Health>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl RunningPipeline {
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
        let kafka = TestKafka::start();
        let input = unique("decided");
        let result = unique("result");
        let dlq = unique("dlq");
        kafka.create_topic(&input, partitions).await;
        kafka.create_topic(&result, partitions).await;
        kafka.create_topic(&dlq, 1).await;
        let mpp_key = test_key(0);
        let alipayplus_key = test_key(1);
        let mut config = SimulatorConfig::new(alipayplus_key.clone());
        config.mpp_public_key = Some(mpp_key.public_key());
        config.client_ids = vec![CLIENT_ID.into()];
        config.rules = rules;
        config.latency = latency;
        let simulator = Simulator::start(config).await.expect("simulator");
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &kafka.bootstrap)
            .set("enable.idempotence", "true")
            .create()
            .expect("producer");
        Harness {
            kafka,
            input,
            result,
            dlq,
            group: unique("group"),
            simulator,
            mpp_key,
            alipayplus_key,
            producer,
        }
    }

    /// Settings for a pipeline against this harness, with quick retries.
    pub fn settings(&self) -> Settings {
        let mut settings = Settings::default();
        settings.kafka.bootstrap_servers = self.kafka.bootstrap.clone();
        settings.kafka.group_id = self.group.clone();
        settings.kafka.input_topic = self.input.clone();
        settings.kafka.result_topic = self.result.clone();
        settings.kafka.dlq_topic = self.dlq.clone();
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

    pub fn start_pipeline(&self, settings: Settings) -> RunningPipeline {
        self.start_pipeline_with_health(settings, Arc::new(Health::default()))
    }

    /// As [`Harness::start_pipeline`], reporting into `status` (which admin routes may read).
    pub fn start_pipeline_with_health(
        &self,
        settings: Settings,
        status: Arc<Health>,
    ) -> RunningPipeline {
        let client = Arc::new(
            AlipayPlusClient::new(
                ClientOptions::from_settings(&settings.alipayplus),
                self.mpp_key.clone(),
                Some(self.alipayplus_key.public_key()),
            )
            .expect("client"),
        );
        let stats = Arc::new(Stats::default());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let (stats, status, shutdown) = (stats.clone(), status.clone(), shutdown.clone());
            async move { pipeline::run(&settings, client, stats, status, shutdown).await }
        });
        RunningPipeline {
            stats,
            status,
            shutdown,
            task,
        }
    }

    /// Produces events in single-object framing, keyed by merchant, and waits for the acks.
    pub async fn produce(&self, events: &[RegistrationDecided]) {
        let encoder = EventEncoder::new(InputEncoding::SingleObject, None, &self.input).unwrap();
        for event in events {
            let value = encoder.encode(event).await.unwrap();
            self.produce_raw(event.reference_merchant_id.as_bytes(), &value, &[])
                .await;
        }
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

    /// Reads the result topic until `expected` outcomes arrived (or `timeout`).
    pub async fn outcomes(
        &self,
        expected: usize,
        timeout: Duration,
    ) -> Vec<RegistrationNotifyOutcome> {
        let records = self.read(&self.result, expected, timeout).await;
        records
            .iter()
            .map(|r| decode_outcome(r.value.as_deref().expect("outcome value")).expect("outcome"))
            .collect()
    }

    pub async fn dead_letters(&self, expected: usize, timeout: Duration) -> Vec<ReadRecord> {
        self.read(&self.dlq, expected, timeout).await
    }

    async fn read(&self, topic: &str, expected: usize, timeout: Duration) -> Vec<ReadRecord> {
        let (bootstrap, topic) = (self.kafka.bootstrap.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            inspect::read_topic(&bootstrap, &topic, expected, timeout).expect("read topic")
        })
        .await
        .unwrap()
    }

    pub async fn progress(&self) -> Vec<PartitionProgress> {
        let (bootstrap, group, topic) = (
            self.kafka.bootstrap.clone(),
            self.group.clone(),
            self.input.clone(),
        );
        tokio::task::spawn_blocking(move || {
            inspect::group_progress(&bootstrap, &group, &topic, Duration::from_secs(10))
                .expect("group progress")
        })
        .await
        .unwrap()
    }

    /// Waits until the group committed every input partition to its end.
    pub async fn wait_fully_committed(&self, timeout: Duration) -> Vec<PartitionProgress> {
        let deadline = Instant::now() + timeout;
        loop {
            let progress = self.progress().await;
            if inspect::fully_committed(&progress) || Instant::now() > deadline {
                return progress;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
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
