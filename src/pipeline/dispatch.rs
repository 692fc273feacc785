//! The dispatcher loop: the thin shell around [`DispatchCore`]. It takes what the consumer thread
//! reports (assignments, revocations and records, in the consumer's order), decodes records one
//! at a time in that order, starts the jobs the core hands out, books what workers report, and
//! carries out the core's answers: commits, revoke replies, cancellations and the pause plan.
//!
//! It decides nothing itself: which offset may be committed, which job may start, what a revoke
//! waits for and which partitions pause are the core's decisions. It never calls Alipay+ or
//! writes outputs, and it never blocks: a schema-registry outage stalls decoding, not the loop,
//! so revokes are answered and the consumer keeps polling.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::{DecodeError, EventDecoder};
use crate::config::{Ordering, ProcessingSettings};
use crate::event::RegistrationDecided;
use crate::observe::{self, Health};
use crate::pipeline::ages::{Ages, Taken};
use crate::pipeline::book::{Consumed, RevokeEnd, Slot, Stage};
use crate::pipeline::consumer::{ConsumerEvent, Control, FinishedNote, Flow, PipelineConsumer};
use crate::pipeline::decisions::{DispatchCore, Finish, OrderKey, Ticket};
use crate::pipeline::job::{Job, Work};
use crate::pipeline::record::InputRecord;
use crate::pipeline::worker::{WorkerContext, run_job};
use crate::telemetry::traces::{self, EventTrace, Tracing};

/// Pause between attempts to decode a record while the schema registry does not answer.
const REGISTRY_RETRY_INITIAL: Duration = Duration::from_millis(200);
const REGISTRY_RETRY_MAX: Duration = Duration::from_secs(10);
/// How long a stopping pipeline waits for cancelled workers to notice.
const ABANDON_GRACE: Duration = Duration::from_secs(2);
/// The least time between two commits that follow finished work (at-least-once): under load the
/// group coordinator sees at most one commit per member this often, and at most one at a time.
const COMMIT_GAP: Duration = Duration::from_millis(10);
/// The first pause after a refused commit; it doubles up to [`COMMIT_BACKOFF_MAX`].
const COMMIT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const COMMIT_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Bound on the producer flush at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// A consumed record with its decoded work.
#[derive(Debug)]
pub struct Payload {
    record: InputRecord,
    work: Work,
    trace: EventTrace,
}

/// A worker's report.
#[derive(Debug)]
struct Completion {
    slot: Slot,
    order_key: Option<OrderKey>,
    finish: Finish,
}

type Decoded = (
    Slot,
    InputRecord,
    EventTrace,
    Result<RegistrationDecided, DecodeError>,
);
type Decoding = Pin<Box<dyn Future<Output = Decoded> + Send>>;

#[derive(Debug)]
struct PendingRevoke {
    reply: std::sync::mpsc::SyncSender<TopicPartitionList>,
    deadline: Instant,
}

/// Why the dispatcher loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Shutdown was asked for.
    Requested,
    /// An output can never be written, or the consumer thread died: the service must fail.
    Fatal,
}

