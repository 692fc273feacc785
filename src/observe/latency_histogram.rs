//! A fixed-size latency histogram for the in-process figures (notify and end-to-end quantiles in
//! the demo and the bench): log-linear buckets in microseconds, 64 per power of two, so a
//! quantile is within 1/64 of the exact one, however many samples were recorded.
//!
//! Pure and bounded: it never grows with the number of samples (the list of every sample it
//! replaced grew by 8 bytes a call and was copied whole for each quantile), and it does no I/O.

use std::time::Duration;

/// Values below this many microseconds get a bucket each.
const EXACT: u64 = 128;
/// Buckets per power of two above [`EXACT`].
const SUB_BUCKETS: u64 = 64;
const SUB_BITS: u32 = SUB_BUCKETS.trailing_zeros();
const EXACT_BITS: u32 = EXACT.trailing_zeros();
const BUCKETS: usize = (EXACT + (64 - EXACT_BITS as u64) * SUB_BUCKETS) as usize;

/// Counts of latencies by bucket.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct LatencyHistogram {
    counts: Box<[u64]>,
    total: u64,
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
        }
    }
}

fn bucket_of(micros: u64) -> usize {
    if micros < EXACT {
        return micros as usize;
    }
    let exponent = 63 - micros.leading_zeros();
    let sub = (micros >> (exponent - SUB_BITS)) & (SUB_BUCKETS - 1);
    (EXACT + u64::from(exponent - EXACT_BITS) * SUB_BUCKETS + sub) as usize
}

/// The smallest value and the width of bucket `index`.
fn bucket_bounds(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < EXACT {
        return (index, 1);
    }
    let exponent = (index - EXACT) / SUB_BUCKETS + u64::from(EXACT_BITS);
    let sub = (index - EXACT) % SUB_BUCKETS;
    let width = 1u64 << (exponent - u64::from(SUB_BITS));
    ((1u64 << exponent) + sub * width, width)
}

impl LatencyHistogram {
    pub(crate) fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_of(micros)] += 1;
        self.total += 1;
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> u64 {
        self.total
    }

    /// The `q`-quantile (0..=1): the sample of rank `round((n - 1) q)` in sorted order, given
    /// as the middle of its bucket; `None` without samples.
    pub(crate) fn quantile(&self, q: f64) -> Option<Duration> {
        if self.total == 0 {
            return None;
        }
        let rank = ((self.total - 1) as f64 * q.clamp(0.0, 1.0)).round() as u64;
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen > rank {
                let (low, width) = bucket_bounds(index);
                return Some(Duration::from_micros(low + width / 2));
            }
        }
        None
    }

    /// The samples recorded since `earlier`, a copy of this histogram taken before (the bench
    /// leaves warm-up out this way).
    pub(crate) fn since(&self, earlier: &LatencyHistogram) -> LatencyHistogram {
        let counts: Box<[u64]> = self
            .counts
            .iter()
            .zip(earlier.counts.iter())
            .map(|(now, before)| now.saturating_sub(*before))
            .collect();
        let total = counts.iter().sum();
        LatencyHistogram { counts, total }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut previous_end = 0;
        for index in 0..BUCKETS {
            let (low, width) = bucket_bounds(index);
            assert_eq!(low, previous_end, "bucket {index}");
            assert_eq!(bucket_of(low), index);
            assert_eq!(bucket_of(low + (width - 1)), index);
            previous_end = low.wrapping_add(width);
        }
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    proptest! {
        /// The law: a quantile is within one bucket (1/64 of the value, or 1 µs) of the exact
        /// quantile of the same samples.
        #[test]
        fn quantiles_are_within_a_bucket_of_the_exact_ones(
            samples in proptest::collection::vec(0u64..10_000_000, 1..2_000),
            q in 0.0f64..=1.0,
        ) {
            let mut histogram = LatencyHistogram::default();
            for micros in &samples {
                histogram.record(Duration::from_micros(*micros));
            }
            let mut sorted = samples.clone();
            sorted.sort_unstable();
            let rank = ((sorted.len() - 1) as f64 * q).round() as usize;
            let exact = sorted[rank] as f64;
            let estimate = histogram.quantile(q).map(|d| d.as_micros() as f64);
            let tolerance = (exact / SUB_BUCKETS as f64).max(1.0);
            prop_assert!(
                estimate.is_some_and(|e| (e - exact).abs() <= tolerance),
                "exact {exact}, estimate {estimate:?}"
            );
        }
    }

    #[test]
    fn since_leaves_out_what_was_recorded_before() {
        let mut histogram = LatencyHistogram::default();
        for _ in 0..100 {
            histogram.record(Duration::from_secs(1));
        }
        let warm = histogram.clone();
        for _ in 0..10 {
            histogram.record(Duration::from_millis(1));
        }
        let measured = histogram.since(&warm);
        assert_eq!(measured.len(), 10);
        let p99 = measured.quantile(0.99).map(|d| d.as_micros());
        assert!(p99.is_some_and(|us| (990..=1010).contains(&us)), "{p99:?}");
        assert!(LatencyHistogram::default().quantile(0.5).is_none());
    }
}
