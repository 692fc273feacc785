//! The service alone: `regnotify measure` (the service as `regnotify run` starts it, at its
//! default settings) in a process of its own, so that its CPU per event is the service's and
//! nothing else's.
//! Its events per CPU-second are held against OpenSSL's signatures per CPU-second, the work no
//! implementation can avoid (one RSA-2048 signature an event). A demo scenario's CPU also pays for
//! the simulator and the mock cluster in the same process; here the mock cluster runs in the
//! bench's process and the simulator (`regnotify simulator`) in its own. The events are plain
//! approvals over 1,000 merchants (none retried, refused or invalid), produced before the start,
//! at latency 0: what `scripts/bench-peers.sh` does on a real broker.
//!
//! Starts and stops what the measured process runs against; `regnotify measure` measures.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::mocking::MockCluster;
use serde::{Deserialize, Serialize};

use super::child::{last_json_line, stderr_tail};
use super::measure::Measurement;

const INPUT_TOPIC: &str = "bench.decided";
const RESULT_TOPIC: &str = "bench.result";
const DLQ_TOPIC: &str = "bench.dlq";
const PARTITIONS: i32 = 4;
const MERCHANTS: u64 = 1_000;
const CLIENT_ID: &str = "BENCH_CLIENT";
/// How long the simulator may take to listen.
const SIMULATOR_START: Duration = Duration::from_secs(10);

/// What the service-alone run measured, and how it compares with OpenSSL.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ServiceRun {
    pub(crate) measurement: Measurement,
    /// 1,000 over the measurement's CPU-seconds per 1,000 events.
    pub(crate) events_per_cpu_second: Option<f64>,
    /// Events per CPU-second over `openssl speed`'s signatures per second on one core.
    pub(crate) of_openssl: Option<f64>,
}

/// Runs the service alone over `warmup` then `events` events; `openssl_per_second` is
/// `openssl speed`'s figure, when there is one.
pub(super) fn measure_service(
    warmup: u64,
    events: u64,
    openssl_per_second: Option<f64>,
) -> anyhow::Result<ServiceRun> {
    let exe = std::env::current_exe().context("cannot find the regnotify executable")?;
    let work = WorkDir::create()?;
    let cluster = MockCluster::new(1).context("cannot start the in-process kafka cluster")?;
    cluster.create_topic(INPUT_TOPIC, PARTITIONS, 1)?;
    cluster.create_topic(RESULT_TOPIC, PARTITIONS, 1)?;
    cluster.create_topic(DLQ_TOPIC, 1, 1)?;
    let bootstrap = cluster.bootstrap_servers();

    let keys = work.path().join("keys");
    run_quietly(
        regnotify(&exe).arg("keygen").arg("--out").arg(&keys),
        "keygen",
    )?;
    let simulator = Simulator::start(&exe, &keys, &work.path().join("simulator.log"))?;

    let input = work.path().join("events.jsonl");
    write_events(&input, warmup + events)?;
    let produce_config = work.path().join("produce.toml");
    std::fs::write(
        &produce_config,
        format!(
            "[kafka]\nbootstrap_servers = \"{bootstrap}\"\ninput_topic = \"{INPUT_TOPIC}\"\n\
             input_encoding = \"single-object\"\n"
        ),
    )?;
    run_quietly(
        regnotify(&exe)
            .arg("produce")
            .arg("--config")
            .arg(&produce_config)
            .arg("--input")
            .arg(&input),
        "produce",
    )?;

    let config = work.path().join("regnotify.toml");
    std::fs::write(
        &config,
        service_config(&bootstrap, simulator.address, &keys),
    )?;
    let output = regnotify(&exe)
        .arg("measure")
        .arg("--config")
        .arg(&config)
        .arg("--warmup")
        .arg(warmup.to_string())
        .arg("--events")
        .arg(events.to_string())
        .stdin(Stdio::null())
        .output()
        .context("cannot start regnotify measure")?;
    drop(simulator);
    let measurement = match last_json_line::<Measurement>(&output.stdout) {
        Some(Ok(measurement)) if output.status.success() => measurement,
        _ => anyhow::bail!(
            "regnotify measure exited with {} and no measurement; its last lines: {}",
            output.status,
            stderr_tail(&output.stderr)
        ),
    };
    let events_per_cpu_second = measurement
        .cpu_seconds_per_1000_events
        .filter(|cpu| *cpu > 0.0)
        .map(|cpu| 1000.0 / cpu);
    Ok(ServiceRun {
        of_openssl: events_per_cpu_second
            .zip(openssl_per_second.filter(|openssl| *openssl > 0.0))
            .map(|(ours, openssl)| ours / openssl),
        events_per_cpu_second,
        measurement,
    })
}

