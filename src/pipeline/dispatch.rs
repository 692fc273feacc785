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
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::{DecodeError, EventDecoder};
use crate::config::{Ordering, ProcessingSettings};
use crate::observe::{self, Health};
use crate::pipeline::consumer::{ConsumerEvent, PipelineConsumer};
use crate::pipeline::keyed::KeyedQueue;
use crate::pipeline::watermark::CommitWatermark;
use crate::pipeline::worker::{Finish, Job, Work, WorkerContext, run_job};

/// Pause between attempts to decode a record while the schema registry does not answer.
const REGISTRY_RETRY_INITIAL: Duration = Duration::from_millis(200);
const REGISTRY_RETRY_MAX: Duration = Duration::from_secs(10);
/// How long a stopping pipeline waits for abandoned workers to notice the hard stop.
const ABANDON_GRACE: Duration = Duration::from_secs(5);

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
    paused: bool,
    in_flight: usize,
    revoking: bool,
}

#[derive(Debug)]
struct PendingRevoke {
    partitions: Vec<i32>,
    reply: std::sync::mpsc::SyncSender<Vec<(i32, i64)>>,
    deadline: Instant,
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
    completions_tx: mpsc::UnboundedSender<Completion>,
    completions: mpsc::UnboundedReceiver<Completion>,
    tasks: TaskTracker,
    next_generation: u64,
    pending_revoke: Option<PendingRevoke>,
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
    ) -> Self {
        let (completions_tx, completions) = mpsc::unbounded_channel();
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
            completions_tx,
            completions,
            tasks: TaskTracker::new(),
            next_generation: 0,
            pending_revoke: None,
        }
    }

    /// Runs until `shutdown` fires or the consumer thread ends, then stops cleanly: finishes the
    /// work in flight within `shutdown_timeout`, commits the finished prefix and flushes.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<ConsumerEvent>,
        shutdown: CancellationToken,
    ) {
        let mut commit_tick = tokio::time::interval(self.processing.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.status.beat();
            let revoke_deadline = self.pending_revoke.as_ref().map(|revoke| revoke.deadline);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(completion) = self.completions.recv() => self.on_completion(completion),
                () = sleep_until_opt(revoke_deadline) => {
                    tracing::warn!("rebalance drain timeout passed with work in flight");
                    self.finish_revoke();
                }
                event = events.recv(), if self.pending_revoke.is_none() => match event {
                    Some(event) => {
                        if !self.on_consumer_event(event, &shutdown).await {
                            break;
                        }
                    }
                    None => break,
                },
                _ = commit_tick.tick() => self.commit_async(),
            }
        }
        self.stop(events).await;
    }

    /// `false` when the pipeline must stop (shutdown fired while waiting on the registry).
    async fn on_consumer_event(
        &mut self,
        event: ConsumerEvent,
        shutdown: &CancellationToken,
    ) -> bool {
        match event {
            ConsumerEvent::Assigned(partitions) => self.on_assigned(&partitions),
            ConsumerEvent::Revoked {
                partitions,
                lost,
                reply,
            } => self.on_revoked(partitions, lost, reply),
            ConsumerEvent::Record(record) => return self.on_record(record, shutdown).await,
        }
        true
    }

    fn on_assigned(&mut self, partitions: &[i32]) {
        observe::rebalance(&self.worker.stats, "assign", partitions);
        for &partition in partitions {
            self.next_generation += 1;
            self.partitions.insert(
                partition,
                PartitionState {
                    watermark: CommitWatermark::new(),
                    generation: self.next_generation,
                    paused: false,
                    in_flight: 0,
                    revoking: false,
                },
            );
        }
        self.publish_assignment();
    }

    fn on_revoked(
        &mut self,
        partitions: Vec<i32>,
        lost: bool,
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
            }
        }
        // Work not started yet for these partitions is dropped: its offsets stay uncommitted
        // and the partitions' next owner consumes it again.
        let revoked = |partition: i32| partitions.contains(&partition);
        self.keyed
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
            partitions,
            reply,
            deadline: Instant::now() + self.processing.rebalance_drain_timeout,
        });
        if lost {
            // The group already gave these partitions away: nothing may be committed.
            if let Some(revoke) = &mut self.pending_revoke {
                revoke.partitions.clear();
            }
        }
        self.finish_revoke_if_drained();
        self.start_ready();
    }

    fn finish_revoke_if_drained(&mut self) {
        let drained = self.pending_revoke.as_ref().is_some_and(|revoke| {
            revoke.partitions.iter().all(|partition| {
                self.partitions
                    .get(partition)
                    .is_none_or(|state| state.in_flight == 0)
            })
        });
        if drained {
            self.finish_revoke();
        }
    }

    /// Answers the revoke callback with the finished prefixes and forgets the partitions; late
    /// completions for them are dropped by generation.
    fn finish_revoke(&mut self) {
        let Some(revoke) = self.pending_revoke.take() else {
            return;
        };
        let mut offsets = Vec::new();
        for partition in &revoke.partitions {
            if let Some(state) = self.partitions.get(partition)
                && let Some(position) = state.watermark.committable()
            {
                offsets.push((*partition, position));
            }
        }
        self.partitions.retain(|_, state| !state.revoking);
        let _ = revoke.reply.send(offsets);
        self.publish_assignment();
    }

    fn publish_assignment(&self) {
        self.status.assigned(self.partitions.len());
    }

    async fn on_record(
        &mut self,
        record: crate::pipeline::record::InputRecord,
        shutdown: &CancellationToken,
    ) -> bool {
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
        observe::record_consumed(&self.worker.stats, partition);
        let work = match self.decode(record.value.as_deref(), shutdown).await {
            Some(work) => work,
            None => return false,
        };
        let job = Job {
            record,
            work,
            generation,
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

    /// Decodes a value, waiting out registry outages. `None` when shutdown fired meanwhile.
    async fn decode(&self, value: Option<&[u8]>, shutdown: &CancellationToken) -> Option<Work> {
        let Some(bytes) = value else {
            return Some(Work::Poison(DecodeError::Truncated {
                what: "record: it has no value",
            }));
        };
        let mut delay = REGISTRY_RETRY_INITIAL;
        loop {
            match self.decoder.decode(bytes).await {
                Ok(event) => return Some(Work::Event(event)),
                Err(error) if error.is_transient() => {
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "cannot decode yet");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => return None,
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
    }

    fn spawn(&mut self, job: Job) {
        let order_key = self.order_key(&job);
        self.in_flight += 1;
        if let Some(state) = self.partitions.get_mut(&job.record.partition) {
            state.in_flight += 1;
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
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(key) = completion.order_key {
            self.release_key(key);
        }
        let partition = completion.partition;
        if let Some(state) = self.partitions.get_mut(&partition)
            && state.generation == completion.generation
        {
            state.in_flight = state.in_flight.saturating_sub(1);
            if completion.finish == Finish::Terminal {
                state.watermark.complete(completion.offset);
            }
        }
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
        let change = if !state.paused && window >= max {
            Some(true)
        } else if state.paused && window <= max / 2 {
            Some(false)
        } else {
            None
        };
        let Some(pause) = change else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition);
        let result = if pause {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        match result {
            Ok(()) => {
                state.paused = pause;
                tracing::debug!(partition, paused = pause, window, "partition flow control");
            }
            Err(error) => tracing::warn!(%error, partition, "cannot pause or resume partition"),
        }
    }

    fn commit_positions(&mut self, only_new: bool) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
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
                && tpl
                    .add_partition_offset(&self.topic, *partition, Offset::Offset(position))
                    .is_ok()
            {
                observe::committed(*partition, position);
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
        }
    }

    /// Stops taking work, lets work in flight finish within `shutdown_timeout`, abandons the
    /// rest, then commits the finished prefixes synchronously and flushes the producer.
    async fn stop(mut self, mut events: mpsc::Receiver<ConsumerEvent>) {
        self.ready.clear();
        let all: Vec<i32> = self.partitions.keys().copied().collect();
        let mut tpl = TopicPartitionList::new();
        for partition in &all {
            tpl.add_partition(&self.topic, *partition);
        }
        if tpl.count() > 0
            && let Err(error) = self.consumer.pause(&tpl)
        {
            tracing::debug!(%error, "cannot pause partitions for shutdown");
        }
        tracing::info!(
            in_flight = self.in_flight,
            "stopping: finishing work in flight"
        );
        let deadline = Instant::now() + self.processing.shutdown_timeout;
        while self.in_flight > 0 {
            tokio::select! {
                Some(completion) = self.completions.recv() => {
                    self.on_stop_completion(completion);
                }
                event = events.recv() => match event {
                    // Answer a revoke at once so the consumer thread is never left waiting.
                    Some(ConsumerEvent::Revoked { reply, .. }) => { let _ = reply.send(Vec::new()); }
                    Some(_) => {}
                    None => {}
                },
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
        drop(events);
        let tpl = self.commit_positions(false);
        let consumer = Arc::clone(&self.consumer);
        let publisher = Arc::clone(&self.worker.publisher);
        let committed = tokio::task::spawn_blocking(move || {
            if let Err(error) = publisher.flush(Duration::from_secs(10)) {
                tracing::warn!(%error, "producer flush incomplete");
            }
            if tpl.count() == 0 {
                return Ok(());
            }
            consumer.commit(&tpl, CommitMode::Sync)
        })
        .await;
        match committed {
            Ok(Ok(())) => tracing::info!("stopped: finished offsets committed"),
            Ok(Err(error)) => observe::commit_failed(&error),
            Err(error) => tracing::error!(%error, "final commit task failed"),
        }
    }

    fn on_stop_completion(&mut self, completion: Completion) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if let Some(state) = self.partitions.get_mut(&completion.partition)
            && state.generation == completion.generation
        {
            state.in_flight = state.in_flight.saturating_sub(1);
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
