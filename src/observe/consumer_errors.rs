//! When a Kafka consumer error counts as persistent, and when it is over: the rules behind the
//! consumer-error part of `/readyz` (README, "Health").
//!
//! librdkafka reports consumer errors in two patterns. Most are reported again at every retry
//! (a fetch that fails, a batch that cannot be decompressed, an offset query that fails): such an
//! error is persistent once it has been reported for [`Rules::persist_after`], and over after
//! [`Rules::clear_after`] without a report. A few are reported once while the condition lasts
//! (the subscribed topic does not exist or may not be read, a partition stopped by
//! `auto.offset.reset = error`): those are persistent at once and over only on evidence: a record
//! consumed, or a new assignment, whichever proves the condition gone.
//!
//! Pure: no I/O, no clock (the caller passes `now`), no logging; at most [`MAX_EPISODES`] errors
//! are tracked at a time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::types::RDKafkaErrorCode;

/// Distinct (code, partition) errors tracked at once; the oldest is dropped beyond this.
pub(crate) const MAX_EPISODES: usize = 64;

/// The timing of the rules for errors librdkafka reports at every retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rules {
    /// Reported again and again for this long: persistent.
    pub(crate) persist_after: Duration,
    /// Not reported for this long: over.
    pub(crate) clear_after: Duration,
}

/// What ends an error, by its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ends {
    /// Reported at every retry: over after a quiet interval.
    AfterQuiet,
    /// The subscribed topic does not exist: over once a record arrives or a rebalance assigns
    /// partitions of it (the input topic exists again).
    OnRecordOrAssignment,
    /// The topic may not be read: over once a record arrives (a rebalance proves nothing, and
    /// librdkafka does not report the same denial twice in a row).
    OnRecord,
    /// A partition stopped (`auto.offset.reset = error`): over with the next assignment, which
    /// restarts its fetch (librdkafka reports the error again if the offset is still out of range).
    OnAssignment,
}

impl Ends {
    /// librdkafka's reporting pattern for `code`.
    pub(crate) fn of(code: Option<RDKafkaErrorCode>) -> Ends {
        match code {
            Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
                Ends::OnRecordOrAssignment
            }
            Some(RDKafkaErrorCode::TopicAuthorizationFailed) => Ends::OnRecord,
            Some(RDKafkaErrorCode::AutoOffsetReset) => Ends::OnAssignment,
            _ => Ends::AfterQuiet,
        }
    }
}

/// Monotonic counters the pipeline advances, read at each report and at each settlement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Progress {
    /// Records consumed, all partitions.
    pub(crate) records: u64,
    /// Records consumed from the error's partition, when the partition is known and tracked.
    pub(crate) partition_records: Option<u64>,
    /// Rebalances that assigned at least one partition of the input topic.
    pub(crate) assignments: u64,
}

/// Identifies one error: its code and, when librdkafka named it, its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ErrorKey {
    pub(crate) code: Option<RDKafkaErrorCode>,
    pub(crate) partition: Option<i32>,
}

// `RDKafkaErrorCode` is not `Hash`; its discriminant is the librdkafka code, which agrees with `Eq`.
impl std::hash::Hash for ErrorKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.code.map(|code| code as i32).hash(state);
        self.partition.hash(state);
    }
}

/// One error from its first report until it is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Episode {
    pub(crate) key: ErrorKey,
    pub(crate) first: Instant,
    pub(crate) last: Instant,
    pub(crate) reports: u64,
    /// The counters at the last report.
    seen_at: Progress,
}

impl Episode {
    pub(crate) fn is_persistent(&self, rules: &Rules) -> bool {
        match Ends::of(self.key.code) {
            Ends::AfterQuiet => {
                self.reports >= 2 && self.last.duration_since(self.first) >= rules.persist_after
            }
            Ends::OnRecordOrAssignment | Ends::OnRecord | Ends::OnAssignment => true,
        }
    }

