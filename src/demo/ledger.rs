//! The demo's books of input offsets: which records it produced and what each must end as, and
//! which outcomes and dead letters came back for them. One bit per input offset and kind, so a
//! check over a million events holds about half a megabyte.
//!
//! Pure: no I/O. The soak fills a [`SoakLedger`] from the producer's delivery reports and from a
//! consumer that reads the output topics while the run goes on; the order in which the two sides
//! arrive does not matter, the verdict compares the finished sets.

use std::collections::BTreeMap;

use super::{INPUT_PARTITIONS, INPUT_TOPIC};

/// A set of offsets of one partition, one bit each.
#[derive(Debug, Clone, Default)]
pub(super) struct OffsetSet {
    words: Vec<u64>,
    len: u64,
}

impl OffsetSet {
    /// Adds `offset`; false when it was already there.
    pub(super) fn insert(&mut self, offset: u64) -> bool {
        let (word, bit) = (Self::word(offset), offset % 64);
        if self.words.len() <= word {
            self.words.resize(word + 1, 0);
        }
        let fresh = self.words[word] & (1 << bit) == 0;
        if fresh {
            self.words[word] |= 1 << bit;
            self.len += 1;
        }
        fresh
    }

    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// How many offsets of this set `other` lacks.
    pub(super) fn count_not_in(&self, other: &OffsetSet) -> u64 {
        self.words
            .iter()
            .enumerate()
            .map(|(index, word)| {
                let theirs = other.words.get(index).copied().unwrap_or(0);
                u64::from((word & !theirs).count_ones())
            })
            .sum()
    }

    fn word(offset: u64) -> usize {
        usize::try_from(offset / 64).unwrap_or(usize::MAX)
    }
}

/// What a produced sample event must end as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Expect {
    /// An outcome record on the result topic (every decodable event).
    pub(super) outcome: bool,
    /// A record on the dead-letter topic (poison, invalid and refused events).
    pub(super) dead_letter: bool,
}

/// A sample event as Kafka acknowledged it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Delivered {
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) expect: Expect,
}

/// One input partition's books.
#[derive(Debug, Default)]
struct PartitionBooks {
    expected_outcomes: OffsetSet,
    outcomes: OffsetSet,
    expected_dead_letters: OffsetSet,
    dead_letters: OffsetSet,
}

/// Every input offset's expected and actual end, kept as the run goes.
#[derive(Debug)]
pub(super) struct SoakLedger {
    /// Input offsets at or beyond this cannot be ours: the input topic starts empty and the run
    /// writes this many records over all its partitions. Also what bounds the sets.
    limit: u64,
    partitions: BTreeMap<i32, PartitionBooks>,
    produced: u64,
    outcome_records: u64,
    dead_letter_records: u64,
    repeated_outcomes: u64,
    repeated_dead_letters: u64,
    /// Outputs naming another topic, a partition the input does not have, or an offset the run
    /// never wrote.
    foreign: u64,
    /// Outputs that do not say which input they are for (an outcome that does not decode, a dead
    /// letter without readable `dlq.source.*` headers).
    undecodable: u64,
}

/// The books compared once the run is over.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct LedgerVerdict {
    /// Input records whose delivery was reported.
    pub(crate) produced: u64,
    pub(crate) expected_outcomes: u64,
    /// Outcome records read from the result topic.
    pub(crate) outcome_records: u64,
    /// Expected outcomes that never came.
    pub(crate) missing_outcomes: u64,
    /// Outcomes for input records that should not have one.
    pub(crate) unexpected_outcomes: u64,
    /// Second and later outcomes of one input record.
    pub(crate) repeated_outcomes: u64,
    pub(crate) expected_dead_letters: u64,
    /// Dead letters read from the DLQ topic.
    pub(crate) dead_letter_records: u64,
    pub(crate) missing_dead_letters: u64,
    pub(crate) unexpected_dead_letters: u64,
    pub(crate) repeated_dead_letters: u64,
    pub(crate) foreign: u64,
    pub(crate) undecodable: u64,
}

