//! W3C trace context through the service, and OpenTelemetry spans when export is on
//! (`[telemetry]`, README "Tracing").
//!
//! Every consumed record gets an [`EventTrace`]: the trace context read from its `traceparent`
//! and `tracestate` headers (or a new trace when it has none or an invalid one), and the context
//! its outputs carry downstream. With export off nothing is recorded and the outputs carry the
//! input's own context unchanged, so a downstream consumer continues the producer's trace; a
//! record without one gets a new trace id, marked not sampled. With export on, the event has a
//! span of its own (consumer kind, from the moment it was consumed to its terminal outcome) under
//! the producer's, one child span per Alipay+ attempt, and the outputs carry the event span's
//! context.
//!
//! A dead letter replayed by `regnotify replay-dlq` carries its trace context under
//! [`ORIGIN_TRACEPARENT`]: the replayed event starts a trace of its own whose span links to the
//! original one.
//!
//! Over 600 lines with its tests (about 490 without): one concern, an event's trace from the
//! headers it came with to the headers its outputs carry, kept whole so that the rules above
//! read in one place.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Link, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    IdGenerator as _, RandomIdGenerator, Sampler, SdkTracer, SdkTracerProvider,
};

use crate::config::{OtlpProtocol, TelemetrySettings};

/// The W3C trace context headers.
pub(crate) const TRACEPARENT: &str = "traceparent";
pub(crate) const TRACESTATE: &str = "tracestate";
/// A replayed dead letter's original `traceparent` (and `tracestate`), written by
/// `regnotify replay-dlq`: the replayed event's span links to it.
pub(crate) const ORIGIN_TRACEPARENT: &str = "regnotify.origin.traceparent";
pub(crate) const ORIGIN_TRACESTATE: &str = "regnotify.origin.tracestate";

/// The Alipay+ path every attempt calls (an attribute of the attempt spans).
const NOTIFY_PATH: &str = "/aps/api/v1/merchants/notifyRegistrationStatus";

/// The service's tracing: off (contexts passed through, nothing recorded) or exporting.
#[derive(Clone, Default)]
pub(crate) struct Tracing {
    exporting: Option<Arc<Exporting>>,
}

struct Exporting {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for Tracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracing")
            .field("exporting", &self.exporting.is_some())
            .finish()
    }
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("telemetry: cannot set up the OTLP trace exporter ({protocol}): {source}")]
pub(crate) struct TracingError {
    protocol: &'static str,
    source: opentelemetry_otlp::ExporterBuildError,
}

impl Tracing {
    /// Nothing recorded or exported: trace contexts are passed through.
    pub(crate) fn off() -> Tracing {
        Tracing::default()
    }

    /// From the `[telemetry]` settings. With `traces = true` the exporter is built here (the gRPC
    /// one needs the tokio runtime this is called on); spans go out in batches from the SDK's own
    /// thread, so a slow or absent collector never slows an event.
    pub(crate) fn from_settings(settings: &TelemetrySettings) -> Result<Tracing, TracingError> {
        if !settings.traces {
            return Ok(Tracing::off());
        }
        let protocol = settings.effective_protocol();
        let exporter = match protocol {
            OtlpProtocol::HttpProtobuf => {
                let mut builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
                if let Some(endpoint) = &settings.endpoint {
                    builder = builder.with_endpoint(traces_url(endpoint));
                }
                builder.build()
            }
            OtlpProtocol::Grpc => {
                let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
                if let Some(endpoint) = &settings.endpoint {
                    builder = builder.with_endpoint(endpoint.clone());
                }
                builder.build()
            }
        }
        .map_err(|source| TracingError {
            protocol: protocol.as_str(),
            source,
        })?;
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sample_ratio)));
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(settings.effective_service_name())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("regnotify");
        Ok(Tracing {
            exporting: Some(Arc::new(Exporting { provider, tracer })),
        })
    }

    /// The trace of one consumed record, its span started now.
    pub(crate) fn start_event(&self, consumed: Consumed<'_>) -> EventTrace {
        let headers = HeaderView(consumed.headers);
        let parent = TraceContextPropagator::new().extract(&headers);
        let parent_context = parent.span().span_context().clone();
        let origin = origin_context(consumed.headers);
        let Some(exporting) = &self.exporting else {
            let invented = !parent_context.is_valid();
            let context = if !invented {
                parent_context
            } else {
                // A new trace, not recorded here: downstream sees it was not sampled.
                let ids = RandomIdGenerator::default();
                SpanContext::new(
                    ids.new_trace_id(),
                    ids.new_span_id(),
                    TraceFlags::default(),
                    false,
                    TraceState::default(),
                )
            };
            return EventTrace {
                context: Context::new().with_remote_span_context(context),
                recording: None,
                invented,
            };
        };
        let mut attributes = vec![
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("messaging.destination.name", consumed.topic.to_owned()),
            KeyValue::new("messaging.consumer.group.name", consumed.group.to_owned()),
            KeyValue::new(
                "messaging.destination.partition.id",
                consumed.partition.to_string(),
            ),
            KeyValue::new("messaging.kafka.offset", consumed.offset),
        ];
        if let Some(key) = consumed.key {
            attributes.push(KeyValue::new(
                "messaging.kafka.message.key",
                String::from_utf8_lossy(key).into_owned(),
            ));
        }
        let mut builder = exporting
            .tracer
            .span_builder(format!("process {}", consumed.topic))
            .with_kind(SpanKind::Consumer)
            .with_attributes(attributes);
        if let Some(origin) = origin {
            builder = builder.with_links(vec![Link::new(
                origin,
                vec![KeyValue::new("regnotify.link", "replayed_from")],
                0,
            )]);
        }
        let span = builder.start_with_context(&exporting.tracer, &parent);
        EventTrace {
            context: Context::new().with_span(span),
            recording: Some(Arc::clone(exporting)),
            invented: false,
        }
    }

    /// Exports what is buffered and stops the exporter (at shutdown), waiting at most `timeout`.
    pub(crate) fn shutdown(&self, timeout: Duration) {
        if let Some(exporting) = &self.exporting
            && let Err(error) = exporting.provider.shutdown_with_timeout(timeout)
        {
            tracing::warn!(%error, "trace export did not finish at shutdown");
        }
    }
}

