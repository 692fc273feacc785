//! The Kafka consumer: a dedicated thread polls librdkafka and hands assignments, revocations and
//! records to the dispatcher over one channel, in the order librdkafka produced them, so that a
//! revoke can never overtake the assignment it cancels. The thread never blocks on the
//! dispatcher (the channel is unbounded): it keeps polling, so rebalance callbacks always run and
//! the member stays in its group however slow the dispatcher is. Memory stays bounded by holding
//! and pausing instead: the thread applies the dispatcher's [`PausePlan`], holds off polling
//! while too many events wait (for at most [`INTAKE_HOLD_MAX`]), and pauses a partition whose
//! window is full, or every partition when a hold lasts longer.
//!
//! Rebalance callbacks run on that thread. On revoke the callback only signals the dispatcher and
//! waits, until a deadline it sets itself, for the offsets it may commit; it then commits them
//! synchronously before librdkafka takes the partitions away. This module never decides what is
//! committed and never blocks an async worker thread.

use std::collections::{BTreeSet, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaSettings;
use crate::observe::Health;
use crate::pipeline::book::Slot;
use crate::pipeline::decisions::PausePlan;
use crate::pipeline::kafka::{consumer_config, read_headers};
use crate::pipeline::record::InputRecord;

/// How long one poll waits for a record; bounds how late the thread notices a stop.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The longest the thread holds off polling while too many events wait. librdkafka keeps what
/// it fetched ahead meanwhile; a pause would drop it, and after a resume librdkafka's fetcher
/// looks again only on its next wake-up, up to a second later (measured on the demo: bursts
/// every 500 ms to 1 s, the pipeline idle between them). Held longer than this, every partition
/// pauses and the thread polls again, so rebalances are served: the hold delays one by at most
/// this much and one [`INTAKE_HOLD_STEP`].
const INTAKE_HOLD_MAX: Duration = Duration::from_millis(500);
/// One wait for room within that hold; bounds how late the thread notices a stop.
const INTAKE_HOLD_STEP: Duration = Duration::from_millis(50);
/// How long an assignment waits for the input topic's partition count.
const TOPIC_METADATA_TIMEOUT: Duration = Duration::from_secs(2);
/// Extra time a revoke callback waits beyond the drain timeout for the dispatcher's answer.
const REVOKE_REPLY_GRACE: Duration = Duration::from_secs(5);
/// Assignments, revocations and records, in librdkafka's order.
#[derive(Debug)]
pub enum ConsumerEvent {
    /// Partitions assigned, with what their committed offsets' notes say an earlier owner
    /// finished above them (see [`crate::pipeline::finished`]).
    Assigned(Vec<i32>, Vec<FinishedNote>),
    /// The dispatcher answers with the commit positions of the finished prefixes (partition,
    /// next offset) by `deadline`; `lost` means the group already gave the partitions away, so
    /// nothing may be committed.
    Revoked {
        partitions: Vec<i32>,
        lost: bool,
        deadline: Instant,
        reply: std::sync::mpsc::SyncSender<TopicPartitionList>,
    },
    /// The revoke's commit was made (landed or failed), or will not be made (lost, nothing to
    /// commit, no answer in time). Follows every `Revoked`.
    RevokeSettled,
    /// The input topic has this many partitions (read at every assignment, before
    /// [`ConsumerEvent::Assigned`]): what the members' shares of a send-rate limit divide.
    TopicPartitions(usize),
    Record(InputRecord),
}

/// The revoke callback's side of the dispatcher's answer. When the callback returns, whichever
/// way, it stops listening first and then reports [`ConsumerEvent::RevokeSettled`]: an answer
/// sent after the report finds nobody listening, so the dispatcher knows nothing will be
/// committed.
struct RevokeAnswer<'a> {
    answer: Option<std::sync::mpsc::Receiver<TopicPartitionList>>,
    events: &'a mpsc::UnboundedSender<ConsumerEvent>,
}

