//! `regnotify demo --soak`: the demo at lengths the mock cluster cannot hold, checked as it goes.
//!
//! The plain demo reads the output topics back at the end, which only works while the mock cluster
//! still holds every output (about 250,000 events). A soak instead reads the result and dead-letter
//! topics from the start of the run, keeping up with the pipeline, so the broker's size limit never
//! drops an unread record; each output is entered in a [`SoakLedger`] against what the producer was
//! told it wrote, one bit per input offset. At the end every produced event must have ended as its
//! sample kind says (an outcome, a dead letter, or both), every input partition must be committed
//! to its end, and merchant order must have held. On the way it prints one line per interval:
//! events/s in that interval, resident memory, open file descriptors and threads.
//!
//! Its own memory must stay flat apart from those bits: regular merchants are capped at
//! [`SOAK_MERCHANTS`] (the order check and the simulator remember one entry per merchant), and the
//! output reader keeps no record once it has entered it.

use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::ledger::{LedgerVerdict, SoakLedger};
use super::options::DemoOptions;
use super::produce::produce_in_step;
use super::progress::wait_until;
use super::rig::{Rig, on_mock_cluster};
use super::summary::yes_no;
use super::{DLQ_TOPIC, INPUT_TOPIC, RESULT_TOPIC};
use crate::codec::decode_outcome;
use crate::inspect;
use crate::observe::Stats;
use crate::usage::status_number;

/// Regular merchants in a soak (the demo's own rule, events / 4, would give 250,000 at a million
/// events, and the order check and the simulator keep an entry for each).
pub(crate) const SOAK_MERCHANTS: usize = 10_000;
/// How long the output reader may take, once the pipeline has stopped, to reach the topics' ends.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// What a soak is asked to do beside the demo's own options.
#[derive(Debug, Clone)]
pub struct SoakOptions {
    /// Time between two throughput lines.
    pub report_every: Duration,
}

/// One interval of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SoakInterval {
    /// From the start of the pipeline to the end of this interval.
    pub(crate) seconds: f64,
    /// Events terminal at the end of this interval.
    pub(crate) terminal: u64,
    /// Events that became terminal in this interval, per second.
    pub(crate) events_per_second: f64,
    pub(crate) rss_bytes: Option<u64>,
    pub(crate) open_fds: Option<u64>,
    pub(crate) threads: Option<u64>,
}

/// What this process holds, from `/proc/self`; `None` where it cannot be read.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(crate) struct ProcessUsage {
    /// `VmRSS`.
    pub(crate) rss_bytes: Option<u64>,
    /// `VmHWM`: the peak so far.
    pub(crate) peak_rss_bytes: Option<u64>,
    pub(crate) open_fds: Option<u64>,
    pub(crate) threads: Option<u64>,
}

impl ProcessUsage {
    pub(crate) fn now() -> ProcessUsage {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        ProcessUsage {
            rss_bytes: status_number(&status, "VmRSS").and_then(|kib| kib.checked_mul(1024)),
            peak_rss_bytes: status_number(&status, "VmHWM").and_then(|kib| kib.checked_mul(1024)),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|entries| entries.count() as u64),
            threads: status_number(&status, "Threads"),
        }
    }
}

/// What the soak saw; printed as a table or as one JSON object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SoakReport {
    pub(crate) events: u64,
    pub(crate) notified: u64,
    pub(crate) rejected: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) poison: u64,
    pub(crate) merchants: usize,
    pub(crate) latency_ms: u64,
    pub(crate) max_in_flight: usize,
    /// From the start of the pipeline to the last terminal outcome.
    pub(crate) elapsed_seconds: f64,
    /// From the start of the pipeline to the first record consumed (joining the group).
    pub(crate) startup_seconds: f64,
    /// Events over the time from the first record consumed to the last terminal outcome.
    pub(crate) events_per_second: f64,
    pub(crate) report_every_seconds: f64,
    pub(crate) intervals: Vec<SoakInterval>,
    /// When the first record was consumed.
    pub(crate) at_start: ProcessUsage,
    /// When the last event became terminal, the pipeline still running.
    pub(crate) at_end: ProcessUsage,
    /// The outputs read during the run against what was produced.
    pub(crate) ledger: LedgerVerdict,
    /// Errors the output reader's consumer reported (it carries on after each).
    pub(crate) reader_errors: u64,
    /// Every event reached its terminal state in time, and Kafka holds exactly the outputs its
    /// sample kind calls for.
    pub(crate) all_terminal: bool,
    /// The group's committed offset equals the end of every input partition.
    pub(crate) all_committed: bool,
    pub(crate) merchant_order_kept: bool,
}