/// The OTLP/HTTP traces URL for a collector's base endpoint (`http://collector:4318`), as the
/// OpenTelemetry specification builds it from `OTEL_EXPORTER_OTLP_ENDPOINT`.
fn traces_url(endpoint: &str) -> String {
    if endpoint.ends_with("/v1/traces") {
        endpoint.to_owned()
    } else {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    }
}

/// What a consumed record tells its trace.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Consumed<'a> {
    pub(crate) topic: &'a str,
    pub(crate) group: &'a str,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) headers: &'a [(String, Option<Vec<u8>>)],
}

/// The waits before one Alipay+ attempt.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Waits {
    /// The retry delay after the previous attempt (and a refusal held for the breaker's word).
    pub(crate) backoff: Duration,
    /// Held by the send rate (after throttling answers, or the configured ceiling).
    pub(crate) throttle: Duration,
    /// Held while the MPP's circuit was open.
    pub(crate) circuit: Duration,
}

/// One Alipay+ attempt as its span records it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt<'a> {
    /// 1 for the first call of the event.
    pub(crate) number: u32,
    pub(crate) psp: &'a str,
    pub(crate) started: SystemTime,
    pub(crate) ended: SystemTime,
    pub(crate) http_status: Option<u16>,
    pub(crate) result_status: Option<&'a str>,
    pub(crate) result_code: Option<&'a str>,
    /// The answer's class (success, rejected, refused, throttled, unknown).
    pub(crate) class: &'a str,
    pub(crate) waits: Waits,
}

/// One event's trace: the context its outputs carry, and its span while export is on.
#[derive(Clone)]
pub(crate) struct EventTrace {
    context: Context,
    recording: Option<Arc<Exporting>>,
    /// Export is off and the record had no valid context: the trace id was made up here, for
    /// the logs and the outcome, and nothing downstream can continue it.
    invented: bool,
}

impl std::fmt::Debug for EventTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventTrace")
            .field("trace_id", &self.trace_id())
            .field("recording", &self.recording.is_some())
            .finish()
    }
}

impl EventTrace {
    /// The trace id, as 32 hex digits.
    pub(crate) fn trace_id(&self) -> String {
        self.context.span().span_context().trace_id().to_string()
    }

    /// The trace id as a number (0 never is one).
    pub(crate) fn trace_id_value(&self) -> u128 {
        u128::from_be_bytes(self.context.span().span_context().trace_id().to_bytes())
    }

    /// The trace context headers the event's dead letter carries in place of the input's: none
    /// when the trace id was made up here (export off, no context in the record), so that the
    /// dead letter keeps exactly the input's headers (SPEC 3.3).
    pub(crate) fn dead_letter_headers(&self) -> Vec<(String, Option<Vec<u8>>)> {
        if self.invented {
            return Vec::new();
        }
        self.headers()
    }

    /// The `traceparent` (and `tracestate`) headers the event's outcome carries.
    pub(crate) fn headers(&self) -> Vec<(String, Option<Vec<u8>>)> {
        let mut headers = HeaderSink(Vec::with_capacity(2));
        TraceContextPropagator::new().inject_context(&self.context, &mut headers);
        headers.0
    }

