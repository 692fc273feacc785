//! What workers hand the transaction writer ([`Submission`], through a [`Submitter`]) and how the
//! outputs it holds split for one transaction ([`split`]): only outputs whose offsets the
//! transaction also commits go in it; the rest wait, and those of partitions no longer owned are
//! dropped.
//!
//! Pure: no Kafka calls, no waiting.

#[cfg(test)]
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::event::RegistrationNotifyOutcome;
use crate::pipeline::book::{Prepared, Slot};
use crate::pipeline::record::{DeadLetter, InputRecord};

/// One event's outputs, handed over by its worker.
#[derive(Debug)]
pub(crate) struct Submission {
    pub(crate) record: InputRecord,
    pub(crate) generation: u64,
    pub(crate) dead_letter: Option<DeadLetter>,
    pub(crate) outcome: Option<RegistrationNotifyOutcome>,
    /// The event's trace context headers, which its outcome carries.
    pub(crate) trace: Vec<(String, Option<Vec<u8>>)>,
    /// Those its dead letter carries (see `EventTrace::dead_letter_headers`).
    pub(crate) dead_letter_trace: Vec<(String, Option<Vec<u8>>)>,
}

impl Submission {
    pub(super) fn slot(&self) -> Slot {
        Slot {
            partition: self.record.partition,
            generation: self.generation,
            offset: self.record.offset,
        }
    }
}

/// How the held outputs split for one transaction.
#[derive(Debug, Default)]
pub(crate) struct Split {
    pub(crate) covered: Vec<Submission>,
    pub(crate) waiting: Vec<Submission>,
    pub(super) orphaned: usize,
}

pub(crate) fn split(held: Vec<Submission>, prepared: &Prepared) -> Split {
    let mut parts = Split::default();
    for submission in held {
        let owned = prepared
            .owned
            .contains(&(submission.record.partition, submission.generation));
        if !owned {
            parts.orphaned += 1;
            continue;
        }
        let (partition, offset) = (submission.record.partition, submission.record.offset);
        let below = prepared
            .positions
            .iter()
            .any(|(p, position)| *p == partition && offset < *position);
        let noted = prepared
            .noted
            .iter()
            .any(|(p, offsets)| *p == partition && offsets.contains(&offset));
        let covered = below || noted;
        if covered {
            parts.covered.push(submission);
        } else {
            parts.waiting.push(submission);
        }
    }
    parts
}

/// A handle workers submit through.
pub(crate) type Submitter = mpsc::Sender<Submission>;

#[cfg(test)]
pub(super) fn submission(partition: i32, generation: u64, offset: i64) -> Submission {
    Submission {
        record: InputRecord {
            topic: Arc::from("in"),
            partition,
            offset,
            timestamp_ms: None,
            key: None,
            value: None,
            headers: Vec::new(),
        },
        generation,
        dead_letter: None,
        outcome: None,
        trace: Vec::new(),
        dead_letter_trace: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transaction_carries_only_outputs_its_offsets_cover() {
        let held = vec![
            submission(0, 1, 10),
            submission(0, 1, 12), // 11 still in flight: must wait
            submission(1, 1, 5),
            submission(2, 7, 3), // an assignment no longer owned
        ];
        let prepared = Prepared {
            positions: vec![(0, 11), (1, 6)],
            owned: vec![(0, 1), (1, 1), (2, 8)],
            ..Prepared::default()
        };
        let parts = split(held, &prepared);
        let covered: Vec<(i32, i64)> = parts
            .covered
            .iter()
            .map(|s| (s.record.partition, s.record.offset))
            .collect();
        assert_eq!(covered, vec![(0, 10), (1, 5)]);
        assert_eq!(parts.waiting.len(), 1);
        assert_eq!(parts.waiting[0].record.offset, 12);
        assert_eq!(parts.orphaned, 1);
    }
}
