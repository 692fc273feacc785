//! Exactly-once outputs (`processing.exactly_once = true`, SPEC 5): outcomes, dead letters and the
//! input offsets they settle are written in one Kafka transaction, so a `read_committed` reader
//! sees exactly one outcome per event even across crashes.
//!
//! One task owns the transactional producer. Workers hand it their finished outputs and move on.
//! Every `transaction_interval` (sooner when events wait for the in-flight slots that the outputs
//! it holds keep) it asks the dispatcher which commit positions the outputs it holds
//! would allow (without changing the dispatcher's books), writes exactly the outputs those
//! positions cover, adds the positions with `send_offsets_to_transaction` (the group's metadata
//! fences zombies, KIP-447) and commits. Outputs of an event finished ahead of an earlier one
//! still in flight wait for a later transaction: a transaction never carries an output whose
//! offset it does not commit, or a crash would repeat that output. Only after the commit does the
//! dispatcher advance its watermarks. An aborted transaction is retried. A producer that fails
//! for good (librdkafka's fatal errors, such as `INVALID_TXN_STATE` after a broker restart) is
//! replaced in-process, as Kafka Streams does: a new producer under the same `transactional.id`
//! fences the old one and completes its open transaction; the group's committed offsets then
//! tell whether that transaction landed, and if it did not its outputs are written again in a
//! new one (from memory: Alipay+ is not called again). Only a producer fenced by another
//! instance, an authorisation failure or an output Kafka can never accept stops the service.
//! HTTP calls stay at-least-once.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::codec::OutcomeEncoder;
use crate::config::KafkaSettings;
use crate::event::RegistrationNotifyOutcome;
use crate::pipeline::book::{Prepared, Slot};
use crate::pipeline::consumer::{Control, PipelineConsumer};
use crate::pipeline::kafka::{dead_letter_record, is_permanent, owned_headers, producer_config};
use crate::pipeline::record::{DeadLetter, InputRecord};

/// Bound on one blocking transaction call (begin, offsets, commit, abort).
pub const TRANSACTION_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Most submissions written in one transaction.
const MAX_BATCH: usize = 5_000;
/// Pause before retrying an aborted transaction.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Longest pause between attempts to replace a failed producer (the broker may be down).
const RENEW_PAUSE_MAX: Duration = Duration::from_secs(5);

/// Creates a new transactional producer under the writer's `transactional.id` and initialises
/// its transactions (which fences every older producer of that id). Blocking.
pub type Renew = Arc<dyn Fn() -> anyhow::Result<FutureProducer> + Send + Sync>;

/// One event's outputs, handed over by its worker.
#[derive(Debug)]
pub struct Submission {
    pub record: InputRecord,
    pub generation: u64,
    pub dead_letter: Option<DeadLetter>,
    pub outcome: Option<RegistrationNotifyOutcome>,
    /// The event's trace context headers, which its outcome carries.
    pub trace: Vec<(String, Option<Vec<u8>>)>,
    /// Those its dead letter carries (see `EventTrace::dead_letter_headers`).
    pub dead_letter_trace: Vec<(String, Option<Vec<u8>>)>,
}

impl Submission {
    fn slot(&self) -> Slot {
        Slot {
            partition: self.record.partition,
            generation: self.generation,
            offset: self.record.offset,
        }
    }
}

/// How the held outputs split for one transaction.
#[derive(Debug, Default)]
pub(crate) struct Split {
    pub(crate) covered: Vec<Submission>,
    pub(crate) waiting: Vec<Submission>,
    orphaned: usize,
}

pub(crate) fn split(held: Vec<Submission>, prepared: &Prepared) -> Split {
    let mut parts = Split::default();
    for submission in held {
        let owned = prepared
            .owned
            .contains(&(submission.record.partition, submission.generation));
        if !owned {
            parts.orphaned += 1;
            continue;
        }
        let (partition, offset) = (submission.record.partition, submission.record.offset);
        let below = prepared
            .positions
            .iter()
            .any(|(p, position)| *p == partition && offset < *position);
        let noted = prepared
            .noted
            .iter()
            .any(|(p, offsets)| *p == partition && offsets.contains(&offset));
        let covered = below || noted;
        if covered {
            parts.covered.push(submission);
        } else {
            parts.waiting.push(submission);
        }
    }
    parts
}

/// A handle workers submit through.
pub type Submitter = mpsc::Sender<Submission>;

#[cfg(test)]
mod tests {
    use super::*;