/// The service's settings: its defaults, and what it needs to reach the cluster and simulator.
fn service_config(bootstrap: &str, simulator: SocketAddr, keys: &Path) -> String {
    format!(
        "[kafka]\nbootstrap_servers = \"{bootstrap}\"\ngroup_id = \"bench-service\"\n\
         input_topic = \"{INPUT_TOPIC}\"\nresult_topic = \"{RESULT_TOPIC}\"\n\
         dlq_topic = \"{DLQ_TOPIC}\"\n\n\
         [alipayplus]\nbase_url = \"http://{simulator}\"\nallow_insecure_http = true\n\
         client_id = \"{CLIENT_ID}\"\nprivate_key_file = \"{}\"\n\
         alipayplus_public_key_file = \"{}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        keys.join("mpp_private_key.pem").display(),
        keys.join("alipayplus_public_key.pem").display(),
    )
}

/// `count` plain approvals over [`MERCHANTS`] merchants, one JSON object a line, as `regnotify
/// produce` reads them.
fn write_events(path: &Path, count: u64) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for index in 0..count {
        writeln!(
            file,
            "{}",
            serde_json::json!({
                "referenceMerchantId": format!("M-{:06}", index % MERCHANTS),
                "registrationRequestId": format!("R-{index:09}"),
                "decision": "APPROVED",
            })
        )?;
    }
    file.flush()?;
    Ok(())
}

/// A `regnotify` command without the caller's `REGNOTIFY_*` variables: the service would read them
/// as settings (the run is at the defaults) and warn about those it does not know.
fn regnotify(exe: &Path) -> Command {
    let mut command = Command::new(exe);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("REGNOTIFY_") {
            command.env_remove(name);
        }
    }
    command
}

fn run_quietly(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start regnotify {what}"))?;
    if !output.status.success() {
        anyhow::bail!(
            "regnotify {what} exited with {}: {}",
            output.status,
            stderr_tail(&output.stderr)
        );
    }
    Ok(())
}

/// `regnotify simulator` in its own process, killed when dropped.
struct Simulator {
    _child: KillOnDrop,
    address: SocketAddr,
}

impl Simulator {
    /// Starts the simulator on a port of its choosing and reads which from its log (`log`, its
    /// stderr), where it says it listens.
    fn start(exe: &Path, keys: &Path, log: &Path) -> anyhow::Result<Simulator> {
        let stderr = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let child = regnotify(exe)
            .arg("simulator")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--private-key-file")
            .arg(keys.join("alipayplus_private_key.pem"))
            .arg("--mpp-public-key-file")
            .arg(keys.join("mpp_public_key.pem"))
            .arg("--client-id")
            .arg(CLIENT_ID)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("cannot start regnotify simulator")?;
        let mut child = KillOnDrop(child);
        let deadline = Instant::now() + SIMULATOR_START;
        loop {
            let said = std::fs::read(log).unwrap_or_default();
            if let Some(address) = listening_address(&String::from_utf8_lossy(&said)) {
                return Ok(Simulator {
                    _child: child,
                    address,
                });
            }
            if let Ok(Some(status)) = child.0.try_wait() {
                anyhow::bail!(
                    "regnotify simulator exited with {status} before listening: {}",
                    stderr_tail(&said)
                );
            }
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "regnotify simulator did not say where it listens within {} s: {}",
                    SIMULATOR_START.as_secs(),
                    stderr_tail(&said)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The address in the simulator's `simulator listening on http://…` line.
fn listening_address(log: &str) -> Option<SocketAddr> {
    log.lines()
        .find_map(|line| line.split_once("simulator listening on "))
        .and_then(|(_, url)| url.trim().strip_prefix("http://"))
        .and_then(|address| address.trim_end_matches('/').parse().ok())
}

/// A child process killed when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A folder of its own under the system's temporary folder, removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> anyhow::Result<WorkDir> {
        let path = std::env::temp_dir().join(format!(
            "regnotify-bench-service-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_millis()
        ));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(WorkDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_runs_at_its_defaults_against_the_cluster_and_the_simulator() {
        let config = service_config(
            "127.0.0.1:9092",
            "127.0.0.1:8090".parse().expect("an address"),
            Path::new("/k"),
        );
        let settings: toml::Value = toml::from_str(&config).expect("the config is TOML");
        assert_eq!(settings["kafka"]["input_topic"].as_str(), Some(INPUT_TOPIC));
        assert_eq!(
            settings["alipayplus"]["base_url"].as_str(),
            Some("http://127.0.0.1:8090")
        );
        assert_eq!(
            settings["alipayplus"]["private_key_file"].as_str(),
            Some("/k/mpp_private_key.pem")
        );
        // Nothing of [processing]: the targets are at the defaults.
        assert!(settings.get("processing").is_none());
    }

    #[test]
    fn the_simulator_address_is_read_from_its_log() {
        let log = "warning: something\nsimulator listening on http://127.0.0.1:40123\n";
        assert_eq!(
            listening_address(log),
            Some("127.0.0.1:40123".parse().expect("an address"))
        );
        assert_eq!(listening_address("starting\n"), None);
        assert_eq!(
            listening_address("simulator listening on https://x\n"),
            None
        );
    }
}
