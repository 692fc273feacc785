//! The Kafka plumbing the pipeline and the operator tools share: the producer configuration
//! regnotify insists on, record headers both ways, the dead-letter record, which Kafka errors no
//! retry can mend, and the offsets a commit writes. No decision is made here.

use std::panic::AssertUnwindSafe;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaSettings;
use crate::observe;
use crate::pipeline::record::{DeadLetter, InputRecord, dead_letter_headers};

/// The trace context headers (`traceparent`, `tracestate`) an event's outputs carry.
pub(crate) type TraceHeaders = [(String, Option<Vec<u8>>)];

/// The producer configuration regnotify insists on, on top of the pass-through properties.
pub(crate) fn producer_config(kafka: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    // The transaction writer sets its own transactional.id; this producer is never transactional.
    for (name, value) in &kafka.producer.0 {
        if name != "transactional.id" {
            config.set(name, value);
        }
    }
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("acks", "all");
    if !linger_is_set(kafka) {
        // An event holds its in-flight slot until its outcome is acknowledged (and then until
        // a commit covers it), so librdkafka's 5 ms default is 5 ms more of every slot (measured: 1,024 against 1,074 events/s at
        // 64 in flight and 50 ms latency); under load batches fill without waiting anyway.
        config.set("linger.ms", "1");
    }
    config
}

/// Whether the user set the producer's linger; `queue.buffering.max.ms` is librdkafka's other
/// name for it, and a user who set either keeps it.
pub(crate) fn linger_is_set(kafka: &KafkaSettings) -> bool {
    ["linger.ms", "queue.buffering.max.ms"]
        .iter()
        .any(|name| kafka.producer.0.contains_key(*name))
}

/// The one rule, for both delivery modes, of which Kafka errors no retry can mend: a record too
/// large or malformed for the topic, a topic or cluster we are not authorised for, a topic that
/// does not exist, or a producer in a fatal state (fenced, idempotence or epoch broken). Brokers
/// down, timeouts and leader changes are not: they are retried.
pub(crate) fn is_permanent(error: &KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode as Code;
    if let KafkaError::Transaction(error) = error {
        return error.is_fatal();
    }
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::MessageSizeTooLarge
                | Code::InvalidMessageSize
                | Code::InvalidMessage
                | Code::TopicAuthorizationFailed
                | Code::ClusterAuthorizationFailed
                | Code::TransactionalIdAuthorizationFailed
                | Code::UnknownTopic
                | Code::Fatal
                | Code::ProducerFenced
                | Code::InvalidProducerEpoch
                | Code::InvalidProducerIdMapping
        )
    )
}

/// Record headers from pairs.
pub(crate) fn owned_headers(pairs: &TraceHeaders) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(pairs.len());
    for (key, value) in pairs {
        headers = headers.insert(Header {
            key,
            value: value.as_deref(),
        });
    }
    headers
}

/// The dead-letter record of `input` (SPEC 3.3): its key, value and headers, plus `dlq.*`.
pub(crate) fn dead_letter_record<'a>(
    dlq_topic: &'a str,
    consumer_group: &str,
    input: &'a InputRecord,
    letter: &DeadLetter,
    trace: &[(String, Option<Vec<u8>>)],
) -> FutureRecord<'a, [u8], [u8]> {
    let headers = owned_headers(&dead_letter_headers(input, consumer_group, letter, trace));
    let mut record = FutureRecord::to(dlq_topic).headers(headers);
    if let Some(key) = &input.key {
        record = record.key(key.as_slice());
    }
    if let Some(value) = &input.value {
        record = record.payload(value.as_slice());
    }
    record
}

/// A commit of `positions` of `topic`, with the note of each (see [`crate::pipeline::finished`]).
pub(crate) fn commit_list(
    topic: &str,
    positions: &[(i32, i64)],
    notes: &[(i32, String)],
) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (partition, position) in positions {
        if let Err(error) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*position)) {
            tracing::warn!(%error, partition, "cannot express commit position");
            continue;
        }
        let note = notes
            .iter()
            .find(|(noted, _)| noted == partition)
            .map(|(_, note)| note.as_str())
            .unwrap_or_default();
        observe::finished_note(*partition, note.len());
        if !note.is_empty()
            && let Some(mut element) = tpl.find_partition(topic, *partition)
        {
            element.set_metadata(note);
        }
    }
    tpl
}

/// The consumer configuration regnotify insists on, on top of the pass-through properties.
pub(crate) fn consumer_config(kafka: &KafkaSettings) -> ClientConfig {
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
    // Defaults where the user set nothing. statistics.interval.ms feeds the lag gauges and the
    // broker-reachability check of `/readyz`. The prefetch bounds: while the intake is held
    // librdkafka goes on fetching ahead, up to 64 MB or 100,000 records a partition by default,
    // which a backlog fills (measured: peak RSS 32 MB at 10,000 events and 71 MB at 100,000 with
    // the whole run produced before the start; 51 MB with these). 2,000 records a partition is
    // seconds of work; room is looked for every 50 ms rather than librdkafka's 1 s, so the queue
    // does not run dry in between. A partition resumed after a pause joins the next fetch
    // request, which waits for the one the broker holds (up to fetch.wait.max.ms when the other
    // partitions are at their end): 100 ms rather than 500 ms keeps that from emptying its
    // window (measured under partition ordering at latency 0: gaps of 360-440 ms with every
    // resume, for ten fetch requests a second from an idle member instead of two).
    for (name, value) in [
        ("statistics.interval.ms", "5000"),
        ("auto.offset.reset", "earliest"),
        ("queued.max.messages.kbytes", "4096"),
        ("queued.min.messages", "2000"),
        ("fetch.queue.backoff.ms", "50"),
        ("fetch.wait.max.ms", "100"),
        // A fetched batch stays in memory while any of its records is referenced (waiting in a
        // window, say): librdkafka's 1 MB a partition made the peak RSS grow with the backlog
        // (35 MB at 20,000 events, 54 MB at 200,000 on Kafka 4.1, `regnotify measure`); 256 KB,
        // over a thousand small records a fetch, held it at 38 MB.
        ("max.partition.fetch.bytes", "262144"),
    ] {
        if !kafka.consumer.0.contains_key(name) {
            config.set(name, value);
        }
    }
    config
}

/// Copies a record's headers. rdkafka panics on a header name that is not UTF-8 (Kafka allows
/// any bytes there); such a header cannot be read through its API, so it is left out with a
/// warning instead of taking the consumer thread down.
pub(crate) fn read_headers(message: &BorrowedMessage<'_>) -> Vec<(String, Option<Vec<u8>>)> {
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
