//! `regnotify measure`: the service as `regnotify run` starts it (same settings, same
//! [`crate::service::Application`]), run until a given number of events after a warm-up have
//! reached their terminal outcome, then stopped cleanly; prints throughput, notify latency, CPU
//! and peak memory over the measured events as one JSON object. `scripts/bench-peers.sh` runs it
//! beside the same job written on another library, against the same broker and simulator.
//!
//! It reads only the service's in-process counters and `/proc/self`; it never changes how the
//! service works.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::observe::{LatencyHistogram, Stats};
use crate::service::Application;
use crate::usage;

/// How long without a single event finishing before the measurement gives up.
const STALL_LIMIT: Duration = Duration::from_secs(120);

/// What [`run`] measured. The same fields as the peer's report, so the two line up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub(crate) implementation: String,
    pub(crate) warmup_events: u64,
    pub(crate) events: u64,
    pub(crate) seconds: f64,
    pub(crate) events_per_second: f64,
    pub(crate) notify_p50_ms: f64,
    pub(crate) notify_p99_ms: f64,
    pub(crate) cpu_seconds_per_1000_events: Option<f64>,
    pub(crate) peak_rss_bytes: Option<u64>,
}

/// Runs the service until `warmup + events` events are terminal and measures the last `events`.
pub async fn run(settings: Settings, warmup: u64, events: u64) -> anyhow::Result<Measurement> {
    let application = Application::build(settings).await?;
    let stats = application.stats();
    let shutdown = CancellationToken::new();
    let service = tokio::spawn(application.run_until_stopped(shutdown.clone()));
    let measured = async {
        wait_for(&stats, warmup).await?;
        let (started, cpu_start, latency_start) =
            (Instant::now(), usage::cpu_time(), stats.notify_latencies());
        wait_for(&stats, warmup + events).await?;
        let seconds = started.elapsed().as_secs_f64();
        let cpu = usage::cpu_time()
            .zip(cpu_start)
            .map(|(end, start)| end.saturating_sub(start).as_secs_f64());
        Ok::<_, anyhow::Error>(summarize(
            events,
            warmup,
            seconds,
            cpu,
            &stats.notify_latencies().since(&latency_start),
        ))
    }
    .await;
    shutdown.cancel();
    service.await.context("the service task failed")??;
    measured
}

fn summarize(
    events: u64,
    warmup: u64,
    seconds: f64,
    cpu_seconds: Option<f64>,
    notify: &LatencyHistogram,
) -> Measurement {
    let ms = |q: f64| {
        notify
            .quantile(q)
            .map_or(0.0, |latency| latency.as_secs_f64() * 1000.0)
    };
    Measurement {
        implementation: format!("regnotify {}", env!("CARGO_PKG_VERSION")),
        warmup_events: warmup,
        events,
        seconds,
        events_per_second: if seconds > 0.0 {
            events as f64 / seconds
        } else {
            0.0
        },
        notify_p50_ms: ms(0.50),
        notify_p99_ms: ms(0.99),
        cpu_seconds_per_1000_events: cpu_seconds
            .filter(|_| events > 0)
            .map(|cpu| cpu * 1000.0 / events as f64),
        peak_rss_bytes: usage::peak_rss_bytes(),
    }
}

/// Waits until `target` events are terminal; an error when none finishes for [`STALL_LIMIT`].
async fn wait_for(stats: &Arc<Stats>, target: u64) -> anyhow::Result<()> {
    let mut last = stats.terminal();
    let mut last_change = Instant::now();
    while stats.terminal() < target {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let now = stats.terminal();
        if now != last {
            (last, last_change) = (now, Instant::now());
        }
        anyhow::ensure!(
            last_change.elapsed() < STALL_LIMIT,
            "no event finished for {STALL_LIMIT:?}: {now} of {target} terminal"
        );
    }
    Ok(())
}
