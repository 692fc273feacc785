//! The plain demo run ([`run`]): start the rig, produce in step, wait for every event to be
//! terminal, measure (the window from the first record consumed, the steady middle, CPU time,
//! peak RSS), stop, read the outputs back and build the [`DemoSummary`].
//!
//! Never prints (the binary prints the summary); the soak is [`super::soak`].

use std::sync::Arc;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::time::{Duration, Instant};

use super::options::DemoOptions;
use super::produce::produce_in_step;
use super::progress::{progress_bar, wait_until};
use super::rig::{Rig, on_mock_cluster};
use super::summary::DemoSummary;
use super::verify::verify_topics;
use crate::event::DeadLetterReason;
use crate::observe::Stats;
use crate::usage;

/// Runs the demo to the end. Blocking: it owns the mock cluster, which must stay on this thread.
pub fn run(options: &DemoOptions) -> anyhow::Result<DemoSummary> {
    on_mock_cluster(|bootstrap| async move { run_against(&bootstrap, options).await })
}

async fn run_against(bootstrap: &str, options: &DemoOptions) -> anyhow::Result<DemoSummary> {
    let rig = Rig::start(bootstrap, options, options.progress).await?;
    let (stats, started) = (Arc::clone(&rig.stats), rig.started);
    let settings = rig.settings.clone();
    let first_consumed = tokio::spawn(first_consumption(Arc::clone(&stats)));
    let total = options.events as u64;
    let middle = tokio::spawn(middle_of_the_run(Arc::clone(&stats), total));

    let progress = progress_bar(options.progress, total);
    let merchants = (options.events / 4).max(1);
    let produced = produce_in_step(
        bootstrap,
        options.events,
        merchants,
        &stats,
        &progress,
        |_| {},
    )
    .await?;
    let finished_at = wait_until(Duration::from_secs(120 + total / 50), &progress, || {
        stats.terminal() >= total
    })
    .await;
    let finished = finished_at.unwrap_or_else(Instant::now);
    let cpu_at_end = usage::cpu_time();
    let peak_rss_bytes = usage::peak_rss_bytes();
    let elapsed = finished - started;
    first_consumed.abort();
    let (consuming_from, cpu_at_start) = match first_consumed.await {
        Ok(mark) => mark,
        // Nothing was ever consumed: the whole run is the window.
        Err(_) => (started, None),
    };
    let measured = finished.saturating_duration_since(consuming_from);
    middle.abort();
    let steady_events_per_second = middle.await.ok().flatten().and_then(|(from, to)| {
        let seconds = to.saturating_duration_since(from).as_secs_f64();
        (seconds > 0.0).then(|| STEADY_SHARE * total as f64 / seconds)
    });
    let cpu_seconds = cpu_at_end
        .zip(cpu_at_start)
        .map(|(end, start)| end.saturating_sub(start).as_secs_f64());
    let (merchants_in_order, trace_exports) = rig.stop_with_traces(bootstrap).await?;
    progress.finish_and_clear();
    let bootstrap_owned = bootstrap.to_string();
    let group = settings.kafka.group_id.clone();
    let expected = produced;
    let verified =
        tokio::task::spawn_blocking(move || verify_topics(&bootstrap_owned, &group, &expected))
            .await??;
    let elapsed_seconds = elapsed.as_secs_f64();
    let measured_seconds = measured.as_secs_f64();
    let notify = stats.notify_latencies();
    let ms = |latency: Option<Duration>| latency.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    Ok(DemoSummary {
        events: total,
        notified: stats.notified.load(AtomicOrdering::Relaxed),
        rejected: stats.rejected.load(AtomicOrdering::Relaxed),
        dead_lettered: stats.dead_lettered.load(AtomicOrdering::Relaxed),
        poison: stats.poison.load(AtomicOrdering::Relaxed),
        dlq_records: verified.dlq_records,
        dead_letters_by_reason: DeadLetterReason::ALL
            .into_iter()
            .map(|reason| (reason.as_str().to_string(), stats.dead_letters(reason)))
            .collect(),
        outcomes_by_result_code: stats.result_codes(),
        result_records: verified.result_records,
        http_calls: stats.http_calls.load(AtomicOrdering::Relaxed),
        retries: stats.retries.load(AtomicOrdering::Relaxed),
        elapsed_seconds,
        startup_seconds: consuming_from
            .saturating_duration_since(started)
            .as_secs_f64(),
        measured_seconds,
        events_per_second: if measured_seconds > 0.0 {
            total as f64 / measured_seconds
        } else {
            0.0
        },
        steady_events_per_second,
        p50_ms: ms(notify.quantile(0.50)),
        p99_ms: ms(notify.quantile(0.99)),
        output_ack_p50_ms: ms(stats.output_latencies().quantile(0.50)),
        end_to_end_p99_ms: ms(stats.end_to_end_latencies().quantile(0.99)),
        cpu_seconds,
        cpu_seconds_per_1000_events: cpu_seconds
            .filter(|_| total > 0)
            .map(|cpu| cpu * 1000.0 / total as f64),
        peak_rss_bytes,
        cores: usage::cores(),
        latency_ms: options.latency.as_millis() as u64,
        max_in_flight: settings.processing.max_in_flight,
        ordering: format!("{:?}", settings.processing.ordering).to_lowercase(),
        trace_exports,
        all_terminal: stats.terminal() == total && verified.outputs_match,
        all_committed: verified.all_committed,
        exactly_once: options.exactly_once,
        merchant_order_kept: merchants_in_order,
    })
}

/// The middle of the run whose rate is the steady one: from 10 % to 90 % of the events
/// terminal.
const STEADY_FROM: f64 = 0.1;
const STEADY_SHARE: f64 = 0.8;

/// When 10 % and when 90 % of `total` events were terminal: the start (joining the group, the
/// first fetches) and the tail (the last events of a partition, which under partition ordering
/// run one at a time with nothing else to overlap them) left out.
async fn middle_of_the_run(stats: Arc<Stats>, total: u64) -> Option<(Instant, Instant)> {
    let mark = |share: f64| (total as f64 * share).ceil() as u64;
    let (from, to) = (mark(STEADY_FROM), mark(STEADY_FROM + STEADY_SHARE));
    if to <= from {
        return None;
    }
    let mut from_at = None;
    loop {
        let terminal = stats.terminal();
        if from_at.is_none() && terminal >= from {
            from_at = Some(Instant::now());
        }
        if terminal >= to {
            return from_at.map(|from_at| (from_at, Instant::now()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits for the first consumed record; the instant and the process's CPU time then.
async fn first_consumption(stats: Arc<Stats>) -> (Instant, Option<Duration>) {
    while stats.consumed.load(AtomicOrdering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (Instant::now(), usage::cpu_time())
}