    /// Whether the error is over at `now`, given the counters now.
    fn is_over(&self, rules: &Rules, now: Instant, progress: &Progress) -> bool {
        let partition_moved = matches!(
            (self.seen_at.partition_records, progress.partition_records),
            (Some(then), Some(since)) if since > then
        );
        if partition_moved {
            return true;
        }
        let record = progress.records > self.seen_at.records;
        let assignment = progress.assignments > self.seen_at.assignments;
        match Ends::of(self.key.code) {
            Ends::AfterQuiet => now.saturating_duration_since(self.last) >= rules.clear_after,
            Ends::OnRecordOrAssignment => record || assignment,
            Ends::OnRecord => record,
            Ends::OnAssignment => assignment,
        }
    }
}

/// What one report changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reported {
    /// The error was not being tracked.
    Started,
    /// It was, and still is not persistent, or already was.
    Repeated,
    /// This report made it persistent.
    BecamePersistent,
}

/// The errors being tracked, by key.
#[derive(Debug)]
pub(crate) struct ErrorBook {
    rules: Rules,
    episodes: Vec<Episode>,
}

impl ErrorBook {
    pub(crate) fn new(rules: Rules) -> Self {
        ErrorBook {
            rules,
            episodes: Vec::new(),
        }
    }

    pub(crate) fn rules(&self) -> &Rules {
        &self.rules
    }

    /// One report of `key` at `now`, with the pipeline's counters at that moment. Call
    /// [`ErrorBook::settle`] first, so that an error that was over starts a new episode.
    pub(crate) fn report(&mut self, key: ErrorKey, now: Instant, progress: Progress) -> Reported {
        if let Some(episode) = self.episodes.iter_mut().find(|e| e.key == key) {
            let was_persistent = episode.is_persistent(&self.rules);
            episode.last = episode.last.max(now);
            episode.reports += 1;
            episode.seen_at = progress;
            if !was_persistent && episode.is_persistent(&self.rules) {
                return Reported::BecamePersistent;
            }
            return Reported::Repeated;
        }
        if self.episodes.len() >= MAX_EPISODES
            && let Some(oldest) = (0..self.episodes.len()).min_by_key(|i| self.episodes[*i].last)
        {
            self.episodes.swap_remove(oldest);
        }
        let episode = Episode {
            key,
            first: now,
            last: now,
            reports: 1,
            seen_at: progress,
        };
        let persistent = episode.is_persistent(&self.rules);
        self.episodes.push(episode);
        if persistent {
            Reported::BecamePersistent
        } else {
            Reported::Started
        }
    }

    /// Removes and returns the errors that are over at `now`. `progress` gives the counters now,
    /// for each error's partition.
    pub(crate) fn settle(
        &mut self,
        now: Instant,
        progress: impl Fn(Option<i32>) -> Progress,
    ) -> Vec<Episode> {
        let rules = self.rules;
        let (over, going_on) = std::mem::take(&mut self.episodes)
            .into_iter()
            .partition(|episode| episode.is_over(&rules, now, &progress(episode.key.partition)));
        self.episodes = going_on;
        over
    }

    /// The errors that are persistent now (settle first).
    pub(crate) fn persistent(&self) -> impl Iterator<Item = &Episode> {
        self.episodes
            .iter()
            .filter(|episode| episode.is_persistent(&self.rules))
    }

    /// The episode of `key`, if it is tracked.
    pub(crate) fn get(&self, key: &ErrorKey) -> Option<&Episode> {
        self.episodes.iter().find(|episode| episode.key == *key)
    }
}

/// Where each assigned partition's fetch position stands, from librdkafka's statistics: which
/// partitions have records waiting and a position that has not moved.
#[derive(Debug, Default)]
pub(crate) struct FetchProgress {
    partitions: BTreeMap<i32, Position>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    next_offset: i64,
    high_watermark: i64,
    /// When `next_offset` was first seen at its current value.
    since: Instant,
}