impl RevokeAnswer<'_> {
    fn recv_timeout(
        &self,
        timeout: Duration,
    ) -> Result<TopicPartitionList, std::sync::mpsc::RecvTimeoutError> {
        match &self.answer {
            Some(answer) => answer.recv_timeout(timeout),
            None => Err(std::sync::mpsc::RecvTimeoutError::Disconnected),
        }
    }
}

impl Drop for RevokeAnswer<'_> {
    fn drop(&mut self) {
        drop(self.answer.take());
        let _ = self.events.send(ConsumerEvent::RevokeSettled);
    }
}

/// A partition's committed offset and the finished offsets its note names above it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedNote {
    pub partition: i32,
    pub committed: i64,
    pub finished: std::collections::BTreeSet<i64>,
}

/// How long an assignment waits for the committed offsets' notes before it goes on without them.
const NOTE_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What reaches the dispatcher from outside the consumer's order: commit results and the
/// transaction writer.
#[derive(Debug)]
pub enum Control {
    /// Exactly-once: which commit positions would these settled offsets allow? (The books are
    /// not changed until the transaction commits.)
    PrepareCommit {
        settled: Vec<Slot>,
        reply: tokio::sync::oneshot::Sender<crate::pipeline::book::Prepared>,
    },
    /// Exactly-once: the transaction with these outputs and offsets committed.
    TransactionCommitted(Vec<Slot>),
}

/// The pause plan the dispatcher publishes and the consumer thread applies.
#[derive(Debug, Default)]
pub struct PauseBoard {
    version: AtomicU64,
    plan: Mutex<PausePlan>,
}

impl PauseBoard {
    pub fn publish(&self, plan: PausePlan) {
        if let Ok(mut current) = self.plan.lock() {
            *current = plan;
        }
        self.version.fetch_add(1, Ordering::Release);
    }

    fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub(crate) fn plan(&self) -> PausePlan {
        self.plan
            .lock()
            .map(|plan| plan.clone())
            .unwrap_or_default()
    }
}

/// What the consumer thread shares with the dispatcher besides the channels: the pause plan,
/// and the counts that let the consumer thread pause a partition the moment its window would be
/// full, before the dispatcher has even seen the records in the channel, and hold off polling
/// while too many events wait overall. librdkafka drops what it had fetched of a paused
/// partition and fetches it again on resume, so a pause taken here bounds memory exactly; a hold
/// leaves it to librdkafka's own prefetch bounds (`queued.max.messages.kbytes`).
#[derive(Debug)]
pub struct Flow {
    pub pause: PauseBoard,
    counts: Mutex<Counts>,
    /// Signalled when the dispatcher took records on while the consumer thread waits for room.
    room: Condvar,
    max_pending_per_partition: usize,
    waiting_limit: usize,
    /// Set while the intake has been held longer than [`INTAKE_HOLD_MAX`]: every partition
    /// pauses until there is room again.
    stalled: AtomicBool,
}

#[derive(Debug, Default)]
struct Counts {
    /// Per partition: offsets the dispatcher's book holds, and records in the channel.
    book_window: HashMap<i32, usize>,
    in_channel: HashMap<i32, usize>,
    /// Over all partitions: offsets waiting in the book, and records in the channel.
    book_waiting: usize,
    in_channel_total: usize,
    /// The consumer thread waits on [`Flow::room`].
    holding: bool,
    /// In-flight slots free while the dispatcher had nothing being decoded, when it last booked:
    /// what waits, waits for its key, not a slot.
    free_slots: usize,
}

impl Flow {
    pub fn new(max_pending_per_partition: usize, waiting_limit: usize) -> Flow {
        Flow {
            pause: PauseBoard::default(),
            counts: Mutex::new(Counts::default()),
            room: Condvar::new(),
            max_pending_per_partition: max_pending_per_partition.max(1),
            waiting_limit: waiting_limit.max(1),
            stalled: AtomicBool::new(false),
        }
    }

    /// Events waiting or in the channel beyond which the consumer thread stops taking records
    /// on: half the dispatcher's waiting limit, so that the dispatcher's own pause of every
    /// partition (at the whole limit) is a safety net that steady load never reaches.
    fn intake_limit(&self) -> usize {
        (self.waiting_limit / 2).max(1)
    }

