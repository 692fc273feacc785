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
//!
//! By concern: the submissions and their split (`batch`), the transactional producer
//! (`producer`), the fence (`fence`), failures and what they leave (`failure`), the writer task
//! (`writer`); the writer's tests against the mock cluster in `tests`. This file re-exports what
//! the pipeline uses.

mod batch;
mod failure;
mod fence;
mod producer;
#[cfg(test)]
mod tests;
mod writer;

/// The deterministic simulation (`pipeline::simulation`, tests only) splits as the writer does.
#[cfg(test)]
pub(crate) use batch::split;
pub(crate) use batch::{Submission, Submitter};
pub(crate) use producer::{
    Renew, TRANSACTION_CALL_TIMEOUT, transactional_id, transactional_producer,
};
pub(crate) use writer::TransactionWriter;
