//! The dispatcher: the single owner of the pipeline's bookkeeping. It takes records from the
//! consumer thread, decodes them, starts workers in key order within `max_in_flight`, pauses and
//! resumes partitions to keep memory bounded, and decides which offsets may be committed.
//!
//! Every decision about offsets is made here and nowhere else: an offset is committable only when
//! its worker reported [`Finish::Terminal`] (all outputs acknowledged) and every earlier offset of
//! its partition did too ([`CommitWatermark`]). It never calls Alipay+ or writes outputs itself.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::{DecodeError, EventDecoder};
use crate::config::{Ordering, ProcessingSettings};
use crate::observe::{self, Health};
use crate::pipeline::consumer::{ConsumerEvent, Control, PipelineConsumer};
use crate::pipeline::keyed::KeyedQueue;
use crate::pipeline::record::InputRecord;
use crate::pipeline::transactions::{Prepared, SettledOffset};
use crate::pipeline::watermark::CommitWatermark;
use crate::pipeline::worker::{Finish, Job, Work, WorkerContext, run_job};

/// Pause between attempts to decode a record while the schema registry does not answer.
const REGISTRY_RETRY_INITIAL: Duration = Duration::from_millis(200);
const REGISTRY_RETRY_MAX: Duration = Duration::from_secs(10);
/// How long a stopping pipeline waits for cancelled workers to notice.
const ABANDON_GRACE: Duration = Duration::from_secs(2);
/// Bound on the producer flush at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Jobs waiting (for their key or a slot) beyond this many times `max_in_flight` pause every
/// partition; they resume at half of it.
const WAITING_FACTOR: usize = 4;

/// Which events must wait for each other.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum OrderKey {
    Merchant(String),
    Partition(i32),
}

/// A worker's report.
#[derive(Debug)]
struct Completion {
    partition: i32,
    offset: i64,
    generation: u64,
    order_key: Option<OrderKey>,
    finish: Finish,
}

#[derive(Debug)]
struct PartitionState {
    watermark: CommitWatermark,
    generation: u64,
    /// Paused because its own window is full.
    paused: bool,
    in_flight: usize,
    revoking: bool,
    /// Cancels this assignment's jobs once the partition is gone.
    cancel: CancellationToken,
    /// Exactly-once: the position last committed in a transaction.
    committed_in_transaction: Option<i64>,
    /// Started jobs whose offset is not settled yet: running, or (exactly-once) handed to the
    /// transaction writer and not committed. A revoke drains to zero.
    unsettled: usize,
}