    fn waiting_full(&self, counts: &Counts) -> bool {
        counts.book_waiting + counts.in_channel_total >= self.intake_limit()
    }

    /// No room for more records: too many wait, and for a slot. When a slot is free, what waits
    /// waits for its key (under `ordering = "partition"`, one event at a time per partition):
    /// holding the intake then would starve the partitions that hold none of those events,
    /// their records stuck in librdkafka's one queue behind the others'. The intake goes on,
    /// and the dispatcher's pause of the partitions over their share bounds memory. The records
    /// sent since the dispatcher last booked may take those slots, so they count against them:
    /// a free slot the dispatcher reported before a burst of records is not room for the burst.
    fn no_room(&self, counts: &Counts) -> bool {
        self.waiting_full(counts) && counts.free_slots <= counts.in_channel_total
    }

    /// Waits up to `timeout` for room to take another record on; whether there is room.
    pub(crate) fn wait_for_room(&self, timeout: Duration) -> bool {
        let Ok(mut counts) = self.counts.lock() else {
            return true;
        };
        if !self.no_room(&counts) {
            return true;
        }
        counts.holding = true;
        let Ok((mut counts, _)) = self
            .room
            .wait_timeout_while(counts, timeout, |counts| self.no_room(counts))
        else {
            return true;
        };
        counts.holding = false;
        !self.no_room(&counts)
    }

    fn stalled(&self) -> bool {
        self.stalled.load(Ordering::SeqCst)
    }

    fn set_stalled(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::SeqCst);
    }

    /// The consumer thread sent a record of `partition`: true when that fills its window or the
    /// waiting limit, so the partition (or all) must pause now.
    pub(crate) fn sent(&self, partition: i32) -> bool {
        let Ok(mut counts) = self.counts.lock() else {
            return false;
        };
        *counts.in_channel.entry(partition).or_default() += 1;
        counts.in_channel_total += 1;
        self.full(&counts, partition)
    }

    /// The dispatcher took the records of `received` (a partition each) off the channel, and its
    /// book now holds these windows and this many waiting offsets; `free_slots`: it has that many
    /// in-flight slots free and nothing being decoded. One step, so that a record is never
    /// counted in neither place.
    pub fn booked(
        &self,
        received: &[i32],
        windows: impl Iterator<Item = (i32, usize)>,
        waiting: usize,
        free_slots: usize,
    ) {
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        for partition in received {
            if let Some(count) = counts.in_channel.get_mut(partition) {
                *count = count.saturating_sub(1);
            }
            counts.in_channel_total = counts.in_channel_total.saturating_sub(1);
        }
        counts.book_window.clear();
        counts.book_window.extend(windows);
        counts.book_waiting = waiting;
        counts.free_slots = free_slots;
        if counts.holding && !self.no_room(&counts) {
            self.room.notify_one();
        }
    }

    /// Whether `partition`'s window reached its bound, or the events waiting overall did and the
    /// intake was held too long, counting what is in the channel.
    pub(crate) fn over(&self, partition: i32) -> bool {
        self.counts
            .lock()
            .map(|counts| self.full(&counts, partition))
            .unwrap_or(false)
    }

    fn full(&self, counts: &Counts, partition: i32) -> bool {
        let window = counts.book_window.get(&partition).copied().unwrap_or(0)
            + counts.in_channel.get(&partition).copied().unwrap_or(0);
        window >= self.max_pending_per_partition || (self.stalled() && self.no_room(counts))
    }
}

/// The librdkafka context: rebalance hooks and commit results that talk to the dispatcher.
#[derive(Debug)]
pub struct PipelineContext {
    events: mpsc::UnboundedSender<ConsumerEvent>,
    flow: Arc<Flow>,
    topic: String,
    drain_timeout: Duration,
    health: Arc<Health>,
    /// What the consumer thread last applied: the plan's version, and the partitions it paused.
    applied: Mutex<Applied>,
}

#[derive(Debug, Default)]
struct Applied {
    version: u64,
    /// Set when the counts may have changed what should pause.
    recheck: bool,
    paused: BTreeSet<i32>,
}

