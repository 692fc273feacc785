//! How late each partition is, in time: the age of the next record to commit
//! (`regnotify_consumer_lag_seconds`), the age of the oldest event without its terminal outcome
//! (`regnotify_oldest_unfinished_seconds`), and the events unfinished for longer than
//! `admin.event_stall_after`, each reported once.
//!
//! The dispatcher tells it what it consumed, what reached its terminal outcome and what was
//! committed; it answers when asked. Pure: no clock (the caller passes the instant and the wall
//! time), no I/O. Its memory follows the book's: one entry per consumed offset not committed yet.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

pub(crate) use crate::observe::{PartitionAges, Stalled};

/// Bytes of a record key kept for the stall warning.
const KEY_TEXT_BYTES: usize = 64;

#[derive(Debug, Clone)]
struct Entry {
    /// The record's Kafka timestamp, when it has one.
    timestamp_ms: Option<i64>,
    taken: Instant,
    finished: bool,
    warned: bool,
    key: Box<str>,
    trace_id: u128,
}

/// What a record brings when it is consumed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Taken<'a> {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) trace_id: u128,
}

/// Every owned partition's consumed, uncommitted offsets.
#[derive(Debug, Default)]
pub(crate) struct Ages {
    partitions: HashMap<i32, BTreeMap<i64, Entry>>,
}

impl Ages {
    /// A record was consumed and will be processed.
    pub(crate) fn taken(&mut self, taken: Taken<'_>, now: Instant) {
        let key = taken
            .key
            .map(|key| {
                let text = String::from_utf8_lossy(&key[..key.len().min(KEY_TEXT_BYTES)]);
                text.into_owned().into_boxed_str()
            })
            .unwrap_or_default();
        self.partitions.entry(taken.partition).or_default().insert(
            taken.offset,
            Entry {
                timestamp_ms: taken.timestamp_ms,
                taken: now,
                finished: false,
                warned: false,
                key,
                trace_id: taken.trace_id,
            },
        );
    }

    /// The event at `offset` reached its terminal outcome (its outputs are written or handed to
    /// the transaction).
    pub(crate) fn finished(&mut self, partition: i32, offset: i64) {
        if let Some(entry) = self
            .partitions
            .get_mut(&partition)
            .and_then(|entries| entries.get_mut(&offset))
        {
            entry.finished = true;
        }
    }

    /// A commit of `partition` at `position` landed: every offset below it is committed.
    pub(crate) fn committed_below(&mut self, partition: i32, position: i64) {
        if let Some(entries) = self.partitions.get_mut(&partition) {
            *entries = entries.split_off(&position);
        }
    }

    /// Exactly-once: these offsets were committed with their transaction.
    pub(crate) fn committed(&mut self, partition: i32, offset: i64) {
        if let Some(entries) = self.partitions.get_mut(&partition) {
            entries.remove(&offset);
        }
    }

