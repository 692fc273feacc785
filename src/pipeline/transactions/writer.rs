//! The transaction task ([`TransactionWriter`]): gathers submissions for a `transaction_interval`
//! (or until the dispatcher says events wait), settles them in one transaction each time
//! (begin, the covered outputs, `send_offsets_to_transaction` under the group's fence, commit),
//! aborts and retries, resumes calls librdkafka keeps open, and replaces a producer that failed
//! for good, writing again the outputs of a transaction that did not land.
//!
//! The only owner of the transactional producer. Never advances the dispatcher's books itself:
//! it reports each commit (`Control::TransactionCommitted`) and the dispatcher does.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::batch::{Submission, split};
use super::failure::{Broken, Failure, Lost, Step, TransactionError, covers, next_step};
use super::fence::{Fenced, fence_then_prepare};
use super::producer::Renew;
use crate::codec::OutcomeEncoder;
use crate::pipeline::book::{Prepared, Slot};
use crate::pipeline::consumer::{Control, PipelineConsumer};
use crate::pipeline::kafka::{dead_letter_record, owned_headers};

/// Most submissions written in one transaction.
const MAX_BATCH: usize = 5_000;
/// Pause before retrying an aborted transaction.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Longest pause between attempts to replace a failed producer (the broker may be down).
const RENEW_PAUSE_MAX: Duration = Duration::from_secs(5);

/// The transaction task. Runs until every submitter is dropped and the last batch is settled, or
/// until the producer fails fatally (then `fatal` is cancelled).
pub(crate) struct TransactionWriter {
    /// The producer now; replaced when it fails for good.
    pub(crate) producer: std::sync::Mutex<Arc<FutureProducer>>,
    /// Makes its replacement.
    pub(crate) renew: Renew,
    pub(crate) consumer: Arc<PipelineConsumer>,
    pub(crate) encoder: Arc<OutcomeEncoder>,
    pub(crate) result_topic: String,
    pub(crate) dlq_topic: String,
    pub(crate) consumer_group: String,
    pub(crate) input_topic: String,
    pub(crate) interval: Duration,
    /// Fired by the dispatcher when events wait for in-flight slots that the outputs held here
    /// keep (an event's slot is free only once its transaction commits): the gathering stops
    /// and the transaction goes at once.
    pub(crate) due: Arc<tokio::sync::Notify>,
    /// Bound on one blocking transaction call.
    pub(crate) call_timeout: Duration,
    pub(crate) control: mpsc::UnboundedSender<Control>,
    pub(crate) fatal: CancellationToken,
}

