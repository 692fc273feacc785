//! The operator tools against Kafka's protocol (mock cluster over TCP, or a real broker with
//! `REGNOTIFY_TEST_BOOTSTRAP`): `produce` as a library call and as the real binary, and the
//! produce → run → replay-dlq round trip with the real pipeline and the simulator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::io::Write;
use std::time::Duration;

use regnotify::codec::{EventDecoder, framing};
use regnotify::config::InputEncoding;
use regnotify::event::DeadLetterReason;
use regnotify::event::{Decision, NotifyOutcome};
use regnotify::inspect::{self, ReadRecord};
use regnotify::tools::{
    ProduceOptions, RefusedLine, ReplayOptions, ReplayedRecord, produce_jsonl, replay_dead_letters,
};

use common::{CLIENT_ID, Harness};

const WAIT: Duration = Duration::from_secs(60);

fn jsonl(lines: &[&str]) -> std::io::Cursor<Vec<u8>> {
    std::io::Cursor::new(lines.join("\n").into_bytes())
}

async fn replay(
    harness: &Harness,
    options: ReplayOptions,
) -> (regnotify::tools::ReplayReport, Vec<ReplayedRecord>) {
    let mut sent = Vec::new();
    let report = replay_dead_letters(&harness.settings(), &options, |record| {
        sent.push(record.clone());
    })
    .await
    .expect("replay runs");
    (report, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_sends_good_lines_and_names_the_bad_ones() {
    let harness = Harness::new(2, vec![]).await;
    let event_id = uuid::Uuid::new_v4().to_string();
    let input = jsonl(&[
        &format!(
            r#"{{"eventId":"{event_id}","occurredAt":1764000000123,"referenceMerchantId":"M-1","registrationRequestId":"R-1","decision":"APPROVED"}}"#
        ),
        "",
        r#"{"referenceMerchantId":"M-2","registrationRequestId":"R-2","#,
        r#"{"referenceMerchantId":"M-3","registrationRequestId":"R-3","decision":"MAYBE"}"#,
        r#"{"referenceMerchantId":"M-4","registrationRequestId":"R-4","decision":"REJECTED","rejectionReason":"documents expired","pspId":"PSP-A"}"#,
        // Breaks a field rule but encodes: sent, for the service to dead-letter as INVALID_EVENT.
        r#"{"referenceMerchantId":"","registrationRequestId":"R-5","decision":"APPROVED"}"#,
        r#"{"eventId":"not-a-uuid","referenceMerchantId":"M-6","registrationRequestId":"R-6","decision":"APPROVED"}"#,
        "   ",
    ]);
    let options = ProduceOptions {
        headers: vec![("test-run".into(), "produce".into())],
    };
    let report = produce_jsonl(&harness.settings(), input, &options)
        .await
        .expect("produce runs");

    assert_eq!((report.sent, report.refused_count), (3, 3));
    let refused: Vec<usize> = report
        .refused
        .iter()
        .map(|r: &RefusedLine| r.line)
        .collect();
    assert_eq!(refused, vec![3, 4, 7], "{:?}", report.refused);
    assert!(
        report.refused[1].error.contains("MAYBE"),
        "{:?}",
        report.refused
    );
    assert!(
        report.refused[2].error.contains("eventId"),
        "{:?}",
        report.refused
    );

    // `produce` waited for every ack: the whole topic is what it sent.
    let records = harness.read_whole(&harness.input).await;
    assert_eq!(records.len(), 3, "{records:?}");
    // With a schema registry configured, `produce` writes Confluent framing.
    let decoder = EventDecoder::new(InputEncoding::Auto, Some(harness.registry.client()));
    let mut events = Vec::new();
    for record in &records {
        let value = record.value.as_deref().unwrap();
        assert_eq!(value[0], framing::CONFLUENT_MAGIC);
        let event = decoder.decode(value).await.unwrap();
        assert_eq!(
            record.key.as_deref(),
            Some(event.reference_merchant_id.as_bytes())
        );
        assert_eq!(record.header("test-run"), Some("produce"));
        events.push(event);
    }
    events.sort_by(|a, b| a.registration_request_id.cmp(&b.registration_request_id));
    assert_eq!(events[0].event_id, event_id);
    assert_eq!(events[0].occurred_at_ms, 1_764_000_000_123);
    assert_eq!(events[0].decision, Decision::Approved);
    assert_eq!(events[1].registration_request_id, "R-4");
    assert_eq!(events[1].decision, Decision::Rejected);
    assert_eq!(
        events[1].rejection_reason.as_deref(),
        Some("documents expired")
    );
    assert_eq!(events[1].psp_id.as_deref(), Some("PSP-A"));
    assert!(uuid::Uuid::parse_str(&events[1].event_id).is_ok());
    assert_eq!(events[2].reference_merchant_id, "");
}

/// The acceptance round trip: a refused request is dead-lettered, the setup is fixed, the dead
/// letter is replayed into the still-running pipeline and notified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_run_replay_round_trip() {
    let harness = Harness::new(2, vec![]).await;
    harness.simulator.refuse_client(CLIENT_ID);
    let options = ProduceOptions {
        headers: vec![("trace-id".into(), "trip-1".into())],
    };
    let report = produce_jsonl(
        &harness.settings(),
        jsonl(&[
            r#"{"referenceMerchantId":"M-TRIP","registrationRequestId":"R-TRIP","decision":"APPROVED"}"#,
        ]),
        &options,
    )
    .await
    .expect("produce runs");
    assert_eq!((report.sent, report.refused_count), (1, 0));

    // A lone refused event is dead-lettered at once only without the circuit breaker (with it,
    // a refusal no other answer explains is held as a refusal of us).
    let mut settings = harness.settings();
    settings.alipayplus.circuit_breaker.enabled = false;
    let pipeline = harness.start_pipeline(settings).await;
    let first = harness.wait_outcomes(1, WAIT).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].outcome, NotifyOutcome::DeadLettered);
    let letters = harness.wait_dead_letters(1, WAIT).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        letters[0].header("dlq.reason"),
        Some(DeadLetterReason::RequestRefused.as_str())
    );
    assert_eq!(letters[0].header("trace-id"), Some("trip-1"));

    harness.simulator.accept_client(CLIENT_ID);

    // A dry run reports the dead letter but sends and commits nothing.
    let (dry, would_send) = replay(
        &harness,
        ReplayOptions {
            reason: Some(DeadLetterReason::RequestRefused),
            dry_run: true,
            ..ReplayOptions::default()
        },
    )
    .await;
    assert_eq!((dry.replayed, dry.scanned, dry.dry_run), (1, 1, true));
    assert_eq!(would_send[0].key.as_deref(), Some(b"M-TRIP".as_slice()));
    assert_eq!(
        would_send[0].source_topic.as_deref(),
        Some(harness.input.as_str())
    );
    assert_eq!(would_send[0].source_offset, Some(0));
    assert_eq!(harness.read_whole(&harness.input).await.len(), 1);

    // Another reason's filter skips it, and does not take it away from the right filter.
    let (other, none) = replay(
        &harness,
        ReplayOptions {
            reason: Some(DeadLetterReason::RetriesExhausted),
            ..ReplayOptions::default()
        },
    )
    .await;
    assert_eq!((other.replayed, other.skipped), (0, 1));
    assert!(none.is_empty());

    let (replayed, sent) = replay(
        &harness,
        ReplayOptions {
            reason: Some(DeadLetterReason::RequestRefused),
            ..ReplayOptions::default()
        },
    )
    .await;
    assert_eq!((replayed.replayed, replayed.scanned), (1, 1));
    assert_eq!(
        replayed.group,
        format!("{}-replay-dlq-request-refused", harness.group)
    );
    assert_eq!(sent, would_send);

    // The replayed record: same key and value, the original header, no diagnostics.
    let inputs = harness.read_whole(&harness.input).await;
    assert_eq!(inputs.len(), 2, "{inputs:?}");
    let is_original = |r: &ReadRecord| {
        Some(r.partition) == sent[0].source_partition && Some(r.offset) == sent[0].source_offset
    };
    let original = inputs
        .iter()
        .find(|r| is_original(r))
        .expect("original input");
    let copy = inputs
        .iter()
        .find(|r| !is_original(r))
        .expect("replayed input");
    assert_eq!(copy.key, original.key);
    assert_eq!(copy.value, original.value);
    assert_eq!(copy.header("trace-id"), Some("trip-1"));
    assert!(
        copy.headers
            .iter()
            .all(|(name, _)| !name.starts_with("dlq.")),
        "{:?}",
        copy.headers
    );

    // The still-running pipeline notifies the replayed event.
    let outcomes = harness.wait_outcomes(2, WAIT).await;
    let trip: Vec<NotifyOutcome> = outcomes
        .iter()
        .filter(|o| o.registration_request_id == "R-TRIP")
        .map(|o| o.outcome)
        .collect();
    assert_eq!(
        trip,
        vec![NotifyOutcome::DeadLettered, NotifyOutcome::Notified]
    );

    // The replay group committed its progress: a second run replays nothing.
    let (again, nothing) = replay(
        &harness,
        ReplayOptions {
            reason: Some(DeadLetterReason::RequestRefused),
            ..ReplayOptions::default()
        },
    )
    .await;
    assert_eq!((again.replayed, again.scanned), (0, 0));
    assert!(nothing.is_empty());
    assert_eq!(harness.read_whole(&harness.input).await.len(), 2);

    // Every input committed: the whole output topics are final, with nothing extra.
    let progress = harness.wait_fully_committed(WAIT).await;
    assert!(inspect::fully_committed(&progress), "{progress:?}");
    pipeline.stop().await;
    assert_eq!(harness.outcomes().await.len(), 2);
    assert_eq!(harness.dead_letters().await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_produces_and_reports_refused_lines() {
    let harness = Harness::new(1, vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("regnotify.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap_servers = \"{}\"\ngroup_id = \"{}\"\ninput_topic = \"{}\"\n\
             result_topic = \"{}\"\ndlq_topic = \"{}\"\n",
            harness.kafka.bootstrap, harness.group, harness.input, harness.result, harness.dlq
        ),
    )
    .unwrap();
    let input = dir.path().join("events.jsonl");
    let mut file = std::fs::File::create(&input).unwrap();
    writeln!(
        file,
        r#"{{"referenceMerchantId":"M-1","registrationRequestId":"R-1","decision":"APPROVED"}}"#
    )
    .unwrap();
    writeln!(file, "not json").unwrap();
    writeln!(
        file,
        r#"{{"referenceMerchantId":"M-2","registrationRequestId":"R-2","decision":"REJECTED"}}"#
    )
    .unwrap();
    drop(file);

    let run = |args: Vec<std::ffi::OsString>| async move {
        tokio::task::spawn_blocking(move || {
            common::regnotify_binary()
                .args(args)
                .output()
                .expect("run the binary")
        })
        .await
        .unwrap()
    };
    let output = run(vec![
        "produce".into(),
        "--config".into(),
        config.clone().into(),
        "--input".into(),
        input.into(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(stdout.contains("sent 2, refused 1"), "{stdout}");
    assert!(stderr.contains("line 2: refused"), "{stderr}");
    assert_eq!(harness.read_whole(&harness.input).await.len(), 2);

    // An unknown reason is a usage error that names the valid ones.
    let output = run(vec![
        "replay-dlq".into(),
        "--config".into(),
        config.into(),
        "--reason".into(),
        "REFUSED".into(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("REQUEST_REFUSED"), "{stderr}");
}
