//! Jobs: starting the ones the core hands out (each with its assignment's cancel tokens) on the
//! task tracker, and booking what a worker reports when its job ends. It never calls Alipay+ or
//! writes outputs itself: the worker does.

use std::sync::Arc;

use super::{Dispatcher, Payload};
use crate::pipeline::book::Slot;
use crate::pipeline::decisions::{Finish, OrderKey, Ticket};
use crate::pipeline::job::Job;
use crate::pipeline::worker::run_job;

/// A worker's report.
#[derive(Debug)]
pub(super) struct Completion {
    slot: Slot,
    order_key: Option<OrderKey>,
    finish: Finish,
}

impl Dispatcher {
    pub(super) fn spawn(&mut self, ticket: Ticket<Payload>) {
        let Ticket { slot, key, payload } = ticket;
        tracing::trace!(?slot, "job started");
        let cancel = self
            .cancels
            .get(&(slot.partition, slot.generation))
            .cloned()
            .unwrap_or_else(|| self.worker.hard_stop.child_token());
        let unsent = self
            .unsent
            .entry((slot.partition, slot.generation))
            .or_insert_with(|| cancel.child_token())
            .clone();
        let job = Job {
            record: payload.record,
            work: payload.work,
            generation: slot.generation,
            cancel,
            unsent,
            trace: payload.trace,
        };
        let worker = Arc::clone(&self.worker);
        let completions = self.completions_tx.clone();
        self.tasks.spawn(async move {
            let finish = run_job(&worker, &job).await;
            let _ = completions.send(Completion {
                slot,
                order_key: key,
                finish,
            });
        });
    }

    pub(super) fn on_completion(&mut self, completion: Completion) {
        tracing::trace!(slot = ?completion.slot, finish = ?completion.finish, "job ended");
        let slot = completion.slot;
        if matches!(completion.finish, Finish::Terminal | Finish::Submitted)
            && self.core.book().stage(slot).is_some()
        {
            self.ages.finished(slot.partition, slot.offset);
        }
        self.core.finished(
            completion.slot,
            completion.order_key.as_ref(),
            completion.finish,
        );
        self.observe_windows(std::iter::once(completion.slot.partition));
    }
}