impl std::fmt::Debug for TransactionWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransactionWriter")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl TransactionWriter {
    pub(crate) async fn run(self, mut submissions: mpsc::Receiver<Submission>) {
        let mut held: Vec<Submission> = Vec::new();
        let mut open = true;
        while open || !held.is_empty() {
            // Wait for something new to settle, then gather what else arrives this interval.
            if open {
                match submissions.recv().await {
                    Some(submission) => held.push(submission),
                    None => open = false,
                }
            }
            let deadline = tokio::time::Instant::now() + self.interval;
            while open && held.len() < MAX_BATCH {
                tokio::select! {
                    // What has arrived is taken first, then a "due" ends the gathering.
                    biased;
                    received = tokio::time::timeout_at(deadline, submissions.recv()) => {
                        match received {
                            Ok(Some(submission)) => held.push(submission),
                            Ok(None) => open = false,
                            Err(_) => break,
                        }
                    }
                    () = self.due.notified() => break,
                }
            }
            match self.settle_or_recover(std::mem::take(&mut held)).await {
                Ok(waiting) => held = waiting,
                Err(()) => {
                    self.fatal.cancel();
                    return;
                }
            }
            if !open {
                // Stopping: what is still waiting cannot be covered any more; its events were
                // not committed and will be consumed again.
                return;
            }
        }
    }

    /// [`settle`](Self::settle), replacing the producer each time it fails for good in a way a
    /// new producer mends. `Err` when the service must stop.
    async fn settle_or_recover(&self, held: Vec<Submission>) -> Result<Vec<Submission>, ()> {
        let mut held = held;
        loop {
            let (error, lost) = match self.settle(held).await {
                Ok(waiting) => return Ok(waiting),
                Err(Broken { error, lost }) => (error, lost),
            };
            let cause = self.producer().client().fatal_error();
            let fenced = matches!(
                cause,
                Some((rdkafka::types::RDKafkaErrorCode::ProducerFenced, _))
            );
            if fenced || !error.renewable() {
                tracing::error!(%error, ?cause, "transactional producer failed for good");
                return Err(());
            }
            tracing::error!(
                %error,
                "transactional producer failed; a new one takes over under the same \
                 transactional.id and its open transaction is completed or written again"
            );
            if !self.renew().await {
                // The dispatcher is gone: nothing held can be committed any more.
                return Ok(Vec::new());
            }
            held = match lost {
                Lost::Aborted(outputs) => outputs,
                Lost::Open {
                    covered,
                    waiting,
                    prepared,
                } => match self.landed(&prepared).await {
                    None => return Ok(Vec::new()),
                    Some(true) => {
                        tracing::info!(
                            outputs = covered.len(),
                            "the failed producer's last transaction had committed"
                        );
                        let settled = covered.iter().map(Submission::slot).collect();
                        let _ = self.control.send(Control::TransactionCommitted(settled));
                        waiting
                    }
                    Some(false) => {
                        tracing::info!(
                            outputs = covered.len(),
                            "the failed producer's last transaction did not commit: its outputs \
                             are written again"
                        );
                        covered.into_iter().chain(waiting).collect()
                    }
                },
            };
        }
    }

    /// Drops the failed producer and makes a new one under the same `transactional.id`, trying
    /// again (the broker may be down) until it works; `false` once the dispatcher is gone.
    async fn renew(&self) -> bool {
        let old = self.producer();
        // Its destruction purges and flushes for a bounded time: not on the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || drop(old)).await;
        let mut pause = RETRY_PAUSE;
        loop {
            if self.control.is_closed() {
                return false;
            }
            let renew = Arc::clone(&self.renew);
            match tokio::task::spawn_blocking(move || renew()).await {
                Ok(Ok(producer)) => {
                    *self
                        .producer
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(producer);
                    return true;
                }
                Ok(Err(error)) => tracing::warn!(
                    error = format!("{error:#}"),
                    retry_in = ?pause,
                    "cannot create the new transactional producer yet"
                ),
                Err(_) => return false,
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RENEW_PAUSE_MAX);
        }
    }

    /// Whether the transaction that committed `prepared` landed: the group's committed offsets
    /// (read once the new producer completed it) are those positions and notes, or beyond them.
    /// `None` once the dispatcher is gone.
    async fn landed(&self, prepared: &Prepared) -> Option<bool> {
        let expected = crate::pipeline::kafka::commit_list(
            &self.input_topic,
            &prepared.positions,
            &prepared.notes,
        );
        if expected.count() == 0 {
            return Some(false);
        }
        let mut pause = RETRY_PAUSE;
        loop {
            if self.control.is_closed() {
                return None;
            }
            let (consumer, asked, timeout) = (
                Arc::clone(&self.consumer),
                expected.clone(),
                self.call_timeout,
            );
            let fetched =
                tokio::task::spawn_blocking(move || consumer.committed_offsets(asked, timeout))
                    .await
                    .ok()?;
            match fetched {
                Ok(committed) => return Some(covers(&committed, &expected)),
                Err(error) => tracing::warn!(
                    %error,
                    retry_in = ?pause,
                    "cannot read the committed offsets yet"
                ),
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RENEW_PAUSE_MAX);
        }
    }

    fn producer(&self) -> Arc<FutureProducer> {
        Arc::clone(
            &self
                .producer
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Commits every held output whose offset the transaction also commits; returns the rest,
    /// or what the producer's failure left.
    async fn settle(&self, held: Vec<Submission>) -> Result<Vec<Submission>, Broken> {
        let mut held = held;
        loop {
            if held.is_empty() {
                return Ok(held);
            }
            let candidates: Vec<Slot> = held.iter().map(Submission::slot).collect();
            let (metadata, prepared) = match fence_then_prepare(
                || self.consumer.group_metadata(),
                || self.prepare(candidates),
            )
            .await
            {
                Fenced::Ready(metadata, prepared) => (metadata, prepared),
                Fenced::NoGroupYet => {
                    tracing::debug!("no group metadata yet; outputs wait");
                    return Ok(held);
                }
                Fenced::DispatcherGone => return Ok(Vec::new()),
            };
            let parts = split(held, &prepared);
            if parts.orphaned > 0 {
                tracing::debug!(
                    orphaned = parts.orphaned,
                    "outputs of revoked partitions dropped"
                );
            }
            if parts.covered.is_empty() {
                return Ok(parts.waiting);
            }
            match self
                .try_transaction(&parts.covered, &prepared, metadata)
                .await
            {
                Ok(()) => {
                    let settled = parts.covered.iter().map(Submission::slot).collect();
                    let _ = self.control.send(Control::TransactionCommitted(settled));
                    return Ok(parts.waiting);
                }
                Err(Failure::Fatal(error)) => {
                    return Err(Broken {
                        error,
                        lost: Lost::Open {
                            covered: parts.covered,
                            waiting: parts.waiting,
                            prepared,
                        },
                    });
                }
                Err(Failure::Abort(error)) => {
                    tracing::warn!(%error, "transaction aborted, retrying");
                    held = parts.covered;
                    held.extend(parts.waiting);
                    if let Err(failure) = self
                        .call("abort", |producer, timeout| {
                            producer.abort_transaction(timeout)
                        })
                        .await
                    {
                        let error = match failure {
                            Failure::Abort(error) | Failure::Fatal(error) => error,
                        };
                        tracing::error!(%error, "transaction cannot be aborted");
                        return Err(Broken {
                            error,
                            lost: Lost::Aborted(held),
                        });
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }

    /// Asks the dispatcher; `None` once it is gone.
    async fn prepare(&self, settled: Vec<Slot>) -> Option<Prepared> {
        let (reply, prepared) = oneshot::channel();
        self.control
            .send(Control::PrepareCommit { settled, reply })
            .ok()?;
        prepared.await.ok()
    }

    /// One blocking transaction call, resumed while librdkafka says it may be (a timed-out
    /// commit during a coordinator failover stays open and must be called again, not aborted).
    async fn call(
        &self,
        what: &'static str,
        call: impl Fn(&FutureProducer, Duration) -> Result<(), KafkaError> + Send + Sync + 'static,
    ) -> Result<(), Failure> {
        let call = Arc::new(call);
        let mut resumed = 0;
        loop {
            let producer = self.producer();
            let attempt = Arc::clone(&call);
            let timeout = self.call_timeout;
            let result = tokio::task::spawn_blocking(move || attempt(&producer, timeout))
                .await
                .map_err(|_| Failure::Fatal(TransactionError::Closed))?;
            let Err(error) = result else {
                return Ok(());
            };
            match next_step(&error) {
                // Resumed for as long as librdkafka says so: the call is still open, and any
                // other call (an abort) would only conflict with it. The shutdown bounds the
                // wait (`pipeline::run` stops waiting for the writer).
                Step::Resume => {
                    resumed += 1;
                    tracing::warn!(%error, what, resumed, "transaction call timed out, resuming it");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Step::Abort => return Err(Failure::Abort(TransactionError::Kafka(error))),
                Step::Fatal => return Err(Failure::Fatal(TransactionError::Kafka(error))),
            }
        }
    }

    async fn try_transaction(
        &self,
        batch: &[Submission],
        prepared: &Prepared,
        metadata: rdkafka::consumer::ConsumerGroupMetadata,
    ) -> Result<(), Failure> {
        self.call("begin", |producer, _| producer.begin_transaction())
            .await?;
        let producer = self.producer();
        let mut deliveries = Vec::new();
        for submission in batch {
            if let Some(letter) = &submission.dead_letter {
                let record = dead_letter_record(
                    &self.dlq_topic,
                    &self.consumer_group,
                    &submission.record,
                    letter,
                    &submission.dead_letter_trace,
                );
                deliveries.push(
                    producer
                        .send_result(record)
                        .map_err(|(error, _)| Failure::from_delivery(error))?,
                );
            }
            if let Some(outcome) = &submission.outcome {
                let value = self.encoder.encode(outcome).await.map_err(|error| {
                    if error.is_transient() {
                        Failure::Abort(TransactionError::Encode(error))
                    } else {
                        Failure::Fatal(TransactionError::Encode(error))
                    }
                })?;
                let record = FutureRecord::to(&self.result_topic)
                    .key(outcome.reference_merchant_id.as_bytes())
                    .payload(&value)
                    .headers(owned_headers(&submission.trace));
                deliveries.push(
                    producer
                        .send_result(record)
                        .map_err(|(error, _)| Failure::from_delivery(error))?,
                );
            }
        }
        for delivery in deliveries {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(Failure::from_delivery(error)),
                Err(_) => return Err(Failure::Fatal(TransactionError::Closed)),
            }
        }
        let positions = &prepared.positions;
        let tpl =
            crate::pipeline::kafka::commit_list(&self.input_topic, positions, &prepared.notes);
        let metadata = Arc::new(metadata);
        self.call("send offsets", move |producer, timeout| {
            producer.send_offsets_to_transaction(&tpl, &metadata, timeout)
        })
        .await?;
        self.call("commit", |producer, timeout| {
            producer.commit_transaction(timeout)
        })
        .await?;
        for (partition, position) in positions {
            crate::observe::committed(*partition, *position);
        }
        Ok(())
    }
}
