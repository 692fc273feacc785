//! The `regnotify` binary: parses the command line, sets up logging and calls into the library.
//! Nothing here decides how events are handled.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use regnotify::config::{LogFormat, Settings, Sources};
use regnotify::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "regnotify",
    version,
    about = "Alipay+ notifyRegistrationStatus from Kafka decisions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    /// Measure against the machine's limits: our RSA signing rate against `openssl speed`, and
    /// demo scenarios (latency 0 and 50 ms, max_in_flight 16/64/256, key and partition ordering)
    /// against their CPU and latency bounds, and peak RSS of a long run against a short one.
    /// Prints a table, then the same figures as one JSON document.
    #[command(
        after_help = "Each demo scenario runs as its own `regnotify demo --json` process, so its \
        peak RSS is its own. Progress goes to stderr. Takes about 10 minutes on 2 cores with the \
        defaults (partition ordering at 50 ms is slow); --quick about half a minute."
    )]
    Bench(BenchArgs),
    /// Run the service (as `run` does, same settings) until --warmup then --events more events
    /// reached their outcome, stop it cleanly, and print throughput, notify latency, CPU per
    /// event and peak RSS over the measured events as JSON (scripts/bench-peers.sh).
    Measure(MeasureArgs),
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Events per demo scenario (latency-bound scenarios run at most ten seconds' worth).
    #[arg(long, default_value_t = 5000)]
    events: usize,
    /// Only the scenarios whose name contains this text (names look like `key/50ms/64`).
    #[arg(long, value_name = "TEXT")]
    scenario: Option<String>,
    /// Only key/0ms/256, key/50ms/64 (the targets' scenarios) and key/0ms/256+traces (what
    /// tracing costs), 1,000 events each, 1 s of signing, no RSS comparison.
    #[arg(long)]
    quick: bool,
    /// Seconds of signing for our figure and for `openssl speed`.
    #[arg(long, default_value_t = 3)]
    signer_seconds: u64,
    /// Events of the short and the long run whose peak RSS are compared.
    #[arg(long, value_names = ["SHORT", "LONG"], num_args = 2, default_values_t = [10_000, 100_000])]
    rss_events: Vec<usize>,
    /// Leave out the peak-RSS comparison.
    #[arg(long)]
    no_rss: bool,
    /// Also write the JSON document to this file.
    #[arg(long, value_name = "FILE")]
    json_out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct MeasureArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Events finished before the measurement starts (connections, caches, group join).
    #[arg(long, default_value_t = 2000)]
    warmup: u64,
    /// Events measured after the warm-up.
    #[arg(long, default_value_t = 20_000)]
    events: u64,
}

#[derive(Debug, Args)]
struct ProduceArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// JSON lines to publish, one event per line; `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    input: PathBuf,
    /// Header put on every record, repeatable: `--header trace-id=abc`.
    #[arg(long = "header", value_name = "NAME=VALUE", value_parser = parse_override)]
    headers: Vec<(String, String)>,
}

#[derive(Debug, Args)]
struct ReplayDlqArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Only dead letters with this `dlq.reason`: DECODE_ERROR, INVALID_EVENT, RETRIES_EXHAUSTED
    /// or REQUEST_REFUSED.
    #[arg(long, value_parser = regnotify::tools::parse_dead_letter_reason)]
    reason: Option<regnotify::pipeline::record::DeadLetterReason>,
    /// Stop after this many dead letters replayed.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
    /// Print what would be sent; send and commit nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// Sample events to produce.
    #[arg(long, default_value_t = 2000)]
    events: usize,
    /// Latency the simulator adds to every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Override `processing.max_in_flight`.
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Override `processing.ordering`.
    #[arg(long, value_enum)]
    ordering: Option<OrderingArg>,
    /// Record a span per event and per Alipay+ attempt and export them over OTLP/HTTP to a
    /// receiver in the demo's process, which counts them (what tracing costs).
    #[arg(long)]
    traces: bool,
    /// Run with `processing.exactly_once = true` (outputs and offsets in Kafka transactions).
    #[arg(long)]
    exactly_once: bool,
    /// Print the summary as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Soak run: read the outputs while the run goes on instead of back at the end (for runs
    /// longer than the in-process cluster keeps, e.g. --events 1000000), at most 10,000
    /// merchants, and report throughput, RSS, open files and threads over time.
    #[arg(long)]
    soak: bool,
    /// With --soak: seconds between two throughput lines.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, requires = "soak",
          value_parser = clap::value_parser!(u64).range(1..))]
    report_every: u64,
}

