//! Publishing what became of each event: outcomes on the result topic and dead letters on the DLQ
//! topic (SPEC 3.2, 3.3, 5), through one [`OutputSink`] for both delivery modes: an idempotent
//! producer with `acks=all`, or (exactly-once) the transaction writer. One rule,
//! [`is_permanent`], says which Kafka errors no retry can mend, in both.
//!
//! A write ends only once Kafka has acknowledged the records, or the transaction writer holds
//! them; the caller commits the input offset only after that. This module never decides an
//! outcome and never commits offsets.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use std::sync::Arc;

use crate::codec::{EncodeError, OutcomeEncoder};
use crate::config::{KafkaSettings, Ordering};
use crate::event::RegistrationNotifyOutcome;
use crate::observe::{self, Stats};
use crate::pipeline::decisions::Finish;
use crate::pipeline::record::{DeadLetter, InputRecord, dead_letter_headers};
use crate::pipeline::transactions::{Submission, Submitter};
use crate::pipeline::worker::{Job, sleep_unless_stopped};

/// Bounds of the pause between attempts to write an output Kafka did not acknowledge.
const PUBLISH_RETRY_INITIAL: Duration = Duration::from_millis(100);
const PUBLISH_RETRY_MAX: Duration = Duration::from_secs(5);

/// The trace context headers (`traceparent`, `tracestate`) an event's outputs carry.
pub type TraceHeaders = [(String, Option<Vec<u8>>)];

/// A publish under way: it resolves with Kafka's acknowledgement.
pub type Publishing<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), PublishError>> + Send + 'a>>;

/// Writes outputs at-least-once: the idempotent producer in the service, a simulated topic in
/// the whole-service simulation.
pub trait Publish: Send + Sync + std::fmt::Debug {
    /// Writes one outcome, with the event's trace context headers, and waits for its
    /// acknowledgement.
    fn outcome<'a>(
        &'a self,
        outcome: &'a RegistrationNotifyOutcome,
        trace: &'a TraceHeaders,
    ) -> Publishing<'a>;
    /// Writes one dead letter, with the event's trace context headers, and waits for its
    /// acknowledgement.
    fn dead_letter<'a>(
        &'a self,
        input: &'a InputRecord,
        letter: &'a DeadLetter,
        trace: &'a TraceHeaders,
    ) -> Publishing<'a>;
    /// Waits until every record handed over is acknowledged or `timeout` passes.
    fn flush(&self, timeout: Duration) -> Result<(), KafkaError>;
}

impl Publish for OutputPublisher {
    fn outcome<'a>(
        &'a self,
        outcome: &'a RegistrationNotifyOutcome,
        trace: &'a TraceHeaders,
    ) -> Publishing<'a> {
        Box::pin(self.publish_outcome(outcome, trace))
    }

    fn dead_letter<'a>(
        &'a self,
        input: &'a InputRecord,
        letter: &'a DeadLetter,
        trace: &'a TraceHeaders,
    ) -> Publishing<'a> {
        Box::pin(self.publish_dead_letter(input, letter, trace))
    }

    fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        OutputPublisher::flush(self, timeout)
    }
}

/// Where an event's outputs go.
#[derive(Debug, Clone)]
pub enum OutputSink {
    /// At-least-once: written by the idempotent producer, each retried until acknowledged.
    Idempotent(Arc<dyn Publish>),
    /// Exactly-once: handed to the transaction writer, which commits them with the offset.
    Transactional(Submitter),
}

impl OutputSink {
    /// Resolves once the transaction writer has ended (never at-least-once): nothing handed to
    /// it can settle any more.
    pub async fn writer_gone(&self) {
        match self {
            OutputSink::Transactional(submitter) => submitter.closed().await,
            OutputSink::Idempotent(_) => std::future::pending().await,
        }
    }

