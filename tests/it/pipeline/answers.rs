//! What each class of Alipay+ answer, and each record that cannot be an event, ends as.

use crate::common;

use std::collections::HashMap;

use regnotify::event::{Decision, NotifyOutcome};
use regnotify::inspect::fully_committed;
use regnotify::simulator::rules::{Fault, FaultRule};

use common::{Harness, assert_one_outcome_each, event};

use super::{WAIT, by_request, dead_letter_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_class_of_answer_ends_as_specified() {
    let rules = vec![
        FaultRule::for_prefix(
            "M-REJ-",
            Fault::result_with_message("F", "PROCESS_FAIL", "registration not found"),
        ),
        FaultRule::for_prefix("M-ABN-", Fault::result("F", "ABNORMAL_REGISTRATION_STATUS")),
        FaultRule::for_prefix("M-UNK-", Fault::result("U", "UNKNOWN_EXCEPTION")),
        FaultRule::for_prefix("M-U1-", Fault::result("U", "UNKNOWN_EXCEPTION")).times(1),
        FaultRule::for_prefix("M-500-", Fault::HttpStatus { status: 500 }),
        FaultRule::for_prefix("M-REF-", Fault::result("F", "INVALID_CLIENT")),
        FaultRule::for_prefix("M-404-", Fault::HttpStatus { status: 404 }),
        FaultRule::for_prefix("M-SIG-", Fault::BadSignature),
        FaultRule::for_prefix("M-GARB-", Fault::Garbled),
    ];
    let harness = Harness::new(3, rules).await;
    let mut rejected_decision = event("M-OK-2", "R-OK-2");
    rejected_decision.decision = Decision::Rejected;
    rejected_decision.rejection_reason = Some("documents expired".into());
    let events = vec![
        event("M-OK-1", "R-OK-1"),
        rejected_decision,
        event("M-REJ-1", "R-REJ-1"),
        event("M-ABN-1", "R-ABN-1"),
        event("M-UNK-1", "R-UNK-1"),
        event("M-U1-1", "R-U1-1"),
        event("M-500-1", "R-500-1"),
        event("M-REF-1", "R-REF-1"),
        event("M-404-1", "R-404-1"),
        event("M-SIG-1", "R-SIG-1"),
        event("M-GARB-1", "R-GARB-1"),
    ];
    harness.produce(&events).await;
    // SPEC's routing table as it stands, without the circuit breaker. With it, a refusal is held
    // until other answers explain it (tests/it/circuit.rs): whether one came in time depends on the
    // order the partitions were served in, so the refused event's attempt count would too.
    let mut settings = harness.settings();
    settings.alipayplus.circuit_breaker.enabled = false;
    let pipeline = harness.start_pipeline(settings).await;

    let progress = harness.wait_fully_committed(WAIT).await;
    assert!(fully_committed(&progress), "{progress:?}");
    let all = harness.outcomes().await;
    assert_one_outcome_each(&events, &all);
    let outcomes = by_request(&all);
    let expect = |request: &str, outcome: NotifyOutcome, code: Option<&str>, attempts: i32| {
        let o = &outcomes[request];
        assert_eq!(o.outcome, outcome, "{request}: {o:?}");
        assert_eq!(o.result_code.as_deref(), code, "{request}: {o:?}");
        assert_eq!(o.attempts, attempts, "{request}: {o:?}");
    };
    expect("R-OK-1", NotifyOutcome::Notified, Some("SUCCESS"), 1);
    expect("R-OK-2", NotifyOutcome::Notified, Some("SUCCESS"), 1);
    expect("R-REJ-1", NotifyOutcome::Rejected, Some("PROCESS_FAIL"), 1);
    expect(
        "R-ABN-1",
        NotifyOutcome::Rejected,
        Some("ABNORMAL_REGISTRATION_STATUS"),
        1,
    );
    expect(
        "R-UNK-1",
        NotifyOutcome::DeadLettered,
        Some("UNKNOWN_EXCEPTION"),
        3,
    );
    expect("R-U1-1", NotifyOutcome::Notified, Some("SUCCESS"), 2);
    expect("R-500-1", NotifyOutcome::DeadLettered, None, 3);
    expect(
        "R-REF-1",
        NotifyOutcome::DeadLettered,
        Some("INVALID_CLIENT"),
        1,
    );
    expect("R-404-1", NotifyOutcome::DeadLettered, None, 1);
    expect("R-SIG-1", NotifyOutcome::DeadLettered, Some("SUCCESS"), 3);
    expect("R-GARB-1", NotifyOutcome::DeadLettered, None, 3);

    // Field by field for one outcome of each shape.
    let ok = &outcomes["R-OK-2"];
    let source = events
        .iter()
        .find(|e| e.registration_request_id == "R-OK-2")
        .unwrap();
    assert_eq!(ok.event_id, source.event_id);
    assert_eq!(ok.reference_merchant_id, "M-OK-2");
    assert_eq!(ok.decision, Decision::Rejected);
    assert_eq!(ok.result_status.as_deref(), Some("S"));
    assert_eq!(ok.http_status, Some(200));
    assert_eq!(ok.error, None);
    assert_eq!(ok.source_topic, harness.input);
    assert!(
        ok.first_attempt_at_ms
            .is_some_and(|t| t <= ok.completed_at_ms)
    );
    let unknown = &outcomes["R-UNK-1"];
    assert_eq!(unknown.result_status.as_deref(), Some("U"));
    assert!(
        unknown
            .error
            .as_deref()
            .unwrap()
            .contains("retry budget exhausted")
    );
    // Alipay+'s resultMessage reaches the outcome as it was signed (the simulator's own where
    // the rule gives none).
    assert_eq!(
        outcomes["R-REJ-1"].result_message.as_deref(),
        Some("registration not found")
    );
    let refused = &outcomes["R-REF-1"];
    assert_eq!(
        refused.result_message.as_deref(),
        Some("simulated INVALID_CLIENT")
    );
    assert_eq!(refused.result_status.as_deref(), Some("F"));
    assert_eq!(refused.http_status, Some(200));
    assert!(refused.error.is_some());
    assert_eq!(outcomes["R-500-1"].http_status, Some(500));

    // Dead letters: the dead-lettered events above, each with its reason, and no other.
    let letters = harness.dead_letters().await;
    assert_eq!(letters.len(), 6, "{letters:?}");
    let reasons: HashMap<&str, &str> = [
        ("M-UNK-1", "RETRIES_EXHAUSTED"),
        ("M-500-1", "RETRIES_EXHAUSTED"),
        ("M-SIG-1", "RETRIES_EXHAUSTED"),
        ("M-GARB-1", "RETRIES_EXHAUSTED"),
        ("M-REF-1", "REQUEST_REFUSED"),
        ("M-404-1", "REQUEST_REFUSED"),
    ]
    .into();
    for (merchant, reason) in &reasons {
        let letter = dead_letter_for(&letters, merchant);
        assert_eq!(letter.header("dlq.reason"), Some(*reason), "{merchant}");
        let outcome = outcomes
            .values()
            .find(|o| o.reference_merchant_id == *merchant)
            .unwrap();
        assert_eq!(
            letter.header("dlq.source.topic"),
            Some(harness.input.as_str())
        );
        assert_eq!(
            letter.header("dlq.source.partition"),
            Some(outcome.source_partition.to_string().as_str())
        );
        assert_eq!(
            letter.header("dlq.source.offset"),
            Some(outcome.source_offset.to_string().as_str())
        );
        assert_eq!(
            letter.header("dlq.consumer.group"),
            Some(harness.group.as_str())
        );
        assert_eq!(
            letter.header("dlq.attempts"),
            Some(outcome.attempts.to_string().as_str())
        );
        assert!(letter.header("dlq.source.timestamp").is_some());
        assert!(
            letter
                .header("dlq.error")
                .is_some_and(|e| !e.is_empty() && e.len() <= 1024)
        );
        let failed_at = letter.header("dlq.failed.at").unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(failed_at).is_ok(),
            "{failed_at}"
        );
    }
    let refused = dead_letter_for(&letters, "M-REF-1");
    assert_eq!(refused.header("dlq.result.code"), Some("INVALID_CLIENT"));
    assert_eq!(refused.header("dlq.http.status"), Some("200"));
    let http_500 = dead_letter_for(&letters, "M-500-1");
    assert_eq!(http_500.header("dlq.http.status"), Some("500"));
    assert_eq!(
        http_500.header("dlq.result.code"),
        None,
        "absent facts are absent headers"
    );

    // The simulator saw exactly the calls the outcomes report.
    let total_attempts: i32 = outcomes.values().map(|o| o.attempts).sum();
    assert_eq!(harness.simulator.stats().total_calls, total_attempts as u64);
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_then_dead_lettered() {
    let rules = vec![FaultRule::for_prefix(
        "M-THR-",
        Fault::result("F", "REQUEST_TRAFFIC_EXCEED_LIMIT"),
    )];
    let harness = Harness::new(1, rules).await;
    let events = [event("M-THR-1", "R-THR-1"), event("M-OK-1", "R-OK-1")];
    harness.produce(&events).await;
    let pipeline = harness.start_pipeline(harness.settings()).await;
    assert!(fully_committed(&harness.wait_fully_committed(WAIT).await));
    let all = harness.outcomes().await;
    assert_one_outcome_each(&events, &all);
    let outcomes = by_request(&all);
    let throttled = &outcomes["R-THR-1"];
    assert_eq!(throttled.outcome, NotifyOutcome::DeadLettered);
    assert_eq!(throttled.attempts, 3);
    assert_eq!(
        throttled.result_code.as_deref(),
        Some("REQUEST_TRAFFIC_EXCEED_LIMIT")
    );
    assert_eq!(outcomes["R-OK-1"].outcome, NotifyOutcome::Notified);
    let letters = harness.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].header("dlq.reason"), Some("RETRIES_EXHAUSTED"));
    assert_eq!(
        letters[0].header("dlq.result.code"),
        Some("REQUEST_TRAFFIC_EXCEED_LIMIT")
    );
    pipeline.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_and_invalid_records_are_dead_lettered_without_http_calls() {
    let harness = Harness::new(2, Vec::new()).await;
    let poison = b"\x00\x00\x00\x00\x07not avro at all";
    harness
        .produce_raw(
            b"M-POISON",
            poison,
            &[("trace-id", b"abc-123"), ("origin", b"test")],
        )
        .await;
    harness
        .produce_raw(b"M-POISON-2", &[0xC3, 0x01, 0x02], &[])
        .await;
    let mut too_long = event("M-LONG", "R-LONG");
    too_long.decision = Decision::Rejected;
    too_long.rejection_reason = Some("r".repeat(257));
    let events = [
        event("", "R-EMPTY"),
        event(&"M".repeat(65), "R-65"),
        too_long,
        event("M-VALID", "R-VALID"),
    ];
    harness.produce(&events).await;
    let pipeline = harness.start_pipeline(harness.settings()).await;

    assert!(fully_committed(&harness.wait_fully_committed(WAIT).await));
    let all = harness.outcomes().await;
    // Poison records get no outcome.
    assert_one_outcome_each(&events, &all);
    let outcomes = by_request(&all);
    for request in ["R-EMPTY", "R-65", "R-LONG"] {
        let o = &outcomes[request];
        assert_eq!(o.outcome, NotifyOutcome::DeadLettered, "{request}");
        assert_eq!(o.attempts, 0, "{request}");
        assert_eq!(o.http_status, None);
        assert!(o.first_attempt_at_ms.is_none());
    }
    assert_eq!(outcomes["R-VALID"].outcome, NotifyOutcome::Notified);
    let letters = harness.dead_letters().await;
    assert_eq!(letters.len(), 5, "{letters:?}");
    let poison_letter = dead_letter_for(&letters, "M-POISON");
    assert_eq!(poison_letter.header("dlq.reason"), Some("DECODE_ERROR"));
    assert_eq!(
        poison_letter.value.as_deref(),
        Some(&poison[..]),
        "value kept byte for byte"
    );
    assert_eq!(
        poison_letter.header("trace-id"),
        Some("abc-123"),
        "input headers kept"
    );
    assert_eq!(poison_letter.header("origin"), Some("test"));
    assert!(
        poison_letter
            .header("dlq.error")
            .unwrap()
            .contains("schema")
    );
    assert_eq!(poison_letter.header("dlq.attempts"), None);
    let truncated = dead_letter_for(&letters, "M-POISON-2");
    assert_eq!(truncated.header("dlq.reason"), Some("DECODE_ERROR"));
    let invalid = letters
        .iter()
        .filter(|l| l.header("dlq.reason") == Some("INVALID_EVENT"))
        .count();
    assert_eq!(invalid, 3);
    let stats = harness.simulator.stats();
    assert_eq!(stats.total_calls, 1, "only the valid event reached Alipay+");
    pipeline.stop().await;
}