impl ClientContext for PipelineContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        crate::observe::kafka_statistics(&self.health, &statistics, &self.topic);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        crate::observe::kafka_client_error(&self.health, &error, reason);
    }
}

impl ConsumerContext for PipelineContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let partitions = partitions_of(tpl, &self.topic);
        if partitions.is_empty() {
            return;
        }
        let lost = consumer.assignment_lost();
        let deadline = Instant::now() + self.drain_timeout;
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let event = ConsumerEvent::Revoked {
            partitions,
            lost,
            deadline,
            reply,
        };
        if self.events.send(event).is_err() {
            return;
        }
        let answer = RevokeAnswer {
            answer: Some(answer),
            events: &self.events,
        };
        let commit = match answer.recv_timeout(self.drain_timeout + REVOKE_REPLY_GRACE) {
            Ok(commit) => commit,
            Err(_) => {
                tracing::warn!("dispatcher did not answer the revoke in time; nothing committed");
                return;
            }
        };
        let offsets: Vec<(i32, i64)> = commit
            .elements_for_topic(&self.topic)
            .iter()
            .filter_map(|element| match element.offset() {
                Offset::Offset(offset) => Some((element.partition(), offset)),
                _ => None,
            })
            .collect();
        tracing::info!(
            ?offsets,
            lost,
            "revoke answered; committing the finished prefixes"
        );
        if lost || offsets.is_empty() {
            return;
        }
        match consumer.commit(&commit, CommitMode::Sync) {
            Ok(()) => {
                for (partition, offset) in offsets {
                    crate::observe::committed(partition, offset);
                }
            }
            Err(error) => crate::observe::commit_failed(&error),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions = partitions_of(tpl, &self.topic);
            // librdkafka keeps a partition's pause across unassign and assign, and a partition
            // assigned while everything is paused must not fetch: set each one as the plan says.
            self.set_pause_of(consumer, &partitions, true);
            let notes = self.finished_notes(consumer, tpl);
            match consumer.fetch_metadata(Some(&self.topic), TOPIC_METADATA_TIMEOUT) {
                Ok(metadata) => {
                    let count = metadata
                        .topics()
                        .iter()
                        .find(|topic| topic.name() == self.topic)
                        .map_or(0, |topic| topic.partitions().len());
                    if count > 0 {
                        let _ = self.events.send(ConsumerEvent::TopicPartitions(count));
                    }
                }
                // The shares of the send-rate limits stay as they were.
                Err(error) => tracing::warn!(
                    %error,
                    "cannot read the input topic's partition count; send-rate shares unchanged"
                ),
            }
            // Sent even when empty: an instance with no partitions has still joined the group.
            let _ = self.events.send(ConsumerEvent::Assigned(partitions, notes));
        }
    }
}

impl PipelineContext {
    /// Reads the committed offsets of newly assigned partitions and the notes committed with
    /// them. A note that cannot be read (another tool's metadata, another version, another
    /// position) or a failed read skips nothing: the events are processed again.
    fn finished_notes(
        &self,
        consumer: &BaseConsumer<Self>,
        tpl: &TopicPartitionList,
    ) -> Vec<FinishedNote> {
        let mut ours = TopicPartitionList::new();
        for element in tpl.elements_for_topic(&self.topic) {
            ours.add_partition(&self.topic, element.partition());
        }
        if ours.count() == 0 {
            return Vec::new();
        }
        let committed = match consumer.committed_offsets(ours, NOTE_READ_TIMEOUT) {
            Ok(committed) => committed,
            Err(error) => {
                tracing::warn!(%error, "cannot read the committed offsets' notes; finished events will be processed again");
                return Vec::new();
            }
        };
        let mut notes = Vec::new();
        for element in committed.elements_for_topic(&self.topic) {
            let (Offset::Offset(position), note) = (element.offset(), element.metadata()) else {
                continue;
            };
            if note.is_empty() {
                continue;
            }
            match crate::pipeline::finished::decode(note, position) {
                Ok(finished) if !finished.is_empty() => notes.push(FinishedNote {
                    partition: element.partition(),
                    committed: position,
                    finished,
                }),
                Ok(_) => {}
                Err(error) => tracing::warn!(
                    partition = element.partition(),
                    %error,
                    "commit metadata ignored; nothing is skipped"
                ),
            }
        }
        notes
    }

