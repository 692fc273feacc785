//! Metric names (SPEC section 8): `regnotify_` prefix, base units, counters end in `_total`.
//!
//! The one list of the service's metric names; their descriptions and units are in `describe`.
//! Constants only: nothing here records a metric or logs.

pub(crate) const EVENTS_CONSUMED: &str = "regnotify_events_consumed_total";
pub(crate) const OUTCOMES: &str = "regnotify_outcomes_total";
pub(crate) const NOTIFY_ATTEMPTS: &str = "regnotify_notify_attempts_total";
pub(crate) const NOTIFY_LATENCY: &str = "regnotify_notify_latency_seconds";
pub(crate) const END_TO_END_LATENCY: &str = "regnotify_end_to_end_latency_seconds";
pub(crate) const RETRIES: &str = "regnotify_retries_total";
pub(crate) const DEAD_LETTERS: &str = "regnotify_dead_letters_total";
pub(crate) const IN_FLIGHT: &str = "regnotify_in_flight";
pub(crate) const AWAITING_COMMIT: &str = "regnotify_awaiting_commit";
pub(crate) const PENDING: &str = "regnotify_pending_events";
pub(crate) const COMMITTED_OFFSET: &str = "regnotify_committed_offset";
pub(crate) const RESPONSE_SIGNATURE_FAILURES: &str = "regnotify_response_signature_failures_total";
pub(crate) const UNVERIFIED_RESPONSES: &str = "regnotify_unverified_responses_total";
pub(crate) const REBALANCES: &str = "regnotify_rebalances_total";
pub(crate) const PUBLISH_ERRORS: &str = "regnotify_publish_errors_total";
pub(crate) const COMMIT_ERRORS: &str = "regnotify_commit_errors_total";
pub(crate) const CONSUMER_LAG: &str = "regnotify_consumer_lag";
pub(crate) const SIGNING_TIME: &str = "regnotify_signing_seconds";
pub(crate) const BUILD_INFO: &str = "regnotify_build_info";
pub(crate) const KAFKA_BROKERS_UP: &str = "regnotify_kafka_brokers_up";
pub(crate) const CONSUMER_ERRORS: &str = "regnotify_consumer_errors_total";
pub(crate) const CONSUMER_ERROR_ACTIVE: &str = "regnotify_consumer_error_active";
pub(crate) const KAFKA_CLIENT_ERRORS: &str = "regnotify_kafka_client_errors_total";
pub(crate) const PARTITION_RESTARTS: &str = "regnotify_partition_restarts_total";
pub(crate) const CIRCUIT_STATE: &str = "regnotify_circuit_state";
pub(crate) const CIRCUIT_TRANSITIONS: &str = "regnotify_circuit_transitions_total";
pub(crate) const SEND_RATE_LIMIT: &str = "regnotify_send_rate_limit";
pub(crate) const SEND_RATE_SHARE: &str = "regnotify_send_rate_share";
pub(crate) const THROTTLED: &str = "regnotify_throttled_total";
pub(crate) const SKIPPED_FINISHED: &str = "regnotify_skipped_finished_total";
pub(crate) const FINISHED_NOTE_BYTES: &str = "regnotify_finished_note_bytes";
pub(crate) const KEY_RELOADS: &str = "regnotify_key_reloads_total";
pub(crate) const KEY_VERSION: &str = "regnotify_key_version";
pub(crate) const INVARIANT_VIOLATIONS: &str = "regnotify_invariant_violations_total";
pub(crate) const CONSUMER_LAG_SECONDS: &str = "regnotify_consumer_lag_seconds";
pub(crate) const OLDEST_UNFINISHED: &str = "regnotify_oldest_unfinished_seconds";
pub(crate) const STALLED_EVENTS: &str = "regnotify_stalled_events_total";