    /// Writes an event's outputs: [`Finish::Terminal`] once Kafka acknowledged them,
    /// [`Finish::Submitted`] once the transaction writer holds them, [`Finish::Abandoned`] when
    /// the job was cancelled first, [`Finish::Fatal`] when Kafka can never accept them.
    pub async fn write(
        &self,
        stats: &Stats,
        job: &Job,
        letter: Option<&DeadLetter>,
        outcome: Option<&RegistrationNotifyOutcome>,
    ) -> Finish {
        let cancel = &job.cancel;
        let (trace, letter_trace) = (job.trace.headers(), job.trace.dead_letter_headers());
        let publisher = match self {
            OutputSink::Transactional(submitter) => {
                let submission = Submission {
                    record: job.record.clone(),
                    generation: job.generation,
                    dead_letter: letter.cloned(),
                    outcome: outcome.cloned(),
                    trace,
                    dead_letter_trace: letter_trace,
                };
                return tokio::select! {
                    sent = submitter.send(submission) => match sent {
                        Ok(()) => Finish::Submitted,
                        Err(_) => Finish::Abandoned,
                    },
                    () = cancel.cancelled() => Finish::Abandoned,
                };
            }
            OutputSink::Idempotent(publisher) => publisher,
        };
        let started = std::time::Instant::now();
        let finish = Self::write_acknowledged(publisher, stats, job, letter, outcome).await;
        if finish == Finish::Terminal && (letter.is_some() || outcome.is_some()) {
            observe::outputs_acknowledged(stats, started.elapsed());
        }
        finish
    }

    /// The at-least-once path of [`write`](Self::write): until Kafka acknowledged every record.
    async fn write_acknowledged(
        publisher: &Arc<dyn Publish>,
        stats: &Stats,
        job: &Job,
        letter: Option<&DeadLetter>,
        outcome: Option<&RegistrationNotifyOutcome>,
    ) -> Finish {
        let cancel = &job.cancel;
        let (trace, letter_trace) = (job.trace.headers(), job.trace.dead_letter_headers());
        // The dead letter first, then the outcome, each retried on its own: retrying them as a
        // pair would write a new copy of an acknowledged dead letter on every retry of the
        // outcome.
        if let Some(letter) = letter {
            let published = until_acknowledged(stats, cancel, || {
                publisher.dead_letter(&job.record, letter, &letter_trace)
            })
            .await;
            if published != Finish::Terminal {
                return published;
            }
        }
        match outcome {
            Some(outcome) => {
                until_acknowledged(stats, cancel, || publisher.outcome(outcome, &trace)).await
            }
            None => Finish::Terminal,
        }
    }

    /// Waits until every record handed to the idempotent producer is acknowledged or `timeout`
    /// passes. (The transaction writer settles its own records.)
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        match self {
            OutputSink::Idempotent(publisher) => publisher.flush(timeout),
            OutputSink::Transactional(_) => Ok(()),
        }
    }
}

/// Retries a write until Kafka acknowledges it.
async fn until_acknowledged<F, Fut>(
    stats: &Stats,
    cancel: &tokio_util::sync::CancellationToken,
    mut publish: F,
) -> Finish
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), PublishError>>,
{
    let mut delay = PUBLISH_RETRY_INITIAL;
    loop {
        let result = tokio::select! {
            result = publish() => result,
            () = cancel.cancelled() => return Finish::Abandoned,
        };
        match result {
            Ok(()) => return Finish::Terminal,
            Err(error) if error.is_permanent() => {
                observe::publish_fatal(stats, &error);
                return Finish::Fatal;
            }
            Err(error) => {
                observe::publish_failed(stats, &error, delay);
                if !sleep_unless_stopped(cancel, delay).await {
                    return Finish::Abandoned;
                }
                delay = (delay * 2).min(PUBLISH_RETRY_MAX);
            }
        }
    }
}

/// Why an output record was not (yet) written.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("outcome could not be encoded: {0}")]
    Encode(#[from] EncodeError),
    #[error("kafka did not acknowledge the {what} record: {source}")]
    Kafka {
        what: &'static str,
        #[source]
        source: KafkaError,
    },
}

impl PublishError {
    /// Whether writing the same record again can never succeed (see [`is_permanent`]); an
    /// outcome the registry refuses for good counts too. Everything else is retried.
    pub fn is_permanent(&self) -> bool {
        match self {
            PublishError::Encode(error) => !error.is_transient(),
            PublishError::Kafka { source, .. } => is_permanent(source),
        }
    }
}

/// The one rule, for both delivery modes, of which Kafka errors no retry can mend: a record too
/// large or malformed for the topic, a topic or cluster we are not authorised for, a topic that
/// does not exist, or a producer in a fatal state (fenced, idempotence or epoch broken). Brokers
/// down, timeouts and leader changes are not: they are retried.
pub fn is_permanent(error: &KafkaError) -> bool {
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
pub fn owned_headers(pairs: &TraceHeaders) -> OwnedHeaders {
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
pub fn dead_letter_record<'a>(
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

/// The producer side of the pipeline.
pub struct OutputPublisher {
    producer: FutureProducer,
    encoder: OutcomeEncoder,
    result_topic: String,
    dlq_topic: String,
    consumer_group: String,
}

impl std::fmt::Debug for OutputPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputPublisher")
            .field("result_topic", &self.result_topic)
            .field("dlq_topic", &self.dlq_topic)
            .finish_non_exhaustive()
    }
}

