//! Where an event's outputs go, in either delivery mode: [`OutputSink`] writes them through the
//! idempotent producer ([`super::output`]) and waits for Kafka's acknowledgement, retrying what
//! can be retried, or hands them to the transaction writer ([`super::transactions`]), which
//! commits them with the input offset. It never decides an outcome and never commits offsets.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;

use crate::event::RegistrationNotifyOutcome;
use crate::observe::{self, Stats};
use crate::pipeline::decisions::Finish;
use crate::pipeline::job::{Job, sleep_unless_stopped};
use crate::pipeline::output::{Publish, PublishError};
use crate::pipeline::record::DeadLetter;
use crate::pipeline::transactions::{Submission, Submitter};

/// Bounds of the pause between attempts to write an output Kafka did not acknowledge.
const PUBLISH_RETRY_INITIAL: Duration = Duration::from_millis(100);
const PUBLISH_RETRY_MAX: Duration = Duration::from_secs(5);

/// Where an event's outputs go.
#[derive(Debug, Clone)]
pub(crate) enum OutputSink {
    /// At-least-once: written by the idempotent producer, each retried until acknowledged.
    Idempotent(Arc<dyn Publish>),
    /// Exactly-once: handed to the transaction writer, which commits them with the offset.
    Transactional(Submitter),
}

impl OutputSink {
    /// Resolves once the transaction writer has ended (never at-least-once): nothing handed to
    /// it can settle any more.
    pub(crate) async fn writer_gone(&self) {
        match self {
            OutputSink::Transactional(submitter) => submitter.closed().await,
            OutputSink::Idempotent(_) => std::future::pending().await,
        }
    }

    /// Writes an event's outputs: [`Finish::Terminal`] once Kafka acknowledged them,
    /// [`Finish::Submitted`] once the transaction writer holds them, [`Finish::Abandoned`] when
    /// the job was cancelled first, [`Finish::Fatal`] when Kafka can never accept them.
    pub(crate) async fn write(
        &self,
        stats: &Stats,
        job: &Job,
        letter: Option<&DeadLetter>,
        outcome: Option<&RegistrationNotifyOutcome>,
    ) -> Finish {
        let cancel = &job.cancel;
        let publisher = match self {
            OutputSink::Transactional(submitter) => {
                let submission = Submission {
                    record: job.record.clone(),
                    generation: job.generation,
                    dead_letter: letter.cloned(),
                    outcome: outcome.cloned(),
                    trace: job.trace.headers(),
                    dead_letter_trace: job.trace.dead_letter_headers(),
                };
                return tokio::select! {
                    biased;
                    sent = submitter.send(submission) => match sent {
                        Ok(()) => Finish::Submitted,
                        Err(_) => Finish::Abandoned,
                    },
                    () = cancel.cancelled() => Finish::Abandoned,
                };
            }
            OutputSink::Idempotent(publisher) => publisher,
        };
        let started = std::time::Instant::now();
        let finish = Self::write_acknowledged(publisher, stats, job, letter, outcome).await;
        if finish == Finish::Terminal && (letter.is_some() || outcome.is_some()) {
            observe::outputs_acknowledged(stats, started.elapsed());
        }
        finish
    }

    /// The at-least-once path of [`write`](Self::write): until Kafka acknowledged every record.
    async fn write_acknowledged(
        publisher: &Arc<dyn Publish>,
        stats: &Stats,
        job: &Job,
        letter: Option<&DeadLetter>,
        outcome: Option<&RegistrationNotifyOutcome>,
    ) -> Finish {
        let cancel = &job.cancel;
        // The dead letter first, then the outcome, each retried on its own: retrying them as a
        // pair would write a new copy of an acknowledged dead letter on every retry of the
        // outcome.
        if let Some(letter) = letter {
            let letter_trace = job.trace.dead_letter_headers();
            let published = until_acknowledged(stats, cancel, || {
                publisher.dead_letter(&job.record, letter, &letter_trace)
            })
            .await;
            if published != Finish::Terminal {
                return published;
            }
        }
        match outcome {
            Some(outcome) => {
                let trace = job.trace.headers();
                until_acknowledged(stats, cancel, || publisher.outcome(outcome, &trace)).await
            }
            None => Finish::Terminal,
        }
    }

    /// Waits until every record handed to the idempotent producer is acknowledged or `timeout`
    /// passes. (The transaction writer settles its own records.)
    pub(crate) fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        match self {
            OutputSink::Idempotent(publisher) => publisher.flush(timeout),
            OutputSink::Transactional(_) => Ok(()),
        }
    }
}

/// Retries a write until Kafka acknowledges it.
async fn until_acknowledged<F, Fut>(
    stats: &Stats,
    cancel: &tokio_util::sync::CancellationToken,
    mut publish: F,
) -> Finish
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), PublishError>>,
{
    let mut delay = PUBLISH_RETRY_INITIAL;
    loop {
        let result = tokio::select! {
            biased;
            result = publish() => result,
            () = cancel.cancelled() => return Finish::Abandoned,
        };
        match result {
            Ok(()) => return Finish::Terminal,
            Err(error) if error.is_permanent() => {
                observe::publish_fatal(stats, &error);
                return Finish::Fatal;
            }
            Err(error) => {
                observe::publish_failed(stats, &error, delay);
                if !sleep_unless_stopped(cancel, delay).await {
                    return Finish::Abandoned;
                }
                delay = (delay * 2).min(PUBLISH_RETRY_MAX);
            }
        }
    }
}
