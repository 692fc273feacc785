//! The commit watermark of one partition: which input offsets are still in flight, and how far
//! the consumer may safely commit.
//!
//! It owns the law of SPEC section 5 — a committed position never passes an offset whose work is
//! unfinished — and nothing else. It never talks to Kafka, never reads a clock and never decides
//! *when* to commit; the dispatcher marks offsets, the committer asks for the position.
//!
//! Offsets are tracked in the increasing order the consumer delivers them. They need not be
//! contiguous: compaction removes records and transaction markers take offsets without a record,
//! so the position after a finished prefix is "last finished offset + 1", never "first + count".

use std::collections::VecDeque;

use crate::pipeline::invariant;
use thiserror::Error;

/// Why an offset could not be tracked.
///
/// Both cases mean the caller's view of the partition is no longer the consumer's (a seek, a
/// re-assignment, a bug); the book then starts the partition over with a new watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub(crate) enum TrackError {
    #[error("offset {offset} is negative")]
    Negative { offset: i64 },
    #[error("offset {offset} is not after the last tracked offset {last_tracked}")]
    NotIncreasing { offset: i64, last_tracked: i64 },
}

/// In-flight offsets of one partition and the commit position their finished prefix allows.
///
/// `track` and the release of the finished prefix are amortised O(1); `complete` is O(log n) in
/// the number of offsets held (a binary search in the window).
#[derive(Debug, Clone, Default)]
pub(crate) struct CommitWatermark {
    /// Tracked offsets not yet released, in increasing order, with whether their work is done.
    /// The front is always unfinished: finished offsets at the front are released at once, so
    /// memory is bounded by the span from the oldest unfinished offset to the newest tracked.
    window: VecDeque<(i64, bool)>,
    /// Offsets in `window` whose work is not done yet.
    unfinished: usize,
    /// The newest offset ever tracked, to refuse going backwards even when the window is empty.
    last_tracked: Option<i64>,
    /// Commit position of the released prefix (last released offset + 1).
    committable: Option<i64>,
}

impl CommitWatermark {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Starts tracking `offset`, whose work is now in flight.
    ///
    /// Offsets must strictly increase; a refused offset leaves the watermark unchanged.
    pub(crate) fn track(&mut self, offset: i64) -> Result<(), TrackError> {
        if offset < 0 {
            return Err(TrackError::Negative { offset });
        }
        if let Some(last_tracked) = self.last_tracked
            && offset <= last_tracked
        {
            return Err(TrackError::NotIncreasing {
                offset,
                last_tracked,
            });
        }
        self.last_tracked = Some(offset);
        self.window.push_back((offset, false));
        self.unfinished += 1;
        Ok(())
    }

    /// Marks the work of `offset` as done (every output of it acknowledged).
    ///
    /// Returns `false`, changing nothing, when the offset is not in flight here: already completed
    /// (a duplicate) or never tracked. (A completion from an assignment this consumer has lost
    /// never reaches the new assignment's watermark: the book tells them apart by generation.)
    pub(crate) fn complete(&mut self, offset: i64) -> bool {
        let Ok(index) = self
            .window
            .binary_search_by_key(&offset, |&(tracked, _)| tracked)
        else {
            return false;
        };
        let Some(entry) = self.window.get_mut(index) else {
            return false;
        };
        if entry.1 {
            return false;
        }
        entry.1 = true;
        invariant::take(&mut self.unfinished, 1, "watermark_unfinished");
        self.release_finished_prefix();
        true
    }

    /// The position to commit: one past the highest offset that, together with every offset
    /// tracked before it, is done. `None` until the first offset is released.
    pub(crate) fn committable(&self) -> Option<i64> {
        self.committable
    }

