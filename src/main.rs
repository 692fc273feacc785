//! The `regnotify` binary: parses the command line, sets up logging and calls into the library.
//! Nothing here decides how events are handled.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use regnotify::config::{LogFormat, Settings, Sources};
use regnotify::telemetry;

#[derive(Debug, Parser)]
#[command(name = "regnotify", version, about = "Alipay+ notifyRegistrationStatus from Kafka decisions")]
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
    /// Validate a configuration file, load the keys it names and print the effective settings
    /// (secrets redacted).
    CheckConfig(ConfigArgs),
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
    /// Print the summary as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
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
            };
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
        Command::CheckConfig(args) => {
            telemetry::init(LogFormat::Text, "warn");
            let settings = args.load()?;
            settings.alipayplus.require_credentials()?;
            regnotify::alipayplus::AlipayPlusClient::from_settings(&settings.alipayplus)
                .context("the alipay+ client cannot be built from these settings")?;
            print!("{}", settings.to_redacted_toml());
            eprintln!("configuration is valid");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("regnotify")
        .build()
        .context("cannot start the async runtime")
}
