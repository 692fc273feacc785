//! `regnotify run` as a child process for these tests: its configuration, its stderr read as
//! it comes, its admin endpoints polled, and a mock cluster of its own whose input topic is
//! missing at start.

use crate::common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Harness, service};

/// The running `regnotify run` binary: its stderr is read line by line as it comes, and it is
/// killed if the test ends early.
pub(super) struct RunningBinary {
    child: Option<std::process::Child>,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl RunningBinary {
    pub(super) fn start(config: &std::path::Path) -> RunningBinary {
        RunningBinary::start_with(config, &[])
    }

    /// With settings from `REGNOTIFY_…` variables on top of the file.
    pub(super) fn start_with(
        config: &std::path::Path,
        environment: &[(&str, &str)],
    ) -> RunningBinary {
        let mut child = Command::new(env!("CARGO_BIN_EXE_regnotify"))
            .args(["run", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .envs(environment.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let reader = std::thread::spawn({
            let lines = Arc::clone(&lines);
            move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line);
                }
            }
        });
        RunningBinary {
            child: Some(child),
            lines,
            reader: Some(reader),
        }
    }

    /// The JSON log lines written so far whose message is `message`.
    pub(super) fn logged(&self, message: &str) -> Vec<serde_json::Value> {
        json_lines(&self.lines.lock().unwrap(), message)
    }

    /// SIGTERM, then waits for a clean exit; returns every line it wrote.
    pub(super) async fn stop(mut self) -> Vec<String> {
        let mut child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(exit.success(), "exit 0 on SIGTERM: {exit:?}");
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

/// The JSON log lines among `lines` whose message is `message`.
pub(super) fn json_lines(lines: &[String], message: &str) -> Vec<serde_json::Value> {
    lines
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["message"] == message)
        .collect()
}

impl Drop for RunningBinary {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A test that failed shows what the service wrote, its last lines at least.
        if std::thread::panicking() {
            if let Some(reader) = self.reader.take() {
                let _ = reader.join();
            }
            let lines = self
                .lines
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let from = lines.len().saturating_sub(200);
            eprintln!(
                "the service's stderr, lines {}..{} of {}:",
                from + 1,
                lines.len(),
                lines.len()
            );
            for line in &lines[from..] {
                eprintln!("  {line}");
            }
        }
    }
}

/// Writes a `regnotify run` configuration against `bootstrap` and the harness' simulator, with
/// the harness' keys and `consumer` as extra librdkafka consumer properties; returns its path and
/// the admin URL.
pub(super) fn service_config(
    harness: &Harness,
    dir: &std::path::Path,
    bootstrap: &str,
    topics: [&str; 3],
    consumer: &[(&str, &str)],
) -> (std::path::PathBuf, String) {
    let (private_key, public_key) = service::harness_key_files(harness, &dir.join("keys"));
    let admin_port = service::free_port();
    let mut child = service::ChildConfig::new(
        harness,
        &harness.simulator.base_url(),
        &private_key,
        &public_key,
    );
    child.bootstrap = bootstrap.to_owned();
    child.group = common::unique("group");
    child.topics = topics.map(str::to_owned);
    child.registry = None;
    // As the harness does: members notice a rebalance within half a second, and a member that
    // left is given up after 6 s rather than librdkafka's default 45 s.
    child.consumer = [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
    ]
    .iter()
    .chain(consumer)
    .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
    .collect();
    // A refused event that nothing else explains asks again against its own budget (8 attempts,
    // full jitter up to `backoff_max`): under the defaults its backoff alone can last 25 s, and
    // on a busy CI machine one was still unfinished after the tests' 60 s wait; a 1 s ceiling
    // keeps its backoff within about 5 s.
    child.processing = vec![
        r#"commit_interval = "100ms""#.into(),
        r#"backoff_max = "1s""#.into(),
    ];
    child.admin_listen = format!("127.0.0.1:{admin_port}");
    let config = child.write(dir);
    (config, format!("http://127.0.0.1:{admin_port}"))
}

pub(super) async fn get(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(response) => {
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
        // The admin listener is not up yet.
        Err(_) => (0, String::new()),
    }
}

/// Polls `url` until `done(status, body)` holds; returns the last answer.
pub(super) async fn until(
    what: &str,
    url: &str,
    timeout: Duration,
    done: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (status, body) = get(url).await;
        if done(status, &body) {
            return (status, body);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}; last answer {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The real binary against a mock cluster of its own (so that the input topic can be missing at
/// start even when the suite runs against a real broker) whose result topic (`result_partitions`)
/// and DLQ exist and whose input topic does not yet; librdkafka looks for it again every second
/// (at each metadata refresh, 5 min by default).
pub(super) struct MissingInput {
    pub(super) mock:
        rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    pub(super) input: String,
    pub(super) admin: String,
    pub(super) service: RunningBinary,
    /// The configuration and keys the service reads: kept until the test ends.
    pub(super) dir: tempfile::TempDir,
}

impl MissingInput {
    pub(super) fn start(harness: &Harness, result_partitions: i32) -> MissingInput {
        let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
        let (input, result, dlq) = (
            common::unique("missing"),
            common::unique("result"),
            common::unique("dlq"),
        );
        mock.create_topic(&result, result_partitions, 1).unwrap();
        mock.create_topic(&dlq, 1, 1).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (config, admin) = service_config(
            harness,
            dir.path(),
            &mock.bootstrap_servers(),
            [&input, &result, &dlq],
            &[("topic.metadata.refresh.interval.ms", "1000")],
        );
        let service = RunningBinary::start(&config);
        MissingInput {
            mock,
            input,
            admin,
            service,
            dir,
        }
    }
}
