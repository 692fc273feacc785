//! The model test: random interleavings of records, decodes, starts, completions of every
//! kind, transactions, commits, assigns, revokes (lost or not, answered or timed out),
//! records delivered again, truncated logs and shutdown, checked at every step against a reference model that keeps
//! its own plain record of every consumed offset.
//!
//! About 900 lines, one concern: the operations, their strategy, the reference model with its
//! checks after every step, and the property that runs them are one test, and no part of it is
//! used elsewhere.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, VecDeque};

use proptest::prelude::*;

use super::*;
use crate::pipeline::finished;

/// The note of `partition` among `notes` (empty when none).
fn note_of(notes: &[(i32, String)], partition: i32) -> String {
    notes
        .iter()
        .find(|(p, _)| *p == partition)
        .map(|(_, note)| note.clone())
        .unwrap_or_default()
}

const PARTITIONS: i32 = 3;
const KEYS: u8 = 4;
const MAX_IN_FLIGHT: usize = 3;
const MAX_PENDING: usize = 6;

#[derive(Debug, Clone)]
enum Op {
    /// A record of a partition, with an offset gap (compaction, transaction markers) and a
    /// merchant (`None`: undecodable).
    Consume {
        partition: i32,
        gap: i64,
        key: Option<u8>,
    },
    /// A record consumed before in this assignment, delivered again.
    Redeliver {
        partition: i32,
        back: usize,
    },
    /// A new record at an offset not above the last one: the log was truncated or the topic
    /// recreated.
    Truncate {
        partition: i32,
        back: i64,
    },
    Decode,
    Start,
    Complete {
        pick: prop::sample::Index,
        kind: u8,
    },
    Transaction {
        pick: prop::sample::Index,
        commit: bool,
    },
    CommitTick {
        fail: bool,
    },
    Assign {
        partitions: Vec<i32>,
    },
    Revoke {
        partitions: Vec<i32>,
        lost: bool,
    },
    RevokeDeadline,
    Shutdown,
    /// The consumer thread made the revoke's commit (or gave up on it).
    RevokeCommitted,
    /// A running job parks on its MPP's open circuit, or calls again.
    Park {
        pick: prop::sample::Index,
        parked: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let partition = 0..PARTITIONS;
    let partitions = prop::collection::vec(0..PARTITIONS, 1..=PARTITIONS as usize);
    prop_oneof![
        12 => (partition.clone(), 1i64..3, prop::option::weighted(0.9, 0..KEYS))
            .prop_map(|(partition, gap, key)| Op::Consume { partition, gap, key }),
        1 => (partition.clone(), 1usize..4)
            .prop_map(|(partition, back)| Op::Redeliver { partition, back }),
        1 => (partition, 1i64..4).prop_map(|(partition, back)| Op::Truncate { partition, back }),
        8 => Just(Op::Decode),
        6 => Just(Op::Start),
        10 => (any::<prop::sample::Index>(), 0u8..20)
            .prop_map(|(pick, kind)| Op::Complete { pick, kind }),
        3 => (any::<prop::sample::Index>(), prop::bool::weighted(0.8))
            .prop_map(|(pick, commit)| Op::Transaction { pick, commit }),
        3 => prop::bool::weighted(0.2).prop_map(|fail| Op::CommitTick { fail }),
        2 => partitions.clone().prop_map(|partitions| Op::Assign { partitions }),
        2 => (partitions, prop::bool::weighted(0.2))
            .prop_map(|(partitions, lost)| Op::Revoke { partitions, lost }),
        1 => Just(Op::RevokeDeadline),
        1 => Just(Op::Shutdown),
        3 => (any::<prop::sample::Index>(), prop::bool::weighted(0.6))
            .prop_map(|(pick, parked)| Op::Park { pick, parked }),
        2 => Just(Op::RevokeCommitted),
    ]
}

/// What the reference model knows of one consumed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Waiting,
    Running,
    Submitted,
    /// Outputs acknowledged (at-least-once) or committed in a transaction (exactly-once).
    Acknowledged,
    /// Will not finish in this assignment.
    Lost,
}

