//! The book's vocabulary: a consumed record's [`Slot`], the [`Stage`] of an offset not yet
//! acknowledged, how a job [`Settle`]s, what the book makes of a record ([`Consumed`]), and its
//! answers to a revoke ([`RevokeEnd`]) and to an exactly-once prepare ([`Prepared`]). Plain data:
//! no decisions.

use std::collections::BTreeSet;

/// One consumed record in one assignment of its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Slot {
    pub(crate) partition: i32,
    pub(crate) generation: u64,
    pub(crate) offset: i64,
}

/// What became of a consumed offset whose outputs are not acknowledged yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Consumed, not started: being decoded, or waiting for its key or a slot.
    Waiting,
    /// A worker has it.
    Running,
    /// Exactly-once: its outputs are with the transaction writer, not committed yet.
    Submitted,
    /// It will not finish in this assignment (abandoned, dropped by a revoke or a shutdown, or an
    /// output Kafka can never accept): every commit position stays below it.
    Dropped,
}

/// How a worker's job ended, as far as the book is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Every output is acknowledged by Kafka.
    Acknowledged,
    /// Exactly-once: the outputs wait in the transaction writer.
    Submitted,
    /// The outputs were not written.
    Abandoned,
}

/// What the book makes of a consumed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Consumed {
    /// Tracked: process it.
    Track(Slot),
    /// Finished by an earlier owner, as the committed offset's note says: not processed again,
    /// and counted as finished at once.
    Skip,
    /// A record at or below an offset already consumed in this assignment that is not the
    /// record consumed there before: the log was truncated (unclean leader election) or the
    /// topic recreated. The partition starts a new generation from this record; everything of
    /// `stale` is void (its jobs must be cancelled, its waiting work forgotten, and nothing of it
    /// is ever committed).
    Restart { slot: Slot, stale: u64 },
    /// Not a partition this member processes now (not owned, revoking, or stopping), or the
    /// same record delivered again in this assignment (librdkafka can deliver a record twice
    /// around a pause and resume): the first delivery is in the books already.
    Ignore,
}

/// The end of a revoke: what to cancel and, at least-once, what to commit before the partitions
/// go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RevokeEnd {
    /// Assignments (partition, generation) whose work still running must stop.
    pub(crate) cancel: Vec<(i32, u64)>,
    /// Commit positions (partition, next offset).
    pub(crate) commit: Vec<(i32, i64)>,
    /// The note of each commit position (partition, note).
    pub(crate) notes: Vec<(i32, String)>,
    /// Ended events of these partitions whose outcome only that commit makes durable: their
    /// in-flight slots stay taken until it has been made (see
    /// [`crate::pipeline::decisions::DispatchCore::revoke_commit_settled`]).
    pub(crate) held: usize,
}

/// The exactly-once answer to "what would committing these settled offsets allow?".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Prepared {
    /// New commit positions (partition, next offset), beyond what earlier transactions committed.
    pub(crate) positions: Vec<(i32, i64)>,
    /// The note of each position (partition, note): the finished offsets above it once this
    /// transaction commits.
    pub(crate) notes: Vec<(i32, String)>,
    /// The offsets each note names (partition, offsets): their outputs go into the transaction.
    pub(crate) noted: Vec<(i32, BTreeSet<i64>)>,
    /// The assignments (partition, generation) owned now; outputs of any other are orphans.
    pub(crate) owned: Vec<(i32, u64)>,
}
