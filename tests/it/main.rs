//! regnotify's integration tests: one binary (one link of librdkafka and aws-lc), one module per
//! suite. Every suite built on the shared harness ([`common`]) runs on librdkafka's mock cluster
//! here and again, in CI's real-broker step, against a real Apache Kafka broker, selected by
//! module path: `cargo test --test it -- pipeline::`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod alipayplus;
mod circuit;
mod cli;
mod codec;
mod crash;
mod demo;
mod external_signature;
mod faults;
mod finished_notes;
mod fuzz_corpus;
mod hostile_alipayplus;
mod mpp;
mod odd_headers;
mod operations;
mod pipeline;
mod shutdown;
mod stalls;
mod tools;
