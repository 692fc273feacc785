//! The flow state the consumer thread shares with the dispatcher: the [`PauseBoard`] (the pause
//! plan the dispatcher publishes and the consumer thread applies) and [`Flow`]'s intake counts
//! (a partition paused the moment its window would be full, the intake held while too many
//! events wait for a slot). It never calls librdkafka: the consumer thread applies what it says.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::pipeline::decisions::PausePlan;

/// The pause plan the dispatcher publishes and the consumer thread applies.
#[derive(Debug, Default)]
pub(crate) struct PauseBoard {
    version: AtomicU64,
    plan: Mutex<PausePlan>,
}

impl PauseBoard {
    pub(crate) fn publish(&self, plan: PausePlan) {
        if let Ok(mut current) = self.plan.lock() {
            *current = plan;
        }
        self.version.fetch_add(1, Ordering::Release);
    }

    pub(super) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub(crate) fn plan(&self) -> PausePlan {
        self.plan
            .lock()
            .map(|plan| plan.clone())
            .unwrap_or_default()
    }
}

/// What the consumer thread shares with the dispatcher besides the channels: the pause plan,
/// and the counts that let the consumer thread pause a partition the moment its window would be
/// full, before the dispatcher has even seen the records in the channel, and hold off polling
/// while too many events wait overall. librdkafka drops what it had fetched of a paused
/// partition and fetches it again on resume, so a pause taken here bounds memory exactly; a hold
/// leaves it to librdkafka's own prefetch bounds (`queued.max.messages.kbytes`).
#[derive(Debug)]
pub(crate) struct Flow {
    pub(crate) pause: PauseBoard,
    counts: Mutex<Counts>,
    /// Signalled when the dispatcher took records on while the consumer thread waits for room.
    room: Condvar,
    max_pending_per_partition: usize,
    waiting_limit: usize,
    /// Set while the intake has been held longer than
    /// [`INTAKE_HOLD_MAX`](super::poll::INTAKE_HOLD_MAX): every partition pauses until there is
    /// room again.
    stalled: AtomicBool,
}

#[derive(Debug, Default)]
struct Counts {
    /// Per partition: offsets the dispatcher's book holds, and records in the channel.
    book_window: HashMap<i32, usize>,
    in_channel: HashMap<i32, usize>,
    /// Over all partitions: offsets waiting in the book, and records in the channel.
    book_waiting: usize,
    in_channel_total: usize,
    /// The consumer thread waits on [`Flow::room`].
    holding: bool,
    /// In-flight slots free while the dispatcher had nothing being decoded, when it last booked:
    /// what waits, waits for its key, not a slot.
    free_slots: usize,
}

impl Flow {
    pub(crate) fn new(max_pending_per_partition: usize, waiting_limit: usize) -> Flow {
        Flow {
            pause: PauseBoard::default(),
            counts: Mutex::new(Counts::default()),
            room: Condvar::new(),
            max_pending_per_partition: max_pending_per_partition.max(1),
            waiting_limit: waiting_limit.max(1),
            stalled: AtomicBool::new(false),
        }
    }

    /// Events waiting or in the channel beyond which the consumer thread stops taking records
    /// on: half the dispatcher's waiting limit, so that the dispatcher's own pause of every
    /// partition (at the whole limit) is a safety net that steady load never reaches.
    fn intake_limit(&self) -> usize {
        (self.waiting_limit / 2).max(1)
    }

    fn waiting_full(&self, counts: &Counts) -> bool {
        counts.book_waiting + counts.in_channel_total >= self.intake_limit()
    }

    /// No room for more records: too many wait, and for a slot. When a slot is free, what waits
    /// waits for its key (under `ordering = "partition"`, one event at a time per partition):
    /// holding the intake then would starve the partitions that hold none of those events,
    /// their records stuck in librdkafka's one queue behind the others'. The intake goes on,
    /// and the dispatcher's pause of the partitions over their share bounds memory. The records
    /// sent since the dispatcher last booked may take those slots, so they count against them:
    /// a free slot the dispatcher reported before a burst of records is not room for the burst.
    fn no_room(&self, counts: &Counts) -> bool {
        self.waiting_full(counts) && counts.free_slots <= counts.in_channel_total
    }

    /// Waits up to `timeout` for room to take another record on; whether there is room.
    pub(crate) fn wait_for_room(&self, timeout: Duration) -> bool {
        let Ok(mut counts) = self.counts.lock() else {
            return true;
        };
        if !self.no_room(&counts) {
            return true;
        }
        counts.holding = true;
        let Ok((mut counts, _)) = self
            .room
            .wait_timeout_while(counts, timeout, |counts| self.no_room(counts))
        else {
            return true;
        };
        counts.holding = false;
        !self.no_room(&counts)
    }

    pub(super) fn stalled(&self) -> bool {
        self.stalled.load(Ordering::SeqCst)
    }

