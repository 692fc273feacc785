//! The `regnotify` binary: parses the command line (`cli`), sets up logging, calls into the
//! library and hands each result to `print`. Nothing here decides how events are handled.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use regnotify::config::LogFormat;
use regnotify::telemetry;

mod cli;
mod print;

use cli::{BenchArgs, Cli, Command, OrderingArg};

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
                return print::soak(&report, args.json);
            }
            let summary = regnotify::demo::run(&options)?;
            print::demo(&summary, args.json)
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
            print::signed(&signed);
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen(args) => {
            let files = regnotify::keys::keygen(&args.out)?;
            print::keygen(&files);
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig(args) => {
            telemetry::init(LogFormat::Text, "warn");
            let settings = args.load()?;
            settings.alipayplus.require_credentials()?;
            let checks = regnotify::alipayplus::check_mpps(&settings.alipayplus);
            print::mpp_checks(&checks);
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
            print::config_valid(&settings);
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
            Ok(print::produce(&report))
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
            print::measurement(&measurement)?;
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
            let report = runtime()?.block_on(regnotify::tools::replay_dead_letters(
                &settings,
                &options,
                print::replayed(options.dry_run),
            ))?;
            print::replay(&report);
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
        service: match (args.no_service, args.quick) {
            (true, _) => None,
            (false, true) => Some((500, args.service_events.min(5_000))),
            (false, false) => Some((args.service_events / 10, args.service_events)),
        },
    };
    let report = regnotify::bench::run(&options)?;
    print::bench(&report, args.json_out.as_deref())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("regnotify")
        .build()
        .context("cannot start the async runtime")
}
