//! The partition book: which partitions this member owns, in which assignment (generation), what
//! became of every offset consumed in that assignment, and therefore what may be committed.
//!
//! It owns the delivery law of SPEC section 5 — a commit position never passes an offset whose
//! outputs are not acknowledged, never names a partition this member does not own, and never moves
//! backwards within an assignment — and the flow-control decision of each partition (pause when
//! its window is full, resume at half). It never talks to Kafka, never spawns, never reads a
//! clock: the dispatcher feeds it what the consumer and the workers report, in the order the
//! consumer saw it, and applies what it answers.
//!
//! Every consumed offset is in one [`Stage`] until its outputs are acknowledged, when it leaves
//! the book. A revoke or a shutdown waits only for work that can still settle: an offset that will
//! never finish in this assignment ([`Stage::Dropped`]) blocks every commit position behind it, so
//! work behind it cannot settle and is not waited for.
//!
//! The parts: `types` (the book's vocabulary), `partition` (one partition's books); the
//! rules across partitions are here, the cases in `tests.rs`.

mod partition;
#[cfg(test)]
mod tests;
mod types;

use std::collections::{BTreeMap, BTreeSet};

use crate::pipeline::finished::{self, NOTE_PRESSURE_BYTES};
use crate::pipeline::invariant;
use crate::pipeline::watermark::CommitWatermark;
use partition::Partition;
pub(crate) use types::{Consumed, Prepared, RevokeEnd, Settle, Slot, Stage};

/// The books of every owned partition.
#[derive(Debug, Clone)]
pub(crate) struct PartitionBook {
    exactly_once: bool,
    max_pending_per_partition: usize,
    partitions: BTreeMap<i32, Partition>,
    next_generation: u64,
    /// Offsets in [`Stage::Waiting`], over all partitions.
    waiting: usize,
    stopping: bool,
}

impl PartitionBook {
    pub(crate) fn new(exactly_once: bool, max_pending_per_partition: usize) -> PartitionBook {
        PartitionBook {
            exactly_once,
            max_pending_per_partition: max_pending_per_partition.max(1),
            partitions: BTreeMap::new(),
            next_generation: 0,
            waiting: 0,
            stopping: false,
        }
    }

    /// Partitions assigned to this member. One already owned keeps its books (cooperative
    /// rebalancing never re-sends those); returns the ones that start afresh.
    pub(crate) fn assign(&mut self, partitions: &[i32]) -> Vec<i32> {
        let mut fresh = Vec::new();
        for &partition in partitions {
            if self.partitions.contains_key(&partition) {
                continue;
            }
            let generation = self.new_generation();
            self.partitions
                .insert(partition, Partition::new(generation));
            fresh.push(partition);
        }
        fresh
    }

    /// An earlier owner of `partition` committed `committed` with a note naming these offsets
    /// above it as finished: they are skipped when consumed. Only for a partition that has not
    /// consumed anything in this assignment.
    pub(crate) fn skip_finished(
        &mut self,
        partition: i32,
        committed: i64,
        finished: BTreeSet<i64>,
    ) {
        if let Some(state) = self.partitions.get_mut(&partition)
            && state.recent.is_empty()
        {
            state.skip = finished.into_iter().filter(|o| *o > committed).collect();
        }
    }

    /// The note for a commit of `partition` at `position`: the finished offsets above it (see
    /// [`crate::pipeline::finished`]).
    pub(crate) fn note(&self, partition: i32, position: i64) -> String {
        self.partitions
            .get(&partition)
            .map(|state| state.note(&state.watermark, position))
            .unwrap_or_default()
    }

    /// Starts a revoke. Waiting work of these partitions is dropped: it must not start, and the
    /// next owner consumes it again because its offsets are never committed. Returns the
    /// waiting slots dropped, for the caller to forget.
    pub(crate) fn begin_revoke(&mut self, partitions: &[i32]) -> Vec<Slot> {
        for partition in partitions {
            if let Some(state) = self.partitions.get_mut(partition) {
                state.revoking = true;
            }
        }
        self.drop_waiting_where(|partition| partitions.contains(&partition))
    }

    /// True when every revoking partition has no work that can still settle.
    pub(crate) fn revoke_settled(&self) -> bool {
        self.partitions
            .values()
            .filter(|state| state.revoking)
            .all(Partition::settled)
    }

