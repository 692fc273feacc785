//! Kafka's side of health and metrics: librdkafka's periodic statistics (brokers up, lag, where
//! each fetch stands), the errors it reports to the client context and returns from `poll`
//! (counted by code, logged at most once per [`ERROR_LOG_INTERVAL`] per (code, partition)), and
//! what `/readyz` says about consumer errors that persist.
//!
//! It updates [`Health`]'s Kafka state through the rules of `consumer_errors`; it never decides
//! readiness itself and never sees a record's contents.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

#[cfg(doc)]
use super::ERROR_LOG_INTERVAL;
use super::consumer_errors::{ErrorKey, Reported, partition_in_text};
use super::health::{CONSUMER_ERROR_PERSIST_AFTER, Health, KafkaErrors};
use super::log_limiter::Verdict;
use super::names;

/// librdkafka's periodic statistics: brokers up, lag per assigned partition of `topic`, and
/// where each partition's fetch stands (which names stuck partitions while a consumer error
/// persists).
pub(crate) fn kafka_statistics(health: &Health, statistics: &rdkafka::Statistics, topic: &str) {
    let up = statistics
        .brokers
        .values()
        .filter(|broker| broker.state == "UP")
        .count();
    health.set_kafka_reachable(up > 0);
    metrics::gauge!(names::KAFKA_BROKERS_UP).set(up as f64);
    let mut positions = Vec::new();
    if let Some(topic_stats) = statistics.topics.get(topic) {
        for (partition, stats) in &topic_stats.partitions {
            // librdkafka reports -1 for its internal partition, and lists partitions it knows of
            // but does not fetch here with `desired = false`.
            if *partition < 0 {
                continue;
            }
            if stats.desired {
                positions.push((*partition, stats.next_offset, stats.hi_offset));
            }
            if stats.consumer_lag >= 0 {
                metrics::gauge!(names::CONSUMER_LAG, "partition" => partition.to_string())
                    .set(stats.consumer_lag as f64);
            }
        }
    }
    let now = Instant::now();
    let mut errors = health.kafka_errors();
    errors.fetch.observe(now, positions);
    settle_consumer_errors(health, &mut errors, now);
}

/// What librdkafka told the client context about the error it is about to return from `poll`.
#[derive(Debug)]
struct ClientReport {
    code: Option<RDKafkaErrorCode>,
    partition: Option<i32>,
    reason: String,
    at: Instant,
}

thread_local! {
    /// librdkafka hands a consumer error first to the client context, with its text, and then
    /// returns it from `poll` with the code alone, on the same polling thread. The text (the only
    /// place a reason, and sometimes a partition, appear) is carried from one to the other here.
    static LAST_CLIENT_ERROR: RefCell<Option<ClientReport>> = const { RefCell::new(None) };
}

/// How long a client error's text may wait for the `poll` that returns the same error.
const CLIENT_REPORT_FRESH_FOR: Duration = Duration::from_secs(1);

/// The label value of an error code: the variant name of rdkafka's `RDKafkaErrorCode` (for
/// example `UnsupportedCompressionType`, `BadCompression`, `TopicAuthorizationFailed`), a fixed set.
fn code_label(code: Option<RDKafkaErrorCode>) -> String {
    code.map_or_else(|| "other".to_string(), |code| format!("{code:?}"))
}

