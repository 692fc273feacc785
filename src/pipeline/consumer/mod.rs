//! The Kafka consumer: a dedicated thread polls librdkafka and hands assignments, revocations and
//! records to the dispatcher over one channel, in the order librdkafka produced them, so that a
//! revoke can never overtake the assignment it cancels. The thread never blocks on the
//! dispatcher (the channel is unbounded): it keeps polling, so rebalance callbacks always run and
//! the member stays in its group however slow the dispatcher is. Memory stays bounded by holding
//! and pausing instead: the thread applies the dispatcher's [`PausePlan`], holds off polling
//! while too many events wait (for at most [`INTAKE_HOLD_MAX`]), and pauses a partition whose
//! window is full, or every partition when a hold lasts longer.
//!
//! Rebalance callbacks run on that thread. On revoke the callback only signals the dispatcher and
//! waits, until a deadline it sets itself, for the offsets it may commit; it then commits them
//! synchronously before librdkafka takes the partitions away. This module never decides what is
//! committed and never blocks an async worker thread.
//!
//! The parts: `flow` (the pause board and the intake counts shared with the dispatcher),
//! `context` (the librdkafka context: rebalance callbacks, pausing and resuming), `poll` (the
//! thread and its poll loop), `waker` (wakes librdkafka's fetcher after a resume). Here: what
//! crosses to the dispatcher.

mod context;
mod flow;
mod poll;
mod waker;

use std::time::Instant;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::BaseConsumer;

use crate::pipeline::book::Slot;
#[cfg(doc)]
use crate::pipeline::decisions::PausePlan;
use crate::pipeline::record::InputRecord;
pub(crate) use context::PipelineContext;
pub(crate) use flow::Flow;
#[cfg(doc)]
use poll::INTAKE_HOLD_MAX;
pub(crate) use poll::{ConsumerChannels, start};

/// Assignments, revocations and records, in librdkafka's order.
#[derive(Debug)]
pub(crate) enum ConsumerEvent {
    /// Partitions assigned, with what their committed offsets' notes say an earlier owner
    /// finished above them (see [`crate::pipeline::finished`]).
    Assigned(Vec<i32>, Vec<FinishedNote>),
    /// The dispatcher answers with the commit positions of the finished prefixes (partition,
    /// next offset) by `deadline`; `lost` means the group already gave the partitions away, so
    /// nothing may be committed.
    Revoked {
        partitions: Vec<i32>,
        lost: bool,
        deadline: Instant,
        reply: std::sync::mpsc::SyncSender<TopicPartitionList>,
    },
    /// The revoke's commit was made (landed or failed), or will not be made (lost, nothing to
    /// commit, no answer in time). Follows every `Revoked`.
    RevokeSettled,
    /// The input topic has this many partitions (read at every assignment, before
    /// [`ConsumerEvent::Assigned`]): what the members' shares of a send-rate limit divide.
    TopicPartitions(usize),
    Record(InputRecord),
}

/// A partition's committed offset and the finished offsets its note names above it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FinishedNote {
    pub(crate) partition: i32,
    pub(crate) committed: i64,
    pub(crate) finished: std::collections::BTreeSet<i64>,
}

/// What reaches the dispatcher from outside the consumer's order: commit results and the
/// transaction writer.
#[derive(Debug)]
pub(crate) enum Control {
    /// Exactly-once: which commit positions would these settled offsets allow? (The books are
    /// not changed until the transaction commits.)
    PrepareCommit {
        settled: Vec<Slot>,
        reply: tokio::sync::oneshot::Sender<crate::pipeline::book::Prepared>,
    },
    /// Exactly-once: the transaction with these outputs and offsets committed.
    TransactionCommitted(Vec<Slot>),
}

pub(crate) type PipelineConsumer = BaseConsumer<PipelineContext>;
