//! The plain demo's read-back: the result and dead-letter topics read from Kafka after the run
//! and checked against what was produced (one outcome per decodable input offset, none twice, one
//! dead letter for each event that should have one), and the group's committed offsets.
//!
//! Reads only; streams the topics keeping one bit per input offset ([`OutcomeLedger`]).

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::message::Message;

use super::ledger::OffsetSet;
use super::produce::Produced;
use super::{DLQ_TOPIC, INPUT_TOPIC, RESULT_TOPIC};
use crate::codec::decode_outcome;
use crate::inspect;

#[derive(Debug)]
pub(super) struct Verified {
    pub(super) result_records: u64,
    pub(super) dlq_records: u64,
    pub(super) outputs_match: bool,
    pub(super) all_committed: bool,
}

/// Which input offsets have an outcome: one bit per offset and partition, so the read-back
/// holds a few kilobytes however many events ran.
#[derive(Debug, Default)]
struct OutcomeLedger {
    seen: HashMap<i32, OffsetSet>,
    distinct: u64,
    repeated: u64,
    foreign: u64,
}

impl OutcomeLedger {
    /// Notes an outcome of input record `partition`/`offset`; offsets beyond `max_offset`, or of
    /// another topic, cannot be ours.
    fn note(&mut self, topic: &str, partition: i32, offset: i64, max_offset: u64) {
        let offset = match u64::try_from(offset) {
            Ok(offset) if topic == INPUT_TOPIC && offset <= max_offset => offset,
            _ => {
                self.foreign += 1;
                return;
            }
        };
        if self.seen.entry(partition).or_default().insert(offset) {
            self.distinct += 1;
        } else {
            self.repeated += 1;
        }
    }
}

/// Reads the outputs back from Kafka and checks them against what was produced: one outcome for
/// every decodable input record, none twice, one dead letter for each event that should have one.
pub(super) fn verify_topics(
    bootstrap: &str,
    group: &str,
    produced: &Produced,
) -> anyhow::Result<Verified> {
    let timeout = Duration::from_secs(60);
    let mut ledger = OutcomeLedger::default();
    let mut undecodable_outcomes = 0u64;
    let max_offset = produced.decodable + produced.dead_letters;
    let outcomes = inspect::scan_topic(bootstrap, RESULT_TOPIC, timeout, |message| match message
        .payload()
        .map(decode_outcome)
    {
        Some(Ok(outcome)) => ledger.note(
            &outcome.source_topic,
            outcome.source_partition,
            outcome.source_offset,
            max_offset,
        ),
        _ => undecodable_outcomes += 1,
    })?;
    let dead_letters = inspect::scan_topic(bootstrap, DLQ_TOPIC, timeout, |_| {})?;
    if outcomes.dropped + dead_letters.dropped > 0 {
        tracing::error!(
            outcomes_dropped = outcomes.dropped,
            dead_letters_dropped = dead_letters.dropped,
            "the mock cluster dropped output records before they could be read back (it keeps \
             5 MB or 100,000 records per partition); run fewer events"
        );
    }
    let progress = inspect::group_progress(bootstrap, group, INPUT_TOPIC, timeout)?;
    Ok(Verified {
        result_records: outcomes.records,
        dlq_records: dead_letters.records,
        outputs_match: outcomes.dropped == 0
            && dead_letters.dropped == 0
            && undecodable_outcomes == 0
            && ledger.foreign == 0
            && ledger.repeated == 0
            && ledger.distinct == produced.decodable
            && outcomes.records == produced.decodable
            && dead_letters.records == produced.dead_letters,
        all_committed: inspect::fully_committed(&progress),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_counts_each_input_offset_once() {
        let mut ledger = OutcomeLedger::default();
        for offset in [0, 1, 63, 64, 1_000] {
            ledger.note(INPUT_TOPIC, 2, offset, 1_000);
        }
        ledger.note(INPUT_TOPIC, 3, 64, 1_000);
        assert_eq!(
            (ledger.distinct, ledger.repeated, ledger.foreign),
            (6, 0, 0)
        );
        ledger.note(INPUT_TOPIC, 2, 64, 1_000);
        ledger.note(INPUT_TOPIC, 2, 1_001, 1_000);
        ledger.note(INPUT_TOPIC, 2, -1, 1_000);
        ledger.note("other.topic", 2, 5, 1_000);
        assert_eq!(
            (ledger.distinct, ledger.repeated, ledger.foreign),
            (6, 1, 3)
        );
    }
}
