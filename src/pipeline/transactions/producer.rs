//! The transactional producer: this process's `transactional.id`, the producer made under it with
//! its transactions initialised, and [`Renew`], how the writer makes a replacement that fences a
//! failed one.
//!
//! Makes producers only: never begins, commits or aborts a transaction.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, Producer};

use crate::config::KafkaSettings;
use crate::pipeline::kafka::producer_config;

/// Bound on one blocking transaction call (begin, offsets, commit, abort).
pub(crate) const TRANSACTION_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Creates a new transactional producer under the writer's `transactional.id` and initialises
/// its transactions (which fences every older producer of that id). Blocking.
pub(crate) type Renew = Arc<dyn Fn() -> anyhow::Result<FutureProducer> + Send + Sync>;

/// The `transactional.id` of this process: the configured one, or a new one per process.
///
/// With KIP-447 the group's generation, not the id, fences zombies, so a unique id per process
/// is safe. A stable id (`[kafka.producer] "transactional.id"`, one per instance, e.g. a
/// StatefulSet pod name) lets a restarted instance abort its predecessor's open transaction at
/// once instead of after `transaction.timeout.ms`, during which read_committed readers wait.
/// Either way a process keeps its id for its whole life: a producer that replaces a failed one
/// must fence it and complete its open transaction.
pub(crate) fn transactional_id(kafka: &KafkaSettings) -> String {
    kafka
        .producer
        .0
        .get("transactional.id")
        .cloned()
        .unwrap_or_else(|| format!("{}-{}", kafka.group_id, uuid::Uuid::new_v4().simple()))
}

/// Creates the transactional producer under `id` and initialises its transactions.
pub(crate) fn transactional_producer(
    kafka: &KafkaSettings,
    id: &str,
) -> anyhow::Result<FutureProducer> {
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
