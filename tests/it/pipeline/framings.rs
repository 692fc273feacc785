//! Every framing through the pipeline (SPEC 3.1, 3.2).

use crate::common;

use regnotify::codec::{self, framing};
use regnotify::config::{InputEncoding, OutputEncoding, Settings};
use regnotify::event::{RegistrationDecided, RegistrationNotifyOutcome};
use regnotify::inspect::{ReadRecord, fully_committed};

use common::{Framing, Harness, assert_one_outcome_each, event};

use super::WAIT;

/// Runs the pipeline over what is on the input topic until every offset is committed, stops it,
/// and returns the whole result and dead-letter topics.
async fn run_to_the_end(
    harness: &Harness,
    settings: Settings,
) -> (Vec<ReadRecord>, Vec<ReadRecord>) {
    let pipeline = harness.start_pipeline(settings).await;
    let progress = harness.wait_fully_committed(WAIT).await;
    assert!(fully_committed(&progress), "{progress:?}");
    pipeline.stop().await;
    (
        harness.read_whole(&harness.result).await,
        harness.dead_letters().await,
    )
}

fn decoded(records: &[ReadRecord]) -> Vec<RegistrationNotifyOutcome> {
    records
        .iter()
        .map(|r| codec::decode_outcome(r.value.as_deref().unwrap()).unwrap())
        .collect()
}

fn some_events(prefix: &str) -> Vec<RegistrationDecided> {
    (0..6)
        .map(|i| event(&format!("M-{prefix}-{}", i % 3), &format!("R-{prefix}-{i}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_and_single_object_input_in_one_stream_give_confluent_outcomes() {
    let harness = Harness::new(2, Vec::new()).await;
    let events = some_events("MIX");
    harness.produce_framed(&events, Framing::Mixed).await;
    // A schema id the registry does not know makes that record poison, not a registry outage.
    let unknown_id = codec::encode_event_confluent(999, &event("M-UNKNOWN", "R-UNKNOWN")).unwrap();
    harness.produce_raw(b"M-UNKNOWN", &unknown_id, &[]).await;
    let (results, letters) = run_to_the_end(&harness, harness.settings()).await;

    assert_one_outcome_each(&events, &decoded(&results));
    let subject = format!("{}-value", harness.result);
    let outcome_id = harness
        .registry
        .id_of_subject(&subject)
        .unwrap_or_else(|| panic!("{subject} registered: {:?}", harness.registry.registered()));
    for record in &results {
        let value = record.value.as_deref().unwrap();
        assert_eq!(value[0], framing::CONFLUENT_MAGIC, "confluent outcome");
        assert_eq!(
            u32::from_be_bytes(value[1..5].try_into().unwrap()),
            outcome_id,
            "outcomes carry the schema id registered for {subject}"
        );
    }
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].header("dlq.reason"), Some("DECODE_ERROR"));
    assert_eq!(letters[0].value.as_deref(), Some(&unknown_id[..]));
    assert!(
        harness.registry.fetches() >= 1,
        "the pipeline asked the registry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_input_gives_json_outcomes() {
    let harness = Harness::new(2, Vec::new()).await;
    let events = some_events("RAW");
    harness.produce_framed(&events, Framing::Raw).await;
    let mut settings = harness.settings();
    settings.kafka.input_encoding = InputEncoding::Raw;
    settings.kafka.output_encoding = OutputEncoding::Json;
    let (results, letters) = run_to_the_end(&harness, settings).await;

    let outcomes = decoded(&results);
    assert_one_outcome_each(&events, &outcomes);
    for (record, outcome) in results.iter().zip(&outcomes) {
        let json: serde_json::Value =
            serde_json::from_slice(record.value.as_deref().unwrap()).expect("a JSON outcome");
        assert_eq!(json["eventId"], outcome.event_id.as_str(), "{json}");
        assert_eq!(json["outcome"], "NOTIFIED", "{json}");
    }
    assert!(letters.is_empty(), "{letters:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_only_input_dead_letters_other_framings() {
    let harness = Harness::new(2, Vec::new()).await;
    let events = some_events("CNF");
    harness.produce_framed(&events, Framing::Confluent).await;
    let stranger = event("M-SINGLE", "R-SINGLE");
    harness
        .produce_framed(std::slice::from_ref(&stranger), Framing::SingleObject)
        .await;
    let mut settings = harness.settings();
    settings.kafka.input_encoding = InputEncoding::Confluent;
    let (results, letters) = run_to_the_end(&harness, settings).await;

    assert_one_outcome_each(&events, &decoded(&results));
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].key.as_deref(), Some(b"M-SINGLE".as_slice()));
    assert_eq!(letters[0].header("dlq.reason"), Some("DECODE_ERROR"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_object_input_without_a_registry_gives_single_object_outcomes() {
    let harness = Harness::new(2, Vec::new()).await;
    let events = some_events("SOE");
    harness.produce_framed(&events, Framing::SingleObject).await;
    // Without a registry a Confluent record cannot be read: poison.
    let confluent = event("M-CONFLUENT", "R-CONFLUENT");
    harness
        .produce_framed(std::slice::from_ref(&confluent), Framing::Confluent)
        .await;
    let mut settings = harness.settings();
    settings.schema_registry = None;
    let (results, letters) = run_to_the_end(&harness, settings).await;

    assert_one_outcome_each(&events, &decoded(&results));
    for record in &results {
        assert_eq!(
            &record.value.as_deref().unwrap()[..2],
            &framing::SINGLE_OBJECT_MAGIC,
            "single-object outcome"
        );
    }
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].key.as_deref(), Some(b"M-CONFLUENT".as_slice()));
    assert_eq!(letters[0].header("dlq.reason"), Some("DECODE_ERROR"));
    assert_eq!(harness.registry.fetches(), 0);
}