    pub(super) fn set_stalled(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::SeqCst);
    }

    /// The consumer thread sent a record of `partition`: true when that fills its window or the
    /// waiting limit, so the partition (or all) must pause now.
    pub(crate) fn sent(&self, partition: i32) -> bool {
        let Ok(mut counts) = self.counts.lock() else {
            return false;
        };
        *counts.in_channel.entry(partition).or_default() += 1;
        counts.in_channel_total += 1;
        self.full(&counts, partition)
    }

    /// The dispatcher took the records of `received` (a partition each) off the channel, and its
    /// book now holds these windows and this many waiting offsets; `free_slots`: it has that many
    /// in-flight slots free and nothing being decoded. One step, so that a record is never
    /// counted in neither place.
    pub(crate) fn booked(
        &self,
        received: &[i32],
        windows: impl Iterator<Item = (i32, usize)>,
        waiting: usize,
        free_slots: usize,
    ) {
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        for partition in received {
            if let Some(count) = counts.in_channel.get_mut(partition) {
                *count = count.saturating_sub(1);
            }
            counts.in_channel_total = counts.in_channel_total.saturating_sub(1);
        }
        counts.book_window.clear();
        counts.book_window.extend(windows);
        counts.book_waiting = waiting;
        counts.free_slots = free_slots;
        if counts.holding && !self.no_room(&counts) {
            self.room.notify_one();
        }
    }

    /// Whether `partition`'s window reached its bound, or the events waiting overall did and the
    /// intake was held too long, counting what is in the channel.
    pub(crate) fn over(&self, partition: i32) -> bool {
        self.counts
            .lock()
            .map(|counts| self.full(&counts, partition))
            .unwrap_or(false)
    }

    fn full(&self, counts: &Counts, partition: i32) -> bool {
        let window = counts.book_window.get(&partition).copied().unwrap_or(0)
            + counts.in_channel.get(&partition).copied().unwrap_or(0);
        window >= self.max_pending_per_partition || (self.stalled() && self.no_room(counts))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;

    #[test]
    fn too_many_waiting_holds_the_intake_without_pausing_until_the_hold_lasts() {
        let flow = Flow::new(100, 8);
        // Four waiting (half the limit) is the intake's bound; each is in the channel first.
        for _ in 0..3 {
            assert!(!flow.sent(0), "a window of 3 of 100 is not full");
        }
        assert!(flow.wait_for_room(Duration::ZERO));
        assert!(!flow.sent(0));
        assert!(
            !flow.wait_for_room(Duration::from_millis(1)),
            "four wait: hold"
        );
        assert!(!flow.over(0), "a hold is not a pause");
        flow.set_stalled(true);
        assert!(flow.over(0), "held too long: every partition pauses");
        assert!(flow.over(1));
        flow.set_stalled(false);

        // The dispatcher takes the four off the channel and starts two of them.
        let waker = std::thread::spawn({
            let flow = Arc::new(flow);
            let waiting = Arc::clone(&flow);
            move || {
                let started = Instant::now();
                let room = std::thread::scope(|scope| {
                    let wait = scope.spawn(|| waiting.wait_for_room(Duration::from_secs(10)));
                    // Booked only once the other thread waits, so that its wake-up is tested.
                    while !flow.counts.lock().is_ok_and(|counts| counts.holding) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    flow.booked(&[0, 0, 0, 0], [(0, 4)].into_iter(), 2, 0);
                    wait.join().unwrap_or(false)
                });
                (room, started.elapsed())
            }
        });
        let (room, waited) = waker.join().expect("the waiting thread");
        assert!(room, "room once fewer wait");
        assert!(waited < Duration::from_secs(10), "woken, not timed out");
    }

    /// Under `ordering = "partition"` the waiting events wait for their partition's turn, not a
    /// slot: holding the intake then would starve the partitions whose records are behind theirs
    /// in librdkafka's queue.
    #[test]
    fn too_many_waiting_for_their_key_with_a_slot_free_do_not_hold_the_intake() {
        let flow = Flow::new(100, 8);
        flow.booked(&[], [(0, 4), (1, 0)].into_iter(), 4, 0);
        assert!(
            !flow.wait_for_room(Duration::ZERO),
            "four wait for a slot: hold"
        );
        flow.booked(&[], [(0, 4), (1, 0)].into_iter(), 4, 1);
        assert!(
            flow.wait_for_room(Duration::ZERO),
            "four wait for their key: go on"
        );
        flow.set_stalled(true);
        assert!(!flow.over(1), "nor does a long hold pause the others");
    }

    /// The dispatcher reported free slots, then fell behind while the consumer thread went on
    /// sending: the records in the channel will take those slots, so past the waiting limit they
    /// are no reason to go on (a CI run took 616 records on against a bound of 514 so).
    #[test]
    fn free_slots_reported_before_a_burst_are_not_room_for_the_burst() {
        let flow = Flow::new(100, 8);
        flow.booked(&[], [(0, 3)].into_iter(), 3, 2);
        assert!(
            flow.wait_for_room(Duration::ZERO),
            "three wait, below the bound of four"
        );
        assert!(!flow.sent(1));
        assert!(
            flow.wait_for_room(Duration::ZERO),
            "four wait, one in the channel for two free slots"
        );
        assert!(!flow.sent(1));
        assert!(
            !flow.wait_for_room(Duration::ZERO),
            "the two in the channel take both free slots: hold"
        );
        flow.set_stalled(true);
        assert!(flow.over(1), "held too long: every partition pauses");
        flow.set_stalled(false);
        // The dispatcher booked both and started one; one slot is still free for what waits.
        flow.booked(&[1, 1], [(0, 3), (1, 2)].into_iter(), 4, 1);
        assert!(flow.wait_for_room(Duration::ZERO), "a slot free again");
    }

    #[test]
    fn a_full_window_pauses_its_partition_alone() {
        let flow = Flow::new(2, 1_000);
        assert!(!flow.sent(0));
        assert!(flow.sent(0), "the second record fills a window of 2");
        assert!(flow.over(0));
        assert!(!flow.over(1));
        assert!(
            flow.wait_for_room(Duration::ZERO),
            "far below the waiting limit"
        );
    }
}
