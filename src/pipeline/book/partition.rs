//! One owned partition's books in one assignment: its generation, the stage of every offset
//! consumed and not acknowledged, its commit watermark and what was committed, the fingerprints
//! that tell a redelivery from a new record, the inherited note, and its pause and durability
//! counts; the note and commit position it allows. The rules across partitions are
//! [`PartitionBook`]'s.

use std::collections::{BTreeMap, BTreeSet};

#[cfg(doc)]
use super::PartitionBook;
use super::types::Stage;
use crate::pipeline::finished;
use crate::pipeline::watermark::CommitWatermark;

#[derive(Debug, Clone)]
pub(super) struct Partition {
    pub(super) generation: u64,
    pub(super) watermark: CommitWatermark,
    /// Offsets consumed in this generation and not acknowledged yet.
    pub(super) stages: BTreeMap<i64, Stage>,
    /// The highest position committed (or handed out to be committed) in this assignment.
    pub(super) committed: Option<i64>,
    /// Fingerprints of the most recently consumed offsets, to tell a record delivered again
    /// from a new record at an old offset.
    pub(super) recent: BTreeMap<i64, u64>,
    /// Offsets above the committed one that an earlier owner finished (the commit's note).
    pub(super) skip: BTreeSet<i64>,
    /// An offset above the commit position finished since the last commit: the note changed.
    pub(super) note_changed: bool,
    /// Paused because its window is full.
    pub(super) paused: bool,
    pub(super) revoking: bool,
    /// Events whose job ended and whose outcome is not durable yet: at-least-once, acknowledged
    /// and in no commit handed out; exactly-once, submitted and not committed. They keep their
    /// in-flight slot (see [`PartitionBook::undurable`]).
    pub(super) undurable: usize,
    /// At-least-once: acknowledged events that the commit under way covers.
    pub(super) undurable_committing: usize,
}

impl Partition {
    pub(super) fn new(generation: u64) -> Partition {
        Partition {
            generation,
            watermark: CommitWatermark::new(),
            stages: BTreeMap::new(),
            committed: None,
            recent: BTreeMap::new(),
            skip: BTreeSet::new(),
            note_changed: false,
            paused: false,
            revoking: false,
            undurable: 0,
            undurable_committing: 0,
        }
    }

    /// The note for a commit at `position` given `watermark` (this partition's, or a trial copy):
    /// the offsets above it finished here, and those an earlier owner finished that this one has
    /// not consumed yet. Without the latter, this owner's first commit would overwrite the note
    /// it inherited, and the next owner would call again what the earlier one finished.
    pub(super) fn note(&self, watermark: &CommitWatermark, position: i64) -> String {
        let mut finished: BTreeSet<i64> = watermark.finished_beyond().into_iter().collect();
        finished.extend(self.skip.iter().copied());
        let finished: Vec<i64> = finished.into_iter().collect();
        finished::encode(position, &finished)
    }

    /// At-least-once: the position to commit, when it moved or its note changed since the last
    /// commit (a revoking partition is committed by the revoke's answer instead).
    pub(super) fn commit_due(&self) -> Option<i64> {
        if self.revoking {
            return None;
        }
        let position = self.watermark.commit_position()?;
        (self.committed < Some(position) || self.note_changed).then_some(position)
    }

    /// True when no work of it can still move its commit position: nothing runs or waits in a
    /// transaction before the first offset that will never finish.
    pub(super) fn settled(&self) -> bool {
        let blocked = self
            .stages
            .iter()
            .find(|(_, stage)| matches!(stage, Stage::Waiting | Stage::Dropped))
            .map(|(offset, _)| *offset);
        !self.stages.iter().any(|(offset, stage)| {
            matches!(stage, Stage::Running | Stage::Submitted)
                && blocked.is_none_or(|blocked| *offset < blocked)
        })
    }
}