    fn submission(partition: i32, generation: u64, offset: i64) -> Submission {
        Submission {
            record: InputRecord {
                topic: Arc::from("in"),
                partition,
                offset,
                timestamp_ms: None,
                key: None,
                value: None,
                headers: Vec::new(),
            },
            generation,
            dead_letter: None,
            outcome: None,
            trace: Vec::new(),
            dead_letter_trace: Vec::new(),
        }
    }

    /// Defect 4 of the pipeline-core issue: the generation that fences a transaction is the one
    /// read before its positions were prepared, so a rebalance that completes while they are
    /// prepared leaves the transaction with the older generation, which the coordinator refuses.
    #[tokio::test]
    async fn the_fence_is_read_before_the_positions_are_prepared() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let generation = AtomicU64::new(1);
        let fenced = fence_then_prepare(
            || Some(generation.load(Ordering::SeqCst)),
            || async {
                // The positions are prepared under generation 1; a rebalance then completes.
                let prepared_under = generation.load(Ordering::SeqCst);
                generation.store(2, Ordering::SeqCst);
                Some(prepared_under)
            },
        )
        .await;
        assert_eq!(fenced, Fenced::Ready(1, 1));

        let not_joined = fence_then_prepare(|| None::<u64>, || async { Some(()) }).await;
        assert_eq!(not_joined, Fenced::NoGroupYet);
        let stopping = fence_then_prepare(|| Some(1), || async { None::<()> }).await;
        assert_eq!(stopping, Fenced::DispatcherGone);
    }

    #[test]
    fn a_transaction_carries_only_outputs_its_offsets_cover() {
        let held = vec![
            submission(0, 1, 10),
            submission(0, 1, 12), // 11 still in flight: must wait
            submission(1, 1, 5),
            submission(2, 7, 3), // an assignment no longer owned
        ];
        let prepared = Prepared {
            positions: vec![(0, 11), (1, 6)],
            owned: vec![(0, 1), (1, 1), (2, 8)],
            ..Prepared::default()
        };
        let parts = split(held, &prepared);
        let covered: Vec<(i32, i64)> = parts
            .covered
            .iter()
            .map(|s| (s.record.partition, s.record.offset))
            .collect();
        assert_eq!(covered, vec![(0, 10), (1, 5)]);
        assert_eq!(parts.waiting.len(), 1);
        assert_eq!(parts.waiting[0].record.offset, 12);
        assert_eq!(parts.orphaned, 1);
    }

    /// A coordinator that does not answer a commit in time (a failover): librdkafka keeps the
    /// commit open, and the writer must resume it. Aborting instead conflicts with the open call
    /// and no transaction could ever commit again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_that_times_out_is_resumed_until_it_commits() {
        use rdkafka::types::RDKafkaRespErr;
        commit_through_end_txn_errors(
            "resume",
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS; 8],
        )
        .await;
    }

    /// Issue 19, scenario 3: a broker restart leaves librdkafka's transactional producer in a
    /// fatal state (`INVALID_TXN_STATE` on ending the transaction). The writer replaces it under
    /// the same transactional.id, finds the transaction did not land, and writes its outputs
    /// again; the service does not stop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_producer_that_fails_for_good_is_replaced_and_its_transaction_redone() {
        use rdkafka::types::RDKafkaRespErr;
        commit_through_end_txn_errors(
            "renew",
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_INVALID_TXN_STATE],
        )
        .await;
    }

    #[test]
    fn only_a_producer_another_instance_fenced_or_not_authorised_is_not_replaced() {
        use rdkafka::types::RDKafkaErrorCode as Code;
        let error = |code| TransactionError::Kafka(KafkaError::MessageProduction(code));
        for code in [
            Code::Fatal,
            Code::InvalidProducerEpoch,
            Code::InvalidTransactionalState,
        ] {
            assert!(error(code).renewable(), "{code:?}");
        }
        for code in [
            Code::ProducerFenced,
            Code::TransactionalIdAuthorizationFailed,
            Code::MessageSizeTooLarge,
        ] {
            assert!(!error(code).renewable(), "{code:?}");
        }
        assert!(!TransactionError::Closed.renewable());
    }

    /// Runs one dead letter through a writer while the mock coordinator answers the first
    /// EndTxn requests with `errors`; asserts it commits and the writer did not give up.
    #[allow(clippy::unwrap_used, clippy::expect_used)]
    async fn commit_through_end_txn_errors(group: &str, errors: &[rdkafka::types::RDKafkaRespErr]) {
        use rdkafka::mocking::MockCluster;
        use rdkafka::types::RDKafkaApiKey;

        use crate::event::DeadLetterReason;
        use crate::pipeline::consumer::{self, ConsumerChannels, ConsumerEvent, Flow};
        use crate::pipeline::record::DeadLetter;

        let _ = tracing_subscriber::fmt().with_test_writer().try_init();
        let mock = MockCluster::new(1).expect("mock cluster");
        let kafka = crate::config::KafkaSettings {
            bootstrap_servers: mock.bootstrap_servers(),
            input_topic: "in".into(),
            result_topic: "out".into(),
            dlq_topic: "dlq".into(),
            group_id: group.into(),
            ..Default::default()
        };
        for topic in ["in", "out", "dlq"] {
            mock.create_topic(topic, 1, 1).expect("topic");
        }
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let (control_tx, mut control) = mpsc::unbounded_channel();
        let consumer_thread = consumer::start(
            &kafka,
            ConsumerChannels {
                events: events_tx,
                flow: Arc::new(Flow::new(100, 100)),
            },
            Duration::from_secs(5),
            Arc::new(crate::observe::Health::default()),
            CancellationToken::new(),
        )
        .expect("consumer");
        // Joined: the group metadata now carries a generation.
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(event) = events.recv().await {
                if matches!(event, ConsumerEvent::Assigned(..)) {
                    break;
                }
            }
        })
        .await
        .expect("assigned");
        let id = transactional_id(&kafka);
        let renew: Renew = {
            let kafka = kafka.clone();
            Arc::new(move || transactional_producer(&kafka, &id))
        };
        let producer = {
            let renew = Arc::clone(&renew);
            tokio::task::spawn_blocking(move || renew())
                .await
                .unwrap()
                .expect("transactional producer")
        };
        let fatal = CancellationToken::new();
        let writer = TransactionWriter {
            producer: std::sync::Mutex::new(Arc::new(producer)),
            renew,
            consumer: Arc::clone(&consumer_thread.consumer),
            encoder: Arc::new(OutcomeEncoder::new(
                crate::config::OutputEncoding::Json,
                None,
                "out",
            )),
            result_topic: "out".into(),
            dlq_topic: "dlq".into(),
            consumer_group: group.into(),
            input_topic: "in".into(),
            interval: Duration::from_millis(20),
            due: Arc::new(tokio::sync::Notify::new()),
            call_timeout: Duration::from_millis(500),
            control: control_tx,
            fatal: fatal.clone(),
        };
        mock.request_errors(RDKafkaApiKey::EndTxn, errors);
        let (submitter, submissions) = mpsc::channel(8);
        let writer = tokio::spawn(writer.run(submissions));
        let mut letter = submission(0, 1, 0);
        letter.dead_letter = Some(DeadLetter {
            reason: DeadLetterReason::DecodeError,
            error: "test".into(),
            attempts: None,
            result_code: None,
            http_status: None,
            failed_at: chrono::Utc::now(),
        });
        submitter.send(letter).await.expect("submitted");
        // Act as the dispatcher until the transaction commits.
        let committed = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(message) = control.recv().await {
                match message {
                    Control::PrepareCommit { settled, reply } => {
                        let _ = reply.send(Prepared {
                            positions: vec![(0, 1)],
                            owned: settled
                                .iter()
                                .map(|s| (s.partition, s.generation))
                                .collect(),
                            ..Prepared::default()
                        });
                    }
                    Control::TransactionCommitted(settled) => return settled,
                }
            }
            Vec::new()
        })
        .await
        .expect("the transaction committed after the fault");
        assert_eq!(committed.len(), 1);
        assert!(!fatal.is_cancelled(), "the writer gave up");
        drop(submitter);
        drop(control);
        let _ = writer.await;
        tokio::task::spawn_blocking(move || consumer_thread.stop_and_join())
            .await
            .unwrap();
    }
    /// One rule in both delivery modes: an output error that stops the service at-least-once
    /// (a permanent publish error) stops the transaction writer too, and one that is retried
    /// at-least-once is retried (by an abort and a new transaction) exactly-once.
    #[test]
    fn both_delivery_modes_agree_on_which_kafka_errors_are_permanent() {
        use rdkafka::types::RDKafkaErrorCode as Code;
        let permanent = [
            Code::MessageSizeTooLarge,
            Code::InvalidMessageSize,
            Code::InvalidMessage,
            Code::TopicAuthorizationFailed,
            Code::ClusterAuthorizationFailed,
            Code::TransactionalIdAuthorizationFailed,
            Code::UnknownTopic,
            Code::Fatal,
            Code::ProducerFenced,
            Code::InvalidProducerEpoch,
            Code::InvalidProducerIdMapping,
        ];
        let transient = [
            Code::BrokerNotAvailable,
            Code::RequestTimedOut,
            Code::NotLeaderForPartition,
            Code::LeaderNotAvailable,
            Code::NetworkException,
            Code::NotEnoughReplicas,
            Code::MessageTimedOut,
            Code::AllBrokersDown,
            Code::CoordinatorLoadInProgress,
        ];
        for code in permanent {
            let error = KafkaError::MessageProduction(code);
            let publish = crate::pipeline::output::PublishError::Kafka {
                what: "an outcome",
                source: error.clone(),
            };
            assert!(publish.is_permanent(), "{code:?} at-least-once");
            assert_eq!(next_step(&error), Step::Fatal, "{code:?} exactly-once");
        }
        for code in transient {
            let error = KafkaError::MessageProduction(code);
            let publish = crate::pipeline::output::PublishError::Kafka {
                what: "an outcome",
                source: error.clone(),
            };
            assert!(!publish.is_permanent(), "{code:?} at-least-once");
            assert_eq!(next_step(&error), Step::Abort, "{code:?} exactly-once");
        }
    }
}

