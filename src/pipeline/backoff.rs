//! How long to wait before retrying a notify, when to give up, and how fast to send after
//! Alipay+ says we send too fast.
//!
//! It owns the arithmetic of SPEC section 4: the retry budget (`max_attempts`,
//! `max_retry_elapsed`), exponential backoff with full jitter from `backoff_initial` to
//! `backoff_max`, and the "slow the send rate" answer to `REQUEST_TRAFFIC_EXCEED_LIMIT`. It never
//! sleeps and never reads a clock: elapsed time and `Instant`s come in as arguments, randomness
//! through the caller's RNG, so every decision is testable without waiting.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::{Rng, RngExt};

/// The retry budget of one event: how many HTTP calls it may take and for how long it may retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryBudget {
    /// HTTP calls one event may take in all, the first one included.
    pub(crate) max_attempts: u32,
    /// How long after the first call a retry may still start. It bounds when the last call
    /// starts, not when it ends: that call may take up to the request timeout more.
    pub(crate) max_retry_elapsed: Duration,
    /// The ceiling of the first retry's delay.
    pub(crate) initial: Duration,
    /// The highest ceiling any retry's delay can reach.
    pub(crate) max: Duration,
}

impl Default for RetryBudget {
    /// The SPEC defaults: 8 attempts, 10 minutes, from 200 ms up to 30 s.
    fn default() -> Self {
        Self {
            max_attempts: 8,
            max_retry_elapsed: Duration::from_secs(10 * 60),
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

impl RetryBudget {
    /// The longest delay before retry number `retry` (1 for the first retry):
    /// `min(max, initial * 2^(retry - 1))`, saturating instead of overflowing for any `retry`.
    /// Retry 0 is the first call itself, which waits for nothing.
    pub(crate) fn ceiling(&self, retry: u32) -> Duration {
        let Some(doublings) = retry.checked_sub(1) else {
            return Duration::ZERO;
        };
        let factor = 1u32.checked_shl(doublings).unwrap_or(0);
        if factor == 0 {
            // 2^doublings does not fit in a u32; any non-zero initial has long passed the cap.
            return if self.initial.is_zero() {
                Duration::ZERO
            } else {
                self.max
            };
        }
        self.initial
            .checked_mul(factor)
            .map_or(self.max, |ceiling| ceiling.min(self.max))
    }

    /// The delay before the next call of an event that has made `attempts_made` HTTP calls,
    /// the first of them `elapsed` ago; `None` when the budget is spent and the event must be
    /// dead-lettered with `RETRIES_EXHAUSTED`.
    ///
    /// The delay is uniform in `[0, ceiling(attempts_made)]` (full jitter, so retries of many
    /// events spread out instead of arriving in waves). `None` when `attempts_made` reached
    /// `max_attempts` or when `elapsed` reached `max_retry_elapsed`. A delay that would end past
    /// `max_retry_elapsed` is clamped to end exactly there rather than refused: the event keeps
    /// the attempt it was promised, and the elapsed limit still bounds when the last call starts.
    /// With no call made yet (`attempts_made == 0`) the answer is "now".
    pub(crate) fn next_delay<R: Rng + ?Sized>(
        &self,
        attempts_made: u32,
        elapsed: Duration,
        rng: &mut R,
    ) -> Option<Duration> {
        if attempts_made >= self.max_attempts {
            return None;
        }
        if attempts_made == 0 {
            return Some(Duration::ZERO);
        }
        let remaining = self.max_retry_elapsed.checked_sub(elapsed)?;
        if remaining.is_zero() {
            return None;
        }
        let jittered = rng.random_range(Duration::ZERO..=self.ceiling(attempts_made));
        Some(jittered.min(remaining))
    }
}

/// The lowest send rate throttling can push us to, in requests per second: never stop entirely,
/// or the service could not learn that the limit was lifted. A smaller share of the group's limit
/// (see [`MIN_SHARE_PER_SECOND`]) is the floor instead.
pub(crate) const MIN_RATE_PER_SECOND: f64 = 1.0;

/// The smallest share of the group's `max_requests_per_second` a member is paced to: one request
/// a minute. A member owning few of many partitions under a small limit keeps a share below one
/// a second, so the members together stay within the limit (at one a second each, twelve members
/// of a limit of five sent twelve a second, and Alipay+'s throttling would have dead-lettered
/// their events). A share of nothing cannot be paced; the service never asks for one (a member
/// without partitions keeps its share).
pub(crate) const MIN_SHARE_PER_SECOND: f64 = 1.0 / 60.0;

/// Throttle answers within this long of a decrease do not decrease again: they answer requests
/// sent before the decrease, at the old rate, and would otherwise collapse the rate to the floor.
const DECREASE_COOLDOWN: Duration = Duration::from_secs(1);

/// How long a job waiting for its send slot sleeps at the most before it looks at the slot
/// again: a higher rate may have moved it earlier (see [`AdaptiveRate::respace`]).
pub(crate) const RECHECK: Duration = Duration::from_millis(200);

/// How late a send may be and still count as made at its slot: the timer wakes a job up to a
/// millisecond or so after its slot, which at a high rate is several intervals; moving every
/// later slot for that would slow the pace to the timer's. A burst of what 20 ms allow (2 % of
/// the rate's second) is sent together at the most.
const LATE_AFTER: Duration = Duration::from_millis(20);

/// The span over which the actual send rate is measured, to know what to halve when no rate was
/// enforced yet.
const RATE_WINDOW: Duration = Duration::from_secs(1);

/// A send slot from [`AdaptiveRate::reserve`]. When its send may start is
/// [`AdaptiveRate::due`]'s to say: a change of rate moves the slots not claimed yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SendSlot {
    /// When it was reserved for.
    at: Instant,
    number: u64,
}

/// A client-side send rate that backs off when Alipay+ answers `REQUEST_TRAFFIC_EXCEED_LIMIT`
/// (additive increase, multiplicative decrease) and paces sends to it.
///
/// Without a configured ceiling it paces nothing until the first throttle answer, then halves the
/// rate actually observed. Every send must go through [`reserve_send`](Self::reserve_send), both
/// to be paced and so the observed rate is known.
#[derive(Debug, Clone)]
pub(crate) struct AdaptiveRate {
    /// `max_requests_per_second`, when configured (not 0).
    ceiling: Option<f64>,
    /// Requests per second added to the allowed rate per second without a throttle answer.
    recovery_per_second: f64,
    /// The rate sends are paced to; `None` while nothing limits it.
    allowed: Option<f64>,
    /// When the next reserved send may start.
    next_send_at: Option<Instant>,
    /// Slots reserved and not claimed or given back yet (see [`reserve`](Self::reserve)), by
    /// number, with when each may send; the times never decrease with the number.
    outstanding: BTreeMap<u64, Instant>,
    /// The latest slot claimed by a send.
    last_claimed: Option<Instant>,
    /// Numbers the slots, which may share an instant.
    reservations: u64,
    last_decrease_at: Option<Instant>,
    last_increase_at: Option<Instant>,
    window_started_at: Option<Instant>,
    window_sends: u32,
    previous_window_rate: f64,
}

impl AdaptiveRate {
    /// `max_requests_per_second` as configured (0 = no ceiling); after a throttle the rate
    /// climbs back by `recovery_per_second` requests per second, each second.
    pub(crate) fn new(max_requests_per_second: u32, recovery_per_second: f64) -> Self {
        let ceiling = (max_requests_per_second > 0).then(|| f64::from(max_requests_per_second));
        let recovery_per_second = if recovery_per_second.is_finite() {
            recovery_per_second.max(0.0)
        } else {
            0.0
        };
        Self {
            ceiling,
            recovery_per_second,
            allowed: ceiling,
            next_send_at: None,
            outstanding: BTreeMap::new(),
            last_claimed: None,
            reservations: 0,
            last_decrease_at: None,
            last_increase_at: None,
            window_started_at: None,
            window_sends: 0,
            previous_window_rate: 0.0,
        }
    }

    /// Reserves the next send slot at or after `now` and returns how long to wait for it, the
    /// send counted as made then.
    #[cfg(test)]
    pub(crate) fn reserve_send(&mut self, now: Instant) -> Duration {
        let (slot, wait) = self.reserve(now);
        self.claim(slot, now + wait);
        wait
    }

    /// Claims the outstanding slots due by `now`, in order, each as it becomes due at `now`; how
    /// many were.
    #[cfg(test)]
    fn claim_due(&mut self, now: Instant) -> usize {
        let mut claimed = 0;
        while let Some((&number, &at)) = self.outstanding.first_key_value()
            && at <= now
        {
            self.claim(SendSlot { at, number }, now);
            claimed += 1;
        }
        claimed
    }

    /// Reserves the next send slot at or after `now`: the slot, and how long to wait for it.
    /// The caller waits at most [`RECHECK`] at a time and asks [`due`](Self::due) how long is
    /// left (a change of rate moves the slot), then either [`claim`](Self::claim)s it as it sends or, giving up before,
    /// hands it back with [`release`](Self::release). A job waits for its slot however far ahead it
    /// lies (with a deep backlog, up to `max_in_flight` divided by the rate), so the slots of jobs
    /// stopped by a revoke must come back: kept, they held every later send back by that much
    /// after the next assignment (measured on Kafka 4.1: 7 to 12 s without a call).
    pub(crate) fn reserve(&mut self, now: Instant) -> (SendSlot, Duration) {
        let at = match self.allowed {
            None => now,
            Some(rate) => {
                let slot = self.next_send_at.map_or(now, |next| next.max(now));
                self.next_send_at = Some(slot + Self::interval(rate));
                slot
            }
        };
        self.reservations = self.reservations.wrapping_add(1);
        let slot = SendSlot {
            at,
            number: self.reservations,
        };
        if self.allowed.is_some() {
            self.outstanding.insert(slot.number, at);
        }
        (slot, at.saturating_duration_since(now))
    }

    /// How long `slot` must still wait at `now`: zero once it is due (or not outstanding).
    pub(crate) fn due(&self, slot: SendSlot, now: Instant) -> Duration {
        self.outstanding
            .get(&slot.number)
            .map_or(Duration::ZERO, |at| at.saturating_duration_since(now))
    }

    /// The send of `slot` starts at `now`.
    ///
    /// A send late by more than an interval and more than [`LATE_AFTER`] (the process was
    /// starved of CPU, or stopped) counts as made when it is, and the slots after it move to be
    /// paced from there: kept, every job whose slot passed meanwhile would send at once, more
    /// than the rate allows in the second that follows.
    pub(crate) fn claim(&mut self, slot: SendSlot, now: Instant) {
        // Not outstanding: reserved while nothing limited the rate, at once.
        let Some(at) = self.outstanding.remove(&slot.number) else {
            self.count_send(slot.at);
            return;
        };
        let late = self
            .allowed
            .is_some_and(|rate| now > at + Self::interval(rate).max(LATE_AFTER));
        let sent = if late { now } else { at };
        self.last_claimed = Some(self.last_claimed.map_or(sent, |last| last.max(sent)));
        self.count_send(sent);
        if late {
            self.respace(now);
        }
    }

    /// The job that reserved `slot` gave up before sending. When no later slot is reserved or
    /// claimed, the next reservation starts one interval after the latest that is; a slot given
    /// back between two others leaves its gap (filling it would send two at once).
    pub(crate) fn release(&mut self, slot: SendSlot) {
        let Some(at) = self.outstanding.remove(&slot.number) else {
            return;
        };
        let latest_reserved = self.outstanding.last_key_value().map(|(_, at)| *at);
        let latest = latest_reserved.max(self.last_claimed);
        if latest.is_some_and(|latest| latest > at) {
            return;
        }
        self.next_send_at = match (latest, self.allowed) {
            (Some(latest), Some(rate)) => Some(latest + Self::interval(rate)),
            _ => None,
        };
    }

    /// The time between two sends at `rate` per second. The rate is at least
    /// [`MIN_SHARE_PER_SECOND`], so the interval is at most a minute.
    fn interval(rate: f64) -> Duration {
        Duration::try_from_secs_f64(1.0 / rate).unwrap_or(Duration::ZERO)
    }

    /// Alipay+ answered `REQUEST_TRAFFIC_EXCEED_LIMIT` at `now`: halve the rate.
    pub(crate) fn on_throttled(&mut self, now: Instant) {
        let cooling_down = self
            .last_decrease_at
            .is_some_and(|at| now.saturating_duration_since(at) < DECREASE_COOLDOWN);
        if cooling_down {
            return;
        }
        // Halve what is actually sent: a ceiling far above the real traffic says nothing.
        let observed = self.observed_rate();
        let sending = self
            .allowed
            .map_or(observed, |allowed| allowed.min(observed));
        self.allowed = Some((sending / 2.0).max(self.floor()));
        self.last_decrease_at = Some(now);
        self.last_increase_at = Some(now);
        self.respace(now);
    }

    /// Alipay+ answered at `now` without throttling: let the rate climb back, up to the ceiling.
    pub(crate) fn on_accepted(&mut self, now: Instant) {
        let Some(allowed) = self.allowed else {
            return;
        };
        let since = self
            .last_increase_at
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        self.last_increase_at = Some(now);
        let raised = allowed + self.recovery_per_second * since.as_secs_f64();
        self.allowed = Some(self.ceiling.map_or(raised, |ceiling| raised.min(ceiling)));
        if self.allowed != Some(allowed) {
            self.respace(now);
        }
    }

    /// A new ceiling (`None`: none): this member's share of the group's
    /// `max_requests_per_second`, which changes with the partitions it owns. A rate lowered by
    /// throttling stays lower (and climbs back to the new ceiling); one at the old ceiling moves
    /// to the new one. A share below [`MIN_SHARE_PER_SECOND`] paces to that.
    pub(crate) fn set_ceiling(&mut self, ceiling: Option<f64>, now: Instant) {
        let ceiling = ceiling
            .filter(|ceiling| ceiling.is_finite())
            .map(|ceiling| ceiling.max(MIN_SHARE_PER_SECOND));
        let at_old_ceiling = self.allowed == self.ceiling;
        let before = self.allowed;
        self.allowed = match (self.allowed, ceiling) {
            (_, new) if at_old_ceiling => new,
            (Some(allowed), Some(new)) => Some(allowed.min(new)),
            (allowed, None) => allowed,
            (None, new) => new,
        };
        self.ceiling = ceiling;
        if self.allowed != before {
            self.respace(now);
        }
    }

    /// The rate changed (or a send went late): the slots not claimed yet are paced again at the
    /// rate now allowed, each one interval after the one before it, the first one interval after
    /// the latest send.
    ///
    /// A lower rate moves them later. Kept at the old pace, they would go out at it for as long
    /// as they reach ahead (up to `max_in_flight` sends): a member whose share shrinks as others
    /// join would send its old share beside the newcomers' new ones, and a throttled one would
    /// go on at the rate Alipay+ refused. A higher rate moves them earlier, but none to before
    /// [`RECHECK`] from `now`: a waiting job looks at its slot at least that often, so it sees
    /// the earlier time before it comes. Kept, the slots that throttling spread out (a second
    /// apart at the floor) would hold the member at that pace for minutes after the rate
    /// climbed back.
    fn respace(&mut self, now: Instant) {
        let Some(rate) = self.allowed else {
            return;
        };
        let interval = Self::interval(rate);
        let soonest_moved = now + RECHECK;
        let mut previous = self.last_claimed;
        for at in self.outstanding.values_mut() {
            let kept = (*at).min(soonest_moved);
            let paced = previous.map_or(kept, |previous| kept.max(previous + interval));
            *at = paced;
            previous = Some(paced);
        }
        if let Some(latest) = previous {
            self.next_send_at = Some(latest + interval);
        }
    }

    /// The lowest rate throttling lowers to: [`MIN_RATE_PER_SECOND`], or the ceiling when that
    /// is lower (a member's share of a small limit).
    fn floor(&self) -> f64 {
        self.ceiling.map_or(MIN_RATE_PER_SECOND, |ceiling| {
            ceiling.min(MIN_RATE_PER_SECOND)
        })
    }

    /// The rate sends are paced to, in requests per second; `None` while unlimited.
    pub(crate) fn allowed_per_second(&self) -> Option<f64> {
        self.allowed
    }

    fn count_send(&mut self, at: Instant) {
        let started_at = *self.window_started_at.get_or_insert(at);
        let window = at.saturating_duration_since(started_at);
        if window >= RATE_WINDOW {
            self.previous_window_rate = f64::from(self.window_sends) / window.as_secs_f64();
            self.window_started_at = Some(at);
            self.window_sends = 0;
        }
        self.window_sends = self.window_sends.saturating_add(1);
    }

    /// Sends per second lately: the last full window, or the current one if it already holds
    /// more (a burst that started within this window).
    fn observed_rate(&self) -> f64 {
        self.previous_window_rate.max(f64::from(self.window_sends))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    /// A revoke stops every job still waiting for its slot: their slots come back, and the
    /// next assignment's first send waits for nothing (it waited 7 to 12 s on Kafka 4.1 before).
    #[test]
    fn slots_given_back_by_stopped_jobs_do_not_hold_back_the_next_sends() {
        let start = Instant::now();
        let mut rate = AdaptiveRate::new(10, 5.0);
        let (first, wait) = rate.reserve(start);
        assert_eq!(wait, Duration::ZERO);
        rate.claim(first, start);
        // A backlog: 50 jobs wait for slots up to 5 s ahead.
        let waiting: Vec<_> = (0..50).map(|_| rate.reserve(start)).collect();
        assert_eq!(waiting.last().unwrap().1, Duration::from_secs(5));
        // A revoke stops them all, latest first or not.
        for (slot, _) in waiting.iter().rev().step_by(2) {
            rate.release(*slot);
        }
        for (slot, _) in waiting.iter().step_by(2) {
            rate.release(*slot);
        }
        let later = start + Duration::from_millis(300);
        let (slot, wait) = rate.reserve(later);
        assert_eq!(wait, Duration::ZERO, "nothing is ahead of it any more");
        rate.claim(slot, later);
        // Paced again from there.
        assert_eq!(rate.reserve(later).1, Duration::from_millis(100));
    }

    /// A slot given back between two that stay is not reused: the next send would otherwise go
    /// at the same time as a waiting one.
    #[test]
    fn a_slot_given_back_between_others_leaves_its_gap() {
        let start = Instant::now();
        let mut rate = AdaptiveRate::new(10, 5.0);
        let slots: Vec<_> = (0..3).map(|_| rate.reserve(start).0).collect();
        rate.release(slots[1]);
        assert_eq!(
            rate.reserve(start).1,
            Duration::from_millis(300),
            "after the latest reserved slot (200 ms), not in the gap at 100 ms"
        );
        // Released twice, or after it was claimed: nothing moves.
        rate.release(slots[1]);
        rate.claim(slots[0], start);
        rate.release(slots[0]);
        assert_eq!(rate.reserve(start).1, Duration::from_millis(400));
    }

    #[test]
    fn a_new_ceiling_moves_an_unthrottled_rate_and_caps_a_throttled_one() {
        let start = Instant::now();
        let mut rate = AdaptiveRate::new(100, 5.0);
        assert_eq!(rate.allowed_per_second(), Some(100.0));
        // A third of the group's partitions: a third of its limit.
        rate.set_ceiling(Some(100.0 / 3.0), start);
        assert_eq!(rate.allowed_per_second(), Some(100.0 / 3.0));
        // Paced to it: 34 sends take about a second.
        let waits: Vec<Duration> = (0..34).map(|_| rate.reserve_send(start)).collect();
        assert!(waits[33] >= Duration::from_millis(980), "{:?}", waits[33]);
        // Throttled: halved from what was sent; a larger share later does not undo that at once.
        rate.on_throttled(start + Duration::from_secs(1));
        let throttled = rate.allowed_per_second().unwrap();
        assert!(throttled < 100.0 / 3.0, "{throttled}");
        rate.set_ceiling(Some(50.0), start);
        assert_eq!(rate.allowed_per_second(), Some(throttled));
        // It climbs back, now up to the new ceiling.
        rate.on_accepted(start + Duration::from_secs(60));
        assert_eq!(rate.allowed_per_second(), Some(50.0));
        // A smaller share caps it at once; a share of nothing, the floor.
        rate.set_ceiling(Some(10.0), start);
        assert_eq!(rate.allowed_per_second(), Some(10.0));
        rate.set_ceiling(Some(0.0), start);
        assert_eq!(rate.allowed_per_second(), Some(MIN_SHARE_PER_SECOND));
        // No group limit: unlimited again unless throttling set a rate.
        let mut free = AdaptiveRate::new(0, 5.0);
        free.set_ceiling(None, start);
        assert_eq!(free.allowed_per_second(), None);
    }

    /// Claims every slot as soon as it is due, millisecond by millisecond from `from` for
    /// `span`; the send times.
    fn claim_as_due(rate: &mut AdaptiveRate, from: Instant, span: Duration) -> Vec<Instant> {
        let mut sent = Vec::new();
        let mut now = from;
        while now <= from + span {
            for _ in 0..rate.claim_due(now) {
                sent.push(now);
            }
            now += Duration::from_millis(1);
        }
        sent
    }

    /// A member with a backlog at `limit` a second: `reserved` slots taken at once, and those due
    /// in the first `first` claimed as they came. The rate, the start, the slots and the sends.
    fn backlog(
        limit: u32,
        reserved: usize,
        first: Duration,
    ) -> (AdaptiveRate, Instant, Vec<SendSlot>, Vec<Instant>) {
        let start = Instant::now();
        let mut rate = AdaptiveRate::new(limit, 5.0);
        let slots = (0..reserved).map(|_| rate.reserve(start).0).collect();
        let sent = claim_as_due(&mut rate, start, first);
        (rate, start, slots, sent)
    }

    /// The most sends in any one second of `sent` that starts at or after `from`.
    fn most_in_a_second(sent: &[Instant], from: Instant) -> usize {
        sent.iter()
            .filter(|start| **start >= from)
            .map(|start| {
                sent.iter()
                    .filter(|at| **at >= *start && **at < *start + Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    /// Issue 21, item 5: a member whose share shrinks (members joined) has sends reserved at
    /// its old pace, up to `max_in_flight` of them; they move to the new pace, or the member
    /// would send its old share for seconds beside the newcomers' new ones.
    #[test]
    fn a_smaller_share_moves_the_sends_reserved_at_the_old_pace() {
        // A backlog at 256 in flight: slots reserved 2.56 s ahead.
        let (mut rate, start, slots, mut sent) = backlog(100, 256, Duration::from_millis(499));
        assert_eq!(sent.len(), 50);
        let change = start + Duration::from_millis(500);
        rate.set_ceiling(Some(100.0 / 3.0), change);
        // The next slot is one new interval after the last send, not 10 ms.
        let due = rate.due(slots[50], change).as_micros();
        assert!((19_990..=20_010).contains(&due), "{due} µs");
        sent.extend(claim_as_due(&mut rate, change, Duration::from_secs(10)));
        assert!(
            most_in_a_second(&sent, change) <= 34,
            "{} sends in a second after the share shrank to 33.3/s",
            most_in_a_second(&sent, change)
        );
        assert_eq!(sent.len(), 256, "every reserved send goes out");
        // New reservations queue behind the moved ones.
        let (_, wait) = rate.reserve(change + Duration::from_secs(1));
        assert!(wait > Duration::from_secs(5), "{wait:?}");
    }

    /// A throttling answer halves the rate: the sends already reserved slow down with it.
    #[test]
    fn a_throttling_answer_slows_the_sends_already_reserved() {
        let (mut rate, start, _, mut sent) = backlog(64, 128, Duration::from_millis(999));
        assert_eq!(sent.len(), 64);
        let throttled = start + Duration::from_secs(1);
        rate.on_throttled(throttled);
        assert_eq!(rate.allowed_per_second(), Some(32.0));
        sent.extend(claim_as_due(&mut rate, throttled, Duration::from_secs(5)));
        assert!(most_in_a_second(&sent, throttled) <= 33);
        assert_eq!(sent.len(), 128);
    }

    /// A process starved of CPU for a while wakes with many jobs whose slots have passed: they
    /// are paced from the first late send on, not sent together.
    #[test]
    fn sends_late_after_a_stall_are_paced_from_there() {
        let (mut rate, start, _, mut sent) = backlog(10, 40, Duration::from_millis(999));
        assert_eq!(sent.len(), 10);
        // Nothing runs for 1.5 s; 15 slots pass meanwhile.
        let woke = start + Duration::from_millis(2_500);
        sent.extend(claim_as_due(&mut rate, woke, Duration::from_secs(5)));
        assert_eq!(sent.len(), 40, "every reserved send goes out");
        assert_eq!(sent[10], woke, "the first late one at once");
        assert_eq!(
            sent[11],
            woke + Duration::from_millis(100),
            "the next one interval later"
        );
        assert!(most_in_a_second(&sent, start) <= 10);
        // At a high rate a timer's lateness spans intervals: it moves nothing either.
        let mut fast = AdaptiveRate::new(5_000, 5.0);
        let slots: Vec<_> = (0..10).map(|_| fast.reserve(start).0).collect();
        fast.claim(slots[0], start + Duration::from_millis(1));
        assert_eq!(fast.due(slots[9], start), Duration::from_micros(1_800));
        // A send late by less than an interval (timer jitter) moves nothing.
        let mut rate = AdaptiveRate::new(10, 5.0);
        let slots: Vec<_> = (0..3).map(|_| rate.reserve(start).0).collect();
        rate.claim(slots[0], start + Duration::from_millis(60));
        assert_eq!(rate.due(slots[1], start), Duration::from_millis(100));
    }

    /// A larger share moves the slots reserved at the old pace earlier, to the new one, but none
    /// to within [`RECHECK`] of now: a job waiting for a slot due sooner may not look again
    /// before its old time.
    #[test]
    fn a_larger_share_moves_the_later_slots_earlier() {
        let start = Instant::now();
        let mut rate = AdaptiveRate::new(100, 5.0);
        rate.set_ceiling(Some(25.0), start);
        // At 0, 40, ..., 360 ms.
        let slots: Vec<_> = (0..10).map(|_| rate.reserve(start).0).collect();
        rate.set_ceiling(Some(50.0), start);
        let due: Vec<u128> = slots
            .iter()
            .map(|slot| rate.due(*slot, start).as_millis())
            .collect();
        assert_eq!(due, [0, 40, 80, 120, 160, 200, 220, 240, 260, 280]);
        assert_eq!(rate.reserve(start).1, Duration::from_millis(300));
        assert_eq!(rate.reserve(start).1, Duration::from_millis(320));
    }

    /// Throttling answers a second apart spread the reserved slots out to the floor's pace (a
    /// second apart). Once the rate has climbed back, they move back with it: kept, they held a
    /// member with a backlog (every slot claimed is followed by a new reservation behind the
    /// others) at about one call a second for minutes.
    #[test]
    fn the_reserved_slots_follow_the_rate_back_up_after_throttling() {
        let start = Instant::now();
        let mut rate = AdaptiveRate::new(100, 5.0);
        for _ in 0..256 {
            rate.reserve(start);
        }
        let mut now = start;
        let mut sent = Vec::new();
        while now < start + Duration::from_secs(40) {
            let elapsed = now.saturating_duration_since(start);
            // Throttled at 1, 2, ..., 7 s; every other answer accepted as it is sent.
            if (1..=7).contains(&elapsed.as_secs()) && elapsed.subsec_millis() == 0 {
                rate.on_throttled(now);
            }
            for _ in 0..rate.claim_due(now) {
                sent.push(now);
                rate.on_accepted(now);
                rate.reserve(now);
            }
            now += Duration::from_millis(1);
        }
        // Climbing 5 a second from the floor, the rate is back at 100 by about 27 s.
        assert_eq!(rate.allowed_per_second(), Some(100.0));
        let late = sent
            .iter()
            .filter(|at| **at >= start + Duration::from_secs(35))
            .count();
        assert!(
            (400..=505).contains(&late),
            "{late} sends from 35 to 40 s, at 100 a second"
        );
    }

    #[test]
    fn ceilings_double_from_initial_and_stop_at_max() {
        let budget = RetryBudget::default();
        let millis: Vec<u128> = (0..=10)
            .map(|retry| budget.ceiling(retry).as_millis())
            .collect();
        assert_eq!(
            millis,
            [
                0, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 30_000, 30_000
            ]
        );
    }

    #[test]
    fn ceilings_never_overflow() {
        let budget = RetryBudget::default();
        for retry in [31, 32, 33, 64, 1_000, u32::MAX] {
            assert_eq!(budget.ceiling(retry), budget.max, "retry {retry}");
        }
        let huge = RetryBudget {
            initial: Duration::MAX / 2,
            max: Duration::MAX,
            ..RetryBudget::default()
        };
        assert_eq!(huge.ceiling(3), Duration::MAX);
        let zero = RetryBudget {
            initial: Duration::ZERO,
            ..RetryBudget::default()
        };
        assert_eq!(zero.ceiling(1_000), Duration::ZERO);
    }

    #[test]
    fn max_attempts_counts_every_http_call() {
        let budget = RetryBudget::default();
        let mut rng = rng();
        assert_eq!(
            budget.next_delay(0, Duration::ZERO, &mut rng),
            Some(Duration::ZERO)
        );
        for attempts_made in 1..8 {
            assert!(
                budget
                    .next_delay(attempts_made, Duration::ZERO, &mut rng)
                    .is_some(),
                "after {attempts_made} calls"
            );
        }
        assert_eq!(budget.next_delay(8, Duration::ZERO, &mut rng), None);
        assert_eq!(budget.next_delay(9, Duration::ZERO, &mut rng), None);
    }

    #[test]
    fn elapsed_budget_refuses_when_spent_and_clamps_the_last_delay() {
        let budget = RetryBudget {
            max_attempts: 100,
            initial: Duration::from_secs(60),
            ..RetryBudget::default()
        };
        let mut rng = rng();
        let limit = budget.max_retry_elapsed;
        assert_eq!(budget.next_delay(3, limit, &mut rng), None);
        assert_eq!(budget.next_delay(3, limit * 2, &mut rng), None);
        let almost = limit - Duration::from_millis(5);
        for _ in 0..100 {
            let delay = budget.next_delay(20, almost, &mut rng).unwrap();
            assert!(delay <= Duration::from_millis(5), "{delay:?}");
        }
    }

    #[test]
    fn jitter_spreads_delays_over_the_whole_range() {
        let budget = RetryBudget::default();
        let mut rng = rng();
        let ceiling = budget.ceiling(4);
        let delays: Vec<Duration> = (0..1_000)
            .map(|_| budget.next_delay(4, Duration::ZERO, &mut rng).unwrap())
            .collect();
        let low = delays.iter().filter(|&&d| d < ceiling / 4).count();
        let high = delays.iter().filter(|&&d| d > ceiling * 3 / 4).count();
        assert!(low > 150 && high > 150, "low {low}, high {high}");
    }

    proptest! {
        #[test]
        fn delay_never_exceeds_ceiling_or_remaining_budget(
            attempts_made in 1u32..2_000,
            elapsed_millis in 0u64..700_000,
            initial_millis in 0u64..10_000,
            max_millis in 0u64..120_000,
            seed in any::<u64>(),
        ) {
            let budget = RetryBudget {
                max_attempts: 1_000,
                max_retry_elapsed: Duration::from_secs(600),
                initial: Duration::from_millis(initial_millis),
                max: Duration::from_millis(max_millis),
            };
            let elapsed = Duration::from_millis(elapsed_millis);
            let mut rng = StdRng::seed_from_u64(seed);
            let delay = budget.next_delay(attempts_made, elapsed, &mut rng);
            if attempts_made >= budget.max_attempts || elapsed >= budget.max_retry_elapsed {
                prop_assert_eq!(delay, None);
            } else {
                let delay = delay.unwrap();
                prop_assert!(delay <= budget.ceiling(attempts_made));
                prop_assert!(delay <= budget.max);
                prop_assert!(elapsed + delay <= budget.max_retry_elapsed);
            }
        }

        #[test]
        fn ceilings_are_monotone_and_capped(retry in 0u32..5_000, initial_millis in 0u64..100_000) {
            let budget = RetryBudget {
                initial: Duration::from_millis(initial_millis),
                ..RetryBudget::default()
            };
            prop_assert!(budget.ceiling(retry) <= budget.ceiling(retry + 1));
            prop_assert!(budget.ceiling(retry) <= budget.max);
        }
    }

    /// Sends `count` requests as fast as the limiter allows, starting at `start`; returns when
    /// the last one went out.
    fn send_paced(rate: &mut AdaptiveRate, start: Instant, count: u32) -> Instant {
        let mut now = start;
        for _ in 0..count {
            now += rate.reserve_send(now);
        }
        now
    }

    #[test]
    fn without_a_ceiling_nothing_waits_until_throttled() {
        let mut rate = AdaptiveRate::new(0, 1.0);
        let start = Instant::now();
        for _ in 0..1_000 {
            assert_eq!(rate.reserve_send(start), Duration::ZERO);
        }
        rate.on_accepted(start);
        assert_eq!(rate.allowed_per_second(), None);
    }

    #[test]
    fn a_ceiling_paces_sends_from_the_start() {
        let mut rate = AdaptiveRate::new(4, 1.0);
        let now = Instant::now();
        let waits: Vec<u128> = (0..4).map(|_| rate.reserve_send(now).as_millis()).collect();
        assert_eq!(waits, [0, 250, 500, 750]);
    }

    #[test]
    fn throttling_halves_the_observed_rate() {
        let mut rate = AdaptiveRate::new(0, 1.0);
        let start = Instant::now();
        // 40 sends spread over one second, then one more to close the window.
        for sent in 0..=40 {
            rate.reserve_send(start + Duration::from_millis(25) * sent);
        }
        rate.on_throttled(start + Duration::from_secs(1));
        assert_eq!(rate.allowed_per_second(), Some(20.0));
    }

    #[test]
    fn throttle_answers_in_a_burst_halve_once() {
        let mut rate = AdaptiveRate::new(64, 1.0);
        let start = Instant::now();
        let now = send_paced(&mut rate, start, 200);
        rate.on_throttled(now);
        rate.on_throttled(now + Duration::from_millis(10));
        rate.on_throttled(now + Duration::from_millis(900));
        assert_eq!(rate.allowed_per_second(), Some(32.0));
        rate.on_throttled(now + Duration::from_millis(1_000));
        assert_eq!(rate.allowed_per_second(), Some(16.0));
    }

    /// Twelve members, one partition each, under a limit of five: each is paced to 5/12 of a
    /// request a second, not to the throttling floor of one, and a throttling answer keeps it
    /// there: the group stays within its limit.
    #[test]
    fn a_share_below_one_request_a_second_is_kept_through_throttling() {
        let start = Instant::now();
        let mut rate = AdaptiveRate::new(5, 5.0);
        let share = 5.0 / 12.0;
        rate.set_ceiling(Some(share), start);
        assert_eq!(rate.allowed_per_second(), Some(share));
        for _ in 0..4 {
            rate.reserve(start);
        }
        // One every 2.4 s: 0, 2.4, 4.8 and 7.2 s.
        let sent = claim_as_due(&mut rate, start, Duration::from_secs(10));
        assert_eq!(sent.len(), 4);
        let span = sent[3] - sent[0];
        assert!(
            span >= Duration::from_millis(7_200) && span <= Duration::from_millis(7_201),
            "{span:?}"
        );
        rate.on_throttled(start + Duration::from_secs(10));
        assert_eq!(rate.allowed_per_second(), Some(share));
        rate.on_accepted(start + Duration::from_secs(20));
        assert_eq!(rate.allowed_per_second(), Some(share));
    }

    #[test]
    fn rate_never_drops_below_the_floor() {
        let mut rate = AdaptiveRate::new(8, 1.0);
        let mut now = Instant::now();
        for _ in 0..20 {
            now = send_paced(&mut rate, now, 5);
            now += DECREASE_COOLDOWN;
            rate.on_throttled(now);
        }
        assert_eq!(rate.allowed_per_second(), Some(MIN_RATE_PER_SECOND));
        assert!(rate.reserve_send(now) <= Duration::from_secs(1));
    }

    #[test]
    fn accepted_answers_raise_the_rate_linearly_up_to_the_ceiling() {
        let mut rate = AdaptiveRate::new(10, 2.0);
        let start = Instant::now();
        rate.on_throttled(start);
        assert_eq!(rate.allowed_per_second(), Some(MIN_RATE_PER_SECOND));
        rate.on_accepted(start + Duration::from_secs(1));
        assert_eq!(rate.allowed_per_second(), Some(3.0));
        rate.on_accepted(start + Duration::from_secs(3));
        assert_eq!(rate.allowed_per_second(), Some(7.0));
        rate.on_accepted(start + Duration::from_secs(60));
        assert_eq!(rate.allowed_per_second(), Some(10.0));
    }
}
