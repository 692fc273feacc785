//! Fencing and abort handling: why a transaction did not commit ([`Failure`], `TransactionError`),
//! what to do after a failed transaction call ([`next_step`]: resume, abort, or stop), whether a
//! new producer mends a failure (`renewable`), and what a failed producer leaves ([`Broken`],
//! [`Lost`]) with the check whether its last transaction landed ([`covers`]).
//!
//! Decides only: never calls Kafka, never logs.

use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::batch::Submission;
use crate::pipeline::book::Prepared;
use crate::pipeline::kafka::is_permanent;

/// A producer failure and the outputs it left.
pub(super) struct Broken {
    pub(super) error: TransactionError,
    pub(super) lost: Lost,
}

/// What a failed producer leaves.
pub(super) enum Lost {
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
pub(super) fn covers(committed: &TopicPartitionList, expected: &TopicPartitionList) -> bool {
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
pub(super) enum Failure {
    /// Abort it and try the batch again.
    Abort(TransactionError),
    /// The producer can never commit again: stop the service.
    Fatal(TransactionError),
}

impl Failure {
    pub(super) fn from_delivery(error: KafkaError) -> Failure {
        if is_permanent(&error) {
            Failure::Fatal(TransactionError::Kafka(error))
        } else {
            Failure::Abort(TransactionError::Kafka(error))
        }
    }
}

/// What to do after a transaction call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
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
pub(super) fn next_step(error: &KafkaError) -> Step {
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
    pub(super) fn renewable(&self) -> bool {
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
pub(super) enum TransactionError {
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

#[cfg(test)]
mod tests {
    use super::*;

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
