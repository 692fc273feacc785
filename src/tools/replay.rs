//! `regnotify replay-dlq`: dead letters read from the DLQ topic, from where the replay's own
//! consumer group left off up to the high watermarks seen at start, sent back to the input topic
//! with their key, value and headers (`dlq.*` stripped, the trace context kept as its origin),
//! each committed in that group once its copy is acknowledged; the reason filter and its group.
//!
//! Never joins or commits in the service's consumer group.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{KafkaSettings, Settings};
use crate::event::DeadLetterReason;
use crate::inspect::ReadRecord;
use crate::pipeline::kafka::{owned_headers, producer_config};
use crate::pipeline::record::DLQ_HEADER_PREFIX;

/// Bound on each metadata, offset and commit request of `replay-dlq`.
const KAFKA_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `replay-dlq` waits for the next dead letter before it gives up on an unreachable
/// cluster.
const REPLAY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one replay poll waits; bounds how late an idle timeout is noticed.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Parses a `dlq.reason` given on the command line (case-insensitive).
pub fn parse_dead_letter_reason(raw: &str) -> Result<DeadLetterReason, String> {
    DeadLetterReason::from_symbol(&raw.trim().to_ascii_uppercase()).ok_or_else(|| {
        let known: Vec<&str> = DeadLetterReason::ALL.iter().map(|r| r.as_str()).collect();
        format!(
            "unknown dead-letter reason `{raw}`; expected one of {}",
            known.join(", ")
        )
    })
}

/// The consumer group that remembers how far `replay-dlq` got: `<group_id>-replay-dlq`, and
/// `<group_id>-replay-dlq-<reason>` (e.g. `regnotify-replay-dlq-request-refused`) when filtering
/// by reason. A filtered run moves past the dead letters of other reasons; with its own group it
/// does not take them away from a later run for those reasons.
pub(crate) fn replay_group(group_id: &str, reason: Option<DeadLetterReason>) -> String {
    match reason {
        None => format!("{group_id}-replay-dlq"),
        Some(reason) => format!(
            "{group_id}-replay-dlq-{}",
            reason.as_str().to_ascii_lowercase().replace('_', "-")
        ),
    }
}

/// Options of `replay-dlq`.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Only dead letters whose `dlq.reason` is this one.
    pub reason: Option<DeadLetterReason>,
    /// Stop after this many replayed.
    pub limit: Option<u64>,
    /// Report what would be sent; send and commit nothing.
    pub dry_run: bool,
}

/// One dead letter sent (or, in a dry run, that would be sent) back to the input topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayedRecord {
    pub(crate) dlq_partition: i32,
    pub(crate) dlq_offset: i64,
    /// `dlq.source.topic`, `dlq.source.partition`, `dlq.source.offset`, when present.
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
    /// `dlq.reason` as written (may be absent on records not written by regnotify).
    pub(crate) reason: Option<String>,
    pub key: Option<Vec<u8>>,
}

impl fmt::Display for ReplayedRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn or_unknown<T: fmt::Display>(value: Option<&T>) -> String {
            value.map_or_else(|| "?".to_string(), ToString::to_string)
        }
        write!(
            f,
            "source={}/{}@{} reason={} key=",
            or_unknown(self.source_topic.as_ref()),
            or_unknown(self.source_partition.as_ref()),
            or_unknown(self.source_offset.as_ref()),
            or_unknown(self.reason.as_ref()),
        )?;
        match &self.key {
            // Escaped so that one record stays one line whatever bytes the key holds.
            Some(key) => write!(f, "{}", String::from_utf8_lossy(key).escape_debug()),
            None => f.write_str("(none)"),
        }
    }
}

/// What `replay-dlq` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// The consumer group the progress is kept in.
    pub group: String,
    /// Dead letters read (up to the end seen at start, or the limit).
    pub scanned: u64,
    /// Dead letters sent back (in a dry run: that would have been sent).
    pub replayed: u64,
    /// Dead letters left alone because their reason did not match.
    pub skipped: u64,
    pub dry_run: bool,
}

/// Where one DLQ partition starts and where this run stops.
#[derive(Debug, Clone, Copy)]
struct PartitionRange {
    /// The next offset to read (committed by the replay group, else the partition's start).
    next: i64,
    /// The high watermark when the run started.
    end: i64,
}

impl PartitionRange {
    fn done(&self) -> bool {
        self.next >= self.end
    }
}

