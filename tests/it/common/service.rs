//! `regnotify run` as a child process against the harness's topics: keys from `regnotify keygen`,
//! a simulator of its own that knows them, a config file, and helpers to SIGKILL or SIGTERM the
//! process and to wait on the group's progress while checking that the children still live.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureProducer;

use regnotify::event::RegistrationDecided;
use regnotify::inspect::fully_committed;
use regnotify::keys::{PrivateSigningKey, PublicVerifyingKey, keygen};
use regnotify::simulator::{Simulator, SimulatorConfig, SimulatorHandle};

use super::{CLIENT_ID, Framing, Harness, produce_events, regnotify_binary};

/// Bound on waiting for the children to make progress.
pub const WAIT: Duration = Duration::from_secs(120);

/// The config file of a `regnotify run` child process: the one template every test that starts
/// the binary writes, with the harness's topics, group and schema registry by default. Each
/// table's `Vec` holds lines added to it; `processing` may open further tables.
#[derive(Debug, Clone)]
pub struct ChildConfig {
    pub bootstrap: String,
    pub group: String,
    pub topics: [String; 3],
    pub kafka: Vec<String>,
    /// librdkafka consumer properties (`[kafka.consumer]`).
    pub consumer: Vec<(String, String)>,
    /// The schema registry's URL; no `[schema_registry]` table when `None`.
    pub registry: Option<String>,
    pub schema_registry: Vec<String>,
    pub base_url: String,
    pub private_key: PathBuf,
    pub public_key: PathBuf,
    pub alipayplus: Vec<String>,
    pub processing: Vec<String>,
    pub admin_listen: String,
    pub log_level: String,
}

impl ChildConfig {
    /// Against `harness`'s broker, topics, group and schema registry, calling `base_url` with the
    /// MPP key and Alipay+ public key files given; admin on a port of its own choosing, logs at
    /// `info` in JSON.
    pub fn new(harness: &Harness, base_url: &str, private_key: &Path, public_key: &Path) -> Self {
        ChildConfig {
            bootstrap: harness.kafka.bootstrap.clone(),
            group: harness.group.clone(),
            topics: [
                harness.input.clone(),
                harness.result.clone(),
                harness.dlq.clone(),
            ],
            kafka: Vec::new(),
            consumer: Vec::new(),
            registry: Some(harness.registry.url.clone()),
            schema_registry: Vec::new(),
            base_url: base_url.to_owned(),
            private_key: private_key.to_owned(),
            public_key: public_key.to_owned(),
            alipayplus: Vec::new(),
            processing: Vec::new(),
            admin_listen: "127.0.0.1:0".into(),
            log_level: "info".into(),
        }
    }

    pub fn toml(&self) -> String {
        let lines = |lines: &[String]| lines.iter().map(|l| format!("{l}\n")).collect::<String>();
        let [input, result, dlq] = &self.topics;
        let consumer: String = self
            .consumer
            .iter()
            .map(|(name, value)| format!("\"{name}\" = \"{value}\"\n"))
            .collect();
        let registry = match &self.registry {
            Some(url) => format!(
                "[schema_registry]\nurl = \"{url}\"\n{}\n",
                lines(&self.schema_registry)
            ),
            None => String::new(),
        };
        format!(
            r#"[kafka]
bootstrap_servers = "{bootstrap}"
group_id = "{group}"
input_topic = "{input}"
result_topic = "{result}"
dlq_topic = "{dlq}"
{kafka}
[kafka.consumer]
{consumer}
{registry}[alipayplus]
base_url = "{base_url}"
allow_insecure_http = true
client_id = "{CLIENT_ID}"
private_key_file = "{private_key}"
alipayplus_public_key_file = "{public_key}"
{alipayplus}
[processing]
{processing}
[admin]
listen = "{admin}"

[log]
format = "json"
level = "{level}"
"#,
            bootstrap = self.bootstrap,
            group = self.group,
            kafka = lines(&self.kafka),
            base_url = self.base_url,
            private_key = self.private_key.display(),
            public_key = self.public_key.display(),
            alipayplus = lines(&self.alipayplus),
            processing = lines(&self.processing),
            admin = self.admin_listen,
            level = self.log_level,
        )
    }

    /// Writes the file as `regnotify.toml` in `dir`; returns its path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("regnotify.toml");
        std::fs::write(&path, self.toml()).unwrap();
        path
    }
}

/// Writes the harness's MPP private key and Alipay+ public key into `dir` (`mpp.pem`,
/// `alipayplus_public.pem`); returns their paths.
pub fn harness_key_files(harness: &Harness, dir: &Path) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let (private, public) = (dir.join("mpp.pem"), dir.join("alipayplus_public.pem"));
    let pem = harness.mpp_key.to_pkcs8_pem().unwrap();
    std::fs::write(&private, secrecy::ExposeSecret::expose_secret(&pem)).unwrap();
    std::fs::write(
        &public,
        harness.alipayplus_key.public_key().to_pem().unwrap(),
    )
    .unwrap();
    (private, public)
}

/// A TCP port free on 127.0.0.1 a moment ago (for an admin listener whose URL the test must know
/// before the child starts).
pub fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// A tempdir with keys from `regnotify keygen`, a simulator that knows them, and a config file
/// for `regnotify run` against the harness's topics and schema registry.
pub struct Service {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub simulator: SimulatorHandle,
}