#[derive(Debug)]
struct PendingRevoke {
    partitions: Vec<i32>,
    reply: std::sync::mpsc::SyncSender<Vec<(i32, i64)>>,
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
    consumer: Arc<PipelineConsumer>,
    decoder: Arc<EventDecoder>,
    worker: Arc<WorkerContext>,
    status: Arc<Health>,
    partitions: HashMap<i32, PartitionState>,
    keyed: KeyedQueue<OrderKey, Job>,
    /// Jobs whose key is free, waiting for a slot under `max_in_flight`.
    ready: VecDeque<Job>,
    in_flight: usize,
    /// Every partition is paused because too many jobs wait.
    globally_paused: bool,
    completions_tx: mpsc::UnboundedSender<Completion>,
    completions: mpsc::UnboundedReceiver<Completion>,
    control: mpsc::UnboundedReceiver<Control>,
    tasks: TaskTracker,
    next_generation: u64,
    pending_revoke: Option<PendingRevoke>,
    commit_tick: Interval,
    exit: Exit,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("topic", &self.topic)
            .field("partitions", &self.partitions.len())
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    pub fn new(
        processing: ProcessingSettings,
        topic: String,
        consumer: Arc<PipelineConsumer>,
        decoder: Arc<EventDecoder>,
        worker: Arc<WorkerContext>,
        status: Arc<Health>,
        control: mpsc::UnboundedReceiver<Control>,
    ) -> Self {
        let (completions_tx, completions) = mpsc::unbounded_channel();
        let mut commit_tick = tokio::time::interval(processing.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Dispatcher {
            processing,
            topic,
            consumer,
            decoder,
            worker,
            status,
            partitions: HashMap::new(),
            keyed: KeyedQueue::new(),
            ready: VecDeque::new(),
            in_flight: 0,
            globally_paused: false,
            completions_tx,
            completions,
            control,
            tasks: TaskTracker::new(),
            next_generation: 0,
            pending_revoke: None,
            commit_tick,
            exit: Exit::Requested,
        }
    }

    /// Runs until `shutdown` fires, the consumer thread ends or an output can never be written;
    /// then stops cleanly: finishes the work in flight within `shutdown_timeout`, commits the
    /// finished prefix and flushes.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<ConsumerEvent>,
        shutdown: CancellationToken,
    ) -> Exit {
        loop {
            self.status.beat();
            if self.exit == Exit::Fatal {
                break;
            }
            let revoke_deadline = self.pending_revoke.as_ref().map(|revoke| revoke.deadline);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(control) = self.control.recv() => self.on_control(control),
                Some(completion) = self.completions.recv() => self.on_completion(completion),
                () = sleep_until_opt(revoke_deadline) => {
                    tracing::warn!("rebalance drain timeout passed with work in flight");
                    self.finish_revoke();
                }
                _ = self.commit_tick.tick() => self.commit_async(),
                event = events.recv() => match event {
                    Some(ConsumerEvent::Assigned(partitions)) => self.on_assigned(&partitions),
                    Some(ConsumerEvent::Record(record)) => {
                        if !self.on_record(record, &shutdown).await {
                            break;
                        }
                    }
                    None => break,
                },
            }
        }
        self.stop(events).await
    }

    fn on_control(&mut self, control: Control) {
        match control {
            Control::Revoked {
                partitions,
                lost,
                deadline,
                reply,
            } => self.on_revoked(partitions, lost, deadline.into(), reply),
            Control::CommitFailed(partitions) => {
                for partition in partitions {
                    if let Some(state) = self.partitions.get_mut(&partition) {
                        state.watermark.forget_taken();
                    }
                }
            }
            Control::PrepareCommit { settled, reply } => {
                let prepared = Prepared {
                    positions: self.prospective_positions(&settled),
                    owned: self
                        .partitions
                        .iter()
                        .map(|(partition, state)| (*partition, state.generation))
                        .collect(),
                };
                let _ = reply.send(prepared);
            }
            Control::TransactionCommitted(settled) => {
                let mut touched = Vec::new();
                for offset in settled {
                    if let Some(state) = self.partitions.get_mut(&offset.partition)
                        && state.generation == offset.generation
                    {
                        state.watermark.complete(offset.offset);
                        state.committed_in_transaction = state.watermark.committable();
                        state.unsettled = state.unsettled.saturating_sub(1);
                        touched.push(offset.partition);
                    }
                }
                touched.dedup();
                for partition in touched {
                    self.update_pause(partition);
                }
                self.finish_revoke_if_drained();
            }
        }
    }

    /// Exactly-once: the commit positions the settled offsets would allow, beyond what earlier
    /// transactions committed, for partitions still owned.
    fn prospective_positions(&self, settled: &[SettledOffset]) -> Vec<(i32, i64)> {
        let mut trial: HashMap<i32, CommitWatermark> = HashMap::new();
        for offset in settled {
            let Some(state) = self.partitions.get(&offset.partition) else {
                continue;
            };
            // Revoking partitions are still owned until the revoke is answered: their finished
            // work is committed in the meantime, which is what lets the drain finish.
            if state.generation != offset.generation {
                continue;
            }
            trial
                .entry(offset.partition)
                .or_insert_with(|| state.watermark.clone())
                .complete(offset.offset);
        }
        trial
            .into_iter()
            .filter_map(|(partition, watermark)| {
                let position = watermark.committable()?;
                let before = self.partitions.get(&partition)?.committed_in_transaction;
                (before < Some(position)).then_some((partition, position))
            })
            .collect()
    }

    fn on_assigned(&mut self, partitions: &[i32]) {
        observe::rebalance(&self.worker.stats, "assign", partitions);
        let mut resume = TopicPartitionList::new();
        for &partition in partitions {
            resume.add_partition(&self.topic, partition);
            // A partition still owned (cooperative rebalancing never re-sends those) keeps its
            // state; replacing it would orphan its jobs in flight.
            if self.partitions.contains_key(&partition) {
                continue;
            }
            self.next_generation += 1;
            self.partitions.insert(
                partition,
                PartitionState {
                    watermark: CommitWatermark::new(),
                    generation: self.next_generation,
                    paused: false,
                    in_flight: 0,
                    revoking: false,
                    cancel: self.worker.hard_stop.child_token(),
                    committed_in_transaction: None,
                    unsettled: 0,
                },
            );
        }
        // librdkafka keeps a partition's application pause across unassign and assign: one
        // paused when it was revoked would otherwise never fetch again after coming back.
        if resume.count() > 0
            && !self.globally_paused
            && let Err(error) = self.consumer.resume(&resume)
        {
            tracing::warn!(%error, "cannot resume newly assigned partitions");
        }
        self.publish_assignment();
    }

    fn on_revoked(
        &mut self,
        partitions: Vec<i32>,
        lost: bool,
        deadline: Instant,
        reply: std::sync::mpsc::SyncSender<Vec<(i32, i64)>>,
    ) {
        observe::rebalance(
            &self.worker.stats,
            if lost { "lost" } else { "revoke" },
            &partitions,
        );
        for partition in &partitions {
            if let Some(state) = self.partitions.get_mut(partition) {
                state.revoking = true;
                if lost {
                    // Another member may already be working on these events.
                    state.cancel.cancel();
                }
            }
        }
        // Work not started yet for these partitions is dropped: its offsets stay uncommitted
        // and the partitions' next owner consumes it again.
        let revoked = |partition: i32| partitions.contains(&partition);
        let _ = self
            .keyed
            .retain_queued(|_, job| !revoked(job.record.partition));
        let (dropped, kept): (Vec<Job>, Vec<Job>) = self
            .ready
            .drain(..)
            .partition(|job| revoked(job.record.partition));
        self.ready = kept.into();
        for job in dropped {
            if let Some(key) = self.order_key(&job) {
                self.release_key(key);
            }
        }
        self.pending_revoke = Some(PendingRevoke {
            // Nothing may be committed for a lost assignment.
            partitions: if lost { Vec::new() } else { partitions },
            reply,
            deadline,
        });
        self.finish_revoke_if_drained();
        self.start_ready();
    }

    fn finish_revoke_if_drained(&mut self) {
        let drained = self.pending_revoke.as_ref().is_some_and(|revoke| {
            revoke.partitions.iter().all(|partition| {
                self.partitions
                    .get(partition)
                    .is_none_or(|state| state.unsettled == 0)
            })
        });
        if drained {
            self.finish_revoke();
        }
    }

    /// Answers the revoke callback with the finished prefixes and forgets the partitions; their
    /// jobs still running are cancelled (so a merchant's old event can never reach Alipay+ after
    /// the partition's next owner sent a newer one), and late completions are dropped by
    /// generation.
    fn finish_revoke(&mut self) {
        let Some(revoke) = self.pending_revoke.take() else {
            return;
        };
        let mut offsets = Vec::new();
        // Under exactly-once, drained work was committed by its transaction already.
        let partitions = if self.processing.exactly_once {
            &[][..]
        } else {
            &revoke.partitions[..]
        };
        for partition in partitions {
            if let Some(state) = self.partitions.get(partition)
                && let Some(position) = state.watermark.committable()
            {
                offsets.push((*partition, position));
            }
        }
        self.partitions.retain(|partition, state| {
            if state.revoking {
                state.cancel.cancel();
                observe::pending(*partition, 0);
            }
            !state.revoking
        });
        let _ = revoke.reply.send(offsets);
        self.publish_assignment();
    }

    fn publish_assignment(&self) {
        self.status.assigned(self.partitions.len());
    }

    /// `false` when the pipeline must stop (shutdown fired while waiting on the registry).
    async fn on_record(&mut self, record: InputRecord, shutdown: &CancellationToken) -> bool {
        let partition = record.partition;
        let Some(state) = self.partitions.get_mut(&partition) else {
            return true;
        };
        if state.revoking {
            return true;
        }
        if let Err(error) = state.watermark.track(record.offset) {
            tracing::warn!(%error, partition, "record out of order, ignored");
            return true;
        }
        let generation = state.generation;
        let cancel = state.cancel.clone();
        observe::record_consumed(&self.worker.stats, partition);
        let Some(work) = self.decode(record.value.as_deref(), shutdown).await else {
            return false;
        };
        // A revoke handled while the registry was awaited may have taken the partition away.
        let still_owned = self
            .partitions
            .get(&partition)
            .is_some_and(|state| state.generation == generation && !state.revoking);
        if !still_owned {
            return true;
        }
        let job = Job {
            record,
            work,
            generation,
            cancel,
        };
        match self.order_key(&job) {
            Some(key) => {
                if let Some(job) = self.keyed.push(key, job) {
                    self.ready.push_back(job);
                }
            }
            None => self.ready.push_back(job),
        }
        self.update_pause(partition);
        self.start_ready();
        true
    }

    /// Decodes a value, waiting out registry outages while still serving revokes, completions
    /// and commits. `None` when shutdown fired meanwhile.
    async fn decode(&mut self, value: Option<&[u8]>, shutdown: &CancellationToken) -> Option<Work> {
        let Some(bytes) = value else {
            return Some(Work::Poison(DecodeError::Truncated {
                what: "record: it has no value",
            }));
        };
        let mut delay = REGISTRY_RETRY_INITIAL;
        loop {
            let decoder = Arc::clone(&self.decoder);
            match decoder.decode(bytes).await {
                Ok(event) => return Some(Work::Event(event)),
                Err(error) if error.is_transient() => {
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot decode yet");
                    let retry_at = Instant::now() + delay;
                    loop {
                        let revoke_deadline =
                            self.pending_revoke.as_ref().map(|revoke| revoke.deadline);
                        tokio::select! {
                            biased;
                            () = shutdown.cancelled() => return None,
                            Some(control) = self.control.recv() => self.on_control(control),
                            Some(completion) = self.completions.recv() => {
                                self.on_completion(completion);
                            }
                            () = sleep_until_opt(revoke_deadline) => self.finish_revoke(),
                            _ = self.commit_tick.tick() => self.commit_async(),
                            () = tokio::time::sleep_until(retry_at) => break,
                        }
                    }
                    delay = (delay * 2).min(REGISTRY_RETRY_MAX);
                }
                Err(error) => return Some(Work::Poison(error)),
            }
        }
    }

    fn order_key(&self, job: &Job) -> Option<OrderKey> {
        match (self.processing.ordering, &job.work) {
            (Ordering::Partition, _) => Some(OrderKey::Partition(job.record.partition)),
            (Ordering::Key, Work::Event(event)) => {
                Some(OrderKey::Merchant(event.reference_merchant_id.clone()))
            }
            // An undecodable record has no merchant to wait for.
            (Ordering::Key, Work::Poison(_)) => None,
        }
    }

    /// The key's current job is done: its next queued job, if any, becomes ready.
    fn release_key(&mut self, key: OrderKey) {
        if let Some(next) = self.keyed.finish(&key) {
            self.ready.push_back(next);
        }
    }

    fn start_ready(&mut self) {
        while self.in_flight < self.processing.max_in_flight {
            let Some(job) = self.ready.pop_front() else {
                break;
            };
            self.spawn(job);
        }
        observe::in_flight(self.in_flight);
        self.update_global_pause();
    }

    fn spawn(&mut self, job: Job) {
        let order_key = self.order_key(&job);
        self.in_flight += 1;
        if let Some(state) = self.partitions.get_mut(&job.record.partition) {
            state.in_flight += 1;
            state.unsettled += 1;
        }
        let worker = Arc::clone(&self.worker);
        let completions = self.completions_tx.clone();
        self.tasks.spawn(async move {
            let finish = run_job(&worker, &job).await;
            let _ = completions.send(Completion {
                partition: job.record.partition,
                offset: job.record.offset,
                generation: job.generation,
                order_key,
                finish,
            });
        });
    }

    fn on_completion(&mut self, completion: Completion) {
        if let Some(key) = completion.order_key.clone() {
            self.release_key(key);
        }
        let partition = completion.partition;
        self.settle(&completion);
        self.update_pause(partition);
        self.finish_revoke_if_drained();
        self.start_ready();
    }

    /// Pauses a partition whose window is full, resumes it once half of it has drained.
    fn update_pause(&mut self, partition: i32) {
        let max = self.processing.max_pending_per_partition;
        let Some(state) = self.partitions.get_mut(&partition) else {
            return;
        };
        let window = state.watermark.window_len();
        observe::pending(partition, window);
        let pause = if !state.paused && window >= max {
            true
        } else if state.paused && window <= max / 2 {
            false
        } else {
            return;
        };
        state.paused = pause;
        tracing::debug!(partition, paused = pause, window, "partition flow control");
        // While everything is paused globally, the global resume takes care of this partition.
        if !self.globally_paused {
            self.set_paused(&[partition], pause);
        }
    }

    /// Pauses every partition while too many jobs wait for their key or a slot, so that memory
    /// stays bounded however many partitions are assigned.
    fn update_global_pause(&mut self) {
        let waiting = self.ready.len() + self.keyed.queued_len();
        let limit = self.processing.max_in_flight.saturating_mul(WAITING_FACTOR);
        if !self.globally_paused && waiting >= limit {
            self.globally_paused = true;
            let all: Vec<i32> = self.partitions.keys().copied().collect();
            self.set_paused(&all, true);
            tracing::debug!(waiting, "all partitions paused: too many events waiting");
        } else if self.globally_paused && waiting <= limit / 2 {
            self.globally_paused = false;
            let unpaused: Vec<i32> = self
                .partitions
                .iter()
                .filter(|(_, state)| !state.paused)
                .map(|(partition, _)| *partition)
                .collect();
            self.set_paused(&unpaused, false);
        }
    }

    fn set_paused(&self, partitions: &[i32], pause: bool) {
        if partitions.is_empty() {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for partition in partitions {
            tpl.add_partition(&self.topic, *partition);
        }
        let result = if pause {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        if let Err(error) = result {
            tracing::warn!(%error, ?partitions, pause, "cannot pause or resume partitions");
        }
    }

    /// Positions for a consumer commit; none under exactly-once, where offsets are committed
    /// only inside transactions.
    fn commit_positions(&mut self, only_new: bool) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        if self.processing.exactly_once {
            return tpl;
        }
        for (partition, state) in &mut self.partitions {
            if state.revoking {
                continue;
            }
            let position = if only_new {
                state.watermark.take_commit()
            } else {
                state.watermark.committable()
            };
            if let Some(position) = position
                && let Err(error) =
                    tpl.add_partition_offset(&self.topic, *partition, Offset::Offset(position))
            {
                tracing::warn!(%error, partition, "cannot express commit position");
            }
        }
        tpl
    }

    fn commit_async(&mut self) {
        let tpl = self.commit_positions(true);
        if tpl.count() == 0 {
            return;
        }
        if let Err(error) = self.consumer.commit(&tpl, CommitMode::Async) {
            observe::commit_failed(&error);
            for element in tpl.elements() {
                if let Some(state) = self.partitions.get_mut(&element.partition()) {
                    state.watermark.forget_taken();
                }
            }
        }
    }

    /// Stops taking work, lets work in flight finish within `shutdown_timeout` (committing as it
    /// goes), cancels the rest, commits the finished prefixes synchronously and flushes.
    async fn stop(mut self, mut events: mpsc::Receiver<ConsumerEvent>) -> Exit {
        self.ready.clear();
        let all: Vec<i32> = self.partitions.keys().copied().collect();
        self.set_paused(&all, true);
        tracing::info!(
            in_flight = self.in_flight,
            "stopping: finishing work in flight"
        );
        let deadline = Instant::now() + self.processing.shutdown_timeout;
        let mut events_open = true;
        while self.exit != Exit::Fatal && (self.in_flight > 0 || self.unsettled() > 0) {
            tokio::select! {
                Some(completion) = self.completions.recv() => self.on_stop_completion(completion),
                Some(control) = self.control.recv() => self.on_control(control),
                _ = self.commit_tick.tick() => self.commit_async(),
                event = events.recv(), if events_open => {
                    // Records are no longer taken; the channel is drained so the consumer
                    // thread is never left blocked on it.
                    events_open = event.is_some();
                }
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(in_flight = self.in_flight, "shutdown timeout passed, abandoning work in flight");
                    break;
                }
            }
        }
        self.worker.hard_stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(ABANDON_GRACE, self.tasks.wait()).await;
        while let Ok(completion) = self.completions.try_recv() {
            self.on_stop_completion(completion);
        }
        // A revoke still waiting gets its answer now, so those partitions' prefix is committed.
        while let Ok(control) = self.control.try_recv() {
            self.on_control(control);
        }
        self.finish_revoke();
        drop(events);
        // Outputs counted here are already acknowledged, so the commit need not wait for the
        // flush; committing first keeps it inside the shutdown budget.
        let tpl = self.commit_positions(false);
        let consumer = Arc::clone(&self.consumer);
        let publisher = Arc::clone(&self.worker.publisher);
        let committed = tokio::task::spawn_blocking(move || {
            let committed = if tpl.count() == 0 {
                Ok(())
            } else {
                consumer.commit(&tpl, CommitMode::Sync)
            };
            if let Err(error) = publisher.flush(FLUSH_TIMEOUT) {
                tracing::warn!(%error, "producer flush incomplete");
            }
            committed
        })
        .await;
        match committed {
            Ok(Ok(())) => tracing::info!("stopped: finished offsets committed"),
            Ok(Err(error)) => observe::commit_failed(&error),
            Err(error) => tracing::error!(%error, "final commit task failed"),
        }
        self.exit
    }

    /// Started jobs not settled yet, over all partitions.
    fn unsettled(&self) -> usize {
        self.partitions.values().map(|state| state.unsettled).sum()
    }

    fn on_stop_completion(&mut self, completion: Completion) {
        self.settle(&completion);
        self.finish_revoke_if_drained();
    }

    /// Books a worker's report: frees its slot, and advances the watermark when its outputs are
    /// acknowledged. A submitted job (exactly-once) is settled later by its transaction's commit.
    fn settle(&mut self, completion: &Completion) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if completion.finish == Finish::Fatal {
            self.exit = Exit::Fatal;
        }
        if let Some(state) = self.partitions.get_mut(&completion.partition)
            && state.generation == completion.generation
        {
            state.in_flight = state.in_flight.saturating_sub(1);
            if completion.finish != Finish::Submitted {
                state.unsettled = state.unsettled.saturating_sub(1);
            }
            if completion.finish == Finish::Terminal {
                state.watermark.complete(completion.offset);
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
