//! The dispatcher's decisions, with no I/O: the [`PartitionBook`] and the [`Scheduler`] kept in
//! step, and the global flow control over both.
//!
//! The dispatcher loop ([`super::dispatch`]) feeds this core what the consumer and the workers
//! report, in the order the consumer saw it, and carries out what it answers: start these jobs,
//! cancel that assignment's work, commit these positions, pause those partitions. The core never
//! talks to Kafka, never spawns, never reads a clock; the model test (`decisions/model.rs`)
//! drives it through random interleavings against a reference model, and `decisions/tests.rs`
//! holds the flow control's cases.

use std::collections::{BTreeSet, HashMap};

pub(crate) use crate::pipeline::book::RevokeEnd;
use crate::pipeline::book::{Consumed, PartitionBook, Prepared, Settle, Slot, Stage};
use crate::pipeline::invariant;
use crate::pipeline::scheduler::{Schedule, Scheduler};

/// Jobs waiting (decoding, or for their key or a slot) beyond this many times `max_in_flight`
/// pause the partitions that hold their share of them or more; they resume at half of it.
pub(crate) const WAITING_FACTOR: usize = 4;

/// At least this many events may wait before every partition pauses: a pause makes librdkafka
/// drop what it had fetched and fetch it again on resume, so a small bound would pause and
/// refetch every few dozen records (measured: 78 events/s at `max_in_flight` 16 with a bound of
/// 64). A thousand small records are a few hundred kilobytes.
pub(crate) const MIN_WAITING_LIMIT: usize = 1_024;

/// Events blocked behind a job parked on its MPP's open circuit do not count towards the
/// waiting limit, up to this many times it: a long outage of one MPP may hold that many in
/// memory (16,384 at the defaults) while the other MPPs' events go on; beyond it they count
/// again, and memory stays bounded however many partitions a member owns.
pub(crate) const BLOCKED_FACTOR: usize = 16;

/// How many consumed events may wait (decoding, or for their key or a slot) before every
/// partition pauses.
pub fn waiting_limit(max_in_flight: usize) -> usize {
    max_in_flight
        .max(1)
        .saturating_mul(WAITING_FACTOR)
        .max(MIN_WAITING_LIMIT)
}

/// Which events must wait for each other.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum OrderKey {
    Merchant(String),
    Partition(i32),
}

/// A decoded record on its way to a worker.
#[derive(Debug)]
pub(crate) struct Ticket<P> {
    pub(crate) slot: Slot,
    pub(crate) key: Option<OrderKey>,
    pub(crate) payload: P,
}