pub struct Dispatcher {
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
pub struct DispatcherParts {
    pub processing: ProcessingSettings,
    pub topic: String,
    /// Where offset commits go: the group's consumer (a simulated group in the simulation).
    pub consumer: Arc<dyn Committer>,
    pub decoder: Arc<EventDecoder>,
    pub worker: Arc<WorkerContext>,
    pub status: Arc<Health>,
    pub flow: Arc<Flow>,
    pub control: mpsc::UnboundedReceiver<Control>,
    /// Exactly-once: the transaction writer's "commit now" (see [`TransactionWriter::due`]).
    ///
    /// [`TransactionWriter::due`]: crate::pipeline::transactions::TransactionWriter::due
    pub transaction_due: Option<Arc<tokio::sync::Notify>>,
    /// Traces: off (contexts passed through) or exporting.
    pub tracing: Tracing,
    /// The consumer group (an attribute of every event span).
    pub group: String,
    /// `admin.event_stall_after`.
    pub event_stall_after: Duration,
}

impl Dispatcher {
    pub fn new(parts: DispatcherParts) -> Self {
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
    pub async fn run(
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

    fn on_assigned(&mut self, partitions: &[i32], notes: Vec<FinishedNote>) {
        observe::rebalance(&self.worker.stats, "assign", partitions);
        let (previous, fresh) = self.core.assign(partitions);
        for note in notes {
            if fresh.contains(&note.partition) {
                tracing::info!(
                    partition = note.partition,
                    committed = note.committed,
                    finished = note.finished.len(),
                    "an earlier owner finished offsets above the committed one: they are skipped"
                );
                self.core
                    .skip_finished(note.partition, note.committed, note.finished);
            }
        }
        tracing::trace!(?partitions, ?fresh, owned = ?self.core.book().owned(), "assigned");
        if let Some(previous) = previous {
            tracing::warn!("assignment received before the previous revoke was answered");
            self.apply_revoke_end(previous);
        }
        for partition in fresh {
            if let Some(generation) = self.core.book().generation(partition) {
                self.cancels
                    .insert((partition, generation), self.worker.hard_stop.child_token());
            }
        }
        self.publish_assignment();
    }

    fn on_revoked(
        &mut self,
        partitions: &[i32],
        lost: bool,
        deadline: Instant,
        reply: std::sync::mpsc::SyncSender<TopicPartitionList>,
    ) {
        observe::rebalance(
            &self.worker.stats,
            if lost { "lost" } else { "revoke" },
            partitions,
        );
        let (previous, cancel_now) = self.core.revoke(partitions, lost);
        if let Some(previous) = previous {
            self.apply_revoke_end(previous);
        }
        for assignment in cancel_now {
            if let Some(cancel) = self.cancels.get(&assignment) {
                cancel.cancel();
            }
        }
        for &partition in partitions {
            if let Some(generation) = self.core.book().generation(partition)
                && let Some(unsent) = self.unsent.remove(&(partition, generation))
            {
                unsent.cancel();
            }
        }
        self.forget_undecoded();
        self.pending_revoke = Some(PendingRevoke { reply, deadline });
    }

    /// Answers the pending revoke with the core's commit positions and cancels the revoked
    /// assignments' work still running (so a merchant's old event can never reach Alipay+ after
    /// the partition's next owner sent a newer one).
    fn finish_revoke(&mut self) {
        if let Some(end) = self.core.finish_revoke() {
            self.apply_revoke_end(end);
        }
    }

    fn apply_revoke_end(&mut self, end: RevokeEnd) {
        let RevokeEnd {
            cancel,
            commit,
            notes,
            held: _,
        } = end;
        for assignment in cancel {
            if let Some(token) = self.cancels.remove(&assignment) {
                token.cancel();
            }
            self.unsent.remove(&assignment);
            observe::pending(assignment.0, 0);
            self.ages.forget(assignment.0);
            observe::partition_gone(assignment.0);
        }
        if let Some(revoke) = self.pending_revoke.take() {
            let answer = self.commit_list(&commit, &notes);
            if self.committing.is_some() {
                self.held_revoke_answer = Some((revoke.reply, answer));
            } else {
                self.answer_revoke(&revoke.reply, answer);
            }
        } else {
            // Nobody waits for this answer (the consumer moved on): nothing will be committed.
            self.core.revoke_commit_settled();
        }
        self.forget_undecoded();
        self.publish_assignment();
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

    fn publish_assignment(&self) {
        let owned = self.core.book().len();
        self.status.assigned(owned);
        if let Some(partitions) = self.topic_partitions {
            self.worker.mpps.share(owned, partitions);
        }
    }

    fn on_record(&mut self, record: InputRecord) {
        self.received.push(record.partition);
        let partition = record.partition;
        match self
            .core
            .consume(partition, record.offset, record.fingerprint())
        {
            Consumed::Ignore => return,
            Consumed::Skip => {
                observe::skipped_finished(partition);
                return;
            }
            Consumed::Track(slot) => {
                let trace = self.take(&record);
                self.undecoded.push_back((slot, record, trace));
            }
            Consumed::Restart { slot, stale } => {
                tracing::warn!(
                    partition,
                    offset = record.offset,
                    "a new record at an offset already consumed (log truncated or topic \
                     recreated): the partition starts over from it"
                );
                observe::partition_restarted(partition);
                if let Some(token) = self.cancels.remove(&(partition, stale)) {
                    token.cancel();
                }
                self.unsent.remove(&(partition, stale));
                self.cancels.insert(
                    (partition, slot.generation),
                    self.worker.hard_stop.child_token(),
                );
                self.forget_undecoded();
                self.ages.forget(partition);
                let trace = self.take(&record);
                self.undecoded.push_back((slot, record, trace));
            }
        }
        observe::record_consumed(&self.worker.stats, partition);
        observe::pending(partition, self.core.book().window_len(partition));
    }

    /// A record will be processed: its trace starts and its age is kept until it is committed.
    fn take(&mut self, record: &InputRecord) -> EventTrace {
        let trace = self.tracing.start_event(traces::Consumed {
            topic: &record.topic,
            group: &self.group,
            partition: record.partition,
            offset: record.offset,
            key: record.key.as_deref(),
            headers: &record.headers,
        });
        self.ages.taken(
            Taken {
                partition: record.partition,
                offset: record.offset,
                timestamp_ms: record.timestamp_ms,
                key: record.key.as_deref(),
                trace_id: trace.trace_id_value(),
            },
            Instant::now().into_std(),
        );
        trace
    }

    /// Reports each partition's ages and warns, once each, of events unfinished for longer than
    /// `admin.event_stall_after`.
    fn observe_ages(&mut self) {
        let now = Instant::now().into_std();
        let wall_ms = chrono::Utc::now().timestamp_millis();
        observe::partition_ages(&self.ages.sample(now, wall_ms));
        for stalled in self.ages.stalled(now, self.event_stall_after) {
            observe::event_stalled(&stalled, self.event_stall_after);
        }
    }

    /// Drops undecoded records whose slot the core no longer holds (revoked, restarted, stopped).
    fn forget_undecoded(&mut self) {
        let core = &self.core;
        let head = self.undecoded.front().map(|(slot, ..)| *slot);
        self.undecoded
            .retain(|(slot, ..)| core.book().stage(*slot) == Some(Stage::Waiting));
        if self.undecoded.front().map(|(slot, ..)| *slot) != head {
            // The record whose decoding waited for a retry is gone (its partition was
            // revoked): the records behind it need not wait out its backoff.
            self.decode_retry = None;
            self.decode_delay = REGISTRY_RETRY_INITIAL;
        }
    }

    /// Decodes records in consumption order until one has to wait for I/O (the schema registry)
    /// or a transient failure's retry.
    fn pump_decode(&mut self) {
        while self.decoding.is_none() && self.decode_retry.is_none() {
            let Some((slot, record, trace)) = self.undecoded.pop_front() else {
                return;
            };
            let mut decoding = decode(Arc::clone(&self.decoder), slot, record, trace);
            // Most records need no I/O (a cached schema, or no registry): finish them now.
            match decoding
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
            {
                Poll::Ready(decoded) => self.on_decoded(decoded),
                Poll::Pending => self.decoding = Some(decoding),
            }
        }
    }

    fn on_decoded(&mut self, (slot, record, trace, result): Decoded) {
        let work = match result {
            Ok(event) => Work::Event(event),
            Err(error) if error.is_transient() => {
                if self.core.book().stage(slot) != Some(Stage::Waiting) {
                    // Revoked while it was decoded: its next owner decodes it.
                    self.decode_delay = REGISTRY_RETRY_INITIAL;
                    return;
                }
                let delay = self.decode_delay;
                tracing::warn!(
                    %error,
                    partition = slot.partition,
                    offset = slot.offset,
                    trace_id = %trace.trace_id(),
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot decode yet"
                );
                self.undecoded.push_front((slot, record, trace));
                self.decode_retry = Some(Instant::now() + delay);
                self.decode_delay = (delay * 2).min(REGISTRY_RETRY_MAX);
                return;
            }
            Err(error) => Work::Poison(error),
        };
        self.decode_delay = REGISTRY_RETRY_INITIAL;
        let key = self.order_key(slot.partition, &work);
        let accepted = self.core.decoded(Ticket {
            slot,
            key,
            payload: Payload {
                record,
                work,
                trace,
            },
        });
        tracing::trace!(?slot, accepted, "decoded");
    }

    fn order_key(&self, partition: i32, work: &Work) -> Option<OrderKey> {
        match (self.processing.ordering, work) {
            (Ordering::Partition, _) => Some(OrderKey::Partition(partition)),
            (Ordering::Key, Work::Event(event)) => {
                Some(OrderKey::Merchant(event.reference_merchant_id.clone()))
            }
            // An undecodable record has no merchant to wait for.
            (Ordering::Key, Work::Poison(_)) => None,
        }
    }

    fn spawn(&mut self, ticket: Ticket<Payload>) {
        let Ticket { slot, key, payload } = ticket;
        tracing::trace!(?slot, "job started");
        let cancel = self
            .cancels
            .get(&(slot.partition, slot.generation))
            .cloned()
            .unwrap_or_else(|| self.worker.hard_stop.child_token());
        let unsent = self
            .unsent
            .entry((slot.partition, slot.generation))
            .or_insert_with(|| cancel.child_token())
            .clone();
        let job = Job {
            record: payload.record,
            work: payload.work,
            generation: slot.generation,
            cancel,
            unsent,
            trace: payload.trace,
        };
        let worker = Arc::clone(&self.worker);
        let completions = self.completions_tx.clone();
        self.tasks.spawn(async move {
            let finish = run_job(&worker, &job).await;
            let _ = completions.send(Completion {
                slot,
                order_key: key,
                finish,
            });
        });
    }

    fn on_completion(&mut self, completion: Completion) {
        tracing::trace!(slot = ?completion.slot, finish = ?completion.finish, "job ended");
        let slot = completion.slot;
        if matches!(completion.finish, Finish::Terminal | Finish::Submitted)
            && self.core.book().stage(slot).is_some()
        {
            self.ages.finished(slot.partition, slot.offset);
        }
        self.core.finished(
            completion.slot,
            completion.order_key.as_ref(),
            completion.finish,
        );
        self.observe_windows(std::iter::once(completion.slot.partition));
    }

    fn observe_windows(&self, partitions: impl Iterator<Item = i32>) {
        for partition in partitions {
            observe::pending(partition, self.core.book().window_len(partition));
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

    /// The commit of these positions of owned partitions, each with its note of the finished
    /// offsets above it.
    fn positions(&self, positions: &[(i32, i64)]) -> TopicPartitionList {
        let notes: Vec<(i32, String)> = positions
            .iter()
            .map(|(partition, position)| (*partition, self.core.book().note(*partition, *position)))
            .collect();
        self.commit_list(positions, &notes)
    }

    fn commit_list(&self, positions: &[(i32, i64)], notes: &[(i32, String)]) -> TopicPartitionList {
        crate::pipeline::kafka::commit_list(&self.topic, positions, notes)
    }

    /// Commits what finished as soon as the previous commit has landed and [`COMMIT_GAP`] has
    /// passed since it was made, so that a crash repeats little beyond the work in flight.
    ///
    /// Finished events keep their in-flight slot until a commit covers them; when events wait
    /// for those slots, the commit goes at once, without the gap.
    fn commit_when_free(&mut self) {
        if self.committing.is_some() || !self.core.has_commits() {
            return;
        }
        if let Some(retry_at) = self.commit_refused.1
            && Instant::now() < retry_at
        {
            self.commit_due = Some(retry_at);
            return;
        }
        let due = self.last_commit + COMMIT_GAP;
        if Instant::now() < due && !self.core.short_of_slots() {
            self.commit_due.get_or_insert(due);
            return;
        }
        self.commit_due = None;
        self.start_commit();
    }

    /// Starts a commit of the positions that moved, unless one is under way. librdkafka reports
    /// an asynchronous manual commit's result only to a configured `offset_commit_cb`, which
    /// rdkafka does not set; so the commit is synchronous, on the blocking pool, and its result
    /// comes back to the loop ([`Dispatcher::on_commit_landed`]).
    fn start_commit(&mut self) {
        if self.committing.is_some() {
            return;
        }
        if let Some(retry_at) = self.commit_refused.1
            && Instant::now() < retry_at
        {
            return;
        }
        let positions = self.core.take_commits();
        if positions.is_empty() {
            return;
        }
        let tpl = self.positions(&positions);
        self.last_commit = Instant::now();
        let task = tokio::spawn(Arc::clone(&self.consumer).commit(tpl));
        self.committing = Some((positions, task));
    }

    fn on_commit_landed(&mut self, (positions, result): Landed) {
        let partitions: Vec<i32> = positions.iter().map(|(p, _)| *p).collect();
        match result {
            Ok(Ok(())) => {
                self.core.commit_landed(&partitions);
                if self.commit_refused.0 > 0 {
                    self.status.set_commits_refused(None);
                }
                self.commit_refused = (0, None);
                for (partition, offset) in positions {
                    self.ages.committed_below(partition, offset);
                    observe::committed(partition, offset);
                }
            }
            Ok(Err(error)) => {
                let pause = self.commit_refused_again();
                observe::commit_failed(&error);
                let refused = self.commit_refused.0;
                let permanent = commit_never_lands(&error);
                if permanent || refused >= COMMITS_REFUSED_UNREADY {
                    // Nothing is lost (the events stay uncommitted and are held back), but the
                    // service makes no durable progress: an operator must look.
                    tracing::error!(
                        %error,
                        refused_in_a_row = refused,
                        retry_in = ?pause,
                        "offset commits keep failing; /readyz answers 503 until one lands"
                    );
                    self.status.set_commits_refused(Some(format!(
                        "{refused} in a row, the last: {error}"
                    )));
                } else {
                    tracing::warn!(
                        refused_in_a_row = refused,
                        retry_in = ?pause,
                        "offset commit refused: the next one waits"
                    );
                }
                self.core.commit_failed(&partitions);
            }
            Err(error) => {
                tracing::error!(%error, "commit task failed");
                self.commit_refused_again();
                self.core.commit_failed(&partitions);
            }
        }
        if let Some((reply, answer)) = self.held_revoke_answer.take() {
            self.answer_revoke(&reply, answer);
        }
    }

    /// Hands the revoke's commit to the consumer thread, which reports
    /// [`ConsumerEvent::RevokeSettled`] once it has made it. When its callback stopped waiting,
    /// nothing is committed (which is safe) and the slots the revoke held are free at once.
    fn answer_revoke(
        &mut self,
        reply: &std::sync::mpsc::SyncSender<TopicPartitionList>,
        answer: TopicPartitionList,
    ) {
        if reply.send(answer).is_err() {
            self.core.revoke_commit_settled();
        }
    }

    /// Counts a refused commit and sets the pause before the next (doubling from
    /// [`COMMIT_BACKOFF_MIN`] to [`COMMIT_BACKOFF_MAX`]), so a coordinator that keeps refusing
    /// is not asked every few milliseconds; returns the pause.
    fn commit_refused_again(&mut self) -> Duration {
        let refused = self.commit_refused.0.saturating_add(1);
        let pause = commit_backoff(refused);
        self.commit_refused = (refused, Some(Instant::now() + pause));
        pause
    }

    /// Stops taking work, lets the work that can still settle finish within `shutdown_timeout`
    /// (committing as it goes), cancels the rest, commits the finished prefixes synchronously
    /// and flushes.
    async fn stop(mut self, mut events: mpsc::UnboundedReceiver<ConsumerEvent>) -> Exit {
        self.core.begin_stop();
        self.undecoded.clear();
        self.decoding = None;
        self.decode_retry = None;
        self.publish_pause();
        tracing::info!(
            in_flight = self.core.in_flight(),
            "stopping: finishing work in flight"
        );
        let deadline = Instant::now() + self.processing.shutdown_timeout;
        let mut events_open = true;
        while !self.core.is_fatal() && !self.core.stop_settled() {
            self.status.beat();
            let revoke_deadline = self.pending_revoke.as_ref().map(|revoke| revoke.deadline);
            tokio::select! {
                Some(completion) = self.completions.recv() => self.on_completion(completion),
                Some(control) = self.control.recv() => self.on_control(control),
                landed = commit_landed(&mut self.committing), if self.committing.is_some() => {
                    self.on_commit_landed(landed);
                }
                () = sleep_until_opt(revoke_deadline) => self.finish_revoke(),
                // The transaction writer failed for good: what it held can never settle, so
                // waiting out the shutdown timeout for it only delays the exit.
                () = self.worker.sink.writer_gone() => {
                    tracing::warn!(
                        in_flight = self.core.in_flight(),
                        "the transaction writer has ended: abandoning work in flight"
                    );
                    break;
                }
                _ = self.commit_tick.tick() => self.start_commit(),
                () = sleep_until_opt(self.commit_due) => {
                    self.commit_due = None;
                    self.commit_when_free();
                }
                event = events.recv(), if events_open => match event {
                    // Records are no longer taken; revokes are still answered.
                    Some(ConsumerEvent::Record(record)) => self.on_record(record),
                    Some(event) => self.on_event(event),
                    None => events_open = false,
                },
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(
                        in_flight = self.core.in_flight(),
                        "shutdown timeout passed, abandoning work in flight"
                    );
                    break;
                }
            }
            if self.core.revoke_settled() {
                self.finish_revoke();
            }
        }
        self.worker.hard_stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(ABANDON_GRACE, self.tasks.wait()).await;
        while let Ok(completion) = self.completions.try_recv() {
            self.on_completion(completion);
        }
        while let Ok(control) = self.control.try_recv() {
            self.on_control(control);
        }
        // The commit under way lands first: the final one must not be overtaken by older positions.
        if let Some((positions, task)) = self.committing.take() {
            let result = match tokio::time::timeout(FLUSH_TIMEOUT, task).await {
                Ok(result) => result,
                Err(_) => Ok(Err(KafkaError::Canceled)),
            };
            self.on_commit_landed((positions, result));
        }
        // A revoke still waiting gets its answer now, so those partitions' prefix is committed.
        self.finish_revoke();
        drop(events);
        // Outputs counted here are already acknowledged, so the commit need not wait for the
        // flush; committing first keeps it inside the shutdown budget.
        let positions = self.core.final_commits();
        let tpl = self.positions(&positions);
        let committed = if tpl.count() == 0 {
            Ok(Ok(()))
        } else {
            tokio::spawn(Arc::clone(&self.consumer).commit(tpl)).await
        };
        let sink = self.worker.sink.clone();
        let flushed = tokio::task::spawn_blocking(move || sink.flush(FLUSH_TIMEOUT)).await;
        if let Ok(Err(error)) = flushed {
            tracing::warn!(%error, "producer flush incomplete");
        }
        match committed {
            Ok(Ok(())) => tracing::info!("stopped: finished offsets committed"),
            Ok(Err(error)) => observe::commit_failed(&error),
            Err(error) => tracing::error!(%error, "final commit task failed"),
        }
        if self.core.is_fatal() {
            Exit::Fatal
        } else {
            Exit::Requested
        }
    }
}

/// Refused commits in a row (about half a minute of backoff) after which `/readyz` fails.
const COMMITS_REFUSED_UNREADY: u32 = 8;

/// A commit error no retry mends without an operator: the group or topic not authorised, or
/// the topic gone. It is still retried (a fixed ACL heals it) but fails readiness at once.
fn commit_never_lands(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::GroupAuthorizationFailed
                | Code::TopicAuthorizationFailed
                | Code::ClusterAuthorizationFailed
                | Code::UnknownTopic
        )
    )
}

/// A commit under way: it resolves with the coordinator's answer.
pub type CommitFuture = Pin<Box<dyn Future<Output = KafkaResult<()>> + Send>>;

/// Where the dispatcher's offset commits go. The group's consumer commits synchronously on the
/// blocking pool (librdkafka reports an asynchronous manual commit's result only to a commit
/// callback rdkafka does not set); the whole-service simulation answers from its simulated group.
pub trait Committer: Send + Sync {
    fn commit(self: Arc<Self>, offsets: TopicPartitionList) -> CommitFuture;
}

impl Committer for PipelineConsumer {
    fn commit(self: Arc<Self>, offsets: TopicPartitionList) -> CommitFuture {
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                Consumer::commit(&*self, &offsets, CommitMode::Sync)
            })
            .await
            .unwrap_or(Err(KafkaError::Canceled))
        })
    }
}

