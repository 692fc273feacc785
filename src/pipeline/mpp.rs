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
use crate::pipeline::job::now;

/// How fast the send rate recovers after Alipay+ throttled us, in requests per second gained per
/// second.
const RATE_RECOVERY_PER_SECOND: f64 = 5.0;

/// Longest part of an unknown `pspId` quoted in a dead letter's reason.
const QUOTED_PSP_ID_CHARS: usize = 64;

/// One MPP's client, circuit and send rate.
#[derive(Debug)]
pub(crate) struct Mpp {
    /// `default` or the `[alipayplus.clients.<pspId>]` table name: the `psp` metric label.
    pub(crate) psp: String,
    pub(crate) client: Arc<dyn Notifier>,
    pub(crate) circuit: Arc<Circuit>,
    /// Paces sends to this member's share of `max_requests_per_second`, and slows down after
    /// throttling answers.
    pub(crate) send_rate: Mutex<AdaptiveRate>,
    /// `max_requests_per_second` of this MPP: a limit for the whole consumer group (0: none).
    pub(crate) group_limit: u32,
}

impl Mpp {
    /// `group_limit`: the MPP's `max_requests_per_second`, shared by the group's members in
    /// proportion to the partitions each owns (see [`Mpps::share`]); until the first share the
    /// member may send all of it.
    pub(crate) fn new(
        psp: &str,
        client: Arc<dyn Notifier>,
        circuit: Arc<Circuit>,
        group_limit: u32,
    ) -> Mpp {
        Mpp {
            psp: psp.to_owned(),
            client,
            circuit,
            // Without a limit it paces nothing until a throttling answer slows it down.
            send_rate: Mutex::new(AdaptiveRate::new(group_limit, RATE_RECOVERY_PER_SECOND)),
            group_limit,
        }
    }

    /// This member owns `fraction` (0..=1) of the input topic's partitions: its share of the
    /// group's limit. Returns the share in requests per second (0: no limit).
    fn share(&self, fraction: f64) -> f64 {
        if self.group_limit == 0 {
            return 0.0;
        }
        let share = f64::from(self.group_limit) * fraction.clamp(0.0, 1.0);
        if let Ok(mut rate) = self.send_rate.lock() {
            rate.set_ceiling(Some(share), now());
            crate::observe::send_rate(&self.psp, rate.allowed_per_second(), false);
        }
        share
    }
}

/// Sends one notification and classifies the answer: the signing Alipay+ client in the service,
/// a simulated Alipay+ in the whole-service simulation.
pub(crate) trait Notifier: Send + Sync + std::fmt::Debug {
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
pub(crate) struct Mpps {
    /// The top-level `[alipayplus]` identity: events without a `pspId`.
    default: Arc<Mpp>,
    /// `[alipayplus.clients.<pspId>]`, by pspId.
    named: HashMap<String, Arc<Mpp>>,
}

impl Mpps {
    pub(crate) fn new(default: Mpp, named: impl IntoIterator<Item = (String, Mpp)>) -> Mpps {
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
    pub(crate) fn route(&self, psp_id: Option<&str>) -> Result<&Arc<Mpp>, String> {
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
    pub(crate) fn all(&self) -> impl Iterator<Item = &Arc<Mpp>> {
        std::iter::once(&self.default).chain(self.named.values())
    }

    /// This member owns `owned` of the input topic's `partitions`: each MPP's send rate is
    /// held to that share of its `max_requests_per_second`, so the members together send at
    /// most the limit (Alipay+ counts a client's requests, not a member's). Called at every
    /// change of the assignment; `partitions` unknown (the topic's metadata could not be read),
    /// the share stays as it was. So it does while this member owns none: between an eager
    /// revoke and the assignment that follows, the calls of the revoke's drain keep their pace
    /// (nothing new is taken on without partitions). A share of nothing paced them at one a
    /// second, and the sends reserved at that pace held every call back for seconds after the
    /// next assignment (measured on Kafka 4.1: 7 s without a call after a member left).
    pub(crate) fn share(&self, owned: usize, partitions: usize) {
        if partitions == 0 || owned == 0 {
            return;
        }
        let fraction = owned as f64 / partitions as f64;
        for mpp in self.all() {
            let share = mpp.share(fraction);
            crate::observe::send_rate_share(&mpp.psp, share);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::CircuitBreakerSettings;
    use crate::observe::Health;
    use crate::pipeline::circuit::Circuits;

    /// Never called: these tests look at the send rate only.
    #[derive(Debug)]
    struct Unreachable;

    impl Notifier for Unreachable {
        fn notify<'a>(
            &'a self,
            _event: &'a RegistrationDecided,
        ) -> Pin<Box<dyn Future<Output = NotifyAttempt> + Send + 'a>> {
            unreachable!("no call in a send-rate test")
        }
    }

    fn mpps(group_limit: u32) -> Mpps {
        let circuits = Circuits::new(Arc::new(Health::default()));
        let circuit = Circuit::new(CircuitBreakerSettings::default(), 3, "default", circuits);
        Mpps::new(
            Mpp::new(
                "default",
                Arc::new(Unreachable),
                Arc::new(circuit),
                group_limit,
            ),
            [],
        )
    }

    fn allowed(mpps: &Mpps) -> Option<f64> {
        mpps.default.send_rate.lock().unwrap().allowed_per_second()
    }

    #[test]
    fn each_member_paces_to_its_partitions_share_of_the_group_limit() {
        let mpps = mpps(100);
        assert_eq!(
            allowed(&mpps),
            Some(100.0),
            "the whole limit before any assignment"
        );
        mpps.share(2, 6);
        assert!((allowed(&mpps).unwrap() - 100.0 / 3.0).abs() < 1e-9);
        mpps.share(3, 6);
        assert_eq!(
            allowed(&mpps),
            Some(50.0),
            "re-shared at the next assignment"
        );
        mpps.share(3, 0);
        assert_eq!(allowed(&mpps), Some(50.0), "partition count unknown: kept");
    }

    /// Between an eager revoke and the next assignment a member owns nothing: the calls of the
    /// revoke's drain keep the pace they had, instead of one a second, whose reserved sends held
    /// back every call for seconds after the next assignment.
    #[test]
    fn owning_no_partition_for_a_while_keeps_the_share() {
        let mpps = mpps(100);
        mpps.share(3, 6);
        mpps.share(0, 6);
        assert_eq!(allowed(&mpps), Some(50.0));
    }
}
