//! The series `/metrics` shows before anything has happened. A metric appears in the exposition
//! only once a series of it is touched, so a rare one (a key reload, a broken invariant, a
//! throttling answer) would be missing from the dashboard and the alert rules until the first
//! time, and its first occurrence would be a new series at 1, which `increase()` does not count.
//! Here every series whose labels are known up front is touched with zero: at start for the
//! configured MPPs and the fixed label sets, at each rebalance for the partitions it names.
//!
//! It only ever adds zero, never sets a value: several services in one process (the tests, the
//! demo) share the recorder, and what another one reported must stay. It never touches series
//! whose labels are open-ended (Kafka error codes, result codes), nor gauges whose zero would be
//! a claim nobody made (brokers up, lag, committed offset, pending events): those appear with
//! their first real value.

use super::names;
use crate::event::DeadLetterReason;

/// The label sets of the types this module does not know (it sits below the Alipay+ client and
/// the pipeline, which report to it): the caller names them from the types themselves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KnownLabels<'a> {
    /// Every class an Alipay+ answer can fall in (`class` of the attempts).
    pub(crate) result_classes: &'a [&'static str],
    /// The classes that are retried (`class` of the retries).
    pub(crate) retried_classes: &'a [&'static str],
    /// Every state of a circuit (`to` of the transitions).
    pub(crate) circuit_states: &'a [&'static str],
}

/// `kind` of `regnotify_rebalances_total`, as the dispatcher reports them.
const REBALANCE_KINDS: [&str; 3] = ["assign", "revoke", "lost"];

/// `key` and `result` of `regnotify_key_reloads_total`.
const RELOADED_KEYS: [&str; 2] = ["mpp_private_key", "alipayplus_public_key"];
const RELOAD_RESULTS: [&str; 2] = ["applied", "refused"];

/// Every `check` the pipeline reports to [`super::invariant_broken`] (the names passed to
/// `pipeline::invariant::take` and `expect`). tests/it/operations/metrics.rs reads them from the
/// source and fails when one is missing here.
const INVARIANT_CHECKS: [&str; 12] = [
    "acknowledged_offset_in_window",
    "book_waiting",
    "keyed_queued",
    "parked_jobs",
    "parked_within_in_flight",
    "released_key_not_parked",
    "resuming_jobs",
    "scheduler_blocked",
    "scheduler_in_flight",
    "skipped_offset_in_window",
    "started_slot_was_waiting",
    "watermark_unfinished",
];

/// Touches, at zero, every series whose labels are known at start: the label-free counters,
/// gauges and histograms, the fixed label sets, and per MPP of `psps` (`default` and each
/// `[alipayplus.clients]` pspId) its attempts, signature failures, circuit transitions, send
/// rate, throttling answers and key reloads. Called once where the service is built.
pub(crate) fn export_known_series<'a>(
    psps: impl IntoIterator<Item = &'a str>,
    labels: &KnownLabels<'_>,
) {
    for name in [
        names::NOTIFY_LATENCY,
        names::END_TO_END_LATENCY,
        names::SIGNING_TIME,
    ] {
        // Registering the histogram is the point: it is rendered with empty buckets.
        let _ = metrics::histogram!(name);
    }
    for name in [names::IN_FLIGHT, names::AWAITING_COMMIT] {
        metrics::gauge!(name).increment(0.0);
    }
    for name in [names::PUBLISH_ERRORS, names::COMMIT_ERRORS] {
        metrics::counter!(name).increment(0);
    }
    for reason in DeadLetterReason::ALL {
        metrics::counter!(names::DEAD_LETTERS, "reason" => reason.as_str()).increment(0);
    }
    for &class in labels.retried_classes {
        metrics::counter!(names::RETRIES, "class" => class).increment(0);
    }
    for kind in REBALANCE_KINDS {
        metrics::counter!(names::REBALANCES, "kind" => kind).increment(0);
    }
    for check in INVARIANT_CHECKS {
        metrics::counter!(names::INVARIANT_VIOLATIONS, "check" => check).increment(0);
    }
    for psp in psps {
        export_psp_series(psp, labels);
    }
}

fn export_psp_series(psp: &str, labels: &KnownLabels<'_>) {
    for &class in labels.result_classes {
        metrics::counter!(
            names::NOTIFY_ATTEMPTS,
            "class" => class,
            "psp" => psp.to_owned(),
        )
        .increment(0);
    }
    for name in [
        names::RESPONSE_SIGNATURE_FAILURES,
        names::UNVERIFIED_RESPONSES,
        names::THROTTLED,
    ] {
        metrics::counter!(name, "psp" => psp.to_owned()).increment(0);
    }
    for &to in labels.circuit_states {
        metrics::counter!(
            names::CIRCUIT_TRANSITIONS,
            "to" => to,
            "psp" => psp.to_owned(),
        )
        .increment(0);
    }
    // 0 means "not limited", which is true until the first throttling answer.
    metrics::gauge!(names::SEND_RATE_LIMIT, "psp" => psp.to_owned()).increment(0.0);
    // 0 until the first assignment gives this member a share.
    metrics::gauge!(names::SEND_RATE_SHARE, "psp" => psp.to_owned()).increment(0.0);
    for key in RELOADED_KEYS {
        for result in RELOAD_RESULTS {
            metrics::counter!(
                names::KEY_RELOADS,
                "psp" => psp.to_owned(),
                "key" => key,
                "result" => result,
            )
            .increment(0);
        }
    }
}

/// Touches, at zero, the per-partition counters of `partitions` (a rebalance named them): records
/// consumed, records skipped as finished, partition restarts and stalled events.
pub(crate) fn export_partition_series(partitions: &[i32]) {
    for partition in partitions {
        for name in [
            names::EVENTS_CONSUMED,
            names::SKIPPED_FINISHED,
            names::PARTITION_RESTARTS,
            names::STALLED_EVENTS,
        ] {
            metrics::counter!(name, "partition" => partition.to_string()).increment(0);
        }
    }
}
