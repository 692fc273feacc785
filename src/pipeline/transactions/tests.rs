//! The transaction writer against librdkafka's mock cluster: a commit the coordinator does not
//! answer in time is resumed, and a producer that fails for good is replaced and its transaction
//! written again; the service does not stop.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::batch::submission;
use super::producer::{Renew, transactional_id, transactional_producer};
use super::writer::TransactionWriter;
use crate::codec::OutcomeEncoder;
use crate::pipeline::book::Prepared;
use crate::pipeline::consumer::Control;

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