/// The pause after the `refused`-th refused commit in a row.
fn commit_backoff(refused: u32) -> Duration {
    let doublings = refused.saturating_sub(1).min(16);
    COMMIT_BACKOFF_MIN
        .saturating_mul(1 << doublings)
        .min(COMMIT_BACKOFF_MAX)
}

/// Decodes one record; the future owns it and gives it back with the result.
fn decode(
    decoder: Arc<EventDecoder>,
    slot: Slot,
    record: InputRecord,
    trace: EventTrace,
) -> Decoding {
    Box::pin(async move {
        let result = match record.value.as_deref() {
            Some(bytes) => decoder.decode(bytes).await,
            None => Err(DecodeError::Truncated {
                what: "record: it has no value",
            }),
        };
        (slot, record, trace, result)
    })
}

async fn next_decoded(decoding: &mut Option<Decoding>) -> Decoded {
    match decoding {
        Some(decoding) => decoding.await,
        None => std::future::pending().await,
    }
}

/// A commit under way: its positions and the blocking task that makes it.
type Committing = (Vec<(i32, i64)>, JoinHandle<KafkaResult<()>>);

/// A commit's positions and what became of it.
type Landed = (
    Vec<(i32, i64)>,
    Result<KafkaResult<()>, tokio::task::JoinError>,
);

/// Waits for the commit under way; only polled while there is one.
async fn commit_landed(committing: &mut Option<Committing>) -> Landed {
    match committing {
        Some((_, task)) => {
            let result = task.await;
            let positions = committing
                .take()
                .map(|(positions, _)| positions)
                .unwrap_or_default();
            (positions, result)
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_commits_back_off_doubling_to_a_ceiling() {
        assert_eq!(commit_backoff(1), COMMIT_BACKOFF_MIN);
        assert_eq!(commit_backoff(2), COMMIT_BACKOFF_MIN * 2);
        assert_eq!(commit_backoff(4), COMMIT_BACKOFF_MIN * 8);
        assert_eq!(commit_backoff(8), COMMIT_BACKOFF_MAX);
        assert_eq!(commit_backoff(u32::MAX), COMMIT_BACKOFF_MAX);
    }
}