/// Sends dead letters from `kafka.dlq_topic` back to `kafka.input_topic` with their original key,
/// value and headers, all `dlq.*` headers stripped, and calls `on_replayed` for each as it goes.
///
/// It reads each partition from where [`replay_group`] left off (the earliest offset the first
/// time) up to the high watermark seen at start, so it ends even while new dead letters arrive;
/// those are left for the next run. After each acknowledged republish it commits the dead letter
/// in its group, so a second run does not replay it again; dead letters skipped by the reason
/// filter are committed too (in the reason's own group). Offsets are committed without joining the
/// group, so two runs for the same group at the same time would both replay everything.
pub async fn replay_dead_letters(
    settings: &Settings,
    options: &ReplayOptions,
    mut on_replayed: impl FnMut(&ReplayedRecord),
) -> anyhow::Result<ReplayReport> {
    let kafka = &settings.kafka;
    let group = replay_group(&kafka.group_id, options.reason);
    let mut report = ReplayReport {
        group: group.clone(),
        dry_run: options.dry_run,
        ..ReplayReport::default()
    };
    let (consumer, mut ranges) = tokio::task::spawn_blocking({
        let (kafka, group) = (kafka.clone(), group.clone());
        move || open_dlq(&kafka, &group)
    })
    .await
    .context("the dlq consumer set-up panicked")??;
    let producer: Option<FutureProducer> = if options.dry_run {
        None
    } else {
        Some(
            producer_config(kafka)
                .create()
                .context("cannot create kafka producer")?,
        )
    };

    let limit_reached = |report: &ReplayReport| options.limit.is_some_and(|l| report.replayed >= l);
    let mut uncommitted: BTreeMap<i32, i64> = BTreeMap::new();
    let mut last_record = Instant::now();
    while !ranges.values().all(PartitionRange::done) && !limit_reached(&report) {
        let polled = tokio::task::spawn_blocking({
            let consumer = Arc::clone(&consumer);
            move || poll_owned(&consumer)
        })
        .await
        .context("the dlq poll panicked")?;
        let record = match polled {
            Ok(Some(record)) => record,
            Ok(None) => {
                anyhow::ensure!(
                    last_record.elapsed() < REPLAY_IDLE_TIMEOUT,
                    "no dead letter arrived for {}s although the dlq topic {} has more before \
                     its end; is kafka reachable?",
                    REPLAY_IDLE_TIMEOUT.as_secs(),
                    kafka.dlq_topic,
                );
                continue;
            }
            Err(KafkaError::PartitionEOF(partition)) => {
                // Offsets can end in gaps (transaction markers, compaction): the end of the log
                // is the end even when the last offset is below the watermark seen at start.
                if let Some(range) = ranges.get_mut(&partition) {
                    range.end = range.end.min(range.next);
                }
                continue;
            }
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("cannot read the dlq topic {}", kafka.dlq_topic));
            }
        };
        last_record = Instant::now();
        let Some(range) = ranges.get_mut(&record.partition) else {
            continue;
        };
        if range.done() || record.offset < range.next {
            continue;
        }
        range.next = record.offset + 1;
        report.scanned += 1;
        let reason = record.header("dlq.reason").map(str::to_string);
        if options
            .reason
            .is_some_and(|wanted| reason.as_deref() != Some(wanted.as_str()))
        {
            report.skipped += 1;
            uncommitted.insert(record.partition, range.next);
            continue;
        }
        let replayed = ReplayedRecord {
            dlq_partition: record.partition,
            dlq_offset: record.offset,
            source_topic: record.header("dlq.source.topic").map(str::to_string),
            source_partition: record
                .header("dlq.source.partition")
                .and_then(|p| p.parse().ok()),
            source_offset: record
                .header("dlq.source.offset")
                .and_then(|o| o.parse().ok()),
            reason,
            key: record.key.clone(),
        };
        if let Some(producer) = &producer {
            republish(producer, &kafka.input_topic, &record)
                .await
                .with_context(|| {
                    format!(
                        "dead letter {}@{} was not replayed; {} replayed before it",
                        record.partition, record.offset, report.replayed
                    )
                })?;
            uncommitted.insert(record.partition, range.next);
            commit(&consumer, &kafka.dlq_topic, &mut uncommitted).await?;
        }
        report.replayed += 1;
        on_replayed(&replayed);
    }
    if !options.dry_run {
        commit(&consumer, &kafka.dlq_topic, &mut uncommitted).await?;
    }
    Ok(report)
}

