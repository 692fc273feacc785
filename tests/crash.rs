//! `regnotify run` as a separate process against a real Kafka broker, killed with SIGKILL mid-stream
//! (SPEC 5: a crash at any point loses nothing). Real broker only: start one with
//! `scripts/kafka-local.sh start` and set `REGNOTIFY_TEST_BOOTSTRAP`; without it these tests say
//! they were skipped and pass.
//!
//! Why not the mock cluster: these tests depend on what a broker keeps across the death of a
//! client, and on its group coordinator expiring a dead member after `session.timeout.ms`; the
//! mock's group coordinator and storage are simplified stand-ins for both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

use regnotify::codec::EventEncoder;
use regnotify::config::InputEncoding;
use regnotify::event::{RegistrationDecided, RegistrationNotifyOutcome};
use regnotify::inspect::{self, fully_committed};
use regnotify::keys::{PrivateSigningKey, PublicVerifyingKey, keygen};
use regnotify::simulator::{Simulator, SimulatorConfig, SimulatorHandle};

use common::{BOOTSTRAP_ENV, CLIENT_ID, Harness, event};

const WAIT: Duration = Duration::from_secs(120);

/// Says why a test did nothing, past the test harness's output capture, and whether to go on.
fn real_broker_or_skip(test: &str) -> bool {
    if std::env::var(BOOTSTRAP_ENV).is_ok() {
        return true;
    }
    // Written to the process's stderr directly: libtest captures only print!/eprint!.
    let _ = writeln!(
        std::io::stderr(),
        "{test}: skipped: needs a real broker (set {BOOTSTRAP_ENV}, see scripts/kafka-local.sh)"
    );
    false
}

fn note(message: &str) {
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// A tempdir with keys from `regnotify keygen`, a simulator that knows them, and a config file
/// for `regnotify run` against the harness's topics.
struct Service {
    dir: tempfile::TempDir,
    config: PathBuf,
    simulator: SimulatorHandle,
}

impl Service {
    async fn new(harness: &Harness, latency: Duration, processing: &str) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let keys = keygen(&dir.path().join("keys")).expect("keygen");
        let mut config = SimulatorConfig::new(
            PrivateSigningKey::from_file(&keys.alipayplus_private_key).unwrap(),
        );
        config.mpp_public_key = Some(PublicVerifyingKey::from_file(&keys.mpp_public_key).unwrap());
        config.client_ids = vec![CLIENT_ID.into()];
        config.latency = latency;
        let simulator = Simulator::start(config).await.expect("simulator");
        let toml = format!(
            r#"
[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
input_topic = "{input}"
result_topic = "{result}"
dlq_topic = "{dlq}"
input_encoding = "single-object"

[kafka.consumer]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"

[alipayplus]
base_url = "{base_url}"
allow_insecure_http = true
client_id = "{CLIENT_ID}"
private_key_file = "{private_key}"
alipayplus_public_key_file = "{public_key}"
request_timeout = "2s"

[processing]
max_attempts = 5
backoff_initial = "10ms"
backoff_max = "100ms"
commit_interval = "200ms"
rebalance_drain_timeout = "5s"
shutdown_timeout = "10s"
{processing}

[admin]
listen = "127.0.0.1:0"

[log]
format = "json"
level = "info"
"#,
            bootstrap = harness.kafka.bootstrap,
            group = harness.group,
            input = harness.input,
            result = harness.result,
            dlq = harness.dlq,
            base_url = simulator.base_url(),
            private_key = keys.mpp_private_key.display(),
            public_key = keys.alipayplus_public_key.display(),
        );
        let config = dir.path().join("regnotify.toml");
        std::fs::write(&config, toml).unwrap();
        Service {
            dir,
            config,
            simulator,
        }
    }

    fn log_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Starts `regnotify run`; its output is appended to `<name>.log` in the tempdir.
    fn spawn(&self, name: &str) -> RunningService {
        let log = self.log_file(name);
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_regnotify"));
        // The child's settings come from its config file alone: no `REGNOTIFY_*` override (the
        // test's `REGNOTIFY_TEST_BOOTSTRAP`, CI's `REGNOTIFY_REQUIRE_EXTERNAL`, a developer's own)
        // reaches it.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("REGNOTIFY_") {
                command.env_remove(name);
            }
        }
        let child = command
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("regnotify run starts");
        RunningService {
            child: Some(child),
            log,
        }
    }

    fn calls(&self) -> u64 {
        self.simulator.stats().total_calls
    }
}

