//! The librdkafka context of the input consumer, on the consumer thread: rebalance callbacks
//! (a revoke signals the dispatcher and waits, until its own deadline, for the offsets it may
//! commit, then commits them synchronously; an assignment reads the committed offsets' notes and
//! the topic's partition count), client errors and statistics, and pausing or resuming
//! partitions as the plan and the flow counts say. It never decides what is committed or what
//! pauses.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::flow::Flow;
use super::{ConsumerEvent, FinishedNote, PipelineConsumer};
use crate::observe::Health;

/// How long an assignment waits for the input topic's partition count.
const TOPIC_METADATA_TIMEOUT: Duration = Duration::from_secs(2);
/// Extra time a revoke callback waits beyond the drain timeout for the dispatcher's answer.
const REVOKE_REPLY_GRACE: Duration = Duration::from_secs(5);

/// The revoke callback's side of the dispatcher's answer. When the callback returns, whichever
/// way, it stops listening first and then reports [`ConsumerEvent::RevokeSettled`]: an answer
/// sent after the report finds nobody listening, so the dispatcher knows nothing will be
/// committed.
struct RevokeAnswer<'a> {
    answer: Option<std::sync::mpsc::Receiver<TopicPartitionList>>,
    events: &'a mpsc::UnboundedSender<ConsumerEvent>,
}

impl RevokeAnswer<'_> {
    fn recv_timeout(
        &self,
        timeout: Duration,
    ) -> Result<TopicPartitionList, std::sync::mpsc::RecvTimeoutError> {
        match &self.answer {
            Some(answer) => answer.recv_timeout(timeout),
            None => Err(std::sync::mpsc::RecvTimeoutError::Disconnected),
        }
    }
}

impl Drop for RevokeAnswer<'_> {
    fn drop(&mut self) {
        drop(self.answer.take());
        let _ = self.events.send(ConsumerEvent::RevokeSettled);
    }
}

/// How long an assignment waits for the committed offsets' notes before it goes on without them.
const NOTE_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The librdkafka context: rebalance hooks and commit results that talk to the dispatcher.
#[derive(Debug)]
pub(crate) struct PipelineContext {
    pub(super) events: mpsc::UnboundedSender<ConsumerEvent>,
    pub(super) flow: Arc<Flow>,
    pub(super) topic: String,
    pub(super) drain_timeout: Duration,
    pub(super) health: Arc<Health>,
    /// What the consumer thread last applied: the plan's version, and the partitions it paused.
    pub(super) applied: Mutex<Applied>,
}

#[derive(Debug, Default)]
pub(super) struct Applied {
    pub(super) version: u64,
    /// Set when the counts may have changed what should pause.
    pub(super) recheck: bool,
    pub(super) paused: BTreeSet<i32>,
}

impl ClientContext for PipelineContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        crate::observe::kafka_statistics(&self.health, &statistics, &self.topic);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        crate::observe::kafka_client_error(&self.health, &error, reason);
    }
}

impl ConsumerContext for PipelineContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let partitions = partitions_of(tpl, &self.topic);
        if partitions.is_empty() {
            return;
        }
        let lost = consumer.assignment_lost();
        let deadline = Instant::now() + self.drain_timeout;
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let event = ConsumerEvent::Revoked {
            partitions,
            lost,
            deadline,
            reply,
        };
        if self.events.send(event).is_err() {
            return;
        }
        let answer = RevokeAnswer {
            answer: Some(answer),
            events: &self.events,
        };
        let commit = match answer.recv_timeout(self.drain_timeout + REVOKE_REPLY_GRACE) {
            Ok(commit) => commit,
            Err(_) => {
                tracing::warn!("dispatcher did not answer the revoke in time; nothing committed");
                return;
            }
        };
        let offsets: Vec<(i32, i64)> = commit
            .elements_for_topic(&self.topic)
            .iter()
            .filter_map(|element| match element.offset() {
                Offset::Offset(offset) => Some((element.partition(), offset)),
                _ => None,
            })
            .collect();
        tracing::info!(
            ?offsets,
            lost,
            "revoke answered; committing the finished prefixes"
        );
        if lost || offsets.is_empty() {
            return;
        }
        match consumer.commit(&commit, CommitMode::Sync) {
            Ok(()) => {
                for (partition, offset) in offsets {
                    crate::observe::committed(partition, offset);
                }
            }
            Err(error) => crate::observe::commit_failed(&error),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions = partitions_of(tpl, &self.topic);
            // librdkafka keeps a partition's pause across unassign and assign, and a partition
            // assigned while everything is paused must not fetch: set each one as the plan says.
            // Those it resumes need no fetch waker: librdkafka wakes its fetcher itself when an
            // assigned partition starts fetching.
            self.set_pause_of(consumer, &partitions, true);
            let notes = self.finished_notes(consumer, tpl);
            match consumer.fetch_metadata(Some(&self.topic), TOPIC_METADATA_TIMEOUT) {
                Ok(metadata) => {
                    let count = metadata
                        .topics()
                        .iter()
                        .find(|topic| topic.name() == self.topic)
                        .map_or(0, |topic| topic.partitions().len());
                    if count > 0 {
                        let _ = self.events.send(ConsumerEvent::TopicPartitions(count));
                    }
                }
                // The shares of the send-rate limits stay as they were.
                Err(error) => tracing::warn!(
                    %error,
                    "cannot read the input topic's partition count; send-rate shares unchanged"
                ),
            }
            // Sent even when empty: an instance with no partitions has still joined the group.
            let _ = self.events.send(ConsumerEvent::Assigned(partitions, notes));
        }
    }
}

