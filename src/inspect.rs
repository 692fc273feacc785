//! Read-only views of Kafka for the demo, the tests and operators: read a topic from the start
//! without joining a group, and compare a group's committed offsets with the topic's end.
//!
//! Nothing here commits, produces or changes a group; every call is blocking and bounded by a
//! timeout, so call it from a blocking context.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// One record read back, owned.
#[derive(Debug, Clone)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl ReadRecord {
    /// Copies a consumed message out of librdkafka's buffers.
    pub fn copy(message: &rdkafka::message::BorrowedMessage<'_>) -> ReadRecord {
        ReadRecord {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers: crate::pipeline::kafka::read_headers(message),
        }
    }

    /// The first header with this name, as UTF-8 text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .and_then(|(_, value)| value.as_deref())
            .and_then(|value| std::str::from_utf8(value).ok())
    }
}

/// A partition's committed offset for a group beside the partition's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionProgress {
    pub partition: i32,
    /// `None` when the group never committed this partition.
    pub committed: Option<i64>,
    pub end: i64,
}

/// The partitions of `topic`, from the cluster's metadata; an error when it has none.
pub fn partitions(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<i32>> {
    let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
    Ok(partitions)
}

fn plain_consumer(bootstrap: &str, extra: &[(&str, &str)]) -> anyhow::Result<BaseConsumer> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "regnotify-inspect")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    for (key, value) in extra {
        config.set(*key, *value);
    }
    Ok(config.create()?)
}

/// The group's committed offset and the end offset of every partition of `topic`, once. A loop
/// that asks again and again keeps a [`GroupProgressReader`] instead.
pub fn group_progress(
    bootstrap: &str,
    group: &str,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Vec<PartitionProgress>> {
    GroupProgressReader::new(bootstrap, group, topic)?.read(timeout)
}

/// Reads a group's committed offsets on a topic beside the topic's ends, as often as asked,
/// through one client. A polling loop makes one of these rather than a client per poll: every
/// client the `rdkafka` crate (0.39) creates leaks 216 bytes (the handle on librdkafka's main
/// queue it takes to forward the log queue is never released), and dropping one blocks until
/// the consumer has closed, about 100 ms; drop it in a blocking context too.
///
/// The consumer carries the watched group's `group.id`, as committed offsets are kept per group,
/// but never subscribes, so it never joins the group. Nothing is cached: each read asks the
/// cluster again for the partitions, the committed offsets and the ends.
pub struct GroupProgressReader {
    consumer: BaseConsumer,
    group: String,
    topic: String,
}

impl GroupProgressReader {
    /// Creates the client; it connects on the first read.
    pub fn new(bootstrap: &str, group: &str, topic: &str) -> anyhow::Result<GroupProgressReader> {
        Ok(GroupProgressReader {
            consumer: plain_consumer(bootstrap, &[("group.id", group)])?,
            group: group.to_string(),
            topic: topic.to_string(),
        })
    }

    /// The group's committed offset and the end offset of every partition of the topic, as the
    /// cluster answers now.
    pub fn read(&self, timeout: Duration) -> anyhow::Result<Vec<PartitionProgress>> {
        let topic = self.topic.as_str();
        let ids = partitions(&self.consumer, topic, timeout)?;
        let mut tpl = TopicPartitionList::new();
        for partition in &ids {
            tpl.add_partition(topic, *partition);
        }
        let committed = self.consumer.committed_offsets(tpl, timeout)?;
        let mut progress = Vec::new();
        for partition in ids {
            let (_, end) = self.consumer.fetch_watermarks(topic, partition, timeout)?;
            let committed = committed
                .find_partition(topic, partition)
                .and_then(|element| match element.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                });
            progress.push(PartitionProgress {
                partition,
                committed,
                end,
            });
        }
        Ok(progress)
    }
}

impl std::fmt::Debug for GroupProgressReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupProgressReader")
            .field("group", &self.group)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// Whether the group committed every partition of `topic` up to its end.
