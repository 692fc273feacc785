//! Everything the pipeline reports about itself: one function per observable event, which logs
//! it, counts it in Prometheus metrics and keeps the in-process [`Stats`] that the demo and tests
//! read. Metric names live here and nowhere else.
//!
//! Labels come from small fixed sets (outcome, class, result code, reason, partition, Kafka
//! error code); ids and secrets never become labels, and nothing here ever sees a key or a
//! signature. Errors that repeat are logged at most once per [`ERROR_LOG_INTERVAL`] per (code,
//! partition), never in a flood.
//!
//! This file only wires the parts and re-exports them, so callers name everything
//! `observe::…`: the metric names (`names`) and their descriptions (`describe`), health and
//! readiness (`health`, with the rules in `stuck` and `consumer_errors`), the in-process counters
//! (`stats`, `latency_histogram`), the reporting functions (`report`), Kafka statistics and errors
//! (`kafka`), the series shown before anything happened (`exported`) and the log limiter. It must
//! not grow code of its own.

mod consumer_errors;
mod describe;
pub(crate) mod exported;
mod health;
mod kafka;
mod latency_histogram;
mod log_limiter;
pub(crate) mod names;
mod report;
mod stats;
mod stuck;

pub(crate) use self::describe::describe_metrics;
pub use self::health::{CONSUMER_ERROR_CLEAR_AFTER, CONSUMER_ERROR_PERSIST_AFTER, Health};
pub(crate) use self::health::{ERROR_LOG_INTERVAL, HealthLimits};
pub(crate) use self::kafka::{
    consumer_error, consumer_error_status, consumer_record, kafka_client_error, kafka_statistics,
};
pub(crate) use self::latency_histogram::LatencyHistogram;
pub(crate) use self::report::*;
pub use self::stats::Stats;
