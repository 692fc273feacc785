//! The run of one seed: appending the scenario's records as simulated time passes, starting
//! members (a real `Dispatcher` and workers wired to the simulated actors), crashing them,
//! rebalancing, the simulated consumer's poll under the pause plan and flow counts, and the
//! checks at the end (liveness, repeated outcomes): the course of a run and the member's life in
//! it. It never decides what the service does.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::alipay::SimAlipay;
use super::kafka::{SimCommitter, SimPublisher, commits_of, input_record};
use super::scenario::{Rebalance, Scenario};
use super::world::{Clock, Shared, World};
use super::writer::SimWriter;
use super::{FAULTS_END, FETCH_BATCH, LIVENESS_BOUND, PARTITIONS, Report, TICK, TOPIC};
use crate::codec::EventDecoder;
use crate::config::InputEncoding;
use crate::observe::{Health, Stats};
use crate::pipeline::backoff::RetryBudget;
use crate::pipeline::circuit::{Circuit, Circuits};
use crate::pipeline::consumer::{ConsumerEvent, FinishedNote, Flow};
use crate::pipeline::dispatch::{Dispatcher, DispatcherParts};
use crate::pipeline::mpp::{Mpp, Mpps};
use crate::pipeline::parking::Parking;
use crate::pipeline::sink::OutputSink;
use crate::pipeline::worker::{Jitter, WorkerContext};
use crate::pipeline::{decisions, finished};

pub(super) struct Run {
    seed: u64,
    scenario: Arc<Scenario>,
    rng: StdRng,
}

/// One life of the member: a dispatcher and what it was built with.
struct Member {
    events: mpsc::UnboundedSender<ConsumerEvent>,
    flow: Arc<Flow>,
    hard_stop: CancellationToken,
    dispatcher: tokio::task::JoinHandle<crate::pipeline::dispatch::Exit>,
    writer: Option<tokio::task::JoinHandle<()>>,
    /// Which life of the member this is (a crash starts the next).
    life: usize,
    /// Per assigned partition: the next offset to deliver.
    fetch: BTreeMap<i32, i64>,
    /// The input topic's partitions, this member's and the others': told before every
    /// assignment, as the consumer thread does, for the shares of the send-rate limits.
    topic_partitions: usize,
}

impl Run {
    pub(super) fn new(seed: u64) -> Run {
        let mut rng = StdRng::seed_from_u64(seed);
        let scenario = Arc::new(Scenario::new(&mut rng));
        Run {
            seed,
            scenario,
            rng,
        }
    }