    /// Applies the dispatcher's plan and the flow counts, when either may have changed.
    fn apply_pause(&self, consumer: &PipelineConsumer) {
        let version = self.flow.pause.version();
        {
            let Ok(applied) = self.applied.lock() else {
                return;
            };
            if version == applied.version && !applied.recheck {
                return;
            }
        }
        let assigned = match consumer.assignment() {
            Ok(assignment) => partitions_of(&assignment, &self.topic),
            Err(error) => {
                tracing::warn!(%error, "cannot read the assignment to pause or resume");
                return;
            }
        };
        self.set_pause_of(consumer, &assigned, false);
    }

    /// Asks for the pause state to be worked out again at the next poll.
    fn recheck(&self) {
        if let Ok(mut applied) = self.applied.lock() {
            applied.recheck = true;
        }
    }

    /// Whether some partition is paused by the counts rather than the plan; those are let go
    /// only by a recheck.
    fn paused_by_counts(&self) -> bool {
        let plan = self.flow.pause.plan();
        self.applied.lock().is_ok_and(|applied| {
            applied
                .paused
                .iter()
                .any(|partition| !plan.is_paused(*partition))
        })
    }

    /// Pauses or resumes `partitions` as the plan and the counts say: only those whose state
    /// changes, or all of them when `fresh` (just assigned: librdkafka's own flags are unknown).
    ///
    /// A fresh pass covers only the new partitions (with cooperative assignment the others stay
    /// owned), so it leaves a full pass due rather than record the plan as applied to all. A
    /// pause or resume librdkafka refuses is not recorded as done either: the next poll tries
    /// again.
    fn set_pause_of(&self, consumer: &BaseConsumer<Self>, partitions: &[i32], fresh: bool) {
        let Ok(mut applied) = self.applied.lock() else {
            return;
        };
        if fresh {
            applied.recheck = true;
        } else {
            applied.version = self.flow.pause.version();
            applied.recheck = false;
        }
        let plan = self.flow.pause.plan();
        let mut pause = Vec::new();
        let mut resume = Vec::new();
        for &partition in partitions {
            let wanted = plan.is_paused(partition) || self.flow.over(partition);
            let was = applied.paused.contains(&partition);
            if wanted && (fresh || !was) {
                pause.push(partition);
                applied.paused.insert(partition);
            } else if !wanted && (fresh || was) {
                resume.push(partition);
                applied.paused.remove(&partition);
            }
        }
        if !pause.is_empty() || !resume.is_empty() {
            tracing::debug!(?pause, ?resume, "partitions paused or resumed");
        }
        let paused = set_paused(consumer, &self.topic, &pause, true);
        let resumed = set_paused(consumer, &self.topic, &resume, false);
        // What librdkafka refused is recorded as not done, so the next pass asks again.
        if !paused {
            for partition in &pause {
                applied.paused.remove(partition);
            }
        }
        if !resumed {
            applied.paused.extend(resume.iter().copied());
        }
        if !paused || !resumed {
            applied.recheck = true;
        }
    }
}

fn set_paused<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partitions: &[i32],
    pause: bool,
) -> bool {
    if partitions.is_empty() {
        return true;
    }
    let mut tpl = TopicPartitionList::new();
    for partition in partitions {
        tpl.add_partition(topic, *partition);
    }
    let result = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    match result {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(
                %error,
                ?partitions,
                pause,
                "cannot pause or resume partitions; tried again at the next poll"
            );
            false
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements()
        .iter()
        .filter(|element| element.topic() == topic)
        .map(|element| element.partition())
        .collect()
}

pub type PipelineConsumer = BaseConsumer<PipelineContext>;

/// A running consumer thread.
pub struct ConsumerThread {
    pub consumer: Arc<PipelineConsumer>,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ConsumerThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerThread").finish_non_exhaustive()
    }
}

