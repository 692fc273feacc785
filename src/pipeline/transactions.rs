//! Exactly-once outputs (`processing.exactly_once = true`, SPEC 5): outcomes, dead letters and the
//! input offsets they settle are written in one Kafka transaction, so a `read_committed` reader
//! sees exactly one outcome per event even across crashes.
//!
//! One task owns the transactional producer. Workers hand it their finished outputs; every
//! `transaction_interval` it writes the batch, asks the dispatcher which commit positions the
//! batch settles (without changing its books), adds them with `send_offsets_to_transaction`
//! (the group's metadata fences zombies, KIP-447) and commits. Only after the commit does the
//! dispatcher advance its watermarks and do the workers finish. An aborted transaction is retried
//! whole; a fenced or fatal producer stops the service. HTTP calls stay at-least-once.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::codec::OutcomeEncoder;
use crate::config::KafkaSettings;
use crate::event::RegistrationNotifyOutcome;
use crate::pipeline::consumer::{Control, PipelineConsumer};
use crate::pipeline::output::producer_config;
use crate::pipeline::record::{DeadLetter, InputRecord, dead_letter_headers};

/// Bound on one blocking transaction call (begin, offsets, commit, abort).
const TRANSACTION_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Most submissions written in one transaction.
const MAX_BATCH: usize = 5_000;
/// Pause before retrying an aborted transaction.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// One event's outputs, handed over by its worker.
#[derive(Debug)]
pub struct Submission {
    pub record: InputRecord,
    pub generation: u64,
    pub dead_letter: Option<DeadLetter>,
    pub outcome: Option<RegistrationNotifyOutcome>,
    pub done: oneshot::Sender<Settled>,
}

/// What became of a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Written and committed with its offset.
    Committed,
    /// The producer is fenced or broken: the service must stop.
    Fatal,
}

/// One input offset a committed transaction settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettledOffset {
    pub partition: i32,
    pub generation: u64,
    pub offset: i64,
}

/// A handle workers submit through.
pub type Submitter = mpsc::Sender<Submission>;

/// Creates the transactional producer and initialises its transactions.
pub fn transactional_producer(kafka: &KafkaSettings) -> anyhow::Result<FutureProducer> {
    let mut config = producer_config(kafka);
    // Unique per process: with KIP-447 the group's generation, not the id, fences zombies.
    config.set(
        "transactional.id",
        format!("{}-{}", kafka.group_id, uuid::Uuid::new_v4().simple()),
    );
    let producer: FutureProducer = config.create()?;
    producer.init_transactions(TRANSACTION_CALL_TIMEOUT)?;
    Ok(producer)
}

/// The transaction task. Runs until every submitter is dropped and the last batch is settled, or
/// until the producer fails fatally (then `fatal` is cancelled).
pub struct TransactionWriter {
    pub producer: Arc<FutureProducer>,
    pub consumer: Arc<PipelineConsumer>,
    pub encoder: Arc<OutcomeEncoder>,
    pub result_topic: String,
    pub dlq_topic: String,
    pub consumer_group: String,
    pub input_topic: String,
    pub interval: Duration,
    pub control: mpsc::UnboundedSender<Control>,
    pub fatal: CancellationToken,
}