/// Runs a soak to the end. Blocking, as [`super::run`].
pub fn run(options: &DemoOptions, soak: &SoakOptions) -> anyhow::Result<SoakReport> {
    on_mock_cluster(|bootstrap| async move { soak_against(&bootstrap, options, soak).await })
}

async fn soak_against(
    bootstrap: &str,
    options: &DemoOptions,
    soak: &SoakOptions,
) -> anyhow::Result<SoakReport> {
    let total = options.events as u64;
    let ledger = Arc::new(Mutex::new(SoakLedger::new(total)));
    // The reader starts before the pipeline, so nothing it must see is written before it looks.
    let control = Arc::new(ReaderControl::default());
    let reader = {
        let (bootstrap, ledger, control) = (
            bootstrap.to_string(),
            Arc::clone(&ledger),
            Arc::clone(&control),
        );
        tokio::task::spawn_blocking(move || read_outputs(&bootstrap, &ledger, &control))
    };
    // On an early return the runtime would wait for ever for the reader's thread.
    let _abandon = AbandonOnDrop(Arc::clone(&control));
    let rig = Rig::start(bootstrap, options, options.progress).await?;
    let (stats, started) = (Arc::clone(&rig.stats), rig.started);
    let group = rig.settings.kafka.group_id.clone();
    let max_in_flight = rig.settings.processing.max_in_flight;
    let first_consumed = tokio::spawn(first_consumption(Arc::clone(&stats)));
    let meter_stop = CancellationToken::new();
    let meter = tokio::spawn(meter(
        Arc::clone(&stats),
        Arc::clone(&ledger),
        started,
        soak.report_every,
        meter_stop.clone(),
    ));

    let merchants = (options.events / 4).clamp(1, SOAK_MERCHANTS);
    let hidden = indicatif::ProgressBar::hidden();
    let produced = produce_in_step(
        bootstrap,
        options.events,
        merchants,
        &stats,
        &hidden,
        |delivered| lock(&ledger).produced(delivered),
    )
    .await?;
    let finished_at = wait_until(Duration::from_secs(120 + total / 50), &hidden, || {
        stats.terminal() >= total
    })
    .await;
    let finished = finished_at.unwrap_or_else(Instant::now);
    let at_end = ProcessUsage::now();
    meter_stop.cancel();
    let intervals = meter.await.context("the throughput meter failed")?;
    first_consumed.abort();
    let (consuming_from, at_start) = match first_consumed.await {
        Ok(mark) => mark,
        Err(_) => (started, ProcessUsage::default()),
    };

    let merchant_order_kept = rig.stop(bootstrap).await?;
    // The pipeline has stopped: the outputs' ends are final, and the reader now reads up to them.
    control.finish.store(true, AtomicOrdering::Relaxed);
    let reader_errors = reader.await.context("the output reader failed")??;
    let verdict = lock(&ledger).verdict();
    let progress = {
        let (bootstrap, group) = (bootstrap.to_string(), group.clone());
        tokio::task::spawn_blocking(move || {
            inspect::group_progress(&bootstrap, &group, INPUT_TOPIC, Duration::from_secs(30))
        })
        .await??
    };
    let measured = finished
        .saturating_duration_since(consuming_from)
        .as_secs_f64();
    Ok(SoakReport {
        events: total,
        notified: stats.notified.load(AtomicOrdering::Relaxed),
        rejected: stats.rejected.load(AtomicOrdering::Relaxed),
        dead_lettered: stats.dead_lettered.load(AtomicOrdering::Relaxed),
        poison: stats.poison.load(AtomicOrdering::Relaxed),
        merchants,
        latency_ms: options.latency.as_millis() as u64,
        max_in_flight,
        elapsed_seconds: finished.saturating_duration_since(started).as_secs_f64(),
        startup_seconds: consuming_from
            .saturating_duration_since(started)
            .as_secs_f64(),
        events_per_second: if measured > 0.0 {
            total as f64 / measured
        } else {
            0.0
        },
        report_every_seconds: soak.report_every.as_secs_f64(),
        intervals,
        at_start,
        at_end,
        all_terminal: finished_at.is_some()
            && stats.terminal() == total
            && verdict.clean()
            && verdict.produced == total
            && verdict.expected_outcomes == produced.decodable
            && verdict.expected_dead_letters == produced.dead_letters,
        ledger: verdict,
        reader_errors,
        all_committed: inspect::fully_committed(&progress),
        merchant_order_kept,
    })
}

fn lock(ledger: &Mutex<SoakLedger>) -> std::sync::MutexGuard<'_, SoakLedger> {
    ledger.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Waits for the first consumed record; the instant and what the process held then.
