//! [`Stats`]: the counters and latency histograms kept in process, for `regnotify demo`, the
//! bench and tests (Prometheus has its own copy of what it needs).
//!
//! Plain atomics and mutex-guarded histograms; the reporting functions write them. It never
//! records metrics or logs.

use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};

use super::LatencyHistogram;
#[cfg(doc)]
use super::outputs_acknowledged;
use crate::event::DeadLetterReason;

/// Counters kept in process, for `regnotify demo` and for tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub consumed: AtomicU64,
    pub(crate) notified: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) poison: AtomicU64,
    pub(crate) dlq_decode_error: AtomicU64,
    pub(crate) dlq_invalid_event: AtomicU64,
    pub(crate) dlq_retries_exhausted: AtomicU64,
    pub(crate) dlq_request_refused: AtomicU64,
    pub http_calls: AtomicU64,
    pub retries: AtomicU64,
    pub(crate) signature_failures: AtomicU64,
    pub(crate) publish_errors: AtomicU64,
    pub rebalances: AtomicU64,
    pub(super) notify_latency: Mutex<LatencyHistogram>,
    pub(super) end_to_end_latency: Mutex<LatencyHistogram>,
    /// From handing an event's outputs to the producer to Kafka's acknowledgement of all of them
    /// (at-least-once); in process only, for `regnotify bench`'s bound of partition ordering.
    pub(super) output_latency: Mutex<LatencyHistogram>,
    pub(super) result_codes: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Stats {
    pub(super) fn dead_letter_counter(&self, reason: DeadLetterReason) -> &AtomicU64 {
        match reason {
            DeadLetterReason::DecodeError => &self.dlq_decode_error,
            DeadLetterReason::InvalidEvent => &self.dlq_invalid_event,
            DeadLetterReason::RetriesExhausted => &self.dlq_retries_exhausted,
            DeadLetterReason::RequestRefused => &self.dlq_request_refused,
        }
    }

    pub(crate) fn dead_letters(&self, reason: DeadLetterReason) -> u64 {
        self.dead_letter_counter(reason).load(Ordering::Relaxed)
    }

    /// Events that reached a terminal state: an outcome, or a dead letter without one (poison).
    pub fn terminal(&self) -> u64 {
        self.notified.load(Ordering::Relaxed)
            + self.rejected.load(Ordering::Relaxed)
            + self.dead_lettered.load(Ordering::Relaxed)
            + self.poison.load(Ordering::Relaxed)
    }

    /// Every HTTP call's latency so far.
    pub(crate) fn notify_latencies(&self) -> LatencyHistogram {
        self.notify_latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Output acknowledgements so far (see [`outputs_acknowledged`]).
    pub(crate) fn output_latencies(&self) -> LatencyHistogram {
        self.output_latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// From each decodable event's `occurredAt` to its terminal outcome, so far.
    pub(crate) fn end_to_end_latencies(&self) -> LatencyHistogram {
        self.end_to_end_latency
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Outcomes by result code (`none` when Alipay+ gave none).
    pub(crate) fn result_codes(&self) -> std::collections::BTreeMap<String, u64> {
        self.result_codes
            .lock()
            .map(|codes| codes.clone())
            .unwrap_or_default()
    }
}