#[derive(Debug)]
struct Assignment {
    generation: u64,
    next_offset: i64,
    /// Every offset consumed in this assignment, in order.
    consumed: BTreeMap<i64, Fate>,
    /// The content (fingerprint) of each consumed offset.
    prints: BTreeMap<i64, u64>,
    /// The highest position committed in this assignment.
    committed: Option<i64>,
    /// Offsets the committed note said an earlier owner finished.
    skip: std::collections::BTreeSet<i64>,
    /// At-least-once: offsets acknowledged by their job that no landed commit covers yet.
    uncommitted: std::collections::BTreeSet<i64>,
}

#[derive(Debug)]
struct Running {
    slot: Slot,
    key: Option<OrderKey>,
    /// Its assignment was cancelled: it can only be abandoned now.
    cancelled: bool,
    /// Parked on its MPP's open circuit.
    parked: bool,
}

struct Model {
    exactly_once: bool,
    core: DispatchCore<()>,
    owned: BTreeMap<i32, Assignment>,
    /// What the group has committed per partition (survives assignments).
    group_committed: HashMap<i32, i64>,
    /// The note committed with it.
    group_notes: HashMap<i32, String>,
    undecoded: VecDeque<(Slot, Option<OrderKey>)>,
    running: Vec<Running>,
    submitted: Vec<Slot>,
    /// Sequence of consumption per key, to check start order.
    sequence: HashMap<Slot, u64>,
    next_sequence: u64,
    last_started: HashMap<OrderKey, u64>,
    revoking: Vec<i32>,
    revoke_lost: bool,
    stopping: bool,
    /// Every record consumed gets new content.
    next_print: u64,
    /// The merchant of every consumed record that has one.
    keys: HashMap<Slot, OrderKey>,
    /// Some job has parked in this run: events blocked behind it may take the waiting
    /// count over its limit once it calls again (the windows still bound memory).
    ever_parked: bool,
    /// Acknowledged events of revoked partitions that only the revoke's commit, not made
    /// yet by the consumer thread, makes durable.
    revoke_commit_pending: usize,
}

impl Model {
    fn new(exactly_once: bool) -> Model {
        Model {
            exactly_once,
            core: DispatchCore::new(exactly_once, MAX_IN_FLIGHT, MAX_PENDING)
                .with_waiting_limit(MAX_IN_FLIGHT * WAITING_FACTOR),
            owned: BTreeMap::new(),
            group_committed: HashMap::new(),
            group_notes: HashMap::new(),
            undecoded: VecDeque::new(),
            running: Vec::new(),
            submitted: Vec::new(),
            sequence: HashMap::new(),
            next_sequence: 0,
            last_started: HashMap::new(),
            revoking: Vec::new(),
            revoke_lost: false,
            stopping: false,
            next_print: 0,
            keys: HashMap::new(),
            ever_parked: false,
            revoke_commit_pending: 0,
        }
    }

    fn fate(&mut self, slot: Slot) -> Option<&mut Fate> {
        let assignment = self.owned.get_mut(&slot.partition)?;
        if assignment.generation != slot.generation {
            return None;
        }
        assignment.consumed.get_mut(&slot.offset)
    }

    /// A commit of `position` for `partition`: owned, every offset below it acknowledged
    /// (or, in a transaction, acknowledged by this very commit), never backwards.
    fn check_commit(
        &mut self,
        partition: i32,
        position: i64,
        note: &str,
        in_transaction: &[Slot],
    ) -> Result<(), TestCaseError> {
        let Some(assignment) = self.owned.get_mut(&partition) else {
            return Err(TestCaseError::fail(format!(
                "commit of partition {partition}, which is not owned"
            )));
        };
        for (offset, fate) in assignment.consumed.range(..position) {
            let in_this = in_transaction.iter().any(|slot| {
                slot.partition == partition
                    && slot.generation == assignment.generation
                    && slot.offset == *offset
            });
            prop_assert!(
                *fate == Fate::Acknowledged || (in_this && *fate == Fate::Submitted),
                "commit {position} of partition {partition} passes offset {offset} ({fate:?})"
            );
        }
        prop_assert!(
            assignment
                .committed
                .is_none_or(|committed| position >= committed),
            "partition {partition} position went back from {:?} to {position}",
            assignment.committed
        );
        // Every offset the note names is finished: a new owner may skip it.
        let names = finished::decode(note, position).unwrap_or_default();
        for offset in &names {
            let fate = assignment.consumed.get(offset);
            let in_this = in_transaction.iter().any(|slot| {
                slot.partition == partition
                    && slot.generation == assignment.generation
                    && slot.offset == *offset
            });
            // Or an earlier owner finished it (its note said so) and this one has not
            // consumed it yet: the note carries it on.
            let inherited = fate.is_none() && assignment.skip.contains(offset);
            prop_assert!(
                fate == Some(&Fate::Acknowledged)
                    || (in_this && fate == Some(&Fate::Submitted))
                    || inherited,
                "note of commit {position} of partition {partition} names offset {offset} ({fate:?})"
            );
        }
        prop_assert!(
            note.is_empty() || !names.is_empty(),
            "a note that cannot be read back: {note}"
        );
        assignment.committed = Some(position);
        self.group_committed.insert(partition, position);
        self.group_notes.insert(partition, note.to_string());
        Ok(())
    }