async fn first_consumption(stats: Arc<Stats>) -> (Instant, ProcessUsage) {
    while stats.consumed.load(AtomicOrdering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (Instant::now(), ProcessUsage::now())
}

/// Every `every` until `stop`, one interval: events/s, memory, descriptors and threads, printed
/// on stderr as it ends. The last, shorter interval is kept when events finished in it.
async fn meter(
    stats: Arc<Stats>,
    ledger: Arc<Mutex<SoakLedger>>,
    started: Instant,
    every: Duration,
    stop: CancellationToken,
) -> Vec<SoakInterval> {
    let mut intervals = Vec::new();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last_at, mut last_terminal) = (Instant::now(), stats.terminal());
    loop {
        let stopping = tokio::select! {
            _ = stop.cancelled() => true,
            _ = ticks.tick() => false,
        };
        let (now, terminal) = (Instant::now(), stats.terminal());
        let seconds = now.saturating_duration_since(last_at).as_secs_f64();
        if seconds > 0.0 && (!stopping || terminal > last_terminal) {
            let usage = ProcessUsage::now();
            let interval = SoakInterval {
                seconds: now.saturating_duration_since(started).as_secs_f64(),
                terminal,
                events_per_second: terminal.saturating_sub(last_terminal) as f64 / seconds,
                rss_bytes: usage.rss_bytes,
                open_fds: usage.open_fds,
                threads: usage.threads,
            };
            let read = lock(&ledger).records_read();
            eprintln!("soak {}, {read} outputs read", interval.line());
            intervals.push(interval);
        }
        (last_at, last_terminal) = (now, terminal);
        if stopping {
            return intervals;
        }
    }
}

/// Tells the output reader when to finish.
#[derive(Debug, Default)]
struct ReaderControl {
    /// The pipeline has stopped: read up to the topics' ends as they are now, then return.
    finish: AtomicBool,
    /// The soak gave up: return at once.
    abandon: AtomicBool,
}

struct AbandonOnDrop(Arc<ReaderControl>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        self.0.abandon.store(true, AtomicOrdering::Relaxed);
    }
}

