//! The simulated Alipay+ of one MPP: latency, outages, refusals about us or about an event,
//! rejections and throttling as the scenario says; every call counted in the world, which checks
//! that one merchant never has two calls in flight. It never touches Kafka's side of the world.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::RngExt;
use rand::rngs::StdRng;

use super::scenario::{Payload, Scenario, Window};
use super::world::{Clock, Shared};
use crate::alipayplus::{AttemptError, NotifyAttempt, ResultClass, SignatureCheck};
use crate::event::RegistrationDecided;
use crate::pipeline::mpp::Notifier;

/// The simulated Alipay+ of one MPP.
pub(super) struct SimAlipay {
    pub(super) psp: &'static str,
    /// Which life of the member calls (a crash starts the next).
    pub(super) life: usize,
    pub(super) world: Shared,
    pub(super) scenario: Arc<Scenario>,
    pub(super) clock: Arc<Clock>,
    pub(super) rng: Arc<Mutex<StdRng>>,
}

impl std::fmt::Debug for SimAlipay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimAlipay").field("psp", &self.psp).finish()
    }
}

impl Notifier for SimAlipay {
    fn notify<'a>(
        &'a self,
        event: &'a RegistrationDecided,
    ) -> Pin<Box<dyn Future<Output = NotifyAttempt> + Send + 'a>> {
        Box::pin(async move {
            let merchant = event.reference_merchant_id.clone();
            {
                let mut world = self.world.lock().unwrap();
                world.calls += 1;
                let calling = world.calling.entry(merchant.clone()).or_default();
                *calling += 1;
                if *calling > 1 {
                    let what = format!("two calls in flight for merchant {merchant}");
                    world.violate(what);
                }
                let step = u64::from_str_radix(&event.event_id[..8], 16).unwrap_or(0);
                world.note(step);
                if self.scenario.requests_per_second > 0 {
                    world.paced_call(self.life, self.psp, self.clock.at());
                }
            }
            // Decremented even when the call is dropped (the job cancelled).
            let _calling = Calling {
                world: Arc::clone(&self.world),
                merchant,
            };
            let latency = Duration::from_millis(self.rng.lock().unwrap().random_range(1..=40));
            tokio::time::sleep(latency).await;
            let at = self.clock.at();
            let in_any = |windows: &[Window]| windows.iter().any(|w| w.contains(at));
            let refused_event = self.scenario.records.iter().any(|(_, _, payload)| {
                matches!(payload, Payload::Event { event: e, refused: true, .. } if e.event_id == event.event_id)
            });
            let rejected_event = self.scenario.records.iter().any(|(_, _, payload)| {
                matches!(payload, Payload::Event { event: e, rejected: true, .. } if e.event_id == event.event_id)
            });
            let class = if in_any(&self.scenario.outages[self.psp]) {
                ResultClass::Unknown
            } else if in_any(&self.scenario.refusing_us) || refused_event {
                ResultClass::Refused
            } else if rejected_event {
                ResultClass::Rejected
            } else if in_any(&self.scenario.throttling) && self.rng.lock().unwrap().random_bool(0.5)
            {
                ResultClass::Throttled
            } else {
                ResultClass::Success
            };
            NotifyAttempt {
                class,
                http_status: Some(match class {
                    ResultClass::Unknown => 503,
                    ResultClass::Refused => 400,
                    _ => 200,
                }),
                result: None,
                signature: SignatureCheck::NotChecked,
                latency,
                request_time: String::new(),
                error: (class == ResultClass::Unknown)
                    .then(|| AttemptError::Timeout("simulated outage".into())),
            }
        })
    }
}

struct Calling {
    world: Shared,
    merchant: String,
}

impl Drop for Calling {
    fn drop(&mut self) {
        if let Ok(mut world) = self.world.lock()
            && let Some(calling) = world.calling.get_mut(&self.merchant)
        {
            *calling = calling.saturating_sub(1);
        }
    }
}
