//! Stopping with events queued behind busy merchants: the pipeline waits only for the work that
//! can still settle, in both delivery modes, and then exits — well inside `shutdown_timeout`
//! (and Kubernetes' default 30 s grace), not at its end.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use regnotify::simulator::rules::{Fault, FaultRule};

use common::{Harness, event, eventually};

const WAIT: Duration = Duration::from_secs(60);
/// Far longer than the calls in flight take: a stop that waits for it is the defect.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(40);

/// 400 events: every fourth of one of 4 slow merchants (2 s a call), the rest of 100 fast ones,
/// so the slow merchants' later events queue behind their running ones while fast events after
/// them finish. Stop after 40 calls. Returns how long the stop took.
async fn stop_behind_busy_merchants(exactly_once: bool) -> Duration {
    let slow = FaultRule::for_prefix(
        "M-SLOW-",
        Fault::Latency {
            delay: Duration::from_secs(2),
        },
    );
    let harness = Harness::new(1, vec![slow]).await;
    let events: Vec<_> = (0..400)
        .map(|i| {
            let merchant = if i % 4 == 0 {
                format!("M-SLOW-{}", (i / 4) % 4)
            } else {
                format!("M-FAST-{}", i % 100)
            };
            event(&merchant, &format!("R-{i:03}"))
        })
        .collect();
    harness.produce(&events).await;
    let mut settings = harness.settings();
    settings.processing.exactly_once = exactly_once;
    settings.processing.transaction_interval = Duration::from_millis(50);
    settings.processing.shutdown_timeout = SHUTDOWN_TIMEOUT;
    let pipeline = harness.start_pipeline(settings).await;
    let stats = pipeline.stats.clone();
    eventually("40 calls made", WAIT, || {
        stats.http_calls.load(Ordering::Relaxed) >= 40
    })
    .await;
    let took = pipeline.stop().await;
    assert!(
        stats.terminal() < 400,
        "the stop came mid-stream ({} finished)",
        stats.terminal()
    );
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_stop_does_not_wait_for_work_that_cannot_settle() {
    let took = stop_behind_busy_merchants(true).await;
    // The calls in flight take at most 2 s; a stop that waits on submitted outputs stuck behind
    // dropped events takes the whole shutdown_timeout.
    assert!(
        took < SHUTDOWN_TIMEOUT / 2,
        "exactly-once stop took {took:?} of a {SHUTDOWN_TIMEOUT:?} budget"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_stop_does_not_wait_for_work_that_cannot_settle() {
    let took = stop_behind_busy_merchants(false).await;
    assert!(
        took < SHUTDOWN_TIMEOUT / 2,
        "at-least-once stop took {took:?} of a {SHUTDOWN_TIMEOUT:?} budget"
    );
}