#[derive(Debug, Args)]
struct SimulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: std::net::SocketAddr,
    /// The simulated Alipay+'s private key; it signs every answer.
    #[arg(long, value_name = "FILE")]
    private_key_file: PathBuf,
    /// The MPP's public key, to verify request signatures. Without it any signature is accepted.
    #[arg(long, value_name = "FILE")]
    mpp_public_key_file: Option<PathBuf>,
    /// Fault-injection rules (TOML); see `regnotify::simulator::rules`.
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// Latency added to every answer, in milliseconds (a rules file may set its own).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Client ids accepted (repeatable); none given accepts any.
    #[arg(long = "client-id")]
    client_ids: Vec<String>,
    /// Client ids answered INVALID_CLIENT until accepted at run time (repeatable).
    #[arg(long = "refuse-client-id")]
    refused_client_ids: Vec<String>,
    /// keyVersion of response signatures.
    #[arg(long, default_value_t = 1)]
    key_version: u32,
}

#[derive(Debug, Args)]
struct SignArgs {
    #[arg(long)]
    client_id: String,
    /// The MPP's private key (PEM, PKCS#8 or PKCS#1).
    #[arg(long, value_name = "FILE")]
    private_key_file: PathBuf,
    /// Request URI path (default: the notifyRegistrationStatus path).
    #[arg(long)]
    path: Option<String>,
    /// Request-Time, RFC 3339 with an explicit offset (default: now).
    #[arg(long)]
    request_time: Option<String>,
    /// The exact request body, byte for byte.
    #[arg(long, value_name = "FILE")]
    body_file: PathBuf,
    #[arg(long, default_value_t = 1)]
    key_version: u32,
}

#[derive(Debug, Args)]
struct KeygenArgs {
    /// Directory to write the key files to (created if missing; existing files are kept).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OrderingArg {
    Key,
    Partition,
}

