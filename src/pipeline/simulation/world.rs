//! The world: what the simulated Kafka and Alipay+ hold (logs, committed positions and notes,
//! outputs, calls in flight, the group's generation), the checks made as it changes (a commit
//! past an output not acknowledged, two calls of one merchant) and the digest of a run's course;
//! and the run's clock. It never calls the service: the actors and the run change it.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::scenario::Payload;
use crate::pipeline::finished;

#[derive(Debug, Default)]
pub(super) struct World {
    /// Per partition, the log as appended so far.
    pub(super) logs: BTreeMap<i32, Vec<Payload>>,
    /// Per partition: the committed position and its note.
    pub(super) committed: BTreeMap<i32, (i64, String)>,
    /// The partitions the group gives the member: from their assignment until the revoke that
    /// takes them has settled. A commit naming another (another member's, while it is away)
    /// would overwrite its owner's progress.
    pub(super) owned: BTreeSet<i32>,
    /// Outputs acknowledged (at-least-once) or committed (exactly-once), per (partition, offset).
    pub(super) outputs: HashMap<(i32, i64), usize>,
    /// Calls in flight per merchant.
    pub(super) calling: HashMap<String, usize>,
    /// The group's generation as the member's group metadata shows it (KIP-447's fence): a
    /// transaction whose fence was read under an older one is refused. `None` while the member
    /// is out of the group (its partitions lost, before it rejoins): nothing can commit.
    pub(super) generation: Option<u64>,
    pub(super) calls: u64,
    /// Per life of the member and MPP, under a send-rate limit: when its calls of the last ten
    /// seconds were made.
    pub(super) recent_calls: HashMap<(usize, &'static str), VecDeque<Duration>>,
    /// The most calls one life of the member made to one MPP within a second.
    pub(super) busiest_second: usize,
    /// Per life of the member, under a send-rate limit: from when each of its shares of the
    /// limit applied.
    pub(super) shares: HashMap<usize, Vec<(Duration, f64)>>,
    /// The first broken rule.
    pub(super) violation: Option<String>,
    /// A digest of the course of the run.
    pub(super) trace: u64,
}

impl World {
    /// The member joined the group again: a new generation.
    pub(super) fn rejoined(&mut self) {
        self.trace = self.trace.wrapping_add(1);
        self.generation = Some(self.trace | 1 << 63);
    }

    /// The member's life `life` holds a share of `share` requests a second of each MPP's limit
    /// from `at`.
    pub(super) fn share_from(&mut self, life: usize, at: Duration, share: f64) {
        self.shares.entry(life).or_default().push((at, share));
    }

    /// A call of the member's life `life` to `psp` at `at`, under a send-rate limit: no second,
    /// and no ten seconds, hold more of its calls than the highest share the member held in them
    /// allows (ten seconds see a share below one a second). Sends at least an interval apart
    /// number at most one more than the span holds intervals, and tokio's timer wakes a job up to
    /// a millisecond after its slot, so a span of T at a share of S allows (T + 1 ms) × S + 1.
    /// The highest share in the span forgives, for a span after a share shrinks, sends still at
    /// the old pace: the unit tests of `AdaptiveRate` check that a smaller share moves them.
    pub(super) fn paced_call(&mut self, life: usize, psp: &'static str, at: Duration) {
        const TIMER_LATE: Duration = Duration::from_millis(1);
        const SPANS: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(10)];
        let recent = self.recent_calls.entry((life, psp)).or_default();
        while recent.front().is_some_and(|first| *first + SPANS[1] <= at) {
            recent.pop_front();
        }
        recent.push_back(at);
        let history = self.shares.get(&life).map_or(&[][..], Vec::as_slice);
        let mut violation = None;
        for span in SPANS {
            let from = at.saturating_sub(span);
            // The share held when the span began, and any taken within it.
            let held_since = history
                .iter()
                .rposition(|(taken, _)| *taken <= from)
                .unwrap_or(0);
            let share = history
                .get(held_since..)
                .unwrap_or_default()
                .iter()
                .map(|(_, share)| *share)
                .fold(f64::NAN, f64::max);
            let calls = recent.iter().filter(|sent| **sent > from).count();
            if span == SPANS[0] {
                self.busiest_second = self.busiest_second.max(calls);
            }
            if share.is_nan() {
                violation = Some(format!(
                    "a call to {psp} at {at:?} before the member held a share"
                ));
            } else if calls > (share * (span + TIMER_LATE).as_secs_f64()).floor() as usize + 1 {
                violation = Some(format!(
                    "{calls} calls to {psp} in the {span:?} to {at:?} from one member, whose share \
                     of the group's limit was at most {share:.2} a second"
                ));
            }
            if violation.is_some() {
                break;
            }
        }
        if let Some(violation) = violation {
            self.violate(violation);
        }
    }

    pub(super) fn violate(&mut self, what: String) {
        self.violation.get_or_insert(what);
    }

    pub(super) fn note(&mut self, step: u64) {
        self.trace = self.trace.wrapping_mul(0x100_0000_01b3).wrapping_add(step);
    }

    /// Checks and stores a commit of `(partition, position, note)`.
    pub(super) fn commit(&mut self, commits: &[(i32, i64, String)]) {
        for (partition, position, note) in commits {
            if !self.owned.contains(partition) {
                self.violate(format!(
                    "partition {partition} committed at {position} while the member does not own \
                     it"
                ));
            }
            for offset in 0..*position {
                if !self.outputs.contains_key(&(*partition, offset)) {
                    self.violate(format!(
                        "partition {partition} committed at {position} but offset {offset} has no \
                         acknowledged output"
                    ));
                }
            }
            if !note.is_empty() {
                match finished::decode(note, *position) {
                    Ok(noted) => {
                        for offset in noted {
                            if !self.outputs.contains_key(&(*partition, offset)) {
                                self.violate(format!(
                                    "partition {partition}'s note names offset {offset}, which \
                                     has no acknowledged output"
                                ));
                            }
                        }
                    }
                    Err(error) => {
                        self.violate(format!("an unreadable note was committed: {error}"))
                    }
                }
            }
            self.note((*partition as u64) << 40 | *position as u64);
            if std::env::var_os("REGNOTIFY_SIM_DEBUG").is_some() {
                eprintln!(
                    "{:?} commit {partition} at {position} note {note:?}",
                    Instant::now()
                );
            }
            self.committed.insert(*partition, (*position, note.clone()));
        }
    }

    pub(super) fn output(&mut self, partition: i32, offset: i64) {
        *self.outputs.entry((partition, offset)).or_default() += 1;
        if std::env::var_os("REGNOTIFY_SIM_DEBUG").is_some() {
            eprintln!(
                "{:?} output {partition}/{offset} (#{}), committed {:?}",
                Instant::now(),
                self.outputs[&(partition, offset)],
                self.committed.get(&partition)
            );
        }
        self.note(0xA000_0000 | (partition as u64) << 24 | offset as u64);
    }

    pub(super) fn done(&self) -> bool {
        self.logs.iter().all(|(partition, log)| {
            let end = log.len() as i64;
            self.committed.get(partition).map(|(at, _)| *at) == Some(end)
                || (end == 0 && !self.committed.contains_key(partition))
        }) && self.logs.iter().all(|(partition, log)| {
            (0..log.len() as i64).all(|o| self.outputs.contains_key(&(*partition, o)))
        })
    }
}

pub(super) type Shared = Arc<Mutex<World>>;

pub(super) struct Clock {
    pub(super) start: Instant,
}

impl Clock {
    pub(super) fn at(&self) -> Duration {
        Instant::now().duration_since(self.start)
    }
}