impl LedgerVerdict {
    /// Every produced record ended exactly as its sample kind says, and nothing else came out.
    pub(crate) fn clean(&self) -> bool {
        self.missing_outcomes == 0
            && self.unexpected_outcomes == 0
            && self.repeated_outcomes == 0
            && self.missing_dead_letters == 0
            && self.unexpected_dead_letters == 0
            && self.repeated_dead_letters == 0
            && self.foreign == 0
            && self.undecodable == 0
    }
}

impl SoakLedger {
    /// Books for a run that writes `events` input records.
    pub(super) fn new(events: u64) -> SoakLedger {
        SoakLedger {
            limit: events,
            partitions: BTreeMap::new(),
            produced: 0,
            outcome_records: 0,
            dead_letter_records: 0,
            repeated_outcomes: 0,
            repeated_dead_letters: 0,
            foreign: 0,
            undecodable: 0,
        }
    }

    /// The books of an input record of ours, or `None` when `topic`/`partition`/`offset` cannot
    /// be one.
    fn books(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Option<(&mut PartitionBooks, u64)> {
        let offset = u64::try_from(offset)
            .ok()
            .filter(|offset| *offset < self.limit)?;
        if topic != INPUT_TOPIC || !(0..INPUT_PARTITIONS).contains(&partition) {
            return None;
        }
        Some((self.partitions.entry(partition).or_default(), offset))
    }

    /// Kafka acknowledged a produced record.
    pub(super) fn produced(&mut self, delivered: Delivered) {
        self.produced += 1;
        let Some((books, offset)) = self.books(INPUT_TOPIC, delivered.partition, delivered.offset)
        else {
            // The producer wrote somewhere no output can name: count it against the run.
            self.foreign += 1;
            return;
        };
        if delivered.expect.outcome {
            books.expected_outcomes.insert(offset);
        }
        if delivered.expect.dead_letter {
            books.expected_dead_letters.insert(offset);
        }
    }

    /// An outcome record for input `topic`/`partition`/`offset` was read.
    pub(super) fn outcome(&mut self, topic: &str, partition: i32, offset: i64) {
        self.outcome_records += 1;
        match self.books(topic, partition, offset) {
            Some((books, offset)) => {
                if !books.outcomes.insert(offset) {
                    self.repeated_outcomes += 1;
                }
            }
            None => self.foreign += 1,
        }
    }

    /// A dead letter for input `topic`/`partition`/`offset` was read.
    pub(super) fn dead_letter(&mut self, topic: &str, partition: i32, offset: i64) {
        self.dead_letter_records += 1;
        match self.books(topic, partition, offset) {
            Some((books, offset)) => {
                if !books.dead_letters.insert(offset) {
                    self.repeated_dead_letters += 1;
                }
            }
            None => self.foreign += 1,
        }
    }

    /// An output record was read that does not say which input it is for.
    pub(super) fn undecodable(&mut self) {
        self.undecodable += 1;
    }

    /// Output records read so far, outcomes and dead letters.
    pub(super) fn records_read(&self) -> u64 {
        self.outcome_records + self.dead_letter_records
    }

    pub(super) fn verdict(&self) -> LedgerVerdict {
        let mut verdict = LedgerVerdict {
            produced: self.produced,
            outcome_records: self.outcome_records,
            repeated_outcomes: self.repeated_outcomes,
            dead_letter_records: self.dead_letter_records,
            repeated_dead_letters: self.repeated_dead_letters,
            foreign: self.foreign,
            undecodable: self.undecodable,
            ..LedgerVerdict::default()
        };
        for books in self.partitions.values() {
            verdict.expected_outcomes += books.expected_outcomes.len();
            verdict.missing_outcomes += books.expected_outcomes.count_not_in(&books.outcomes);
            verdict.unexpected_outcomes += books.outcomes.count_not_in(&books.expected_outcomes);
            verdict.expected_dead_letters += books.expected_dead_letters.len();
            verdict.missing_dead_letters += books
                .expected_dead_letters
                .count_not_in(&books.dead_letters);
            verdict.unexpected_dead_letters += books
                .dead_letters
                .count_not_in(&books.expected_dead_letters);
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: Expect = Expect {
        outcome: true,
        dead_letter: true,
    };
    const OUTCOME: Expect = Expect {
        outcome: true,
        dead_letter: false,
    };
    const DEAD_LETTER: Expect = Expect {
        outcome: false,
        dead_letter: true,
    };

    fn delivered(partition: i32, offset: i64, expect: Expect) -> Delivered {
        Delivered {
            partition,
            offset,
            expect,
        }
    }

    #[test]
    fn an_offset_set_holds_each_offset_once_and_compares() {
        let mut set = OffsetSet::default();
        for offset in [0, 1, 63, 64, 1_000] {
            assert!(set.insert(offset));
        }
        assert!(!set.insert(64));
        assert_eq!(set.len(), 5);
        let mut other = OffsetSet::default();
        other.insert(1);
        other.insert(64);
        other.insert(5_000);
        assert_eq!(set.count_not_in(&other), 3);
        assert_eq!(other.count_not_in(&set), 1);
        assert_eq!(set.count_not_in(&OffsetSet::default()), 5);
        assert_eq!(OffsetSet::default().count_not_in(&set), 0);
    }

    #[test]
    fn a_run_where_every_record_ended_as_expected_is_clean() {
        let mut ledger = SoakLedger::new(10);
        // Outputs may be read before the producer hears its delivery report.
        ledger.outcome(INPUT_TOPIC, 1, 0);
        ledger.produced(delivered(1, 0, OUTCOME));
        ledger.produced(delivered(1, 1, BOTH));
        ledger.produced(delivered(2, 0, DEAD_LETTER));
        ledger.outcome(INPUT_TOPIC, 1, 1);
        ledger.dead_letter(INPUT_TOPIC, 1, 1);
        ledger.dead_letter(INPUT_TOPIC, 2, 0);
        let verdict = ledger.verdict();
        assert!(verdict.clean(), "{verdict:?}");
        assert_eq!(
            verdict,
            LedgerVerdict {
                produced: 3,
                expected_outcomes: 2,
                outcome_records: 2,
                expected_dead_letters: 2,
                dead_letter_records: 2,
                ..LedgerVerdict::default()
            }
        );
        assert_eq!(ledger.records_read(), 4);
    }

    #[test]
    fn a_lost_or_stray_or_repeated_output_spoils_the_run() {
        let mut ledger = SoakLedger::new(100);
        ledger.produced(delivered(0, 7, OUTCOME));
        ledger.produced(delivered(0, 8, BOTH));
        ledger.produced(delivered(3, 9, DEAD_LETTER));
        // Offset 7's outcome is lost; 8 has its outcome twice and no dead letter; 9 has an outcome
        // it must not have besides its dead letter.
        ledger.outcome(INPUT_TOPIC, 0, 8);
        ledger.outcome(INPUT_TOPIC, 0, 8);
        ledger.outcome(INPUT_TOPIC, 3, 9);
        ledger.dead_letter(INPUT_TOPIC, 3, 9);
        let verdict = ledger.verdict();
        assert!(!verdict.clean());
        assert_eq!(
            (
                verdict.missing_outcomes,
                verdict.repeated_outcomes,
                verdict.unexpected_outcomes,
                verdict.missing_dead_letters,
                verdict.unexpected_dead_letters,
            ),
            (1, 1, 1, 1, 0)
        );
        assert_eq!((verdict.produced, verdict.outcome_records), (3, 3));
    }

    #[test]
    fn outputs_that_cannot_be_ours_are_counted_not_stored() {
        let mut ledger = SoakLedger::new(1_000);
        ledger.outcome("other.topic", 0, 1);
        ledger.outcome(INPUT_TOPIC, INPUT_PARTITIONS, 1);
        ledger.outcome(INPUT_TOPIC, -1, 1);
        ledger.dead_letter(INPUT_TOPIC, 0, -1);
        // Far beyond what the run wrote: no bit is set, so no memory is taken for it.
        ledger.dead_letter(INPUT_TOPIC, 0, i64::MAX);
        ledger.outcome(INPUT_TOPIC, 0, 1_000);
        ledger.undecodable();
        let verdict = ledger.verdict();
        assert_eq!((verdict.foreign, verdict.undecodable), (6, 1));
        assert!(!verdict.clean());
        assert!(ledger.partitions.is_empty());
        let mut ledger = SoakLedger::new(1_000);
        ledger.produced(delivered(0, 5_000, OUTCOME));
        assert_eq!(ledger.verdict().foreign, 1);
    }
}
