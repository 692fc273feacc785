//! The pipeline end to end: the real pipeline against Kafka's protocol (mock cluster over TCP, or a
//! real broker with `REGNOTIFY_TEST_BOOTSTRAP`) and the simulator over HTTP.
//!
//! Split by concern: what each answer leads to ([`answers`]), order, restarts, rebalances and
//! exactly-once ([`delivery`]), every framing ([`framings`]), back-pressure ([`back_pressure`]),
//! commits refused or revoked mid-retry ([`commits`]), the spans in Jaeger ([`tracing`]) and one
//! send-rate limit for the group ([`send_rate`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::collections::HashMap;
use std::time::Duration;

use regnotify::event::RegistrationNotifyOutcome;
use regnotify::inspect::ReadRecord;

use common::{Harness, assert_repeats_follow_at_least_once};

mod answers;
mod back_pressure;
mod commits;
mod delivery;
mod framings;
mod send_rate;
mod tracing;

const WAIT: Duration = Duration::from_secs(60);
/// How long a check waits for something that must not happen (a paused partition consuming).
/// Only a missed failure, never a false one, can come of a slow machine here.
const QUIET: Duration = Duration::from_secs(2);

fn by_request(
    outcomes: &[RegistrationNotifyOutcome],
) -> HashMap<String, RegistrationNotifyOutcome> {
    outcomes
        .iter()
        .map(|o| (o.registration_request_id.clone(), o.clone()))
        .collect()
}

fn dead_letter_for<'a>(letters: &'a [ReadRecord], merchant: &str) -> &'a ReadRecord {
    letters
        .iter()
        .find(|r| r.key.as_deref() == Some(merchant.as_bytes()))
        .unwrap_or_else(|| panic!("no dead letter keyed {merchant}"))
}

/// [`assert_repeats_follow_at_least_once`] on a real broker. The mock cluster's coordinator
/// refuses the commit a revoked member makes in its revoke callback (`RebalanceInProgress`,
/// where Kafka accepts a commit of the current generation while the group prepares a
/// rebalance), so there the finished prefix is consumed again by the next owner.
fn assert_repeats_explained(harness: &Harness, outcomes: &[RegistrationNotifyOutcome]) {
    if harness.kafka.is_real() {
        assert_repeats_follow_at_least_once(outcomes);
    } else {
        common::note(
            "repeated outcomes not checked against the commit rule: the mock cluster refuses \
             commits during a rebalance (set REGNOTIFY_TEST_BOOTSTRAP, see scripts/kafka-local.sh)",
        );
    }
}