    pub(super) async fn run(mut self) -> Result<Report, String> {
        let clock = Arc::new(Clock {
            start: Instant::now(),
        });
        let world: Shared = Arc::new(Mutex::new(World::default()));
        for partition in 0..PARTITIONS {
            world.lock().unwrap().logs.insert(partition, Vec::new());
        }
        let alipay_rng = Arc::new(Mutex::new(StdRng::seed_from_u64(self.rng.random())));
        let mut appended = 0;
        let mut rebalances = self.scenario.rebalances.clone();
        let mut crashes = self.scenario.crashes.clone();
        crashes.sort();
        rebalances.sort_by_key(|rebalance| rebalance.at);
        let (mut rebalances, mut crashes) = (
            rebalances.into_iter().peekable(),
            crashes.into_iter().peekable(),
        );
        let mut lives = 0;
        let mut rebalanced = 0;
        let mut member = self.start(&world, &clock, &alipay_rng, lives);
        // Partitions other members hold for a while after a rebalance, and when they come back.
        let mut away: Vec<(Duration, Vec<i32>)> = Vec::new();
        let deadline = FAULTS_END + LIVENESS_BOUND;
        loop {
            let at = clock.at();
            if let Some(violation) = world.lock().unwrap().violation.clone() {
                return Err(format!("{} at {at:?}: {violation}", self.describe()));
            }
            while let Some((when, partition, payload)) = self.scenario.records.get(appended) {
                if *when > at {
                    break;
                }
                world
                    .lock()
                    .unwrap()
                    .logs
                    .get_mut(partition)
                    .unwrap()
                    .push(payload.clone());
                appended += 1;
            }
            if appended == self.scenario.records.len()
                && at >= FAULTS_END
                && world.lock().unwrap().done()
            {
                break;
            }
            if at >= deadline {
                let world = world.lock().unwrap();
                let unfinished: Vec<String> = world
                    .logs
                    .iter()
                    .map(|(p, log)| {
                        let missing = (0..log.len() as i64)
                            .filter(|o| !world.outputs.contains_key(&(*p, *o)))
                            .count();
                        format!(
                            "partition {p}: {} records, committed {:?}, {missing} without output",
                            log.len(),
                            world.committed.get(p).map(|(at, _)| at)
                        )
                    })
                    .collect();
                return Err(format!(
                    "{}: liveness: not done {LIVENESS_BOUND:?} after the faults ended: {}",
                    self.describe(),
                    unfinished.join("; ")
                ));
            }
            if crashes.peek().is_some_and(|when| *when <= at) {
                crashes.next();
                member.crash().await;
                lives += 1;
                // The new member joins and gets every partition.
                away.clear();
                member = self.start(&world, &clock, &alipay_rng, lives);
            } else if let Some(rebalance) = rebalances.next_if(|r| r.at <= at) {
                // A rebalance that takes nothing from the member passes it by.
                rebalanced += usize::from(
                    rebalance
                        .partitions
                        .iter()
                        .any(|partition| member.fetch.contains_key(partition)),
                );
                if let Some(back) = self
                    .rebalance(&mut member, &world, &clock, &rebalance)
                    .await
                {
                    // Away from the end of the revoke, which may have taken seconds.
                    away.push((clock.at() + rebalance.away, back));
                }
            } else if let Some(due) = away.iter().position(|(when, _)| *when <= at) {
                let (_, partitions) = away.remove(due);
                self.assign_again(&mut member, &world, &clock, &partitions);
            }
            self.deliver(&mut member, &world);
            if member.dispatcher.is_finished() {
                return Err(format!("{}: the dispatcher stopped", self.describe()));
            }
            tokio::time::sleep(TICK).await;
        }
        let simulated = clock.at();
        member.crash().await;
        let world = world.lock().unwrap();
        let repeats: usize = world.outputs.values().map(|n| n - 1).sum();
        if self.scenario.exactly_once && repeats > 0 {
            return Err(format!(
                "{}: {repeats} outputs repeated under exactly-once",
                self.describe()
            ));
        }
        let bound = (lives + rebalanced) * self.scenario.max_in_flight;
        if repeats > bound {
            return Err(format!(
                "{}: {repeats} repeated outcomes, more than max_in_flight per crash or rebalance \
                 ({bound})",
                self.describe()
            ));
        }
        Ok(Report {
            events: self.scenario.records.len(),
            exactly_once: self.scenario.exactly_once,
            crashes: lives,
            rebalances: rebalanced,
            calls: world.calls,
            limit: self
                .scenario
                .share(PARTITIONS as usize)
                .map(|share| (share, world.busiest_second)),
            repeats,
            simulated,
            trace: world.trace,
        })
    }

    fn describe(&self) -> String {
        let s = &self.scenario;
        format!(
            "seed {} ({} records, exactly_once {}, {:?} ordering, max_in_flight {}, window {}, \
             streak {}, outages {:?}, refusing us {:?}, commits refused {:?}, rebalances {:?}, \
             crashes {:?}, max_requests_per_second {} over {} partitions)",
            self.seed,
            s.records.len(),
            s.exactly_once,
            s.ordering,
            s.max_in_flight,
            s.max_pending_per_partition,
            s.refused_streak_threshold,
            s.outages,
            s.refusing_us,
            s.commits_refused,
            s.rebalances,
            s.crashes,
            s.requests_per_second,
            s.topic_partitions()
        )
    }