    fn apply_revoke_end(&mut self, end: RevokeEnd) -> Result<(), TestCaseError> {
        for (partition, position) in &end.commit {
            prop_assert!(!self.revoke_lost, "a lost assignment committed");
            let note = note_of(&end.notes, *partition);
            self.check_commit(*partition, *position, &note, &[])?;
            // Called and acknowledged, durable only once the consumer thread has made
            // this commit: a crash before then calls them again.
            self.revoke_commit_pending += self.owned[partition].uncommitted.len();
        }
        for (partition, generation) in end.cancel {
            self.cancel(partition, generation);
            if self
                .owned
                .get(&partition)
                .is_some_and(|a| a.generation == generation)
            {
                self.owned.remove(&partition);
            }
        }
        self.revoking.clear();
        Ok(())
    }

    fn cancel(&mut self, partition: i32, generation: u64) {
        for job in &mut self.running {
            if job.slot.partition == partition && job.slot.generation == generation {
                job.cancelled = true;
            }
        }
    }

    fn forget_undecoded(&mut self) {
        let core = &self.core;
        self.undecoded
            .retain(|(slot, _)| core.book().stage(*slot) == Some(Stage::Waiting));
    }

    /// What the loop does after every event: answer a revoke whose work has settled.
    fn after_event(&mut self) -> Result<(), TestCaseError> {
        if self.core.revoke_settled() {
            let end = self.core.finish_revoke().unwrap();
            self.apply_revoke_end(end)?;
        }
        if self.core.is_fatal() && !self.stopping {
            self.stop()?;
        }
        Ok(())
    }

    fn stop(&mut self) -> Result<(), TestCaseError> {
        self.stopping = true;
        self.core.begin_stop();
        self.forget_undecoded();
        for assignment in self.owned.values_mut() {
            for fate in assignment.consumed.values_mut() {
                if *fate == Fate::Waiting {
                    *fate = Fate::Lost;
                }
            }
        }
        Ok(())
    }