impl PipelineContext {
    /// Reads the committed offsets of newly assigned partitions and the notes committed with
    /// them. A note that cannot be read (another tool's metadata, another version, another
    /// position) or a failed read skips nothing: the events are processed again.
    fn finished_notes(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
    ) -> Vec<FinishedNote> {
        let mut ours = TopicPartitionList::new();
        for element in tpl.elements_for_topic(&self.topic) {
            ours.add_partition(&self.topic, element.partition());
        }
        if ours.count() == 0 {
            return Vec::new();
        }
        let committed = match consumer.committed_offsets(ours, NOTE_READ_TIMEOUT) {
            Ok(committed) => committed,
            Err(error) => {
                tracing::warn!(%error, "cannot read the committed offsets' notes; finished events will be processed again");
                return Vec::new();
            }
        };
        let mut notes = Vec::new();
        for element in committed.elements_for_topic(&self.topic) {
            let (Offset::Offset(position), note) = (element.offset(), element.metadata()) else {
                continue;
            };
            if note.is_empty() {
                continue;
            }
            match crate::pipeline::finished::decode(note, position) {
                Ok(finished) if !finished.is_empty() => notes.push(FinishedNote {
                    partition: element.partition(),
                    committed: position,
                    finished,
                }),
                Ok(_) => {}
                Err(error) => tracing::warn!(
                    partition = element.partition(),
                    %error,
                    "commit metadata ignored; nothing is skipped"
                ),
            }
        }
        notes
    }

    /// Applies the dispatcher's plan and the flow counts, when either may have changed; the
    /// partitions it resumed.
    pub(super) fn apply_pause(&self, consumer: &PipelineConsumer) -> Vec<i32> {
        let version = self.flow.pause.version();
        {
            let Ok(applied) = self.applied.lock() else {
                return Vec::new();
            };
            if version == applied.version && !applied.recheck {
                return Vec::new();
            }
        }
        let assigned = match consumer.assignment() {
            Ok(assignment) => partitions_of(&assignment, &self.topic),
            Err(error) => {
                tracing::warn!(%error, "cannot read the assignment to pause or resume");
                return Vec::new();
            }
        };
        self.set_pause_of(consumer, &assigned, false)
    }

    /// Asks for the pause state to be worked out again at the next poll.
    pub(super) fn recheck(&self) {
        if let Ok(mut applied) = self.applied.lock() {
            applied.recheck = true;
        }
    }

    /// Whether some partition is paused by the counts rather than the plan; those are let go
    /// only by a recheck.
    pub(super) fn paused_by_counts(&self) -> bool {
        let plan = self.flow.pause.plan();
        self.applied.lock().is_ok_and(|applied| {
            applied
                .paused
                .iter()
                .any(|partition| !plan.is_paused(*partition))
        })
    }

    /// Pauses or resumes `partitions` as the plan and the counts say: only those whose state
    /// changes, or all of them when `fresh` (just assigned: librdkafka's own flags are unknown).
    ///
    /// A fresh pass covers only the new partitions (with cooperative assignment the others stay
    /// owned), so it leaves a full pass due rather than record the plan as applied to all. A
    /// pause or resume librdkafka refuses is not recorded as done either: the next poll tries
    /// again. Returns the partitions resumed.
    fn set_pause_of(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[i32],
        fresh: bool,
    ) -> Vec<i32> {
        let Ok(mut applied) = self.applied.lock() else {
            return Vec::new();
        };
        if fresh {
            applied.recheck = true;
        } else {
            applied.version = self.flow.pause.version();
            applied.recheck = false;
        }
        let plan = self.flow.pause.plan();
        let mut pause = Vec::new();
        let mut resume = Vec::new();
        for &partition in partitions {
            let wanted = plan.is_paused(partition) || self.flow.over(partition);
            let was = applied.paused.contains(&partition);
            if wanted && (fresh || !was) {
                pause.push(partition);
                applied.paused.insert(partition);
            } else if !wanted && (fresh || was) {
                resume.push(partition);
                applied.paused.remove(&partition);
            }
        }
        if !pause.is_empty() || !resume.is_empty() {
            tracing::debug!(?pause, ?resume, "partitions paused or resumed");
        }
        let paused = set_paused(consumer, &self.topic, &pause, true);
        let resumed = set_paused(consumer, &self.topic, &resume, false);
        // What librdkafka refused is recorded as not done, so the next pass asks again.
        if !paused {
            for partition in &pause {
                applied.paused.remove(partition);
            }
        }
        if !resumed {
            applied.paused.extend(resume.iter().copied());
        }
        if !paused || !resumed {
            applied.recheck = true;
        }
        if resumed { resume } else { Vec::new() }
    }
}

fn set_paused<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
    pause: bool,
) -> bool {
    if partitions.is_empty() {
        return true;
    }
    let mut tpl = TopicPartitionList::new();
    for partition in partitions {
        tpl.add_partition(topic, *partition);
    }
    let result = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    match result {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(
                %error,
                ?partitions,
                pause,
                "cannot pause or resume partitions; tried again at the next poll"
            );
            false
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements()
        .iter()
        .filter(|element| element.topic() == topic)
        .map(|element| element.partition())
        .collect()
}