impl<P> Schedule for Ticket<P> {
    type Key = OrderKey;
    fn order_key(&self) -> Option<&OrderKey> {
        self.key.as_ref()
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Finish {
    /// Every output record is acknowledged by Kafka: the offset may be committed.
    Terminal,
    /// Stopped before the outputs were acknowledged: the offset must not be committed.
    Abandoned,
    /// An output can never be written; the service must stop (the offset stays uncommitted).
    Fatal,
    /// Exactly-once: the outputs are with the transaction writer, which settles the offset.
    Submitted,
}

/// Which partitions should not fetch now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PausePlan {
    /// Every partition, also ones assigned later, until the plan changes.
    pub(crate) all: bool,
    /// Partitions whose own window is full.
    pub(crate) partitions: BTreeSet<i32>,
}

impl PausePlan {
    pub(crate) fn is_paused(&self, partition: i32) -> bool {
        self.all || self.partitions.contains(&partition)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PendingRevoke {
    lost: bool,
}

/// The book and the scheduler, kept in step.
#[derive(Debug)]
pub(crate) struct DispatchCore<P> {
    book: PartitionBook,
    scheduler: Scheduler<Ticket<P>>,
    waiting_limit: usize,
    /// Too many events wait (over the waiting limit, until they drain to half of it).
    globally_paused: bool,
    /// While [`globally_paused`](Self::globally_paused): the partitions holding at least their
    /// share of the limit, which stop fetching. The others go on fetching up to their share, so
    /// a partition whose events are slow (one event at a time under `ordering = "partition"`)
    /// cannot starve the rest of the assignment.
    over_share: BTreeSet<i32>,
    /// Alipay+ is unavailable (the circuit is not closed): nothing should be fetched.
    downstream_held: bool,
    /// Bumped whenever the pause plan changes.
    pause_version: u64,
    revoke: Option<PendingRevoke>,
    fatal: bool,
    /// The order key of every started job that has one, for the workers' parking reports.
    running: HashMap<Slot, OrderKey>,
    /// In-flight slots of ended events whose outcome the revoke's commit makes durable, held
    /// until the consumer thread has made that commit (or given up on it).
    revoke_held: usize,
}

impl<P> DispatchCore<P> {
    pub(crate) fn new(
        exactly_once: bool,
        max_in_flight: usize,
        max_pending_per_partition: usize,
    ) -> Self {
        let max_in_flight = max_in_flight.max(1);
        DispatchCore {
            book: PartitionBook::new(exactly_once, max_pending_per_partition),
            scheduler: Scheduler::new(max_in_flight),
            waiting_limit: waiting_limit(max_in_flight),
            globally_paused: false,
            over_share: BTreeSet::new(),
            downstream_held: false,
            pause_version: 0,
            revoke: None,
            fatal: false,
            running: HashMap::new(),
            revoke_held: 0,
        }
    }

    /// Jobs parked on an open circuit give their in-flight slot back (see
    /// [`crate::pipeline::parking`]).
    pub(crate) fn with_parking(
        mut self,
        parking: std::sync::Arc<crate::pipeline::parking::Parking>,
    ) -> Self {
        self.scheduler = self.scheduler.with_parking(parking);
        self
    }

    /// The same core with another bound on waiting events (the model test keeps it small, so
    /// that the global pause happens within a few operations).
    #[cfg(test)]
    pub(crate) fn with_waiting_limit(mut self, limit: usize) -> Self {
        self.waiting_limit = limit.max(1);
        self
    }

    /// Partitions assigned. A revoke still pending is over (the consumer moved on without our
    /// answer): it is finished first, and its end returned. Returns the partitions that start
    /// afresh as well.
    pub(crate) fn assign(&mut self, partitions: &[i32]) -> (Option<RevokeEnd>, Vec<i32>) {
        let previous = self.finish_revoke();
        let fresh = self.book.assign(partitions);
        (previous, fresh)
    }

    /// See [`PartitionBook::skip_finished`].
    pub(crate) fn skip_finished(
        &mut self,
        partition: i32,
        committed: i64,
        finished: std::collections::BTreeSet<i64>,
    ) {
        self.book.skip_finished(partition, committed, finished);
    }

    /// Partitions revoked (`lost`: the group gave them away already, nothing may be committed).
    /// Returns the end of an earlier revoke still pending, and the assignments whose running work
    /// must stop at once (a lost assignment's: another member may be working on those events).
    pub(crate) fn revoke(
        &mut self,
        partitions: &[i32],
        lost: bool,
    ) -> (Option<RevokeEnd>, Vec<(i32, u64)>) {
        let previous = self.finish_revoke();
        let owned: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|partition| self.book.generation(*partition).is_some())
            .collect();
        let cancel_now = if lost {
            owned
                .iter()
                .filter_map(|partition| Some((*partition, self.book.generation(*partition)?)))
                .collect()
        } else {
            Vec::new()
        };
        let dropped = self.book.begin_revoke(&owned);
        if !dropped.is_empty() {
            self.scheduler
                .remove_waiting(|ticket| owned.contains(&ticket.slot.partition));
        }
        self.revoke = Some(PendingRevoke { lost });
        self.update_global_pause();
        (previous, cancel_now)
    }

    /// True when a revoke is pending and nothing of its partitions can still settle.
    pub(crate) fn revoke_settled(&self) -> bool {
        // A lost assignment commits nothing, so there is nothing to wait for.
        self.revoke
            .is_some_and(|revoke| revoke.lost || self.book.revoke_settled())
    }

    #[cfg(test)]
    pub(crate) fn revoke_pending(&self) -> bool {
        self.revoke.is_some()
    }

    /// Ends the pending revoke, if any: the partitions are forgotten.
    pub(crate) fn finish_revoke(&mut self) -> Option<RevokeEnd> {
        let revoke = self.revoke.take()?;
        let mut end = self.book.finish_revoke();
        if revoke.lost {
            end.commit.clear();
            end.notes.clear();
            end.held = 0;
        }
        // The partitions are gone from the book, but what the revoke's commit covers is not
        // durable until the consumer thread has made it: a crash before then repeats those
        // calls, so their slots stay taken (a crash repeats at most `max_in_flight` calls).
        self.revoke_held += end.held;
        self.pause_version += 1;
        self.sync_held();
        Some(end)
    }

    /// The consumer thread made the revoke's commit (it landed or failed), or will not make it:
    /// the slots the revoke held are free.
    pub(crate) fn revoke_commit_settled(&mut self) {
        self.revoke_held = 0;
        self.sync_held();
    }

    /// Books a consumed record (see [`PartitionBook::consume`]). On [`Consumed::Restart`] the
    /// stale assignment's waiting jobs are dropped here; the caller cancels its running ones and
    /// forgets its undecoded records.
    pub(crate) fn consume(&mut self, partition: i32, offset: i64, fingerprint: u64) -> Consumed {
        let consumed = self.book.consume(partition, offset, fingerprint);
        if let Consumed::Restart { stale, .. } = consumed {
            self.scheduler.remove_waiting(|ticket| {
                ticket.slot.partition == partition && ticket.slot.generation == stale
            });
            self.sync_held();
        }
        if consumed != Consumed::Ignore {
            self.update_pause(partition);
            if self.globally_paused {
                self.update_over_share();
            }
        }
        consumed
    }

    /// A consumed record is decoded: it queues behind its key. `false` (and the ticket is
    /// discarded) when its slot was dropped meanwhile.
    pub(crate) fn decoded(&mut self, ticket: Ticket<P>) -> bool {
        if self.book.stage(ticket.slot) != Some(Stage::Waiting) {
            return false;
        }
        self.scheduler.push(ticket);
        true
    }

    /// The next job to start now, if any.
    ///
    /// The global pause is decided here, once nothing more can start: events count as waiting
    /// only when no slot is free for them.
    pub(crate) fn next_start(&mut self) -> Option<Ticket<P>> {
        let Some(ticket) = self.scheduler.start_next() else {
            self.update_global_pause();
            return None;
        };
        invariant::expect(
            self.book.stage(ticket.slot) == Some(Stage::Waiting),
            "started_slot_was_waiting",
        );
        self.book.start(ticket.slot);
        if let Some(key) = &ticket.key {
            self.running.insert(ticket.slot, key.clone());
        }
        Some(ticket)
    }

    /// The worker of a started job reported that it parked on its MPP's open circuit (`true`)
    /// or called again (`false`). Reports about a job that ended already change nothing.
    pub(crate) fn parked(&mut self, slot: Slot, parked: bool) {
        if let Some(key) = self.running.get(&slot) {
            self.scheduler.set_parked(key, parked);
            self.update_global_pause();
        }
    }

    /// A started job ended.
    pub(crate) fn finished(&mut self, slot: Slot, key: Option<&OrderKey>, finish: Finish) {
        self.running.remove(&slot);
        self.scheduler.finished(key);
        let settle = match finish {
            Finish::Terminal => Settle::Acknowledged,
            Finish::Submitted => Settle::Submitted,
            Finish::Abandoned => Settle::Abandoned,
            Finish::Fatal => {
                self.fatal = true;
                Settle::Abandoned
            }
        };
        self.book.settle(slot, settle);
        self.sync_held();
        self.update_pause(slot.partition);
    }

    /// Exactly-once: what committing these settled offsets would allow.
    pub(crate) fn prepare(&self, settled: &[Slot]) -> Prepared {
        self.book.prepare(settled)
    }

    /// Exactly-once: the transaction carrying these offsets committed.
    pub(crate) fn transaction_committed(&mut self, settled: &[Slot]) {
        self.book.transaction_committed(settled);
        self.sync_held();
        let mut partitions: Vec<i32> = settled.iter().map(|slot| slot.partition).collect();
        partitions.dedup();
        for partition in partitions {
            self.update_pause(partition);
        }
    }

    /// At-least-once: positions to commit now.
    pub(crate) fn take_commits(&mut self) -> Vec<(i32, i64)> {
        self.book.take_commits()
    }

    /// At-least-once: whether [`take_commits`](Self::take_commits) would commit anything.
    pub(crate) fn has_commits(&self) -> bool {
        self.book.has_commits()
    }

    pub(crate) fn commit_failed(&mut self, partitions: &[i32]) {
        self.book.commit_failed(partitions);
        self.sync_held();
    }

    /// At-least-once: the commit of these partitions landed; the slots of the events it covers
    /// are free.
    pub(crate) fn commit_landed(&mut self, partitions: &[i32]) {
        self.book.commit_landed(partitions);
        self.sync_held();
    }

    /// Jobs wait for slots that ended events hold until their outcome is durable: a commit (or
    /// a transaction) now would let them start.
    pub(crate) fn short_of_slots(&self) -> bool {
        self.scheduler.short_of_held_slots()
    }

    /// Ended events whose outcome is not durable yet (see [`PartitionBook::undurable`]).
    pub(crate) fn undurable(&self) -> usize {
        self.book.undurable()
    }

    /// Stops taking work: records no longer count, waiting jobs are dropped.
    pub(crate) fn begin_stop(&mut self) {
        self.book.begin_stop();
        self.scheduler.remove_waiting(|_| true);
        self.pause_version += 1;
        self.update_global_pause();
    }

    /// True when nothing can settle any more: a stopping pipeline may end.
    pub(crate) fn stop_settled(&self) -> bool {
        self.book.all_settled()
    }

    /// At-least-once: the last commit positions at shutdown.
    pub(crate) fn final_commits(&mut self) -> Vec<(i32, i64)> {
        self.book.take_commits()
    }

    /// Which partitions should not fetch now.
    pub(crate) fn pause_plan(&self) -> PausePlan {
        let mut partitions = self.book.paused();
        partitions.extend(&self.over_share);
        PausePlan {
            all: self.downstream_held || self.book_stopping(),
            partitions,
        }
    }

    /// Alipay+ is unavailable for every MPP (`true`: no MPP's circuit is closed) or back for
    /// some: every partition is paused while it is unavailable for all.
    pub(crate) fn hold_intake(&mut self, held: bool) {
        if self.downstream_held != held {
            self.downstream_held = held;
            self.pause_version += 1;
        }
    }

    /// Changes whenever [`pause_plan`](Self::pause_plan) may have changed.
    pub(crate) fn pause_version(&self) -> u64 {
        self.pause_version
    }

    /// True once a job reported an output Kafka can never accept.
    pub(crate) fn is_fatal(&self) -> bool {
        self.fatal
    }

    pub(crate) fn book(&self) -> &PartitionBook {
        &self.book
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.scheduler.in_flight()
    }

    /// How many jobs could start now if that many were ready: with one or more free, the events
    /// that wait are waiting for their key (or being decoded), not for a slot.
    pub(crate) fn free_slots(&self) -> usize {
        self.scheduler.free_slots()
    }

    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.book.waiting()
    }

