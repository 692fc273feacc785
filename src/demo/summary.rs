//! What a demo run saw ([`DemoSummary`]): the fields `regnotify bench` reads back as JSON, the
//! table `regnotify demo` prints, and whether the run succeeded.
//!
//! Owns the report only: never measures, never reads Kafka.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::trace_sink::TraceExports;

/// What the demo saw; printed as a table or as one JSON object (which `regnotify bench` reads
/// back from the demo runs it starts).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DemoSummary {
    pub(crate) events: u64,
    pub(crate) notified: u64,
    pub(crate) rejected: u64,
    pub(crate) dead_lettered: u64,
    /// Undecodable records: dead-lettered, no outcome.
    pub(crate) poison: u64,
    pub(crate) dlq_records: u64,
    pub(crate) dead_letters_by_reason: BTreeMap<String, u64>,
    pub(crate) outcomes_by_result_code: BTreeMap<String, u64>,
    /// Outcome records read back from the result topic.
    pub(crate) result_records: u64,
    pub(crate) http_calls: u64,
    pub(crate) retries: u64,
    /// From the start of the pipeline to the last terminal outcome.
    pub(crate) elapsed_seconds: f64,
    /// From the start of the pipeline to the first record consumed (joining the group).
    pub(crate) startup_seconds: f64,
    /// From the first record consumed to the last terminal outcome: the measured window.
    pub(crate) measured_seconds: f64,
    /// Events over the measured window.
    pub(crate) events_per_second: f64,
    /// Events over the middle of the run, from 10 % to 90 % of them terminal (no start-up, no
    /// tail); `None` for runs too short to have one.
    #[serde(default)]
    pub(crate) steady_events_per_second: Option<f64>,
    /// Notify latency (one HTTP call as the client sees it, signing excluded), all calls.
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    /// From handing an event's outputs to the producer to Kafka's acknowledgement of them, p50.
    #[serde(default)]
    pub(crate) output_ack_p50_ms: f64,
    /// From each decodable event's `occurredAt` (set when the demo produced it) to its
    /// terminal outcome.
    pub(crate) end_to_end_p99_ms: f64,
    /// CPU time of the whole process (pipeline, simulator, mock cluster, producer) over the
    /// measured window; `None` without `/proc`.
    pub(crate) cpu_seconds: Option<f64>,
    pub(crate) cpu_seconds_per_1000_events: Option<f64>,
    /// Peak resident set size of the process when the last event finished (before the read-back).
    pub(crate) peak_rss_bytes: Option<u64>,
    /// Cores the process may use.
    pub(crate) cores: usize,
    pub(crate) latency_ms: u64,
    pub(crate) max_in_flight: usize,
    pub(crate) ordering: String,
    /// With `--traces`: what the OTLP receiver was sent (spans: one per event and per attempt).
    #[serde(default)]
    pub(crate) trace_exports: Option<TraceExports>,
    /// Every event reached its terminal state, and Kafka holds exactly one outcome per decodable
    /// event and one dead letter per dead-lettered event.
    pub(crate) all_terminal: bool,
    /// The group's committed offset equals the end of every input partition.
    pub(crate) all_committed: bool,
    /// Run with `processing.exactly_once`: the in-process cluster answers transactional offset
    /// commits without storing them, so `all_committed` cannot hold (the real-broker suites
    /// check those commits) and is not required.
    #[serde(default)]
    pub(crate) exactly_once: bool,
    /// Every merchant's requests reached the simulator in offset order.
    pub(crate) merchant_order_kept: bool,
}

impl DemoSummary {
    /// The summary as the table `regnotify demo` prints.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let mut line = |label: &str, value: String| {
            out.push_str(&format!("  {label:<34} {value}\n"));
        };
        line("events produced", self.events.to_string());
        line("outcome NOTIFIED", self.notified.to_string());
        line("outcome REJECTED", self.rejected.to_string());
        line("outcome DEAD_LETTERED", self.dead_lettered.to_string());
        line("undecodable (dead letter only)", self.poison.to_string());
        for (code, count) in &self.outcomes_by_result_code {
            line(&format!("  result code {code}"), count.to_string());
        }
        line(
            "dead letters in the DLQ topic",
            self.dlq_records.to_string(),
        );
        for (reason, count) in &self.dead_letters_by_reason {
            line(&format!("  reason {reason}"), count.to_string());
        }
        line(
            "outcomes in the result topic",
            self.result_records.to_string(),
        );
        line("HTTP calls to Alipay+", self.http_calls.to_string());
        line("retries", self.retries.to_string());
        if let Some(exports) = &self.trace_exports {
            line(
                "spans exported (OTLP/HTTP)",
                format!(
                    "{} of {} (one per event and per call), {} requests, {:.1} MB",
                    exports.spans,
                    self.events + self.http_calls,
                    exports.requests,
                    exports.bytes as f64 / 1e6
                ),
            );
        }
        line(
            "settings",
            format!(
                "latency {} ms, max_in_flight {}, ordering {}",
                self.latency_ms, self.max_in_flight, self.ordering
            ),
        );
        line(
            "elapsed",
            format!(
                "{:.2} s ({:.2} s joining the group)",
                self.elapsed_seconds, self.startup_seconds
            ),
        );
        line(
            "throughput",
            format!(
                "{:.0} events/s (first record consumed to last outcome)",
                self.events_per_second
            ),
        );
        if let Some(steady) = self.steady_events_per_second {
            line(
                "steady throughput",
                format!("{steady:.0} events/s (from 10 % to 90 % of the events terminal)"),
            );
        }
        line(
            "notify latency p50 / p99",
            format!("{:.1} ms / {:.1} ms", self.p50_ms, self.p99_ms),
        );
        line(
            "output acknowledgement p50",
            format!("{:.1} ms", self.output_ack_p50_ms),
        );
        line(
            "end-to-end latency p99",
            format!("{:.1} ms", self.end_to_end_p99_ms),
        );
        if let Some(cpu) = self.cpu_seconds_per_1000_events {
            line(
                "CPU per 1,000 events",
                format!("{cpu:.2} s ({} cores)", self.cores),
            );
        }
        if let Some(bytes) = self.peak_rss_bytes {
            line("peak RSS", format!("{:.1} MB", bytes as f64 / 1e6));
        }
        line("every event terminal", yes_no(self.all_terminal));
        if self.exactly_once && !self.all_committed {
            line(
                "every input offset committed",
                "not stored by the in-process cluster (transactional commits)".to_string(),
            );
        } else {
            line("every input offset committed", yes_no(self.all_committed));
        }
        line("per-merchant order kept", yes_no(self.merchant_order_kept));
        out
    }

    pub fn succeeded(&self) -> bool {
        self.all_terminal && (self.all_committed || self.exactly_once) && self.merchant_order_kept
    }
}

pub(super) fn yes_no(value: bool) -> String {
    if value { "yes" } else { "NO" }.to_string()
}
