//! The integration tests: one binary, one module per suite (`cargo test --test it pipeline::`
//! runs one suite). One binary links librdkafka and aws-lc once instead of once per suite, and
//! libtest keeps its test threads busy across suites instead of waiting for each suite's slowest
//! test.
//!
//! [`common`] is the harness every Kafka suite shares; CI's real-broker step runs again every
//! suite that uses it (`use crate::common;`), against a real broker.

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
