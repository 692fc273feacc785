//! The consumer thread: creating and subscribing the consumer, the thread that polls it (holding
//! the intake while too many events wait, applying the pause plan, handing records to the
//! dispatcher in librdkafka's order), and stopping it. It never blocks on the dispatcher: the
//! channel is unbounded, so the member stays in its group however slow the dispatcher is.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::context::{Applied, PipelineContext};
use super::flow::Flow;
use super::waker;
use super::{ConsumerEvent, PipelineConsumer};
use crate::config::KafkaSettings;
use crate::observe::Health;
use crate::pipeline::kafka::{consumer_config, read_headers};
use crate::pipeline::record::InputRecord;

/// How long one poll waits for a record; bounds how late the thread notices a stop.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// The longest the thread holds off polling while too many events wait. librdkafka keeps what
/// it fetched ahead meanwhile; a pause would drop it, to be fetched again after the resume (which
/// the waker asks librdkafka to do at once, where on its own it looked only on its next wake-up,
/// up to a second later: bursts every 500 ms to 1 s, the pipeline idle between them, measured on
/// the demo before there was a waker). Held longer than this, every partition
/// pauses and the thread polls again, so rebalances are served: the hold delays one by at most
/// this much and one [`INTAKE_HOLD_STEP`].
pub(super) const INTAKE_HOLD_MAX: Duration = Duration::from_millis(500);
/// One wait for room within that hold; bounds how late the thread notices a stop.
const INTAKE_HOLD_STEP: Duration = Duration::from_millis(50);

/// A running consumer thread.
pub(crate) struct ConsumerThread {
    pub(crate) consumer: Arc<PipelineConsumer>,
    stop: Arc<AtomicBool>,
    failed: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ConsumerThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerThread").finish_non_exhaustive()
    }
}

/// The channels a consumer thread reports on, and the flow state it shares with the dispatcher.
#[derive(Debug)]
pub(crate) struct ConsumerChannels {
    pub(crate) events: mpsc::UnboundedSender<ConsumerEvent>,
    pub(crate) flow: Arc<Flow>,
}

/// Creates the consumer, subscribes and starts polling on its own thread. Should the thread die,
/// `fatal` is cancelled, which stops the pipeline.
pub(crate) fn start(
    kafka: &KafkaSettings,
    channels: ConsumerChannels,
    drain_timeout: Duration,
    health: Arc<Health>,
    fatal: CancellationToken,
) -> anyhow::Result<ConsumerThread> {
    let context = PipelineContext {
        events: channels.events.clone(),
        flow: Arc::clone(&channels.flow),
        applied: Mutex::new(Applied::default()),
        topic: kafka.input_topic.clone(),
        drain_timeout,
        health,
    };
    let consumer: PipelineConsumer = consumer_config(kafka).create_with_context(context)?;
    consumer.subscribe(&[&kafka.input_topic])?;
    let consumer = Arc::new(consumer);
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicBool::new(false));
    let events = channels.events;
    let flow = channels.flow;
    let handle = std::thread::Builder::new()
        .name("regnotify-consumer".into())
        .spawn({
            let consumer = Arc::clone(&consumer);
            let (stop, failed) = (Arc::clone(&stop), Arc::clone(&failed));
            let topic = kafka.input_topic.clone();
            move || {
                let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    // The waker lives as long as the poll loop: the loop's end (a return or a
                    // panic) sets `done` and closes its channel, and the scope joins it before
                    // the thread ends.
                    let done = AtomicBool::new(false);
                    std::thread::scope(|scope| {
                        let _done = SetOnDrop(&done);
                        let (resumed, wakes) = std::sync::mpsc::channel();
                        let (consumer, topic, done) = (&*consumer, topic.as_str(), &done);
                        let waker = std::thread::Builder::new()
                            .name("regnotify-fetch-waker".into())
                            .spawn_scoped(scope, move || run_waker(consumer, topic, wakes, done));
                        if let Err(error) = waker {
                            tracing::warn!(
                                %error,
                                "no fetch waker: a resumed partition may wait up to a second"
                            );
                        }
                        poll_loop(consumer, &events, &flow, &stop, &resumed);
                    })
                }));
                if polled.is_err() {
                    tracing::error!("consumer thread failed; stopping the pipeline");
                    failed.store(true, Ordering::SeqCst);
                    fatal.cancel();
                }
            }
        })?;
    Ok(ConsumerThread {
        consumer,
        stop,
        failed,
        handle: Some(handle),
    })
}

