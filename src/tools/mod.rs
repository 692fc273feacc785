//! The operator tools of SPEC section 7 that write to Kafka: `regnotify produce` (JSON lines →
//! Avro events on the input topic) and `regnotify replay-dlq` (dead letters back to the input
//! topic, `dlq.*` headers stripped).
//!
//! Both write through the pipeline's own idempotent `acks=all` producer configuration and return
//! only once Kafka has acknowledged every record they sent. Replay remembers its progress in its
//! own consumer group, never the service's, and commits a dead letter only after its copy on the
//! input topic is acknowledged. Blocking librdkafka calls (metadata, watermarks, polls, commits)
//! run on the blocking pool or a dedicated thread, never on an async worker thread. Nothing here
//! decides what becomes of an event: that stays the pipeline's job.
//!
//! One file per command: `produce` and `replay` (`replay-dlq`); this file re-exports them as
//! `tools::…`.

mod produce;
mod replay;

pub use produce::{ProduceOptions, ProduceReport, RefusedLine, produce_jsonl};
pub use replay::{
    ReplayOptions, ReplayReport, ReplayedRecord, parse_dead_letter_reason, replay_dead_letters,
};
