//! Record headers whose names are not UTF-8. Kafka allows any bytes in a header name; rdkafka's
//! safe API panics on such a name and its producer cannot write one, so these records are written
//! with a hand-made Produce request (v3, one uncompressed record batch v2). The README promises
//! that such a header is left out and the record is still processed, or dead-lettered, with its
//! other headers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use regnotify::event::NotifyOutcome;
use regnotify::inspect::fully_committed;

use common::{Harness, event};

const WAIT: Duration = Duration::from_secs(60);
const BAD_NAME: &[u8] = b"\xff\xfe-not-utf8";

fn zigzag_varint(out: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, bytes: &[u8]) {
    zigzag_varint(out, bytes.len() as i64);
    out.extend_from_slice(bytes);
}

/// CRC-32C (Castagnoli), which record batches v2 carry.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One record batch (magic 2) holding one record.
fn record_batch(key: &[u8], value: &[u8], headers: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut record = vec![0]; // attributes
    zigzag_varint(&mut record, 0); // timestamp delta
    zigzag_varint(&mut record, 0); // offset delta
    bytes_field(&mut record, key);
    bytes_field(&mut record, value);
    zigzag_varint(&mut record, headers.len() as i64);
    for (name, value) in headers {
        bytes_field(&mut record, name);
        bytes_field(&mut record, value);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    // Everything after the CRC field, which the CRC covers.
    let mut covered = Vec::new();
    covered.extend(0i16.to_be_bytes()); // attributes: no compression, create time
    covered.extend(0i32.to_be_bytes()); // last offset delta
    covered.extend(now.to_be_bytes()); // base timestamp
    covered.extend(now.to_be_bytes()); // max timestamp
    covered.extend((-1i64).to_be_bytes()); // producer id: not idempotent
    covered.extend((-1i16).to_be_bytes()); // producer epoch
    covered.extend((-1i32).to_be_bytes()); // base sequence
    covered.extend(1i32.to_be_bytes()); // record count
    zigzag_varint(&mut covered, record.len() as i64);
    covered.extend(record);
    let mut batch = Vec::new();
    batch.extend(0i64.to_be_bytes()); // base offset
    batch.extend(((4 + 1 + 4 + covered.len()) as i32).to_be_bytes()); // batch length
    batch.extend((-1i32).to_be_bytes()); // partition leader epoch
    batch.push(2); // magic
    batch.extend(crc32c(&covered).to_be_bytes());
    batch.extend(covered);
    batch
}

fn string_field(out: &mut Vec<u8>, text: &str) {
    out.extend((text.len() as i16).to_be_bytes());
    out.extend(text.as_bytes());
}

/// Writes one record to partition 0 of `topic` through a Produce v3 request (acks = all) to the
/// broker at `address`, which must lead that partition (the tests' single broker does).
fn produce_raw_record(address: &str, topic: &str, batch: &[u8]) {
    let mut request = Vec::new();
    request.extend(0i16.to_be_bytes()); // api key: Produce
    request.extend(3i16.to_be_bytes()); // api version
    request.extend(7i32.to_be_bytes()); // correlation id
    string_field(&mut request, "odd-headers-test");
    request.extend((-1i16).to_be_bytes()); // transactional id: null
    request.extend((-1i16).to_be_bytes()); // acks: all
    request.extend(10_000i32.to_be_bytes()); // timeout
    request.extend(1i32.to_be_bytes()); // one topic
    string_field(&mut request, topic);
    request.extend(1i32.to_be_bytes()); // one partition
    request.extend(0i32.to_be_bytes()); // partition 0
    request.extend((batch.len() as i32).to_be_bytes());
    request.extend(batch);

    let mut stream = TcpStream::connect(address).expect("broker reachable");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
        .write_all(&(request.len() as i32).to_be_bytes())
        .unwrap();
    stream.write_all(&request).unwrap();
    let mut size = [0; 4];
    stream.read_exact(&mut size).expect("produce response");
    let mut response = vec![0; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut response).unwrap();
    // correlation id, topic count, topic name, partition count, partition, error code
    let name_len = i16::from_be_bytes([response[8], response[9]]) as usize;
    let at = 10 + name_len + 4 + 4;
    let error_code = i16::from_be_bytes([response[at], response[at + 1]]);
    assert_eq!(i32::from_be_bytes(response[..4].try_into().unwrap()), 7);
    assert_eq!(error_code, 0, "produce error code");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_name_that_is_not_utf8_is_left_out_and_the_record_still_processed() {
    let harness = Harness::new(1, Vec::new()).await;
    let address = harness
        .kafka
        .bootstrap
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let valid = event("M-ODD-HEADER", "R-ODD-HEADER");
    let headers: [(&[u8], &[u8]); 3] = [
        (b"trace-id", b"abc-123"),
        (BAD_NAME, b"dropped"),
        (b"origin", b"test"),
    ];
    let value = regnotify::codec::encode_event_single_object(&valid).unwrap();
    let (topic, poison) = (
        harness.input.clone(),
        b"\x00\x00\x00\x00\x07not avro".to_vec(),
    );
    tokio::task::spawn_blocking(move || {
        produce_raw_record(
            &address,
            &topic,
            &record_batch(b"M-ODD-HEADER", &value, &headers),
        );
        produce_raw_record(
            &address,
            &topic,
            &record_batch(b"M-POISON", &poison, &headers),
        );
    })
    .await
    .unwrap();

    let pipeline = harness.start_pipeline(harness.settings()).await;
    assert!(fully_committed(&harness.wait_fully_committed(WAIT).await));
    pipeline.assert_running();

    let outcomes = harness.outcomes().await;
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes[0].event_id, valid.event_id);
    assert_eq!(outcomes[0].outcome, NotifyOutcome::Notified);

    let letters = harness.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.key.as_deref(), Some(&b"M-POISON"[..]));
    assert_eq!(letter.header("dlq.reason"), Some("DECODE_ERROR"));
    let kept: Vec<&str> = letter
        .headers
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| !name.starts_with("dlq."))
        .collect();
    assert_eq!(
        kept,
        ["trace-id", "origin"],
        "the other headers kept, in order"
    );
    assert_eq!(letter.header("trace-id"), Some("abc-123"));
    pipeline.stop().await;
}