/// `poll` returned an error instead of a record: counted by code, logged at most once per
/// [`ERROR_LOG_INTERVAL`] per (code, partition), and tracked for `/readyz`.
pub(crate) fn consumer_error(health: &Health, error: &KafkaError) {
    let code = error.rdkafka_error_code();
    let label = code_label(code);
    metrics::counter!(names::CONSUMER_ERRORS, "code" => label.clone()).increment(1);
    let now = Instant::now();
    let context = LAST_CLIENT_ERROR
        .with(|last| last.borrow_mut().take())
        .filter(|report| {
            report.code == code
                && now.saturating_duration_since(report.at) < CLIENT_REPORT_FRESH_FOR
        });
    let partition = context.as_ref().and_then(|report| report.partition);
    let reason = context.as_ref().map(|report| report.reason.as_str());
    let key = ErrorKey { code, partition };

    let mut errors = health.kafka_errors();
    settle_consumer_errors(health, &mut errors, now);
    let reported = errors.book.report(key, now, health.progress(partition));
    let (persistent, reports, lasting) =
        errors
            .book
            .get(&key)
            .map_or((false, 0, Duration::ZERO), |episode| {
                (
                    episode.is_persistent(errors.book.rules()),
                    episode.reports,
                    now.saturating_duration_since(episode.first),
                )
            });
    if reported == Reported::BecamePersistent {
        tracing::warn!(
            code = %label,
            partition,
            reason,
            reports,
            for_s = lasting.as_secs(),
            "kafka consumer error persists; /readyz answers 503 until it is over"
        );
        update_error_gauges(&mut errors);
    }
    if let Verdict::Log { suppressed } = errors.consumer_log.check(&key, now) {
        tracing::warn!(
            %error,
            code = %label,
            partition,
            reason,
            persistent,
            suppressed,
            "kafka consumer error"
        );
    }
}

/// librdkafka reported an error to the client context (connection, authentication, and every
/// consumer error before `poll` returns it): counted by code and logged at most once per
/// [`ERROR_LOG_INTERVAL`] per (code, partition). Marks Kafka unreachable when all brokers are down.
pub(crate) fn kafka_client_error(health: &Health, error: &KafkaError, reason: &str) {
    let code = error.rdkafka_error_code();
    if code == Some(RDKafkaErrorCode::AllBrokersDown) {
        health.set_kafka_reachable(false);
    }
    metrics::counter!(names::KAFKA_CLIENT_ERRORS, "code" => code_label(code)).increment(1);
    let partition = partition_in_text(reason);
    let now = Instant::now();
    let verdict = health
        .kafka_errors()
        .client_log
        .check(&ErrorKey { code, partition }, now);
    if let Verdict::Log { suppressed } = verdict {
        tracing::warn!(
            %error,
            code = %code_label(code),
            reason,
            partition,
            suppressed,
            "kafka client error"
        );
    }
    LAST_CLIENT_ERROR.with(|last| {
        *last.borrow_mut() = Some(ClientReport {
            code,
            partition,
            reason: reason.to_string(),
            at: now,
        });
    });
}