impl Service {
    /// `processing` is appended to the `[processing]` table (and may open further tables).
    pub async fn new(harness: &Harness, latency: Duration, processing: &str) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let keys = keygen(&dir.path().join("keys")).expect("keygen");
        let mut config = SimulatorConfig::new(
            PrivateSigningKey::from_file(&keys.alipayplus_private_key).unwrap(),
        );
        config.mpp_public_key = Some(PublicVerifyingKey::from_file(&keys.mpp_public_key).unwrap());
        config.client_ids = vec![CLIENT_ID.into()];
        config.latency = latency;
        let simulator = Simulator::start(config).await.expect("simulator");
        let mut child = ChildConfig::new(
            harness,
            &simulator.base_url(),
            &keys.mpp_private_key,
            &keys.alipayplus_public_key,
        );
        child.kafka.push(r#"input_encoding = "auto""#.into());
        child.consumer = vec![
            ("session.timeout.ms".into(), "6000".into()),
            ("heartbeat.interval.ms".into(), "1000".into()),
        ];
        child
            .schema_registry
            .push(r#"request_timeout = "2s""#.into());
        child.alipayplus.push(r#"request_timeout = "2s""#.into());
        child.processing = [
            "max_attempts = 5",
            r#"backoff_initial = "10ms""#,
            r#"backoff_max = "100ms""#,
            r#"commit_interval = "200ms""#,
            r#"rebalance_drain_timeout = "5s""#,
            r#"shutdown_timeout = "10s""#,
            processing,
        ]
        .map(String::from)
        .to_vec();
        let config = child.write(dir.path());
        Service {
            dir,
            config,
            simulator,
        }
    }

    pub fn log_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Starts `regnotify run`; its output is appended to `<name>.log` in the tempdir.
    pub fn spawn(&self, name: &str) -> RunningService {
        self.spawn_with(name, "")
    }

    /// As [`Service::spawn`], with `extra` TOML appended to the config (new tables only, such as
    /// `[kafka.producer]`) in a config file of this member's own.
    pub fn spawn_with(&self, name: &str, extra: &str) -> RunningService {
        let config = if extra.is_empty() {
            self.config.clone()
        } else {
            let own = self.dir.path().join(format!("{name}.toml"));
            let base = std::fs::read_to_string(&self.config).unwrap();
            std::fs::write(&own, format!("{base}\n{extra}\n")).unwrap();
            own
        };
        let log = self.log_file(name);
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        // The child's settings come from its config file alone.
        let child = regnotify_binary()
            .arg("run")
            .arg("--config")
            .arg(&config)
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

    pub fn calls(&self) -> u64 {
        self.simulator.stats().total_calls
    }
}

/// A `regnotify run` child; killed (SIGKILL) if a test panics while it runs.
pub struct RunningService {
    child: Option<Child>,
    pub log: PathBuf,
}

impl RunningService {
    /// Panics (with the end of its log) if the process already exited.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!(
                "regnotify run exited on its own ({status}); its log ends:\n{}",
                tail(&self.log)
            );
        }
    }

    /// Sends the signal `name` (`HUP`, `USR1`, …) to the child.
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().unwrap().id().to_string();
        let sent = Command::new("kill")
            .args([format!("-{name}").as_str(), &pid])
            .status()
            .expect("kill");
        assert!(sent.success(), "kill -{name} {pid}");
    }

    /// SIGKILL: no shutdown, no commit, no flush.
    pub fn crash(mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit (at most `timeout`).
    pub fn terminate(mut self, timeout: Duration) -> ExitStatus {
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

    /// SIGTERM and a clean exit (status 0) within `timeout`, or a panic with the log's end.
    pub fn stop_cleanly(self, timeout: Duration) {
        let log = self.log.clone();
        let status = self.terminate(timeout);
        assert!(
            status.success(),
            "exit status after SIGTERM: {status}; log ends:\n{}",
            tail(&log)
        );
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

/// The last 40 lines of a log file.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Waits until the simulator has answered `calls` requests, checking that `running` is alive.
pub async fn wait_for_calls(service: &Service, running: &mut [&mut RunningService], calls: u64) {
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
pub async fn wait_committed(harness: &Harness, running: &mut [&mut RunningService]) {
    let reader = harness.progress_reader().await;
    let deadline = Instant::now() + WAIT;
    loop {
        let progress = reader.read().await;
        if fully_committed(&progress) {
            reader.close().await;
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

/// Produces `events` from a background task with a producer of its own (idempotent, acks=all),
/// in acknowledged chunks of 50 with `pause` after each, in mixed framing, while the service
/// runs.
pub fn produce_in_background(
    harness: &Harness,
    events: Vec<RegistrationDecided>,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    let producer: FutureProducer = harness.producer(&[]);
    let topic = harness.input.clone();
    tokio::spawn(async move {
        for chunk in events.chunks(50) {
            produce_events(&producer, &topic, chunk, Framing::Mixed).await;
            tokio::time::sleep(pause).await;
        }
    })
}

/// The members of `group` once it is stable (0 while it rebalances or is empty).
pub async fn stable_members(bootstrap: &str, group: &str) -> usize {
    group_members(bootstrap, group)
        .await
        .filter(|(state, _)| state == "Stable")
        .map_or(0, |(_, members)| members.len())
}

/// The state of `group` and its members' ids, as the group coordinator describes them; `None`
/// when the coordinator could not be asked.
pub async fn group_members(bootstrap: &str, group: &str) -> Option<(String, Vec<String>)> {
    let (bootstrap, group) = (bootstrap.to_string(), group.to_string());
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .expect("client");
        let groups = client
            .fetch_group_list(Some(&group), Duration::from_secs(10))
            .ok()?;
        let found = groups.groups().iter().find(|g| g.name() == group)?;
        Some((
            found.state().to_owned(),
            found.members().iter().map(|m| m.id().to_owned()).collect(),
        ))
    })
    .await
    .unwrap()
}