    /// A new member (a process start): joins and gets every partition, from the committed
    /// offsets and their notes.
    fn start(
        &mut self,
        world: &Shared,
        clock: &Arc<Clock>,
        alipay_rng: &Arc<Mutex<StdRng>>,
        life: usize,
    ) -> Member {
        let scenario = Arc::clone(&self.scenario);
        let processing = scenario.processing();
        let health = Arc::new(Health::default());
        let circuits = Circuits::new(Arc::clone(&health));
        let mpp = |psp: &'static str| {
            let circuit = Circuit::new(
                scenario.breaker(),
                processing.refused_streak_threshold,
                psp,
                Arc::clone(&circuits),
            );
            let alipay = SimAlipay {
                psp,
                life,
                world: Arc::clone(world),
                scenario: Arc::clone(&scenario),
                clock: Arc::clone(clock),
                rng: Arc::clone(alipay_rng),
            };
            Mpp::new(
                psp,
                Arc::new(alipay),
                Arc::new(circuit),
                scenario.requests_per_second,
            )
        };
        let mpps = Mpps::new(mpp("default"), [("B".to_owned(), mpp("B"))]);
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let transaction_due = processing
            .exactly_once
            .then(|| Arc::new(tokio::sync::Notify::new()));
        let (sink, writer) = if let Some(due) = &transaction_due {
            let (submitter, submissions) = mpsc::channel(processing.max_in_flight.max(1));
            let writer = SimWriter {
                world: Arc::clone(world),
                control: control_tx,
                due: Arc::clone(due),
                rng: StdRng::seed_from_u64(self.rng.random()),
                abort_ratio: scenario.abort_ratio,
                interval: processing.transaction_interval,
            };
            (
                OutputSink::Transactional(submitter),
                Some(tokio::spawn(writer.run(submissions))),
            )
        } else {
            drop(control_tx);
            let publisher = SimPublisher {
                world: Arc::clone(world),
                scenario: Arc::clone(&scenario),
                clock: Arc::clone(clock),
            };
            (OutputSink::Idempotent(Arc::new(publisher)), None)
        };
        let worker = Arc::new(WorkerContext {
            mpps,
            parking: Parking::new(processing.max_in_flight),
            sink,
            budget: RetryBudget {
                max_attempts: processing.max_attempts,
                max_retry_elapsed: processing.max_retry_elapsed,
                initial: processing.backoff_initial,
                max: processing.backoff_max,
            },
            stats: Arc::new(Stats::default()),
            health: Arc::clone(&health),
            hard_stop: CancellationToken::new(),
            circuit: circuits,
            jitter: Jitter::seeded(self.rng.random()),
        });
        let flow = Arc::new(Flow::new(
            processing.max_pending_per_partition,
            decisions::waiting_limit(processing.max_in_flight),
        ));
        let committer = Arc::new(SimCommitter {
            world: Arc::clone(world),
            scenario: Arc::clone(&scenario),
            clock: Arc::clone(clock),
        });
        let hard_stop = worker.hard_stop.clone();
        let dispatcher = Dispatcher::new(DispatcherParts {
            processing,
            topic: TOPIC.into(),
            consumer: committer,
            decoder: Arc::new(EventDecoder::new(InputEncoding::Raw, None)),
            worker,
            status: health,
            flow: Arc::clone(&flow),
            control: control_rx,
            transaction_due,
            tracing: crate::telemetry::traces::Tracing::off(),
            group: "simulation".into(),
            event_stall_after: crate::config::AdminSettings::default().event_stall_after,
        });
        let (events, events_rx) = mpsc::unbounded_channel();
        let dispatcher = tokio::spawn(dispatcher.run(events_rx, CancellationToken::new()));
        let mut member = Member {
            events,
            flow,
            hard_stop,
            dispatcher,
            writer,
            life,
            fetch: BTreeMap::new(),
            topic_partitions: scenario.topic_partitions(),
        };
        let all: Vec<i32> = (0..PARTITIONS).collect();
        {
            let mut world = world.lock().unwrap();
            // What the crashed member owned goes to this one.
            world.owned.clear();
            world.rejoined();
        }
        member.assign(world, &all);
        let mut world = world.lock().unwrap();
        world.note(0xC000_0000 + life as u64);
        if let Some(share) = scenario.share(member.fetch.len()) {
            world.share_from(life, clock.at(), share);
        }
        drop(world);
        member
    }

    /// Revokes the rebalance's partitions that the member owns (lost: without a commit) and
    /// commits what the dispatcher answers; the member rejoins at once. The partitions come back
    /// as their next owner would find them: at once, or, when other members hold them for a
    /// while, when the caller assigns the partitions returned.
    async fn rebalance(
        &mut self,
        member: &mut Member,
        world: &Shared,
        clock: &Arc<Clock>,
        rebalance: &Rebalance,
    ) -> Option<Vec<i32>> {
        let lost = rebalance.lost;
        let partitions: Vec<i32> = rebalance
            .partitions
            .iter()
            .copied()
            .filter(|partition| member.fetch.contains_key(partition))
            .collect();
        if partitions.is_empty() {
            return None;
        }
        let drain = self.scenario.processing().rebalance_drain_timeout;
        {
            // Lost: the member is out of the group. Cooperative (a subset revoked): the member
            // learned its new assignment, under a new generation, before the revoke; what it
            // commits in the revoke callback is still accepted. Eager: the revoke comes first,
            // under the old generation.
            let mut world = world.lock().unwrap();
            world.generation = if lost {
                None
            } else if rebalance.eager {
                world.generation
            } else {
                world.generation.map(|g| g + 1)
            };
        }
        if std::env::var_os("REGNOTIFY_SIM_DEBUG").is_some() {
            eprintln!("{:?} revoke {partitions:?} lost {lost}", Instant::now());
        }
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        for partition in &partitions {
            member.fetch.remove(partition);
        }
        let _ = member.events.send(ConsumerEvent::Revoked {
            partitions: partitions.clone(),
            lost,
            deadline: (Instant::now() + drain).into_std(),
            reply,
        });
        let give_up = Instant::now() + drain + Duration::from_secs(1);
        let commit = loop {
            match answer.try_recv() {
                Ok(commit) => break Some(commit),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => break None,
                Err(std::sync::mpsc::TryRecvError::Empty) if Instant::now() >= give_up => {
                    break None;
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => {
                    self.deliver(member, world);
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        };
        if let Some(commit) = &commit {
            let mut world = world.lock().unwrap();
            let refused = self
                .scenario
                .commits_refused
                .iter()
                .any(|w| w.contains(clock.at()));
            if !lost && !refused {
                world.commit(&commits_of(commit));
            }
            // The dispatcher answered, and took its smaller share of the limits with it (none
            // while it owns nothing: the share stays).
            if let Some(share) = self.scenario.share(member.fetch.len())
                && !member.fetch.is_empty()
            {
                world.share_from(member.life, clock.at(), share);
            }
        }
        // As the real callback does: stop listening, then report the commit made. From here on
        // the partitions are another member's: no commit of this one may name them.
        drop(answer);
        let _ = member.events.send(ConsumerEvent::RevokeSettled);
        world
            .lock()
            .unwrap()
            .owned
            .retain(|partition| !partitions.contains(partition));
        if rebalance.away.is_zero() {
            self.assign_again(member, world, clock, &partitions);
            None
        } else {
            world.lock().unwrap().rejoined();
            Some(partitions)
        }
    }

    /// Other members give `partitions` back to the member (a rebalance: a new generation).
    fn assign_again(
        &mut self,
        member: &mut Member,
        world: &Shared,
        clock: &Arc<Clock>,
        partitions: &[i32],
    ) {
        if std::env::var_os("REGNOTIFY_SIM_DEBUG").is_some() {
            eprintln!("{:?} assign {partitions:?}", Instant::now());
        }
        world.lock().unwrap().rejoined();
        member.assign(world, partitions);
        if let Some(share) = self.scenario.share(member.fetch.len()) {
            world
                .lock()
                .unwrap()
                .share_from(member.life, clock.at(), share);
        }
    }

    /// The simulated consumer's poll: records of each assigned partition the pause plan and the
    /// flow counts let through.
    fn deliver(&mut self, member: &mut Member, world: &Shared) {
        let plan = member.flow.pause.plan();
        if plan.all {
            return;
        }
        let world = world.lock().unwrap();
        for (partition, next) in &mut member.fetch {
            let log = &world.logs[partition];
            let mut batch = 0;
            while (*next as usize) < log.len() && batch < FETCH_BATCH {
                if plan.is_paused(*partition) || member.flow.over(*partition) {
                    break;
                }
                if !member.flow.wait_for_room(Duration::ZERO) {
                    return;
                }
                let record = input_record(*partition, *next, &log[*next as usize]);
                member.flow.sent(*partition);
                if member.events.send(ConsumerEvent::Record(record)).is_err() {
                    return;
                }
                *next += 1;
                batch += 1;
            }
        }
    }
}

impl Member {
    /// Assigns `partitions` from their committed offsets, with the notes of finished offsets.
    fn assign(&mut self, world: &Shared, partitions: &[i32]) {
        let mut world = world.lock().unwrap();
        world.owned.extend(partitions);
        let mut notes = Vec::new();
        for partition in partitions {
            let (position, note) = world
                .committed
                .get(partition)
                .cloned()
                .unwrap_or((0, String::new()));
            self.fetch.insert(*partition, position);
            if !note.is_empty()
                && let Ok(finished) = finished::decode(&note, position)
                && !finished.is_empty()
            {
                notes.push(FinishedNote {
                    partition: *partition,
                    committed: position,
                    finished,
                });
            }
        }
        let _ = self
            .events
            .send(ConsumerEvent::TopicPartitions(self.topic_partitions));
        let _ = self
            .events
            .send(ConsumerEvent::Assigned(partitions.to_vec(), notes));
    }

    /// Kills the member: its work stops where it is, nothing more is committed by it.
    async fn crash(self) {
        self.hard_stop.cancel();
        self.dispatcher.abort();
        if let Some(writer) = self.writer {
            writer.abort();
        }
        drop(self.events);
        // Let the cancelled jobs see their cancellation.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}
