//! The intake: records taken from the consumer thread in its order (their traces and ages
//! start), restarted partitions, and decoding one record at a time in that order; a transient
//! decode failure (the schema registry) holds the records behind it, not the loop. It never
//! starts jobs or commits: the core decides what starts.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::time::Instant;

use super::{Dispatcher, Payload};
use crate::codec::{DecodeError, EventDecoder};
use crate::config::Ordering;
use crate::event::RegistrationDecided;
use crate::observe;
use crate::pipeline::ages::Taken;
use crate::pipeline::book::{Consumed, Slot, Stage};
use crate::pipeline::decisions::{OrderKey, Ticket};
use crate::pipeline::job::Work;
use crate::pipeline::record::InputRecord;
use crate::telemetry::traces::{self, EventTrace};

/// Pause between attempts to decode a record while the schema registry does not answer.
pub(super) const REGISTRY_RETRY_INITIAL: Duration = Duration::from_millis(200);
const REGISTRY_RETRY_MAX: Duration = Duration::from_secs(10);

pub(super) type Decoded = (
    Slot,
    InputRecord,
    EventTrace,
    Result<RegistrationDecided, DecodeError>,
);
pub(super) type Decoding = Pin<Box<dyn Future<Output = Decoded> + Send>>;

impl Dispatcher {
    pub(super) fn on_record(&mut self, record: InputRecord) {
        self.received.push(record.partition);
        let partition = record.partition;
        match self
            .core
            .consume(partition, record.offset, record.fingerprint())
        {
            Consumed::Ignore => return,
            Consumed::Skip => {
                observe::skipped_finished(partition);
                return;
            }
            Consumed::Track(slot) => {
                let trace = self.take(&record);
                self.undecoded.push_back((slot, record, trace));
            }
            Consumed::Restart { slot, stale } => {
                tracing::warn!(
                    partition,
                    offset = record.offset,
                    "a new record at an offset already consumed (log truncated or topic \
                     recreated): the partition starts over from it"
                );
                observe::partition_restarted(partition);
                if let Some(token) = self.cancels.remove(&(partition, stale)) {
                    token.cancel();
                }
                self.unsent.remove(&(partition, stale));
                self.cancels.insert(
                    (partition, slot.generation),
                    self.worker.hard_stop.child_token(),
                );
                self.forget_undecoded();
                self.ages.forget(partition);
                let trace = self.take(&record);
                self.undecoded.push_back((slot, record, trace));
            }
        }
        observe::record_consumed(&self.worker.stats, partition);
        observe::pending(partition, self.core.book().window_len(partition));
    }

    /// A record will be processed: its trace starts and its age is kept until it is committed.
    fn take(&mut self, record: &InputRecord) -> EventTrace {
        let trace = self.tracing.start_event(traces::Consumed {
            topic: &record.topic,
            group: &self.group,
            partition: record.partition,
            offset: record.offset,
            key: record.key.as_deref(),
            headers: &record.headers,
        });
        self.ages.taken(
            Taken {
                partition: record.partition,
                offset: record.offset,
                timestamp_ms: record.timestamp_ms,
                key: record.key.as_deref(),
                trace_id: trace.trace_id_value(),
            },
            Instant::now().into_std(),
        );
        trace
    }

    /// Drops undecoded records whose slot the core no longer holds (revoked, restarted, stopped).
    pub(super) fn forget_undecoded(&mut self) {
        let core = &self.core;
        let head = self.undecoded.front().map(|(slot, ..)| *slot);
        self.undecoded
            .retain(|(slot, ..)| core.book().stage(*slot) == Some(Stage::Waiting));
        if self.undecoded.front().map(|(slot, ..)| *slot) != head {
            // The record whose decoding waited for a retry is gone (its partition was
            // revoked): the records behind it need not wait out its backoff.
            self.decode_retry = None;
            self.decode_delay = REGISTRY_RETRY_INITIAL;
        }
    }

    /// Decodes records in consumption order until one has to wait for I/O (the schema registry)
    /// or a transient failure's retry.
    pub(super) fn pump_decode(&mut self) {
        while self.decoding.is_none() && self.decode_retry.is_none() {
            let Some((slot, record, trace)) = self.undecoded.pop_front() else {
                return;
            };
            let mut decoding = decode(Arc::clone(&self.decoder), slot, record, trace);
            // Most records need no I/O (a cached schema, or no registry): finish them now.
            match decoding
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
            {
                Poll::Ready(decoded) => self.on_decoded(decoded),
                Poll::Pending => self.decoding = Some(decoding),
            }
        }
    }

    pub(super) fn on_decoded(&mut self, (slot, record, trace, result): Decoded) {
        let work = match result {
            Ok(event) => Work::Event(event),
            Err(error) if error.is_transient() => {
                if self.core.book().stage(slot) != Some(Stage::Waiting) {
                    // Revoked while it was decoded: its next owner decodes it.
                    self.decode_delay = REGISTRY_RETRY_INITIAL;
                    return;
                }
                let delay = self.decode_delay;
                tracing::warn!(
                    %error,
                    partition = slot.partition,
                    offset = slot.offset,
                    trace_id = %trace.trace_id(),
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot decode yet"
                );
                self.undecoded.push_front((slot, record, trace));
                self.decode_retry = Some(Instant::now() + delay);
                self.decode_delay = (delay * 2).min(REGISTRY_RETRY_MAX);
                return;
            }
            Err(error) => Work::Poison(error),
        };
        self.decode_delay = REGISTRY_RETRY_INITIAL;
        let key = self.order_key(slot.partition, &work);
        let accepted = self.core.decoded(Ticket {
            slot,
            key,
            payload: Payload {
                record,
                work,
                trace,
            },
        });
        tracing::trace!(?slot, accepted, "decoded");
    }

    fn order_key(&self, partition: i32, work: &Work) -> Option<OrderKey> {
        match (self.processing.ordering, work) {
            (Ordering::Partition, _) => Some(OrderKey::Partition(partition)),
            (Ordering::Key, Work::Event(event)) => {
                Some(OrderKey::Merchant(event.reference_merchant_id.clone()))
            }
            // An undecodable record has no merchant to wait for.
            (Ordering::Key, Work::Poison(_)) => None,
        }
    }
}

/// Decodes one record; the future owns it and gives it back with the result.
fn decode(
    decoder: Arc<EventDecoder>,
    slot: Slot,
    record: InputRecord,
    trace: EventTrace,
) -> Decoding {
    Box::pin(async move {
        let result = match record.value.as_deref() {
            Some(bytes) => decoder.decode(bytes).await,
            None => Err(DecodeError::Truncated {
                what: "record: it has no value",
            }),
        };
        (slot, record, trace, result)
    })
}

pub(super) async fn next_decoded(decoding: &mut Option<Decoding>) -> Decoded {
    match decoding {
        Some(decoding) => decoding.await,
        None => std::future::pending().await,
    }
}
