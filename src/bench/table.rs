//! The bench report as tables for people ([`BenchReport::to_table`]): the machine, the signer,
//! one row per scenario against its bounds, the service alone, the RSS growth, the tracing and
//! exactly-once costs, the failures.
//!
//! Formats only: never measures.

use super::report::BenchReport;

fn fraction_text(value: Option<f64>) -> String {
    value.map_or("–".to_string(), |f| format!("{f:.2}"))
}

fn rate_text(value: Option<f64>) -> String {
    value.map_or("–".to_string(), |v| format!("{v:.0}"))
}

impl BenchReport {
    /// The report as tables for people.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let machine = &self.machine;
        out.push_str(&format!(
            "regnotify bench {} — {} cores, {}, started {}, load average {} before, {} after\n\n",
            machine.regnotify_version,
            machine.cores,
            machine.cpu_model.as_deref().unwrap_or("unknown CPU"),
            machine.started_at,
            fraction_text(machine.load_average_before),
            fraction_text(machine.load_average_after),
        ));
        let signer = &self.signer;
        out.push_str(&format!(
            "RSA-2048 PKCS#1 v1.5 SHA-256 signatures per second, one core (best of {} alternating rounds)\n",
            signer.rounds
        ));
        out.push_str(&format!(
            "  regnotify (aws-lc)  {:>8.0}\n",
            signer.ours_per_second
        ));
        match (&signer.openssl, &signer.openssl_unavailable) {
            (Some(speed), _) => out.push_str(&format!(
                "  openssl speed       {:>8.0}   ({})\n  ratio               {:>8.2}\n\n",
                speed.signs_per_second,
                speed.version,
                signer.ratio.unwrap_or(0.0)
            )),
            (None, why) => out.push_str(&format!(
                "  openssl speed       unavailable: {}\n\n",
                why.as_deref().unwrap_or("unknown")
            )),
        }
        out.push_str(
            "demo scenarios (ordering/latency/max_in_flight); rates over the window from the first record \
             consumed to the last outcome,\n  steady: from 10 % to 90 % of the events terminal (no \
             start-up, no tail)\n",
        );
        out.push_str(&format!(
            "  {:<20} {:>6} {:>8} {:>7} {:>9} {:>9} {:>9} {:>8} {:>7} {:>8} {:>6} {:>8} {:>6} {:>6} {:>5} {:>4}\n",
            "scenario",
            "events",
            "ev/s",
            "steady",
            "notify50",
            "notify99",
            "e2e p99",
            "CPU/1k",
            "RSS MB",
            "CPU bnd",
            "frac",
            "lat bnd",
            "frac",
            "steady",
            "load",
            "ok"
        ));
        for result in &self.scenarios {
            let demo = &result.demo;
            out.push_str(&format!(
                "  {:<20} {:>6} {:>8.0} {:>7} {:>7.1}ms {:>7.1}ms {:>7.0}ms {:>7.2}s {:>7.1} {:>8} {:>6} {:>8} {:>6} {:>6} {:>5} {:>4}\n",
                result.name,
                demo.events,
                demo.events_per_second,
                rate_text(demo.steady_events_per_second),
                demo.p50_ms,
                demo.p99_ms,
                demo.end_to_end_p99_ms,
                demo.cpu_seconds_per_1000_events.unwrap_or(f64::NAN),
                demo.peak_rss_bytes.unwrap_or(0) as f64 / 1e6,
                rate_text(result.cpu_bound),
                fraction_text(result.fraction_of_cpu_bound),
                rate_text(result.latency_bound),
                fraction_text(result.fraction_of_latency_bound),
                fraction_text(result.steady_fraction_of_latency_bound),
                fraction_text(result.load_average_before),
                if demo.succeeded() { "yes" } else { "NO" },
            ));
        }
        if let Some(service) = &self.service {
            let run = &service.measurement;
            out.push_str(&format!(
                "\nthe service alone (`regnotify measure` at its defaults in its own process, latency \
                 0, plain approvals; the mock cluster and the simulator outside it)\n  {} events \
                 after {}: {:.0} events/s, notify p50 {:.1} ms, p99 {:.1} ms, {} CPU-s per 1,000 \
                 events, peak RSS {:.1} MB\n  events per CPU-second {}, {} of openssl speed's \
                 signatures per CPU-second\n",
                run.events,
                run.warmup_events,
                run.events_per_second,
                run.notify_p50_ms,
                run.notify_p99_ms,
                run.cpu_seconds_per_1000_events
                    .map_or("–".to_string(), |cpu| format!("{cpu:.3}")),
                run.peak_rss_bytes.unwrap_or(0) as f64 / 1e6,
                rate_text(service.events_per_cpu_second),
                fraction_text(service.of_openssl),
            ));
        }
        if let Some(growth) = &self.rss_growth {
            let mb = |bytes: Option<u64>| {
                bytes.map_or("–".to_string(), |b| format!("{:.1} MB", b as f64 / 1e6))
            };
            out.push_str(&format!(
                "\npeak RSS, default settings: {} events {}, {} events {}, ratio {}{}\n",
                growth.short_events,
                mb(growth.short_peak_rss_bytes),
                growth.long_events,
                mb(growth.long_peak_rss_bytes),
                fraction_text(growth.ratio),
                if growth.both_succeeded {
                    ""
                } else {
                    " (a run failed its checks)"
                },
            ));
        }
        let costs = self.tracing_costs();
        if !costs.is_empty() {
            out.push_str(
                "\ntracing: every span recorded and exported (OTLP/HTTP) against export off, same \
                 scenario\n",
            );
            for cost in costs {
                out.push_str(&format!(
                    "  {:<20} events per CPU-second {} of off, events/s {} of off, {} spans \
                     exported of {} (events + calls)\n",
                    cost.scenario,
                    fraction_text(cost.cpu_efficiency_ratio),
                    fraction_text(cost.throughput_ratio),
                    cost.spans_exported,
                    cost.spans_expected,
                ));
            }
        }
        let costs = self.exactly_once_costs();
        if !costs.is_empty() {
            out.push_str(
                "\nexactly-once: outputs and offsets in Kafka transactions against at-least-once, \
                 same scenario\n",
            );
            for cost in costs {
                out.push_str(&format!(
                    "  {:<20} events/s {} of at-least-once, events per CPU-second {} of it\n",
                    cost.scenario,
                    fraction_text(cost.throughput_ratio),
                    fraction_text(cost.cpu_efficiency_ratio),
                ));
            }
        }
        for (name, why) in &self.failures {
            out.push_str(&format!("\nFAILED {name}: {why}\n"));
        }
        out
    }
}