impl std::fmt::Debug for TransactionWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionWriter")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl TransactionWriter {
    pub async fn run(self, mut submissions: mpsc::Receiver<Submission>) {
        while let Some(first) = submissions.recv().await {
            let mut batch = vec![first];
            let deadline = tokio::time::Instant::now() + self.interval;
            while batch.len() < MAX_BATCH {
                match tokio::time::timeout_at(deadline, submissions.recv()).await {
                    Ok(Some(submission)) => batch.push(submission),
                    Ok(None) | Err(_) => break,
                }
            }
            let settled = self.settle(&batch).await;
            for submission in batch {
                let _ = submission.done.send(settled);
            }
            if settled == Settled::Fatal {
                self.fatal.cancel();
                return;
            }
        }
    }

    /// Writes and commits one batch, retrying aborted transactions.
    async fn settle(&self, batch: &[Submission]) -> Settled {
        loop {
            match self.try_transaction(batch).await {
                Ok(()) => return Settled::Committed,
                Err(error) if is_fatal(&error) => {
                    tracing::error!(error = %error, "transactional producer failed for good");
                    return Settled::Fatal;
                }
                Err(error) => {
                    tracing::warn!(error = %error, "transaction aborted, retrying");
                    let producer = Arc::clone(&self.producer);
                    let aborted = tokio::task::spawn_blocking(move || {
                        producer.abort_transaction(TRANSACTION_CALL_TIMEOUT)
                    })
                    .await;
                    if let Ok(Err(abort_error)) = aborted
                        && is_fatal(&TransactionError::Kafka(abort_error.clone()))
                    {
                        tracing::error!(error = %abort_error, "transaction cannot be aborted");
                        return Settled::Fatal;
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    async fn try_transaction(&self, batch: &[Submission]) -> Result<(), TransactionError> {
        let producer = Arc::clone(&self.producer);
        blocking(move || producer.begin_transaction()).await?;
        let mut deliveries = Vec::new();
        for submission in batch {
            if let Some(letter) = &submission.dead_letter {
                let mut headers = OwnedHeaders::new();
                for (key, value) in
                    dead_letter_headers(&submission.record, &self.consumer_group, letter)
                {
                    headers = headers.insert(Header {
                        key: &key,
                        value: value.as_deref(),
                    });
                }
                let mut record: FutureRecord<'_, [u8], [u8]> =
                    FutureRecord::to(&self.dlq_topic).headers(headers);
                if let Some(key) = &submission.record.key {
                    record = record.key(key.as_slice());
                }
                if let Some(value) = &submission.record.value {
                    record = record.payload(value.as_slice());
                }
                deliveries.push(
                    self.producer
                        .send_result(record)
                        .map_err(|(error, _)| TransactionError::Kafka(error))?,
                );
            }
            if let Some(outcome) = &submission.outcome {
                let value = self
                    .encoder
                    .encode(outcome)
                    .await
                    .map_err(TransactionError::Encode)?;
                let record = FutureRecord::to(&self.result_topic)
                    .key(outcome.reference_merchant_id.as_bytes())
                    .payload(&value);
                deliveries.push(
                    self.producer
                        .send_result(record)
                        .map_err(|(error, _)| TransactionError::Kafka(error))?,
                );
            }
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(TransactionError::Kafka(error)),
                Err(_) => return Err(TransactionError::Closed),
            }
        }
        let settled: Vec<SettledOffset> = batch
            .iter()
            .map(|submission| SettledOffset {
                partition: submission.record.partition,
                generation: submission.generation,
                offset: submission.record.offset,
            })
            .collect();
        let (reply, positions) = oneshot::channel();
        self.control
            .send(Control::PrepareCommit {
                settled: settled.clone(),
                reply,
            })
            .map_err(|_| TransactionError::Closed)?;
        let positions = positions.await.map_err(|_| TransactionError::Closed)?;
        if !positions.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (partition, position) in &positions {
                tpl.add_partition_offset(&self.input_topic, *partition, Offset::Offset(*position))
                    .map_err(TransactionError::Kafka)?;
            }
            let metadata = self
                .consumer
                .group_metadata()
                .ok_or(TransactionError::NoGroupMetadata)?;
            let producer = Arc::clone(&self.producer);
            blocking(move || {
                producer.send_offsets_to_transaction(&tpl, &metadata, TRANSACTION_CALL_TIMEOUT)
            })
            .await?;
        }
        let producer = Arc::clone(&self.producer);
        blocking(move || producer.commit_transaction(TRANSACTION_CALL_TIMEOUT)).await?;
        for (partition, position) in positions {
            crate::observe::committed(partition, position);
        }
        let _ = self.control.send(Control::TransactionCommitted(settled));
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
enum TransactionError {
    #[error("{0}")]
    Kafka(KafkaError),
    #[error("outcome could not be encoded: {0}")]
    Encode(crate::codec::EncodeError),
    #[error("the consumer has no group metadata yet")]
    NoGroupMetadata,
    #[error("the pipeline is stopping")]
    Closed,
}

fn is_fatal(error: &TransactionError) -> bool {
    match error {
        TransactionError::Kafka(KafkaError::Transaction(error)) => {
            error.is_fatal() || !(error.is_retriable() || error.txn_requires_abort())
        }
        TransactionError::Kafka(error) => matches!(
            error.rdkafka_error_code(),
            Some(
                rdkafka::types::RDKafkaErrorCode::Fatal
                    | rdkafka::types::RDKafkaErrorCode::ProducerFenced
                    | rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge
                    | rdkafka::types::RDKafkaErrorCode::TopicAuthorizationFailed
            )
        ),
        TransactionError::Encode(error) => !error.is_transient(),
        TransactionError::NoGroupMetadata => false,
        TransactionError::Closed => true,
    }
}

async fn blocking(
    call: impl FnOnce() -> Result<(), KafkaError> + Send + 'static,
) -> Result<(), TransactionError> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|_| TransactionError::Closed)?
        .map_err(TransactionError::Kafka)
}