    /// Ends the revoke: forgets the revoking partitions and returns their assignments (whose
    /// jobs still running must be cancelled) and, at least-once, the positions to commit before
    /// librdkafka lets them go. (Exactly-once commits only inside transactions; a lost assignment
    /// must commit nothing: the caller drops the positions then.)
    pub(crate) fn finish_revoke(&mut self) -> RevokeEnd {
        let mut end = RevokeEnd::default();
        let revoking: Vec<i32> = self
            .partitions
            .iter()
            .filter(|(_, state)| state.revoking)
            .map(|(partition, _)| *partition)
            .collect();
        for partition in revoking {
            let Some(state) = self.partitions.remove(&partition) else {
                continue;
            };
            end.cancel.push((partition, state.generation));
            // Committed again even when a periodic commit already took it: that asynchronous
            // commit may still be in flight or fail, and the next owner starts from what is
            // committed when this callback returns.
            if !self.exactly_once
                && let Some(position) = state.watermark.commit_position()
            {
                end.commit.push((partition, position));
                let note = state.note(&state.watermark, position);
                end.notes.push((partition, note));
                end.held += state.undurable + state.undurable_committing;
            }
        }
        end
    }

    /// Books a consumed record. `fingerprint` identifies its content (key, value, timestamp):
    /// a record at an offset already consumed in this assignment is the same record delivered
    /// again when its fingerprint matches, and a new record (the log changed under us) when it
    /// does not, or when the offset is too old to be remembered (the safe side: processing it
    /// again repeats work, ignoring it would lose it).
    pub(crate) fn consume(&mut self, partition: i32, offset: i64, fingerprint: u64) -> Consumed {
        if self.stopping || offset < 0 {
            return Consumed::Ignore;
        }
        let recent_limit = self.recent_limit();
        let Some(state) = self.partitions.get_mut(&partition) else {
            return Consumed::Ignore;
        };
        if state.revoking {
            return Consumed::Ignore;
        }
        if !state.skip.is_empty() {
            // Notes name offsets from the committed one up; older ones are behind us.
            state.skip = state.skip.split_off(&offset);
            if state.skip.first() == Some(&offset) && state.watermark.track(offset).is_ok() {
                state.skip.remove(&offset);
                remember(&mut state.recent, offset, fingerprint, recent_limit);
                let completed = state.watermark.complete(offset);
                invariant::expect(completed, "skipped_offset_in_window");
                return Consumed::Skip;
            }
        }
        if state.watermark.track(offset).is_ok() {
            state.stages.insert(offset, Stage::Waiting);
            remember(&mut state.recent, offset, fingerprint, recent_limit);
            self.waiting += 1;
            return Consumed::Track(Slot {
                partition,
                generation: state.generation,
                offset,
            });
        }
        if state.recent.get(&offset) == Some(&fingerprint) {
            return Consumed::Ignore;
        }
        let stale = state.generation;
        let void_waiting = state
            .stages
            .values()
            .filter(|stage| **stage == Stage::Waiting)
            .count();
        let paused = state.paused;
        invariant::take(&mut self.waiting, void_waiting, "book_waiting");
        let generation = self.new_generation();
        let mut fresh = Partition::new(generation);
        fresh.paused = paused;
        let _ = fresh.watermark.track(offset);
        fresh.stages.insert(offset, Stage::Waiting);
        remember(&mut fresh.recent, offset, fingerprint, recent_limit);
        self.waiting += 1;
        self.partitions.insert(partition, fresh);
        Consumed::Restart {
            slot: Slot {
                partition,
                generation,
                offset,
            },
            stale,
        }
    }

    /// How many fingerprints each partition keeps: twice its window, at least 1,024 (16 KiB).
    fn recent_limit(&self) -> usize {
        self.max_pending_per_partition.saturating_mul(2).max(1024)
    }

    /// The stage of a slot, when it is still in the books.
    pub(crate) fn stage(&self, slot: Slot) -> Option<Stage> {
        let state = self.partitions.get(&slot.partition)?;
        if state.generation != slot.generation {
            return None;
        }
        state.stages.get(&slot.offset).copied()
    }

    /// A waiting slot was handed to a worker.
    pub(crate) fn start(&mut self, slot: Slot) {
        if self.stage(slot) == Some(Stage::Waiting) {
            self.set_stage(slot, Stage::Running);
            invariant::take(&mut self.waiting, 1, "book_waiting");
        }
    }

