//! The `regnotify` binary's command line: its subcommands and their arguments (clap), and how
//! `--config` and `--set` become [`Settings`]. A module of `main.rs`, not of the library.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use regnotify::config::{Settings, Sources};

#[derive(Debug, Parser)]
#[command(
    name = "regnotify",
    version,
    about = "Alipay+ notifyRegistrationStatus from Kafka decisions"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the service: consume decisions, notify Alipay+, publish outcomes, commit.
    Run(ConfigArgs),
    /// The whole flow on one machine with nothing installed: an in-process Kafka cluster, an
    /// Alipay+ simulator with fresh keys, sample events including bad ones; prints a summary.
    Demo(DemoArgs),
    /// A standalone Alipay+ stand-in over HTTP: verifies request signatures, signs answers,
    /// injects latency and faults.
    Simulator(SimulatorArgs),
    /// Print the exact content that is signed and the `Signature` header for a request body, to
    /// debug INVALID_SIGNATURE.
    Sign(SignArgs),
    /// Write an RSA-2048 key pair for the MPP and one for a simulated Alipay+ (PEM; private keys
    /// mode 0600).
    Keygen(KeygenArgs),
    /// Validate a configuration file, load the keys it names, list each MPP with its client id,
    /// key version and whether its keys load and pair, and print the effective settings (secrets
    /// redacted).
    CheckConfig(ConfigArgs),
    /// Publish decisions written as JSON lines (the input schema's fields in camelCase) as Avro
    /// events on `kafka.input_topic`, in the configured framing, keyed by referenceMerchantId.
    #[command(
        after_help = "Lines that cannot be parsed or encoded are reported on stderr with \
        their line numbers and skipped; blank lines are ignored; events breaking a field rule are \
        sent (the service dead-letters them as INVALID_EVENT). Prints `sent N, refused M` once \
        Kafka has acknowledged every record.\n\nExit status: 0 every line sent, 3 some lines \
        refused, 1 fatal error (e.g. Kafka did not acknowledge), 2 usage error."
    )]
    Produce(ProduceArgs),
    /// Send dead letters back to `kafka.input_topic` with their original key, value and headers,
    /// every `dlq.*` header stripped.
    #[command(
        after_help = "Reads `kafka.dlq_topic` up to its end as seen at start, from where \
        the replay group left off: `<group_id>-replay-dlq`, or `<group_id>-replay-dlq-<reason>` \
        with --reason (e.g. regnotify-replay-dlq-request-refused), so a filtered run never takes \
        other reasons' dead letters away from a later run. Each dead letter is committed in that \
        group once its copy is acknowledged, so a second run does not replay it again; reset the \
        group's offsets to replay again. Do not run two replays of the same group at once.\n\n\
        Exit status: 0 done (also when nothing was replayed), 1 error, 2 usage error."
    )]
    ReplayDlq(ReplayDlqArgs),
    /// Measure against the machine's limits: our RSA signing rate against `openssl speed`, demo
    /// scenarios (latency 0 and 50 ms, max_in_flight 16/64/256, key and partition ordering)
    /// against their CPU and latency bounds, the service alone (its events per CPU-second against
    /// OpenSSL's signatures per CPU-second), and peak RSS of a long run against a short one.
    /// Prints a table, then the same figures as one JSON document.
    #[command(
        after_help = "Each demo scenario runs as its own `regnotify demo --json` process, so its \
        peak RSS is its own; the service alone runs as `regnotify measure`, the simulator as \
        `regnotify simulator`, each in its own process. Progress goes to stderr. Takes about 10 \
        minutes on 2 cores with the defaults (partition ordering at 50 ms is slow); --quick \
        about half a minute."
    )]
    Bench(BenchArgs),
    /// Run the service (as `run` does, same settings) until --warmup then --events more events
    /// reached their outcome, stop it cleanly, and print throughput, notify latency, CPU per
    /// event and peak RSS over the measured events as JSON (scripts/bench-peers.sh).
    Measure(MeasureArgs),
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// Events per demo scenario (latency-bound scenarios run at most ten seconds' worth).
    #[arg(long, default_value_t = 5000)]
    pub(crate) events: usize,
    /// Only the scenarios whose name contains this text (names look like `key/50ms/64`).
    #[arg(long, value_name = "TEXT")]
    pub(crate) scenario: Option<String>,
    /// Only key/0ms/256, key/50ms/64 (the targets' scenarios) and key/0ms/256+traces (what
    /// tracing costs), 1,000 events each, 1 s of signing, no RSS comparison, the service alone
    /// over at most 5,000 events.
    #[arg(long)]
    pub(crate) quick: bool,
    /// Seconds of signing for our figure and for `openssl speed`.
    #[arg(long, default_value_t = 3)]
    pub(crate) signer_seconds: u64,
    /// Events of the short and the long run whose peak RSS are compared.
    #[arg(long, value_names = ["SHORT", "LONG"], num_args = 2, default_values_t = [10_000, 100_000])]
    pub(crate) rss_events: Vec<usize>,
    /// Leave out the peak-RSS comparison.
    #[arg(long)]
    pub(crate) no_rss: bool,
    /// Events the service-alone run measures (after a tenth as many of warm-up): `regnotify
    /// measure` at its defaults, latency 0, in its own process, against OpenSSL's signing rate.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) service_events: u64,
    /// Leave out the service-alone run.
    #[arg(long)]
    pub(crate) no_service: bool,
    /// Also write the JSON document to this file.
    #[arg(long, value_name = "FILE")]
    pub(crate) json_out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct MeasureArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// Events finished before the measurement starts (connections, caches, group join).
    #[arg(long, default_value_t = 2000)]
    pub(crate) warmup: u64,
    /// Events measured after the warm-up.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) events: u64,
}

