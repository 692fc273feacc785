//! Producing the sample events into the mock cluster, in step with consumption: at most
//! [`PRODUCE_WINDOW`] ahead of the terminal count, because the mock cluster keeps only a few
//! megabytes per partition. Reports where each event was written and what it must end as.
//!
//! Never reads the outputs back, never judges the run.

use std::time::Duration;

use rand::{Rng, RngExt, SeedableRng};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::INPUT_TOPIC;
use super::ledger::{Delivered, Expect};
use super::samples::{expectation, sample_event};
use crate::codec::EventEncoder;
use crate::config::InputEncoding;
use crate::observe::Stats;

/// Events produced ahead of the terminal count; far below what the mock cluster retains.
pub(super) const PRODUCE_WINDOW: u64 = 4_000;

/// What the sample set should end as.
#[derive(Debug, Default)]
pub(super) struct Produced {
    pub(super) decodable: u64,
    pub(super) dead_letters: u64,
}

/// Produces `events` sample events over `merchants` regular merchants, at most `PRODUCE_WINDOW`
/// ahead of the terminal count; `delivered` hears where each one was written and what it must
/// end as.
pub(super) async fn produce_in_step(
    bootstrap: &str,
    events: usize,
    merchants: usize,
    stats: &Stats,
    progress: &indicatif::ProgressBar,
    mut delivered: impl FnMut(Delivered),
) -> anyhow::Result<Produced> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    let encoder = EventEncoder::new(InputEncoding::SingleObject, None, INPUT_TOPIC)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut produced = Produced::default();
    let mut deliveries = Vec::with_capacity(1024);
    for index in 0..events {
        while index as u64 >= stats.terminal() + PRODUCE_WINDOW {
            progress.set_position(stats.terminal());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let expect = expectation(index);
        if expect.outcome {
            produced.decodable += 1;
        }
        if expect.dead_letter {
            produced.dead_letters += 1;
        }
        let (key, value) = match sample_event(index, merchants) {
            Some(event) => {
                let value = encoder.encode(&event).await?;
                (event.reference_merchant_id.into_bytes(), value)
            }
            None => {
                let mut garbage = vec![0u8; rng.random_range(1..64)];
                rng.fill_bytes(&mut garbage);
                garbage[0] = 0x7f;
                (b"poison".to_vec(), garbage)
            }
        };
        let record = FutureRecord::to(INPUT_TOPIC).key(&key).payload(&value);
        let delivery = producer
            .send_result(record)
            .map_err(|(error, _)| anyhow::anyhow!("cannot queue sample event: {error}"))?;
        deliveries.push((expect, delivery));
        if deliveries.len() >= 1024 {
            for (expect, delivery) in deliveries.drain(..) {
                delivered(written(expect, delivery.await?)?);
            }
            progress.set_position(stats.terminal());
        }
    }
    for (expect, delivery) in deliveries {
        delivered(written(expect, delivery.await?)?);
    }
    Ok(produced)
}

/// Where a sample event was written, or why not.
fn written(
    expect: Expect,
    delivery: rdkafka::producer::future_producer::OwnedDeliveryResult,
) -> anyhow::Result<Delivered> {
    let delivery =
        delivery.map_err(|(error, _)| anyhow::anyhow!("sample event not written: {error}"))?;
    Ok(Delivered {
        partition: delivery.partition,
        offset: delivery.offset,
        expect,
    })
}
