//! `regnotify bench`: how close regnotify comes to the machine's limits, in one run that prints a
//! table and a JSON document. It measures
//!
//! - our RSA-2048 signing rate on one core (the aws-lc path the service signs with) against
//!   `openssl speed` on the same machine ([`openssl`]);
//! - demo scenarios (latency 0 and 50 ms, `max_in_flight` 16, 64, 256, key and partition
//!   ordering), each held against its bounds: the CPU bound, cores over the CPU one event cost in
//!   that run, and the latency bound, the events that may be in flight over the latency;
//! - the service alone (`regnotify measure` in a process of its own, at its defaults, latency 0):
//!   its events per CPU-second against OpenSSL's signatures per CPU-second ([`service`]);
//! - the peak RSS of a long demo run against a short one.
//!
//! Each demo run is its own `regnotify demo --json` process, so its peak RSS is its own and no
//! run inherits another's heap, threads or metrics. [`measure`] is the service's side of the
//! comparison with another implementation on a real broker (`scripts/bench-peers.sh`).
//!
//! Nothing here asserts a speed: it reports figures, and the tests only check the arithmetic.
//!
//! By concern: the scenarios and their bounds (`scenarios`), the run (`runner`), the signer
//! (`signer`), the service alone (`service`), the report's data (`report`), the variants' costs
//! (`costs`), the table (`table`) and reading a child's output (`child`); this file re-exports
//! them as `bench::…`.

mod child;
mod costs;
pub mod measure;
pub(crate) mod openssl;
mod report;
mod runner;
mod scenarios;
mod service;
mod signer;
mod table;

pub use report::BenchReport;
pub use runner::{BenchOptions, run};
