//! The dispatcher loop: the thin shell around [`DispatchCore`]. It takes what the consumer thread
//! reports (assignments, revocations and records, in the consumer's order), decodes records one
//! at a time in that order, starts the jobs the core hands out, books what workers report, and
//! carries out the core's answers: commits, revoke replies, cancellations and the pause plan.
//!
//! It decides nothing itself: which offset may be committed, which job may start, what a revoke
//! waits for and which partitions pause are the core's decisions. It never calls Alipay+ or
//! writes outputs, and it never blocks: a schema-registry outage stalls decoding, not the loop,
//! so revokes are answered and the consumer keeps polling.
//!
//! The loop and what follows every event are here; the parts are `intake` (records taken and
//! decoded in order), `jobs` (started and ended), `revoke` (assignments and revocations),
//! `commits` (offset commits and where they go), `observation` (ages and windows) and `stop`.

mod commits;
mod intake;
mod jobs;
mod observation;
mod revoke;
mod stop;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::TopicPartitionList;
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::EventDecoder;
use crate::config::ProcessingSettings;
use crate::observe::{self, Health};
use crate::pipeline::ages::Ages;
use crate::pipeline::book::Slot;
use crate::pipeline::consumer::{ConsumerEvent, Control, Flow};
use crate::pipeline::decisions::DispatchCore;
use crate::pipeline::job::Work;
use crate::pipeline::record::InputRecord;
use crate::pipeline::worker::WorkerContext;
use crate::telemetry::traces::{EventTrace, Tracing};
#[cfg(doc)]
use commits::COMMIT_GAP;
#[cfg(test)]
pub(crate) use commits::CommitFuture;
pub(crate) use commits::Committer;
use commits::{Committing, commit_landed};
use intake::{Decoding, REGISTRY_RETRY_INITIAL, next_decoded};
use jobs::Completion;
use revoke::PendingRevoke;

/// A consumed record with its decoded work.
#[derive(Debug)]
pub(crate) struct Payload {
    record: InputRecord,
    work: Work,
    trace: EventTrace,
}

/// Why the dispatcher loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Shutdown was asked for.
    Requested,
    /// An output can never be written, or the consumer thread died: the service must fail.
    Fatal,
}

