//! Wakes librdkafka's fetcher after a resume. librdkafka applies a resume on its main thread and
//! does not wake the broker thread that fetches the partition: when that thread has no fetch out
//! (every partition it fetches for was paused), it sleeps until its next wake-up, up to a second
//! later. Measured on the demo under `ordering = "partition"` with a backlog, where partitions
//! pause at their share of the waiting limit and resume at half of it: after each resume every
//! partition sat idle 0.3-0.6 s, until the next whole second of the broker thread's sleep.
//!
//! Any request to the partition's leader wakes that thread, which then looks at its partitions
//! again and fetches. The waker asks for the resumed partitions' offsets (ListOffsets requests,
//! one to each leader, answers unused) on a thread of its own, so the consumer thread never
//! waits for a broker. It wakes the leader's thread only: a consumer fetching from a follower
//! (`client.rack`, KIP-392) is not woken by it and may still wait up to that second.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use super::PipelineConsumer;

/// How long one round of wake-up requests waits for its answers. The wake-up is the requests
/// being queued, not their answers; the bound only keeps a broker that does not answer from
/// holding the waker (and the consumer thread's end, which joins it) for long.
const WAKE_TIMEOUT: Duration = Duration::from_millis(200);

/// Sends wake-up requests for the partitions resumed, until the sender closes or `done` is set
/// (checked before every round, so that the consumer thread's end waits for one round at most).
/// Resumes that arrive while a round is out are taken together, each partition once, in one
/// round: librdkafka sends one request to each leader, all at once.
pub(super) fn run(
    consumer: &PipelineConsumer,
    topic: &str,
    resumed: Receiver<i32>,
    done: &AtomicBool,
) {
    while let Ok(first) = resumed.recv() {
        if done.load(Ordering::SeqCst) {
            return;
        }
        let round = together(first, resumed.try_iter());
        if let Err(error) = consumer.offsets_for_times(requests(topic, &round), WAKE_TIMEOUT) {
            tracing::debug!(?round, %error, "fetch wake-up requests not answered");
        }
    }
}

/// The partitions of one round of wake-ups: the first and those queued behind it, each once.
fn together(first: i32, queued: impl Iterator<Item = i32>) -> BTreeSet<i32> {
    std::iter::once(first).chain(queued).collect()
}

/// One offset lookup per partition of the round (the latest offset; the answer is not used).
fn requests(topic: &str, round: &BTreeSet<i32>) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for &partition in round {
        // Cannot fail for Offset::End; a failure would only leave that partition out.
        let _ = list.add_partition_offset(topic, partition, Offset::End);
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_queued_together_wake_each_partition_once() {
        let round = together(3, [1, 3, 0, 1].into_iter());
        assert_eq!(round.iter().copied().collect::<Vec<_>>(), vec![0, 1, 3]);
        let list = requests("input", &round);
        let asked: Vec<(String, i32)> = list
            .elements()
            .iter()
            .map(|element| (element.topic().to_string(), element.partition()))
            .collect();
        assert_eq!(
            asked,
            vec![
                ("input".to_string(), 0),
                ("input".to_string(), 1),
                ("input".to_string(), 3)
            ]
        );
    }
}