/// The producer configuration regnotify insists on, on top of the pass-through properties.
pub fn producer_config(kafka: &KafkaSettings) -> ClientConfig {
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
fn linger_is_set(kafka: &KafkaSettings) -> bool {
    ["linger.ms", "queue.buffering.max.ms"]
        .iter()
        .any(|name| kafka.producer.0.contains_key(*name))
}

/// The output producer's configuration for `ordering`. Under partition ordering a partition's
/// next event waits for this one's acknowledgement, so a linger is latency of every event and
/// nothing else (at most one record per partition waits to be sent): it is 0 unless the user set
/// it. Measured with `regnotify bench --scenario partition/0ms`: 1,779-2,060 events/s against
/// 1,192-1,334 with 1 ms. Under key ordering 1 ms stays: 0 cost 11-15 % more CPU per event.
fn output_producer_config(kafka: &KafkaSettings, ordering: Ordering) -> ClientConfig {
    let mut config = producer_config(kafka);
    if ordering == Ordering::Partition && !linger_is_set(kafka) {
        config.set("linger.ms", "0");
    }
    config
}

impl OutputPublisher {
    pub fn new(
        kafka: &KafkaSettings,
        encoder: OutcomeEncoder,
        ordering: Ordering,
    ) -> Result<OutputPublisher, KafkaError> {
        let producer: FutureProducer = output_producer_config(kafka, ordering).create()?;
        Ok(OutputPublisher {
            producer,
            encoder,
            result_topic: kafka.result_topic.clone(),
            dlq_topic: kafka.dlq_topic.clone(),
            consumer_group: kafka.group_id.clone(),
        })
    }

    /// Writes one outcome, keyed by `referenceMerchantId`, and waits for Kafka's acknowledgement.
    pub async fn publish_outcome(
        &self,
        outcome: &RegistrationNotifyOutcome,
        trace: &TraceHeaders,
    ) -> Result<(), PublishError> {
        let value = self.encoder.encode(outcome).await?;
        let record = FutureRecord::to(&self.result_topic)
            .key(outcome.reference_merchant_id.as_bytes())
            .payload(&value)
            .headers(owned_headers(trace));
        self.producer
            .send(record, Timeout::Never)
            .await
            .map(|_| ())
            .map_err(|(source, _)| PublishError::Kafka {
                what: "outcome",
                source,
            })
    }

    /// Writes the input record, unchanged but for the added `dlq.*` headers, to the DLQ topic.
    pub async fn publish_dead_letter(
        &self,
        input: &InputRecord,
        letter: &DeadLetter,
        trace: &TraceHeaders,
    ) -> Result<(), PublishError> {
        let record =
            dead_letter_record(&self.dlq_topic, &self.consumer_group, input, letter, trace);
        self.producer
            .send(record, Timeout::Never)
            .await
            .map(|_| ())
            .map_err(|(source, _)| PublishError::Kafka {
                what: "dead-letter",
                source,
            })
    }

    /// Waits until every record handed to the producer is acknowledged or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_producer_lingers_unless_told_otherwise_by_either_name() {
        let kafka = KafkaSettings::default();
        assert_eq!(producer_config(&kafka).get("linger.ms"), Some("1"));
        let linger = |ordering| {
            output_producer_config(&kafka, ordering)
                .get("linger.ms")
                .map(str::to_owned)
        };
        assert_eq!(linger(Ordering::Key).as_deref(), Some("1"));
        assert_eq!(linger(Ordering::Partition).as_deref(), Some("0"));
        for ordering in [Ordering::Key, Ordering::Partition] {
            for name in ["linger.ms", "queue.buffering.max.ms"] {
                let mut kafka = KafkaSettings::default();
                kafka.producer.0.insert(name.into(), "20".into());
                let config = output_producer_config(&kafka, ordering);
                assert_eq!(config.get(name), Some("20"), "{name}");
                let other = if name == "linger.ms" {
                    "queue.buffering.max.ms"
                } else {
                    "linger.ms"
                };
                assert_eq!(config.get(other), None, "{name} set: {other} left alone");
            }
        }
    }
}
