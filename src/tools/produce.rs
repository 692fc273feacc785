//! `regnotify produce`: JSON lines read on their own thread (each bounded, blank ones skipped,
//! unreadable ones refused), encoded as Avro events in the configured input encoding and
//! published on the input topic keyed by `referenceMerchantId`, a window of them awaiting
//! acknowledgement at a time.
//!
//! Never validates events against the field rules (an invalid event is legitimate test input) and
//! never reads from Kafka.

use std::collections::VecDeque;
use std::io::BufRead;
use std::time::Duration;

use anyhow::Context;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::mpsc;

use crate::codec::{EncodeError, EventEncoder, event_from_json};
use crate::config::Settings;
use crate::pipeline::kafka::producer_config;

/// Longest accepted input line of `produce`, in bytes; a longer line is refused, not buffered.
pub(crate) const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Refused lines `produce` describes one by one; beyond them it only counts.
pub(crate) const MAX_REPORTED_REFUSALS: usize = 1000;
/// Records `produce` hands to the producer before it waits for the oldest acknowledgement.
const PRODUCE_WINDOW: usize = 1000;
/// Lines buffered between the reading thread and the producing task.
const LINE_CHANNEL_CAPACITY: usize = 256;

/// A line of `produce` input that was not sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedLine {
    /// 1-based line number in the input.
    pub line: usize,
    pub error: String,
}

/// What `produce` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProduceReport {
    /// Records acknowledged by Kafka.
    pub sent: usize,
    /// Lines that could not be parsed or encoded.
    pub refused_count: usize,
    /// The first [`MAX_REPORTED_REFUSALS`] of them, in input order.
    pub refused: Vec<RefusedLine>,
}

impl ProduceReport {
    fn refuse(&mut self, refused: RefusedLine) {
        self.refused_count += 1;
        if self.refused.len() < MAX_REPORTED_REFUSALS {
            self.refused.push(refused);
        }
    }
}

/// Options of `produce` beyond the settings.
#[derive(Debug, Clone, Default)]
pub struct ProduceOptions {
    /// Headers put on every record (name, value), e.g. a trace or test-run marker.
    pub headers: Vec<(String, String)>,
}

/// One line of input as the reading thread hands it over.
#[derive(Debug)]
enum InputLine {
    Text { line: usize, text: String },
    Refused(RefusedLine),
    Failed(std::io::Error),
}

/// Reads JSON lines (the input schema's fields in camelCase, one event per line; see
/// [`event_from_json`]) and publishes each as an Avro event on `kafka.input_topic`, in the
/// configured `kafka.input_encoding`, keyed by `referenceMerchantId`.
///
/// Events are not validated against the field rules: an invalid event is a legitimate test input
/// (the pipeline dead-letters it as `INVALID_EVENT`). Only lines that cannot be parsed or encoded
/// are refused and reported; blank lines are ignored. Returns once every sent record is
/// acknowledged; an error (Kafka did not acknowledge, the registry is unreachable, the input cannot
/// be read) stops the run, and records before it may have been sent.
pub async fn produce_jsonl(
    settings: &Settings,
    input: impl BufRead + Send + 'static,
    options: &ProduceOptions,
) -> anyhow::Result<ProduceReport> {
    let kafka = &settings.kafka;
    let registry = crate::pipeline::schema_registry(settings.schema_registry.as_ref())?;
    let encoder = EventEncoder::new(kafka.input_encoding, registry, &kafka.input_topic)
        .context("invalid setting `kafka.input_encoding`")?;
    let producer: FutureProducer = producer_config(kafka)
        .create()
        .context("cannot create kafka producer")?;
    let mut headers = OwnedHeaders::new();
    for (name, value) in &options.headers {
        headers = headers.insert(Header {
            key: name,
            value: Some(value.as_bytes()),
        });
    }

    // A dedicated thread, not the blocking pool: reading stdin may block for ever, and a runtime
    // waits for its blocking pool on shutdown.
    let (lines_tx, mut lines_rx) = mpsc::channel(LINE_CHANNEL_CAPACITY);
    std::thread::Builder::new()
        .name("regnotify-produce-input".into())
        .spawn(move || read_lines(input, &lines_tx))
        .context("cannot start the input reader thread")?;

    let mut report = ProduceReport::default();
    let mut pending: VecDeque<(usize, DeliveryFuture)> = VecDeque::new();
    while let Some(input_line) = lines_rx.recv().await {
        let (line, text) = match input_line {
            InputLine::Text { line, text } => (line, text),
            InputLine::Refused(refused) => {
                report.refuse(refused);
                continue;
            }
            InputLine::Failed(error) => {
                return Err(error).context("cannot read the input");
            }
        };
        let event = match event_from_json(&text) {
            Ok(event) => event,
            Err(error) => {
                report.refuse(RefusedLine {
                    line,
                    error: error.to_string(),
                });
                continue;
            }
        };
        let value = match encoder.encode(&event).await {
            Ok(value) => value,
            Err(error) if is_line_fault(&error) => {
                report.refuse(RefusedLine {
                    line,
                    error: error.to_string(),
                });
                continue;
            }
            Err(error) => {
                return Err(error).with_context(|| {
                    format!("line {line} could not be encoded; {} sent", report.sent)
                });
            }
        };
        let mut record = FutureRecord::to(&kafka.input_topic)
            .key(event.reference_merchant_id.as_bytes())
            .payload(&value)
            .headers(headers.clone());
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push_back((line, delivery));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    match pending.pop_front() {
                        Some(oldest) => report.sent += acknowledged(oldest, report.sent).await?,
                        None => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                Err((error, _)) => {
                    return Err(error).with_context(|| {
                        format!("line {line} could not be queued; {} sent", report.sent)
                    });
                }
            }
        }
        if pending.len() >= PRODUCE_WINDOW
            && let Some(oldest) = pending.pop_front()
        {
            report.sent += acknowledged(oldest, report.sent).await?;
        }
    }
    while let Some(oldest) = pending.pop_front() {
        report.sent += acknowledged(oldest, report.sent).await?;
    }
    Ok(report)
}

