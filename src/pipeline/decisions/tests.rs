//! The core's flow control, case by case: over the waiting limit only the partitions holding
//! the events pause, events blocked behind a parked job do not pause every partition until their
//! bound. The random interleavings are [`super::model`]'s.

#![allow(clippy::unwrap_used)]

use super::*;

/// While too many events wait, the partition holding them is paused; one assigned meanwhile
/// holds nothing and fetches (up to its share of the limit): a partition whose events are
/// slow must not starve the others.
#[test]
fn over_the_waiting_limit_the_partitions_holding_the_events_pause() {
    let mut core: DispatchCore<()> = DispatchCore::new(false, 1, 100_000);
    core.assign(&[0]);
    let key = OrderKey::Merchant("m".into());
    for offset in 0..=waiting_limit(1) as i64 {
        let Consumed::Track(slot) = core.consume(0, offset, offset as u64) else {
            panic!("offset {offset} not tracked");
        };
        let ticket = Ticket {
            slot,
            key: Some(key.clone()),
            payload: (),
        };
        assert!(core.decoded(ticket));
    }
    assert!(core.next_start().is_some());
    assert!(core.next_start().is_none(), "one merchant, one in flight");
    assert!(
        core.pause_plan().is_paused(0),
        "{} events wait",
        core.waiting()
    );
    assert!(!core.pause_plan().all);
    let (_, fresh) = core.assign(&[1]);
    assert_eq!(fresh, vec![1]);
    assert!(core.next_start().is_none());
    let plan = core.pause_plan();
    assert!(plan.is_paused(0) && !plan.is_paused(1), "{plan:?}");
    // Partition 1 fills its share (half the limit, of two partitions) and pauses too.
    let share = waiting_limit(1) / 2;
    for offset in 0..share as i64 {
        assert!(!core.pause_plan().is_paused(1), "{offset} of {share}");
        let Consumed::Track(slot) = core.consume(1, offset, offset as u64) else {
            panic!("offset {offset} not tracked");
        };
        assert!(core.decoded(Ticket {
            slot,
            key: Some(key.clone()),
            payload: (),
        }));
    }
    assert!(core.next_start().is_none());
    assert!(core.pause_plan().is_paused(1));
}

/// Issue 19, item 4g: events queued behind a job parked on its MPP's open circuit cannot
/// start before that MPP is back; they do not pause every partition, so the other MPPs'
/// events behind them in the same partitions still come in. Once the job calls again, they
/// count again.
#[test]
fn events_blocked_behind_a_parked_job_do_not_pause_every_partition() {
    let mut core: DispatchCore<()> = DispatchCore::new(false, 2, 100_000);
    core.assign(&[0]);
    let failing = OrderKey::Merchant("of the failing MPP".into());
    let mut offset = 0;
    let mut push = |core: &mut DispatchCore<()>, key: &OrderKey| {
        let Consumed::Track(slot) = core.consume(0, offset, offset as u64) else {
            panic!("offset {offset} not tracked");
        };
        offset += 1;
        assert!(core.decoded(Ticket {
            slot,
            key: Some(key.clone()),
            payload: (),
        }));
        slot
    };
    let head = push(&mut core, &failing);
    let started = core
        .next_start()
        .expect("the failing MPP's first event starts");
    assert_eq!(started.slot, head);
    core.parked(head, true);
    for _ in 0..2 * waiting_limit(2) {
        push(&mut core, &failing);
    }
    assert!(
        core.next_start().is_none(),
        "its merchant's later events wait"
    );
    assert_eq!(core.waiting_counted(), 0);
    assert!(
        !core.pause_plan().is_paused(0),
        "{} blocked events paused their partition",
        core.waiting()
    );
    // Another MPP's merchant, behind them in the same partition, starts.
    let other = push(&mut core, &OrderKey::Merchant("of another MPP".into()));
    assert_eq!(core.next_start().map(|ticket| ticket.slot), Some(other));

    // The failing MPP is back: its job calls again, and its queue counts as waiting.
    core.parked(head, false);
    assert_eq!(core.waiting_counted(), 2 * waiting_limit(2));
    assert!(core.next_start().is_none());
    assert!(
        core.pause_plan().is_paused(0),
        "the queue is over the limit again"
    );
    // The parked job ends; its key's next event becomes ready, and a late report of the
    // ended job changes nothing.
    core.parked(head, true);
    core.finished(head, Some(&failing), Finish::Terminal);
    core.parked(head, true);
    assert_eq!(core.waiting_counted(), core.waiting());
}

/// Blocked events stop counting only up to [`BLOCKED_FACTOR`] times the waiting limit:
/// beyond that they pause every partition again, so memory stays bounded.
#[test]
fn blocked_events_beyond_their_bound_pause_every_partition() {
    const LIMIT: usize = 4;
    let mut core: DispatchCore<()> = DispatchCore::new(false, 1, 100_000).with_waiting_limit(LIMIT);
    core.assign(&[0]);
    let key = OrderKey::Merchant("of the failing MPP".into());
    let bound = LIMIT * BLOCKED_FACTOR;
    for offset in 0..=(bound + LIMIT) as i64 {
        let Consumed::Track(slot) = core.consume(0, offset, offset as u64) else {
            panic!("offset {offset} not tracked");
        };
        assert!(core.decoded(Ticket {
            slot,
            key: Some(key.clone()),
            payload: (),
        }));
        if offset == 0 {
            let head = core.next_start().expect("the first event starts").slot;
            core.parked(head, true);
        }
        if (offset as usize) < bound {
            assert!(core.next_start().is_none());
            assert!(
                !core.pause_plan().is_paused(0),
                "{offset}: within the bound"
            );
        }
    }
    assert!(core.next_start().is_none());
    assert_eq!(core.waiting_counted(), LIMIT);
    assert!(core.pause_plan().is_paused(0), "beyond the bound");
}