/// The `transactional.id` of this process: the configured one, or a new one per process.
///
/// With KIP-447 the group's generation, not the id, fences zombies, so a unique id per process
/// is safe. A stable id (`[kafka.producer] "transactional.id"`, one per instance, e.g. a
/// StatefulSet pod name) lets a restarted instance abort its predecessor's open transaction at
/// once instead of after `transaction.timeout.ms`, during which read_committed readers wait.
/// Either way a process keeps its id for its whole life: a producer that replaces a failed one
/// must fence it and complete its open transaction.
pub fn transactional_id(kafka: &KafkaSettings) -> String {
    kafka
        .producer
        .0
        .get("transactional.id")
        .cloned()
        .unwrap_or_else(|| format!("{}-{}", kafka.group_id, uuid::Uuid::new_v4().simple()))
}

/// Creates the transactional producer under `id` and initialises its transactions.
pub fn transactional_producer(kafka: &KafkaSettings, id: &str) -> anyhow::Result<FutureProducer> {
    let mut config = producer_config(kafka);
    config.set("transactional.id", id);
    if !kafka.producer.0.contains_key("transaction.timeout.ms") {
        // Our transactions last a transaction_interval plus a round trip; a crashed instance's
        // open transaction then blocks read_committed readers for seconds, not a minute.
        config.set("transaction.timeout.ms", "10000");
    }
    let producer: FutureProducer = config.create()?;
    producer.init_transactions(TRANSACTION_CALL_TIMEOUT)?;
    Ok(producer)
}