    /// The partition is no longer processed here (revoked, lost, or started over): forget it.
    pub(crate) fn forget(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Every partition with anything consumed, at `now` (`wall_ms`: the wall clock, which record
    /// timestamps are read against).
    pub(crate) fn sample(&self, now: Instant, wall_ms: i64) -> Vec<PartitionAges> {
        let mut ages: Vec<PartitionAges> = self
            .partitions
            .iter()
            .map(|(&partition, entries)| {
                let lag = entries
                    .values()
                    .next()
                    .and_then(|oldest| oldest.timestamp_ms)
                    .map(|timestamp| {
                        Duration::from_millis(
                            wall_ms.saturating_sub(timestamp).max(0).unsigned_abs(),
                        )
                    })
                    .unwrap_or_default();
                let oldest_unfinished = entries
                    .values()
                    .filter(|entry| !entry.finished)
                    .map(|entry| entry.taken)
                    .min()
                    .map(|taken| now.saturating_duration_since(taken))
                    .unwrap_or_default();
                PartitionAges {
                    partition,
                    lag,
                    oldest_unfinished,
                }
            })
            .collect();
        ages.sort_by_key(|ages| ages.partition);
        ages
    }

    /// Events unfinished for longer than `after` at `now` and not reported before; each is
    /// reported once.
    pub(crate) fn stalled(&mut self, now: Instant, after: Duration) -> Vec<Stalled> {
        let mut stalled = Vec::new();
        for (&partition, entries) in &mut self.partitions {
            for (&offset, entry) in entries.iter_mut() {
                let unfinished_for = now.saturating_duration_since(entry.taken);
                if entry.finished || entry.warned || unfinished_for <= after {
                    continue;
                }
                entry.warned = true;
                stalled.push(Stalled {
                    partition,
                    offset,
                    key: entry.key.clone(),
                    trace_id: entry.trace_id,
                    unfinished_for,
                });
            }
        }
        stalled.sort_by_key(|stalled| (stalled.partition, stalled.offset));
        stalled
    }

    /// Offsets tracked, all partitions.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.partitions.values().map(BTreeMap::len).sum()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(ages: &mut Ages, partition: i32, offset: i64, timestamp_ms: i64, now: Instant) {
        ages.taken(
            Taken {
                partition,
                offset,
                timestamp_ms: Some(timestamp_ms),
                key: Some(b"merchant-1"),
                trace_id: 7,
            },
            now,
        );
    }

    #[test]
    fn lag_is_the_age_of_the_oldest_uncommitted_record_and_oldest_unfinished_skips_finished_ones() {
        let start = Instant::now();
        let mut ages = Ages::default();
        take(&mut ages, 0, 10, 1_000, start);
        take(&mut ages, 0, 11, 2_000, start + Duration::from_secs(1));
        take(&mut ages, 0, 12, 3_000, start + Duration::from_secs(2));
        ages.finished(0, 10);
        let now = start + Duration::from_secs(5);
        assert_eq!(
            ages.sample(now, 11_000),
            vec![PartitionAges {
                partition: 0,
                // Offset 10 is finished but not committed: it is still the next to commit.
                lag: Duration::from_secs(10),
                oldest_unfinished: Duration::from_secs(4),
            }]
        );
        ages.committed_below(0, 11);
        ages.finished(0, 11);
        ages.finished(0, 12);
        let sample = ages.sample(now, 11_000);
        assert_eq!(sample[0].lag, Duration::from_secs(9));
        assert_eq!(sample[0].oldest_unfinished, Duration::ZERO);
        ages.committed_below(0, 13);
        assert_eq!(ages.sample(now, 11_000)[0].lag, Duration::ZERO);
        assert!(ages.is_empty());
    }

    #[test]
    fn exactly_once_commits_remove_exact_offsets_and_a_forgotten_partition_reports_nothing() {
        let start = Instant::now();
        let mut ages = Ages::default();
        take(&mut ages, 1, 5, 1_000, start);
        take(&mut ages, 1, 6, 2_000, start);
        take(&mut ages, 2, 0, 500, start);
        ages.committed(1, 5);
        assert_eq!(ages.sample(start, 4_000)[0].lag, Duration::from_secs(2));
        ages.forget(1);
        let sample = ages.sample(start, 4_000);
        assert_eq!(sample.len(), 1);
        assert_eq!(sample[0].partition, 2);
    }

    #[test]
    fn a_stalled_event_is_reported_once_and_a_finished_one_never() {
        let start = Instant::now();
        let mut ages = Ages::default();
        take(&mut ages, 0, 1, 0, start);
        take(&mut ages, 0, 2, 0, start);
        take(&mut ages, 0, 3, 0, start + Duration::from_secs(50));
        ages.finished(0, 2);
        let after = Duration::from_secs(60);
        assert!(
            ages.stalled(start + after, after).is_empty(),
            "not longer yet"
        );
        let stalled = ages.stalled(start + Duration::from_secs(61), after);
        assert_eq!(
            stalled,
            vec![Stalled {
                partition: 0,
                offset: 1,
                key: "merchant-1".into(),
                trace_id: 7,
                unfinished_for: Duration::from_secs(61),
            }]
        );
        assert!(
            ages.stalled(start + Duration::from_secs(100), after)
                .is_empty()
        );
        let later = ages.stalled(start + Duration::from_secs(111), after);
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].offset, 3);
    }

    #[test]
    fn a_record_from_the_future_or_without_timestamp_has_no_negative_lag() {
        let start = Instant::now();
        let mut ages = Ages::default();
        take(&mut ages, 0, 0, 10_000, start);
        assert_eq!(ages.sample(start, 5_000)[0].lag, Duration::ZERO);
        let mut ages = Ages::default();
        ages.taken(
            Taken {
                partition: 0,
                offset: 0,
                timestamp_ms: None,
                key: Some(&[0xff; 200]),
                trace_id: 0,
            },
            start,
        );
        assert_eq!(ages.sample(start, 5_000)[0].lag, Duration::ZERO);
        let stalled = ages.stalled(start + Duration::from_secs(2), Duration::from_secs(1));
        assert!(stalled[0].key.chars().count() <= KEY_TEXT_BYTES);
    }
}