impl FetchProgress {
    /// One statistics report: `(partition, next offset to fetch, high watermark)` of every
    /// partition assigned here. Partitions absent from the report are forgotten.
    pub(crate) fn observe(
        &mut self,
        now: Instant,
        partitions: impl IntoIterator<Item = (i32, i64, i64)>,
    ) {
        let mut observed = BTreeMap::new();
        for (partition, next_offset, high_watermark) in partitions {
            let since = match self.partitions.get(&partition) {
                Some(previous) if previous.next_offset == next_offset => previous.since,
                _ => now,
            };
            observed.insert(
                partition,
                Position {
                    next_offset,
                    high_watermark,
                    since,
                },
            );
        }
        self.partitions = observed;
    }

    /// Partitions with records waiting (high watermark beyond the fetch position) whose fetch
    /// position has not moved for `at_least`.
    pub(crate) fn not_advancing(&self, now: Instant, at_least: Duration) -> Vec<i32> {
        self.partitions
            .iter()
            .filter(|(_, position)| {
                position.next_offset >= 0
                    && position.high_watermark > position.next_offset
                    && now.saturating_duration_since(position.since) >= at_least
            })
            .map(|(partition, _)| *partition)
            .collect()
    }
}

/// The partition an error text names, when it names one. librdkafka writes a partition as
/// `topic [N]` (`Failed to fetch committed offset for group "g" topic t [3]: ...`); most consumer
/// errors (fetch and decompression failures) name none, and then none is claimed.
pub(crate) fn partition_in_text(text: &str) -> Option<i32> {
    text.match_indices(" [").find_map(|(at, _)| {
        let rest = &text[at + 2..];
        let end = rest.find(']')?;
        let digits = &rest[..end];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const RULES: Rules = Rules {
        persist_after: Duration::from_secs(10),
        clear_after: Duration::from_secs(15),
    };

    fn key(code: RDKafkaErrorCode, partition: Option<i32>) -> ErrorKey {
        ErrorKey {
            code: Some(code),
            partition,
        }
    }

    fn secs(start: Instant, secs: f64) -> Instant {
        start + Duration::from_secs_f64(secs)
    }

    fn no_progress(_: Option<i32>) -> Progress {
        Progress::default()
    }

    const FETCH: RDKafkaErrorCode = RDKafkaErrorCode::UnsupportedCompressionType;

    #[test]
    fn a_repeated_error_becomes_persistent_after_persist_after() {
        let start = Instant::now();
        let mut book = ErrorBook::new(RULES);
        let fetch = key(FETCH, None);
        assert_eq!(
            book.report(fetch, start, Progress::default()),
            Reported::Started
        );
        for second in 1..10 {
            let now = secs(start, f64::from(second));
            book.settle(now, no_progress);
            assert_eq!(
                book.report(fetch, now, Progress::default()),
                Reported::Repeated
            );
            assert_eq!(book.persistent().count(), 0, "not yet at {second} s");
        }
        let now = secs(start, 10.0);
        book.settle(now, no_progress);
        assert_eq!(
            book.report(fetch, now, Progress::default()),
            Reported::BecamePersistent
        );
        assert_eq!(book.persistent().count(), 1);
        assert_eq!(
            book.report(fetch, secs(start, 11.0), Progress::default()),
            Reported::Repeated
        );
        let episode = book.get(&fetch).unwrap();
        assert_eq!(episode.reports, 12);
    }

    #[test]
    fn a_single_report_never_becomes_persistent_and_is_forgotten_after_quiet() {
        let start = Instant::now();
        let mut book = ErrorBook::new(RULES);
        book.report(key(FETCH, None), start, Progress::default());
        assert!(book.settle(secs(start, 14.9), no_progress).is_empty());
        assert_eq!(book.persistent().count(), 0);
        let over = book.settle(secs(start, 15.0), no_progress);
        assert_eq!(over.len(), 1);
        assert!(book.get(&key(FETCH, None)).is_none());
    }

    #[test]
    fn a_gap_longer_than_clear_after_starts_a_new_episode() {
        let start = Instant::now();
        let mut book = ErrorBook::new(RULES);
        let fetch = key(FETCH, None);
        book.report(fetch, start, Progress::default());
        book.settle(secs(start, 16.0), no_progress);
        assert_eq!(
            book.report(fetch, secs(start, 16.0), Progress::default()),
            Reported::Started
        );
        book.settle(secs(start, 25.0), no_progress);
        book.report(fetch, secs(start, 25.0), Progress::default());
        assert_eq!(
            book.persistent().count(),
            0,
            "9 s into the new episode, not 25 s"
        );
    }

    #[test]
    fn a_persistent_repeating_error_clears_after_quiet_not_on_records_elsewhere() {
        let start = Instant::now();
        let mut book = ErrorBook::new(RULES);
        let fetch = key(FETCH, None);
        for second in 0..=12 {
            book.report(fetch, secs(start, f64::from(second)), Progress::default());
        }
        assert_eq!(book.persistent().count(), 1);
        // Records keep arriving from other partitions: they prove nothing about this error.
        let flowing = |_: Option<i32>| Progress {
            records: 1_000,
            partition_records: None,
            assignments: 3,
        };
        assert!(book.settle(secs(start, 26.9), flowing).is_empty());
        assert_eq!(book.persistent().count(), 1);
        let over = book.settle(secs(start, 27.0), flowing);
        assert_eq!(over.len(), 1);
        assert_eq!(over[0].reports, 13);
        assert_eq!(book.persistent().count(), 0);
    }

    #[test]
    fn an_error_of_a_known_partition_clears_once_that_partition_delivers_again() {
        let start = Instant::now();
        let mut book = ErrorBook::new(RULES);
        let offsets = key(RDKafkaErrorCode::RequestTimedOut, Some(3));
        let at = |records: u64| Progress {
            records,
            partition_records: Some(records),
            assignments: 0,
        };
        for second in 0..=10 {
            book.report(offsets, secs(start, f64::from(second)), at(5));
        }
        assert_eq!(book.persistent().count(), 1);
        assert!(book.settle(secs(start, 11.0), |_| at(5)).is_empty());
        assert_eq!(book.settle(secs(start, 11.0), |_| at(6)).len(), 1);
    }

    #[test]
    fn a_missing_topic_is_persistent_at_once_and_clears_on_assignment_or_record() {
        let start = Instant::now();
        let missing = key(RDKafkaErrorCode::UnknownTopicOrPartition, None);
        let mut book = ErrorBook::new(RULES);
        assert_eq!(
            book.report(missing, start, Progress::default()),
            Reported::BecamePersistent
        );
        assert_eq!(book.persistent().count(), 1);
        // Reported once: quiet proves nothing.
        assert!(book.settle(secs(start, 3_600.0), no_progress).is_empty());
        let assigned = |_: Option<i32>| Progress {
            assignments: 1,
            ..Progress::default()
        };
        assert_eq!(book.settle(secs(start, 3_601.0), assigned).len(), 1);

        book.report(missing, start, Progress::default());
        let consumed = |_: Option<i32>| Progress {
            records: 1,
            ..Progress::default()
        };
        assert_eq!(book.settle(start, consumed).len(), 1);
    }

    #[test]
    fn an_authorization_failure_clears_only_on_a_record() {
        let start = Instant::now();
        let denied = key(RDKafkaErrorCode::TopicAuthorizationFailed, None);
        let mut book = ErrorBook::new(RULES);
        let before = Progress {
            records: 7,
            partition_records: None,
            assignments: 2,
        };
        book.report(denied, start, before);
        let reassigned = |_: Option<i32>| Progress {
            assignments: 3,
            ..before
        };
        assert!(book.settle(secs(start, 600.0), reassigned).is_empty());
        let consumed = |_: Option<i32>| Progress {
            records: 8,
            ..before
        };
        assert_eq!(book.settle(secs(start, 600.0), consumed).len(), 1);
    }

    #[test]
    fn a_stopped_partition_clears_on_the_next_assignment_not_on_records_elsewhere() {
        let start = Instant::now();
        let stopped = key(RDKafkaErrorCode::AutoOffsetReset, None);
        let mut book = ErrorBook::new(RULES);
        book.report(stopped, start, Progress::default());
        let consumed = |_: Option<i32>| Progress {
            records: 50,
            ..Progress::default()
        };
        assert!(book.settle(secs(start, 600.0), consumed).is_empty());
        let reassigned = |_: Option<i32>| Progress {
            assignments: 1,
            ..Progress::default()
        };
        assert_eq!(book.settle(secs(start, 600.0), reassigned).len(), 1);
    }

    #[test]
    fn errors_are_tracked_per_code_and_partition() {
        let start = Instant::now();
        let mut book = ErrorBook::new(RULES);
        for second in 0..=10 {
            let now = secs(start, f64::from(second));
            book.report(key(FETCH, Some(0)), now, Progress::default());
            book.report(key(FETCH, None), now, Progress::default());
        }
        book.report(
            key(RDKafkaErrorCode::BadCompression, None),
            start,
            Progress::default(),
        );
        let persistent: Vec<_> = book.persistent().map(|e| e.key).collect();
        assert_eq!(persistent, vec![key(FETCH, Some(0)), key(FETCH, None)]);
    }

    #[test]
    fn tracking_is_bounded() {
        let start = Instant::now();
        let mut book = ErrorBook::new(RULES);
        for partition in 0..(MAX_EPISODES as i32 + 10) {
            let now = secs(start, f64::from(partition));
            book.report(key(FETCH, Some(partition)), now, Progress::default());
        }
        assert_eq!(book.episodes.len(), MAX_EPISODES);
        assert!(
            book.get(&key(FETCH, Some(0))).is_none(),
            "the oldest was dropped"
        );
    }

    #[test]
    fn a_partition_with_records_waiting_and_a_still_position_is_not_advancing() {
        let start = Instant::now();
        let mut fetch = FetchProgress::default();
        let after = Duration::from_secs(10);
        // Partition 0 is idle (nothing waiting), 1 is stuck, 2 moves.
        fetch.observe(start, [(0, 4, 4), (1, 0, 4), (2, 10, 20)]);
        fetch.observe(secs(start, 5.0), [(0, 4, 4), (1, 0, 9), (2, 15, 25)]);
        assert!(fetch.not_advancing(secs(start, 5.0), after).is_empty());
        fetch.observe(secs(start, 10.0), [(0, 4, 4), (1, 0, 9), (2, 20, 30)]);
        assert_eq!(fetch.not_advancing(secs(start, 10.0), after), vec![1]);
        // Partition 1 moves again; partition 2 was revoked.
        fetch.observe(secs(start, 15.0), [(0, 4, 4), (1, 2, 9)]);
        assert!(fetch.not_advancing(secs(start, 15.0), after).is_empty());
    }

    #[test]
    fn a_position_not_yet_known_is_not_called_stuck() {
        let start = Instant::now();
        let mut fetch = FetchProgress::default();
        fetch.observe(start, [(0, -1001, 4)]);
        assert!(
            fetch
                .not_advancing(secs(start, 60.0), Duration::from_secs(10))
                .is_empty()
        );
    }

    #[test]
    fn partitions_are_read_only_from_text_that_names_one() {
        assert_eq!(
            partition_in_text(
                r#"Failed to fetch committed offset for group "g" topic decided-1 [3]: Broker: Unknown topic or partition"#
            ),
            Some(3)
        );
        assert_eq!(partition_in_text("decided [12]: fetch failed"), Some(12));
        for text in [
            "Fetch from broker 1 failed at offset 0 (leader epoch 0): Broker: Unsupported compression type",
            "Decompression (codec 0x4) of message at 17 of 312 bytes failed: Local: Not implemented",
            "Subscribed topic not available: decided: Broker: Unknown topic or partition",
            "broker [x]: weird",
            "topic []",
            "topic [-1]",
            "topic [99999999999]",
            "topic [3",
        ] {
            assert_eq!(partition_in_text(text), None, "{text}");
        }
    }
}