/// What [`fence_then_prepare`] found.
#[derive(Debug, PartialEq)]
enum Fenced<M, P> {
    Ready(M, P),
    /// The consumer has not joined its group yet: nothing can be committed.
    NoGroupYet,
    /// The dispatcher is gone (stopping): nothing is prepared any more.
    DispatcherGone,
}

/// Reads the group's metadata (its generation, the transaction's fence) *before* the positions
/// are prepared. A partition revoked after the read is then refused by the group coordinator,
/// whose generation has moved on, instead of having its old position committed; read after,
/// the newer generation would vouch for positions prepared under the older one.
async fn fence_then_prepare<M, P, F>(
    read_fence: impl FnOnce() -> Option<M>,
    prepare: impl FnOnce() -> F,
) -> Fenced<M, P>
where
    F: std::future::Future<Output = Option<P>>,
{
    let Some(fence) = read_fence() else {
        return Fenced::NoGroupYet;
    };
    match prepare().await {
        Some(prepared) => Fenced::Ready(fence, prepared),
        None => Fenced::DispatcherGone,
    }
}

/// The transaction task. Runs until every submitter is dropped and the last batch is settled, or
/// until the producer fails fatally (then `fatal` is cancelled).
pub struct TransactionWriter {
    /// The producer now; replaced when it fails for good.
    pub producer: std::sync::Mutex<Arc<FutureProducer>>,
    /// Makes its replacement.
    pub renew: Renew,
    pub consumer: Arc<PipelineConsumer>,
    pub encoder: Arc<OutcomeEncoder>,
    pub result_topic: String,
    pub dlq_topic: String,
    pub consumer_group: String,
    pub input_topic: String,
    pub interval: Duration,
    /// Fired by the dispatcher when events wait for in-flight slots that the outputs held here
    /// keep (an event's slot is free only once its transaction commits): the gathering stops
    /// and the transaction goes at once.
    pub due: Arc<tokio::sync::Notify>,
    /// Bound on one blocking transaction call.
    pub call_timeout: Duration,
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

/// A producer failure and the outputs it left.
struct Broken {
    error: TransactionError,
    lost: Lost,
}

/// What a failed producer leaves.
enum Lost {
    /// A transaction whose commit may have landed: the committed offsets tell.
    Open {
        covered: Vec<Submission>,
        waiting: Vec<Submission>,
        prepared: Prepared,
    },
    /// Outputs of a transaction that was being aborted (none landed).
    Aborted(Vec<Submission>),
}

/// Whether `committed` (the group's offsets) holds each of `expected`'s positions with its
/// note, or a later position (the partition moved on: its outputs are not ours to write).
fn covers(committed: &TopicPartitionList, expected: &TopicPartitionList) -> bool {
    expected.elements().iter().all(|want| {
        let Some(have) = committed.find_partition(want.topic(), want.partition()) else {
            return false;
        };
        match (have.offset(), want.offset()) {
            (Offset::Offset(have_at), Offset::Offset(want_at)) if have_at > want_at => true,
            (Offset::Offset(have_at), Offset::Offset(want_at)) if have_at == want_at => {
                have.metadata() == want.metadata()
            }
            _ => false,
        }
    })
}

/// Why a transaction did not commit.
#[derive(Debug)]
enum Failure {
    /// Abort it and try the batch again.
    Abort(TransactionError),
    /// The producer can never commit again: stop the service.
    Fatal(TransactionError),
}

impl Failure {
    fn from_delivery(error: KafkaError) -> Failure {
        if is_permanent(&error) {
            Failure::Fatal(TransactionError::Kafka(error))
        } else {
            Failure::Abort(TransactionError::Kafka(error))
        }
    }
}

/// What to do after a transaction call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The call may be made again as it is (librdkafka keeps it open: a timeout).
    Resume,
    /// The transaction must be aborted; the next one may succeed.
    Abort,
    /// Nothing can succeed any more.
    Fatal,
}

