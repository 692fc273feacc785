//! What the simulator received and answered, for tests and the demo (`GET /stats`).
//!
//! Besides counters it records how many calls were open at once, overall and per
//! `referenceMerchantId`, from the moment a request arrives until its answer is sent (or the
//! client gives up): ordering tests assert "at most one call per merchant at a time" from these
//! numbers instead of inferring it from arrival order.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

/// One well-formed, correctly signed request, in arrival order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arrival {
    pub(crate) reference_merchant_id: String,
    pub registration_request_id: String,
    pub registration_status: String,
    /// The `Client-Id` header.
    #[serde(default)]
    pub client_id: String,
    /// The `keyVersion` of the `Signature` header, as sent.
    #[serde(default)]
    pub key_version: Option<String>,
    /// The name of the trusted MPP public key that verified the request (`mpp` for
    /// [`crate::simulator::SimulatorConfig::mpp_public_key`]); `None` when signatures are not
    /// checked.
    #[serde(default)]
    pub signed_by: Option<String>,
}

/// A snapshot of the simulator's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimulatorStats {
    /// Every POST to the notify path.
    pub total_calls: u64,
    /// Answers by result code, or `HTTP_<status>`, `HANG`, `GARBLED`, `BAD_SIGNATURE`,
    /// `UNSIGNED_SUCCESS` for injected faults.
    pub answers: BTreeMap<String, u64>,
    /// Requests whose signature was missing or wrong.
    pub signature_failures: u64,
    /// Well-formed, correctly signed requests in arrival order (the most recent ones when more
    /// than the bound arrived).
    pub arrivals: Vec<Arrival>,
    /// Arrivals dropped from the front of `arrivals` to keep it bounded.
    pub arrivals_dropped: u64,
    /// Most calls open at the same time, over all merchants.
    #[serde(default)]
    pub max_concurrent_calls: u32,
    /// Most calls open at the same time for one `referenceMerchantId`, per merchant (requests
    /// whose body names no merchant are left out). Bounded like `arrivals`.
    #[serde(default)]
    pub(crate) max_concurrent_calls_per_merchant: BTreeMap<String, u32>,
    /// Merchants not entered in `max_concurrent_calls_per_merchant` because it was full.
    #[serde(default)]
    pub(crate) merchants_untracked: u64,
    /// Calls waiting right now at a closed gate ([`crate::simulator::SimulatorHandle::hold`]).
    #[serde(default)]
    pub held_calls: u64,
    /// Every POST to the notify path, by the wall-clock second (Unix time) it came in; the last
    /// hour's seconds.
    #[serde(default)]
    pub calls_per_second: BTreeMap<u64, u64>,
    /// The same calls by the second their `Request-Time` header names (Unix time; calls without
    /// a readable one are left out): when the caller sent them, as its own pacing saw it. A
    /// caller starved of CPU between stamping and sending (or a simulator starved before it
    /// counts) moves calls from one arrival second to the next, not between these.
    #[serde(default)]
    pub calls_per_request_second: BTreeMap<u64, u64>,
}

impl SimulatorStats {
    /// Registration request ids of one merchant, in arrival order (repeats included).
    pub fn requests_of(&self, merchant_id: &str) -> Vec<&str> {
        self.arrivals
            .iter()
            .filter(|a| a.reference_merchant_id == merchant_id)
            .map(|a| a.registration_request_id.as_str())
            .collect()
    }

    /// Most calls of `merchant_id` that were open at the same time (0 when it never called).
    pub fn max_concurrency_of(&self, merchant_id: &str) -> u32 {
        self.max_concurrent_calls_per_merchant
            .get(merchant_id)
            .copied()
            .unwrap_or(0)
    }

    /// The merchants that ever had more than one call open at the same time, with their maximum.
    pub fn merchants_with_overlapping_calls(&self) -> BTreeMap<&str, u32> {
        self.max_concurrent_calls_per_merchant
            .iter()
            .filter(|(_, max)| **max > 1)
            .map(|(merchant, max)| (merchant.as_str(), *max))
            .collect()
    }

    /// How often `answer` (a result code or fault label) was given.
    pub fn answered(&self, answer: &str) -> u64 {
        self.answers.get(answer).copied().unwrap_or(0)
    }
}

#[derive(Debug)]
pub(crate) struct StatsRecorder {
    total_calls: u64,
    answers: BTreeMap<String, u64>,
    signature_failures: u64,
    arrivals: VecDeque<Arrival>,
    arrivals_dropped: u64,
    max_arrivals: usize,
    open_calls: u32,
    open_by_merchant: HashMap<String, u32>,
    max_concurrent_calls: u32,
    max_by_merchant: BTreeMap<String, u32>,
    merchants_untracked: u64,
    held_calls: u64,
    calls_per_second: BTreeMap<u64, u64>,
    calls_per_request_second: BTreeMap<u64, u64>,
}

/// Seconds `calls_per_second` (and `calls_per_request_second`) keep.
const SECONDS_KEPT: usize = 3_600;

/// One more call in `second`, keeping the latest [`SECONDS_KEPT`] seconds.
fn count_second(seconds: &mut BTreeMap<u64, u64>, second: u64) {
    *seconds.entry(second).or_insert(0) += 1;
    if seconds.len() > SECONDS_KEPT {
        seconds.pop_first();
    }
}