/// Creates the replay consumer and assigns every DLQ partition from where `group` left off.
fn open_dlq(
    kafka: &KafkaSettings,
    group: &str,
) -> anyhow::Result<(Arc<BaseConsumer>, BTreeMap<i32, PartitionRange>)> {
    let topic = &kafka.dlq_topic;
    let mut config = crate::pipeline::kafka::consumer_config(kafka);
    config
        .set("group.id", group)
        // A replay group that never committed starts at the oldest dead letter, whatever the
        // service's own reset policy is.
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .remove("statistics.interval.ms");
    let consumer: BaseConsumer = config.create().context("cannot create kafka consumer")?;
    let metadata = consumer
        .fetch_metadata(Some(topic), KAFKA_REQUEST_TIMEOUT)
        .with_context(|| format!("cannot fetch the metadata of the dlq topic {topic}"))?;
    let ids: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(!ids.is_empty(), "the dlq topic {topic} does not exist");
    let mut wanted = TopicPartitionList::new();
    for id in &ids {
        wanted.add_partition(topic, *id);
    }
    let committed = consumer
        .committed_offsets(wanted, KAFKA_REQUEST_TIMEOUT)
        .with_context(|| format!("cannot read the committed offsets of group {group}"))?;
    let mut ranges = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    for id in ids {
        let (low, high) = consumer
            .fetch_watermarks(topic, id, KAFKA_REQUEST_TIMEOUT)
            .with_context(|| format!("cannot fetch the watermarks of {topic}/{id}"))?;
        let committed =
            committed
                .find_partition(topic, id)
                .and_then(|element| match element.offset() {
                    Offset::Offset(offset) => Some(offset),
                    _ => None,
                });
        // A committed offset below the log start (retention) resumes at the log start.
        let next = committed.map_or(low, |offset| offset.max(low));
        assignment.add_partition_offset(topic, id, Offset::Offset(next))?;
        ranges.insert(id, PartitionRange { next, end: high });
    }
    consumer
        .assign(&assignment)
        .with_context(|| format!("cannot assign the partitions of {topic}"))?;
    Ok((Arc::new(consumer), ranges))
}

/// One poll, copied out of librdkafka's buffers.
fn poll_owned(consumer: &BaseConsumer) -> Result<Option<ReadRecord>, KafkaError> {
    let Some(message) = consumer.poll(POLL_INTERVAL) else {
        return Ok(None);
    };
    Ok(Some(ReadRecord::copy(&message?)))
}

/// Sends a dead letter's key, value and non-`dlq.*` headers to the input topic and waits for the
/// acknowledgement. Its trace context moves under `regnotify.origin.*`: the replayed event starts
/// a trace of its own, linked to the one that dead-lettered it.
async fn republish(
    producer: &FutureProducer,
    input_topic: &str,
    letter: &ReadRecord,
) -> Result<(), KafkaError> {
    let kept: Vec<(String, Option<Vec<u8>>)> = letter
        .headers
        .iter()
        .filter(|(name, _)| !name.starts_with(DLQ_HEADER_PREFIX))
        .cloned()
        .collect();
    let headers = owned_headers(&crate::telemetry::traces::replay_headers(&kept));
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(input_topic).headers(headers);
    if let Some(key) = &letter.key {
        record = record.key(key.as_slice());
    }
    if let Some(value) = &letter.value {
        record = record.payload(value.as_slice());
    }
    producer
        .send(record, Timeout::Never)
        .await
        .map(|_| ())
        .map_err(|(error, _)| error)
}

/// Commits the positions in `uncommitted` synchronously, then forgets them.
async fn commit(
    consumer: &Arc<BaseConsumer>,
    topic: &str,
    uncommitted: &mut BTreeMap<i32, i64>,
) -> anyhow::Result<()> {
    if uncommitted.is_empty() {
        return Ok(());
    }
    let mut offsets = TopicPartitionList::new();
    for (partition, next) in uncommitted.iter() {
        offsets.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
    }
    let consumer = Arc::clone(consumer);
    tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync))
        .await
        .context("the dlq commit panicked")?
        .context("cannot commit the replay progress")?;
    uncommitted.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn reasons_parse_case_insensitively_and_unknown_ones_name_the_choices() {
        assert_eq!(
            parse_dead_letter_reason("request_refused"),
            Ok(DeadLetterReason::RequestRefused)
        );
        let error = parse_dead_letter_reason("REFUSED").unwrap_err();
        assert!(error.contains("`REFUSED`"), "{error}");
        for reason in DeadLetterReason::ALL {
            assert!(error.contains(reason.as_str()), "{error}");
        }
    }

    #[test]
    fn each_reason_filter_has_its_own_group() {
        assert_eq!(replay_group("regnotify", None), "regnotify-replay-dlq");
        assert_eq!(
            replay_group("regnotify", Some(DeadLetterReason::RequestRefused)),
            "regnotify-replay-dlq-request-refused"
        );
    }

    #[test]
    fn a_replayed_record_prints_on_one_line() {
        let record = ReplayedRecord {
            dlq_partition: 0,
            dlq_offset: 7,
            source_topic: Some("in".into()),
            source_partition: Some(2),
            source_offset: Some(41),
            reason: Some("REQUEST_REFUSED".into()),
            key: Some(b"M-1\nx".to_vec()),
        };
        assert_eq!(
            record.to_string(),
            "source=in/2@41 reason=REQUEST_REFUSED key=M-1\\nx"
        );
    }
}
