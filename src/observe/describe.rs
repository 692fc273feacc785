//! The description and unit of every metric, given to the recorder once at start-up
//! ([`describe_metrics`]), and the `regnotify_build_info` series.
//!
//! One long function on purpose: one `describe_*!` call per metric of [`names`], in the order of
//! the list. It must never record anything but the build info, nor name a metric other than
//! through [`names`].

use super::names;

/// Describes every metric with its unit, once at start-up.
pub(crate) fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        names::EVENTS_CONSUMED,
        Unit::Count,
        "input records consumed"
    );
    describe_counter!(
        names::OUTCOMES,
        Unit::Count,
        "terminal outcomes by outcome and result code"
    );
    describe_counter!(
        names::NOTIFY_ATTEMPTS,
        Unit::Count,
        "alipay+ calls by result class"
    );
    describe_histogram!(
        names::NOTIFY_LATENCY,
        Unit::Seconds,
        "duration of one alipay+ call"
    );
    describe_histogram!(
        names::END_TO_END_LATENCY,
        Unit::Seconds,
        "from the event's occurredAt to its terminal outcome"
    );
    describe_counter!(
        names::RETRIES,
        Unit::Count,
        "alipay+ calls retried, by class"
    );
    describe_counter!(
        names::DEAD_LETTERS,
        Unit::Count,
        "dead letters written, by reason"
    );
    describe_gauge!(names::IN_FLIGHT, Unit::Count, "events being notified now");
    describe_gauge!(
        names::AWAITING_COMMIT,
        Unit::Count,
        "events notified whose outcome is not committed yet; each keeps its max_in_flight slot"
    );
    describe_gauge!(
        names::PENDING,
        Unit::Count,
        "uncommitted events per partition"
    );
    describe_gauge!(
        names::COMMITTED_OFFSET,
        Unit::Count,
        "last committed offset per partition"
    );
    describe_counter!(
        names::RESPONSE_SIGNATURE_FAILURES,
        Unit::Count,
        "success answers whose signature was missing or wrong"
    );
    describe_counter!(
        names::UNVERIFIED_RESPONSES,
        Unit::Count,
        "failure answers acted on without a valid signature"
    );
    describe_counter!(
        names::REBALANCES,
        Unit::Count,
        "partition assignments and revocations"
    );
    describe_counter!(
        names::PUBLISH_ERRORS,
        Unit::Count,
        "output writes kafka did not acknowledge"
    );
    describe_counter!(
        names::COMMIT_ERRORS,
        Unit::Count,
        "offset commits that failed"
    );
    describe_gauge!(
        names::CONSUMER_LAG,
        Unit::Count,
        "records between the committed offset and the partition end, per assigned partition"
    );
    describe_histogram!(
        names::SIGNING_TIME,
        Unit::Seconds,
        "time to RSA-sign one request"
    );
    describe_gauge!(
        names::BUILD_INFO,
        Unit::Count,
        "always 1; the version is a label"
    );
    describe_gauge!(
        names::KAFKA_BROKERS_UP,
        Unit::Count,
        "brokers librdkafka sees as up"
    );
    describe_counter!(
        names::CONSUMER_ERRORS,
        Unit::Count,
        "errors the kafka consumer returned instead of records, by librdkafka error code"
    );
    describe_gauge!(
        names::CONSUMER_ERROR_ACTIVE,
        Unit::Count,
        "1 while a consumer error of this code persists (readyz answers 503), else 0"
    );
    describe_counter!(
        names::KAFKA_CLIENT_ERRORS,
        Unit::Count,
        "errors librdkafka reported to the consumer client, by error code (includes consumer errors)"
    );
    describe_counter!(
        names::PARTITION_RESTARTS,
        Unit::Count,
        "times a partition started over within an assignment because a new record appeared at an \
         offset already consumed (log truncated or topic recreated)"
    );
    describe_counter!(
        names::SKIPPED_FINISHED,
        Unit::Count,
        "records not processed again because the committed offset's note says an earlier owner \
         finished them"
    );
    describe_gauge!(
        names::FINISHED_NOTE_BYTES,
        Unit::Bytes,
        "size of the last commit's note of finished offsets above the committed one, per partition"
    );
    describe_gauge!(
        names::CIRCUIT_STATE,
        Unit::Count,
        "the alipay+ circuit breaker: 0 closed, 1 open, 2 half-open (probing)"
    );
    describe_counter!(
        names::CIRCUIT_TRANSITIONS,
        Unit::Count,
        "alipay+ circuit breaker transitions, by the state entered"
    );
    describe_gauge!(
        names::SEND_RATE_LIMIT,
        Unit::Count,
        "requests per second this member's sends are paced to: its share of \
         max_requests_per_second, lower after throttling answers; 0 = not limited"
    );
    describe_gauge!(
        names::SEND_RATE_SHARE,
        Unit::Count,
        "this member's share of the group's max_requests_per_second, in requests per second, \
         in proportion to the input partitions it owns; 0 = no limit configured"
    );
    describe_counter!(
        names::THROTTLED,
        Unit::Count,
        "throttling answers from alipay+ (REQUEST_TRAFFIC_EXCEED_LIMIT)"
    );
    describe_counter!(
        names::KEY_RELOADS,
        Unit::Count,
        "key files reloaded while running, by psp, key (mpp_private_key, alipayplus_public_key) \
         and result (applied, refused)"
    );
    describe_gauge!(
        names::KEY_VERSION,
        Unit::Count,
        "the keyVersion requests of this psp are signed with"
    );
    describe_counter!(
        names::INVARIANT_VIOLATIONS,
        Unit::Count,
        "internal invariants found broken, by check (readyz answers 503 from the first)"
    );
    describe_gauge!(
        names::CONSUMER_LAG_SECONDS,
        Unit::Seconds,
        "now minus the timestamp of the next record to commit, by partition; 0 when every \
         consumed record is committed"
    );
    describe_gauge!(
        names::OLDEST_UNFINISHED,
        Unit::Seconds,
        "age of the oldest event taken but without its terminal outcome, by partition; 0 when none"
    );
    describe_counter!(
        names::STALLED_EVENTS,
        Unit::Count,
        "events found still unfinished admin.event_stall_after after they were taken, by \
         partition (each counted once, with a warning log naming key, partition and offset)"
    );
    metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}
