//! The pipeline's own copy of one consumed Kafka record, and the dead-letter record built from it
//! (SPEC 3.3).
//!
//! A dead letter keeps the input's key, value and headers unchanged and adds `dlq.*` headers; this
//! module builds those headers as plain data so the rules can be tested without a broker. It never
//! talks to Kafka.

use crate::event::DeadLetterReason;
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};

/// Prefix of every diagnostic header regnotify adds to a dead letter.
pub(crate) const DLQ_HEADER_PREFIX: &str = "dlq.";
/// Longest `dlq.error` value, in bytes.
pub(crate) const MAX_DLQ_ERROR_BYTES: usize = 1024;

/// One consumed record, copied out of librdkafka's buffers.
#[derive(Debug, Clone)]
pub(crate) struct InputRecord {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    /// The record's Kafka timestamp in milliseconds, when it has one.
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Option<Vec<u8>>,
    pub(crate) headers: Vec<(String, Option<Vec<u8>>)>,
}

impl InputRecord {
    /// Identifies the record's content (key, value, headers, timestamp) within this process:
    /// the same record delivered twice has the same fingerprint, a different record at the
    /// same offset almost surely not.
    pub(crate) fn fingerprint(&self) -> u64 {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut hasher = DefaultHasher::new();
        self.timestamp_ms.hash(&mut hasher);
        self.key.hash(&mut hasher);
        self.value.hash(&mut hasher);
        self.headers.hash(&mut hasher);
        hasher.finish()
    }
}

/// The facts a dead letter reports beyond its source.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    pub(crate) reason: DeadLetterReason,
    pub(crate) error: String,
    /// HTTP calls made, when the event got as far as Alipay+.
    pub(crate) attempts: Option<u32>,
    pub(crate) result_code: Option<String>,
    pub(crate) http_status: Option<u16>,
    pub(crate) failed_at: DateTime<Utc>,
}

/// The headers of the dead-letter record: the input's own headers (minus any stale `dlq.*` ones
/// from an earlier trip through the DLQ, and with the event's trace context `trace` in place of
/// the input's), then the diagnostic headers. Absent facts are absent headers.
pub(crate) fn dead_letter_headers(
    record: &InputRecord,
    consumer_group: &str,
    letter: &DeadLetter,
    trace: &[(String, Option<Vec<u8>>)],
) -> Vec<(String, Option<Vec<u8>>)> {
    let mut headers: Vec<(String, Option<Vec<u8>>)> = record
        .headers
        .iter()
        .filter(|(name, _)| {
            !name.starts_with(DLQ_HEADER_PREFIX) && !crate::telemetry::traces::is_trace_header(name)
        })
        .chain(trace)
        .cloned()
        .collect();
    let mut add = |name: &str, value: String| headers.push((name.to_string(), Some(value.into())));
    add("dlq.reason", letter.reason.as_str().to_string());
    add(
        "dlq.error",
        truncate_utf8(&letter.error, MAX_DLQ_ERROR_BYTES),
    );
    add("dlq.source.topic", record.topic.to_string());
    add("dlq.source.partition", record.partition.to_string());
    add("dlq.source.offset", record.offset.to_string());
    if let Some(timestamp) = record.timestamp_ms {
        add("dlq.source.timestamp", timestamp.to_string());
    }
    add("dlq.consumer.group", consumer_group.to_string());
    if let Some(attempts) = letter.attempts {
        add("dlq.attempts", attempts.to_string());
    }
    if let Some(code) = &letter.result_code {
        add("dlq.result.code", code.clone());
    }
    if let Some(status) = letter.http_status {
        add("dlq.http.status", status.to_string());
    }
    add(
        "dlq.failed.at",
        letter
            .failed_at
            .to_rfc3339_opts(SecondsFormat::Millis, true),
    );
    headers
}

/// Cuts `text` to at most `max` bytes on a character boundary.
pub(crate) fn truncate_utf8(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> InputRecord {
        InputRecord {
            topic: Arc::from("in"),
            partition: 2,
            offset: 41,
            timestamp_ms: Some(1_764_000_000_123),
            key: Some(b"M1".to_vec()),
            value: Some(vec![0xff]),
            headers: vec![
                ("trace".into(), Some(b"abc".to_vec())),
                ("dlq.reason".into(), Some(b"OLD".to_vec())),
                ("empty".into(), None),
            ],
        }
    }

    fn header<'a>(headers: &'a [(String, Option<Vec<u8>>)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    #[test]
    fn dead_letter_keeps_input_headers_and_adds_diagnostics() {
        let failed_at = DateTime::parse_from_rfc3339("2026-11-25T21:40:05Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        let letter = DeadLetter {
            reason: DeadLetterReason::RequestRefused,
            error: "alipay+ refused the request: INVALID_CLIENT".into(),
            attempts: Some(1),
            result_code: Some("INVALID_CLIENT".into()),
            http_status: Some(200),
            failed_at,
        };
        let headers = dead_letter_headers(&record(), "regnotify", &letter, &[]);
        assert_eq!(headers[0], ("trace".to_string(), Some(b"abc".to_vec())));
        assert_eq!(headers[1], ("empty".to_string(), None));
        assert_eq!(header(&headers, "dlq.reason"), Some("REQUEST_REFUSED"));
        assert_eq!(headers.iter().filter(|(n, _)| n == "dlq.reason").count(), 1);
        assert_eq!(header(&headers, "dlq.source.topic"), Some("in"));
        assert_eq!(header(&headers, "dlq.source.partition"), Some("2"));
        assert_eq!(header(&headers, "dlq.source.offset"), Some("41"));
        assert_eq!(
            header(&headers, "dlq.source.timestamp"),
            Some("1764000000123")
        );
        assert_eq!(header(&headers, "dlq.consumer.group"), Some("regnotify"));
        assert_eq!(header(&headers, "dlq.attempts"), Some("1"));
        assert_eq!(header(&headers, "dlq.result.code"), Some("INVALID_CLIENT"));
        assert_eq!(header(&headers, "dlq.http.status"), Some("200"));
        assert_eq!(
            header(&headers, "dlq.failed.at"),
            Some("2026-11-25T21:40:05.000Z")
        );
    }

    #[test]
    fn absent_facts_are_absent_headers() {
        let mut input = record();
        input.timestamp_ms = None;
        let letter = DeadLetter {
            reason: DeadLetterReason::DecodeError,
            error: "é".repeat(600),
            attempts: None,
            result_code: None,
            http_status: None,
            failed_at: Utc::now(),
        };
        let headers = dead_letter_headers(&input, "g", &letter, &[]);
        for absent in [
            "dlq.source.timestamp",
            "dlq.attempts",
            "dlq.result.code",
            "dlq.http.status",
        ] {
            assert!(header(&headers, absent).is_none(), "{absent}");
        }
        let error = header(&headers, "dlq.error").unwrap_or_default();
        assert!(error.len() <= MAX_DLQ_ERROR_BYTES);
        assert_eq!(error.chars().count(), 512);
    }

    #[test]
    fn reasons_round_trip() {
        for reason in DeadLetterReason::ALL {
            assert_eq!(DeadLetterReason::from_symbol(reason.as_str()), Some(reason));
        }
    }
}