impl StatsRecorder {
    pub(crate) fn new(max_arrivals: usize) -> Self {
        StatsRecorder {
            total_calls: 0,
            answers: BTreeMap::new(),
            signature_failures: 0,
            arrivals: VecDeque::new(),
            arrivals_dropped: 0,
            max_arrivals,
            open_calls: 0,
            open_by_merchant: HashMap::new(),
            max_concurrent_calls: 0,
            max_by_merchant: BTreeMap::new(),
            merchants_untracked: 0,
            held_calls: 0,
            calls_per_second: BTreeMap::new(),
            calls_per_request_second: BTreeMap::new(),
        }
    }

    /// A call opened; pair with [`StatsRecorder::call_closed`] with the same merchant.
    pub(crate) fn call_opened(&mut self, merchant_id: Option<&str>) {
        self.open_calls += 1;
        self.max_concurrent_calls = self.max_concurrent_calls.max(self.open_calls);
        let Some(merchant_id) = merchant_id else {
            return;
        };
        let open = self
            .open_by_merchant
            .entry(merchant_id.to_owned())
            .or_insert(0);
        *open += 1;
        let open = *open;
        if let Some(max) = self.max_by_merchant.get_mut(merchant_id) {
            *max = (*max).max(open);
        } else if self.max_by_merchant.len() < self.max_arrivals {
            self.max_by_merchant.insert(merchant_id.to_owned(), open);
        } else {
            self.merchants_untracked += 1;
        }
    }

    pub(crate) fn call_closed(&mut self, merchant_id: Option<&str>) {
        debug_assert!(self.open_calls > 0, "a call closed that never opened");
        self.open_calls = self.open_calls.saturating_sub(1);
        let Some(merchant_id) = merchant_id else {
            return;
        };
        if let Some(open) = self.open_by_merchant.get_mut(merchant_id) {
            *open -= 1;
            if *open == 0 {
                self.open_by_merchant.remove(merchant_id);
            }
        }
    }

    pub(crate) fn held(&mut self, waiting: bool) {
        if waiting {
            self.held_calls += 1;
        } else {
            self.held_calls = self.held_calls.saturating_sub(1);
        }
    }

    /// A call came in, stamped `request_time` by its caller (`None`: no readable one).
    pub(crate) fn call(&mut self, request_time: Option<chrono::DateTime<chrono::FixedOffset>>) {
        self.total_calls += 1;
        let second = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        count_second(&mut self.calls_per_second, second);
        let stamped = request_time.and_then(|time| u64::try_from(time.timestamp()).ok());
        if let Some(second) = stamped {
            count_second(&mut self.calls_per_request_second, second);
        }
    }

    pub(crate) fn signature_failure(&mut self) {
        self.signature_failures += 1;
    }

    pub(crate) fn answer(&mut self, label: &str) {
        *self.answers.entry(label.to_owned()).or_insert(0) += 1;
    }

    pub(crate) fn arrival(&mut self, arrival: Arrival) {
        if self.max_arrivals == 0 {
            self.arrivals_dropped += 1;
            return;
        }
        if self.arrivals.len() >= self.max_arrivals {
            self.arrivals.pop_front();
            self.arrivals_dropped += 1;
        }
        self.arrivals.push_back(arrival);
    }

    /// Hands over the arrivals recorded so far and forgets them.
    pub(crate) fn take_arrivals(&mut self) -> Vec<Arrival> {
        self.arrivals.drain(..).collect()
    }

    pub(crate) fn snapshot(&self) -> SimulatorStats {
        SimulatorStats {
            total_calls: self.total_calls,
            answers: self.answers.clone(),
            signature_failures: self.signature_failures,
            arrivals: self.arrivals.iter().cloned().collect(),
            arrivals_dropped: self.arrivals_dropped,
            max_concurrent_calls: self.max_concurrent_calls,
            max_concurrent_calls_per_merchant: self.max_by_merchant.clone(),
            merchants_untracked: self.merchants_untracked,
            held_calls: self.held_calls,
            calls_per_second: self.calls_per_second.clone(),
            calls_per_request_second: self.calls_per_request_second.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_is_counted_per_merchant_and_overall() {
        let mut stats = StatsRecorder::new(10);
        stats.call_opened(Some("M-1"));
        stats.call_opened(Some("M-2"));
        stats.call_closed(Some("M-1"));
        stats.call_opened(Some("M-1"));
        stats.call_opened(Some("M-1"));
        stats.call_opened(None);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.max_concurrent_calls, 4);
        assert_eq!(snapshot.max_concurrency_of("M-1"), 2);
        assert_eq!(snapshot.max_concurrency_of("M-2"), 1);
        assert_eq!(snapshot.max_concurrency_of("M-3"), 0);
        assert_eq!(
            snapshot.merchants_with_overlapping_calls(),
            BTreeMap::from([("M-1", 2)])
        );
        for merchant in [Some("M-1"), Some("M-1"), Some("M-2"), None] {
            stats.call_closed(merchant);
        }
        assert!(stats.open_by_merchant.is_empty());
        assert_eq!(stats.open_calls, 0);
    }

    #[test]
    fn the_per_merchant_table_is_bounded() {
        let mut stats = StatsRecorder::new(2);
        for merchant in ["A", "B", "C"] {
            stats.call_opened(Some(merchant));
            stats.call_closed(Some(merchant));
        }
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.max_concurrent_calls_per_merchant.len(), 2);
        assert_eq!(snapshot.merchants_untracked, 1);
    }
}