pub(crate) struct Dispatcher {
    processing: ProcessingSettings,
    topic: String,
    consumer: Arc<dyn Committer>,
    decoder: Arc<EventDecoder>,
    worker: Arc<WorkerContext>,
    status: Arc<Health>,
    flow: Arc<Flow>,
    core: DispatchCore<Payload>,
    /// Consumed records not decoded yet, in consumption order; the front one is decoding.
    undecoded: VecDeque<(Slot, InputRecord, EventTrace)>,
    decoding: Option<Decoding>,
    /// When the front record failed to decode for a transient reason: when to try again.
    decode_retry: Option<Instant>,
    /// The pause after the next transient decode failure (doubling, reset by a decode).
    decode_delay: Duration,
    /// Cancels the work of one assignment (partition, generation).
    cancels: HashMap<(i32, u64), CancellationToken>,
    /// Per assignment, a child of its cancel token that also fires when its partition is
    /// revoked: jobs that have not sent their call yet (waiting for a send slot, a backoff or
    /// the circuit) stop then rather than hold the revoke until the drain timeout; the new
    /// owner sends them. A call already out is still awaited.
    unsent: HashMap<(i32, u64), CancellationToken>,
    completions_tx: mpsc::UnboundedSender<Completion>,
    completions: mpsc::UnboundedReceiver<Completion>,
    control: mpsc::UnboundedReceiver<Control>,
    tasks: TaskTracker,
    pending_revoke: Option<PendingRevoke>,
    published_pause: Option<u64>,
    /// The input topic's partition count, once read: the members' shares of the send-rate
    /// limits divide it.
    topic_partitions: Option<usize>,
    /// Partitions of the records taken off the channel since the flow counts were last told.
    received: Vec<i32>,
    /// Commits at least this often (`commit_interval`); between ticks a commit follows finished
    /// work as soon as the previous one was answered ([`Dispatcher::commit_when_free`]).
    commit_tick: Interval,
    /// The commit under way, one at a time (so commits land in the order they were made), with
    /// the positions it commits.
    committing: Option<Committing>,
    /// A revoke's answer held until the commit under way has landed: sent first, the older
    /// positions of that commit could land after the revoke's.
    held_revoke_answer: Option<(
        std::sync::mpsc::SyncSender<TopicPartitionList>,
        TopicPartitionList,
    )>,
    /// When the last commit was made.
    last_commit: Instant,
    /// When a commit that waits for [`COMMIT_GAP`] (or a refused commit's backoff) may go.
    commit_due: Option<Instant>,
    /// Commits refused in a row, and the backoff they earned: no commit goes before
    /// `commit_refused.1`.
    commit_refused: (u32, Option<Instant>),
    /// Whether the circuits hold the intake: every partition is paused while it does.
    circuit: tokio::sync::watch::Receiver<bool>,
    /// Woken when a job parks on an open circuit and gives its slot back.
    parking: Arc<crate::pipeline::parking::Parking>,
    /// Exactly-once: tells the transaction writer that events wait for the slots of outputs it
    /// holds.
    transaction_due: Option<Arc<tokio::sync::Notify>>,
    /// Each event's trace starts when its record is consumed.
    tracing: Tracing,
    group: String,
    /// The age of what is consumed and not committed, for the time-based lag metrics and the
    /// stall warnings (`admin.event_stall_after`).
    ages: Ages,
    event_stall_after: Duration,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("topic", &self.topic)
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

/// What the dispatcher is built from.
#[allow(missing_debug_implementations)]
pub(crate) struct DispatcherParts {
    pub(crate) processing: ProcessingSettings,
    pub(crate) topic: String,
    /// Where offset commits go: the group's consumer (a simulated group in the simulation).
    pub(crate) consumer: Arc<dyn Committer>,
    pub(crate) decoder: Arc<EventDecoder>,
    pub(crate) worker: Arc<WorkerContext>,
    pub(crate) status: Arc<Health>,
    pub(crate) flow: Arc<Flow>,
    pub(crate) control: mpsc::UnboundedReceiver<Control>,
    /// Exactly-once: the transaction writer's "commit now" (see [`TransactionWriter::due`]).
    ///
    /// [`TransactionWriter::due`]: crate::pipeline::transactions::TransactionWriter::due
    pub(crate) transaction_due: Option<Arc<tokio::sync::Notify>>,
    /// Traces: off (contexts passed through) or exporting.
    pub(crate) tracing: Tracing,
    /// The consumer group (an attribute of every event span).
    pub(crate) group: String,
    /// `admin.event_stall_after`.
    pub(crate) event_stall_after: Duration,
}

impl Dispatcher {
    pub(crate) fn new(parts: DispatcherParts) -> Self {
        let processing = parts.processing;
        let (completions_tx, completions) = mpsc::unbounded_channel();
        let mut commit_tick = tokio::time::interval(processing.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let core = DispatchCore::new(
            processing.exactly_once,
            processing.max_in_flight,
            processing.max_pending_per_partition,
        )
        .with_parking(Arc::clone(&parts.worker.parking));
        let circuit = parts.worker.circuit.subscribe();
        Dispatcher {
            circuit,
            parking: Arc::clone(&parts.worker.parking),
            processing,
            topic: parts.topic,
            consumer: parts.consumer,
            decoder: parts.decoder,
            worker: parts.worker,
            status: parts.status,
            flow: parts.flow,
            core,
            undecoded: VecDeque::new(),
            decoding: None,
            decode_retry: None,
            decode_delay: REGISTRY_RETRY_INITIAL,
            cancels: HashMap::new(),
            unsent: HashMap::new(),
            completions_tx,
            completions,
            control: parts.control,
            tasks: TaskTracker::new(),
            pending_revoke: None,
            published_pause: None,
            topic_partitions: None,
            received: Vec::new(),
            commit_tick,
            committing: None,
            held_revoke_answer: None,
            last_commit: Instant::now(),
            commit_due: None,
            commit_refused: (0, None),
            transaction_due: parts.transaction_due,
            tracing: parts.tracing,
            group: parts.group,
            ages: Ages::default(),
            event_stall_after: parts.event_stall_after,
        }
    }

    /// Runs until `shutdown` fires, the consumer thread ends or an output can never be written;
    /// then stops cleanly: finishes the work in flight that can still settle within
    /// `shutdown_timeout`, commits the finished prefixes and flushes.
    pub(crate) async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<ConsumerEvent>,
        shutdown: CancellationToken,
    ) -> Exit {
        loop {
            self.status.beat();
            if self.core.is_fatal() {
                break;
            }
            self.publish_pause();
            let revoke_deadline = self.pending_revoke.as_ref().map(|revoke| revoke.deadline);
            let retry_at = self.decode_retry;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(control) = self.control.recv() => self.on_control(control),
                landed = commit_landed(&mut self.committing), if self.committing.is_some() => {
                    self.on_commit_landed(landed);
                }
                Some(completion) = self.completions.recv() => self.on_completion(completion),
                () = sleep_until_opt(revoke_deadline) => {
                    tracing::warn!("rebalance drain timeout passed with work in flight");
                    self.finish_revoke();
                }
                decoded = next_decoded(&mut self.decoding), if self.decoding.is_some() => {
                    self.decoding = None;
                    self.on_decoded(decoded);
                }
                () = sleep_until_opt(retry_at) => self.decode_retry = None,
                _ = self.commit_tick.tick() => {
                    self.start_commit();
                    self.observe_ages();
                }
                () = sleep_until_opt(self.commit_due) => {
                    self.commit_due = None;
                    self.commit_when_free();
                }
                Ok(()) = self.circuit.changed() => {
                    let held = *self.circuit.borrow_and_update();
                    self.core.hold_intake(held);
                }
                // A job parked (the next job may start in the slot it gave back) or resumed.
                () = self.parking.slot_given_back() => {
                    for (slot, parked) in self.parking.take_reports() {
                        self.core.parked(slot, parked);
                    }
                }
                event = events.recv() => match event {
                    Some(event) => self.on_event(event),
                    None => break,
                },
            }
            self.after_event();
        }
        self.stop(events).await
    }

