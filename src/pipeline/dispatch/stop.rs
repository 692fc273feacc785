//! Stopping: no more records taken, the work that can still settle finished within
//! `shutdown_timeout` (committing as it goes, revokes still answered), the rest cancelled, the
//! commit under way awaited, the finished prefixes committed and the producer flushed. It
//! decides nothing the core does not.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::commits::commit_landed;
use super::{Dispatcher, Exit, sleep_until_opt};
use crate::observe;
use crate::pipeline::consumer::ConsumerEvent;

/// How long a stopping pipeline waits for cancelled workers to notice.
const ABANDON_GRACE: Duration = Duration::from_secs(2);
/// Bound on the producer flush at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

impl Dispatcher {
    /// Stops taking work, lets the work that can still settle finish within `shutdown_timeout`
    /// (committing as it goes), cancels the rest, commits the finished prefixes synchronously
    /// and flushes.
    pub(super) async fn stop(mut self, mut events: mpsc::UnboundedReceiver<ConsumerEvent>) -> Exit {
        self.core.begin_stop();
        self.undecoded.clear();
        self.decoding = None;
        self.decode_retry = None;
        self.publish_pause();
        tracing::info!(
            in_flight = self.core.in_flight(),
            "stopping: finishing work in flight"
        );
        let deadline = Instant::now() + self.processing.shutdown_timeout;
        let mut events_open = true;
        while !self.core.is_fatal() && !self.core.stop_settled() {
            self.status.beat();
            let revoke_deadline = self.pending_revoke.as_ref().map(|revoke| revoke.deadline);
            tokio::select! {
                biased;
                Some(completion) = self.completions.recv() => self.on_completion(completion),
                Some(control) = self.control.recv() => self.on_control(control),
                landed = commit_landed(&mut self.committing), if self.committing.is_some() => {
                    self.on_commit_landed(landed);
                }
                () = sleep_until_opt(revoke_deadline) => self.finish_revoke(),
                // The transaction writer failed for good: what it held can never settle, so
                // waiting out the shutdown timeout for it only delays the exit.
                () = self.worker.sink.writer_gone() => {
                    tracing::warn!(
                        in_flight = self.core.in_flight(),
                        "the transaction writer has ended: abandoning work in flight"
                    );
                    break;
                }
                _ = self.commit_tick.tick() => self.start_commit(),
                () = sleep_until_opt(self.commit_due) => {
                    self.commit_due = None;
                    self.commit_when_free();
                }
                event = events.recv(), if events_open => match event {
                    // Records are no longer taken; revokes are still answered.
                    Some(ConsumerEvent::Record(record)) => self.on_record(record),
                    Some(event) => self.on_event(event),
                    None => events_open = false,
                },
                () = tokio::time::sleep_until(deadline) => {
                    tracing::warn!(
                        in_flight = self.core.in_flight(),
                        "shutdown timeout passed, abandoning work in flight"
                    );
                    break;
                }
            }
            if self.core.revoke_settled() {
                self.finish_revoke();
            }
        }
        self.worker.hard_stop.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(ABANDON_GRACE, self.tasks.wait()).await;
        while let Ok(completion) = self.completions.try_recv() {
            self.on_completion(completion);
        }
        while let Ok(control) = self.control.try_recv() {
            self.on_control(control);
        }
        // The commit under way lands first: the final one must not be overtaken by older positions.
        if let Some((positions, task)) = self.committing.take() {
            let result = match tokio::time::timeout(FLUSH_TIMEOUT, task).await {
                Ok(result) => result,
                Err(_) => Ok(Err(KafkaError::Canceled)),
            };
            self.on_commit_landed((positions, result));
        }
        // A revoke still waiting gets its answer now, so those partitions' prefix is committed.
        self.finish_revoke();
        drop(events);
        // Outputs counted here are already acknowledged, so the commit need not wait for the
        // flush; committing first keeps it inside the shutdown budget.
        let positions = self.core.final_commits();
        let tpl = self.positions(&positions);
        let committed = if tpl.count() == 0 {
            Ok(Ok(()))
        } else {
            tokio::spawn(Arc::clone(&self.consumer).commit(tpl)).await
        };
        let sink = self.worker.sink.clone();
        let flushed = tokio::task::spawn_blocking(move || sink.flush(FLUSH_TIMEOUT)).await;
        if let Ok(Err(error)) = flushed {
            tracing::warn!(%error, "producer flush incomplete");
        }
        match committed {
            Ok(Ok(())) => tracing::info!("stopped: finished offsets committed"),
            Ok(Err(error)) => observe::commit_failed(&error),
            Err(error) => tracing::error!(%error, "final commit task failed"),
        }
        if self.core.is_fatal() {
            Exit::Fatal
        } else {
            Exit::Requested
        }
    }
}
