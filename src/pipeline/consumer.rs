//! The Kafka consumer: a dedicated thread polls librdkafka and hands records, assignments and
//! revocations to the dispatcher, in the order librdkafka produced them, over one bounded channel.
//!
//! Rebalance callbacks run on that thread. On revoke the callback only signals the dispatcher and
//! waits, within a deadline, for the offsets it may commit; it then commits them synchronously
//! before librdkafka takes the partitions away. This module never decides what is committed and
//! never blocks an async worker thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::config::KafkaSettings;
use crate::observe::Health;
use crate::pipeline::record::InputRecord;

/// How long one poll waits for a record; bounds how late the thread notices a stop.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Extra time a revoke callback waits beyond the drain timeout for the dispatcher's answer.
const REVOKE_REPLY_GRACE: Duration = Duration::from_secs(5);

/// What the consumer thread tells the dispatcher.
#[derive(Debug)]
pub enum ConsumerEvent {
    Assigned(Vec<i32>),
    /// The dispatcher answers with the commit positions of the finished prefixes (partition,
    /// next offset); `lost` means the group already gave the partitions away, so nothing may be
    /// committed.
    Revoked {
        partitions: Vec<i32>,
        lost: bool,
        reply: std::sync::mpsc::SyncSender<Vec<(i32, i64)>>,
    },
    Record(InputRecord),
}

/// The librdkafka context: rebalance hooks that talk to the dispatcher.
#[derive(Debug)]
pub struct PipelineContext {
    events: mpsc::Sender<ConsumerEvent>,
    topic: String,
    revoke_wait: Duration,
    health: Arc<Health>,
}

impl ClientContext for PipelineContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        crate::observe::kafka_statistics(&self.health, &statistics, &self.topic);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            self.health.set_kafka_reachable(false);
        }
        tracing::warn!(%error, reason, "kafka client error");
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
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        let event = ConsumerEvent::Revoked {
            partitions,
            lost,
            reply,
        };
        if !self.send(event) {
            return;
        }
        let offsets = match answer.recv_timeout(self.revoke_wait) {
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
    handle: Option<JoinHandle<()>>,
}

/// Creates the consumer, subscribes and starts polling on its own thread.
pub fn start(
    kafka: &KafkaSettings,
    events: mpsc::Sender<ConsumerEvent>,
    drain_timeout: Duration,
    health: Arc<Health>,
) -> anyhow::Result<ConsumerThread> {
    let context = PipelineContext {
        events: events.clone(),
        topic: kafka.input_topic.clone(),
        revoke_wait: drain_timeout + REVOKE_REPLY_GRACE,
        health,
    };
    let consumer: PipelineConsumer = consumer_config(kafka).create_with_context(context)?;
    consumer.subscribe(&[&kafka.input_topic])?;
    let consumer = Arc::new(consumer);
    let stop = Arc::new(AtomicBool::new(false));
    let handle = std::thread::Builder::new()
        .name("regnotify-consumer".into())
        .spawn({
            let consumer = Arc::clone(&consumer);
            let stop = Arc::clone(&stop);
            move || poll_loop(&consumer, &events, &stop)
        })?;
    Ok(ConsumerThread {
        consumer,
        stop,
        handle: Some(handle),
    })
}

impl std::fmt::Debug for ConsumerThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerThread").finish_non_exhaustive()
    }
}

impl ConsumerThread {
    /// Stops polling and waits for the thread. Call from a blocking context.
    pub fn stop_and_join(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take()
            && handle.join().is_err()
        {
            tracing::error!("consumer thread panicked");
        }
    }
}

fn poll_loop(consumer: &PipelineConsumer, events: &mpsc::Sender<ConsumerEvent>, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        let message = match consumer.poll(POLL_INTERVAL) {
            None => continue,
            Some(Err(error)) => {
                tracing::warn!(%error, "kafka consumer error");
                continue;
            }
            Some(Ok(message)) => message,
        };
        let record = InputRecord {
            topic: Arc::from(message.topic()),
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers: message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|header| (header.key.to_string(), header.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
        };
        if events.blocking_send(ConsumerEvent::Record(record)).is_err() {
            break;
        }
    }
}
