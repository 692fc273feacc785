//! The demo's sample mix: which kind of event sits at each position (mostly valid, some REJECTED
//! decisions, a few of each failure kind), the event itself, what it must end as, and the
//! simulator's rules that make the failing kinds fail.
//!
//! Pure: no I/O, no clock beyond the event's `occurredAt`.

use crate::event::{Decision, RegistrationDecided};
use crate::simulator::rules::{Fault, FaultRule};

use super::ledger::Expect;

/// The kind of sample event at position `index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sample {
    Approved,
    RejectedDecision,
    Poison,
    InvalidEmptyId,
    InvalidLongReason,
    UnknownThenSuccess,
    ProcessFail,
    InvalidClient,
}

pub(super) fn sample_kind(index: usize) -> Sample {
    match index % 100 {
        0 => Sample::Poison,
        1 => Sample::InvalidEmptyId,
        51 => Sample::InvalidLongReason,
        2 | 52 => Sample::UnknownThenSuccess,
        3 => Sample::ProcessFail,
        4 => Sample::InvalidClient,
        n if n % 10 == 5 => Sample::RejectedDecision,
        _ => Sample::Approved,
    }
}

/// Sample event `index`, or `None` for a poison record.
pub(super) fn sample_event(index: usize, merchants: usize) -> Option<RegistrationDecided> {
    let kind = sample_kind(index);
    let merchant = match kind {
        Sample::Poison => return None,
        Sample::InvalidEmptyId => String::new(),
        Sample::UnknownThenSuccess => format!("M-RETRY-{index}"),
        Sample::ProcessFail => format!("M-FAIL-{index}"),
        Sample::InvalidClient => format!("M-DENY-{index}"),
        _ => format!("M-{:06}", index % merchants),
    };
    let (decision, reason) = match kind {
        Sample::RejectedDecision => (Decision::Rejected, Some("incomplete KYC documents".into())),
        Sample::InvalidLongReason => (Decision::Rejected, Some("x".repeat(300))),
        _ => (Decision::Approved, None),
    };
    Some(RegistrationDecided {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at_ms: chrono::Utc::now().timestamp_millis(),
        reference_merchant_id: merchant,
        registration_request_id: format!("R-{index:09}"),
        decision,
        rejection_reason: reason,
        psp_id: None,
    })
}

pub(super) fn simulator_rules() -> Vec<FaultRule> {
    vec![
        FaultRule::for_prefix("M-RETRY-", Fault::result("U", "UNKNOWN_EXCEPTION")).times(1),
        FaultRule::for_prefix(
            "M-FAIL-",
            Fault::result_with_message("F", "PROCESS_FAIL", "do not retry"),
        ),
        FaultRule::for_prefix("M-DENY-", Fault::result("F", "INVALID_CLIENT")),
    ]
}

/// What the sample event at `index` must end as: an outcome when it can be decoded, a dead letter
/// when it is poison, invalid or refused.
pub(super) fn expectation(index: usize) -> Expect {
    let kind = sample_kind(index);
    Expect {
        outcome: kind != Sample::Poison,
        dead_letter: matches!(
            kind,
            Sample::Poison
                | Sample::InvalidEmptyId
                | Sample::InvalidLongReason
                | Sample::InvalidClient
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_mix_has_every_kind() {
        let kinds: Vec<Sample> = (0..100).map(sample_kind).collect();
        for kind in [
            Sample::Approved,
            Sample::RejectedDecision,
            Sample::Poison,
            Sample::InvalidEmptyId,
            Sample::InvalidLongReason,
            Sample::UnknownThenSuccess,
            Sample::ProcessFail,
            Sample::InvalidClient,
        ] {
            assert!(kinds.contains(&kind), "{kind:?}");
        }
        assert!(sample_event(0, 10).is_none());
        // Per hundred: 99 decodable events with an outcome, and 4 dead letters (poison, two
        // invalid, one refused), of which only the poison one has no outcome.
        let expected: Vec<Expect> = (0..100).map(expectation).collect();
        assert_eq!(expected.iter().filter(|e| e.outcome).count(), 99);
        assert_eq!(expected.iter().filter(|e| e.dead_letter).count(), 4);
        assert!(expected.iter().all(|e| e.outcome || e.dead_letter));
        assert_eq!(
            expectation(0),
            Expect {
                outcome: false,
                dead_letter: true
            }
        );
        let invalid = sample_event(1, 10).map(|e| e.validate().is_err());
        assert_eq!(invalid, Some(true));
    }
}
