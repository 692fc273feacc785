//! What the simulator received and answered, for tests and the demo (`GET /stats`).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

/// One well-formed, correctly signed request, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Arrival {
    pub reference_merchant_id: String,
    pub registration_request_id: String,
    pub registration_status: String,
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
        }
    }

    pub(crate) fn call(&mut self) {
        self.total_calls += 1;
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

    pub(crate) fn snapshot(&self) -> SimulatorStats {
        SimulatorStats {
            total_calls: self.total_calls,
            answers: self.answers.clone(),
            signature_failures: self.signature_failures,
            arrivals: self.arrivals.iter().cloned().collect(),
            arrivals_dropped: self.arrivals_dropped,
        }
    }
}
