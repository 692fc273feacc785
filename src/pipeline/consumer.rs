//! The Kafka consumer: a dedicated thread polls librdkafka and hands records and assignments to
//! the dispatcher, in the order librdkafka produced them, over one bounded data channel.
//! Revocations and commit results travel on an unbounded control channel, so the dispatcher sees
//! them at once even when the data channel is full.
//!
//! Rebalance callbacks run on that thread. On revoke the callback only signals the dispatcher and
//! waits, until a deadline it sets itself, for the offsets it may commit; it then commits them
//! synchronously before librdkafka takes the partitions away. This module never decides what is
//! committed and never blocks an async worker thread.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaSettings;
use crate::observe::Health;
use crate::pipeline::record::InputRecord;

/// How long one poll waits for a record; bounds how late the thread notices a stop.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Extra time a revoke callback waits beyond the drain timeout for the dispatcher's answer.
const REVOKE_REPLY_GRACE: Duration = Duration::from_secs(5);

/// Records and assignments, in librdkafka's order.
#[derive(Debug)]
pub enum ConsumerEvent {
    Assigned(Vec<i32>),
    Record(InputRecord),
}

/// What must reach the dispatcher without waiting behind records.
#[derive(Debug)]
pub enum Control {
    /// The dispatcher answers with the commit positions of the finished prefixes (partition,
    /// next offset) by `deadline`; `lost` means the group already gave the partitions away, so
    /// nothing may be committed.
    Revoked {
        partitions: Vec<i32>,
        lost: bool,
        deadline: Instant,
        reply: std::sync::mpsc::SyncSender<Vec<(i32, i64)>>,
    },
    /// An asynchronous commit of these partitions failed; their positions must be offered again.
    CommitFailed(Vec<i32>),
    /// Exactly-once: which commit positions would these settled offsets allow? (The books are
    /// not changed until the transaction commits.)
    PrepareCommit {
        settled: Vec<crate::pipeline::transactions::SettledOffset>,
        reply: tokio::sync::oneshot::Sender<crate::pipeline::transactions::Prepared>,
    },
    /// Exactly-once: the transaction with these outputs and offsets committed.
    TransactionCommitted(Vec<crate::pipeline::transactions::SettledOffset>),
}

/// The librdkafka context: rebalance hooks and commit results that talk to the dispatcher.
#[derive(Debug)]
pub struct PipelineContext {
    events: mpsc::Sender<ConsumerEvent>,
    control: mpsc::UnboundedSender<Control>,
    topic: String,
    drain_timeout: Duration,
    health: Arc<Health>,
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
        let event = Control::Revoked {
            partitions,
            lost,
            deadline,
            reply,
        };
        if self.control.send(event).is_err() {
            return;
        }
        let offsets = match answer.recv_timeout(self.drain_timeout + REVOKE_REPLY_GRACE) {
            Ok(offsets) => offsets,
            Err(_) => {
                tracing::warn!("dispatcher did not answer the revoke in time; nothing committed");
                return;
            }
        };
        if lost || offsets.is_empty() {
            return;
        }
        let mut commit = TopicPartitionList::new();
        for (partition, offset) in &offsets {
            if let Err(error) =
                commit.add_partition_offset(&self.topic, *partition, Offset::Offset(*offset))
            {
                tracing::warn!(%error, partition, "cannot express commit position");
            }
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

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            // Sent even when empty: an instance with no partitions has still joined the group.
            self.send(ConsumerEvent::Assigned(partitions_of(tpl, &self.topic)));
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        let ours = offsets
            .elements()
            .into_iter()
            .filter(|element| element.topic() == self.topic);
        match result {
            Ok(()) => {
                for element in ours {
                    if let Offset::Offset(offset) = element.offset() {
                        crate::observe::committed(element.partition(), offset);
                    }
                }
            }
            Err(error) => {
                crate::observe::commit_failed(&error);
                let partitions = ours.map(|element| element.partition()).collect();
                let _ = self.control.send(Control::CommitFailed(partitions));
            }
        }
    }
}

impl PipelineContext {
    /// Sends from the consumer thread; `false` once the dispatcher is gone. Inside an async
    /// runtime (a consumer dropped there) it must not block, so it gives up instead.
    fn send(&self, event: ConsumerEvent) -> bool {
        if tokio::runtime::Handle::try_current().is_ok() {
            return self.events.try_send(event).is_ok();
        }
        self.events.blocking_send(event).is_ok()
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

/// The consumer configuration regnotify insists on, on top of the pass-through properties.
pub fn consumer_config(kafka: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (name, value) in &kafka.consumer.0 {
        config.set(name, value);
    }
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("group.id", &kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    if !kafka.consumer.0.contains_key("statistics.interval.ms") {
        // Feeds the lag gauges and the broker-reachability check of `/readyz`.
        config.set("statistics.interval.ms", "5000");
    }
    if !kafka.consumer.0.contains_key("auto.offset.reset") {
        config.set("auto.offset.reset", "earliest");
    }
    config
}

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

/// The channels a consumer thread reports on.
#[derive(Debug)]
pub struct ConsumerChannels {
    pub events: mpsc::Sender<ConsumerEvent>,
    pub control: mpsc::UnboundedSender<Control>,
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
        control: channels.control,
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
    let handle = std::thread::Builder::new()
        .name("regnotify-consumer".into())
        .spawn({
            let consumer = Arc::clone(&consumer);
            let (stop, failed) = (Arc::clone(&stop), Arc::clone(&failed));
            move || {
                let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    poll_loop(&consumer, &events, &stop)
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

fn poll_loop(consumer: &PipelineConsumer, events: &mpsc::Sender<ConsumerEvent>, stop: &AtomicBool) {
    let health = &consumer.context().health;
    while !stop.load(Ordering::SeqCst) {
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
        if events.blocking_send(ConsumerEvent::Record(record)).is_err() {
            break;
        }
    }
}

/// Copies a record's headers. rdkafka panics on a header name that is not UTF-8 (Kafka allows
/// any bytes there); such a header cannot be read through its API, so it is left out with a
/// warning instead of taking the consumer thread down.
pub fn read_headers(message: &BorrowedMessage<'_>) -> Vec<(String, Option<Vec<u8>>)> {
    let Some(headers) = message.headers() else {
        return Vec::new();
    };
    let mut copied = Vec::with_capacity(headers.count());
    for index in 0..headers.count() {
        match std::panic::catch_unwind(AssertUnwindSafe(|| headers.try_get(index))) {
            Ok(Some(header)) => {
                copied.push((header.key.to_string(), header.value.map(<[u8]>::to_vec)));
            }
            Ok(None) => {}
            Err(_) => tracing::warn!(
                partition = message.partition(),
                offset = message.offset(),
                index,
                "record header with a name that is not UTF-8 left out"
            ),
        }
    }
    copied
}