/// One record was consumed from `partition`: evidence that ends some consumer errors. Two
/// uncontended atomic additions; no lock, no allocation.
pub(crate) fn consumer_record(health: &Health, partition: i32) {
    health.records_consumed.fetch_add(1, Ordering::Relaxed);
    if let Some(counter) = usize::try_from(partition)
        .ok()
        .and_then(|index| health.partition_records.get(index))
    {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A consumer error that keeps the service from being ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PersistentConsumerError {
    /// The error code's label, as in `regnotify_consumer_errors_total`.
    pub(crate) code: String,
    /// The partition, when librdkafka named it.
    pub(crate) partition: Option<i32>,
    pub(crate) reports: u64,
    /// Since the first report.
    pub(crate) lasting: Duration,
    pub(crate) last_report_ago: Duration,
}

/// What `/readyz` says about consumer errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ConsumerErrorStatus {
    pub(crate) persistent: Vec<PersistentConsumerError>,
    /// Assigned partitions with records waiting whose fetch position has not moved for
    /// [`CONSUMER_ERROR_PERSIST_AFTER`] (librdkafka statistics); listed only while an error persists.
    pub(crate) not_advancing: Vec<i32>,
}

/// The consumer errors that persist now (ending those that are over, which is logged).
pub(crate) fn consumer_error_status(health: &Health) -> ConsumerErrorStatus {
    let now = Instant::now();
    let mut errors = health.kafka_errors();
    settle_consumer_errors(health, &mut errors, now);
    let persistent: Vec<_> = errors
        .book
        .persistent()
        .map(|episode| PersistentConsumerError {
            code: code_label(episode.key.code),
            partition: episode.key.partition,
            reports: episode.reports,
            lasting: now.saturating_duration_since(episode.first),
            last_report_ago: now.saturating_duration_since(episode.last),
        })
        .collect();
    let not_advancing = if persistent.is_empty() {
        Vec::new()
    } else {
        errors
            .fetch
            .not_advancing(now, CONSUMER_ERROR_PERSIST_AFTER)
    };
    ConsumerErrorStatus {
        persistent,
        not_advancing,
    }
}

/// Ends the consumer errors that are over at `now`: one line each, with the repeats its limiter
/// still held back, and the gauges follow.
fn settle_consumer_errors(health: &Health, errors: &mut KafkaErrors, now: Instant) {
    let over = errors
        .book
        .settle(now, |partition| health.progress(partition));
    if over.is_empty() {
        return;
    }
    for episode in &over {
        let suppressed = errors.consumer_log.forget(&episode.key);
        errors.client_log.forget(&episode.key);
        tracing::info!(
            code = %code_label(episode.key.code),
            partition = episode.key.partition,
            reports = episode.reports,
            suppressed,
            lasted_s = episode.last.saturating_duration_since(episode.first).as_secs(),
            "kafka consumer error over"
        );
    }
    update_error_gauges(errors);
}

/// `regnotify_consumer_error_active{code}`: 1 for each code with a persistent error, 0 for codes
/// that had one before.
fn update_error_gauges(errors: &mut KafkaErrors) {
    let active: BTreeSet<String> = errors
        .book
        .persistent()
        .map(|episode| code_label(episode.key.code))
        .collect();
    errors.gauged.extend(active.iter().cloned());
    for code in &errors.gauged {
        let value = if active.contains(code) { 1.0 } else { 0.0 };
        metrics::gauge!(names::CONSUMER_ERROR_ACTIVE, "code" => code.clone()).set(value);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn consumption(code: RDKafkaErrorCode) -> KafkaError {
        KafkaError::MessageConsumption(code)
    }

    #[test]
    fn a_missing_topic_makes_the_service_not_ready_until_its_partitions_are_assigned() {
        let health = Health::default();
        let error = consumption(RDKafkaErrorCode::UnknownTopicOrPartition);
        kafka_client_error(
            &health,
            &KafkaError::Global(RDKafkaErrorCode::UnknownTopicOrPartition),
            "Subscribed topic not available: decided: Broker: Unknown topic or partition",
        );
        consumer_error(&health, &error);
        let status = consumer_error_status(&health);
        assert_eq!(status.persistent.len(), 1);
        assert_eq!(status.persistent[0].code, "UnknownTopicOrPartition");
        assert_eq!(status.persistent[0].partition, None);
        // An empty assignment (the topic still does not exist) proves nothing.
        health.assigned(0);
        assert_eq!(consumer_error_status(&health).persistent.len(), 1);
        health.assigned(2);
        assert_eq!(
            consumer_error_status(&health),
            ConsumerErrorStatus::default()
        );
    }

    #[test]
    fn the_partition_named_in_the_client_error_text_reaches_the_poll_error() {
        let health = Health::default();
        let code = RDKafkaErrorCode::TopicAuthorizationFailed;
        kafka_client_error(
            &health,
            &KafkaError::Global(code),
            "Failed to fetch committed offset for group \"g\" topic decided [3]: Broker: Topic authorization failed",
        );
        consumer_error(&health, &consumption(code));
        let status = consumer_error_status(&health);
        assert_eq!(status.persistent.len(), 1);
        assert_eq!(status.persistent[0].partition, Some(3));
        // The denial is topic-wide: a record from any partition proves the topic readable again.
        consumer_record(&health, 0);
        assert!(consumer_error_status(&health).persistent.is_empty());
    }

    #[test]
    fn a_client_error_of_another_code_lends_its_text_to_no_poll_error() {
        let health = Health::default();
        kafka_client_error(
            &health,
            &KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "decided [5]: disconnected",
        );
        consumer_error(
            &health,
            &consumption(RDKafkaErrorCode::TopicAuthorizationFailed),
        );
        let status = consumer_error_status(&health);
        assert_eq!(status.persistent[0].partition, None);
    }

    #[test]
    fn a_repeating_error_is_not_persistent_at_first() {
        let health = Health::default();
        for _ in 0..50 {
            consumer_error(
                &health,
                &consumption(RDKafkaErrorCode::UnsupportedCompressionType),
            );
        }
        assert!(
            consumer_error_status(&health).persistent.is_empty(),
            "only after {CONSUMER_ERROR_PERSIST_AFTER:?} of reports"
        );
    }
}
