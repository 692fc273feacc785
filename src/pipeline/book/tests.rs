//! The book's rules, case by case: a new owner keeps the note it inherited, the same record
//! delivered again is ignored, a new record at a consumed offset starts the partition over, an
//! offset older than the remembered ones is processed again. The random interleavings are the
//! core's model test (`decisions/model.rs`).

use super::*;

fn tracked(book: &mut PartitionBook, offset: i64, print: u64) -> Slot {
    match book.consume(0, offset, print) {
        Consumed::Track(slot) => slot,
        other => panic!("offset {offset}: {other:?}"),
    }
}

fn acknowledge_all(book: &mut PartitionBook, slots: &[Slot]) {
    for slot in slots {
        book.start(*slot);
        book.settle(*slot, Settle::Acknowledged);
    }
}

/// Issue 19, 4a: a new owner's first commit goes out before it has consumed the offsets its
/// predecessor noted as finished; its note must still name them, or the owner after it
/// calls them again.
#[test]
fn a_new_owner_keeps_the_note_it_inherited_until_it_consumes_those_offsets() {
    let noted = |note: &str, position| finished::decode(note, position).expect("a readable note");
    // At-least-once: the periodic commit and the revoke's.
    let mut book = PartitionBook::new(false, 100);
    book.assign(&[0]);
    book.skip_finished(0, 10, BTreeSet::from([12, 15]));
    let first = tracked(&mut book, 10, 10);
    assert_eq!(noted(&book.note(0, 10), 10), BTreeSet::from([12, 15]));
    acknowledge_all(&mut book, &[first]);
    assert_eq!(book.take_commits(), vec![(0, 11)]);
    assert_eq!(noted(&book.note(0, 11), 11), BTreeSet::from([12, 15]));
    let second = tracked(&mut book, 11, 11);
    assert_eq!(book.consume(0, 12, 12), Consumed::Skip);
    acknowledge_all(&mut book, &[second]);
    assert_eq!(noted(&book.note(0, 13), 13), BTreeSet::from([15]));
    book.begin_revoke(&[0]);
    let end = book.finish_revoke();
    assert_eq!(end.commit, vec![(0, 13)]);
    assert_eq!(noted(&end.notes[0].1, 13), BTreeSet::from([15]));

    // Exactly-once: the first transaction's offsets.
    let mut book = PartitionBook::new(true, 100);
    book.assign(&[0]);
    book.skip_finished(0, 10, BTreeSet::from([12, 15]));
    let first = tracked(&mut book, 10, 10);
    book.start(first);
    book.settle(first, Settle::Submitted);
    let prepared = book.prepare(&[first]);
    assert_eq!(prepared.positions, vec![(0, 11)]);
    let note = &prepared
        .notes
        .iter()
        .find(|(p, _)| *p == 0)
        .expect("a note")
        .1;
    assert_eq!(noted(note, 11), BTreeSet::from([12, 15]));
}

#[test]
fn the_same_record_delivered_again_is_ignored() {
    let mut book = PartitionBook::new(false, 100);
    book.assign(&[0]);
    let slots: Vec<Slot> = (0..5)
        .map(|offset| tracked(&mut book, offset, offset as u64))
        .collect();
    acknowledge_all(&mut book, &slots[..2]);
    assert_eq!(book.consume(0, 1, 1), Consumed::Ignore);
    assert_eq!(book.consume(0, 3, 3), Consumed::Ignore);
    assert_eq!(book.window_len(0), 3);
    assert_eq!(book.waiting(), 3);
    assert_eq!(book.take_commits(), vec![(0, 2)]);
}

/// After a log truncation (or a recreated topic) librdkafka resets the fetch position and new
/// records arrive at offsets already consumed: each must be processed, and commits must follow
/// the new log, not the old one.
#[test]
fn a_new_record_at_a_consumed_offset_starts_the_partition_over() {
    let mut book = PartitionBook::new(false, 100);
    book.assign(&[0]);
    let old: Vec<Slot> = (0..10)
        .map(|offset| tracked(&mut book, offset, offset as u64))
        .collect();
    acknowledge_all(&mut book, &old[..4]);
    assert_eq!(book.take_commits(), vec![(0, 4)]);
    let Consumed::Restart { slot, stale } = book.consume(0, 6, 1_000) else {
        panic!("a new record at offset 6 was not taken");
    };
    assert_eq!(stale, old[0].generation);
    assert_ne!(slot.generation, stale);
    assert_eq!(book.generation(0), Some(slot.generation));
    // The old assignment's waiting work is void and its reports change nothing.
    assert_eq!(book.waiting(), 1);
    book.start(old[5]);
    book.settle(old[5], Settle::Acknowledged);
    assert_eq!(book.stage(old[5]), None);
    // The new log is processed and committed from the record that restarted it.
    let next = tracked(&mut book, 7, 1_001);
    acknowledge_all(&mut book, &[slot, next]);
    assert_eq!(book.take_commits(), vec![(0, 8)]);
    // Its records delivered again are still recognised.
    assert_eq!(book.consume(0, 7, 1_001), Consumed::Ignore);
}

#[test]
fn an_offset_older_than_the_remembered_ones_is_processed_again() {
    let mut book = PartitionBook::new(false, 1);
    book.assign(&[0]);
    let limit = book.recent_limit() as i64;
    let slots: Vec<Slot> = (0..limit + 10)
        .map(|offset| {
            let slot = tracked(&mut book, offset, 7);
            acknowledge_all(&mut book, &[slot]);
            slot
        })
        .collect();
    assert_eq!(book.consume(0, limit + 9, 7), Consumed::Ignore);
    assert!(matches!(
        book.consume(0, 0, 7),
        Consumed::Restart { stale, .. } if stale == slots[0].generation
    ));
}