/// Whether an encoding failure is the line's own (refuse it) rather than the setup's (stop).
fn is_line_fault(error: &EncodeError) -> bool {
    matches!(
        error,
        EncodeError::InvalidField { .. } | EncodeError::Avro(_)
    )
}

/// Waits for one delivery; returns 1 when Kafka acknowledged it.
async fn acknowledged(
    (line, delivery): (usize, DeliveryFuture),
    sent: usize,
) -> anyhow::Result<usize> {
    match delivery.await {
        Ok(Ok(_)) => Ok(1),
        Ok(Err((error, _))) => Err(error).with_context(|| {
            format!("kafka did not acknowledge the record of line {line}; {sent} sent before it")
        }),
        Err(_) => anyhow::bail!("the producer stopped before line {line} was acknowledged"),
    }
}

/// Reads `input` line by line on the calling thread, each line bounded by [`MAX_LINE_BYTES`], and
/// hands the non-blank ones over until the input ends or the receiver is gone.
fn read_lines(mut input: impl BufRead, lines: &mpsc::Sender<InputLine>) {
    let mut number = 0;
    let mut buffer = Vec::new();
    loop {
        number += 1;
        buffer.clear();
        let read = std::io::Read::take(&mut input, MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buffer);
        let message = match read {
            Ok(0) => return,
            Ok(_) if buffer.len() > MAX_LINE_BYTES && buffer.last() != Some(&b'\n') => {
                if let Err(error) = skip_line(&mut input) {
                    let _ = lines.blocking_send(InputLine::Failed(error));
                    return;
                }
                InputLine::Refused(RefusedLine {
                    line: number,
                    error: format!("line longer than {MAX_LINE_BYTES} bytes"),
                })
            }
            Ok(_) => match std::str::from_utf8(&buffer) {
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => InputLine::Text {
                    line: number,
                    text: text.trim_end_matches(['\n', '\r']).to_string(),
                },
                Err(error) => InputLine::Refused(RefusedLine {
                    line: number,
                    error: format!("not utf-8: {error}"),
                }),
            },
            Err(error) => InputLine::Failed(error),
        };
        let failed = matches!(message, InputLine::Failed(_));
        if lines.blocking_send(message).is_err() || failed {
            return;
        }
    }
}

/// Discards the rest of the current line without buffering it.
fn skip_line(input: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let available = input.fill_buf()?;
        if available.is_empty() {
            return Ok(());
        }
        match available.iter().position(|&byte| byte == b'\n') {
            Some(end) => {
                input.consume(end + 1);
                return Ok(());
            }
            None => {
                let len = available.len();
                input.consume(len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn lines(input: &[u8]) -> Vec<InputLine> {
        let (tx, mut rx) = mpsc::channel(16);
        let input = input.to_vec();
        std::thread::spawn(move || read_lines(std::io::Cursor::new(input), &tx))
            .join()
            .expect("reader thread");
        let mut out = Vec::new();
        while let Ok(line) = rx.try_recv() {
            out.push(line);
        }
        out
    }

    #[test]
    fn blank_lines_are_skipped_and_numbers_kept() {
        let read = lines(b"a\n\n  \r\nb\r\nc");
        let texts: Vec<(usize, String)> = read
            .into_iter()
            .filter_map(|line| match line {
                InputLine::Text { line, text } => Some((line, text)),
                _ => None,
            })
            .collect();
        assert_eq!(
            texts,
            vec![(1, "a".into()), (4, "b".into()), (5, "c".into())]
        );
    }

    #[test]
    fn over_long_and_non_utf8_lines_are_refused_without_losing_the_next() {
        let mut input = vec![b'x'; MAX_LINE_BYTES + 10];
        input.extend_from_slice(b"\n\xff\xfe\nok\n");
        let read = lines(&input);
        assert_eq!(read.len(), 3);
        assert!(matches!(&read[0], InputLine::Refused(r) if r.line == 1));
        assert!(matches!(&read[1], InputLine::Refused(r) if r.line == 2));
        assert!(matches!(&read[2], InputLine::Text { line: 3, text } if text == "ok"));
    }
}