#[derive(Debug, Args)]
pub(crate) struct ProduceArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// JSON lines to publish, one event per line; `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    pub(crate) input: PathBuf,
    /// Header put on every record, repeatable: `--header trace-id=abc`.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_override)]
    pub(crate) headers: Vec<(String, String)>,
}

#[derive(Debug, Args)]
pub(crate) struct ReplayDlqArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// Only dead letters with this `dlq.reason`: DECODE_ERROR, INVALID_EVENT, RETRIES_EXHAUSTED
    /// or REQUEST_REFUSED.
    #[arg(long, value_parser = regnotify::tools::parse_dead_letter_reason)]
    pub(crate) reason: Option<regnotify::event::DeadLetterReason>,
    /// Stop after this many dead letters replayed.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) limit: Option<u64>,
    /// Print what would be sent; send and commit nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Sample events to produce.
    #[arg(long, default_value_t = 2000)]
    pub(crate) events: usize,
    /// Latency the simulator adds to every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub(crate) latency_ms: u64,
    /// Override `processing.max_in_flight`.
    #[arg(long)]
    pub(crate) max_in_flight: Option<usize>,
    /// Override `processing.ordering`.
    #[arg(long, value_enum)]
    pub(crate) ordering: Option<OrderingArg>,
    /// Record a span per event and per Alipay+ attempt and export them over OTLP/HTTP to a
    /// receiver in the demo's process, which counts them (what tracing costs).
    #[arg(long)]
    pub(crate) traces: bool,
    /// Run with `processing.exactly_once = true` (outputs and offsets in Kafka transactions).
    #[arg(long)]
    pub(crate) exactly_once: bool,
    /// Print the summary as one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
    /// Soak run: read the outputs while the run goes on instead of back at the end (for runs
    /// longer than the in-process cluster keeps, e.g. --events 1000000), at most 10,000
    /// merchants, and report throughput, RSS, open files and threads over time.
    #[arg(long)]
    pub(crate) soak: bool,
    /// With --soak: seconds between two throughput lines.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, requires = "soak",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) report_every: u64,
}

#[derive(Debug, Args)]
pub(crate) struct SimulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub(crate) listen: std::net::SocketAddr,
    /// The simulated Alipay+'s private key; it signs every answer.
    #[arg(long, value_name = "FILE")]
    pub(crate) private_key_file: PathBuf,
    /// The MPP's public key, to verify request signatures. Without it any signature is accepted.
    #[arg(long, value_name = "FILE")]
    pub(crate) mpp_public_key_file: Option<PathBuf>,
    /// Fault-injection rules (TOML); see `regnotify::simulator::rules`.
    #[arg(long, value_name = "FILE")]
    pub(crate) rules: Option<PathBuf>,
    /// Latency added to every answer, in milliseconds (a rules file may set its own).
    #[arg(long, default_value_t = 0)]
    pub(crate) latency_ms: u64,
    /// Client ids accepted (repeatable); none given accepts any.
    #[arg(long = "client-id")]
    pub(crate) client_ids: Vec<String>,
    /// Client ids answered INVALID_CLIENT until accepted at run time (repeatable).
    #[arg(long = "refuse-client-id")]
    pub(crate) refused_client_ids: Vec<String>,
    /// keyVersion of response signatures.
    #[arg(long, default_value_t = 1)]
    pub(crate) key_version: u32,
}

#[derive(Debug, Args)]
pub(crate) struct SignArgs {
    #[arg(long)]
    pub(crate) client_id: String,
    /// The MPP's private key (PEM, PKCS#8 or PKCS#1).
    #[arg(long, value_name = "FILE")]
    pub(crate) private_key_file: PathBuf,
    /// Request URI path (default: the notifyRegistrationStatus path).
    #[arg(long)]
    pub(crate) path: Option<String>,
    /// Request-Time, RFC 3339 with an explicit offset (default: now).
    #[arg(long)]
    pub(crate) request_time: Option<String>,
    /// The exact request body, byte for byte.
    #[arg(long, value_name = "FILE")]
    pub(crate) body_file: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub(crate) key_version: u32,
}

#[derive(Debug, Args)]
pub(crate) struct KeygenArgs {
    /// Directory to write the key files to (created if missing; existing files are kept).
    #[arg(long, value_name = "DIR")]
    pub(crate) out: PathBuf,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum OrderingArg {
    Key,
    Partition,
}

/// Where the settings come from; every command that reads settings takes these.
#[derive(Debug, Args)]
pub(crate) struct ConfigArgs {
    /// TOML configuration file (else `REGNOTIFY_CONFIG`, else built-in defaults).
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Override one setting, highest precedence: `--set processing.max_in_flight=64`.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_override)]
    pub(crate) overrides: Vec<(String, String)>,
}

impl ConfigArgs {
    pub(crate) fn load(&self) -> anyhow::Result<Settings> {
        let sources = Sources {
            config_file: self.config.clone(),
            overrides: self.overrides.clone(),
        };
        Ok(Settings::load(&sources)?)
    }
}

fn parse_override(raw: &str) -> Result<(String, String), String> {
    let (key, value) = raw
        .split_once('=')
        .ok_or_else(|| format!("`{raw}` is not KEY=VALUE"))?;
    if key.trim().is_empty() {
        return Err(format!("`{raw}` has an empty key"));
    }
    Ok((key.trim().to_string(), value.to_string()))
}