pub fn fully_committed(progress: &[PartitionProgress]) -> bool {
    progress
        .iter()
        .all(|p| p.end == 0 || p.committed == Some(p.end))
}

/// What [`scan_topic`] read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Records shown to the visitor.
    pub(crate) records: u64,
    /// Records the broker no longer holds (the sum of the partitions' low watermarks): retention,
    /// or the mock cluster's size limit, dropped them before they could be read.
    pub(crate) dropped: u64,
}

/// Reads every record of `topic` from each partition's start to its end, showing each to `visit`
/// without keeping it, so memory stays flat however long the topic is. Use it once writers have
/// stopped: a partition is done when the consumer's position reaches the end it had when the
/// scan began. An error when the ends are not reached within `timeout`.
pub(crate) fn scan_topic(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    mut visit: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> anyhow::Result<Scan> {
    // A small prefetch: the default (64 MiB per partition) would dwarf what the demo measures.
    let consumer = plain_consumer(bootstrap, &[("queued.max.messages.kbytes", "1024")])?;
    let mut scan = Scan::default();
    let mut tpl = TopicPartitionList::new();
    let mut open = std::collections::BTreeMap::new();
    for partition in partitions(&consumer, topic, timeout)? {
        let (low, high) = consumer.fetch_watermarks(topic, partition, timeout)?;
        scan.dropped += u64::try_from(low).unwrap_or(0);
        if high > low {
            tpl.add_partition_offset(topic, partition, Offset::Offset(low))?;
            open.insert(partition, high);
        }
    }
    if open.is_empty() {
        return Ok(scan);
    }
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    while !open.is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "topic {topic}: partitions {open:?} not read to their end within {timeout:?}"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Err(error)) => return Err(error.into()),
            Some(Ok(message)) => {
                scan.records += 1;
                visit(&message);
                let partition = message.partition();
                if open
                    .get(&partition)
                    .is_some_and(|end| message.offset() + 1 >= *end)
                {
                    open.remove(&partition);
                }
            }
            // Idle: control records (transaction markers) take offsets but are never shown, so a
            // partition can end on one; its position tells.
            None => {
                for element in consumer.position()?.elements() {
                    if let Offset::Offset(position) = element.offset()
                        && open
                            .get(&element.partition())
                            .is_some_and(|end| position >= *end)
                    {
                        open.remove(&element.partition());
                    }
                }
            }
        }
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use rdkafka::consumer::CommitMode;
    use rdkafka::mocking::MockCluster;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

    use super::*;

    fn progress(partition: i32, committed: Option<i64>, end: i64) -> PartitionProgress {
        PartitionProgress {
            partition,
            committed,
            end,
        }
    }

    /// A polling loop keeps one reader, so no read may be answered from an earlier one: each
    /// sees the commits and the records written since.
    #[test]
    fn a_kept_reader_sees_later_commits_and_records() -> anyhow::Result<()> {
        let cluster = MockCluster::new(1)?;
        cluster.create_topic("input", 2, 1)?;
        let bootstrap = cluster.bootstrap_servers();
        let timeout = Duration::from_secs(10);
        let reader = GroupProgressReader::new(&bootstrap, "watched", "input")?;
        assert_eq!(
            reader.read(timeout)?,
            [progress(0, None, 0), progress(1, None, 0)]
        );

        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()?;
        for _ in 0..3 {
            producer
                .send(BaseRecord::<(), str>::to("input").partition(0).payload("x"))
                .map_err(|(error, _)| error)?;
        }
        producer.flush(timeout)?;
        let committer = plain_consumer(&bootstrap, &[("group.id", "watched")])?;
        let mut offsets = TopicPartitionList::new();
        offsets.add_partition_offset("input", 0, Offset::Offset(2))?;
        committer.commit(&offsets, CommitMode::Sync)?;

        assert_eq!(
            reader.read(timeout)?,
            [progress(0, Some(2), 3), progress(1, None, 0)]
        );
        Ok(())
    }
}
