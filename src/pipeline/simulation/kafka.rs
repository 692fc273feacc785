//! The simulated Kafka the dispatcher writes to at-least-once: the result and dead-letter
//! topics (`SimPublisher`, failing in the scenario's windows), the group coordinator's offset
//! commits (`SimCommitter`, refused in its windows), and the input records as the simulated
//! consumer delivers them. The transaction writer is `writer.rs`'s; deciding when to deliver is
//! the run's.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use super::TOPIC;
use super::scenario::{Payload, Scenario};
use super::world::{Clock, Shared};
use crate::codec::encode_event_raw;
use crate::event::RegistrationNotifyOutcome;
use crate::pipeline::dispatch::{CommitFuture, Committer};
use crate::pipeline::kafka::TraceHeaders;
use crate::pipeline::output::{Publish, PublishError, Publishing};
use crate::pipeline::record::{DeadLetter, InputRecord};

/// The simulated result and dead-letter topics, at-least-once.
pub(super) struct SimPublisher {
    pub(super) world: Shared,
    pub(super) scenario: Arc<Scenario>,
    pub(super) clock: Arc<Clock>,
}

impl std::fmt::Debug for SimPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimPublisher")
    }
}

impl SimPublisher {
    async fn write(
        &self,
        partition: i32,
        offset: i64,
        what: &'static str,
    ) -> Result<(), PublishError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        let at = self.clock.at();
        if self.scenario.publishes_fail.iter().any(|w| w.contains(at)) {
            return Err(PublishError::Kafka {
                what,
                source: KafkaError::MessageProduction(RDKafkaErrorCode::BrokerNotAvailable),
            });
        }
        self.world.lock().unwrap().output(partition, offset);
        Ok(())
    }
}

impl Publish for SimPublisher {
    fn outcome<'a>(
        &'a self,
        outcome: &'a RegistrationNotifyOutcome,
        _trace: &'a TraceHeaders,
    ) -> Publishing<'a> {
        Box::pin(self.write(outcome.source_partition, outcome.source_offset, "outcome"))
    }

    fn dead_letter<'a>(
        &'a self,
        input: &'a InputRecord,
        letter: &'a DeadLetter,
        _trace: &'a TraceHeaders,
    ) -> Publishing<'a> {
        // An event's dead letter comes with its outcome, which counts it; a poison record has
        // only the dead letter.
        let _ = letter;
        Box::pin(async move {
            if input
                .value
                .as_deref()
                .is_some_and(|value| value.first() == Some(&POISON_MARK))
            {
                self.write(input.partition, input.offset, "dead-letter")
                    .await
            } else {
                Ok(())
            }
        })
    }

    fn flush(&self, _timeout: Duration) -> Result<(), KafkaError> {
        Ok(())
    }
}

/// The first byte of a poison record's value (no Avro event starts so: it would be an
/// impossible string length).
const POISON_MARK: u8 = 0xff;

/// The simulated group coordinator's offset commits.
pub(super) struct SimCommitter {
    pub(super) world: Shared,
    pub(super) scenario: Arc<Scenario>,
    pub(super) clock: Arc<Clock>,
}

impl Committer for SimCommitter {
    fn commit(self: Arc<Self>, offsets: TopicPartitionList) -> CommitFuture {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(3)).await;
            let at = self.clock.at();
            if self.scenario.commits_refused.iter().any(|w| w.contains(at)) {
                return Err(KafkaError::ConsumerCommit(
                    RDKafkaErrorCode::RebalanceInProgress,
                ));
            }
            let commits = commits_of(&offsets);
            self.world.lock().unwrap().commit(&commits);
            Ok(())
        })
    }
}

pub(super) fn commits_of(offsets: &TopicPartitionList) -> Vec<(i32, i64, String)> {
    offsets
        .elements_for_topic(TOPIC)
        .iter()
        .filter_map(|element| match element.offset() {
            Offset::Offset(position) => {
                Some((element.partition(), position, element.metadata().to_owned()))
            }
            _ => None,
        })
        .collect()
}

pub(super) fn input_record(partition: i32, offset: i64, payload: &Payload) -> InputRecord {
    let (key, value) = match payload {
        Payload::Event { event, .. } => (
            event.reference_merchant_id.clone().into_bytes(),
            encode_event_raw(event).expect("encodes"),
        ),
        Payload::Poison => (b"poison".to_vec(), vec![POISON_MARK, 0x01, 0x02]),
    };
    InputRecord {
        topic: Arc::from(TOPIC),
        partition,
        offset,
        timestamp_ms: Some(1_700_000_000_000 + offset),
        key: Some(key),
        value: Some(value),
        headers: Vec::new(),
    }
}
