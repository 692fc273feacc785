//! Metric names (SPEC section 8): `regnotify_` prefix, base units, counters end in `_total`.
//!
//! The one list of the service's metric names; their descriptions and units are in `describe`.
//! Constants only: nothing here records a metric or logs.

pub const EVENTS_CONSUMED: &str = "regnotify_events_consumed_total";
pub const OUTCOMES: &str = "regnotify_outcomes_total";
pub const NOTIFY_ATTEMPTS: &str = "regnotify_notify_attempts_total";
pub const NOTIFY_LATENCY: &str = "regnotify_notify_latency_seconds";
pub const END_TO_END_LATENCY: &str = "regnotify_end_to_end_latency_seconds";
pub const RETRIES: &str = "regnotify_retries_total";
pub const DEAD_LETTERS: &str = "regnotify_dead_letters_total";
pub const IN_FLIGHT: &str = "regnotify_in_flight";
pub const AWAITING_COMMIT: &str = "regnotify_awaiting_commit";
pub const PENDING: &str = "regnotify_pending_events";
pub const COMMITTED_OFFSET: &str = "regnotify_committed_offset";
pub const RESPONSE_SIGNATURE_FAILURES: &str = "regnotify_response_signature_failures_total";
pub const UNVERIFIED_RESPONSES: &str = "regnotify_unverified_responses_total";
pub const REBALANCES: &str = "regnotify_rebalances_total";
pub const PUBLISH_ERRORS: &str = "regnotify_publish_errors_total";
pub const COMMIT_ERRORS: &str = "regnotify_commit_errors_total";
pub const CONSUMER_LAG: &str = "regnotify_consumer_lag";
pub const SIGNING_TIME: &str = "regnotify_signing_seconds";
pub const BUILD_INFO: &str = "regnotify_build_info";
pub const KAFKA_BROKERS_UP: &str = "regnotify_kafka_brokers_up";
pub const CONSUMER_ERRORS: &str = "regnotify_consumer_errors_total";
pub const CONSUMER_ERROR_ACTIVE: &str = "regnotify_consumer_error_active";
pub const KAFKA_CLIENT_ERRORS: &str = "regnotify_kafka_client_errors_total";
pub const PARTITION_RESTARTS: &str = "regnotify_partition_restarts_total";
pub const CIRCUIT_STATE: &str = "regnotify_circuit_state";
pub const CIRCUIT_TRANSITIONS: &str = "regnotify_circuit_transitions_total";
pub const SEND_RATE_LIMIT: &str = "regnotify_send_rate_limit";
pub const SEND_RATE_SHARE: &str = "regnotify_send_rate_share";
pub const THROTTLED: &str = "regnotify_throttled_total";
pub const SKIPPED_FINISHED: &str = "regnotify_skipped_finished_total";
pub const FINISHED_NOTE_BYTES: &str = "regnotify_finished_note_bytes";
pub const KEY_RELOADS: &str = "regnotify_key_reloads_total";
pub const KEY_VERSION: &str = "regnotify_key_version";
pub const INVARIANT_VIOLATIONS: &str = "regnotify_invariant_violations_total";
pub const CONSUMER_LAG_SECONDS: &str = "regnotify_consumer_lag_seconds";
pub const OLDEST_UNFINISHED: &str = "regnotify_oldest_unfinished_seconds";
pub const STALLED_EVENTS: &str = "regnotify_stalled_events_total";