impl ConsumerThread {
    /// Stops polling and waits for the thread; `false` when the thread had failed. Call from a
    /// blocking context.
    pub(crate) fn stop_and_join(mut self) -> bool {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take()
            && handle.join().is_err()
        {
            return false;
        }
        !self.failed.load(Ordering::SeqCst)
    }
}

/// Sets its flag when dropped: at the end of the scope's body, returned or unwound.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The waker's thread. A waker that failed leaves resumes to librdkafka's own wake-ups (up to a
/// second late); it never takes the consumer thread down.
fn run_waker(
    consumer: &PipelineConsumer,
    topic: &str,
    resumed: std::sync::mpsc::Receiver<i32>,
    done: &AtomicBool,
) {
    let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
        waker::run(consumer, topic, resumed, done)
    }));
    if ran.is_err() {
        tracing::error!("fetch waker failed: a resumed partition may wait up to a second");
    }
}

fn poll_loop(
    consumer: &PipelineConsumer,
    events: &mpsc::UnboundedSender<ConsumerEvent>,
    flow: &Flow,
    stop: &AtomicBool,
    resumed: &std::sync::mpsc::Sender<i32>,
) {
    let health = &consumer.context().health;
    let mut last_recheck = Instant::now();
    let mut held_since: Option<Instant> = None;
    while !stop.load(Ordering::SeqCst) {
        let context = consumer.context();
        // A partition paused by the counts is let go by no plan change: look again regularly.
        if last_recheck.elapsed() >= POLL_INTERVAL {
            last_recheck = Instant::now();
            if context.paused_by_counts() {
                context.recheck();
            }
        }
        // Too many events wait: take nothing more on until the dispatcher starts some, rather
        // than pause (see INTAKE_HOLD_MAX); held too long, pause every partition and poll on.
        if flow.stalled() {
            if flow.wait_for_room(Duration::ZERO) {
                flow.set_stalled(false);
                held_since = None;
                context.recheck();
            }
        } else {
            let since = *held_since.get_or_insert_with(Instant::now);
            if flow.wait_for_room(INTAKE_HOLD_STEP) {
                held_since = None;
            } else if since.elapsed() < INTAKE_HOLD_MAX {
                continue;
            } else {
                tracing::debug!("intake held too long: pausing every partition");
                flow.set_stalled(true);
                context.recheck();
            }
        }
        for partition in context.apply_pause(consumer) {
            // Without it a resumed partition may wait up to a second to be fetched (see waker).
            let _ = resumed.send(partition);
        }
        let message = match consumer.poll(POLL_INTERVAL) {
            None => continue,
            Some(Err(error)) => {
                crate::observe::consumer_error(health, &error);
                continue;
            }
            Some(Ok(message)) => message,
        };
        crate::observe::consumer_record(health, message.partition());
        let record = InputRecord {
            topic: Arc::from(message.topic()),
            partition: message.partition(),
            offset: message.offset(),
            timestamp_ms: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers: read_headers(&message),
        };
        let partition = record.partition;
        let full = flow.sent(partition);
        if events.send(ConsumerEvent::Record(record)).is_err() {
            break;
        }
        if full {
            // Worked out again before the next poll: nothing more of it is taken on.
            consumer.context().recheck();
        }
    }
}