/// A `regnotify run` child; killed (SIGKILL) if a test panics while it runs.
struct RunningService {
    child: Option<Child>,
    log: PathBuf,
}

impl RunningService {
    /// Panics (with the end of its log) if the process already exited.
    fn assert_alive(&mut self) {
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "regnotify run exited on its own ({status}); its log ends:\n{}",
                tail(&self.log)
            );
        }
    }

    /// SIGKILL: no shutdown, no commit, no flush.
    fn crash(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit (at most `timeout`).
    fn terminate(mut self, timeout: Duration) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(sent.success());
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "regnotify run did not stop within {timeout:?} of SIGTERM; its log ends:\n{}",
                    tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RunningService {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Waits until the simulator has answered `calls` requests, checking that `running` is alive.
async fn wait_for_calls(service: &Service, running: &mut [&mut RunningService], calls: u64) {
    let deadline = Instant::now() + WAIT;
    while service.calls() < calls {
        for child in running.iter_mut() {
            child.assert_alive();
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {calls} calls (at {})",
            service.calls()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the group committed every input partition to its end, checking `running`.
async fn wait_committed(harness: &Harness, running: &mut [&mut RunningService]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let progress = harness.progress().await;
        if fully_committed(&progress) {
            return;
        }
        for child in running.iter_mut() {
            child.assert_alive();
        }
        assert!(
            Instant::now() < deadline,
            "not fully committed in time: {progress:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every outcome on the result topic (its end offsets say how many to read).
async fn all_outcomes(harness: &Harness) -> Vec<RegistrationNotifyOutcome> {
    let (bootstrap, result) = (harness.kafka.bootstrap.clone(), harness.result.clone());
    let total: i64 = tokio::task::spawn_blocking(move || {
        inspect::group_progress(&bootstrap, "crash-test-reader", &result, WAIT).unwrap()
    })
    .await
    .unwrap()
    .iter()
    .map(|p| p.end)
    .sum();
    let outcomes = harness.outcomes(total as usize, WAIT).await;
    assert_eq!(outcomes.len() as i64, total, "read the whole result topic");
    outcomes
}

/// Every produced event has an outcome; returns how many outcomes were repeats.
fn assert_nothing_lost(
    events: &[RegistrationDecided],
    outcomes: &[RegistrationNotifyOutcome],
) -> usize {
    let seen: HashSet<&str> = outcomes.iter().map(|o| o.event_id.as_str()).collect();
    let lost: Vec<&str> = events
        .iter()
        .filter(|e| !seen.contains(e.event_id.as_str()))
        .map(|e| e.registration_request_id.as_str())
        .collect();
    assert!(lost.is_empty(), "{} events lost: {lost:?}", lost.len());
    let produced: HashSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert!(
        seen.iter().all(|id| produced.contains(id)),
        "an outcome for an event never produced"
    );
    outcomes.len() - seen.len()
}

/// Produces `events` from a background task with a producer of its own (idempotent, acks=all),
/// in acknowledged chunks of 50 with `pause` after each, while the service runs.
fn produce_in_background(
    harness: &Harness,
    events: Vec<RegistrationDecided>,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    let (bootstrap, topic) = (harness.kafka.bootstrap.clone(), harness.input.clone());
    tokio::spawn(async move {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("enable.idempotence", "true")
            .create()
            .expect("producer");
        let encoder = EventEncoder::new(InputEncoding::SingleObject, None, &topic).unwrap();
        for chunk in events.chunks(50) {
            let mut acks = Vec::with_capacity(chunk.len());
            for event in chunk {
                let value = encoder.encode(event).await.unwrap();
                let record = FutureRecord::to(&topic)
                    .key(event.reference_merchant_id.as_bytes())
                    .payload(&value);
                acks.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
            }
            for ack in acks {
                ack.await.expect("delivery").expect("input record written");
            }
            tokio::time::sleep(pause).await;
        }
    })
}

/// The members of `group` once it is stable (an empty list while it rebalances).
async fn stable_members(bootstrap: &str, group: &str) -> usize {
    let (bootstrap, group) = (bootstrap.to_string(), group.to_string());
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .expect("client");
        let groups = client
            .fetch_group_list(Some(&group), Duration::from_secs(10))
            .expect("group list");
        groups
            .groups()
            .iter()
            .find(|g| g.name() == group && g.state() == "Stable")
            .map_or(0, |g| g.members().len())
    })
    .await
    .unwrap()
}

fn merchant_events(count: usize, merchants: usize) -> Vec<RegistrationDecided> {
    (0..count)
        .map(|i| event(&format!("M-{:03}", i % merchants), &format!("R-{i:05}")))
        .collect()
}

/// Runs `regnotify run` over 2000 events, SIGKILLs it three times at random moments (restarting
/// it each time), lets it finish and stops it with SIGTERM. Returns the events and every outcome
/// a `read_committed` reader sees.
async fn sigkill_three_times(
    test: &str,
    exactly_once: bool,
) -> (Vec<RegistrationDecided>, Vec<RegistrationNotifyOutcome>) {
    let started = Instant::now();
    let harness = Harness::new(3, Vec::new()).await;
    let mut processing = format!(
        "max_in_flight = 32\nmax_pending_per_partition = 500\nexactly_once = {exactly_once}\n\
         transaction_interval = \"50ms\""
    );
    if exactly_once {
        // One instance restarted in place keeps its transactional id, so each restart aborts
        // the killed process's open transaction at once (see README, exactly-once).
        processing.push_str(&format!(
            "\n\n[kafka.producer]\n\"transactional.id\" = \"{}-eos\"\n",
            harness.group
        ));
    }
    let service = Service::new(&harness, Duration::from_millis(10), &processing).await;
    let events = merchant_events(2000, 200);
    let producing = produce_in_background(&harness, events.clone(), Duration::ZERO);

    let mut running = service.spawn("run");
    let kills = 3;
    let mut killed_at = Vec::new();
    for kill in 0..kills {
        // Somewhere inside each fifth of the stream (counted in HTTP calls, which include the
        // repeats after earlier crashes), then a random few milliseconds more.
        let fifth = events.len() as u64 / 5;
        let target = (kill + 1) * fifth + rand::random_range(0..fifth / 2);
        wait_for_calls(&service, &mut [&mut running], target).await;
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..150))).await;
        killed_at.push(service.calls());
        running.crash();
        running = service.spawn("run");
    }
    producing.await.expect("all events produced");
    wait_committed(&harness, &mut [&mut running]).await;
    let status = running.terminate(Duration::from_secs(30));
    assert!(
        status.success(),
        "exit status after SIGTERM: {status}; log ends:\n{}",
        tail(&service.log_file("run"))
    );

    let progress = harness.progress().await;
    assert!(fully_committed(&progress), "{progress:?}");
    let outcomes = if exactly_once {
        // Aborted transactions leave records below the end offsets that a read_committed
        // reader skips: read until quiet instead of counting.
        harness
            .outcomes(events.len() * 2, Duration::from_secs(8))
            .await
    } else {
        all_outcomes(&harness).await
    };
    let repeats = assert_nothing_lost(&events, &outcomes);
    let dead_letters = harness.dead_letters(1, Duration::from_secs(2)).await;
    assert!(dead_letters.is_empty(), "no dead letters expected");
    assert_eq!(service.simulator.stats().signature_failures, 0);
    note(&format!(
        "{test}: {} events, {kills} SIGKILLs at {killed_at:?} HTTP calls, {} HTTP calls in all, \
         {} outcomes ({repeats} repeated), {:.1}s",
        events.len(),
        service.calls(),
        outcomes.len(),
        started.elapsed().as_secs_f64()
    ));
    (events, outcomes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_and_restart_loses_nothing() {
    let test = "sigkill_mid_stream_and_restart_loses_nothing";
    if !real_broker_or_skip(test) {
        return;
    }
    let (events, outcomes) = sigkill_three_times(test, false).await;
    // At least once: only work after the last commit before each crash may repeat, a small
    // part of the stream.
    let repeats = outcomes.len() - events.len();
    assert!(
        repeats < events.len() / 2,
        "{repeats} repeats for {} events",
        events.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_sigkill_mid_stream_shows_one_outcome_per_event() {
    let test = "exactly_once_sigkill_mid_stream_shows_one_outcome_per_event";
    if !real_broker_or_skip(test) {
        return;
    }
    let (events, outcomes) = sigkill_three_times(test, true).await;
    // Outputs of a transaction cut short by SIGKILL are aborted (fenced by the next producer of
    // the group), so a read_committed reader sees exactly one outcome per event.
    assert_eq!(
        outcomes.len(),
        events.len(),
        "exactly one outcome per event under exactly_once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_mid_stream_is_replaced_after_its_session_times_out() {
    if !real_broker_or_skip("a_member_killed_mid_stream_is_replaced_after_its_session_times_out") {
        return;
    }
    let started = Instant::now();
    let harness = Harness::new(4, Vec::new()).await;
    let service = Service::new(&harness, Duration::from_millis(10), "max_in_flight = 16").await;
    let events = merchant_events(1000, 100);
    // A steady stream (about 7 s long), so that the kill below lands mid-stream.
    let producing = produce_in_background(&harness, events.clone(), Duration::from_millis(350));

    let mut first = service.spawn("first");
    let mut second = service.spawn("second");
    wait_for_calls(&service, &mut [&mut first, &mut second], 100).await;
    // Both members hold partitions before one dies.
    let deadline = Instant::now() + WAIT;
    while stable_members(&harness.kafka.bootstrap, &harness.group).await != 2 {
        first.assert_alive();
        second.assert_alive();
        assert!(Instant::now() < deadline, "the group never had two members");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let killed_at = service.calls();
    let killed = Instant::now();
    first.crash();
    assert!(
        killed_at < events.len() as u64,
        "killed before the stream was done ({killed_at} calls)"
    );
    producing.await.expect("all events produced");
    wait_committed(&harness, &mut [&mut second]).await;
    let took_over = killed.elapsed();
    let status = second.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status after SIGTERM: {status}");

    let outcomes = all_outcomes(&harness).await;
    let repeats = assert_nothing_lost(&events, &outcomes);
    let per_partition: HashMap<i32, usize> =
        outcomes.iter().fold(HashMap::new(), |mut counts, o| {
            *counts.entry(o.source_partition).or_default() += 1;
            counts
        });
    assert_eq!(per_partition.len(), 4, "outcomes from every partition");
    note(&format!(
        "rebalance test: member SIGKILLed at {killed_at} HTTP calls, the other finished \
         everything {:.1}s later, {} outcomes ({repeats} repeated), {:.1}s",
        took_over.as_secs_f64(),
        outcomes.len(),
        started.elapsed().as_secs_f64()
    ));
    assert!(
        took_over >= Duration::from_secs(3),
        "the dead member's partitions waited for its session to time out ({took_over:?})"
    );
}
