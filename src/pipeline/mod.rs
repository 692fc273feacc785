//! The service itself (`regnotify run`): consume decisions, notify Alipay+ in key order with
//! retries, publish each outcome or dead letter, and commit an input offset only once everything
//! before it is acknowledged by Kafka (SPEC sections 1, 4, 5).
//!
//! - [`consumer`]: the polling thread and the rebalance hooks.
//! - [`dispatch`]: the loop that carries out the decisions of [`decisions`] (the [`book`] of
//!   partitions and offsets, and the [`scheduler`]), which hold no I/O and are model-tested.
//! - [`job`]: one event's unit of work, as the dispatcher hands it to a worker.
//! - [`worker`]: one event's notify-retry-publish life.
//! - [`mpp`]: which MPP's credentials, circuit and send rate serve an event.
//! - [`parking`]: in-flight slots given back by jobs that wait for their MPP's circuit.
//! - [`sink`]: where an event's outputs go in either delivery mode, retried until acknowledged.
//! - [`output`]: the idempotent producer for outcomes and dead letters.
//! - [`transactions`]: exactly-once outputs, written with their offsets in Kafka transactions.
//! - [`kafka`]: the Kafka plumbing the pipeline and the tools share (client configuration,
//!   headers, the dead-letter record, permanent errors, commit lists).
//! - [`record`]: the consumed record and the dead-letter headers.
//! - [`watermark`], [`keyed`], [`backoff`]: the pure rules, property-tested.

mod ages;
mod backoff;
mod book;
pub(crate) mod breaker;
mod circuit;
mod consumer;
mod decisions;
mod dispatch;
mod finished;
mod invariant;
mod job;
pub(crate) mod kafka;
mod keyed;
mod mpp;
mod output;
mod parking;
pub(crate) mod record;
mod scheduler;
#[cfg(test)]
mod simulation;
mod sink;
mod transactions;
mod watermark;
mod worker;

pub use decisions::waiting_limit;

use crate::pipeline::circuit::{Circuit, Circuits};
use crate::pipeline::mpp::{Mpp, Mpps};

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::alipayplus::Clients;
use crate::codec::{EventDecoder, OutcomeEncoder, SchemaRegistryClient};
use crate::config::{SchemaRegistrySettings, Settings};
use crate::observe::{Health, Stats};
use crate::pipeline::backoff::RetryBudget;
use crate::pipeline::consumer::Flow;
use crate::pipeline::dispatch::{Dispatcher, DispatcherParts};
use crate::pipeline::output::OutputPublisher;
use crate::pipeline::sink::OutputSink;
use crate::pipeline::worker::WorkerContext;

/// How long a stopping pipeline waits for the transaction writer's last commit.
const WRITER_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
/// How long the spans still buffered at shutdown may take to reach the collector.
const TRACE_EXPORT_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Builds the Schema Registry client the settings describe, if any.
pub(crate) fn schema_registry(
    settings: Option<&SchemaRegistrySettings>,
) -> anyhow::Result<Option<Arc<SchemaRegistryClient>>> {
    let Some(registry) = settings else {
        return Ok(None);
    };
    let auth = registry.username.clone().map(|user| {
        let password = registry
            .password
            .as_ref()
            .map(|p| p.expose().to_string())
            .unwrap_or_default();
        (user, secrecy::SecretString::from(password))
    });
    let client = SchemaRegistryClient::new(&registry.url, auth, registry.request_timeout)
        .context("invalid setting `schema_registry.url`")?;
    Ok(Some(Arc::new(client)))
}

