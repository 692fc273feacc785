//! regnotify turns `MerchantRegistrationDecided` events consumed from Kafka into signed Alipay+
//! `notifyRegistrationStatus` calls, and reports each outcome back onto Kafka.
//!
//! The modules follow the flow of one event:
//!
//! - [`config`]: the one typed [`config::Settings`], loaded in layers and validated once at start.
//! - [`event`]: the domain records (input event, outcome) and the field rules of the contract.
//! - [`codec`]: Avro decoding of the input (Confluent, single-object, raw) and encoding of outcomes.
//! - [`alipayplus`]: request mapping, RSA signing and verification, the HTTP client and the
//!   classification of every answer.
//! - [`pipeline`]: consume, dispatch in key order, retry, publish, commit (the service itself).
//! - [`simulator`]: an Alipay+ stand-in over HTTP for tests, sandboxes and the demo.
//! - [`keys`]: RSA key loading and generation.
//! - [`observe`]: one function per observable event: logs, metrics, in-process stats.
//! - [`service`]: `regnotify run`, wiring settings, pipeline and signals.
//! - [`demo`]: the whole flow on one machine (mock Kafka cluster, simulator).
//! - [`inspect`]: read-only views of topics and group offsets.
//! - [`tools`]: `produce` and `replay-dlq`, the operator tools that write to Kafka.
//! - [`admin`]: `/metrics`, `/livez`, `/healthz`, `/readyz`.
//! - [`bench`]: `regnotify bench` (signer against OpenSSL, demo scenarios against their bounds)
//!   and `regnotify measure` (the service against a real broker, for the side-by-side with a peer).
//! - [`usage`]: this process's CPU time and peak memory, from `/proc`.
//! - [`telemetry`]: logging set-up.
//! - `fuzzing` (hidden): the entry points of the fuzz targets in `fuzz/` and of their corpus
//!   replay on stable.

pub(crate) mod admin;
pub mod alipayplus;
pub mod bench;
pub mod codec;
pub mod config;
pub mod demo;
pub mod event;
#[doc(hidden)]
pub mod fuzzing;
pub mod inspect;
pub mod keys;
pub mod observe;
pub mod pipeline;
pub mod service;
pub mod simulator;
pub mod telemetry;
pub mod tools;
pub(crate) mod usage;