    fn on_event(&mut self, event: ConsumerEvent) {
        match event {
            ConsumerEvent::Assigned(partitions, notes) => self.on_assigned(&partitions, notes),
            ConsumerEvent::Revoked {
                partitions,
                lost,
                deadline,
                reply,
            } => self.on_revoked(&partitions, lost, deadline.into(), reply),
            ConsumerEvent::Record(record) => self.on_record(record),
            ConsumerEvent::RevokeSettled => self.core.revoke_commit_settled(),
            ConsumerEvent::TopicPartitions(count) => self.topic_partitions = Some(count),
        }
    }

    /// What follows every event: answer a revoke that has settled, start what may start, and
    /// decode what waits.
    fn after_event(&mut self) {
        if self.core.revoke_settled() {
            self.finish_revoke();
        }
        self.pump_decode();
        while let Some(ticket) = self.core.next_start() {
            self.spawn(ticket);
        }
        self.commit_when_free();
        if let Some(due) = &self.transaction_due
            && self.core.short_of_slots()
        {
            // The transaction writer commits what it holds without waiting out its interval.
            due.notify_one();
        }
        observe::in_flight(self.core.in_flight());
        observe::awaiting_commit(self.core.undurable());
        let book = self.core.book();
        self.flow.booked(
            &self.received,
            book.owned()
                .into_iter()
                .map(|(partition, _)| (partition, book.window_len(partition))),
            self.core.waiting_counted(),
            self.slots_free_for_keys(),
        );
        self.received.clear();
    }

    fn on_control(&mut self, control: Control) {
        match control {
            Control::PrepareCommit { settled, reply } => {
                let _ = reply.send(self.core.prepare(&settled));
            }
            Control::TransactionCommitted(settled) => {
                for slot in &settled {
                    // Still in the books: not of an assignment that has since ended.
                    if self.core.book().stage(*slot).is_some() {
                        self.ages.committed(slot.partition, slot.offset);
                    }
                }
                self.core.transaction_committed(&settled);
                self.observe_windows(settled.iter().map(|slot| slot.partition));
            }
        }
    }

    /// The slots free while nothing is being decoded: what waits then, waits for its key (under
    /// `ordering = "partition"`, its partition's turn), not for a slot or a decode. Records still
    /// being decoded (a schema fetched from the registry, say) may fill the free slots soon, so
    /// then none counts: the consumer thread's intake bound holds for them.
    fn slots_free_for_keys(&self) -> usize {
        if self.undecoded.is_empty() && self.decoding.is_none() && self.decode_retry.is_none() {
            self.core.free_slots()
        } else {
            0
        }
    }

    /// Hands the core's pause plan to the consumer thread when it changed.
    fn publish_pause(&mut self) {
        let version = self.core.pause_version();
        if self.published_pause == Some(version) {
            return;
        }
        self.published_pause = Some(version);
        let plan = self.core.pause_plan();
        tracing::debug!(all = plan.all, partitions = ?plan.partitions, "pause plan");
        self.flow.pause.publish(plan);
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