    /// A worker's report. Reports of an assignment no longer current change nothing.
    pub(crate) fn settle(&mut self, slot: Slot, settle: Settle) {
        if self.stage(slot) != Some(Stage::Running) {
            return;
        }
        match settle {
            Settle::Acknowledged => self.acknowledge(slot),
            Settle::Submitted => self.set_stage(slot, Stage::Submitted),
            Settle::Abandoned => self.set_stage(slot, Stage::Dropped),
        }
        if let Some(state) = self.partitions.get_mut(&slot.partition)
            && (settle == Settle::Submitted
                || (settle == Settle::Acknowledged && !self.exactly_once))
        {
            state.undurable += 1;
        }
    }

    /// Exactly-once: the positions these settled offsets allow, if their transaction commits;
    /// the books do not change until it does.
    pub(crate) fn prepare(&self, settled: &[Slot]) -> Prepared {
        let mut trial: BTreeMap<i32, CommitWatermark> = BTreeMap::new();
        for slot in settled {
            if self.stage(*slot) != Some(Stage::Submitted) {
                continue;
            }
            let Some(state) = self.partitions.get(&slot.partition) else {
                continue;
            };
            trial
                .entry(slot.partition)
                .or_insert_with(|| state.watermark.clone())
                .complete(slot.offset);
        }
        let mut positions = Vec::new();
        let mut notes = Vec::new();
        let mut noted = Vec::new();
        for (partition, watermark) in trial {
            let Some(state) = self.partitions.get(&partition) else {
                continue;
            };
            let Some(position) = watermark.commit_position() else {
                continue;
            };
            let note = state.note(&watermark, position);
            let names = finished::decode(&note, position).unwrap_or_default();
            // Outputs above the position go into the transaction only when the note names them:
            // then a new owner skips their offsets instead of writing them again.
            let names_new = settled.iter().any(|slot| {
                slot.partition == partition
                    && names.contains(&slot.offset)
                    && self.stage(*slot) == Some(Stage::Submitted)
            });
            if state.committed >= Some(position) && !names_new {
                continue;
            }
            positions.push((partition, position));
            notes.push((partition, note));
            noted.push((partition, names));
        }
        Prepared {
            positions,
            notes,
            noted,
            owned: self.owned(),
        }
    }

    /// Exactly-once: the transaction carrying these offsets and their outputs committed.
    pub(crate) fn transaction_committed(&mut self, settled: &[Slot]) {
        for slot in settled {
            if self.stage(*slot) == Some(Stage::Submitted) {
                self.acknowledge(*slot);
                if let Some(state) = self.partitions.get_mut(&slot.partition) {
                    state.undurable = state.undurable.saturating_sub(1);
                }
            }
        }
        for state in self.partitions.values_mut() {
            let position = state.watermark.committable();
            if state.committed < position {
                state.committed = position;
            }
        }
    }

    /// At-least-once: positions that moved since the last call, for a periodic commit. They
    /// count as committed from now on; [`commit_failed`](Self::commit_failed) offers them again.
    pub(crate) fn take_commits(&mut self) -> Vec<(i32, i64)> {
        if self.exactly_once {
            return Vec::new();
        }
        let mut positions = Vec::new();
        for (partition, state) in &mut self.partitions {
            if let Some(position) = state.commit_due() {
                state.committed = Some(position);
                state.note_changed = false;
                // Everything acknowledged so far is below the position or named in its note.
                state.undurable_committing += std::mem::take(&mut state.undurable);
                positions.push((*partition, position));
            }
        }
        positions
    }

    /// At-least-once: whether [`take_commits`](Self::take_commits) would commit anything.
    pub(crate) fn has_commits(&self) -> bool {
        !self.exactly_once
            && self
                .partitions
                .values()
                .any(|state| state.commit_due().is_some())
    }

    /// At-least-once: a commit of these partitions failed; their positions are offered again.
    pub(crate) fn commit_failed(&mut self, partitions: &[i32]) {
        for partition in partitions {
            if let Some(state) = self.partitions.get_mut(partition) {
                state.committed = None;
                state.undurable += std::mem::take(&mut state.undurable_committing);
            }
        }
    }

    /// At-least-once: the commit of these partitions landed; the events it covers are durable.
    pub(crate) fn commit_landed(&mut self, partitions: &[i32]) {
        for partition in partitions {
            if let Some(state) = self.partitions.get_mut(partition) {
                state.undurable_committing = 0;
            }
        }
    }

    /// Events whose job ended but whose outcome is not durable yet (at-least-once: its offset is
    /// neither below a landed commit nor named in its note; exactly-once: its transaction has not
    /// committed). A crash would call Alipay+ again for them, so they keep their in-flight slot:
    /// what a crash repeats is bounded by `max_in_flight`.
    pub(crate) fn undurable(&self) -> usize {
        self.partitions
            .values()
            .map(|state| state.undurable + state.undurable_committing)
            .sum()
    }

