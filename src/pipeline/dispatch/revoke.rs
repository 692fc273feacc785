//! Assignments and revocations: notes of finished offsets skipped, each assignment's cancel
//! tokens, the revoke's answer (the core's commit positions) and the cancellation of the revoked
//! assignments' work, and the members' share of the send-rate limits. What a revoke waits for is
//! the core's decision; the commit itself is the consumer thread's.

use rdkafka::TopicPartitionList;
use tokio::time::Instant;

use super::Dispatcher;
use crate::observe;
use crate::pipeline::book::RevokeEnd;
use crate::pipeline::consumer::FinishedNote;

#[derive(Debug)]
pub(super) struct PendingRevoke {
    pub(super) reply: std::sync::mpsc::SyncSender<TopicPartitionList>,
    pub(super) deadline: Instant,
}

impl Dispatcher {
    pub(super) fn on_assigned(&mut self, partitions: &[i32], notes: Vec<FinishedNote>) {
        observe::rebalance(&self.worker.stats, "assign", partitions);
        let (previous, fresh) = self.core.assign(partitions);
        for note in notes {
            if fresh.contains(&note.partition) {
                tracing::info!(
                    partition = note.partition,
                    committed = note.committed,
                    finished = note.finished.len(),
                    "an earlier owner finished offsets above the committed one: they are skipped"
                );
                self.core
                    .skip_finished(note.partition, note.committed, note.finished);
            }
        }
        tracing::trace!(?partitions, ?fresh, owned = ?self.core.book().owned(), "assigned");
        if let Some(previous) = previous {
            tracing::warn!("assignment received before the previous revoke was answered");
            self.apply_revoke_end(previous);
        }
        for partition in fresh {
            if let Some(generation) = self.core.book().generation(partition) {
                self.cancels
                    .insert((partition, generation), self.worker.hard_stop.child_token());
            }
        }
        self.publish_assignment();
    }

    pub(super) fn on_revoked(
        &mut self,
        partitions: &[i32],
        lost: bool,
        deadline: Instant,
        reply: std::sync::mpsc::SyncSender<TopicPartitionList>,
    ) {
        observe::rebalance(
            &self.worker.stats,
            if lost { "lost" } else { "revoke" },
            partitions,
        );
        let (previous, cancel_now) = self.core.revoke(partitions, lost);
        if let Some(previous) = previous {
            self.apply_revoke_end(previous);
        }
        for assignment in cancel_now {
            if let Some(cancel) = self.cancels.get(&assignment) {
                cancel.cancel();
            }
        }
        for &partition in partitions {
            if let Some(generation) = self.core.book().generation(partition)
                && let Some(unsent) = self.unsent.remove(&(partition, generation))
            {
                unsent.cancel();
            }
        }
        self.forget_undecoded();
        self.pending_revoke = Some(PendingRevoke { reply, deadline });
    }

    /// Answers the pending revoke with the core's commit positions and cancels the revoked
    /// assignments' work still running (so a merchant's old event can never reach Alipay+ after
    /// the partition's next owner sent a newer one).
    pub(super) fn finish_revoke(&mut self) {
        if let Some(end) = self.core.finish_revoke() {
            self.apply_revoke_end(end);
        }
    }

    fn apply_revoke_end(&mut self, end: RevokeEnd) {
        let RevokeEnd {
            cancel,
            commit,
            notes,
            held: _,
        } = end;
        for assignment in cancel {
            if let Some(token) = self.cancels.remove(&assignment) {
                token.cancel();
            }
            self.unsent.remove(&assignment);
            observe::pending(assignment.0, 0);
            self.ages.forget(assignment.0);
            observe::partition_gone(assignment.0);
        }
        if let Some(revoke) = self.pending_revoke.take() {
            let answer = self.commit_list(&commit, &notes);
            if self.committing.is_some() {
                self.held_revoke_answer = Some((revoke.reply, answer));
            } else {
                self.answer_revoke(&revoke.reply, answer);
            }
        } else {
            // Nobody waits for this answer (the consumer moved on): nothing will be committed.
            self.core.revoke_commit_settled();
        }
        self.forget_undecoded();
        self.publish_assignment();
    }

    fn publish_assignment(&self) {
        let owned = self.core.book().len();
        self.status.assigned(owned);
        if let Some(partitions) = self.topic_partitions {
            self.worker.mpps.share(owned, partitions);
        }
    }
}
