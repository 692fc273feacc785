//! A log rate limiter: at most one line per interval per key, and the next line that is written
//! carries how many repeats were left out before it.
//!
//! Pure: the caller passes the clock, nothing here sleeps, logs or reads the time, and the number
//! of keys it remembers is bounded.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Whether one occurrence should be logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Write the line; `suppressed` occurrences of the same key were left out since the last one.
    Log { suppressed: u64 },
    /// Leave it out; it is counted into the next line of its key.
    Suppress,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    logged_at: Instant,
    suppressed: u64,
}

/// Remembers, per key, when its last line was written and how many repeats it has held back.
#[derive(Debug)]
pub(crate) struct LogLimiter<K> {
    interval: Duration,
    capacity: usize,
    windows: HashMap<K, Window>,
}

impl<K: Eq + Hash + Clone> LogLimiter<K> {
    /// One line per `interval` per key, remembering at most `capacity` keys.
    pub(crate) fn new(interval: Duration, capacity: usize) -> Self {
        debug_assert!(capacity > 0, "a limiter must remember at least one key");
        LogLimiter {
            interval,
            capacity: capacity.max(1),
            windows: HashMap::new(),
        }
    }

    /// Decides about one occurrence of `key` at `now`.
    pub(crate) fn check(&mut self, key: &K, now: Instant) -> Verdict {
        if let Some(window) = self.windows.get_mut(key) {
            if now.saturating_duration_since(window.logged_at) < self.interval {
                window.suppressed += 1;
                return Verdict::Suppress;
            }
            window.logged_at = now;
            return Verdict::Log {
                suppressed: std::mem::take(&mut window.suppressed),
            };
        }
        if self.windows.len() >= self.capacity {
            self.forget_oldest();
        }
        self.windows.insert(
            key.clone(),
            Window {
                logged_at: now,
                suppressed: 0,
            },
        );
        Verdict::Log { suppressed: 0 }
    }

    /// Forgets `key` and returns the repeats it still held back, so that whoever ends the
    /// condition can report them; the next occurrence is logged at once.
    pub(crate) fn forget(&mut self, key: &K) -> u64 {
        self.windows
            .remove(key)
            .map_or(0, |window| window.suppressed)
    }

    /// Makes room for a new key by dropping the one whose last line is oldest (its held-back
    /// count is lost; a full limiter means many distinct keys, each already logged once).
    fn forget_oldest(&mut self) {
        let oldest = self
            .windows
            .iter()
            .min_by_key(|(_, window)| window.logged_at)
            .map(|(key, _)| key.clone());
        if let Some(key) = oldest {
            self.windows.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(10);

    fn at(start: Instant, millis: u64) -> Instant {
        start + Duration::from_millis(millis)
    }

    #[test]
    fn first_occurrence_is_logged_and_repeats_within_the_interval_are_not() {
        let start = Instant::now();
        let mut limiter = LogLimiter::new(INTERVAL, 8);
        assert_eq!(limiter.check(&"a", start), Verdict::Log { suppressed: 0 });
        for millis in (100..10_000).step_by(100) {
            assert_eq!(limiter.check(&"a", at(start, millis)), Verdict::Suppress);
        }
    }

    #[test]
    fn the_next_line_carries_the_count_of_suppressed_repeats() {
        let start = Instant::now();
        let mut limiter = LogLimiter::new(INTERVAL, 8);
        limiter.check(&"a", start);
        for millis in [1, 2, 3, 9_999] {
            assert_eq!(limiter.check(&"a", at(start, millis)), Verdict::Suppress);
        }
        assert_eq!(
            limiter.check(&"a", at(start, 10_000)),
            Verdict::Log { suppressed: 4 }
        );
        // The window restarts at the line just written, and the count starts from zero again.
        assert_eq!(limiter.check(&"a", at(start, 19_999)), Verdict::Suppress);
        assert_eq!(
            limiter.check(&"a", at(start, 20_000)),
            Verdict::Log { suppressed: 1 }
        );
        assert_eq!(
            limiter.check(&"a", at(start, 60_000)),
            Verdict::Log { suppressed: 0 }
        );
    }

    #[test]
    fn keys_are_limited_independently() {
        let start = Instant::now();
        let mut limiter = LogLimiter::new(INTERVAL, 8);
        assert_eq!(
            limiter.check(&("code", Some(1)), start),
            Verdict::Log { suppressed: 0 }
        );
        assert_eq!(
            limiter.check(&("code", Some(2)), at(start, 1)),
            Verdict::Log { suppressed: 0 }
        );
        assert_eq!(
            limiter.check(&("code", None), at(start, 2)),
            Verdict::Log { suppressed: 0 }
        );
        assert_eq!(
            limiter.check(&("code", Some(1)), at(start, 3)),
            Verdict::Suppress
        );
    }

    #[test]
    fn a_flood_becomes_one_line_per_interval() {
        let start = Instant::now();
        let mut limiter = LogLimiter::new(INTERVAL, 8);
        // 20 occurrences a second for a minute.
        let mut lines = 0;
        let mut accounted = 0;
        for millis in (0..60_000).step_by(50) {
            if let Verdict::Log { suppressed } = limiter.check(&"a", at(start, millis)) {
                lines += 1;
                accounted += 1 + suppressed;
            }
        }
        assert_eq!(lines, 6);
        let held_back = limiter.forget(&"a");
        assert_eq!(
            accounted + held_back,
            1_200,
            "every occurrence is either logged or counted"
        );
    }

    #[test]
    fn forget_returns_the_held_back_count_and_restarts_the_key() {
        let start = Instant::now();
        let mut limiter = LogLimiter::new(INTERVAL, 8);
        limiter.check(&"a", start);
        limiter.check(&"a", at(start, 1));
        limiter.check(&"a", at(start, 2));
        assert_eq!(limiter.forget(&"a"), 2);
        assert_eq!(limiter.forget(&"a"), 0);
        assert_eq!(
            limiter.check(&"a", at(start, 3)),
            Verdict::Log { suppressed: 0 }
        );
    }

    #[test]
    fn memory_is_bounded_by_dropping_the_oldest_key() {
        let start = Instant::now();
        let mut limiter = LogLimiter::new(INTERVAL, 2);
        limiter.check(&1, start);
        limiter.check(&2, at(start, 1));
        limiter.check(&3, at(start, 2));
        assert_eq!(limiter.windows.len(), 2);
        // Key 1 was the oldest and was forgotten: it logs again at once.
        assert_eq!(
            limiter.check(&1, at(start, 3)),
            Verdict::Log { suppressed: 0 }
        );
        assert_eq!(limiter.check(&3, at(start, 4)), Verdict::Suppress);
    }
}