    /// Stops taking records: every waiting slot is dropped. Returns them, for the caller to
    /// forget.
    pub(crate) fn begin_stop(&mut self) -> Vec<Slot> {
        self.stopping = true;
        self.drop_waiting_where(|_| true)
    }

    /// True when no partition has work that can still settle.
    pub(crate) fn all_settled(&self) -> bool {
        self.partitions.values().all(Partition::settled)
    }

    /// Re-decides the flow control of `partition` after its window changed: `Some(true)` to
    /// pause it (window full), `Some(false)` to resume it (drained to half), `None` for no change.
    pub(crate) fn update_pause(&mut self, partition: i32) -> Option<bool> {
        let max = self.max_pending_per_partition;
        let state = self.partitions.get_mut(&partition)?;
        let window = state.watermark.window_len();
        // The commit's note spans the window, gaps included: keep its bitset under the pressure
        // mark (a window of offsets far apart could outgrow the metadata limit otherwise).
        let note_bytes = usize::try_from(state.watermark.span() / 6).unwrap_or(usize::MAX);
        let pause = if !state.paused && (window >= max || note_bytes > NOTE_PRESSURE_BYTES) {
            true
        } else if state.paused && window <= max / 2 && note_bytes <= NOTE_PRESSURE_BYTES / 2 {
            false
        } else {
            return None;
        };
        state.paused = pause;
        Some(pause)
    }

    /// Owned partitions paused because their own window is full.
    pub(crate) fn paused(&self) -> BTreeSet<i32> {
        self.partitions
            .iter()
            .filter(|(_, state)| state.paused)
            .map(|(partition, _)| *partition)
            .collect()
    }

    /// The assignments (partition, generation) owned now, revoking ones included.
    pub(crate) fn owned(&self) -> Vec<(i32, u64)> {
        self.partitions
            .iter()
            .map(|(partition, state)| (*partition, state.generation))
            .collect()
    }

    /// The generation of an owned partition.
    pub(crate) fn generation(&self, partition: i32) -> Option<u64> {
        self.partitions
            .get(&partition)
            .map(|state| state.generation)
    }

    /// True once [`begin_stop`](Self::begin_stop) was called.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// Offsets held for `partition`: what `max_pending_per_partition` bounds.
    pub(crate) fn window_len(&self, partition: i32) -> usize {
        self.partitions
            .get(&partition)
            .map_or(0, |state| state.watermark.window_len())
    }

    /// Consumed offsets not started yet, over all partitions.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Owned partitions.
    pub(crate) fn len(&self) -> usize {
        self.partitions.len()
    }

    /// Drops the waiting slots of the partitions `pick` names, and returns them.
    fn drop_waiting_where(&mut self, mut pick: impl FnMut(i32) -> bool) -> Vec<Slot> {
        let mut dropped = Vec::new();
        for (partition, state) in &mut self.partitions {
            if !pick(*partition) {
                continue;
            }
            for (offset, stage) in &mut state.stages {
                if *stage == Stage::Waiting {
                    *stage = Stage::Dropped;
                    dropped.push(Slot {
                        partition: *partition,
                        generation: state.generation,
                        offset: *offset,
                    });
                }
            }
        }
        invariant::take(&mut self.waiting, dropped.len(), "book_waiting");
        dropped
    }

    fn new_generation(&mut self) -> u64 {
        self.next_generation += 1;
        self.next_generation
    }

    fn set_stage(&mut self, slot: Slot, stage: Stage) {
        if let Some(entry) = self
            .partitions
            .get_mut(&slot.partition)
            .and_then(|state| state.stages.get_mut(&slot.offset))
        {
            *entry = stage;
        }
    }

    fn acknowledge(&mut self, slot: Slot) {
        if let Some(state) = self.partitions.get_mut(&slot.partition) {
            state.stages.remove(&slot.offset);
            let completed = state.watermark.complete(slot.offset);
            state.note_changed = true;
            invariant::expect(completed, "acknowledged_offset_in_window");
        }
    }
}

/// Keeps `fingerprint` for `offset`, forgetting the oldest beyond `limit`.
fn remember(recent: &mut BTreeMap<i64, u64>, offset: i64, fingerprint: u64, limit: usize) {
    recent.insert(offset, fingerprint);
    while recent.len() > limit {
        recent.pop_first();
    }
}