    /// Consumed events that count towards the waiting limit: the waiting ones less those
    /// blocked behind a parked job of their key (see [`Scheduler::blocked`]), up to
    /// [`BLOCKED_FACTOR`] times the limit.
    pub(crate) fn waiting_counted(&self) -> usize {
        self.book.waiting().saturating_sub(self.blocked_uncounted())
    }

    fn blocked_uncounted(&self) -> usize {
        self.scheduler
            .blocked()
            .min(self.waiting_limit.saturating_mul(BLOCKED_FACTOR))
    }

    fn book_stopping(&self) -> bool {
        // A stopping book ignores records; fetching them only costs memory.
        self.book.is_stopping()
    }

    /// Ended events keep their slot until their outcome is durable: a crash repeats at most
    /// `max_in_flight` calls.
    fn sync_held(&mut self) {
        self.scheduler
            .set_held(self.book.undurable() + self.revoke_held);
    }

    fn update_pause(&mut self, partition: i32) {
        if self.book.update_pause(partition).is_some() {
            self.pause_version += 1;
        }
    }

    /// Decoded events waiting for their key or a slot decide the global pause. Records still
    /// being decoded cannot start anyway; the consumer thread's own counts bound them. Events
    /// blocked behind a parked job do not count, up to [`BLOCKED_FACTOR`] times the limit:
    /// pausing every partition would not let their MPP recover sooner, and would stop every
    /// other MPP's events.
    ///
    /// Over the limit, only the partitions holding their share of it or more pause (see
    /// [`over_share`](Self::over_share)); by the pigeonhole, at least one does. Memory stays
    /// bounded: a partition under its share fetches until it reaches it.
    fn update_global_pause(&mut self) {
        let waiting = self
            .scheduler
            .waiting()
            .saturating_sub(self.blocked_uncounted());
        if !self.globally_paused && waiting >= self.waiting_limit {
            self.globally_paused = true;
        } else if self.globally_paused && waiting <= self.waiting_limit / 2 {
            self.globally_paused = false;
        }
        self.update_over_share();
    }

    /// Recomputes [`over_share`](Self::over_share); a change is a new pause plan.
    /// A partition enters at its share and leaves once drained to half of it, so that it is not
    /// paused and resumed (its prefetch dropped and fetched again) at every event.
    fn update_over_share(&mut self) {
        let over_share: BTreeSet<i32> = if self.globally_paused {
            let share = (self.waiting_limit / self.book.len().max(1)).max(1);
            self.book
                .owned()
                .into_iter()
                .map(|(partition, _)| partition)
                .filter(|&partition| {
                    let window = self.book.window_len(partition);
                    window >= share || (self.over_share.contains(&partition) && window > share / 2)
                })
                .collect()
        } else {
            BTreeSet::new()
        };
        if over_share != self.over_share {
            self.over_share = over_share;
            self.pause_version += 1;
        }
    }
}

#[cfg(test)]
mod model;
#[cfg(test)]
mod tests;
