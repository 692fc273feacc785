//! Per-merchant order as the simulator saw it: [`MerchantOrder`] checks each merchant's request
//! ids arrive in production order, fed the simulator's arrivals as they come; the watch that
//! feeds it during a run.
//!
//! Remembers one request id per merchant and nothing else; never answers calls.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::simulator::SimulatorHandle;

/// Whether, for every merchant, the calls reached the simulator in the order the requests were
/// produced (request ids are numbered in production order; a retry repeats the last id). Fed
/// arrivals as they come; remembers one request id per merchant.
#[derive(Debug, Default)]
pub(super) struct MerchantOrder {
    last: HashMap<String, String>,
    out_of_order: u64,
}

impl MerchantOrder {
    pub(super) fn observe(&mut self, arrivals: Vec<crate::simulator::Arrival>) {
        for arrival in arrivals {
            let request = arrival.registration_request_id;
            match self.last.get_mut(&arrival.reference_merchant_id) {
                Some(previous) if request < *previous => self.out_of_order += 1,
                Some(previous) => *previous = request,
                None => {
                    self.last.insert(arrival.reference_merchant_id, request);
                }
            }
        }
    }

    pub(super) fn kept(&self) -> bool {
        self.out_of_order == 0
    }
}

pub(super) async fn watch_merchant_order(
    simulator: Arc<SimulatorHandle>,
    order: Arc<std::sync::Mutex<MerchantOrder>>,
) {
    loop {
        let arrivals = simulator.take_arrivals();
        order
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .observe(arrivals);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merchant_order_is_checked_across_batches_of_arrivals() {
        let arrival = |merchant: &str, request: &str| crate::simulator::Arrival {
            reference_merchant_id: merchant.into(),
            registration_request_id: request.into(),
            registration_status: "APPROVED".into(),
            ..Default::default()
        };
        let mut order = MerchantOrder::default();
        order.observe(vec![arrival("M-1", "R-001"), arrival("M-2", "R-002")]);
        order.observe(vec![arrival("M-1", "R-001"), arrival("M-1", "R-003")]);
        assert!(order.kept());
        order.observe(vec![arrival("M-2", "R-004"), arrival("M-1", "R-002")]);
        assert!(!order.kept());
    }
}