/// librdkafka's transaction error flags, in the order its documentation gives them: fatal first,
/// then "requires abort", then "retriable" (call again). An error with none of them is a misuse
/// of the API state machine; aborting resets it.
fn next_step(error: &KafkaError) -> Step {
    match error {
        KafkaError::Transaction(error) if error.is_fatal() => Step::Fatal,
        KafkaError::Transaction(error) if error.txn_requires_abort() => Step::Abort,
        KafkaError::Transaction(error) if error.is_retriable() => Step::Resume,
        other if is_permanent(other) => Step::Fatal,
        _ => Step::Abort,
    }
}

impl TransactionError {
    /// Whether a new producer under the same `transactional.id` mends the failure: librdkafka's
    /// fatal states (an epoch or sequence lost with a broker restart, `INVALID_TXN_STATE`) yes;
    /// another instance holding our id, missing authorisation and outputs Kafka can never
    /// accept no (they would fail again).
    fn renewable(&self) -> bool {
        use rdkafka::types::RDKafkaErrorCode as Code;
        let TransactionError::Kafka(error) = self else {
            return false;
        };
        let code = match error {
            KafkaError::Transaction(error) => Some(error.code()),
            other => other.rdkafka_error_code(),
        };
        !matches!(
            code,
            Some(
                Code::ProducerFenced
                    | Code::TransactionalIdAuthorizationFailed
                    | Code::ClusterAuthorizationFailed
                    | Code::TopicAuthorizationFailed
                    | Code::GroupAuthorizationFailed
                    | Code::MessageSizeTooLarge
                    | Code::InvalidMessageSize
                    | Code::InvalidMessage
                    | Code::UnknownTopic
            )
        )
    }
}

#[derive(Debug, thiserror::Error)]
enum TransactionError {
    #[error("{0}")]
    Kafka(KafkaError),
    #[error("outcome could not be encoded: {0}")]
    Encode(crate::codec::EncodeError),
    #[error("the pipeline is stopping")]
    Closed,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Abort(error) | Failure::Fatal(error) => error.fmt(f),
        }
    }
}