/// Runs the pipeline until `shutdown` fires, then stops cleanly (SPEC 5): finishes work in
/// flight within `shutdown_timeout`, commits, flushes and leaves the group.
pub(crate) async fn run(
    settings: &Settings,
    clients: Clients,
    stats: Arc<Stats>,
    status: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let registry = schema_registry(settings.schema_registry.as_ref())?;
    let traces = crate::telemetry::traces::Tracing::from_settings(&settings.telemetry)?;
    let decoder = Arc::new(EventDecoder::new(
        settings.kafka.input_encoding,
        registry.clone(),
    ));
    let encoder = || {
        OutcomeEncoder::new(
            settings.kafka.output_encoding,
            registry.clone(),
            &settings.kafka.result_topic,
        )
    };
    let processing = &settings.processing;
    let budget = RetryBudget {
        max_attempts: processing.max_attempts,
        max_retry_elapsed: processing.max_retry_elapsed,
        initial: processing.backoff_initial,
        max: processing.backoff_max,
    };
    // Unbounded, so the consumer thread never blocks and keeps serving rebalances; the records
    // in it are bounded by pausing (`consumer::Flow`).
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let flow = Arc::new(Flow::new(
        processing.max_pending_per_partition,
        decisions::waiting_limit(processing.max_in_flight),
    ));
    // Fired by the consumer thread or the transaction writer should either fail for good: the
    // pipeline then stops and the service fails.
    let fatal = CancellationToken::new();
    let consumer_thread = consumer::start(
        &settings.kafka,
        consumer::ConsumerChannels {
            events: events_tx,
            flow: Arc::clone(&flow),
        },
        processing.rebalance_drain_timeout,
        Arc::clone(&status),
        fatal.clone(),
    )
    .context("cannot start kafka consumer")?;
    let transaction_due = processing
        .exactly_once
        .then(|| Arc::new(tokio::sync::Notify::new()));
    let (sink, writer) = if let Some(due) = &transaction_due {
        // One transactional.id for the process's life: a producer that replaces a failed one
        // fences it and completes its open transaction.
        let renew: transactions::Renew = {
            let kafka = settings.kafka.clone();
            let id = transactions::transactional_id(&kafka);
            Arc::new(move || transactions::transactional_producer(&kafka, &id))
        };
        let producer = {
            let renew = Arc::clone(&renew);
            tokio::task::spawn_blocking(move || renew())
                .await
                .context("transactional producer set-up failed")?
                .context("cannot initialise kafka transactions (processing.exactly_once)")?
        };
        let (submitter, submissions) = mpsc::channel(processing.max_in_flight.max(1));
        let writer = transactions::TransactionWriter {
            producer: std::sync::Mutex::new(Arc::new(producer)),
            renew,
            consumer: Arc::clone(&consumer_thread.consumer),
            encoder: Arc::new(encoder()),
            result_topic: settings.kafka.result_topic.clone(),
            dlq_topic: settings.kafka.dlq_topic.clone(),
            consumer_group: settings.kafka.group_id.clone(),
            input_topic: settings.kafka.input_topic.clone(),
            interval: processing.transaction_interval,
            due: Arc::clone(due),
            call_timeout: transactions::TRANSACTION_CALL_TIMEOUT,
            control: control_tx,
            fatal: fatal.clone(),
        };
        // A panic in the writer stops the service at once, not only when it next stops.
        let failed = fatal.clone();
        let writer = tokio::spawn(async move {
            if let Err(error) = tokio::spawn(writer.run(submissions)).await {
                tracing::error!(%error, "transaction writer task failed");
                failed.cancel();
            }
        });
        (OutputSink::Transactional(submitter), Some(writer))
    } else {
        let publisher =
            OutputPublisher::new(&settings.kafka, encoder(), settings.processing.ordering)
                .context("cannot create kafka producer")?;
        (OutputSink::Idempotent(Arc::new(publisher)), None)
    };
    // One circuit per MPP; the board tells the dispatcher when none is closed.
    let circuits = Circuits::new(Arc::clone(&status));
    let mpp = |psp: &str, client| {
        let circuit = Circuit::new(
            settings.alipayplus.circuit_breaker.clone(),
            processing.refused_streak_threshold,
            psp,
            Arc::clone(&circuits),
        );
        let group_limit = settings
            .alipayplus
            .clients
            .get(psp)
            .and_then(|table| table.max_requests_per_second)
            .unwrap_or(settings.alipayplus.max_requests_per_second);
        Mpp::new(psp, client, Arc::new(circuit), group_limit)
    };
    let mpps = Mpps::new(
        mpp(crate::config::DEFAULT_PSP_LABEL, clients.default),
        clients
            .named
            .into_iter()
            .map(|(psp, client)| {
                let built = mpp(&psp, client);
                (psp, built)
            })
            .collect::<Vec<_>>(),
    );
    let worker = Arc::new(WorkerContext {
        mpps,
        parking: parking::Parking::new(processing.max_in_flight),
        sink,
        budget,
        stats,
        health: Arc::clone(&status),
        hard_stop: CancellationToken::new(),
        circuit: circuits,
        jitter: worker::Jitter::from_os(),
    });
    let dispatcher = Dispatcher::new(DispatcherParts {
        processing: processing.clone(),
        topic: settings.kafka.input_topic.clone(),
        consumer: Arc::clone(&consumer_thread.consumer) as Arc<dyn dispatch::Committer>,
        decoder,
        worker,
        status,
        flow,
        control: control_rx,
        transaction_due,
        tracing: traces.clone(),
        group: settings.kafka.group_id.clone(),
        event_stall_after: settings.admin.event_stall_after,
    });
    let stop = CancellationToken::new();
    let exit = {
        let (trigger, failed) = (stop.clone(), fatal.clone());
        let watch = tokio::spawn(async move {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {}
                () = failed.cancelled() => {}
            }
            trigger.cancel();
        });
        let exit = dispatcher.run(events_rx, stop).await;
        watch.abort();
        exit
    };
    // The dispatcher held the last submitter: the writer settles its last batch and ends.
    if let Some(writer) = writer {
        // A coordinator that never answers would keep the writer resuming its last commit.
        match tokio::time::timeout(WRITER_GRACE, writer).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => tracing::error!("transaction writer task failed"),
            Err(_) => tracing::warn!(
                "the last transaction did not finish in time; its events were not committed \
                 and will be consumed again"
            ),
        }
    }
    // The spans of the last events go out (the exporter blocks while it sends).
    tokio::task::spawn_blocking(move || traces.shutdown(TRACE_EXPORT_GRACE))
        .await
        .context("trace exporter did not stop cleanly")?;
    // The consumer leaves the group on its own thread: closing it polls and may block.
    let consumer_healthy = tokio::task::spawn_blocking(move || consumer_thread.stop_and_join())
        .await
        .context("consumer thread did not stop cleanly")?;
    anyhow::ensure!(
        consumer_healthy,
        "the kafka consumer thread failed; see the log above"
    );
    // The consumer thread is healthy, so only the writer can have cancelled `fatal`: its
    // producer failed for good.
    anyhow::ensure!(
        !fatal.is_cancelled(),
        "the transactional producer failed for good (see the log above); stopped without \
         committing the events of its open transaction"
    );
    anyhow::ensure!(
        exit != dispatch::Exit::Fatal,
        "an output record can never be written to kafka (see the log above); stopped without \
         committing the events concerned"
    );
    Ok(())
}
