//! Integration tests of the Avro codec (SPEC section 3): every framing round-trips, schema
//! evolution through a fake Schema Registry, registry failures, hostile bytes, and a cross-check
//! against fastavro (an implementation we did not write).
//!
//! Over 600 lines: one concern, the codec against the specification's framings, a test per
//! framing and failure (20 tests).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use apache_avro::Schema;
use apache_avro::types::Value;
use axum::http::StatusCode;
use proptest::prelude::*;
use regnotify::codec::{
    self, DecodeError, EventDecoder, EventEncoder, OutcomeEncoder, SchemaRegistryClient, schemas,
};
use regnotify::config::{InputEncoding, OutputEncoding};
use regnotify::event::{Decision, NotifyOutcome, RegistrationDecided, RegistrationNotifyOutcome};
use serde_json::json;

fn event() -> RegistrationDecided {
    RegistrationDecided {
        event_id: "0b5f7c1e-6c8a-4a57-9d62-4a1d1f0e9a11".into(),
        occurred_at_ms: 1_764_000_000_123,
        reference_merchant_id: "M-0001".into(),
        registration_request_id: "REQ-0001".into(),
        decision: Decision::Rejected,
        rejection_reason: Some("licence expired".into()),
        psp_id: Some("psp-hk".into()),
    }
}

fn outcome() -> RegistrationNotifyOutcome {
    RegistrationNotifyOutcome {
        event_id: "0b5f7c1e-6c8a-4a57-9d62-4a1d1f0e9a11".into(),
        reference_merchant_id: "M-0001".into(),
        registration_request_id: "REQ-0001".into(),
        decision: Decision::Approved,
        outcome: NotifyOutcome::Notified,
        result_status: Some("S".into()),
        result_code: Some("SUCCESS".into()),
        result_message: Some("success".into()),
        http_status: Some(200),
        attempts: 2,
        first_attempt_at_ms: Some(1_764_000_000_500),
        completed_at_ms: 1_764_000_001_000,
        source_topic: "merchant.registration.decided".into(),
        source_partition: 3,
        source_offset: 1 << 40,
        error: None,
    }
}

fn dead_lettered_outcome() -> RegistrationNotifyOutcome {
    RegistrationNotifyOutcome {
        decision: Decision::Rejected,
        outcome: NotifyOutcome::DeadLettered,
        result_status: None,
        result_code: None,
        result_message: None,
        http_status: None,
        attempts: 0,
        first_attempt_at_ms: None,
        error: Some("referenceMerchantId is empty — ünïcode".into()),
        ..outcome()
    }
}

// ---------------------------------------------------------------------------------------------
// The Schema Registry stand-in the pipeline tests use too (without their Kafka harness).

use crate::common::registry::RegistryStub;

/// A URL on which nothing listens.
async fn closed_port_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------------------------
// Round trips.

#[tokio::test]
async fn input_events_round_trip_in_every_framing() {
    let registry = RegistryStub::start().await;
    let client = registry.client();
    let e = event();

    let raw = codec::encode_event_raw(&e).unwrap();
    let decoded = EventDecoder::new(InputEncoding::Raw, None)
        .decode(&raw)
        .await;
    assert_eq!(decoded, Ok(e.clone()));

    let single = codec::encode_event_single_object(&e).unwrap();
    assert_eq!(&single[..2], &[0xC3, 0x01]);
    for mode in [InputEncoding::Auto, InputEncoding::SingleObject] {
        assert_eq!(
            EventDecoder::new(mode, None).decode(&single).await,
            Ok(e.clone())
        );
    }

    let encoder = EventEncoder::new(InputEncoding::Auto, Some(Arc::clone(&client)), "in").unwrap();
    let confluent = encoder.encode(&e).await.unwrap();
    assert_eq!(confluent[0], 0x00);
    for mode in [InputEncoding::Auto, InputEncoding::Confluent] {
        let decoder = EventDecoder::new(mode, Some(Arc::clone(&client)));
        assert_eq!(decoder.decode(&confluent).await, Ok(e.clone()));
    }
    let registered = registry.registered();
    assert_eq!(
        registered.len(),
        1,
        "the schema id is cached after one registration"
    );
    assert_eq!(registered[0].0, "in-value");

    let without_registry = EventEncoder::new(InputEncoding::Auto, None, "in").unwrap();
    assert_eq!(without_registry.encode(&e).await.unwrap(), single);
    assert_eq!(
        EventEncoder::new(InputEncoding::Confluent, None, "in").err(),
        Some(codec::EncodeError::RegistryNotConfigured)
    );
}