/// The channels a consumer thread reports on, and the flow state it shares with the dispatcher.
#[derive(Debug)]
pub struct ConsumerChannels {
    pub events: mpsc::UnboundedSender<ConsumerEvent>,
    pub flow: Arc<Flow>,
}

/// Creates the consumer, subscribes and starts polling on its own thread. Should the thread die,
/// `fatal` is cancelled, which stops the pipeline.
pub fn start(
    kafka: &KafkaSettings,
    channels: ConsumerChannels,
    drain_timeout: Duration,
    health: Arc<Health>,
    fatal: CancellationToken,
) -> anyhow::Result<ConsumerThread> {
    let context = PipelineContext {
        events: channels.events.clone(),
        flow: Arc::clone(&channels.flow),
        applied: Mutex::new(Applied::default()),
        topic: kafka.input_topic.clone(),
        drain_timeout,
        health,
    };
    let consumer: PipelineConsumer = consumer_config(kafka).create_with_context(context)?;
    consumer.subscribe(&[&kafka.input_topic])?;
    let consumer = Arc::new(consumer);
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicBool::new(false));
    let events = channels.events;
    let flow = channels.flow;
    let handle = std::thread::Builder::new()
        .name("regnotify-consumer".into())
        .spawn({
            let consumer = Arc::clone(&consumer);
            let (stop, failed) = (Arc::clone(&stop), Arc::clone(&failed));
            move || {
                let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    poll_loop(&consumer, &events, &flow, &stop)
                }));
                if polled.is_err() {
                    tracing::error!("consumer thread failed; stopping the pipeline");
                    failed.store(true, Ordering::SeqCst);
                    fatal.cancel();
                }
            }
        })?;
    Ok(ConsumerThread {
        consumer,
        stop,
        failed,
        handle: Some(handle),
    })
}

impl ConsumerThread {
    /// Stops polling and waits for the thread; `false` when the thread had failed. Call from a
    /// blocking context.
    pub fn stop_and_join(mut self) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take()
            && handle.join().is_err()
        {
            return false;
        }
        !self.failed.load(Ordering::SeqCst)
    }
}