    /// The decoded event's ids, on the event span.
    pub(crate) fn event(
        &self,
        event_id: &str,
        registration_request_id: &str,
        psp_id: Option<&str>,
    ) {
        if self.recording.is_none() {
            return;
        }
        let span = self.context.span();
        span.set_attribute(KeyValue::new("regnotify.event_id", event_id.to_owned()));
        span.set_attribute(KeyValue::new(
            "regnotify.registration_request_id",
            registration_request_id.to_owned(),
        ));
        if let Some(psp) = psp_id {
            span.set_attribute(KeyValue::new("regnotify.psp_id", psp.to_owned()));
        }
    }

    /// One Alipay+ attempt, as a child span of the event's.
    pub(crate) fn attempt(&self, attempt: &Attempt<'_>) {
        let Some(exporting) = &self.recording else {
            return;
        };
        let mut attributes = vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("url.path", NOTIFY_PATH),
            KeyValue::new("regnotify.attempt", i64::from(attempt.number)),
            KeyValue::new(
                "http.request.resend_count",
                i64::from(attempt.number.saturating_sub(1)),
            ),
            KeyValue::new("regnotify.psp_id", attempt.psp.to_owned()),
            KeyValue::new("regnotify.answer_class", attempt.class.to_owned()),
            KeyValue::new("regnotify.wait.backoff_ms", millis(attempt.waits.backoff)),
            KeyValue::new("regnotify.wait.throttle_ms", millis(attempt.waits.throttle)),
            KeyValue::new("regnotify.wait.circuit_ms", millis(attempt.waits.circuit)),
        ];
        if let Some(status) = attempt.http_status {
            attributes.push(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        if let Some(status) = attempt.result_status {
            attributes.push(KeyValue::new("regnotify.result_status", status.to_owned()));
        }
        if let Some(code) = attempt.result_code {
            attributes.push(KeyValue::new("regnotify.result_code", code.to_owned()));
        }
        let span = exporting
            .tracer
            .span_builder("POST")
            .with_kind(SpanKind::Client)
            .with_start_time(attempt.started)
            .with_attributes(attributes)
            .start_with_context(&exporting.tracer, &self.context);
        let span_context = Context::new().with_span(span);
        if !matches!(attempt.class, "success" | "rejected") {
            span_context
                .span()
                .set_status(Status::error(attempt.class.to_owned()));
        }
        span_context.span().end_with_timestamp(attempt.ended);
    }

    /// The event's terminal outcome: its span ends.
    pub(crate) fn finished(
        &self,
        outcome: &str,
        result_code: Option<&str>,
        attempts: u32,
        error: Option<&str>,
    ) {
        if self.recording.is_none() {
            return;
        }
        let span = self.context.span();
        span.set_attribute(KeyValue::new("regnotify.outcome", outcome.to_owned()));
        span.set_attribute(KeyValue::new("regnotify.attempts", i64::from(attempts)));
        if let Some(code) = result_code {
            span.set_attribute(KeyValue::new("regnotify.result_code", code.to_owned()));
        }
        if let Some(error) = error {
            span.set_status(Status::error(error.to_owned()));
        }
        span.end();
    }

    /// The event will not finish here (its partition went, or the service stops): its span ends
    /// saying so; the next owner's span continues the trace.
    pub(crate) fn abandoned(&self) {
        if self.recording.is_none() {
            return;
        }
        let span = self.context.span();
        span.set_attribute(KeyValue::new("regnotify.outcome", "ABANDONED"));
        span.end();
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The context a replayed dead letter carried when it was dead-lettered.
fn origin_context(headers: &[(String, Option<Vec<u8>>)]) -> Option<SpanContext> {
    let origin = OriginView(headers);
    let context = TraceContextPropagator::new().extract(&origin);
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// Record headers read as a W3C carrier. A header that is not UTF-8, or is repeated, is read as
/// Kafka clients do: the last value wins.
struct HeaderView<'a>(&'a [(String, Option<Vec<u8>>)]);

impl Extractor for HeaderView<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        header(self.0, key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_str()).collect()
    }
}

/// A replayed record's origin headers, read under the W3C names.
struct OriginView<'a>(&'a [(String, Option<Vec<u8>>)]);

impl Extractor for OriginView<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => header(self.0, ORIGIN_TRACEPARENT),
            TRACESTATE => header(self.0, ORIGIN_TRACESTATE),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

fn header<'a>(headers: &'a [(String, Option<Vec<u8>>)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .rev()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .and_then(|(_, value)| value.as_deref())
        .and_then(|value| std::str::from_utf8(value).ok())
}

struct HeaderSink(Vec<(String, Option<Vec<u8>>)>);

impl Injector for HeaderSink {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_owned(), Some(value.into_bytes())));
    }
}

