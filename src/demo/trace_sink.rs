//! `demo --traces`: an OTLP/HTTP trace receiver in the demo's process, so that a run measures what
//! recording and exporting every span costs without a collector installed. It decodes each
//! export request (protobuf) and counts the spans, then answers as a collector does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// What the receiver was sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TraceExports {
    pub(crate) requests: u64,
    pub(crate) bytes: u64,
    pub(crate) spans: u64,
    /// Requests that were not an OTLP trace export.
    pub(crate) refused: u64,
}

#[derive(Debug, Default)]
struct Counts {
    requests: AtomicU64,
    bytes: AtomicU64,
    spans: AtomicU64,
    refused: AtomicU64,
}

/// A running receiver; stopped on drop.
#[derive(Debug)]
pub(crate) struct TraceSink {
    address: SocketAddr,
    counts: Arc<Counts>,
    stop: CancellationToken,
}

impl TraceSink {
    /// Listens on a free loopback port.
    pub(crate) async fn start() -> anyhow::Result<TraceSink> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let stop = CancellationToken::new();
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(receive))
            .with_state(Arc::clone(&counts));
        let stopped = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped.cancelled_owned())
                .await;
        });
        Ok(TraceSink {
            address,
            counts,
            stop,
        })
    }

    /// The base endpoint (`telemetry.endpoint`).
    pub(crate) fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    pub(crate) fn exports(&self) -> TraceExports {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        TraceExports {
            requests: read(&self.counts.requests),
            bytes: read(&self.counts.bytes),
            spans: read(&self.counts.spans),
            refused: read(&self.counts.refused),
        }
    }
}

impl Drop for TraceSink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn receive(State(counts): State<Arc<Counts>>, body: Bytes) -> impl IntoResponse {
    counts.requests.fetch_add(1, Ordering::Relaxed);
    counts.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        counts.refused.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain")],
            Vec::new(),
        );
    };
    let spans: usize = request
        .resource_spans
        .iter()
        .flat_map(|resource| &resource.scope_spans)
        .map(|scope| scope.spans.len())
        .sum();
    counts.spans.fetch_add(spans as u64, Ordering::Relaxed);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        ExportTraceServiceResponse::default().encode_to_vec(),
    )
}