/// Where the settings come from; every command that reads settings takes these.
#[derive(Debug, Args)]
struct ConfigArgs {
    /// TOML configuration file (else `REGNOTIFY_CONFIG`, else built-in defaults).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override one setting, highest precedence: `--set processing.max_in_flight=64`.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_override)]
    overrides: Vec<(String, String)>,
}

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<Settings> {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(args) => {
            let settings = args.load()?;
            telemetry::init(settings.log.format, &settings.log.level);
            runtime()?.block_on(regnotify::service::run(settings))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(args) => {
            telemetry::init(LogFormat::Text, "warn");
            let options = regnotify::demo::DemoOptions {
                events: args.events,
                latency: std::time::Duration::from_millis(args.latency_ms),
                max_in_flight: args.max_in_flight,
                ordering: args.ordering.map(|ordering| match ordering {
                    OrderingArg::Key => regnotify::config::Ordering::Key,
                    OrderingArg::Partition => regnotify::config::Ordering::Partition,
                }),
                progress: !args.json,
                traces: args.traces,
                exactly_once: args.exactly_once,
            };
            if args.soak {
                let soak = regnotify::demo::soak::SoakOptions {
                    report_every: std::time::Duration::from_secs(args.report_every),
                };
                let report = regnotify::demo::soak::run(&options, &soak)?;
                if args.json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    println!("regnotify soak summary\n{}", report.to_table());
                }
                return Ok(if report.succeeded() {
                    ExitCode::SUCCESS
                } else {
                    eprintln!(
                        "error: not every event reached its expected outputs and commit (see \
                         the summary)"
                    );
                    ExitCode::FAILURE
                });
            }
            let summary = regnotify::demo::run(&options)?;
            if args.json {
                println!("{}", serde_json::to_string(&summary)?);
            } else {
                println!("regnotify demo summary\n{}", summary.to_table());
            }
            Ok(if summary.succeeded() {
                ExitCode::SUCCESS
            } else {
                eprintln!("error: not every event reached its terminal outcome and commit");
                ExitCode::FAILURE
            })
        }
        Command::Simulator(args) => {
            telemetry::init(LogFormat::Text, "info");
            let mut config = regnotify::simulator::SimulatorConfig::from_files(
                &args.private_key_file,
                args.mpp_public_key_file.as_deref(),
                None,
            )?;
            config.listen = args.listen;
            config.latency = std::time::Duration::from_millis(args.latency_ms);
            config.client_ids = args.client_ids;
            config.refused_client_ids = args.refused_client_ids;
            config.key_version = args.key_version;
            if let Some(rules) = &args.rules {
                config.apply_rules(regnotify::simulator::rules::SimulatorRules::load(rules)?);
            }
            runtime()?.block_on(async {
                let handle = regnotify::simulator::Simulator::start(config).await?;
                eprintln!("simulator listening on {}", handle.base_url());
                let shutdown = tokio_util::sync::CancellationToken::new();
                regnotify::service::stop_on_signal(shutdown.clone()).await;
                handle.shutdown().await
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sign(args) => {
            let body = std::fs::read(&args.body_file)
                .with_context(|| format!("cannot read body file {}", args.body_file.display()))?;
            let signed = regnotify::alipayplus::sign_command(
                &args.private_key_file,
                &args.client_id,
                args.path.as_deref(),
                args.request_time.as_deref(),
                &body,
                args.key_version,
            )?;
            println!("signed content (between the lines, byte for byte):");
            println!("-----");
            println!("{}", String::from_utf8_lossy(&signed.signed_content));
            println!("-----");
            println!("Signature: {}", signed.signature_header);
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen(args) => {
            let files = regnotify::keys::keygen(&args.out)?;
            println!(
                "MPP private key (mode 0600):        {}",
                files.mpp_private_key.display()
            );
            println!(
                "MPP public key (give to Alipay+):   {}",
                files.mpp_public_key.display()
            );
            println!(
                "simulator private key (mode 0600):  {}",
                files.alipayplus_private_key.display()
            );
            println!(
                "simulator public key:               {}",
                files.alipayplus_public_key.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig(args) => {
            telemetry::init(LogFormat::Text, "warn");
            let settings = args.load()?;
            settings.alipayplus.require_credentials()?;
            let checks = regnotify::alipayplus::check_mpps(&settings.alipayplus);
            for check in &checks {
                println!("{check}");
            }
            let refused: Vec<&str> = checks
                .iter()
                .filter(|check| !check.is_ok())
                .map(|check| check.psp.as_str())
                .collect();
            anyhow::ensure!(
                refused.is_empty(),
                "the keys of mpp {} do not load (see above)",
                refused.join(", ")
            );
            regnotify::alipayplus::Clients::from_settings(&settings.alipayplus)?;
            print!("{}", settings.to_redacted_toml());
            eprintln!("configuration is valid");
            Ok(ExitCode::SUCCESS)
        }
        Command::Produce(args) => {
            telemetry::init(LogFormat::Text, "warn");
            let settings = args.config.load()?;
            let input: Box<dyn std::io::BufRead + Send> = if args.input.as_os_str() == "-" {
                Box::new(std::io::BufReader::new(std::io::stdin()))
            } else {
                let file = std::fs::File::open(&args.input)
                    .with_context(|| format!("cannot open {}", args.input.display()))?;
                Box::new(std::io::BufReader::new(file))
            };
            let options = regnotify::tools::ProduceOptions {
                headers: args.headers,
            };
            let report =
                runtime()?.block_on(regnotify::tools::produce_jsonl(&settings, input, &options))?;
            for refused in &report.refused {
                eprintln!("line {}: refused: {}", refused.line, refused.error);
            }
            if report.refused_count > report.refused.len() {
                eprintln!(
                    "{} more refused lines not listed",
                    report.refused_count - report.refused.len()
                );
            }
            println!("sent {}, refused {}", report.sent, report.refused_count);
            Ok(if report.refused_count == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            })
        }
        Command::Bench(args) => bench(args),
        Command::Measure(args) => {
            let settings = args.config.load()?;
            telemetry::init(LogFormat::Text, "warn");
            let measurement = runtime()?.block_on(regnotify::bench::measure::run(
                settings,
                args.warmup,
                args.events,
            ))?;
            println!("{}", serde_json::to_string(&measurement)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::ReplayDlq(args) => {
            telemetry::init(LogFormat::Text, "warn");
            let settings = args.config.load()?;
            let options = regnotify::tools::ReplayOptions {
                reason: args.reason,
                limit: args.limit,
                dry_run: args.dry_run,
            };
            let verb = if options.dry_run {
                "would send"
            } else {
                "sent"
            };
            let report = runtime()?.block_on(regnotify::tools::replay_dead_letters(
                &settings,
                &options,
                |record| println!("{verb} {record}"),
            ))?;
            println!(
                "{} {}, skipped {} of {} read (group {})",
                if report.dry_run {
                    "would replay"
                } else {
                    "replayed"
                },
                report.replayed,
                report.skipped,
                report.scanned,
                report.group,
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    telemetry::init(LogFormat::Text, "warn");
    let rss_growth = match args.rss_events.as_slice() {
        _ if args.no_rss || args.quick => None,
        [short, long] => Some((*short, *long)),
        _ => anyhow::bail!("--rss-events takes two numbers: SHORT LONG"),
    };
    let options = regnotify::bench::BenchOptions {
        events: if args.quick {
            args.events.min(1000)
        } else {
            args.events
        },
        filter: args.scenario,
        quick: args.quick,
        signer_seconds: if args.quick { 1 } else { args.signer_seconds },
        rss_growth,
    };
    let report = regnotify::bench::run(&options)?;
    println!("{}", report.to_table());
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, &json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("{json}");
    Ok(if report.failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("regnotify")
        .build()
        .context("cannot start the async runtime")
}