    /// Tracked offsets whose work is not done yet.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.unfinished
    }

    /// Where a commit may stand now: the committable position, or, before anything is, the first
    /// offset tracked (nothing below it was delivered to this watermark). A commit there
    /// passes no unfinished work and can carry a note of what finished above it.
    pub(crate) fn commit_position(&self) -> Option<i64> {
        self.committable
            .or_else(|| self.window.front().map(|(offset, _)| *offset))
    }

    /// Finished offsets still in the window: all above the committable position.
    pub(crate) fn finished_beyond(&self) -> Vec<i64> {
        self.window
            .iter()
            .filter(|(_, finished)| *finished)
            .map(|(offset, _)| *offset)
            .collect()
    }

    /// Offsets from the first unfinished one to the last tracked one, gaps included: what a
    /// bitset of the finished offsets above the commit position spans.
    pub(crate) fn span(&self) -> i64 {
        match (self.window.front(), self.window.back()) {
            (Some((first, _)), Some((last, _))) => last - first + 1,
            _ => 0,
        }
    }

    /// Tracked offsets held in memory: the unfinished ones and the finished ones waiting behind
    /// an older unfinished offset. This is what `max_pending_per_partition` bounds.
    pub(crate) fn window_len(&self) -> usize {
        self.window.len()
    }

    /// True when no tracked offset is unfinished (everything tracked is committable).
    #[cfg(test)]
    pub(crate) fn is_drained(&self) -> bool {
        self.unfinished == 0
    }

    fn release_finished_prefix(&mut self) {
        while let Some(&(offset, true)) = self.window.front() {
            self.window.pop_front();
            // Kafka offsets end far below i64::MAX; saturating keeps a corrupt one from panicking.
            self.committable = Some(offset.saturating_add(1));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn tracking(offsets: &[i64]) -> CommitWatermark {
        let mut watermark = CommitWatermark::new();
        for &offset in offsets {
            watermark.track(offset).unwrap();
        }
        watermark
    }

    #[test]
    fn nothing_is_committable_before_the_first_completion() {
        let watermark = tracking(&[0, 1, 2]);
        assert_eq!(watermark.committable(), None);
        assert_eq!(watermark.commit_position(), Some(0));
        assert_eq!(watermark.pending(), 3);
    }

    #[test]
    fn position_stops_at_the_first_unfinished_offset() {
        let mut watermark = tracking(&[10, 11, 12, 13]);
        assert!(watermark.complete(11));
        assert!(watermark.complete(13));
        assert_eq!(watermark.committable(), None);
        assert!(watermark.complete(10));
        assert_eq!(watermark.committable(), Some(12));
        assert!(watermark.complete(12));
        assert_eq!(watermark.committable(), Some(14));
        assert!(watermark.is_drained());
        assert_eq!(watermark.window_len(), 0);
    }

    #[test]
    fn gaps_from_compaction_and_transaction_markers_are_skipped() {
        let mut watermark = tracking(&[3, 7, 8, 20]);
        assert!(watermark.complete(7));
        assert_eq!(watermark.committable(), None);
        assert!(watermark.complete(3));
        assert_eq!(watermark.committable(), Some(8));
        assert!(watermark.complete(20));
        assert_eq!(watermark.committable(), Some(8));
        assert!(watermark.complete(8));
        assert_eq!(watermark.committable(), Some(21));
        // An offset in a gap was never tracked, so it cannot be completed.
        assert!(!watermark.complete(5));
    }

    #[test]
    fn duplicate_and_unknown_completions_change_nothing() {
        let mut watermark = tracking(&[0, 1]);
        assert!(watermark.complete(1));
        assert!(!watermark.complete(1));
        assert!(!watermark.complete(42));
        assert!(!watermark.complete(-1));
        assert_eq!(watermark.pending(), 1);
        assert!(watermark.complete(0));
        // Released offsets are gone from the window: completing again is a duplicate.
        assert!(!watermark.complete(0));
        assert_eq!(watermark.committable(), Some(2));
    }

    #[test]
    fn track_refuses_offsets_that_do_not_increase() {
        let mut watermark = tracking(&[5]);
        assert!(watermark.complete(5));
        assert_eq!(
            watermark.track(5),
            Err(TrackError::NotIncreasing {
                offset: 5,
                last_tracked: 5
            })
        );
        assert_eq!(
            watermark.track(4),
            Err(TrackError::NotIncreasing {
                offset: 4,
                last_tracked: 5
            })
        );
        assert_eq!(
            watermark.track(-3),
            Err(TrackError::Negative { offset: -3 })
        );
        assert_eq!(watermark.window_len(), 0);
        assert!(watermark.track(6).is_ok());
    }

    #[test]
    fn the_commit_position_carries_what_finished_beyond_it() {
        let mut watermark = tracking(&[0, 1, 2, 3]);
        assert!(watermark.complete(2));
        assert_eq!(watermark.commit_position(), Some(0));
        assert_eq!(watermark.finished_beyond(), vec![2]);
        assert!(watermark.complete(0));
        assert_eq!(watermark.commit_position(), Some(1));
        assert_eq!(watermark.finished_beyond(), vec![2]);
        assert!(watermark.complete(1));
        assert_eq!(watermark.commit_position(), Some(3));
        assert!(watermark.finished_beyond().is_empty());
        assert!(watermark.complete(3));
        assert_eq!(watermark.commit_position(), Some(4));
        assert!(watermark.is_drained());
    }

    #[test]
    fn span_and_window_count_from_the_first_unfinished_offset_gaps_included() {
        let mut watermark = tracking(&[10, 12, 15]);
        assert_eq!((watermark.span(), watermark.window_len()), (6, 3));
        watermark.complete(10);
        assert_eq!((watermark.span(), watermark.window_len()), (4, 2));
        // A finished offset behind an unfinished one is still held.
        watermark.complete(15);
        assert_eq!((watermark.span(), watermark.window_len()), (4, 2));
        watermark.complete(12);
        assert_eq!((watermark.span(), watermark.window_len()), (0, 0));
        assert_eq!(watermark.committable(), Some(16));
    }

    /// Increasing offsets with gaps of 1 to 4, from a random start.
    fn increasing_offsets() -> impl Strategy<Value = Vec<i64>> {
        (0i64..1_000, prop::collection::vec(1i64..5, 1..60)).prop_map(|(start, gaps)| {
            gaps.iter()
                .scan(start, |next, gap| {
                    let offset = *next;
                    *next += gap;
                    Some(offset)
                })
                .collect()
        })
    }

    /// What the position must be, computed the slow obvious way.
    fn expected_position(tracked: &[i64], done: &[bool]) -> Option<i64> {
        let finished_prefix = done.iter().take_while(|&&is_done| is_done).count();
        finished_prefix.checked_sub(1).map(|last| tracked[last] + 1)
    }

    proptest! {
        #[test]
        fn position_follows_the_finished_prefix_in_any_completion_order(
            (offsets, order) in increasing_offsets().prop_flat_map(|offsets| {
                let indices: Vec<usize> = (0..offsets.len()).collect();
                (Just(offsets), Just(indices).prop_shuffle())
            })
        ) {
            let mut watermark = tracking(&offsets);
            let mut done = vec![false; offsets.len()];
            let mut previous = None;
            for index in order {
                prop_assert!(watermark.complete(offsets[index]));
                done[index] = true;
                let position = watermark.committable();
                prop_assert_eq!(position, expected_position(&offsets, &done));
                if let Some(first_unfinished) = done.iter().position(|&is_done| !is_done) {
                    prop_assert!(position.is_none_or(|p| p <= offsets[first_unfinished]));
                }
                prop_assert!(position >= previous, "position went back");
                previous = position;
            }
            prop_assert_eq!(watermark.committable(), offsets.last().map(|last| last + 1));
            prop_assert_eq!(watermark.pending(), 0);
            prop_assert_eq!(watermark.window_len(), 0);
        }

        #[test]
        fn interleaved_tracking_and_completion_never_passes_unfinished_work(
            offsets in increasing_offsets(),
            steps in prop::collection::vec((any::<bool>(), any::<prop::sample::Index>()), 0..200),
        ) {
            let mut watermark = CommitWatermark::new();
            let mut done: Vec<bool> = Vec::new();
            let mut previous_position = None;
            for (prefer_track, pick) in steps {
                let in_flight: Vec<usize> =
                    (0..done.len()).filter(|&index| !done[index]).collect();
                if (prefer_track || in_flight.is_empty()) && done.len() < offsets.len() {
                    watermark.track(offsets[done.len()]).unwrap();
                    done.push(false);
                } else if !in_flight.is_empty() {
                    let index = *pick.get(&in_flight);
                    prop_assert!(watermark.complete(offsets[index]));
                    prop_assert!(!watermark.complete(offsets[index]), "duplicate accepted");
                    done[index] = true;
                }
                let position = watermark.committable();
                prop_assert_eq!(position, expected_position(&offsets[..done.len()], &done));
                prop_assert!(position >= previous_position, "position went back");
                previous_position = position;
                prop_assert_eq!(watermark.pending(), done.iter().filter(|&&d| !d).count());
                // What a commit's note carries: every finished offset behind the first unfinished.
                let first_unfinished = done.iter().position(|&d| !d).unwrap_or(done.len());
                let beyond: Vec<i64> = (first_unfinished..done.len())
                    .filter(|&index| done[index])
                    .map(|index| offsets[index])
                    .collect();
                prop_assert_eq!(watermark.finished_beyond(), beyond);
            }
        }
    }
}