#[tokio::test]
async fn outcomes_round_trip_in_every_framing() {
    let registry = RegistryStub::start().await;
    for o in [outcome(), dead_lettered_outcome()] {
        let single = OutcomeEncoder::new(OutputEncoding::Auto, None, "out")
            .encode(&o)
            .await
            .unwrap();
        assert_eq!(&single[..2], &[0xC3, 0x01]);
        assert_eq!(codec::decode_outcome(&single), Ok(o.clone()));

        let encoder = OutcomeEncoder::new(OutputEncoding::Auto, Some(registry.client()), "out");
        let confluent = encoder.encode(&o).await.unwrap();
        assert_eq!(confluent[0], 0x00);
        assert_eq!(codec::decode_outcome(&confluent), Ok(o.clone()));

        let json_bytes = OutcomeEncoder::new(OutputEncoding::Json, Some(registry.client()), "out")
            .encode(&o)
            .await
            .unwrap();
        assert_eq!(codec::decode_outcome(&json_bytes), Ok(o.clone()));
    }
    let registered = registry.registered();
    let (subject, schema, content_type) = &registered[0];
    assert_eq!(subject, "out-value");
    assert_eq!(schema, schemas::OUTCOME_SCHEMA.json);
    assert_eq!(
        content_type.as_deref(),
        Some("application/vnd.schemaregistry.v1+json")
    );
}

#[tokio::test]
async fn json_outcome_uses_the_avro_field_names() {
    let bytes = OutcomeEncoder::new(OutputEncoding::Json, None, "out")
        .encode(&dead_lettered_outcome())
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        json,
        json!({
            "eventId": "0b5f7c1e-6c8a-4a57-9d62-4a1d1f0e9a11",
            "referenceMerchantId": "M-0001",
            "registrationRequestId": "REQ-0001",
            "decision": "REJECTED",
            "outcome": "DEAD_LETTERED",
            "resultStatus": null,
            "resultCode": null,
            "resultMessage": null,
            "httpStatus": null,
            "attempts": 0,
            "firstAttemptAt": null,
            "completedAt": 1_764_000_001_000_i64,
            "sourceTopic": "merchant.registration.decided",
            "sourcePartition": 3,
            "sourceOffset": 1_i64 << 40,
            "error": "referenceMerchantId is empty — ünïcode"
        })
    );
}

