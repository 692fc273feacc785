//! In-flight slots for jobs that wait for their MPP's circuit breaker.
//!
//! A job whose MPP's circuit is open cannot call Alipay+, so it gives its in-flight slot back
//! while it waits ([`Parking::park`]): the other MPPs' events take the slots instead of queueing
//! behind a stalled MPP. To call again it must get a slot back ([`Parked::resume`]), and a job
//! asking for one is served before any new job starts, so a recovering MPP neither exceeds
//! `max_in_flight` nor starves. Parked jobs stay started in the partition book: they still hold
//! back their partition's commits and count in its window (`max_pending_per_partition`), which
//! bounds how many can be parked.
//!
//! The scheduler tells [`Parking`] how many jobs it started ([`Parking::try_start`],
//! [`Parking::set_in_flight`]); the workers park and resume. Each park and each resume is also
//! reported to the dispatcher ([`Parking::take_reports`]), whose core counts the events queued
//! behind a parked job apart from the others. No I/O, no clock.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::pipeline::book::Slot;
use crate::pipeline::invariant;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
struct State {
    /// Slots the scheduler counts as taken: jobs started and not finished (parked ones
    /// included), and ended jobs whose outcome is not durable yet.
    in_flight: usize,
    /// Started jobs waiting for their circuit, not holding a slot.
    parked: usize,
    /// Parked jobs asking for a slot back: new jobs do not take the slots they need.
    resuming: usize,
    /// Parks (`true`) and resumes (`false`) the dispatcher has not taken yet, in order.
    reports: Vec<(Slot, bool)>,
}

impl State {
    /// Jobs holding a slot.
    fn occupied(&self) -> usize {
        invariant::expect(self.parked <= self.in_flight, "parked_within_in_flight");
        self.in_flight.saturating_sub(self.parked)
    }
}

/// The slots of `max_in_flight`, shared by the scheduler and the workers.
#[derive(Debug)]
pub(crate) struct Parking {
    max_in_flight: usize,
    state: Mutex<State>,
    /// Woken when a slot may have become free.
    freed: Notify,
    /// Wakes the dispatcher when a job parks (a job may start in the slot it gave back) or
    /// resumes: it has reports to take.
    given_back: Notify,
}

impl Parking {
    pub(crate) fn new(max_in_flight: usize) -> Arc<Parking> {
        Arc::new(Parking {
            max_in_flight: max_in_flight.max(1),
            state: Mutex::new(State::default()),
            freed: Notify::new(),
            given_back: Notify::new(),
        })
    }

    /// Scheduler: with `in_flight` jobs started now, whether one more may start; when it may,
    /// it is counted as started at once (so a resuming job cannot take the same slot).
    pub(crate) fn try_start(&self, in_flight: usize) -> bool {
        let mut state = self.lock();
        state.in_flight = in_flight;
        if state.occupied() + state.resuming < self.max_in_flight {
            state.in_flight += 1;
            return true;
        }
        false
    }

    /// Scheduler: the number of started jobs changed.
    pub(crate) fn set_in_flight(&self, in_flight: usize) {
        self.lock().in_flight = in_flight;
        self.freed.notify_waiters();
    }

    /// Dispatcher: resolves once a job parked or resumed since the last call (a permit is kept,
    /// so a report between two calls is not missed).
    pub(crate) async fn slot_given_back(&self) {
        self.given_back.notified().await;
    }

    /// Dispatcher: the parks (`true`) and resumes (`false`) of started jobs since the last call,
    /// in the order they happened.
    pub(crate) fn take_reports(&self) -> Vec<(Slot, bool)> {
        std::mem::take(&mut self.lock().reports)
    }

    /// Jobs started but parked now.
    #[cfg(test)]
    pub(crate) fn parked(&self) -> usize {
        self.lock().parked
    }

    /// Worker: the started job of `slot` gives its slot back until [`Parked::resume`] (or
    /// until the guard is dropped, when the job ends while parked).
    pub(crate) fn park(self: &Arc<Self>, slot: Slot) -> Parked {
        {
            let mut state = self.lock();
            state.parked += 1;
            state.reports.push((slot, true));
        }
        self.freed.notify_waiters();
        self.given_back.notify_one();
        Parked {
            parking: Arc::clone(self),
            slot,
            resuming: false,
            done: false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A parked job. Dropping it without [`resume`](Parked::resume) unparks without taking a slot
/// (the job is ending: the scheduler counts its end).
#[derive(Debug)]
pub(crate) struct Parked {
    parking: Arc<Parking>,
    slot: Slot,
    resuming: bool,
    done: bool,
}

impl Parked {
    /// Waits for a free slot and takes it. `None` when `cancel` fired first.
    pub(crate) async fn resume(mut self, cancel: &CancellationToken) -> Option<()> {
        let parking = Arc::clone(&self.parking);
        loop {
            let freed = parking.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if self.try_resume() {
                self.parking.given_back.notify_one();
                return Some(());
            }
            tokio::select! {
                biased;
                () = cancel.cancelled() => return None,
                () = freed => {}
            }
        }
    }

    fn try_resume(&mut self) -> bool {
        let mut state = self.parking.lock();
        if state.occupied() < self.parking.max_in_flight {
            invariant::take(&mut state.parked, 1, "parked_jobs");
            if self.resuming {
                invariant::take(&mut state.resuming, 1, "resuming_jobs");
            }
            state.reports.push((self.slot, false));
            self.done = true;
            return true;
        }
        if !self.resuming {
            state.resuming += 1;
            self.resuming = true;
        }
        false
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut state = self.parking.lock();
        invariant::take(&mut state.parked, 1, "parked_jobs");
        if self.resuming {
            invariant::take(&mut state.resuming, 1, "resuming_jobs");
        }
        state.reports.push((self.slot, false));
        drop(state);
        self.parking.freed.notify_waiters();
        self.parking.given_back.notify_one();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SLOT: Slot = Slot {
        partition: 0,
        generation: 1,
        offset: 7,
    };

    #[tokio::test]
    async fn a_parked_job_frees_its_slot_and_gets_one_back_before_new_jobs() {
        let parking = Parking::new(2);
        assert!(parking.try_start(0));
        assert!(parking.try_start(1));
        assert!(!parking.try_start(2), "both slots taken");
        let parked = parking.park(SLOT);
        assert!(parking.try_start(2), "a parked job's slot is free");
        assert!(!parking.try_start(3));
        // Full: resuming waits, and keeps new jobs from taking the slot it waits for.
        let cancel = CancellationToken::new();
        let resume = tokio::spawn({
            let cancel = cancel.clone();
            async move { parked.resume(&cancel).await }
        });
        tokio::task::yield_now().await;
        while parking.lock().resuming == 0 {
            tokio::task::yield_now().await;
        }
        parking.set_in_flight(2);
        assert_eq!(resume.await.unwrap(), Some(()));
        assert_eq!(parking.parked(), 0);
        assert!(!parking.try_start(2), "the resumed job took the freed slot");
        parking.set_in_flight(1);
        assert!(parking.try_start(1));
    }

    #[tokio::test]
    async fn a_job_that_ends_parked_or_while_resuming_leaves_nothing_behind() {
        let parking = Parking::new(1);
        parking.set_in_flight(1);
        let parked = parking.park(SLOT);
        drop(parked);
        assert_eq!(parking.parked(), 0);
        let parked = parking.park(SLOT);
        parking.set_in_flight(2);
        let cancel = CancellationToken::new();
        cancel.cancel();
        assert_eq!(parked.resume(&cancel).await, None);
        let state = parking.lock();
        assert_eq!((state.parked, state.resuming), (0, 0));
    }
}
