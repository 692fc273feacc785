//! One event's unit of work as the dispatcher hands it to a worker: its record, what decoding
//! made of it, its assignment generation, its cancel tokens and its trace. Shared by the worker
//! that runs it and the output sink that writes its outputs; it knows neither.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::codec::DecodeError;
use crate::event::RegistrationDecided;
use crate::pipeline::book::Slot;
use crate::pipeline::record::InputRecord;
use crate::telemetry::traces::EventTrace;

/// What a worker is given: a decoded event, or a record that could not be decoded.
#[derive(Debug)]
pub(crate) enum Work {
    Event(RegistrationDecided),
    Poison(DecodeError),
}

/// One unit of work for a worker.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) record: InputRecord,
    pub(crate) work: Work,
    /// The assignment generation of the record's partition when it was consumed.
    pub(crate) generation: u64,
    /// Fires when this job must stop at once: shutdown, or its partition is gone.
    pub(crate) cancel: CancellationToken,
    /// Fires with `cancel`, and also when the partition is revoked: a job whose call is not out
    /// stops waiting to send it (see the worker's `notify_with_retries`).
    pub(crate) unsent: CancellationToken,
    /// The event's trace: its outputs carry its context; with export on, its span and one child
    /// per Alipay+ attempt are recorded.
    pub(crate) trace: EventTrace,
}

impl Job {
    /// Where the dispatcher books it.
    pub(crate) fn slot(&self) -> Slot {
        Slot {
            partition: self.record.partition,
            generation: self.generation,
            offset: self.record.offset,
        }
    }
}

/// The time on tokio's clock (the real one in the service, the simulated one in the simulation).
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Sleeps for `delay`; `false` when `cancel` fired first.
pub(crate) async fn sleep_unless_stopped(cancel: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        biased;
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}