#[test]
fn produce_json_lines_become_events() {
    let e = codec::event_from_json(
        r#"{"eventId":"0b5f7c1e-6c8a-4a57-9d62-4a1d1f0e9a11","occurredAt":1764000000123,
            "referenceMerchantId":"M-0001","registrationRequestId":"REQ-0001",
            "decision":"REJECTED","rejectionReason":"licence expired","pspId":"psp-hk"}"#,
    );
    assert_eq!(e, Ok(event()));
    let defaulted = codec::event_from_json(
        r#"{"referenceMerchantId":"M","registrationRequestId":"R","decision":"APPROVED"}"#,
    )
    .unwrap();
    assert!(uuid::Uuid::parse_str(&defaulted.event_id).is_ok());
    assert!(codec::event_from_json(r#"{"referenceMerchantId":"M"}"#).is_err());
    assert!(
        codec::event_from_json(
            r#"{"referenceMerchantId":"M","registrationRequestId":"R","decision":"MAYBE"}"#
        )
        .is_err()
    );
}

// ---------------------------------------------------------------------------------------------
// Schema evolution.

/// The current schema with a field inserted after `decision` (a newer producer).
fn schema_with_extra_field() -> String {
    let mut schema: serde_json::Value =
        serde_json::from_str(schemas::INPUT_SCHEMA_VERSIONS[0].json).unwrap();
    let fields = schema["fields"].as_array_mut().unwrap();
    fields.insert(
        5,
        json!({"name": "channel", "type": "string", "default": "web"}),
    );
    schema.to_string()
}

/// The current schema without `pspId` (an older producer).
fn schema_without_psp_id() -> String {
    let mut schema: serde_json::Value =
        serde_json::from_str(schemas::INPUT_SCHEMA_VERSIONS[0].json).unwrap();
    let fields = schema["fields"].as_array_mut().unwrap();
    fields.retain(|f| f["name"] != "pspId");
    schema.to_string()
}

/// `event()` written with `writer` (fields not in `event()` get fixed values).
fn body_written_with(writer: &Schema) -> Vec<u8> {
    let e = event();
    let Schema::Record(record) = writer else {
        panic!("not a record")
    };
    let all: HashMap<&str, Value> = HashMap::from([
        (
            "eventId",
            Value::Uuid(uuid::Uuid::parse_str(&e.event_id).unwrap()),
        ),
        ("occurredAt", Value::TimestampMillis(e.occurred_at_ms)),
        (
            "referenceMerchantId",
            Value::String(e.reference_merchant_id.clone()),
        ),
        (
            "registrationRequestId",
            Value::String(e.registration_request_id.clone()),
        ),
        ("decision", Value::Enum(1, "REJECTED".into())),
        ("channel", Value::String("app".into())),
        (
            "rejectionReason",
            Value::Union(1, Box::new(Value::String("licence expired".into()))),
        ),
        (
            "pspId",
            Value::Union(1, Box::new(Value::String("psp-hk".into()))),
        ),
    ]);
    let fields = record
        .fields
        .iter()
        .map(|f| (f.name.clone(), all[f.name.as_str()].clone()))
        .collect();
    apache_avro::to_avro_datum(writer, Value::Record(fields)).unwrap()
}

#[tokio::test]
async fn evolved_writer_schemas_resolve_via_confluent_and_are_cached() {
    let registry = RegistryStub::start().await;
    registry.add(7, &schema_with_extra_field());
    registry.add(8, &schema_without_psp_id());
    let decoder = EventDecoder::new(InputEncoding::Auto, Some(registry.client()));

    let newer = Schema::parse_str(&schema_with_extra_field()).unwrap();
    let older = Schema::parse_str(&schema_without_psp_id()).unwrap();
    let newer_record = codec::framing::frame_confluent(7, &body_written_with(&newer));
    let older_record = codec::framing::frame_confluent(8, &body_written_with(&older));

    for _ in 0..3 {
        assert_eq!(decoder.decode(&newer_record).await, Ok(event()));
        let expected = RegistrationDecided {
            psp_id: None,
            ..event()
        };
        assert_eq!(decoder.decode(&older_record).await, Ok(expected));
    }
    assert_eq!(registry.fetches(), 2, "one registry call per schema id");
}

#[tokio::test]
async fn single_object_needs_a_known_writer_schema() {
    let newer = Schema::parse_str(&schema_with_extra_field()).unwrap();
    let fingerprint = schemas::fingerprint(&newer);
    let record = codec::framing::frame_single_object(fingerprint, &body_written_with(&newer));

    let offline = EventDecoder::new(InputEncoding::Auto, None);
    let error = offline.decode(&record).await.unwrap_err();
    assert_eq!(error, DecodeError::UnknownFingerprint(fingerprint));
    assert!(!error.is_transient());
    assert!(
        error
            .to_string()
            .starts_with("no kept schema has fingerprint 0x")
    );

    // Once the registry cache holds that writer schema, its fingerprint is known too.
    let registry = RegistryStub::start().await;
    registry.add(7, &schema_with_extra_field());
    let client = registry.client();
    client.schema_by_id(7).await.unwrap();
    let decoder = EventDecoder::new(InputEncoding::SingleObject, Some(client));
    assert_eq!(decoder.decode(&record).await, Ok(event()));
}

#[tokio::test]
async fn an_incompatible_writer_schema_is_a_schema_mismatch() {
    let registry = RegistryStub::start().await;
    let incompatible = r#"{"type":"record","name":"Other","fields":[{"name":"x","type":"int"}]}"#;
    registry.add(9, incompatible);
    let writer = Schema::parse_str(incompatible).unwrap();
    let body =
        apache_avro::to_avro_datum(&writer, Value::Record(vec![("x".into(), Value::Int(1))]))
            .unwrap();
    let decoder = EventDecoder::new(InputEncoding::Confluent, Some(registry.client()));
    let error = decoder
        .decode(&codec::framing::frame_confluent(9, &body))
        .await
        .unwrap_err();
    assert!(matches!(error, DecodeError::SchemaMismatch(_)), "{error:?}");
}

// ---------------------------------------------------------------------------------------------
// Registry failures: permanent only when the registry says the id does not exist.

#[tokio::test]
async fn unknown_schema_id_is_permanent() {
    let registry = RegistryStub::start().await;
    let decoder = EventDecoder::new(InputEncoding::Auto, Some(registry.client()));
    let record = codec::encode_event_confluent(41, &event()).unwrap();
    let error = decoder.decode(&record).await.unwrap_err();
    assert_eq!(error, DecodeError::UnknownSchemaId(41));
    assert!(!error.is_transient());
    assert_eq!(
        error.to_string(),
        "schema id 41 is unknown to the schema registry"
    );
}

#[tokio::test]
async fn registry_down_is_transient() {
    let client = Arc::new(
        SchemaRegistryClient::new(&closed_port_url().await, None, Duration::from_secs(2)).unwrap(),
    );
    let decoder = EventDecoder::new(InputEncoding::Auto, Some(Arc::clone(&client)));
    let record = codec::encode_event_confluent(1, &event()).unwrap();
    let error = decoder.decode(&record).await.unwrap_err();
    assert!(
        matches!(error, DecodeError::RegistryUnavailable(_)),
        "{error:?}"
    );
    assert!(error.is_transient());

    let encode_error = OutcomeEncoder::new(OutputEncoding::Auto, Some(client), "out")
        .encode(&outcome())
        .await
        .unwrap_err();
    assert!(encode_error.is_transient(), "{encode_error:?}");
}

#[tokio::test]
async fn registry_errors_other_than_schema_not_found_are_transient() {
    let registry = RegistryStub::start().await;
    let decoder = EventDecoder::new(InputEncoding::Auto, Some(registry.client()));
    let record = codec::encode_event_confluent(1, &event()).unwrap();
    for status in [
        StatusCode::INTERNAL_SERVER_ERROR,
        StatusCode::UNAUTHORIZED,
        // A 404 without Confluent's 40403 is a wrong URL or a proxy, not an unknown id.
        StatusCode::NOT_FOUND,
    ] {
        registry.fail_with(Some(status));
        let error = decoder.decode(&record).await.unwrap_err();
        assert!(error.is_transient(), "{status}: {error:?}");
    }
}

#[tokio::test]
async fn a_registry_outage_is_transient_and_ends_when_the_registry_is_back() {
    let registry = RegistryStub::start().await;
    registry.add(5, schemas::INPUT_SCHEMA_VERSIONS[0].json);
    let decoder = EventDecoder::new(InputEncoding::Auto, Some(registry.client()));
    let record = codec::encode_event_confluent(5, &event()).unwrap();
    registry.go_down().await;
    let error = decoder.decode(&record).await.unwrap_err();
    assert!(
        matches!(error, DecodeError::RegistryUnavailable(_)),
        "{error:?}"
    );
    assert_eq!(registry.fetches(), 0, "nothing answered during the outage");
    registry.come_back().await;
    assert_eq!(decoder.decode(&record).await, Ok(event()));
    assert_eq!(registry.fetches(), 1);
}

#[tokio::test]
async fn confluent_record_without_a_registry_is_undecodable() {
    let decoder = EventDecoder::new(InputEncoding::Auto, None);
    let record = codec::encode_event_confluent(3, &event()).unwrap();
    assert_eq!(
        decoder.decode(&record).await,
        Err(DecodeError::RegistryNotConfigured(3))
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile bytes.

#[tokio::test]
async fn trailing_bytes_are_rejected() {
    let mut record = codec::encode_event_single_object(&event()).unwrap();
    record.extend_from_slice(b"xx");
    let decoded = EventDecoder::new(InputEncoding::Auto, None)
        .decode(&record)
        .await;
    assert_eq!(decoded, Err(DecodeError::TrailingBytes(2)));
}

#[tokio::test]
async fn a_huge_length_prefix_fails_without_allocating_it() {
    // eventId's length prefix says 2^40 bytes (zig-zag varint of 2^41).
    let mut body = Vec::new();
    let mut n: u64 = 1 << 41;
    while n >= 0x80 {
        body.push(u8::try_from(n & 0x7F).unwrap() | 0x80);
        n >>= 7;
    }
    body.push(u8::try_from(n).unwrap());
    body.extend_from_slice(b"0b5f7c1e");
    let decoder = EventDecoder::new(InputEncoding::Raw, None);
    let error = decoder.decode(&body).await.unwrap_err();
    assert!(matches!(error, DecodeError::Malformed(_)), "{error:?}");
}

#[tokio::test]
async fn unknown_magic_is_refused_in_auto_mode() {
    let decoder = EventDecoder::new(InputEncoding::Auto, None);
    let raw = codec::encode_event_raw(&event()).unwrap();
    assert!(matches!(
        decoder.decode(&raw).await,
        Err(DecodeError::UnknownMagic { .. })
    ));
    assert!(matches!(
        decoder.decode(b"").await,
        Err(DecodeError::Truncated { .. })
    ));
}

/// Every framing of `event()` and the decoders that should read it.
fn valid_records() -> Vec<(InputEncoding, Vec<u8>)> {
    let e = event();
    vec![
        (InputEncoding::Raw, codec::encode_event_raw(&e).unwrap()),
        (
            InputEncoding::SingleObject,
            codec::encode_event_single_object(&e).unwrap(),
        ),
        (
            InputEncoding::Auto,
            codec::encode_event_single_object(&e).unwrap(),
        ),
    ]
}

#[tokio::test]
async fn every_truncation_of_a_valid_record_is_an_error() {
    let registry = RegistryStub::start().await;
    let client = registry.client();
    let confluent = EventEncoder::new(InputEncoding::Confluent, Some(Arc::clone(&client)), "in")
        .unwrap()
        .encode(&event())
        .await
        .unwrap();
    let mut cases = valid_records();
    cases.push((InputEncoding::Confluent, confluent.clone()));
    cases.push((InputEncoding::Auto, confluent));
    for (mode, record) in cases {
        let decoder = EventDecoder::new(mode, Some(Arc::clone(&client)));
        assert_eq!(decoder.decode(&record).await, Ok(event()), "{mode:?}");
        for len in 0..record.len() {
            let result = decoder.decode(&record[..len]).await;
            assert!(
                result.is_err(),
                "{mode:?} prefix of {len} bytes decoded: {result:?}"
            );
        }
    }
}

#[tokio::test]
async fn every_single_byte_corruption_is_handled_without_panicking() {
    for (mode, record) in valid_records() {
        let decoder = EventDecoder::new(mode, None);
        for at in 0..record.len() {
            for byte in [0x00, 0x01, 0x7F, 0x80, 0xC3, 0xFF] {
                let mut corrupt = record.clone();
                corrupt[at] = byte;
                // Some corruptions still decode (a changed character); none may panic.
                let _ = decoder.decode(&corrupt).await;
            }
        }
    }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic_in_any_mode(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        block_on(async {
            for mode in [InputEncoding::Auto, InputEncoding::Confluent, InputEncoding::SingleObject, InputEncoding::Raw] {
                let _ = EventDecoder::new(mode, None).decode(&bytes).await;
            }
            let _ = codec::decode_outcome(&bytes);
        });
    }

    #[test]
    fn framed_random_bodies_are_errors(body in proptest::collection::vec(any::<u8>(), 0..128)) {
        block_on(async {
            let fingerprint = schemas::builtin().input.fingerprint;
            let record = codec::framing::frame_single_object(fingerprint, &body);
            let decoder = EventDecoder::new(InputEncoding::Auto, None);
            // Random bodies can be valid Avro by chance; they must never panic, and when they
            // fail the error says why.
            if let Err(error) = decoder.decode(&record).await {
                prop_assert!(!error.to_string().is_empty());
                prop_assert!(!error.is_transient());
            }
            Ok(())
        })?;
    }
}

// ---------------------------------------------------------------------------------------------
// External cross-check against fastavro.

const PIP_COMMAND: &str = "python3 -m pip install fastavro==1.13.1";

fn fastavro_available() -> bool {
    Command::new("python3")
        .args(["-c", "import fastavro"])
        .output()
        .is_ok_and(|out| out.status.success())
}

fn run_check(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/external_avro/check.py");
    let out = Command::new("python3")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "check.py {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[tokio::test]
async fn fastavro_agrees_with_our_codec() {
    if !fastavro_available() {
        assert!(
            std::env::var("REGNOTIFY_REQUIRE_EXTERNAL").as_deref() != Ok("1"),
            "fastavro is required (REGNOTIFY_REQUIRE_EXTERNAL=1) but not installed: {PIP_COMMAND}"
        );
        eprintln!("skipped: fastavro not installed ({PIP_COMMAND})");
        return;
    }
    let dir = tempfile::tempdir().unwrap();

    // (a) fastavro writes input events; we decode them.
    let events_dir = dir.path().join("events");
    run_check(&["write-events", events_dir.to_str().unwrap()]);
    let expected: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(events_dir.join("events.json")).unwrap()).unwrap();
    assert!(!expected.is_empty());
    for (name, json) in &expected {
        let want = codec::event_from_json(&json.to_string()).unwrap();
        let raw = std::fs::read(events_dir.join(format!("{name}.raw"))).unwrap();
        let single = std::fs::read(events_dir.join(format!("{name}.so"))).unwrap();
        let raw_decoder = EventDecoder::new(InputEncoding::Raw, None);
        assert_eq!(
            raw_decoder.decode(&raw).await,
            Ok(want.clone()),
            "{name}.raw"
        );
        let auto_decoder = EventDecoder::new(InputEncoding::Auto, None);
        assert_eq!(
            auto_decoder.decode(&single).await,
            Ok(want.clone()),
            "{name}.so"
        );
        // And our own encoding is byte-identical to fastavro's.
        assert_eq!(
            codec::encode_event_single_object(&want).unwrap(),
            single,
            "{name}"
        );
    }

    // (b) we write outcomes and canonical forms; fastavro decodes and compares them.
    let rust_dir = dir.path().join("rust");
    std::fs::create_dir_all(rust_dir.join("canonical")).unwrap();
    for file in [schemas::INPUT_SCHEMA_VERSIONS[0], schemas::OUTCOME_SCHEMA] {
        let canonical = schemas::canonical_form(&Schema::parse_str(file.json).unwrap());
        std::fs::write(
            rust_dir
                .join("canonical")
                .join(format!("{}.txt", file.file)),
            canonical,
        )
        .unwrap();
    }
    for (name, o) in [
        ("notified", outcome()),
        ("dead_lettered", dead_lettered_outcome()),
    ] {
        let json = codec::encode_outcome_json(&o);
        let single = codec::encode_outcome_single_object(&o).unwrap();
        let confluent = codec::encode_outcome_confluent(12, &o).unwrap();
        for (suffix, bytes) in [("so", single), ("confluent", confluent)] {
            std::fs::write(rust_dir.join(format!("{name}_{suffix}.bin")), bytes).unwrap();
            std::fs::write(rust_dir.join(format!("{name}_{suffix}.json")), &json).unwrap();
        }
    }
    let report = run_check(&["read-rust", rust_dir.to_str().unwrap()]);
    assert!(report.starts_with("ok:"), "{report}");
    eprintln!("{}", report.trim_end());
}
