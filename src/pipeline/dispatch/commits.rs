//! Offset commits (at-least-once): one at a time, so they land in the order they were made,
//! soon after finished work but at most once per [`COMMIT_GAP`], backing off while the
//! coordinator refuses (and failing readiness when refusals persist); each position with its
//! note of finished offsets; a revoke's answer held until the commit under way has landed.
//! Where commits go is a [`Committer`]. Which positions may be committed is the core's decision.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Dispatcher;
use crate::observe;
#[cfg(doc)]
use crate::pipeline::consumer::ConsumerEvent;
use crate::pipeline::consumer::PipelineConsumer;

/// The least time between two commits that follow finished work (at-least-once): under load the
/// group coordinator sees at most one commit per member this often, and at most one at a time.
pub(super) const COMMIT_GAP: Duration = Duration::from_millis(10);
/// The first pause after a refused commit; it doubles up to [`COMMIT_BACKOFF_MAX`].
const COMMIT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const COMMIT_BACKOFF_MAX: Duration = Duration::from_secs(10);

impl Dispatcher {
    /// The commit of these positions of owned partitions, each with its note of the finished
    /// offsets above it.
    pub(super) fn positions(&self, positions: &[(i32, i64)]) -> TopicPartitionList {
        let notes: Vec<(i32, String)> = positions
            .iter()
            .map(|(partition, position)| (*partition, self.core.book().note(*partition, *position)))
            .collect();
        self.commit_list(positions, &notes)
    }

    pub(super) fn commit_list(
        &self,
        positions: &[(i32, i64)],
        notes: &[(i32, String)],
    ) -> TopicPartitionList {
        crate::pipeline::kafka::commit_list(&self.topic, positions, notes)
    }

    /// Commits what finished as soon as the previous commit has landed and [`COMMIT_GAP`] has
    /// passed since it was made, so that a crash repeats little beyond the work in flight.
    ///
    /// Finished events keep their in-flight slot until a commit covers them; when events wait
    /// for those slots, the commit goes at once, without the gap.
    pub(super) fn commit_when_free(&mut self) {
        if self.committing.is_some() || !self.core.has_commits() {
            return;
        }
        if let Some(retry_at) = self.commit_refused.1
            && Instant::now() < retry_at
        {
            self.commit_due = Some(retry_at);
            return;
        }
        let due = self.last_commit + COMMIT_GAP;
        if Instant::now() < due && !self.core.short_of_slots() {
            self.commit_due.get_or_insert(due);
            return;
        }
        self.commit_due = None;
        self.start_commit();
    }

    /// Starts a commit of the positions that moved, unless one is under way. librdkafka reports
    /// an asynchronous manual commit's result only to a configured `offset_commit_cb`, which
    /// rdkafka does not set; so the commit is synchronous, on the blocking pool, and its result
    /// comes back to the loop ([`Dispatcher::on_commit_landed`]).
    pub(super) fn start_commit(&mut self) {
        if self.committing.is_some() {
            return;
        }
        if let Some(retry_at) = self.commit_refused.1
            && Instant::now() < retry_at
        {
            return;
        }
        let positions = self.core.take_commits();
        if positions.is_empty() {
            return;
        }
        let tpl = self.positions(&positions);
        self.last_commit = Instant::now();
        let task = tokio::spawn(Arc::clone(&self.consumer).commit(tpl));
        self.committing = Some((positions, task));
    }

    pub(super) fn on_commit_landed(&mut self, (positions, result): Landed) {
        let partitions: Vec<i32> = positions.iter().map(|(p, _)| *p).collect();
        match result {
            Ok(Ok(())) => {
                self.core.commit_landed(&partitions);
                if self.commit_refused.0 > 0 {
                    self.status.set_commits_refused(None);
                }
                self.commit_refused = (0, None);
                for (partition, offset) in positions {
                    self.ages.committed_below(partition, offset);
                    observe::committed(partition, offset);
                }
            }
            Ok(Err(error)) => {
                let pause = self.commit_refused_again();
                observe::commit_failed(&error);
                let refused = self.commit_refused.0;
                let permanent = commit_never_lands(&error);
                if permanent || refused >= COMMITS_REFUSED_UNREADY {
                    // Nothing is lost (the events stay uncommitted and are held back), but the
                    // service makes no durable progress: an operator must look.
                    tracing::error!(
                        %error,
                        refused_in_a_row = refused,
                        retry_in = ?pause,
                        "offset commits keep failing; /readyz answers 503 until one lands"
                    );
                    self.status.set_commits_refused(Some(format!(
                        "{refused} in a row, the last: {error}"
                    )));
                } else {
                    tracing::warn!(
                        refused_in_a_row = refused,
                        retry_in = ?pause,
                        "offset commit refused: the next one waits"
                    );
                }
                self.core.commit_failed(&partitions);
            }
            Err(error) => {
                tracing::error!(%error, "commit task failed");
                self.commit_refused_again();
                self.core.commit_failed(&partitions);
            }
        }
        if let Some((reply, answer)) = self.held_revoke_answer.take() {
            self.answer_revoke(&reply, answer);
        }
    }