    fn step(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Consume {
                partition,
                gap,
                key,
            } => {
                // The consumer honours the pause plan and its own flow counts (it pauses a
                // partition whose window is full, and all while too many events wait).
                if self.consumer_paused(partition) || self.stopping {
                    return Ok(());
                }
                let Some(assignment) = self.owned.get_mut(&partition) else {
                    return Ok(());
                };
                if self.revoking.contains(&partition) {
                    return Ok(());
                }
                let offset = assignment.next_offset + gap - 1;
                assignment.next_offset = offset + 1;
                self.next_print += 1;
                let print = self.next_print;
                let consumed = self.core.consume(partition, offset, print);
                if assignment.skip.contains(&offset) {
                    // Finished by the owner before: skipped, and finished here too.
                    prop_assert_eq!(consumed, Consumed::Skip, "noted offset {}", offset);
                    assignment.consumed.insert(offset, Fate::Acknowledged);
                    assignment.prints.insert(offset, print);
                    return Ok(());
                }
                let Consumed::Track(slot) = consumed else {
                    return Err(TestCaseError::fail(format!(
                        "owned partition {partition} offset {offset}: {consumed:?}"
                    )));
                };
                prop_assert_eq!(slot.generation, assignment.generation);
                assignment.consumed.insert(offset, Fate::Waiting);
                assignment.prints.insert(offset, print);
                self.sequence.insert(slot, self.next_sequence);
                self.next_sequence += 1;
                let key = key.map(|key| OrderKey::Merchant(format!("m{key}")));
                if let Some(key) = &key {
                    self.keys.insert(slot, key.clone());
                }
                self.undecoded.push_back((slot, key));
            }
            Op::Redeliver { partition, back } => {
                let Some(assignment) = self.fetching(partition) else {
                    return Ok(());
                };
                // One of the last records consumed in this assignment, the same content.
                let Some((&offset, &print)) = assignment.prints.iter().rev().nth(back - 1) else {
                    return Ok(());
                };
                // The first delivery is in the books; this one changes nothing.
                let before = self.core.book().window_len(partition);
                let waiting = self.core.book().waiting();
                let consumed = self.core.consume(partition, offset, print);
                prop_assert_eq!(consumed, Consumed::Ignore, "offset {} again", offset);
                prop_assert_eq!(self.core.book().window_len(partition), before);
                prop_assert_eq!(self.core.book().waiting(), waiting);
            }
            Op::Truncate { partition, back } => {
                let Some(assignment) = self.fetching(partition) else {
                    return Ok(());
                };
                // Only an offset at or below one already consumed in this assignment is a
                // truncation; the book cannot know of offsets it never saw.
                let Some(last) = assignment.consumed.keys().last().copied() else {
                    return Ok(());
                };
                let offset = (last + 1 - back).max(0);
                let stale_generation = assignment.generation;
                self.next_print += 1;
                let print = self.next_print;
                let consumed = self.core.consume(partition, offset, print);
                let Consumed::Restart { slot, stale } = consumed else {
                    return Err(TestCaseError::fail(format!(
                        "truncated partition {partition} offset {offset}: {consumed:?}"
                    )));
                };
                prop_assert_eq!(stale, stale_generation);
                self.cancel(partition, stale);
                self.forget_undecoded();
                self.submitted
                    .retain(|s| !(s.partition == partition && s.generation == stale));
                let mut consumed = BTreeMap::new();
                consumed.insert(offset, Fate::Waiting);
                let mut prints = BTreeMap::new();
                prints.insert(offset, print);
                self.owned.insert(
                    partition,
                    Assignment {
                        generation: slot.generation,
                        next_offset: offset + 1,
                        consumed,
                        prints,
                        committed: None,
                        skip: Default::default(),
                        uncommitted: Default::default(),
                    },
                );
                self.sequence.insert(slot, self.next_sequence);
                self.next_sequence += 1;
                self.undecoded.push_back((slot, None));
            }
            Op::Decode => {
                self.forget_undecoded();
                if let Some((slot, key)) = self.undecoded.pop_front() {
                    let ticket = Ticket {
                        slot,
                        key,
                        payload: (),
                    };
                    prop_assert!(self.core.decoded(ticket), "a waiting slot was refused");
                }
            }
            Op::Start => {
                while let Some(ticket) = self.core.next_start() {
                    let fate = self.fate(ticket.slot);
                    prop_assert_eq!(
                        fate.as_deref().copied(),
                        Some(Fate::Waiting),
                        "started a slot that is not waiting: {:?}",
                        ticket.slot
                    );
                    *self.fate(ticket.slot).unwrap() = Fate::Running;
                    if let Some(key) = &ticket.key {
                        prop_assert!(
                            !self.running.iter().any(|job| job.key.as_ref() == Some(key)),
                            "two events of {key:?} in flight"
                        );
                        let sequence = self.sequence[&ticket.slot];
                        if let Some(previous) = self.last_started.get(key) {
                            prop_assert!(sequence > *previous, "{key:?} started out of order");
                        }
                        self.last_started.insert(key.clone(), sequence);
                    }
                    self.running.push(Running {
                        slot: ticket.slot,
                        key: ticket.key,
                        cancelled: false,
                        parked: false,
                    });
                }
                prop_assert!(
                    self.running.len() <= MAX_IN_FLIGHT,
                    "in-flight bound broken"
                );
            }
            Op::Complete { pick, kind } => {
                if self.running.is_empty() {
                    return Ok(());
                }
                let job = self.running.remove(pick.index(self.running.len()));
                let finish = match kind {
                    _ if job.cancelled => Finish::Abandoned,
                    0..=1 => Finish::Abandoned,
                    2 => Finish::Fatal,
                    _ if self.exactly_once => Finish::Submitted,
                    _ => Finish::Terminal,
                };
                if let Some(fate) = self.fate(job.slot) {
                    *fate = match finish {
                        Finish::Terminal => Fate::Acknowledged,
                        Finish::Submitted => Fate::Submitted,
                        Finish::Abandoned | Finish::Fatal => Fate::Lost,
                    };
                }
                if finish == Finish::Submitted {
                    self.submitted.push(job.slot);
                }
                self.acknowledged_by_job(job.slot, finish);
                self.core.finished(job.slot, job.key.as_ref(), finish);
            }
            Op::Transaction { pick, commit } => {
                if !self.submitted.is_empty() {
                    let held = pick.index(self.submitted.len()) + 1;
                    self.transaction(held, commit)?;
                }
            }
            Op::CommitTick { fail } => {
                let due = self.core.has_commits();
                let positions = self.core.take_commits();
                prop_assert_eq!(due, !positions.is_empty(), "has_commits agrees");
                prop_assert!(!self.core.has_commits(), "nothing due right after a commit");
                prop_assert!(!self.exactly_once || positions.is_empty());
                let partitions: Vec<i32> = positions.iter().map(|(p, _)| *p).collect();
                if fail {
                    self.core.commit_failed(&partitions);
                } else {
                    for (partition, position) in positions {
                        let note = self.core.book().note(partition, position);
                        self.check_commit(partition, position, &note, &[])?;
                        // The landed commit frees the slots of every event acknowledged
                        // before it was taken: each must be below it or named in its note.
                        let names = finished::decode(&note, position).unwrap_or_default();
                        if let Some(assignment) = self.owned.get_mut(&partition) {
                            for offset in std::mem::take(&mut assignment.uncommitted) {
                                prop_assert!(
                                    offset < position || names.contains(&offset),
                                    "commit {position} of partition {partition} frees the \
                                     slot of offset {offset}, which it does not cover"
                                );
                            }
                        }
                    }
                    self.core.commit_landed(&partitions);
                }
            }
            Op::Assign { partitions } => {
                if !self.revoking.is_empty() {
                    // The consumer moved on without an answer (its callback timed out).
                    self.revoke_timed_out()?;
                }
                let (previous, fresh) = self.core.assign(&partitions);
                prop_assert!(previous.is_none());
                for partition in fresh {
                    prop_assert!(!self.owned.contains_key(&partition));
                    let start = self.group_committed.get(&partition).copied().unwrap_or(0);
                    // What the consumer thread reads with the committed offset.
                    let skip = self
                        .group_notes
                        .get(&partition)
                        .and_then(|note| finished::decode(note, start).ok())
                        .unwrap_or_default();
                    self.core.skip_finished(partition, start, skip.clone());
                    self.owned.insert(
                        partition,
                        Assignment {
                            generation: self.core.book().generation(partition).unwrap(),
                            next_offset: start,
                            consumed: BTreeMap::new(),
                            prints: BTreeMap::new(),
                            committed: None,
                            skip,
                            uncommitted: Default::default(),
                        },
                    );
                }
            }
            Op::Revoke { partitions, lost } => {
                if !self.revoking.is_empty() {
                    self.revoke_timed_out()?;
                }
                let (previous, cancel_now) = self.core.revoke(&partitions, lost);
                prop_assert!(previous.is_none());
                for (partition, generation) in cancel_now {
                    self.cancel(partition, generation);
                }
                self.revoke_lost = lost;
                self.revoking = partitions
                    .iter()
                    .copied()
                    .filter(|p| self.owned.contains_key(p))
                    .collect();
                for partition in self.revoking.clone() {
                    let assignment = self.owned.get_mut(&partition).unwrap();
                    for fate in assignment.consumed.values_mut() {
                        if *fate == Fate::Waiting {
                            *fate = Fate::Lost;
                        }
                    }
                }
                self.forget_undecoded();
            }
            Op::RevokeDeadline => self.revoke_timed_out()?,
            Op::RevokeCommitted => {
                self.revoke_commit_pending = 0;
                self.core.revoke_commit_settled();
            }
            Op::Park { pick, parked } => {
                if self.running.is_empty() {
                    return Ok(());
                }
                let index = pick.index(self.running.len());
                let job = &mut self.running[index];
                job.parked = parked;
                self.ever_parked |= parked;
                self.core.parked(job.slot, parked);
            }
            Op::Shutdown => {
                if !self.stopping {
                    self.stop()?;
                }
            }
        }
        self.after_event()?;
        self.check_state()
    }

    /// The transaction writer holds the first `held` submissions: it asks what they allow,
    /// drops orphans, and commits (or aborts) the covered ones with their positions.
    fn transaction(&mut self, held: usize, commit: bool) -> Result<(), TestCaseError> {
        if !self.exactly_once {
            return Ok(());
        }
        let held: Vec<Slot> = self.submitted[..held.min(self.submitted.len())].to_vec();
        let prepared = self.core.prepare(&held);
        let mut covered = Vec::new();
        for slot in &held {
            let owned = prepared.owned.contains(&(slot.partition, slot.generation));
            let is_covered = prepared
                .positions
                .iter()
                .any(|(p, position)| *p == slot.partition && slot.offset < *position)
                || prepared
                    .noted
                    .iter()
                    .any(|(p, offsets)| *p == slot.partition && offsets.contains(&slot.offset));
            if !owned {
                self.submitted.retain(|s| s != slot);
            } else if is_covered {
                covered.push(*slot);
            }
        }
        if !commit {
            return Ok(());
        }
        for (partition, position) in &prepared.positions {
            let note = note_of(&prepared.notes, *partition);
            self.check_commit(*partition, *position, &note, &covered)?;
        }
        for slot in &covered {
            if let Some(fate) = self.fate(*slot) {
                *fate = Fate::Acknowledged;
            }
        }
        self.submitted.retain(|s| !covered.contains(s));
        self.core.transaction_committed(&covered);
        Ok(())
    }

    /// What the consumer thread would not fetch now: the plan, or its flow counts.
    /// The assignment of `partition` when the consumer would deliver a record of it now.
    fn fetching(&self, partition: i32) -> Option<&Assignment> {
        if self.consumer_paused(partition) || self.stopping || self.revoking.contains(&partition) {
            return None;
        }
        self.owned.get(&partition)
    }

    fn consumer_paused(&self, partition: i32) -> bool {
        let book = self.core.book();
        self.core.pause_plan().is_paused(partition)
            || book.window_len(partition) >= MAX_PENDING
            || self.core.waiting_counted() >= MAX_IN_FLIGHT * WAITING_FACTOR
    }

    fn revoke_timed_out(&mut self) -> Result<(), TestCaseError> {
        if let Some(end) = self.core.finish_revoke() {
            self.apply_revoke_end(end)?;
        }
        Ok(())
    }

    /// Whether some work of `partition` can still move its commit position, by the model's
    /// own record.
    fn can_settle(&self, partition: i32) -> bool {
        let Some(assignment) = self.owned.get(&partition) else {
            return false;
        };
        for fate in assignment.consumed.values() {
            match fate {
                Fate::Running | Fate::Submitted => return true,
                Fate::Acknowledged => {}
                Fate::Waiting | Fate::Lost => return false,
            }
        }
        false
    }

    /// At-least-once: a job acknowledged its outputs; its event is not durable until a
    /// commit covers it.
    fn acknowledged_by_job(&mut self, slot: Slot, finish: Finish) {
        if finish != Finish::Terminal {
            return;
        }
        if let Some(assignment) = self.owned.get_mut(&slot.partition)
            && assignment.generation == slot.generation
        {
            assignment.uncommitted.insert(slot.offset);
        }
    }

    fn check_state(&mut self) -> Result<(), TestCaseError> {
        // Every event called and not durable keeps a slot, so what a crash would call again
        // is bounded by max_in_flight.
        let undurable: usize = self
            .owned
            .values()
            .map(|a| {
                a.uncommitted.len()
                    + a.consumed
                        .values()
                        .filter(|fate| **fate == Fate::Submitted)
                        .count()
            })
            .sum();
        prop_assert_eq!(
            self.core.undurable(),
            undurable,
            "slots held after the call"
        );
        prop_assert!(
            self.running.len() + undurable + self.revoke_commit_pending <= MAX_IN_FLIGHT,
            "{} running, {undurable} not durable and {} waiting for the revoke's commit: \
             over {MAX_IN_FLIGHT}",
            self.running.len(),
            self.revoke_commit_pending
        );
        let book = self.core.book();
        // The book owns exactly the model's assignments.
        let owned: Vec<(i32, u64)> = self.owned.iter().map(|(p, a)| (*p, a.generation)).collect();
        prop_assert_eq!(book.owned(), owned);
        // Memory stays within the bounds.
        for partition in self.owned.keys() {
            prop_assert!(
                book.window_len(*partition) <= MAX_PENDING,
                "partition {partition} window {} over {MAX_PENDING}",
                book.window_len(*partition)
            );
        }
        // Events queued behind a parked job do not count towards the waiting limit.
        let parked_keys: Vec<&OrderKey> = self
            .running
            .iter()
            .filter(|job| job.parked)
            .filter_map(|job| job.key.as_ref())
            .collect();
        let blocked = self
            .keys
            .iter()
            .filter(|(slot, key)| {
                book.stage(**slot) == Some(Stage::Waiting)
                    && !self.undecoded.iter().any(|(s, _)| s == *slot)
                    && parked_keys.contains(key)
            })
            .count();
        prop_assert_eq!(
            book.waiting() - self.core.waiting_counted(),
            blocked,
            "events blocked behind a parked job"
        );
        if !self.ever_parked {
            prop_assert!(book.waiting() <= MAX_IN_FLIGHT * WAITING_FACTOR);
        }
        let waiting = self
            .owned
            .values()
            .flat_map(|a| a.consumed.values())
            .filter(|fate| **fate == Fate::Waiting)
            .count();
        prop_assert_eq!(book.waiting(), waiting);
        prop_assert_eq!(self.core.in_flight(), self.running.len());
        // A revoke or a shutdown waits exactly while some work can still settle.
        if !self.revoking.is_empty() {
            let settleable = !self.revoke_lost && self.revoking.iter().any(|p| self.can_settle(*p));
            prop_assert_eq!(
                self.core.revoke_settled(),
                !settleable,
                "revoke settled flag disagrees with the model"
            );
        }
        if self.stopping {
            let settleable = self.owned.keys().any(|p| self.can_settle(*p));
            prop_assert_eq!(self.core.stop_settled(), !settleable);
        }
        Ok(())
    }

    /// Lets every job and transaction finish well: every revoke and the shutdown must then
    /// settle, and the last commits must cover exactly the acknowledged prefixes.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        if !self.stopping {
            self.stop()?;
        }
        for _ in 0..1_000 {
            if let Some(job) = self.running.pop() {
                let finish = if job.cancelled {
                    Finish::Abandoned
                } else if self.exactly_once {
                    Finish::Submitted
                } else {
                    Finish::Terminal
                };
                if let Some(fate) = self.fate(job.slot) {
                    *fate = match finish {
                        Finish::Terminal => Fate::Acknowledged,
                        Finish::Submitted => Fate::Submitted,
                        _ => Fate::Lost,
                    };
                }
                if finish == Finish::Submitted {
                    self.submitted.push(job.slot);
                }
                self.acknowledged_by_job(job.slot, finish);
                self.core.finished(job.slot, job.key.as_ref(), finish);
            } else if !self.submitted.is_empty() {
                let before = self.submitted.len();
                self.transaction(before, true)?;
                if self.submitted.len() == before {
                    // What is left can never be covered: it waits behind lost work.
                    break;
                }
            } else {
                break;
            }
            self.after_event()?;
            self.check_state()?;
        }
        prop_assert!(!self.core.revoke_pending(), "a revoke never settled");
        prop_assert!(self.core.stop_settled(), "the shutdown never settled");
        for (partition, position) in self.core.final_commits() {
            let note = self.core.book().note(partition, position);
            self.check_commit(partition, position, &note, &[])?;
        }
        // Nothing acknowledged at-least-once is left behind a commit that could pass it.
        if !self.exactly_once {
            for assignment in self.owned.values() {
                let last_of_prefix = assignment
                    .consumed
                    .iter()
                    .take_while(|(_, fate)| **fate == Fate::Acknowledged)
                    .last()
                    .map(|(offset, _)| offset + 1);
                if last_of_prefix.is_some() {
                    prop_assert_eq!(
                        assignment.committed,
                        last_of_prefix,
                        "the finished prefix was not committed at shutdown"
                    );
                }
            }
        }
        Ok(())
    }
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(10_000)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_core_keeps_every_delivery_invariant(
        exactly_once in any::<bool>(),
        initial in prop::collection::vec(0..PARTITIONS, 1..=PARTITIONS as usize),
        ops in prop::collection::vec(op(), 0..120),
    ) {
        let mut model = Model::new(exactly_once);
        model.step(Op::Assign { partitions: initial })?;
        for op in ops {
            model.step(op)?;
        }
        model.drain()?;
    }
}