/// Reads the result and dead-letter topics from their start into `ledger` until told to finish,
/// then up to the ends they have at that moment (writers must have stopped by then). The number
/// of errors the consumer reported.
fn read_outputs(
    bootstrap: &str,
    ledger: &Mutex<SoakLedger>,
    control: &ReaderControl,
) -> anyhow::Result<u64> {
    let timeout = Duration::from_secs(30);
    // A small prefetch, as `inspect::scan_topic`: the reader's memory belongs to the soak's budget.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "regnotify-soak-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("queued.max.messages.kbytes", "1024")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for topic in [RESULT_TOPIC, DLQ_TOPIC] {
        for partition in inspect::partitions(&consumer, topic, timeout)? {
            tpl.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    let mut errors = 0u64;
    // The ends to reach, once told to finish: (topic, partition, end offset).
    let mut open: Option<Vec<(String, i32, i64)>> = None;
    let mut deadline = None;
    loop {
        anyhow::ensure!(
            !control.abandon.load(AtomicOrdering::Relaxed),
            "the soak stopped before its outputs were read"
        );
        if open.is_none() && control.finish.load(AtomicOrdering::Relaxed) {
            let mut ends = Vec::new();
            for element in tpl.elements() {
                let (topic, partition) = (element.topic(), element.partition());
                let (_, end) = consumer.fetch_watermarks(topic, partition, timeout)?;
                ends.push((topic.to_string(), partition, end));
            }
            open = Some(ends);
            deadline = Some(Instant::now() + DRAIN_TIMEOUT);
        }
        if let Some(ends) = &mut open {
            let positions = consumer.position()?;
            ends.retain(|(topic, partition, end)| {
                !positions
                    .find_partition(topic, *partition)
                    .is_some_and(|element| match element.offset() {
                        Offset::Offset(position) => position >= *end,
                        _ => *end == 0,
                    })
            });
            if ends.is_empty() {
                return Ok(errors);
            }
            anyhow::ensure!(
                deadline.is_none_or(|deadline| Instant::now() < deadline),
                "the output topics were not read to their end within {DRAIN_TIMEOUT:?}: {ends:?}"
            );
        }
        // Read a batch before looking at the flag and the positions again.
        for _ in 0..1_000 {
            match consumer.poll(Duration::from_millis(100)) {
                None => break,
                Some(Ok(message)) => enter(&message, &mut lock(ledger)),
                Some(Err(error)) => {
                    errors += 1;
                    if errors <= 10 {
                        tracing::warn!(%error, "soak output reader: consumer error");
                    }
                }
            }
        }
    }
}

/// Enters one output record in the ledger.
fn enter(message: &BorrowedMessage<'_>, ledger: &mut SoakLedger) {
    if message.topic() == RESULT_TOPIC {
        match message.payload().map(decode_outcome) {
            Some(Ok(outcome)) => ledger.outcome(
                &outcome.source_topic,
                outcome.source_partition,
                outcome.source_offset,
            ),
            _ => ledger.undecodable(),
        }
        return;
    }
    let record = inspect::ReadRecord::copy(message);
    let source = record.header("dlq.source.topic").zip(
        record
            .header("dlq.source.partition")
            .and_then(|partition| partition.parse::<i32>().ok())
            .zip(
                record
                    .header("dlq.source.offset")
                    .and_then(|offset| offset.parse::<i64>().ok()),
            ),
    );
    match source {
        Some((topic, (partition, offset))) => ledger.dead_letter(topic, partition, offset),
        None => ledger.undecodable(),
    }
}

impl SoakInterval {
    /// `   10.0 s  12345 terminal   1234 events/s  RSS 85.1 MB  57 fds  23 threads`.
    fn line(&self) -> String {
        format!(
            "{:>8.1} s {:>9} terminal {:>7.0} events/s  RSS {}  {} fds  {} threads",
            self.seconds,
            self.terminal,
            self.events_per_second,
            megabytes(self.rss_bytes),
            count(self.open_fds),
            count(self.threads),
        )
    }
}

fn megabytes(bytes: Option<u64>) -> String {
    bytes.map_or_else(
        || "unknown".to_string(),
        |bytes| format!("{:.1} MB", bytes as f64 / 1e6),
    )
}

fn count(value: Option<u64>) -> String {
    value.map_or_else(|| "unknown".to_string(), |value| value.to_string())
}

impl SoakReport {
    /// The report as the table `regnotify demo --soak` prints.
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
        let ledger = &self.ledger;
        line(
            "outcomes read / expected",
            format!("{} / {}", ledger.outcome_records, ledger.expected_outcomes),
        );
        line(
            "dead letters read / expected",
            format!(
                "{} / {}",
                ledger.dead_letter_records, ledger.expected_dead_letters
            ),
        );
        line(
            "missing, unexpected, repeated",
            format!(
                "outcomes {}, {}, {}; dead letters {}, {}, {}",
                ledger.missing_outcomes,
                ledger.unexpected_outcomes,
                ledger.repeated_outcomes,
                ledger.missing_dead_letters,
                ledger.unexpected_dead_letters,
                ledger.repeated_dead_letters
            ),
        );
        line(
            "foreign, undecodable outputs",
            format!("{}, {}", ledger.foreign, ledger.undecodable),
        );
        line(
            "settings",
            format!(
                "latency {} ms, max_in_flight {}, {} merchants",
                self.latency_ms, self.max_in_flight, self.merchants
            ),
        );
        line(
            "elapsed",
            format!(
                "{:.1} s ({:.1} s joining the group)",
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
        line(
            "RSS at start / peak / end",
            format!(
                "{} / {} / {}",
                megabytes(self.at_start.rss_bytes),
                megabytes(self.at_end.peak_rss_bytes),
                megabytes(self.at_end.rss_bytes)
            ),
        );
        line(
            "open fds at start / end",
            format!(
                "{} / {}",
                count(self.at_start.open_fds),
                count(self.at_end.open_fds)
            ),
        );
        line(
            "threads at start / end",
            format!(
                "{} / {}",
                count(self.at_start.threads),
                count(self.at_end.threads)
            ),
        );
        line("output reader errors", self.reader_errors.to_string());
        line("every event terminal", yes_no(self.all_terminal));
        line("every input offset committed", yes_no(self.all_committed));
        line("per-merchant order kept", yes_no(self.merchant_order_kept));
        out.push_str(&format!(
            "  throughput every {:.0} s:\n",
            self.report_every_seconds
        ));
        for interval in &self.intervals {
            out.push_str(&format!("  {}\n", interval.line()));
        }
        out
    }

    pub fn succeeded(&self) -> bool {
        self.all_terminal && self.all_committed && self.merchant_order_kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reports_what_it_holds() {
        let usage = ProcessUsage::now();
        assert!(usage.rss_bytes.is_some_and(|bytes| bytes > 0));
        assert!(usage.peak_rss_bytes >= usage.rss_bytes);
        assert!(usage.open_fds.is_some_and(|fds| fds >= 3));
        assert!(usage.threads.is_some_and(|threads| threads >= 1));
    }
}