/// Whether `name` is a trace context header an output replaces with the event's own.
pub(crate) fn is_trace_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(TRACEPARENT) || name.eq_ignore_ascii_case(TRACESTATE)
}

/// A dead letter's headers for replay: its trace context moves under the origin names, so that
/// the replayed event starts a trace of its own linked to the original.
pub(crate) fn replay_headers(
    headers: &[(String, Option<Vec<u8>>)],
) -> Vec<(String, Option<Vec<u8>>)> {
    let mut replayed = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(ORIGIN_TRACEPARENT)
            || name.eq_ignore_ascii_case(ORIGIN_TRACESTATE)
        {
            continue;
        }
        let renamed = if name.eq_ignore_ascii_case(TRACEPARENT) {
            ORIGIN_TRACEPARENT
        } else if name.eq_ignore_ascii_case(TRACESTATE) {
            ORIGIN_TRACESTATE
        } else {
            name.as_str()
        };
        replayed.push((renamed.to_owned(), value.clone()));
    }
    replayed
}

/// A trace id for tests and tools: 32 hex digits.
pub(crate) fn format_trace_id(id: u128) -> String {
    TraceId::from_bytes(id.to_be_bytes()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Option<Vec<u8>>)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), Some(v.as_bytes().to_vec())))
            .collect()
    }

    fn consumed(headers: &[(String, Option<Vec<u8>>)]) -> Consumed<'_> {
        Consumed {
            topic: "in",
            group: "g",
            partition: 3,
            offset: 42,
            key: Some(b"M1"),
            headers,
        }
    }

    fn header_value(headers: &[(String, Option<Vec<u8>>)], name: &str) -> Option<String> {
        header(headers, name).map(str::to_owned)
    }

    #[test]
    fn with_export_off_the_outputs_carry_the_inputs_trace_context_unchanged() {
        let input = headers(&[(TRACEPARENT, PARENT), (TRACESTATE, "vendor=abc")]);
        let trace = Tracing::off().start_event(consumed(&input));
        assert_eq!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let out = trace.headers();
        assert_eq!(header_value(&out, TRACEPARENT).as_deref(), Some(PARENT));
        assert_eq!(
            header_value(&out, TRACESTATE).as_deref(),
            Some("vendor=abc")
        );
    }

    #[test]
    fn a_record_without_or_with_a_broken_traceparent_gets_a_new_unsampled_trace() {
        for input in [
            headers(&[]),
            headers(&[(
                TRACEPARENT,
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )]),
            headers(&[(TRACEPARENT, "not a traceparent")]),
        ] {
            let trace = Tracing::off().start_event(consumed(&input));
            let id = trace.trace_id();
            assert_eq!(id.len(), 32);
            assert_ne!(id, "00000000000000000000000000000000");
            let out = header_value(&trace.headers(), TRACEPARENT).expect("traceparent");
            assert!(out.starts_with(&format!("00-{id}-")), "{out}");
            assert!(out.ends_with("-00"), "not sampled: {out}");
        }
        let invented = Tracing::off().start_event(consumed(&[]));
        assert!(
            invented.dead_letter_headers().is_empty(),
            "a dead letter keeps exactly the input's headers when nothing can continue the trace"
        );
        let input = headers(&[(TRACEPARENT, PARENT)]);
        let passed = Tracing::off().start_event(consumed(&input));
        assert_eq!(passed.dead_letter_headers(), passed.headers());
        let one = Tracing::off().start_event(consumed(&[])).trace_id();
        let two = Tracing::off().start_event(consumed(&[])).trace_id();
        assert_ne!(
            one, two,
            "each record without a context starts its own trace"
        );
    }

    #[test]
    fn replay_moves_the_trace_context_under_the_origin_names_and_the_replayed_event_starts_its_own_trace()
     {
        let letter = headers(&[
            ("x-app", "1"),
            (TRACEPARENT, PARENT),
            (
                ORIGIN_TRACEPARENT,
                "00-11111111111111111111111111111111-2222222222222222-01",
            ),
        ]);
        let replayed = replay_headers(&letter);
        assert_eq!(header_value(&replayed, "x-app").as_deref(), Some("1"));
        assert_eq!(header_value(&replayed, TRACEPARENT), None);
        assert_eq!(
            header_value(&replayed, ORIGIN_TRACEPARENT).as_deref(),
            Some(PARENT),
            "the latest dead letter's context replaces an older origin"
        );
        assert_eq!(replayed.len(), 2);
        let origin = origin_context(&replayed).expect("origin context");
        assert_eq!(
            origin.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let trace = Tracing::off().start_event(consumed(&replayed));
        assert_ne!(trace.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn an_otlp_http_endpoint_gets_the_traces_path_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
