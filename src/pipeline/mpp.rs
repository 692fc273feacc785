//! Which MPP an event belongs to, and what each MPP has of its own: its Alipay+ client (client
//! id, keys, base URL, rate ceiling), its circuit breaker and its adaptive send rate. One MPP's
//! throttling, outage or refusal slows or holds only its own events.
//!
//! Routing never trusts input beyond a lookup: a `pspId` is matched against the configured
//! tables, and only a configured table's name ever becomes a metric label.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use std::future::Future;
use std::pin::Pin;

use crate::alipayplus::{AlipayPlusClient, NotifyAttempt};
use crate::event::RegistrationDecided;
use crate::pipeline::backoff::AdaptiveRate;
use crate::pipeline::circuit::Circuit;

/// How fast the send rate recovers after Alipay+ throttled us, in requests per second gained per
/// second.
const RATE_RECOVERY_PER_SECOND: f64 = 5.0;

/// Longest part of an unknown `pspId` quoted in a dead letter's reason.
const QUOTED_PSP_ID_CHARS: usize = 64;

/// One MPP's client, circuit and send rate.
#[derive(Debug)]
pub struct Mpp {
    /// `default` or the `[alipayplus.clients.<pspId>]` table name: the `psp` metric label.
    pub psp: String,
    pub client: Arc<dyn Notifier>,
    pub circuit: Arc<Circuit>,
    /// Slows down after throttling answers; the configured ceiling is the client's.
    pub send_rate: Mutex<AdaptiveRate>,
}

impl Mpp {
    pub fn new(psp: &str, client: Arc<dyn Notifier>, circuit: Arc<Circuit>) -> Mpp {
        Mpp {
            psp: psp.to_owned(),
            client,
            circuit,
            // Starts unlimited: it only slows down after throttling answers.
            send_rate: Mutex::new(AdaptiveRate::new(0, RATE_RECOVERY_PER_SECOND)),
        }
    }
}

/// Sends one notification and classifies the answer: the signing Alipay+ client in the service,
/// a simulated Alipay+ in the whole-service simulation.
pub trait Notifier: Send + Sync + std::fmt::Debug {
    fn notify<'a>(
        &'a self,
        event: &'a RegistrationDecided,
    ) -> Pin<Box<dyn Future<Output = NotifyAttempt> + Send + 'a>>;
}

impl Notifier for AlipayPlusClient {
    fn notify<'a>(
        &'a self,
        event: &'a RegistrationDecided,
    ) -> Pin<Box<dyn Future<Output = NotifyAttempt> + Send + 'a>> {
        Box::pin(self.notify_registration_status(event))
    }
}

/// Every configured MPP.
#[derive(Debug)]
pub struct Mpps {
    /// The top-level `[alipayplus]` identity: events without a `pspId`.
    default: Arc<Mpp>,
    /// `[alipayplus.clients.<pspId>]`, by pspId.
    named: HashMap<String, Arc<Mpp>>,
}

impl Mpps {
    pub fn new(default: Mpp, named: impl IntoIterator<Item = (String, Mpp)>) -> Mpps {
        Mpps {
            default: Arc::new(default),
            named: named
                .into_iter()
                .map(|(psp, mpp)| (psp, Arc::new(mpp)))
                .collect(),
        }
    }

    /// The MPP whose credentials serve an event naming `psp_id`, or why there is none.
    ///
    /// Without any `[alipayplus.clients]` table the top-level identity serves every event, as
    /// before there were tables (a single-MPP deployment whose events carry a pspId keeps
    /// working). With tables, an event without a pspId (or with an empty one) is the top-level
    /// identity's, and a pspId without a table has no credentials to be signed with.
    pub fn route(&self, psp_id: Option<&str>) -> Result<&Arc<Mpp>, String> {
        if self.named.is_empty() {
            return Ok(&self.default);
        }
        match psp_id.filter(|id| !id.is_empty()) {
            None => Ok(&self.default),
            Some(id) => self.named.get(id).ok_or_else(|| {
                let quoted: String = id.chars().take(QUOTED_PSP_ID_CHARS).collect();
                format!(
                    "pspId {quoted:?} has no [alipayplus.clients] table: no credentials to sign \
                     its notification with"
                )
            }),
        }
    }

    /// Every MPP, the top-level one first.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Mpp>> {
        std::iter::once(&self.default).chain(self.named.values())
    }
}
