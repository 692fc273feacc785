//! Publishing what became of each event at-least-once: outcomes on the result topic and dead
//! letters on the DLQ topic (SPEC 3.2, 3.3, 5) through the idempotent producer with `acks=all`
//! ([`OutputPublisher`]), behind the [`Publish`] trait the whole-service simulation also
//! implements. A publish resolves with Kafka's acknowledgement or a [`PublishError`]; retrying
//! is [`super::sink`]'s. This module never decides an outcome and never commits offsets.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::codec::{EncodeError, OutcomeEncoder};
use crate::config::{KafkaSettings, Ordering};
use crate::event::RegistrationNotifyOutcome;
use crate::pipeline::kafka::{
    TraceHeaders, dead_letter_record, is_permanent, linger_is_set, owned_headers, producer_config,
};
use crate::pipeline::record::{DeadLetter, InputRecord};

/// A publish under way: it resolves with Kafka's acknowledgement.
pub(crate) type Publishing<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), PublishError>> + Send + 'a>>;

/// Writes outputs at-least-once: the idempotent producer in the service, a simulated topic in
/// the whole-service simulation.
pub(crate) trait Publish: Send + Sync + std::fmt::Debug {
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

/// Why an output record was not (yet) written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
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
    pub(crate) fn is_permanent(&self) -> bool {
        match self {
            PublishError::Encode(error) => !error.is_transient(),
            PublishError::Kafka { source, .. } => is_permanent(source),
        }
    }
}

/// The producer side of the pipeline.
pub(crate) struct OutputPublisher {
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
    pub(crate) fn new(
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
    pub(crate) async fn publish_outcome(
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
    pub(crate) async fn publish_dead_letter(
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
    pub(crate) fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
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
