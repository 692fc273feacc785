//! What a demo runs against: the mock cluster with the demo's topics and an async runtime
//! ([`on_mock_cluster`]), and the [`Rig`] on it — the simulator with fresh keys and its rules, the
//! merchant-order watch, optionally the trace receiver, and the real pipeline with the demo's
//! settings; stopping it lets the last commits land first.
//!
//! Sets up and tears down only: never produces events, never reads the outputs, never measures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

use super::options::DemoOptions;
use super::order::{MerchantOrder, watch_merchant_order};
use super::samples::simulator_rules;
use super::trace_sink::{self, TraceExports};
use super::{CLIENT_ID, DLQ_TOPIC, INPUT_PARTITIONS, INPUT_TOPIC, RESULT_PARTITIONS, RESULT_TOPIC};
use crate::config::{InputEncoding, Settings};
use crate::inspect;
use crate::keys::PrivateSigningKey;
use crate::observe::Stats;
use crate::service::Application;
use crate::simulator::{PairedSimulator, SimulatorHandle, paired_client};

/// Starts the mock cluster with the demo's topics and an async runtime, and runs `body` on it
/// with the cluster's bootstrap servers; both are gone when it returns.
pub(super) fn on_mock_cluster<T, F>(body: impl FnOnce(String) -> F) -> anyhow::Result<T>
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
pub(super) struct Rig {
    simulator: Arc<SimulatorHandle>,
    order: Arc<std::sync::Mutex<MerchantOrder>>,
    order_watch: tokio::task::JoinHandle<()>,
    pub(super) settings: Settings,
    pub(super) stats: Arc<Stats>,
    shutdown: CancellationToken,
    pipeline: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// When the pipeline was started.
    pub(super) started: Instant,
    /// With `--traces`: where the spans go.
    trace_sink: Option<trace_sink::TraceSink>,
}

impl Rig {
    /// Starts the simulator with fresh keys and the pipeline against it. `announce` prints the
    /// admin address on stderr.
    pub(super) async fn start(
        bootstrap: &str,
        options: &DemoOptions,
        announce: bool,
    ) -> anyhow::Result<Rig> {
        let paired = PairedSimulator::start(
            PrivateSigningKey::generate()?,
            PrivateSigningKey::generate()?,
            CLIENT_ID,
            |config| {
                config.latency = options.latency;
                config.rules = simulator_rules();
            },
        )
        .await?;
        let simulator = Arc::new(paired.simulator);
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
        let client = paired_client(
            &settings.alipayplus,
            &paired.mpp_key,
            &paired.alipayplus_key,
        )?;
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
    pub(super) async fn stop(self, bootstrap: &str) -> anyhow::Result<bool> {
        Ok(self.stop_with_traces(bootstrap).await?.0)
    }

    /// [`Rig::stop`], and with `--traces` what the OTLP receiver was sent (the pipeline exports
    /// its last spans as it stops).
    pub(super) async fn stop_with_traces(
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

/// Waits, at most `timeout`, until the group committed the input to its end; gives up quietly.
async fn wait_for_commits(bootstrap: &str, group: &str, timeout: Duration) {
    let (bootstrap, group) = (bootstrap.to_string(), group.to_string());
    // One client for the whole wait, created and dropped on this blocking thread (dropping it
    // waits for the consumer to close).
    let _ = tokio::task::spawn_blocking(move || {
        let Ok(reader) = inspect::GroupProgressReader::new(&bootstrap, &group, INPUT_TOPIC) else {
            return;
        };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if reader
                .read(Duration::from_secs(5))
                .is_ok_and(|progress| inspect::fully_committed(&progress))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await;
}
