//! The simulated transaction writer (exactly-once): it gathers submissions, asks the dispatcher
//! what they allow over its real protocol (`PrepareCommit`, `TransactionCommitted`), and commits
//! outputs and positions together in the world, or aborts (fenced by a newer generation, or by
//! the scenario's abort ratio). It never writes outside a transaction.

use std::sync::Arc;
use std::time::Duration;

use rand::RngExt;
use rand::rngs::StdRng;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::TOPIC;
use super::kafka::commits_of;
use super::world::Shared;
use crate::pipeline::book::Prepared;
use crate::pipeline::consumer::Control;
use crate::pipeline::transactions::{Submission, split};

/// The simulated transaction writer: it gathers submissions, asks the dispatcher what they
/// allow, and commits outputs and positions together (or aborts, as a real transaction may).
pub(super) struct SimWriter {
    pub(super) world: Shared,
    pub(super) control: mpsc::UnboundedSender<Control>,
    pub(super) due: Arc<tokio::sync::Notify>,
    pub(super) rng: StdRng,
    pub(super) abort_ratio: f64,
    pub(super) interval: Duration,
}

impl SimWriter {
    pub(super) async fn run(mut self, mut submissions: mpsc::Receiver<Submission>) {
        let mut held: Vec<Submission> = Vec::new();
        loop {
            tokio::select! {
                biased;
                received = submissions.recv() => match received {
                    Some(submission) => {
                        held.push(submission);
                        continue;
                    }
                    None => return,
                },
                () = tokio::time::sleep(self.interval) => {}
                () = self.due.notified() => {}
            }
            if held.is_empty() {
                continue;
            }
            let settled = held.iter().map(|s| crate::pipeline::book::Slot {
                partition: s.record.partition,
                generation: s.generation,
                offset: s.record.offset,
            });
            // The fence is read before the positions are prepared, as the real writer does; out
            // of the group, nothing can be committed.
            let Some(fence) = self.world.lock().unwrap().generation else {
                continue;
            };
            let (reply, prepared) = tokio::sync::oneshot::channel();
            let asked = Control::PrepareCommit {
                settled: settled.collect(),
                reply,
            };
            if self.control.send(asked).is_err() {
                return;
            }
            let Ok(prepared): Result<Prepared, _> = prepared.await else {
                return;
            };
            let parts = split(std::mem::take(&mut held), &prepared);
            held = parts.waiting;
            if parts.covered.is_empty() {
                continue;
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
            let fenced = self.world.lock().unwrap().generation != Some(fence);
            if fenced || self.rng.random_bool(self.abort_ratio) {
                // Aborted (the coordinator refused offsets of an older generation, or the
                // transaction failed): nothing of it is visible; the outputs are tried again.
                held.extend(parts.covered);
                continue;
            }
            if std::env::var_os("REGNOTIFY_SIM_DEBUG").is_some() {
                let slots: Vec<(i32, u64, i64)> = parts
                    .covered
                    .iter()
                    .map(|s| (s.record.partition, s.generation, s.record.offset))
                    .collect();
                eprintln!(
                    "{:?} transaction fence {fence}: {slots:?} positions {:?} owned {:?}",
                    Instant::now(),
                    prepared.positions,
                    prepared.owned
                );
            }
            {
                let mut world = self.world.lock().unwrap();
                for submission in &parts.covered {
                    world.output(submission.record.partition, submission.record.offset);
                }
                // The same offsets list the real writer sends with the transaction.
                let offsets = crate::pipeline::kafka::commit_list(
                    TOPIC,
                    &prepared.positions,
                    &prepared.notes,
                );
                world.commit(&commits_of(&offsets));
            }
            let settled = parts
                .covered
                .iter()
                .map(|s| crate::pipeline::book::Slot {
                    partition: s.record.partition,
                    generation: s.generation,
                    offset: s.record.offset,
                })
                .collect();
            let _ = self.control.send(Control::TransactionCommitted(settled));
        }
    }
}
