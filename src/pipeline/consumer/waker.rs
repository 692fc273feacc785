//! Wakes librdkafka's fetcher after a resume. librdkafka applies a resume on its main thread and
//! does not wake the broker thread that fetches the partition: when that thread has no fetch out
//! (every partition it fetches for was paused), it sleeps until its next wake-up, up to a second
//! later. Measured on the demo under `ordering = "partition"` with a backlog, where partitions
//! pause at their share of the waiting limit and resume at half of it: after each resume every
//! partition sat idle 0.3-0.6 s, until the next whole second of the broker thread's sleep.
//!
//! Any request to the partition's leader wakes that thread, which then looks at its partitions
//! again and fetches. The waker asks for the partition's watermarks (a ListOffsets request, its
//! answer unused) on a thread of its own, so the consumer thread never waits for a broker.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use rdkafka::consumer::Consumer;

use super::PipelineConsumer;

/// How long one wake-up request waits for its answer. The wake-up is the request being queued,
/// not its answer; the bound only keeps a broker that does not answer from holding the waker
/// (and the consumer thread's stop, which joins it) for long.
const WAKE_TIMEOUT: Duration = Duration::from_millis(200);

/// Sends one wake-up request for every partition resumed, until the sender closes or `stop` is
/// set (checked before every request, so that a stop waits for one request at most, however many
/// partitions are queued). Resumes that arrive while a request is out are taken together, each
/// partition once.
pub(super) fn run(
    consumer: &PipelineConsumer,
    topic: &str,
    resumed: Receiver<i32>,
    stop: &AtomicBool,
) {
    while let Ok(first) = resumed.recv() {
        for partition in together(first, resumed.try_iter()) {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            if let Err(error) = consumer.fetch_watermarks(topic, partition, WAKE_TIMEOUT) {
                tracing::debug!(partition, %error, "fetch wake-up request not answered");
            }
        }
    }
}

/// The partitions of one round of wake-ups: the first and those queued behind it, each once.
fn together(first: i32, queued: impl Iterator<Item = i32>) -> BTreeSet<i32> {
    std::iter::once(first).chain(queued).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_queued_together_wake_each_partition_once() {
        let round = together(3, [1, 3, 0, 1].into_iter());
        assert_eq!(round.into_iter().collect::<Vec<_>>(), vec![0, 1, 3]);
    }
}
