//! `regnotify demo`: the whole flow on one machine with nothing installed. It starts librdkafka's
//! mock cluster in process (real Kafka protocol over TCP on 127.0.0.1), an in-process Alipay+
//! simulator with fresh keys, produces sample events — mostly valid, some REJECTED decisions, and
//! a few of each failure kind — runs the real pipeline against them and prints a summary.
//!
//! Events are produced in step with consumption (a bounded window ahead of the terminal count),
//! because the mock cluster, like a real broker's retention, keeps only a few megabytes per
//! partition. The demo never judges its own success by its own counters alone: it reads the
//! result and dead-letter topics back (streaming, keeping one bit per input offset, so the check
//! holds at any run length the mock cluster can store) and asks the group coordinator for
//! committed offsets.
//!
//! `--soak` ([`soak`]) reads the outputs while the run goes on instead, for runs longer than the
//! mock cluster can hold, and reports throughput, memory, descriptors and threads over time.
//!
//! Besides correctness it measures itself for `regnotify bench`: events/s, CPU time and quantiles
//! over the window from the first record consumed to the last terminal outcome (the consumer
//! group's start-up left out), and the process's peak RSS.
//!
//! Each concern in its own file: the options (`options`), the sample mix (`samples`), producing
//! in step (`produce`), the rig (`rig`: mock cluster, simulator, pipeline), merchant order
//! (`order`), the plain run and its measurements (`plain`), the read-back (`verify`), the
//! summary and its table (`summary`), the soak ([`soak`]) and its books (`ledger`). This file
//! holds the topology the parts share and re-exports what callers use.

mod ledger;
mod options;
mod order;
mod plain;
mod produce;
mod progress;
mod rig;
mod samples;
pub mod soak;
mod summary;
mod trace_sink;
mod verify;

pub use options::DemoOptions;
pub use plain::run;
pub use summary::DemoSummary;

const INPUT_TOPIC: &str = "merchant.registration.decided";
const RESULT_TOPIC: &str = "merchant.registration.notify-result";
const DLQ_TOPIC: &str = "merchant.registration.decided.dlq";
pub(crate) const INPUT_PARTITIONS: i32 = 4;
/// The mock cluster keeps at most 5 MB or 100,000 records per partition and drops the oldest
/// beyond that; eight partitions hold the outcomes of about 250,000 events for the read-back.
const RESULT_PARTITIONS: i32 = 8;
const CLIENT_ID: &str = "DEMO_CLIENT";
