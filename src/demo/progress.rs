//! Watching a demo run go: the progress bar on stderr and the poll for a condition with a
//! deadline, shared by the plain demo and the soak.
//!
//! Never changes what it watches.

use std::time::{Duration, Instant};

pub(super) fn progress_bar(visible: bool, total: u64) -> indicatif::ProgressBar {
    if !visible {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} events terminal ({per_sec})",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Polls `done` until it holds or `timeout` passes; the instant it first held.
pub(super) async fn wait_until(
    timeout: Duration,
    progress: &indicatif::ProgressBar,
    done: impl Fn() -> bool,
) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    let stats_bar = progress.clone();
    loop {
        if done() {
            return Some(Instant::now());
        }
        if Instant::now() >= deadline {
            return None;
        }
        stats_bar.tick();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