    /// Hands the revoke's commit to the consumer thread, which reports
    /// [`ConsumerEvent::RevokeSettled`] once it has made it. When its callback stopped waiting,
    /// nothing is committed (which is safe) and the slots the revoke held are free at once.
    pub(super) fn answer_revoke(
        &mut self,
        reply: &std::sync::mpsc::SyncSender<TopicPartitionList>,
        answer: TopicPartitionList,
    ) {
        if reply.send(answer).is_err() {
            self.core.revoke_commit_settled();
        }
    }

    /// Counts a refused commit and sets the pause before the next (doubling from
    /// [`COMMIT_BACKOFF_MIN`] to [`COMMIT_BACKOFF_MAX`]), so a coordinator that keeps refusing
    /// is not asked every few milliseconds; returns the pause.
    fn commit_refused_again(&mut self) -> Duration {
        let refused = self.commit_refused.0.saturating_add(1);
        let pause = commit_backoff(refused);
        self.commit_refused = (refused, Some(Instant::now() + pause));
        pause
    }
}

/// Refused commits in a row (about half a minute of backoff) after which `/readyz` fails.
const COMMITS_REFUSED_UNREADY: u32 = 8;

/// A commit error no retry mends without an operator: the group or topic not authorised, or
/// the topic gone. It is still retried (a fixed ACL heals it) but fails readiness at once.
fn commit_never_lands(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::GroupAuthorizationFailed
                | Code::TopicAuthorizationFailed
                | Code::ClusterAuthorizationFailed
                | Code::UnknownTopic
        )
    )
}

/// A commit under way: it resolves with the coordinator's answer.
pub(crate) type CommitFuture = Pin<Box<dyn Future<Output = KafkaResult<()>> + Send>>;

/// Where the dispatcher's offset commits go. The group's consumer commits synchronously on the
/// blocking pool (librdkafka reports an asynchronous manual commit's result only to a commit
/// callback rdkafka does not set); the whole-service simulation answers from its simulated group.
pub(crate) trait Committer: Send + Sync {
    fn commit(self: Arc<Self>, offsets: TopicPartitionList) -> CommitFuture;
}

impl Committer for PipelineConsumer {
    fn commit(self: Arc<Self>, offsets: TopicPartitionList) -> CommitFuture {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                Consumer::commit(&*self, &offsets, CommitMode::Sync)
            })
            .await
            .unwrap_or(Err(KafkaError::Canceled))
        })
    }
}

/// The pause after the `refused`-th refused commit in a row.
fn commit_backoff(refused: u32) -> Duration {
    let doublings = refused.saturating_sub(1).min(16);
    COMMIT_BACKOFF_MIN
        .saturating_mul(1 << doublings)
        .min(COMMIT_BACKOFF_MAX)
}

/// A commit under way: its positions and the blocking task that makes it.
pub(super) type Committing = (Vec<(i32, i64)>, JoinHandle<KafkaResult<()>>);

/// A commit's positions and what became of it.
pub(super) type Landed = (
    Vec<(i32, i64)>,
    Result<KafkaResult<()>, tokio::task::JoinError>,
);

/// Waits for the commit under way; only polled while there is one.
pub(super) async fn commit_landed(committing: &mut Option<Committing>) -> Landed {
    match committing {
        Some((_, task)) => {
            let result = task.await;
            let positions = committing
                .take()
                .map(|(positions, _)| positions)
                .unwrap_or_default();
            (positions, result)
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_commits_back_off_doubling_to_a_ceiling() {
        assert_eq!(commit_backoff(1), COMMIT_BACKOFF_MIN);
        assert_eq!(commit_backoff(2), COMMIT_BACKOFF_MIN * 2);
        assert_eq!(commit_backoff(4), COMMIT_BACKOFF_MIN * 8);
        assert_eq!(commit_backoff(8), COMMIT_BACKOFF_MAX);
        assert_eq!(commit_backoff(u32::MAX), COMMIT_BACKOFF_MAX);
    }
}