fn poll_loop(
    consumer: &PipelineConsumer,
    events: &mpsc::UnboundedSender<ConsumerEvent>,
    flow: &Flow,
    stop: &AtomicBool,
) {
    let health = &consumer.context().health;
    let mut last_recheck = Instant::now();
    let mut held_since: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        let context = consumer.context();
        // A partition paused by the counts is let go by no plan change: look again regularly.
        if last_recheck.elapsed() >= POLL_INTERVAL {
            last_recheck = Instant::now();
            if context.paused_by_counts() {
                context.recheck();
            }
        }
        // Too many events wait: take nothing more on until the dispatcher starts some, rather
        // than pause (see INTAKE_HOLD_MAX); held too long, pause every partition and poll on.
        if flow.stalled() {
            if flow.wait_for_room(Duration::ZERO) {
                flow.set_stalled(false);
                held_since = None;
                context.recheck();
            }
        } else {
            let since = *held_since.get_or_insert_with(Instant::now);
            if flow.wait_for_room(INTAKE_HOLD_STEP) {
                held_since = None;
            } else if since.elapsed() < INTAKE_HOLD_MAX {
                continue;
            } else {
                tracing::debug!("intake held too long: pausing every partition");
                flow.set_stalled(true);
                context.recheck();
            }
        }
        context.apply_pause(consumer);
        let message = match consumer.poll(POLL_INTERVAL) {
            None => continue,
            Some(Err(error)) => {
                crate::observe::consumer_error(health, &error);
                continue;
            }
            Some(Ok(message)) => message,
        };
        crate::observe::consumer_record(health, message.partition());
        let record = InputRecord {
            topic: Arc::from(message.topic()),
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers: read_headers(&message),
        };
        let partition = record.partition;
        let full = flow.sent(partition);
        if events.send(ConsumerEvent::Record(record)).is_err() {
            break;
        }
        if full {
            // Worked out again before the next poll: nothing more of it is taken on.
            consumer.context().recheck();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_waiting_holds_the_intake_without_pausing_until_the_hold_lasts() {
        let flow = Flow::new(100, 8);
        // Four waiting (half the limit) is the intake's bound; each is in the channel first.
        for _ in 0..3 {
            assert!(!flow.sent(0), "a window of 3 of 100 is not full");
        }
        assert!(flow.wait_for_room(Duration::ZERO));
        assert!(!flow.sent(0));
        assert!(
            !flow.wait_for_room(Duration::from_millis(1)),
            "four wait: hold"
        );
        assert!(!flow.over(0), "a hold is not a pause");
        flow.set_stalled(true);
        assert!(flow.over(0), "held too long: every partition pauses");
        assert!(flow.over(1));
        flow.set_stalled(false);

        // The dispatcher takes the four off the channel and starts two of them.
        let waker = std::thread::spawn({
            let flow = Arc::new(flow);
            let waiting = Arc::clone(&flow);
            move || {
                let started = Instant::now();
                let room = std::thread::scope(|scope| {
                    let wait = scope.spawn(|| waiting.wait_for_room(Duration::from_secs(10)));
                    // Booked only once the other thread waits, so that its wake-up is tested.
                    while !flow.counts.lock().is_ok_and(|counts| counts.holding) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    flow.booked(&[0, 0, 0, 0], [(0, 4)].into_iter(), 2, 0);
                    wait.join().unwrap_or(false)
                });
                (room, started.elapsed())
            }
        });
        let (room, waited) = waker.join().expect("the waiting thread");
        assert!(room, "room once fewer wait");
        assert!(waited < Duration::from_secs(10), "woken, not timed out");
    }

    /// Under `ordering = "partition"` the waiting events wait for their partition's turn, not a
    /// slot: holding the intake then would starve the partitions whose records are behind theirs
    /// in librdkafka's queue.
    #[test]
    fn too_many_waiting_for_their_key_with_a_slot_free_do_not_hold_the_intake() {
        let flow = Flow::new(100, 8);
        flow.booked(&[], [(0, 4), (1, 0)].into_iter(), 4, 0);
        assert!(
            !flow.wait_for_room(Duration::ZERO),
            "four wait for a slot: hold"
        );
        flow.booked(&[], [(0, 4), (1, 0)].into_iter(), 4, 1);
        assert!(
            flow.wait_for_room(Duration::ZERO),
            "four wait for their key: go on"
        );
        flow.set_stalled(true);
        assert!(!flow.over(1), "nor does a long hold pause the others");
    }

    /// The dispatcher reported free slots, then fell behind while the consumer thread went on
    /// sending: the records in the channel will take those slots, so past the waiting limit they
    /// are no reason to go on (a CI run took 616 records on against a bound of 514 so).
    #[test]
    fn free_slots_reported_before_a_burst_are_not_room_for_the_burst() {
        let flow = Flow::new(100, 8);
        flow.booked(&[], [(0, 3)].into_iter(), 3, 2);
        assert!(
            flow.wait_for_room(Duration::ZERO),
            "three wait, below the bound of four"
        );
        assert!(!flow.sent(1));
        assert!(
            flow.wait_for_room(Duration::ZERO),
            "four wait, one in the channel for two free slots"
        );
        assert!(!flow.sent(1));
        assert!(
            !flow.wait_for_room(Duration::ZERO),
            "the two in the channel take both free slots: hold"
        );
        flow.set_stalled(true);
        assert!(flow.over(1), "held too long: every partition pauses");
        flow.set_stalled(false);
        // The dispatcher booked both and started one; one slot is still free for what waits.
        flow.booked(&[1, 1], [(0, 3), (1, 2)].into_iter(), 4, 1);
        assert!(flow.wait_for_room(Duration::ZERO), "a slot free again");
    }

    #[test]
    fn a_full_window_pauses_its_partition_alone() {
        let flow = Flow::new(2, 1_000);
        assert!(!flow.sent(0));
        assert!(flow.sent(0), "the second record fills a window of 2");
        assert!(flow.over(0));
        assert!(!flow.over(1));
        assert!(
            flow.wait_for_room(Duration::ZERO),
            "far below the waiting limit"
        );
    }
}
