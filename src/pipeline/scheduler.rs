//! The scheduler: which decoded job starts next. Jobs of one key run one at a time in the order
//! they were pushed ([`KeyedQueue`]); jobs whose key is free wait in arrival order for a slot
//! under `max_in_flight`.
//!
//! It owns ordering and the in-flight bound, nothing else: it never runs a job, never waits, and
//! knows nothing of offsets or Kafka.
//!
//! It also knows which running jobs are parked on an open circuit ([`Scheduler::set_parked`]),
//! and so how many waiting jobs are *blocked*: queued behind a parked job of their key. Those
//! cannot start until that MPP is back, whatever else happens, so they do not count towards
//! the waiting limit that pauses every partition (one failing MPP must not stop the others),
//! up to a bound of their own (see [`crate::pipeline::decisions::BLOCKED_FACTOR`]).

use std::collections::{HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Arc;

use crate::pipeline::invariant;
use crate::pipeline::keyed::KeyedQueue;
use crate::pipeline::parking::Parking;

/// A job as the scheduler sees it.
pub(crate) trait Schedule {
    type Key: Hash + Eq + Clone;
    /// The key it must wait for, if any (an undecodable record has none).
    fn order_key(&self) -> Option<&Self::Key>;
}

/// Per-key order and the in-flight bound.
#[derive(Debug)]
pub(crate) struct Scheduler<J: Schedule> {
    keyed: KeyedQueue<J::Key, J>,
    /// Jobs whose key is free (they hold it), waiting for a slot.
    ready: VecDeque<J>,
    in_flight: usize,
    /// Slots still held by jobs that ended but whose outcome is not durable yet (the partition
    /// book counts them): they count against `max_in_flight` as if still running.
    held: usize,
    max_in_flight: usize,
    /// When set, jobs parked on an open circuit do not hold a slot (see [`Parking`]).
    parking: Option<Arc<Parking>>,
    /// Keys whose running job is parked on an open circuit.
    parked: HashSet<J::Key>,
    /// Jobs queued behind the keys in `parked`.
    blocked: usize,
}

impl<J: Schedule> Scheduler<J> {
    pub(crate) fn new(max_in_flight: usize) -> Self {
        Scheduler {
            keyed: KeyedQueue::new(),
            ready: VecDeque::new(),
            in_flight: 0,
            held: 0,
            max_in_flight: max_in_flight.max(1),
            parking: None,
            parked: HashSet::new(),
            blocked: 0,
        }
    }

    /// Shares the slots with workers that park (see [`Parking`]).
    pub(crate) fn with_parking(mut self, parking: Arc<Parking>) -> Self {
        parking.set_in_flight(self.occupied());
        self.parking = Some(parking);
        self
    }

    /// Queues a decoded job behind its key.
    pub(crate) fn push(&mut self, job: J) {
        let ready = match job.order_key().cloned() {
            Some(key) => {
                if self.parked.contains(&key) {
                    // Queued behind a parked job (a parked key is busy: it cannot come back).
                    self.blocked += 1;
                }
                self.keyed.push(key, job)
            }
            None => Some(job),
        };
        if let Some(job) = ready {
            self.ready.push_back(job);
        }
    }

    /// The next job to start now, if a slot is free; it counts as in flight until
    /// [`finished`](Self::finished).
    pub(crate) fn start_next(&mut self) -> Option<J> {
        if self.ready.is_empty() {
            return None;
        }
        let free = match &self.parking {
            Some(parking) => parking.try_start(self.occupied()),
            None => self.occupied() < self.max_in_flight,
        };
        if !free {
            return None;
        }
        let job = self.ready.pop_front()?;
        self.in_flight += 1;
        Some(job)
    }

    /// A started job ended: its slot and its key are free.
    pub(crate) fn finished(&mut self, key: Option<&J::Key>) {
        invariant::take(&mut self.in_flight, 1, "scheduler_in_flight");
        if let Some(parking) = &self.parking {
            parking.set_in_flight(self.occupied());
        }
        if let Some(key) = key {
            // A job that ends is no longer parked, whatever its worker reported last.
            self.set_parked(key, false);
            self.release(key);
        }
    }

    /// The running job of `key` parked on its MPP's open circuit (`true`), or called again or
    /// ended (`false`). A key that runs nothing is never parked.
    pub(crate) fn set_parked(&mut self, key: &J::Key, parked: bool) {
        if parked {
            if self.keyed.is_busy(key) && self.parked.insert(key.clone()) {
                self.blocked += self.keyed.queued_of(key);
            }
        } else if self.parked.remove(key) {
            invariant::take(
                &mut self.blocked,
                self.keyed.queued_of(key),
                "scheduler_blocked",
            );
        }
    }

    /// Removes every job not started yet for which `drop` is true; returns how many.
    pub(crate) fn remove_waiting(&mut self, mut drop: impl FnMut(&J) -> bool) -> usize {
        let queued = self.keyed.retain_queued(|_, job| !drop(job));
        let before = self.ready.len();
        let mut released = Vec::new();
        self.ready.retain(|job| {
            if !drop(job) {
                return true;
            }
            released.extend(job.order_key().cloned());
            false
        });
        let ready = before - self.ready.len();
        // A dropped ready job held its key: the key's next job (one that is kept) becomes ready.
        for key in released {
            self.release(&key);
        }
        self.blocked = self
            .parked
            .iter()
            .map(|key| self.keyed.queued_of(key))
            .sum();
        queued + ready
    }

    /// Jobs waiting for their key or a slot.
    pub(crate) fn waiting(&self) -> usize {
        self.ready.len() + self.keyed.queued_len()
    }

    /// Waiting jobs queued behind a parked job of their key (see the module's header).
    pub(crate) fn blocked(&self) -> usize {
        self.blocked
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// How many ended jobs still hold a slot (see [`held`](Self::held)).
    pub(crate) fn set_held(&mut self, held: usize) {
        if held == self.held {
            return;
        }
        self.held = held;
        if let Some(parking) = &self.parking {
            parking.set_in_flight(self.occupied());
        }
    }

    /// Jobs ready to start wait for slots that ended jobs hold: releasing those (a commit)
    /// would let them start.
    pub(crate) fn short_of_held_slots(&self) -> bool {
        self.held > 0 && !self.ready.is_empty()
    }

    /// Slots not taken: how many jobs could start now if that many were ready.
    pub(crate) fn free_slots(&self) -> usize {
        self.max_in_flight.saturating_sub(self.occupied())
    }

    /// Slots taken: jobs running and ended jobs still holding theirs.
    fn occupied(&self) -> usize {
        self.in_flight + self.held
    }

    fn release(&mut self, key: &J::Key) {
        if let Some(next) = self.keyed.finish(key) {
            invariant::expect(!self.parked.contains(key), "released_key_not_parked");
            self.ready.push_back(next);
        }
    }
}
